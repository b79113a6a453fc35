//! Writing GGUF v3 files: for tests that need a malformed or modified model,
//! and later for `flea synth`.

use super::{GgufFile, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::quant::GgmlType;
use std::borrow::Cow;
use std::io::{self, Write};

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF file in memory order: header, metadata, tensor table, data.
pub struct GgufWriter<'a> {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
    alignment: u64,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter {
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// A writer holding everything `file` holds, tensor data borrowed.
    pub fn from_file(file: &'a GgufFile) -> Self {
        let mut w = GgufWriter::new();
        w.alignment = file.alignment;
        w.metadata = file.metadata.clone();
        for t in &file.tensors {
            w.tensors.push(PendingTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                data: Cow::Borrowed(file.tensor_data(t)),
            });
        }
        w
    }

    /// Set a metadata key, replacing an existing value in place.
    pub fn set(&mut self, key: &str, value: Value) {
        if key == "general.alignment" {
            if let Some(a) = value.as_u64() {
                self.alignment = a.max(1);
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        data: impl Into<Cow<'a, [u8]>>,
    ) {
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            ggml_type,
            data: data.into(),
        });
    }

    pub fn remove_tensor(&mut self, name: &str) {
        self.tensors.retain(|t| t.name != name);
    }

    /// Change a tensor's recorded shape and type, keeping its bytes (tests
    /// use this to make a header disagree with the data or the model).
    pub fn retype_tensor(&mut self, name: &str, dims: Vec<u64>, ggml_type: GgmlType) {
        if let Some(t) = self.tensors.iter_mut().find(|t| t.name == name) {
            t.dims = dims;
            t.ggml_type = ggml_type;
        }
    }

    pub fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        let mut header = Vec::new();
        header.extend_from_slice(&GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&(value_type(value) as u32).to_le_bytes());
            put_value(&mut header, value);
        }
        let mut offset = 0u64;
        let align = |x: u64| x.div_ceil(self.alignment) * self.alignment;
        for t in &self.tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offset = align(offset + t.data.len() as u64);
        }
        let pad = align(header.len() as u64) as usize - header.len();
        header.resize(header.len() + pad, 0);
        w.write_all(&header)?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let pad = align(t.data.len() as u64) as usize - t.data.len();
            w.write_all(&vec![0u8; pad])?;
        }
        w.flush()
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> ValueType {
    match v {
        Value::U8(_) => ValueType::U8,
        Value::I8(_) => ValueType::I8,
        Value::U16(_) => ValueType::U16,
        Value::I16(_) => ValueType::I16,
        Value::U32(_) => ValueType::U32,
        Value::I32(_) => ValueType::I32,
        Value::F32(_) => ValueType::F32,
        Value::Bool(_) => ValueType::Bool,
        Value::String(_) => ValueType::String,
        Value::Array(..) => ValueType::Array,
        Value::U64(_) => ValueType::U64,
        Value::I64(_) => ValueType::I64,
        Value::F64(_) => ValueType::F64,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}

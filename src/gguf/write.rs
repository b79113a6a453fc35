//! Writing GGUF v3 files: for tests that need a malformed or modified model,
//! and for `flea synth`, which streams tensor data generated on the fly
//! (see [`GgufWriter::add_tensor_streamed`]) so that a model far larger than
//! memory can be written.

use super::{GgufFile, TensorInfo, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};
use crate::quant::GgmlType;
use std::borrow::Cow;
use std::io::{self, Write};

enum TensorData<'a> {
    /// Bytes held (or borrowed) by the writer. Their length, not the shape,
    /// sizes the tensor, so tests can write a header that disagrees with
    /// the data.
    Bytes(Cow<'a, [u8]>),
    /// Bytes produced by the caller while the file is written; the size
    /// follows from the shape and type.
    Streamed(u64),
}

impl TensorData<'_> {
    fn len(&self) -> u64 {
        match self {
            TensorData::Bytes(b) => b.len() as u64,
            TensorData::Streamed(n) => *n,
        }
    }
}

struct PendingTensor<'a> {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: TensorData<'a>,
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
                data: TensorData::Bytes(Cow::Borrowed(file.tensor_data(t))),
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
            data: TensorData::Bytes(data.into()),
        });
    }

    /// Add a tensor whose bytes the caller produces during
    /// [`write_streaming`](Self::write_streaming). Fails if the shape is not
    /// a whole number of blocks of the type.
    pub fn add_tensor_streamed(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ggml_type: GgmlType,
    ) -> Result<()> {
        let size = tensor_bytes(&dims, ggml_type).ok_or_else(|| {
            Error::model(format!(
                "tensor {name}: shape {dims:?} is not a whole number of {ggml_type} blocks"
            ))
        })?;
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            ggml_type,
            data: TensorData::Streamed(size),
        });
        Ok(())
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

    /// Where everything would land, without writing: the file offset of
    /// the data section, and the tensor table with offsets relative to it
    /// (as [`GgufFile`] reports them).
    pub fn layout(&self) -> (u64, Vec<TensorInfo>) {
        let (header, table) = self.header();
        (header.len() as u64, table)
    }

    /// Bytes the whole file takes.
    pub fn file_len(&self) -> u64 {
        let (data_offset, table) = self.layout();
        data_offset
            + table
                .last()
                .map_or(0, |t| self.align(t.offset + t.size_bytes))
    }

    /// Write the file. A tensor added with
    /// [`add_tensor_streamed`](Self::add_tensor_streamed) has no bytes here.
    pub fn write_to(&self, w: impl Write) -> io::Result<()> {
        self.write_streaming(w, |_, t, _| {
            Err(io::Error::other(format!(
                "tensor {} is streamed; use write_streaming",
                t.name
            )))
        })
    }

    /// Write the file, calling `fill(index, tensor, sink)` for each
    /// streamed tensor, in table order, to write exactly its `size_bytes`
    /// (checked). Held bytes are written as they are. Alignment padding is
    /// added here.
    pub fn write_streaming<W: Write>(
        &self,
        mut w: W,
        mut fill: impl FnMut(usize, &TensorInfo, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let (header, table) = self.header();
        w.write_all(&header)?;
        for (index, (t, info)) in self.tensors.iter().zip(&table).enumerate() {
            match &t.data {
                TensorData::Bytes(bytes) => w.write_all(bytes)?,
                TensorData::Streamed(size) => {
                    let mut counted = Counted {
                        inner: &mut w,
                        bytes: 0,
                    };
                    fill(index, info, &mut counted)?;
                    if counted.bytes != *size {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "tensor {}: {} bytes written, expected {size}",
                                t.name, counted.bytes
                            ),
                        ));
                    }
                }
            }
            let len = t.data.len();
            let pad = (self.align(len) - len) as usize;
            w.write_all(&vec![0u8; pad])?;
        }
        w.flush()
    }

    fn align(&self, x: u64) -> u64 {
        x.div_ceil(self.alignment) * self.alignment
    }

    /// Header, metadata and tensor table, padded to the alignment; and the
    /// table as the reader will see it.
    fn header(&self) -> (Vec<u8>, Vec<TensorInfo>) {
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
        let mut table = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            table.push(TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
                offset,
                size_bytes: t.data.len(),
            });
            offset = self.align(offset + t.data.len());
        }
        let padded = self.align(header.len() as u64) as usize;
        header.resize(padded, 0);
        (header, table)
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }
}

/// Counts what a streamed tensor's producer writes, to check its size.
struct Counted<'w, W: Write> {
    inner: &'w mut W,
    bytes: u64,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes of a tensor of this shape and type, if it is whole blocks.
fn tensor_bytes(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let row = ty.row_bytes(usize::try_from(*dims.first()?).ok()?)? as u64;
    dims[1..].iter().try_fold(row, |acc, &d| acc.checked_mul(d))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> GgufWriter<'static> {
        let mut w = GgufWriter::new();
        w.set("general.name", Value::String("streamed".into()));
        let norm: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        w.add_tensor("norm", vec![4], GgmlType::F32, norm);
        w.add_tensor_streamed("q", vec![32, 2], GgmlType::Q8_0)
            .unwrap();
        w
    }

    #[test]
    fn streamed_tensors_land_where_the_layout_says() {
        let w = writer();
        let mut bytes = Vec::new();
        let mut calls = Vec::new();
        w.write_streaming(&mut bytes, |i, t, sink| {
            calls.push((i, t.name.clone()));
            sink.write_all(&vec![7u8; t.size_bytes as usize])
        })
        .unwrap();
        assert_eq!(calls, [(1, "q".to_string())]);
        assert_eq!(bytes.len() as u64, w.file_len());

        let path = std::env::temp_dir().join(format!("flea-write-{}.gguf", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = GgufFile::open(&path);
        std::fs::remove_file(&path).unwrap();
        let file = file.unwrap();
        let (data_offset, table) = w.layout();
        assert_eq!(file.data_offset, data_offset);
        for (ours, theirs) in table.iter().zip(&file.tensors) {
            assert_eq!(
                (&ours.name, ours.offset, ours.size_bytes),
                (&theirs.name, theirs.offset, theirs.size_bytes)
            );
        }
        let q = file.tensor("q").unwrap();
        assert_eq!(file.tensor_data(q), &[7u8; 68][..]);
        assert_eq!(
            file.tensor_data(file.tensor("norm").unwrap())[4..8],
            2.0f32.to_le_bytes()
        );
    }

    #[test]
    fn a_fill_of_the_wrong_size_is_an_error() {
        let err = writer()
            .write_streaming(Vec::new(), |_, _, sink| sink.write_all(&[0u8; 67]))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("67 bytes written, expected 68"),
            "{err}"
        );
    }

    #[test]
    fn write_to_refuses_streamed_tensors() {
        assert!(writer().write_to(Vec::new()).is_err());
        let err = GgufWriter::new()
            .add_tensor_streamed("odd", vec![31, 2], GgmlType::Q8_0)
            .unwrap_err();
        assert!(err.message.contains("whole number"), "{err}");
    }
}

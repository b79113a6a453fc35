//! The GGUF parser. Every read is bounds-checked against the file length and
//! every failure names the file, the byte offset and what was expected, so a
//! truncated or corrupt file gives an error, never a panic or a huge
//! allocation.

use super::{TensorInfo, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use crate::error::{Error, Result};
use crate::quant::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Arrays nested deeper than this are rejected (no real file comes close).
const MAX_ARRAY_DEPTH: usize = 8;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// An open GGUF file: parsed header and tensor table over a read-only map.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// File offset of the tensor data section.
    pub data_offset: u64,
    metadata_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    map: Mmap,
}

impl GgufFile {
    /// Open and parse `path`. Tensor data is not read, only mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        // Only a regular file can be mapped; say so before open(2), which
        // would block forever on a FIFO.
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::io(format!("{}: cannot open: {e}", path.display())))?;
        if meta.is_dir() {
            return Err(Error::io(format!(
                "{}: is a directory; expected a GGUF file",
                path.display()
            )));
        }
        if !meta.is_file() {
            return Err(Error::io(format!(
                "{}: is not a regular file (a device, FIFO or socket); expected a GGUF file",
                path.display()
            )));
        }
        let file = File::open(path)
            .map_err(|e| Error::io(format!("{}: cannot open: {e}", path.display())))?;
        // SAFETY: the map is read-only. Another process truncating the file
        // while we run would fault; that is the usual mmap caveat, and the
        // same one llama.cpp accepts.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::io(format!("{}: cannot map: {e}", path.display())))?;
        Self::parse(path.to_path_buf(), map)
    }

    /// Parse a GGUF image held in memory (fuzzing, tests); `name` stands
    /// for the path in error messages. The bytes are copied into an
    /// anonymous read-only map, so the result is the same type as a file.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: &[u8]) -> Result<GgufFile> {
        let name = name.into();
        let cannot = |e: std::io::Error| Error::io(format!("{}: cannot map: {e}", name.display()));
        let mut anon = memmap2::MmapOptions::new()
            .len(bytes.len())
            .map_anon()
            .map_err(cannot)?;
        anon.copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(cannot)?;
        Self::parse(name, map)
    }

    fn parse(path: PathBuf, map: Mmap) -> Result<GgufFile> {
        let mut r = Reader {
            bytes: &map,
            pos: 0,
            path: &path,
        };
        let magic = r.take(4, "magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::model(format!(
                "{}: offset 0: bad magic: expected \"GGUF\", found {:?}",
                path.display(),
                String::from_utf8_lossy(magic)
            )));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::model(format!(
                "{}: offset 4: unsupported GGUF version {version} (supported: 2, 3)",
                path.display()
            )));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;

        // Each key/value takes at least 13 bytes and each tensor entry at
        // least 24, so counts beyond what the file can hold are corruption.
        r.check_count(kv_count, 13, "metadata count")?;
        r.check_count(tensor_count, 24, "tensor count")?;

        let mut metadata = Vec::with_capacity(preallocation(kv_count));
        let mut metadata_index = HashMap::with_capacity(preallocation(kv_count));
        for _ in 0..kv_count {
            let key_offset = r.pos;
            let key = r.string("metadata key")?;
            let type_offset = r.pos;
            let type_id = r.u32("metadata value type")?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| {
                r.error_at(
                    type_offset,
                    &format!(
                        "key {key:?}: unknown metadata value type {type_id} (expected 0..=12)"
                    ),
                )
            })?;
            let value = r.value(ty, &key, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.error_at(key_offset, &format!("duplicate metadata key {key:?}")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() {
                    return Err(Error::model(format!(
                        "{}: key general.alignment: expected a power of two, found {}",
                        path.display(),
                        metadata[i].1
                    )));
                }
                a
            }
        };

        let mut tensors = Vec::with_capacity(preallocation(tensor_count));
        let mut tensor_index = HashMap::with_capacity(preallocation(tensor_count));
        for _ in 0..tensor_count {
            let entry_offset = r.pos;
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor dimension count")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.error_at(
                    entry_offset,
                    &format!("tensor {name:?}: expected 1..={MAX_DIMS} dimensions, found {n_dims}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let type_offset = r.pos;
            let type_id = r.u32("tensor type")?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                r.error_at(
                    type_offset,
                    &format!("tensor {name:?}: unknown ggml type {type_id}"),
                )
            })?;
            let offset = r.u64("tensor data offset")?;
            if ggml_type.block_layout().is_none() {
                return Err(r.error_at(
                    type_offset,
                    &format!(
                        "tensor {name:?}: unsupported {ggml_type} (supported: {})",
                        GgmlType::supported_list()
                    ),
                ));
            }
            let size_bytes = tensor_size(&dims, ggml_type).ok_or_else(|| {
                r.error_at(
                    entry_offset,
                    &format!(
                        "tensor {name:?}: shape {dims:?} is not a whole number of {ggml_type} blocks"
                    ),
                )
            })?;
            if offset % alignment != 0 {
                return Err(r.error_at(
                    entry_offset,
                    &format!("tensor {name:?}: data offset {offset} is not aligned to {alignment}"),
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.error_at(entry_offset, &format!("duplicate tensor {name:?}")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                size_bytes,
            });
        }

        let data_offset = r.pos.div_ceil(alignment as usize) as u64 * alignment;
        let file_len = map.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.size_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::model(format!(
                        "{}: tensor {:?} ({} {}, {} bytes at file offset {}) runs past the end of the file ({} bytes); the file is truncated or corrupt",
                        path.display(),
                        t.name,
                        t.ggml_type,
                        t.shape_string(),
                        t.size_bytes,
                        data_offset.saturating_add(t.offset),
                        file_len
                    )))
                }
            }
        }

        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            metadata_index,
            tensor_index,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor. Bounds were checked when the file was opened.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.map[start..start + t.size_bytes as usize]
    }

    /// Bytes at an absolute file range. Panics when out of bounds: ranges
    /// come from the tensor table, which was checked at open.
    pub fn bytes_at(&self, range: std::ops::Range<u64>) -> &[u8] {
        &self.map[range.start as usize..range.end as usize]
    }

    /// File offset where a tensor's bytes start.
    pub fn tensor_file_offset(&self, t: &TensorInfo) -> u64 {
        self.data_offset + t.offset
    }

    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    // --- typed metadata accessors with errors that name the key ---------

    fn missing(&self, key: &str, what: &str) -> Error {
        Error::model(format!(
            "{}: missing required key {key} (expected {what})",
            self.path.display()
        ))
    }

    fn wrong_type(&self, key: &str, what: &str, found: &Value) -> Error {
        Error::model(format!(
            "{}: key {key}: expected {what}, found {} {}",
            self.path.display(),
            found.type_name(),
            found
        ))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .ok_or_else(|| self.missing(key, "an unsigned integer"))?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v))
    }

    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "an unsigned integer", v)),
        }
    }

    pub fn optional_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f32()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a float", v)),
        }
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key).ok_or_else(|| self.missing(key, "a string"))?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a bool", v)),
        }
    }

    pub fn require_array(&self, key: &str) -> Result<&[Value]> {
        let v = self.get(key).ok_or_else(|| self.missing(key, "an array"))?;
        v.as_array()
            .ok_or_else(|| self.wrong_type(key, "an array", v))
    }
}

/// Bytes a tensor of this shape and type takes, if the shape is valid.
fn tensor_size(dims: &[u64], ty: GgmlType) -> Option<u64> {
    let (per_block, block_bytes) = ty.block_layout()?;
    let row = *dims.first()?;
    if row % per_block as u64 != 0 {
        return None;
    }
    let rows = dims[1..]
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    (row / per_block as u64)
        .checked_mul(block_bytes as u64)?
        .checked_mul(rows)
}

/// A cursor over the file bytes that produces located errors.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn error_at(&self, offset: usize, msg: &str) -> Error {
        Error::model(format!("{}: offset {offset}: {msg}", self.path.display()))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.error_at(
                self.pos,
                &format!(
                    "truncated file: expected {n} bytes of {what}, found {} (file is {} bytes)",
                    self.bytes.len() - self.pos,
                    self.bytes.len()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

/// How many entries to reserve for a count read from the file. A count is
/// checked against the bytes left before anything is read, but one encoded
/// byte can still become a 32-byte [`Value`]: reserving up front would let a
/// small hostile file ask for 32x its size. Beyond this many entries the
/// vectors grow as entries are actually decoded.
fn preallocation(count: u64) -> usize {
    count.min(4096) as usize
}

impl Reader<'_> {
    /// Reject a count whose minimal encoding would not fit in the rest of the file.
    fn check_count(&self, count: u64, min_bytes_each: u64, what: &str) -> Result<()> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_bytes_each) > remaining {
            return Err(self.error_at(
                self.pos,
                &format!(
                    "{what} {count} cannot fit in the remaining {remaining} bytes; the file is truncated or corrupt"
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let len = self.u64(what)?;
        self.check_count(len, 1, &format!("{what} length"))?;
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.error_at(start, &format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(key)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(key)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(self.error_at(
                            at,
                            &format!("key {key:?}: expected bool 0 or 1, found {b}"),
                        ))
                    }
                }
            }
            ValueType::String => Value::String(self.string(&format!("value of key {key:?}"))?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.error_at(
                        at,
                        &format!("key {key:?}: arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem_id = self.u32(key)?;
                let elem = ValueType::from_id(elem_id).ok_or_else(|| {
                    self.error_at(
                        at,
                        &format!("key {key:?}: unknown array element type {elem_id}"),
                    )
                })?;
                let count = self.u64(key)?;
                self.check_count(
                    count,
                    elem.min_encoded_bytes(),
                    &format!("key {key:?}: array length"),
                )?;
                let mut items = Vec::with_capacity(preallocation(count));
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

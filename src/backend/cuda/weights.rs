//! Weights in device memory.
//!
//! A layer's tensors are uploaded the first time the layer runs and kept,
//! keyed by their file offset (the same tensor has the same offset whether
//! the engine read it from the memory map, a resident copy or a streaming
//! slot), until the cache budget is spent. A layer that does not fit is
//! copied into one staging buffer each time it runs instead: slower, but it
//! lets a model larger than device memory run (the host side streams it).
//! Norm vectors are always kept, dequantized to f32 (a few KiB a layer).
//!
//! The embedding table, output norm and output head reach the backend as
//! bare [`Weight`]s without a file offset; they are resident on the host for
//! the whole run, so their host address identifies them.

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, CudaView};

use super::device::{DevWeight, Format, Gpu};
use crate::backend::{FileBytes, Weight};
use crate::error::Result;
use crate::model::{LayerTensors, TensorRef};
use crate::quant;

/// Staging offsets are rounded up to this, so every staged tensor starts
/// as aligned as a fresh allocation's first 256 bytes.
const STAGING_ALIGN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A layer tensor, by its absolute file offset.
    File(u64),
    /// A global tensor, by host address and length.
    Host(usize, usize),
}

fn host_key(w: &Weight<'_>) -> Key {
    Key::Host(w.data.as_ptr() as usize, w.data.len())
}

struct Matrix {
    format: Format,
    rows: usize,
    cols: usize,
    data: CudaSlice<u8>,
}

impl Matrix {
    fn view(&self) -> DevWeight<'_> {
        DevWeight {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            data: self.data.slice(..),
        }
    }
}

/// Where a layer's seven matrices are this pass.
enum LayerPlace {
    Cached,
    /// Offsets of wq, wk, wv, wo, w_gate, w_up, w_down in the staging buffer.
    Staged([usize; 7]),
}

/// The seven matrices of one layer, ready for launches.
pub struct LayerWeights<'a> {
    pub wq: DevWeight<'a>,
    pub wk: DevWeight<'a>,
    pub wv: DevWeight<'a>,
    pub wo: DevWeight<'a>,
    pub w_gate: DevWeight<'a>,
    pub w_up: DevWeight<'a>,
    pub w_down: DevWeight<'a>,
    pub attn_norm: CudaView<'a, f32>,
    pub ffn_norm: CudaView<'a, f32>,
}

pub struct WeightCache {
    matrices: HashMap<Key, Matrix>,
    vectors: HashMap<Key, CudaSlice<f32>>,
    /// Bytes of layer matrices kept, against `budget`.
    cached_bytes: u64,
    budget: u64,
    staging: Option<CudaSlice<u8>>,
    /// Dequantization scratch for norm vectors (host).
    host_f32: Vec<f32>,
}

fn matrices_of(t: &LayerTensors) -> [&TensorRef; 7] {
    [&t.wq, &t.wk, &t.wv, &t.wo, &t.w_gate, &t.w_up, &t.w_down]
}

impl WeightCache {
    /// A cache that keeps at most `budget` bytes of layer matrices.
    pub fn new(budget: u64) -> WeightCache {
        WeightCache {
            matrices: HashMap::new(),
            vectors: HashMap::new(),
            cached_bytes: 0,
            budget,
            staging: None,
            host_f32: Vec::new(),
        }
    }

    /// Bytes of layer matrices resident on the device.
    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    /// Bytes of the staging buffer (0 until a layer had to be staged).
    pub fn staging_bytes(&self) -> usize {
        self.staging.as_ref().map_or(0, |s| s.len())
    }

    fn upload_matrix(gpu: &Gpu, w: &Weight<'_>) -> Result<Matrix> {
        Ok(Matrix {
            format: Format::of(w.ggml_type)?,
            rows: w.rows,
            cols: w.cols,
            data: gpu.upload(w.data)?,
        })
    }

    /// A global matrix (embedding table, output head), uploaded on first use.
    pub fn global(&mut self, gpu: &Gpu, w: &Weight<'_>) -> Result<DevWeight<'_>> {
        let m = match self.matrices.entry(host_key(w)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(Self::upload_matrix(gpu, w)?),
        };
        Ok(m.view())
    }

    fn vector_at(&mut self, gpu: &Gpu, key: Key, w: &Weight<'_>) -> Result<()> {
        if self.vectors.contains_key(&key) {
            return Ok(());
        }
        let n = w.rows * w.cols;
        self.host_f32.resize(n, 0.0);
        quant::dequantize_row(w.ggml_type, w.data, &mut self.host_f32[..n]);
        let dev = gpu.upload(&self.host_f32[..n])?;
        self.vectors.insert(key, dev);
        Ok(())
    }

    /// A global vector (the output norm) as f32 on the device.
    pub fn global_vector(&mut self, gpu: &Gpu, w: &Weight<'_>) -> Result<CudaView<'_, f32>> {
        let key = host_key(w);
        self.vector_at(gpu, key, w)?;
        Ok(self.vectors[&key].slice(..))
    }

    /// Make layer `t` ready: cached if it is (or now fits), else staged.
    pub fn layer(
        &mut self,
        gpu: &Gpu,
        t: &LayerTensors,
        bytes: FileBytes<'_>,
    ) -> Result<LayerWeights<'_>> {
        for norm in [&t.attn_norm, &t.ffn_norm] {
            self.vector_at(gpu, Key::File(norm.file_range.start), &bytes.weight(norm))?;
        }
        let mats = matrices_of(t);
        let all_cached = mats
            .iter()
            .all(|m| self.matrices.contains_key(&Key::File(m.file_range.start)));
        let layer_bytes: u64 = mats.iter().map(|m| m.bytes()).sum();
        let place = if all_cached {
            LayerPlace::Cached
        } else if self.cached_bytes.saturating_add(layer_bytes) <= self.budget {
            for m in mats {
                let key = Key::File(m.file_range.start);
                if !self.matrices.contains_key(&key) {
                    let dev = Self::upload_matrix(gpu, &bytes.weight(m))?;
                    self.cached_bytes += m.bytes();
                    self.matrices.insert(key, dev);
                }
            }
            LayerPlace::Cached
        } else {
            LayerPlace::Staged(self.stage(gpu, &mats, bytes)?)
        };
        let this: &WeightCache = self;
        Ok(LayerWeights {
            wq: this.view(&place, mats, 0)?,
            wk: this.view(&place, mats, 1)?,
            wv: this.view(&place, mats, 2)?,
            wo: this.view(&place, mats, 3)?,
            w_gate: this.view(&place, mats, 4)?,
            w_up: this.view(&place, mats, 5)?,
            w_down: this.view(&place, mats, 6)?,
            attn_norm: this.vectors[&Key::File(t.attn_norm.file_range.start)].slice(..),
            ffn_norm: this.vectors[&Key::File(t.ffn_norm.file_range.start)].slice(..),
        })
    }

    /// Matrix `i` of a layer placed by [`WeightCache::layer`].
    fn view(&self, place: &LayerPlace, mats: [&TensorRef; 7], i: usize) -> Result<DevWeight<'_>> {
        let r = mats[i];
        match place {
            LayerPlace::Cached => Ok(self.matrices[&Key::File(r.file_range.start)].view()),
            LayerPlace::Staged(offsets) => {
                let staging = self.staging.as_ref().expect("staged layer has a buffer");
                let len = r.bytes() as usize;
                Ok(DevWeight {
                    format: Format::of(r.ggml_type)?,
                    rows: r.rows,
                    cols: r.cols,
                    data: staging.slice(offsets[i]..offsets[i] + len),
                })
            }
        }
    }

    /// Copy a layer's matrices into the staging buffer (grown if needed),
    /// each at a 256-byte aligned offset. Copies go on the same stream as
    /// the launches, so they wait for the previous layer's kernels.
    fn stage(
        &mut self,
        gpu: &Gpu,
        mats: &[&TensorRef; 7],
        bytes: FileBytes<'_>,
    ) -> Result<[usize; 7]> {
        let mut offsets = [0usize; 7];
        let mut end = 0usize;
        for (o, m) in offsets.iter_mut().zip(mats) {
            *o = end;
            end = (end + m.bytes() as usize).next_multiple_of(STAGING_ALIGN);
        }
        if self.staging_bytes() < end {
            self.staging = None; // free the old one first
            self.staging = Some(gpu.zeros::<u8>(end)?);
        }
        let staging = self.staging.as_mut().expect("just allocated");
        for (&o, m) in offsets.iter().zip(mats) {
            let w = bytes.weight(m);
            Format::of(w.ggml_type)?;
            gpu.upload_into(w.data, &mut staging.slice_mut(o..o + w.data.len()))?;
        }
        Ok(offsets)
    }
}

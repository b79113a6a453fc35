//! Weights as the kernels see them, by where the engine's bytes live.
//!
//! - Resident bytes (`FileBytes::resident`: the memory map, a resident
//!   copy) are uploaded the first time their layer runs and kept, keyed by
//!   file offset (the same tensor has the same offset whichever source the
//!   engine read it from), until the cache budget is spent: in one arena
//!   sized from the plan when the backend was given one, else one
//!   allocation per layer. A resident layer past the budget is copied
//!   into one staging buffer each time it runs instead.
//! - Streamed bytes (a host streaming slot, refilled once `layer()`
//!   returns) are never kept. With the device feed they are copied into a
//!   device double buffer on a copy stream ([`DeviceSlots`]); with the
//!   mapped feed the kernels read them in place from the page-locked,
//!   device-mapped host slot, and `layer()` waits for the kernels before it
//!   returns.
//!
//! Every copy of a layer is one contiguous copy of its [`layer_span`]
//! (first matrix, rounded down to 256 bytes, to the end of the last), so a
//! matrix sits at the same offset, modulo 256, in every place: the same
//! kernels on the same bytes, whichever way they came. Norm vectors are
//! always kept, dequantized to f32 (a few KiB a layer).
//!
//! The embedding table, output norm and output head reach the backend as
//! bare [`Weight`]s without a file offset; they are resident on the host for
//! the whole run, so their host address identifies them.
//!
//! On an integrated GPU (Jetson: device memory *is* the host's RAM) an
//! upload would hold every resident byte twice: in the weight source's
//! host copy for the whole run, and again in device memory. There the
//! source's resident bytes (layers, embeddings, output head) are
//! page-locked and mapped once at start ([`WeightCache::map_resident`]) and
//! the kernels read them in place ([`LayerSource::InPlace`]), as they read
//! streamed layers from the mapped slots: the weights live once, and the
//! resident arena is never allocated. (Mapped host memory is not cached in
//! the GPU's L2 on Orin, which costs nothing here: a token's pass reads
//! each weight once, far more bytes than the L2 holds.) Where the mapping
//! is refused, the bytes are uploaded as on a discrete GPU, with a warning.

use std::collections::HashMap;
use std::time::Instant;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaView};

use super::device::{DevWeight, Format, Gpu};
use super::double_buffer::DeviceSlots;
use super::pinned::{self, PinnedSlots};
use super::slots::{
    device_slot_bytes, host_range, layer_span, HostRegion, LayerTimes, DEVICE_ALIGN, WEIGHT_ALIGN,
};
use crate::backend::{FileBytes, HostSlots, Weight};
use crate::error::{Error, Result};
use crate::model::{LayerTensors, TensorRef};
use crate::quant;

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
        DevWeight::new(self.format, self.rows, self.cols, self.data.slice(..))
    }
}

/// Where a resident layer is kept on the device.
enum Kept {
    /// At this offset of the resident arena.
    Arena(usize),
    /// In an allocation of its own.
    Own(CudaSlice<u8>),
}

/// One allocation for the resident layers the plan keeps, filled as they
/// first run: no per-allocation rounding, one `cuMemAlloc` at start.
struct Arena {
    buf: CudaSlice<u8>,
    used: usize,
}

/// Where a layer's matrices are read from this pass. Hand it back to
/// [`WeightCache::finish_layer`] once the layer's kernels are enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerSource {
    /// Resident, kept on the device.
    Cached,
    /// Resident on the host, past the cache budget: in the staging buffer.
    Staged,
    /// Streamed, copied into device slot `n`.
    Copied(usize),
    /// Streamed, read in place from the mapped host slot.
    Mapped,
    /// Resident, read in place from the source's page-locked, mapped host
    /// copy (integrated GPU: no device copy).
    InPlace,
}

impl LayerSource {
    pub fn is_streamed(self) -> bool {
        matches!(self, LayerSource::Copied(_) | LayerSource::Mapped)
    }
}

/// The seven matrices and the vectors of one layer, ready for launches.
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
    /// Biases of q, k, v (Qwen 2).
    pub qkv_bias: Option<[CudaView<'a, f32>; 3]>,
    /// Per-head norms of q and k (Qwen 3).
    pub qk_norm: Option<[CudaView<'a, f32>; 2]>,
}

pub struct WeightCache {
    globals: HashMap<Key, Matrix>,
    vectors: HashMap<Key, CudaSlice<f32>>,
    /// Resident layers, by the file offset of their span.
    layers: HashMap<u64, Kept>,
    arena: Option<Arena>,
    /// Bytes of the arena to allocate at the first upload, when its
    /// allocation was deferred (integrated GPU: the resident layers are
    /// expected to be read in place, and then it is never needed).
    arena_deferred: usize,
    /// The source's resident bytes, page-locked and mapped (integrated GPU).
    in_place: Option<PinnedSlots>,
    /// Bytes of resident layers kept, against `budget`.
    cached_bytes: u64,
    budget: u64,
    staging: Option<CudaSlice<u8>>,
    /// The device double buffer (device feed, or mapped fallback).
    slots: Option<DeviceSlots>,
    /// The registered host slots (mapped when `mapped`).
    pinned: Option<PinnedSlots>,
    mapped: bool,
    profile: bool,
    /// Dequantization scratch for norm vectors (host).
    host_f32: Vec<f32>,
    times: LayerTimes,
}

impl WeightCache {
    /// A cache that keeps at most `budget` bytes of resident layers.
    pub fn new(budget: u64, profile: bool) -> WeightCache {
        WeightCache {
            globals: HashMap::new(),
            vectors: HashMap::new(),
            layers: HashMap::new(),
            arena: None,
            arena_deferred: 0,
            in_place: None,
            cached_bytes: 0,
            budget,
            staging: None,
            slots: None,
            pinned: None,
            mapped: false,
            profile,
            host_f32: Vec::new(),
            times: LayerTimes::default(),
        }
    }

    /// Bytes of resident layers kept on the device.
    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    /// Bytes of the staging buffer (0 until a layer had to be staged).
    pub fn staging_bytes(&self) -> usize {
        self.staging.as_ref().map_or(0, |s| s.len())
    }

    /// Bytes of each device slot (0 when there are none).
    pub fn slot_bytes(&self) -> usize {
        self.slots.as_ref().map_or(0, DeviceSlots::bytes)
    }

    /// The registered host slots, if any.
    pub fn pinned(&self) -> Option<&PinnedSlots> {
        self.pinned.as_ref()
    }

    /// Whether streamed layers are read in place from mapped host slots.
    pub fn is_mapped(&self) -> bool {
        self.mapped && self.pinned.as_ref().is_some_and(PinnedSlots::is_alive)
    }

    /// The times measured here (copies, host waits); the backend adds the
    /// kernels' times.
    pub fn times(&self) -> &LayerTimes {
        &self.times
    }

    pub fn times_mut(&mut self) -> &mut LayerTimes {
        &mut self.times
    }

    /// Allocate one buffer of `bytes` for the resident layers (the plan's
    /// `resident_layer_bytes`: every planned layer's span fits, each at a
    /// 256-aligned offset, because its aligned read is at least as long).
    /// Layers past it get allocations of their own. On an integrated GPU
    /// the allocation waits for the first layer that has to be uploaded:
    /// resident layers are normally read in place there
    /// ([`WeightCache::map_resident`]), and the arena would be a second copy
    /// of them in the same memory.
    pub fn reserve_arena(&mut self, gpu: &Gpu, bytes: usize) -> Result<()> {
        if self.arena.is_none() && bytes > 0 {
            if gpu.info().integrated {
                self.arena_deferred = bytes;
            } else {
                self.arena = Some(Arena {
                    buf: gpu.zeros::<u8>(bytes)?,
                    used: 0,
                });
            }
        }
        Ok(())
    }

    /// Device memory the resident weights take on `gpu` for a plan with
    /// `resident_bytes` of layers and `global_bytes` of embeddings and
    /// output head: all of it on a discrete GPU, none on an integrated one,
    /// where they are read in place from the host copy (see the module
    /// documentation). For the up-front free-memory check.
    pub fn device_weight_bytes(gpu: &Gpu, resident_bytes: u64, global_bytes: u64) -> u64 {
        if gpu.info().integrated {
            0
        } else {
            resident_bytes + global_bytes
        }
    }

    /// On an integrated GPU, page-lock and map `source`'s resident bytes
    /// (layers, embeddings, output head: [`HostSlots::resident_regions`])
    /// so that the kernels read them in place instead of a device copy.
    /// The registration's guard goes to the source, which drops it before
    /// it frees the bytes. Where that is refused, one warning and the bytes
    /// are uploaded as on a discrete GPU. Nothing to do on a discrete GPU
    /// (reading host memory over PCIe at every token would be slow) or when
    /// the source has no resident bytes.
    pub fn map_resident(&mut self, gpu: &Gpu, source: &mut dyn HostSlots) {
        if !gpu.info().integrated {
            return;
        }
        let regions: Vec<HostRegion> = source
            .resident_regions()
            .into_iter()
            .map(|(addr, len)| HostRegion { addr, len })
            .collect();
        if regions.is_empty() {
            return;
        }
        match pinned::pin(gpu, &regions, true) {
            Ok((guard, mapped)) => {
                log::info!(
                    "CUDA: integrated GPU: the resident weights ({:.1} MiB) are page-locked \
                     and read in place by the kernels, not copied into device memory",
                    mapped.locked_bytes as f64 / (1u64 << 20) as f64
                );
                source.hold_until_slots_freed(Box::new(guard));
                self.in_place = Some(mapped);
            }
            Err(why) => log::warn!(
                "CUDA: integrated GPU, but the resident weights cannot be page-locked and \
                 mapped ({why}); they are uploaded, and so held twice in the shared memory"
            ),
        }
    }

    /// Bytes of resident weights the kernels read in place (integrated
    /// GPU; 0 while none are mapped).
    pub fn in_place_bytes(&self) -> u64 {
        self.in_place
            .as_ref()
            .filter(|p| p.is_alive())
            .map_or(0, |p| p.locked_bytes)
    }

    fn in_place_address(&self, host: &[u8]) -> Option<CUdeviceptr> {
        self.in_place.as_ref()?.device_address(host)
    }

    /// Keep a resident layer's span on the device.
    fn keep(&mut self, gpu: &Gpu, host: &[u8]) -> Result<Kept> {
        if self.arena.is_none() && self.arena_deferred > 0 {
            let bytes = std::mem::take(&mut self.arena_deferred);
            self.arena = Some(Arena {
                buf: gpu.zeros::<u8>(bytes)?,
                used: 0,
            });
        }
        if let Some(a) = &mut self.arena {
            if a.used + host.len() <= a.buf.len() {
                let at = a.used;
                gpu.upload_into(host, &mut a.buf.slice_mut(at..at + host.len()))?;
                // As `slots::arena_bytes` counts.
                a.used = (at + host.len()).next_multiple_of(DEVICE_ALIGN as usize);
                return Ok(Kept::Arena(at));
            }
        }
        Ok(Kept::Own(gpu.upload(host)?))
    }

    fn kept_address(&self, key: u64) -> CUdeviceptr {
        match &self.layers[&key] {
            Kept::Arena(at) => {
                Gpu::address_of(&self.arena.as_ref().expect("arena").buf) + *at as u64
            }
            Kept::Own(buf) => Gpu::address_of(buf),
        }
    }

    /// Allocate the device double buffer, `bytes` per slot (once).
    pub fn ensure_slots(&mut self, gpu: &Gpu, bytes: usize) -> Result<()> {
        if self.slots.is_none() {
            self.slots = Some(DeviceSlots::new(gpu, bytes, self.profile)?);
        }
        Ok(())
    }

    /// Use registered host slots: copy from them (device feed) or, when
    /// `mapped`, read them in place.
    pub fn set_pinned(&mut self, pinned: PinnedSlots, mapped: bool) {
        self.mapped = mapped && !pinned.mapped.is_empty();
        self.pinned = Some(pinned);
    }

    fn upload_matrix(gpu: &Gpu, w: &Weight<'_>) -> Result<Matrix> {
        Ok(Matrix {
            format: Format::of(w.ggml_type)?,
            rows: w.rows,
            cols: w.cols,
            data: gpu.upload(w.data)?,
        })
    }

    /// A global matrix (embedding table, output head): read in place where
    /// the source's bytes are mapped (integrated GPU), else uploaded on
    /// first use.
    pub fn global(&mut self, gpu: &Gpu, w: &Weight<'_>) -> Result<DevWeight<'_>> {
        if let Some(ptr) = self.in_place_address(w.data) {
            let format = Format::of(w.ggml_type)?;
            // SAFETY: `w.data` lies in a mapped region of the source's
            // resident bytes (checked just now, registration alive), which
            // stay put and registered until the source is dropped; the
            // source unregisters them only after a context synchronize, so
            // no launch reading them is left (`pinned::HostPin`).
            return Ok(unsafe { DevWeight::from_raw(format, w.rows, w.cols, ptr, w.data.len()) });
        }
        let m = match self.globals.entry(host_key(w)) {
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

    /// Make layer `l` (tensors `t`, bytes `bytes`) ready for launches:
    /// cached if it is (or, being resident on the host, now fits), staged
    /// if resident past the budget, copied into a device slot or mapped if
    /// streamed. When this returns `Ok`, [`WeightCache::finish_layer`] must
    /// follow once the kernels are enqueued; on `Err` it has been done.
    pub fn layer(
        &mut self,
        gpu: &Gpu,
        l: usize,
        t: &LayerTensors,
        bytes: FileBytes<'_>,
    ) -> Result<(LayerWeights<'_>, LayerSource)> {
        for v in t.vectors() {
            self.vector_at(gpu, Key::File(v.file_range.start), &bytes.weight(v))?;
        }
        let mats = t.matrices();
        let span =
            layer_span(mats.iter().map(|m| m.file_range.clone())).expect("a layer has matrices");
        let host = host_range(&span, bytes.base, bytes.bytes.len()).ok_or_else(|| {
            Error::model(format!(
                "CUDA: layer {l}: its matrices (file bytes {}..{}) are not all in the bytes \
                 handed over (file bytes {}..{})",
                span.start,
                span.end,
                bytes.base,
                bytes.base + bytes.bytes.len() as u64
            ))
        })?;
        let host = &bytes.bytes[host];
        let span_len = span.end - span.start;

        let source = if self.layers.contains_key(&span.start) {
            LayerSource::Cached
        } else if bytes.resident && self.in_place_address(host).is_some() {
            LayerSource::InPlace
        } else if bytes.resident {
            if self.cached_bytes.saturating_add(span_len) <= self.budget {
                let kept = self.keep(gpu, host)?;
                self.cached_bytes += span_len;
                self.layers.insert(span.start, kept);
                LayerSource::Cached
            } else {
                self.stage(gpu, host)?;
                LayerSource::Staged
            }
        } else if self.is_mapped() && self.mapped_address(host).is_some() {
            LayerSource::Mapped
        } else {
            self.streamed_copy(gpu, l, host, bytes.bytes.len())?
        };

        let base: CUdeviceptr = match source {
            LayerSource::Cached => self.kept_address(span.start),
            LayerSource::Staged => Gpu::address_of(self.staging.as_ref().expect("staged")),
            LayerSource::Copied(slot) => self.slots.as_ref().expect("copied").address(slot),
            LayerSource::Mapped => self.mapped_address(host).expect("checked above"),
            LayerSource::InPlace => self.in_place_address(host).expect("checked above"),
        };
        // Check every matrix before handing out views, so that an error
        // still closes the slot's turn.
        let mut formats: [Option<Format>; 7] = [None; 7];
        let checked = formats.iter_mut().zip(mats).try_for_each(|(f, m)| {
            let ptr = base + (m.file_range.start - span.start);
            if !ptr.is_multiple_of(WEIGHT_ALIGN) {
                return Err(Error::model(format!(
                    "CUDA: layer {l}: a {} tensor at file offset {} is not {WEIGHT_ALIGN}-byte \
                     aligned (the GGUF's alignment is too small for the kernels)",
                    m.ggml_type, m.file_range.start
                )));
            }
            *f = Some(Format::of(m.ggml_type)?);
            Ok(())
        });
        if let Err(e) = checked {
            // Nothing was launched; still close the slot's turn.
            let _ = self.finish_layer(gpu, source);
            return Err(e);
        }
        let view = |i: usize| -> DevWeight<'_> {
            let m = mats[i];
            // SAFETY: `ptr..ptr + bytes` lies in the device buffer (or
            // mapped host slot, or mapped resident host copy) `base`
            // addresses, which holds the span covering every matrix; it
            // lives as long as `self` (a mapped host slot as long as the
            // engine holds the layer, which outlasts the launches:
            // `finish_layer` waits for them before the engine releases it;
            // a mapped resident copy until the source is dropped, which
            // synchronizes before unregistering it).
            unsafe {
                DevWeight::from_raw(
                    formats[i].expect("checked"),
                    m.rows,
                    m.cols,
                    base + (m.file_range.start - span.start),
                    m.bytes() as usize,
                )
            }
        };
        let vector = |v: &TensorRef| self.vectors[&Key::File(v.file_range.start)].slice(..);
        let w = LayerWeights {
            wq: view(0),
            wk: view(1),
            wv: view(2),
            wo: view(3),
            w_gate: view(4),
            w_up: view(5),
            w_down: view(6),
            attn_norm: vector(&t.attn_norm),
            ffn_norm: vector(&t.ffn_norm),
            qkv_bias: t.qkv_bias.as_ref().map(|b| b.each_ref().map(vector)),
            qk_norm: t.qk_norm.as_ref().map(|n| n.each_ref().map(vector)),
        };
        Ok((w, source))
    }

    fn mapped_address(&self, host: &[u8]) -> Option<CUdeviceptr> {
        self.pinned.as_ref()?.device_address(host)
    }

    /// Copy a streamed layer (`host`, its span inside a host slot of
    /// `host_slot_len` bytes) into the next device slot. The slots are
    /// allocated now, the size of the host slot, if the backend was not
    /// given the plan's slot size.
    fn streamed_copy(
        &mut self,
        gpu: &Gpu,
        l: usize,
        host: &[u8],
        host_slot_len: usize,
    ) -> Result<LayerSource> {
        if self.slots.is_none() {
            let bytes = device_slot_bytes(host_slot_len as u64) as usize;
            log::info!(
                "CUDA: streamed layer {l} and no device slots yet: allocating 2 x {bytes} bytes"
            );
            self.ensure_slots(gpu, bytes)?;
        }
        let slots = self.slots.as_mut().expect("ensured");
        let (slot, copied) = slots.begin(gpu, l, host);
        match copied {
            Ok(()) => Ok(LayerSource::Copied(slot)),
            Err(e) => {
                let _ = slots.finish(gpu, slot, &mut self.times);
                Err(e)
            }
        }
    }

    /// The layer's kernels are enqueued. A copied layer: record that its
    /// slot's readers are enqueued and wait for the copy out of the host
    /// slot. A mapped layer: wait for the kernels, which read the host
    /// slot. Either way the engine may then hand the host slot back.
    pub fn finish_layer(&mut self, gpu: &Gpu, source: LayerSource) -> Result<()> {
        match source {
            // Resident bytes stay put for the run (an in-place layer's host
            // copy included), so nothing waits for the kernels here.
            LayerSource::Cached | LayerSource::Staged | LayerSource::InPlace => {
                self.times.resident_layers += 1;
                Ok(())
            }
            LayerSource::Copied(slot) => {
                let slots = self.slots.as_mut().expect("a copied layer has slots");
                slots.finish(gpu, slot, &mut self.times)
            }
            LayerSource::Mapped => {
                let wait = Instant::now();
                // A blocking wait (`Gpu::synchronize`): this thread sleeps
                // for the length of the layer's kernels, it does not spin.
                let done = gpu.synchronize();
                self.times.host_wait_ms += wait.elapsed().as_secs_f64() * 1e3;
                self.times.mapped_layers += 1;
                done
            }
        }
    }

    /// Copy a resident layer's span into the staging buffer (grown if
    /// needed). The copy goes on the compute stream, so it waits for the
    /// previous layer's kernels; the host bytes are resident, so nothing
    /// needs to wait for the copy.
    fn stage(&mut self, gpu: &Gpu, host: &[u8]) -> Result<()> {
        if self.staging_bytes() < host.len() {
            self.staging = None; // free the old one first
            self.staging = Some(gpu.zeros::<u8>(host.len())?);
        }
        let staging = self.staging.as_mut().expect("just allocated");
        gpu.upload_into(host, &mut staging.slice_mut(..host.len()))
    }
}

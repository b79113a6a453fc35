//! The forward pass on a CUDA device: the [`Backend`] that keeps the
//! activations, the KV cache and the resident weights in device memory, and
//! feeds it streamed layers through a device double buffer or, on
//! unified-memory boards, straight from the mapped host slots (see
//! `weights.rs`). It computes what `cpu/forward.rs` computes, stage for
//! stage; only the summation order inside kernels differs, so logits agree
//! with the CPU within float rounding, not bit for bit. Streamed and
//! resident layers run the same kernels on the same bytes, so on the GPU
//! streamed logits equal resident logits exactly.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaView, CudaViewMut};

use super::device::{cuda_err, AttentionShape, Gpu, KvElem, Q8Scratch, QuantInput};
use super::geometry::{self, AttentionPlan, MATVEC_MAX_COLS};
use super::pinned;
use super::slots::{device_slot_bytes, DevicePlan, HostRegion, LayerTimes};
use super::weights::{LayerSource, WeightCache};
use crate::backend::{Backend, Batch, Feed, FileBytes, HostSlots, Logits, Weight};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvType};
use crate::model::{Hparams, LayerTensors};

/// Shape of a CUDA forward pass, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct CudaForwardConfig {
    pub n_ctx: usize,
    pub max_chunk: usize,
    /// Sequences the KV cache holds (batched decoding).
    pub n_seq: usize,
    /// Device ordinal.
    pub device: usize,
    /// Most bytes of resident layers kept in device memory; resident
    /// layers past it are copied in each time they run. `u64::MAX`: keep
    /// every resident layer. Streamed layers are never kept.
    pub weight_cache_bytes: u64,
    /// How streamed layers reach the kernels: copied into a device double
    /// buffer, or read in place from the mapped host slots.
    pub buffer: Feed,
    /// Bytes of each host streaming slot (the plan's `slot_bytes`): the
    /// device double buffer is sized from it and allocated at start. 0:
    /// allocated at the first streamed layer, sized from its host slot.
    pub stream_slot_bytes: u64,
    /// Bytes of resident layers the plan keeps (`resident_layer_bytes`):
    /// one device buffer for them is allocated at start. 0: each resident
    /// layer gets an allocation of its own when it first runs.
    pub resident_bytes: u64,
    /// Bytes of the embedding table, output norm and output head (the
    /// plan's `global_bytes`), uploaded with the first pass: counted in
    /// the up-front free-memory check so that a budget too big for the
    /// device fails there with the budget message, not later with a raw
    /// out-of-memory error. 0: not known (not checked up front).
    pub global_bytes: u64,
    /// Time each layer's wait for its copy and its kernels with events
    /// ([`CudaForward::layer_times`]). Off, only the host's waits and the
    /// bytes copied are counted.
    pub profile: bool,
    /// Element type of the KV cache.
    pub kv_type: KvType,
}

impl CudaForwardConfig {
    /// Device 0, every resident layer kept, the device feed.
    pub fn new(n_ctx: usize, max_chunk: usize, n_seq: usize) -> CudaForwardConfig {
        CudaForwardConfig {
            n_ctx,
            max_chunk,
            n_seq,
            device: 0,
            weight_cache_bytes: u64::MAX,
            buffer: Feed::Device,
            stream_slot_bytes: 0,
            resident_bytes: 0,
            global_bytes: 0,
            profile: false,
            kv_type: KvType::default(),
        }
    }

    /// This shape with the planned slots (`slot_bytes` each), resident
    /// layers (`resident_bytes` in all) and embeddings and output head
    /// (`global_bytes`), fed as `buffer` says. (The engine layer builds it
    /// from a plan: `EngineConfig::cuda_forward`.)
    pub fn with_slots(
        self,
        slot_bytes: u64,
        resident_bytes: u64,
        global_bytes: u64,
        buffer: Feed,
    ) -> CudaForwardConfig {
        CudaForwardConfig {
            buffer,
            stream_slot_bytes: slot_bytes,
            resident_bytes,
            global_bytes,
            ..self
        }
    }
}

/// Per-layer timing events on the compute stream.
struct Profile {
    /// Per layer: before the layer waits for its weights, once they are
    /// ready (its copy done), after its kernels.
    events: Vec<[CudaEvent; 3]>,
    /// Per layer: where its weights came from, if its events were recorded
    /// this pass and not yet read.
    pending: Vec<Option<LayerSource>>,
}

impl Profile {
    fn new(gpu: &Gpu, n_layers: usize) -> Result<Profile> {
        let event = || {
            gpu.context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("create event"))
        };
        let mut events = Vec::with_capacity(n_layers);
        for _ in 0..n_layers {
            events.push([event()?, event()?, event()?]);
        }
        Ok(Profile {
            events,
            pending: vec![None; n_layers],
        })
    }

    fn record(&self, gpu: &Gpu, l: usize, which: usize) -> Result<()> {
        self.events[l][which]
            .record(gpu.stream())
            .map_err(cuda_err("record event"))
    }

    /// Add the recorded layers' times (their events must be complete or
    /// this waits for them).
    fn collect(&mut self, times: &mut LayerTimes) -> Result<()> {
        for (e, pending) in self.events.iter().zip(self.pending.iter_mut()) {
            let Some(source) = pending.take() else {
                continue;
            };
            let wait = f64::from(e[0].elapsed_ms(&e[1]).map_err(cuda_err("event time"))?);
            let compute = f64::from(e[1].elapsed_ms(&e[2]).map_err(cuda_err("event time"))?);
            if source.is_streamed() {
                times.copy_wait_ms += wait;
                times.streamed_compute_ms += compute;
            } else {
                times.resident_compute_ms += compute;
            }
        }
        Ok(())
    }
}

/// Activation buffers on the device, sized once for `max_chunk` positions
/// and named by role as in `cpu/forward.rs`.
struct Scratch {
    x: CudaSlice<f32>,       // (chunk, dim) residual stream
    xb: CudaSlice<f32>,      // (chunk, dim) normed input / projected output
    q: CudaSlice<f32>,       // (chunk, n_heads * head_dim)
    k: CudaSlice<f32>,       // (chunk, kv_dim)
    v: CudaSlice<f32>,       // (chunk, kv_dim)
    att_out: CudaSlice<f32>, // (chunk, n_heads * head_dim)
    hb: CudaSlice<f32>,      // (chunk, ffn_dim) gate, then silu(gate) * up
    hb2: CudaSlice<f32>,     // (chunk, ffn_dim) up
    logits: CudaSlice<f32>,  // (chunk, vocab)
}

impl Scratch {
    /// Element counts, in field order.
    fn lengths(hp: &Hparams, chunk: usize) -> [usize; 9] {
        let q_dim = hp.q_dim();
        [
            chunk * hp.dim,
            chunk * hp.dim,
            chunk * q_dim,
            chunk * hp.kv_dim(),
            chunk * hp.kv_dim(),
            chunk * q_dim,
            chunk * hp.ffn_dim,
            chunk * hp.ffn_dim,
            chunk * hp.vocab_size,
        ]
    }

    fn new(gpu: &Gpu, hp: &Hparams, chunk: usize) -> Result<Scratch> {
        let [x, xb, q, k, v, att_out, hb, hb2, logits] = Self::lengths(hp, chunk);
        Ok(Scratch {
            x: gpu.zeros(x)?,
            xb: gpu.zeros(xb)?,
            q: gpu.zeros(q)?,
            k: gpu.zeros(k)?,
            v: gpu.zeros(v)?,
            att_out: gpu.zeros(att_out)?,
            hb: gpu.zeros(hb)?,
            hb2: gpu.zeros(hb2)?,
            logits: gpu.zeros(logits)?,
        })
    }
}

/// Per-row facts of the current pass, on the host (reused) and the device.
struct Rows {
    tokens: Vec<i32>,
    seq: Vec<i32>,
    pos: Vec<i32>,
    /// Rows whose logits the pass returns, in batch order.
    logit_rows: Vec<i32>,
    d_tokens: CudaSlice<i32>,
    d_seq: CudaSlice<i32>,
    d_pos: CudaSlice<i32>,
    d_logit_rows: CudaSlice<i32>,
}

/// Int32 buffers of `Rows`, each `max_chunk` long.
const ROW_BUFFERS: usize = 4;

/// The KV cache on the device, `[layer][seq][position][kv_dim]` as
/// `KvCache` on the host, in the element type the run chose.
enum DeviceKv {
    F32 {
        k: CudaSlice<f32>,
        v: CudaSlice<f32>,
    },
    /// f16 as raw bits: rounded by `kv_store_f16`, widened by
    /// `attention_f16`.
    F16 {
        k: CudaSlice<u16>,
        v: CudaSlice<u16>,
    },
}

/// One pass's new keys, values and queries, and where each row goes.
struct StepRows<'a> {
    k: CudaView<'a, f32>,
    v: CudaView<'a, f32>,
    q: CudaView<'a, f32>,
    seq: CudaView<'a, i32>,
    pos: CudaView<'a, i32>,
    n: usize,
    /// The attention kernel the pass takes.
    plan: AttentionPlan,
}

/// Append the pass's keys and values to layer `span` of the cache, then
/// causal attention of its queries over it: row p sees its sequence's
/// positions 0..=pos (the last `window` of them, if set), with the kernel
/// the pass's plan names (`part`: the flash-decoding scratch).
#[allow(clippy::too_many_arguments)]
fn store_and_attend<T: KvElem>(
    gpu: &Gpu,
    k_all: &mut CudaSlice<T>,
    v_all: &mut CudaSlice<T>,
    span: std::ops::Range<usize>,
    rows: &StepRows<'_>,
    shape: AttentionShape,
    out: &mut CudaViewMut<'_, f32>,
    part: &mut CudaSlice<f32>,
) -> Result<()> {
    let mut k_cache = k_all.slice_mut(span.clone());
    let mut v_cache = v_all.slice_mut(span);
    let kv_dim = shape.n_kv_heads * shape.head_dim;
    gpu.kv_store(
        &mut k_cache,
        &mut v_cache,
        &rows.k,
        &rows.v,
        &rows.seq,
        &rows.pos,
        rows.n,
        kv_dim,
        shape.n_ctx,
    )?;
    let (k_cache, v_cache) = (k_cache.as_view(), v_cache.as_view());
    let (q, seq, pos, n) = (&rows.q, &rows.seq, &rows.pos, rows.n);
    match rows.plan {
        AttentionPlan::PerRow => gpu.attention(out, q, &k_cache, &v_cache, seq, pos, n, shape),
        AttentionPlan::Split { splits, split_len } => gpu.attention_split(
            out,
            &mut part.slice_mut(..),
            q,
            &k_cache,
            &v_cache,
            seq,
            pos,
            n,
            shape,
            (splits, split_len),
        ),
        AttentionPlan::Tiled => gpu.attention_tiled(out, q, &k_cache, &v_cache, seq, pos, n, shape),
    }
}

/// Floats of the flash-decoding scratch: a partial softmax (max, sum,
/// head_dim accumulators) per split, head and decode row, for as many
/// splits as the context can use (none with a single split: it writes the
/// output directly).
fn attention_part_len(hp: &Hparams, config: &CudaForwardConfig) -> usize {
    let splits = geometry::attention_split_capacity(config.n_ctx);
    if splits == 1 {
        return 0;
    }
    let rows = config.max_chunk.min(geometry::ATTENTION_SPLIT_MAX_ROWS);
    rows * hp.n_heads * splits * (hp.head_dim + 2)
}

/// The attention kernel for a pass over rows `(seq[r], pos[r])` (the
/// forward pass lays a batch entry's positions out as consecutive rows).
fn attention_plan(hp: &Hparams, n_ctx: usize, seq: &[i32], pos: &[i32]) -> AttentionPlan {
    let runs = 1 + seq.windows(2).filter(|w| w[0] != w[1]).count();
    let window = hp.sliding_window.unwrap_or(n_ctx).min(n_ctx);
    let max_visible = pos
        .iter()
        .map(|&p| (p as usize + 1).min(window))
        .max()
        .unwrap_or(1);
    geometry::attention_plan(
        seq.len(),
        runs,
        hp.head_dim,
        max_visible,
        geometry::attention_split_capacity(n_ctx),
    )
}

pub struct CudaForward {
    gpu: Gpu,
    hp: Hparams,
    n_ctx: usize,
    n_seq: usize,
    max_chunk: usize,
    weights: WeightCache,
    buffer: Feed,
    stream_slot_bytes: u64,
    profile: Option<Profile>,
    s: Scratch,
    /// The 8-bit activations of decode-width products (integer mat-vec).
    q8: Q8Scratch,
    /// `[layer][seq][position][kv_dim]`, as `KvCache` on the host.
    kv: DeviceKv,
    /// `(cos, sin)` per position and rotated pair: `[n_ctx][rope_dims / 2][2]`.
    rope_table: CudaSlice<f32>,
    rows: Rows,
    /// The flash-decoding scratch ([`attention_part_len`] floats, at least
    /// one).
    attn_part: CudaSlice<f32>,
    /// The attention kernel of the current pass.
    attn_plan: AttentionPlan,
    /// Positions in the current pass, and how many of them want logits.
    n: usize,
    m: usize,
    logits_host: Vec<f32>,
    argmax: CudaSlice<u32>,
    argmax_host: Vec<u32>,
}

/// The checks a model must pass before the kernels can take it.
fn check_hparams(hp: &Hparams) -> Result<()> {
    let max = super::geometry::ATTENTION_MAX_HEAD_DIM;
    if hp.head_dim > max {
        return Err(Error::model(format!(
            "CUDA backend: head dim {} is larger than the attention kernel's {max}",
            hp.head_dim
        )));
    }
    if hp.n_kv_heads == 0 || !hp.n_heads.is_multiple_of(hp.n_kv_heads) {
        return Err(Error::model(format!(
            "CUDA backend: {} heads do not share {} kv heads evenly",
            hp.n_heads, hp.n_kv_heads
        )));
    }
    Ok(())
}

impl CudaForward {
    /// A forward pass on device `config.device`, with the KV cache and
    /// activation buffers allocated now (weights come with the first pass).
    pub fn new(hp: &Hparams, config: CudaForwardConfig) -> Result<CudaForward> {
        let gpu = super::open(config.device)?;
        Self::with_gpu(gpu, hp, config)
    }

    /// As [`CudaForward::new`], on a device already opened.
    pub fn with_gpu(gpu: Gpu, hp: &Hparams, config: CudaForwardConfig) -> Result<CudaForward> {
        check_hparams(hp)?;
        if config.n_ctx == 0 || config.max_chunk == 0 || config.n_seq == 0 {
            return Err(Error::config(
                "context size, chunk size and batch size must be at least 1",
            ));
        }
        let config = Self::feed_for(&gpu, config);
        let slots = match config.buffer {
            Feed::Device => 2 * device_slot_bytes(config.stream_slot_bytes),
            Feed::Mapped => 0,
        };
        // Resident weights take no device memory on an integrated GPU
        // (read in place from the host copy: `WeightCache::map_resident`).
        let weights =
            WeightCache::device_weight_bytes(&gpu, config.resident_bytes, config.global_bytes);
        let need = Self::memory_bytes(hp, config) + slots + weights;
        let (free, _) = gpu.mem_info()?;
        if need > free as u64 {
            return Err(Error::config(format!(
                "CUDA: the KV cache, activations, embeddings and output head, resident layers \
                 and streaming slots need \
                 {:.2} GiB but {} has {:.2} GiB free (lower the budget, --ctx-size, the batch \
                 or the chunk size)",
                need as f64 / (1u64 << 30) as f64,
                gpu.info().name,
                free as f64 / (1u64 << 30) as f64
            )));
        }
        let cache_len = hp.n_layers * config.n_seq * config.n_ctx * hp.kv_dim();
        let chunk = config.max_chunk;
        let mut weights = WeightCache::new(config.weight_cache_bytes, config.profile);
        weights.reserve_arena(&gpu, config.resident_bytes as usize)?;
        if config.buffer == Feed::Device && config.stream_slot_bytes > 0 {
            weights.ensure_slots(&gpu, device_slot_bytes(config.stream_slot_bytes) as usize)?;
        }
        let profile = match config.profile {
            true => Some(Profile::new(&gpu, hp.n_layers)?),
            false => None,
        };
        Ok(CudaForward {
            s: Scratch::new(&gpu, hp, chunk)?,
            q8: Q8Scratch::new(&gpu, quantized_values(hp, chunk))?,
            kv: match KvCache::effective_type(config.kv_type, hp.head_dim) {
                KvType::F32 => DeviceKv::F32 {
                    k: gpu.zeros(cache_len)?,
                    v: gpu.zeros(cache_len)?,
                },
                KvType::F16 => DeviceKv::F16 {
                    k: gpu.zeros(cache_len)?,
                    v: gpu.zeros(cache_len)?,
                },
            },
            rope_table: gpu.upload(&rope_table(hp, config.n_ctx))?,
            rows: Rows {
                tokens: Vec::with_capacity(chunk),
                seq: Vec::with_capacity(chunk),
                pos: Vec::with_capacity(chunk),
                logit_rows: Vec::with_capacity(chunk),
                d_tokens: gpu.zeros(chunk)?,
                d_seq: gpu.zeros(chunk)?,
                d_pos: gpu.zeros(chunk)?,
                d_logit_rows: gpu.zeros(chunk)?,
            },
            attn_part: gpu.zeros(attention_part_len(hp, &config).max(1))?,
            attn_plan: AttentionPlan::PerRow,
            argmax: gpu.zeros(chunk)?,
            argmax_host: vec![0; chunk],
            logits_host: vec![0.0; chunk * hp.vocab_size],
            weights,
            buffer: config.buffer,
            stream_slot_bytes: config.stream_slot_bytes,
            profile,
            hp: hp.clone(),
            n_ctx: config.n_ctx,
            n_seq: config.n_seq,
            max_chunk: chunk,
            n: 0,
            m: 0,
            gpu,
        })
    }

    /// On an integrated GPU (device memory is the host's RAM) the device
    /// double buffer would hold two more copies of the largest layer in the
    /// same RAM, which the plan does not charge (the budget pays for the
    /// host slots only): feed streamed layers from the mapped host slots
    /// instead, which read them in place, and say so.
    fn feed_for(gpu: &Gpu, config: CudaForwardConfig) -> CudaForwardConfig {
        if gpu.info().integrated && config.buffer == Feed::Device && config.stream_slot_bytes > 0 {
            log::warn!(
                "CUDA: integrated GPU: [device] buffer = \"device\" would copy each streamed \
                 layer into two more slots of the same RAM, outside the budget; reading the \
                 page-locked host slots in place instead (buffer = \"mapped\", as the Orin \
                 configs set)"
            );
            return CudaForwardConfig {
                buffer: Feed::Mapped,
                ..config
            };
        }
        config
    }

    /// Device bytes this backend allocates for the given shape besides the
    /// weights: KV cache (of `config.kv_type`, as on the CPU), activations
    /// (f32, and 8-bit for the decode mat-vec), logits, RoPE table, per-row
    /// indices, the flash-decoding scratch and every layer's vectors (norms,
    /// biases; f32).
    /// Weights, the device slots and the staging buffer a resident layer
    /// past the cache budget is copied into are the planner's to charge
    /// ([`CudaForward::device_plan`]).
    pub fn memory_bytes(hp: &Hparams, config: CudaForwardConfig) -> u64 {
        let f32s: usize = Scratch::lengths(hp, config.max_chunk).iter().sum();
        let rope = config.n_ctx * (hp.rope_dims / 2) * 2 * 4;
        let ints = (ROW_BUFFERS + 1) * config.max_chunk * 4;
        let norms = hp.n_layers * hp.layer_vector_floats() * 4;
        let part = attention_part_len(hp, &config).max(1) * 4;
        KvCache::bytes_for(
            hp.n_layers,
            config.n_seq,
            config.n_ctx,
            hp.kv_dim(),
            KvCache::effective_type(config.kv_type, hp.head_dim),
        ) + (f32s * 4 + rope + ints + norms + part) as u64
            + Q8Scratch::bytes(quantized_values(hp, config.max_chunk))
    }

    /// Device memory a run allocates: this backend's own, the embeddings
    /// and output head (`global_bytes`), the resident layers and (device
    /// feed) the two slots of `slot_bytes`.
    pub fn device_plan(
        hp: &Hparams,
        config: CudaForwardConfig,
        global_bytes: u64,
        resident_layer_bytes: u64,
        slot_bytes: u64,
    ) -> DevicePlan {
        DevicePlan::new(
            Self::memory_bytes(hp, config),
            global_bytes,
            resident_layer_bytes,
            slot_bytes,
            config.buffer,
        )
    }

    /// Page-lock `source`'s streaming slots for the run (its guard undoes
    /// it before the slots are freed) and, with the mapped feed, map them.
    /// Where that fails, say why in one log line and go on copying from
    /// pageable memory (the mapped feed then falls back to the device
    /// double buffer). Nothing to do when nothing streams. On an integrated
    /// GPU it first maps the source's resident weights, which the kernels
    /// then read in place (`WeightCache::map_resident`).
    pub fn pin_host_slots(&mut self, source: &mut dyn HostSlots) -> Result<()> {
        // Integrated GPU: the resident weights are read in place, once.
        self.weights.map_resident(&self.gpu, source);
        let regions: Vec<HostRegion> = source
            .slot_regions()
            .into_iter()
            .map(|(addr, len)| HostRegion { addr, len })
            .collect();
        if regions.is_empty() {
            return Ok(());
        }
        let map = self.buffer == Feed::Mapped;
        let slot_len = regions.iter().map(|r| r.len).max().unwrap_or(0);
        match pinned::pin(&self.gpu, &regions, map) {
            Ok((guard, slots)) => {
                log::info!(
                    "CUDA: streaming slots page-locked ({} x {:.1} MiB{}); streamed layers {}",
                    regions.len(),
                    slot_len as f64 / (1u64 << 20) as f64,
                    if map { ", mapped" } else { "" },
                    if map {
                        "are read in place by the kernels"
                    } else {
                        "are copied into the device double buffer"
                    }
                );
                source.hold_until_slots_freed(Box::new(guard));
                self.weights.set_pinned(slots, map);
                Ok(())
            }
            Err(why) if map => {
                log::warn!(
                    "CUDA: [device] buffer = \"mapped\" but the streaming slots cannot be \
                     page-locked and mapped ({why}); copying streamed layers through a device \
                     double buffer from pageable memory instead"
                );
                let bytes = device_slot_bytes(self.stream_slot_bytes.max(slot_len as u64));
                self.weights.ensure_slots(&self.gpu, bytes as usize)
            }
            Err(why) => {
                log::warn!(
                    "CUDA: streaming slots not page-locked ({why}); streamed layers are copied \
                     from pageable memory (slower)"
                );
                Ok(())
            }
        }
    }

    /// How streamed layers reach the kernels now (after any fallback).
    pub fn feed(&self) -> Feed {
        if self.weights.is_mapped() {
            Feed::Mapped
        } else {
            Feed::Device
        }
    }

    /// Bytes of the host slots page-locked for this backend (0: pageable).
    pub fn locked_host_bytes(&self) -> u64 {
        self.weights
            .pinned()
            .filter(|p| p.is_alive())
            .map_or(0, |p| p.locked_bytes)
    }

    /// Bytes of each device slot (0 when there are none).
    pub fn device_slot_bytes(&self) -> usize {
        self.weights.slot_bytes()
    }

    /// Where time went since the last reset (see [`LayerTimes`]).
    pub fn layer_times(&self) -> LayerTimes {
        *self.weights.times()
    }

    pub fn reset_layer_times(&mut self) {
        *self.weights.times_mut() = LayerTimes::default();
    }

    /// Read the timing events of the layers run since the last collection
    /// (waiting for them if they are still running).
    fn collect_profile(&mut self) -> Result<()> {
        if let Some(p) = &mut self.profile {
            if p.pending.iter().any(Option::is_some) {
                self.gpu.synchronize()?;
                p.collect(self.weights.times_mut())?;
            }
        }
        Ok(())
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of layer weights now resident on the device.
    pub fn cached_weight_bytes(&self) -> u64 {
        self.weights.cached_bytes()
    }

    /// Greedy tokens of the last pass, computed on the device: the argmax
    /// of each logits row [`Backend::finish`] returned, in the same order.
    pub fn argmax_last(&mut self) -> Result<&[u32]> {
        let (m, vocab) = (self.m, self.hp.vocab_size);
        self.gpu.argmax_rows(
            &mut self.argmax.slice_mut(..m.max(1)),
            &self.s.logits.slice(..m.max(1) * vocab),
            m,
            vocab,
        )?;
        if m > 0 {
            self.gpu
                .download_into(&self.argmax.slice(..m), &mut self.argmax_host[..m])?;
        }
        Ok(&self.argmax_host[..m])
    }
}

impl Backend for CudaForward {
    fn begin(&mut self, batch: Batch<'_>, embd: Weight<'_>) -> Result<()> {
        // A pass cut short by an error leaves events unread.
        self.collect_profile()?;
        let r = &mut self.rows;
        r.tokens.clear();
        r.seq.clear();
        r.pos.clear();
        r.logit_rows.clear();
        for e in batch.entries {
            let first_row = r.tokens.len();
            for (i, &tok) in batch.tokens[e.first..e.first + e.len].iter().enumerate() {
                r.tokens.push(tok as i32);
                r.seq.push(e.seq as i32);
                r.pos.push((e.start_pos + i) as i32);
            }
            let wanted = match e.logits {
                Logits::All => 0..e.len,
                Logits::Last => e.len - 1..e.len,
                Logits::None => 0..0,
            };
            r.logit_rows.extend(wanted.map(|i| (first_row + i) as i32));
        }
        let n = r.tokens.len();
        // The engine validated the batch; these guard the device buffers.
        assert!(n >= 1 && n <= self.max_chunk, "pass of {n} positions");
        assert!(
            r.seq.iter().all(|&s| (s as usize) < self.n_seq)
                && r.pos.iter().all(|&p| (p as usize) < self.n_ctx)
                && r.tokens.iter().all(|&t| (t as usize) < embd.rows),
            "batch outside the cache or vocabulary"
        );
        self.n = n;
        self.m = r.logit_rows.len();
        self.attn_plan = attention_plan(&self.hp, self.n_ctx, &r.seq, &r.pos);
        let gpu = &self.gpu;
        gpu.upload_into(&r.tokens, &mut r.d_tokens.slice_mut(..n))?;
        gpu.upload_into(&r.seq, &mut r.d_seq.slice_mut(..n))?;
        gpu.upload_into(&r.pos, &mut r.d_pos.slice_mut(..n))?;
        if self.m > 0 {
            gpu.upload_into(&r.logit_rows, &mut r.d_logit_rows.slice_mut(..self.m))?;
        }
        // x = embedding rows of the tokens.
        let w = self.weights.global(gpu, &embd)?;
        gpu.embed(
            &w,
            &r.d_tokens.slice(..n),
            &mut self.s.x.slice_mut(..n * self.hp.dim),
            n,
        )
    }

    fn layer(&mut self, l: usize, layer: &LayerTensors, bytes: FileBytes<'_>) -> Result<()> {
        if let Some(p) = &self.profile {
            p.record(&self.gpu, l, 0)?;
        }
        let (w, source) = self.weights.layer(&self.gpu, l, layer, bytes)?;
        let profile = self.profile.as_ref();
        let hp = &self.hp;
        let (n, dim, q_dim, kv_dim, ffn) = (self.n, hp.dim, hp.q_dim(), hp.kv_dim(), hp.ffn_dim);
        let gpu = &self.gpu;
        let s = &mut self.s;
        let q8 = &mut self.q8;
        let rows = &self.rows;
        let (kv, rope_table) = (&mut self.kv, &self.rope_table);
        let (attn_part, attn_plan) = (&mut self.attn_part, self.attn_plan);
        let (n_seq, n_ctx) = (self.n_seq, self.n_ctx);
        let launched = (|| -> Result<()> {
            if let Some(p) = profile {
                p.record(gpu, l, 1)?;
            }

            // Attention: xb = rmsnorm(x); q, k, v = xb Wq, xb Wk, xb Wv.
            gpu.rmsnorm(
                &mut s.xb.slice_mut(..n * dim),
                &s.x.slice(..n * dim),
                &w.attn_norm,
                n,
                dim,
                hp.rms_eps,
            )?;
            let mut xb = QuantInput::new(s.xb.slice(..n * dim), n, q8);
            gpu.matmul_quant(&w.wq, &mut xb, &mut s.q.slice_mut(..n * q_dim))?;
            gpu.matmul_quant(&w.wk, &mut xb, &mut s.k.slice_mut(..n * kv_dim))?;
            gpu.matmul_quant(&w.wv, &mut xb, &mut s.v.slice_mut(..n * kv_dim))?;
            // Qwen 2: biases on the projections.
            if let Some([bq, bk, bv]) = &w.qkv_bias {
                gpu.add_bias(&mut s.q.slice_mut(..n * q_dim), bq, n * q_dim)?;
                gpu.add_bias(&mut s.k.slice_mut(..n * kv_dim), bk, n * kv_dim)?;
                gpu.add_bias(&mut s.v.slice_mut(..n * kv_dim), bv, n * kv_dim)?;
            }
            // Qwen 3: RMSNorm over each head of q and k, before RoPE.
            if let Some([q_norm, k_norm]) = &w.qk_norm {
                gpu.rmsnorm_heads(
                    &mut s.q.slice_mut(..n * q_dim),
                    q_norm,
                    n * hp.n_heads,
                    hp.rms_eps,
                )?;
                gpu.rmsnorm_heads(
                    &mut s.k.slice_mut(..n * kv_dim),
                    k_norm,
                    n * hp.n_kv_heads,
                    hp.rms_eps,
                )?;
            }

            // RoPE on q and k at each row's position, then append k, v to each
            // row's sequence in this layer's cache.
            let (pos, seq) = (rows.d_pos.slice(..n), rows.d_seq.slice(..n));
            let table = rope_table.slice(..);
            let half_rot = hp.rope_dims / 2;
            gpu.rope(
                &mut s.q.slice_mut(..n * q_dim),
                &table,
                &pos,
                n,
                hp.n_heads,
                hp.head_dim,
                half_rot,
                hp.arch.rope,
            )?;
            gpu.rope(
                &mut s.k.slice_mut(..n * kv_dim),
                &table,
                &pos,
                n,
                hp.n_kv_heads,
                hp.head_dim,
                half_rot,
                hp.arch.rope,
            )?;
            let per_layer = n_seq * n_ctx * kv_dim;
            let span = l * per_layer..(l + 1) * per_layer;
            let rows = StepRows {
                k: s.k.slice(..n * kv_dim),
                v: s.v.slice(..n * kv_dim),
                q: s.q.slice(..n * q_dim),
                seq,
                pos,
                n,
                plan: attn_plan,
            };
            let shape = AttentionShape {
                n_heads: hp.n_heads,
                n_kv_heads: hp.n_kv_heads,
                head_dim: hp.head_dim,
                n_ctx,
                window: hp.sliding_window,
            };
            let mut att_out = s.att_out.slice_mut(..n * q_dim);
            match kv {
                DeviceKv::F32 { k, v } => {
                    store_and_attend(gpu, k, v, span, &rows, shape, &mut att_out, attn_part)?
                }
                DeviceKv::F16 { k, v } => {
                    store_and_attend(gpu, k, v, span, &rows, shape, &mut att_out, attn_part)?
                }
            }

            // Output projection and residual: x += att_out Wo.
            gpu.matmul_quant(
                &w.wo,
                &mut QuantInput::new(s.att_out.slice(..n * q_dim), n, q8),
                &mut s.xb.slice_mut(..n * dim),
            )?;
            gpu.add_in_place(
                &mut s.x.slice_mut(..n * dim),
                &s.xb.slice(..n * dim),
                n * dim,
            )?;

            // Feed-forward: x += (silu(xb Wgate) * (xb Wup)) Wdown, xb = rmsnorm(x).
            gpu.rmsnorm(
                &mut s.xb.slice_mut(..n * dim),
                &s.x.slice(..n * dim),
                &w.ffn_norm,
                n,
                dim,
                hp.rms_eps,
            )?;
            let mut xb = QuantInput::new(s.xb.slice(..n * dim), n, q8);
            gpu.matmul_quant(&w.w_gate, &mut xb, &mut s.hb.slice_mut(..n * ffn))?;
            gpu.matmul_quant(&w.w_up, &mut xb, &mut s.hb2.slice_mut(..n * ffn))?;
            gpu.swiglu(
                &mut s.hb.slice_mut(..n * ffn),
                &s.hb2.slice(..n * ffn),
                n * ffn,
            )?;
            gpu.matmul_quant(
                &w.w_down,
                &mut QuantInput::new(s.hb.slice(..n * ffn), n, q8),
                &mut s.xb.slice_mut(..n * dim),
            )?;
            gpu.add_in_place(
                &mut s.x.slice_mut(..n * dim),
                &s.xb.slice(..n * dim),
                n * dim,
            )?;
            if let Some(p) = profile {
                p.record(gpu, l, 2)?;
            }
            Ok(())
        })();
        // Also after a failed launch: the host slot may only go back once
        // the copy out of it (or, mapped, the kernels reading it) is done.
        let finished = self.weights.finish_layer(&self.gpu, source);
        if launched.is_ok() {
            if let Some(p) = &mut self.profile {
                p.pending[l] = Some(source);
            }
        }
        launched.and(finished)
    }

    fn finish(&mut self, output_norm: Weight<'_>, output: Weight<'_>) -> Result<&[f32]> {
        let (dim, vocab, m) = (self.hp.dim, self.hp.vocab_size, self.m);
        self.weights.times_mut().passes += 1;
        if m == 0 {
            self.collect_profile()?;
            return Ok(&self.logits_host[..0]);
        }
        let gpu = &self.gpu;
        let s = &mut self.s;
        // Gather the rows that want logits, normed, into xb.
        let norm = self.weights.global_vector(gpu, &output_norm)?;
        gpu.rmsnorm_gather(
            &mut s.xb.slice_mut(..m * dim),
            &s.x.slice(..self.n * dim),
            &norm,
            &self.rows.d_logit_rows.slice(..m),
            m,
            dim,
            self.hp.rms_eps,
        )?;
        let head = self.weights.global(gpu, &output)?;
        gpu.matmul_quant(
            &head,
            &mut QuantInput::new(s.xb.slice(..m * dim), m, &mut self.q8),
            &mut s.logits.slice_mut(..m * vocab),
        )?;
        gpu.download_into(
            &s.logits.slice(..m * vocab),
            &mut self.logits_host[..m * vocab],
        )
        .map_err(|e| Error::config(format!("{e} (a kernel of this pass may have failed)")))?;
        self.collect_profile()?;
        Ok(&self.logits_host[..m * vocab])
    }
}

/// The most activations one decode-width product quantizes: up to
/// `MATVEC_MAX_COLS` rows (fewer if the chunk is smaller) of the widest
/// input a weight multiplies (the model width, the attention output, or
/// the feed-forward hidden layer).
fn quantized_values(hp: &Hparams, max_chunk: usize) -> usize {
    max_chunk.min(MATVEC_MAX_COLS) * hp.dim.max(hp.q_dim()).max(hp.ffn_dim)
}

/// RoPE rotations as on the CPU (`cpu::forward::rope_rotations`): pair `i` of a
/// head turns by `pos * hp.rope_frequency(i)`, computed in f64, stored as
/// interleaved `(cos, sin)` f32 pairs.
fn rope_table(hp: &Hparams, n_ctx: usize) -> Vec<f32> {
    let half = hp.rope_dims / 2;
    let mut table = Vec::with_capacity(n_ctx * half * 2);
    for pos in 0..n_ctx {
        for i in 0..half {
            let angle = pos as f64 * hp.rope_frequency(i);
            table.push(angle.cos() as f32);
            table.push(angle.sin() as f32);
        }
    }
    if table.is_empty() {
        // No rotated dims: keep the buffer non-empty (it is never read).
        table.extend([1.0, 0.0]);
    }
    table
}

//! The engine: validates a batch of positions, walks the layers in order,
//! acquiring each layer's weights from a [`WeightSource`] (resident or
//! streamed) and handing them to a [`Backend`], then returns logits.
//!
//! The same kernels run over the same bytes whether a layer was resident or
//! streamed, so streamed logits equal resident logits exactly.

pub use crate::backend::{FileBytes, Logits, SeqChunk};
/// Where the engine's weight bytes come from (defined with the residency
/// that provides them; re-exported here for the engine's users).
pub use crate::residency::WeightSource;

use crate::backend::{Batch, BatchEntry};

use crate::backend::cpu::{CpuForward, CpuForwardConfig};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::kv_cache::{KvShape, KvType};
use crate::kv_disk::{DiskKv, KvOffload};
use crate::model::{Hparams, Model};
use crate::residency::plan::{LayerRead, Plan};
use std::path::PathBuf;

/// Engine settings fixed at start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Positions the KV cache holds per sequence.
    pub n_ctx: usize,
    /// Most positions processed per forward call, over all sequences.
    pub max_chunk: usize,
    /// Sequences decoded together (KV cache slots).
    pub n_seq: usize,
    pub threads: usize,
    /// Element type of the KV cache (`[memory] kv_type`).
    pub kv_type: KvType,
    /// Where the KV cache lives (`[memory] kv_offload`). The planner
    /// decides `Auto` ([`EngineConfig::plan`]); an engine is built from
    /// the decided config ([`EngineConfig::resolved`]): `Auto` builds a
    /// cache in RAM.
    pub kv_offload: KvOffload,
    /// Directory of the KV file when on disk (`[memory] kv_dir`).
    pub kv_dir: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            n_ctx: 2048,
            max_chunk: 64,
            n_seq: 1,
            threads: 1,
            kv_type: KvType::default(),
            kv_offload: KvOffload::default(),
            kv_dir: std::env::temp_dir(),
        }
    }
}

impl EngineConfig {
    /// The same shape decoding `n_seq` sequences together: a pass must
    /// hold every sequence's decode step, so the chunk is at least `n_seq`.
    pub fn with_batch(&self, n_seq: usize) -> EngineConfig {
        EngineConfig {
            n_seq,
            max_chunk: self.max_chunk.max(n_seq),
            ..self.clone()
        }
    }

    /// Bytes the CPU backend allocates for a model at this shape (KV cache,
    /// activations, logits, scratch): what the planner charges for it.
    pub fn cpu_memory_bytes(&self, hp: &Hparams) -> u64 {
        CpuForward::memory_bytes(hp, self.cpu())
    }

    /// Plan `model` inside `budget` with the CPU backend's memory. With
    /// `kv_offload = Auto` the KV cache goes to disk only when the plan
    /// with it in RAM does not fit; the plan says which
    /// ([`Plan::kv_file_bytes`]).
    pub fn plan(&self, model: &Model, budget: u64) -> Result<Plan> {
        match self.kv_offload {
            KvOffload::Off => self.with_offload(KvOffload::Off).plan_here(model, budget),
            KvOffload::On => self.with_offload(KvOffload::On).plan_here(model, budget),
            KvOffload::Auto => {
                let (ram, disk) = (
                    self.with_offload(KvOffload::Off),
                    self.with_offload(KvOffload::On),
                );
                ram.plan_here(model, budget).or_else(|e| {
                    if self.offload_pays(model) {
                        disk.plan_here(model, budget)
                    } else {
                        Err(e)
                    }
                })
            }
        }
    }

    fn plan_here(&self, model: &Model, budget: u64) -> Result<Plan> {
        let on_disk = self.kv_offload == KvOffload::On;
        let mut plan = Plan::make(model, self.cpu_memory_bytes(&model.hparams), budget);
        if on_disk {
            let file = self.kv_file_bytes(&model.hparams);
            match &mut plan {
                Ok(p) => p.kv_file_bytes = file,
                Err(e) => {
                    e.message = format!(
                    "{} (with the KV cache on disk: its {:.1} MiB file costs only buffers in RAM)",
                    e.message,
                    file as f64 / (1u64 << 20) as f64
                )
                }
            }
        }
        plan
    }

    /// This config with the KV placement `plan` decided (`On` or `Off`):
    /// what an engine for that plan is built from.
    pub fn resolved(&self, plan: &Plan) -> EngineConfig {
        self.with_offload(if plan.kv_file_bytes > 0 {
            KvOffload::On
        } else {
            KvOffload::Off
        })
    }

    fn with_offload(&self, kv_offload: KvOffload) -> EngineConfig {
        EngineConfig {
            kv_offload,
            ..self.clone()
        }
    }

    /// Size of the KV file when the cache is on disk.
    pub fn kv_file_bytes(&self, hp: &Hparams) -> u64 {
        DiskKv::file_bytes(KvShape::of(hp, self.n_seq, self.n_ctx), self.kv_type)
    }

    /// The smallest budget that runs `model` on the CPU at this shape: with
    /// the KV cache in RAM (`Off`), on disk (`On`), or as `Auto` would
    /// place it at that budget.
    pub fn minimum_budget(&self, model: &Model) -> u64 {
        let min =
            |o| Plan::minimum_budget(model, self.with_offload(o).cpu_memory_bytes(&model.hparams));
        match self.kv_offload {
            KvOffload::Auto if self.offload_pays(model) => min(KvOffload::On),
            KvOffload::Auto => min(KvOffload::Off),
            o => min(o),
        }
    }

    /// Whether `Auto` may put the cache on disk: only where that frees at
    /// least one layer's weights (a short context's cache costs about what
    /// its buffers do, and reading it back every token would buy nothing).
    fn offload_pays(&self, model: &Model) -> bool {
        let hp = &model.hparams;
        let ram = self.with_offload(KvOffload::Off).cpu_memory_bytes(hp);
        let disk = self.with_offload(KvOffload::On).cpu_memory_bytes(hp);
        let layer = model
            .layers
            .iter()
            .map(|l| LayerRead::covering(l.file_span()).len())
            .max()
            .unwrap_or(0);
        ram > disk.saturating_add(layer)
    }

    fn cpu(&self) -> CpuForwardConfig {
        CpuForwardConfig {
            n_ctx: self.n_ctx,
            max_chunk: self.max_chunk,
            n_seq: self.n_seq,
            threads: self.threads,
            kv_type: self.kv_type,
            kv_on_disk: self.kv_offload == KvOffload::On,
        }
    }
}

/// The forward pass over streamed layers. The backend is a trait object:
/// it is called `n_layers + 2` times per pass, so dynamic dispatch costs
/// nothing measurable (`flea bench` before and after said so), and one
/// engine type serves every backend.
pub struct Engine<'a, W: WeightSource> {
    model: &'a Model,
    weights: W,
    backend: Box<dyn Backend + 'a>,
    n_ctx: usize,
    n_seq: usize,
    max_chunk: usize,
    /// The pass being built by `push`, reused across passes.
    entries: Vec<BatchEntry>,
    tokens: Vec<u32>,
}

impl<'a, W: WeightSource> Engine<'a, W> {
    /// An engine on the CPU.
    pub fn new(model: &'a Model, weights: W, config: &EngineConfig) -> Result<Self> {
        let backend = CpuForward::with_kv_dir(&model.hparams, config.cpu(), &config.kv_dir)?;
        Self::with_backend(model, weights, backend, config)
    }

    /// An engine on `backend`, which was built for the same `config`.
    pub fn with_backend(
        model: &'a Model,
        weights: W,
        backend: impl Backend + 'a,
        config: &EngineConfig,
    ) -> Result<Self> {
        if config.n_ctx == 0 || config.max_chunk == 0 || config.n_seq == 0 {
            return Err(Error::config(
                "context size, chunk size and batch size must be at least 1",
            ));
        }
        Ok(Engine {
            model,
            weights,
            backend: Box::new(backend),
            n_ctx: config.n_ctx,
            n_seq: config.n_seq,
            max_chunk: config.max_chunk,
            entries: Vec::with_capacity(config.n_seq),
            tokens: Vec::with_capacity(config.max_chunk),
        })
    }

    pub fn hparams(&self) -> &Hparams {
        &self.model.hparams
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    /// What the KV cache read from disk so far (nothing with the cache in
    /// memory).
    pub fn kv_reads(&self) -> crate::kv_disk::KvReads {
        self.backend.kv_reads()
    }

    pub fn weights(&self) -> &W {
        &self.weights
    }

    pub fn weights_mut(&mut self) -> &mut W {
        &mut self.weights
    }

    /// Run `tokens` of sequence 0 at positions `start_pos..`, filling the
    /// KV cache, and return logits: one `vocab`-long row per position for
    /// [`Logits::All`], the last position's row for [`Logits::Last`], none
    /// for [`Logits::None`].
    pub fn forward(&mut self, tokens: &[u32], start_pos: usize, want: Logits) -> Result<&[f32]> {
        self.forward_batch(&[SeqChunk {
            seq: 0,
            tokens,
            start_pos,
            logits: want,
        }])
    }

    /// Feed `tokens` of sequence `seq` at positions `start_pos..`, in
    /// passes of at most `max_chunk` positions: the one prefill loop. After
    /// each pass `after` sees that pass's logits as `want` asks (every row
    /// for [`Logits::All`]; for [`Logits::Last`] only the final position's
    /// row, in the final pass; otherwise none) and returns whether to go on:
    /// `false` (an interrupt) stops between passes, and `prefill` returns
    /// `Ok(false)`.
    pub fn prefill(
        &mut self,
        seq: usize,
        tokens: &[u32],
        start_pos: usize,
        want: Logits,
        mut after: impl FnMut(&[f32]) -> Result<bool>,
    ) -> Result<bool> {
        let chunk = self.max_chunk;
        let passes = tokens.len().div_ceil(chunk);
        for (i, piece) in tokens.chunks(chunk).enumerate() {
            let last = i + 1 == passes;
            let logits = match want {
                Logits::All => Logits::All,
                Logits::Last if last => Logits::Last,
                _ => Logits::None,
            };
            self.clear_batch();
            self.push(seq, piece, start_pos + i * chunk, logits);
            let rows = self.run_batch()?;
            if !after(rows)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One pass over every layer for several sequences at once: each weight
    /// is read once for all of them. Logits rows come back in batch order.
    pub fn forward_batch(&mut self, batch: &[SeqChunk<'_>]) -> Result<&[f32]> {
        self.clear_batch();
        for c in batch {
            self.push(c.seq, c.tokens, c.start_pos, c.logits);
        }
        self.run_batch()
    }

    /// Start building a pass without allocating: `push` entries, then
    /// `run_batch`.
    pub fn clear_batch(&mut self) {
        self.entries.clear();
        self.tokens.clear();
    }

    /// Add `tokens` of sequence `seq` at positions `start_pos..` to the
    /// pass being built. Checked by `run_batch`.
    pub fn push(&mut self, seq: usize, tokens: &[u32], start_pos: usize, logits: Logits) {
        self.entries.push(BatchEntry {
            seq,
            first: self.tokens.len(),
            len: tokens.len(),
            start_pos,
            logits,
        });
        self.tokens.extend_from_slice(tokens);
    }

    /// Run the pass built by `push`: logits rows in entry order.
    pub fn run_batch(&mut self) -> Result<&[f32]> {
        self.validate()?;
        let model = self.model;
        let batch = Batch {
            entries: &self.entries,
            tokens: &self.tokens,
        };
        self.backend
            .begin(batch, self.weights.global(&model.token_embd))?;
        for (l, layer) in model.layers.iter().enumerate() {
            let bytes = self.weights.acquire_layer(l)?;
            let result = self.backend.layer(l, layer, bytes);
            self.weights.release_layer(l);
            result?;
        }
        self.backend.finish(
            self.weights.global(&model.output_norm),
            self.weights.global(&model.output),
        )
    }

    fn validate(&self) -> Result<()> {
        let total = self.tokens.len();
        if total == 0 || total > self.max_chunk {
            return Err(Error::usage(format!(
                "forward: expected 1..={} positions per pass, found {total}",
                self.max_chunk
            )));
        }
        let vocab = self.model.hparams.vocab_size;
        for (i, e) in self.entries.iter().enumerate() {
            if e.len == 0 {
                return Err(Error::usage(format!(
                    "forward: batch entry {i} has no tokens"
                )));
            }
            if e.seq >= self.n_seq || self.entries[..i].iter().any(|o| o.seq == e.seq) {
                return Err(Error::usage(format!(
                    "forward: sequence slot {} is out of range or repeated (engine has {})",
                    e.seq, self.n_seq
                )));
            }
            if e.start_pos + e.len > self.n_ctx {
                return Err(Error::usage(format!(
                    "context full: positions {}..{} do not fit in the context of {} tokens",
                    e.start_pos,
                    e.start_pos + e.len,
                    self.n_ctx
                )));
            }
        }
        if let Some(&tok) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::usage(format!(
                "token id {tok} is out of range (vocabulary has {vocab} tokens)"
            )));
        }
        Ok(())
    }
}

/// Assembling an engine on the GPU: what reads a plan and a residency on
/// the CUDA backend's behalf, so that the backend knows neither.
#[cfg(feature = "cuda")]
mod cuda_assembly {
    use super::{Engine, EngineConfig};
    use crate::backend::cuda::{CudaForward, CudaForwardConfig, DevicePlan};
    use crate::backend::Feed;
    use crate::error::Result;
    use crate::model::{Hparams, Model};
    use crate::residency::plan::Plan;
    use crate::residency::Residency;

    impl EngineConfig {
        /// The CUDA backend's shape for this engine and `plan`'s slots and
        /// resident layers, fed as `feed` says.
        pub fn cuda_forward(&self, plan: &Plan, feed: Feed) -> CudaForwardConfig {
            let config = CudaForwardConfig {
                kv_type: self.kv_type,
                ..CudaForwardConfig::new(self.n_ctx, self.max_chunk, self.n_seq)
            };
            config.with_slots(
                plan.slot_bytes,
                plan.resident_layer_bytes,
                plan.global_bytes,
                feed,
            )
        }
    }

    impl CudaForwardConfig {
        /// As [`EngineConfig::cuda_forward`].
        pub fn for_plan(engine: &EngineConfig, plan: &Plan, feed: Feed) -> CudaForwardConfig {
            engine.cuda_forward(plan, feed)
        }
    }

    /// Device memory a run of `plan` allocates on the CUDA backend.
    pub fn device_plan(hp: &Hparams, config: CudaForwardConfig, plan: &Plan) -> DevicePlan {
        CudaForward::device_plan(
            hp,
            config,
            plan.global_bytes,
            plan.resident_layer_bytes,
            plan.slot_bytes,
        )
    }

    /// The engine on the GPU over a planned residency: the backend (built
    /// from `config`, e.g. [`EngineConfig::cuda_forward`]) page-locks the
    /// source's streaming slots (falling back to pageable copies with a log
    /// line) and feeds streamed layers as `config.buffer` says.
    pub fn streaming_engine<'a>(
        model: &'a Model,
        source: Residency,
        config: CudaForwardConfig,
        engine: &EngineConfig,
    ) -> Result<Engine<'a, Residency>> {
        let backend = CudaForward::new(&model.hparams, config)?;
        streaming_engine_with(model, source, backend, engine)
    }

    /// As [`streaming_engine`], with a backend already made.
    pub fn streaming_engine_with<'a>(
        model: &'a Model,
        mut source: Residency,
        mut backend: CudaForward,
        engine: &EngineConfig,
    ) -> Result<Engine<'a, Residency>> {
        backend.pin_host_slots(&mut source)?;
        Engine::with_backend(model, source, backend, engine)
    }
}

#[cfg(feature = "cuda")]
pub use cuda_assembly::{device_plan, streaming_engine, streaming_engine_with};

//! The forward pass: token ids in, logits out, one chunk of positions at a
//! time. Reads top to bottom like the math: embed, then per layer attention
//! and feed-forward with residuals, then the final norm and output head.

use crate::backend::cpu::{self, CpuBackend};
use crate::backend::Weight;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::KvCache;
use crate::model::{Hparams, Model, TensorRef};
use crate::quant;

/// Bytes that cover some range of the model file, starting at file offset
/// `base`: a whole memory map, a resident copy, or a streaming slot.
#[derive(Debug, Clone, Copy)]
pub struct FileBytes<'b> {
    pub base: u64,
    pub bytes: &'b [u8],
}

impl<'b> FileBytes<'b> {
    /// The backend's view of a tensor inside these bytes.
    pub fn weight(&self, t: &TensorRef) -> Weight<'b> {
        let start = (t.file_range.start - self.base) as usize;
        Weight {
            ggml_type: t.ggml_type,
            rows: t.rows,
            cols: t.cols,
            data: &self.bytes[start..start + t.bytes() as usize],
        }
    }
}

/// Where the engine gets weight bytes from. The memory map and a fully
/// resident copy always have every layer; a streaming source hands out the
/// slot that holds the layer, and the layer may only be read until
/// `release_layer`.
pub trait WeightSource {
    /// A tensor outside the layers (embeddings, output norm, output head),
    /// which stays resident for the whole run.
    fn global(&self, t: &TensorRef) -> Weight<'_>;
    /// Bytes holding layer `l`, waiting for them if they are still loading.
    fn acquire_layer(&mut self, l: usize) -> Result<FileBytes<'_>>;
    /// The engine is done with layer `l`: its slot may be refilled.
    fn release_layer(&mut self, l: usize);
}

/// The memory map as a weight source: every layer resident as far as the
/// engine can tell, with the operating system paging on demand.
impl WeightSource for &GgufFile {
    fn global(&self, t: &TensorRef) -> Weight<'_> {
        whole_map(self).weight(t)
    }
    fn acquire_layer(&mut self, _l: usize) -> Result<FileBytes<'_>> {
        Ok(whole_map(self))
    }
    fn release_layer(&mut self, _l: usize) {}
}

fn whole_map(file: &GgufFile) -> FileBytes<'_> {
    FileBytes {
        base: 0,
        bytes: file.bytes_at(0..file.file_len()),
    }
}

/// Which positions of a chunk need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (teacher-forced evaluation).
    All,
}

/// Engine settings fixed at start.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Positions the KV cache holds.
    pub n_ctx: usize,
    /// Most positions processed per forward call (prefill chunk size).
    pub max_chunk: usize,
    pub threads: usize,
}

/// Activation buffers, sized once for `max_chunk` positions and named by
/// role as in llama2.c.
struct Scratch {
    x: Vec<f32>,       // (chunk, dim) residual stream
    xb: Vec<f32>,      // (chunk, dim) normed input / attention output projected
    q: Vec<f32>,       // (chunk, n_heads * head_dim)
    k: Vec<f32>,       // (chunk, kv_dim)
    v: Vec<f32>,       // (chunk, kv_dim)
    att_out: Vec<f32>, // (chunk, n_heads * head_dim)
    hb: Vec<f32>,      // (chunk, ffn_dim) gate, then silu(gate) * up
    hb2: Vec<f32>,     // (chunk, ffn_dim) up
    scores: Vec<f32>,  // (n_ctx) attention scores of one head
    norm_w: Vec<f32>,  // (dim) a norm's weights, dequantized
    logits: Vec<f32>,  // (chunk, vocab)
}

impl Scratch {
    /// Element counts, in field order.
    fn lengths(hp: &Hparams, n_ctx: usize, chunk: usize) -> [usize; 11] {
        let q_dim = hp.n_heads * hp.head_dim;
        [
            chunk * hp.dim,
            chunk * hp.dim,
            chunk * q_dim,
            chunk * hp.kv_dim(),
            chunk * hp.kv_dim(),
            chunk * q_dim,
            chunk * hp.ffn_dim,
            chunk * hp.ffn_dim,
            n_ctx,
            hp.dim,
            chunk * hp.vocab_size,
        ]
    }

    fn new(hp: &Hparams, n_ctx: usize, chunk: usize) -> Scratch {
        let [x, xb, q, k, v, att_out, hb, hb2, scores, norm_w, logits] =
            Self::lengths(hp, n_ctx, chunk).map(|n| vec![0.0f32; n]);
        Scratch {
            x,
            xb,
            q,
            k,
            v,
            att_out,
            hb,
            hb2,
            scores,
            norm_w,
            logits,
        }
    }
}

pub struct Engine<'a, W: WeightSource> {
    model: &'a Model,
    weights: W,
    backend: CpuBackend,
    kv: KvCache,
    s: Scratch,
    /// `(cos, sin)` per position and rotated pair: `[n_ctx][rope_dims / 2]`.
    rope_table: Vec<(f32, f32)>,
    max_chunk: usize,
}

impl<'a, W: WeightSource> Engine<'a, W> {
    pub fn new(model: &'a Model, weights: W, config: &EngineConfig) -> Result<Self> {
        let hp = &model.hparams;
        if config.n_ctx == 0 || config.max_chunk == 0 {
            return Err(Error::config(
                "context size and chunk size must be at least 1",
            ));
        }
        let s = Scratch::new(hp, config.n_ctx, config.max_chunk);
        Ok(Engine {
            model,
            weights,
            backend: CpuBackend::new(config.threads),
            kv: KvCache::new(hp.n_layers, config.n_ctx, hp.kv_dim()),
            s,
            rope_table: rope_table(hp, config.n_ctx),
            max_chunk: config.max_chunk,
        })
    }

    /// Bytes the engine allocates for a model at this context and chunk
    /// size: KV cache, activations, logits and the RoPE table. The planner
    /// charges this against the budget.
    pub fn memory_bytes(hp: &Hparams, n_ctx: usize, max_chunk: usize) -> u64 {
        let f32s = Scratch::lengths(hp, n_ctx, max_chunk).iter().sum::<usize>();
        let rope = n_ctx * (hp.rope_dims / 2) * std::mem::size_of::<(f32, f32)>();
        KvCache::bytes_for(hp.n_layers, n_ctx, hp.kv_dim())
            + (f32s * std::mem::size_of::<f32>() + rope) as u64
            + backend_scratch_bytes(hp, max_chunk)
    }

    pub fn hparams(&self) -> &Hparams {
        &self.model.hparams
    }

    pub fn n_ctx(&self) -> usize {
        self.kv.n_ctx()
    }

    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    pub fn weights(&self) -> &W {
        &self.weights
    }

    pub fn weights_mut(&mut self) -> &mut W {
        &mut self.weights
    }

    /// Run `tokens` at positions `start_pos..` through the model, filling
    /// the KV cache, and return logits: one `vocab`-long row per position
    /// for [`Logits::All`], or the last position's row for [`Logits::Last`].
    pub fn forward(&mut self, tokens: &[u32], start_pos: usize, want: Logits) -> Result<&[f32]> {
        let hp = self.model.hparams.clone();
        let n = tokens.len();
        if n == 0 || n > self.max_chunk {
            return Err(Error::usage(format!(
                "forward: expected 1..={} tokens per call, found {n}",
                self.max_chunk
            )));
        }
        if start_pos + n > self.kv.n_ctx() {
            return Err(Error::usage(format!(
                "context full: positions {}..{} do not fit in the context of {} tokens (raise --ctx-size)",
                start_pos,
                start_pos + n,
                self.kv.n_ctx()
            )));
        }
        let (dim, q_dim, kv_dim, ffn) = (hp.dim, hp.n_heads * hp.head_dim, hp.kv_dim(), hp.ffn_dim);
        let half_rot = hp.rope_dims / 2;

        // Embedding: dequantize each token's row into the residual stream.
        let embd = self.weights.global(&self.model.token_embd);
        for (p, &tok) in tokens.iter().enumerate() {
            if tok as usize >= hp.vocab_size {
                return Err(Error::usage(format!(
                    "token id {tok} is out of range (vocabulary has {} tokens)",
                    hp.vocab_size
                )));
            }
            quant::dequantize_row(
                embd.ggml_type,
                embd.row(tok as usize),
                &mut self.s.x[p * dim..(p + 1) * dim],
            );
        }

        let s = &mut self.s;
        for (l, layer) in self.model.layers.iter().enumerate() {
            let bytes = self.weights.acquire_layer(l)?;
            let w = |t: &TensorRef| bytes.weight(t);

            // Attention: xb = rmsnorm(x); q, k, v = xb Wq, xb Wk, xb Wv.
            cpu::dequantize_vector(w(&layer.attn_norm), &mut s.norm_w);
            for p in 0..n {
                let r = p * dim..(p + 1) * dim;
                cpu::rmsnorm(&mut s.xb[r.clone()], &s.x[r], &s.norm_w, hp.rms_eps);
            }
            let xb = &s.xb[..n * dim];
            self.backend
                .matmul(w(&layer.wq), xb, &mut s.q[..n * q_dim], n);
            self.backend
                .matmul(w(&layer.wk), xb, &mut s.k[..n * kv_dim], n);
            self.backend
                .matmul(w(&layer.wv), xb, &mut s.v[..n * kv_dim], n);

            // RoPE on q and k, then append k, v to the cache.
            for p in 0..n {
                let pos = start_pos + p;
                let cs = &self.rope_table[pos * half_rot..(pos + 1) * half_rot];
                cpu::rope(&mut s.q[p * q_dim..(p + 1) * q_dim], hp.head_dim, cs);
                cpu::rope(&mut s.k[p * kv_dim..(p + 1) * kv_dim], hp.head_dim, cs);
                self.kv.store(
                    l,
                    pos,
                    &s.k[p * kv_dim..(p + 1) * kv_dim],
                    &s.v[p * kv_dim..(p + 1) * kv_dim],
                );
            }

            // Causal attention: position p sees cache entries 0..=pos.
            for p in 0..n {
                let n_seen = start_pos + p + 1;
                let (k_cache, v_cache) = self.kv.layer(l, n_seen);
                cpu::attention(
                    &mut s.att_out[p * q_dim..(p + 1) * q_dim],
                    &s.q[p * q_dim..(p + 1) * q_dim],
                    k_cache,
                    v_cache,
                    n_seen,
                    hp.n_heads,
                    hp.n_kv_heads,
                    hp.head_dim,
                    &mut s.scores,
                );
            }

            // Output projection and residual: x += att_out Wo.
            self.backend.matmul(
                w(&layer.wo),
                &s.att_out[..n * q_dim],
                &mut s.xb[..n * dim],
                n,
            );
            cpu::add_in_place(&mut s.x[..n * dim], &s.xb[..n * dim]);

            // Feed-forward: x += (silu(xb Wgate) * (xb Wup)) Wdown, xb = rmsnorm(x).
            cpu::dequantize_vector(w(&layer.ffn_norm), &mut s.norm_w);
            for p in 0..n {
                let r = p * dim..(p + 1) * dim;
                cpu::rmsnorm(&mut s.xb[r.clone()], &s.x[r], &s.norm_w, hp.rms_eps);
            }
            let xb = &s.xb[..n * dim];
            self.backend
                .matmul(w(&layer.w_gate), xb, &mut s.hb[..n * ffn], n);
            self.backend
                .matmul(w(&layer.w_up), xb, &mut s.hb2[..n * ffn], n);
            cpu::swiglu(&mut s.hb[..n * ffn], &s.hb2[..n * ffn]);
            self.backend
                .matmul(w(&layer.w_down), &s.hb[..n * ffn], &mut s.xb[..n * dim], n);
            cpu::add_in_place(&mut s.x[..n * dim], &s.xb[..n * dim]);
            self.weights.release_layer(l);
        }

        // Final norm and output head, for the positions that need logits.
        let first = match want {
            Logits::All => 0,
            Logits::Last => n - 1,
        };
        let m = n - first;
        cpu::dequantize_vector(self.weights.global(&self.model.output_norm), &mut s.norm_w);
        for p in first..n {
            let (src, dst) = (
                p * dim..(p + 1) * dim,
                (p - first) * dim..(p - first + 1) * dim,
            );
            cpu::rmsnorm(&mut s.xb[dst], &s.x[src], &s.norm_w, hp.rms_eps);
        }
        let vocab = hp.vocab_size;
        self.backend.matmul(
            self.weights.global(&self.model.output),
            &s.xb[..m * dim],
            &mut s.logits[..m * vocab],
            m,
        );
        Ok(&self.s.logits[..m * vocab])
    }
}

/// What the backend may keep per matmul input (8-bit activations with
/// their scales): bounded by two bytes per input element of the widest
/// matrix input, for a whole chunk.
fn backend_scratch_bytes(hp: &Hparams, max_chunk: usize) -> u64 {
    let widest = hp.dim.max(hp.ffn_dim).max(hp.n_heads * hp.head_dim);
    (2 * widest * max_chunk) as u64
}

/// Precompute RoPE rotations: pair `i` of a head turns by
/// `pos * base^(-2i / rope_dims)`. Computed in f64 so the table itself adds
/// no error beyond the final rounding.
fn rope_table(hp: &Hparams, n_ctx: usize) -> Vec<(f32, f32)> {
    let half = hp.rope_dims / 2;
    let mut table = Vec::with_capacity(n_ctx * half);
    for pos in 0..n_ctx {
        for i in 0..half {
            let freq = (hp.rope_base as f64).powf(-2.0 * i as f64 / hp.rope_dims as f64);
            let angle = pos as f64 * freq;
            table.push((angle.cos() as f32, angle.sin() as f32));
        }
    }
    table
}

//! The llama forward pass on a CUDA device: the [`Backend`] that keeps the
//! activations, the KV cache and (up to a budget) the weights in device
//! memory. It computes what `cpu_forward.rs` computes, stage for stage;
//! only the summation order inside kernels differs, so logits agree within
//! float rounding, not bit for bit.

use cudarc::driver::CudaSlice;

use super::device::{AttentionShape, Gpu};
use super::weights::WeightCache;
use crate::backend::{Backend, Batch, FileBytes, Logits, Weight};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
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
    /// Most bytes of layer weights kept in device memory; layers past it
    /// are copied in each time they run. `u64::MAX`: keep every layer.
    pub weight_cache_bytes: u64,
}

impl CudaForwardConfig {
    /// Device 0, every layer kept.
    pub fn new(n_ctx: usize, max_chunk: usize, n_seq: usize) -> CudaForwardConfig {
        CudaForwardConfig {
            n_ctx,
            max_chunk,
            n_seq,
            device: 0,
            weight_cache_bytes: u64::MAX,
        }
    }
}

/// Activation buffers on the device, sized once for `max_chunk` positions
/// and named by role as in `cpu_forward.rs`.
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

pub struct CudaForward {
    gpu: Gpu,
    hp: Hparams,
    n_ctx: usize,
    n_seq: usize,
    max_chunk: usize,
    weights: WeightCache,
    s: Scratch,
    /// `[layer][seq][position][kv_dim]`, as `KvCache` on the host.
    k_cache: CudaSlice<f32>,
    v_cache: CudaSlice<f32>,
    /// `(cos, sin)` per position and rotated pair: `[n_ctx][rope_dims / 2][2]`.
    rope_table: CudaSlice<f32>,
    rows: Rows,
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
        let need = Self::memory_bytes(hp, config);
        let (free, _) = gpu.mem_info()?;
        if need > free as u64 {
            return Err(Error::config(format!(
                "CUDA: the KV cache and activations need {:.2} GiB but {} has {:.2} GiB free \
                 (lower --ctx-size, the batch or the chunk size)",
                need as f64 / (1u64 << 30) as f64,
                gpu.info().name,
                free as f64 / (1u64 << 30) as f64
            )));
        }
        let cache_len = hp.n_layers * config.n_seq * config.n_ctx * hp.kv_dim();
        let chunk = config.max_chunk;
        Ok(CudaForward {
            s: Scratch::new(&gpu, hp, chunk)?,
            k_cache: gpu.zeros(cache_len)?,
            v_cache: gpu.zeros(cache_len)?,
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
            argmax: gpu.zeros(chunk)?,
            argmax_host: vec![0; chunk],
            logits_host: vec![0.0; chunk * hp.vocab_size],
            weights: WeightCache::new(config.weight_cache_bytes),
            hp: hp.clone(),
            n_ctx: config.n_ctx,
            n_seq: config.n_seq,
            max_chunk: chunk,
            n: 0,
            m: 0,
            gpu,
        })
    }

    /// Device bytes this backend allocates for the given shape besides the
    /// weights: KV cache (f32, as on the CPU), activations, logits, RoPE
    /// table and per-row indices. Weights, and the staging buffer a layer
    /// past the cache budget is copied into (the size of the largest
    /// layer), are the planner's to charge.
    pub fn memory_bytes(hp: &Hparams, config: CudaForwardConfig) -> u64 {
        let f32s: usize = Scratch::lengths(hp, config.max_chunk).iter().sum();
        let rope = config.n_ctx * (hp.rope_dims / 2) * 2 * 4;
        let ints = (ROW_BUFFERS + 1) * config.max_chunk * 4;
        KvCache::bytes_for(hp.n_layers, config.n_seq, config.n_ctx, hp.kv_dim())
            + (f32s * 4 + rope + ints) as u64
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
        let hp = &self.hp;
        let (n, dim, q_dim, kv_dim, ffn) = (
            self.n,
            hp.dim,
            hp.n_heads * hp.head_dim,
            hp.kv_dim(),
            hp.ffn_dim,
        );
        let gpu = &self.gpu;
        let s = &mut self.s;
        let rows = &self.rows;
        let w = self.weights.layer(gpu, layer, bytes)?;

        // Attention: xb = rmsnorm(x); q, k, v = xb Wq, xb Wk, xb Wv.
        gpu.rmsnorm(
            &mut s.xb.slice_mut(..n * dim),
            &s.x.slice(..n * dim),
            &w.attn_norm,
            n,
            dim,
            hp.rms_eps,
        )?;
        let xb = s.xb.slice(..n * dim);
        gpu.matmul(&w.wq, &xb, &mut s.q.slice_mut(..n * q_dim), n)?;
        gpu.matmul(&w.wk, &xb, &mut s.k.slice_mut(..n * kv_dim), n)?;
        gpu.matmul(&w.wv, &xb, &mut s.v.slice_mut(..n * kv_dim), n)?;

        // RoPE on q and k at each row's position, then append k, v to each
        // row's sequence in this layer's cache.
        let (pos, seq) = (rows.d_pos.slice(..n), rows.d_seq.slice(..n));
        let table = self.rope_table.slice(..);
        let half_rot = hp.rope_dims / 2;
        gpu.rope(
            &mut s.q.slice_mut(..n * q_dim),
            &table,
            &pos,
            n,
            hp.n_heads,
            hp.head_dim,
            half_rot,
        )?;
        gpu.rope(
            &mut s.k.slice_mut(..n * kv_dim),
            &table,
            &pos,
            n,
            hp.n_kv_heads,
            hp.head_dim,
            half_rot,
        )?;
        let per_layer = self.n_seq * self.n_ctx * kv_dim;
        let span = l * per_layer..(l + 1) * per_layer;
        let mut k_cache = self.k_cache.slice_mut(span.clone());
        let mut v_cache = self.v_cache.slice_mut(span);
        gpu.kv_store(
            &mut k_cache,
            &mut v_cache,
            &s.k.slice(..n * kv_dim),
            &s.v.slice(..n * kv_dim),
            &seq,
            &pos,
            n,
            kv_dim,
            self.n_ctx,
        )?;
        // Causal attention: row p sees its sequence's positions 0..=pos.
        gpu.attention(
            &mut s.att_out.slice_mut(..n * q_dim),
            &s.q.slice(..n * q_dim),
            &k_cache.as_view(),
            &v_cache.as_view(),
            &seq,
            &pos,
            n,
            AttentionShape {
                n_heads: hp.n_heads,
                n_kv_heads: hp.n_kv_heads,
                head_dim: hp.head_dim,
                n_ctx: self.n_ctx,
            },
        )?;

        // Output projection and residual: x += att_out Wo.
        gpu.matmul(
            &w.wo,
            &s.att_out.slice(..n * q_dim),
            &mut s.xb.slice_mut(..n * dim),
            n,
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
        let xb = s.xb.slice(..n * dim);
        gpu.matmul(&w.w_gate, &xb, &mut s.hb.slice_mut(..n * ffn), n)?;
        gpu.matmul(&w.w_up, &xb, &mut s.hb2.slice_mut(..n * ffn), n)?;
        gpu.swiglu(
            &mut s.hb.slice_mut(..n * ffn),
            &s.hb2.slice(..n * ffn),
            n * ffn,
        )?;
        gpu.matmul(
            &w.w_down,
            &s.hb.slice(..n * ffn),
            &mut s.xb.slice_mut(..n * dim),
            n,
        )?;
        gpu.add_in_place(
            &mut s.x.slice_mut(..n * dim),
            &s.xb.slice(..n * dim),
            n * dim,
        )
    }

    fn finish(&mut self, output_norm: Weight<'_>, output: Weight<'_>) -> Result<&[f32]> {
        let (dim, vocab, m) = (self.hp.dim, self.hp.vocab_size, self.m);
        if m == 0 {
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
        gpu.matmul(
            &head,
            &s.xb.slice(..m * dim),
            &mut s.logits.slice_mut(..m * vocab),
            m,
        )?;
        gpu.download_into(
            &s.logits.slice(..m * vocab),
            &mut self.logits_host[..m * vocab],
        )
        .map_err(|e| Error::config(format!("{e} (a kernel of this pass may have failed)")))?;
        Ok(&self.logits_host[..m * vocab])
    }
}

/// RoPE rotations as on the CPU (`cpu_forward::rope_table`): pair `i` of a
/// head turns by `pos * base^(-2i / rope_dims)`, computed in f64, stored as
/// interleaved `(cos, sin)` f32 pairs.
fn rope_table(hp: &Hparams, n_ctx: usize) -> Vec<f32> {
    let half = hp.rope_dims / 2;
    let mut table = Vec::with_capacity(n_ctx * half * 2);
    for pos in 0..n_ctx {
        for i in 0..half {
            let freq = (hp.rope_base as f64).powf(-2.0 * i as f64 / hp.rope_dims as f64);
            let angle = pos as f64 * freq;
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

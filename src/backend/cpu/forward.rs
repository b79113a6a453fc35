//! The forward pass on the CPU: the [`Backend`] that owns the
//! activations, the KV cache and the kernels, and reads top to bottom like
//! the math.

use super::{AttnHeads, BlockPass, CpuBackend};
use crate::backend::{Backend, Batch, FileBytes, Logits, Weight};
use crate::error::Result;
use crate::kv_cache::{KvBlocks, KvCache, KvShape, KvType};
use crate::kv_disk::{DiskKv, KvStore};
use crate::model::{Hparams, LayerTensors, RopeStyle};
use crate::quant;
use std::path::Path;

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
    scores: Vec<f32>,  // attention scores: see `Scratch::lengths`
    norm_w: Vec<f32>,  // (max(dim, q_dim)) a norm's weights or a bias, dequantized
    head: Vec<f32>,    // (head_dim) one head, for the per-head norms
    logits: Vec<f32>,  // (chunk, vocab)
}

impl Scratch {
    /// Element counts, in field order.
    fn lengths(hp: &Hparams, config: &CpuForwardConfig, threads: usize) -> [usize; 12] {
        let (n_ctx, chunk) = (config.n_ctx, config.max_chunk);
        let q_dim = hp.q_dim();
        let group = hp.n_heads / hp.n_kv_heads.max(1);
        let scores = if config.kv_on_disk {
            // One kv head at a time (`attention_blocks`): every score of a
            // decode step's group, or a (max, sum) pair per row of a chunk.
            group * n_ctx.max(2 * chunk)
        } else {
            // Grouped: each thread scores every query head of one kv head
            // at once, so each cached K/V row is read once per kv head.
            threads * group * n_ctx
        };
        [
            chunk * hp.dim,
            chunk * hp.dim,
            chunk * q_dim,
            chunk * hp.kv_dim(),
            chunk * hp.kv_dim(),
            chunk * q_dim,
            chunk * hp.ffn_dim,
            chunk * hp.ffn_dim,
            scores,
            hp.dim.max(q_dim),
            hp.head_dim,
            chunk * hp.vocab_size,
        ]
    }

    fn new(hp: &Hparams, config: &CpuForwardConfig, threads: usize) -> Scratch {
        let [x, xb, q, k, v, att_out, hb, hb2, scores, norm_w, head, logits] =
            Self::lengths(hp, config, threads).map(|n| vec![0.0f32; n]);
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
            head,
            logits,
        }
    }
}

/// One sequence's run of positions inside the current pass.
#[derive(Debug, Clone, Copy)]
struct Run {
    seq: usize,
    /// First row of this run in the activation buffers.
    row: usize,
    len: usize,
    start_pos: usize,
    logits: Logits,
}

/// Announce to the cache on disk the blocks attention will load in layer
/// `l` for each run, so its reader thread reads them ahead.
fn schedule_kv_reads(kv: &mut KvStore, runs: &[Run], hp: &Hparams, scores_len: usize, l: usize) {
    let KvStore::Disk(disk) = kv else {
        return;
    };
    for run in runs {
        let pass = attn_heads(hp).pass(run.start_pos, run.len);
        let blocks = BlockPass::new(pass, scores_len, disk.block_positions());
        disk.schedule(l, run.seq, blocks);
    }
}

fn attn_heads(hp: &Hparams) -> AttnHeads {
    AttnHeads {
        n_heads: hp.n_heads,
        n_kv_heads: hp.n_kv_heads,
        head_dim: hp.head_dim,
        window: hp.sliding_window,
    }
}

/// Shape of a CPU forward pass, fixed at start.
#[derive(Debug, Clone, Copy)]
pub struct CpuForwardConfig {
    pub n_ctx: usize,
    pub max_chunk: usize,
    /// Sequences the KV cache holds (batched decoding).
    pub n_seq: usize,
    pub threads: usize,
    pub kv_type: KvType,
    /// The KV cache in a file through fixed buffers ([`crate::kv_disk`]).
    pub kv_on_disk: bool,
}

pub struct CpuForward {
    hp: Hparams,
    kernels: CpuBackend,
    kv: KvStore,
    s: Scratch,
    /// `(cos, sin)` per row of the pass and rotated pair:
    /// `[max_chunk][rope_dims / 2]`, computed in [`Backend::begin`] (a
    /// table for the whole context would grow with it).
    rope: Vec<(f32, f32)>,
    runs: Vec<Run>,
    /// Positions in the current pass.
    n: usize,
}

impl CpuForward {
    /// A backend with its KV cache in RAM, or, when `config.kv_on_disk`,
    /// in a file in `kv_dir` (an error names the directory if the file
    /// cannot be made).
    pub fn with_kv_dir(
        hp: &Hparams,
        config: CpuForwardConfig,
        kv_dir: &Path,
    ) -> Result<CpuForward> {
        let kernels = CpuBackend::new(config.threads);
        let widest = hp.dim.max(hp.ffn_dim).max(hp.q_dim());
        kernels.reserve(config.max_chunk, widest);
        let shape = KvShape::of(hp, config.n_seq, config.n_ctx);
        let kv = if config.kv_on_disk {
            KvStore::Disk(Box::new(DiskKv::create(
                kv_dir,
                shape,
                config.kv_type,
                config.max_chunk,
            )?))
        } else {
            KvStore::Ram(KvCache::new(shape, config.kv_type))
        };
        Ok(CpuForward {
            hp: hp.clone(),
            kv,
            s: Scratch::new(hp, &config, kernels.threads()),
            rope: vec![(0.0, 0.0); config.max_chunk * (hp.rope_dims / 2)],
            runs: Vec::with_capacity(config.max_chunk),
            n: 0,
            kernels,
        })
    }

    /// Bytes this backend allocates for the given shape: KV cache (or, on
    /// disk, its block buffers, new rows and tails), activations, logits,
    /// the pass's RoPE rotations and the kernels' activation scratch.
    /// The planner charges this against the budget.
    pub fn memory_bytes(hp: &Hparams, config: CpuForwardConfig) -> u64 {
        // Every size here is bounded by the stated caps (`crate::limits`)
        // and by tensor shapes checked against the file, so the usize
        // products cannot overflow on a 64-bit target; the sum saturates.
        let f32s: usize = Scratch::lengths(hp, &config, config.threads).iter().sum();
        let rope = config.max_chunk * (hp.rope_dims / 2) * std::mem::size_of::<(f32, f32)>();
        let widest = hp.dim.max(hp.ffn_dim).max(hp.q_dim());
        // The kernels quantize a matmul input to at most 1.25 bytes a value.
        let act_quant = config.max_chunk * widest * 5 / 4;
        let kv_type = KvCache::effective_type(config.kv_type, hp.head_dim);
        let kv = if config.kv_on_disk {
            DiskKv::ram_bytes(
                KvShape::of(hp, config.n_seq, config.n_ctx),
                kv_type,
                config.max_chunk,
            )
        } else {
            KvCache::bytes_for(
                hp.n_layers,
                config.n_seq,
                config.n_ctx,
                hp.kv_dim(),
                kv_type,
            )
        };
        kv.saturating_add((f32s * std::mem::size_of::<f32>() + rope + act_quant) as u64)
    }
}

impl Backend for CpuForward {
    fn begin(&mut self, batch: Batch<'_>, embd: Weight<'_>) -> Result<()> {
        let dim = self.hp.dim;
        let half_rot = self.hp.rope_dims / 2;
        self.runs.clear();
        let mut row = 0;
        for e in batch.entries {
            for (i, &tok) in batch.tokens[e.first..e.first + e.len].iter().enumerate() {
                let r = (row + i) * dim..(row + i + 1) * dim;
                quant::dequantize_row(embd.ggml_type, embd.row(tok as usize), &mut self.s.x[r]);
                let r = (row + i) * half_rot..(row + i + 1) * half_rot;
                rope_rotations(&self.hp, e.start_pos + i, &mut self.rope[r]);
            }
            self.runs.push(Run {
                seq: e.seq,
                row,
                len: e.len,
                start_pos: e.start_pos,
                logits: e.logits,
            });
            row += e.len;
        }
        self.n = row;
        // The cache on disk starts reading layer 0's blocks now.
        schedule_kv_reads(&mut self.kv, &self.runs, &self.hp, self.s.scores.len(), 0);
        Ok(())
    }

    fn layer(&mut self, l: usize, layer: &LayerTensors, bytes: FileBytes<'_>) -> Result<()> {
        let hp = &self.hp;
        let (n, dim, q_dim, kv_dim, ffn) = (self.n, hp.dim, hp.q_dim(), hp.kv_dim(), hp.ffn_dim);
        let half_rot = hp.rope_dims / 2;
        let s = &mut self.s;
        let mm = &self.kernels;
        let w = |t| bytes.weight(t);

        // Attention: xb = rmsnorm(x); q, k, v = xb Wq, xb Wk, xb Wv.
        super::dequantize_vector(w(&layer.attn_norm), &mut s.norm_w[..dim]);
        for p in 0..n {
            let r = p * dim..(p + 1) * dim;
            super::rmsnorm(&mut s.xb[r.clone()], &s.x[r], &s.norm_w[..dim], hp.rms_eps);
        }
        // One quantization of xb and one dispatch for all three.
        mm.matmuls(
            &s.xb[..n * dim],
            n,
            [w(&layer.wq), w(&layer.wk), w(&layer.wv)],
            [
                &mut s.q[..n * q_dim],
                &mut s.k[..n * kv_dim],
                &mut s.v[..n * kv_dim],
            ],
        );
        // Qwen 2: biases on the projections.
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            for (bias, out, width) in [
                (bq, &mut s.q, q_dim),
                (bk, &mut s.k, kv_dim),
                (bv, &mut s.v, kv_dim),
            ] {
                super::dequantize_vector(w(bias), &mut s.norm_w[..width]);
                super::add_bias(&mut out[..n * width], &s.norm_w[..width]);
            }
        }
        // Qwen 3: RMSNorm over each head of q and k, before RoPE.
        if let Some([q_norm, k_norm]) = &layer.qk_norm {
            let hd = hp.head_dim;
            for (norm, out, width) in [(q_norm, &mut s.q, q_dim), (k_norm, &mut s.k, kv_dim)] {
                super::dequantize_vector(w(norm), &mut s.norm_w[..hd]);
                super::rmsnorm_heads(
                    &mut out[..n * width],
                    &s.norm_w[..hd],
                    hp.rms_eps,
                    &mut s.head,
                );
            }
        }
        let rope = match hp.arch.rope {
            RopeStyle::Interleaved => super::rope,
            RopeStyle::Neox => super::rope_neox,
        };

        for run in &self.runs {
            // RoPE on q and k at each position, then append k, v to the
            // run's sequence in the cache.
            self.kv.begin(l, run.seq, run.start_pos)?;
            for i in 0..run.len {
                let (p, pos) = (run.row + i, run.start_pos + i);
                let cs = &self.rope[p * half_rot..(p + 1) * half_rot];
                rope(&mut s.q[p * q_dim..(p + 1) * q_dim], hp.head_dim, cs);
                rope(&mut s.k[p * kv_dim..(p + 1) * kv_dim], hp.head_dim, cs);
                self.kv.store(
                    l,
                    run.seq,
                    pos,
                    &s.k[p * kv_dim..(p + 1) * kv_dim],
                    &s.v[p * kv_dim..(p + 1) * kv_dim],
                );
            }
            // Causal attention: position p sees its sequence's entries
            // 0..=pos (the last `sliding_window` of them, if set).
            let rows = run.row * q_dim..(run.row + run.len) * q_dim;
            let (out, q) = (&mut s.att_out[rows.clone()], &s.q[rows]);
            let pass = attn_heads(hp).pass(run.start_pos, run.len);
            match &mut self.kv {
                KvStore::Ram(cache) => {
                    let (k_cache, v_cache) = cache.layer(l, run.seq, run.start_pos + run.len);
                    mm.attention_batch(out, q, k_cache, v_cache, pass, &mut s.scores);
                }
                KvStore::Disk(disk) => {
                    mm.attention_blocks(out, q, &mut **disk, pass, &mut s.scores)?
                }
            }
            self.kv
                .end(l, run.seq, run.start_pos, run.start_pos + run.len)?;
        }
        // The next layer's blocks are read during this layer's
        // feed-forward and the next one's projections.
        if l + 1 < hp.n_layers {
            schedule_kv_reads(&mut self.kv, &self.runs, hp, s.scores.len(), l + 1);
        }

        // Output projection and residual: x += att_out Wo.
        mm.matmul(
            w(&layer.wo),
            &s.att_out[..n * q_dim],
            &mut s.xb[..n * dim],
            n,
        );
        super::add_in_place(&mut s.x[..n * dim], &s.xb[..n * dim]);

        // Feed-forward: x += (silu(xb Wgate) * (xb Wup)) Wdown, xb = rmsnorm(x).
        super::dequantize_vector(w(&layer.ffn_norm), &mut s.norm_w[..dim]);
        for p in 0..n {
            let r = p * dim..(p + 1) * dim;
            super::rmsnorm(&mut s.xb[r.clone()], &s.x[r], &s.norm_w[..dim], hp.rms_eps);
        }
        mm.matmuls(
            &s.xb[..n * dim],
            n,
            [w(&layer.w_gate), w(&layer.w_up)],
            [&mut s.hb[..n * ffn], &mut s.hb2[..n * ffn]],
        );
        super::swiglu(&mut s.hb[..n * ffn], &s.hb2[..n * ffn]);
        mm.matmul(w(&layer.w_down), &s.hb[..n * ffn], &mut s.xb[..n * dim], n);
        super::add_in_place(&mut s.x[..n * dim], &s.xb[..n * dim]);
        Ok(())
    }

    fn finish(&mut self, output_norm: Weight<'_>, output: Weight<'_>) -> Result<&[f32]> {
        let (dim, vocab) = (self.hp.dim, self.hp.vocab_size);
        let s = &mut self.s;
        // Gather the rows that want logits, normed, into xb.
        super::dequantize_vector(output_norm, &mut s.norm_w[..dim]);
        let mut m = 0;
        for run in &self.runs {
            let first = match run.logits {
                Logits::All => 0,
                Logits::Last => run.len - 1,
                Logits::None => run.len,
            };
            for i in first..run.len {
                let src = (run.row + i) * dim..(run.row + i + 1) * dim;
                let dst = m * dim..(m + 1) * dim;
                super::rmsnorm(&mut s.xb[dst], &s.x[src], &s.norm_w[..dim], self.hp.rms_eps);
                m += 1;
            }
        }
        if m > 0 {
            self.kernels
                .matmul(output, &s.xb[..m * dim], &mut s.logits[..m * vocab], m);
        }
        Ok(&self.s.logits[..m * vocab])
    }

    fn kv_reads(&self) -> crate::kv_disk::KvReads {
        self.kv.reads()
    }
}

/// RoPE rotations at `pos`: pair `i` of a head turns by
/// `pos * hp.rope_frequency(i)`, in f64 so the rotation itself adds no
/// error beyond the final rounding. `out` holds `rope_dims / 2` pairs.
fn rope_rotations(hp: &Hparams, pos: usize, out: &mut [(f32, f32)]) {
    for (i, cs) in out.iter_mut().enumerate() {
        let angle = pos as f64 * hp.rope_frequency(i);
        *cs = (angle.cos() as f32, angle.sin() as f32);
    }
}

//! Per-position operations: norms, RoPE, softmax, attention, SwiGLU.
//!
//! They are small next to the matmuls except attention over a long context,
//! which [`CpuBackend::attention_batch`] spreads over the pool by
//! (position, head).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::isa::Isa;
use super::{kernels, CpuBackend};
use crate::backend::Weight;
use crate::quant;

/// Dequantize a single-row weight (a norm vector) into `out`.
pub fn dequantize_vector(w: Weight<'_>, out: &mut [f32]) {
    quant::dequantize_row(w.ggml_type, w.data, out);
}

/// `out = x / rms(x) * weight`, one position.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * scale * wi;
    }
}

/// Rotate adjacent pairs `(x[2i], x[2i+1])` of every head by the angles for
/// one position. GGUF llama files store Q/K rows permuted so that RoPE pairs
/// adjacent elements (ggml's "normal" mode). `cos_sin` holds
/// `(cos, sin)` for each pair index `i < rope_dims / 2` at this position.
pub fn rope(x: &mut [f32], head_dim: usize, cos_sin: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cos_sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Where one query head reads the cache.
#[derive(Clone, Copy)]
struct HeadLayout {
    head_dim: usize,
    kv_dim: usize,
    /// Heads sharing one kv head.
    group: usize,
    scale: f32,
}

impl HeadLayout {
    fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> HeadLayout {
        assert!(
            n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
            "attention: {n_heads} heads do not share {n_kv_heads} kv heads evenly"
        );
        HeadLayout {
            head_dim,
            kv_dim: n_kv_heads * head_dim,
            group: n_heads / n_kv_heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }
}

/// Query head `h` of one position against `n_seen` cached positions: scores
/// by the fixed-layout f32 dot ([`kernels::dot_f32`], identical on every
/// instruction set), softmax, then the values summed in position order.
#[allow(clippy::too_many_arguments)]
fn attend_head(
    isa: Isa,
    l: HeadLayout,
    h: usize,
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_seen: usize,
    scores: &mut [f32],
) {
    let kv_off = (h / l.group) * l.head_dim;
    let scores = &mut scores[..n_seen];
    for (t, s) in scores.iter_mut().enumerate() {
        let k = &k_cache[t * l.kv_dim + kv_off..t * l.kv_dim + kv_off + l.head_dim];
        *s = kernels::dot_f32(isa, q, k) * l.scale;
    }
    softmax(scores);
    out.fill(0.0);
    for (t, &p) in scores.iter().enumerate() {
        let v = &v_cache[t * l.kv_dim + kv_off..t * l.kv_dim + kv_off + l.head_dim];
        for (o, &vi) in out.iter_mut().zip(v) {
            *o += p * vi;
        }
    }
}

/// Causal attention for one query position over `n_ctx` cached positions.
///
/// `q` is `n_heads x head_dim`; `k_cache` and `v_cache` are
/// `n_ctx x (n_kv_heads * head_dim)`; query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)` (GQA; MQA when there is one kv head).
/// `scores` is scratch of at least `n_ctx`; `out` is `n_heads x head_dim`.
/// Gives the same bits as [`CpuBackend::attention_batch`].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_ctx: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scores: &mut [f32],
) {
    let l = HeadLayout::new(n_heads, n_kv_heads, head_dim);
    let isa = Isa::best();
    for (h, (oh, qh)) in out
        .chunks_exact_mut(head_dim)
        .zip(q.chunks_exact(head_dim))
        .enumerate()
        .take(n_heads)
    {
        attend_head(isa, l, h, oh, qh, k_cache, v_cache, n_ctx, scores);
    }
}

/// Output rows written by threads at disjoint heads.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every (position, head) slice is written by exactly one work item,
// and the dispatch joins all threads before `out` is used again.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so closures capture the wrapper (which is Sync)
    /// rather than the raw pointer field.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

impl CpuBackend {
    /// Causal attention for `n` consecutive positions `start_pos..start_pos
    /// + n`, spread over the pool by (position, head). Position `p` sees
    /// cache entries `0..=start_pos + p`.
    ///
    /// `q` and `out` are `n x (n_heads * head_dim)`; `k_cache` and `v_cache`
    /// hold at least `start_pos + n` positions of `n_kv_heads * head_dim`.
    /// `scores` is scratch of at least `threads() * (start_pos + n)` floats
    /// (one row per thread; allocate `threads() * n_ctx` once). Each output
    /// equals what [`attention`] computes for that position, whatever the
    /// thread count.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_batch(
        &self,
        out: &mut [f32],
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        start_pos: usize,
        n: usize,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scores: &mut [f32],
    ) {
        let l = HeadLayout::new(n_heads, n_kv_heads, head_dim);
        let q_dim = n_heads * head_dim;
        let n_ctx = start_pos + n;
        assert_eq!(q.len(), n * q_dim, "attention_batch: query length");
        assert_eq!(out.len(), n * q_dim, "attention_batch: output length");
        assert!(
            k_cache.len() >= n_ctx * l.kv_dim && v_cache.len() >= n_ctx * l.kv_dim,
            "attention_batch: cache shorter than {n_ctx} positions"
        );
        let stride = scores.len() / self.threads;
        assert!(
            stride >= n_ctx,
            "attention_batch: scores hold {} floats, need {} threads x {n_ctx}",
            scores.len(),
            self.threads
        );
        let isa = self.isa;
        let items = n * n_heads;
        let next = AtomicUsize::new(0);
        let out_ptr = SharedMut(out.as_mut_ptr());
        let scores_ptr = SharedMut(scores.as_mut_ptr());
        let work = |worker: usize| {
            // SAFETY: worker `i` alone uses scores[i * stride..][..stride],
            // inside `scores` since i < threads and stride * threads <= len.
            let scores =
                unsafe { std::slice::from_raw_parts_mut(scores_ptr.at(worker * stride), stride) };
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= items {
                    return;
                }
                let (p, h) = (item / n_heads, item % n_heads);
                let at = p * q_dim + h * head_dim;
                // SAFETY: `at + head_dim <= n * q_dim = out.len()`, and item
                // (p, h) is taken by one worker only.
                let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(at), head_dim) };
                attend_head(
                    isa,
                    l,
                    h,
                    out,
                    &q[at..at + head_dim],
                    k_cache,
                    v_cache,
                    start_pos + p + 1,
                    scores,
                );
            }
        };
        // Dot products plus value sums per item, roughly.
        let work_size = n * n_heads * n_ctx * head_dim * 2;
        if self.threads == 1 || work_size < 1 << 15 {
            work(0);
        } else {
            self.pool.run(&work);
        }
    }
}

/// SwiGLU: `gate = silu(gate) * up`, in place.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_adjacent_pairs() {
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        let angle = std::f32::consts::FRAC_PI_2;
        rope(&mut x, 4, &[(angle.cos(), angle.sin()), (1.0, 0.0)]);
        assert!((x[0]).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6);
        assert_eq!(&x[2..], &[0.0, 1.0]);
    }

    #[test]
    fn attention_with_one_position_returns_its_value() {
        // Two query heads sharing one kv head (GQA).
        let q = [1.0, 2.0, 3.0, 4.0];
        let k = [0.5, 0.5];
        let v = [7.0, -1.0];
        let mut out = [0.0; 4];
        let mut scores = [0.0; 1];
        attention(&mut out, &q, &k, &v, 1, 2, 1, 2, &mut scores);
        assert_eq!(out, [7.0, -1.0, 7.0, -1.0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, 1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > 0.99);
    }

    #[test]
    fn batched_attention_matches_per_position_attention() {
        let (n_heads, n_kv, hd, start, n) = (8, 2, 64, 37, 9);
        let kv_dim = n_kv * hd;
        let val = |i: usize, m: usize| ((i * m) % 1013) as f32 / 1013.0 - 0.5;
        let k: Vec<f32> = (0..(start + n) * kv_dim).map(|i| val(i, 7919)).collect();
        let v: Vec<f32> = (0..(start + n) * kv_dim).map(|i| val(i, 104_729)).collect();
        let q: Vec<f32> = (0..n * n_heads * hd).map(|i| val(i, 31)).collect();
        let mut want = vec![0.0; q.len()];
        let mut scores = vec![0.0; start + n];
        for p in 0..n {
            let r = p * n_heads * hd..(p + 1) * n_heads * hd;
            attention(
                &mut want[r.clone()],
                &q[r],
                &k,
                &v,
                start + p + 1,
                n_heads,
                n_kv,
                hd,
                &mut scores,
            );
        }
        for threads in [1, 2, 3] {
            for isa in Isa::available() {
                let backend = CpuBackend::with_isa(threads, isa);
                let mut got = vec![0.0; q.len()];
                let mut scores = vec![0.0; threads * (start + n)];
                backend.attention_batch(
                    &mut got,
                    &q,
                    &k,
                    &v,
                    start,
                    n,
                    n_heads,
                    n_kv,
                    hd,
                    &mut scores,
                );
                assert_eq!(got, want, "{threads} threads, {isa}");
            }
        }
    }
}

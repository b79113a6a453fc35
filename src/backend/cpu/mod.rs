//! The scalar CPU reference backend: plain loops, f32 activations. Every
//! faster path is held to it. Matrix rows are split across threads; each
//! output element is computed by exactly one `dot_row` call no matter how
//! many threads there are, so results do not depend on the thread count.

use super::Weight;
use crate::quant;

/// Below this many multiply-adds a matmul runs on the calling thread: the
/// cost of starting threads would exceed the work.
const PARALLEL_MIN_WORK: usize = 1 << 16;

pub struct CpuBackend {
    threads: usize,
}

/// A raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: threads only write disjoint indices (their own row ranges), and the
// scope joins them before the buffer is touched again.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl CpuBackend {
    pub fn new(threads: usize) -> CpuBackend {
        CpuBackend {
            threads: threads.max(1),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// `out[p][r] = dot(w[r], x[p])` for `n` positions.
    /// `x` is `n x w.cols`, `out` is `n x w.rows`, both row-major.
    pub fn matmul(&self, w: Weight<'_>, x: &[f32], out: &mut [f32], n: usize) {
        assert_eq!(x.len(), n * w.cols, "matmul {}: input length", w.rows);
        assert_eq!(out.len(), n * w.rows, "matmul {}: output length", w.rows);
        let work = w.rows * w.cols * n;
        let threads = if work < PARALLEL_MIN_WORK {
            1
        } else {
            self.threads.min(w.rows)
        };
        let shared = SharedOut(out.as_mut_ptr());
        let rows_for = |t: usize| {
            let per = w.rows.div_ceil(threads);
            (t * per).min(w.rows)..((t + 1) * per).min(w.rows)
        };
        let run = |rows: std::ops::Range<usize>| {
            let out = shared;
            for r in rows {
                let wr = w.row(r);
                for p in 0..n {
                    let v = quant::dot_row(w.ggml_type, wr, &x[p * w.cols..(p + 1) * w.cols]);
                    // SAFETY: index < n * w.rows = out.len(); row r belongs to
                    // exactly one thread.
                    unsafe { *out.0.add(p * w.rows + r) = v };
                }
            }
        };
        if threads == 1 {
            run(0..w.rows);
            return;
        }
        std::thread::scope(|s| {
            for t in 1..threads {
                let rows = rows_for(t);
                s.spawn(move || run(rows));
            }
            run(rows_for(0));
        });
    }
}

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

/// Causal attention for one query position over `n_ctx` cached positions.
///
/// `q` is `n_heads x head_dim`; `k_cache` and `v_cache` are
/// `n_ctx x (n_kv_heads * head_dim)`; query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)` (GQA; MQA when there is one kv head).
/// `scores` is scratch of at least `n_ctx`; `out` is `n_heads x head_dim`.
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
    let kv_dim = n_kv_heads * head_dim;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let scores = &mut scores[..n_ctx];
    for h in 0..n_heads {
        let qh = &q[h * head_dim..(h + 1) * head_dim];
        let kv_off = (h / group) * head_dim;
        for (t, s) in scores.iter_mut().enumerate() {
            let kt = &k_cache[t * kv_dim + kv_off..t * kv_dim + kv_off + head_dim];
            *s = qh.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        softmax(scores);
        let oh = &mut out[h * head_dim..(h + 1) * head_dim];
        oh.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let vt = &v_cache[t * kv_dim + kv_off..t * kv_dim + kv_off + head_dim];
            for (o, &v) in oh.iter_mut().zip(vt) {
                *o += p * v;
            }
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
    use crate::quant::GgmlType;

    fn f32_weight(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn matmul_is_independent_of_thread_count() {
        let (rows, cols, n) = (300, 256, 3);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 113) as f32 / 113.0 - 0.5)
            .collect();
        let data = f32_weight(&w);
        let weight = Weight {
            ggml_type: GgmlType::F32,
            rows,
            cols,
            data: &data,
        };
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 31) % 17) as f32 / 17.0)
            .collect();
        let mut one = vec![0.0; n * rows];
        let mut many = vec![0.0; n * rows];
        CpuBackend::new(1).matmul(weight, &x, &mut one, n);
        CpuBackend::new(3).matmul(weight, &x, &mut many, n);
        assert_eq!(one, many);
        let expect: f32 = (0..cols).map(|c| w[5 * cols + c] * x[2 * cols + c]).sum();
        assert!((one[2 * rows + 5] - expect).abs() < 1e-4);
    }

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
}

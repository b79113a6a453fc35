//! Q8_K: 8-bit activations in blocks of 256, the partner of every K-quant
//! weight format in integer dot products (as in llama.cpp).
//!
//! Activations are quantized once per matrix product, row by row; weights
//! stay in their own format. The values and rounding are ggml's
//! `quantize_row_q8_K` (up to the sign convention, which cancels in `d * q`),
//! but the in-memory layout is ours, chosen for aligned SIMD loads:
//!
//! - `qs`: 256 signed quants in `-127..=127`, at offset 0 so that every
//!   32-byte group is 32-byte aligned (never split across cache lines);
//! - `bsums`: sixteen i16 sums of `qs` over 16-value sub-blocks, which let
//!   the weight kernels fold a weight offset or a per-sub-block minimum into
//!   one small product instead of a second pass over `qs`;
//! - `d`: the f32 scale, value `i` being `d * qs[i]`.
//!
//! Quants never reach -128, so `qs` may be negated or multiplied by unsigned
//! bytes up to 63 in pairs (`_mm256_maddubs_epi16`) without i16 saturation.

use super::QK_K;

/// Activations per block.
pub const QK8_K: usize = QK_K;

#[repr(C, align(32))]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    /// Quants in activation order.
    pub qs: [i8; QK8_K],
    /// `bsums[s]` = sum of `qs[16s..16s+16]`.
    pub bsums: [i16; QK8_K / 16],
    /// Scale.
    pub d: f32,
    /// Explicit padding to the 32-byte alignment, so that a buffer of
    /// blocks is initialized memory throughout and may be reused for other
    /// plain-data activation blocks.
    pad: [u8; 28],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 320);

impl BlockQ8K {
    pub const ZERO: BlockQ8K = BlockQ8K {
        qs: [0; QK8_K],
        bsums: [0; QK8_K / 16],
        d: 0.0,
        pad: [0; 28],
    };
}

/// Equal quants, sums and scale (the padding is not data).
impl PartialEq for BlockQ8K {
    fn eq(&self, other: &BlockQ8K) -> bool {
        self.qs == other.qs && self.bsums == other.bsums && self.d.to_bits() == other.d.to_bits()
    }
}

/// The multiplier that maps `amax` to 127, or `None` for an all-zero block.
/// Shared by every quantizer (scalar and SIMD) so they agree bit for bit.
#[inline(always)]
pub fn inverse_scale(amax: f32) -> Option<f32> {
    (amax > 0.0).then(|| 127.0 / amax)
}

/// Round `v` (already scaled) to a quant: nearest, ties to even (what SIMD
/// float-to-int conversions do), clamped to `-127..=127`.
#[inline(always)]
pub fn round_quant(v: f32) -> i8 {
    v.round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Sixteen-value sums of `qs`.
#[inline]
pub fn block_sums(qs: &[i8; QK8_K]) -> [i16; QK8_K / 16] {
    std::array::from_fn(|s| qs[16 * s..16 * s + 16].iter().map(|&q| i16::from(q)).sum())
}

/// Quantize one block of 256 activations (the reference every SIMD
/// quantizer is tested against, bit for bit).
pub fn quantize_block(x: &[f32], out: &mut BlockQ8K) {
    assert_eq!(x.len(), QK8_K, "Q8_K block length");
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let Some(iscale) = inverse_scale(amax) else {
        *out = BlockQ8K::ZERO;
        return;
    };
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = round_quant(v * iscale);
    }
    out.bsums = block_sums(&out.qs);
    out.d = 1.0 / iscale;
}

/// Quantize a row of activations (a whole number of blocks).
pub fn quantize(x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK8_K, "Q8_K row length");
    for (xs, b) in x.chunks_exact(QK8_K).zip(out) {
        quantize_block(xs, b);
    }
}

pub fn dequantize(blocks: &[BlockQ8K], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * QK8_K, "Q8_K row length");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK8_K)) {
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = b.d * f32::from(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::Rng;

    #[test]
    fn round_trip_error_is_half_a_step() {
        let mut rng = Rng::new(0x8888);
        let x: Vec<f32> = (0..2 * QK8_K).map(|_| rng.uniform(-3.0, 3.0)).collect();
        let mut blocks = [BlockQ8K::ZERO; 2];
        quantize(&x, &mut blocks);
        let mut back = vec![0.0; x.len()];
        dequantize(&blocks, &mut back);
        for (b, xs) in blocks.iter().zip(x.chunks_exact(QK8_K)) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((b.d - amax / 127.0).abs() <= 1e-6 * amax);
            assert_eq!(b.qs.iter().map(|q| q.unsigned_abs()).max(), Some(127));
            assert_eq!(b.bsums, block_sums(&b.qs));
        }
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 0.5 * 3.0 / 127.0 + 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn zero_block_and_ties() {
        let mut b = BlockQ8K::ZERO;
        quantize_block(&[0.0; QK8_K], &mut b);
        assert_eq!(b, BlockQ8K::ZERO);
        // amax 127 makes the scale exactly 1, so x.5 values show the tie rule.
        let mut x = [0.0f32; QK8_K];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = -127.0;
        quantize_block(&x, &mut b);
        assert_eq!(&b.qs[..4], &[127, 2, -4, -127]);
        assert_eq!(b.bsums[0], 127 + 2 - 4 - 127);
        assert_eq!(b.d, 1.0);
    }
}

//! Q8_32: 8-bit activations in blocks of 32, the partner of the 32-weight
//! formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) in integer dot products.
//! It holds the values of ggml's `quantize_row_q8_0` (what llama.cpp
//! multiplies Q8_0 weights with), with the scale widened to f32 and placed
//! after the quants. Q4_1/Q5_1 need the sum of a block's quants as well
//! (ggml's Q8_1 stores it); the kernels add it up in integers instead,
//! which is exact and keeps one activation format for all six.
//!
//! Block layout (36 bytes):
//! - `qs`: 32 signed quants in `-127..=127`;
//! - `d`: the scale, value `i` being `d * qs[i]`. It is `amax / 127` rounded
//!   to f16 precision, as ggml stores it: keeping llama.cpp's exact
//!   activations keeps greedy generation on Q8_0 models on llama.cpp's
//!   path much longer (near-ties between tokens go the same way), for a
//!   rounding far below the 8-bit quantization step.
//!
//! Quants round as Q8_K's do (nearest, ties to even, see
//! [`super::q8_k::round_quant`]).

use super::q8_k::{inverse_scale, round_quant};

/// The scale of a block whose largest magnitude is `amax` (see the module
/// notes). Shared by every quantizer, scalar and SIMD.
#[inline(always)]
pub fn block_scale(amax: f32) -> f32 {
    half::f16::from_f32(amax / 127.0).to_f32()
}

/// Activations per block.
pub const QK8_32: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_32 {
    pub qs: [i8; QK8_32],
    pub d: f32,
}

const _: () = assert!(std::mem::size_of::<BlockQ8_32>() == 36);

impl BlockQ8_32 {
    pub const ZERO: BlockQ8_32 = BlockQ8_32 {
        qs: [0; QK8_32],
        d: 0.0,
    };
}

/// Quantize one block of 32 activations (the reference for SIMD quantizers).
pub fn quantize_block(x: &[f32], out: &mut BlockQ8_32) {
    assert_eq!(x.len(), QK8_32, "Q8_32 block length");
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let Some(iscale) = inverse_scale(amax) else {
        *out = BlockQ8_32::ZERO;
        return;
    };
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = round_quant(v * iscale);
    }
    out.d = block_scale(amax);
}

/// Quantize a row of activations (a whole number of blocks).
pub fn quantize(x: &[f32], out: &mut [BlockQ8_32]) {
    assert_eq!(x.len(), out.len() * QK8_32, "Q8_32 row length");
    for (xs, b) in x.chunks_exact(QK8_32).zip(out) {
        quantize_block(xs, b);
    }
}

pub fn dequantize(blocks: &[BlockQ8_32], out: &mut [f32]) {
    assert_eq!(out.len(), blocks.len() * QK8_32, "Q8_32 row length");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK8_32)) {
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = b.d * f32::from(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::Rng;
    use crate::quant::q8_k::{self, BlockQ8K};

    #[test]
    fn matches_q8_k_on_a_block_whose_maximum_is_shared() {
        // When every 32-value block has the same |max|, Q8_32 and Q8_K use
        // the same multiplier and must give the same quants.
        let mut rng = Rng::new(0x3232);
        let mut x: Vec<f32> = (0..256).map(|_| rng.uniform(-1.0, 1.0)).collect();
        for c in x.chunks_exact_mut(QK8_32) {
            c[5] = 1.5;
        }
        let mut k = BlockQ8K::ZERO;
        q8_k::quantize_block(&x, &mut k);
        let mut blocks = [BlockQ8_32::ZERO; 8];
        quantize(&x, &mut blocks);
        for (i, b) in blocks.iter().enumerate() {
            assert_eq!(b.qs, k.qs[32 * i..32 * i + 32]);
            assert!((b.d - k.d).abs() <= k.d / 2048.0, "f16-rounded scale");
        }
        let mut back = [0.0f32; 256];
        dequantize(&blocks, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 0.5 * 1.5 / 127.0 + 1.5 / 2048.0);
        }
    }
}

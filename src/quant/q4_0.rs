//! Q4_0: blocks of 32 weights, each a 4-bit quant centred on 8 times one
//! per-block scale. The oldest ggml format, still whole files' choice.
//!
//! Block layout (18 bytes):
//! - `d`: the scale, an f16;
//! - `qs`: 16 bytes of 4-bit quants: byte `j` holds weight `j` in its low
//!   nibble and weight `j + 16` in its high one (not neighbours in a byte:
//!   so a SIMD kernel gets each half of the block with one mask or shift).
//!
//! Weight `i` with quant `q` is `(q - 8) * d`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, nibbles, ByteBlock};

/// Weights per block.
pub const QK4_0: usize = 32;
pub const BLOCK_BYTES: usize = 18;

#[repr(C)]
pub struct BlockQ4_0 {
    /// f16 scale.
    pub d: [u8; 2],
    /// 4-bit quants, low nibbles first (weights 0..16), then high ones.
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == BLOCK_BYTES);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ4_0 {}

/// The block's quants in weight order with the bias removed, `-8..=7`:
/// the signed integers the CPU kernels multiply with activations.
#[inline]
pub fn quants(b: &BlockQ4_0) -> [i8; QK4_0] {
    nibbles(&b.qs).map(|q| q as i8 - 8)
}

#[inline]
fn expand(b: &BlockQ4_0, out: &mut [f32; QK4_0]) {
    let d = f16_to_f32(b.d);
    for (o, q) in out.iter_mut().zip(quants(b)) {
        *o = f32::from(q) * d;
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ4_0>(row), out, expand, "Q4_0");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ4_0>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ4_0>(), 18);
        assert_eq!(std::mem::align_of::<BlockQ4_0>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 0.5 (f16 0x3800); byte j = low nibble j % 16, high 15 - j % 16.
        let mut row = vec![0x00, 0x38];
        row.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize(&row, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * (j as f32 - 8.0), "weight {j}");
            assert_eq!(out[j + 16], 0.5 * (7.0 - j as f32), "weight {}", j + 16);
        }
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0400);
        for n_blocks in [1, 3, 8] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..2].copy_from_slice(&rng.f16_bytes(-0.1, 0.1));
            }
            check_dot(&row, n_blocks * QK4_0, &mut rng, dequantize, dot);
        }
    }
}

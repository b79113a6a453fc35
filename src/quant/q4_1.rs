//! Q4_1: blocks of 32 weights, each a 4-bit quant times a per-block scale
//! plus a per-block minimum, so a block's range need not straddle zero.
//!
//! Block layout (20 bytes):
//! - `d`: the scale, an f16;
//! - `m`: the minimum, an f16;
//! - `qs`: 16 bytes of 4-bit quants, nibble order as in
//!   [`super::q4_0`].
//!
//! Weight `i` with quant `q` is `q * d + m` (the product rounded before
//! the sum, as ggml and the `gguf` package compute it).

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, nibbles, ByteBlock};

/// Weights per block.
pub const QK4_1: usize = 32;
pub const BLOCK_BYTES: usize = 20;

#[repr(C)]
pub struct BlockQ4_1 {
    /// f16 scale.
    pub d: [u8; 2],
    /// f16 minimum, added to every weight.
    pub m: [u8; 2],
    /// 4-bit quants, low nibbles first (weights 0..16), then high ones.
    pub qs: [u8; QK4_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == BLOCK_BYTES);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ4_1 {}

/// The block's quants in weight order, `0..=15` (held as i8 so every
/// 32-weight format hands the CPU kernels the same type).
#[inline]
pub fn quants(b: &BlockQ4_1) -> [i8; QK4_1] {
    nibbles(&b.qs).map(|q| q as i8)
}

#[inline]
fn expand(b: &BlockQ4_1, out: &mut [f32; QK4_1]) {
    let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
    for (o, q) in out.iter_mut().zip(quants(b)) {
        *o = f32::from(q) * d + m;
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ4_1>(row), out, expand, "Q4_1");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ4_1>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ4_1>(), 20);
        assert_eq!(std::mem::align_of::<BlockQ4_1>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 0.5 (f16 0x3800), m = -2 (f16 0xC000).
        let mut row = vec![0x00, 0x38, 0x00, 0xC0];
        row.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize(&row, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 2.0, "weight {j}");
            assert_eq!(
                out[j + 16],
                0.5 * (15 - j) as f32 - 2.0,
                "weight {}",
                j + 16
            );
        }
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0401);
        for n_blocks in [1, 3, 8] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..2].copy_from_slice(&rng.f16_bytes(-0.1, 0.1));
                b[2..4].copy_from_slice(&rng.f16_bytes(-0.5, 0.5));
            }
            check_dot(&row, n_blocks * QK4_1, &mut rng, dequantize, dot);
        }
    }
}

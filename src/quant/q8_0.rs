//! Q8_0: blocks of 32 weights, each an 8-bit signed integer times one
//! per-block scale.
//!
//! Block layout (34 bytes):
//! - `d`: the scale, an f16 (2 bytes, little-endian);
//! - `qs`: 32 signed bytes, the quants in weight order.
//!
//! Weight `i` of the block is `d * qs[i]`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, ByteBlock};

/// Weights per block.
pub const QK8_0: usize = 32;
pub const BLOCK_BYTES: usize = 34;

#[repr(C)]
pub struct BlockQ8_0 {
    /// f16 scale.
    pub d: [u8; 2],
    /// Quants, two's-complement i8 stored as bytes.
    pub qs: [u8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BLOCK_BYTES);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ8_0 {}

#[inline]
fn expand(b: &BlockQ8_0, out: &mut [f32; QK8_0]) {
    let d = f16_to_f32(b.d);
    for (o, &q) in out.iter_mut().zip(&b.qs) {
        *o = d * f32::from(q as i8);
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ8_0>(row), out, expand, "Q8_0");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ8_0>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
        assert_eq!(std::mem::align_of::<BlockQ8_0>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 0.5 (f16 0x3800); quants run -16..=15.
        let mut row = vec![0x00, 0x38];
        row.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = [0.0f32; 32];
        dequantize(&row, &mut out);
        for (i, &v) in out.iter().enumerate() {
            assert_eq!(v, 0.5 * (i as f32 - 16.0), "weight {i}");
        }
        assert_eq!(out[0], -8.0);
        assert_eq!(out[31], 7.5);
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0800);
        for n_blocks in [1, 3, 8] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..2].copy_from_slice(&rng.f16_bytes(-0.1, 0.1));
            }
            check_dot(&row, n_blocks * QK8_0, &mut rng, dequantize, dot);
        }
    }
}

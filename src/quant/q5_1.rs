//! Q5_1: blocks of 32 weights, each a 5-bit quant times a per-block scale
//! plus a per-block minimum.
//!
//! Block layout (24 bytes):
//! - `d`: the scale, an f16;
//! - `m`: the minimum, an f16;
//! - `qh`: a little-endian u32 whose bit `i` is the fifth bit of weight `i`;
//! - `qs`: 16 bytes of the low four bits, nibble order as in
//!   [`super::q4_0`].
//!
//! Weight `i` with quant `q = nibble + 16 * bit` is `q * d + m` (the
//! product rounded before the sum, as in Q4_1).

use super::blocks::{
    as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, fifth_bit, nibbles, ByteBlock,
};

/// Weights per block.
pub const QK5_1: usize = 32;
pub const BLOCK_BYTES: usize = 24;

#[repr(C)]
pub struct BlockQ5_1 {
    /// f16 scale.
    pub d: [u8; 2],
    /// f16 minimum, added to every weight.
    pub m: [u8; 2],
    /// Fifth bits, bit `i` for weight `i` of a little-endian u32.
    pub qh: [u8; 4],
    /// Low 4-bit parts, low nibbles first (weights 0..16), then high ones.
    pub qs: [u8; QK5_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == BLOCK_BYTES);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ5_1 {}

/// The block's quants in weight order, `0..=31` (as i8, like its siblings).
#[inline]
pub fn quants(b: &BlockQ5_1) -> [i8; QK5_1] {
    let low = nibbles(&b.qs);
    std::array::from_fn(|i| (low[i] | fifth_bit(b.qh, i)) as i8)
}

#[inline]
fn expand(b: &BlockQ5_1, out: &mut [f32; QK5_1]) {
    let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
    for (o, q) in out.iter_mut().zip(quants(b)) {
        *o = f32::from(q) * d + m;
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ5_1>(row), out, expand, "Q5_1");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ5_1>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ5_1>(), 24);
        assert_eq!(std::mem::align_of::<BlockQ5_1>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 0.5, m = -2; fifth bits on weights 16..32 only (0xFFFF0000).
        let mut row = vec![0x00, 0x38, 0x00, 0xC0, 0x00, 0x00, 0xFF, 0xFF];
        row.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize(&row, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 2.0, "weight {j}");
            let q = (15 - j + 16) as f32;
            assert_eq!(out[j + 16], 0.5 * q - 2.0, "weight {}", j + 16);
        }
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0501);
        for n_blocks in [1, 3, 8] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..2].copy_from_slice(&rng.f16_bytes(-0.1, 0.1));
                b[2..4].copy_from_slice(&rng.f16_bytes(-0.5, 0.5));
            }
            check_dot(&row, n_blocks * QK5_1, &mut rng, dequantize, dot);
        }
    }
}

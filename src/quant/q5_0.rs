//! Q5_0: blocks of 32 weights, each a 5-bit quant centred on 16 times one
//! per-block scale. llama-quantize's fallback for rows that are not whole
//! 256-weight super-blocks.
//!
//! Block layout (22 bytes):
//! - `d`: the scale, an f16;
//! - `qh`: a little-endian u32 whose bit `i` is the fifth bit of weight `i`
//!   (kept as bytes: the block has alignment 1 and `qh` sits at offset 2);
//! - `qs`: 16 bytes of the low four bits, nibble order as in
//!   [`super::q4_0`].
//!
//! Weight `i` with quant `q = nibble + 16 * bit` is `(q - 16) * d`.

use super::blocks::{
    as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, fifth_bit, nibbles, ByteBlock,
};

/// Weights per block.
pub const QK5_0: usize = 32;
pub const BLOCK_BYTES: usize = 22;

#[repr(C)]
pub struct BlockQ5_0 {
    /// f16 scale.
    pub d: [u8; 2],
    /// Fifth bits, bit `i` for weight `i` of a little-endian u32.
    pub qh: [u8; 4],
    /// Low 4-bit parts, low nibbles first (weights 0..16), then high ones.
    pub qs: [u8; QK5_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == BLOCK_BYTES);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ5_0 {}

/// The block's quants in weight order with the bias removed, `-16..=15`.
#[inline]
pub fn quants(b: &BlockQ5_0) -> [i8; QK5_0] {
    let low = nibbles(&b.qs);
    std::array::from_fn(|i| (low[i] | fifth_bit(b.qh, i)) as i8 - 16)
}

#[inline]
fn expand(b: &BlockQ5_0, out: &mut [f32; QK5_0]) {
    let d = f16_to_f32(b.d);
    for (o, q) in out.iter_mut().zip(quants(b)) {
        *o = f32::from(q) * d;
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ5_0>(row), out, expand, "Q5_0");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ5_0>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ5_0>(), 22);
        assert_eq!(std::mem::align_of::<BlockQ5_0>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 0.5; low nibbles j, high nibbles 15 - j; fifth bits set on
        // odd weights (0xAAAAAAAA).
        let mut row = vec![0x00, 0x38, 0xAA, 0xAA, 0xAA, 0xAA];
        row.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize(&row, &mut out);
        for (i, &v) in out.iter().enumerate() {
            let low = if i < 16 { i } else { 31 - i } as f32;
            let q = low + if i % 2 == 1 { 16.0 } else { 0.0 };
            assert_eq!(v, 0.5 * (q - 16.0), "weight {i}");
        }
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0500);
        for n_blocks in [1, 3, 8] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..2].copy_from_slice(&rng.f16_bytes(-0.1, 0.1));
            }
            check_dot(&row, n_blocks * QK5_0, &mut rng, dequantize, dot);
        }
    }
}

//! IQ4_NL: blocks of 32 weights, each a 4-bit index into a fixed
//! non-linear table of sixteen levels, times one per-block scale. The
//! levels crowd near zero, where trained weights crowd, so four bits lose
//! less than Q4_0's evenly spaced ones. llama-quantize uses it as the
//! fallback for IQ4_XS rows that are not whole super-blocks.
//!
//! Block layout (18 bytes, the same as Q4_0):
//! - `d`: the scale, an f16;
//! - `qs`: 16 bytes of 4-bit indices, nibble order as in
//!   [`super::q4_0`].
//!
//! Weight `i` with index `k` is `d * LEVELS[k]`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, nibbles, ByteBlock};

/// Weights per block.
pub const QK4_NL: usize = 32;
pub const BLOCK_BYTES: usize = 18;

/// ggml's `kvalues_iq4nl`: the sixteen levels, as signed bytes so the
/// integer kernels can multiply them with 8-bit activations directly.
pub const LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[repr(C)]
pub struct BlockIQ4NL {
    /// f16 scale.
    pub d: [u8; 2],
    /// 4-bit indices into [`LEVELS`], low nibbles first (weights 0..16).
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == BLOCK_BYTES);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockIQ4NL {}

/// The block's levels in weight order, `-127..=113`.
#[inline]
pub fn quants(b: &BlockIQ4NL) -> [i8; QK4_NL] {
    nibbles(&b.qs).map(|k| LEVELS[usize::from(k)])
}

#[inline]
fn expand(b: &BlockIQ4NL, out: &mut [f32; QK4_NL]) {
    let d = f16_to_f32(b.d);
    for (o, q) in out.iter_mut().zip(quants(b)) {
        *o = d * f32::from(q);
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockIQ4NL>(row), out, expand, "IQ4_NL");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockIQ4NL>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockIQ4NL>(), 18);
        assert_eq!(std::mem::align_of::<BlockIQ4NL>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 0.5; index j for weight j, 15 - j for weight j + 16.
        let mut row = vec![0x00, 0x38];
        row.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize(&row, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * f32::from(LEVELS[j]), "weight {j}");
            assert_eq!(
                out[j + 16],
                0.5 * f32::from(LEVELS[15 - j]),
                "weight {}",
                j + 16
            );
        }
        assert_eq!((out[0], out[16]), (-63.5, 56.5));
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x4e4c);
        for n_blocks in [1, 3, 8] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..2].copy_from_slice(&rng.f16_bytes(-0.01, 0.01));
            }
            check_dot(&row, n_blocks * QK4_NL, &mut rng, dequantize, dot);
        }
    }
}

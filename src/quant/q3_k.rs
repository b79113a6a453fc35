//! Q3_K: super-blocks of 256 weights with 3-bit quants, split into sixteen
//! sub-blocks of 16 weights, each with a 6-bit scale.
//!
//! Block layout (110 bytes):
//! - `hmask`: 32 bytes holding the high (third) bit of each quant;
//! - `qs`: 64 bytes holding the low two bits of each quant, four per byte;
//! - `scales`: twelve bytes carrying sixteen 6-bit scales (see
//!   [`unpack_scales`]);
//! - `d`: the f16 super-block factor.
//!
//! The block is two halves of 128 weights; half `h` uses `qs[32h..32h+32]`.
//! Within a half, weight offset `32k + l` (`k` in 0..4, `l` in 0..32) takes
//! its low two bits from bits `2k..2k+2` of the half's byte `l`, and its high
//! bit from bit `4h + k` of `hmask[l]`. The high bit works backwards: set
//! means the quant is just the two low bits (0..=3), clear means subtract 4
//! (-4..=-1).
//!
//! The 6-bit scales are stored with a +32 bias. The sub-block of weight `p`
//! is `p / 16`, and the weight is `(d * (scale[p / 16] - 32)) * q`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, ByteBlock};
use super::QK_K;

pub const BLOCK_BYTES: usize = 110;

#[repr(C)]
pub struct BlockQ3K {
    /// High bits of the quants (set = no -4 offset).
    pub hmask: [u8; QK_K / 8],
    /// Low two bits of the quants.
    pub qs: [u8; QK_K / 4],
    /// Packed 6-bit scales.
    pub scales: [u8; 12],
    /// f16 super-block factor.
    pub d: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ3K {}

/// The sixteen 6-bit scales, still biased by +32 (0..=63).
///
/// Bytes 0-7 carry the low four bits: byte `i` has scale `i` in its low
/// nibble and scale `i + 8` in its high nibble. Bytes 8-11 carry the top two
/// bits: byte `8 + (i % 4)` holds them for scale `i` at bits
/// `2 * (i / 4)..2 * (i / 4) + 2`. (ggml unpacks this with 32-bit masks
/// 0x0f0f0f0f and 0x03030303 over the same bytes.)
#[inline]
pub(crate) fn unpack_scales(s: &[u8; 12]) -> [u8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        low | (high << 4)
    })
}

#[inline]
fn expand(b: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let scales = unpack_scales(&b.scales);
    let ds: [f32; 16] = std::array::from_fn(|i| d * f32::from(scales[i] as i8 - 32));
    for (h, (qs, out)) in
        b.qs.chunks_exact(32)
            .zip(out.chunks_exact_mut(128))
            .enumerate()
    {
        for k in 0..4 {
            let high_bit = 4 * h + k;
            for l in 0..32 {
                let low = ((qs[l] >> (2 * k)) & 0x03) as i8;
                let q = if (b.hmask[l] >> high_bit) & 1 != 0 {
                    low
                } else {
                    low - 4
                };
                out[32 * k + l] = ds[8 * h + 2 * k + l / 16] * f32::from(q);
            }
        }
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ3K>(row), out, expand, "Q3_K");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ3K>(row), x, expand)
}

/// The twelve scale bytes of Q3_K (the inverse of [`unpack_scales`]): low
/// nibbles of scales 0-7 and 8-15 in the low and high halves of bytes 0-7,
/// top two bits of scale `i` at bits `2 * (i / 4)` of byte `8 + i % 4`.
pub(crate) fn pack_scales(s: &[u8; 16]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for (i, &v) in s.iter().enumerate() {
        let low = v & 0x0F;
        if i < 8 {
            b[i] |= low;
        } else {
            b[i - 8] |= low << 4;
        }
        b[8 + i % 4] |= ((v >> 4) & 0x03) << (2 * (i / 4));
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ3K>(), 110);
        assert_eq!(std::mem::align_of::<BlockQ3K>(), 1);
    }

    /// The same unpacking done ggml's way, as four little-endian u32 words
    /// with the 0x0f0f0f0f / 0x03030303 masks, to cross-check `unpack_scales`.
    fn unpack_scales_by_words(s: &[u8; 12]) -> [u8; 16] {
        let word =
            |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        let (a0, a1, t) = (word(0), word(1), word(2));
        let (m4, m2) = (0x0f0f_0f0fu32, 0x0303_0303u32);
        let words = [
            (a0 & m4) | ((t & m2) << 4),
            (a1 & m4) | (((t >> 2) & m2) << 4),
            ((a0 >> 4) & m4) | (((t >> 4) & m2) << 4),
            ((a1 >> 4) & m4) | (((t >> 6) & m2) << 4),
        ];
        std::array::from_fn(|i| words[i / 4].to_le_bytes()[i % 4])
    }

    #[test]
    fn scale_unpacking_matches_word_masks() {
        let mut rng = Rng::new(0x0303);
        for _ in 0..200 {
            let mut s = [0u8; 12];
            rng.fill(&mut s);
            assert_eq!(unpack_scales(&s), unpack_scales_by_words(&s));
        }
    }

    #[test]
    fn hand_built_block() {
        // d = 1. Every scale is 33 (value 1: low nibble 1, top bits 10)
        // except scale 5 = 40 (value 8: low nibble 8, top bits 10) and
        // scale 13 = 49 (value 17: low nibble 1, top bits 11).
        let mut b = [0u8; BLOCK_BYTES];
        let scales = &mut b[96..108];
        scales[..8].fill(0x11);
        scales[5] = 0x18; // scale 5 low nibble 8, scale 13 low nibble 1
        scales[8..].fill(0xAA); // top bits 10 for every scale
        scales[9] = 0xEA; // bits 6-7 of byte 9: top bits of scale 13 = 11
        b[108..110].copy_from_slice(&[0x00, 0x3C]);
        // Low bits: every qs byte 0b11_10_01_00, so quarter k has low bits k.
        b[32..96].fill(0xE4);
        // High bits: all set (no -4), except hmask[3] bit 5 (half 1, k = 1).
        b[..32].fill(0xFF);
        b[3] = !(1 << 5);
        let mut out = [0.0f32; 256];
        dequantize(&b, &mut out);
        assert_eq!(
            unpack_scales(b[96..108].try_into().unwrap()).map(|s| s as i32 - 32),
            [1, 1, 1, 1, 1, 8, 1, 1, 1, 1, 1, 1, 1, 17, 1, 1]
        );
        // Weight 163 = 128 + 32 + 3: half 1, k = 1, l = 3 -> low 1, high bit
        // clear -> q = -3; sub-block 10 has scale 1.
        assert_eq!(out[163], -3.0);
        // Weight 80: half 0, k = 2 -> q = 2; sub-block 5 has scale 8.
        assert_eq!(out[80], 16.0);
        // Weight 223: half 1, k = 2 -> q = 2; sub-block 13 has scale 17.
        assert_eq!(out[223], 34.0);
        for (p, &v) in out.iter().enumerate() {
            let k = (p % 128) / 32;
            let q = if p == 163 { -3.0 } else { k as f32 };
            let scale = match p / 16 {
                5 => 8.0,
                13 => 17.0,
                _ => 1.0,
            };
            assert_eq!(v, scale * q, "weight {p}");
        }
    }

    #[test]
    fn all_high_bits_clear_gives_negative_quants() {
        // hmask all zero, qs all zero -> q = -4 everywhere; scales all zero
        // -> value -32; d = 0.5: every weight is (0.5 * -32) * -4 = 64.
        let mut b = [0u8; BLOCK_BYTES];
        b[108..110].copy_from_slice(&[0x00, 0x38]);
        let mut out = [0.0f32; 256];
        dequantize(&b, &mut out);
        assert!(out.iter().all(|&v| v == 64.0));
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0333);
        for n_blocks in [1, 2, 6] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[108..110].copy_from_slice(&rng.f16_bytes(-0.02, 0.02));
            }
            check_dot(&row, n_blocks * QK_K, &mut rng, dequantize, dot);
        }
    }

    #[test]
    fn scale_packing_round_trips() {
        for k in 0..100u32 {
            let s: [u8; 16] = std::array::from_fn(|i| ((k * 37 + i as u32 * 11) % 64) as u8);
            assert_eq!(unpack_scales(&pack_scales(&s)), s);
        }
    }
}

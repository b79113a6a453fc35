//! Q4_K: super-blocks of 256 weights with 4-bit quants, split into eight
//! sub-blocks of 32 weights that each have a 6-bit scale and a 6-bit min.
//!
//! Block layout (144 bytes):
//! - `d`, `dmin`: f16 super-block factors for the scales and for the mins;
//! - `scales`: twelve bytes carrying eight 6-bit scales and eight 6-bit
//!   mins (see [`scale_min`] for how the bits are spread);
//! - `qs`: 128 bytes of 4-bit quants, two per byte.
//!
//! The quants are laid out in four 32-byte groups. Group `g` (bytes
//! `32g..32g+32`) serves weights `64g..64g+64`: the low nibbles of its bytes
//! are weights `64g..64g+32` (sub-block `2g`), the high nibbles weights
//! `64g+32..64g+64` (sub-block `2g+1`).
//!
//! A weight in sub-block `j` with quant `q` is
//! `(d * scale[j]) * q - (dmin * min[j])`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, ByteBlock};
use super::QK_K;

pub const BLOCK_BYTES: usize = 144;

#[repr(C)]
pub struct BlockQ4K {
    /// f16 factor for the sub-block scales.
    pub d: [u8; 2],
    /// f16 factor for the sub-block mins.
    pub dmin: [u8; 2],
    /// Packed 6-bit scales and mins.
    pub scales: [u8; 12],
    /// 4-bit quants.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ4K {}

/// The 6-bit (scale, min) of sub-block `j` (0..8), as packed in the twelve
/// `scales` bytes shared by Q4_K and Q5_K.
///
/// Sub-blocks 0-3 get whole 6-bit values from the low six bits of bytes
/// 0-3 (scales) and 4-7 (mins). Sub-blocks 4-7 are split: their low four
/// bits sit in bytes 8-11 (scale in the low nibble, min in the high nibble),
/// and their top two bits ride in the otherwise unused top two bits of bytes
/// 0-3 (scales) and 4-7 (mins).
#[inline]
pub(crate) fn scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        let scale = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        let min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        (scale, min)
    }
}

#[inline]
fn expand(b: &BlockQ4K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for (g, (qs, out)) in
        b.qs.chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
    {
        let (sc_lo, m_lo) = scale_min(2 * g, &b.scales);
        let (sc_hi, m_hi) = scale_min(2 * g + 1, &b.scales);
        let (d_lo, min_lo) = (d * f32::from(sc_lo), dmin * f32::from(m_lo));
        let (d_hi, min_hi) = (d * f32::from(sc_hi), dmin * f32::from(m_hi));
        let (out_lo, out_hi) = out.split_at_mut(32);
        for ((&q, lo), hi) in qs.iter().zip(out_lo).zip(out_hi) {
            *lo = d_lo * f32::from(q & 0x0F) - min_lo;
            *hi = d_hi * f32::from(q >> 4) - min_hi;
        }
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ4K>(row), out, expand, "Q4_K");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ4K>(row), x, expand)
}

/// The twelve scale bytes of Q4_K/Q5_K (the inverse of [`scale_min`]):
/// sub-blocks 0-3 whole in bytes 0-3 (scales) and 4-7 (mins); 4-7 with
/// their low nibbles in bytes 8-11 and top two bits in the spare top bits
/// of bytes 0-7.
pub(crate) fn pack_scales(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] & 0x3F;
        s[j + 4] = m[j] & 0x3F;
    }
    for j in 4..8 {
        s[j + 4] = (sc[j] & 0x0F) | ((m[j] & 0x0F) << 4);
        s[j - 4] |= (sc[j] >> 4) << 6;
        s[j] |= (m[j] >> 4) << 6;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ4K>(), 144);
        assert_eq!(std::mem::align_of::<BlockQ4K>(), 1);
    }

    #[test]
    fn unpacks_scales_and_mins() {
        let s = [
            1 | 0x40, // scale 0 = 1, top bits 01 -> scale 4 bits 4-5
            2,
            3,
            4 | 0xC0, // scale 3 = 4, top bits 11 -> scale 7 bits 4-5
            5,        // min 0
            6 | 0x80, // min 1 = 6, top bits 10 -> min 5 bits 4-5
            7,
            8,
            0x21, // scale 4 low = 1, min 4 low = 2
            0x43, // scale 5 low = 3, min 5 low = 4
            0x00,
            0xF5, // scale 7 low = 5, min 7 low = 15
        ];
        let got: Vec<(u8, u8)> = (0..8).map(|j| scale_min(j, &s)).collect();
        assert_eq!(
            got,
            [
                (1, 5),
                (2, 6),
                (3, 7),
                (4, 8),
                (1 | 16, 2),
                (3, 4 | 32),
                (0, 0),
                (5 | 48, 15),
            ]
        );
    }

    #[test]
    fn hand_built_block() {
        // d = 1.0, dmin = 0.5. Scales 1..=8 for the sub-blocks, mins 2 for
        // sub-blocks 0-3 and 0 for 4-7 (all under 16, so bytes 0-7 have
        // clear top bits and bytes 8-11 hold the low nibbles of 4-7).
        let mut row = vec![0x00, 0x3C, 0x00, 0x38];
        row.extend_from_slice(&[1, 2, 3, 4, 2, 2, 2, 2, 0x05, 0x06, 0x07, 0x08]);
        // Byte i of the quants: low nibble i % 16, high nibble 15 - i % 16.
        row.extend((0..128).map(|i: u8| (i % 16) | ((15 - i % 16) << 4)));
        let mut out = [0.0f32; 256];
        dequantize(&row, &mut out);
        // Weight 0: sub-block 0, low nibble of byte 0 = 0 -> 1*0 - 0.5*2.
        assert_eq!(out[0], -1.0);
        // Weight 5: low nibble of byte 5 = 5 -> 1*5 - 1 = 4.
        assert_eq!(out[5], 4.0);
        // Weight 32: sub-block 1 (scale 2), high nibble of byte 0 = 15.
        assert_eq!(out[32], 2.0 * 15.0 - 1.0);
        // Weight 64: sub-block 2 (scale 3), low nibble of byte 32 = 0.
        assert_eq!(out[64], -1.0);
        // Weight 255: sub-block 7 (scale 8, min 0), high nibble of byte 127
        // = 15 - 127 % 16 = 0.
        assert_eq!(out[255], 0.0);
        // Weight 200: sub-block 6 (scale 7), low nibble of byte 104 = 8.
        assert_eq!(out[200], 56.0);
        for (p, &v) in out.iter().enumerate() {
            let (g, half, l) = (p / 64, (p % 64) / 32, p % 32);
            let byte = (32 * g + l) as u8;
            let q = if half == 0 { byte % 16 } else { 15 - byte % 16 };
            let j = p / 32;
            let min = if j < 4 { 1.0 } else { 0.0 };
            assert_eq!(v, (j + 1) as f32 * f32::from(q) - min, "weight {p}");
        }
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0404);
        for n_blocks in [1, 2, 5] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[0..2].copy_from_slice(&rng.f16_bytes(-0.05, 0.05));
                b[2..4].copy_from_slice(&rng.f16_bytes(-0.05, 0.05));
            }
            check_dot(&row, n_blocks * QK_K, &mut rng, dequantize, dot);
        }
    }

    #[test]
    fn scale_packing_round_trips() {
        for k in 0..100u32 {
            let v = |i: u32| ((k * 37 + i * 11) % 64) as u8;
            let sc: [u8; 8] = std::array::from_fn(|i| v(i as u32));
            let m: [u8; 8] = std::array::from_fn(|i| v(i as u32 + 8));
            let packed = pack_scales(&sc, &m);
            for j in 0..8 {
                assert_eq!(scale_min(j, &packed), (sc[j], m[j]));
            }
        }
    }
}

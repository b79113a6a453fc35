//! Q6_K: super-blocks of 256 weights with 6-bit quants, split into sixteen
//! sub-blocks of 16 weights, each with a signed 8-bit scale.
//!
//! Block layout (210 bytes):
//! - `ql`: 128 bytes holding the low four bits of each quant, two per byte;
//! - `qh`: 64 bytes holding the top two bits of each quant, four per byte;
//! - `scales`: sixteen i8 sub-block scales;
//! - `d`: the f16 super-block factor.
//!
//! The block is two halves of 128 weights. Half `h` uses `ql[64h..64h+64]`,
//! `qh[32h..32h+32]`. Within a half, weight offset `32k + l` (`k` in 0..4,
//! `l` in 0..32) takes:
//! - its low four bits from byte `l` (k = 0, 2) or `l + 32` (k = 1, 3) of the
//!   half's `ql`, the low nibble for k = 0, 1 and the high nibble for k = 2, 3;
//! - its top two bits from bits `2k..2k+2` of byte `l` of the half's `qh`.
//!
//! The 6-bit quant is stored with a +32 bias. The sub-block of weight `p` is
//! `p / 16`, and the weight is `(d * scales[p / 16]) * (q - 32)`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, ByteBlock};
use super::QK_K;

pub const BLOCK_BYTES: usize = 210;

#[repr(C)]
pub struct BlockQ6K {
    /// Low four bits of the quants.
    pub ql: [u8; QK_K / 2],
    /// Top two bits of the quants.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales, two's-complement i8 stored as bytes.
    pub scales: [u8; QK_K / 16],
    /// f16 super-block factor.
    pub d: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ6K {}

#[inline]
fn expand(b: &BlockQ6K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let halves =
        b.ql.chunks_exact(64)
            .zip(b.qh.chunks_exact(32))
            .zip(b.scales.chunks_exact(8))
            .zip(out.chunks_exact_mut(128));
    for (((ql, qh), scales), out) in halves {
        // The four 32-weight quarters of this half, each covering two
        // sub-blocks of 16, so quarter k uses scales 2k and 2k+1.
        let ds: [f32; 8] = std::array::from_fn(|i| d * f32::from(scales[i] as i8));
        for l in 0..32 {
            let h = qh[l];
            let q = [
                (ql[l] & 0x0F) | ((h & 0x03) << 4),
                (ql[l + 32] & 0x0F) | (((h >> 2) & 0x03) << 4),
                (ql[l] >> 4) | (((h >> 4) & 0x03) << 4),
                (ql[l + 32] >> 4) | (((h >> 6) & 0x03) << 4),
            ];
            for (k, &q) in q.iter().enumerate() {
                let q = i16::from(q) - 32;
                out[32 * k + l] = ds[2 * k + l / 16] * f32::from(q);
            }
        }
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ6K>(row), out, expand, "Q6_K");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ6K>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ6K>(), 210);
        assert_eq!(std::mem::align_of::<BlockQ6K>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // All quant bits zero (q - 32 = -32) except a few; d = 0.25 and
        // sub-block k has scale k - 8.
        let mut b = [0u8; BLOCK_BYTES];
        for k in 0..16 {
            b[192 + k] = (k as i8 - 8) as u8;
        }
        b[208..210].copy_from_slice(&[0x00, 0x34]); // f16 0.25
        b[33] = 0x5A; // ql[33]: low nibble 0xA, high nibble 0x5
        b[128 + 1] = 0b11_10_01_00; // qh[1]
        b[64 + 7] = 0x0F; // ql[71]: second half, byte 7, low nibble
        b[128 + 32 + 7] = 0x02; // qh[39]: second half, byte 7, bits 0-1
        let mut out = [0.0f32; 256];
        dequantize(&b, &mut out);
        // Weight p with quant q: (0.25 * (p / 16 - 8)) * (q - 32).
        let expect = |p: usize, q: i32| 0.25 * ((p / 16) as f32 - 8.0) * (q - 32) as f32;
        // Weight 1: ql[1] low nibble 0, qh[1] bits 0-1 = 00 -> q = 0.
        assert_eq!(out[1], expect(1, 0));
        assert_eq!(out[1], 64.0);
        // Weight 33: ql[33] low nibble 0xA, qh[1] bits 2-3 = 01 -> 26.
        assert_eq!(out[33], expect(33, 26));
        assert_eq!(out[33], 9.0);
        // Weight 65: ql[1] high nibble 0, qh[1] bits 4-5 = 10 -> 32.
        assert_eq!(out[65], 0.0);
        // Weight 97: ql[33] high nibble 5, qh[1] bits 6-7 = 11 -> 53.
        assert_eq!(out[97], expect(97, 53));
        assert_eq!(out[97], -10.5);
        // Weight 135: second half, ql[64 + 7] low nibble 0xF, qh[32 + 7]
        // bits 0-1 = 10 -> 47, times scale 0 (sub-block 8).
        assert_eq!(out[135], expect(135, 47));
        for (p, &v) in out.iter().enumerate() {
            if ![33, 65, 97, 135].contains(&p) {
                assert_eq!(v, expect(p, 0), "weight {p}");
            }
        }
    }

    #[test]
    fn negative_scale_and_nonzero_second_half_scale() {
        // Scale of sub-block 8 (weights 128..144) = 3, d = 1: weight 135
        // from the test above becomes (47 - 32) * 3.
        let mut b = [0u8; BLOCK_BYTES];
        b[192 + 8] = 3;
        b[192 + 9] = (-1i8) as u8;
        b[208..210].copy_from_slice(&[0x00, 0x3C]);
        b[64 + 7] = 0x0F;
        b[128 + 32 + 7] = 0x02;
        let mut out = [0.0f32; 256];
        dequantize(&b, &mut out);
        assert_eq!(out[135], 45.0);
        assert_eq!(out[128], -96.0);
        assert_eq!(out[144], 32.0);
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0606);
        for n_blocks in [1, 3, 4] {
            let mut row = vec![0u8; n_blocks * BLOCK_BYTES];
            rng.fill(&mut row);
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[208..210].copy_from_slice(&rng.f16_bytes(-0.01, 0.01));
            }
            check_dot(&row, n_blocks * QK_K, &mut rng, dequantize, dot);
        }
    }
}

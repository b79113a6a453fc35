//! Q5_K: like Q4_K (256-weight super-blocks, eight 32-weight sub-blocks
//! with 6-bit scales and mins) but with 5-bit quants: a fifth, high bit for
//! every weight is kept in a separate 32-byte array.
//!
//! Block layout (176 bytes):
//! - `d`, `dmin`: f16 super-block factors for the scales and for the mins;
//! - `scales`: twelve bytes of packed 6-bit scales and mins, exactly as in
//!   Q4_K (see [`super::q4_k::scale_min`]);
//! - `qh`: 32 bytes of high bits;
//! - `qs`: 128 bytes of low 4-bit parts, two per byte.
//!
//! The low parts are arranged as in Q4_K: 32-byte group `g` holds weights
//! `64g..64g+32` in its low nibbles (sub-block `2g`) and `64g+32..64g+64` in
//! its high nibbles (sub-block `2g+1`). Byte `l` of `qh` holds the high bit
//! of the weight at offset `l` within every sub-block: bit `j` belongs to
//! sub-block `j`. So a quant is `nibble + 16 * ((qh[l] >> j) & 1)`, 0..=31.
//!
//! A weight in sub-block `j` with quant `q` is
//! `(d * scale[j]) * q - (dmin * min[j])`.

use super::blocks::{as_blocks, dequantize_blocks, dot_blocks, f16_to_f32, ByteBlock};
use super::q4_k::scale_min;
use super::QK_K;

pub const BLOCK_BYTES: usize = 176;

#[repr(C)]
pub struct BlockQ5K {
    /// f16 factor for the sub-block scales.
    pub d: [u8; 2],
    /// f16 factor for the sub-block mins.
    pub dmin: [u8; 2],
    /// Packed 6-bit scales and mins (Q4_K packing).
    pub scales: [u8; 12],
    /// High (fifth) bits, one bit per sub-block in each byte.
    pub qh: [u8; QK_K / 8],
    /// Low 4-bit parts.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

// SAFETY: repr(C) and made only of u8 arrays.
unsafe impl ByteBlock for BlockQ5K {}

#[inline]
fn expand(b: &BlockQ5K, out: &mut [f32; QK_K]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for (g, (qs, out)) in
        b.qs.chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
    {
        let (j_lo, j_hi) = (2 * g, 2 * g + 1);
        let (sc_lo, m_lo) = scale_min(j_lo, &b.scales);
        let (sc_hi, m_hi) = scale_min(j_hi, &b.scales);
        let (d_lo, min_lo) = (d * f32::from(sc_lo), dmin * f32::from(m_lo));
        let (d_hi, min_hi) = (d * f32::from(sc_hi), dmin * f32::from(m_hi));
        let (out_lo, out_hi) = out.split_at_mut(32);
        for (((&q, &h), lo), hi) in qs.iter().zip(&b.qh).zip(out_lo).zip(out_hi) {
            let q_lo = (q & 0x0F) | (((h >> j_lo) & 1) << 4);
            let q_hi = (q >> 4) | (((h >> j_hi) & 1) << 4);
            *lo = d_lo * f32::from(q_lo) - min_lo;
            *hi = d_hi * f32::from(q_hi) - min_hi;
        }
    }
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    dequantize_blocks(as_blocks::<BlockQ5K>(row), out, expand, "Q5_K");
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_blocks(as_blocks::<BlockQ5K>(row), x, expand)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn block_size() {
        assert_eq!(std::mem::size_of::<BlockQ5K>(), 176);
        assert_eq!(std::mem::align_of::<BlockQ5K>(), 1);
    }

    #[test]
    fn hand_built_block() {
        // d = 1.0, dmin = 1.0; every sub-block has scale 1 and min 0 except
        // sub-block 3 (scale 2) and sub-block 6 (min 3).
        let mut row = vec![0x00, 0x3C, 0x00, 0x3C];
        row.extend_from_slice(&[1, 1, 1, 2, 0, 0, 0, 0, 0x01, 0x01, 0x31, 0x01]);
        // High bits: qh[l] = l, so offset l within sub-block j gets bit j of l.
        row.extend(0..32u8);
        // Low parts: every byte 0xA5 (low nibble 5, high nibble 10).
        row.extend([0xA5u8; 128]);
        let mut out = [0.0f32; 256];
        dequantize(&row, &mut out);
        // Weight 0: sub-block 0, offset 0: 5 + 16*0.
        assert_eq!(out[0], 5.0);
        // Weight 1: sub-block 0, offset 1: qh[1] bit 0 set -> 5 + 16.
        assert_eq!(out[1], 21.0);
        // Weight 34: sub-block 1 (high nibbles), offset 2: bit 1 of 2 -> 26.
        assert_eq!(out[34], 26.0);
        // Weight 96 + 8: sub-block 3 (scale 2), offset 8: bit 3 of 8 -> 26.
        assert_eq!(out[104], 52.0);
        // Weight 192 + 16: sub-block 6 (min 3), offset 16: bit 6 of 16 is
        // clear -> 5 - 3.
        assert_eq!(out[208], 2.0);
        for (p, &v) in out.iter().enumerate() {
            let (j, l) = (p / 32, p % 32);
            let nibble = if j % 2 == 0 { 5 } else { 10 };
            let q = nibble + 16 * ((l >> j) & 1);
            let scale = if j == 3 { 2.0 } else { 1.0 };
            let min = if j == 6 { 3.0 } else { 0.0 };
            assert_eq!(v, scale * q as f32 - min, "weight {p}");
        }
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0x0505);
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
}

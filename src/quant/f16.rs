//! F16 tensors: each weight is a little-endian IEEE half, 2 bytes.

use half::f16;

pub const BLOCK_BYTES: usize = 2;

#[inline]
fn weights(row: &[u8]) -> impl Iterator<Item = f32> + '_ {
    row.chunks_exact(BLOCK_BYTES)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    assert_eq!(row.len(), out.len() * BLOCK_BYTES, "F16 row length");
    for (o, w) in out.iter_mut().zip(weights(row)) {
        *o = w;
    }
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(row.len(), x.len() * BLOCK_BYTES, "F16 row length");
    weights(row).zip(x).fold(0.0, |acc, (w, a)| acc + w * a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn decodes_known_halves() {
        // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 ~ 1/3, 0x0001 = smallest subnormal.
        let row = [0x00, 0x3C, 0x00, 0xC0, 0x55, 0x35, 0x01, 0x00];
        let mut out = [0.0f32; 4];
        dequantize(&row, &mut out);
        assert_eq!(out, [1.0, -2.0, 0.333_251_95, 2.0f32.powi(-24)]);
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0xF16);
        let mut row = Vec::new();
        for _ in 0..160 {
            row.extend_from_slice(&rng.f16_bytes(-4.0, 4.0));
        }
        check_dot(&row, 160, &mut rng, dequantize, dot);
    }
}

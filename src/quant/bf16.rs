//! BF16 tensors: each weight is a little-endian bfloat16 (the top half of an
//! IEEE single), 2 bytes.

use half::bf16;

pub const BLOCK_BYTES: usize = 2;

#[inline]
fn weights(row: &[u8]) -> impl Iterator<Item = f32> + '_ {
    row.chunks_exact(BLOCK_BYTES)
        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    assert_eq!(row.len(), out.len() * BLOCK_BYTES, "BF16 row length");
    for (o, w) in out.iter_mut().zip(weights(row)) {
        *o = w;
    }
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(row.len(), x.len() * BLOCK_BYTES, "BF16 row length");
    weights(row).zip(x).fold(0.0, |acc, (w, a)| acc + w * a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn decodes_known_values() {
        // bf16 is the high 16 bits of the f32: 0x3F80 = 1.0, 0xC040 = -3.0,
        // 0x3EAB = 0x3EAB0000 as f32 bits.
        let row = [0x80, 0x3F, 0x40, 0xC0, 0xAB, 0x3E];
        let mut out = [0.0f32; 3];
        dequantize(&row, &mut out);
        assert_eq!(out, [1.0, -3.0, f32::from_bits(0x3EAB_0000)]);
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0xBF16);
        let mut row = Vec::new();
        for _ in 0..160 {
            row.extend_from_slice(&bf16::from_f32(rng.uniform(-4.0, 4.0)).to_le_bytes());
        }
        check_dot(&row, 160, &mut rng, dequantize, dot);
    }
}

//! F32 tensors: each weight is a little-endian IEEE single, 4 bytes.

pub const BLOCK_BYTES: usize = 4;

#[inline]
fn weights(row: &[u8]) -> impl Iterator<Item = f32> + '_ {
    row.chunks_exact(BLOCK_BYTES)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

pub fn dequantize(row: &[u8], out: &mut [f32]) {
    assert_eq!(row.len(), out.len() * BLOCK_BYTES, "F32 row length");
    for (o, w) in out.iter_mut().zip(weights(row)) {
        *o = w;
    }
}

pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(row.len(), x.len() * BLOCK_BYTES, "F32 row length");
    weights(row).zip(x).fold(0.0, |acc, (w, a)| acc + w * a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::test_util::{check_dot, Rng};

    #[test]
    fn decodes_little_endian() {
        let vals = [1.5f32, -0.0, 3.25e-3, f32::MAX];
        let row: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0.0f32; 4];
        dequantize(&row, &mut out);
        assert_eq!(out.map(f32::to_bits), vals.map(f32::to_bits));
    }

    #[test]
    fn dot_matches_dequantize() {
        let mut rng = Rng::new(0xF32);
        let row: Vec<u8> = rng
            .activations(96)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        check_dot(&row, 96, &mut rng, dequantize, dot);
    }
}

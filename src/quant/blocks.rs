//! Shared plumbing for the block formats: viewing raw tensor bytes as a slice
//! of block structs, and the block-wise scalar dot product.

/// A block struct that may be read straight out of arbitrary bytes.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` structs whose fields are all `u8` or
/// arrays of `u8`. Such a struct has alignment 1, no padding, and every bit
/// pattern is a valid value, which is what [`as_blocks`] relies on.
pub(crate) unsafe trait ByteBlock: Sized {}

/// View `bytes` as a slice of blocks.
///
/// Panics if `bytes` is not a whole number of blocks: a row that does not
/// split into blocks means the caller mis-sized it, which is a bug.
pub(crate) fn as_blocks<B: ByteBlock>(bytes: &[u8]) -> &[B] {
    const {
        assert!(std::mem::align_of::<B>() == 1);
        assert!(std::mem::size_of::<B>() > 0);
    }
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    // SAFETY: `ByteBlock` guarantees `B` is plain bytes with alignment 1 (also
    // checked above), so any pointer into `bytes` is suitably aligned and
    // every byte pattern is a valid `B`. The length covers exactly the input
    // slice, and the returned slice borrows it for the same lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / size) }
}

/// Dot product of a row of blocks with `x`, by expanding each block into a
/// stack buffer of `N` weights with `expand` and accumulating in one running
/// f32 sum in weight order, so the result is bit-for-bit the dot product of
/// the fully dequantized row with `x` summed the same way.
/// Expand every block of a row into `out` (`N` weights per block).
pub(crate) fn dequantize_blocks<B, const N: usize>(
    blocks: &[B],
    out: &mut [f32],
    expand: impl Fn(&B, &mut [f32; N]),
    format: &str,
) {
    assert_eq!(out.len(), blocks.len() * N, "{format} row length");
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(N)) {
        expand(b, o.try_into().expect("chunks_exact gives N values"));
    }
}

pub(crate) fn dot_blocks<B, const N: usize>(
    blocks: &[B],
    x: &[f32],
    expand: impl Fn(&B, &mut [f32; N]),
) -> f32 {
    assert_eq!(
        x.len(),
        blocks.len() * N,
        "activation length does not match the row"
    );
    let mut buf = [0.0f32; N];
    let mut acc = 0.0f32;
    for (block, xs) in blocks.iter().zip(x.chunks_exact(N)) {
        expand(block, &mut buf);
        for (w, a) in buf.iter().zip(xs) {
            acc += w * a;
        }
    }
    acc
}

/// The sixteen quant bytes shared by the 32-weight formats (Q4_0, Q4_1,
/// Q5_0, Q5_1, IQ4_NL) as 32 four-bit values in weight order: byte `j`
/// holds weight `j` in its low nibble and weight `j + 16` in its high one.
/// ggml packs them that way, rather than neighbours in one byte, so a SIMD
/// kernel gets each half of the block with one mask or one shift.
#[inline]
pub(crate) fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|i| {
        if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        }
    })
}

/// Bit `i` of the little-endian `qh` word of Q5_0/Q5_1 (the fifth bit of
/// weight `i`), as the value it adds to the quant: 0 or 16.
#[inline]
pub(crate) fn fifth_bit(qh: [u8; 4], i: usize) -> u8 {
    (((u32::from_le_bytes(qh) >> i) & 1) as u8) << 4
}

/// Decode a little-endian IEEE half (the scale type of every quantized block).
#[inline]
pub(crate) fn f16_to_f32(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

/// Test helpers shared by the format files.
#[cfg(test)]
pub(crate) mod test_util {
    /// xorshift64: a tiny deterministic generator, enough to make test data.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.max(1))
        }

        pub fn next_u64(&mut self) -> u64 {
            let mut s = self.0;
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            self.0 = s;
            s
        }

        pub fn fill(&mut self, bytes: &mut [u8]) {
            for b in bytes {
                *b = self.next_u64() as u8;
            }
        }

        /// Uniform in [lo, hi).
        pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
            let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        }

        /// A finite f16 scale in [lo, hi), as little-endian bytes.
        pub fn f16_bytes(&mut self, lo: f32, hi: f32) -> [u8; 2] {
            half::f16::from_f32(self.uniform(lo, hi)).to_le_bytes()
        }

        pub fn activations(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.uniform(-1.0, 1.0)).collect()
        }
    }

    /// Check a format's `dot` against the dot of its `dequantize` output.
    pub fn check_dot(
        row: &[u8],
        n: usize,
        rng: &mut Rng,
        dequantize: fn(&[u8], &mut [f32]),
        dot: fn(&[u8], &[f32]) -> f32,
    ) {
        let x = rng.activations(n);
        let mut w = vec![0.0f32; n];
        dequantize(row, &mut w);
        assert!(w.iter().all(|v| v.is_finite()));
        let want = w.iter().zip(&x).fold(0.0f32, |acc, (a, b)| acc + a * b);
        let got = dot(row, &x);
        // Relative to the sum of |w*x| rather than |want|, so that a sum that
        // cancels to near zero does not demand more than f32 can give.
        let magnitude: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            (got - want).abs() <= 1e-5 * magnitude.max(f32::MIN_POSITIVE),
            "dot {got} vs dequantize-then-dot {want}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct Pair {
        a: u8,
        b: [u8; 2],
    }
    // SAFETY: repr(C), only u8 fields.
    unsafe impl ByteBlock for Pair {}

    #[test]
    fn views_bytes_as_blocks() {
        let bytes = [1u8, 2, 3, 4, 5, 6];
        let blocks: &[Pair] = as_blocks(&bytes);
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[1].a, blocks[1].b), (4, [5, 6]));
        // Unaligned starting point is fine: alignment is 1.
        let blocks: &[Pair] = as_blocks(&bytes[3..]);
        assert_eq!(blocks[0].b, [5, 6]);
    }

    #[test]
    #[should_panic(expected = "whole number")]
    fn rejects_partial_block() {
        let _: &[Pair] = as_blocks(&[0u8; 4]);
    }
}

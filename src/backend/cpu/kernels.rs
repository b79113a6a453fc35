//! What every instruction set's kernels share, and the choice of kernel.
//!
//! # Bit-identical results on every path
//!
//! The scalar kernels ([`super::scalar`]) are the twins of the AVX2, VNNI
//! and NEON ones, and the twins agree *exactly*, not within a tolerance:
//!
//! - Quantized weights meet 8-bit activations in integer arithmetic, which
//!   is exact in any order. Float arithmetic happens once per block (per 256
//!   weights for K-quants), in scalar code written once here
//!   ([`accumulate`]), on the exact integer sums.
//! - 32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) are too small
//!   to reduce per block, and float weights have no integer form, so those
//!   keep float accumulators in a fixed lane layout (8 lanes for 32-weight
//!   blocks, 32 for F32/F16/BF16) that every path builds the same way, with
//!   fused multiply-adds, reduced by one fixed tree ([`reduce8`],
//!   [`reduce32`]). The minimums of Q4_1/Q5_1 go into one more float per
//!   position ([`accumulate_min`]), added after the reduction.
//! - Activations are quantized by one rule ([`crate::quant::q8_k`]), with
//!   round-to-nearest-even in every path.
//!
//! So an output element does not depend on the instruction set, the thread
//! count, or how many positions share a kernel call.
//!
//! # K-quants: unpack once, dot per position
//!
//! Q3_K, Q4_K, Q5_K and Q6_K differ only in how they pack quants and scales.
//! Each kernel first unpacks a weight super-block into one canonical form,
//! [`Unpacked`], then takes its integer dot product with the Q8_K block of
//! every position of the tile. A tile of up to [`MAX_POSITIONS`] positions
//! thereby reads and unpacks each weight block once (prefill and batched
//! decode), and one dot routine per instruction set serves all four formats.
//!
//! With AVX-512 VNNI, prefill also has *tile kernels* ([`TileKernel`]):
//! sixteen rows at once, one row per i32 lane, so that the integer sums
//! need no horizontal reduction. They compute the same integer `main` and
//! `corr` per block and apply the same [`accumulate`] step per lane, so a
//! tile kernel and a row kernel give the same bits for the same element.
//!
//! # 32-weight blocks: unpack to signed bytes, Q8_0's dot
//!
//! Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL likewise differ only in packing.
//! Each kernel turns a block into its 32 quants as signed bytes in weight
//! order (Q4_0/Q5_0 with their bias of 8/16 removed, IQ4_NL's indices
//! looked up in its table, which is one byte shuffle), its scale and, for
//! Q4_1/Q5_1, its minimum, and then runs the one Q8_0 dot routine against
//! the Q8_32 blocks of every position of the tile. Unpacking a 32-block is
//! a few instructions, so unlike K-quants there is no stored unpacked form.

use super::isa::{Isa, Kind};
use super::scalar;
use crate::quant::q8_32::BlockQ8_32;
use crate::quant::q8_k::BlockQ8K;
use crate::quant::{GgmlType, QK_K};

/// Positions one kernel call computes against each weight row: the width of
/// a matmul tile. Eight Q8_K rows of the widest input (FFN 5632 -> 56 KiB)
/// stay in L2 next to the weight tile.
pub(crate) const MAX_POSITIONS: usize = 8;

/// A K-quant super-block in the canonical form every dot routine reads.
///
/// Layout, decided here for 32-byte SIMD loads (the struct is 32-aligned):
/// - `q`: the 256 quants in weight order as unsigned bytes `0..=63`. Formats
///   with signed quants store them biased (Q6_K: `q + 32`, Q3_K: `q + 4`)
///   and remove the bias through `corr`.
/// - `scales[g]`: sixteen i16 for the 32 weights of group `g`: lanes 0-7
///   hold the scale of sub-block `2g` (weights `32g..32g+16`), lanes 8-15
///   that of sub-block `2g+1`. This is what `maddubs` followed by `madd`
///   needs: the pairwise i16 sums of group `g` times this vector.
/// - `corr[s]`: the multiplier of the activation sum `bsums[s]` of 16-value
///   sub-block `s`: the bias times the scale (Q3_K, Q6_K) or the sub-block
///   minimum (Q4_K, Q5_K).
///
/// A block's integer results are `main = sum_s scale_s * sum_i q_i y_i` and
/// `corr = sum_s corr_s * bsums_s`; [`accumulate`] turns them into floats.
#[repr(C, align(32))]
pub(crate) struct Unpacked {
    pub q: [u8; QK_K],
    pub scales: [[i16; 16]; 8],
    pub corr: [i16; 16],
}

impl Unpacked {
    pub const ZERO: Unpacked = Unpacked {
        q: [0; QK_K],
        scales: [[0; 16]; 8],
        corr: [0; 16],
    };

    /// Fill `scales` from the sixteen 16-weight sub-block scales.
    #[inline(always)]
    pub fn set_scales(&mut self, sc: &[i16; 16]) {
        for (g, v) in self.scales.iter_mut().enumerate() {
            v[..8].fill(sc[2 * g]);
            v[8..].fill(sc[2 * g + 1]);
        }
    }
}

/// The float factors of an unpacked super-block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Factors {
    pub d: f32,
    /// Q4_K/Q5_K: the factor of the minimums; unused by the others.
    pub dmin: f32,
}

/// How a format's `corr` enters the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// `corr` removes the quant bias: `d * (main - corr)`, exact in i32.
    Offset,
    /// `corr` is the sum of minimums: `d * main - dmin * corr`.
    Min,
}

/// Add one super-block's contribution to a position's running sum. The one
/// place K-quant kernels do float math, shared by every instruction set.
#[inline(always)]
pub(crate) fn accumulate(fin: Finish, acc: f32, f: Factors, dy: f32, main: i32, corr: i32) -> f32 {
    match fin {
        Finish::Offset => acc + (f.d * dy) * (main - corr) as f32,
        Finish::Min => acc + (f.d * dy) * main as f32 - (f.dmin * dy) * corr as f32,
    }
}

/// Add one 32-weight block's minimum term to a position's running sum: the
/// block's weights are `q * d + m`, so besides the quants' dot product the
/// result gets `m * dy * sum(y)`, `sum(y)` being the exact integer sum of
/// the activation quants. One fused multiply-add per block, the same in
/// every instruction set.
#[inline(always)]
pub(crate) fn accumulate_min(acc: f32, m: f32, dy: f32, ysum: i32) -> f32 {
    (m * dy).mul_add(ysum as f32, acc)
}

/// The fixed reduction of eight float lanes: `v[i] + v[i + 4]`, then
/// `+ [i + 2]`, then `+ [i + 1]` (what AVX2's 256 -> 128 -> 64 -> 32 halving
/// does, and NEON's two-register version of it).
#[inline(always)]
pub(crate) fn reduce8(v: [f32; 8]) -> f32 {
    let s: [f32; 4] = std::array::from_fn(|i| v[i] + v[i + 4]);
    let w = [s[0] + s[2], s[1] + s[3]];
    w[0] + w[1]
}

/// The fixed reduction of 32 float lanes: lanes `i`, `i + 8`, `i + 16`,
/// `i + 24` combine as `(l[i] + l[i+16]) + (l[i+8] + l[i+24])` (four AVX2
/// accumulators of 8 or eight NEON accumulators of 4 added pairwise), then
/// [`reduce8`].
#[inline(always)]
pub(crate) fn reduce32(l: [f32; 32]) -> f32 {
    reduce8(std::array::from_fn(|i| {
        (l[i] + l[i + 16]) + (l[i + 8] + l[i + 24])
    }))
}

/// Q4_K/Q5_K: the eight 6-bit scales and eight 6-bit mins from the twelve
/// packed bytes (layout in [`crate::quant::q4_k::scale_min`]), as bytes
/// `0..8` = scales and `8..16` = mins, computed on 32-bit words.
#[inline(always)]
pub(crate) fn q4k_scales_mins(s: &[u8; 12]) -> [u8; 16] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let words = [
        w0 & LOW6,
        (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4),
        w1 & LOW6,
        ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, word) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Q3_K: the sixteen 6-bit scales, still biased by +32, from the twelve
/// packed bytes (layout in [`crate::quant::q3_k::unpack_scales`]).
#[inline(always)]
pub(crate) fn q3k_scales(s: &[u8; 12]) -> [u8; 16] {
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, t) = (w(0), w(1), w(2));
    let words = [
        (a0 & LOW4) | ((t & LOW2) << 4),
        (a1 & LOW4) | (((t >> 2) & LOW2) << 4),
        ((a0 >> 4) & LOW4) | (((t >> 4) & LOW2) << 4),
        ((a1 >> 4) & LOW4) | (((t >> 6) & LOW2) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, word) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// Activations of `n` positions, in the format a weight type pairs with.
/// Position `p`'s row is `per_pos` consecutive blocks (or `cols` floats).
#[derive(Clone, Copy)]
pub(crate) enum Acts<'a> {
    Q8K {
        blocks: &'a [BlockQ8K],
        per_pos: usize,
    },
    Q8_32 {
        blocks: &'a [BlockQ8_32],
        per_pos: usize,
    },
    F32 {
        x: &'a [f32],
        cols: usize,
    },
}

/// The activation format a weight type is multiplied with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActFormat {
    Q8K,
    Q8_32,
    F32,
}

impl ActFormat {
    pub fn of(ty: GgmlType) -> ActFormat {
        match ty {
            GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => ActFormat::Q8K,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4NL => ActFormat::Q8_32,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => ActFormat::F32,
            other => panic!("matmul: unsupported weight type {other}"),
        }
    }

    /// Activations per block.
    pub fn block_len(self) -> usize {
        match self {
            ActFormat::Q8K => QK_K,
            ActFormat::Q8_32 => 32,
            ActFormat::F32 => 1,
        }
    }
}

/// Computes one weight row (`row` bytes) against positions
/// `p0..p0 + N` of `acts`, writing `out[..N]`; `N` is fixed per kernel.
///
/// # Safety
/// The instruction set the kernel was selected for must be available (an
/// [`Isa`] value proves it), `acts` must be in the format
/// [`ActFormat::of`] gives for the kernel's weight type, and
/// `p0 + N` must not exceed the positions in `acts`.
pub(crate) type RowKernel =
    unsafe fn(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]);

/// Rows one tile kernel call computes: one per i32 lane of a 512-bit
/// vector.
pub(crate) const TILE_ROWS: usize = 16;

/// Most positions one tile kernel call computes.
pub(crate) const TILE_POSITIONS: usize = 64;

/// Fewest positions of a matrix product for which tile kernels are used:
/// below, unpacking sixteen rows into lanes costs more than it saves (on a
/// Zen 4, per CPU-second: at 8 positions Q4_K gained 20% but Q6_K lost
/// 20%; at 12 both gained 15-40%, at 16 and more 30-50%).
pub(crate) const TILE_MIN_POSITIONS: usize = 12;

/// Computes [`TILE_ROWS`] consecutive weight rows (`rows`, whole rows)
/// against positions `p0..p0 + np` of `acts` (`np <= TILE_POSITIONS`),
/// writing `out[p][r]` for position `p0 + p` and row `r`. Each element is
/// bit-identical to what the [`RowKernel`] of the same weight type gives.
///
/// # Safety
/// As [`RowKernel`], with `p0 + np` for `p0 + N`.
pub(crate) type TileKernel = unsafe fn(
    rows: &[u8],
    acts: Acts<'_>,
    p0: usize,
    np: usize,
    out: &mut [[f32; TILE_ROWS]; TILE_POSITIONS],
);

/// Expand `$f::<N>` for a runtime `np` in `1..=MAX_POSITIONS` into a
/// [`RowKernel`] pointer.
macro_rules! row_kernel_for {
    ($f:ident, $np:expr) => {
        match $np {
            1 => $f::<1> as $crate::backend::cpu::kernels::RowKernel,
            2 => $f::<2>,
            3 => $f::<3>,
            4 => $f::<4>,
            5 => $f::<5>,
            6 => $f::<6>,
            7 => $f::<7>,
            8 => $f::<8>,
            np => unreachable!("{np} positions per kernel call"),
        }
    };
}
pub(crate) use row_kernel_for;

/// Hint the CPU to start loading `bytes` into the L2 cache. L2 rather than
/// L1: streamed weights are read once, and the L2 hint made a decode step
/// 10-15% faster than the L1 one (`examples/matmul_bench.rs`), presumably
/// by leaving L1 to the activations, which every row reuses.
#[inline]
pub(crate) fn prefetch(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch never faults; SSE is baseline on x86_64.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast());
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: a prefetch never faults and touches no registers or flags.
        unsafe {
            std::arch::asm!(
                "prfm pldl2keep, [{p}]",
                p = in(reg) line.as_ptr(),
                options(nostack, preserves_flags, readonly)
            );
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = line;
    }
}

/// The kernel for weight type `ty` and `np` positions on `isa`.
pub(crate) fn select(isa: Isa, ty: GgmlType, np: usize) -> RowKernel {
    match isa.0 {
        Kind::Scalar => scalar::select(ty, np),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => super::avx2::select(ty, np),
        #[cfg(target_arch = "x86_64")]
        Kind::AvxVnni => super::vnni::select(ty, np, false),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512Vnni => super::vnni::select(ty, np, true),
        #[cfg(target_arch = "aarch64")]
        Kind::Neon => super::neon::select(ty, np, false),
        #[cfg(target_arch = "aarch64")]
        Kind::NeonDotprod => super::neon::select(ty, np, true),
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} kernels are not built for this target"),
    }
}

/// The tile kernel for weight type `ty` on `isa`, if there is one (K-quants
/// with AVX-512 VNNI), for products of `n` positions: only from
/// [`TILE_MIN_POSITIONS`] on.
pub(crate) fn select_tile(isa: Isa, ty: GgmlType, n: usize) -> Option<TileKernel> {
    if n < TILE_MIN_POSITIONS {
        return None;
    }
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512Vnni => super::vnni::select_tile(ty),
        _ => None,
    }
}

/// Quantize `x` (a whole number of 256-blocks) to Q8_K.
pub(crate) fn quantize_q8k(isa: Isa, x: &[f32], out: &mut [BlockQ8K]) {
    assert_eq!(x.len(), out.len() * QK_K, "Q8_K row length");
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx2, AvxVnni or Avx512Vnni Isa is only made after
        // detecting AVX2, FMA and F16C (among others).
        Kind::Avx2 | Kind::AvxVnni | Kind::Avx512Vnni => unsafe {
            super::avx2::quantize_q8k(x, out)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is baseline on aarch64.
        Kind::Neon | Kind::NeonDotprod => unsafe { super::neon::quantize_q8k(x, out) },
        _ => crate::quant::q8_k::quantize(x, out),
    }
}

/// Quantize `x` (a whole number of 32-blocks) to Q8_32.
pub(crate) fn quantize_q8_32(isa: Isa, x: &[f32], out: &mut [BlockQ8_32]) {
    assert_eq!(x.len(), out.len() * 32, "Q8_32 row length");
    match isa.0 {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Kind::Avx2 | Kind::AvxVnni | Kind::Avx512Vnni => unsafe {
            super::avx2::quantize_q8_32(x, out)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Kind::Neon | Kind::NeonDotprod => unsafe { super::neon::quantize_q8_32(x, out) },
        _ => crate::quant::q8_32::quantize(x, out),
    }
}

/// The f32 vector operations of attention, for one instruction set; each
/// gives the same bits on every instruction set.
#[derive(Clone, Copy)]
pub(crate) struct FloatOps {
    /// Safety: needs the instruction set it was chosen for and equal lengths.
    dot: unsafe fn(&[f32], &[f32]) -> f32,
    /// Safety: as `dot`.
    axpy: unsafe fn(&mut [f32], f32, &[f32]),
}

impl FloatOps {
    pub fn new(isa: Isa) -> FloatOps {
        match isa.0 {
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni => FloatOps {
                dot: super::vnni::dot_f32,
                axpy: super::vnni::axpy,
            },
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 | Kind::AvxVnni => FloatOps {
                dot: super::avx2::dot_f32,
                axpy: super::avx2::axpy,
            },
            #[cfg(target_arch = "aarch64")]
            Kind::Neon | Kind::NeonDotprod => FloatOps {
                dot: super::neon::dot_f32,
                axpy: super::neon::axpy,
            },
            _ => FloatOps {
                dot: scalar::dot_f32,
                axpy: scalar::axpy,
            },
        }
    }

    /// `sum a[i] * b[i]` in the fixed 32-lane layout (the F32 weight
    /// kernel's arithmetic).
    #[inline]
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot lengths");
        // SAFETY: `new` chose functions of a detected instruction set (an
        // `Isa` proves it); lengths checked.
        unsafe { (self.dot)(a, b) }
    }

    /// `y[i] += a * x[i]`, a rounded product then a rounded sum (no fused
    /// multiply-add), element by element.
    #[inline]
    pub fn axpy(self, y: &mut [f32], a: f32, x: &[f32]) {
        assert_eq!(y.len(), x.len(), "axpy lengths");
        // SAFETY: as in `dot`.
        unsafe { (self.axpy)(y, a, x) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{q3_k, q4_k};

    /// xorshift64 bytes.
    fn bytes<const N: usize>(state: &mut u64) -> [u8; N] {
        std::array::from_fn(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
    }

    #[test]
    fn word_scale_unpacking_matches_the_format_files() {
        let mut state = 0x5ca1e;
        for _ in 0..500 {
            let s: [u8; 12] = bytes(&mut state);
            let both = q4k_scales_mins(&s);
            for j in 0..8 {
                assert_eq!((both[j], both[8 + j]), q4_k::scale_min(j, &s));
            }
            assert_eq!(q3k_scales(&s), q3_k::unpack_scales(&s));
        }
    }

    #[test]
    fn simd_quantizers_match_the_reference_bit_for_bit() {
        use crate::quant::{q8_32, q8_k};
        let mut state = 0x9a4e;
        let mut rows: Vec<Vec<f32>> = (0..20)
            .map(|_| {
                let b: [u8; 512] = bytes(&mut state);
                b.chunks_exact(2)
                    .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 997.0)
                    .collect()
            })
            .collect();
        // An all-zero block, exact ties (amax 127 gives scale 1), a lone
        // maximum, and values far from 1.
        rows.push(vec![0.0; 256]);
        rows.push(
            (0..256)
                .map(|i| {
                    if i == 0 {
                        127.0
                    } else {
                        (i as f32 - 128.0) / 2.0
                    }
                })
                .collect(),
        );
        rows.push(
            (0..256)
                .map(|i| if i == 77 { -3e-5 } else { 1e-9 * i as f32 })
                .collect(),
        );
        rows.push((0..256).map(|i| 1e30 * ((i % 7) as f32 - 3.0)).collect());
        for x in &rows {
            let mut want = vec![BlockQ8K::ZERO; x.len() / 256];
            q8_k::quantize(x, &mut want);
            let mut want32 = vec![BlockQ8_32::ZERO; x.len() / 32];
            q8_32::quantize(x, &mut want32);
            for isa in Isa::available() {
                let mut got = vec![BlockQ8K::ZERO; want.len()];
                quantize_q8k(isa, x, &mut got);
                assert_eq!(got, want, "Q8_K {isa}");
                let mut got32 = vec![BlockQ8_32::ZERO; want32.len()];
                quantize_q8_32(isa, x, &mut got32);
                assert_eq!(got32, want32, "Q8_32 {isa}");
            }
        }
    }

    #[test]
    fn float_ops_match_the_scalar_twin_bit_for_bit() {
        let mut state = 0xf10a7;
        for len in [0, 1, 7, 16, 31, 32, 33, 64, 100, 128, 200] {
            let vals = |state: &mut u64| -> Vec<f32> {
                (0..len)
                    .map(|_| {
                        let b: [u8; 2] = bytes(state);
                        f32::from(i16::from_le_bytes(b)) / 301.0
                    })
                    .collect()
            };
            let (a, b, y0) = (vals(&mut state), vals(&mut state), vals(&mut state));
            let scalar = FloatOps::new(Isa::SCALAR);
            let want_dot = scalar.dot(&a, &b);
            let mut want_y = y0.clone();
            scalar.axpy(&mut want_y, 0.37, &a);
            for isa in Isa::available() {
                let ops = FloatOps::new(isa);
                assert_eq!(
                    ops.dot(&a, &b).to_bits(),
                    want_dot.to_bits(),
                    "dot {len} {isa}"
                );
                let mut y = y0.clone();
                ops.axpy(&mut y, 0.37, &a);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(&want_y), "axpy {len} {isa}");
            }
        }
    }

    #[test]
    fn reductions_follow_the_documented_tree() {
        // Lanes 0 and 2 cancel only if 4 and 6 are added to them first
        // (1e8 + 1 rounds to 1e8); a left-to-right sum would give 3.75.
        let v: [f32; 8] = [1e8, 1.0, -1e8, 1.0, 1.0, 0.5, 1.0, 0.25];
        assert_eq!(reduce8(v), 2.75);
        let l: [f32; 32] = std::array::from_fn(|i| i as f32);
        assert_eq!(reduce32(l), (0..32).sum::<i32>() as f32);
    }
}

//! VNNI kernels (x86_64), twins of [`super::scalar`], in two flavours:
//!
//! - AVX-512 VNNI (`wide`): a K-quant super-block is unpacked straight into
//!   registers (four 64-byte chunks of quants and two scale vectors), and
//!   each position's block product is four `vpdpbusd` (four byte products
//!   summed into each i32 lane), two `vpackssdw` and two `vpmaddwd` (the
//!   sub-block scales), see [`dot512`]. 32-weight blocks use the 256-bit
//!   EVEX `vpdpbusd`, whose lanes are exactly the eight four-product sums
//!   the scalar twin prescribes.
//! - AVX-VNNI (the VEX form, 256 bits, on CPUs without AVX-512): the
//!   canonical [`Unpacked`] block the AVX2 unpacking writes, then per 32
//!   weights one `vpmaddubsw` (pairs of products to i16) and one
//!   `vpdpwssd` (times the scales, into i32), where AVX2 needs three
//!   instructions.
//!
//! Both also cut what AVX2 spends around the dot products: the integer sums
//! of all positions of a block are reduced together (one transposing tree
//! of unpacks for eight positions instead of `vphaddd` per position) and the
//! per-block float step of [`accumulate`] runs on eight positions at once.
//! That step is the same IEEE operations in the same order per lane
//! (separate multiply and add, no fusing, as the scalar code), so results
//! stay bit-identical to the scalar twin; the integer sums are exact in any
//! order, and `vpdpwssd`/`vpdpbusd` do not saturate (the bounds of
//! [`super::avx2`] keep `vpmaddubsw` from saturating as before).
//!
//! The quantizers and the float-weight kernels are AVX2's: VNNI adds only
//! integer instructions.
//!
//! [`accumulate`]: super::kernels::accumulate

use std::arch::x86_64::*;

use super::avx2::{self, Unpack, Unpack32};
use super::kernels::{
    accumulate_min, row_kernel_for, Acts, Factors, Finish, RowKernel, TileKernel, Unpacked,
    MAX_POSITIONS, TILE_POSITIONS, TILE_ROWS,
};
use crate::quant::iq4_nl::BlockIQ4NL;
use crate::quant::q3_k::BlockQ3K;
use crate::quant::q4_0::BlockQ4_0;
use crate::quant::q4_1::BlockQ4_1;
use crate::quant::q4_k::BlockQ4K;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use crate::quant::q5_k::BlockQ5K;
use crate::quant::q6_k::BlockQ6K;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8_32::BlockQ8_32;
use crate::quant::q8_k::BlockQ8K;
use crate::quant::{as_blocks, ByteBlock, GgmlType};

/// The kernel for `ty` and `np` positions: AVX-512 VNNI if `wide`, else
/// AVX-VNNI. Float weights take the AVX2 kernels.
pub(crate) fn select(ty: GgmlType, np: usize, wide: bool) -> RowKernel {
    match (ty, wide) {
        (GgmlType::Q3K, true) => row_kernel_for!(q3k_row_512, np),
        (GgmlType::Q3K, false) => row_kernel_for!(q3k_row_avx, np),
        (GgmlType::Q4K, true) => row_kernel_for!(q4k_row_512, np),
        (GgmlType::Q4K, false) => row_kernel_for!(q4k_row_avx, np),
        (GgmlType::Q5K, true) => row_kernel_for!(q5k_row_512, np),
        (GgmlType::Q5K, false) => row_kernel_for!(q5k_row_avx, np),
        (GgmlType::Q6K, true) => row_kernel_for!(q6k_row_512, np),
        (GgmlType::Q6K, false) => row_kernel_for!(q6k_row_avx, np),
        (GgmlType::Q4_0, true) => row_kernel_for!(q4_0_row_512, np),
        (GgmlType::Q4_0, false) => row_kernel_for!(q4_0_row_avx, np),
        (GgmlType::Q4_1, true) => row_kernel_for!(q4_1_row_512, np),
        (GgmlType::Q4_1, false) => row_kernel_for!(q4_1_row_avx, np),
        (GgmlType::Q5_0, true) => row_kernel_for!(q5_0_row_512, np),
        (GgmlType::Q5_0, false) => row_kernel_for!(q5_0_row_avx, np),
        (GgmlType::Q5_1, true) => row_kernel_for!(q5_1_row_512, np),
        (GgmlType::Q5_1, false) => row_kernel_for!(q5_1_row_avx, np),
        (GgmlType::Q8_0, true) => row_kernel_for!(q8_0_row_512, np),
        (GgmlType::Q8_0, false) => row_kernel_for!(q8_0_row_avx, np),
        (GgmlType::IQ4NL, true) => row_kernel_for!(iq4_nl_row_512, np),
        (GgmlType::IQ4NL, false) => row_kernel_for!(iq4_nl_row_avx, np),
        (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16, _) => avx2::select(ty, np),
        (other, _) => panic!("matmul: unsupported weight type {other}"),
    }
}

/// The 256-bit VNNI instructions in their two encodings: EVEX (AVX-512 VL
/// with VNNI) and VEX (AVX-VNNI). They compute the same thing; the kernels
/// are written once over this trait.
trait Dot256 {
    /// `acc + sum of four u8 x i8 products` per i32 lane (`vpdpbusd`).
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// `acc + sum of two i16 x i16 products` per i32 lane (`vpdpwssd`).
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// AVX-512 VL + VNNI encodings.
struct Evex;
/// AVX-VNNI encodings.
struct Vex;

impl Dot256 for Evex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }
}

impl Dot256 for Vex {
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, a, b)
    }
}

#[inline(always)]
unsafe fn load256<T>(p: *const T) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

#[inline(always)]
unsafe fn load512<T>(p: *const T) -> __m512i {
    _mm512_loadu_si512(p.cast())
}

/// Lane `p` of the result is the sum of the eight lanes of `v[p]` (exact:
/// integer sums wrap identically in any order, and these never wrap).
///
/// A transposing tree of unpacks and adds; `vphaddd`, which would do it in
/// fewer instructions, takes two cycles each where these take half of one.
#[inline(always)]
unsafe fn hsum8x8(v: [__m256i; 8]) -> __m256i {
    // Per 128-bit half, lanes (a, b, c, d) of x and y become
    // (xa + xc, ya + yc, xb + xd, yb + yd).
    let mut t = [v[0]; 4];
    for (i, t) in t.iter_mut().enumerate() {
        let (x, y) = (v[2 * i], v[2 * i + 1]);
        *t = _mm256_add_epi32(_mm256_unpacklo_epi32(x, y), _mm256_unpackhi_epi32(x, y));
    }
    // Per 128-bit half: the half's sums of v[0..4] (in a) and v[4..8] (b).
    let a = _mm256_add_epi32(
        _mm256_unpacklo_epi64(t[0], t[1]),
        _mm256_unpackhi_epi64(t[0], t[1]),
    );
    let b = _mm256_add_epi32(
        _mm256_unpacklo_epi64(t[2], t[3]),
        _mm256_unpackhi_epi64(t[2], t[3]),
    );
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// [`super::kernels::accumulate`] on eight positions at once: lane `p` of
/// the result is `accumulate(fin, acc[p], f, dy[p], main[p], corr[p])`,
/// with the same roundings in the same order.
#[inline(always)]
unsafe fn accumulate8(
    fin: Finish,
    acc: __m256,
    f: Factors,
    dy: __m256,
    main: __m256i,
    corr: __m256i,
) -> __m256 {
    match fin {
        // acc + (d * dy) * (main - corr) as f32
        Finish::Offset => _mm256_add_ps(
            acc,
            _mm256_mul_ps(
                _mm256_mul_ps(_mm256_set1_ps(f.d), dy),
                _mm256_cvtepi32_ps(_mm256_sub_epi32(main, corr)),
            ),
        ),
        // (acc + (d * dy) * main as f32) - (dmin * dy) * corr as f32
        Finish::Min => _mm256_sub_ps(
            _mm256_add_ps(
                acc,
                _mm256_mul_ps(
                    _mm256_mul_ps(_mm256_set1_ps(f.d), dy),
                    _mm256_cvtepi32_ps(main),
                ),
            ),
            _mm256_mul_ps(
                _mm256_mul_ps(_mm256_set1_ps(f.dmin), dy),
                _mm256_cvtepi32_ps(corr),
            ),
        ),
    }
}

/// Reduce eight positions' partial sums of one super-block and add its
/// float step to `acc`. With [`Finish::Offset`] only `main - corr` is
/// needed, so the lanes are subtracted first (exact) and reduced once.
#[inline(always)]
unsafe fn finish8(
    fin: Finish,
    acc: __m256,
    f: Factors,
    dy: __m256,
    main: [__m256i; 8],
    corr: [__m256i; 8],
) -> __m256 {
    match fin {
        Finish::Offset => {
            let mut diff = main;
            for (d, c) in diff.iter_mut().zip(corr) {
                *d = _mm256_sub_epi32(*d, c);
            }
            let zero = _mm256_setzero_si256();
            accumulate8(Finish::Offset, acc, f, dy, hsum8x8(diff), zero)
        }
        Finish::Min => accumulate8(Finish::Min, acc, f, dy, hsum8x8(main), hsum8x8(corr)),
    }
}

/// The per-position Q8_K rows of positions `p0..p0 + N`.
#[inline(always)]
fn q8k_rows<const N: usize>(acts: Acts<'_>, p0: usize, blocks: usize) -> [&[BlockQ8K]; N] {
    let Acts::Q8K {
        blocks: ys,
        per_pos,
    } = acts
    else {
        unreachable!("K-quant kernel given non-Q8_K activations")
    };
    // Makes the callers' unchecked block reads sound.
    assert_eq!(per_pos, blocks, "K-quant row length");
    // A loop rather than `array::from_fn`, which is not always inlined.
    let mut rows: [&[BlockQ8K]; N] = [&[]; N];
    for (i, r) in rows.iter_mut().enumerate() {
        *r = &ys[(p0 + i) * per_pos..(p0 + i + 1) * per_pos];
    }
    rows
}

/// The eight positions' lanes of `acc`, first `N` into `out`.
#[inline(always)]
unsafe fn store_positions<const N: usize>(acc: __m256, out: &mut [f32; MAX_POSITIONS]) {
    let mut all = [0.0f32; 8];
    _mm256_storeu_ps(all.as_mut_ptr(), acc);
    out[..N].copy_from_slice(&all[..N]);
}

// ---------------------------------------------------------------------------
// K-quants, AVX-512.

/// A K-quant super-block in registers: chunk `c` of `q` holds the
/// unsigned quants of weights `64c..64c + 64` (the bias of [`Unpacked::q`]
/// included); `sc16` the sixteen i16 sub-block scales; `corr` as
/// [`Unpacked::corr`].
#[derive(Clone, Copy)]
struct Regs {
    q: [__m512i; 4],
    sc16: __m256i,
    corr: __m256i,
}

/// One super-block's `main` sum against one position, as sixteen i32
/// partial sums.
///
/// `vpdpbusd` makes, per chunk `c`, sixteen i32 lanes of four products
/// each (lane `k`: weights `64c + 4k..64c + 4k + 4`, sub-block `4c + k/4`).
/// Every such sum fits in i16 (at most `4 * 63 * 127 = 32004` in
/// magnitude), so two chunks pack losslessly into one vector of 32 i16
/// (`vpackssdw`, per 128-bit lane `L`: four lanes of the first chunk, then
/// four of the second) and one `vpmaddwd`/`vpdpwssd` applies the sub-block
/// scales to them: six multiplying instructions per 256 weights where
/// `vpmaddubsw` then `vpdpwssd` per 64 weights would take eight.
#[inline(always)]
unsafe fn dot512(q: &[__m512i; 4], sc: &[__m512i; 2], x: *const i8) -> __m512i {
    let zero = _mm512_setzero_si512();
    let mut t = [zero; 4];
    for (c, t) in t.iter_mut().enumerate() {
        *t = _mm512_dpbusd_epi32(zero, q[c], load512(x.add(64 * c)));
    }
    let a = _mm512_madd_epi16(_mm512_packs_epi32(t[0], t[1]), sc[0]);
    _mm512_dpwssd_epi32(a, _mm512_packs_epi32(t[2], t[3]), sc[1])
}

/// `vpermw` indices of [`pack_scales`]: i16 lane `m` of the packed pair
/// `h` (chunks `2h`, `2h + 1`) belongs to sub-block `8h + 4 * (m % 8 / 4)
/// + m / 8` (128-bit lane `m / 8` of chunk `2h + m % 8 / 4`).
static PACKED_SCALE: [[i16; 32]; 2] = {
    let mut t = [[0i16; 32]; 2];
    let mut h = 0;
    while h < 2 {
        let mut m = 0;
        while m < 32 {
            t[h][m] = (8 * h + 4 * (m % 8 / 4) + m / 8) as i16;
            m += 1;
        }
        h += 1;
    }
    t
};

/// The scale vectors of [`dot512`] from sixteen i16 sub-block scales.
#[inline(always)]
unsafe fn pack_scales(sc16: __m256i) -> [__m512i; 2] {
    let src = _mm512_zextsi256_si512(sc16);
    let mut out = [src; 2];
    for (o, idx) in out.iter_mut().zip(&PACKED_SCALE) {
        *o = _mm512_permutexvar_epi16(load512(idx.as_ptr()), src);
    }
    out
}

/// Eight bytes, each repeated twice, widened to sixteen i16 lanes.
#[inline(always)]
unsafe fn pairs_u8_to_i16(bytes: &[u8]) -> __m256i {
    let v = _mm_loadl_epi64(bytes.as_ptr().cast());
    _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v))
}

/// A 64-byte vector of `lo` in the low 32 bytes and `hi` in the high ones.
#[inline(always)]
unsafe fn halves8(lo: u8, hi: u8) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi8(lo as i8)),
        _mm256_set1_epi8(hi as i8),
    )
}

/// A vector of i16 lanes, `lo` in the low 256 bits and `hi` in the high.
#[inline(always)]
unsafe fn halves16(lo: i16, hi: i16) -> __m512i {
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm256_set1_epi16(lo)),
        _mm256_set1_epi16(hi),
    )
}

/// The 32 bytes at `p` in both halves of a vector.
#[inline(always)]
unsafe fn both_halves(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(load256(p))
}

/// Upper 16 of 32 i16 lanes: the high 256 bits.
const HIGH_HALF: __mmask32 = 0xFFFF_0000;

trait Unpack512: ByteBlock {
    const FINISH: Finish;
    /// Consecutive 16-weight sub-blocks that share one scale (Q4_K and
    /// Q5_K scale 32 weights at a time).
    const SCALE_SUBS: usize;
    unsafe fn unpack512(&self) -> (Regs, Factors);
}

/// The registers of a Q4_K or Q5_K super-block once its quants are
/// unpacked: the two formats share the packed 6-bit scales and mins and the
/// two f16 factors.
#[inline(always)]
unsafe fn q45k_regs(
    q: [__m512i; 4],
    scales: &[u8; 12],
    d: [u8; 2],
    dmin: [u8; 2],
) -> (Regs, Factors) {
    let sm = super::kernels::q4k_scales_mins(scales);
    let regs = Regs {
        q,
        sc16: pairs_u8_to_i16(&sm[..8]),
        corr: pairs_u8_to_i16(&sm[8..]),
    };
    let factors = Factors {
        d: avx2::f16(d),
        dmin: avx2::f16(dmin),
    };
    (regs, factors)
}

impl Unpack512 for BlockQ4K {
    const FINISH: Finish = Finish::Min;
    const SCALE_SUBS: usize = 2;
    #[inline(always)]
    unsafe fn unpack512(&self) -> (Regs, Factors) {
        let m4 = _mm512_set1_epi8(0x0F);
        // Chunk c: the low nibbles of qs[32c..32c + 32], then the high ones.
        let mut q = [m4; 4];
        for (c, q) in q.iter_mut().enumerate() {
            let v = both_halves(self.qs.as_ptr().add(32 * c));
            *q = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(v, HIGH_HALF, v), m4);
        }
        q45k_regs(q, &self.scales, self.d, self.dmin)
    }
}

impl Unpack512 for BlockQ5K {
    const FINISH: Finish = Finish::Min;
    const SCALE_SUBS: usize = 2;
    #[inline(always)]
    unsafe fn unpack512(&self) -> (Regs, Factors) {
        let m4 = _mm512_set1_epi8(0x0F);
        let qh = both_halves(self.qh.as_ptr());
        // As Q4_K, plus 16 where bit 2c (low half) or 2c + 1 (high half)
        // of the byte of qh is set.
        let mut q = [m4; 4];
        for (c, q) in q.iter_mut().enumerate() {
            let v = both_halves(self.qs.as_ptr().add(32 * c));
            let v = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(v, HIGH_HALF, v), m4);
            let bit = _mm512_test_epi8_mask(qh, halves8(1 << (2 * c), 1 << (2 * c + 1)));
            *q = _mm512_mask_add_epi8(v, bit, v, _mm512_set1_epi8(16));
        }
        q45k_regs(q, &self.scales, self.d, self.dmin)
    }
}

impl Unpack512 for BlockQ6K {
    const FINISH: Finish = Finish::Offset;
    const SCALE_SUBS: usize = 1;
    #[inline(always)]
    unsafe fn unpack512(&self) -> (Regs, Factors) {
        let m4 = _mm512_set1_epi8(0x0F);
        let m2 = _mm512_set1_epi8(0x30);
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            // Chunk 2h: the low nibbles of ql[64h..64h + 64] with bits 0-1
            // (low half) or 2-3 (high half) of qh[32h..32h + 32] on top;
            // chunk 2h + 1: the high nibbles with bits 4-5 or 6-7. 16-bit
            // shifts move bits across bytes, but the mask keeps only bits
            // that stayed within their byte.
            let ql = load512(self.ql.as_ptr().add(64 * h));
            let qh = both_halves(self.qh.as_ptr().add(32 * h));
            let top0 = _mm512_and_si512(_mm512_sllv_epi16(qh, halves16(4, 2)), m2);
            let top1 = _mm512_and_si512(_mm512_srlv_epi16(qh, halves16(0, 2)), m2);
            q[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), top0);
            q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4), top1);
        }
        let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(self.scales.as_ptr().cast()));
        let regs = Regs {
            q,
            sc16: sc,
            corr: _mm256_slli_epi16::<5>(sc),
        };
        (
            regs,
            Factors {
                d: avx2::f16(self.d),
                dmin: 0.0,
            },
        )
    }
}

impl Unpack512 for BlockQ3K {
    const FINISH: Finish = Finish::Offset;
    const SCALE_SUBS: usize = 1;
    #[inline(always)]
    unsafe fn unpack512(&self) -> (Regs, Factors) {
        let m3 = _mm512_set1_epi8(0x03);
        let hm = both_halves(self.hmask.as_ptr());
        let mut q = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let qs = both_halves(self.qs.as_ptr().add(32 * h));
            for kk in 0..2 {
                // Chunk 2h + kk holds groups k = 2kk (low half) and 2kk + 1:
                // bits 2k..2k + 2 of qs[32h..], plus 4 where bit 4h + k of
                // hmask is set.
                let k = 2 * kk;
                let shift = halves16(2 * k as i16, 2 * k as i16 + 2);
                let low = _mm512_and_si512(_mm512_srlv_epi16(qs, shift), m3);
                let bits = halves8(1 << (4 * h + k), 1 << (4 * h + k + 1));
                let high = _mm512_test_epi8_mask(hm, bits);
                q[2 * h + kk] = _mm512_mask_add_epi8(low, high, low, _mm512_set1_epi8(4));
            }
        }
        let biased = super::kernels::q3k_scales(&self.scales);
        let sc = _mm256_sub_epi16(
            _mm256_cvtepu8_epi16(_mm_loadu_si128(biased.as_ptr().cast())),
            _mm256_set1_epi16(32),
        );
        let regs = Regs {
            q,
            sc16: sc,
            corr: _mm256_slli_epi16::<2>(sc),
        };
        (
            regs,
            Factors {
                d: avx2::f16(self.d),
                dmin: 0.0,
            },
        )
    }
}

/// One K-quant row against `N` positions, AVX-512: each super-block is
/// unpacked once into registers and multiplied with every position's block.
#[inline(always)]
unsafe fn kquant_row_512<B: Unpack512, const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    let blocks: &[B] = as_blocks(row);
    let ys = q8k_rows::<N>(acts, p0, blocks.len());
    let mut acc = _mm256_setzero_ps();
    for (i, b) in blocks.iter().enumerate() {
        let (r, f) = b.unpack512();
        let sc = pack_scales(r.sc16);
        let mut main = [_mm256_setzero_si256(); 8];
        let mut corr = [_mm256_setzero_si256(); 8];
        let mut dy = [0.0f32; 8];
        for p in 0..N {
            let y = ys[p].get_unchecked(i);
            let a = dot512(&r.q, &sc, y.qs.as_ptr());
            main[p] =
                _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a));
            corr[p] = _mm256_madd_epi16(r.corr, load256(y.bsums.as_ptr()));
            dy[p] = y.d;
        }
        acc = finish8(B::FINISH, acc, f, _mm256_loadu_ps(dy.as_ptr()), main, corr);
    }
    store_positions::<N>(acc, out);
}

macro_rules! kquant_rows_512 {
    ($($name:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            kquant_row_512::<$block, N>(row, acts, p0, out)
        }
    )*};
}

kquant_rows_512! {
    q3k_row_512: BlockQ3K;
    q4k_row_512: BlockQ4K;
    q5k_row_512: BlockQ5K;
    q6k_row_512: BlockQ6K;
}

// ---------------------------------------------------------------------------
// K-quants, AVX-512, sixteen rows at a time (prefill).

/// Sixteen rows' super-blocks `b`, rows in lanes: lane `r` of every vector
/// belongs to row `r`. What [`kquant_tile`] multiplies with broadcast
/// activations, so that no product needs a horizontal sum.
#[repr(C, align(64))]
struct TileBlock {
    /// Group `g`: the quants `4g..4g + 4` of each row (for `vpdpbusd`).
    q: [[u32; TILE_ROWS]; 64],
    /// Sub-block `s`: each row's scale.
    sc: [[i32; TILE_ROWS]; 16],
    /// Pair `h`: each row's `corr` of sub-blocks `2h` (low i16) and
    /// `2h + 1` (high), for `vpdpwssd` with two activation sums.
    corr: [[u32; TILE_ROWS]; 8],
    d: [f32; TILE_ROWS],
    dmin: [f32; TILE_ROWS],
}

/// Transpose sixteen vectors of sixteen u32: lane `j` of output `i` is lane
/// `i` of input `j`. Unpacks of 32 and 64 bits within 128-bit lanes, then
/// two rounds of 128-bit lane shuffles.
#[inline(always)]
unsafe fn transpose16(a: [__m512i; 16]) -> [__m512i; 16] {
    // b: per 128-bit lane L, rows 2m, 2m + 1 of columns 4L..4L + 2 (even
    // b) or 4L + 2..4L + 4 (odd b).
    let mut b = a;
    for i in (0..16).step_by(2) {
        b[i] = _mm512_unpacklo_epi32(a[i], a[i + 1]);
        b[i + 1] = _mm512_unpackhi_epi32(a[i], a[i + 1]);
    }
    // c[4m + k]: per 128-bit lane L, rows 4m..4m + 4 of column 4L + k.
    let mut c = b;
    for m in 0..4 {
        for h in 0..2 {
            let (x, y) = (b[4 * m + h], b[4 * m + 2 + h]);
            c[4 * m + 2 * h] = _mm512_unpacklo_epi64(x, y);
            c[4 * m + 2 * h + 1] = _mm512_unpackhi_epi64(x, y);
        }
    }
    // For each k, a 4 x 4 transpose of 128-bit lanes over c[k], c[4 + k],
    // c[8 + k], c[12 + k]: output 4L + k takes lane L of each.
    let mut out = c;
    for k in 0..4 {
        let e0 = _mm512_shuffle_i32x4::<0x44>(c[k], c[4 + k]);
        let e1 = _mm512_shuffle_i32x4::<0xEE>(c[k], c[4 + k]);
        let e2 = _mm512_shuffle_i32x4::<0x44>(c[8 + k], c[12 + k]);
        let e3 = _mm512_shuffle_i32x4::<0xEE>(c[8 + k], c[12 + k]);
        out[k] = _mm512_shuffle_i32x4::<0x88>(e0, e2);
        out[4 + k] = _mm512_shuffle_i32x4::<0xDD>(e0, e2);
        out[8 + k] = _mm512_shuffle_i32x4::<0x88>(e1, e3);
        out[12 + k] = _mm512_shuffle_i32x4::<0xDD>(e1, e3);
    }
    out
}

/// Row scratch of [`prepare`]: each row's unpacked block, rows in memory.
#[repr(C, align(64))]
struct RowScratch {
    q: [[u8; 256]; TILE_ROWS],
    sc: [[i32; 16]; TILE_ROWS],
    corr: [[u32; 16]; TILE_ROWS],
}

/// Block `b` of sixteen rows into `tb`, the generic way: each row unpacked
/// as the row kernel does, then the quants, scales and `corr` transposed.
#[inline(always)]
unsafe fn prepare_by_rows<B: Unpack512>(
    rows: &[&[B]; TILE_ROWS],
    b: usize,
    tmp: &mut RowScratch,
    tb: &mut TileBlock,
) {
    for (r, row) in rows.iter().enumerate() {
        let (regs, f) = row.get_unchecked(b).unpack512();
        for (c, q) in regs.q.iter().enumerate() {
            _mm512_store_si512(tmp.q[r].as_mut_ptr().add(64 * c).cast(), *q);
        }
        _mm512_store_si512(
            tmp.sc[r].as_mut_ptr().cast(),
            _mm512_cvtepi16_epi32(regs.sc16),
        );
        _mm512_store_si512(
            tmp.corr[r].as_mut_ptr().cast(),
            _mm512_zextsi256_si512(regs.corr),
        );
        tb.d[r] = f.d;
        tb.dmin[r] = f.dmin;
    }

    for c in 0..4 {
        let mut v = [_mm512_setzero_si512(); 16];
        for (v, q) in v.iter_mut().zip(&tmp.q) {
            *v = _mm512_load_si512(q.as_ptr().add(64 * c).cast());
        }
        for (j, t) in transpose16(v).into_iter().enumerate() {
            _mm512_store_si512(tb.q[16 * c + j].as_mut_ptr().cast(), t);
        }
    }
    let (mut sc, mut corr) = ([_mm512_setzero_si512(); 16], [_mm512_setzero_si512(); 16]);
    for r in 0..TILE_ROWS {
        sc[r] = _mm512_load_si512(tmp.sc[r].as_ptr().cast());
        corr[r] = _mm512_load_si512(tmp.corr[r].as_ptr().cast());
    }
    for (s, t) in transpose16(sc).into_iter().enumerate() {
        _mm512_store_si512(tb.sc[s].as_mut_ptr().cast(), t);
    }
    for (h, t) in transpose16(corr).into_iter().take(8).enumerate() {
        _mm512_store_si512(tb.corr[h].as_mut_ptr().cast(), t);
    }
}

/// Lane `r`: the word (four bytes) at `p + r * row_bytes`, for each of the
/// first `count` words from `p` (at most 16; later outputs are zero): a
/// transpose of sixteen rows' bytes. Masked loads read nothing past the
/// words asked for.
#[inline(always)]
unsafe fn row_words(p: *const u8, row_bytes: usize, count: u32) -> [__m512i; 16] {
    let mask = ((1u32 << count) - 1) as __mmask16;
    let mut v = [_mm512_setzero_si512(); 16];
    for (r, v) in v.iter_mut().enumerate() {
        *v = _mm512_maskz_loadu_epi32(mask, p.add(r * row_bytes).cast());
    }
    transpose16(v)
}

/// Lane `r`: the word at `p + idx[r]`.
#[inline(always)]
unsafe fn gather_words(p: *const u8, idx: __m512i) -> __m512i {
    _mm512_i32gather_epi32::<1>(idx, p.cast())
}

/// `(v >> n) & mask` on every u32 lane.
#[inline(always)]
unsafe fn bits(v: __m512i, n: u32, mask: u32) -> __m512i {
    _mm512_and_si512(
        _mm512_srlv_epi32(v, _mm512_set1_epi32(n as i32)),
        _mm512_set1_epi32(mask as i32),
    )
}

/// f16 values in the low (or, with `high`, upper) half of every u32 lane
/// to f32, exactly.
#[inline(always)]
unsafe fn f16_lanes(v: __m512i, high: bool) -> __m512 {
    let v = if high { _mm512_srli_epi32::<16>(v) } else { v };
    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
}

/// A [`TileBlock`] from sixteen rows' block `b`; `base` points at row 0's
/// block `b` and `idx` holds `r * row_bytes` in lane `r`.
trait TilePrep: Unpack512 {
    #[inline(always)]
    unsafe fn prepare(
        rows: &[&[Self]; TILE_ROWS],
        b: usize,
        base: *const u8,
        idx: __m512i,
        row_bytes: usize,
        tmp: &mut RowScratch,
        tb: &mut TileBlock,
    ) {
        let _ = (base, idx, row_bytes);
        prepare_by_rows(rows, b, tmp, tb)
    }
}

impl TilePrep for BlockQ3K {}

/// Q4_K and Q5_K: the quants of 16 rows come straight out of a transpose
/// of their packed bytes, and the scales and minimums are decoded on 16
/// rows at once ([`super::kernels::q4k_scales_mins`] on vectors).
#[inline(always)]
unsafe fn prepare_q45k(
    base: *const u8,
    idx: __m512i,
    row_bytes: usize,
    qh: Option<usize>,
    qs: usize,
    tb: &mut TileBlock,
) {
    let w0 = gather_words(base, idx);
    let mut s = [w0; 3];
    for (k, s) in s.iter_mut().enumerate() {
        *s = gather_words(base.add(4 + 4 * k), idx);
    }
    let sw = [
        bits(s[0], 0, 0x3f3f_3f3f),
        _mm512_or_si512(
            bits(s[2], 0, 0x0f0f_0f0f),
            _mm512_slli_epi32::<4>(bits(s[0], 6, 0x0303_0303)),
        ),
    ];
    let mw = [
        bits(s[1], 0, 0x3f3f_3f3f),
        _mm512_or_si512(
            bits(s[2], 4, 0x0f0f_0f0f),
            _mm512_slli_epi32::<4>(bits(s[1], 6, 0x0303_0303)),
        ),
    ];
    for j in 0..8 {
        let shift = 8 * (j as u32 % 4);
        let sc = bits(sw[j / 4], shift, 0xFF);
        let m = bits(mw[j / 4], shift, 0xFF);
        _mm512_store_si512(tb.sc[2 * j].as_mut_ptr().cast(), sc);
        _mm512_store_si512(
            tb.corr[j].as_mut_ptr().cast(),
            _mm512_or_si512(m, _mm512_slli_epi32::<16>(m)),
        );
    }
    // Quant word w (bytes 4w..4w + 4 of qs) is in chunk c = w / 8: its low
    // nibbles are weights 64c + 4(w % 8).., its high ones 32 further on.
    // Q5_K's fifth bits: bit 2c (low) or 2c + 1 (high) of qh word w % 8.
    let hw = qh.map(|off| row_words(base.add(off), row_bytes, 8));
    for half in 0..2 {
        let t = row_words(base.add(qs + 64 * half), row_bytes, 16);
        for (j, t) in t.into_iter().enumerate() {
            let w = 16 * half + j;
            let (c, wi) = (w / 8, w % 8);
            let mut lo = bits(t, 0, 0x0f0f_0f0f);
            let mut hi = bits(t, 4, 0x0f0f_0f0f);
            if let Some(h) = &hw {
                let c = c as u32;
                lo = _mm512_or_si512(lo, _mm512_slli_epi32::<4>(bits(h[wi], 2 * c, 0x0101_0101)));
                hi = _mm512_or_si512(
                    hi,
                    _mm512_slli_epi32::<4>(bits(h[wi], 2 * c + 1, 0x0101_0101)),
                );
            }
            _mm512_store_si512(tb.q[16 * c + wi].as_mut_ptr().cast(), lo);
            _mm512_store_si512(tb.q[16 * c + 8 + wi].as_mut_ptr().cast(), hi);
        }
    }
    _mm512_store_ps(tb.d.as_mut_ptr(), f16_lanes(w0, false));
    _mm512_store_ps(tb.dmin.as_mut_ptr(), f16_lanes(w0, true));
}

impl TilePrep for BlockQ4K {
    #[inline(always)]
    unsafe fn prepare(
        _: &[&[Self]; TILE_ROWS],
        _: usize,
        base: *const u8,
        idx: __m512i,
        row_bytes: usize,
        _: &mut RowScratch,
        tb: &mut TileBlock,
    ) {
        prepare_q45k(base, idx, row_bytes, None, 16, tb)
    }
}

impl TilePrep for BlockQ5K {
    #[inline(always)]
    unsafe fn prepare(
        _: &[&[Self]; TILE_ROWS],
        _: usize,
        base: *const u8,
        idx: __m512i,
        row_bytes: usize,
        _: &mut RowScratch,
        tb: &mut TileBlock,
    ) {
        prepare_q45k(base, idx, row_bytes, Some(16), 48, tb)
    }
}

impl TilePrep for BlockQ6K {
    /// Weight group g (of 4) in half h = g / 32, j = g % 32: nibble j / 16
    /// of ql word 16h + j % 16, with bits 2(j / 8).. of qh word 8h + j % 8
    /// on top (see [`super::scalar::unpack_q6k`]).
    #[inline(always)]
    unsafe fn prepare(
        _: &[&[Self]; TILE_ROWS],
        _: usize,
        base: *const u8,
        idx: __m512i,
        row_bytes: usize,
        _: &mut RowScratch,
        tb: &mut TileBlock,
    ) {
        let ql = [
            row_words(base, row_bytes, 16),
            row_words(base.add(64), row_bytes, 16),
        ];
        let qh = row_words(base.add(128), row_bytes, 16);
        for g in 0..64 {
            let (h, j) = (g / 32, g % 32);
            let lo = bits(ql[h][j % 16], 4 * (j as u32 / 16), 0x0f0f_0f0f);
            let top = bits(qh[8 * h + j % 8], 2 * (j as u32 / 8), 0x0303_0303);
            let q = _mm512_or_si512(lo, _mm512_slli_epi32::<4>(top));
            _mm512_store_si512(tb.q[g].as_mut_ptr().cast(), q);
        }
        // Scales: i8 s at byte s of 192..208; d: the high half of the word
        // at 206 (reading 208..212 could pass the end of the last row).
        let mut sw = [_mm512_setzero_si512(); 4];
        for (k, sw) in sw.iter_mut().enumerate() {
            *sw = gather_words(base.add(192 + 4 * k), idx);
        }
        let mut sc = [_mm512_setzero_si512(); 16];
        for (s, v) in sc.iter_mut().enumerate() {
            let left = 24 - 8 * (s as i32 % 4);
            *v = _mm512_srai_epi32::<24>(_mm512_sllv_epi32(sw[s / 4], _mm512_set1_epi32(left)));
        }
        for (s, v) in sc.iter().enumerate() {
            _mm512_store_si512(tb.sc[s].as_mut_ptr().cast(), *v);
        }
        for h in 0..8 {
            let lo = _mm512_and_si512(_mm512_slli_epi32::<5>(sc[2 * h]), _mm512_set1_epi32(0xFFFF));
            let hi = _mm512_slli_epi32::<21>(sc[2 * h + 1]);
            _mm512_store_si512(tb.corr[h].as_mut_ptr().cast(), _mm512_or_si512(lo, hi));
        }
        let dw = gather_words(base.add(206), idx);
        _mm512_store_ps(tb.d.as_mut_ptr(), f16_lanes(dw, true));
        _mm512_store_ps(tb.dmin.as_mut_ptr(), _mm512_setzero_ps());
    }
}

/// [`super::kernels::accumulate`] for sixteen rows at once (one position):
/// the same roundings in the same order in every lane.
#[inline(always)]
unsafe fn accumulate16(
    fin: Finish,
    acc: __m512,
    d: __m512,
    dmin: __m512,
    dy: __m512,
    main: __m512i,
    corr: __m512i,
) -> __m512 {
    match fin {
        Finish::Offset => _mm512_add_ps(
            acc,
            _mm512_mul_ps(
                _mm512_mul_ps(d, dy),
                _mm512_cvtepi32_ps(_mm512_sub_epi32(main, corr)),
            ),
        ),
        Finish::Min => _mm512_sub_ps(
            _mm512_add_ps(
                acc,
                _mm512_mul_ps(_mm512_mul_ps(d, dy), _mm512_cvtepi32_ps(main)),
            ),
            _mm512_mul_ps(_mm512_mul_ps(dmin, dy), _mm512_cvtepi32_ps(corr)),
        ),
    }
}

/// Four bytes (or two i16) at `p` in every i32 lane.
#[inline(always)]
unsafe fn broadcast4<T>(p: *const T) -> __m512i {
    _mm512_set1_epi32(p.cast::<i32>().read_unaligned())
}

/// One prepared block of sixteen rows against the `P` positions `y`:
/// per scale group, `vpdpbusd` of each 4-weight group of the rows with the
/// position's four activations in every lane, then one multiply by the
/// rows' scales; the activation sums by `corr` with `vpdpwssd`.
#[inline(always)]
unsafe fn tile_block<B: Unpack512, const P: usize>(
    tb: &TileBlock,
    y: [&BlockQ8K; P],
    acc: &mut [__m512],
) {
    let zero = _mm512_setzero_si512();
    let mut main = [zero; P];
    let groups = 4 * B::SCALE_SUBS;
    for sg in 0..16 / B::SCALE_SUBS {
        let mut s = [zero; P];
        for g in groups * sg..groups * (sg + 1) {
            let q = _mm512_load_si512(tb.q[g].as_ptr().cast());
            for (s, y) in s.iter_mut().zip(&y) {
                *s = _mm512_dpbusd_epi32(*s, q, broadcast4(y.qs.as_ptr().add(4 * g)));
            }
        }
        let sc = _mm512_load_si512(tb.sc[B::SCALE_SUBS * sg].as_ptr().cast());
        for (m, s) in main.iter_mut().zip(s) {
            *m = _mm512_add_epi32(*m, _mm512_mullo_epi32(s, sc));
        }
    }
    let mut corr = [zero; P];
    for h in 0..8 {
        let c = _mm512_load_si512(tb.corr[h].as_ptr().cast());
        for (k, y) in corr.iter_mut().zip(&y) {
            *k = _mm512_dpwssd_epi32(*k, c, broadcast4(y.bsums.as_ptr().add(2 * h)));
        }
    }
    let d = _mm512_load_ps(tb.d.as_ptr());
    let dmin = _mm512_load_ps(tb.dmin.as_ptr());
    for (i, a) in acc[..P].iter_mut().enumerate() {
        let dy = _mm512_set1_ps(y[i].d);
        *a = accumulate16(B::FINISH, *a, d, dmin, dy, main[i], corr[i]);
    }
}

/// Sixteen K-quant rows (`rows`, consecutive) against positions
/// `p0..p0 + np`, `np <= TILE_POSITIONS`: `out[p][r]` for position
/// `p0 + p` and row `r`. Each output element gets exactly the integer sums
/// and float steps of the row kernel, so the two are interchangeable bit
/// for bit.
#[inline(always)]
unsafe fn kquant_tile<B: TilePrep>(
    rows: &[u8],
    acts: Acts<'_>,
    p0: usize,
    np: usize,
    out: &mut [[f32; TILE_ROWS]; TILE_POSITIONS],
) {
    assert!(np <= TILE_POSITIONS, "tile of {np} positions");
    assert!(rows.len().is_multiple_of(TILE_ROWS), "tile of 16 rows");
    let (rows_len, row_bytes) = (rows.len(), rows.len() / TILE_ROWS);
    let mut row: [&[B]; TILE_ROWS] = [&[]; TILE_ROWS];
    for (r, row) in row.iter_mut().enumerate() {
        *row = as_blocks(&rows[r * row_bytes..(r + 1) * row_bytes]);
    }
    let rows = row;
    let Acts::Q8K {
        blocks: ys,
        per_pos,
    } = acts
    else {
        unreachable!("K-quant kernel given non-Q8_K activations")
    };
    let nb = rows[0].len();
    // Makes the unchecked block reads sound.
    assert_eq!(per_pos, nb, "K-quant row length");
    let ys = &ys[p0 * per_pos..(p0 + np) * per_pos];
    let mut acc = [_mm512_setzero_ps(); TILE_POSITIONS];
    let mut tmp: RowScratch = std::mem::zeroed();
    let mut tb: TileBlock = std::mem::zeroed();
    // Byte offsets of the rows, for gathers (i32 lanes).
    assert!(i32::try_from(rows_len).is_ok(), "tile of {rows_len} bytes");
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    for b in 0..nb {
        let base = rows[0].as_ptr().add(b).cast::<u8>();
        B::prepare(&rows, b, base, idx, row_bytes, &mut tmp, &mut tb);
        let y = |p: usize| ys.get_unchecked(p * per_pos + b);
        let mut p = 0;
        while p + 4 <= np {
            tile_block::<B, 4>(&tb, [y(p), y(p + 1), y(p + 2), y(p + 3)], &mut acc[p..]);
            p += 4;
        }
        match np - p {
            3 => tile_block::<B, 3>(&tb, [y(p), y(p + 1), y(p + 2)], &mut acc[p..]),
            2 => tile_block::<B, 2>(&tb, [y(p), y(p + 1)], &mut acc[p..]),
            1 => tile_block::<B, 1>(&tb, [y(p)], &mut acc[p..]),
            _ => {}
        }
    }
    for (o, a) in out.iter_mut().zip(&acc).take(np) {
        _mm512_storeu_ps(o.as_mut_ptr(), *a);
    }
}

macro_rules! kquant_tiles {
    ($($name:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`TileKernel`]; needs AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name(rows: &[u8], acts: Acts<'_>, p0: usize, np: usize, out: &mut [[f32; TILE_ROWS]; TILE_POSITIONS]) {
            kquant_tile::<$block>(rows, acts, p0, np, out)
        }
    )*};
}

kquant_tiles! {
    q3k_tile: BlockQ3K;
    q4k_tile: BlockQ4K;
    q5k_tile: BlockQ5K;
    q6k_tile: BlockQ6K;
}

/// The sixteen-row kernel for `ty`, if it has one (K-quants).
pub(crate) fn select_tile(ty: GgmlType) -> Option<TileKernel> {
    match ty {
        GgmlType::Q3K => Some(q3k_tile),
        GgmlType::Q4K => Some(q4k_tile),
        GgmlType::Q5K => Some(q5k_tile),
        GgmlType::Q6K => Some(q6k_tile),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// K-quants, 256-bit.

/// One K-quant row against `N` positions on ymm: the AVX2 unpacking into
/// [`Unpacked`], then per group of 32 weights one `vpmaddubsw` and one
/// `vpdpwssd` with the group's scale vector.
#[inline(always)]
unsafe fn kquant_row_256<D: Dot256, B: Unpack, const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    let blocks: &[B] = as_blocks(row);
    let ys = q8k_rows::<N>(acts, p0, blocks.len());
    let mut u = Unpacked::ZERO;
    let mut acc = _mm256_setzero_ps();
    for (i, b) in blocks.iter().enumerate() {
        let f = b.unpack(&mut u);
        let mut main = [_mm256_setzero_si256(); 8];
        let mut corr = [_mm256_setzero_si256(); 8];
        let mut dy = [0.0f32; 8];
        for p in 0..N {
            let y = ys[p].get_unchecked(i);
            let mut a = _mm256_setzero_si256();
            for g in 0..8 {
                let q = load256(u.q.as_ptr().add(32 * g));
                let x = load256(y.qs.as_ptr().add(32 * g));
                a = D::dpwssd(a, _mm256_maddubs_epi16(q, x), load256(u.scales[g].as_ptr()));
            }
            main[p] = a;
            corr[p] = _mm256_madd_epi16(load256(u.corr.as_ptr()), load256(y.bsums.as_ptr()));
            dy[p] = y.d;
        }
        acc = finish8(B::FINISH, acc, f, _mm256_loadu_ps(dy.as_ptr()), main, corr);
    }
    store_positions::<N>(acc, out);
}

macro_rules! kquant_rows_avx {
    ($($name:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA, F16C and AVX-VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            kquant_row_256::<Vex, $block, N>(row, acts, p0, out)
        }
    )*};
}

kquant_rows_avx! {
    q3k_row_avx: BlockQ3K;
    q4k_row_avx: BlockQ4K;
    q5k_row_avx: BlockQ5K;
    q6k_row_avx: BlockQ6K;
}

// ---------------------------------------------------------------------------
// 32-weight blocks, 256-bit (both flavours).

/// See the scalar twin: eight lanes of four-product sums per 32-block,
/// which is exactly what one `vpdpbusd` makes, plus the minimum term.
/// `vpdpbusd` needs an unsigned operand, so the weight sign moves onto the
/// activations (`|w| * sign(w) y`), as in the AVX2 kernel.
#[inline(always)]
unsafe fn block32_row<D: Dot256, B: Unpack32, const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    let blocks: &[B] = as_blocks(row);
    let Acts::Q8_32 {
        blocks: ys,
        per_pos,
    } = acts
    else {
        unreachable!("32-block kernel given non-Q8_32 activations")
    };
    // Makes the unchecked block reads below sound.
    assert_eq!(per_pos, blocks.len(), "32-block row length");
    let mut rows: [&[BlockQ8_32]; N] = [&[]; N];
    for (i, r) in rows.iter_mut().enumerate() {
        *r = &ys[(p0 + i) * per_pos..(p0 + i + 1) * per_pos];
    }
    let ys = rows;
    let zero = _mm256_setzero_si256();
    let ones8 = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0.0f32; N];
    for (i, b) in blocks.iter().enumerate() {
        let (w, d, m) = b.unpack();
        let aw = _mm256_sign_epi8(w, w);
        for ((a, min), y) in acc.iter_mut().zip(&mut mins).zip(&ys) {
            let y = y.get_unchecked(i);
            let yq = load256(y.qs.as_ptr());
            let sum = D::dpbusd(zero, aw, _mm256_sign_epi8(yq, w));
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(sum), *a);
            if B::MIN {
                let (ysum, _) = avx2::hsum_i32_pair(D::dpbusd(zero, ones8, yq), zero);
                *min = accumulate_min(*min, m, y.d, ysum);
            }
        }
    }
    for ((o, a), min) in out.iter_mut().zip(acc).zip(mins) {
        *o = if B::MIN {
            avx2::reduce8(a) + min
        } else {
            avx2::reduce8(a)
        };
    }
}

macro_rules! block32_rows {
    ($($name_512:ident, $name_avx:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn $name_512<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            block32_row::<Evex, $block, N>(row, acts, p0, out)
        }

        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA, F16C and AVX-VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
        unsafe fn $name_avx<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            block32_row::<Vex, $block, N>(row, acts, p0, out)
        }
    )*};
}

block32_rows! {
    q4_0_row_512, q4_0_row_avx: BlockQ4_0;
    q4_1_row_512, q4_1_row_avx: BlockQ4_1;
    q5_0_row_512, q5_0_row_avx: BlockQ5_0;
    q5_1_row_512, q5_1_row_avx: BlockQ5_1;
    q8_0_row_512, q8_0_row_avx: BlockQ8_0;
    iq4_nl_row_512, iq4_nl_row_avx: BlockIQ4NL;
}

// ---------------------------------------------------------------------------
// f32 vector operations (attention), AVX-512: sixteen lanes per instruction,
// the same arithmetic per lane as the AVX2 and scalar twins.

/// `sum a[i] * b[i]` in the fixed 32-lane layout of
/// [`super::kernels::reduce32`]: lanes 0-15 and 16-31 in two accumulators,
/// fused multiply-adds, then `(l[i] + l[i + 16]) + (l[i + 8] + l[i + 24])`
/// and [`super::kernels::reduce8`]; a tail shorter than 32 added in order.
///
/// # Safety
/// Needs AVX2, FMA, F16C and AVX-512 F; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let full = b.len() / 32 * 32;
    let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for c in (0..full).step_by(32) {
        let (pa, pb) = (a.as_ptr().add(c), b.as_ptr().add(c));
        lo = _mm512_fmadd_ps(_mm512_loadu_ps(pa), _mm512_loadu_ps(pb), lo);
        hi = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(16)), _mm512_loadu_ps(pb.add(16)), hi);
    }
    let t = _mm512_add_ps(lo, hi);
    let u = _mm256_add_ps(
        _mm512_castps512_ps256(t),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(t))),
    );
    let mut r = avx2::reduce8(u);
    for (&ai, &bi) in a[full..].iter().zip(&b[full..]) {
        r = ai.mul_add(bi, r);
    }
    r
}

/// `y[i] += a * x[i]`, a rounded product then a rounded sum, as the twins.
///
/// # Safety
/// Needs AVX2, FMA, F16C and AVX-512 F; `y.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let full = x.len() / 16 * 16;
    let va = _mm512_set1_ps(a);
    for i in (0..full).step_by(16) {
        let p = y.as_mut_ptr().add(i);
        let v = _mm512_add_ps(
            _mm512_loadu_ps(p),
            _mm512_mul_ps(va, _mm512_loadu_ps(x.as_ptr().add(i))),
        );
        _mm512_storeu_ps(p, v);
    }
    for (yi, &xi) in y[full..].iter_mut().zip(&x[full..]) {
        *yi += a * xi;
    }
}

/// The AVX-VNNI kernels are the 256-bit code over [`Vex`]; a CPU with
/// AVX-512 VNNI but not AVX-VNNI (Ice Lake, Sapphire Rapids before the VEX
/// form, Zen 4) cannot run them, so these tests run the same code over
/// [`Evex`], which differs only in the instruction encoding.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::isa::{Isa, Kind};
    use crate::backend::cpu::kernels::{self, ActFormat};
    use crate::quant::q8_32;
    use crate::quant::q8_k;

    macro_rules! evex_256 {
        ($($name:ident: $block:ty;)*) => {$(
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
                kquant_row_256::<Evex, $block, N>(row, acts, p0, out)
            }
        )*};
    }

    evex_256! {
        q3k_evex: BlockQ3K;
        q4k_evex: BlockQ4K;
        q5k_evex: BlockQ5K;
        q6k_evex: BlockQ6K;
    }

    fn evex_kquant(ty: GgmlType, np: usize) -> RowKernel {
        match ty {
            GgmlType::Q3K => row_kernel_for!(q3k_evex, np),
            GgmlType::Q4K => row_kernel_for!(q4k_evex, np),
            GgmlType::Q5K => row_kernel_for!(q5k_evex, np),
            GgmlType::Q6K => row_kernel_for!(q6k_evex, np),
            _ => unreachable!(),
        }
    }

    fn evex_block32(ty: GgmlType, np: usize) -> RowKernel {
        match ty {
            GgmlType::Q4_0 => row_kernel_for!(q4_0_row_512, np),
            GgmlType::Q4_1 => row_kernel_for!(q4_1_row_512, np),
            GgmlType::Q5_0 => row_kernel_for!(q5_0_row_512, np),
            GgmlType::Q5_1 => row_kernel_for!(q5_1_row_512, np),
            GgmlType::Q8_0 => row_kernel_for!(q8_0_row_512, np),
            GgmlType::IQ4NL => row_kernel_for!(iq4_nl_row_512, np),
            _ => unreachable!(),
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn float(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Random blocks of `ty` with every f16 scale field set to a small
    /// finite value (fields at `scales` within each `block` bytes).
    fn random_row(ty: GgmlType, cols: usize, rng: &mut Rng) -> Vec<u8> {
        let (_, block) = ty.block_layout().unwrap();
        let fields: &[usize] = match ty {
            GgmlType::Q3K => &[108],
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => &[0],
        };
        let mut row: Vec<u8> = (0..ty.row_bytes(cols).unwrap())
            .map(|_| rng.next() as u8)
            .collect();
        for b in row.chunks_exact_mut(block) {
            for &f in fields {
                b[f..f + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
            }
        }
        row
    }

    #[test]
    fn transpose16_transposes() {
        if !Isa::available().contains(&Isa(Kind::Avx512Vnni)) {
            return;
        }
        let m: [[u32; 16]; 16] =
            std::array::from_fn(|i| std::array::from_fn(|j| (i * 16 + j) as u32));
        #[target_feature(enable = "avx512f")]
        unsafe fn run(m: &[[u32; 16]; 16]) -> [[u32; 16]; 16] {
            let mut v = [_mm512_setzero_si512(); 16];
            for (v, m) in v.iter_mut().zip(m) {
                *v = _mm512_loadu_si512(m.as_ptr().cast());
            }
            let t = transpose16(v);
            let mut out = [[0u32; 16]; 16];
            for (o, t) in out.iter_mut().zip(t) {
                _mm512_storeu_si512(o.as_mut_ptr().cast(), t);
            }
            out
        }
        // SAFETY: AVX-512 F was detected (part of the VNNI set).
        let t = unsafe { run(&m) };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(t[i][j], m[j][i], "({i}, {j})");
            }
        }
    }

    /// The 256-bit AVX-VNNI code (over EVEX) and the AVX-512 kernels against
    /// the scalar twin, bit for bit, for every position count.
    #[test]
    fn vnni_256_code_matches_the_scalar_twin() {
        if !Isa::available().contains(&Isa(Kind::Avx512Vnni)) {
            eprintln!("no AVX-512 VNNI here: skipped");
            return;
        }
        let mut rng = Rng(0x5eed_7a11);
        let types = [
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::IQ4NL,
        ];
        for ty in types {
            let cols = 768;
            let n = MAX_POSITIONS + 3;
            let x: Vec<f32> = (0..n * cols).map(|_| rng.float()).collect();
            let kq = ActFormat::of(ty) == ActFormat::Q8K;
            let mut q8k = vec![q8_k::BlockQ8K::ZERO; n * cols / 256];
            let mut q832 = vec![q8_32::BlockQ8_32::ZERO; n * cols / 32];
            let acts = if kq {
                q8_k::quantize(&x, &mut q8k);
                Acts::Q8K {
                    blocks: &q8k,
                    per_pos: cols / 256,
                }
            } else {
                q8_32::quantize(&x, &mut q832);
                Acts::Q8_32 {
                    blocks: &q832,
                    per_pos: cols / 32,
                }
            };
            for _ in 0..4 {
                let row = random_row(ty, cols, &mut rng);
                for np in 1..=MAX_POSITIONS {
                    for p0 in [0, n - np] {
                        let mut want = [0.0f32; MAX_POSITIONS];
                        let mut got = [f32::NAN; MAX_POSITIONS];
                        let mut wide = [f32::NAN; MAX_POSITIONS];
                        let kernel = if kq {
                            evex_kquant(ty, np)
                        } else {
                            evex_block32(ty, np)
                        };
                        // SAFETY: AVX-512 VNNI (with AVX2, FMA, F16C) was
                        // detected above; acts match the type; p0 + np <= n.
                        unsafe {
                            kernels::select(Isa::SCALAR, ty, np)(&row, acts, p0, &mut want);
                            kernel(&row, acts, p0, &mut got);
                            select(ty, np, true)(&row, acts, p0, &mut wide);
                        }
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&got[..np]), bits(&want[..np]), "{ty} 256-bit np={np}");
                        assert_eq!(bits(&wide[..np]), bits(&want[..np]), "{ty} 512 np={np}");
                    }
                }
            }
        }
    }
}

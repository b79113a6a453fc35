//! AVX2 + FMA + F16C kernels (x86_64), twins of [`super::scalar`].
//!
//! Entry points carry `#[target_feature]`; helpers are `#[inline(always)]`
//! so they are compiled inside those entry points with AVX2 enabled.
//!
//! The integer core is `_mm256_maddubs_epi16` (unsigned weight bytes times
//! signed activation bytes, adjacent pairs summed to i16) followed by
//! `_mm256_madd_epi16` with the scale vector (pairs of i16 products summed
//! to i32). Pairs stay below i16 saturation: weight bytes are at most 63
//! (K-quants) or 128 (the magnitudes of 32-weight blocks' signed quants),
//! activations at most 127 in magnitude, and `2 * 128 * 127 < 32767`.

use std::arch::x86_64::*;

use super::kernels::{
    accumulate, accumulate_min, row_kernel_for, Acts, Factors, Finish, RowKernel, Unpacked,
    MAX_POSITIONS,
};
use crate::quant::iq4_nl::{BlockIQ4NL, LEVELS};
use crate::quant::q3_k::BlockQ3K;
use crate::quant::q4_0::BlockQ4_0;
use crate::quant::q4_1::BlockQ4_1;
use crate::quant::q4_k::BlockQ4K;
use crate::quant::q5_0::BlockQ5_0;
use crate::quant::q5_1::BlockQ5_1;
use crate::quant::q5_k::BlockQ5K;
use crate::quant::q6_k::BlockQ6K;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8_32::{block_scale, BlockQ8_32};
use crate::quant::q8_k::{block_sums, inverse_scale, BlockQ8K};
use crate::quant::{as_blocks, ByteBlock, GgmlType};

pub(crate) fn select(ty: GgmlType, np: usize) -> RowKernel {
    match ty {
        GgmlType::Q3K => row_kernel_for!(q3k_row, np),
        GgmlType::Q4K => row_kernel_for!(q4k_row, np),
        GgmlType::Q5K => row_kernel_for!(q5k_row, np),
        GgmlType::Q6K => row_kernel_for!(q6k_row, np),
        GgmlType::Q4_0 => row_kernel_for!(q4_0_row, np),
        GgmlType::Q4_1 => row_kernel_for!(q4_1_row, np),
        GgmlType::Q5_0 => row_kernel_for!(q5_0_row, np),
        GgmlType::Q5_1 => row_kernel_for!(q5_1_row, np),
        GgmlType::Q8_0 => row_kernel_for!(q8_0_row, np),
        GgmlType::IQ4NL => row_kernel_for!(iq4_nl_row, np),
        GgmlType::F32 => row_kernel_for!(f32_row, np),
        GgmlType::F16 => row_kernel_for!(f16_row, np),
        GgmlType::BF16 => row_kernel_for!(bf16_row, np),
        other => panic!("matmul: unsupported weight type {other}"),
    }
}

#[inline(always)]
unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// Aligned load/store: `Unpacked` and `BlockQ8K` are 32-byte aligned and
/// their arrays start at multiples of 32.
#[inline(always)]
unsafe fn load32<T>(p: *const T) -> __m256i {
    _mm256_load_si256(p.cast())
}

#[inline(always)]
unsafe fn store32<T>(p: *mut T, v: __m256i) {
    _mm256_store_si256(p.cast(), v)
}

/// An f16 (little-endian bytes) to f32, exactly, with F16C.
#[inline(always)]
pub(super) unsafe fn f16(bytes: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes(bytes),
    ))))
}

/// `v` with every byte `b` replaced by `set` if `b & bit != 0`, else 0.
#[inline(always)]
unsafe fn bit_to(v: __m256i, bit: u8, set: i8) -> __m256i {
    let m = _mm256_set1_epi8(bit as i8);
    _mm256_and_si256(
        _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m),
        _mm256_set1_epi8(set),
    )
}

/// Shuffle controls that turn a vector holding eight i16 scales (in both
/// 128-bit halves) into group vectors: `PAIR[m]` takes scale `2m` into the
/// low half's eight lanes and scale `2m + 1` into the high half's.
static PAIR: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut m = 0;
    while m < 4 {
        let mut i = 0;
        while i < 16 {
            let odd = (i % 2) as u8;
            t[m][i] = 4 * m as u8 + odd;
            t[m][16 + i] = 4 * m as u8 + 2 + odd;
            i += 1;
        }
        m += 1;
    }
    t
};

/// Store `Unpacked::scales` from sixteen i16 sub-block scales.
#[inline(always)]
unsafe fn store_scales(u: &mut Unpacked, sc16: __m256i) {
    let lo = _mm256_permute2x128_si256::<0x00>(sc16, sc16);
    let hi = _mm256_permute2x128_si256::<0x11>(sc16, sc16);
    for (m, ctrl) in PAIR.iter().enumerate() {
        let ctrl = loadu(ctrl.as_ptr());
        store32(u.scales[m].as_mut_ptr(), _mm256_shuffle_epi8(lo, ctrl));
        store32(u.scales[m + 4].as_mut_ptr(), _mm256_shuffle_epi8(hi, ctrl));
    }
}

/// Eight bytes, each repeated twice, widened to sixteen i16 lanes.
#[inline(always)]
unsafe fn pairs_u8_to_i16(bytes: &[u8]) -> __m256i {
    let v = _mm_loadl_epi64(bytes.as_ptr().cast());
    _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v))
}

pub(super) trait Unpack: ByteBlock {
    const FINISH: Finish;
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors;
}

impl Unpack for BlockQ4K {
    const FINISH: Finish = Finish::Min;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors {
        let m4 = _mm256_set1_epi8(0x0F);
        for g in 0..4 {
            let v = loadu(self.qs.as_ptr().add(32 * g));
            store32(u.q.as_mut_ptr().add(64 * g), _mm256_and_si256(v, m4));
            store32(
                u.q.as_mut_ptr().add(64 * g + 32),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4),
            );
        }
        let sm = super::kernels::q4k_scales_mins(&self.scales);
        store_scales(u, pairs_u8_to_i16(&sm[..8]));
        store32(u.corr.as_mut_ptr(), pairs_u8_to_i16(&sm[8..]));
        Factors {
            d: f16(self.d),
            dmin: f16(self.dmin),
        }
    }
}

impl Unpack for BlockQ5K {
    const FINISH: Finish = Finish::Min;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors {
        let m4 = _mm256_set1_epi8(0x0F);
        let qh = loadu(self.qh.as_ptr());
        for g in 0..4 {
            let v = loadu(self.qs.as_ptr().add(32 * g));
            let lo = _mm256_or_si256(_mm256_and_si256(v, m4), bit_to(qh, 1 << (2 * g), 16));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
            let hi = _mm256_or_si256(hi, bit_to(qh, 1 << (2 * g + 1), 16));
            store32(u.q.as_mut_ptr().add(64 * g), lo);
            store32(u.q.as_mut_ptr().add(64 * g + 32), hi);
        }
        let sm = super::kernels::q4k_scales_mins(&self.scales);
        store_scales(u, pairs_u8_to_i16(&sm[..8]));
        store32(u.corr.as_mut_ptr(), pairs_u8_to_i16(&sm[8..]));
        Factors {
            d: f16(self.d),
            dmin: f16(self.dmin),
        }
    }
}

impl Unpack for BlockQ6K {
    const FINISH: Finish = Finish::Offset;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x30);
        for h in 0..2 {
            let ql0 = loadu(self.ql.as_ptr().add(64 * h));
            let ql1 = loadu(self.ql.as_ptr().add(64 * h + 32));
            let qh = loadu(self.qh.as_ptr().add(32 * h));
            // 16-bit shifts move bits across bytes, but the masks keep only
            // bits that stayed within their byte.
            let top = [
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
                _mm256_and_si256(qh, m2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
            ];
            let low = [
                _mm256_and_si256(ql0, m4),
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            ];
            for k in 0..4 {
                store32(
                    u.q.as_mut_ptr().add(128 * h + 32 * k),
                    _mm256_or_si256(low[k], top[k]),
                );
            }
        }
        let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(self.scales.as_ptr().cast()));
        store_scales(u, sc);
        store32(u.corr.as_mut_ptr(), _mm256_slli_epi16::<5>(sc));
        Factors {
            d: f16(self.d),
            dmin: 0.0,
        }
    }
}

impl Unpack for BlockQ3K {
    const FINISH: Finish = Finish::Offset;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors {
        let m3 = _mm256_set1_epi8(0x03);
        let hm = loadu(self.hmask.as_ptr());
        for h in 0..2 {
            let qs = loadu(self.qs.as_ptr().add(32 * h));
            let low = [
                qs,
                _mm256_srli_epi16::<2>(qs),
                _mm256_srli_epi16::<4>(qs),
                _mm256_srli_epi16::<6>(qs),
            ];
            for (k, low) in low.into_iter().enumerate() {
                let q = _mm256_or_si256(_mm256_and_si256(low, m3), bit_to(hm, 1 << (4 * h + k), 4));
                store32(u.q.as_mut_ptr().add(128 * h + 32 * k), q);
            }
        }
        let biased = super::kernels::q3k_scales(&self.scales);
        let sc = _mm256_sub_epi16(
            _mm256_cvtepu8_epi16(_mm_loadu_si128(biased.as_ptr().cast())),
            _mm256_set1_epi16(32),
        );
        store_scales(u, sc);
        store32(u.corr.as_mut_ptr(), _mm256_slli_epi16::<2>(sc));
        Factors {
            d: f16(self.d),
            dmin: 0.0,
        }
    }
}

/// Sum the lanes of two i32 vectors (exact, so the order is free).
#[inline(always)]
pub(super) unsafe fn hsum_i32_pair(a: __m256i, b: __m256i) -> (i32, i32) {
    let h = _mm256_hadd_epi32(a, b);
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let t = _mm_hadd_epi32(s, s);
    (_mm_cvtsi128_si32(t), _mm_extract_epi32::<1>(t))
}

/// `(main, corr)` of an unpacked block against one Q8_K block.
#[inline(always)]
unsafe fn dot_unpacked(u: &Unpacked, y: &BlockQ8K) -> (i32, i32) {
    let mut acc = [_mm256_setzero_si256(); 2];
    for g in 0..8 {
        let q = load32(u.q.as_ptr().add(32 * g));
        let x = load32(y.qs.as_ptr().add(32 * g));
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), load32(u.scales[g].as_ptr()));
        acc[g % 2] = _mm256_add_epi32(acc[g % 2], p);
    }
    let corr = _mm256_madd_epi16(load32(u.corr.as_ptr()), load32(y.bsums.as_ptr()));
    hsum_i32_pair(_mm256_add_epi32(acc[0], acc[1]), corr)
}

#[inline(always)]
unsafe fn kquant_row<B: Unpack, const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    let blocks: &[B] = as_blocks(row);
    let Acts::Q8K {
        blocks: ys,
        per_pos,
    } = acts
    else {
        unreachable!("K-quant kernel given non-Q8_K activations")
    };
    // Makes the unchecked block reads below sound.
    assert_eq!(per_pos, blocks.len(), "K-quant row length");
    let ys: [&[BlockQ8K]; N] =
        std::array::from_fn(|i| &ys[(p0 + i) * per_pos..(p0 + i + 1) * per_pos]);
    let mut u = Unpacked::ZERO;
    let mut acc = [0.0f32; N];
    for (i, b) in blocks.iter().enumerate() {
        let f = b.unpack(&mut u);
        for (a, y) in acc.iter_mut().zip(&ys) {
            let y = y.get_unchecked(i);
            let (main, corr) = dot_unpacked(&u, y);
            *a = accumulate(B::FINISH, *a, f, y.d, main, corr);
        }
    }
    out[..N].copy_from_slice(&acc);
}

macro_rules! kquant_rows {
    ($($name:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            kquant_row::<$block, N>(row, acts, p0, out)
        }
    )*};
}

kquant_rows! {
    q3k_row: BlockQ3K;
    q4k_row: BlockQ4K;
    q5k_row: BlockQ5K;
    q6k_row: BlockQ6K;
}

/// The fixed eight-lane reduction of [`super::kernels::reduce8`].
#[inline(always)]
pub(super) unsafe fn reduce8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let w = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(w, _mm_movehdup_ps(w)))
}

/// A 32-weight block as [`super::scalar::Unpack32`] gives it: the quants
/// as 32 signed bytes in weight order, the scale, the minimum (0 without).
pub(super) trait Unpack32: ByteBlock {
    const MIN: bool;
    unsafe fn unpack(&self) -> (__m256i, f32, f32);
}

/// The sixteen quant bytes of the 4- and 5-bit formats as 32 nibbles in
/// weight order: low nibbles (weights 0..16) in the low half, high nibbles
/// (16..32) in the high half.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    let v = _mm_loadu_si128(qs.as_ptr().cast());
    let m4 = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16::<4>(v), m4),
        _mm_and_si128(v, m4),
    )
}

/// Q5_0/Q5_1: byte `i` is 16 if bit `i` of the little-endian `qh` is set,
/// else 0. Byte `i` first gets byte `i / 8` of `qh` (the shuffle works per
/// 128-bit half, and both halves hold all four bytes), then tests its bit.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    let v = _mm256_set1_epi32(i32::from_le_bytes(qh));
    let spread = _mm256_shuffle_epi8(
        v,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_and_si256(
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits),
        _mm256_set1_epi8(16),
    )
}

impl Unpack32 for BlockQ8_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (__m256i, f32, f32) {
        (loadu(self.qs.as_ptr()), f16(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ4_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (__m256i, f32, f32) {
        let q = _mm256_sub_epi8(nibbles(&self.qs), _mm256_set1_epi8(8));
        (q, f16(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ4_1 {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self) -> (__m256i, f32, f32) {
        (nibbles(&self.qs), f16(self.d), f16(self.m))
    }
}

impl Unpack32 for BlockQ5_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (__m256i, f32, f32) {
        let q = _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh));
        (_mm256_sub_epi8(q, _mm256_set1_epi8(16)), f16(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ5_1 {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self) -> (__m256i, f32, f32) {
        let q = _mm256_or_si256(nibbles(&self.qs), fifth_bits(self.qh));
        (q, f16(self.d), f16(self.m))
    }
}

impl Unpack32 for BlockIQ4NL {
    const MIN: bool = false;
    /// The table lookup is one byte shuffle: indices are below 16.
    #[inline(always)]
    unsafe fn unpack(&self) -> (__m256i, f32, f32) {
        let table = _mm_loadu_si128(LEVELS.as_ptr().cast());
        let q = _mm256_shuffle_epi8(_mm256_set_m128i(table, table), nibbles(&self.qs));
        (q, f16(self.d), 0.0)
    }
}

/// See the scalar twin: eight lanes of four-product sums per 32-block,
/// plus the minimum term. `maddubs` needs an unsigned operand, so the
/// weight sign moves onto the activations (`|w| * sign(w) y`).
#[inline(always)]
unsafe fn block32_row<B: Unpack32, const N: usize>(
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
    let ys: [&[BlockQ8_32]; N] =
        std::array::from_fn(|i| &ys[(p0 + i) * per_pos..(p0 + i + 1) * per_pos]);
    let ones = _mm256_set1_epi16(1);
    let ones8 = _mm256_set1_epi8(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0.0f32; N];
    for (i, b) in blocks.iter().enumerate() {
        let (w, d, m) = b.unpack();
        let aw = _mm256_sign_epi8(w, w);
        for ((a, min), y) in acc.iter_mut().zip(&mut mins).zip(&ys) {
            let y = y.get_unchecked(i);
            let yq = loadu(y.qs.as_ptr().cast());
            let sy = _mm256_sign_epi8(yq, w);
            let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sy), ones);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), _mm256_cvtepi32_ps(sum), *a);
            if B::MIN {
                let ysum = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, yq), ones);
                let (ysum, _) = hsum_i32_pair(ysum, _mm256_setzero_si256());
                *min = accumulate_min(*min, m, y.d, ysum);
            }
        }
    }
    for ((o, a), min) in out.iter_mut().zip(acc).zip(mins) {
        *o = if B::MIN { reduce8(a) + min } else { reduce8(a) };
    }
}

macro_rules! block32_rows {
    ($($name:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            block32_row::<$block, N>(row, acts, p0, out)
        }
    )*};
}

block32_rows! {
    q4_0_row: BlockQ4_0;
    q4_1_row: BlockQ4_1;
    q5_0_row: BlockQ5_0;
    q5_1_row: BlockQ5_1;
    q8_0_row: BlockQ8_0;
    iq4_nl_row: BlockIQ4NL;
}

/// Float weights: eight at a time as f32, plus the scalar value of one.
trait FloatWeights {
    const BYTES: usize;
    unsafe fn load8(p: *const u8) -> __m256;
    unsafe fn load1(p: *const u8) -> f32;
}

struct F32W;
struct F16W;
struct Bf16W;

impl FloatWeights for F32W {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_loadu_ps(p.cast())
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        p.cast::<f32>().read_unaligned()
    }
}

impl FloatWeights for F16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f16([*p, *p.add(1)])
    }
}

impl FloatWeights for Bf16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
            _mm_loadu_si128(p.cast()),
        )))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f32::from_bits(u32::from(u16::from_le_bytes([*p, *p.add(1)])) << 16)
    }
}

/// `sum w[i] * x[i]` over `x.len()` weights at `w`, in the fixed 32-lane
/// layout of [`super::kernels::reduce32`]: four accumulators of eight.
#[inline(always)]
unsafe fn float_dot<W: FloatWeights>(w: *const u8, x: &[f32]) -> f32 {
    let full = x.len() / 32 * 32;
    let mut a = [_mm256_setzero_ps(); 4];
    for c in (0..full).step_by(32) {
        for (j, a) in a.iter_mut().enumerate() {
            let wv = W::load8(w.add((c + 8 * j) * W::BYTES));
            *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(c + 8 * j)), *a);
        }
    }
    let u = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
    let mut r = reduce8(u);
    for (i, &xi) in x.iter().enumerate().skip(full) {
        r = W::load1(w.add(i * W::BYTES)).mul_add(xi, r);
    }
    r
}

/// # Safety
/// Needs AVX2, FMA and F16C; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    float_dot::<F32W>(a.as_ptr().cast(), b)
}

/// `y[i] += a * x[i]` (multiply, then add: no fusing, like the scalar twin).
///
/// # Safety
/// Needs AVX2, FMA and F16C; `y.len() == x.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let full = x.len() / 8 * 8;
    let va = _mm256_set1_ps(a);
    for i in (0..full).step_by(8) {
        let p = y.as_mut_ptr().add(i);
        let v = _mm256_add_ps(
            _mm256_loadu_ps(p),
            _mm256_mul_ps(va, _mm256_loadu_ps(x.as_ptr().add(i))),
        );
        _mm256_storeu_ps(p, v);
    }
    for (yi, &xi) in y[full..].iter_mut().zip(&x[full..]) {
        *yi += a * xi;
    }
}

#[inline(always)]
unsafe fn float_row<W: FloatWeights, const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    let Acts::F32 { x, cols } = acts else {
        unreachable!("float kernel given quantized activations")
    };
    assert_eq!(row.len(), cols * W::BYTES, "float row length");
    for (p, o) in out[..N].iter_mut().enumerate() {
        *o = float_dot::<W>(row.as_ptr(), &x[(p0 + p) * cols..(p0 + p + 1) * cols]);
    }
}

macro_rules! float_rows {
    ($($name:ident: $w:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`]; needs AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            float_row::<$w, N>(row, acts, p0, out)
        }
    )*};
}

float_rows! {
    f32_row: F32W;
    f16_row: F16W;
    bf16_row: Bf16W;
}

/// Largest |x| of `n` floats at `p` (a multiple of 8).
#[inline(always)]
unsafe fn abs_max(p: *const f32, n: usize) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for i in (0..n).step_by(8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(i))));
    }
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
}

/// 32 floats at `p` times `iscale`, rounded to nearest-even (the default
/// MXCSR mode, which Rust never changes) and clamped to -127..=127, in order.
#[inline(always)]
unsafe fn quantize32(p: *const f32, iscale: __m256) -> __m256i {
    let q = |k: usize| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(8 * k)), iscale));
    // Packing works within 128-bit halves, leaving 4-byte groups in the
    // order 0, 2, 4, 6, 1, 3, 5, 7; the permute restores it.
    let v = _mm256_packs_epi16(
        _mm256_packs_epi32(q(0), q(1)),
        _mm256_packs_epi32(q(2), q(3)),
    );
    let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_max_epi8(v, _mm256_set1_epi8(-127))
}

/// # Safety
/// Needs AVX2, FMA and F16C; `x.len() == 256 * out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xs, b) in x.chunks_exact(256).zip(out) {
        let p = xs.as_ptr();
        let Some(iscale) = inverse_scale(abs_max(p, 256)) else {
            *b = BlockQ8K::ZERO;
            continue;
        };
        let m = _mm256_set1_ps(iscale);
        for g in 0..8 {
            store32(b.qs.as_mut_ptr().add(32 * g), quantize32(p.add(32 * g), m));
        }
        b.bsums = block_sums(&b.qs);
        b.d = 1.0 / iscale;
    }
}

/// # Safety
/// Needs AVX2, FMA and F16C; `x.len() == 32 * out.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_q8_32(x: &[f32], out: &mut [BlockQ8_32]) {
    for (xs, b) in x.chunks_exact(32).zip(out) {
        let p = xs.as_ptr();
        let amax = abs_max(p, 32);
        let Some(iscale) = inverse_scale(amax) else {
            *b = BlockQ8_32::ZERO;
            continue;
        };
        _mm256_storeu_si256(
            b.qs.as_mut_ptr().cast(),
            quantize32(p, _mm256_set1_ps(iscale)),
        );
        b.d = block_scale(amax);
    }
}

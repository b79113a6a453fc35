//! NEON kernels (aarch64), twins of [`super::scalar`], in two flavours:
//! with the dot-product extension (`sdot`: four byte products summed into
//! each i32 lane) and without it (widening `smull`/`smlal2` plus pairwise
//! adds), selected at run time. NEON itself is part of the aarch64 baseline.
//!
//! `sdot` and the f16 conversions are written as inline assembly: Rust's
//! `vdotq_s32` and `float16x4_t` intrinsics are not stable yet. The
//! assembly is only reached from functions compiled with the `dotprod`
//! feature (for `sdot`) or uses base ARMv8 instructions (`fcvt`, `fcvtl`).
//!
//! Helpers are `#[inline(always)]` so they are compiled inside the
//! `#[target_feature]` entry points.

use std::arch::aarch64::*;
use std::arch::asm;

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

pub(crate) fn select(ty: GgmlType, np: usize, dotprod: bool) -> RowKernel {
    match (ty, dotprod) {
        (GgmlType::Q3K, false) => row_kernel_for!(q3k_row, np),
        (GgmlType::Q3K, true) => row_kernel_for!(q3k_row_dp, np),
        (GgmlType::Q4K, false) => row_kernel_for!(q4k_row, np),
        (GgmlType::Q4K, true) => row_kernel_for!(q4k_row_dp, np),
        (GgmlType::Q5K, false) => row_kernel_for!(q5k_row, np),
        (GgmlType::Q5K, true) => row_kernel_for!(q5k_row_dp, np),
        (GgmlType::Q6K, false) => row_kernel_for!(q6k_row, np),
        (GgmlType::Q6K, true) => row_kernel_for!(q6k_row_dp, np),
        (GgmlType::Q4_0, false) => row_kernel_for!(q4_0_row, np),
        (GgmlType::Q4_0, true) => row_kernel_for!(q4_0_row_dp, np),
        (GgmlType::Q4_1, false) => row_kernel_for!(q4_1_row, np),
        (GgmlType::Q4_1, true) => row_kernel_for!(q4_1_row_dp, np),
        (GgmlType::Q5_0, false) => row_kernel_for!(q5_0_row, np),
        (GgmlType::Q5_0, true) => row_kernel_for!(q5_0_row_dp, np),
        (GgmlType::Q5_1, false) => row_kernel_for!(q5_1_row, np),
        (GgmlType::Q5_1, true) => row_kernel_for!(q5_1_row_dp, np),
        (GgmlType::Q8_0, false) => row_kernel_for!(q8_0_row, np),
        (GgmlType::Q8_0, true) => row_kernel_for!(q8_0_row_dp, np),
        (GgmlType::IQ4NL, false) => row_kernel_for!(iq4_nl_row, np),
        (GgmlType::IQ4NL, true) => row_kernel_for!(iq4_nl_row_dp, np),
        (GgmlType::F32, _) => row_kernel_for!(f32_row, np),
        (GgmlType::F16, _) => row_kernel_for!(f16_row, np),
        (GgmlType::BF16, _) => row_kernel_for!(bf16_row, np),
        (other, _) => panic!("matmul: unsupported weight type {other}"),
    }
}

/// `acc[j] += sum_k a[4j + k] * b[4j + k]` over signed bytes.
/// Only call from code compiled with the `dotprod` feature.
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Lane `j` = `sum_k a[4j + k] * b[4j + k]`: the canonical four-product
/// lanes, by `sdot` or by widening multiplies and two pairwise adds.
#[inline(always)]
unsafe fn dot_lanes<const DP: bool>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DP {
        sdot(vdupq_n_s32(0), a, b)
    } else {
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
        let hi = vpaddlq_s16(vmull_high_s8(a, b));
        vpaddq_s32(lo, hi)
    }
}

/// Four i32 lanes whose total is `sum a[i] * b[i]` (lane layout unspecified:
/// only for exact integer totals). Products must fit i16 in pairs.
#[inline(always)]
unsafe fn dot_total<const DP: bool>(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    if DP {
        sdot(vdupq_n_s32(0), a, b)
    } else {
        vpaddlq_s16(vmlal_high_s8(
            vmull_s8(vget_low_s8(a), vget_low_s8(b)),
            a,
            b,
        ))
    }
}

/// An f16 (little-endian bytes) to f32, exactly.
#[inline(always)]
unsafe fn f16(bytes: [u8; 2]) -> f32 {
    let h = u32::from(u16::from_le_bytes(bytes));
    let r: f32;
    asm!(
        "fmov {t:s}, {h:w}",
        "fcvt {r:s}, {t:h}",
        h = in(reg) h,
        t = out(vreg) _,
        r = lateout(vreg) r,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// Four f16 at `p` to f32, exactly.
#[inline(always)]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    let h = vld1_u16(p.cast());
    let r: float32x4_t;
    asm!(
        "fcvtl {r:v}.4s, {h:v}.4h",
        h = in(vreg) h,
        r = lateout(vreg) r,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// Bytes of `v` where `v & bit != 0` become `set`, others 0.
#[inline(always)]
unsafe fn bit_to(v: uint8x16_t, bit: u8, set: u8) -> uint8x16_t {
    vandq_u8(vtstq_u8(v, vdupq_n_u8(bit)), vdupq_n_u8(set))
}

#[inline(always)]
unsafe fn store16(p: *mut u8, v: uint8x16_t) {
    vst1q_u8(p, v)
}

trait Unpack: ByteBlock {
    const FINISH: Finish;
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors;
}

/// `Unpacked::scales` and `corr` for Q4_K/Q5_K: the 32-weight sub-block
/// scale and min each serve two 16-value sub-blocks.
#[inline(always)]
fn q4k_like_scales(u: &mut Unpacked, scales: &[u8; 12]) {
    let sm = super::kernels::q4k_scales_mins(scales);
    u.set_scales(&std::array::from_fn(|s| i16::from(sm[s / 2])));
    u.corr = std::array::from_fn(|s| i16::from(sm[8 + s / 2]));
}

impl Unpack for BlockQ4K {
    const FINISH: Finish = Finish::Min;
    #[inline(always)]
    unsafe fn unpack(&self, u: &mut Unpacked) -> Factors {
        let m4 = vdupq_n_u8(0x0F);
        for g in 0..4 {
            for c in 0..2 {
                let v = vld1q_u8(self.qs.as_ptr().add(32 * g + 16 * c));
                store16(u.q.as_mut_ptr().add(64 * g + 16 * c), vandq_u8(v, m4));
                store16(
                    u.q.as_mut_ptr().add(64 * g + 32 + 16 * c),
                    vshrq_n_u8::<4>(v),
                );
            }
        }
        q4k_like_scales(u, &self.scales);
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
        let m4 = vdupq_n_u8(0x0F);
        let qh = [
            vld1q_u8(self.qh.as_ptr()),
            vld1q_u8(self.qh.as_ptr().add(16)),
        ];
        for g in 0..4 {
            for (c, &qh) in qh.iter().enumerate() {
                let v = vld1q_u8(self.qs.as_ptr().add(32 * g + 16 * c));
                let lo = vorrq_u8(vandq_u8(v, m4), bit_to(qh, 1 << (2 * g), 16));
                let hi = vorrq_u8(vshrq_n_u8::<4>(v), bit_to(qh, 1 << (2 * g + 1), 16));
                store16(u.q.as_mut_ptr().add(64 * g + 16 * c), lo);
                store16(u.q.as_mut_ptr().add(64 * g + 32 + 16 * c), hi);
            }
        }
        q4k_like_scales(u, &self.scales);
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
        let m4 = vdupq_n_u8(0x0F);
        let m2 = vdupq_n_u8(0x03);
        for h in 0..2 {
            for c in 0..2 {
                let ql0 = vld1q_u8(self.ql.as_ptr().add(64 * h + 16 * c));
                let ql1 = vld1q_u8(self.ql.as_ptr().add(64 * h + 32 + 16 * c));
                let qh = vld1q_u8(self.qh.as_ptr().add(32 * h + 16 * c));
                let quarters = [
                    vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m2))),
                    vorrq_u8(
                        vandq_u8(ql1, m4),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), m2)),
                    ),
                    vorrq_u8(
                        vshrq_n_u8::<4>(ql0),
                        vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), m2)),
                    ),
                    vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                ];
                for (k, q) in quarters.into_iter().enumerate() {
                    store16(u.q.as_mut_ptr().add(128 * h + 32 * k + 16 * c), q);
                }
            }
        }
        let sc: [i16; 16] = std::array::from_fn(|s| i16::from(self.scales[s] as i8));
        u.set_scales(&sc);
        u.corr = sc.map(|s| 32 * s);
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
        let m3 = vdupq_n_u8(0x03);
        let hm = [
            vld1q_u8(self.hmask.as_ptr()),
            vld1q_u8(self.hmask.as_ptr().add(16)),
        ];
        for h in 0..2 {
            for (c, &hm) in hm.iter().enumerate() {
                let qs = vld1q_u8(self.qs.as_ptr().add(32 * h + 16 * c));
                let low = [
                    qs,
                    vshrq_n_u8::<2>(qs),
                    vshrq_n_u8::<4>(qs),
                    vshrq_n_u8::<6>(qs),
                ];
                for (k, low) in low.into_iter().enumerate() {
                    let q = vorrq_u8(vandq_u8(low, m3), bit_to(hm, 1 << (4 * h + k), 4));
                    store16(u.q.as_mut_ptr().add(128 * h + 32 * k + 16 * c), q);
                }
            }
        }
        let biased = super::kernels::q3k_scales(&self.scales);
        let sc: [i16; 16] = biased.map(|s| i16::from(s) - 32);
        u.set_scales(&sc);
        u.corr = sc.map(|s| 4 * s);
        Factors {
            d: f16(self.d),
            dmin: 0.0,
        }
    }
}

/// `(main, corr)` of an unpacked block against one Q8_K block.
#[inline(always)]
unsafe fn dot_unpacked<const DP: bool>(u: &Unpacked, y: &BlockQ8K) -> (i32, i32) {
    let mut acc = vdupq_n_s32(0);
    for s in 0..16 {
        let q = vreinterpretq_s8_u8(vld1q_u8(u.q.as_ptr().add(16 * s)));
        let x = vld1q_s8(y.qs.as_ptr().add(16 * s));
        acc = vmlaq_n_s32(
            acc,
            dot_total::<DP>(q, x),
            i32::from(u.scales[s / 2][8 * (s % 2)]),
        );
    }
    let (c0, c1) = (
        vld1q_s16(u.corr.as_ptr()),
        vld1q_s16(u.corr.as_ptr().add(8)),
    );
    let (b0, b1) = (
        vld1q_s16(y.bsums.as_ptr()),
        vld1q_s16(y.bsums.as_ptr().add(8)),
    );
    let corr = vmull_s16(vget_low_s16(c0), vget_low_s16(b0));
    let corr = vmlal_high_s16(corr, c0, b0);
    let corr = vmlal_s16(corr, vget_low_s16(c1), vget_low_s16(b1));
    let corr = vmlal_high_s16(corr, c1, b1);
    (vaddvq_s32(acc), vaddvq_s32(corr))
}

#[inline(always)]
unsafe fn kquant_row<B: Unpack, const DP: bool, const N: usize>(
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
            let (main, corr) = dot_unpacked::<DP>(&u, y);
            *a = accumulate(B::FINISH, *a, f, y.d, main, corr);
        }
    }
    out[..N].copy_from_slice(&acc);
}

macro_rules! kquant_rows {
    ($($name:ident, $name_dp:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`].
        #[target_feature(enable = "neon")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            kquant_row::<$block, false, N>(row, acts, p0, out)
        }

        /// # Safety
        /// See [`RowKernel`]; needs the dot-product extension.
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $name_dp<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            kquant_row::<$block, true, N>(row, acts, p0, out)
        }
    )*};
}

kquant_rows! {
    q3k_row, q3k_row_dp: BlockQ3K;
    q4k_row, q4k_row_dp: BlockQ4K;
    q5k_row, q5k_row_dp: BlockQ5K;
    q6k_row, q6k_row_dp: BlockQ6K;
}

/// The fixed eight-lane reduction of [`super::kernels::reduce8`], lanes 0-3
/// in `lo` and 4-7 in `hi`.
#[inline(always)]
unsafe fn reduce8(lo: float32x4_t, hi: float32x4_t) -> f32 {
    let s = vaddq_f32(lo, hi);
    let w = vadd_f32(vget_low_f32(s), vget_high_f32(s));
    vget_lane_f32::<0>(w) + vget_lane_f32::<1>(w)
}

/// A 32-weight block as [`super::scalar::Unpack32`] gives it: the quants
/// as signed bytes in weight order (weights 0..16, then 16..32), the
/// scale, the minimum (0 without).
trait Unpack32: ByteBlock {
    const MIN: bool;
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32);
}

/// The sixteen quant bytes of the 4- and 5-bit formats as nibbles in
/// weight order: the low nibbles (weights 0..16), then the high ones.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(qs.as_ptr());
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Q5_0/Q5_1: for weights 0..16 and 16..32, byte `i` is 16 if bit `i` of
/// the little-endian `qh` is set, else 0: each byte gets the `qh` byte
/// holding its bit, then tests it.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = vld1q_u8(BITS.as_ptr());
    let lo = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    let hi = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    let sixteen = vdupq_n_u8(16);
    (
        vandq_u8(vtstq_u8(lo, bits), sixteen),
        vandq_u8(vtstq_u8(hi, bits), sixteen),
    )
}

impl Unpack32 for BlockQ8_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32) {
        let p = self.qs.as_ptr().cast::<i8>();
        (vld1q_s8(p), vld1q_s8(p.add(16)), f16(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ4_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(&self.qs);
        let eight = vdupq_n_s8(8);
        let lo = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
        let hi = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
        (lo, hi, f16(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ4_1 {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(&self.qs);
        (
            vreinterpretq_s8_u8(lo),
            vreinterpretq_s8_u8(hi),
            f16(self.d),
            f16(self.m),
        )
    }
}

impl Unpack32 for BlockQ5_0 {
    const MIN: bool = false;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(&self.qs);
        let (blo, bhi) = fifth_bits(self.qh);
        let sixteen = vdupq_n_s8(16);
        let lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, blo)), sixteen);
        let hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(hi, bhi)), sixteen);
        (lo, hi, f16(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ5_1 {
    const MIN: bool = true;
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32) {
        let (lo, hi) = nibbles(&self.qs);
        let (blo, bhi) = fifth_bits(self.qh);
        (
            vreinterpretq_s8_u8(vorrq_u8(lo, blo)),
            vreinterpretq_s8_u8(vorrq_u8(hi, bhi)),
            f16(self.d),
            f16(self.m),
        )
    }
}

impl Unpack32 for BlockIQ4NL {
    const MIN: bool = false;
    /// The table lookup is one `tbl` per half: indices are below 16.
    #[inline(always)]
    unsafe fn unpack(&self) -> (int8x16_t, int8x16_t, f32, f32) {
        let table = vld1q_s8(LEVELS.as_ptr());
        let (lo, hi) = nibbles(&self.qs);
        (
            vqtbl1q_s8(table, lo),
            vqtbl1q_s8(table, hi),
            f16(self.d),
            0.0,
        )
    }
}

/// See the scalar twin: eight lanes of four-product sums per 32-block,
/// plus the minimum term.
#[inline(always)]
unsafe fn block32_row<B: Unpack32, const DP: bool, const N: usize>(
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
    let mut acc = [(vdupq_n_f32(0.0), vdupq_n_f32(0.0)); N];
    let mut mins = [0.0f32; N];
    for (i, b) in blocks.iter().enumerate() {
        let (w0, w1, d, m) = b.unpack();
        for ((a, min), y) in acc.iter_mut().zip(&mut mins).zip(&ys) {
            let y = y.get_unchecked(i);
            let y0 = vld1q_s8(y.qs.as_ptr());
            let y1 = vld1q_s8(y.qs.as_ptr().add(16));
            let t0 = dot_lanes::<DP>(w0, y0);
            let t1 = dot_lanes::<DP>(w1, y1);
            let dd = vdupq_n_f32(d * y.d);
            a.0 = vfmaq_f32(a.0, vcvtq_f32_s32(t0), dd);
            a.1 = vfmaq_f32(a.1, vcvtq_f32_s32(t1), dd);
            if B::MIN {
                // Sixteen bytes of at most 127 in magnitude fit the i16 sum.
                let ysum = i32::from(vaddlvq_s8(y0)) + i32::from(vaddlvq_s8(y1));
                *min = accumulate_min(*min, m, y.d, ysum);
            }
        }
    }
    for ((o, (lo, hi)), min) in out.iter_mut().zip(acc).zip(mins) {
        *o = if B::MIN {
            reduce8(lo, hi) + min
        } else {
            reduce8(lo, hi)
        };
    }
}

macro_rules! block32_rows {
    ($($name:ident, $name_dp:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`].
        #[target_feature(enable = "neon")]
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            block32_row::<$block, false, N>(row, acts, p0, out)
        }

        /// # Safety
        /// See [`RowKernel`]; needs the dot-product extension.
        #[target_feature(enable = "neon,dotprod")]
        unsafe fn $name_dp<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            block32_row::<$block, true, N>(row, acts, p0, out)
        }
    )*};
}

block32_rows! {
    q4_0_row, q4_0_row_dp: BlockQ4_0;
    q4_1_row, q4_1_row_dp: BlockQ4_1;
    q5_0_row, q5_0_row_dp: BlockQ5_0;
    q5_1_row, q5_1_row_dp: BlockQ5_1;
    q8_0_row, q8_0_row_dp: BlockQ8_0;
    iq4_nl_row, iq4_nl_row_dp: BlockIQ4NL;
}

/// Float weights: four at a time as f32, plus the scalar value of one.
trait FloatWeights {
    const BYTES: usize;
    unsafe fn load4(p: *const u8) -> float32x4_t;
    unsafe fn load1(p: *const u8) -> f32;
}

struct F32W;
struct F16W;
struct Bf16W;

impl FloatWeights for F32W {
    const BYTES: usize = 4;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        vld1q_f32(p.cast())
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        p.cast::<f32>().read_unaligned()
    }
}

impl FloatWeights for F16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        f16x4(p)
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f16([*p, *p.add(1)])
    }
}

impl FloatWeights for Bf16W {
    const BYTES: usize = 2;
    #[inline(always)]
    unsafe fn load4(p: *const u8) -> float32x4_t {
        vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p.cast())))
    }
    #[inline(always)]
    unsafe fn load1(p: *const u8) -> f32 {
        f32::from_bits(u32::from(u16::from_le_bytes([*p, *p.add(1)])) << 16)
    }
}

/// `sum w[i] * x[i]` in the fixed 32-lane layout of
/// [`super::kernels::reduce32`]: eight accumulators of four.
#[inline(always)]
unsafe fn float_dot<W: FloatWeights>(w: *const u8, x: &[f32]) -> f32 {
    let full = x.len() / 32 * 32;
    let mut a = [vdupq_n_f32(0.0); 8];
    for c in (0..full).step_by(32) {
        for (j, a) in a.iter_mut().enumerate() {
            let wv = W::load4(w.add((c + 4 * j) * W::BYTES));
            *a = vfmaq_f32(*a, wv, vld1q_f32(x.as_ptr().add(c + 4 * j)));
        }
    }
    // Lanes i, i + 8, i + 16, i + 24 sit in a[j], a[j + 2], a[j + 4],
    // a[j + 6] for j = i / 4.
    let lo = vaddq_f32(vaddq_f32(a[0], a[4]), vaddq_f32(a[2], a[6]));
    let hi = vaddq_f32(vaddq_f32(a[1], a[5]), vaddq_f32(a[3], a[7]));
    let mut r = reduce8(lo, hi);
    for (i, &xi) in x.iter().enumerate().skip(full) {
        r = W::load1(w.add(i * W::BYTES)).mul_add(xi, r);
    }
    r
}

/// # Safety
/// `a.len() == b.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    float_dot::<F32W>(a.as_ptr().cast(), b)
}

/// `y[i] += a * x[i]` (multiply, then add: no fusing, like the scalar twin).
///
/// # Safety
/// `y.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let full = x.len() / 4 * 4;
    for i in (0..full).step_by(4) {
        let p = y.as_mut_ptr().add(i);
        vst1q_f32(
            p,
            vaddq_f32(vld1q_f32(p), vmulq_n_f32(vld1q_f32(x.as_ptr().add(i)), a)),
        );
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
        /// See [`RowKernel`].
        #[target_feature(enable = "neon")]
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

/// Largest |x| of `n` floats at `p` (a multiple of 4).
#[inline(always)]
unsafe fn abs_max(p: *const f32, n: usize) -> f32 {
    let mut m = vdupq_n_f32(0.0);
    for i in (0..n).step_by(4) {
        m = vmaxq_f32(m, vabsq_f32(vld1q_f32(p.add(i))));
    }
    vmaxvq_f32(m)
}

/// 16 floats at `p` times `iscale`, rounded to nearest-even and clamped to
/// -127..=127, in order.
#[inline(always)]
unsafe fn quantize16(p: *const f32, iscale: f32) -> int8x16_t {
    let q = |k: usize| vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p.add(4 * k)), iscale)));
    let a = vcombine_s16(q(0), q(1));
    let b = vcombine_s16(q(2), q(3));
    vmaxq_s8(vcombine_s8(vqmovn_s16(a), vqmovn_s16(b)), vdupq_n_s8(-127))
}

/// # Safety
/// `x.len() == 256 * out.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xs, b) in x.chunks_exact(256).zip(out) {
        let p = xs.as_ptr();
        let Some(iscale) = inverse_scale(abs_max(p, 256)) else {
            *b = BlockQ8K::ZERO;
            continue;
        };
        for c in 0..16 {
            vst1q_s8(
                b.qs.as_mut_ptr().add(16 * c),
                quantize16(p.add(16 * c), iscale),
            );
        }
        b.bsums = block_sums(&b.qs);
        b.d = 1.0 / iscale;
    }
}

/// # Safety
/// `x.len() == 32 * out.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_q8_32(x: &[f32], out: &mut [BlockQ8_32]) {
    for (xs, b) in x.chunks_exact(32).zip(out) {
        let p = xs.as_ptr();
        let amax = abs_max(p, 32);
        let Some(iscale) = inverse_scale(amax) else {
            *b = BlockQ8_32::ZERO;
            continue;
        };
        vst1q_s8(b.qs.as_mut_ptr(), quantize16(p, iscale));
        vst1q_s8(b.qs.as_mut_ptr().add(16), quantize16(p.add(16), iscale));
        b.d = block_scale(amax);
    }
}

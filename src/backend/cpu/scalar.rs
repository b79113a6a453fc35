//! Scalar twins of the SIMD kernels: the same unpacking, the same integer
//! sums and the same float steps (see [`super::kernels`]), in plain Rust.
//! They are the fallback on CPUs without AVX2 or NEON and the reference the
//! SIMD kernels are tested against, bit for bit.

use super::kernels::{
    accumulate, accumulate_min, reduce32, reduce8, row_kernel_for, Acts, Factors, Finish,
    RowKernel, Unpacked, MAX_POSITIONS,
};
use crate::quant::iq4_nl::{self, BlockIQ4NL};
use crate::quant::q3_k::BlockQ3K;
use crate::quant::q4_0::{self, BlockQ4_0};
use crate::quant::q4_1::{self, BlockQ4_1};
use crate::quant::q4_k::BlockQ4K;
use crate::quant::q5_0::{self, BlockQ5_0};
use crate::quant::q5_1::{self, BlockQ5_1};
use crate::quant::q5_k::BlockQ5K;
use crate::quant::q6_k::BlockQ6K;
use crate::quant::q8_0::BlockQ8_0;
use crate::quant::q8_32::BlockQ8_32;
use crate::quant::q8_k::BlockQ8K;
use crate::quant::{as_blocks, f16_to_f32, ByteBlock, GgmlType};

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

pub(crate) fn unpack_q4k(b: &BlockQ4K, u: &mut Unpacked) -> Factors {
    let sm = super::kernels::q4k_scales_mins(&b.scales);
    for (g, qs) in b.qs.chunks_exact(32).enumerate() {
        for (l, &v) in qs.iter().enumerate() {
            u.q[64 * g + l] = v & 0x0F;
            u.q[64 * g + 32 + l] = v >> 4;
        }
    }
    u.set_scales(&std::array::from_fn(|s| i16::from(sm[s / 2])));
    u.corr = std::array::from_fn(|s| i16::from(sm[8 + s / 2]));
    Factors {
        d: f16_to_f32(b.d),
        dmin: f16_to_f32(b.dmin),
    }
}

pub(crate) fn unpack_q5k(b: &BlockQ5K, u: &mut Unpacked) -> Factors {
    let sm = super::kernels::q4k_scales_mins(&b.scales);
    for (g, qs) in b.qs.chunks_exact(32).enumerate() {
        for (l, (&v, &h)) in qs.iter().zip(&b.qh).enumerate() {
            u.q[64 * g + l] = (v & 0x0F) | (((h >> (2 * g)) & 1) << 4);
            u.q[64 * g + 32 + l] = (v >> 4) | (((h >> (2 * g + 1)) & 1) << 4);
        }
    }
    u.set_scales(&std::array::from_fn(|s| i16::from(sm[s / 2])));
    u.corr = std::array::from_fn(|s| i16::from(sm[8 + s / 2]));
    Factors {
        d: f16_to_f32(b.d),
        dmin: f16_to_f32(b.dmin),
    }
}

/// Quants stored as `q + 32` (0..=63); `corr` = 32 * scale removes the bias.
pub(crate) fn unpack_q6k(b: &BlockQ6K, u: &mut Unpacked) -> Factors {
    for h in 0..2 {
        let (ql, qh) = (&b.ql[64 * h..64 * h + 64], &b.qh[32 * h..32 * h + 32]);
        let q = &mut u.q[128 * h..128 * h + 128];
        for l in 0..32 {
            q[l] = (ql[l] & 0x0F) | ((qh[l] & 0x03) << 4);
            q[32 + l] = (ql[32 + l] & 0x0F) | (((qh[l] >> 2) & 0x03) << 4);
            q[64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 0x03) << 4);
            q[96 + l] = (ql[32 + l] >> 4) | (((qh[l] >> 6) & 0x03) << 4);
        }
    }
    let sc: [i16; 16] = std::array::from_fn(|s| i16::from(b.scales[s] as i8));
    u.set_scales(&sc);
    u.corr = sc.map(|s| 32 * s);
    Factors {
        d: f16_to_f32(b.d),
        dmin: 0.0,
    }
}

/// Quants stored as `q + 4` (0..=7: the two low bits plus 4 when the high
/// bit is set); `corr` = 4 * scale removes the bias.
pub(crate) fn unpack_q3k(b: &BlockQ3K, u: &mut Unpacked) -> Factors {
    for h in 0..2 {
        let qs = &b.qs[32 * h..32 * h + 32];
        for k in 0..4 {
            let out = &mut u.q[128 * h + 32 * k..128 * h + 32 * k + 32];
            for ((o, &q), &m) in out.iter_mut().zip(qs).zip(&b.hmask) {
                let low = (q >> (2 * k)) & 0x03;
                let high = (m >> (4 * h + k)) & 1;
                *o = low | (high << 2);
            }
        }
    }
    let biased = super::kernels::q3k_scales(&b.scales);
    let sc: [i16; 16] = biased.map(|s| i16::from(s) - 32);
    u.set_scales(&sc);
    u.corr = sc.map(|s| 4 * s);
    Factors {
        d: f16_to_f32(b.d),
        dmin: 0.0,
    }
}

/// `(main, corr)` of an unpacked block against one Q8_K block.
pub(crate) fn dot_unpacked(u: &Unpacked, y: &BlockQ8K) -> (i32, i32) {
    let mut main = 0i32;
    for s in 0..16 {
        let sum: i32 = u.q[16 * s..16 * s + 16]
            .iter()
            .zip(&y.qs[16 * s..16 * s + 16])
            .map(|(&q, &v)| i32::from(q) * i32::from(v))
            .sum();
        main += i32::from(u.scales[s / 2][8 * (s % 2)]) * sum;
    }
    let corr = u
        .corr
        .iter()
        .zip(&y.bsums)
        .map(|(&c, &b)| i32::from(c) * i32::from(b))
        .sum();
    (main, corr)
}

/// One K-quant row against `N` positions: each weight block is unpacked
/// once and dotted with the matching Q8_K block of every position.
#[inline(always)]
fn kquant_row<B, const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
    unpack: fn(&B, &mut Unpacked) -> Factors,
    fin: Finish,
) where
    B: crate::quant::ByteBlock,
{
    let blocks: &[B] = as_blocks(row);
    let Acts::Q8K {
        blocks: ys,
        per_pos,
    } = acts
    else {
        unreachable!("K-quant kernel given non-Q8_K activations")
    };
    assert_eq!(per_pos, blocks.len(), "K-quant row length");
    let ys: [&[BlockQ8K]; N] =
        std::array::from_fn(|i| &ys[(p0 + i) * per_pos..(p0 + i + 1) * per_pos]);
    let mut u = Unpacked::ZERO;
    let mut acc = [0.0f32; N];
    for (i, b) in blocks.iter().enumerate() {
        let f = unpack(b, &mut u);
        for (a, y) in acc.iter_mut().zip(&ys) {
            let (main, corr) = dot_unpacked(&u, &y[i]);
            *a = accumulate(fin, *a, f, y[i].d, main, corr);
        }
    }
    out[..N].copy_from_slice(&acc);
}

macro_rules! kquant_rows {
    ($($name:ident: $block:ty, $unpack:ident, $fin:expr;)*) => {$(
        /// # Safety
        /// See [`RowKernel`] (nothing beyond it for scalar code).
        unsafe fn $name<const N: usize>(row: &[u8], acts: Acts<'_>, p0: usize, out: &mut [f32; MAX_POSITIONS]) {
            kquant_row::<$block, N>(row, acts, p0, out, $unpack, $fin)
        }
    )*};
}

kquant_rows! {
    q3k_row: BlockQ3K, unpack_q3k, Finish::Offset;
    q4k_row: BlockQ4K, unpack_q4k, Finish::Min;
    q5k_row: BlockQ5K, unpack_q5k, Finish::Min;
    q6k_row: BlockQ6K, unpack_q6k, Finish::Offset;
}

/// A 32-weight block in the canonical form of [`block32_row`]: its quants
/// as signed bytes in weight order (biases such as Q4_0's 8 already
/// removed, IQ4_NL's indices already looked up), its scale `d`, and for
/// formats with a minimum (`MIN`) the minimum `m`, else 0.
pub(crate) trait Unpack32: ByteBlock {
    /// Whether weights are `q * d + m` rather than `q * d`.
    const MIN: bool;
    fn unpack(&self) -> ([i8; 32], f32, f32);
}

impl Unpack32 for BlockQ8_0 {
    const MIN: bool = false;
    fn unpack(&self) -> ([i8; 32], f32, f32) {
        (self.qs.map(|q| q as i8), f16_to_f32(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ4_0 {
    const MIN: bool = false;
    fn unpack(&self) -> ([i8; 32], f32, f32) {
        (q4_0::quants(self), f16_to_f32(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ4_1 {
    const MIN: bool = true;
    fn unpack(&self) -> ([i8; 32], f32, f32) {
        (q4_1::quants(self), f16_to_f32(self.d), f16_to_f32(self.m))
    }
}

impl Unpack32 for BlockQ5_0 {
    const MIN: bool = false;
    fn unpack(&self) -> ([i8; 32], f32, f32) {
        (q5_0::quants(self), f16_to_f32(self.d), 0.0)
    }
}

impl Unpack32 for BlockQ5_1 {
    const MIN: bool = true;
    fn unpack(&self) -> ([i8; 32], f32, f32) {
        (q5_1::quants(self), f16_to_f32(self.d), f16_to_f32(self.m))
    }
}

impl Unpack32 for BlockIQ4NL {
    const MIN: bool = false;
    fn unpack(&self) -> ([i8; 32], f32, f32) {
        (iq4_nl::quants(self), f16_to_f32(self.d), 0.0)
    }
}

/// 32-weight blocks against Q8_32 activations: per block and position,
/// eight lanes of four-product integer sums, each added to its float lane
/// as `fma(d * dy, sum, lane)`; the lanes are reduced by [`reduce8`].
/// Formats with a minimum add `m * dy * sum(y)` per block into one more
/// float, see [`accumulate_min`].
#[inline(always)]
fn block32_row<B: Unpack32, const N: usize>(
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
    assert_eq!(per_pos, blocks.len(), "32-block row length");
    let ys: [&[BlockQ8_32]; N] =
        std::array::from_fn(|i| &ys[(p0 + i) * per_pos..(p0 + i + 1) * per_pos]);
    let mut lanes = [[0.0f32; 8]; N];
    let mut mins = [0.0f32; N];
    for (i, b) in blocks.iter().enumerate() {
        let (q, d, m) = b.unpack();
        for ((lanes, min), y) in lanes.iter_mut().zip(&mut mins).zip(&ys) {
            let y = &y[i];
            let dd = d * y.d;
            for (l, lane) in lanes.iter_mut().enumerate() {
                let sum: i32 = (4 * l..4 * l + 4)
                    .map(|k| i32::from(q[k]) * i32::from(y.qs[k]))
                    .sum();
                *lane = dd.mul_add(sum as f32, *lane);
            }
            if B::MIN {
                let ysum = y.qs.iter().map(|&v| i32::from(v)).sum();
                *min = accumulate_min(*min, m, y.d, ysum);
            }
        }
    }
    for ((o, lanes), min) in out.iter_mut().zip(lanes).zip(mins) {
        *o = if B::MIN {
            reduce8(lanes) + min
        } else {
            reduce8(lanes)
        };
    }
}

macro_rules! block32_rows {
    ($($name:ident: $block:ty;)*) => {$(
        /// # Safety
        /// See [`RowKernel`] (nothing beyond it for scalar code).
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

/// `sum w[i] * x[i]` in the fixed 32-lane layout, `w(i)` giving weight `i`:
/// lane `i % 32` accumulates with fused multiply-adds, the lanes reduce by
/// [`reduce32`], and a tail shorter than 32 is added in order.
#[inline(always)]
fn float_dot(w: impl Fn(usize) -> f32, x: &[f32]) -> f32 {
    let full = x.len() / 32 * 32;
    let mut lanes = [0.0f32; 32];
    for c in (0..full).step_by(32) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = w(c + i).mul_add(x[c + i], *lane);
        }
    }
    let mut r = reduce32(lanes);
    for (i, &xi) in x.iter().enumerate().skip(full) {
        r = w(i).mul_add(xi, r);
    }
    r
}

pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    float_dot(|i| a[i], b)
}

pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[inline(always)]
fn float_row<const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
    w: impl Fn(&[u8], usize) -> f32,
) {
    let Acts::F32 { x, cols } = acts else {
        unreachable!("float kernel given quantized activations")
    };
    for (p, o) in out[..N].iter_mut().enumerate() {
        *o = float_dot(|i| w(row, i), &x[(p0 + p) * cols..(p0 + p + 1) * cols]);
    }
}

unsafe fn f32_row<const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    float_row::<N>(row, acts, p0, out, |r, i| {
        f32::from_le_bytes([r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]])
    })
}

unsafe fn f16_row<const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    float_row::<N>(row, acts, p0, out, |r, i| {
        f16_to_f32([r[2 * i], r[2 * i + 1]])
    })
}

unsafe fn bf16_row<const N: usize>(
    row: &[u8],
    acts: Acts<'_>,
    p0: usize,
    out: &mut [f32; MAX_POSITIONS],
) {
    float_row::<N>(row, acts, p0, out, |r, i| {
        half::bf16::from_le_bytes([r[2 * i], r[2 * i + 1]]).to_f32()
    })
}

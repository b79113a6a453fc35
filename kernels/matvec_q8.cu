// Decode mat-vec on 8-bit activations: y = x W^T for 1..8 activation rows,
// the activations first quantized (quantize_q8_32 for the 32-weight
// formats, quantize_q8_k for the K-quants) to exactly the CPU's values,
// then every weight block dotted with them in integers (__dp4a). Decode is
// bound by the bandwidth of reading the weights once per step; integer
// products keep the arithmetic per weight byte small enough not to get in
// its way, and match the CPU backend's integer sums.
//
//   w: rows x cols weights, row r at w + r * row_bytes
//   xq, xd, xs: the quantized activations (layout in dot_q8.cuh)
//   y: (NC, rows) f32 outputs, y[c * rows + r]
#include "dot_q8.cuh"

// Thread layout of both quantizers: block (32, FLEA_QUANTIZE_WARPS); warp
// w of the grid takes values 256w .. 256w + 256 of x (every row one after
// the other: blocks never straddle rows, as cols is a multiple of the
// block), lane l the eight values 256w + 8l .. + 8. GROUP lanes share one
// activation block (4 for 32 values, 32 for 256), so the block's largest
// magnitude is a reduction over the group. Rounding as
// src/quant/q8_k.rs `round_quant`: nearest, ties to even (rintf), clamped
// to -127..127; the multiplier is q8_k's `inverse_scale`, 127 / amax.
template <int GROUP>
__device__ __forceinline__ void quantize_q8_impl(const float* __restrict__ x, int* __restrict__ xq,
                                                 float* __restrict__ xd, int* __restrict__ xs, int n_values) {
    const int lane = threadIdx.x;
    const size_t warp = (size_t)blockIdx.x * blockDim.y + threadIdx.y;
    const size_t first = warp * 256;
    if (first >= (size_t)n_values) return;  // the whole warp leaves together
    const size_t i = first + 8 * lane;
    // n_values is a multiple of 32, so a group is wholly inside or outside.
    const bool inside = i < (size_t)n_values;
    float v[8];
    if (inside) {
        const float4 a = reinterpret_cast<const float4*>(x + i)[0];
        const float4 b = reinterpret_cast<const float4*>(x + i)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else {
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = 0.0f;
    }
    float amax = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; e++) amax = fmaxf(amax, fabsf(v[e]));
#pragma unroll
    for (int o = GROUP / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FLEA_FULL_MASK, amax, o));
    const float iscale = amax > 0.0f ? 127.0f / amax : 0.0f;
    uint32_t packed[2] = {0, 0};
    int sum = 0;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        const int q = amax > 0.0f ? (int)fminf(fmaxf(rintf(v[e] * iscale), -127.0f), 127.0f) : 0;
        packed[e / 4] |= (uint32_t)(q & 0xFF) << (8 * (e % 4));
        sum += q;
    }
    // Q8_K: the sums of 16 quants, lanes 2s and 2s + 1.
    sum += __shfl_xor_sync(FLEA_FULL_MASK, sum, 1);
    if (!inside) return;
    const uint2 out = {packed[0], packed[1]};
    reinterpret_cast<uint2*>(xq + i / 4)[0] = out;
    if (GROUP == 32) {
        if (lane % 2 == 0) xs[i / 16] = sum;
        if (lane == 0) xd[i / 256] = amax > 0.0f ? 1.0f / iscale : 0.0f;
    } else if (lane % GROUP == 0) {
        // Q8_32: amax / 127 rounded to f16 precision (src/quant/q8_32.rs).
        xd[i / 32] = amax > 0.0f ? __half2float(__float2half_rn(amax / 127.0f)) : 0.0f;
    }
}

// x: n_values floats (rows of a multiple of 32) -> Q8_32 quants and scales.
extern "C" __global__ void __launch_bounds__(32 * FLEA_QUANTIZE_WARPS)
    quantize_q8_32(const float* x, int* xq, float* xd, int n_values) {
    quantize_q8_impl<4>(x, xq, xd, nullptr, n_values);
}

// x: n_values floats (rows of a multiple of 256) -> Q8_K quants, scales and
// 16-value sums.
extern "C" __global__ void __launch_bounds__(32 * FLEA_QUANTIZE_WARPS)
    quantize_q8_k(const float* x, int* xq, float* xd, int* xs, int n_values) {
    quantize_q8_impl<32>(x, xq, xd, xs, n_values);
}

// Thread layout: block (32, FLEA_MATVEC_ROWS_PER_BLOCK); grid.x =
// ceil(rows / FLEA_MATVEC_ROWS_PER_BLOCK), as matvec.cu. Warp threadIdx.y
// owns one weight row; its lanes go along the row in groups of D::LANES
// per weight block (2 for 32-weight blocks, 8 for 256-weight ones), so one
// step of the warp reads 16 or 4 consecutive blocks, every lane its own
// aligned words of them. Each lane keeps NC running sums; a warp shuffle
// adds the lanes' sums and lane 0 writes the NC outputs of its row.
template <typename D, int NC>
__device__ __forceinline__ void matvec_q8_impl(const uint8_t* __restrict__ w, unsigned long long row_bytes, int rows,
                                               int cols, const int* __restrict__ xq, const float* __restrict__ xd,
                                               const int* __restrict__ xs, float* __restrict__ y) {
    const int r = blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= rows) return;  // the whole warp leaves together
    const int lane = threadIdx.x;
    const uint8_t* row = w + (size_t)r * row_bytes;
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    const int blocks = cols / D::QK;
    const int part = lane % D::LANES;
    for (int b = lane / D::LANES; b < blocks; b += FLEA_WARP / D::LANES) {
        D::template dot<NC>(row + (size_t)b * D::BYTES, part, b, cols, xq, xd, xs, acc);
    }
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const float s = warp_sum(acc[c]);
        if (lane == 0) y[(size_t)c * rows + r] = s;
    }
}

#define FLEA_MATVEC_Q8(suffix, Dot, NC)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * FLEA_MATVEC_ROWS_PER_BLOCK)                       \
        matvec_q8_##suffix##_##NC(const uint8_t* w, unsigned long long row_bytes, int rows, int cols,   \
                                  const int* xq, const float* xd, const int* xs, float* y) {            \
        matvec_q8_impl<Dot, NC>(w, row_bytes, rows, cols, xq, xd, xs, y);                               \
    }

#define FLEA_MATVEC_Q8_ALL_NC(suffix, Dot) \
    FLEA_MATVEC_Q8(suffix, Dot, 1)         \
    FLEA_MATVEC_Q8(suffix, Dot, 2)         \
    FLEA_MATVEC_Q8(suffix, Dot, 3)         \
    FLEA_MATVEC_Q8(suffix, Dot, 4)         \
    FLEA_MATVEC_Q8(suffix, Dot, 5)         \
    FLEA_MATVEC_Q8(suffix, Dot, 6)         \
    FLEA_MATVEC_Q8(suffix, Dot, 7)         \
    FLEA_MATVEC_Q8(suffix, Dot, 8)

FLEA_FOR_EACH_Q8_FORMAT(FLEA_MATVEC_Q8_ALL_NC)

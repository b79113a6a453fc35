// Fused dequantize + matrix-vector products for decode: y = x W^T for 1..8
// activation rows at once (one decode step of up to 8 sequences), so each
// weight byte is read from memory once per step.
//
//   w: rows x cols weights in format F, row r at w + r * row_bytes
//   x: (NC, cols) f32 activations
//   y: (NC, rows) f32 outputs, y[c * rows + r]
#include "dequant.cuh"

// Rows handled by one block of matvec (one warp each).

// Thread layout: block (32, FLEA_MATVEC_ROWS_PER_BLOCK); grid.x = ceil(rows /
// FLEA_MATVEC_ROWS_PER_BLOCK). Warp threadIdx.y owns row blockIdx.x * 4 +
// threadIdx.y; lane l dequantizes weights 256t + 8l .. +8 for t = 0, 1, ...
// (so a warp reads 256 consecutive weights per step) and multiplies them
// into NC running sums, one per activation row; a warp shuffle reduces the
// lanes' sums and lane 0 writes the NC outputs of its row.
template <typename F, int NC>
__device__ __forceinline__ void matvec_impl(const uint8_t* __restrict__ w,
                                            unsigned long long row_bytes, int rows, int cols,
                                            const float* __restrict__ x, float* __restrict__ y) {
    const int r = blockIdx.x * blockDim.y + threadIdx.y;
    if (r >= rows) return;  // the whole warp leaves together
    const int lane = threadIdx.x;
    const uint8_t* row = w + (size_t)r * row_bytes;
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;

    for (int i = lane * 8; i < cols; i += 256) {
        float wv[8];
        F::load8(row, i, cols, wv);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float* xc = x + (size_t)c * cols + i;
            if (F::WHOLE) {
                // cols is a multiple of 32 and buffers start 256-byte
                // aligned, so xc is 32-byte aligned.
                const float4 a = reinterpret_cast<const float4*>(xc)[0];
                const float4 b = reinterpret_cast<const float4*>(xc)[1];
                acc[c] += wv[0] * a.x + wv[1] * a.y + wv[2] * a.z + wv[3] * a.w +
                          wv[4] * b.x + wv[5] * b.y + wv[6] * b.z + wv[7] * b.w;
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    if (i + e < cols) acc[c] += wv[e] * xc[e];
                }
            }
        }
    }
#pragma unroll
    for (int c = 0; c < NC; c++) {
        const float s = warp_sum(acc[c]);
        if (lane == 0) y[(size_t)c * rows + r] = s;
    }
}

#define FLEA_MATVEC(suffix, Fmt, NC)                                                        \
    extern "C" __global__ void __launch_bounds__(32 * FLEA_MATVEC_ROWS_PER_BLOCK)                \
        matvec_##suffix##_##NC(const uint8_t* w, unsigned long long row_bytes, int rows,     \
                               int cols, const float* x, float* y) {                        \
        matvec_impl<Fmt, NC>(w, row_bytes, rows, cols, x, y);                                \
    }

#define FLEA_MATVEC_ALL_NC(suffix, Fmt) \
    FLEA_MATVEC(suffix, Fmt, 1)         \
    FLEA_MATVEC(suffix, Fmt, 2)         \
    FLEA_MATVEC(suffix, Fmt, 3)         \
    FLEA_MATVEC(suffix, Fmt, 4)         \
    FLEA_MATVEC(suffix, Fmt, 5)         \
    FLEA_MATVEC(suffix, Fmt, 6)         \
    FLEA_MATVEC(suffix, Fmt, 7)         \
    FLEA_MATVEC(suffix, Fmt, 8)

FLEA_FOR_EACH_FORMAT(FLEA_MATVEC_ALL_NC)

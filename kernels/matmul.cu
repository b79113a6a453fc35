// Matrix products for prefill chunks (more than 8 positions): y = x W^T,
// tiled through shared memory. Correctness first: the weight tile is
// dequantized to f32 in shared memory and multiplied with plain FMAs; each
// weight is dequantized once per 64 positions.
//
//   w: rows x cols weights in format F, row r at w + r * row_bytes
//   x: (n, cols) f32 activations
//   y: (n, rows) f32 outputs, y[p * rows + r]
#include "dequant.cuh"


// Thread layout: 256 threads as 16 x 16 (ty = tid / 16, tx = tid % 16);
// grid (ceil(rows / 64), ceil(n / 64)). The block owns output rows
// blockIdx.x * 64 .. +64 and positions blockIdx.y * 64 .. +64. Per K step of
// 32: thread tid dequantizes weights 8 (tid % 4) .. +8 of tile row tid / 4
// into Ws, and copies activations 8 (tid % 4) .. +8 of tile position tid / 4
// into Xs; then thread (ty, tx) accumulates rows ty + 16a and positions
// tx + 16b (a, b in 0..4), a 4 x 4 register tile.
template <typename F>
__device__ __forceinline__ void matmul_impl(const uint8_t* __restrict__ w,
                                            unsigned long long row_bytes, int rows, int cols,
                                            const float* __restrict__ x, float* __restrict__ y,
                                            int n) {
    __shared__ float Ws[FLEA_MATMUL_TILE_K][FLEA_MATMUL_TILE_ROWS + 1];
    __shared__ float Xs[FLEA_MATMUL_TILE_K][FLEA_MATMUL_TILE_POS + 1];
    const int tid = threadIdx.x;
    const int ty = tid / 16, tx = tid % 16;
    const int row0 = blockIdx.x * FLEA_MATMUL_TILE_ROWS;
    const int pos0 = blockIdx.y * FLEA_MATMUL_TILE_POS;
    const int load_r = tid / 4;       // tile row / tile position this thread loads
    const int load_k = (tid % 4) * 8;  // first of its 8 k values

    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.0f;

    for (int k0 = 0; k0 < cols; k0 += FLEA_MATMUL_TILE_K) {
        float wv[8];
        const int gr = row0 + load_r;
        const int gk = k0 + load_k;
        if (gr < rows && gk < cols) {
            F::load8(w + (size_t)gr * row_bytes, gk, cols, wv);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) wv[e] = 0.0f;
        }
#pragma unroll
        for (int e = 0; e < 8; e++) Ws[load_k + e][load_r] = wv[e];

        const int gp = pos0 + load_r;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            Xs[load_k + e][load_r] =
                (gp < n && gk + e < cols) ? x[(size_t)gp * cols + gk + e] : 0.0f;
        }
        __syncthreads();

#pragma unroll 8
        for (int k = 0; k < FLEA_MATMUL_TILE_K; k++) {
            float wr[4], xp[4];
#pragma unroll
            for (int a = 0; a < 4; a++) wr[a] = Ws[k][ty + 16 * a];
#pragma unroll
            for (int b = 0; b < 4; b++) xp[b] = Xs[k][tx + 16 * b];
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) acc[a][b] += wr[a] * xp[b];
        }
        __syncthreads();
    }

#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int r = row0 + ty + 16 * a;
        if (r >= rows) continue;
#pragma unroll
        for (int b = 0; b < 4; b++) {
            const int p = pos0 + tx + 16 * b;
            if (p < n) y[(size_t)p * rows + r] = acc[a][b];
        }
    }
}

#define FLEA_MATMUL(suffix, Fmt)                                                            \
    extern "C" __global__ void __launch_bounds__(FLEA_MATMUL_THREADS)                                \
        matmul_##suffix(const uint8_t* w, unsigned long long row_bytes, int rows, int cols, \
                        const float* x, float* y, int n) {                                  \
        matmul_impl<Fmt>(w, row_bytes, rows, cols, x, y, n);                                \
    }

FLEA_FOR_EACH_FORMAT(FLEA_MATMUL)

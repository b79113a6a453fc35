// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, per row.
#include "common.cuh"

// Thread layout: one block per output row (grid.x = n rows), 256 threads
// striding over the dim elements; the sum of squares is reduced over the
// block, then every thread scales its elements.
__device__ __forceinline__ void rmsnorm_row(float* __restrict__ out, const float* __restrict__ x,
                                            const float* __restrict__ weight, int dim, float eps) {
    __shared__ float scratch[32];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = x[i] * scale * weight[i];
}

// out row p = rmsnorm(x row p); out and x are (n, dim).
extern "C" __global__ void __launch_bounds__(FLEA_ROW_THREADS)
    rmsnorm(float* out, const float* x, const float* weight, int dim, float eps) {
    const size_t p = blockIdx.x;
    rmsnorm_row(out + p * dim, x + p * dim, weight, dim, eps);
}

// out row m = rmsnorm(x row src_rows[m]): gathers the positions that want
// logits into consecutive rows. out is (m, dim).
extern "C" __global__ void __launch_bounds__(FLEA_ROW_THREADS)
    rmsnorm_gather(float* out, const float* x, const float* weight, const int* src_rows, int dim,
                   float eps) {
    const size_t m = blockIdx.x;
    rmsnorm_row(out + m * dim, x + (size_t)src_rows[m] * dim, weight, dim, eps);
}

// RMSNorm of every head_dim-wide head of x, in place, with one weight vector
// for all heads (Qwen 3's q and k norms). x is (n_rows * n_heads, head_dim).
//
// Thread layout: one block per head of a row (grid.x = n_rows * n_heads),
// 256 threads striding over head_dim. Each thread rescales only elements it
// read itself, after the block-wide sum, so in place is safe (no restrict).
extern "C" __global__ void __launch_bounds__(FLEA_ROW_THREADS)
    rmsnorm_heads(float* x, const float* weight, int head_dim, float eps) {
    __shared__ float scratch[32];
    float* h = x + (size_t)blockIdx.x * head_dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) ss += h[i] * h[i];
    ss = block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)head_dim + eps);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) h[i] = h[i] * scale * weight[i];
}

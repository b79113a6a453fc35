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

// Greedy decoding on the device: the index of each row's largest logit.
#include "common.cuh"

// Keep the larger value; on a tie the lower index (as sampler::argmax does).
// NaN never wins.
__device__ __forceinline__ void argmax_merge(float& best, int& best_i, float v, int i) {
    if (v > best || (v == best && i < best_i)) {
        best = v;
        best_i = i;
    }
}

// out[r] = argmax of logits row r; logits is (rows, vocab).
//
// Thread layout: one block of 256 threads per row (grid.x = rows); thread t
// scans elements t, t + 256, ...; the per-thread winners are reduced by warp
// shuffles, then across the 8 warps through shared memory.
extern "C" __global__ void __launch_bounds__(FLEA_ROW_THREADS)
    argmax_rows(unsigned int* out, const float* logits, int vocab) {
    __shared__ float s_val[32];
    __shared__ int s_idx[32];
    const float* row = logits + (size_t)blockIdx.x * vocab;
    float best = -INFINITY;
    int best_i = vocab;  // loses every tie against a real index
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) argmax_merge(best, best_i, row[i], i);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(FLEA_FULL_MASK, best, o);
        const int j = __shfl_xor_sync(FLEA_FULL_MASK, best_i, o);
        argmax_merge(best, best_i, v, j);
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        s_val[warp] = best;
        s_idx[warp] = best_i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / 32); w++) argmax_merge(best, best_i, s_val[w], s_idx[w]);
        // A row of only NaN or -inf: index 0, as the CPU loop gives.
        out[blockIdx.x] = best_i < vocab ? (unsigned int)best_i : 0u;
    }
}

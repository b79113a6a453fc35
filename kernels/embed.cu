// Embedding lookup: dequantize the rows of a weight matrix named by token
// ids. Also dequantizes whole vectors (a norm weight is row 0 of a 1-row
// matrix).
#include "dequant.cuh"

// Each thread takes one `load8` group of weights.
static_assert(FLEA_EMBED_WEIGHTS_PER_THREAD == 8, "embed threads dequantize with load8");

// out row p = dequantize(w row tokens[p]); out is (n, cols).
//
// Thread layout: grid (ceil(cols / (8 * 128)), n), 128 threads a block;
// thread t of block (bx, p) dequantizes weights 8 (bx * 128 + t) .. +8 of
// the row of token p.
template <typename F>
__device__ __forceinline__ void embed_impl(float* __restrict__ out, const uint8_t* __restrict__ w,
                                           unsigned long long row_bytes,
                                           const int* __restrict__ tokens, int cols) {
    const int p = blockIdx.y;
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= cols) return;
    float v[8];
    F::load8(w + (size_t)tokens[p] * row_bytes, i, cols, v);
    float* o = out + (size_t)p * cols + i;
#pragma unroll
    for (int e = 0; e < 8; e++) {
        if (i + e < cols) o[e] = v[e];
    }
}

#define FLEA_EMBED(suffix, Fmt)                                                                \
    extern "C" __global__ void __launch_bounds__(FLEA_EMBED_THREADS)                                          \
        embed_##suffix(float* out, const uint8_t* w, unsigned long long row_bytes,             \
                       const int* tokens, int cols) {                                          \
        embed_impl<Fmt>(out, w, row_bytes, tokens, cols);                                      \
    }

FLEA_FOR_EACH_FORMAT(FLEA_EMBED)

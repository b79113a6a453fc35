// Shared helpers for the Flea-Flicker kernels: reductions and the scalar
// decoders of GGUF's little-endian half floats.
//
// Conventions for every kernel in kernels/:
// - activations are f32, row-major, one row per position: a (n, cols)
//   matrix is n rows of cols floats;
// - weights are the GGUF tensor bytes as stored in the file (row-major rows of
//   blocks), uploaded unchanged; a row starts at `w + r * row_bytes`;
// - every kernel states its thread layout in the comment above it; the launch
//   geometry that matches it is computed in src/backend/cuda/geometry.rs.
#pragma once

#include <stdint.h>
#if defined(__CUDACC__)
#include <cuda_fp16.h>
#else
// Host build of the block decoders (kernels/host/dequant_check.cpp): plain
// C++ stand-ins for the few CUDA intrinsics they use.
#include "host/shim.h"
#endif

#include "geometry.h"

#define FLEA_WARP 32
#define FLEA_FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = FLEA_WARP / 2; o > 0; o >>= 1) {
        v += __shfl_xor_sync(FLEA_FULL_MASK, v, o);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = FLEA_WARP / 2; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(FLEA_FULL_MASK, v, o));
    }
    return v;
}

// Sum of `v` over the whole block (blockDim.x a multiple of 32, at most
// 1024). Every thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % FLEA_WARP;
    const int warp = threadIdx.x / FLEA_WARP;
    const int n_warps = blockDim.x / FLEA_WARP;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// IEEE half at a possibly unaligned byte address, little-endian.
__device__ __forceinline__ float f16_at(const uint8_t* p) {
    const unsigned short bits = (unsigned short)(p[0] | (p[1] << 8));
    return __half2float(__ushort_as_half(bits));
}

// bfloat16 at a possibly unaligned byte address: the top half of an f32.
__device__ __forceinline__ float bf16_at(const uint8_t* p) {
    const unsigned int bits = ((unsigned int)p[0] | ((unsigned int)p[1] << 8)) << 16;
    return __uint_as_float(bits);
}

// The f16 KV cache holds raw IEEE half bits: stored rounded to nearest even
// (as the CPU cache rounds), read back exactly.
__device__ __forceinline__ unsigned short kv_pack(float x) {
    return __half_as_ushort(__float2half_rn(x));
}
__device__ __forceinline__ float kv_load(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float kv_load(const unsigned short* p, size_t i) {
    return __half2float(__ushort_as_half(p[i]));
}

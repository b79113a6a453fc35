// Host stand-ins for what the kernels use from CUDA, so kernels/*.cu can be
// compiled by a plain C++20 compiler and run on the CPU
// (kernels/host/kernel_check.cpp, run by tests/gpu.rs in every `cargo
// test`). Not used by nvcc.
//
// The execution model is emulated with one OS thread per CUDA thread:
// blocks run one after another; inside a block every thread is a real
// thread, `__syncthreads` is a barrier over the block and
// `__shfl_xor_sync` exchanges values through a per-warp slot array between
// two barriers over the warp. `__shared__` variables become function-local
// statics: shared by the threads of the one block that runs at a time.
// Slow (thousands of threads per launch), but it runs the kernels' own
// indexing, reductions and synchronization, so tests can hold them to the
// CPU without a GPU. It assumes what the kernels guarantee: a warp leaves
// a kernel as a whole or not at all before its next shuffle, and every
// thread of a block reaches each __syncthreads.
#pragma once

#include <math.h>

#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint2 {
    unsigned int x, y;
};
struct uint4 {
    unsigned int x, y, z, w;
};

struct __half {
    uint16_t bits;
};

// IEEE half to float, exact (normals, subnormals, infinities, NaN).
inline float __half2float(__half h) {
    const uint32_t sign = (h.bits >> 15) & 1, exp = (h.bits >> 10) & 31, man = h.bits & 1023;
    float v;
    if (exp == 0) {
        v = std::ldexp((float)man, -24);
    } else if (exp == 31) {
        v = man ? NAN : INFINITY;
    } else {
        v = std::ldexp((float)(man | 1024), (int)exp - 25);
    }
    return sign ? -v : v;
}

inline __half __ushort_as_half(unsigned short b) { return __half{b}; }

// Float to IEEE half, rounded to nearest even (the device's
// __float2half_rn): overflow goes to infinity, NaN stays NaN.
inline __half __float2half_rn(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) return __half{(uint16_t)(sign | 0x7e00u)};
    // 65520 and up is past the halfway point between 65504 and 2^16.
    if (mag >= 0x477ff000u) return __half{(uint16_t)(sign | 0x7c00u)};
    if (mag < 0x38800000u) {
        // Below 2^-14: a subnormal half counts units of 2^-24. Scaling by
        // 2^24 is exact; nearbyint rounds to nearest even.
        float a;
        std::memcpy(&a, &mag, sizeof a);
        return __half{(uint16_t)(sign | (uint16_t)std::nearbyint(a * 16777216.0f))};
    }
    // Normal: rebias the exponent (127 -> 15), drop 13 mantissa bits
    // rounding to nearest even (a carry into the exponent is correct).
    uint32_t h = mag - 0x38000000u;
    const uint32_t rest = h & 0x1fffu;
    h >>= 13;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return __half{(uint16_t)(sign | h)};
}

inline unsigned short __half_as_ushort(__half h) { return h.bits; }

// Four signed 8-bit products of the bytes of a and b, summed into c
// (sm_61+ `dp4a.s32.s32`).
inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// Round-to-nearest products and differences the compiler may not fuse
// (compile with -ffp-contract=off as well).
inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline float __fsub_rn(float a, float b) {
    volatile float r = a - b;
    return r;
}
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}

namespace simt {

struct Block {
    explicit Block(unsigned threads)
        : all(threads), warps(threads / 32), slots(threads / 32) {
        for (auto& w : warps) w = std::make_unique<std::barrier<>>(32);
    }
    std::barrier<> all;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<std::array<uint64_t, 32>> slots;
};

inline thread_local dim3 thread_idx, block_idx;
inline thread_local Block* block = nullptr;
inline dim3 block_dim, grid_dim;

// Run `kernel(args...)` over `grid` x `block` threads.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 blk, A... args) {
    const unsigned n = blk.x * blk.y * blk.z;
    block_dim = blk;
    grid_dim = grid;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                Block b(n);
                std::vector<std::thread> threads;
                threads.reserve(n);
                for (unsigned t = 0; t < n; t++) {
                    threads.emplace_back([&, t] {
                        thread_idx = dim3{t % blk.x, (t / blk.x) % blk.y, t / (blk.x * blk.y)};
                        block_idx = dim3{bx, by, bz};
                        block = &b;
                        kernel(static_cast<P>(args)...);
                    });
                }
                for (auto& th : threads) th.join();
            }
}

inline unsigned linear_thread() {
    return thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z);
}

}  // namespace simt

#define threadIdx simt::thread_idx
#define blockIdx simt::block_idx
#define blockDim simt::block_dim
#define gridDim simt::grid_dim

inline void __syncthreads() { simt::block->all.arrive_and_wait(); }

// CUDA's integer min and max (device built-ins).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int offset) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    const unsigned t = simt::linear_thread();
    const unsigned warp = t / 32, lane = t % 32;
    auto& slots = simt::block->slots[warp];
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[lane] = bits;
    simt::block->warps[warp]->arrive_and_wait();
    const uint64_t other = slots[lane ^ (unsigned)offset];
    simt::block->warps[warp]->arrive_and_wait();
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}

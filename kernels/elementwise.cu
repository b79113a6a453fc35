// Element-wise operations on f32 activations.
#include "common.cuh"

// gate = silu(gate) * up = gate / (1 + exp(-gate)) * up, in place.
//
// Thread layout: one thread per element; 1-D grid, 256 threads a block.
extern "C" __global__ void __launch_bounds__(FLEA_ELEMENTWISE_THREADS) swiglu(float* gate, const float* up, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}

// x += y (the residual connection).
//
// Thread layout: one thread per element; 1-D grid, 256 threads a block.
extern "C" __global__ void __launch_bounds__(FLEA_ELEMENTWISE_THREADS) add_in_place(float* x, const float* y, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] += y[i];
}

// x[i] += bias[i % width]: a bias added to every width-wide row (Qwen 2's
// q, k, v projections).
//
// Thread layout: one thread per element; 1-D grid, 256 threads a block.
extern "C" __global__ void __launch_bounds__(FLEA_ELEMENTWISE_THREADS) add_bias(float* x, const float* bias, int width, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    x[i] += bias[i % width];
}

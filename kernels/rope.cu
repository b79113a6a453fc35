// RoPE and the key/value cache append.
#include "common.cuh"

// Rotate pair i < half_rot of every head by the angle for the row's
// position: table[pos * half_rot + i] = (cos, sin) of pos * frequency(i),
// computed on the host in f64 exactly as the CPU path does. The pair is
// (x[2i], x[2i+1]) (llama's interleaved layout) or, with neox != 0,
// (x[i], x[i + half_rot]) (GPT-NeoX halves: Qwen, Phi-3). x is
// (n_rows, n_heads * head_dim), rotated in place.
//
// Thread layout: one thread per rotated pair; 1-D grid over
// n_rows * n_heads * half_rot pairs, 256 threads a block.
extern "C" __global__ void __launch_bounds__(FLEA_ELEMENTWISE_THREADS)
    rope(float* x, const float2* table, const int* row_pos, int n_rows, int n_heads, int head_dim,
         int half_rot, int neox) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long per_row = (long long)n_heads * half_rot;
    if (idx >= per_row * n_rows) return;
    const int row = (int)(idx / per_row);
    const int rem = (int)(idx % per_row);
    const int head = rem / half_rot;
    const int i = rem % half_rot;
    const float2 cs = table[(size_t)row_pos[row] * half_rot + i];
    float* h = x + (size_t)row * n_heads * head_dim + (size_t)head * head_dim;
    float* p0 = neox ? h + i : h + 2 * i;
    float* p1 = neox ? h + i + half_rot : h + 2 * i + 1;
    const float a = *p0, b = *p1;
    *p0 = a * cs.x - b * cs.y;
    *p1 = a * cs.y + b * cs.x;
}

// Append each row's key and value to its sequence in one layer's cache:
// cache layout [seq][n_ctx][kv_dim]; row r goes to (row_seq[r], row_pos[r]).
// kv_store keeps f32, kv_store_f16 rounds to half (kv_pack).
//
// Thread layout: one thread per element; 1-D grid over n_rows * kv_dim, 256
// threads a block.
__device__ __forceinline__ size_t kv_slot(const int* row_seq, const int* row_pos, int kv_dim,
                                          int n_ctx, long long idx) {
    const int row = (int)(idx / kv_dim);
    const int e = (int)(idx % kv_dim);
    return ((size_t)row_seq[row] * n_ctx + row_pos[row]) * kv_dim + e;
}

extern "C" __global__ void __launch_bounds__(FLEA_ELEMENTWISE_THREADS)
    kv_store(float* k_cache, float* v_cache, const float* k, const float* v, const int* row_seq,
             const int* row_pos, int n_rows, int kv_dim, int n_ctx) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n_rows * kv_dim) return;
    const size_t dst = kv_slot(row_seq, row_pos, kv_dim, n_ctx, idx);
    k_cache[dst] = k[idx];
    v_cache[dst] = v[idx];
}

extern "C" __global__ void __launch_bounds__(FLEA_ELEMENTWISE_THREADS)
    kv_store_f16(unsigned short* k_cache, unsigned short* v_cache, const float* k, const float* v,
                 const int* row_seq, const int* row_pos, int n_rows, int kv_dim, int n_ctx) {
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)n_rows * kv_dim) return;
    const size_t dst = kv_slot(row_seq, row_pos, kv_dim, n_ctx, idx);
    k_cache[dst] = kv_pack(k[idx]);
    v_cache[dst] = kv_pack(v[idx]);
}

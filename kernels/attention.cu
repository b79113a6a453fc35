// Causal grouped-query attention against the per-sequence KV cache, for
// decode and prefill alike: every row of q is one position of one sequence,
// and sees its sequence's cached positions 0..=pos (its own key and value
// were appended by kv_store before this runs), or with a sliding window > 0
// only the last `window` of them.
//
//   q, out:   (n_rows, n_heads * head_dim)
//   k_cache, v_cache: one layer, [seq][n_ctx][n_kv_heads * head_dim]
//   query head h reads kv head h / (n_heads / n_kv_heads)
#include "common.cuh"

// head_dim <= 32 * FLEA_ATTENTION_MAX_PER_LANE (checked on the host).

// Thread layout: grid (n_heads, n_rows), block of FLEA_ATTENTION_WARPS warps. Lane l
// holds elements l, l + 32, ... of the query and of an output accumulator.
// Warp w walks cache positions t = first + w, first + w + FLEA_ATTENTION_WARPS, ... <= pos with an
// online softmax (running max m, running sum s, accumulator rescaled when m
// grows); a score is a warp-reduced dot product. The warps' (m, s, acc)
// are merged through shared memory and warp 0 writes the head's output.
//
// The cache is f32 (`attention`) or f16 bits (`attention_f16`, widened
// exactly as read); both run this body.
template <typename KV>
__device__ __forceinline__ void attention_body(float* out, const float* q, const KV* k_cache,
                                               const KV* v_cache, const int* row_seq,
                                               const int* row_pos, int n_heads, int n_kv_heads,
                                               int head_dim, int n_ctx, int window, float scale) {
    __shared__ float s_max[FLEA_ATTENTION_WARPS];
    __shared__ float s_sum[FLEA_ATTENTION_WARPS];
    __shared__ float s_acc[FLEA_ATTENTION_WARPS][32 * FLEA_ATTENTION_MAX_PER_LANE];

    const int h = blockIdx.x;
    const int row = blockIdx.y;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int kv_dim = n_kv_heads * head_dim;
    const int kv_head = h / (n_heads / n_kv_heads);
    const int pos = row_pos[row];
    const int first = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
    const size_t seq_base = (size_t)row_seq[row] * n_ctx * kv_dim + (size_t)kv_head * head_dim;
    const float* qh = q + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;

    float qv[FLEA_ATTENTION_MAX_PER_LANE], acc[FLEA_ATTENTION_MAX_PER_LANE];
#pragma unroll
    for (int j = 0; j < FLEA_ATTENTION_MAX_PER_LANE; j++) {
        const int e = lane + 32 * j;
        qv[j] = e < head_dim ? qh[e] : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, s = 0.0f;

    for (int t = first + warp; t <= pos; t += FLEA_ATTENTION_WARPS) {
        const KV* kt = k_cache + seq_base + (size_t)t * kv_dim;
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < FLEA_ATTENTION_MAX_PER_LANE; j++) {
            const int e = lane + 32 * j;
            if (e < head_dim) d += qv[j] * kv_load(kt, e);
        }
        const float score = warp_sum(d) * scale;
        const float m_new = fmaxf(m, score);
        const float corr = expf(m - m_new);  // 0 on the first step (m = -inf)
        const float p = expf(score - m_new);
        s = s * corr + p;
        const KV* vt = v_cache + seq_base + (size_t)t * kv_dim;
#pragma unroll
        for (int j = 0; j < FLEA_ATTENTION_MAX_PER_LANE; j++) {
            const int e = lane + 32 * j;
            if (e < head_dim) acc[j] = acc[j] * corr + p * kv_load(vt, e);
        }
        m = m_new;
    }

    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = s;
    }
#pragma unroll
    for (int j = 0; j < FLEA_ATTENTION_MAX_PER_LANE; j++) s_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    if (warp != 0) return;

    // Position `first` is always visible, so warp 0 saw at least one score and
    // the global max is finite; warps that saw none contribute exp(-inf) = 0.
    float gm = s_max[0];
#pragma unroll
    for (int w = 1; w < FLEA_ATTENTION_WARPS; w++) gm = fmaxf(gm, s_max[w]);
    float total = 0.0f;
    float f[FLEA_ATTENTION_WARPS];
#pragma unroll
    for (int w = 0; w < FLEA_ATTENTION_WARPS; w++) {
        f[w] = expf(s_max[w] - gm);
        total += s_sum[w] * f[w];
    }
    const float inv = 1.0f / total;
    float* oh = out + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;
#pragma unroll
    for (int j = 0; j < FLEA_ATTENTION_MAX_PER_LANE; j++) {
        const int e = lane + 32 * j;
        if (e >= head_dim) continue;
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < FLEA_ATTENTION_WARPS; w++) o += s_acc[w][e] * f[w];
        oh[e] = o * inv;
    }
}

extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention(float* out, const float* q, const float* k_cache, const float* v_cache,
              const int* row_seq, const int* row_pos, int n_heads, int n_kv_heads, int head_dim,
              int n_ctx, int window, float scale) {
    attention_body(out, q, k_cache, v_cache, row_seq, row_pos, n_heads, n_kv_heads, head_dim,
                   n_ctx, window, scale);
}

extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention_f16(float* out, const float* q, const unsigned short* k_cache,
                  const unsigned short* v_cache, const int* row_seq, const int* row_pos,
                  int n_heads, int n_kv_heads, int head_dim, int n_ctx, int window, float scale) {
    attention_body(out, q, k_cache, v_cache, row_seq, row_pos, n_heads, n_kv_heads, head_dim,
                   n_ctx, window, scale);
}

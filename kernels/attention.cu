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

// ------------------------------------------------- flash-decoding, tiled prefill
//
// Both kernels below read the cache two elements at a time: lane l of a warp
// holds the pairs p = l + 32 j (elements 2p, 2p + 1) of a head, so one
// position's row of a head is read by a warp in contiguous 32-bit (f16) or
// 64-bit (f32) loads. They need an even head_dim (checked on the host; an odd
// head goes to `attention` above), which keeps every pair 4- (f16) or 8-byte
// (f32) aligned: row offsets are multiples of head_dim.
static_assert(FLEA_ATTENTION_MAX_PER_LANE % 2 == 0, "lanes hold whole pairs");
#define FLEA_ATTENTION_MAX_PAIRS (FLEA_ATTENTION_MAX_PER_LANE / 2)
static_assert(FLEA_ATTENTION_TILE_ROWS % FLEA_ATTENTION_WARPS == 0, "whole rows per warp");

__device__ __forceinline__ float2 kv_load2(const float* p, size_t i) {
    return *reinterpret_cast<const float2*>(p + i);
}
__device__ __forceinline__ float2 kv_load2(const unsigned short* p, size_t i) {
    const unsigned int bits = *reinterpret_cast<const unsigned int*>(p + i);
    float2 r;
    r.x = __half2float(__ushort_as_half((unsigned short)(bits & 0xffffu)));
    r.y = __half2float(__ushort_as_half((unsigned short)(bits >> 16)));
    return r;
}

// First cache position a row at `pos` sees (window 0: all of them).
__device__ __forceinline__ int attention_first(int pos, int window) {
    return (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
}

// Flash-decoding: grid (n_heads, n_rows, n_splits), block of
// FLEA_ATTENTION_WARPS warps. Split z of a row takes the visible positions
// first + z * split_len .. first + (z + 1) * split_len - 1 (clipped to pos;
// possibly none when the row sees fewer positions than the longest row the
// host split for); its warps walk them as `attention` does and are merged in
// shared memory. With one split the block writes the normalized output;
// otherwise it writes its partial softmax to `part`, one record of
// (max, sum, unnormalized accumulator[head_dim]) per (row, head, split), at
// ((row * n_heads + h) * n_splits + z) * (head_dim + 2), and
// attention_merge combines them. An empty split writes (-inf, 0, 0...).
template <typename KV>
__device__ __forceinline__ void attention_split_body(float* out, float* part, const float* q,
                                                     const KV* k_cache, const KV* v_cache,
                                                     const int* row_seq, const int* row_pos,
                                                     int n_heads, int n_kv_heads, int head_dim,
                                                     int n_ctx, int window, float scale,
                                                     int split_len) {
    __shared__ float s_max[FLEA_ATTENTION_WARPS];
    __shared__ float s_sum[FLEA_ATTENTION_WARPS];
    __shared__ float2 s_acc[FLEA_ATTENTION_WARPS][32 * FLEA_ATTENTION_MAX_PAIRS];

    const int h = blockIdx.x;
    const int row = blockIdx.y;
    const int split = blockIdx.z;
    const int n_splits = gridDim.z;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int pairs = head_dim / 2;
    const int kv_dim = n_kv_heads * head_dim;
    const int kv_head = h / (n_heads / n_kv_heads);
    const int pos = row_pos[row];
    const int lo = attention_first(pos, window) + split * split_len;
    const int hi = min(lo + split_len, pos + 1);
    const size_t seq_base = (size_t)row_seq[row] * n_ctx * kv_dim + (size_t)kv_head * head_dim;
    const float* qh = q + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;

    float2 qv[FLEA_ATTENTION_MAX_PAIRS], acc[FLEA_ATTENTION_MAX_PAIRS];
#pragma unroll
    for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
        const int p = lane + 32 * j;
        qv[j] = p < pairs ? *reinterpret_cast<const float2*>(qh + 2 * p) : float2{0.0f, 0.0f};
        acc[j] = float2{0.0f, 0.0f};
    }
    float m = -INFINITY, s = 0.0f;

    for (int t = lo + warp; t < hi; t += FLEA_ATTENTION_WARPS) {
        const KV* kt = k_cache + seq_base + (size_t)t * kv_dim;
        float d = 0.0f;
#pragma unroll
        for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
            const int p = lane + 32 * j;
            if (p < pairs) {
                const float2 k2 = kv_load2(kt, 2 * p);
                d += qv[j].x * k2.x + qv[j].y * k2.y;
            }
        }
        const float score = warp_sum(d) * scale;
        const float m_new = fmaxf(m, score);
        const float corr = expf(m - m_new);  // 0 on the first step (m = -inf)
        const float w = expf(score - m_new);
        s = s * corr + w;
        const KV* vt = v_cache + seq_base + (size_t)t * kv_dim;
#pragma unroll
        for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
            const int p = lane + 32 * j;
            if (p < pairs) {
                const float2 v2 = kv_load2(vt, 2 * p);
                acc[j].x = acc[j].x * corr + w * v2.x;
                acc[j].y = acc[j].y * corr + w * v2.y;
            }
        }
        m = m_new;
    }

    if (lane == 0) {
        s_max[warp] = m;
        s_sum[warp] = s;
    }
#pragma unroll
    for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) s_acc[warp][lane + 32 * j] = acc[j];
    __syncthreads();
    if (warp != 0) return;

    // A warp that saw no position has m = -inf and weighs 0; so does the
    // whole split when it is empty (gm = -inf: nothing to rescale by).
    float gm = s_max[0];
#pragma unroll
    for (int w = 1; w < FLEA_ATTENTION_WARPS; w++) gm = fmaxf(gm, s_max[w]);
    float total = 0.0f;
    float f[FLEA_ATTENTION_WARPS];
#pragma unroll
    for (int w = 0; w < FLEA_ATTENTION_WARPS; w++) {
        f[w] = s_max[w] == -INFINITY ? 0.0f : expf(s_max[w] - gm);
        total += s_sum[w] * f[w];
    }
    // One split: split 0 holds position `first`, so total > 0.
    const float norm = n_splits == 1 ? 1.0f / total : 1.0f;
    float* dst;
    if (n_splits == 1) {
        dst = out + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;
    } else {
        float* rec = part + (((size_t)row * n_heads + h) * n_splits + split) * (head_dim + 2);
        if (lane == 0) {
            rec[0] = gm;
            rec[1] = total;
        }
        dst = rec + 2;
    }
#pragma unroll
    for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
        const int p = lane + 32 * j;
        if (p >= pairs) continue;
        float2 o{0.0f, 0.0f};
#pragma unroll
        for (int w = 0; w < FLEA_ATTENTION_WARPS; w++) {
            o.x += s_acc[w][p].x * f[w];
            o.y += s_acc[w][p].y * f[w];
        }
        dst[2 * p] = o.x * norm;
        dst[2 * p + 1] = o.y * norm;
    }
}

extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention_split(float* out, float* part, const float* q, const float* k_cache,
                    const float* v_cache, const int* row_seq, const int* row_pos, int n_heads,
                    int n_kv_heads, int head_dim, int n_ctx, int window, float scale,
                    int split_len) {
    attention_split_body(out, part, q, k_cache, v_cache, row_seq, row_pos, n_heads, n_kv_heads,
                         head_dim, n_ctx, window, scale, split_len);
}

extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention_split_f16(float* out, float* part, const float* q, const unsigned short* k_cache,
                        const unsigned short* v_cache, const int* row_seq, const int* row_pos,
                        int n_heads, int n_kv_heads, int head_dim, int n_ctx, int window,
                        float scale, int split_len) {
    attention_split_body(out, part, q, k_cache, v_cache, row_seq, row_pos, n_heads, n_kv_heads,
                         head_dim, n_ctx, window, scale, split_len);
}

// The second step of flash-decoding: grid (n_heads, n_rows), block of
// 32 * FLEA_ATTENTION_WARPS threads, thread i producing elements i, i +
// blockDim.x, ... of the head. Every split is rescaled to the largest of
// their maxima (empty splits, max -inf, weigh 0) and the sum normalizes.
extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention_merge(float* out, const float* part, int n_heads, int head_dim, int n_splits) {
    const int h = blockIdx.x;
    const int row = blockIdx.y;
    const int stride = head_dim + 2;
    const float* rec = part + ((size_t)row * n_heads + h) * n_splits * stride;
    float gm = -INFINITY;
    for (int z = 0; z < n_splits; z++) gm = fmaxf(gm, rec[(size_t)z * stride]);
    float total = 0.0f;
    for (int z = 0; z < n_splits; z++) {
        const float mz = rec[(size_t)z * stride];
        if (mz != -INFINITY) total += rec[(size_t)z * stride + 1] * expf(mz - gm);
    }
    const float inv = 1.0f / total;
    float* oh = out + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;
    for (int e = threadIdx.x; e < head_dim; e += blockDim.x) {
        float o = 0.0f;
        for (int z = 0; z < n_splits; z++) {
            const float mz = rec[(size_t)z * stride];
            if (mz != -INFINITY) o += rec[(size_t)z * stride + 2 + e] * expf(mz - gm);
        }
        oh[e] = o * inv;
    }
}

// Tiled prefill: grid (n_heads, ceil(n_rows / FLEA_ATTENTION_TILE_ROWS)),
// block of FLEA_ATTENTION_WARPS warps; warp w owns rows
// r0 + w * R .. r0 + w * R + R - 1 of the block's tile (R = TILE_ROWS / WARPS),
// each with its own online softmax in registers. The tile is cut into
// segments of consecutive rows of one sequence (a prefill chunk is one
// segment; a tile straddling two batch entries has two). For each segment
// the block walks the union of its rows' visible ranges in steps of
// FLEA_ATTENTION_TILE_POSITIONS positions, staging that step's keys and
// values of the head's kv head in shared memory once (widened to f32), and
// every warp scores its rows of the segment against the step, each row
// masked to its own range: the cache is read once per tile, not per row.
// Any layout of rows is correct; consecutive positions of one sequence are
// what makes it fast.
template <typename KV>
__device__ __forceinline__ void attention_tiled_body(float* out, const float* q,
                                                     const KV* k_cache, const KV* v_cache,
                                                     const int* row_seq, const int* row_pos,
                                                     int n_rows, int n_heads, int n_kv_heads,
                                                     int head_dim, int n_ctx, int window,
                                                     float scale) {
    constexpr int R = FLEA_ATTENTION_TILE_ROWS / FLEA_ATTENTION_WARPS;
    constexpr int T = FLEA_ATTENTION_TILE_POSITIONS;
    __shared__ float2 s_k[T][32 * FLEA_ATTENTION_MAX_PAIRS];
    __shared__ float2 s_v[T][32 * FLEA_ATTENTION_MAX_PAIRS];

    const int h = blockIdx.x;
    const int r0 = blockIdx.y * FLEA_ATTENTION_TILE_ROWS;
    const int r_end = min(r0 + FLEA_ATTENTION_TILE_ROWS, n_rows);
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int pairs = head_dim / 2;
    const int kv_dim = n_kv_heads * head_dim;
    const int kv_head = h / (n_heads / n_kv_heads);

    float2 qv[R][FLEA_ATTENTION_MAX_PAIRS], acc[R][FLEA_ATTENTION_MAX_PAIRS];
    float m[R], s[R];
    int pos[R], first[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int r = r0 + warp * R + i;
        const bool live = r < r_end;
        pos[i] = live ? row_pos[r] : -1;
        first[i] = live ? attention_first(pos[i], window) : 0;
        m[i] = -INFINITY;
        s[i] = 0.0f;
        const float* qh = q + (size_t)r * n_heads * head_dim + (size_t)h * head_dim;
#pragma unroll
        for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
            const int p = lane + 32 * j;
            qv[i][j] = live && p < pairs ? *reinterpret_cast<const float2*>(qh + 2 * p)
                                         : float2{0.0f, 0.0f};
            acc[i][j] = float2{0.0f, 0.0f};
        }
    }

    for (int seg = r0; seg < r_end;) {
        // The segment: rows seg..seg_end - 1 of sequence `seq`, seeing
        // positions lo..hi - 1 between them.
        const int seq = row_seq[seg];
        int seg_end = seg, lo = n_ctx, hi = 0;
        while (seg_end < r_end && row_seq[seg_end] == seq) {
            const int p = row_pos[seg_end];
            lo = min(lo, attention_first(p, window));
            hi = max(hi, p + 1);
            seg_end++;
        }
        const size_t seq_base = (size_t)seq * n_ctx * kv_dim + (size_t)kv_head * head_dim;
        for (int t0 = lo; t0 < hi; t0 += T) {
            const int n_t = min(T, hi - t0);
            __syncthreads();  // the previous step's reads are done
            for (int idx = threadIdx.x; idx < n_t * pairs; idx += blockDim.x) {
                const int t = idx / pairs, p = idx % pairs;
                const size_t at = seq_base + (size_t)(t0 + t) * kv_dim + 2 * p;
                s_k[t][p] = kv_load2(k_cache, at);
                s_v[t][p] = kv_load2(v_cache, at);
            }
            __syncthreads();
#pragma unroll
            for (int i = 0; i < R; i++) {
                const int r = r0 + warp * R + i;
                // Warp-uniform: the whole warp skips rows outside the segment
                // and steps that miss the row's range.
                if (r < seg || r >= seg_end) continue;
                const int a = max(t0, first[i]) - t0;
                const int b = min(t0 + n_t, pos[i] + 1) - t0;
                if (a >= b) continue;
                float score[T];
                float step_max = -INFINITY;
#pragma unroll
                for (int t = 0; t < T; t++) {
                    if (t < a || t >= b) continue;
                    float d = 0.0f;
#pragma unroll
                    for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
                        const int p = lane + 32 * j;
                        if (p < pairs) d += qv[i][j].x * s_k[t][p].x + qv[i][j].y * s_k[t][p].y;
                    }
                    score[t] = warp_sum(d) * scale;
                    step_max = fmaxf(step_max, score[t]);
                }
                const float m_new = fmaxf(m[i], step_max);
                const float corr = expf(m[i] - m_new);  // 0 on the row's first step
                s[i] *= corr;
#pragma unroll
                for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
                    acc[i][j].x *= corr;
                    acc[i][j].y *= corr;
                }
#pragma unroll
                for (int t = 0; t < T; t++) {
                    if (t < a || t >= b) continue;
                    const float w = expf(score[t] - m_new);
                    s[i] += w;
#pragma unroll
                    for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
                        const int p = lane + 32 * j;
                        if (p < pairs) {
                            acc[i][j].x += w * s_v[t][p].x;
                            acc[i][j].y += w * s_v[t][p].y;
                        }
                    }
                }
                m[i] = m_new;
            }
        }
        seg = seg_end;
    }

    // Every live row saw its position `first`, so s > 0.
#pragma unroll
    for (int i = 0; i < R; i++) {
        const int r = r0 + warp * R + i;
        if (r >= r_end) continue;
        const float inv = 1.0f / s[i];
        float* oh = out + (size_t)r * n_heads * head_dim + (size_t)h * head_dim;
#pragma unroll
        for (int j = 0; j < FLEA_ATTENTION_MAX_PAIRS; j++) {
            const int p = lane + 32 * j;
            if (p < pairs) {
                oh[2 * p] = acc[i][j].x * inv;
                oh[2 * p + 1] = acc[i][j].y * inv;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention_tiled(float* out, const float* q, const float* k_cache, const float* v_cache,
                    const int* row_seq, const int* row_pos, int n_rows, int n_heads,
                    int n_kv_heads, int head_dim, int n_ctx, int window, float scale) {
    attention_tiled_body(out, q, k_cache, v_cache, row_seq, row_pos, n_rows, n_heads, n_kv_heads,
                         head_dim, n_ctx, window, scale);
}

extern "C" __global__ void __launch_bounds__(32 * FLEA_ATTENTION_WARPS)
    attention_tiled_f16(float* out, const float* q, const unsigned short* k_cache,
                        const unsigned short* v_cache, const int* row_seq, const int* row_pos,
                        int n_rows, int n_heads, int n_kv_heads, int head_dim, int n_ctx,
                        int window, float scale) {
    attention_tiled_body(out, q, k_cache, v_cache, row_seq, row_pos, n_rows, n_heads, n_kv_heads,
                         head_dim, n_ctx, window, scale);
}

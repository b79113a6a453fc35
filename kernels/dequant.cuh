// Block formats on the device: for each GGUF type a struct with
//
//   static __device__ void load8(const uint8_t* row, int i, int cols, float w[8])
//
// which writes the eight consecutive weights `i .. i+8` of a row (`i` a
// multiple of 8, `i < cols`) as f32. The arithmetic follows src/quant/*.rs
// (the scalar oracle): the same scale products, in the same order.
//
// Products are written with __fmul_rn/__fsub_rn/__fadd_rn where the CPU
// computes `a * b - c` or `a * b + c`: nvcc would otherwise contract them
// into one FMA, and the dequantized weights would no longer be
// bit-identical to the CPU's.
//
// `WHOLE` is true for block formats: a row is whole blocks of 32 or 256
// weights, so an 8-weight group never runs past the row end and `cols` is
// unused. The float formats zero-fill past `cols`, which may be any number.
//
// Layouts (bytes within a block) are documented in src/quant/<format>.rs.
#pragma once

#include "common.cuh"

// ---------------------------------------------------------------- floats

struct FmtF32 {
    static constexpr bool WHOLE = false;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int cols, float w[8]) {
        const float* r = reinterpret_cast<const float*>(row);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = i + e < cols ? r[i + e] : 0.0f;
    }
};

struct FmtF16 {
    static constexpr bool WHOLE = false;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int cols, float w[8]) {
        const __half* r = reinterpret_cast<const __half*>(row);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = i + e < cols ? __half2float(r[i + e]) : 0.0f;
    }
};

struct FmtBF16 {
    static constexpr bool WHOLE = false;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int cols, float w[8]) {
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = i + e < cols ? bf16_at(row + 2 * (i + e)) : 0.0f;
    }
};

// ---------------------------------------------------------------- Q8_0
// 34-byte blocks of 32 weights: f16 d, then 32 int8 quants. w = d * q.

struct FmtQ8_0 {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (i / 32) * 34;
        const float d = f16_at(b);
        const int8_t* q = reinterpret_cast<const int8_t*>(b + 2 + i % 32);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = d * (float)q[e];
    }
};

// ---------------------------------------------------------------- 4- and 5-bit 32-weight blocks
// Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL keep sixteen bytes of nibbles: byte j
// holds weight j in its low nibble and weight j + 16 in its high one. Our
// eight weights start at p = i % 32 (0, 8, 16 or 24), so they are the low
// or the high nibbles of bytes p % 16 .. p % 16 + 8.

// The eight nibbles of weights p .. p + 8 from the block's quant bytes.
__device__ __forceinline__ void nibbles8(const uint8_t* qs, int p, int q[8]) {
    const int shift = p >= 16 ? 4 : 0;
#pragma unroll
    for (int e = 0; e < 8; e++) q[e] = (qs[p % 16 + e] >> shift) & 0x0F;
}

// Q5_0/Q5_1: add the fifth bits (bit p + e of the little-endian u32 `qh`,
// read bytewise: it sits at offset 2 or 4 of a block, not 4-aligned).
__device__ __forceinline__ void add_fifth_bits(const uint8_t* qh, int p, int q[8]) {
    const uint32_t bits = (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) |
                          ((uint32_t)qh[3] << 24);
#pragma unroll
    for (int e = 0; e < 8; e++) q[e] |= (int)((bits >> (p + e)) & 1) << 4;
}

// Q4_0, 18 bytes: d (f16), qs[16]. w = (q - 8) * d.
struct FmtQ4_0 {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 32) * 18;
        const float d = f16_at(b);
        int q[8];
        nibbles8(b + 2, i % 32, q);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = (float)(q[e] - 8) * d;
    }
};

// Q4_1, 20 bytes: d (f16), m (f16), qs[16]. w = q * d + m.
struct FmtQ4_1 {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 32) * 20;
        const float d = f16_at(b);
        const float m = f16_at(b + 2);
        int q[8];
        nibbles8(b + 4, i % 32, q);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = __fadd_rn(__fmul_rn((float)q[e], d), m);
    }
};

// Q5_0, 22 bytes: d (f16), qh (u32, bit k = fifth bit of weight k), qs[16].
// w = (q - 16) * d.
struct FmtQ5_0 {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 32) * 22;
        const float d = f16_at(b);
        int q[8];
        nibbles8(b + 6, i % 32, q);
        add_fifth_bits(b + 2, i % 32, q);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = (float)(q[e] - 16) * d;
    }
};

// Q5_1, 24 bytes: d (f16), m (f16), qh (u32), qs[16]. w = q * d + m.
struct FmtQ5_1 {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 32) * 24;
        const float d = f16_at(b);
        const float m = f16_at(b + 2);
        int q[8];
        nibbles8(b + 8, i % 32, q);
        add_fifth_bits(b + 4, i % 32, q);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = __fadd_rn(__fmul_rn((float)q[e], d), m);
    }
};

// IQ4_NL's sixteen non-linear levels (ggml's kvalues_iq4nl), indexed by
// the nibbles.
static __device__ const int8_t kIq4NlLevels[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                   1,    13,   25,  38,  53,  69,  89,  113};

// IQ4_NL, 18 bytes: d (f16), qs[16] (indices). w = d * level.
struct FmtIQ4NL {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 32) * 18;
        const float d = f16_at(b);
        int q[8];
        nibbles8(b + 2, i % 32, q);
#pragma unroll
        for (int e = 0; e < 8; e++) w[e] = d * (float)kIq4NlLevels[q[e]];
    }
};

// ---------------------------------------------------------------- K-quants
// 256-weight super-blocks. Within one, `p = i % 256` is the first of our
// eight weights; they share one sub-block (sub-blocks are 16 or 32 wide and
// p is a multiple of 8), so one scale serves all eight.

// The (scale, min) pair of sub-block j (0..8) in the 12 packed bytes shared
// by Q4_K and Q5_K (src/quant/q4_k.rs, scale_min).
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* s, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K, 144 bytes: d (f16), dmin (f16), scales[12], qs[128]. Bytes
// 32g..32g+32 of qs hold sub-block 2g in low nibbles and 2g+1 in high ones.
// w = (d * scale) * q - (dmin * min).
struct FmtQ4K {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 256) * 144;
        const int p = i % 256;
        const int j = p / 32;  // sub-block
        const int l0 = p % 32;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        const float dl = f16_at(b) * (float)sc;
        const float ml = f16_at(b + 2) * (float)m;
        // Blocks are 144 = 9 * 16 bytes and rows start 16-byte aligned, so
        // these 8 quant bytes are 8-byte aligned.
        const uint2 raw = *reinterpret_cast<const uint2*>(b + 16 + 32 * (j / 2) + l0);
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            w[e] = __fsub_rn(__fmul_rn(dl, (float)((raw.x >> (8 * e + shift)) & 0x0F)), ml);
            w[e + 4] = __fsub_rn(__fmul_rn(dl, (float)((raw.y >> (8 * e + shift)) & 0x0F)), ml);
        }
    }
};

// Q5_K, 176 bytes: d, dmin, scales[12], qh[32], qs[128]. As Q4_K, with the
// fifth bit of weight (sub-block j, offset l) at bit j of qh[l].
struct FmtQ5K {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 256) * 176;
        const int p = i % 256;
        const int j = p / 32;
        const int l0 = p % 32;
        int sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        const float dl = f16_at(b) * (float)sc;
        const float ml = f16_at(b + 2) * (float)m;
        const uint8_t* qh = b + 16 + l0;
        const uint8_t* qs = b + 48 + 32 * (j / 2) + l0;
        const int shift = (j & 1) * 4;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int q = ((qs[e] >> shift) & 0x0F) | (((qh[e] >> j) & 1) << 4);
            w[e] = __fsub_rn(__fmul_rn(dl, (float)q), ml);
        }
    }
};

// Q6_K, 210 bytes: ql[128], qh[64], scales[16] (int8), d (f16). Two halves
// of 128 weights; in half h, weight 32k + l takes its low nibble from
// ql[64h + l + 32(k & 1)] (high nibble when k >= 2), its top two bits from
// bits 2k..2k+2 of qh[32h + l], and scale 8h + 2k + l/16. w = (d * scale) * (q - 32).
struct FmtQ6K {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 256) * 210;
        const int p = i % 256;
        const int h = p / 128;
        const int k = (p % 128) / 32;
        const int l0 = p % 32;
        const int8_t scale = static_cast<int8_t>(b[192 + 8 * h + 2 * k + l0 / 16]);
        const float ds = f16_at(b + 208) * (float)scale;
        const uint8_t* ql = b + 64 * h + 32 * (k & 1) + l0;
        const uint8_t* qh = b + 128 + 32 * h + l0;
        const int lshift = k >= 2 ? 4 : 0;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int q = ((ql[e] >> lshift) & 0x0F) | (((qh[e] >> (2 * k)) & 3) << 4);
            w[e] = ds * (float)(q - 32);
        }
    }
};

// Q3_K, 110 bytes: hmask[32], qs[64], scales[12], d (f16). Two halves of
// 128 weights; in half h, weight 32k + l has low bits (qs[32h + l] >> 2k) & 3,
// and is offset by -4 unless bit 4h + k of hmask[l] is set. Sixteen 6-bit
// scales biased by 32 (src/quant/q3_k.rs, unpack_scales). w = (d * (scale - 32)) * q.
struct FmtQ3K {
    static constexpr bool WHOLE = true;
    static __device__ __forceinline__ void load8(const uint8_t* row, int i, int, float w[8]) {
        const uint8_t* b = row + (size_t)(i / 256) * 110;
        const int p = i % 256;
        const int h = p / 128;
        const int k = (p % 128) / 32;
        const int l0 = p % 32;
        const uint8_t* s = b + 96;
        const int idx = 8 * h + 2 * k + l0 / 16;
        const int low = idx < 8 ? (s[idx] & 0x0F) : (s[idx - 8] >> 4);
        const int high = (s[8 + idx % 4] >> (2 * (idx / 4))) & 3;
        const float ds = f16_at(b + 108) * (float)((low | (high << 4)) - 32);
        const uint8_t* hm = b + l0;
        const uint8_t* qs = b + 32 + 32 * h + l0;
        const int hbit = 4 * h + k;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            int q = (qs[e] >> (2 * k)) & 3;
            if (((hm[e] >> hbit) & 1) == 0) q -= 4;
            w[e] = ds * (float)q;
        }
    }
};

// One line per format: FLEA_FOR_EACH_FORMAT(X) expands X(suffix, Struct) for
// every type the kernels know. The suffixes are the kernel-name suffixes
// that src/backend/cuda/geometry.rs spells out.
#define FLEA_FOR_EACH_FORMAT(X) \
    X(f32, FmtF32)              \
    X(f16, FmtF16)              \
    X(bf16, FmtBF16)            \
    X(q4_0, FmtQ4_0)            \
    X(q4_1, FmtQ4_1)            \
    X(q5_0, FmtQ5_0)            \
    X(q5_1, FmtQ5_1)            \
    X(q8_0, FmtQ8_0)            \
    X(iq4_nl, FmtIQ4NL)         \
    X(q3_k, FmtQ3K)             \
    X(q4_k, FmtQ4K)             \
    X(q5_k, FmtQ5K)             \
    X(q6_k, FmtQ6K)

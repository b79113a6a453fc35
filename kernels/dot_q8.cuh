// Integer dot products of quantized weight blocks with 8-bit activations,
// for the decode mat-vec kernels of matvec_q8.cu.
//
// Activations (written by quantize_q8_32 / quantize_q8_k, matvec_q8.cu)
// lie in three arrays, each row of `cols` values after the previous one:
//   xq: the int8 quants, read as int words of four (row c word k at
//       xq[c * cols / 4 + k]);
//   xd: the float scale of each activation block (32 values for Q8_32,
//       256 for Q8_K), row c block b at xd[c * (cols / QK) + b];
//   xs: Q8_K only, the int sum of each 16 quants, row c at xs[c * cols / 16].
// Those are the CPU's activation values (src/quant/q8_32.rs, q8_k.rs) in a
// layout for aligned vector loads.
//
// Each weight block is split between LANES lanes of a warp; lane `part`
// (0..LANES) unpacks its share once into int8x4 words, then for every
// activation row c adds its contribution to acc[c]: integer sums with
// __dp4a, then the float scale products per block as the CPU scalar
// kernels do (src/backend/cpu/scalar.rs): d * dy first, then times the
// integer sum. A lane's share is a whole number of the CPU's integer
// sub-sums (the 4-product sums of 32-weight blocks, the 16-weight
// sub-block sums of K-quants), so its integers are exactly the CPU's; only
// where the float partial sums meet (across lanes and blocks) does the
// order differ.
#pragma once

#include "dequant.cuh"

#define FLEA_Q8_ONES 0x01010101

// `n` little-endian u32 words at `p`, which is 2-byte aligned (the
// 32-weight formats of odd size put fields there), read with aligned 32-bit
// loads; when `p` is two bytes off, the last two bytes come from a 16-bit
// load so that nothing past p + 4n is touched (the row may end there).
template <int N>
__device__ __forceinline__ void load_words_a2(const uint8_t* p, uint32_t out[N]) {
    const size_t addr = (size_t)p;
    const uint32_t* w = reinterpret_cast<const uint32_t*>(p - (addr & 3));
    if ((addr & 3) == 0) {
#pragma unroll
        for (int i = 0; i < N; i++) out[i] = w[i];
        return;
    }
    uint32_t lo = w[0];
#pragma unroll
    for (int i = 0; i < N - 1; i++) {
        const uint32_t hi = w[i + 1];
        out[i] = (lo >> 16) | (hi << 16);
        lo = hi;
    }
    const uint32_t tail = *reinterpret_cast<const uint16_t*>(p + 4 * N - 2);
    out[N - 1] = (lo >> 16) | (tail << 16);
}

// An f16 at a 2-byte aligned address.
__device__ __forceinline__ float f16_a2(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const unsigned short*>(p)));
}

// The two f16 halves of an aligned u32 (d, then m or dmin).
__device__ __forceinline__ float f16_lo(uint32_t v) { return __half2float(__ushort_as_half((unsigned short)(v & 0xFFFF))); }
__device__ __forceinline__ float f16_hi(uint32_t v) { return __half2float(__ushort_as_half((unsigned short)(v >> 16))); }

// Four unsigned bytes 0..2*bias-1 minus `bias` each, as signed bytes: adding
// 0x80 - bias cannot carry between bytes, and flipping the top bit subtracts
// 0x80 modulo 256.
__device__ __forceinline__ int minus_bytes(uint32_t v, uint32_t bias) {
    return (int)((v + (0x80u - bias) * FLEA_Q8_ONES) ^ 0x80808080u);
}

// Bits 0..3 of `b` moved to bit 4 of bytes 0..3 (Q5_0/Q5_1 fifth bits).
__device__ __forceinline__ uint32_t spread_fifth_bits(uint32_t b) {
    return ((b & 1) | ((b & 2) << 7) | ((b & 4) << 14) | ((b & 8) << 21)) << 4;
}

// Byte i (runtime 0..11) of three words, without an indexed (local-memory)
// array.
__device__ __forceinline__ int byte_of3(uint32_t s0, uint32_t s1, uint32_t s2, int i) {
    const uint32_t w = i < 4 ? s0 : (i < 8 ? s1 : s2);
    return (int)((w >> (8 * (i & 3))) & 0xFF);
}

// ---------------------------------------------------------------- 32-weight blocks (Q8_32)
// Two lanes per block. Lane `part` h takes weights 8h..8h+8 and
// 16+8h..16+8h+8 (the low and high nibbles of quant bytes 8h..8h+8 in the 4-bit
// formats): words v[0], v[1] against activation words 2h, 2h+1 and v[2],
// v[3] against words 4+2h, 5+2h.
struct Unit32 {
    int v[4];
    float d;
    float m;  // formats with a minimum (w = q * d + m), else unused
};

// The low and high nibbles of two quant words as four words of bytes.
__device__ __forceinline__ void nibble_words(const uint32_t q[2], uint32_t out[4]) {
    out[0] = q[0] & 0x0F0F0F0Fu;
    out[1] = q[1] & 0x0F0F0F0Fu;
    out[2] = (q[0] >> 4) & 0x0F0F0F0Fu;
    out[3] = (q[1] >> 4) & 0x0F0F0F0Fu;
}

// Q4_0, 18 bytes: d (f16), qs[16]. w = (q - 8) * d.
struct DotQ4_0 {
    static constexpr int BYTES = 18;
    static constexpr bool MIN = false;
    static __device__ __forceinline__ void unpack(const uint8_t* b, int h, Unit32& u) {
        u.d = f16_a2(b);
        uint32_t q[2], n[4];
        load_words_a2<2>(b + 2 + 8 * h, q);
        nibble_words(q, n);
#pragma unroll
        for (int i = 0; i < 4; i++) u.v[i] = minus_bytes(n[i], 8);
    }
};

// Q4_1, 20 bytes: d, m (f16), qs[16]. w = q * d + m.
struct DotQ4_1 {
    static constexpr int BYTES = 20;
    static constexpr bool MIN = true;
    static __device__ __forceinline__ void unpack(const uint8_t* b, int h, Unit32& u) {
        const uint32_t dm = *reinterpret_cast<const uint32_t*>(b);
        u.d = f16_lo(dm);
        u.m = f16_hi(dm);
        const uint32_t* qs = reinterpret_cast<const uint32_t*>(b + 4 + 8 * h);
        const uint32_t q[2] = {qs[0], qs[1]};
        uint32_t n[4];
        nibble_words(q, n);
#pragma unroll
        for (int i = 0; i < 4; i++) u.v[i] = (int)n[i];
    }
};

// The fifth bits of lane h's weights from Q5_0/Q5_1's `qh` (bit k = weight
// k), ORed into its nibble words.
__device__ __forceinline__ void add_fifth(uint32_t qh, int h, uint32_t n[4]) {
    n[0] |= spread_fifth_bits((qh >> (8 * h)) & 0xF);
    n[1] |= spread_fifth_bits((qh >> (8 * h + 4)) & 0xF);
    n[2] |= spread_fifth_bits((qh >> (16 + 8 * h)) & 0xF);
    n[3] |= spread_fifth_bits((qh >> (20 + 8 * h)) & 0xF);
}

// Q5_0, 22 bytes: d (f16), qh (u32), qs[16]. w = (q - 16) * d.
struct DotQ5_0 {
    static constexpr int BYTES = 22;
    static constexpr bool MIN = false;
    static __device__ __forceinline__ void unpack(const uint8_t* b, int h, Unit32& u) {
        u.d = f16_a2(b);
        uint32_t qh[1], q[2], n[4];
        load_words_a2<1>(b + 2, qh);
        load_words_a2<2>(b + 6 + 8 * h, q);
        nibble_words(q, n);
        add_fifth(qh[0], h, n);
#pragma unroll
        for (int i = 0; i < 4; i++) u.v[i] = minus_bytes(n[i], 16);
    }
};

// Q5_1, 24 bytes: d, m (f16), qh (u32), qs[16]. w = q * d + m.
struct DotQ5_1 {
    static constexpr int BYTES = 24;
    static constexpr bool MIN = true;
    static __device__ __forceinline__ void unpack(const uint8_t* b, int h, Unit32& u) {
        const uint32_t* words = reinterpret_cast<const uint32_t*>(b);
        u.d = f16_lo(words[0]);
        u.m = f16_hi(words[0]);
        const uint2 qs = *reinterpret_cast<const uint2*>(b + 8 + 8 * h);
        const uint32_t q[2] = {qs.x, qs.y};
        uint32_t n[4];
        nibble_words(q, n);
        add_fifth(words[1], h, n);
#pragma unroll
        for (int i = 0; i < 4; i++) u.v[i] = (int)n[i];
    }
};

// Q8_0, 34 bytes: d (f16), qs[32] (int8). w = d * q.
struct DotQ8_0 {
    static constexpr int BYTES = 34;
    static constexpr bool MIN = false;
    static __device__ __forceinline__ void unpack(const uint8_t* b, int h, Unit32& u) {
        u.d = f16_a2(b);
        uint32_t lo[2], hi[2];
        load_words_a2<2>(b + 2 + 8 * h, lo);
        load_words_a2<2>(b + 18 + 8 * h, hi);
        u.v[0] = (int)lo[0];
        u.v[1] = (int)lo[1];
        u.v[2] = (int)hi[0];
        u.v[3] = (int)hi[1];
    }
};

// IQ4_NL, 18 bytes: d (f16), qs[16] (indices into kIq4NlLevels). w = d * level.
struct DotIQ4NL {
    static constexpr int BYTES = 18;
    static constexpr bool MIN = false;
    static __device__ __forceinline__ void unpack(const uint8_t* b, int h, Unit32& u) {
        u.d = f16_a2(b);
        uint32_t q[2], n[4];
        load_words_a2<2>(b + 2 + 8 * h, q);
        nibble_words(q, n);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t v = 0;
#pragma unroll
            for (int e = 0; e < 4; e++) v |= (uint32_t)(uint8_t)kIq4NlLevels[(n[i] >> (8 * e)) & 0xF] << (8 * e);
            u.v[i] = (int)v;
        }
    }
};

// One 32-weight block against NC activation rows. CPU order per block and
// row: dd = d * dy, the quants' integer sum times dd, and for formats with a
// minimum (m * dy) times the integer sum of the activation quants.
template <typename F>
struct Block32 {
    static constexpr int QK = 32;
    static constexpr int LANES = 2;
    static constexpr int BYTES = F::BYTES;

    template <int NC>
    static __device__ __forceinline__ void dot(const uint8_t* blk, int part, int b, int cols, const int* __restrict__ xq,
                                               const float* __restrict__ xd, const int* __restrict__, float acc[NC]) {
        Unit32 u;
        F::unpack(blk, part, u);
        const int blocks_per_row = cols / QK;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int* x = xq + (size_t)c * (cols / 4) + 8 * b;
            const uint2 lo = *reinterpret_cast<const uint2*>(x + 2 * part);
            const uint2 hi = *reinterpret_cast<const uint2*>(x + 4 + 2 * part);
            int s = __dp4a(u.v[0], (int)lo.x, 0);
            s = __dp4a(u.v[1], (int)lo.y, s);
            s = __dp4a(u.v[2], (int)hi.x, s);
            s = __dp4a(u.v[3], (int)hi.y, s);
            const float dy = xd[(size_t)c * blocks_per_row + b];
            acc[c] = fmaf(u.d * dy, (float)s, acc[c]);
            if (F::MIN) {
                int ys = __dp4a(FLEA_Q8_ONES, (int)lo.x, 0);
                ys = __dp4a(FLEA_Q8_ONES, (int)lo.y, ys);
                ys = __dp4a(FLEA_Q8_ONES, (int)hi.x, ys);
                ys = __dp4a(FLEA_Q8_ONES, (int)hi.y, ys);
                acc[c] = fmaf(u.m * dy, (float)ys, acc[c]);
            }
        }
    }
};

// ---------------------------------------------------------------- K-quants (Q8_K)
// Eight lanes per 256-weight super-block, 32 weights each.

// The dot of four weight words with four activation words.
__device__ __forceinline__ int dot4(const uint32_t v[4], const uint4 a) {
    int s = __dp4a((int)v[0], (int)a.x, 0);
    s = __dp4a((int)v[1], (int)a.y, s);
    s = __dp4a((int)v[2], (int)a.z, s);
    return __dp4a((int)v[3], (int)a.w, s);
}

// The (scale, min) pair of sub-block j (0..8, runtime) from Q4_K/Q5_K's 12
// packed bytes (src/quant/q4_k.rs, scale_min) held in three words.
__device__ __forceinline__ void scale_min_words(int j, uint32_t s0, uint32_t s1, uint32_t s2, int* sc, int* m) {
    if (j < 4) {
        *sc = byte_of3(s0, s1, s2, j) & 63;
        *m = byte_of3(s0, s1, s2, j + 4) & 63;
    } else {
        *sc = (byte_of3(s0, s1, s2, j + 4) & 0x0F) | ((byte_of3(s0, s1, s2, j - 4) >> 6) << 4);
        *m = (byte_of3(s0, s1, s2, j + 4) >> 4) | ((byte_of3(s0, s1, s2, j) >> 6) << 4);
    }
}

// Q4_K (144 bytes: d, dmin, scales[12], qs[128]) and Q5_K (176 bytes: the
// same, then qh[32] before qs). Lane `part` j takes quant bytes
// 32g + l0 .. +16 (g = j / 2, l0 = 16 (j % 2)): the 16 weights 64g + l0 ..
// of sub-block 2g (low nibbles) and the 16 weights 64g + 32 + l0 .. of
// sub-block 2g + 1 (high nibbles), each one 16-weight activation sub-sum.
// CPU per super-block (Finish::Min): acc + (d * dy) * main - (dmin * dy) *
// corr, main the scaled quant sums, corr the minimums times the activation
// sums.
template <bool FIVE>
struct BlockQ45K {
    static constexpr int QK = 256;
    static constexpr int LANES = 8;
    static constexpr int BYTES = FIVE ? 176 : 144;

    template <int NC>
    static __device__ __forceinline__ void dot(const uint8_t* blk, int part, int b, int cols, const int* __restrict__ xq,
                                               const float* __restrict__ xd, const int* __restrict__ xs, float acc[NC]) {
        const int g = part / 2;
        const int l0 = 16 * (part % 2);
        // Blocks are whole multiples of 16 bytes and rows 16-byte aligned.
        const uint4 head = *reinterpret_cast<const uint4*>(blk);  // d, dmin, scales[0..12]
        const float d = f16_lo(head.x);
        const float dmin = f16_hi(head.x);
        int sc_lo, m_lo, sc_hi, m_hi;
        scale_min_words(2 * g, head.y, head.z, head.w, &sc_lo, &m_lo);
        scale_min_words(2 * g + 1, head.y, head.z, head.w, &sc_hi, &m_hi);
        const uint4 q = *reinterpret_cast<const uint4*>(blk + (FIVE ? 48 : 16) + 32 * g + l0);
        const uint32_t qw[4] = {q.x, q.y, q.z, q.w};
        uint32_t lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            lo[i] = qw[i] & 0x0F0F0F0Fu;
            hi[i] = (qw[i] >> 4) & 0x0F0F0F0Fu;
        }
        if (FIVE) {
            // Bit j of qh[l] is the fifth bit of weight l of sub-block j.
            const uint4 h = *reinterpret_cast<const uint4*>(blk + 16 + l0);
            const uint32_t hw[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                lo[i] |= ((hw[i] >> (2 * g)) & FLEA_Q8_ONES) << 4;
                hi[i] |= ((hw[i] >> (2 * g + 1)) & FLEA_Q8_ONES) << 4;
            }
        }
        const int first = 64 * g + l0;  // our first weight of sub-block 2g
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int* x = xq + (size_t)c * (cols / 4) + 64 * b;
            const uint4 a_lo = *reinterpret_cast<const uint4*>(x + first / 4);
            const uint4 a_hi = *reinterpret_cast<const uint4*>(x + (first + 32) / 4);
            const int main = sc_lo * dot4(lo, a_lo) + sc_hi * dot4(hi, a_hi);
            const int* sums = xs + (size_t)c * (cols / 16) + 16 * b;
            const int corr = m_lo * sums[first / 16] + m_hi * sums[(first + 32) / 16];
            const float dy = xd[(size_t)c * (cols / QK) + b];
            acc[c] = acc[c] + (d * dy) * (float)main - (dmin * dy) * (float)corr;
        }
    }
};

// Q6_K (210 bytes: ql[128], qh[64], scales[16] int8, d) and Q3_K (110 bytes:
// hmask[32], qs[64], scales[12] packed 6-bit, d) split alike: two halves of
// 128 weights, weight 32k + l of half h in the 16-weight sub-block
// 8h + 2k + l / 16. Lane `part` j takes half h = j / 4 and l in l0 .. l0 + 8
// (l0 = 8 (j % 4)) for k = 0..3: 32 weights, one scale per k. The quants
// are made signed (Q6_K: q - 32, Q3_K: low bits - 4 unless the high bit
// is set), so the integer sum is the CPU's `main - corr` exactly
// (Finish::Offset: acc + (d * dy) * (main - corr)).
struct BlockQ6K {
    static constexpr int QK = 256;
    static constexpr int LANES = 8;
    static constexpr int BYTES = 210;

    // Signed quant words for k = 0..3 (two words each) and the four scales.
    static __device__ __forceinline__ float unpack(const uint8_t* blk, int h, int l0, uint32_t v[4][2], int sc[4]) {
        uint32_t ql_a[2], ql_b[2], qh[2], s[2];
        load_words_a2<2>(blk + 64 * h + l0, ql_a);       // k = 0 (low), 2 (high)
        load_words_a2<2>(blk + 64 * h + 32 + l0, ql_b);  // k = 1 (low), 3 (high)
        load_words_a2<2>(blk + 128 + 32 * h + l0, qh);
        load_words_a2<2>(blk + 192 + 8 * h, s);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t* src = (k & 1) ? ql_b : ql_a;
            const int shift = k >= 2 ? 4 : 0;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const uint32_t q = ((src[i] >> shift) & 0x0F0F0F0Fu) | (((qh[i] >> (2 * k)) & 0x03030303u) << 4);
                v[k][i] = (uint32_t)minus_bytes(q, 32);
            }
            const int idx = 2 * k + l0 / 16;  // scale 8h + idx
            sc[k] = (int)(int8_t)(((idx < 4 ? s[0] : s[1]) >> (8 * (idx % 4))) & 0xFF);
        }
        return f16_a2(blk + 208);
    }
};

struct BlockQ3K {
    static constexpr int QK = 256;
    static constexpr int LANES = 8;
    static constexpr int BYTES = 110;

    static __device__ __forceinline__ float unpack(const uint8_t* blk, int h, int l0, uint32_t v[4][2], int sc[4]) {
        uint32_t hm[2], qs[2], s[3];
        load_words_a2<2>(blk + l0, hm);
        load_words_a2<2>(blk + 32 + 32 * h + l0, qs);
        load_words_a2<3>(blk + 96, s);
#pragma unroll
        for (int k = 0; k < 4; k++) {
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const uint32_t low = (qs[i] >> (2 * k)) & 0x03030303u;
                const uint32_t high = ((hm[i] >> (4 * h + k)) & FLEA_Q8_ONES) << 2;
                v[k][i] = (uint32_t)minus_bytes(low | high, 4);
            }
            // Sixteen 6-bit scales biased by 32 (src/quant/q3_k.rs, unpack_scales).
            const int idx = 8 * h + 2 * k + l0 / 16;
            const int low = idx < 8 ? (byte_of3(s[0], s[1], s[2], idx) & 0x0F) : (byte_of3(s[0], s[1], s[2], idx - 8) >> 4);
            const int high = (byte_of3(s[0], s[1], s[2], 8 + idx % 4) >> (2 * (idx / 4))) & 3;
            sc[k] = (low | (high << 4)) - 32;
        }
        return f16_a2(blk + 108);
    }
};

template <typename U>
struct BlockSigned256 {
    static constexpr int QK = 256;
    static constexpr int LANES = 8;
    static constexpr int BYTES = U::BYTES;

    template <int NC>
    static __device__ __forceinline__ void dot(const uint8_t* blk, int part, int b, int cols, const int* __restrict__ xq,
                                               const float* __restrict__ xd, const int* __restrict__, float acc[NC]) {
        const int h = part / 4;
        const int l0 = 8 * (part % 4);
        uint32_t v[4][2];
        int sc[4];
        const float d = U::unpack(blk, h, l0, v, sc);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const int* x = xq + (size_t)c * (cols / 4) + 64 * b + (128 * h + l0) / 4;
            int sum = 0;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const uint2 a = *reinterpret_cast<const uint2*>(x + 8 * k);
                sum += sc[k] * __dp4a((int)v[k][1], (int)a.y, __dp4a((int)v[k][0], (int)a.x, 0));
            }
            const float dy = xd[(size_t)c * (cols / QK) + b];
            acc[c] = acc[c] + (d * dy) * (float)sum;
        }
    }
};

// One line per quantized format: FLEA_FOR_EACH_Q8_FORMAT(X) expands
// X(suffix, Dot, activation kind) for every format with an integer
// mat-vec; the suffixes are those of FLEA_FOR_EACH_FORMAT.
#define FLEA_FOR_EACH_Q8_FORMAT(X)     \
    X(q4_0, Block32<DotQ4_0>)          \
    X(q4_1, Block32<DotQ4_1>)          \
    X(q5_0, Block32<DotQ5_0>)          \
    X(q5_1, Block32<DotQ5_1>)          \
    X(q8_0, Block32<DotQ8_0>)          \
    X(iq4_nl, Block32<DotIQ4NL>)       \
    X(q3_k, BlockSigned256<BlockQ3K>)  \
    X(q4_k, BlockQ45K<false>)          \
    X(q5_k, BlockQ45K<true>)           \
    X(q6_k, BlockSigned256<BlockQ6K>)

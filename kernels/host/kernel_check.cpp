// The CUDA kernels of kernels/*.cu compiled for the host and run on the
// CPU through the emulator in shim.h, so their indexing, reductions and
// block formats are checked on machines without a GPU. tests/gpu.rs
// compiles and runs this in every `cargo test`.
//
//   kernel_check dequant FORMAT ROWS COLS WEIGHTS.bin EXPECTED.f32 REL_TOL
//       Fmt::load8 over every 8-weight group of every row against expected
//       f32 values (REL_TOL 0: bit for bit). The test feeds it the fixtures
//       and the Rust decoders' output.
//   kernel_check kernels
//       Every kernel on random inputs against straightforward references
//       computed here in double precision (the block decoders they use are
//       the ones `dequant` holds to the Rust code).
//
// Exit status 0 when everything agrees, 1 on a mismatch (the first ones are
// printed), 2 on bad usage. Launches use the kernels' own geometry
// (kernels/geometry.h), the numbers src/backend/cuda/geometry.rs launches
// with.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../argmax.cu"
#include "../attention.cu"
#include "../elementwise.cu"
#include "../embed.cu"
#include "../matmul.cu"
#include "../matvec.cu"
#include "../matvec_q8.cu"
#include "../norm.cu"
#include "../rope.cu"

// Weights one embedding block covers.
static const unsigned EMBED_PER_BLOCK = FLEA_EMBED_THREADS * FLEA_EMBED_WEIGHTS_PER_THREAD;

static long g_failures = 0;

static bool expect_close(const char* what, long i, double got, double want, double tol) {
    if (std::fabs(got - want) <= tol) return true;
    if (g_failures++ < 8) std::printf("%s [%ld]: kernel %.9g, reference %.9g (tol %.3g)\n", what, i, got, want, tol);
    return false;
}

// ------------------------------------------------------------------ data

struct Rng {
    uint64_t s;
    uint64_t next() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        return s;
    }
    float uniform(float lo, float hi) { return lo + (hi - lo) * (float)(next() >> 40) / (float)(1u << 24); }
    std::vector<float> floats(size_t n) {
        std::vector<float> v(n);
        for (auto& x : v) x = uniform(-1.0f, 1.0f);
        return v;
    }
    // A finite f16 of moderate size (|v| in about [2^-10, 2^-2]), random sign.
    uint16_t f16_scale() {
        const uint16_t exp = 5 + (uint16_t)(next() % 9);
        return (uint16_t)(((next() & 1) << 15) | (exp << 10) | (next() & 1023));
    }
    uint16_t f16_unit() {  // |v| < 1
        const uint16_t exp = 10 + (uint16_t)(next() % 5);
        return (uint16_t)(((next() & 1) << 15) | (exp << 10) | (next() & 1023));
    }
};

struct FormatInfo {
    const char* name;
    int block_weights, block_bytes;
    std::vector<int> f16_offsets;  // scale fields to make finite
};

// In the order of FLEA_FOR_EACH_FORMAT (KERNELS below is built from it).
static const FormatInfo FORMATS[] = {
    {"f32", 1, 4, {}},          {"f16", 1, 2, {}},          {"bf16", 1, 2, {}},
    {"q4_0", 32, 18, {0}},      {"q4_1", 32, 20, {0, 2}},   {"q5_0", 32, 22, {0}},
    {"q5_1", 32, 24, {0, 2}},   {"q8_0", 32, 34, {0}},      {"iq4_nl", 32, 18, {0}},
    {"q3_k", 256, 110, {108}},  {"q4_k", 256, 144, {0, 2}}, {"q5_k", 256, 176, {0, 2}},
    {"q6_k", 256, 210, {208}},
};
static constexpr size_t N_FORMATS = sizeof(FORMATS) / sizeof(FORMATS[0]);

static int test_cols(const FormatInfo& f) {
    if (f.block_weights == 1) return 77;
    if (f.block_weights == 32) return 96;
    return 512;
}

static std::vector<uint8_t> random_weights(const FormatInfo& f, int rows, int cols, Rng& rng) {
    const size_t row_bytes = (size_t)cols / f.block_weights * f.block_bytes;
    std::vector<uint8_t> w(rows * row_bytes);
    const std::string name = f.name;
    if (name == "f32") {
        for (size_t i = 0; i < w.size(); i += 4) {
            const float v = rng.uniform(-1, 1);
            std::memcpy(&w[i], &v, 4);
        }
    } else if (name == "f16") {
        for (size_t i = 0; i < w.size(); i += 2) {
            const uint16_t h = rng.f16_unit();
            std::memcpy(&w[i], &h, 2);
        }
    } else if (name == "bf16") {
        for (size_t i = 0; i < w.size(); i += 2) {
            const float v = rng.uniform(-1, 1);
            uint32_t bits;
            std::memcpy(&bits, &v, 4);
            const uint16_t h = (uint16_t)(bits >> 16);
            std::memcpy(&w[i], &h, 2);
        }
    } else {
        for (auto& b : w) b = (uint8_t)rng.next();
        for (size_t b = 0; b < w.size(); b += f.block_bytes) {
            for (int o : f.f16_offsets) {
                const uint16_t h = rng.f16_scale();
                std::memcpy(&w[b + o], &h, 2);
            }
        }
    }
    return w;
}

// ------------------------------------------------------------------ kernels by format

using MatvecFn = void (*)(const uint8_t*, unsigned long long, int, int, const float*, float*);
using MatmulFn = void (*)(const uint8_t*, unsigned long long, int, int, const float*, float*, int);
using EmbedFn = void (*)(float*, const uint8_t*, unsigned long long, const int*, int);
using Load8Fn = void (*)(const uint8_t*, int, int, float*);

struct Kernels {
    MatvecFn matvec[8];
    MatmulFn matmul;
    EmbedFn embed;
    Load8Fn load8;
};

#define FLEA_KERNEL_TABLE(suffix, Fmt)                                                                  \
    {{matvec_##suffix##_1, matvec_##suffix##_2, matvec_##suffix##_3, matvec_##suffix##_4,               \
      matvec_##suffix##_5, matvec_##suffix##_6, matvec_##suffix##_7, matvec_##suffix##_8},              \
     matmul_##suffix, embed_##suffix, [](const uint8_t* r, int i, int c, float* w) { Fmt::load8(r, i, c, w); }},

static const Kernels KERNELS[] = {FLEA_FOR_EACH_FORMAT(FLEA_KERNEL_TABLE)};
static_assert(sizeof(KERNELS) / sizeof(KERNELS[0]) == N_FORMATS, "FORMATS and FLEA_FOR_EACH_FORMAT disagree");

static std::vector<double> dequant_row(const Kernels& k, const uint8_t* row, int cols) {
    std::vector<double> out(cols);
    for (int i = 0; i < cols; i += 8) {
        float w[8];
        k.load8(row, i, cols, w);
        for (int e = 0; e < 8 && i + e < cols; e++) out[i + e] = w[e];
    }
    return out;
}

// ------------------------------------------------------------------ checks

static void check_products(Rng& rng) {
    const int rows = 9;  // a partial matvec block and a partial tile
    for (size_t fi = 0; fi < N_FORMATS; fi++) {
        const FormatInfo& f = FORMATS[fi];
        const Kernels& k = KERNELS[fi];
        const int cols = test_cols(f);
        const std::vector<uint8_t> w = random_weights(f, rows, cols, rng);
        const size_t row_bytes = w.size() / rows;
        for (int n : {1, 3, 8, 11}) {
            const std::vector<float> x = rng.floats((size_t)n * cols);
            std::vector<double> want((size_t)n * rows), mag((size_t)n * rows);
            for (int r = 0; r < rows; r++) {
                const std::vector<double> d = dequant_row(k, &w[r * row_bytes], cols);
                for (int p = 0; p < n; p++) {
                    double s = 0, m = 0;
                    for (int c = 0; c < cols; c++) {
                        s += d[c] * x[(size_t)p * cols + c];
                        m += std::fabs(d[c] * x[(size_t)p * cols + c]);
                    }
                    want[(size_t)p * rows + r] = s;
                    mag[(size_t)p * rows + r] = m;
                }
            }
            std::string what;
            if (n <= 8) {
                std::vector<float> y((size_t)n * rows, NAN);
                simt::launch(k.matvec[n - 1], dim3{(rows + FLEA_MATVEC_ROWS_PER_BLOCK - 1) / FLEA_MATVEC_ROWS_PER_BLOCK, 1, 1}, dim3{32, FLEA_MATVEC_ROWS_PER_BLOCK, 1}, w.data(),
                             (unsigned long long)row_bytes, rows, cols, x.data(), y.data());
                what = std::string("matvec_") + f.name + "_" + std::to_string(n);
                for (size_t i = 0; i < y.size(); i++) expect_close(what.c_str(), i, y[i], want[i], 1e-5 * mag[i] + 1e-6);
            }
            std::vector<float> y((size_t)n * rows, NAN);
            simt::launch(k.matmul, dim3{(rows + FLEA_MATMUL_TILE_ROWS - 1) / FLEA_MATMUL_TILE_ROWS, (unsigned)(n + FLEA_MATMUL_TILE_POS - 1) / FLEA_MATMUL_TILE_POS, 1},
                         dim3{FLEA_MATMUL_THREADS, 1, 1}, w.data(),
                         (unsigned long long)row_bytes, rows, cols, x.data(), y.data(), n);
            what = std::string("matmul_") + f.name + " n=" + std::to_string(n);
            for (size_t i = 0; i < y.size(); i++) expect_close(what.c_str(), i, y[i], want[i], 1e-5 * mag[i] + 1e-6);
        }

        // The tiled kernel over more than one tile each way: 70 rows, 70
        // positions (2 x 2 tiles of 64).
        {
            const int big = 70;
            const std::vector<uint8_t> wb = random_weights(f, big, cols, rng);
            const std::vector<float> x = rng.floats((size_t)big * cols);
            std::vector<float> y((size_t)big * big, NAN);
            simt::launch(k.matmul, dim3{2, 2, 1}, dim3{FLEA_MATMUL_THREADS, 1, 1}, wb.data(), (unsigned long long)row_bytes, big, cols,
                         x.data(), y.data(), big);
            const std::string what = std::string("matmul_") + f.name + " 70x70";
            for (int r = 0; r < big; r++) {
                const std::vector<double> d = dequant_row(k, &wb[r * row_bytes], cols);
                for (int p = 0; p < big; p++) {
                    double s = 0, m = 0;
                    for (int c = 0; c < cols; c++) {
                        s += d[c] * x[(size_t)p * cols + c];
                        m += std::fabs(d[c] * x[(size_t)p * cols + c]);
                    }
                    expect_close(what.c_str(), (long)p * big + r, y[(size_t)p * big + r], s, 1e-5 * m + 1e-6);
                }
            }
        }

        // embed: rows named by token ids, bit for bit the decoder's values.
        const std::vector<int> tokens = {8, 0, 3, 3};
        std::vector<float> out(tokens.size() * cols, NAN);
        simt::launch(k.embed, dim3{(unsigned)(cols + EMBED_PER_BLOCK - 1) / EMBED_PER_BLOCK, (unsigned)tokens.size(), 1},
                     dim3{FLEA_EMBED_THREADS, 1, 1},
                     out.data(), w.data(), (unsigned long long)row_bytes, tokens.data(), cols);
        for (size_t p = 0; p < tokens.size(); p++) {
            const std::vector<double> d = dequant_row(k, &w[tokens[p] * row_bytes], cols);
            for (int c = 0; c < cols; c++) {
                expect_close((std::string("embed_") + f.name).c_str(), (long)(p * cols + c), out[p * cols + c], d[c], 0.0);
            }
        }
    }
}

// ------------------------------------------------------------------ 8-bit activations

// The CPU's activation quantization (src/quant/q8_k.rs, q8_32.rs), the
// reference the device quantizers must equal bit for bit.
static void quantize_reference(const std::vector<float>& x, int qk, bool f16_scale, std::vector<int8_t>& q,
                               std::vector<float>& d) {
    q.assign(x.size(), 0);
    d.assign(x.size() / qk, 0.0f);
    for (size_t b = 0; b < d.size(); b++) {
        float amax = 0.0f;
        for (int i = 0; i < qk; i++) amax = std::fmax(amax, std::fabs(x[b * qk + i]));
        if (!(amax > 0.0f)) continue;
        const float iscale = 127.0f / amax;
        for (int i = 0; i < qk; i++) {
            volatile float v = x[b * qk + i] * iscale;
            q[b * qk + i] = (int8_t)std::fmin(std::fmax(std::nearbyint(v), -127.0f), 127.0f);
        }
        d[b] = f16_scale ? __half2float(__float2half_rn(amax / 127.0f)) : 1.0f / iscale;
    }
}

using MatvecQ8Fn = void (*)(const uint8_t*, unsigned long long, int, int, const int*, const float*, const int*, float*);

struct Q8Kernels {
    const char* name;
    MatvecQ8Fn matvec[8];
};

#define FLEA_Q8_KERNEL_TABLE(suffix, Dot)                                                                             \
    {#suffix,                                                                                                         \
     {matvec_q8_##suffix##_1, matvec_q8_##suffix##_2, matvec_q8_##suffix##_3, matvec_q8_##suffix##_4,                \
      matvec_q8_##suffix##_5, matvec_q8_##suffix##_6, matvec_q8_##suffix##_7, matvec_q8_##suffix##_8}},

static const Q8Kernels Q8_KERNELS[] = {FLEA_FOR_EACH_Q8_FORMAT(FLEA_Q8_KERNEL_TABLE)};

// quantize_q8_32 / quantize_q8_k against the CPU's quantization (exact,
// ties included), then every matvec_q8_<fmt>_<NC> against the dequantized
// weights times the dequantized activations in double. The integer sums
// are exact and each block's float steps round a few times, so the
// tolerance is a few float ulps of the sum of magnitudes.
static void check_q8_matvec(Rng& rng) {
    const int rows = 9;  // a partial block of warps
    for (const Q8Kernels& k : Q8_KERNELS) {
        size_t fi = 0;
        while (std::strcmp(FORMATS[fi].name, k.name) != 0) fi++;
        const FormatInfo& f = FORMATS[fi];
        const bool kquant = f.block_weights == 256;
        // More blocks than one warp step covers (16 or 4), and a partial step.
        const int cols = kquant ? 256 * 6 : 32 * 24;
        const std::vector<uint8_t> w = random_weights(f, rows, cols, rng);
        const size_t row_bytes = w.size() / rows;
        for (int n = 1; n <= 8; n++) {
            std::vector<float> x = rng.floats((size_t)n * cols);
            // Block 0 scales by exactly 1, so x.5 values test the tie rule.
            x[0] = 127.0f, x[1] = 2.5f, x[2] = -3.5f;
            if (n > 1)  // an all-zero block
                for (int i = 0; i < (kquant ? 256 : 32); i++) x[(size_t)cols + i] = 0.0f;
            const int qk = kquant ? 256 : 32;
            const int n_values = n * cols;
            std::vector<int> xq(n_values / 4, 0x55555555), xs(n_values / 16, -1);
            std::vector<float> xd(n_values / qk, NAN);
            const unsigned grid = (unsigned)((n_values + 256 * FLEA_QUANTIZE_WARPS - 1) / (256 * FLEA_QUANTIZE_WARPS));
            if (kquant)
                simt::launch(quantize_q8_k, dim3{grid, 1, 1}, dim3{32, FLEA_QUANTIZE_WARPS, 1}, x.data(), xq.data(), xd.data(),
                             xs.data(), n_values);
            else
                simt::launch(quantize_q8_32, dim3{grid, 1, 1}, dim3{32, FLEA_QUANTIZE_WARPS, 1}, x.data(), xq.data(), xd.data(),
                             n_values);
            std::vector<int8_t> rq;
            std::vector<float> rd;
            quantize_reference(x, qk, !kquant, rq, rd);
            const int8_t* gq = reinterpret_cast<const int8_t*>(xq.data());
            const std::string qname = kquant ? "quantize_q8_k" : "quantize_q8_32";
            for (int i = 0; i < n_values; i++) expect_close(qname.c_str(), i, gq[i], rq[i], 0.0);
            for (size_t b = 0; b < rd.size(); b++) expect_close((qname + " scale").c_str(), (long)b, xd[b], rd[b], 0.0);
            if (kquant) {
                for (int s = 0; s < n_values / 16; s++) {
                    int sum = 0;
                    for (int i = 0; i < 16; i++) sum += rq[16 * s + i];
                    expect_close("quantize_q8_k sums", s, xs[s], sum, 0.0);
                }
            }

            std::vector<float> y((size_t)n * rows, NAN);
            simt::launch(k.matvec[n - 1], dim3{(rows + FLEA_MATVEC_ROWS_PER_BLOCK - 1) / FLEA_MATVEC_ROWS_PER_BLOCK, 1, 1},
                         dim3{32, FLEA_MATVEC_ROWS_PER_BLOCK, 1}, w.data(), (unsigned long long)row_bytes, rows, cols,
                         xq.data(), xd.data(), xs.data(), y.data());
            const std::string what = std::string("matvec_q8_") + k.name + "_" + std::to_string(n);
            for (int r = 0; r < rows; r++) {
                const std::vector<double> dw = dequant_row(KERNELS[fi], &w[r * row_bytes], cols);
                for (int p = 0; p < n; p++) {
                    double s = 0, m = 0;
                    for (int c = 0; c < cols; c++) {
                        const size_t i = (size_t)p * cols + c;
                        const double a = (double)rd[i / qk] * rq[i];
                        s += dw[c] * a;
                        m += std::fabs(dw[c] * a);
                    }
                    expect_close(what.c_str(), (long)p * rows + r, y[(size_t)p * rows + r], s, 2e-6 * m + 1e-9);
                }
            }
        }
    }
}

static void check_norms(Rng& rng) {
    const int n = 3, dim = 300;
    const float eps = 1e-5f;
    const std::vector<float> x = rng.floats((size_t)n * dim), w = rng.floats(dim);
    std::vector<float> out((size_t)n * dim, NAN);
    simt::launch(rmsnorm, dim3{(unsigned)n, 1, 1}, dim3{FLEA_ROW_THREADS, 1, 1}, out.data(), x.data(), w.data(), dim, eps);
    std::vector<double> want((size_t)n * dim);
    for (int p = 0; p < n; p++) {
        double ss = 0;
        for (int i = 0; i < dim; i++) ss += (double)x[p * dim + i] * x[p * dim + i];
        const double scale = 1.0 / std::sqrt(ss / dim + eps);
        for (int i = 0; i < dim; i++) want[p * dim + i] = x[p * dim + i] * scale * w[i];
    }
    for (size_t i = 0; i < out.size(); i++) expect_close("rmsnorm", i, out[i], want[i], 1e-5 * (1 + std::fabs(want[i])));
    const std::vector<int> src = {2, 0};
    std::vector<float> g(2 * dim, NAN);
    simt::launch(rmsnorm_gather, dim3{2, 1, 1}, dim3{FLEA_ROW_THREADS, 1, 1}, g.data(), x.data(), w.data(), src.data(), dim, eps);
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < dim; i++)
            expect_close("rmsnorm_gather", m * dim + i, g[m * dim + i], out[src[m] * dim + i], 0.0);
}

static void check_rope_and_cache(Rng& rng) {
    const int n_heads = 4, head_dim = 64, n_ctx = 20;
    for (int rope_dims : {64, 32}) {
        const int half = rope_dims / 2;
        std::vector<float> table((size_t)n_ctx * half * 2);
        for (int p = 0; p < n_ctx; p++)
            for (int i = 0; i < half; i++) {
                const double a = p * std::pow(10000.0, -2.0 * i / rope_dims);
                table[(p * half + i) * 2] = (float)std::cos(a);
                table[(p * half + i) * 2 + 1] = (float)std::sin(a);
            }
        const std::vector<int> pos = {0, 5, 19};
        const int n = (int)pos.size();
        std::vector<float> x = rng.floats((size_t)n * n_heads * head_dim);
        const std::vector<float> x0 = x;
        const int pairs = n * n_heads * half;
        simt::launch(rope, dim3{(unsigned)(pairs + FLEA_ELEMENTWISE_THREADS - 1) / FLEA_ELEMENTWISE_THREADS, 1, 1},
                     dim3{FLEA_ELEMENTWISE_THREADS, 1, 1}, x.data(),
                     reinterpret_cast<const float2*>(table.data()), pos.data(), n, n_heads, head_dim, half, 0);
        for (int r = 0; r < n; r++)
            for (int h = 0; h < n_heads; h++)
                for (int i = 0; i < head_dim / 2; i++) {
                    const size_t at = ((size_t)r * n_heads + h) * head_dim + 2 * i;
                    double a = x0[at], b = x0[at + 1];
                    if (i < half) {
                        const double c = table[(pos[r] * half + i) * 2], s = table[(pos[r] * half + i) * 2 + 1];
                        const double a2 = a * c - b * s, b2 = a * s + b * c;
                        a = a2;
                        b = b2;
                    }
                    expect_close("rope", (long)at, x[at], a, 1e-6);
                    expect_close("rope", (long)at + 1, x[at + 1], b, 1e-6);
                }
    }

    // kv_store: rows land at (seq, pos) of a [seq][n_ctx][kv_dim] cache.
    const int kv_dim = 16, n_seq = 2;
    std::vector<float> kc((size_t)n_seq * n_ctx * kv_dim, 0), vc(kc.size(), 0);
    const std::vector<int> seq = {1, 0, 1}, pos = {3, 19, 4};
    const std::vector<float> k = rng.floats(3 * kv_dim), v = rng.floats(3 * kv_dim);
    simt::launch(kv_store, dim3{1, 1, 1}, dim3{FLEA_ELEMENTWISE_THREADS, 1, 1}, kc.data(), vc.data(), k.data(), v.data(), seq.data(),
                 pos.data(), 3, kv_dim, n_ctx);
    for (int r = 0; r < 3; r++)
        for (int e = 0; e < kv_dim; e++) {
            const size_t at = ((size_t)seq[r] * n_ctx + pos[r]) * kv_dim + e;
            expect_close("kv_store k", (long)at, kc[at], k[r * kv_dim + e], 0.0);
            expect_close("kv_store v", (long)at, vc[at], v[r * kv_dim + e], 0.0);
        }
}

// The attention problem the kernels are checked on: GQA (8 heads over 2 kv
// heads), head_dim 80 (even, not a multiple of 32: lanes 8.. hold fewer
// pairs), two sequences of n_ctx positions of random history.
struct AttentionCase {
    int n_heads = 8, n_kv = 2, head_dim = 80, n_ctx = 40, n_seq = 2;
    int kv_dim() const { return n_kv * head_dim; }
    int q_dim() const { return n_heads * head_dim; }
    float scale() const { return 1.0f / std::sqrt((float)head_dim); }
};

// Causal attention of the rows (seq, pos), each seeing its sequence's last
// `window` positions up to pos (0: all), in double precision.
static std::vector<double> attention_reference(const AttentionCase& c, const std::vector<float>& q,
                                               const std::vector<float>& kc, const std::vector<float>& vc,
                                               const std::vector<int>& seq, const std::vector<int>& pos, int window) {
    const int kv_dim = c.kv_dim(), q_dim = c.q_dim(), n = (int)seq.size();
    std::vector<double> out((size_t)n * q_dim);
    for (int r = 0; r < n; r++)
        for (int h = 0; h < c.n_heads; h++) {
            const int kvh = h / (c.n_heads / c.n_kv);
            const size_t base = (size_t)seq[r] * c.n_ctx * kv_dim + (size_t)kvh * c.head_dim;
            const int first = window > 0 && pos[r] + 1 > window ? pos[r] + 1 - window : 0;
            std::vector<double> s(pos[r] + 1, 0.0);
            double mx = -1e300;
            for (int t = first; t <= pos[r]; t++) {
                double d = 0;
                for (int e = 0; e < c.head_dim; e++)
                    d += (double)q[(size_t)r * q_dim + h * c.head_dim + e] * kc[base + (size_t)t * kv_dim + e];
                s[t] = d * c.scale();
                mx = std::max(mx, s[t]);
            }
            double sum = 0;
            for (int t = first; t <= pos[r]; t++) sum += (s[t] = std::exp(s[t] - mx));
            for (int e = 0; e < c.head_dim; e++) {
                double o = 0;
                for (int t = first; t <= pos[r]; t++) o += s[t] / sum * vc[base + (size_t)t * kv_dim + e];
                out[(size_t)r * q_dim + h * c.head_dim + e] = o;
            }
        }
    return out;
}

static void expect_attention(const char* what, const std::vector<float>& got, const std::vector<double>& want) {
    for (size_t i = 0; i < want.size(); i++) expect_close(what, (long)i, got[i], want[i], 1e-5);
}

// The caches as f16 bits and as the f32 values those bits hold exactly.
struct F16Cache {
    std::vector<uint16_t> bits;
    std::vector<float> values;
};
static F16Cache f16_cache(Rng& rng, size_t n) {
    F16Cache c{std::vector<uint16_t>(n), std::vector<float>(n)};
    for (size_t i = 0; i < n; i++) {
        c.bits[i] = rng.f16_unit();
        c.values[i] = __half2float(__ushort_as_half(c.bits[i]));
    }
    return c;
}

static void check_attention(Rng& rng) {
    const AttentionCase c;
    const int kv_dim = c.kv_dim(), q_dim = c.q_dim();
    const size_t cache = (size_t)c.n_seq * c.n_ctx * kv_dim;
    const std::vector<float> kc = rng.floats(cache), vc = rng.floats(cache);
    const F16Cache kh = f16_cache(rng, cache), vh = f16_cache(rng, cache);
    const float scale = c.scale();
    const dim3 block{32 * FLEA_ATTENTION_WARPS, 1, 1};

    // attention, attention_split: rows at various positions, including
    // position 0 and the last of the context.
    {
        const std::vector<int> seq = {0, 1, 1, 0}, pos = {0, 3, 39, 26};
        const int n = (int)seq.size();
        std::vector<float> q = rng.floats((size_t)n * q_dim);
        for (auto& v : q) v *= 3.0f;  // sharper softmax
        std::vector<float> out((size_t)n * q_dim, NAN);
        simt::launch(attention, dim3{(unsigned)c.n_heads, (unsigned)n, 1}, block, out.data(), q.data(), kc.data(), vc.data(),
                     seq.data(), pos.data(), c.n_heads, c.n_kv, c.head_dim, c.n_ctx, 0, scale);
        expect_attention("attention", out, attention_reference(c, q, kc, vc, seq, pos, 0));

        // Split lengths giving one split (the output written directly) and
        // several, with empty splits for the shorter rows; with and without
        // a window.
        for (int window : {0, 13})
            for (int split_len : {40, 7}) {
                const int visible = window > 0 ? window : 40;
                const int splits = (visible + split_len - 1) / split_len;
                std::vector<float> part((size_t)n * c.n_heads * splits * (c.head_dim + 2), NAN);
                const dim3 grid{(unsigned)c.n_heads, (unsigned)n, (unsigned)splits};
                const dim3 heads{(unsigned)c.n_heads, (unsigned)n, 1};
                for (int f16 = 0; f16 < 2; f16++) {
                    std::fill(out.begin(), out.end(), NAN);
                    if (f16)
                        simt::launch(attention_split_f16, grid, block, out.data(), part.data(), q.data(), kh.bits.data(),
                                     vh.bits.data(), seq.data(), pos.data(), c.n_heads, c.n_kv, c.head_dim, c.n_ctx, window,
                                     scale, split_len);
                    else
                        simt::launch(attention_split, grid, block, out.data(), part.data(), q.data(), kc.data(), vc.data(),
                                     seq.data(), pos.data(), c.n_heads, c.n_kv, c.head_dim, c.n_ctx, window, scale, split_len);
                    if (splits > 1)
                        simt::launch(attention_merge, heads, block, out.data(), part.data(), c.n_heads, c.head_dim, splits);
                    expect_attention(f16 ? "attention_split_f16" : "attention_split", out,
                                     f16 ? attention_reference(c, q, kh.values, vh.values, seq, pos, window)
                                         : attention_reference(c, q, kc, vc, seq, pos, window));
                }
            }
    }

    // attention_tiled: a prefill of sequence 1 at positions 2..22 (a whole
    // tile and a partial one), then two rows of sequence 0 (the second tile
    // straddles two sequences) and a lone row of sequence 1 at the end.
    {
        std::vector<int> seq, pos;
        for (int p = 2; p <= 22; p++) {
            seq.push_back(1);
            pos.push_back(p);
        }
        for (int p : {5, 6}) {
            seq.push_back(0);
            pos.push_back(p);
        }
        seq.push_back(1);
        pos.push_back(39);
        const int n = (int)seq.size();
        std::vector<float> q = rng.floats((size_t)n * q_dim);
        for (auto& v : q) v *= 3.0f;
        std::vector<float> out((size_t)n * q_dim, NAN);
        const dim3 grid{(unsigned)c.n_heads, (unsigned)((n + FLEA_ATTENTION_TILE_ROWS - 1) / FLEA_ATTENTION_TILE_ROWS), 1};
        for (int window : {0, 7})
            for (int f16 = 0; f16 < 2; f16++) {
                std::fill(out.begin(), out.end(), NAN);
                if (f16)
                    simt::launch(attention_tiled_f16, grid, block, out.data(), q.data(), kh.bits.data(), vh.bits.data(),
                                 seq.data(), pos.data(), n, c.n_heads, c.n_kv, c.head_dim, c.n_ctx, window, scale);
                else
                    simt::launch(attention_tiled, grid, block, out.data(), q.data(), kc.data(), vc.data(), seq.data(),
                                 pos.data(), n, c.n_heads, c.n_kv, c.head_dim, c.n_ctx, window, scale);
                expect_attention(f16 ? "attention_tiled_f16" : "attention_tiled", out,
                                 f16 ? attention_reference(c, q, kh.values, vh.values, seq, pos, window)
                                     : attention_reference(c, q, kc, vc, seq, pos, window));
            }
    }
}

static void check_elementwise_and_argmax(Rng& rng) {
    const long n = 1000;
    std::vector<float> g = rng.floats(n);
    const std::vector<float> g0 = g, u = rng.floats(n);
    simt::launch(swiglu, dim3{4, 1, 1}, dim3{FLEA_ELEMENTWISE_THREADS, 1, 1}, g.data(), u.data(), (long long)n);
    for (long i = 0; i < n; i++) {
        const double want = g0[i] / (1.0 + std::exp(-(double)g0[i])) * u[i];
        expect_close("swiglu", i, g[i], want, 1e-6);
    }
    std::vector<float> x = g0;
    simt::launch(add_in_place, dim3{4, 1, 1}, dim3{FLEA_ELEMENTWISE_THREADS, 1, 1}, x.data(), u.data(), (long long)n);
    for (long i = 0; i < n; i++) expect_close("add_in_place", i, x[i], g0[i] + u[i], 0.0);

    const int vocab = 3001;
    std::vector<float> logits = rng.floats(3 * vocab);
    logits[vocab + 17] = 5.0f;
    logits[vocab + 2999] = 5.0f;  // a tie: the lower index wins
    for (int i = 0; i < vocab; i++) logits[2 * vocab + i] = -1.0f;
    std::vector<unsigned> out(3, 12345);
    simt::launch(argmax_rows, dim3{3, 1, 1}, dim3{FLEA_ROW_THREADS, 1, 1}, out.data(), logits.data(), vocab);
    for (int r = 0; r < 3; r++) {
        int best = 0;
        for (int i = 1; i < vocab; i++)
            if (logits[r * vocab + i] > logits[r * vocab + best]) best = i;
        expect_close("argmax_rows", r, out[r], best, 0.0);
    }
}

// ------------------------------------------------------------------ dequant mode

static std::vector<unsigned char> read_all(const char* path) {
    std::vector<unsigned char> v;
    FILE* f = std::fopen(path, "rb");
    if (!f) {
        std::fprintf(stderr, "cannot open %s\n", path);
        std::exit(2);
    }
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + n);
    std::fclose(f);
    return v;
}

static int dequant_mode(char** argv) {
    const char* fmt = argv[2];
    const long rows = std::atol(argv[3]), cols = std::atol(argv[4]);
    const std::vector<unsigned char> w = read_all(argv[5]), raw = read_all(argv[6]);
    const double tol = std::atof(argv[7]);
    std::vector<float> want(raw.size() / 4);
    std::memcpy(want.data(), raw.data(), want.size() * 4);
    long fi = -1;
    for (size_t i = 0; i < N_FORMATS; i++)
        if (std::strcmp(FORMATS[i].name, fmt) == 0) fi = (long)i;
    if (fi < 0 || rows <= 0 || w.size() % rows != 0 || (long)want.size() != rows * cols) {
        std::fprintf(stderr, "bad format or sizes: %s, %zu bytes, %zu values, %ld x %ld\n", fmt, w.size(),
                     want.size(), rows, cols);
        return 2;
    }
    const size_t row_bytes = w.size() / rows;
    long bad = 0;
    for (long r = 0; r < rows; r++)
        for (long i = 0; i < cols; i += 8) {
            float got[8];
            KERNELS[fi].load8(w.data() + r * row_bytes, (int)i, (int)cols, got);
            for (long e = 0; e < 8 && i + e < cols; e++) {
                const float x = want[r * cols + i + e];
                const bool ok = tol == 0.0 ? std::memcmp(&got[e], &x, 4) == 0
                                           : std::fabs(got[e] - x) <= tol * std::fmax(std::fabs(x), 1e-12);
                if (!ok && bad++ < 5)
                    std::printf("%s row %ld weight %ld: device decoder %.9g, expected %.9g\n", fmt, r, i + e, got[e], x);
            }
        }
    std::printf("%s: %ld of %ld values differ\n", fmt, bad, rows * cols);
    return bad == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
    if (argc == 8 && std::strcmp(argv[1], "dequant") == 0) return dequant_mode(argv);
    if (argc == 2 && std::strcmp(argv[1], "kernels") == 0) {
        Rng rng{0x9e3779b97f4a7c15ull};
        check_products(rng);
        check_q8_matvec(rng);
        check_norms(rng);
        check_rope_and_cache(rng);
        check_attention(rng);
        check_elementwise_and_argmax(rng);
        std::printf("kernels: %ld mismatches\n", g_failures);
        return g_failures == 0 ? 0 : 1;
    }
    std::fprintf(stderr,
                 "usage: %s dequant FORMAT ROWS COLS WEIGHTS.bin EXPECTED.f32 REL_TOL\n"
                 "       %s kernels\n",
                 argv[0], argv[0]);
    return 2;
}

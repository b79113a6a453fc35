// The emulated device's stand-in for kernels/host/shim.h: what the kernels
// use from CUDA, for a host C++20 compiler. tests/emulator/build.sh copies
// kernels/ into its build folder and puts this file there as host/shim.h,
// so the fake driver (fake_cuda.cpp) runs the very kernels nvcc compiles.
//
// Why not kernels/host/shim.h (one OS thread per CUDA thread, blocks one
// after another)? Whole forward passes launch millions of CUDA threads:
// OS threads made the prototype's streamed test take 24 minutes. Here
// every CUDA thread of a block is a fiber (a 64 KiB stack and an x86-64
// register switch, about 10 ns), so `__syncthreads` and warp shuffles cost
// a switch, and the blocks of one launch are spread over a pool of OS
// threads (FAKE_CUDA_THREADS, default: every core). `__shared__` variables
// are `static thread_local`: one copy per OS thread, that is per block
// running at a time, which is CUDA's rule. x86-64 only (the switch).
#pragma once

#include <math.h>

#include <array>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static thread_local

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
// Round-to-nearest operations the compiler may not fuse (the driver is
// compiled with -ffp-contract=off as well).
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

extern "C" void flea_fiber_switch(void** save_sp, void* new_sp);

namespace simt {

struct Exec;

struct Fiber {
    void* sp = nullptr;
    dim3 tidx;
    unsigned linear = 0;
    bool done = false;
    char* stack = nullptr;
    Exec* ex = nullptr;
};

// Stacks are STACK-aligned and hold their Fiber's address in their lowest
// word, so the running fiber is found from the stack pointer: no
// thread-local lookup (in a dlopened library each costs a __tls_get_addr
// call) on threadIdx, barriers and shuffles, the emulator's hot path.
constexpr size_t STACK = 64 * 1024;

// One per OS thread: the block this thread runs, its fibers, barriers.
struct Exec {
    std::vector<Fiber> fibers;
    unsigned n = 0;
    void* sched_sp = nullptr;
    const std::function<void()>* body = nullptr;
    dim3 block_idx, block_dim, grid_dim;
    unsigned alive = 0, arrived = 0;  // block barrier
    uint64_t gen = 0;
    std::vector<unsigned> w_alive, w_arrived;  // warp barriers
    std::vector<uint64_t> w_gen;
    std::vector<std::array<uint64_t, 32>> slots;  // shuffle exchange
};

__attribute__((always_inline)) inline Fiber* self() {
    char probe;
    asm volatile("" : : "r"(&probe));
    const uintptr_t base = reinterpret_cast<uintptr_t>(&probe) & ~(uintptr_t)(STACK - 1);
    return *reinterpret_cast<Fiber**>(base);
}

// Switch from `f` straight to the next fiber of its block that has not
// returned (round robin), without a trip through the scheduler; returns
// at once if there is none.
inline void yield_from(Fiber* f) {
    Exec& e = *f->ex;
    const unsigned i = static_cast<unsigned>(f - e.fibers.data());
    for (unsigned j = i + 1 == e.n ? 0 : i + 1; j != i; j = j + 1 == e.n ? 0 : j + 1) {
        Fiber& g = e.fibers[j];
        if (!g.done) {
            flea_fiber_switch(&f->sp, g.sp);
            return;
        }
    }
}

// Releases the barriers a finished thread no longer arrives at, then runs
// the next live fiber, or returns to the scheduler after the last.
extern "C" inline void flea_fiber_entry() {
    Fiber* f = self();
    Exec& e = *f->ex;
    (*e.body)();
    f->done = true;
    e.alive--;
    const unsigned w = f->linear / 32;
    e.w_alive[w]--;
    if (e.arrived && e.arrived == e.alive) {
        e.arrived = 0;
        e.gen++;
    }
    if (e.w_arrived[w] && e.w_arrived[w] == e.w_alive[w]) {
        e.w_arrived[w] = 0;
        e.w_gen[w]++;
    }
    void* dummy;
    const unsigned i = static_cast<unsigned>(f - e.fibers.data());
    for (unsigned k = 1; k < e.n; k++) {
        Fiber& g = e.fibers[(i + k) % e.n];
        if (!g.done) flea_fiber_switch(&dummy, g.sp);
    }
    flea_fiber_switch(&dummy, e.sched_sp);
    std::abort();
}

inline void init_stack(Fiber& f) {
    if (!f.stack) f.stack = static_cast<char*>(std::aligned_alloc(STACK, STACK));
    *reinterpret_cast<Fiber**>(f.stack) = &f;
    uint64_t* top = reinterpret_cast<uint64_t*>(f.stack + STACK);
    *--top = 0;                                              // padding: entry sees rsp = 8 mod 16
    *--top = reinterpret_cast<uint64_t>(&flea_fiber_entry);  // return address
    for (int i = 0; i < 6; i++) *--top = 0;                  // rbp rbx r12 r13 r14 r15
    f.sp = top;
}

inline thread_local Exec* t_exec = nullptr;

// Runs one block of `body` on this OS thread, its CUDA threads as fibers,
// until all have returned.
inline void run_block(const std::function<void()>& body, dim3 grid, dim3 blk, dim3 bidx) {
    if (!t_exec) t_exec = new Exec;  // per OS thread, never freed (pool threads live on)
    Exec& e = *t_exec;
    const unsigned n = blk.x * blk.y * blk.z;
    e.n = n;
    e.block_dim = blk;
    e.grid_dim = grid;
    e.block_idx = bidx;
    e.body = &body;
    if (e.fibers.size() < n) e.fibers.resize(n);
    const unsigned warps = (n + 31) / 32;
    e.w_alive.assign(warps, 0);
    e.w_arrived.assign(warps, 0);
    e.w_gen.assign(warps, 0);
    e.slots.resize(warps);
    e.alive = n;
    e.arrived = 0;
    for (unsigned w = 0; w < warps; w++) e.w_alive[w] = (w + 1) * 32 <= n ? 32 : n - w * 32;
    for (unsigned t = 0; t < n; t++) {
        Fiber& f = e.fibers[t];
        f.tidx = dim3{t % blk.x, (t / blk.x) % blk.y, t / (blk.x * blk.y)};
        f.linear = t;
        f.done = false;
        f.ex = &e;
        init_stack(f);
    }
    flea_fiber_switch(&e.sched_sp, e.fibers[0].sp);
    e.body = nullptr;
}

// A fixed pool of OS threads that share out the blocks of one launch; the
// launching thread works too. One launch at a time (the driver holds its
// lock while a stream runs).
class Pool {
   public:
    static Pool& get() {
        static Pool* p = new Pool;  // never destroyed: workers outlive main
        return *p;
    }
    void run(unsigned total, const std::function<void(unsigned)>& f) {
        if (workers_ == 0 || total < 2) {
            for (unsigned i = 0; i < total; i++) f(i);
            return;
        }
        {
            std::lock_guard<std::mutex> g(m_);
            job_ = &f;
            total_ = total;
            next_.store(0);
            active_ = workers_;
            gen_++;
        }
        cv_.notify_all();
        work(f, total);
        std::unique_lock<std::mutex> lk(m_);
        done_.wait(lk, [&] { return active_ == 0; });
        job_ = nullptr;
    }

   private:
    Pool() {
        unsigned n = std::thread::hardware_concurrency();
        if (const char* v = getenv("FAKE_CUDA_THREADS")) n = (unsigned)atoi(v);
        workers_ = n > 1 ? n - 1 : 0;
        for (unsigned i = 0; i < workers_; i++) std::thread([this] { loop(); }).detach();
    }
    void work(const std::function<void(unsigned)>& f, unsigned total) {
        for (;;) {
            const unsigned i = next_.fetch_add(1);
            if (i >= total) return;
            f(i);
        }
    }
    void loop() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lk(m_);
        for (;;) {
            cv_.wait(lk, [&] { return gen_ != seen; });
            seen = gen_;
            const auto* f = job_;
            const unsigned total = total_;
            lk.unlock();
            work(*f, total);
            lk.lock();
            if (--active_ == 0) done_.notify_all();
        }
    }
    unsigned workers_ = 0;
    std::mutex m_;
    std::condition_variable cv_, done_;
    const std::function<void(unsigned)>* job_ = nullptr;
    unsigned total_ = 0, active_ = 0;
    uint64_t gen_ = 0;
    std::atomic<unsigned> next_{0};
};

// Run kernel(args...) over grid x blk, the blocks in parallel.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 blk, A... args) {
    const std::function<void()> body = [&] { kernel(static_cast<P>(args)...); };
    const unsigned blocks = grid.x * grid.y * grid.z;
    Pool::get().run(blocks, [&](unsigned b) {
        run_block(body, grid, blk, dim3{b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)});
    });
}

}  // namespace simt

#define threadIdx (simt::self()->tidx)
#define blockIdx (simt::self()->ex->block_idx)
#define blockDim (simt::self()->ex->block_dim)
#define gridDim (simt::self()->ex->grid_dim)

// CUDA's integer min and max (device built-ins).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline void __syncthreads() {
    simt::Fiber* f = simt::self();
    simt::Exec& e = *f->ex;
    const uint64_t g = e.gen;
    if (++e.arrived == e.alive) {
        e.arrived = 0;
        e.gen++;
        return;
    }
    while (e.gen == g) simt::yield_from(f);
}

inline void warp_barrier(simt::Fiber* f, unsigned w) {
    simt::Exec& e = *f->ex;
    const uint64_t g = e.w_gen[w];
    if (++e.w_arrived[w] == e.w_alive[w]) {
        e.w_arrived[w] = 0;
        e.w_gen[w]++;
        return;
    }
    while (e.w_gen[w] == g) simt::yield_from(f);
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int offset) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    simt::Fiber* f = simt::self();
    const unsigned t = f->linear;
    const unsigned warp = t / 32, lane = t % 32;
    auto& slots = f->ex->slots[warp];
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[lane] = bits;
    warp_barrier(f, warp);
    const uint64_t other = slots[lane ^ (unsigned)offset];
    warp_barrier(f, warp);
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}

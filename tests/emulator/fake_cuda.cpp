// The emulated CUDA device: a fake libcuda.so that implements, on the CPU,
// the driver API functions cudarc 0.19 resolves on this project's code
// path, so every `--features cuda` test runs in CI without a GPU
// (scripts/emulated-gpu-check.sh). cudarc dlopens `libcuda.so` before any
// versioned name, so LD_LIBRARY_PATH=<this library's folder> selects it.
//
// What it models, and why:
// - Kernels are kernels/*.cu compiled for the host (shim.h: fibers, blocks
//   in parallel), looked up by name from the same FLEA_FOR_EACH_FORMAT list
//   the real kernels are generated from: the fatbin is not read.
// - Device memory is host memory, poisoned (0xFF bytes: NaN floats) on
//   allocation and on free, so reading what was never written, or was
//   freed, shows up in the logits.
// - Streams are queues; events mark queue positions; a cross-stream wait is
//   an op that runs the other stream up to the event. Work runs as late as
//   CUDA allows under the scheduling policy FAKE_CUDA_POLICY:
//     lazy      only when the host forces it (sync, pageable DtoH, a wait);
//     slowcopy  kernels at once, pinned-memory copies held back (slow DMA);
//     eager     everything at once (the order a naive emulator would use);
//     random    after each call, a random prefix of each stream runs
//               (seeded by FAKE_CUDA_SEED).
//   A missing wait then reads stale or poisoned bytes: wrong logits.
// - Pageable HtoD copies are staged at call time and pageable DtoH copies
//   are synchronous (CUDA's rules); pinned copies are deferred, and freeing
//   or unregistering host memory that queued work still uses aborts.
// - Error injection, to exercise every error path:
//     FAKE_CUDA_FAIL_ALLOC=N   the Nth device allocation fails (OOM);
//     FAKE_CUDA_FAIL_LAUNCH=N  the Nth kernel launch fails;
//     FAKE_CUDA_OLD_DRIVER=1   reports driver 11.4 and refuses to load the
//                              embedded image (CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
//                              an image too new for the driver);
//     FAKE_CUDA_NO_IMAGE=1     refuses it as CUDA_ERROR_NO_BINARY_FOR_GPU (no
//                              code for this GPU: an image too old for it);
//     FAKE_CUDA_REFUSE_NVRTC=1 refuses the image the fake NVRTC
//                              (fake_nvrtc.cpp) makes, which otherwise loads
//                              whatever the two knobs above say, if it was
//                              compiled for this device's architecture;
//     FAKE_CUDA_NO_POOLS, FAKE_CUDA_NO_REGISTER, FAKE_CUDA_INTEGRATED,
//     FAKE_CUDA_MEM_MB         device attributes and memory size.
// - Host waits must block, not spin (issue 13): a host wait that would
//   have to wait (work still queued) on an event made without
//   CU_EVENT_BLOCKING_SYNC, or a stream, context or pageable-copy sync in a
//   primary context whose flags lack CU_CTX_SCHED_BLOCKING_SYNC, aborts
//   with a message. FAKE_CUDA_ALLOW_SPIN=1 allows them.
// - Mutation knob for the tier's own test (FAKE_CUDA_DROP_WAIT): drop one
//   of the waits the streaming code relies on, to prove the suite notices.
//     copy_reader   a copy-only stream's wait for a kernel stream's event;
//     compute_copy  a kernel stream's wait for a copy-only stream's event;
//     mapped_sync   a stream or event sync while kernels reading mapped host
//                   memory are queued on that stream.
// It cannot see: performance, device numerics (FMA, expf), fatbin or
// driver-version problems, the hardware memory model.
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/argmax.cu"
#include "kernels/attention.cu"
#include "kernels/elementwise.cu"
#include "kernels/embed.cu"
#include "kernels/matmul.cu"
#include "kernels/matvec.cu"
#include "kernels/matvec_q8.cu"
#include "kernels/norm.cu"
#include "kernels/rope.cu"

// The fiber switch of shim.h: saves the callee-saved registers on the
// current stack, stores its pointer, switches. The SSE and x87 control
// words are callee-saved too, but nothing here changes them, and saving
// them (ldmxcsr, fldcw) was a tenth of the emulator's time.
asm(R"(
.pushsection .text
.globl flea_fiber_switch
.hidden flea_fiber_switch
.type flea_fiber_switch,@function
flea_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.popsection
)");

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
enum {
    OK = 0, E_INVALID_VALUE = 1, E_OUT_OF_MEMORY = 2, E_NOT_INITIALIZED = 3, E_INVALID_DEVICE = 101,
    E_NO_BINARY_FOR_GPU = 209, E_INVALID_CONTEXT = 201, E_UNSUPPORTED_PTX_VERSION = 222,
    E_INVALID_IMAGE = 200, E_INVALID_HANDLE = 400, E_NOT_FOUND = 500, E_NOT_READY = 600,
    E_HOST_MEMORY_ALREADY_REGISTERED = 712,
    E_HOST_MEMORY_NOT_REGISTERED = 713, E_LAUNCH_FAILED = 719, E_NOT_SUPPORTED = 801,
};

// ------------------------------------------------------------ settings
static std::recursive_mutex g_lock;
static bool env_on(const char* n) {
    const char* v = getenv(n);
    return v && *v && *v != '0';
}
static long env_num(const char* n, long dflt) {
    const char* v = getenv(n);
    return v && *v ? atol(v) : dflt;
}
static std::string env_str(const char* n) {
    const char* v = getenv(n);
    return v ? v : "";
}
static void trace(const char* fn) {
    static const bool on = env_on("FAKE_CUDA_TRACE");
    if (on) fprintf(stderr, "[fake-cuda] %s\n", fn);
}
#define API(name)                                      \
    std::lock_guard<std::recursive_mutex> _g(g_lock); \
    trace(#name)
[[noreturn]] static void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[fake-cuda] FATAL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}
enum class Policy { Lazy, SlowCopy, Eager, Random };
static Policy policy() {
    static const Policy p = [] {
        const std::string s = env_str("FAKE_CUDA_POLICY");
        if (s.empty() || s == "lazy") return Policy::Lazy;
        if (s == "slowcopy") return Policy::SlowCopy;
        if (s == "eager") return Policy::Eager;
        if (s == "random") return Policy::Random;
        fatal("FAKE_CUDA_POLICY=%s: expected lazy, slowcopy, eager or random", s.c_str());
    }();
    return p;
}
static std::mt19937_64& rng() {
    static std::mt19937_64 r((uint64_t)env_num("FAKE_CUDA_SEED", 1));
    return r;
}
static bool drop_wait(const char* which) {
    static const std::string w = env_str("FAKE_CUDA_DROP_WAIT");
    return w == which;
}

// ------------------------------------------------------------ context
struct Ctx {
    int dummy;
};
static Ctx g_ctx;
static int g_ctx_refs = 0;
static unsigned g_ctx_flags = 0;  // cuDevicePrimaryCtxSetFlags; 4 = CU_CTX_SCHED_BLOCKING_SYNC
static bool g_init = false;
static thread_local Ctx* t_current = nullptr;
#define NEED_CTX()                               \
    do {                                         \
        if (!g_init) return E_NOT_INITIALIZED;   \
        if (t_current != &g_ctx) return E_INVALID_CONTEXT; \
    } while (0)

// ------------------------------------------------------------ memory
static std::map<uintptr_t, size_t> g_dev;     // device allocations
static std::map<uintptr_t, size_t> g_pinned;  // registered / host-allocated ranges
static size_t g_dev_bytes = 0;
static long g_allocs = 0, g_launches = 0;
static size_t total_mem() { return (size_t)env_num("FAKE_CUDA_MEM_MB", 16384) << 20; }
static bool in_map(const std::map<uintptr_t, size_t>& m, const void* p, size_t n) {
    const uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}
static bool is_pinned(const void* p, size_t n) { return in_map(g_pinned, p, n); }

// ------------------------------------------------------------ streams and events
struct Op {
    std::function<void()> fn;
    uintptr_t host_lo = 0, host_hi = 0;  // pinned host range read or written later
    bool slow = false;                   // a pinned DMA copy (held back by slowcopy)
    bool mapped = false;                 // a kernel reading mapped host memory
};
struct Stream {
    uint64_t id;
    std::deque<Op> q;
    uint64_t enqueued = 0, executed = 0;
    bool kernels = false;  // has launched a kernel: a "compute" stream
};
static uint64_t g_next_stream = 1;
static Stream g_null{0};
static std::map<uint64_t, Stream*> g_streams = {{0, &g_null}};
static double g_clock_ms = 0;  // virtual time: advances with every op

static void drain(Stream* s, uint64_t upto) {
    while (s->executed < upto) {
        Op op = std::move(s->q.front());
        s->q.pop_front();
        op.fn();
        s->executed++;
        g_clock_ms += 0.001;
    }
}
static void drain_all() {
    for (auto& [id, s] : g_streams) drain(s, s->enqueued);
}
static Stream* S(void* h) { return h ? static_cast<Stream*>(h) : &g_null; }
static void enqueue(Stream* s, Op op) {
    if (s == &g_null)  // the legacy default stream is ordered with every other one
        for (auto& [id, o] : g_streams)
            if (o != &g_null) drain(o, o->enqueued);
    s->q.push_back(std::move(op));
    s->enqueued++;
    switch (policy()) {
        case Policy::Lazy:
            return;
        case Policy::Eager:
            drain(s, s->enqueued);
            return;
        case Policy::SlowCopy:
            for (auto& o : s->q)
                if (o.slow) return;
            drain(s, s->enqueued);
            return;
        case Policy::Random:
            for (auto& [id, o] : g_streams) {
                const uint64_t pending = o->enqueued - o->executed;
                if (pending && rng()() % 2) drain(o, o->executed + 1 + rng()() % pending);
            }
            return;
    }
}
static void check_no_pending_host(uintptr_t lo, uintptr_t hi, const char* what) {
    for (auto& [id, s] : g_streams)
        for (auto& op : s->q)
            if (op.host_lo < hi && lo < op.host_hi)
                fatal("%s of host range [%#lx, %#lx) while queued work still uses it", what, lo, hi);
}
static bool has_mapped_work(Stream* s) {
    for (auto& op : s->q)
        if (op.mapped) return true;
    return false;
}
// A host wait on queued work must sleep, not spin (see the header). CUDA's
// documentation: cuEventSynchronize busy-waits unless the event was made
// with CU_EVENT_BLOCKING_SYNC; stream, context and implicit (pageable
// copy) syncs follow the context's CU_CTX_SCHED_* flags.
static void check_blocking_wait(const char* what, bool pending) {
    static const bool allow = env_on("FAKE_CUDA_ALLOW_SPIN");
    if (allow || !pending || (g_ctx_flags & 4)) return;
    fatal("%s waits for queued work busy-spinning: the primary context lacks "
          "CU_CTX_SCHED_BLOCKING_SYNC (FAKE_CUDA_ALLOW_SPIN=1 allows it)", what);
}
static void check_blocking_event_wait(bool blocking_event, bool pending) {
    static const bool allow = env_on("FAKE_CUDA_ALLOW_SPIN");
    if (allow || !pending || blocking_event) return;
    fatal("cuEventSynchronize waits for queued work busy-spinning: the event lacks "
          "CU_EVENT_BLOCKING_SYNC (FAKE_CUDA_ALLOW_SPIN=1 allows it)");
}
static bool stream_pending(Stream* s) { return s->executed < s->enqueued; }
static bool any_pending() {
    for (auto& [id, s] : g_streams)
        if (stream_pending(s)) return true;
    return false;
}

struct EventState {
    double t = -1;
};
struct Event {
    unsigned flags;
    uint64_t stream = 0;
    uint64_t seq = 0;
    bool recorded = false;
    std::shared_ptr<EventState> st = std::make_shared<EventState>();
};
static bool event_done(Event* e) {
    if (!e->recorded) return true;
    auto it = g_streams.find(e->stream);
    return it == g_streams.end() || it->second->executed >= e->seq;
}

// ------------------------------------------------------------ kernels
struct Launch {
    dim3 grid, block;
};
struct Made {
    std::function<void()> run;
    uintptr_t mapped_lo = 0, mapped_hi = 0;
};
using Maker = std::function<Made(void**, Launch)>;
template <typename T>
static void note_mapped(const T& v, Made& m) {
    if constexpr (std::is_pointer_v<T>) {
        const uintptr_t a = (uintptr_t)v;
        auto it = g_pinned.upper_bound(a);
        if (it == g_pinned.begin()) return;
        --it;
        if (a < it->first || a >= it->first + it->second) return;
        m.mapped_lo = m.mapped_hi ? std::min(m.mapped_lo, it->first) : it->first;
        m.mapped_hi = std::max(m.mapped_hi, it->first + it->second);
    }
}
template <typename... P, size_t... I>
static Maker maker_impl(void (*k)(P...), std::index_sequence<I...>) {
    return [k](void** params, Launch l) -> Made {
        // Copy the argument values now: params point at the caller's locals.
        std::tuple<std::decay_t<P>...> args{*static_cast<std::decay_t<P>*>(params[I])...};
        Made m;
        (note_mapped(std::get<I>(args), m), ...);
        m.run = [k, args, l]() { simt::launch(k, l.grid, l.block, std::get<I>(args)...); };
        return m;
    };
}
template <typename... P>
static Maker maker(void (*k)(P...)) {
    return maker_impl(k, std::index_sequence_for<P...>{});
}

struct Func {
    std::string name;
    Maker make;
};
static std::unordered_map<std::string, Func>* g_funcs;
#define REG(k) (*g_funcs)[#k] = Func{#k, maker(k)};
#define REG_FMT(suffix, Fmt)                                                   \
    REG(matvec_##suffix##_1) REG(matvec_##suffix##_2) REG(matvec_##suffix##_3) \
    REG(matvec_##suffix##_4) REG(matvec_##suffix##_5) REG(matvec_##suffix##_6) \
    REG(matvec_##suffix##_7) REG(matvec_##suffix##_8) REG(matmul_##suffix) REG(embed_##suffix)
#define REG_Q8(suffix, Dot)                                                                 \
    REG(matvec_q8_##suffix##_1) REG(matvec_q8_##suffix##_2) REG(matvec_q8_##suffix##_3) \
    REG(matvec_q8_##suffix##_4) REG(matvec_q8_##suffix##_5) REG(matvec_q8_##suffix##_6) \
    REG(matvec_q8_##suffix##_7) REG(matvec_q8_##suffix##_8)
static void register_kernels() {
    if (g_funcs) return;
    g_funcs = new std::unordered_map<std::string, Func>;
    FLEA_FOR_EACH_FORMAT(REG_FMT)
    FLEA_FOR_EACH_Q8_FORMAT(REG_Q8)
    REG(quantize_q8_32) REG(quantize_q8_k)
    REG(rmsnorm) REG(rmsnorm_gather) REG(rmsnorm_heads) REG(rope) REG(kv_store)
    REG(kv_store_f16) REG(attention) REG(attention_f16) REG(swiglu) REG(add_in_place)
    REG(add_bias) REG(argmax_rows)
    REG(attention_split) REG(attention_split_f16) REG(attention_merge) REG(attention_tiled)
    REG(attention_tiled_f16)
}

// ------------------------------------------------------------ the API
#pragma GCC visibility push(default)
extern "C" {

CUresult cuInit(unsigned) {
    API(cuInit);
    g_init = true;
    return OK;
}
CUresult cuDriverGetVersion(int* v) {
    API(cuDriverGetVersion);
    *v = env_on("FAKE_CUDA_OLD_DRIVER") ? 11040 : (int)env_num("FAKE_CUDA_DRIVER_VERSION", 12060);
    return OK;
}
CUresult cuDeviceGetCount(int* n) {
    API(cuDeviceGetCount);
    *n = 1;
    return OK;
}
CUresult cuDeviceGet(CUdevice* d, int ord) {
    API(cuDeviceGet);
    if (!g_init) return E_NOT_INITIALIZED;
    if (ord != 0) return E_INVALID_DEVICE;
    *d = 0;
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    API(cuDeviceGetName);
    snprintf(name, len, "Flea emulated device (CPU)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, CUdevice) {
    API(cuDeviceTotalMem_v2);
    *b = total_mem();
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, CUdevice) {
    API(cuDeviceGetAttribute);
    switch (attr) {
        case 75: *v = (int)env_num("FAKE_CUDA_CC_MAJOR", 8); break;   // compute capability
        case 76: *v = (int)env_num("FAKE_CUDA_CC_MINOR", 7); break;
        case 115: *v = env_on("FAKE_CUDA_NO_POOLS") ? 0 : 1; break;   // memory pools
        case 99: *v = env_on("FAKE_CUDA_NO_REGISTER") ? 0 : 1; break; // host register
        case 19: *v = 1; break;                                        // can map host memory
        case 18: *v = env_on("FAKE_CUDA_INTEGRATED") ? 1 : 0; break;   // integrated
        case 41: *v = 1; break;                                        // unified addressing
        default: *v = 0;
    }
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(Ctx** c, CUdevice) {
    API(cuDevicePrimaryCtxRetain);
    g_ctx_refs++;
    *c = &g_ctx;
    return OK;
}
CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice d, unsigned flags) {
    API(cuDevicePrimaryCtxSetFlags_v2);
    if (!g_init) return E_NOT_INITIALIZED;
    if (d != 0) return E_INVALID_DEVICE;
    g_ctx_flags = flags;
    return OK;
}
CUresult cuDevicePrimaryCtxGetState(CUdevice d, unsigned* flags, int* active) {
    API(cuDevicePrimaryCtxGetState);
    if (!g_init) return E_NOT_INITIALIZED;
    if (d != 0) return E_INVALID_DEVICE;
    *flags = g_ctx_flags;
    *active = g_ctx_refs > 0;
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) {
    API(cuDevicePrimaryCtxRelease_v2);
    if (--g_ctx_refs == 0) drain_all();
    return OK;
}
CUresult cuCtxGetCurrent(Ctx** c) {
    API(cuCtxGetCurrent);
    *c = t_current;
    return OK;
}
CUresult cuCtxSetCurrent(Ctx* c) {
    API(cuCtxSetCurrent);
    t_current = c;
    return OK;
}
CUresult cuCtxSynchronize() {
    API(cuCtxSynchronize);
    NEED_CTX();
    check_blocking_wait("cuCtxSynchronize", any_pending());
    drain_all();
    return OK;
}

static const std::map<int, std::pair<const char*, const char*>>& errors() {
    static const std::map<int, std::pair<const char*, const char*>> m = {
        {0, {"CUDA_SUCCESS", "no error"}},
        {1, {"CUDA_ERROR_INVALID_VALUE", "invalid argument"}},
        {2, {"CUDA_ERROR_OUT_OF_MEMORY", "out of memory"}},
        {3, {"CUDA_ERROR_NOT_INITIALIZED", "initialization error"}},
        {101, {"CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"}},
        {200, {"CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"}},
        {201, {"CUDA_ERROR_INVALID_CONTEXT", "invalid device context"}},
        {209, {"CUDA_ERROR_NO_BINARY_FOR_GPU", "no kernel image is available for execution on the device"}},
        {222, {"CUDA_ERROR_UNSUPPORTED_PTX_VERSION", "the provided PTX was compiled with an unsupported toolchain."}},
        {400, {"CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"}},
        {500, {"CUDA_ERROR_NOT_FOUND", "named symbol not found"}},
        {600, {"CUDA_ERROR_NOT_READY", "device not ready"}},
        {712, {"CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"}},
        {713, {"CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"}},
        {719, {"CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"}},
        {801, {"CUDA_ERROR_NOT_SUPPORTED", "operation not supported"}},
    };
    return m;
}
CUresult cuGetErrorString(CUresult e, const char** s) {
    auto it = errors().find(e);
    *s = it == errors().end() ? "unknown error (emulated)" : it->second.second;
    return OK;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    auto it = errors().find(e);
    *s = it == errors().end() ? "CUDA_ERROR_UNKNOWN" : it->second.first;
    return OK;
}

// memory
static CUresult dev_alloc(CUdeviceptr* p, size_t n) {
    if (++g_allocs == env_num("FAKE_CUDA_FAIL_ALLOC", 0)) return E_OUT_OF_MEMORY;
    const size_t len = (std::max<size_t>(n, 1) + 255) / 256 * 256;
    if (g_dev_bytes + len > total_mem()) return E_OUT_OF_MEMORY;
    void* m = aligned_alloc(256, len);
    if (!m) return E_OUT_OF_MEMORY;
    memset(m, 0xFF, len);  // cuMemAlloc does not zero: poison (NaN floats)
    g_dev[(uintptr_t)m] = len;
    g_dev_bytes += len;
    *p = (CUdeviceptr)m;
    return OK;
}
static void dev_free(CUdeviceptr p) {
    auto it = g_dev.find((uintptr_t)p);
    if (it == g_dev.end()) fatal("cuMemFree of %#llx, not an allocation", p);
    memset((void*)p, 0xFF, it->second);  // a late reader sees NaN
    g_dev_bytes -= it->second;
    g_dev.erase(it);
    free((void*)p);
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) {
    API(cuMemAlloc_v2);
    NEED_CTX();
    return dev_alloc(p, n);
}
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) {
    API(cuMemAllocAsync);
    NEED_CTX();
    return dev_alloc(p, n);
}
CUresult cuMemFree_v2(CUdeviceptr p) {
    API(cuMemFree_v2);
    NEED_CTX();
    drain_all();
    dev_free(p);
    return OK;
}
CUresult cuMemFreeAsync(CUdeviceptr p, void* s) {
    API(cuMemFreeAsync);
    NEED_CTX();
    enqueue(S(s), Op{[p] { dev_free(p); }});
    return OK;
}
CUresult cuMemGetInfo_v2(size_t* fr, size_t* tot) {
    API(cuMemGetInfo_v2);
    NEED_CTX();
    *tot = total_mem();
    *fr = *tot - g_dev_bytes;
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void* s) {
    API(cuMemsetD8Async);
    NEED_CTX();
    enqueue(S(s), Op{[d, v, n] { memset((void*)d, v, n); }});
    return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) {
    API(cuMemcpyHtoDAsync_v2);
    NEED_CTX();
    if (!in_map(g_dev, (void*)d, n) && !is_pinned((void*)d, n)) return E_INVALID_VALUE;
    if (is_pinned(h, n)) {  // DMA later: the host bytes must stay put until then
        enqueue(S(s), Op{[d, h, n] { memcpy((void*)d, h, n); }, (uintptr_t)h, (uintptr_t)h + n, true});
    } else {  // pageable: the driver stages the bytes before returning
        auto staged = std::make_shared<std::vector<uint8_t>>((const uint8_t*)h, (const uint8_t*)h + n);
        enqueue(S(s), Op{[d, staged] { memcpy((void*)d, staged->data(), staged->size()); }});
    }
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) {
    API(cuMemcpyDtoHAsync_v2);
    NEED_CTX();
    if (is_pinned(h, n)) {
        enqueue(S(s), Op{[d, h, n] { memcpy(h, (void*)d, n); }, (uintptr_t)h, (uintptr_t)h + n, true});
    } else {  // pageable: returns once the copy is done
        check_blocking_wait("cuMemcpyDtoHAsync to pageable memory", stream_pending(S(s)));
        enqueue(S(s), Op{[d, h, n] { memcpy(h, (void*)d, n); }});
        drain(S(s), S(s)->enqueued);
    }
    return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr a, CUdeviceptr b, size_t n, void* s) {
    API(cuMemcpyDtoDAsync_v2);
    NEED_CTX();
    enqueue(S(s), Op{[a, b, n] { memmove((void*)a, (void*)b, n); }});
    return OK;
}
CUresult cuMemHostRegister_v2(void* p, size_t n, unsigned) {
    API(cuMemHostRegister_v2);
    NEED_CTX();
    if (env_on("FAKE_CUDA_NO_REGISTER")) return E_NOT_SUPPORTED;
    if (is_pinned(p, 1) || is_pinned((char*)p + n - 1, 1)) return E_HOST_MEMORY_ALREADY_REGISTERED;
    g_pinned[(uintptr_t)p] = n;
    return OK;
}
CUresult cuMemHostUnregister(void* p) {
    API(cuMemHostUnregister);
    NEED_CTX();
    auto it = g_pinned.find((uintptr_t)p);
    if (it == g_pinned.end()) return E_HOST_MEMORY_NOT_REGISTERED;
    check_no_pending_host(it->first, it->first + it->second, "cuMemHostUnregister");
    g_pinned.erase(it);
    return OK;
}
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* d, void* p, unsigned) {
    API(cuMemHostGetDevicePointer_v2);
    NEED_CTX();
    if (!is_pinned(p, 1)) return E_INVALID_VALUE;
    *d = (CUdeviceptr)p;  // unified addressing: the same address
    return OK;
}
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    API(cuMemHostAlloc);
    NEED_CTX();
    *p = aligned_alloc(4096, (std::max<size_t>(n, 1) + 4095) / 4096 * 4096);
    if (!*p) return E_OUT_OF_MEMORY;
    g_pinned[(uintptr_t)*p] = n;
    return OK;
}
CUresult cuMemFreeHost(void* p) {
    API(cuMemFreeHost);
    auto it = g_pinned.find((uintptr_t)p);
    if (it == g_pinned.end()) return E_INVALID_VALUE;
    check_no_pending_host(it->first, it->first + it->second, "cuMemFreeHost");
    g_pinned.erase(it);
    free(p);
    return OK;
}

// streams and events
CUresult cuStreamCreate(void** s, unsigned) {
    API(cuStreamCreate);
    NEED_CTX();
    Stream* n = new Stream{g_next_stream++};
    g_streams[n->id] = n;
    *s = n;
    return OK;
}
CUresult cuStreamDestroy_v2(void* s) {
    API(cuStreamDestroy_v2);
    Stream* st = S(s);
    drain(st, st->enqueued);  // work enqueued before destroy still runs
    g_streams.erase(st->id);
    delete st;
    return OK;
}
CUresult cuStreamSynchronize(void* s) {
    API(cuStreamSynchronize);
    NEED_CTX();
    if (drop_wait("mapped_sync") && has_mapped_work(S(s))) return OK;  // mutation
    check_blocking_wait("cuStreamSynchronize", stream_pending(S(s)));
    drain(S(s), S(s)->enqueued);
    return OK;
}
CUresult cuEventCreate(Event** e, unsigned flags) {
    API(cuEventCreate);
    NEED_CTX();
    *e = new Event{flags};
    return OK;
}
CUresult cuEventDestroy_v2(Event* e) {
    API(cuEventDestroy_v2);
    delete e;  // a queued record keeps its state alive
    return OK;
}
CUresult cuEventRecord(Event* e, void* s) {
    API(cuEventRecord);
    NEED_CTX();
    Stream* st = S(s);
    auto state = std::make_shared<EventState>();
    e->st = state;
    enqueue(st, Op{[state] { state->t = g_clock_ms; }});
    e->stream = st->id;
    e->seq = st->enqueued;
    e->recorded = true;
    return OK;
}
CUresult cuStreamWaitEvent(void* s, Event* e, unsigned) {
    API(cuStreamWaitEvent);
    NEED_CTX();
    if (!e->recorded) return OK;  // never recorded: a no-op
    Stream* waiter = S(s);
    auto it = g_streams.find(e->stream);
    if (it != g_streams.end()) {  // mutations: forget one kind of wait
        const bool from_kernels = it->second->kernels, into_kernels = waiter->kernels;
        if (drop_wait("copy_reader") && !into_kernels && from_kernels) return OK;
        if (drop_wait("compute_copy") && into_kernels && !from_kernels) return OK;
    }
    const uint64_t id = e->stream, seq = e->seq;  // the record as of now
    enqueue(waiter, Op{[id, seq] {
                auto it = g_streams.find(id);
                if (it != g_streams.end()) drain(it->second, seq);
            }});
    return OK;
}
CUresult cuEventSynchronize(Event* e) {
    API(cuEventSynchronize);
    if (!e->recorded) return OK;
    auto it = g_streams.find(e->stream);
    if (it != g_streams.end()) {
        if (drop_wait("mapped_sync") && has_mapped_work(it->second)) return OK;  // mutation
        check_blocking_event_wait(e->flags & 1 /* CU_EVENT_BLOCKING_SYNC */, !event_done(e));
        drain(it->second, e->seq);
    }
    return OK;
}
CUresult cuEventQuery(Event* e) {
    API(cuEventQuery);
    return event_done(e) ? OK : E_NOT_READY;
}
CUresult cuEventElapsedTime(float* ms, Event* a, Event* b) {
    API(cuEventElapsedTime);
    if ((a->flags | b->flags) & 2 /* CU_EVENT_DISABLE_TIMING */) return E_INVALID_HANDLE;
    if (!a->recorded || !b->recorded) return E_INVALID_HANDLE;
    if (!event_done(a) || !event_done(b)) return E_NOT_READY;
    *ms = (float)(b->st->t - a->st->t);
    return OK;
}

// modules and launches
CUresult cuModuleLoadData(void** m, const void* image) {
    API(cuModuleLoadData);
    NEED_CTX();
    // The kernels are the host-compiled ones, whatever the image; the image
    // only says which knobs refuse it: the placeholder fatbin of
    // fake-nvcc, or what fake_nvrtc.cpp made ("... sm_XY\n", for one arch).
    const char* img = static_cast<const char*>(image);
    static const char fatbin[] = "FLEA-EMULATED-FATBIN";
    static const char nvrtc[] = "FLEA-EMULATED-NVRTC sm_";
    if (!strncmp(img, fatbin, sizeof fatbin - 1)) {
        if (env_on("FAKE_CUDA_OLD_DRIVER")) return E_UNSUPPORTED_PTX_VERSION;
        if (env_on("FAKE_CUDA_NO_IMAGE")) return E_NO_BINARY_FOR_GPU;
    } else if (!strncmp(img, nvrtc, sizeof nvrtc - 1)) {
        if (env_on("FAKE_CUDA_REFUSE_NVRTC")) return E_INVALID_IMAGE;
        const long arch = atol(img + sizeof nvrtc - 1);
        if (arch != env_num("FAKE_CUDA_CC_MAJOR", 8) * 10 + env_num("FAKE_CUDA_CC_MINOR", 7))
            return E_NO_BINARY_FOR_GPU;  // a cubin for another GPU
    } else {
        return E_INVALID_IMAGE;
    }
    register_kernels();
    *m = g_funcs;
    return OK;
}
CUresult cuModuleUnload(void*) {
    API(cuModuleUnload);
    return OK;
}
CUresult cuModuleGetFunction(Func** f, void*, const char* name) {
    API(cuModuleGetFunction);
    NEED_CTX();
    auto it = g_funcs->find(name);
    if (it == g_funcs->end()) return E_NOT_FOUND;
    *f = &it->second;
    return OK;
}
CUresult cuLaunchKernel(Func* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shmem, void* s, void** params, void** extra) {
    API(cuLaunchKernel);
    NEED_CTX();
    if (extra) return E_INVALID_VALUE;
    if (bx * by * bz == 0 || bx * by * bz > 1024 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 ||
        gz > 65535)
        return E_INVALID_VALUE;
    if (shmem) return E_INVALID_VALUE;  // no kernel here uses dynamic shared memory
    if (++g_launches == env_num("FAKE_CUDA_FAIL_LAUNCH", 0)) return E_LAUNCH_FAILED;
    Made made = f->make(params, Launch{dim3{gx, gy, gz}, dim3{bx, by, bz}});
    Stream* st = S(s);
    st->kernels = true;
    Op op{std::move(made.run)};
    if (made.mapped_hi) {
        op.mapped = true;
        op.host_lo = made.mapped_lo;
        op.host_hi = made.mapped_hi;
    }
    enqueue(st, std::move(op));
    return OK;
}

}  // extern "C"
#pragma GCC visibility pop

// A stand-in for libnvrtc.so.12, for the emulated tier: it "compiles" the
// kernel source the binary carries (src/backend/cuda/kernel_cache.rs) into
// an image only the emulated driver (fake_cuda.cpp) loads, after checking
// what a real NVRTC would need of it: one self-contained translation unit
// (no local #include left; NVRTC has no files) for a real architecture
// (--gpu-architecture=sm_XY, whose cubin the driver then loads, or refuses
// for another GPU). The emulated driver runs the host-compiled kernels
// whatever the image, so this checks the fallback's plumbing (library
// found, options, cache, the driver taking the result), not the kernels
// under NVRTC: tests/nvrtc.rs does that with NVIDIA's real libnvrtc.
//
// Knobs: FAKE_NVRTC_FAIL=1 fails every compilation (with a log);
// FAKE_NVRTC_COUNT=<file> appends a line per compilation to <file>.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
struct Program {
    std::string src, log, image;
};
bool env_on(const char* n) {
    const char* v = getenv(n);
    return v && *v && *v != '0';
}
enum {
    SUCCESS = 0, INVALID_INPUT = 3, INVALID_PROGRAM = 4, INVALID_OPTION = 5, COMPILATION = 6,
};
}  // namespace

#pragma GCC visibility push(default)
extern "C" {

const char* nvrtcGetErrorString(int r) {
    switch (r) {
        case SUCCESS: return "NVRTC_SUCCESS";
        case INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
        case INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
        case INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
        case COMPILATION: return "NVRTC_ERROR_COMPILATION";
        default: return "NVRTC_ERROR (emulated)";
    }
}

int nvrtcVersion(int* major, int* minor) {
    *major = 12;
    *minor = 6;
    return SUCCESS;
}

int nvrtcCreateProgram(Program** prog, const char* src, const char*, int, const char* const*,
                       const char* const*) {
    if (!prog || !src) return INVALID_INPUT;
    *prog = new Program{src, "", ""};
    return SUCCESS;
}

int nvrtcDestroyProgram(Program** prog) {
    if (!prog || !*prog) return INVALID_PROGRAM;
    delete *prog;
    *prog = nullptr;
    return SUCCESS;
}

int nvrtcCompileProgram(Program* p, int n, const char* const* options) {
    if (!p) return INVALID_PROGRAM;
    if (const char* count = getenv("FAKE_NVRTC_COUNT")) {
        if (FILE* f = fopen(count, "a")) {
            fputs("compile\n", f);
            fclose(f);
        }
    }
    if (env_on("FAKE_NVRTC_FAIL")) {
        p->log = "fake nvrtc: error: compilation failed on purpose (FAKE_NVRTC_FAIL)";
        return COMPILATION;
    }
    std::string arch;
    for (int i = 0; i < n; i++) {
        static const char flag[] = "--gpu-architecture=sm_";
        if (!strncmp(options[i], flag, sizeof flag - 1)) arch = options[i] + sizeof flag - 1;
    }
    if (arch.empty()) {
        p->log = "fake nvrtc: no --gpu-architecture=sm_XY: no cubin to make";
        return INVALID_OPTION;
    }
    const size_t inc = p->src.find("#include \"");
    if (inc != std::string::npos) {
        p->log = "fake nvrtc: error: cannot open source file " +
                 p->src.substr(inc + 9, p->src.find('\n', inc) - inc - 9);
        return COMPILATION;
    }
    if (p->src.find("__global__") == std::string::npos) {
        p->log = "fake nvrtc: error: no kernels in the program";
        return COMPILATION;
    }
    p->image = "FLEA-EMULATED-NVRTC sm_" + arch + "\n";
    p->log = "";
    return SUCCESS;
}

int nvrtcGetProgramLogSize(Program* p, size_t* size) {
    if (!p) return INVALID_PROGRAM;
    *size = p->log.size() + 1;
    return SUCCESS;
}

int nvrtcGetProgramLog(Program* p, char* log) {
    if (!p) return INVALID_PROGRAM;
    memcpy(log, p->log.c_str(), p->log.size() + 1);
    return SUCCESS;
}

int nvrtcGetCUBINSize(Program* p, size_t* size) {
    if (!p || p->image.empty()) return INVALID_PROGRAM;
    *size = p->image.size() + 1;
    return SUCCESS;
}

int nvrtcGetCUBIN(Program* p, char* cubin) {
    if (!p || p->image.empty()) return INVALID_PROGRAM;
    memcpy(cubin, p->image.c_str(), p->image.size() + 1);
    return SUCCESS;
}

}  // extern "C"
#pragma GCC visibility pop

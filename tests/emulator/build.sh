#!/usr/bin/env bash
# Builds the emulated CUDA driver: tests/emulator/fake_cuda.cpp with the
# project's own kernels/*.cu, into <out>/libcuda.so (default
# target/emulator/lib), and the emulated NVRTC (tests/emulator/
# fake_nvrtc.cpp) into <out>/../nvrtc/libnvrtc.so.12: a folder of its own,
# so that NVRTC is absent unless a test puts that folder on
# LD_LIBRARY_PATH. Needs only a C++20 compiler ($CXX, else g++).
# kernels/ is copied into the build folder with tests/emulator/shim.h as
# host/shim.h: the kernels include "host/shim.h" relative to themselves, so
# a copy is the way to give them the emulator's shim instead of
# kernels/host/shim.h without touching the kernel sources.
#
# Usage: tests/emulator/build.sh [out-dir]   (prints the library's folder)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/target/emulator/lib}"
cxx="${CXX:-g++}"
if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "emulator: no C++ compiler ($cxx); install one, e.g. 'sudo apt-get install g++'" >&2
    exit 1
fi
if [ "$(uname -m)" != x86_64 ]; then
    echo "emulator: the fiber switch is x86-64 only (this is $(uname -m))" >&2
    exit 1
fi
work="$root/target/emulator/src"
rm -rf "$work"
mkdir -p "$work/kernels/host" "$out"
# Every file at the top of kernels/ (sources and headers such as geometry.h).
find "$root/kernels" -maxdepth 1 -type f -exec cp {} "$work/kernels/" \;
cp "$root/tests/emulator/shim.h" "$work/kernels/host/shim.h"
cp "$root/tests/emulator/fake_cuda.cpp" "$work/"
# -ffp-contract=off: the kernels' __f*_rn and the CPU reference do not fuse.
# -fvisibility=hidden: only the driver API is exported, not the kernels.
# ${FAKE_CUDA_CXXFLAGS}: extra flags (e.g. -fsanitize=address).
# shellcheck disable=SC2086
"$cxx" -std=c++20 -O2 -g0 -ffp-contract=off -fno-strict-aliasing -fPIC -shared -pthread \
    -fvisibility=hidden -mtls-dialect=gnu2 -w ${FAKE_CUDA_CXXFLAGS:-} -I "$work" \
    "$work/fake_cuda.cpp" -o "$out/libcuda.so.tmp"
mv "$out/libcuda.so.tmp" "$out/libcuda.so"
nvrtc="$out/../nvrtc"
mkdir -p "$nvrtc"
"$cxx" -std=c++20 -O1 -g0 -fPIC -shared -fvisibility=hidden -w \
    -Wl,-soname,libnvrtc.so.12 "$root/tests/emulator/fake_nvrtc.cpp" -o "$nvrtc/libnvrtc.so.12.tmp"
mv "$nvrtc/libnvrtc.so.12.tmp" "$nvrtc/libnvrtc.so.12"
echo "$out"

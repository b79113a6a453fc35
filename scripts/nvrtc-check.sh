#!/usr/bin/env bash
# Compile the kernel sources the binary carries (src/backend/cuda/
# kernel_cache.rs) with NVIDIA's real NVRTC, on a machine with no GPU and no
# CUDA toolkit: installs the NVRTC wheel from PyPI into a venv and runs the
# one test that uses it (tests/emulated.rs,
# nvidias_nvrtc_compiles_the_carried_kernels) with FLEA_NVRTC_LIB pointing at
# it. NVRTC needs no device. This is what the NVRTC fallback compiles on a
# machine whose driver cannot load the fatbin; the emulated tier only checks
# its plumbing (tests/emulator/fake_nvrtc.cpp).
#
# Builds `--features cuda` with the fake nvcc (tests/emulator/fake-nvcc):
# the fatbin is not the subject here.
#
# Env: FLEA_NVRTC_VENV (default target/nvrtc-venv), FLEA_NVRTC_WHEEL (default
#      nvidia-cuda-nvrtc-cu12==12.9.86), FLEA_NVRTC_ARCHS (default "75 87 90"),
#      CARGO_TARGET_DIR (default target/emu), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLEA_NVRTC_VENV:-$PWD/target/nvrtc-venv}"
wheel="${FLEA_NVRTC_WHEEL:-nvidia-cuda-nvrtc-cu12==12.9.86}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/emu}"

if [ ! -x "$venv/bin/pip" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/pip" install --disable-pip-version-check --quiet "$wheel" >&2
lib="$(find "$venv" -name 'libnvrtc.so.1[0-9]' -type f -print -quit)"
if [ -z "$lib" ]; then
    echo "nvrtc-check: FAILED: no libnvrtc.so.* under $venv after installing $wheel" >&2
    exit 1
fi
echo "nvrtc-check: $lib"
NVCC="$PWD/tests/emulator/fake-nvcc" FLEA_NVRTC_LIB="$lib" \
    cargo test --locked --features cuda --test emulated -- --exact \
    emulated::nvidias_nvrtc_compiles_the_carried_kernels --nocapture

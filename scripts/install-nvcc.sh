#!/usr/bin/env bash
# Install a CUDA compiler (nvcc) from NVIDIA's PyPI wheels into a Python
# virtual environment, for building `--features cuda` on a machine without
# the CUDA toolkit (CI, x86 developer boxes). Idempotent: a second run with
# the same versions installs nothing.
#
# On a Jetson use JetPack's own nvcc instead (/usr/local/cuda/bin/nvcc): its
# CUDA 12.x output runs on the board's driver, which a CUDA 13 build does not.
#
# Prints the variables to export on its last lines, e.g.
#   eval "$(scripts/install-nvcc.sh | grep '^export ')"
#
# Environment:
#   FLEA_NVCC_VENV   where the venv goes (default /opt/flea-nvcc)
#   PYTHON           the interpreter that makes it (default python3)
#
# Why these wheels: only the CUDA 13 wheels carry the nvcc driver itself (the
# cu12 "nvcc" wheel has ptxas and headers only). Pinned to 13.0 so that the
# PTX in the fatbin JIT-compiles on any CUDA 13 driver (R580 or newer); the
# SASS for sm_87/sm_90 runs on any 13.x driver.
set -euo pipefail

VENV="${FLEA_NVCC_VENV:-/opt/flea-nvcc}"
PYTHON="${PYTHON:-python3}"
PACKAGES=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-cccl==13.0.85"
)

log() { echo "install-nvcc: $*" >&2; }

if [ ! -x "$VENV/bin/pip" ]; then
    log "creating venv $VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
        log "cannot create a venv with $PYTHON (Debian/Ubuntu: apt-get install python3-venv)"
        exit 1
    fi
fi

# Skip pip entirely when every pinned version is already there.
missing=0
for spec in "${PACKAGES[@]}"; do
    name="${spec%%==*}"
    want="${spec##*==}"
    have="$("$VENV/bin/pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p')"
    if [ "$have" != "$want" ]; then
        missing=1
    fi
done
if [ "$missing" = 1 ]; then
    log "installing ${PACKAGES[*]}"
    "$VENV/bin/pip" install --disable-pip-version-check --quiet "${PACKAGES[@]}" >&2
else
    log "pinned wheels already installed in $VENV"
fi

NVCC="$(find "$VENV" -path '*/bin/nvcc' -type f | head -n 1)"
if [ -z "$NVCC" ] || [ ! -x "$NVCC" ]; then
    log "no nvcc found under $VENV after install"
    exit 1
fi
CUDA_ROOT="$(cd "$(dirname "$NVCC")/.." && pwd)"
log "$("$NVCC" --version | tail -n 2 | head -n 1)"

# nvcc calls the host C++ compiler.
if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
    log "warning: no host C++ compiler (g++) on PATH; nvcc needs one (apt-get install g++)"
fi

echo "export NVCC=$NVCC"
echo "export CUDA_HOME=$CUDA_ROOT"

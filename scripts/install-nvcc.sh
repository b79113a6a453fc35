#!/usr/bin/env bash
# Install a CUDA compiler (nvcc) from NVIDIA's PyPI wheels into a Python
# virtual environment, for building `--features cuda` on a machine without
# the CUDA toolkit (CI, x86 developer boxes). Idempotent: a second run with
# the same versions installs nothing.
#
# On a Jetson use JetPack's own nvcc instead (/usr/local/cuda/bin/nvcc): its
# CUDA 12.x output runs on the board's driver, which a CUDA 13 build does not.
#
# Prints the variables to export on stdout (and nothing else there), e.g.
#   exports="$(scripts/install-nvcc.sh)" && eval "$exports"
# Capture first, then eval: a pipeline inside eval "$(...)" hides the
# installer's exit status. Progress and errors go to stderr.
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

# Skip pip entirely when every pinned version is already there. `pip show`
# exits 1 for a package that is not installed: that is the expected answer on
# a fresh venv, not a failure, so its status is read explicitly (under
# `set -e -o pipefail` a bare `have=$(pip show ... | sed ...)` would end the
# script silently right here).
installed_version() {
    local out
    if out="$("$VENV/bin/pip" show "$1" 2>/dev/null)"; then
        sed -n 's/^Version: //p' <<<"$out"
    fi
}
missing=0
for spec in "${PACKAGES[@]}"; do
    name="${spec%%==*}"
    want="${spec##*==}"
    have="$(installed_version "$name")"
    if [ "$have" != "$want" ]; then
        missing=1
    fi
done
if [ "$missing" = 1 ]; then
    log "installing ${PACKAGES[*]} into $VENV"
    if ! "$VENV/bin/pip" install --disable-pip-version-check --quiet "${PACKAGES[@]}" >&2; then
        log "error: pip install failed (see above); cannot build --features cuda without nvcc"
        exit 1
    fi
else
    log "pinned wheels already installed in $VENV"
fi

NVCC="$(find "$VENV" -path '*/bin/nvcc' -type f -print -quit)"
if [ -z "$NVCC" ] || [ ! -x "$NVCC" ]; then
    log "no nvcc found under $VENV after install"
    exit 1
fi
CUDA_ROOT="$(cd "$(dirname "$NVCC")/.." && pwd)"
if ! version="$("$NVCC" --version)"; then
    log "error: $NVCC does not run"
    exit 1
fi
log "$(sed -n 's/.*\(release [0-9.]*\).*/nvcc \1/p' <<<"$version")"

# nvcc calls the host C++ compiler.
if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
    log "error: no host C++ compiler (g++) on PATH; nvcc needs one (apt-get install g++)"
    exit 1
fi

echo "export NVCC=$NVCC"
echo "export CUDA_HOME=$CUDA_ROOT"

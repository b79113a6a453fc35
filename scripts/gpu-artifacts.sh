#!/usr/bin/env bash
# Build everything a GPU machine without cargo needs for scripts/gpu-check.sh,
# and put it in one folder (default artifacts/, ignored by git):
#
#   artifacts/flea            the CLI (for `flea synth`), stripped
#   artifacts/gpu_bench       examples/gpu_bench.rs, stripped
#   artifacts/tests/gpu       the tests/gpu.rs executable, stripped
#   artifacts/tests/*         every other test executable, with --all-tests
#   artifacts/fixtures/...    the fixtures the GPU tests read (see FIXTURES)
#   artifacts/MANIFEST        what was built, from which commit, for which archs,
#                             with which CUDA release ("cuda release: 13.0")
#
# gpu-check.sh picks, of the sets it is given, the one the driver can load;
# to ship several (e.g. for drivers older than R580, which cannot load a CUDA
# 13 build), build each into its own subfolder with that release's nvcc:
#   NVCC=/usr/local/cuda-12.6/bin/nvcc scripts/gpu-artifacts.sh artifacts/cuda-12.6
#   scripts/gpu-artifacts.sh artifacts/cuda-13.0
# and run `artifacts/cuda-13.0/gpu-check.sh artifacts`.
#
# Usage: scripts/gpu-artifacts.sh [DEST] [--all-tests]
#
# FIXTURES (env) chooses which fixtures are copied (read from
# ../shared/fixtures or $FLEA_FIXTURES; copied for transport only, never into
# the source tree):
#   lite (default)  dequant/, llama-2-tiny-random, synth-256-Q4_K_M (with
#                   reference logits) and synth-256-Q8_0 (model and token
#                   lists): about 45 MB, so the whole folder stays under a
#                   64 MiB transfer limit. gpu-check then sets
#                   FLEA_GPU_PARTIAL_FIXTURES=1 and tests of the other models
#                   print "skipped: fixtures not shipped".
#   full            every fixture (about 100 MB).
#   none            no fixtures (the machine has its own FLEA_FIXTURES).
#
# nvcc: uses $NVCC / $CUDA_HOME / PATH as build.rs does; if none is set and
# no nvcc is on PATH, runs scripts/install-nvcc.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=artifacts
ALL_TESTS=0
for a in "$@"; do
    case "$a" in
        --all-tests) ALL_TESTS=1 ;;
        -*) echo "gpu-artifacts: unknown option $a" >&2; exit 2 ;;
        *) DEST="$a" ;;
    esac
done
FIXTURES="${FIXTURES:-lite}"
TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
SRC_FIXTURES="${FLEA_FIXTURES:-$(pwd)/../shared/fixtures}"
JOBS="${CARGO_BUILD_JOBS:-}"

if [ -z "${NVCC:-}" ] && [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null 2>&1 \
    && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    # Capture, then eval: an installer failure stops this script here.
    nvcc_exports="$(scripts/install-nvcc.sh)"
    eval "$nvcc_exports"
fi

cargo_args=(--release --locked --features cuda --target-dir "$TARGET_DIR")
if [ -n "$JOBS" ]; then cargo_args+=(-j "$JOBS"); fi

echo "gpu-artifacts: building (target dir $TARGET_DIR)" >&2
cargo build "${cargo_args[@]}" --bin flea --example gpu_bench
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
cargo test "${cargo_args[@]}" --no-run --message-format=json >"$json"

rm -rf "$DEST"
mkdir -p "$DEST/tests"
copy_bin() { # src dst
    cp "$1" "$2"
    strip "$2" 2>/dev/null || true
    chmod +x "$2"
}
copy_bin "$TARGET_DIR/release/flea" "$DEST/flea"
copy_bin "$TARGET_DIR/release/examples/gpu_bench" "$DEST/gpu_bench"

# Test executables: compiler-artifact records of test targets with an
# executable; named after their target ("gpu", "reference", ... and "flea"
# for the library's unit tests).
python3 - "$json" "$ALL_TESTS" <<'EOF' | while read -r name path; do copy_bin "$path" "$DEST/tests/$name"; done
import json, sys
all_tests = sys.argv[2] == "1"
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if not m.get("profile", {}).get("test"):
        continue
    name = m["target"]["name"]
    if all_tests or name == "gpu":
        print(name, m["executable"])
EOF
[ -x "$DEST/tests/gpu" ] || { echo "gpu-artifacts: no tests/gpu executable was built" >&2; exit 1; }

copy_fixture() { # relative path
    mkdir -p "$DEST/fixtures/$(dirname "$1")"
    cp -r "$SRC_FIXTURES/$1" "$DEST/fixtures/$1"
}
case "$FIXTURES" in
    lite)
        copy_fixture dequant
        for m in llama-2-tiny-random synth-256-Q4_K_M; do
            copy_fixture "models/$m.gguf"
            copy_fixture "reference/$m.json"
            copy_fixture "reference/$m.logits.bin"
        done
        copy_fixture models/synth-256-Q8_0.gguf
        copy_fixture reference/synth-256-Q8_0.json
        touch "$DEST/fixtures/PARTIAL"
        ;;
    full) mkdir -p "$DEST/fixtures" && cp -r "$SRC_FIXTURES/." "$DEST/fixtures/" ;;
    none) ;;
    *) echo "gpu-artifacts: FIXTURES must be lite, full or none" >&2; exit 2 ;;
esac
chmod -R u+w "$DEST"
cp scripts/gpu-check.sh "$DEST/gpu-check.sh"

nvcc_version="$("${NVCC:-nvcc}" --version 2>/dev/null | tail -n 2 | head -n 1 || echo unknown)"
{
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    # The default is build.rs's DEFAULT_ARCHS.
    echo "cuda archs: ${FLEA_CUDA_ARCHS:-75;80;86;87;89;90} (SASS; PTX for the lowest; kernel sources for NVRTC)"
    echo "nvcc: $nvcc_version"
    # What gpu-check.sh compares with the driver's CUDA version: a driver
    # older than this release cannot load the kernels.
    echo "cuda release: $(sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' <<<"$nvcc_version" | head -n 1)"
    echo "fixtures: $FIXTURES"
} >"$DEST/MANIFEST"
du -sh "$DEST" >&2
echo "gpu-artifacts: done; on the GPU machine run: $DEST/gpu-check.sh $DEST" >&2

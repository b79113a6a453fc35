#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and no Rust toolchain: runs the
# prebuilt artifacts made by scripts/gpu-artifacts.sh and writes a log.
#
# Usage: gpu-check.sh [ARTIFACTS_DIR] [LOG_DIR]
#   ARTIFACTS_DIR  default: the folder holding this script if it has a
#                  gpu_bench, else ./artifacts
#   LOG_DIR        default: $OUT if set, else ARTIFACTS_DIR/logs
#
# Steps (each under its own timeout; the whole run stays under 5 minutes):
#   1. nvidia-smi, if present: the GPU and driver.
#   2. tests/gpu with FLEA_REQUIRE_GPU=1: every kernel against the CPU
#      path, reference logits, GPU vs CPU greedy tokens (a test that finds no
#      usable GPU fails rather than skips).
#   3. flea synth --preset 7b --quant q4_k_m into a scratch folder (~4 GB,
#      deleted at the end; FLEA_GPU_CHECK_WORK chooses the folder, default a
#      fresh mktemp -d).
#   4. gpu_bench on it: a fully resident decode of 128 tokens, tokens/s,
#      device-to-device copy bandwidth and HBM utilization.
#
# Writes LOG_DIR/gpu-check.log (everything), LOG_DIR/gpu-tests.log,
# LOG_DIR/gpu-bench.log and LOG_DIR/gpu-bench.json (the bench's JSON line).
# Exits 0 only if every step passed; the last line summarizes.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -ge 1 ]; then
    ART="$1"
elif [ -x "$here/gpu_bench" ]; then
    ART="$here"
else
    ART="artifacts"
fi
ART="$(cd "$ART" && pwd)" || { echo "gpu-check: no artifacts folder" >&2; exit 2; }
LOG_DIR="${2:-${OUT:-$ART/logs}}"
mkdir -p "$LOG_DIR"
LOG_DIR="$(cd "$LOG_DIR" && pwd)"
if [ -n "${FLEA_GPU_CHECK_WORK:-}" ]; then
    WORK="$FLEA_GPU_CHECK_WORK"
    mkdir -p "$WORK"
    made_work=0
else
    WORK="$(mktemp -d)"
    made_work=1
fi
model="$WORK/synth-7b-q4_k_m.gguf"
cleanup() {
    rm -f "$model" "$model.partial"
    if [ "$made_work" = 1 ]; then rmdir "$WORK" 2>/dev/null || true; fi
}
trap cleanup EXIT

exec > >(tee "$LOG_DIR/gpu-check.log") 2>&1
start=$(date +%s)
echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
echo "artifacts: $ART"
[ -f "$ART/MANIFEST" ] && sed 's/^/  /' "$ART/MANIFEST"
for f in flea gpu_bench tests/gpu; do
    [ -x "$ART/$f" ] || { echo "gpu-check: missing $ART/$f (run scripts/gpu-artifacts.sh)"; exit 2; }
done

if [ -z "${FLEA_FIXTURES:-}" ] && [ -d "$ART/fixtures" ]; then
    export FLEA_FIXTURES="$ART/fixtures"
fi
if [ -n "${FLEA_FIXTURES:-}" ] && [ -f "$FLEA_FIXTURES/PARTIAL" ]; then
    export FLEA_GPU_PARTIAL_FIXTURES=1
fi
echo "fixtures: ${FLEA_FIXTURES:-(compiled-in default)}${FLEA_GPU_PARTIAL_FIXTURES:+ (subset)}"

echo "== 1. device"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.memory \
        --format=csv 2>&1 || nvidia-smi 2>&1 | head -n 15
else
    echo "(no nvidia-smi)"
fi

status_tests=FAIL
status_bench=FAIL

echo "== 2. tests/gpu"
t0=$(date +%s)
FLEA_REQUIRE_GPU=1 timeout 150 "$ART/tests/gpu" --test-threads 2 2>&1 | tee "$LOG_DIR/gpu-tests.log"
rc=${PIPESTATUS[0]}
echo "tests/gpu: exit $rc in $(($(date +%s) - t0)) s"
[ "$rc" = 0 ] && status_tests=PASS

echo "== 3. flea synth --preset 7b --quant q4_k_m"
t0=$(date +%s)
timeout 120 "$ART/flea" synth --preset 7b --quant q4_k_m --out "$model" 2>&1 | tr '\r' '\n' | tail -n 3
rc=${PIPESTATUS[0]}
echo "synth: exit $rc in $(($(date +%s) - t0)) s"

if [ "$rc" = 0 ]; then
    echo "== 4. gpu_bench (128 tokens, fully resident)"
    t0=$(date +%s)
    FLEA_REQUIRE_GPU=1 timeout 150 "$ART/gpu_bench" "$model" --tokens 128 --prompt 32 2>&1 | tee "$LOG_DIR/gpu-bench.log"
    rc=${PIPESTATUS[0]}
    echo "gpu_bench: exit $rc in $(($(date +%s) - t0)) s"
    grep '^{' "$LOG_DIR/gpu-bench.log" | tail -n 1 >"$LOG_DIR/gpu-bench.json" || true
    [ "$rc" = 0 ] && status_bench=PASS
fi

echo "== gpu-check: tests $status_tests, bench $status_bench, $(($(date +%s) - start)) s total"
[ "$status_tests" = PASS ] && [ "$status_bench" = PASS ]

#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and no Rust toolchain: runs the
# prebuilt artifacts made by scripts/gpu-artifacts.sh and writes a log.
#
# Usage: gpu-check.sh [ARTIFACTS_DIR] [LOG_DIR]
#   ARTIFACTS_DIR  default: the folder holding this script if it has a
#                  gpu_bench, else ./artifacts
#   LOG_DIR        default: $OUT if set, else ARTIFACTS_DIR/logs
#
# Steps, each under its own timeout, all inside a deadline of
# FLEA_GPU_CHECK_DEADLINE seconds (default 340, so the whole run stays under
# 6 minutes; a step gets at most what is left):
#   1. nvidia-smi, if present: the GPU and driver.
#   2. tests/gpu with FLEA_REQUIRE_GPU=1: every kernel against the CPU
#      path, reference logits, GPU vs CPU greedy tokens, streamed vs resident
#      logits bit for bit (device double buffer, mapped host slots, pageable
#      copies) for every fixture (a test that finds no usable GPU fails
#      rather than skips).
#   3. flea synth --preset 13b --quant q4_k_m (7.3 GB) into a scratch folder
#      on the machine's disk (deleted at the end; FLEA_GPU_CHECK_WORK chooses
#      the folder, default a fresh one under the current directory, not /tmp,
#      which may be in memory).
#   4. gpu_bench streamed: the 13B inside a device budget of 3 GiB
#      (FLEA_GPU_CHECK_BUDGET), through the device double buffer and the
#      mapped host slots, against a fully resident run; 16 decode tokens
#      after an 8-token prompt, each decode capped at 40 s. Tokens/s, copy
#      wait and kernel time per layer, H2D achieved vs pinned, time per
#      token vs the H2D and disk bounds, device memory vs the budget, and
#      whether all runs' logits are bit-identical (the bench fails if not;
#      device memory over the budget fails this script).
#   5. gpu_bench resident on the same file, if time is left: 64 tokens,
#      tokens/s and HBM utilization.
#
# Writes LOG_DIR/gpu-check.log (everything), LOG_DIR/gpu-tests.log,
# LOG_DIR/gpu-stream.log, LOG_DIR/gpu-stream.jsonl (the streamed bench's
# JSON lines: one per run and a summary), LOG_DIR/gpu-bench.log and
# LOG_DIR/gpu-bench.json (the resident bench's JSON line).
# Exits 0 only if tests and the streamed bench passed; the last line
# summarizes.
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
    WORK="$(mktemp -d "$PWD/gpu-check-work.XXXXXX")"
    made_work=1
fi
DEADLINE="${FLEA_GPU_CHECK_DEADLINE:-340}"
BUDGET="${FLEA_GPU_CHECK_BUDGET:-3GiB}"
model="$WORK/synth-13b-q4_k_m.gguf"
cleanup() {
    rm -f "$model" "$model.partial" "$WORK"/standin-tiny-*.gguf "$WORK"/standin-tiny-*.gguf.partial
    if [ "$made_work" = 1 ]; then rmdir "$WORK" 2>/dev/null || true; fi
}
trap cleanup EXIT

exec > >(tee "$LOG_DIR/gpu-check.log") 2>&1
start=$(date +%s)
# Seconds a step may take: its cap, or what is left before the deadline.
allow() { # cap
    local left=$((DEADLINE - ($(date +%s) - start)))
    if [ "$left" -lt 1 ]; then left=1; fi
    if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# The driver version first: a driver older than the CUDA release that built
# the artifacts cannot load their kernels, and every later step reads wrong
# without it.
if command -v nvidia-smi >/dev/null 2>&1; then
    echo "driver: $(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1)"
else
    echo "driver: (no nvidia-smi)"
fi
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
status_stream=FAIL
status_bench=SKIP

echo "== 2. tests/gpu"
if [ -n "${FLEA_GPU_PARTIAL_FIXTURES:-}" ]; then
    # Stand-ins for the fixture models not shipped (same 4-layer, dim-256
    # shape and quantization mixes), for the streamed-vs-resident test.
    extra=""
    for q in q3_k_m q3_k_s q6_k; do
        f="$WORK/standin-tiny-$q.gguf"
        if "$ART/flea" synth --preset tiny --quant "$q" --out "$f" >/dev/null 2>&1; then
            extra="$extra${extra:+:}$f"
        else
            echo "(could not synthesize a $q stand-in)"
        fi
    done
    export FLEA_GPU_EXTRA_MODELS="$extra"
    echo "stand-in models: $extra"
fi
t0=$(date +%s)
FLEA_REQUIRE_GPU=1 timeout "$(allow 150)" "$ART/tests/gpu" --test-threads 2 2>&1 | tee "$LOG_DIR/gpu-tests.log"
rc=${PIPESTATUS[0]}
echo "tests/gpu: exit $rc in $(($(date +%s) - t0)) s"
[ "$rc" = 0 ] && status_tests=PASS

echo "== 3. flea synth --preset 13b --quant q4_k_m"
echo "scratch: $WORK ($(df -hT "$WORK" 2>/dev/null | awk 'NR==2 {print $2 ", " $5 " free"}'))"
t0=$(date +%s)
rc=124
if [ "$(allow 150)" -gt 10 ]; then
    timeout "$(allow 150)" "$ART/flea" synth --preset 13b --quant q4_k_m --out "$model" 2>&1 | tr '\r' '\n' | tail -n 3
    rc=${PIPESTATUS[0]}
fi
echo "synth: exit $rc in $(($(date +%s) - t0)) s"

if [ "$rc" = 0 ]; then
    echo "== 4. gpu_bench streamed (budget $BUDGET, device and mapped feeds, vs resident)"
    t0=$(date +%s)
    FLEA_REQUIRE_GPU=1 FLEA_LOG="${FLEA_LOG:-info}" timeout "$(allow 200)" "$ART/gpu_bench" "$model" \
        --budget "$BUDGET" --buffer both --compare --tokens 16 --prompt 8 --max-seconds 40 \
        2>&1 | tee "$LOG_DIR/gpu-stream.log"
    rc=${PIPESTATUS[0]}
    echo "gpu_bench streamed: exit $rc in $(($(date +%s) - t0)) s"
    grep '^{' "$LOG_DIR/gpu-stream.log" >"$LOG_DIR/gpu-stream.jsonl" || true
    [ "$rc" = 0 ] && status_stream=PASS
    if grep -q '"within_budget":false' "$LOG_DIR/gpu-stream.jsonl"; then
        status_stream="$status_stream, device memory OVER BUDGET"
    fi

    if [ "$(allow 60)" -ge 30 ]; then
        echo "== 5. gpu_bench resident (64 tokens)"
        t0=$(date +%s)
        status_bench=FAIL
        FLEA_REQUIRE_GPU=1 timeout "$(allow 60)" "$ART/gpu_bench" "$model" --tokens 64 --prompt 32 2>&1 | tee "$LOG_DIR/gpu-bench.log"
        rc=${PIPESTATUS[0]}
        echo "gpu_bench resident: exit $rc in $(($(date +%s) - t0)) s"
        grep '^{' "$LOG_DIR/gpu-bench.log" | tail -n 1 >"$LOG_DIR/gpu-bench.json" || true
        [ "$rc" = 0 ] && status_bench=PASS
    else
        echo "== 5. gpu_bench resident: skipped (deadline)"
    fi
fi

echo "== gpu-check: tests $status_tests, streamed bench $status_stream, resident bench $status_bench, $(($(date +%s) - start)) s total"
[ "$status_tests" = PASS ] && [ "$status_stream" = PASS ]

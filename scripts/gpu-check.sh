#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU and no Rust toolchain: runs the
# prebuilt artifacts made by scripts/gpu-artifacts.sh and writes a log.
#
# Usage: gpu-check.sh [ARTIFACTS_DIR] [LOG_DIR]
#   ARTIFACTS_DIR  default: the folder holding this script if it has a
#                  gpu_bench, else ./artifacts. It holds one artifact set
#                  (a MANIFEST, flea, gpu_bench, tests/gpu), or several in
#                  subfolders (e.g. cuda-13.0/, cuda-12.6/, each made by
#                  gpu-artifacts.sh with that CUDA release's nvcc).
#   LOG_DIR        default: $OUT if set, else ARTIFACTS_DIR/logs
#
# First the driver: its version and the newest CUDA release it supports
# (nvidia-smi), then the artifact set it can load: the newest whose CUDA
# release (MANIFEST) is not newer than the driver's (a CUDA 13 image needs
# an R580+ driver). If every set is newer, it says so and goes on only if
# NVRTC is there (flea then compiles the kernel sources it carries for this
# GPU at start), else it stops with what to install.
#
# Steps, each under its own timeout, all inside a deadline of
# FLEA_GPU_CHECK_DEADLINE seconds (default 270, so the whole run stays under
# 5 minutes; a step gets at most what is left):
#   1. nvidia-smi, if present: the GPU and driver.
#   2. tests/gpu with FLEA_REQUIRE_GPU=1 (cap 110 s): every kernel against the
#      CPU path, reference logits, GPU vs CPU greedy tokens, streamed vs
#      resident logits bit for bit (device double buffer, mapped host slots,
#      pageable copies) for every fixture (a test that finds no usable GPU
#      fails rather than skips).
#   3. The NVRTC path (cap 60 s), if libnvrtc is there: `flea run` on the
#      tiny fixture with FLEA_NVRTC=force (the carried sources compiled for
#      this GPU instead of the fatbin). Reported, not required.
#   4. flea synth --preset 7b --quant q4_k_m (3.9 GB; FLEA_GPU_CHECK_PRESET
#      picks another, 13b is 7.3 GB) into a scratch folder on the machine's
#      disk (cap 80 s; deleted at the end;
#      FLEA_GPU_CHECK_WORK chooses the folder, default a fresh one under the
#      current directory, not /tmp, which may be in memory).
#   5. gpu_bench streamed (cap 100 s): the model inside a device budget of
#      3 GiB (FLEA_GPU_CHECK_BUDGET), through the device double buffer and
#      the mapped host slots, against a fully resident run; 16 decode tokens
#      after an 8-token prompt, each decode capped at 25 s. Tokens/s, copy
#      wait and kernel time per layer, H2D achieved vs pinned, time per
#      token vs the H2D and disk bounds, device memory vs the budget, and
#      whether all runs' logits are bit-identical (the bench fails if not;
#      device memory over the budget fails this script).
#   6. gpu_bench resident on the same file, if 30 s are left (cap 40 s): 64
#      tokens, tokens/s and HBM utilization.
#
# Writes LOG_DIR/gpu-check.log (everything), LOG_DIR/gpu-tests.log,
# LOG_DIR/gpu-nvrtc.log, LOG_DIR/gpu-stream.log, LOG_DIR/gpu-stream.jsonl (the
# streamed bench's JSON lines: one per run and a summary), LOG_DIR/
# gpu-bench.log and LOG_DIR/gpu-bench.json (the resident bench's JSON line).
# Exits 0 only if tests and the streamed bench passed (3 if no artifact set
# can run on this driver); the last line summarizes.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -ge 1 ]; then
    ROOT="$1"
elif [ -x "$here/gpu_bench" ] || ls "$here"/*/MANIFEST >/dev/null 2>&1; then
    ROOT="$here"
else
    ROOT="artifacts"
fi
ROOT="$(cd "$ROOT" && pwd)" || { echo "gpu-check: no artifacts folder" >&2; exit 2; }
LOG_DIR="${2:-${OUT:-$ROOT/logs}}"
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
DEADLINE="${FLEA_GPU_CHECK_DEADLINE:-270}"
BUDGET="${FLEA_GPU_CHECK_BUDGET:-3GiB}"
PRESET="${FLEA_GPU_CHECK_PRESET:-7b}"
model="$WORK/synth-$PRESET-q4_k_m.gguf"
cleanup() {
    rm -f "$model" "$model.partial" "$WORK"/standin-tiny-*.gguf "$WORK"/standin-tiny-*.gguf.partial
    rm -rf "$WORK/cache" "$WORK/nvrtc.toml"
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
# The driver first: a driver older than the CUDA release that built an
# artifact set cannot load its kernels, and every later step reads wrong
# without knowing that.
driver="(no nvidia-smi)"
driver_cuda=""
if command -v nvidia-smi >/dev/null 2>&1; then
    driver="$(timeout 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1)"
    # The banner's "CUDA Version: 12.4": the newest CUDA release it runs.
    driver_cuda="$(timeout 20 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p' | head -n 1)"
    if [ -z "$driver_cuda" ]; then
        # Older banners: from the driver branch (R580 = CUDA 13.0, ...).
        case "${driver%%.*}" in
            ''|*[!0-9]*) ;;
            *) major="${driver%%.*}"
               if [ "$major" -ge 580 ]; then driver_cuda=13.0
               elif [ "$major" -ge 575 ]; then driver_cuda=12.9
               elif [ "$major" -ge 570 ]; then driver_cuda=12.8
               elif [ "$major" -ge 560 ]; then driver_cuda=12.6
               elif [ "$major" -ge 555 ]; then driver_cuda=12.5
               elif [ "$major" -ge 550 ]; then driver_cuda=12.4
               elif [ "$major" -ge 545 ]; then driver_cuda=12.3
               elif [ "$major" -ge 535 ]; then driver_cuda=12.2
               elif [ "$major" -ge 530 ]; then driver_cuda=12.1
               elif [ "$major" -ge 525 ]; then driver_cuda=12.0
               else driver_cuda=11.8; fi ;;
        esac
    fi
fi
echo "driver: $driver (CUDA ${driver_cuda:-unknown})"
echo "== gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"

# The artifact sets and the CUDA release each was built with.
release_of() { # MANIFEST -> "13.0", or "" if it does not say
    local r
    r="$(sed -n 's/^cuda release: *//p' "$1" | head -n 1)"
    [ -n "$r" ] || r="$(sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' "$1" | head -n 1)"
    echo "${r%,}"
}
version_le() { # a b: a <= b
    [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$1" ]
}
sets=()
[ -f "$ROOT/MANIFEST" ] && sets+=("$ROOT")
for d in "$ROOT"/*/; do
    [ -f "$d/MANIFEST" ] && sets+=("${d%/}")
done
[ ${#sets[@]} -gt 0 ] || { echo "gpu-check: no MANIFEST in $ROOT or its subfolders (run scripts/gpu-artifacts.sh)"; exit 2; }
ART=""
best=""
newest_set=""
newest=""
for d in "${sets[@]}"; do
    r="$(release_of "$d/MANIFEST")"
    echo "artifact set: $d (CUDA ${r:-unknown})"
    if [ -z "$newest" ] || { [ -n "$r" ] && version_le "$newest" "$r"; }; then
        newest="$r"; newest_set="$d"
    fi
    if [ -n "$r" ] && [ -n "$driver_cuda" ] && version_le "$r" "$driver_cuda"; then
        if [ -z "$best" ] || version_le "$best" "$r"; then best="$r"; ART="$d"; fi
    fi
done
nvrtc_lib=""
for f in "${FLEA_NVRTC_LIB:-}" "${CUDA_HOME:-/nonexistent}/lib64/libnvrtc.so.12" \
    /usr/local/cuda/lib64/libnvrtc.so.12 /usr/local/cuda/targets/*/lib/libnvrtc.so.12; do
    if [ -n "$f" ] && [ -f "$f" ]; then nvrtc_lib="$f"; break; fi
done
if [ -z "$nvrtc_lib" ] && command -v ldconfig >/dev/null 2>&1; then
    nvrtc_lib="$(ldconfig -p 2>/dev/null | sed -n 's/.*libnvrtc\.so\.12 .*=> //p' | head -n 1)"
fi
if [ -n "$nvrtc_lib" ] && [ -z "${FLEA_NVRTC_LIB:-}" ]; then
    export FLEA_NVRTC_LIB="$nvrtc_lib"
fi
echo "nvrtc: ${nvrtc_lib:-(none found)}"
if [ -z "$ART" ]; then
    ART="$newest_set"
    if [ -z "$driver_cuda" ]; then
        echo "gpu-check: driver's CUDA version unknown; using the newest set, $ART"
    else
        echo "gpu-check: the driver runs CUDA $driver_cuda, older than every artifact set here (newest: CUDA ${newest:-unknown}): it cannot load their kernels (a CUDA 13 image needs an R580+ driver)."
        if [ -n "$nvrtc_lib" ]; then
            echo "gpu-check: going on with $ART: flea compiles the kernel sources it carries with NVRTC ($nvrtc_lib) for this GPU at start."
        else
            echo "gpu-check: FAILED: and no NVRTC to compile the carried kernel sources either. Update the driver (R580+ for CUDA 13), or install libnvrtc (a CUDA 12 toolkit, or pip install nvidia-cuda-nvrtc-cu12 and FLEA_NVRTC_LIB=<its libnvrtc.so.12>), or build the artifacts with a CUDA release <= $driver_cuda."
            exit 3
        fi
    fi
fi
echo "artifacts: $ART"
sed 's/^/  /' "$ART/MANIFEST"
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
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.memory \
        --format=csv 2>&1 || timeout 20 nvidia-smi 2>&1 | head -n 15
else
    echo "(no nvidia-smi)"
fi

status_tests=FAIL
status_nvrtc=SKIP
status_stream=FAIL
status_bench=SKIP

echo "== 2. tests/gpu"
if [ -n "${FLEA_GPU_PARTIAL_FIXTURES:-}" ]; then
    # Stand-ins for the fixture models not shipped (same 4-layer, dim-256
    # shape and quantization mixes), for the streamed-vs-resident test.
    extra=""
    for q in q3_k_m q3_k_s q6_k; do
        f="$WORK/standin-tiny-$q.gguf"
        if timeout 20 "$ART/flea" synth --preset tiny --quant "$q" --out "$f" >/dev/null 2>&1; then
            extra="$extra${extra:+:}$f"
        else
            echo "(could not synthesize a $q stand-in)"
        fi
    done
    export FLEA_GPU_EXTRA_MODELS="$extra"
    echo "stand-in models: $extra"
fi
t0=$(date +%s)
FLEA_REQUIRE_GPU=1 timeout "$(allow 110)" "$ART/tests/gpu" --test-threads 2 2>&1 | tee "$LOG_DIR/gpu-tests.log"
rc=${PIPESTATUS[0]}
echo "tests/gpu: exit $rc in $(($(date +%s) - t0)) s"
[ "$rc" = 0 ] && status_tests=PASS

echo "== 3. the NVRTC path (FLEA_NVRTC=force: the carried kernel sources compiled for this GPU)"
tiny="${FLEA_FIXTURES:-}/models/llama-2-tiny-random.gguf"
if [ -z "$nvrtc_lib" ]; then
    echo "skipped: no libnvrtc found"
elif [ ! -f "$tiny" ]; then
    echo "skipped: no $tiny"
elif [ "$(allow 60)" -lt 20 ]; then
    echo "skipped: deadline"
else
    t0=$(date +%s)
    printf '[device]\nbackend = "cuda"\n' >"$WORK/nvrtc.toml"
    echo "Once upon a time" | FLEA_NVRTC=force FLEA_LOG=info XDG_CACHE_HOME="$WORK/cache" \
        timeout "$(allow 60)" "$ART/flea" run --model "$tiny" --config "$WORK/nvrtc.toml" -n 8 --temp 0 \
        >"$LOG_DIR/gpu-nvrtc.log" 2>&1
    rc=$?
    grep -E "NVRTC|backend|error" "$LOG_DIR/gpu-nvrtc.log" | head -n 5
    echo "nvrtc path: exit $rc in $(($(date +%s) - t0)) s"
    if [ "$rc" = 0 ]; then status_nvrtc=PASS; else status_nvrtc=FAIL; fi
    rm -rf "$WORK/cache" "$WORK/nvrtc.toml"
fi

echo "== 4. flea synth --preset $PRESET --quant q4_k_m"
echo "scratch: $WORK ($(df -hT "$WORK" 2>/dev/null | awk 'NR==2 {print $2 ", " $5 " free"}'))"
t0=$(date +%s)
rc=124
if [ "$(allow 80)" -gt 10 ]; then
    timeout "$(allow 80)" "$ART/flea" synth --preset "$PRESET" --quant q4_k_m --out "$model" 2>&1 | tr '\r' '\n' | tail -n 3
    rc=${PIPESTATUS[0]}
fi
echo "synth: exit $rc in $(($(date +%s) - t0)) s"

if [ "$rc" = 0 ]; then
    echo "== 5. gpu_bench streamed (budget $BUDGET, device and mapped feeds, vs resident)"
    t0=$(date +%s)
    FLEA_REQUIRE_GPU=1 FLEA_LOG="${FLEA_LOG:-info}" timeout "$(allow 100)" "$ART/gpu_bench" "$model" \
        --budget "$BUDGET" --buffer both --compare --tokens 16 --prompt 8 --max-seconds 25 \
        2>&1 | tee "$LOG_DIR/gpu-stream.log"
    rc=${PIPESTATUS[0]}
    echo "gpu_bench streamed: exit $rc in $(($(date +%s) - t0)) s"
    grep '^{' "$LOG_DIR/gpu-stream.log" >"$LOG_DIR/gpu-stream.jsonl" || true
    [ "$rc" = 0 ] && status_stream=PASS
    if grep -q '"within_budget":false' "$LOG_DIR/gpu-stream.jsonl"; then
        status_stream="$status_stream, device memory OVER BUDGET"
    fi

    if [ "$(allow 40)" -ge 30 ]; then
        echo "== 6. gpu_bench resident (64 tokens)"
        t0=$(date +%s)
        status_bench=FAIL
        FLEA_REQUIRE_GPU=1 timeout "$(allow 40)" "$ART/gpu_bench" "$model" --tokens 64 --prompt 32 2>&1 | tee "$LOG_DIR/gpu-bench.log"
        rc=${PIPESTATUS[0]}
        echo "gpu_bench resident: exit $rc in $(($(date +%s) - t0)) s"
        grep '^{' "$LOG_DIR/gpu-bench.log" | tail -n 1 >"$LOG_DIR/gpu-bench.json" || true
        [ "$rc" = 0 ] && status_bench=PASS
    else
        echo "== 6. gpu_bench resident: skipped (deadline)"
    fi
fi

echo "== gpu-check: driver $driver (CUDA ${driver_cuda:-unknown}), artifacts CUDA $(release_of "$ART/MANIFEST"); tests $status_tests, nvrtc path $status_nvrtc, streamed bench $status_stream, resident bench $status_bench, $(($(date +%s) - start)) s total"
[ "$status_tests" = PASS ] && [ "$status_stream" = PASS ]

#!/usr/bin/env bash
# The emulated GPU tier, from a clean checkout with no CUDA toolkit and no
# GPU: builds the fake driver (tests/emulator/build.sh: g++ only), builds
# `--features cuda` with tests/emulator/fake-nvcc in place of nvcc, and runs
# every `--features cuda` test (tests/gpu.rs, tests/emulated.rs) against the
# emulated device under each scheduling policy. Prints one summary line;
# exits non-zero on any failure.
#
# The first policy (lazy) runs every fixture at every budget and the
# removed-wait mutation check; the others run the fixtures named in
# FLEA_EMU_MODELS (default below) at the streaming budgets (every layer
# streamed, and one more layer's worth) to keep CI short: the orders they
# shake out do not depend on the model.
#
# Env: FLEA_EMU_POLICIES (default "lazy slowcopy random eager"),
#      FLEA_EMU_MODELS (fixtures for the non-default policies),
#      FLEA_EMU_LAZY_MODELS (colon-separated fixtures for the first policy;
#      default every fixture: CI names a subset to stay inside its time),
#      CARGO_TARGET_DIR (default target/emu), FAKE_CUDA_THREADS,
#      FAKE_CUDA_SEED (the random policy's seed: printed at the start and
#      with a failure; default a fresh one each run, so set it to replay a
#      failure under the random policy).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
policies="${FLEA_EMU_POLICIES:-lazy slowcopy random eager}"
quick_models="${FLEA_EMU_MODELS:-synth-256-Q4_K_M}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/emu}"
log_dir="$CARGO_TARGET_DIR/emulated-logs"
mkdir -p "$log_dir"
# One seed for the whole run, printed, so a failure under the random policy
# can be replayed with FAKE_CUDA_SEED=<seed>.
seed="${FAKE_CUDA_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
echo "emulated-gpu-check: FAKE_CUDA_SEED=$seed (set FAKE_CUDA_SEED to replay)"

if ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
    echo "emulated-gpu-check: needs a C++ compiler: installing g++ (apt-get)" >&2
    if ! { sudo -n true 2>/dev/null && sudo apt-get install -y g++; } && ! apt-get install -y g++; then
        echo "emulated-gpu-check: FAILED: no g++ and cannot install it" >&2
        exit 1
    fi
fi

lib="$(tests/emulator/build.sh)"
export NVCC="$PWD/tests/emulator/fake-nvcc"
cargo build --locked --features cuda --tests --bins
# Environment every test run gets: the fake driver first on the loader's
# path, and a GPU required (no silent skips).
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FLEA_REQUIRE_GPU=1 FLEA_EMULATED_GPU=1
# The emulated NVRTC, off the loader's path: the tests that want it add it.
export FLEA_EMU_NVRTC_DIR="$lib/../nvrtc"

failed=()
runs=0
for policy in $policies; do
    runs=$((runs + 1))
    # The first policy runs every fixture and the removed-wait check (which
    # picks its own policies); the others run the quick fixtures.
    models="${FLEA_EMU_LAZY_MODELS:-}"
    skip=()
    budgets=""
    if [ $runs -gt 1 ]; then
        models="$quick_models"
        budgets="minimum:one resident"
        skip=(--skip emulated_tier_catches_a_removed_wait)
    fi
    t0=$SECONDS
    if FAKE_CUDA_POLICY="$policy" FAKE_CUDA_SEED="$seed" FLEA_GPU_ONLY_MODELS="$models" \
        FLEA_GPU_STREAM_BUDGETS="$budgets" \
        cargo test --locked --features cuda --test gpu --test emulated -- --test-threads=1 "${skip[@]}" \
        >"$log_dir/$policy.log" 2>&1; then
        echo "emulated-gpu-check: policy $policy passed ($((SECONDS - t0)) s)"
    else
        echo "emulated-gpu-check: policy $policy FAILED ($((SECONDS - t0)) s, FAKE_CUDA_SEED=$seed), log: $log_dir/$policy.log" >&2
        grep -E "panicked|FAILED|failed|FATAL" "$log_dir/$policy.log" | head -20 >&2 || true
        failed+=("$policy")
    fi
done
if [ ${#failed[@]} -eq 0 ]; then
    echo "emulated-gpu-check: OK: $runs policies ($policies), all --features cuda tests passed on the emulated device in $((SECONDS - start)) s"
else
    echo "emulated-gpu-check: FAILED: policies ${failed[*]} (of $policies) in $((SECONDS - start)) s; replay with FAKE_CUDA_SEED=$seed"
    exit 1
fi

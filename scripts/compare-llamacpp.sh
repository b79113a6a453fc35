#!/usr/bin/env bash
# flea against llama.cpp on the same model, machine and thread count, in one
# run: rounds alternate `llama-bench -p 512 -n N` and `flea bench` (fully
# resident, 512-token prompt read in one 512-position chunk, as llama.cpp's
# default micro-batch), so both see the same machine state; the per-round
# ratios and their medians are printed.
#
# llama.cpp is not part of this project: build it yourself outside the repo
# (cmake -B build -DGGML_NATIVE=ON && cmake --build build --target llama-bench)
# and pass the binary.
#
# Usage: scripts/compare-llamacpp.sh LLAMA_BENCH MODEL.gguf [ROUNDS] [THREADS] [GEN]
set -euo pipefail
cd "$(dirname "$0")/.."
llama_bench=${1:?"usage: $0 LLAMA_BENCH MODEL.gguf [ROUNDS] [THREADS] [GEN]"}
model=${2:?"usage: $0 LLAMA_BENCH MODEL.gguf [ROUNDS] [THREADS] [GEN]"}
rounds=${3:-3}
threads=${4:-2}
gen=${5:-32}
[ -x "$llama_bench" ] || { echo "compare-llamacpp: $llama_bench is not an executable" >&2; exit 2; }
[ -r "$model" ] || { echo "compare-llamacpp: cannot read $model" >&2; exit 2; }
flea=target/release/flea
cargo build --release --locked >/dev/null 2>&1 || cargo build --release

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$llama_bench" --version 2>&1 | head -2 | sed 's/^/llama.cpp: /' || true
for r in $(seq 1 "$rounds"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    "$llama_bench" -m "$model" -p 512 -n "$gen" -t "$threads" -r 1 -o json > "$tmp/llama-$r.json" 2> "$tmp/llama-$r.err" ||
        { cat "$tmp/llama-$r.err" >&2; echo "compare-llamacpp: llama-bench failed" >&2; exit 1; }
    "$flea" bench --model "$model" --budget 8GiB --threads "$threads" --ctx-size 1024 --chunk 512 \
        --prompt-tokens 512 --gen-tokens "$gen" --log-level warn --json > "$tmp/flea-$r.json" ||
        { echo "compare-llamacpp: flea bench failed" >&2; exit 1; }
    echo "$load" > "$tmp/load-$r"
done
python3 - "$tmp" "$rounds" <<'PY'
import json, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
pp, tg = [], []
for r in range(1, rounds + 1):
    llama = json.load(open(f"{tmp}/llama-{r}.json"))
    l_pp = next(t["avg_ts"] for t in llama if t["n_prompt"] > 0 and t["n_gen"] == 0)
    l_tg = next(t["avg_ts"] for t in llama if t["n_gen"] > 0 and t["n_prompt"] == 0)
    f = json.load(open(f"{tmp}/flea-{r}.json"))
    f_pp, f_tg = f["prefill_tokens_per_s"], f["decode_tokens_per_s"]
    load = open(f"{tmp}/load-{r}").read().strip()
    pp.append(f_pp / l_pp)
    tg.append(f_tg / l_tg)
    print(f"round {r} (load {load}): pp512 flea {f_pp:.1f} vs llama.cpp {l_pp:.1f} tok/s = {f_pp / l_pp:.2f}x; "
          f"decode flea {f_tg:.1f} vs {l_tg:.1f} tok/s = {f_tg / l_tg:.2f}x")
print(f"median over {rounds} rounds: pp512 {statistics.median(pp):.2f}x, decode {statistics.median(tg):.2f}x")
PY

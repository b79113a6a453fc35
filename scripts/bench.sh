#!/usr/bin/env bash
# The benchmarks the closing notes report, in one run on one machine:
#   - fixture model: decode and prefill tok/s at 1 and 2 threads; inspect time
#   - SmolLM2-135M-Instruct Q4_1 (a real model, scripts/fetch-smollm2.sh),
#     2 threads: decode and prefill tok/s next to the RAM bandwidth measured
#     by the same bench (the memory bound)
#   - 1B Q4_K_M: fully resident decode (128 tokens) and prefill (512 tokens)
#     next to the RAM bandwidth measured by the same bench
#   - 1B Q4_K_M at 40% of the file: streamed vs resident, vs the O_DIRECT
#     disk bound, with and without prefetch, batch 1/4/16
#   - speculative decoding: synth-256-Q3_K_S drafting for synth-256-Q8_0
# Usage: scripts/bench.sh [OUT_DIR]   (models go under OUT_DIR too)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/bench}"
mkdir -p "$out"
flea=target/release/flea
cargo build --release --locked >/dev/null 2>&1 || cargo build --release
fixtures="${FLEA_FIXTURES:-../shared/fixtures}"
q4="$fixtures/models/synth-256-Q4_K_M.gguf"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
: > "$out/summary.txt"
{ nproc; grep -m1 "model name" /proc/cpuinfo; } | tee -a "$out/summary.txt"

log "fixture decode/prefill (synth-256-Q4_K_M, resident)"
for t in 1 2; do
    "$flea" bench --model "$q4" --threads "$t" --prompt-tokens 128 --gen-tokens 128 --ctx-size 512 \
        --log-level warn --json > "$out/fixture-t$t.json"
    python3 - "$out/fixture-t$t.json" "$t" <<'PY' | tee -a "$out/summary.txt"
import json, sys
v = json.load(open(sys.argv[1]))
print(f"threads {sys.argv[2]}: decode {v['decode_tokens_per_s']:.1f} tok/s, prefill {v['prefill_tokens_per_s']:.1f} tok/s")
PY
done
log "inspect on the largest fixture"
start=$(date +%s.%N)
"$flea" inspect --model "$fixtures/models/synth-256-Q8_0.gguf" > /dev/null 2>&1
echo "inspect synth-256-Q8_0: $(python3 -c "print(f'{($(date +%s.%N) - $start) * 1000:.1f} ms')")" | tee -a "$out/summary.txt"

log "SmolLM2-135M-Instruct Q4_1 resident, 2 threads: decode 128 after a short prompt; prefill 512"
smollm2="$(scripts/fetch-smollm2.sh)"
"$flea" bench --model "$smollm2" --budget 1GiB --threads 2 --prompt-tokens 8 --gen-tokens 128 \
    --ctx-size 1024 --log-level warn --json > "$out/smollm2-decode.json"
"$flea" bench --model "$smollm2" --budget 1GiB --threads 2 --prompt-tokens 512 --gen-tokens 1 \
    --chunk 512 --ctx-size 1024 --log-level warn --json > "$out/smollm2-prefill.json"
python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
d = json.load(open(sys.argv[1] + "/smollm2-decode.json"))
p = json.load(open(sys.argv[1] + "/smollm2-prefill.json"))
print(f"decode {d['decode_tokens_per_s']:.2f} tok/s = {d['weight_bytes_per_s']/1e9:.2f} GB/s of weights "
      f"({d['model_bytes']/2**20:.1f} MiB x tok/s); RAM read {d['memory_bandwidth_bytes_per_s']/1e9:.2f} GB/s: "
      f"{d['memory_bound_fraction']*100:.0f}% of the memory bound ({d['memory_bound_decode_tokens_per_s']:.1f} tok/s); "
      f"prefill {p['prefill_tokens_per_s']:.2f} tok/s")
PY

model="$out/1b-q4_k_m.gguf"
[ -f "$model" ] || "$flea" synth --preset 1b --quant q4_k_m --out "$model" --log-level warn

log "1B Q4_K_M fully resident, 2 threads: decode 128 after a short prompt; prefill 512"
"$flea" bench --model "$model" --budget 100% --threads 2 --prompt-tokens 8 --gen-tokens 128 \
    --ctx-size 1024 --log-level warn --json > "$out/1b-resident-decode.json"
"$flea" bench --model "$model" --budget 100% --threads 2 --prompt-tokens 512 --gen-tokens 1 \
    --chunk 512 --ctx-size 1024 --log-level warn --json > "$out/1b-resident-prefill.json"
python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
d = json.load(open(sys.argv[1] + "/1b-resident-decode.json"))
p = json.load(open(sys.argv[1] + "/1b-resident-prefill.json"))
print(f"decode {d['decode_tokens_per_s']:.2f} tok/s = {d['weight_bytes_per_s']/1e9:.2f} GB/s of weights; "
      f"RAM read {d['memory_bandwidth_bytes_per_s']/1e9:.2f} GB/s; prefill {p['prefill_tokens_per_s']:.2f} tok/s")
PY

log "1B Q4_K_M at 40% of the file: streamed vs resident, disk bound, no-prefetch, batch 1/4/16"
# A 48-position context: 16 f32 KV caches of 256 positions would take
# 176 MiB of the 255 MiB budget.
"$flea" bench --model "$model" --budget 40% --threads 2 --prompt-tokens 8 --gen-tokens 32 \
    --ctx-size 48 --chunk 16 --compare --batch-sweep 1,4,16 --log-level warn --json > "$out/1b-40pct.json"
"$flea" bench --model "$model" --budget 40% --threads 2 --prompt-tokens 8 --gen-tokens 16 \
    --ctx-size 48 --chunk 16 --no-prefetch --log-level warn --json > "$out/1b-40pct-noprefetch.json"
python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
v = json.load(open(sys.argv[1] + "/1b-40pct.json"))
n = json.load(open(sys.argv[1] + "/1b-40pct-noprefetch.json"))
s, r = v["streamed"], v["resident"]
bound = max(v["disk_bound_ms_per_token"], r["decode_ms_per_token"])
print(f"budget {v['budget_bytes']/2**20:.0f} MiB, {s['streamed_layers']} streamed / {s['resident_layers']} resident layers")
print(f"streamed {s['decode_ms_per_token']:.1f} ms/token ({s['decode_tokens_per_s']:.2f} tok/s): stall {s['stall_ms_per_token']:.1f}, "
      f"compute {s['compute_ms_per_token']:.1f}, loader {s['io_ms_per_token']:.1f} ms; overlap {s['overlap_efficiency']:.2f}")
print(f"resident {r['decode_ms_per_token']:.1f} ms/token; disk bound {v['disk_bound_ms_per_token']:.1f} ms/token "
      f"({v['disk_bound_bytes_per_s']/1e9:.2f} GB/s O_DIRECT={v['disk_direct']}); "
      f"streamed / max(bound, resident) = {s['decode_ms_per_token']/bound:.2f}x (target <= 1.15)")
print(f"no prefetch: {n['streamed']['decode_ms_per_token']:.1f} ms/token; prefetch gains "
      f"{n['streamed']['decode_ms_per_token']/s['decode_ms_per_token']:.2f}x")
print(f"peak RSS {s['peak_rss_bytes']/2**20:.1f} MiB vs budget {v['budget_bytes']/2**20:.1f} MiB (planned {s['planned_bytes']/2**20:.1f})")
for b in v["batch_sweep"]:
    print(f"batch {b['batch']:>2}: {b['decode_tokens_per_s']:.2f} tok/s aggregate ({b['resident_layers']} resident layers)")
print(f"batch 16 / batch 1: {v['last_batch_over_first']:.2f}x (target >= 8)")
PY

log "speculative: synth-256-Q3_K_S drafting for synth-256-Q8_0 (target streamed at its minimum)"
"$flea" bench --model "$fixtures/models/synth-256-Q8_0.gguf" --budget 38MiB --threads 2 --ctx-size 128 \
    --chunk 16 --prompt-tokens 8 --gen-tokens 48 --draft "$fixtures/models/synth-256-Q3_K_S.gguf" \
    --draft-tokens 3 --log-level warn --json > "$out/speculative.json"
python3 - "$out" <<'PY' | tee -a "$out/summary.txt"
import json, sys
v = json.load(open(sys.argv[1] + "/speculative.json"))
s, a = v["speculative"], v["speculative_target_alone"]
print(f"acceptance {s['acceptance_rate']*100:.0f}%, {s['tokens_per_target_pass']:.2f} tokens per target pass; "
      f"{s['decode_tokens_per_s']:.1f} tok/s vs {a['decode_tokens_per_s']:.1f} alone = {v['speculative_speedup']:.2f}x")
PY

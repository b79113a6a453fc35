#!/usr/bin/env bash
# Fill fuzz/corpus/<target>/ with seeds from the shared fixtures and the
# repo's configs (copies for the fuzzer to mutate; never committed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
fixtures="${FLEA_FIXTURES:-$here/../../shared/fixtures}"
[ -d "$fixtures" ] || { echo "seed-corpus: no fixtures at $fixtures (set FLEA_FIXTURES)" >&2; exit 1; }
mkdir -p "$here"/corpus/{gguf,config,request,tokenizer}
cp "$fixtures"/models/llama-2-tiny-random.gguf "$fixtures"/real/stories260K-F32.gguf \
    "$fixtures"/tokenizer/ggml-vocab-llama-spm.gguf "$fixtures"/tokenizer/ggml-vocab-phi-3.gguf \
    "$here/corpus/gguf/"
cp "$here"/../configs/*.toml "$here/corpus/config/"
printf '%s' '{"id": 1, "prompt": "Once upon a time", "max_tokens": 8, "stop": ["\n"]}' >"$here/corpus/request/basic"
printf '%s' '{"prompt": "hi", "temperature": 0.5, "top_k": 4, "seed": 3}' >"$here/corpus/request/sampling"
printf '%s' '{"id": 2, "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]}' >"$here/corpus/request/messages"
cp "$fixtures"/tokenizer/*.inp "$here/corpus/tokenizer/"
echo "seed-corpus: wrote $(find "$here/corpus" -type f | wc -l) seeds under $here/corpus" >&2

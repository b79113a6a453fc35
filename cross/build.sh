#!/usr/bin/env bash
# Cross-build `flea` in release for Jetson (aarch64-unknown-linux-gnu) on an
# x86_64 Debian/Ubuntu host, then print the glibc floor of the result.
#
#   cross/build.sh            # install what is missing (apt, rustup), build
#   cross/build.sh --check    # only check/install the prerequisites
#
# Environment:
#   CARGO_TARGET_DIR   where to build (default target/aarch64, kept apart from
#                      the host build so neither invalidates the other)
#   CUDA_HOME          build with `--features cuda`, compiling the kernels with
#                      $CUDA_HOME/bin/nvcc (any nvcc that runs here: it only
#                      makes an sm_87 fatbin; use CUDA <= 12.6 for JetPack 6).
#                      Ignored, with a warning, if Cargo.toml has no `cuda`
#                      feature.
#   FLEA_CUDA_ARCHS    GPU architectures for the CUDA kernels (default 87 = Orin)
#   FLEA_NO_INSTALL=1  never install anything; fail and say what is missing
#   CARGO_BUILD_JOBS   parallel rustc jobs (cargo's own variable)
set -euo pipefail
FLEA_SCRIPT=cross/build.sh
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$FLEA_ROOT"

check_only=0
for arg in "$@"; do
    case $arg in
    --check) check_only=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

# Prerequisites. On an aarch64 host the native toolchain does the job, and
# .cargo/config.toml's linker name is the native gcc's triplet alias.
if host_is_aarch64; then
    need_deb gcc gcc
    need_deb objdump binutils
else
    need_deb aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
    need_deb aarch64-linux-gnu-objdump binutils-aarch64-linux-gnu
    # The arm64 glibc headers and crt files the linker needs.
    need_deb /usr/aarch64-linux-gnu/lib/crt1.o libc6-dev-arm64-cross
fi
install_missing_debs
need_rust_target "$FLEA_TRIPLE"
if host_is_aarch64 && ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    # Some arm64 images ship gcc without the triplet alias.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=cc
fi
((check_only)) && exit 0

cuda_setup
target_dir="${CARGO_TARGET_DIR:-target/aarch64}"
if ((${#FLEA_FEATURES[@]})); then
    log "building with ${FLEA_FEATURES[*]} for sm_${FLEA_CUDA_ARCHS} (CUDA_HOME=$CUDA_HOME)"
else
    log "building CPU-only (set CUDA_HOME to build the CUDA backend)"
fi

cargo build --release --locked --target "$FLEA_TRIPLE" --target-dir "$target_dir" \
    --bin flea "${FLEA_FEATURES[@]}"

bin="$target_dir/$FLEA_TRIPLE/release/flea"
[[ -x $bin ]] || die "cargo finished but $bin is missing"
[[ $(elf_arch "$bin") == aarch64 ]] || die "$bin is not an aarch64 ELF ($(elf_arch "$bin"))"

floor=$(glibc_floor "$bin")
echo "binary:      $bin ($(du -h "$bin" | cut -f1))"
echo "glibc floor: GLIBC_${floor:-?} (newest symbol version it needs)"
echo "runs on:     $(jetpack_support "$floor")"
echo "features:    ${FLEA_FEATURES[*]:-none (CPU-only)}"

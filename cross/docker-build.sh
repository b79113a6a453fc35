#!/usr/bin/env bash
# The build step of Dockerfile.jetson: build flea natively and lay out the
# files the runtime image copies (cross/package.sh --stage). It is a plain
# script so it runs, and is tested, outside Docker too:
#
#   - in the L4T build image (arm64, CUDA_HOME=/usr/local/cuda): a native
#     aarch64 release build, with --features cuda and FLEA_CUDA_ARCHS=87 once
#     Cargo.toml has a `cuda` feature;
#   - on an x86_64 machine (CI): the same steps for the host, CPU-only unless
#     CUDA_HOME is set, which checks the script without Docker or an arm64 box.
#
#   cross/docker-build.sh [--stage DIR] [--profile release|dev]
#                         [--binary PATH] [--default-config NAME]
#   cross/docker-build.sh --check
#
#   --stage DIR            where the files go (default target/docker-stage; the
#                          Dockerfile uses /stage); an earlier stage is replaced
#   --profile P            cargo profile (default release); dev reuses what
#                          `cargo test` already built, for the tests
#   --binary PATH          skip cargo and stage this binary
#   --default-config NAME  the board behind /etc/flea/config.toml (orin-nano-8gb)
#   --check                syntax-check the cross/ scripts, show what would be
#                          built, build nothing
set -euo pipefail
FLEA_SCRIPT=cross/docker-build.sh
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stage=""
profile=release
binary=""
default_config=orin-nano-8gb
check=0
while (($#)); do
    case $1 in
    --stage) stage=${2:?--stage needs a directory}; shift ;;
    --profile) profile=${2:?--profile needs release or dev}; shift ;;
    --binary) binary=${2:?--binary needs a path}; shift ;;
    --default-config) default_config=${2:?--default-config needs a name}; shift ;;
    --check) check=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
case $profile in
release) profile_dir=release ;;
dev) profile_dir=debug ;;
*) die "--profile $profile: expected release or dev" ;;
esac
[[ -n $binary && $binary != /* ]] && binary=$PWD/$binary
[[ -n $stage && $stage != /* ]] && stage=$PWD/$stage
cd "$FLEA_ROOT"

# The Dockerfile passes --stage /stage; by default stay inside the
# (git-ignored) target directory.
stage=${stage:-${CARGO_TARGET_DIR:-$FLEA_ROOT/target}/docker-stage}

cuda_setup
if host_is_aarch64 && ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
    # .cargo/config.toml names the triplet gcc, which some arm64 images lack.
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=cc
fi
plan="host $(host_arch), profile $profile, features: ${FLEA_FEATURES[*]:-none (CPU-only)}"
[[ -n ${FLEA_CUDA_ARCHS:-} && ${#FLEA_FEATURES[@]} -gt 0 ]] && plan+=", FLEA_CUDA_ARCHS=$FLEA_CUDA_ARCHS"

if ((check)); then
    for script in "$FLEA_ROOT"/cross/*.sh; do
        bash -n "$script" || die "syntax error in $script"
    done
    [[ -f $FLEA_ROOT/configs/$default_config.toml ]] || die "no configs/$default_config.toml"
    command -v cargo >/dev/null 2>&1 || warn "cargo not found"
    log "check passed; would build: $plan; stage: $stage"
    exit 0
fi

if [[ -z $binary ]]; then
    log "building: $plan"
    cargo build --locked --profile "$profile" --bin flea "${FLEA_FEATURES[@]}"
    binary="${CARGO_TARGET_DIR:-$FLEA_ROOT/target}/$profile_dir/flea"
fi
[[ -x $binary ]] || die "no binary at $binary"

# Replace an earlier stage, but never delete a directory that is not one.
if [[ -e $stage && -n $(ls -A "$stage") ]]; then
    [[ -f $stage/usr/local/bin/flea ]] || die "--stage $stage exists and is not an earlier stage; not deleting it"
    rm -rf "$stage"
fi
arch_flag=()
[[ $(elf_arch "$binary") == aarch64 ]] || arch_flag=(--any-arch)
bash "$FLEA_ROOT/cross/package.sh" --binary "$binary" --stage "$stage" \
    --default-config "$default_config" "${arch_flag[@]}"

floor=$(glibc_floor "$binary")
echo "binary:      $binary ($(elf_arch "$binary"))"
echo "glibc floor: GLIBC_${floor:-?}"
echo "staged:      $stage"

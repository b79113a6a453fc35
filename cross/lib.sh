# shellcheck shell=bash
# Shared helpers for the cross/ scripts. Sourced, never run: the callers set
# `set -euo pipefail` themselves. Everything here is plain bash + coreutils so
# it also works inside the L4T build image and on a Jetson.

# The repository root, whatever directory the caller was started from.
FLEA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034 # used by the scripts that source this file
FLEA_TRIPLE=aarch64-unknown-linux-gnu

log() { printf '%s: %s\n' "${FLEA_SCRIPT:-cross}" "$*" >&2; }
warn() { printf '%s: warning: %s\n' "${FLEA_SCRIPT:-cross}" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "${FLEA_SCRIPT:-cross}" "$*" >&2
    exit 1
}

# --- prerequisites -----------------------------------------------------------
# Collect what is missing first, then install it with one apt-get call, so a
# machine that has everything prints nothing and never touches apt.
FLEA_MISSING_DEBS=()

# need_deb CHECK PACKAGE: CHECK is a command name or an absolute path that the
# Debian/Ubuntu PACKAGE provides.
need_deb() {
    local check=$1 pkg=$2
    if [[ $check == /* ]]; then
        [[ -e $check ]] && return 0
    else
        command -v "$check" >/dev/null 2>&1 && return 0
    fi
    local p
    for p in "${FLEA_MISSING_DEBS[@]}"; do [[ $p == "$pkg" ]] && return 0; done
    FLEA_MISSING_DEBS+=("$pkg")
}

# Install what need_deb found missing. FLEA_NO_INSTALL=1 turns this into a
# check that fails with the command to run (CI images, machines without apt).
install_missing_debs() {
    ((${#FLEA_MISSING_DEBS[@]})) || return 0
    local list="${FLEA_MISSING_DEBS[*]}"
    if [[ ${FLEA_NO_INSTALL:-0} == 1 ]]; then
        die "missing packages: $list (install: apt-get install -y $list)"
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages: $list, and this machine has no apt-get; install them by hand"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing packages: $list; run as root or install sudo"
        sudo=(sudo)
    fi
    log "installing $list"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${FLEA_MISSING_DEBS[@]}" >/dev/null
    FLEA_MISSING_DEBS=()
}

# need_rust_target TRIPLE: the standard library for TRIPLE, via rustup when
# there is one (a distro rustc without rustup must already have it).
need_rust_target() {
    local triple=$1
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup: https://rustup.rs)"
    if command -v rustup >/dev/null 2>&1; then
        if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
            [[ ${FLEA_NO_INSTALL:-0} == 1 ]] && die "missing Rust target $triple (rustup target add $triple)"
            log "adding Rust target $triple"
            rustup target add "$triple" >/dev/null
        fi
    elif [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$triple" ]]; then
        die "rustc has no standard library for $triple and there is no rustup to add it"
    fi
}

# The host's machine name as uname spells it on Linux (aarch64, x86_64).
host_arch() { uname -m; }
host_is_aarch64() { [[ $(host_arch) == aarch64 || $(host_arch) == arm64 ]]; }

# --- the optional CUDA feature -------------------------------------------------
# True when Cargo.toml declares a `cuda` feature. The CUDA backend lands
# separately; until then the scripts build CPU-only even with CUDA_HOME set.
has_cargo_feature() {
    local feature=$1
    awk -v f="$feature" '
        /^[[:space:]]*\[/ { in_features = ($0 ~ /^[[:space:]]*\[features\][[:space:]]*(#.*)?$/); next }
        in_features {
            line = $0; sub(/#.*/, "", line)
            if (line ~ "^[[:space:]]*\"?" f "\"?[[:space:]]*=") found = 1
        }
        END { exit found ? 0 : 1 }' "$FLEA_ROOT/Cargo.toml"
}

# cuda_setup: sets FLEA_FEATURES to () (CPU-only build) or (--features cuda),
# and for a CUDA build exports FLEA_CUDA_ARCHS (default 87 = Orin) and puts
# $CUDA_HOME/bin (nvcc, which build.rs runs) first on PATH. Only when CUDA_HOME
# is set: a CUDA build is asked for, never guessed from what is installed.
# Call it directly, not in $(...), so the exports and `die` stick.
#
# nvcc only compiles kernels/*.cu to a fatbin (SASS for FLEA_CUDA_ARCHS + PTX)
# and nothing links against CUDA libraries (cudarc dlopens the driver), so a
# cross build needs an nvcc that runs on the build machine, not an aarch64
# toolkit. Its version matters: the board's driver must be at least as new.
FLEA_FEATURES=()
cuda_setup() {
    FLEA_FEATURES=()
    [[ -n ${CUDA_HOME:-} ]] || return 0
    if ! has_cargo_feature cuda; then
        warn "CUDA_HOME=$CUDA_HOME is set but Cargo.toml has no \"cuda\" feature yet; building CPU-only"
        return 0
    fi
    [[ -x $CUDA_HOME/bin/nvcc ]] || die "CUDA_HOME=$CUDA_HOME has no bin/nvcc"
    export CUDA_HOME
    export FLEA_CUDA_ARCHS="${FLEA_CUDA_ARCHS:-87}"
    export PATH="$CUDA_HOME/bin:$PATH"
    # build.rs prefers $NVCC over CUDA_HOME; make them agree.
    export NVCC="$CUDA_HOME/bin/nvcc"
    local release
    release=$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n1)
    log "nvcc ${release:-(unknown version)} from $CUDA_HOME, FLEA_CUDA_ARCHS=$FLEA_CUDA_ARCHS"
    if [[ -n $release ]] && ! version_le "$release" 12.6; then
        warn "nvcc $release is newer than JetPack 6's CUDA 12.6: the kernels need a driver of CUDA $release or a cuda-compat package on the board (use JetPack's nvcc 12.6 for Orin)"
    fi
    # shellcheck disable=SC2034 # read by the caller
    FLEA_FEATURES=(--features cuda)
}

# --- inspecting binaries ---------------------------------------------------------
# elf_arch FILE: aarch64, x86_64, other:<e_machine>, or not-elf.
elf_arch() {
    local file=$1 magic machine
    magic=$(od -An -tx1 -N4 "$file" 2>/dev/null | tr -d ' \n')
    [[ $magic == 7f454c46 ]] || {
        echo not-elf
        return
    }
    # e_machine: 16 bits at offset 18, little-endian on both architectures.
    machine=$(od -An -tu2 -j18 -N2 --endian=little "$file" | tr -d ' ')
    case $machine in
    183) echo aarch64 ;;
    62) echo x86_64 ;;
    *) echo "other:$machine" ;;
    esac
}

# objdump_for FILE: an objdump that can read FILE's architecture, or nothing.
objdump_for() {
    local arch
    arch=$(elf_arch "$1")
    if [[ $arch == aarch64 ]] && ! host_is_aarch64; then
        command -v aarch64-linux-gnu-objdump || true
    else
        command -v objdump || true
    fi
}

# glibc_floor FILE: the newest GLIBC_x.y symbol version FILE needs, i.e. the
# oldest glibc it starts on. Empty if it cannot be read.
glibc_floor() {
    local objdump
    objdump=$(objdump_for "$1")
    [[ -n $objdump ]] || return 0
    "$objdump" -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -u -V | tail -n1
}

# version_le A B: A <= B in version order.
version_le() { [[ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" == "$1" ]]; }

# jetpack_support FLOOR: which JetPack releases have a glibc at least FLOOR.
# JetPack 5.x = L4T r35 = Ubuntu 20.04 (glibc 2.31); JetPack 6.x = L4T r36 =
# Ubuntu 22.04 (glibc 2.35); JetPack 7 (Thor only) = Ubuntu 24.04 (glibc 2.39).
jetpack_support() {
    local floor=$1
    if [[ -z $floor ]]; then
        echo "unknown (no objdump for this binary)"
    elif version_le "$floor" 2.31; then
        echo "JetPack 5 (Ubuntu 20.04, glibc 2.31) and JetPack 6 (Ubuntu 22.04, glibc 2.35)"
    elif version_le "$floor" 2.35; then
        echo "JetPack 6 (Ubuntu 22.04, glibc 2.35) only; NOT JetPack 5 (glibc 2.31)"
    elif version_le "$floor" 2.39; then
        echo "Ubuntu 24.04 userlands only (JetPack 7); NOT JetPack 5 or 6"
    else
        echo "no released JetPack (needs glibc $floor)"
    fi
}

# The crate version from Cargo.toml's [package] section.
crate_version() {
    awk -F'"' '/^\[package\]/ { p = 1; next } /^\[/ { p = 0 } p && /^version[[:space:]]*=/ { print $2; exit }' \
        "$FLEA_ROOT/Cargo.toml"
}

#!/usr/bin/env bash
# Package flea for Jetson as a root filesystem overlay tarball:
#
#   usr/local/bin/flea                     the aarch64 binary (0755)
#   etc/flea/*.toml                        configs/*.toml (0644)
#   etc/flea/config.toml                   copy of the default board's config
#   etc/systemd/system/flea.service        `flea run` fed from the FIFO below
#   etc/systemd/system/flea-input.socket   ListenFIFO=/run/flea/input
#   usr/lib/tmpfiles.d/flea.conf           /var/log/flea for the completions
#   usr/share/doc/flea/README              what it is, how to flash/deploy
#
# Extract it into Linux_for_Tegra/rootfs/ before flashing, or copy it onto a
# running board with cross/deploy.sh. Everything is owned root:root.
#
#   cross/package.sh [--binary PATH] [--out FILE] [--default-config NAME]
#   cross/package.sh --stage DIR ...    lay the tree out in DIR, no tarball
#
#   --binary PATH          the flea to ship (default: $FLEA_BINARY, else the
#                          cross/build.sh output target/aarch64/.../release/flea)
#   --out FILE             tarball path (default target/aarch64/flea-VERSION-ARCH-rootfs.tar.gz)
#   --stage DIR            write the tree into DIR (new or empty) instead
#   --default-config NAME  the board behind etc/flea/config.toml (default orin-nano-8gb)
#   --any-arch             accept a non-aarch64 binary (tests, the x86 CI run of
#                          cross/docker-build.sh); never ship such a tarball
set -euo pipefail
FLEA_SCRIPT=cross/package.sh
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

binary="${FLEA_BINARY:-}"
out=""
stage=""
default_config=orin-nano-8gb
any_arch=0
while (($#)); do
    case $1 in
    --binary) binary=${2:?--binary needs a path}; shift ;;
    --out) out=${2:?--out needs a path}; shift ;;
    --stage) stage=${2:?--stage needs a directory}; shift ;;
    --default-config) default_config=${2:?--default-config needs a name}; shift ;;
    --any-arch) any_arch=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
[[ -n $stage && -n $out ]] && die "--stage and --out exclude each other"

# Resolve user paths before anything changes directory.
abspath() { [[ $1 == /* ]] && printf '%s\n' "$1" || printf '%s\n' "$PWD/$1"; }
target_dir="${CARGO_TARGET_DIR:-$FLEA_ROOT/target/aarch64}"
binary=$(abspath "${binary:-$target_dir/$FLEA_TRIPLE/release/flea}")
[[ -n $out ]] && out=$(abspath "$out")
[[ -n $stage ]] && stage=$(abspath "$stage")

[[ -f $binary ]] || die "no binary at $binary (run cross/build.sh first, or pass --binary)"
arch=$(elf_arch "$binary")
if [[ $arch != aarch64 ]]; then
    ((any_arch)) || die "$binary is $arch, not aarch64 (pass --any-arch only for tests)"
    warn "packaging a $arch binary (--any-arch): not for a Jetson"
else
    floor=$(glibc_floor "$binary")
    if [[ -n $floor ]] && ! version_le "$floor" 2.35; then
        warn "$binary needs glibc $floor, newer than JetPack 6's 2.35"
    fi
fi

configs=("$FLEA_ROOT"/configs/*.toml)
[[ -e ${configs[0]} ]] || die "no configs in $FLEA_ROOT/configs"
[[ -f $FLEA_ROOT/configs/$default_config.toml ]] ||
    die "--default-config $default_config: no configs/$default_config.toml"

# Lay the tree out with explicit modes, so the tarball does not depend on the
# umask or on the modes files happen to have in the checkout.
if [[ -n $stage ]]; then
    mkdir -p "$stage"
    [[ -z $(ls -A "$stage") ]] || die "--stage $stage is not empty"
    root=$stage
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    root=$work/root
fi
umask 022
install -d -m 0755 "$root/usr/local/bin" "$root/etc/flea"
install -m 0755 "$binary" "$root/usr/local/bin/flea"
for c in "${configs[@]}"; do
    install -m 0644 "$c" "$root/etc/flea/"
done
install -m 0644 "$FLEA_ROOT/configs/$default_config.toml" "$root/etc/flea/config.toml"
# The static files (units, tmpfiles, doc) live in cross/rootfs/ as they are
# installed; every one of them is 0644.
(cd "$FLEA_ROOT/cross/rootfs" && find . -type f | sort) | while read -r f; do
    install -d -m 0755 "$root/$(dirname "$f")"
    install -m 0644 "$FLEA_ROOT/cross/rootfs/$f" "$root/$f"
done

if [[ -n $stage ]]; then
    log "staged in $stage (default config: $default_config)"
    exit 0
fi

version=$(crate_version)
out="${out:-$target_dir/flea-$version-$arch-rootfs.tar.gz}"
mkdir -p "$(dirname "$out")"
# Reproducible: sorted names, fixed owner and mtime (the last commit's, or
# SOURCE_DATE_EPOCH), gzip without a timestamp. Member names have no "./"
# prefix, so they read usr/local/bin/flea and extract relative to -C.
mtime="${SOURCE_DATE_EPOCH:-$(git -C "$FLEA_ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
tar -C "$root" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -cf - etc usr | gzip -6n >"$out.tmp"
mv "$out.tmp" "$out"
log "wrote $out ($arch, default config: $default_config)"
echo "$out"

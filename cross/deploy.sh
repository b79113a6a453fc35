#!/usr/bin/env bash
# Install the cross/package.sh tarball on a running Jetson over ssh.
#
#   cross/deploy.sh [options] user@host
#
#   --dry-run          print the scp/ssh commands instead of running them
#   --tarball FILE     what to install (default: the newest
#                      target/aarch64/flea-*-aarch64-rootfs.tar.gz)
#   --config NAME      make /etc/flea/NAME.toml the board's config.toml
#                      (default: keep the board's existing config.toml; a
#                      first install gets the tarball's default)
#   --enable           enable and start flea-input.socket (flea starts on the
#                      first prompt); without it, only a running flea restarts
#   --no-sudo          the remote user is root or sudo is unavailable
#   -o OPTION          passed to ssh and scp as -o OPTION (repeatable), e.g.
#                      -o Port=2222 -o IdentityFile=~/.ssh/jetson
#
# On the board it extracts the tarball over / (as root, so files stay
# root:root; --no-overwrite-dir keeps the modes of existing directories),
# creates /var/log/flea, reloads systemd and restarts flea.service if running.
set -euo pipefail
FLEA_SCRIPT=cross/deploy.sh
# shellcheck source=cross/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dry_run=0
tarball=""
config=""
enable=0
remote_sudo=sudo
ssh_opts=()
target=""
while (($#)); do
    case $1 in
    --dry-run) dry_run=1 ;;
    --tarball) tarball=${2:?--tarball needs a file}; shift ;;
    --config) config=${2:?--config needs a board name}; shift ;;
    --enable) enable=1 ;;
    --no-sudo) remote_sudo="" ;;
    -o) ssh_opts+=(-o "${2:?-o needs an option}"); shift ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option: $1 (try --help)" ;;
    *)
        [[ -z $target ]] || die "more than one destination: $target and $1"
        target=$1
        ;;
    esac
    shift
done
[[ -n $target ]] || die "usage: cross/deploy.sh [--dry-run] [options] user@host"
[[ $target == *[[:space:]]* || $target == -* ]] && die "bad destination: $target"
if [[ -n $config && ! $config =~ ^[A-Za-z0-9._-]+$ ]]; then
    die "--config $config: expected a board name like orin-nx-16gb"
fi
if [[ -n $config && ! -f $FLEA_ROOT/configs/$config.toml ]]; then
    die "--config $config: no configs/$config.toml"
fi
# root needs no sudo.
[[ ${target%%@*} == root && $target == *@* ]] && remote_sudo=""

if [[ -z $tarball ]]; then
    # The newest tarball cross/package.sh made, else the name it would make.
    dist="${CARGO_TARGET_DIR:-$FLEA_ROOT/target/aarch64}"
    tarball="$dist/flea-$(crate_version)-aarch64-rootfs.tar.gz"
    for candidate in "$dist"/flea-*-aarch64-rootfs.tar.gz; do
        [[ -f $candidate && ( ! -f $tarball || $candidate -nt $tarball ) ]] && tarball=$candidate
    done
fi
if [[ ! -f $tarball ]]; then
    ((dry_run)) || die "no tarball at $tarball (run cross/build.sh && cross/package.sh)"
    warn "no tarball at $tarball yet (cross/build.sh && cross/package.sh); printing anyway"
fi

remote_tar=/tmp/flea-rootfs.$$.tar.gz
# The remote script runs as root under the board's /bin/sh (dash). It uses no
# $, quotes or backslashes, so it travels as sh -c "..." through the remote
# login shell unchanged and prints readably with --dry-run.
extract="tar -xzf $remote_tar -C / --no-overwrite-dir"
steps=(
    "set -e"
    # Keep the board's chosen config.toml unless --config picks one.
    "if [ -e /etc/flea/config.toml ]; then $extract --exclude=etc/flea/config.toml; else $extract; fi"
    "rm -f $remote_tar"
    "systemd-tmpfiles --create /usr/lib/tmpfiles.d/flea.conf"
)
[[ -n $config ]] && steps+=("cp /etc/flea/$config.toml /etc/flea/config.toml")
steps+=("systemctl daemon-reload")
((enable)) && steps+=("systemctl enable --now flea-input.socket")
steps+=(
    "systemctl try-restart flea.service"
    "/usr/local/bin/flea --version"
)
script=$(printf '%s; ' "${steps[@]}")
script=${script%; }
remote_cmd="${remote_sudo:+$remote_sudo }sh -c \"$script\""

ssh_tty=()
[[ -t 0 && -n $remote_sudo ]] && ssh_tty=(-t) # let sudo ask for a password

# Print a command as one copy-pasteable shell line.
show() {
    local out="+" arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:@=+,-]+$ ]]; then
            out+=" $arg"
        else
            out+=" '${arg//\'/\'\\\'\'}'"
        fi
    done
    printf '%s\n' "$out"
}

run() {
    if ((dry_run)); then show "$@"; else "$@"; fi
}

run scp -q "${ssh_opts[@]}" "$tarball" "$target:$remote_tar"
run ssh "${ssh_opts[@]}" "${ssh_tty[@]}" "$target" "$remote_cmd"
((dry_run)) || log "installed $(basename "$tarball") on $target"

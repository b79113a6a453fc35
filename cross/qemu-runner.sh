#!/usr/bin/env bash
# Cargo's runner for aarch64-unknown-linux-gnu (see .cargo/config.toml): on an
# x86_64 host, run the aarch64 test or binary under user-mode QEMU with the
# arm64 sysroot from libc6-dev-arm64-cross; on an aarch64 host (a Jetson, the
# L4T build image) run it directly, so native `cargo test` keeps working there.
set -euo pipefail
case "$(uname -m)" in
aarch64 | arm64) exec "$@" ;;
esac
if ! command -v qemu-aarch64 >/dev/null 2>&1; then
    echo "cross/qemu-runner.sh: qemu-aarch64 not found (apt-get install -y qemu-user, or run cross/test.sh)" >&2
    exit 127
fi
exec qemu-aarch64 -L "${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}" "$@"

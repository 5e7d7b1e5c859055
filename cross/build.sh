#!/usr/bin/env bash
# Builds a release heldar for an ARM box on this Debian 12 amd64 machine:
#   cross/build.sh aarch64   -> target/aarch64/aarch64-unknown-linux-gnu/release/heldar
#   cross/build.sh armv7     -> target/armv7/armv7-unknown-linux-gnueabihf/release/heldar
# Installs what it needs (with sudo when not root), is safe to run again, and never touches the
# host's native GStreamer development packages. Takes about 10 min from clean on 2 cores,
# including about 1 min for the sysroot the first time.
set -euo pipefail
. "$(dirname "$0")/env.sh" "${1:-}"

host_setup
sysroot_setup
cargo_config
cd "$ROOT"
cargo --config "$CARGO_CONFIG" build --release --locked --bin heldar
binary=$ROOT/target/$ARCH/$TARGET/release/heldar
file "$binary"
echo "built $binary"

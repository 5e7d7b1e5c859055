#!/usr/bin/env bash
# Runs the test suite for an ARM target under qemu-user on this amd64 machine:
#   cross/test.sh aarch64 [extra test-name filters]
# The library's unit tests run whole. Of the integration tests, those listed in SUITES run
# (store, config, daemon lifecycle and the recording pipeline); the rest are skipped by name:
#   mqtt::, perception::, durability::, zones::, retention::, maintenance::, cli_golden::
#     - minutes-long load, kill and timing tests whose work is the same on every architecture;
#       under emulation (about 10x slower) they add an hour and test qemu's speed, not heldar.
# Within daemon::, control_socket_refuses_callers_outside_root_and_the_group is skipped: it
#   starts the binary through runuser, and an emulated binary cannot be exec'd without binfmt_misc.
# Serial tests, when present, are skipped: qemu-user 7.2 lacks the TCGETS2 ioctl (ENOSYS).
# Takes about 9 min after build.sh on 2 cores (the test build is 5 of them).
set -euo pipefail
. "$(dirname "$0")/env.sh" "${1:-}"
shift || true

SUITES=(store:: config:: daemon:: media::records_contiguous_keyframe_aligned_segments
        media::clips_snapshots_and_stream_tests "$@")

host_setup
sysroot_setup
cargo_config
cd "$ROOT"
export SKIP_SERIAL_TESTS=1
cargo --config "$CARGO_CONFIG" test --release --locked --lib
cargo --config "$CARGO_CONFIG" test --release --locked --test it -- "${SUITES[@]}" \
  --skip daemon::control_socket_refuses_callers_outside_root_and_the_group

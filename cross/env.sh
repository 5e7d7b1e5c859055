# Sourced by build.sh and test.sh: what an architecture name means, and the host setup they share.
# Usage: . cross/env.sh ARCH   (ARCH: aarch64 | armv7)
# shellcheck shell=bash

case "${1:-}" in
  aarch64)
    TARGET=aarch64-unknown-linux-gnu DEB_ARCH=arm64 GNU_TRIPLE=aarch64-linux-gnu
    QEMU=qemu-aarch64-static ;;
  armv7)
    TARGET=armv7-unknown-linux-gnueabihf DEB_ARCH=armhf GNU_TRIPLE=arm-linux-gnueabihf
    QEMU=qemu-arm-static ;;
  *)
    echo "usage: $0 aarch64|armv7" >&2
    exit 2 ;;
esac
ARCH=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYSROOT=${HELDAR_SYSROOT:-$ROOT/target/sysroot/$DEB_ARCH}
CARGO_CONFIG=$ROOT/target/cross/$ARCH.toml
TARGET_UNDERSCORE=${TARGET//-/_}
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
APT=(-o DPkg::Lock::Timeout=600)

# Host packages: Debian's cross rustc (rustc-web, whose std for the target comes from
# libstd-rust-web-dev:<arch>), the cross C compiler, qemu-user and mmdebstrap. Only Multi-Arch:
# same packages of the target architecture go onto the host, and --no-remove makes apt refuse
# any plan that would take the native GStreamer development packages away.
host_setup() {
  if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
    $SUDO dpkg --add-architecture "$DEB_ARCH"
  fi
  if ! $SUDO apt-get "${APT[@]}" update -q; then
    if [ "$DEB_ARCH" != arm64 ]; then
      # A broken foreign index would break `apt-get update` for everyone on this machine.
      $SUDO dpkg --remove-architecture "$DEB_ARCH" || true
    fi
    echo "error: apt-get update fails with the $DEB_ARCH index (see above; Debian's $DEB_ARCH" \
         "mirrors are sometimes mid-sync); nothing was built. Try again later." >&2
    exit 1
  fi
  local packages=(rustc-web cargo-web "libstd-rust-web-dev:$DEB_ARCH" "gcc-$GNU_TRIPLE"
                  qemu-user-static mmdebstrap file)
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get "${APT[@]}" install -y -q \
      --no-install-recommends --no-remove "${missing[@]}"
  fi
  local rustc_version std_version
  rustc_version=$(dpkg-query -W -f='${Version}' rustc-web)
  std_version=$(dpkg-query -W -f='${Version}' "libstd-rust-web-dev:$DEB_ARCH")
  if [ "$rustc_version" != "$std_version" ]; then
    echo "error: rustc-web $rustc_version and libstd-rust-web-dev:$DEB_ARCH $std_version differ;" \
         "run apt-get upgrade so they match" >&2
    exit 1
  fi
}

# The target's root file system: headers and libraries to link against, and the GStreamer
# plugins the tests run under qemu. Made once with mmdebstrap (no maintainer scripts, no qemu).
sysroot_setup() {
  if [ -f "$SYSROOT/.heldar-sysroot" ]; then
    return
  fi
  $SUDO rm -rf "$SYSROOT"
  mkdir -p "$(dirname "$SYSROOT")"
  $SUDO mmdebstrap --mode=root --variant=extract --arch="$DEB_ARCH" \
    --include=libc6-dev,libgcc-s1,libgstreamer1.0-dev,libgstreamer-plugins-base1.0-dev,libgstrtspserver-1.0-dev,gstreamer1.0-plugins-base,gstreamer1.0-plugins-good,gstreamer1.0-plugins-ugly,gstreamer1.0-plugins-bad,gstreamer1.0-libav,gstreamer1.0-rtsp \
    bookworm "$SYSROOT" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  # --variant=extract skips maintainer scripts, so update-alternatives links are missing.
  local lib=$SYSROOT/usr/lib/$GNU_TRIPLE
  $SUDO ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
  $SUDO ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
  $SUDO touch "$SYSROOT/.heldar-sysroot"
}

# A cargo --config file for the target, apart from the native build (own target dir, Debian's
# rustc only here).
cargo_config() {
  mkdir -p "$(dirname "$CARGO_CONFIG")"
  cat > "$CARGO_CONFIG" <<TOML
[build]
rustc = "/usr/bin/rustc"
target = "$TARGET"
target-dir = "$ROOT/target/$ARCH"

[target.$TARGET]
linker = "$GNU_TRIPLE-gcc"
rustflags = ["-C", "link-arg=--sysroot=$SYSROOT"]
runner = ["$QEMU", "-L", "$SYSROOT"]

[env]
PKG_CONFIG_ALLOW_CROSS = "1"
PKG_CONFIG_SYSROOT_DIR_$TARGET_UNDERSCORE = "$SYSROOT"
PKG_CONFIG_LIBDIR_$TARGET_UNDERSCORE = "$SYSROOT/usr/lib/$GNU_TRIPLE/pkgconfig:$SYSROOT/usr/share/pkgconfig"
CFLAGS_$TARGET_UNDERSCORE = "--sysroot=$SYSROOT"
# gst-plugin-scanner is a target binary that qemu-user cannot exec without binfmt_misc.
GST_REGISTRY_FORK = "no"
# Tests spawn the heldar binary; under qemu-user it must be started through qemu too.
HELDAR_TEST_RUNNER = "$QEMU -L $SYSROOT"
TOML
}

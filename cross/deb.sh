#!/usr/bin/env bash
# Builds the Debian package of heldar for one architecture:
#   cross/deb.sh amd64     (native release build)
#   cross/deb.sh aarch64   (through cross/build.sh)   armv7 likewise
# -> target/deb/heldar_<version>_<debarch>.deb
# Contents: /usr/bin/heldar, the systemd units and generator, sysusers.d and tmpfiles.d
# snippets, /etc/heldar/heldar.toml (a conffile: upgrades never overwrite local changes), the
# board profiles under /usr/share/heldar/board-configs (also built into the binary), the README.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
arch=${1:-}
case "$arch" in
  amd64)
    deb_arch=amd64 board=generic-x86_64
    (cd "$ROOT" && cargo build --release --locked --bin heldar)
    binary=$ROOT/target/release/heldar ;;
  aarch64)
    deb_arch=arm64 board=generic-arm64
    "$ROOT/cross/build.sh" aarch64
    binary=$ROOT/target/aarch64/aarch64-unknown-linux-gnu/release/heldar ;;
  armv7)
    deb_arch=armhf board=generic-arm64
    "$ROOT/cross/build.sh" armv7
    binary=$ROOT/target/armv7/armv7-unknown-linux-gnueabihf/release/heldar ;;
  *) echo "usage: $0 amd64|aarch64|armv7" >&2; exit 2 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
pkg=$ROOT/target/deb/heldar_${version}_$deb_arch
rm -rf "$pkg"
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/lib/systemd/system-generators" "$pkg/usr/lib/sysusers.d" "$pkg/usr/lib/tmpfiles.d" \
  "$pkg/etc/heldar" "$pkg/usr/share/heldar/board-configs" "$pkg/usr/share/doc/heldar"
install -m 0755 "$binary" "$pkg/usr/bin/heldar"
install -m 0644 "$ROOT/systemd/heldar.service" "$ROOT/systemd/heldar-worker@.service" \
  "$pkg/lib/systemd/system/"
install -m 0755 "$ROOT/systemd/heldar-generator" "$pkg/lib/systemd/system-generators/"
install -m 0644 "$ROOT/systemd/heldar.sysusers" "$pkg/usr/lib/sysusers.d/heldar.conf"
install -m 0644 "$ROOT/systemd/heldar.tmpfiles" "$pkg/usr/lib/tmpfiles.d/heldar.conf"
install -m 0644 "$ROOT"/board-configs/*.toml "$pkg/usr/share/heldar/board-configs/"
install -m 0644 "$ROOT/README.md" "$ROOT/heldar.example.toml" "$pkg/usr/share/doc/heldar/"
cat > "$pkg/usr/share/doc/heldar/copyright" <<TXT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: heldar-edge

Files: *
Copyright: 2026 Heldar Edge developers
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
TXT
printf 'heldar (%s) stable; urgency=medium\n\n  * Release %s.\n\n -- Heldar Edge developers <dev@heldar.invalid>  %s\n' \
  "$version" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct)}")" \
  | gzip -9n > "$pkg/usr/share/doc/heldar/changelog.gz"

# The shipped config: valid as it stands (no cameras yet), so the service starts and the page
# and CLI work from the first boot.
cat > "$pkg/etc/heldar/heldar.toml" <<TOML
# Heldar Edge configuration. Every key is described in /usr/share/doc/heldar/heldar.example.toml.
# Check changes with \`heldar config check /etc/heldar/heldar.toml\`, then
# \`systemctl restart heldar\`. Cameras, zones and tasks can also be added at runtime
# (heldar cameras add ..., or over MQTT) without editing this file.
device_id = "nvr-01"
board = "$board"
data_dir = "/var/lib/heldar"

[http]
listen = "127.0.0.1:8000"
auth = true
# Workers on the box fetch raw frames cheapest over this socket (tokens still apply).
socket = "/run/heldar/api.sock"

[control]
socket = "/run/heldar/heldar.sock"
group = "heldar"
TOML
echo /etc/heldar/heldar.toml > "$pkg/DEBIAN/conffiles"

installed_kib=$(du -sk "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CTRL
Package: heldar
Version: $version
Architecture: $deb_arch
Maintainer: Heldar Edge developers <dev@heldar.invalid>
Installed-Size: $installed_kib
Depends: libc6 (>= 2.36), libgcc-s1, libglib2.0-0, libgstreamer1.0-0 (>= 1.22), libgstreamer-plugins-base1.0-0 (>= 1.22), libgstrtspserver-1.0-0 (>= 1.22), gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-libav, systemd | systemd-standalone-sysusers, adduser, init-system-helpers (>= 1.65)
Recommends: gstreamer1.0-plugins-ugly
Section: video
Priority: optional
Homepage: https://heldar.invalid/edge
Description: edge agent for NVR boxes
 Records local IP cameras through GStreamer (stream copy, power-cut safe
 segments), samples frames for on-box inference workers, keeps detections and
 events in a power-loss-safe SQLite outbox, runs zones, and reports over MQTT.
 Maintained over SSH with the heldar CLI and a loopback web page.
CTRL

cat > "$pkg/DEBIAN/postinst" <<'SH'
#!/bin/sh
# Creates the heldar user and directories, then enables and (re)starts the service.
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers heldar.conf
    else
        getent group heldar >/dev/null || addgroup --system heldar
        getent passwd heldar >/dev/null || adduser --system --ingroup heldar \
            --home /var/lib/heldar --no-create-home --shell /usr/sbin/nologin heldar
        adduser heldar dialout >/dev/null || true
        adduser heldar video >/dev/null || true
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create heldar.conf || true
    else
        install -d -m 0750 -o heldar -g heldar /var/lib/heldar
    fi
    chown root:heldar /etc/heldar /etc/heldar/heldar.toml
    chmod 0750 /etc/heldar
    chmod 0640 /etc/heldar/heldar.toml
    deb-systemd-helper enable heldar.service >/dev/null || true
    if [ -d /run/systemd/system ]; then
        deb-systemd-invoke daemon-reload >/dev/null 2>&1 || true
        deb-systemd-invoke restart heldar.service || \
            echo "heldar: the service did not start; see systemctl status heldar" >&2
    fi
fi
exit 0
SH
cat > "$pkg/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop heldar.service || true
fi
exit 0
SH
cat > "$pkg/DEBIAN/postrm" <<'SH'
#!/bin/sh
# Recordings and the database stay on remove and purge: deleting evidence takes a person.
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    deb-systemd-helper disable heldar.service >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    deb-systemd-helper purge heldar.service >/dev/null 2>&1 || true
fi
exit 0
SH
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
deb=$pkg.deb
dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "built $deb"

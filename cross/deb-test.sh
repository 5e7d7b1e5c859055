#!/usr/bin/env bash
# Builds the amd64 package, inspects it, runs lintian on it, installs it into a throwaway
# Debian bookworm root (mmdebstrap, which resolves its dependencies from the Debian mirror) and
# runs `heldar --version` and `heldar config check` from there. About 3 min, most of it the
# download of the root's packages. Needs root (or sudo) and network.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
for tool in mmdebstrap lintian; do
  command -v "$tool" >/dev/null || $SUDO env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends --no-remove "$tool"
done

"$ROOT/cross/deb.sh" amd64
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
deb=$ROOT/target/deb/heldar_${version}_amd64.deb

echo "== contents"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
for f in ./usr/bin/heldar ./lib/systemd/system/heldar.service \
         ./lib/systemd/system/heldar-worker@.service ./lib/systemd/system-generators/heldar-generator \
         ./usr/lib/sysusers.d/heldar.conf ./usr/lib/tmpfiles.d/heldar.conf ./etc/heldar/heldar.toml \
         ./usr/share/heldar/board-configs/rpi4.toml; do
  grep -q " $f\$" <<<"$contents" || { echo "error: $f missing from the package" >&2; exit 1; }
done
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = /etc/heldar/heldar.toml ] \
  || { echo "error: /etc/heldar/heldar.toml is not a conffile" >&2; exit 1; }

echo "== lintian"
# Errors fail; warnings and infos are shown (no source package, no man page yet).
lintian --fail-on error --suppress-tags no-manual-page "$deb"

echo "== install into a throwaway root"
root=$(mktemp -d /tmp/heldar-deb-root.XXXXXX)
trap '$SUDO rm -rf "$root"' EXIT
# The hook bind-mounts the package's directory into the root, where apt installs it from.
$SUDO mmdebstrap --mode=root --variant=apt --include="$deb" \
  --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount bookworm "$root" \
  "deb http://deb.debian.org/debian bookworm main" \
  "deb http://deb.debian.org/debian-security bookworm-security main"
$SUDO chroot "$root" heldar --version
$SUDO chroot "$root" heldar config check /etc/heldar/heldar.toml
$SUDO chroot "$root" getent passwd heldar
$SUDO chroot "$root" stat -c '%U:%G %a %n' /etc/heldar/heldar.toml
$SUDO chroot "$root" sh -c 'id heldar | grep -q dialout && id heldar | grep -q video'
$SUDO chroot "$root" /lib/systemd/system-generators/heldar-generator /tmp/gen
$SUDO chroot "$root" cat /tmp/gen/heldar.service.d/50-board.conf
echo "package ok: $deb"

#!/usr/bin/env bash
# A real Home Assistant core for the discovery test (tests/it/home_assistant.rs), in a venv
# under DIR (default: target/home-assistant). Idempotent: a venv that already has the pinned
# versions is left as it is. About 20 s from nothing on a 2-core machine (uv from PyPI, then
# prebuilt wheels); about 360 MB on disk.
#
# Home Assistant is pinned to 2024.1.6, the newest that runs on Debian 12's Python 3.11, and is
# installed with its own package_constraints.txt: without them the resolver backtracks for
# minutes through bluetooth packages. The integrations' own requirements, which Home Assistant
# would pip-install at run time, are installed here, so it runs with --skip-pip and fetches
# nothing while the test runs.
set -euo pipefail

HA_VERSION=2024.1.6
UV_VERSION=0.13.10
DIR=${1:-target/home-assistant}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"
cd "$DIR"

# mqtt: paho-mqtt; file_upload (which mqtt needs): janus; the MQTT camera platform imports
# stream, which needs numpy and PyTurboJPEG.
REQUIREMENTS=("paho-mqtt==1.6.1" "janus==1.0.0" "numpy==1.26.0" "PyTurboJPEG==1.7.1")

venv_ok() {
  [ -x venv/bin/hass ] && venv/bin/python - "$HA_VERSION" "${REQUIREMENTS[@]}" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
wanted = [("homeassistant", sys.argv[1])] + [r.split("==") for r in sys.argv[2:]]
assert all(m.version(name) == version for name, version in wanted)
PY
}
if venv_ok; then
  echo "home assistant $HA_VERSION: venv in $DIR/venv is ready"
  exit 0
fi

started=$(date +%s)
wheel="wheels/homeassistant-$HA_VERSION-py3-none-any.whl"
if [ ! -f "$wheel" ]; then
  "$PYTHON" -m pip download -q --no-cache-dir --no-deps "homeassistant==$HA_VERSION" -d wheels
fi
"$PYTHON" - "$wheel" <<'PY'
import sys, zipfile
constraints = zipfile.ZipFile(sys.argv[1]).read("homeassistant/package_constraints.txt")
open("constraints.txt", "wb").write(constraints)
PY
if [ ! -x tools/bin/uv ]; then
  rm -rf tools
  "$PYTHON" -m venv tools
  tools/bin/pip install -q --no-cache-dir "uv==$UV_VERSION"
fi
rm -rf venv
tools/bin/uv venv -q --python "$(command -v "$PYTHON")" venv
VIRTUAL_ENV="$PWD/venv" tools/bin/uv pip install -q --no-cache -c constraints.txt \
  "$wheel" "${REQUIREMENTS[@]}"
venv_ok || { echo "error: the Home Assistant venv in $DIR/venv is incomplete" >&2; exit 1; }
echo "home assistant $HA_VERSION: venv in $DIR/venv installed in $(( $(date +%s) - started )) s"

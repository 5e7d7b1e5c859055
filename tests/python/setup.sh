#!/usr/bin/env bash
# The Python worker client and the people detector example (clients/python,
# examples/people_worker.py), in a venv under DIR (default: target/python-workers), for the tests in
# tests/it/worker_clients.rs. Idempotent: a venv that already has the pinned versions is left as
# it is. The client is installed editable, so the tests always run this checkout's code. About
# 70 MB from PyPI (OpenCV's headless wheel and numpy), prebuilt wheels only.
#
# The people detector's test plays DIR/vtest.avi, a pedestrian video from Debian's opencv-doc:
# taken from /usr/share/doc/opencv-doc when that is installed, else cut out of the package
# (96 MB download, with apt-get download: no root, nothing installed).
set -euo pipefail

DIR=${1:-target/python-workers}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# OpenCV below 5 keeps the HOG people detector; numpy below 2 matches it on Python 3.11.
REQUIREMENTS=("httpx==0.27.2" "numpy==1.26.4" "opencv-python-headless==4.10.0.84")

venv_ok() {
  [ -x "$DIR/venv/bin/python" ] && "$DIR/venv/bin/python" - "${REQUIREMENTS[@]}" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
import heldar_worker, cv2, httpx
assert all(m.version(name) == version for name, version in (r.split("==") for r in sys.argv[1:]))
PY
}
VIDEO=usr/share/doc/opencv-doc/examples/data/vtest.avi
if [ ! -s "$DIR/vtest.avi" ]; then
  mkdir -p "$DIR"
  if [ -s "/$VIDEO" ]; then
    cp "/$VIDEO" "$DIR/vtest.avi"
  else
    rm -rf "$DIR/opencv-doc"
    mkdir -p "$DIR/opencv-doc"
    (cd "$DIR/opencv-doc" && apt-get download -q opencv-doc 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
    deb=$(ls "$DIR"/opencv-doc/opencv-doc_*.deb)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$DIR/opencv-doc" "./$VIDEO"
    mv "$DIR/opencv-doc/$VIDEO" "$DIR/vtest.avi"
    rm -rf "$DIR/opencv-doc"
  fi
  echo "python workers: pedestrian video in $DIR/vtest.avi"
fi

if venv_ok; then
  echo "python workers: venv in $DIR/venv is ready"
  exit 0
fi

started=$(date +%s)
rm -rf "$DIR/venv"
mkdir -p "$DIR"
"$PYTHON" -m venv "$DIR/venv"
"$DIR/venv/bin/pip" install -q --no-cache-dir --only-binary=:all: "${REQUIREMENTS[@]}"
"$DIR/venv/bin/pip" install -q --no-cache-dir -e "$ROOT/clients/python"
venv_ok || { echo "python workers: the venv in $DIR/venv does not import" >&2; exit 1; }
echo "python workers: venv in $DIR/venv ready in $(( $(date +%s) - started )) s"

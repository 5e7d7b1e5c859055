#!/usr/bin/env bash
# Where a recording's CPU goes, stage by stage, against ffmpeg on the same camera in one run.
#
# A 1280x720 25 fps 2 Mbit/s H.264 camera (gst-rtsp-server, through python3-gi) on loopback;
# then, one after the other, 40 s each after 8 s of warm-up, CPU-s per minute from /proc:
# GStreamer's RTSP source alone (rtspsrc ! fakesink, as heldar sets it up over TCP), plus
# depayload and parse, plus heldar's recording branch (tee, queue, splitmuxsink with
# matroskamux), `heldar run` itself with one camera, and ffmpeg's stream copy into segments.
#
#   benches/rtsp_source_cost.sh [path/to/heldar]     (default: target/release/heldar)
#
# Needs gstreamer1.0-tools, python3-gi, gir1.2-gst-rtsp-server-1.0, ffmpeg and bc. About 5 min.
set -euo pipefail

HELDAR=${1:-target/release/heldar}
PORT=${PORT:-8554}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
URL="rtsp://127.0.0.1:$PORT/main"

/usr/bin/python3 - "$PORT" <<'PY' &
import sys, gi
gi.require_version("Gst", "1.0"); gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer, GLib
Gst.init(None)
server = GstRtspServer.RTSPServer(); server.set_address("127.0.0.1"); server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory(); factory.set_shared(True)
factory.set_launch(
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width=1280,height=720,framerate=25/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=50 bitrate=2000 "
    "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )")
server.get_mount_points().add_factory("/main", factory)
server.attach(None)
GLib.MainLoop().run()
PY
sleep 3

# CPU-s per minute of a command over 40 s, after 8 s of warm-up.
measure() {
  local label=$1; shift
  "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep 8
  local t0 t1
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sleep 40
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill -INT "$pid"; sleep 1; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  printf '%-52s %6.3f CPU-s/min\n' "$label" "$(echo "scale=4; ($t1-$t0)/$(getconf CLK_TCK)*1.5" | bc)"
}

SRC="rtspsrc location=$URL protocols=tcp latency=0 buffer-mode=none"
mkdir -p "$WORK/gst" "$WORK/ffmpeg" "$WORK/heldar"
cat > "$WORK/heldar/heldar.toml" <<TOML
device_id = "bench"
data_dir = "$WORK/heldar/data"
log_level = "warn"
[recording]
min_free = "0"
[http]
listen = "127.0.0.1:0"
[control]
socket = "$WORK/heldar/heldar.sock"
group = "root"
[[cameras]]
id = "gate"
url = "$URL"
TOML

measure "rtspsrc ! fakesink" gst-launch-1.0 -q $SRC ! fakesink
measure "+ rtph264depay ! h264parse" gst-launch-1.0 -q $SRC ! rtph264depay ! h264parse ! fakesink
measure "+ tee ! queue ! splitmuxsink (matroskamux)" gst-launch-1.0 -q -e $SRC ! rtph264depay ! h264parse \
  ! tee ! queue ! splitmuxsink muxer-factory=matroskamux max-size-time=10000000000 \
  location="$WORK/gst/%05d.mkv"
measure "heldar run, 1 camera" "$HELDAR" run --config "$WORK/heldar/heldar.toml"
measure "ffmpeg -c copy -f segment -segment_time 10" ffmpeg -nostdin -loglevel error -rtsp_transport tcp \
  -i "$URL" -c copy -f segment -segment_time 10 "$WORK/ffmpeg/%03d.mkv"

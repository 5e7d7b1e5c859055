# cross-rs image for aarch64-unknown-linux-gnu on Debian bookworm (GStreamer 1.22).
# In bookworm the arm64 GStreamer -dev packages can be installed next to amd64 only when the
# amd64 ones are absent (they are not Multi-Arch: same), which is the case in this image.
FROM debian:bookworm
ARG DEBIAN_FRONTEND=noninteractive
RUN dpkg --add-architecture arm64 \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates crossbuild-essential-arm64 pkg-config qemu-user \
      libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-dev:arm64 \
      libgstrtspserver-1.0-dev:arm64 \
      gstreamer1.0-plugins-base:arm64 gstreamer1.0-plugins-good:arm64 \
      gstreamer1.0-plugins-bad:arm64 gstreamer1.0-plugins-ugly:arm64 \
      gstreamer1.0-libav:arm64 gstreamer1.0-rtsp:arm64 \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
    PKG_CONFIG_ALLOW_CROSS=1 \
    PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig \
    GST_REGISTRY_FORK=no \
    SKIP_SERIAL_TESTS=1

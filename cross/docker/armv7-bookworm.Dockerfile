# cross-rs image for armv7-unknown-linux-gnueabihf on Debian bookworm (GStreamer 1.22).
# In bookworm the armhf GStreamer -dev packages can be installed next to amd64 only when the
# amd64 ones are absent (they are not Multi-Arch: same), which is the case in this image.
FROM debian:bookworm
ARG DEBIAN_FRONTEND=noninteractive
RUN dpkg --add-architecture armhf \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates crossbuild-essential-armhf pkg-config qemu-user \
      libgstreamer1.0-dev:armhf libgstreamer-plugins-base1.0-dev:armhf \
      libgstrtspserver-1.0-dev:armhf \
      gstreamer1.0-plugins-base:armhf gstreamer1.0-plugins-good:armhf \
      gstreamer1.0-plugins-bad:armhf gstreamer1.0-plugins-ugly:armhf \
      gstreamer1.0-libav:armhf gstreamer1.0-rtsp:armhf \
 && rm -rf /var/lib/apt/lists/*
ENV CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER=arm-linux-gnueabihf-gcc \
    CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER="qemu-arm -L /usr/arm-linux-gnueabihf" \
    PKG_CONFIG_ALLOW_CROSS=1 \
    PKG_CONFIG_PATH=/usr/lib/arm-linux-gnueabihf/pkgconfig \
    GST_REGISTRY_FORK=no \
    SKIP_SERIAL_TESTS=1

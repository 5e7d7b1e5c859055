# Two entry points (see README): `make demo` and `make test`. Both install what a fresh
# Debian 12 / Ubuntu 24.04 machine lacks first (`make deps`), using sudo when not root.

APT_PACKAGES := build-essential pkg-config \
	libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools \
	mosquitto mosquitto-clients socat openssl
# Only the tests need these: a real browser for the maintenance page, the reference
# OpenMetrics parser for /metrics, systemd-analyze for the units, and an independent Modbus RTU
# slave (pymodbus) for the serial tests; mkfs.ext4/e2fsck and mount/losetup/findmnt for the
# data disk that turns read-only.
TEST_PACKAGES := chromium fonts-dejavu-core python3 python3-prometheus-client systemd \
	python3-pymodbus python3-serial python3-serial-asyncio e2fsprogs mount util-linux \
	python3-venv python3-pip

CARGO ?= cargo

.PHONY: deps test-deps home-assistant python-workers install demo test deb ship-test

deps:
	@$(MAKE) --no-print-directory install PACKAGES="$(APT_PACKAGES)"

test-deps:
	@$(MAKE) --no-print-directory install PACKAGES="$(APT_PACKAGES) $(TEST_PACKAGES)"

install:
	@missing=""; \
	for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get -o DPkg::Lock::Timeout=600 update -q && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "error: cargo not found: install Rust 1.95 or newer (https://rustup.rs)"; exit 1; }

# A real Home Assistant core for the discovery test, in a venv under target/ (about 20 s and
# 360 MB from PyPI the first time; nothing once it is there).
home-assistant: test-deps
	tests/home-assistant/setup.sh target/home-assistant

# The Python worker client and the people detector example, in a venv under target/ (about
# 10 s and 70 MB from PyPI), with the pedestrian video their test plays (from opencv-doc).
python-workers: test-deps
	tests/python/setup.sh target/python-workers

demo: deps
	$(CARGO) run --locked -- demo

test: test-deps home-assistant python-workers
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked

# Packaging and ARM: slow (see cross/*.sh for how long), so not part of `make test`.
deb: deps
	cross/deb.sh amd64

ship-test: deps
	cross/deb-test.sh
	cross/build.sh aarch64
	cross/test.sh aarch64

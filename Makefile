# torpor: the build, test and bench entry points.
#
#   make deps         install every tool and package a fresh machine lacks
#   make test         the whole test suite: lint, host, ARMv6 under qemu-arm,
#                     AArch64 under qemu-aarch64, the board files, the
#                     packages, the emulated Pi Zero bench
#   make lint         rustfmt and clippy -D warnings, for the host, ARMv6 and AArch64
#   make test-host    cargo test --workspace
#   make test-arm     the library's unit tests for ARMv6 under qemu-arm
#   make test-arm64   the unit tests for AArch64 under qemu-aarch64
#   make check-board  the Buildroot external tree and Pi Zero board files
#   make pizero-test  the emulated Pi Zero bench, then the Pi Zero 2 W's
#   make arm          the stripped static ARMv6 binary: $(ARM_BIN)
#   make arm64        the stripped static AArch64 binary: $(ARM64_BIN)
#   make deb          Debian packages: armhf (Raspberry Pi OS) and the host's,
#                     in $(DEB_DIR)
#   make test-deb     install, use, remove and purge the host package; check
#                     the armhf one (lintian, --version under qemu-arm)
#   make demo         the emulated Pi Zero hibernate/resume demo
#   make bench        benchmarks: bench-image (codec), bench-engine (dump/restore)
#   make fuzz-image   libFuzzer on the image reader (nightly, cargo-fuzz);
#                     make fuzz is the same

ARM_TARGET   := arm-unknown-linux-musleabi
ARM_UNWIND   := $(CURDIR)/target/armv6-libunwind
ARM_BIN      := target/$(ARM_TARGET)/release/torpor
ARM_ENV      := RUSTC_BOOTSTRAP=1 \
	CARGO_TARGET_ARM_UNKNOWN_LINUX_MUSLEABI_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=no -L $(ARM_UNWIND)"
ARM_CARGO    := $(ARM_ENV) cargo
BUILD_STD    := -Z build-std=std,panic_abort --target $(ARM_TARGET)

# AArch64 (Pi Zero 2 W): the same recipe with Debian's gcc-aarch64-linux-gnu
# and musl-dev:arm64 (linker aarch64-linux-musl-gcc, see .cargo/config.toml).
ARM64_TARGET := aarch64-unknown-linux-musl
ARM64_UNWIND := $(CURDIR)/target/aarch64-libunwind
ARM64_BIN    := target/$(ARM64_TARGET)/release/torpor
ARM64_CARGO  := RUSTC_BOOTSTRAP=1 \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C target-feature=+crt-static -C link-self-contained=no -L $(ARM64_UNWIND)" \
	cargo
BUILD_STD64  := -Z build-std=std,panic_abort --target $(ARM64_TARGET)

.PHONY: deps test test-host test-arm test-arm64 arm arm64 demo bench lint

deps:
	bash scripts/install-deps.sh

# std's unwind crate links -lunwind; the cross gcc's libgcc_eh provides it.
$(ARM_UNWIND)/libunwind.a:
	mkdir -p $(ARM_UNWIND)
	ln -sf "$$(arm-linux-gnueabi-gcc -print-file-name=libgcc_eh.a)" $@

arm: $(ARM_UNWIND)/libunwind.a
	$(ARM_CARGO) build --release $(BUILD_STD) -p torpor --bin torpor
	@file $(ARM_BIN)

# Debian's aarch64 libgcc_eh calls glibc's _dl_find_object, which musl lacks:
# the archive is libgcc_eh plus scripts/dl-find-object.c, which provides it.
$(ARM64_UNWIND)/libunwind.a: scripts/dl-find-object.c
	mkdir -p $(ARM64_UNWIND)
	aarch64-linux-musl-gcc -O2 -Wall -Werror -c $< -o $(ARM64_UNWIND)/dl-find-object.o
	cp "$$(aarch64-linux-gnu-gcc -print-file-name=libgcc_eh.a)" $@.tmp
	aarch64-linux-gnu-ar rcs $@.tmp $(ARM64_UNWIND)/dl-find-object.o
	mv $@.tmp $@

arm64: $(ARM64_UNWIND)/libunwind.a
	$(ARM64_CARGO) build --release $(BUILD_STD64) -p torpor --bin torpor
	@file $(ARM64_BIN)

# Every Rust crate in the tree is formatted, the fuzz target and the Rust test
# app included (neither is a workspace member), and clippy has nothing to say
# about any target of the workspace, built for the host, for ARMv6 or for
# AArch64: code under cfg(target_arch = "arm") and the 32-bit libc types, or
# the AArch64 ptrace requests and parasite, are only seen there. Each cross
# check keeps its own target directory, as the cross tests do, so the std it
# builds never sits beside another build's std (see test-arm).
RUST_CRATES  := Cargo.toml fuzz/Cargo.toml tests/apps/rust/Cargo.toml

lint: $(ARM_UNWIND)/libunwind.a $(ARM64_UNWIND)/libunwind.a
	for m in $(RUST_CRATES); do cargo fmt --all --check --manifest-path $$m || exit 1; done
	cargo clippy --workspace --all-targets -- -D warnings
	$(ARM_CARGO) clippy $(BUILD_STD) --target-dir target/arm-lint \
		--workspace --all-targets -- -D warnings
	$(ARM64_CARGO) clippy $(BUILD_STD64) --target-dir target/arm64-lint \
		--workspace --all-targets -- -D warnings

test-host:
	cargo test --workspace

# libtest needs unwinding, the release profile aborts: the tests build std
# with panic=unwind, in their own target directory, because two builds of std
# side by side in one directory make rustc see two `alloc` crates (E0152).
test-arm: $(ARM_UNWIND)/libunwind.a
	$(ARM_CARGO) test --release --config 'profile.release.panic="unwind"' \
		--target-dir target/arm-test $(BUILD_STD) -p torpor --lib

# As test-arm, for AArch64 under qemu-aarch64, with the parasite blobs' own
# tests (the AArch64 blob is only assembled for this target).
test-arm64: $(ARM64_UNWIND)/libunwind.a
	$(ARM64_CARGO) test --release --config 'profile.release.panic="unwind"' \
		--target-dir target/arm64-test $(BUILD_STD64) -p torpor -p torpor-parasite --lib

# Cheap checks first: formatting and clippy fail in a minute.
test: deps lint test-host test-arm test-arm64 check-board test-deb pizero-test

# Debian packages built with dpkg-deb (scripts/deb.sh, packaging/debian):
# the static ARMv6 binary as armhf, for Raspberry Pi OS on every Pi Zero,
# and a release build for the host's architecture.
DEB_DIR       := target/deb
HOST_DEB_ARCH := $(shell dpkg --print-architecture)
VERSION       := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n1)

.PHONY: deb test-deb
deb: arm
	cargo build --release -p torpor --bin torpor
	bash scripts/deb.sh armhf $(ARM_BIN) $(DEB_DIR)
	bash scripts/deb.sh $(HOST_DEB_ARCH) target/release/torpor $(DEB_DIR)

# As root: dpkg -i on this machine, a checkpoint through the installed
# daemon, dpkg -r and -P.
test-deb: deb
	bash scripts/test-deb.sh $(DEB_DIR)/torpor_$(VERSION)_$(HOST_DEB_ARCH).deb \
		$(DEB_DIR)/torpor_$(VERSION)_armhf.deb

# Buildroot external tree and Pi Zero board files: shellcheck, the SD card
# layout through post-image.sh/genimage, Kconfig, torpor.mk, the init hook
# under BusyBox ash, the systemd unit, the kernel fragment.
.PHONY: check-board
check-board:
	bash scripts/check-board.sh


# The emulated Pi Zero bench: Debian's rpi kernel on qemu-system-arm -M raspi0,
# torpor and the test apps in an initramfs, the SD card from the board layout.
# Then the Pi Zero 2 W's: Debian's arm64 kernel on qemu-system-aarch64 -M
# raspi3b, the AArch64 torpor and apps, a representative set of the jobs.
# Both boards run even when the first fails. Downloads are cached in
# build/cache; see bench/pizero/README.md.
.PHONY: pizero-test
pizero-test: deps
	python3 -m unittest discover -s bench/pizero -p 'test_*.py'
	rc=0; \
	python3 bench/pizero/bench.py all || rc=1; \
	python3 bench/pizero/bench.py --board zero2w all || rc=1; \
	exit $$rc

# The emulated Pi Zero tells the story on this terminal: sleepy-counter
# counts, asks torpor daemon to hibernate it, the daemon stores it and drives
# the power line, the harness cuts the power, the board boots again, and
# `torpor boot` brings the counter back where it stopped.
demo: deps
	python3 bench/pizero/bench.py demo

# Image codec throughput (random and compressible pages) and encoder memory,
# as ratios to a memcpy of the same 64 MiB measured in the same run.
.PHONY: bench-image fuzz fuzz-image
bench-image:
	cargo bench -p torpor --bench codec

# Ten minutes of libFuzzer on the image reader (needs nightly and cargo-fuzz).
FUZZ_TIME ?= 600
fuzz: fuzz-image
fuzz-image:
	mkdir -p fuzz/corpus/image_reader
	cargo +nightly fuzz run image_reader fuzz/corpus/image_reader fuzz/seeds/image_reader -- \
		-max_total_time=$(FUZZ_TIME) -max_len=16384 -rss_limit_mb=1024

# Dump and restore of the counter app and of 16/64/256 MiB of random and of
# heap-like data (release build, as root): wall time, image bytes and
# torpor's peak RSS beside dd conv=fsync (dump's bound) and a read-and-copy
# into fresh memory (restore's bound), medians of BENCH_REPS runs.
BENCH_REPS ?= 3
.PHONY: bench-engine
bench-engine:
	cargo build --release -p torpor --bin torpor
	python3 bench/engine/bench.py --reps $(BENCH_REPS)

bench: bench-image bench-engine

#!/usr/bin/env bash
# Install everything torpor's build, tests and emulated Pi Zero bench need on a
# fresh Debian machine that has only the Rust toolchain, gcc and python3.
# Idempotent: a second run installs nothing and returns quickly.
set -euo pipefail

need_apt=()
have() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

packages=(
    gcc-arm-linux-gnueabi      # ARMv6 cross compiler (armel, soft-float ABI)
    musl-dev:armel             # musl libc for arm-unknown-linux-musleabi
    gcc-aarch64-linux-gnu      # AArch64 cross compiler (Pi Zero 2 W and other 64-bit Pis)
    musl-dev:arm64             # musl libc for aarch64-unknown-linux-musl
    qemu-user-static           # runs ARMv6 and AArch64 unit tests (cargo runner)
    qemu-system-arm            # the emulated Pi Zero (-M raspi0) and, as qemu-system-aarch64, the Zero 2 W (-M raspi3b)
    device-tree-compiler       # fdtput, to adjust the Pi Zero device tree
    cpio                       # initramfs
    fdisk                      # sfdisk, to check partition tables
    mtools dosfstools          # boot partition (vfat)
    e2fsprogs                  # rootfs partition (ext4)
    genimage                   # the board's SD card layout
    shellcheck                 # lint for board and init scripts
    busybox                    # the board's shell and start-stop-daemon (init hook checks)
    rsync                      # Buildroot's copy of a local package site (exclusion checks)
    python3-kconfiglib         # parses the Buildroot external tree's Config.in
    systemd                    # systemd-analyze verify for the board's unit
    linux-libc-dev             # kernel headers for the host test programs (linux/seccomp.h, linux/netlink.h)
    lintian                    # checks the Debian packages (make test-deb)
    file                       # tells the built binaries' architecture and linking
    python3                    # with its sqlite3 module: the SQLite WAL writer of engine_locks
    tmux                       # the terminal multiplexer of engine_pty (pty pairs in the tree)
    bash                       # the shell of engine_pty's tmux pane
    nftables                   # nft: the network lock of kept TCP connections (engine_tcp)
)

for a in armel arm64; do
    if ! dpkg --print-foreign-architectures | grep -qx "$a"; then
        dpkg --add-architecture "$a"
    fi
done

for p in "${packages[@]}"; do
    have "$p" || need_apt+=("$p")
done

if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # A foreign architecture may leave some index unreadable; the packages
    # torpor needs are still found, so a non-zero exit here is not fatal.
    apt-get update -q || echo "install-deps: apt-get update reported errors; continuing" >&2
    apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add rust-src
fi
echo "install-deps: all dependencies present"

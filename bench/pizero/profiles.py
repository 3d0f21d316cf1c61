"""The emulated boards the bench runs on, one profile each: what QEMU
emulates, which Debian packages it boots, how torpor and the apps are built
for it, and where its board files live.

    zero     Pi Zero / Zero W / 1: ARMv6, qemu-system-arm -M raspi0
    zero2w   Pi Zero 2 W: AArch64, qemu-system-aarch64 -M raspi3b (BCM2837,
             the Zero 2 W's SoC family)

Everything else in the bench (the guest's jobs, the harness's checks) is the
same on every board.
"""

import re


class Profile:
    """One emulated board. Plain data; the other modules read it."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    @property
    def gpset0(self):
        return self.gpio_base + 0x1C

    @property
    def gpclr0(self):
        return self.gpio_base + 0x28


ZERO = Profile(
    name="zero",
    title="Pi Zero (ARMv6, qemu-system-arm -M raspi0)",
    # QEMU
    qemu=["qemu-system-arm", "-M", "raspi0"],
    # Guest time follows executed instructions, not the host clock. Linux
    # arms the BCM2835 system timer at "now + 15 us"; if the host stalls QEMU
    # longer than that in between (a loaded machine, a trace write), the
    # compare value is already past and the guest waits forever. With icount
    # a host stall cannot move guest time.
    qemu_time=["-icount", "shift=auto"],
    # BCM2835 GPIO registers as the ARM sees them (bus 0x7e200000).
    gpio_base=0x20200000,
    cmdline="console=ttyAMA0 initcall_blacklist=bcm2835_power_driver_init rdinit=/init quiet",
    # Debian packages (assets.py)
    deb_arch="armel",
    kernel_meta="linux-image-rpi:armel",
    kernel_name=re.compile(r"^linux-image-6\.1\.0-(\d+)-rpi:armel$"),
    kernel_glob="linux-image-6.1.0-*-rpi",
    busybox="busybox-static:armel",
    dtb="bcm2835-rpi-zero.dtb",
    # Modules the board needs before its SD card shows (none: built in).
    card_modules=(),
    # Builds (build.py)
    make_torpor="arm",
    torpor_bin="target/arm-unknown-linux-musleabi/release/torpor",
    torpor_desc="static ARMv6",
    cc="arm-linux-musleabi-gcc",
    cflags=["-static", "-march=armv6", "-mfpu=vfp", "-mfloat-abi=softfp", "-Os",
            "-Wall", "-Wextra", "-Werror"],
    make_apps="arm",
    board_dir="board/raspberrypi0",
    boot_kernel="kernel.img",
    hostname="torpor-pizero",
    work="build/pizero",
    # The bench's `all`: every job (None). The 64 MiB memory app goes last
    # in the power cycles: every dump first verifies the store's newest
    # image, which is then the largest.
    all_jobs=None,
    # A 32-bit torpor and app beside the native ones (64-bit kernels only).
    compat32=False,
    power_cycle_apps="counter,threads,tree,breadth_cgroup,memory",
)

ZERO2W = Profile(
    name="zero2w",
    title="Pi Zero 2 W (AArch64, qemu-system-aarch64 -M raspi3b)",
    # raspi3b is the BCM2837 with 1 GiB (the Zero 2 W has 512 MiB, but
    # -M raspi3ap, its size, panics in bcm2835_power_probe on this DTB).
    # Its four Cortex-A53 cores are all emulated, as the Zero 2 W has four.
    qemu=["qemu-system-aarch64", "-M", "raspi3b", "-m", "1G"],
    # The same reasoning as the Pi Zero: the ARM generic timer counts guest
    # time, and with icount a stalled host cannot move it past a deadline.
    qemu_time=["-icount", "shift=auto"],
    # BCM2837 peripherals sit at 0x3f000000.
    gpio_base=0x3F200000,
    cmdline="console=ttyAMA0 rdinit=/init quiet",
    deb_arch="arm64",
    kernel_meta="linux-image-arm64:arm64",
    kernel_name=re.compile(r"^linux-image-6\.1\.0-(\d+)-arm64:arm64$"),
    kernel_glob="linux-image-6.1.0-*-arm64",
    busybox="busybox-static:arm64",
    # The Zero 2 W's own device tree boots on -M raspi3b.
    dtb="broadcom/bcm2837-rpi-zero-2-w.dtb",
    # The BCM2835 sdhost controller, a module in Debian's arm64 kernel: with
    # it loaded first the card is mmcblk0, as on the board.
    card_modules=("bcm2835",),
    make_torpor="arm64",
    torpor_bin="target/aarch64-unknown-linux-musl/release/torpor",
    torpor_desc="static AArch64",
    cc="aarch64-linux-musl-gcc",
    cflags=["-static", "-Os", "-Wall", "-Wextra", "-Werror"],
    make_apps="arm64",
    board_dir="board/raspberrypizero2w",
    boot_kernel="kernel8.img",
    hostname="torpor-pizero2w",
    work="build/pizero2w",
    # A representative set, so that both boards fit the CI's time: every
    # app checkpointed and restored, the power line, one power cycle (the
    # threaded app: registers and TLS of several threads), and hibernation
    # through the daemon, and a 32-bit torpor on the 64-bit kernel. The store's crash safety and the boot hook's
    # policies are architecture-independent code; they run on the Pi Zero.
    all_jobs=("test", "gpio-cut", "power-cycle", "hibernate", "compat"),
    # The arm64 kernel runs 32-bit tasks (COMPAT): Raspberry Pi OS 32-bit on
    # a Zero 2 W. The ARMv6 torpor and counter go into the initramfs too.
    compat32=True,
    power_cycle_apps="threads",
)

BOARDS = {p.name: p for p in (ZERO, ZERO2W)}

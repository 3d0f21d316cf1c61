"""One power-on of an emulated board (profiles.py): QEMU's raspi0 or raspi3b
machine, its serial console read line by line, and the power switch
(killing QEMU).

Every wait is bounded. A boot that stops talking is a failure, never a hang.
"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time

import profiles

# BCM2835 GPIO output registers as the Pi Zero's ARM sees them (bus 0x7e2000xx).
GPSET0 = profiles.ZERO.gpset0
GPCLR0 = profiles.ZERO.gpclr0

# `-trace memory_region_ops_write` prints one line per MMIO write, e.g.
#   memory_region_ops_write cpu 0 mr 0x... addr 0x2020001c value 0x20000 size 4 name 'bcm2835_gpio'
_MMIO_WRITE = re.compile(r"memory_region_ops_write .*?addr (0x[0-9a-f]+) value (0x[0-9a-f]+)")


class BoardError(Exception):
    """The board did not behave: QEMU failed, or the guest went silent."""


class PowerLine:
    """The GPIO line whose active level cuts the board's power."""

    def __init__(self, line, active_high=True, profile=profiles.ZERO):
        if not 0 <= line < 32:
            raise ValueError(f"power line {line} is not in GPIO bank 0 (0..31)")
        self.line = line
        self.active_high = active_high
        self.gpset0 = profile.gpset0
        self.gpclr0 = profile.gpclr0

    @property
    def register(self):
        return self.gpset0 if self.active_high else self.gpclr0

    def cuts_power(self, addr, value):
        return addr == self.register and value & (1 << self.line) != 0

    def describe(self):
        reg = "GPSET0" if self.active_high else "GPCLR0"
        return f"GPIO{self.line} active-{'high' if self.active_high else 'low'} ({reg} 0x{self.register:08x})"


class Kernel:
    """What QEMU boots: kernel, device tree, initramfs and base command line."""

    def __init__(self, kernel, dtb, initrd, cmdline):
        self.kernel = kernel
        self.dtb = dtb
        self.initrd = initrd
        self.cmdline = cmdline


class Boot:
    """A running QEMU. Use as a context manager: leaving it always kills QEMU."""

    def __init__(self, kernel, sd_image, append, log_path, power_line=None, profile=profiles.ZERO):
        self.log_path = log_path
        self.gpio_out = (profile.gpset0, profile.gpclr0)
        self.power_line = power_line
        self.power_cut = None  # (seconds since start, addr, value) once cut
        self.lines = []  # (seconds since start, serial line)
        self._buf = {"out": b"", "err": b""}
        self._eof = set()
        args = [
            *profile.qemu,
            "-kernel", kernel.kernel, "-dtb", kernel.dtb, "-initrd", kernel.initrd,
            "-append", f"{kernel.cmdline} {append}".strip(),
            "-drive", f"file={sd_image},if=sd,format=raw",
            "-serial", "stdio", "-display", "none", "-monitor", "none",
            "-no-reboot",
            # Guest time follows executed instructions (profiles.py says why).
            *profile.qemu_time,
        ]
        self._qmp_dir = None
        if power_line is not None:
            # The MMIO write trace is switched on over QMP once /init runs: the
            # power line is driven from user space only, and the kernel's boot
            # is spared tracing every timer and interrupt controller write.
            self._qmp_dir = tempfile.mkdtemp(prefix="torpor-qmp-")
            self._qmp_path = os.path.join(self._qmp_dir, "qmp.sock")
            args += ["-qmp", f"unix:{self._qmp_path},server=on,wait=off"]
        self.args = args
        self._log = open(log_path, "w", encoding="utf-8", errors="replace")
        self._log.write("# " + " ".join(args) + "\n")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        for f in (self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        self._log.close()
        if self._qmp_dir is not None:
            shutil.rmtree(self._qmp_dir, ignore_errors=True)

    def watch_power(self, timeout=10):
        """Starts watching the power line: turns QEMU's MMIO write trace on."""
        if self._qmp_dir is None:
            raise BoardError("this boot was started without a power line to watch")
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
            qmp.settimeout(timeout)
            qmp.connect(self._qmp_path)
            stream = qmp.makefile("rwb")

            def reply():
                # Skip asynchronous events; the greeting and answers are not events.
                while time.monotonic() < deadline:
                    line = stream.readline()
                    if not line:
                        raise BoardError("QMP closed the connection")
                    msg = json.loads(line)
                    if "event" not in msg:
                        return msg
                raise BoardError(f"QMP gave no answer within {timeout} s")

            def execute(command, **arguments):
                req = {"execute": command}
                if arguments:
                    req["arguments"] = arguments
                stream.write(json.dumps(req).encode() + b"\n")
                stream.flush()
                msg = reply()
                if "return" not in msg:
                    raise BoardError(f"QMP {command} failed: {msg}")

            reply()  # greeting
            execute("qmp_capabilities")
            execute("trace-event-set-state", name="memory_region_ops_write", enable=True)
        self._log.write(f"{self.elapsed():8.3f} [bench] watching {self.power_line.describe()}\n")

    def elapsed(self):
        return time.monotonic() - self.start

    @property
    def alive(self):
        return self.proc.poll() is None and self.power_cut is None

    def kill(self):
        """Cut the power: SIGKILL, so nothing in QEMU gets to flush or tidy up."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired as e:
            raise BoardError(f"QEMU pid {self.proc.pid} survived SIGKILL for 10 s") from e

    def _pump(self, timeout):
        """Read what QEMU has written within `timeout` s; returns new serial lines."""
        fds = {}
        if "out" not in self._eof:
            fds[self.proc.stdout.fileno()] = "out"
        if "err" not in self._eof:
            fds[self.proc.stderr.fileno()] = "err"
        if not fds:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _, _ = select.select(list(fds), [], [], max(timeout, 0))
        new = []
        for fd in ready:
            stream = fds[fd]
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._eof.add(stream)
                chunk = b"\n" if self._buf[stream] else b""
            self._buf[stream] += chunk
            *complete, self._buf[stream] = self._buf[stream].split(b"\n")
            for raw in complete:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                if stream == "out":
                    new.append(self._serial(line))
                else:
                    self._stderr(line)
                if self.power_cut is not None:
                    return new
        return new

    def _serial(self, line):
        t = self.elapsed()
        self.lines.append((t, line))
        self._log.write(f"{t:8.3f} {line}\n")
        return line

    def _stderr(self, line):
        m = _MMIO_WRITE.search(line)
        if m is None:
            if line:
                self._log.write(f"{self.elapsed():8.3f} [qemu] {line}\n")
            return
        addr, value = int(m.group(1), 16), int(m.group(2), 16)
        if addr not in self.gpio_out:
            return
        self._log.write(f"{self.elapsed():8.3f} [gpio] {line}\n")
        if self.power_line is not None and self.power_cut is None \
                and self.power_line.cuts_power(addr, value):
            # The power line went active: the relay opens now, mid-whatever.
            self.kill()
            self.power_cut = (self.elapsed(), addr, value)
            self._log.write(f"{self.power_cut[0]:8.3f} [bench] power cut by {self.power_line.describe()}\n")

    def wait_for(self, pattern, timeout, what):
        """Wait for a serial line matching `pattern`; returns the match.

        Raises BoardError naming `what` when QEMU exits, power is cut or the
        timeout passes first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        for _, line in self.lines:
            m = regex.search(line)
            if m:
                return m
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BoardError(f"timed out after {timeout:.0f} s waiting for {what}")
            for line in self._pump(min(left, 0.5)):
                m = regex.search(line)
                if m:
                    return m
            if self.power_cut is not None:
                raise BoardError(f"power was cut while waiting for {what}")
            if self.proc.poll() is not None and len(self._eof) == 2:
                raise BoardError(
                    f"QEMU exited with {self.proc.returncode} while waiting for {what}")

    def wait_power_cut(self, timeout):
        """Run until the power line cuts power; returns the cut or None on timeout."""
        deadline = time.monotonic() + timeout
        while self.power_cut is None and time.monotonic() < deadline:
            self._pump(min(deadline - time.monotonic(), 0.5))
            if self.power_cut is None and self.proc.poll() is not None and len(self._eof) == 2:
                break
        return self.power_cut

    def run_for(self, seconds):
        """Keep reading the console for `seconds`, then return."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            self._pump(min(deadline - time.monotonic(), 0.5))

    def matching(self, pattern):
        """Every serial line so far that matches `pattern`, as match objects."""
        regex = re.compile(pattern)
        return [m for m in (regex.search(line) for _, line in self.lines) if m]


def interactive(kernel, sd_image, append, profile=profiles.ZERO):
    """Boot with the console on this terminal (for a developer); returns QEMU's exit code."""
    args = [
        *profile.qemu,
        "-kernel", kernel.kernel, "-dtb", kernel.dtb, "-initrd", kernel.initrd,
        "-append", f"{kernel.cmdline} {append}".strip(),
        "-drive", f"file={sd_image},if=sd,format=raw", "-nographic", "-no-reboot",
        *profile.qemu_time,
    ]
    return subprocess.call(args)

#!/usr/bin/env python3
"""The emulated Pi Zero bench: torpor on QEMU's raspi0 machine, or with
`--board zero2w` on the Pi Zero 2 W's (AArch64, QEMU's raspi3b).

    python3 bench/pizero/bench.py [--board zero|zero2w] [all|test|gpio-cut|store-cut|shell] [options]

  test       boot, run every test app through the checkpoint protocol (the
             control protocol while torpor has no `dump`), print PASS/FAIL
  gpio-cut   the guest drives the power GPIO; the host sees the register
             write, kills QEMU at once (a power cut) and boots the same SD
             card again
  power-cycle  per app: checkpoint it into the store, cut power at the
             power-line write, boot again, restore it, let it verify itself
  store-cut  write a good image into the store, then cut power at random
             moments while newer images are written; after every cut the
             store must still hold the previous image intact
  compat     (zero2w) the ARMv6 torpor checkpoints an ARMv6 app on the
             64-bit kernel; each torpor refuses a task of the other width
  shell      boot to a shell on this terminal
  all        every job (the default; hibernate, corrupt-image,
             restore-attempts and unauthorized are in README.md); on zero2w
             the representative set: test, gpio-cut, power-cycle (one app),
             hibernate, compat

Exits 0 when nothing failed. Logs of every boot are in WORK/logs/.
"""

import argparse
import os
import random
import re
import sys
import time

import assets as assets_mod
import board
import build
import profiles

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(BENCH_DIR))
CMDLINE = profiles.ZERO.cmdline


def collect_results(lines, apps):
    """Per app (verdict, message) and its detail lines, from the guest's console.

    An app with no result line failed; a FAIL line wins over an earlier PASS
    of the same app (e.g. "printed PASS but exited with 1").
    """
    results, details = {}, {}
    for line in lines:
        m = re.search(r"TORPOR-RESULT (\S+) (PASS|FAIL) ?(.*)", line)
        if m:
            app, verdict = m.group(1), m.group(2)
            if app not in results or (results[app][0] == "PASS" and verdict == "FAIL"):
                results[app] = (verdict, m.group(3))
            continue
        m = re.search(r"TORPOR-DETAIL (\S+) (.*)", line)
        if m:
            details.setdefault(m.group(1), []).append(m.group(2))
    for app in apps:
        results.setdefault(app, ("FAIL", "no result line from the guest"))
    return results, details


def newest_valid(lines):
    """(generation, line) of the newest valid slot in a status listing, or None.

    `torpor store status` prints one line per slot, e.g.
    "slot A: valid generation 3 length 81920 crc 0x1c291ca3 attempts 0 verified yes".
    """
    best = None
    for line in lines:
        if not re.search(r"(?<![\w-])valid\b", line, re.I):
            continue
        m = re.search(r"\bgen(?:eration)?\b[\s:=]*(\d+)", line, re.I)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), line.strip())
    return best


def check_store(before, after, when):
    """None when `after` still holds the image `before` named, else the failure."""
    rc, lines = after
    if rc != 0:
        return f"{when}: torpor store status exited with {rc}: {' / '.join(lines)}"
    newest = newest_valid(lines)
    if newest is None:
        return f"{when}: no valid image in the store: {' / '.join(lines)}"
    if newest[0] < before[0]:
        return f"{when}: newest generation {newest[0]} is older than {before[0]}"
    if before[1] not in (line.strip() for line in lines):
        return f"{when}: the previous image changed: was '{before[1]}', now {' / '.join(lines)}"
    return None


class Outcome:
    """One line of the final summary."""

    def __init__(self, section, verdict, message):
        self.section = section
        self.verdict = verdict
        self.message = message


def print_times(b):
    """torpor's dump and restore times per app, as the guest measured them."""
    times = {}
    for m in b.matching(r"TORPOR-TIME (\S+) (dump|restore) (\d+)"):
        times.setdefault(m.group(1), {})[m.group(2)] = int(m.group(3)) / 1000
    for app, t in times.items():
        parts = [f"{k} {v:.2f} s" for k, v in t.items()]
        print(f"guest time (emulated, -icount) {app}: {', '.join(parts)}")


class Bench:
    def __init__(self, opts):
        self.opts = opts
        self.profile = profiles.BOARDS[getattr(opts, "board", None) or "zero"]
        self.work = os.path.abspath(opts.work or os.path.join(REPO, self.profile.work))
        self.logs = os.path.join(self.work, "logs")
        self.boots = 0
        self.outcomes = []
        self.power = board.PowerLine(opts.power_line, not opts.power_active_low, self.profile)
        decoy = opts.power_line + 1 if opts.power_line < 31 else opts.power_line - 1
        self.decoy_line = decoy

    # ---- preparing the boot media ---------------------------------------

    def prepare(self):
        os.makedirs(self.logs, exist_ok=True)
        for name in os.listdir(self.logs):
            os.remove(os.path.join(self.logs, name))
        build_log = os.path.join(self.logs, "build.log")
        t0 = time.monotonic()
        pf = self.profile
        print(f"board       {pf.title}")
        self.assets = assets_mod.fetch(os.path.abspath(self.opts.cache), profile=pf)
        print(f"kernel      {self.assets.release} ({os.path.relpath(self.assets.kernel, REPO)})")
        torpor_bin = build.torpor(REPO, build_log, pf)
        size = os.path.getsize(torpor_bin)
        print(f"torpor      {pf.torpor_bin}: {size} bytes ({size / 1024:.0f} KiB), {pf.torpor_desc}")
        apps = build.apps(REPO, BENCH_DIR, os.path.join(self.work, "apps"), build_log, pf)
        every_app = dict(apps)
        if self.opts.store_app not in every_app:
            raise build.BuildError(f"unknown store-cut app {self.opts.store_app}; known: {', '.join(every_app)}")
        if self.opts.apps:
            wanted = self.opts.apps.split(",")
            unknown = [a for a in wanted if a not in apps]
            if unknown:
                raise build.BuildError(f"unknown app(s) {', '.join(unknown)}; known: {', '.join(apps)}")
            apps = {a: apps[a] for a in wanted}
        self.apps = list(apps)
        print(f"apps        {' '.join(self.apps)}")
        tools = {name: build.cross_compile(
            [os.path.join(BENCH_DIR, "tools", f"{name}.c")],
            os.path.join(self.work, "tools", name), profile=pf) for name in ("gpio-poke", "subreaper")}
        tools["sleepy-counter"] = build.cross_compile(
            [os.path.join(REPO, "examples", "sleepy-counter.c")],
            os.path.join(self.work, "tools", "sleepy-counter"), profile=pf)

        self.sd, layout, dump = build.sd_card(REPO, self.assets, pf.cmdline, self.work, build_log, pf)
        store_part = layout.number("torpor")
        store_bytes = layout.size("torpor")
        print(f"sd card     {os.path.relpath(self.sd, REPO)}: {os.path.getsize(self.sd) >> 20} MiB, "
              f"torpor store = partition {store_part} ({store_bytes >> 20} MiB)")
        for line in dump.splitlines():
            if re.match(r"\S+\d+ :", line):
                print(f"            {line}")
        conf = {
            "BENCH_APPS": " ".join(self.apps),
            "BENCH_PROTOCOL": self.opts.protocol,
            "BENCH_STORE_APP": self.opts.store_app,
            "BENCH_STORE": f"/dev/mmcblk0p{store_part}",
            "BENCH_STORE_SECTORS": str(store_bytes // build.SECTOR),
            "BENCH_DATA": f"/dev/mmcblk0p{layout.number('rootfs')}",
            "BENCH_POWER_CHIP": "/dev/gpiochip0",
            "BENCH_POWER_LINE": str(self.power.line),
            "BENCH_POWER_ACTIVE": "1" if self.power.active_high else "0",
            "BENCH_DECOY_LINE": str(self.decoy_line),
            "BENCH_READY_TIMEOUT": "30",
            "BENCH_VERIFY_TIMEOUT": "60",
            "BENCH_TORPOR_TIMEOUT": str(self.opts.torpor_timeout),
            "BENCH_SLEEP_AT": str(self.opts.sleep_at),
            "BENCH_END_AT": str(self.opts.end_at),
        }
        extra = []
        if pf.compat32:
            # The ARMv6 torpor and counter, for the compat job.
            torpor32 = build.torpor(REPO, build_log, profiles.ZERO)
            counter32 = build.cross_compile(
                [os.path.join(REPO, "tests", "apps", "counter.c")],
                os.path.join(self.work, "apps32", "counter"),
                [os.path.join(REPO, "tests", "apps", "common.h")], profiles.ZERO)
            extra = [(torpor32, "usr/bin/torpor32"), (counter32, "bench/apps32/counter")]
            print(f"compat      {profiles.ZERO.torpor_bin} as /usr/bin/torpor32, ARMv6 counter")
        initrd = build.initramfs(self.assets, torpor_bin, every_app, tools, BENCH_DIR, conf, self.work, pf,
                                 extra)
        self.kernel = board.Kernel(self.assets.kernel, self.assets.dtb, initrd, pf.cmdline)
        print(f"initramfs   {os.path.relpath(initrd, REPO)}: {os.path.getsize(initrd) // 1024} KiB")
        print(f"prepared in {time.monotonic() - t0:.1f} s")

    # ---- one boot ---------------------------------------------------------

    def boot(self, mode, power_line=None, extra=""):
        """Powers the board on and waits for /init; returns the running Boot.

        A power-on that stalls before /init (an emulator fault, not torpor's)
        is tried once more, both logs kept, before it fails.
        """
        for attempt in (1, 2):
            self.boots += 1
            log = os.path.join(self.logs, f"{self.boots:02d}-{mode}.log")
            b = board.Boot(self.kernel, self.sd, f"bench.mode={mode} {extra}".strip(), log, power_line,
                           self.profile)
            try:
                m = b.wait_for(r"TORPOR-BENCH-INIT uptime=([\d.]+)", self.opts.boot_timeout,
                               f"/init on the serial console (boot {self.boots}, {mode})")
                break
            except board.BoardError as e:
                b.__exit__(None, None, None)
                if attempt == 2 or b.power_cut is not None:
                    raise
                print(f"boot {self.boots:2d} ({mode}): {e}; powering on again")
        if power_line is not None:
            b.watch_power()
        b.boot_seconds = b.elapsed()
        b.guest_uptime = float(m.group(1))
        print(f"boot {self.boots:2d} ({mode}): shell after {b.boot_seconds:.2f} s "
              f"(guest uptime {b.guest_uptime:.2f} s), log {os.path.relpath(log, REPO)}")
        return b

    def record(self, section, verdict, message):
        self.outcomes.append(Outcome(section, verdict, message))

    # ---- test: the app protocol --------------------------------------------

    def run_test(self):
        with self.boot("test") as b:
            budget = 60 + len(self.apps) * (3 * self.opts.torpor_timeout // 2 + 90)
            b.wait_for(r"TORPOR-BENCH-END mode=test rc=(\d+)", budget, "the end of the test run")
        info = {m.group(1): m.group(2) for m in b.matching(r"TORPOR-INFO (\S+) (.*)")}
        for m in b.matching(r"TORPOR-ERROR (.*)"):
            self.record("test", "FAIL", m.group(1))
        results, details = collect_results([line for _, line in b.lines], self.apps)
        protocol = info.get("protocol", "?")
        print(f"\ntorpor in the guest: {info.get('torpor-version', '?')}; protocol: {protocol}")
        width = max([len(a) for a in self.apps] + [3])
        print(f"{'app':<{width}}  result  message")
        for app in self.apps:
            verdict, message = results[app]
            print(f"{app:<{width}}  {verdict:<6}  {message}")
            if verdict != "PASS":
                for line in details.get(app, []):
                    print(f"{'':<{width}}  | {line}")
            self.record(f"test {app}", verdict, message)
        print(f"boot to shell: {b.boot_seconds:.2f} s wall clock, {b.guest_uptime:.2f} s guest uptime")
        print_times(b)
        print()

    # ---- gpio-cut: the power line ------------------------------------------

    def run_gpio_cut(self):
        section = "gpio-cut"
        with self.boot("gpio", self.power) as b:
            try:
                b.wait_for(r"TORPOR-GPIO-DECOY-DONE", 60, "the decoy line write")
                b.wait_for(r"TORPOR-GPIO-ARMED", 60, "the guest arming the power line")
            except board.BoardError as e:
                self.record(section, "FAIL", f"{e} (power line {self.power.describe()})")
                return
            armed = b.elapsed()
            cut = b.wait_power_cut(30)
            survived = b.matching(r"TORPOR-GPIO-SURVIVED")
            marker = b.matching(r"TORPOR-INFO marker (\S+)")
        if cut is None or survived:
            self.record(section, "FAIL", f"the guest drove {self.power.describe()} but power was not cut")
            return
        at, addr, value = cut
        print(f"power cut {at - armed:.3f} s after the guest armed the line: write 0x{value:x} "
              f"to 0x{addr:08x} ({self.power.describe()}); decoy GPIO{self.decoy_line} left power on")
        with self.boot("boot-check") as b:
            b.wait_for(r"TORPOR-BENCH-END mode=boot-check rc=0", 60, "the boot after the cut")
            after = b.matching(r"TORPOR-INFO marker (\S*)")
        if not marker or not after or after[0].group(1) != marker[0].group(1):
            self.record(section, "FAIL", "the marker written to the SD card before the cut is gone: "
                        f"wrote {marker[0].group(1) if marker else '?'}, "
                        f"read {after[0].group(1) if after else '?'}")
            return
        self.record(section, "PASS", f"cut at the {self.power.describe()} write; the board booted "
                    "again on the same SD card with the data written before the cut")

    # ---- power-cycle: dump, power cut, reboot, restore ----------------------

    def run_power_cycle(self):
        """Per app: checkpoint, cut power at the power-line write, boot, restore."""
        apps = [a for a in self.opts.power_cycle_apps.split(",") if a in self.apps]
        for app in apps:
            if self._cycle(app, f"power-cycle {app}") == "SKIP":
                return

    def _cycle(self, app, section, resume=""):
        """One power cycle of `app`: the suspend boot, the cut, the resume boot
        (with `resume` on its command line). Records the verdict under
        `section`; returns it with the resume boot's lines ("SKIP": none)."""
        with self.boot("suspend", self.power, f"bench.app={app}") as b:
            m = b.wait_for(r"TORPOR-(SUSPENDED|RESULT|SKIP|BENCH-END)", 60 + self.opts.torpor_timeout,
                           f"{app} to be checkpointed")
            if m.group(1) == "SKIP":
                reason = b.matching(r"TORPOR-SKIP \S+ (.*)")[0].group(1)
                self.record("power-cycle", "SKIP", reason)
                return "SKIP"
            if m.group(1) != "SUSPENDED":
                b.run_for(1)
                results, details = collect_results([line for _, line in b.lines], [app])
                self.record(section, "FAIL", " | ".join([results[app][1]] + details.get(app, [])))
                return "FAIL"
            cut = b.wait_power_cut(30)
        print_times(b)
        if cut is None:
            self.record(section, "FAIL", f"{app} was checkpointed but {self.power.describe()} "
                        "did not cut power")
            return "FAIL"
        with self.boot("resume", extra=f"bench.app={app} {resume}".strip()) as b:
            b.wait_for(r"TORPOR-BENCH-END mode=resume", 60 + 2 * self.opts.torpor_timeout,
                       f"{app} to resume")
            results, details = collect_results([line for _, line in b.lines], [app])
        print_times(b)
        verdict, message = results[app]
        if verdict != "PASS":
            message = " | ".join([message] + details.get(app, []))
        self.record(section, verdict, message)
        self.resumed = [line for _, line in b.lines]
        return verdict

    # ---- lazy-cycle: power-on to a running app, eager and lazy -----------

    def run_lazy_cycle(self):
        """The lazy-app's power cycle twice, its restore eager then lazy: the
        guest's uptime (emulated time from power-on) when the app runs, when
        torpor returns and when the app has checked all its memory."""
        app = self.opts.lazy_app
        times = {}
        for how, flag in (("eager", 0), ("lazy", 1)):
            if self._cycle(app, f"lazy-cycle {app} {how}", f"bench.lazy={flag}") != "PASS":
                return
            for line in self.resumed:
                m = re.search(rf"TORPOR-LAZY-TIME {re.escape(app)} {how} (\w+) (\d+)", line)
                if m:
                    times[(how, m.group(1))] = int(m.group(2)) / 1000
        print(f"lazy-cycle {app} (guest uptime from power-on, emulated time):")
        print(f"  {'':10} {'eager s':>9} {'lazy s':>9} {'lazy/eager':>11}")
        for what in ("running", "restored", "verified"):
            e, z = times.get(("eager", what)), times.get(("lazy", what))
            if e is None or z is None:
                self.record(f"lazy-cycle {app}", "FAIL", f"no {what} time from the guest")
                return
            print(f"  {what:10} {e:9.2f} {z:9.2f} {z / e:11.3f}")

    # ---- store-cut: power cuts while the store is written --------------------

    def _status(self, b, index, timeout):
        """The index-th `torpor store status` block the guest printed this boot: (rc, lines)."""
        deadline = time.monotonic() + timeout
        while True:
            blocks, current = [], None
            for _, line in b.lines:
                if "TORPOR-STATUS-BEGIN" in line:
                    current = []
                elif (m := re.search(r"TORPOR-STATUS-END rc=(\d+)", line)) and current is not None:
                    blocks.append((int(m.group(1)), current))
                    current = None
                elif (m := re.search(r"TORPOR-STATUS (.*)", line)) and current is not None:
                    current.append(m.group(1))
            if len(blocks) > index:
                return blocks[index]
            if time.monotonic() > deadline:
                raise board.BoardError(f"timed out after {timeout} s waiting for torpor store status")
            if not b.alive:
                raise board.BoardError("QEMU stopped before the guest printed torpor store status")
            b.run_for(0.2)

    def run_store_cut(self):
        section = "store-cut"
        with self.boot("store-seed") as b:
            b.wait_for(r"TORPOR-BENCH-END mode=store-seed rc=(\d+)", 60 + 2 * self.opts.torpor_timeout,
                       "the seeding dump")
            skip = b.matching(r"TORPOR-SKIP \S+ (.*)")
            if skip:
                self.record(section, "SKIP", skip[0].group(1))
                return
            opened = [t for t, line in b.lines if "TORPOR-CUT-WINDOW-OPEN" in line]
            closed = [(t, line) for t, line in b.lines if "TORPOR-CUT-WINDOW-CLOSED" in line]
            if not opened or not closed or not closed[0][1].endswith("rc=0"):
                self.record(section, "FAIL", "the seeding dump into the store failed; see "
                            + os.path.relpath(b.log_path, REPO))
                return
            window = closed[0][0] - opened[0]
            status = self._status(b, 0, 10)
        before = newest_valid(status[1])
        if status[0] != 0 or before is None:
            self.record(section, "FAIL", f"no valid image after a good dump: {' / '.join(status[1])}")
            return
        print(f"store seeded: {before[1]}; writing an image takes {window:.2f} s")

        rng = random.Random(self.opts.seed)
        when = "after seeding"
        for i in range(self.opts.cuts):
            delay = rng.uniform(0, window)
            with self.boot("store-cut") as b:
                status = self._status(b, 0, 60 + self.opts.torpor_timeout)
                failure = check_store(before, status, when)
                if failure is not None:
                    self.record(section, "FAIL", failure)
                    return
                before = newest_valid(status[1])
                b.wait_for(r"TORPOR-CUT-WINDOW-OPEN", 60, "the store write")
                b.run_for(delay)
                done = any("TORPOR-CUT-WINDOW-CLOSED" in line for _, line in b.lines)
                b.kill()
            when = f"after cut {i + 1} ({delay:.3f} s into a {window:.2f} s write, seed {self.opts.seed})"
            print(f"cut {i + 1}: {delay:.3f} s into the store write, "
                  f"{'after it had finished' if done else 'while it was in progress'}")
        with self.boot("store-check") as b:
            status = self._status(b, 0, 60 + self.opts.torpor_timeout)
        failure = check_store(before, status, when)
        if failure is not None:
            self.record(section, "FAIL", failure)
            return
        self.record(section, "PASS", f"{self.opts.cuts} power cuts inside store writes (seed "
                    f"{self.opts.seed}); the newest image before each cut survived")

    # ---- hibernate: the app asks, the daemon cuts, torpor boot resumes ---------

    def _tap(self, b):
        """With --show, print the console lines of the story as they come."""
        if not self.opts.show:
            return
        story = re.compile(r"^(counter \d+|connected to|checkpointed|hibernating|resumed|memory verified|"
                           r"PASS|FAIL|hibernate refused|daemon error|torpor\[\d+\]: |TORPOR-RESULT|TORPOR-STORY )")
        serial = b._serial

        def tap(line):
            out = serial(line)
            if story.search(line):
                print(f"  [{b.elapsed():6.2f} s] {line.removeprefix('TORPOR-STORY ')}", flush=True)
            return out
        b._serial = tap

    def _results(self, lines, tags):
        results, details = collect_results(lines, tags)
        for tag in tags:
            verdict, message = results[tag]
            if verdict != "PASS":
                message = " | ".join([message] + details.get(tag, []))
            self.record(tag, verdict, message)

    def run_hibernate(self):
        """Managed apps: two counters (one with a child) and one holding a
        netlink socket, whose refusal keeps the power on; then sleepy-counter
        asks to hibernate over the socket, the daemon stores every managed
        tree in one image and drives the power line; the host cuts; torpor
        boot restores them all."""
        section = "hibernate"
        if self.opts.show:
            print("\nboot 1: torpor daemon starts; managed apps counter-a, counter-b (with a child) and netlink "
                  "(a netlink socket) run; torpor hibernate --all is refused; then sleepy-counter counts and "
                  f"asks to hibernate at {self.opts.sleep_at}")
        with self.boot("hibernate", self.power) as b:
            self._tap(b)
            m = b.wait_for(r"TORPOR-(HIBERNATE-APP|RESULT \S+ FAIL|SKIP|ERROR)", 120 + self.opts.torpor_timeout,
                           "the refused hibernation and sleepy-counter to start")
            if m.group(1) == "SKIP":
                self.record(section, "SKIP", b.matching(r"TORPOR-SKIP \S+ (.*)")[0].group(1))
                return
            if m.group(1) != "HIBERNATE-APP":
                b.run_for(1)
                self._results([line for _, line in b.lines], ["hibernate-refused", section])
                return
            cut = b.wait_power_cut(60 + self.opts.torpor_timeout)
            stored = b.matching(r"hibernating pid \d+ for uid \d+: image generation (\d+) \((\d+) bytes\) stored")
            counted = b.matching(r"^counter (\d+)$")
        print_times(b)
        self._results([line for _, line in b.lines], ["hibernate-refused"])
        if cut is None:
            self._results([line for _, line in b.lines] + [f"TORPOR-RESULT {section} FAIL the power line "
                          f"({self.power.describe()}) was never driven"], [section])
            return
        last = counted[-1].group(1) if counted else "?"
        print(f"power cut at the {self.power.describe()} write, {cut[0]:.2f} s after power-on; "
              f"image {stored[0].group(1) + ' (' + stored[0].group(2) + ' bytes)' if stored else '?'}; "
              f"the counter stood at {last}")
        if self.opts.show:
            print("\nboot 2: torpor daemon, then torpor boot restores every managed app")
        with self.boot("wake") as b:
            self._tap(b)
            b.wait_for(r"TORPOR-BENCH-END mode=wake", 120 + 2 * self.opts.torpor_timeout, "sleepy-counter to resume")
            lines = [line for _, line in b.lines]
            print(f"wake boot: {b.elapsed():.2f} s from power-on to its end")
        self._results(lines, ["multi-app"])
        resumed = [l for l in lines if l.startswith("resumed on fd ")]
        first = next((l for l in lines if re.match(r"^counter \d+$", l)), None)
        problems = []
        if not resumed:
            problems.append("no Resumed received")
        if first != f"counter {int(self.opts.sleep_at) + 1}":
            problems.append(f"the restored counter went on with {first!r}, not counter {int(self.opts.sleep_at) + 1}")
        if f"memory verified: 1048576 bytes and counter {self.opts.sleep_at}" not in lines:
            problems.append("no memory verification")
        if "PASS sleepy-counter" not in lines:
            problems.append("no PASS")
        # The restore came from the board's init hook, which stops cleanly.
        if "TORPOR-INIT-HOOK start rc=0" not in lines:
            problems.append("S01torpor start did not succeed")
        # torpor boot's own log lines may interleave with the hook's message.
        if not any("Restoring hibernated application:" in l for l in lines) or \
                any("FAIL (torpor boot exited" in l for l in lines):
            problems.append("S01torpor did not report the restore as OK")
        if "TORPOR-INIT-HOOK stop rc=0 daemon=gone" not in lines:
            problems.append("S01torpor stop did not stop the daemon")
        # The daemon runs detached (stderr on /dev/null): its log is syslog's.
        syslog = [l[len("TORPOR-SYSLOG "):] for l in lines if l.startswith("TORPOR-SYSLOG ")]
        generation = re.search(r"image generation (\d+)", resumed[0]).group(1) if resumed else "?"
        for want in (r"torpor\[\d+\]: serving /run/torpor\.sock$",
                     rf"torpor\[\d+\]: pid \d+ \(uid 0\) restored from image generation {generation} after an unknown time",
                     r"torpor\[\d+\]: stopping$"):
            if not any(re.search(r"daemon\.info " + want, l) for l in syslog):
                problems.append(f"no syslog line matching {want!r} (syslog: {syslog[-4:]})")
        if problems:
            tail = [l for l in lines if not l.startswith("TORPOR-INFO")][-12:]
            self.record(section, "FAIL", "; ".join(problems) + " | " + " | ".join(tail))
            return
        self.record(section, "PASS", f"{resumed[0]}; counted on from {first.split()[1]} with memory verified")

    def run_corrupt_image(self):
        with self.boot("corrupt") as b:
            b.wait_for(r"TORPOR-BENCH-END mode=corrupt", 120 + 2 * self.opts.torpor_timeout, "the corrupt-image run")
            if b.matching(r"TORPOR-SKIP"):
                self.record("corrupt-image", "SKIP", b.matching(r"TORPOR-SKIP \S+ (.*)")[0].group(1))
                return
            self._results([line for _, line in b.lines], ["corrupt-image"])

    def run_restore_attempts(self):
        section = "restore-attempts"
        with self.boot("attempts-seed") as b:
            b.wait_for(r"TORPOR-BENCH-END mode=attempts-seed", 60 + self.opts.torpor_timeout, "the image to be seeded")
            if not b.matching(r"TORPOR-ATTEMPTS-SEEDED"):
                self._results([line for _, line in b.lines] + [f"TORPOR-RESULT {section} FAIL no image seeded"],
                              [section])
                return
        seen = []
        for attempt in (1, 2, 3):
            with self.boot("attempts-boot") as b:
                b.wait_for(r"TORPOR-BENCH-END mode=attempts-boot", 60 + 2 * self.opts.torpor_timeout,
                           f"boot {attempt} of the image that cannot be restored")
                lines = [line for _, line in b.lines]
            text = "\n".join(lines)
            if attempt == 1:
                ok = re.search(r"failed \(attempt 1 of 2\): validate: mapped file \S+ changed", text) \
                    and "giving up" not in text
            elif attempt == 2:
                ok = "failed (attempt 2 of 2)" in text and "giving up, marked consumed" in text
            else:
                ok = "was already restored" in text and "restoring image" not in text
            seen.append(next((l for l in lines if "cold start:" in l), "(no cold start line)"))
            if not ok:
                self.record(section, "FAIL", f"boot {attempt}: " + " | ".join(
                    l for l in lines if "torpor[" in l or l.startswith("TORPOR-RESULT")))
                return
            if attempt == 2:
                results, details = collect_results(lines, [section])
                if results[section][0] != "PASS":
                    self.record(section, "FAIL", " | ".join([results[section][1]] + details.get(section, [])))
                    return
        self.record(section, "PASS", "two failed boots, then consumed and cold-started; a third boot left it alone: "
                    + " / ".join(s.split("cold start: ", 1)[-1] for s in seen[1:]))

    def run_compat(self):
        """A 64-bit kernel with a 32-bit userland: the ARMv6 torpor checkpoints
        a 32-bit app; each torpor refuses a task of the other width."""
        tags = ["compat-32", "compat-32-on-64", "compat-64-on-32"]
        if not self.profile.compat32:
            self.record("compat", "SKIP", f"the {self.profile.name} board runs a 32-bit kernel")
            return
        with self.boot("compat") as b:
            b.wait_for(r"TORPOR-BENCH-END mode=compat", 120 + 4 * self.opts.torpor_timeout, "the compat run")
            skip = b.matching(r"TORPOR-SKIP \S+ (.*)")
            if skip:
                self.record("compat", "SKIP", skip[0].group(1))
                return
            self._results([line for _, line in b.lines], tags)
        print_times(b)

    def run_unauthorized(self):
        with self.boot("unauthorized") as b:
            b.wait_for(r"TORPOR-BENCH-END mode=unauthorized", 120, "the unauthorized request")
            if b.matching(r"TORPOR-SKIP"):
                self.record("unauthorized", "SKIP", b.matching(r"TORPOR-SKIP \S+ (.*)")[0].group(1))
                return
            self._results([line for _, line in b.lines], ["unauthorized"])

    # ---- summary -------------------------------------------------------------

    def summary(self):
        print("summary")
        for o in self.outcomes:
            print(f"  {o.verdict:<5} {o.section}: {o.message}")
        failed = [o for o in self.outcomes if o.verdict == "FAIL"]
        print(f"{len(self.outcomes) - len(failed)} of {len(self.outcomes)} passed or skipped, "
              f"{len(failed)} failed, {self.boots} boots")
        return 1 if failed else 0


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="all", choices=["all", "test", "gpio-cut", "power-cycle", "store-cut", "hibernate", "corrupt-image",
                            "restore-attempts", "unauthorized", "compat", "lazy-cycle", "demo", "shell"])
    p.add_argument("--board", choices=sorted(profiles.BOARDS), default="zero",
                   help="the emulated board: zero (ARMv6, raspi0) or zero2w (AArch64, raspi3b)")
    p.add_argument("--cache", default=os.path.join(REPO, "build", "cache"),
                   help="downloaded and unpacked Debian packages (kept between runs)")
    p.add_argument("--work", default=None,
                   help="initramfs, SD image and logs (rebuilt every run; default build/pizero, "
                   "build/pizero2w for zero2w)")
    p.add_argument("--apps", help="comma-separated subset of the test apps to run")
    p.add_argument("--protocol", choices=["auto", "control"], default="auto",
                   help="control: run apps without checkpointing even when torpor can dump")
    p.add_argument("--power-cycle-apps", default=None,
                   help="comma-separated apps for power-cycle (two boots each, in this order), "
                   "among those selected (default counter,threads,tree,breadth_cgroup,memory; threads on zero2w)")
    p.add_argument("--lazy-app", default="memory",
                   help="the app whose power-on to running lazy-cycle measures, eager and lazy")
    p.add_argument("--store-app", default="counter",
                   help="the app whose images store-cut writes (any app, selected or not)")
    p.add_argument("--power-line", type=int, default=17, help="GPIO (bank 0) that cuts power")
    p.add_argument("--power-active-low", action="store_true", help="the power line cuts when driven low")
    p.add_argument("--cuts", type=int, default=4, help="power cuts inside store writes (store-cut)")
    p.add_argument("--seed", type=int, default=None, help="random seed for the cut moments")
    p.add_argument("--boot-timeout", type=int, default=60, help="seconds from QEMU start to /init")
    # A hang guard, not a performance bound: writing and reading back the
    # 64 MiB memory app's image on the emulated SD card takes 40-150 s of
    # guest time, depending on the host's load.
    p.add_argument("--torpor-timeout", type=int, default=240, help="seconds allowed per torpor command")
    p.add_argument("--sleep-at", type=int, default=5, help="the counter value at which sleepy-counter hibernates")
    # Ten ticks a second: after the wake the restored counter runs 3.5 s,
    # time for every managed app's `torpor run` line to adopt it first.
    p.add_argument("--end-at", type=int, default=40, help="the counter value at which sleepy-counter ends")
    p.add_argument("--show", action="store_true", help="print the hibernation story from the console as it happens")
    opts = p.parse_args(argv)
    if opts.seed is None:
        opts.seed = random.SystemRandom().randrange(1 << 32)
    profile = profiles.BOARDS[opts.board]
    if opts.power_cycle_apps is None:
        opts.power_cycle_apps = profile.power_cycle_apps

    bench = Bench(opts)
    t0 = time.monotonic()
    try:
        bench.prepare()
        if opts.mode == "shell":
            return board.interactive(bench.kernel, bench.sd, "bench.mode=shell", bench.profile)
        if opts.mode == "demo":
            opts.show = True
        for mode, step in (("test", bench.run_test), ("gpio-cut", bench.run_gpio_cut),
                           ("power-cycle", bench.run_power_cycle), ("store-cut", bench.run_store_cut),
                           ("hibernate", bench.run_hibernate), ("corrupt-image", bench.run_corrupt_image),
                           ("restore-attempts", bench.run_restore_attempts),
                           ("unauthorized", bench.run_unauthorized), ("compat", bench.run_compat),
                           ("lazy-cycle", bench.run_lazy_cycle)):
            # lazy-cycle is a measurement, run on its own.
            if (opts.mode == "all" and mode != "lazy-cycle"
                    and (profile.all_jobs is None or mode in profile.all_jobs)) \
                    or opts.mode == mode \
                    or (opts.mode == "demo" and mode == "hibernate"):
                try:
                    step()
                except board.BoardError as e:
                    bench.record(mode, "FAIL", str(e))
    except (assets_mod.AssetError, build.BuildError, board.BoardError, OSError) as e:
        bench.record("prepare", "FAIL", str(e))
    print(f"bench time {time.monotonic() - t0:.1f} s")
    return bench.summary()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

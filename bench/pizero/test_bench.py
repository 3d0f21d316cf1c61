"""Unit tests of the bench's host side: layout, power line, console parsing.

    python3 -m unittest discover -s bench/pizero -p 'test_*.py'
"""

import argparse
import io
import os
import re
import tempfile
import unittest
from contextlib import redirect_stdout

import bench
import board
import build
import profiles

TRACE_SET17 = ("memory_region_ops_write cpu 0 mr 0x7f0e30f793d0 addr 0x2020001c "
               "value 0x20000 size 4 name 'bcm2835_gpio'")
SLOT_A3 = "slot A: valid generation 3 length 81920 crc 0x1c291ca3 attempts 0 verified yes"
SLOT_B2 = "slot B: valid generation 2 length 81920 crc 0x00c0ffee attempts 0 verified yes"
SLOT_B4 = "slot B: valid generation 4 length 90112 crc 0x0badf00d attempts 0 verified yes"


class LayoutTest(unittest.TestCase):
    def test_board_layout(self):
        with open(os.path.join(bench.REPO, "board", "raspberrypi0", "genimage.cfg.in")) as f:
            layout = build.Layout(f.read())
        self.assertEqual([p[0] for p in layout.partitions], ["boot", "rootfs", "torpor"])
        self.assertEqual(layout.number("torpor"), 3)
        self.assertEqual(layout.size("torpor"), 1040 << 20)
        self.assertEqual(layout.partitions[0][1], 0x0C)
        self.assertEqual(layout.partitions[2][1], 0xDA)

    def test_unknown_partition_is_an_error(self):
        layout = build.Layout("image sd.img {\n hdimage {\n }\n partition boot {\n size = 4M\n }\n}\n")
        with self.assertRaisesRegex(build.BuildError, "no partition named torpor"):
            layout.number("torpor")

    def test_partitions_outside_the_table_are_not_numbered(self):
        layout = build.Layout("image sd.img {\n hdimage {\n }\n"
                              " partition loader {\n in-partition-table = false\n }\n"
                              " partition torpor {\n partition-type = 0xDA\n size = 2G\n }\n}\n")
        self.assertEqual(layout.number("torpor"), 1)
        self.assertEqual(layout.size("torpor"), 2 << 30)


class KernelModulesTest(unittest.TestCase):
    def _module(self, root, rel, depends):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"\x7fELF...license=GPL\x00depends=" + depends + b"\x00name=x\x00")

    def test_dependencies_load_first(self):
        with tempfile.TemporaryDirectory() as root:
            self._module(root, "fs/ext4/ext4.ko", b"jbd2,mbcache,crc16")
            self._module(root, "fs/jbd2/jbd2.ko", b"")
            self._module(root, "fs/mbcache.ko", b"")
            self._module(root, "lib/crc16.ko", b"")
            self._module(root, "crypto/crc32c_generic.ko", b"")
            order = [os.path.basename(p) for p in build.kernel_modules(root, ["ext4", "crc32c_generic"])]
        self.assertEqual(order, ["jbd2.ko", "mbcache.ko", "crc16.ko", "ext4.ko", "crc32c_generic.ko"])

    def test_missing_module_and_loop_are_errors(self):
        with tempfile.TemporaryDirectory() as root:
            self._module(root, "a.ko", b"b")
            with self.assertRaisesRegex(build.BuildError, "kernel module b is not in"):
                build.kernel_modules(root, ["a"])
            self._module(root, "b.ko", b"a")
            with self.assertRaisesRegex(build.BuildError, "dependency loop: a -> b -> a"):
                build.kernel_modules(root, ["a"])


class PowerLineTest(unittest.TestCase):
    def test_active_high_cuts_on_gpset0_bit(self):
        line = board.PowerLine(17)
        self.assertTrue(line.cuts_power(board.GPSET0, 1 << 17))
        self.assertTrue(line.cuts_power(board.GPSET0, (1 << 17) | 1))
        self.assertFalse(line.cuts_power(board.GPSET0, 1 << 18))
        self.assertFalse(line.cuts_power(board.GPCLR0, 1 << 17))

    def test_active_low_cuts_on_gpclr0_bit(self):
        line = board.PowerLine(4, active_high=False)
        self.assertTrue(line.cuts_power(board.GPCLR0, 1 << 4))
        self.assertFalse(line.cuts_power(board.GPSET0, 1 << 4))

    def test_line_outside_bank0_is_refused(self):
        with self.assertRaises(ValueError):
            board.PowerLine(32)

    def test_trace_line_is_parsed(self):
        m = board._MMIO_WRITE.search(TRACE_SET17)
        self.assertEqual((int(m.group(1), 16), int(m.group(2), 16)), (0x2020001C, 0x20000))
        self.assertTrue(board.PowerLine(17).cuts_power(int(m.group(1), 16), int(m.group(2), 16)))


class ResultsTest(unittest.TestCase):
    def test_results_and_details(self):
        lines = ["[    3.1] noise", "TORPOR-RESULT counter PASS checkpoint",
                 "TORPOR-RESULT memory FAIL FAIL memory: byte 4096 is 0x00, expected 0x5a",
                 "TORPOR-DETAIL memory torpor: error: restore failed"]
        results, details = bench.collect_results(lines, ["counter", "memory", "threads"])
        self.assertEqual(results["counter"], ("PASS", "checkpoint"))
        self.assertEqual(results["memory"], ("FAIL", "FAIL memory: byte 4096 is 0x00, expected 0x5a"))
        self.assertEqual(results["threads"], ("FAIL", "no result line from the guest"))
        self.assertEqual(details, {"memory": ["torpor: error: restore failed"]})

    def test_later_fail_wins_over_pass(self):
        lines = ["TORPOR-RESULT counter PASS control",
                 "TORPOR-RESULT counter FAIL printed PASS but exited with 1"]
        results, _ = bench.collect_results(lines, ["counter"])
        self.assertEqual(results["counter"], ("FAIL", "printed PASS but exited with 1"))


class StoreCheckTest(unittest.TestCase):
    def test_newest_valid(self):
        self.assertEqual(bench.newest_valid([SLOT_A3, SLOT_B2]), (3, SLOT_A3))
        self.assertIsNone(bench.newest_valid(["slot A: blank verified no", "slot B: blank verified no"]))
        self.assertIsNone(bench.newest_valid(["slot A: invalid generation 9"]))

    def test_previous_image_intact(self):
        before = (3, SLOT_A3)
        self.assertIsNone(bench.check_store(before, (0, [SLOT_A3, "slot B: blank verified no"]), "cut 1"))
        # The write finished before the cut: a newer image, the old one untouched.
        self.assertIsNone(bench.check_store(before, (0, [SLOT_A3, SLOT_B4]), "cut 1"))

    def test_damaged_previous_image_fails(self):
        before = (3, SLOT_A3)
        damaged = "slot A: damaged verified no (header crc mismatch)"
        self.assertIn("older than 3", bench.check_store(before, (0, [damaged, SLOT_B2]), "cut 1"))
        changed = SLOT_A3.replace("verified yes", "verified no")
        self.assertIn("previous image changed", bench.check_store(before, (0, [changed]), "cut 1"))
        self.assertIn("exited with 1", bench.check_store(before, (1, []), "cut 1"))
        self.assertIn("no valid image", bench.check_store(before, (0, [damaged]), "cut 1"))



class FakeBoot:
    """A boot whose console says what a test scripted."""

    def __init__(self, mode, lines):
        self.mode = mode
        self.lines = list(enumerate(lines))
        self.killed = False
        self.power_cut = None
        self.log_path = os.path.join(bench.REPO, "build", "fake.log")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.killed = True

    @property
    def alive(self):
        return not self.killed

    def matching(self, pattern):
        regex = re.compile(pattern)
        return [m for m in (regex.search(line) for _, line in self.lines) if m]

    def wait_for(self, pattern, timeout, what):
        found = self.matching(pattern)
        if not found:
            raise board.BoardError(f"timed out waiting for {what}")
        return found[0]

    def run_for(self, seconds):
        pass

    def wait_power_cut(self, timeout):
        if any("TORPOR-SUSPENDED" in line for _, line in self.lines):
            return (1.0, board.GPSET0, 1 << 17)
        return None

    def kill(self):
        self.killed = True


def status(*slots, rc=0):
    return ["TORPOR-STATUS-BEGIN", *(f"TORPOR-STATUS {s}" for s in slots), f"TORPOR-STATUS-END rc={rc}"]


def scripted_bench(script, cuts=2, apps=()):
    """A Bench whose boots replay `script`; returns it and the list of boots made."""
    opts = argparse.Namespace(work="/nonexistent", power_line=17, power_active_low=False,
                              cuts=cuts, seed=7, torpor_timeout=10,
                              power_cycle_apps="counter,threads,tree,memory")
    b = bench.Bench(opts)
    b.apps = list(apps)
    boots = iter(script)
    made = []

    def fake_boot(mode, power_line=None, extra=""):
        made.append((mode, extra, power_line is not None))
        return FakeBoot(mode, next(boots))

    b.boot = fake_boot
    return b, made


class PowerCycleTest(unittest.TestCase):
    def test_each_app_is_suspended_cut_and_resumed(self):
        script = [["TORPOR-SUSPENDED counter pid=140"],
                  ["TORPOR-RESULT counter PASS power-cycle", "TORPOR-BENCH-END mode=resume rc=0"],
                  ["TORPOR-SUSPENDED memory pid=150"],
                  ["TORPOR-RESULT memory FAIL FAIL memory: byte 8 is 0x00, expected 0x5a",
                   "TORPOR-DETAIL memory READY memory", "TORPOR-BENCH-END mode=resume rc=0"]]
        b, made = scripted_bench(script, apps=["counter", "memory"])
        with redirect_stdout(io.StringIO()):
            b.run_power_cycle()
        self.assertEqual(made, [("suspend", "bench.app=counter", True), ("resume", "bench.app=counter", False),
                                ("suspend", "bench.app=memory", True), ("resume", "bench.app=memory", False)])
        self.assertEqual([(o.section, o.verdict, o.message) for o in b.outcomes], [
            ("power-cycle counter", "PASS", "power-cycle"),
            ("power-cycle memory", "FAIL", "FAIL memory: byte 8 is 0x00, expected 0x5a | READY memory")])

    def test_only_the_power_cycle_apps_are_cycled(self):
        script = [["TORPOR-SUSPENDED counter pid=140"],
                  ["TORPOR-TIME counter restore 1250", "TORPOR-RESULT counter PASS power-cycle",
                   "TORPOR-BENCH-END mode=resume rc=0"]]
        b, made = scripted_bench(script, apps=["fpu", "counter"])
        out = io.StringIO()
        with redirect_stdout(out):
            b.run_power_cycle()
        self.assertEqual([m[:2] for m in made], [("suspend", "bench.app=counter"), ("resume", "bench.app=counter")])
        self.assertIn("counter: restore 1.25 s", out.getvalue())

    def test_failed_dump_is_reported_without_a_resume_boot(self):
        script = [["TORPOR-RESULT counter FAIL torpor dump --pid 140 exited with 1",
                   "TORPOR-DETAIL counter torpor: error: cannot seize 140", "TORPOR-BENCH-END mode=suspend rc=0"]]
        b, made = scripted_bench(script, apps=["counter"])
        with redirect_stdout(io.StringIO()):
            b.run_power_cycle()
        self.assertEqual([m[0] for m in made], ["suspend"])
        self.assertEqual(b.outcomes[0].message,
                         "torpor dump --pid 140 exited with 1 | torpor: error: cannot seize 140")


class StoreCutTest(unittest.TestCase):
    def run_store_cut(self, script, cuts):
        b, made = scripted_bench(script, cuts=cuts)
        with redirect_stdout(io.StringIO()):
            b.run_store_cut()
        return b.outcomes, [m[0] for m in made]

    SEED = ["TORPOR-CUT-WINDOW-OPEN", "TORPOR-CUT-WINDOW-CLOSED rc=0",
            *status(SLOT_A3, "slot B: blank verified no"), "TORPOR-BENCH-END mode=store-seed rc=0"]

    def test_images_surviving_every_cut_pass(self):
        script = [self.SEED,
                  [*status(SLOT_A3, "slot B: blank verified no"), "TORPOR-CUT-WINDOW-OPEN"],
                  [*status(SLOT_A3, SLOT_B4), "TORPOR-CUT-WINDOW-OPEN"],
                  [*status(SLOT_A3, SLOT_B4), "TORPOR-BENCH-END mode=store-check rc=0"]]
        outcomes, modes = self.run_store_cut(script, cuts=2)
        self.assertEqual(modes, ["store-seed", "store-cut", "store-cut", "store-check"])
        self.assertEqual([o.verdict for o in outcomes], ["PASS"], outcomes[0].message)

    def test_newest_image_torn_by_a_cut_fails(self):
        torn = "slot B: damaged verified no (image crc mismatch)"
        script = [self.SEED,
                  [*status(SLOT_A3, "slot B: blank verified no"), "TORPOR-CUT-WINDOW-OPEN"],
                  [*status(SLOT_A3, SLOT_B4), "TORPOR-CUT-WINDOW-OPEN"],
                  [*status(SLOT_A3, torn), "TORPOR-BENCH-END mode=store-check rc=0"]]
        outcomes, _ = self.run_store_cut(script, cuts=2)
        self.assertEqual([o.verdict for o in outcomes], ["FAIL"])
        self.assertIn("after cut 2", outcomes[0].message)
        self.assertIn("older than 4", outcomes[0].message)

    def test_torpor_without_dump_is_skipped(self):
        script = [["TORPOR-SKIP store-seed torpor 0.1.0 has no 'dump' or 'store status' command",
                   "TORPOR-BENCH-END mode=store-seed rc=0"]]
        outcomes, modes = self.run_store_cut(script, cuts=3)
        self.assertEqual(modes, ["store-seed"])
        self.assertEqual([(o.verdict, o.message) for o in outcomes],
                         [("SKIP", "torpor 0.1.0 has no 'dump' or 'store status' command")])

    def test_failed_seeding_dump_fails(self):
        script = [["TORPOR-CUT-WINDOW-OPEN", "TORPOR-CUT-WINDOW-CLOSED rc=1",
                   "TORPOR-BENCH-END mode=store-seed rc=1"]]
        outcomes, _ = self.run_store_cut(script, cuts=3)
        self.assertEqual([o.verdict for o in outcomes], ["FAIL"])
        self.assertIn("seeding dump into the store failed", outcomes[0].message)


class BoardProfileTest(unittest.TestCase):
    def test_zero2w_power_line_is_the_bcm2837_register(self):
        line = board.PowerLine(17, profile=profiles.ZERO2W)
        self.assertEqual(line.register, 0x3F20001C)
        self.assertTrue(line.cuts_power(0x3F20001C, 1 << 17))
        self.assertFalse(line.cuts_power(board.GPSET0, 1 << 17))
        self.assertEqual(line.describe(), "GPIO17 active-high (GPSET0 0x3f20001c)")
        low = board.PowerLine(4, active_high=False, profile=profiles.ZERO2W)
        self.assertTrue(low.cuts_power(0x3F200028, 1 << 4))

    def test_zero_keeps_the_bcm2835_registers(self):
        self.assertEqual((profiles.ZERO.gpset0, profiles.ZERO.gpclr0), (0x2020001C, 0x20200028))
        self.assertEqual((board.GPSET0, board.GPCLR0), (0x2020001C, 0x20200028))

    def test_zero2w_layout_has_the_store_and_a_larger_boot(self):
        with open(os.path.join(bench.REPO, "board", "raspberrypizero2w", "genimage.cfg.in")) as f:
            layout = build.Layout(f.read())
        self.assertEqual([p[0] for p in layout.partitions], ["boot", "rootfs", "torpor"])
        self.assertEqual(layout.number("torpor"), 3)
        self.assertEqual(layout.size("torpor"), 1040 << 20)
        self.assertEqual(layout.partitions[layout.number("torpor") - 1][1], 0xDA)

    def test_kernel_package_names(self):
        self.assertTrue(profiles.ZERO2W.kernel_name.match("linux-image-6.1.0-57-arm64:arm64"))
        self.assertFalse(profiles.ZERO2W.kernel_name.match("linux-image-6.1.0-57-rpi:armel"))
        self.assertTrue(profiles.ZERO.kernel_name.match("linux-image-6.1.0-57-rpi:armel"))

    def test_board_option_picks_work_dir_and_power_registers(self):
        opts = argparse.Namespace(work=None, board="zero2w", power_line=17, power_active_low=False)
        b = bench.Bench(opts)
        self.assertEqual(b.work, os.path.join(bench.REPO, "build", "pizero2w"))
        self.assertEqual(b.power.register, 0x3F20001C)
        opts = argparse.Namespace(work=None, power_line=17, power_active_low=False)
        self.assertEqual(bench.Bench(opts).work, os.path.join(bench.REPO, "build", "pizero"))

    def test_zero2w_runs_a_representative_set(self):
        self.assertEqual(profiles.ZERO2W.all_jobs, ("test", "gpio-cut", "power-cycle", "hibernate", "compat"))
        self.assertIsNone(profiles.ZERO.all_jobs, "every job runs on the Pi Zero")


if __name__ == "__main__":
    unittest.main()

#!/usr/bin/env python3
"""torpor killed with SIGKILL at random instants of dumps and restores.

    sudo python3 bench/kill/kill.py [--torpor PATH] [--dumps 300] [--restores 100] [--seed N]

The target is a small C program (beat.c, built here) that appends a
heartbeat line to a file every millisecond and checks a 64 KiB heap pattern
on every beat. For each dump, torpor runs `dump --leave-running` on it and
is killed after a random delay within a measured dump's duration; then the
target must still beat, unstopped and uncorrupted. For each restore, a dump
of the target is restored and torpor is killed after a random delay within
a measured restore's duration; then the target's pid must either be gone
or beat as a complete process: a task left stopped, traced or silent is a
half-restored process.

A benchmark-like check, not a timed test: it prints counts and exits 1 when
any target died, got stuck or was left half-restored.
"""

import argparse
import ctypes
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PR_SET_CHILD_SUBREAPER = 36

BEAT_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    enum { N = 64 * 1024 };
    unsigned char *pat = malloc(N);
    if (!pat)
        return 2;
    for (int i = 0; i < N; i++)
        pat[i] = (unsigned char)(i * 7 + 3);
    FILE *log = fopen("beat.log", "a");
    if (!log)
        return 2;
    setvbuf(log, NULL, _IOLBF, 0);
    struct timespec ms = {0, 1000000};
    for (unsigned long n = 0;; n++) {
        for (int i = 0; i < N; i += 512) {
            if (pat[i] != (unsigned char)(i * 7 + 3)) {
                fprintf(log, "CORRUPT %lu\n", n);
                return 3;
            }
        }
        fprintf(log, "beat %lu\n", n);
        nanosleep(&ms, NULL);
    }
}
"""


def prctl_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")


def state(pid):
    """The task's state letter, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def reap_all():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def beats(work):
    try:
        with open(os.path.join(work, "beat.log")) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def beating(work, within=1.0):
    """True when beat.log grows within `within` seconds."""
    before = len(beats(work))
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if len(beats(work)) > before:
            return True
    return False


def start_target(work, beat):
    open(os.path.join(work, "beat.log"), "w").close()
    p = subprocess.Popen(
        [beat],
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if not beating(work, 5.0):
        raise RuntimeError("the target does not beat")
    return p


def stop_target(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(200):
        reap_all()
        if state(pid) is None:
            return
        time.sleep(0.01)


def timed(cmd, cwd):
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.decode().strip()}")
    return time.monotonic() - t


def fresh(img):
    """No image and no `.part` a killed dump left (torpor never overwrites
    one it did not create in the same run)."""
    for path in (img, img + ".part"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def killed_run(cmd, cwd, delay):
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return p.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torpor", default=os.path.join(REPO, "target", "release", "torpor"))
    ap.add_argument("--dumps", type=int, default=300)
    ap.add_argument("--restores", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("kill.py: run as root (ptrace, clone3 with set_tid)")
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    prctl_subreaper()
    work = tempfile.mkdtemp(prefix="torpor-kill-")
    try:
        src = os.path.join(work, "beat.c")
        with open(src, "w") as f:
            f.write(BEAT_C)
        beat = os.path.join(work, "beat")
        subprocess.run(["gcc", "-O1", "-o", beat, src], check=True)
        img = os.path.join(work, "img")
        t = a.torpor

        # How long an undisturbed dump and restore take here.
        p = start_target(work, beat)
        dump_s = max(timed([t, "dump", "--pid", str(p.pid), "--image", img, "--leave-running"], work) for _ in range(3))
        stop_target(p.pid)
        p = start_target(work, beat)
        timed([t, "dump", "--pid", str(p.pid), "--image", img], work)
        reap_all()
        restore_s = timed([t, "restore", "--image", img], work)
        if not beating(work):
            raise RuntimeError("an undisturbed restore does not beat")
        stop_target(p.pid)
        print(f"seed {seed}; an undisturbed dump takes {dump_s * 1000:.1f} ms, a restore {restore_s * 1000:.1f} ms")

        dead = stuck = corrupt = 0
        deaths = {}
        for _ in range(a.dumps):
            p = start_target(work, beat)
            fresh(img)
            killed_run([t, "dump", "--pid", str(p.pid), "--image", img, "--leave-running"], work,
                       rng.uniform(0, dump_s * 1.2))
            time.sleep(0.05)
            rc = p.poll()
            reap_all()
            s = state(p.pid)
            if s is None or rc is not None:
                dead += 1
                how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"status {rc}"
                deaths[how] = deaths.get(how, 0) + 1
            elif s in "tT" or not beating(work):
                stuck += 1
            if "CORRUPT" in beats(work):
                corrupt += 1
            stop_target(p.pid)
        print(f"dumps:    {a.dumps} killed at random instants: {dead} targets dead, {stuck} stuck, {corrupt} corrupted")
        for how, n in sorted(deaths.items()):
            print(f"          {n} died of {how}")

        gone = whole = half = 0
        for _ in range(a.restores):
            p = start_target(work, beat)
            fresh(img)
            timed([t, "dump", "--pid", str(p.pid), "--image", img], work)
            stop_target(p.pid)
            killed_run([t, "restore", "--image", img], work, rng.uniform(0, restore_s * 1.2))
            time.sleep(0.2)
            reap_all()
            s = state(p.pid)
            if s is None:
                gone += 1
            elif s not in "tTZ" and beating(work):
                whole += 1
            else:
                half += 1
            stop_target(p.pid)
        print(f"restores: {a.restores} killed at random instants: {gone} left nothing, {whole} complete, {half} half-restored")
        return 1 if dead or stuck or corrupt or half else 0
    finally:
        reap_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

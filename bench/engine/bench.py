#!/usr/bin/env python3
"""Dump and restore benchmark: wall time, image bytes and torpor's peak RSS,
each beside its bound measured in the same run.

    sudo python3 bench/engine/bench.py [--torpor PATH] [--reps N] [--sizes 16,64,256]

Rows: the counter test app, and a process holding 16, 64 and 256 MiB of
random data (incompressible) and of heap-like data (compressible). Bounds:
dump against `dd conv=fsync` of the same bytes into the image's directory;
restore against fillmem (bench/engine/fillmem.c), which reads the image and
copies it into as much fresh anonymous memory as the process held; both find
the image in the page cache (the dump writes it around the cache, so it is
read once, untimed, before them). Every figure is the median of --reps
warm runs. A benchmark, not a test: it prints, it asserts nothing.

For the data cases also restore-to-responsive, eager and lazy
(`restore --lazy`) in the same run: the time from starting `torpor
restore` until the restored process, let go by torpor, answers SIGUSR1
(its handler appends a byte to a file), and the lazy restore's time until
torpor exits with every page in and its peak RSS.
"""

import argparse
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.join(REPO, "bench", "engine")
PR_SET_CHILD_SUBREAPER = 36
MIB = 1 << 20


class BenchError(Exception):
    pass


def build(work):
    """The benchmark's C programs and the counter app, for this host."""
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir, exist_ok=True)
    srcs = {
        "hold": os.path.join(HERE, "hold.c"),
        "fillmem": os.path.join(HERE, "fillmem.c"),
        "measure": os.path.join(HERE, "measure.c"),
        "counter": os.path.join(REPO, "tests", "apps", "counter.c"),
    }
    for name, src in srcs.items():
        out = os.path.join(bindir, name)
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", out, src], check=True)
    return bindir


def measured(bindir, cmd):
    """Runs cmd under measure: (seconds, peak KiB). The dirty pages of
    whatever ran before are written back first, so no measurement pays for
    another's writeback."""
    os.sync()
    r = subprocess.run([os.path.join(bindir, "measure")] + cmd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = [l for l in r.stderr.splitlines() if l.startswith("measure: ")]
    if r.returncode != 0 or not line:
        raise BenchError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    secs, kib, _ = line[-1].split()[1:]
    return float(secs), int(kib)


def warm(path):
    """Reads path through, into the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def wait_for(pred, what, timeout=60.0, every=0.01):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise BenchError(f"timed out waiting for {what}")
        time.sleep(every)


def gone(pid):
    """Reaps pid if it is our child; true once it no longer exists."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def start(case, bindir, cwd, data_file):
    """Starts the case's process in cwd; returns its pid once it is ready."""
    log = open(os.path.join(cwd, "app.log"), "wb")
    if case["kind"] == "counter":
        cmd = [os.path.join(bindir, "counter"), "50"]
        ready = lambda: b"READY counter" in open(os.path.join(cwd, "app.log"), "rb").read()
    else:
        marker = os.path.join(cwd, "ready")
        if os.path.exists(marker):
            os.unlink(marker)
        cmd = [os.path.join(bindir, "hold"), str(case["mib"]), case["kind"], marker]
        if data_file:
            cmd.append(data_file)
        ready = lambda: os.path.exists(marker)
    p = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    log.close()
    wait_for(lambda: ready() or p.poll() is not None, f"{cmd[0]} to be ready")
    if p.poll() is not None:
        raise BenchError(f"{' '.join(cmd)} exited with {p.returncode}")
    return p


def let_go(pid, exe):
    """pid runs exe and no tracer holds it: torpor has let it go."""
    try:
        if os.readlink(f"/proc/{pid}/exe") != exe:
            return False
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return line.split()[1] == "0"
    except OSError:
        return False
    return False


def responsive(bindir, torpor, image, pid, cwd, exe, lazy):
    """(seconds until the restored pid answered SIGUSR1, seconds until
    torpor exited, torpor's peak KiB) of one `torpor restore`, lazy or
    not."""
    answer = os.path.join(cwd, "answer")
    before = os.path.getsize(answer)
    cmd = [os.path.join(bindir, "measure"), torpor, "restore", "--image", image, "-q"]
    cmd += ["--lazy"] if lazy else []
    os.sync()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Looked for as often as the answer: a coarser poll would add up to
    # its period to a restore-to-responsive time of some milliseconds.
    wait_for(lambda: let_go(pid, exe) or p.poll() is not None, f"pid {pid} to be let go",
             every=0.0002)
    if not let_go(pid, exe):
        raise BenchError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.read().strip()}")
    os.kill(pid, signal.SIGUSR1)
    end = time.monotonic() + 60
    while os.path.getsize(answer) == before:
        if time.monotonic() > end:
            raise BenchError(f"pid {pid} did not answer SIGUSR1")
        time.sleep(0.0002)
    answered = time.monotonic() - t0
    err = p.communicate()[1]
    done = time.monotonic() - t0
    line = [l for l in err.splitlines() if l.startswith("measure: ")]
    if p.returncode != 0 or not line:
        raise BenchError(f"{' '.join(cmd)} failed ({p.returncode}): {err.strip()}")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gone(pid), f"restored pid {pid} to go")
    return answered, done, int(line[-1].split()[2])


def run_case(case, torpor, bindir, work, reps):
    name = case["name"]
    cwd = os.path.join(work, name)
    shutil.rmtree(cwd, ignore_errors=True)
    os.makedirs(cwd)
    image = os.path.join(cwd, "app.img")
    data = os.path.join(cwd, "data.bin") if case["kind"] != "counter" else None
    src = data if data else image
    dd_out = os.path.join(cwd, "dd.out")
    # Each run measures torpor and its bounds back to back, so a load that
    # comes and goes on a shared machine weighs on both sides of a ratio.
    dumps, restores, dds, fills = [], [], [], []
    eager_resp, lazy_resp = [], []
    img_bytes = 0
    for rep in range(reps):
        for f in (image, dd_out):
            if os.path.exists(f):
                os.unlink(f)
        p = start(case, bindir, cwd, data if rep == 0 else None)
        try:
            dumps.append(measured(bindir, [torpor, "dump", "--pid", str(p.pid), "--image", image]))
        finally:
            if p.poll() is None and not os.path.exists(image):
                p.kill()
            p.wait()
        img_bytes = os.path.getsize(image)
        # dd's source: the bytes the process holds (the image itself for the
        # counter, whose memory is mostly its binary's).
        dds.append(measured(bindir, ["dd", f"if={src}", f"of={dd_out}", "bs=1M", "conv=fsync",
                                     "status=none"]))
        # The dump writes around the page cache: the image is read once,
        # untimed, so that the restore and fillmem both find it cached.
        warm(image)
        restores.append(measured(bindir, [torpor, "restore", "--image", image]))
        os.kill(p.pid, signal.SIGKILL)
        wait_for(lambda: gone(p.pid), f"restored pid {p.pid} to go")
        fills.append(measured(bindir, [os.path.join(bindir, "fillmem"), image,
                                       str(case["mib"] * MIB if data else img_bytes)]))
        if data:
            hold = os.path.join(bindir, "hold")
            eager_resp.append(responsive(bindir, torpor, image, p.pid, cwd, hold, False))
            lazy_resp.append(responsive(bindir, torpor, image, p.pid, cwd, hold, True))
    med = lambda xs: statistics.median(x[0] for x in xs)
    ratio = lambda xs, ys: statistics.median(x[0] / y[0] for x, y in zip(xs, ys))
    row = {
        "name": name,
        "data": case["mib"] * MIB if data else None,
        "image": img_bytes,
        "dump": med(dumps), "dump_rss": max(x[1] for x in dumps),
        "dd": med(dds), "dump_ratio": ratio(dumps, dds),
        "restore": med(restores), "restore_rss": max(x[1] for x in restores),
        "fill": med(fills), "restore_ratio": ratio(restores, fills),
        "eager_resp": med(eager_resp) if eager_resp else None,
        "lazy_resp": med(lazy_resp) if lazy_resp else None,
        "resp_ratio": ratio(lazy_resp, eager_resp) if lazy_resp else None,
        "lazy_done": statistics.median(x[1] for x in lazy_resp) if lazy_resp else None,
        "lazy_rss": max(x[2] for x in lazy_resp) if lazy_resp else None,
    }
    for f in (dd_out, data):
        if f and os.path.exists(f):
            os.unlink(f)
    if os.path.exists(image):
        os.unlink(image)
    return row


def table(rows):
    head = ["case", "image MiB", "img/data", "dump s", "dd s", "dump/dd", "dump RSS MiB",
            "restore s", "fillmem s", "rest/fill", "restore RSS MiB",
            "resp eager ms", "resp lazy ms", "lazy/eager", "lazy done s", "lazy RSS MiB"]
    lines = []
    for r in rows:
        lines.append([
            r["name"],
            f"{r['image'] / MIB:.2f}",
            f"{r['image'] / r['data']:.3f}" if r["data"] else "-",
            f"{r['dump']:.3f}", f"{r['dd']:.3f}", f"{r['dump_ratio']:.2f}",
            f"{r['dump_rss'] / 1024:.2f}",
            f"{r['restore']:.3f}", f"{r['fill']:.3f}", f"{r['restore_ratio']:.2f}",
            f"{r['restore_rss'] / 1024:.2f}",
            f"{r['eager_resp'] * 1000:.1f}" if r["eager_resp"] is not None else "-",
            f"{r['lazy_resp'] * 1000:.1f}" if r["lazy_resp"] is not None else "-",
            f"{r['resp_ratio']:.3f}" if r["resp_ratio"] is not None else "-",
            f"{r['lazy_done']:.3f}" if r["lazy_done"] is not None else "-",
            f"{r['lazy_rss'] / 1024:.2f}" if r["lazy_rss"] is not None else "-",
        ])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torpor", default=os.path.join(REPO, "target", "release", "torpor"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sizes", default="16,64,256", help="MiB of data, comma-separated")
    ap.add_argument("--work", default=os.path.join(REPO, "target", "bench-engine"),
                    help="work directory; images and dd output go here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench.py: dump and restore need root (ptrace, chosen pids)", file=sys.stderr)
        return 2
    if not os.access(args.torpor, os.X_OK):
        print(f"bench.py: no torpor binary at {args.torpor} (cargo build --release)",
              file=sys.stderr)
        return 2
    # Restored processes outlive torpor: they come to us, to be reaped.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"bench.py: prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
        return 1
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    bindir = build(work)
    cases = [{"name": "counter", "kind": "counter", "mib": 0}]
    for kind in ("random", "heap"):
        for mib in (int(s) for s in args.sizes.split(",")):
            cases.append({"name": f"{kind} {mib} MiB".replace(" ", "-"), "kind": kind, "mib": mib})
    rows = []
    try:
        for c in cases:
            print(f"bench: {c['name']} ...", file=sys.stderr, flush=True)
            rows.append(run_case(c, args.torpor, bindir, work, args.reps))
    except BenchError as e:
        print(f"bench.py: {e}", file=sys.stderr)
        return 1
    print(f"torpor dump/restore, medians of {args.reps} warm runs (ratios: the median of each "
          f"run's ratio); RSS is torpor's peak (VmHWM), the largest of the runs")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the emulated board boots, rebuilt on every run: the static torpor of
its architecture (profiles.py), the test apps, the initramfs and the SD card
image.

The SD card comes from the board's own layout, e.g. board/raspberrypi0/genimage.cfg.in,
with #BOOT_FILES# filled in exactly as Buildroot's post-image step does, so
the bench tests the partition table a real board gets.
"""

import gzip
import os
import re
import shutil
import stat
import subprocess

import profiles

ARM_CFLAGS = profiles.ZERO.cflags
ARM_CC = profiles.ZERO.cc
TORPOR_ARM = profiles.ZERO.torpor_bin
SECTOR = 512


class BuildError(Exception):
    """A part of the bench's boot media could not be built."""


def run(args, cwd=None, log=None, timeout=600):
    """Runs a build step; on failure the error carries the tail of its output."""
    proc = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if log is not None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(args)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise BuildError(f"{' '.join(args)} failed with {proc.returncode}:\n{tail}")
    return proc.stdout


def _newer(target, sources):
    if not os.path.exists(target):
        return False
    t = os.path.getmtime(target)
    return all(os.path.getmtime(s) <= t for s in sources)


def torpor(repo, log, profile=profiles.ZERO):
    """`make arm` (or the board's target) at the repository root; returns the static binary."""
    target = profile.make_torpor
    run(["make", "--no-print-directory", target], cwd=repo, log=log, timeout=1800)
    path = os.path.join(repo, profile.torpor_bin)
    if not os.path.exists(path):
        raise BuildError(f"make {target} succeeded but left no {path}")
    return path


def cross_compile(sources, out, headers=(), profile=profiles.ZERO):
    """One static program for the board, rebuilt only when a source is newer."""
    if not _newer(out, list(sources) + list(headers)):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        run([profile.cc, *profile.cflags, "-o", out, *sources])
    return out


def _executables(directory):
    found = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if os.stat(path).st_mode & stat.S_IXUSR:
            found[name] = path
    return found


def apps(repo, bench_dir, out_dir, log, profile=profiles.ZERO):
    """Every test app, name -> static binary for the board.

    The project's apps come from `make -C tests/apps arm OUT=DIR` (`arm64`
    on the Pi Zero 2 W; every
    executable left in DIR is an app); the bench's own small apps in
    bench/pizero/apps/*.c are always added.
    """
    found = {}
    project = os.path.join(repo, "tests", "apps")
    if os.path.exists(os.path.join(project, "Makefile")):
        project_out = os.path.join(out_dir, "project")
        os.makedirs(project_out, exist_ok=True)
        run(["make", "--no-print-directory", "-C", project, profile.make_apps, f"OUT={project_out}"],
            log=log, timeout=1200)
        found.update(_executables(project_out))
    own_src = os.path.join(bench_dir, "apps")
    headers = [os.path.join(own_src, h) for h in os.listdir(own_src) if h.endswith(".h")]
    for source in sorted(os.listdir(own_src)):
        if not source.endswith(".c"):
            continue
        name = source[:-2]
        if name in found:
            raise BuildError(f"test app {name} exists both in tests/apps and in bench/pizero/apps")
        found[name] = cross_compile([os.path.join(own_src, source)],
                                    os.path.join(out_dir, "bench", name), headers, profile)
    return found


class Layout:
    """The SD layout read from genimage.cfg.in: partitions in table order."""

    def __init__(self, cfg_text):
        disk = re.search(r"image\s+\S+\s*\{\s*hdimage\s*\{.*", cfg_text, re.S)
        if disk is None:
            raise BuildError("genimage.cfg.in has no hdimage")
        self.partitions = []  # (name, partition-type, size bytes or None)
        for m in re.finditer(r"partition\s+(\w+)\s*\{(.*?)\}", disk.group(0), re.S):
            body = m.group(2)
            if re.search(r'in-partition-table\s*=\s*"?(false|no)', body):
                continue
            ptype = re.search(r"partition-type\s*=\s*(0x[0-9a-fA-F]+)", body)
            size = re.search(r"\bsize\s*=\s*(\d+)([KMG]?)", body)
            nbytes = None
            if size:
                nbytes = int(size.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[size.group(2)]
            self.partitions.append((m.group(1), int(ptype.group(1), 16) if ptype else None, nbytes))
        if len(self.partitions) > 4:
            raise BuildError("the bench expects a primary-only MBR layout (at most 4 partitions)")

    def number(self, name):
        for i, (pname, _, _) in enumerate(self.partitions):
            if pname == name:
                return i + 1
        raise BuildError(f"genimage.cfg.in has no partition named {name}")

    def size(self, name):
        return self.partitions[self.number(name) - 1][2]


def _mbr_partitions(image):
    """sfdisk -d of the image: [(number, start, size, type, bootable)]."""
    dump = run(["sfdisk", "-d", image])
    parts = []
    for line in dump.splitlines():
        m = re.match(r"\S+?(\d+)\s*:\s*start=\s*(\d+),\s*size=\s*(\d+),\s*type=([0-9a-fA-F]+)(.*)", line)
        if m:
            parts.append((int(m.group(1)), int(m.group(2)), int(m.group(3)),
                          int(m.group(4), 16), "bootable" in m.group(5)))
    return dump, parts


def sd_card(repo, assets, cmdline, work, log, profile=profiles.ZERO):
    """Builds the SD image from the board layout; returns (path, layout, sfdisk dump)."""
    cfg_in = os.path.join(repo, profile.board_dir, "genimage.cfg.in")
    with open(cfg_in, encoding="utf-8") as f:
        cfg_text = f.read()
    layout = Layout(cfg_text)

    gen = os.path.join(work, "genimage")
    shutil.rmtree(gen, ignore_errors=True)
    inputs, root, tmp, out = (os.path.join(gen, d) for d in ("input", "root", "tmp", "images"))
    for d in (inputs, root, out):
        os.makedirs(d)

    # The boot partition: what the firmware would load on a real board.
    dtb = os.path.basename(assets.dtb)
    boot_files = [profile.boot_kernel, dtb, "cmdline.txt"]
    shutil.copy(assets.kernel, os.path.join(inputs, profile.boot_kernel))
    shutil.copy(assets.dtb, os.path.join(inputs, dtb))
    with open(os.path.join(inputs, "cmdline.txt"), "w", encoding="utf-8") as f:
        f.write(cmdline + "\n")

    # A small root file system; the bench itself runs from the initramfs.
    tree = os.path.join(gen, "rootfs-tree")
    os.makedirs(os.path.join(tree, "etc"))
    with open(os.path.join(tree, "etc", "hostname"), "w", encoding="utf-8") as f:
        f.write(f"{profile.hostname}\n")
    with open(os.path.join(tree, "etc", "issue"), "w", encoding="utf-8") as f:
        f.write(f"torpor emulated {profile.title}\n")
    run(["mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", tree,
         os.path.join(inputs, "rootfs.ext4"), "8M"], log=log)

    entries = ",\n\t\t\t".join(f'"{name}"' for name in boot_files)
    # Comment lines may name the placeholder too; only the files list is filled.
    lines = [line.replace("#BOOT_FILES#", entries)
             if line.strip() == "#BOOT_FILES#" or not line.lstrip().startswith("#") else line
             for line in cfg_text.splitlines(keepends=True)]
    cfg = os.path.join(gen, "genimage.cfg")
    with open(cfg, "w", encoding="utf-8") as f:
        f.write("".join(lines))
    run(["genimage", "--config", cfg, "--rootpath", root, "--tmppath", tmp,
         "--inputpath", inputs, "--outputpath", out], log=log)

    image = os.path.join(work, "sd.img")
    os.replace(os.path.join(out, "sdcard.img"), image)
    # genimage writes no bytes for a partition without contents (the raw
    # store), so the file ends early: grow it to cover every partition, like
    # the SD card it stands for, and to a power of two, the only sizes QEMU's
    # SD card model accepts. The grown part is sparse and reads as zeros.
    dump, parts = _mbr_partitions(image)
    end = max([os.path.getsize(image)] + [(start + n) * SECTOR for _, start, n, _, _ in parts])
    power = 1 << max(end - 1, 1).bit_length()
    os.truncate(image, power)

    if len(parts) != len(layout.partitions):
        raise BuildError(f"{image} has {len(parts)} partitions, the layout {len(layout.partitions)}:\n{dump}")
    for (num, start, sectors, ptype, _), (name, want_type, want_size) in zip(parts, layout.partitions):
        if want_type is not None and ptype != want_type:
            raise BuildError(f"partition {num} ({name}) has type 0x{ptype:x}, the layout says 0x{want_type:x}")
        if want_size is not None and sectors * SECTOR != want_size:
            raise BuildError(f"partition {num} ({name}) has {sectors} sectors, the layout says {want_size} bytes")
        if (start + sectors) * SECTOR > power:
            raise BuildError(f"partition {num} ({name}) ends beyond the {power}-byte image")
    return image, layout, dump


# The rootfs partition is ext4, a module in Debian's rpi kernel; crc32c is
# requested by name at mount time (metadata checksums), so it is loaded too;
# unix_diag lets the daemon find the peer of an application's connection;
# af_packet_diag lets a dump read a packet socket's options and refusals.
DATA_MODULES = ("ext4", "crc32c_generic", "unix_diag", "af_packet_diag")


def kernel_modules(module_root, wanted):
    """Paths of `wanted` modules and their dependencies, in load order.

    The dependencies come from each module's .modinfo `depends=` field, so
    neither depmod nor modules.dep is needed.
    """
    paths = {}
    for dirpath, _, filenames in os.walk(module_root):
        for name in filenames:
            if name.endswith(".ko"):
                paths[name[:-3].replace("-", "_")] = os.path.join(dirpath, name)
    order = []

    def visit(name, chain):
        name = name.replace("-", "_")
        if name in order:
            return
        if name in chain:
            raise BuildError(f"kernel module dependency loop: {' -> '.join(chain + [name])}")
        if name not in paths:
            raise BuildError(f"kernel module {name} is not in {module_root}")
        with open(paths[name], "rb") as f:
            deps = re.findall(rb"depends=([^\x00]*)\x00", f.read())
        for dep in (deps[0].decode().split(",") if deps else []):
            if dep:
                visit(dep, chain + [name])
        order.append(name)

    for name in wanted:
        visit(name, [])
    return [paths[name] for name in order]


def initramfs(assets, torpor_bin, app_bins, tools, bench_dir, conf, work, profile=profiles.ZERO,
              extra=()):
    """The gzip'd newc cpio the kernel unpacks as /; returns its path.

    `extra` is more executables, (path on the host, path in the initramfs).
    """
    stage = os.path.join(work, "initramfs")
    shutil.rmtree(stage, ignore_errors=True)
    for d in ("bin", "usr/bin", "bench/apps", "bench/tools", "dev", "proc", "sys", "run", "tmp",
              "etc/init.d", "var/run"):
        os.makedirs(os.path.join(stage, d))
    # The init hook as the torpor package installs it on every board.
    board_dir = os.path.join(bench_dir, "..", "..", "board", "raspberrypi0")
    shutil.copy(os.path.join(board_dir, "S01torpor"), os.path.join(stage, "etc", "init.d", "S01torpor"))
    shutil.copy(assets.busybox, os.path.join(stage, "bin", "busybox"))
    shutil.copy(os.path.join(bench_dir, "guest", "init"), os.path.join(stage, "init"))
    shutil.copy(os.path.join(bench_dir, "guest", "run.sh"), os.path.join(stage, "bench", "run.sh"))
    shutil.copy(torpor_bin, os.path.join(stage, "usr", "bin", "torpor"))
    for name, path in app_bins.items():
        shutil.copy(path, os.path.join(stage, "bench", "apps", name))
    for name, path in tools.items():
        shutil.copy(path, os.path.join(stage, "bench", "tools", name))
    for src, dest in extra:
        os.makedirs(os.path.dirname(os.path.join(stage, dest)), exist_ok=True)
        shutil.copy(src, os.path.join(stage, dest))
        os.chmod(os.path.join(stage, dest), 0o755)
    # The card's driver first (its modules load before the store is looked
    # for), then what the rootfs and torpor need.
    card = kernel_modules(assets.modules, profile.card_modules)
    modules = [p for p in kernel_modules(assets.modules, DATA_MODULES) if p not in card]
    os.makedirs(os.path.join(stage, "lib", "modules"))
    for path in card + modules:
        shutil.copy(path, os.path.join(stage, "lib", "modules", os.path.basename(path)))
    conf = dict(conf, BENCH_MODULES=" ".join(os.path.basename(p) for p in modules),
                BENCH_CARD_MODULES=" ".join(os.path.basename(p) for p in card))
    with open(os.path.join(stage, "bench", "bench.conf"), "w", encoding="utf-8") as f:
        for key, value in conf.items():
            f.write(f"{key}='{value}'\n")
    for path in ("init", "bin/busybox", "bench/run.sh", "usr/bin/torpor", "etc/init.d/S01torpor"):
        os.chmod(os.path.join(stage, path), 0o755)

    names = []
    for dirpath, dirnames, filenames in os.walk(stage):
        rel = os.path.relpath(dirpath, stage)
        for n in sorted(dirnames) + sorted(filenames):
            names.append(os.path.normpath(os.path.join(rel, n)))
    listing = "\n".join(sorted(names)) + "\n"
    proc = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=stage,
                          input=listing.encode(), capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise BuildError(f"cpio failed: {proc.stderr.decode(errors='replace')}")
    path = os.path.join(work, "initramfs.cpio.gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(proc.stdout, compresslevel=6, mtime=0))
    return path

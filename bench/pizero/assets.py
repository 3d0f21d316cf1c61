"""The Debian packages an emulated board runs (profiles.py): for the Pi Zero
the armel Raspberry Pi 1 / Zero kernel (`linux-image-6.1.0-N-rpi`), for the
Pi Zero 2 W the arm64 kernel (`linux-image-6.1.0-N-arm64`), and a static
BusyBox of the same architecture.

Both are fetched once with `apt-get download` into the cache directory and
unpacked there with `dpkg -x`; later runs reuse them. When apt cannot answer
(no network, no lists) the newest pair already in the cache is used.
"""

import glob
import os
import re
import subprocess

import profiles

KERNEL_META = profiles.ZERO.kernel_meta
KERNEL_NAME = profiles.ZERO.kernel_name
BUSYBOX = profiles.ZERO.busybox


class AssetError(Exception):
    """A package could not be found, fetched or unpacked."""


def _run(args, cwd=None):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssetError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    return proc.stdout


def _candidate(package):
    """apt's candidate version of `package`, or None when apt does not know it."""
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True,
                         text=True, timeout=120).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    return None if m is None or m.group(1) == "(none)" else m.group(1)


def _ensure_lists(profile):
    if _candidate(profile.busybox) is None or _candidate(profile.kernel_meta) is None:
        # The foreign indexes are missing (fresh machine or cleaned lists).
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600)
    for package in (profile.busybox, profile.kernel_meta):
        if _candidate(package) is None:
            raise AssetError(f"apt knows no {package}; run scripts/install-deps.sh "
                             f"(it adds the {profile.deb_arch} architecture)")


def _kernel_package(profile):
    """The versioned kernel package the kernel metapackage points at."""
    out = _run(["apt-cache", "depends", profile.kernel_meta])
    for m in re.finditer(r"Depends:\s*(\S+)", out):
        name = m.group(1)
        if not name.endswith(f":{profile.deb_arch}"):
            name += f":{profile.deb_arch}"
        if profile.kernel_name.match(name):
            return name
    raise AssetError(f"{profile.kernel_meta} depends on no {profile.kernel_glob} package:\n{out}")


def _fetch(package, version, cache, arch="armel"):
    """Download and unpack `package` at `version` into the cache; returns the tree."""
    base = package.split(":")[0]
    tree = os.path.join(cache, f"{base}_{version}")
    stamp = os.path.join(tree, ".unpacked")
    if os.path.exists(stamp):
        return tree
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    pattern = os.path.join(debs, f"{base}_*{version.split(':')[-1]}_{arch}.deb")
    found = glob.glob(pattern)
    if not found:
        # Root downloads as root; the sandbox user could not write the cache.
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
              f"{package}={version}"], cwd=debs)
        found = glob.glob(pattern)
        if not found:
            raise AssetError(f"apt-get download {package}={version} left no {pattern}")
    _run(["rm", "-rf", tree])
    os.makedirs(tree)
    _run(["dpkg", "-x", found[0], tree])
    open(stamp, "w").close()
    return tree


def _cached(cache, base):
    trees = sorted(glob.glob(os.path.join(cache, f"{base}_*", ".unpacked")))
    return os.path.dirname(trees[-1]) if trees else None


class Assets:
    """Paths of the unpacked kernel, device tree and BusyBox."""

    def __init__(self, kernel_tree, busybox_tree, profile=profiles.ZERO):
        vmlinuz = sorted(glob.glob(os.path.join(kernel_tree, "boot", "vmlinuz-*")))
        if not vmlinuz:
            raise AssetError(f"no boot/vmlinuz-* in {kernel_tree}")
        self.kernel = vmlinuz[-1]
        self.release = os.path.basename(self.kernel)[len("vmlinuz-"):]
        dtbs = glob.glob(os.path.join(kernel_tree, "usr", "lib", f"linux-image-{self.release}",
                                      profile.dtb))
        if not dtbs:
            raise AssetError(f"no {profile.dtb} for {self.release} in {kernel_tree}")
        self.dtb = dtbs[0]
        self.modules = os.path.join(kernel_tree, "lib", "modules", self.release)
        if not os.path.isdir(self.modules):
            raise AssetError(f"no lib/modules/{self.release} in {kernel_tree}")
        self.busybox = os.path.join(busybox_tree, "bin", "busybox")
        if not os.path.exists(self.busybox):
            raise AssetError(f"no bin/busybox in {busybox_tree}")


def fetch(cache, offline_ok=True, profile=profiles.ZERO):
    """Returns the Assets of the board, fetching the packages on first use."""
    arch = profile.deb_arch
    if arch != "armel":
        # Each other architecture has its own directory: package names repeat.
        cache = os.path.join(cache, arch)
    os.makedirs(cache, exist_ok=True)
    try:
        _ensure_lists(profile)
        kernel = _kernel_package(profile)
        kernel_tree = _fetch(kernel, _candidate(kernel), cache, arch)
        busybox_tree = _fetch(profile.busybox, _candidate(profile.busybox), cache, arch)
    except (AssetError, subprocess.TimeoutExpired) as e:
        kernel_tree = _cached(cache, profile.kernel_glob)
        busybox_tree = _cached(cache, "busybox-static")
        if not offline_ok or kernel_tree is None or busybox_tree is None:
            raise AssetError(f"cannot fetch the {profile.title} kernel and BusyBox: {e}") from e
    return Assets(kernel_tree, busybox_tree, profile)

#!/usr/bin/env bash
# Builds the Debian package of torpor for one architecture from a binary
# already built:
#
#   scripts/deb.sh DEB_ARCH BINARY OUTDIR
#
#   DEB_ARCH  armhf (the static ARMv6 binary: Raspberry Pi OS 32-bit, every
#             Pi Zero) or the host's architecture (amd64...)
#   BINARY    the torpor executable to ship as /usr/bin/torpor
#   OUTDIR    where torpor_VERSION_DEB_ARCH.deb is written
#
# The package holds /usr/bin/torpor, the systemd unit (the daemon, then the
# boot restore as ExecStartPost, ordered before the services it restores),
# /etc/torpor.toml as a conffile, and the docs; its maintainer scripts
# create the `torpor` group, enable the unit, and undo both on purge
# (packaging/debian). Built with dpkg-deb, files owned by root.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 DEB_ARCH BINARY OUTDIR" >&2
    exit 2
fi
arch=$1
binary=$2
outdir=$3
top=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -x "$binary" ]; then
    echo "deb.sh: $binary is not an executable; build it first" >&2
    exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n1)
if [ -z "$version" ]; then
    echo "deb.sh: no workspace version in Cargo.toml" >&2
    exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"

install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/etc" \
    "$stage/lib/systemd/system" "$stage/usr/share/doc/torpor" \
    "$stage/usr/share/man/man1" "$stage/usr/share/lintian/overrides"
install -m 0755 "$binary" "$stage/usr/bin/torpor"
install -m 0644 "$top/board/raspberrypi0/torpor.service" "$stage/lib/systemd/system/torpor.service"
install -m 0644 "$top/board/raspberrypi0/torpor.toml" "$stage/etc/torpor.toml"
install -m 0644 "$top/packaging/debian/copyright" "$stage/usr/share/doc/torpor/copyright"
for doc in config.md protocol.md objects.md raspberry-pi-os.md; do
    if [ -f "$top/docs/$doc" ]; then
        install -m 0644 "$top/docs/$doc" "$stage/usr/share/doc/torpor/$doc"
    fi
done
gzip -9n -c "$top/packaging/debian/torpor.1" > "$stage/usr/share/man/man1/torpor.1.gz"
chmod 0644 "$stage/usr/share/man/man1/torpor.1.gz"
install -m 0644 "$top/packaging/debian/lintian-overrides" "$stage/usr/share/lintian/overrides/torpor"
gzip -9n -c "$top/README.md" > "$stage/usr/share/doc/torpor/README.md.gz"
chmod 0644 "$stage/usr/share/doc/torpor/README.md.gz"

# A changelog entry for this version (dpkg and lintian expect one; a
# native package calls it changelog.gz).
date=$(date -u -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}")
cat > "$stage/usr/share/doc/torpor/changelog" <<EOF
torpor ($version) unstable; urgency=medium

  * torpor $version, built from the torpor source tree.

 -- torpor maintainers <torpor@example.invalid>  $date
EOF
gzip -9n "$stage/usr/share/doc/torpor/changelog"
chmod 0644 "$stage/usr/share/doc/torpor/changelog.gz"

for script in postinst prerm postrm; do
    install -m 0755 "$top/packaging/debian/$script" "$stage/DEBIAN/$script"
done
echo /etc/torpor.toml > "$stage/DEBIAN/conffiles"
chmod 0644 "$stage/DEBIAN/conffiles"

size=$(du -k -s --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: torpor
Version: $version
Architecture: $arch
Maintainer: torpor maintainers <torpor@example.invalid>
Installed-Size: $size
Section: admin
Priority: optional
Homepage: https://example.invalid/torpor
Description: user-space hibernation for the Raspberry Pi
 An application asks torpor to put it to sleep; torpor freezes it with
 ptrace, writes its complete state (memory, registers, files, signals,
 threads, children) as CRC-checked records to a dedicated partition,
 verifies it and cuts the board's power through a GPIO. At the next boot it
 restores the application where it stopped, or lets it cold-start.
 .
 torpor is one static binary; on a workstation it checkpoints and restores
 process trees like CRIU (torpor dump, torpor restore).
EOF
chmod 0644 "$stage/DEBIAN/control"

mkdir -p "$outdir"
out="$outdir/torpor_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
echo "$out"

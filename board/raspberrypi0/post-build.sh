#!/bin/sh
# Buildroot post-build script of the torpor Pi Zero image: runs after the
# packages are installed, before the root file system image is made.
# $1 (and TARGET_DIR) is the target directory.
set -eu

TARGET="${1:-${TARGET_DIR:?TARGET_DIR is not set}}"

# State directory of the agent (scratch space, logs of the last restore).
mkdir -p "${TARGET}/var/lib/torpor"

# A login on the HDMI console too, next to the serial one: BusyBox init
# only (systemd starts getty@tty1 by itself).
if [ -f "${TARGET}/etc/inittab" ] && ! grep -q '^tty1::' "${TARGET}/etc/inittab"; then
	sed -i '/GENERIC_SERIAL/a\
tty1::respawn:/sbin/getty -L tty1 0 vt100 # HDMI console' "${TARGET}/etc/inittab"
fi

# The package installs the init hook and the default configuration; say so
# when an image is made without them.
for f in /usr/bin/torpor /etc/torpor.toml; do
	if [ ! -e "${TARGET}${f}" ]; then
		echo "post-build: warning: ${f} is missing (BR2_PACKAGE_TORPOR not selected?)" >&2
	fi
done

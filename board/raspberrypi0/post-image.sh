#!/usr/bin/env bash
# Buildroot post-image script of the torpor Pi Zero image: puts firmware,
# device trees and kernel on the boot partition and writes sdcard.img
# (boot vfat, root ext4, raw torpor store) from genimage.cfg.in.
#
# Inputs (set by Buildroot): BINARIES_DIR holding rpi-firmware/, *.dtb,
# the kernel named by rpi-firmware/config.txt and rootfs.ext4; BUILD_DIR
# for genimage's scratch directory (GENIMAGE_TMP overrides it).
set -euo pipefail

BOARD_DIR="$(cd "$(dirname "$0")" && pwd)"
: "${BINARIES_DIR:?BINARIES_DIR is not set}"
GENIMAGE_TMP="${GENIMAGE_TMP:-${BUILD_DIR:?BUILD_DIR is not set}/genimage.tmp}"
GENIMAGE_CFG="${BINARIES_DIR}/genimage.cfg"

config_txt="${BINARIES_DIR}/rpi-firmware/config.txt"
if [ ! -f "$config_txt" ]; then
	echo "post-image: $config_txt not found (is rpi-firmware selected?)" >&2
	exit 1
fi
kernel="$(sed -n 's/^kernel=//p' "$config_txt" | tail -n 1)"
if [ -z "$kernel" ] || [ ! -f "${BINARIES_DIR}/${kernel}" ]; then
	echo "post-image: kernel '${kernel}' named by config.txt is not in ${BINARIES_DIR}" >&2
	exit 1
fi

# Everything the firmware reads from the boot partition, as paths relative
# to BINARIES_DIR; genimage puts each one at the root of the vfat.
files=()
shopt -s nullglob
for f in "${BINARIES_DIR}"/*.dtb "${BINARIES_DIR}"/rpi-firmware/*; do
	files+=("${f#"${BINARIES_DIR}"/}")
done
shopt -u nullglob
files+=("$kernel")

# Replace the #BOOT_FILES# line of the template with one quoted entry per
# file. The written card also gets `fill`, so that sdcard.img extends to
# the end of the torpor partition (which has no content of its own) and
# tools that read the file, not a card, see every partition whole.
entries="$(printf '\t\t\t"%s",\n' "${files[@]}")"
awk -v entries="$entries" '
	/^[[:space:]]*#BOOT_FILES#[[:space:]]*$/ { print entries; done = 1; next }
	/^[[:space:]]*hdimage[[:space:]]*\{/ { print; print "\t\tfill = true"; next }
	{ print }
	END { if (!done) exit 3 }
' "${BOARD_DIR}/genimage.cfg.in" > "$GENIMAGE_CFG" || {
	echo "post-image: no #BOOT_FILES# line in ${BOARD_DIR}/genimage.cfg.in" >&2
	exit 1
}

# An empty root path: the root file system image is already made, genimage
# only places it (it would otherwise copy the whole root to its tmp dir).
rootpath_tmp="$(mktemp -d)"
trap 'rm -rf "$rootpath_tmp"' EXIT
rm -rf "$GENIMAGE_TMP"

genimage \
	--rootpath "$rootpath_tmp" \
	--tmppath "$GENIMAGE_TMP" \
	--inputpath "$BINARIES_DIR" \
	--outputpath "$BINARIES_DIR" \
	--config "$GENIMAGE_CFG"

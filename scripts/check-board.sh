#!/usr/bin/env bash
# Checks of the Buildroot external tree (buildroot/) and the Pi Zero board
# files (board/raspberrypi0/, and board/raspberrypizero2w/ for the 64-bit
# Zero 2 W) that run without Buildroot and its downloads:
#
#   lint        shellcheck on every shell script in board/, buildroot/, scripts/,
#               packaging/
#   image       post-image.sh on stand-in firmware, kernel and root file
#               system; the SD card's partition table and contents
#   kconfig     the external tree's Config.in parsed by kconfiglib, the
#               defconfigs' external symbols and paths
#   package     torpor.mk evaluated by make, its install steps run into a
#               scratch target directory, the rsync exclusions applied
#   postbuild   post-build.sh on a stand-in target directory
#   config      torpor.toml against the SD layout and the package
#   init        S01torpor under BusyBox ash and dash against a fake torpor
#   systemd     torpor.service through systemd-analyze verify
#   kernel      linux-torpor.fragment against Debian's Pi Zero kernel config
#   zero2w      the Zero 2 W: its SD card through post-image.sh, config.txt
#               and cmdline.txt, its fragment against Debian's arm64 kernel
#
# Usage: scripts/check-board.sh [SECTION...]   (default: all of them)
# Exits non-zero if any check fails.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BOARD="$ROOT/board/raspberrypi0"
BOARD2W="$ROOT/board/raspberrypizero2w"
EXT="$ROOT/buildroot"
CACHE="$ROOT/build/cache"
PY=/usr/bin/python3   # Debian's, where python3-kconfiglib lives
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=0
failures=()

pass() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
fail() {
	failed=$((failed + 1))
	failures+=("$1")
	printf '  FAIL  %s\n' "$1"
	[ $# -lt 2 ] || printf '%s\n' "$2" | sed 's/^/        /'
}
# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
	if [ "$2" == "$3" ]; then
		pass "$1"
	else
		fail "$1" "expected: $2"$'\n'"actual:   $3"
	fi
}
# expect_true NAME COMMAND...
expect_true() {
	local name="$1"
	shift
	if "$@"; then pass "$name"; else fail "$name"; fi
}
section() { printf '\n== %s\n' "$1"; }

# ---------------------------------------------------------------------------
check_lint() {
	section "lint (shellcheck)"
	local scripts=() f
	while IFS= read -r f; do
		case "$f" in
		*.sh) scripts+=("$f") ;;
		*) head -n 1 "$f" | grep -qE '^#!(/usr/bin/env )?/?(usr/)?(bin/)?(ba)?sh' && scripts+=("$f") ;;
		esac
	done < <(find "$ROOT/board" "$ROOT/buildroot" "$ROOT/scripts" "$ROOT/packaging" -type f | sort)
	for f in "${scripts[@]}"; do
		local out
		if out="$(shellcheck -x "$f" 2>&1)"; then
			pass "shellcheck ${f#"$ROOT"/}"
		else
			fail "shellcheck ${f#"$ROOT"/}" "$out"
		fi
	done
	expect_true "found ${#scripts[@]} shell scripts (at least 5)" [ ${#scripts[@]} -ge 5 ]
}

# ---------------------------------------------------------------------------
# The board check_image builds an SD card for: its directory, the boot
# partition's size, the kernel and device trees Buildroot leaves for it.
IMG_BOARD="$BOARD"
IMG_BOOT_MB=32
IMG_KERNEL=zImage
IMG_KERNEL_BYTES=5000000
IMG_DTBS=(bcm2708-rpi-zero.dtb bcm2708-rpi-zero-w.dtb)

# Stand-in for what Buildroot leaves in output/images before post-image.sh.
make_binaries() {
	local bin="$1" dtb
	mkdir -p "$bin/rpi-firmware/overlays" "$WORK/rootsrc/etc"
	cp "$IMG_BOARD/config.txt" "$IMG_BOARD/cmdline.txt" "$bin/rpi-firmware/"
	head -c 52116 /dev/urandom > "$bin/rpi-firmware/bootcode.bin"
	head -c 2975744 /dev/urandom > "$bin/rpi-firmware/start.elf"
	head -c 7265 /dev/urandom > "$bin/rpi-firmware/fixup.dat"
	head -c 1525 /dev/urandom > "$bin/rpi-firmware/overlays/gpio-poweroff.dtbo"
	for dtb in "${IMG_DTBS[@]}"; do
		head -c 30000 /dev/urandom > "$bin/$dtb"
	done
	head -c "$IMG_KERNEL_BYTES" /dev/urandom > "$bin/$IMG_KERNEL"
	echo "torpor root" > "$WORK/rootsrc/etc/issue"
	mkfs.ext4 -q -F -L rootfs -d "$WORK/rootsrc" "$bin/rootfs.ext4" 16M >/dev/null
}

# size_of_partition CFG NAME: the size configured for a partition, in bytes.
configured_size() {
	"$PY" - "$1" "$2" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r'partition\s+%s\s*\{([^}]*)\}' % re.escape(sys.argv[2]), text)
size = re.search(r'^\s*size\s*=\s*(\d+)([KMG]?)\s*$', m.group(1), re.M) if m else None
if not size:
    sys.exit("no size for partition %s" % sys.argv[2])
print(int(size.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[size.group(2)])
EOF
}

check_image() {
	section "image (${IMG_BOARD#"$ROOT"/}: post-image.sh, genimage, sfdisk)"
	local bin="$WORK/images-${IMG_BOARD##*/}" out
	make_binaries "$bin"
	if ! out="$(BINARIES_DIR="$bin" BUILD_DIR="$WORK/build" bash "$IMG_BOARD/post-image.sh" 2>&1)"; then
		fail "post-image.sh on stand-in inputs" "$out"
		return
	fi
	pass "post-image.sh on stand-in inputs"

	local img="$bin/sdcard.img" torpor_bytes boot_bytes rootfs_bytes
	torpor_bytes="$(configured_size "$IMG_BOARD/genimage.cfg.in" torpor)" || { fail "torpor size in genimage.cfg.in"; return; }
	boot_bytes=$((IMG_BOOT_MB << 20))
	rootfs_bytes="$(stat -c %s "$bin/rootfs.ext4")"
	# Exact table: c (FAT32 LBA, bootable) / 83 (ext4) / da (raw store),
	# sizes as configured, the torpor store third (/dev/mmcblk0p3).
	local table
	table="$(sfdisk -J "$img" | "$PY" -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
assert t["label"] == "dos", t["label"]
for p in t["partitions"]:
    print(p["node"].rsplit("img", 1)[1], p["type"], p.get("bootable", False), p["start"], p["size"] * t["sectorsize"])
')"
	local n types boots sizes
	n="$(wc -l <<< "$table")"
	types="$(awk '{printf "%s ", $2}' <<< "$table")"
	boots="$(awk '{printf "%s ", $3}' <<< "$table")"
	sizes="$(awk '{printf "%s ", $5}' <<< "$table")"
	expect_eq "3 partitions" "3" "$n"
	expect_eq "partition types c/83/da" "c 83 da " "$types"
	expect_eq "boot flag on partition 1 only" "True False False " "$boots"
	expect_eq "partition sizes boot/rootfs/torpor (bytes)" \
		"$boot_bytes $rootfs_bytes $torpor_bytes " "$sizes"
	expect_eq "torpor store is exactly $((torpor_bytes >> 20)) MiB" "1040" "$((torpor_bytes >> 20))"
	local end
	end="$(awk 'END {print ($4 * 512) + $5}' <<< "$table")"
	expect_eq "sdcard.img extends to the end of the torpor partition" "$end" "$(stat -c %s "$img")"

	# Contents: the root partition is rootfs.ext4 byte for byte, the boot
	# partition holds every boot file byte for byte.
	local p2_start
	p2_start="$(awk 'NR == 2 {print $4}' <<< "$table")"
	if cmp -s <(dd if="$img" bs=512 skip="$p2_start" count=$((rootfs_bytes / 512)) status=none) "$bin/rootfs.ext4"; then
		pass "partition 2 is rootfs.ext4"
	else
		fail "partition 2 is rootfs.ext4"
	fi
	local p1_start f vfat="$bin.p1.vfat" got="$bin.boot"
	p1_start="$(awk 'NR == 1 {print $4}' <<< "$table")"
	dd if="$img" of="$vfat" bs=512 skip="$p1_start" count=$((boot_bytes / 512)) status=none
	mkdir -p "$got"
	mcopy -s -n -i "$vfat" ::/ "$got/" 2>/dev/null
	local want=("${IMG_DTBS[@]}" "$IMG_KERNEL" bootcode.bin start.elf fixup.dat config.txt cmdline.txt overlays/gpio-poweroff.dtbo)
	local listing expected_listing
	listing="$(cd "$got" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')"
	expected_listing="$(printf '%s\n' "${want[@]}" | sort | tr '\n' ' ')"
	expect_eq "boot partition file list" "$expected_listing" "$listing"
	local bad=""
	for f in "${want[@]}"; do
		local src="$bin/$f"
		[ -e "$src" ] || src="$bin/rpi-firmware/$f"
		cmp -s "$src" "$got/$f" || bad+="$f "
	done
	expect_eq "boot files byte-identical" "" "$bad"
	if grep -q '^[[:space:]]*#BOOT_FILES#' "$bin/genimage.cfg"; then
		fail "#BOOT_FILES# substituted" "$(cat "$bin/genimage.cfg")"
	else
		pass "#BOOT_FILES# substituted"
	fi

	# Refusals: a template without the placeholder, a missing kernel.
	local bad_board="$WORK/badboard"
	mkdir -p "$bad_board"
	cp "$IMG_BOARD/post-image.sh" "$bad_board/"
	grep -v '#BOOT_FILES#' "$IMG_BOARD/genimage.cfg.in" > "$bad_board/genimage.cfg.in"
	out="$(BINARIES_DIR="$bin" BUILD_DIR="$WORK/build" bash "$bad_board/post-image.sh" 2>&1)"
	expect_eq "template without #BOOT_FILES# is refused (exit 1)" "1" "$?"
	expect_eq "refusal names the template" "post-image: no #BOOT_FILES# line in $bad_board/genimage.cfg.in" "$out"
	rm -rf "$bad_board"
	mv "$bin/$IMG_KERNEL" "$bin/$IMG_KERNEL.away"
	out="$(BINARIES_DIR="$bin" BUILD_DIR="$WORK/build" bash "$IMG_BOARD/post-image.sh" 2>&1)"
	expect_eq "missing kernel is refused (exit 1)" "1" "$?"
	expect_eq "refusal names the kernel" "post-image: kernel '$IMG_KERNEL' named by config.txt is not in $bin" "$out"
	mv "$bin/$IMG_KERNEL.away" "$bin/$IMG_KERNEL"
}

# ---------------------------------------------------------------------------
check_kconfig() {
	section "kconfig (external tree, defconfigs)"
	local out
	# Buildroot symbols the external tree refers to, declared here so that
	# kconfiglib can parse the tree alone; any other reference is an error.
	cat > "$WORK/Config.in" <<'EOF'
config BR2_USE_MMU
	bool "mmu"
	default y
config BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS
	bool "rustc target"
	default y
config BR2_PACKAGE_HOST_RUSTC
	bool "host rustc"
menu "External options"
source "$BR2_EXTERNAL_TORPOR_PATH/Config.in"
endmenu
EOF
	if out="$(cd "$WORK" && BR2_EXTERNAL_TORPOR_PATH="$EXT" "$PY" - "$EXT" <<'EOF' 2>&1
import glob, os, re, sys
os.environ["CONFIG_"] = ""   # Buildroot's .config has no CONFIG_ prefix
import kconfiglib

ext = sys.argv[1]
kconf = kconfiglib.Kconfig("Config.in", warn_to_stderr=False)
problems = [w for w in kconf.warnings]
ours = {name for name, sym in kconf.syms.items()
        if any(n.filename.startswith(ext) for n in sym.nodes)}
stub = {"BR2_USE_MMU", "BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS", "BR2_PACKAGE_HOST_RUSTC"}
# MODULES is kconfiglib's own built-in symbol.
undefined = sorted(n for n, s in kconf.syms.items() if not s.nodes and n not in stub | {"MODULES"})
if undefined:
    problems.append("undefined symbols referenced: %s" % " ".join(undefined))
if "BR2_PACKAGE_TORPOR" not in ours:
    problems.append("BR2_PACKAGE_TORPOR is not defined by the external tree")

torpor = kconf.syms["BR2_PACKAGE_TORPOR"]
rustc = kconf.syms["BR2_PACKAGE_HOST_RUSTC"]
arch = kconf.syms["BR2_PACKAGE_HOST_RUSTC_TARGET_ARCH_SUPPORTS"]
torpor.set_value(2)
if (torpor.tri_value, rustc.tri_value) != (2, 2):
    problems.append("BR2_PACKAGE_TORPOR=y does not select host rustc")
arch.set_value(0)
if torpor.tri_value != 0:
    problems.append("BR2_PACKAGE_TORPOR stays y without Rust target support")
arch.set_value(2)

for path in sorted(glob.glob(os.path.join(ext, "configs", "*_defconfig"))):
    name = os.path.basename(path)
    for lineno, line in enumerate(open(path), 1):
        m = re.match(r"(BR2_\w+)=(.*)$", line.strip())
        if not m:
            continue
        sym, value = m.groups()
        if "TORPOR" in sym and sym not in ours:
            problems.append("%s:%d: %s is not defined by the external tree" % (name, lineno, sym))
        for ref in re.findall(r"\$\(BR2_EXTERNAL_TORPOR_PATH\)([^\" ]*)", value):
            if not os.path.exists(os.path.normpath(ext + ref)):
                problems.append("%s:%d: %s points at a missing file" % (name, lineno, ext + ref))
    kconf.load_config(path, replace=True)
    if torpor.str_value != "y":
        problems.append("%s does not enable BR2_PACKAGE_TORPOR" % name)

print("external symbols: %s" % " ".join(sorted(ours)))
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF
	)"; then
		pass "Config.in parses; references only known symbols; TORPOR selects host rustc, needs Rust support"
		pass "defconfigs: external symbols defined, \$(BR2_EXTERNAL_TORPOR_PATH) paths exist, torpor enabled"
	else
		fail "kconfig" "$out"
	fi
	expect_eq "external.desc names the tree TORPOR" "name: TORPOR" "$(grep '^name:' "$EXT/external.desc")"
	local cmd
	# The Pi Zero defconfigs share their scripts; the Zero 2 W's are links
	# to the same scripts, from its own directory (post-image.sh takes
	# genimage.cfg.in from there).
	for cmd in BR2_ROOTFS_POST_BUILD_SCRIPT BR2_ROOTFS_POST_IMAGE_SCRIPT; do
		local scripts resolved
		scripts="$(grep -h "^$cmd=" "$EXT"/configs/torpor_raspberrypi0*_defconfig | sort -u | sed 's/.*EXTERNAL_TORPOR_PATH)//; s/"$//')"
		if [ -n "$scripts" ] && [ "$(wc -l <<< "$scripts")" -eq 1 ] && [ -x "$EXT$scripts" ]; then
			pass "$cmd is one executable script in both Pi Zero defconfigs"
		else
			fail "$cmd is one executable script in both Pi Zero defconfigs" "$scripts"
		fi
		local script2w
		script2w="$(grep -h "^$cmd=" "$EXT/configs/torpor_raspberrypizero2w_defconfig" | sed 's/.*EXTERNAL_TORPOR_PATH)//; s/"$//')"
		resolved="$(readlink -f "$EXT$script2w")"
		if [ -x "$EXT$script2w" ] && [ "$resolved" == "$(readlink -f "$EXT$scripts")" ] &&
			[ "$(dirname "$(realpath -s "$EXT$script2w")")" == "$BOARD2W" ]; then
			pass "$cmd of the Zero 2 W is board/raspberrypizero2w/$(basename "$script2w"), the Pi Zero's script"
		else
			fail "$cmd of the Zero 2 W is board/raspberrypizero2w/$(basename "$script2w"), the Pi Zero's script" \
				"$script2w -> $resolved"
		fi
	done
}

# ---------------------------------------------------------------------------
check_package() {
	section "package (torpor.mk under a stand-in of Buildroot's make infrastructure)"
	local target="$WORK/target"
	# Only what torpor.mk itself touches: the package name, the macro it
	# evaluates, the install helpers. The build directory is the checkout,
	# as rsync makes it one.
	cat > "$WORK/stub.mk" <<EOF
BR2_EXTERNAL_TORPOR_PATH := $EXT
TARGET_DIR := $target
INSTALL := install
TARGET_MAKE_ENV := PATH=/nonexistent
PKG_CARGO_ENV := CARGO_HOME=/nonexistent
pkgdir = \$(dir \$(lastword \$(MAKEFILE_LIST)))
pkgname = \$(lastword \$(subst /, ,\$(pkgdir)))
cargo-package = CARGO_PACKAGES += \$(pkgname)
define sep


endef
include \$(BR2_EXTERNAL_TORPOR_PATH)/external.mk
TORPOR_DIR := \$(abspath \$(TORPOR_SITE))
TORPOR_SRCDIR := \$(TORPOR_DIR)/\$(TORPOR_SUBDIR)
print-%:
	@printf '%s\n' '\$(\$*)'
show-%:
	@printf '%s\n' '\$(call \$*)'
\$(TORPOR_DIR)/.stamp_target_installed:
	\$(TORPOR_INSTALL_INIT_SYSV)
	\$(TORPOR_INSTALL_INIT_SYSTEMD)
	\$(foreach hook,\$(TORPOR_POST_INSTALL_TARGET_HOOKS),\$(call \$(hook))\$(sep))
EOF
	local mk=(make --no-print-directory -s -f "$WORK/stub.mk")
	v() { "${mk[@]}" "print-$1" 2>&1; }
	expect_eq "external.mk includes torpor.mk, which evaluates cargo-package" "torpor" "$(v CARGO_PACKAGES | xargs)"
	local site
	site="$(cd "$(v TORPOR_SITE)" 2>/dev/null && pwd)"
	expect_eq "TORPOR_SITE is the repository root" "$ROOT" "$site"
	expect_eq "TORPOR_SITE_METHOD" "local" "$(v TORPOR_SITE_METHOD)"
	local ws_version
	ws_version="$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["version"])' "$ROOT/Cargo.toml")"
	expect_eq "TORPOR_VERSION is the workspace version" "$ws_version" "$(v TORPOR_VERSION)"
	local ws_license
	ws_license="$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["license"].replace(" OR ", " or "))' "$ROOT/Cargo.toml")"
	expect_eq "TORPOR_LICENSE is the workspace licence" "$ws_license" "$(v TORPOR_LICENSE)"
	expect_true "Cargo.lock is committed at the site root" [ -f "$site/Cargo.lock" ]
	local subdir_pkg
	subdir_pkg="$("$PY" -c '
import sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))
print(m["package"]["name"], " ".join(b["name"] for b in m.get("bin", [])))' "$site/$(v TORPOR_SUBDIR)/Cargo.toml")"
	expect_eq "TORPOR_SUBDIR holds the crate with the torpor binary" "torpor torpor" "$subdir_pkg"
	expect_eq "build options select the binary" "--bin torpor" "$(v TORPOR_CARGO_BUILD_OPTS)"
	expect_eq "crates are fetched before the offline build" "TORPOR_CARGO_FETCH" "$(v TORPOR_PRE_BUILD_HOOKS | xargs)"
	local fetch
	fetch="$("${mk[@]}" show-TORPOR_CARGO_FETCH | tr -s ' \t\n' ' ')"
	expect_eq "fetch command" " cd $ROOT/agent && PATH=/nonexistent CARGO_HOME=/nonexistent cargo fetch --locked --manifest-path Cargo.toml" "${fetch%% }"

	# The exclusions, applied by rsync the way Buildroot syncs a local site.
	local copy="$WORK/rsynced" excl
	read -r -a excl <<< "$(v TORPOR_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS)"
	mkdir -p "$WORK/fakesite/target/release" "$WORK/fakesite/build/br/build" "$WORK/fakesite/agent/src/target"
	touch "$WORK/fakesite/target/release/big" "$WORK/fakesite/build/br/build/x" \
		"$WORK/fakesite/agent/src/target/kept" "$WORK/fakesite/Cargo.lock"
	rsync -au --chmod=u=rwX,go=rX "${excl[@]}" --exclude .git "$WORK/fakesite/" "$copy"
	expect_eq "rsync drops target/ and build/ at the root only" "Cargo.lock agent/src/target/kept" \
		"$(cd "$copy" && find . -type f | sed 's|^\./||' | sort | xargs)"

	# The install steps, run as Buildroot runs them (cwd and all).
	local out
	if ! out="$("${mk[@]}" "$ROOT/.stamp_target_installed" 2>&1)"; then
		fail "install steps run" "$out"
		return
	fi
	pass "install steps run"
	local mode dest src
	while read -r mode dest src; do
		if [ "$(stat -c %a "$target/$dest" 2>/dev/null)" == "${mode#0}" ] && cmp -s "$target/$dest" "$BOARD/$src"; then
			pass "/$dest installed, mode $mode, identical to board/raspberrypi0/$src"
		else
			fail "/$dest installed, mode $mode, identical to board/raspberrypi0/$src" "$(ls -l "$target/$dest" 2>&1)"
		fi
	done <<-EOF
		0755 etc/init.d/S01torpor S01torpor
		0644 usr/lib/systemd/system/torpor.service torpor.service
		0644 etc/torpor.toml torpor.toml
	EOF
	expect_eq "systemd preset enables the unit" "enable torpor.service" \
		"$(cat "$target/usr/lib/systemd/system-preset/80-torpor.preset" 2>&1)"
	expect_eq "sysinit.target wants the unit" "/usr/lib/systemd/system/torpor.service" \
		"$(readlink "$target/etc/systemd/system/sysinit.target.wants/torpor.service")"
	expect_eq "the unit's [Install] matches the wants link" "WantedBy=sysinit.target" \
		"$(grep '^WantedBy=' "$BOARD/torpor.service")"
	expect_eq "package creates the torpor group" "- - torpor -1 * - - - torpor socket access" \
		"$(v TORPOR_USERS | xargs -0 | sed 's/^[[:space:]]*//; s/[[:space:]]*$//')"
}

# ---------------------------------------------------------------------------
check_postbuild() {
	section "postbuild (post-build.sh)"
	local target="$WORK/pbtarget" out
	mkdir -p "$target/etc" "$target/usr/bin"
	# The lines around the serial console of Buildroot's BusyBox inittab.
	printf '%s\n' '# Put a getty on the serial port' \
		'console::respawn:/sbin/getty -L  console 0 vt100 # GENERIC_SERIAL' \
		'' '# Stuff to do for the 3-finger salute' > "$target/etc/inittab"
	out="$(TARGET_DIR="$target" sh "$BOARD/post-build.sh" "$target" 2>&1)"
	expect_eq "exit 0, warns about a missing torpor package" "0|post-build: warning: /usr/bin/torpor is missing (BR2_PACKAGE_TORPOR not selected?)"$'\n'"post-build: warning: /etc/torpor.toml is missing (BR2_PACKAGE_TORPOR not selected?)" "$?|$out"
	expect_true "/var/lib/torpor created" [ -d "$target/var/lib/torpor" ]
	expect_eq "HDMI login added after the serial one" \
		"console::respawn:/sbin/getty -L  console 0 vt100 # GENERIC_SERIAL|tty1::respawn:/sbin/getty -L tty1 0 vt100 # HDMI console" \
		"$(grep -E 'GENERIC_SERIAL|^tty1::' "$target/etc/inittab" | paste -sd '|')"
	touch "$target/usr/bin/torpor" "$target/etc/torpor.toml"
	out="$(sh "$BOARD/post-build.sh" "$target" 2>&1)"
	expect_eq "second run: silent, inittab unchanged" "0||1" "$?|$out|$(grep -c '^tty1::' "$target/etc/inittab")"
	rm -f "$target/etc/inittab"
	out="$(sh "$BOARD/post-build.sh" "$target" 2>&1)"
	expect_eq "no inittab (systemd): nothing to add" "0||no" "$?|$out|$([ -e "$target/etc/inittab" ] && echo yes || echo no)"
}

# ---------------------------------------------------------------------------
check_config() {
	section "config (torpor.toml)"
	local out
	if out="$("$PY" - "$BOARD/torpor.toml" "$BOARD/genimage.cfg.in" <<'EOF' 2>&1
import re, sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
layout = open(sys.argv[2]).read()
problems = []
def want(cond, msg):
    if not cond:
        problems.append(msg)
parts = re.findall(r"^\s*partition\s+(\w+)", layout, re.M)
want(cfg["store"]["device"] == "/dev/mmcblk0p%d" % (parts.index("torpor") + 1),
     "store.device %s is not the torpor partition (number %d)" % (cfg["store"]["device"], parts.index("torpor") + 1))
want(cfg["socket"]["path"] == "/run/torpor.sock", "socket.path")
want(cfg["power"]["chip"] == "gpiochip0" and cfg["power"]["line"] == 26, "power line is not gpiochip0 line 26")
want(0 <= cfg["power"]["line"] < 54, "power.line outside the 54 lines of the BCM2835")
# Every key carries a comment on the line(s) above it.
lines = open(sys.argv[1]).read().splitlines()
for i, line in enumerate(lines):
    if re.match(r"^\w+\s*=", line):
        want(i > 0 and lines[i - 1].startswith("#"), "key without a comment: %s" % line)
if problems:
    print("\n".join(problems))
    sys.exit(1)
EOF
	)"; then
		pass "torpor.toml parses; every key commented; store is the torpor partition; GPIO26 on gpiochip0"
	else
		fail "torpor.toml" "$out"
	fi
	# The daemon's own parser must accept the file. The `torpor` group exists
	# only on the target, so the host check names root's group instead.
	sed 's/^group = "torpor"/group = "root"/' "$BOARD/torpor.toml" > "$WORK/torpor-host.toml"
	if out="$(cd "$ROOT" && cargo run -q --bin torpor -- daemon --check-config --config "$WORK/torpor-host.toml" 2>&1)"; then
		pass "torpor daemon --check-config accepts the board's torpor.toml"
	else
		fail "torpor daemon --check-config on the board's torpor.toml" "$out"
	fi
	expect_eq "config.txt names the same power line for gpio-poweroff" "#dtoverlay=gpio-poweroff,gpiopin=26" \
		"$(grep 'gpio-poweroff' "$BOARD/config.txt" | grep -v '^# ')"
	expect_eq "cmdline.txt mounts the root file system from partition 2" "root=/dev/mmcblk0p2" \
		"$(tr ' ' '\n' < "$BOARD/cmdline.txt" | grep '^root=')"
}

# ---------------------------------------------------------------------------
# A fake torpor that logs each call; `daemon` runs until SIGTERM (or, with
# FAKE_IGNORE_TERM, until SIGKILL); `boot` waits (up to 5 s) for a daemon
# to have started, as the real one waits for its socket, then exits with
# FAKE_BOOT_STATUS.
write_fake_torpor() {
	cat > "$1" <<'EOF'
#!/bin/sh
case "$1" in
boot)
	i=0
	while ! grep -q '^daemon' "$FAKE_LOG" 2>/dev/null && [ "$i" -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	echo "$*" >> "$FAKE_LOG"
	exit "${FAKE_BOOT_STATUS:-0}"
	;;
esac
echo "$*" >> "$FAKE_LOG"
case "$1" in
daemon)
	if [ -n "${FAKE_IGNORE_TERM:-}" ]; then
		trap '' TERM
	else
		trap 'echo "daemon got TERM" >> "$FAKE_LOG"; exit 0' TERM
	fi
	while :; do sleep 1; done
	;;
esac
exit 64
EOF
	chmod +x "$1"
}

# run_init SHELL ACTION: runs S01torpor, sets $init_out and $init_rc.
run_init() {
	init_out="$(env -i PATH="$WORK/bin" HOME="$WORK" FAKE_LOG="$WORK/log" \
		TORPOR_BIN="$WORK/torpor" TORPOR_CONFIG="$WORK/torpor.toml" \
		TORPOR_PIDFILE="$WORK/run/torpor.pid" TORPOR_DEFAULTS="$WORK/none" \
		TORPOR_STOP_TIMEOUT="${STOP_TIMEOUT:-5}" \
		FAKE_BOOT_STATUS="${BOOT_STATUS:-0}" FAKE_IGNORE_TERM="${IGNORE_TERM:-}" \
		"$1" "$BOARD/S01torpor" "$2" 2>&1)"
	init_rc=$?
}

pidfile_pid() { cat "$WORK/run/torpor.pid" 2>/dev/null; }
# Alive: exists and is no zombie (an exited daemon waits for a reaper that,
# unlike a board's init, may be slow here).
alive() {
	[ -n "$1" ] && kill -0 "$1" 2>/dev/null || return 1
	! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
calls() { [ -f "$WORK/log" ] && tr '\n' ';' < "$WORK/log"; }

check_init_with() {
	local sh_name="$1" sh="$2" pid pid2 cfg="$WORK/torpor.toml"
	local tag="[$sh_name]"
	rm -rf "$WORK/run" "$WORK/log"
	mkdir -p "$WORK/run"

	run_init "$sh" start
	pid="$(pidfile_pid)"
	expect_eq "$tag start: exit 0" "0" "$init_rc"
	expect_eq "$tag start: messages" "Starting torpor daemon: OK"$'\n'"Restoring hibernated application: OK" "$init_out"
	sleep 0.3
	expect_eq "$tag start: torpor daemon, then torpor boot" "daemon --config $cfg;boot --config $cfg;" "$(calls)"
	expect_true "$tag start: daemon runs with the PID in the PID file" alive "$pid"

	run_init "$sh" start
	expect_eq "$tag start while running: exit 0, nothing run" \
		"0|torpor daemon already running (PID $pid)|daemon --config $cfg;boot --config $cfg;" "$init_rc|$init_out|$(calls)"

	run_init "$sh" restart
	pid2="$(pidfile_pid)"
	expect_eq "$tag restart: exit 0" "0" "$init_rc"
	expect_eq "$tag restart: messages" "Stopping torpor daemon: OK"$'\n'"Starting torpor daemon: OK" "$init_out"
	sleep 0.3
	expect_eq "$tag restart: daemon stopped by TERM and started again, no boot" \
		"daemon --config $cfg;boot --config $cfg;daemon got TERM;daemon --config $cfg;" "$(calls)"
	if ! alive "$pid" && alive "$pid2" && [ "$pid" != "$pid2" ]; then
		pass "$tag restart: old daemon gone, new one runs"
	else
		fail "$tag restart: old daemon gone, new one runs" "old $pid new $pid2"
	fi

	run_init "$sh" reload
	local pid3
	pid3="$(pidfile_pid)"
	expect_eq "$tag reload: exit 0, daemon replaced" "0|yes" "$init_rc|$( ! alive "$pid2" && alive "$pid3" && echo yes)"

	run_init "$sh" stop
	expect_eq "$tag stop: exit 0" "0|Stopping torpor daemon: OK" "$init_rc|$init_out"
	if ! alive "$pid3" && [ ! -e "$WORK/run/torpor.pid" ]; then
		pass "$tag stop: daemon gone, PID file removed"
	else
		fail "$tag stop: daemon gone, PID file removed"
	fi

	run_init "$sh" stop
	expect_eq "$tag stop while stopped: exit 0" "0|torpor daemon not running" "$init_rc|$init_out"

	# A stale PID file (its process is gone) is not a running daemon.
	sh -c 'exit 0' & wait $!
	echo $! > "$WORK/run/torpor.pid"
	run_init "$sh" stop
	expect_eq "$tag stop with a stale PID file: exit 0, file removed" \
		"0|torpor daemon not running|no" "$init_rc|$init_out|$([ -e "$WORK/run/torpor.pid" ] && echo yes || echo no)"

	# A failed restore: reported, and the daemon runs regardless.
	: > "$WORK/log"
	BOOT_STATUS=3 run_init "$sh" start
	expect_eq "$tag start after a failed restore: exit 0, failure reported" \
		"0|Starting torpor daemon: OK"$'\n'"Restoring hibernated application: FAIL (torpor boot exited with 3; cold start)" \
		"$init_rc|$init_out"
	run_init "$sh" stop

	# A daemon that ignores TERM is killed after the timeout.
	: > "$WORK/log"
	IGNORE_TERM=1 run_init "$sh" start
	pid="$(pidfile_pid)"
	sleep 0.3
	STOP_TIMEOUT=1 run_init "$sh" stop
	expect_eq "$tag stop of a daemon ignoring TERM: killed, exit 0" \
		"0|Stopping torpor daemon: OK (killed after 1s)|no" "$init_rc|$init_out|$(alive "$pid" && echo yes || echo no)"

	# Refusals.
	run_init "$sh" status
	expect_eq "$tag unknown action: exit 2, usage" "2|Usage: $BOARD/S01torpor {start|stop|restart|reload}" "$init_rc|$init_out"
	mv "$WORK/torpor" "$WORK/torpor.away"
	run_init "$sh" start
	expect_eq "$tag missing binary: exit 5" "5|torpor: $WORK/torpor is missing or not executable" "$init_rc|$init_out"
	mv "$WORK/torpor.away" "$WORK/torpor"
	mv "$cfg" "$cfg.away"
	run_init "$sh" start
	expect_eq "$tag missing configuration: exit 6" "6|torpor: configuration $cfg is missing or unreadable" "$init_rc|$init_out"
	mv "$cfg.away" "$cfg"
	expect_true "$tag refusals start nothing" [ ! -e "$WORK/run/torpor.pid" ]
}

check_init() {
	section "init (S01torpor against a fake torpor)"
	local bb
	bb="$(command -v busybox)" || { fail "busybox is installed"; return; }
	# Only BusyBox applets on PATH: what the script runs on the board.
	mkdir -p "$WORK/bin"
	local applet
	for applet in sh start-stop-daemon kill sleep rm cat printf echo; do
		ln -sf "$bb" "$WORK/bin/$applet"
	done
	write_fake_torpor "$WORK/torpor"
	cp "$BOARD/torpor.toml" "$WORK/torpor.toml"
	check_init_with "busybox ash" "$WORK/bin/sh"
	check_init_with "dash" "$(command -v dash)"
}

# ---------------------------------------------------------------------------
check_systemd() {
	section "systemd (torpor.service)"
	local root="$WORK/sdroot" out
	mkdir -p "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc"
	write_fake_torpor "$root/usr/bin/torpor"
	cp "$BOARD/torpor.toml" "$root/etc/torpor.toml"
	cp "$BOARD/torpor.service" "$root/usr/lib/systemd/system/"
	if out="$(systemd-analyze verify --root="$root" "$root/usr/lib/systemd/system/torpor.service" 2>&1)"; then
		pass "systemd-analyze verify"
	else
		fail "systemd-analyze verify" "$out"
	fi
	local unit="$BOARD/torpor.service"
	expect_eq "ExecStartPost runs torpor boot once the daemon started, failure tolerated" "ExecStartPost=-/usr/bin/torpor boot --config /etc/torpor.toml" "$(grep '^ExecStartPost=' "$unit")"
	expect_eq "ExecStart runs the daemon" "ExecStart=/usr/bin/torpor daemon --config /etc/torpor.toml" "$(grep '^ExecStart=' "$unit")"
	expect_eq "early ordering" "DefaultDependencies=no|After=local-fs.target" "$(grep '^DefaultDependencies=' "$unit")|$(grep '^After=' "$unit")"
	expect_eq "restored applications survive a stop" "KillMode=process" "$(grep '^KillMode=' "$unit")"
}

# ---------------------------------------------------------------------------
newest_kernel_deb() {
	local debs=("$CACHE"/linux-image-*-rpi_*_armel.deb)
	[ -e "${debs[0]}" ] && printf '%s\n' "${debs[@]}" | sort -V | tail -n 1
}

debian_kernel_config() {
	local deb
	deb="$(newest_kernel_deb)"
	if [ -z "$deb" ]; then
		local pkg
		pkg="$(apt-cache depends linux-image-rpi:armel 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
		[ -n "$pkg" ] || return 1
		mkdir -p "$CACHE"
		(cd "$CACHE" && apt-get download "$pkg" >/dev/null 2>&1) || return 1
		deb="$(newest_kernel_deb)" || return 1
	fi
	mkdir -p "$WORK/kernel"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK/kernel" --wildcards './boot/config-*' || return 1
	ls "$WORK"/kernel/boot/config-*
}

check_kernel() {
	section "kernel (linux-torpor.fragment against Debian's rpi kernel)"
	local config
	if ! config="$(debian_kernel_config)"; then
		fail "Debian's linux-image-*-rpi:armel in build/cache (or downloadable)"
		return
	fi
	pass "Debian kernel config: $(basename "$config")"
	# Options Debian's config cannot list because a parent is off there;
	# accepted only while that parent is in the fragment and off in Debian.
	local -A parent=([POWER_RESET_GPIO]=POWER_RESET)
	local opt value debian same=0 differs=() absent=()
	while IFS='=' read -r opt value; do
		opt="${opt#CONFIG_}"
		debian="$(grep -E "^(CONFIG_$opt=|# CONFIG_$opt is not set)" "$config")"
		if [ "$debian" == "CONFIG_$opt=$value" ]; then
			same=$((same + 1))
		elif [ -n "$debian" ]; then
			debian="${debian#CONFIG_"$opt"=}"
			differs+=("CONFIG_$opt: fragment $value, Debian ${debian/#"# CONFIG_$opt is not set"/not set}")
		elif [ -n "${parent[$opt]:-}" ] && grep -q "^CONFIG_${parent[$opt]}=y" "$BOARD/linux-torpor.fragment" &&
			grep -q "^# CONFIG_${parent[$opt]} is not set" "$config"; then
			differs+=("CONFIG_$opt: fragment $value, Debian has no entry (CONFIG_${parent[$opt]} is off)")
		else
			absent+=("CONFIG_$opt")
		fi
	done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$BOARD/linux-torpor.fragment")
	pass "$same fragment options set the same in Debian's kernel"
	if [ ${#differs[@]} -gt 0 ]; then
		printf '        where Debian differs:\n'
		printf '          %s\n' "${differs[@]}"
	fi
	expect_eq "every fragment option is known to Debian's kernel config" "" "${absent[*]}"
	expect_eq "CHECKPOINT_RESTORE on in Debian's kernel (the bench kernel)" "CONFIG_CHECKPOINT_RESTORE=y" \
		"$(grep '^CONFIG_CHECKPOINT_RESTORE=' "$config")"
}

# ---------------------------------------------------------------------------
# Debian's arm64 kernel config: from the bench's cache (build/cache/arm64),
# else downloaded there.
debian_arm64_config() {
	local cache="$CACHE/arm64/debs" debs deb
	debs=("$cache"/linux-image-*-arm64_*_arm64.deb)
	if [ ! -e "${debs[0]}" ]; then
		local pkg
		pkg="$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
		[ -n "$pkg" ] || return 1
		mkdir -p "$cache"
		(cd "$cache" && apt-get download -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1) || return 1
		debs=("$cache"/linux-image-*-arm64_*_arm64.deb)
		[ -e "${debs[0]}" ] || return 1
	fi
	deb="$(printf '%s\n' "${debs[@]}" | sort -V | tail -n 1)"
	mkdir -p "$WORK/kernel64"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK/kernel64" --wildcards './boot/config-*' || return 1
	ls "$WORK"/kernel64/boot/config-*
}

check_zero2w() {
	IMG_BOARD="$BOARD2W"
	IMG_BOOT_MB=64
	IMG_KERNEL=Image
	IMG_KERNEL_BYTES=26000000
	IMG_DTBS=(bcm2710-rpi-zero-2-w.dtb)
	check_image

	section "zero2w (config.txt, cmdline.txt, defconfig, kernel fragment)"
	local b="$BOARD2W" def="$EXT/configs/torpor_raspberrypizero2w_defconfig"
	expect_eq "config.txt starts the cores in AArch64 mode" "arm_64bit=1" "$(grep '^arm_64bit=' "$b/config.txt")"
	expect_eq "config.txt names the arm64 kernel" "kernel=Image" "$(grep '^kernel=' "$b/config.txt")"
	expect_eq "config.txt takes the PL011 back from Bluetooth for ttyAMA0" "dtoverlay=miniuart-bt" \
		"$(grep '^dtoverlay=' "$b/config.txt")"
	expect_eq "config.txt names the same power line for gpio-poweroff" "#dtoverlay=gpio-poweroff,gpiopin=26" \
		"$(grep 'gpio-poweroff' "$b/config.txt" | grep -v '^# ')"
	expect_eq "cmdline.txt: root on partition 2, serial console on ttyAMA0" "root=/dev/mmcblk0p2 console=ttyAMA0,115200" \
		"$(tr ' ' '\n' < "$b/cmdline.txt" | grep -E '^(root=|console=ttyAMA0)' | paste -sd ' ')"
	# torpor.toml is the package's, shared by every board: the store must be
	# the same partition here.
	local store parts
	store="$("$PY" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["store"]["device"])' "$BOARD/torpor.toml")"
	parts="$(grep -E '^\s*partition\s+\w+' "$b/genimage.cfg.in" | awk '{print $2}' | paste -sd ' ')"
	expect_eq "partitions boot rootfs torpor, the store is torpor.toml's $store" "boot rootfs torpor|/dev/mmcblk0p3" \
		"$parts|$store"
	expect_eq "defconfig: AArch64, Cortex-A53" "BR2_aarch64=y BR2_cortex_a53=y" \
		"$(grep -E '^BR2_(aarch64|cortex_a53)=' "$def" | paste -sd ' ')"
	expect_eq "defconfig: the device tree the stand-in image carries" \
		"BR2_LINUX_KERNEL_INTREE_DTS_NAME=\"broadcom/${IMG_DTBS[0]%.dtb}\"" "$(grep '^BR2_LINUX_KERNEL_INTREE_DTS_NAME=' "$def")"
	expect_eq "defconfig: both fragments, the Pi Zero's first" \
		"board/raspberrypi0/linux-torpor.fragment board/raspberrypizero2w/linux-torpor.fragment" \
		"$(grep '^BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES=' "$def" | grep -o 'board/[a-z0-9]*/linux-torpor.fragment' | paste -sd ' ')"
	expect_eq "defconfig: the same pinned kernel tarball as the Pi Zero" \
		"$(grep '^BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION=' "$EXT/configs/torpor_raspberrypi0_defconfig")" \
		"$(grep '^BR2_LINUX_KERNEL_CUSTOM_TARBALL_LOCATION=' "$def")"

	local config
	if ! config="$(debian_arm64_config)"; then
		fail "Debian's linux-image-*-arm64:arm64 in build/cache/arm64 (or downloadable)"
		return
	fi
	pass "Debian arm64 kernel config: $(basename "$config")"
	local opt value debian differs=() absent=()
	while IFS='=' read -r opt value; do
		debian="$(grep -E "^($opt=|# $opt is not set)" "$config")"
		if [ -z "$debian" ]; then
			absent+=("$opt")
		elif [ "$debian" != "$opt=$value" ]; then
			differs+=("$opt: fragment $value, Debian ${debian#"$opt"=}")
		fi
	done < <(grep -E '^CONFIG_[A-Z0-9_]+=' "$b/linux-torpor.fragment")
	expect_eq "every Zero 2 W fragment option is known to Debian's arm64 kernel" "" "${absent[*]}"
	# Debian builds the sdhost driver as a module (the bench loads it);
	# everything else is as the fragment wants.
	expect_eq "Debian differs only in the sdhost driver (a module there)" "CONFIG_MMC_BCM2835: fragment y, Debian m" \
		"${differs[*]}"
	expect_eq "Debian's arm64 kernel: 4 KiB pages, COMPAT, CHECKPOINT_RESTORE" \
		"CONFIG_ARM64_4K_PAGES=y CONFIG_CHECKPOINT_RESTORE=y CONFIG_COMPAT=y" \
		"$(grep -E '^CONFIG_(ARM64_4K_PAGES|COMPAT|CHECKPOINT_RESTORE)=' "$config" | sort | paste -sd ' ')"
}

# ---------------------------------------------------------------------------
all=(lint image kconfig package postbuild config init systemd kernel zero2w)
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=("${all[@]}")
for s in "${sections[@]}"; do
	case " ${all[*]} " in
	*" $s "*) "check_$s" ;;
	*) echo "check-board: unknown section '$s' (sections: ${all[*]})" >&2; exit 2 ;;
	esac
done

printf '\ncheck-board: %d passed, %d failed\n' "$passed" "$failed"
if [ "$failed" -gt 0 ]; then
	printf '  failed: %s\n' "${failures[@]}"
	exit 1
fi

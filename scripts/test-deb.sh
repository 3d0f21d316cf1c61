#!/usr/bin/env bash
# The Debian packages, tested the way a user uses them (as root):
#
#   armhf  dpkg-deb --info/--contents hold what they must, lintian finds no
#          error, and the binary inside runs --version under qemu-arm.
#   host   dpkg -i; the binary, conffile, unit (systemd-analyze verify), its
#          enablement and the torpor group are in place; torpor check; a
#          checkpoint through the installed daemon lands in a store; dpkg -r
#          keeps only the conffile and the group; dpkg -P leaves nothing.
#
#   scripts/test-deb.sh HOST_DEB ARMHF_DEB
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 HOST_DEB ARMHF_DEB" >&2
    exit 2
fi
host_deb=$(realpath "$1")
armhf_deb=$(realpath "$2")
top=$(cd "$(dirname "$0")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n1)

fail() {
    echo "test-deb: FAIL: $*" >&2
    exit 1
}
pass() {
    echo "test-deb: ok: $*"
}

if [ "$(id -u)" -ne 0 ]; then
    fail "installing a package needs root"
fi

work=$(mktemp -d)
daemon_pid=
app_pid=
cleanup() {
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; fi
    if [ -n "$app_pid" ]; then kill "$app_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

shipped=(
    /usr/bin/torpor
    /etc/torpor.toml
    /lib/systemd/system/torpor.service
    /usr/share/man/man1/torpor.1.gz
    /usr/share/doc/torpor/copyright
    /usr/share/doc/torpor/changelog.gz
    /usr/share/lintian/overrides/torpor
)

# --- armhf -----------------------------------------------------------------
info=$(dpkg-deb --info "$armhf_deb")
grep -qx ' Architecture: armhf' <<<"$info" || fail "armhf package: Architecture is not armhf"
grep -qx " Version: $version" <<<"$info" || fail "armhf package: Version is not $version"
contents=$(dpkg-deb --contents "$armhf_deb")
for f in "${shipped[@]}"; do
    grep -q " \.$f\$" <<<"$contents" || fail "armhf package lacks $f"
done
grep -q '^-rwxr-xr-x root/root .* \./usr/bin/torpor$' <<<"$contents" ||
    fail "armhf package: /usr/bin/torpor is not 0755 root:root"
[ "$(dpkg-deb --ctrl-tarfile "$armhf_deb" | tar -xO ./conffiles)" = /etc/torpor.toml ] ||
    fail "armhf package: /etc/torpor.toml is not its only conffile"
if ! lintian --fail-on error "$armhf_deb" >"$work/lintian" 2>&1; then
    cat "$work/lintian" >&2
    fail "lintian reports errors in the armhf package"
fi
if grep -q '^E:' "$work/lintian"; then
    cat "$work/lintian" >&2
    fail "lintian reports errors in the armhf package"
fi
mkdir "$work/armhf"
dpkg-deb -x "$armhf_deb" "$work/armhf"
got=$(qemu-arm-static -cpu arm1176 "$work/armhf/usr/bin/torpor" --version)
[ "$got" = "torpor $version" ] || fail "armhf binary under qemu-arm says '$got', expected 'torpor $version'"
file "$work/armhf/usr/bin/torpor" | grep -q 'ARM, EABI5.*statically linked' ||
    fail "armhf binary is not a static ARM executable: $(file "$work/armhf/usr/bin/torpor")"
pass "armhf package: contents, conffile, lintian, '$got' under qemu-arm"

# --- host: install -----------------------------------------------------------
if dpkg-query -W -f='${Status}' torpor 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "a torpor package is already installed on this machine; purge it first (dpkg -P torpor)"
fi
if getent group torpor >/dev/null; then
    fail "a group torpor exists before the install; the purge check could not tell"
fi
dpkg -i "$host_deb" >"$work/dpkg-i" 2>&1 || { cat "$work/dpkg-i" >&2; fail "dpkg -i"; }
for f in "${shipped[@]}"; do
    [ -e "$f" ] || fail "installed package lacks $f"
done
[ "$(stat -c '%a %U %G' /usr/bin/torpor)" = "755 root root" ] || fail "/usr/bin/torpor is $(stat -c '%a %U %G' /usr/bin/torpor)"
[ "$(stat -c '%a' /etc/torpor.toml)" = 644 ] || fail "/etc/torpor.toml is $(stat -c '%a' /etc/torpor.toml)"
getent group torpor >/dev/null || fail "no torpor group after the install"
[ -L /etc/systemd/system/sysinit.target.wants/torpor.service ] ||
    fail "torpor.service is not enabled (no sysinit.target.wants link)"
systemd-analyze verify /lib/systemd/system/torpor.service >"$work/verify" 2>&1 ||
    { cat "$work/verify" >&2; fail "systemd-analyze verify torpor.service"; }
[ "$(/usr/bin/torpor --version)" = "torpor $version" ] || fail "installed torpor --version"
/usr/bin/torpor check >"$work/check" || { cat "$work/check" >&2; fail "torpor check"; }
/usr/bin/torpor daemon --check-config --config /etc/torpor.toml >/dev/null ||
    fail "the shipped /etc/torpor.toml does not pass --check-config"
pass "installed: files, modes, group, unit enabled and verified, torpor check"

# --- host: a checkpoint through the installed daemon --------------------------
cat >"$work/torpor.toml" <<EOF
[socket]
path = "$work/torpor.sock"
group = "torpor"
[store]
device = "$work/store"
[power]
chip = "/nonexistent/gpiochip"
[rtc]
device = "none"
[log]
target = "stderr"
EOF
/usr/bin/torpor daemon --config "$work/torpor.toml" 2>"$work/daemon.log" &
daemon_pid=$!
for _ in $(seq 100); do
    [ -S "$work/torpor.sock" ] && break
    sleep 0.05
done
[ -S "$work/torpor.sock" ] || { cat "$work/daemon.log" >&2; fail "the installed daemon did not create its socket"; }
[ "$(stat -c '%G' "$work/torpor.sock")" = torpor ] || fail "the daemon's socket is not group torpor"
sleep 1000 &
app_pid=$!
out=$(/usr/bin/torpor hibernate --checkpoint --pid "$app_pid" --socket "$work/torpor.sock") ||
    { cat "$work/daemon.log" >&2; fail "torpor hibernate --checkpoint through the installed daemon"; }
kill -0 "$app_pid" || fail "the checkpointed app is gone: a checkpoint lets it run"
status=$(/usr/bin/torpor store status --store "$work/store")
grep -q 'valid' <<<"$status" || fail "no valid image in the store after the checkpoint: $status"
kill "$app_pid" "$daemon_pid"
wait "$app_pid" "$daemon_pid" 2>/dev/null || true
app_pid=
daemon_pid=
pass "checkpoint through the installed daemon: $out"

# --- host: remove, then purge -------------------------------------------------
dpkg -r torpor >"$work/dpkg-r" 2>&1 || { cat "$work/dpkg-r" >&2; fail "dpkg -r"; }
[ ! -e /usr/bin/torpor ] || fail "/usr/bin/torpor left after dpkg -r"
[ ! -e /lib/systemd/system/torpor.service ] || fail "the unit left after dpkg -r"
[ -e /etc/torpor.toml ] || fail "dpkg -r removed the conffile /etc/torpor.toml"
getent group torpor >/dev/null || fail "dpkg -r removed the torpor group (only a purge may)"
dpkg -P torpor >"$work/dpkg-p" 2>&1 || { cat "$work/dpkg-p" >&2; fail "dpkg -P"; }
for f in "${shipped[@]}" /usr/share/doc/torpor /etc/systemd/system/sysinit.target.wants/torpor.service \
    /etc/systemd/system/torpor.service /var/lib/systemd/deb-systemd-helper-enabled/torpor.service.dsh-also; do
    if [ -e "$f" ] || [ -L "$f" ]; then
        fail "$f left after dpkg -P"
    fi
done
getent group torpor >/dev/null && fail "the torpor group left after dpkg -P"
if dpkg-query -W -f='${Status}' torpor 2>/dev/null | grep -q 'installed\|config-files'; then
    fail "dpkg still knows torpor after the purge: $(dpkg-query -W -f='${Status}' torpor)"
fi
pass "removed (conffile and group kept), purged (nothing left)"

#!/usr/bin/env bash
# Runs one test app through the control protocol without a checkpoint:
# start in a fresh work directory → READY in app.log → create go → exit.
#
#   run-control.sh [--expect-fail] BIN [ARGS...]
#
# RUNNER (e.g. "qemu-arm-static -cpu arm1176") is prepended to the command.
# Prints the app's result line; exits 0 when it is "PASS <name>" with status 0
# (or, with --expect-fail, "FAIL <name>: ..." with status 1).
set -u
expect=PASS
if [ "${1:-}" = --expect-fail ]; then expect=FAIL; shift; fi
bin=$(realpath "$1"); shift
name=$(basename "$bin")
w=$(mktemp -d "${TMPDIR:-/tmp}/torpor-app.XXXXXX")
cd "$w" || exit 2
# shellcheck disable=SC2086
${RUNNER:-} "$bin" "$@" </dev/null >app.log 2>&1 &
pid=$!
for _ in $(seq 1 1000); do
	grep -q "^READY $name\$" app.log 2>/dev/null && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.02
done
if ! grep -q "^READY $name\$" app.log; then
	echo "$name: no READY within 20 s"; tail -5 app.log; kill -9 "$pid" 2>/dev/null; exit 1
fi
touch go
for _ in $(seq 1 1500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
if kill -0 "$pid" 2>/dev/null; then
	echo "$name: still running 30 s after go"; tail -5 app.log; kill -9 "$pid"; exit 1
fi
wait "$pid"; status=$?
result=$(grep -E "^(PASS|FAIL) " app.log | tail -1)
echo "$result (exit $status)"
case "$expect:$status:$result" in
PASS:0:"PASS $name") rm -rf "$w"; exit 0 ;;
FAIL:1:"FAIL $name: "*) rm -rf "$w"; exit 0 ;;
esac
echo "$name: expected $expect; work directory kept: $w"; tail -5 app.log
exit 1

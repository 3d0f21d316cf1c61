#!/bin/sh
# The bench's jobs inside the emulated Pi Zero, one per boot:
#
#   test         run every app through the checkpoint protocol (or, while
#                torpor has no `dump`, the control protocol) and report
#   gpio         drive the power line as the agent will; the host cuts power
#   boot-check   only check that the board came up and sees its store
#   suspend      checkpoint $BENCH_APP into the store, then drive the power
#                line (the host cuts power)
#   resume       bring $BENCH_APP back from the store and let it verify itself
#   store-seed   clear the store and write one good image into it
#   store-cut    report the store, then write a new image (the host cuts
#                power somewhere inside the write)
#   store-check  report the store
#   hibernate    torpor daemon, two managed counters (one with a child) and
#                a managed app holding a netlink socket: `torpor hibernate
#                --all` is refused naming it, all run on; then the managed
#                sleepy-counter asks to hibernate, every managed tree goes
#                into one image, the daemon drives the power line (the host
#                cuts power)
#   wake         daemon, then `torpor boot`: every app resumes where it was,
#                its `torpor run` line adopts it, each verifies itself
#   corrupt      an image with flipped bytes: `torpor boot` cold-starts
#   attempts-seed  an image whose executable then changes on the SD card
#   attempts-boot  `torpor boot` fails; at the last attempt it gives up
#   unauthorized a uid not in allow_users asks; refused, the app runs on
#   compat       (64-bit kernels) the 32-bit torpor checkpoints a 32-bit app;
#                each torpor refuses a task of the other width
#
# Result lines, all read by bench/pizero/bench.py:
#   TORPOR-INFO <key> <value>
#   TORPOR-RESULT <app> PASS|FAIL <message>
#   TORPOR-DETAIL <app> <a line of the app's log or of torpor's output>
#   TORPOR-STATUS-BEGIN / TORPOR-STATUS <line> / TORPOR-STATUS-END rc=<n>
#   TORPOR-CUT-WINDOW-OPEN / TORPOR-CUT-WINDOW-CLOSED rc=<n>
#   TORPOR-GPIO-DECOY-DONE line=<n> / TORPOR-GPIO-ARMED line=<n> value=<v>
#   TORPOR-GPIO-SURVIVED
#   TORPOR-SUSPENDED <app> pid=<n>
#   TORPOR-TIME <app> dump|restore <ms>   (guest time: emulated, -icount)
#   TORPOR-SKIP <job> <reason>
#   TORPOR-STORY <what happened>          (printed by `make demo`)
#   TORPOR-ERROR <message>

# shellcheck source=/dev/null
. /bench/bench.conf

TORPOR=/usr/bin/torpor
# Work directories live on the SD card's rootfs, so an app's cwd and log
# outlive a power cut, as they would on a real board.
WORK=/data/bench

info() { echo "TORPOR-INFO $*"; }

# Guest uptime in ms (the guest clock follows QEMU's -icount: emulated time).
uptime_ms() {
    read -r up _ </proc/uptime
    echo "${up%.*}${up#*.}0"
}
error() { echo "TORPOR-ERROR $*"; }

# Wait until a line of FILE matches the extended regex, at most SECONDS;
# with a PID, give up as soon as that process is gone (returns 2): an app
# that died before printing the line will never print it.
# The bound is guest time: a loop of ticks would stretch with every grep.
wait_for_line() {
    file=$1 regex=$2 deadline=$(($(uptime_ms) + $3 * 1000)) who=$4
    while [ "$(uptime_ms)" -lt "$deadline" ]; do
        grep -Eq "$regex" "$file" 2>/dev/null && return 0
        if [ -n "$who" ] && pid_gone "$who"; then
            grep -Eq "$regex" "$file" 2>/dev/null && return 0
            return 2
        fi
        sleep 0.1
    done
    grep -Eq "$regex" "$file" 2>/dev/null && return 0
    return 1
}

# A process is gone when /proc has no entry for it or it is a zombie.
pid_gone() {
    [ -e "/proc/$1" ] || return 0
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
    [ -z "$state" ] || [ "$state" = Z ]
}

wait_pid_gone() {
    ticks=$(($2 * 10))
    while [ "$ticks" -gt 0 ]; do
        pid_gone "$1" && return 0
        sleep 0.1
        ticks=$((ticks - 1))
    done
    return 1
}

# Print the last lines of FILE as details of APP.
details() {
    app=$1 file=$2
    [ -s "$file" ] || return 0
    tail -n 15 "$file" | while IFS= read -r line; do
        echo "TORPOR-DETAIL $app $line"
    done
}

result() {
    app=$1 verdict=$2
    shift 2
    echo "TORPOR-RESULT $app $verdict $*"
}

wait_for_store() {
    ticks=100
    while [ ! -b "$BENCH_STORE" ] && [ "$ticks" -gt 0 ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    if [ ! -b "$BENCH_STORE" ]; then
        error "store partition $BENCH_STORE did not appear"
        return 1
    fi
    part=${BENCH_STORE#/dev/}
    sectors=$(cat "/sys/class/block/$part/size")
    info store "$BENCH_STORE sectors=$sectors"
    if [ "$sectors" != "$BENCH_STORE_SECTORS" ]; then
        error "store partition $BENCH_STORE has $sectors sectors, the layout says $BENCH_STORE_SECTORS"
        return 1
    fi
}

load_modules() {
    for module in $BENCH_MODULES; do
        insmod "/lib/modules/$module" || { error "insmod $module failed"; return 1; }
    done
}

# Mount the rootfs partition at /data (ext4 is a module in this kernel).
mount_data() {
    load_modules || return 1
    mkdir -p /data
    if ! mount -t ext4 -o sync "$BENCH_DATA" /data; then
        error "cannot mount $BENCH_DATA (rootfs) at /data"
        return 1
    fi
    info data "$BENCH_DATA on /data"
}

has_command() { "$TORPOR" "$@" --help >/dev/null 2>&1; }

# Where the kernel holds each thread of process $2 (for $1's details): its
# state, wait channel, syscall, and kernel stack where the kernel shows it.
thread_view() {
    tag=$1 p=$2 what=$3
    for t in /proc/"$p"/task/*; do
        [ -d "$t" ] || continue
        echo "TORPOR-DETAIL $tag $what $p thread ${t##*/}: $(sed -n 's/^State:[[:space:]]*//p' "$t/status" 2>/dev/null)" \
            "wchan=$(cat "$t/wchan" 2>/dev/null) syscall=$(cat "$t/syscall" 2>/dev/null)"
        if [ -r "$t/stack" ]; then
            while IFS= read -r l; do echo "TORPOR-DETAIL $tag   $l"; done <"$t/stack"
        fi
    done
}

# Process $1 and its descendants.
tree_pids() {
    echo "$1"
    # shellcheck disable=SC2013 # the file is a list of words (pids)
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        tree_pids "$c"
    done
}

# torpor ARGS... for app $1, output in file $2, at most $BENCH_TORPOR_TIMEOUT
# seconds. A hang becomes a failure with the guest's view — the processes,
# where torpor and the app wait, torpor's output so far — before torpor is
# killed; the exit status is then 124, as timeout(1) gives.
torpor_bounded() {
    tag=$1 out=$2
    shift 2
    rm -f "$out.hung"
    "$TORPOR" "$@" >"$out" 2>&1 &
    tp=$!
    (
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        sleep "$BENCH_TORPOR_TIMEOUT" &
        sp=$!
        wait "$sp"
        : >"$out.hung"
        echo "TORPOR-DETAIL $tag torpor $* still running after ${BENCH_TORPOR_TIMEOUT}s; the guest sees:"
        # User processes only: kernel threads show as [name].
        # shellcheck disable=SC2009 # every process, not one name
        ps -o pid,ppid,stat,args 2>/dev/null | grep -v ' \[[^]]*\]$' | while IFS= read -r l; do
            echo "TORPOR-DETAIL $tag   $l"
        done
        thread_view "$tag" "$tp" torpor
        if [ -n "$pid" ]; then
            for a in $(tree_pids "$pid"); do thread_view "$tag" "$a" app; done
        fi
        while IFS= read -r l; do echo "TORPOR-DETAIL $tag torpor: $l"; done <"$out"
        kill -KILL "$tp" 2>/dev/null
    ) &
    wd=$!
    wait "$tp"
    rc=$?
    kill "$wd" 2>/dev/null
    wait "$wd" 2>/dev/null
    if [ -e "$out.hung" ]; then
        rm -f "$out.hung"
        rc=124
    fi
    return "$rc"
}

# Start APP in a fresh working directory; sets $pid and $W.
start_app() {
    W=$WORK/$1
    rm -rf "$W"
    mkdir -p "$W"
    # `>` opens app.log with O_TRUNC: a restored app writes on at its own
    # offset, exactly as a file opened by a user would behave.
    # $APP_ARGS: the app's arguments for this run (unquoted: a word list).
    # shellcheck disable=SC2086
    (cd "$W" && exec "/bench/apps/$1" $APP_ARGS </dev/null >app.log 2>&1) &
    pid=$!
}

stop_app() {
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

# Wait for the app's READY; on failure report it and stop the app.
app_ready() {
    wait_for_line "$W/app.log" '^READY( |$)' "$BENCH_READY_TIMEOUT" "$pid"
    case $? in
        0) return 0 ;;
        2) result "$1" FAIL "exited before READY" ;;
        *) result "$1" FAIL "no READY within ${BENCH_READY_TIMEOUT}s" ;;
    esac
    details "$1" "$W/app.log"
    stop_app
    return 1
}

# Checkpoint the app into the store; torpor ends the tree after a good dump.
dump_app() {
    t0=$(uptime_ms)
    torpor_bounded "$1" "$W/dump.out" dump --pid "$pid" --store "$BENCH_STORE"
    rc=$?
    echo "TORPOR-TIME $1 dump $(($(uptime_ms) - t0))"
    if [ "$rc" -ne 0 ]; then
        result "$1" FAIL "torpor dump --pid $pid exited with $rc"
        details "$1" "$W/dump.out"
        details "$1" "$W/app.log"
        stop_app
        return 1
    fi
    if ! wait_pid_gone "$pid" 10; then
        result "$1" FAIL "pid $pid still running after a successful dump"
        details "$1" "$W/dump.out"
        stop_app
        return 1
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# Bring the app back from the store with `torpor $2 --store` (restore or boot).
restore_app() {
    t0=$(uptime_ms)
    torpor_bounded "$1" "$W/restore.out" "$2" --store "$BENCH_STORE"
    rc=$?
    echo "TORPOR-TIME $1 restore $(($(uptime_ms) - t0))"
    if [ "$rc" -ne 0 ]; then
        result "$1" FAIL "torpor $2 --store $BENCH_STORE exited with $rc"
        details "$1" "$W/restore.out"
        return 1
    fi
    if pid_gone "$pid"; then
        result "$1" FAIL "pid $pid not running after torpor $2"
        details "$1" "$W/restore.out"
        details "$1" "$W/app.log"
        return 1
    fi
    return 0
}

# Create W/go and report the app's own verdict. $1 = app, $2 = how it got
# there (the protocol, or what the dump did); `control` also reaps the app.
# (Shell variables are global: $how must not reuse job_test's $protocol.)
go_and_verdict() {
    app=$1 how=$2
    : >"$W/go"
    wait_for_line "$W/app.log" '^(PASS|FAIL)( |$)' "$BENCH_VERIFY_TIMEOUT" "$pid"
    rc=$?
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 2 ]; then
            result "$app" FAIL "pid $pid ended without PASS or FAIL after go"
        else
            result "$app" FAIL "no PASS or FAIL within ${BENCH_VERIFY_TIMEOUT}s after go"
        fi
        details "$app" "$W/app.log"
        [ "$how" = control ] && stop_app
        return
    fi
    verdict=$(grep -E '^(PASS|FAIL)( |$)' "$W/app.log" | head -n 1)
    case "$verdict" in
        "PASS $app")
            result "$app" PASS "$how"
            ;;
        PASS*)
            result "$app" FAIL "app reported '$verdict', expected 'PASS $app'"
            ;;
        *)
            result "$app" FAIL "$verdict"
            details "$app" "$W/app.log"
            [ -f "$W/restore.out" ] && details "$app" "$W/restore.out"
            ;;
    esac
    if [ "$how" = control ]; then
        wait "$pid"
        rc=$?
        if [ "$rc" -ne 0 ] && [ "$verdict" = "PASS $app" ]; then
            result "$app" FAIL "printed PASS but exited with $rc"
        fi
    fi
}

# badfd and breadth_refuse hold an fd torpor must refuse (tests/apps/README.md): the dump has
# to fail with a reason naming fd 7 and leave the app running, which then
# verifies that nothing of it was touched.
run_refused() {
    app=$1
    torpor_bounded "$app" "$W/dump.out" dump --pid "$pid" --store "$BENCH_STORE"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        result "$app" FAIL "torpor dump --pid $pid succeeded; it must refuse fd 7"
    elif [ "$rc" -ne 1 ] || ! grep -q "fd 7" "$W/dump.out"; then
        result "$app" FAIL "torpor dump --pid $pid exited with $rc, expected a refusal naming fd 7"
    elif pid_gone "$pid"; then
        result "$app" FAIL "pid $pid is gone after a refused dump"
    else
        go_and_verdict "$app" "dump refused: $(head -n 1 "$W/dump.out")"
        return
    fi
    details "$app" "$W/dump.out"
    details "$app" "$W/app.log"
    stop_app
}

# exiter exits by itself soon after READY: a dump either fails cleanly (an
# error from torpor, the app finishing on its own) or catches it, and then
# the restored app finishes the same way.
run_exiter() {
    app=$1
    torpor_bounded "$app" "$W/dump.out" dump --pid "$pid" --store "$BENCH_STORE"
    rc=$?
    if [ "$rc" -eq 0 ]; then
        wait_pid_gone "$pid" 10 || { result "$app" FAIL "pid $pid still running after a successful dump"; stop_app; return; }
        wait "$pid" 2>/dev/null
        # No check that it runs: the restored app may finish at once.
        t0=$(uptime_ms)
        torpor_bounded "$app" "$W/restore.out" restore --store "$BENCH_STORE"
        rc=$?
        echo "TORPOR-TIME $app restore $(($(uptime_ms) - t0))"
        if [ "$rc" -ne 0 ]; then
            result "$app" FAIL "torpor restore --store $BENCH_STORE exited with $rc"
            details "$app" "$W/restore.out"
            return
        fi
        go_and_verdict "$app" checkpoint
    elif [ "$rc" -eq 1 ] && grep -q "^torpor: error: " "$W/dump.out"; then
        go_and_verdict "$app" "dump failed cleanly: $(head -n 1 "$W/dump.out")"
        wait "$pid" 2>/dev/null
    else
        result "$app" FAIL "torpor dump --pid $pid exited with $rc without an error message"
        details "$app" "$W/dump.out"
        stop_app
    fi
}

# One app through the whole protocol. $1 = app, $2 = checkpoint|control.
run_app() {
    APP_ARGS=
    # breadth_inet's checkpoint run expects its TCP connection to come back
    # reset, as after a network drop (tests/apps/README.md).
    [ "$1" = breadth_inet ] && [ "$2" = checkpoint ] && APP_ARGS=1
    # breadth_pipes: its peer outside the tree does not come back.
    [ "$1" = breadth_pipes ] && [ "$2" = checkpoint ] && APP_ARGS=1
    # breadth_clock: no sleep between dump and restore; an emulated restore
    # may take seconds, so its timers may fire up to a minute late.
    [ "$1" = breadth_clock ] && APP_ARGS="0 60000"
    start_app "$1"
    app_ready "$1" || return
    if [ "$2" = checkpoint ]; then
        case "$1" in
            badfd | breadth_refuse) run_refused "$1"; return ;;
            exiter) run_exiter "$1"; return ;;
        esac
    fi
    if [ "$2" = checkpoint ]; then
        dump_app "$1" || return
        restore_app "$1" restore || return
    fi
    go_and_verdict "$1" "$2"
}

# The first half of a power cycle: checkpoint $BENCH_APP into the store,
# then drive the power line as the agent does after a verified dump.
job_suspend() {
    store_ready suspend || return 0
    app=$BENCH_APP
    # Far above the pids the resume boot uses before its restore, as an app
    # started long after boot would be (a restore refuses a pid in use).
    echo 1999 >/proc/sys/kernel/ns_last_pid
    start_app "$app"
    app_ready "$app" || return 0
    echo "$pid" >"$W/pid"
    dump_app "$app" || return 0
    sync
    echo "TORPOR-SUSPENDED $app pid=$pid"
    /bench/tools/gpio-poke "$BENCH_POWER_CHIP" "$BENCH_POWER_LINE" "$BENCH_POWER_ACTIVE" 5000
    result "$app" FAIL "the power line was driven but power stayed on"
}

# The second half, on the next power-on: the boot hook brings the app back
# (`torpor boot --store`, or `torpor restore --store` while there is no boot
# command), then the app verifies itself.
job_resume() {
    app=$BENCH_APP
    W=$WORK/$app
    pid=$(cat "$W/pid" 2>/dev/null)
    if [ -z "$pid" ]; then
        result "$app" FAIL "no pid recorded in $W/pid by the suspend boot"
        return 0
    fi
    if has_command boot; then command=boot; else command=restore; fi
    if [ -n "$BENCH_LAZY" ]; then
        resume_timed "$app" "$command"
        return 0
    fi
    info resume-command "torpor $command --store $BENCH_STORE"
    restore_app "$app" "$command" || return 0
    go_and_verdict "$app" "power-cycle"
}

# A process torpor has let go: it runs the executable $2 (a task the
# restore has forked but not yet rebuilt runs torpor's), is not traced and
# not stopped.
let_go() {
    [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$2" ] || return 1
    status=$(cat "/proc/$1/status" 2>/dev/null) || return 1
    case "$status" in
        *"TracerPid:	0"*) ;;
        *) return 1 ;;
    esac
    state=$(echo "$status" | sed -n 's/^State:[[:space:]]*\([A-Za-z]\).*/\1/p')
    [ -n "$state" ] && [ "$state" != t ] && [ "$state" != T ] && [ "$state" != Z ]
}

# The resume of the lazy-cycle bench: the restore, eager (BENCH_LAZY=0) or
# lazy (BENCH_LAZY=1, `[restore] lazy = true`), with the guest's uptime
# (from power-on) when the app is let go to run, when torpor returns, and
# when the app has checked all its memory. ($timed: go_and_verdict sets
# $how.)
resume_timed() {
    app=$1 command=$2
    if [ "$BENCH_LAZY" = 1 ]; then
        write_config 2 stderr "lazy = true"
        timed=lazy
    else
        write_config 2 stderr
        timed=eager
    fi
    info resume-command "torpor $command --store $BENCH_STORE ($timed)"
    (
        while ! let_go "$pid" "/bench/apps/$app"; do
            sleep 0.002
        done
        echo "TORPOR-LAZY-TIME $app $timed running $(uptime_ms)"
    ) &
    watcher=$!
    restore_app "$app" "$command" || { kill "$watcher" 2>/dev/null; return 0; }
    echo "TORPOR-LAZY-TIME $app $timed restored $(uptime_ms)"
    wait "$watcher"
    go_and_verdict "$app" "power-cycle $timed"
    echo "TORPOR-LAZY-TIME $app $timed verified $(uptime_ms)"
}

job_test() {
    info torpor-version "$("$TORPOR" --version 2>&1)"
    if has_command dump && has_command restore && [ "$BENCH_PROTOCOL" != control ]; then
        protocol=checkpoint
    else
        protocol=control
    fi
    info protocol "$protocol"
    for app in $BENCH_APPS; do
        run_app "$app" "$protocol"
    done
}

# First a decoy line, which must leave the power on, then the power line.
# A marker written to the SD card before the cut must be there after it.
job_gpio() {
    info torpor-version "$("$TORPOR" --version 2>&1)"
    marker=$(cat /proc/sys/kernel/random/uuid)
    echo "$marker" >"$WORK/power-cut-marker"
    sync
    info marker "$marker"
    /bench/tools/gpio-poke "$BENCH_POWER_CHIP" "$BENCH_DECOY_LINE" "$BENCH_POWER_ACTIVE" 200
    echo "TORPOR-GPIO-DECOY-DONE line=$BENCH_DECOY_LINE"
    echo "TORPOR-GPIO-ARMED line=$BENCH_POWER_LINE value=$BENCH_POWER_ACTIVE"
    /bench/tools/gpio-poke "$BENCH_POWER_CHIP" "$BENCH_POWER_LINE" "$BENCH_POWER_ACTIVE" 5000
    echo "TORPOR-GPIO-SURVIVED"
}

store_status() {
    echo "TORPOR-STATUS-BEGIN"
    timeout "$BENCH_TORPOR_TIMEOUT" "$TORPOR" store status --store "$BENCH_STORE" >/tmp/status.out 2>&1
    rc=$?
    while IFS= read -r line; do
        echo "TORPOR-STATUS $line"
    done </tmp/status.out
    echo "TORPOR-STATUS-END rc=$rc"
}

# Write one image of $BENCH_STORE_APP into the store; the window markers
# tell the host when the store is being written.
store_write() {
    app=$BENCH_STORE_APP
    start_app "$app"
    if ! wait_for_line "$W/app.log" '^READY( |$)' "$BENCH_READY_TIMEOUT"; then
        error "$app printed no READY within ${BENCH_READY_TIMEOUT}s"
        stop_app
        return 1
    fi
    sync
    echo "TORPOR-CUT-WINDOW-OPEN"
    timeout "$BENCH_TORPOR_TIMEOUT" "$TORPOR" dump --pid "$pid" --store "$BENCH_STORE" >"$W/dump.out" 2>&1
    rc=$?
    echo "TORPOR-CUT-WINDOW-CLOSED rc=$rc"
    details "$app" "$W/dump.out"
    stop_app
    return "$rc"
}

store_ready() {
    if ! has_command dump || ! has_command store status; then
        echo "TORPOR-SKIP $1 $("$TORPOR" --version 2>&1) has no 'dump' or 'store status' command"
        return 1
    fi
}

job_store_seed() {
    store_ready store-seed || return 0
    "$TORPOR" store clear --store "$BENCH_STORE" || return 1
    store_write || return 1
    store_status
}

job_store_cut() {
    store_ready store-cut || return 0
    store_status
    store_write
    store_status
}

job_store_check() {
    store_ready store-check || return 0
    store_status
}

# ---- hibernation through torpor daemon ---------------------------------
# The app asks the daemon itself (examples/sleepy-counter.c), the daemon
# dumps it frozen into the store and drives the power line; at the next
# power-on the daemon starts first and `torpor boot` restores the app,
# which receives Resumed on its old connection.

SLEEPY=/bench/tools/sleepy-counter
HIB=$WORK/hibernate

# /etc/torpor.toml for the bench: the store partition, the bench's power
# line, restore.attempts = $1, log.target = $2 (stderr if not given), and a
# line $3 more in [restore].
write_config() {
    active_low=false
    [ "$BENCH_POWER_ACTIVE" = 0 ] && active_low=true
    mkdir -p /etc
    cat >/etc/torpor.toml <<EOF
[socket]
path = "/run/torpor.sock"
owner = "root"
group = "root"
mode = "0666"

[store]
device = "$BENCH_STORE"

[power]
chip = "gpiochip0"
line = $BENCH_POWER_LINE
active_low = $active_low
hold_ms = 100
timeout_ms = 5000

[restore]
attempts = $1
tty = "/dev/console"
$3

[access]
allow_users = []

[log]
target = "${2:-stderr}"
EOF
    printf 'root:x:0:0:root:/root:/bin/sh\n' >/etc/passwd
    printf 'root:x:0:\n' >/etc/group
}

# The daemon as the init hook starts it: first, logging on the console.
start_torpor_daemon() {
    "$TORPOR" daemon --config /etc/torpor.toml </dev/null 2>&1 &
    daemon_pid=$!
    ticks=100
    while [ ! -S /run/torpor.sock ] && [ "$ticks" -gt 0 ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    if [ ! -S /run/torpor.sock ]; then
        error "torpor daemon (pid $daemon_pid) did not create /run/torpor.sock"
        return 1
    fi
    info daemon "pid $daemon_pid on /run/torpor.sock"
}

# BusyBox syslogd as a Buildroot board starts it before S01torpor (S01syslogd).
start_syslogd() {
    rm -f /tmp/messages
    syslogd -O /tmp/messages
    ticks=50
    while [ ! -S /dev/log ] && [ "$ticks" -gt 0 ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    [ -S /dev/log ] || error "syslogd did not create /dev/log"
}

# The board's init hook (board/raspberrypi0/S01torpor) as BusyBox init runs
# it at power-on: the daemon, then `torpor boot`.
start_init_hook() {
    /etc/init.d/S01torpor start
    rc=$?
    echo "TORPOR-INIT-HOOK start rc=$rc"
    ticks=100
    while [ ! -S /run/torpor.sock ] && [ "$ticks" -gt 0 ]; do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    if [ "$rc" -ne 0 ] || [ ! -S /run/torpor.sock ]; then
        error "S01torpor start (exit $rc) left no daemon on /run/torpor.sock"
        return 1
    fi
    daemon_pid=$(cat /var/run/torpor.pid)
    info daemon "pid $daemon_pid on /run/torpor.sock, started by S01torpor"
}

# ---- managed applications: `torpor run --name` lines, as init scripts
# after S01torpor start them. Each app's work directory is $WORK/NAME on the
# SD card: its output in app.log, torpor's own lines in run.err.

COUNTER_MS=200

# torpor run --name $1 -- $2...; sets $pid.
start_managed() {
    name=$1
    shift
    M=$WORK/$name
    rm -rf "$M"
    mkdir -p "$M"
    (cd "$M" && exec "$TORPOR" run --name "$name" --config /etc/torpor.toml --pidfile "$M/pid" \
        -- "$@" </dev/null >app.log 2>run.err) &
    pid=$!
    echo "$pid" >"$M/root.pid"
}

# The same line at the next boot: it must adopt the restored tree ($2).
adopt_managed() {
    name=$1 want=$2
    shift 2
    M=$WORK/$name
    mkdir -p "$M"
    (cd "$M" && "$TORPOR" run --name "$name" --config /etc/torpor.toml --pidfile "$M/pid" \
        -- "$@" </dev/null >>run.err 2>&1)
    rc=$?
    got=$(cat "$M/pid" 2>/dev/null)
    if [ "$rc" -ne 0 ] || [ "$got" != "$want" ] || ! grep -q "^torpor\[[0-9]*\]: info: $name: restored at boot as pid $want\$" "$M/run.err"; then
        problems="$problems; torpor run --name $name (exit $rc) did not adopt pid $want (PID file: '$got')"
        details multi-app "$M/run.err"
        return 1
    fi
}

# The last `count N` of counter $1's log.
last_count() {
    sed -n 's/^count \([0-9]*\)$/\1/p' "$WORK/$1/app.log" | tail -n 1
}

# Waits for counter $1 to print count $2.
count_reaches() {
    wait_for_line "$WORK/$1/app.log" "^count $2\$" 20
}

# The managed apps of the hibernation: two counters, the second under a
# shell that waits for it (a tree with a child), in $WORK/counter-a and
# $WORK/counter-b.
start_counters() {
    start_managed counter-a /bench/apps/counter "$COUNTER_MS"
    start_managed counter-b /bin/sh -c "/bench/apps/counter $COUNTER_MS & echo \$! >child.pid; wait"
    for c in counter-a counter-b; do
        if ! count_reaches "$c" 2; then
            error "managed $c did not count to 2"
            details hibernate-refused "$WORK/$c/app.log"
            details hibernate-refused "$WORK/$c/run.err"
            return 1
        fi
    done
}

# A managed app holding a netlink socket with a reply unread (badfd): `torpor hibernate --all`
# must be refused naming it, the power stays on, every app runs on and
# badfd verifies it was left untouched.
hibernate_refused() {
    start_managed netlink /bench/apps/badfd
    pn=$pid
    if ! wait_for_line "$WORK/netlink/app.log" '^READY badfd$' "$BENCH_READY_TIMEOUT" "$pn"; then
        result hibernate-refused FAIL "the managed badfd printed no READY"
        details hibernate-refused "$WORK/netlink/app.log"
        return 1
    fi
    echo "TORPOR-STORY apps: counter-a pid $(cat "$WORK/counter-a/root.pid"), counter-b pid" \
        "$(cat "$WORK/counter-b/root.pid") (child $(cat "$WORK/counter-b/child.pid")), netlink pid $pn (holds a netlink socket)"
    "$TORPOR" hibernate --status --config /etc/torpor.toml >/tmp/status.out 2>&1
    sed 's/^/TORPOR-STORY hibernate --status: /' /tmp/status.out
    a=$(last_count counter-a) b=$(last_count counter-b)
    t0=$(uptime_ms)
    torpor_bounded hibernate-refused /tmp/refused.out hibernate --all --config /etc/torpor.toml
    rc=$?
    echo "TORPOR-TIME hibernate-refused dump $(($(uptime_ms) - t0))"
    line=$(grep '^torpor: error: ' /tmp/refused.out | head -n 1)
    echo "TORPOR-STORY torpor hibernate --all: exit $rc: $line"
    problems=
    [ "$rc" -eq 1 ] || problems="$problems; exit $rc, not 1"
    case "$line" in
        "torpor: error: DumpFailed: no app hibernated: checkpoint failed: app netlink (pid $pn): files $pn: fd 7 "*"a netlink socket: "[0-9]*" bytes of messages wait unread in its receive queue, which torpor cannot queue again") ;;
        *) problems="$problems; the error does not name app netlink (pid $pn) and fd 7" ;;
    esac
    count_reaches counter-a $((a + 2)) || problems="$problems; counter-a stopped at $(last_count counter-a)"
    count_reaches counter-b $((b + 2)) || problems="$problems; counter-b stopped at $(last_count counter-b)"
    W=$WORK/netlink pid=$pn
    : >"$W/go"
    wait_for_line "$W/app.log" '^(PASS|FAIL)' "$BENCH_VERIFY_TIMEOUT" "$pn"
    verdict=$(grep -E '^(PASS|FAIL)' "$W/app.log" | head -n 1)
    [ "$verdict" = "PASS badfd" ] || problems="$problems; badfd after the refusal: '$verdict'"
    wait "$pn" 2>/dev/null
    if [ -n "$problems" ]; then
        result hibernate-refused FAIL "${problems#; }"
        details hibernate-refused /tmp/refused.out
        return 1
    fi
    result hibernate-refused PASS "$line; no power cut; counter-a counted on from $a to" \
        "$(last_count counter-a), counter-b from $b to $(last_count counter-b), badfd verified itself"
}

# Boot 1: two managed counters run; a managed app holding a netlink socket
# makes `torpor hibernate --all` fail and ends; then the managed
# sleepy-counter counts on the console and asks to hibernate at
# $BENCH_SLEEP_AT: every managed tree goes into one image and the daemon
# cuts the power (the host kills the board).
job_hibernate() {
    store_ready hibernate || return 0
    mkdir -p "$HIB"
    "$TORPOR" store clear --store "$BENCH_STORE" || { error "torpor store clear failed"; return 1; }
    write_config 2 syslog
    start_syslogd
    start_init_hook || return 1
    # Above the pids the next boot uses before its restore (see job_suspend).
    echo 1999 >/proc/sys/kernel/ns_last_pid
    start_counters || return 1
    hibernate_refused || return 1
    (cd "$HIB" && exec "$TORPOR" run --name sleepy --config /etc/torpor.toml -- \
        "$SLEEPY" /run/torpor.sock "$BENCH_SLEEP_AT" "$BENCH_END_AT" </dev/null >/dev/console 2>&1) &
    pid=$!
    echo "$pid" >"$HIB/pid"
    sync
    echo "TORPOR-HIBERNATE-APP pid=$pid"
    # Frozen by the daemon, the app shows state t (tracing stop), which
    # pid_gone reads as gone: wait for its exit instead.
    wait "$pid"
    rc=$?
    sleep 2
    result hibernate FAIL "sleepy-counter (pid $pid) exited with $rc without the power being cut"
}

# Boot 2, after `torpor boot` restored every tree: each app's `torpor run`
# line adopts its pid, the counters go on from the count they stood at
# ($1, $2), the child still runs under counter-b's shell, and each counter
# verifies its whole log.
wake_counters() {
    before_a=$1 before_b=$2
    problems=
    pa=$(cat "$WORK/counter-a/root.pid") pb=$(cat "$WORK/counter-b/root.pid") pc=$(cat "$WORK/counter-b/child.pid")
    # sleepy-counter first: it counts on to $BENCH_END_AT and ends, and a
    # line run after its end would start it afresh.
    adopt_managed sleepy "$pid" "$SLEEPY" /run/torpor.sock "$BENCH_SLEEP_AT" "$BENCH_END_AT"
    adopt_managed counter-a "$pa" /bench/apps/counter "$COUNTER_MS"
    adopt_managed counter-b "$pb" /bin/sh -c "/bench/apps/counter $COUNTER_MS & echo \$! >child.pid; wait"
    kids=$(cat "/proc/$pb/task/$pb/children" 2>/dev/null)
    [ "$kids" = "$pc " ] || problems="$problems; counter-b (pid $pb) has children '$kids', not $pc"
    for c in counter-a:"$before_a" counter-b:"$before_b"; do
        name=${c%%:*} n=${c#*:}
        count_reaches "$name" $((n + 1)) || problems="$problems; $name did not go on from count $n"
        next=$(sed -n "/^count $n\$/{n;p;}" "$WORK/$name/app.log")
        [ "$next" = "count $((n + 1))" ] || problems="$problems; after count $n $name printed '$next'"
        echo "TORPOR-STORY $name: count $n before the power cut, then $next"
    done
    for name in counter-a counter-b; do
        W=$WORK/$name
        : >"$W/go"
        wait_for_line "$W/app.log" '^(PASS|FAIL)' "$BENCH_VERIFY_TIMEOUT"
        verdict=$(grep -E '^(PASS|FAIL)' "$W/app.log" | head -n 1)
        [ "$verdict" = "PASS counter" ] || problems="$problems; $name: '$verdict'"
    done
    if [ -n "$problems" ]; then
        result multi-app FAIL "${problems#; }"
        details multi-app "$WORK/counter-a/app.log"
        details multi-app "$WORK/counter-b/app.log"
        return
    fi
    result multi-app PASS "counter-a pid $pa went on from count $before_a, counter-b pid $pb from count" \
        "$before_b with its child $pc, sleepy pid $pid resumed; each adopted by its torpor run line and verified"
}

# Boot 2: the init hook's order: daemon, then `torpor boot`; the restored
# app prints what it received and verifies itself on the console.
job_wake() {
    pid=$(cat "$HIB/pid" 2>/dev/null)
    # Where the counters stood at the cut: what reached the SD card.
    before_a=$(last_count counter-a) before_b=$(last_count counter-b)
    write_config 2 syslog
    start_syslogd
    start_init_hook || return 1
    if pid_gone "$pid"; then
        result hibernate FAIL "pid $pid does not run after torpor boot"
        return 0
    fi
    echo "TORPOR-RESTORED pid=$pid"
    wake_counters "$before_a" "$before_b"
    wait_pid_gone "$pid" 120 || result hibernate FAIL "pid $pid still runs 120 s after the restore"
    store_status
    /etc/init.d/S01torpor stop
    rc=$?
    state=gone
    kill -0 "$daemon_pid" 2>/dev/null && state=alive
    echo "TORPOR-INIT-HOOK stop rc=$rc daemon=$state"
    # What the daemon, detached by the init hook, told syslog.
    sed 's/^/TORPOR-SYSLOG /' /tmp/messages
}

# Cold start through `torpor run`: $1 app, $2 result tag, $3 command, $4 why.
cold_start() {
    app=$1 tag=$2
    C=$WORK/$app-cold
    rm -rf "$C"
    mkdir -p "$C"
    (cd "$C" && exec "$TORPOR" run --name "$app" --config /etc/torpor.toml --pidfile "$C/pid" \
        -- "$3" </dev/null >app.log 2>&1) &
    if wait_for_line "$C/app.log" '^READY( |$)' "$BENCH_READY_TIMEOUT"; then
        result "$tag" PASS "$4; $app cold-started by torpor run as pid $(cat "$C/pid")"
    else
        result "$tag" FAIL "the cold start of $app printed no READY"
        details "$tag" "$C/app.log"
    fi
    kill -KILL "$(cat "$C/pid" 2>/dev/null)" 2>/dev/null
}

# One boot: an image whose bytes were flipped must give a cold start.
job_corrupt() {
    store_ready corrupt-image || return 0
    "$TORPOR" store clear --store "$BENCH_STORE" || return 1
    write_config 2
    app=counter
    start_app "$app"
    app_ready "$app" || return 0
    dump_app "$app" || return 0
    bytes=$(($(cat "/sys/class/block/${BENCH_STORE#/dev/}/size") * 512))
    slot=$((bytes / 2 / 4096 * 4096))
    # Both slots' image areas, 64 bytes in: whichever holds the image.
    for base in 0 "$slot"; do
        printf 'CORRUPTED-BY-THE-BENCH' | dd of="$BENCH_STORE" bs=1 seek=$((base + 4096 + 64)) 2>/dev/null
    done
    sync
    echo 3 >/proc/sys/vm/drop_caches
    "$TORPOR" boot --config /etc/torpor.toml >"$W/boot.out" 2>&1
    rc=$?
    cat "$W/boot.out"
    line=$(grep -E 'cold start: image generation [0-9]+ in slot [AB] is corrupt' "$W/boot.out")
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        result corrupt-image FAIL "torpor boot (exit $rc) did not report the corrupt image"
        details corrupt-image "$W/boot.out"
        return 0
    fi
    if ! pid_gone "$pid"; then
        result corrupt-image FAIL "pid $pid runs after a corrupt image"
        return 0
    fi
    cold_start "$app" corrupt-image "/bench/apps/$app" "${line#*: }"
}

# Boot 1 of 3: an image of an app whose executable then changes on the SD
# card, so every restore of it is refused.
job_attempts_seed() {
    store_ready restore-attempts || return 0
    "$TORPOR" store clear --store "$BENCH_STORE" || return 1
    app=counter
    A=$WORK/attempts
    rm -rf "$A"
    mkdir -p "$A"
    cp "/bench/apps/$app" "$A/$app"
    W=$A
    echo 1999 >/proc/sys/kernel/ns_last_pid
    (cd "$A" && exec "$A/$app" </dev/null >app.log 2>&1) &
    pid=$!
    app_ready "$app" || return 0
    dump_app "$app" || return 0
    echo "changed after the dump" >>"$A/$app"
    sync
    echo "TORPOR-ATTEMPTS-SEEDED app=$app pid=$pid"
}

# Boots 2 and 3: the boot hook tries, fails, and at the last attempt gives up.
job_attempts_boot() {
    app=counter
    write_config 2
    "$TORPOR" boot --config /etc/torpor.toml >/tmp/boot.out 2>&1
    rc=$?
    cat /tmp/boot.out
    info boot-rc "$rc"
    store_status
    line=$(grep -E 'giving up' /tmp/boot.out)
    if [ -n "$line" ]; then
        cold_start "$app" restore-attempts "$WORK/attempts/$app" "${line#*: }"
    fi
}

# ---- 32-bit userland on a 64-bit kernel --------------------------------
# The ARMv6 torpor (/usr/bin/torpor32) and the ARMv6 counter
# (/bench/apps32/counter) beside the native ones, on the arm64 kernel.

# $1 tag, $2 torpor, $3 app binary, $4 regex the refusal must match.
compat_refused() {
    tag=$1
    W=$WORK/$tag
    rm -rf "$W"
    mkdir -p "$W"
    (cd "$W" && exec "$3" </dev/null >app.log 2>&1) &
    pid=$!
    app_ready "$tag" || return 0
    TORPOR=$2
    torpor_bounded "$tag" "$W/dump.out" dump --pid "$pid" --store "$BENCH_STORE"
    rc=$?
    TORPOR=/usr/bin/torpor
    if [ "$rc" -ne 1 ] || ! grep -Eq "$4" "$W/dump.out"; then
        result "$tag" FAIL "$2 dump --pid $pid exited with $rc, expected a refusal matching '$4'"
        details "$tag" "$W/dump.out"
        stop_app
    elif pid_gone "$pid"; then
        result "$tag" FAIL "pid $pid is gone after a refused dump"
        details "$tag" "$W/dump.out"
    else
        : >"$W/go"
        if wait_for_line "$W/app.log" '^PASS counter' "$BENCH_VERIFY_TIMEOUT" "$pid"; then
            result "$tag" PASS "$(grep -E '^torpor: error: ' "$W/dump.out" | head -n 1)"
        else
            result "$tag" FAIL "the app did not run on after the refusal"
            details "$tag" "$W/app.log"
            stop_app
        fi
    fi
}

job_compat() {
    if [ ! -x /usr/bin/torpor32 ]; then
        echo "TORPOR-SKIP compat this board has no 32-bit torpor"
        return 0
    fi
    info torpor32-version "$(/usr/bin/torpor32 --version 2>&1)"
    # The 32-bit torpor checkpoints and restores a 32-bit app, as on a
    # Zero 2 W running Raspberry Pi OS 32-bit on its 64-bit kernel.
    app=counter
    W=$WORK/compat-32
    rm -rf "$W"
    mkdir -p "$W"
    (cd "$W" && exec /bench/apps32/counter </dev/null >app.log 2>&1) &
    pid=$!
    if app_ready compat-32; then
        TORPOR=/usr/bin/torpor32
        if dump_app compat-32 && restore_app compat-32 restore; then
            : >"$W/go"
            if wait_for_line "$W/app.log" '^PASS counter' "$BENCH_VERIFY_TIMEOUT" "$pid"; then
                result compat-32 PASS "32-bit torpor: 32-bit counter checkpointed and restored"
            else
                result compat-32 FAIL "no PASS counter after the restore"
                details compat-32 "$W/app.log"
            fi
        fi
        TORPOR=/usr/bin/torpor
    fi
    compat_refused compat-32-on-64 /usr/bin/torpor32 /bench/apps/counter \
        'task [0-9]+ runs 64-bit ARM \(AArch64\) code'
    compat_refused compat-64-on-32 /usr/bin/torpor /bench/apps32/counter \
        'task [0-9]+ runs 32-bit ARM \(AArch32\) code'
}

# One boot: a user not in access.allow_users asks to hibernate; the daemon
# refuses and the app runs on.
job_unauthorized() {
    store_ready unauthorized || return 0
    "$TORPOR" store clear --store "$BENCH_STORE" || return 1
    write_config 2
    start_torpor_daemon || return 1
    U=$WORK/unauthorized
    rm -rf "$U"
    mkdir -p "$U"
    (cd "$U" && SLEEPY_UID=1000 exec "$SLEEPY" /run/torpor.sock 3 8 </dev/null >app.log 2>&1) &
    if ! wait_for_line "$U/app.log" '^(PASS|FAIL)' 60; then
        result unauthorized FAIL "no verdict from sleepy-counter within 60 s"
        details unauthorized "$U/app.log"
        return 0
    fi
    cat "$U/app.log"
    if grep -q '^daemon error (kind 0): ' "$U/app.log" && grep -q '^hibernate refused; running on' "$U/app.log" \
        && grep -q '^counter 8$' "$U/app.log" && grep -q '^PASS sleepy-counter (not hibernated)' "$U/app.log"; then
        result unauthorized PASS "$(grep '^daemon error' "$U/app.log"); the app counted on to 8"
    else
        result unauthorized FAIL "unexpected output"
        details unauthorized "$U/app.log"
    fi
    store_status
}

# The SD card's host driver, where the kernel has it as a module (the Pi
# Zero 2 W's arm64 kernel): the card and its partitions appear once it runs.
for module in $BENCH_CARD_MODULES; do
    insmod "/lib/modules/$module" || { error "insmod $module failed"; exit 1; }
done
wait_for_store || exit 1
case "$1" in
    store-seed | store-cut | store-check)
        # These boots are cut in the middle of a store write: then nothing
        # but the raw store may be in flight, or the cut could tear the
        # rootfs journal the other jobs need. Their work lives in tmpfs.
        load_modules || exit 1
        WORK=/tmp/bench
        ;;
    *) mount_data || exit 1 ;;
esac
mkdir -p "$WORK"
case "$1" in
    test) job_test ;;
    gpio) job_gpio ;;
    suspend) job_suspend ;;
    resume) job_resume ;;
    boot-check) info marker "$(cat "$WORK/power-cut-marker" 2>/dev/null)" ;;
    store-seed) job_store_seed ;;
    store-cut) job_store_cut ;;
    store-check) job_store_check ;;
    hibernate) job_hibernate ;;
    wake) job_wake ;;
    corrupt) job_corrupt ;;
    attempts-seed) job_attempts_seed ;;
    attempts-boot) job_attempts_boot ;;
    unauthorized) job_unauthorized ;;
    compat) job_compat ;;
    *) error "unknown bench mode '$1'"; exit 2 ;;
esac

/*
 * breadth_clock: CLOCK_MONOTONIC, CLOCK_BOOTTIME and the timers counted on
 * them across a checkpoint (docs/objects.md, "Clocks and time namespaces").
 *
 * Before READY: the clocks read through the vDSO (clock_gettime) and
 * through the syscall, CLOCK_REALTIME, the boot id and the time namespace;
 * armed on CLOCK_MONOTONIC:
 *   10 timerfd, relative, 3000 ms
 *   11 timerfd, TFD_TIMER_ABSTIME at now + 3500 ms
 *      a POSIX timer, relative, 3200 ms, SIGRTMIN+2 (blocked), value 0x7c1
 * After go, by what the restore gave the app:
 *   - a new time namespace (/proc/self/ns/time changed): the monotonic clock
 *     advanced by at most the wall-clock time minus GAP_MS (the time asleep
 *     does not count), the boottime clock by the wall-clock time (so by at
 *     least GAP_MS); /proc/self/timens_offsets changed; every timer fires
 *     at its deadline on the namespace's clock, never before, less than
 *     LATE_MS after; the absolute one has its deadline minus the
 *     namespace's clock left, to within a millisecond.
 *   - the same boot, host clocks (no checkpoint, --no-timens, or a kernel
 *     without time namespaces): monotonic and boottime advanced with the
 *     wall clock, by at least GAP_MS; the timers fire at least GAP_MS late
 *     (re-armed with the time they had left), less than GAP_MS + LATE_MS.
 *   - another boot (a power cycle without time namespaces): the clocks are
 *     the new boot's (boottime agrees with /proc/uptime, monotonic is not
 *     ahead of it); the timers fire within the time they had left.
 * In every case the vDSO and the syscall agree (vDSO ≤ syscall ≤ vDSO), in
 * the main thread and in a second one, which is in the same namespace.
 * It prints "MODE timens|host|power-cycle" before its verdict.
 *
 * Usage: breadth_clock [GAP_MS [LATE_MS]] [--selftest-fail=monotonic|
 *        boottime|vdso|timerfd|abstime|posix]
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

#define REL_MS 3000
#define ABS_MS 3500
#define POSIX_MS 3200
#define POSIX_VALUE 0x7c1
/* Wall and monotonic clocks drift apart by NTP slewing only: 500 ppm at most. */
#define SLEW_NS MS(20)
/* torpor reads a deadline to within 0.1 ms of the clock (timerfd.rs). */
#define EXACT_NS MS(1)
/* Two samples taken together differ by scheduling only. */
#define TOGETHER_NS MS(100)

/* The kernel's 64-bit timespec: 32-bit ARM reads it with clock_gettime64,
 * 64-bit machines with clock_gettime. */
struct k_timespec64 {
    int64_t sec, nsec;
};

static int64_t sys_ns(clockid_t c)
{
    struct k_timespec64 ts = { 0, 0 };
#ifdef SYS_clock_gettime64
    syscall(SYS_clock_gettime64, c, &ts);
#else
    syscall(SYS_clock_gettime, c, &ts);
#endif
    return ts.sec * 1000000000 + ts.nsec;
}

struct sample {
    int64_t mono, boot, real;
    int64_t mono_sys, boot_sys;
};

static struct sample sample_now(void)
{
    struct sample s;
    s.mono = clock_ns(CLOCK_MONOTONIC);
    s.boot = clock_ns(CLOCK_BOOTTIME);
    s.mono_sys = sys_ns(CLOCK_MONOTONIC);
    s.boot_sys = sys_ns(CLOCK_BOOTTIME);
    s.real = clock_ns(CLOCK_REALTIME);
    return s;
}

/* vDSO, syscall, vDSO: the syscall's reading lies between the two others. */
static void check_vdso_agrees(clockid_t c, const char *name, int64_t skew)
{
    int64_t a = clock_ns(c), s = sys_ns(c) + skew, b = clock_ns(c);
    if (!(a <= s && s <= b))
        fail("%s: the vDSO read %lld and %lld around the syscall's %lld", name, (long long)a, (long long)b,
             (long long)s);
}

/* The inode of the calling thread's time namespace, or 0 on a kernel
 * without time namespaces. */
static uint64_t time_ns_inode(void)
{
    struct stat st;
    if (stat("/proc/thread-self/ns/time", &st) != 0)
        return 0;
    return (uint64_t)st.st_ino;
}

static void boot_id(char *out, size_t cap)
{
    if (read_text("/proc/sys/kernel/random/boot_id", out, cap) <= 0)
        out[0] = '\0';
}

static int64_t uptime_ns(void)
{
    char buf[128];
    if (read_text("/proc/uptime", buf, sizeof buf) <= 0)
        return -1;
    long sec = 0, cs = 0;
    if (sscanf(buf, "%ld.%ld", &sec, &cs) != 2)
        return -1;
    return (int64_t)sec * 1000000000 + (int64_t)cs * 10000000;
}

static void arm(int fd, int flags, int64_t value)
{
    struct itimerspec its = { { 0, 0 }, ns_ts(value) };
    if (timerfd_settime(fd, flags, &its, NULL) != 0) {
        say("FAIL breadth_clock: timerfd_settime(%d): %s\n", fd, strerror(errno));
        _exit(3);
    }
}

/* A second thread, blocked in read until go: restored with clone3 and
 * CLONE_VM, it must be in the process's time namespace and read the same
 * clocks through the vDSO and the syscall. */
static int wake[2];
static pthread_t helper;
static uint64_t helper_ns;

static void *helper_main(void *arg)
{
    (void)arg;
    char c;
    while (read(wake[0], &c, 1) < 0 && errno == EINTR)
        ;
    helper_ns = time_ns_inode();
    check_vdso_agrees(CLOCK_MONOTONIC, "CLOCK_MONOTONIC in the second thread", 0);
    check_vdso_agrees(CLOCK_BOOTTIME, "CLOCK_BOOTTIME in the second thread", 0);
    return NULL;
}

static void start_helper(void)
{
    if (pipe(wake) != 0 || pthread_create(&helper, NULL, helper_main, NULL) != 0) {
        say("FAIL breadth_clock: starting the second thread: %s\n", strerror(errno));
        _exit(3);
    }
}

static void run_helper(uint64_t ns_now)
{
    if (write(wake[1], "g", 1) != 1 || pthread_join(helper, NULL) != 0) {
        fail("second thread: could not wake and join it");
        return;
    }
    if (helper_ns != ns_now)
        fail("second thread: time namespace %llu, the process's is %llu", (unsigned long long)helper_ns,
             (unsigned long long)ns_now);
}

static struct sample at_ready;
static uint64_t ns_at_ready;
static char boot_at_ready[64], offsets_at_ready[256];
static timer_t posix_timer;
/* Each relative deadline lies between the clock read before arming plus the
 * duration and the clock read after arming plus the duration. */
static int64_t rel_lo, rel_hi, posix_lo, posix_hi, abs_deadline;
static int64_t gap, late;

static void setup(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 2);
    sigprocmask(SIG_BLOCK, &set, NULL);

    fd_at(timerfd_create(CLOCK_MONOTONIC, 0), 10, "timerfd 10");
    rel_lo = clock_ns(CLOCK_MONOTONIC) + MS(REL_MS);
    arm(10, 0, MS(REL_MS));
    rel_hi = clock_ns(CLOCK_MONOTONIC) + MS(REL_MS);

    fd_at(timerfd_create(CLOCK_MONOTONIC, 0), 11, "timerfd 11");
    abs_deadline = clock_ns(CLOCK_MONOTONIC) + MS(ABS_MS);
    arm(11, TFD_TIMER_ABSTIME, abs_deadline);

    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN + 2;
    sev.sigev_value.sival_int = POSIX_VALUE;
    if (timer_create(CLOCK_MONOTONIC, &sev, &posix_timer) != 0) {
        say("FAIL breadth_clock: timer_create: %s\n", strerror(errno));
        _exit(3);
    }
    struct itimerspec its = { { 0, 0 }, ns_ts(MS(POSIX_MS)) };
    posix_lo = clock_ns(CLOCK_MONOTONIC) + MS(POSIX_MS);
    if (timer_settime(posix_timer, 0, &its, NULL) != 0) {
        say("FAIL breadth_clock: timer_settime: %s\n", strerror(errno));
        _exit(3);
    }
    posix_hi = clock_ns(CLOCK_MONOTONIC) + MS(POSIX_MS);

    start_helper();
    ns_at_ready = time_ns_inode();
    boot_id(boot_at_ready, sizeof boot_at_ready);
    if (read_text("/proc/self/timens_offsets", offsets_at_ready, sizeof offsets_at_ready) < 0)
        offsets_at_ready[0] = '\0';
    at_ready = sample_now();
}

enum mode { TIMENS, HOST, POWER_CYCLE };
static const char *mode_name[] = { "timens", "host", "power-cycle" };

/* Pushes a timer's expiry `by` ns later than it was. */
static void delay_timerfd(int fd, int64_t by)
{
    struct itimerspec cur;
    timerfd_gettime(fd, &cur);
    arm(fd, 0, ts_ns(cur.it_value) + by);
}

static void perturb_state(void)
{
    if (perturb("monotonic"))
        at_ready.mono += MS(5000);
    if (perturb("boottime"))
        at_ready.boot += MS(5000);
    if (perturb("timerfd"))
        delay_timerfd(10, MS(2000) + gap + late);
    if (perturb("abstime"))
        arm(11, TFD_TIMER_ABSTIME, abs_deadline - MS(1000));
    if (perturb("posix")) {
        struct itimerspec cur;
        timer_gettime(posix_timer, &cur);
        cur.it_value = ns_ts(ts_ns(cur.it_value) + MS(2000) + gap + late);
        timer_settime(posix_timer, 0, &cur, NULL);
    }
}

/* A timer that fired at `fired` (its clock) with its deadline in [lo, hi]. */
static void check_fired(const char *what, enum mode m, int64_t fired, int64_t lo, int64_t hi, int64_t go_at,
                        int64_t duration)
{
    if (m == POWER_CYCLE) {
        /* The old boot's deadline means nothing here: within its time left. */
        if (fired - go_at > duration + TOGETHER_NS)
            fail("%s: fired %lld ms after go, more than its %lld ms", what, (long long)((fired - go_at) / 1000000),
                 (long long)(duration / 1000000));
        return;
    }
    if (fired < lo) {
        fail("%s: fired at %lld, %lld us before its deadline %lld", what, (long long)fired,
             (long long)((lo - fired) / 1000), (long long)lo);
        return;
    }
    int64_t late_by = fired - hi;
    int64_t min_late = m == HOST ? gap : 0;
    int64_t max_late = m == HOST ? gap + late : late;
    if (late_by < min_late || late_by >= max_late)
        fail("%s: fired %lld ms after its deadline, expected %lld to %lld (%s clocks)", what,
             (long long)(late_by / 1000000), (long long)(min_late / 1000000), (long long)(max_late / 1000000),
             mode_name[m]);
}

static void verify(void)
{
    uint64_t ns_now = time_ns_inode();
    char boot_now[64], offsets_now[256];
    boot_id(boot_now, sizeof boot_now);
    if (read_text("/proc/self/timens_offsets", offsets_now, sizeof offsets_now) < 0)
        offsets_now[0] = '\0';
    enum mode m = HOST;
    if (ns_now != 0 && ns_now != ns_at_ready)
        m = TIMENS;
    else if (strcmp(boot_now, boot_at_ready) != 0)
        m = POWER_CYCLE;
    say("MODE %s\n", mode_name[m]);

    check_vdso_agrees(CLOCK_MONOTONIC, "CLOCK_MONOTONIC", perturb("vdso") ? MS(1000) : 0);
    check_vdso_agrees(CLOCK_BOOTTIME, "CLOCK_BOOTTIME", 0);
    run_helper(ns_now);

    struct sample now = sample_now();
    int64_t dm = now.mono - at_ready.mono, db = now.boot - at_ready.boot, dr = now.real - at_ready.real;
    long long dm_ms = dm / 1000000, db_ms = db / 1000000, dr_ms = dr / 1000000;
    switch (m) {
    case TIMENS:
        if (strcmp(offsets_now, offsets_at_ready) == 0)
            fail("timens_offsets: unchanged in a new time namespace: %s", offsets_now);
        if (dm < 0 || dm > dr - gap + SLEW_NS)
            fail("monotonic: advanced %lld ms while the wall clock advanced %lld ms; expected 0 to %lld ms (the "
                 "%lld ms asleep not counted)",
                 dm_ms, dr_ms, (long long)((dr - gap) / 1000000), (long long)(gap / 1000000));
        if (db < gap || db < dr - TOGETHER_NS || db > dr + TOGETHER_NS)
            fail("boottime: advanced %lld ms while the wall clock advanced %lld ms (asleep at least %lld ms)", db_ms,
                 dr_ms, (long long)(gap / 1000000));
        break;
    case HOST:
        if (dm < gap || dm < dr - TOGETHER_NS || dm > dr + SLEW_NS)
            fail("monotonic: advanced %lld ms while the wall clock advanced %lld ms (asleep at least %lld ms)", dm_ms,
                 dr_ms, (long long)(gap / 1000000));
        if (db < gap || db < dr - TOGETHER_NS || db > dr + SLEW_NS)
            fail("boottime: advanced %lld ms while the wall clock advanced %lld ms (asleep at least %lld ms)", db_ms,
                 dr_ms, (long long)(gap / 1000000));
        break;
    case POWER_CYCLE: {
        int64_t up = uptime_ns();
        if (now.mono > now.boot)
            fail("monotonic: %lld ms is ahead of boottime %lld ms", (long long)(now.mono / 1000000),
                 (long long)(now.boot / 1000000));
        if (up < 0 || now.boot < up - TOGETHER_NS || now.boot > up + TOGETHER_NS)
            fail("boottime: %lld ms, /proc/uptime says %lld ms: not the new boot's clock",
                 (long long)(now.boot / 1000000), (long long)(up / 1000000));
        break;
    }
    }

    /* In a namespace the absolute deadline is the app's own, to the ns:
     * what is left is exactly the deadline minus the namespace's clock. */
    if (m == TIMENS) {
        struct itimerspec cur;
        int64_t before = clock_ns(CLOCK_MONOTONIC);
        timerfd_gettime(11, &cur);
        int64_t after = clock_ns(CLOCK_MONOTONIC), left = ts_ns(cur.it_value);
        if (left > 0 && (left > abs_deadline - before + EXACT_NS || left < abs_deadline - after - EXACT_NS))
            fail("absolute timerfd: %lld ns left, expected %lld to %lld (deadline %lld on the namespace's clock)",
                 (long long)left, (long long)(abs_deadline - after - EXACT_NS),
                 (long long)(abs_deadline - before + EXACT_NS),
                 (long long)abs_deadline);
    }

    int64_t go_at = now.mono;
    uint64_t ticks;
    if (read(10, &ticks, sizeof ticks) != sizeof ticks || ticks != 1)
        fail("timerfd 10: read %llu expirations, expected 1", (unsigned long long)ticks);
    check_fired("relative timerfd", m, clock_ns(CLOCK_MONOTONIC), rel_lo, rel_hi, go_at, MS(REL_MS));

    siginfo_t si;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGRTMIN + 2);
    if (sigwaitinfo(&set, &si) != SIGRTMIN + 2 || si.si_code != SI_TIMER || si.si_value.sival_int != POSIX_VALUE)
        fail("POSIX timer: expected SIGRTMIN+2 from SI_TIMER with value 0x%x, got signal %d code %d value 0x%x",
             POSIX_VALUE, si.si_signo, si.si_code, si.si_value.sival_int);
    check_fired("POSIX timer", m, clock_ns(CLOCK_MONOTONIC), posix_lo, posix_hi, go_at, MS(POSIX_MS));

    ticks = 0;
    if (read(11, &ticks, sizeof ticks) != sizeof ticks || ticks != 1)
        fail("timerfd 11: read %llu expirations, expected 1", (unsigned long long)ticks);
    check_fired("absolute timerfd", m, clock_ns(CLOCK_MONOTONIC), abs_deadline, abs_deadline, go_at, MS(ABS_MS));
}

int main(int argc, char **argv)
{
    app_init("breadth_clock", argc, argv);
    gap = MS(app_arg(0, 0));
    late = MS(app_arg(1, 1500));
    setup();
    ready();
    wait_go();
    perturb_state();
    verify();
    return finish();
}

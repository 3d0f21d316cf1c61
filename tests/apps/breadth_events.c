/*
 * breadth_events: eventfd, timerfd, signalfd, epoll and inotify keep their
 * state and their behaviour across a checkpoint.
 *
 * Before READY, at fixed fd numbers:
 *   10 eventfd, EFD_SEMAPHORE|EFD_NONBLOCK, count 7
 *   11 eventfd, blocking, count 0x100000005 (above 32 bits)
 *   12 timerfd CLOCK_MONOTONIC, one-shot 60 s
 *   13 timerfd CLOCK_MONOTONIC, every 50 ms, TFD_NONBLOCK
 *   14 timerfd CLOCK_REALTIME, TFD_TIMER_ABSTIME at now + 90 s
 *   15 timerfd CLOCK_MONOTONIC, one-shot 5 ms, expired once and not read
 *   16 signalfd for SIGUSR1 and SIGRTMIN+1, SFD_NONBLOCK; SIGUSR1 and two
 *      SIGRTMIN+1 (values 42, 43) queued and blocked
 *   17 epoll: 10 (EPOLLIN, data 0xa10), 11 (EPOLLIN|EPOLLET, 0xb11),
 *      15 (EPOLLIN, 0xd15), 18 (EPOLLIN, 0xc18)
 *   18/19 a pipe, empty
 *   20 inotify: wd 1 on the work directory (IN_CREATE|IN_DELETE), wd 2 on
 *      sub (removed again), wd 3 on sub2 (IN_CLOSE_WRITE)
 * After go: epoll reports exactly 10, 11 and 15 ready, then the pipe once a
 * byte is written; the eventfds read back 1 seven times then EAGAIN, and
 * 0x100000005; the timers have their clocks, intervals and time left (the
 * realtime one its deadline), the periodic one ticks, the expired one reads
 * 1; the signalfd reads SIGUSR1, then SIGRTMIN+1 with 42 and 43, then
 * EAGAIN; the inotify watches keep wd, mask and path and report a file
 * created in the work directory and one written in sub2.
 *
 * Usage: breadth_events [--selftest-fail=eventfd|semaphore|timerfd|interval|
 *        realtime|ticks|signalfd|epoll|inotify]
 */
#include "common.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

#define BIG_COUNT 0x100000005ULL
#define RT_AHEAD_S 90

static void arm(int fd, int flags, int64_t value, int64_t interval)
{
    struct itimerspec its = { ns_ts(interval), ns_ts(value) };
    if (timerfd_settime(fd, flags, &its, NULL) != 0) {
        say("FAIL breadth_events: timerfd_settime(%d): %s\n", fd, strerror(errno));
        _exit(3);
    }
}

/* The value of a "key:" line of /proc/self/fdinfo/FD, or "" */
static void fdinfo_field(int fd, const char *key, char *out, size_t cap)
{
    char path[64], buf[4096];
    out[0] = '\0';
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    if (read_text(path, buf, sizeof buf) <= 0)
        return;
    size_t kl = strlen(key);
    for (char *l = buf; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, key, kl) == 0 && l[kl] == ':') {
            char *v = l + kl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t n = strcspn(v, "\n");
            if (n >= cap)
                n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return;
        }
    }
}

static int64_t rt_deadline;
static char sigmask_at_ready[32];

static void setup(void)
{
    fd_at(eventfd(7, EFD_SEMAPHORE | EFD_NONBLOCK), 10, "eventfd 10");
    fd_at(eventfd(0, 0), 11, "eventfd 11");
    uint64_t big = BIG_COUNT;
    if (write(11, &big, 8) != 8)
        _exit(3);

    fd_at(timerfd_create(CLOCK_MONOTONIC, 0), 12, "timerfd 12");
    arm(12, 0, MS(60000), 0);
    fd_at(timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), 13, "timerfd 13");
    arm(13, 0, MS(50), MS(50));
    fd_at(timerfd_create(CLOCK_REALTIME, 0), 14, "timerfd 14");
    rt_deadline = clock_ns(CLOCK_REALTIME) + (int64_t)RT_AHEAD_S * 1000000000;
    arm(14, TFD_TIMER_ABSTIME, rt_deadline, 0);
    fd_at(timerfd_create(CLOCK_MONOTONIC, 0), 15, "timerfd 15");
    arm(15, 0, MS(5), 0);
    sleep_ns(MS(30));

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGRTMIN + 1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    fd_at(signalfd(-1, &set, SFD_NONBLOCK), 16, "signalfd 16");
    fdinfo_field(16, "sigmask", sigmask_at_ready, sizeof sigmask_at_ready);
    kill(getpid(), SIGUSR1);
    union sigval v;
    v.sival_int = 42;
    sigqueue(getpid(), SIGRTMIN + 1, v);
    v.sival_int = 43;
    sigqueue(getpid(), SIGRTMIN + 1, v);

    int p[2];
    if (pipe(p) != 0)
        _exit(3);
    fd_at(p[0], 18, "pipe read end");
    fd_at(p[1], 19, "pipe write end");
    fd_at(epoll_create1(0), 17, "epoll 17");
    struct { int fd; uint32_t ev; uint64_t data; } reg[] = {
        { 10, EPOLLIN, 0xa10 }, { 11, EPOLLIN | EPOLLET, 0xb11 }, { 15, EPOLLIN, 0xd15 }, { 18, EPOLLIN, 0xc18 },
    };
    for (size_t i = 0; i < sizeof reg / sizeof reg[0]; i++) {
        struct epoll_event e = { .events = reg[i].ev, .data.u64 = reg[i].data };
        if (epoll_ctl(17, EPOLL_CTL_ADD, reg[i].fd, &e) != 0)
            _exit(3);
    }

    mkdir("sub", 0755);
    mkdir("sub2", 0755);
    fd_at(inotify_init1(0), 20, "inotify 20");
    if (inotify_add_watch(20, ".", IN_CREATE | IN_DELETE) != 1 || inotify_add_watch(20, "sub", IN_CREATE) != 2 ||
        inotify_rm_watch(20, 2) != 0 || inotify_add_watch(20, "sub2", IN_CLOSE_WRITE) != 3) {
        say("FAIL breadth_events: inotify watches 1-3: %s\n", strerror(errno));
        _exit(3);
    }
    char buf[4096];
    /* The IN_IGNORED of wd 2. */
    if (read(20, buf, sizeof buf) <= 0)
        _exit(3);
}

static void perturbations(void)
{
    if (perturb("eventfd")) {
        uint64_t one = 1;
        if (write(10, &one, 8) != 8)
            _exit(3);
    }
    if (perturb("semaphore")) {
        fd_at(eventfd(7, EFD_NONBLOCK), 10, "eventfd 10 again");
        struct epoll_event e = { .events = EPOLLIN, .data.u64 = 0xa10 };
        epoll_ctl(17, EPOLL_CTL_ADD, 10, &e);
    }
    if (perturb("timerfd"))
        arm(12, 0, 0, 0);
    if (perturb("interval"))
        arm(13, 0, MS(60), MS(60));
    if (perturb("realtime"))
        arm(14, TFD_TIMER_ABSTIME, rt_deadline + MS(1000), 0);
    if (perturb("ticks")) {
        uint64_t t;
        if (read(15, &t, 8) != 8)
            _exit(3);
    }
    if (perturb("signalfd")) {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGUSR1);
        signalfd(16, &set, SFD_NONBLOCK);
    }
    if (perturb("epoll"))
        epoll_ctl(17, EPOLL_CTL_DEL, 10, NULL);
    if (perturb("inotify"))
        inotify_rm_watch(20, 3);
}

static void check_epoll(void)
{
    struct epoll_event ev[8];
    int n = epoll_wait(17, ev, 8, 0);
    uint64_t seen = 0;
    for (int i = 0; i < n; i++) {
        uint64_t d = ev[i].data.u64;
        if (d == 0xa10)
            seen |= 1;
        else if (d == 0xb11)
            seen |= 2;
        else if (d == 0xd15)
            seen |= 4;
        else
            fail("epoll ready: unexpected data 0x%llx", (unsigned long long)d);
    }
    if (n != 3 || seen != 7)
        fail("epoll ready: expected 3 (0xa10 0xb11 0xd15), got %d (mask %llx)", n, (unsigned long long)seen);
    /* Edge-triggered: 11 is not reported again until it changes. */
    n = epoll_wait(17, ev, 8, 0);
    for (int i = 0; i < n; i++)
        if (ev[i].data.u64 == 0xb11)
            fail("epoll: edge-triggered fd 11 reported twice");
    if (write(19, "x", 1) != 1)
        fail("pipe write: %s", strerror(errno));
    n = epoll_wait(17, ev, 8, 1000);
    int pipe_seen = 0;
    for (int i = 0; i < n; i++)
        if (ev[i].data.u64 == 0xc18 && (ev[i].events & EPOLLIN))
            pipe_seen = 1;
    if (!pipe_seen)
        fail("epoll: pipe fd 18 not reported after a write");
}

static void check_eventfds(void)
{
    int fl = fcntl(10, F_GETFL);
    if (!(fl & O_NONBLOCK))
        fail("eventfd 10 flags: expected O_NONBLOCK, got 0%o", fl);
    for (int i = 0; i < 7; i++) {
        uint64_t v = 0;
        ssize_t r = read(10, &v, 8);
        if (r != 8 || v != 1) {
            fail("eventfd 10 read %d: expected 1, got %lld (r %zd)", i, (long long)v, r);
            return;
        }
    }
    uint64_t v;
    if (read(10, &v, 8) != -1 || errno != EAGAIN)
        fail("eventfd 10: expected EAGAIN after 7 reads, got a value");
    fl = fcntl(11, F_GETFL);
    if (fl & O_NONBLOCK)
        fail("eventfd 11 flags: expected blocking, got 0%o", fl);
    v = 0;
    if (read(11, &v, 8) != 8 || v != BIG_COUNT)
        fail("eventfd 11: expected 0x%llx, got 0x%llx", (unsigned long long)BIG_COUNT, (unsigned long long)v);
}

static void check_timer(int fd, const char *clock, int64_t interval, int64_t value_max)
{
    char c[32];
    fdinfo_field(fd, "clockid", c, sizeof c);
    if (strcmp(c, clock) != 0)
        fail("timerfd %d clockid: expected %s, got %s", fd, clock, c);
    struct itimerspec its;
    if (timerfd_gettime(fd, &its) != 0) {
        fail("timerfd_gettime(%d): %s", fd, strerror(errno));
        return;
    }
    if (ts_ns(its.it_interval) != interval)
        fail("timerfd %d interval: expected %lld ns, got %lld ns", fd, (long long)interval,
             (long long)ts_ns(its.it_interval));
    int64_t v = ts_ns(its.it_value);
    if (value_max == 0 ? v != 0 : (v <= 0 || v > value_max))
        fail("timerfd %d left: expected within (0, %lld] ns, got %lld ns", fd, (long long)value_max, (long long)v);
}

static void check_timerfds(void)
{
    check_timer(12, "1", 0, MS(60000));
    check_timer(13, "1", MS(50), MS(50));
    check_timer(14, "0", 0, (int64_t)RT_AHEAD_S * 1000000000);
    check_timer(15, "1", 0, 0);
    /* The realtime one kept its wall-clock deadline. */
    struct itimerspec its;
    timerfd_gettime(14, &its);
    int64_t off = clock_ns(CLOCK_REALTIME) + ts_ns(its.it_value) - rt_deadline;
    if (off < -MS(20) || off > MS(20))
        fail("timerfd 14 deadline: expected %lld, got %lld off", (long long)rt_deadline, (long long)off);
    char fl[16];
    fdinfo_field(14, "settime flags", fl, sizeof fl);
    if (strtol(fl, NULL, 8) != TFD_TIMER_ABSTIME)
        fail("timerfd 14 settime flags: expected 01, got %s", fl);
    if (!(fcntl(13, F_GETFL) & O_NONBLOCK))
        fail("timerfd 13 flags: expected O_NONBLOCK");
    /* The periodic one ticks. */
    struct pollfd p = { 13, POLLIN, 0 };
    uint64_t t = 0;
    if (poll(&p, 1, 1000) != 1 || read(13, &t, 8) != 8 || t < 1)
        fail("timerfd 13: expected a tick within 1 s, got %llu", (unsigned long long)t);
    /* The expired one still owes its expiration. */
    p.fd = 15;
    t = 0;
    if (poll(&p, 1, 0) != 1 || read(15, &t, 8) != 8 || t != 1)
        fail("timerfd 15 unread expirations: expected 1, got %llu", (unsigned long long)t);
}

static void check_signalfd(void)
{
    struct signalfd_siginfo si;
    int want_sig[3] = { SIGUSR1, SIGRTMIN + 1, SIGRTMIN + 1 };
    int want_val[3] = { 0, 42, 43 };
    for (int i = 0; i < 3; i++) {
        ssize_t r = read(16, &si, sizeof si);
        if (r != (ssize_t)sizeof si) {
            fail("signalfd read %d: expected signal %d, got %s", i, want_sig[i], strerror(errno));
            return;
        }
        if ((int)si.ssi_signo != want_sig[i] || (i > 0 && si.ssi_int != want_val[i]))
            fail("signalfd read %d: expected signal %d value %d, got %u value %d", i, want_sig[i], want_val[i],
                 si.ssi_signo, si.ssi_int);
    }
    if (read(16, &si, sizeof si) != -1 || errno != EAGAIN)
        fail("signalfd: expected EAGAIN after 3 signals");
    /* As the kernel reports it (an emulator may number signals its own way). */
    char m[32];
    fdinfo_field(16, "sigmask", m, sizeof m);
    if (strcmp(m, sigmask_at_ready) != 0 || m[0] == '\0')
        fail("signalfd sigmask: expected %s, got %s", sigmask_at_ready, m);
}

/* Reads inotify events for up to 1 s until one for (wd, mask, name) shows. */
static int inotify_saw(int wd, uint32_t mask, const char *name)
{
    char buf[4096] __attribute__((aligned(8)));
    for (int round = 0; round < 50; round++) {
        struct pollfd p = { 20, POLLIN, 0 };
        if (poll(&p, 1, 20) != 1)
            continue;
        ssize_t n = read(20, buf, sizeof buf);
        for (ssize_t off = 0; n > 0 && off < n;) {
            struct inotify_event *e = (struct inotify_event *)(buf + off);
            if (e->wd == wd && (e->mask & mask) && e->len > 0 && strcmp(e->name, name) == 0)
                return 1;
            off += (ssize_t)(sizeof *e + e->len);
        }
    }
    return 0;
}

static void check_inotify(void)
{
    char buf[4096], cwd[1024];
    if (read_text("/proc/self/fdinfo/20", buf, sizeof buf) <= 0 || !getcwd(cwd, sizeof cwd)) {
        fail("inotify: cannot read fdinfo");
        return;
    }
    if (!strstr(buf, "inotify wd:1 ") || !strstr(buf, "mask:300 "))
        fail("inotify: expected wd 1 with mask 300, got %s", buf);
    if (!strstr(buf, "inotify wd:3 ") || !strstr(buf, "mask:8 "))
        fail("inotify: expected wd 3 with mask 8");
    if (strstr(buf, "inotify wd:2 "))
        fail("inotify: removed wd 2 is back");
    int fd = open("created", O_WRONLY | O_CREAT, 0644);
    close(fd);
    if (!inotify_saw(1, IN_CREATE, "created"))
        fail("inotify: no IN_CREATE on wd 1 for a new file");
    fd = open("sub2/written", O_WRONLY | O_CREAT, 0644);
    if (write(fd, "y", 1) != 1)
        fail("write sub2/written: %s", strerror(errno));
    close(fd);
    if (!inotify_saw(3, IN_CLOSE_WRITE, "written"))
        fail("inotify: no IN_CLOSE_WRITE on wd 3 for a file written in sub2");
}

int main(int argc, char **argv)
{
    app_init("breadth_events", argc, argv);
    setup();
    ready();
    wait_go();
    perturbations();
    check_epoll();
    check_eventfds();
    check_timerfds();
    check_signalfd();
    check_inotify();
    return finish();
}

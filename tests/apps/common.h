/*
 * The test-app protocol shared by every C app.
 *
 * The app is started with cwd = a fresh work directory W and stdout/stderr on
 * W/app.log. It sets up its state, writes "READY <name>", waits for W/go
 * (polling with nanosleep, so a checkpoint normally finds it inside a
 * restartable syscall), then verifies everything it set up and prints exactly
 * one line: "PASS <name>" (exit 0) or "FAIL <name>: <first difference>" (exit 1).
 *
 * `--selftest-fail=WHAT` makes the app perturb one named piece of its own
 * state after `go`, before verifying: the negative control proving that each
 * check can fail. An unknown WHAT exits 2 so a typo cannot pass silently.
 */
#ifndef TORPOR_TEST_APP_COMMON_H
#define TORPOR_TEST_APP_COMMON_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define POLL_NS (20 * 1000 * 1000L)
#define FAIL_MSG_MAX 480

static const char *app_name = "app";
static const char *selftest_what;
static int selftest_used;
static pid_t app_pid;
static char first_failure[FAIL_MSG_MAX];
static int failure_count;
static char *app_args[8];
static int app_nargs;

#define FD_MAP_BYTES 128 /* fds 0-1023 */
static uint8_t fds_at_ready[FD_MAP_BYTES];
static int fds_recorded;

static inline void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            _exit(3);
        p += n;
        len -= (size_t)n;
    }
}

/* printf straight to fd 1 with one write(2): no stdio buffer to lose or duplicate. */
static inline void say(const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    write_all(1, line, (size_t)n);
}

static inline void app_init(const char *name, int argc, char **argv)
{
    app_name = name;
    app_pid = getpid();
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--selftest-fail=", 16) == 0)
            selftest_what = argv[i] + 16;
        else if (app_nargs < 8)
            app_args[app_nargs++] = argv[i];
    }
}

/* The n-th positional argument as a number, or `def` when absent. */
static inline long app_arg(int n, long def)
{
    if (n >= app_nargs)
        return def;
    char *end;
    long v = strtol(app_args[n], &end, 0);
    if (*end != '\0' || end == app_args[n]) {
        say("FAIL %s: bad argument '%s'\n", app_name, app_args[n]);
        _exit(2);
    }
    return v;
}

/* Records a failure; only the first one is printed, with a count of the rest. */
static inline void fail(const char *fmt, ...)
{
    failure_count++;
    if (failure_count > 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_failure, sizeof first_failure, fmt, ap);
    va_end(ap);
}

/* True when the negative control asks to perturb `what`. */
static inline int perturb(const char *what)
{
    if (selftest_what && strcmp(selftest_what, what) == 0) {
        selftest_used = 1;
        return 1;
    }
    return 0;
}

/* Marks `what` as known when another process of the app performs it. */
static inline void perturb_elsewhere(const char *what)
{
    (void)perturb(what);
}

static inline void sleep_ns(long ns)
{
    struct timespec ts = { ns / 1000000000L, ns % 1000000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Reads a small file whole into buf, NUL-terminated; returns its length, or -1. */
static inline ssize_t read_text(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    ssize_t n;
    while (len < cap - 1 && ((n = read(fd, buf + len, cap - 1 - len)) > 0 || (n < 0 && errno == EINTR)))
        if (n > 0)
            len += (size_t)n;
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

/* The state letter of one of our threads ('S': asleep in a syscall), or '?'. */
static inline char task_state(pid_t tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    if (read_text(path, buf, sizeof buf) <= 0)
        return '?';
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : '?';
}

static inline int go_exists(void)
{
    return access("go", F_OK) == 0;
}

/* The open fds as a bitmap; the listing's own fd is left out. */
static inline void list_fds(uint8_t map[FD_MAP_BYTES])
{
    memset(map, 0, FD_MAP_BYTES);
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd != self && fd >= 0 && fd < FD_MAP_BYTES * 8)
            map[fd / 8] |= (uint8_t)(1u << (fd % 8));
    }
    closedir(d);
}

/* Remembers the fd table, for finish() to check that no fd came or went. */
static inline void record_fds(void)
{
    list_fds(fds_at_ready);
    fds_recorded = 1;
}

#define MS(x) ((int64_t)(x) * 1000000)

static inline int64_t ts_ns(struct timespec ts)
{
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline struct timespec ns_ts(int64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };
    return ts;
}

/* Clock `c` in ns, read through the vDSO where it has one. */
static inline int64_t clock_ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts_ns(ts);
}

/* Fails unless /proc/self/fd/FD links to `want`. */
static inline void check_link(int fd, const char *want)
{
    char path[32], got[256] = "";
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, got, sizeof got - 1);
    got[n > 0 ? n : 0] = '\0';
    if (strcmp(got, want) != 0)
        fail("fd %d: expected %s, got %s", fd, want, got);
}

/* Called by setup_failed() before it exits, in the app's own process (to
 * remove what the app created outside itself, say). */
static void (*setup_cleanup)(void);

/* The app could not set itself up: not a verdict on torpor (exit 3). */
static inline void setup_failed(const char *what)
{
    say("FAIL %s: setup: %s: %s\n", app_name, what, strerror(errno));
    if (setup_cleanup && getpid() == app_pid)
        setup_cleanup();
    _exit(3);
}

/* Puts a freshly opened fd at number `want`. */
static inline void fd_at(int fd, int want, const char *what)
{
    if (fd < 0)
        setup_failed(what);
    if (fd != want) {
        if (dup2(fd, want) != want)
            setup_failed(what);
        close(fd);
    }
}

static inline void ready(void)
{
    record_fds();
    say("READY %s\n", app_name);
}

/* One nanosleep per poll: a signal (e.g. SIGALRM) only shortens one poll. */
static inline void wait_go(void)
{
    while (!go_exists()) {
        struct timespec ts = { 0, POLL_NS };
        nanosleep(&ts, NULL);
    }
}

static inline pid_t tid_of_self(void)
{
    return (pid_t)syscall(SYS_gettid);
}

static inline void check_fds(void)
{
    if (!fds_recorded)
        return;
    uint8_t now[FD_MAP_BYTES];
    list_fds(now);
    for (int fd = 0; fd < FD_MAP_BYTES * 8; fd++) {
        int was = (fds_at_ready[fd / 8] >> (fd % 8)) & 1, is = (now[fd / 8] >> (fd % 8)) & 1;
        if (was == is)
            continue;
        char path[32], target[128] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
        fail("fd %d: expected %s, got %s%s%s%s", fd, was ? "open" : "closed", is ? "open" : "closed",
             is ? " (" : "", target, is ? ")" : "");
    }
}

/* A restored task must come back untraced, with its own pid and fd table. */
static inline void check_process_identity(void)
{
    check_fds();
    if (getpid() != app_pid)
        fail("pid: expected %d, got %d", (int)app_pid, (int)getpid());
    char buf[4096];
    if (read_text("/proc/self/status", buf, sizeof buf) <= 0)
        return;
    char *t = strstr(buf, "TracerPid:");
    if (t) {
        long tracer = strtol(t + 10, NULL, 10);
        if (tracer != 0)
            fail("TracerPid: expected 0, got %ld", tracer);
    }
}

/* Prints the one result line and returns the exit code. */
static inline int finish(void)
{
    check_process_identity();
    if (selftest_what && !selftest_used) {
        say("FAIL %s: unknown --selftest-fail target '%s'\n", app_name, selftest_what);
        return 2;
    }
    if (failure_count == 0) {
        say("PASS %s\n", app_name);
        return 0;
    }
    if (failure_count > 1)
        say("FAIL %s: %s (and %d more)\n", app_name, first_failure, failure_count - 1);
    else
        say("FAIL %s: %s\n", app_name, first_failure);
    return 1;
}

/* splitmix64's finaliser: patterns computed from (seed, index), never stored. */
static inline uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static inline uint8_t pattern_byte(uint64_t seed, size_t i)
{
    return (uint8_t)(mix64(seed + i / 8) >> (8 * (i % 8)));
}

static inline void fill_pattern(void *p, size_t n, uint64_t seed)
{
    uint8_t *b = p;
    size_t i = 0;
    if (((uintptr_t)b & 7) == 0) {
        for (; i + 8 <= n; i += 8) {
            uint64_t w = mix64(seed + i / 8);
            memcpy(b + i, &w, 8);
        }
    }
    for (; i < n; i++)
        b[i] = pattern_byte(seed, i);
}

/* Checks n bytes against the pattern; reports the first differing byte. */
static inline int check_pattern(const char *what, const void *p, size_t n, uint64_t seed)
{
    const uint8_t *b = p;
    size_t i = 0;
    if (((uintptr_t)b & 7) == 0) {
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, b + i, 8);
            if (w != mix64(seed + i / 8))
                break;
        }
    }
    for (; i < n; i++) {
        uint8_t want = pattern_byte(seed, i);
        if (b[i] != want) {
            fail("%s: byte at +0x%zx of %zu: expected 0x%02x, got 0x%02x", what, i, n, want, b[i]);
            return 0;
        }
    }
    return 1;
}

static inline int check_zero(const char *what, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != 0) {
            fail("%s: byte at +0x%zx of %zu: expected 0x00, got 0x%02x", what, i, n, b[i]);
            return 0;
        }
    }
    return 1;
}

#endif

/*
 * breadth_seccomp: a sandboxed app keeps its seccomp filters, in order, in
 * every thread, the filters one thread added for itself alone, and a child
 * in strict mode.
 *
 * Before READY: a child forks (before any filter, which it would inherit)
 * and enters strict mode (SECCOMP_MODE_STRICT), says so through a pipe and
 * blocks reading another. Then, no_new_privs set, filter 1 makes uname
 * fail with errno 77 and getppid with 78; filter 2, newer, makes getppid
 * fail with 79 (for the same action the newest filter's value wins) and
 * getitimer with 82 (which torpor's parasite calls during the dump: the
 * filters must not apply to it); a second thread starts and waits, and a
 * third adds a filter of its own (no TSYNC) making getppid fail with 83 in
 * that thread only.
 *
 * After go, in the main and second threads: uname fails with 77, getppid
 * with 79, getitimer with 82, getpid works; in the third thread the same
 * but getppid fails with 83; /proc/thread-self/status shows Seccomp 2 and
 * as many filters as before in each (one more in the third);
 * no_new_privs is still set. The child's status shows Seccomp 1; told to
 * go on, it writes one byte back through its pipe (write is allowed), then
 * calls getpid, for which strict mode kills it: its wait status is exactly
 * SIGKILL.
 *
 * Usage: breadth_seccomp [--selftest-fail=count|order|own|strict]
 */
#include "common.h"

#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <signal.h>

/* From linux/filter.h and linux/seccomp.h (a stable ABI), which the
 * ARMv6 musl toolchain does not ship. */
struct sock_filter {
    uint16_t code;
    uint8_t jt, jf;
    uint32_t k;
};
struct sock_fprog {
    unsigned short len;
    struct sock_filter *filter;
};
#define BPF_STMT(code, k) { (uint16_t)(code), 0, 0, (k) }
#define BPF_JUMP(code, k, jt, jf) { (uint16_t)(code), (jt), (jf), (k) }
#define BPF_LD 0x00
#define BPF_W 0x00
#define BPF_ABS 0x20
#define BPF_JMP 0x05
#define BPF_JEQ 0x10
#define BPF_K 0x00
#define BPF_RET 0x06
#define SECCOMP_MODE_STRICT 1
#define SECCOMP_MODE_FILTER 2
#define SECCOMP_RET_ERRNO 0x00050000U
#define SECCOMP_RET_ALLOW 0x7fff0000U
/* struct seccomp_data starts with the syscall number. */
#define SECCOMP_DATA_NR 0

/* Fails `nr` with `err` and `nr2` with `err2`, allows the rest. */
static void deny(int nr, int err, int nr2, int err2)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr2, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err2),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        setup_failed("PR_SET_SECCOMP");
}

static int field_of(const char *path, const char *key)
{
    char text[4096] = "";
    read_text(path, text, sizeof text);
    char *at = strstr(text, key);
    return at ? atoi(at + strlen(key)) : -1;
}

static int status_field(const char *key)
{
    return field_of("/proc/self/status", key);
}

/* The calling thread's own. */
static int thread_field(const char *key)
{
    return field_of("/proc/thread-self/status", key);
}

static int filters_at_ready;
static int own_filters_at_ready;
static volatile int thread_go;
static volatile int thread_done;
static volatile int own_ready;
static volatile int own_done;

/* The checks, in whichever thread calls them; `ppid_errno` is the errno
 * getppid fails with in that thread. */
static void check(const char *who, int ppid_errno)
{
    struct utsname u;
    errno = 0;
    if (uname(&u) != -1 || errno != 77)
        fail("%s: uname: expected errno 77, got %d", who, errno);
    errno = 0;
    if (syscall(SYS_getppid) != -1 || errno != ppid_errno)
        fail("%s: getppid: expected errno %d (the newest filter), got %d", who, ppid_errno, errno);
    struct itimerval it;
    errno = 0;
    if (syscall(SYS_getitimer, ITIMER_REAL, &it) != -1 || errno != 82)
        fail("%s: getitimer: expected errno 82, got %d", who, errno);
    if (syscall(SYS_getpid) != app_pid)
        fail("%s: getpid is not allowed", who);
}

static void *second(void *arg)
{
    (void)arg;
    while (!thread_go) {
        struct timespec ts = { 0, POLL_NS };
        nanosleep(&ts, NULL);
    }
    check("second thread", 79);
    if (thread_field("Seccomp_filters:") != filters_at_ready)
        fail("second thread: Seccomp_filters: expected %d, got %d", filters_at_ready,
             thread_field("Seccomp_filters:"));
    thread_done = 1;
    return NULL;
}

/* A thread with a filter of its own: getppid fails with 83 here only. */
static void *own(void *arg)
{
    (void)arg;
    deny(SYS_getppid, 83, SYS_getppid, 83);
    own_filters_at_ready = thread_field("Seccomp_filters:");
    own_ready = 1;
    while (!thread_go) {
        struct timespec ts = { 0, POLL_NS };
        nanosleep(&ts, NULL);
    }
    check("own-filter thread", 83);
    if (thread_field("Seccomp:") != 2)
        fail("own-filter thread: Seccomp: expected 2, got %d", thread_field("Seccomp:"));
    if (thread_field("Seccomp_filters:") != own_filters_at_ready)
        fail("own-filter thread: Seccomp_filters: expected %d, got %d", own_filters_at_ready,
             thread_field("Seccomp_filters:"));
    own_done = 1;
    return NULL;
}

/* The strict child: only read, write, exit and rt_sigreturn from here on,
 * so raw syscalls and no libc. Told 'g' it answers 'W'; told 'p' it does
 * not; then getpid kills it. */
static void strict_child(int cmd, int reply)
{
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
        _exit(3);
    char c = 'S';
    if (syscall(SYS_write, reply, &c, 1) != 1)
        syscall(SYS_exit, 3);
    long n;
    do
        n = syscall(SYS_read, cmd, &c, 1);
    while (n == -1 && errno == EINTR);
    if (n != 1)
        syscall(SYS_exit, 4);
    if (c == 'g') {
        c = 'W';
        if (syscall(SYS_write, reply, &c, 1) != 1)
            syscall(SYS_exit, 5);
    }
    syscall(SYS_getpid);
    syscall(SYS_exit, 6);
}

/* A syscall the app never makes, for the extra filter of "count" (AArch64
 * has no getpgrp, only getpgid). */
#ifdef SYS_getpgrp
#define EXTRA_SYSCALL SYS_getpgrp
#else
#define EXTRA_SYSCALL SYS_getpgid
#endif

int main(int argc, char **argv)
{
    app_init("breadth_seccomp", argc, argv);
    int cmd[2], reply[2];
    if (pipe(cmd) != 0 || pipe(reply) != 0)
        setup_failed("pipe");
    pid_t child = fork();
    if (child < 0)
        setup_failed("fork");
    if (child == 0) {
        close(cmd[1]);
        close(reply[0]);
        strict_child(cmd[0], reply[1]);
    }
    close(cmd[0]);
    close(reply[1]);
    char c = 0;
    if (read(reply[0], &c, 1) != 1 || c != 'S')
        setup_failed("the child did not enter strict mode");

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        setup_failed("PR_SET_NO_NEW_PRIVS");
    deny(SYS_uname, 77, SYS_getppid, 78);
    deny(SYS_getppid, 79, SYS_getitimer, 82);
    pthread_t t, o;
    if (pthread_create(&t, NULL, second, NULL) != 0)
        setup_failed("pthread_create");
    if (pthread_create(&o, NULL, own, NULL) != 0)
        setup_failed("pthread_create");
    while (!own_ready) {
        struct timespec ts = { 0, POLL_NS };
        nanosleep(&ts, NULL);
    }
    filters_at_ready = status_field("Seccomp_filters:");
    if (own_filters_at_ready != filters_at_ready + 1)
        setup_failed("the own-filter thread's filter count");

    ready();
    wait_go();

    if (perturb("count"))
        deny(EXTRA_SYSCALL, 80, EXTRA_SYSCALL, 80);
    if (perturb("order"))
        deny(SYS_getppid, 81, SYS_getppid, 81);
    /* As if the own-filter thread's filter had gone to every thread. */
    if (perturb("own"))
        deny(SYS_getppid, 83, SYS_getppid, 83);

    check("main thread", 79);
    thread_go = 1;
    pthread_join(t, NULL);
    pthread_join(o, NULL);
    if (!thread_done)
        fail("the second thread did not finish its checks");
    if (!own_done)
        fail("the own-filter thread did not finish its checks");

    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)child);
    if (field_of(path, "Seccomp:") != 1)
        fail("child: Seccomp: expected 1 (strict), got %d", field_of(path, "Seccomp:"));
    if (field_of(path, "Seccomp_filters:") != 0)
        fail("child: Seccomp_filters: expected 0, got %d", field_of(path, "Seccomp_filters:"));
    c = perturb("strict") ? 'p' : 'g';
    if (write(cmd[1], &c, 1) != 1)
        fail("child: writing its command: errno %d", errno);
    c = 0;
    ssize_t n = read(reply[0], &c, 1);
    if (n != 1 || c != 'W')
        fail("child: expected 'W' through its pipe (write allowed), got %zd bytes ('%c')", n, c ? c : '-');
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        fail("child: waitpid: errno %d", errno);
    else if (st != SIGKILL)
        fail("child: wait status: expected %d (killed by SIGKILL, no core), got %#x", SIGKILL, st);
    if (status_field("Seccomp:") != 2)
        fail("Seccomp: expected 2, got %d", status_field("Seccomp:"));
    if (status_field("Seccomp_filters:") != filters_at_ready)
        fail("Seccomp_filters: expected %d, got %d", filters_at_ready, status_field("Seccomp_filters:"));
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        fail("no_new_privs: expected 1");
    return finish();
}

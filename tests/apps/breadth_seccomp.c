/*
 * breadth_seccomp: a sandboxed app keeps its seccomp filters, in order, in
 * every thread.
 *
 * Before READY (no_new_privs set): filter 1 makes uname fail with errno 77
 * and getppid with 78; filter 2, newer, makes getppid fail with 79 (for
 * the same action the newest filter's value wins) and getitimer with 82
 * (which torpor's parasite calls during the dump: the filters must not
 * apply to it), then a second thread starts and waits.
 *
 * After go, in both threads: uname fails with 77, getppid with 79,
 * getitimer with 82, getpid works; /proc/self/status shows Seccomp 2 and as many filters as before;
 * no_new_privs is still set.
 *
 * Usage: breadth_seccomp [--selftest-fail=count|order]
 */
#include "common.h"

#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <sys/utsname.h>

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

static int status_field(const char *key)
{
    char text[4096] = "";
    read_text("/proc/self/status", text, sizeof text);
    char *at = strstr(text, key);
    return at ? atoi(at + strlen(key)) : -1;
}

static int filters_at_ready;
static volatile int thread_go;
static volatile int thread_done;

/* The checks, in whichever thread calls them. */
static void check(const char *who)
{
    struct utsname u;
    errno = 0;
    if (uname(&u) != -1 || errno != 77)
        fail("%s: uname: expected errno 77, got %d", who, errno);
    errno = 0;
    if (syscall(SYS_getppid) != -1 || errno != 79)
        fail("%s: getppid: expected errno 79 (the newest filter), got %d", who, errno);
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
    check("second thread");
    thread_done = 1;
    return NULL;
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
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        setup_failed("PR_SET_NO_NEW_PRIVS");
    deny(SYS_uname, 77, SYS_getppid, 78);
    deny(SYS_getppid, 79, SYS_getitimer, 82);
    pthread_t t;
    if (pthread_create(&t, NULL, second, NULL) != 0)
        setup_failed("pthread_create");
    filters_at_ready = status_field("Seccomp_filters:");

    ready();
    wait_go();

    if (perturb("count"))
        deny(EXTRA_SYSCALL, 80, EXTRA_SYSCALL, 80);
    if (perturb("order"))
        deny(SYS_getppid, 81, SYS_getppid, 81);

    check("main thread");
    thread_go = 1;
    pthread_join(t, NULL);
    if (!thread_done)
        fail("the second thread did not finish its checks");
    if (status_field("Seccomp:") != 2)
        fail("Seccomp: expected 2, got %d", status_field("Seccomp:"));
    if (status_field("Seccomp_filters:") != filters_at_ready)
        fail("Seccomp_filters: expected %d, got %d", filters_at_ready, status_field("Seccomp_filters:"));
    if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1)
        fail("no_new_privs: expected 1");
    return finish();
}

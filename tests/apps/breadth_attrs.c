/*
 * breadth_attrs: what the kernel keeps per thread and per process besides
 * memory and files comes back exactly.
 *
 * Before READY, in the root process:
 *   - threads with their own names, nice values and policies: at-batch
 *     (SCHED_BATCH, nice 9), at-idle (SCHED_IDLE), and with CAP_SYS_NICE
 *     at-fifo (SCHED_FIFO 17 with SCHED_RESET_ON_FORK, nice -3) and at-rr
 *     (SCHED_RR 5); the main thread at nice 4 (with CAP_SYS_NICE -2);
 *   - PR_SET_CHILD_SUBREAPER, oom_score_adj 345, the ADDR_NO_RANDOMIZE
 *     personality;
 *   - private anonymous mappings advised DONTFORK (dc), DONTDUMP (dd),
 *     WIPEONFORK (wf), HUGEPAGE (hg), NOHUGEPAGE (nh), MERGEABLE (mg), each
 *     holding a pattern (hg, nh and mg only where the kernel has THP or
 *     KSM: madvise fails with EINVAL otherwise, and they are not checked).
 * and a child (attr-child) that sets PR_SET_PDEATHSIG SIGWINCH, no_new_privs,
 * PR_SET_THP_DISABLE, dumpable 0, oom_score_adj 17 (-17 with
 * CAP_SYS_RESOURCE), with CAP_SETPCAP securebits
 * NOROOT|NOROOT_LOCKED|KEEP_CAPS, its login uid 4242 where the
 * kernel has audit support and it was unset, then a thread at-kid2 (nice 6,
 * PR_SET_PDEATHSIG SIGURG).
 *
 * After go every thread reads its own policy, real-time priority,
 * SCHED_RESET_ON_FORK, nice value, name and parent-death signal; the
 * processes check their prctl values, oom_score_adj, personality, login uid
 * and each mapping's VmFlags (exactly the advised ones of the six) and
 * pattern; a forked grandchild finds the wf mapping zeroed and the dc one
 * absent. The child reports through a pipe.
 *
 * Under qemu-user (the emulated ARM checks), which takes madvise as a no-op
 * and refuses PR_SET_CHILD_SUBREAPER and PR_SET_THP_DISABLE, what it does
 * not show is not checked.
 *
 * Usage: breadth_attrs [--selftest-fail=policy|nice|name|subreaper|oom|
 *        personality|vmflags|wipe|pdeathsig|dumpable|thp|child-oom]
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>

#ifndef SCHED_BATCH
#define SCHED_BATCH 3
#endif
#ifndef SCHED_IDLE
#define SCHED_IDLE 5
#endif
#define RESET_ON_FORK 0x40000000
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#define MADV_KEEPONFORK 19
#endif
#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#define PR_GET_THP_DISABLE 42
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36
#define PR_GET_CHILD_SUBREAPER 37
#endif
#ifndef PR_SET_SECUREBITS
#define PR_SET_SECUREBITS 28
#define PR_GET_SECUREBITS 27
#endif
#define SECBITS_CHILD 0x13 /* NOROOT, NOROOT_LOCKED, KEEP_CAPS */
#define LOGINUID 4242

struct sched_param_raw {
    int prio;
};

/* The raw syscalls: musl's sched_setscheduler is a stub. */
static int set_sched(pid_t tid, int policy, int prio)
{
    struct sched_param_raw p = { prio };
    return (int)syscall(SYS_sched_setscheduler, tid, policy, &p);
}

static int get_prio(pid_t tid)
{
    struct sched_param_raw p = { -1 };
    if (syscall(SYS_sched_getparam, tid, &p) != 0)
        return -1;
    return p.prio;
}

/* The raw getpriority returns 20 - nice. */
static int get_nice(pid_t tid)
{
    long r = syscall(SYS_getpriority, PRIO_PROCESS, tid);
    return r < 0 ? 99 : 20 - (int)r;
}

static int set_nice(pid_t tid, int nice)
{
    return (int)syscall(SYS_setpriority, PRIO_PROCESS, tid, nice);
}

static volatile int threads_go;

struct worker {
    const char *name;
    int policy; /* with RESET_ON_FORK where asked */
    int prio;
    int nice;
    int pdeath;
    pthread_t thread;
    volatile pid_t tid;
    volatile int set_up;
    /* What the thread read of itself after go. */
    volatile int done;
    int got_policy, got_prio, got_nice, got_pdeath;
    char got_name[16];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pid_t tid = tid_of_self();
    if (prctl(PR_SET_NAME, w->name, 0, 0, 0) != 0)
        setup_failed("PR_SET_NAME");
    if (set_nice(tid, w->nice) != 0)
        setup_failed("setpriority");
    if (set_sched(0, w->policy, w->prio) != 0)
        setup_failed("sched_setscheduler");
    if (w->pdeath && prctl(PR_SET_PDEATHSIG, w->pdeath, 0, 0, 0) != 0)
        setup_failed("PR_SET_PDEATHSIG");
    w->tid = tid;
    w->set_up = 1;
    while (!threads_go)
        sleep_ns(POLL_NS);
    w->got_policy = (int)syscall(SYS_sched_getscheduler, 0);
    w->got_prio = get_prio(0);
    w->got_nice = get_nice(tid);
    int sig = -1;
    prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
    w->got_pdeath = sig;
    prctl(PR_GET_NAME, w->got_name, 0, 0, 0);
    w->done = 1;
    return NULL;
}

static void start_worker(struct worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        setup_failed("pthread_create");
    while (!w->set_up)
        sleep_ns(MS(1));
}

/* Compares what the worker read of itself with what it set. */
static void check_worker(const char *who, struct worker *w)
{
    pthread_join(w->thread, NULL);
    if (!w->done) {
        fail("%s %s: did not finish", who, w->name);
        return;
    }
    if (w->got_policy != w->policy)
        fail("%s %s: policy: expected %#x, got %#x", who, w->name, w->policy, w->got_policy);
    if (w->got_prio != w->prio)
        fail("%s %s: rt priority: expected %d, got %d", who, w->name, w->prio, w->got_prio);
    if (w->got_nice != w->nice)
        fail("%s %s: nice: expected %d, got %d", who, w->name, w->nice, w->got_nice);
    if (w->got_pdeath != w->pdeath)
        fail("%s %s: pdeathsig: expected %d, got %d", who, w->name, w->pdeath, w->got_pdeath);
    if (strcmp(w->got_name, w->name) != 0)
        fail("%s %s: name: expected %s, got %s", who, w->name, w->name, w->got_name);
}

static int read_int_file(const char *path)
{
    char buf[64] = "";
    if (read_text(path, buf, sizeof buf) <= 0)
        return -99999;
    return atoi(buf);
}

static unsigned long read_ulong_file(const char *path)
{
    char buf[64] = "";
    if (read_text(path, buf, sizeof buf) <= 0)
        return 0;
    return strtoul(buf, NULL, 10);
}

static int write_text(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* ---- mappings ---- */

static const char *const flag_names[6] = { "dc", "dd", "wf", "hg", "nh", "mg" };
static const int flag_advice[6] = { MADV_DONTFORK, MADV_DONTDUMP, MADV_WIPEONFORK,
                                    MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE };

struct region {
    uint8_t *at;
    size_t len;
    int want; /* bits of flag_names */
    uint8_t fill;
};
static struct region regions[6];
/* qemu-user takes madvise as a no-op and shows no such flag in smaps:
 * there each mapping is expected to keep the flags it showed at READY. */
static int emulated;

/* The bits of flag_names among the VmFlags of the mapping holding `at`;
 * -1 if no mapping holds it. */
static int vm_flags_at(const void *at)
{
    static char text[1 << 20];
    if (read_text("/proc/self/smaps", text, sizeof text) <= 0)
        return -1;
    uintptr_t a = (uintptr_t)at;
    int inside = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        unsigned long lo, hi;
        char r, w, x, s;
        if (sscanf(line, "%lx-%lx %c%c%c%c", &lo, &hi, &r, &w, &x, &s) == 6) {
            inside = lo <= a && a < hi;
            continue;
        }
        if (!inside || strncmp(line, "VmFlags:", 8) != 0)
            continue;
        int bits = 0;
        for (int i = 0; i < 6; i++) {
            char *p = line + 8;
            while ((p = strstr(p, flag_names[i])) != NULL) {
                if (p[-1] == ' ' && (p[2] == ' ' || p[2] == '\0'))
                    bits |= 1 << i;
                p += 2;
            }
        }
        return bits;
    }
    return -1;
}

static void set_up_regions(void)
{
    long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < 6; i++) {
        struct region *r = &regions[i];
        r->len = (size_t)page * (size_t)(2 + i);
        /* A guard page on each side keeps it a mapping of its own. */
        uint8_t *m = mmap(NULL, r->len + 2 * (size_t)page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            setup_failed("mmap");
        r->at = m + page;
        if (mprotect(r->at, r->len, PROT_READ | PROT_WRITE) != 0)
            setup_failed("mprotect");
        r->fill = (uint8_t)(0x31 + i * 17);
        memset(r->at, r->fill, r->len);
        if (madvise(r->at, r->len, flag_advice[i]) == 0)
            r->want = 1 << i;
        else if (errno != EINVAL || i < 3)
            setup_failed(flag_names[i]);
    }
    /* Every kernel torpor runs on has MADV_DONTFORK. */
    emulated = vm_flags_at(regions[0].at) == 0;
    for (int i = 0; i < 6; i++) {
        int shown = vm_flags_at(regions[i].at);
        if (emulated)
            regions[i].want = shown;
        else if (shown != regions[i].want) {
            errno = 0;
            setup_failed(flag_names[i]);
        }
    }
}

static void check_regions(void)
{
    for (int i = 0; i < 6; i++) {
        struct region *r = &regions[i];
        int got = vm_flags_at(r->at);
        if (got != r->want)
            fail("mapping %s: VmFlags of the six: expected %#x, got %#x", flag_names[i], r->want, got);
        for (size_t k = 0; k < r->len; k++)
            if (r->at[k] != r->fill) {
                fail("mapping %s: byte %zu: expected %#x, got %#x", flag_names[i], k, r->fill, r->at[k]);
                break;
            }
    }
    if (emulated)
        return;
    /* A fork: wf is wiped, dc is not there. */
    pid_t c = fork();
    if (c < 0) {
        fail("fork: %s", strerror(errno));
        return;
    }
    if (c == 0) {
        struct region *wf = &regions[2], *dc = &regions[0];
        for (size_t k = 0; k < wf->len; k++)
            if (wf->at[k] != 0)
                _exit(1);
        if (madvise(dc->at, dc->len, MADV_NORMAL) == 0 || errno != ENOMEM)
            _exit(2);
        _exit(0);
    }
    int st = 0;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st))
        fail("forked child: status %#x", st);
    else if (WEXITSTATUS(st) == 1)
        fail("wf mapping: not zeroed in a forked child");
    else if (WEXITSTATUS(st) == 2)
        fail("dc mapping: present in a forked child");
}

/* ---- the child process ---- */

/* Capabilities the app may hold: CAP_SYS_NICE for real-time policies and
 * negative nice values, CAP_SYS_RESOURCE for a negative oom_score_adj,
 * CAP_SETPCAP for securebits. */
static int cap_nice, cap_resource, cap_setpcap;

static int has_cap(int cap)
{
    char text[4096] = "";
    read_text("/proc/self/status", text, sizeof text);
    char *at = strstr(text, "CapEff:");
    if (!at)
        return 0;
    unsigned long long eff = strtoull(at + 7, NULL, 16);
    return (int)((eff >> cap) & 1);
}
static int report[2], child_ready[2];
/* What the kernel (or qemu-user, which refuses some prctl options with
 * EINVAL) lets the app read. */
static int loginuid_set, thp_set, thp_known, reaper_known;

static void child_main(void)
{
    char msg[FAIL_MSG_MAX] = "";
    close(report[0]);
    close(child_ready[0]);
    struct worker kid2 = { .name = "at-kid2", .policy = 0, .prio = 0, .nice = 6, .pdeath = SIGURG };
    int child_oom = cap_resource ? -17 : 17;
    char oom_text[16];
    snprintf(oom_text, sizeof oom_text, "%d", child_oom);
    if (prctl(PR_SET_NAME, "attr-child", 0, 0, 0) != 0 || prctl(PR_SET_PDEATHSIG, SIGWINCH, 0, 0, 0) != 0)
        setup_failed("child prctl");
    if (cap_setpcap && prctl(PR_SET_SECUREBITS, SECBITS_CHILD, 0, 0, 0) != 0)
        setup_failed("PR_SET_SECUREBITS");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        setup_failed("PR_SET_NO_NEW_PRIVS");
    /* qemu-user (the emulated ARM checks) refuses it with EINVAL. */
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0)
        thp_set = 1;
    else if (errno != EINVAL)
        setup_failed("PR_SET_THP_DISABLE");
    if (write_text("/proc/self/oom_score_adj", oom_text) != 0)
        setup_failed("child oom_score_adj");
    /* Once, where the kernel has audit support and it is unset. */
    if (read_ulong_file("/proc/self/loginuid") == 4294967295UL && write_text("/proc/self/loginuid", "4242") == 0)
        loginuid_set = 1;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        setup_failed("PR_SET_DUMPABLE");
    start_worker(&kid2);
    write_all(child_ready[1], &loginuid_set, sizeof loginuid_set);

    wait_go();
    if (perturb("pdeathsig"))
        prctl(PR_SET_PDEATHSIG, SIGHUP, 0, 0, 0);
    if (perturb("dumpable"))
        prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    if (perturb("thp"))
        prctl(PR_SET_THP_DISABLE, 0, 0, 0, 0);
    if (perturb("child-oom"))
        write_text("/proc/self/oom_score_adj", "18");
    threads_go = 1;
    check_worker("child", &kid2);
    int sig = -1;
    prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0);
    char name[16] = "";
    prctl(PR_GET_NAME, name, 0, 0, 0);
    int v;
    if (sig != SIGWINCH)
        fail("child: pdeathsig: expected %d, got %d", SIGWINCH, sig);
    else if (strcmp(name, "attr-child") != 0)
        fail("child: name: expected attr-child, got %s", name);
    else if ((v = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) != 0)
        fail("child: dumpable: expected 0, got %d", v);
    else if (thp_set && (v = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0)) != 1)
        fail("child: THP disabled: expected 1, got %d", v);
    else if ((v = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)) != 1)
        fail("child: no_new_privs: expected 1, got %d", v);
    else if (reaper_known && (prctl(PR_GET_CHILD_SUBREAPER, &v, 0, 0, 0) != 0 || v != 0))
        fail("child: child subreaper: expected 0, got %d", v);
    else if (cap_setpcap && (v = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)) != SECBITS_CHILD)
        fail("child: securebits: expected %#x, got %#x", SECBITS_CHILD, v);
    else if ((v = read_int_file("/proc/self/oom_score_adj")) != child_oom)
        fail("child: oom_score_adj: expected %d, got %d", child_oom, v);
    else if (loginuid_set && read_ulong_file("/proc/self/loginuid") != LOGINUID)
        fail("child: loginuid: expected %d, got %lu", LOGINUID, read_ulong_file("/proc/self/loginuid"));
    if (failure_count)
        snprintf(msg, sizeof msg, "%s", first_failure);
    write_all(report[1], msg, strlen(msg) + 1);
    _exit(failure_count ? 1 : 0);
}

int main(int argc, char **argv)
{
    app_init("breadth_attrs", argc, argv);
    cap_nice = has_cap(23);
    cap_resource = has_cap(24);
    cap_setpcap = has_cap(8);
    struct worker workers[4] = {
        { .name = "at-batch", .policy = SCHED_BATCH, .prio = 0, .nice = 9 },
        { .name = "at-idle", .policy = SCHED_IDLE, .prio = 0, .nice = 0 },
        { .name = "at-fifo", .policy = SCHED_FIFO | RESET_ON_FORK, .prio = 17, .nice = -3 },
        { .name = "at-rr", .policy = SCHED_RR, .prio = 5, .nice = 0 },
    };
    int nworkers = cap_nice ? 4 : 2;
    int main_nice = cap_nice ? -2 : 4;

    thp_known = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) >= 0;
    int probe = -1;
    reaper_known = prctl(PR_GET_CHILD_SUBREAPER, &probe, 0, 0, 0) == 0;
    if (pipe2(report, O_CLOEXEC) != 0 || pipe2(child_ready, O_CLOEXEC) != 0)
        setup_failed("pipe2");
    pid_t child = fork();
    if (child < 0)
        setup_failed("fork");
    if (child == 0)
        child_main();
    close(report[1]);
    close(child_ready[1]);
    if (read(child_ready[0], &loginuid_set, sizeof loginuid_set) != (ssize_t)sizeof loginuid_set)
        setup_failed("the child's setup");
    close(child_ready[0]);

    if (set_nice(0, main_nice) != 0)
        setup_failed("setpriority");
    /* qemu-user refuses it with EINVAL, as it does PR_SET_THP_DISABLE. */
    int subreaper_set = prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;
    if (!subreaper_set && errno != EINVAL)
        setup_failed("PR_SET_CHILD_SUBREAPER");
    if (write_text("/proc/self/oom_score_adj", "345") != 0)
        setup_failed("oom_score_adj");
    int pers = personality(0xffffffff);
    if (pers < 0 || personality((unsigned long)pers | ADDR_NO_RANDOMIZE) < 0)
        setup_failed("personality");
    set_up_regions();
    for (int i = 0; i < nworkers; i++)
        start_worker(&workers[i]);

    ready();
    wait_go();

    if (perturb("policy"))
        set_sched(workers[0].tid, 0, 0);
    if (perturb("nice"))
        set_nice(workers[0].tid, 8);
    if (perturb("name")) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)workers[1].tid);
        write_text(path, "at-other");
    }
    if (perturb("subreaper"))
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
    if (perturb("oom"))
        write_text("/proc/self/oom_score_adj", "346");
    if (perturb("personality"))
        personality((unsigned long)pers);
    if (perturb("vmflags"))
        madvise(regions[0].at, regions[0].len, MADV_DOFORK);
    if (perturb("wipe"))
        madvise(regions[2].at, regions[2].len, MADV_KEEPONFORK);
    perturb_elsewhere("pdeathsig");
    perturb_elsewhere("dumpable");
    perturb_elsewhere("thp");
    perturb_elsewhere("child-oom");
    threads_go = 1;

    for (int i = 0; i < nworkers; i++)
        check_worker("root", &workers[i]);
    int v;
    if ((v = get_nice(0)) != main_nice)
        fail("main thread: nice: expected %d, got %d", main_nice, v);
    if ((v = (int)syscall(SYS_sched_getscheduler, 0)) != 0)
        fail("main thread: policy: expected 0, got %#x", v);
    int reaper = -1;
    prctl(PR_GET_CHILD_SUBREAPER, &reaper, 0, 0, 0);
    if (subreaper_set && reaper != 1)
        fail("child subreaper: expected 1, got %d", reaper);
    if ((v = read_int_file("/proc/self/oom_score_adj")) != 345)
        fail("oom_score_adj: expected 345, got %d", v);
    if ((v = personality(0xffffffff)) != (pers | ADDR_NO_RANDOMIZE))
        fail("personality: expected %#x, got %#x", pers | ADDR_NO_RANDOMIZE, v);
    if ((v = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) != 1)
        fail("dumpable: expected 1, got %d", v);
    if (thp_known && (v = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0)) != 0)
        fail("THP disabled: expected 0, got %d", v);
    check_regions();

    char msg[FAIL_MSG_MAX] = "";
    size_t len = 0;
    ssize_t n;
    while (len < sizeof msg - 1 && (n = read(report[0], msg + len, sizeof msg - 1 - len)) > 0)
        len += (size_t)n;
    msg[len] = '\0';
    int st = 0;
    if (waitpid(child, &st, 0) != child)
        fail("waitpid: %s", strerror(errno));
    if (msg[0])
        fail("%s", msg);
    else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("child: status %#x", st);
    return finish();
}

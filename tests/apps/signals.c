/*
 * signals: signal state that only the kernel holds, around a checkpoint.
 *
 * Before READY: handlers with SA_SIGINFO/SA_RESTART/SA_ONSTACK/SA_NODEFER/
 * SA_RESETHAND and distinct sa_masks, SIGHUP ignored; SIGUSR1, SIGTERM,
 * SIGQUIT, SIGRTMIN+2 and SIGRTMIN+5 blocked; pending: a thread-directed
 * SIGUSR1 (raise), a process-directed SIGTERM (kill) and two queued
 * SIGRTMIN+2 with values (sigqueue); an alternate signal stack.
 *
 * After go: every disposition of signals 1-64 equals what it was, as do the
 * blocked mask, the pending set and the alternate stack; SIGTERM is taken
 * with sigtimedwait (SI_USER from us); unblocking delivers SIGUSR1 (SI_TKILL)
 * and both SIGRTMIN+2 in order with their values (SI_QUEUE); SIGUSR2 runs on
 * the alternate stack with its sa_mask in force; SIGWINCH runs once and its
 * disposition resets; SIGHUP stays ignored.
 *
 * Usage: signals [--selftest-fail=action|mask|pending|value|altstack]
 */
#include "common.h"

#include <signal.h>

#define NSIGS 64
#define ALT_SIZE (64 * 1024)
#define RT_VALUE_1 0x1234abcd
#define RT_VALUE_2 0x5678

static int rt2, rt5;

static volatile int usr1_count, usr1_code, usr1_pid, usr1_mask_ok;
static volatile int rt_count, rt_code, rt_pid, rt_values[4], rt_mask_ok = 1;
static volatile int usr2_count, usr2_on_alt, usr2_mask_ok;
static volatile uintptr_t usr2_local;
static volatile int winch_count;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    /* SA_NODEFER: the signal itself is not blocked; sa_mask adds SIGUSR2 and SIGTERM. */
    usr1_mask_ok = sigismember(&now, SIGUSR2) && sigismember(&now, SIGTERM) && !sigismember(&now, sig);
    usr1_count++;
    usr1_code = si->si_code;
    usr1_pid = si->si_pid;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    if (!sigismember(&now, SIGINT) || !sigismember(&now, sig))
        rt_mask_ok = 0;
    if (rt_count < 4)
        rt_values[rt_count] = si->si_value.sival_int;
    rt_count++;
    rt_code = si->si_code;
    rt_pid = si->si_pid;
}

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    volatile char here = 0;
    usr2_local = (uintptr_t)&here;
    stack_t ss;
    sigaltstack(NULL, &ss);
    usr2_on_alt = (ss.ss_flags & SS_ONSTACK) != 0;
    sigset_t now;
    sigprocmask(SIG_BLOCK, NULL, &now);
    usr2_mask_ok = sigismember(&now, SIGHUP) && sigismember(&now, SIGUSR2);
    usr2_count++;
}

static void on_winch(int sig)
{
    (void)sig;
    winch_count++;
}

struct disposition {
    int ok;
    void *handler;
    unsigned long flags;
    uint64_t mask;
};

static uint64_t set_bits(const sigset_t *s)
{
    uint64_t bits = 0;
    for (int sig = 1; sig <= NSIGS; sig++)
        if (sigismember(s, sig) == 1)
            bits |= 1ULL << (sig - 1);
    return bits;
}

static void snapshot(struct disposition d[NSIGS + 1])
{
    for (int sig = 1; sig <= NSIGS; sig++) {
        struct sigaction sa;
        d[sig].ok = sigaction(sig, NULL, &sa) == 0;
        if (!d[sig].ok)
            continue;
        d[sig].handler = (sa.sa_flags & SA_SIGINFO) ? (void *)sa.sa_sigaction : (void *)sa.sa_handler;
        d[sig].flags = (unsigned long)sa.sa_flags;
        d[sig].mask = set_bits(&sa.sa_mask);
    }
}

static void install(int sig, void *handler, int flags, const int *mask_sigs)
{
    struct sigaction sa = { 0 };
    if (flags & SA_SIGINFO)
        sa.sa_sigaction = (void (*)(int, siginfo_t *, void *))handler;
    else
        sa.sa_handler = (void (*)(int))handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    for (; mask_sigs && *mask_sigs; mask_sigs++)
        sigaddset(&sa.sa_mask, *mask_sigs);
    if (sigaction(sig, &sa, NULL) != 0) {
        say("FAIL signals: sigaction(%d): %s\n", sig, strerror(errno));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    app_init("signals", argc, argv);
    rt2 = SIGRTMIN + 2;
    rt5 = SIGRTMIN + 5;
    pid_t me = getpid();

    static const int usr1_mask[] = { SIGUSR2, SIGTERM, 0 };
    static const int usr2_mask[] = { SIGHUP, 0 };
    static const int rt_mask[] = { SIGINT, 0 };
    install(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART | SA_NODEFER, usr1_mask);
    install(SIGUSR2, (void *)on_usr2, SA_SIGINFO | SA_ONSTACK, usr2_mask);
    install(rt2, (void *)on_rt, SA_SIGINFO | SA_RESTART, rt_mask);
    install(SIGWINCH, (void *)on_winch, SA_RESETHAND, NULL);
    install(SIGHUP, (void *)SIG_IGN, 0, NULL);

    static uint8_t alt[ALT_SIZE] __attribute__((aligned(64)));
    stack_t ss = { .ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0) {
        say("FAIL signals: sigaltstack: %s\n", strerror(errno));
        return 1;
    }

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, rt2);
    sigaddset(&block, rt5);
    sigprocmask(SIG_SETMASK, &block, NULL);

    raise(SIGUSR1);
    kill(me, SIGTERM);
    sigqueue(me, rt2, (union sigval){ .sival_int = RT_VALUE_1 });
    sigqueue(me, rt2, (union sigval){ .sival_int = RT_VALUE_2 });

    static struct disposition before[NSIGS + 1], after[NSIGS + 1];
    snapshot(before);
    sigset_t mask_before, pending_before;
    sigprocmask(SIG_BLOCK, NULL, &mask_before);
    sigpending(&pending_before);
    stack_t alt_before;
    sigaltstack(NULL, &alt_before);
    uint64_t want_pending = (1ULL << (SIGUSR1 - 1)) | (1ULL << (SIGTERM - 1)) | (1ULL << (rt2 - 1));
    if (set_bits(&pending_before) != want_pending) {
        say("FAIL signals: pending before the checkpoint: expected %#llx, got %#llx\n",
            (unsigned long long)want_pending, (unsigned long long)set_bits(&pending_before));
        return 1;
    }

    ready();
    wait_go();

    if (perturb("action"))
        install(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART | SA_NODEFER, usr2_mask);
    if (perturb("mask")) {
        sigset_t q;
        sigemptyset(&q);
        sigaddset(&q, SIGQUIT);
        sigprocmask(SIG_UNBLOCK, &q, NULL);
    }
    if (perturb("pending")) {
        sigset_t u;
        sigemptyset(&u);
        sigaddset(&u, SIGUSR1);
        struct timespec zero = { 0, 0 };
        sigtimedwait(&u, NULL, &zero);
    }
    if (perturb("value")) {
        sigset_t r;
        sigemptyset(&r);
        sigaddset(&r, rt2);
        struct timespec zero = { 0, 0 };
        sigtimedwait(&r, NULL, &zero);
        sigqueue(me, rt2, (union sigval){ .sival_int = 0x7777 });
    }
    if (perturb("altstack")) {
        stack_t other = { .ss_sp = alt, .ss_size = ALT_SIZE / 2, .ss_flags = 0 };
        sigaltstack(&other, NULL);
    }

    snapshot(after);
    for (int sig = 1; sig <= NSIGS; sig++) {
        if (before[sig].ok != after[sig].ok)
            fail("sigaction(%d) query: expected %s, got %s", sig, before[sig].ok ? "success" : "an error",
                 after[sig].ok ? "success" : "an error");
        else if (before[sig].handler != after[sig].handler)
            fail("signal %d handler: expected %p, got %p", sig, before[sig].handler, after[sig].handler);
        else if (before[sig].flags != after[sig].flags)
            fail("signal %d sa_flags: expected %#lx, got %#lx", sig, before[sig].flags, after[sig].flags);
        else if (before[sig].mask != after[sig].mask)
            fail("signal %d sa_mask: expected %#llx, got %#llx", sig, (unsigned long long)before[sig].mask,
                 (unsigned long long)after[sig].mask);
    }
    sigset_t mask_after, pending_after;
    sigprocmask(SIG_BLOCK, NULL, &mask_after);
    sigpending(&pending_after);
    if (set_bits(&mask_after) != set_bits(&mask_before))
        fail("blocked mask: expected %#llx, got %#llx", (unsigned long long)set_bits(&mask_before),
             (unsigned long long)set_bits(&mask_after));
    if (set_bits(&pending_after) != want_pending)
        fail("pending set: expected %#llx, got %#llx", (unsigned long long)want_pending,
             (unsigned long long)set_bits(&pending_after));
    stack_t alt_after;
    sigaltstack(NULL, &alt_after);
    if (alt_after.ss_sp != alt_before.ss_sp || alt_after.ss_size != alt_before.ss_size ||
        alt_after.ss_flags != alt_before.ss_flags)
        fail("sigaltstack: expected sp %p size %zu flags %d, got sp %p size %zu flags %d", alt_before.ss_sp,
             alt_before.ss_size, alt_before.ss_flags, alt_after.ss_sp, alt_after.ss_size, alt_after.ss_flags);

    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    siginfo_t si;
    struct timespec zero = { 0, 0 };
    int got = sigtimedwait(&term, &si, &zero);
    if (got != SIGTERM)
        fail("sigtimedwait(SIGTERM): expected %d, got %d (%s)", SIGTERM, got, got < 0 ? strerror(errno) : "");
    else if (si.si_code != SI_USER || si.si_pid != me)
        fail("pending SIGTERM: expected si_code %d si_pid %d, got %d and %d", SI_USER, (int)me, si.si_code,
             (int)si.si_pid);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (usr1_count != 1)
        fail("SIGUSR1 deliveries after unblocking: expected 1, got %d", usr1_count);
    else if (usr1_code != SI_TKILL || usr1_pid != me)
        fail("SIGUSR1 siginfo: expected si_code %d si_pid %d, got %d and %d", SI_TKILL, (int)me, usr1_code,
             usr1_pid);
    if (rt_count != 2)
        fail("SIGRTMIN+2 deliveries after unblocking: expected 2, got %d", rt_count);
    else if (rt_values[0] != RT_VALUE_1 || rt_values[1] != RT_VALUE_2)
        fail("SIGRTMIN+2 si_value in order: expected %#x then %#x, got %#x then %#x", RT_VALUE_1, RT_VALUE_2,
             rt_values[0], rt_values[1]);
    else if (rt_code != SI_QUEUE || rt_pid != me)
        fail("SIGRTMIN+2 siginfo: expected si_code %d si_pid %d, got %d and %d", SI_QUEUE, (int)me, rt_code,
             rt_pid);
    if (!rt_mask_ok)
        fail("SIGRTMIN+2 handler mask: expected SIGINT and SIGRTMIN+2 blocked, got otherwise");
    if (usr1_count == 1 && !usr1_mask_ok)
        fail("SIGUSR1 handler mask: expected SIGUSR2 and SIGTERM blocked and SIGUSR1 not (SA_NODEFER), got otherwise");

    raise(SIGUSR2);
    if (usr2_count != 1)
        fail("SIGUSR2 deliveries: expected 1, got %d", usr2_count);
    else if (!usr2_on_alt || usr2_local < (uintptr_t)alt || usr2_local >= (uintptr_t)alt + ALT_SIZE)
        fail("SIGUSR2 handler stack: expected inside the alternate stack %p..%p, got %#lx (SS_ONSTACK %d)",
             (void *)alt, (void *)(alt + ALT_SIZE), (unsigned long)usr2_local, usr2_on_alt);
    else if (!usr2_mask_ok)
        fail("SIGUSR2 handler mask: expected SIGHUP and SIGUSR2 blocked, got otherwise");

    raise(SIGWINCH);
    struct sigaction winch;
    sigaction(SIGWINCH, NULL, &winch);
    if (winch_count != 1)
        fail("SIGWINCH deliveries: expected 1, got %d", winch_count);
    else if (winch.sa_handler != SIG_DFL)
        fail("SIGWINCH after SA_RESETHAND: expected SIG_DFL, got %p", (void *)winch.sa_handler);

    raise(SIGHUP); /* ignored: we are still here */

    return finish();
}

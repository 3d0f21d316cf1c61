//! Signal state, timers and per-process settings survive a dump and
//! restore: dispositions with masks and flags, the blocked mask, pending
//! signals (thread-directed and queued with a value), the alternate stack,
//! ITIMER_REAL, umask, cwd, an rlimit and the thread name. The program checks
//! itself after restore and prints PASS or what differs.

mod engine_util;
use engine_util::*;

const SIGNALS: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>

static volatile sig_atomic_t usr1;
static char altstack[65536];
static void on_usr1(int s) { (void)s; usr1++; }
static void on_rt(int s, siginfo_t *si, void *u) { (void)s; (void)si; (void)u; }
static int fails;
#define CHECK(c) do { if (!(c)) { printf("FAIL %s\n", #c); fails++; } } while (0)

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pid_t me = getpid();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGHUP);
    sigaddset(&sa.sa_mask, SIGRTMIN + 3);
    sa.sa_flags = SA_RESTART | SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    struct sigaction sb;
    memset(&sb, 0, sizeof sb);
    sb.sa_sigaction = on_rt;
    sb.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGRTMIN + 2, &sb, NULL);
    signal(SIGPIPE, SIG_IGN);
    stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
    sigaltstack(&ss, NULL);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    sigaddset(&m, SIGRTMIN + 5);
    sigprocmask(SIG_BLOCK, &m, NULL);
    raise(SIGUSR2);
    union sigval v = { .sival_int = 4242 };
    sigqueue(me, SIGRTMIN + 5, v);
    struct itimerval it = { { 100, 0 }, { 100, 0 } };
    setitimer(ITIMER_REAL, &it, NULL);
    umask(027);
    chdir("/tmp");
    struct rlimit rl = { 512, 1024 };
    setrlimit(RLIMIT_NOFILE, &rl);
    prctl(PR_SET_NAME, "sigtest-main");
    printf("ready\n");

    while (!usr1)
        pause();

    struct sigaction q;
    sigaction(SIGUSR1, NULL, &q);
    CHECK(q.sa_handler == on_usr1);
    CHECK(sigismember(&q.sa_mask, SIGHUP) && sigismember(&q.sa_mask, SIGRTMIN + 3));
    CHECK(!sigismember(&q.sa_mask, SIGINT));
    CHECK((q.sa_flags & (SA_RESTART | SA_ONSTACK)) == (SA_RESTART | SA_ONSTACK));
    sigaction(SIGRTMIN + 2, NULL, &q);
    CHECK(q.sa_sigaction == on_rt);
    CHECK((q.sa_flags & (SA_SIGINFO | SA_NODEFER)) == (SA_SIGINFO | SA_NODEFER));
    sigaction(SIGPIPE, NULL, &q);
    CHECK(q.sa_handler == SIG_IGN);
    sigaction(SIGTERM, NULL, &q);
    CHECK(q.sa_handler == SIG_DFL);
    /* torpor itself catches these (its runtime's stack overflow check):
       the default comes back, not the disposition a task inherits. */
    sigaction(SIGSEGV, NULL, &q);
    CHECK(q.sa_handler == SIG_DFL && q.sa_flags == 0);
    sigaction(SIGBUS, NULL, &q);
    CHECK(q.sa_handler == SIG_DFL && q.sa_flags == 0);
    sigset_t cur, pend;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    CHECK(sigismember(&cur, SIGUSR2) && sigismember(&cur, SIGRTMIN + 5) && !sigismember(&cur, SIGUSR1));
    sigpending(&pend);
    CHECK(sigismember(&pend, SIGUSR2) && sigismember(&pend, SIGRTMIN + 5));
    struct timespec zero = { 0, 0 };
    siginfo_t si;
    sigset_t w;
    sigemptyset(&w);
    sigaddset(&w, SIGRTMIN + 5);
    CHECK(sigtimedwait(&w, &si, &zero) == SIGRTMIN + 5);
    CHECK(si.si_code == SI_QUEUE && si.si_value.sival_int == 4242 && si.si_pid == me);
    sigemptyset(&w);
    sigaddset(&w, SIGUSR2);
    CHECK(sigtimedwait(&w, &si, &zero) == SIGUSR2);
    /* The sender survives; its code does not: the kernel stores a signal
       queued with rt_tgsigqueueinfo(SI_TKILL) as SI_USER, so a restored
       tgkill() signal reads as kill(). */
    CHECK(si.si_pid == me && (si.si_code == SI_TKILL || si.si_code == SI_USER));
    stack_t qs;
    sigaltstack(NULL, &qs);
    CHECK(qs.ss_sp == altstack && qs.ss_size == sizeof altstack && qs.ss_flags == 0);
    struct itimerval qi;
    getitimer(ITIMER_REAL, &qi);
    CHECK(qi.it_interval.tv_sec == 100 && qi.it_interval.tv_usec == 0);
    CHECK(qi.it_value.tv_sec >= 80 && qi.it_value.tv_sec < 100);
    CHECK(umask(0) == 027);
    char cwd[256];
    CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, "/tmp") == 0);
    getrlimit(RLIMIT_NOFILE, &rl);
    CHECK(rl.rlim_cur == 512 && rl.rlim_max == 1024);
    char name[16] = { 0 };
    prctl(PR_GET_NAME, name);
    CHECK(strcmp(name, "sigtest-main") == 0);
    CHECK(getpid() == me);
    printf(fails ? "DONE\n" : "PASS\n");
    return 0;
}
"#;

#[test]
fn signal_state_and_process_settings_survive() {
    become_subreaper();
    let dir = scratch("signals");
    let bin = compile(&dir, "signals", SIGNALS, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("signals.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || lines(&out).contains(&"ready".to_string()));

    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert!(alive(pid));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(comm.trim_end(), "sigtest-main");
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0, "the program exits normally");
    let l = lines(&out);
    assert_eq!(l, vec!["ready".to_string(), "PASS".to_string()], "{l:?}");
}

const CREDS: &str = r#"
#define _GNU_SOURCE
#include <grp.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    gid_t groups[] = { 1000, 27, 44 };
    if (setgroups(3, groups) || setresgid(1000, 1001, 1002) || setresuid(1000, 1003, 1004)) {
        printf("setup failed\n");
        return 1;
    }
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

fn id_lines(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:"))
        .map(str::to_string)
        .collect()
}

/// A process that dropped root comes back with the same real, effective
/// and saved ids and supplementary groups.
#[test]
fn credentials_come_back() {
    become_subreaper();
    let dir = scratch("creds");
    let bin = compile(&dir, "creds", CREDS, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("creds.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let before = id_lines(pid);
    assert_eq!(before[0], "Uid:\t1000\t1003\t1004\t1003");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let n = lines(&out).len();
    restore(&img);
    assert_eq!(id_lines(pid), before);
    wait_for("the count to go on", || lines(&out).len() >= n + 3);
    kill_and_reap(pid);
    assert_counted_from_zero(&out);
}

const INTERRUPTED: &str = r#"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t handled;
static void on_usr1(int s) { (void)s; handled++; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;   /* no SA_RESTART */
    sigaction(SIGUSR1, &sa, NULL);
    int p[2];
    pipe(p);
    printf("ready\n");
    char b;
    ssize_t n = read(p[0], &b, 1);
    printf("read %zd %d handled %d\n", n, n < 0 ? errno : 0, (int)handled);
    return 0;
}
"#;

/// A read stopped by the checkpoint is still that read after restore: a
/// handled signal without SA_RESTART, sent as soon as torpor lets the task
/// go, ends it with EINTR after the handler ran once, as without the
/// checkpoint.
#[test]
fn signal_right_after_restore_interrupts_the_restored_syscall() {
    become_subreaper();
    let dir = scratch("interrupted");
    let bin = compile(&dir, "interrupted", INTERRUPTED, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("interrupted.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || lines(&out).len() == 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    // Signal the task the moment torpor lets it go, before it can run.
    let mut restorer = std::process::Command::new(TORPOR)
        .args(["restore", "--image", img.to_str().expect("utf8")])
        .spawn()
        .expect("run torpor");
    wait_for("the task to be released", || {
        let restored = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|e| e == bin)
            .unwrap_or(false);
        let released = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| s.lines().any(|l| l == "TracerPid:\t0"))
            .unwrap_or(false);
        restored && released
    });
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert!(restorer.wait().expect("torpor").success());
    wait_for("the read to end", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1], format!("read -1 {} handled 1", libc::EINTR));
}

const CAPS: &str = r#"
#define _GNU_SOURCE
#include <linux/capability.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0);
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    syscall(SYS_capget, &h, d);
    d[0].effective &= ~(1u << CAP_SYS_ADMIN);
    d[0].inheritable |= 1u << CAP_NET_BIND_SERVICE;
    if (syscall(SYS_capset, &h, d)) { printf("capset failed\n"); return 1; }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

fn cap_lines(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs:"))
        .map(str::to_string)
        .collect()
}

/// Capability sets (inheritable, permitted, effective, bounding, ambient)
/// and no_new_privs come back as they were.
#[test]
fn capabilities_come_back() {
    become_subreaper();
    let dir = scratch("caps");
    let bin = compile(&dir, "caps", CAPS, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("caps.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let before = cap_lines(pid);
    assert!(before.contains(&"NoNewPrivs:\t1".to_string()), "{before:?}");
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("CapAmb:") && l != "CapAmb:\t0000000000000000"),
        "{before:?}"
    );
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert_eq!(cap_lines(pid), before);
    kill_and_reap(pid);
}

const EXPIRED_ALARM: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static void on_alrm(int s) { (void)s; alarms++; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc != 2)
        return 2;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sigaction(SIGALRM, &sa, NULL);
    sigset_t m, pend;
    sigemptyset(&m);
    sigaddset(&m, SIGALRM);
    sigprocmask(SIG_BLOCK, &m, NULL);
    struct itimerval it = { { 0, 50000 }, { 0, 50000 } };
    setitimer(ITIMER_REAL, &it, NULL);
    do {
        struct timespec ts = { 0, 10000000 };
        nanosleep(&ts, NULL);
        sigpending(&pend);
    } while (!sigismember(&pend, SIGALRM));
    /* Expired, its SIGALRM blocked: the kernel re-arms it on dequeue. */
    struct itimerval q;
    getitimer(ITIMER_REAL, &q);
    printf("ready %ld %ld\n", (long)q.it_value.tv_sec, (long)q.it_value.tv_usec);
    while (access(argv[1], F_OK) != 0) {
        struct timespec ts = { 0, 10000000 };
        nanosleep(&ts, NULL);
    }
    sigprocmask(SIG_UNBLOCK, &m, NULL);
    for (int i = 0; i < 100 && alarms < 4; i++) {
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);
    }
    getitimer(ITIMER_REAL, &q);
    if (alarms >= 4 && q.it_interval.tv_sec == 0 && q.it_interval.tv_usec == 50000)
        printf("PASS\n");
    else
        printf("FAIL alarms %d interval %ld.%06ld\n", (int)alarms, (long)q.it_interval.tv_sec,
               (long)q.it_interval.tv_usec);
    return 0;
}
"#;

/// A periodic ITIMER_REAL caught expired (its SIGALRM pending, so the
/// kernel reports 0 left until it re-arms the timer on dequeue) keeps
/// ticking after a restore.
#[test]
fn expired_periodic_alarm_keeps_ticking() {
    become_subreaper();
    let dir = scratch("expired-alarm");
    let bin = compile(&dir, "expired-alarm", EXPIRED_ALARM, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("alarm.img");
    let go = dir.join("go");
    let _ = std::fs::remove_file(&go);
    let pid = spawn(&bin, &[go.to_str().expect("utf-8 path")], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || {
        lines(&out).first().is_some_and(|l| l.starts_with("ready"))
    });
    assert_eq!(lines(&out)[0], "ready 0 0", "the timer reads as expired");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert!(alive(pid));
    std::fs::write(&go, b"").expect("go");
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0, "the program exits normally");
    assert_eq!(lines(&out)[1], "PASS");
}

//! Seccomp state that is not every thread's alike: a task in strict mode
//! comes back strict, and a filter one thread installed for itself alone
//! comes back in that thread only.

mod engine_util;
use engine_util::*;

/// Counts in strict mode, where only read, write, exit and sigreturn are
/// allowed.
const STRICT_SECCOMP: &str = r#"
#include <unistd.h>
#include <sys/prctl.h>
#include <linux/seccomp.h>
int main(void) {
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
        return 2;
    for (unsigned long i = 0;; i++) {
        char t[24], b[24];
        int n = 0, m = 0;
        unsigned long v = i;
        do { t[n++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (n) b[m++] = t[--n];
        b[m++] = '\n';
        write(1, b, (size_t)m);
        for (volatile unsigned long s = 0; s < 20000000; s++)
            ;
    }
}
"#;

/// Main thread: a filter for every thread (getppid fails with 71); then a
/// second thread adds one of its own (getppid fails with 72 there). Each
/// writes what getppid fails with, every 20 ms.
const THREAD_FILTER: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

static void deny_getppid(int err) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        _exit(2);
}

static void report(const char *who) {
    for (;;) {
        char line[32];
        errno = 0;
        long r = syscall(SYS_getppid);
        int n = snprintf(line, sizeof line, "%s %ld %d\n", who, r, errno);
        write(1, line, (size_t)n);
        usleep(20000);
    }
}

static void *own(void *arg) {
    (void)arg;
    deny_getppid(72);
    report("own");
    return NULL;
}

int main(void) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return 2;
    deny_getppid(71);
    pthread_t t;
    if (pthread_create(&t, NULL, own, NULL) != 0)
        return 2;
    report("main");
}
"#;

/// Both threads under one filter (getppid fails with 71); once the file
/// named by argv[1] exists, the main thread adds a filter for every thread
/// with `SECCOMP_FILTER_FLAG_TSYNC` (getppid fails with 73) and writes what
/// that returned. Each thread writes what getppid fails with, every 20 ms.
const SHARED_THEN_TSYNC: &str = r#"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

static long deny_getppid(int err, unsigned flags) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
}

static void line(const char *who) {
    char b[32];
    errno = 0;
    long r = syscall(SYS_getppid);
    int n = snprintf(b, sizeof b, "%s %ld %d\n", who, r, errno);
    write(1, b, (size_t)n);
}

static void *second(void *arg) {
    (void)arg;
    for (;;) {
        line("second");
        usleep(20000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return 2;
    if (deny_getppid(71, 0) != 0)
        return 2;
    pthread_t t;
    if (pthread_create(&t, NULL, second, NULL) != 0)
        return 2;
    int synced = 0;
    for (;;) {
        if (!synced && access(argv[1], F_OK) == 0) {
            char b[32];
            int n = snprintf(b, sizeof b, "tsync %ld\n",
                             deny_getppid(73, SECCOMP_FILTER_FLAG_TSYNC));
            write(1, b, (size_t)n);
            synced = 1;
        }
        line("main");
        usleep(20000);
    }
}
"#;

fn seccomp_of(path: &str) -> (String, String) {
    let s = std::fs::read_to_string(path).expect("status");
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

fn kinds(img: &std::path::Path) -> Vec<String> {
    let o = torpor(&["show", img.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let at = l.find("\"kind\":\"")? + 8;
            l[at..].split('"').next().map(str::to_string)
        })
        .filter(|k| k.contains("seccomp"))
        .collect()
}

#[test]
fn a_strict_task_is_restored_strict_and_counts_on() {
    become_subreaper();
    let dir = scratch("seccomp-strict");
    let bin = compile(&dir, "seccomp", STRICT_SECCOMP, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("seccomp.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL, "the dumped task is killed");
    assert_eq!(kinds(&img), ["thread-seccomp"]);
    let before = lines(&out).len();
    restore(&img);
    assert!(runs(pid, &bin), "restored with pid {pid}");
    let status = format!("/proc/{pid}/status");
    assert_eq!(seccomp_of(&status), ("1".into(), "0".into()));
    wait_for("three more numbers", || lines(&out).len() >= before + 3);
    assert_counted_from_zero(&out);
}

#[test]
fn a_filter_of_one_thread_stays_that_thread_s() {
    become_subreaper();
    let dir = scratch("seccomp-thread");
    let bin = compile(&dir, "threadfilter", THREAD_FILTER, &["-pthread"]);
    let out = dir.join("out.txt");
    let img = dir.join("threadfilter.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    let has = |who: &str| lines(&out).iter().any(|l| l.starts_with(who));
    wait_for("both threads", || has("main ") && has("own "));
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .map(|e| {
            e.expect("entry")
                .file_name()
                .to_str()
                .expect("utf8")
                .parse()
                .expect("tid")
        })
        .collect();
    assert_eq!(tids.len(), 2);
    let other = *tids.iter().find(|&&t| t != pid).expect("second thread");
    let main_status = format!("/proc/{pid}/task/{pid}/status");
    let own_status = format!("/proc/{pid}/task/{other}/status");
    assert_eq!(seccomp_of(&main_status), ("2".into(), "1".into()));
    assert_eq!(seccomp_of(&own_status), ("2".into(), "2".into()));

    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL, "the dumped task is killed");
    // The shared filter, then the thread's own.
    assert_eq!(kinds(&img), ["seccomp-filter", "thread-seccomp"]);
    let before = lines(&out).len();
    restore(&img);
    assert!(runs(pid, &bin), "restored with pid {pid}");
    assert_eq!(seccomp_of(&main_status), ("2".into(), "1".into()));
    assert_eq!(seccomp_of(&own_status), ("2".into(), "2".into()));
    let after = |who: &str| {
        lines(&out)[before..]
            .iter()
            .filter(|l| l.starts_with(who))
            .count()
    };
    wait_for("three lines of each thread", || {
        after("main ") >= 3 && after("own ") >= 3
    });
    for l in lines(&out) {
        match l.split(' ').next() {
            Some("main") => assert_eq!(l, "main -1 71"),
            Some("own") => assert_eq!(l, "own -1 72"),
            _ => panic!("unexpected line {l:?}"),
        }
    }
}

/// Filters every thread shares come back as one set of filter objects, so a
/// `TSYNC` the app makes after the restore reaches every thread.
#[test]
fn shared_filters_take_a_later_tsync_after_restore() {
    become_subreaper();
    let dir = scratch("seccomp-tsync");
    let bin = compile(&dir, "tsync", SHARED_THEN_TSYNC, &["-pthread"]);
    let out = dir.join("out.txt");
    let img = dir.join("tsync.img");
    let go = dir.join("go");
    let pid = spawn(&bin, &[go.to_str().expect("utf8")], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    let has = |who: &str| lines(&out).iter().any(|l| l.starts_with(who));
    wait_for("both threads", || has("main ") && has("second "));
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL, "the dumped task is killed");
    // One chain for both threads: nothing of a thread's own.
    assert_eq!(kinds(&img), ["seccomp-filter"]);
    restore(&img);
    assert!(runs(pid, &bin), "restored with pid {pid}");
    std::fs::write(&go, b"").expect("go");
    wait_for("the TSYNC", || has("tsync "));
    let at = lines(&out)
        .iter()
        .position(|l| l.starts_with("tsync "))
        .expect("tsync line");
    assert_eq!(lines(&out)[at], "tsync 0", "TSYNC reached every thread");
    let later = |who: &str| {
        lines(&out)[at + 1..]
            .iter()
            .filter(|l| l.starts_with(who))
            .cloned()
            .collect::<Vec<_>>()
    };
    wait_for("three lines of each thread after it", || {
        later("main ").len() >= 3 && later("second ").len() >= 4
    });
    assert!(
        later("main ").iter().all(|l| l == "main -1 73"),
        "{:?}",
        later("main ")
    );
    // The second thread's first line after it may have been made before.
    assert!(
        later("second ")[1..].iter().all(|l| l == "second -1 73"),
        "{:?}",
        later("second ")
    );
    let _ = std::fs::remove_file(&go);
}

//! A process tree: a session leader reading a pipe its child fills (with
//! unread bytes in the pipe at the dump), a child in its own process group,
//! a child blocked in waitpid and a grandchild blocked in read on a second
//! pipe. All come back with their pids, parents, sessions and groups; the
//! pipe data arrives without a gap, and the blocked syscalls complete.

mod engine_util;
use engine_util::*;

const TREE: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

static int q[2];
static void on_usr1(int s) { (void)s; write(q[1], "go", 2); }

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    setsid();
    int p[2];
    pipe(p);
    pipe(q);
    pid_t w = fork();
    if (w == 0) {
        close(p[0]);
        setpgid(0, 0);
        for (int i = 0;; i++) {
            char b[32];
            int n = sprintf(b, "%d\n", i);
            write(p[1], b, n);
            usleep(2000);
        }
    }
    close(p[1]);
    pid_t z = fork();
    if (z == 0) {
        pid_t z2 = fork();
        if (z2 == 0) {
            char b[8] = { 0 };
            ssize_t n = read(q[0], b, sizeof b);
            _exit(n == 2 && memcmp(b, "go", 2) == 0 ? 7 : 1);
        }
        printf("z2 %d\n", z2);
        int st = 0;
        pid_t got = waitpid(z2, &st, 0);
        printf("waited %d %d %d\n", got == z2, WIFEXITED(st), WEXITSTATUS(st));
        _exit(0);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    printf("pids %d %d\n", w, z);
    FILE *in = fdopen(p[0], "r");
    char line[64];
    while (fgets(line, sizeof line, in)) {
        printf("r %s", line);
        usleep(6000);
    }
    return 0;
}
"#;

fn stat_of(pid: i32) -> (i32, i32, i32) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let f: Vec<&str> = s[s.rfind(')').expect("comm") + 2..].split(' ').collect();
    (
        f[1].parse().expect("ppid"),
        f[2].parse().expect("pgid"),
        f[3].parse().expect("sid"),
    )
}

fn pipe_bytes(pid: i32, fd: i32) -> i32 {
    let f = std::fs::File::open(format!("/proc/{pid}/fd/{fd}")).expect("open pipe via /proc");
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FIONREAD,
            &raw mut n,
        )
    };
    assert_eq!(rc, 0);
    n
}

#[test]
fn tree_with_pipes_sessions_and_blocked_syscalls() {
    become_subreaper();
    let dir = scratch("tree");
    let bin = compile(&dir, "tree", TREE, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("tree.img");
    let root = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(root);
    wait_for("pids", || {
        lines(&out).iter().any(|l| l.starts_with("pids"))
            && lines(&out).iter().any(|l| l.starts_with("z2"))
    });
    let l = lines(&out);
    let pids: Vec<i32> = l
        .iter()
        .find(|l| l.starts_with("pids"))
        .expect("pids")
        .split(' ')
        .skip(1)
        .map(|x| x.parse().expect("pid"))
        .collect();
    let (w, z) = (pids[0], pids[1]);
    let z2: i32 = l.iter().find(|l| l.starts_with("z2")).expect("z2")[3..]
        .parse()
        .expect("z2 pid");
    for p in [w, z, z2] {
        reaper.add(p);
    }
    wait_for("data buffered in the pipe", || {
        lines(&out).len() > 40 && pipe_bytes(root, 3) > 0
    });
    let before: Vec<(i32, (i32, i32, i32))> =
        [root, w, z, z2].iter().map(|p| (*p, stat_of(*p))).collect();
    assert_eq!(
        before[1].1,
        (root, w, root),
        "writer: own group in root's session"
    );
    assert_eq!(before[3].1, (z, root, root), "grandchild in root's group");

    dump(root, &img, &[]);
    assert_eq!(reap(root), libc::SIGKILL);
    for p in [w, z, z2] {
        assert_eq!(
            reap(p),
            libc::SIGKILL,
            "descendant {p} killed and re-parented here"
        );
    }
    let printed = lines(&out).iter().filter(|l| l.starts_with("r ")).count();

    restore(&img);
    for (p, (ppid, pgid, sid)) in &before {
        let (nppid, npgid, nsid) = stat_of(*p);
        let want_ppid = if *p == root { nppid } else { *ppid };
        assert_eq!(
            (nppid, npgid, nsid),
            (want_ppid, *pgid, *sid),
            "process {p}"
        );
    }
    wait_for("pipe data to keep flowing", || {
        lines(&out).iter().filter(|l| l.starts_with("r ")).count() > printed + 50
    });
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(root, libc::SIGUSR1) }, 0);
    wait_for("the waitpid to complete", || {
        lines(&out).iter().any(|l| l.starts_with("waited"))
    });
    kill_and_reap(root);
    kill_and_reap(w);
    reap(z);

    let l = lines(&out);
    assert!(
        l.contains(&"waited 1 1 7".to_string()),
        "grandchild read 'go' and its parent reaped it: {l:?}"
    );
    let seq: Vec<u64> = l
        .iter()
        .filter_map(|x| x.strip_prefix("r "))
        .map(|x| x.parse().expect("number"))
        .collect();
    let want: Vec<u64> = (0..seq.len() as u64).collect();
    assert_eq!(seq, want, "every number through the pipe, once, in order");
}

const SESSIONS: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    setsid();
    pid_t c = fork();
    if (c == 0) {
        pid_t g = fork();
        if (g == 0) {
            for (;;) pause();
        }
        setsid();
        printf("g %d\n", g);
        for (;;) pause();
    }
    printf("c %d\n", c);
    for (;;) pause();
}
"#;

/// A grandchild forked before its parent's setsid stays in the old session;
/// the restore forks it before the parent's setsid again.
#[test]
fn sessions_left_behind_by_setsid_come_back() {
    become_subreaper();
    let dir = scratch("sessions");
    let bin = compile(&dir, "sessions", SESSIONS, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("sessions.img");
    let root = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(root);
    wait_for("pids", || lines(&out).len() >= 2);
    let get = |k: &str| -> i32 {
        lines(&out)
            .iter()
            .find_map(|l| l.strip_prefix(k).map(|v| v.parse().expect("pid")))
            .expect("pid line")
    };
    let (c, g) = (get("c "), get("g "));
    reaper.add(c);
    reaper.add(g);
    wait_for("the child's own session", || stat_of(c).2 == c);
    let before: Vec<(i32, i32, i32)> = [root, c, g].iter().map(|p| stat_of(*p)).collect();
    assert_eq!(before[2].2, root, "grandchild in the root's session");
    assert_eq!(before[1].2, c, "child leads its own session");

    dump(root, &img, &[]);
    for p in [root, c, g] {
        assert_eq!(reap(p), libc::SIGKILL);
    }
    restore(&img);
    let after: Vec<(i32, i32, i32)> = [root, c, g].iter().map(|p| stat_of(*p)).collect();
    assert_eq!(
        &after[1..],
        &before[1..],
        "child and grandchild: parent, group, session"
    );
    assert_eq!(
        (after[0].1, after[0].2),
        (before[0].1, before[0].2),
        "root: group and session"
    );
    kill_and_reap(root);
    kill_and_reap(c);
    kill_and_reap(g);
}

const ZOMBIES: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pid_t a = fork();
    if (a == 0) _exit(7);
    pid_t b = fork();
    if (b == 0) { for (;;) pause(); }
    kill(b, SIGTERM);
    printf("%d %d\n", a, b);
    while (!go) pause();
    int sa_st = 0, sb_st = 0;
    pid_t ra = waitpid(a, &sa_st, 0), rb = waitpid(b, &sb_st, 0);
    printf("a %d exited %d code %d\n", ra == a, WIFEXITED(sa_st), WEXITSTATUS(sa_st));
    printf("b %d signaled %d sig %d\n", rb == b, WIFSIGNALED(sb_st), WTERMSIG(sb_st));
    return 0;
}
"#;

/// Children that exited and are not yet reaped come back as zombies with
/// their pids and wait statuses, for their parent to reap.
#[test]
fn unreaped_children_come_back_as_zombies() {
    become_subreaper();
    let dir = scratch("zombies");
    let bin = compile(&dir, "zombies", ZOMBIES, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("zombies.img");
    let root = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(root);
    wait_for("pids", || !lines(&out).is_empty());
    let pids: Vec<i32> = lines(&out)[0]
        .split(' ')
        .map(|x| x.parse().expect("pid"))
        .collect();
    let state = |p: i32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        s.rfind(')').and_then(|i| s[i + 2..].chars().next())
    };
    wait_for("two zombies", || {
        pids.iter().all(|p| state(*p) == Some('Z'))
    });
    dump(root, &img, &[]);
    assert_eq!(reap(root), libc::SIGKILL);
    // The zombies went with their parent (reaped by this subreaper).
    for p in &pids {
        reap(*p);
    }
    restore(&img);
    for p in &pids {
        assert_eq!(state(*p), Some('Z'), "{p} is a zombie again");
        assert_eq!(stat_of(*p).0, root, "{p} is the root's child");
    }
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(root, libc::SIGUSR1) }, 0);
    wait_for("the reaping", || lines(&out).len() >= 3);
    assert_eq!(reap(root), 0);
    assert_eq!(
        lines(&out)[1..].to_vec(),
        vec![
            "a 1 exited 1 code 7".to_string(),
            format!("b 1 signaled 1 sig {}", libc::SIGTERM)
        ]
    );
}

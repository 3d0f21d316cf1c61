//! eventfd, signalfd, timerfd and epoll come back at their fd numbers with
//! their state: the counter, the signal set, the timer running, and the
//! watches with their data.

mod engine_util;
use engine_util::*;

const FDS: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
static int fails;
#define CHECK(c) do { if (!(c)) { printf("FAIL %s\n", #c); fails++; } } while (0)
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int ev = eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGUSR2);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sf = signalfd(-1, &m, 0);
    int tf = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = { { 0, 30000000 }, { 0, 30000000 } };
    timerfd_settime(tf, 0, &its, NULL);
    int ep = epoll_create1(0);
    struct epoll_event a = { .events = EPOLLIN, .data.u64 = 0xabcdef0123ULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, ev, &a);
    struct epoll_event b = { .events = EPOLLIN | EPOLLET, .data.u64 = 77 };
    epoll_ctl(ep, EPOLL_CTL_ADD, sf, &b);
    printf("fds %d %d %d %d\n", ev, sf, tf, ep);
    /* Wait for SIGUSR2 through the signalfd: the go. */
    struct signalfd_siginfo si;
    for (;;) {
        CHECK(read(sf, &si, sizeof si) == sizeof si);
        if (si.ssi_signo == SIGUSR2) break;
        printf("got %u\n", si.ssi_signo);
    }
    uint64_t v = 0;
    CHECK(read(ev, &v, 8) == 8 && v == 1);
    int left = 0;
    while (read(ev, &v, 8) == 8) left++;
    CHECK(left == 4);
    usleep(100000);
    CHECK(read(tf, &v, 8) == 8 && v >= 1);
    struct itimerspec q;
    timerfd_gettime(tf, &q);
    CHECK(q.it_interval.tv_sec == 0 && q.it_interval.tv_nsec == 30000000);
    uint64_t one = 1;
    write(ev, &one, 8);
    struct epoll_event out[4];
    int n = epoll_wait(ep, out, 4, 1000);
    CHECK(n == 1 && out[0].data.u64 == 0xabcdef0123ULL);
    kill(getpid(), SIGUSR1);
    n = epoll_wait(ep, out, 4, 1000);
    int saw_sf = 0;
    for (int i = 0; i < n; i++) saw_sf |= out[i].data.u64 == 77;
    CHECK(saw_sf);
    printf(fails ? "DONE\n" : "PASS\n");
    return 0;
}
"#;

fn fd_targets(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let l = std::fs::read_link(e.path())
                .ok()?
                .to_string_lossy()
                .into_owned();
            Some((e.file_name().to_str()?.parse().ok()?, l))
        })
        .filter(|(fd, _)| *fd > 2)
        .collect();
    v.sort();
    v
}

#[test]
fn event_signal_timer_and_epoll_fds_come_back() {
    become_subreaper();
    let dir = scratch("fds");
    let bin = compile(&dir, "fds", FDS, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("fds.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("fds", || !lines(&out).is_empty());
    // A signal queued before the dump reaches the signalfd after restore.
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the first signal", || lines(&out).len() >= 2);
    let before = fd_targets(pid);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert_eq!(fd_targets(pid), before);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 3);
    assert_eq!(reap(pid), 0);
    let l = lines(&out);
    assert_eq!(l[1], format!("got {}", libc::SIGUSR1));
    assert_eq!(l[2..].to_vec(), vec!["PASS".to_string()], "{l:?}");
}

const FIFO: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
static int fails;
#define CHECK(c) do { if (!(c)) { printf("FAIL %s\n", #c); fails++; } } while (0)
int main(int argc, char **argv) {
    (void)argc;
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    mkfifo(argv[1], 0600);
    int rw = open(argv[1], O_RDWR);
    int rd = open(argv[1], O_RDONLY | O_NONBLOCK);
    int wr = open(argv[1], O_WRONLY);
    write(wr, "queued bytes", 12);
    printf("ready %d %d %d\n", rw, rd, wr);
    while (!go) pause();
    char b[64] = { 0 };
    CHECK(read(rd, b, sizeof b) == 12 && memcmp(b, "queued bytes", 12) == 0);
    CHECK(read(rd, b, sizeof b) < 0);
    struct stat a, p;
    fstat(rd, &a);
    stat(argv[1], &p);
    CHECK(S_ISFIFO(a.st_mode) && a.st_ino == p.st_ino);
    CHECK((fcntl(rd, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == (O_RDONLY | O_NONBLOCK));
    CHECK((fcntl(wr, F_GETFL) & O_ACCMODE) == O_WRONLY);
    /* Someone outside opens the FIFO by its name and writes. */
    int other = open(argv[1], O_WRONLY | O_NONBLOCK);
    CHECK(other >= 0 && write(other, "x", 1) == 1);
    CHECK(read(rd, b, 1) == 1 && b[0] == 'x');
    printf(fails ? "DONE\n" : "PASS\n");
    return 0;
}
"#;

/// The FIFO app through dump, kill and restore; with `hold`, this test
/// keeps the FIFO open meanwhile, as a process outside the tree would.
fn fifo_cycle(tag: &str, hold: bool) {
    use std::os::unix::fs::OpenOptionsExt;
    become_subreaper();
    let dir = scratch(tag);
    let bin = compile(&dir, "fifo", FIFO, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("fifo.img");
    let path = dir.join("the.fifo");
    let pid = spawn(&bin, &[path.to_str().expect("utf8")], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || !lines(&out).is_empty());
    // Read-write: a reader and a writer that outlive the tree.
    let holder = hold.then(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("open the FIFO")
    });
    let before = fd_targets(pid);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert_eq!(fd_targets(pid), before);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..].to_vec(), vec!["PASS".to_string()]);
    drop(holder);
}

/// A named FIFO held by the task comes back with its unread bytes, its
/// descriptions' modes, and still reachable by name.
#[test]
fn named_fifo_comes_back() {
    fifo_cycle("fifo", false);
}

/// A FIFO that a process outside the tree keeps open (on the same boot)
/// still holds the bytes the tree left in it: the restore uses it as it is
/// and does not write the saved bytes a second time (the app reads them
/// exactly once).
#[test]
fn named_fifo_held_outside_keeps_its_live_bytes() {
    fifo_cycle("fifo-outside", true);
}

const ECHO: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(void) {
    char b[128];
    for (;;) {
        ssize_t n = read(3, b, sizeof b - 1);
        if (n <= 0) return 3;
        b[n] = 0;
        char r[160];
        int m = snprintf(r, sizeof r, "echo %s", b);
        write(3, r, m);
    }
}
"#;

/// A socket kept outside the image (`--external-fd`) is replaced at restore
/// by the descriptor handed over with `--inherit-fd`, at the same number.
/// Puts `fd` at `at` in a child between fork and exec, kept across the
/// exec: when the socket already sits at `at`, dup2 would do nothing and
/// leave its close-on-exec flag set.
///
/// # Safety
///
/// Only between fork and exec, on descriptors of this process.
unsafe fn fd_at(fd: i32, at: i32) {
    if fd == at {
        // SAFETY: fcntl on our own descriptor, integer arguments.
        unsafe { libc::fcntl(at, libc::F_SETFD, 0) };
    } else {
        // SAFETY: dup2 of our own descriptor; the new one has no
        // close-on-exec flag.
        unsafe { libc::dup2(fd, at) };
    }
}

#[test]
fn external_fd_is_replaced_by_an_inherited_one() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::CommandExt;
    become_subreaper();
    let dir = scratch("external");
    let bin = compile(&dir, "echo", ECHO, &[]);
    let img = dir.join("echo.img");
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    let braw = b.as_raw_fd();
    let mut cmd = std::process::Command::new(&bin);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 and close_range between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            fd_at(braw, 3);
            libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)] // reaped by pid below
    let child = cmd.spawn().expect("spawn");
    drop(b);
    let pid = i32::try_from(child.id()).expect("pid");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    let mut buf = [0u8; 64];
    a.write_all(b"one").expect("send");
    let n = a.read(&mut buf).expect("reply");
    assert_eq!(&buf[..n], b"echo one");

    let spec = format!("{pid}:3=conn");
    dump(pid, &img, &["--external-fd", &spec]);
    assert_eq!(reap(pid), libc::SIGKILL);

    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["restore", "--image", &i]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        "torpor: error: validate: external fd \"conn\" needs a descriptor: give --inherit-fd conn=FD"
    );

    let (mut c, d) = UnixStream::pair().expect("socketpair");
    let draw = d.as_raw_fd();
    let mut r = std::process::Command::new(TORPOR);
    r.args(["restore", "--image", &i, "--inherit-fd", "conn=7"]);
    // SAFETY: dup2 between fork and exec.
    unsafe {
        r.pre_exec(move || {
            fd_at(draw, 7);
            Ok(())
        });
    }
    let o = r.output().expect("torpor");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(d);
    c.write_all(b"two").expect("send");
    let n = c.read(&mut buf).expect("reply");
    assert_eq!(&buf[..n], b"echo two");
    kill_and_reap(pid);
}

const NESTED_FLIGHT: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static int pass(int via, int fd) {
    char b = 'n';
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    return sendmsg(via, &m, 0) == 1 ? 0 : -1;
}
static int take(int via) {
    char b = 0;
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    if (recvmsg(via, &m, MSG_DONTWAIT) != 1 || b != 'n')
        return -1;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    int fd = -1;
    if (h && h->cmsg_type == SCM_RIGHTS)
        memcpy(&fd, CMSG_DATA(h), sizeof fd);
    return fd;
}
/* fd 8's queue passes a socket whose queue passes one whose queue passes
 * one whose queue passes the file "deep" at offset 2; every sender's copy
 * is closed. On SIGUSR1 the chain is walked. */
int main(void) {
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    int sv[2], r[3], w[3];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dup2(sv[0], 8) != 8 || dup2(sv[1], 9) != 9)
        return 2;
    close(sv[0]);
    close(sv[1]);
    for (int i = 0; i < 3; i++) {
        int p[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, p) != 0)
            return 2;
        r[i] = p[0];
        w[i] = p[1];
    }
    int f = open("deep", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0 || write(f, "deep-file", 9) != 9 || lseek(f, 2, SEEK_SET) != 2 || pass(w[2], f) != 0)
        return 3;
    close(f);
    for (int i = 2; i > 0; i--) {
        if (pass(w[i - 1], r[i]) != 0)
            return 3;
        close(r[i]);
        close(w[i]);
    }
    if (pass(9, r[0]) != 0)
        return 3;
    close(r[0]);
    close(w[0]);
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready\n");
    int sig;
    sigwait(&usr1, &sig);
    int fd = 8;
    for (int level = 0; level < 4; level++) {
        int next = take(fd);
        if (next < 0) {
            printf("FAIL level %d: nothing passed\n", level);
            return 1;
        }
        if (fd != 8)
            close(fd);
        fd = next;
    }
    char got[8] = "";
    if (read(fd, got, 4) != 4 || memcmp(got, "ep-f", 4) != 0) {
        printf("FAIL the file reads \"%s\"\n", got);
        return 1;
    }
    printf("PASS\n");
    return 0;
}
"#;

/// Sockets nested three deep in flight, every sender's copy closed, come
/// back: each passes the next, the innermost the file at its offset.
#[test]
fn sockets_in_flight_three_deep_come_back() {
    become_subreaper();
    let dir = scratch("nested-flight");
    let bin = compile(&dir, "nested", NESTED_FLIGHT, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("nested.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || !lines(&out).is_empty());
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..].to_vec(), vec!["PASS".to_string()]);
}

/// Marks argv[1] for FAN_MODIFY in a fanotify group, passes the group
/// over the pair at fds 8 and 9 and closes it: only the queue holds it.
/// On SIGUSR1 it takes the group back, writes to the file, and prints PASS
/// when exactly one FAN_MODIFY event of that file arrives.
const FLIGHT_FANOTIFY: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/socket.h>
#include <unistd.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(int argc, char **argv) {
    signal(SIGUSR1, on_usr1);
    setvbuf(stdout, NULL, _IONBF, 0);
    int g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
    int sv[2];
    if (g < 0 || fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, argv[1]) != 0 ||
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dup2(sv[0], 8) != 8 || dup2(sv[1], 9) != 9)
        return 2;
    close(sv[0]);
    close(sv[1]);
    char b = 'f';
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &g, sizeof g);
    if (sendmsg(9, &m, 0) != 1)
        return 3;
    close(g);
    printf("ready\n");
    while (!go)
        pause();
    struct msghdr r = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    if (recvmsg(8, &r, MSG_DONTWAIT) != 1 || !CMSG_FIRSTHDR(&r)) {
        printf("FAIL no group came back\n");
        return 0;
    }
    int back;
    memcpy(&back, CMSG_DATA(CMSG_FIRSTHDR(&r)), sizeof back);
    int f = open(argv[1], O_WRONLY | O_APPEND);
    if (f < 0 || write(f, "x", 1) != 1) {
        printf("FAIL writing the file\n");
        return 0;
    }
    close(f);
    struct fanotify_event_metadata ev[4];
    ssize_t n = read(back, ev, sizeof ev);
    if (n != (ssize_t)sizeof ev[0] || ev[0].mask != FAN_MODIFY) {
        printf("FAIL expected one FAN_MODIFY event, got %zd bytes (mask %#llx)\n", n,
               n > 0 ? (unsigned long long)ev[0].mask : 0ULL);
        return 0;
    }
    char link[64], path[PATH_MAX] = "";
    snprintf(link, sizeof link, "/proc/self/fd/%d", ev[0].fd);
    ssize_t k = readlink(link, path, sizeof path - 1);
    char *real = realpath(argv[1], NULL);
    if (k <= 0 || !real || strcmp(path, real) != 0) {
        printf("FAIL the event's file is %s, not %s\n", path, real ? real : "?");
        return 0;
    }
    printf("PASS\n");
    return 0;
}
"#;

/// A fanotify group in flight that no process holds comes back: its mark
/// reports a write to the marked file.
#[test]
fn a_fanotify_group_in_flight_comes_back_with_its_mark() {
    become_subreaper();
    let dir = scratch("flight-fanotify");
    let bin = compile(&dir, "fan", FLIGHT_FANOTIFY, &[]);
    let marked = dir.join("marked.txt");
    std::fs::write(&marked, b"m").expect("marked file");
    let out = dir.join("out.txt");
    let img = dir.join("fan.img");
    let pid = spawn(&bin, &[marked.to_str().expect("utf8")], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || !lines(&out).is_empty());
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let show = torpor(&["show", img.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("\"kind\":\"flight-file\"") && l.contains("Fanotify")),
        "a flight-file record of the group: {text}"
    );
    restore(&img);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..].to_vec(), vec!["PASS".to_string()]);
}

/// Opens argv[1] read-write at offset 3, unlinks it, passes it over the
/// pair at fds 8 and 9 and closes it: only the queue holds the file. On
/// SIGUSR1 it takes it back and prints PASS when its offset, contents and
/// link count are as they were.
const FLIGHT_UNLINKED: &str = r#"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(int argc, char **argv) {
    signal(SIGUSR1, on_usr1);
    setvbuf(stdout, NULL, _IONBF, 0);
    int f = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0640);
    int sv[2];
    if (f < 0 || write(f, "unlinked-data", 13) != 13 || lseek(f, 3, SEEK_SET) != 3 ||
        unlink(argv[1]) != 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 ||
        dup2(sv[0], 8) != 8 || dup2(sv[1], 9) != 9)
        return 2;
    close(sv[0]);
    close(sv[1]);
    char b = 'u';
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &f, sizeof f);
    if (sendmsg(9, &m, 0) != 1)
        return 3;
    close(f);
    printf("ready\n");
    while (!go)
        pause();
    struct msghdr r = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    if (recvmsg(8, &r, MSG_DONTWAIT) != 1 || !CMSG_FIRSTHDR(&r)) {
        printf("FAIL no file came back\n");
        return 0;
    }
    int back;
    memcpy(&back, CMSG_DATA(CMSG_FIRSTHDR(&r)), sizeof back);
    struct stat st;
    char got[16] = "";
    off_t at = lseek(back, 0, SEEK_CUR);
    if (fstat(back, &st) != 0 || st.st_nlink != 0 || (st.st_mode & 07777) != 0640 || st.st_size != 13) {
        printf("FAIL links %lu, mode %o, size %lld\n", (unsigned long)st.st_nlink,
               (unsigned)(st.st_mode & 07777), (long long)st.st_size);
        return 0;
    }
    if (at != 3 || read(back, got, 10) != 10 || memcmp(got, "inked-data", 10) != 0 ||
        (fcntl(back, F_GETFL) & O_ACCMODE) != O_RDWR) {
        printf("FAIL offset %lld, contents \"%s\"\n", (long long)at, got);
        return 0;
    }
    printf("PASS\n");
    return 0;
}
"#;

/// An unlinked file in flight that no process holds comes back with its
/// contents, offset, access mode and permissions, unlinked.
#[test]
fn an_unlinked_file_in_flight_comes_back_with_its_contents() {
    become_subreaper();
    let dir = scratch("flight-unlinked");
    let bin = compile(&dir, "unl", FLIGHT_UNLINKED, &[]);
    let gone = dir.join("gone.txt");
    let out = dir.join("out.txt");
    let img = dir.join("unl.img");
    let pid = spawn(&bin, &[gone.to_str().expect("utf8")], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || !lines(&out).is_empty());
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert!(!gone.exists(), "the file is not linked again");
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..].to_vec(), vec!["PASS".to_string()]);
}

const QUEUED_CREDS: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
/* Reads one message of fd 3: `want`, sent by pid/uid/gid. */
static int expect(const char *want, pid_t pid, uid_t uid, gid_t gid) {
    char got[8] = "";
    union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(struct ucred))]; } c;
    memset(&c, 0, sizeof c);
    struct iovec iov = { got, sizeof got };
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = c.buf;
    m.msg_controllen = sizeof c.buf;
    if (recvmsg(3, &m, MSG_DONTWAIT) != (ssize_t)strlen(want) || memcmp(got, want, strlen(want)) != 0) {
        printf("FAIL expected %s, got %s\n", want, got);
        return 1;
    }
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    struct ucred u = { -1, 0, 0 };
    if (h && h->cmsg_type == SCM_CREDENTIALS)
        memcpy(&u, CMSG_DATA(h), sizeof u);
    if (u.pid != pid || u.uid != uid || u.gid != gid) {
        printf("FAIL %s: pid %d uid %u gid %u\n", want, (int)u.pid, (unsigned)u.uid, (unsigned)u.gid);
        return 1;
    }
    return 0;
}
/* fd 3, SO_PASSCRED off, holds "child" from a child running as uid and
 * gid 1000, then "parent" from us, both sent on fd 4, which has
 * SO_PASSCRED on. On SIGUSR1 fd 3's option is checked (still off) and the
 * messages are read with it on. */
int main(void) {
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    int sv[2], on = 1;
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 || dup2(sv[0], 3) != 3 || dup2(sv[1], 4) != 4)
        return 2;
    if (setsockopt(4, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
        return 2;
    pid_t child = fork();
    if (child == 0) {
        if (setresgid(1000, 1000, 1000) != 0 || setresuid(1000, 1000, 1000) != 0)
            _exit(2);
        if (send(4, "child", 5, 0) != 5)
            _exit(3);
        for (;;)
            pause();
    }
    int status;
    for (int i = 0; i < 500; i++) {
        char b[8];
        if (recv(3, b, sizeof b, MSG_PEEK | MSG_DONTWAIT) == 5)
            break;
        if (waitpid(child, &status, WNOHANG) != 0)
            return 4;
        usleep(10000);
    }
    if (send(4, "parent", 6, 0) != 6)
        return 3;
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("ready %d\n", (int)child);
    int sig;
    sigwait(&usr1, &sig);
    int v = -1;
    socklen_t len = sizeof v;
    if (getsockopt(3, SOL_SOCKET, SO_PASSCRED, &v, &len) != 0 || v != 0) {
        printf("FAIL SO_PASSCRED of fd 3 is %d\n", v);
        return 1;
    }
    setsockopt(3, SOL_SOCKET, SO_PASSCRED, &on, sizeof on);
    int fails = expect("child", child, 1000, 1000) + expect("parent", getpid(), getuid(), getgid());
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    printf(fails ? "FAIL\n" : "PASS\n");
    return fails;
}
"#;

/// Messages queued with their senders' credentials (a child as uid and gid
/// 1000, then the parent) come back with them exactly, though the
/// receiver had `SO_PASSCRED` off: the dump turns it on for its peek and
/// back off (a dump that leaves the tree running, then one that does not,
/// sees it off), and the restore sends each message as its sender.
#[test]
fn queued_messages_come_back_with_their_senders_credentials() {
    become_subreaper();
    let dir = scratch("queued-creds");
    let bin = compile(&dir, "creds", QUEUED_CREDS, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("creds.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || !lines(&out).is_empty());
    let child: i32 = lines(&out)[0]
        .strip_prefix("ready ")
        .and_then(|c| c.parse().ok())
        .expect("the child's pid");
    reaper.add(child);
    dump(pid, &img, &["--leave-running"]);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    assert_eq!(reap(child), libc::SIGKILL);
    restore(&img);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    wait_for("the verdict", || lines(&out).len() >= 2);
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..].to_vec(), vec!["PASS".to_string()]);
}

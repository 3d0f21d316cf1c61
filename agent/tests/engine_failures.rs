//! Refusals: a dump that meets something it cannot save fails with a clear
//! step and cause and leaves the tree running; a damaged image is refused
//! before anything is created.

mod engine_util;
use engine_util::*;

const WITH_SOCKET: &str = r#"
#include <stdio.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    /* An acknowledgement left unread: a queue a dump refuses. */
    int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct nlmsghdr h = { sizeof h, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, 1, 0 };
    if (send(s, &h, sizeof h, 0) != sizeof h)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

const COUNTER: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

#[test]
fn unsupported_fd_is_a_clear_error_and_the_tree_runs_on() {
    become_subreaper();
    let dir = scratch("fail-socket");
    let bin = compile(&dir, "sock", WITH_SOCKET, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("sock.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        img.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().next().unwrap_or(""),
        format!(
            "torpor: error: files {pid}: fd 3 of process {pid} (socket:[{}]): a netlink socket: {} bytes of messages wait unread in its receive queue, which torpor cannot queue again",
            socket_inode(pid),
            netlink_waiting(pid, 3)
        ),
    );
    counts_on_untouched(pid, &out, &img);
}

const FANOTIFY_QUEUED: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/fanotify.h>
#include <unistd.h>
int main(int argc, char **argv) {
    /* One FAN_MODIFY event left unread: a queue a dump refuses. */
    int g = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);
    if (argc < 2 || g != 3 || fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, argv[1]) != 0)
        return 2;
    int f = open(argv[1], O_WRONLY);
    if (f < 0 || write(f, "x", 1) != 1)
        return 2;
    close(f);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A fanotify group with an event queued is refused, naming the fd and the
/// bytes waiting (one event: the 24 bytes of its metadata), and the program
/// counts on.
#[test]
fn a_fanotify_group_with_events_queued_is_refused() {
    become_subreaper();
    let dir = scratch("fail-fanotify");
    let bin = compile(&dir, "fan", FANOTIFY_QUEUED, &[]);
    let marked = dir.join("marked");
    std::fs::write(&marked, b"").expect("marked file");
    refused_dump(
        &dir,
        &bin,
        &[marked.to_str().expect("utf8")],
        "fanotify",
        |pid, _| {
            format!(
                "torpor: error: files {pid}: fd 3 of process {pid} (anon_inode:[fanotify]): a fanotify group: 24 bytes of events wait unread in its queue, which torpor cannot queue again"
            )
        },
    );
}

const FANOTIFY_COVERED: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/fanotify.h>
#include <sys/mount.h>
#include <unistd.h>
int main(int argc, char **argv) {
    /* A mount mark on a tmpfs another tmpfs then covers. */
    int g = fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);
    if (argc < 2 || g != 3 || mount("torpor-lower", argv[1], "tmpfs", 0, "size=16k") != 0)
        return 2;
    if (fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD, argv[1]) != 0
        || mount("torpor-upper", argv[1], "tmpfs", 0, "size=16k") != 0)
        return 3;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A mount mark whose mount another covers is refused, naming both mounts:
/// its mount point would reach the other.
#[test]
fn a_fanotify_mark_on_a_covered_mount_is_refused() {
    become_subreaper();
    let dir = scratch("fail-fanotify-covered");
    let bin = compile(&dir, "covered", FANOTIFY_COVERED, &[]);
    let point = dir.join("point");
    std::fs::create_dir(&point).expect("mount point");
    let p = point.to_str().expect("utf8").to_string();
    let _mounts = Unmount(p.clone());
    let ids = |pid: i32| -> Vec<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .expect("mountinfo")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(4) == Some(&p.as_str())).then(|| f[0].parse().expect("mount id"))
            })
            .collect()
    };
    let mut upper_lower = None;
    refused_dump(&dir, &bin, &[&p], "covered", |pid, _| {
        let m = ids(pid);
        upper_lower = Some(m.clone());
        let [lower, upper] = m[..] else {
            panic!("two mounts at {p}: {m:?}")
        };
        format!(
            "torpor: error: files {pid}: fd 3 of process {pid} (anon_inode:[fanotify]): /proc/{pid}/fdinfo/3: \"fanotify mnt_id:{lower:x} mflags:0 mask:20 ignored_mask:0\": mount {lower} at {p} is covered by mount {upper}"
        )
    });
    assert_eq!(upper_lower.map(|m| m.len()), Some(2));
}

/// Detaches the two mounts a test program made at its path, however the
/// test ends.
struct Unmount(String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let Ok(c) = std::ffi::CString::new(self.0.clone()) else {
            return;
        };
        for _ in 0..2 {
            // SAFETY: umount2 with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

const SYMLINK_PATH_FD: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2 || open(argv[1], O_PATH | O_NOFOLLOW) != 3)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// An `O_PATH` descriptor of a symbolic link itself is named as such.
#[test]
fn a_path_fd_on_a_symlink_is_refused_by_its_kind() {
    become_subreaper();
    let dir = scratch("fail-symlink-fd");
    let bin = compile(&dir, "linkfd", SYMLINK_PATH_FD, &[]);
    let link = dir.join("link");
    std::os::unix::fs::symlink("/etc/hostname", &link).expect("symlink");
    refused_dump(
        &dir,
        &bin,
        &[link.to_str().expect("utf8")],
        "linkfd",
        |pid, _| {
            format!(
            "torpor: error: files {pid}: fd 3 of process {pid} is an O_PATH descriptor of a symbolic link itself ({})",
            link.display()
        )
        },
    );
}

const LEADER_EXITS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *count(void *arg) {
    (void)arg;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
    return NULL;
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, count, NULL);
    pthread_exit(NULL);
}
"#;

/// A process whose main thread has exited (`pthread_exit`) while another
/// runs on is named for that, not taken for an exited process.
#[test]
fn a_process_whose_main_thread_exited_is_refused_by_that_name() {
    become_subreaper();
    let dir = scratch("fail-leader-exited");
    let bin = compile(&dir, "leader", LEADER_EXITS, &["-pthread"]);
    refused_dump(&dir, &bin, &[], "leader", |pid, _| {
        format!(
            "torpor: error: freeze: process {pid}: its main thread exited while other threads run"
        )
    });
}

const SHARES_WITH_CHILD: &str = r#"
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static char stack[65536] __attribute__((aligned(16)));
static int child(void *arg) {
    (void)arg;
    for (;;)
        pause();
    return 0;
}
int main(int argc, char **argv) {
    int flags = SIGCHLD;
    if (argc > 1 && strcmp(argv[1], "vm") == 0)
        flags |= CLONE_VM;
    else if (argc > 1 && strcmp(argv[1], "files") == 0)
        flags |= CLONE_FILES;
    else if (argc > 1 && strcmp(argv[1], "fs") == 0)
        flags |= CLONE_FS;
    if (clone(child, stack + sizeof stack, flags, NULL) < 0)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A child made by `clone` sharing its parent's memory, descriptor table
/// or file system context is refused, naming both and what they share;
/// one made like `fork` is not.
#[test]
fn processes_sharing_tables_are_refused_by_what_they_share() {
    become_subreaper();
    let dir = scratch("fail-shared-tables");
    let bin = compile(&dir, "shares", SHARES_WITH_CHILD, &[]);
    for (how, what) in [
        ("vm", "one address space (CLONE_VM without CLONE_THREAD)"),
        ("files", "one file descriptor table (CLONE_FILES)"),
        ("fs", "one working directory, root and umask (CLONE_FS)"),
    ] {
        refused_dump(&dir, &bin, &[how], how, |pid, child| {
            let child = child.expect("one child");
            format!(
                "torpor: error: collect {child}: processes {pid} and {child} share {what}, which a restore would split"
            )
        });
    }
    // Made like fork: dumped.
    let out = dir.join("out-none.txt");
    let pid = spawn(&bin, &["none"], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    reaper.add(kids.trim().parse().expect("one child"));
    let img = dir.join("none.img");
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        img.to_str().expect("utf8"),
        "--leave-running",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

const PASSES_PIDFD: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    pid_t c = fork();
    if (c == 0) {
        for (;;)
            pause();
    }
    int p = (int)syscall(434, c, 0);
    int sv[2];
    if (p < 0 || dup2(p, 7) != 7 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 ||
        dup2(sv[0], 8) != 8 || dup2(sv[1], 9) != 9)
        return 2;
    close(p);
    close(sv[0]);
    close(sv[1]);
    char b = 'p';
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    int seven = 7;
    memcpy(CMSG_DATA(h), &seven, sizeof seven);
    if (sendmsg(9, &m, 0) != 1)
        return 3;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A pidfd in flight, although the tree holds it, is refused naming the
/// socket's fd and the message: it is opened only once the tree exists,
/// after the queues are filled.
#[test]
fn a_pidfd_in_flight_is_refused() {
    become_subreaper();
    let dir = scratch("fail-pidfd-in-flight");
    let bin = compile(&dir, "passes", PASSES_PIDFD, &[]);
    refused_dump(&dir, &bin, &[], "pidfd", |pid, _| {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/7")).expect("fd 7");
        format!(
            "torpor: error: files {pid}: fd 8 of process {pid} is a UNIX socket with file descriptors in flight (SCM_RIGHTS): message 0 passes {}, a pidfd or file of /proc, which torpor does not keep in flight",
            link.display()
        )
    });
}

/// Passes an epoll instance over the pair at fds 8 and 9 and closes it:
/// only the queue holds it.
const PASSES_EPOLL: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    int e = epoll_create1(0);
    int sv[2];
    if (e < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dup2(sv[0], 8) != 8 ||
        dup2(sv[1], 9) != 9)
        return 2;
    close(sv[0]);
    close(sv[1]);
    char b = 'e';
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &e, sizeof e);
    if (sendmsg(9, &m, 0) != 1)
        return 3;
    close(e);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// An epoll instance in flight that no process holds is refused naming the
/// socket's fd, the message and the kind: its watches name descriptors of
/// a table it is no longer seen in.
#[test]
fn an_epoll_instance_in_flight_held_by_no_process_is_refused() {
    become_subreaper();
    let dir = scratch("fail-epoll-in-flight");
    let bin = compile(&dir, "passes", PASSES_EPOLL, &[]);
    refused_dump(&dir, &bin, &[], "epoll", |pid, _| {
        format!(
            "torpor: error: files {pid}: fd 8 of process {pid} is a UNIX socket with file descriptors in flight (SCM_RIGHTS): message 0 passes anon_inode:[eventpoll], an epoll instance, which no process of the tree holds; torpor keeps such a file in flight only when the tree holds it too"
        )
    });
}

const NESTED_FLIGHT: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/stat.h>
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
/* argv[1]: how many sockets nest in flight in fd 8's queue; argv[2]: where
 * their inodes go, outermost first. */
int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 1;
    FILE *out = fopen(argc > 2 ? argv[2] : "/dev/null", "w");
    int sv[2];
    if (!out || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0 || dup2(sv[0], 8) != 8 ||
        dup2(sv[1], 9) != 9)
        return 2;
    close(sv[0]);
    close(sv[1]);
    int r[8], w[8];
    for (int i = 0; i < depth; i++) {
        int p[2];
        struct stat st;
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, p) != 0 || fstat(p[0], &st) != 0)
            return 2;
        r[i] = p[0];
        w[i] = p[1];
        fprintf(out, "%lu\n", (unsigned long)st.st_ino);
    }
    fclose(out);
    /* The innermost socket's queue passes /dev/null. */
    int null = open("/dev/null", 0);
    if (pass(w[depth - 1], null) != 0)
        return 3;
    close(null);
    for (int i = depth - 1; i > 0; i--) {
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
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// Sockets in flight with descriptors in their queue nest three deep at
/// most: one four deep is refused, naming it and the sockets it is in
/// flight in, and the program counts on untouched.
#[test]
fn sockets_in_flight_deeper_than_three_are_refused() {
    become_subreaper();
    let dir = scratch("fail-nested-flight");
    let bin = compile(&dir, "nested", NESTED_FLIGHT, &[]);
    let inodes = dir.join("inodes");
    let path = inodes.to_str().expect("utf8");
    refused_dump(&dir, &bin, &["5", path], "nested", |pid, _| {
        let ino: Vec<String> = std::fs::read_to_string(&inodes)
            .expect("inodes")
            .lines()
            .map(str::to_string)
            .collect();
        format!(
            "torpor: error: files {pid}: socket:[{}] (in flight in message 0 of socket:[{}] (in flight in message 0 of socket:[{}] (in flight in message 0 of fd 8 of process {pid}))) is a UNIX socket with file descriptors in flight (SCM_RIGHTS): message 0 passes socket:[{}], a UNIX socket in flight 4 deep with file descriptors in flight in its own queue; torpor keeps such sockets 3 deep at most",
            ino[2], ino[1], ino[0], ino[3]
        )
    });
}

/// Three sockets nested in flight, the innermost passing /dev/null, are
/// kept: the image holds each as a `flight-file` and what each queue passes.
#[test]
fn sockets_in_flight_three_deep_are_kept() {
    become_subreaper();
    let dir = scratch("nested-flight-kept");
    let bin = compile(&dir, "nested", NESTED_FLIGHT, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("kept.img");
    let pid = spawn(&bin, &["3"], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        img.to_str().expect("utf8"),
        "--leave-running",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let shown = torpor(&["show", img.to_str().expect("utf8")]);
    let text = String::from_utf8_lossy(&shown.stdout);
    let flight: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"flight-file\""))
        .collect();
    assert_eq!(flight.len(), 4, "{text}");
    assert_eq!(
        flight.iter().filter(|l| l.contains("\"Unix\"")).count(),
        3,
        "{text}"
    );
    assert!(flight[3].contains("/dev/null"), "{text}");
    let rights = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"unix-rights\""))
        .count();
    assert_eq!(rights, 4, "{text}");
}

const WAITING_OUTSIDE: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
/* A listener at fd 7 on @torpor-outside-PID whose one waiting connection
 * comes from a process outside the tree (an orphan, reparented away), which
 * writes its socket's inode to argv[1] and ends with the program. */
int main(int argc, char **argv) {
    pid_t me = getpid();
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "torpor-outside-%d", (int)me);
    socklen_t len = (socklen_t)(sizeof(sa_family_t) + 1 + strlen(a.sun_path + 1));
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    if (argc < 2 || l < 0 || bind(l, (struct sockaddr *)&a, len) != 0 || listen(l, 4) != 0 ||
        dup2(l, 7) != 7)
        return 2;
    close(l);
    int done[2];
    if (pipe(done) != 0)
        return 2;
    if (fork() == 0) {
        close(7);
        if (fork() != 0)
            _exit(0);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        struct stat st;
        if (c < 0 || connect(c, (struct sockaddr *)&a, len) != 0 || fstat(c, &st) != 0)
            _exit(2);
        FILE *out = fopen(argv[1], "w");
        fprintf(out, "%lu\n", (unsigned long)st.st_ino);
        fclose(out);
        close(done[1]);
        while (kill(me, 0) == 0)
            usleep(50000);
        _exit(0);
    }
    close(done[1]);
    char b;
    if (read(done[0], &b, 1) != 0)
        return 3;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A connection waiting on a listener of the tree from a client outside
/// it: the listener is refused, naming it and the client, and the program
/// counts on untouched.
#[test]
fn a_connection_waiting_from_outside_the_tree_is_refused() {
    become_subreaper();
    let dir = scratch("fail-waiting-outside");
    let bin = compile(&dir, "outside", WAITING_OUTSIDE, &[]);
    let inode = dir.join("inode");
    let path = inode.to_str().expect("utf8");
    refused_dump(&dir, &bin, &[path], "outside", |pid, _| {
        let ino = std::fs::read_to_string(&inode).expect("inode");
        format!(
            "torpor: error: files {pid}: fd 7 of process {pid} is UNIX listener @torpor-outside-{pid} with a connection waiting to be accepted from socket:[{}], which is outside the dumped tree",
            ino.trim()
        )
    });
}

const CREDS_OF_GONE: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
/* fd 7, with SO_PASSCRED, holds a message a child sent on fd 8 before it
 * exited and was reaped; the child's pid goes to argv[1]. */
int main(int argc, char **argv) {
    int sv[2], on = 1;
    if (argc < 2 || socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 || dup2(sv[0], 7) != 7 ||
        dup2(sv[1], 8) != 8 || setsockopt(7, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
        return 2;
    close(sv[0]);
    close(sv[1]);
    pid_t child = fork();
    if (child == 0)
        _exit(send(8, "gone", 4, 0) == 4 ? 0 : 3);
    int status;
    if (waitpid(child, &status, 0) != child || status != 0)
        return 3;
    FILE *out = fopen(argv[1], "w");
    fprintf(out, "%d\n", (int)child);
    fclose(out);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A queued message whose credentials name a process no longer there (it
/// sent it, exited and was reaped) is refused, naming the socket, the
/// message and the sender: the restore could send it only as another
/// process.
#[test]
fn a_message_with_the_credentials_of_a_process_gone_is_refused() {
    become_subreaper();
    let dir = scratch("fail-creds-gone");
    let bin = compile(&dir, "credsgone", CREDS_OF_GONE, &[]);
    let sender = dir.join("sender");
    let path = sender.to_str().expect("utf8");
    refused_dump(&dir, &bin, &[path], "gone", |pid, _| {
        let child = std::fs::read_to_string(&sender).expect("sender");
        format!(
            "torpor: error: files {pid}: fd 7 of process {pid} is a UNIX socket with messages queued with their senders' credentials (SCM_CREDENTIALS): message 0 was sent by process {} (uid 0, gid 0), which is not in the dumped tree (it has exited or is outside it); torpor restores a message's credentials only from a process it restores",
            child.trim()
        )
    });
}

const PIDFD_OF: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    pid_t target = getppid();
    if (argc > 1 && strcmp(argv[1], "reaped") == 0) {
        target = fork();
        if (target == 0)
            _exit(0);
    }
    if (syscall(SYS_pidfd_open, target, 0) != 3)
        return 2;
    waitpid(target, NULL, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A pidfd of a process outside the tree, or of one reaped, is refused.
#[test]
fn pidfds_of_processes_torpor_cannot_give_again_are_refused() {
    become_subreaper();
    let dir = scratch("fail-pidfd");
    let bin = compile(&dir, "pidfdof", PIDFD_OF, &[]);
    let me = std::process::id();
    refused_dump(&dir, &bin, &["outside"], "outside", |pid, _| {
        format!(
            "torpor: error: files: fd 3 of process {pid} is a pidfd of process {me}, which is not in the tree: torpor cannot give it again"
        )
    });
    refused_dump(&dir, &bin, &["reaped"], "reaped", |pid, _| {
        format!(
            "torpor: error: files {pid}: fd 3 of process {pid} (anon_inode:[pidfd]): a pidfd of a process that has ended and was reaped, which torpor cannot restore"
        )
    });
}

const OPENS_ARG: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2 || open(argv[1], O_RDONLY) != 3)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A file of `/proc` of a process outside the tree is refused: the
/// restore could not open it again.
#[test]
fn a_proc_file_of_a_process_outside_the_tree_is_refused() {
    become_subreaper();
    let dir = scratch("fail-proc-outside");
    let bin = compile(&dir, "opensarg", OPENS_ARG, &[]);
    let me = std::process::id();
    let status = format!("/proc/{me}/status");
    refused_dump(&dir, &bin, &[&status], "proc-outside", |pid, _| {
        format!(
            "torpor: error: files: fd 3 of process {pid} is a file of /proc of process {me}, which is not in the tree: torpor cannot give it again"
        )
    });
}

/// A counting program started with `args` in `dir`, once it has printed
/// three lines: a dump of it (with `extra` options) fails with exit 1;
/// its first line is `expect(pid, its child if it made one)`, and the
/// program counts on untouched.
fn refused_dump(
    dir: &std::path::Path,
    bin: &std::path::Path,
    args: &[&str],
    tag: &str,
    expect: impl FnOnce(i32, Option<i32>) -> String,
) {
    let out = dir.join(format!("out-{tag}.txt"));
    let img = dir.join(format!("{tag}.img"));
    let pid = spawn(bin, args, Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let child = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|k| k.trim().parse().ok());
    if let Some(c) = child {
        reaper.add(c);
    }
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        img.to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{tag}: {err}");
    assert_eq!(
        err.lines().next().unwrap_or(""),
        expect(pid, child),
        "{tag}"
    );
    counts_on_untouched(pid, &out, &img);
}

/// After a refused dump: no image, the program untraced and counting on
/// without a gap.
fn counts_on_untouched(pid: i32, out: &std::path::Path, img: &std::path::Path) {
    assert!(!img.exists(), "no image left behind");
    let part = std::path::PathBuf::from(format!("{}.part", img.display()));
    assert!(!part.exists(), "no partial image left behind");
    let n = lines(out).len();
    wait_for("the program to go on", || lines(out).len() >= n + 5);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.lines().any(|l| l == "TracerPid:\t0"), "detached");
    kill_and_reap(pid);
    assert_counted_from_zero(out);
}

fn socket_inode(pid: i32) -> String {
    let l = std::fs::read_link(format!("/proc/{pid}/fd/3")).expect("fd 3");
    let s = l.to_string_lossy();
    s.trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_string()
}

#[test]
fn dump_of_a_missing_pid_fails_cleanly() {
    let dir = scratch("fail-nopid");
    let img = dir.join("none.img");
    // pid_max is at most 4194304; this one cannot exist.
    let o = torpor(&[
        "dump",
        "--pid",
        "4194999",
        "--image",
        img.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        "torpor: error: freeze: task 4194999 is gone"
    );
    assert!(!img.exists());
}

#[test]
fn damaged_images_are_refused_before_anything_is_created() {
    become_subreaper();
    let dir = scratch("fail-damaged");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("good.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let good = std::fs::read(&img).expect("image");

    let bad = dir.join("bad.img");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(&bad, &flipped).expect("write");
    let o = torpor(&["restore", "--image", bad.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("torpor: error: validate: CRC mismatch in the "),
        "{err}"
    );
    assert!(!runs(pid, &bin), "nothing was created");

    std::fs::write(&bad, &good[..good.len() - 10]).expect("write");
    let o = torpor(&["restore", "--image", bad.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("torpor: error: validate: image truncated at offset "),
        "{err}"
    );
    assert!(!runs(pid, &bin));

    // A mapped file that changed since the dump is refused by name.
    let copy = dir.join("counter-copy");
    std::fs::copy(&bin, &copy).expect("copy");
    let pid2 = spawn(&copy, &[], Some(&out));
    reaper.add(pid2);
    wait_for("output", || lines(&out).len() >= 3);
    let img2 = dir.join("copy.img");
    dump(pid2, &img2, &[]);
    assert_eq!(reap(pid2), libc::SIGKILL);
    let mut bytes = std::fs::read(&copy).expect("binary");
    bytes.push(0);
    std::fs::write(&copy, &bytes).expect("modify binary");
    let o = torpor(&["restore", "--image", img2.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "torpor: error: validate: mapped file {} changed since the dump",
            copy.display()
        )),
        "{err}"
    );
    assert!(!runs(pid2, &copy));
}

const BIG: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/mman.h>
int main(void) {
    size_t n = 256UL << 20;
    unsigned long *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned long s = 88172645463325252UL;
    for (size_t i = 0; i < n / 8; i++) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; p[i] = s; }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"#;

/// The task is killed while its memory is being read: the dump fails with
/// the step and the vanished task, and leaves no image.
#[test]
fn task_killed_mid_dump_fails_cleanly() {
    become_subreaper();
    let dir = scratch("fail-killed");
    let bin = compile(&dir, "big", BIG, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("big.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || !lines(&out).is_empty());
    let child = std::process::Command::new(TORPOR)
        .args([
            "dump",
            "--pid",
            &pid.to_string(),
            "--image",
            img.to_str().expect("utf8"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run torpor");
    // Once the image has started to fill, the task goes.
    wait_for("the dump to start writing", || {
        std::fs::metadata(dir.join("big.img.part"))
            .map(|m| m.len() > 1 << 20)
            .unwrap_or(false)
    });
    // SAFETY: kill with plain integers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let o = child.wait_with_output().expect("torpor");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!("torpor: error: memory {pid}: ")),
        "{err}"
    );
    assert!(
        err.contains("is gone") || err.contains("No such process"),
        "{err}"
    );
    assert!(
        !img.exists() && !dir.join("big.img.part").exists(),
        "no image left behind"
    );
}

const PAIR: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/resource.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct rlimit rl = { 4096, 8192 };
    setrlimit(RLIMIT_NOFILE, &rl);
    pid_t c = fork();
    if (c == 0) {
        for (;;) pause();
    }
    printf("%d\n", c);
    for (;;) pause();
}
"#;

/// A failure after tasks exist (here a limit torpor may not raise) kills
/// every task created and names the process and the step.
#[test]
fn failure_after_creation_leaves_nothing_behind() {
    use std::os::unix::process::CommandExt;
    become_subreaper();
    let dir = scratch("fail-late");
    let bin = compile(&dir, "pair", PAIR, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("pair.img");
    let root = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(root);
    wait_for("child pid", || !lines(&out).is_empty());
    let child: i32 = lines(&out)[0].parse().expect("pid");
    reaper.add(child);
    dump(root, &img, &[]);
    assert_eq!(reap(root), libc::SIGKILL);
    assert_eq!(reap(child), libc::SIGKILL);

    let mut cmd = std::process::Command::new(TORPOR);
    cmd.args(["restore", "--image", img.to_str().expect("utf8")]);
    // SAFETY: setrlimit between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 2048,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const rl);
            Ok(())
        });
    }
    let o = cmd.output().expect("run torpor");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("torpor: error: create tasks: process "),
        "{err}"
    );
    assert!(
        err.contains("setrlimit 7: Operation not permitted"),
        "{err}"
    );
    // By program, not by pid alone: other tests here churn through pids.
    assert!(!runs(root, &bin), "root {root} left behind");
    assert!(!runs(child, &bin), "child {child} left behind");
}

/// The frames of an image: (offset, kind byte, payload length).
fn frames(img: &[u8]) -> Vec<(usize, u8, usize)> {
    let mut at = 0;
    let mut out = vec![];
    while at + 5 <= img.len() {
        let len = u32::from_le_bytes([img[at], img[at + 1], img[at + 2], img[at + 3]]) as usize;
        out.push((at, img[at + 4], len));
        at += len + 9;
    }
    out
}

#[test]
fn a_damaged_page_record_kills_the_tree_before_any_of_it_runs() {
    become_subreaper();
    let dir = scratch("fail-damaged-pages");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("good.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let good = std::fs::read(&img).expect("image");
    // Kind 8: pages. The last one's last data byte: read only as its task
    // is rebuilt, once every task exists.
    let (at, _, len) = *frames(&good)
        .iter()
        .rfind(|f| f.1 == 8)
        .expect("a pages record");
    let mut bad = good.clone();
    bad[at + 5 + len - 1] ^= 0x01;
    let bad_img = dir.join("bad.img");
    std::fs::write(&bad_img, &bad).expect("write");
    let before = lines(&out).len();
    let o = torpor(&["restore", "--image", bad_img.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!(
            "torpor: error: validate: CRC mismatch in the pages record at offset {at}: "
        )),
        "{err}"
    );
    assert!(!runs(pid, &bin), "the tree was killed");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(lines(&out).len(), before, "the counter never ran again");

    // The image itself restores.
    restore(&img);
    wait_for("the restored counter", || lines(&out).len() > before);
    kill_and_reap(pid);
}

const NICE_COUNTER: &str = r#"
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>
int main(void) {
    if (setpriority(PRIO_PROCESS, 0, -5) != 0)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A dump taken for a user refuses a task attribute the user could not
/// set (here a negative nice value, which needs CAP_SYS_NICE), since the
/// restore sets it with torpor's rights; the tree runs on.
#[test]
fn a_users_dump_refuses_a_nice_value_the_user_could_not_set() {
    become_subreaper();
    let dir = scratch("fail-nice");
    let bin = compile(&dir, "nice", NICE_COUNTER, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("nice.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let opts = torpor::engine::dump::DumpOptions {
        requested_by: Some(torpor::image::records::RequestedBy {
            uid: 1000,
            gid: 1000,
            groups: Vec::new(),
        }),
        ..Default::default()
    };
    let err =
        torpor::engine::dump::dump_to_file(pid, &img, torpor::engine::dump::After::Kill, &opts)
            .expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!(
            "collect {pid}: thread {pid} of process {pid} has nice value -5, which uid 1000 may not set without CAP_SYS_NICE"
        )
    );
    counts_on_untouched(pid, &out, &img);
}

const KEEPCAPS_THREAD: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
static void *keep(void *arg) {
    (void)arg;
    prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
    for (;;)
        pause();
}
int main(void) {
    pthread_t t;
    pthread_create(&t, NULL, keep, NULL);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// Securebits are restored per process: threads that differ (here one
/// with SECBIT_KEEP_CAPS) are refused, naming the thread; the tree runs on.
#[test]
fn threads_with_other_securebits_are_refused_and_the_tree_runs_on() {
    become_subreaper();
    let dir = scratch("fail-securebits");
    let bin = compile(&dir, "keepcaps", KEEPCAPS_THREAD, &["-pthread"]);
    let out = dir.join("out.txt");
    let img = dir.join("keepcaps.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| t != pid)
        .expect("a second thread");
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        img.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().next().unwrap_or("").ends_with(&format!(
            ": thread {tid} of process {pid} has securebits 0x10, its main thread 0x0, which torpor cannot restore"
        )),
        "{err}"
    );
    counts_on_untouched(pid, &out, &img);
}

const BOUND_NETLINK: &str = r#"
#include <stdio.h>
#include <string.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl a;
    memset(&a, 0, sizeof a);
    a.nl_family = AF_NETLINK;
    a.nl_pid = 0x6d000000u + (unsigned)getpid();
    if (s != 3 || bind(s, (struct sockaddr *)&a, sizeof a) != 0)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A netlink socket whose port id another socket took since the dump fails
/// the restore naming the fd, the port id and the protocol; once the port
/// is free again the same image restores.
#[test]
fn a_netlink_port_id_taken_fails_the_restore_naming_the_fd() {
    become_subreaper();
    let dir = scratch("fail-netlink-port");
    let bin = compile(&dir, "bound", BOUND_NETLINK, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("bound.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let port = 0x6d00_0000u32 + u32::try_from(pid).expect("pid");
    // SAFETY: a socket of our own, bound to a sockaddr_nl on our stack;
    // close-on-exec, so no process another test spawns meanwhile keeps the
    // port after it is closed.
    let taken = unsafe {
        let s = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        assert!(s >= 0, "socket");
        let mut a: libc::sockaddr_nl = std::mem::zeroed();
        a.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).expect("AF_NETLINK");
        a.nl_pid = port;
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_nl>())
            .expect("sockaddr_nl size");
        assert_eq!(
            libc::bind(s, (&raw const a).cast(), len),
            0,
            "binding port id {port}"
        );
        s
    };
    let o = torpor(&["restore", "--image", img.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().next().unwrap_or(""),
        format!(
            "torpor: error: open files: fd 3 of process {pid}: recreating a netlink socket: binding port id {port} of netlink protocol 0: another socket of the protocol holds it"
        ),
    );
    assert!(!alive(pid) || !runs(pid, &bin));
    // SAFETY: closing the socket made above.
    unsafe { libc::close(taken) };
    restore(&img);
    wait_for("the restored tree to count", || runs(pid, &bin));
    reaper.add(pid);
}

//! Pipes leading outside the dumped tree: the app's stdin is written by
//! this test and its stdout read by it. Without `--inherit-fd` the outside
//! ends are gone after the restore (the app reads the bytes it had not read
//! yet, then end of file; its writes fail with EPIPE); with `--inherit-fd
//! pipe:[INODE]=N` the caller's pipes take their place.

mod engine_util;
use engine_util::*;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const APP: &str = r#"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    signal(SIGPIPE, SIG_IGN);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    FILE *log = fopen(argv[1], "w");
    setvbuf(log, NULL, _IONBF, 0);
    /* The reader outside takes "ready\n" only: "unread\n" stays queued. */
    if (write(1, "ready\nunread\n", 13) != 13) return 2;
    fprintf(log, "ready\n");
    int sig;
    sigwait(&m, &sig);
    char buf[256];
    size_t got = 0;
    ssize_t n;
    while ((n = read(0, buf + got, sizeof buf - 1 - got)) > 0) got += (size_t)n;
    buf[got] = 0;
    fprintf(log, "in=%s eof=%d\n", buf, n == 0);
    n = write(1, "reply\n", 6);
    fprintf(log, "write=%s\n", n == 6 ? "ok" : strerror(errno));
    return 0;
}
"#;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds, checked below.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are fresh and ours.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

fn link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .expect("fd link")
        .to_string_lossy()
        .into_owned()
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn pipes_to_outside_the_tree_are_cut_or_handed_over() {
    become_subreaper();
    let dir = scratch("pipes-outside");
    let bin = compile(&dir, "app", APP, &[]);
    let log = dir.join("log.txt");
    let img = dir.join("app.img");

    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (ir, ow) = (in_r.as_raw_fd(), out_w.as_raw_fd());
    let mut cmd = Command::new(&bin);
    cmd.arg(&log).stderr(Stdio::null());
    // SAFETY: dup2 and close_range between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(ir, 0);
            libc::dup2(ow, 1);
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)] // reaped by pid below
    let child = cmd.spawn().expect("spawn");
    drop((in_r, out_w));
    let pid = i32::try_from(child.id()).expect("pid");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    let mut app_out = std::fs::File::from(out_r);
    let mut app_in = std::fs::File::from(in_w);
    let mut ready = [0u8; 6];
    app_out.read_exact(&mut ready).expect("ready");
    assert_eq!(&ready, b"ready\n");
    app_in.write_all(b"before").expect("stdin");
    wait_for("the app's log", || log_of(&log) == "ready\n");
    let stdin_key = link(pid, 0);
    let stdout_key = link(pid, 1);
    assert!(
        stdin_key.starts_with("pipe:[") && stdout_key.starts_with("pipe:["),
        "{stdin_key} {stdout_key}"
    );

    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let i = img.to_string_lossy().into_owned();
    let shown = String::from_utf8(torpor(&["show", &i]).stdout).expect("utf8");
    let inode = |key: &str| key["pipe:[".len()..key.len() - 1].to_string();
    for (key, outside) in [(&stdin_key, "Write"), (&stdout_key, "Read")] {
        let want = format!("\"inode\": {}, \"outside\": \"{outside}\"", inode(key));
        assert!(
            shown
                .replace(['\n', ' '], "")
                .contains(&want.replace(' ', "")),
            "no {want} in {shown}"
        );
    }

    // No substitutes: the outside ends are gone.
    let o = torpor(&["restore", "--image", &i]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8(o.stderr).expect("utf8");
    let notes: Vec<&str> = err.lines().take(2).collect();
    assert_eq!(
        notes,
        vec![
            format!("torpor: {stdin_key}: its writer was outside the tree: the tree reads the 6 bytes left, then end of file (give --inherit-fd {stdin_key}=FD to connect it)"),
            format!("torpor: {stdout_key}: its reader was outside the tree: writes to it now fail with EPIPE (give --inherit-fd {stdout_key}=FD to connect it)"),
        ]
    );
    assert!(link(pid, 0).starts_with("pipe:[") && link(pid, 1).starts_with("pipe:["));
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert_eq!(reap(pid), 0);
    assert_eq!(log_of(&log), "ready\nin=before eof=1\nwrite=Broken pipe\n");

    // The same image, with this test's new pipes standing in.
    std::fs::write(&log, "ready\n").expect("reset log");
    let (c_r, c_w) = pipe();
    let (d_r, d_w) = pipe();
    let (cr, dw) = (c_r.as_raw_fd(), d_w.as_raw_fd());
    let mut r = Command::new(TORPOR);
    r.args(["restore", "--image", &i]).args([
        "--inherit-fd",
        &format!("{stdin_key}=70"),
        "--inherit-fd",
        &format!("{stdout_key}=71"),
    ]);
    // SAFETY: dup2 between fork and exec, to numbers this test never holds
    // (dup2 onto the fd itself would keep its close-on-exec flag).
    unsafe {
        r.pre_exec(move || {
            libc::dup2(cr, 70);
            libc::dup2(dw, 71);
            Ok(())
        });
    }
    let o = r.output().expect("torpor");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8(o.stderr).expect("utf8");
    assert!(err.starts_with("torpor: restored 1 process(es)"), "{err}");
    drop((c_r, d_w));
    let fd_inode = |fd: &OwnedFd| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("stat")
            .ino()
    };
    assert_eq!(link(pid, 0), format!("pipe:[{}]", fd_inode(&c_w)));
    assert_eq!(link(pid, 1), format!("pipe:[{}]", fd_inode(&d_r)));
    let mut to_app = std::fs::File::from(c_w);
    to_app.write_all(b"after").expect("stdin");
    drop(to_app);
    // SAFETY: kill with plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert_eq!(reap(pid), 0);
    assert_eq!(log_of(&log), "ready\nin=after eof=1\nwrite=ok\n");
    let mut from_app = String::new();
    std::fs::File::from(d_r)
        .read_to_string(&mut from_app)
        .expect("stdout");
    // The bytes the old reader left unread went with it.
    assert_eq!(from_app, "reply\n");
}

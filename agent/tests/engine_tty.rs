//! A process writing to a terminal that no longer exists at restore time:
//! refused with a hint, then restored with `--tty` onto a new terminal, where
//! its output continues.

mod engine_util;
use engine_util::*;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;

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

/// A new pseudo-terminal: (master, slave path).
fn pty() -> (std::fs::File, String) {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on the fd just opened.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt");
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 64];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        (std::fs::File::from(OwnedFd::from_raw_fd(m)), name)
    }
}

/// Everything readable now from a master, without blocking.
fn drain(m: &mut std::fs::File) -> String {
    let fd = std::os::fd::AsRawFd::as_raw_fd(m);
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) };
    let mut s = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match m.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => s.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn nums(s: &str) -> Vec<u64> {
    s.split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect()
}

/// The tests here allocate ptys: one test's freed /dev/pts/N can be the
/// other's next terminal, which would make a vanished terminal reappear.
static PTYS: Mutex<()> = Mutex::new(());

#[test]
fn vanished_terminal_is_refused_then_substituted_with_tty() {
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = scratch("tty");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let img = dir.join("tty.img");
    let (mut master, slave) = pty();
    let pid = spawn(&bin, &[], Some(std::path::Path::new(&slave)));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    let mut seen = String::new();
    wait_for("output on the terminal", || {
        seen.push_str(&drain(&mut master));
        nums(&seen).len() >= 3
    });
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    seen.push_str(&drain(&mut master));
    drop(master);
    wait_for("the terminal to disappear", || {
        !std::path::Path::new(&slave).exists()
    });

    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["restore", "--image", &i]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim_end(),
        format!("torpor: error: validate: device {slave} is gone; give --tty PATH to use another terminal")
    );
    assert!(!runs(pid, &bin));

    let (mut master2, slave2) = pty();
    let o = torpor(&["restore", "--image", &i, "--tty", &slave2]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let link = std::fs::read_link(format!("/proc/{pid}/fd/1")).expect("fd 1");
    assert_eq!(link.to_string_lossy(), slave2);
    let mut more = String::new();
    wait_for("output on the new terminal", || {
        more.push_str(&drain(&mut master2));
        nums(&more).len() >= 3
    });
    kill_and_reap(pid);
    let mut all = nums(&seen);
    all.extend(nums(&more));
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want, "the count continues on the new terminal");
}

const LEADER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    setsid();
    /* A session leader opening a terminal makes it its controlling one. */
    int t = open(ttyname(1), O_RDWR);
    if (t < 0) return 1;
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

fn tty_nr(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    s[s.rfind(')').expect("comm") + 2..]
        .split(' ')
        .nth(4)
        .expect("tty_nr")
        .parse()
        .expect("number")
}

/// A session leader with a controlling terminal takes the substitute
/// terminal as its controlling one after restore.
#[test]
fn session_leader_gets_its_controlling_terminal_back() {
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    use std::os::unix::fs::MetadataExt;
    become_subreaper();
    let dir = scratch("ctty");
    let bin = compile(&dir, "leader", LEADER, &[]);
    let img = dir.join("ctty.img");
    let (mut master, slave) = pty();
    let pid = spawn(&bin, &[], Some(std::path::Path::new(&slave)));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    let mut seen = String::new();
    wait_for("output", || {
        seen.push_str(&drain(&mut master));
        nums(&seen).len() >= 3
    });
    let rdev = std::fs::metadata(&slave).expect("slave").rdev();
    assert_eq!(
        tty_nr(pid),
        rdev,
        "the terminal is its controlling terminal"
    );
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    drop(master);
    wait_for("the terminal to disappear", || {
        !std::path::Path::new(&slave).exists()
    });
    let (mut master2, slave2) = pty();
    let o = torpor(&[
        "restore",
        "--image",
        img.to_str().expect("utf8"),
        "--tty",
        &slave2,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rdev2 = std::fs::metadata(&slave2).expect("slave2").rdev();
    assert_eq!(
        tty_nr(pid),
        rdev2,
        "the substitute is its controlling terminal"
    );
    let mut more = String::new();
    wait_for("output on the new terminal", || {
        more.push_str(&drain(&mut master2));
        !nums(&more).is_empty()
    });
    kill_and_reap(pid);
}

//! Shared helpers of the engine integration tests: compile small C programs,
//! start them with a clean fd table, run torpor, and clean up every process
//! even when an assertion fails.
#![allow(dead_code, unsafe_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TORPOR: &str = env!("CARGO_BIN_EXE_torpor");

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("engine-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Compiles `src` (C) into `dir/name` with the host `cc`.
pub fn compile(dir: &Path, name: &str, src: &str, extra: &[&str]) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, src).expect("write C source");
    let bin = dir.join(name);
    let st = Command::new("cc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&c)
        .args(extra)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed for {name}");
    bin
}

/// Makes this test process adopt orphans, so restored trees (re-parented
/// when torpor exits) can be reaped here.
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Kills and reaps the listed pids when dropped.
#[derive(Debug, Default)]
pub struct Reaper(pub Vec<i32>);

impl Reaper {
    pub fn add(&mut self, pid: i32) {
        self.0.push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &p in &self.0 {
            kill_and_reap(p);
        }
    }
}

pub fn kill_and_reap(pid: i32) {
    // SAFETY: kill and waitpid with plain integers.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &raw mut st, 0);
    }
}

/// Starts `bin args` with stdin from /dev/null, stdout into `out` (or
/// /dev/null), stderr to /dev/null and every other fd closed.
#[allow(clippy::zombie_processes)] // reaped by pid with waitpid
pub fn spawn(bin: &Path, args: &[&str], out: Option<&Path>) -> i32 {
    let stdout = match out {
        Some(p) => Stdio::from(std::fs::File::create(p).expect("create output")),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only close_range, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn test program");
    i32::try_from(child.id()).expect("pid fits")
}

pub fn torpor(args: &[&str]) -> Output {
    Command::new(TORPOR)
        .args(args)
        .output()
        .expect("run torpor")
}

/// Waits (up to 10 s) for `cond`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a child of this process to end; returns the terminating signal
/// (or 0 for a normal exit).
pub fn reap(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: waitpid writes the status word.
    let r = unsafe { libc::waitpid(pid, &raw mut st, 0) };
    assert_eq!(r, pid, "waitpid {pid}");
    if libc::WIFSIGNALED(st) {
        libc::WTERMSIG(st)
    } else {
        0
    }
}

pub fn alive(pid: i32) -> bool {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match s.rfind(')') {
        Some(i) => !matches!(s[i + 2..].chars().next(), Some('Z') | Some('X')),
        None => false,
    }
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The numbers a counting program wrote into `out`, one per line: they
/// must run from 0 without a gap or a repeat.
pub fn assert_counted_from_zero(out: &Path) {
    let all: Vec<u64> = lines(out)
        .iter()
        .map(|l| l.parse().expect("number"))
        .collect();
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want);
}

/// Runs `torpor dump --pid P --image IMG`, asserting success.
pub fn dump(pid: i32, img: &Path, extra: &[&str]) {
    let mut args = vec!["dump", "--pid"];
    let p = pid.to_string();
    args.push(&p);
    args.push("--image");
    let i = img.to_string_lossy().into_owned();
    args.push(&i);
    args.extend_from_slice(extra);
    let o = torpor(&args);
    assert!(
        o.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `torpor restore --image IMG`, asserting success.
pub fn restore(img: &Path) {
    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["restore", "--image", &i]);
    assert!(
        o.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `pid` is alive and runs `bin` (a freed pid may already be someone
/// else's).
pub fn runs(pid: i32, bin: &Path) -> bool {
    alive(pid)
        && std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|e| e == bin)
            .unwrap_or(false)
}

/// Where the v2 hierarchy is mounted with its root: the first `cgroup2`
/// mount of the whole hierarchy, or one made for the test.
pub fn cgroup2_mount(dir: &Path) -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for l in info.lines() {
        let (left, right) = l.split_once(" - ").expect("separator");
        let f: Vec<&str> = left.split(' ').collect();
        if right.starts_with("cgroup2 ") && f[3] == "/" {
            return PathBuf::from(f[4]);
        }
    }
    let at = dir.join("cgroup2");
    std::fs::create_dir_all(&at).expect("mount point");
    let st = std::process::Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(&at)
        .status()
        .expect("run mount");
    assert!(st.success(), "mounting cgroup2 at {}", at.display());
    at
}

/// The v2 line of `/proc/PID/cgroup`.
pub fn cgroup_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("cgroup file")
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v2 line")
        .to_string()
}

pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .expect("cgroup file")
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v2 line")
        .to_string()
}

#[path = "../common/netlink.rs"]
mod netlink;
#[allow(unused_imports)]
pub use netlink::netlink_waiting;

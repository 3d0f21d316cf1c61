//! What `torpor dump` and `torpor restore` print: a progress line only on a
//! terminal, never into a log or a pipe; the summary line unless `--quiet`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::temp_dir;

const TORPOR: &str = env!("CARGO_BIN_EXE_torpor");

/// A process to dump, left running (spawn returns once it runs `sleep`).
fn busy() -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sleep");
    // No descriptor of the test runner's beyond 0, 1 and 2: their pipes
    // would bring warnings of their own.
    // SAFETY: between fork and exec only close_range, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd.arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn torpor(args: &[&str]) -> Output {
    Command::new(TORPOR)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The summary line's figures: (processes, threads, bytes).
fn summary(stderr: &str, verb: &str, tail: &str) {
    let rest = stderr
        .strip_prefix(&format!("torpor: {verb} 1 process(es), 1 thread(s), "))
        .unwrap_or_else(|| panic!("{stderr:?}"));
    let (bytes, rest) = rest.split_once(' ').unwrap();
    assert!(bytes.parse::<u64>().unwrap() > 0, "{stderr:?}");
    assert!(
        rest.starts_with(&format!("bytes of memory{tail}\n")),
        "{stderr:?}"
    );
}

fn kill(pid: u32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL) };
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && start.elapsed() < Duration::from_secs(10) {
        // SAFETY: waitpid has no memory effects beyond the status word.
        unsafe {
            libc::waitpid(
                i32::try_from(pid).unwrap(),
                std::ptr::null_mut(),
                libc::WNOHANG,
            )
        };
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_a_terminal_only_the_summary_and_with_quiet_nothing() {
    let dir = temp_dir("progress-pipe");
    let mut child = busy();
    let pid = child.id();
    let img = dir.join("one.img");
    let p = pid.to_string();
    let o = torpor(&[
        "dump",
        "--pid",
        &p,
        "--image",
        img.to_str().unwrap(),
        "--leave-running",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(o.stdout.is_empty());
    // Exactly the summary: no carriage return, no escape sequence.
    summary(
        &String::from_utf8(o.stderr).unwrap(),
        "dumped",
        &format!(" into {}", img.display()),
    );
    let quiet = dir.join("quiet.img");
    let o = torpor(&[
        "dump",
        "--pid",
        &p,
        "--image",
        quiet.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!((o.stdout.len(), o.stderr.len()), (0, 0), "{o:?}");
    // The quiet dump ended the tree.
    child.wait().unwrap();

    let o = torpor(&["restore", "--image", quiet.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!((o.stdout.len(), o.stderr.len()), (0, 0), "{o:?}");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    kill(pid);
    let o = torpor(&["restore", "--image", img.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8(o.stderr).unwrap();
    // The summary, then at most the line about the tree's clocks.
    let first = err.lines().next().unwrap_or_default();
    summary(&format!("{first}\n"), "restored", "");
    assert!(
        err.lines().skip(1).all(|l| l.starts_with("torpor: ")),
        "{err:?}"
    );
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
    kill(pid);
}

#[test]
fn on_a_terminal_the_dump_shows_its_progress() {
    let dir = temp_dir("progress-tty");
    let mut child = busy();
    let pid = child.id();
    let img = dir.join("tty.img");
    let cmd = format!("{TORPOR} dump --pid {pid} --image {}", img.display());
    // `script` gives the command a pseudo-terminal and copies what it
    // wrote to its own stdout.
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{out}");
    child.wait().unwrap();
    assert!(out.contains("torpor: dumping "), "{out:?}");
    assert!(out.contains(" pages), "), "{out:?}");
    assert!(out.contains("/s, "), "{out:?}");
    assert!(out.contains(" left"), "{out:?}");
    assert!(
        out.contains("torpor: dumped 1 process(es), 1 thread(s), "),
        "{out:?}"
    );
}

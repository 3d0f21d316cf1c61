//! The host end-to-end harness: builds the test apps of `tests/apps`, runs
//! them through the app protocol, and checkpoints them with the `torpor`
//! binary of this package.
//!
//! The protocol (see `tests/apps/common.h`): the app runs in a fresh work
//! directory W with stdin from /dev/null and stdout/stderr on W/app.log
//! (O_WRONLY|O_CREAT|O_TRUNC, one open file description for both), writes
//! `READY <name>`, waits for W/go, then prints `PASS <name>` (exit 0) or
//! `FAIL <name>: ...` (exit 1).
//!
//! The test process makes itself a child subreaper, so a restored root whose
//! parent (`torpor restore`) has exited is re-parented to it and can be
//! waited for like any child. Every wait is bounded; on any failure the work
//! directory is kept and every process of the app still alive is killed.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long an app may take to print READY.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `torpor dump` or `torpor restore` may take.
pub const TORPOR_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an app may take to finish after go.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the tasks of a dumped tree may take to disappear.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(10);

/// The directory holding the app sources.
fn apps_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/apps")
}

fn torpor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_torpor")
}

// ---------------------------------------------------------------- building

type Built = Arc<OnceLock<Result<PathBuf, String>>>;

/// The app's host binary, compiled once per test run: C apps with
/// `cc -O2 -pthread`, the Rust app with `rustc -O`.
pub fn app_binary(name: &str) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Mutex<HashMap<String, Built>>> = OnceLock::new();
    let cell = {
        let mut map = BUILT
            .get_or_init(|| Mutex::new(HashMap::new()))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    };
    cell.get_or_init(|| build_app(name)).clone()
}

fn build_app(name: &str) -> Result<PathBuf, String> {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apps");
    fs::create_dir_all(&out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    let out = out_dir.join(name);
    let partial = out_dir.join(format!("{name}.partial-{}", std::process::id()));
    let src = apps_source_dir();
    let mut cmd = if name == "rustapp" {
        let mut c = Command::new("rustc");
        c.args(["-O", "--edition", "2021", "--crate-name", "rustapp", "-o"])
            .arg(&partial)
            .arg(src.join("rust/src/main.rs"));
        c
    } else {
        let mut c = Command::new("cc");
        c.args(["-O2", "-pthread", "-Wall", "-Wextra", "-o"])
            .arg(&partial)
            .arg(src.join(format!("{name}.c")));
        c
    };
    let output = cmd
        .output()
        .map_err(|e| format!("building {name}: running {cmd:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building {name}: {cmd:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    fs::rename(&partial, &out)
        .map_err(|e| format!("moving {} into place: {e}", partial.display()))?;
    Ok(out)
}

// ------------------------------------------------------------ the work dir

/// A fresh work directory under the cargo target dir, removed when the run
/// passes and kept (its path in the failure message) when it does not.
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Workdir {
    pub fn new(label: &str) -> Result<Self, String> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(format!("{label}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| format!("clearing {}: {e}", path.display()))?;
        }
        fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        // Canonical, so that it compares equal to /proc/PID/cwd.
        let path =
            fs::canonicalize(&path).map_err(|e| format!("resolving {}: {e}", path.display()))?;
        Ok(Self { path, keep: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.path.join("app.log")).unwrap_or_default()
    }

    /// The last lines of app.log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.len().saturating_sub(12);
        let mut tail = lines[start..].join("\n    ");
        if tail.is_empty() {
            tail = "(empty)".to_string();
        }
        format!(
            "app.log ({}) ends:\n    {tail}",
            self.path.join("app.log").display()
        )
    }

    pub fn create_go(&self) -> Result<(), String> {
        File::create(self.path.join("go"))
            .map(drop)
            .map_err(|e| format!("creating go: {e}"))
    }

    fn passed(&mut self) {
        self.keep = false;
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ------------------------------------------------------------- processes

/// Once per test process: become a child subreaper, and mark every
/// inherited fd close-on-exec (cargo's jobserver pipe, for one) so that an
/// app starts with exactly stdin, stdout and stderr.
fn prepare_test_process() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            panic!("prctl(PR_SET_CHILD_SUBREAPER): {e}");
        }
        let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        for fd in fds.into_iter().filter(|&fd| fd > 2) {
            // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; on an fd that is
            // no longer open (the directory's own, already closed) they fail with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    });
}

fn pid_of(raw: i32) -> Pid {
    Pid::from_raw(raw)
}

fn proc_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter of /proc/PID/stat, if the process exists.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].trim_start().chars().next()
}

fn proc_parent(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    stat[close + 1..].split_whitespace().nth(1)?.parse().ok()
}

fn tracer_of(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("TracerPid:"))?;
    line["TracerPid:".len()..].trim().parse().ok()
}

/// The process and all its descendants (children of every thread), root first.
pub fn process_tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let children = task.path().join("children");
                for child in fs::read_to_string(children)
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    if let Ok(c) = child.parse::<i32>() {
                        if !out.contains(&c) {
                            out.push(c);
                        }
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// How a process ended, as seen by waitpid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(Signal),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exited with status {code}"),
            Ended::Killed(sig) => write!(f, "killed by {sig}"),
        }
    }
}

/// Why waiting for a process did not give its end.
#[derive(Debug)]
pub enum WaitError {
    TimedOut,
    NotOurChild,
    Other(String),
}

/// Waits (bounded) for our child — or re-parented descendant — `pid` to end.
pub fn wait_for_exit(pid: i32, timeout: Duration) -> Result<Ended, WaitError> {
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(
            pid_of(pid),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
        ) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Ended::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(Ended::Killed(sig)),
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => return Err(WaitError::NotOurChild),
            Err(e) => return Err(WaitError::Other(format!("waitpid({pid}): {e}"))),
        }
        if Instant::now() >= deadline {
            return Err(WaitError::TimedOut);
        }
        thread::sleep(POLL);
    }
}

/// Kills, on drop, every process still alive that belongs to the run: the
/// recorded pids and their descendants whose cwd is the work directory (so
/// that a recycled pid is never touched), and reaps them.
#[derive(Debug)]
pub struct Reaper {
    workdir: PathBuf,
    pids: BTreeSet<i32>,
}

impl Reaper {
    pub fn new(workdir: &Path) -> Self {
        Self {
            workdir: workdir.to_path_buf(),
            pids: BTreeSet::new(),
        }
    }

    pub fn track(&mut self, pids: &[i32]) {
        self.pids.extend(pids.iter().copied());
    }

    fn belongs(&self, pid: i32) -> bool {
        fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == self.workdir)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let mut all: BTreeSet<i32> = BTreeSet::new();
        for &pid in &self.pids {
            all.extend(process_tree(pid));
        }
        let doomed: Vec<i32> = all
            .into_iter()
            .filter(|&p| proc_exists(p) && self.belongs(p))
            .collect();
        for &pid in &doomed {
            let _ = kill(pid_of(pid), Signal::SIGKILL);
        }
        // Only what was just killed is waited for: a pid reaped earlier may belong to another test by now.
        for &pid in &doomed {
            let _ = wait_for_exit(pid, Duration::from_secs(2));
        }
    }
}

/// Starts the app per the protocol in `w`; returns its pid.
pub fn start_app(binary: &Path, args: &[&str], w: &Workdir) -> Result<i32, String> {
    prepare_test_process();
    let log =
        File::create(w.path().join("app.log")).map_err(|e| format!("creating app.log: {e}"))?;
    let err = log
        .try_clone()
        .map_err(|e| format!("duplicating the app.log fd: {e}"))?;
    let child = Command::new(binary)
        .args(args)
        .current_dir(w.path())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    // Reaped with waitpid by pid, like a restored process; std's Child does not wait on drop.
    i32::try_from(child.id()).map_err(|_| format!("pid {} out of range", child.id()))
}

/// Waits for `READY <name>` in app.log. Returns how the app ended if it
/// already finished after printing READY (the app was reaped then).
pub fn wait_ready(pid: i32, name: &str, w: &Workdir) -> Result<Option<Ended>, String> {
    let want = format!("READY {name}");
    let has_ready = || w.log().lines().any(|l| l == want);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if has_ready() {
            return Ok(None);
        }
        match wait_for_exit(pid, Duration::ZERO) {
            // It may have printed READY between the look at the log and the wait.
            Ok(ended) if has_ready() => return Ok(Some(ended)),
            Ok(ended) => return Err(format!("{name} {ended} before READY\n{}", w.log_tail())),
            Err(WaitError::TimedOut) => {}
            Err(WaitError::NotOurChild) => {
                return Err(format!("{name} (pid {pid}) is not our child"))
            }
            Err(WaitError::Other(e)) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name}: no '{want}' within {READY_TIMEOUT:?}\n{}",
                w.log_tail()
            ));
        }
        thread::sleep(POLL);
    }
}

/// Like `wait_ready`, for runs that need the app still running afterwards.
fn wait_ready_running(pid: i32, name: &str, w: &Workdir) -> Result<(), String> {
    match wait_ready(pid, name, w)? {
        None => Ok(()),
        Some(ended) => Err(format!(
            "{name} {ended} right after READY, before go\n{}",
            w.log_tail()
        )),
    }
}

/// Creates go and waits for the app to end; returns how it ended.
pub fn go_and_wait(pid: i32, name: &str, w: &Workdir) -> Result<Ended, String> {
    w.create_go()?;
    match wait_for_exit(pid, EXIT_TIMEOUT) {
        Ok(ended) => Ok(ended),
        Err(WaitError::TimedOut) => Err(format!(
            "{name} (pid {pid}) still running {EXIT_TIMEOUT:?} after go\n{}",
            w.log_tail()
        )),
        Err(WaitError::NotOurChild) => Err(format!(
            "{name} (pid {pid}) is not a child of the test process (its parent is {:?}); the test \
             process is a child subreaper, so a restored root must be re-parented to it when \
             `torpor restore` exits",
            proc_parent(pid)
        )),
        Err(WaitError::Other(e)) => Err(e),
    }
}

/// The last line of app.log must be exactly `PASS <name>` and the exit status 0.
pub fn expect_pass(name: &str, ended: Ended, w: &Workdir) -> Result<(), String> {
    let log = w.log();
    let last = log.lines().last().unwrap_or("");
    let want = format!("PASS {name}");
    if last != want || ended != Ended::Exited(0) {
        return Err(format!(
            "{name}: expected '{want}' and exit status 0, got '{last}' and {ended}\n{}",
            w.log_tail()
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------ torpor

/// What one torpor command printed and how it ended.
#[derive(Debug)]
pub struct TorporRun {
    pub command: String,
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl TorporRun {
    pub fn describe(&self) -> String {
        format!(
            "`{}` {}\n  stderr: {}\n  stdout: {}",
            self.command,
            self.status,
            indent_or_empty(&self.stderr),
            indent_or_empty(&self.stdout)
        )
    }
}

fn indent_or_empty(s: &str) -> String {
    let s = s.trim_end();
    if s.is_empty() {
        "(empty)".to_string()
    } else {
        s.replace('\n', "\n    ")
    }
}

/// Runs `torpor ARGS` with its output in files of `w`, killed after `timeout`.
pub fn torpor(
    args: &[&str],
    w: &Workdir,
    label: &str,
    timeout: Duration,
) -> Result<TorporRun, String> {
    let out_path = w.path().join(format!("torpor-{label}.out"));
    let err_path = w.path().join(format!("torpor-{label}.err"));
    let out =
        File::create(&out_path).map_err(|e| format!("creating {}: {e}", out_path.display()))?;
    let err =
        File::create(&err_path).map_err(|e| format!("creating {}: {e}", err_path.display()))?;
    let command = format!("torpor {}", args.join(" "));
    let mut child = Command::new(torpor_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {command}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("did not finish within {timeout:?} and was killed"));
            }
            Ok(None) => thread::sleep(POLL),
            Err(e) => break Err(format!("waiting for it: {e}")),
        }
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let (success, status) = match status {
        Ok(s) => (s.success(), format!("ended: {s}")),
        Err(e) => (false, e),
    };
    Ok(TorporRun {
        command,
        success,
        status,
        stdout,
        stderr,
    })
}

/// Ok when this torpor has every one of `commands`; otherwise an error
/// naming the binary and the first command it lacks. A checkpoint run
/// without them cannot test anything, and a refused dump would look like
/// the refusal it expects.
pub fn require_commands(commands: &[&str]) -> Result<(), String> {
    let bin = torpor_bin();
    for command in commands {
        let out = Command::new(bin)
            .args([command, "--help"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `{bin} {command} --help`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{bin} has no `{command}` command: `torpor {command} --help` ended: {}\n  stderr: {}",
                out.status,
                indent_or_empty(&String::from_utf8_lossy(&out.stderr))
            ));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------- runs

/// Starts the app in a fresh work directory and runs `body` on it. On
/// success the directory is removed; on failure it is kept (and named in the
/// message) and every process of the app still alive is killed.
fn run_app<T>(
    label: &str,
    name: &str,
    args: &[&str],
    body: impl FnOnce(i32, &Workdir, &mut Reaper) -> Result<T, String>,
) -> Result<T, String> {
    let binary = app_binary(name)?;
    let mut w = Workdir::new(label)?;
    let result = {
        let mut reaper = Reaper::new(w.path());
        start_app(&binary, args, &w).and_then(|pid| {
            reaper.track(&[pid]);
            body(pid, &w, &mut reaper)
        })
    };
    match result {
        Ok(v) => {
            w.passed();
            Ok(v)
        }
        Err(msg) => Err(format!(
            "{msg}\n  work directory kept: {}",
            w.path().display()
        )),
    }
}

/// `torpor dump --pid PID --image IMAGE`.
fn dump(pid: i32, image: &Path, w: &Workdir, label: &str) -> Result<TorporRun, String> {
    let pid = pid.to_string();
    let image = image.to_string_lossy();
    torpor(
        &["dump", "--pid", &pid, "--image", &image],
        w,
        label,
        TORPOR_TIMEOUT,
    )
}

/// `torpor restore --image IMAGE EXTRA...`.
fn restore(image: &Path, extra: &[&str], w: &Workdir, label: &str) -> Result<TorporRun, String> {
    let image = image.to_string_lossy();
    let mut args = vec!["restore", "--image", &image];
    args.extend_from_slice(extra);
    torpor(&args, w, label, TORPOR_TIMEOUT)
}

/// Control run, no checkpoint: start → READY → go → PASS, exit 0. Returns
/// the app.log contents.
pub fn control_run(name: &str, args: &[&str]) -> Result<String, String> {
    run_app(&format!("control-{name}"), name, args, |pid, w, _| {
        let ended = match wait_ready(pid, name, w)? {
            Some(ended) => ended,
            None => go_and_wait(pid, name, w)?,
        };
        expect_pass(name, ended, w)?;
        Ok(w.log())
    })
}

/// Negative control: with `--selftest-fail=WHAT` the app must print
/// `FAIL <name>: ...` as its last line and exit 1.
pub fn negative_run(name: &str, args: &[&str], what: &str) -> Result<(), String> {
    let flag = format!("--selftest-fail={what}");
    let mut all: Vec<&str> = args.to_vec();
    all.push(&flag);
    run_app(
        &format!("negative-{name}-{what}"),
        name,
        &all,
        |pid, w, _| {
            let ended = match wait_ready(pid, name, w)? {
                Some(ended) => ended,
                None => go_and_wait(pid, name, w)?,
            };
            let log = w.log();
            let last = log.lines().last().unwrap_or("");
            let prefix = format!("FAIL {name}: ");
            if !last.starts_with(&prefix) || ended != Ended::Exited(1) {
                return Err(format!(
                "{name} {flag}: expected a '{prefix}...' line and exit status 1, got '{last}' and {ended}\n{}",
                w.log_tail()
            ));
            }
            Ok(())
        },
    )
}

/// Every negative control of an app, run concurrently; all failures reported.
pub fn negative_runs(name: &str, args: &[&str], whats: &[&str]) -> Result<(), String> {
    app_binary(name)?;
    let errors: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = whats
            .iter()
            .map(|&what| s.spawn(move || negative_run(name, args, what)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("{name}: a negative run panicked")),
            })
            .collect()
    });
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n\n"))
    }
}

/// After a successful dump the whole tree must be gone: reaps what was our
/// child (the root, and descendants re-parented to us) and waits for the rest.
fn expect_tree_gone(name: &str, tree: &[i32], w: &Workdir) -> Result<(), String> {
    let deadline = Instant::now() + GONE_TIMEOUT;
    let root = tree[0];
    match wait_for_exit(root, GONE_TIMEOUT) {
        Ok(Ended::Exited(code)) => {
            return Err(format!(
                "{name} (pid {root}) exited by itself with status {code} during the dump, instead of being \
                 killed by torpor\n{}",
                w.log_tail()
            ))
        }
        Ok(Ended::Killed(_)) | Err(WaitError::NotOurChild) => {}
        Err(WaitError::TimedOut) => {
            return Err(format!(
                "{name} (pid {root}) still exists {GONE_TIMEOUT:?} after a successful `torpor dump` (state {:?})",
                proc_state(root)
            ))
        }
        Err(WaitError::Other(e)) => return Err(e),
    }
    // The root too: when it was not our child, waitpid could not tell whether it is gone.
    for &pid in tree {
        loop {
            // Re-parented to us when its parent died: reap it; otherwise wait for it to vanish.
            let _ = waitpid(
                pid_of(pid),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            );
            if !proc_exists(pid) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name}: task {pid} of the dumped tree {tree:?} still exists {GONE_TIMEOUT:?} after a \
                     successful `torpor dump` (state {:?})",
                    proc_state(pid)
                ));
            }
            thread::sleep(POLL);
        }
    }
    Ok(())
}

/// After a restore the same pids must run again, the root as our child.
fn expect_tree_back(name: &str, tree: &[i32], w: &Workdir) -> Result<(), String> {
    let root = tree[0];
    for &pid in tree {
        if !proc_exists(pid) {
            return Err(format!(
                "{name}: pid {pid} of the tree {tree:?} does not exist after `torpor restore`\n{}",
                w.log_tail()
            ));
        }
    }
    match wait_for_exit(root, Duration::ZERO) {
        Err(WaitError::TimedOut) => {}
        Ok(ended) => {
            return Err(format!("{name} (pid {root}) {ended} right after `torpor restore`\n{}", w.log_tail()))
        }
        Err(WaitError::NotOurChild) => {
            return Err(format!(
                "{name} (pid {root}) is not a child of the test process after `torpor restore` exited (its \
                 parent is {:?}); the test process is a child subreaper, so the restored root must be \
                 re-parented to it",
                proc_parent(root)
            ))
        }
        Err(WaitError::Other(e)) => return Err(e),
    }
    let now = process_tree(root);
    let want: BTreeSet<i32> = tree.iter().copied().collect();
    let got: BTreeSet<i32> = now.iter().copied().collect();
    if want != got {
        return Err(format!(
            "{name}: restored tree: expected pids {want:?}, got {got:?}"
        ));
    }
    if w.log()
        .lines()
        .any(|l| l.starts_with("PASS ") || l.starts_with("FAIL "))
    {
        return Err(format!(
            "{name} printed a result before go\n{}",
            w.log_tail()
        ));
    }
    Ok(())
}

/// Checkpoint run: start → READY → (dump → tree gone → restore → same tree)
/// × `cycles` → go → PASS, exit 0. Returns the app.log contents.
pub fn checkpoint_run(name: &str, args: &[&str], cycles: u32) -> Result<String, String> {
    checkpoint_run_between(name, args, cycles, &|_, _| Ok(()))
}

/// [`checkpoint_run`] with `between(pid, workdir)` run in every cycle once
/// the tree is gone, before the restore: what a power cycle would lose.
pub fn checkpoint_run_between(
    name: &str,
    args: &[&str],
    cycles: u32,
    between: &dyn Fn(i32, &Workdir) -> Result<(), String>,
) -> Result<String, String> {
    checkpoint_run_with(name, args, cycles, &[], between, &|_, _, _| Ok(()))
}

/// What a cycle of [`checkpoint_run_with`] measured: the cycle number, and
/// the wall-clock time from the start of the dump to the end of the restore.
#[derive(Debug, Clone, Copy)]
pub struct Cycle {
    pub number: u32,
    pub dumped_for: Duration,
}

/// Held by each test of an app with pseudo-terminals, so that they run one
/// at a time: a restore needs the pts numbers its dump saw, which a pair
/// of another run of the app (its control, its lazy variant) may hold.
/// Likewise for the netlink app: the address one run adds to lo is an
/// event queued on the sockets of any other run, which a dump refuses.
pub fn one_at_a_time(app: &str) -> Option<std::sync::MutexGuard<'static, ()>> {
    static PTYS: Mutex<()> = Mutex::new(());
    static NETLINK: Mutex<()> = Mutex::new(());
    let lock = if app.contains("pty") {
        &PTYS
    } else if app.contains("netlink") {
        &NETLINK
    } else {
        return None;
    };
    Some(
        lock.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// [`checkpoint_run_between`] with `restore_args` added to every `torpor
/// restore`, and `after(pid, workdir, cycle)` run once each restored tree
/// is back, before the next cycle or go.
pub fn checkpoint_run_with(
    name: &str,
    args: &[&str],
    cycles: u32,
    restore_args: &[&str],
    between: &dyn Fn(i32, &Workdir) -> Result<(), String>,
    after: &dyn Fn(i32, &Workdir, Cycle) -> Result<(), String>,
) -> Result<String, String> {
    require_commands(&["dump", "restore"])?;
    run_app(
        &format!("checkpoint-{name}"),
        name,
        args,
        |pid, w, reaper| {
            wait_ready_running(pid, name, w)?;
            for cycle in 1..=cycles {
                let tree = process_tree(pid);
                reaper.track(&tree);
                let image = w.path().join(format!("img{cycle}"));
                let started = Instant::now();
                let dumped = dump(pid, &image, w, &format!("dump{cycle}"))?;
                if !dumped.success {
                    return Err(format!(
                        "{name}, cycle {cycle}: dump failed: {}\n{}",
                        dumped.describe(),
                        w.log_tail()
                    ));
                }
                expect_tree_gone(name, &tree, w).map_err(|e| {
                    format!("{name}, cycle {cycle}: {e}\n  after {}", dumped.describe())
                })?;
                between(pid, w)
                    .map_err(|e| format!("{name}, cycle {cycle}, between dump and restore: {e}"))?;
                let restored = restore(&image, restore_args, w, &format!("restore{cycle}"))?;
                let dumped_for = started.elapsed();
                if !restored.success {
                    return Err(format!(
                        "{name}, cycle {cycle}: restore failed: {}\n{}",
                        restored.describe(),
                        w.log_tail()
                    ));
                }
                // A lazy restore says what it served lazily; one that fell
                // back to an eager restore would prove nothing.
                if restore_args.contains(&"--lazy")
                    && (!restored.stderr.contains("torpor: lazily: ")
                        || restored.stderr.contains("unavailable"))
                {
                    return Err(format!(
                        "{name}, cycle {cycle}: the restore was not lazy: {}",
                        restored.describe()
                    ));
                }
                expect_tree_back(name, &tree, w).map_err(|e| {
                    format!(
                        "{name}, cycle {cycle}: {e}\n  after {}",
                        restored.describe()
                    )
                })?;
                after(
                    pid,
                    w,
                    Cycle {
                        number: cycle,
                        dumped_for,
                    },
                )
                .map_err(|e| {
                    format!(
                        "{name}, cycle {cycle}, after the restore: {e}\n  after {}",
                        restored.describe()
                    )
                })?;
            }
            let ended = go_and_wait(pid, name, w)?;
            expect_pass(name, ended, w)?;
            Ok(w.log())
        },
    )
}

/// A dump torpor must refuse (e.g. an fd kind it cannot restore): the dump
/// fails with a reason on stderr, the app is left running and untraced, and
/// after go it passes. Returns the reason.
pub fn refused_dump_run(name: &str, args: &[&str]) -> Result<String, String> {
    refused_dump_run_checked(name, args, &|_, _| Ok(()))
}

/// [`refused_dump_run`], with `check(pid, reason)` run on the refusal while
/// the app still waits for go.
pub fn refused_dump_run_checked(
    name: &str,
    args: &[&str],
    check: &dyn Fn(i32, &str) -> Result<(), String>,
) -> Result<String, String> {
    require_commands(&["dump"])?;
    run_app(&format!("refused-{name}"), name, args, |pid, w, _| {
        wait_ready_running(pid, name, w)?;
        let dumped = dump(pid, &w.path().join("img"), w, "dump")?;
        if dumped.success {
            return Err(format!(
                "{name}: expected the dump to be refused, got success: {}",
                dumped.describe()
            ));
        }
        if dumped.stderr.trim().is_empty() {
            return Err(format!(
                "{name}: the refused dump gave no reason on stderr: {}",
                dumped.describe()
            ));
        }
        // Left running: not traced, not stopped.
        let deadline = Instant::now() + GONE_TIMEOUT;
        loop {
            let state = proc_state(pid);
            let tracer = tracer_of(pid);
            if matches!(state, Some('S' | 'R')) && tracer == Some(0) {
                break;
            }
            if state.is_none() || Instant::now() >= deadline {
                return Err(format!(
                    "{name} (pid {pid}) after the refused dump: expected running and untraced, got state \
                     {state:?}, tracer {tracer:?}\n  after {}",
                    dumped.describe()
                ));
            }
            thread::sleep(POLL);
        }
        check(pid, &dumped.stderr)?;
        let ended = go_and_wait(pid, name, w)?;
        expect_pass(name, ended, w)?;
        Ok(dumped.stderr)
    })
}

#[path = "../common/netlink.rs"]
mod netlink;
#[allow(unused_imports)]
pub use netlink::netlink_waiting;

/// A task that exits by itself while it is dumped: the dump either fails
/// cleanly (and the app finishes on its own: PASS, exit 0) or succeeds (the
/// tree is gone; the restored app finishes: PASS, exit 0). Never a hang,
/// never a leftover. Returns which of the two happened.
pub fn exiting_dump_run(name: &str, args: &[&str]) -> Result<String, String> {
    require_commands(&["dump", "restore"])?;
    run_app(&format!("exiting-{name}"), name, args, |pid, w, reaper| {
        if let Some(ended) = wait_ready(pid, name, w)? {
            expect_pass(name, ended, w)?;
            return Ok("it finished before the dump could start".to_string());
        }
        let tree = process_tree(pid);
        reaper.track(&tree);
        let image = w.path().join("img");
        let dumped = dump(pid, &image, w, "dump")?;
        if !dumped.success {
            if dumped.stderr.trim().is_empty() {
                return Err(format!(
                    "{name}: the failed dump gave no reason on stderr: {}",
                    dumped.describe()
                ));
            }
            let ended = wait_for_exit(pid, EXIT_TIMEOUT).map_err(|e| {
                format!(
                    "{name} (pid {pid}) after the failed dump: {e:?}\n  after {}",
                    dumped.describe()
                )
            })?;
            expect_pass(name, ended, w)
                .map_err(|e| format!("{e}\n  after {}", dumped.describe()))?;
            return Ok(format!(
                "dump failed cleanly ({}); the app finished on its own",
                dumped.stderr.trim_end()
            ));
        }
        expect_tree_gone(name, &tree, w)
            .map_err(|e| format!("{e}\n  after {}", dumped.describe()))?;
        let restored = restore(&image, &[], w, "restore")?;
        if !restored.success {
            return Err(format!(
                "{name}: restore failed: {}\n{}",
                restored.describe(),
                w.log_tail()
            ));
        }
        let ended = go_and_wait(pid, name, w)?;
        expect_pass(name, ended, w)?;
        Ok("dumped before it exited; the restored app finished".to_string())
    })
}

/// counter's log: `READY counter`, `count 0`, `count 1`, ... with no gap or
/// repeat, then `PASS counter`.
pub fn check_counter_log(log: &str) -> Result<(), String> {
    let lines: Vec<&str> = log.lines().collect();
    if lines.first() != Some(&"READY counter") {
        return Err(format!(
            "counter log line 1: expected 'READY counter', got {:?}",
            lines.first()
        ));
    }
    let counts = &lines[1..lines.len().saturating_sub(1)];
    if counts.is_empty() {
        return Err("counter log: expected at least one 'count N' line, got none".to_string());
    }
    for (i, line) in counts.iter().enumerate() {
        let want = format!("count {i}");
        if *line != want {
            return Err(format!(
                "counter log line {}: expected '{want}', got '{line}'",
                i + 2
            ));
        }
    }
    if lines.last() != Some(&"PASS counter") {
        return Err(format!(
            "counter log last line: expected 'PASS counter', got {:?}",
            lines.last()
        ));
    }
    Ok(())
}

/// The bytes waiting in the receive queue of packet socket `fd` of `pid`,
/// as `/proc/PID/net/packet` counts them (its `Rmem` column).
pub fn packet_waiting(pid: i32, fd: i32) -> u64 {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link");
    let link = link.to_string_lossy();
    let inode = link
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_string();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/packet")).expect("net/packet");
    let row: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() >= 9 && c[8] == inode)
        .unwrap_or_else(|| panic!("socket:[{inode}] in /proc/{pid}/net/packet"));
    row[6].parse().expect("Rmem")
}

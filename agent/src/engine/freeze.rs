//! Freezing a process tree: every thread of the root and of all its
//! descendants is seized and interrupted, re-scanning until no new task
//! appears. The [`Frozen`] tree detaches everything when dropped, so any
//! failure after this point leaves the tree running unharmed (an interrupted
//! syscall restarts).
//!
//! Nothing here waits without a bound. Two kinds of trees are refused
//! before any of their tasks is seized:
//!
//! - A task waiting in `vfork()` for its child to exec or exit sleeps
//!   uninterruptibly (state `D`) and would never report the interrupt's
//!   stop. It is seen in `/proc/PID/task/TID/syscall`: `vfork`, `clone`
//!   with `CLONE_VFORK`, or `clone3`, blocked in state `D`.
//! - A process in another pid namespace than torpor's, or whose children
//!   go into one (`pid_for_children`): a restore recreates every pid in
//!   torpor's namespace, so such a tree would come back with other pids
//!   than it sees, and killing a namespace's init after a dump waits for
//!   the whole namespace.
//!
//! A task that enters such a wait between the check and the interrupt is
//! given up after [`STOP_TIMEOUT`]: it stays seized until it stops, and
//! [`release_lingering`] lets it go then. Killing a dumped tree waits at
//! most [`KILL_TIMEOUT`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::engine::procfs;
use crate::engine::ptrace::{self, PtraceError, Stop};
use crate::engine::{Cause, EngineError, Step, StepExt};

/// How long a seized task may take to stop after `PTRACE_INTERRUPT`.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the tasks of a dumped tree may take to exit after `SIGKILL`.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Tasks seized by a freeze that gave up on them before they stopped: a
/// running tracee cannot be detached, so each is let go at its first stop.
static LINGERING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn lingering() -> std::sync::MutexGuard<'static, Vec<i32>> {
    LINGERING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Detaches the tasks a freeze gave up on that have stopped since (a
/// signal they stopped for is delivered first); returns how many are still
/// waited for. A long-running tracer (the daemon) calls it now and then;
/// a short one lets its exit detach them.
pub fn release_lingering() -> usize {
    let mut list = lingering();
    list.retain(|&tid| match ptrace::try_wait(tid) {
        Ok(None) => true,
        Ok(Some(Stop::Event(_, ptrace::PTRACE_EVENT_STOP))) => ptrace::detach(tid).is_err(),
        // A signal stop before the interrupt's: deliver it and wait on.
        Ok(Some(Stop::Signal(sig) | Stop::Event(sig, _))) => ptrace::cont(tid, sig).is_ok(),
        Ok(Some(Stop::Exited(_) | Stop::Killed(_))) | Err(_) => false,
    });
    list.len()
}

/// The syscall numbers that create a task, as /proc/PID/syscall shows them.
#[cfg(any(target_arch = "x86_64", target_arch = "arm"))]
const SYS_VFORK: Option<libc::c_long> = Some(libc::SYS_vfork);
#[cfg(not(any(target_arch = "x86_64", target_arch = "arm")))]
const SYS_VFORK: Option<libc::c_long> = None;

/// `tid` of `pid` sleeps in `vfork()` (or a `clone` with `CLONE_VFORK`)
/// until its child execs or exits.
fn in_vfork(pid: i32, tid: i32) -> bool {
    let task = format!("/proc/{pid}/task/{tid}");
    let path = format!("{task}/stat");
    let asleep = procfs::read(&path)
        .ok()
        .and_then(|t| procfs::parse_stat(&path, &t).ok())
        .is_some_and(|s| s.state == 'D');
    if !asleep {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(format!("{task}/syscall")) else {
        return false;
    };
    let mut fields = text.split_whitespace();
    let Some(Ok(nr)) = fields.next().map(str::parse::<libc::c_long>) else {
        return false;
    };
    let flags = fields
        .next()
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    let vfork_flag = u64::try_from(libc::CLONE_VFORK).unwrap_or(0);
    SYS_VFORK == Some(nr)
        || (nr == libc::SYS_clone && flags & vfork_flag != 0)
        || nr == libc::SYS_clone3
}

/// Why a task that did not stop may be unable to: a syscall of it waits
/// for a page of a range registered with userfaultfd (a lazy restore not
/// done), which no signal interrupts. Then the refusal of such a range,
/// as the collection would give it.
fn missing_pages(pid: i32) -> Option<Cause> {
    let path = format!("/proc/{pid}/smaps");
    let maps = procfs::parse_smaps(&path, &procfs::read(&path).ok()?).ok()?;
    let m = maps.iter().find(|m| m.has_flag("um"))?;
    Some(crate::engine::collect::userfaultfd_refusal(pid, m))
}

fn vfork_refusal(pid: i32, tid: i32) -> Cause {
    let who = if pid == tid {
        format!("process {pid}")
    } else {
        format!("process {pid}: thread {tid}")
    };
    Cause::Unsupported(format!(
        "{who} is waiting in vfork() for its child to exec or exit; a vfork in progress cannot be checkpointed"
    ))
}

fn ns_link(pid: &str, which: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Refuses a process that is not in torpor's pid namespace, or whose
/// children would not be.
fn check_pid_namespace(pid: i32) -> Result<(), Cause> {
    let Some(own) = ns_link("self", "pid") else {
        // Without namespace links there is one pid namespace.
        return Ok(());
    };
    let p = pid.to_string();
    let why = format!(
        "torpor restores every pid in its own pid namespace {own}, so this tree cannot be checkpointed"
    );
    match ns_link(&p, "pid") {
        Some(ns) if ns != own => {
            // The innermost pid is the last on the NSpid line.
            let inner = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|l| l.split_whitespace().last().map(str::to_owned))
                });
            let what = if inner.as_deref() == Some("1") {
                format!("process {pid} is the init (pid 1) of pid namespace {ns}")
            } else {
                format!("process {pid} is in pid namespace {ns}")
            };
            return Err(Cause::Unsupported(format!("{what}; {why}")));
        }
        _ => {}
    }
    match ns_link(&p, "pid_for_children") {
        Some(ns) if ns != own => Err(Cause::Unsupported(format!(
            "process {pid} has unshared pid namespace {ns} for its children; {why}"
        ))),
        _ => Ok(()),
    }
}

/// A failed freeze, and whether trying again may succeed.
#[derive(Debug)]
struct FreezeFailure {
    error: EngineError,
    transient: bool,
}

impl FreezeFailure {
    /// A vanished task is transient unless it is the root.
    fn of(error: EngineError, not_root: bool) -> Self {
        let died = matches!(error.cause, Cause::Ptrace(PtraceError::TaskDied(_)));
        FreezeFailure {
            transient: died && not_root,
            error,
        }
    }
}

/// The task exists and has not exited.
fn root_alive(root: i32) -> bool {
    let path = format!("/proc/{root}/stat");
    procfs::read(&path)
        .ok()
        .and_then(|t| procfs::parse_stat(&path, &t).ok())
        .is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// The state letter of a task, for messages (`?` when unreadable).
fn task_state(pid: i32, tid: i32) -> char {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    procfs::read(&path)
        .ok()
        .and_then(|t| procfs::parse_stat(&path, &t).ok())
        .map_or('?', |s| s.state)
}

#[derive(Debug)]
pub struct Frozen {
    /// Processes, every parent before its children.
    pub pids: Vec<i32>,
    /// Parent of each process (the root's is outside the tree).
    pub parent: BTreeMap<i32, i32>,
    /// Threads of each process, main thread first.
    pub threads: BTreeMap<i32, Vec<i32>>,
    /// Zombies of the tree and their wait status: never seized.
    pub zombies: BTreeMap<i32, i32>,
    /// Processes stopped by a signal (SIGSTOP...) before the freeze.
    pub stopped: std::collections::BTreeSet<i32>,
    /// Every seized tid, to be detached.
    seized: Vec<i32>,
    killed: bool,
    /// TCP connections of the dump in repair mode: kept so when the tree
    /// is killed, taken out of it before the tree is released.
    pub tcp: Option<crate::engine::files::TcpRepairing>,
}

fn seize_one(tid: i32) -> Result<Seized, PtraceError> {
    // The parasite's syscalls must not meet the task's seccomp filters.
    // Where the option is refused (torpor itself under seccomp) they may,
    // and a refused syscall fails the dump cleanly.
    // Unread, the task would be seized with its filters active.
    let status = match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(s) => s,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ESRCH) =>
        {
            return Err(PtraceError::TaskDied(tid));
        }
        Err(err) => {
            return Err(PtraceError::Os {
                op: "reading /proc/PID/status",
                tid,
                err,
            })
        }
    };
    let mode = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim);
    // Syscall stops are told apart from a SIGTRAP: injected code is
    // stepped from syscall to syscall (see `remote`).
    let base = ptrace::PTRACE_O_TRACESYSGOOD;
    let suspended = base | ptrace::PTRACE_O_SUSPEND_SECCOMP;
    match mode {
        // Strict mode kills a task at the parasite's first syscall: without
        // the option the task is not seized at all.
        Some("1") => ptrace::seize(tid, suspended).map_err(|e| match e {
            PtraceError::Os { tid, err, .. } => PtraceError::Os {
                op: "PTRACE_SEIZE with PTRACE_O_SUSPEND_SECCOMP (the task is in strict seccomp mode)",
                tid,
                err,
            },
            other => other,
        })?,
        Some("2") if ptrace::seize(tid, suspended).is_ok() => {}
        _ => ptrace::seize(tid, base)?,
    }
    ptrace::interrupt(tid)?;
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        match ptrace::try_wait(tid)? {
            Some(Stop::Event(_, ptrace::PTRACE_EVENT_STOP)) => return Ok(Seized::Stopped),
            // A signal arrived before the interrupt: let the task take it as
            // it would have, then it stops for the pending interrupt.
            Some(Stop::Signal(sig) | Stop::Event(sig, _)) => ptrace::cont(tid, sig)?,
            Some(Stop::Exited(_) | Stop::Killed(_)) => return Err(PtraceError::TaskDied(tid)),
            None if start.elapsed() >= STOP_TIMEOUT => {
                lingering().push(tid);
                return Ok(Seized::Running);
            }
            None => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// How a seize ended.
enum Seized {
    Stopped,
    /// No stop within [`STOP_TIMEOUT`]: the task is left to [`release_lingering`].
    Running,
}

impl Frozen {
    /// Freezes the tree; a descendant that exits meanwhile (gone, or a
    /// zombie its frozen parent cannot reap) makes the tree run again briefly
    /// and the freeze start over, a few times before giving up.
    pub fn freeze(root: i32) -> Result<Frozen, EngineError> {
        let mut attempt = 0;
        loop {
            match Frozen::freeze_once(root) {
                Ok(f) => return Ok(f),
                Err(e) if attempt < 8 && e.transient && root_alive(root) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5 << attempt.min(4)));
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    fn freeze_once(root: i32) -> Result<Frozen, FreezeFailure> {
        let mut f = Frozen {
            pids: Vec::new(),
            parent: BTreeMap::new(),
            threads: BTreeMap::new(),
            zombies: BTreeMap::new(),
            stopped: std::collections::BTreeSet::new(),
            seized: Vec::new(),
            killed: false,
            tcp: None,
        };
        let step = Step::Freeze;
        loop {
            let mut new = 0;
            let mut order = vec![root];
            let mut i = 0;
            while i < order.len() {
                let pid = order[i];
                i += 1;
                let stat_path = format!("/proc/{pid}/stat");
                let stat = procfs::read(&stat_path)
                    .and_then(|t| procfs::parse_stat(&stat_path, &t))
                    .map_err(|_| Cause::Ptrace(PtraceError::TaskDied(pid)))
                    .step(step)
                    .map_err(|e| FreezeFailure::of(e, pid != root))?;
                // Seized, a task shows 't'; 'T' is a group stop of its own.
                if stat.state == 'T' {
                    f.stopped.insert(pid);
                }
                if stat.state == 'Z' && pid != root {
                    // An exited child its frozen parent has not reaped: it
                    // comes back as a zombie with the same status, unless
                    // only its leader exited and other threads run on.
                    // Unread, no thread list would pass for a lone leader.
                    let tids = procfs::threads(pid)
                        .map_err(|_| Cause::Ptrace(PtraceError::TaskDied(pid)))
                        .step(step)
                        .map_err(|e| FreezeFailure::of(e, pid != root))?;
                    if tids.iter().all(|t| *t == pid) {
                        f.zombies.insert(pid, stat.exit_code);
                        f.threads.insert(pid, Vec::new());
                        continue;
                    }
                    return Err(FreezeFailure {
                        transient: false,
                        error: EngineError {
                            step,
                            cause: Cause::Unsupported(format!(
                                "process {pid}: its main thread exited while other threads run"
                            )),
                        },
                    });
                }
                if stat.state == 'Z' || stat.state == 'X' {
                    // The root's leader may have exited alone too.
                    let alone = procfs::threads(pid).is_ok_and(|t| t.iter().any(|&t| t != pid));
                    let why = if alone {
                        format!("process {pid}: its main thread exited while other threads run")
                    } else {
                        format!("process {pid} has exited and is not yet reaped (zombie)")
                    };
                    return Err(FreezeFailure {
                        transient: pid != root && !alone,
                        error: EngineError {
                            step,
                            cause: Cause::Unsupported(why),
                        },
                    });
                }
                let refuse = |cause| FreezeFailure {
                    transient: false,
                    error: EngineError { step, cause },
                };
                if !f.threads.contains_key(&pid) {
                    check_pid_namespace(pid).map_err(refuse)?;
                }
                let tids = procfs::threads(pid)
                    .map_err(|_| Cause::Ptrace(PtraceError::TaskDied(pid)))
                    .step(step)
                    .map_err(|e| FreezeFailure::of(e, pid != root))?;
                for &tid in &tids {
                    if !f.seized.contains(&tid) {
                        if in_vfork(pid, tid) {
                            return Err(refuse(vfork_refusal(pid, tid)));
                        }
                        let seized = seize_one(tid).step(step).map_err(|e| {
                            // An exiting task refuses PTRACE_SEIZE (EPERM).
                            let exiting = tid != root && !root_alive(tid);
                            let mut f = FreezeFailure::of(e, tid != root);
                            f.transient |= exiting;
                            f
                        })?;
                        if let Seized::Running = seized {
                            let cause = if in_vfork(pid, tid) {
                                vfork_refusal(pid, tid)
                            } else if let Some(c) = missing_pages(pid) {
                                c
                            } else {
                                Cause::Unsupported(format!(
                                    "task {tid} of process {pid} did not stop within {} s of PTRACE_INTERRUPT (state {})",
                                    STOP_TIMEOUT.as_secs(),
                                    task_state(pid, tid)
                                ))
                            };
                            return Err(refuse(cause));
                        }
                        f.seized.push(tid);
                        new += 1;
                    }
                }
                let mut tids = tids;
                tids.retain(|t| *t != pid);
                tids.insert(0, pid);
                f.threads.insert(pid, tids);
                for c in procfs::children(pid)
                    .step(step)
                    .map_err(|e| FreezeFailure::of(e, true))?
                {
                    f.parent.insert(c, pid);
                    order.push(c);
                }
            }
            f.pids = order;
            if new == 0 {
                break;
            }
        }
        // Tasks that left between scans are no longer listed.
        let live: Vec<i32> = f.threads.values().flatten().copied().collect();
        f.seized.retain(|t| live.contains(t));
        Ok(f)
    }

    /// Detaches every thread; the tree continues.
    pub fn release(&mut self) {
        // Out of repair mode before any task can use the sockets again.
        drop(self.tcp.take());
        for &tid in self.seized.iter().rev() {
            let _ = ptrace::detach(tid);
        }
        self.seized.clear();
    }

    /// Kills every process of the tree and waits, at most [`KILL_TIMEOUT`],
    /// until each is gone. A task still there then is named in the error;
    /// the tree has been sent `SIGKILL` either way.
    pub fn kill(&mut self) -> Result<(), EngineError> {
        for &pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.killed = true;
        // The connections close in repair mode: their peers see nothing.
        if let Some(t) = self.tcp.take() {
            t.keep();
        }
        // Wait for the exit report the tracer gets, so the tasks are dead
        // when the dump returns. Every task is asked each round: a traced
        // group leader's exit is reported only after its other threads'.
        let mut left = std::mem::take(&mut self.seized);
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            left.retain(|&tid| {
                !matches!(
                    ptrace::try_wait(tid),
                    Ok(Some(Stop::Exited(_) | Stop::Killed(_))) | Err(_)
                )
            });
            let Some(&tid) = left.first() else {
                return Ok(());
            };
            if start.elapsed() >= KILL_TIMEOUT {
                let pid = self
                    .threads
                    .iter()
                    .find(|(_, t)| t.contains(&tid))
                    .map_or(tid, |(p, _)| *p);
                return Err(EngineError {
                    step: Step::Kill,
                    cause: Cause::Unsupported(format!(
                        "task {tid} of process {pid} did not exit within {} s of SIGKILL (state {})",
                        KILL_TIMEOUT.as_secs(),
                        task_state(pid, tid)
                    )),
                });
            }
            std::thread::sleep(pause);
            // A large tree takes a while to free its memory: looked at
            // often enough that the dump does not outlast it by much.
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.killed {
            self.release();
        }
    }
}

//! Freezing a process tree: every thread of the root and of all its
//! descendants is seized and interrupted, re-scanning until no new task
//! appears. The [`Frozen`] tree detaches everything when dropped, so any
//! failure after this point leaves the tree running unharmed (an interrupted
//! syscall restarts).

use std::collections::BTreeMap;

use crate::engine::procfs;
use crate::engine::ptrace::{self, PtraceError, Stop};
use crate::engine::{Cause, EngineError, Step, StepExt};

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
}

fn seize_one(tid: i32) -> Result<(), PtraceError> {
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
    let filtered = status
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2'));
    if !(filtered && ptrace::seize(tid, ptrace::PTRACE_O_SUSPEND_SECCOMP).is_ok()) {
        ptrace::seize(tid, 0)?;
    }
    ptrace::interrupt(tid)?;
    loop {
        match ptrace::wait(tid)? {
            Stop::Event(_, ptrace::PTRACE_EVENT_STOP) => return Ok(()),
            // A signal arrived before the interrupt: let the task take it as
            // it would have, then it stops for the pending interrupt.
            Stop::Signal(sig) | Stop::Event(sig, _) => ptrace::cont(tid, sig)?,
            Stop::Exited(_) | Stop::Killed(_) => return Err(PtraceError::TaskDied(tid)),
        }
    }
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
                    return Err(FreezeFailure {
                        transient: pid != root,
                        error: EngineError {
                            step,
                            cause: Cause::Unsupported(format!(
                                "process {pid} has exited and is not yet reaped (zombie)"
                            )),
                        },
                    });
                }
                let tids = procfs::threads(pid)
                    .map_err(|_| Cause::Ptrace(PtraceError::TaskDied(pid)))
                    .step(step)
                    .map_err(|e| FreezeFailure::of(e, pid != root))?;
                for &tid in &tids {
                    if !f.seized.contains(&tid) {
                        seize_one(tid).step(step).map_err(|e| {
                            // An exiting task refuses PTRACE_SEIZE (EPERM).
                            let exiting = tid != root && !root_alive(tid);
                            let mut f = FreezeFailure::of(e, tid != root);
                            f.transient |= exiting;
                            f
                        })?;
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
        for &tid in self.seized.iter().rev() {
            let _ = ptrace::detach(tid);
        }
        self.seized.clear();
    }

    /// Kills every process of the tree and waits until each is gone.
    pub fn kill(&mut self) {
        for &pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Leaders last: a traced group leader's exit is reported only after
        // its other threads have been reaped.
        let leaders: Vec<i32> = self.pids.clone();
        let mut order: Vec<i32> = self
            .seized
            .iter()
            .copied()
            .filter(|t| !leaders.contains(t))
            .collect();
        order.extend(self.seized.iter().copied().filter(|t| leaders.contains(t)));
        for &tid in &order {
            // Wait for the exit report the tracer gets, so the tasks are
            // dead when the dump returns.
            loop {
                match ptrace::wait(tid) {
                    Ok(Stop::Exited(_)) | Ok(Stop::Killed(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        self.seized.clear();
        self.killed = true;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.killed {
            self.release();
        }
    }
}

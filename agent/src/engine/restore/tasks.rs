//! The tasks: forked top-down with their original pids (`clone3` with
//! `set_tid`), each by its restored parent so parentage, sessions and
//! process groups come back. Each new task sets up what it can itself (fds
//! at their numbers, cwd, umask, rlimits, session and group), reports
//! "ready" and waits to be seized. [`Created`] kills them all unless the
//! restore completes.
//!
//! Unsafe code: `clone3` with `set_tid` has no safe wrapper, and the child
//! sets itself up with raw syscalls (dup2, setsid, setpgid, rlimits) before
//! it stops; torpor reads its own signal dispositions, which every task
//! inherits, with a raw `rt_sigaction`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Read;

use crate::arch::Bits;
use crate::engine::procfs;
use crate::engine::ptrace::{self, Stop};
use crate::engine::state::FileKind;
use crate::engine::state::{ImageState, ProcessState};
use crate::engine::{conv, EngineError, Step, StepExt};

use super::objects::Objects;
use super::{last_os, refused};
use crate::engine::files::move_high;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, bytemuck::NoUninit)]
pub(super) struct CloneArgs {
    pub(super) flags: u64,
    pub(super) pidfd: u64,
    pub(super) child_tid: u64,
    pub(super) parent_tid: u64,
    pub(super) exit_signal: u64,
    pub(super) stack: u64,
    pub(super) stack_size: u64,
    pub(super) tls: u64,
    pub(super) set_tid: u64,
    pub(super) set_tid_size: u64,
    pub(super) cgroup: u64,
}

/// fork(2) with a chosen pid: 0 in the child, the pid in the parent.
#[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit ARM
pub(crate) fn fork_with_pid(pid: i32) -> Result<i32, std::io::Error> {
    let tid: libc::pid_t = pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: (&raw const tid) as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a
    // copy of this single-threaded process and returns 0 here.
    // SAFETY: a plain syscall on integers or live C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            core::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        let e = last_os();
        let why = if e.raw_os_error() == Some(libc::EEXIST) {
            format!("pid {pid} is already in use")
        } else {
            format!("clone3 with pid {pid}: {e}")
        };
        return Err(std::io::Error::new(e.kind(), why));
    }
    Ok(conv::fit(
        r,
        "pid_t",
        format_args!("clone3 result for pid {pid}"),
    )?)
}

/// Writes one report line to torpor (atomic: shorter than PIPE_BUF).
fn report(fd: i32, line: &str) {
    let mut b = line.as_bytes().to_vec();
    b.truncate(500);
    b.push(b'\n');
    // Unchecked: a line that does not arrive is read by torpor as the
    // tasks ending before reporting ready, which fails the restore.
    // SAFETY: writing our buffer to the report pipe.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// Runs in each new task (a copy of torpor): recreate children, session,
/// group and fds, report, and wait to be taken over by the tracer.
fn task_main(st: &ImageState, idx: usize, objs: &Objects, report_fd: i32, parent: i32) -> ! {
    let p = &st.processes[idx];
    // Until the whole tree is rebuilt, a task dies with its parent: torpor
    // killed in the middle of a restore leaves no half-built process
    // behind, and neither does a task whose parent died. The restore
    // clears this again just before it lets the tree go.
    // SAFETY: prctl and getppid take and return integers.
    let orphaned = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 || libc::getppid() != parent
    };
    if orphaned {
        // SAFETY: leaving the forked child without running torpor's exit path.
        unsafe { libc::_exit(1) };
    }
    if let Err(e) = task_setup(st, idx, objs, report_fd) {
        report(report_fd, &format!("{} err {e}", p.task.pid));
        // SAFETY: leaving the forked child without running torpor's exit path.
        unsafe { libc::_exit(1) };
    }
    report(report_fd, &format!("{} ok", p.task.pid));
    // SAFETY: closing the report pipe; nothing else refers to it.
    unsafe { libc::close(report_fd) };
    if let Some(status) = p.task.exit_status {
        exit_as(status);
    }
    loop {
        // SAFETY: pause has no memory effects; the tracer interrupts it.
        unsafe { libc::pause() };
    }
}

/// The disposition of signal `sig` a live task has until the restore sets
/// one: torpor's own, which each task inherits through the forks that make
/// it (a task changes none before it is seized; only a zombie does, in
/// `exit_as`, and its dispositions are never set). `None` if it cannot be
/// read. The kernel's `struct sigaction` is [`KSigaction`] on every target.
pub(super) fn inherited_sigaction(sig: u8) -> Option<torpor_parasite::KSigaction> {
    let mut old = torpor_parasite::KSigaction::default();
    // The kernel's sigset_t: 64 signals, `KSigaction::mask`.
    let size: libc::c_long = 8;
    // SAFETY: rt_sigaction with no new action only writes the current one,
    // a kernel `struct sigaction` (`KSigaction`), into `old`; `size` is its
    // mask's size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::c_long::from(sig),
            std::ptr::null::<torpor_parasite::KSigaction>(),
            &raw mut old,
            size,
        )
    };
    (rc == 0).then_some(old)
}

/// Ends a recreated zombie with its recorded wait status: killed by the
/// same signal (without a core file), or exited with the same code.
fn exit_as(status: i32) -> ! {
    let sig = status & 0x7f;
    if sig != 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on integers and on local structs; the
        // signal's default action ends the process.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &raw const no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    // SAFETY: leaving the forked child without running torpor's exit path.
    unsafe { libc::_exit((status >> 8) & 0xff) }
}

fn task_setup(st: &ImageState, idx: usize, objs: &Objects, report_fd: i32) -> Result<(), String> {
    let p = &st.processes[idx];
    let fork_children = |early: bool| -> Result<(), String> {
        for (ci, c) in st.processes.iter().enumerate() {
            if c.task.ppid != p.task.pid || ci == idx {
                continue;
            }
            // A child still in the session this task had before its setsid
            // must be forked before it.
            let keeps_old_session = c.task.sid != p.task.sid && c.task.sid != c.task.pid;
            if keeps_old_session != early {
                continue;
            }
            match fork_with_pid(c.task.pid) {
                Ok(0) => task_main(st, ci, objs, report_fd, p.task.pid),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    fork_children(true)?;
    // SAFETY (all libc calls below): plain syscalls on integers or on C
    // strings that live across the call.
    if p.task.sid == p.task.pid {
        // SAFETY: see above.
        if unsafe { libc::setsid() } < 0 {
            return Err(format!("setsid: {}", last_os()));
        }
        take_terminal(st, p, objs)?;
    } else if p.task.ppid != 0 {
        // SAFETY: see above.
        let now = unsafe { libc::getsid(0) };
        if now != p.task.sid {
            return Err(format!(
                "cannot join session {} (it is in session {now})",
                p.task.sid
            ));
        }
    }
    if p.task.pgid == p.task.pid && p.task.sid != p.task.pid {
        // SAFETY: see above.
        if unsafe { libc::setpgid(0, 0) } < 0 {
            return Err(format!("setpgid: {}", last_os()));
        }
    } else if p.task.ppid != 0 && p.task.sid != p.task.pid && p.task.pgid != own_pgid() {
        // SAFETY: see above.
        if unsafe { libc::setpgid(0, p.task.pgid) } < 0 {
            return Err(format!(
                "joining process group {}: {}",
                p.task.pgid,
                last_os()
            ));
        }
    }
    // The foreground group of its terminal, once this process is in it
    // (and before its children, which may join it, are forked).
    set_foreground(st, p, objs)?;
    fork_children(false)?;
    if p.task.exit_status.is_some() {
        // Nothing more: it only has to exit, once it has reported.
        return Ok(());
    }
    // Descriptors at their numbers.
    let mut targets: Vec<i32> = Vec::new();
    for f in &p.fds {
        let src = objs.fds[f.file as usize];
        // SAFETY: a plain syscall on integers or live C strings.
        if unsafe { libc::dup2(src, f.fd) } < 0 {
            return Err(format!("dup2 to fd {}: {}", f.fd, last_os()));
        }
        // SAFETY: a plain syscall on integers or live C strings.
        if f.cloexec && unsafe { libc::fcntl(f.fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(format!("FD_CLOEXEC on fd {}: {}", f.fd, last_os()));
        }
        targets.push(f.fd);
    }
    targets.push(report_fd);
    // The memfds, for the tracer to map them (closed after).
    targets.extend(objs.segs.fds());
    targets.sort_unstable();
    let mut next: u32 = 0;
    for &t in &targets {
        let t = t.bits();
        if t > next {
            // Left open, torpor's own descriptors would reach the tree.
            // SAFETY: a plain syscall on integers or live C strings.
            if unsafe { libc::syscall(libc::SYS_close_range, next, t - 1, 0) } < 0 {
                return Err(format!("close_range {next}..={}: {}", t - 1, last_os()));
            }
        }
        next = t + 1;
    }
    // SAFETY: a plain syscall on integers or live C strings.
    if unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0) } < 0 {
        return Err(format!("close_range {next}..: {}", last_os()));
    }
    crate::engine::files::register_epolls(p, &st.files)?;
    crate::engine::files::take_locks(p)?;
    // Signal-driven I/O, armed through the fd with the lowest number in the
    // first process holding the description: the fd the kernel reports.
    let mut fds: Vec<&crate::engine::state::Fd> = p.fds.iter().collect();
    fds.sort_by_key(|f| f.fd);
    let mut armed = std::collections::BTreeSet::new();
    for f in fds {
        let of = &st.files[f.file as usize];
        let Some(s) = &of.sigio else { continue };
        let first = st
            .processes
            .iter()
            .find(|q| q.fds.iter().any(|g| g.file == f.file))
            .map(|q| q.task.pid);
        if first == Some(p.task.pid) && armed.insert(f.file) {
            crate::engine::files::arm_sigio(f.fd, of.flags, s)?;
        }
    }
    // The directory torpor opened as this task (`files::held`).
    let cwd = objs
        .segs
        .held()
        .cwd(p.task.pid)
        .ok_or_else(|| format!("working directory {} was not opened", p.task.cwd))?;
    // SAFETY: a plain syscall on an inherited descriptor.
    if unsafe { libc::fchdir(cwd) } < 0 {
        return Err(format!("chdir {}: {}", p.task.cwd, last_os()));
    }
    // SAFETY: a plain syscall on integers or live C strings.
    unsafe { libc::umask(p.task.umask as libc::mode_t) };
    // SAFETY: a plain syscall on integers or live C strings.
    if unsafe { libc::personality(libc::c_ulong::from(p.task.personality)) } < 0 {
        return Err(format!(
            "personality {:#x}: {}",
            p.task.personality,
            last_os()
        ));
    }
    for l in &p.task.rlimits {
        let res = l.resource;
        let lim = libc::rlimit {
            rlim_cur: l.cur,
            rlim_max: l.max,
        };
        // The resource argument is a u32 with glibc and a c_int with musl.
        #[allow(clippy::useless_conversion)]
        let which = res
            .try_into()
            .map_err(|_| format!("rlimit resource {res} out of range"))?;
        // SAFETY: a plain syscall on integers or live C strings.
        if unsafe { libc::setrlimit(which, &raw const lim) } < 0 {
            return Err(format!("setrlimit {res}: {}", last_os()));
        }
    }
    Ok(())
}

/// A session leader takes its controlling terminal back from the
/// description of the fd that opens it (the original device or its --tty
/// substitute), through torpor's inherited descriptor of it, before it
/// forks the children of its session: they inherit the terminal.
fn take_terminal(st: &ImageState, p: &ProcessState, objs: &Objects) -> Result<(), String> {
    if p.task.ctty == 0 {
        return Ok(());
    }
    let holder = p
        .fds
        .iter()
        .find(|f| match &st.files[f.file as usize].kind {
            FileKind::Device(crate::engine::state::DeviceFile {
                rdev, tty: true, ..
            }) => *rdev == p.task.ctty,
            // The slave of a pair made again at its index: the same number.
            FileKind::PtySlave(s) => s.rdev == p.task.ctty,
            _ => false,
        });
    let Some(f) = holder else { return Ok(()) };
    let fd = objs.fds[f.file as usize];
    // SAFETY: ioctl on an inherited fd of this task, integer argument.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!(
            "taking fd {} as controlling terminal: {}",
            f.fd,
            last_os()
        ));
    }
    Ok(())
}

/// A process of the foreground group of a pseudo-terminal of the tree
/// (its session's terminal, which it inherited) makes its group the
/// foreground again, through torpor's inherited master: the group exists
/// once this process is in it.
fn set_foreground(st: &ImageState, p: &ProcessState, objs: &Objects) -> Result<(), String> {
    for (i, f) in st.files.iter().enumerate() {
        let FileKind::PtyMaster(m) = &f.kind else {
            continue;
        };
        if m.foreground != p.task.pgid || m.foreground == p.task.sid {
            continue;
        }
        // The pair must be this session's terminal: the leader's ctty.
        let ours = st.processes.iter().any(|q| {
            q.task.pid == p.task.sid
                && q.fds.iter().any(|g| {
                    matches!(&st.files[g.file as usize].kind,
                        FileKind::PtySlave(s) if s.index == m.index && s.rdev == q.task.ctty)
                })
        });
        if ours {
            crate::engine::files::set_foreground(objs.fds[i], m)?;
        }
    }
    Ok(())
}

/// The calling task's process group.
fn own_pgid() -> i32 {
    // SAFETY: getpgid(0) takes an integer and has no memory effects.
    unsafe { libc::getpgid(0) }
}

/// Tasks created so far; killed unless the restore completes.
#[derive(Debug, Default)]
pub(super) struct Created {
    pub(super) pids: Vec<i32>,
    pub(super) traced: Vec<i32>,
    pub(super) done: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Only tasks that are really ours: a pid that could not be created
        // may belong to someone else.
        // Pids are below PID_MAX_LIMIT (2^22): fits.
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let ours: Vec<i32> = self
            .pids
            .iter()
            .copied()
            .filter(|pid| {
                let path = format!("/proc/{pid}/stat");
                let ppid = procfs::read(&path)
                    .ok()
                    .and_then(|t| procfs::parse_stat(&path, &t).ok())
                    .map(|s| s.ppid);
                ppid.is_some_and(|pp| pp == me || self.pids.contains(&pp))
            })
            .collect();
        for &pid in &ours {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Leaders last: a traced leader's exit waits for its threads.
        let mut order: Vec<i32> = self
            .traced
            .iter()
            .copied()
            .filter(|t| !self.pids.contains(t))
            .collect();
        order.extend(
            self.traced
                .iter()
                .copied()
                .filter(|t| self.pids.contains(t)),
        );
        for &tid in &order {
            while let Ok(s) = ptrace::wait(tid) {
                if matches!(s, Stop::Exited(_) | Stop::Killed(_)) {
                    break;
                }
            }
        }
        // Reap every one, so that its pid is free again when this returns
        // (a restore of the trees one by one follows a failed restore of
        // all): the roots are torpor's children, and their descendants
        // come to torpor, the subreaper (`Subreaper`), as their parents die.
        let mut left = ours;
        let start = std::time::Instant::now();
        while !left.is_empty() && start.elapsed() < REAP_LIMIT {
            left.retain(|&pid| {
                let mut status = 0;
                // SAFETY: waitpid writes the status word.
                let r =
                    unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL | libc::WNOHANG) };
                r == 0 || (r < 0 && std::path::Path::new(&format!("/proc/{pid}")).exists())
            });
            if !left.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

/// How long a failed restore waits for the tasks it killed to be gone: a
/// task in an uninterruptible sleep dies only when that ends.
const REAP_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// torpor is a child subreaper while it restores, so that the tasks of a
/// tree it has to kill come to it as their parents die, and it can reap
/// them all; the setting it had before comes back after.
#[derive(Debug)]
pub(super) struct Subreaper {
    was: bool,
}

impl Subreaper {
    pub(super) fn take() -> Self {
        let mut was: libc::c_int = 0;
        // SAFETY: PR_GET_CHILD_SUBREAPER writes one int at the pointer.
        unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &raw mut was) };
        if was == 0 {
            // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
        }
        Self { was: was != 0 }
    }
}

impl Drop for Subreaper {
    fn drop(&mut self) {
        if !self.was {
            // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0 as libc::c_ulong) };
        }
    }
}

pub(super) fn create_tasks(
    st: &ImageState,
    objs: &Objects,
    created: &mut Created,
) -> Result<(), EngineError> {
    let step = Step::CreateTasks;
    let mut rp = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    if unsafe { libc::pipe2(rp.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(last_os()).step(step);
    }
    let report_w = move_high(
        rp[1],
        objs.high + conv::fit::<i32, _>(objs.fds.len(), "int", "descriptor count").step(step)?,
    )
    .step(step)?;
    // SAFETY: getpid has no memory effects.
    let torpor = unsafe { libc::getpid() };
    // Every root is torpor's child (an image of several trees has several);
    // each forks its own descendants.
    for (idx, root) in st.processes.iter().enumerate() {
        if root.task.ppid != 0 {
            continue;
        }
        match fork_with_pid(root.task.pid) {
            Ok(0) => task_main(st, idx, objs, report_w, torpor),
            Ok(_) => {}
            Err(e) => {
                // SAFETY: closing our report pipe.
                unsafe {
                    libc::close(rp[0]);
                    libc::close(report_w);
                }
                return Err(e).step(step);
            }
        }
        // The trees forked so far are killed if a later root cannot be.
        created.pids = st.processes.iter().map(|p| p.task.pid).collect();
    }
    // SAFETY: torpor keeps only the read end.
    unsafe { libc::close(report_w) };
    // SAFETY: rp[0] is ours; File takes ownership.
    let mut rd = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(rp[0]) };
    let mut text = String::new();
    let mut ok = 0;
    let mut buf = [0u8; 512];
    while ok < st.processes.len() {
        let n = rd.read(&mut buf).step(step)?;
        if n == 0 {
            return Err(refused(
                Step::CreateTasks,
                format!("tasks ended before reporting ready: {text}"),
            ));
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(nl) = text.find('\n') {
            let line: String = text.drain(..=nl).collect();
            let line = line.trim_end();
            if let Some((pid, msg)) = line.split_once(" err ") {
                return Err(refused(Step::CreateTasks, format!("process {pid}: {msg}")));
            }
            ok += 1;
        }
    }
    Ok(())
}

//! Seccomp filters and strict mode, installed last in a process so that
//! they never judge torpor's own remote syscalls.
//!
//! The filters every thread shares go in once, for all threads
//! (`SECCOMP_FILTER_FLAG_TSYNC`), so that all threads hold the same filter
//! objects and a later `TSYNC` of the task's own still finds them; each
//! thread then adds the filters of its own, in its own context. A strict
//! thread enters strict mode with its very last injected syscall. All of
//! it applies to the task's own syscalls once torpor detaches: until then
//! `PTRACE_O_SUSPEND_SECCOMP` keeps it from the syscalls torpor still
//! injects.

use crate::arch::nr;
use crate::engine::ptrace::{self, Mem, RemotePtr};
use crate::engine::remote::Remote;
use crate::engine::state::ProcessState;
use crate::engine::Cause;
use crate::image::records::{OwnSeccomp, SeccompFilter};

use super::trampoline::Scratch;

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;

/// The process's shared filters, oldest first, for all its threads; before
/// them every thread is traced with `PTRACE_O_SUSPEND_SECCOMP` when the
/// process has any seccomp state at all.
pub(super) fn install_seccomp(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    if p.seccomp.is_empty() && p.thread_seccomp.is_empty() {
        return Ok(());
    }
    for t in &p.threads {
        let options = ptrace::PTRACE_O_TRACECLONE | ptrace::PTRACE_O_SUSPEND_SECCOMP;
        ptrace::set_options(t.tid, options).map_err(|e| {
            Cause::Refused(format!(
                "restoring the seccomp state of process {} needs PTRACE_O_SUSPEND_SECCOMP: {e}",
                p.task.pid
            ))
        })?;
    }
    for (i, f) in p.seccomp.iter().enumerate() {
        let what = format!("seccomp filter {i}");
        let tid = install_filter(r, mem, tramp, f, SECCOMP_FILTER_FLAG_TSYNC, &what)?;
        if tid != 0 {
            return Err(Cause::Refused(format!(
                "{what}: thread {tid} could not take it"
            )));
        }
    }
    Ok(())
}

/// The filters of thread `tid`'s own, oldest first, in the thread `r`
/// borrows, after the process's shared ones.
pub(super) fn install_own_filters(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
    tid: i32,
) -> Result<(), Cause> {
    let own = p.thread_seccomp.iter().filter(|t| t.tid == tid);
    for (i, t) in own.enumerate() {
        if let OwnSeccomp::Filter(f) = &t.own {
            let what = format!("seccomp filter {i} of thread {tid}'s own");
            install_filter(r, mem, tramp, f, 0, &what)?;
        }
    }
    Ok(())
}

/// Every strict thread of `p` enters strict mode, at its own pc: the last
/// syscall torpor injects in it, so that once torpor detaches it may only
/// `read`, `write`, `exit` and `rt_sigreturn`.
pub(super) fn enter_strict(p: &ProcessState) -> Result<(), Cause> {
    const PR_SET_SECCOMP: u64 = 22;
    const SECCOMP_MODE_STRICT: u64 = 1;
    for t in &p.thread_seccomp {
        if t.own != OwnSeccomp::Strict {
            continue;
        }
        let mem = Mem::open(t.tid)?;
        let mut r = Remote::at_pc(t.tid, &mem)?;
        r.prctl(
            "prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)",
            PR_SET_SECCOMP,
            SECCOMP_MODE_STRICT,
            0,
        )
        .map_err(|e| {
            Cause::Refused(format!(
                "thread {} of process {} cannot enter strict seccomp mode (which a thread under seccomp filters, torpor's inherited ones too, cannot): {e}",
                t.tid, p.task.pid
            ))
        })?;
        r.finish()?;
    }
    Ok(())
}

/// Installs one filter in the thread `r` borrows, with `flags` added to
/// the filter's own; returns the syscall's result (with `TSYNC`, the tid of
/// a thread that could not take it).
fn install_filter(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    f: &SeccompFilter,
    flags: u64,
    what: &str,
) -> Result<u64, Cause> {
    let word = core::mem::size_of::<usize>();
    let len = f.program.len() as u64;
    let insns =
        u16::try_from(len / 8).map_err(|_| Cause::Refused(format!("{what}: {len} bytes")))?;
    let at = r.mmap(
        "mmap (seccomp filter)",
        0,
        len.max(1),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )?;
    mem.write(RemotePtr::<u8>::new(at), &f.program)?;
    // struct sock_fprog: u16 len, then a native pointer.
    let mut fprog = vec![0u8; 2 * word];
    fprog[..2].copy_from_slice(&insns.to_le_bytes());
    fprog[word..].copy_from_slice(&at.to_le_bytes()[..word]);
    let fprog_at = Scratch::at(mem, tramp).bytes(&fprog)?;
    let res = r.syscall(
        "seccomp(SECCOMP_SET_MODE_FILTER)",
        nr::SECCOMP,
        [SECCOMP_SET_MODE_FILTER, f.flags | flags, fprog_at, 0, 0, 0],
    );
    r.munmap("munmap (seccomp filter)", at, len.max(1))?;
    Ok(res?)
}

//! Seccomp filters, installed last in a process so that they never judge
//! torpor's own remote syscalls.

use crate::arch::nr;
use crate::engine::ptrace::{self, Mem, RemotePtr};
use crate::engine::remote::Remote;
use crate::engine::state::ProcessState;
use crate::engine::Cause;

use super::trampoline::Scratch;

/// The process's seccomp filters, oldest first, for all its threads
/// (`SECCOMP_FILTER_FLAG_TSYNC`). They apply to the task's own syscalls
/// once torpor detaches: until then `PTRACE_O_SUSPEND_SECCOMP` keeps them
/// from the syscalls torpor still injects.
pub(super) fn install_seccomp(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
    if p.seccomp.is_empty() {
        return Ok(());
    }
    for t in &p.threads {
        let options = ptrace::PTRACE_O_TRACECLONE | ptrace::PTRACE_O_SUSPEND_SECCOMP;
        ptrace::set_options(t.tid, options).map_err(|e| {
            Cause::Refused(format!(
                "restoring the seccomp filters of process {} needs PTRACE_O_SUSPEND_SECCOMP: {e}",
                p.task.pid
            ))
        })?;
    }
    let word = core::mem::size_of::<usize>();
    for (i, f) in p.seccomp.iter().enumerate() {
        let len = f.program.len() as u64;
        let insns = u16::try_from(len / 8)
            .map_err(|_| Cause::Refused(format!("seccomp filter {i}: {len} bytes")))?;
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
            [
                SECCOMP_SET_MODE_FILTER,
                f.flags | SECCOMP_FILTER_FLAG_TSYNC,
                fprog_at,
                0,
                0,
                0,
            ],
        );
        r.munmap("munmap (seccomp filter)", at, len.max(1))?;
        if let Ok(tid) = &res {
            if *tid != 0 {
                return Err(Cause::Refused(format!(
                    "seccomp filter {i}: thread {tid} could not take it"
                )));
            }
        }
        res?;
    }
    Ok(())
}

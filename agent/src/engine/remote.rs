//! Remote execution in a stopped task: syscalls and the parasite.
//!
//! A [`Remote`] is a scoped guard: it saves the task's registers and signal
//! mask when created and puts them back when dropped, so no error path can
//! leave a task running with borrowed registers. While it lives every signal
//! is blocked in the task, so nothing but our trap stops it.

use crate::arch::Bits;
use crate::arch::{self, Regs};
use crate::engine::ptrace::{self, Mem, PtraceError, RemotePtr, Stop};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error("remote {name} in task {tid} failed: {err}")]
    Syscall {
        tid: i32,
        name: &'static str,
        err: std::io::Error,
    },
    #[error("task {tid} stopped with signal {sig} at {pc:#x} while running injected code")]
    Fault { tid: i32, sig: i32, pc: u64 },
}

impl From<crate::arch::RegsError> for RemoteError {
    fn from(e: crate::arch::RegsError) -> Self {
        RemoteError::Ptrace(e.into())
    }
}

/// Where the syscall instruction the guard executes lives.
#[derive(Debug, Clone, Copy)]
enum Site {
    /// The trampoline page: `syscall; trap` already there.
    Trampoline(u64),
    /// The task's own pc, temporarily overwritten; the original bytes are
    /// kept to be written back.
    Patched(u64, [u8; 8]),
}

#[derive(Debug)]
pub struct Remote<'m> {
    tid: i32,
    mem: &'m Mem,
    saved: Regs,
    saved_mask: u64,
    site: Site,
    restored: bool,
}

impl<'m> Remote<'m> {
    /// Borrows the task at its current pc: the bytes there are replaced by
    /// `syscall; trap` until the guard is dropped.
    pub fn at_pc(tid: i32, mem: &'m Mem) -> Result<Self, RemoteError> {
        let saved = arch::get_regs(tid)?;
        // Where the architecture wants the borrowed bytes (see
        // `arch::patch_site`); they are put back when the guard ends.
        let pc = arch::patch_site(saved.pc());
        let mut orig = [0u8; 8];
        mem.read(RemotePtr::<u8>::new(pc), &mut orig)?;
        let saved_mask = ptrace::get_sigmask(tid)?;
        ptrace::set_sigmask(tid, u64::MAX)?;
        if let Err(e) = mem.write(RemotePtr::<u8>::new(pc), arch::SYSCALL_TRAP) {
            // The write's error is the one to report; the mask is put back
            // as far as the task still allows.
            let _ = ptrace::set_sigmask(tid, saved_mask);
            return Err(e.into());
        }
        Ok(Self {
            tid,
            mem,
            saved,
            saved_mask,
            site: Site::Patched(pc, orig),
            restored: false,
        })
    }

    /// Borrows the task to run syscalls at a trampoline already in place.
    pub fn at(tid: i32, mem: &'m Mem, trampoline: u64) -> Result<Self, RemoteError> {
        let saved = arch::get_regs(tid)?;
        let saved_mask = ptrace::get_sigmask(tid)?;
        ptrace::set_sigmask(tid, u64::MAX)?;
        Ok(Self {
            tid,
            mem,
            saved,
            saved_mask,
            site: Site::Trampoline(trampoline),
            restored: false,
        })
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Registers and signal mask to install when the guard ends, instead of
    /// the ones saved (used by restore to leave the task in its final state).
    pub fn replace_saved(&mut self, regs: Regs, mask: u64) {
        self.saved = regs;
        self.saved_mask = mask;
    }

    fn site_pc(&self) -> u64 {
        match self.site {
            Site::Trampoline(a) | Site::Patched(a, _) => a,
        }
    }

    fn run(&mut self, regs: &Regs) -> Result<Regs, RemoteError> {
        arch::set_regs(self.tid, regs)?;
        ptrace::cont(self.tid, 0)?;
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Signal(libc::SIGTRAP) => break,
                // A clone made by the injected clone3, or a stop request:
                // both only pause the syscall on its way.
                Stop::Event(_, ptrace::PTRACE_EVENT_CLONE)
                | Stop::Event(_, ptrace::PTRACE_EVENT_STOP) => {
                    ptrace::cont(self.tid, 0)?;
                }
                Stop::Event(sig, _) | Stop::Signal(sig) => {
                    let pc = arch::get_regs(self.tid).map(|r| r.pc()).unwrap_or(0);
                    return Err(RemoteError::Fault {
                        tid: self.tid,
                        sig,
                        pc,
                    });
                }
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(PtraceError::TaskDied(self.tid).into())
                }
            }
        }
        Ok(arch::get_regs(self.tid)?)
    }

    /// Runs one syscall in the task and returns its raw result (negative
    /// errno on failure).
    pub fn syscall_raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, RemoteError> {
        let mut regs = self.saved;
        regs.prepare_syscall(self.site_pc(), nr, &args);
        let out = self.run(&regs)?;
        Ok(out.syscall_result())
    }

    /// Runs one syscall; a negative result becomes an error naming it.
    pub fn syscall(
        &mut self,
        name: &'static str,
        nr: i64,
        args: [u64; 6],
    ) -> Result<u64, RemoteError> {
        let r = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&r) {
            // -r is in 1..=4095 here.
            let errno = i32::try_from(-r).unwrap_or(libc::EINVAL);
            return Err(RemoteError::Syscall {
                tid: self.tid,
                name,
                err: std::io::Error::from_raw_os_error(errno),
            });
        }
        // A native word: on 32-bit ARM an address above 2 GiB comes back
        // sign-extended from r0 and must not keep the high bits.
        Ok(r.bits() & usize::MAX as u64)
    }

    /// `mmap` in the task; `what` names the mapping in errors. Returns the
    /// address the kernel chose (with `MAP_FIXED*`, the one asked for).
    #[allow(clippy::too_many_arguments)]
    pub fn mmap(
        &mut self,
        what: &'static str,
        addr: u64,
        len: u64,
        prot: i32,
        flags: i32,
        fd: i32,
        offset: u64,
    ) -> Result<u64, RemoteError> {
        let (n, a) = arch::mmap_args(addr, len, prot, flags, fd, offset);
        self.syscall(what, n, a)
    }

    /// `munmap` of `[addr, addr + len)` in the task.
    pub fn munmap(&mut self, what: &'static str, addr: u64, len: u64) -> Result<(), RemoteError> {
        self.syscall(what, arch::nr::MUNMAP, [addr, len, 0, 0, 0, 0])
            .map(drop)
    }

    /// `mprotect` of `[addr, addr + len)` in the task.
    pub fn mprotect(
        &mut self,
        what: &'static str,
        addr: u64,
        len: u64,
        prot: i32,
    ) -> Result<(), RemoteError> {
        let prot = u64::from(prot.bits());
        self.syscall(what, arch::nr::MPROTECT, [addr, len, prot, 0, 0, 0])
            .map(drop)
    }

    /// Closes the task's descriptor `fd`.
    pub fn close(&mut self, fd: u64) -> Result<(), RemoteError> {
        self.syscall("close", arch::nr::CLOSE, [fd, 0, 0, 0, 0, 0])
            .map(drop)
    }

    /// `prctl(option, arg2, arg3, 0, 0)` in the task; `what` names the
    /// request in errors.
    pub fn prctl(
        &mut self,
        what: &'static str,
        option: u64,
        arg2: u64,
        arg3: u64,
    ) -> Result<u64, RemoteError> {
        self.syscall(what, arch::nr::PRCTL, [option, arg2, arg3, 0, 0, 0])
    }

    /// Runs the parasite at `entry` with its argument area at `args` and the
    /// stack pointer at `stack`, until it traps.
    pub fn run_parasite(&mut self, entry: u64, args: u64, stack: u64) -> Result<(), RemoteError> {
        let mut regs = self.saved;
        regs.prepare_parasite(entry, args, stack);
        self.run(&regs)?;
        Ok(())
    }

    /// Puts back the patched bytes, registers and mask, reporting failures.
    pub fn finish(mut self) -> Result<(), RemoteError> {
        self.restore()
    }

    fn restore(&mut self) -> Result<(), RemoteError> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        if let Site::Patched(pc, orig) = self.site {
            self.mem.write(RemotePtr::<u8>::new(pc), &orig)?;
        }
        arch::set_regs(self.tid, &self.saved)?;
        ptrace::set_sigmask(self.tid, self.saved_mask)?;
        Ok(())
    }
}

impl Drop for Remote<'_> {
    fn drop(&mut self) {
        // Best effort on error paths; `finish` reports failures.
        let _ = self.restore();
    }
}

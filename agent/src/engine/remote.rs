//! Remote execution in a stopped task: syscalls and the parasite.
//!
//! A [`Remote`] is a scoped guard: it saves the task's registers and signal
//! mask when created and puts them back when dropped, so no error path can
//! leave a task running with borrowed registers. While it lives every signal
//! is blocked in the task, so nothing but torpor's own stops stop it.
//!
//! # If torpor dies while a task runs injected code
//!
//! The kernel then detaches the task and it runs on from wherever it is,
//! untraced. A dump borrows tasks so that this always leads back to the
//! task's own context ([`Remote::returning`]):
//!
//! - The code runs at an [`InjectSite`]: spare bytes of a mapping the kernel
//!   made (`arch::SPARE_MAPPING`: the vDSO's tail past its ELF file, or the
//!   unused part of ARM's signal page) that the task's own code never
//!   reaches. Nothing the task executes of its own is ever patched.
//! - The site holds `syscall; rt_sigreturn`, and the task's stack, below
//!   what it uses, a signal frame with its registers (the syscall restart
//!   rule applied), signal mask and FPU state. A task left alone after any
//!   injected syscall returns into itself through that frame; so does the
//!   parasite, which ends the same way.
//! - torpor steps the task from syscall to syscall (`PTRACE_SYSCALL`) and
//!   takes it back at the exit of the injected syscall, before the
//!   `rt_sigreturn`, which it never lets run: the kernel would reset the
//!   task's restart block. At the end it has the task stop in the kernel's
//!   signal path (`PTRACE_INTERRUPT`) and puts back the mask, then the
//!   registers, there: from each of those stops, too, the task resumes
//!   correctly on its own.
//!
//! Only a sleep the kernel would have resumed with `restart_syscall` ends
//! early with `EINTR` when torpor dies (as after a signal handler); anything
//! else resumes as if nothing happened. A mapping the dead torpor had made
//! (the parasite's) stays, unused.
//!
//! A restore borrows tasks it created ([`Remote::at`], [`Remote::at_pc`]):
//! there injected code ends in a trap, and torpor's death takes the
//! unfinished tasks with it anyway.

use crate::arch::Bits;
use crate::arch::{self, Regs};
use crate::engine::ptrace::{self, Mem, PtraceError, RemotePtr, Stop, SyscallStop};

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
    /// An [`InjectSite`]: `syscall; rt_sigreturn`.
    Spare(u64),
}

/// What a task does after the injected code if torpor is gone.
#[derive(Debug)]
enum Return {
    /// It traps, and dies of it.
    Trap,
    /// It returns into its own context through the signal frame at
    /// `frame_at`, written over the `stack` bytes; `sp` is the stack pointer
    /// `rt_sigreturn` takes.
    Sigreturn {
        sp: u64,
        frame_at: u64,
        stack: Vec<u8>,
    },
}

#[derive(Debug)]
pub struct Remote<'m> {
    tid: i32,
    mem: &'m Mem,
    saved: Regs,
    saved_mask: u64,
    site: Site,
    ret: Return,
    /// Every signal is blocked in the task.
    masked: bool,
    /// The task is in a syscall stop, after which the kernel does not look
    /// at the registers' syscall state again: the saved registers are put
    /// back at another stop.
    in_syscall_stop: bool,
    restored: bool,
}

/// Spare executable bytes in a kernel-made mapping of a process (see the
/// module documentation), holding `syscall; rt_sigreturn` while it lives;
/// their previous content is put back when it ends.
#[derive(Debug)]
pub struct InjectSite<'m> {
    mem: &'m Mem,
    addr: u64,
    orig: [u8; arch::SITE_LEN],
    restored: bool,
}

impl<'m> InjectSite<'m> {
    /// Finds the site in process `pid` and writes the code there; `None`
    /// when the process has no such mapping or no room in it.
    pub fn find(pid: i32, mem: &'m Mem) -> Result<Option<Self>, RemoteError> {
        let path = format!("/proc/{pid}/maps");
        let maps = std::fs::read_to_string(&path).map_err(|err| PtraceError::Os {
            op: "reading /proc/PID/maps",
            tid: pid,
            err,
        })?;
        let Some((start, end)) = maps.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            (f.nth(4)? == arch::SPARE_MAPPING).then_some(())?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        }) else {
            return Ok(None);
        };
        // A vDSO is a few pages; anything larger is not one.
        let len = end.saturating_sub(start);
        if len == 0 || len > 64 * 1024 {
            return Ok(None);
        }
        let mut image = vec![0u8; usize::try_from(len).unwrap_or(0)];
        mem.read(RemotePtr::<u8>::new(start), &mut image)?;
        let Some(at) = arch::spare_slot(&image) else {
            return Ok(None);
        };
        let mut orig = [0u8; arch::SITE_LEN];
        orig.copy_from_slice(&image[at..at + arch::SITE_LEN]);
        let addr = start + at as u64;
        mem.write(RemotePtr::<u8>::new(addr), arch::SYSCALL_SIGRETURN)?;
        Ok(Some(Self {
            mem,
            addr,
            orig,
            restored: false,
        }))
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Puts the previous bytes back, reporting a failure.
    pub fn finish(mut self) -> Result<(), RemoteError> {
        self.restore()
    }

    fn restore(&mut self) -> Result<(), RemoteError> {
        if !self.restored {
            self.restored = true;
            self.mem
                .write(RemotePtr::<u8>::new(self.addr), &self.orig)?;
        }
        Ok(())
    }
}

impl Drop for InjectSite<'_> {
    fn drop(&mut self) {
        let _ = self.restore();
    }
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
            ret: Return::Trap,
            masked: true,
            in_syscall_stop: false,
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
            ret: Return::Trap,
            masked: true,
            in_syscall_stop: false,
            restored: false,
        })
    }

    /// Borrows a task stopped by a freeze (seized with
    /// `PTRACE_O_TRACESYSGOOD`) to run syscalls at `site` such that, should
    /// torpor die at any instant, the task returns into its own context by
    /// itself (see the module documentation). The signal frame goes on the
    /// task's stack below what it uses; nothing else changes before the
    /// first syscall.
    pub fn returning(tid: i32, mem: &'m Mem, site: &InjectSite<'_>) -> Result<Self, RemoteError> {
        let saved = arch::get_regs(tid)?;
        let saved_mask = ptrace::get_sigmask(tid)?;
        let fpregs = arch::get_fpregs(tid)?;
        // What the kernel would have done with an interrupted syscall, since
        // after rt_sigreturn it does nothing more.
        let mut own = saved;
        own.fix_syscall_restart();
        let frame = arch::sigframe(&own, &fpregs, saved_mask);
        let mut stack = vec![0u8; frame.bytes.len()];
        let at = RemotePtr::<u8>::new(frame.addr);
        mem.read(at, &mut stack)?;
        mem.write(at, &frame.bytes)?;
        Ok(Self {
            tid,
            mem,
            saved,
            saved_mask,
            site: Site::Spare(site.addr()),
            ret: Return::Sigreturn {
                sp: frame.sp,
                frame_at: frame.addr,
                stack,
            },
            masked: false,
            in_syscall_stop: false,
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
            Site::Trampoline(a) | Site::Patched(a, _) | Site::Spare(a) => a,
        }
    }

    /// The stack pointer of the signal frame, if there is one.
    fn frame_sp(&self) -> Option<u64> {
        match self.ret {
            Return::Sigreturn { sp, .. } => Some(sp),
            Return::Trap => None,
        }
    }

    /// Installs `regs` and blocks every signal, in that order: until the
    /// registers lead into injected code the task runs its own, with its
    /// own mask.
    fn load(&mut self, regs: &Regs) -> Result<(), RemoteError> {
        arch::set_regs(self.tid, regs)?;
        if !self.masked {
            ptrace::set_sigmask(self.tid, u64::MAX)?;
            self.masked = true;
        }
        Ok(())
    }

    fn fault(&self, sig: i32) -> RemoteError {
        let pc = arch::get_regs(self.tid).map(|r| r.pc()).unwrap_or(0);
        RemoteError::Fault {
            tid: self.tid,
            sig,
            pc,
        }
    }

    /// Runs injected code ending in a trap.
    fn run(&mut self, regs: &Regs) -> Result<Regs, RemoteError> {
        self.load(regs)?;
        ptrace::cont(self.tid, 0)?;
        self.in_syscall_stop = false;
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Signal(libc::SIGTRAP) => break,
                // A clone made by the injected clone3, or a stop request:
                // both only pause the syscall on its way.
                Stop::Event(_, ptrace::PTRACE_EVENT_CLONE)
                | Stop::Event(_, ptrace::PTRACE_EVENT_STOP) => {
                    ptrace::cont(self.tid, 0)?;
                }
                Stop::Event(sig, _) | Stop::Signal(sig) => return Err(self.fault(sig)),
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(PtraceError::TaskDied(self.tid).into())
                }
            }
        }
        Ok(arch::get_regs(self.tid)?)
    }

    /// Runs injected code from syscall to syscall until the exit of the one
    /// whose instruction ends at `done`; returns that syscall's result.
    fn step_until(&mut self, regs: &Regs, done: u64) -> Result<i64, RemoteError> {
        self.load(regs)?;
        ptrace::syscall(self.tid)?;
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Signal(ptrace::SYSCALL_STOP) => {
                    self.in_syscall_stop = true;
                    if let SyscallStop::Exit { rval, pc } = ptrace::syscall_info(self.tid)? {
                        if pc == done {
                            return Ok(rval);
                        }
                    }
                    ptrace::syscall(self.tid)?;
                }
                // A stop request pauses the code on its way.
                Stop::Event(_, ptrace::PTRACE_EVENT_STOP) => {
                    self.in_syscall_stop = false;
                    ptrace::syscall(self.tid)?;
                }
                Stop::Event(sig, _) | Stop::Signal(sig) => {
                    self.in_syscall_stop = false;
                    return Err(self.fault(sig));
                }
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(PtraceError::TaskDied(self.tid).into())
                }
            }
        }
    }

    /// Runs one syscall in the task and returns its raw result (negative
    /// errno on failure).
    pub fn syscall_raw(&mut self, nr: i64, args: [u64; 6]) -> Result<i64, RemoteError> {
        let mut regs = self.saved;
        regs.prepare_syscall(self.site_pc(), nr, &args);
        if let Some(sp) = self.frame_sp() {
            regs.set_sp(sp);
            return self.step_until(&regs, self.site_pc() + arch::SYSCALL_INSN_LEN);
        }
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
    /// stack pointer at `stack`, from syscall to syscall until the exit of
    /// its final one, whose instruction ends at `entry + done`.
    pub fn run_parasite(
        &mut self,
        entry: u64,
        args: u64,
        stack: u64,
        done: u64,
    ) -> Result<(), RemoteError> {
        let mut regs = self.saved;
        regs.prepare_parasite(entry, args, stack);
        regs.set_parasite_frame(self.frame_sp().unwrap_or(0));
        self.step_until(&regs, entry + done)?;
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
        if self.in_syscall_stop {
            self.stop_in_signal_path()?;
        }
        if let Site::Patched(pc, orig) = self.site {
            self.mem.write(RemotePtr::<u8>::new(pc), &orig)?;
        }
        if let Return::Sigreturn {
            frame_at, stack, ..
        } = &self.ret
        {
            // The mask first: a task left with its own mask and the
            // injected registers still returns through its frame.
            ptrace::set_sigmask(self.tid, self.saved_mask)?;
            arch::set_regs(self.tid, &self.saved)?;
            self.mem.write(RemotePtr::<u8>::new(*frame_at), stack)?;
            return Ok(());
        }
        arch::set_regs(self.tid, &self.saved)?;
        ptrace::set_sigmask(self.tid, self.saved_mask)?;
        Ok(())
    }

    /// From a syscall stop, has the task stop in the kernel's signal path
    /// before it returns to user code, where the kernel still applies the
    /// restart rule to the registers it is left with (as at the freeze's
    /// stop).
    fn stop_in_signal_path(&mut self) -> Result<(), RemoteError> {
        ptrace::interrupt(self.tid)?;
        ptrace::cont(self.tid, 0)?;
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Signal(ptrace::SYSCALL_STOP) => ptrace::cont(self.tid, 0)?,
                // The interrupt's stop, or a signal's: both in that path.
                Stop::Event(..) | Stop::Signal(_) => break,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(PtraceError::TaskDied(self.tid).into())
                }
            }
        }
        self.in_syscall_stop = false;
        Ok(())
    }
}

impl Drop for Remote<'_> {
    fn drop(&mut self) {
        // Best effort on error paths; `finish` reports failures.
        let _ = self.restore();
    }
}

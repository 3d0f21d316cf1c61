//! AArch64 (Pi Zero 2 W and other 64-bit Pis): the kernel's `user_pt_regs`
//! (x0-x30, sp, pc, pstate) through PTRACE_GETREGSET NT_PRSTATUS, `svc #0`
//! with the number in x8 and arguments in x0-x5 (result in x0), `brk #0` as
//! trap, FP/SIMD through NT_PRFPREG (`user_fpsimd_state`: v0-v31, fpsr,
//! fpcr), TLS (tpidr_el0) through NT_ARM_TLS and the syscall the task is in
//! through NT_ARM_SYSTEM_CALL. Syscall numbers are the asm-generic table.
//!
//! # The syscall restart rule
//!
//! A syscall interrupted with `-ERESTARTSYS`, `-ERESTARTNOINTR`,
//! `-ERESTARTNOHAND` or `-ERESTART_RESTARTBLOCK` is re-executed by setting
//! `pc -= 4` (back onto the `svc`) and `x0 = orig_x0` (x0 holds both the first
//! argument and the result, so the kernel keeps the first argument aside).
//! `orig_x0` is not part of `user_pt_regs`, and the syscall number is not in
//! any register the kernel reports: x8 carries it into the kernel, which
//! keeps its own copy (`syscallno`, readable as NT_ARM_SYSTEM_CALL).
//!
//! As on 32-bit ARM, arch/arm64/kernel/signal.c `do_signal` applies the rule
//! *before* the task can stop: it rewinds the pc, reloads x0 from orig_x0 and
//! forgets the syscall (`syscallno = -1`), then calls `get_signal`, where
//! every stop torpor uses happens (the PTRACE_INTERRUPT trap and group
//! stops). So at those stops a task that was in a syscall already looks
//! like one about to execute its `svc`: pc on the `svc`, x0 the original
//! first argument, x8 the original number, NT_ARM_SYSTEM_CALL reading -1.
//! Resumed as is — in the same task or in a restored one — it runs that
//! syscall again, which is what the kernel would have done. For
//! `-ERESTART_RESTARTBLOCK` the kernel would additionally switch x8 to
//! `restart_syscall`, but only after the stop and only in the original task,
//! whose restart block the image cannot carry: restored, such a syscall (a
//! relative sleep) runs again from its original arguments — later, never
//! earlier — as on 32-bit ARM.
//!
//! The rule is applied here only where the kernel has not done it: at a stop
//! inside a syscall (NT_ARM_SYSTEM_CALL ≥ 0, e.g. a syscall-exit stop),
//! where `get_regs` takes orig_x0 from `/proc/TID/syscall` (its first
//! argument is the kernel's orig_x0). [`Regs`] carries the syscall number and
//! orig_x0 beside `user_pt_regs` for that, and tpidr_el0, which
//! `set_regs` installs with the general registers.
//!
//! The same rule decides where injected code goes: `do_signal` compares the
//! pc with the rewound one after the stop and, for a restart block, rewrites
//! x8 when they match, so an injected `svc` must not sit on the task's pc
//! (see [`patch_site`]).
//!
//! A 32-bit (AArch32) task under an arm64 kernel has another register file;
//! `get_regs` refuses it, naming the task.
//!
//! The register layout, the restart decisions and the byte form are plain
//! code compiled on every host for the unit tests; the ptrace requests exist
//! only on aarch64.

use super::{restart_kind, Bits, RegsError, Restart};

pub const ARCH: &str = "aarch64";
/// `svc #0` (0xd4000001) then `brk #0` (0xd4200000), little endian.
pub const SYSCALL_TRAP: &[u8] = &[0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4];
/// Length of the syscall instruction the restart rule rewinds over.
pub const SYSCALL_INSN_LEN: u64 = 4;
/// `svc #0; mov x8, #139 (rt_sigreturn); svc #0`, padded with `brk #0`.
pub const SYSCALL_SIGRETURN: &[u8; super::SITE_LEN] = &[
    0x01, 0x00, 0x00, 0xd4, 0x68, 0x11, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4,
];
/// The kernel-made mapping with spare bytes for [`SYSCALL_SIGRETURN`].
pub const SPARE_MAPPING: &str = "[vdso]";
/// The kernel's SHMLBA for native tasks: the page size (arm64 caches do not
/// alias), so any page-aligned address is allowed.
pub const SHMLBA: u64 = 4096;

/// `sizeof(struct user_fpsimd_state)`: 32 128-bit vector registers, fpsr,
/// fpcr and two reserved words.
const FPSIMD_SIZE: usize = 32 * 16 + 4 * 4;
/// Sizes of FPU state `set_fpregs` takes: exactly one `user_fpsimd_state`.
pub const FPREGS_SIZES: core::ops::RangeInclusive<usize> = FPSIMD_SIZE..=FPSIMD_SIZE;
/// `syscallno` when the task is not in a syscall (the kernel's NO_SYSCALL).
const NO_SYSCALL: i64 = -1;

/// The kernel's `struct user_pt_regs`, as NT_PRSTATUS reads and writes it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserPtRegs {
    pub regs: [u64; 31],
    pub sp: u64,
    pub pc: u64,
    pub pstate: u64,
}

/// Bytes of `user_pt_regs`.
pub const USER_PT_REGS_SIZE: usize = core::mem::size_of::<UserPtRegs>();
const _: () = assert!(USER_PT_REGS_SIZE == 272);
const _: () = assert!(core::mem::offset_of!(UserPtRegs, sp) == 31 * 8);
const _: () = assert!(core::mem::offset_of!(UserPtRegs, pc) == 32 * 8);
const _: () = assert!(core::mem::offset_of!(UserPtRegs, pstate) == 33 * 8);

/// A thread's registers: `user_pt_regs` and what arm64 keeps outside it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    pub user: UserPtRegs,
    /// tpidr_el0, the thread pointer (NT_ARM_TLS).
    pub tls: u64,
    /// The syscall the task is stopped in, -1 for none (NT_ARM_SYSTEM_CALL).
    pub syscallno: i64,
    /// The first argument of that syscall, which its result overwrote in x0.
    pub orig_x0: u64,
}

/// Bytes of [`Regs`] in an image: `user_pt_regs` then tls, syscallno,
/// orig_x0, every word little endian.
const REGS_SIZE: usize = core::mem::size_of::<Regs>();
const _: () = assert!(REGS_SIZE == USER_PT_REGS_SIZE + 3 * 8);

impl Default for Regs {
    fn default() -> Self {
        Self {
            user: UserPtRegs::default(),
            tls: 0,
            syscallno: NO_SYSCALL,
            orig_x0: 0,
        }
    }
}

impl Regs {
    pub fn pc(&self) -> u64 {
        self.user.pc
    }
    pub fn set_pc(&mut self, pc: u64) {
        self.user.pc = pc;
    }
    pub fn sp(&self) -> u64 {
        self.user.sp
    }
    pub fn set_sp(&mut self, sp: u64) {
        self.user.sp = sp;
    }
    /// x0: the return value of the syscall just executed.
    pub fn syscall_result(&self) -> i64 {
        self.user.regs[0].bits()
    }
    /// True when the task stopped inside a syscall whose restart the kernel
    /// has not decided yet (see the module documentation).
    pub fn in_syscall(&self) -> bool {
        self.syscallno >= 0
    }
    /// Sets the syscall state as the kernel leaves it inside a syscall: the
    /// original first argument and the return value in x0.
    pub fn set_syscall_state(&mut self, orig: i64, ret: i64) {
        self.syscallno = 0;
        self.orig_x0 = orig.bits();
        self.user.regs[0] = ret.bits();
    }
    /// Arranges registers to run `svc` at `pc` with `nr` and `args`.
    pub fn prepare_syscall(&mut self, pc: u64, nr: i64, args: &[u64; 6]) {
        self.user.pc = pc;
        self.user.regs[8] = nr.bits();
        self.user.regs[..6].copy_from_slice(args);
        self.clear_syscall();
    }
    /// Enters the parasite at `entry` with its argument area in x19 (which
    /// syscalls preserve) and the stack pointer at `stack`.
    pub fn prepare_parasite(&mut self, entry: u64, args: u64, stack: u64) {
        self.user.pc = entry;
        self.user.regs[19] = args;
        self.user.sp = stack;
        self.clear_syscall();
    }
    /// Where the parasite finds the stack pointer for its final
    /// `rt_sigreturn`: x24, which it leaves alone.
    pub fn set_parasite_frame(&mut self, sp: u64) {
        self.user.regs[24] = sp;
    }
    pub fn clear_syscall(&mut self) {
        self.syscallno = NO_SYSCALL;
    }
    /// `-ERESTART*` → `pc -= 4`, `x0 = orig_x0`; restart block → EINTR.
    pub fn fix_syscall_restart(&mut self) {
        match restart_kind(self.in_syscall(), self.syscall_result()) {
            Restart::Again => {
                self.user.pc = self.user.pc.wrapping_sub(SYSCALL_INSN_LEN);
                self.user.regs[0] = self.orig_x0;
            }
            Restart::Eintr => self.user.regs[0] = (-i64::from(libc::EINTR)).bits(),
            Restart::None => {}
        }
    }
    /// Registers as the image keeps them: the restart rule applied where the
    /// kernel has not applied it yet, and no syscall left pending, so that
    /// the restored task resumes on the `svc` (see the module documentation).
    pub fn for_image(&mut self) {
        self.fix_syscall_restart();
        self.clear_syscall();
    }
    /// Registers to resume with.
    pub fn for_resume(&mut self) {
        self.clear_syscall();
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let u = &self.user;
        u.regs
            .iter()
            .chain(&[
                u.sp,
                u.pc,
                u.pstate,
                self.tls,
                self.syscallno.bits(),
                self.orig_x0,
            ])
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, RegsError> {
        if b.len() != REGS_SIZE {
            return Err(RegsError::BadSize {
                got: b.len(),
                want: REGS_SIZE,
            });
        }
        let mut w = [0u64; REGS_SIZE / 8];
        for (i, c) in b.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            w[i] = u64::from_le_bytes(a);
        }
        let mut regs = [0u64; 31];
        regs.copy_from_slice(&w[..31]);
        Ok(Self {
            user: UserPtRegs {
                regs,
                sp: w[31],
                pc: w[32],
                pstate: w[33],
            },
            tls: w[34],
            syscallno: w[35].bits(),
            orig_x0: w[36],
        })
    }
}

/// Where `Remote::at_pc` writes `svc; brk`: word aligned and never the pc
/// itself. A task stopped after an interrupted syscall has its pc rewound to
/// the `svc`; if it is resumed with the pc still there and the syscall had
/// returned `-ERESTART_RESTARTBLOCK`, `do_signal` replaces x8 with
/// `restart_syscall` after the stop, and the injected syscall would not run.
/// Eight bytes below the pc, or above it at the start of a page, stay inside
/// the same page.
pub fn patch_site(pc: u64) -> u64 {
    super::beside_pc(pc)
}

/// Where [`SYSCALL_SIGRETURN`] may go in the task's vDSO `image`: past
/// the end of its ELF file.
pub fn spare_slot(image: &[u8]) -> Option<usize> {
    super::elf64_tail_slot(image, SYSCALL_SIGRETURN)
}

/// `struct rt_sigframe`: siginfo (128) then the ucontext (4560).
const RT_SIGFRAME_SIZE: usize = 128 + 4560;
/// Offsets in the frame: the ucontext, its `uc_sigmask`, and the
/// sigcontext (`uc_mcontext`, 16-byte aligned) with its `__reserved` area.
const UC: usize = 128;
const UC_SIGMASK: usize = UC + 40;
const MCONTEXT: usize = UC + 176;
const RESERVED: usize = MCONTEXT + 288;
const FPSIMD_MAGIC: u32 = 0x4650_8001;
/// `sizeof(struct fpsimd_context)`: header, fpsr, fpcr, 32 vector registers.
const FPSIMD_CONTEXT_SIZE: u32 = 16 + 32 * 16;

/// The frame `rt_sigreturn` reads (arch/arm64/kernel/signal.c), 16-byte
/// aligned below `regs.sp`:
///
/// ```text
///  sp           siginfo (128, unused)
///  sp + 128     ucontext: flags, link, stack (24), sigmask (8), padding
///  sp + 304     sigcontext: fault_address, x0-x30, sp, pc, pstate
///  sp + 592     fpsimd_context (FPSIMD_MAGIC, 528 bytes), then an empty
///               record that ends the list
/// ```
///
/// An SVE or SME state beyond the FP/SIMD registers is not carried.
pub fn sigframe(regs: &Regs, fpregs: &[u8], mask: u64) -> super::SigFrame {
    let addr = regs.user.sp.wrapping_sub(RT_SIGFRAME_SIZE as u64) & !15;
    let mut b = vec![0u8; RT_SIGFRAME_SIZE];
    super::put32(&mut b, UC + 24, super::SS_KEEP);
    super::put64(&mut b, UC_SIGMASK, mask);
    for (i, v) in regs.user.regs.iter().enumerate() {
        super::put64(&mut b, MCONTEXT + 8 + 8 * i, *v);
    }
    super::put64(&mut b, MCONTEXT + 256, regs.user.sp);
    super::put64(&mut b, MCONTEXT + 264, regs.user.pc);
    super::put64(&mut b, MCONTEXT + 272, regs.user.pstate);
    super::put32(&mut b, RESERVED, FPSIMD_MAGIC);
    super::put32(&mut b, RESERVED + 4, FPSIMD_CONTEXT_SIZE);
    // user_fpsimd_state: v0-v31, then fpsr and fpcr.
    if fpregs.len() >= 32 * 16 + 8 {
        b[RESERVED + 8..RESERVED + 16].copy_from_slice(&fpregs[512..520]);
        b[RESERVED + 16..RESERVED + 16 + 512].copy_from_slice(&fpregs[..512]);
    }
    super::SigFrame {
        addr,
        bytes: b,
        sp: addr,
    }
}

/// The first argument of the syscall a stopped task is in, from the text of
/// `/proc/TID/syscall` (`NR ARG0 ... SP PC` in hex, or `-1 SP PC` outside a
/// syscall, or `running`): on arm64 that argument is the kernel's orig_x0.
pub fn syscall_arg0(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace();
    let nr: i64 = it.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let a0 = it.next()?.strip_prefix("0x")?;
    u64::from_str_radix(a0, 16).ok()
}

/// The TLS pointer travels in [`Regs`] and `set_regs` installs it with
/// NT_ARM_TLS: no syscall is needed (arm64 has none for it).
pub fn tls_restore_syscall(_tls: u64) -> Option<(i64, [u64; 6])> {
    None
}

/// Arguments of an `mmap` call with a byte offset.
pub fn mmap_args(addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> (i64, [u64; 6]) {
    super::mmap_byte_offset(nr::MMAP, addr, len, prot, flags, fd, off)
}

/// The syscall numbers the engine injects (asm-generic table; arm64 has no
/// `open`, `dup2`, `fork` and the like).
pub mod nr {
    pub const MMAP: i64 = 222;
    pub const MPROTECT: i64 = 226;
    pub const MUNMAP: i64 = 215;
    pub const RT_SIGACTION: i64 = 134;
    pub const MREMAP: i64 = 216;
    pub const SETITIMER: i64 = 103;
    pub const SETGROUPS: i64 = 159;
    pub const SETRESUID: i64 = 147;
    pub const SETRESGID: i64 = 149;
    pub const RT_SIGQUEUEINFO: i64 = 138;
    pub const SIGALTSTACK: i64 = 132;
    pub const PRCTL: i64 = 167;
    pub const SET_TID_ADDRESS: i64 = 96;
    pub const OPENAT: i64 = 56;
    pub const CLOSE: i64 = 57;
    pub const WRITE: i64 = 64;
    pub const MADVISE: i64 = 233;
    pub const SETPRIORITY: i64 = 140;
    pub const SCHED_SETSCHEDULER: i64 = 119;
    pub const SET_ROBUST_LIST: i64 = 99;
    pub const RT_TGSIGQUEUEINFO: i64 = 240;
    pub const RSEQ: i64 = 293;
    pub const TIMER_CREATE: i64 = 107;
    pub const TIMER_SETTIME: i64 = 110;
    pub const TIMER_DELETE: i64 = 111;
    pub const TIMER_GETTIME: i64 = 108;
    pub const CAPSET: i64 = 91;
    pub const CLONE3: i64 = 435;
    pub const CLOSE_RANGE: i64 = 436;
    pub const USERFAULTFD: i64 = 282;
    pub const PIDFD_OPEN: i64 = 434;
    pub const OPENAT2: i64 = 437;
    pub const LSEEK: i64 = 62;
    pub const DUP3: i64 = 24;
    pub const SHMAT: i64 = 196;
    pub const SECCOMP: i64 = 277;
    pub const IO_SETUP: i64 = 0;
    pub const IO_DESTROY: i64 = 1;
    pub const IO_SUBMIT: i64 = 2;
    pub const IO_GETEVENTS: i64 = 4;
    pub const MEMBARRIER: i64 = 283;
    /// fcntl; `struct flock` has 64-bit offsets.
    pub const FCNTL: i64 = 25;
    /// F_SETLK for the 64-bit record lock of `FCNTL`.
    pub const F_SETLK64: u64 = 6;
}

#[cfg(target_arch = "aarch64")]
pub use kernel::*;

/// The ptrace requests. Unsafe code: PTRACE_GETREGSET and PTRACE_SETREGSET
/// hand the kernel an iovec pointing at our buffers through `libc::ptrace`.
#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
mod kernel {
    use super::{syscall_arg0, Regs, UserPtRegs, FPSIMD_SIZE, USER_PT_REGS_SIZE};
    use crate::arch::{ptrace_err, RegsError};

    const NT_PRSTATUS: usize = 1;
    const NT_PRFPREG: usize = 2;
    const NT_ARM_TLS: usize = 0x401;
    const NT_ARM_SYSTEM_CALL: usize = 0x404;

    /// Reads regset `note` of `tid` into `buf`; returns the bytes written.
    fn get_regset(
        tid: i32,
        note: usize,
        op: &'static str,
        buf: &mut [u8],
    ) -> Result<usize, RegsError> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: the kernel writes at most iov_len bytes into `buf`, which
        // outlives the call, and stores the length written in iov_len.
        let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, note, &raw mut iov) };
        if rc < 0 {
            return Err(ptrace_err(op, tid));
        }
        Ok(iov.iov_len)
    }

    /// Writes `data` to regset `note` of `tid`.
    fn set_regset(tid: i32, note: usize, op: &'static str, data: &[u8]) -> Result<(), RegsError> {
        let mut copy = data.to_vec();
        let mut iov = libc::iovec {
            iov_base: copy.as_mut_ptr().cast(),
            iov_len: copy.len(),
        };
        // SAFETY: the kernel reads iov_len bytes from `copy`, which outlives
        // the call.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, note, &raw mut iov) };
        if rc < 0 {
            return Err(ptrace_err(op, tid));
        }
        Ok(())
    }

    fn word(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_le_bytes(a)
    }

    pub fn get_regs(tid: i32) -> Result<Regs, RegsError> {
        let mut buf = [0u8; USER_PT_REGS_SIZE];
        let got = get_regset(tid, NT_PRSTATUS, "PTRACE_GETREGSET(NT_PRSTATUS)", &mut buf)?;
        if got != USER_PT_REGS_SIZE {
            // An AArch32 task reports the 18-word ARM register file.
            return Err(RegsError::Foreign { tid });
        }
        let mut user = UserPtRegs::default();
        for (i, c) in buf.chunks_exact(8).enumerate() {
            match i {
                0..=30 => user.regs[i] = word(c),
                31 => user.sp = word(c),
                32 => user.pc = word(c),
                _ => user.pstate = word(c),
            }
        }
        let mut tls = [0u8; 8];
        get_regset(tid, NT_ARM_TLS, "PTRACE_GETREGSET(NT_ARM_TLS)", &mut tls)?;
        let mut nr = [0u8; 4];
        get_regset(
            tid,
            NT_ARM_SYSTEM_CALL,
            "PTRACE_GETREGSET(NT_ARM_SYSTEM_CALL)",
            &mut nr,
        )?;
        let syscallno = i64::from(i32::from_le_bytes(nr));
        let x0 = user.regs[0];
        let orig_x0 = if syscallno >= 0 {
            let path = format!("/proc/{tid}/syscall");
            let text = std::fs::read_to_string(&path).map_err(|err| RegsError::Os {
                op: "read /proc/TID/syscall",
                tid,
                err,
            })?;
            syscall_arg0(&text).unwrap_or(x0)
        } else {
            x0
        };
        Ok(Regs {
            user,
            tls: u64::from_le_bytes(tls),
            syscallno,
            orig_x0,
        })
    }

    /// Installs the general registers and tpidr_el0. The kernel's syscall
    /// number is left alone: at the stops torpor uses it was already
    /// consulted (see the module documentation).
    pub fn set_regs(tid: i32, r: &Regs) -> Result<(), RegsError> {
        let bytes = r.to_bytes();
        set_regset(
            tid,
            NT_PRSTATUS,
            "PTRACE_SETREGSET(NT_PRSTATUS)",
            &bytes[..USER_PT_REGS_SIZE],
        )?;
        set_regset(
            tid,
            NT_ARM_TLS,
            "PTRACE_SETREGSET(NT_ARM_TLS)",
            &r.tls.to_le_bytes(),
        )
    }

    /// v0-v31, fpsr and fpcr (`user_fpsimd_state`).
    pub fn get_fpregs(tid: i32) -> Result<Vec<u8>, RegsError> {
        let mut buf = vec![0u8; FPSIMD_SIZE];
        let got = get_regset(tid, NT_PRFPREG, "PTRACE_GETREGSET(NT_PRFPREG)", &mut buf)?;
        if got != FPSIMD_SIZE {
            return Err(RegsError::BadSize {
                got,
                want: FPSIMD_SIZE,
            });
        }
        Ok(buf)
    }

    pub fn set_fpregs(tid: i32, data: &[u8]) -> Result<(), RegsError> {
        if data.len() != FPSIMD_SIZE {
            return Err(RegsError::BadSize {
                got: data.len(),
                want: FPSIMD_SIZE,
            });
        }
        set_regset(tid, NT_PRFPREG, "PTRACE_SETREGSET(NT_PRFPREG)", data)
    }

    /// tpidr_el0, which `get_regs` already read.
    pub fn get_tls(_tid: i32, regs: &Regs) -> Result<u64, RegsError> {
        Ok(regs.tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonzero_regs() -> Regs {
        let mut r = Regs::default();
        for (i, x) in r.user.regs.iter_mut().enumerate() {
            *x = 0x1000 + i as u64;
        }
        r.user.sp = 0x7fff_fff0;
        r.user.pc = 0x40_1234;
        r.user.pstate = 0x6000_0000;
        r.tls = 0x7f00_0000_1000;
        r.orig_x0 = 3;
        r
    }

    #[test]
    fn sigframe_holds_what_rt_sigreturn_reads() {
        let r = nonzero_regs();
        let mut fp = vec![0u8; FPSIMD_SIZE];
        fp[..16].copy_from_slice(&[0x11; 16]); // v0
        fp[496..512].copy_from_slice(&[0x22; 16]); // v31
        fp[512..516].copy_from_slice(&0x0800_0010u32.to_le_bytes()); // fpsr
        fp[516..520].copy_from_slice(&0x0300_0000u32.to_le_bytes()); // fpcr
        let f = sigframe(&r, &fp, 0x8000_0000_0000_4002);
        // 16-byte aligned, below the stack pointer.
        assert_eq!(f.addr, (0x7fff_fff0 - 4688) & !15);
        assert_eq!(f.sp, f.addr);
        assert_eq!(f.bytes.len(), 4688);
        let w = |i: usize| u64::from_le_bytes(f.bytes[i..i + 8].try_into().expect("8 bytes"));
        let h = |i: usize| u32::from_le_bytes(f.bytes[i..i + 4].try_into().expect("4 bytes"));
        assert_eq!(h(128 + 24), 3, "uc_stack.ss_flags that sigaltstack refuses");
        assert_eq!(w(128 + 40), 0x8000_0000_0000_4002, "uc_sigmask");
        assert_eq!(w(304), 0, "fault_address");
        assert_eq!(w(304 + 8), 0x1000, "x0");
        assert_eq!(w(304 + 8 + 30 * 8), 0x101e, "x30");
        assert_eq!(w(304 + 256), 0x7fff_fff0, "sp");
        assert_eq!(w(304 + 264), 0x40_1234, "pc");
        assert_eq!(w(304 + 272), 0x6000_0000, "pstate");
        assert_eq!(h(592), 0x4650_8001, "FPSIMD_MAGIC");
        assert_eq!(h(596), 528);
        assert_eq!(h(600), 0x0800_0010, "fpsr");
        assert_eq!(h(604), 0x0300_0000, "fpcr");
        assert_eq!(f.bytes[608..624], [0x11; 16], "v0");
        assert_eq!(f.bytes[608 + 496..608 + 512], [0x22; 16], "v31");
        assert_eq!(w(592 + 528), 0, "the record that ends the list");
    }

    #[test]
    fn the_site_is_svc_then_rt_sigreturn() {
        let w = |i: usize| u32::from_le_bytes(SYSCALL_SIGRETURN[i..i + 4].try_into().expect("4"));
        assert_eq!(w(0), 0xd400_0001, "svc #0");
        assert_eq!(w(4), 0xd280_1168, "movz x8, #139");
        assert_eq!(w(8), 0xd400_0001, "svc #0");
        assert_eq!(w(12), 0xd420_0000, "brk #0");
    }

    #[test]
    fn byte_form_is_user_pt_regs_then_tls_syscallno_orig_x0() {
        let r = nonzero_regs();
        let b = r.to_bytes();
        assert_eq!(b.len(), 272 + 24);
        let at = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        assert_eq!(at(0), 0x1000);
        assert_eq!(at(8), 0x1008, "x8, the syscall number register");
        assert_eq!(at(30), 0x101e, "x30, the link register");
        assert_eq!(at(31), 0x7fff_fff0, "sp");
        assert_eq!(at(32), 0x40_1234, "pc");
        assert_eq!(at(33), 0x6000_0000, "pstate");
        assert_eq!(at(34), 0x7f00_0000_1000, "tpidr_el0");
        assert_eq!(at(35), u64::MAX, "no syscall");
        assert_eq!(at(36), 3, "orig_x0");
        assert_eq!(Regs::from_bytes(&b).expect("same size"), r);
        assert!(matches!(
            Regs::from_bytes(&b[..272]),
            Err(RegsError::BadSize {
                got: 272,
                want: 296
            })
        ));
    }

    #[test]
    fn syscall_abi_registers() {
        let mut r = nonzero_regs();
        r.syscallno = 63;
        r.prepare_syscall(0x5000, nr::MMAP, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(r.pc(), 0x5000);
        assert_eq!(&r.user.regs[..6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(r.user.regs[8], 222);
        assert_eq!(r.user.regs[19], 0x1013, "untouched");
        assert!(!r.in_syscall());
        r.prepare_parasite(0x6000, 0x7000, 0x7fc0);
        assert_eq!((r.pc(), r.user.regs[19], r.sp()), (0x6000, 0x7000, 0x7fc0));
        let (n, a) = mmap_args(0, 8192, 3, 0x22, -1, 0x3000);
        assert_eq!(n, 222);
        assert_eq!(
            a,
            [0, 8192, 3, 0x22, u64::MAX, 0x3000],
            "byte offset, no mmap2"
        );
    }

    #[test]
    fn trap_is_svc_then_brk() {
        assert_eq!(SYSCALL_TRAP[..4], 0xd400_0001u32.to_le_bytes());
        assert_eq!(SYSCALL_TRAP[4..], 0xd420_0000u32.to_le_bytes());
    }

    /// What the kernel shows at a PTRACE_INTERRUPT stop after an interrupted
    /// syscall: already rewound onto the `svc`, x0 reloaded, no syscall.
    #[test]
    fn kernel_rewound_registers_are_kept() {
        for ret in [-512i64, -513, -514, -516] {
            let mut r = nonzero_regs();
            r.user.pc = 0x40_1000;
            r.user.regs[0] = 7;
            r.user.regs[8] = 63;
            r.syscallno = NO_SYSCALL;
            r.orig_x0 = ret.bits();
            let before = r;
            r.for_image();
            assert_eq!(r, before, "nothing to redo after do_signal ({ret})");
            r.for_resume();
            assert_eq!(r, before);
        }
    }

    /// A stop inside the syscall (NT_ARM_SYSTEM_CALL set): the rule is ours.
    #[test]
    fn restart_applied_where_the_kernel_has_not() {
        for ret in [-512i64, -513, -514] {
            let mut r = nonzero_regs();
            r.user.pc = 0x40_1004;
            r.syscallno = 63;
            r.orig_x0 = 7;
            r.user.regs[0] = ret.bits();
            r.for_image();
            assert_eq!(r.pc(), 0x40_1000, "back on the svc ({ret})");
            assert_eq!(r.syscall_result(), 7, "first argument back in x0");
            assert_eq!(r.user.regs[8], 0x1008, "x8 untouched");
            assert!(!r.in_syscall());
        }
        let mut r = nonzero_regs();
        r.user.pc = 0x40_1004;
        r.syscallno = 101;
        r.user.regs[0] = (-516i64).bits();
        r.for_image();
        assert_eq!(r.pc(), 0x40_1004);
        assert_eq!(r.syscall_result(), -i64::from(libc::EINTR));
        let mut r = nonzero_regs();
        r.user.pc = 0x40_1004;
        r.syscallno = 63;
        r.user.regs[0] = (-4i64).bits();
        r.for_image();
        assert_eq!((r.pc(), r.syscall_result()), (0x40_1004, -4), "EINTR stays");
    }

    #[test]
    fn generic_restart_contract() {
        let mut r = Regs::default();
        r.set_pc(0x1000 + SYSCALL_INSN_LEN);
        r.set_syscall_state(7, -512);
        r.fix_syscall_restart();
        assert_eq!(r.pc(), 0x1000);
        assert_eq!(r.syscall_result(), 7);
        let mut r = Regs::default();
        r.set_pc(0x2000);
        r.set_syscall_state(35, -516);
        r.for_image();
        assert_eq!(r.syscall_result(), -i64::from(libc::EINTR));
        assert_eq!(r.pc(), 0x2000);
        assert!(!r.in_syscall());
    }

    #[test]
    fn injected_code_never_sits_on_the_pc() {
        assert_eq!(patch_site(0x40_1010), 0x40_1008);
        assert_eq!(patch_site(0x40_1013), 0x40_100b & !3);
        assert_eq!(patch_site(0x40_1000), 0x40_1008);
        assert_eq!(patch_site(0x40_1004), 0x40_100c);
        for pc in (0x40_0000u64..0x40_2000).step_by(4) {
            let s = patch_site(pc);
            assert_ne!(s, pc);
            assert_eq!(s & 3, 0);
            assert_eq!(s >> 12, pc >> 12, "same page");
            assert!(s + 8 <= (pc | 0xfff) + 1);
        }
    }

    #[test]
    fn orig_x0_from_proc_syscall() {
        assert_eq!(
            syscall_arg0("63 0x3 0xffffe0a8 0x1 0x0 0x0 0x0 0xffffe080 0x40101c\n"),
            Some(3)
        );
        assert_eq!(syscall_arg0("-1 0xffffe080 0x40101c\n"), None);
        assert_eq!(syscall_arg0("running\n"), None);
        assert_eq!(syscall_arg0(""), None);
    }

    #[test]
    fn syscall_numbers_are_the_generic_table() {
        let table = [
            (nr::FCNTL, 25),
            (nr::OPENAT, 56),
            (nr::CLOSE, 57),
            (nr::WRITE, 64),
            (nr::SCHED_SETSCHEDULER, 119),
            (nr::SETPRIORITY, 140),
            (nr::MADVISE, 233),
            (nr::CAPSET, 91),
            (nr::SET_TID_ADDRESS, 96),
            (nr::SET_ROBUST_LIST, 99),
            (nr::SETITIMER, 103),
            (nr::TIMER_CREATE, 107),
            (nr::TIMER_GETTIME, 108),
            (nr::TIMER_SETTIME, 110),
            (nr::TIMER_DELETE, 111),
            (nr::SIGALTSTACK, 132),
            (nr::RT_SIGACTION, 134),
            (nr::RT_SIGQUEUEINFO, 138),
            (nr::SETRESUID, 147),
            (nr::SETRESGID, 149),
            (nr::SETGROUPS, 159),
            (nr::PRCTL, 167),
            (nr::SHMAT, 196),
            (nr::MUNMAP, 215),
            (nr::MREMAP, 216),
            (nr::MMAP, 222),
            (nr::MPROTECT, 226),
            (nr::RT_TGSIGQUEUEINFO, 240),
            (nr::SECCOMP, 277),
            (nr::RSEQ, 293),
            (nr::CLONE3, 435),
            (nr::CLOSE_RANGE, 436),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
        #[cfg(target_arch = "aarch64")]
        for (got, want) in [
            (nr::OPENAT, libc::SYS_openat),
            (nr::MMAP, libc::SYS_mmap),
            (nr::RT_SIGACTION, libc::SYS_rt_sigaction),
            (nr::SECCOMP, libc::SYS_seccomp),
            (nr::RSEQ, libc::SYS_rseq),
        ] {
            assert_eq!(got, want);
        }
    }
}

//! x86_64: `user_regs_struct`, the `syscall` ABI (nr in rax; rdi rsi rdx r10
//! r8 r9; result in rax), `int3`, FPU/AVX state through the XSTATE regset,
//! TLS in the fs_base register.
//!
//! Unsafe code: the register and XSTATE requests hand the kernel pointers to
//! our buffers through `libc::ptrace`.
#![allow(unsafe_code)]

use super::{ptrace_err, restart_kind, Bits, RegsError, Restart};

pub const ARCH: &str = "x86_64";
/// `syscall; int3`, padded with `int3` to a whole word for PTRACE_POKEDATA.
pub const SYSCALL_TRAP: &[u8] = &[0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc];
/// Length of the syscall instruction the restart rule rewinds over.
pub const SYSCALL_INSN_LEN: u64 = 2;
/// `syscall; mov eax, 15 (rt_sigreturn); syscall`, padded with `int3`.
pub const SYSCALL_SIGRETURN: &[u8; super::SITE_LEN] = &[
    0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
];
/// The kernel-made mapping with spare bytes for [`SYSCALL_SIGRETURN`].
pub const SPARE_MAPPING: &str = "[vdso]";
/// The kernel's SHMLBA: a shared mapping may sit at any page.
pub const SHMLBA: u64 = 4096;

const NT_X86_XSTATE: usize = 0x202;
/// Large enough for any XSAVE layout including AMX tiles.
const XSTATE_MAX: usize = 16 * 1024;
/// Sizes of FPU state `set_fpregs` takes: from the legacy area with the
/// XSAVE header (512 + 64 bytes) up to `XSTATE_MAX`.
pub const FPREGS_SIZES: core::ops::RangeInclusive<usize> = 576..=XSTATE_MAX;

/// The kernel's `struct user_regs_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

const REGS_SIZE: usize = core::mem::size_of::<Regs>();
const _: () = assert!(REGS_SIZE == 27 * 8);

impl Regs {
    pub fn pc(&self) -> u64 {
        self.rip
    }
    pub fn set_pc(&mut self, pc: u64) {
        self.rip = pc;
    }
    pub fn sp(&self) -> u64 {
        self.rsp
    }
    pub fn set_sp(&mut self, sp: u64) {
        self.rsp = sp;
    }
    /// The return value of the syscall just executed.
    pub fn syscall_result(&self) -> i64 {
        self.rax.bits()
    }
    /// True when the task stopped inside a syscall.
    pub fn in_syscall(&self) -> bool {
        self.orig_rax.bits() >= 0
    }
    /// Sets the syscall number and return value as the kernel leaves them.
    pub fn set_syscall_state(&mut self, nr: i64, ret: i64) {
        self.orig_rax = nr.bits();
        self.rax = ret.bits();
    }
    /// Arranges registers to run `syscall` at `pc` with `nr` and `args`.
    pub fn prepare_syscall(&mut self, pc: u64, nr: i64, args: &[u64; 6]) {
        self.rip = pc;
        self.rax = nr.bits();
        self.rdi = args[0];
        self.rsi = args[1];
        self.rdx = args[2];
        self.r10 = args[3];
        self.r8 = args[4];
        self.r9 = args[5];
        self.clear_syscall();
    }
    /// Arranges registers to enter the parasite at `entry` with its argument
    /// area in r12 and the stack pointer at `stack`.
    pub fn prepare_parasite(&mut self, entry: u64, args: u64, stack: u64) {
        self.rip = entry;
        self.r12 = args;
        self.rsp = stack;
        self.clear_syscall();
    }
    /// Where the parasite finds the stack pointer for its final
    /// `rt_sigreturn`: r14, which it leaves alone.
    pub fn set_parasite_frame(&mut self, sp: u64) {
        self.r14 = sp;
    }
    /// Forgets that the task was in a syscall, so resuming it does not run
    /// the kernel's restart logic a second time.
    pub fn clear_syscall(&mut self) {
        self.orig_rax = u64::MAX;
    }
    /// Applies the kernel's restart rule so that the saved registers resume
    /// correctly in a task that never was in that syscall.
    pub fn fix_syscall_restart(&mut self) {
        match restart_kind(self.in_syscall(), self.syscall_result()) {
            Restart::Again => {
                self.rip -= SYSCALL_INSN_LEN;
                self.rax = self.orig_rax;
            }
            Restart::Eintr => self.rax = (-i64::from(libc::EINTR)).bits(),
            Restart::None => {}
        }
    }
    /// Registers as the image keeps them. A syscall to be restarted stays
    /// as the kernel left it (return code and syscall number): on resume the
    /// kernel restarts it itself, or ends it with EINTR if a handled signal
    /// comes first, exactly as without the checkpoint. Only the restart
    /// block, which belongs to the old task, is turned into EINTR.
    pub fn for_image(&mut self) {
        if restart_kind(self.in_syscall(), self.syscall_result()) == Restart::Eintr {
            self.fix_syscall_restart();
            self.clear_syscall();
        }
    }
    /// Registers to resume with: as saved (see `for_image`).
    pub fn for_resume(&mut self) {}
    /// The TLS pointer carried by these registers.
    pub fn tls(&self) -> u64 {
        self.fs_base
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let words: [u64; 27] = [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ];
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
    pub fn from_bytes(b: &[u8]) -> Result<Self, RegsError> {
        if b.len() != REGS_SIZE {
            return Err(RegsError::BadSize {
                got: b.len(),
                want: REGS_SIZE,
            });
        }
        let mut w = [0u64; 27];
        for (i, c) in b.chunks_exact(8).enumerate() {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            w[i] = u64::from_le_bytes(a);
        }
        Ok(Self {
            r15: w[0],
            r14: w[1],
            r13: w[2],
            r12: w[3],
            rbp: w[4],
            rbx: w[5],
            r11: w[6],
            r10: w[7],
            r9: w[8],
            r8: w[9],
            rax: w[10],
            rcx: w[11],
            rdx: w[12],
            rsi: w[13],
            rdi: w[14],
            orig_rax: w[15],
            rip: w[16],
            cs: w[17],
            eflags: w[18],
            rsp: w[19],
            ss: w[20],
            fs_base: w[21],
            gs_base: w[22],
            ds: w[23],
            es: w[24],
            fs: w[25],
            gs: w[26],
        })
    }
}

/// Where `Remote::at_pc` writes `syscall; trap`: the pc itself. x86_64
/// decides a syscall restart after the stop, from orig_rax, which
/// `prepare_syscall` clears.
pub fn patch_site(pc: u64) -> u64 {
    pc
}

/// Where [`SYSCALL_SIGRETURN`] may go in the task's vDSO `image`: past
/// the end of its ELF file.
pub fn spare_slot(image: &[u8]) -> Option<usize> {
    super::elf64_tail_slot(image, SYSCALL_SIGRETURN)
}

/// The frame `rt_sigreturn` reads (arch/x86/kernel/signal_64.c), placed
/// below the red zone under `regs.rsp`, as the kernel places a signal's:
///
/// ```text
///  addr        pretcode (8, unused)     <- sp - 8
///  addr + 8    ucontext (304): flags, link, stack, sigcontext (256), mask
///  addr + 312  siginfo (128, unused)
///  fp          XSAVE area as PTRACE_GETREGSET gave it, 64-byte aligned,
///              then FP_XSTATE_MAGIC2
/// ```
///
/// The software bytes of the XSAVE area say how much of it is valid; with
/// less than a legacy area and an XSAVE header (no XSAVE on the CPU) they
/// are zero and only the legacy area is restored.
pub fn sigframe(regs: &Regs, fpregs: &[u8], mask: u64) -> super::SigFrame {
    const RED_ZONE: u64 = 128;
    const FRAME: u64 = 8 + 304 + 128;
    const UC_FP_XSTATE: u64 = 1;
    const UC_SIGCONTEXT_SS: u64 = 2;
    const UC_STRICT_RESTORE_SS: u64 = 4;
    const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
    const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
    let fp_len = fpregs.len();
    let xsave = fp_len >= *FPREGS_SIZES.start();
    let fp_at = regs.rsp.wrapping_sub(RED_ZONE + fp_len as u64 + 4) & !63;
    let addr = fp_at.wrapping_sub(FRAME) & !15;
    // fp_at - addr is below FRAME + 16.
    let fp_off = usize::try_from(fp_at - addr).unwrap_or(0);
    let mut b = vec![0u8; fp_off + fp_len + 4];
    let uc = 8;
    let flags = UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS | if xsave { UC_FP_XSTATE } else { 0 };
    super::put64(&mut b, uc, flags);
    super::put32(&mut b, uc + 24, super::SS_KEEP);
    let sc = uc + 40;
    let gprs = [
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rax,
        regs.rcx,
        regs.rsp,
        regs.rip,
        regs.eflags,
    ];
    for (i, v) in gprs.iter().enumerate() {
        super::put64(&mut b, sc + 8 * i, *v);
    }
    // cs, gs, fs, ss: 16-bit selectors.
    let sel = |v: u64| (v & 0xffff) as u16;
    for (i, v) in [regs.cs, regs.gs, regs.fs, regs.ss].iter().enumerate() {
        b[sc + 144 + 2 * i..sc + 146 + 2 * i].copy_from_slice(&sel(*v).to_le_bytes());
    }
    super::put64(&mut b, sc + 184, fp_at);
    super::put64(&mut b, uc + 296, mask);
    b[fp_off..fp_off + fp_len].copy_from_slice(fpregs);
    // The software bytes in the legacy area's reserved tail (offset 464).
    let sw = fp_off + 464;
    if xsave {
        let len = u32::try_from(fp_len).unwrap_or(u32::MAX);
        super::put32(&mut b, sw, FP_XSTATE_MAGIC1);
        super::put32(&mut b, sw + 4, len.saturating_add(4));
        super::put32(&mut b, sw + 16, len);
        super::put32(&mut b, fp_off + fp_len, FP_XSTATE_MAGIC2);
    } else if b.len() >= sw + 48 {
        b[sw..sw + 48].fill(0);
    }
    super::SigFrame {
        addr,
        bytes: b,
        sp: addr + 8,
    }
}

pub fn get_regs(tid: i32) -> Result<Regs, RegsError> {
    let mut r = Regs::default();
    // SAFETY: PTRACE_GETREGS writes one user_regs_struct into `r`, which is
    // #[repr(C)] with the kernel's layout.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &raw mut r) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_GETREGS", tid));
    }
    Ok(r)
}

pub fn set_regs(tid: i32, r: &Regs) -> Result<(), RegsError> {
    // SAFETY: PTRACE_SETREGS reads one user_regs_struct from `r`.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, &raw const *r) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_SETREGS", tid));
    }
    Ok(())
}

/// The task's XSAVE area (x87, SSE, AVX and later state), as long as the
/// kernel reports it.
pub fn get_fpregs(tid: i32) -> Result<Vec<u8>, RegsError> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the kernel writes at most iov_len bytes into `buf` and updates
    // iov_len to the size written.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, &raw mut iov) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_GETREGSET(NT_X86_XSTATE)", tid));
    }
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_fpregs(tid: i32, data: &[u8]) -> Result<(), RegsError> {
    let mut copy = data.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr().cast(),
        iov_len: copy.len(),
    };
    // SAFETY: the kernel reads iov_len bytes from `copy`.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, &raw mut iov) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_SETREGSET(NT_X86_XSTATE)", tid));
    }
    Ok(())
}

/// The thread pointer: fs_base, which the general registers already carry.
pub fn get_tls(_tid: i32, regs: &Regs) -> Result<u64, RegsError> {
    Ok(regs.tls())
}

/// x86_64 restores fs_base with the registers; no syscall is needed.
pub fn tls_restore_syscall(_tls: u64) -> Option<(i64, [u64; 6])> {
    None
}

/// Arguments of an `mmap` call with a byte offset.
pub fn mmap_args(addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> (i64, [u64; 6]) {
    super::mmap_byte_offset(nr::MMAP, addr, len, prot, flags, fd, off)
}

/// The syscall numbers the engine injects.
pub mod nr {
    pub const MMAP: i64 = 9;
    pub const MPROTECT: i64 = 10;
    pub const MUNMAP: i64 = 11;
    pub const RT_SIGACTION: i64 = 13;
    pub const MREMAP: i64 = 25;
    pub const SETITIMER: i64 = 38;
    pub const SETGROUPS: i64 = 116;
    pub const SETRESUID: i64 = 117;
    pub const SETRESGID: i64 = 119;
    pub const RT_SIGQUEUEINFO: i64 = 129;
    pub const SIGALTSTACK: i64 = 131;
    pub const PRCTL: i64 = 157;
    pub const SET_TID_ADDRESS: i64 = 218;
    pub const OPENAT: i64 = 257;
    pub const CLOSE: i64 = 3;
    pub const WRITE: i64 = 1;
    pub const MADVISE: i64 = 28;
    pub const SETPRIORITY: i64 = 141;
    pub const SCHED_SETSCHEDULER: i64 = 144;
    pub const SET_ROBUST_LIST: i64 = 273;
    pub const RT_TGSIGQUEUEINFO: i64 = 297;
    pub const RSEQ: i64 = 334;
    pub const TIMER_CREATE: i64 = 222;
    pub const TIMER_SETTIME: i64 = 223;
    pub const TIMER_DELETE: i64 = 226;
    pub const TIMER_GETTIME: i64 = 224;
    pub const CAPSET: i64 = 126;
    pub const CLONE3: i64 = 435;
    pub const CLOSE_RANGE: i64 = 436;
    pub const USERFAULTFD: i64 = 323;
    pub const PIDFD_OPEN: i64 = 434;
    pub const OPENAT2: i64 = 437;
    pub const LSEEK: i64 = 8;
    pub const DUP3: i64 = 292;
    pub const SHMAT: i64 = 30;
    pub const SECCOMP: i64 = 317;
    pub const IO_SETUP: i64 = 206;
    pub const IO_DESTROY: i64 = 207;
    pub const IO_SUBMIT: i64 = 209;
    pub const IO_GETEVENTS: i64 = 208;
    pub const MEMBARRIER: i64 = 324;
    /// fcntl; `struct flock` has 64-bit offsets.
    pub const FCNTL: i64 = 72;
    /// F_SETLK for the 64-bit record lock of `FCNTL`.
    pub const F_SETLK64: u64 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_attribute_syscalls_are_the_kernels() {
        for (got, want) in [
            (nr::WRITE, libc::SYS_write),
            (nr::MADVISE, libc::SYS_madvise),
            (nr::SETPRIORITY, libc::SYS_setpriority),
            (nr::SCHED_SETSCHEDULER, libc::SYS_sched_setscheduler),
            (nr::IO_SETUP, libc::SYS_io_setup),
            (nr::IO_DESTROY, libc::SYS_io_destroy),
            (nr::IO_SUBMIT, libc::SYS_io_submit),
            (nr::IO_GETEVENTS, libc::SYS_io_getevents),
            (nr::MEMBARRIER, libc::SYS_membarrier),
        ] {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn sigframe_holds_what_rt_sigreturn_reads() {
        let r = Regs {
            r8: 8,
            r15: 15,
            rdi: 0xd1,
            rax: 0xa,
            rsp: 0x7ffd_0000_1008,
            rip: 0x40_1000,
            eflags: 0x246,
            cs: 0x33,
            ss: 0x2b,
            ..Default::default()
        };
        let mut fp = vec![0u8; 832];
        fp[..2].copy_from_slice(&0x037fu16.to_le_bytes()); // fcw
        fp[472..480].copy_from_slice(&7u64.to_le_bytes()); // xfeatures
        let f = sigframe(&r, &fp, 0x1_0000);
        let w = |i: usize| u64::from_le_bytes(f.bytes[i..i + 8].try_into().expect("8 bytes"));
        let h = |i: usize| u32::from_le_bytes(f.bytes[i..i + 4].try_into().expect("4 bytes"));
        // The XSAVE area below the red zone, 64-byte aligned; the frame
        // below it; rt_sigreturn finds it at sp - 8.
        let fp_at = (0x7ffd_0000_1008 - 128 - 836) & !63;
        assert_eq!(f.addr, (fp_at - 440) & !15);
        assert_eq!(f.sp, f.addr + 8);
        let fp_off = usize::try_from(fp_at - f.addr).expect("small");
        assert_eq!(f.bytes.len(), fp_off + 836);
        assert_eq!(
            w(8),
            7,
            "uc_flags: FP_XSTATE, SIGCONTEXT_SS, STRICT_RESTORE_SS"
        );
        assert_eq!(h(8 + 24), 3, "uc_stack.ss_flags that sigaltstack refuses");
        let sc = 48;
        assert_eq!(w(sc), 8, "r8");
        assert_eq!(w(sc + 56), 15, "r15");
        assert_eq!(w(sc + 64), 0xd1, "rdi");
        assert_eq!(w(sc + 104), 0xa, "rax");
        assert_eq!(w(sc + 120), 0x7ffd_0000_1008, "rsp");
        assert_eq!(w(sc + 128), 0x40_1000, "rip");
        assert_eq!(w(sc + 136), 0x246, "eflags");
        assert_eq!(f.bytes[sc + 144..sc + 146], [0x33, 0], "cs");
        assert_eq!(f.bytes[sc + 150..sc + 152], [0x2b, 0], "ss");
        assert_eq!(w(sc + 184), fp_at, "fpstate");
        assert_eq!(w(8 + 296), 0x1_0000, "uc_sigmask");
        assert_eq!(
            f.bytes[fp_off..fp_off + 2],
            [0x7f, 0x03],
            "the XSAVE area as read"
        );
        assert_eq!(h(fp_off + 464), 0x4650_5853, "FP_XSTATE_MAGIC1");
        assert_eq!(h(fp_off + 468), 836, "extended_size");
        assert_eq!(w(fp_off + 472), 7, "xfeatures as the kernel reported them");
        assert_eq!(h(fp_off + 480), 832, "xstate_size");
        assert_eq!(h(fp_off + 832), 0x4650_5845, "FP_XSTATE_MAGIC2");
    }

    #[test]
    fn the_site_is_syscall_then_rt_sigreturn() {
        assert_eq!(SYSCALL_SIGRETURN[..2], [0x0f, 0x05], "syscall");
        assert_eq!(SYSCALL_SIGRETURN[2..7], [0xb8, 15, 0, 0, 0], "mov eax, 15");
        assert_eq!(SYSCALL_SIGRETURN[7..9], [0x0f, 0x05], "syscall");
        assert!(SYSCALL_SIGRETURN[9..].iter().all(|b| *b == 0xcc));
    }
}

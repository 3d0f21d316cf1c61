//! 32-bit ARM (ARMv6, EABI): the 18-word `user_regs` (r0-r15, cpsr,
//! ORIG_r0), `svc #0` with the number in r7 and arguments in r0-r5, the
//! Linux undefined-instruction breakpoint as trap, VFP through
//! PTRACE_GETVFPREGS and TLS through PTRACE_GET_THREAD_AREA / `set_tls`.
//! Neither libc nor nix define these for musl ARM, so they are defined here.
//!
//! Unsafe code: the register, VFP and TLS requests hand the kernel pointers to
//! our buffers through `libc::ptrace`, which nix does not wrap for ARM.
#![allow(unsafe_code)]

use super::{aarch32_user, ptrace_err, restart_kind, Bits, RegsError, Restart};

pub const ARCH: &str = "arm";
/// `svc #0` then the Linux ARM breakpoint `0xe7f001f0` (little endian).
pub const SYSCALL_TRAP: &[u8] = &[0x00, 0x00, 0x00, 0xef, 0xf0, 0x01, 0xf0, 0xe7];
/// Length of the syscall instruction the restart rule rewinds over.
pub const SYSCALL_INSN_LEN: u64 = 4;
/// `svc #0; mov r7, #173 (rt_sigreturn); svc #0`, padded with the trap.
pub const SYSCALL_SIGRETURN: &[u8; super::SITE_LEN] = &[
    0x00, 0x00, 0x00, 0xef, 0xad, 0x70, 0xa0, 0xe3, 0x00, 0x00, 0x00, 0xef, 0xf0, 0x01, 0xf0, 0xe7,
];
/// The kernel-made mapping with spare bytes for [`SYSCALL_SIGRETURN`]: the
/// signal page, whose sigreturn code sits at a random offset among
/// undefined instructions (arch/arm/kernel/process.c).
pub const SPARE_MAPPING: &str = "[sigpage]";
/// The undefined instruction the kernel fills `[sigpage]` with.
const SIGPAGE_POISON: u32 = 0xe7fd_def1;
/// The kernel's SHMLBA: where the data cache aliases (VIPT aliasing, as on
/// ARMv6 cores that report it), a shared mapping may only be placed where
/// `address - file offset` is a multiple of this; `mmap` and `mremap` to a
/// fixed address elsewhere fail with EINVAL.
pub const SHMLBA: u64 = 4 * 4096;

const PTRACE_GETREGS: u32 = 12;
const PTRACE_SETREGS: u32 = 13;
const PTRACE_GET_THREAD_AREA: u32 = 22;
const PTRACE_GETVFPREGS: u32 = 27;
const PTRACE_SETVFPREGS: u32 = 28;
/// 32 double registers plus fpscr.
const VFP_SIZE: usize = 32 * 8 + 4;
/// Sizes of FPU state `set_fpregs` takes: exactly the VFP registers.
pub const FPREGS_SIZES: core::ops::RangeInclusive<usize> = VFP_SIZE..=VFP_SIZE;
/// ARM private syscall that sets the TLS register.
const ARM_SET_TLS: i64 = 0xf_0005;
/// The Thumb bit of cpsr; the trampoline is A32 code.
const CPSR_T: u32 = 1 << 5;

/// The kernel's `struct pt_regs` as PTRACE_GETREGS returns it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    pub r: [u32; 16],
    pub cpsr: u32,
    pub orig_r0: u32,
}

const REGS_SIZE: usize = core::mem::size_of::<Regs>();
const _: () = assert!(REGS_SIZE == 18 * 4);

fn lo(v: u64) -> u32 {
    // Addresses and register values on this architecture are 32 bits wide;
    // the upper half of the portable u64 is always zero.
    (v & 0xffff_ffff) as u32
}

#[allow(clippy::cast_possible_wrap)]
fn req(r: u32) -> libc::c_int {
    r as libc::c_int
}

impl Regs {
    pub fn pc(&self) -> u64 {
        u64::from(self.r[15])
    }
    pub fn set_pc(&mut self, pc: u64) {
        self.r[15] = lo(pc);
    }
    pub fn sp(&self) -> u64 {
        u64::from(self.r[13])
    }
    pub fn set_sp(&mut self, sp: u64) {
        self.r[13] = lo(sp);
    }
    pub fn syscall_result(&self) -> i64 {
        i64::from(self.r[0].bits())
    }
    /// ORIG_r0 is -1 outside a syscall (the convention CRIU relies on too).
    pub fn in_syscall(&self) -> bool {
        self.orig_r0.bits() >= 0
    }
    pub fn set_syscall_state(&mut self, orig: i64, ret: i64) {
        self.orig_r0 = lo(orig.bits());
        self.r[0] = lo(ret.bits());
    }
    pub fn prepare_syscall(&mut self, pc: u64, nr: i64, args: &[u64; 6]) {
        self.r[15] = lo(pc);
        self.r[7] = lo(nr.bits());
        for (i, a) in args.iter().enumerate() {
            self.r[i] = lo(*a);
        }
        self.cpsr &= !CPSR_T;
        self.clear_syscall();
    }
    /// Enters the parasite at `entry` with its argument area in r4.
    pub fn prepare_parasite(&mut self, entry: u64, args: u64, stack: u64) {
        self.r[15] = lo(entry);
        self.r[4] = lo(args);
        self.r[13] = lo(stack);
        self.cpsr &= !CPSR_T;
        self.clear_syscall();
    }
    /// Where the parasite finds the stack pointer for its final
    /// `rt_sigreturn`: r8, which it leaves alone.
    pub fn set_parasite_frame(&mut self, sp: u64) {
        self.r[8] = lo(sp);
    }
    pub fn clear_syscall(&mut self) {
        self.orig_r0 = u32::MAX;
    }
    /// `-ERESTART*` → `pc -= 4`, `r0 = ORIG_r0`; restart block → EINTR.
    pub fn fix_syscall_restart(&mut self) {
        match restart_kind(self.in_syscall(), self.syscall_result()) {
            Restart::Again => {
                self.r[15] = self.r[15].wrapping_sub(4);
                self.r[0] = self.orig_r0;
            }
            Restart::Eintr => self.r[0] = (-libc::EINTR).bits(),
            Restart::None => {}
        }
    }
    /// Registers as the image keeps them. ARM applies the restart rule
    /// before it stops a task (arch/arm/kernel/signal.c `do_signal` rewinds
    /// the pc and reloads r0 from ORIG_r0, then stops in `get_signal`), so
    /// the pc is usually rewound already; the rule is applied for the case it
    /// is not, and the syscall state dropped. The rewind is the same for
    /// -ERESTART_RESTARTBLOCK, whose code is gone by then: such a syscall
    /// (a relative sleep) runs again from its original arguments instead of
    /// returning EINTR as on x86_64 — later, never earlier.
    pub fn for_image(&mut self) {
        self.fix_syscall_restart();
        self.clear_syscall();
    }
    /// Registers to resume with.
    pub fn for_resume(&mut self) {
        self.clear_syscall();
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.r
            .iter()
            .chain([self.cpsr, self.orig_r0].iter())
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
        let mut w = [0u32; 18];
        for (i, c) in b.chunks_exact(4).enumerate() {
            w[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let mut r = [0u32; 16];
        r.copy_from_slice(&w[..16]);
        Ok(Self {
            r,
            cpsr: w[16],
            orig_r0: w[17],
        })
    }
}

/// Where `Remote::at_pc` writes `svc; trap`: word aligned (A32 code; a
/// Thumb pc may be 2-aligned) and never the pc itself. A task stopped in a
/// restartable syscall already has its pc rewound to the `svc` and r0 reset
/// (arch/arm/kernel/signal.c decides the restart before the stop); if it is
/// resumed with the pc still at that `svc`, the kernel restarts the *old*
/// syscall in place with the injected arguments. Eight bytes below the pc,
/// or above it at the start of a page, stay inside the same page.
pub fn patch_site(pc: u64) -> u64 {
    super::beside_pc(pc)
}

/// Where [`SYSCALL_SIGRETURN`] may go in the task's signal page `image`:
/// the first aligned slot that holds only the poison instruction (or that
/// code already).
pub fn spare_slot(image: &[u8]) -> Option<usize> {
    let poison = SIGPAGE_POISON.to_le_bytes();
    image
        .chunks_exact(super::SITE_LEN)
        .position(|s| s.chunks_exact(4).all(|w| w == poison) || s == SYSCALL_SIGRETURN)
        .map(|i| i * super::SITE_LEN)
}

/// Offsets in the frame `rt_sigreturn` reads (arch/arm/kernel/signal.c):
/// siginfo (128), then the ucontext: flags, link, stack (12), sigcontext
/// (21 words from trap_no; r0 is its fourth), sigmask (8), padding, and
/// `uc_regspace`, where the VFP record goes.
const UC: usize = 128;
const MCONTEXT_R0: usize = UC + 20 + 12;
const UC_SIGMASK: usize = UC + 104;
const REGSPACE: usize = UC + 232;
const VFP_MAGIC: u32 = 0x5646_5001;
/// `sizeof(struct vfp_sigframe)`: magic, size, `user_vfp` (padded to 264),
/// `user_vfp_exc`, padded to 8.
const VFP_FRAME_SIZE: u32 = 288;
/// FPEXC.EN: the kernel turns it on anyway.
const FPEXC_EN: u32 = 1 << 30;
/// Bytes written: siginfo, the 744-byte ucontext and the return code words.
const RT_SIGFRAME_SIZE: usize = UC + 744 + 16;

/// The frame `rt_sigreturn` reads, 8-byte aligned below `regs.sp`:
///
/// ```text
///  sp          siginfo (128, unused)
///  sp + 148    sigcontext: trap_no, error_code, oldmask, r0-r15, cpsr
///  sp + 232    uc_sigmask
///  sp + 360    vfp_sigframe: VFP_MAGIC, size, d0-d31, fpscr, fpexc
/// ```
pub fn sigframe(regs: &Regs, fpregs: &[u8], mask: u64) -> super::SigFrame {
    let addr = regs.sp().wrapping_sub(RT_SIGFRAME_SIZE as u64) & !7 & 0xffff_ffff;
    let mut b = vec![0u8; RT_SIGFRAME_SIZE];
    super::put32(&mut b, UC + 12, super::SS_KEEP);
    for (i, v) in regs.r.iter().chain([regs.cpsr].iter()).enumerate() {
        super::put32(&mut b, MCONTEXT_R0 + 4 * i, *v);
    }
    b[UC_SIGMASK..UC_SIGMASK + 8].copy_from_slice(&mask.to_le_bytes());
    super::put32(&mut b, REGSPACE, VFP_MAGIC);
    super::put32(&mut b, REGSPACE + 4, VFP_FRAME_SIZE);
    let n = fpregs.len().min(VFP_SIZE);
    b[REGSPACE + 8..REGSPACE + 8 + n].copy_from_slice(&fpregs[..n]);
    super::put32(&mut b, REGSPACE + 272, FPEXC_EN);
    super::SigFrame {
        addr,
        bytes: b,
        sp: addr,
    }
}

pub fn get_regs(tid: i32) -> Result<Regs, RegsError> {
    let mut r = Regs::default();
    // SAFETY: PTRACE_GETREGS writes 18 words into `r` (#[repr(C)], 72 bytes).
    let rc = unsafe { libc::ptrace(req(PTRACE_GETREGS) as _, tid, 0usize, &raw mut r) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_GETREGS", tid));
    }
    aarch32_user(tid, r.cpsr)?;
    Ok(r)
}

pub fn set_regs(tid: i32, r: &Regs) -> Result<(), RegsError> {
    // SAFETY: PTRACE_SETREGS reads 18 words from `r`.
    let rc = unsafe { libc::ptrace(req(PTRACE_SETREGS) as _, tid, 0usize, &raw const *r) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_SETREGS", tid));
    }
    Ok(())
}

/// 32 VFP double registers and fpscr.
pub fn get_fpregs(tid: i32) -> Result<Vec<u8>, RegsError> {
    let mut buf = vec![0u8; VFP_SIZE];
    // SAFETY: PTRACE_GETVFPREGS writes exactly VFP_SIZE bytes into `buf`.
    let rc = unsafe { libc::ptrace(req(PTRACE_GETVFPREGS) as _, tid, 0usize, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_GETVFPREGS", tid));
    }
    Ok(buf)
}

pub fn set_fpregs(tid: i32, data: &[u8]) -> Result<(), RegsError> {
    if data.len() != VFP_SIZE {
        return Err(RegsError::BadSize {
            got: data.len(),
            want: VFP_SIZE,
        });
    }
    // SAFETY: PTRACE_SETVFPREGS reads exactly VFP_SIZE bytes from `data`.
    let rc = unsafe { libc::ptrace(req(PTRACE_SETVFPREGS) as _, tid, 0usize, data.as_ptr()) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_SETVFPREGS", tid));
    }
    Ok(())
}

/// The TLS word (TPIDRURO) through PTRACE_GET_THREAD_AREA.
pub fn get_tls(tid: i32, _regs: &Regs) -> Result<u64, RegsError> {
    let mut tls: u32 = 0;
    // SAFETY: PTRACE_GET_THREAD_AREA on ARM stores one word at `data`.
    let rc = unsafe { libc::ptrace(req(PTRACE_GET_THREAD_AREA) as _, tid, 0usize, &raw mut tls) };
    if rc < 0 {
        return Err(ptrace_err("PTRACE_GET_THREAD_AREA", tid));
    }
    Ok(u64::from(tls))
}

/// `set_tls(tls)`: ARM keeps TLS outside the general registers.
pub fn tls_restore_syscall(tls: u64) -> Option<(i64, [u64; 6])> {
    Some((ARM_SET_TLS, [tls, 0, 0, 0, 0, 0]))
}

/// `mmap2`: the offset is given in 4096-byte units.
pub fn mmap_args(addr: u64, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> (i64, [u64; 6]) {
    (
        nr::MMAP,
        [
            addr,
            len,
            u64::from(prot.bits()),
            u64::from(flags.bits()),
            u64::from(fd.bits()),
            off / 4096,
        ],
    )
}

/// EABI syscall numbers the engine injects.
pub mod nr {
    pub const MMAP: i64 = 192;
    pub const MPROTECT: i64 = 125;
    pub const MUNMAP: i64 = 91;
    pub const RT_SIGACTION: i64 = 174;
    pub const MREMAP: i64 = 163;
    pub const SETITIMER: i64 = 104;
    pub const SETGROUPS: i64 = 206;
    pub const SETRESUID: i64 = 208;
    pub const SETRESGID: i64 = 210;
    pub const RT_SIGQUEUEINFO: i64 = 178;
    pub const SIGALTSTACK: i64 = 186;
    pub const PRCTL: i64 = 172;
    pub const SET_TID_ADDRESS: i64 = 256;
    pub const OPENAT: i64 = 322;
    pub const CLOSE: i64 = 6;
    pub const WRITE: i64 = 4;
    pub const MADVISE: i64 = 220;
    pub const SETPRIORITY: i64 = 97;
    pub const SCHED_SETSCHEDULER: i64 = 156;
    pub const SET_ROBUST_LIST: i64 = 338;
    pub const RT_TGSIGQUEUEINFO: i64 = 363;
    pub const RSEQ: i64 = 398;
    pub const TIMER_CREATE: i64 = 257;
    pub const TIMER_SETTIME: i64 = 258;
    pub const TIMER_DELETE: i64 = 261;
    pub const TIMER_GETTIME: i64 = 259;
    pub const CAPSET: i64 = 185;
    pub const CLONE3: i64 = 435;
    pub const CLOSE_RANGE: i64 = 436;
    pub const USERFAULTFD: i64 = 388;
    pub const PIDFD_OPEN: i64 = 434;
    pub const OPENAT2: i64 = 437;
    pub const LSEEK: i64 = 19;
    pub const DUP3: i64 = 358;
    pub const SHMAT: i64 = 305;
    pub const SECCOMP: i64 = 383;
    pub const IO_SETUP: i64 = 243;
    pub const IO_DESTROY: i64 = 244;
    pub const IO_SUBMIT: i64 = 246;
    pub const IO_GETEVENTS: i64 = 245;
    pub const MEMBARRIER: i64 = 389;
    /// fcntl64, whose record locks take `struct flock64`.
    pub const FCNTL: i64 = 221;
    /// F_SETLK for the 64-bit record lock of `FCNTL`.
    pub const F_SETLK64: u64 = 13;
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
            assert_eq!(got, i64::from(want));
        }
    }

    #[test]
    fn sigframe_holds_what_rt_sigreturn_reads() {
        let mut r = Regs::default();
        for (x, v) in r.r.iter_mut().zip(0x100u32..) {
            *x = v;
        }
        r.r[13] = 0xbeff_f004;
        r.cpsr = 0x6000_0010;
        let mut fp = vec![0u8; VFP_SIZE];
        fp[..8].copy_from_slice(&[0x11; 8]); // d0
        fp[256..260].copy_from_slice(&0x0300_0000u32.to_le_bytes()); // fpscr
        let f = sigframe(&r, &fp, 0x8000_0000_0000_4002);
        assert_eq!(f.addr, (0xbeff_f004 - 888) & !7);
        assert_eq!(f.sp, f.addr);
        let h = |i: usize| u32::from_le_bytes(f.bytes[i..i + 4].try_into().expect("4 bytes"));
        assert_eq!(h(128 + 12), 3, "uc_stack.ss_flags that sigaltstack refuses");
        assert_eq!(h(160), 0x100, "r0");
        assert_eq!(h(160 + 12 * 4), 0x10c, "ip");
        assert_eq!(h(160 + 13 * 4), 0xbeff_f004, "sp");
        assert_eq!(h(160 + 15 * 4), 0x10f, "pc");
        assert_eq!(h(160 + 16 * 4), 0x6000_0010, "cpsr");
        assert_eq!(h(232), 0x4002, "uc_sigmask, low word");
        assert_eq!(h(236), 0x8000_0000, "uc_sigmask, high word");
        assert_eq!(h(360), 0x5646_5001, "VFP_MAGIC");
        assert_eq!(h(364), 288, "VFP_STORAGE_SIZE");
        assert_eq!(f.bytes[368..376], [0x11; 8], "d0");
        assert_eq!(h(368 + 256), 0x0300_0000, "fpscr");
        assert_eq!(h(360 + 272), 1 << 30, "fpexc: enabled");
    }

    #[test]
    fn the_signal_page_slot_is_poison() {
        let mut page = vec![0u8; 4096];
        for w in page.chunks_exact_mut(4) {
            w.copy_from_slice(&SIGPAGE_POISON.to_le_bytes());
        }
        page[0x200..0x210].fill(0);
        assert_eq!(spare_slot(&page), Some(0));
        page[8..12].fill(0);
        assert_eq!(spare_slot(&page), Some(16));
        page[16..32].copy_from_slice(SYSCALL_SIGRETURN);
        assert_eq!(spare_slot(&page), Some(16));
        assert_eq!(spare_slot(&[0u8; 64]), None);
    }
}

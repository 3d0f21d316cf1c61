//! Per-architecture code behind one interface: the register file, the
//! syscall ABI, the trap instruction, the syscall-restart rule and the
//! requests that read and write FPU state and TLS.
//!
//! Exactly one module is selected here; every caller uses `crate::arch::*`
//! and never writes `cfg(target_arch)`. Each module provides the same set:
//!
//! - `ARCH: &str`, `SYSCALL_TRAP: &[u8]` (syscall then trap, word padded),
//!   `SHMLBA` (the alignment of shared mappings relative to their offset)
//! - `Regs` (`#[repr(C)]`, the kernel's user register struct; on aarch64
//!   with the TLS and syscall state arm64 reports in separate regsets) with
//!   `pc/set_pc/sp/set_sp`, `syscall_result`, `prepare_syscall`,
//!   `prepare_parasite`, `fix_syscall_restart`, `to_bytes/from_bytes`,
//!   `clear_syscall`, `for_image` (how a stopped syscall is saved) and
//!   `for_resume` (how it is resumed)
//! - `get_regs/set_regs`, `get_fpregs/set_fpregs` (`FPREGS_SIZES`: the
//!   lengths of FPU state it takes), `get_tls`
//! - `patch_site(pc)`: where a borrowed task gets `syscall; trap` written
//! - `tls_restore_syscall(tls)`: the remote syscall that installs a TLS
//!   pointer, when registers alone do not carry it
//! - `nr`: the syscall numbers the engine injects, and `mmap_args`
//! - `SYSCALL_SIGRETURN` (syscall, then `rt_sigreturn`, padded to
//!   [`SITE_LEN`]), `SPARE_MAPPING` and `spare_slot`: where in a kernel-made
//!   mapping those bytes may go, `sigframe`: the signal frame that
//!   `rt_sigreturn` turns back into a task's registers, mask and FPU state,
//!   and `Regs::set_parasite_frame` (see `engine::remote`)

#[cfg(target_arch = "arm")]
mod arm;
#[cfg(target_arch = "arm")]
pub use arm::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

// The AArch64 register layout and restart rule are plain code, unit tested on
// every host; its ptrace requests exist only on aarch64.
#[cfg(any(target_arch = "aarch64", test))]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

/// The patch site of the ARM architectures: word aligned and eight bytes
/// away from the pc, below it or, at the start of a page, above it, so the
/// injected `svc; trap` stays in the pc's page and never sits on the pc
/// itself (each module's `patch_site` says why that matters there).
#[cfg(any(target_arch = "arm", target_arch = "aarch64", test))]
fn beside_pc(pc: u64) -> u64 {
    let pc = pc & !3;
    if pc & 0xfff >= 8 {
        pc - 8
    } else {
        pc + 8
    }
}

/// Bytes of the injected `syscall; rt_sigreturn` with its padding.
pub const SITE_LEN: usize = 16;

/// A signal frame to write at `addr`: `rt_sigreturn` with the stack
/// pointer at `sp` installs the registers, signal mask and FPU state it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigFrame {
    pub addr: u64,
    pub bytes: Vec<u8>,
    pub sp: u64,
}

/// Little-endian stores into a frame under construction.
#[cfg(any(
    target_arch = "arm",
    target_arch = "x86_64",
    target_arch = "aarch64",
    test
))]
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", test))]
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// `sigaltstack` flags no kernel accepts (neither 0, SS_ONSTACK nor
/// SS_DISABLE): `rt_sigreturn` passes the frame's `uc_stack` to
/// `sigaltstack` and ignores its failure, so the task's alternate stack is
/// left as it is.
#[cfg(any(
    target_arch = "arm",
    target_arch = "x86_64",
    target_arch = "aarch64",
    test
))]
const SS_KEEP: u32 = 3;

/// The last [`SITE_LEN`] bytes of a vDSO image when no part of its ELF
/// file (headers, sections, section table) reaches them, and they hold
/// nothing (zeros) or `code` already: the offset of that slot. Nothing
/// calls or jumps there, so code written there runs only when torpor sends
/// a task there.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", test))]
fn elf64_tail_slot(image: &[u8], code: &[u8]) -> Option<usize> {
    let u16_at = |at: usize| -> Option<u64> {
        Some(u64::from(u16::from_le_bytes(
            image.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let u32_at = |at: usize| -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            image.get(at..at + 4)?.try_into().ok()?,
        )))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?))
    };
    // ELF64, little endian.
    if image.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, shoff) = (u64_at(0x20)?, u64_at(0x28)?);
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    let (shentsize, shnum) = (u16_at(0x3a)?, u16_at(0x3c)?);
    let mut end = (phoff + phentsize * phnum).max(shoff + shentsize * shnum);
    for i in 0..phnum {
        let ph = usize::try_from(phoff + i * phentsize).ok()?;
        // p_offset + p_filesz
        end = end.max(u64_at(ph + 8)?.checked_add(u64_at(ph + 32)?)?);
    }
    const SHT_NOBITS: u64 = 8;
    for i in 0..shnum {
        let sh = usize::try_from(shoff + i * shentsize).ok()?;
        if u32_at(sh + 4)? != SHT_NOBITS {
            // sh_offset + sh_size
            end = end.max(u64_at(sh + 24)?.checked_add(u64_at(sh + 32)?)?);
        }
    }
    let at = image.len().checked_sub(SITE_LEN)? & !(SITE_LEN - 1);
    if (at as u64) < end {
        return None;
    }
    let slot = &image[at..at + SITE_LEN];
    (slot.iter().all(|b| *b == 0) || slot == code).then_some(at)
}

/// `mmap` arguments where the offset is in bytes (every 64-bit ABI).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64", test))]
fn mmap_byte_offset(
    mmap_nr: i64,
    addr: u64,
    len: u64,
    prot: i32,
    flags: i32,
    fd: i32,
    off: u64,
) -> (i64, [u64; 6]) {
    (
        mmap_nr,
        [
            addr,
            len,
            u64::from(prot.bits()),
            u64::from(flags.bits()),
            i64::from(fd).bits(),
            off,
        ],
    )
}

/// Same-width reinterpretation between signed and unsigned integers (the
/// kernel ABI passes both through the same registers).
pub trait Bits {
    type Out;
    fn bits(self) -> Self::Out;
}

macro_rules! bits {
    ($($a:ty => $b:ty),*) => {$(
        impl Bits for $a {
            type Out = $b;
            #[allow(clippy::cast_sign_loss, clippy::cast_possible_wrap)]
            fn bits(self) -> $b { self as $b }
        }
    )*};
}
bits!(i64 => u64, u64 => i64, i32 => u32, u32 => i32, isize => usize, usize => isize);

/// A register-sized value read back from an image of this architecture
/// (the header's architecture is checked first, so it fits a native word).
#[allow(clippy::cast_possible_truncation)]
pub fn native(v: u64) -> usize {
    v as usize
}

/// Signed counterpart of [`native`].
#[allow(clippy::cast_possible_truncation)]
pub fn native_signed(v: i64) -> isize {
    v as isize
}

/// Kernel return codes that ask for a syscall restart (include/linux/errno.h).
pub const ERESTARTSYS: i64 = 512;
pub const ERESTARTNOINTR: i64 = 513;
pub const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// What a stopped task's syscall state asks for, decided identically on every
/// architecture from the raw return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Not in a restartable syscall.
    None,
    /// Re-execute the syscall instruction with the original first argument.
    Again,
    /// The restart block cannot be carried over: the syscall returns EINTR.
    Eintr,
}

/// Classifies a syscall return value left in a stopped task.
pub fn restart_kind(in_syscall: bool, ret: i64) -> Restart {
    if !in_syscall {
        return Restart::None;
    }
    match -ret {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => Restart::Again,
        ERESTART_RESTARTBLOCK => Restart::Eintr,
        _ => Restart::None,
    }
}

/// The error a register request failed with.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("task {0} is gone")]
    TaskDied(i32),
    #[error("{op} on task {tid}: {err}")]
    Os {
        op: &'static str,
        tid: i32,
        err: std::io::Error,
    },
    #[error("register image of {got} bytes, this architecture needs {want}")]
    BadSize { got: usize, want: usize },
    #[error(
        "task {tid} runs 32-bit ARM (AArch32) code; this torpor checkpoints 64-bit tasks only"
    )]
    Foreign { tid: i32 },
    #[error(
        "task {tid} runs 64-bit ARM (AArch64) code; this 32-bit ARM torpor checkpoints \
         32-bit tasks only (use the aarch64 torpor)"
    )]
    Wide { tid: i32 },
}

/// The mode field of an ARM cpsr, and the value every 32-bit user task has.
#[cfg(any(target_arch = "arm", test))]
const CPSR_MODE: u32 = 0x1f;
#[cfg(any(target_arch = "arm", test))]
const CPSR_MODE_USR: u32 = 0x10;

/// Whether the cpsr a 32-bit tracer read belongs to a 32-bit user task.
///
/// A 32-bit ARM task always runs in user mode (0x10). On an arm64 kernel a
/// 32-bit tracer may seize a 64-bit task too, and the kernel then hands it
/// that task's registers squeezed into the 32-bit layout, without an error:
/// the "cpsr" is the AArch64 PSTATE, whose mode field is EL0t (0). Such
/// registers are meaningless, and code written at their pc would land in
/// the wrong place; the task is refused instead.
#[cfg(any(target_arch = "arm", test))]
fn aarch32_user(tid: i32, cpsr: u32) -> Result<(), RegsError> {
    if cpsr & CPSR_MODE == CPSR_MODE_USR {
        Ok(())
    } else {
        Err(RegsError::Wide { tid })
    }
}

pub(crate) fn ptrace_err(op: &'static str, tid: i32) -> RegsError {
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        RegsError::TaskDied(tid)
    } else {
        RegsError::Os { op, tid, err }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 image of `len` bytes whose one section ends at `end`.
    fn elf(len: usize, end: u64) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        // No program headers; one 64-byte section header at 0x100.
        put64(&mut b, 0x28, 0x100);
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        put32(&mut b, 0x100 + 4, 1); // SHT_PROGBITS
        put64(&mut b, 0x100 + 24, 0x200);
        put64(&mut b, 0x100 + 32, end - 0x200);
        b
    }

    #[test]
    fn the_vdso_slot_is_past_the_elf_file() {
        let code = [0xaa; SITE_LEN];
        assert_eq!(elf64_tail_slot(&elf(8192, 0x1a60), &code), Some(8192 - 16));
        // Contents up to the last 16 bytes: no room.
        assert_eq!(elf64_tail_slot(&elf(8192, 8192 - 8), &code), None);
        // The slot already holds the code (a dump that did not finish).
        let mut img = elf(8192, 0x1a60);
        img[8176..].copy_from_slice(&code);
        assert_eq!(elf64_tail_slot(&img, &code), Some(8176));
        // Anything else there is left alone.
        img[8180] = 1;
        assert_eq!(elf64_tail_slot(&img, &code), None);
        // Not an ELF64 image.
        let mut img = elf(8192, 0x1a60);
        img[4] = 1;
        assert_eq!(elf64_tail_slot(&img, &code), None);
        assert_eq!(elf64_tail_slot(&[0u8; 8], &code), None);
    }

    #[test]
    fn a_64_bit_task_seen_by_a_32_bit_tracer_is_refused() {
        // User mode, with flags and the Thumb bit: a 32-bit task.
        assert!(aarch32_user(7, 0x6000_0010).is_ok());
        assert!(aarch32_user(7, 0x0000_0030).is_ok());
        // The PSTATE of an AArch64 task at EL0 (mode EL0t, nRW clear).
        let e = aarch32_user(4242, 0x6000_0000).expect_err("EL0t is not AArch32 user mode");
        assert!(matches!(e, RegsError::Wide { tid: 4242 }));
        assert_eq!(
            e.to_string(),
            "task 4242 runs 64-bit ARM (AArch64) code; this 32-bit ARM torpor checkpoints \
             32-bit tasks only (use the aarch64 torpor)"
        );
        // Any other mode is no user task either.
        assert!(aarch32_user(1, 0x13).is_err());
    }

    #[test]
    fn restart_codes() {
        assert_eq!(restart_kind(true, -512), Restart::Again);
        assert_eq!(restart_kind(true, -513), Restart::Again);
        assert_eq!(restart_kind(true, -514), Restart::Again);
        assert_eq!(restart_kind(true, -516), Restart::Eintr);
        assert_eq!(restart_kind(true, -4), Restart::None);
        assert_eq!(restart_kind(false, -512), Restart::None);
    }

    #[test]
    fn regs_round_trip_through_bytes() {
        let mut r = Regs::default();
        r.set_pc(0x1234_5678);
        r.set_sp(0x7fff_0000);
        let b = r.to_bytes();
        let back = Regs::from_bytes(&b).expect("same size");
        assert_eq!(back.pc(), 0x1234_5678);
        assert_eq!(back.sp(), 0x7fff_0000);
        assert!(Regs::from_bytes(&b[1..]).is_err());
    }

    #[test]
    fn saved_restart_block_becomes_eintr() {
        let mut r = Regs::default();
        r.set_pc(0x2000);
        r.set_syscall_state(35, -516);
        r.for_image();
        assert_eq!(r.syscall_result(), -i64::from(libc::EINTR));
        assert_eq!(r.pc(), 0x2000);
        assert!(!r.in_syscall(), "nothing left for the kernel to restart");
    }

    #[test]
    fn restart_fixup_rewinds_the_syscall() {
        let mut r = Regs::default();
        r.set_pc(0x1000 + SYSCALL_INSN_LEN);
        r.set_syscall_state(7, -512);
        r.fix_syscall_restart();
        assert_eq!(r.pc(), 0x1000);
        assert_eq!(r.syscall_result(), 7);
        let mut r = Regs::default();
        r.set_pc(0x1000 + SYSCALL_INSN_LEN);
        r.set_syscall_state(7, -516);
        r.fix_syscall_restart();
        assert_eq!(r.pc(), 0x1000 + SYSCALL_INSN_LEN);
        assert_eq!(r.syscall_result(), -i64::from(libc::EINTR));
    }
}

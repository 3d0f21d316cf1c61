//! Hand-written, position-independent code that torpor injects into a frozen
//! task: the syscall trampoline and the parasite that collects in-process
//! state. No relocations; every blob runs wherever it is mapped.
//!
//! Each architecture's blobs are assembled with `global_asm!` into
//! `.rodata`, between start/end symbols, and exported as byte slices. The
//! tracer copies the bytes into the task; they are never executed in torpor.
//!
//! The parasite's argument area is [`ParasiteArgs`]; its field offsets are fed
//! to the assembler as `const` operands, so the code and the Rust view cannot
//! drift apart, and the layout drawn below is checked by `const` asserts.
#![no_std]
#![deny(unsafe_code)]

use bytemuck::{Pod, Zeroable};
use core::mem::{offset_of, size_of};

/// Number of signals whose disposition the parasite reads (1..=64).
pub const NSIG: usize = 64;

/// The kernel's `struct sigaction` as `rt_sigaction` reads and writes it
/// (not libc's): native words, then the 64-bit mask as native words so that
/// 32-bit ARM has no alignment padding before it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KSigaction {
    pub handler: usize,
    pub flags: usize,
    pub restorer: usize,
    pub mask: [usize; 8 / size_of::<usize>()],
}

/// `stack_t` (sigaltstack): pointer, int flags, size. On 64-bit targets the
/// int is followed by four bytes of padding, spelled out as `_pad` so that
/// every byte of the struct is a field (the tracer copies it as bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KStack {
    pub sp: usize,
    pub flags: i32,
    pub _pad: [u8; size_of::<usize>() - size_of::<i32>()],
    pub size: usize,
}

/// `struct itimerval`: interval then value, each `{sec, usec}` in native longs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KItimerval {
    pub interval_sec: isize,
    pub interval_usec: isize,
    pub value_sec: isize,
    pub value_usec: isize,
}

/// Index into [`ParasiteArgs::results`] of each non-sigaction call.
pub mod slot {
    pub const SIGALTSTACK: usize = 0;
    pub const ITIMER_REAL: usize = 1;
    pub const ITIMER_VIRTUAL: usize = 2;
    pub const ITIMER_PROF: usize = 3;
    pub const TID_ADDRESS: usize = 4;
    pub const ROBUST_LIST: usize = 5;
    pub const BRK: usize = 6;
    pub const COUNT: usize = 8;
}

/// The parasite's argument area, written back by the parasite. The 64-bit
/// column is x86_64 and aarch64 alike (both LP64).
///
/// ```text
///  64-bit offset  arm offset
///  0              0            sigactions[64]   KSigaction (32 / 20 bytes each)
///  2048           1280         sig_results[64]  isize: rt_sigaction return values
///  2560           1536         altstack         KStack (24 / 12)
///  2584           1548         itimers[3]       KItimerval (32 / 16): REAL, VIRTUAL, PROF
///  2680           1596         tid_address      usize (PR_GET_TID_ADDRESS writes it)
///  2688           1600         robust_head      usize
///  2696           1604         robust_len       usize
///  2704           1608         results[8]       isize: return value of each call in `slot`
///  2768           1640         (end)            the parasite's stack lies above, same mapping
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct ParasiteArgs {
    pub sigactions: [KSigaction; NSIG],
    pub sig_results: [isize; NSIG],
    pub altstack: KStack,
    pub itimers: [KItimerval; 3],
    pub tid_address: usize,
    pub robust_head: usize,
    pub robust_len: usize,
    pub results: [isize; slot::COUNT],
}

impl Default for ParasiteArgs {
    fn default() -> Self {
        Self {
            sigactions: [KSigaction::default(); NSIG],
            sig_results: [0; NSIG],
            altstack: KStack::default(),
            itimers: [KItimerval::default(); 3],
            tid_address: 0,
            robust_head: 0,
            robust_len: 0,
            results: [0; slot::COUNT],
        }
    }
}

const OFF_SIGACTIONS: usize = offset_of!(ParasiteArgs, sigactions);
const OFF_SIG_RESULTS: usize = offset_of!(ParasiteArgs, sig_results);
const OFF_ALTSTACK: usize = offset_of!(ParasiteArgs, altstack);
const OFF_ITIMERS: usize = offset_of!(ParasiteArgs, itimers);
const OFF_TID_ADDRESS: usize = offset_of!(ParasiteArgs, tid_address);
const OFF_ROBUST_HEAD: usize = offset_of!(ParasiteArgs, robust_head);
const OFF_ROBUST_LEN: usize = offset_of!(ParasiteArgs, robust_len);
const OFF_RESULTS: usize = offset_of!(ParasiteArgs, results);
const SIGACTION_SIZE: usize = size_of::<KSigaction>();
const ITIMER_SIZE: usize = size_of::<KItimerval>();
const WORD: usize = size_of::<usize>();

// The layout drawn above, checked for both word sizes.
const _: () = {
    assert!(OFF_SIGACTIONS == 0);
    assert!(SIGACTION_SIZE == 3 * WORD + 8);
    assert!(OFF_SIG_RESULTS == NSIG * SIGACTION_SIZE);
    assert!(OFF_ALTSTACK == OFF_SIG_RESULTS + NSIG * WORD);
    assert!(size_of::<KStack>() == 3 * WORD);
    assert!(offset_of!(KStack, size) == 2 * WORD);
    assert!(OFF_ITIMERS == OFF_ALTSTACK + 3 * WORD);
    assert!(ITIMER_SIZE == 4 * WORD);
    assert!(OFF_TID_ADDRESS == OFF_ITIMERS + 3 * ITIMER_SIZE);
    assert!(OFF_ROBUST_HEAD == OFF_TID_ADDRESS + WORD);
    assert!(OFF_ROBUST_LEN == OFF_ROBUST_HEAD + WORD);
    assert!(OFF_RESULTS == OFF_ROBUST_LEN + WORD);
    assert!(size_of::<ParasiteArgs>() == OFF_RESULTS + slot::COUNT * WORD);
    assert!(size_of::<ParasiteArgs>() % 8 == 0);
    // The whole area plus a stack fits in the one page the tracer maps.
    assert!(size_of::<ParasiteArgs>() + 1024 <= 4096);
};

/// Where the parasite's code, arguments and stack go in the one mapping the
/// tracer creates for it:
///
/// ```text
///  page 0: code (PARASITE bytes), read+exec
///  page 1: ParasiteArgs at offset 0, stack grows down from the page end
/// ```
pub const PARASITE_ARGS_OFFSET: usize = 4096;
/// Size of the parasite mapping (code page + argument/stack page).
pub const PARASITE_MAP_SIZE: usize = 8192;

/// The x86_64 blobs. Unsafe code: `global_asm!` counts as unsafe, since
/// the assembler output is not checked by Rust; here it only emits bytes
/// into `.rodata` that torpor never runs.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod blobs {
    // Trampoline: `syscall; int3`.
    // Parasite: entered with r12 = &ParasiteArgs, r14 = the stack pointer
    // of a signal frame holding the task's own context, and rsp inside the
    // argument page; uses only r12-r15 (which syscall preserves) plus the
    // syscall argument registers. The tracer steps it from syscall to
    // syscall and takes it back at the exit of its final getpid; a task
    // whose tracer died goes on into rt_sigreturn and returns to its own
    // context. The int3 after it is never reached.
    core::arch::global_asm!(
        ".pushsection .rodata.torpor_blobs,\"a\"",
        ".globl torpor_trampoline_start",
        ".globl torpor_trampoline_end",
        "torpor_trampoline_start:",
        "syscall",
        "int3",
        "torpor_trampoline_end:",
        ".globl torpor_parasite_start",
        ".globl torpor_parasite_end",
        "torpor_parasite_start:",
        // for sig in 1..=64 (skipping SIGKILL 9, SIGSTOP 19):
        //   sig_results[sig-1] = rt_sigaction(sig, NULL, &sigactions[sig-1], 8)
        "mov r13d, 1",
        "2:",
        "cmp r13d, 9",
        "je 3f",
        "cmp r13d, 19",
        "je 3f",
        "mov eax, 13",
        "mov edi, r13d",
        "xor esi, esi",
        "lea rdx, [r13 - 1]",
        "imul rdx, rdx, {sa_size}",
        "add rdx, r12",
        "mov r10d, 8",
        "syscall",
        "mov [r12 + r13 * 8 + {sig_results} - 8], rax",
        "3:",
        "inc r13d",
        "cmp r13d, 65",
        "jne 2b",
        // sigaltstack(NULL, &altstack)
        "mov eax, 131",
        "xor edi, edi",
        "lea rsi, [r12 + {altstack}]",
        "syscall",
        "mov [r12 + {results} + 8 * {s_altstack}], rax",
        // getitimer(which, &itimers[which]) for REAL, VIRTUAL, PROF
        "xor r13d, r13d",
        "4:",
        "mov eax, 36",
        "mov edi, r13d",
        "mov rsi, r13",
        "imul rsi, rsi, {it_size}",
        "lea rsi, [r12 + rsi + {itimers}]",
        "syscall",
        "mov [r12 + r13 * 8 + {results} + 8 * {s_itimer}], rax",
        "inc r13d",
        "cmp r13d, 3",
        "jne 4b",
        // prctl(PR_GET_TID_ADDRESS, &tid_address)
        "mov eax, 157",
        "mov edi, 40",
        "lea rsi, [r12 + {tid_address}]",
        "xor edx, edx",
        "xor r10d, r10d",
        "xor r8d, r8d",
        "syscall",
        "mov [r12 + {results} + 8 * {s_tid}], rax",
        // get_robust_list(0, &robust_head, &robust_len)
        "mov eax, 274",
        "xor edi, edi",
        "lea rsi, [r12 + {robust_head}]",
        "lea rdx, [r12 + {robust_len}]",
        "syscall",
        "mov [r12 + {results} + 8 * {s_robust}], rax",
        // brk(0): the current program break
        "mov eax, 12",
        "xor edi, edi",
        "syscall",
        "mov [r12 + {results} + 8 * {s_brk}], rax",
        // getpid: the tracer takes the task back at this syscall's exit.
        "mov eax, 39",
        "syscall",
        ".globl torpor_parasite_done",
        "torpor_parasite_done:",
        // Reached only without a tracer: back to the task's own context.
        "mov rsp, r14",
        "mov eax, 15",
        "syscall",
        "int3",
        "torpor_parasite_end:",
        ".popsection",
        sa_size = const super::SIGACTION_SIZE,
        it_size = const super::ITIMER_SIZE,
        sig_results = const super::OFF_SIG_RESULTS,
        altstack = const super::OFF_ALTSTACK,
        itimers = const super::OFF_ITIMERS,
        tid_address = const super::OFF_TID_ADDRESS,
        robust_head = const super::OFF_ROBUST_HEAD,
        robust_len = const super::OFF_ROBUST_LEN,
        results = const super::OFF_RESULTS,
        s_altstack = const super::slot::SIGALTSTACK,
        s_itimer = const super::slot::ITIMER_REAL,
        s_tid = const super::slot::TID_ADDRESS,
        s_robust = const super::slot::ROBUST_LIST,
        s_brk = const super::slot::BRK,
    );
}

/// The arm blobs. Unsafe code: `global_asm!` counts as unsafe, since
/// the assembler output is not checked by Rust; here it only emits bytes
/// into `.rodata` that torpor never runs.
#[cfg(target_arch = "arm")]
#[allow(unsafe_code)]
mod blobs {
    // ARM (A32, ARMv6: no movw/movt, no Thumb-2, no barriers).
    // Trampoline: `svc #0; udf` (0xe7f001f0, the Linux ARM breakpoint).
    // Parasite: entered with r4 = &ParasiteArgs, r8 = the stack pointer of
    // the signal frame for its final rt_sigreturn (as on x86_64: reached
    // only when the tracer died), and sp inside the argument page; r4-r8
    // are preserved by the kernel across svc; r7 holds the syscall number
    // (EABI). Constants too wide for an immediate come from
    // the literal pool at the end (pc-relative: still position independent).
    core::arch::global_asm!(
        ".pushsection .rodata.torpor_blobs,\"a\"",
        ".arm",
        ".balign 4",
        ".globl torpor_trampoline_start",
        ".globl torpor_trampoline_end",
        "torpor_trampoline_start:",
        "svc #0",
        ".word 0xe7f001f0",
        "torpor_trampoline_end:",
        ".globl torpor_parasite_start",
        ".globl torpor_parasite_end",
        "torpor_parasite_start:",
        // for sig in 1..=64 (skipping SIGKILL 9, SIGSTOP 19)
        "mov r5, #1",
        "2:",
        "cmp r5, #9",
        "beq 3f",
        "cmp r5, #19",
        "beq 3f",
        "mov r0, r5",
        "mov r1, #0",
        "sub r2, r5, #1",
        "mov r3, #{sa_size}",
        "mul r6, r2, r3",
        "add r2, r4, r6",
        "mov r3, #8",
        "mov r7, #174",
        "svc #0",
        "ldr r6, 10f",
        "add r6, r6, r4",
        "sub r1, r5, #1",
        "str r0, [r6, r1, lsl #2]",
        "3:",
        "add r5, r5, #1",
        "cmp r5, #65",
        "bne 2b",
        // sigaltstack(NULL, &altstack)
        "mov r0, #0",
        "ldr r1, 11f",
        "add r1, r1, r4",
        "mov r7, #186",
        "svc #0",
        "ldr r6, 15f",
        "add r6, r6, r4",
        "str r0, [r6, #{s_altstack} * 4]",
        // getitimer(which, &itimers[which])
        "mov r5, #0",
        "4:",
        "mov r0, r5",
        "mov r3, #{it_size}",
        "mul r2, r5, r3",
        "ldr r1, 12f",
        "add r1, r1, r2",
        "add r1, r1, r4",
        "mov r7, #105",
        "svc #0",
        "ldr r6, 15f",
        "add r6, r6, r4",
        "add r6, r6, #{s_itimer} * 4",
        "str r0, [r6, r5, lsl #2]",
        "add r5, r5, #1",
        "cmp r5, #3",
        "bne 4b",
        // prctl(PR_GET_TID_ADDRESS, &tid_address)
        "mov r0, #40",
        "ldr r1, 13f",
        "add r1, r1, r4",
        "mov r2, #0",
        "mov r3, #0",
        "mov r7, #172",
        "svc #0",
        "ldr r6, 15f",
        "add r6, r6, r4",
        "str r0, [r6, #{s_tid} * 4]",
        // get_robust_list(0, &robust_head, &robust_len)
        "mov r0, #0",
        "ldr r1, 14f",
        "add r1, r1, r4",
        "add r2, r1, #4",
        "ldr r7, 16f",
        "svc #0",
        "ldr r6, 15f",
        "add r6, r6, r4",
        "str r0, [r6, #{s_robust} * 4]",
        // brk(0)
        "mov r0, #0",
        "mov r7, #45",
        "svc #0",
        "ldr r6, 15f",
        "add r6, r6, r4",
        "str r0, [r6, #{s_brk} * 4]",
        // getpid: the tracer takes the task back at this syscall's exit.
        "mov r7, #20",
        "svc #0",
        ".globl torpor_parasite_done",
        "torpor_parasite_done:",
        // Reached only without a tracer: back to the task's own context.
        "mov sp, r8",
        "mov r7, #173",
        "svc #0",
        ".word 0xe7f001f0",
        "10: .word {sig_results}",
        "11: .word {altstack}",
        "12: .word {itimers}",
        "13: .word {tid_address}",
        "14: .word {robust_head}",
        "15: .word {results}",
        "16: .word 339",
        "torpor_parasite_end:",
        ".popsection",
        sa_size = const super::SIGACTION_SIZE,
        it_size = const super::ITIMER_SIZE,
        sig_results = const super::OFF_SIG_RESULTS,
        altstack = const super::OFF_ALTSTACK,
        itimers = const super::OFF_ITIMERS,
        tid_address = const super::OFF_TID_ADDRESS,
        robust_head = const super::OFF_ROBUST_HEAD,
        results = const super::OFF_RESULTS,
        s_altstack = const super::slot::SIGALTSTACK,
        s_itimer = const super::slot::ITIMER_REAL,
        s_tid = const super::slot::TID_ADDRESS,
        s_robust = const super::slot::ROBUST_LIST,
        s_brk = const super::slot::BRK,
    );
    // robust_len must follow robust_head directly for `add r2, r1, #4`.
    const _: () = assert!(super::OFF_ROBUST_LEN == super::OFF_ROBUST_HEAD + 4);
}

/// The aarch64 blobs. Unsafe code: `global_asm!` counts as unsafe, since
/// the assembler output is not checked by Rust; here it only emits bytes
/// into `.rodata` that torpor never runs.
#[cfg(target_arch = "aarch64")]
#[allow(unsafe_code)]
mod blobs {
    // A64. Trampoline: `svc #0; brk #0`.
    // Parasite: entered with x19 = &ParasiteArgs, x24 = the stack pointer
    // of the signal frame for its final rt_sigreturn (as on x86_64: reached
    // only when the tracer died), and sp inside the argument page; the
    // kernel preserves every register but x0 across svc; x8 holds the
    // syscall number. Offsets are immediates (below 4096, so they fit
    // `add` and scaled `str` forms); no literal pool, no relocations.
    core::arch::global_asm!(
        ".pushsection .rodata.torpor_blobs,\"a\"",
        ".balign 4",
        ".globl torpor_trampoline_start",
        ".globl torpor_trampoline_end",
        "torpor_trampoline_start:",
        "svc #0",
        "brk #0",
        "torpor_trampoline_end:",
        ".globl torpor_parasite_start",
        ".globl torpor_parasite_end",
        "torpor_parasite_start:",
        // for sig in 1..=64 (skipping SIGKILL 9, SIGSTOP 19):
        //   sig_results[sig-1] = rt_sigaction(sig, NULL, &sigactions[sig-1], 8)
        "mov x20, #1",
        "add x21, x19, #{sig_results}",
        "mov x22, #{sa_size}",
        "2:",
        "cmp x20, #9",
        "b.eq 3f",
        "cmp x20, #19",
        "b.eq 3f",
        "sub x23, x20, #1",
        "mov x0, x20",
        "mov x1, #0",
        "madd x2, x23, x22, x19",
        "mov x3, #8",
        "mov x8, #134",
        "svc #0",
        "str x0, [x21, x23, lsl #3]",
        "3:",
        "add x20, x20, #1",
        "cmp x20, #65",
        "b.ne 2b",
        // sigaltstack(NULL, &altstack)
        "mov x0, #0",
        "add x1, x19, #{altstack}",
        "mov x8, #132",
        "svc #0",
        "str x0, [x19, #{results} + 8 * {s_altstack}]",
        // getitimer(which, &itimers[which]) for REAL, VIRTUAL, PROF
        "mov x20, #0",
        "add x21, x19, #{itimers}",
        "add x22, x19, #{results} + 8 * {s_itimer}",
        "mov x23, #{it_size}",
        "4:",
        "mov x0, x20",
        "madd x1, x20, x23, x21",
        "mov x8, #102",
        "svc #0",
        "str x0, [x22, x20, lsl #3]",
        "add x20, x20, #1",
        "cmp x20, #3",
        "b.ne 4b",
        // prctl(PR_GET_TID_ADDRESS, &tid_address, 0, 0, 0)
        "mov x0, #40",
        "add x1, x19, #{tid_address}",
        "mov x2, #0",
        "mov x3, #0",
        "mov x4, #0",
        "mov x8, #167",
        "svc #0",
        "str x0, [x19, #{results} + 8 * {s_tid}]",
        // get_robust_list(0, &robust_head, &robust_len)
        "mov x0, #0",
        "add x1, x19, #{robust_head}",
        "add x2, x19, #{robust_len}",
        "mov x8, #100",
        "svc #0",
        "str x0, [x19, #{results} + 8 * {s_robust}]",
        // brk(0): the current program break
        "mov x0, #0",
        "mov x8, #214",
        "svc #0",
        "str x0, [x19, #{results} + 8 * {s_brk}]",
        // getpid: the tracer takes the task back at this syscall's exit.
        "mov x8, #172",
        "svc #0",
        ".globl torpor_parasite_done",
        "torpor_parasite_done:",
        // Reached only without a tracer: back to the task's own context.
        "mov sp, x24",
        "mov x8, #139",
        "svc #0",
        "brk #0",
        "torpor_parasite_end:",
        ".popsection",
        sa_size = const super::SIGACTION_SIZE,
        it_size = const super::ITIMER_SIZE,
        sig_results = const super::OFF_SIG_RESULTS,
        altstack = const super::OFF_ALTSTACK,
        itimers = const super::OFF_ITIMERS,
        tid_address = const super::OFF_TID_ADDRESS,
        robust_head = const super::OFF_ROBUST_HEAD,
        robust_len = const super::OFF_ROBUST_LEN,
        results = const super::OFF_RESULTS,
        s_altstack = const super::slot::SIGALTSTACK,
        s_itimer = const super::slot::ITIMER_REAL,
        s_tid = const super::slot::TID_ADDRESS,
        s_robust = const super::slot::ROBUST_LIST,
        s_brk = const super::slot::BRK,
    );
    // Every offset is an `add` immediate (12 bits) and a scaled `str` offset
    // (a multiple of 8).
    const _: () = {
        assert!(super::OFF_RESULTS + 8 * super::slot::COUNT < 4096);
        assert!(super::OFF_SIG_RESULTS % 8 == 0 && super::OFF_RESULTS % 8 == 0);
    };
}

/// The blobs as byte slices. Unsafe code: the slices are made from the
/// start and end symbols that the assembly above defines, which Rust sees
/// only as extern statics.
#[cfg(any(target_arch = "x86_64", target_arch = "arm", target_arch = "aarch64"))]
#[allow(unsafe_code)]
mod export {
    unsafe extern "C" {
        #[cfg(test)]
        static torpor_trampoline_start: u8;
        #[cfg(test)]
        static torpor_trampoline_end: u8;
        static torpor_parasite_start: u8;
        static torpor_parasite_done: u8;
        static torpor_parasite_end: u8;
    }

    /// The bytes from `start` up to `end`.
    ///
    /// # Safety
    ///
    /// `start` and `end` must be the start and end symbols of one blob
    /// emitted above, `start` first: bytes that are never written and live
    /// as long as the program.
    unsafe fn span(start: *const u8, end: *const u8) -> &'static [u8] {
        let len = (end as usize) - (start as usize);
        // SAFETY: the caller gives the two ends of one immutable blob.
        unsafe { core::slice::from_raw_parts(start, len) }
    }

    /// `syscall; trap` for this architecture (the agent patches its own
    /// `arch::SYSCALL_TRAP`; this blob is checked against it in tests).
    #[cfg(test)]
    pub fn trampoline() -> &'static [u8] {
        // SAFETY: the trampoline's own start and end symbols, in .rodata.
        unsafe {
            span(
                &raw const torpor_trampoline_start,
                &raw const torpor_trampoline_end,
            )
        }
    }

    /// Offset in the parasite of the instruction after its final getpid:
    /// where a tracer stepping it finds it at that syscall's exit.
    pub fn parasite_done() -> usize {
        (&raw const torpor_parasite_done as usize) - (&raw const torpor_parasite_start as usize)
    }

    /// The collecting parasite for this architecture.
    pub fn parasite() -> &'static [u8] {
        // SAFETY: the parasite's own start and end symbols, in .rodata.
        unsafe {
            span(
                &raw const torpor_parasite_start,
                &raw const torpor_parasite_end,
            )
        }
    }
}

#[cfg(all(
    test,
    any(target_arch = "x86_64", target_arch = "arm", target_arch = "aarch64")
))]
pub use export::trampoline;
#[cfg(any(target_arch = "x86_64", target_arch = "arm", target_arch = "aarch64"))]
pub use export::{parasite, parasite_done};

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets drawn on [`ParasiteArgs`], for the word size under test:
    /// the 64-bit column on x86_64 and aarch64, the arm column on arm.
    #[test]
    fn layout_matches_the_drawing() {
        let got = [
            OFF_SIGACTIONS,
            OFF_SIG_RESULTS,
            OFF_ALTSTACK,
            OFF_ITIMERS,
            OFF_TID_ADDRESS,
            OFF_ROBUST_HEAD,
            OFF_ROBUST_LEN,
            OFF_RESULTS,
            size_of::<ParasiteArgs>(),
        ];
        let want = if WORD == 8 {
            [0, 2048, 2560, 2584, 2680, 2688, 2696, 2704, 2768]
        } else {
            [0, 1280, 1536, 1548, 1596, 1600, 1604, 1608, 1640]
        };
        assert_eq!(got, want);
        assert_eq!(SIGACTION_SIZE, if WORD == 8 { 32 } else { 20 });
    }

    /// The tracer takes the parasite back after a syscall instruction, and
    /// without a tracer the parasite goes on into rt_sigreturn.
    #[test]
    fn the_parasite_is_done_after_a_syscall_then_returns() {
        let p = parasite();
        let d = parasite_done();
        assert!(d > 16 && d < p.len());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(p[d - 7..d], [0xb8, 39, 0, 0, 0, 0x0f, 0x05], "getpid");
            // mov rsp, r14; mov eax, 15; syscall
            assert_eq!(p[d..d + 3], [0x4c, 0x89, 0xf4]);
            assert_eq!(p[d + 3..d + 10], [0xb8, 15, 0, 0, 0, 0x0f, 0x05]);
        }
        #[cfg(target_arch = "arm")]
        {
            let w = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            assert_eq!([w(d - 8), w(d - 4)], [0xe3a0_7014, 0xef00_0000], "getpid");
            assert_eq!(
                [w(d), w(d + 4), w(d + 8)],
                [0xe1a0_d008, 0xe3a0_70ad, 0xef00_0000],
                "mov sp, r8; mov r7, #173; svc #0"
            );
        }
        #[cfg(target_arch = "aarch64")]
        {
            let w = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
            assert_eq!([w(d - 8), w(d - 4)], [0xd280_1588, 0xd400_0001], "getpid");
            assert_eq!(
                [w(d), w(d + 4), w(d + 8)],
                [0x9100_031f, 0xd280_1168, 0xd400_0001],
                "mov sp, x24; mov x8, #139; svc #0"
            );
        }
    }

    #[test]
    fn blobs_end_in_a_trap() {
        let t = trampoline();
        let p = parasite();
        assert!(!t.is_empty() && p.len() > 16);
        assert!(p.len() <= PARASITE_ARGS_OFFSET);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(t, &[0x0f, 0x05, 0xcc]);
            assert_eq!(p.last(), Some(&0xcc));
        }
        #[cfg(target_arch = "arm")]
        {
            assert_eq!(t, &[0x00, 0x00, 0x00, 0xef, 0xf0, 0x01, 0xf0, 0xe7]);
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(t, &[0x01, 0x00, 0x00, 0xd4, 0x00, 0x00, 0x20, 0xd4]);
            assert_eq!(p.len() % 4, 0, "whole A64 instructions");
            assert_eq!(p[p.len() - 4..], [0x00, 0x00, 0x20, 0xd4], "ends in brk #0");
        }
    }
}

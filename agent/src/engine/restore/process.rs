//! The address space of one task, second half, once its pages are in:
//! protections of the shared objects, `madvise` flags and process
//! attributes (`attrs`), the mm fields (`PR_SET_MM_MAP`), signal
//! dispositions and interval timers, the threads (`clone3` with their
//! tids), POSIX timers, signals queued for the process and seccomp
//! filters; then each thread (`thread`), the attributes its credentials
//! reset, and the trampoline goes.

use torpor_parasite::KSigaction;

use crate::arch::{self, nr, Bits};
use crate::engine::files::LateKind;
use crate::engine::ptrace::{self, Stop};
use crate::engine::state::{Backing, OpenFile};
use crate::engine::Cause;

use super::memory::Rebuild;
use super::seccomp::install_seccomp;
use super::tasks::{CloneArgs, Created};
use super::thread::restore_thread;
use super::timers::{restore_timers, ITIMER_REAL};
use super::trampoline::{self, with_remote, Scratch};

/// The kernel's `struct prctl_mm_map`: `auxv` is a native pointer (`__u64 *`),
/// so on 32-bit ARM the fields after it move up by four bytes; padding makes
/// it 104 bytes on both architectures.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::NoUninit)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: usize,
    auxv_size: u32,
    exe_fd: u32,
    _pad: [u8; 8 - core::mem::size_of::<usize>()],
}
const _: () = assert!(core::mem::size_of::<PrctlMmMap>() == 104);

/// `struct prctl_mm_map` as the running kernel reads it. The kernel copies
/// it in its own layout, also from a 32-bit task under a 64-bit kernel
/// (compat): there `auxv` takes eight bytes, and the 32-bit layout would put
/// `auxv_size` in the pointer's upper half. `kernel_word` is 4 or 8.
fn mm_map_bytes(map: &PrctlMmMap, kernel_word: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(104);
    for v in [
        map.start_code,
        map.end_code,
        map.start_data,
        map.end_data,
        map.start_brk,
        map.brk,
        map.start_stack,
        map.arg_start,
        map.arg_end,
        map.env_start,
        map.env_end,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    // usize is at most 64 bits wide on every target.
    let auxv = u64::try_from(map.auxv).unwrap_or(u64::MAX);
    if kernel_word == 8 {
        out.extend_from_slice(&auxv.to_ne_bytes());
    } else {
        // A 32-bit kernel, a 32-bit task: its addresses fit 32 bits.
        out.extend_from_slice(&u32::try_from(auxv).unwrap_or(u32::MAX).to_ne_bytes());
    }
    out.extend_from_slice(&map.auxv_size.to_ne_bytes());
    out.extend_from_slice(&map.exe_fd.to_ne_bytes());
    out.resize(104, 0);
    out
}

/// The running kernel's word size in bytes, from `uname`'s machine. A
/// 64-bit ARM kernel says `aarch64` to 32-bit tasks too, or `armv8l` under
/// the PER_LINUX32 personality (`linux32`); a 32-bit ARM kernel says
/// `armv6l` or `armv7l`, also on an ARMv8 CPU.
fn kernel_word_for(machine: &str) -> usize {
    if cfg!(target_pointer_width = "64") || machine == "aarch64" || machine == "armv8l" {
        8
    } else {
        4
    }
}

fn kernel_word() -> Result<usize, Cause> {
    let uts = nix::sys::utsname::uname().map_err(|e| Cause::Io(e.into()))?;
    Ok(kernel_word_for(&uts.machine().to_string_lossy()))
}

const PR_SET_MM: u64 = 35;

/// `struct open_how` of openat2.
#[derive(Debug, Clone, Copy, bytemuck::NoUninit)]
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
/// Flags a reopening of a `/proc` file leaves out: it creates and
/// truncates nothing.
const PROC_OPEN_DROPPED: u32 = (libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32;
const PR_SET_MM_MAP: u64 = 14;

/// Step two: protections, mm fields, signals, threads, registers.
pub(super) fn finish_process(
    rb: &Rebuild<'_>,
    files: &[OpenFile],
    created: &mut Created,
) -> Result<usize, Cause> {
    let p = rb.p;
    let pid = p.task.pid;
    let mem = &rb.mem;
    let tramp = rb.tramp;
    with_remote(mem, pid, tramp, |r| {
        for v in &p.vmas {
            if matches!(v.backing, Backing::Shm { .. })
                && v.prot != libc::PROT_READ | libc::PROT_WRITE
            {
                r.mprotect("mprotect", v.start, v.end - v.start, v.prot)?;
            }
        }
        super::attrs::set_process_attrs(r, mem, tramp, p)?;
        let exe_fd = rb.exe_fd;
        // Its mappings are final; the executable is still open.
        super::aio::restore_rings(r, mem, tramp, p, exe_fd)?;
        super::aio::register_membarrier(r, p)?;
        let mut s = Scratch::at(mem, tramp);
        let auxv = auxv_bytes(&p.mm.auxv)?;
        let auxv_at = s.bytes(&auxv)?;
        let m = &p.mm;
        let map = PrctlMmMap {
            start_code: m.start_code,
            end_code: m.end_code,
            start_data: m.start_data,
            end_data: m.end_data,
            start_brk: m.start_brk,
            brk: m.brk,
            start_stack: m.start_stack,
            arg_start: m.arg_start,
            arg_end: m.arg_end,
            env_start: m.env_start,
            env_end: m.env_end,
            auxv: arch::native(auxv_at),
            auxv_size: u32::try_from(auxv.len()).map_err(|_| {
                Cause::Refused(format!("auxv of process {pid}: {} bytes", auxv.len()))
            })?,
            exe_fd: u32::try_from(exe_fd)
                .map_err(|_| Cause::Refused(format!("exe fd {exe_fd} in process {pid}")))?,
            ..Default::default()
        };
        let map_at = s.bytes(&mm_map_bytes(&map, kernel_word()?))?;
        let res = r.syscall(
            "prctl(PR_SET_MM_MAP)",
            nr::PRCTL,
            [PR_SET_MM, PR_SET_MM_MAP, map_at, 104, 0, 0],
        );
        res?;
        // torpor's descriptors above the task's own (the executable's, the
        // mapped files', the report pipe if the task was stopped right after
        // reporting).
        r.syscall(
            "close_range",
            nr::CLOSE_RANGE,
            [
                u64::from(rb.high_fd.bits()),
                u64::from(u32::MAX),
                0,
                0,
                0,
                0,
            ],
        )?;
        // The POSIX locks, now that nothing closes a descriptor in the task
        // any more: a close of any descriptor of a file ends them.
        for (l, fl) in crate::engine::files::posix_locks(p).map_err(Cause::Refused)? {
            let at = Scratch::at(mem, tramp).value(&fl)?;
            let fd = u64::from(l.fd.bits());
            let rc = r.syscall_raw(nr::FCNTL, [fd, nr::F_SETLK64, at, 0, 0, 0])?;
            if rc < 0 {
                let errno = i32::try_from(-rc).unwrap_or(libc::EINVAL);
                let e = std::io::Error::from_raw_os_error(errno);
                return Err(Cause::Refused(crate::engine::files::lock_failed(
                    l, "POSIX", &e,
                )));
            }
        }
        // Every signal's: one the image does not name gets the default,
        // not the disposition inherited from torpor. A disposition the task
        // already has, inherited, is not set again: most are the default
        // in both, and each setting is a remote syscall.
        for sig in 1..=64u32 {
            if sig == 9 || sig == 19 {
                continue;
            }
            let sa = p
                .task
                .sigactions
                .iter()
                .find(|s| s.signo == sig)
                .copied()
                .unwrap_or_default();
            let mut k = KSigaction {
                handler: arch::native(sa.handler),
                flags: arch::native(sa.flags),
                restorer: arch::native(sa.restorer),
                ..Default::default()
            };
            for (j, w) in k.mask.iter_mut().enumerate() {
                *w = arch::native(sa.mask >> (j * usize::BITS as usize));
            }
            if u8::try_from(sig)
                .ok()
                .and_then(super::tasks::inherited_sigaction)
                == Some(k)
            {
                continue;
            }
            let at = Scratch::at(mem, tramp).value(&k)?;
            r.syscall(
                "rt_sigaction",
                nr::RT_SIGACTION,
                [u64::from(sig), at, 0, 8, 0, 0],
            )?;
        }
        let t = &p.task.itimers;
        for (which, t) in [t.real, t.virt, t.prof].iter().enumerate() {
            let mut value_ns = t.value_ns;
            if value_ns == 0 {
                if which != ITIMER_REAL || t.interval_ns == 0 {
                    continue;
                }
                // An expired periodic ITIMER_REAL reads as 0 left until its
                // SIGALRM (pending, restored with the other signals) is
                // dequeued, which re-arms it. Expiring it at once recreates
                // exactly that; setting 0 would disarm it for good.
                value_ns = 1000;
            }
            let (interval_sec, interval_usec) = timeval(t.interval_ns)?;
            let (value_sec, value_usec) = timeval(value_ns)?;
            let v = torpor_parasite::KItimerval {
                interval_sec,
                interval_usec,
                value_sec,
                value_usec,
            };
            let at = Scratch::at(mem, tramp).value(&v)?;
            r.syscall("setitimer", nr::SETITIMER, [which as u64, at, 0, 0, 0, 0])?;
        }
        // Threads, created from the main thread with their tids.
        ptrace::set_options(pid, ptrace::PTRACE_O_TRACECLONE)?;
        for t in p.threads.iter().skip(1) {
            let mut s = Scratch::at(mem, tramp);
            let tid_at = s.value(&t.tid)?;
            let args = CloneArgs {
                flags: (libc::CLONE_VM
                    | libc::CLONE_FS
                    | libc::CLONE_FILES
                    | libc::CLONE_SIGHAND
                    | libc::CLONE_THREAD
                    | libc::CLONE_SYSVSEM) as u64,
                set_tid: tid_at,
                set_tid_size: 1,
                ..Default::default()
            };
            let at = s.value(&args)?;
            let got = r.syscall(
                "clone3 (thread)",
                nr::CLONE3,
                [at, core::mem::size_of::<CloneArgs>() as u64, 0, 0, 0, 0],
            )?;
            if got != u64::from(t.tid.bits()) {
                return Err(Cause::Refused(format!(
                    "thread {} came back as {got}",
                    t.tid
                )));
            }
            created.traced.push(t.tid);
            match ptrace::wait(t.tid)? {
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(ptrace::PtraceError::TaskDied(t.tid).into())
                }
                _ => {}
            }
        }
        // Its pidfds and files of /proc, now that every process of the tree
        // and its own threads exist: each opened by the process itself and
        // put in its placeholder's place.
        for l in crate::engine::files::late_files(p, files) {
            let opened = match &l.kind {
                LateKind::Pidfd { pid } => r.syscall(
                    "pidfd_open",
                    nr::PIDFD_OPEN,
                    [
                        u64::from(pid.unsigned_abs()),
                        u64::from(l.flags),
                        0,
                        0,
                        0,
                        0,
                    ],
                )?,
                LateKind::Proc { pid, path, offset } => {
                    let mut s = Scratch::at(mem, tramp);
                    let mut name = format!("/proc/{pid}").into_bytes();
                    if !path.is_empty() {
                        name.push(b'/');
                        name.extend_from_slice(path);
                    }
                    name.push(0);
                    let name_at = s.bytes(&name)?;
                    let how = OpenHow {
                        flags: u64::from(l.flags & !PROC_OPEN_DROPPED),
                        mode: 0,
                        resolve: RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
                    };
                    let how_at = s.value(&how)?;
                    // AT_FDCWD (-100) as the register holds it.
                    let at_fdcwd = u64::from_ne_bytes(i64::from(libc::AT_FDCWD).to_ne_bytes());
                    let fd = r.syscall(
                        "openat2",
                        nr::OPENAT2,
                        [at_fdcwd, name_at, how_at, 24, 0, 0],
                    )?;
                    if *offset > 0 {
                        // lseek's offset is a word: 32 bits on ARM.
                        if *offset > i32::MAX as u64 {
                            return Err(Cause::Refused(format!(
                                "fd {} of process {pid}: offset {offset} in /proc/{pid}",
                                l.fd
                            )));
                        }
                        r.syscall("lseek", nr::LSEEK, [fd, *offset, 0, 0, 0, 0])?;
                    }
                    fd
                }
            };
            let cloexec = if l.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            r.syscall(
                "dup3",
                nr::DUP3,
                [opened, u64::from(l.fd.unsigned_abs()), cloexec, 0, 0, 0],
            )?;
            r.syscall("close", nr::CLOSE, [opened, 0, 0, 0, 0, 0])?;
        }
        // After the threads: a timer may notify one of them.
        restore_timers(r, mem, tramp, p)?;
        for info in &p.task.pending {
            let sig = super::thread::siginfo_signo(&info.raw)?;
            let at = Scratch::at(mem, tramp).bytes(&info.raw)?;
            r.syscall(
                "rt_sigqueueinfo",
                nr::RT_SIGQUEUEINFO,
                [u64::from(pid.bits()), u64::from(sig.bits()), at, 0, 0, 0],
            )?;
        }
        install_seccomp(r, mem, tramp, p)?;
        Ok(())
    })?;
    for t in p.threads.iter() {
        restore_thread(rb, t)?;
    }
    // After every thread's credentials, which reset the dumpable flag.
    with_remote(mem, pid, tramp, |r| {
        super::attrs::set_final_attrs(r, mem, tramp, p)
    })?;
    // The trampoline goes last.
    trampoline::remove(pid, mem, tramp)?;
    Ok(p.threads.len())
}

/// Nanoseconds as a native `timeval` (seconds, microseconds).
fn timeval(ns: u64) -> Result<(isize, isize), Cause> {
    let fit = |v: u64| {
        isize::try_from(v).map_err(|_| {
            Cause::Refused(format!(
                "a timer of {ns}ns does not fit this architecture's timeval"
            ))
        })
    };
    Ok((fit(ns / 1_000_000_000)?, fit(ns % 1_000_000_000 / 1000)?))
}

/// Image auxv words as the native words PR_SET_MM_MAP takes.
fn auxv_bytes(words: &[u64]) -> Result<Vec<u8>, Cause> {
    let w = core::mem::size_of::<usize>();
    let mut out = Vec::with_capacity(words.len() * w);
    for &v in words {
        let n = usize::try_from(v).map_err(|_| {
            Cause::Refused(format!("auxv word {v:#x} does not fit this architecture"))
        })?;
        out.extend_from_slice(&n.to_ne_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PrctlMmMap {
        PrctlMmMap {
            start_code: 0x1_0000,
            end_code: 0x2_0000,
            start_data: 0x3_0000,
            end_data: 0x4_0000,
            start_brk: 0x5_0000,
            brk: 0x6_0000,
            start_stack: 0x7_0000,
            arg_start: 0x8_0000,
            arg_end: 0x9_0000,
            env_start: 0xa_0000,
            env_end: 0xb_0000,
            auxv: 0xbeef_0000,
            auxv_size: 0x130,
            exe_fd: 9,
            ..Default::default()
        }
    }

    fn word32(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn a_64_bit_kernel_reads_an_eight_byte_auxv_pointer() {
        let b = mm_map_bytes(&sample(), 8);
        assert_eq!(b.len(), 104);
        assert_eq!(
            u64::from_ne_bytes(b[88..96].try_into().expect("8 bytes")),
            0xbeef_0000
        );
        assert_eq!(word32(&b, 96), 0x130, "auxv_size after the 8-byte pointer");
        assert_eq!(word32(&b, 100), 9, "exe_fd");
        assert_eq!(
            u64::from_ne_bytes(b[80..88].try_into().expect("8 bytes")),
            0xb_0000,
            "env_end"
        );
    }

    #[test]
    fn a_32_bit_kernel_reads_a_four_byte_auxv_pointer() {
        let b = mm_map_bytes(&sample(), 4);
        assert_eq!(b.len(), 104);
        assert_eq!(word32(&b, 88), 0xbeef_0000);
        assert_eq!(word32(&b, 92), 0x130, "auxv_size right after the pointer");
        assert_eq!(word32(&b, 96), 9, "exe_fd");
        assert_eq!(&b[100..], &[0, 0, 0, 0], "padding");
    }

    #[test]
    fn the_native_layout_is_the_kernel_layout_of_a_native_torpor() {
        // A torpor as wide as its kernel writes the struct as the compiler
        // lays it out.
        let word = core::mem::size_of::<usize>();
        assert_eq!(
            mm_map_bytes(&sample(), word),
            bytemuck::bytes_of(&sample()).to_vec()
        );
    }

    #[test]
    fn the_kernel_word_comes_from_the_machine_name() {
        assert_eq!(kernel_word_for("aarch64"), 8);
        assert_eq!(kernel_word_for("armv8l"), 8);
        let narrow = if cfg!(target_pointer_width = "64") {
            8
        } else {
            4
        };
        assert_eq!(kernel_word_for("armv6l"), narrow);
        assert_eq!(kernel_word_for("armv7l"), narrow);
    }
}

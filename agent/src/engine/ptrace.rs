//! ptrace and remote memory, wrapped so that every failure names the task
//! and the request, and a vanished task is its own error (`TaskDied`).
//!
//! Unsafe code: this is where ptrace requests, waitpid and process_vm_readv
//! reach libc, with pointers to the buffers each request fills.
#![allow(unsafe_code)]

use crate::arch::Bits;
use bytemuck::{AnyBitPattern, NoUninit};
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

use crate::arch::RegsError;

#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    #[error("task {0} is gone")]
    TaskDied(i32),
    #[error("{op} on task {tid}: {err}")]
    Os {
        op: &'static str,
        tid: i32,
        err: io::Error,
    },
    #[error("task {tid} stopped unexpectedly: {what}")]
    Unexpected { tid: i32, what: String },
}

impl From<RegsError> for PtraceError {
    fn from(e: RegsError) -> Self {
        match e {
            RegsError::TaskDied(t) => PtraceError::TaskDied(t),
            RegsError::Os { op, tid, err } => PtraceError::Os { op, tid, err },
            other @ RegsError::BadSize { .. } => PtraceError::Unexpected {
                tid: 0,
                what: other.to_string(),
            },
            other @ (RegsError::Foreign { tid } | RegsError::Wide { tid }) => {
                PtraceError::Unexpected {
                    tid,
                    what: other.to_string(),
                }
            }
        }
    }
}

fn os(op: &'static str, tid: i32) -> PtraceError {
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        PtraceError::TaskDied(tid)
    } else {
        PtraceError::Os { op, tid, err }
    }
}

/// An address in a traced task, typed by what lives there.
#[derive(Debug)]
pub struct RemotePtr<T> {
    addr: u64,
    _t: PhantomData<*const T>,
}

impl<T> Clone for RemotePtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RemotePtr<T> {}

impl<T> RemotePtr<T> {
    pub fn new(addr: u64) -> Self {
        Self {
            addr,
            _t: PhantomData,
        }
    }
    pub fn addr(self) -> u64 {
        self.addr
    }
}

/// One ptrace request; a negative return sets errno.
///
/// # Safety
///
/// `addr` and `data` must be what `req` expects: plain integers where it
/// takes integers, and where it reads or writes through either of them, the
/// address of memory of ours that is live, valid for that access and at
/// least as large as the request uses, for the duration of the call.
#[allow(clippy::cast_possible_wrap)] // the request is c_uint in glibc, c_int in musl
unsafe fn ptrace_raw(req: u32, tid: i32, addr: usize, data: usize) -> libc::c_long {
    // SAFETY: the caller upholds the contract above.
    unsafe { libc::ptrace(req as _, tid, addr, data) }
}

const PTRACE_SEIZE: u32 = 0x4206;
const PTRACE_INTERRUPT: u32 = 0x4207;
const PTRACE_PEEKSIGINFO: u32 = 0x4209;
const PTRACE_GETSIGMASK: u32 = 0x420a;
const PTRACE_SETSIGMASK: u32 = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
const PTRACE_CONT: u32 = 7;
const PTRACE_SYSCALL: u32 = 24;
const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;
const PTRACE_DETACH: u32 = 17;
const PTRACE_SETOPTIONS: u32 = 0x4200;
pub const PTRACE_O_TRACECLONE: u32 = 8;
/// Syscall stops report `SIGTRAP | 0x80` ([`SYSCALL_STOP`]), told apart
/// from a real SIGTRAP.
pub const PTRACE_O_TRACESYSGOOD: u32 = 1;
/// The stop signal of a syscall-entry or syscall-exit stop.
pub const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;
/// The tracee's seccomp filters do not apply while it is traced with this.
pub const PTRACE_O_SUSPEND_SECCOMP: u32 = 1 << 21;
const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: u32 = 0x420d;
pub const PTRACE_EVENT_CLONE: i32 = 3;
pub const PTRACE_EVENT_STOP: i32 = 128;
const PEEKSIGINFO_SHARED: u32 = 1;

pub fn seize(tid: i32, options: u32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_SEIZE takes integers only.
    if unsafe { ptrace_raw(PTRACE_SEIZE, tid, 0, options as usize) } < 0 {
        return Err(os("PTRACE_SEIZE", tid));
    }
    Ok(())
}

/// Seccomp filter `index` of `tid` (0: the oldest): its flags and its
/// program as `struct sock_filter` bytes; `None` past the newest.
pub fn seccomp_filter(tid: i32, index: u64) -> Result<Option<(u64, Vec<u8>)>, PtraceError> {
    // Past usize::MAX there is no filter either: the kernel answers ENOENT.
    let idx = usize::try_from(index).unwrap_or(usize::MAX);
    // SAFETY: with a null buffer PTRACE_SECCOMP_GET_FILTER only counts.
    let n = unsafe { ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, idx, 0) };
    if n < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(os("PTRACE_SECCOMP_GET_FILTER", tid));
    }
    // struct sock_filter: u16 code, u8 jt, u8 jf, u32 k.
    // n >= 0 here, at most BPF_MAXINSNS (4096) instructions.
    let mut program = vec![0u8; usize::try_from(n).unwrap_or(0) * 8];
    // SAFETY: `program` holds the `n` eight-byte instructions the kernel
    // writes; n is what it reported a moment ago and a filter never grows.
    if unsafe {
        ptrace_raw(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            idx,
            program.as_mut_ptr() as usize,
        )
    } != n
    {
        return Err(os("PTRACE_SECCOMP_GET_FILTER", tid));
    }
    // struct seccomp_metadata { u64 filter_off; u64 flags; }
    let mut meta = [index, 0u64];
    // SAFETY: `meta` is the 16 bytes given as the size, read and written.
    if unsafe {
        ptrace_raw(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            16,
            meta.as_mut_ptr() as usize,
        )
    } < 0
    {
        return Err(os("PTRACE_SECCOMP_GET_METADATA", tid));
    }
    Ok(Some((meta[1], program)))
}

pub fn set_options(tid: i32, options: u32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_SETOPTIONS takes integers only.
    if unsafe { ptrace_raw(PTRACE_SETOPTIONS, tid, 0, options as usize) } < 0 {
        return Err(os("PTRACE_SETOPTIONS", tid));
    }
    Ok(())
}

pub fn interrupt(tid: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_INTERRUPT takes no pointers.
    if unsafe { ptrace_raw(PTRACE_INTERRUPT, tid, 0, 0) } < 0 {
        return Err(os("PTRACE_INTERRUPT", tid));
    }
    Ok(())
}

pub fn cont(tid: i32, sig: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_CONT takes a signal number, no pointers.
    if unsafe { ptrace_raw(PTRACE_CONT, tid, 0, sig.bits() as usize) } < 0 {
        return Err(os("PTRACE_CONT", tid));
    }
    Ok(())
}

/// Resumes a stopped task until its next syscall entry or exit (or any
/// other stop).
pub fn syscall(tid: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_SYSCALL with a zero signal takes no pointers.
    if unsafe { ptrace_raw(PTRACE_SYSCALL, tid, 0, 0) } < 0 {
        return Err(os("PTRACE_SYSCALL", tid));
    }
    Ok(())
}

/// Where a task in a syscall stop is, from `PTRACE_GET_SYSCALL_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallStop {
    /// Entering syscall `nr`; `pc` is the address after its instruction.
    Entry { nr: u64, pc: u64 },
    /// Leaving a syscall with `rval`; `pc` is where user code resumes.
    Exit { rval: i64, pc: u64 },
    /// Not a syscall stop.
    Other,
}

/// The syscall stop `tid` is in (needs [`PTRACE_O_TRACESYSGOOD`]).
pub fn syscall_info(tid: i32) -> Result<SyscallStop, PtraceError> {
    // struct ptrace_syscall_info: u8 op, 3 pad, u32 arch, u64 pc, u64 sp,
    // then the entry (u64 nr, u64 args[6]) or exit (s64 rval, u8 is_error)
    // data; the same on every architecture (explicit 64-bit fields).
    let mut info = [0u64; 11];
    // SAFETY: the kernel writes at most the size given, that of `info`.
    let n = unsafe {
        ptrace_raw(
            PTRACE_GET_SYSCALL_INFO,
            tid,
            core::mem::size_of_val(&info),
            info.as_mut_ptr() as usize,
        )
    };
    if n < 0 {
        return Err(os("PTRACE_GET_SYSCALL_INFO", tid));
    }
    let pc = info[1];
    Ok(match info[0] & 0xff {
        1 => SyscallStop::Entry { nr: info[3], pc },
        2 => SyscallStop::Exit {
            rval: info[3].bits(),
            pc,
        },
        _ => SyscallStop::Other,
    })
}

pub fn detach(tid: i32) -> Result<(), PtraceError> {
    // SAFETY: PTRACE_DETACH with a zero signal takes no pointers.
    if unsafe { ptrace_raw(PTRACE_DETACH, tid, 0, 0) } < 0 {
        return Err(os("PTRACE_DETACH", tid));
    }
    Ok(())
}

/// How a traced task stopped (or ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A signal-delivery stop (or group stop) for this signal.
    Signal(i32),
    /// A ptrace event stop: (signal, event).
    Event(i32, i32),
    Exited(i32),
    Killed(i32),
}

pub fn wait(tid: i32) -> Result<Stop, PtraceError> {
    // Without WNOHANG waitpid reports a state change or fails.
    wait_flags(tid, 0).map(|s| s.unwrap_or(Stop::Exited(0)))
}

/// Like [`wait`], but `None` at once when `tid` has not changed state.
pub fn try_wait(tid: i32) -> Result<Option<Stop>, PtraceError> {
    wait_flags(tid, libc::WNOHANG)
}

fn wait_flags(tid: i32, flags: i32) -> Result<Option<Stop>, PtraceError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status word into `status`.
        let rc = unsafe { libc::waitpid(tid, &raw mut status, libc::__WALL | flags) };
        if rc == 0 {
            return Ok(None);
        }
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            if err.raw_os_error() == Some(libc::ECHILD) {
                return Err(PtraceError::TaskDied(tid));
            }
            return Err(PtraceError::Os {
                op: "waitpid",
                tid,
                err,
            });
        }
        break;
    }
    if libc::WIFEXITED(status) {
        return Ok(Some(Stop::Exited(libc::WEXITSTATUS(status))));
    }
    if libc::WIFSIGNALED(status) {
        return Ok(Some(Stop::Killed(libc::WTERMSIG(status))));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if event != 0 {
        Ok(Some(Stop::Event(sig, event)))
    } else {
        Ok(Some(Stop::Signal(sig)))
    }
}

pub fn get_sigmask(tid: i32) -> Result<u64, PtraceError> {
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes the 8 bytes given as the size into `mask`.
    if unsafe { ptrace_raw(PTRACE_GETSIGMASK, tid, 8, (&raw mut mask) as usize) } < 0 {
        return Err(os("PTRACE_GETSIGMASK", tid));
    }
    Ok(mask)
}

pub fn set_sigmask(tid: i32, mask: u64) -> Result<(), PtraceError> {
    // SAFETY: the kernel reads the 8 bytes given as the size from `mask`.
    if unsafe { ptrace_raw(PTRACE_SETSIGMASK, tid, 8, (&raw const mask) as usize) } < 0 {
        return Err(os("PTRACE_SETSIGMASK", tid));
    }
    Ok(())
}

/// Size of a kernel `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;

/// Every queued signal of the thread (`shared == false`) or of the whole
/// thread group (`shared == true`), as raw 128-byte siginfo records.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<Vec<u8>>, PtraceError> {
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; SIGINFO_SIZE * 32];
    loop {
        let args = Args {
            off: out.len() as u64,
            flags: if shared { PEEKSIGINFO_SHARED } else { 0 },
            nr: 32,
        };
        // SAFETY: the kernel reads one `Args` (its struct
        // ptrace_peeksiginfo_args) and writes at most `nr` (32) siginfo
        // records of SIGINFO_SIZE bytes, which is the size of `buf`.
        let n = unsafe {
            ptrace_raw(
                PTRACE_PEEKSIGINFO,
                tid,
                (&raw const args) as usize,
                buf.as_mut_ptr() as usize,
            )
        };
        if n < 0 {
            return Err(os("PTRACE_PEEKSIGINFO", tid));
        }
        if n == 0 {
            return Ok(out);
        }
        // n > 0 here, and `take` bounds it by the buffer.
        let n = usize::try_from(n).unwrap_or(0);
        for c in buf.chunks_exact(SIGINFO_SIZE).take(n) {
            out.push(c.to_vec());
        }
    }
}

/// The registered rseq area of a thread: (address, length, signature).
pub fn rseq_config(tid: i32) -> Result<Option<(u64, u32, u32)>, PtraceError> {
    #[repr(C)]
    #[derive(Default)]
    struct Conf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = Conf::default();
    // SAFETY: the kernel writes at most the size given, that of `c`.
    let n = unsafe {
        ptrace_raw(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            core::mem::size_of::<Conf>(),
            (&raw mut c) as usize,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EIO) || err.raw_os_error() == Some(libc::EINVAL) {
            return Ok(None);
        }
        return Err(os("PTRACE_GET_RSEQ_CONFIGURATION", tid));
    }
    let _ = c.flags;
    let _ = c.pad;
    if c.ptr == 0 {
        Ok(None)
    } else {
        Ok(Some((c.ptr, c.size, c.sig)))
    }
}

/// `/proc/PID/mem` of a traced task: reads and writes ignore page
/// protections (the kernel forces access for the tracer).
#[derive(Debug)]
pub struct Mem {
    pid: i32,
    file: File,
}

impl Mem {
    pub fn open(pid: i32) -> Result<Self, PtraceError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|err| match err.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => PtraceError::TaskDied(pid),
                _ => PtraceError::Os {
                    op: "open /proc/PID/mem",
                    tid: pid,
                    err,
                },
            })?;
        Ok(Self { pid, file })
    }

    pub fn read<T>(&self, at: RemotePtr<T>, buf: &mut [u8]) -> Result<(), PtraceError> {
        self.file
            .read_exact_at(buf, at.addr())
            .map_err(|err| PtraceError::Os {
                op: "read /proc/PID/mem",
                tid: self.pid,
                err: io::Error::new(
                    err.kind(),
                    format!("{} bytes at {:#x}: {err}", buf.len(), at.addr()),
                ),
            })
    }

    pub fn write<T>(&self, at: RemotePtr<T>, buf: &[u8]) -> Result<(), PtraceError> {
        self.file
            .write_all_at(buf, at.addr())
            .map_err(|err| PtraceError::Os {
                op: "write /proc/PID/mem",
                tid: self.pid,
                err: io::Error::new(
                    err.kind(),
                    format!("{} bytes at {:#x}: {err}", buf.len(), at.addr()),
                ),
            })
    }

    /// Writes a plain-data value: its bytes exactly, none of them padding.
    pub fn write_value<T: NoUninit>(&self, at: RemotePtr<T>, v: &T) -> Result<(), PtraceError> {
        self.write(at, bytemuck::bytes_of(v))
    }

    /// Reads a plain-data value, for which any bytes the task holds are valid.
    pub fn read_value<T: AnyBitPattern>(&self, at: RemotePtr<T>) -> Result<T, PtraceError> {
        let mut bytes = vec![0u8; core::mem::size_of::<T>()];
        self.read(at, &mut bytes)?;
        Ok(bytemuck::pod_read_unaligned(&bytes))
    }
}

/// Writes `buf` into task `pid` at `addr` with one process_vm_writev: one
/// copy, straight into the task's pages. Only into mappings the task may
/// write itself (the protections apply, unlike `/proc/PID/mem`); returns
/// the bytes written, fewer when a page refused.
pub fn vm_write(pid: i32, addr: u64, buf: &[u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_ptr().cast_mut().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: crate::arch::native(addr) as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, which the kernel only reads, and
    // one remote iovec in the other task.
    let n = unsafe { libc::process_vm_writev(pid, &raw const local, 1, &raw const remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.bits())
}

/// Reads `buf.len()` bytes at `addr` of `pid` with one process_vm_readv.
/// Returns the number of bytes read (short at an unreadable page).
pub fn vm_read(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: crate::arch::native(addr) as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, one remote iovec; the kernel writes
    // at most buf.len() bytes into `buf`.
    let n = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.bits())
}

//! The syscall trampoline: a few pages torpor maps into a hole of the
//! target's final layout, `syscall; trap` in the first, and a scratch area
//! after it for the arguments of remote syscalls (paths, structs, siginfo).
//!
//! Arguments go through a [`Scratch`]: a bump allocator over the data
//! area that starts empty each time one is made, so what one step writes
//! never lands on what another still uses within the same call, and
//! nothing is written past the area's end.

use crate::arch::{self, nr, Bits};
use crate::engine::ptrace::{Mem, RemotePtr};
use crate::engine::remote::Remote;
use crate::engine::Cause;

/// Size of the trampoline area: code in the first page, data after it.
pub(super) const TRAMP_SIZE: u64 = 4 * 4096;
/// Offset of the data area in the trampoline.
const DATA: u64 = 4096;
/// Every argument starts on this alignment (enough for any kernel struct).
const ALIGN: u64 = 16;

/// The lowest address at or above 16 MiB with `size` bytes free of every
/// range in `busy`.
pub(super) fn hole(busy: &mut [(u64, u64)], size: u64) -> Option<u64> {
    busy.sort_unstable();
    let mut at: u64 = 0x0100_0000;
    for &(s, e) in busy.iter() {
        if e <= at {
            continue;
        }
        if s >= at.checked_add(size)? {
            return Some(at);
        }
        at = at.max(e);
    }
    Some(at)
}

/// Runs `f` with a remote-syscall guard on `tid` at the trampoline.
pub(super) fn with_remote<T>(
    mem: &Mem,
    tid: i32,
    tramp: u64,
    f: impl FnOnce(&mut Remote<'_>) -> Result<T, Cause>,
) -> Result<T, Cause> {
    let mut r = Remote::at(tid, mem, tramp)?;
    let v = f(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Arguments of one remote call, laid out one after another in the
/// trampoline's data area of the task behind `mem`. Each returns the
/// argument's address in the task.
#[derive(Debug)]
pub(super) struct Scratch<'m> {
    mem: &'m Mem,
    base: u64,
    used: u64,
}

impl<'m> Scratch<'m> {
    /// An empty scratch area in the trampoline at `tramp`. What an earlier
    /// `Scratch` wrote there may be overwritten.
    pub(super) fn at(mem: &'m Mem, tramp: u64) -> Self {
        Self {
            mem,
            base: tramp + DATA,
            used: 0,
        }
    }

    fn reserve(&mut self, len: u64) -> Result<u64, Cause> {
        let start = self.used.next_multiple_of(ALIGN);
        let end = start
            .checked_add(len)
            .filter(|&e| e <= TRAMP_SIZE - DATA)
            .ok_or_else(|| {
                Cause::Refused(format!(
                    "{len} bytes do not fit the trampoline data area ({} of {} in use)",
                    start,
                    TRAMP_SIZE - DATA
                ))
            })?;
        self.used = end;
        Ok(self.base + start)
    }

    /// Copies `b` into the area.
    pub(super) fn bytes(&mut self, b: &[u8]) -> Result<u64, Cause> {
        let at = self.reserve(b.len() as u64)?;
        self.mem.write(RemotePtr::<u8>::new(at), b)?;
        Ok(at)
    }

    /// Copies `s` and a terminating NUL into the area.
    pub(super) fn c_string(&mut self, s: &[u8]) -> Result<u64, Cause> {
        if s.contains(&0) {
            return Err(Cause::Refused(format!(
                "{:?} holds a NUL byte",
                String::from_utf8_lossy(s)
            )));
        }
        let mut b = Vec::with_capacity(s.len() + 1);
        b.extend_from_slice(s);
        b.push(0);
        self.bytes(&b)
    }

    /// Copies the plain-data value `v` into the area.
    pub(super) fn value<T: bytemuck::NoUninit>(&mut self, v: &T) -> Result<u64, Cause> {
        let at = self.reserve(core::mem::size_of::<T>() as u64)?;
        self.mem.write_value(RemotePtr::<T>::new(at), v)?;
        Ok(at)
    }
}

/// Opens `path` in the task `r` borrows (relative to its cwd), returning
/// the task's new descriptor.
pub(super) fn remote_open(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    path: &[u8],
    flags: i32,
) -> Result<u64, Cause> {
    let at = Scratch::at(mem, tramp).c_string(path)?;
    let path = String::from_utf8_lossy(path);
    let fd = r.syscall_raw(
        nr::OPENAT,
        [
            (-100i64).bits(),
            at,
            u64::from((flags | libc::O_CLOEXEC).bits()),
            0,
            0,
            0,
        ],
    )?;
    if fd < 0 {
        // The result register is the task's: only -4095..-1 is an errno.
        let Some(errno) = fd
            .checked_neg()
            .and_then(|e| i32::try_from(e).ok())
            .filter(|e| (1..4096).contains(e))
        else {
            return Err(Cause::Refused(format!(
                "openat of {path} in process {} returned {fd}",
                r.tid()
            )));
        };
        let err = std::io::Error::from_raw_os_error(errno);
        return Err(Cause::Io(std::io::Error::new(
            err.kind(),
            format!("opening {path} in process {}: {err}", r.tid()),
        )));
    }
    Ok(fd.bits())
}

/// Unmaps the trampoline through a syscall patched at the main thread's
/// final pc (the trampoline cannot unmap itself and trap).
pub(super) fn remove(pid: i32, mem: &Mem, tramp: u64) -> Result<(), Cause> {
    let mut r = Remote::at_pc(pid, mem)?;
    r.munmap("munmap (trampoline)", tramp, TRAMP_SIZE)?;
    r.finish()?;
    Ok(())
}

/// Maps the trampoline at `tramp` in the stopped task `pid` and writes its
/// code.
pub(super) fn place(pid: i32, mem: &Mem, tramp: u64) -> Result<(), Cause> {
    let mut r = Remote::at_pc(pid, mem)?;
    let got = r.mmap(
        "mmap (trampoline)",
        tramp,
        TRAMP_SIZE,
        libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    )?;
    if got != tramp {
        return Err(Cause::Refused(format!(
            "trampoline landed at {got:#x}, not {tramp:#x}"
        )));
    }
    r.finish()?;
    mem.write(RemotePtr::<u8>::new(tramp), arch::SYSCALL_TRAP)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_skips_busy_ranges() {
        let mut busy = vec![(0x0100_0000, 0x0100_4000), (0x0100_5000, 0x0100_6000)];
        assert_eq!(hole(&mut busy, 0x1000), Some(0x0100_4000));
        assert_eq!(hole(&mut busy, 0x2000), Some(0x0100_6000));
    }
}

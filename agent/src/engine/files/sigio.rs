//! Signal-driven I/O: `O_ASYNC` with the owner (`F_SETOWN_EX`) and the
//! signal (`F_SETSIG`) the kernel sends when the file becomes ready, and
//! the owner and signal of a lease's break notice.
//!
//! fdinfo shows `O_ASYNC` among the flags but neither the owner nor the
//! signal: torpor reads them from a duplicate of the fd (both belong to the
//! open file description). `open(2)` ignores `O_ASYNC`, and `F_SETFL` arms
//! the notification only when the flag changes, so a restore opens without
//! it and the restored process sets it through its own fd: the kernel
//! reports that fd number in `si_fd`. The owner is set by torpor once every
//! process and thread of the tree exists, since it may name any of them.
//!
//! Unsafe code: `F_GETOWN_EX`/`F_SETOWN_EX` and the signal are read and set
//! with `fcntl` through libc, with a pointer to our `struct f_owner_ex`.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use crate::image::records::SigIo;

// asm-generic/fcntl.h, the same on x86_64 and ARM.
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;

/// `struct f_owner_ex`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// `O_ASYNC` as fdinfo and `F_GETFL` report it.
pub const O_ASYNC: u32 = libc::O_ASYNC.unsigned_abs();

/// The owner and signal of fd `fd` of `pid`.
pub(super) fn collect(pid: i32, fd: i32) -> Result<SigIo, String> {
    let dup = super::dup_from(pid, fd).map_err(|e| format!("fd {fd}: duplicating it: {e}"))?;
    let mut owner = OwnerEx::default();
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex.
    if unsafe { libc::fcntl(dup.as_raw_fd(), F_GETOWN_EX, &raw mut owner) } < 0 {
        return Err(format!(
            "fd {fd}: F_GETOWN_EX: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fcntl with integer arguments on our own fd.
    let signal = unsafe { libc::fcntl(dup.as_raw_fd(), F_GETSIG) };
    if signal < 0 {
        return Err(format!(
            "fd {fd}: F_GETSIG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(SigIo {
        owner_kind: owner.kind,
        owner_pid: owner.pid,
        signal,
    })
}

/// In the restored process, on its own fd: the signal, then `O_ASYNC` if
/// the description had it.
pub fn arm(fd: i32, flags: u32, s: &SigIo) -> Result<(), String> {
    // SAFETY: fcntl with integer arguments on an fd of this process.
    if unsafe { libc::fcntl(fd, F_SETSIG, s.signal) } < 0 {
        return Err(format!(
            "F_SETSIG {} on fd {fd}: {}",
            s.signal,
            std::io::Error::last_os_error()
        ));
    }
    if flags & O_ASYNC != 0 {
        // SAFETY: as above.
        let now = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above; the flag changes, so the kernel arms the notice.
        if now < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, now | libc::O_ASYNC) } < 0 {
            return Err(format!(
                "O_ASYNC on fd {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// In torpor, on its copy of the description, once the tree exists.
pub fn set_owner(fd: i32, s: &SigIo) -> Result<(), String> {
    if s.owner_pid == 0 {
        return Ok(());
    }
    let owner = OwnerEx {
        kind: s.owner_kind,
        pid: s.owner_pid,
    };
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex.
    if unsafe { libc::fcntl(fd, F_SETOWN_EX, &raw const owner) } < 0 {
        return Err(format!(
            "F_SETOWN_EX (type {}, pid {}): {}",
            s.owner_kind,
            s.owner_pid,
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

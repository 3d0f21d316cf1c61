//! eventfd: the counter and `EFD_SEMAPHORE`.
//!
//! Unsafe code: the eventfd is created, read and written through libc, with
//! pointers to our counter.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use super::{dup_from, field, hex_u64, into_raw, owned};
use crate::image::records::EventFd;

pub(super) fn collect(pid: i32, fd: i32, info: &str) -> Result<EventFd, String> {
    let count = field(info, "eventfd-count")
        .and_then(hex_u64)
        .ok_or("no readable eventfd-count")?;
    let semaphore = match field(info, "eventfd-semaphore") {
        Some(v) => v == "1",
        // Kernels before 6.5 do not show the mode: ask the object itself.
        None => {
            probe_semaphore(pid, fd, count).map_err(|e| format!("probing EFD_SEMAPHORE: {e}"))?
        }
    };
    Ok(EventFd { count, semaphore })
}

fn read_u64(fd: &OwnedFd) -> Result<u64, std::io::Error> {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v`.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
    if n != 8 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v)
}

fn write_u64(fd: &OwnedFd, v: u64) -> Result<(), std::io::Error> {
    // SAFETY: writes 8 bytes from `v`.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&raw const v).cast(), 8) };
    if n != 8 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A read takes the whole count, or 1 in semaphore mode. Raising the
/// counter by 2 first makes the two modes differ whatever the count was;
/// the counter is left as it was found. The tree is frozen meanwhile.
fn probe_semaphore(pid: i32, fd: i32, count: u64) -> Result<bool, std::io::Error> {
    let f = dup_from(pid, fd)?;
    write_u64(&f, 2)?;
    let got = read_u64(&f)?;
    if got == 1 {
        // Semaphore: count + 1 left; take the other added unit.
        read_u64(&f)?;
        return Ok(true);
    }
    if count > 0 {
        write_u64(&f, count)?;
    }
    Ok(false)
}

pub(super) fn open(s: &EventFd, nonblock: bool) -> Result<i32, std::io::Error> {
    let mut flags = libc::EFD_CLOEXEC;
    if s.semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    if nonblock {
        flags |= libc::EFD_NONBLOCK;
    }
    // The initial value of eventfd(2) is 32-bit; larger counts are written.
    // SAFETY: eventfd takes integers only.
    let f = owned(libc::c_long::from(unsafe { libc::eventfd(0, flags) }))?;
    if s.count > 0 {
        write_u64(&f, s.count)?;
    }
    Ok(into_raw(f))
}

impl super::AnonKind for EventFd {
    const NAME: &'static str = "an eventfd";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:[eventfd]");

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let (path, info) = p.fdinfo()?;
        collect(p.pid, p.fd, &info).map_err(|e| p.bad_fdinfo(&path, &e))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock())?)
    }
}

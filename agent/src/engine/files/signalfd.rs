//! signalfd: the accepted signals. What it reads are the task's pending
//! signals, which the task's own state brings back.
//!
//! Unsafe code: signalfd4 is called through libc with a pointer to the 64-bit
//! mask, which neither std nor nix takes as a raw word.
#![allow(unsafe_code)]

use super::{field, hex_u64, into_raw, owned};
use crate::image::records::SignalFd;

pub(super) fn collect(info: &str) -> Result<SignalFd, String> {
    let mask = field(info, "sigmask")
        .and_then(hex_u64)
        .ok_or("no readable sigmask")?;
    Ok(SignalFd { mask })
}

pub(super) fn open(s: &SignalFd, nonblock: bool) -> Result<i32, std::io::Error> {
    let mut flags = libc::SFD_CLOEXEC;
    if nonblock {
        flags |= libc::SFD_NONBLOCK;
    }
    // The kernel's sigset for signalfd4 is 64 bits on every architecture.
    let mask = s.mask;
    // SAFETY: signalfd4 reads 8 bytes from `mask`.
    owned(unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1 as libc::c_long,
            (&raw const mask).cast::<u8>(),
            8 as libc::c_long,
            libc::c_long::from(flags),
        )
    })
    .map(into_raw)
}

impl super::AnonKind for SignalFd {
    const NAME: &'static str = "a signalfd";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:[signalfd]");

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let (path, info) = p.fdinfo()?;
        collect(&info).map_err(|e| p.bad_fdinfo(&path, &e))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock())?)
    }
}

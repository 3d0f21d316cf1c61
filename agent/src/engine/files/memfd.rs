//! memfd: recreated with memfd_create under the same name, its contents
//! written back, its size and offset set and its seals added last (a seal
//! against writing would refuse the contents).
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use super::{dup_from, into_raw, last_os, owned};
use crate::image::records::{Memfd, RawPath};

/// The largest memfd kept (its contents travel in its fd record).
pub const MEMFD_LIMIT: u64 = crate::image::records::UNLINKED_LIMIT;

/// The memfd name in a /proc link `/memfd:NAME (deleted)`.
pub(super) fn name_of(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:").and_then(|s| s.strip_suffix(" (deleted)"))
}

pub(super) fn collect(pid: i32, fd: i32, name: &str, pos: u64) -> Result<Memfd, String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    // SAFETY: fcntl on our duplicate.
    let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(format!("F_GET_SEALS: {}", last_os()));
    }
    let size = std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(|e| e.to_string())?.len();
    if size > MEMFD_LIMIT {
        return Err(format!("{size} bytes (torpor keeps memfds up to {MEMFD_LIMIT} bytes)"));
    }
    let mut bytes = vec![0u8; usize::try_from(size).unwrap_or(0)];
    let mut got = 0;
    while got < bytes.len() {
        let off = libc::off_t::try_from(got).unwrap_or(0);
        // SAFETY: pread into the unfilled part of `bytes`; the offset of the
        // shared description is left alone.
        let n = unsafe { libc::pread(f.as_raw_fd(), bytes[got..].as_mut_ptr().cast(), bytes.len() - got, off) };
        if n <= 0 {
            return Err(format!("reading the contents: {}", last_os()));
        }
        got += n.unsigned_abs();
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    Ok(Memfd { name: RawPath::from(name), size, bytes, seals: seals.unsigned_abs(), offset: pos })
}

pub(super) fn open(s: &Memfd, flags: u32) -> Result<i32, std::io::Error> {
    let name = std::ffi::CString::new(s.name.as_bytes().to_vec()).map_err(|_| std::io::Error::other("memfd name with NUL"))?;
    let mut mfd_flags = libc::MFD_CLOEXEC;
    // A memfd made without MFD_ALLOW_SEALING shows F_SEAL_SEAL alone.
    if s.seals != libc::F_SEAL_SEAL.unsigned_abs() {
        mfd_flags |= libc::MFD_ALLOW_SEALING;
    }
    // SAFETY: memfd_create with a valid C string.
    let f = owned(libc::c_long::from(unsafe { libc::memfd_create(name.as_ptr(), mfd_flags) }))?;
    let fd = f.as_raw_fd();
    let mut off = 0;
    while off < s.bytes.len() {
        // SAFETY: writing from our buffer.
        let n = unsafe { libc::write(fd, s.bytes[off..].as_ptr().cast(), s.bytes.len() - off) };
        if n <= 0 {
            return Err(last_os());
        }
        off += n.unsigned_abs();
    }
    let size = libc::off_t::try_from(s.size).map_err(|_| std::io::Error::other("memfd size"))?;
    // SAFETY: integer arguments on our fd.
    if unsafe { libc::ftruncate(fd, size) } < 0 {
        return Err(last_os());
    }
    let pos = libc::off_t::try_from(s.offset).unwrap_or(0);
    // SAFETY: integer arguments on our fd.
    if unsafe { libc::lseek(fd, pos, libc::SEEK_SET) } < 0 {
        return Err(last_os());
    }
    let status = i32::try_from(flags).unwrap_or(0) & (libc::O_NONBLOCK | libc::O_APPEND);
    // SAFETY: integer arguments on our fd.
    if status != 0 && unsafe { libc::fcntl(fd, libc::F_SETFL, status) } < 0 {
        return Err(last_os());
    }
    // Without MFD_ALLOW_SEALING a memfd starts sealed with F_SEAL_SEAL only.
    if mfd_flags & libc::MFD_ALLOW_SEALING != 0 && s.seals != 0 {
        let seals = i32::try_from(s.seals).unwrap_or(0);
        // SAFETY: integer arguments on our fd.
        if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
            return Err(last_os());
        }
    }
    Ok(into_raw(f))
}

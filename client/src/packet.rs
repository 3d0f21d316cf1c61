//! SOCK_SEQPACKET UNIX sockets: one message per packet.
//!
//! std has no sequenced-packet sockets, so this module talks to the kernel
//! directly; it is the only place in the crate with unsafe code.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::proto::MAX_MESSAGE;

/// Fills a `sockaddr_un` for `path`; refuses paths that do not fit.
pub fn socket_address(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_possible_truncation, reason = "AF_UNIX is 1")]
    let family = libc::AF_UNIX as libc::sa_family_t;
    addr.sun_family = family;
    let bytes = path.as_os_str().as_bytes();
    // One byte stays zero: the kernel wants a terminated path here.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path {} must be 1 to {} bytes without NUL",
                path.display(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    let len =
        libc::socklen_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((addr, len))
}

/// A new close-on-exec SOCK_SEQPACKET UNIX socket.
pub fn seqpacket_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; a non-negative result is a new fd
    // that nothing else owns.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds the socket `fd` to the file name `path`.
pub fn bind(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let (addr, len) = socket_address(path)?;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes; the
    // kernel only reads it.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts one connection waiting on the listening socket `fd`, as a new
/// non-blocking, close-on-exec socket.
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address and length: the kernel writes no peer address.
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Connects a new SOCK_SEQPACKET socket to the listener at `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let (addr, len) = socket_address(path)?;
    let fd = seqpacket_socket()?;
    loop {
        // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        if r == 0 {
            return Ok(fd);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `bytes` as one packet. `MSG_NOSIGNAL`: a vanished peer is an
/// error value, not a SIGPIPE. With `nonblocking`, a peer whose queue is
/// full gets `WouldBlock` instead of stalling the sender.
pub fn send_packet(fd: BorrowedFd<'_>, bytes: &[u8], nonblocking: bool) -> io::Result<()> {
    let flags = libc::MSG_NOSIGNAL | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: `bytes` is a live buffer of the given length; the kernel only reads it.
        let n = unsafe { libc::send(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), flags) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one packet into `buf`. Returns the packet's real length, which
/// is larger than `MAX_MESSAGE` when the packet did not fit (`MSG_TRUNC`
/// makes the kernel report it), and 0 when the peer closed the connection.
pub fn recv_packet(
    fd: BorrowedFd<'_>,
    buf: &mut [u8; MAX_MESSAGE],
    nonblocking: bool,
) -> io::Result<usize> {
    let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
    loop {
        // SAFETY: `buf` is a live, writable buffer of MAX_MESSAGE bytes; with
        // MSG_TRUNC the kernel still writes at most that many.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

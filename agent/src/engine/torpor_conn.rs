//! The application's connection to `torpor daemon`, across a hibernation.
//!
//! At dump, the daemon holds its end of the caller's connection; the
//! caller's end is the socket's peer, found with the kernel's UNIX
//! `sock_diag` (`UDIAG_SHOW_PEER`), and the fd of the tree that refers to
//! it is recorded as `FileKind::TorporConn` (every other socket is still
//! refused). At restore, whoever restores connects a fresh socket to the
//! daemon's socket; the tree gets it at the recorded fd number, and the
//! restorer, through its own descriptor of the same socket, asks the daemon
//! to send `Resumed` on it (`Request::Restored`), so the application's
//! pending `recv()` returns as if the hibernate call had just completed.
//!
//! ```text
//!  netlink request:  nlmsghdr(16) | unix_diag_req(24)
//!     unix_diag_req: family u8, protocol u8, pad u16, states u32,
//!                    ino u32, show u32, cookie [u32; 2]
//!  reply:            nlmsghdr(16) | unix_diag_msg(16) | rtattr*
//!     unix_diag_msg: family u8, type u8, state u8, pad u8, ino u32, cookie [u32; 2]
//!     rtattr:        len u16, type u16, payload, padded to 4
//! ```
//!
//! Unsafe code: the sock_diag netlink socket and the fd checks call libc
//! directly, with pointers to our buffers, and take ownership of the new fd.
#![allow(unsafe_code)]

use crate::arch::Bits;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_HDR: usize = 16;
const DIAG_REQ: usize = 24;
const DIAG_MSG: usize = 16;

/// Why the peer of a connection could not be found.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot read the inode of fd {fd}: {source}")]
    Stat { fd: RawFd, source: io::Error },
    #[error("UNIX socket diagnostics (sock_diag, CONFIG_UNIX_DIAG) unavailable: {0}")]
    Diag(io::Error),
    #[error("the kernel reports no peer for socket inode {0} (the caller hung up?)")]
    NoPeer(u64),
    #[error("malformed sock_diag reply: {0}")]
    Malformed(&'static str),
}

/// Inode of the socket (or any file) behind `fd`.
pub fn inode(fd: RawFd) -> Result<u64, PeerError> {
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, which lives across the call.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(PeerError::Stat {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    Ok(st.st_ino as u64)
}

/// Inode of the other end of the connected UNIX socket `fd`.
pub fn peer_inode(fd: RawFd) -> Result<u64, PeerError> {
    let ino = inode(fd)?;
    let ino32 =
        u32::try_from(ino).map_err(|_| PeerError::Malformed("socket inode beyond 32 bits"))?;
    // SAFETY: socket with constant arguments; the result is checked.
    let nl = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if nl < 0 {
        return Err(PeerError::Diag(io::Error::last_os_error()));
    }
    // SAFETY: `nl` was just created and is owned here only.
    let nl = unsafe { OwnedFd::from_raw_fd(nl) };

    let mut req = [0u8; NLMSG_HDR + DIAG_REQ];
    // A fixed-size request of a few dozen bytes.
    let total = u32::try_from(req.len()).unwrap_or(0);
    req[0..4].copy_from_slice(&total.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let body = &mut req[NLMSG_HDR..];
    // AF_UNIX is 1.
    body[0] = u8::try_from(libc::AF_UNIX).unwrap_or(1);
    body[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    body[8..12].copy_from_slice(&ino32.to_ne_bytes());
    body[12..16].copy_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    // No cookie: the inode alone names the socket.
    body[16..24].copy_from_slice(&[0xff; 8]);
    // SAFETY: sending from a live buffer of the given length.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(PeerError::Diag(io::Error::last_os_error()));
    }
    let mut buf = [0u8; 1024];
    // SAFETY: receiving into a live buffer of the given length.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).map_err(|_| PeerError::Diag(io::Error::last_os_error()))?;
    parse_peer(&buf[..n], ino)
}

fn parse_peer(msg: &[u8], ino: u64) -> Result<u64, PeerError> {
    let u16_at = |o: usize| u16::from_ne_bytes([msg[o], msg[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes([msg[o], msg[o + 1], msg[o + 2], msg[o + 3]]);
    if msg.len() < NLMSG_HDR {
        return Err(PeerError::Malformed("short netlink header"));
    }
    let len = (u32_at(0) as usize).min(msg.len());
    if u16_at(4) == NLMSG_ERROR {
        let errno = if len >= NLMSG_HDR + 4 {
            i32::from_ne_bytes([msg[16], msg[17], msg[18], msg[19]])
        } else {
            0
        };
        return Err(PeerError::Diag(io::Error::from_raw_os_error(
            errno.saturating_neg(),
        )));
    }
    if len < NLMSG_HDR + DIAG_MSG {
        return Err(PeerError::Malformed("short unix_diag_msg"));
    }
    let mut at = NLMSG_HDR + DIAG_MSG;
    while at + 4 <= len {
        let alen = usize::from(u16_at(at));
        if alen < 4 || at + alen > len {
            return Err(PeerError::Malformed("attribute length out of bounds"));
        }
        if u16_at(at + 2) == UNIX_DIAG_PEER && alen >= 8 {
            return Ok(u64::from(u32_at(at + 4)));
        }
        at += (alen + 3) & !3;
    }
    Err(PeerError::NoPeer(ino))
}

/// A SOCK_SEQPACKET connection to the daemon's socket at `path`, waiting up
/// to `wait` for the daemon to start listening.
pub fn connect(path: &Path, wait: Duration) -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    let start = Instant::now();
    loop {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        match nix::sys::socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(fd),
            Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ECONNREFUSED)
                if start.elapsed() < wait =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot connect to torpor daemon at {}: {e}", path.display()),
                ))
            }
        }
    }
}

/// A duplicate of `conn` for the restored tree, above the fds torpor uses,
/// with the file status flags the tree had (`O_NONBLOCK`).
pub fn dup_for_tree(conn: RawFd, flags: u32) -> io::Result<RawFd> {
    // SAFETY: fcntl on an fd the caller keeps open.
    let fd = unsafe { libc::fcntl(conn, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let status = flags.bits() & libc::O_NONBLOCK;
    // SAFETY: setting status flags on the fd just duplicated.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, status) } < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing our own fd on the error path.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

impl crate::engine::files::FsKind for crate::engine::state::TorporConnFile {
    const NAME: &'static str = "the connection to torpor daemon";

    fn record(&self, flags: u32) -> crate::image::records::FdKind {
        crate::image::records::FdKind::TorporConn { flags }
    }

    fn from_record(k: &crate::image::records::FdKind) -> Option<Result<(u32, Self), String>> {
        match k {
            crate::image::records::FdKind::TorporConn { flags } => {
                Some(Ok((*flags, crate::engine::state::TorporConnFile)))
            }
            _ => None,
        }
    }

    fn check(&self, cx: &crate::engine::files::CheckCx<'_>) -> Result<(), String> {
        if cx.torpor_conn {
            Ok(())
        } else {
            Err("the image holds a connection to torpor daemon; restore it with `torpor boot` or `torpor run`, which reconnect it".into())
        }
    }

    fn open(&self, cx: &mut crate::engine::files::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        let conn = cx.torpor_conn.ok_or_else(|| {
            crate::engine::Cause::Refused("no connection to torpor daemon to give the tree".into())
        })?;
        dup_for_tree(conn, cx.flags).map_err(crate::engine::Cause::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_replies_are_refused() {
        assert!(matches!(
            parse_peer(&[0; 4], 1),
            Err(PeerError::Malformed(_))
        ));
        let mut m = vec![0u8; 40];
        m[0..4].copy_from_slice(&40u32.to_ne_bytes());
        m[4..6].copy_from_slice(&20u16.to_ne_bytes());
        // An attribute claiming more bytes than the message holds.
        m[32..34].copy_from_slice(&100u16.to_ne_bytes());
        assert!(matches!(parse_peer(&m, 1), Err(PeerError::Malformed(_))));
        // A well-formed UNIX_DIAG_PEER.
        m[32..34].copy_from_slice(&8u16.to_ne_bytes());
        m[34..36].copy_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        m[36..40].copy_from_slice(&4242u32.to_ne_bytes());
        assert_eq!(parse_peer(&m, 1).unwrap(), 4242);
    }
}

//! The daemon's listening socket: a SOCK_SEQPACKET UNIX socket at the
//! configured path, owner, group and mode. A stale socket file left by a
//! dead daemon is replaced; a live daemon on the same path is left alone.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::protocol::packet;

/// How many connections may wait for `accept`.
const BACKLOG: i32 = 8;

/// Why the daemon could not listen.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another torpor daemon is already serving {}", path.display())]
    AlreadyServing { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {}: {source}", path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot {step} socket {}: {source}", path.display())]
    Socket {
        step: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A bound, listening socket; its file is removed when it is dropped.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Listens at `path`, owned by `uid`:`gid` with permission bits `mode`.
    pub fn bind(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<Listener, BindError> {
        let fail = |step, source| BindError::Socket {
            step,
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => match packet::connect(path) {
                Ok(_) => {
                    return Err(BindError::AlreadyServing {
                        path: path.to_owned(),
                    })
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                        path: path.to_owned(),
                        source,
                    })?
                }
                Err(e) => return Err(fail("probe the existing", e)),
            },
            Ok(_) => {
                return Err(BindError::NotASocket {
                    path: path.to_owned(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail("inspect", e)),
        }
        let fd = packet::seqpacket_socket().map_err(|e| fail("create", e))?;
        packet::socket_address(path).map_err(|e| fail("name", e))?;
        // The file is born owner-only (Linux gives it the socket inode's
        // mode, masked by the umask), so nobody connects before it has its
        // configured owner and mode.
        nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| fail("configure", e.into()))?;
        packet::bind(fd.as_fd(), path).map_err(|e| fail("bind", e))?;
        // From here on the file is ours: remove it if a later step fails.
        let listener = Listener {
            fd,
            path: path.to_owned(),
        };
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| fail("chown", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail("chmod", e))?;
        set_nonblocking(listener.fd.as_fd()).map_err(|e| fail("configure", e))?;
        let backlog =
            nix::sys::socket::Backlog::new(BACKLOG).map_err(|e| fail("listen on", e.into()))?;
        nix::sys::socket::listen(&listener.fd, backlog).map_err(|e| fail("listen on", e.into()))?;
        Ok(listener)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one waiting connection, non-blocking and close-on-exec;
    /// `None` when none waits.
    pub fn accept(&self) -> io::Result<Option<OwnedFd>> {
        match packet::accept(self.fd.as_fd()) {
            Ok(fd) => Ok(Some(fd)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::ECONNABORTED | libc::EINTR)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(io::Error::from)?;
    Ok(())
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

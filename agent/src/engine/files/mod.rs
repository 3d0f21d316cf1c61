//! Descriptors on anonymous kernel objects: eventfd, timerfd, signalfd,
//! epoll and inotify. Each kind has its own module with a `collect` (from
//! fdinfo and, where fdinfo is silent, from a duplicate of the fd) and an
//! `open` that creates the object again in torpor before the tasks are
//! forked; epoll targets are registered by the task that held them, once
//! its fds are at their numbers (`register_epolls`).
#![allow(unsafe_code)]

mod epoll;
mod eventfd;
mod inet;
mod inotify;
mod locks;
mod memfd;
mod signalfd;
mod sock;
mod timerfd;
mod tmpfs;
mod unix;

use std::os::fd::{FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::engine::state::{FileKind, OpenFile, ProcessState};
use crate::engine::{procfs, Cause};
use crate::image::records::{Epoll, EventFd, FdKind, Inotify, SignalFd, TimerFd, UnixSocket, InetSocket, Memfd};

pub use unix::Pending;

/// An anonymous-inode file torpor knows how to recreate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnonFile {
    EventFd(EventFd),
    TimerFd(TimerFd),
    SignalFd(SignalFd),
    Epoll(Epoll),
    Inotify(Inotify),
    Unix(UnixSocket),
    Inet(InetSocket),
    Memfd(Memfd),
}

/// The state of fd `fd` of `pid` when `link` (its /proc link) names one of
/// the kinds above; `None` for any other file.
pub fn collect(pid: i32, fd: i32, link: &str) -> Result<Option<AnonFile>, Cause> {
    let kind = match link {
        "anon_inode:[eventfd]" => "eventfd",
        "anon_inode:[timerfd]" => "timerfd",
        "anon_inode:[signalfd]" => "signalfd",
        "anon_inode:[eventpoll]" => "eventpoll",
        "anon_inode:inotify" => "inotify",
        _ => {
            if let Some(name) = memfd::name_of(link) {
                let info = procfs::parse_fdinfo(&format!("/proc/{pid}/fdinfo/{fd}"), &procfs::read(&format!("/proc/{pid}/fdinfo/{fd}"))?)?;
                let m = memfd::collect(pid, fd, name, info.pos)
                    .map_err(|e| Cause::Unsupported(format!("fd {fd} of process {pid} is a memfd ({link}): {e}")))?;
                return Ok(Some(AnonFile::Memfd(m)));
            }
            return collect_socket(pid, fd, link);
        }
    };
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let info = procfs::read(&path)?;
    let bad = |what: &str| Cause::Refused(format!("fd {fd} of process {pid} ({link}): {path}: {what}"));
    Ok(Some(match kind {
        "eventfd" => AnonFile::EventFd(eventfd::collect(pid, fd, &info).map_err(|e| bad(&e))?),
        "timerfd" => AnonFile::TimerFd(timerfd::collect_from(&path).map_err(|e| bad(&e))?),
        "signalfd" => AnonFile::SignalFd(signalfd::collect(&info).map_err(|e| bad(&e))?),
        "eventpoll" => AnonFile::Epoll(epoll::collect(pid, fd, &info).map_err(|e| bad(&e))?),
        _ => AnonFile::Inotify(inotify::collect(pid, &info).map_err(|e| bad(&e))?),
    }))
}

/// A socket of a family torpor knows; `None` for other files, and for
/// other families (refused by the caller, which names the fd).
fn collect_socket(pid: i32, fd: i32, link: &str) -> Result<Option<AnonFile>, Cause> {
    let Some(inode) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse().ok()) else {
        return Ok(None);
    };
    let refuse = |e: String| Cause::Unsupported(format!("fd {fd} of process {pid} ({link}): {e}"));
    let f = dup_from(pid, fd).map_err(|e| refuse(format!("duplicating the fd: {e}")))?;
    let domain = sock::get_int(&f, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| refuse(e.to_string()))?;
    drop(f);
    match domain {
        libc::AF_UNIX => Ok(Some(AnonFile::Unix(unix::collect(pid, fd, inode).map_err(|e| refuse(format!("a UNIX socket: {e}")))?))),
        libc::AF_INET | libc::AF_INET6 => Ok(Some(AnonFile::Inet(
            inet::collect(pid, fd, domain).map_err(|e| refuse(format!("an internet socket: {e}")))?,
        ))),
        libc::AF_NETLINK => Err(refuse("a netlink socket, which torpor cannot restore".into())),
        libc::AF_PACKET => Err(refuse("a packet socket, which torpor cannot restore".into())),
        other => Err(refuse(format!("a socket of address family {other}, which torpor cannot restore"))),
    }
}

/// Refuses sockets whose peer is outside the tree, once every fd of the
/// tree is known.
pub fn check_peers(files: &mut [OpenFile]) -> Result<(), crate::engine::EngineError> {
    // Only mutual peers are pairs: a datagram socket may be connected to
    // one that is connected to nobody, or to another.
    let socks: Vec<(u64, u64)> = files
        .iter()
        .filter_map(|f| match &f.kind {
            FileKind::Anon(AnonFile::Unix(s)) => Some((s.inode, s.peer)),
            _ => None,
        })
        .collect();
    for f in files.iter_mut() {
        if let FileKind::Anon(AnonFile::Unix(s)) = &mut f.kind {
            unix::check_peer(s, &socks).map_err(|e| crate::engine::EngineError {
                step: "files".into(),
                cause: Cause::Unsupported(format!("UNIX socket socket:[{}] {}: {e}", s.inode, s.name)),
            })?;
        }
    }
    Ok(())
}

/// Creates the object again in torpor; `flags` are its saved status flags;
/// `pending` holds pair ends between the opening of two peers; `shift` is
/// how far the tree's clocks are ahead of torpor's when the tree gets a
/// time namespace.
pub fn open(
    a: &AnonFile,
    flags: u32,
    pending: &mut Pending,
    shift: Option<crate::engine::clocks::Offsets>,
) -> Result<i32, Cause> {
    let nonblock = flags & (libc::O_NONBLOCK as u32) != 0;
    let r = match a {
        AnonFile::EventFd(s) => eventfd::open(s, nonblock),
        AnonFile::TimerFd(s) => timerfd::open(s, nonblock, shift),
        AnonFile::SignalFd(s) => signalfd::open(s, nonblock),
        AnonFile::Epoll(_) => epoll::open(),
        AnonFile::Inotify(s) => inotify::open(s, nonblock),
        AnonFile::Unix(s) => unix::open(s, nonblock, pending),
        AnonFile::Inet(s) => inet::open(s, nonblock),
        AnonFile::Memfd(s) => memfd::open(s, flags),
    };
    r.map_err(|e| Cause::Refused(format!("recreating {}: {e}", a.name())))
}

impl AnonFile {
    pub fn name(&self) -> &'static str {
        match self {
            AnonFile::EventFd(_) => "an eventfd",
            AnonFile::TimerFd(_) => "a timerfd",
            AnonFile::SignalFd(_) => "a signalfd",
            AnonFile::Epoll(_) => "an epoll instance",
            AnonFile::Inotify(_) => "an inotify instance",
            AnonFile::Unix(_) => "a UNIX socket",
            AnonFile::Inet(_) => "a TCP or UDP socket",
            AnonFile::Memfd(_) => "a memfd",
        }
    }

    /// The image record of this file with its status flags.
    pub fn record(&self, flags: u32) -> FdKind {
        match self.clone() {
            AnonFile::EventFd(state) => FdKind::EventFd { flags, state },
            AnonFile::TimerFd(state) => FdKind::TimerFd { flags, state },
            AnonFile::SignalFd(state) => FdKind::SignalFd { flags, state },
            AnonFile::Epoll(state) => FdKind::Epoll { flags, state },
            AnonFile::Inotify(state) => FdKind::Inotify { flags, state },
            AnonFile::Unix(state) => FdKind::Unix { flags, state },
            AnonFile::Inet(state) => FdKind::Inet { flags, state },
            AnonFile::Memfd(state) => FdKind::Memfd { flags, state },
        }
    }

    /// The file an image record describes, with its status flags, when the
    /// record is one of these kinds.
    pub fn from_record(k: &FdKind) -> Option<(u32, AnonFile)> {
        Some(match k.clone() {
            FdKind::EventFd { flags, state } => (flags, AnonFile::EventFd(state)),
            FdKind::TimerFd { flags, state } => (flags, AnonFile::TimerFd(state)),
            FdKind::SignalFd { flags, state } => (flags, AnonFile::SignalFd(state)),
            FdKind::Epoll { flags, state } => (flags, AnonFile::Epoll(state)),
            FdKind::Inotify { flags, state } => (flags, AnonFile::Inotify(state)),
            FdKind::Unix { flags, state } => (flags, AnonFile::Unix(state)),
            FdKind::Inet { flags, state } => (flags, AnonFile::Inet(state)),
            FdKind::Memfd { flags, state } => (flags, AnonFile::Memfd(state)),
            _ => return None,
        })
    }
}

/// In a restored task whose fds are at their numbers: registers again the
/// targets of every epoll instance this process held them for.
pub fn register_epolls(p: &ProcessState, files: &[OpenFile]) -> Result<(), String> {
    let mut done = Vec::new();
    for f in &p.fds {
        let Some(OpenFile { kind: FileKind::Anon(AnonFile::Epoll(e)), .. }) = files.get(f.file as usize) else {
            continue;
        };
        if e.owner != p.pid || done.contains(&f.file) {
            continue;
        }
        done.push(f.file);
        epoll::register(f.fd, e).map_err(|err| format!("epoll fd {}: {err}", f.fd))?;
    }
    Ok(())
}

/// The file locks held through the fds of `pid`.
pub fn collect_locks(pid: i32, fds: &[crate::engine::state::Fd]) -> Result<Vec<crate::image::records::FileLock>, crate::engine::EngineError> {
    locks::collect(pid, fds)
        .map_err(|e| crate::engine::EngineError { step: format!("files {pid}"), cause: Cause::Unsupported(e) })
}

/// In a restored task whose fds are at their numbers: takes its file locks
/// again.
pub fn take_locks(p: &ProcessState) -> Result<(), String> {
    p.locks.iter().try_for_each(locks::take)
}

/// Stores the contents of the tmpfs files the processes map shared.
pub fn write_tmpfs_files<'a, W: std::io::Write>(
    w: &mut crate::image::ImageWriter<W>,
    procs: impl Iterator<Item = &'a ProcessState>,
) -> Result<(), Cause> {
    let procs: Vec<&ProcessState> = procs.collect();
    tmpfs::write(w, &procs)
}

/// Whether a restore recreates the mapped file `path` (missing, and kept in
/// the image): its identity then cannot be checked.
pub fn tmpfs_file_to_recreate(st: &crate::engine::image_io::ImageState, path: &str) -> bool {
    tmpfs::to_recreate(st, path)
}

/// Recreates the missing tmpfs files the image holds.
pub fn recreate_tmpfs_files(st: &crate::engine::image_io::ImageState) -> Result<(), Cause> {
    tmpfs::recreate(st)
}

/// The value of a `key:` line of an fdinfo text.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')).map(str::trim))
}

fn hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

fn last_os() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Takes ownership of a syscall's fd result.
fn owned(r: libc::c_long) -> Result<OwnedFd, std::io::Error> {
    if r < 0 {
        return Err(last_os());
    }
    let raw = i32::try_from(r).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A duplicate of fd `fd` of `pid` in torpor (pidfd_getfd), sharing its
/// open file description.
fn dup_from(pid: i32, fd: i32) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: pidfd_open takes integers only.
    let pidfd = owned(unsafe { libc::syscall(libc::SYS_pidfd_open, libc::c_long::from(pid), 0 as libc::c_long) })?;
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes integers only.
    owned(unsafe {
        libc::syscall(libc::SYS_pidfd_getfd, libc::c_long::from(pidfd.as_raw_fd()), libc::c_long::from(fd), 0 as libc::c_long)
    })
}

/// Returns the raw fd of `f`, leaving it open for the caller.
fn into_raw(f: OwnedFd) -> i32 {
    use std::os::fd::IntoRawFd;
    f.into_raw_fd()
}

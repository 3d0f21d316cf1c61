//! Every kind of file description (files and directories by path,
//! devices, pipes and FIFOs, descriptors handed in from outside, unlinked
//! files, the connection to the daemon, and the anonymous kernel objects:
//! eventfd, timerfd, signalfd, epoll, inotify, fanotify, UNIX, internet, netlink
//! and packet sockets, memfds; and pseudo-terminal pairs), and the objects behind files and mappings (memfd and
//! unlinked-file contents, SysV segments, file locks, signal-driven I/O,
//! tmpfs files).
//!
//! Each kind is one module and one line of the registry
//! (`engine::state::file_registry`). Anonymous-inode kinds implement
//! [`AnonKind`] on their image record type: `collect` (from fdinfo and,
//! where fdinfo is silent, from a duplicate of the fd) and `open`, which
//! creates the object again in torpor before the tasks are forked. The
//! kinds reached by path implement [`FsKind`] on their state type (the file
//! table of `engine::collect` classifies them by the file's type): their
//! image record, their `check` against this system before anything is
//! created, and `open`. Fix-ups once the tree exists (epoll targets
//! registered by the task that held them, `register_epolls`; owners of
//! signal-driven I/O, `set_sigio_owner`) follow. See `engine` for how to
//! add a kind.
//!
//! Unsafe code: the helpers every file kind shares (pidfd_getfd, lseek,
//! pwrite, fstatfs, taking ownership of a syscall's fd) call libc directly.
#![allow(unsafe_code)]

mod device;
mod epoll;
mod eventfd;
mod external;
mod fanotify;
mod held;
mod inet;
mod inotify;
mod late;
mod locks;
mod memfd;
mod netlink;
pub mod owner;
mod packet;
mod path;
pub mod pipe;
mod pty;
mod sigio;
mod signalfd;
mod sock;
pub mod sockopt;
mod sysv;
mod tcp;
mod timerfd;
mod tmpfs;
mod unix;
mod unlinked;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::engine::state::{self, FileKind, ImageState, OpenFile, ProcessState, UnlinkedRef};
use crate::engine::{procfs, Cause, Step};
use crate::image::records::{
    FdKind, MemfdObject, ObjectData, ObjectRef, UnlinkedObject, OBJECT_CHUNK,
};

pub use pty::{link as link_ptys, set_foreground, Ptys};

pub use late::{late_files, outside as late_outside, proc_file, Late, LateKind};

/// Refuses a pidfd or a `/proc` file of a process outside the trees
/// dumped.
pub fn check_late<'a>(
    files: &[OpenFile],
    processes: impl IntoIterator<Item = &'a crate::engine::state::ProcessState> + Clone,
) -> Result<(), crate::engine::EngineError> {
    late::outside(files, processes).map_err(|e| crate::engine::EngineError {
        step: Step::FileTable,
        cause: crate::engine::Cause::Unsupported(e),
    })
}

/// Refuses a pseudo-terminal pair whose master the tree holds and whose
/// slave a process outside the tree holds.
pub fn check_pty_holders(
    files: &[OpenFile],
    tree: &[i32],
) -> Result<(), crate::engine::EngineError> {
    pty::outside_holders(files, tree).map_err(|e| crate::engine::EngineError {
        step: Step::FileTable,
        cause: Cause::Unsupported(e),
    })
}
pub use fanotify::user_may as fanotify_user_may;
pub use netlink::user_may as netlink_user_may;
pub use tcp::{endpoints as tcp_endpoints, Repairing as TcpRepairing, Restored as TcpRestored};
pub use unix::{shown as unix_name, InFlight, Pending, SentBy, WAITING_LIMIT};
pub use unlinked::{create_unlinked, unlinked_dir_exists};

/// The life of one kind of anonymous-inode file, from dump to restore. Each
/// kind implements it in its own module on its image record type and has
/// one line in the registry (`engine::state::file_registry`); the
/// dispatch below is made from that registry.
pub trait AnonKind: Sized {
    /// What the kind is called in messages: "an eventfd".
    const NAME: &'static str;
    /// Which descriptors are of this kind.
    const CLAIM: Claim;
    /// The state of the descriptor `p` names, from outside the task.
    fn collect(p: &Probe<'_>) -> Result<Self, Cause>;
    /// Creates the object again in torpor before the tasks are forked.
    /// An `io::Error` is reported as "recreating NAME: ...".
    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause>;
}

/// The life of one kind of file reached by path or handed in (a file, a
/// device, a pipe end...): its record, its checks before a restore
/// creates anything, its reopening. Each kind implements it in its own
/// module on its state type and has one line in the registry
/// (`engine::state::file_registry`).
pub trait FsKind: Sized {
    /// What the kind is called in messages: "an open file".
    const NAME: &'static str;
    /// The image record of this description with its status flags.
    fn record(&self, flags: u32) -> FdKind;
    /// The description a record describes with its status flags, when the
    /// record is of this kind; an error names a value out of range.
    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>>;
    /// Refuses what this system cannot give the description (a path gone
    /// or changed, a descriptor the caller did not hand in), before the
    /// restore creates anything.
    fn check(&self, cx: &CheckCx<'_>) -> Result<(), String>;
    /// Opens the description again in torpor before the tasks are forked.
    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause>;
}

/// What a kind's `check` may use.
#[derive(Debug)]
pub struct CheckCx<'a> {
    pub st: &'a ImageState,
    /// The rights of the first task that holds the description.
    pub who: &'a owner::Acting,
    /// Descriptors the caller hands in, by key.
    pub inherit: &'a [(String, i32)],
    /// A terminal given in place of one gone.
    pub tty: Option<&'a std::path::Path>,
    /// Whether the caller gives a connection to the daemon.
    pub torpor_conn: bool,
}

/// Which descriptors a kind takes.
#[derive(Debug, Clone, Copy)]
pub enum Claim {
    /// Those whose /proc link reads exactly this.
    Link(&'static str),
    /// Memfds (`/memfd:NAME (deleted)`).
    Memfd,
    /// Sockets of these address families.
    Socket(&'static [i32]),
    /// Pseudo-terminal masters (`/dev/ptmx`, `/dev/pts/ptmx`).
    PtyMaster,
    /// Pseudo-terminal slaves (`/dev/pts/N`).
    PtySlave,
    /// TCP sockets with a connection, when the dump keeps them
    /// (`Probe::repair`); the `Socket` claim leaves them.
    TcpRepair,
    /// None: a kind that only old images hold.
    Nothing,
}

/// A descriptor of a frozen task, as a kind's `collect` sees it.
#[derive(Debug)]
pub struct Probe<'a> {
    pub pid: i32,
    pub fd: i32,
    /// Its /proc link.
    pub link: &'a str,
    /// Inode and address family, for a socket.
    pub socket: Option<(u64, i32)>,
    /// Where connections kept in repair mode go, when the dump keeps
    /// established TCP connections.
    pub tcp: Option<&'a tcp::Repairing>,
    /// A TCP socket with (or on its way to or from) a connection, which
    /// repair mode keeps.
    pub repair: bool,
    /// Where a UNIX socket leaves the descriptors in flight in its queue.
    pub inflight: Option<&'a unix::InFlight>,
}

impl Probe<'_> {
    /// `/proc/PID/fdinfo/FD` and its contents.
    pub fn fdinfo(&self) -> Result<(String, String), Cause> {
        let path = format!("/proc/{}/fdinfo/{}", self.pid, self.fd);
        let info = procfs::read(&path)?;
        Ok((path, info))
    }

    /// The refusal of a descriptor whose fdinfo at `path` did not say what
    /// torpor needs.
    pub fn bad_fdinfo(&self, path: &str, what: &str) -> Cause {
        Cause::Refused(format!(
            "fd {} of process {} ({}): {path}: {what}",
            self.fd, self.pid, self.link
        ))
    }

    /// The refusal of a descriptor torpor could not read.
    pub fn unsupported(&self, what: impl std::fmt::Display) -> Cause {
        Cause::Unsupported(format!(
            "fd {} of process {} ({}): {what}",
            self.fd, self.pid, self.link
        ))
    }
}

/// What a kind's `open` may use.
#[derive(Debug)]
pub struct OpenCx<'a> {
    /// The description's saved status flags.
    pub flags: u32,
    /// Pair ends between the opening of two peers.
    pub pending: &'a mut Pending,
    /// Memfds and SysV segments, already created.
    pub segs: &'a Segments,
    /// How far the tree's clocks are ahead of torpor's when the tree gets
    /// a time namespace.
    pub shift: Option<crate::engine::clocks::Offsets>,
    /// Whose rights open a path, and what the dump recorded of it.
    pub opening: &'a owner::Opening<'a>,
    /// The tree's pipes, already created.
    pub pipes: &'a mut pipe::PipeEnds,
    /// Descriptors the caller hands in, by key.
    pub inherit: &'a [(String, i32)],
    /// A terminal given in place of one gone.
    pub tty: Option<&'a std::path::Path>,
    /// The connection to the daemon the caller gives the tree.
    pub torpor_conn: Option<i32>,
    /// The pseudo-terminal pairs made so far.
    pub ptys: &'a mut Ptys,
    /// TCP connections in repair mode until the tree is complete.
    pub tcp: &'a mut tcp::Restored,
    /// The description being opened: its index in the image's files.
    pub file: u32,
    /// The descriptors in flight in the tree's UNIX sockets.
    pub rights: &'a [crate::engine::state::Rights],
    /// The connections waiting on the tree's UNIX listeners.
    pub waiting: &'a [crate::engine::state::Waiting],
    /// The credentials of queued messages of the tree's UNIX sockets.
    pub msg_creds: &'a [crate::engine::state::MsgCreds],
    /// A socket's options beyond its record's, set before it is bound.
    pub sock_opts: &'a [crate::image::records::RawSockOpt],
}

impl OpenCx<'_> {
    pub fn nonblock(&self) -> bool {
        self.flags & (libc::O_NONBLOCK as u32) != 0
    }

    /// The flags a description is reopened with by path: its status flags
    /// without the creation flags (the file exists) or `O_ASYNC` (set later
    /// by the task itself, `arm_sigio`).
    pub fn open_flags(&self) -> i32 {
        use crate::arch::Bits;
        (self.flags.bits() & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_ASYNC))
            | libc::O_CLOEXEC
    }
}

/// Moves `fd` to the lowest free number at or above `high` (closing the
/// old one), out of the way of the numbers the tree takes.
pub fn move_high(fd: i32, high: i32) -> Result<i32, Cause> {
    // SAFETY: fcntl on an fd we own; the old one is closed after.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
    let err = last_os();
    // SAFETY: closing the fd just duplicated.
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(err.into());
    }
    Ok(n)
}

/// A duplicate of `given`, a descriptor the caller handed in (`what` it
/// stands for, in the error).
pub fn dup_given(given: i32, what: std::fmt::Arguments<'_>) -> Result<i32, Cause> {
    // SAFETY: duplicating a descriptor the caller handed over.
    let fd = unsafe { libc::fcntl(given, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        let e = last_os();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")).into());
    }
    Ok(fd)
}

/// Opens `path` with torpor's own rights: a path torpor made itself
/// (`/proc/self/fd/N`, an object's file) or one the operator named.
pub fn open_own(path: &str, flags: i32) -> Result<i32, Cause> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| Cause::Refused(format!("path {path:?} holds a NUL byte")))?;
    // SAFETY: open with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        let e = last_os();
        return Err(std::io::Error::new(e.kind(), format!("opening {path}: {e}")).into());
    }
    Ok(fd)
}

macro_rules! define_dispatch {
    (fs { $($fs:ident($fst:ty),)* } anon { $($anon:ident($ant:ty),)* }) => {
        impl FileKind {
            /// What the kind is called in messages: "an eventfd".
            pub fn name(&self) -> &'static str {
                match self {
                    $(FileKind::$fs(_) => <$fst as FsKind>::NAME,)*
                    $(FileKind::$anon(_) => <$ant as AnonKind>::NAME,)*
                }
            }

            /// The image record of a description of this kind with its
            /// status flags.
            pub fn record(&self, flags: u32) -> FdKind {
                if let FileKind::TcpConnection(c) = self {
                    if c.socket.tcp_state != tcp::ESTABLISHED {
                        return FdKind::TcpClosing { flags, state: c.clone() };
                    }
                }
                match self {
                    $(FileKind::$fs(s) => s.record(flags),)*
                    $(FileKind::$anon(state) => FdKind::$anon { flags, state: state.clone() },)*
                }
            }

            /// The description an image record describes, with its status
            /// flags.
            pub fn from_record(k: &FdKind) -> Result<(u32, FileKind), String> {
                // Each kept TCP state has its variant: an established
                // connection the one older readers know.
                match k {
                    FdKind::TcpConnection { state, .. }
                        if state.socket.tcp_state != tcp::ESTABLISHED =>
                    {
                        return Err(tcp::bad_state(state, "an established connection"));
                    }
                    FdKind::TcpClosing { state, .. }
                        if state.socket.tcp_state == tcp::ESTABLISHED
                            || !tcp::kept_state(state.socket.tcp_state) =>
                    {
                        return Err(tcp::bad_state(state, "a half-closed or closing connection"));
                    }
                    FdKind::TcpClosing { flags, state } => {
                        return Ok((*flags, FileKind::TcpConnection(state.clone())));
                    }
                    _ => {}
                }
                match k {
                    $(FdKind::$anon { flags, state } => {
                        return Ok((*flags, FileKind::$anon(state.clone())))
                    })*
                    _ => {}
                }
                $(
                    if let Some(r) = <$fst as FsKind>::from_record(k) {
                        return r.map(|(flags, s)| (flags, FileKind::$fs(s)));
                    }
                )*
                Err("a kind of file this torpor does not know".into())
            }

            /// Refuses what this system cannot give the description, before
            /// the restore creates anything.
            pub fn check(&self, cx: &CheckCx<'_>) -> Result<(), String> {
                match self {
                    $(FileKind::$fs(s) => s.check(cx),)*
                    // Anonymous objects are made from the image alone.
                    _ => Ok(()),
                }
            }

            /// Opens the description again in torpor before the tasks are
            /// forked. An I/O error of an anonymous kind is reported as
            /// "recreating NAME: ...".
            pub fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
                match self {
                    $(FileKind::$fs(s) => s.open(cx),)*
                    $(FileKind::$anon(s) => s.open(cx).map_err(|e| match e {
                        Cause::Io(e) => Cause::Refused(format!(
                            "recreating {}: {e}",
                            <$ant as AnonKind>::NAME
                        )),
                        e => e,
                    }),)*
                }
            }
        }

        /// The anonymous kind that claims the descriptor `p` names,
        /// collected; `None` when no kind does.
        fn collect_claimed(p: &Probe<'_>) -> Result<Option<FileKind>, Cause> {
            $(
                if claims(<$ant as AnonKind>::CLAIM, p) {
                    return <$ant as AnonKind>::collect(p).map(|s| Some(FileKind::$anon(s)));
                }
            )*
            Ok(None)
        }
    };
}
crate::engine::state::file_registry!(define_dispatch);

fn claims(claim: Claim, p: &Probe<'_>) -> bool {
    match claim {
        Claim::Link(l) => p.link == l,
        Claim::Memfd => memfd::name_of(p.link).is_some(),
        Claim::Socket(families) => {
            !p.repair && p.socket.is_some_and(|(_, f)| families.contains(&f))
        }
        Claim::TcpRepair => p.repair,
        Claim::PtyMaster => pty::is_master(p.link),
        Claim::PtySlave => pty::slave_index(p.link).is_some(),
        Claim::Nothing => false,
    }
}

/// The state of fd `fd` of `pid` when `link` (its /proc link) names one of
/// the kinds of the registry; `None` for any other file. Sockets of other
/// families are refused, naming the fd.
pub fn collect(
    pid: i32,
    fd: i32,
    link: &str,
    tcp: Option<&tcp::Repairing>,
    inflight: Option<&unix::InFlight>,
) -> Result<Option<FileKind>, Cause> {
    let mut p = Probe {
        pid,
        fd,
        link,
        socket: None,
        tcp,
        repair: false,
        inflight,
    };
    if let Some(inode) = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
    {
        let f = dup_from(pid, fd).map_err(|e| p.unsupported(format!("duplicating the fd: {e}")))?;
        let domain =
            sock::get_int(&f, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| p.unsupported(e))?;
        p.socket = Some((inode, domain));
        if tcp.is_some() && (domain == libc::AF_INET || domain == libc::AF_INET6) {
            let proto = sock::get_int(&f, libc::SOL_SOCKET, libc::SO_PROTOCOL)
                .map_err(|e| p.unsupported(e))?;
            let ty =
                sock::get_int(&f, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| p.unsupported(e))?;
            if proto == libc::IPPROTO_TCP && ty == libc::SOCK_STREAM {
                let state = inet::tcp_state(&f).map_err(|e| p.unsupported(e))?;
                p.repair = tcp::takes(state);
            }
        }
    }
    if let Some(a) = collect_claimed(&p)? {
        return Ok(Some(a));
    }
    match p.socket {
        None => Ok(None),
        Some((_, other)) => Err(p.unsupported(format!(
            "a socket of address family {other}, which torpor cannot restore"
        ))),
    }
}

/// The options of socket `fd` of `pid` that differ from a new socket's of
/// its kind (`sockopt`).
pub fn socket_options(pid: i32, fd: i32) -> Result<Vec<crate::image::records::RawSockOpt>, String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    sockopt::collect(&f)
}

/// The path a description in flight is reopened by, whose identity the
/// image records (`file-owner`).
pub fn flight_path(kind: &FileKind) -> Option<&str> {
    match kind {
        FileKind::Path(state::PathFile { path, .. })
        | FileKind::Device(state::DeviceFile { path, .. })
        | FileKind::Pipe(state::PipeFile {
            fifo: Some(path), ..
        }) => Some(path),
        _ => None,
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
            FileKind::Unix(s) => Some((s.inode, s.peer)),
            _ => None,
        })
        .collect();
    for f in files.iter_mut() {
        if let FileKind::Unix(s) = &mut f.kind {
            unix::check_peer(s, &socks).map_err(|e| crate::engine::EngineError {
                step: Step::FileTable,
                cause: Cause::Unsupported(format!(
                    "UNIX socket socket:[{}] {}: {e}",
                    s.inode, s.name
                )),
            })?;
        }
    }
    Ok(())
}

/// In a restored task whose fds are at their numbers: registers again the
/// targets of every epoll instance this process held them for.
pub fn register_epolls(p: &ProcessState, files: &[OpenFile]) -> Result<(), String> {
    let mut done = Vec::new();
    for f in &p.fds {
        let Some(OpenFile {
            kind: FileKind::Epoll(e),
            ..
        }) = files.get(f.file as usize)
        else {
            continue;
        };
        if e.owner != p.task.pid || done.contains(&f.file) {
            continue;
        }
        done.push(f.file);
        epoll::register(f.fd, e).map_err(|err| format!("epoll fd {}: {err}", f.fd))?;
    }
    Ok(())
}

/// The file locks held through the fds of `pid`.
pub fn collect_locks(
    pid: i32,
    fds: &[crate::engine::state::Fd],
) -> Result<Vec<crate::image::records::FileLock>, crate::engine::EngineError> {
    locks::collect(pid, fds).map_err(|e| crate::engine::EngineError {
        step: Step::Files(pid),
        cause: Cause::Unsupported(e),
    })
}

/// In a restored task whose fds are at their numbers: takes its file locks
/// again.
/// The owner and signal of fd `fd` of `pid` (signal-driven I/O, leases).
pub fn collect_sigio(pid: i32, fd: i32) -> Result<crate::image::records::SigIo, String> {
    sigio::collect(pid, fd)
}

pub use sigio::{arm as arm_sigio, set_owner as set_sigio_owner, O_ASYNC};

pub fn take_locks(p: &ProcessState) -> Result<(), String> {
    p.task.locks.iter().try_for_each(locks::take)
}

/// The POSIX locks of `p`, each with the record a remote `fcntl` takes it
/// with in the restored process once torpor closed its last descriptor
/// there (`locks` says why not before).
pub fn posix_locks(
    p: &ProcessState,
) -> Result<Vec<(&crate::image::records::FileLock, KFlock)>, String> {
    p.task
        .locks
        .iter()
        .filter(|l| l.kind == crate::image::records::LockKind::Posix)
        .map(|l| Ok((l, locks::posix_record(l)?)))
        .collect()
}

pub use locks::{failed as lock_failed, KFlock};

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
pub fn tmpfs_file_to_recreate(st: &ImageState, path: &str) -> bool {
    tmpfs::to_recreate(st, path)
}

/// Recreates the missing tmpfs files the image holds; dropping the result
/// before [`TmpfsMade::keep`] removes them.
pub fn recreate_tmpfs_files(st: &ImageState) -> Result<TmpfsMade, Cause> {
    tmpfs::recreate(st)
}

/// Refuses, before anything is created, tmpfs files the restore would make
/// where it should not (see `tmpfs`).
pub fn check_tmpfs_files(st: &ImageState) -> Result<(), String> {
    tmpfs::check(st)
}

pub use tmpfs::Made as TmpfsMade;

/// The backing of a mapping of a memfd or a SysV segment; `None` for any
/// other mapping.
pub fn mapped_object(m: &crate::engine::procfs::MapEntry) -> Option<crate::engine::state::Backing> {
    memfd::mapping(m).or_else(|| sysv::mapping(m))
}

/// Stores the memfds and SysV segments the processes hold or map, before
/// any process: a restore creates them before forking.
/// `flight`: (open file index, torpor's descriptor) of the descriptions
/// only a queued message holds.
pub fn write_objects<'a, W: std::io::Write>(
    w: &mut crate::image::ImageWriter<W>,
    procs: impl Iterator<Item = &'a ProcessState>,
    files: &[OpenFile],
    flight: &[(u32, i32)],
) -> Result<(), Cause> {
    let procs: Vec<&ProcessState> = procs.collect();
    memfd::write(w, &procs, files, flight)?;
    sysv::write(w, &procs)?;
    write_unlinked(w, &procs, files, flight)
}

/// Stores each regular file the processes hold open or map after it was
/// unlinked, once per inode: an `unlinked-file` record, then its contents,
/// read through the first fd (or mapping) that reaches it.
fn write_unlinked<W: std::io::Write>(
    w: &mut crate::image::ImageWriter<W>,
    procs: &[&ProcessState],
    files: &[OpenFile],
    flight: &[(u32, i32)],
) -> Result<(), Cause> {
    use crate::engine::state::{Backing, FileKind};
    use std::os::unix::fs::MetadataExt;
    let mut sources: Vec<(u64, String)> = Vec::new();
    // One only a queued message holds: through torpor's copy of it.
    for &(file, fd) in flight {
        if let Some(FileKind::UnlinkedFile(UnlinkedRef { inode, .. })) =
            files.get(file as usize).map(|f| &f.kind)
        {
            sources.push((*inode, format!("/proc/self/fd/{fd}")));
        }
    }
    for p in procs {
        for fd in &p.fds {
            if let Some(FileKind::UnlinkedFile(UnlinkedRef { inode, .. })) =
                files.get(fd.file as usize).map(|f| &f.kind)
            {
                sources.push((*inode, format!("/proc/{}/fd/{}", p.task.pid, fd.fd)));
            }
        }
    }
    for p in procs {
        for v in &p.vmas {
            if let Backing::Unlinked { inode, .. } = v.backing {
                sources.push((
                    inode,
                    format!("/proc/{}/map_files/{:x}-{:x}", p.task.pid, v.start, v.end),
                ));
            }
        }
    }
    let mut done = std::collections::BTreeSet::new();
    for (inode, source) in sources {
        if !done.insert(inode) {
            continue;
        }
        let link = std::fs::read_link(&source)?;
        let link = link.to_string_lossy();
        let path = link.strip_suffix(" (deleted)").unwrap_or(&link);
        let f = std::fs::File::open(&source)?;
        let md = f.metadata()?;
        let object = UnlinkedObject {
            inode,
            path: path.into(),
            size: md.len(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        };
        w.write(&object)?;
        write_contents(w, &f, object.size, ObjectRef::Unlinked(inode))?;
    }
    Ok(())
}

/// Streams the contents of a memfd or SysV segment (`f` reads it) as
/// `object-data` records: only data ranges (`SEEK_DATA`), and of those only
/// chunks that are not all zeros, so a sparse object costs nothing.
fn write_contents<W: std::io::Write>(
    w: &mut crate::image::ImageWriter<W>,
    f: &std::fs::File,
    size: u64,
    object: ObjectRef,
) -> Result<(), Cause> {
    use std::os::unix::fs::FileExt;
    let seek = |at: u64, whence: i32| -> Result<Option<u64>, std::io::Error> {
        let Ok(off) = libc::off_t::try_from(at) else {
            return Ok(None);
        };
        // SAFETY: lseek on our own fd, integer arguments.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = last_os();
            // ENXIO: no data at or after `at`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(u64::try_from(r).ok())
    };
    let mut buf = vec![0u8; OBJECT_CHUNK];
    let mut at = 0u64;
    while at < size {
        let Some(start) = seek(at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(start, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        // Chunks aligned to the chunk size, whatever the data ranges.
        let mut pos = start;
        while pos < end {
            let room = OBJECT_CHUNK as u64 - pos % OBJECT_CHUNK as u64;
            // At most `room`, itself at most OBJECT_CHUNK: fits.
            let n = usize::try_from(room.min(end - pos)).unwrap_or(OBJECT_CHUNK);
            f.read_exact_at(&mut buf[..n], pos)?;
            if buf[..n].iter().any(|b| *b != 0) {
                w.write(&ObjectData {
                    object,
                    offset: pos,
                    bytes: buf[..n].to_vec(),
                })?;
            }
            pos += n as u64;
        }
        at = end.max(start + 1);
    }
    Ok(())
}

/// Writes all of `bytes` at `off` of `fd`.
fn pwrite_all(fd: i32, bytes: &[u8], off: u64) -> Result<(), std::io::Error> {
    let mut done = 0;
    while done < bytes.len() {
        let at = libc::off_t::try_from(off + done as u64)
            .map_err(|_| std::io::Error::other(format!("offset {off} too large here")))?;
        // SAFETY: writing from our buffer into our fd.
        let n = unsafe { libc::pwrite(fd, bytes[done..].as_ptr().cast(), bytes.len() - done, at) };
        if n <= 0 {
            return Err(last_os());
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

/// The file system magic of the file behind `fd` (`fstatfs`).
fn fs_magic(fd: i32) -> Result<u64, std::io::Error> {
    // SAFETY: statfs is plain integers; all-zero is valid.
    let mut s: libc::statfs = unsafe { core::mem::zeroed() };
    // SAFETY: fstatfs writes one struct.
    if unsafe { libc::fstatfs(fd, &raw mut s) } < 0 {
        return Err(last_os());
    }
    // f_type is i64 in glibc's x86_64 statfs, u32 in musl's ARM one.
    #[allow(
        clippy::unnecessary_cast,
        clippy::cast_sign_loss,
        clippy::cast_lossless
    )]
    let magic = s.f_type as u64;
    Ok(magic)
}

/// The memfds and SysV segments of an image during a restore: created
/// before the tasks are forked (they inherit the memfds), filled from the
/// image's `object-data` records, mapped by each task, sealed or marked
/// for removal once every task has mapped them.
#[derive(Debug, Default)]
pub struct Segments {
    /// torpor's fd of each memfd, by id.
    memfds: BTreeMap<u64, (i32, MemfdObject)>,
    sysv: BTreeMap<i32, sysv::Restored>,
    /// torpor's fd of each recreated unlinked file, by inode at the dump,
    /// with its size.
    unlinked: BTreeMap<u64, (i32, u64)>,
    /// The files each task maps, executes and works in.
    held: held::Held,
}

impl Segments {
    /// Refuses, before anything is created, segments that cannot come back
    /// (their id or key is another segment's now).
    pub fn check(st: &ImageState) -> Result<(), String> {
        sysv::check(st)
    }

    /// Creates the image's memfds (fds at or above `high`) and SysV
    /// segments, and opens the files the tasks map, execute and work in
    /// (`made`: the tmpfs files the restore recreated).
    pub fn create(st: &ImageState, high: i32, made: &[String]) -> Result<Segments, Cause> {
        let mut segs = Segments::default();
        for o in &st.memfds {
            let f = memfd::create(o)
                .map_err(|e| Cause::Refused(format!("recreating memfd {}: {e}", o.name)))?;
            // SAFETY: fcntl on our own fd; the duplicate is ours.
            let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, high) };
            if fd < 0 {
                return Err(last_os().into());
            }
            segs.memfds.insert(o.id, (fd, o.clone()));
        }
        for s in &st.sysv {
            let r = sysv::prepare(s).map_err(|e| Cause::Refused(e.to_string()))?;
            segs.sysv.insert(s.shmid, r);
        }
        for o in &st.unlinked {
            let (path, size, inode) = (
                String::from_utf8_lossy(o.path.as_bytes()),
                &o.size,
                &o.inode,
            );
            let who = unlinked_holder(st, *inode).ok_or_else(|| {
                Cause::Refused(format!("unlinked file {path}: no process holds or maps it"))
            })?;
            let tmp = unlinked::create_unlinked(&path, &[], &who)?;
            // SAFETY: fcntl on our own fd; the duplicate is ours.
            let fd = unsafe { libc::fcntl(tmp, libc::F_DUPFD_CLOEXEC, high) };
            let dup_error = last_os();
            // SAFETY: closing the creation fd; `fd` holds the file if valid.
            unsafe { libc::close(tmp) };
            if fd < 0 {
                return Err(dup_error.into());
            }
            segs.unlinked.insert(*inode, (fd, *size));
            let len = libc::off_t::try_from(*size).map_err(|_| {
                Cause::Refused(format!("unlinked {path} of {size} bytes is too large here"))
            })?;
            // SAFETY: ftruncate on our own fd: the size, holes included.
            if unsafe { libc::ftruncate(fd, len) } < 0 {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("sizing unlinked {path} to {size} bytes: {e}"),
                )
                .into());
            }
            // Owner first: chown clears set-id bits. With the holder's
            // rights: a file another user owned cannot be made.
            let given = owner::as_user(&who, || {
                // SAFETY: fchown on our own fd, integer arguments.
                let chown = unsafe { libc::fchown(fd, o.uid, o.gid) };
                // SAFETY: fchmod on our own fd, integer arguments.
                chown == 0 && unsafe { libc::fchmod(fd, o.mode) } == 0
            })?;
            if !given {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("giving unlinked {path} its owner and mode: {e}"),
                )
                .into());
            }
        }
        segs.held = held::Held::open(st, high, made)?;
        Ok(segs)
    }

    /// torpor's fds of the memfds and unlinked files, which each task
    /// keeps until its mappings are made.
    pub fn fds(&self) -> Vec<i32> {
        self.memfds
            .values()
            .map(|(fd, _)| *fd)
            .chain(self.unlinked.values().map(|(fd, _)| *fd))
            .chain(self.held.fds())
            .collect()
    }

    /// The files each task maps, executes and works in, opened as it.
    pub fn held(&self) -> &held::Held {
        &self.held
    }

    /// Where a task opens memfd `id` to map it: torpor's fd, inherited.
    pub fn memfd_path(&self, id: u64) -> Result<String, Cause> {
        let (fd, _) = self
            .memfds
            .get(&id)
            .ok_or_else(|| Cause::Refused(format!("memfd {id} is not in the image")))?;
        Ok(format!("/proc/self/fd/{fd}"))
    }

    /// Where a description of unlinked file `inode` is reopened.
    pub fn unlinked_path(&self, inode: u64) -> Result<String, Cause> {
        let (fd, _) = self
            .unlinked
            .get(&inode)
            .ok_or_else(|| Cause::Refused(format!("unlinked file {inode} is not in the image")))?;
        Ok(format!("/proc/self/fd/{fd}"))
    }

    /// Writes one `object-data` record into its object.
    pub fn fill(&mut self, d: &ObjectData) -> Result<(), Cause> {
        match d.object {
            ObjectRef::Memfd(id) => {
                let (fd, o) = self.memfds.get(&id).ok_or_else(|| {
                    Cause::Refused(format!("contents of memfd {id}, which is not in the image"))
                })?;
                if d.offset
                    .checked_add(d.bytes.len() as u64)
                    .is_none_or(|e| e > o.size)
                {
                    return Err(Cause::Refused(format!(
                        "{} bytes at {} overflow memfd {} of {} bytes",
                        d.bytes.len(),
                        d.offset,
                        o.name,
                        o.size
                    )));
                }
                pwrite_all(*fd, &d.bytes, d.offset)
                    .map_err(|e| Cause::Refused(format!("filling memfd {}: {e}", o.name)))
            }
            ObjectRef::Unlinked(inode) => {
                let (fd, size) = self.unlinked.get(&inode).ok_or_else(|| {
                    Cause::Refused(format!(
                        "contents of unlinked file {inode}, which is not in the image"
                    ))
                })?;
                if d.offset
                    .checked_add(d.bytes.len() as u64)
                    .is_none_or(|e| e > *size)
                {
                    return Err(Cause::Refused(format!(
                        "{} bytes at {} overflow unlinked file {inode} of {size} bytes",
                        d.bytes.len(),
                        d.offset
                    )));
                }
                pwrite_all(*fd, &d.bytes, d.offset)
                    .map_err(|e| Cause::Refused(format!("filling unlinked file {inode}: {e}")))
            }
            ObjectRef::Sysv(id) => {
                let s = self.sysv.get_mut(&id).ok_or_else(|| {
                    Cause::Refused(format!(
                        "contents of SysV segment {id}, which is not in the image"
                    ))
                })?;
                s.fill(d.offset, &d.bytes)
                    .map_err(|e| Cause::Refused(e.to_string()))
            }
        }
    }

    /// In a task being rebuilt: attaches its SysV segments in place.
    pub fn attach_sysv(
        &self,
        r: &mut crate::engine::remote::Remote<'_>,
        p: &ProcessState,
    ) -> Result<(), Cause> {
        let sizes: BTreeMap<i32, u64> = self.sysv.values().map(|s| (s.shmid(), s.size())).collect();
        sysv::attach(r, p, &sizes)
    }

    /// Once every task has its mappings: memfds get their seals, segments
    /// marked for removal are removed, torpor lets go of all of them.
    pub fn finish(&mut self) -> Result<(), Cause> {
        for (fd, o) in self.memfds.values() {
            memfd::seal(*fd, o).map_err(|e| {
                Cause::Refused(format!("sealing memfd {} with {:#x}: {e}", o.name, o.seals))
            })?;
        }
        for s in self.sysv.values_mut() {
            s.finish().map_err(|e| Cause::Refused(e.to_string()))?;
        }
        Ok(())
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        for fd in self
            .memfds
            .values()
            .map(|(fd, _)| fd)
            .chain(self.unlinked.values().map(|(fd, _)| fd))
        {
            // SAFETY: closing the fds this struct opened.
            unsafe { libc::close(*fd) };
        }
    }
}

/// Whose rights recreate unlinked file `inode`: the first process holding
/// or mapping it.
pub fn unlinked_holder(st: &ImageState, inode: u64) -> Option<owner::Acting> {
    use crate::engine::state::Backing;
    st.processes
        .iter()
        .find(|p| {
            p.fds.iter().any(|f| {
                matches!(st.files.get(f.file as usize).map(|o| &o.kind),
                    Some(FileKind::UnlinkedFile(UnlinkedRef { inode: i, .. })) if *i == inode)
            }) || p
                .vmas
                .iter()
                .any(|v| matches!(v.backing, Backing::Unlinked { inode: i, .. } if i == inode))
        })
        .or_else(|| {
            // One only a queued message holds: the holder of the socket.
            let i = st.files.iter().position(|f| {
                matches!(&f.kind, FileKind::UnlinkedFile(UnlinkedRef { inode: i, .. }) if *i == inode)
            })?;
            owner::holders(st).get(i).copied().flatten()
        })
        .map(owner::Acting::of)
}

/// The value of a `key:` line of an fdinfo text.
fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

fn last_os() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Takes ownership of a syscall's fd result.
#[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit ARM
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
pub(crate) fn dup_from(pid: i32, fd: i32) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: pidfd_open takes integers only.
    let pidfd = owned(unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            libc::c_long::from(pid),
            0 as libc::c_long,
        )
    })?;
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes integers only.
    owned(unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            libc::c_long::from(pidfd.as_raw_fd()),
            libc::c_long::from(fd),
            0 as libc::c_long,
        )
    })
}

/// Returns the raw fd of `f`, leaving it open for the caller.
fn into_raw(f: OwnedFd) -> i32 {
    use std::os::fd::IntoRawFd;
    f.into_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::Backing;

    const SMAPS: &str = "\
7f062f5ac000-7f062f6ac000 rw-p 00002000 00:01 3097                       /memfd:hello (deleted)
VmFlags: rd wr mr mw me ac
7f062f6ac000-7f062f7ac000 r--s 00000000 00:01 3098                       /memfd:sealed (deleted)
VmFlags: rd sh mr me ms
50100000-50104000 r--s 00000000 00:01 0                          /SYSV545233bc (deleted)
VmFlags: rd mr me ms
50000000-50004000 rw-s 00001000 00:01 32772                      /SYSV545233bc (deleted)
VmFlags: rd wr sh mr mw me ms
7f062f992000-7f062f996000 rw-s 00000000 00:01 77                 /SYSVnothex (deleted)
VmFlags: rd wr sh mr mw me ms
7f062f996000-7f062f99a000 rw-s 00000000 08:01 78                 /memfd:x
VmFlags: rd wr sh mr mw me ms
";

    fn connection(state: u8) -> crate::image::records::TcpConnection {
        let mut local = vec![2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
        local.resize(16, 0);
        let mut peer = vec![2u8, 0, 0xc3, 0x51, 127, 0, 0, 1];
        peer.resize(16, 0);
        let mut c = crate::image::records::TcpConnection::default();
        c.socket.family = libc::AF_INET;
        c.socket.local = local;
        c.socket.peer = peer;
        c.socket.tcp_state = state;
        c
    }

    /// An established connection keeps the variant older readers know;
    /// every other kept state takes `TcpClosing`, and each variant is
    /// refused holding the other's states.
    #[test]
    fn kept_tcp_states_and_their_variants() {
        let est = FileKind::TcpConnection(connection(1));
        assert!(matches!(
            est.record(2),
            FdKind::TcpConnection { flags: 2, .. }
        ));
        for state in [4u8, 5, 8, 9, 11] {
            let k = FileKind::TcpConnection(connection(state));
            let r = k.record(0o4002);
            let FdKind::TcpClosing { flags, state: c } = &r else {
                panic!("state {state}: {r:?}")
            };
            assert_eq!((*flags, c.socket.tcp_state), (0o4002, state));
            assert_eq!(FileKind::from_record(&r), Ok((0o4002, k)));
        }
        let e = FileKind::from_record(&FdKind::TcpConnection {
            flags: 0,
            state: connection(8),
        })
        .unwrap_err();
        assert_eq!(
            e,
            "a kept TCP connection 127.0.0.1:8080 -> 127.0.0.1:50001 recorded as an established connection in state CLOSE_WAIT"
        );
        for (state, name) in [
            (1u8, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (6, "TIME_WAIT"),
            (10, "LISTEN"),
        ] {
            let e = FileKind::from_record(&FdKind::TcpClosing {
                flags: 0,
                state: connection(state),
            })
            .unwrap_err();
            assert_eq!(
                e,
                format!("a kept TCP connection 127.0.0.1:8080 -> 127.0.0.1:50001 recorded as a half-closed or closing connection in state {name}")
            );
        }
    }

    #[test]
    fn mappings_of_memfds_and_segments() {
        let maps = procfs::parse_smaps("smaps", SMAPS).expect("smaps");
        let got: Vec<Option<Backing>> = maps.iter().map(mapped_object).collect();
        assert_eq!(
            got,
            vec![
                Some(Backing::Memfd {
                    id: 3097,
                    offset: 0x2000,
                    may_write: true
                }),
                Some(Backing::Memfd {
                    id: 3098,
                    offset: 0,
                    may_write: false
                }),
                // Segment 0 has inode 0; SHM_RDONLY leaves no `mw`.
                Some(Backing::Sysv {
                    shmid: 0,
                    offset: 0,
                    read_only: true
                }),
                Some(Backing::Sysv {
                    shmid: 32772,
                    offset: 0x1000,
                    read_only: false
                }),
                None,
                None,
            ]
        );
    }
}

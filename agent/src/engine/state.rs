//! The process-tree state the engine saves and rebuilds: plain data, no
//! runtime resources. Architecture-specific register files are opaque byte
//! strings here; the image header names the architecture they belong to.

use serde::{Deserialize, Serialize};

use crate::arch::Bits;
use crate::image::records::{self, FileId, VmaKind};

/// Everything in an image except page contents.
#[derive(Debug, Default)]
pub struct ImageState {
    pub files: Vec<OpenFile>,
    pub pipes: Vec<PipeState>,
    pub processes: Vec<ProcessState>,
    /// Contents of tmpfs files the tree maps shared, by chunk.
    pub tmpfs_files: Vec<records::TmpfsFile>,
    /// Memfds the tree holds or maps (their contents stream at restore).
    pub memfds: Vec<records::MemfdObject>,
    /// SysV shared memory segments the tree has attached.
    pub sysv: Vec<records::SysvShm>,
    /// Regular files unlinked while held open or mapped.
    pub unlinked: Vec<records::UnlinkedObject>,
    /// Pages the image holds (zero runs included).
    pub pages: u64,
    /// Where each page record goes, in image order.
    pub page_runs: Vec<PageRun>,
    /// The image's page size (the header's, which is this host's).
    pub page_size: u64,
    /// The tree's clocks at the freeze; `None` if the image has no clocks
    /// record.
    pub clocks: Option<records::Clocks>,
    /// What each path the restore opens by name was at the dump, by path
    /// (`file-owner` records; none in images older than format 2.1).
    pub owners: std::collections::BTreeMap<String, records::FileOwner>,
    /// The user the checkpoint was taken for, when not root.
    pub requested_by: Option<records::RequestedBy>,
    /// The trees' roots and application names (`tree` records; none in
    /// images older than format 2.2 or of one unnamed tree).
    pub trees: Vec<records::Tree>,
    /// For one tree of a several-tree image restored on its own
    /// (`engine::trees`): what belongs to the image's other trees, whose
    /// records the restore passes over.
    pub others: Option<Others>,
    /// Descriptors in flight in the queues of the tree's UNIX sockets
    /// (`unix-rights` records; none in images older than format 2.5).
    pub rights: Vec<Rights>,
    /// Socket options beyond an fd record's, by index into `files`
    /// (`sock-opts` records; none in images older than format 2.5).
    pub sock_opts: std::collections::BTreeMap<u32, Vec<records::RawSockOpt>>,
    /// The connections waiting on the tree's UNIX listeners (`unix-waiting`
    /// records; none in images older than format 2.6).
    pub waiting: Vec<Waiting>,
    /// The cgroups (v2) the tree's processes were in (`cgroup` records;
    /// none in images older than format 2.7).
    pub cgroups: Vec<records::Cgroup>,
    /// The credentials of queued messages of the tree's UNIX sockets
    /// (`unix-creds` records; none in images older than format 2.7).
    pub msg_creds: Vec<MsgCreds>,
}

/// The credentials message `message` of the queue of UNIX socket `socket`
/// (an index into [`ImageState::files`]) was sent with: the sender's pid,
/// a process of the tree, and its uid and gid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgCreds {
    pub socket: u32,
    pub message: u32,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The clients of the connections waiting to be accepted by UNIX listener
/// `listener`, in the order `accept` takes them: indices into
/// [`ImageState::files`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    pub listener: u32,
    pub clients: Vec<u32>,
}

/// The most descriptors one message passes (the kernel's `SCM_MAX_FD`).
pub const RIGHTS_LIMIT: usize = 253;

/// How deep sockets with descriptors in their queue nest in flight in an
/// image: a socket a process holds passes one (1) whose queue passes one
/// (2) whose queue passes one (3) whose queue passes descriptors.
pub const RIGHTS_DEPTH: usize = 3;

/// The descriptors message `message` of the queue of UNIX socket `socket`
/// passes: indices into [`ImageState::files`], in the message's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    pub socket: u32,
    pub message: u32,
    pub files: Vec<u32>,
}

/// The processes and objects of the trees a part leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Others {
    pub pids: std::collections::BTreeSet<i32>,
    pub objects: Vec<records::ObjectRef>,
}

/// One page record: `pages` pages at `vaddr` of `processes[process]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub process: usize,
    pub vaddr: u64,
    pub pages: u32,
}

/// One process of the tree: the image records that describe it (its
/// [`records::Task`], [`records::MmFields`], one [`records::Thread`] per
/// thread, seccomp filters and file owners) with its mappings and fds in
/// the engine's typed form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessState {
    /// Ids, credentials, paths, limits, signal dispositions, timers and
    /// locks; `task.comm` and `task.sigmask` are those of the first thread.
    /// A task with an `exit_status` is a zombie: it has nothing else.
    pub task: records::Task,
    /// The mm fields PR_SET_MM_MAP restores, with the auxiliary vector.
    pub mm: records::MmFields,
    pub threads: Vec<records::Thread>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
    /// Seccomp filters beyond torpor's own, oldest first, that every
    /// thread runs under.
    pub seccomp: Vec<records::SeccompFilter>,
    /// What threads run under beyond `seccomp`: strict mode or filters of
    /// their own, each thread's oldest first (none when every thread runs
    /// under `seccomp` alone).
    pub thread_seccomp: Vec<records::ThreadSeccomp>,
    /// Scheduling, prctl attributes, `oom_score_adj` and `madvise` flags
    /// (the `task-attrs` record; the default when the image has none).
    pub attrs: records::TaskAttrs,
    /// What the paths this process held, mapped or worked in were at the
    /// dump.
    pub owners: Vec<records::FileOwner>,
    /// Its AIO contexts, by ring address, each with every completion not
    /// yet reaped (`first` 0); their rings are not among `vmas`.
    pub aio: Vec<records::AioRing>,
    /// Its `membarrier` registrations (none when the image has no
    /// `membarrier` record for it).
    pub membarrier: records::Membarrier,
}

/// What backs a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    /// Private anonymous memory (heap, stack, mmap).
    Anon,
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, memfd): one kernel
    /// object, named by its inode, possibly mapped by several processes of
    /// the tree; `offset` is where this mapping starts in it.
    Shm { id: u64, offset: u64 },
    /// A file mapped at `offset`; the identity refuses a changed file.
    File {
        path: String,
        offset: u64,
        identity: FileIdentity,
    },
    /// A kernel-provided mapping moved into place, never copied: `[vdso]`,
    /// `[vvar]`, `[vvar_vclock]`, `[sigpage]`.
    Special(String),
    /// A memfd (`crate::image::records::MemfdObject`, by inode) mapped at
    /// `offset`, shared or private; `may_write`: VmFlags `mw`.
    Memfd {
        id: u64,
        offset: u64,
        may_write: bool,
    },
    /// A SysV shared memory segment attached at `start - offset`;
    /// `read_only`: attached with `SHM_RDONLY`.
    Sysv {
        shmid: i32,
        offset: u64,
        read_only: bool,
    },
    /// A regular file unlinked while mapped (the image's unlinked-file
    /// object `inode`) at `offset`, shared or private; `may_write`: VmFlags
    /// `mw`.
    Unlinked {
        inode: u64,
        offset: u64,
        may_write: bool,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

impl FileIdentity {
    /// The image's form of the identity of the file at `path`.
    pub fn file_id(&self, path: &str) -> records::FileId {
        records::FileId {
            path: path.into(),
            dev: self.dev,
            inode: self.inode,
            size: self.size,
            mtime_ns: self
                .mtime_sec
                .saturating_mul(1_000_000_000)
                .saturating_add(self.mtime_nsec),
        }
    }

    /// The identity an image's file id records.
    pub fn of(f: &records::FileId) -> FileIdentity {
        FileIdentity {
            dev: f.dev,
            inode: f.inode,
            size: f.size,
            mtime_sec: f.mtime_ns.div_euclid(1_000_000_000),
            mtime_nsec: f.mtime_ns.rem_euclid(1_000_000_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_READ | PROT_WRITE | PROT_EXEC
    pub prot: i32,
    pub shared: bool,
    pub grows_down: bool,
    /// Mapped without swap accounting (MAP_NORESERVE, VmFlags `nr`).
    pub noreserve: bool,
    pub backing: Backing,
    /// The name as /proc showed it (`[heap]`, `[stack]`, a path), for humans.
    pub name: String,
}

impl Vma {
    /// The image record of this mapping.
    pub fn record(&self) -> records::Vma {
        let mut flags = if self.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if self.grows_down {
            flags |= libc::MAP_GROWSDOWN;
        }
        if self.noreserve {
            flags |= libc::MAP_NORESERVE;
        }
        let (offset, file) = match &self.backing {
            Backing::File {
                path,
                offset,
                identity,
            } => (*offset, Some(identity.file_id(path))),
            // The object's inode names it; no path.
            Backing::Shm { id, offset } => (
                *offset,
                Some(FileId {
                    inode: *id,
                    ..Default::default()
                }),
            ),
            // The object's id names it; the path is for humans.
            Backing::Memfd { id, offset, .. } => (
                *offset,
                Some(FileId {
                    path: self.name.as_str().into(),
                    inode: *id,
                    ..Default::default()
                }),
            ),
            Backing::Sysv { shmid, offset, .. } => (
                *offset,
                Some(FileId {
                    path: self.name.as_str().into(),
                    inode: u64::from(shmid.unsigned_abs()),
                    ..Default::default()
                }),
            ),
            Backing::Unlinked { inode, offset, .. } => (
                *offset,
                Some(FileId {
                    path: self.name.as_str().into(),
                    inode: *inode,
                    ..Default::default()
                }),
            ),
            _ => (0, None),
        };
        records::Vma {
            start: self.start,
            end: self.end,
            prot: self.prot.bits(),
            flags: flags.bits(),
            offset,
            kind: self.kind(),
            file,
        }
    }

    fn kind(&self) -> records::VmaKind {
        match &self.backing {
            Backing::Special(n) => match n.as_str() {
                "[vdso]" => VmaKind::Vdso,
                "[vvar]" => VmaKind::Vvar,
                "[vvar_vclock]" => VmaKind::VvarVclock,
                "[sigpage]" => VmaKind::Sigpage,
                _ => VmaKind::Vectors,
            },
            Backing::Shm { .. } => VmaKind::SharedAnon,
            Backing::Anon if self.name == "[stack]" => VmaKind::Stack,
            Backing::Anon if self.name == "[heap]" => VmaKind::Heap,
            Backing::Anon => VmaKind::Anon,
            Backing::File { .. } if self.shared => VmaKind::SharedFile,
            Backing::File { .. } => VmaKind::PrivateFile,
            Backing::Memfd { may_write, .. } => VmaKind::Memfd {
                may_write: *may_write,
            },
            Backing::Sysv { read_only, .. } => VmaKind::SysvShm {
                read_only: *read_only,
            },
            Backing::Unlinked { may_write, .. } => VmaKind::Unlinked {
                may_write: *may_write,
            },
        }
    }

    /// The mapping an image record describes; an error says what the
    /// record lacks.
    pub fn from_record(v: records::Vma) -> Result<Vma, String> {
        let shared = v.flags & libc::MAP_SHARED.bits() != 0;
        let name = match v.kind {
            VmaKind::Stack => "[stack]".to_string(),
            VmaKind::Heap => "[heap]".to_string(),
            VmaKind::Vdso => "[vdso]".to_string(),
            VmaKind::Vvar => "[vvar]".to_string(),
            VmaKind::VvarVclock => "[vvar_vclock]".to_string(),
            VmaKind::Sigpage => "[sigpage]".to_string(),
            VmaKind::Vectors => "[vectors]".to_string(),
            _ => v
                .file
                .as_ref()
                .map(|f| f.path.to_string())
                .unwrap_or_default(),
        };
        let backing =
            match v.kind {
                VmaKind::Vdso
                | VmaKind::Vvar
                | VmaKind::VvarVclock
                | VmaKind::Sigpage
                | VmaKind::Vectors => Backing::Special(name.clone()),
                VmaKind::PrivateFile | VmaKind::SharedFile => {
                    let f = v
                        .file
                        .as_ref()
                        .ok_or_else(|| format!("file mapping at {:#x} names no file", v.start))?;
                    Backing::File {
                        path: f.path.to_string(),
                        offset: v.offset,
                        identity: FileIdentity::of(f),
                    }
                }
                VmaKind::SharedAnon => {
                    let f = v.file.as_ref().ok_or_else(|| {
                        format!("shared memory at {:#x} names no object", v.start)
                    })?;
                    Backing::Shm {
                        id: f.inode,
                        offset: v.offset,
                    }
                }
                VmaKind::Anon | VmaKind::Stack | VmaKind::Heap => Backing::Anon,
                VmaKind::Memfd { may_write } => {
                    let f = v
                        .file
                        .as_ref()
                        .ok_or_else(|| format!("memfd mapping at {:#x} names no memfd", v.start))?;
                    Backing::Memfd {
                        id: f.inode,
                        offset: v.offset,
                        may_write,
                    }
                }
                VmaKind::SysvShm { read_only } => {
                    let f = v.file.as_ref().ok_or_else(|| {
                        format!("SysV mapping at {:#x} names no segment", v.start)
                    })?;
                    let shmid = i32::try_from(f.inode)
                        .map_err(|_| format!("SysV segment id {}", f.inode))?;
                    Backing::Sysv {
                        shmid,
                        offset: v.offset,
                        read_only,
                    }
                }
                VmaKind::Unlinked { may_write } => {
                    let f = v.file.as_ref().ok_or_else(|| {
                        format!("mapping at {:#x} names no unlinked file", v.start)
                    })?;
                    Backing::Unlinked {
                        inode: f.inode,
                        offset: v.offset,
                        may_write,
                    }
                }
            };
        if v.start >= v.end {
            return Err(format!("empty mapping at {:#x}", v.start));
        }
        Ok(Vma {
            start: v.start,
            end: v.end,
            prot: v.prot.bits(),
            shared,
            grows_down: v.flags & libc::MAP_GROWSDOWN.bits() != 0,
            noreserve: v.flags & libc::MAP_NORESERVE.bits() != 0,
            backing,
            name,
        })
    }
}

/// One descriptor of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    /// Index into `ImageState::files`.
    pub file: u32,
    pub cloexec: bool,
}

/// An open file description; several fds (in one or more processes) may
/// share one, and then share its offset and status flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// open(2) flags without O_CLOEXEC (which belongs to the fd).
    pub flags: u32,
    pub kind: FileKind,
    /// Owner and signal, for a description with `O_ASYNC` or a lease.
    pub sigio: Option<crate::image::records::SigIo>,
}

/// A regular file or directory, reopened by path at `pos`
/// (`engine::files::path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFile {
    pub path: String,
    pub pos: u64,
    pub dir: bool,
    pub identity: FileIdentity,
}

/// A character device (`/dev/null`, a tty...), reopened by path
/// (`engine::files::device`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFile {
    pub path: String,
    pub rdev: u64,
    pub tty: bool,
}

/// One end of a pipe: index into `ImageState::pipes`; `fifo` is the path
/// of a named FIFO, whose other end anyone may open
/// (`engine::files::pipe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeFile {
    pub pipe: u32,
    pub write: bool,
    pub fifo: Option<String>,
}

/// Not in the image: the restore is handed a descriptor for `key`
/// (`engine::files::external`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalFile {
    pub key: String,
}

/// A regular file unlinked while open, by content, as images whose fd
/// records carry the contents hold it (`engine::files::unlinked`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlinkedData {
    pub path: String,
    pub pos: u64,
    pub data: Vec<u8>,
}

/// A regular file unlinked while open: the image's unlinked-file object
/// `inode` (the inode at the dump), shared by every description and
/// mapping of that inode (`engine::files::unlinked`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlinkedRef {
    pub pos: u64,
    pub inode: u64,
}

/// The application's connection to `torpor daemon`: reconnected to the
/// daemon's socket at restore (`engine::torpor_conn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorporConnFile;

/// The registry of file kinds: one line each, `Variant(state type)`.
/// [`FileKind`] is made from it here, and `engine::files` makes from it
/// the dispatch to each kind's `FileOps` implementation (its record, its
/// checks against this system, its reopening). The kinds under `anon` are
/// anonymous-inode files whose state type is their image record and whose
/// `FdKind` variant has the same name; they implement
/// `engine::files::AnonKind` too, which collects them. A new kind is one
/// module of `engine::files` and one line here.
macro_rules! file_registry {
    ($then:ident) => {
        $then! {
            fs {
                Path(crate::engine::state::PathFile),
                Device(crate::engine::state::DeviceFile),
                Pipe(crate::engine::state::PipeFile),
                External(crate::engine::state::ExternalFile),
                Unlinked(crate::engine::state::UnlinkedData),
                UnlinkedFile(crate::engine::state::UnlinkedRef),
                TorporConn(crate::engine::state::TorporConnFile),
                // A file of /proc/PID of a process of the tree
                // (`engine::files::late`).
                ProcFile(crate::image::records::ProcFile),
            }
            anon {
                EventFd(crate::image::records::EventFd),
                TimerFd(crate::image::records::TimerFd),
                SignalFd(crate::image::records::SignalFd),
                Epoll(crate::image::records::Epoll),
                Inotify(crate::image::records::Inotify),
                Unix(crate::image::records::UnixSocket),
                Inet(crate::image::records::InetSocket),
                // A memfd with its contents inline (images of an older torpor).
                Memfd(crate::image::records::Memfd),
                // A description of a memfd object (`engine::files::memfd`).
                MemfdFile(crate::image::records::MemfdRef),
                // A pseudo-terminal pair (`engine::files::pty`).
                PtyMaster(crate::image::records::PtyMaster),
                PtySlave(crate::image::records::PtySlave),
                // A pidfd of a process of the tree (`engine::files::late`).
                Pidfd(crate::image::records::Pidfd),
                // An established TCP connection kept in repair mode
                // (`engine::files::tcp`).
                TcpConnection(crate::image::records::TcpConnection),
                // A netlink socket (`engine::files::netlink`).
                Netlink(crate::image::records::NetlinkSocket),
                // A packet socket (`engine::files::packet`).
                Packet(crate::image::records::PacketSocket),
                // A fanotify group (`engine::files::fanotify`).
                Fanotify(crate::image::records::Fanotify),
            }
        }
    };
}
pub(crate) use file_registry;

macro_rules! define_file_kind {
    (fs { $($fs:ident($fst:ty),)* } anon { $($anon:ident($ant:ty),)* }) => {
        /// What an open file description is, by kind.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum FileKind {
            $($fs($fst),)*
            $($anon($ant),)*
        }
    };
}
file_registry!(define_file_kind);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeState {
    pub inode: u64,
    /// Capacity (F_GETPIPE_SZ).
    pub size: u32,
    /// Bytes written and not yet read.
    pub data: Vec<u8>,
    /// The end a process outside the tree holds, if any.
    pub outside: Option<records::PipeEnd>,
}

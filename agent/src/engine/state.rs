//! The process-tree state the engine saves and rebuilds: plain data, no
//! runtime resources. Architecture-specific register files are opaque byte
//! strings here; the image header names the architecture they belong to.

use serde::{Deserialize, Serialize};

use crate::image::records::{self, FdKind};

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
}

/// One page record: `pages` pages at `vaddr` of `processes[process]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub process: usize,
    pub vaddr: u64,
    pub pages: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub pid: i32,
    /// Parent's pid; 0 for the root of the tree.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub threads: Vec<ThreadState>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
    /// Dispositions of signals 1..=64 (index = signal - 1).
    pub sigactions: Vec<SigAction>,
    /// Signals queued for the whole thread group, as raw siginfo.
    pub shared_pending: Vec<Vec<u8>>,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: Vec<Itimer>,
    pub mm: MmFields,
    pub auxv: Vec<u8>,
    pub exe: String,
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    pub personality: u32,
    /// (soft, hard) for each resource 0..RLIMIT_NLIMITS.
    pub rlimits: Vec<(u64, u64)>,
    pub creds: Creds,
    pub posix_timers: Vec<PosixTimer>,
    /// File locks held through this process's fds (`engine::files::locks`).
    pub locks: Vec<crate::image::records::FileLock>,
    /// Seccomp filters beyond torpor's own, oldest first (every thread
    /// runs under the same ones).
    pub seccomp: Vec<crate::image::records::SeccompFilter>,
    /// Stopped by a signal (SIGSTOP...) at the dump: stopped again after.
    pub stopped: bool,
    /// Wait status of a process that has exited and is not yet reaped; it
    /// has no threads, memory or files.
    pub zombie: Option<i32>,
    /// Controlling terminal of a session leader (device number), 0 if none.
    pub ctty: u64,
    /// What the paths this process held, mapped or worked in were at the
    /// dump (written as `file-owner` records).
    pub owners: Vec<crate::image::records::FileOwner>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    pub notify: i32,
    pub tid: i32,
    pub signo: i32,
    pub value: u64,
    pub interval: (i64, i64),
    /// (seconds, nanoseconds) left; zero when disarmed.
    pub left: (i64, i64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    pub tid: i32,
    /// The thread's name (comm).
    pub comm: String,
    /// The architecture's general register file (arch::Regs::to_bytes).
    pub regs: Vec<u8>,
    /// FPU/vector state as the architecture's regset returns it.
    pub fpregs: Vec<u8>,
    pub tls: u64,
    pub sigmask: u64,
    /// Signals queued for this thread only, as raw siginfo.
    pub pending: Vec<Vec<u8>>,
    pub altstack: AltStack,
    pub tid_address: u64,
    pub robust_head: u64,
    pub robust_len: u64,
    pub rseq: Option<Rseq>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Itimer {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

/// The mm fields PR_SET_MM_MAP restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    /// Inheritable, permitted, effective, bounding, ambient.
    pub caps: [u64; 5],
    pub no_new_privs: bool,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file or directory, reopened by path at `pos`.
    Path {
        path: String,
        pos: u64,
        dir: bool,
        identity: FileIdentity,
    },
    /// A character device (`/dev/null`, a tty...), reopened by path.
    Device { path: String, rdev: u64, tty: bool },
    /// Not in the image: the restore is handed a descriptor for `key`.
    External { key: String },
    /// A regular file unlinked while open, by content (images whose fd
    /// records carry the contents).
    Unlinked {
        path: String,
        pos: u64,
        data: Vec<u8>,
    },
    /// A regular file unlinked while open: the image's unlinked-file object
    /// `inode` (the inode at the dump), shared by every description and
    /// mapping of that inode.
    UnlinkedFile { pos: u64, inode: u64 },
    /// One end of a pipe: index into `ImageState::pipes`; `fifo` is the
    /// path of a named FIFO (whose other end may be opened by anyone).
    Pipe {
        pipe: u32,
        write: bool,
        fifo: Option<String>,
    },
    /// eventfd, timerfd, signalfd, epoll, inotify, memfd, sockets
    /// (`engine::files`).
    Anon(AnonFile),
    /// The application's connection to `torpor daemon`: reconnected to the
    /// daemon's socket at restore (see `engine::torpor_conn`).
    TorporConn,
}

/// The registry of anonymous-inode file kinds (eventfd, timerfd, sockets,
/// memfds...): one line each, `Variant(record type)`, where `Variant` is
/// also the name of its [`FdKind`] record variant. [`AnonFile`] and its
/// record conversions are made from it here, and `engine::files` makes the
/// dispatch to each kind's [`AnonKind`](crate::engine::files::AnonKind)
/// implementation from it: a new kind is one module of `engine::files`
/// and one line here.
macro_rules! anon_registry {
    ($then:ident) => {
        $then! {
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
        }
    };
}
pub(crate) use anon_registry;

macro_rules! define_anon_file {
    ($($(#[$doc:meta])* $variant:ident($record:ty),)*) => {
        /// An anonymous-inode file torpor knows how to recreate.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum AnonFile {
            $($variant($record),)*
        }

        impl AnonFile {
            /// The image record of this file with its status flags.
            pub fn record(&self, flags: u32) -> FdKind {
                match self.clone() {
                    $(AnonFile::$variant(state) => FdKind::$variant { flags, state },)*
                }
            }

            /// The file an image record describes, with its status flags,
            /// when the record is one of these kinds.
            pub fn from_record(k: &FdKind) -> Option<(u32, AnonFile)> {
                Some(match k.clone() {
                    $(FdKind::$variant { flags, state } => (flags, AnonFile::$variant(state)),)*
                    _ => return None,
                })
            }
        }
    };
}
anon_registry!(define_anon_file);

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeState {
    pub inode: u64,
    /// Capacity (F_GETPIPE_SZ).
    pub size: u32,
    /// Bytes written and not yet read.
    pub data: Vec<u8>,
    /// The end a process outside the tree holds, if any.
    pub outside: Option<OutsideEnd>,
}

/// The end of a pipe held outside the dumped tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutsideEnd {
    Read,
    Write,
}

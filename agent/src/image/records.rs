//! The typed records of an image: plain serde data, one struct per kind.
//!
//! Every kind is declared once, in the `registry!` table: its byte, its
//! name, its payload type, its length limit. [`Kind`] and its methods and
//! the [`RecordType`] impls all come from that table, so a payload type can
//! only be written and read under its own kind.
//!
//! Records that describe a task follow the order of the stream: a [`Task`]
//! record opens a task, and every [`Thread`], [`Vma`], [`Fd`], [`MmFields`]
//! and `Pages` record after it belongs to that task until the next `Task`.
//! [`PipeData`] records are global: a pipe shared by several tasks is stored
//! once, by id.
//!
//! Addresses and sizes are `u64` whatever the architecture, so that a 32-bit
//! ARM image reads the same on a 64-bit workstation.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A record payload: the type written and read under one kind.
///
/// The registry table below implements it for the payload of every kind, so
/// a type names its kind once: [`ImageWriter::write`](super::ImageWriter::write)
/// takes the kind from it and [`Record::decode`](super::Record::decode)
/// refuses a record of another kind.
pub trait RecordType {
    const KIND: Kind;
}

/// The payload of a state kind: one that
/// [`ImageWriter::write`](super::ImageWriter::write) appends, as opposed to
/// the header, pages and trailer the writer frames itself.
pub trait StateRecord: RecordType + Serialize + DeserializeOwned + fmt::Debug {}

/// Something done with the payload type of a kind known only at run time,
/// from a frame's kind byte: `torpor show` prints it, the fuzzer decodes it.
pub trait KindVisitor {
    type Output;
    fn visit<T: StateRecord>(self) -> Self::Output;
}

/// Declares every record kind from one table: the [`Kind`] enum with each
/// kind's byte, name, limit and description, the [`RecordType`] of its
/// payload and, for state kinds, [`StateRecord`] and [`Kind::visit`].
macro_rules! registry {
    (@state state, $ty:ty) => {
        impl StateRecord for $ty {}
    };
    (@state writer, $ty:ty) => {};
    (@by_writer state) => {
        false
    };
    (@by_writer writer) => {
        true
    };
    (@visit state, $ty:ty, $v:ident) => {
        Some($v.visit::<$ty>())
    };
    (@visit writer, $ty:ty, $v:ident) => {
        None
    };
    ($(
        $(#[$doc:meta])*
        $kind:ident = $byte:literal, $name:literal, $ty:ty, $limit:expr, $what:literal, $role:ident;
    )*) => {
        /// One record kind: the byte after the length in every frame.
        ///
        /// The numbers are part of the format: never renumber, only append
        /// with the next free byte, as a minor version (see "Versions" in
        /// [`crate::image`]). A reader refuses a kind it does not know.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(u8)]
        pub enum Kind {
            $($(#[$doc])* $kind = $byte,)*
        }

        impl Kind {
            /// How many kinds this torpor knows.
            pub const COUNT: usize = [$($byte),*].len();

            /// Every kind, in numeric order.
            pub const ALL: [Kind; Kind::COUNT] = [$(Kind::$kind),*];

            /// The kind a frame's kind byte names, if this torpor knows it.
            pub const fn from_byte(b: u8) -> Option<Kind> {
                match b {
                    $($byte => Some(Kind::$kind),)*
                    _ => None,
                }
            }

            /// The largest payload a record of this kind may have; checked
            /// before anything is allocated for it, on writing and on reading.
            pub const fn limit(self) -> u32 {
                match self {
                    $(Kind::$kind => $limit,)*
                }
            }

            /// The name `torpor show` and error messages use.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Kind::$kind => $name,)*
                }
            }

            /// The record as a truncation error names it.
            pub const fn what(self) -> &'static str {
                match self {
                    $(Kind::$kind => $what,)*
                }
            }

            /// Whether the image writer frames records of this kind itself
            /// (header, pages, trailer) rather than taking them from
            /// [`ImageWriter::write`](super::ImageWriter::write).
            pub const fn by_writer(self) -> bool {
                match self {
                    $(Kind::$kind => registry!(@by_writer $role),)*
                }
            }

            /// Runs `v` with the payload type of this kind; `None` for the
            /// kinds the writer frames itself.
            pub fn visit<V: KindVisitor>(self, v: V) -> Option<V::Output> {
                match self {
                    $(Kind::$kind => registry!(@visit $role, $ty, v),)*
                }
            }
        }

        $(
            impl RecordType for $ty {
                const KIND: Kind = Kind::$kind;
            }
            registry!(@state $role, $ty);
        )*
    };
}

// The registry: one line per kind. Adding a kind is a payload struct and a
// line here, appended with the next free byte (and a minor version; see
// "Versions" in `crate::image`). `writer` kinds are framed by the image writer itself,
// `state` kinds are appended with `ImageWriter::write`.
registry! {
    //                byte  name              payload          limit            when cut short             by
    Header          =  1,  "header",         super::Header,   HEADER_LIMIT,    "the header record",       writer;
    Task            =  2,  "task",           Task,            STATE_LIMIT,     "a task record",           state;
    Thread          =  3,  "thread",         Thread,          STATE_LIMIT,     "a thread record",         state;
    Vma             =  4,  "vma",            Vma,             STATE_LIMIT,     "a vma record",            state;
    Fd              =  5,  "fd",             Fd,              STATE_LIMIT,     "an fd record",            state;
    MmFields        =  6,  "mm",             MmFields,        STATE_LIMIT,     "an mm record",            state;
    PipeData        =  7,  "pipe-data",      PipeData,        PIPE_DATA_LIMIT, "a pipe-data record",      state;
    Pages           =  8,  "pages",          Pages<'_>,       PAGES_LIMIT,     "a pages record",          writer;
    Trailer         =  9,  "trailer",        Trailer,         TRAILER_LIMIT,   "the trailer",             writer;
    /// Contents of a file on tmpfs that the tree maps shared (POSIX shm).
    TmpfsFile       = 10,  "tmpfs-file",     TmpfsFile,       STATE_LIMIT,     "a tmpfs-file record",     state;
    /// A memfd the tree holds or maps: name, size, seals (contents follow
    /// as `object-data`).
    MemfdObject     = 11,  "memfd",          MemfdObject,     STATE_LIMIT,     "a memfd record",          state;
    /// A SysV shared memory segment the tree has attached.
    SysvShm         = 12,  "sysv-shm",       SysvShm,         STATE_LIMIT,     "a sysv-shm record",       state;
    /// A piece of the contents of a memfd or SysV segment.
    ObjectData      = 13,  "object-data",    ObjectData,      STATE_LIMIT,     "an object-data record",   state;
    /// A pipe whose other end a process outside the tree holds.
    ExternalPipe    = 14,  "external-pipe",  ExternalPipe,    STATE_LIMIT,     "an external-pipe record", state;
    /// A regular file unlinked while the tree holds or maps it (contents
    /// follow as `object-data`).
    UnlinkedObject  = 15,  "unlinked-file",  UnlinkedObject,  STATE_LIMIT,     "an unlinked-file record", state;
    /// The tree's clocks at the freeze and its time namespace.
    Clocks          = 16,  "clocks",         Clocks,          STATE_LIMIT,     "the clocks record",       state;
    /// Signal-driven I/O of an open file description: owner and signal.
    FileSigIo       = 17,  "file-sigio",     FileSigIo,       STATE_LIMIT,     "a file-sigio record",     state;
    /// One seccomp filter of the process before it (oldest first).
    SeccompFilter   = 18,  "seccomp-filter", SeccompFilter,   STATE_LIMIT,     "a seccomp-filter record", state;
    /// The identity and owner of a path a restore opens by name.
    FileOwner       = 19,  "file-owner",     FileOwner,       STATE_LIMIT,     "a file-owner record",     state;
    /// The user a checkpoint was taken for, when not root.
    RequestedBy     = 20,  "requested-by",   RequestedBy,     STATE_LIMIT,     "a requested-by record",   state;
    /// One tree of the image and the application it is (an image of
    /// several trees, or of a named application).
    Tree            = 21,  "tree",           Tree,            STATE_LIMIT,     "a tree record",           state;
    /// A piece of a queue of a kept TCP connection, after the connection's
    /// first fd record.
    TcpQueue        = 22,  "tcp-queue",      TcpQueue,        STATE_LIMIT,     "a tcp-queue record",      state;
    /// Scheduling, prctl attributes, `oom_score_adj` and `madvise` flags of
    /// the process before it, written when any differs from a new
    /// process's.
    TaskAttrs       = 23,  "task-attrs",     TaskAttrs,       STATE_LIMIT,     "a task-attrs record",     state;
    /// File descriptors in flight in a queued message of a UNIX socket,
    /// after every process.
    UnixRights      = 24,  "unix-rights",    UnixRights,      STATE_LIMIT,     "a unix-rights record",    state;
    /// Socket options of a socket that differ from a new socket's, beyond
    /// its fd record's, after every process.
    SockExtra       = 25,  "sock-opts",      SockExtra,       STATE_LIMIT,     "a sock-opts record",      state;
    /// A file description only a queued message of a UNIX socket holds
    /// (in flight, its sender's copy closed), after every process.
    FlightFile      = 26,  "flight-file",    FlightFile,      STATE_LIMIT,     "a flight-file record",    state;
    /// The connections waiting to be accepted by a UNIX listener, by their
    /// clients, after every process.
    UnixWaiting     = 27,  "unix-waiting",   UnixWaiting,     STATE_LIMIT,     "a unix-waiting record",   state;
    /// Strict mode, or one seccomp filter of a thread's own, of a thread
    /// of the process before it (beyond the process's filters).
    ThreadSeccomp   = 28,  "thread-seccomp", ThreadSeccomp,   STATE_LIMIT,     "a thread-seccomp record", state;
    /// A control group (v2) processes of the tree were in, with the
    /// settings of its controllers.
    Cgroup          = 29,  "cgroup",         Cgroup,          STATE_LIMIT,     "a cgroup record",         state;
    /// An AIO context (`io_setup`) of the process before it: its ring's
    /// place and header and a piece of the completions not yet reaped.
    AioRing         = 30,  "aio-ring",       AioRing,         STATE_LIMIT,     "an aio-ring record",      state;
    /// The `membarrier` registrations of the process before it, written
    /// when it has any.
    Membarrier      = 31,  "membarrier",     Membarrier,      STATE_LIMIT,     "a membarrier record",     state;
    /// The credentials (`SCM_CREDENTIALS`) of a queued message of a UNIX
    /// socket, after every process.
    UnixCreds       = 32,  "unix-creds",     UnixCreds,       STATE_LIMIT,     "a unix-creds record",     state;
}

/// The largest payload of a state record (task, thread, VMA, fd...).
pub const STATE_LIMIT: u32 = 64 * 1024;
/// The largest header payload: a few short strings.
pub const HEADER_LIMIT: u32 = 4 * 1024;
/// The largest trailer payload: four integers.
pub const TRAILER_LIMIT: u32 = 64;
/// A pipe holds at most `/proc/sys/fs/pipe-max-size` bytes, 1 MiB by default.
pub const PIPE_DATA_LIMIT: u32 = 1024 * 1024 + 64;
/// The most page bytes one `Pages` record describes (before compression).
pub const PAGE_BATCH_BYTES: u32 = 64 * 1024;
/// The largest `Pages` payload: a batch that did not compress, plus its head
/// (vaddr, count, codec, data length; at most 22 bytes as postcard varints).
pub const PAGES_LIMIT: u32 = PAGE_BATCH_BYTES + 64;

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A path as the kernel knows it: bytes, not necessarily UTF-8.
///
/// Stored as bytes in an image; shown as a (lossy) string by `torpor show`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RawPath(pub Vec<u8>);

impl RawPath {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as the file system takes it (any bytes but NUL).
    pub fn as_path(&self) -> &std::path::Path {
        use std::os::unix::ffi::OsStrExt;
        std::path::Path::new(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl From<&str> for RawPath {
    fn from(s: &str) -> Self {
        RawPath(s.as_bytes().to_vec())
    }
}

impl From<&std::path::Path> for RawPath {
    fn from(p: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        RawPath(p.as_os_str().as_bytes().to_vec())
    }
}

impl fmt::Display for RawPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl Serialize for RawPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&String::from_utf8_lossy(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path as bytes or a string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawPath, E> {
                Ok(RawPath(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RawPath, E> {
                Ok(RawPath(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPath, E> {
                Ok(RawPath(v.as_bytes().to_vec()))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

/// User and group ids, supplementary groups and capabilities of a task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub uid: u32,
    pub euid: u32,
    pub suid: u32,
    pub fsuid: u32,
    pub gid: u32,
    pub egid: u32,
    pub sgid: u32,
    pub fsgid: u32,
    pub groups: Vec<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub securebits: u32,
    pub no_new_privs: bool,
}

impl Creds {
    /// Real, effective, saved and file-system uid.
    pub fn uids(&self) -> [u32; 4] {
        [self.uid, self.euid, self.suid, self.fsuid]
    }

    /// Real, effective, saved and file-system gid.
    pub fn gids(&self) -> [u32; 4] {
        [self.gid, self.egid, self.sgid, self.fsgid]
    }

    /// Inheritable, permitted, effective, bounding and ambient sets, the
    /// order of `/proc/PID/status`.
    pub fn caps(&self) -> [u64; 5] {
        [
            self.cap_inheritable,
            self.cap_permitted,
            self.cap_effective,
            self.cap_bounding,
            self.cap_ambient,
        ]
    }
}

/// One resource limit (`RLIMIT_*` number, soft and hard value;
/// `u64::MAX` is `RLIM_INFINITY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// The disposition of one signal, as `rt_sigaction` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub signo: u32,
    /// Handler address, or `SIG_DFL` (0) / `SIG_IGN` (1).
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// A queued signal: the kernel's `siginfo_t` (128 bytes) as read by
/// `PTRACE_PEEKSIGINFO`, with the leading fields decoded for display.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigInfo {
    pub signo: i32,
    pub errno: i32,
    pub code: i32,
    pub raw: Vec<u8>,
}

impl SigInfo {
    /// A siginfo as the kernel gave it, its leading fields decoded (zero
    /// where `raw` is too short to hold them).
    pub fn from_raw(raw: Vec<u8>) -> SigInfo {
        let word = |o: usize| {
            raw.get(o..o + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map_or(0, i32::from_le_bytes)
        };
        SigInfo {
            signo: word(0),
            errno: word(4),
            code: word(8),
            raw,
        }
    }
}

/// One interval timer (`ITIMER_REAL`, `_VIRTUAL` or `_PROF`), in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimer {
    pub interval_ns: u64,
    pub value_ns: u64,
}

/// The three interval timers of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ITimers {
    pub real: ITimer,
    pub virt: ITimer,
    pub prof: ITimer,
}

/// A process (thread group): what is shared by its threads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub creds: Creds,
    pub umask: u32,
    pub cwd: RawPath,
    pub root: RawPath,
    pub exe: RawPath,
    pub rlimits: Vec<Rlimit>,
    pub sigactions: Vec<SigAction>,
    /// The blocked mask of the thread-group leader (each [`Thread`] carries
    /// its own).
    pub sigmask: u64,
    /// Signals pending for the whole process (`PTRACE_PEEKSIGINFO_SHARED`).
    pub pending: Vec<SigInfo>,
    pub itimers: ITimers,
    pub personality: u32,
    /// POSIX timers (`timer_create`), by id.
    pub posix_timers: Vec<PosixTimer>,
    /// For a process that has exited and awaits its parent's wait (a
    /// zombie): its wait status. Such a task has no other records.
    pub exit_status: Option<i32>,
    /// Device number of the controlling terminal a session leader holds
    /// (0 for none); the restored leader takes the terminal its fds open.
    pub ctty: u64,
    /// File locks the process holds, taken again after its fds.
    pub locks: Vec<FileLock>,
    /// Stopped by a signal at the dump; the restore stops it again.
    pub stopped: bool,
}

/// What the kernel keeps of a process besides its ids, limits and signals:
/// prctl attributes, `oom_score_adj`, each thread's scheduling and the
/// `madvise` flags of its mappings. An image without this record (older
/// than format 2.5, or of a process with nothing to say) means
/// [`TaskAttrs::default`]: what a new process has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAttrs {
    /// `PR_SET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    /// `PR_GET_DUMPABLE`: 0, 1 or 2 (`SUID_DUMP_ROOT`, set only by the
    /// kernel).
    pub dumpable: u32,
    /// `PR_SET_THP_DISABLE`.
    pub thp_disable: bool,
    /// `/proc/PID/oom_score_adj`, -1000..=1000.
    pub oom_score_adj: i32,
    /// `/proc/PID/loginuid` (the audit login uid); `u32::MAX` when unset or
    /// when the kernel has no audit support.
    pub loginuid: u32,
    /// One entry per thread whose attributes differ from a new thread's.
    pub threads: Vec<ThreadAttrs>,
    /// The mappings with `madvise` flags, one entry per mapping.
    pub advice: Vec<VmaAdvice>,
}

impl Default for TaskAttrs {
    fn default() -> Self {
        TaskAttrs {
            child_subreaper: false,
            dumpable: 1,
            thp_disable: false,
            oom_score_adj: 0,
            loginuid: u32::MAX,
            threads: Vec::new(),
            advice: Vec::new(),
        }
    }
}

/// One thread's scheduling and parent-death signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadAttrs {
    pub tid: i32,
    /// `SCHED_OTHER` (0), `FIFO` (1), `RR` (2), `BATCH` (3) or `IDLE` (5).
    pub policy: u32,
    /// `SCHED_RESET_ON_FORK`.
    pub reset_on_fork: bool,
    /// The real-time priority (1..=99 under `FIFO` and `RR`, else 0).
    pub rt_priority: u32,
    /// -20..=19.
    pub nice: i32,
    /// `PR_SET_PDEATHSIG`: 0 for none.
    pub pdeathsig: i32,
}

/// `madvise` flags of one mapping, as `smaps` `VmFlags` show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaAdvice {
    pub start: u64,
    pub end: u64,
    /// [`VmaAdvice::DONTFORK`] and the other bits.
    pub flags: u32,
}

impl VmaAdvice {
    /// `dc`: `MADV_DONTFORK`.
    pub const DONTFORK: u32 = 1;
    /// `dd`: `MADV_DONTDUMP`.
    pub const DONTDUMP: u32 = 2;
    /// `wf`: `MADV_WIPEONFORK`.
    pub const WIPEONFORK: u32 = 4;
    /// `hg`: `MADV_HUGEPAGE`.
    pub const HUGEPAGE: u32 = 8;
    /// `nh`: `MADV_NOHUGEPAGE`.
    pub const NOHUGEPAGE: u32 = 16;
    /// `mg`: `MADV_MERGEABLE`.
    pub const MERGEABLE: u32 = 32;
    /// Every bit above.
    pub const ALL: u32 = 63;
    /// Each bit, its `VmFlags` name and the `madvise` advice that sets it.
    pub const TABLE: [(u32, &'static str, i32); 6] = [
        (Self::DONTFORK, "dc", 10),
        (Self::DONTDUMP, "dd", 16),
        (Self::WIPEONFORK, "wf", 18),
        (Self::HUGEPAGE, "hg", 14),
        (Self::NOHUGEPAGE, "nh", 15),
        (Self::MERGEABLE, "mg", 12),
    ];
}

/// Who owns a file lock, which decides how it is taken again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `flock`: owned by the open file description.
    #[default]
    Flock,
    /// `F_OFD_SETLK`: a byte range owned by the open file description.
    Ofd,
    /// `F_SETLK`: a byte range owned by the process.
    Posix,
    /// `F_SETLEASE`: a read or write lease on the whole file, owned by the
    /// open file description.
    Lease,
}

/// Who gets the signal of signal-driven I/O (`O_ASYNC`) or of a lease
/// break, and which signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigIo {
    /// `F_OWNER_TID` (0), `F_OWNER_PID` (1) or `F_OWNER_PGRP` (2).
    pub owner_kind: i32,
    /// 0: no owner.
    pub owner_pid: i32,
    /// `F_GETSIG`: 0 means `SIGIO`.
    pub signal: i32,
}

/// The [`SigIo`] of open file description `ofd` (as the [`Fd`] records
/// name it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSigIo {
    pub ofd: u64,
    pub sigio: SigIo,
}

/// A seccomp filter (`SECCOMP_SET_MODE_FILTER`) every thread of a process
/// runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// `SECCOMP_FILTER_FLAG_LOG`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW`.
    pub flags: u64,
    /// The `struct sock_filter` array, 8 bytes per instruction.
    pub program: Vec<u8>,
}

/// What one thread runs under beyond its process's seccomp filters (the
/// `seccomp-filter` records, which every thread shares).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnSeccomp {
    /// `SECCOMP_MODE_STRICT`: only `read`, `write`, `exit` and
    /// `rt_sigreturn`. The kernel lets only a thread without filters enter
    /// it, so such a thread has no filters, nor has its process.
    Strict,
    /// A filter the thread installed for itself (without
    /// `SECCOMP_FILTER_FLAG_TSYNC`), or one a thread it was cloned from
    /// had; a thread's filters come oldest first, after the process's.
    Filter(SeccompFilter),
}

/// The seccomp state of thread `tid` that its process's filters do not
/// say: written only for a thread that differs from them, so an image of
/// a process whose threads all run under the same filters has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadSeccomp {
    pub tid: i32,
    pub own: OwnSeccomp,
}

/// One file lock held through fd `fd`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    pub fd: i32,
    pub kind: LockKind,
    pub write: bool,
    pub start: u64,
    /// Last byte locked; `None` to the end of the file (and beyond).
    pub end: Option<u64>,
}

/// One POSIX timer: how it notifies and when it fires next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE`, `SIGEV_THREAD`, possibly with
    /// `SIGEV_THREAD_ID` (then `tid` is the thread notified).
    pub notify: i32,
    pub tid: i32,
    pub signo: i32,
    /// `sigev_value`.
    pub value: u64,
    pub interval_ns: u64,
    /// Time left until the next expiry; 0 when disarmed.
    pub value_ns: u64,
}

/// The register file of a thread, tagged with its architecture; the byte
/// layouts are those of the architecture's ptrace interface
/// (`PTRACE_GETREGS`/`GETFPREGS`, or `GETREGS`/`GETVFPREGS` on ARM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regs {
    pub arch: super::Arch,
    pub gpr: Vec<u8>,
    pub fpu: Vec<u8>,
}

/// `sigaltstack` of a thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: u32,
    pub size: u64,
}

/// The robust futex list registered with `set_robust_list`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobustList {
    pub head: u64,
    pub len: u64,
}

/// One thread: what the kernel keeps per thread.
///
/// The clear-child-tid address and the robust list are per thread in Linux,
/// so they live here rather than in [`Task`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: i32,
    pub regs: Regs,
    /// TLS pointer: the TPIDRURO word on ARM, fs base on x86_64.
    pub tls: u64,
    pub sigmask: u64,
    pub altstack: AltStack,
    /// Signals pending for this thread only.
    pub pending: Vec<SigInfo>,
    pub tid_address: u64,
    pub robust_list: RobustList,
    /// The thread's name (`/proc/PID/task/TID/comm`).
    pub comm: String,
    /// The thread's registered rseq area, if any.
    pub rseq: Option<Rseq>,
}

/// A restartable-sequences registration: area, its length and signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// What a mapping is, which decides how a restore recreates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaKind {
    Anon,
    PrivateFile,
    SharedFile,
    SharedAnon,
    Stack,
    Heap,
    Vdso,
    Vvar,
    /// `[vvar_vclock]`: the clock pages newer kernels map beside `[vvar]`.
    VvarVclock,
    Sigpage,
    Vectors,
    /// A mapping of a memfd (`MAP_SHARED` or `MAP_PRIVATE` in `flags`),
    /// named by `file.inode`; `may_write`: the mapping may become writable
    /// (`VmFlags` `mw`), which a shared mapping of a write-sealed memfd
    /// never may.
    Memfd {
        may_write: bool,
    },
    /// A SysV shared memory attachment; `file.inode` is the shmid.
    /// `read_only`: attached with `SHM_RDONLY`.
    SysvShm {
        read_only: bool,
    },
    /// A mapping of a regular file unlinked while mapped, named by
    /// `file.inode` (an [`UnlinkedObject`]); `may_write`: VmFlags `mw`.
    Unlinked {
        may_write: bool,
    },
}

/// The identity of a file a restore depends on; a restore refuses a file
/// whose identity changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: RawPath,
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

/// One mapping of a task's address space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    /// `MAP_*` bits (`MAP_SHARED`/`MAP_PRIVATE`, `MAP_GROWSDOWN`...).
    pub flags: u32,
    /// Offset into the file, for file mappings.
    pub offset: u64,
    pub kind: VmaKind,
    pub file: Option<FileId>,
}

/// The end of a pipe an fd holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipeEnd {
    Read,
    Write,
}

/// What an open file descriptor refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file, reopened by path at `offset` with `flags` (`O_*`).
    Regular {
        file: FileId,
        flags: u32,
        offset: u64,
    },
    Directory {
        path: RawPath,
        flags: u32,
    },
    /// One end of a pipe; the id pairs ends across tasks and names its
    /// [`PipeData`].
    Pipe {
        id: u64,
        end: PipeEnd,
        flags: u32,
    },
    /// A FIFO in the file system, with its pipe id for the buffered data.
    Fifo {
        path: RawPath,
        id: u64,
        end: PipeEnd,
        flags: u32,
    },
    /// A character or block device node (`/dev/null` and friends).
    Device {
        path: RawPath,
        rdev: u64,
        flags: u32,
    },
    /// A terminal; the restore may substitute another one.
    Tty {
        path: RawPath,
        rdev: u64,
        flags: u32,
    },
    /// A descriptor kept outside the image (a connection to a supervisor,
    /// say): the restore is handed one for `key` to put in its place.
    External {
        key: String,
        flags: u32,
    },
    /// A regular file unlinked while open: kept by content, recreated
    /// without a name.
    Unlinked {
        path: RawPath,
        flags: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// An eventfd (`flags` holds `O_NONBLOCK`).
    EventFd {
        flags: u32,
        state: EventFd,
    },
    /// A timerfd, re-armed with the time it had left.
    TimerFd {
        flags: u32,
        state: TimerFd,
    },
    /// A signalfd; the signals it reads are the task's pending signals.
    SignalFd {
        flags: u32,
        state: SignalFd,
    },
    /// An epoll instance with its registered fds.
    Epoll {
        flags: u32,
        state: Epoll,
    },
    /// An inotify instance with its watches (re-added by path).
    Inotify {
        flags: u32,
        state: Inotify,
    },
    /// A UNIX domain socket.
    Unix {
        flags: u32,
        state: UnixSocket,
    },
    /// A TCP or UDP socket (IPv4 or IPv6).
    Inet {
        flags: u32,
        state: InetSocket,
    },
    /// A memfd, by name, contents and seals.
    Memfd {
        flags: u32,
        state: Memfd,
    },
    /// The task's connection to `torpor daemon` (a SOCK_SEQPACKET UNIX
    /// socket): connected afresh to the daemon's socket at restore, where it
    /// receives `Resumed`.
    TorporConn {
        flags: u32,
    },
    /// A memfd stored as a [`MemfdObject`] (by id): one object whatever
    /// the number of fds, descriptions and mappings that refer to it.
    MemfdFile {
        flags: u32,
        state: MemfdRef,
    },
    /// A regular file unlinked while open, of any size: the
    /// [`UnlinkedObject`] `inode`, written before the first task;
    /// descriptions and mappings of one inode share the recreated file.
    UnlinkedFile {
        flags: u32,
        offset: u64,
        inode: u64,
    },
    /// The master of a pseudo-terminal pair (`/dev/ptmx`), with the state
    /// of the pair (format 2.3).
    PtyMaster {
        flags: u32,
        state: PtyMaster,
    },
    /// A pseudo-terminal slave (`/dev/pts/N`) whose master the tree holds:
    /// reopened from that master (format 2.3).
    PtySlave {
        flags: u32,
        state: PtySlave,
    },
    /// A pidfd of a process of the tree, opened again by its holder once
    /// every task exists (format 2.4).
    Pidfd {
        flags: u32,
        state: Pidfd,
    },
    /// A file or directory of `/proc/PID/` of a process of the tree,
    /// opened again by its holder once every task exists (format 2.4).
    ProcFile {
        flags: u32,
        state: ProcFile,
    },
    /// An established TCP connection taken in repair mode, kept with its
    /// sequence numbers, queues, options and window (format 2.4; written
    /// only when the dump is asked to keep established connections).
    TcpConnection {
        flags: u32,
        state: TcpConnection,
    },
    /// A TCP connection half-closed or closing (`CLOSE_WAIT`, `FIN_WAIT1`,
    /// `FIN_WAIT2`, `LAST_ACK`, `CLOSING`, its `socket.tcp_state`), kept
    /// like an established one; the FINs sent and received are counted in
    /// its sequence numbers, not in its queues (format 2.5). A reader that
    /// does not know the variant refuses it rather than bring it back
    /// established.
    TcpClosing {
        flags: u32,
        state: TcpConnection,
    },
    /// A netlink socket: its protocol, port id, multicast groups,
    /// destination and options (format 2.6).
    Netlink {
        flags: u32,
        state: NetlinkSocket,
    },
    /// A packet socket: its type, protocol, interface and options
    /// (format 2.6).
    Packet {
        flags: u32,
        state: PacketSocket,
    },
    /// A fanotify group: its `fanotify_init` flags and its marks, each
    /// added again by path (format 2.7).
    Fanotify {
        flags: u32,
        state: Fanotify,
    },
}

/// A file or directory below `/proc/PID/` of a process of the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcFile {
    /// The process whose directory it is in.
    pub pid: i32,
    /// The path below `/proc/PID/`; empty for that directory itself.
    pub path: RawPath,
    /// The file position.
    pub offset: u64,
}

/// A pidfd: the process it names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pidfd {
    /// The process's pid (fdinfo `Pid:`), a process of the tree.
    pub pid: i32,
}

/// An established TCP connection as TCP repair mode reads it. The
/// connection is the same on both ends after the restore: the peer goes on
/// from the byte it last acknowledged and sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnection {
    /// Family, addresses and options, as for any TCP socket.
    pub socket: InetSocket,
    /// `TCP_QUEUE_SEQ` of the send queue: the sequence number after the
    /// last byte the app wrote.
    pub snd_seq: u32,
    /// `TCP_QUEUE_SEQ` of the receive queue: the next sequence number
    /// expected from the peer.
    pub rcv_seq: u32,
    /// Bytes written and not acknowledged by the peer; the last `unsent`
    /// of them were never sent.
    pub send_len: u32,
    pub unsent: u32,
    /// Bytes received and not read by the app.
    pub recv_len: u32,
    /// `TCP_MAXSEG`.
    pub mss: u32,
    /// `tcpi_options` of `TCP_INFO`: timestamps (1), SACK (2), window
    /// scaling (4).
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// `TCP_TIMESTAMP`: the connection's timestamp clock.
    pub timestamp: u32,
    /// `TCP_REPAIR_WINDOW`: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// The send queue's bytes, oldest first, and the receive queue's: not
    /// in this record but in the `tcp-queue` records that follow it.
    #[serde(skip)]
    pub send_queue: Vec<u8>,
    #[serde(skip)]
    pub recv_queue: Vec<u8>,
}

/// Bytes of a queue of the kept TCP connection held by the open file
/// description `ofd` (as its fd records name it), from `offset`; the
/// pieces of each queue come in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpQueue {
    pub ofd: u64,
    /// The send queue, else the receive queue.
    pub send: bool,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// One socket option as `getsockopt` returned it: level, name and value
/// bytes (a classic BPF filter as its instructions, 8 bytes each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawSockOpt {
    pub level: i32,
    pub opt: i32,
    pub value: Vec<u8>,
}

/// The options of the socket held by the open file description `ofd` that
/// differ from those of a new socket of its kind, beyond the [`SockOpts`]
/// of its fd record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockExtra {
    pub ofd: u64,
    pub opts: Vec<RawSockOpt>,
}

/// The file descriptors a queued message of a UNIX socket carries
/// (`SCM_RIGHTS`): the message is `queue[message]` of the socket held by the
/// open file description `ofd`, and `files` are the descriptions it passes,
/// in the message's order, each one the tree holds too (as its fd records
/// name them) or one only the queue holds (a `flight-file` record).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixRights {
    pub ofd: u64,
    pub message: u32,
    pub files: Vec<u64>,
}

/// A file description that no process holds, only a queued message of a
/// UNIX socket (the sender closed its copy after sending it): `ofd` is
/// its description, as `unix-rights` records name it, and `kind` what it is
/// with its status flags, as an fd record would hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlightFile {
    pub ofd: u64,
    pub kind: FdKind,
}

/// The connections waiting to be accepted by the UNIX listener held by the
/// open file description `ofd`: `clients` are the descriptions of their
/// clients, each a socket the tree holds, in the order `accept` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixWaiting {
    pub ofd: u64,
    pub clients: Vec<u64>,
}

/// A control group (v2) of the tree: its path from the root of the dumping
/// torpor's cgroup namespace, the processes that were in it, and the
/// controller settings its directory had (`engine::cgroup::SETTINGS`),
/// which a restore writes only into a cgroup it makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub path: String,
    pub pids: Vec<i32>,
    pub settings: Vec<CgroupSetting>,
}

/// One controller file of a cgroup and its value as the kernel printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupSetting {
    pub file: String,
    pub value: String,
}

/// The `struct aio_ring` header at the start of an AIO ring: 32 bytes, the
/// same on every architecture.
pub const AIO_RING_HEADER: u64 = 32;
/// `AIO_RING_MAGIC`.
pub const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
/// `AIO_RING_COMPAT_FEATURES` and `AIO_RING_INCOMPAT_FEATURES`.
pub const AIO_RING_COMPAT: u32 = 1;
pub const AIO_RING_INCOMPAT: u32 = 0;
/// Bytes of one `struct io_event` (u64 data, u64 obj, i64 res, i64 res2),
/// the same on every architecture.
pub const IO_EVENT_BYTES: u64 = 32;
/// The most events one `aio-ring` record holds (a ring's pending
/// completions take as many records as they need).
pub const AIO_EVENTS_PER_RECORD: usize = 1024;

/// One AIO context of a process, named by its ring's address (the
/// `aio_context_t` the application holds): the ring mapping
/// `start..start + size`, the ring header as the kernel keeps it in the
/// mapping's first bytes, and the completed events not yet reaped, those
/// from `head` to `tail` (modulo `nr`). When there are more than
/// [`AIO_EVENTS_PER_RECORD`], the ring takes several records in a row, each
/// with the same header and the events from `first` on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AioRing {
    pub start: u64,
    pub size: u64,
    /// The kernel's index of the context in the process (`ring->id`); a
    /// restore gets whatever index the kernel gives.
    pub id: u32,
    /// Events the ring holds: `size / 32 - 1`.
    pub nr: u32,
    pub head: u32,
    pub tail: u32,
    pub magic: u32,
    pub compat_features: u32,
    pub incompat_features: u32,
    pub header_length: u32,
    /// The index, from `head`, of the first of `events`.
    pub first: u32,
    pub events: Vec<IoEvent>,
}

impl AioRing {
    /// How many completions wait in the ring, from `head` to `tail`.
    pub fn pending(&self) -> u32 {
        if self.nr == 0 {
            return 0;
        }
        (self.tail % self.nr + self.nr - self.head % self.nr) % self.nr
    }
}

/// One `struct io_event`: a completion as `io_getevents` returns it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoEvent {
    pub data: u64,
    pub obj: u64,
    pub res: i64,
    pub res2: i64,
}

/// `membarrier` registrations of a process (its mm), as the bits of the
/// registering commands: `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED` (2),
/// `REGISTER_PRIVATE_EXPEDITED` (16), `..._SYNC_CORE` (64) and
/// `..._RSEQ` (256).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membarrier {
    pub registered: u32,
}

impl Membarrier {
    pub const GLOBAL_EXPEDITED: u32 = 2;
    pub const PRIVATE_EXPEDITED: u32 = 16;
    pub const PRIVATE_EXPEDITED_SYNC_CORE: u32 = 64;
    pub const PRIVATE_EXPEDITED_RSEQ: u32 = 256;
    /// Every registration a record may hold.
    pub const ALL: u32 = Self::GLOBAL_EXPEDITED
        | Self::PRIVATE_EXPEDITED
        | Self::PRIVATE_EXPEDITED_SYNC_CORE
        | Self::PRIVATE_EXPEDITED_RSEQ;

    /// The name of one registration bit.
    pub fn name(bit: u32) -> &'static str {
        match bit {
            Self::GLOBAL_EXPEDITED => "global expedited",
            Self::PRIVATE_EXPEDITED => "private expedited",
            Self::PRIVATE_EXPEDITED_SYNC_CORE => "private expedited sync-core",
            Self::PRIVATE_EXPEDITED_RSEQ => "private expedited rseq",
            _ => "unknown",
        }
    }
}

/// The credentials the kernel recorded for a queued message of a UNIX
/// socket when it was sent (`SCM_CREDENTIALS`): the message is
/// `queue[message]` of the socket held by the open file description `ofd`,
/// sent by process `pid` (a process of the tree) as user `uid` and group
/// `gid`. A message the kernel recorded no credentials for has no record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixCreds {
    pub ofd: u64,
    pub message: u32,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A pseudo-terminal pair, as its master sees it: the slave's index in its
/// devpts instance, the line settings, and what is queued for the master.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyMaster {
    /// `TIOCGPTN`: the N of `/dev/pts/N`.
    pub index: u32,
    pub termios: Termios,
    /// `TIOCGWINSZ`: rows, columns, x and y pixels.
    pub winsize: [u16; 4],
    /// `TIOCGPKT`: packet mode.
    pub packet: bool,
    /// `TIOCGPTLCK`: the slave cannot be opened.
    pub locked: bool,
    /// Bytes the slave side wrote that the master has not read yet, as the
    /// master reads them (after output processing).
    pub output: Vec<u8>,
    /// Owner, group and mode of `/dev/pts/N`.
    pub slave_uid: u32,
    pub slave_gid: u32,
    pub slave_mode: u32,
    /// `TIOCGPGRP`: the foreground process group of the slave's session,
    /// 0 when the slave is no session's controlling terminal.
    pub foreground: i32,
}

/// The line settings of a terminal (`struct termios` without the speeds,
/// which `cflag` holds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    /// The control characters, `NCCS` of them.
    pub cc: Vec<u8>,
}

/// A pseudo-terminal slave of a pair the tree holds the master of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySlave {
    /// The N of `/dev/pts/N`, its master's `TIOCGPTN`.
    pub index: u32,
    /// The device number, which a session's controlling terminal names.
    pub rdev: u64,
}

/// An open file description of a memfd: the object and the offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemfdRef {
    /// The [`MemfdObject`] id.
    pub id: u64,
    pub offset: u64,
}

/// A memfd (`memfd_create`) with its contents inline, as images of
/// torpor before `memfd` records hold them: name, contents, seals and file
/// offset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memfd {
    /// The name given to memfd_create (without the `memfd:` prefix).
    pub name: RawPath,
    pub size: u64,
    /// The contents up to the last non-zero byte; the rest reads as zeros.
    pub bytes: Vec<u8>,
    /// `F_GET_SEALS`.
    pub seals: u32,
    pub offset: u64,
}

/// A TCP or UDP socket: listeners and bound or connected UDP sockets come
/// back on their addresses; a TCP connection comes back reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: i32,
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_RAW`.
    pub sock_type: i32,
    pub protocol: i32,
    /// `getsockname` as raw `sockaddr_in`/`sockaddr_in6` bytes; empty if unbound.
    pub local: Vec<u8>,
    /// `getpeername` bytes; empty if unconnected.
    pub peer: Vec<u8>,
    pub listening: bool,
    pub backlog: u32,
    /// TCP state (`TCP_ESTABLISHED`...), 0 for UDP.
    pub tcp_state: u8,
    pub v6only: bool,
    pub opts: SockOpts,
    /// A TCP connection that was dropped before the dump (closed with its
    /// receive side shut): it comes back dropped too.
    pub dropped: bool,
    /// The connection's error (ECONNRESET) was not yet read by the app.
    pub error_pending: bool,
    /// UDP and UDP-Lite: datagrams waiting to be read, in order (their
    /// senders are not kept).
    pub queue: Vec<Vec<u8>>,
}

/// A netlink socket with an empty receive queue (one with messages
/// waiting is refused at the dump).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetlinkSocket {
    /// `SOCK_RAW` or `SOCK_DGRAM`.
    pub sock_type: i32,
    /// `NETLINK_ROUTE`, `NETLINK_KOBJECT_UEVENT`...
    pub protocol: i32,
    /// The port id it is bound to (`nl_pid` of `getsockname`), whether the
    /// app chose it or the kernel did; 0 when unbound.
    pub portid: u32,
    /// Its multicast groups as `NETLINK_LIST_MEMBERSHIPS` reads them:
    /// bit `g - 1` of the words, in order, is group `g`.
    pub groups: Vec<u32>,
    /// The destination of a `connect`: port id and group mask
    /// (`getpeername`); both 0 when unconnected.
    pub dst_portid: u32,
    pub dst_groups: u32,
    /// The `SOL_NETLINK` options that are on (`NETLINK_PKTINFO`...), by
    /// number.
    pub options: Vec<i32>,
    pub opts: SockOpts,
}

/// A packet socket (`AF_PACKET`) with no ring, fanout group, multicast or
/// promiscuous membership, and nothing queued (those are refused at the
/// dump).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketSocket {
    /// `SOCK_RAW` or `SOCK_DGRAM`.
    pub sock_type: i32,
    /// The protocol it receives (`ETH_P_*`, host order); 0 for none.
    pub protocol: u16,
    /// The interface it is bound to, by index and name at the dump; 0 and
    /// empty when bound to none (every interface).
    pub ifindex: i32,
    pub ifname: String,
    /// The `SOL_PACKET` options that are not 0, as (option, value):
    /// `PACKET_VERSION`, `PACKET_RESERVE`, `PACKET_AUXDATA`...
    pub options: Vec<(i32, i32)>,
    pub opts: SockOpts,
}

/// Socket options a restore sets again (buffer sizes as `getsockopt`
/// reports them, i.e. doubled by the kernel).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpts {
    pub rcvbuf: i32,
    pub sndbuf: i32,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub keepalive: bool,
    pub passcred: bool,
    /// `SO_RCVTIMEO` / `SO_SNDTIMEO` in microseconds.
    pub rcvtimeo_us: u64,
    pub sndtimeo_us: u64,
    /// `TCP_NODELAY`.
    pub nodelay: bool,
}

/// A UNIX domain socket: its names, its peer and what waits to be read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`.
    pub sock_type: i32,
    /// The socket's inode at the dump; pairs it with its peer.
    pub inode: u64,
    /// The peer's inode; 0 when unconnected or the peer is closed.
    pub peer: u64,
    /// Connected at the dump (a closed peer leaves it connected to nobody).
    pub connected: bool,
    pub listening: bool,
    pub backlog: u32,
    /// `getsockname`: a path, `\0`-led for an abstract name, empty if unbound.
    pub name: RawPath,
    /// Where a path name is bound again: the name made absolute against the
    /// process's cwd at the dump.
    pub bind_path: RawPath,
    /// `getpeername` of a socket connected outside the tree.
    pub peer_name: RawPath,
    /// `sk_shutdown`: 1 receive side, 2 send side.
    pub shutdown: u8,
    /// Messages (stream: bytes) waiting in this socket's receive queue, in order.
    pub queue: Vec<Vec<u8>>,
    pub opts: SockOpts,
}

/// The counter and mode of an eventfd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFd {
    pub count: u64,
    /// `EFD_SEMAPHORE`: each read takes 1.
    pub semaphore: bool,
}

/// A timerfd's clock, settings and what it owes the reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFd {
    /// `CLOCK_*` id.
    pub clock: i32,
    /// `TFD_TIMER_ABSTIME` / `TFD_TIMER_CANCEL_ON_SET`, as last set.
    pub settime_flags: u32,
    pub interval_ns: u64,
    /// Time left until the next expiry at the dump; 0 when disarmed.
    pub value_ns: u64,
    /// The next expiry as an absolute time on `clock`, read at the dump.
    pub deadline_ns: u64,
    /// Expirations not yet read.
    pub ticks: u64,
}

/// The signals a signalfd accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalFd {
    pub mask: u64,
}

/// One fd registered in an epoll instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollTarget {
    /// The fd number in `Epoll::owner` that names the registered file.
    pub fd: i32,
    /// `EPOLLIN`... with `EPOLLET`, `EPOLLONESHOT` and friends.
    pub events: u32,
    pub data: u64,
}

/// An epoll instance: its targets, by fd number in the process that holds
/// them (`owner`), which registers them again after its fds are in place.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoll {
    pub owner: i32,
    pub targets: Vec<EpollTarget>,
}

/// One inotify watch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    /// The watched inode's path at the dump.
    pub path: RawPath,
}

/// An inotify instance: its watches in wd order. Queued events are not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inotify {
    pub watches: Vec<InotifyWatch>,
}

/// What a fanotify mark is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FanotifyObject {
    /// A file or directory.
    #[default]
    Inode,
    /// A mount (`FAN_MARK_MOUNT`), by its mount point.
    Mount,
    /// A filesystem (`FAN_MARK_FILESYSTEM`), by a path on it.
    Filesystem,
}

/// One fanotify mark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanotifyMark {
    pub object: FanotifyObject,
    /// The mark's `FAN_MARK_*` flags fdinfo shows (`mflags`):
    /// `FAN_MARK_IGNORED_SURV_MODIFY`, `FAN_MARK_EVICTABLE`,
    /// `FAN_MARK_IGNORE`.
    pub flags: u32,
    /// The events it reports (`FAN_*`, with `FAN_ONDIR` and
    /// `FAN_EVENT_ON_CHILD`).
    pub mask: u64,
    /// The events it ignores.
    pub ignored_mask: u64,
    /// The marked inode's path, the mount's mount point or a path on the
    /// filesystem, at the dump.
    pub path: RawPath,
}

/// A fanotify group: the flags it was made with and its marks. Queued
/// events are never kept (a dump refuses a group holding any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fanotify {
    /// `fanotify_init` flags: class, `FAN_REPORT_*` and the others.
    pub flags: u32,
    /// The status flags of the event files it opens (`event_f_flags`).
    pub event_flags: u32,
    /// Its marks as fdinfo lists them, the newest first.
    pub marks: Vec<FanotifyMark>,
}

/// One open file descriptor of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    /// `FD_CLOEXEC` and other descriptor (not file) flags.
    pub fd_flags: u32,
    /// Open file description: fds (in any task) with the same number share
    /// one description, hence its offset and status flags (dup, fork).
    pub ofd: u64,
    pub kind: FdKind,
}

/// The `mm_struct` fields `PR_SET_MM_MAP` restores, and the auxiliary vector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `/proc/PID/auxv` as (type, value) words.
    pub auxv: Vec<u64>,
}

/// The bytes buffered in a pipe at the freeze.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeData {
    pub id: u64,
    /// The pipe's capacity (`F_GETPIPE_SZ`), restored with `F_SETPIPE_SZ`.
    pub capacity: u32,
    pub bytes: Vec<u8>,
}

/// How a `Pages` record stores its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    /// The page bytes as they are.
    Raw,
    /// An LZ4 block (lz4_flex's block format, no frame).
    Lz4,
    /// All pages are zero; no data is stored.
    Zero,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Lz4 => "lz4",
            Codec::Zero => "zero",
        }
    }
}

/// The fixed part of a `Pages` record; the (possibly compressed) data follows
/// as a postcard byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagesHead {
    pub vaddr: u64,
    pub pages: u32,
    pub codec: Codec,
}

/// A `Pages` record, borrowing its data from the reader's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pages<'a> {
    pub vaddr: u64,
    pub pages: u32,
    pub codec: Codec,
    #[serde(borrow)]
    pub data: &'a [u8],
}

/// The last record: what a reader must have seen, and the CRC of every byte
/// before this record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// Records before the trailer, the header included.
    pub records: u64,
    /// Pages described by `Pages` records (zero pages included).
    pub pages: u64,
    /// Bytes before the trailer record.
    pub bytes: u64,
    /// CRC32 of those bytes.
    pub crc: u32,
}

/// A pipe of the tree (`PipeData` id) whose other end, `outside`, a process
/// outside the tree holds: the restore substitutes that end (see
/// docs/objects.md, "Pipes and FIFOs").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPipe {
    pub id: u64,
    /// The pipe's inode at the dump: `--inherit-fd pipe:[INODE]=N` names it.
    pub inode: u64,
    pub outside: PipeEnd,
}

/// The most file bytes one `TmpfsFile` record carries.
pub const TMPFS_CHUNK: usize = 48 * 1024;

/// A piece of a file on tmpfs (`/dev/shm`...) mapped shared by the tree:
/// tmpfs does not survive a power cycle, so a restore recreates the file
/// from these records when it is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsFile {
    pub path: RawPath,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The file's size.
    pub size: u64,
    /// Where `bytes` go in the file.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The most bytes one `ObjectData` record carries.
pub const OBJECT_CHUNK: usize = 48 * 1024;

/// A memfd held or mapped by the tree; its contents follow as
/// [`ObjectData`] records (holes and all-zero chunks left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemfdObject {
    /// The memfd's inode at the dump: fds and mappings name it.
    pub id: u64,
    /// The name given to memfd_create (without the `memfd:` prefix).
    pub name: RawPath,
    pub size: u64,
    /// `F_GET_SEALS`; `F_SEAL_SEAL` alone for a memfd made without
    /// `MFD_ALLOW_SEALING`.
    pub seals: u32,
    /// Permission bits and owner of the inode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A regular file unlinked while the tree holds it open or maps it; its
/// contents follow as [`ObjectData`] records of `ObjectRef::Unlinked`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlinkedObject {
    /// The inode at the dump: fds and mappings name it.
    pub inode: u64,
    /// Where it lived: it is recreated, nameless, in that directory.
    pub path: RawPath,
    pub size: u64,
    /// Permission bits and owner of the inode.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What a path the tree held open, mapped or worked in was at the dump:
/// a restore opens it only if it is still that inode, of that type and
/// owner, reached without a symbolic link. One per path (open files,
/// directories, FIFOs, devices, mapped files, working directories, the
/// directories unlinked and tmpfs files are recreated in).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub path: RawPath,
    pub dev: u64,
    pub inode: u64,
    /// `st_mode`: the file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The user who asked `torpor daemon` for the checkpoint, when not root: a
/// restore acts with at most this user's rights, and refuses tasks with
/// other ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedBy {
    pub uid: u32,
    pub gid: u32,
    /// The user's supplementary groups when it asked.
    pub groups: Vec<u32>,
}

/// A tree of the image: the pid of its root (a process whose parent is
/// outside the image) and the application's name, as `torpor run --name`
/// and `[[app]]` give it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub root: i32,
    pub name: String,
}

/// A SysV shared memory segment attached by the tree (`/proc/sysvipc/shm`);
/// its contents follow as [`ObjectData`] records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysvShm {
    pub shmid: i32,
    /// `IPC_PRIVATE` (0) for a segment marked for removal.
    pub key: i32,
    pub size: u64,
    /// Permission bits (`0o777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// The creator's pid: with the id, key and size, what tells the
    /// segment from another one with the same id on the same boot.
    pub cpid: i32,
    /// Marked for removal (`IPC_RMID` while attached, `SHM_DEST`).
    pub removed: bool,
    /// The key the segment was created with, which its maps name shows
    /// (`/SYSV<key>`) even once removal made its key `IPC_PRIVATE`.
    pub created_key: i32,
}

/// Which object an [`ObjectData`] record fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectRef {
    /// A [`MemfdObject`], by id.
    Memfd(u64),
    /// A [`SysvShm`], by shmid.
    Sysv(i32),
    /// An [`UnlinkedObject`], by its inode at the dump.
    Unlinked(u64),
}

/// Bytes of a memfd or SysV segment at `offset`; what no record covers
/// reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectData {
    pub object: ObjectRef,
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// The tree's clocks at the freeze, as the tree read them: the host's clock
/// plus the offsets of the time namespace the tree was in. A restore with a
/// time namespace continues `CLOCK_MONOTONIC` from here (the time asleep
/// does not count, as across a suspend) and `CLOCK_BOOTTIME` from here plus
/// the wall-clock time asleep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clocks {
    /// `CLOCK_MONOTONIC` of the tree, in ns.
    pub monotonic_ns: u64,
    /// `CLOCK_BOOTTIME` of the tree, in ns.
    pub boottime_ns: u64,
    /// `CLOCK_REALTIME` (never namespaced), in ns since the epoch; negative
    /// before 1970.
    pub realtime_ns: i64,
    /// The offsets of the tree's time namespace (`/proc/PID/timens_offsets`)
    /// over the host's clocks, in ns; 0 in the root namespace.
    pub monotonic_offset_ns: i64,
    pub boottime_offset_ns: i64,
    /// The tree had a time namespace of its own (a torpor-made one, after
    /// an earlier restore), not the host's.
    pub own_namespace: bool,
    /// The kernel had time namespaces (`CONFIG_TIME_NS`).
    pub kernel_timens: bool,
}

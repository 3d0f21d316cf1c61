//! The checkpoint/restore engine: freeze a process tree, collect its state,
//! stream it into an image; and rebuild a tree from an image.
//!
//! Flow of a dump: `freeze` (seize every thread) → `collect` (registers,
//! /proc, parasite, files) → `dump` (stream state and pages through
//! `image_io` into the image) → release or kill. Flow of a restore:
//! `image_io` reads and checks the image's state into an [`ImageState`]
//! (stepping over the pages, which the restore checks as it streams them),
//! `restore` validates it, forks the tasks with their pids, rebuilds each
//! address space through remote syscalls (`remote`, `ptrace`), and lets the
//! tree go (`restore` draws its steps); `clocks` keeps the tree's monotonic
//! clocks continuous across both. `procfs` parses /proc.
//!
//! `state` is the data in between and a leaf: it depends on the image
//! records and nothing else of the engine, and every other module of the
//! engine depends on it, never the reverse. A failure is an [`EngineError`]:
//! the [`Step`] that failed and its [`Cause`].
//!
//! # Adding a kind of file descriptor
//!
//! Every kind of open file description is a variant of
//! [`FileKind`](state::FileKind), made from the registry
//! `engine::state::file_registry`, which also makes the dispatch of every
//! step of its life in `engine::files`: collect, the image record, the
//! checks against this system before a restore creates anything, the
//! reopening, and its name in refusals.
//!
//! An anonymous-inode file or a socket `Foo` (the common case) takes:
//!
//! 1. Its image record: a `Foo` struct in `image::records` and a variant
//!    `FdKind::Foo { flags, state: Foo }` (a new `FdKind` variant is a new
//!    format minor version: see `image` for the rule).
//! 2. One module, `engine/files/foo.rs` (and its `mod foo;` line in
//!    `engine/files/mod.rs`), implementing
//!    [`AnonKind`](files::AnonKind) for `Foo`: its `NAME` for messages, the
//!    `CLAIM` saying which descriptors are its own (a `/proc` link, or a
//!    socket family), `collect` from outside the frozen task, and `open`,
//!    which creates the object again in torpor before the tasks are forked.
//! 3. One registry line, `Foo(crate::image::records::Foo),` under `anon` in
//!    `engine::state::file_registry`.
//!
//! A kind reached by path or handed in (as files, devices, pipes, external
//! descriptors and the daemon connection are) has a state type in
//! `engine::state`, implements [`FsKind`](files::FsKind) in its module
//! (its record and the records it reads, `check`, `open`), has its line
//! under `fs` in the registry, and is recognised by the file table of
//! `collect` from the file's type.
//!
//! Structure checks need nothing more unless the kind refers to other
//! objects of the image (`restore::plan`); a fix-up once every task exists
//! (as epoll targets have, `files::register_epolls`) is called from
//! `restore`. A kind whose descriptions pair up across the tree (a
//! pseudo-terminal slave and its master, `files::link_ptys`) is settled in
//! `dump` once the whole file table is known, beside `files::check_peers`.

pub use state::ImageState;

pub mod aio;
pub mod cgroup;
pub mod clocks;
pub mod collect;
pub mod conv;
pub mod direct_file;
pub mod dump;
pub mod files;
pub mod freeze;
pub mod image_io;
pub mod procfs;
pub mod ptrace;
pub mod remote;
pub mod restore;
pub mod state;
pub mod torpor_conn;
pub mod trees;

use crate::engine::procfs::ProcError;
use crate::engine::ptrace::PtraceError;
use crate::engine::remote::RemoteError;

/// The system page size.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Told how the pages of a dump or a restore stream, from inside the page
/// loops: what a progress display on a terminal shows.
pub trait Progress: std::fmt::Debug + Send + Sync {
    /// The bytes of pages the operation expects to move: for a restore
    /// those the image holds, for a dump an estimate (the tree's anonymous
    /// and swapped memory).
    fn expect(&self, bytes: u64);
    /// `bytes` more of pages read from the tree (dump) or written into it
    /// (restore).
    fn advance(&self, bytes: u64);
    /// A lazy restore's tree runs: what follows are pages arriving on
    /// first touch and in the background.
    fn running(&self) {}
}

/// Why a step of a dump or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Refused(String),
}

impl From<crate::arch::RegsError> for Cause {
    fn from(e: crate::arch::RegsError) -> Self {
        match e {
            // Not a failure of the task or of ptrace: a task torpor cannot take.
            e @ (crate::arch::RegsError::Foreign { .. } | crate::arch::RegsError::Wide { .. }) => {
                Cause::Unsupported(e.to_string())
            }
            e => Cause::Ptrace(e.into()),
        }
    }
}

/// The step of a dump or a restore that failed. Callers match on it; its
/// text is what the user reads before the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    // Dump, in order.
    /// Seizing and interrupting every thread of the tree.
    Freeze,
    /// Reading a process's state from /proc and ptrace.
    Collect(i32),
    /// Reading one thread's registers, signals and filters.
    CollectThread(i32),
    /// Running the parasite in a process.
    Parasite(i32),
    /// A process's descriptors.
    Files(i32),
    /// The tree's open file descriptions as a whole (peers, sharing).
    FileTable,
    /// The tree's clocks.
    Clocks,
    /// A process's memory pages.
    Memory(i32),
    /// Encoding the image.
    WriteImage,
    /// The A/B store: opening, writing, committing.
    Store,
    /// Killing the dumped tree.
    Kill,
    // Restore, in order.
    /// Checking the image against this system before creating anything;
    /// also a page record found damaged as it streams in, which kills
    /// what was created before any of it ran.
    Validate,
    /// Reading the image's records.
    ReadImage,
    /// Becoming the restored tree's subreaper.
    Restore,
    /// Files on tmpfs recreated before anything opens them.
    RecreateTmpfsFiles,
    /// The tree's own time namespace.
    TimeNamespace,
    /// Opening every file description and object of the tree.
    OpenFiles,
    /// Forking the tasks with their pids.
    CreateTasks,
    /// Seizing the created tasks.
    SeizeTasks,
    /// Mapping a process's memory.
    MapMemory(i32),
    /// Writing a process's pages.
    WriteMemory(i32),
    /// Filling memfds and SysV segments.
    FillObjects,
    /// A process's mm fields, signals, threads and registers.
    Rebuild(i32),
    /// Sealing memfds and removing SysV segments marked for removal.
    FinishObjects,
    /// Owners of signal-driven I/O.
    SignalDrivenIo,
    /// Stopping a process that was stopped at the dump.
    StopAgain(i32),
    /// Letting the tree go.
    Detach,
    /// Pages of a lazy restore arriving while the tree runs: a damaged
    /// image here kills the tree.
    LazyPages,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Freeze => f.write_str("freeze"),
            Step::Collect(pid) => write!(f, "collect {pid}"),
            Step::CollectThread(tid) => write!(f, "collect thread {tid}"),
            Step::Parasite(pid) => write!(f, "parasite {pid}"),
            Step::Files(pid) => write!(f, "files {pid}"),
            Step::FileTable => f.write_str("files"),
            Step::Clocks => f.write_str("clocks"),
            Step::Memory(pid) => write!(f, "memory {pid}"),
            Step::WriteImage => f.write_str("write image"),
            Step::Store => f.write_str("store"),
            Step::Kill => f.write_str("kill"),
            Step::Validate => f.write_str("validate"),
            Step::ReadImage => f.write_str("read image"),
            Step::Restore => f.write_str("restore"),
            Step::RecreateTmpfsFiles => f.write_str("recreate tmpfs files"),
            Step::TimeNamespace => f.write_str("time namespace"),
            Step::OpenFiles => f.write_str("open files"),
            Step::CreateTasks => f.write_str("create tasks"),
            Step::SeizeTasks => f.write_str("seize tasks"),
            Step::MapMemory(pid) => write!(f, "map memory {pid}"),
            Step::WriteMemory(pid) => write!(f, "write memory {pid}"),
            Step::FillObjects => f.write_str("fill memfds and SysV segments"),
            Step::Rebuild(pid) => write!(f, "rebuild {pid}"),
            Step::FinishObjects => f.write_str("seal memfds and remove SysV segments"),
            Step::SignalDrivenIo => f.write_str("signal-driven I/O"),
            Step::StopAgain(pid) => write!(f, "stopping process {pid} again"),
            Step::Detach => f.write_str("detach"),
            Step::LazyPages => f.write_str("lazy pages"),
        }
    }
}

/// A failed step: `<step>: <cause>`.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct EngineError {
    pub step: Step,
    pub cause: Cause,
}

impl EngineError {
    pub fn new(step: Step, cause: impl Into<Cause>) -> Self {
        Self {
            step,
            cause: cause.into(),
        }
    }
}

/// Attaches a step to any error convertible into a [`Cause`].
pub trait StepExt<T> {
    fn step(self, step: Step) -> Result<T, EngineError>;
}

impl<T, E: Into<Cause>> StepExt<T> for Result<T, E> {
    fn step(self, step: Step) -> Result<T, EngineError> {
        self.map_err(|e| EngineError {
            step,
            cause: e.into(),
        })
    }
}

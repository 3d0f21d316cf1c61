//! Restore: validate the image, fork the tree with its original pids, let
//! each task set up what it can itself, then rebuild every address space
//! from outside through a syscall trampoline, and let the tree go.
//!
//! One module per step, in the order the data flows:
//!
//! ```text
//!  validate    the image's state against this system, every record but
//!     │        the pages checked (`restore_file` steps over those);
//!     │        nothing created yet
//!  objects     torpor opens every file description, shared memory object,
//!     │        memfd and SysV segment the tree holds (`clocks`: the tree's
//!     │        own time namespace first, where the kernel has them)
//!  tasks       clone3(set_tid=root) ──▶ root: setsid/setpgid, clone3 its
//!     │          children (each does the same), fds, cwd, umask, rlimits,
//!     │          "ready", pause(); then every task is seized
//!  pages       the image again, record by record, the pages read and
//!     │        checked once, here (a damaged one kills the tree, none of
//!     │        which has run); per task:
//!     ├ memory     trampoline in a hole → unmap torpor's image → move
//!     │            vdso/vvar/sigpage and shared objects → mmap every VMA
//!     ├            pages copied straight from the records into place
//!     └ process    mprotect → madvise, subreaper, THP, login uid
//!        │         (`attrs`) → PR_SET_MM_MAP → sigactions, itimers →
//!        │         threads (clone3 set_tid) → timers → shared signals →
//!        │         seccomp filters every thread shares
//!        ├ thread  per thread: name, tid address, robust list, altstack,
//!        │         rseq, TLS, pending signals, nice and policy, its own
//!        │         seccomp filters, creds (`creds`), FPU, registers
//!        └         oom_score_adj, dumpable; trampoline unmapped
//!  (here)      seals, signal-driven I/O owners, parent-death signals,
//!              strict seccomp mode, stopped tasks stopped again; detach everything; torpor
//!              exits and the root is re-parented
//! ```
//!
//! Remote syscalls take their arguments from the trampoline's scratch
//! area (`trampoline::Scratch`). Any failure kills every task created
//! (`tasks::Created`), removes the tmpfs files recreated
//! (`files::TmpfsMade`) and names the step; unlinked files are recreated
//! without a name and leave nothing.
//!
//! A lazy restore (`lazy`) lets the tree run before its private
//! anonymous pages are in: they come through userfaultfd, on first touch
//! and in the background, while `restore_lazy` keeps serving.
//!
//! Every file opened or created by name is opened as the task that held
//! it (its fsuid, fsgid and groups at the dump, never root's), through no
//! symbolic link, and only if it is the file the dump recorded
//! (`files::owner`); `validate` checks all of them first.

mod aio;
pub mod attrs;
mod creds;
pub mod lazy;
mod memory;
mod objects;
mod pages;
pub mod plan;
mod process;
mod seccomp;
mod tasks;
mod thread;
mod timers;
mod trampoline;
mod validate;

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use crate::engine::clocks::ClockMode;
use crate::engine::image_io;
use crate::engine::ptrace::{self, Stop};
use crate::engine::state::ImageState;
use crate::engine::{Cause, EngineError, Step, StepExt};
use crate::image::ImageReader;

pub(crate) use tasks::fork_with_pid;
pub use validate::validate;

use objects::open_objects;

/// Sets the parent-death signal of every thread of the stopped, complete
/// process `p` to its image's (clearing the one its main thread was given
/// while the tree was built). The root's is cleared: its parent is torpor,
/// which exits as soon as the tree runs, not the parent it had.
fn set_parent_death(p: &crate::engine::state::ProcessState, root: bool) -> Result<(), Cause> {
    for (i, t) in p.threads.iter().enumerate() {
        let sig = if root {
            0
        } else {
            attrs::thread_attrs(p, t.tid).pdeathsig
        };
        // Other threads start without one.
        if i == 0 || sig != 0 {
            attrs::set_pdeathsig(t.tid, sig)?;
        }
    }
    Ok(())
}
use pages::{rebuild_all, LazyPass};
use tasks::{create_tasks, Created, Subreaper};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// A terminal to use in place of one that no longer exists.
    pub tty: Option<PathBuf>,
    /// A socket connected to `torpor daemon`, which becomes the tree's
    /// connection to the daemon (`FileKind::TorporConn`). The caller keeps
    /// its own descriptor to ask the daemon for `Resumed` afterwards.
    pub torpor_conn: Option<i32>,
    /// Descriptors (of this process) for the image's external fds, by key.
    pub inherit: Vec<(String, i32)>,
    /// Leave the tree on the host's clocks (`--no-timens`) instead of a
    /// time namespace continuing the clocks of the dump.
    pub host_clocks: bool,
    /// Told of the pages as they are written into the tree.
    pub progress: Option<std::sync::Arc<dyn crate::engine::Progress>>,
    /// Let the tree run before its private anonymous pages are in: they
    /// arrive through userfaultfd on first touch and in the background
    /// (`restore_lazy`). Where userfaultfd cannot serve, the restore is
    /// eager, with one log line.
    pub lazy: bool,
    /// Whether userfaultfd can serve a lazy restore here, and why not;
    /// `None` asks the kernel (`lazy::probe`).
    pub userfaultfd: Option<fn() -> Result<(), String>>,
    /// Bring back the established TCP connections an image keeps
    /// (`--tcp-established`); such an image is refused without it.
    pub tcp_established: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreStats {
    pub processes: usize,
    pub threads: usize,
    pub page_bytes: u64,
    /// The clocks the tree reads: its own time namespace, or the host's
    /// and why.
    pub clocks: Option<ClockMode>,
    /// A lazy restore: what came after the tree ran.
    pub lazy: Option<lazy::LazyStats>,
    /// Why a lazy restore (or part of it) was eager after all.
    pub eager_because: Option<String>,
}

fn refused(step: Step, why: String) -> EngineError {
    EngineError::new(step, Cause::Refused(why))
}

fn last_os() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A reader for a pass that steps over the page records: each step is a
/// seek, which drops what is buffered, so a small buffer copies less.
fn stepping<R: Read>(r: R) -> BufReader<R> {
    BufReader::with_capacity(512, r)
}

/// A file read at a position of its own (pread): a seek is no syscall, so
/// stepping over a page record costs one read, of the next frame.
#[derive(Debug)]
struct Positioned {
    file: File,
    pos: u64,
}

impl Positioned {
    fn new(file: File) -> Self {
        Self { file, pos: 0 }
    }
}

impl Read for Positioned {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Positioned {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let (base, by) = match to {
            std::io::SeekFrom::Start(n) => (0, i128::from(n)),
            std::io::SeekFrom::Current(n) => (self.pos, i128::from(n)),
            std::io::SeekFrom::End(n) => (self.file.metadata()?.len(), i128::from(n)),
        };
        let new = u64::try_from(i128::from(base) + by).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the image",
            )
        })?;
        self.pos = new;
        Ok(new)
    }
}

/// Restores the image in `path`. Returns once the restored tree runs.
pub fn restore_file(path: &Path, opts: &RestoreOptions) -> Result<RestoreStats, EngineError> {
    let vstep = Step::Validate;
    let raw = || {
        File::open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))
            .step(vstep)
    };
    // The state first, stepping over the pages: they are read once, as
    // `restore` streams them into the tasks. A lazy restore keeps their
    // places, so that its second pass need not step over them again.
    let first = ImageReader::new(stepping(Positioned::new(raw()?))).step(vstep)?;
    if opts.lazy {
        let (state, index) = image_io::read_state_indexed(first.indexing_pages()).step(vstep)?;
        validate(&state, opts)?;
        let image = stepping(Positioned::new(raw()?));
        return restore_lazy(&state, index, opts, image, raw()?, raw()?);
    }
    let state = image_io::read_state_from(first.skipping_pages()).step(vstep)?;
    validate(&state, opts)?;
    restore(&state, opts, BufReader::new(raw()?))
}

/// Restores the newest valid image of the store at `path`.
pub fn restore_store(path: &Path, opts: &RestoreOptions) -> Result<RestoreStats, EngineError> {
    let vstep = Step::Validate;
    let store = crate::store::Store::open_read_only(path).step(Step::Store)?;
    // Verified once, here; then the state stepping over the pages, which
    // `restore` reads into place.
    let Some((info, _)) = store.newest().step(Step::Store)? else {
        return Err(refused(
            Step::Store,
            format!("{} holds no valid image", path.display()),
        ));
    };
    let raw = || -> Result<_, EngineError> { Ok(store.image(info.slot).step(Step::Store)?.1) };
    let first = ImageReader::new(stepping(raw()?)).step(vstep)?;
    if opts.lazy {
        let (state, index) = image_io::read_state_indexed(first.indexing_pages()).step(vstep)?;
        validate(&state, opts)?;
        return restore_lazy(&state, index, opts, stepping(raw()?), raw()?, raw()?);
    }
    let state = image_io::read_state_from(first.skipping_pages()).step(vstep)?;
    validate(&state, opts)?;
    restore(&state, opts, BufReader::new(raw()?))
}

/// [`restore`], lazily: returns once every page is in, the tree having
/// run since its registers, mappings and files were in place. `image` is
/// read in order as by `restore`, its page records stepped over: those
/// `index` holds (from a first pass in
/// [`indexing_pages`](ImageReader::indexing_pages) mode, in image order)
/// without a read, any others one by one; `fetch`
/// and `serve` are two more readers of the same image, for page records
/// read on their own during the restore and after it. Falls back to
/// [`restore`] with one log line where userfaultfd cannot serve. A page
/// record found damaged after the tree ran kills the tree.
pub fn restore_lazy<R, F, S>(
    st: &ImageState,
    index: Vec<crate::image::PageRef>,
    opts: &RestoreOptions,
    image: R,
    mut fetch: F,
    serve: S,
) -> Result<RestoreStats, EngineError>
where
    R: Read + Seek,
    F: Read + Seek,
    S: Read + Seek + Send,
{
    if let Err(why) = opts.userfaultfd.unwrap_or(lazy::probe)() {
        crate::daemon::log::warning!("lazy restore unavailable ({why}): restoring eagerly");
        let mut stats = restore(st, opts, image)?;
        stats.eager_because = Some(why);
        return Ok(stats);
    }
    let rd = ImageReader::new(image)
        .step(Step::Validate)?
        .knowing_pages(index);
    let (handle, inbox) = lazy::channel().step(Step::Restore)?;
    let progress = opts.progress.as_deref();
    std::thread::scope(|sc| {
        // Started when the first task hands over its pages: torpor has
        // left the tree's time namespace by then, which a process of
        // several threads could not.
        let mut server = None;
        let mut pending = Some((serve, inbox));
        let mut start = || {
            if let Some((serve, inbox)) = pending.take() {
                server = Some(sc.spawn(move || lazy::serve(serve, st.page_size, inbox, progress)));
            }
        };
        let mut pass = LazyPass {
            fetch: &mut fetch,
            scratch: Vec::new(),
            server: &handle,
            start: &mut start,
            current: None,
            fell_back: None,
        };
        let res = restore_with(st, opts, rd, Some(&mut pass));
        let fell_back = pass.fell_back.take();
        drop(pass);
        let mut stats = match res {
            Ok(s) => s,
            Err(e) => {
                // The tree is gone (`Created`): the server may close.
                handle.send(lazy::Msg::Abort);
                if let Some(h) = server {
                    let _ = h.join();
                }
                return Err(e);
            }
        };
        stats.eager_because = fell_back;
        let Some(server) = server else {
            // No process took its pages lazily.
            return Ok(stats);
        };
        progress.inspect(|p| p.running());
        let roots = st
            .processes
            .iter()
            .filter(|p| p.task.exit_status.is_none())
            .map(|p| p.task.pid)
            .collect();
        handle.send(lazy::Msg::Run(roots));
        match server.join() {
            Ok(Ok(l)) => {
                stats.lazy = Some(l);
                Ok(stats)
            }
            Ok(Err(cause)) => Err(EngineError::new(Step::LazyPages, cause)),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Recreates the tree described by `st`, reading pages from `image`.
pub fn restore<R: Read>(
    st: &ImageState,
    opts: &RestoreOptions,
    image: R,
) -> Result<RestoreStats, EngineError> {
    let rd = ImageReader::new(image).step(Step::Validate)?;
    restore_with(st, opts, rd, None)
}

fn restore_with<R: Read>(
    st: &ImageState,
    opts: &RestoreOptions,
    rd: ImageReader<R>,
    lazy: Option<&mut LazyPass<'_>>,
) -> Result<RestoreStats, EngineError> {
    // Orphans of a task that failed come to torpor, to be killed with the
    // rest; once torpor exits, the restored root moves on to the next
    // subreaper or init as usual.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(std::io::Error::from)
        .step(Step::Restore)?;
    // Removed again if anything below fails.
    let made = crate::engine::files::recreate_tmpfs_files(st).step(Step::RecreateTmpfsFiles)?;
    // The namespace first: timerfd deadlines are set in its view.
    let (mut timens, clocks) = crate::engine::clocks::prepare(st.clocks.as_ref(), opts.host_clocks)
        .step(Step::TimeNamespace)?;
    let mut objs = open_objects(
        st,
        opts,
        timens.as_ref().map(|t| t.tree_over_torpor),
        made.paths(),
    )?;
    // Cgroups made for the tree: removed after the tasks in them are
    // killed and reaped, should the restore fail.
    let mut cgroups = crate::engine::cgroup::Made::default();
    // Dropped after `created`: the tasks it kills are reaped as torpor's.
    let _reaper = Subreaper::take();
    let mut created = Created::default();
    create_tasks(st, &objs, &mut created)?;
    // Before any memory comes in, so that it is charged to their cgroups.
    crate::engine::cgroup::apply(&st.cgroups, &mut cgroups)
        .map_err(Cause::Refused)
        .step(Step::CreateTasks)?;
    // Every process of the tree exists: the queued messages naming their
    // senders are sent again, before any task runs the app.
    if let Some(mut unix) = objs.unix.take() {
        unix.pass(&objs.fds).step(Step::OpenFiles)?;
    }
    // The whole tree is in the namespace: torpor takes its own back.
    if let Some(t) = timens.as_mut() {
        t.leave().step(Step::TimeNamespace)?;
    }
    let high_fd = objs.high;
    let shm = objs.shm.clone();
    let step = Step::SeizeTasks;
    for p in st.processes.iter().filter(|p| p.task.exit_status.is_none()) {
        ptrace::seize(p.task.pid, 0).step(step)?;
        created.traced.push(p.task.pid);
        ptrace::interrupt(p.task.pid).step(step)?;
        loop {
            match ptrace::wait(p.task.pid).step(step)? {
                Stop::Event(_, ptrace::PTRACE_EVENT_STOP) => break,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(ptrace::PtraceError::TaskDied(p.task.pid)).step(step);
                }
                Stop::Signal(_) | Stop::Event(..) => ptrace::cont(p.task.pid, 0).step(step)?,
            }
        }
    }
    let mut stats = rebuild_all(
        st,
        rd,
        &mut created,
        high_fd,
        &shm,
        &mut objs.segs,
        opts.progress.as_deref(),
        lazy,
    )?;
    // Seals and removals once every task has its mappings.
    objs.segs.finish().step(Step::FinishObjects)?;
    // Connections leave repair mode once every task holds them.
    objs.tcp.finish().step(Step::OpenFiles)?;
    stats.clocks = Some(clocks);
    // Owners of signal-driven I/O may be any process or thread of the tree:
    // set now that all exist.
    for (i, f) in st.files.iter().enumerate() {
        if let (Some(s), Some(&fd)) = (&f.sigio, objs.fds.get(i)) {
            crate::engine::files::set_sigio_owner(fd, s)
                .map_err(Cause::Refused)
                .step(Step::SignalDrivenIo)?;
        }
    }
    drop(objs);
    // Every task is complete: none dies with its parent any longer (set
    // while the tree was being built, `tasks::task_main`); each gets the
    // parent-death signal it had, now that its parent is final and its
    // credentials (whose change clears it) are set.
    let pids: std::collections::BTreeSet<i32> = st.processes.iter().map(|p| p.task.pid).collect();
    for p in st.processes.iter().filter(|p| p.task.exit_status.is_none()) {
        let root = !pids.contains(&p.task.ppid);
        set_parent_death(p, root).step(Step::Detach)?;
        // The last syscall torpor makes in a strict thread.
        seccomp::enter_strict(p).step(Step::Detach)?;
    }
    // A process stopped at the dump gets SIGSTOP while still traced: it
    // stops again on release, before running any code of its own.
    for p in st
        .processes
        .iter()
        .filter(|p| p.task.stopped && p.task.exit_status.is_none())
    {
        // The task is ours and traced.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.task.pid),
            nix::sys::signal::SIGSTOP,
        )
        .map_err(std::io::Error::from)
        .step(Step::StopAgain(p.task.pid))?;
    }
    for &tid in &created.traced {
        ptrace::detach(tid).step(Step::Detach)?;
    }
    created.done = true;
    made.keep();
    cgroups.keep();
    Ok(stats)
}

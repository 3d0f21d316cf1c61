//! Dump: freeze the tree, collect every process, stream the image, then
//! release or kill the tree.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use nix::fcntl::{Flock, FlockArg};

use crate::engine::collect::{self, FileTable};
use crate::engine::direct_file::DirectFile;
use crate::engine::freeze::Frozen;
use crate::engine::image_io;
use crate::engine::procfs::{MapEntry, PM_FILE, PM_PRESENT, PM_SWAP};
use crate::engine::ptrace::{self, Mem, RemotePtr};
use crate::engine::state::{Backing, ProcessState, Vma};
use crate::engine::{page_size, Cause, EngineError, Step, StepExt};
use crate::image::{Header, ImageSink, ImageWriter, PagesFromError};

/// Pages whose pagemap entries are read at once (8 bytes each).
const PAGEMAP_BATCH: usize = 512;

/// What happens to the tree after a good dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Kill,
    LeaveRunning,
}

/// What a dump should know beyond the tree.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Descriptors that stay outside the image, (pid, fd, key): whatever
    /// they are (a socket to a supervisor, say), the restore is handed a
    /// descriptor for each key to put in their place.
    pub external: Vec<(i32, i32, String)>,
    /// The user other than root the checkpoint is taken for: recorded in
    /// the image, whose restore then acts with no more than that user's
    /// rights.
    pub requested_by: Option<crate::image::records::RequestedBy>,
    /// Application names of the trees, by root pid: written as `tree`
    /// records, which `torpor boot` and `torpor run --name` go by.
    pub names: Vec<(i32, String)>,
    /// Told of the pages as they are read.
    pub progress: Option<std::sync::Arc<dyn crate::engine::Progress>>,
    /// Keep established TCP connections through TCP repair mode
    /// (`--tcp-established`); otherwise they come back reset.
    pub tcp_established: bool,
}

/// Figures of a finished dump.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpStats {
    pub processes: usize,
    pub threads: usize,
    pub page_bytes: u64,
}

/// Dumps `root` and its descendants into `out`, then hands the finished
/// writer to `commit` (which makes the image durable) while the tree is still
/// frozen; only after `commit` succeeds is the tree killed or released. On
/// any error the tree is detached and keeps running.
pub fn dump<W: ImageSink>(
    root: i32,
    out: W,
    after: After,
    opts: &DumpOptions,
    commit: impl FnOnce(W) -> Result<(), EngineError>,
) -> Result<DumpStats, EngineError> {
    let (stats, mut frozen) = dump_frozen(root, out, opts, commit)?;
    match after {
        After::Kill => frozen.kill()?,
        After::LeaveRunning => frozen.release(),
    }
    Ok(stats)
}

/// Like [`dump`], but the tree stays frozen after a good dump (hibernation
/// cuts the power next): the caller kills or releases it through the
/// returned [`Frozen`], which releases it if simply dropped.
pub fn dump_frozen<W: ImageSink>(
    root: i32,
    out: W,
    opts: &DumpOptions,
    commit: impl FnOnce(W) -> Result<(), EngineError>,
) -> Result<(DumpStats, Frozen), EngineError> {
    dump_frozen_with(root, None, out, opts, commit)
}

/// [`dump_frozen`] for a tree talking to `torpor daemon`: the socket with
/// inode `torpor_conn` is recorded as the tree's connection to the daemon.
pub fn dump_frozen_with<W: ImageSink>(
    root: i32,
    torpor_conn: Option<u64>,
    out: W,
    opts: &DumpOptions,
    commit: impl FnOnce(W) -> Result<(), EngineError>,
) -> Result<(DumpStats, Frozen), EngineError> {
    let (stats, mut trees) =
        dump_trees(&[root], torpor_conn, out, opts, commit).map_err(|e| e.error)?;
    let frozen = trees.0.pop().ok_or_else(|| {
        EngineError::new(Step::Freeze, Cause::Refused("no tree was frozen".into()))
    })?;
    Ok((stats, frozen))
}

/// A failed dump of several trees: the error, and the root of the tree it
/// belongs to when it is one tree's (a descriptor of a kind torpor
/// refuses, a task that died...), so the caller can name that tree.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TreeError {
    pub root: Option<i32>,
    pub error: EngineError,
}

/// Several trees, all frozen; released when dropped (or through
/// [`Trees::release`]), killed through [`Trees::kill`].
#[derive(Debug, Default)]
pub struct Trees(pub Vec<Frozen>);

impl Trees {
    /// Lets every tree run on.
    pub fn release(&mut self) {
        for f in &mut self.0 {
            f.release();
        }
    }

    /// Kills every tree; the first tree that would not die is the error.
    pub fn kill(&mut self) -> Result<(), EngineError> {
        let mut first = Ok(());
        for f in &mut self.0 {
            if let Err(e) = f.kill() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// Like [`dump`], for several trees at once into one image: every tree is
/// frozen before any is collected, so the image holds them all at one
/// instant, each with its own root (its parent left out, as a single
/// tree's). The roots must be distinct and no root may lie inside another
/// root's tree.
pub fn dump_many<W: ImageSink>(
    roots: &[i32],
    out: W,
    after: After,
    opts: &DumpOptions,
    commit: impl FnOnce(W) -> Result<(), EngineError>,
) -> Result<DumpStats, TreeError> {
    let (stats, mut trees) = dump_trees(roots, None, out, opts, commit)?;
    match after {
        After::Kill => trees
            .kill()
            .map_err(|error| TreeError { root: None, error })?,
        After::LeaveRunning => trees.release(),
    }
    Ok(stats)
}

/// Freezes the trees of `roots`, one after the other; any failure releases
/// those already frozen.
fn freeze_trees(roots: &[i32]) -> Result<Trees, TreeError> {
    let mut trees = Trees::default();
    if roots.is_empty() {
        return Err(TreeError {
            root: None,
            error: EngineError::new(Step::Freeze, Cause::Refused("no process to dump".into())),
        });
    }
    // A root below another root, seen before anything is seized (seizing
    // a task twice fails with a less useful EPERM).
    for &root in roots {
        if let Some(above) = ancestor_among(root, roots) {
            return Err(TreeError {
                root: Some(root),
                error: EngineError::new(
                    Step::Freeze,
                    Cause::Refused(format!(
                        "process {root} is in the tree of process {above}: give each tree once, by its root"
                    )),
                ),
            });
        }
    }
    for &root in roots {
        if let Some(other) = trees.0.iter().find(|f| f.pids.contains(&root)) {
            let owner = other.pids.first().copied().unwrap_or(0);
            let why = if owner == root {
                format!("process {root} is given twice")
            } else {
                format!("process {root} is in the tree of process {owner}: give each tree once, by its root")
            };
            return Err(TreeError {
                root: Some(root),
                error: EngineError::new(Step::Freeze, Cause::Refused(why)),
            });
        }
        let f = Frozen::freeze(root).map_err(|error| TreeError {
            root: Some(root),
            error,
        })?;
        // A later root that was the ancestor of an earlier one.
        if let Some(earlier) = trees
            .0
            .iter()
            .find_map(|t| t.pids.first().copied().filter(|r| f.pids.contains(r)))
        {
            return Err(TreeError {
                root: Some(root),
                error: EngineError::new(
                    Step::Freeze,
                    Cause::Refused(format!(
                        "process {earlier} is in the tree of process {root}: give each tree once, by its root"
                    )),
                ),
            });
        }
        trees.0.push(f);
    }
    Ok(trees)
}

/// The nearest ancestor of `pid` that is one of `roots` (itself excluded).
fn ancestor_among(pid: i32, roots: &[i32]) -> Option<i32> {
    let mut cur = pid;
    // Bounded: a parent chain longer than this is a /proc race.
    for _ in 0..4096 {
        let path = format!("/proc/{cur}/stat");
        let ppid = crate::engine::procfs::read(&path)
            .and_then(|t| crate::engine::procfs::parse_stat(&path, &t))
            .ok()?
            .ppid;
        if ppid <= 1 {
            return None;
        }
        if roots.contains(&ppid) && ppid != pid {
            return Some(ppid);
        }
        cur = ppid;
    }
    None
}

/// The dump of [`dump_many`], the trees left frozen for the caller.
pub fn dump_trees<W: ImageSink>(
    roots: &[i32],
    torpor_conn: Option<u64>,
    out: W,
    opts: &DumpOptions,
    commit: impl FnOnce(W) -> Result<(), EngineError>,
) -> Result<(DumpStats, Trees), TreeError> {
    let trees = freeze_trees(roots)?;
    let mut table = FileTable::default();
    table.torpor_conn = torpor_conn;
    table.external.clone_from(&opts.external);
    if opts.tcp_established {
        table.tcp = Some(crate::engine::files::TcpRepairing::default());
    }
    // Which tree each process belongs to, to name it in an error.
    let root_of = |pid: i32| {
        trees
            .0
            .iter()
            .find(|f| f.pids.contains(&pid))
            .and_then(|f| f.pids.first().copied())
    };
    let in_tree = |pid: i32| {
        move |error: EngineError| TreeError {
            root: root_of(pid),
            error,
        }
    };
    let whole = |error: EngineError| TreeError { root: None, error };
    let alive: Vec<i32> = trees
        .0
        .iter()
        .flat_map(|f| {
            f.pids
                .iter()
                .copied()
                .filter(|p| !f.zombies.contains_key(p))
        })
        .collect();
    collect::check_shared_tables(&alive).map_err(|e| match e.step {
        Step::Collect(pid) => in_tree(pid)(e),
        _ => whole(e),
    })?;
    let mut procs: Vec<(ProcessState, Vec<MapEntry>)> = Vec::new();
    for frozen in &trees.0 {
        let root = frozen.pids.first().copied().unwrap_or(0);
        for &pid in &frozen.pids {
            let ppid = if pid == root {
                0
            } else {
                frozen.parent.get(&pid).copied().unwrap_or(0)
            };
            if let Some(&status) = frozen.zombies.get(&pid) {
                procs.push((
                    collect::collect_zombie(pid, ppid, status).map_err(in_tree(pid))?,
                    Vec::new(),
                ));
                continue;
            }
            let tids = frozen.threads.get(&pid).cloned().unwrap_or_default();
            let mut one = || -> Result<(ProcessState, Vec<MapEntry>), EngineError> {
                let (mut p, maps) = collect::collect_process(pid, ppid, &tids)?;
                p.fds = table.collect(pid)?;
                collect::file_owners(&mut p, &table.files)?;
                p.task.locks = crate::engine::files::collect_locks(pid, &p.fds)?;
                p.task.stopped = frozen.stopped.contains(&pid);
                // A user's image holds only what the user could set again.
                if let Some(r) = opts.requested_by.as_ref().filter(|r| r.uid != 0) {
                    crate::engine::restore::attrs::owner_may_set(&p, r.uid)
                        .map_err(Cause::Unsupported)
                        .step(Step::Collect(pid))?;
                }
                Ok((p, maps))
            };
            procs.push(one().map_err(in_tree(pid))?);
        }
    }
    let live_procs: Vec<(i32, Vec<i32>)> = procs
        .iter()
        .filter(|(p, _)| p.task.exit_status.is_none())
        .map(|(p, _)| (p.task.pid, p.threads.iter().map(|t| t.tid).collect()))
        .collect();
    let user = opts
        .requested_by
        .as_ref()
        .map(|r| r.uid)
        .filter(|&u| u != 0);
    let cgroups = crate::engine::cgroup::collect(&live_procs, user).map_err(|(pid, why)| {
        in_tree(pid)(EngineError {
            step: Step::Collect(pid),
            cause: Cause::Unsupported(why),
        })
    })?;
    // The descriptions in flight first: the checks below see them too.
    let rights = table.rights().map_err(whole)?;
    let waiting = table.waiting().map_err(whole)?;
    table.mark_external_pipes().map_err(whole)?;
    crate::engine::files::check_peers(&mut table.files).map_err(whole)?;
    crate::engine::files::link_ptys(&mut table.files);
    let tree_pids: Vec<i32> = trees
        .0
        .iter()
        .flat_map(|f| f.pids.iter().copied())
        .collect();
    crate::engine::files::check_pty_holders(&table.files, &tree_pids).map_err(whole)?;
    let creds = table.creds(&tree_pids).map_err(whole)?;
    crate::engine::files::check_late(&table.files, procs.iter().map(|(p, _)| p)).map_err(whole)?;
    // The clocks last: every time left on a timer was read before them, so
    // a restore continuing from them never fires a timer early.
    // Roots first: the trees' namespace is the first root's.
    let mut live: Vec<i32> = trees
        .0
        .iter()
        .filter_map(|f| f.pids.first().copied())
        .collect();
    for f in &trees.0 {
        live.extend(
            f.pids
                .iter()
                .copied()
                .filter(|p| Some(*p) != f.pids.first().copied() && !f.zombies.contains_key(p)),
        );
    }
    let clocks = crate::engine::clocks::collect(&live)
        .step(Step::Clocks)
        .map_err(whole)?;
    crate::engine::clocks::to_tree_view(&mut table.files, clocks.tree_over_torpor);

    let wstep = Step::WriteImage;
    let write_head = || -> Result<ImageWriter<W>, EngineError> {
        let header = Header::for_host().step(wstep)?;
        let mut w = ImageWriter::new(out, &header).step(wstep)?;
        w.write(&clocks.record).step(wstep)?;
        if let Some(r) = &opts.requested_by {
            w.write(r).step(wstep)?;
        }
        for f in &trees.0 {
            let Some(root) = f.pids.first().copied() else {
                continue;
            };
            if let Some((_, name)) = opts.names.iter().find(|(pid, _)| *pid == root) {
                let t = crate::image::records::Tree {
                    root,
                    name: name.clone(),
                };
                w.write(&t).step(wstep)?;
            }
        }
        image_io::write_pipes(&mut w, &table.pipes).step(wstep)?;
        crate::engine::files::write_tmpfs_files(&mut w, procs.iter().map(|(p, _)| p))
            .step(wstep)?;
        let flight: Vec<(u32, i32)> = table
            .flight
            .iter()
            .map(|(f, fd)| (*f, std::os::fd::AsRawFd::as_raw_fd(fd)))
            .collect();
        crate::engine::files::write_objects(
            &mut w,
            procs.iter().map(|(p, _)| p),
            &table.files,
            &flight,
        )
        .step(wstep)?;
        Ok(w)
    };
    let mut w = write_head().map_err(whole)?;
    let mut stats = DumpStats::default();
    let mut shm_done = std::collections::BTreeSet::new();
    let mut queued = std::collections::BTreeSet::new();
    let progress = opts.progress.as_deref();
    if let Some(pr) = progress {
        let kb = |m: &MapEntry| m.anon_kb.unwrap_or(0) + m.swap_kb.unwrap_or(0);
        pr.expect(
            procs
                .iter()
                .flat_map(|(_, m)| m.iter())
                .map(kb)
                .sum::<u64>()
                * 1024,
        );
    }
    for (p, maps) in &procs {
        image_io::write_process(&mut w, p, &table.files, &mut queued)
            .step(wstep)
            .map_err(whole)?;
        stats.processes += 1;
        stats.threads += p.threads.len();
        if p.task.exit_status.is_some() {
            continue;
        }
        stats.page_bytes += dump_memory(p, maps, &mut w, &mut shm_done, progress)
            .map_err(|e| {
                // A task killed from outside shows up as short reads of its
                // files: say what happened.
                if task_gone(p.task.pid) && matches!(e.step, Step::Memory(_)) {
                    EngineError {
                        step: e.step,
                        cause: Cause::Ptrace(ptrace::PtraceError::TaskDied(p.task.pid)),
                    }
                } else {
                    e
                }
            })
            .map_err(in_tree(p.task.pid))?;
    }
    // After every fd record, whose descriptions they name: the
    // descriptions only a queue holds, then what each message passes.
    for (file, fd) in &table.flight {
        let of = &table.files[*file as usize];
        if let Some(path) = crate::engine::files::flight_path(&of.kind) {
            let md = std::fs::metadata(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(fd)
            ))
            .step(wstep)
            .map_err(whole)?;
            w.write(&crate::engine::files::owner::record_of(path, &md))
                .step(wstep)
                .map_err(whole)?;
        }
        w.write(&crate::image::records::FlightFile {
            ofd: u64::from(*file),
            kind: of.kind.record(of.flags),
        })
        .step(wstep)
        .map_err(whole)?;
    }
    for r in &rights {
        w.write(r).step(wstep).map_err(whole)?;
    }
    for r in &waiting {
        w.write(r).step(wstep).map_err(whole)?;
    }
    for (&file, opts) in &table.sock_opts {
        w.write(&crate::image::records::SockExtra {
            ofd: u64::from(file),
            opts: opts.clone(),
        })
        .step(wstep)
        .map_err(whole)?;
    }
    for c in &cgroups {
        w.write(c).step(wstep).map_err(whole)?;
    }
    for r in &creds {
        w.write(r).step(wstep).map_err(whole)?;
    }
    let (out, _summary) = w.finish().step(wstep).map_err(whole)?;
    commit(out).map_err(whole)?;
    let mut trees = trees;
    // The connections stay in repair mode while the trees are frozen;
    // killing the trees keeps them so, releasing them ends it.
    if let (Some(first), Some(tcp)) = (trees.0.first_mut(), table.tcp.take()) {
        first.tcp = Some(tcp);
    }
    Ok((stats, trees))
}

fn gone_or(pid: i32, e: std::io::Error) -> Cause {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Cause::Ptrace(ptrace::PtraceError::TaskDied(pid))
    } else {
        Cause::Io(e)
    }
}

/// The task has exited (or is exiting): no longer there, a zombie, or dead.
fn task_gone(pid: i32) -> bool {
    let path = format!("/proc/{pid}/stat");
    match crate::engine::procfs::read(&path)
        .and_then(|t| crate::engine::procfs::parse_stat(&path, &t))
    {
        Ok(s) => s.state == 'Z' || s.state == 'X',
        Err(_) => true,
    }
}

/// Which pages of a mapping hold state no file can give back.
fn wanted(v: &Vma, entry: u64) -> bool {
    match &v.backing {
        Backing::Special(_) => false,
        Backing::Anon => entry & (PM_PRESENT | PM_SWAP) != 0,
        // Shared memory pages may be absent from this process's page table
        // yet present in the object: read them all, zero pages are dropped.
        Backing::Shm { .. } => true,
        // Shared file pages live in the file itself.
        Backing::File { .. } if v.shared => false,
        // Memfds and SysV segments are stored as objects, once.
        Backing::Memfd { .. } | Backing::Sysv { .. } | Backing::Unlinked { .. } if v.shared => {
            false
        }
        Backing::Sysv { .. } => false,
        // Private file pages count only once written (copied on write).
        Backing::File { .. } | Backing::Memfd { .. } | Backing::Unlinked { .. } => {
            (entry & PM_PRESENT != 0 && entry & PM_FILE == 0) || entry & PM_SWAP != 0
        }
    }
}

/// Streams the stored pages of one process; returns the bytes written.
/// Each run of wanted pages is read with process_vm_readv straight into
/// the image's outgoing buffer where the sink lends it
/// ([`ImageWriter::nonzero_pages_from`]).
fn dump_memory<W: ImageSink>(
    p: &ProcessState,
    maps: &[MapEntry],
    w: &mut ImageWriter<W>,
    shm_done: &mut std::collections::BTreeSet<(u64, u64, u64)>,
    progress: Option<&dyn crate::engine::Progress>,
) -> Result<u64, EngineError> {
    let pid = p.task.pid;
    let step = Step::Memory(pid);
    let ps = page_size();
    let mut pagemap = File::open(format!("/proc/{pid}/pagemap")).step(step)?;
    let mem = Mem::open(pid).step(step)?;
    let mut total = 0u64;
    let batch = u64::from(w.batch_pages());
    let mut pm = vec![0u8; 8 * PAGEMAP_BATCH];
    let pm_batch = PAGEMAP_BATCH as u64;
    for (v, m) in p.vmas.iter().zip(maps.iter().filter(|m| {
        !collect::is_fixed_kernel_mapping(&m.name) && !crate::engine::aio::is_aio_ring(m)
    })) {
        debug_assert_eq!(v.start, m.start);
        if matches!(v.backing, Backing::Special(_)) {
            continue;
        }
        // Nothing anonymous and nothing swapped: no page to store (a large
        // reservation costs no pagemap reading).
        if !matches!(v.backing, Backing::Shm { .. }) && m.anon_kb == Some(0) && m.swap_kb == Some(0)
        {
            continue;
        }
        // A shared object is stored once, by the first process mapping it.
        if let Backing::Shm { id, offset } = v.backing {
            if !shm_done.insert((id, offset, v.end - v.start)) {
                continue;
            }
        }
        let mut addr = v.start;
        while addr < v.end {
            let n = ((v.end - addr) / ps).min(pm_batch);
            // n <= PAGEMAP_BATCH: the bytes fit `pm`.
            let nbytes = usize::try_from(n * 8).unwrap_or(0);
            pagemap.seek(SeekFrom::Start(addr / ps * 8)).step(step)?;
            // The address space ends early only when the task died.
            pagemap
                .read_exact(&mut pm[..nbytes])
                .map_err(|e| gone_or(pid, e))
                .step(step)?;
            let e = |k: u64| {
                // k < n: inside `pm`.
                let o = usize::try_from(k * 8).unwrap_or(0);
                let mut word = [0u8; 8];
                word.copy_from_slice(&pm[o..o + 8]);
                u64::from_le_bytes(word)
            };
            // Runs of wanted pages inside this batch, a record's worth at
            // a time.
            let mut i = 0u64;
            while i < n {
                if !wanted(v, e(i)) {
                    i += 1;
                    continue;
                }
                let mut j = i + 1;
                while j < n && j - i < batch && wanted(v, e(j)) {
                    j += 1;
                }
                let run_addr = addr + i * ps;
                // j - i <= batch_pages, a u32.
                let count = u32::try_from(j - i).unwrap_or(u32::MAX);
                let read = |buf: &mut [u8]| read_run(pid, &mem, m.read, run_addr, buf);
                total += w
                    .nonzero_pages_from(run_addr, count, read)
                    .map_err(|e| match e {
                        PagesFromError::Read(c) => EngineError::new(step, c),
                        PagesFromError::Image(e) => {
                            EngineError::new(Step::WriteImage, Cause::Image(e))
                        }
                    })?;
                progress.inspect(|pr| pr.advance((j - i) * ps));
                i = j;
            }
            addr += n * ps;
        }
    }
    Ok(total)
}

fn read_run(pid: i32, mem: &Mem, readable: bool, addr: u64, buf: &mut [u8]) -> Result<(), Cause> {
    if readable {
        if let Ok(n) = ptrace::vm_read(pid, addr, buf) {
            if n == buf.len() {
                return Ok(());
            }
        }
    }
    // Unreadable protections (guard pages, PROT_NONE with contents): the
    // tracer's /proc/PID/mem access ignores them.
    mem.read(RemotePtr::<u8>::new(addr), buf)
        .map_err(|e| match e {
            ptrace::PtraceError::Os { err, .. } => gone_or(pid, err),
            other => Cause::Ptrace(other),
        })?;
    Ok(())
}

/// Dumps into a file: written beside it (`PATH.part`, created anew with mode
/// 0600, never through a symbolic link, and locked while written) and
/// renamed into place only when complete and synced, so a failed dump
/// leaves no partial image and an image already at `path` stays as it was.
/// A `.part` that a killed dump left is written again (see [`stale_part`]).
pub fn dump_to_file(
    root: i32,
    path: &std::path::Path,
    after: After,
    opts: &DumpOptions,
) -> Result<DumpStats, EngineError> {
    dump_many_to_file(&[root], path, after, opts).map_err(|e| e.error)
}

/// [`dump_to_file`] for several trees in one image ([`dump_many`]).
pub fn dump_many_to_file(
    roots: &[i32],
    path: &std::path::Path,
    after: After,
    opts: &DumpOptions,
) -> Result<DumpStats, TreeError> {
    let wstep = Step::WriteImage;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = std::path::PathBuf::from(tmp);
    let (f, _lock) = open_part(&tmp)
        .step(wstep)
        .map_err(|error| TreeError { root: None, error })?;
    let out = DirectFile::new(f)
        .step(wstep)
        .map_err(|error| TreeError { root: None, error })?;
    let res = dump_many(roots, out, after, opts, |out| {
        let f = out.finish().step(wstep)?;
        f.sync_all().step(wstep)?;
        std::fs::rename(&tmp, path).step(wstep)?;
        Ok(())
    });
    if res.is_err() {
        // Ours: created exclusively above. A failure to remove it leaves a
        // 0600 file that only blocks the next dump to the same path, which
        // then names it.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// The `.part` file to write, locked (`flock`) for as long as the lock
/// lives, so that another dump to the same path knows it is in use.
fn open_part(path: &std::path::Path) -> std::io::Result<(File, Flock<File>)> {
    let lock = |f: &File| {
        Flock::lock(f.try_clone()?, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "creating {}: another dump is writing it; dump again once it has finished",
                        path.display()
                    ),
                )
            } else {
                std::io::Error::other(format!("locking {}: {e}", path.display()))
            }
        })
    };
    match create_private(path) {
        Ok(f) => {
            let l = lock(&f)?;
            Ok((f, l))
        }
        Err(refusal) if refusal.kind() == std::io::ErrorKind::AlreadyExists => {
            let Some(f) = stale_part(path) else {
                return Err(refusal);
            };
            let l = lock(&f)?;
            // Locked: no dump writes it, and nobody else may have it.
            f.set_len(0)?;
            Ok((f, l))
        }
        Err(e) => Err(e),
    }
}

/// The `.part` at `path` when it is what a killed dump of this user leaves:
/// a regular file (not a symbolic link, which is never followed), owned by
/// this user, mode 0600, with no other name. It is then written again
/// through the descriptor checked, never reopened by its name; anything
/// else there is left alone and refused.
fn stale_part(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    let ours = m.file_type().is_file()
        && m.uid() == nix::unistd::geteuid().as_raw()
        && m.mode() & 0o7777 == 0o600
        && m.nlink() == 1;
    ours.then_some(f)
}

/// Creates `path` for an image: it must not exist yet (a file or a symbolic
/// link someone left there is refused, never followed or overwritten), and
/// only its owner may read it.
fn create_private(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "creating {}: it already exists (left by a dump that did not finish, or put there by someone else); torpor neither follows nor overwrites it: remove it and dump again",
                    path.display()
                )
            } else {
                format!("creating {}: {e}", path.display())
            };
            std::io::Error::new(e.kind(), why)
        })
}

/// Dumps into the newest slot of an A/B store (a partition or a file, created
/// if missing); the slot becomes the newest image only once written, read
/// back and verified, and only then is the tree killed.
pub fn dump_to_store(
    root: i32,
    path: &std::path::Path,
    after: After,
    opts: &DumpOptions,
) -> Result<DumpStats, EngineError> {
    dump_many_to_store(&[root], path, after, opts).map_err(|e| e.error)
}

/// [`dump_to_store`] for several trees in one image ([`dump_many`]).
pub fn dump_many_to_store(
    roots: &[i32],
    path: &std::path::Path,
    after: After,
    opts: &DumpOptions,
) -> Result<DumpStats, TreeError> {
    let sstep = Step::Store;
    let whole = |error| TreeError { root: None, error };
    let mut store = crate::store::Store::open_or_create(path)
        .step(sstep)
        .map_err(whole)?;
    // The slot writer buffers, and lends its buffer to the page records.
    let w = store.writer().step(sstep).map_err(whole)?;
    dump_many(roots, w, after, opts, |w| {
        w.commit().step(sstep)?;
        Ok(())
    })
}

//! The image's structure, checked before anything else: every index,
//! count, length, range and sum the restore later uses as it is, taken
//! from the decoded state alone (no /proc, no files, no syscalls), so that
//! a damaged or hostile image is refused with the record and the value
//! that is wrong instead of reaching an index, a subtraction or a syscall.
//!
//! What depends on this system (pids free, files unchanged) is
//! `validate`'s, which calls [`check_structure`] first.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::state::{Backing, FileKind, PipeFile, ProcessState, UnlinkedRef, Vma};
use crate::engine::state::{ImageState, PageRun};
use crate::engine::{EngineError, Step};
use crate::image::records::{OwnSeccomp, SeccompFilter, Thread};

use super::refused;

/// Signals 1..=64: one disposition each.
pub const MAX_SIGNALS: usize = 64;
const MAX_SIGNO: i64 = 64;
/// `RLIMIT_NLIMITS`.
pub const MAX_RLIMITS: usize = 16;
/// `SI_MAX_SIZE`: the kernel's siginfo.
pub const MAX_SIGINFO: usize = 128;
/// `TASK_COMM_LEN` without its NUL.
pub const MAX_COMM: usize = 15;
/// Descriptor numbers below the kernel's default `fs.nr_open`.
pub const MAX_FD: i32 = 1 << 20;
/// A classic BPF program's length is a `u16` count of 8-byte instructions.
pub const MAX_SECCOMP_INSNS: u64 = u16::MAX as u64;
/// A pipe's capacity when the image asks for less.
const MIN_PIPE_CAPACITY: u32 = 65536;

/// What the checks found the image to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Processes, zombies included.
    pub processes: usize,
    /// Threads of the live processes.
    pub threads: usize,
    /// Each shared anonymous memory object by id: the size its mappings
    /// need (the largest offset plus length).
    pub shm: BTreeMap<u64, u64>,
    /// Pages the page records write.
    pub pages: u64,
}

fn bad(why: String) -> EngineError {
    refused(Step::Validate, why)
}

/// Whether `end` (exclusive) is an address of this architecture.
fn fits_native(end: u64) -> bool {
    end == 0 || usize::try_from(end - 1).is_ok()
}

/// Checks the structure of `st`; see the module documentation.
pub fn check_structure(st: &ImageState) -> Result<Plan, EngineError> {
    if st.processes.is_empty() {
        return Err(bad("the image holds no process".into()));
    }
    let ps = st.page_size;
    if !ps.is_power_of_two() || ps < 4096 {
        return Err(bad(format!("page size {ps}")));
    }
    let mut plan = Plan {
        processes: st.processes.len(),
        ..Plan::default()
    };
    // Every pid and tid, once.
    let mut ids: BTreeSet<i32> = BTreeSet::new();
    for (i, p) in st.processes.iter().enumerate() {
        check_lineage(st, i, p, &mut ids)?;
        if p.task.exit_status.is_none() {
            check_threads(p, &mut ids)?;
            plan.threads += p.threads.len();
        }
        check_process(p)?;
        check_vmas(st, p, &mut plan.shm)?;
        check_aio(st, p)?;
        check_fds(st, p)?;
    }
    check_trees(st)?;
    check_files(st)?;
    check_objects(st)?;
    for run in &st.page_runs {
        check_page_run(st, run)?;
        plan.pages += u64::from(run.pages);
    }
    if plan.pages != st.pages {
        return Err(bad(format!(
            "the image counts {} pages, its page records hold {}",
            st.pages, plan.pages
        )));
    }
    Ok(plan)
}

/// Pids, parents (earlier in the list: parents come first; the roots,
/// the first process and the first of each further tree, have none),
/// sessions and groups.
fn check_lineage(
    st: &ImageState,
    i: usize,
    p: &ProcessState,
    ids: &mut BTreeSet<i32>,
) -> Result<(), EngineError> {
    let pid = p.task.pid;
    if pid <= 0 {
        return Err(bad(format!("process {pid}: pid is not positive")));
    }
    if !ids.insert(pid) {
        return Err(bad(format!("pid {pid} appears twice in the image")));
    }
    if i == 0 {
        if p.task.ppid != 0 {
            return Err(bad(format!(
                "the first process {pid} has parent {}: the root comes first",
                p.task.ppid
            )));
        }
    } else if p.task.ppid != 0 && !st.processes[..i].iter().any(|q| q.task.pid == p.task.ppid) {
        let why = if st.processes.iter().any(|q| q.task.pid == p.task.ppid) {
            "comes after it"
        } else {
            "is not in the image"
        };
        return Err(bad(format!(
            "parent {} of process {pid} {why}",
            p.task.ppid
        )));
    }
    if p.task.pgid < 0 {
        return Err(bad(format!(
            "process {pid} has process group {}",
            p.task.pgid
        )));
    }
    if p.task.sid < 0 {
        return Err(bad(format!("process {pid} has session {}", p.task.sid)));
    }
    Ok(())
}

/// The longest application name a `tree` record may carry.
pub const MAX_APP_NAME: usize = 64;

/// Each `tree` record names a root of the image once, with a name that is
/// printable, not empty, and no other tree's.
fn check_trees(st: &ImageState) -> Result<(), EngineError> {
    let mut roots = BTreeSet::new();
    let mut names = BTreeSet::new();
    for t in &st.trees {
        let root = t.root;
        if !st
            .processes
            .iter()
            .any(|p| p.task.pid == root && p.task.ppid == 0)
        {
            return Err(bad(format!(
                "a tree record names process {root}, which is no root of the image"
            )));
        }
        if !roots.insert(root) {
            return Err(bad(format!("two tree records name process {root}")));
        }
        let n = &t.name;
        if n.is_empty() || n.len() > MAX_APP_NAME || n.chars().any(char::is_control) {
            return Err(bad(format!(
                "the tree of process {root} is named {n:?}: not 1 to {MAX_APP_NAME} printable bytes"
            )));
        }
        if !names.insert(n.as_str()) {
            return Err(bad(format!("two trees are named {n:?}")));
        }
    }
    Ok(())
}

fn check_threads(p: &ProcessState, ids: &mut BTreeSet<i32>) -> Result<(), EngineError> {
    let pid = p.task.pid;
    if p.threads.first().map(|t| t.tid) != Some(pid) {
        return Err(bad(format!("process {pid} has no main thread record")));
    }
    for (k, t) in p.threads.iter().enumerate() {
        let tid = t.tid;
        if tid <= 0 {
            return Err(bad(format!(
                "thread {tid} of process {pid}: tid is not positive"
            )));
        }
        if k > 0 && !ids.insert(tid) {
            return Err(bad(format!(
                "thread {tid} of process {pid}: tid {tid} appears twice in the image"
            )));
        }
        check_thread(pid, t)?;
    }
    Ok(())
}

fn check_thread(pid: i32, t: &Thread) -> Result<(), EngineError> {
    let tid = t.tid;
    let what = |why: String| bad(format!("thread {tid} of process {pid}: {why}"));
    crate::arch::Regs::from_bytes(&t.regs.gpr).map_err(|e| what(e.to_string()))?;
    let sizes = crate::arch::FPREGS_SIZES;
    if !sizes.contains(&t.regs.fpu.len()) {
        return Err(what(format!(
            "FPU state of {} bytes, this architecture takes {} to {}",
            t.regs.fpu.len(),
            sizes.start(),
            sizes.end()
        )));
    }
    if t.comm.len() > MAX_COMM || t.comm.contains('\0') {
        return Err(what(format!(
            "name {:?} is not at most {MAX_COMM} bytes without NUL",
            t.comm
        )));
    }
    for info in &t.pending {
        siginfo(&info.raw).map_err(what)?;
    }
    Ok(())
}

/// A raw siginfo: at least its signal number, at most the kernel's size,
/// for signal 1..=64.
fn siginfo(info: &[u8]) -> Result<(), String> {
    if info.len() > MAX_SIGINFO {
        return Err(format!("a pending siginfo of {} bytes", info.len()));
    }
    super::thread::siginfo_signo(info)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn check_process(p: &ProcessState) -> Result<(), EngineError> {
    let pid = p.task.pid;
    let what = |why: String| bad(format!("process {pid}: {why}"));
    if p.task.sigactions.len() > MAX_SIGNALS {
        return Err(what(format!(
            "{} signal dispositions, at most {MAX_SIGNALS}",
            p.task.sigactions.len()
        )));
    }
    let mut signals = BTreeSet::new();
    for sa in &p.task.sigactions {
        if !(1..=MAX_SIGNO).contains(&i64::from(sa.signo)) || !signals.insert(sa.signo) {
            return Err(what(format!(
                "a disposition for signal {}, which is out of range or repeated",
                sa.signo
            )));
        }
    }
    for info in &p.task.pending {
        siginfo(&info.raw).map_err(what)?;
    }
    let t = &p.task.itimers;
    for (i, t) in [t.real, t.virt, t.prof].iter().enumerate() {
        let secs = |ns: u64| isize::try_from(ns / 1_000_000_000).is_ok();
        if !secs(t.value_ns) || !secs(t.interval_ns) {
            return Err(what(format!(
                "interval timer {i} of {}ns every {}ns does not fit this architecture's timeval",
                t.value_ns, t.interval_ns
            )));
        }
    }
    if p.task.rlimits.len() > MAX_RLIMITS {
        return Err(what(format!(
            "{} resource limits, at most {MAX_RLIMITS}",
            p.task.rlimits.len()
        )));
    }
    let mut resources = BTreeSet::new();
    for l in &p.task.rlimits {
        if l.resource as usize >= MAX_RLIMITS || !resources.insert(l.resource) {
            return Err(what(format!(
                "resource limit {} is out of range or repeated",
                l.resource
            )));
        }
        if l.cur > l.max {
            return Err(what(format!(
                "resource limit {} has soft limit {} above hard limit {}",
                l.resource, l.cur, l.max
            )));
        }
    }
    if p.mm.auxv.len() % 2 != 0 {
        return Err(what(format!(
            "auxv of {} words is not a whole number of (type, value) pairs",
            p.mm.auxv.len()
        )));
    }
    if let Some(w) = p.mm.auxv.iter().find(|w| usize::try_from(**w).is_err()) {
        return Err(what(format!(
            "auxv word {w:#x} does not fit this architecture's word"
        )));
    }
    for (i, f) in p.seccomp.iter().enumerate() {
        seccomp_program(&format!("seccomp filter {i}"), f).map_err(what)?;
    }
    thread_seccomp(p).map_err(what)?;
    let mut timers = BTreeSet::new();
    for t in &p.task.posix_timers {
        if t.id < 0 || !timers.insert(t.id) {
            return Err(what(format!(
                "POSIX timer id {} is negative or repeated",
                t.id
            )));
        }
        if !(0..=MAX_SIGNO).contains(&i64::from(t.signo)) {
            return Err(what(format!(
                "POSIX timer {} notifies with signal {}",
                t.id, t.signo
            )));
        }
    }
    for l in &p.task.locks {
        if !p.fds.iter().any(|f| f.fd == l.fd) {
            return Err(what(format!(
                "a file lock on fd {}, which it does not hold",
                l.fd
            )));
        }
    }
    Ok(())
}

/// The AIO rings of a process: each a ring the kernel would make, within
/// the address space, overlapping no mapping and no other ring; and its
/// `membarrier` registrations known ones.
fn check_aio(st: &ImageState, p: &ProcessState) -> Result<(), EngineError> {
    let pid = p.task.pid;
    if p.membarrier.registered & !crate::image::records::Membarrier::ALL != 0 {
        return Err(bad(format!(
            "process {pid}: membarrier registrations {:#x}",
            p.membarrier.registered
        )));
    }
    for (i, r) in p.aio.iter().enumerate() {
        crate::engine::aio::check_ring(r, st.page_size)
            .map_err(|why| bad(format!("process {pid}: {why}")))?;
        let end = r.start + r.size;
        if !fits_native(end) {
            return Err(bad(format!(
                "process {pid}: AIO ring {:#x}-{end:#x} is beyond this architecture's address space",
                r.start
            )));
        }
        let overlaps = |s: u64, e: u64| s < end && r.start < e;
        if p.vmas.iter().any(|v| overlaps(v.start, v.end))
            || p.aio[..i]
                .iter()
                .any(|o| overlaps(o.start, o.start + o.size))
        {
            return Err(bad(format!(
                "process {pid}: AIO ring {:#x}-{end:#x} overlaps another mapping",
                r.start
            )));
        }
    }
    Ok(())
}

/// Page aligned, ordered, within the address space, offsets aligned and
/// without overflow, and the objects they name in the image.
fn check_vmas(
    st: &ImageState,
    p: &ProcessState,
    shm: &mut BTreeMap<u64, u64>,
) -> Result<(), EngineError> {
    let pid = p.task.pid;
    let ps = st.page_size;
    let mut prev_end = 0u64;
    for v in &p.vmas {
        let what = |why: String| {
            bad(format!(
                "process {pid}: mapping {:#x}-{:#x}: {why}",
                v.start, v.end
            ))
        };
        if v.start >= v.end {
            return Err(what("empty or reversed".into()));
        }
        if v.start % ps != 0 || v.end % ps != 0 {
            return Err(what(format!("not aligned to pages of {ps} bytes")));
        }
        if !fits_native(v.end) {
            return Err(what("beyond this architecture's address space".into()));
        }
        if v.start < prev_end {
            return Err(what(format!(
                "starts below {prev_end:#x}, where the one before ends"
            )));
        }
        prev_end = v.end;
        if v.prot & !(libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) != 0 {
            return Err(what(format!("protection {:#x}", v.prot)));
        }
        let len = v.end - v.start;
        let offset = match &v.backing {
            Backing::Anon | Backing::Special(_) => None,
            Backing::Shm { offset, .. }
            | Backing::File { offset, .. }
            | Backing::Memfd { offset, .. }
            | Backing::Sysv { offset, .. }
            | Backing::Unlinked { offset, .. } => Some(*offset),
        };
        let Some(offset) = offset else { continue };
        let reach = offset
            .checked_add(len)
            .filter(|&e| offset % ps == 0 && fits_native(e))
            .ok_or_else(|| what(format!("offset {offset:#x} is unaligned or out of range")))?;
        match &v.backing {
            Backing::Shm { id, .. } => {
                let size = shm.entry(*id).or_insert(0);
                *size = (*size).max(reach);
            }
            Backing::Memfd { id, .. } if !st.memfds.iter().any(|o| o.id == *id) => {
                return Err(what(format!("memfd {id} is not in the image")));
            }
            Backing::Unlinked { inode, .. } if !st.unlinked.iter().any(|o| o.inode == *inode) => {
                return Err(what(format!("unlinked file {inode} is not in the image")));
            }
            Backing::Sysv { shmid, .. } => {
                let seg = st
                    .sysv
                    .iter()
                    .find(|o| o.shmid == *shmid)
                    .ok_or_else(|| what(format!("SysV segment {shmid} is not in the image")))?;
                let pages = seg.size.div_ceil(ps).saturating_mul(ps);
                if reach > pages {
                    return Err(what(format!(
                        "reaches {reach:#x} into SysV segment {shmid} of {} bytes",
                        seg.size
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_fds(st: &ImageState, p: &ProcessState) -> Result<(), EngineError> {
    let pid = p.task.pid;
    let mut seen = BTreeSet::new();
    for f in &p.fds {
        if !(0..MAX_FD).contains(&f.fd) {
            return Err(bad(format!("process {pid}: fd {} is out of range", f.fd)));
        }
        if !seen.insert(f.fd) {
            return Err(bad(format!("process {pid} holds fd {} twice", f.fd)));
        }
        if st.files.get(f.file as usize).is_none() {
            return Err(bad(format!("fd {} of process {pid} names no file", f.fd)));
        }
    }
    Ok(())
}

/// What each open file description names: pipes, memfds, unlinked files,
/// the targets of epoll instances.
fn check_files(st: &ImageState) -> Result<(), EngineError> {
    for (i, f) in st.files.iter().enumerate() {
        let what = |why: String| bad(format!("open file {i}: {why}"));
        match &f.kind {
            FileKind::Pipe(PipeFile { pipe, .. }) if st.pipes.get(*pipe as usize).is_none() => {
                return Err(what(format!("pipe {pipe} missing from the image")));
            }
            FileKind::UnlinkedFile(UnlinkedRef { inode, .. })
                if !st.unlinked.iter().any(|o| o.inode == *inode) =>
            {
                return Err(what(format!("unlinked file {inode} is not in the image")));
            }
            FileKind::MemfdFile(r) if !st.memfds.iter().any(|o| o.id == r.id) => {
                return Err(what(format!("memfd {} is not in the image", r.id)));
            }
            FileKind::PtySlave(s)
                if !st
                    .files
                    .iter()
                    .any(|g| matches!(&g.kind, FileKind::PtyMaster(m) if m.index == s.index)) =>
            {
                return Err(what(format!(
                    "pseudo-terminal slave /dev/pts/{} without its master",
                    s.index
                )));
            }
            FileKind::PtyMaster(m)
                if st.files[..i]
                    .iter()
                    .any(|g| matches!(&g.kind, FileKind::PtyMaster(o) if o.index == m.index)) =>
            {
                return Err(what(format!(
                    "a second pseudo-terminal master of /dev/pts/{}",
                    m.index
                )));
            }
            FileKind::Epoll(e) => {
                let holds = |q: &&ProcessState| q.fds.iter().any(|g| g.file as usize == i);
                let Some(owner) = st
                    .processes
                    .iter()
                    .filter(holds)
                    .find(|q| q.task.pid == e.owner)
                else {
                    return Err(what(format!(
                        "epoll instance of process {}, which does not hold it",
                        e.owner
                    )));
                };
                for t in &e.targets {
                    if !owner.fds.iter().any(|g| g.fd == t.fd) {
                        return Err(what(format!(
                            "epoll instance registers fd {} of process {}, which it does not hold",
                            t.fd, e.owner
                        )));
                    }
                }
            }
            _ => {}
        }
    }
    for (i, pipe) in st.pipes.iter().enumerate() {
        let cap = pipe.size.max(MIN_PIPE_CAPACITY);
        if i32::try_from(cap).is_err() {
            return Err(bad(format!("pipe {i} has a capacity of {cap} bytes")));
        }
        if pipe.data.len() as u64 > u64::from(cap) {
            return Err(bad(format!(
                "pipe {i} holds {} bytes, more than its capacity of {cap}",
                pipe.data.len()
            )));
        }
    }
    Ok(())
}

/// Memfds, SysV segments and unlinked files once each; tmpfs file chunks
/// inside their files.
fn check_objects(st: &ImageState) -> Result<(), EngineError> {
    let mut ids = BTreeSet::new();
    for o in &st.memfds {
        if !ids.insert(o.id) {
            return Err(bad(format!("memfd {} appears twice in the image", o.id)));
        }
    }
    let mut ids = BTreeSet::new();
    for o in &st.sysv {
        if o.shmid < 0 || !ids.insert(o.shmid) {
            return Err(bad(format!(
                "SysV segment {} is negative or appears twice in the image",
                o.shmid
            )));
        }
    }
    let mut ids = BTreeSet::new();
    for o in &st.unlinked {
        if !ids.insert(o.inode) {
            return Err(bad(format!(
                "unlinked file {} appears twice in the image",
                o.inode
            )));
        }
    }
    for c in &st.tmpfs_files {
        let path = c.path.to_string();
        if !path.starts_with('/') {
            return Err(bad(format!("tmpfs file {path:?} is not an absolute path")));
        }
        if c.offset
            .checked_add(c.bytes.len() as u64)
            .is_none_or(|e| e > c.size)
        {
            return Err(bad(format!(
                "tmpfs file {path}: {} bytes at {} overflow its {} bytes",
                c.bytes.len(),
                c.offset,
                c.size
            )));
        }
    }
    Ok(())
}

fn check_page_run(st: &ImageState, run: &PageRun) -> Result<(), EngineError> {
    let p = st.processes.get(run.process).ok_or_else(|| {
        bad(format!(
            "page record at {:#x} belongs to process number {}, which the image does not hold",
            run.vaddr, run.process
        ))
    })?;
    let len = u64::from(run.pages)
        .checked_mul(st.page_size)
        .ok_or_else(|| bad(format!("page record of {} pages", run.pages)))?;
    page_target(p, run.vaddr, len).map_err(bad)?;
    Ok(())
}

/// Whether `len` bytes of pages at `vaddr` lie inside one mapping of `p`
/// that takes pages from the image: the mappings the dump stores pages of
/// (anonymous memory, shared anonymous objects, private copies of files).
pub(super) fn page_target(p: &ProcessState, vaddr: u64, len: u64) -> Result<&Vma, String> {
    let pid = p.task.pid;
    if p.task.exit_status.is_some() {
        return Err(format!(
            "process {pid} is a zombie, yet has pages at {vaddr:#x}"
        ));
    }
    let end = vaddr
        .checked_add(len)
        .ok_or_else(|| format!("process {pid}: {len} bytes of pages at {vaddr:#x} overflow"))?;
    let v = p
        .vmas
        .iter()
        .find(|v| v.start <= vaddr && end <= v.end)
        .ok_or_else(|| {
            format!("process {pid}: pages {vaddr:#x}-{end:#x} lie outside its mappings")
        })?;
    let takes = match v.backing {
        Backing::Anon | Backing::Shm { .. } => true,
        Backing::Special(_) | Backing::Sysv { .. } => false,
        Backing::File { .. } | Backing::Memfd { .. } | Backing::Unlinked { .. } => !v.shared,
    };
    if !takes {
        return Err(format!(
            "process {pid}: pages {vaddr:#x}-{end:#x} fall in mapping {:#x}-{:#x} ({}), which takes no pages",
            v.start, v.end, v.name
        ));
    }
    Ok(v)
}

/// A filter program the kernel could take: whole 8-byte instructions, at
/// least one and at most `MAX_SECCOMP_INSNS`.
fn seccomp_program(name: &str, f: &SeccompFilter) -> Result<(), String> {
    let len = f.program.len() as u64;
    if len == 0 || len % 8 != 0 {
        return Err(format!(
            "{name} of {len} bytes is not a whole number of 8-byte instructions"
        ));
    }
    if len / 8 > MAX_SECCOMP_INSNS {
        return Err(format!(
            "{name} of {} instructions, at most {MAX_SECCOMP_INSNS}",
            len / 8
        ));
    }
    Ok(())
}

/// The `thread-seccomp` records of `p` name its threads, and ask only for
/// what the kernel lets a thread be: strict mode once, in a thread without
/// filters (neither its own nor its process's).
fn thread_seccomp(p: &ProcessState) -> Result<(), String> {
    let mut strict = BTreeSet::new();
    let mut filters: BTreeMap<i32, usize> = BTreeMap::new();
    for t in &p.thread_seccomp {
        let tid = t.tid;
        if !p.threads.iter().any(|th| th.tid == tid) {
            return Err(format!(
                "a thread-seccomp record names thread {tid}, which is not a thread of the process"
            ));
        }
        match &t.own {
            OwnSeccomp::Strict => {
                if !strict.insert(tid) {
                    return Err(format!("thread {tid} enters strict seccomp mode twice"));
                }
                if !p.seccomp.is_empty() {
                    return Err(format!(
                        "thread {tid} is in strict seccomp mode under its process's seccomp filters"
                    ));
                }
            }
            OwnSeccomp::Filter(f) => {
                let n = filters.entry(tid).or_default();
                seccomp_program(&format!("seccomp filter {n} of thread {tid}'s own"), f)?;
                *n += 1;
            }
        }
        if strict.contains(&tid) && filters.contains_key(&tid) {
            return Err(format!(
                "thread {tid} is in strict seccomp mode and has seccomp filters of its own"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::engine::state::{Fd, OpenFile, PipeState};
    use crate::image::records::{
        Epoll, EpollTarget, MmFields, PosixTimer, Regs, Rlimit, SeccompFilter, SigAction, SigInfo,
        SysvShm, Task, TmpfsFile,
    };
    use crate::image::Arch;

    pub(crate) fn thread(tid: i32) -> Thread {
        Thread {
            tid,
            comm: "app".into(),
            regs: Regs {
                arch: Arch::host(),
                gpr: crate::arch::Regs::default().to_bytes(),
                fpu: vec![0; *crate::arch::FPREGS_SIZES.start()],
            },
            tls: 0,
            sigmask: 0,
            altstack: Default::default(),
            pending: vec![SigInfo::from_raw(vec![10, 0, 0, 0])],
            tid_address: 0,
            robust_list: Default::default(),
            rseq: None,
        }
    }

    fn anon(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            prot: libc::PROT_READ | libc::PROT_WRITE,
            shared: false,
            grows_down: false,
            noreserve: false,
            backing: Backing::Anon,
            name: String::new(),
        }
    }

    /// A process with one thread, fd 0 on the image's first file and
    /// anonymous memory at 0x10000..0x20000.
    pub(crate) fn process(pid: i32, ppid: i32) -> ProcessState {
        ProcessState {
            task: Task {
                pid,
                ppid,
                pgid: 100,
                sid: 100,
                sigactions: (1..=64)
                    .map(|signo| SigAction {
                        signo,
                        ..Default::default()
                    })
                    .collect(),
                rlimits: (0..16)
                    .map(|resource| Rlimit {
                        resource,
                        cur: 1024,
                        max: 4096,
                    })
                    .collect(),
                ..Task::default()
            },
            mm: MmFields {
                auxv: vec![0; 4],
                ..MmFields::default()
            },
            threads: vec![thread(pid)],
            vmas: vec![anon(0x10000, 0x20000)],
            fds: vec![Fd {
                fd: 0,
                file: 0,
                cloexec: false,
            }],
            ..ProcessState::default()
        }
    }

    /// A root with two threads and a child, a pipe both hold, two pages.
    fn valid() -> ImageState {
        let mut root = process(100, 0);
        root.threads.push(thread(102));
        root.seccomp.push(SeccompFilter {
            flags: 0,
            program: vec![0; 16],
        });
        ImageState {
            files: vec![OpenFile {
                flags: 0,
                kind: FileKind::Pipe(PipeFile {
                    pipe: 0,
                    write: false,
                    fifo: None,
                }),
                sigio: None,
            }],
            pipes: vec![PipeState {
                inode: 7,
                size: 65536,
                data: b"unread".to_vec(),
                outside: None,
            }],
            processes: vec![root, process(101, 100)],
            pages: 2,
            page_runs: vec![PageRun {
                process: 1,
                vaddr: 0x1e000,
                pages: 2,
            }],
            page_size: 4096,
            ..ImageState::default()
        }
    }

    fn refusal(st: &ImageState) -> String {
        check_structure(st).expect_err("refused").to_string()
    }

    #[test]
    fn a_valid_image_passes() {
        let plan = check_structure(&valid()).expect("valid");
        assert_eq!(plan.processes, 2);
        assert_eq!(plan.threads, 3);
        assert_eq!(plan.pages, 2);
    }

    #[test]
    fn several_trees_each_have_a_root() {
        let mut st = valid();
        st.processes.push(process(200, 0));
        st.processes.push(process(201, 200));
        let plan = check_structure(&st).expect("two trees");
        assert_eq!(plan.processes, 4);
        // A second tree's child still needs its parent before it.
        st.processes.swap(2, 3);
        assert_eq!(
            refusal(&st),
            "validate: parent 200 of process 201 comes after it"
        );
    }

    #[test]
    fn tree_records_name_roots_once() {
        use crate::image::records::Tree;
        let tree = |root: i32, name: &str| Tree {
            root,
            name: name.into(),
        };
        let mut st = valid();
        st.processes.push(process(200, 0));
        st.trees = vec![tree(100, "logger"), tree(200, "mqtt-bridge")];
        check_structure(&st).expect("two named trees");

        st.trees[1].root = 101;
        assert_eq!(
            refusal(&st),
            "validate: a tree record names process 101, which is no root of the image"
        );
        st.trees[1].root = 100;
        assert_eq!(refusal(&st), "validate: two tree records name process 100");
        st.trees[1] = tree(200, "logger");
        assert_eq!(refusal(&st), "validate: two trees are named \"logger\"");
        st.trees[1] = tree(200, "a\nb");
        assert_eq!(
            refusal(&st),
            "validate: the tree of process 200 is named \"a\\nb\": not 1 to 64 printable bytes"
        );
        st.trees[1] = tree(200, "");
        assert_eq!(
            refusal(&st),
            "validate: the tree of process 200 is named \"\": not 1 to 64 printable bytes"
        );
    }

    #[test]
    fn the_tree_and_its_ids() {
        let mut st = valid();
        st.processes.clear();
        assert_eq!(refusal(&st), "validate: the image holds no process");

        let mut st = valid();
        st.processes[1].task.pid = -5;
        assert_eq!(refusal(&st), "validate: process -5: pid is not positive");

        let mut st = valid();
        st.processes[1].task.pid = 100;
        assert_eq!(refusal(&st), "validate: pid 100 appears twice in the image");

        let mut st = valid();
        st.processes[1].threads[0].tid = 102;
        st.processes[1].task.pid = 102;
        assert_eq!(refusal(&st), "validate: pid 102 appears twice in the image");

        let mut st = valid();
        st.processes[1].threads.push(thread(102));
        assert_eq!(
            refusal(&st),
            "validate: thread 102 of process 101: tid 102 appears twice in the image"
        );

        let mut st = valid();
        st.processes[0].threads[1].tid = 0;
        assert_eq!(
            refusal(&st),
            "validate: thread 0 of process 100: tid is not positive"
        );

        let mut st = valid();
        st.processes[0].task.ppid = 1;
        assert_eq!(
            refusal(&st),
            "validate: the first process 100 has parent 1: the root comes first"
        );

        let mut st = valid();
        st.processes[1].task.ppid = 7;
        assert_eq!(
            refusal(&st),
            "validate: parent 7 of process 101 is not in the image"
        );

        let mut st = valid();
        st.processes[1].task.ppid = 101;
        assert_eq!(
            refusal(&st),
            "validate: parent 101 of process 101 comes after it"
        );

        let mut st = valid();
        st.processes[1].task.sid = -1;
        assert_eq!(refusal(&st), "validate: process 101 has session -1");

        let mut st = valid();
        st.processes[1].task.pgid = -2;
        assert_eq!(refusal(&st), "validate: process 101 has process group -2");

        let mut st = valid();
        st.processes[1].threads[0].tid = 103;
        assert_eq!(
            refusal(&st),
            "validate: process 101 has no main thread record"
        );

        let mut st = valid();
        st.page_size = 1000;
        assert_eq!(refusal(&st), "validate: page size 1000");
    }

    #[test]
    fn threads() {
        let regs = crate::arch::Regs::default().to_bytes().len();
        let fp = crate::arch::FPREGS_SIZES;
        let mut st = valid();
        st.processes[0].threads[1].regs.gpr.pop();
        assert_eq!(
            refusal(&st),
            format!(
                "validate: thread 102 of process 100: register image of {} bytes, this architecture needs {regs}",
                regs - 1
            )
        );

        let mut st = valid();
        st.processes[0].threads[1].regs.fpu = vec![0; fp.end() + 1];
        assert_eq!(
            refusal(&st),
            format!(
                "validate: thread 102 of process 100: FPU state of {} bytes, this architecture takes {} to {}",
                fp.end() + 1,
                fp.start(),
                fp.end()
            )
        );

        let mut st = valid();
        st.processes[0].threads[1].comm = "a-name-of-16-byt".into();
        assert_eq!(
            refusal(&st),
            "validate: thread 102 of process 100: name \"a-name-of-16-byt\" is not at most 15 bytes without NUL"
        );

        let mut st = valid();
        st.processes[0].threads[1].pending = vec![SigInfo::from_raw(vec![10, 0])];
        assert_eq!(
            refusal(&st),
            "validate: thread 102 of process 100: a pending siginfo of 2 bytes"
        );

        let mut st = valid();
        st.processes[0].threads[1].pending = vec![SigInfo::from_raw(vec![65, 0, 0, 0])];
        assert_eq!(
            refusal(&st),
            "validate: thread 102 of process 100: a pending siginfo for signal 65"
        );

        let mut st = valid();
        st.processes[0].threads[1].pending = vec![SigInfo::from_raw(vec![10; MAX_SIGINFO + 1])];
        assert_eq!(
            refusal(&st),
            "validate: thread 102 of process 100: a pending siginfo of 129 bytes"
        );
    }

    #[test]
    fn thread_seccomp_names_threads_of_its_process_and_what_the_kernel_allows() {
        use crate::image::records::{OwnSeccomp, ThreadSeccomp};
        let filter = |len: usize| {
            OwnSeccomp::Filter(SeccompFilter {
                flags: 0,
                program: vec![0; len],
            })
        };
        let own = |tid: i32, own: OwnSeccomp| ThreadSeccomp { tid, own };

        // Filters of a thread's own on top of the shared one, and a strict
        // thread in a process without filters: what the kernel allows.
        let mut st = valid();
        st.processes[0].thread_seccomp = vec![own(102, filter(8)), own(102, filter(16))];
        st.processes[1].thread_seccomp = vec![own(101, OwnSeccomp::Strict)];
        check_structure(&st).expect("valid");

        let mut st = valid();
        st.processes[1].thread_seccomp = vec![own(102, filter(8))];
        assert_eq!(
            refusal(&st),
            "validate: process 101: a thread-seccomp record names thread 102, which is not a thread of the process"
        );

        let mut st = valid();
        st.processes[0].thread_seccomp = vec![own(102, filter(8)), own(102, filter(12))];
        assert_eq!(
            refusal(&st),
            "validate: process 100: seccomp filter 1 of thread 102's own of 12 bytes is not a whole number of 8-byte instructions"
        );

        let mut st = valid();
        st.processes[0].thread_seccomp = vec![own(102, filter(8 * 65536))];
        assert_eq!(
            refusal(&st),
            "validate: process 100: seccomp filter 0 of thread 102's own of 65536 instructions, at most 65535"
        );

        let mut st = valid();
        st.processes[0].thread_seccomp = vec![own(102, OwnSeccomp::Strict)];
        assert_eq!(
            refusal(&st),
            "validate: process 100: thread 102 is in strict seccomp mode under its process's seccomp filters"
        );

        let mut st = valid();
        st.processes[1].thread_seccomp =
            vec![own(101, OwnSeccomp::Strict), own(101, OwnSeccomp::Strict)];
        assert_eq!(
            refusal(&st),
            "validate: process 101: thread 101 enters strict seccomp mode twice"
        );

        for order in [
            [own(101, OwnSeccomp::Strict), own(101, filter(8))],
            [own(101, filter(8)), own(101, OwnSeccomp::Strict)],
        ] {
            let mut st = valid();
            st.processes[1].thread_seccomp = order.to_vec();
            assert_eq!(
                refusal(&st),
                "validate: process 101: thread 101 is in strict seccomp mode and has seccomp filters of its own"
            );
        }
    }

    #[test]
    fn process_counts_and_lengths() {
        let mut st = valid();
        st.processes[1].task.sigactions.push(SigAction::default());
        assert_eq!(
            refusal(&st),
            "validate: process 101: 65 signal dispositions, at most 64"
        );

        let mut st = valid();
        st.processes[1].task.sigactions[5].signo = 5;
        assert_eq!(
            refusal(&st),
            "validate: process 101: a disposition for signal 5, which is out of range or repeated"
        );
        st.processes[1].task.sigactions[5].signo = 65;
        assert_eq!(
            refusal(&st),
            "validate: process 101: a disposition for signal 65, which is out of range or repeated"
        );

        let mut st = valid();
        st.processes[1].task.pending = vec![SigInfo::from_raw(vec![0, 0, 0, 0])];
        assert_eq!(
            refusal(&st),
            "validate: process 101: a pending siginfo for signal 0"
        );

        let mut st = valid();
        st.processes[1].task.rlimits.push(Rlimit::default());
        assert_eq!(
            refusal(&st),
            "validate: process 101: 17 resource limits, at most 16"
        );

        let mut st = valid();
        st.processes[1].task.rlimits[3].cur = 5;
        st.processes[1].task.rlimits[3].max = 4;
        assert_eq!(
            refusal(&st),
            "validate: process 101: resource limit 3 has soft limit 5 above hard limit 4"
        );

        let mut st = valid();
        st.processes[1].task.rlimits[3].resource = 16;
        assert_eq!(
            refusal(&st),
            "validate: process 101: resource limit 16 is out of range or repeated"
        );
        st.processes[1].task.rlimits[3].resource = 2;
        assert_eq!(
            refusal(&st),
            "validate: process 101: resource limit 2 is out of range or repeated"
        );

        let mut st = valid();
        st.processes[1].mm.auxv.push(0);
        assert_eq!(
            refusal(&st),
            "validate: process 101: auxv of 5 words is not a whole number of (type, value) pairs"
        );

        let mut st = valid();
        st.processes[0].seccomp[0].program.push(0);
        assert_eq!(
            refusal(&st),
            "validate: process 100: seccomp filter 0 of 17 bytes is not a whole number of 8-byte instructions"
        );

        let mut st = valid();
        st.processes[0].seccomp[0].program = Vec::new();
        assert_eq!(
            refusal(&st),
            "validate: process 100: seccomp filter 0 of 0 bytes is not a whole number of 8-byte instructions"
        );

        let mut st = valid();
        st.processes[0].seccomp[0].program = vec![0; 8 * (usize::from(u16::MAX) + 1)];
        assert_eq!(
            refusal(&st),
            "validate: process 100: seccomp filter 0 of 65536 instructions, at most 65535"
        );

        let mut st = valid();
        let timer = PosixTimer {
            id: 3,
            signo: 14,
            ..Default::default()
        };
        st.processes[1].task.posix_timers = vec![timer, timer];
        assert_eq!(
            refusal(&st),
            "validate: process 101: POSIX timer id 3 is negative or repeated"
        );
        st.processes[1].task.posix_timers = vec![PosixTimer { signo: 65, ..timer }];
        assert_eq!(
            refusal(&st),
            "validate: process 101: POSIX timer 3 notifies with signal 65"
        );

        let mut st = valid();
        st.processes[1].task.locks = vec![crate::image::records::FileLock {
            fd: 4,
            ..Default::default()
        }];
        assert_eq!(
            refusal(&st),
            "validate: process 101: a file lock on fd 4, which it does not hold"
        );
    }

    #[test]
    fn mappings() {
        let mut st = valid();
        st.processes[1].vmas[0].end = 0x10000;
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x10000: empty or reversed"
        );

        let mut st = valid();
        st.processes[1].vmas[0].end = 0x20001;
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20001: not aligned to pages of 4096 bytes"
        );

        let mut st = valid();
        st.processes[1].vmas.push(anon(0x1f000, 0x30000));
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x1f000-0x30000: starts below 0x20000, where the one before ends"
        );

        let mut st = valid();
        st.processes[1].vmas[0].prot = 0x10;
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: protection 0x10"
        );

        let mut st = valid();
        st.processes[1].vmas[0].backing = Backing::Shm {
            id: 9,
            offset: u64::MAX - 0x1fff,
        };
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: offset 0xffffffffffffe000 is unaligned or out of range"
        );

        let mut st = valid();
        st.processes[1].vmas[0].backing = Backing::Shm { id: 9, offset: 1 };
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: offset 0x1 is unaligned or out of range"
        );

        let mut st = valid();
        st.processes[1].vmas[0].backing = Backing::Shm {
            id: 9,
            offset: 0x3000,
        };
        assert_eq!(check_structure(&st).expect("valid").shm[&9], 0x13000);

        let mut st = valid();
        st.processes[1].vmas[0].backing = Backing::Memfd {
            id: 3,
            offset: 0,
            may_write: true,
        };
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: memfd 3 is not in the image"
        );

        let mut st = valid();
        st.processes[1].vmas[0].backing = Backing::Unlinked {
            inode: 4,
            offset: 0,
            may_write: true,
        };
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: unlinked file 4 is not in the image"
        );

        let mut st = valid();
        st.page_runs.clear();
        st.pages = 0;
        st.processes[1].vmas[0].backing = Backing::Sysv {
            shmid: 5,
            offset: 0x1000,
            read_only: false,
        };
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: SysV segment 5 is not in the image"
        );
        st.sysv.push(SysvShm {
            shmid: 5,
            size: 0x10000,
            ..Default::default()
        });
        assert_eq!(
            refusal(&st),
            "validate: process 101: mapping 0x10000-0x20000: reaches 0x11000 into SysV segment 5 of 65536 bytes"
        );
        st.sysv[0].size = 0x10001;
        check_structure(&st).expect("within the segment's pages");
    }

    #[test]
    fn descriptors_and_files() {
        let mut st = valid();
        st.processes[1].fds[0].fd = -1;
        assert_eq!(refusal(&st), "validate: process 101: fd -1 is out of range");

        let mut st = valid();
        st.processes[1].fds[0].fd = MAX_FD;
        assert_eq!(
            refusal(&st),
            "validate: process 101: fd 1048576 is out of range"
        );

        let mut st = valid();
        let dup = st.processes[1].fds[0];
        st.processes[1].fds.push(dup);
        assert_eq!(refusal(&st), "validate: process 101 holds fd 0 twice");

        let mut st = valid();
        st.processes[1].fds[0].file = 1;
        assert_eq!(refusal(&st), "validate: fd 0 of process 101 names no file");

        let mut st = valid();
        st.files[0].kind = FileKind::Pipe(PipeFile {
            pipe: 1,
            write: true,
            fifo: None,
        });
        assert_eq!(
            refusal(&st),
            "validate: open file 0: pipe 1 missing from the image"
        );

        let mut st = valid();
        st.files[0].kind = FileKind::UnlinkedFile(UnlinkedRef { pos: 0, inode: 8 });
        assert_eq!(
            refusal(&st),
            "validate: open file 0: unlinked file 8 is not in the image"
        );

        let mut st = valid();
        st.files[0].kind =
            FileKind::MemfdFile(crate::image::records::MemfdRef { id: 6, offset: 0 });
        assert_eq!(
            refusal(&st),
            "validate: open file 0: memfd 6 is not in the image"
        );

        let epoll = |owner: i32, fd: i32| {
            FileKind::Epoll(Epoll {
                owner,
                targets: vec![EpollTarget {
                    fd,
                    events: 1,
                    data: 0,
                }],
            })
        };
        let mut st = valid();
        st.files[0].kind = epoll(101, 0);
        check_structure(&st).expect("an epoll watching itself");
        st.files[0].kind = epoll(101, 3);
        assert_eq!(
            refusal(&st),
            "validate: open file 0: epoll instance registers fd 3 of process 101, which it does not hold"
        );
        st.files[0].kind = epoll(55, 0);
        assert_eq!(
            refusal(&st),
            "validate: open file 0: epoll instance of process 55, which does not hold it"
        );

        let mut st = valid();
        st.pipes[0].data = vec![1; 65537];
        assert_eq!(
            refusal(&st),
            "validate: pipe 0 holds 65537 bytes, more than its capacity of 65536"
        );
        st.pipes[0].size = 1 << 31;
        assert_eq!(
            refusal(&st),
            "validate: pipe 0 has a capacity of 2147483648 bytes"
        );
    }

    #[test]
    fn objects() {
        let mut st = valid();
        st.memfds = vec![Default::default(), Default::default()];
        assert_eq!(refusal(&st), "validate: memfd 0 appears twice in the image");

        let mut st = valid();
        st.sysv = vec![SysvShm {
            shmid: -1,
            ..Default::default()
        }];
        assert_eq!(
            refusal(&st),
            "validate: SysV segment -1 is negative or appears twice in the image"
        );

        let mut st = valid();
        st.unlinked = vec![Default::default(), Default::default()];
        assert_eq!(
            refusal(&st),
            "validate: unlinked file 0 appears twice in the image"
        );

        let mut st = valid();
        st.tmpfs_files = vec![TmpfsFile {
            path: "/dev/shm/x".into(),
            size: 10,
            offset: 5,
            bytes: vec![1; 6],
            ..Default::default()
        }];
        assert_eq!(
            refusal(&st),
            "validate: tmpfs file /dev/shm/x: 6 bytes at 5 overflow its 10 bytes"
        );
        st.tmpfs_files[0].path = "dev/shm/x".into();
        assert_eq!(
            refusal(&st),
            "validate: tmpfs file \"dev/shm/x\" is not an absolute path"
        );
    }

    #[test]
    fn pages() {
        let mut st = valid();
        st.pages = 3;
        assert_eq!(
            refusal(&st),
            "validate: the image counts 3 pages, its page records hold 2"
        );

        let mut st = valid();
        st.page_runs[0].process = 2;
        assert_eq!(
            refusal(&st),
            "validate: page record at 0x1e000 belongs to process number 2, which the image does not hold"
        );

        let mut st = valid();
        st.page_runs[0].vaddr = 0x1f000;
        assert_eq!(
            refusal(&st),
            "validate: process 101: pages 0x1f000-0x21000 lie outside its mappings"
        );

        let mut st = valid();
        st.page_runs[0].vaddr = u64::MAX - 0xfff;
        assert_eq!(
            refusal(&st),
            "validate: process 101: 8192 bytes of pages at 0xfffffffffffff000 overflow"
        );

        let mut st = valid();
        st.processes[1].task.exit_status = Some(0);
        assert_eq!(
            refusal(&st),
            "validate: process 101 is a zombie, yet has pages at 0x1e000"
        );

        let mut st = valid();
        st.processes[1].vmas[0].backing = Backing::Special("[vdso]".into());
        st.processes[1].vmas[0].name = "[vdso]".into();
        assert_eq!(
            refusal(&st),
            "validate: process 101: pages 0x1e000-0x20000 fall in mapping 0x10000-0x20000 ([vdso]), which takes no pages"
        );

        let mut st = valid();
        st.processes[1].vmas[0].shared = true;
        st.processes[1].vmas[0].name = "/etc/passwd".into();
        st.processes[1].vmas[0].backing = Backing::File {
            path: "/etc/passwd".into(),
            offset: 0,
            identity: Default::default(),
        };
        assert_eq!(
            refusal(&st),
            "validate: process 101: pages 0x1e000-0x20000 fall in mapping 0x10000-0x20000 (/etc/passwd), which takes no pages"
        );
        st.processes[1].vmas[0].shared = false;
        check_structure(&st).expect("a private copy of a file takes pages");
    }

    /// A 32-bit task's timeval holds seconds in 32 bits: a longer timer
    /// cannot be set, and is refused before anything is created.
    #[cfg(target_pointer_width = "32")]
    #[test]
    fn timers_beyond_a_32_bit_timeval() {
        let mut st = valid();
        st.processes[1].task.itimers.prof.value_ns = u64::MAX;
        assert_eq!(
            refusal(&st),
            "validate: process 101: interval timer 2 of 18446744073709551615ns every 0ns does not fit this architecture's timeval"
        );
        let mut st = valid();
        st.processes[1].mm.auxv[1] = u64::MAX;
        assert_eq!(
            refusal(&st),
            "validate: process 101: auxv word 0xffffffffffffffff does not fit this architecture's word"
        );
    }
    #[test]
    fn aio_rings_are_whole_apart_and_the_kernel_s() {
        use crate::image::records::{AioRing, IoEvent, Membarrier, AIO_RING_MAGIC};
        let ps = valid().page_size;
        let ring = |start: u64| AioRing {
            start,
            size: ps,
            nr: u32::try_from(ps / 32 - 1).expect("nr"),
            head: 1,
            tail: 3,
            magic: AIO_RING_MAGIC,
            compat_features: 1,
            header_length: 32,
            events: vec![IoEvent::default(); 2],
            ..AioRing::default()
        };
        let mut st = valid();
        st.processes[1].aio = vec![ring(0x40000), ring(0x40000 + ps)];
        st.processes[1].membarrier.registered = Membarrier::PRIVATE_EXPEDITED;
        check_structure(&st).expect("two rings side by side");

        let mut st = valid();
        st.processes[1].aio = vec![ring(0x1f000)];
        assert_eq!(
            refusal(&st),
            format!(
                "validate: process 101: AIO ring 0x1f000-{:#x} overlaps another mapping",
                0x1f000 + ps
            )
        );
        let mut st = valid();
        st.processes[1].aio = vec![ring(0x40000), ring(0x40000)];
        assert!(refusal(&st).contains("overlaps another mapping"));
        let mut st = valid();
        let mut r = ring(0x40000);
        r.tail = r.nr;
        st.processes[1].aio = vec![r];
        assert!(refusal(&st).contains("tail"), "{}", refusal(&st));
        let mut st = valid();
        st.processes[1].membarrier.registered = 1;
        assert!(refusal(&st).contains("membarrier"));
    }
}

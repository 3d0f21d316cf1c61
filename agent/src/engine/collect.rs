//! Collecting the state of a frozen process: from outside (registers,
//! /proc, ptrace requests) and from inside (the parasite).
//!
//! Unsafe code: the pipe and tty probes of a frozen task (open, tee, ioctl,
//! pipe2, poll) call libc directly and take ownership of the fds they make.
#![allow(unsafe_code)]

use crate::arch::Bits;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use torpor_parasite::{slot, ParasiteArgs, NSIG, PARASITE_ARGS_OFFSET, PARASITE_MAP_SIZE};

use crate::arch::{self, nr};
use crate::engine::procfs::{self, MapEntry};
use crate::engine::ptrace::{self, Mem, RemotePtr};
use crate::engine::remote::{InjectSite, Remote, RemoteError};
use crate::engine::state::{
    Backing, DeviceFile, ExternalFile, Fd, FileIdentity, FileKind, OpenFile, PathFile, PipeFile,
    PipeState, ProcessState, TorporConnFile, UnlinkedData, UnlinkedRef, Vma,
};
use crate::engine::{conv, Cause, EngineError, Step, StepExt};
use crate::image::records::{
    AltStack, Creds, FileOwner, ITimer, ITimers, MmFields, OwnSeccomp, PipeEnd, PosixTimer, Regs,
    Rlimit, RobustList, Rseq, SeccompFilter, SigAction, SigInfo, Task, TaskAttrs, Thread,
    ThreadAttrs, ThreadSeccomp, VmaAdvice,
};
use crate::image::Arch;

const RLIMIT_NLIMITS: u32 = 16;

/// Mapping names that the kernel provides and a restore moves into place.
pub const SPECIAL_MAPPINGS: &[&str] = &["[vdso]", "[vvar]", "[vvar_vclock]", "[sigpage]"];

/// Kernel mappings at a fixed address above the task's reach (the x86_64
/// vsyscall page, the ARM vector page): the same in every process, never
/// saved, never touched.
pub fn is_fixed_kernel_mapping(name: &str) -> bool {
    name == "[vsyscall]" || name == "[vectors]"
}

fn word(v: usize) -> u64 {
    v as u64
}

fn sword(v: isize) -> i64 {
    v as i64
}

const POSIX_NS: &str = "posix timer nanoseconds";

/// An interval timer's seconds and microseconds, in nanoseconds.
fn itimer_ns(sec: i64, usec: i64) -> Result<u64, Cause> {
    let nsec = usec
        .checked_mul(1000)
        .ok_or_else(|| Cause::Refused(format!("an interval timer of {sec}s {usec}us")))?;
    ns("interval timer nanoseconds", sec, nsec)
}

/// A time the kernel reported as seconds and nanoseconds, in nanoseconds;
/// a negative or overlong one is refused, never taken as zero.
fn ns(what: &'static str, sec: i64, nsec: i64) -> Result<u64, Cause> {
    let total = sec
        .checked_mul(1_000_000_000)
        .and_then(|v| v.checked_add(nsec));
    match total {
        Some(t) => Ok(conv::fit(t, "u64", what)?),
        None => Err(Cause::Refused(format!(
            "a timer of {sec}s {nsec}ns does not fit 64-bit nanoseconds"
        ))),
    }
}

/// Reads everything but memory contents and open files of one process.
pub fn collect_process(
    pid: i32,
    ppid: i32,
    tids: &[i32],
) -> Result<(ProcessState, Vec<MapEntry>), EngineError> {
    let step = Step::Collect(pid);
    let stat_path = format!("/proc/{pid}/stat");
    let stat = procfs::parse_stat(&stat_path, &procfs::read(&stat_path).step(step)?).step(step)?;
    let status_path = format!("/proc/{pid}/status");
    let status =
        procfs::parse_status(&status_path, &procfs::read(&status_path).step(step)?).step(step)?;
    let smaps_path = format!("/proc/{pid}/smaps");
    let maps = procfs::read_smaps(&smaps_path).step(step)?;
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).step(step)?;
    let pers_path = format!("/proc/{pid}/personality");
    let personality = u32::from_str_radix(procfs::read(&pers_path).step(step)?.trim(), 16)
        .map_err(|_| Cause::Refused(format!("{pers_path}: not hex")))
        .step(step)?;
    let limits_path = format!("/proc/{pid}/limits");
    let rlimits =
        procfs::parse_limits(&limits_path, &procfs::read(&limits_path).step(step)?).step(step)?;
    if rlimits.len() != RLIMIT_NLIMITS as usize {
        return Err(EngineError {
            step,
            cause: Cause::Refused(format!(
                "{limits_path} lists {} limits, not {RLIMIT_NLIMITS}",
                rlimits.len()
            )),
        });
    }

    let mut vmas = Vec::new();
    let mut aio = Vec::new();
    for m in &maps {
        if is_fixed_kernel_mapping(&m.name) {
            continue;
        }
        if crate::engine::aio::is_aio_ring(m) {
            let mem = Mem::open(pid).step(step)?;
            let ps = crate::engine::page_size();
            aio.push(crate::engine::aio::read_ring(pid, &mem, m, ps).step(step)?);
            continue;
        }
        vmas.push(vma_of(pid, m).step(step)?);
    }
    let mut attrs = TaskAttrs {
        oom_score_adj: read_oom_score_adj(pid).step(step)?,
        loginuid: read_loginuid(pid).step(step)?,
        advice: maps
            .iter()
            .filter(|m| {
                !is_fixed_kernel_mapping(&m.name)
                    && !SPECIAL_MAPPINGS.contains(&m.name.as_str())
                    && !crate::engine::aio::is_aio_ring(m)
            })
            .filter_map(advice_of)
            .collect(),
        ..TaskAttrs::default()
    };
    for &tid in tids {
        attrs
            .threads
            .push(thread_sched(pid, tid).step(Step::CollectThread(tid))?);
    }

    let exe = procfs::readlink_raw(&format!("/proc/{pid}/exe")).step(step)?;
    if exe.as_bytes().ends_with(b" (deleted)") {
        return Err(EngineError {
            step,
            cause: Cause::Unsupported(format!("executable {exe} was deleted")),
        });
    }
    let [uid, euid, suid, fsuid] = status.uids;
    let [gid, egid, sgid, fsgid] = status.gids;
    let [cap_inheritable, cap_permitted, cap_effective, cap_bounding, cap_ambient] = status.caps;
    let mut p = ProcessState {
        task: Task {
            pid,
            ppid,
            pgid: stat.pgid,
            sid: stat.sid,
            ctty: if stat.sid == pid { stat.tty_nr } else { 0 },
            exe,
            cwd: procfs::readlink_raw(&format!("/proc/{pid}/cwd")).step(step)?,
            root: procfs::readlink_raw(&format!("/proc/{pid}/root")).step(step)?,
            umask: status.umask,
            personality,
            rlimits: (0..)
                .zip(rlimits)
                .map(|(resource, (cur, max))| Rlimit { resource, cur, max })
                .collect(),
            creds: Creds {
                uid,
                euid,
                suid,
                fsuid,
                gid,
                egid,
                sgid,
                fsgid,
                groups: status.groups,
                cap_inheritable,
                cap_permitted,
                cap_effective,
                cap_bounding,
                cap_ambient,
                securebits: 0,
                no_new_privs: status.no_new_privs,
            },
            ..Default::default()
        },
        mm: MmFields {
            start_code: stat.start_code,
            end_code: stat.end_code,
            start_data: stat.start_data,
            end_data: stat.end_data,
            start_brk: stat.start_brk,
            brk: 0,
            start_stack: stat.start_stack,
            arg_start: stat.arg_start,
            arg_end: stat.arg_end,
            env_start: stat.env_start,
            env_end: stat.env_end,
            auxv: auxv_words(&auxv).step(step)?,
        },
        vmas,
        attrs,
        aio,
        ..Default::default()
    };
    p.task.pending = siginfos(ptrace::peek_siginfo(pid, true).step(step)?);
    let own = procfs::parse_status(
        "/proc/self/status",
        &procfs::read("/proc/self/status").step(step)?,
    )
    .step(step)?;
    let mut chains = Vec::with_capacity(tids.len());
    for &tid in tids {
        let tstep = Step::CollectThread(tid);
        chains.push((tid, seccomp_filters(pid, tid, &own).step(tstep)?));
        let mut regs = arch::get_regs(tid).step(tstep)?;
        let tls = arch::get_tls(tid, &regs).step(tstep)?;
        regs.for_image();
        let comm_path = format!("/proc/{pid}/task/{tid}/comm");
        let comm = procfs::read(&comm_path)
            .step(tstep)?
            .trim_end_matches('\n')
            .to_string();
        p.threads.push(Thread {
            tid,
            comm,
            regs: Regs {
                arch: Arch::host(),
                gpr: regs.to_bytes(),
                fpu: arch::get_fpregs(tid).step(tstep)?,
            },
            tls,
            sigmask: ptrace::get_sigmask(tid).step(tstep)?,
            pending: siginfos(ptrace::peek_siginfo(tid, false).step(tstep)?),
            rseq: ptrace::rseq_config(tid)
                .step(tstep)?
                .map(|(addr, len, sig)| Rseq { addr, len, sig }),
            altstack: AltStack::default(),
            tid_address: 0,
            robust_list: RobustList::default(),
        });
    }
    (p.seccomp, p.thread_seccomp) = split_seccomp(chains);
    run_parasite(&mut p).step(Step::Parasite(pid))?;
    // Only the threads that differ from a new thread are kept.
    p.attrs.threads.retain(|t| {
        *t != ThreadAttrs {
            tid: t.tid,
            ..ThreadAttrs::default()
        }
    });
    // The task record carries the first thread's name and blocked mask.
    if let Some(t) = p.threads.first() {
        p.task.comm = t.comm.clone();
        p.task.sigmask = t.sigmask;
    }
    Ok((p, maps))
}

/// `/proc/PID/oom_score_adj`, checked to be in the kernel's range.
pub(crate) fn read_oom_score_adj(pid: i32) -> Result<i32, Cause> {
    let path = format!("/proc/{pid}/oom_score_adj");
    let text = procfs::read(&path)?;
    text.trim()
        .parse::<i32>()
        .ok()
        .filter(|v| (-1000..=1000).contains(v))
        .ok_or_else(|| Cause::Refused(format!("{path}: {:?} is not -1000..=1000", text.trim())))
}

/// `/proc/PID/loginuid`, or unset (`u32::MAX`) on a kernel without audit
/// support, which has no such file.
pub fn read_loginuid(pid: i32) -> Result<u32, Cause> {
    let path = format!("/proc/{pid}/loginuid");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(u32::MAX),
        Err(e) => {
            return Err(Cause::Io(std::io::Error::new(
                e.kind(),
                format!("{path}: {e}"),
            )))
        }
    };
    text.trim()
        .parse::<u32>()
        .map_err(|_| Cause::Refused(format!("{path}: {:?} is not a uid", text.trim())))
}

/// The `madvise` flags of one mapping, if it has any.
fn advice_of(m: &MapEntry) -> Option<VmaAdvice> {
    let flags = VmaAdvice::TABLE
        .iter()
        .filter(|(_, name, _)| m.vm_flags.iter().any(|f| f == name))
        .fold(0, |acc, (bit, _, _)| acc | bit);
    (flags != 0).then_some(VmaAdvice {
        start: m.start,
        end: m.end,
        flags,
    })
}

const SCHED_RESET_ON_FORK: libc::c_long = 0x4000_0000;

/// A thread's policy, real-time priority and nice value (its `stat`) and
/// whether its children start with the default policy
/// (`sched_getscheduler`); the parent-death signal is read in the task.
pub(crate) fn thread_sched(pid: i32, tid: i32) -> Result<ThreadAttrs, Cause> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let stat = procfs::parse_stat(&path, &procfs::read(&path)?)?;
    // SAFETY: sched_getscheduler takes a tid and returns an int; no memory
    // is passed.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, tid) };
    if policy < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Cause::Io(std::io::Error::new(
            e.kind(),
            format!("sched_getscheduler of thread {tid}: {e}"),
        )));
    }
    let reset_on_fork = policy & SCHED_RESET_ON_FORK != 0;
    if !matches!(stat.policy, 0 | 1 | 2 | 3 | 5) {
        return Err(Cause::Unsupported(format!(
            "thread {tid} of process {pid} runs under scheduling policy {} (SCHED_DEADLINE or unknown), which torpor cannot restore",
            stat.policy
        )));
    }
    Ok(ThreadAttrs {
        tid,
        policy: stat.policy,
        reset_on_fork,
        rt_priority: stat.rt_priority,
        nice: stat.nice,
        pdeathsig: 0,
    })
}

fn siginfos(raw: Vec<Vec<u8>>) -> Vec<SigInfo> {
    raw.into_iter().map(SigInfo::from_raw).collect()
}

/// `/proc/PID/auxv` (native words) as image words, whole (type, value)
/// pairs only.
fn auxv_words(raw: &[u8]) -> Result<Vec<u64>, Cause> {
    let w = core::mem::size_of::<usize>();
    if raw.len() % (2 * w) != 0 {
        return Err(Cause::Refused(format!(
            "auxv of {} bytes is not a whole number of {w}-byte (type, value) pairs",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(w)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect())
}

/// What a thread runs under beyond torpor's own seccomp filters (a
/// container's, which the restored tree inherits from torpor again).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chain {
    /// Its filters, oldest first (none: seccomp is off).
    Filters(Vec<SeccompFilter>),
    /// `SECCOMP_MODE_STRICT`, which the kernel lets only a thread without
    /// filters enter.
    Strict,
}

/// The seccomp state of a thread. Filters that hand their decisions to a
/// supervisor (`NEW_LISTENER`) cannot be restored.
fn seccomp_filters(pid: i32, tid: i32, own: &procfs::Status) -> Result<Chain, Cause> {
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 8;
    let path = format!("/proc/{pid}/task/{tid}/status");
    let s = procfs::parse_status(&path, &procfs::read(&path)?)?;
    if s.seccomp == 1 {
        return Ok(Chain::Strict);
    }
    let inherited = if own.seccomp == 2 {
        own.seccomp_filters
    } else {
        0
    };
    if s.seccomp != 2 || s.seccomp_filters <= inherited {
        return Ok(Chain::Filters(Vec::new()));
    }
    let mut out = Vec::new();
    // Index 0 is the oldest filter: the inherited ones come first.
    for index in u64::from(inherited)..u64::from(s.seccomp_filters) {
        let Some((flags, program)) = ptrace::seccomp_filter(tid, index)? else {
            break;
        };
        if flags & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
            return Err(Cause::Unsupported(format!(
                "thread {tid} of process {pid} has a seccomp filter that notifies a supervisor, which torpor cannot restore"
            )));
        }
        out.push(SeccompFilter { flags, program });
    }
    Ok(Chain::Filters(out))
}

/// The filters every thread of a process runs under (the longest chain
/// every thread's starts with; none when a thread is strict), and what
/// each thread runs under beyond them, its oldest filter first. When all
/// threads run under the same filters, the second list is empty.
fn split_seccomp(chains: Vec<(i32, Chain)>) -> (Vec<SeccompFilter>, Vec<ThreadSeccomp>) {
    fn of(c: &(i32, Chain)) -> &[SeccompFilter] {
        match &c.1 {
            Chain::Filters(f) => f,
            Chain::Strict => &[],
        }
    }
    let first = chains.first().map_or(&[][..], of);
    let common = chains.iter().map(of).fold(first.len(), |n, f| {
        (0..n.min(f.len()))
            .find(|&i| f[i] != first[i])
            .unwrap_or(n.min(f.len()))
    });
    let shared = first[..common].to_vec();
    let mut own = Vec::new();
    for (tid, c) in chains {
        match c {
            Chain::Strict => own.push(ThreadSeccomp {
                tid,
                own: OwnSeccomp::Strict,
            }),
            Chain::Filters(f) => own.extend(f.into_iter().skip(common).map(|f| ThreadSeccomp {
                tid,
                own: OwnSeccomp::Filter(f),
            })),
        }
    }
    (shared, own)
}

/// Records what each path `p` holds open, maps or works in is (its
/// identity, type and owner, read through /proc from the file the task
/// has, not by path), and the directories an unlinked or tmpfs file would
/// be recreated in: a restore opens each only if it is still that file.
pub fn file_owners(p: &mut ProcessState, files: &[OpenFile]) -> Result<(), EngineError> {
    use crate::engine::files::owner::record_of;
    let step = Step::Files(p.task.pid);
    let pid = p.task.pid;
    let mut out: Vec<FileOwner> = Vec::new();
    let add = |path: &str, via: &str, out: &mut Vec<FileOwner>| -> Result<(), EngineError> {
        if out.iter().any(|o| o.path.as_bytes() == path.as_bytes()) {
            return Ok(());
        }
        let md = std::fs::metadata(via)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{via} ({path}): {e}")))
            .step(step)?;
        out.push(record_of(path, &md));
        Ok(())
    };
    let parent = |path: &str| -> String {
        std::path::Path::new(path)
            .parent()
            .map_or_else(|| "/".to_string(), |d| d.to_string_lossy().into_owned())
    };
    add(
        &p.task.cwd.to_string(),
        &format!("/proc/{pid}/cwd"),
        &mut out,
    )?;
    for fd in &p.fds {
        let via = format!("/proc/{pid}/fd/{}", fd.fd);
        match files.get(fd.file as usize).map(|f| &f.kind) {
            Some(
                FileKind::Path(PathFile { path, .. })
                | FileKind::Device(DeviceFile { path, .. })
                | FileKind::Pipe(PipeFile {
                    fifo: Some(path), ..
                }),
            ) => add(path, &via, &mut out)?,
            // Reopened by path when its master turns out to be outside
            // the tree (`files::link_ptys`).
            Some(FileKind::PtySlave(s)) => add(&format!("/dev/pts/{}", s.index), &via, &mut out)?,
            Some(
                FileKind::UnlinkedFile(UnlinkedRef { .. })
                | FileKind::Unlinked(UnlinkedData { .. }),
            ) => {
                let link = procfs::readlink(&via).step(step)?;
                let path = link.strip_suffix(" (deleted)").unwrap_or(&link);
                let dir = parent(path);
                add(&dir, &dir, &mut out)?;
            }
            _ => {}
        }
    }
    for v in &p.vmas {
        match &v.backing {
            Backing::File { path, .. } => {
                add(
                    path,
                    &format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end),
                    &mut out,
                )?;
                if v.shared {
                    let dir = parent(path);
                    add(&dir, &dir, &mut out)?;
                }
            }
            Backing::Unlinked { .. } => {
                let path = v.name.strip_suffix(" (deleted)").unwrap_or(&v.name);
                let dir = parent(path);
                add(&dir, &dir, &mut out)?;
            }
            _ => {}
        }
    }
    p.owners = out;
    Ok(())
}

/// A zombie: who it was (for its parent, group and session) and how it
/// ended.
pub fn collect_zombie(pid: i32, ppid: i32, status: i32) -> Result<ProcessState, EngineError> {
    let step = Step::Collect(pid);
    let stat_path = format!("/proc/{pid}/stat");
    let stat = procfs::parse_stat(&stat_path, &procfs::read(&stat_path).step(step)?).step(step)?;
    Ok(ProcessState {
        task: Task {
            pid,
            ppid,
            pgid: stat.pgid,
            sid: stat.sid,
            exit_status: Some(status),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// The refusal of a mapping registered with userfaultfd for missing pages.
pub(crate) fn userfaultfd_refusal(pid: i32, m: &MapEntry) -> Cause {
    Cause::Refused(format!(
        "mapping {:#x}-{:#x} ({}) of process {pid} is registered with userfaultfd, \
         so its missing pages are not known (a lazy restore still bringing them in?): \
         try again once it is done",
        m.start, m.end, m.name
    ))
}

fn vma_of(pid: i32, m: &MapEntry) -> Result<Vma, Cause> {
    // A page missing from a range registered with userfaultfd is not a
    // zero page: a lazy restore may still be bringing it in, and pagemap
    // would make the image lose it.
    if m.has_flag("um") {
        return Err(userfaultfd_refusal(pid, m));
    }
    let prot = (if m.read { libc::PROT_READ } else { 0 })
        | (if m.write { libc::PROT_WRITE } else { 0 })
        | (if m.exec { libc::PROT_EXEC } else { 0 });
    let backing = if SPECIAL_MAPPINGS.contains(&m.name.as_str()) {
        Backing::Special(m.name.clone())
    } else if let Some(b) = crate::engine::files::mapped_object(m) {
        // Before the inode test: SysV segment 0 has inode 0.
        b
    } else if m.inode == 0 {
        // Private anonymous, [heap], [stack].
        Backing::Anon
    } else if m.name.ends_with(" (deleted)") {
        if m.shared && m.name.starts_with("/dev/zero") {
            // Shared anonymous memory shows as the deleted /dev/zero.
            Backing::Shm {
                id: m.inode,
                offset: m.offset,
            }
        } else {
            // A regular file unlinked while mapped: kept by content, as an
            // unlinked-file object (files::write_objects).
            let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            let md = std::fs::metadata(&link)?;
            if !md.file_type().is_file() || md.ino() != m.inode {
                return Err(Cause::Unsupported(format!(
                    "mapping {:#x}-{:#x} of deleted file {}, which is not a regular file",
                    m.start, m.end, m.name
                )));
            }
            Backing::Unlinked {
                inode: m.inode,
                offset: m.offset,
                may_write: m.has_flag("mw"),
            }
        }
    } else {
        // The mapped file as this process sees it (its root, its mounts).
        let link = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        let md = std::fs::metadata(&link).or_else(|_| std::fs::metadata(&m.name))?;
        if md.ino() != m.inode {
            return Err(Cause::Refused(format!("{} changed while mapped", m.name)));
        }
        Backing::File {
            path: m.name.clone(),
            offset: m.offset,
            identity: FileIdentity {
                dev: md.dev(),
                inode: md.ino(),
                size: md.size(),
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec(),
            },
        }
    };
    Ok(Vma {
        start: m.start,
        end: m.end,
        prot,
        shared: m.shared,
        grows_down: m.has_flag("gd"),
        noreserve: m.has_flag("nr"),
        backing,
        name: m.name.clone(),
    })
}

/// Maps the parasite into the process, runs it in every thread, unmaps it.
///
/// Each thread is borrowed so that it returns into its own context by
/// itself if torpor dies meanwhile (`remote` says how); a process without
/// spare bytes for that in its vDSO or signal page is borrowed at its pc
/// as a restore borrows its tasks, which such a death does not survive.
fn run_parasite(p: &mut ProcessState) -> Result<(), Cause> {
    let pid = p.task.pid;
    let mem = Mem::open(pid)?;
    let site = InjectSite::find(pid, &mem)?;
    let borrow = |tid: i32, trampoline: u64| match &site {
        Some(s) => Remote::returning(tid, &mem, s),
        None if tid == pid => Remote::at_pc(tid, &mem),
        None => Remote::at(tid, &mem, trampoline),
    };
    let mut main = borrow(pid, 0)?;
    let size = PARASITE_MAP_SIZE as u64;
    let base = main.mmap(
        "mmap",
        0,
        size,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )?;
    let result = (|| -> Result<(), Cause> {
        mem.write(RemotePtr::<u8>::new(base), torpor_parasite::parasite())?;
        main.syscall(
            "mprotect",
            nr::MPROTECT,
            [
                base,
                4096,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                0,
                0,
                0,
            ],
        )?;
        let args_at = RemotePtr::<ParasiteArgs>::new(base + PARASITE_ARGS_OFFSET as u64);
        let stack = base + size - 64;
        // Above the parasite's stack: a word the prctl calls below write.
        let word_at = base + size - 32;
        let done = torpor_parasite::parasite_done() as u64;
        for (i, t) in p.threads.iter_mut().enumerate() {
            mem.write_value(args_at, &ParasiteArgs::default())?;
            let pdeathsig = if i == 0 {
                // The main thread is already borrowed by `main`.
                main.run_parasite(base, args_at.addr(), stack, done)?;
                p.task.creds.securebits = read_securebits(&mut main)?;
                read_pdeathsig(&mut main, &mem, word_at)?
            } else {
                let mut r = borrow(t.tid, base)?;
                r.run_parasite(base, args_at.addr(), stack, done)?;
                let sig = read_pdeathsig(&mut r, &mem, word_at)?;
                let bits = read_securebits(&mut r)?;
                r.finish()?;
                if bits != p.task.creds.securebits {
                    return Err(Cause::Unsupported(format!(
                        "thread {} of process {pid} has securebits {bits:#x}, its main thread {:#x}, which torpor cannot restore",
                        t.tid, p.task.creds.securebits
                    )));
                }
                sig
            };
            if let Some(a) = p.attrs.threads.iter_mut().find(|a| a.tid == t.tid) {
                a.pdeathsig = pdeathsig;
            }
            let out: ParasiteArgs = mem.read_value(args_at)?;
            check_results(t.tid, &out)?;
            t.altstack = AltStack {
                sp: word(out.altstack.sp),
                flags: out.altstack.flags.bits(),
                size: word(out.altstack.size),
            };
            t.tid_address = word(out.tid_address);
            t.robust_list = RobustList {
                head: word(out.robust_head),
                len: word(out.robust_len),
            };
            if i == 0 {
                p.task.sigactions = (1..)
                    .zip(out.sigactions.iter())
                    .map(|(signo, s)| {
                        let mut mask = 0u64;
                        for (k, w) in s.mask.iter().enumerate() {
                            mask |= word(*w) << (k * usize::BITS as usize);
                        }
                        SigAction {
                            signo,
                            handler: word(s.handler),
                            flags: word(s.flags),
                            restorer: word(s.restorer),
                            mask,
                        }
                    })
                    .collect();
                let [real, virt, prof] = out.itimers.map(|t| {
                    Ok::<_, Cause>(ITimer {
                        interval_ns: itimer_ns(sword(t.interval_sec), sword(t.interval_usec))?,
                        value_ns: itimer_ns(sword(t.value_sec), sword(t.value_usec))?,
                    })
                });
                p.task.itimers = ITimers {
                    real: real?,
                    virt: virt?,
                    prof: prof?,
                };
                p.mm.brk = out.results[slot::BRK].bits() as u64;
            }
        }
        Ok(())
    })();
    let result =
        result.and_then(|()| read_process_prctls(&mut main, &mem, base + size - 32, &mut p.attrs));
    let result = result.and_then(|()| {
        p.membarrier = crate::engine::aio::read_membarrier(&mut main)?;
        Ok(())
    });
    let timers = if result.is_ok() {
        read_timers(pid, &mut main, &mem, base + PARASITE_ARGS_OFFSET as u64)
    } else {
        Ok(Vec::new())
    };
    let unmapped = main.munmap("munmap", base, size);
    p.task.posix_timers = timers?;
    result?;
    unmapped?;
    main.finish()?;
    if let Some(s) = site {
        s.finish()?;
    }
    Ok(())
}

const PR_GET_PDEATHSIG: u64 = 2;
const PR_GET_DUMPABLE: u64 = 3;
const PR_GET_SECUREBITS: u64 = 27;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_GET_THP_DISABLE: u64 = 42;

/// The parent-death signal of the borrowed thread, through the int at
/// `word_at` (task memory).
fn read_pdeathsig(r: &mut Remote<'_>, mem: &Mem, word_at: u64) -> Result<i32, Cause> {
    mem.write_value(RemotePtr::<i32>::new(word_at), &0)?;
    r.prctl("prctl(PR_GET_PDEATHSIG)", PR_GET_PDEATHSIG, word_at, 0)?;
    let sig: i32 = mem.read_value(RemotePtr::<i32>::new(word_at))?;
    if !(0..=64).contains(&sig) {
        return Err(Cause::Refused(format!("a parent-death signal {sig}")));
    }
    Ok(sig)
}

/// What prctl alone tells of a process, asked in its main thread:
/// child subreaper, dumpable, THP disabled.
fn read_process_prctls(
    r: &mut Remote<'_>,
    mem: &Mem,
    word_at: u64,
    attrs: &mut TaskAttrs,
) -> Result<(), Cause> {
    mem.write_value(RemotePtr::<i32>::new(word_at), &0)?;
    r.prctl(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        PR_GET_CHILD_SUBREAPER,
        word_at,
        0,
    )?;
    let subreaper: i32 = mem.read_value(RemotePtr::<i32>::new(word_at))?;
    attrs.child_subreaper = subreaper != 0;
    let dumpable = r.prctl("prctl(PR_GET_DUMPABLE)", PR_GET_DUMPABLE, 0, 0)?;
    attrs.dumpable = u32::try_from(dumpable)
        .ok()
        .filter(|d| *d <= 2)
        .ok_or_else(|| Cause::Refused(format!("PR_GET_DUMPABLE returned {dumpable}")))?;
    let thp = r.prctl("prctl(PR_GET_THP_DISABLE)", PR_GET_THP_DISABLE, 0, 0)?;
    attrs.thp_disable = match thp {
        0 => false,
        1 => true,
        _ => {
            return Err(Cause::Unsupported(format!(
                "PR_GET_THP_DISABLE says {thp:#x}, a setting torpor cannot restore"
            )))
        }
    };
    Ok(())
}

/// The securebits of the borrowed thread.
fn read_securebits(r: &mut Remote<'_>) -> Result<u32, Cause> {
    let bits = r.prctl("prctl(PR_GET_SECUREBITS)", PR_GET_SECUREBITS, 0, 0)?;
    u32::try_from(bits)
        .ok()
        .filter(|b| b & !SECUREBITS_ALL == 0)
        .ok_or_else(|| Cause::Refused(format!("PR_GET_SECUREBITS returned {bits:#x}")))
}

/// Every securebit and its lock (`linux/securebits.h`): NOROOT,
/// NO_SETUID_FIXUP, KEEP_CAPS, NO_CAP_AMBIENT_RAISE, EXEC_RESTRICT_FILE,
/// EXEC_DENY_INTERACTIVE.
pub const SECUREBITS_ALL: u32 = 0xfff;

/// POSIX timers: their settings from /proc, their time left from
/// timer_gettime run in the task (into `scratch`, a page of the parasite's).
fn read_timers(
    pid: i32,
    r: &mut Remote<'_>,
    mem: &Mem,
    scratch: u64,
) -> Result<Vec<PosixTimer>, Cause> {
    let path = format!("/proc/{pid}/timers");
    let entries = procfs::parse_timers(&path, &procfs::read(&path)?)?;
    let mut out = Vec::new();
    for e in entries {
        r.syscall(
            "timer_gettime",
            nr::TIMER_GETTIME,
            [u64::from(e.id.bits()), scratch, 0, 0, 0, 0],
        )?;
        // struct itimerspec: interval then value, each {sec, nsec} in longs.
        let mut w = [0isize; 4];
        for (i, v) in w.iter_mut().enumerate() {
            let at = RemotePtr::<isize>::new(scratch + (i * core::mem::size_of::<isize>()) as u64);
            *v = mem.read_value(at)?;
        }
        out.push(PosixTimer {
            id: e.id,
            clock: e.clock,
            notify: e.notify,
            tid: e.target,
            signo: e.signo,
            value: e.value,
            interval_ns: ns(POSIX_NS, sword(w[0]), sword(w[1]))?,
            value_ns: ns(POSIX_NS, sword(w[2]), sword(w[3]))?,
        });
    }
    Ok(out)
}

fn check_results(tid: i32, a: &ParasiteArgs) -> Result<(), Cause> {
    let fail = |name: &'static str, r: isize| -> Cause {
        // The result word is the target's memory: only -4095..-1 is an errno.
        let Some(errno) = r
            .checked_neg()
            .and_then(|e| i32::try_from(e).ok())
            .filter(|e| (1..4096).contains(e))
        else {
            return Cause::Refused(format!("{name} returned {r}, not an errno"));
        };
        Cause::Remote(RemoteError::Syscall {
            tid,
            name,
            err: std::io::Error::from_raw_os_error(errno),
        })
    };
    for sig in 1..=NSIG {
        if sig == 9 || sig == 19 {
            continue;
        }
        let r = a.sig_results[sig - 1];
        if r != 0 {
            return Err(fail("rt_sigaction (parasite)", r));
        }
    }
    let named = [
        (slot::SIGALTSTACK, "sigaltstack (parasite)"),
        (slot::ITIMER_REAL, "getitimer (parasite)"),
        (slot::ITIMER_VIRTUAL, "getitimer (parasite)"),
        (slot::ITIMER_PROF, "getitimer (parasite)"),
        (slot::TID_ADDRESS, "prctl(PR_GET_TID_ADDRESS) (parasite)"),
        (slot::ROBUST_LIST, "get_robust_list (parasite)"),
    ];
    for (s, name) in named {
        if a.results[s] != 0 {
            return Err(fail(name, a.results[s]));
        }
    }
    Ok(())
}

/// Open files of every process: descriptions shared between fds (dup, fork)
/// are found with kcmp and stored once; pipes carry their unread bytes.
#[derive(Debug, Default)]
pub struct FileTable {
    pub files: Vec<OpenFile>,
    pub pipes: Vec<PipeState>,
    /// (pid, fd) that first showed each file, for kcmp comparisons.
    owner: Vec<(i32, i32, String)>,
    pipe_index: BTreeMap<u64, u32>,
    /// Which ends of each pipe the tree holds: (read, write).
    pipe_ends: BTreeMap<u32, (bool, bool, i32, i32)>,
    /// Inode of the tree's end of its connection to `torpor daemon`, which
    /// is recorded as [`FileKind::TorporConn(TorporConnFile)`] rather than refused.
    pub torpor_conn: Option<u64>,
    /// (pid, fd, key) kept outside the image.
    pub external: Vec<(i32, i32, String)>,
    /// Established TCP connections are kept in repair mode (and put here)
    /// rather than brought back reset.
    pub tcp: Option<crate::engine::files::TcpRepairing>,
    /// Where the socket being collected leaves the descriptors in flight in
    /// its queue.
    inflight: crate::engine::files::InFlight,
    /// Descriptors in flight, until every fd of the trees is known.
    passing: Vec<Passing>,
    /// The descriptions only a queued message holds: (open file index,
    /// torpor's copy), kept open until the image is written.
    pub flight: Vec<(u32, OwnedFd)>,
    /// UNIX listeners with connections waiting to be accepted: (open file
    /// index, pid, fd, the inodes of the clients in `accept` order).
    waiting: Vec<(u32, i32, i32, Vec<u64>)>,
    /// Socket options beyond an fd record's, by open file index.
    pub sock_opts: BTreeMap<u32, Vec<crate::image::records::RawSockOpt>>,
    /// The credentials of queued messages of UNIX sockets: (open file
    /// index, the socket as refusals name it, the message's sender).
    msg_creds: Vec<(u32, i32, String, crate::engine::files::SentBy)>,
}

/// The descriptors message `message` of the queue of the socket first seen
/// in `pid` (open file `socket`) passes, held by torpor.
#[derive(Debug)]
struct Passing {
    socket: u32,
    pid: i32,
    message: u32,
    fds: Vec<OwnedFd>,
    /// How deep the socket is in flight itself: 0 for one a process holds.
    depth: u8,
    /// The socket, as refusals name it: "fd 7 of process 812".
    who: String,
}

/// How deep sockets with descriptors in their queue may nest in flight: a
/// socket a process holds passes a socket (1) whose queue passes one (2)
/// whose queue passes one (3) whose queue passes descriptors, none of them
/// a socket with more.
#[allow(clippy::cast_possible_truncation)]
pub const FLIGHT_DEPTH: u8 = crate::engine::state::RIGHTS_DEPTH as u8;

fn kcmp_same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool, std::io::Error> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(pid1),
            libc::c_long::from(pid2),
            KCMP_FILE,
            libc::c_long::from(fd1),
            libc::c_long::from(fd2),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// What two processes of the trees may share that a restore would split:
/// (kcmp type, what is shared, how it came to be).
const SHARED: [(libc::c_long, &str, &str); 3] = [
    (1, "one address space", "CLONE_VM without CLONE_THREAD"),
    (2, "one file descriptor table", "CLONE_FILES"),
    (3, "one working directory, root and umask", "CLONE_FS"),
];

/// Refuses processes that share their memory, descriptor table or file
/// system context with another process (made with `clone` and those flags,
/// not `fork`): each comes back with its own, and a change one of them
/// makes would no longer be seen by the other. Each pair is compared once
/// (`kcmp`), among the live processes of every tree dumped together.
pub fn check_shared_tables(pids: &[i32]) -> Result<(), EngineError> {
    for (i, &a) in pids.iter().enumerate() {
        for &b in &pids[i + 1..] {
            for (kind, what, how) in SHARED {
                // SAFETY: kcmp takes only integers.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_kcmp,
                        libc::c_long::from(a),
                        libc::c_long::from(b),
                        kind,
                        0 as libc::c_long,
                        0 as libc::c_long,
                    )
                };
                if r < 0 {
                    return Err(EngineError::new(
                        Step::Collect(b),
                        Cause::Io(std::io::Error::other(format!(
                            "kcmp of processes {a} and {b}: {}",
                            std::io::Error::last_os_error()
                        ))),
                    ));
                }
                if r == 0 {
                    return Err(EngineError::new(
                        Step::Collect(b),
                        Cause::Unsupported(format!(
                            "processes {a} and {b} share {what} ({how}), which a restore would split"
                        )),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn is_tty_major(major: u64) -> bool {
    // 4: tty/ttyS, 5: tty/console/ptmx, 136-143: pts
    major == 4 || major == 5 || (136..=143).contains(&major)
}

impl FileTable {
    pub fn collect(&mut self, pid: i32) -> Result<Vec<Fd>, EngineError> {
        let step = Step::Files(pid);
        let mut out = Vec::new();
        for fd in procfs::fds(pid).step(step)? {
            let link = procfs::readlink(&format!("/proc/{pid}/fd/{fd}")).step(step)?;
            let info_path = format!("/proc/{pid}/fdinfo/{fd}");
            let info_text = procfs::read(&info_path).step(step)?;
            let info = procfs::parse_fdinfo(&info_path, &info_text).step(step)?;
            let cloexec = info.flags & (libc::O_CLOEXEC as u32) != 0;
            let flags = info.flags & !(libc::O_CLOEXEC as u32);
            if let Some((_, _, key)) = self.external.iter().find(|(p, f, _)| *p == pid && *f == fd)
            {
                self.files.push(OpenFile {
                    flags,
                    kind: FileKind::External(ExternalFile { key: key.clone() }),
                    sigio: None,
                });
                self.owner.push((pid, fd, format!("external:{key}")));
                let file = conv::fit(self.files.len() - 1, "u32", "open file index").step(step)?;
                out.push(Fd { fd, file, cloexec });
                continue;
            }
            // Same description as one already seen?
            let id = match self.seen(pid, fd, &link).step(step)? {
                Some(i) => i,
                None => {
                    let kind = self.kind_of(pid, fd, &link, flags, info.pos).step(step)?;
                    // Owner and signal matter with O_ASYNC or a lease.
                    let leased = info_text
                        .lines()
                        .any(|l| l.starts_with("lock:") && l.contains(" LEASE "));
                    let sigio = if flags & crate::engine::files::O_ASYNC != 0 || leased {
                        Some(
                            crate::engine::files::collect_sigio(pid, fd)
                                .map_err(Cause::Refused)
                                .step(step)?,
                        )
                    } else {
                        None
                    };
                    self.files.push(OpenFile { flags, kind, sigio });
                    self.owner.push((pid, fd, link));
                    let id = self.files.len() - 1;
                    let socket = conv::fit(id, "u32", "open file index").step(step)?;
                    if matches!(
                        self.files[id].kind,
                        FileKind::Unix(_)
                            | FileKind::Inet(_)
                            | FileKind::TcpConnection(_)
                            | FileKind::Netlink(_)
                            | FileKind::Packet(_)
                    ) {
                        let opts = crate::engine::files::socket_options(pid, fd)
                            .map_err(|e| {
                                Cause::Unsupported(format!(
                                    "fd {fd} of process {pid} is a socket whose options torpor cannot keep: {e}"
                                ))
                            })
                            .step(step)?;
                        if !opts.is_empty() {
                            self.sock_opts.insert(socket, opts);
                        }
                    }
                    let clients = self.inflight.take_waiting();
                    if !clients.is_empty() {
                        self.waiting.push((socket, pid, fd, clients));
                    }
                    for by in self.inflight.take_creds() {
                        self.msg_creds
                            .push((socket, pid, format!("fd {fd} of process {pid}"), by));
                    }
                    for (message, fds) in self.inflight.take() {
                        self.passing.push(Passing {
                            socket,
                            pid,
                            message,
                            fds,
                            depth: 0,
                            who: format!("fd {fd} of process {pid}"),
                        });
                    }
                    id
                }
            };
            out.push(Fd {
                fd,
                file: conv::fit(id, "u32", "open file index").step(step)?,
                cloexec,
            });
        }
        Ok(out)
    }

    /// The open file already collected that fd `fd` of `pid`, whose /proc
    /// link is `link`, is a descriptor of (same link, and the same
    /// description by `kcmp`).
    fn seen(&self, pid: i32, fd: i32, link: &str) -> Result<Option<usize>, std::io::Error> {
        for (i, (opid, ofd, olink)) in self.owner.iter().enumerate() {
            if olink == link && kcmp_same_file(*opid, *ofd, pid, fd)? {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }

    /// The descriptors in flight in the trees' UNIX sockets, once every fd
    /// of the trees is known: each is matched to a description some process
    /// of the trees holds (compared with `kcmp`), or else collected from
    /// torpor's copy as a description only the queue holds (of a kind
    /// `image_io::kept_in_flight` names; a socket in flight with
    /// descriptors in its own queue, [`FLIGHT_DEPTH`] deep at most). The
    /// restore passes each again. A pidfd or file of /proc in flight is
    /// refused, naming the socket's fd.
    pub fn rights(&mut self) -> Result<Vec<crate::image::records::UnixRights>, EngineError> {
        let mut out = Vec::new();
        // Sockets in flight add theirs at the end, after their own message.
        let mut next = 0;
        while next < self.passing.len() {
            let p = &mut self.passing[next];
            next += 1;
            let (pid, socket, message, depth) = (p.pid, p.socket, p.message, p.depth);
            let who = p.who.clone();
            let fds = std::mem::take(&mut p.fds);
            let step = Step::Files(pid);
            let me: i32 = conv::fit(std::process::id(), "i32", "torpor's pid").step(step)?;
            let refuse = |link: &str, why: &str| {
                EngineError::new(
                    step,
                    Cause::Unsupported(format!(
                        "{who} is a UNIX socket with file descriptors in flight (SCM_RIGHTS): message {message} passes {link}, {why}"
                    )),
                )
            };
            let mut files = Vec::new();
            for fd in fds {
                let mine = fd.as_raw_fd();
                let link = procfs::readlink(&format!("/proc/self/fd/{mine}")).step(step)?;
                let late =
                    |kind: &FileKind| matches!(kind, FileKind::Pidfd(_) | FileKind::ProcFile(_));
                let i = match self.seen(me, mine, &link).step(step)? {
                    // Those are opened by their holder once the tree exists,
                    // after the queues are filled.
                    Some(i) if late(&self.files[i].kind) => {
                        return Err(refuse(
                            &link,
                            "a pidfd or file of /proc, which torpor does not keep in flight",
                        ));
                    }
                    Some(i) => i,
                    None if link == "anon_inode:[pidfd]" || link.starts_with("/proc/") => {
                        return Err(refuse(
                            &link,
                            "a pidfd or file of /proc, which torpor does not keep in flight",
                        ));
                    }
                    None => self
                        .in_flight((me, pid), fd, &link, depth, &who, message)
                        .map_err(|why| refuse(&link, &why))?,
                };
                let i: u32 = conv::fit(i, "u32", "open file index").step(step)?;
                files.push(u64::from(i));
            }
            out.push(crate::image::records::UnixRights {
                ofd: u64::from(socket),
                message,
                files,
            });
        }
        self.passing.clear();
        Ok(out)
    }

    /// The connections waiting on the trees' UNIX listeners, once every fd
    /// of the trees is known: each client must be a socket of the trees
    /// (or the listener is refused, naming it), which a restore connects
    /// again, in order, once the listener listens. The client's connection
    /// to the unaccepted socket is not a pair of the tree: its `peer` is
    /// cleared.
    pub fn waiting(&mut self) -> Result<Vec<crate::image::records::UnixWaiting>, EngineError> {
        let mut out = Vec::new();
        for (listener, pid, fd, inodes) in std::mem::take(&mut self.waiting) {
            let step = Step::Files(pid);
            let mut clients = Vec::new();
            for ino in inodes {
                let found = self.files.iter().position(
                    |f| matches!(&f.kind, FileKind::Unix(u) if u.inode == ino && !u.listening),
                );
                let Some(i) = found else {
                    let name = match &self.files[listener as usize].kind {
                        FileKind::Unix(u) => crate::engine::files::unix_name(u.name.as_bytes()),
                        _ => String::new(),
                    };
                    return Err(EngineError::new(
                        step,
                        Cause::Unsupported(format!(
                            "fd {fd} of process {pid} is UNIX listener {name} with a connection waiting to be accepted from socket:[{ino}], which is outside the dumped tree"
                        )),
                    ));
                };
                if let FileKind::Unix(u) = &mut self.files[i].kind {
                    u.peer = 0;
                }
                let i: u32 = conv::fit(i, "u32", "open file index").step(step)?;
                clients.push(u64::from(i));
            }
            out.push(crate::image::records::UnixWaiting {
                ofd: u64::from(listener),
                clients,
            });
        }
        Ok(out)
    }

    /// The credentials of the queued messages of the trees' UNIX sockets:
    /// each names a sender the restore brings back with its pid, a process
    /// of `pids`. A message from a process outside the trees (exited since
    /// it sent it, or never of the tree) is refused, naming the socket and
    /// the message: a restore cannot send as a process it does not make,
    /// and naming another would tell the app a wrong sender.
    pub fn creds(
        &mut self,
        pids: &[i32],
    ) -> Result<Vec<crate::image::records::UnixCreds>, EngineError> {
        let mut out = Vec::new();
        for (socket, holder, who, by) in std::mem::take(&mut self.msg_creds) {
            if !pids.contains(&by.pid) {
                return Err(EngineError::new(
                    Step::Files(holder),
                    Cause::Unsupported(format!(
                        "{who} is a UNIX socket with messages queued with their senders' credentials (SCM_CREDENTIALS): message {} was sent by process {} (uid {}, gid {}), which is not in the dumped tree (it has exited or is outside it); torpor restores a message's credentials only from a process it restores",
                        by.message, by.pid, by.uid, by.gid
                    )),
                ));
            }
            out.push(crate::image::records::UnixCreds {
                ofd: u64::from(socket),
                message: by.message,
                pid: by.pid,
                uid: by.uid,
                gid: by.gid,
            });
        }
        Ok(out)
    }

    /// Collects the description torpor's copy `fd` (with /proc link `link`)
    /// is, which only message `message` of a socket `depth` deep in flight
    /// (`who`, first seen in process `pid`) holds: its index in the table.
    /// The error says why it is not kept.
    fn in_flight(
        &mut self,
        (me, pid): (i32, i32),
        fd: OwnedFd,
        link: &str,
        depth: u8,
        who: &str,
        message: u32,
    ) -> Result<usize, String> {
        let raw = fd.as_raw_fd();
        let info_path = format!("/proc/self/fdinfo/{raw}");
        let info_text = procfs::read(&info_path).map_err(|e| e.to_string())?;
        let info = procfs::parse_fdinfo(&info_path, &info_text).map_err(|e| e.to_string())?;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let mut kind = self.kind_of(me, raw, link, flags, info.pos).map_err(|e| {
            format!("which no process of the tree holds and torpor cannot keep: {e}")
        })?;
        if let FileKind::Unix(u) = &mut kind {
            // Bound by a relative path: it meant the cwd of the process
            // whose socket's queue holds it, not torpor's.
            let name = u.name.as_bytes();
            if name.first().is_some_and(|&b| b != 0 && b != b'/') {
                use std::os::unix::ffi::OsStrExt;
                let cwd =
                    std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| e.to_string())?;
                let mut abs = cwd.as_os_str().as_bytes().to_vec();
                abs.push(b'/');
                abs.extend_from_slice(name);
                u.bind_path = crate::image::records::RawPath(abs);
            }
        }
        let nested = self.inflight.take();
        let creds = self.inflight.take_creds();
        if !self.inflight.take_waiting().is_empty() {
            return Err(
                "a UNIX listener with connections waiting to be accepted, which torpor does not keep in flight"
                    .into(),
            );
        }
        if !crate::engine::image_io::kept_in_flight(&kind) {
            return Err(format!(
                "{}, which no process of the tree holds; torpor keeps such a file in flight only when the tree holds it too",
                kind.name()
            ));
        }
        if !nested.is_empty() && depth >= FLIGHT_DEPTH {
            return Err(format!(
                "a UNIX socket in flight {} deep with file descriptors in flight in its own queue; torpor keeps such sockets {FLIGHT_DEPTH} deep at most",
                depth + 1
            ));
        }
        let id = self.files.len();
        let file: u32 = conv::fit(id, "u32", "open file index").map_err(|e| e.to_string())?;
        if matches!(kind, FileKind::Unix(_) | FileKind::Inet(_)) {
            let opts = crate::engine::files::socket_options(me, raw)
                .map_err(|e| format!("a socket whose options torpor cannot keep: {e}"))?;
            if !opts.is_empty() {
                self.sock_opts.insert(file, opts);
            }
        }
        let inode = match &kind {
            FileKind::Unix(u) => u.inode,
            _ => 0,
        };
        self.files.push(OpenFile {
            flags,
            kind,
            sigio: None,
        });
        self.owner.push((me, raw, link.to_string()));
        for by in creds {
            self.msg_creds.push((
                file,
                pid,
                format!("socket:[{inode}] (in flight in message {message} of {who})"),
                by,
            ));
        }
        for (m, fds) in nested {
            self.passing.push(Passing {
                socket: file,
                pid,
                message: m,
                fds,
                depth: depth + 1,
                who: format!("socket:[{inode}] (in flight in message {message} of {who})"),
            });
        }
        self.flight.push((file, fd));
        Ok(id)
    }

    fn kind_of(
        &mut self,
        pid: i32,
        fd: i32,
        link: &str,
        flags: u32,
        pos: u64,
    ) -> Result<FileKind, Cause> {
        let unsupported =
            |what: &str| Cause::Unsupported(format!("fd {fd} of process {pid} is {what} ({link})"));
        if let Some(ino) = link
            .strip_prefix("pipe:[")
            .and_then(|s| s.strip_suffix(']'))
        {
            let ino: u64 = ino
                .parse()
                .map_err(|_| unsupported("a pipe with an unreadable inode"))?;
            let write = flags & (libc::O_ACCMODE as u32) == libc::O_WRONLY as u32;
            let pipe = self.pipe_of(pid, fd, ino)?;
            let e = self
                .pipe_ends
                .entry(pipe)
                .or_insert((false, false, pid, fd));
            if write {
                e.1 = true;
            } else {
                e.0 = true;
            }
            return Ok(FileKind::Pipe(PipeFile {
                pipe,
                write,
                fifo: None,
            }));
        }
        // The connection to the daemon is checked first: it is a UNIX socket
        // too, but one that is reconnected rather than rebuilt.
        if let Some(ino) = self.torpor_conn {
            if link == format!("socket:[{ino}]") {
                return Ok(FileKind::TorporConn(TorporConnFile));
            }
        }
        if let Some(a) =
            crate::engine::files::collect(pid, fd, link, self.tcp.as_ref(), Some(&self.inflight))?
        {
            return Ok(a);
        }
        if !link.starts_with('/') {
            let what = if link.starts_with("socket:") {
                "a socket"
            } else if link.starts_with("anon_inode:") {
                "an anonymous-inode file"
            } else {
                "a kind of file torpor cannot restore"
            };
            return Err(unsupported(what));
        }
        if let Some(pf) = crate::engine::files::proc_file(pid, fd, link, pos)? {
            return Ok(FileKind::ProcFile(pf));
        }
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))?;
        if link.ends_with(" (deleted)") {
            if !md.file_type().is_file() {
                return Err(unsupported("a deleted file that is not a regular file"));
            }
            // The contents are streamed into the image later, while the
            // tree is still frozen (files::write_objects).
            return Ok(FileKind::UnlinkedFile(UnlinkedRef {
                pos,
                inode: md.ino(),
            }));
        }
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        if ft.is_file() || ft.is_dir() {
            let identity = FileIdentity {
                dev: md.dev(),
                inode: md.ino(),
                size: md.size(),
                mtime_sec: md.mtime(),
                mtime_nsec: md.mtime_nsec(),
            };
            Ok(FileKind::Path(PathFile {
                path: link.to_string(),
                pos,
                dir: ft.is_dir(),
                identity,
            }))
        } else if ft.is_char_device() {
            let rdev = md.rdev();
            let major = u64::from(libc::major(rdev));
            Ok(FileKind::Device(DeviceFile {
                path: link.to_string(),
                rdev,
                tty: is_tty_major(major),
            }))
        } else if ft.is_fifo() {
            let write = flags & (libc::O_ACCMODE as u32) == libc::O_WRONLY as u32;
            let pipe = self.pipe_of(pid, fd, md.ino())?;
            Ok(FileKind::Pipe(PipeFile {
                pipe,
                write,
                fifo: Some(link.to_string()),
            }))
        } else if ft.is_symlink() {
            Err(unsupported(
                "an O_PATH descriptor of a symbolic link itself",
            ))
        } else if ft.is_block_device() {
            Err(unsupported("a block device"))
        } else {
            Err(unsupported("a socket file opened by path"))
        }
    }

    /// The index of the pipe with this inode, reading its unread bytes the
    /// first time it is seen.
    fn pipe_of(&mut self, pid: i32, fd: i32, ino: u64) -> Result<u32, Cause> {
        if let Some(&i) = self.pipe_index.get(&ino) {
            return Ok(i);
        }
        let st = read_pipe(pid, fd, ino)?;
        self.pipes.push(st);
        let i = conv::fit(self.pipes.len() - 1, "u32", "pipe index")?;
        self.pipe_index.insert(ino, i);
        Ok(i)
    }

    /// Marks the pipes whose other end a process outside the tree holds:
    /// the restore substitutes that end. An end closed everywhere needs
    /// nothing: a reader sees EOF after the data, a writer EPIPE, before the
    /// dump and after the restore alike. (Named FIFOs are reopened by name.)
    pub fn mark_external_pipes(&mut self) -> Result<(), EngineError> {
        for (pipe, (r, w, pid, fd)) in &self.pipe_ends {
            if *r && *w {
                continue;
            }
            let step = Step::Files(*pid);
            let outside = if *r {
                has_writers(*pid, *fd)
            } else {
                has_readers(*pid, *fd)
            }
            .step(step)?;
            if !outside {
                continue;
            }
            self.pipes[*pipe as usize].outside =
                Some(if *r { PipeEnd::Write } else { PipeEnd::Read });
        }
        Ok(())
    }
}

fn open_proc_fd(pid: i32, fd: i32, flags: i32) -> Result<Result<OwnedFd, std::io::Error>, Cause> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|_| Cause::Refused("fd path with NUL".into()))?;
    // SAFETY: open with a valid C string; the result is checked.
    let raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if raw < 0 {
        return Ok(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd we own.
    Ok(Ok(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Whether anyone (inside the tree or not) holds the write end of the pipe
/// whose read end is `fd` of `pid`: without writers a pipe polls as hung up.
fn has_writers(pid: i32, fd: i32) -> Result<bool, Cause> {
    let rd = open_proc_fd(pid, fd, libc::O_RDONLY | libc::O_NONBLOCK)??;
    let mut p = libc::pollfd {
        fd: rd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    if unsafe { libc::poll(&raw mut p, 1, 0) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(p.revents & libc::POLLHUP == 0)
}

/// Whether anyone holds the read end of the pipe whose write end is `fd` of
/// `pid`: opening it for writing without blocking fails (ENXIO) when no
/// reader exists.
fn has_readers(pid: i32, fd: i32) -> Result<bool, Cause> {
    match open_proc_fd(pid, fd, libc::O_WRONLY | libc::O_NONBLOCK)? {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The unread bytes of a pipe, copied with tee(2) so the pipe keeps them.
fn read_pipe(pid: i32, fd: i32, inode: u64) -> Result<PipeState, Cause> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|_| Cause::Refused("fd path with NUL".into()))?;
    // SAFETY: open with a valid C string; the result is checked.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `raw` is a fresh fd we own.
    let src = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fcntl on an fd we own.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    let mut avail: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(src.as_raw_fd(), libc::FIONREAD, &raw mut avail) } < 0 || size < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut data = Vec::new();
    if avail > 0 {
        let mut p = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: both fds are fresh and ours.
        let (pr, pw) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        // A smaller copy would hold fewer bytes than the pipe: tee would
        // come up short.
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(pw.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < size {
            return Err(std::io::Error::last_os_error().into());
        }
        let want: usize = conv::fit(avail, "usize", "unread pipe bytes")?;
        // SAFETY: tee between two pipe fds we hold.
        let n = unsafe {
            libc::tee(
                src.as_raw_fd(),
                pw.as_raw_fd(),
                want,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // tee copies from the head of the pipe without consuming it: another
        // call would copy the same bytes again, so a short copy is an error.
        if n.bits() != want {
            return Err(Cause::Refused(format!(
                "pipe {inode}: tee copied {n} of its {want} unread bytes"
            )));
        }
        data.resize(n.bits(), 0);
        let mut got = 0;
        while got < data.len() {
            // SAFETY: reading into the unfilled part of `data`.
            let k = unsafe {
                libc::read(
                    pr.as_raw_fd(),
                    data[got..].as_mut_ptr().cast(),
                    data.len() - got,
                )
            };
            if k <= 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            got += k.bits();
        }
    }
    Ok(PipeState {
        inode,
        size: size.bits(),
        data,
        outside: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_timer_from_the_kernel_is_refused_not_disarmed() {
        let e = itimer_ns(-1, 0).expect_err("negative timer").to_string();
        assert!(
            e.contains("interval timer nanoseconds -1000000000 does not fit u64"),
            "{e}"
        );
        assert_eq!(itimer_ns(2, 5).expect("fits"), 2_000_005_000);
        let e = ns(POSIX_NS, 0, -1)
            .expect_err("negative posix timer")
            .to_string();
        assert!(
            e.contains("posix timer nanoseconds -1 does not fit u64"),
            "{e}"
        );
    }

    fn filter(n: u8) -> SeccompFilter {
        SeccompFilter {
            flags: 0,
            program: vec![n; 8],
        }
    }

    fn own(tid: i32, n: u8) -> ThreadSeccomp {
        ThreadSeccomp {
            tid,
            own: OwnSeccomp::Filter(filter(n)),
        }
    }

    #[test]
    fn threads_under_one_chain_share_it_and_have_nothing_of_their_own() {
        let chain = Chain::Filters(vec![filter(1), filter(2)]);
        let (shared, threads) = split_seccomp(vec![(10, chain.clone()), (11, chain)]);
        assert_eq!(shared, [filter(1), filter(2)]);
        assert_eq!(threads, []);
        let (shared, threads) = split_seccomp(vec![(10, Chain::Filters(Vec::new()))]);
        assert_eq!(shared, []);
        assert_eq!(threads, []);
    }

    #[test]
    fn the_longest_common_prefix_is_shared_and_the_rest_is_each_thread_s() {
        let (shared, threads) = split_seccomp(vec![
            (10, Chain::Filters(vec![filter(1), filter(2)])),
            (
                11,
                Chain::Filters(vec![filter(1), filter(2), filter(3), filter(4)]),
            ),
            (12, Chain::Filters(vec![filter(1), filter(5)])),
        ]);
        assert_eq!(shared, [filter(1)]);
        assert_eq!(
            threads,
            [own(10, 2), own(11, 2), own(11, 3), own(11, 4), own(12, 5)]
        );
        // A thread without filters shares nothing with the others.
        let (shared, threads) = split_seccomp(vec![
            (10, Chain::Filters(Vec::new())),
            (11, Chain::Filters(vec![filter(1)])),
        ]);
        assert_eq!(shared, []);
        assert_eq!(threads, [own(11, 1)]);
    }

    #[test]
    fn a_strict_thread_leaves_every_filter_to_its_thread() {
        let (shared, threads) = split_seccomp(vec![
            (10, Chain::Filters(vec![filter(1)])),
            (11, Chain::Strict),
            (12, Chain::Filters(vec![filter(1)])),
        ]);
        assert_eq!(shared, []);
        assert_eq!(
            threads,
            [
                own(10, 1),
                ThreadSeccomp {
                    tid: 11,
                    own: OwnSeccomp::Strict
                },
                own(12, 1)
            ]
        );
    }
}

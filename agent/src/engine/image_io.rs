//! Between the engine's state and the image records (`crate::image`): the
//! encode step of a dump and the decode step of a restore.
//!
//! ```text
//!  Header
//!  Clocks                       the tree's clocks at the freeze
//!  (PipeData ExternalPipe?)*    every pipe's unread bytes, by pipe id,
//!                               and which end is outside the tree
//!  TmpfsFile*                   shared tmpfs files, by chunk
//!  (MemfdObject | SysvShm | UnlinkedObject) ObjectData*
//!                               each memfd, SysV segment and unlinked
//!                               file, then its contents
//!  Task MmFields Thread* Vma* Fd* Pages*     per process, parents first
//!  Trailer
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use crate::arch::Bits;
use crate::engine::conv;
use crate::engine::state::{
    AltStack, Backing, Creds, Fd, FileIdentity, FileKind, Itimer, MmFields, OpenFile, OutsideEnd,
    PipeState, PosixTimer, ProcessState, Rseq, SigAction, ThreadState, Vma,
};
pub use crate::engine::state::{ImageState, PageRun};
use crate::image::records::{
    AltStack as RAlt, Creds as RCreds, ExternalPipe, Fd as RFd, FdKind, FileId, ITimer, ITimers,
    MmFields as RMm, ObjectData, ObjectRef, PipeData, PipeEnd, PosixTimer as RTimer, RawPath,
    Regs as RRegs, Rlimit, RobustList, Rseq as RRseq, SigAction as RSig, SigInfo, Task, Thread,
    Vma as RVma, VmaKind,
};
use crate::image::{Arch, ImageError, ImageReader, ImageWriter, Kind};

fn path_of(p: &RawPath) -> String {
    String::from_utf8_lossy(p.as_bytes()).into_owned()
}

fn mtime_ns(id: &FileIdentity) -> i64 {
    id.mtime_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(id.mtime_nsec)
}

fn file_id(path: &str, id: &FileIdentity) -> FileId {
    FileId {
        path: path.into(),
        dev: id.dev,
        inode: id.inode,
        size: id.size,
        mtime_ns: mtime_ns(id),
    }
}

fn identity_of(f: &FileId) -> FileIdentity {
    FileIdentity {
        dev: f.dev,
        inode: f.inode,
        size: f.size,
        mtime_sec: f.mtime_ns.div_euclid(1_000_000_000),
        mtime_nsec: f.mtime_ns.rem_euclid(1_000_000_000),
    }
}

fn siginfo(raw: &[u8]) -> SigInfo {
    let word = |o: usize| i32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
    SigInfo {
        signo: word(0),
        errno: word(4),
        code: word(8),
        raw: raw.to_vec(),
    }
}

fn itimer_ns(t: &Itimer) -> Result<ITimer, ImageError> {
    let ns = |s: i64, us: i64| {
        conv::fit(
            s.saturating_mul(1_000_000_000)
                .saturating_add(us.saturating_mul(1000)),
            "u64",
            "interval timer nanoseconds",
        )
        .map_err(|e| ImageError::Host {
            what: "a timer the kernel reported",
            source: e.into(),
        })
    };
    Ok(ITimer {
        interval_ns: ns(t.interval_sec, t.interval_usec)?,
        value_ns: ns(t.value_sec, t.value_usec)?,
    })
}

fn itimer_of(t: &ITimer) -> Itimer {
    let split = |ns: u64| {
        // u64::MAX / 10^9 and anything below 10^6 fit i64: no fallback is
        // ever taken.
        let s = i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX);
        let us = i64::try_from(ns % 1_000_000_000 / 1000).unwrap_or(0);
        (s, us)
    };
    let (is, iu) = split(t.interval_ns);
    let (vs, vu) = split(t.value_ns);
    Itimer {
        interval_sec: is,
        interval_usec: iu,
        value_sec: vs,
        value_usec: vu,
    }
}

fn ts_ns((s, ns): (i64, i64)) -> Result<u64, ImageError> {
    conv::fit(
        s.saturating_mul(1_000_000_000).saturating_add(ns),
        "u64",
        "posix timer nanoseconds",
    )
    .map_err(|e| ImageError::Host {
        what: "a timer the kernel reported",
        source: e.into(),
    })
}

fn ns_ts(ns: u64) -> (i64, i64) {
    // u64::MAX / 10^9 and anything below 10^9 fit i64: no fallback is ever
    // taken.
    (
        i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
        i64::try_from(ns % 1_000_000_000).unwrap_or(0),
    )
}

/// `/proc/PID/auxv` as native words, widened.
fn auxv_words(raw: &[u8]) -> Vec<u64> {
    let w = core::mem::size_of::<usize>();
    raw.chunks_exact(w)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

fn auxv_bytes(words: &[u64]) -> Vec<u8> {
    let w = core::mem::size_of::<usize>();
    words
        .iter()
        .flat_map(|v| v.to_le_bytes()[..w].to_vec())
        .collect()
}

fn vma_kind(v: &Vma) -> VmaKind {
    match &v.backing {
        Backing::Special(n) => match n.as_str() {
            "[vdso]" => VmaKind::Vdso,
            "[vvar]" => VmaKind::Vvar,
            "[vvar_vclock]" => VmaKind::VvarVclock,
            "[sigpage]" => VmaKind::Sigpage,
            _ => VmaKind::Vectors,
        },
        Backing::Shm { .. } => VmaKind::SharedAnon,
        Backing::Anon if v.name == "[stack]" => VmaKind::Stack,
        Backing::Anon if v.name == "[heap]" => VmaKind::Heap,
        Backing::Anon => VmaKind::Anon,
        Backing::File { .. } if v.shared => VmaKind::SharedFile,
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

/// Writes the non-memory records of the tree; pages follow per process
/// through [`write_process`].
pub fn write_pipes<W: Write>(
    w: &mut ImageWriter<W>,
    pipes: &[PipeState],
) -> Result<(), ImageError> {
    for (i, p) in pipes.iter().enumerate() {
        w.write(&PipeData {
            id: i as u64,
            capacity: p.size,
            bytes: p.data.clone(),
        })?;
        if let Some(end) = p.outside {
            let outside = match end {
                OutsideEnd::Read => PipeEnd::Read,
                OutsideEnd::Write => PipeEnd::Write,
            };
            w.write(&ExternalPipe {
                id: i as u64,
                inode: p.inode,
                outside,
            })?;
        }
    }
    Ok(())
}

/// Writes one process's Task, MmFields, Thread, Vma and Fd records.
pub fn write_process<W: Write>(
    w: &mut ImageWriter<W>,
    p: &ProcessState,
    files: &[OpenFile],
) -> Result<(), ImageError> {
    let task = Task {
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        comm: p
            .threads
            .first()
            .map(|t| t.comm.clone())
            .unwrap_or_default(),
        creds: RCreds {
            uid: p.creds.uids[0],
            euid: p.creds.uids[1],
            suid: p.creds.uids[2],
            fsuid: p.creds.uids[3],
            gid: p.creds.gids[0],
            egid: p.creds.gids[1],
            sgid: p.creds.gids[2],
            fsgid: p.creds.gids[3],
            groups: p.creds.groups.clone(),
            cap_inheritable: p.creds.caps[0],
            cap_permitted: p.creds.caps[1],
            cap_effective: p.creds.caps[2],
            cap_bounding: p.creds.caps[3],
            cap_ambient: p.creds.caps[4],
            securebits: 0,
            no_new_privs: p.creds.no_new_privs,
        },
        umask: p.umask,
        cwd: p.cwd.as_str().into(),
        root: p.root.as_str().into(),
        exe: p.exe.as_str().into(),
        rlimits: p
            .rlimits
            .iter()
            .enumerate()
            .map(|(i, (cur, max))| Rlimit {
                // An index into the fixed table of RLIM_NLIMITS entries.
                resource: u32::try_from(i).unwrap_or(u32::MAX),
                cur: *cur,
                max: *max,
            })
            .collect(),
        sigactions: p
            .sigactions
            .iter()
            .enumerate()
            .map(|(i, s)| RSig {
                // An index into the fixed table of the 64 signals.
                signo: u32::try_from(i + 1).unwrap_or(0),
                handler: s.handler,
                flags: s.flags,
                restorer: s.restorer,
                mask: s.mask,
            })
            .collect(),
        sigmask: p.threads.first().map(|t| t.sigmask).unwrap_or(0),
        pending: p.shared_pending.iter().map(|r| siginfo(r)).collect(),
        itimers: ITimers {
            real: p
                .itimers
                .first()
                .map(itimer_ns)
                .transpose()?
                .unwrap_or_default(),
            virt: p
                .itimers
                .get(1)
                .map(itimer_ns)
                .transpose()?
                .unwrap_or_default(),
            prof: p
                .itimers
                .get(2)
                .map(itimer_ns)
                .transpose()?
                .unwrap_or_default(),
        },
        personality: p.personality,
        posix_timers: p
            .posix_timers
            .iter()
            .map(|t| {
                Ok(RTimer {
                    id: t.id,
                    clock: t.clock,
                    notify: t.notify,
                    tid: t.tid,
                    signo: t.signo,
                    value: t.value,
                    interval_ns: ts_ns(t.interval)?,
                    value_ns: ts_ns(t.left)?,
                })
            })
            .collect::<Result<_, ImageError>>()?,
        exit_status: p.zombie,
        ctty: p.ctty,
        locks: p.locks.clone(),
        stopped: p.stopped,
    };
    w.write(&task)?;
    if p.zombie.is_some() {
        return Ok(());
    }
    let m = &p.mm;
    w.write(&RMm {
        start_code: m.start_code,
        end_code: m.end_code,
        start_data: m.start_data,
        end_data: m.end_data,
        start_brk: m.start_brk,
        brk: m.brk,
        start_stack: m.start_stack,
        arg_start: m.arg_start,
        arg_end: m.arg_end,
        env_start: m.env_start,
        env_end: m.env_end,
        auxv: auxv_words(&p.auxv),
    })?;
    for t in &p.threads {
        w.write(&Thread {
            tid: t.tid,
            regs: RRegs {
                arch: Arch::host(),
                gpr: t.regs.clone(),
                fpu: t.fpregs.clone(),
            },
            tls: t.tls,
            sigmask: t.sigmask,
            altstack: RAlt {
                sp: t.altstack.sp,
                flags: t.altstack.flags.bits(),
                size: t.altstack.size,
            },
            pending: t.pending.iter().map(|r| siginfo(r)).collect(),
            tid_address: t.tid_address,
            robust_list: RobustList {
                head: t.robust_head,
                len: t.robust_len,
            },
            comm: t.comm.clone(),
            rseq: t.rseq.map(|r| RRseq {
                addr: r.addr,
                len: r.len,
                sig: r.sig,
            }),
        })?;
    }
    for v in &p.vmas {
        let mut flags = if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        if v.grows_down {
            flags |= libc::MAP_GROWSDOWN;
        }
        if v.noreserve {
            flags |= libc::MAP_NORESERVE;
        }
        let (offset, file) = match &v.backing {
            Backing::File {
                path,
                offset,
                identity,
            } => (*offset, Some(file_id(path, identity))),
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
                    path: v.name.as_str().into(),
                    inode: *id,
                    ..Default::default()
                }),
            ),
            Backing::Sysv { shmid, offset, .. } => (
                *offset,
                Some(FileId {
                    path: v.name.as_str().into(),
                    inode: u64::from(shmid.unsigned_abs()),
                    ..Default::default()
                }),
            ),
            Backing::Unlinked { inode, offset, .. } => (
                *offset,
                Some(FileId {
                    path: v.name.as_str().into(),
                    inode: *inode,
                    ..Default::default()
                }),
            ),
            _ => (0, None),
        };
        w.write(&RVma {
            start: v.start,
            end: v.end,
            prot: v.prot.bits(),
            flags: flags.bits(),
            offset,
            kind: vma_kind(v),
            file,
        })?;
    }
    for f in &p.fds {
        let of = &files[f.file as usize];
        let kind = match &of.kind {
            FileKind::Path {
                path, dir: true, ..
            } => FdKind::Directory {
                path: path.as_str().into(),
                flags: of.flags,
            },
            FileKind::Path {
                path,
                pos,
                identity,
                ..
            } => FdKind::Regular {
                file: file_id(path, identity),
                flags: of.flags,
                offset: *pos,
            },
            FileKind::Device {
                path,
                rdev,
                tty: true,
            } => FdKind::Tty {
                path: path.as_str().into(),
                rdev: *rdev,
                flags: of.flags,
            },
            FileKind::Device {
                path,
                rdev,
                tty: false,
            } => FdKind::Device {
                path: path.as_str().into(),
                rdev: *rdev,
                flags: of.flags,
            },
            FileKind::External { key } => FdKind::External {
                key: key.clone(),
                flags: of.flags,
            },
            FileKind::UnlinkedFile { pos, inode } => FdKind::UnlinkedFile {
                flags: of.flags,
                offset: *pos,
                inode: *inode,
            },
            FileKind::Unlinked { path, pos, data } => FdKind::Unlinked {
                path: path.as_str().into(),
                flags: of.flags,
                offset: *pos,
                bytes: data.clone(),
            },
            FileKind::Pipe {
                pipe,
                write,
                fifo: None,
            } => FdKind::Pipe {
                id: u64::from(*pipe),
                end: if *write {
                    PipeEnd::Write
                } else {
                    PipeEnd::Read
                },
                flags: of.flags,
            },
            FileKind::Pipe {
                pipe,
                write,
                fifo: Some(path),
            } => FdKind::Fifo {
                path: path.as_str().into(),
                id: u64::from(*pipe),
                end: if *write {
                    PipeEnd::Write
                } else {
                    PipeEnd::Read
                },
                flags: of.flags,
            },
            FileKind::Anon(a) => a.record(of.flags),
            FileKind::TorporConn => FdKind::TorporConn { flags: of.flags },
        };
        w.write(&RFd {
            fd: f.fd,
            fd_flags: u32::from(f.cloexec),
            ofd: u64::from(f.file),
            kind,
        })?;
        if let Some(sigio) = of.sigio {
            w.write(&crate::image::records::FileSigIo {
                ofd: u64::from(f.file),
                sigio,
            })?;
        }
    }
    for f in &p.seccomp {
        w.write(f)?;
    }
    for o in &p.owners {
        w.write(o)?;
    }
    Ok(())
}

/// A record out of place or naming something absent.
fn malformed(what: String) -> ImageError {
    ImageError::Host {
        what: "image contents",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    }
}

/// Reads every record (checking every CRC and the trailer) and returns the
/// state without page contents.
pub fn read_state<R: Read>(r: R) -> Result<ImageState, ImageError> {
    read_state_from(ImageReader::new(r)?)
}

/// [`read_state`] through a reader already opened, which may step over the
/// page records ([`ImageReader::skipping_pages`]): the state then holds no
/// page runs, and the pages are checked as a restore streams them.
pub fn read_state_from<R: Read>(mut rd: ImageReader<R>) -> Result<ImageState, ImageError> {
    let mut st = ImageState {
        page_size: u64::from(rd.header().page_size),
        ..ImageState::default()
    };
    let mut ofds: BTreeMap<u64, u32> = BTreeMap::new();
    let mut pipes: BTreeMap<u64, (u32, Vec<u8>)> = BTreeMap::new();
    let mut external: BTreeMap<u64, (u64, OutsideEnd)> = BTreeMap::new();
    while let Some(rec) = rd.next_record()? {
        let cur = st.processes.last_mut();
        match rec.kind() {
            Kind::TmpfsFile => st.tmpfs_files.push(rec.decode()?),
            Kind::ExternalPipe => {
                let e: ExternalPipe = rec.decode()?;
                let end = match e.outside {
                    PipeEnd::Read => OutsideEnd::Read,
                    PipeEnd::Write => OutsideEnd::Write,
                };
                external.insert(e.id, (e.inode, end));
            }
            Kind::MemfdObject => st.memfds.push(rec.decode()?),
            Kind::SysvShm => st.sysv.push(rec.decode()?),
            Kind::UnlinkedObject => st.unlinked.push(rec.decode()?),
            // Contents stream into the objects during the restore; here
            // only where they go is checked.
            Kind::ObjectData => {
                let d: ObjectData = rec.decode()?;
                let end = d.offset.checked_add(d.bytes.len() as u64);
                let size = match d.object {
                    ObjectRef::Memfd(id) => st.memfds.iter().find(|o| o.id == id).map(|o| o.size),
                    ObjectRef::Sysv(id) => st.sysv.iter().find(|o| o.shmid == id).map(|o| o.size),
                    ObjectRef::Unlinked(inode) => st
                        .unlinked
                        .iter()
                        .find(|o| o.inode == inode)
                        .map(|o| o.size),
                }
                .ok_or_else(|| {
                    malformed(format!("contents of {:?} before its record", d.object))
                })?;
                if end.is_none_or(|e| e > size) {
                    return Err(malformed(format!(
                        "{} bytes at {} overflow {:?} of {size} bytes",
                        d.bytes.len(),
                        d.offset,
                        d.object
                    )));
                }
            }
            Kind::FileSigIo => {
                let r: crate::image::records::FileSigIo = rec.decode()?;
                let i = ofds.get(&r.ofd).ok_or_else(|| {
                    malformed(format!(
                        "a file-sigio record names description {}, which no fd has",
                        r.ofd
                    ))
                })?;
                st.files[*i as usize].sigio = Some(r.sigio);
            }
            Kind::FileOwner => {
                let o: crate::image::records::FileOwner = rec.decode()?;
                let path = path_of(&o.path);
                match st.owners.get(&path) {
                    Some(had) if *had != o => {
                        return Err(malformed(format!(
                            "two file-owner records of {path} disagree"
                        )));
                    }
                    _ => {
                        st.owners.insert(path, o);
                    }
                }
            }
            Kind::RequestedBy => {
                if st.requested_by.is_some() {
                    return Err(malformed("a second requested-by record".into()));
                }
                st.requested_by = Some(rec.decode()?);
            }
            Kind::Clocks => {
                if st.clocks.is_some() {
                    return Err(malformed("a second clocks record".into()));
                }
                st.clocks = Some(rec.decode()?);
            }
            Kind::PipeData => {
                let d: PipeData = rec.decode()?;
                pipes.insert(d.id, (d.capacity, d.bytes));
            }
            Kind::Task => {
                let t: Task = rec.decode()?;
                let mut rl: Vec<(u64, u64)> = Vec::new();
                for l in &t.rlimits {
                    let i = l.resource as usize;
                    if i >= 64 {
                        return Err(malformed(format!("rlimit {} out of range", l.resource)));
                    }
                    if rl.len() <= i {
                        rl.resize(i + 1, (u64::MAX, u64::MAX));
                    }
                    rl[i] = (l.cur, l.max);
                }
                let mut sigactions = vec![SigAction::default(); 64];
                for s in &t.sigactions {
                    let i = s.signo as usize;
                    if !(1..=64).contains(&i) {
                        return Err(malformed(format!("sigaction for signal {}", s.signo)));
                    }
                    sigactions[i - 1] = SigAction {
                        handler: s.handler,
                        flags: s.flags,
                        restorer: s.restorer,
                        mask: s.mask,
                    };
                }
                st.processes.push(ProcessState {
                    pid: t.pid,
                    ppid: t.ppid,
                    pgid: t.pgid,
                    sid: t.sid,
                    sigactions,
                    shared_pending: t.pending.iter().map(|s| s.raw.clone()).collect(),
                    itimers: vec![
                        itimer_of(&t.itimers.real),
                        itimer_of(&t.itimers.virt),
                        itimer_of(&t.itimers.prof),
                    ],
                    exe: path_of(&t.exe),
                    cwd: path_of(&t.cwd),
                    root: path_of(&t.root),
                    umask: t.umask,
                    personality: t.personality,
                    rlimits: rl,
                    zombie: t.exit_status,
                    ctty: t.ctty,
                    locks: t.locks.clone(),
                    stopped: t.stopped,
                    posix_timers: t
                        .posix_timers
                        .iter()
                        .map(|x| PosixTimer {
                            id: x.id,
                            clock: x.clock,
                            notify: x.notify,
                            tid: x.tid,
                            signo: x.signo,
                            value: x.value,
                            interval: ns_ts(x.interval_ns),
                            left: ns_ts(x.value_ns),
                        })
                        .collect(),
                    creds: Creds {
                        uids: [t.creds.uid, t.creds.euid, t.creds.suid, t.creds.fsuid],
                        gids: [t.creds.gid, t.creds.egid, t.creds.sgid, t.creds.fsgid],
                        groups: t.creds.groups.clone(),
                        caps: [
                            t.creds.cap_inheritable,
                            t.creds.cap_permitted,
                            t.creds.cap_effective,
                            t.creds.cap_bounding,
                            t.creds.cap_ambient,
                        ],
                        no_new_privs: t.creds.no_new_privs,
                    },
                    ..Default::default()
                });
            }
            Kind::MmFields
            | Kind::Thread
            | Kind::Vma
            | Kind::Fd
            | Kind::SeccompFilter
            | Kind::Pages => {
                let p = cur
                    .ok_or_else(|| malformed(format!("a {} record before any task", rec.kind())))?;
                match rec.kind() {
                    Kind::MmFields => {
                        let m: RMm = rec.decode()?;
                        p.mm = MmFields {
                            start_code: m.start_code,
                            end_code: m.end_code,
                            start_data: m.start_data,
                            end_data: m.end_data,
                            start_brk: m.start_brk,
                            brk: m.brk,
                            start_stack: m.start_stack,
                            arg_start: m.arg_start,
                            arg_end: m.arg_end,
                            env_start: m.env_start,
                            env_end: m.env_end,
                        };
                        p.auxv = auxv_bytes(&m.auxv);
                    }
                    Kind::Thread => {
                        let t: Thread = rec.decode()?;
                        if t.regs.arch != Arch::host() {
                            return Err(malformed(format!(
                                "thread {} has {} registers",
                                t.tid, t.regs.arch
                            )));
                        }
                        p.threads.push(ThreadState {
                            tid: t.tid,
                            comm: t.comm,
                            regs: t.regs.gpr,
                            fpregs: t.regs.fpu,
                            tls: t.tls,
                            sigmask: t.sigmask,
                            pending: t.pending.into_iter().map(|s| s.raw).collect(),
                            altstack: AltStack {
                                sp: t.altstack.sp,
                                flags: t.altstack.flags.bits(),
                                size: t.altstack.size,
                            },
                            tid_address: t.tid_address,
                            robust_head: t.robust_list.head,
                            robust_len: t.robust_list.len,
                            rseq: t.rseq.map(|r| Rseq {
                                addr: r.addr,
                                len: r.len,
                                sig: r.sig,
                            }),
                        });
                    }
                    Kind::SeccompFilter => p.seccomp.push(rec.decode()?),
                    Kind::Vma => {
                        let v: RVma = rec.decode()?;
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
                                .map(|f| path_of(&f.path))
                                .unwrap_or_default(),
                        };
                        let backing = match v.kind {
                            VmaKind::Vdso
                            | VmaKind::Vvar
                            | VmaKind::VvarVclock
                            | VmaKind::Sigpage
                            | VmaKind::Vectors => Backing::Special(name.clone()),
                            VmaKind::PrivateFile | VmaKind::SharedFile => {
                                let f = v.file.as_ref().ok_or_else(|| {
                                    malformed(format!(
                                        "file mapping at {:#x} names no file",
                                        v.start
                                    ))
                                })?;
                                Backing::File {
                                    path: path_of(&f.path),
                                    offset: v.offset,
                                    identity: identity_of(f),
                                }
                            }
                            VmaKind::SharedAnon => {
                                let f = v.file.as_ref().ok_or_else(|| {
                                    malformed(format!(
                                        "shared memory at {:#x} names no object",
                                        v.start
                                    ))
                                })?;
                                Backing::Shm {
                                    id: f.inode,
                                    offset: v.offset,
                                }
                            }
                            VmaKind::Anon | VmaKind::Stack | VmaKind::Heap => Backing::Anon,
                            VmaKind::Memfd { may_write } => {
                                let f = v.file.as_ref().ok_or_else(|| {
                                    malformed(format!(
                                        "memfd mapping at {:#x} names no memfd",
                                        v.start
                                    ))
                                })?;
                                Backing::Memfd {
                                    id: f.inode,
                                    offset: v.offset,
                                    may_write,
                                }
                            }
                            VmaKind::SysvShm { read_only } => {
                                let f = v.file.as_ref().ok_or_else(|| {
                                    malformed(format!(
                                        "SysV mapping at {:#x} names no segment",
                                        v.start
                                    ))
                                })?;
                                let shmid = i32::try_from(f.inode).map_err(|_| {
                                    malformed(format!("SysV segment id {}", f.inode))
                                })?;
                                Backing::Sysv {
                                    shmid,
                                    offset: v.offset,
                                    read_only,
                                }
                            }
                            VmaKind::Unlinked { may_write } => {
                                let f = v.file.as_ref().ok_or_else(|| {
                                    malformed(format!(
                                        "mapping at {:#x} names no unlinked file",
                                        v.start
                                    ))
                                })?;
                                Backing::Unlinked {
                                    inode: f.inode,
                                    offset: v.offset,
                                    may_write,
                                }
                            }
                        };
                        if v.start >= v.end {
                            return Err(malformed(format!("empty mapping at {:#x}", v.start)));
                        }
                        p.vmas.push(Vma {
                            start: v.start,
                            end: v.end,
                            prot: v.prot.bits(),
                            shared,
                            grows_down: v.flags & libc::MAP_GROWSDOWN.bits() != 0,
                            noreserve: v.flags & libc::MAP_NORESERVE.bits() != 0,
                            backing,
                            name,
                        });
                    }
                    Kind::Fd => {
                        let f: RFd = rec.decode()?;
                        let (flags, kind) = match f.kind {
                            FdKind::Regular {
                                file,
                                flags,
                                offset,
                            } => (
                                flags,
                                FileKind::Path {
                                    path: path_of(&file.path),
                                    pos: offset,
                                    dir: false,
                                    identity: identity_of(&file),
                                },
                            ),
                            FdKind::Directory { path, flags } => (
                                flags,
                                FileKind::Path {
                                    path: path_of(&path),
                                    pos: 0,
                                    dir: true,
                                    identity: FileIdentity::default(),
                                },
                            ),
                            FdKind::Device { path, rdev, flags } => (
                                flags,
                                FileKind::Device {
                                    path: path_of(&path),
                                    rdev,
                                    tty: false,
                                },
                            ),
                            FdKind::Tty { path, rdev, flags } => (
                                flags,
                                FileKind::Device {
                                    path: path_of(&path),
                                    rdev,
                                    tty: true,
                                },
                            ),
                            FdKind::Pipe { id, end, flags } => {
                                let pipe = u32::try_from(id)
                                    .map_err(|_| malformed(format!("pipe id {id}")))?;
                                (
                                    flags,
                                    FileKind::Pipe {
                                        pipe,
                                        write: end == PipeEnd::Write,
                                        fifo: None,
                                    },
                                )
                            }
                            FdKind::TorporConn { flags } => (flags, FileKind::TorporConn),
                            FdKind::External { key, flags } => (flags, FileKind::External { key }),
                            FdKind::Unlinked {
                                path,
                                flags,
                                offset,
                                bytes,
                            } => (
                                flags,
                                FileKind::Unlinked {
                                    path: path_of(&path),
                                    pos: offset,
                                    data: bytes,
                                },
                            ),
                            FdKind::UnlinkedFile {
                                flags,
                                offset,
                                inode,
                            } => (flags, FileKind::UnlinkedFile { pos: offset, inode }),
                            FdKind::Fifo {
                                path,
                                id,
                                end,
                                flags,
                            } => {
                                let pipe = u32::try_from(id)
                                    .map_err(|_| malformed(format!("pipe id {id}")))?;
                                let fifo = Some(path_of(&path));
                                (
                                    flags,
                                    FileKind::Pipe {
                                        pipe,
                                        write: end == PipeEnd::Write,
                                        fifo,
                                    },
                                )
                            }
                            other => {
                                let (flags, a) =
                                    crate::engine::state::AnonFile::from_record(&other)
                                        .ok_or_else(|| {
                                            malformed(format!("fd {} has an unknown kind", f.fd))
                                        })?;
                                (flags, FileKind::Anon(a))
                            }
                        };
                        let idx = match ofds.get(&f.ofd) {
                            Some(&i) => i,
                            None => {
                                st.files.push(OpenFile {
                                    flags,
                                    kind,
                                    sigio: None,
                                });
                                let i = conv::fit(st.files.len() - 1, "u32", "open file index")
                                    .map_err(|e| malformed(e.to_string()))?;
                                ofds.insert(f.ofd, i);
                                i
                            }
                        };
                        p.fds.push(Fd {
                            fd: f.fd,
                            file: idx,
                            cloexec: f.fd_flags & 1 != 0,
                        });
                    }
                    _ => {
                        let pg = rec.pages()?;
                        st.pages += u64::from(pg.pages);
                        st.page_runs.push(PageRun {
                            process: st.processes.len() - 1,
                            vaddr: pg.vaddr,
                            pages: pg.pages,
                        });
                    }
                }
            }
            Kind::Header | Kind::Trailer => {}
        }
    }
    // Pipes by id; every pipe an fd names must have its data record.
    for (id, (found, (size, data))) in (0u64..).zip(std::mem::take(&mut pipes)) {
        if found != id {
            return Err(malformed(format!("pipe {id} has no data record")));
        }
        let (inode, outside) = match external.remove(&id) {
            Some((inode, end)) => (inode, Some(end)),
            None => (id, None),
        };
        st.pipes.push(PipeState {
            inode,
            size,
            data,
            outside,
        });
    }
    if let Some(id) = external.keys().next() {
        return Err(malformed(format!(
            "an external-pipe record names pipe {id}, which has no data record"
        )));
    }
    for v in st.processes.iter().flat_map(|p| p.vmas.iter()) {
        let known = match v.backing {
            Backing::Memfd { id, .. } => st.memfds.iter().any(|o| o.id == id),
            Backing::Sysv { shmid, .. } => st.sysv.iter().any(|o| o.shmid == shmid),
            Backing::Unlinked { inode, .. } => st.unlinked.iter().any(|o| o.inode == inode),
            _ => true,
        };
        if !known {
            return Err(malformed(format!(
                "the mapping at {:#x} names an object the image does not hold",
                v.start
            )));
        }
    }
    for f in &st.files {
        if let FileKind::Anon(crate::engine::state::AnonFile::MemfdFile(r)) = &f.kind {
            if !st.memfds.iter().any(|o| o.id == r.id) {
                return Err(malformed(format!(
                    "an fd names memfd {}, which has no record",
                    r.id
                )));
            }
        }
        if let FileKind::UnlinkedFile { inode, .. } = f.kind {
            if !st.unlinked.iter().any(|o| o.inode == inode) {
                return Err(malformed(format!(
                    "an fd names unlinked file {inode}, which has no record"
                )));
            }
        }
        if let FileKind::Pipe { pipe, .. } = f.kind {
            if pipe as usize >= st.pipes.len() {
                return Err(malformed(format!(
                    "an fd names pipe {pipe}, which has no data record"
                )));
            }
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::records::{MemfdObject, SysvShm};
    use crate::image::Header;

    /// Writes one record into a test image.
    type Put<'a> = &'a dyn Fn(&mut ImageWriter<Vec<u8>>) -> Result<(), ImageError>;

    fn image(records: &[Put<'_>]) -> Vec<u8> {
        let header = Header::for_host().expect("header");
        let mut w = ImageWriter::new(Vec::new(), &header).expect("writer");
        for write in records {
            write(&mut w).expect("record");
        }
        w.finish().expect("finish").0
    }

    fn memfd(w: &mut ImageWriter<Vec<u8>>) -> Result<(), ImageError> {
        w.write(&MemfdObject {
            id: 5,
            name: "m".into(),
            size: 100,
            ..Default::default()
        })
    }

    fn data(
        object: ObjectRef,
        offset: u64,
        len: usize,
    ) -> impl Fn(&mut ImageWriter<Vec<u8>>) -> Result<(), ImageError> {
        move |w| {
            w.write(&ObjectData {
                object,
                offset,
                bytes: vec![1; len],
            })
        }
    }

    #[test]
    fn a_pipe_id_past_the_last_pipe_is_refused() {
        let pipe = |id: u64| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&PipeData {
                    id,
                    capacity: 4096,
                    bytes: vec![7; 3],
                })
            }
        };
        let e = read_state(&image(&[&pipe(u64::MAX)])[..])
            .expect_err("a lone pipe with the largest id")
            .to_string();
        assert!(e.contains("pipe 0 has no data record"), "{e}");
        let st = read_state(&image(&[&pipe(0)])[..]).expect("pipe 0");
        assert_eq!(st.pipes.len(), 1);
        assert_eq!(st.pipes[0].data, vec![7; 3]);
        assert_eq!(st.pipes[0].size, 4096);
    }

    #[test]
    fn objects_are_read_and_their_contents_checked() {
        let sysv = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&SysvShm {
                shmid: 7,
                key: 9,
                size: 4096,
                removed: true,
                ..Default::default()
            })
        };
        let good = image(&[
            &memfd,
            &data(ObjectRef::Memfd(5), 90, 10),
            &sysv,
            &data(ObjectRef::Sysv(7), 0, 4096),
        ]);
        let st = read_state(&good[..]).expect("state");
        assert_eq!(st.memfds.len(), 1);
        assert_eq!(st.memfds[0].size, 100);
        assert_eq!(
            st.sysv,
            vec![SysvShm {
                shmid: 7,
                key: 9,
                size: 4096,
                removed: true,
                ..Default::default()
            }]
        );

        let past_end = image(&[&memfd, &data(ObjectRef::Memfd(5), 90, 11)]);
        let e = read_state(&past_end[..])
            .expect_err("overflow refused")
            .to_string();
        assert!(e.contains("11 bytes at 90 overflow"), "{e}");

        let unknown = image(&[&memfd, &data(ObjectRef::Sysv(7), 0, 1)]);
        let e = read_state(&unknown[..])
            .expect_err("unknown object refused")
            .to_string();
        assert!(e.contains("before its record"), "{e}");
    }

    #[test]
    fn a_negative_timer_from_the_kernel_is_refused_not_disarmed() {
        let t = Itimer {
            interval_sec: 0,
            interval_usec: 0,
            value_sec: -1,
            value_usec: 0,
        };
        let e = itimer_ns(&t).expect_err("negative timer").to_string();
        assert!(
            e.contains("interval timer nanoseconds -1000000000 does not fit u64"),
            "{e}"
        );
        let ok = Itimer {
            value_sec: 2,
            value_usec: 5,
            ..t
        };
        assert_eq!(itimer_ns(&ok).expect("fits").value_ns, 2_000_005_000);
        let e = ts_ns((0, -1))
            .expect_err("negative posix timer")
            .to_string();
        assert!(
            e.contains("posix timer nanoseconds -1 does not fit u64"),
            "{e}"
        );
    }
}

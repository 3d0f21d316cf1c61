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
//!  Task MmFields Thread* Vma* (Fd TcpQueue*)* Membarrier? AioRing* Pages*
//!                               per process, parents first; a kept TCP
//!                               connection's queues after its first fd;
//!                               each AIO ring in one record or more
//!  (FileOwner? FlightFile)*     descriptions only a queued message holds
//!  UnixRights* UnixWaiting* SockExtra* UnixCreds*
//!                               what queued messages pass, the clients
//!                               waiting on listeners, socket options,
//!                               the credentials of queued messages
//!  Cgroup*                      the processes' cgroups
//!  Trailer
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};

use crate::engine::conv;
use crate::engine::state::{
    Backing, Fd, FileKind, OpenFile, PipeFile, PipeState, ProcessState, UnlinkedRef, Vma,
};
pub use crate::engine::state::{ImageState, PageRun};
use crate::image::records::{
    ExternalPipe, Fd as RFd, ObjectData, ObjectRef, PipeData, PipeEnd, RawPath, Thread, Vma as RVma,
};
use crate::image::{Arch, ImageError, ImageReader, ImageWriter, Kind};

fn path_of(p: &RawPath) -> String {
    String::from_utf8_lossy(p.as_bytes()).into_owned()
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
        if let Some(outside) = p.outside {
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
    queued: &mut std::collections::BTreeSet<u32>,
) -> Result<(), ImageError> {
    w.write(&p.task)?;
    if p.task.exit_status.is_some() {
        return Ok(());
    }
    w.write(&p.mm)?;
    for t in &p.threads {
        w.write(t)?;
    }
    for v in &p.vmas {
        w.write(&v.record())?;
    }
    for f in &p.fds {
        let of = &files[f.file as usize];
        let kind = of.kind.record(of.flags);
        w.write(&RFd {
            fd: f.fd,
            fd_flags: u32::from(f.cloexec),
            ofd: u64::from(f.file),
            kind,
        })?;
        if let FileKind::TcpConnection(c) = &of.kind {
            if queued.insert(f.file) {
                for (send, q) in [(true, &c.send_queue), (false, &c.recv_queue)] {
                    for (i, piece) in q.chunks(crate::image::records::OBJECT_CHUNK).enumerate() {
                        w.write(&crate::image::records::TcpQueue {
                            ofd: u64::from(f.file),
                            send,
                            offset: (i * crate::image::records::OBJECT_CHUNK) as u64,
                            bytes: piece.to_vec(),
                        })?;
                    }
                }
            }
        }
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
    for t in &p.thread_seccomp {
        w.write(t)?;
    }
    // Only when it says something: an image of a tree with none stays
    // readable by a torpor that predates the kind.
    if p.attrs != crate::image::records::TaskAttrs::default() {
        w.write(&p.attrs)?;
    }
    if p.membarrier.registered != 0 {
        w.write(&p.membarrier)?;
    }
    for ring in &p.aio {
        write_ring(w, ring)?;
    }
    for o in &p.owners {
        w.write(o)?;
    }
    Ok(())
}

/// One AIO ring: its header with the first completions, and as many
/// records after it as the rest take.
fn write_ring<W: Write>(
    w: &mut ImageWriter<W>,
    ring: &crate::image::records::AioRing,
) -> Result<(), ImageError> {
    use crate::image::records::{AioRing, AIO_EVENTS_PER_RECORD};
    let mut pieces = ring.events.chunks(AIO_EVENTS_PER_RECORD);
    let mut first = 0usize;
    loop {
        let events = pieces.next().unwrap_or_default();
        w.write(&AioRing {
            first: u32::try_from(first).unwrap_or(u32::MAX),
            events: events.to_vec(),
            ..ring.clone()
        })?;
        first += events.len();
        if first >= ring.events.len() {
            return Ok(());
        }
    }
}

/// Adds one `aio-ring` record to the rings of a process: a new ring when
/// `first` is 0, else the next completions of the ring before it, whose
/// header it repeats. Each ring is checked whole once every record is
/// read ([`crate::engine::aio::check_ring`]).
fn aio_piece(
    rings: &mut Vec<crate::image::records::AioRing>,
    r: crate::image::records::AioRing,
) -> Result<(), String> {
    use crate::image::records::AIO_EVENTS_PER_RECORD;
    if r.events.len() > AIO_EVENTS_PER_RECORD {
        return Err(format!(
            "an aio-ring record of {} completions (at most {AIO_EVENTS_PER_RECORD})",
            r.events.len()
        ));
    }
    let pending = r.pending() as usize;
    if r.first == 0 {
        if rings
            .last()
            .is_some_and(|l| l.events.len() < l.pending() as usize)
        {
            return Err("an AIO ring before its completions are all in".into());
        }
        if rings.iter().any(|o| {
            o.start < r.start.saturating_add(r.size) && r.start < o.start.saturating_add(o.size)
        }) {
            return Err(format!("two AIO rings at {:#x}", r.start));
        }
        if r.events.len() > pending {
            return Err(format!(
                "AIO ring {:#x}: {} completions of {pending}",
                r.start,
                r.events.len()
            ));
        }
        rings.push(r);
    } else {
        let last = rings
            .last_mut()
            .filter(|l| {
                l.events.len() == r.first as usize
                    && same_ring_header(l, &r)
                    && l.events.len() + r.events.len() <= pending
                    && !r.events.is_empty()
            })
            .ok_or_else(|| {
                format!(
                    "completions from {} of AIO ring {:#x}, which is not the ring before them",
                    r.first, r.start
                )
            })?;
        last.events.extend(r.events);
    }
    Ok(())
}

/// Whether two pieces of a ring have the same header.
fn same_ring_header(
    a: &crate::image::records::AioRing,
    b: &crate::image::records::AioRing,
) -> bool {
    crate::image::records::AioRing {
        first: 0,
        events: Vec::new(),
        ..a.clone()
    } == crate::image::records::AioRing {
        first: 0,
        events: Vec::new(),
        ..b.clone()
    }
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
    read_state_in(&mut rd)
}

/// [`read_state_from`] through a reader in
/// [`indexing_pages`](ImageReader::indexing_pages) mode: the state, and
/// the places of the page records it stepped over, in image order.
pub fn read_state_indexed<R: Read>(
    mut rd: ImageReader<R>,
) -> Result<(ImageState, Vec<crate::image::PageRef>), ImageError> {
    let st = read_state_in(&mut rd)?;
    Ok((st, rd.take_page_index()))
}

fn read_state_in<R: Read>(rd: &mut ImageReader<R>) -> Result<ImageState, ImageError> {
    let mut st = ImageState {
        page_size: u64::from(rd.header().page_size),
        ..ImageState::default()
    };
    let mut ofds: BTreeMap<u64, u32> = BTreeMap::new();
    let mut pipes: BTreeMap<u64, (u32, Vec<u8>)> = BTreeMap::new();
    let mut external: BTreeMap<u64, (u64, PipeEnd)> = BTreeMap::new();
    let mut seen_attrs = std::collections::BTreeSet::new();
    // (description, file index) of each description in flight.
    let mut flight: Vec<(u64, u32)> = Vec::new();
    while let Some(rec) = rd.next_record()? {
        let cur = st.processes.last_mut();
        match rec.kind() {
            Kind::TmpfsFile => st.tmpfs_files.push(rec.decode()?),
            Kind::ExternalPipe => {
                let e: ExternalPipe = rec.decode()?;
                let end = e.outside;
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
            Kind::Tree => st.trees.push(rec.decode()?),
            Kind::TcpQueue => {
                let q: crate::image::records::TcpQueue = rec.decode()?;
                let c = ofds
                    .get(&q.ofd)
                    .and_then(|&i| st.files.get_mut(i as usize))
                    .and_then(|f| match &mut f.kind {
                        FileKind::TcpConnection(c) => Some(c),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        malformed(format!(
                            "a tcp-queue record names description {}, which is no kept TCP connection before it",
                            q.ofd
                        ))
                    })?;
                let (queue, len) = if q.send {
                    (&mut c.send_queue, c.send_len)
                } else {
                    (&mut c.recv_queue, c.recv_len)
                };
                if q.offset != queue.len() as u64 || queue.len() + q.bytes.len() > len as usize {
                    return Err(malformed(format!(
                        "{} queued bytes at {} of a queue of {len} bytes holding {} so far",
                        q.bytes.len(),
                        q.offset,
                        queue.len()
                    )));
                }
                queue.extend_from_slice(&q.bytes);
            }
            Kind::FlightFile => {
                let r: crate::image::records::FlightFile = rec.decode()?;
                let (flags, kind) = FileKind::from_record(&r.kind)
                    .map_err(|why| malformed(format!("description {} in flight: {why}", r.ofd)))?;
                if !kept_in_flight(&kind) {
                    return Err(malformed(format!(
                        "description {} in flight is {}, which torpor does not keep in flight",
                        r.ofd,
                        kind.name()
                    )));
                }
                if ofds.contains_key(&r.ofd) {
                    return Err(malformed(format!(
                        "a flight-file record names description {}, which another record has",
                        r.ofd
                    )));
                }
                st.files.push(OpenFile {
                    flags,
                    kind,
                    sigio: None,
                });
                let i = conv::fit(st.files.len() - 1, "u32", "open file index")
                    .map_err(|e| malformed(e.to_string()))?;
                ofds.insert(r.ofd, i);
                flight.push((r.ofd, i));
            }
            Kind::UnixRights => {
                let r: crate::image::records::UnixRights = rec.decode()?;
                let socket = queued_message(&ofds, &st.files, r.ofd, r.message, "unix-rights")?;
                if r.files.is_empty() || r.files.len() > crate::engine::state::RIGHTS_LIMIT {
                    return Err(malformed(format!(
                        "a unix-rights record passes {} descriptors (1 to {} are possible)",
                        r.files.len(),
                        crate::engine::state::RIGHTS_LIMIT
                    )));
                }
                let files = r
                    .files
                    .iter()
                    .map(|o| {
                        ofds.get(o).copied().ok_or_else(|| {
                            malformed(format!(
                                "a unix-rights record passes description {o}, which no fd has"
                            ))
                        })
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                if st
                    .rights
                    .iter()
                    .any(|x| x.socket == socket && x.message == r.message)
                {
                    return Err(malformed(format!(
                        "two unix-rights records for message {} of description {}",
                        r.message, r.ofd
                    )));
                }
                st.rights.push(crate::engine::state::Rights {
                    socket,
                    message: r.message,
                    files,
                });
            }
            Kind::UnixCreds => {
                let r: crate::image::records::UnixCreds = rec.decode()?;
                let socket = queued_message(&ofds, &st.files, r.ofd, r.message, "unix-creds")?;
                if r.pid <= 0 || !st.processes.iter().any(|p| p.task.pid == r.pid) {
                    return Err(malformed(format!(
                        "a unix-creds record for message {} of description {} names pid {}, which is no process of the image",
                        r.message, r.ofd, r.pid
                    )));
                }
                if st
                    .msg_creds
                    .iter()
                    .any(|x| x.socket == socket && x.message == r.message)
                {
                    return Err(malformed(format!(
                        "two unix-creds records for message {} of description {}",
                        r.message, r.ofd
                    )));
                }
                st.msg_creds.push(crate::engine::state::MsgCreds {
                    socket,
                    message: r.message,
                    pid: r.pid,
                    uid: r.uid,
                    gid: r.gid,
                });
            }
            Kind::UnixWaiting => {
                let r: crate::image::records::UnixWaiting = rec.decode()?;
                let unix = |ofd: u64| {
                    ofds.get(&ofd)
                        .copied()
                        .and_then(|i| match &st.files.get(i as usize)?.kind {
                            FileKind::Unix(u) => Some((i, u)),
                            _ => None,
                        })
                };
                let listener = unix(r.ofd)
                    .filter(|(_, u)| u.listening && !u.bind_path.as_bytes().is_empty())
                    .map(|(i, _)| i)
                    .ok_or_else(|| {
                        malformed(format!(
                            "a unix-waiting record names description {}, which is no bound UNIX listener before it",
                            r.ofd
                        ))
                    })?;
                if r.clients.is_empty() || r.clients.len() > crate::engine::files::WAITING_LIMIT {
                    return Err(malformed(format!(
                        "a unix-waiting record names {} clients (1 to {} are possible)",
                        r.clients.len(),
                        crate::engine::files::WAITING_LIMIT
                    )));
                }
                if st.waiting.iter().any(|w| w.listener == listener) {
                    return Err(malformed(format!(
                        "two unix-waiting records for description {}",
                        r.ofd
                    )));
                }
                let mut clients = Vec::new();
                for &c in &r.clients {
                    let i = unix(c)
                        .filter(|(_, u)| {
                            !u.listening
                                && u.peer == 0
                                && u.queue.is_empty()
                                && u.sock_type != libc::SOCK_DGRAM
                        })
                        .map(|(i, _)| i)
                        .ok_or_else(|| {
                            malformed(format!(
                                "a unix-waiting record names client {c}, which is no unpaired UNIX stream or seqpacket socket with an empty queue before it"
                            ))
                        })?;
                    if clients.contains(&i) || st.waiting.iter().any(|w| w.clients.contains(&i)) {
                        return Err(malformed(format!(
                            "a unix-waiting record names client {c} twice"
                        )));
                    }
                    clients.push(i);
                }
                st.waiting
                    .push(crate::engine::state::Waiting { listener, clients });
            }
            Kind::SockExtra => {
                let r: crate::image::records::SockExtra = rec.decode()?;
                let i = ofds
                    .get(&r.ofd)
                    .copied()
                    .filter(|&i| {
                        st.files.get(i as usize).is_some_and(|f| {
                            matches!(
                                f.kind,
                                FileKind::Unix(_)
                                    | FileKind::Inet(_)
                                    | FileKind::TcpConnection(_)
                                    | FileKind::Netlink(_)
                                    | FileKind::Packet(_)
                            )
                        })
                    })
                    .ok_or_else(|| {
                        malformed(format!(
                            "a sock-opts record names description {}, which is no socket before it",
                            r.ofd
                        ))
                    })?;
                crate::engine::files::sockopt::check(&r.opts)
                    .map_err(|why| malformed(format!("description {}: {why}", r.ofd)))?;
                if st.sock_opts.insert(i, r.opts).is_some() {
                    return Err(malformed(format!(
                        "two sock-opts records for description {}",
                        r.ofd
                    )));
                }
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
                st.processes.push(ProcessState {
                    task: rec.decode()?,
                    ..Default::default()
                });
            }
            Kind::MmFields
            | Kind::Thread
            | Kind::Vma
            | Kind::Fd
            | Kind::SeccompFilter
            | Kind::ThreadSeccomp
            | Kind::TaskAttrs
            | Kind::AioRing
            | Kind::Membarrier
            | Kind::Pages => {
                let p = cur
                    .ok_or_else(|| malformed(format!("a {} record before any task", rec.kind())))?;
                match rec.kind() {
                    Kind::MmFields => p.mm = rec.decode()?,
                    Kind::Thread => {
                        let t: Thread = rec.decode()?;
                        if t.regs.arch != Arch::host() {
                            return Err(malformed(format!(
                                "thread {} has {} registers",
                                t.tid, t.regs.arch
                            )));
                        }
                        p.threads.push(t);
                    }
                    Kind::SeccompFilter => p.seccomp.push(rec.decode()?),
                    Kind::ThreadSeccomp => p.thread_seccomp.push(rec.decode()?),
                    Kind::TaskAttrs => {
                        if seen_attrs.contains(&p.task.pid) {
                            return Err(malformed(format!(
                                "a second task-attrs record for process {}",
                                p.task.pid
                            )));
                        }
                        seen_attrs.insert(p.task.pid);
                        p.attrs = rec.decode()?;
                    }
                    Kind::Membarrier => {
                        let m: crate::image::records::Membarrier = rec.decode()?;
                        if p.membarrier.registered != 0 {
                            return Err(malformed(format!(
                                "a second membarrier record for process {}",
                                p.task.pid
                            )));
                        }
                        if m.registered == 0
                            || m.registered & !crate::image::records::Membarrier::ALL != 0
                        {
                            return Err(malformed(format!(
                                "process {}: membarrier registrations {:#x}",
                                p.task.pid, m.registered
                            )));
                        }
                        p.membarrier = m;
                    }
                    Kind::AioRing => {
                        let r: crate::image::records::AioRing = rec.decode()?;
                        let pid = p.task.pid;
                        aio_piece(&mut p.aio, r)
                            .map_err(|why| malformed(format!("process {pid}: {why}")))?;
                    }
                    Kind::Vma => {
                        let v: RVma = rec.decode()?;
                        p.vmas.push(Vma::from_record(v).map_err(malformed)?);
                    }
                    Kind::Fd => {
                        let f: RFd = rec.decode()?;
                        let (flags, kind) = FileKind::from_record(&f.kind)
                            .map_err(|why| malformed(format!("fd {}: {why}", f.fd)))?;
                        let idx = match ofds.get(&f.ofd) {
                            Some(&i) if flight.iter().any(|&(_, x)| x == i) => {
                                return Err(malformed(format!(
                                    "fd {} names description {}, which is in flight",
                                    f.fd, f.ofd
                                )));
                            }
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
            Kind::Cgroup => {
                let c: crate::image::records::Cgroup = rec.decode()?;
                crate::engine::cgroup::check_record(&c).map_err(malformed)?;
                if st.cgroups.iter().any(|o| o.path == c.path) {
                    return Err(malformed(format!("two cgroup records of {}", c.path)));
                }
                st.cgroups.push(c);
            }
            Kind::Header | Kind::Trailer => {}
        }
    }
    // Each cgroup's processes are live processes of the image, each in one.
    let mut placed = std::collections::BTreeSet::new();
    for c in &st.cgroups {
        for &pid in &c.pids {
            let live = st
                .processes
                .iter()
                .any(|p| p.task.pid == pid && p.task.exit_status.is_none());
            if !live || !placed.insert(pid) {
                return Err(malformed(format!(
                    "cgroup {} names process {pid}, which is no live process of the image or is in another cgroup too",
                    c.path
                )));
            }
        }
    }
    for p in &st.processes {
        for r in &p.aio {
            crate::engine::aio::check_ring(r, st.page_size)
                .map_err(|why| malformed(format!("process {}: {why}", p.task.pid)))?;
        }
    }
    // A description in flight is passed by a queued message.
    for (ofd, i) in flight {
        if !st.rights.iter().any(|r| r.files.contains(&i)) {
            return Err(malformed(format!(
                "description {ofd} in flight is passed by no queued message"
            )));
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
        if let FileKind::TcpConnection(c) = &f.kind {
            if c.send_queue.len() != c.send_len as usize
                || c.recv_queue.len() != c.recv_len as usize
            {
                return Err(malformed(format!(
                    "a kept TCP connection's queues hold {} of {} and {} of {} bytes",
                    c.send_queue.len(),
                    c.send_len,
                    c.recv_queue.len(),
                    c.recv_len
                )));
            }
        }
        if let FileKind::MemfdFile(r) = &f.kind {
            if !st.memfds.iter().any(|o| o.id == r.id) {
                return Err(malformed(format!(
                    "an fd names memfd {}, which has no record",
                    r.id
                )));
            }
        }
        if let FileKind::UnlinkedFile(UnlinkedRef { inode, .. }) = f.kind {
            if !st.unlinked.iter().any(|o| o.inode == inode) {
                return Err(malformed(format!(
                    "an fd names unlinked file {inode}, which has no record"
                )));
            }
        }
        if let FileKind::Pipe(PipeFile { pipe, .. }) = &f.kind {
            let pipe = *pipe;
            if pipe as usize >= st.pipes.len() {
                return Err(malformed(format!(
                    "an fd names pipe {pipe}, which has no data record"
                )));
            }
        }
    }
    Ok(st)
}

/// The UNIX socket (an index into `files`) of description `ofd`, read
/// before a `what` record naming its queued message `message`, which it
/// must hold.
fn queued_message(
    ofds: &BTreeMap<u64, u32>,
    files: &[OpenFile],
    ofd: u64,
    message: u32,
    what: &str,
) -> Result<u32, ImageError> {
    ofds.get(&ofd)
        .copied()
        .filter(|&i| {
            files.get(i as usize).is_some_and(|f| match &f.kind {
                FileKind::Unix(u) => (message as usize) < u.queue.len(),
                _ => false,
            })
        })
        .ok_or_else(|| {
            malformed(format!(
                "a {what} record names message {message} of description {ofd}, which is no queued message of a UNIX socket before it"
            ))
        })
}

/// Whether torpor keeps a description of this kind when only a queued
/// message holds it: one reopened by path, or made from the image alone
/// before the tasks exist.
pub fn kept_in_flight(kind: &FileKind) -> bool {
    matches!(
        kind,
        FileKind::Path(_)
            | FileKind::Device(_)
            | FileKind::Pipe(_)
            | FileKind::MemfdFile(_)
            | FileKind::EventFd(_)
            | FileKind::TimerFd(_)
            | FileKind::SignalFd(_)
            | FileKind::UnlinkedFile(_)
            | FileKind::Inotify(_)
            | FileKind::Fanotify(_)
            | FileKind::Unix(_)
            | FileKind::Inet(_)
    )
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
    fn task_attrs_are_written_only_when_they_say_something() {
        use crate::engine::restore::plan::tests::process;
        use crate::image::records::{Kind, TaskAttrs, ThreadAttrs};
        let write = |p: &ProcessState| {
            let header = Header::for_host().expect("header");
            let mut w = ImageWriter::new(Vec::new(), &header).expect("writer");
            write_process(
                &mut w,
                p,
                &[OpenFile {
                    flags: 0,
                    kind: FileKind::Device(crate::engine::state::DeviceFile {
                        path: "/dev/null".into(),
                        rdev: 0x103,
                        tty: false,
                    }),
                    sigio: None,
                }],
                &mut std::collections::BTreeSet::new(),
            )
            .expect("process");
            w.finish().expect("finish").0
        };
        let kinds = |img: &[u8]| {
            let mut r = crate::image::ImageReader::new(img).expect("reader");
            let mut k = Vec::new();
            while let Some(rec) = r.next_record().expect("record") {
                k.push(rec.kind());
            }
            k
        };
        let mut p = process(100, 0);
        let plain = write(&p);
        assert!(!kinds(&plain).contains(&Kind::TaskAttrs));
        assert_eq!(
            read_state(&plain[..]).expect("state").processes[0].attrs,
            TaskAttrs::default()
        );
        p.attrs.oom_score_adj = 345;
        p.attrs.threads.push(ThreadAttrs {
            tid: 100,
            policy: 3,
            nice: 9,
            ..ThreadAttrs::default()
        });
        let img = write(&p);
        assert_eq!(
            kinds(&img)
                .iter()
                .filter(|k| **k == Kind::TaskAttrs)
                .count(),
            1
        );
        assert_eq!(
            read_state(&img[..]).expect("state").processes[0].attrs,
            p.attrs
        );
    }

    #[test]
    fn aio_rings_and_membarrier_registrations_are_kept_with_their_process() {
        use crate::engine::restore::plan::tests::process;
        use crate::image::records::{AioRing, IoEvent, Kind, Membarrier, AIO_EVENTS_PER_RECORD};
        let ps = crate::engine::page_size();
        let write = |p: &ProcessState| {
            let header = Header::for_host().expect("header");
            let mut w = ImageWriter::new(Vec::new(), &header).expect("writer");
            let null = OpenFile {
                flags: 0,
                kind: FileKind::Device(crate::engine::state::DeviceFile {
                    path: "/dev/null".into(),
                    rdev: 0x103,
                    tty: false,
                }),
                sigio: None,
            };
            write_process(&mut w, p, &[null], &mut std::collections::BTreeSet::new())
                .expect("process");
            w.finish().expect("finish").0
        };
        let kinds = |img: &[u8]| {
            let mut r = crate::image::ImageReader::new(img).expect("reader");
            let mut k = Vec::new();
            while let Some(rec) = r.next_record().expect("record") {
                k.push(rec.kind());
            }
            k
        };
        let mut p = process(100, 0);
        let plain = write(&p);
        assert!(!kinds(&plain).contains(&Kind::Membarrier));
        assert!(!kinds(&plain).contains(&Kind::AioRing));
        // A ring of 64 pages with more completions than one record holds,
        // from near its end round to its start, and a ring with none.
        let pages = 64;
        let nr = u32::try_from(pages * ps / 32 - 1).expect("nr");
        let pending = u32::try_from(AIO_EVENTS_PER_RECORD).expect("u32") + 10;
        let head = nr - 5;
        let big = AioRing {
            start: 0x7000_0000,
            size: pages * ps,
            id: 0,
            nr,
            head,
            tail: (head + pending) % nr,
            magic: crate::image::records::AIO_RING_MAGIC,
            compat_features: 1,
            incompat_features: 0,
            header_length: 32,
            first: 0,
            events: (0..u64::from(pending))
                .map(|i| IoEvent {
                    data: i,
                    obj: 0x1000 + i,
                    res: 4096,
                    res2: 0,
                })
                .collect(),
        };
        let empty = AioRing {
            start: 0x7100_0000,
            size: ps,
            nr: u32::try_from(ps / 32 - 1).expect("nr"),
            head: 3,
            tail: 3,
            events: Vec::new(),
            ..big.clone()
        };
        p.aio = vec![big.clone(), empty];
        p.membarrier = Membarrier {
            registered: Membarrier::PRIVATE_EXPEDITED,
        };
        let img = write(&p);
        let k = kinds(&img);
        assert_eq!(k.iter().filter(|k| **k == Kind::AioRing).count(), 3);
        assert_eq!(k.iter().filter(|k| **k == Kind::Membarrier).count(), 1);
        let back = read_state(&img[..]).expect("state");
        assert_eq!(back.processes[0].aio, p.aio);
        assert_eq!(back.processes[0].membarrier, p.membarrier);

        // Completions missing, a ring the kernel would not make, unknown
        // registrations: refused on reading.
        let mut short = p.clone();
        short.aio[0].events.pop();
        assert!(read_state(&write(&short)[..]).is_err());
        let mut bad = p.clone();
        bad.aio[1].magic = 0;
        let e = read_state(&write(&bad)[..]).unwrap_err().to_string();
        assert!(e.contains("process 100") && e.contains("magic"), "{e}");
        let mut unknown = p.clone();
        unknown.membarrier.registered |= 1 << 12;
        assert!(read_state(&write(&unknown)[..]).is_err());
        // A piece of a ring after another ring.
        let header = Header::for_host().expect("header");
        let mut w = ImageWriter::new(Vec::new(), &header).expect("writer");
        w.write(&p.task).expect("task");
        w.write(&AioRing {
            first: 5,
            events: big.events[5..9].to_vec(),
            ..big.clone()
        })
        .expect("ring");
        let img = w.finish().expect("finish").0;
        let e = read_state(&img[..]).unwrap_err().to_string();
        assert!(e.contains("not the ring before them"), "{e}");
    }

    #[test]
    fn records_after_the_processes_name_sockets_and_descriptions_they_hold() {
        use crate::image::records::{FdKind, Task, UnixRights, UnixSocket};
        let task = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&Task {
                pid: 40,
                ..Default::default()
            })
        };
        let socket = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&RFd {
                fd: 5,
                fd_flags: 0,
                ofd: 3,
                kind: FdKind::Unix {
                    flags: 2,
                    state: UnixSocket {
                        sock_type: libc::SOCK_STREAM,
                        queue: vec![b"a".to_vec(), b"bc".to_vec()],
                        ..Default::default()
                    },
                },
            })
        };
        let null = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&RFd {
                fd: 6,
                fd_flags: 0,
                ofd: 4,
                kind: FdKind::Device {
                    path: "/dev/null".into(),
                    rdev: 0x103,
                    flags: 2,
                },
            })
        };
        let rights = |ofd: u64, message: u32, files: Vec<u64>| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&UnixRights {
                    ofd,
                    message,
                    files: files.clone(),
                })
            }
        };
        let st = read_state(&image(&[&task, &socket, &null, &rights(3, 1, vec![4, 3])])[..])
            .expect("a message passing both descriptions");
        assert_eq!(
            st.rights,
            [crate::engine::state::Rights {
                socket: 0,
                message: 1,
                files: vec![1, 0],
            }]
        );
        let refused = |r: Put<'_>| {
            read_state(&image(&[&task, &socket, &null, r])[..])
                .expect_err("a bad unix-rights record")
                .to_string()
        };
        let e = refused(&rights(3, 2, vec![4]));
        assert!(
            e.contains("names message 2 of description 3, which is no queued message of a UNIX socket before it"),
            "{e}"
        );
        let e = refused(&rights(4, 0, vec![4]));
        assert!(
            e.contains("names message 0 of description 4, which is no queued message"),
            "{e}"
        );
        let e = refused(&rights(3, 0, vec![9]));
        assert!(e.contains("passes description 9, which no fd has"), "{e}");
        let e = refused(&rights(3, 0, Vec::new()));
        assert!(
            e.contains("passes 0 descriptors (1 to 253 are possible)"),
            "{e}"
        );
        let e = read_state(
            &image(&[
                &task,
                &socket,
                &null,
                &rights(3, 0, vec![4]),
                &rights(3, 0, vec![3]),
            ])[..],
        )
        .expect_err("two records for one message")
        .to_string();
        assert!(
            e.contains("two unix-rights records for message 0 of description 3"),
            "{e}"
        );

        // Socket options: of a socket, known, once.
        let sock_opts = |ofd: u64, opt: i32| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&crate::image::records::SockExtra {
                    ofd,
                    opts: vec![crate::image::records::RawSockOpt {
                        level: libc::SOL_SOCKET,
                        opt,
                        value: 1i32.to_ne_bytes().to_vec(),
                    }],
                })
            }
        };
        let st = read_state(&image(&[&task, &socket, &null, &sock_opts(3, 6)])[..])
            .expect("SO_BROADCAST of the socket");
        assert_eq!(st.sock_opts.get(&0).map(Vec::len), Some(1));
        let e = refused(&sock_opts(4, 6));
        assert!(
            e.contains("a sock-opts record names description 4, which is no socket before it"),
            "{e}"
        );
        let e = refused(&sock_opts(3, 2));
        assert!(
            e.contains("description 3: socket option 2 of level 1 is not one torpor keeps"),
            "{e}"
        );
        let e =
            read_state(&image(&[&task, &socket, &null, &sock_opts(3, 6), &sock_opts(3, 5)])[..])
                .expect_err("two records for one socket")
                .to_string();
        assert!(e.contains("two sock-opts records for description 3"), "{e}");
    }

    #[test]
    fn descriptions_in_flight_are_passed_and_of_a_kept_kind() {
        use crate::image::records::{EventFd, FdKind, FlightFile, Task, UnixRights, UnixSocket};
        let task = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&Task {
                pid: 40,
                ..Default::default()
            })
        };
        let socket = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&RFd {
                fd: 5,
                fd_flags: 0,
                ofd: 3,
                kind: FdKind::Unix {
                    flags: 2,
                    state: UnixSocket {
                        sock_type: libc::SOCK_STREAM,
                        queue: vec![b"a".to_vec()],
                        ..Default::default()
                    },
                },
            })
        };
        let flight = |ofd: u64, kind: FdKind| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&FlightFile {
                    ofd,
                    kind: kind.clone(),
                })
            }
        };
        let eventfd = FdKind::EventFd {
            flags: 2,
            state: EventFd {
                count: 7,
                semaphore: false,
            },
        };
        let rights = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&UnixRights {
                ofd: 3,
                message: 0,
                files: vec![9],
            })
        };
        let st = read_state(&image(&[&task, &socket, &flight(9, eventfd.clone()), &rights])[..])
            .expect("an eventfd in flight");
        assert_eq!(st.files.len(), 2);
        assert_eq!(
            st.files[1].kind,
            FileKind::EventFd(EventFd {
                count: 7,
                semaphore: false
            })
        );
        assert_eq!(
            st.rights,
            [crate::engine::state::Rights {
                socket: 0,
                message: 0,
                files: vec![1],
            }]
        );
        assert!(st.processes[0].fds.iter().all(|f| f.file != 1));
        let e = read_state(&image(&[&task, &socket, &flight(9, eventfd.clone())])[..])
            .expect_err("passed by nothing")
            .to_string();
        assert!(
            e.contains("description 9 in flight is passed by no queued message"),
            "{e}"
        );
        let e = read_state(
            &image(&[
                &task,
                &socket,
                &flight(
                    9,
                    FdKind::Epoll {
                        flags: 2,
                        state: crate::image::records::Epoll::default(),
                    },
                ),
                &rights,
            ])[..],
        )
        .expect_err("an epoll instance in flight")
        .to_string();
        assert!(
            e.contains("description 9 in flight is an epoll instance, which torpor does not keep in flight"),
            "{e}"
        );
        let e = read_state(&image(&[&task, &socket, &flight(3, eventfd.clone()), &rights])[..])
            .expect_err("a description an fd has")
            .to_string();
        assert!(
            e.contains("a flight-file record names description 3, which another record has"),
            "{e}"
        );
        let again = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&RFd {
                fd: 6,
                fd_flags: 0,
                ofd: 9,
                kind: FdKind::EventFd {
                    flags: 2,
                    state: EventFd::default(),
                },
            })
        };
        let e = read_state(&image(&[&task, &socket, &flight(9, eventfd), &again, &rights])[..])
            .expect_err("an fd of a description in flight")
            .to_string();
        assert!(
            e.contains("fd 6 names description 9, which is in flight"),
            "{e}"
        );
    }

    #[test]
    fn waiting_connections_name_a_listener_and_its_unpaired_clients() {
        use crate::image::records::{FdKind, RawPath, Task, UnixSocket, UnixWaiting};
        let task = |w: &mut ImageWriter<Vec<u8>>| {
            w.write(&Task {
                pid: 40,
                ..Default::default()
            })
        };
        let sock = |fd: i32, ofd: u64, state: UnixSocket| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&RFd {
                    fd,
                    fd_flags: 0,
                    ofd,
                    kind: FdKind::Unix {
                        flags: 2,
                        state: state.clone(),
                    },
                })
            }
        };
        let listener = sock(
            5,
            3,
            UnixSocket {
                sock_type: libc::SOCK_STREAM,
                listening: true,
                name: RawPath(b"\0l".to_vec()),
                bind_path: RawPath(b"\0l".to_vec()),
                ..Default::default()
            },
        );
        let client = |fd: i32, ofd: u64| {
            sock(
                fd,
                ofd,
                UnixSocket {
                    sock_type: libc::SOCK_STREAM,
                    connected: true,
                    peer_name: RawPath(b"\0l".to_vec()),
                    ..Default::default()
                },
            )
        };
        let (a, b) = (client(6, 4), client(7, 5));
        let waiting = |ofd: u64, clients: Vec<u64>| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&UnixWaiting {
                    ofd,
                    clients: clients.clone(),
                })
            }
        };
        let st = read_state(&image(&[&task, &listener, &a, &b, &waiting(3, vec![5, 4])])[..])
            .expect("two waiting connections");
        assert_eq!(
            st.waiting,
            [crate::engine::state::Waiting {
                listener: 0,
                clients: vec![2, 1],
            }]
        );
        let refused = |r: Put<'_>| {
            read_state(&image(&[&task, &listener, &a, &b, r])[..])
                .expect_err("a bad unix-waiting record")
                .to_string()
        };
        let e = refused(&waiting(4, vec![5]));
        assert!(
            e.contains("names description 4, which is no bound UNIX listener before it"),
            "{e}"
        );
        let e = refused(&waiting(3, vec![3]));
        assert!(
            e.contains("names client 3, which is no unpaired UNIX stream or seqpacket socket with an empty queue before it"),
            "{e}"
        );
        let e = refused(&waiting(3, vec![4, 4]));
        assert!(e.contains("names client 4 twice"), "{e}");
        let e = refused(&waiting(3, Vec::new()));
        assert!(
            e.contains("names 0 clients (1 to 1024 are possible)"),
            "{e}"
        );
    }

    #[test]
    fn message_credentials_name_a_queued_message_and_a_process_of_the_image() {
        use crate::image::records::{FdKind, Task, UnixCreds, UnixSocket};
        let task = |pid: i32| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&Task {
                    pid,
                    ..Default::default()
                })
            }
        };
        let (t40, t41) = (task(40), task(41));
        let sock = |fd: i32, ofd: u64, queue: Vec<Vec<u8>>| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&RFd {
                    fd,
                    fd_flags: 0,
                    ofd,
                    kind: FdKind::Unix {
                        flags: 2,
                        state: UnixSocket {
                            sock_type: libc::SOCK_DGRAM,
                            inode: ofd + 100,
                            peer: if ofd == 3 { 104 } else { 103 },
                            connected: true,
                            queue: queue.clone(),
                            ..Default::default()
                        },
                    },
                })
            }
        };
        let (a, b) = (
            sock(5, 3, vec![b"one".to_vec(), b"two".to_vec()]),
            sock(6, 4, Vec::new()),
        );
        let creds = |ofd: u64, message: u32, pid: i32| {
            move |w: &mut ImageWriter<Vec<u8>>| {
                w.write(&UnixCreds {
                    ofd,
                    message,
                    pid,
                    uid: 1000,
                    gid: 100,
                })
            }
        };
        let st = read_state(&image(&[&t40, &a, &b, &t41, &creds(3, 1, 41), &creds(3, 0, 40)])[..])
            .expect("two messages' credentials");
        assert_eq!(
            st.msg_creds,
            [
                crate::engine::state::MsgCreds {
                    socket: 0,
                    message: 1,
                    pid: 41,
                    uid: 1000,
                    gid: 100,
                },
                crate::engine::state::MsgCreds {
                    socket: 0,
                    message: 0,
                    pid: 40,
                    uid: 1000,
                    gid: 100,
                }
            ]
        );
        let refused = |r: &[Put<'_>]| {
            let mut all: Vec<Put<'_>> = vec![&t40, &a, &b, &t41];
            all.extend_from_slice(r);
            read_state(&image(&all)[..])
                .expect_err("a bad unix-creds record")
                .to_string()
        };
        let e = refused(&[&creds(3, 2, 40)]);
        assert!(
            e.contains("a unix-creds record names message 2 of description 3, which is no queued message of a UNIX socket before it"),
            "{e}"
        );
        let e = refused(&[&creds(4, 0, 40)]);
        assert!(e.contains("names message 0 of description 4"), "{e}");
        let e = refused(&[&creds(3, 0, 42)]);
        assert!(
            e.contains("a unix-creds record for message 0 of description 3 names pid 42, which is no process of the image"),
            "{e}"
        );
        let e = refused(&[&creds(3, 0, 0)]);
        assert!(e.contains("names pid 0"), "{e}");
        let e = refused(&[&creds(3, 0, 40), &creds(3, 0, 41)]);
        assert!(
            e.contains("two unix-creds records for message 0 of description 3"),
            "{e}"
        );
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
}

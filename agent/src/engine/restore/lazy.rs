//! Lazy restore: the tree runs once its registers, mappings and files are
//! in place, and its private anonymous pages arrive on first touch.
//!
//! ```text
//!  pages (per task)  map_process ─▶ userfaultfd() in the task ─▶ taken
//!     │              (pidfd_getfd), closed there ─▶ UFFDIO_API ─▶
//!     │              UFFDIO_REGISTER (missing) each lazy mapping
//!     │              page records of lazy mappings: only their place noted
//!     │              (`PageRef`), the others read and written as always
//!     └ finish       the task's pending pieces go to the server, which
//!                    serves faults from here on (a remote syscall may
//!                    touch a lazy page: rseq, a signal frame)
//!  (detach)          the tree runs; the server fetches what is left in
//!                    address order, serving faults between pieces, until
//!                    every piece is in
//! ```
//!
//! A lazy mapping is private, anonymous, readable and writable, and not
//! executable: torpor itself never reads one after it is registered (a
//! syscall at a task's pc reads the code there). One userfaultfd per
//! process: threads share it with their mm, a child forked while pages
//! are missing gets its own (`UFFD_FEATURE_EVENT_FORK`) with the same
//! pieces still to come. Unmapped, `MADV_DONTNEED`ed and moved ranges are
//! followed (`EVENT_UNMAP`, `EVENT_REMOVE`, `EVENT_REMAP`), so a page the
//! tree dropped is never filled from the image again.
//!
//! Each piece is read on its own from the image (`image::read_pages_at`)
//! and its record's CRC checked before a byte of it enters the tree. A
//! record that cannot be read or fails its check while pages are missing
//! kills the whole tree (every restored process and its descendants)
//! before the userfaultfds close: a task never runs on with a page the
//! kernel would fill with zeros. torpor must keep running until the
//! server is done; if it is killed meanwhile, missing pages read as zeros.
//!
//! Unsafe code: the userfaultfd ioctls, reading its messages, poll and
//! the wake-up pipe.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

use crate::arch::nr;
use crate::engine::state::{Backing, Vma};
use crate::engine::{procfs, Cause};
use crate::image::{read_pages_at, PageRef, PAGE_BATCH_BYTES};

use super::memory::Rebuild;
use super::trampoline::with_remote;

// include/uapi/linux/userfaultfd.h
const UFFD_API: u64 = 0xAA;
const FEATURE_EVENT_FORK: u64 = 1 << 1;
const FEATURE_EVENT_REMAP: u64 = 1 << 2;
const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
const FEATURES: u64 =
    FEATURE_EVENT_FORK | FEATURE_EVENT_REMAP | FEATURE_EVENT_REMOVE | FEATURE_EVENT_UNMAP;
const REGISTER_MODE_MISSING: u64 = 1;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
/// `struct uffd_msg`: the event byte, padding to 8, three 64-bit words.
const MSG_BYTES: usize = 32;

/// `_IOC(dir, 0xAA, nr, size)`, the same on every architecture torpor has.
const fn uffd_ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (UFFD_API << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_RW: u64 = 3;
const UFFDIO_API: u64 = uffd_ioc(IOC_RW, 0x3F, 24);
const UFFDIO_REGISTER: u64 = uffd_ioc(IOC_RW, 0x00, 32);
const UFFDIO_WAKE: u64 = uffd_ioc(IOC_READ, 0x02, 16);
const UFFDIO_COPY: u64 = uffd_ioc(IOC_RW, 0x03, 40);
const UFFDIO_ZEROPAGE: u64 = uffd_ioc(IOC_RW, 0x04, 32);

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const _: () = assert!(core::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(core::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(core::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(core::mem::size_of::<UffdioZeropage>() == 32);

/// One userfaultfd ioctl on `arg`; the errno on failure.
fn uffd_ioctl<T>(fd: RawFd, req: u64, arg: &mut T) -> Result<(), std::io::Error> {
    // The request numbers fit 32 bits; musl's ioctl takes an int, and the
    // kernel reads the bits as they are.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let req = req as libc::Ioctl;
    // SAFETY: every request here reads and writes exactly the `#[repr(C)]`
    // struct the kernel's header declares for it, which `arg` is.
    if unsafe { libc::ioctl(fd, req, std::ptr::from_mut(arg)) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a mapping's pages come lazily.
pub(super) fn lazy_vma(v: &Vma) -> bool {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    matches!(v.backing, Backing::Anon)
        && !v.shared
        && v.prot & rw == rw
        && v.prot & libc::PROT_EXEC == 0
}

/// Why userfaultfd cannot serve a lazy restore on this system, if it
/// cannot: the syscall missing or refused, or the kernel lacking the
/// events a lazy restore follows.
pub fn probe() -> Result<(), String> {
    // SAFETY: userfaultfd takes flags only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::c_long::from(libc::O_CLOEXEC | libc::O_NONBLOCK),
        )
    };
    if rc < 0 {
        return Err(format!("userfaultfd: {}", std::io::Error::last_os_error()));
    }
    let raw = RawFd::try_from(rc).map_err(|_| "userfaultfd: bad descriptor".to_string())?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    handshake(&fd)
        .map_err(|e| format!("userfaultfd API with fork, remap, remove and unmap events: {e}"))
}

fn handshake(fd: &OwnedFd) -> Result<(), std::io::Error> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: FEATURES,
        ioctls: 0,
    };
    uffd_ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api)
}

/// A piece of a page record still to come: `len` bytes at `skip` into the
/// record's pages, placed at its key (the address, which may have moved).
#[derive(Debug, Clone, Copy)]
struct Piece {
    len: u64,
    skip: u64,
    rec: PageRef,
}

/// A process whose lazy mappings are registered, and what they miss.
#[derive(Debug)]
pub(super) struct Deferral {
    uffd: OwnedFd,
    pending: BTreeMap<u64, Piece>,
    page_size: u64,
}

impl Deferral {
    /// Notes the page record `at` of a lazy mapping: filled later.
    pub(super) fn defer(&mut self, at: PageRef) -> u64 {
        let len = u64::from(at.pages) * self.page_size;
        self.pending.insert(
            at.vaddr,
            Piece {
                len,
                skip: 0,
                rec: at,
            },
        );
        len
    }
}

/// Sets up lazy pages for the task of `rb`, its mappings in place and
/// none of its lazy pages written: `Ok(Err(why))` when the kernel refuses
/// (the task's pages then come eagerly).
pub(super) fn attach(rb: &Rebuild<'_>, page_size: u64) -> Result<Result<Deferral, String>, Cause> {
    let p = rb.p;
    let pid = p.task.pid;
    let flags = u64::try_from(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap_or(0);
    let rc = with_remote(&rb.mem, pid, rb.tramp, |r| {
        Ok(r.syscall_raw(nr::USERFAULTFD, [flags, 0, 0, 0, 0, 0])?)
    })?;
    if rc < 0 {
        let errno = i32::try_from(-rc).unwrap_or(libc::EINVAL);
        return Ok(Err(format!(
            "userfaultfd in process {pid}: {}",
            std::io::Error::from_raw_os_error(errno)
        )));
    }
    let fd_t =
        i32::try_from(rc).map_err(|_| Cause::Refused(format!("userfaultfd {rc} in {pid}")))?;
    let taken = crate::engine::files::dup_from(pid, fd_t);
    with_remote(&rb.mem, pid, rb.tramp, |r| {
        Ok(r.close(u64::try_from(rc).unwrap_or(0))?)
    })?;
    let uffd = taken
        .map_err(|e| Cause::Refused(format!("taking the userfaultfd of process {pid}: {e}")))?;
    if let Err(e) = handshake(&uffd) {
        return Ok(Err(format!("userfaultfd API in process {pid}: {e}")));
    }
    for v in p.vmas.iter().filter(|v| lazy_vma(v)) {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: v.start,
                len: v.end - v.start,
            },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // Closing the descriptor unregisters what was: nothing was written
        // into those mappings, so the eager path may still take them.
        if let Err(e) = uffd_ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) {
            return Ok(Err(format!(
                "registering {:#x}-{:#x} ({}) of process {pid}: {e}",
                v.start, v.end, v.name
            )));
        }
    }
    Ok(Ok(Deferral {
        uffd,
        pending: BTreeMap::new(),
        page_size,
    }))
}

/// What a lazy restore served once the tree ran, and how.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LazyStats {
    /// Processes whose pages came lazily (children forked meanwhile included).
    pub processes: usize,
    /// Faults served, and the bytes they brought in.
    pub faults: u64,
    pub fault_bytes: u64,
    /// Bytes fetched in the background.
    pub background_bytes: u64,
    /// Pages the tree touched that the image holds no data for (zero).
    pub zero_pages: u64,
}

/// What the restore tells the server.
#[derive(Debug)]
pub(super) enum Msg {
    /// A process whose pending pieces the server now owns.
    Add(Deferral),
    /// The tree runs (these are its processes): fetch in the background,
    /// and finish once everything is in.
    Run(Vec<i32>),
    /// The restore failed; the tree is gone.
    Abort,
}

/// The restore's end of the server.
#[derive(Debug)]
pub(super) struct Handle {
    tx: mpsc::Sender<Msg>,
    wake: OwnedFd,
}

impl Handle {
    pub(super) fn send(&self, m: Msg) {
        // A server that has ended reads nothing more; its result says why.
        let _ = self.tx.send(m);
        let b = [1u8];
        // SAFETY: writes one byte from `b`; the pipe is non-blocking, and
        // a full one is already awake.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), b.as_ptr().cast(), 1) };
    }
}

/// The server's end: the messages and the pipe that wakes its poll.
#[derive(Debug)]
pub(super) struct Inbox {
    rx: mpsc::Receiver<Msg>,
    wake: OwnedFd,
}

pub(super) fn channel() -> Result<(Handle, Inbox), std::io::Error> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nothing else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (tx, rx) = mpsc::channel();
    Ok((Handle { tx, wake: wr }, Inbox { rx, wake: rd }))
}

#[derive(Debug)]
struct Proc {
    d: Deferral,
    /// Faults whose piece waits for the tree's mm change to be read.
    retry: Vec<u64>,
    dead: bool,
}

enum Fill {
    Done,
    /// The mm is changing: events first, then again.
    Again,
    Gone,
}

/// Serves the tree's lazy pages from `src` until every piece is in, or
/// the restore aborts. A damaged image kills the tree first.
pub(super) fn serve<S: Read + Seek>(
    src: S,
    page_size: u64,
    inbox: Inbox,
    progress: Option<&dyn crate::engine::Progress>,
) -> Result<LazyStats, Cause> {
    let mut s = Server {
        src,
        page_size,
        scratch: Vec::new(),
        buf: vec![0u8; usize::try_from(u64::from(PAGE_BATCH_BYTES).max(page_size)).unwrap_or(0)],
        procs: Vec::new(),
        stats: LazyStats::default(),
        progress,
    };
    let mut roots: Option<Vec<i32>> = None;
    let res = s.run(&inbox, &mut roots);
    if res.is_err() {
        if let Some(r) = &roots {
            kill_trees(r);
        }
    }
    // The descriptors close here: only after a failed tree is killed.
    res.map(|()| s.stats)
}

struct Server<'p, S> {
    src: S,
    page_size: u64,
    scratch: Vec<u8>,
    buf: Vec<u8>,
    procs: Vec<Proc>,
    stats: LazyStats,
    progress: Option<&'p dyn crate::engine::Progress>,
}

impl<S: Read + Seek> Server<'_, S> {
    fn run(&mut self, inbox: &Inbox, roots: &mut Option<Vec<i32>>) -> Result<(), Cause> {
        loop {
            loop {
                match inbox.rx.try_recv() {
                    Ok(Msg::Add(d)) => {
                        self.stats.processes += 1;
                        self.procs.push(Proc {
                            d,
                            retry: Vec::new(),
                            dead: false,
                        });
                    }
                    Ok(Msg::Run(r)) => *roots = Some(r),
                    Ok(Msg::Abort) | Err(mpsc::TryRecvError::Disconnected) if roots.is_none() => {
                        return Ok(())
                    }
                    Ok(Msg::Abort) | Err(_) => break,
                }
            }
            self.procs.retain(|p| !p.dead);
            let running = roots.is_some();
            let left = self
                .procs
                .iter()
                .any(|p| !p.d.pending.is_empty() || !p.retry.is_empty());
            if running && !left {
                return Ok(());
            }
            let mut fds = vec![libc::pollfd {
                fd: inbox.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            fds.extend(self.procs.iter().map(|p| libc::pollfd {
                fd: p.d.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
            let retries = self.procs.iter().any(|p| !p.retry.is_empty());
            let timeout = if (running && left) || retries { 0 } else { -1 };
            let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
            // SAFETY: `fds` holds `n` pollfd structs the kernel fills in.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), n, timeout) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Cause::Io(e));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut sink = [0u8; 64];
                // SAFETY: reads at most 64 bytes into `sink`; non-blocking.
                while unsafe { libc::read(fds[0].fd, sink.as_mut_ptr().cast(), sink.len()) } > 0 {}
            }
            for i in 0..self.procs.len() {
                if fds.get(i + 1).is_some_and(|f| f.revents != 0) {
                    self.events(i)?;
                }
            }
            for i in 0..self.procs.len() {
                let again = std::mem::take(&mut self.procs[i].retry);
                for addr in again {
                    self.fault(i, addr)?;
                }
            }
            if running {
                self.background()?;
            }
        }
    }

    /// Reads and handles every message waiting on process `i`'s descriptor.
    fn events(&mut self, i: usize) -> Result<(), Cause> {
        let mut msgs = [0u8; MSG_BYTES * 16];
        loop {
            let fd = self.procs[i].d.uffd.as_raw_fd();
            // SAFETY: reads whole messages into `msgs`, at most its length.
            let n = unsafe { libc::read(fd, msgs.as_mut_ptr().cast(), msgs.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    _ => return Err(Cause::Io(e)),
                }
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                return Ok(());
            }
            for m in msgs[..n].chunks_exact(MSG_BYTES) {
                let word = |at: usize| {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&m[at..at + 8]);
                    u64::from_ne_bytes(b)
                };
                match m[0] {
                    EVENT_PAGEFAULT => self.fault(i, word(16))?,
                    EVENT_FORK => {
                        let mut b = [0u8; 4];
                        b.copy_from_slice(&m[8..12]);
                        let raw = RawFd::from_ne_bytes(b);
                        // SAFETY: the kernel installed this descriptor in
                        // torpor's table for this message; nothing else
                        // owns it.
                        let uffd = unsafe { OwnedFd::from_raw_fd(raw) };
                        let child = Deferral {
                            uffd,
                            pending: self.procs[i].d.pending.clone(),
                            page_size: self.page_size,
                        };
                        self.stats.processes += 1;
                        self.procs.push(Proc {
                            d: child,
                            retry: Vec::new(),
                            dead: false,
                        });
                    }
                    EVENT_REMAP => {
                        let (from, to, len) = (word(8), word(16), word(24));
                        let pending = &mut self.procs[i].d.pending;
                        for (at, piece) in cut(pending, from, from.saturating_add(len)) {
                            pending.insert(at.wrapping_sub(from).wrapping_add(to), piece);
                        }
                    }
                    EVENT_REMOVE | EVENT_UNMAP => {
                        cut(&mut self.procs[i].d.pending, word(8), word(16));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The task of process `i` waits on `addr`: the piece holding it, or a
    /// zero page where the image holds nothing.
    fn fault(&mut self, i: usize, addr: u64) -> Result<(), Cause> {
        let page = addr & !(self.page_size - 1);
        let found = self.procs[i]
            .d
            .pending
            .range(..=page)
            .next_back()
            .filter(|(&at, p)| page < at + p.len)
            .map(|(&at, _)| at);
        if let Some(at) = found {
            match self.fill(i, at, true)? {
                Fill::Done => self.stats.faults += 1,
                Fill::Again => self.procs[i].retry.push(page),
                Fill::Gone => {}
            }
            return Ok(());
        }
        let fd = self.procs[i].d.uffd.as_raw_fd();
        let mut z = UffdioZeropage {
            range: UffdioRange {
                start: page,
                len: self.page_size,
            },
            mode: 0,
            zeropage: 0,
        };
        match uffd_ioctl(fd, UFFDIO_ZEROPAGE, &mut z) {
            Ok(()) => self.stats.zero_pages += 1,
            Err(e) => match e.raw_os_error() {
                // Already there (filled since): whoever waits is woken.
                Some(libc::EEXIST) => {
                    let mut r = UffdioRange {
                        start: page,
                        len: self.page_size,
                    };
                    let _ = uffd_ioctl(fd, UFFDIO_WAKE, &mut r);
                }
                Some(libc::EAGAIN) => self.procs[i].retry.push(page),
                Some(libc::ENOENT | libc::ESRCH) => {}
                _ => return Err(Cause::Io(e)),
            },
        }
        Ok(())
    }

    /// The lowest piece of the first process that still misses any.
    fn background(&mut self) -> Result<(), Cause> {
        let Some((i, at)) = self
            .procs
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.d.pending.keys().next().map(|&at| (i, at)))
        else {
            return Ok(());
        };
        self.fill(i, at, false).map(drop)
    }

    /// Reads the piece at `at` of process `i` from the image and copies it
    /// into place.
    fn fill(&mut self, i: usize, at: u64, fault: bool) -> Result<Fill, Cause> {
        let Some(piece) = self.procs[i].d.pending.remove(&at) else {
            return Ok(Fill::Gone);
        };
        let ps = u32::try_from(self.page_size).unwrap_or(u32::MAX);
        let info = read_pages_at(
            &mut self.src,
            &piece.rec,
            ps,
            &mut self.scratch,
            &mut self.buf,
        )?;
        // The kernel reads `len` bytes from the buffer: they must be the
        // record's.
        if piece
            .skip
            .checked_add(piece.len)
            .is_none_or(|end| end > info.len as u64)
        {
            return Err(Cause::Refused(format!(
                "{} bytes at {} of a record of {} bytes at {at:#x}",
                piece.len, piece.skip, info.len
            )));
        }
        let fd = self.procs[i].d.uffd.as_raw_fd();
        let mut done = 0u64;
        while done < piece.len {
            let from = usize::try_from(piece.skip + done).unwrap_or(usize::MAX);
            let src = self
                .buf
                .get(from..)
                .ok_or_else(|| Cause::Refused(format!("piece at {at:#x} runs past its record")))?;
            let mut c = UffdioCopy {
                dst: at + done,
                src: src.as_ptr() as u64,
                len: piece.len - done,
                mode: 0,
                copy: 0,
            };
            let rc = uffd_ioctl(fd, UFFDIO_COPY, &mut c);
            let copied = u64::try_from(c.copy).unwrap_or(0);
            match rc {
                Ok(()) => done = piece.len,
                Err(_) if copied > 0 => done += copied,
                Err(e) => match e.raw_os_error() {
                    // A page the tree has again (filled, or zero since):
                    // the rest still comes.
                    Some(libc::EEXIST) => done += self.page_size,
                    Some(libc::EAGAIN) => {
                        self.procs[i].d.pending.insert(
                            at + done,
                            Piece {
                                len: piece.len - done,
                                skip: piece.skip + done,
                                rec: piece.rec,
                            },
                        );
                        self.count(done, fault);
                        return Ok(Fill::Again);
                    }
                    Some(libc::ENOENT) => {
                        self.count(done, fault);
                        return Ok(Fill::Gone);
                    }
                    Some(libc::ESRCH) => {
                        // The process is gone (or execed): nothing to fill.
                        self.procs[i].dead = true;
                        return Ok(Fill::Gone);
                    }
                    _ => return Err(Cause::Io(e)),
                },
            }
        }
        self.count(piece.len, fault);
        Ok(Fill::Done)
    }

    fn count(&mut self, bytes: u64, fault: bool) {
        if fault {
            self.stats.fault_bytes += bytes;
        } else {
            self.stats.background_bytes += bytes;
        }
        if let Some(p) = self.progress {
            p.advance(bytes);
        }
    }
}

/// Removes `[start, end)` from the pieces, returning the parts removed.
fn cut(pending: &mut BTreeMap<u64, Piece>, start: u64, end: u64) -> Vec<(u64, Piece)> {
    let hit: Vec<u64> = pending
        .range(..end)
        .rev()
        .take_while(|(&at, p)| at + p.len > start)
        .map(|(&at, _)| at)
        .collect();
    let mut out = Vec::new();
    for at in hit {
        let Some(p) = pending.remove(&at) else {
            continue;
        };
        let pend = at + p.len;
        if at < start {
            pending.insert(
                at,
                Piece {
                    len: start - at,
                    ..p
                },
            );
        }
        if pend > end {
            pending.insert(
                end,
                Piece {
                    len: pend - end,
                    skip: p.skip + (end - at),
                    rec: p.rec,
                },
            );
        }
        let lo = at.max(start);
        let hi = pend.min(end);
        out.push((
            lo,
            Piece {
                len: hi - lo,
                skip: p.skip + (lo - at),
                rec: p.rec,
            },
        ));
    }
    out
}

/// Kills every process of `roots` and all their descendants.
fn kill_trees(roots: &[i32]) {
    let mut seen: Vec<i32> = Vec::new();
    let mut todo: Vec<i32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if pid <= 0 || seen.contains(&pid) {
            continue;
        }
        seen.push(pid);
        // SAFETY: kill has no memory effects. Stopped first, so none forks
        // a child the walk would miss.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        if let Ok(kids) = procfs::children(pid) {
            todo.extend(kids);
        }
    }
    for &pid in &seen {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(len: u64) -> Piece {
        Piece {
            len,
            skip: 0,
            rec: PageRef {
                offset: 100,
                len: 5,
                vaddr: 0x1000,
                pages: 4,
            },
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
    }

    #[test]
    fn cut_splits_a_piece_and_keeps_the_offsets() {
        let mut m = BTreeMap::new();
        m.insert(0x1000, piece(0x4000));
        m.insert(0x8000, piece(0x1000));
        let out = cut(&mut m, 0x2000, 0x3000);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].0, out[0].1.len, out[0].1.skip),
            (0x2000, 0x1000, 0x1000)
        );
        let left: Vec<(u64, u64, u64)> = m.iter().map(|(&a, p)| (a, p.len, p.skip)).collect();
        assert_eq!(
            left,
            vec![
                (0x1000, 0x1000, 0),
                (0x3000, 0x2000, 0x2000),
                (0x8000, 0x1000, 0)
            ]
        );
        // A range over two pieces takes the tail of one and all of the other.
        let out = cut(&mut m, 0x4000, 0x9000);
        let mut got: Vec<(u64, u64, u64)> = out.iter().map(|(a, p)| (*a, p.len, p.skip)).collect();
        got.sort_unstable();
        assert_eq!(got, vec![(0x4000, 0x1000, 0x3000), (0x8000, 0x1000, 0)]);
        let left: Vec<u64> = m.keys().copied().collect();
        assert_eq!(left, vec![0x1000, 0x3000]);
        assert!(cut(&mut m, 0x5000, 0x8000).is_empty());
    }

    #[test]
    fn only_private_writable_anonymous_data_is_lazy() {
        let v = |prot, shared, backing| Vma {
            start: 0,
            end: 4096,
            prot,
            shared,
            grows_down: false,
            noreserve: false,
            backing,
            name: String::new(),
        };
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        assert!(lazy_vma(&v(rw, false, Backing::Anon)));
        assert!(!lazy_vma(&v(rw | libc::PROT_EXEC, false, Backing::Anon)));
        assert!(!lazy_vma(&v(libc::PROT_READ, false, Backing::Anon)));
        assert!(!lazy_vma(&v(libc::PROT_NONE, false, Backing::Anon)));
        assert!(!lazy_vma(&v(rw, true, Backing::Anon)));
    }
}

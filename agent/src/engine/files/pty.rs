//! Pseudo-terminal pairs the tree holds the master of (a terminal
//! multiplexer, `script`, an ssh server): the master (`/dev/ptmx`) and its
//! slaves (`/dev/pts/N`) come back as one pair again, the slave at the
//! same index.
//!
//! Dump: from a duplicate of the master, `TIOCGPTN` (which slave is its
//! own), the line settings and window size (a master's `TCGETS` and
//! `TIOCGWINSZ` answer for its slave), packet mode and lock state, and the
//! bytes the slave side wrote that the master has not read: read from the
//! master and written back at once through a slave opened with
//! `TIOCGPTPEER`, with output processing off so they queue again as they
//! were. Input the slave has not read yet (typed or written into the
//! master, already through the line discipline) cannot be put back as it
//! was, so such a pair is refused, as is unread output in packet mode. A
//! slave is recorded as its index; once the whole tree is known,
//! [`link`] makes the slaves whose master is not in the tree plain
//! terminals again (`device`).
//!
//! Restore: a devpts instance hands out the lowest free index, so [`Ptys`]
//! opens `/dev/ptmx` until the pair has the recorded index, keeping the
//! pairs it passed until every pair is made; an index taken on this system
//! fails the restore naming it. The slaves are opened from their master
//! (`TIOCGPTPEER`), never by path; the lock is set once every slave is
//! open.
//!
//! Unsafe code: the terminal ioctls, read and write on torpor's own
//! duplicates, with pointers to our buffers and structs.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::engine::state::{DeviceFile, FileKind, OpenFile};
use crate::engine::Cause;
use crate::image::records::{PtyMaster, PtySlave, Termios};

use super::{dup_from, into_raw, last_os, owned, AnonKind, Claim, OpenCx, Probe};

/// The devpts major of the slaves (`UNIX98_PTY_SLAVE_MAJOR`).
const PTS_MAJOR: u32 = 136;

/// The index of a slave link, `/dev/pts/N`.
pub(super) fn slave_index(link: &str) -> Option<u32> {
    let n = link.strip_prefix("/dev/pts/")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

pub(super) fn is_master(link: &str) -> bool {
    link == "/dev/ptmx" || link == "/dev/pts/ptmx"
}

fn ioctl_int(fd: i32, req: libc::Ioctl) -> Result<i32, std::io::Error> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int into `v`.
    if unsafe { libc::ioctl(fd, req, &raw mut v) } < 0 {
        return Err(last_os());
    }
    Ok(v)
}

fn set_int(fd: i32, req: libc::Ioctl, v: i32) -> Result<(), std::io::Error> {
    let v: libc::c_int = v;
    // SAFETY: the request reads one int from `v`.
    if unsafe { libc::ioctl(fd, req, &raw const v) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

fn get_termios(fd: i32) -> Result<libc::termios, std::io::Error> {
    // SAFETY: termios is plain integers; all-zero is valid.
    let mut t: libc::termios = unsafe { core::mem::zeroed() };
    // SAFETY: tcgetattr writes one termios.
    if unsafe { libc::tcgetattr(fd, &raw mut t) } < 0 {
        return Err(last_os());
    }
    Ok(t)
}

fn set_termios(fd: i32, t: &libc::termios) -> Result<(), std::io::Error> {
    // SAFETY: tcsetattr reads one termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

fn to_record(t: &libc::termios) -> Termios {
    Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc: t.c_cc.to_vec(),
    }
}

fn from_record(r: &Termios, base: libc::termios) -> Result<libc::termios, String> {
    let mut t = base;
    if r.cc.len() != t.c_cc.len() {
        return Err(format!(
            "line settings with {} control characters, this system has {}",
            r.cc.len(),
            t.c_cc.len()
        ));
    }
    t.c_iflag = r.iflag;
    t.c_oflag = r.oflag;
    t.c_cflag = r.cflag;
    t.c_lflag = r.lflag;
    t.c_line = r.line;
    t.c_cc.copy_from_slice(&r.cc);
    // The speeds follow cflag (glibc keeps them apart as well).
    // SAFETY: cfsetispeed/cfsetospeed write into `t`.
    unsafe {
        let speed = libc::cfgetospeed(&raw const t);
        libc::cfsetospeed(&raw mut t, speed);
        libc::cfsetispeed(&raw mut t, speed);
    }
    Ok(t)
}

/// The slave of the pair `master` is, opened in torpor (`TIOCGPTPEER`).
fn peer(master: i32, flags: i32) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: TIOCGPTPEER takes the open flags as an integer and returns
    // a new fd.
    owned(libc::c_long::from(unsafe {
        libc::ioctl(
            master,
            libc::TIOCGPTPEER,
            flags | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    }))
}

fn write_all(fd: i32, mut b: &[u8]) -> Result<(), std::io::Error> {
    while !b.is_empty() {
        // SAFETY: writes from our buffer.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return Err(last_os());
        }
        b = &b[n.unsigned_abs()..];
    }
    Ok(())
}

/// Queues `bytes` for the master to read, as the slave side wrote them
/// after output processing: written through the slave with `OPOST` off.
fn queue_output(slave: i32, bytes: &[u8]) -> Result<(), std::io::Error> {
    if bytes.is_empty() {
        return Ok(());
    }
    let was = get_termios(slave)?;
    let mut raw = was;
    raw.c_oflag &= !libc::OPOST;
    set_termios(slave, &raw)?;
    let res = write_all(slave, bytes);
    set_termios(slave, &was)?;
    res
}

fn collect(p: &Probe<'_>) -> Result<PtyMaster, String> {
    let m = dup_from(p.pid, p.fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let fd = m.as_raw_fd();
    let e = |what: &'static str| move |err: std::io::Error| format!("{what}: {err}");
    let index = ioctl_int(fd, libc::TIOCGPTN).map_err(e("TIOCGPTN"))?;
    let index = u32::try_from(index).map_err(|_| format!("TIOCGPTN gave {index}"))?;
    let termios = to_record(&get_termios(fd).map_err(e("TCGETS"))?);
    // SAFETY: winsize is plain integers; all-zero is valid.
    let mut ws: libc::winsize = unsafe { core::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &raw mut ws) } < 0 {
        return Err(format!("TIOCGWINSZ: {}", last_os()));
    }
    let packet = ioctl_int(fd, libc::TIOCGPKT).map_err(e("TIOCGPKT"))? != 0;
    let locked = ioctl_int(fd, libc::TIOCGPTLCK).map_err(e("TIOCGPTLCK"))? != 0;
    // A master answers for its slave, whoever's terminal that is.
    let foreground = ioctl_int(fd, libc::TIOCGPGRP).map_err(e("TIOCGPGRP"))?;
    let queued = ioctl_int(fd, libc::FIONREAD).map_err(e("FIONREAD"))?;
    let queued = usize::try_from(queued).unwrap_or(0);
    // A locked pair has no slave to look through: nothing can have been
    // written on that side, and input typed into the master waits unseen.
    let slave = if locked {
        None
    } else {
        Some(peer(fd, libc::O_RDWR | libc::O_NONBLOCK).map_err(|e| format!("TIOCGPTPEER: {e}"))?)
    };
    let md = match &slave {
        Some(s) => {
            // SAFETY: the fd is ours and stays open across the call.
            let f =
                std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(s.as_raw_fd()) });
            f.metadata()
        }
        None => std::fs::metadata(format!("/dev/pts/{index}")),
    }
    .map_err(|e| format!("the slave /dev/pts/{index}: {e}"))?;
    if let Some(s) = &slave {
        let unread = ioctl_int(s.as_raw_fd(), libc::TIOCINQ).map_err(e("TIOCINQ"))?;
        if unread > 0 {
            return Err(format!(
                "a pseudo-terminal master whose slave /dev/pts/{index} has {unread} bytes of \
                 input not read yet, which torpor cannot queue again as they were"
            ));
        }
    }
    let mut output = Vec::new();
    if queued > 0 {
        if packet {
            return Err(format!(
                "a pseudo-terminal master in packet mode with {queued} bytes of output \
                 not read yet, which torpor cannot queue again as they were"
            ));
        }
        let Some(s) = &slave else {
            return Err(format!(
                "a locked pseudo-terminal master with {queued} bytes not read"
            ));
        };
        output = vec![0u8; queued];
        let mut got = 0;
        while got < queued {
            // SAFETY: reads into our buffer, within its length. The bytes
            // are there, so the read does not block.
            let n = unsafe { libc::read(fd, output[got..].as_mut_ptr().cast(), queued - got) };
            if n <= 0 {
                break;
            }
            got += n.unsigned_abs();
        }
        output.truncate(got);
        // Put them back at once: the frozen tree finds its queue as it was.
        queue_output(s.as_raw_fd(), &output)
            .map_err(|e| format!("queueing {got} unread bytes again: {e}"))?;
    }
    use std::os::unix::fs::MetadataExt;
    Ok(PtyMaster {
        index,
        termios,
        winsize: [ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel],
        packet,
        locked,
        output,
        slave_uid: md.uid(),
        slave_gid: md.gid(),
        slave_mode: md.mode() & 0o7777,
        foreground,
    })
}

impl AnonKind for PtyMaster {
    const NAME: &'static str = "a pseudo-terminal master";
    const CLAIM: Claim = Claim::PtyMaster;

    fn collect(p: &Probe<'_>) -> Result<Self, Cause> {
        collect(p).map_err(|e| p.unsupported(e))
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let flags = cx.flags;
        let m = cx.ptys.master(self.index)?;
        let fd = m.as_raw_fd();
        let refused = |what: &str, e: std::io::Error| {
            Cause::Refused(format!(
                "the pseudo-terminal pair of /dev/pts/{}: {what}: {e}",
                self.index
            ))
        };
        let slave =
            peer(fd, libc::O_RDWR | libc::O_NONBLOCK).map_err(|e| refused("TIOCGPTPEER", e))?;
        let s = slave.as_raw_fd();
        let t = from_record(
            &self.termios,
            get_termios(s).map_err(|e| refused("TCGETS", e))?,
        )
        .map_err(Cause::Refused)?;
        set_termios(s, &t).map_err(|e| refused("TCSETS", e))?;
        queue_output(s, &self.output).map_err(|e| refused("queueing the unread output", e))?;
        let ws = libc::winsize {
            ws_row: self.winsize[0],
            ws_col: self.winsize[1],
            ws_xpixel: self.winsize[2],
            ws_ypixel: self.winsize[3],
        };
        // SAFETY: TIOCSWINSZ reads one winsize.
        if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &raw const ws) } < 0 {
            return Err(refused("TIOCSWINSZ", last_os()));
        }
        set_int(fd, libc::TIOCPKT, i32::from(self.packet)).map_err(|e| refused("TIOCPKT", e))?;
        // SAFETY: fchown/fchmod on our own fd of the slave.
        unsafe {
            if libc::fchown(s, self.slave_uid, self.slave_gid) < 0 {
                return Err(refused("owner of the slave", last_os()));
            }
            if libc::fchmod(s, self.slave_mode & 0o7777) < 0 {
                return Err(refused("mode of the slave", last_os()));
            }
        }
        if self.locked {
            cx.ptys.lock.push(self.index);
        }
        // The description the tree holds is the master itself, with its
        // status flags.
        // SAFETY: F_DUPFD_CLOEXEC on our own fd.
        let dup = owned(libc::c_long::from(unsafe {
            libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0)
        }))?;
        set_status(dup.as_raw_fd(), flags)?;
        Ok(into_raw(dup))
    }
}

/// In a restored process of the foreground group, whose session has the
/// slave as its terminal: the group becomes the foreground again, through
/// the master (which answers for its slave), with SIGTTOU blocked since
/// the group is still a background one.
pub fn set_foreground(master: i32, m: &PtyMaster) -> Result<(), String> {
    if m.foreground <= 0 {
        return Ok(());
    }
    let pgrp: libc::pid_t = m.foreground;
    // SAFETY: sigset_t is plain data; the calls fill and read our sets.
    let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        let mut ttou: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&raw mut ttou);
        libc::sigaddset(&raw mut ttou, libc::SIGTTOU);
        libc::sigprocmask(libc::SIG_BLOCK, &raw const ttou, &raw mut old);
    }
    // SAFETY: TIOCSPGRP reads one pid_t.
    let rc = unsafe { libc::ioctl(master, libc::TIOCSPGRP, &raw const pgrp) };
    let err = last_os();
    // SAFETY: restores the mask read above.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(format!(
            "making process group {pgrp} the foreground of /dev/pts/{}: {err}",
            m.index
        ));
    }
    Ok(())
}

/// The status flags the description had (`O_NONBLOCK`, `O_APPEND`...).
fn set_status(fd: i32, flags: u32) -> Result<(), std::io::Error> {
    let keep = (libc::O_NONBLOCK | libc::O_APPEND) as u32;
    let f = libc::c_int::try_from(flags & keep).unwrap_or(0);
    // SAFETY: F_SETFL with integer flags on our own fd.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, f) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

fn collect_slave(p: &Probe<'_>) -> Result<PtySlave, Cause> {
    let index = slave_index(p.link).ok_or_else(|| p.unsupported("not a pseudo-terminal slave"))?;
    use std::os::unix::fs::MetadataExt;
    let md =
        std::fs::metadata(format!("/proc/{}/fd/{}", p.pid, p.fd)).map_err(|e| p.unsupported(e))?;
    let rdev = md.rdev();
    if libc::major(rdev) < PTS_MAJOR {
        return Err(p.unsupported(format!("a device {rdev:#x}, not a pseudo-terminal slave")));
    }
    Ok(PtySlave { index, rdev })
}

impl AnonKind for PtySlave {
    const NAME: &'static str = "a pseudo-terminal slave";
    const CLAIM: Claim = Claim::PtySlave;

    fn collect(p: &Probe<'_>) -> Result<Self, Cause> {
        collect_slave(p)
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let flags = cx.open_flags() & !libc::O_CLOEXEC;
        let m = cx.ptys.master(self.index)?;
        let s = peer(m.as_raw_fd(), flags).map_err(|e| {
            Cause::Refused(format!(
                "opening /dev/pts/{} from its master: {e}",
                self.index
            ))
        })?;
        Ok(into_raw(s))
    }
}

/// Once every description of the tree is known: a slave whose master the
/// tree does not hold is a terminal like any other, reopened by path.
pub fn link(files: &mut [OpenFile]) {
    let masters: Vec<u32> = files
        .iter()
        .filter_map(|f| match &f.kind {
            FileKind::PtyMaster(m) => Some(m.index),
            _ => None,
        })
        .collect();
    for f in files.iter_mut() {
        if let FileKind::PtySlave(s) = &f.kind {
            if !masters.contains(&s.index) {
                f.kind = FileKind::Device(DeviceFile {
                    path: format!("/dev/pts/{}", s.index),
                    rdev: s.rdev,
                    tty: true,
                });
            }
        }
    }
}

/// Refuses a pair whose master the tree holds while a process outside it
/// holds the slave: that process would be left with no master.
pub fn outside_holders(files: &[OpenFile], tree: &[i32]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let slaves: Vec<(u32, u64, u64)> = files
        .iter()
        .filter_map(|f| match &f.kind {
            FileKind::PtyMaster(m) => {
                let md = std::fs::metadata(format!("/dev/pts/{}", m.index)).ok()?;
                Some((m.index, md.dev(), md.rdev()))
            }
            _ => None,
        })
        .collect();
    if slaves.is_empty() {
        return Ok(());
    }
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if tree.contains(&pid) || u32::try_from(pid) == Ok(me) {
            continue;
        }
        // A process gone meanwhile, or one torpor may not look into,
        // holds nothing here.
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(index) = link.to_str().and_then(slave_index) else {
                continue;
            };
            let Some(&(_, dev, rdev)) = slaves.iter().find(|s| s.0 == index) else {
                continue;
            };
            let Ok(md) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if md.dev() == dev && md.rdev() == rdev {
                return Err(format!(
                    "the pseudo-terminal /dev/pts/{index}, whose master the tree holds, is \
                     also open in process {pid} outside the tree (fd {}), which would be \
                     left without it",
                    fd.file_name().to_string_lossy()
                ));
            }
        }
    }
    Ok(())
}

/// The pseudo-terminal pairs a restore makes, by slave index.
#[derive(Debug, Default)]
pub struct Ptys {
    made: BTreeMap<u32, OwnedFd>,
    /// Pairs opened on the way to an index, closed by `finish`.
    passed: Vec<OwnedFd>,
    /// Pairs locked again by `finish`.
    lock: Vec<u32>,
}

/// How many pairs a restore may open on the way to one index.
const MAX_PASSED: usize = 4096;

impl Ptys {
    /// The master of the pair whose slave is `/dev/pts/INDEX`, made (and
    /// unlocked) the first time it is asked for.
    fn master(&mut self, index: u32) -> Result<&OwnedFd, Cause> {
        if !self.made.contains_key(&index) {
            let m = self.make(index)?;
            self.made.insert(index, m);
        }
        self.made
            .get(&index)
            .ok_or_else(|| Cause::Refused(format!("the pair of /dev/pts/{index}")))
    }

    fn make(&mut self, index: u32) -> Result<OwnedFd, Cause> {
        for _ in 0..MAX_PASSED {
            // SAFETY: open with a constant C string.
            let m = owned(libc::c_long::from(unsafe {
                libc::open(
                    c"/dev/ptmx".as_ptr(),
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            }))
            .map_err(|e| Cause::Refused(format!("opening /dev/ptmx: {e}")))?;
            set_int(m.as_raw_fd(), libc::TIOCSPTLCK, 0)
                .map_err(|e| Cause::Refused(format!("unlocking a new pair: {e}")))?;
            let got = ioctl_int(m.as_raw_fd(), libc::TIOCGPTN)
                .map_err(|e| Cause::Refused(format!("TIOCGPTN of a new pair: {e}")))?;
            let got = u32::try_from(got).unwrap_or(u32::MAX);
            if got == index {
                return Ok(m);
            }
            if got > index {
                return Err(Cause::Refused(format!(
                    "the pseudo-terminal /dev/pts/{index} is in use on this system \
                     (a new pair gets /dev/pts/{got})"
                )));
            }
            self.passed.push(m);
        }
        Err(Cause::Refused(format!(
            "no pseudo-terminal /dev/pts/{index} after {MAX_PASSED} new pairs"
        )))
    }

    /// Every slave is open: lock the pairs that were locked, close the
    /// pairs opened on the way.
    pub fn finish(mut self) -> Result<(), Cause> {
        for i in &self.lock {
            if let Some(m) = self.made.get(i) {
                set_int(m.as_raw_fd(), libc::TIOCSPTLCK, 1).map_err(|e| {
                    Cause::Refused(format!("locking the pair of /dev/pts/{i} again: {e}"))
                })?;
            }
        }
        self.passed.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(slave_index("/dev/pts/0"), Some(0));
        assert_eq!(slave_index("/dev/pts/17"), Some(17));
        assert_eq!(slave_index("/dev/pts/ptmx"), None);
        assert_eq!(slave_index("/dev/pts/"), None);
        assert_eq!(slave_index("/dev/pts/1 (deleted)"), None);
        assert_eq!(slave_index("/dev/tty1"), None);
        assert!(is_master("/dev/ptmx"));
        assert!(is_master("/dev/pts/ptmx"));
        assert!(!is_master("/dev/pts/0"));
    }

    #[test]
    fn slaves_without_their_master_in_the_tree_are_terminals() {
        let file = |kind| OpenFile {
            flags: 2,
            kind,
            sigio: None,
        };
        let mut files = vec![
            file(FileKind::PtySlave(PtySlave {
                index: 4,
                rdev: 0x8804,
            })),
            file(FileKind::PtyMaster(PtyMaster {
                index: 4,
                ..PtyMaster::default()
            })),
            file(FileKind::PtySlave(PtySlave {
                index: 9,
                rdev: 0x8809,
            })),
        ];
        link(&mut files);
        assert_eq!(
            files[0].kind,
            FileKind::PtySlave(PtySlave {
                index: 4,
                rdev: 0x8804
            })
        );
        assert_eq!(
            files[2].kind,
            FileKind::Device(DeviceFile {
                path: "/dev/pts/9".into(),
                rdev: 0x8809,
                tty: true
            })
        );
    }
}

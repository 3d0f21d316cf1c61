//! epoll: the registered fds with their events and data. The instance is
//! created empty; the process that held the targets registers them again
//! under the same fd numbers once its fds are in place, and the kernel then
//! finds the ready ones ready, as before.
//!
//! Unsafe code: epoll_create1, epoll_ctl and kcmp are called through libc with
//! pointers to our structs, and the new fd is taken into an `OwnedFd`.
#![allow(unsafe_code)]

use super::{hex_u64, into_raw, last_os, owned};
use crate::engine::conv;
use crate::image::records::{Epoll, EpollTarget};

/// `KCMP_EPOLL_TFD`: is this file the target registered in that epoll?
const KCMP_EPOLL_TFD: libc::c_long = 7;

#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// One `tfd:` line: `tfd: N events: HEX data: HEX  pos:.. ino:.. sdev:..`.
fn parse_target(line: &str) -> Option<EpollTarget> {
    let mut w = line.split_whitespace();
    if w.next()? != "tfd:" {
        return None;
    }
    let fd: i32 = w.next()?.parse().ok()?;
    if w.next()? != "events:" {
        return None;
    }
    let events = u32::try_from(hex_u64(w.next()?)?).ok()?;
    if w.next()? != "data:" {
        return None;
    }
    let data = hex_u64(w.next()?)?;
    Some(EpollTarget { fd, events, data })
}

pub(super) fn collect(pid: i32, fd: i32, info: &str) -> Result<Epoll, String> {
    let mut targets: Vec<EpollTarget> = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("tfd:")) {
        let t = parse_target(line).ok_or_else(|| format!("unreadable line {line:?}"))?;
        // The target is known by the fd number it was added with; it must
        // still name the same file in this process to be registered again.
        let toff = targets.iter().filter(|o| o.fd == t.fd).count();
        let slot = KcmpEpollSlot {
            efd: conv::fit(fd, "u32", "epoll fd").map_err(|e| e.to_string())?,
            tfd: conv::fit(t.fd, "u32", "epoll target fd").map_err(|e| e.to_string())?,
            toff: conv::fit(toff, "u32", "epoll target position").map_err(|e| e.to_string())?,
        };
        // SAFETY: kcmp reads one kcmp_epoll_slot.
        let r = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                libc::c_long::from(pid),
                libc::c_long::from(pid),
                KCMP_EPOLL_TFD,
                libc::c_long::from(t.fd),
                &raw const slot,
            )
        };
        if r != 0 {
            let why = if r < 0 {
                last_os().to_string()
            } else {
                "fd now names another file".into()
            };
            return Err(format!(
                "registered target fd {} is no longer that fd of process {pid} ({why}); torpor cannot register it again",
                t.fd
            ));
        }
        targets.push(t);
    }
    Ok(Epoll {
        owner: pid,
        targets,
    })
}

pub(super) fn open() -> Result<i32, std::io::Error> {
    // SAFETY: epoll_create1 takes an integer.
    owned(libc::c_long::from(unsafe {
        libc::epoll_create1(libc::EPOLL_CLOEXEC)
    }))
    .map(into_raw)
}

/// Registers the targets again; `epfd` and every target fd are at their
/// numbers in the calling process.
pub(super) fn register(epfd: i32, e: &Epoll) -> Result<(), std::io::Error> {
    for t in &e.targets {
        let mut ev = libc::epoll_event {
            events: t.events,
            u64: t.data,
        };
        // SAFETY: epoll_ctl reads one epoll_event.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, t.fd, &raw mut ev) } < 0 {
            let err = last_os();
            return Err(std::io::Error::new(
                err.kind(),
                format!("adding target fd {}: {err}", t.fd),
            ));
        }
    }
    Ok(())
}

impl super::AnonKind for Epoll {
    const NAME: &'static str = "an epoll instance";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:[eventpoll]");

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let (path, info) = p.fdinfo()?;
        collect(p.pid, p.fd, &info).map_err(|e| p.bad_fdinfo(&path, &e))
    }

    /// An empty instance: its targets are registered by the task that
    /// held them once its fds are at their numbers (`register_epolls`).
    fn open(&self, _cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_line() {
        let t = parse_target(
            "tfd:        3 events: 80000019 data:             1234  pos:0 ino:40e sdev:10",
        )
        .expect("valid");
        assert_eq!(
            t,
            EpollTarget {
                fd: 3,
                events: 0x8000_0019,
                data: 0x1234
            }
        );
        assert_eq!(parse_target("tfd: x events: 1 data: 2"), None);
        assert_eq!(parse_target("tfd: 3 data: 1 events: 2"), None);
    }
}

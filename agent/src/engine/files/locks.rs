//! File locks: `flock`, OFD and POSIX record locks and leases, read from
//! the `lock:` lines of each fd's fdinfo and taken again by the restored
//! process once its fds are in place (flock and OFD locks and leases belong
//! to the open file description, which the fd shares; POSIX locks to the
//! process, which is the one taking them). A lock another process took
//! meanwhile makes the restore fail naming the fd and the range; a lease
//! fails likewise while another process holds the file open in a way the
//! lease excludes.
//!
//! Unsafe code: the locks are taken with `fcntl` and `flock` through libc, with
//! pointers to our `struct flock`.
#![allow(unsafe_code)]

use crate::engine::procfs;
use crate::engine::state::Fd;
use crate::image::records::{FileLock, LockKind};

/// One `lock:` line: `N: FLOCK|OFDLCK|POSIX ADVISORY READ|WRITE pid dev:ino start end`.
fn parse(fd: i32, line: &str) -> Result<Option<FileLock>, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.get(1) == Some(&"->") {
        // A waiter, listed with the lock it waits for; not a lock held.
        return Ok(None);
    }
    let bad = || format!("fd {fd}: unreadable lock line {line:?}");
    let kind = match *w.get(1).ok_or_else(bad)? {
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        "POSIX" => LockKind::Posix,
        "LEASE" => LockKind::Lease,
        other => {
            return Err(format!(
                "fd {fd} holds a {other} lock, which torpor cannot take again"
            ))
        }
    };
    match (kind, *w.get(2).ok_or_else(bad)?) {
        (LockKind::Lease, "ACTIVE") => {}
        // Another process waits for the holder to give the lease up.
        (LockKind::Lease, state) => {
            return Err(format!("fd {fd} holds a lease being broken ({state})"))
        }
        (_, "ADVISORY") => {}
        _ => return Err(format!("fd {fd} holds a mandatory lock")),
    }
    let write = match *w.get(3).ok_or_else(bad)? {
        "WRITE" => true,
        "READ" => false,
        other => return Err(format!("fd {fd} holds a lock of mode {other}")),
    };
    let start: u64 = w.get(6).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let end = match *w.get(7).ok_or_else(bad)? {
        "EOF" => None,
        s => Some(s.parse().map_err(|_| bad())?),
    };
    Ok(Some(FileLock {
        fd,
        kind,
        write,
        start,
        end,
    }))
}

pub(super) fn collect(pid: i32, fds: &[Fd]) -> Result<Vec<FileLock>, String> {
    let mut out: Vec<FileLock> = Vec::new();
    for f in fds {
        let path = format!("/proc/{pid}/fdinfo/{}", f.fd);
        let info = procfs::read(&path).map_err(|e| e.to_string())?;
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("lock:") else {
                continue;
            };
            if let Some(l) = parse(f.fd, rest)? {
                // A lock shows under every fd of its description: keep one.
                let dup = out.iter().any(|o| {
                    o.kind == l.kind
                        && o.write == l.write
                        && o.start == l.start
                        && o.end == l.end
                        && o.fd != l.fd
                        && { fds.iter().find(|x| x.fd == o.fd).map(|x| x.file) == Some(f.file) }
                });
                if !dup {
                    out.push(l);
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn take(l: &FileLock) -> Result<(), String> {
    let err = |what: &str| {
        let range = match l.end {
            Some(e) => format!("{}-{e}", l.start),
            None => format!("{}-EOF", l.start),
        };
        format!(
            "taking the {what} lock on fd {} (bytes {range}) again: {}",
            l.fd,
            std::io::Error::last_os_error()
        )
    };
    if l.kind == LockKind::Lease {
        let kind = if l.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        };
        // SAFETY: fcntl with integer arguments on an fd of this task.
        if unsafe { libc::fcntl(l.fd, libc::F_SETLEASE, kind) } < 0 {
            return Err(format!(
                "taking the {} lease on fd {} again: {}",
                if l.write { "write" } else { "read" },
                l.fd,
                std::io::Error::last_os_error()
            ));
        }
        return Ok(());
    }
    if l.kind == LockKind::Flock {
        let op = if l.write {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        // SAFETY: flock on an fd of this task.
        if unsafe { libc::flock(l.fd, op) } < 0 {
            return Err(err("flock"));
        }
        return Ok(());
    }
    // SAFETY: flock is plain integers; all-zero is valid.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = libc::c_short::try_from(if l.write {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    })
    // F_RDLCK and F_WRLCK are 0 and 1.
    .unwrap_or(0);
    // SEEK_SET is 0.
    fl.l_whence = libc::c_short::try_from(libc::SEEK_SET).unwrap_or(0);
    fl.l_start = libc::off_t::try_from(l.start).map_err(|_| err("range"))?;
    fl.l_len = match l.end {
        Some(e) => libc::off_t::try_from(e - l.start + 1).map_err(|_| err("range"))?,
        None => 0,
    };
    let (cmd, what) = if l.kind == LockKind::Ofd {
        (libc::F_OFD_SETLK, "OFD")
    } else {
        (libc::F_SETLK, "POSIX")
    };
    // SAFETY: fcntl reads one struct flock.
    if unsafe { libc::fcntl(l.fd, cmd, &raw const fl) } < 0 {
        return Err(err(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse(3, "\t1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF")
            .expect("valid")
            .expect("a lock");
        assert_eq!(
            l,
            FileLock {
                fd: 3,
                kind: LockKind::Flock,
                write: true,
                start: 0,
                end: None
            }
        );
        let l = parse(4, "\t2: POSIX  ADVISORY  READ 99 fd:01:77 10 19")
            .expect("valid")
            .expect("a lock");
        assert_eq!(
            l,
            FileLock {
                fd: 4,
                kind: LockKind::Posix,
                write: false,
                start: 10,
                end: Some(19)
            }
        );
        let l = parse(5, "\t3: OFDLCK ADVISORY  WRITE -1 fd:01:77 0 99")
            .expect("valid")
            .expect("a lock");
        assert_eq!(l.kind, LockKind::Ofd);
        assert_eq!(
            parse(5, "\t3: -> POSIX  ADVISORY  WRITE 7 fd:01:77 0 99").expect("valid"),
            None
        );
        let l = parse(6, "\t4: LEASE  ACTIVE    READ 7 fd:01:77 0 EOF")
            .expect("valid")
            .expect("a lease");
        assert_eq!(
            l,
            FileLock {
                fd: 6,
                kind: LockKind::Lease,
                write: false,
                start: 0,
                end: None
            }
        );
        assert_eq!(
            parse(6, "\t4: LEASE  BREAKING  READ 7 fd:01:77 0 EOF"),
            Err("fd 6 holds a lease being broken (BREAKING)".to_string())
        );
        assert!(parse(6, "\t4: POSIX  MANDATORY WRITE 7 fd:01:77 0 EOF").is_err());
    }
}

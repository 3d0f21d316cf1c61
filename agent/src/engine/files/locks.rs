//! File locks: `flock`, OFD and POSIX record locks and leases, read from
//! the `lock:` lines of each fd's fdinfo and taken again once the restored
//! process's fds are in place. flock and OFD locks and leases belong to the
//! open file description, which the fd shares: the process takes them
//! itself before it stops. POSIX locks belong to the process and go with
//! any close of a descriptor of their file, and torpor's own descriptors of
//! the files the process maps (a SQLite `-shm` is locked and mapped shared)
//! are closed in it during the rebuild: torpor takes the POSIX locks in the
//! process with remote `fcntl` calls ([`posix_record`]) once the last of
//! those is closed. A lock another process took meanwhile makes the restore
//! fail naming the fd and the range; a lease fails likewise while another
//! process holds the file open in a way the lease excludes.
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

/// The bytes `l` covers, as messages show them.
fn range(l: &FileLock) -> String {
    match l.end {
        Some(end) => format!("{}-{end}", l.start),
        None => format!("{}-EOF", l.start),
    }
}

/// How a failure to take `l` again reads.
pub fn failed(l: &FileLock, what: &str, e: &std::io::Error) -> String {
    format!(
        "taking the {what} lock on fd {} (bytes {}) again: {e}",
        l.fd,
        range(l)
    )
}

/// The kernel's record lock with 64-bit offsets, as `nr::FCNTL` with
/// `nr::F_SETLK64` reads it: `struct flock` of the 64-bit ABIs, `struct
/// flock64` of 32-bit ARM EABI (whose 64-bit members are 8-byte aligned).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::NoUninit)]
pub struct KFlock {
    pub l_type: i16,
    pub l_whence: i16,
    pub _pad: u32,
    pub l_start: i64,
    pub l_len: i64,
    pub l_pid: i32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<KFlock>() == 32);
const _: () = assert!(core::mem::offset_of!(KFlock, l_start) == 8);

/// The POSIX lock `l` as the record `fcntl` takes in the restored process.
pub(super) fn posix_record(l: &FileLock) -> Result<KFlock, String> {
    let bad = || {
        format!(
            "the POSIX lock on fd {} covers bytes {}, which no lock can",
            l.fd,
            range(l)
        )
    };
    let l_start = i64::try_from(l.start).map_err(|_| bad())?;
    let l_len = match l.end {
        Some(e) if e >= l.start => i64::try_from(e - l.start + 1).map_err(|_| bad())?,
        Some(_) => return Err(bad()),
        // To the end of the file, however far it grows.
        None => 0,
    };
    Ok(KFlock {
        // F_RDLCK and F_WRLCK are 0 and 1 everywhere.
        l_type: i16::from(l.write),
        // SEEK_SET.
        l_whence: 0,
        l_start,
        l_len,
        ..KFlock::default()
    })
}

/// In the restored process, before it stops: its flock and OFD locks and
/// its leases (its POSIX locks come later, see the module doc).
pub(super) fn take(l: &FileLock) -> Result<(), String> {
    let err = |what: &str| failed(l, what, &std::io::Error::last_os_error());
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
    if l.kind == LockKind::Posix {
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
    // SAFETY: fcntl reads one struct flock.
    if unsafe { libc::fcntl(l.fd, libc::F_OFD_SETLK, &raw const fl) } < 0 {
        return Err(err("OFD"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_records() {
        let l = |start, end, write| FileLock {
            fd: 5,
            kind: LockKind::Posix,
            write,
            start,
            end,
        };
        assert_eq!(
            posix_record(&l(128, Some(128), false)),
            Ok(KFlock {
                l_type: 0,
                l_start: 128,
                l_len: 1,
                ..KFlock::default()
            })
        );
        assert_eq!(
            posix_record(&l(4096, None, true)),
            Ok(KFlock {
                l_type: 1,
                l_start: 4096,
                l_len: 0,
                ..KFlock::default()
            })
        );
        assert_eq!(
            posix_record(&l(10, Some(9), true)),
            Err("the POSIX lock on fd 5 covers bytes 10-9, which no lock can".to_string())
        );
        assert_eq!(
            posix_record(&l(1 << 63, None, true)),
            Err(format!(
                "the POSIX lock on fd 5 covers bytes {}-EOF, which no lock can",
                1u64 << 63
            ))
        );
        assert_eq!(
            failed(
                &l(0, None, true),
                "POSIX",
                &std::io::Error::from_raw_os_error(libc::EAGAIN)
            ),
            "taking the POSIX lock on fd 5 (bytes 0-EOF) again: \
             Resource temporarily unavailable (os error 11)"
        );
    }

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

//! fanotify groups: the flags they were made with and their marks, by path.
//! fdinfo shows the group (`fanotify flags:... event-flags:...`) and each
//! mark: an inode mark names its inode by file handle, opened as inotify's
//! watches are (`inotify::path_of`) to learn its path; a mount mark names
//! its mount by id, found in the holder's mountinfo and checked to be the
//! mount its mount point reaches; a filesystem mark names its device, and
//! a mount of it stands for it. A restore calls `fanotify_init` with the
//! same flags and adds every mark again on its path, the events first and
//! the ignored events after, with the mark's flags; the oldest mark first,
//! so fdinfo lists them in the same order (newest first). In a user's
//! image the group is made and marked with the user's file system ids and
//! without `CAP_SYS_ADMIN`, as the user made it.
//!
//! Refused at the dump, naming the fd: events queued unread (they name
//! files by descriptors or handles of the moment and cannot be queued
//! again), flags torpor does not know, and marks a restore cannot make
//! the same (no events at all; a mark that survives modification with
//! nothing to ignore). Permission events read and not yet answered are
//! not in fdinfo: the kernel allows them when the dumped group is closed.
//!
//! Unsafe code: groups are made and marked through libc, with C strings of
//! ours; the queue is measured with `ioctl(FIONREAD)` into an int; the
//! thread's capabilities are read and set with `capget`/`capset` on
//! buffers of ours.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;

use super::inotify::{hex_bytes, mount_of, path_of, unescape, Mark};
use super::{dup_from, hex_u64, into_raw, last_os, owned};
use crate::image::records::{Fanotify, FanotifyMark, FanotifyObject, RawPath};

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
/// The mark flags fdinfo shows (`fanotify_mark_user_flags`).
const MARK_FLAGS: u32 = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;

/// `FAN_REPORT_FID`: events name files by handle, not descriptor.
pub const FAN_REPORT_FID: u32 = 0x200;
/// The class bits: `FAN_CLASS_NOTIF` (0), `_CONTENT` (4), `_PRE_CONTENT` (8).
pub const FAN_CLASS_MASK: u32 = 0xc;
const FAN_CLOEXEC: u32 = 0x1;
const FAN_NONBLOCK: u32 = 0x2;
/// The `fanotify_init` flags torpor knows, through `FAN_REPORT_MNT`; a
/// group with another is refused.
const INIT_FLAGS: u32 = 0x7fff;

/// A mark line of fdinfo, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Inode {
        ino: u64,
        sdev: u64,
        handle_type: i32,
        handle: Vec<u8>,
    },
    Mount(u64),
    Filesystem(u64),
}

#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    on: Line,
    mflags: u32,
    mask: u64,
    ignored: u64,
}

fn parse_mark(line: &str) -> Option<Parsed> {
    let rest = line.strip_prefix("fanotify ")?;
    let mut kv = std::collections::BTreeMap::new();
    for f in rest.split_whitespace() {
        let (k, v) = f.split_once(':')?;
        if kv.insert(k, v).is_some() {
            return None;
        }
    }
    let num = |k: &str| kv.get(k).and_then(|v| hex_u64(v));
    let on = if let Some(ino) = num("ino") {
        let handle = hex_bytes(kv.get("f_handle")?)?;
        if num("fhandle-bytes")? != u64::try_from(handle.len()).ok()? {
            return None;
        }
        Line::Inode {
            ino,
            sdev: num("sdev")?,
            handle_type: i32::try_from(num("fhandle-type")?).ok()?,
            handle,
        }
    } else if let Some(id) = num("mnt_id") {
        Line::Mount(id)
    } else {
        Line::Filesystem(num("sdev")?)
    };
    Some(Parsed {
        on,
        mflags: u32::try_from(num("mflags")?).ok()?,
        mask: num("mask")?,
        ignored: num("ignored_mask")?,
    })
}

/// The group line: `fanotify flags:%x event-flags:%x`.
fn parse_group(info: &str) -> Option<(u32, u32)> {
    info.lines().find_map(|l| {
        let rest = l.strip_prefix("fanotify flags:")?;
        let (flags, ev) = rest.split_once(" event-flags:")?;
        Some((
            u32::try_from(hex_u64(flags)?).ok()?,
            u32::try_from(hex_u64(ev)?).ok()?,
        ))
    })
}

/// The path torpor reaches `path` (of the holder's view) by.
fn resolved(path: &str) -> Result<RawPath, String> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(RawPath(link.as_os_str().as_bytes().to_vec()))
}

/// The mount id `statx` gives for `path`.
fn mount_id_of(path: &str) -> Result<u64, String> {
    let c = std::ffi::CString::new(path).map_err(|_| "a path with NUL".to_string())?;
    // SAFETY: statx writes one struct statx into `sx`.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // Through syscall(2): the ARMv6 musl has no statx wrapper.
    // SAFETY: statx with a valid C string and our struct.
    if unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_MNT_ID,
            &raw mut sx,
        )
    } < 0
    {
        return Err(format!("{path}: statx: {}", last_os()));
    }
    if sx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(format!("{path}: statx gives no mount id"));
    }
    Ok(sx.stx_mnt_id)
}

/// The mount point of mount `id` of `pid`, checked to reach that mount.
fn mount_point(pid: i32, id: u64) -> Result<RawPath, String> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let point = text
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[0].parse::<u64>().ok() == Some(id)).then(|| unescape(f[4]))
        })
        .ok_or_else(|| format!("mount {id} is not in {path}"))?;
    let at = format!("/proc/{pid}/root{point}");
    let reached = mount_id_of(&at)?;
    if reached != id {
        return Err(format!(
            "mount {id} at {point} is covered by mount {reached}"
        ));
    }
    resolved(&at)
}

fn mark_of(pid: i32, p: &Parsed) -> Result<FanotifyMark, String> {
    if p.mflags & !MARK_FLAGS != 0 {
        return Err(format!("mark flags {:#x} torpor does not know", p.mflags));
    }
    if p.mask == 0 && p.ignored == 0 {
        return Err("a mark with no events and none ignored".into());
    }
    if p.mflags & FAN_MARK_IGNORED_SURV_MODIFY != 0 && p.ignored == 0 {
        return Err("a mark surviving modification with no events ignored".into());
    }
    let (object, path) = match &p.on {
        Line::Inode {
            ino,
            sdev,
            handle_type,
            handle,
        } => {
            let m = Mark {
                wd: 0,
                ino: *ino,
                sdev: *sdev,
                mask: 0,
                handle_type: *handle_type,
                handle: handle.clone(),
            };
            (FanotifyObject::Inode, path_of(pid, &m)?)
        }
        Line::Mount(id) => (FanotifyObject::Mount, mount_point(pid, *id)?),
        Line::Filesystem(sdev) => (
            FanotifyObject::Filesystem,
            resolved(&mount_of(pid, *sdev)?)?,
        ),
    };
    Ok(FanotifyMark {
        object,
        flags: p.mflags,
        mask: p.mask,
        ignored_mask: p.ignored,
        path,
    })
}

/// Bytes of events queued unread.
fn queued(f: &OwnedFd) -> Result<i32, String> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &raw mut n) } < 0 {
        return Err(format!("FIONREAD: {}", last_os()));
    }
    Ok(n)
}

/// Refuses a group with events queued unread.
fn check_queue(pid: i32, fd: i32) -> Result<(), String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let waiting = queued(&f)?;
    if waiting > 0 {
        return Err(format!(
            "{waiting} bytes of events wait unread in its queue, which torpor cannot queue again"
        ));
    }
    Ok(())
}

pub(super) fn collect(pid: i32, info: &str) -> Result<Fanotify, String> {
    let (flags, event_flags) =
        parse_group(info).ok_or_else(|| "no fanotify group line".to_string())?;
    if flags & !INIT_FLAGS != 0 {
        return Err(format!(
            "fanotify_init flags {flags:#x} torpor does not know"
        ));
    }
    let mut marks = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("fanotify ")) {
        if line.starts_with("fanotify flags:") {
            continue;
        }
        let p = parse_mark(line).ok_or_else(|| format!("unreadable line {line:?}"))?;
        marks.push(mark_of(pid, &p).map_err(|e| format!("{line:?}: {e}"))?);
    }
    Ok(Fanotify {
        flags,
        event_flags,
        marks,
    })
}

/// Refuses a record no fanotify group can have: it came from a damaged or
/// forged image.
fn check(s: &Fanotify) -> Result<(), String> {
    if s.flags & !INIT_FLAGS != 0 {
        return Err(format!("fanotify_init flags {:#x}", s.flags));
    }
    for m in &s.marks {
        if m.flags & !MARK_FLAGS != 0 {
            return Err(format!("mark flags {:#x} on {}", m.flags, m.path));
        }
        if u32::try_from(m.mask).is_err() || u32::try_from(m.ignored_mask).is_err() {
            return Err(format!("a mark mask of more than 32 bits on {}", m.path));
        }
    }
    Ok(())
}

/// In a user's image, why a group is one the user could not have made:
/// an unprivileged group reports by handle (`FAN_REPORT_FID`), is of the
/// notification class, and marks only files and directories.
pub fn user_may(s: &Fanotify) -> Result<(), String> {
    if s.flags & FAN_REPORT_FID == 0 {
        return Err("reports events by descriptor (no FAN_REPORT_FID)".into());
    }
    if s.flags & FAN_CLASS_MASK != 0 {
        return Err("is of a permission class".into());
    }
    // FAN_UNLIMITED_QUEUE, FAN_UNLIMITED_MARKS, FAN_ENABLE_AUDIT.
    if s.flags & 0x70 != 0 {
        return Err(format!("has admin flags {:#x}", s.flags & 0x70));
    }
    if let Some(m) = s.marks.iter().find(|m| m.object != FanotifyObject::Inode) {
        return Err(format!(
            "marks the {} of {}",
            if m.object == FanotifyObject::Mount {
                "mount"
            } else {
                "filesystem"
            },
            m.path
        ));
    }
    Ok(())
}

fn mark(fd: i32, flags: u32, mask: u64, path: &str) -> Result<(), std::io::Error> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::other(format!("{path}: a path with NUL")))?;
    // SAFETY: fanotify_mark with a valid C string.
    if unsafe { libc::fanotify_mark(fd, flags, mask, libc::AT_FDCWD, c.as_ptr()) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

/// `CAP_SYS_ADMIN`, which makes a fanotify group privileged.
const CAP_SYS_ADMIN: u32 = 21;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Runs `f` with `CAP_SYS_ADMIN` out of the calling thread's effective
/// capabilities (it stays permitted), and puts it back after.
fn without_admin<T>(f: impl FnOnce() -> T) -> Result<T, std::io::Error> {
    // Header {version, pid 0 (this thread)}, then two {effective,
    // permitted, inheritable} blocks: capabilities 0-31 and 32-63.
    let header = [CAPABILITY_VERSION_3, 0];
    let mut caps = [0u32; 6];
    // SAFETY: capget reads the header and writes two blocks into `caps`.
    if unsafe { libc::syscall(libc::SYS_capget, header.as_ptr(), caps.as_mut_ptr()) } < 0 {
        return Err(last_os());
    }
    let mut less = caps;
    less[0] &= !(1 << CAP_SYS_ADMIN);
    // SAFETY: capset reads the header and the two blocks of `less`; it
    // changes the calling thread only.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), less.as_ptr()) } < 0 {
        return Err(last_os());
    }
    let out = f();
    // SAFETY: as above, with the blocks the thread had; raising an
    // effective capability that is still permitted.
    if unsafe { libc::syscall(libc::SYS_capset, header.as_ptr(), caps.as_ptr()) } < 0 {
        return Err(last_os());
    }
    Ok(out)
}

pub(super) fn open(s: &Fanotify, cx: &super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
    check(s).map_err(|e| crate::engine::Cause::Refused(format!("a fanotify record: {e}")))?;
    if cx.opening.root_asked {
        return make(s, cx);
    }
    // A user's group is made and marked with the user's rights: the kernel
    // makes it unprivileged (it hides the pids of other processes from its
    // events) and checks each mark as it would have for the user.
    super::owner::as_user(cx.opening.who, || without_admin(|| make(s, cx)))
        .and_then(|r| r)
        .map_err(crate::engine::Cause::from)?
}

/// Makes the group and adds its marks.
fn make(s: &Fanotify, cx: &super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
    // SAFETY: fanotify_init takes integers only.
    let f = owned(libc::c_long::from(unsafe {
        libc::fanotify_init(s.flags, s.event_flags)
    }))
    .map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "fanotify_init flags {:#x} event flags {:#x}: {e}",
                s.flags, s.event_flags
            ),
        )
    })?;
    let fd = f.as_raw_fd();
    if s.flags & FAN_CLOEXEC == 0 {
        // SAFETY: F_SETFD on our fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // fdinfo lists the newest mark first: adding them from the last puts
    // them back in the same order.
    for m in s.marks.iter().rev() {
        // Reached as the holder, through no symbolic link.
        let p = std::str::from_utf8(m.path.as_bytes()).map_err(|_| {
            crate::engine::Cause::Refused(format!("fanotify mark path {} is not UTF-8", m.path))
        })?;
        let at = cx
            .opening
            .open("fanotify mark", p, libc::O_PATH | libc::O_CLOEXEC)?;
        let at = owned(libc::c_long::from(at))?;
        let path = format!("/proc/self/fd/{}", at.as_raw_fd());
        let kind = match m.object {
            FanotifyObject::Inode => 0,
            FanotifyObject::Mount => FAN_MARK_MOUNT,
            FanotifyObject::Filesystem => FAN_MARK_FILESYSTEM,
        };
        let base = FAN_MARK_ADD | kind | (m.flags & FAN_MARK_EVICTABLE);
        let what = |e: std::io::Error, which: &str, mask: u64| {
            std::io::Error::new(
                e.kind(),
                format!("marking {} for {which} {mask:#x}: {e}", m.path),
            )
        };
        if m.mask != 0 {
            mark(fd, base, m.mask, &path).map_err(|e| what(e, "events", m.mask))?;
        }
        if m.ignored_mask != 0 {
            let ignore = if m.flags & FAN_MARK_IGNORE != 0 {
                FAN_MARK_IGNORE
            } else {
                FAN_MARK_IGNORED_MASK
            };
            let flags = base | ignore | (m.flags & FAN_MARK_IGNORED_SURV_MODIFY);
            mark(fd, flags, m.ignored_mask, &path)
                .map_err(|e| what(e, "ignored events", m.ignored_mask))?;
        }
    }
    let nonblock = s.flags & FAN_NONBLOCK != 0;
    if nonblock != cx.nonblock() {
        let fl = if cx.nonblock() { libc::O_NONBLOCK } else { 0 };
        // SAFETY: F_GETFL/F_SETFL on our fd.
        let now = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if now < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, (now & !libc::O_NONBLOCK) | fl) } < 0
        {
            return Err(last_os().into());
        }
    }
    Ok(into_raw(f))
}

impl super::AnonKind for Fanotify {
    const NAME: &'static str = "a fanotify group";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:[fanotify]");

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        check_queue(p.pid, p.fd).map_err(|e| p.unsupported(format!("a fanotify group: {e}")))?;
        let (path, info) = p.fdinfo()?;
        collect(p.pid, &info).map_err(|e| p.bad_fdinfo(&path, &e))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        open(self, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_lines() {
        let p = parse_mark("fanotify ino:3c4a7 sdev:fe00000 mflags:40 mask:a ignored_mask:20 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000").expect("inode");
        assert_eq!(
            p,
            Parsed {
                on: Line::Inode {
                    ino: 0x3c4a7,
                    sdev: 0xfe0_0000,
                    handle_type: 1,
                    handle: vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0],
                },
                mflags: 0x40,
                mask: 0xa,
                ignored: 0x20,
            }
        );
        let p = parse_mark("fanotify mnt_id:1d mflags:0 mask:20 ignored_mask:0").expect("mount");
        assert_eq!((p.on, p.mask), (Line::Mount(0x1d), 0x20));
        let p = parse_mark("fanotify sdev:800001 mflags:0 mask:2 ignored_mask:0").expect("fs");
        assert_eq!(p.on, Line::Filesystem(0x80_0001));
        // A handle whose length disagrees, a field twice, no mask.
        assert!(parse_mark("fanotify ino:1 sdev:1 mflags:0 mask:2 ignored_mask:0 fhandle-bytes:4 fhandle-type:1 f_handle:00").is_none());
        assert!(parse_mark("fanotify sdev:1 sdev:2 mflags:0 mask:2 ignored_mask:0").is_none());
        assert!(parse_mark("fanotify sdev:1 mflags:0 ignored_mask:0").is_none());
        assert_eq!(
            parse_group("pos:\t0\nflags:\t02004002\nfanotify flags:203 event-flags:8000\n"),
            Some((0x203, 0x8000))
        );
    }

    #[test]
    fn what_a_user_may_hold() {
        let m = FanotifyMark {
            mask: 2,
            path: "/tmp/x".into(),
            ..FanotifyMark::default()
        };
        let g = Fanotify {
            flags: FAN_REPORT_FID,
            event_flags: 0,
            marks: vec![m.clone()],
        };
        assert_eq!(user_may(&g), Ok(()));
        let by_fd = Fanotify {
            flags: 0,
            ..g.clone()
        };
        assert!(user_may(&by_fd).is_err());
        let content = Fanotify {
            flags: FAN_REPORT_FID | 4,
            ..g.clone()
        };
        assert!(user_may(&content).is_err());
        let mount = Fanotify {
            marks: vec![FanotifyMark {
                object: FanotifyObject::Mount,
                ..m
            }],
            ..g
        };
        assert_eq!(user_may(&mount), Err("marks the mount of /tmp/x".into()));
    }

    #[test]
    fn forged_records_are_refused() {
        let ok = Fanotify {
            flags: 3,
            event_flags: 0,
            marks: vec![FanotifyMark {
                mask: 2,
                ..FanotifyMark::default()
            }],
        };
        assert!(check(&ok).is_ok());
        let mut bad = ok.clone();
        bad.flags = 0x10000;
        assert!(check(&bad).is_err());
        let mut bad = ok.clone();
        bad.marks[0].flags = 0x1;
        assert!(check(&bad).is_err());
        let mut bad = ok;
        bad.marks[0].mask = 1 << 40;
        assert!(check(&bad).is_err());
    }
}

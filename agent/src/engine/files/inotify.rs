//! inotify: watches by path and mask. fdinfo names a watched inode only by
//! file handle; torpor opens the handle (open_by_handle_at, on a mount of
//! the same device) to learn its path. A restore adds the watches again in
//! wd order, skipping wd numbers until each matches where the kernel allows
//! (it allocates them cyclically). Events queued at the dump are not kept.
//!
//! Unsafe code: inotify instances and watches are made and read through libc,
//! with C strings and buffers of ours.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use super::{hex_u64, into_raw, last_os, owned};
use crate::engine::conv;
use crate::image::records::{Inotify, InotifyWatch, RawPath};

/// Gives up matching a wd number after this many skipped numbers.
const WD_SKIP_LIMIT: i32 = 4096;

/// A mark line of fdinfo; fanotify's inode marks name their inode the
/// same way (`fanotify`).
pub(super) struct Mark {
    pub(super) wd: i32,
    pub(super) ino: u64,
    pub(super) sdev: u64,
    pub(super) mask: u32,
    pub(super) handle_type: i32,
    pub(super) handle: Vec<u8>,
}

/// The bytes of a hex string (`f_handle`).
pub(super) fn hex_bytes(v: &str) -> Option<Vec<u8>> {
    if v.len() % 2 != 0 || !v.is_ascii() {
        return None;
    }
    (0..v.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok())
        .collect()
}

fn parse_mark(line: &str) -> Option<Mark> {
    let rest = line.strip_prefix("inotify ")?;
    let mut m = Mark {
        wd: 0,
        ino: 0,
        sdev: 0,
        mask: 0,
        handle_type: 0,
        handle: Vec::new(),
    };
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once(':')?;
        match k {
            "wd" => m.wd = i32::try_from(hex_u64(v)?).ok()?,
            "ino" => m.ino = hex_u64(v)?,
            "sdev" => m.sdev = hex_u64(v)?,
            "mask" => m.mask = u32::try_from(hex_u64(v)?).ok()?,
            "fhandle-type" => m.handle_type = i32::try_from(hex_u64(v)?).ok()?,
            "f_handle" => m.handle = hex_bytes(v)?,
            _ => {}
        }
    }
    Some(m)
}

/// A mountinfo field with its octal escapes (`\040` for a space, `\134`
/// for a backslash...) undone.
pub(super) fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        if let Some(c) = code {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A mount point of the device the kernel calls `sdev` (its internal
/// dev_t: major << 20 | minor), as `pid` sees it; a mount of the device's
/// root first, so every inode of it is reachable.
pub(super) fn mount_of(pid: i32, sdev: u64) -> Result<String, String> {
    let want = format!("{}:{}", sdev >> 20, sdev & 0xf_ffff);
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut found: Option<String> = None;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || f[2] != want {
            continue;
        }
        let point = format!("/proc/{pid}/root{}", unescape(f[4]));
        if f[3] == "/" {
            return Ok(point);
        }
        found.get_or_insert(point);
    }
    found.ok_or_else(|| format!("no mount of device {want}"))
}

/// The path of a watched inode, found through its file handle.
pub(super) fn path_of(pid: i32, m: &Mark) -> Result<RawPath, String> {
    let mount = mount_of(pid, m.sdev)?;
    let c = std::ffi::CString::new(mount.clone()).map_err(|_| "mount path with NUL".to_string())?;
    // SAFETY: open with a valid C string. (open_by_handle_at refuses an
    // O_PATH mount fd.)
    let mfd = owned(libc::c_long::from(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    }))
    .map_err(|e| format!("{mount}: {e}"))?;
    // struct file_handle: handle_bytes (u32), handle_type (int), bytes.
    let mut fh = Vec::with_capacity(8 + m.handle.len());
    let handle_bytes: u32 =
        conv::fit(m.handle.len(), "u32", "file handle length").map_err(|e| e.to_string())?;
    fh.extend_from_slice(&handle_bytes.to_ne_bytes());
    fh.extend_from_slice(&m.handle_type.to_ne_bytes());
    fh.extend_from_slice(&m.handle);
    let f: OwnedFd = owned(
        // SAFETY: open_by_handle_at reads the file_handle in `fh`.
        unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                libc::c_long::from(mfd.as_raw_fd()),
                fh.as_ptr(),
                libc::c_long::from(libc::O_PATH | libc::O_CLOEXEC),
            )
        },
    )
    .map_err(|e| format!("watched inode {:#x}: open_by_handle_at: {e}", m.ino))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    let md = std::fs::metadata(&link)
        .map_err(|e| format!("watched inode {:#x} at {}: {e}", m.ino, link.display()))?;
    if md.ino() != m.ino {
        return Err(format!(
            "watched inode {:#x} has no reachable path (found {})",
            m.ino,
            link.display()
        ));
    }
    Ok(RawPath(link.as_os_str().as_bytes().to_vec()))
}

pub(super) fn collect(pid: i32, info: &str) -> Result<Inotify, String> {
    let mut watches = Vec::new();
    for line in info.lines().filter(|l| l.starts_with("inotify ")) {
        let m = parse_mark(line).ok_or_else(|| format!("unreadable line {line:?}"))?;
        let path = path_of(pid, &m).map_err(|e| format!("watch {}: {e}", m.wd))?;
        watches.push(InotifyWatch {
            wd: m.wd,
            mask: m.mask,
            path,
        });
    }
    watches.sort_by_key(|w| w.wd);
    Ok(Inotify { watches })
}

fn add(fd: i32, path: &std::ffi::CStr, mask: u32) -> Result<i32, std::io::Error> {
    // SAFETY: inotify_add_watch with a valid C string.
    let wd = unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) };
    if wd < 0 {
        return Err(last_os());
    }
    Ok(wd)
}

pub(super) fn open(s: &Inotify, nonblock: bool) -> Result<i32, std::io::Error> {
    // Non-blocking while torpor drains the events of skipped wds.
    // SAFETY: inotify_init1 takes an integer.
    let f = owned(libc::c_long::from(unsafe {
        libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK)
    }))?;
    let fd = f.as_raw_fd();
    let mut skipped = false;
    for w in &s.watches {
        let c = std::ffi::CString::new(w.path.as_bytes().to_vec())
            .map_err(|_| std::io::Error::other(format!("watch {}: path with NUL", w.wd)))?;
        let mut tries = 0;
        loop {
            let wd = add(fd, &c, w.mask)
                .map_err(|e| std::io::Error::new(e.kind(), format!("watching {}: {e}", w.path)))?;
            if wd >= w.wd || tries >= WD_SKIP_LIMIT {
                break;
            }
            // SAFETY: removing the watch just added.
            unsafe { libc::inotify_rm_watch(fd, wd) };
            skipped = true;
            tries += 1;
        }
    }
    if skipped {
        // Each removal queued an IN_IGNORED event the app never asked for.
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer until the queue is empty.
        while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
    if !nonblock {
        // SAFETY: F_SETFL on our fd.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, 0) } < 0 {
            return Err(last_os());
        }
    }
    Ok(into_raw(f))
}

impl super::AnonKind for Inotify {
    const NAME: &'static str = "an inotify instance";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:inotify");

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let (path, info) = p.fdinfo()?;
        collect(p.pid, &info).map_err(|e| p.bad_fdinfo(&path, &e))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_line() {
        let m = parse_mark(
            "inotify wd:1f ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000",
        )
        .expect("valid");
        assert_eq!(
            (m.wd, m.ino, m.sdev, m.mask, m.handle_type),
            (0x1f, 0x3c4a7, 0xfe0_0000, 0x300, 1)
        );
        assert_eq!(m.handle, vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
        assert!(parse_mark("inotify wd:1 f_handle:abc").is_none());
        assert!(parse_mark("fanotify wd:1").is_none());
        assert_eq!(unescape("/mnt/a\\040b\\134c\\0"), "/mnt/a b\\c\\0");
    }
}

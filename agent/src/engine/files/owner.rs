//! Opening the tree's files with the rights of the task that held them.
//!
//! torpor restores as root, but every path in an image was chosen by the
//! tree, and the file system may have changed since. So a restore opens,
//! creates and writes a file by name only:
//!
//! * as the task that held it: the calling thread's fsuid, fsgid and
//!   supplementary groups switched to the task's for the open
//!   ([`as_user`]; raw `setfsuid`/`setfsgid`/`setgroups`, which on Linux
//!   change the calling thread only, and an fsuid other than 0 drops the
//!   file-system capabilities root would override permissions with);
//! * without following a symbolic link anywhere in the path
//!   ([`open_no_symlinks`]: `openat2` with `RESOLVE_NO_SYMLINKS`, or a
//!   walk with `O_NOFOLLOW` on each component where the kernel has no
//!   `openat2`);
//! * and, where the image recorded it ([`FileOwner`]), only if the file
//!   opened is the inode of the dump, of the same type and owner
//!   ([`changes`]).
//!
//! Unsafe code: the credential switches, `openat2`, `openat` and `fstatat`
//! are raw libc calls.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::engine::state::{ImageState, ProcessState};
use crate::engine::Cause;
use crate::image::records::FileOwner;

use super::unlinked_dir_exists;

/// Whose rights a restore uses to open a file: the fs ids and groups of
/// the task that held it at the dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acting {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Acting {
    /// The fs uid, fs gid and groups of `p` as dumped.
    pub fn of(p: &ProcessState) -> Acting {
        Acting {
            uid: p.task.creds.fsuid,
            gid: p.task.creds.fsgid,
            groups: p.task.creds.groups.clone(),
        }
    }

    /// Root's own rights (for descriptors of torpor itself).
    pub fn root() -> Acting {
        Acting {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }
}

#[cfg(target_arch = "arm")]
mod nr {
    pub const SETFSUID: libc::c_long = libc::SYS_setfsuid32;
    pub const SETFSGID: libc::c_long = libc::SYS_setfsgid32;
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    pub const GETGROUPS: libc::c_long = libc::SYS_getgroups32;
}

#[cfg(not(target_arch = "arm"))]
mod nr {
    pub const SETFSUID: libc::c_long = libc::SYS_setfsuid;
    pub const SETFSGID: libc::c_long = libc::SYS_setfsgid;
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
    pub const GETGROUPS: libc::c_long = libc::SYS_getgroups;
}

/// `setfsuid`/`setfsgid` of the calling thread; returns the previous id.
fn set_fs_id(nr: libc::c_long, id: u32) -> u32 {
    // SAFETY: setfsuid/setfsgid take one integer and change only the
    // calling thread's credentials.
    let old = unsafe { libc::syscall(nr, id) };
    // The previous id, which the kernel always returns.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let old = old as u32;
    old
}

/// The calling thread's fs id (`setfsuid(-1)` changes nothing).
fn fs_id(nr: libc::c_long) -> u32 {
    set_fs_id(nr, u32::MAX)
}

fn groups() -> Result<Vec<u32>, std::io::Error> {
    // SAFETY: a size of 0 asks for the count only.
    let n = unsafe { libc::syscall(nr::GETGROUPS, 0 as libc::c_int, std::ptr::null_mut::<u32>()) };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    let mut g = vec![0u32; n];
    let size = libc::c_int::try_from(n).map_err(|_| std::io::Error::other("too many groups"))?;
    // SAFETY: the buffer holds `n` gids.
    let got = unsafe { libc::syscall(nr::GETGROUPS, size, g.as_mut_ptr()) };
    let got = usize::try_from(got).map_err(|_| std::io::Error::last_os_error())?;
    g.truncate(got);
    Ok(g)
}

fn set_groups(g: &[u32]) -> Result<(), std::io::Error> {
    let size =
        libc::size_t::try_from(g.len()).map_err(|_| std::io::Error::other("too many groups"))?;
    // SAFETY: the raw syscall changes the calling thread's groups only
    // (unlike libc's setgroups, which changes every thread); the buffer
    // holds `size` gids.
    if unsafe { libc::syscall(nr::SETGROUPS, size, g.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` with the calling thread's fsuid, fsgid and groups those of
/// `who`, and switches back to torpor's own after, whatever `f` returned.
pub fn as_user<T>(who: &Acting, f: impl FnOnce() -> T) -> Result<T, std::io::Error> {
    let old_uid = fs_id(nr::SETFSUID);
    if old_uid != 0 {
        // Not root: torpor's own rights are no more than the user's.
        return Ok(f());
    }
    let old_gid = fs_id(nr::SETFSGID);
    let old_groups = groups()?;
    let back = |old_groups: &[u32]| {
        set_fs_id(nr::SETFSUID, old_uid);
        set_fs_id(nr::SETFSGID, old_gid);
        // Torpor's own groups, which it had the right to set before.
        let _ = set_groups(old_groups);
    };
    set_groups(&who.groups)?;
    set_fs_id(nr::SETFSGID, who.gid);
    set_fs_id(nr::SETFSUID, who.uid);
    if fs_id(nr::SETFSUID) != who.uid || fs_id(nr::SETFSGID) != who.gid {
        back(&old_groups);
        return Err(std::io::Error::other(format!(
            "cannot take fs ids {}:{}",
            who.uid, who.gid
        )));
    }
    let out = f();
    back(&old_groups);
    Ok(out)
}

fn cstr(s: &str) -> Result<CString, std::io::Error> {
    CString::new(s).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("path {s:?} holds a NUL byte"),
        )
    })
}

#[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit ARM
fn owned(fd: libc::c_long) -> Result<OwnedFd, std::io::Error> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the absolute `path` with `flags` (`O_CLOEXEC` added) and `mode`,
/// refusing a symbolic link in any component with `ELOOP`.
pub fn open_no_symlinks(path: &str, flags: i32, mode: u32) -> Result<OwnedFd, std::io::Error> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain integers; all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    #[allow(clippy::cast_sign_loss)]
    let f = (flags | libc::O_CLOEXEC) as u64;
    how.flags = f;
    // The kernel refuses a mode without O_CREAT or O_TMPFILE.
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        how.mode = u64::from(mode);
    }
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the path and `how` (its size given).
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &raw const how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    match owned(r) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => open_walk(path, flags, mode),
        other => other,
    }
}

/// [`open_no_symlinks`] for kernels without `openat2`: each component
/// opened with `O_NOFOLLOW` in the one before.
fn open_walk(path: &str, flags: i32, mode: u32) -> Result<OwnedFd, std::io::Error> {
    if !path.starts_with('/') {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.contains(&"..") {
        return Err(std::io::Error::from_raw_os_error(libc::EXDEV));
    }
    let open_at = |dir: i32, name: &str, flags: i32| -> Result<OwnedFd, std::io::Error> {
        let c = cstr(name)?;
        // SAFETY: openat with a valid C string and a directory fd of ours.
        let r = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
        let r = owned(libc::c_long::from(r));
        if let Err(e) = &r {
            if e.raw_os_error() == Some(libc::ENOTDIR) && is_symlink(dir, &c) {
                return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
            }
        }
        r
    };
    let Some((last, dirs)) = parts.split_last() else {
        return open_at(libc::AT_FDCWD, "/", flags);
    };
    let mut dir = open_at(libc::AT_FDCWD, "/", libc::O_PATH | libc::O_DIRECTORY)?;
    for d in dirs {
        dir = open_at(
            dir.as_raw_fd(),
            d,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        )?;
    }
    open_at(dir.as_raw_fd(), last, flags | libc::O_NOFOLLOW)
}

fn is_symlink(dir: i32, name: &CString) -> bool {
    // SAFETY: stat is plain integers; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat writes one struct.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &raw mut st, libc::AT_SYMLINK_NOFOLLOW) };
    r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Opens `path` as `who`, without symbolic links.
pub fn open_as(who: &Acting, path: &str, flags: i32, mode: u32) -> Result<OwnedFd, std::io::Error> {
    as_user(who, || open_no_symlinks(path, flags, mode))?
}

/// Whether `e` is a refusal of the caller's rights.
pub fn denied(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// What a file type is called in messages.
pub fn type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "a file of unknown type",
    }
}

/// The metadata of what `fd` opened.
pub fn metadata(fd: &OwnedFd) -> Result<std::fs::Metadata, std::io::Error> {
    let f = std::fs::File::from(fd.try_clone()?);
    f.metadata()
}

/// How the file `md` differs from the one the dump recorded, in words;
/// empty when it is the same inode, type and owner.
pub fn changes(md: &std::fs::Metadata, rec: &FileOwner) -> Vec<String> {
    let mut out = Vec::new();
    if (md.dev(), md.ino()) != (rec.dev, rec.inode) {
        out.push(format!(
            "inode {} on device {:#x}, the dump's was inode {} on device {:#x}",
            md.ino(),
            md.dev(),
            rec.inode,
            rec.dev
        ));
    }
    if md.mode() & libc::S_IFMT != rec.mode & libc::S_IFMT {
        out.push(format!(
            "{}, the dump's was {}",
            type_name(md.mode()),
            type_name(rec.mode)
        ));
    }
    if (md.uid(), md.gid()) != (rec.uid, rec.gid) {
        out.push(format!(
            "owner {}:{}, the dump's was {}:{}",
            md.uid(),
            md.gid(),
            rec.uid,
            rec.gid
        ));
    }
    out
}

/// The record of what `path` is now, as the dump records it.
pub fn record_of(path: &str, md: &std::fs::Metadata) -> FileOwner {
    FileOwner {
        path: path.into(),
        dev: md.dev(),
        inode: md.ino(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// The refusal of an open of `path` (`what`: "open file", "FIFO"...) that
/// failed with `e`, said plainly where the cause is one of the rules.
pub fn open_error(what: &str, path: &str, who: &Acting, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) => format!(
            "{what} {path} is reached through a symbolic link now, which a restore never follows"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "{what} {path}: uid {} (its owner at the dump) may not open it: {e}",
            who.uid
        ),
        _ => format!("{what} {path}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_any_component_is_refused() {
        let d = std::env::temp_dir().join(format!("torpor-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("real")).expect("dir");
        std::fs::write(d.join("real/f"), b"x").expect("file");
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).expect("link");
        std::os::unix::fs::symlink(d.join("real/f"), d.join("real/g")).expect("link");
        let p = |s: &str| d.join(s).to_string_lossy().into_owned();
        assert!(open_no_symlinks(&p("real/f"), libc::O_RDONLY, 0).is_ok());
        for bad in ["link/f", "real/g"] {
            let e = open_no_symlinks(&p(bad), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{bad}");
            let e = open_walk(&p(bad), libc::O_RDONLY, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{bad} (walk)");
        }
        assert!(open_walk(&p("real/f"), libc::O_RDONLY, 0).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn changes_name_inode_type_and_owner() {
        let md = std::fs::metadata("/").expect("root");
        let same = record_of("/", &md);
        assert!(changes(&md, &same).is_empty());
        let other = FileOwner {
            inode: md.ino() + 1,
            mode: libc::S_IFIFO | 0o600,
            uid: md.uid() + 7,
            ..same.clone()
        };
        let c = changes(&md, &other);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[1], "a directory, the dump's was a FIFO");
    }
}

/// Whether a file its holder may no longer open by name (it opened it
/// before giving up rights) may be opened with torpor's own: only in an
/// image root asked for, and only a path whose identity the image records.
pub fn may_open_as_root(st: &ImageState, path: &str) -> bool {
    st.requested_by.as_ref().is_none_or(|r| r.uid == 0) && st.owners.contains_key(path)
}

/// Why a path cannot be used.
#[derive(Debug)]
pub enum Check {
    /// It does not exist: the caller says so in its own words.
    Gone,
    Refused(String),
}

/// How much of the dump's record must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Same {
    /// The inode (device and inode number), type and owner.
    Inode,
    /// The type and owner: a directory something is created in, which may
    /// be another inode after a reboot (tmpfs).
    Owner,
    /// The type only: a device (a terminal's owner is whoever uses it).
    Type,
}

/// Opens `path` as `who` through no symbolic link (`O_PATH`) and compares
/// it with the dump's record of it, when the image has one.
pub fn check_path(
    st: &ImageState,
    what: &str,
    path: &str,
    who: &Acting,
    same: Same,
) -> Result<std::fs::Metadata, Check> {
    let fd = match open_as(who, path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(Check::Gone),
        // A file opened before the task gave up rights (as root, say): the
        // restore may open it with torpor's own when root asked for the
        // image and the file is the dump's, compared below.
        Err(e) if denied(&e) && may_open_as_root(st, path) => {
            open_as(&Acting::root(), path, libc::O_PATH, 0)
                .map_err(|e| Check::Refused(open_error(what, path, who, &e)))?
        }
        Err(e) => return Err(Check::Refused(open_error(what, path, who, &e))),
    };
    let md = metadata(&fd).map_err(|e| Check::Refused(format!("{what} {path}: {e}")))?;
    let Some(rec) = st.owners.get(path) else {
        return Ok(md);
    };
    let mut rec = rec.clone();
    match same {
        Same::Inode => {}
        Same::Owner => (rec.dev, rec.inode) = (md.dev(), md.ino()),
        Same::Type => {
            (rec.dev, rec.inode, rec.uid, rec.gid) = (md.dev(), md.ino(), md.uid(), md.gid());
        }
    }
    let changes = changes(&md, &rec);
    if changes.is_empty() {
        Ok(md)
    } else {
        Err(Check::Refused(format!(
            "{what} {path} changed since the dump: {}",
            changes.join("; ")
        )))
    }
}

/// The directory an unlinked file is recreated in: there, reached through
/// no symbolic link by the task that held the file, and what it was.
pub fn check_unlinked_dir(st: &ImageState, path: &str, who: &Acting) -> Result<(), String> {
    let dir = Path::new(path)
        .parent()
        .map_or_else(|| "/".to_string(), |d| d.to_string_lossy().into_owned());
    match check_path(st, "directory", &dir, who, Same::Owner) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) | Err(Check::Gone) => unlinked_dir_exists(path),
        Err(Check::Refused(why)) => Err(format!("{why} (unlinked file {path} is recreated there)")),
    }
}

/// Whose rights open a description's path, and what the dump recorded of
/// each path.
#[derive(Debug)]
pub struct Opening<'a> {
    pub who: &'a Acting,
    pub owners: &'a std::collections::BTreeMap<String, FileOwner>,
    /// Root asked for the image: a file its holder opened before giving
    /// up rights may be opened with torpor's, if it is the dump's.
    pub root_asked: bool,
}

impl Opening<'_> {
    /// Opens `path` as the holder through no symbolic link, and refuses a
    /// file other than the dump's (checked on the fd opened, so a path
    /// changed after `validate` reaches nothing else).
    pub fn open(&self, what: &str, path: &str, flags: i32) -> Result<i32, Cause> {
        let flags = flags & !libc::O_CLOEXEC;
        let fd = match open_as(self.who, path, flags, 0) {
            Ok(fd) => fd,
            Err(e) if denied(&e) && self.root_asked && self.owners.contains_key(path) => {
                open_as(&Acting::root(), path, flags, 0)
                    .map_err(|e| Cause::Refused(open_error(what, path, self.who, &e)))?
            }
            Err(e) => return Err(Cause::Refused(open_error(what, path, self.who, &e))),
        };
        if let Some(rec) = self.owners.get(path) {
            let md = metadata(&fd)?;
            let mut rec = rec.clone();
            if what == "device" {
                (rec.dev, rec.inode, rec.uid, rec.gid) = (md.dev(), md.ino(), md.uid(), md.gid());
            }
            let changes = changes(&md, &rec);
            if !changes.is_empty() {
                return Err(Cause::Refused(format!(
                    "{what} {path} changed since the dump: {}",
                    changes.join("; ")
                )));
            }
        }
        Ok(fd.into_raw_fd())
    }
}

/// The process whose rights open each file description of the image (by
/// index): the first that holds it; for a description only a queued
/// message holds, the holder of the socket whose queue passes it (of the
/// socket a process holds, through sockets in flight).
pub fn holders(st: &ImageState) -> Vec<Option<&ProcessState>> {
    let mut out = vec![None; st.files.len()];
    for p in &st.processes {
        for f in &p.fds {
            if let Some(slot @ None) = out.get_mut(f.file as usize) {
                *slot = Some(p);
            }
        }
    }
    // One round per level of sockets in flight.
    for _ in 0..=crate::engine::state::RIGHTS_DEPTH {
        for r in &st.rights {
            let Some(holder) = out.get(r.socket as usize).copied().flatten() else {
                continue;
            };
            for &f in &r.files {
                if let Some(slot @ None) = out.get_mut(f as usize) {
                    *slot = Some(holder);
                }
            }
        }
    }
    out
}

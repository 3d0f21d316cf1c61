//! Regular files unlinked while open or mapped: recreated without a name
//! in the directory they lived in, by the task that held them.
//!
//! Unsafe code: `open` with `O_TMPFILE`, `unlink` and `write` on the new
//! descriptor through libc.
#![allow(unsafe_code)]

use std::path::Path;

use std::os::fd::{IntoRawFd, OwnedFd};

use crate::arch::Bits;
use crate::engine::state::{UnlinkedData, UnlinkedRef};
use crate::engine::{conv, Cause};
use crate::image::records::FdKind;

use super::owner::{self, as_user, check_unlinked_dir, open_no_symlinks, Acting};
use super::{last_os, open_own, CheckCx, FsKind, OpenCx};

fn cstr(s: &str) -> Result<std::ffi::CString, Cause> {
    std::ffi::CString::new(s).map_err(|_| Cause::Refused(format!("path {s:?} holds a NUL byte")))
}

/// An unlinked file is recreated in the directory it lived in (older
/// images, which record no owner for it).
pub fn unlinked_dir_exists(path: &str) -> Result<(), String> {
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "directory {} of unlinked file {path} is gone",
            dir.display()
        ))
    }
}

/// Creates an unnamed regular file holding `data` in the directory of
/// `path` (`O_TMPFILE`, or a name removed at once where the file system
/// has no `O_TMPFILE`), as `who` and through no symbolic link.
pub fn create_unlinked(path: &str, data: &[u8], who: &Acting) -> Result<i32, Cause> {
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let dir_s = dir.to_string_lossy();
    let made = as_user(who, || -> Result<OwnedFd, Cause> {
        match open_no_symlinks(&dir_s, libc::O_TMPFILE | libc::O_RDWR, 0o600) {
            Ok(fd) => Ok(fd),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let name = format!("{dir_s}/.torpor-unlinked-{}", std::process::id());
                let fd =
                    open_no_symlinks(&name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600)
                        .map_err(|e| {
                            Cause::Refused(owner::open_error(
                                &format!("directory {dir_s} of unlinked file"),
                                path,
                                who,
                                &e,
                            ))
                        })?;
                // Left linked, the file would be visible where it was not.
                let cname = cstr(&name)?;
                // SAFETY: unlinking the name just created.
                if unsafe { libc::unlink(cname.as_ptr()) } < 0 {
                    let e = last_os();
                    return Err(
                        std::io::Error::new(e.kind(), format!("unlinking {name}: {e}")).into(),
                    );
                }
                Ok(fd)
            }
            Err(e) => Err(Cause::Refused(owner::open_error(
                &format!("directory {dir_s} of unlinked file"),
                path,
                who,
                &e,
            ))),
        }
    })??;
    let fd = made.into_raw_fd();
    let mut off = 0;
    while off < data.len() {
        // SAFETY: writing from our buffer into our fd.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if n <= 0 {
            let e = last_os();
            // SAFETY: closing our fd on the error path.
            unsafe { libc::close(fd) };
            return Err(e.into());
        }
        off += n.bits();
    }
    Ok(fd)
}

/// Moves the fd just opened to `pos`; closes it if that fails.
fn seek_new(fd: i32, pos: u64) -> Result<i32, Cause> {
    let off: libc::off_t = match conv::fit(pos, "off_t", "file offset") {
        Ok(off) => off,
        Err(e) => {
            // SAFETY: closing our fd on the error path.
            unsafe { libc::close(fd) };
            return Err(e.into());
        }
    };
    // SAFETY: lseek on an fd of ours.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
        let e = last_os();
        // SAFETY: closing our fd on the error path.
        unsafe { libc::close(fd) };
        return Err(e.into());
    }
    Ok(fd)
}

impl FsKind for UnlinkedRef {
    const NAME: &'static str = "an unlinked file";

    fn record(&self, flags: u32) -> FdKind {
        FdKind::UnlinkedFile {
            flags,
            offset: self.pos,
            inode: self.inode,
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        match k {
            FdKind::UnlinkedFile {
                flags,
                offset,
                inode,
            } => Some(Ok((
                *flags,
                UnlinkedRef {
                    pos: *offset,
                    inode: *inode,
                },
            ))),
            _ => None,
        }
    }

    /// Checked with the image's unlinked-file objects.
    fn check(&self, _: &CheckCx<'_>) -> Result<(), String> {
        Ok(())
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        // The file made (and filled) once per inode; each description is a
        // reopening with its own flags and offset.
        let path = cx.segs.unlinked_path(self.inode)?;
        seek_new(open_own(&path, cx.open_flags())?, self.pos)
    }
}

impl FsKind for UnlinkedData {
    const NAME: &'static str = "an unlinked file";

    fn record(&self, flags: u32) -> FdKind {
        FdKind::Unlinked {
            path: self.path.as_str().into(),
            flags,
            offset: self.pos,
            bytes: self.data.clone(),
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        match k {
            FdKind::Unlinked {
                path,
                flags,
                offset,
                bytes,
            } => Some(Ok((
                *flags,
                UnlinkedData {
                    path: path.to_string(),
                    pos: *offset,
                    data: bytes.clone(),
                },
            ))),
            _ => None,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<(), String> {
        check_unlinked_dir(cx.st, &self.path, cx.who)
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let tmp = create_unlinked(&self.path, &self.data, cx.opening.who)?;
        // Reopened with the original flags; the file keeps no name.
        let fd = open_own(&format!("/proc/self/fd/{tmp}"), cx.open_flags());
        // SAFETY: closing the creation fd; `fd` holds the file.
        unsafe { libc::close(tmp) };
        seek_new(fd?, self.pos)
    }
}

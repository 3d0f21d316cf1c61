//! Regular files unlinked while open or mapped: recreated without a name
//! in the directory they lived in.
//!
//! Unsafe code: `open` with `O_TMPFILE`, `unlink` and `write` on the new
//! descriptor through libc.
#![allow(unsafe_code)]

use std::path::Path;

use crate::arch::Bits;
use crate::engine::Cause;

use super::last_os;

fn cstr(s: &str) -> Result<std::ffi::CString, Cause> {
    std::ffi::CString::new(s).map_err(|_| Cause::Refused(format!("path {s:?} holds a NUL byte")))
}

/// An unlinked file is recreated in the directory it lived in.
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
/// has no `O_TMPFILE`).
pub fn create_unlinked(path: &str, data: &[u8]) -> Result<i32, Cause> {
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let cdir = cstr(&dir.to_string_lossy())?;
    // SAFETY: open with a valid C string; the result is checked.
    let mut fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let name = format!("{}/.torpor-unlinked-{}", dir.display(), std::process::id());
        let cname = cstr(&name)?;
        // SAFETY: as above; the name is removed right away.
        fd = unsafe {
            libc::open(
                cname.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = last_os();
            return Err(std::io::Error::new(
                e.kind(),
                format!("recreating unlinked {path} in {}: {e}", dir.display()),
            )
            .into());
        }
        // Left linked, the file would be visible where it was not.
        // SAFETY: unlinking the name just created.
        if unsafe { libc::unlink(cname.as_ptr()) } < 0 {
            let e = last_os();
            // SAFETY: closing our fd on the error path.
            unsafe { libc::close(fd) };
            return Err(std::io::Error::new(e.kind(), format!("unlinking {name}: {e}")).into());
        }
    }
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

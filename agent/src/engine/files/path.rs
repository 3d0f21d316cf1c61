//! Regular files and directories, reopened by path at their offset, as the
//! task that held them and only if they are still the dump's file.
//!
//! Unsafe code: `lseek` and `close` on the descriptor just opened.
#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::engine::state::{FileIdentity, PathFile};
use crate::engine::{conv, Cause};
use crate::image::records::FdKind;

use super::owner::{check_path, Check, Same};
use super::{last_os, CheckCx, FsKind, OpenCx};

impl FsKind for PathFile {
    const NAME: &'static str = "an open file";

    fn record(&self, flags: u32) -> FdKind {
        if self.dir {
            FdKind::Directory {
                path: self.path.as_str().into(),
                flags,
            }
        } else {
            FdKind::Regular {
                file: self.identity.file_id(&self.path),
                flags,
                offset: self.pos,
            }
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        Some(Ok(match k {
            FdKind::Regular {
                file,
                flags,
                offset,
            } => (
                *flags,
                PathFile {
                    path: file.path.to_string(),
                    pos: *offset,
                    dir: false,
                    identity: FileIdentity::of(file),
                },
            ),
            FdKind::Directory { path, flags } => (
                *flags,
                PathFile {
                    path: path.to_string(),
                    pos: 0,
                    dir: true,
                    identity: FileIdentity::default(),
                },
            ),
            _ => return None,
        }))
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<(), String> {
        let path = &self.path;
        let what = if self.dir {
            "open directory"
        } else {
            "open file"
        };
        match check_path(cx.st, what, path, cx.who, Same::Inode) {
            Ok(md) => {
                // Images without file-owner records: the inode of the fd
                // record at least.
                let then = (self.identity.dev, self.identity.inode);
                if !cx.st.owners.contains_key(path)
                    && !self.dir
                    && then != (0, 0)
                    && (md.dev(), md.ino()) != then
                {
                    return Err(format!("{what} {path} changed since the dump: inode {} on device {:#x}, the dump's was inode {} on device {:#x}", md.ino(), md.dev(), then.1, then.0));
                }
                Ok(())
            }
            Err(Check::Gone) => Err(format!("open file {path} is gone")),
            Err(Check::Refused(why)) => Err(why),
        }
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let path = &self.path;
        let pos = self.pos;
        let off: libc::off_t = conv::fit(pos, "off_t", format_args!("file offset of {path}"))?;
        let what = if self.dir {
            "open directory"
        } else {
            "open file"
        };
        let fd = cx.opening.open(what, path, cx.open_flags())?;
        // SAFETY: lseek on the fd just opened. Directories may refuse
        // arbitrary positions; their position is a cookie.
        let r = unsafe { libc::lseek(fd, off, libc::SEEK_SET) };
        if r < 0 && !Path::new(path).is_dir() {
            let e = last_os();
            // SAFETY: closing our fd on the error path.
            unsafe { libc::close(fd) };
            return Err(
                std::io::Error::new(e.kind(), format!("seeking {path} to {pos}: {e}")).into(),
            );
        }
        Ok(fd)
    }
}

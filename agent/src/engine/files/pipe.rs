//! Pipes and FIFOs: each pipe is made once, before the descriptions, with
//! the bytes it held; the descriptions of its ends take the two ends or
//! reopen them. A FIFO is the dump's FIFO, opened by path as the task that
//! held it.
//!
//! Unsafe code: `pipe2`, `fcntl`, `ioctl(FIONREAD)`, `write` and `close`
//! on torpor's own pipe descriptors.
#![allow(unsafe_code)]

use std::collections::BTreeMap;

use crate::arch::Bits;
use crate::engine::state::{FileKind, ImageState, PipeFile};
use crate::engine::{conv, Cause};
use crate::image::records::{FdKind, PipeEnd};

use super::owner::{self, check_path, Acting, Check, Same};
use super::{dup_given, last_os, move_high, open_own, CheckCx, FsKind, OpenCx};

/// The tree's pipes, by index: (read end, write end, read end used, write
/// end used), all in torpor above the tree's descriptor numbers. The first
/// description of each end takes it; further ones reopen the pipe through
/// /proc/self/fd. Closed when dropped (the descriptions hold duplicates).
#[derive(Debug, Default)]
pub struct PipeEnds(BTreeMap<u32, (i32, i32, bool, bool)>);

impl Drop for PipeEnds {
    fn drop(&mut self) {
        for (r, w, _, _) in self.0.values() {
            // SAFETY: the pipe ends this struct holds.
            unsafe {
                libc::close(*r);
                if w != r {
                    libc::close(*w);
                }
            }
        }
    }
}

impl PipeEnds {
    /// Makes every pipe of the image with its unread bytes; `inherit`
    /// holds the descriptors the caller gives for pipes whose other end is
    /// outside the tree; every end is moved to `high` or above.
    pub fn create(
        st: &ImageState,
        inherit: &[(String, i32)],
        high: i32,
    ) -> Result<PipeEnds, Cause> {
        let mut ends = PipeEnds::default();
        let root_asked = st.requested_by.as_ref().is_none_or(|r| r.uid == 0);
        for (i, pipe) in st.pipes.iter().enumerate() {
            let id: u32 = conv::fit(i, "u32", "pipe index")?;
            if let Some(outside) = pipe.outside {
                let key = format!("pipe:[{}]", pipe.inode);
                if let Some(&(_, given)) = inherit.iter().find(|(k, _)| *k == key) {
                    // The caller's descriptor stands in for the pipe, used as it
                    // is: its own data is what the tree reads next.
                    let fd = dup_given(given, format_args!("taking --inherit-fd {key}={given}"))?;
                    let fd = move_high(fd, high)?;
                    ends.0.insert(id, (fd, fd, false, false));
                    continue;
                }
                let what = match outside {
                    PipeEnd::Read => "its reader was outside the tree: writes to it now fail with EPIPE".to_string(),
                    PipeEnd::Write => format!(
                        "its writer was outside the tree: the tree reads the {} bytes left, then end of file",
                        pipe.data.len()
                    ),
                };
                eprintln!("torpor: {key}: {what} (give --inherit-fd {key}=FD to connect it)");
            }
            let fifo_holders = owner::holders(st);
            let fifo = st
                .files
                .iter()
                .enumerate()
                .find_map(|(i, f)| match &f.kind {
                    FileKind::Pipe(PipeFile {
                        pipe,
                        fifo: Some(path),
                        ..
                    }) if *pipe == id => Some((
                        path.clone(),
                        fifo_holders
                            .get(i)
                            .copied()
                            .flatten()
                            .map_or_else(Acting::root, Acting::of),
                    )),
                    _ => None,
                });
            let mut p = [0i32; 2];
            // A FIFO someone outside the tree still holds (on the same boot) is
            // the one the tree left: its bytes are the live ones.
            let mut live_fifo = false;
            if let Some((path, who)) = &fifo {
                // A named FIFO: opened read-write, it is reader and writer for
                // the reopenings below, which therefore never block. As the
                // task that held it, through no symbolic link, and only the
                // FIFO of the dump.
                let cx = owner::Opening {
                    who,
                    owners: &st.owners,
                    root_asked,
                };
                // Opening for writing without blocking succeeds only if a
                // reader exists: one outside the tree, which may have read the
                // bytes saved at the dump.
                if let Ok(probe) = owner::open_as(who, path, libc::O_WRONLY | libc::O_NONBLOCK, 0) {
                    live_fifo = true;
                    drop(probe);
                }
                let fd = cx.open("FIFO", path, libc::O_RDWR | libc::O_NONBLOCK)?;
                let mut queued: libc::c_int = 0;
                // SAFETY: FIONREAD writes one int.
                if unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut queued) } == 0 && queued > 0 {
                    // A writer outside kept it, and the bytes, alive.
                    live_fifo = true;
                }
                p = [fd, fd];
            // SAFETY: pipe2 writes two fds.
            } else if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
                return Err(last_os().into());
            }
            // At least the default, and room for the data whatever the image says.
            let size: libc::c_int = conv::fit(
                pipe.size.max(65536),
                "int",
                format_args!("size of pipe {i}"),
            )?;
            // SAFETY: fcntl on our own pipe.
            if unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, size) } < 0 {
                return Err(last_os().into());
            }
            // Bytes written by the tree for a reader outside went with that
            // reader; bytes from a writer outside are the tree's to read.
            let data: &[u8] = if pipe.outside == Some(PipeEnd::Read) || live_fifo {
                &[]
            } else {
                &pipe.data
            };
            let mut off = 0;
            while off < data.len() {
                // SAFETY: writing from our buffer into our pipe, which has room.
                let n = unsafe { libc::write(p[1], data[off..].as_ptr().cast(), data.len() - off) };
                if n <= 0 {
                    return Err(last_os().into());
                }
                off += n.bits();
            }
            if fifo.is_some() {
                let rw = move_high(p[0], high)?;
                // Every description of a FIFO is a reopening (used: true).
                ends.0.insert(id, (rw, rw, true, true));
            } else {
                let r = move_high(p[0], high)?;
                let w = move_high(p[1], high)?;
                ends.0.insert(id, (r, w, false, false));
            }
        }
        Ok(ends)
    }
}

fn end_of(write: bool) -> PipeEnd {
    if write {
        PipeEnd::Write
    } else {
        PipeEnd::Read
    }
}

impl FsKind for PipeFile {
    const NAME: &'static str = "a pipe";

    fn record(&self, flags: u32) -> FdKind {
        let id = u64::from(self.pipe);
        let end = end_of(self.write);
        match &self.fifo {
            None => FdKind::Pipe { id, end, flags },
            Some(path) => FdKind::Fifo {
                path: path.as_str().into(),
                id,
                end,
                flags,
            },
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        let (id, end, flags, fifo) = match k {
            FdKind::Pipe { id, end, flags } => (id, end, flags, None),
            FdKind::Fifo {
                path,
                id,
                end,
                flags,
            } => (id, end, flags, Some(path.to_string())),
            _ => return None,
        };
        Some(match u32::try_from(*id) {
            Ok(pipe) => Ok((
                *flags,
                PipeFile {
                    pipe,
                    write: *end == PipeEnd::Write,
                    fifo,
                },
            )),
            Err(_) => Err(format!("pipe id {id}")),
        })
    }

    /// The pipe itself is checked with the image's structure; a FIFO must
    /// still be the dump's.
    fn check(&self, cx: &CheckCx<'_>) -> Result<(), String> {
        let Some(path) = &self.fifo else {
            return Ok(());
        };
        use std::os::unix::fs::FileTypeExt;
        match check_path(cx.st, "FIFO", path, cx.who, Same::Inode) {
            Ok(md) if md.file_type().is_fifo() => Ok(()),
            Ok(_) | Err(Check::Gone) => Err(format!("FIFO {path} is gone")),
            Err(Check::Refused(why)) => Err(why),
        }
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let pipe = self.pipe;
        let e = cx
            .pipes
            .0
            .get_mut(&pipe)
            .ok_or_else(|| Cause::Refused(format!("pipe {pipe} missing from the image")))?;
        let (src, used) = if self.write {
            (e.1, &mut e.3)
        } else {
            (e.0, &mut e.2)
        };
        let fd = if *used {
            open_own(&format!("/proc/self/fd/{src}"), cx.open_flags())?
        } else {
            *used = true;
            // SAFETY: duplicating our own pipe end.
            let d = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 0) };
            if d < 0 {
                return Err(last_os().into());
            }
            d
        };
        let status = cx.flags.bits() & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT);
        // SAFETY: setting status flags on our fd.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, status) } < 0 {
            return Err(last_os().into());
        }
        Ok(fd)
    }
}

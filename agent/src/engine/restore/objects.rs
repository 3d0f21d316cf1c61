//! The tree's shared objects, opened in torpor before any task exists:
//! every open file description (files by path at their offsets, devices
//! and terminals, pipes and FIFOs with their unread bytes, unlinked files,
//! sockets, eventfds, timerfds, epoll and inotify instances, the
//! connection to the daemon, inherited descriptors), each shared anonymous
//! memory object, memfds and SysV segments. Tasks inherit them through the
//! fork and take theirs at their numbers.
//!
//! Unsafe code: descriptors are opened, duplicated above the tree's own
//! numbers and closed with libc calls, and shared memory objects are
//! mapped in torpor with `mmap`.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use crate::arch::{self, Bits};
use crate::engine::clocks::Offsets;
use crate::engine::files::owner::{self, Acting};
use crate::engine::state::ImageState;
use crate::engine::state::{Backing, FileKind, OpenFile, OutsideEnd};
use crate::engine::{conv, Cause, EngineError, Step, StepExt};
use crate::image::records::FileOwner;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::MetadataExt;

use super::{last_os, RestoreOptions};

/// Descriptors torpor opens for the tree before forking; every task takes
/// the ones it needs at their numbers with dup2 and closes the rest.
#[derive(Debug)]
pub(super) struct Objects {
    /// fd in torpor of each `OpenFile`, all at or above `high`.
    pub(super) fds: Vec<i32>,
    /// Each shared memory object as a MAP_SHARED|MAP_ANONYMOUS mapping in
    /// torpor, by id: (address, size). Every task inherits it at the same
    /// address and moves the parts it maps into place, so the object stays
    /// one object, as the kernel's own shared anonymous memory.
    pub(super) shm: BTreeMap<u64, (u64, u64)>,
    /// Memfds and SysV segments.
    pub(super) segs: crate::engine::files::Segments,
    pub(super) high: i32,
}

impl Drop for Objects {
    fn drop(&mut self) {
        for &fd in &self.fds {
            // SAFETY: closing fds this struct opened.
            unsafe { libc::close(fd) };
        }
        for &(addr, size) in self.shm.values() {
            // SAFETY: unmapping the regions this struct mapped; nothing in
            // torpor refers to them.
            unsafe { libc::munmap(arch::native(addr) as *mut libc::c_void, arch::native(size)) };
        }
    }
}

pub(super) fn cstr(s: &str) -> Result<std::ffi::CString, Cause> {
    std::ffi::CString::new(s).map_err(|_| Cause::Refused(format!("path {s:?} holds a NUL byte")))
}

pub(super) fn move_high(fd: i32, high: i32) -> Result<i32, Cause> {
    // SAFETY: fcntl on an fd we own; the old one is closed after.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
    let err = last_os();
    // SAFETY: closing the fd just duplicated.
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(err.into());
    }
    Ok(n)
}

/// `shift`: how far the tree's clocks are ahead of torpor's, when the tree
/// gets a time namespace.
pub(super) fn open_objects(
    st: &ImageState,
    opts: &RestoreOptions,
    shift: Option<Offsets>,
) -> Result<Objects, EngineError> {
    let step = Step::OpenFiles;
    let max_target = st
        .processes
        .iter()
        .flat_map(|p| p.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    let high = max_target.max(64) + 1;
    let mut objs = Objects {
        fds: Vec::new(),
        shm: BTreeMap::new(),
        segs: crate::engine::files::Segments::create(st, high).step(step)?,
        high,
    };
    let mut shm_size: BTreeMap<u64, u64> = BTreeMap::new();
    for v in st.processes.iter().flat_map(|p| p.vmas.iter()) {
        if let Backing::Shm { id, offset } = v.backing {
            let e = shm_size.entry(id).or_insert(0);
            *e = (*e).max(offset + (v.end - v.start));
        }
    }
    for (id, size) in shm_size {
        // SAFETY: a fresh shared anonymous mapping; torpor never touches it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                arch::native(size),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(last_os()).step(step);
        }
        objs.shm.insert(id, (addr as u64, size));
    }
    // Each pipe is created once; its first read/write descriptions use the
    // two ends, further ones reopen the pipe through /proc/self/fd.
    let mut pipe_ends: BTreeMap<u32, (i32, i32, bool, bool)> = BTreeMap::new();
    let root_asked = st.requested_by.as_ref().is_none_or(|r| r.uid == 0);
    for (i, pipe) in st.pipes.iter().enumerate() {
        let id: u32 = conv::fit(i, "u32", "pipe index").step(step)?;
        if let Some(outside) = pipe.outside {
            let key = format!("pipe:[{}]", pipe.inode);
            if let Some(&(_, given)) = opts.inherit.iter().find(|(k, _)| *k == key) {
                // The caller's descriptor stands in for the pipe, used as it
                // is: its own data is what the tree reads next.
                // SAFETY: duplicating a descriptor the caller handed over.
                let fd = unsafe { libc::fcntl(given, libc::F_DUPFD_CLOEXEC, 0) };
                if fd < 0 {
                    let e = last_os();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("taking --inherit-fd {key}={given}: {e}"),
                    ))
                    .step(step);
                }
                let fd = move_high(fd, high).step(step)?;
                pipe_ends.insert(id, (fd, fd, false, false));
                continue;
            }
            let what = match outside {
                OutsideEnd::Read => "its reader was outside the tree: writes to it now fail with EPIPE".to_string(),
                OutsideEnd::Write => format!(
                    "its writer was outside the tree: the tree reads the {} bytes left, then end of file",
                    pipe.data.len()
                ),
            };
            eprintln!("torpor: {key}: {what} (give --inherit-fd {key}=FD to connect it)");
        }
        let fifo_holders = super::validate::holders(st);
        let fifo = st
            .files
            .iter()
            .enumerate()
            .find_map(|(i, f)| match &f.kind {
                FileKind::Pipe {
                    pipe,
                    fifo: Some(path),
                    ..
                } if *pipe == id => Some((
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
            let cx = Opening {
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
            let fd = cx
                .open("FIFO", path, libc::O_RDWR | libc::O_NONBLOCK)
                .step(step)?;
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            if unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut queued) } == 0 && queued > 0 {
                // A writer outside kept it, and the bytes, alive.
                live_fifo = true;
            }
            p = [fd, fd];
        // SAFETY: pipe2 writes two fds.
        } else if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(last_os()).step(step);
        }
        // At least the default, and room for the data whatever the image says.
        let size: libc::c_int = conv::fit(
            pipe.size.max(65536),
            "int",
            format_args!("size of pipe {i}"),
        )
        .step(step)?;
        // SAFETY: fcntl on our own pipe.
        if unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, size) } < 0 {
            return Err(last_os()).step(step);
        }
        // Bytes written by the tree for a reader outside went with that
        // reader; bytes from a writer outside are the tree's to read.
        let data: &[u8] = if pipe.outside == Some(OutsideEnd::Read) || live_fifo {
            &[]
        } else {
            &pipe.data
        };
        let mut off = 0;
        while off < data.len() {
            // SAFETY: writing from our buffer into our pipe, which has room.
            let n = unsafe { libc::write(p[1], data[off..].as_ptr().cast(), data.len() - off) };
            if n <= 0 {
                return Err(last_os()).step(step);
            }
            off += n.bits();
        }
        if fifo.is_some() {
            let rw = move_high(p[0], high).step(step)?;
            // Every description of a FIFO is a reopening (used: true).
            pipe_ends.insert(id, (rw, rw, true, true));
        } else {
            let r = move_high(p[0], high).step(step)?;
            let w = move_high(p[1], high).step(step)?;
            pipe_ends.insert(id, (r, w, false, false));
        }
    }
    let mut pending = crate::engine::files::Pending::default();
    let holders = super::validate::holders(st);
    for (i, f) in st.files.iter().enumerate() {
        let who = holders
            .get(i)
            .copied()
            .flatten()
            .map_or_else(Acting::root, Acting::of);
        let cx = Opening {
            who: &who,
            owners: &st.owners,
            root_asked,
        };
        let fd = open_object(
            f,
            &cx,
            &mut pipe_ends,
            &mut pending,
            opts,
            &objs.segs,
            shift,
        )
        .step(step)?;
        let fd = move_high(fd, high).step(step)?;
        objs.fds.push(fd);
    }
    for (r, w, _, _) in pipe_ends.values() {
        // SAFETY: the spare pipe ends torpor kept; descriptions hold dups.
        unsafe {
            libc::close(*r);
            if w != r {
                libc::close(*w);
            }
        }
    }
    Ok(objs)
}

/// Whose rights open a description's path, and what the dump recorded of
/// each path.
struct Opening<'a> {
    who: &'a Acting,
    owners: &'a BTreeMap<String, FileOwner>,
    /// Root asked for the image: a file its holder opened before giving
    /// up rights may be opened with torpor's, if it is the dump's.
    root_asked: bool,
}

impl Opening<'_> {
    /// Opens `path` as the holder through no symbolic link, and refuses a
    /// file other than the dump's (checked on the fd opened, so a path
    /// changed after `validate` reaches nothing else).
    fn open(&self, what: &str, path: &str, flags: i32) -> Result<i32, Cause> {
        let flags = flags & !libc::O_CLOEXEC;
        let fd = match owner::open_as(self.who, path, flags, 0) {
            Ok(fd) => fd,
            Err(e) if owner::denied(&e) && self.root_asked && self.owners.contains_key(path) => {
                owner::open_as(&Acting::root(), path, flags, 0)
                    .map_err(|e| Cause::Refused(owner::open_error(what, path, self.who, &e)))?
            }
            Err(e) => return Err(Cause::Refused(owner::open_error(what, path, self.who, &e))),
        };
        if let Some(rec) = self.owners.get(path) {
            let md = owner::metadata(&fd)?;
            let mut rec = rec.clone();
            if what == "device" {
                (rec.dev, rec.inode, rec.uid, rec.gid) = (md.dev(), md.ino(), md.uid(), md.gid());
            }
            let changes = owner::changes(&md, &rec);
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

fn open_object(
    f: &OpenFile,
    cx: &Opening<'_>,
    pipes: &mut BTreeMap<u32, (i32, i32, bool, bool)>,
    pending: &mut crate::engine::files::Pending,
    opts: &RestoreOptions,
    segs: &crate::engine::files::Segments,
    shift: Option<Offsets>,
) -> Result<i32, Cause> {
    // O_ASYNC is set later by the task itself (files::arm_sigio).
    let open_flags = (f.flags.bits()
        & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_ASYNC))
        | libc::O_CLOEXEC;
    let open = |path: &str, flags: i32| -> Result<i32, Cause> {
        let c = cstr(path)?;
        // SAFETY: open with a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            let e = last_os();
            return Err(std::io::Error::new(e.kind(), format!("opening {path}: {e}")).into());
        }
        Ok(fd)
    };
    match &f.kind {
        FileKind::External { key } => {
            let &(_, given) =
                opts.inherit.iter().find(|(k, _)| k == key).ok_or_else(|| {
                    Cause::Refused(format!("no descriptor for external fd {key:?}"))
                })?;
            // SAFETY: duplicating a descriptor the caller handed over.
            let fd = unsafe { libc::fcntl(given, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("creating external fd {key:?}: {e}"),
                )
                .into());
            }
            Ok(fd)
        }
        FileKind::Path { path, pos, dir, .. } => {
            let off: libc::off_t = conv::fit(*pos, "off_t", format_args!("file offset of {path}"))?;
            let what = if *dir { "open directory" } else { "open file" };
            let fd = cx.open(what, path, open_flags)?;
            // SAFETY: lseek on the fd just opened. Directories may refuse
            // arbitrary positions; their position is a cookie.
            // SAFETY: a plain syscall on integers or live C strings.
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
        FileKind::UnlinkedFile { inode, pos, .. } => {
            // The file made (and filled) once per inode; each description
            // is a reopening with its own flags and offset.
            seek_new(open(&segs.unlinked_path(*inode)?, open_flags)?, *pos)
        }
        FileKind::Unlinked { path, pos, data } => {
            let tmp = crate::engine::files::create_unlinked(path, data, cx.who)?;
            // Reopened with the original flags; the file keeps no name.
            let fd = open(&format!("/proc/self/fd/{tmp}"), open_flags);
            // SAFETY: closing the creation fd; `fd` holds the file.
            unsafe { libc::close(tmp) };
            seek_new(fd?, *pos)
        }
        FileKind::Device { path, tty, .. } => {
            match (tty, &opts.tty) {
                // The terminal the operator gave in place of one gone.
                (true, Some(t)) if std::fs::symlink_metadata(path).is_err() => {
                    open(&t.to_string_lossy(), open_flags | libc::O_NOCTTY)
                }
                _ => cx.open("device", path, open_flags | libc::O_NOCTTY),
            }
        }
        FileKind::Pipe { pipe, write, .. } => {
            let e = pipes
                .get_mut(pipe)
                .ok_or_else(|| Cause::Refused(format!("pipe {pipe} missing from the image")))?;
            let (src, used) = if *write {
                (e.1, &mut e.3)
            } else {
                (e.0, &mut e.2)
            };
            let fd = if *used {
                open(&format!("/proc/self/fd/{src}"), open_flags)?
            } else {
                *used = true;
                // SAFETY: duplicating our own pipe end.
                let d = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 0) };
                if d < 0 {
                    return Err(last_os().into());
                }
                d
            };
            let status = f.flags.bits() & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT);
            // SAFETY: setting status flags on our fd.
            if unsafe { libc::fcntl(fd, libc::F_SETFL, status) } < 0 {
                return Err(last_os().into());
            }
            Ok(fd)
        }
        FileKind::Anon(a) => crate::engine::files::open(
            a,
            f.flags & !crate::engine::files::O_ASYNC,
            pending,
            segs,
            shift,
        ),
        FileKind::TorporConn => {
            let conn = opts.torpor_conn.ok_or_else(|| {
                Cause::Refused("no connection to torpor daemon to give the tree".into())
            })?;
            crate::engine::torpor_conn::dup_for_tree(conn, f.flags).map_err(Cause::from)
        }
    }
}

/// A nameless regular file holding `data`, in the directory the unlinked
/// file lived in (so on the same file system): O_TMPFILE, or a temporary
/// name removed at once where the file system lacks O_TMPFILE.
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

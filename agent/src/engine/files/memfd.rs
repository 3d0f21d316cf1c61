//! memfd: one object per inode, whatever the number of fds, open file
//! descriptions and mappings (shared or private, in any process of the
//! tree) that refer to it, a mapping whose fd was closed included.
//!
//! A dump stores each object once (`memfd` record: name, size, seals, mode,
//! owner) with its contents in `object-data` chunks, holes and all-zero
//! chunks left out; fds refer to it by id with their own offset and flags.
//! A restore creates the memfd in torpor before forking (every task
//! inherits it), fills it, reopens it for each description and maps it
//! in each task; the seals come last, once every mapping exists, since a
//! seal against writing refuses the contents and, for F_SEAL_WRITE, any
//! writable shared mapping.
//!
//! Unsafe code: memfd_create, open and the fcntl/ftruncate/fchmod calls go
//! through libc with C strings of ours, and their fds become `OwnedFd`s.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::{into_raw, last_os, owned};
use crate::arch::Bits;
use crate::engine::procfs::MapEntry;
use crate::engine::state::{Backing, FileKind, OpenFile, ProcessState};
use crate::engine::Cause;
use crate::image::records::{Memfd, MemfdObject, MemfdRef, ObjectRef, RawPath};
use crate::image::ImageWriter;

/// `HUGETLBFS_MAGIC` from linux/magic.h: a memfd made with MFD_HUGETLB.
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// The memfd name in a /proc link or maps name `/memfd:NAME (deleted)`.
pub(super) fn name_of(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")
        .and_then(|s| s.strip_suffix(" (deleted)"))
}

/// The description behind fd `fd` of `pid`: its memfd (by inode) and
/// offset.
pub(super) fn collect(pid: i32, fd: i32, pos: u64) -> Result<MemfdRef, String> {
    let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(|e| e.to_string())?;
    Ok(MemfdRef {
        id: md.ino(),
        offset: pos,
    })
}

/// A mapping of a memfd, shared or private.
pub(super) fn mapping(m: &MapEntry) -> Option<Backing> {
    name_of(&m.name)?;
    Some(Backing::Memfd {
        id: m.inode,
        offset: m.offset,
        may_write: m.has_flag("mw"),
    })
}

/// Where torpor can open each memfd of the tree: an fd of a process, or
/// a mapping (`map_files`) when no fd refers to it.
fn sources(
    procs: &[&ProcessState],
    files: &[OpenFile],
    flight: &[(u32, i32)],
) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for p in procs {
        for f in &p.fds {
            if let Some(OpenFile {
                kind: FileKind::MemfdFile(r),
                ..
            }) = files.get(f.file as usize)
            {
                out.entry(r.id)
                    .or_insert_with(|| format!("/proc/{}/fd/{}", p.task.pid, f.fd));
            }
        }
    }
    // One only a queued message holds: torpor's copy.
    for (file, fd) in flight {
        if let Some(OpenFile {
            kind: FileKind::MemfdFile(r),
            ..
        }) = files.get(*file as usize)
        {
            out.entry(r.id)
                .or_insert_with(|| format!("/proc/self/fd/{fd}"));
        }
    }
    for p in procs {
        for v in &p.vmas {
            if let Backing::Memfd { id, .. } = v.backing {
                out.entry(id).or_insert_with(|| {
                    format!("/proc/{}/map_files/{:x}-{:x}", p.task.pid, v.start, v.end)
                });
            }
        }
    }
    out
}

/// Stores every memfd of the tree: its record, then its contents.
pub(super) fn write<W: Write>(
    w: &mut ImageWriter<W>,
    procs: &[&ProcessState],
    files: &[OpenFile],
    flight: &[(u32, i32)],
) -> Result<(), Cause> {
    for (id, source) in sources(procs, files, flight) {
        let refuse = |what: String| Cause::Unsupported(format!("memfd {source}: {what}"));
        let link = std::fs::read_link(&source).map_err(|e| refuse(e.to_string()))?;
        let link = link.to_string_lossy();
        let name = name_of(&link).ok_or_else(|| refuse(format!("{link} is not a memfd")))?;
        let f = std::fs::File::open(&source).map_err(|e| refuse(format!("opening it: {e}")))?;
        let md = f.metadata()?;
        if md.ino() != id {
            return Err(refuse(format!("inode {} changed to {}", id, md.ino())));
        }
        if super::fs_magic(f.as_raw_fd())? == HUGETLBFS_MAGIC {
            return Err(refuse(
                "a hugetlb memfd, which torpor cannot restore".into(),
            ));
        }
        // SAFETY: fcntl on our own fd.
        let seals = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 {
            return Err(refuse(format!("F_GET_SEALS: {}", last_os())));
        }
        let obj = MemfdObject {
            id,
            name: RawPath::from(name),
            size: md.size(),
            seals: seals.unsigned_abs(),
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        };
        w.write(&obj)?;
        super::write_contents(w, &f, md.size(), ObjectRef::Memfd(id))
            .map_err(|e| refuse(format!("reading its contents: {e}")))?;
    }
    Ok(())
}

/// Creates the memfd of `o`, empty at its size, with its mode and owner;
/// its contents and seals come later.
pub(super) fn create(o: &MemfdObject) -> Result<OwnedFd, std::io::Error> {
    let name = std::ffi::CString::new(o.name.as_bytes().to_vec())
        .map_err(|_| std::io::Error::other("memfd name with NUL"))?;
    let mut mfd_flags = libc::MFD_CLOEXEC;
    // A memfd made without MFD_ALLOW_SEALING shows F_SEAL_SEAL alone.
    if o.seals != libc::F_SEAL_SEAL.unsigned_abs() {
        mfd_flags |= libc::MFD_ALLOW_SEALING;
    }
    // SAFETY: memfd_create with a valid C string.
    let f = owned(libc::c_long::from(unsafe {
        libc::memfd_create(name.as_ptr(), mfd_flags)
    }))?;
    let size = libc::off_t::try_from(o.size)
        .map_err(|_| std::io::Error::other(format!("memfd size {} too large here", o.size)))?;
    // SAFETY: integer arguments on our fd.
    if unsafe { libc::ftruncate(f.as_raw_fd(), size) } < 0 {
        return Err(last_os());
    }
    // SAFETY: integer arguments on our fd.
    if unsafe { libc::fchmod(f.as_raw_fd(), o.mode as libc::mode_t) } < 0 {
        return Err(last_os());
    }
    std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))?;
    Ok(f)
}

/// A new open file description of the memfd `obj` (an fd of torpor) with
/// the saved status flags and offset.
pub(super) fn reopen(obj: i32, r: &MemfdRef, flags: u32) -> Result<i32, std::io::Error> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{obj}"))
        .map_err(|_| std::io::Error::other("fd path"))?;
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_LARGEFILE;
    let oflags = (flags.bits() & keep) | libc::O_CLOEXEC;
    // SAFETY: open with a valid C string.
    let f = owned(libc::c_long::from(unsafe {
        libc::open(path.as_ptr(), oflags)
    }))?;
    let pos = libc::off_t::try_from(r.offset)
        .map_err(|_| std::io::Error::other(format!("offset {} too large here", r.offset)))?;
    // SAFETY: integer arguments on our fd.
    if unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_SET) } < 0 {
        return Err(last_os());
    }
    Ok(into_raw(f))
}

/// Adds the saved seals, once every mapping exists.
pub(super) fn seal(fd: i32, o: &MemfdObject) -> Result<(), std::io::Error> {
    // Without MFD_ALLOW_SEALING the memfd already has F_SEAL_SEAL alone.
    if o.seals == 0 || o.seals == libc::F_SEAL_SEAL.unsigned_abs() {
        return Ok(());
    }
    let seals = i32::try_from(o.seals).map_err(|_| std::io::Error::other("seals"))?;
    // SAFETY: integer arguments on our fd.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

/// A memfd of an image written before memfds became objects: contents
/// inline, one memfd per description.
pub(super) fn open_inline(s: &Memfd, flags: u32) -> Result<i32, std::io::Error> {
    let obj = MemfdObject {
        id: 0,
        name: s.name.clone(),
        size: s.size,
        seals: s.seals,
        mode: 0o777,
        // SAFETY: getuid/getgid have no memory effects.
        uid: unsafe { libc::getuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getgid() },
    };
    let f = create(&obj)?;
    super::pwrite_all(f.as_raw_fd(), &s.bytes, 0)?;
    let fd = reopen(
        f.as_raw_fd(),
        &MemfdRef {
            id: 0,
            offset: s.offset,
        },
        flags,
    )?;
    // The description is what the task gets: it keeps the memfd alive.
    drop(f);
    if let Err(e) = seal(fd, &obj) {
        // SAFETY: closing our fd on the error path.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

impl super::AnonKind for MemfdRef {
    const NAME: &'static str = "a memfd";
    const CLAIM: super::Claim = super::Claim::Memfd;

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let (path, info) = p.fdinfo()?;
        let info = crate::engine::procfs::parse_fdinfo(&path, &info)?;
        collect(p.pid, p.fd, info.pos).map_err(|e| {
            crate::engine::Cause::Unsupported(format!(
                "fd {} of process {} is a memfd ({}): {e}",
                p.fd, p.pid, p.link
            ))
        })
    }

    /// A new description of the memfd object created from the image.
    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        match cx.segs.memfds.get(&self.id) {
            Some((fd, _)) => Ok(reopen(*fd, self, cx.flags)?),
            None => Err(crate::engine::Cause::Refused(format!(
                "memfd {} is not in the image",
                self.id
            ))),
        }
    }
}

impl super::AnonKind for Memfd {
    const NAME: &'static str = "a memfd";
    /// Only images of an older torpor hold memfds with inline contents.
    const CLAIM: super::Claim = super::Claim::Nothing;

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        Err(p.unsupported("inline memfds are only read from old images"))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open_inline(self, cx.flags)?)
    }
}

//! Files on tmpfs that the tree maps shared (POSIX shared memory in
//! /dev/shm, say). The mapping itself is a shared file mapping like any
//! other, but tmpfs does not survive a power cycle: the dump stores the
//! file's contents, and a restore recreates the file, with its mode and
//! owner, when it is missing. A file still there is used as it is (it holds
//! the live contents), after the usual identity check.
//!
//! The file is recreated only on tmpfs, only when a process of the image
//! maps it shared, with that process's rights and through no symbolic
//! link; a restore that fails removes the files it made.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use crate::engine::state::ImageState;
use crate::engine::state::{Backing, ProcessState};
use crate::engine::Cause;
use crate::image::records::{RawPath, TmpfsFile, TMPFS_CHUNK};
use crate::image::ImageWriter;

use super::owner::{self, Acting};

/// `TMPFS_MAGIC` from linux/magic.h.
const TMPFS_MAGIC: u64 = 0x0102_1994;

fn on_tmpfs(path: &str) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| {
        // f_type is i64 in glibc's x86_64 statfs, u32 in musl's ARM one.
        #[allow(
            clippy::unnecessary_cast,
            clippy::cast_sign_loss,
            clippy::cast_lossless
        )]
        let magic = s.filesystem_type().0 as u64;
        magic == TMPFS_MAGIC
    })
}

pub(super) fn write<W: Write>(
    w: &mut ImageWriter<W>,
    procs: &[&ProcessState],
) -> Result<(), Cause> {
    let mut done = BTreeSet::new();
    for p in procs {
        for v in &p.vmas {
            let Backing::File { path, .. } = &v.backing else {
                continue;
            };
            if !v.shared || done.contains(path) || !on_tmpfs(path) {
                continue;
            }
            done.insert(path.clone());
            let mut f = std::fs::File::open(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("shared tmpfs file {path}: {e}"))
            })?;
            let md = f.metadata()?;
            let mut offset = 0u64;
            let mut buf = vec![0u8; TMPFS_CHUNK];
            loop {
                let n = f.read(&mut buf)?;
                let rec = TmpfsFile {
                    path: RawPath::from(path.as_str()),
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: md.size(),
                    offset,
                    bytes: buf[..n].to_vec(),
                };
                // An empty file still gets its one record.
                if n > 0 || offset == 0 {
                    w.write(&rec)?;
                }
                if n == 0 {
                    break;
                }
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Whether the restore will recreate `path` from the image (it is missing
/// and the image holds its contents).
pub fn to_recreate(st: &ImageState, path: &str) -> bool {
    std::fs::symlink_metadata(path).is_err()
        && st
            .tmpfs_files
            .iter()
            .any(|f| f.path.as_bytes() == path.as_bytes())
}

/// The process that maps `path` shared, whose rights recreate it.
pub fn mapper<'a>(st: &'a ImageState, path: &str) -> Option<&'a ProcessState> {
    st.processes.iter().find(|p| {
        p.vmas
            .iter()
            .any(|v| v.shared && matches!(&v.backing, Backing::File { path: q, .. } if q == path))
    })
}

/// Checks, before anything is created, that each tmpfs file to recreate is
/// mapped shared by a process of the image and would be made on tmpfs.
pub fn check(st: &ImageState) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for c in &st.tmpfs_files {
        let path = c.path.to_string();
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(p) = mapper(st, &path) else {
            return Err(format!(
                "the image holds the contents of tmpfs file {path}, which no process maps shared"
            ));
        };
        if !to_recreate(st, &path) {
            continue;
        }
        let who = Acting::of(p);
        let dir = std::path::Path::new(&path)
            .parent()
            .map_or_else(|| "/".to_string(), |d| d.to_string_lossy().into_owned());
        let what = format!("directory {dir} of tmpfs file");
        let fd = owner::open_as(&who, &dir, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| owner::open_error(&what, &path, &who, &e))?;
        if super::fs_magic(std::os::fd::AsRawFd::as_raw_fd(&fd)).ok() != Some(TMPFS_MAGIC) {
            return Err(format!(
                "tmpfs file {path} would be recreated in {dir}, which is not on tmpfs"
            ));
        }
    }
    Ok(())
}

/// The tmpfs files a restore made: removed again unless the restore
/// finished ([`Made::keep`]).
#[derive(Debug, Default)]
pub struct Made {
    /// Each file's directory (held open) and name in it.
    files: Vec<(OwnedFd, CString)>,
    /// Each file's path.
    paths: Vec<String>,
}

impl Made {
    /// The paths of the files made.
    pub fn paths(&self) -> &[String] {
        &self.paths
    }

    /// The restore finished: the files stay.
    pub fn keep(mut self) {
        self.files.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for (dir, name) in &self.files {
            // Removed by the directory held since the creation: a path
            // changed meanwhile reaches nothing else.
            let _ = nix::unistd::unlinkat(
                dir,
                name.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Recreates the missing tmpfs files, each as the process that maps it,
/// through no symbolic link; a failure removes the ones made.
pub fn recreate(st: &ImageState) -> Result<Made, Cause> {
    let mut made = Made::default();
    let mut open: BTreeMap<Vec<u8>, std::fs::File> = BTreeMap::new();
    for c in &st.tmpfs_files {
        let path = c.path.to_string();
        let key = c.path.as_bytes().to_vec();
        if !open.contains_key(&key) {
            if !to_recreate(st, &path) {
                continue;
            }
            let p = mapper(st, &path).ok_or_else(|| {
                Cause::Refused(format!("tmpfs file {path}: no process maps it shared"))
            })?;
            let who = Acting::of(p);
            let (dir, name) = match path.rsplit_once('/') {
                Some(("", n)) => ("/", n),
                Some((d, n)) => (d, n),
                None => return Err(Cause::Refused(format!("tmpfs file {path}: not absolute"))),
            };
            let cname = CString::new(name)
                .map_err(|_| Cause::Refused(format!("path {path:?} holds a NUL byte")))?;
            let f = owner::as_user(&who, || -> Result<(OwnedFd, OwnedFd), std::io::Error> {
                let d = owner::open_no_symlinks(dir, libc::O_PATH | libc::O_DIRECTORY, 0)?;
                let f = nix::fcntl::openat(
                    &d,
                    cname.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY
                        | nix::fcntl::OFlag::O_CREAT
                        | nix::fcntl::OFlag::O_EXCL
                        | nix::fcntl::OFlag::O_NOFOLLOW
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::from_bits_truncate(c.mode & 0o777),
                )
                .map_err(std::io::Error::from)?;
                Ok((d, f))
            })?
            .map_err(|e| {
                Cause::Refused(
                    owner::open_error("tmpfs file", &path, &who, &e)
                        .replace(": uid", " (recreating it): uid"),
                )
            })?;
            let (d, f) = f;
            made.files.push((d, cname));
            made.paths.push(path.clone());
            let f = std::fs::File::from(f);
            f.set_len(c.size)?;
            // The mode past the umask, the owner as it was (the task's own
            // rights: a file another user owned cannot be made).
            owner::as_user(&who, || -> Result<(), std::io::Error> {
                std::os::unix::fs::fchown(&f, Some(c.uid), Some(c.gid))?;
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                    c.mode & 0o7777,
                ))
            })?
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("giving tmpfs file {path} its owner and mode: {e}"),
                )
            })?;
            open.insert(key.clone(), f);
        }
        let Some(f) = open.get_mut(&key) else {
            continue;
        };
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(c.offset))?;
        f.write_all(&c.bytes)?;
    }
    Ok(made)
}

//! Files on tmpfs that the tree maps shared (POSIX shared memory in
//! /dev/shm, say). The mapping itself is a shared file mapping like any
//! other, but tmpfs does not survive a power cycle: the dump stores the
//! file's contents, and a restore recreates the file, with its mode and
//! owner, when it is missing. A file still there is used as it is (it holds
//! the live contents), after the usual identity check.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::engine::state::ImageState;
use crate::engine::state::{Backing, ProcessState};
use crate::engine::Cause;
use crate::image::records::{RawPath, TmpfsFile, TMPFS_CHUNK};
use crate::image::ImageWriter;

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
    !std::path::Path::new(path).exists()
        && st
            .tmpfs_files
            .iter()
            .any(|f| f.path.as_bytes() == path.as_bytes())
}

pub fn recreate(st: &ImageState) -> Result<(), Cause> {
    let mut made: BTreeSet<Vec<u8>> = BTreeSet::new();
    for c in &st.tmpfs_files {
        let path = c.path.to_string();
        let first = !made.contains(c.path.as_bytes());
        if first && std::path::Path::new(&path).exists() {
            continue;
        }
        let mut f = if first {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(c.mode)
                .open(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("recreating {path}: {e}")))?;
            f.set_len(c.size)?;
            // The mode is set again past the umask; the owner as it was.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(c.mode))?;
            std::os::unix::fs::fchown(&f, Some(c.uid), Some(c.gid))?;
            made.insert(c.path.as_bytes().to_vec());
            f
        } else {
            std::fs::OpenOptions::new().write(true).open(&path)?
        };
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(c.offset))?;
        f.write_all(&c.bytes)?;
    }
    Ok(())
}

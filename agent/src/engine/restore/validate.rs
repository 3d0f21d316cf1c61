//! Everything a restore depends on, checked before anything is created:
//! first the image's own structure (`plan`), then who the image may act
//! as (an image taken for a user holds only that user's tasks), then
//! against this system: pids free, working directories, executables and
//! mapped files unchanged, the files, devices, FIFOs and external
//! descriptors there, memfds and SysV segments creatable.
//!
//! Every path the restore will open or create in is opened here already,
//! as the task that held it and through no symbolic link, and compared
//! with what the dump recorded of it (`file-owner`): the inode, its type
//! and owner. A directory a file is recreated in is compared by type and
//! owner only (a tmpfs is another inode after a reboot).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::engine::files::owner::{self, Acting};
use crate::engine::state::ImageState;
use crate::engine::state::{Backing, FileKind, ProcessState};
use crate::engine::{EngineError, Step};

use super::{refused, RestoreOptions};
use crate::engine::files::unlinked_dir_exists;

/// The process whose rights open each file description of the image (by
/// index): the first that holds it.
pub(super) fn holders(st: &ImageState) -> Vec<Option<&ProcessState>> {
    let mut out = vec![None; st.files.len()];
    for p in &st.processes {
        for f in &p.fds {
            if let Some(slot @ None) = out.get_mut(f.file as usize) {
                *slot = Some(p);
            }
        }
    }
    out
}

/// An image taken for a user other than root holds only tasks of that
/// user, without capabilities or groups the user did not have: a restore
/// never acts with more than the user's rights.
fn check_requester(st: &ImageState) -> Result<(), String> {
    let Some(r) = &st.requested_by else {
        return Ok(());
    };
    if r.uid == 0 {
        return Ok(());
    }
    for p in st.processes.iter().filter(|p| p.task.exit_status.is_none()) {
        let c = &p.task.creds;
        let pid = p.task.pid;
        let asked = r.uid;
        if c.uids().iter().any(|&u| u != r.uid) {
            let [real, eff, saved, fs] = c.uids();
            return Err(format!("the image was taken for uid {asked}, but process {pid} has uids {real}, {eff}, {saved}, {fs} (real, effective, saved, fs)"));
        }
        if c.gids().iter().any(|&g| g != r.gid) {
            let [real, eff, saved, fs] = c.gids();
            return Err(format!("the image was taken for uid {asked} (gid {}), but process {pid} has gids {real}, {eff}, {saved}, {fs} (real, effective, saved, fs)", r.gid));
        }
        if let Some(g) = c.groups.iter().find(|g| !r.groups.contains(g)) {
            return Err(format!(
                "the image was taken for uid {asked}, but process {pid} is in group {g}, which the user was not"
            ));
        }
        if c.caps()[1] != 0 || c.caps()[2] != 0 || c.caps()[4] != 0 {
            return Err(format!(
                "the image was taken for uid {asked}, but process {pid} has capabilities (permitted {:#x}, effective {:#x}, ambient {:#x})",
                c.caps()[1], c.caps()[2], c.caps()[4]
            ));
        }
    }
    Ok(())
}

/// Whether a file its holder may no longer open by name (it opened it
/// before giving up rights) may be opened with torpor's own: only in an
/// image root asked for, and only a path whose identity the image records.
pub(super) fn may_open_as_root(st: &ImageState, path: &str) -> bool {
    st.requested_by.as_ref().is_none_or(|r| r.uid == 0) && st.owners.contains_key(path)
}

/// Why a path cannot be used.
#[derive(Debug)]
enum Check {
    /// It does not exist: the caller says so in its own words.
    Gone,
    Refused(String),
}

/// How much of the dump's record must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Same {
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
fn check_path(
    st: &ImageState,
    what: &str,
    path: &str,
    who: &Acting,
    same: Same,
) -> Result<std::fs::Metadata, Check> {
    let fd = match owner::open_as(who, path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(Check::Gone),
        // A file opened before the task gave up rights (as root, say): the
        // restore may open it with torpor's own when root asked for the
        // image and the file is the dump's, compared below.
        Err(e) if owner::denied(&e) && may_open_as_root(st, path) => {
            owner::open_as(&Acting::root(), path, libc::O_PATH, 0)
                .map_err(|e| Check::Refused(owner::open_error(what, path, who, &e)))?
        }
        Err(e) => return Err(Check::Refused(owner::open_error(what, path, who, &e))),
    };
    let md = owner::metadata(&fd).map_err(|e| Check::Refused(format!("{what} {path}: {e}")))?;
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
    let changes = owner::changes(&md, &rec);
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
fn check_unlinked_dir(st: &ImageState, path: &str, who: &Acting) -> Result<(), String> {
    let dir = Path::new(path)
        .parent()
        .map_or_else(|| "/".to_string(), |d| d.to_string_lossy().into_owned());
    match check_path(st, "directory", &dir, who, Same::Owner) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) | Err(Check::Gone) => unlinked_dir_exists(path),
        Err(Check::Refused(why)) => Err(format!("{why} (unlinked file {path} is recreated there)")),
    }
}

pub fn validate(st: &ImageState, opts: &RestoreOptions) -> Result<(), EngineError> {
    let step = Step::Validate;
    super::plan::check_structure(st)?;
    check_requester(st).map_err(|why| refused(step, why))?;
    let holders = holders(st);
    for p in &st.processes {
        if p.task.exit_status.is_some() {
            if p.task.ppid == 0 {
                return Err(refused(
                    step,
                    format!("the root {} of the image is a zombie", p.task.pid),
                ));
            }
            if Path::new(&format!("/proc/{}", p.task.pid)).exists() {
                return Err(refused(
                    step,
                    format!(
                        "pid {} (a zombie in the image) is in use by another task",
                        p.task.pid
                    ),
                ));
            }
            continue;
        }
        for t in &p.threads {
            if Path::new(&format!("/proc/{}", t.tid)).exists() {
                return Err(refused(
                    step,
                    format!(
                        "pid {} (of process {}) is in use by another task",
                        t.tid, p.task.pid
                    ),
                ));
            }
        }
        if p.task.root.as_bytes() != b"/" {
            return Err(refused(
                step,
                format!(
                    "process {} ran in a changed root ({})",
                    p.task.pid, p.task.root
                ),
            ));
        }
        let who = Acting::of(p);
        let gone = || {
            refused(
                step,
                format!(
                    "working directory {} of process {} is gone",
                    p.task.cwd, p.task.pid
                ),
            )
        };
        match check_path(
            st,
            "working directory",
            &p.task.cwd.to_string(),
            &who,
            Same::Inode,
        ) {
            Ok(md) if md.is_dir() => {}
            Ok(_) | Err(Check::Gone) => return Err(gone()),
            Err(Check::Refused(why)) => return Err(refused(step, why)),
        }
        if !p.task.exe.as_path().exists() {
            return Err(refused(
                step,
                format!(
                    "executable {} of process {} is gone",
                    p.task.exe, p.task.pid
                ),
            ));
        }
        for v in &p.vmas {
            if let Backing::File { path, identity, .. } = &v.backing {
                if crate::engine::files::tmpfs_file_to_recreate(st, path) {
                    continue;
                }
                let md = match check_path(st, "mapped file", path, &who, Same::Inode) {
                    Ok(md) => md,
                    Err(Check::Gone) => {
                        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
                        return Err(refused(
                            step,
                            format!("mapped file {path} of process {}: {e}", p.task.pid),
                        ));
                    }
                    Err(Check::Refused(why)) => return Err(refused(step, why)),
                };
                let now = (md.dev(), md.ino(), md.size(), md.mtime(), md.mtime_nsec());
                let then = (
                    identity.dev,
                    identity.inode,
                    identity.size,
                    identity.mtime_sec,
                    identity.mtime_nsec,
                );
                if now != then {
                    return Err(refused(
                        step,
                        format!("mapped file {path} changed since the dump (dev, inode, size, mtime {now:?}, image has {then:?})"),
                    ));
                }
            }
        }
    }
    for o in &st.unlinked {
        let path = String::from_utf8_lossy(o.path.as_bytes());
        let who = crate::engine::files::unlinked_holder(st, o.inode).ok_or_else(|| {
            refused(
                step,
                format!("unlinked file {path}: no process holds or maps it"),
            )
        })?;
        check_unlinked_dir(st, &path, &who).map_err(|why| refused(step, why))?;
    }
    crate::engine::files::check_tmpfs_files(st).map_err(|why| refused(step, why))?;
    for (i, f) in st.files.iter().enumerate() {
        let who = holders
            .get(i)
            .copied()
            .flatten()
            .map_or_else(Acting::root, Acting::of);
        match &f.kind {
            FileKind::External { key } => {
                if !opts.inherit.iter().any(|(k, _)| k == key) {
                    return Err(refused(
                        step,
                        format!(
                            "external fd {key:?} needs a descriptor: give --inherit-fd {key}=FD"
                        ),
                    ));
                }
            }
            FileKind::Path {
                path,
                dir,
                identity,
                ..
            } => {
                let what = if *dir { "open directory" } else { "open file" };
                match check_path(st, what, path, &who, Same::Inode) {
                    Ok(md) => {
                        // Images without file-owner records: the inode of
                        // the fd record at least.
                        let then = (identity.dev, identity.inode);
                        if !st.owners.contains_key(path)
                            && !*dir
                            && then != (0, 0)
                            && (md.dev(), md.ino()) != then
                        {
                            return Err(refused(
                                step,
                                format!("{what} {path} changed since the dump: inode {} on device {:#x}, the dump's was inode {} on device {:#x}", md.ino(), md.dev(), then.1, then.0),
                            ));
                        }
                    }
                    Err(Check::Gone) => {
                        return Err(refused(step, format!("open file {path} is gone")))
                    }
                    Err(Check::Refused(why)) => return Err(refused(step, why)),
                }
            }
            FileKind::Device { path, tty, .. } => {
                let exists = match check_path(st, "device", path, &who, Same::Type) {
                    Ok(md) => {
                        use std::os::unix::fs::FileTypeExt;
                        let t = md.file_type();
                        if !(t.is_char_device() || t.is_block_device()) {
                            return Err(refused(
                                step,
                                format!(
                                    "device {path} changed since the dump: {}, the dump's was a device",
                                    owner::type_name(md.mode())
                                ),
                            ));
                        }
                        true
                    }
                    Err(Check::Gone) => false,
                    Err(Check::Refused(why)) => return Err(refused(step, why)),
                };
                if !(exists || (*tty && opts.tty.is_some())) {
                    let hint = if *tty {
                        "; give --tty PATH to use another terminal"
                    } else {
                        ""
                    };
                    return Err(refused(step, format!("device {path} is gone{hint}")));
                }
            }
            FileKind::Unlinked { path, .. } => {
                check_unlinked_dir(st, path, &who).map_err(|why| refused(step, why))?
            }
            // Checked with the image's unlinked-file objects above.
            FileKind::UnlinkedFile { .. } => {}
            // The pipe itself was checked with the image's structure.
            FileKind::Pipe { fifo, .. } => {
                if let Some(path) = fifo {
                    use std::os::unix::fs::FileTypeExt;
                    match check_path(st, "FIFO", path, &who, Same::Inode) {
                        Ok(md) if md.file_type().is_fifo() => {}
                        Ok(_) | Err(Check::Gone) => {
                            return Err(refused(step, format!("FIFO {path} is gone")))
                        }
                        Err(Check::Refused(why)) => return Err(refused(step, why)),
                    }
                }
            }
            FileKind::Anon(_) => {}
            FileKind::TorporConn => {
                if opts.torpor_conn.is_none() {
                    return Err(refused(
                        step,
                        "the image holds a connection to torpor daemon; restore it with `torpor boot` or `torpor run`, which reconnect it".into(),
                    ));
                }
            }
        }
    }
    crate::engine::files::Segments::check(st).map_err(|e| refused(step, e))?;
    Ok(())
}

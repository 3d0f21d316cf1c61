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

use crate::engine::files::owner::{check_path, check_unlinked_dir, holders, Acting, Check, Same};
use crate::engine::files::CheckCx;
use crate::engine::state::{Backing, ImageState};
use crate::engine::{EngineError, Step};

use super::{refused, RestoreOptions};

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

pub fn validate(st: &ImageState, opts: &RestoreOptions) -> Result<(), EngineError> {
    let step = Step::Validate;
    super::plan::check_structure(st)?;
    check_requester(st).map_err(|why| refused(step, why))?;
    crate::engine::files::late_outside(&st.files, &st.processes)
        .map_err(|why| refused(step, why))?;
    if !opts.tcp_established {
        if let Some(c) = st.files.iter().find_map(|f| match &f.kind {
            crate::engine::state::FileKind::TcpConnection(c) => Some(c),
            _ => None,
        }) {
            return Err(refused(
                step,
                format!(
                    "the image keeps established TCP connections ({}): restore with --tcp-established (restore.tcp_established in the configuration)",
                    crate::engine::files::tcp_endpoints(&c.socket)
                ),
            ));
        }
    }
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
        let cx = CheckCx {
            st,
            who: &who,
            inherit: &opts.inherit,
            tty: opts.tty.as_deref(),
            torpor_conn: opts.torpor_conn.is_some(),
        };
        f.kind.check(&cx).map_err(|why| refused(step, why))?;
    }
    crate::engine::files::Segments::check(st).map_err(|e| refused(step, e))?;
    Ok(())
}

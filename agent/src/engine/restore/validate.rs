//! Everything a restore depends on, checked before anything is created:
//! first the image's own structure (`plan`), then against this system:
//! pids free, working directories, executables and mapped files
//! unchanged, the files, devices, FIFOs and external descriptors there,
//! memfds and SysV segments creatable.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::engine::state::ImageState;
use crate::engine::state::{Backing, FileKind};
use crate::engine::{EngineError, Step};

use super::{refused, RestoreOptions};
use crate::engine::files::unlinked_dir_exists;

pub fn validate(st: &ImageState, opts: &RestoreOptions) -> Result<(), EngineError> {
    let step = Step::Validate;
    super::plan::check_structure(st)?;
    for p in &st.processes {
        if p.zombie.is_some() {
            if p.ppid == 0 {
                return Err(refused(
                    step,
                    format!("the root {} of the image is a zombie", p.pid),
                ));
            }
            if Path::new(&format!("/proc/{}", p.pid)).exists() {
                return Err(refused(
                    step,
                    format!(
                        "pid {} (a zombie in the image) is in use by another task",
                        p.pid
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
                        t.tid, p.pid
                    ),
                ));
            }
        }
        if p.root != "/" {
            return Err(refused(
                step,
                format!("process {} ran in a changed root ({})", p.pid, p.root),
            ));
        }
        if !Path::new(&p.cwd).is_dir() {
            return Err(refused(
                step,
                format!("working directory {} of process {} is gone", p.cwd, p.pid),
            ));
        }
        if !Path::new(&p.exe).exists() {
            return Err(refused(
                step,
                format!("executable {} of process {} is gone", p.exe, p.pid),
            ));
        }
        for v in &p.vmas {
            if let Backing::File { path, identity, .. } = &v.backing {
                if crate::engine::files::tmpfs_file_to_recreate(st, path) {
                    continue;
                }
                let md = std::fs::metadata(path).map_err(|e| {
                    refused(
                        step,
                        format!("mapped file {path} of process {}: {e}", p.pid),
                    )
                })?;
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
        unlinked_dir_exists(&String::from_utf8_lossy(o.path.as_bytes()))
            .map_err(|why| refused(step, why))?;
    }
    for f in &st.files {
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
            FileKind::Path { path, .. } => {
                if !Path::new(path).exists() {
                    return Err(refused(step, format!("open file {path} is gone")));
                }
            }
            FileKind::Device { path, tty, .. } => {
                if !(Path::new(path).exists() || (*tty && opts.tty.is_some())) {
                    let hint = if *tty {
                        "; give --tty PATH to use another terminal"
                    } else {
                        ""
                    };
                    return Err(refused(step, format!("device {path} is gone{hint}")));
                }
            }
            FileKind::Unlinked { path, .. } => {
                unlinked_dir_exists(path).map_err(|why| refused(step, why))?
            }
            // Checked with the image's unlinked-file objects above.
            FileKind::UnlinkedFile { .. } => {}
            // The pipe itself was checked with the image's structure.
            FileKind::Pipe { fifo, .. } => {
                if let Some(path) = fifo {
                    use std::os::unix::fs::FileTypeExt;
                    let is_fifo = std::fs::metadata(path)
                        .map(|m| m.file_type().is_fifo())
                        .unwrap_or(false);
                    if !is_fifo {
                        return Err(refused(step, format!("FIFO {path} is gone")));
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

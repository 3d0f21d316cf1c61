//! What each task maps from a file, executes and works in, opened by torpor
//! before the tasks are forked, as the task that held it (its fs ids and
//! groups), through no symbolic link, and only if it is the file the dump
//! recorded (`owner::Opening`). The tasks inherit the descriptors: a
//! mapping is made from one, `PR_SET_MM_MAP` takes the executable's, the
//! task changes into its directory with `fchdir`; no path is opened inside
//! a task, where it would be opened as root.
//!
//! Unsafe code: `close` on torpor's own descriptors.
#![allow(unsafe_code)]

use std::collections::BTreeMap;

use crate::engine::state::{Backing, ImageState};
use crate::engine::Cause;

use super::owner::{Acting, Opening};

/// Descriptors of the files the tree maps, executes and works in.
#[derive(Debug, Default)]
pub struct Held {
    /// Each file mapped, by path, access (read-write for a shared writable
    /// mapping) and whose rights opened it.
    mapped: Vec<((String, bool, Acting), i32)>,
    /// Each process's executable, by pid.
    exe: BTreeMap<i32, i32>,
    /// Each process's working directory (`O_PATH`), by pid.
    cwd: BTreeMap<i32, i32>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for fd in self.fds() {
            // SAFETY: closing the fds this struct opened.
            unsafe { libc::close(fd) };
        }
    }
}

/// `fd` moved to `high` or above, the original closed.
fn high(fd: i32, high: i32) -> Result<i32, Cause> {
    super::move_high(fd, high)
}

impl Held {
    /// Opens every file the live processes of `st` map, execute and work
    /// in, each as its process and at or above `at`; `made` are the tmpfs
    /// files the restore recreated.
    pub fn open(st: &ImageState, at: i32, made: &[String]) -> Result<Held, Cause> {
        let mut held = Held::default();
        let root_asked = st.requested_by.as_ref().is_none_or(|r| r.uid == 0);
        // A tmpfs file torpor recreated is not the dump's inode: it is
        // opened as its holder, through no link, without the comparison.
        let no_owners = BTreeMap::new();
        for p in st.processes.iter().filter(|p| p.task.exit_status.is_none()) {
            let who = Acting::of(p);
            let opening = Opening {
                who: &who,
                owners: &st.owners,
                root_asked,
            };
            let exe = p.task.exe.to_string();
            let fd = opening.open("executable", &exe, libc::O_RDONLY | libc::O_CLOEXEC)?;
            held.exe.insert(p.task.pid, high(fd, at)?);
            let cwd = p.task.cwd.to_string();
            let fd = opening.open(
                "working directory",
                &cwd,
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )?;
            held.cwd.insert(p.task.pid, high(fd, at)?);
            for v in &p.vmas {
                let Backing::File { path, .. } = &v.backing else {
                    continue;
                };
                let rw = v.shared && v.prot & libc::PROT_WRITE != 0;
                let key = (path.clone(), rw, who.clone());
                if held.mapped.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let flags = if rw { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
                let fd = if made.contains(path) {
                    Opening {
                        owners: &no_owners,
                        ..opening
                    }
                    .open("mapped file", path, flags)?
                } else {
                    opening.open("mapped file", path, flags)?
                };
                held.mapped.push((key, high(fd, at)?));
            }
        }
        Ok(held)
    }

    /// Every descriptor held (the tasks keep them until their mappings
    /// are made).
    pub fn fds(&self) -> Vec<i32> {
        self.mapped
            .iter()
            .map(|(_, fd)| *fd)
            .chain(self.exe.values().copied())
            .chain(self.cwd.values().copied())
            .collect()
    }

    /// The descriptor a task of `who` maps `path` from.
    pub fn mapped(&self, path: &str, rw: bool, who: &Acting) -> Result<i32, Cause> {
        self.mapped
            .iter()
            .find(|((p, w, a), _)| p == path && *w == rw && a == who)
            .map(|(_, fd)| *fd)
            .ok_or_else(|| Cause::Refused(format!("mapped file {path} was not opened")))
    }

    /// The descriptor of process `pid`'s executable.
    pub fn exe(&self, pid: i32) -> Result<i32, Cause> {
        self.exe.get(&pid).copied().ok_or_else(|| {
            Cause::Refused(format!("the executable of process {pid} was not opened"))
        })
    }

    /// The descriptor of process `pid`'s working directory.
    pub fn cwd(&self, pid: i32) -> Option<i32> {
        self.cwd.get(&pid).copied()
    }
}

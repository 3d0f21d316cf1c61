//! pidfds (`pidfd_open`, `clone(CLONE_PIDFD)`) of processes of the tree:
//! a process's handle on its children, on itself, on a zombie it has not
//! reaped. A pidfd names its process by its `struct pid`, which only that
//! process's restored task can give again, so the restore opens it late:
//! the descriptor's number holds a placeholder (`/dev/null`) while the
//! tasks are forked, and once every task of the tree exists, the holding
//! process opens the pidfd itself (a remote `pidfd_open`) and puts it in
//! the placeholder's place (`dup3`). Each descriptor gets a description of
//! its own: descriptors that shared one (`dup`, `fork`) share nothing after
//! the restore but the process they name.
//!
//! Refused at dump time: a pidfd of a process outside the tree (its
//! `struct pid` cannot be had again), of a process that ended and was
//! reaped (fdinfo `Pid: -1`), and a thread's pidfd (`PIDFD_THREAD`).
//!
//! Unsafe code: the placeholder is opened through libc.
#![allow(unsafe_code)]

use crate::engine::state::{FileKind, OpenFile, ProcessState};
use crate::engine::Cause;
use crate::image::records::Pidfd;

/// `PIDFD_THREAD`, which is `O_EXCL`: a pidfd of one thread.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

impl super::AnonKind for Pidfd {
    const NAME: &'static str = "a pidfd";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:[pidfd]");

    fn collect(p: &super::Probe<'_>) -> Result<Self, Cause> {
        let (path, info) = p.fdinfo()?;
        let flags = super::field(&info, "flags")
            .and_then(|f| u32::from_str_radix(f, 8).ok())
            .ok_or_else(|| p.bad_fdinfo(&path, "no readable flags"))?;
        if flags & PIDFD_THREAD != 0 {
            return Err(
                p.unsupported("a pidfd of one thread (PIDFD_THREAD), which torpor cannot restore")
            );
        }
        let pid: i32 = super::field(&info, "Pid")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| p.bad_fdinfo(&path, "no readable Pid"))?;
        if pid <= 0 {
            return Err(p.unsupported(
                "a pidfd of a process that has ended and was reaped, which torpor cannot restore",
            ));
        }
        Ok(Pidfd { pid })
    }

    /// The placeholder that keeps the descriptor's number until
    /// [`late_pidfds`] puts the pidfd there.
    fn open(&self, _cx: &mut super::OpenCx<'_>) -> Result<i32, Cause> {
        // SAFETY: a constant NUL-terminated path; open returns a new fd.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(Cause::Io(std::io::Error::last_os_error()));
        }
        Ok(fd)
    }
}

/// Refuses a pidfd that names a process outside the trees (dumped, or of
/// the image), naming the descriptor. Checked at the dump and again, on
/// the image's word, before a restore creates anything.
pub fn outside<'a>(
    files: &[OpenFile],
    processes: impl IntoIterator<Item = &'a ProcessState> + Clone,
) -> Result<(), String> {
    let tree: Vec<i32> = processes.clone().into_iter().map(|p| p.task.pid).collect();
    for p in processes {
        for l in late_pidfds(p, files) {
            if !tree.contains(&l.pid) {
                return Err(format!(
                    "fd {} of process {} is a pidfd of process {}, which is not in the tree: torpor cannot give it again",
                    l.fd, p.task.pid, l.pid
                ));
            }
        }
    }
    Ok(())
}

/// One pidfd a restored process opens once every task exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatePidfd {
    /// The descriptor's number in the process.
    pub fd: i32,
    /// The process it names.
    pub pid: i32,
    /// `pidfd_open` flags: `PIDFD_NONBLOCK` (`O_NONBLOCK`) or none.
    pub flags: u32,
    pub cloexec: bool,
}

/// The pidfds process `p` holds, in descriptor order.
pub fn late_pidfds(p: &ProcessState, files: &[OpenFile]) -> Vec<LatePidfd> {
    p.fds
        .iter()
        .filter_map(|d| {
            let f = files.get(usize::try_from(d.file).ok()?)?;
            match &f.kind {
                FileKind::Pidfd(pf) => Some(LatePidfd {
                    fd: d.fd,
                    pid: pf.pid,
                    flags: f.flags & libc::O_NONBLOCK as u32,
                    cloexec: d.cloexec,
                }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::Fd;

    fn process(pid: i32, fds: &[(i32, u32)]) -> ProcessState {
        let mut p = ProcessState::default();
        p.task.pid = pid;
        p.fds = fds
            .iter()
            .map(|&(fd, file)| Fd {
                fd,
                file,
                cloexec: fd % 2 == 0,
            })
            .collect();
        p
    }

    fn pidfd(pid: i32, flags: u32) -> OpenFile {
        OpenFile {
            flags,
            kind: FileKind::Pidfd(Pidfd { pid }),
            sigio: None,
        }
    }

    #[test]
    fn pidfds_name_processes_of_the_tree_or_are_refused_by_fd() {
        let files = [pidfd(20, 0o2), pidfd(10, 0o4002), pidfd(99, 0o2)];
        let root = process(10, &[(4, 0), (5, 1)]);
        let child = process(20, &[(7, 1)]);
        assert_eq!(
            late_pidfds(&root, &files),
            [
                LatePidfd {
                    fd: 4,
                    pid: 20,
                    flags: 0,
                    cloexec: true
                },
                LatePidfd {
                    fd: 5,
                    pid: 10,
                    flags: libc::O_NONBLOCK as u32,
                    cloexec: false
                }
            ]
        );
        assert_eq!(outside(&files, [&root, &child]), Ok(()));
        // A file index beyond the table names nothing.
        let stray = process(20, &[(7, 1), (8, 2), (9, 7)]);
        assert_eq!(
            outside(&files, [&root, &stray]),
            Err("fd 8 of process 20 is a pidfd of process 99, which is not in the tree: torpor cannot give it again".into())
        );
    }
}

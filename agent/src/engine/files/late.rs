//! Descriptors that name a process of the tree, which only exists again
//! once the tasks are forked, so the restore opens them late:
//!
//! - pidfds (`pidfd_open`, `clone(CLONE_PIDFD)`): a process's handle on its
//!   children, on itself, on a zombie it has not reaped;
//! - files and directories of `/proc/PID/` of a process of the tree
//!   (`/proc/self/status` read again and again, `/proc/PID/task`...).
//!
//! The descriptor's number holds a placeholder (`/dev/null`) while the
//! tasks are forked; once every task of the tree exists, the holding
//! process opens the object itself (a remote `pidfd_open`, or `openat2`
//! through no symbolic or magic link), seeks a `/proc` file to its offset
//! and puts it in the placeholder's place (`dup3`). Each descriptor gets a
//! description of its own: descriptors that shared one (`dup`, `fork`)
//! share only what they name afterwards.
//!
//! Refused at dump time: a pidfd or a `/proc` file of a process outside
//! the tree, a pidfd of a process that ended and was reaped (fdinfo
//! `Pid: -1`), and a thread's pidfd (`PIDFD_THREAD`).
//!
//! Unsafe code: the placeholder is opened and `/proc` is identified
//! (`statfs`) through libc.
#![allow(unsafe_code)]

use crate::engine::state::{FileKind, OpenFile, ProcessState};
use crate::engine::Cause;
use crate::image::records::{FdKind, Pidfd, ProcFile, RawPath};

/// `PIDFD_THREAD`, which is `O_EXCL`: a pidfd of one thread.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// `statfs` `f_type` of procfs.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

/// The placeholder that keeps a descriptor's number until [`late_files`]
/// puts the object there.
fn placeholder() -> Result<i32, Cause> {
    // SAFETY: a constant NUL-terminated path; open returns a new fd.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Cause::Io(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

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

    fn open(&self, _cx: &mut super::OpenCx<'_>) -> Result<i32, Cause> {
        placeholder()
    }
}

/// Checks the path below `/proc/PID/` an image names: at most `task/TID`
/// and one name, each of letters, digits, `_`, `-` and `.` (no `.` or
/// `..`). The open itself follows no link (`openat2`).
pub fn check_proc_path(path: &[u8]) -> Result<(), String> {
    let shown = String::from_utf8_lossy(path);
    if path.is_empty() {
        return Ok(());
    }
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let name_ok = |c: &[u8]| {
        !c.is_empty()
            && c != b"."
            && c != b".."
            && c.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    let shape_ok = match parts.as_slice() {
        [one] => name_ok(one),
        [task, tid] | [task, tid, _] if *task == b"task" => {
            !tid.is_empty()
                && tid.iter().all(u8::is_ascii_digit)
                && parts.get(2).is_none_or(|n| name_ok(n))
        }
        _ => false,
    };
    if shape_ok {
        Ok(())
    } else {
        Err(format!(
            "/proc/PID/{shown} is not a name torpor opens below /proc/PID"
        ))
    }
}

/// A file or directory of `/proc/N/` (N a process; the dump checks later
/// that it is one of the tree), when `link` names one on procfs.
pub fn proc_file(pid: i32, fd: i32, link: &str, pos: u64) -> Result<Option<ProcFile>, Cause> {
    let Some(rest) = link.strip_prefix("/proc/") else {
        return Ok(None);
    };
    let (num, below) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(target) = num.parse::<i32>() else {
        return Ok(None);
    };
    if target <= 0 || num.starts_with('0') {
        return Ok(None);
    }
    let at = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|e| Cause::Io(std::io::Error::other(e)))?;
    let mut sf = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a NUL-terminated path; statfs fills the buffer it is given.
    if unsafe { libc::statfs(at.as_ptr(), sf.as_mut_ptr()) } != 0 {
        return Err(Cause::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: statfs returned 0 and filled the buffer.
    let sf = unsafe { sf.assume_init() };
    // f_type is signed or unsigned, 32 or 64 bits, by libc and target.
    #[allow(
        clippy::unnecessary_cast,
        clippy::cast_sign_loss,
        clippy::cast_lossless
    )]
    if sf.f_type as u64 != PROC_SUPER_MAGIC {
        return Ok(None);
    }
    check_proc_path(below.as_bytes())
        .map_err(|why| Cause::Unsupported(format!("fd {fd} of process {pid} ({link}): {why}")))?;
    Ok(Some(ProcFile {
        pid: target,
        path: RawPath::from(below),
        offset: pos,
    }))
}

impl super::FsKind for ProcFile {
    const NAME: &'static str = "a file of /proc";

    fn record(&self, flags: u32) -> FdKind {
        FdKind::ProcFile {
            flags,
            state: self.clone(),
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        match k {
            FdKind::ProcFile { flags, state } => Some(Ok((*flags, state.clone()))),
            _ => None,
        }
    }

    fn check(&self, _cx: &super::CheckCx<'_>) -> Result<(), String> {
        check_proc_path(self.path.as_bytes())
    }

    fn open(&self, _cx: &mut super::OpenCx<'_>) -> Result<i32, Cause> {
        placeholder()
    }
}

/// What a late descriptor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LateKind {
    /// A pidfd of the process.
    Pidfd { pid: i32 },
    /// `/proc/PID/PATH`, seeked to `offset`.
    Proc {
        pid: i32,
        path: Vec<u8>,
        offset: u64,
    },
}

/// One descriptor a restored process opens once every task exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Late {
    /// The descriptor's number in the process.
    pub fd: i32,
    pub kind: LateKind,
    /// The description's status flags (for a pidfd only `O_NONBLOCK`,
    /// `PIDFD_NONBLOCK`).
    pub flags: u32,
    pub cloexec: bool,
}

impl Late {
    /// The process it names.
    pub fn pid(&self) -> i32 {
        match self.kind {
            LateKind::Pidfd { pid } | LateKind::Proc { pid, .. } => pid,
        }
    }
}

/// The late descriptors process `p` holds, in descriptor order.
pub fn late_files(p: &ProcessState, files: &[OpenFile]) -> Vec<Late> {
    p.fds
        .iter()
        .filter_map(|d| {
            let f = files.get(usize::try_from(d.file).ok()?)?;
            let (kind, flags) = match &f.kind {
                FileKind::Pidfd(pf) => (
                    LateKind::Pidfd { pid: pf.pid },
                    f.flags & libc::O_NONBLOCK as u32,
                ),
                FileKind::ProcFile(pf) => (
                    LateKind::Proc {
                        pid: pf.pid,
                        path: pf.path.as_bytes().to_vec(),
                        offset: pf.offset,
                    },
                    f.flags,
                ),
                _ => return None,
            };
            Some(Late {
                fd: d.fd,
                kind,
                flags,
                cloexec: d.cloexec,
            })
        })
        .collect()
}

/// Refuses a late descriptor that names a process outside the trees
/// (dumped, or of the image), naming the descriptor. Checked at the dump
/// and again, on the image's word, before a restore creates anything.
pub fn outside<'a>(
    files: &[OpenFile],
    processes: impl IntoIterator<Item = &'a ProcessState> + Clone,
) -> Result<(), String> {
    for p in processes.clone() {
        for l in late_files(p, files) {
            let Some(target) = processes
                .clone()
                .into_iter()
                .find(|q| q.task.pid == l.pid())
            else {
                let what = match l.kind {
                    LateKind::Pidfd { .. } => "a pidfd",
                    LateKind::Proc { .. } => "a file of /proc",
                };
                return Err(format!(
                    "fd {} of process {} is {what} of process {}, which is not in the tree: torpor cannot give it again",
                    l.fd,
                    p.task.pid,
                    l.pid()
                ));
            };
            // A thread's directory: the restore opens it once the holder's
            // own threads exist, so the thread must be the holder's or a
            // main thread.
            let LateKind::Proc { pid, path, .. } = &l.kind else {
                continue;
            };
            let Some(tid) = path
                .strip_prefix(b"task/")
                .and_then(|r| r.split(|&b| b == b'/').next())
                .and_then(|t| std::str::from_utf8(t).ok()?.parse::<i32>().ok())
            else {
                continue;
            };
            if !target.threads.iter().any(|t| t.tid == tid) {
                return Err(format!(
                    "fd {} of process {} is a file of /proc/{pid}/task/{tid}, a thread process {pid} does not have",
                    l.fd, p.task.pid
                ));
            }
            if tid != *pid && *pid != p.task.pid {
                return Err(format!(
                    "fd {} of process {} is a file of /proc/{pid}/task/{tid}, a thread of another process, which torpor cannot open again before that thread exists",
                    l.fd, p.task.pid
                ));
            }
        }
    }
    Ok(())
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
    fn late_descriptors_name_processes_of_the_tree_or_are_refused_by_fd() {
        let status = OpenFile {
            flags: 0o100000,
            kind: FileKind::ProcFile(ProcFile {
                pid: 77,
                path: RawPath::from("status"),
                offset: 12,
            }),
            sigio: None,
        };
        let files = [pidfd(20, 0o2), pidfd(10, 0o4002), pidfd(99, 0o2), status];
        let root = process(10, &[(4, 0), (5, 1)]);
        let child = process(20, &[(7, 1)]);
        assert_eq!(
            late_files(&root, &files),
            [
                Late {
                    fd: 4,
                    kind: LateKind::Pidfd { pid: 20 },
                    flags: 0,
                    cloexec: true
                },
                Late {
                    fd: 5,
                    kind: LateKind::Pidfd { pid: 10 },
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
        let reader = process(20, &[(6, 3)]);
        assert_eq!(
            late_files(&reader, &files),
            [Late {
                fd: 6,
                kind: LateKind::Proc {
                    pid: 77,
                    path: b"status".to_vec(),
                    offset: 12
                },
                flags: 0o100000,
                cloexec: true
            }]
        );
        assert_eq!(
            outside(&files, [&root, &reader]),
            Err("fd 6 of process 20 is a file of /proc of process 77, which is not in the tree: torpor cannot give it again".into())
        );
    }

    #[test]
    fn a_thread_directory_is_of_the_holder_or_a_main_thread() {
        let file = |path: &str| OpenFile {
            flags: 0,
            kind: FileKind::ProcFile(ProcFile {
                pid: 30,
                path: RawPath::from(path),
                offset: 0,
            }),
            sigio: None,
        };
        let files = [
            file("task/31/comm"),
            file("task/30/comm"),
            file("task/32"),
            file("status"),
        ];
        let mut target = process(30, &[(3, 0)]);
        target.threads = [30, 31]
            .map(crate::engine::restore::plan::tests::thread)
            .to_vec();
        let other = |fds: &[(i32, u32)]| process(20, fds);
        assert_eq!(
            outside(&files, [&target, &other(&[(4, 1), (5, 3)])]),
            Ok(())
        );
        assert_eq!(
            outside(&files, [&target, &other(&[(6, 0)])]),
            Err("fd 6 of process 20 is a file of /proc/30/task/31, a thread of another process, which torpor cannot open again before that thread exists".into())
        );
        assert_eq!(
            outside(&files, [&target, &other(&[(7, 2)])]),
            Err("fd 7 of process 20 is a file of /proc/30/task/32, a thread process 30 does not have".into())
        );
    }

    #[test]
    fn only_plain_names_below_proc_pid_are_opened() {
        for ok in [
            "",
            "status",
            "task",
            "task/812",
            "task/812/comm",
            "fdinfo",
            "smaps_rollup",
        ] {
            assert_eq!(check_proc_path(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "..",
            "../1/environ",
            "task/../status",
            "task/x/comm",
            "task/812/comm/x",
            "fd/3",
            "status/",
            "/etc/shadow",
            "a b",
            ".",
        ] {
            assert_eq!(
                check_proc_path(bad.as_bytes()),
                Err(format!(
                    "/proc/PID/{bad} is not a name torpor opens below /proc/PID"
                )),
                "{bad}"
            );
        }
    }
}

//! Who may ask for what.
//!
//! The peer's identity comes from the kernel (`SO_PEERCRED`, captured when
//! it connected), never from the message. Root may target any process.
//! Another user may target only processes it owns — real, effective and
//! saved uid all its own, the rule ptrace applies — and only when
//! `access.allow_users` lists it. Not only the target: every task of its
//! tree, threads included, must be one the user could ptrace itself
//! ([`check_tree`]).

use std::io;
use std::os::fd::AsFd;

use crate::protocol::{ErrorKind, Target};

/// The credentials of a connected client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Peer {
    /// The credentials the kernel recorded when the peer connected.
    pub fn of(conn: impl AsFd) -> io::Result<Peer> {
        let c = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
            .map_err(io::Error::from)?;
        let pid = u32::try_from(c.pid())
            .map_err(|_| io::Error::other(format!("peer pid {} is not a process", c.pid())))?;
        Ok(Peer {
            pid,
            uid: c.uid(),
            gid: c.gid(),
        })
    }
}

/// A refused request: the kind for the reply and the reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: ErrorKind,
    pub message: String,
}

/// The real, effective and saved uids of `pid` from `/proc/PID/status`;
/// `None` when the process does not exist.
pub fn process_uids(pid: u32) -> io::Result<Option<[u32; 3]>> {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => parse_status_uids(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/status has no valid Uid line"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The supplementary groups of `pid` from `/proc/PID/status`.
pub fn process_groups(pid: u32) -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_groups(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no valid Groups line"),
        )
    })
}

/// The `Groups:` line of a `/proc/PID/status` text (empty when it lists
/// none); `None` when it is missing or not numbers.
pub fn parse_status_groups(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    line.split_whitespace().map(|g| g.parse().ok()).collect()
}

/// Parses the `Uid:` line of a `/proc/PID/status` text: real, effective, saved.
pub fn parse_status_uids(status: &str) -> Option<[u32; 3]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|f| f.parse::<u32>());
    let mut out = [0u32; 3];
    for slot in &mut out {
        *slot = ids.next()?.ok()?;
    }
    Some(out)
}

/// Decides whether `peer` may `verb` (hibernate, checkpoint) `target`, and
/// returns the PID the request is about. `uids_of` looks up a process's
/// real/effective/saved uids; `own_pid` is the daemon, which never targets
/// itself.
pub fn authorize(
    peer: Peer,
    target: Target,
    verb: &str,
    allowed: &[u32],
    own_pid: u32,
    uids_of: impl Fn(u32) -> io::Result<Option<[u32; 3]>>,
) -> Result<u32, Refusal> {
    let refuse = |kind, message: String| Err(Refusal { kind, message });
    let pid = match target {
        Target::Caller => peer.pid,
        Target::Pid(pid) => pid,
    };
    if pid == 0 {
        return refuse(ErrorKind::NoSuchProcess, "pid 0 names no process".into());
    }
    if pid == own_pid {
        return refuse(
            ErrorKind::Unsupported,
            format!("pid {pid} is the torpor daemon itself, which cannot {verb} itself"),
        );
    }
    let uids = match uids_of(pid) {
        Ok(Some(uids)) => uids,
        Ok(None) => {
            return refuse(
                ErrorKind::NoSuchProcess,
                format!("cannot {verb} pid {pid}: no such process"),
            )
        }
        Err(e) => {
            return refuse(
                ErrorKind::Internal,
                format!("cannot {verb} pid {pid}: reading its owner failed: {e}"),
            )
        }
    };
    if peer.uid == 0 {
        return Ok(pid);
    }
    if !allowed.contains(&peer.uid) {
        return refuse(
            ErrorKind::Unauthorized,
            format!("uid {} may not {verb} pid {pid}: only root and the users in access.allow_users may", peer.uid),
        );
    }
    if uids.iter().any(|&u| u != peer.uid) {
        let [real, effective, saved] = uids;
        return refuse(
            ErrorKind::Unauthorized,
            format!(
                "uid {} may not {verb} pid {pid}: the process belongs to uid {real} (effective {effective}, saved {saved})",
                peer.uid
            ),
        );
    }
    Ok(pid)
}

/// The ids and capabilities of one task, from its `/proc/.../status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIds {
    /// Real, effective, saved, fs.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub cap_permitted: u64,
    pub cap_effective: u64,
}

/// Parses the `Uid:`, `Gid:`, `CapPrm:` and `CapEff:` lines of a
/// `/proc/PID/status` text.
pub fn parse_task_ids(status: &str) -> Option<TaskIds> {
    let ids = |key: &str| -> Option<[u32; 4]> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        let mut it = line.split_whitespace().map(str::parse::<u32>);
        let mut out = [0u32; 4];
        for slot in &mut out {
            *slot = it.next()?.ok()?;
        }
        Some(out)
    };
    let cap = |key: &str| -> Option<u64> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        u64::from_str_radix(line.trim(), 16).ok()
    };
    Some(TaskIds {
        uids: ids("Uid:")?,
        gids: ids("Gid:")?,
        cap_permitted: cap("CapPrm:")?,
        cap_effective: cap("CapEff:")?,
    })
}

/// Why `peer` could not ptrace a task with `ids`, whose /proc directory
/// belongs to `proc_uid` (root for a task that is not dumpable); `None`
/// when it could. The kernel's own rule: every uid and gid the peer's,
/// dumpable, no capability the peer lacks (a user has none).
pub fn task_refusal(peer: Peer, ids: &TaskIds, proc_uid: u32) -> Option<String> {
    if ids.uids.iter().any(|&u| u != peer.uid) {
        let [r, e, s, f] = ids.uids;
        return Some(format!(
            "has uids {r}, {e}, {s}, {f} (real, effective, saved, fs)"
        ));
    }
    if ids.gids.iter().any(|&g| g != peer.gid) {
        let [r, e, s, f] = ids.gids;
        return Some(format!(
            "has gids {r}, {e}, {s}, {f} (real, effective, saved, fs), not the caller's gid {}",
            peer.gid
        ));
    }
    if ids.cap_permitted != 0 || ids.cap_effective != 0 {
        return Some(format!(
            "has capabilities (permitted {:#x}, effective {:#x})",
            ids.cap_permitted, ids.cap_effective
        ));
    }
    if proc_uid != peer.uid {
        return Some("is not dumpable (it changed credentials or said so with prctl)".into());
    }
    None
}

/// Refuses a request by a user other than root when any task of the tree
/// of `pid` (its threads, and its descendants and theirs) is one that the
/// user could not ptrace itself, naming the task and the reason: an image
/// would otherwise hold what only the kernel's permission checks kept
/// from the user (a set-user-ID child's memory, say).
pub fn check_tree(peer: Peer, pid: u32, verb: &str) -> Result<(), Refusal> {
    use std::os::unix::fs::MetadataExt;
    if peer.uid == 0 {
        return Ok(());
    }
    let refuse = |message: String| Refusal {
        kind: ErrorKind::Unauthorized,
        message,
    };
    let mut todo = vec![pid];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).map_err(|e| {
            refuse(format!(
                "cannot {verb} pid {pid}: reading the threads of {p}: {e}"
            ))
        })?;
        for t in tasks {
            let t = t.map_err(|e| refuse(format!("cannot {verb} pid {pid}: {e}")))?;
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let dir = format!("/proc/{p}/task/{tid}");
            // A task that ended meanwhile is no longer in the tree.
            let Ok(status) = std::fs::read_to_string(format!("{dir}/status")) else {
                continue;
            };
            let Ok(md) = std::fs::metadata(&dir) else {
                continue;
            };
            let ids = parse_task_ids(&status).ok_or_else(|| {
                refuse(format!(
                    "cannot {verb} pid {pid}: {dir}/status has no valid ids"
                ))
            })?;
            if let Some(why) = task_refusal(peer, &ids, md.uid()) {
                let whose = if tid == p {
                    format!("process {p}")
                } else {
                    format!("thread {tid} of process {p}")
                };
                return Err(refuse(format!(
                    "uid {} may not {verb} pid {pid}: {whose} in its tree {why}",
                    peer.uid
                )));
            }
            if let Ok(children) = std::fs::read_to_string(format!("{dir}/children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_status_groups_line() {
        let status = "Name:\tapp\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \n";
        assert_eq!(parse_status_groups(status), Some(vec![4, 27, 1000]));
        assert_eq!(parse_status_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_status_groups("Groups:\t4 x\n"), None);
        assert_eq!(parse_status_groups("Uid:\t0\t0\t0\t0\n"), None);
    }

    const STATUS: &str = "Name:\tx\nUid:\t1000\t1000\t0\t1000\nGid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n";

    #[test]
    fn a_task_the_user_could_not_ptrace_is_named_with_the_reason() {
        let peer = Peer {
            pid: 1,
            uid: 1000,
            gid: 1000,
        };
        let ids = parse_task_ids(STATUS).expect("ids");
        assert_eq!(
            task_refusal(peer, &ids, 1000).as_deref(),
            Some("has uids 1000, 1000, 0, 1000 (real, effective, saved, fs)")
        );
        let mine = TaskIds {
            uids: [1000; 4],
            ..ids.clone()
        };
        assert_eq!(task_refusal(peer, &mine, 1000), None);
        assert_eq!(
            task_refusal(peer, &mine, 0).as_deref(),
            Some("is not dumpable (it changed credentials or said so with prctl)")
        );
        let capable = TaskIds {
            cap_permitted: 0x20,
            ..mine.clone()
        };
        assert_eq!(
            task_refusal(peer, &capable, 1000).as_deref(),
            Some("has capabilities (permitted 0x20, effective 0x0)")
        );
        let group = TaskIds {
            gids: [1000, 5, 1000, 1000],
            ..mine
        };
        assert_eq!(
            task_refusal(peer, &group, 1000).as_deref(),
            Some("has gids 1000, 5, 1000, 1000 (real, effective, saved, fs), not the caller's gid 1000")
        );
    }
}

//! Who may ask for what.
//!
//! The peer's identity comes from the kernel (`SO_PEERCRED`, captured when
//! it connected), never from the message. Root may target any process.
//! Another user may target only processes it owns — real, effective and
//! saved uid all its own, the rule ptrace applies — and only when
//! `access.allow_users` lists it.

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

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
        super::attrs::owner_may_set(p, asked)?;
        if c.caps()[1] != 0 || c.caps()[2] != 0 || c.caps()[4] != 0 {
            return Err(format!(
                "the image was taken for uid {asked}, but process {pid} has capabilities (permitted {:#x}, effective {:#x}, ambient {:#x})",
                c.caps()[1], c.caps()[2], c.caps()[4]
            ));
        }
    }
    crate::engine::cgroup::user_may(&st.cgroups, r.uid)?;
    user_sockets(st, r.uid, r.gid)?;
    user_msg_creds(st, r.uid, r.gid)
}

/// The credentials of the queued messages of a user's image are the
/// user's own, sent by a process of the tree: a user may name only itself
/// in `SCM_CREDENTIALS` (its own pid, uid and gid), and the restore, which
/// sends them as root, names no one the user could not have been.
fn user_msg_creds(st: &ImageState, uid: u32, gid: u32) -> Result<(), String> {
    for m in &st.msg_creds {
        let holder = st
            .processes
            .iter()
            .find_map(|p| {
                p.fds
                    .iter()
                    .find(|f| f.file == m.socket)
                    .map(|f| format!("fd {} of process {}", f.fd, p.task.pid))
            })
            .unwrap_or_else(|| format!("a UNIX socket in flight (file {})", m.socket));
        let of_tree = st.processes.iter().any(|p| p.task.pid == m.pid);
        if m.uid != uid || m.gid != gid || !of_tree {
            return Err(format!(
                "the image was taken for uid {uid} (gid {gid}), but {holder} holds message {} queued with the credentials of process {} (uid {}, gid {}){}",
                m.message,
                m.pid,
                m.uid,
                m.gid,
                if of_tree {
                    ""
                } else {
                    ", which is not a process of the image"
                }
            ));
        }
    }
    Ok(())
}

/// The sockets of a user's image hold nothing the user could not have made:
/// a raw socket or an option that needs a capability is refused (the user's
/// processes have none), a ping socket needs the user's group in
/// `net.ipv4.ping_group_range`, a congestion control the user picks must be
/// one `net.ipv4.tcp_allowed_congestion_control` allows; a netlink socket
/// joins no group and sets no option only root may. A fanotify group is
/// one an unprivileged user may make: `FAN_REPORT_FID`, the notification
/// class, marks on files and directories only.
fn user_sockets(st: &ImageState, uid: u32, gid: u32) -> Result<(), String> {
    use crate::engine::state::FileKind;
    for (i, f) in st.files.iter().enumerate() {
        let sock = match &f.kind {
            FileKind::Inet(s) => Some(s),
            FileKind::TcpConnection(c) => Some(&c.socket),
            FileKind::Netlink(n) => {
                crate::engine::files::netlink_user_may(n).map_err(|(what, cap)| {
                    format!("a netlink socket of the image {what}, which uid {uid} may not without {cap}")
                })?;
                None
            }
            FileKind::Packet(_) => {
                return Err(format!(
                    "the image holds a packet socket, which uid {uid} may not make without CAP_NET_RAW"
                ));
            }
            FileKind::Fanotify(g) => {
                crate::engine::files::fanotify_user_may(g).map_err(|why| {
                    let holder = st.processes.iter().find_map(|p| {
                        p.fds
                            .iter()
                            .find(|f| f.file as usize == i)
                            .map(|f| format!("fd {} of process {}", f.fd, p.task.pid))
                    });
                    format!(
                        "{} is a fanotify group that {why}, which uid {uid} may not make without CAP_SYS_ADMIN",
                        holder.unwrap_or_else(|| "a description".into())
                    )
                })?;
                continue;
            }
            _ => continue,
        };
        if let Some(sock) = sock {
            inet_user_may(sock, uid, gid)?;
        }
        let Some(opts) = u32::try_from(i).ok().and_then(|i| st.sock_opts.get(&i)) else {
            continue;
        };
        user_sock_opts(opts, uid)?;
    }
    Ok(())
}

/// An internet socket of a user's image: no raw socket, a ping socket only
/// for a group `net.ipv4.ping_group_range` allows.
fn inet_user_may(
    sock: &crate::image::records::InetSocket,
    uid: u32,
    gid: u32,
) -> Result<(), String> {
    if sock.sock_type == libc::SOCK_RAW {
        return Err(format!(
                "the image holds a raw socket (protocol {}), which uid {uid} may not make without CAP_NET_RAW",
                sock.protocol
            ));
    }
    if sock.sock_type == libc::SOCK_DGRAM
        && matches!(sock.protocol, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6)
    {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
            .map_err(|e| format!("reading net.ipv4.ping_group_range: {e}"))?;
        let mut it = range.split_whitespace().map(str::parse::<u32>);
        let (Some(Ok(lo)), Some(Ok(hi))) = (it.next(), it.next()) else {
            return Err(format!("net.ipv4.ping_group_range reads {range:?}"));
        };
        if !(lo..=hi).contains(&gid) {
            return Err(format!(
                    "the image holds a ping socket, which uid {uid} (gid {gid}) may not make: net.ipv4.ping_group_range is {lo} {hi}"
                ));
        }
    }
    Ok(())
}

/// The extra options of a socket of a user's image: none that needs a
/// capability, a congestion control the user may choose.
fn user_sock_opts(opts: &[crate::image::records::RawSockOpt], uid: u32) -> Result<(), String> {
    use crate::engine::files::sockopt;
    for o in opts {
        if let Some(cap) = sockopt::needs_capability(o) {
            return Err(format!(
                "a socket of the image has {} set, which uid {uid} may not set without {cap}",
                sockopt::name(o.level, o.opt)
            ));
        }
        if (o.level, o.opt) == (libc::IPPROTO_TCP, libc::TCP_CONGESTION) {
            let algo = o.value.split(|&b| b == 0).next().unwrap_or_default();
            let algo = String::from_utf8_lossy(algo);
            let allowed =
                std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
                    .map_err(|e| format!("reading net.ipv4.tcp_allowed_congestion_control: {e}"))?;
            if !allowed.split_whitespace().any(|a| a == algo) {
                return Err(format!(
                        "a socket of the image uses TCP congestion control {algo}, which uid {uid} may not choose: net.ipv4.tcp_allowed_congestion_control is {}",
                        allowed.trim()
                    ));
            }
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
    for p in st.processes.iter().filter(|p| p.task.exit_status.is_none()) {
        super::attrs::check(p).map_err(|why| refused(step, why))?;
        crate::engine::aio::check_host(p).map_err(|why| refused(step, why))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::{FileKind, OpenFile};
    use crate::image::records::{InetSocket, RawSockOpt};

    fn with_socket(sock_type: i32, protocol: i32, opts: Vec<RawSockOpt>) -> ImageState {
        let mut st = ImageState {
            files: vec![OpenFile {
                flags: 2,
                kind: FileKind::Inet(InetSocket {
                    family: libc::AF_INET,
                    sock_type,
                    protocol,
                    ..InetSocket::default()
                }),
                sigio: None,
            }],
            ..ImageState::default()
        };
        if !opts.is_empty() {
            st.sock_opts.insert(0, opts);
        }
        st
    }

    fn opt(level: i32, opt: i32, value: &[u8]) -> RawSockOpt {
        RawSockOpt {
            level,
            opt,
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_users_sockets_hold_only_what_the_user_could_make() {
        let udp = (libc::SOCK_DGRAM, libc::IPPROTO_UDP);
        assert_eq!(
            user_sockets(&with_socket(libc::SOCK_RAW, 1, vec![]), 1000, 1000),
            Err("the image holds a raw socket (protocol 1), which uid 1000 may not make without CAP_NET_RAW".into())
        );
        let broadcast = opt(libc::SOL_SOCKET, libc::SO_BROADCAST, &1i32.to_ne_bytes());
        assert_eq!(
            user_sockets(
                &with_socket(udp.0, udp.1, vec![broadcast.clone()]),
                1000,
                1000
            ),
            Ok(())
        );
        let mark = opt(libc::SOL_SOCKET, libc::SO_MARK, &7i32.to_ne_bytes());
        assert_eq!(
            user_sockets(&with_socket(udp.0, udp.1, vec![broadcast, mark]), 1000, 1000),
            Err("a socket of the image has SO_MARK set, which uid 1000 may not set without CAP_NET_ADMIN".into())
        );
        let tcp = (libc::SOCK_STREAM, libc::IPPROTO_TCP);
        let algo = opt(
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            b"nonesuch\0\0\0\0\0\0\0\0",
        );
        let allowed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_allowed_congestion_control")
            .expect("allowed congestion controls");
        assert_eq!(
            user_sockets(&with_socket(tcp.0, tcp.1, vec![algo]), 1000, 1000),
            Err(format!(
                "a socket of the image uses TCP congestion control nonesuch, which uid 1000 may not choose: net.ipv4.tcp_allowed_congestion_control is {}",
                allowed.trim()
            ))
        );
        let first = allowed.split_whitespace().next().expect("one allowed");
        let mut name = first.as_bytes().to_vec();
        name.resize(16, 0);
        let algo = opt(libc::IPPROTO_TCP, libc::TCP_CONGESTION, &name);
        assert_eq!(
            user_sockets(&with_socket(tcp.0, tcp.1, vec![algo]), 1000, 1000),
            Ok(())
        );
    }
}

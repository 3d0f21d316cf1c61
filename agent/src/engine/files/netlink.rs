//! Netlink sockets. Read through a duplicate of the fd: the protocol and
//! type, the port id (`getsockname`; the same whether the app bound it or
//! the kernel chose it at the first send), every multicast group
//! (`NETLINK_LIST_MEMBERSHIPS`, groups above 32 included), the destination
//! of a `connect` (`getpeername`), the `SOL_NETLINK` options of [`KEPT`]
//! and the common socket options (`sock`). The restore makes a socket of
//! the same protocol, binds it to the same port id (refused, naming it,
//! when another socket holds it), joins the groups one by one
//! (`NETLINK_ADD_MEMBERSHIP`), sets the options and connects it again.
//!
//! Messages waiting in the receive queue (a reply not yet read, an event)
//! came from the kernel or another socket and cannot be queued again as
//! they were: a socket with any is refused at the dump, naming the bytes
//! it holds (`SO_MEMINFO`, as `/proc/net/netlink` counts them).
//!
//! Unsafe code: sockets are created, bound and connected and their options
//! read and set through libc, with pointers to this module's buffers.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use super::sock::{apply_opts, collect_opts, get_int, set_int, sock_name};
use super::{dup_from, into_raw, last_os, owned};
use crate::image::records::NetlinkSocket;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;
/// `SO_MEMINFO`: the socket's memory counters, `u32` each; the first is
/// the receive queue's (`SK_MEMINFO_RMEM_ALLOC`).
const SO_MEMINFO: i32 = 55;
/// The number of netlink protocols the kernel knows (`MAX_LINKS`).
const MAX_LINKS: i32 = 32;
/// The most group words a record may hold: 32768 groups, far above what
/// any family registers.
const MAX_GROUP_WORDS: usize = 1024;

/// The `SOL_NETLINK` options kept, each a flag set again when on.
pub const KEPT: &[(i32, &str)] = &[
    (3, "NETLINK_PKTINFO"),
    (4, "NETLINK_BROADCAST_ERROR"),
    (5, "NETLINK_NO_ENOBUFS"),
    (8, "NETLINK_LISTEN_ALL_NSID"),
    (10, "NETLINK_CAP_ACK"),
    (11, "NETLINK_EXT_ACK"),
    (12, "NETLINK_GET_STRICT_CHK"),
];

/// A `sockaddr_nl` as bytes: family, padding, port id, groups.
fn sockaddr(portid: u32, groups: u32) -> [u8; 12] {
    let mut a = [0u8; 12];
    // AF_NETLINK is 16.
    a[..2].copy_from_slice(&u16::try_from(libc::AF_NETLINK).unwrap_or(16).to_ne_bytes());
    a[4..8].copy_from_slice(&portid.to_ne_bytes());
    a[8..12].copy_from_slice(&groups.to_ne_bytes());
    a
}

/// Port id and groups of a raw `sockaddr_nl`.
fn parse(raw: &[u8]) -> Result<(u32, u32), String> {
    let word = |at: usize| {
        raw.get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("a netlink address of {} bytes", raw.len()))
    };
    Ok((word(4)?, word(8)?))
}

/// Bytes waiting in the receive queue (`SK_MEMINFO_RMEM_ALLOC`).
fn queued(f: &OwnedFd) -> Result<u32, String> {
    let mut info = [0u32; 16];
    let mut len = libc::socklen_t::try_from(core::mem::size_of_val(&info)).unwrap_or(0);
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    if unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    } < 0
    {
        return Err(format!("SO_MEMINFO: {}", last_os()));
    }
    Ok(info[0])
}

/// The group words of `NETLINK_LIST_MEMBERSHIPS`, without trailing zeros.
fn memberships(f: &OwnedFd) -> Result<Vec<u32>, String> {
    let mut words = vec![0u32; 8];
    loop {
        let cap = words.len() * 4;
        let mut len = libc::socklen_t::try_from(cap).unwrap_or(0);
        // SAFETY: getsockopt writes at most `len` bytes into `words`.
        if unsafe {
            libc::getsockopt(
                f.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_LIST_MEMBERSHIPS,
                words.as_mut_ptr().cast(),
                &raw mut len,
            )
        } < 0
        {
            return Err(format!("NETLINK_LIST_MEMBERSHIPS: {}", last_os()));
        }
        // The kernel says how many bytes all groups take.
        let need = usize::try_from(len).unwrap_or(usize::MAX);
        if need <= cap {
            words.truncate(need.div_ceil(4));
            break;
        }
        if need.div_ceil(4) > MAX_GROUP_WORDS {
            return Err(format!("{need} bytes of multicast groups"));
        }
        words = vec![0u32; need.div_ceil(4)];
    }
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

pub(super) fn collect(pid: i32, fd: i32) -> Result<NetlinkSocket, String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    let waiting = queued(&f)?;
    if waiting > 0 {
        return Err(format!(
            "{waiting} bytes of messages wait unread in its receive queue, which torpor cannot queue again"
        ));
    }
    let sock_type = get_int(&f, libc::SOL_SOCKET, libc::SO_TYPE).map_err(io)?;
    let protocol = get_int(&f, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(io)?;
    let (portid, _) = parse(&sock_name(&f, false).map_err(io)?.unwrap_or_default())?;
    let (dst_portid, dst_groups) = match sock_name(&f, true).map_err(io)? {
        Some(raw) => parse(&raw)?,
        None => (0, 0),
    };
    let mut options = Vec::new();
    for &(opt, name) in KEPT {
        match get_int(&f, SOL_NETLINK, opt) {
            Ok(0) => {}
            Ok(_) => options.push(opt),
            // An option this kernel does not have is off.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Ok(NetlinkSocket {
        sock_type,
        protocol,
        portid,
        groups: memberships(&f)?,
        dst_portid,
        dst_groups,
        options,
        opts: collect_opts(&f, false).map_err(io)?,
    })
}

/// Refuses a record no netlink socket can have: it came from a damaged or
/// forged image.
fn check(s: &NetlinkSocket) -> Result<(), String> {
    if s.sock_type != libc::SOCK_RAW && s.sock_type != libc::SOCK_DGRAM {
        return Err(format!(
            "socket type {} is not SOCK_RAW or SOCK_DGRAM",
            s.sock_type
        ));
    }
    if !(0..MAX_LINKS).contains(&s.protocol) {
        return Err(format!("protocol {} is not a netlink protocol", s.protocol));
    }
    if s.groups.len() > MAX_GROUP_WORDS {
        return Err(format!("{} words of multicast groups", s.groups.len()));
    }
    if let Some(o) = s
        .options
        .iter()
        .find(|o| !KEPT.iter().any(|(k, _)| k == *o))
    {
        return Err(format!("option {o} is not a netlink option torpor keeps"));
    }
    Ok(())
}

/// The group numbers of the words of `NETLINK_LIST_MEMBERSHIPS`.
fn group_numbers(words: &[u32]) -> impl Iterator<Item = u32> + '_ {
    (0u32..).zip(words).flat_map(|(w, bits)| {
        (0..32u32)
            .filter(move |b| bits & (1 << b) != 0)
            .map(move |b| w * 32 + b + 1)
    })
}

/// In a user's image, what the restore would do as root that the user's
/// processes could not, and the capability it needs: join a group of a
/// protocol whose groups only root may join (all but the route and uevent
/// protocols'; of the route protocol, the multicast routing groups 30 and
/// 31), send to a group (`connect` to one), listen to every namespace.
pub fn user_may(s: &NetlinkSocket) -> Result<(), (String, &'static str)> {
    const ROUTE: i32 = 0;
    const UEVENT: i32 = 15;
    for g in group_numbers(&s.groups) {
        let open = match s.protocol {
            ROUTE => g != 30 && g != 31,
            UEVENT => true,
            _ => false,
        };
        if !open {
            return Err((
                format!("joins group {g} of netlink protocol {}", s.protocol),
                "CAP_NET_ADMIN",
            ));
        }
    }
    if s.dst_groups != 0 {
        return Err((
            format!(
                "sends to groups {:#x} of netlink protocol {}",
                s.dst_groups, s.protocol
            ),
            "CAP_NET_ADMIN",
        ));
    }
    if s.options.contains(&8) {
        return Err(("sets NETLINK_LISTEN_ALL_NSID".into(), "CAP_NET_BROADCAST"));
    }
    Ok(())
}

fn name_of(opt: i32) -> &'static str {
    KEPT.iter()
        .find(|(k, _)| *k == opt)
        .map_or("a netlink option", |(_, n)| n)
}

pub(super) fn open(
    s: &NetlinkSocket,
    nonblock: bool,
    extra: &[crate::image::records::RawSockOpt],
) -> Result<i32, std::io::Error> {
    check(s).map_err(std::io::Error::other)?;
    let what =
        |e: std::io::Error, doing: String| std::io::Error::new(e.kind(), format!("{doing}: {e}"));
    // SAFETY: socket takes integers only.
    let f = owned(libc::c_long::from(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            s.sock_type | libc::SOCK_CLOEXEC,
            s.protocol,
        )
    }))
    .map_err(|e| what(e, format!("a socket of netlink protocol {}", s.protocol)))?;
    let fd = f.as_raw_fd();
    super::sockopt::apply(fd, extra)?;
    if s.portid != 0 {
        let a = sockaddr(s.portid, 0);
        // SAFETY: bind reads the 12 bytes of `a`, a sockaddr_nl.
        if unsafe { libc::bind(fd, a.as_ptr().cast(), 12) } < 0 {
            let e = last_os();
            let why = if e.raw_os_error() == Some(libc::EADDRINUSE) {
                "another socket of the protocol holds it".to_string()
            } else {
                e.to_string()
            };
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "binding port id {} of netlink protocol {}: {why}",
                    s.portid, s.protocol
                ),
            ));
        }
    }
    for g in group_numbers(&s.groups) {
        set_int(
            fd,
            SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            i32::try_from(g).unwrap_or(i32::MAX),
        )
        .map_err(|e| {
            what(
                e,
                format!(
                    "joining multicast group {g} of netlink protocol {}",
                    s.protocol
                ),
            )
        })?;
    }
    for &o in &s.options {
        set_int(fd, SOL_NETLINK, o, 1).map_err(|e| what(e, format!("setting {}", name_of(o))))?;
    }
    if s.dst_portid != 0 || s.dst_groups != 0 {
        let a = sockaddr(s.dst_portid, s.dst_groups);
        // SAFETY: connect reads the 12 bytes of `a`, a sockaddr_nl.
        if unsafe { libc::connect(fd, a.as_ptr().cast(), 12) } < 0 {
            return Err(what(
                last_os(),
                format!(
                    "connecting to port id {} groups {:#x}",
                    s.dst_portid, s.dst_groups
                ),
            ));
        }
    }
    apply_opts(fd, &s.opts, false)?;
    if nonblock {
        // SAFETY: F_SETFL on our fd.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(last_os());
        }
    }
    Ok(into_raw(f))
}

impl super::AnonKind for NetlinkSocket {
    const NAME: &'static str = "a netlink socket";
    const CLAIM: super::Claim = super::Claim::Socket(&[libc::AF_NETLINK]);

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        collect(p.pid, p.fd).map_err(|e| p.unsupported(format!("a netlink socket: {e}")))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock(), cx.sock_opts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_words_name_their_groups() {
        let g: Vec<u32> = group_numbers(&[0b101, 0, 1 << 31, 2]).collect();
        assert_eq!(g, [1, 3, 96, 98]);
    }

    #[test]
    fn a_users_socket_joins_only_open_groups() {
        let route = NetlinkSocket {
            sock_type: libc::SOCK_RAW,
            groups: vec![0x10, 1],
            ..NetlinkSocket::default()
        };
        assert_eq!(user_may(&route), Ok(()));
        let mroute = NetlinkSocket {
            groups: vec![1 << 29],
            ..route.clone()
        };
        assert_eq!(
            user_may(&mroute),
            Err((
                "joins group 30 of netlink protocol 0".into(),
                "CAP_NET_ADMIN"
            ))
        );
        let generic = NetlinkSocket {
            protocol: 16,
            groups: vec![4],
            ..route.clone()
        };
        assert_eq!(
            user_may(&generic),
            Err((
                "joins group 3 of netlink protocol 16".into(),
                "CAP_NET_ADMIN"
            ))
        );
        let uevent = NetlinkSocket {
            protocol: 15,
            groups: vec![1],
            dst_groups: 1,
            ..route.clone()
        };
        assert_eq!(
            user_may(&uevent),
            Err((
                "sends to groups 0x1 of netlink protocol 15".into(),
                "CAP_NET_ADMIN"
            ))
        );
        let nsid = NetlinkSocket {
            options: vec![3, 8],
            ..route
        };
        assert_eq!(
            user_may(&nsid),
            Err(("sets NETLINK_LISTEN_ALL_NSID".into(), "CAP_NET_BROADCAST"))
        );
    }

    #[test]
    fn forged_records_are_refused() {
        let ok = NetlinkSocket {
            sock_type: libc::SOCK_RAW,
            ..NetlinkSocket::default()
        };
        assert!(check(&ok).is_ok());
        for bad in [
            NetlinkSocket {
                sock_type: libc::SOCK_STREAM,
                ..ok.clone()
            },
            NetlinkSocket {
                protocol: 32,
                ..ok.clone()
            },
            NetlinkSocket {
                protocol: -1,
                ..ok.clone()
            },
            NetlinkSocket {
                groups: vec![1; MAX_GROUP_WORDS + 1],
                ..ok.clone()
            },
            NetlinkSocket {
                options: vec![1],
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }
}

//! Socket options beyond the common few of [`SockOpts`]: every option of
//! [`KEPT`] whose value differs from a new socket's of the same domain,
//! type and protocol is kept as its raw bytes (`sock-opts` records), and
//! set again on the new socket before it is bound or connected (so
//! `IP_FREEBIND`, `IP_TRANSPARENT` and `SO_BINDTODEVICE` act on the bind
//! as they did). The kernel says which options a socket has: one that
//! `getsockopt` refuses on either socket is not one of its kind's, and a
//! differing value that a new socket refuses was derived by the kernel
//! (see [`collect`]).
//!
//! Options whose value changes by itself (`TCP_QUICKACK`,
//! `TCP_WINDOW_CLAMP`, `TCP_MAXSEG` of a connection, `SO_INCOMING_CPU`)
//! are not kept.
//!
//! Multicast group memberships are kept too, though no `getsockopt` lists
//! them: the groups joined on each interface of the network namespace
//! (`/proc/net/igmp`, `/proc/net/igmp6`) are the candidates, and
//! `getsockopt(MCAST_MSFILTER)` of one answers for this socket alone,
//! `EADDRNOTAVAIL` when it has not joined it there, else with its source
//! filter. Each membership is kept as that filter (a `MCAST_MSFILTER`
//! option, one per group and interface, after the others), and the
//! restore joins the group (`MCAST_JOIN_GROUP`) and sets the filter.
//!
//! Unsafe code: options are read and set through libc with pointers to
//! this module's buffers.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use super::last_os;
use crate::image::records::RawSockOpt;

const SOL_SOCKET: i32 = libc::SOL_SOCKET;
const SOL_IP: i32 = libc::IPPROTO_IP;
const SOL_IPV6: i32 = libc::IPPROTO_IPV6;
const SOL_TCP: i32 = libc::IPPROTO_TCP;
const SOL_UDP: i32 = libc::IPPROTO_UDP;
const SOL_UDPLITE: i32 = 136;
const SOL_RAW: i32 = 255;

/// `SO_ATTACH_FILTER`, read back as `SO_GET_FILTER`: a classic BPF
/// program, kept as its instructions (8 bytes each).
pub const SO_FILTER: i32 = 26;

/// The options kept, in the order they are set again: the filter before
/// its lock, `IP_TOS` before `SO_PRIORITY` (setting the first sets the
/// second).
pub const KEPT: &[(i32, i32, &str)] = &[
    (SOL_IP, 1, "IP_TOS"),
    (SOL_IP, 2, "IP_TTL"),
    (SOL_IP, 3, "IP_HDRINCL"),
    (SOL_IP, 6, "IP_RECVOPTS"),
    (SOL_IP, 8, "IP_PKTINFO"),
    (SOL_IP, 10, "IP_MTU_DISCOVER"),
    (SOL_IP, 11, "IP_RECVERR"),
    (SOL_IP, 12, "IP_RECVTTL"),
    (SOL_IP, 13, "IP_RECVTOS"),
    (SOL_IP, 15, "IP_FREEBIND"),
    (SOL_IP, 19, "IP_TRANSPARENT"),
    (SOL_IP, 20, "IP_RECVORIGDSTADDR"),
    (SOL_IP, 24, "IP_BIND_ADDRESS_NO_PORT"),
    (SOL_IP, 33, "IP_MULTICAST_TTL"),
    (SOL_IP, 34, "IP_MULTICAST_LOOP"),
    (SOL_IP, 49, "IP_MULTICAST_ALL"),
    (SOL_IPV6, 16, "IPV6_UNICAST_HOPS"),
    (SOL_IPV6, 18, "IPV6_MULTICAST_HOPS"),
    (SOL_IPV6, 19, "IPV6_MULTICAST_LOOP"),
    (SOL_IPV6, 23, "IPV6_MTU_DISCOVER"),
    (SOL_IPV6, 25, "IPV6_RECVERR"),
    (SOL_IPV6, 49, "IPV6_RECVPKTINFO"),
    (SOL_IPV6, 51, "IPV6_RECVHOPLIMIT"),
    (SOL_IPV6, 66, "IPV6_RECVTCLASS"),
    (SOL_IPV6, 67, "IPV6_TCLASS"),
    (SOL_IPV6, 74, "IPV6_RECVORIGDSTADDR"),
    (SOL_IPV6, 75, "IPV6_TRANSPARENT"),
    (SOL_IPV6, 78, "IPV6_FREEBIND"),
    (SOL_SOCKET, 1, "SO_DEBUG"),
    (SOL_SOCKET, 5, "SO_DONTROUTE"),
    (SOL_SOCKET, 6, "SO_BROADCAST"),
    (SOL_SOCKET, 10, "SO_OOBINLINE"),
    (SOL_SOCKET, 11, "SO_NO_CHECK"),
    (SOL_SOCKET, 12, "SO_PRIORITY"),
    (SOL_SOCKET, 13, "SO_LINGER"),
    (SOL_SOCKET, 18, "SO_RCVLOWAT"),
    (SOL_SOCKET, 25, "SO_BINDTODEVICE"),
    (SOL_SOCKET, 29, "SO_TIMESTAMP"),
    (SOL_SOCKET, 34, "SO_PASSSEC"),
    (SOL_SOCKET, 35, "SO_TIMESTAMPNS"),
    (SOL_SOCKET, 36, "SO_MARK"),
    (SOL_SOCKET, 40, "SO_RXQ_OVFL"),
    (SOL_SOCKET, 42, "SO_PEEK_OFF"),
    (SOL_SOCKET, 45, "SO_SELECT_ERR_QUEUE"),
    (SOL_SOCKET, 46, "SO_BUSY_POLL"),
    (SOL_SOCKET, 60, "SO_ZEROCOPY"),
    (SOL_SOCKET, SO_FILTER, "SO_ATTACH_FILTER"),
    (SOL_SOCKET, 44, "SO_LOCK_FILTER"),
    (SOL_TCP, 3, "TCP_CORK"),
    (SOL_TCP, 4, "TCP_KEEPIDLE"),
    (SOL_TCP, 5, "TCP_KEEPINTVL"),
    (SOL_TCP, 6, "TCP_KEEPCNT"),
    (SOL_TCP, 7, "TCP_SYNCNT"),
    (SOL_TCP, 8, "TCP_LINGER2"),
    (SOL_TCP, 9, "TCP_DEFER_ACCEPT"),
    (SOL_TCP, 13, "TCP_CONGESTION"),
    (SOL_TCP, 16, "TCP_THIN_LINEAR_TIMEOUTS"),
    (SOL_TCP, 18, "TCP_USER_TIMEOUT"),
    (SOL_TCP, 23, "TCP_FASTOPEN"),
    (SOL_TCP, 25, "TCP_NOTSENT_LOWAT"),
    (SOL_TCP, 30, "TCP_FASTOPEN_CONNECT"),
    (SOL_TCP, 36, "TCP_INQ"),
    (SOL_UDP, 1, "UDP_CORK"),
    (SOL_UDP, 101, "UDP_NO_CHECK6_TX"),
    (SOL_UDP, 102, "UDP_NO_CHECK6_RX"),
    (SOL_UDP, 103, "UDP_SEGMENT"),
    (SOL_UDP, 104, "UDP_GRO"),
    (SOL_UDPLITE, 10, "UDPLITE_SEND_CSCOV"),
    (SOL_UDPLITE, 11, "UDPLITE_RECV_CSCOV"),
    (SOL_RAW, 1, "ICMP_FILTER"),
];

/// `MCAST_JOIN_GROUP` and `MCAST_MSFILTER`, the same number at the IPv4
/// and the IPv6 level.
const MCAST_JOIN_GROUP: i32 = 42;
pub const MCAST_MSFILTER: i32 = 48;
const MCAST_INCLUDE: u32 = 1;
const MCAST_EXCLUDE: u32 = 0;
/// The most sources of one membership's filter kept (the kernel's default
/// `igmp_max_msf` is 10).
const SOURCES_LIMIT: usize = 64;
/// `struct sockaddr_storage`.
const SS: usize = 128;
/// Where `gr_group` and `gf_group` start in `struct group_req` and
/// `struct group_filter`: after the interface, aligned as a pointer.
const GROUP_AT: usize = core::mem::size_of::<usize>();
/// `GROUP_FILTER_SIZE(0)`: the header of a `struct group_filter`.
const FILTER_HEADER: usize = GROUP_AT + SS + 8;

/// One multicast membership read from an image, as a `MCAST_MSFILTER`
/// value: interface, group (its family and address), filter mode and
/// sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub interface: u32,
    pub family: u16,
    pub mode: u32,
    pub sources: u32,
}

/// Decodes and checks a membership's `struct group_filter` bytes.
pub fn membership(level: i32, value: &[u8]) -> Result<Membership, String> {
    let u32_at = |at: usize| {
        value
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let (Some(interface), Some(mode), Some(sources)) =
        (u32_at(0), u32_at(GROUP_AT + SS), u32_at(GROUP_AT + SS + 4))
    else {
        return Err(format!("a multicast membership of {} bytes", value.len()));
    };
    let family = value
        .get(GROUP_AT..GROUP_AT + 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes)
        .unwrap_or(0);
    let want = if level == SOL_IP {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    if i32::from(family) != want {
        return Err(format!(
            "a multicast membership of a group of family {family}"
        ));
    }
    let n = usize::try_from(sources).unwrap_or(usize::MAX);
    if n > SOURCES_LIMIT || value.len() != FILTER_HEADER + n * SS {
        return Err(format!(
            "a multicast membership of {} bytes with {sources} sources",
            value.len()
        ));
    }
    if mode != MCAST_INCLUDE && mode != MCAST_EXCLUDE || (mode == MCAST_INCLUDE && n == 0) {
        return Err(format!(
            "a multicast membership in filter mode {mode} with {n} sources"
        ));
    }
    Ok(Membership {
        interface,
        family,
        mode,
        sources,
    })
}

/// The groups joined on each interface of torpor's network namespace, as
/// `(level, interface, group address bytes)`: IPv4 from
/// `/proc/net/igmp`, IPv6 from `/proc/net/igmp6`.
fn joined_groups() -> Vec<(i32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/igmp") {
        let mut iface = None;
        for line in text.lines().skip(1) {
            if !line.starts_with('\t') {
                // "1\tlo        :     1      V3": a device.
                iface = line
                    .split_whitespace()
                    .next()
                    .and_then(|i| i.parse::<u32>().ok());
            } else if let (Some(i), Some(g)) = (iface, line.split_whitespace().next()) {
                // The group as the kernel printed its big-endian word.
                if let Ok(word) = u32::from_str_radix(g, 16) {
                    out.push((SOL_IP, i, word.to_ne_bytes().to_vec()));
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/igmp6") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(i), Some(g)) = (f.first().and_then(|i| i.parse::<u32>().ok()), f.get(2))
            else {
                continue;
            };
            if g.len() != 32 {
                continue;
            }
            let bytes: Option<Vec<u8>> = (0..16)
                .map(|k| u8::from_str_radix(&g[2 * k..2 * k + 2], 16).ok())
                .collect();
            if let Some(b) = bytes {
                out.push((SOL_IPV6, i, b));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A `struct group_filter` (or, `sources` 0, the `struct group_req` part
/// of one) for `group` on interface `interface`.
fn group_filter(level: i32, interface: u32, group: &[u8], sources: usize) -> Vec<u8> {
    let mut b = vec![0u8; FILTER_HEADER + sources * SS];
    b[..4].copy_from_slice(&interface.to_ne_bytes());
    if level == SOL_IP {
        let family = u16::try_from(libc::AF_INET).unwrap_or(0);
        b[GROUP_AT..GROUP_AT + 2].copy_from_slice(&family.to_ne_bytes());
        // sockaddr_in: family, port, then the address.
        b[GROUP_AT + 4..GROUP_AT + 8].copy_from_slice(&group[..4]);
    } else {
        let family = u16::try_from(libc::AF_INET6).unwrap_or(0);
        b[GROUP_AT..GROUP_AT + 2].copy_from_slice(&family.to_ne_bytes());
        // sockaddr_in6: family, port, flow info, then the address.
        b[GROUP_AT + 8..GROUP_AT + 24].copy_from_slice(&group[..16]);
    }
    b
}

/// The socket's multicast memberships, each as its `MCAST_MSFILTER`
/// value: probed for every group joined in the namespace.
fn memberships(f: &OwnedFd, domain: i32) -> Result<Vec<RawSockOpt>, String> {
    let mut out = Vec::new();
    for (level, interface, group) in joined_groups() {
        // An IPv6 socket may join IPv4 groups too (through the IPv4 level).
        if domain == libc::AF_INET && level != SOL_IP {
            continue;
        }
        let mut buf = group_filter(level, interface, &group, SOURCES_LIMIT);
        // Room for this many sources: the kernel copies no more.
        let room = u32::try_from(SOURCES_LIMIT).unwrap_or(0);
        buf[GROUP_AT + SS + 4..GROUP_AT + SS + 8].copy_from_slice(&room.to_ne_bytes());
        let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(0);
        // SAFETY: getsockopt reads the interface and group of the
        // `struct group_filter` in `buf` and writes at most `len` bytes
        // back into it.
        let r = unsafe {
            libc::getsockopt(
                f.as_raw_fd(),
                level,
                MCAST_MSFILTER,
                buf.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        if r < 0 {
            let e = last_os();
            match e.raw_os_error() {
                // Not joined there; or a level this socket has no list of.
                Some(libc::EADDRNOTAVAIL | libc::EINVAL | libc::ENOPROTOOPT) => continue,
                _ => return Err(format!("reading a multicast membership: {e}")),
            }
        }
        let sources = buf
            .get(GROUP_AT + SS + 4..GROUP_AT + SS + 8)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
            .unwrap_or(0);
        let n = usize::try_from(sources).unwrap_or(usize::MAX);
        if n > SOURCES_LIMIT {
            return Err(format!(
                "a multicast membership with {sources} sources (torpor keeps {SOURCES_LIMIT} at most)"
            ));
        }
        buf.truncate(FILTER_HEADER + n * SS);
        out.push(RawSockOpt {
            level,
            opt: MCAST_MSFILTER,
            value: buf,
        });
    }
    Ok(out)
}

/// Joins a kept membership's group and sets its source filter: one of
/// `INCLUDE` mode joins source by source (`MCAST_JOIN_SOURCE_GROUP`), so
/// that no other source's datagram is taken meanwhile; one of `EXCLUDE`
/// mode joins the group, then excludes its sources.
fn join(fd: i32, o: &RawSockOpt) -> Result<(), std::io::Error> {
    const MCAST_JOIN_SOURCE_GROUP: i32 = 46;
    let m = membership(o.level, &o.value).map_err(std::io::Error::other)?;
    // struct group_req: the interface and the group, as the filter starts.
    let req = &o.value[..GROUP_AT + SS];
    let set = |opt: i32, bytes: &[u8]| -> Result<(), std::io::Error> {
        let len = libc::socklen_t::try_from(bytes.len()).unwrap_or(0);
        // SAFETY: setsockopt reads `len` bytes of `bytes`: a group_req, a
        // group_source_req or the saved group_filter, checked to hold as
        // many sources as it says.
        if unsafe { libc::setsockopt(fd, o.level, opt, bytes.as_ptr().cast(), len) } < 0 {
            return Err(last_os());
        }
        Ok(())
    };
    if m.mode == MCAST_INCLUDE {
        for source in o.value[FILTER_HEADER..].chunks_exact(SS) {
            // struct group_source_req: interface, group, then the source.
            let mut r = req.to_vec();
            r.extend_from_slice(source);
            set(MCAST_JOIN_SOURCE_GROUP, &r)?;
        }
        return Ok(());
    }
    set(MCAST_JOIN_GROUP, req)?;
    if m.sources > 0 {
        set(MCAST_MSFILTER, &o.value)?;
    }
    Ok(())
}

fn is_membership(o: &RawSockOpt) -> bool {
    (o.level == SOL_IP || o.level == SOL_IPV6) && o.opt == MCAST_MSFILTER
}

/// The name of a kept option, for messages.
pub fn name(level: i32, opt: i32) -> String {
    if (level == SOL_IP || level == SOL_IPV6) && opt == MCAST_MSFILTER {
        return "a multicast membership".into();
    }
    KEPT.iter()
        .find(|(l, o, _)| *l == level && *o == opt)
        .map_or_else(
            || format!("option {opt} of level {level}"),
            |(_, _, n)| (*n).to_string(),
        )
}

/// The most bytes an option's value may hold (a filter's program aside).
const VALUE_LIMIT: usize = 64;
/// The most instructions of a classic BPF program (`BPF_MAXINSNS`).
const FILTER_LIMIT: usize = 4096;

/// An option's raw value, or `None` when this socket has no such option.
fn get(f: &OwnedFd, level: i32, opt: i32) -> Result<Option<Vec<u8>>, String> {
    if level == SOL_SOCKET && opt == SO_FILTER {
        return get_filter(f);
    }
    let mut buf = [0u8; VALUE_LIMIT];
    let mut len = libc::socklen_t::try_from(buf.len()).unwrap_or(0);
    // SAFETY: getsockopt writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Ok(None);
    }
    let n = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
    Ok(Some(buf[..n].to_vec()))
}

/// Why `SO_GET_FILTER` failed: the kernel answers `EACCES` for a filter it
/// has no classic program of.
fn filter_error() -> String {
    let e = last_os();
    if e.raw_os_error() == Some(libc::EACCES) {
        "its filter is an eBPF program (SO_ATTACH_BPF), which torpor cannot read".into()
    } else {
        format!("SO_GET_FILTER: {e}")
    }
}

/// The instructions of the socket's classic BPF filter (none: empty), or
/// `None` where `SO_GET_FILTER` is not known (an emulator's syscall layer).
fn get_filter(f: &OwnedFd) -> Result<Option<Vec<u8>>, String> {
    // With a length of 0 the kernel answers the program's length, in
    // instructions.
    let mut len: libc::socklen_t = 0;
    let mut none = [0u8; 8];
    // SAFETY: a length of 0: nothing is written into `none`.
    let r = unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            SOL_SOCKET,
            SO_FILTER,
            none.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(None);
        }
        return Err(filter_error());
    }
    let count = usize::try_from(len).unwrap_or(usize::MAX);
    if count == 0 {
        return Ok(Some(Vec::new()));
    }
    if count > FILTER_LIMIT {
        return Err(format!("its filter has {count} instructions"));
    }
    let mut prog = vec![0u8; count * 8];
    // SAFETY: the kernel writes `len` instructions of 8 bytes: `prog`'s size.
    let r = unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            SOL_SOCKET,
            SO_FILTER,
            prog.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if r < 0 {
        return Err(filter_error());
    }
    if usize::try_from(len).ok() != Some(count) {
        return Err("its filter changed while it was read".into());
    }
    Ok(Some(prog))
}

/// The socket's options that differ from a new socket's of its kind.
pub fn collect(f: &OwnedFd) -> Result<Vec<RawSockOpt>, String> {
    let int = |opt| super::sock::get_int(f, SOL_SOCKET, opt).map_err(|e| e.to_string());
    let (domain, ty, protocol) = (
        int(libc::SO_DOMAIN)?,
        int(libc::SO_TYPE)?,
        int(libc::SO_PROTOCOL)?,
    );
    // SAFETY: socket takes integers only.
    let fresh = super::owned(libc::c_long::from(unsafe {
        libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol)
    }))
    .map_err(|e| format!("making a socket of its kind to compare its options with: {e}"))?;
    // The new socket takes each kept option as the restore will set it, in
    // the same order: an option another one set along (IP_TOS sets
    // SO_PRIORITY) then reads the same on both, and a value the kernel
    // derived rather than the app set (IP_MULTICAST_TTL of an accepted
    // connection: the TTL of its first packet) is one no socket takes.
    let mut out = Vec::new();
    for &(level, opt, _) in KEPT {
        let (Some(value), Some(base)) = (get(f, level, opt)?, get(&fresh, level, opt)?) else {
            continue;
        };
        if value != base {
            let o = RawSockOpt { level, opt, value };
            if set(fresh.as_raw_fd(), &o).is_ok() {
                out.push(o);
            }
        }
    }
    if domain == libc::AF_INET || domain == libc::AF_INET6 {
        out.extend(memberships(f, domain)?);
    }
    Ok(out)
}

/// Sets one option.
fn set(fd: i32, o: &RawSockOpt) -> Result<(), std::io::Error> {
    let r = if o.level == SOL_SOCKET && o.opt == SO_FILTER {
        let len = u16::try_from(o.value.len() / 8)
            .map_err(|_| std::io::Error::other("a filter of more than 65535 instructions"))?;
        let prog = libc::sock_fprog {
            len,
            filter: o.value.as_ptr().cast_mut().cast(),
        };
        // SAFETY: setsockopt reads one sock_fprog, whose program of `len`
        // instructions is `o.value` (a multiple of 8 bytes: read from the
        // kernel, or checked when the image was read).
        unsafe {
            libc::setsockopt(
                fd,
                o.level,
                o.opt,
                (&raw const prog).cast(),
                super::sock::socklen::<libc::sock_fprog>(),
            )
        }
    } else {
        let len = libc::socklen_t::try_from(o.value.len()).unwrap_or(0);
        // SAFETY: setsockopt reads `len` bytes of the saved value.
        unsafe { libc::setsockopt(fd, o.level, o.opt, o.value.as_ptr().cast(), len) }
    };
    if r < 0 {
        return Err(last_os());
    }
    Ok(())
}

/// Sets the kept options on a new socket, in [`KEPT`]'s order.
pub fn apply(fd: i32, opts: &[RawSockOpt]) -> Result<(), std::io::Error> {
    for &(level, opt, what) in KEPT {
        let Some(o) = opts.iter().find(|o| o.level == level && o.opt == opt) else {
            continue;
        };
        set(fd, o).map_err(|e| std::io::Error::new(e.kind(), format!("setting {what}: {e}")))?;
    }
    for o in opts.iter().filter(|o| is_membership(o)) {
        join(fd, o).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("joining a multicast group again ({}): {e}", describe(o)),
            )
        })?;
    }
    Ok(())
}

/// A membership as messages name it: group and interface index.
pub fn describe(o: &RawSockOpt) -> String {
    let v = &o.value;
    let iface = v
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes);
    let group = if o.level == SOL_IP {
        v.get(GROUP_AT + 4..GROUP_AT + 8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|a| std::net::Ipv4Addr::from(a).to_string())
    } else {
        v.get(GROUP_AT + 8..GROUP_AT + 24)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(|a| std::net::Ipv6Addr::from(a).to_string())
    };
    format!("group {} on interface {iface}", group.unwrap_or_default())
}

/// Checks options read from an image: each one torpor keeps, of a size it
/// may hold.
pub fn check(opts: &[RawSockOpt]) -> Result<(), String> {
    for o in opts {
        if is_membership(o) {
            membership(o.level, &o.value)?;
            continue;
        }
        if !KEPT.iter().any(|(l, n, _)| *l == o.level && *n == o.opt) {
            return Err(format!(
                "socket option {} of level {} is not one torpor keeps",
                o.opt, o.level
            ));
        }
        let filter = o.level == SOL_SOCKET && o.opt == SO_FILTER;
        let ok = if filter {
            o.value.len() % 8 == 0 && o.value.len() <= FILTER_LIMIT * 8
        } else {
            o.value.len() <= VALUE_LIMIT
        };
        if !ok {
            return Err(format!(
                "{} of {} bytes",
                name(o.level, o.opt),
                o.value.len()
            ));
        }
    }
    Ok(())
}

/// Why a user may not have an option set by the restore (which runs as
/// root): the capability it needs, or `None`.
pub fn needs_capability(o: &RawSockOpt) -> Option<&'static str> {
    let int = || {
        o.value
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes)
    };
    match (o.level, o.opt) {
        (SOL_SOCKET, 1 | 36 | 46) | (SOL_IP, 19) | (SOL_IPV6, 75) => Some("CAP_NET_ADMIN"),
        // Priorities 0 to 6 are anyone's.
        (SOL_SOCKET, 12) if !int().is_some_and(|p| (0..=6).contains(&p)) => Some("CAP_NET_ADMIN"),
        (SOL_IP, 3) | (SOL_RAW, 1) => Some("CAP_NET_RAW"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(level: i32, opt: i32, value: &[u8]) -> RawSockOpt {
        RawSockOpt {
            level,
            opt,
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_membership_from_an_image_is_a_whole_filter_of_its_family() {
        let v4 = group_filter(SOL_IP, 1, &[239, 1, 2, 3], 0);
        assert_eq!(v4.len(), FILTER_HEADER);
        assert_eq!(
            membership(SOL_IP, &v4),
            Ok(Membership {
                interface: 1,
                family: 2,
                mode: MCAST_EXCLUDE,
                sources: 0
            })
        );
        assert_eq!(check(&[opt(SOL_IP, MCAST_MSFILTER, &v4)]), Ok(()));
        assert_eq!(
            describe(&opt(SOL_IP, MCAST_MSFILTER, &v4)),
            "group 239.1.2.3 on interface 1"
        );
        // An IPv4 group at the IPv6 level, a cut filter, sources it does
        // not hold, and INCLUDE with none (a leave) are refused.
        assert!(membership(SOL_IPV6, &v4).unwrap_err().contains("family 2"));
        assert!(membership(SOL_IP, &v4[..FILTER_HEADER - 1]).is_err());
        let mut more = v4.clone();
        more[GROUP_AT + SS + 4..GROUP_AT + SS + 8].copy_from_slice(&1u32.to_ne_bytes());
        assert!(membership(SOL_IP, &more)
            .unwrap_err()
            .contains("with 1 sources"));
        let mut leave = v4.clone();
        leave[GROUP_AT + SS..GROUP_AT + SS + 4].copy_from_slice(&MCAST_INCLUDE.to_ne_bytes());
        assert!(membership(SOL_IP, &leave)
            .unwrap_err()
            .contains("filter mode 1 with 0"));
        let v6 = group_filter(SOL_IPV6, 2, &[0xff; 16], 0);
        assert_eq!(membership(SOL_IPV6, &v6).map(|m| m.family), Ok(10));
        assert!(describe(&opt(SOL_IPV6, MCAST_MSFILTER, &v6)).starts_with("group ffff:"));
    }

    #[test]
    fn options_from_an_image_are_known_and_bounded() {
        assert_eq!(check(&[opt(SOL_SOCKET, 6, &1i32.to_ne_bytes())]), Ok(()));
        assert_eq!(
            check(&[opt(SOL_SOCKET, 2, &[1, 0, 0, 0])]),
            Err("socket option 2 of level 1 is not one torpor keeps".into())
        );
        assert_eq!(
            check(&[opt(SOL_TCP, 13, &[b'x'; 65])]),
            Err("TCP_CONGESTION of 65 bytes".into())
        );
        assert_eq!(check(&[opt(SOL_SOCKET, SO_FILTER, &[0; 16])]), Ok(()));
        assert_eq!(
            check(&[opt(SOL_SOCKET, SO_FILTER, &[0; 12])]),
            Err("SO_ATTACH_FILTER of 12 bytes".into())
        );
        assert_eq!(
            check(&[opt(SOL_SOCKET, SO_FILTER, &vec![0; 8 * 4097])]),
            Err("SO_ATTACH_FILTER of 32776 bytes".into())
        );
    }

    #[test]
    fn the_options_a_user_could_not_set_are_named() {
        let int = |v: i32| v.to_ne_bytes();
        assert_eq!(
            needs_capability(&opt(SOL_SOCKET, 36, &int(7))),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            needs_capability(&opt(SOL_IP, 19, &int(1))),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(needs_capability(&opt(SOL_SOCKET, 12, &int(6))), None);
        assert_eq!(
            needs_capability(&opt(SOL_SOCKET, 12, &int(7))),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            needs_capability(&opt(SOL_SOCKET, 12, &[1])),
            Some("CAP_NET_ADMIN")
        );
        assert_eq!(
            needs_capability(&opt(SOL_RAW, 1, &int(-1))),
            Some("CAP_NET_RAW")
        );
        assert_eq!(needs_capability(&opt(SOL_SOCKET, 6, &int(1))), None);
        assert_eq!(needs_capability(&opt(SOL_TCP, 4, &int(77))), None);
    }

    #[test]
    fn what_the_kernel_derived_for_an_accepted_connection_is_not_kept() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (a, _) = l.accept().expect("accept");
        let a = OwnedFd::from(a);
        let mut mc_ttl = [0u8; 4];
        let mut len = libc::socklen_t::try_from(mc_ttl.len()).expect("len");
        // SAFETY: getsockopt writes at most `len` bytes into `mc_ttl`.
        let r = unsafe {
            libc::getsockopt(
                a.as_raw_fd(),
                SOL_IP,
                libc::IP_MULTICAST_TTL,
                mc_ttl.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        assert_eq!(r, 0);
        // The TTL of the connection's first packet, which no new socket has.
        assert_ne!(i32::from_ne_bytes(mc_ttl), 1);
        assert_eq!(collect(&a), Ok(Vec::new()));
        drop(c);
    }

    #[test]
    fn options_set_differ_from_a_new_sockets_and_come_back() {
        // SAFETY: socket takes integers only.
        let udp = super::super::owned(libc::c_long::from(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        }))
        .expect("socket");
        assert_eq!(
            collect(&udp),
            Ok(Vec::new()),
            "a new socket has nothing to keep"
        );
        let fd = udp.as_raw_fd();
        super::super::sock::set_int(fd, SOL_SOCKET, libc::SO_BROADCAST, 1).expect("broadcast");
        super::super::sock::set_int(fd, SOL_IP, libc::IP_TTL, 9).expect("ttl");
        let kept = collect(&udp).expect("collect");
        assert_eq!(
            kept,
            [
                opt(SOL_IP, libc::IP_TTL, &9i32.to_ne_bytes()),
                opt(SOL_SOCKET, libc::SO_BROADCAST, &1i32.to_ne_bytes()),
            ]
        );
        // SAFETY: as above.
        let again = super::super::owned(libc::c_long::from(unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        }))
        .expect("socket");
        apply(again.as_raw_fd(), &kept).expect("apply");
        assert_eq!(collect(&again), Ok(kept));
    }
}

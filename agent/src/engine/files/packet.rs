//! Packet sockets (`AF_PACKET`, `SOCK_RAW` and `SOCK_DGRAM`). Read through
//! a duplicate of the fd: the protocol and interface (`getsockname`, the
//! interface also by name), the `SOL_PACKET` options of [`KEPT`] and the
//! common socket options (`sock`); sock_diag (`PACKET_DIAG`) gives the copy
//! threshold, which no `getsockopt` reads, and tells what torpor cannot
//! keep: rings (`PACKET_RX_RING`/`PACKET_TX_RING`, which the app maps),
//! fanout groups and memberships (`PACKET_ADD_MEMBERSHIP`), each refused.
//! Packets waiting in the receive queue came from the network and are
//! refused too, naming the bytes waiting (`SO_MEMINFO`).
//!
//! The restore makes a socket of protocol 0, which receives nothing, sets
//! its options (a filter first, `sockopt`), then binds it to the protocol
//! and to the interface of the same name, so nothing reaches it before its
//! filter is in place. An interface gone fails the restore, naming it.
//!
//! Unsafe code: sockets are created and bound, their options read and set
//! and interface names looked up through libc, with pointers to this
//! module's buffers.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use super::sock::{apply_opts, collect_opts, get_int, set_int, sock_name};
use super::{dup_from, into_raw, last_os, owned};
use crate::image::records::PacketSocket;

const SOL_PACKET: i32 = 263;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_FANOUT: i32 = 18;
/// `SO_MEMINFO`: the first `u32` is the receive queue's bytes.
const SO_MEMINFO: i32 = 55;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const PACKET_SHOW_INFO: u32 = 0x1;
const PACKET_SHOW_MCLIST: u32 = 0x2;
const PACKET_SHOW_RING_CFG: u32 = 0x4;
const PACKET_SHOW_FANOUT: u32 = 0x8;
const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_MCLIST: u16 = 1;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_TX_RING: u16 = 3;
const PACKET_DIAG_FANOUT: u16 = 4;
/// The most options a record may hold.
const MAX_OPTIONS: usize = 32;

/// The `SOL_PACKET` options kept, in the order they are set again: the
/// version before the rest, the vnet header size after its flag.
pub const KEPT: &[(i32, &str)] = &[
    (10, "PACKET_VERSION"),
    (12, "PACKET_RESERVE"),
    (8, "PACKET_AUXDATA"),
    (9, "PACKET_ORIGDEV"),
    (15, "PACKET_VNET_HDR"),
    (24, "PACKET_VNET_HDR_SZ"),
    (17, "PACKET_TIMESTAMP"),
    (PACKET_COPY_THRESH, "PACKET_COPY_THRESH"),
    (20, "PACKET_QDISC_BYPASS"),
    (14, "PACKET_LOSS"),
    (19, "PACKET_TX_HAS_OFF"),
    (23, "PACKET_IGNORE_OUTGOING"),
];

/// What sock_diag says of one packet socket.
#[derive(Debug, Default)]
struct Diag {
    copy_thresh: u32,
    memberships: usize,
    rx_ring: bool,
    tx_ring: bool,
    fanout: bool,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The attributes of one `packet_diag_msg` (after its 16 bytes).
fn parse_attrs(msg: &[u8]) -> Result<Diag, String> {
    const SHORT: &str = "short sock_diag attribute";
    let mut d = Diag::default();
    let mut o = 16;
    while o + 4 <= msg.len() {
        let len = usize::from(u16_at(msg, o).unwrap_or(0));
        let at = u16_at(msg, o + 2).unwrap_or(0);
        if len < 4 || o + len > msg.len() {
            break;
        }
        match at {
            PACKET_DIAG_INFO => d.copy_thresh = u32_at(msg, o + 4 + 12).ok_or(SHORT)?,
            // One nested attribute of a packet_diag_mclist (4 + 44 bytes)
            // per membership.
            PACKET_DIAG_MCLIST => d.memberships = (len - 4).div_ceil(48),
            PACKET_DIAG_RX_RING => d.rx_ring = true,
            PACKET_DIAG_TX_RING => d.tx_ring = true,
            PACKET_DIAG_FANOUT => d.fanout = true,
            _ => {}
        }
        o += (len + 3) & !3;
    }
    Ok(d)
}

/// Asks sock_diag for every packet socket of torpor's network namespace and
/// returns what it says of the one of inode `inode`.
fn diag(inode: u64) -> Result<Diag, String> {
    // SAFETY: socket takes integers only.
    let nl = owned(libc::c_long::from(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    }))
    .map_err(|e| format!("sock_diag socket: {e}"))?;
    // nlmsghdr (16) + packet_diag_req (20). Only dumps are answered.
    let mut req = Vec::with_capacity(36);
    req.extend_from_slice(&36u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    // NLM_F_REQUEST | NLM_F_DUMP.
    req.extend_from_slice(&0x301u16.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // AF_PACKET is 17.
    req.extend_from_slice(&[u8::try_from(libc::AF_PACKET).unwrap_or(17), 0, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    let show = PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG | PACKET_SHOW_FANOUT;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: sending our buffer to the kernel.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(format!("sock_diag request: {}", last_os()));
    }
    let mut buf = vec![0u8; 32 * 1024];
    let mut found = None;
    loop {
        // SAFETY: receiving into our buffer.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| format!("sock_diag reply: {}", last_os()))?;
        if n == 0 {
            return Err("sock_diag reply: end of stream before NLMSG_DONE".into());
        }
        let mut o = 0;
        while o + 16 <= n {
            let len = u32_at(&buf, o).map_or(0, |l| l as usize);
            if len < 16 || o + len > n {
                return Err(format!("a sock_diag message of {len} bytes"));
            }
            let msg = &buf[o..o + len];
            let ty = i32::from(u16_at(msg, 4).unwrap_or(0));
            if ty == libc::NLMSG_DONE {
                return found
                    .ok_or_else(|| format!("sock_diag lists no packet socket of inode {inode}"));
            }
            if ty == libc::NLMSG_ERROR {
                let err = u32_at(msg, 16).ok_or("short sock_diag error reply")?;
                let why = std::io::Error::from_raw_os_error(
                    crate::arch::Bits::bits(err).saturating_neg(),
                );
                return Err(format!(
                    "sock_diag of packet sockets: {why} (is the kernel's packet_diag, CONFIG_PACKET_DIAG, available?)"
                ));
            }
            // packet_diag_msg: family, type, num, ino at 4.
            let body = &msg[16..];
            if u32_at(body, 4).map(u64::from) == Some(inode) {
                found = Some(parse_attrs(body)?);
            }
            o += (len + 3) & !3;
        }
    }
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

/// The name of interface `index`.
fn if_name(index: i32) -> Result<String, String> {
    let i = u32::try_from(index).map_err(|_| format!("interface index {index}"))?;
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `buf`.
    if unsafe { libc::if_indextoname(i, buf.as_mut_ptr().cast()) }.is_null() {
        return Err(format!("the name of interface {index}: {}", last_os()));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The index of interface `name` on this system; `None` when it has none.
fn if_index(name: &str) -> Option<i32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    i32::try_from(i).ok().filter(|&i| i > 0)
}

pub(super) fn collect(pid: i32, fd: i32, inode: u64) -> Result<PacketSocket, String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    let sock_type = get_int(&f, libc::SOL_SOCKET, libc::SO_TYPE).map_err(io)?;
    if sock_type != libc::SOCK_RAW && sock_type != libc::SOCK_DGRAM {
        return Err(format!(
            "socket type {sock_type} (SOCK_PACKET), which torpor cannot restore"
        ));
    }
    let d = diag(inode)?;
    if d.rx_ring || d.tx_ring {
        let which = match (d.rx_ring, d.tx_ring) {
            (true, true) => "PACKET_RX_RING and PACKET_TX_RING",
            (true, false) => "PACKET_RX_RING",
            _ => "PACKET_TX_RING",
        };
        return Err(format!(
            "it has a ring ({which}), which torpor cannot restore"
        ));
    }
    if d.fanout || get_int(&f, SOL_PACKET, PACKET_FANOUT).map_err(io)? != 0 {
        return Err("it is in a fanout group (PACKET_FANOUT), which torpor cannot restore".into());
    }
    if d.memberships > 0 {
        return Err(format!(
            "it has {} membership(s) (PACKET_ADD_MEMBERSHIP), which torpor cannot restore",
            d.memberships
        ));
    }
    let waiting = queued(&f)?;
    if waiting > 0 {
        return Err(format!(
            "{waiting} bytes of packets wait unread in its receive queue, which torpor cannot queue again"
        ));
    }
    // sockaddr_ll: family, protocol (network order) at 2, ifindex at 4.
    let name = sock_name(&f, false).map_err(io)?.unwrap_or_default();
    let protocol = name
        .get(2..4)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .ok_or_else(|| format!("a packet socket address of {} bytes", name.len()))?;
    let ifindex = name
        .get(4..8)
        .map(|p| i32::from_ne_bytes([p[0], p[1], p[2], p[3]]))
        .ok_or_else(|| format!("a packet socket address of {} bytes", name.len()))?;
    let ifname = if ifindex != 0 {
        if_name(ifindex)?
    } else {
        String::new()
    };
    let mut options = Vec::new();
    for &(opt, name) in KEPT {
        let v = if opt == PACKET_COPY_THRESH {
            i32::try_from(d.copy_thresh).map_err(|_| format!("{name} {}", d.copy_thresh))?
        } else {
            match get_int(&f, SOL_PACKET, opt) {
                Ok(v) => v,
                // An option this kernel does not have is at its default.
                Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => 0,
                Err(e) => return Err(format!("{name}: {e}")),
            }
        };
        if v != 0 {
            options.push((opt, v));
        }
    }
    Ok(PacketSocket {
        sock_type,
        protocol,
        ifindex,
        ifname,
        options,
        opts: collect_opts(&f, false).map_err(io)?,
    })
}

/// Refuses a record no packet socket can have: it came from a damaged or
/// forged image.
fn check(s: &PacketSocket) -> Result<(), String> {
    if s.sock_type != libc::SOCK_RAW && s.sock_type != libc::SOCK_DGRAM {
        return Err(format!(
            "socket type {} is not SOCK_RAW or SOCK_DGRAM",
            s.sock_type
        ));
    }
    if s.options.len() > MAX_OPTIONS {
        return Err(format!("{} packet options", s.options.len()));
    }
    if let Some((o, _)) = s
        .options
        .iter()
        .find(|(o, _)| !KEPT.iter().any(|(k, _)| k == o))
    {
        return Err(format!("option {o} is not a packet option torpor keeps"));
    }
    if s.ifindex < 0
        || (s.ifindex == 0) != s.ifname.is_empty()
        || s.ifname.len() >= libc::IF_NAMESIZE
        || s.ifname.contains(['\0', '/'])
    {
        return Err(format!(
            "interface {:?} of index {} is no interface name",
            s.ifname, s.ifindex
        ));
    }
    Ok(())
}

fn name_of(opt: i32) -> &'static str {
    KEPT.iter()
        .find(|(k, _)| *k == opt)
        .map_or("a packet option", |(_, n)| n)
}

pub(super) fn open(
    s: &PacketSocket,
    nonblock: bool,
    extra: &[crate::image::records::RawSockOpt],
) -> Result<i32, std::io::Error> {
    check(s).map_err(std::io::Error::other)?;
    // The interface first: nothing is made when it is gone.
    let ifindex = if s.ifname.is_empty() {
        0
    } else {
        if_index(&s.ifname).ok_or_else(|| {
            std::io::Error::other(format!(
                "interface {} (index {} at the dump) does not exist here",
                s.ifname, s.ifindex
            ))
        })?
    };
    // Protocol 0: it receives nothing until the bind below.
    // SAFETY: socket takes integers only.
    let f = owned(libc::c_long::from(unsafe {
        libc::socket(libc::AF_PACKET, s.sock_type | libc::SOCK_CLOEXEC, 0)
    }))?;
    let fd = f.as_raw_fd();
    super::sockopt::apply(fd, extra)?;
    for &(o, v) in &s.options {
        set_int(fd, SOL_PACKET, o, v).map_err(|e| {
            std::io::Error::new(e.kind(), format!("setting {} to {v}: {e}", name_of(o)))
        })?;
    }
    if s.protocol != 0 || ifindex != 0 {
        // sockaddr_ll: family, protocol (network order), ifindex, the rest 0.
        let mut a = [0u8; 20];
        a[..2].copy_from_slice(&u16::try_from(libc::AF_PACKET).unwrap_or(17).to_ne_bytes());
        a[2..4].copy_from_slice(&s.protocol.to_be_bytes());
        a[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        // SAFETY: bind reads the 20 bytes of `a`, a sockaddr_ll.
        if unsafe { libc::bind(fd, a.as_ptr().cast(), 20) } < 0 {
            let e = last_os();
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "binding to protocol {:#06x} on interface {}: {e}",
                    s.protocol,
                    if s.ifname.is_empty() {
                        "(any)"
                    } else {
                        &s.ifname
                    }
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

impl super::AnonKind for PacketSocket {
    const NAME: &'static str = "a packet socket";
    const CLAIM: super::Claim = super::Claim::Socket(&[libc::AF_PACKET]);

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let inode = p.socket.map_or(0, |(inode, _)| inode);
        collect(p.pid, p.fd, inode).map_err(|e| p.unsupported(format!("a packet socket: {e}")))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock(), cx.sock_opts)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_records_are_refused() {
        let ok = PacketSocket {
            sock_type: libc::SOCK_DGRAM,
            protocol: 0x0800,
            ifindex: 1,
            ifname: "lo".into(),
            options: vec![(8, 1)],
            ..PacketSocket::default()
        };
        assert!(check(&ok).is_ok());
        for bad in [
            PacketSocket {
                sock_type: 10,
                ..ok.clone()
            },
            PacketSocket {
                options: vec![(5, 1)],
                ..ok.clone()
            },
            PacketSocket {
                options: vec![(8, 1); MAX_OPTIONS + 1],
                ..ok.clone()
            },
            PacketSocket {
                ifname: String::new(),
                ..ok.clone()
            },
            PacketSocket {
                ifname: "../x".into(),
                ..ok.clone()
            },
            PacketSocket {
                ifname: "a-very-long-interface-name".into(),
                ..ok.clone()
            },
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn diag_attributes_are_read_within_their_message() {
        // packet_diag_msg (16 bytes), INFO (4 + 24), MCLIST with one nested
        // entry (4 + 4 + 44), a FANOUT (4 + 4), and an attribute cut short.
        let mut m = vec![0u8; 16];
        let mut attr = |ty: u16, body: &[u8]| {
            m.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(body);
            while m.len() % 4 != 0 {
                m.push(0);
            }
        };
        let mut info = [0u8; 24];
        info[12..16].copy_from_slice(&300u32.to_ne_bytes());
        attr(PACKET_DIAG_INFO, &info);
        attr(PACKET_DIAG_MCLIST, &[0; 48]);
        attr(PACKET_DIAG_FANOUT, &[0; 4]);
        m.extend_from_slice(&200u16.to_ne_bytes());
        m.extend_from_slice(&PACKET_DIAG_RX_RING.to_ne_bytes());
        let d = parse_attrs(&m).expect("parsed");
        assert_eq!(d.copy_thresh, 300);
        assert_eq!(d.memberships, 1);
        assert!(d.fanout);
        assert!(!d.rx_ring, "an attribute past the message is not read");
    }
}

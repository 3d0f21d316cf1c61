//! Established TCP connections kept through TCP repair mode, when the dump
//! is asked to (`torpor dump --tcp-established`, `restore.tcp_established`).
//!
//! Dump: the connection's packets are held off first (the network lock,
//! [`Lock`]), then the socket, through torpor's duplicate of the fd, is
//! put in repair mode and read: sequence numbers (`TCP_QUEUE_SEQ` of each
//! queue), both queues (`MSG_PEEK` with the repair queue set), MSS, window
//! scaling, SACK and timestamps, and the window (`TCP_REPAIR_WINDOW`). A
//! socket still in repair mode when its last descriptor closes leaves
//! without a FIN or a reset: after a good dump the tree is killed with the
//! sockets in repair mode and the lock stays, so the peer sees nothing
//! until the restore. A dump that fails, or leaves the tree running, turns
//! repair mode off and lifts the lock before the tree runs again
//! ([`Repairing`]).
//!
//! Restore: a socket in repair mode gets the sequence numbers, is bound to
//! the local address and connected to the peer (no SYN is sent), gets the
//! options, the send queue's sent part, the receive queue and the window;
//! once the tree is complete ([`Restored::finish`]) repair mode is turned
//! off, the never-sent bytes are written as the app's, and the lock is
//! lifted. The peer then goes on with the same connection.
//!
//! Unsafe code: socket options, ioctls, `recv`/`send`, `bind` and
//! `connect` through libc with pointers to this module's buffers.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use super::sock::{apply_opts, get_int, set_int};
use super::{dup_from, into_raw, last_os, owned};
use crate::engine::{conv, Cause};
use crate::image::records::{InetSocket, TcpConnection};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
/// The largest window scale the kernel takes (`TCP_MAX_WSCALE`).
const MAX_WSCALE: u8 = 14;
/// `SIOCINQ`, `SIOCOUTQ`, `SIOCOUTQNSD`: bytes unread, bytes not
/// acknowledged, bytes never sent.
const SIOCINQ: libc::Ioctl = libc::FIONREAD;
const SIOCOUTQ: libc::Ioctl = libc::TIOCOUTQ;
const SIOCOUTQNSD: libc::Ioctl = 0x894B;
/// More queued bytes than any socket buffer holds: refused.
const MAX_QUEUES: usize = 256 << 20;

const TCP_ESTABLISHED: u8 = 1;

/// The kernel's names of the TCP states, for refusals.
fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "an unknown state",
    }
}

/// Whether a TCP socket is one this module takes: connected or on its
/// way to or from a connection (neither listening nor closed).
pub(super) fn takes(state: u8) -> bool {
    state != 7 && state != 10
}

/// The connection's addresses as the wire carries them (a v4-mapped IPv6
/// address as IPv4): local address and port, peer address and port.
fn tuple(s: &InetSocket) -> Option<(IpAddr, u16, IpAddr, u16)> {
    let (l, lp) = addr(&s.local)?;
    let (p, pp) = addr(&s.peer)?;
    Some((l, lp, p, pp))
}

/// The address and port of a raw `sockaddr_in`/`sockaddr_in6`.
fn addr(raw: &[u8]) -> Option<(IpAddr, u16)> {
    let family = i32::from(u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]));
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    if family == libc::AF_INET {
        let b: [u8; 4] = raw.get(4..8)?.try_into().ok()?;
        return Some((IpAddr::V4(Ipv4Addr::from(b)), port));
    }
    if family == libc::AF_INET6 {
        let b: [u8; 16] = raw.get(8..24)?.try_into().ok()?;
        let a = Ipv6Addr::from(b);
        return Some((a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4), port));
    }
    None
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `local -> peer` of a connection, for messages.
pub fn endpoints(s: &InetSocket) -> String {
    tuple(s).map_or_else(
        || "with no addresses".to_string(),
        |(l, lp, p, pp)| format!("{} -> {}", endpoint(l, lp), endpoint(p, pp)),
    )
}

/// The network lock of one connection: an nftables table of torpor's own,
/// named after the connection's addresses, that drops its packets both
/// ways. A restore finds it by the same name; after a power cycle it is
/// gone with the rest of the ruleset.
#[derive(Debug)]
pub(super) struct Lock {
    table: String,
}

/// The `nft` binary, where one is installed.
fn nft() -> Option<&'static str> {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn run_nft(nft: &str, script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {nft}: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(script.as_bytes())
            .map_err(|e| format!("writing to {nft}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {nft}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{nft} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Lock {
    /// The table's name: `torpor_` and the connection's addresses and
    /// ports in hex, so that a restore finds it from the image alone.
    fn name(s: &InetSocket) -> Option<String> {
        let (l, lp, p, pp) = tuple(s)?;
        let mut n = String::from("torpor_");
        let mut push = |a: IpAddr, port: u16| {
            let bytes = match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            for b in bytes.iter().chain(&port.to_be_bytes()) {
                n.push_str(&format!("{b:02x}"));
            }
        };
        push(l, lp);
        push(p, pp);
        Some(n)
    }

    /// Drops the connection's packets from now on; `None` where nftables
    /// is not installed (the peer's packets meanwhile are answered with a
    /// reset, see docs/objects.md).
    pub(super) fn take(s: &InetSocket) -> Result<Option<Lock>, String> {
        let Some(nft) = nft() else {
            return Ok(None);
        };
        let (l, lp, p, pp) = tuple(s).ok_or("the connection has no addresses")?;
        let table = Lock::name(s).ok_or("the connection has no addresses")?;
        let ip = if l.is_ipv4() { "ip" } else { "ip6" };
        // Replaced whole if a failed dump left one behind.
        let script = format!(
            "add table inet {table}\n\
             delete table inet {table}\n\
             table inet {table} {{\n\
             chain in {{ type filter hook input priority -150; policy accept;\n\
             {ip} saddr {p} {ip} daddr {l} tcp sport {pp} tcp dport {lp} drop\n}}\n\
             chain out {{ type filter hook output priority -150; policy accept;\n\
             {ip} saddr {l} {ip} daddr {p} tcp sport {lp} tcp dport {pp} drop\n}}\n\
             }}\n"
        );
        run_nft(nft, &script).map_err(|e| format!("the network lock: {e}"))?;
        Ok(Some(Lock { table }))
    }

    /// Lifts the lock of the connection `s` if there is one.
    fn lift_for(s: &InetSocket) -> Result<(), String> {
        let (Some(nft), Some(table)) = (nft(), Lock::name(s)) else {
            return Ok(());
        };
        Lock { table }.lift_with(nft)
    }

    fn lift_with(self, nft: &str) -> Result<(), String> {
        // Added first, so deleting a table that is not there succeeds.
        run_nft(
            nft,
            &format!("add table inet {0}\ndelete table inet {0}\n", self.table),
        )
        .map_err(|e| format!("lifting the network lock {}: {e}", self.table))
    }

    fn lift(self) -> Result<(), String> {
        match nft() {
            Some(nft) => self.lift_with(nft),
            None => Ok(()),
        }
    }
}

/// The connections a dump put in repair mode, each with its lock. Dropped,
/// it turns repair mode off and lifts the locks (the dump failed or leaves
/// the tree running); [`Repairing::keep`] leaves both for the restore.
#[derive(Debug, Default)]
pub struct Repairing {
    socks: RefCell<Vec<(OwnedFd, Option<Lock>)>>,
}

impl Repairing {
    /// The tree is gone: its sockets close in repair mode, with no FIN or
    /// reset, and the locks stay until the restore.
    pub fn keep(self) {
        let socks = std::mem::take(&mut *self.socks.borrow_mut());
        // Each lock is left in place: the restore lifts it by its name.
        drop(socks);
    }

    pub fn is_empty(&self) -> bool {
        self.socks.borrow().is_empty()
    }
}

impl Drop for Repairing {
    fn drop(&mut self) {
        for (f, lock) in self.socks.get_mut().drain(..) {
            // The tree runs on: a window probe tells the peer where it is.
            let _ = set_int(f.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR, 0);
            if let Some(l) = lock {
                let _ = l.lift();
            }
        }
    }
}

fn getsockopt_buf(f: &OwnedFd, opt: i32, buf: &mut [u8]) -> Result<usize, std::io::Error> {
    let mut len: libc::socklen_t = conv::fit(buf.len(), "socklen_t", "option buffer")?;
    // SAFETY: getsockopt writes at most `len` bytes into `buf`.
    if unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            libc::IPPROTO_TCP,
            opt,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    } < 0
    {
        return Err(last_os());
    }
    Ok((len as usize).min(buf.len()))
}

fn ioctl_int(f: &OwnedFd, req: libc::Ioctl) -> Result<usize, std::io::Error> {
    let mut v: libc::c_int = 0;
    // SAFETY: the socket ioctls asked here write one int.
    if unsafe { libc::ioctl(f.as_raw_fd(), req, &raw mut v) } < 0 {
        return Err(last_os());
    }
    usize::try_from(v).map_err(|_| std::io::Error::other(format!("ioctl {req:#x} gave {v}")))
}

/// The sequence number of one queue.
fn queue_seq(f: &OwnedFd, queue: i32) -> Result<u32, std::io::Error> {
    set_int(f.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)?;
    // The kernel reports a u32 through an int.
    Ok(u32::from_ne_bytes(
        get_int(f, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)?.to_ne_bytes(),
    ))
}

/// The `len` bytes of one queue, read without taking them.
fn peek(f: &OwnedFd, queue: i32, len: usize, what: &str) -> Result<Vec<u8>, String> {
    set_int(f.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)
        .map_err(|e| format!("TCP_REPAIR_QUEUE: {e}"))?;
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    // SAFETY: recv writes at most `len` bytes into `buf`.
    let n = unsafe {
        libc::recv(
            f.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(format!("reading its {what}: {}", last_os()));
    }
    if n.unsigned_abs() != len {
        return Err(format!("its {what} gave {n} of {len} bytes"));
    }
    Ok(buf)
}

/// `TCP_INFO` of the socket: its state, options and window scales.
fn info(f: &OwnedFd) -> Result<(u8, u8, u8, u8), std::io::Error> {
    let mut i = [0u8; 104];
    let n = getsockopt_buf(f, libc::TCP_INFO, &mut i)?;
    if n < 8 {
        return Err(std::io::Error::other(format!("TCP_INFO gave {n} bytes")));
    }
    // tcpi_state, tcpi_options at 5, then the bit fields snd_wscale (low
    // nibble) and rcv_wscale.
    Ok((i[0], i[5], i[6] & 0xf, i[6] >> 4))
}

/// Collects the connection `base` describes (fd `fd` of `pid`), putting
/// it in repair mode and its lock in `hold`.
pub(super) fn collect(
    pid: i32,
    fd: i32,
    base: InetSocket,
    hold: &Repairing,
) -> Result<TcpConnection, String> {
    if base.tcp_state != TCP_ESTABLISHED {
        return Err(format!(
            "a TCP connection in state {}, which torpor keeps only when ESTABLISHED",
            state_name(base.tcp_state)
        ));
    }
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    unsafe { libc::poll(&raw mut p, 1, 0) };
    if p.revents & libc::POLLRDHUP != 0 {
        return Err("an established TCP connection whose receiving side is shut down, which torpor cannot keep".into());
    }
    if p.revents & libc::POLLERR != 0 {
        return Err("a TCP connection with an error pending, which torpor cannot keep".into());
    }
    let (_, options, snd_wscale, rcv_wscale) = info(&f).map_err(|e| format!("TCP_INFO: {e}"))?;
    let mss =
        get_int(&f, libc::IPPROTO_TCP, libc::TCP_MAXSEG).map_err(|e| format!("TCP_MAXSEG: {e}"))?;
    let mss = u32::try_from(mss).map_err(|_| format!("TCP_MAXSEG gave {mss}"))?;
    let lock = Lock::take(&base)?;
    if let Err(e) = set_int(f.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR, 1) {
        if let Some(l) = lock {
            let _ = l.lift();
        }
        return Err(format!("TCP_REPAIR (torpor needs CAP_NET_ADMIN): {e}"));
    }
    let raw = f.as_raw_fd();
    hold.socks.borrow_mut().push((f, lock));
    let socks = hold.socks.borrow();
    let Some((f, _)) = socks.iter().find(|(s, _)| s.as_raw_fd() == raw) else {
        return Err("the socket in repair mode was lost".into());
    };
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    // In repair mode the state cannot move on: read it again.
    let (state, ..) = info(f).map_err(io("TCP_INFO"))?;
    if state != TCP_ESTABLISHED {
        return Err(format!(
            "a TCP connection that went to state {} during the dump",
            state_name(state)
        ));
    }
    let inq = ioctl_int(f, SIOCINQ).map_err(io("SIOCINQ"))?;
    let outq = ioctl_int(f, SIOCOUTQ).map_err(io("SIOCOUTQ"))?;
    let unsent = ioctl_int(f, SIOCOUTQNSD).map_err(io("SIOCOUTQNSD"))?;
    if inq + outq > MAX_QUEUES {
        return Err(format!(
            "its queues hold {inq} unread and {outq} unacknowledged bytes, more than the {} MiB torpor keeps for a connection",
            MAX_QUEUES >> 20
        ));
    }
    if unsent > outq {
        return Err(format!(
            "{unsent} bytes never sent out of a send queue of {outq}"
        ));
    }
    let rcv_seq = queue_seq(f, TCP_RECV_QUEUE).map_err(io("TCP_QUEUE_SEQ"))?;
    let recv_queue = peek(f, TCP_RECV_QUEUE, inq, "receive queue")?;
    let snd_seq = queue_seq(f, TCP_SEND_QUEUE).map_err(io("TCP_QUEUE_SEQ"))?;
    let send_queue = peek(f, TCP_SEND_QUEUE, outq, "send queue")?;
    set_int(f.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, 0)
        .map_err(io("TCP_REPAIR_QUEUE"))?;
    let timestamp = u32::from_ne_bytes(
        get_int(f, libc::IPPROTO_TCP, TCP_TIMESTAMP)
            .map_err(io("TCP_TIMESTAMP"))?
            .to_ne_bytes(),
    );
    let mut w = [0u8; 20];
    let n = getsockopt_buf(f, TCP_REPAIR_WINDOW, &mut w).map_err(io("TCP_REPAIR_WINDOW"))?;
    if n != w.len() {
        return Err(format!("TCP_REPAIR_WINDOW gave {n} bytes"));
    }
    let mut window = [0u32; 5];
    for (i, v) in window.iter_mut().enumerate() {
        *v = u32::from_ne_bytes([w[i * 4], w[i * 4 + 1], w[i * 4 + 2], w[i * 4 + 3]]);
    }
    Ok(TcpConnection {
        socket: base,
        snd_seq,
        rcv_seq,
        send_len: conv::fit(send_queue.len(), "u32", "send queue").map_err(|e| e.to_string())?,
        unsent: conv::fit(unsent, "u32", "unsent bytes").map_err(|e| e.to_string())?,
        recv_len: conv::fit(recv_queue.len(), "u32", "receive queue").map_err(|e| e.to_string())?,
        mss,
        options: options & (TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE),
        snd_wscale,
        rcv_wscale,
        timestamp,
        window,
        send_queue,
        recv_queue,
    })
}

/// The restored connections, in repair mode until [`Restored::finish`];
/// dropped before it (a failed restore), they close in repair mode,
/// unseen by their peers, and their locks stay.
#[derive(Debug, Default)]
pub struct Restored {
    socks: Vec<(OwnedFd, Vec<u8>, InetSocket)>,
}

impl Restored {
    /// Turns repair mode off, writes the bytes the app had written and the
    /// kernel never sent, and lifts each connection's lock.
    pub fn finish(&mut self) -> Result<(), Cause> {
        for (f, unsent, s) in self.socks.drain(..) {
            set_int(f.as_raw_fd(), libc::IPPROTO_TCP, TCP_REPAIR, 0)?;
            // The sent part fills the send buffer as it did at the dump:
            // the buffer grows for the never-sent part, which the app had
            // queued beyond it, and shrinks back after.
            let sndbuf = get_int(&f, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
            let room = i32::try_from(unsent.len()).unwrap_or(i32::MAX);
            if !unsent.is_empty() {
                set_int(
                    f.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    sndbuf.saturating_add(room.saturating_mul(4)),
                )?;
            }
            let mut done = 0;
            while done < unsent.len() {
                let rest = &unsent[done..];
                // SAFETY: send reads `rest.len()` bytes of our buffer.
                let n = unsafe {
                    libc::send(
                        f.as_raw_fd(),
                        rest.as_ptr().cast(),
                        rest.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n <= 0 {
                    return Err(Cause::Refused(format!(
                        "queueing {} unsent bytes on the TCP connection to {}: {}",
                        rest.len(),
                        tuple(&s).map_or_else(String::new, |(_, _, p, pp)| endpoint(p, pp)),
                        last_os()
                    )));
                }
                done += n.unsigned_abs();
            }
            if !unsent.is_empty() {
                set_int(
                    f.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUFFORCE,
                    sndbuf / 2,
                )?;
            }
            Lock::lift_for(&s).map_err(Cause::Refused)?;
        }
        Ok(())
    }
}

fn set_buf(fd: i32, opt: i32, buf: &[u8]) -> Result<(), std::io::Error> {
    let len: libc::socklen_t = conv::fit(buf.len(), "socklen_t", "option length")?;
    // SAFETY: setsockopt reads `len` bytes of `buf`.
    if unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, opt, buf.as_ptr().cast(), len) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

/// Writes `data` into the queue `queue` of a socket in repair mode, in
/// pieces the kernel's memory accounting takes.
fn fill(fd: i32, queue: i32, data: &[u8], what: &str) -> Result<(), std::io::Error> {
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, queue)?;
    let mut done = 0;
    let mut chunk = data.len().max(1);
    while done < data.len() {
        let rest = &data[done..data.len().min(done + chunk)];
        // SAFETY: send reads `rest.len()` bytes of our buffer.
        let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = last_os();
            if e.raw_os_error() == Some(libc::ENOMEM) && chunk > 1024 {
                chunk /= 2;
                continue;
            }
            return Err(std::io::Error::new(
                e.kind(),
                format!("writing {} bytes of the {what}: {e}", data.len()),
            ));
        }
        done += n.unsigned_abs();
    }
    Ok(())
}

fn connect_to(fd: i32, raw: &[u8]) -> Result<(), std::io::Error> {
    let len: libc::socklen_t = conv::fit(raw.len(), "socklen_t", "peer address length")?;
    // SAFETY: connect reads `len` bytes of the saved address.
    if unsafe { libc::connect(fd, raw.as_ptr().cast(), len) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

fn bind_to(fd: i32, raw: &[u8]) -> Result<(), std::io::Error> {
    let len: libc::socklen_t = conv::fit(raw.len(), "socklen_t", "local address length")?;
    // SAFETY: bind reads `len` bytes of the saved address.
    if unsafe { libc::bind(fd, raw.as_ptr().cast(), len) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

/// Makes the connection again in repair mode, ready for
/// [`Restored::finish`]; `None` when its local address is not configured
/// on this system (the caller brings it back reset).
fn open_repaired(c: &TcpConnection, restored: &mut Restored) -> Result<Option<OwnedFd>, Cause> {
    let s = &c.socket;
    let (l, lp, p, pp) = tuple(s).ok_or_else(|| {
        Cause::Refused("a TCP connection whose saved addresses are not internet addresses".into())
    })?;
    let unsent = usize::try_from(c.unsent).unwrap_or(usize::MAX);
    if unsent > c.send_queue.len() || c.snd_wscale > MAX_WSCALE || c.rcv_wscale > MAX_WSCALE {
        return Err(Cause::Refused(format!(
            "the TCP connection {} -> {}: {} unsent bytes of a send queue of {}, window scales {} and {}",
            endpoint(l, lp),
            endpoint(p, pp),
            c.unsent,
            c.send_queue.len(),
            c.snd_wscale,
            c.rcv_wscale
        )));
    }
    let what = |e: std::io::Error, step: &str| {
        Cause::Refused(format!(
            "restoring the TCP connection {} -> {}: {step}: {e}",
            endpoint(l, lp),
            endpoint(p, pp)
        ))
    };
    // SAFETY: socket takes integers only.
    let f = owned(libc::c_long::from(unsafe {
        libc::socket(
            s.family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    }))
    .map_err(|e| what(e, "socket"))?;
    let fd = f.as_raw_fd();
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, 1).map_err(|e| what(e, "TCP_REPAIR"))?;
    if s.v6only {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)
            .map_err(|e| what(e, "IPV6_V6ONLY"))?;
    }
    // Buffer sizes first: the queues are accounted against them.
    apply_opts(fd, &s.opts, true).map_err(|e| what(e, "socket options"))?;
    let sent = c.send_queue.len() - unsent;
    let inq = c.recv_queue.len();
    // The sequence numbers where the queues start.
    let snd_start = c
        .snd_seq
        .wrapping_sub(u32::try_from(c.send_queue.len()).unwrap_or(0));
    let rcv_start = c.rcv_seq.wrapping_sub(u32::try_from(inq).unwrap_or(0));
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        .and_then(|()| {
            set_int(
                fd,
                libc::IPPROTO_TCP,
                TCP_QUEUE_SEQ,
                i32::from_ne_bytes(snd_start.to_ne_bytes()),
            )
        })
        .and_then(|()| set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE))
        .and_then(|()| {
            set_int(
                fd,
                libc::IPPROTO_TCP,
                TCP_QUEUE_SEQ,
                i32::from_ne_bytes(rcv_start.to_ne_bytes()),
            )
        })
        .map_err(|e| what(e, "TCP_QUEUE_SEQ"))?;
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        set_int(
            fd,
            libc::IPPROTO_TCP,
            TCP_TIMESTAMP,
            i32::from_ne_bytes(c.timestamp.to_ne_bytes()),
        )
        .map_err(|e| what(e, "TCP_TIMESTAMP"))?;
    }
    if let Err(e) = bind_to(fd, &s.local) {
        if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            return Ok(None);
        }
        return Err(what(e, "bind"));
    }
    connect_to(fd, &s.peer).map_err(|e| what(e, "connect"))?;
    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(TCPOPT_MSS, c.mss);
    if c.options & TCPI_OPT_WSCALE != 0 {
        opt(
            TCPOPT_WINDOW,
            u32::from(c.snd_wscale) | (u32::from(c.rcv_wscale) << 16),
        );
    }
    if c.options & TCPI_OPT_SACK != 0 {
        opt(TCPOPT_SACK_PERM, 0);
    }
    if c.options & TCPI_OPT_TIMESTAMPS != 0 {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    set_buf(fd, TCP_REPAIR_OPTIONS, &opts).map_err(|e| what(e, "TCP_REPAIR_OPTIONS"))?;
    // The sent part goes into the send queue as sent; the never-sent part
    // is written after repair mode, as the app wrote it.
    fill(fd, TCP_SEND_QUEUE, &c.send_queue[..sent], "send queue")
        .map_err(|e| what(e, "send queue"))?;
    fill(fd, TCP_RECV_QUEUE, &c.recv_queue, "receive queue")
        .map_err(|e| what(e, "receive queue"))?;
    set_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, 0).map_err(|e| what(e, "TCP_REPAIR_QUEUE"))?;
    let mut w = Vec::with_capacity(20);
    for v in c.window {
        w.extend_from_slice(&v.to_ne_bytes());
    }
    set_buf(fd, TCP_REPAIR_WINDOW, &w).map_err(|e| what(e, "TCP_REPAIR_WINDOW"))?;
    let keep = f.try_clone().map_err(|e| what(e, "dup"))?;
    restored
        .socks
        .push((keep, c.send_queue[sent..].to_vec(), s.clone()));
    Ok(Some(f))
}

impl super::AnonKind for TcpConnection {
    const NAME: &'static str = "an established TCP connection";
    const CLAIM: super::Claim = super::Claim::TcpRepair;

    fn collect(p: &super::Probe<'_>) -> Result<Self, Cause> {
        let family = p.socket.map_or(libc::AF_UNSPEC, |(_, family)| family);
        let Some(hold) = p.tcp else {
            return Err(p.unsupported("a TCP connection with no repair asked for"));
        };
        let base = super::inet::collect(p.pid, p.fd, family)
            .map_err(|e| p.unsupported(format!("an internet socket: {e}")))?;
        collect(p.pid, p.fd, base, hold).map_err(|e| p.unsupported(e))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, Cause> {
        let f = match open_repaired(self, cx.tcp)? {
            Some(f) => f,
            // The address is gone (a power cycle on another network): the
            // connection comes back reset, as without repair.
            None => {
                let _ = Lock::lift_for(&self.socket);
                return Ok(super::inet::open(&self.socket, cx.nonblock())?);
            }
        };
        if cx.nonblock() {
            // SAFETY: F_SETFL on our fd.
            if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
                return Err(last_os().into());
            }
        }
        Ok(into_raw(f))
    }
}

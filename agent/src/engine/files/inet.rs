//! Internet sockets: TCP, UDP, UDP-Lite, ping (ICMP echo) and raw.
//! Listeners are bound again on their address and port and listen with
//! their backlog; datagram and raw sockets are bound again and, when
//! connected, connected again. An established TCP connection, unless the
//! dump keeps it in repair mode (`tcp`, `--tcp-established`), comes back as
//! a connection reset by its peer, so the app's next read fails with
//! ECONNRESET and its next write with EPIPE, as after a network drop.
//! Options set again: `sock::apply_opts`.
//!
//! Unsafe code: sockets are created, bound, connected and polled through libc,
//! with pointers to the address and option buffers of this module.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, OwnedFd};

use super::sock::{apply_opts, collect_opts, get_int, set_int, socklen};
use super::{dup_from, into_raw, last_os, owned};
use crate::engine::conv;
use crate::image::records::InetSocket;

const TCP_LISTEN: u8 = 10;
/// Offsets in `struct tcp_info`: state, and for a listener the backlog
/// limit (`tcpi_sacked`).
const TCPI_STATE: usize = 0;
const TCPI_SACKED: usize = 28;

/// The first `N` bytes of the socket's `struct tcp_info`.
fn tcp_info<const N: usize>(f: &OwnedFd) -> Result<[u8; N], String> {
    let mut info = [0u8; N];
    let mut len = libc::socklen_t::try_from(info.len()).unwrap_or(0);
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    if unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    } < 0
    {
        return Err(format!("TCP_INFO: {}", last_os()));
    }
    Ok(info)
}

/// The TCP state of a TCP socket (`tcpi_state`).
pub(super) fn tcp_state(f: &OwnedFd) -> Result<u8, String> {
    Ok(tcp_info::<8>(f)?[TCPI_STATE])
}

/// The socket's address, or its peer's; empty when it has no peer.
fn name(f: &OwnedFd, peer: bool) -> Result<Vec<u8>, std::io::Error> {
    Ok(super::sock::sock_name(f, peer)?.unwrap_or_default())
}

/// The port of a raw sockaddr_in/sockaddr_in6 (same offset in both).
fn port(addr: &[u8]) -> u16 {
    addr.get(2..4)
        .map_or(0, |p| u16::from_be_bytes([p[0], p[1]]))
}

pub(super) fn collect(pid: i32, fd: i32, family: i32) -> Result<InetSocket, String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    let sock_type = get_int(&f, libc::SOL_SOCKET, libc::SO_TYPE).map_err(io)?;
    let protocol = get_int(&f, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(io)?;
    let tcp = protocol == libc::IPPROTO_TCP;
    let icmp = if family == libc::AF_INET6 {
        libc::IPPROTO_ICMPV6
    } else {
        libc::IPPROTO_ICMP
    };
    // Datagrams queued on a ping or raw socket came from the network and
    // cannot be queued again from a local socket.
    let (requeued, what) = match (sock_type, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => (true, "TCP"),
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => (true, "UDP"),
        (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => (true, "UDP-Lite"),
        (libc::SOCK_DGRAM, p) if p == icmp => (false, "ping"),
        (libc::SOCK_RAW, _) => (false, "raw"),
        _ => {
            return Err(format!(
                "protocol {protocol} (type {sock_type}) is none of TCP, UDP, UDP-Lite, ping or raw"
            ));
        }
    };
    let (mut tcp_state, mut backlog) = (0u8, 0u32);
    if tcp {
        let info = tcp_info::<104>(&f)?;
        tcp_state = info[TCPI_STATE];
        backlog = u32::from_ne_bytes([
            info[TCPI_SACKED],
            info[TCPI_SACKED + 1],
            info[TCPI_SACKED + 2],
            info[TCPI_SACKED + 3],
        ]);
    }
    let v6only = family == libc::AF_INET6
        && get_int(&f, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).map_err(io)? != 0;
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait; poll reads the state without changing it.
    unsafe { libc::poll(&raw mut p, 1, 0) };
    const TCP_CLOSE: u8 = 7;
    let dropped = tcp && tcp_state == TCP_CLOSE && p.revents & libc::POLLRDHUP != 0;
    let mut local = name(&f, false).map_err(io)?;
    if port(&local) == 0 {
        local.clear();
    }
    let queue = if tcp {
        Vec::new()
    } else if requeued {
        // UDP passes no descriptors.
        super::unix::peek_queue(&f, false, false, false)?.messages
    } else if p.revents & libc::POLLIN != 0 {
        return Err(format!(
            "datagrams wait on a {what} socket; torpor cannot queue them again"
        ));
    } else {
        Vec::new()
    };
    let peer = name(&f, true).map_err(io)?;
    if !queue.is_empty() && !peer.is_empty() {
        return Err(format!(
            "{} datagram(s) wait on a connected UDP socket; torpor cannot queue them again from its peer",
            queue.len()
        ));
    }
    Ok(InetSocket {
        family,
        sock_type,
        protocol,
        local,
        peer,
        listening: tcp && tcp_state == TCP_LISTEN,
        backlog,
        tcp_state,
        v6only,
        opts: collect_opts(&f, tcp).map_err(io)?,
        dropped,
        error_pending: p.revents & libc::POLLERR != 0,
        queue,
    })
}

fn bind(fd: i32, s: &InetSocket) -> Result<(), std::io::Error> {
    let len: libc::socklen_t = conv::fit(s.local.len(), "socklen_t", "local address length")?;
    // SAFETY: bind reads `len` bytes of the saved address.
    let r = unsafe { libc::bind(fd, s.local.as_ptr().cast(), len) };
    if r == 0 {
        return Ok(());
    }
    let e = last_os();
    if e.raw_os_error() != Some(libc::EADDRINUSE)
        || s.opts.reuseaddr
        || s.sock_type != libc::SOCK_STREAM
    {
        return Err(e);
    }
    // Connections of the dumped tree linger in TIME_WAIT on the port;
    // SO_REUSEADDR lets a listener past them and is cleared again.
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    // SAFETY: as above.
    let r = unsafe { libc::bind(fd, s.local.as_ptr().cast(), len) };
    let e = last_os();
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 0)?;
    if r < 0 {
        return Err(e);
    }
    Ok(())
}

/// Sends the saved datagrams to the new socket's address from a throw-away
/// socket (a connected socket only takes datagrams from its peer: those
/// are refused at the dump as undeliverable).
fn requeue(s: &InetSocket) -> Result<(), std::io::Error> {
    let tmp = new_socket(s)?;
    let len: libc::socklen_t = conv::fit(s.local.len(), "socklen_t", "local address length")?;
    for m in &s.queue {
        // SAFETY: sendto reads our buffer and the saved address.
        let n = unsafe {
            libc::sendto(
                tmp.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                0,
                s.local.as_ptr().cast(),
                len,
            )
        };
        if n < 0 || n.unsigned_abs() != m.len() {
            return Err(std::io::Error::other(format!(
                "re-queueing a datagram of {} bytes: {}",
                m.len(),
                last_os()
            )));
        }
    }
    Ok(())
}

fn new_socket(s: &InetSocket) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: socket takes integers only.
    owned(libc::c_long::from(unsafe {
        libc::socket(s.family, s.sock_type | libc::SOCK_CLOEXEC, s.protocol)
    }))
}

/// A TCP socket whose connection its peer reset: connected over loopback
/// to a throw-away listener whose accepted end closes with a zero linger.
fn reset_connection(s: &InetSocket) -> Result<OwnedFd, std::io::Error> {
    let lst = new_socket(s)?;
    // Loopback of the family, port 0: the kernel picks one.
    let mut addr = [0u8; 28];
    let len = if s.family == libc::AF_INET6 {
        // AF_INET6 is 10.
        addr[..2].copy_from_slice(&u16::try_from(libc::AF_INET6).unwrap_or(10).to_ne_bytes());
        addr[23] = 1; // ::1
        28
    } else {
        // AF_INET is 2.
        addr[..2].copy_from_slice(&u16::try_from(libc::AF_INET).unwrap_or(2).to_ne_bytes());
        addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
        16
    };
    // 16 or 28.
    let len = libc::socklen_t::try_from(len).unwrap_or(0);
    // SAFETY: bind on our socket with a local address buffer of `len` bytes.
    if unsafe { libc::bind(lst.as_raw_fd(), addr.as_ptr().cast(), len) } < 0
        // SAFETY: listen on our own socket, integer arguments.
        || unsafe { libc::listen(lst.as_raw_fd(), 1) } < 0
    {
        return Err(last_os());
    }
    let bound = name(&lst, false)?;
    let c = new_socket(s)?;
    let blen: libc::socklen_t = conv::fit(bound.len(), "socklen_t", "bound address length")?;
    // SAFETY: connect reads `blen` bytes of `bound`.
    if unsafe { libc::connect(c.as_raw_fd(), bound.as_ptr().cast(), blen) } < 0 {
        return Err(last_os());
    }
    // SAFETY: accept with no address wanted.
    let a = owned(libc::c_long::from(unsafe {
        libc::accept(lst.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut())
    }))?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one linger.
    if unsafe {
        libc::setsockopt(
            a.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            socklen::<libc::linger>(),
        )
    } < 0
    {
        return Err(last_os());
    }
    drop(a);
    drop(lst);
    // The reset travels through loopback synchronously, but wait until it
    // is seen rather than rely on that (poll, not SO_ERROR, which would
    // consume the ECONNRESET the app is to read).
    for _ in 0..100 {
        if pending_error(&c) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(c)
}

/// Whether a read would report an error or EOF now (the reset arrived).
fn pending_error(f: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, no wait.
    let n = unsafe { libc::poll(&raw mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP) != 0
}

pub(super) fn open(
    s: &InetSocket,
    nonblock: bool,
    extra: &[crate::image::records::RawSockOpt],
) -> Result<i32, std::io::Error> {
    let tcp = s.protocol == libc::IPPROTO_TCP;
    let f = if tcp && !s.listening && (!s.peer.is_empty() || s.dropped) {
        let c = reset_connection(s)?;
        super::sockopt::apply(c.as_raw_fd(), extra)?;
        if s.dropped && !s.error_pending {
            // The app had already read the reset; only EOF and EPIPE remain.
            get_int(&c, libc::SOL_SOCKET, libc::SO_ERROR)?;
        }
        c
    } else {
        let f = new_socket(s)?;
        // Before the bind, which IP_FREEBIND, IP_TRANSPARENT or
        // SO_BINDTODEVICE may change.
        super::sockopt::apply(f.as_raw_fd(), extra)?;
        if s.v6only {
            set_int(f.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        if s.opts.reuseaddr {
            set_int(f.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        if s.opts.reuseport {
            set_int(f.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        if !s.local.is_empty() {
            bind(f.as_raw_fd(), s).map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding port {}: {e}", port(&s.local)))
            })?;
        }
        if s.listening {
            // listen(2) caps the backlog at net.core.somaxconn: any larger
            // one means the same.
            let backlog = i32::try_from(s.backlog).unwrap_or(i32::MAX);
            // SAFETY: listen takes integers.
            if unsafe { libc::listen(f.as_raw_fd(), backlog) } < 0 {
                return Err(last_os());
            }
        } else if !s.peer.is_empty() {
            let len: libc::socklen_t = conv::fit(s.peer.len(), "socklen_t", "peer address length")?;
            // SAFETY: connect reads `len` bytes of the saved address.
            if unsafe { libc::connect(f.as_raw_fd(), s.peer.as_ptr().cast(), len) } < 0 {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("connecting to port {}: {e}", port(&s.peer)),
                ));
            }
        }
        if !s.queue.is_empty() {
            requeue(s)?;
        }
        f
    };
    apply_opts(f.as_raw_fd(), &s.opts, tcp)?;
    if nonblock {
        // SAFETY: F_SETFL on our fd.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(last_os());
        }
    }
    Ok(into_raw(f))
}

impl super::AnonKind for InetSocket {
    const NAME: &'static str = "an internet socket";
    const CLAIM: super::Claim = super::Claim::Socket(&[libc::AF_INET, libc::AF_INET6]);

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let family = p.socket.map_or(libc::AF_UNSPEC, |(_, family)| family);
        collect(p.pid, p.fd, family).map_err(|e| p.unsupported(format!("an internet socket: {e}")))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock(), cx.sock_opts)?)
    }
}

//! UNIX domain sockets. Peers are paired by inode through sock_diag
//! (`NETLINK_SOCK_DIAG`, `UNIX_DIAG_PEER`); the receive queue is read
//! without taking it, through a duplicate of the fd (pidfd_getfd) with
//! `MSG_PEEK` and `SO_PEEK_OFF`, one message per read. A restore creates a
//! connected pair with socketpair(2) and lets each end send the other's
//! queue; listeners and bound datagram sockets are bound again (a stale
//! socket file of the same path removed first) and a datagram socket's
//! queue is sent to it from an unnamed socket. The connections waiting on
//! a listener are listed by client (`UNIX_DIAG_ICONS`); a restore connects
//! those clients again, in order, once every listener listens
//! ([`Pending::connect_waiting`]). Descriptors in flight are sent again
//! once every description is open ([`Pending::pass`]), and messages with
//! their senders' credentials (`SCM_CREDENTIALS`, peeked with
//! `SO_PASSCRED` on for the read) once the tree's processes exist.
//!
//! Unsafe code: UNIX sockets are made, bound, connected and peeked through
//! libc, walking the control messages the kernel writes (fds in flight).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use super::sock::{apply_opts, collect_opts, get_int, set_int, sock_name, sockaddr_un, un_name};
use super::{dup_from, into_raw, last_os, owned};
use crate::image::records::{RawPath, UnixSocket};

/// The most queued bytes one socket may hold in an image (its record is
/// bounded).
pub const QUEUE_LIMIT: usize = 60 * 1024;
/// The most queued messages one socket may hold in an image.
const MESSAGE_LIMIT: usize = 4096;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const TCP_LISTEN: u8 = 10;

/// What sock_diag tells of one socket.
#[derive(Default)]
struct Diag {
    state: u8,
    peer: u64,
    /// Listener: connections waiting to be accepted, and the backlog limit;
    /// another socket: the bytes in its receive queue and its send buffer.
    waiting: u32,
    backlog: u32,
    shutdown: u8,
    /// Listener: the inode of the client of each connection waiting to be
    /// accepted, in the order `accept` takes them (0: a client closed).
    icons: Vec<u64>,
}

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
    let ino = u32::try_from(inode).map_err(|_| format!("socket inode {inode} beyond 32 bits"))?;
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(
        &u16::try_from(libc::NLM_F_REQUEST)
            // NLM_F_REQUEST is 1.
            .unwrap_or(1)
            .to_ne_bytes(),
    );
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // AF_UNIX is 1.
    req.extend_from_slice(&[u8::try_from(libc::AF_UNIX).unwrap_or(1), 0, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&(UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN).to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    // SAFETY: sending our buffer to the kernel.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(format!("sock_diag request: {}", last_os()));
    }
    let mut buf = [0u8; 8192];
    // SAFETY: receiving into our buffer.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = usize::try_from(n).map_err(|_| format!("sock_diag reply: {}", last_os()))?;
    let msg = &buf[..n];
    let u16_at = |b: &[u8], o: usize| b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let ty = u16_at(msg, 4).ok_or("short sock_diag reply")?;
    if i32::from(ty) == libc::NLMSG_ERROR {
        let err = u32_at(msg, 16).ok_or("short sock_diag error reply")?;
        let why = std::io::Error::from_raw_os_error(crate::arch::Bits::bits(err).saturating_neg());
        return Err(format!(
            "sock_diag of socket:[{inode}]: {why} (is the kernel's unix_diag available?)"
        ));
    }
    let total = (u32_at(msg, 0).ok_or("short sock_diag reply")? as usize).min(n);
    let mut d = Diag {
        state: *msg.get(18).ok_or("short sock_diag reply")?,
        ..Diag::default()
    };
    // rtattrs after nlmsghdr (16) + unix_diag_msg (16).
    const SHORT_ATTR: &str = "short sock_diag attribute";
    let mut o = 32;
    while o + 4 <= total {
        // o + 4 <= total <= the reply's length: both are there.
        let len = usize::from(u16_at(msg, o).unwrap_or(0));
        let at = u16_at(msg, o + 2).unwrap_or(0);
        if len < 4 {
            break;
        }
        match at {
            UNIX_DIAG_PEER => d.peer = u64::from(u32_at(msg, o + 4).ok_or(SHORT_ATTR)?),
            UNIX_DIAG_RQLEN => {
                d.waiting = u32_at(msg, o + 4).ok_or(SHORT_ATTR)?;
                d.backlog = u32_at(msg, o + 8).ok_or(SHORT_ATTR)?;
            }
            UNIX_DIAG_SHUTDOWN => d.shutdown = *msg.get(o + 4).ok_or(SHORT_ATTR)?,
            UNIX_DIAG_ICONS => {
                let mut at = o + 4;
                while at + 4 <= o + len {
                    d.icons.push(u64::from(u32_at(msg, at).ok_or(SHORT_ATTR)?));
                    at += 4;
                }
            }
            _ => {}
        }
        o += (len + 3) & !3;
    }
    Ok(d)
}

/// The messages waiting in a socket's receive queue, left in place, and the
/// descriptors and credentials some of them carry.
#[derive(Debug, Default)]
pub struct Queue {
    pub messages: Vec<Vec<u8>>,
    /// (message index, the descriptors it passes, now held by torpor).
    pub rights: Passed,
    /// The credentials the kernel recorded for each message sent with
    /// some.
    pub creds: Vec<SentBy>,
}

/// The credentials of queued message `message` (`SCM_CREDENTIALS`): the
/// sender's pid, uid and gid when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBy {
    pub message: u32,
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// The uid and gid the kernel shows for none (`/proc/sys/kernel/overflowuid`
/// and `overflowgid`, 65534 unless changed): a message sent while neither
/// end had `SO_PASSCRED` carries no credentials and reads as pid 0 with
/// those.
fn overflow_ids() -> (u32, u32) {
    let read = |what: &str, or: u32| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{what}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(or)
    };
    (read("overflowuid", 65534), read("overflowgid", 65534))
}

/// The credentials of an `SCM_CREDENTIALS` control message, `None` when
/// the kernel recorded none at the send.
///
/// # Safety
/// `c` must be a control message header the kernel wrote into a buffer that
/// is still alive, of level `SOL_SOCKET` and type `SCM_CREDENTIALS`.
unsafe fn read_creds(
    c: *const libc::cmsghdr,
    message: u32,
    overflow: (u32, u32),
) -> Result<Option<SentBy>, String> {
    // SAFETY: the caller's header; CMSG_LEN only computes.
    let (data, len, want) = unsafe {
        (
            libc::CMSG_DATA(c).cast::<libc::ucred>(),
            (*c).cmsg_len,
            // A ucred is 12 bytes.
            libc::CMSG_LEN(12),
        )
    };
    #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
    if (len as usize) < want as usize {
        return Err(format!("message {message} has short credentials"));
    }
    // SAFETY: the header holds a whole ucred (checked above), read
    // unaligned as the buffer promises no alignment.
    let u = unsafe { data.read_unaligned() };
    if u.pid == 0 {
        if (u.uid, u.gid) == overflow {
            return Ok(None);
        }
        return Err(format!(
            "message {message} was sent by uid {} gid {} from a process torpor cannot see (pid 0: in another pid namespace)",
            u.uid, u.gid
        ));
    }
    Ok(Some(SentBy {
        message,
        pid: u.pid,
        uid: u.uid,
        gid: u.gid,
    }))
}

/// The fds of an `SCM_RIGHTS` control message, owned from here on.
///
/// # Safety
/// `c` must be a control message header the kernel wrote into a buffer that
/// is still alive, of level `SOL_SOCKET` and type `SCM_RIGHTS`.
unsafe fn take_rights(c: *const libc::cmsghdr) -> Vec<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: the caller's header; CMSG_LEN only computes.
    let (data, len, head) = unsafe {
        (
            libc::CMSG_DATA(c).cast::<i32>(),
            (*c).cmsg_len,
            libc::CMSG_LEN(0),
        )
    };
    #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
    let count = (len as usize).saturating_sub(head as usize) / 4;
    (0..count)
        // SAFETY: the message's data holds `count` fds, just installed in
        // torpor and owned by nothing else; read unaligned as the buffer
        // promises no alignment.
        .map(|i| unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) })
        .collect()
}

/// Every message waiting in the socket's receive queue, left in place, and
/// the descriptors in flight with them (`SCM_RIGHTS`) and their senders'
/// credentials (`SCM_CREDENTIALS`): `SO_PASSCRED` is set for the peek
/// when the app had it off, so the kernel shows them (a stream socket then
/// never joins bytes of different senders in one read), and put back
/// after. `unix`: a UNIX socket (only those carry credentials; another
/// socket has no `SO_PASSCRED`).
pub(super) fn peek_queue(
    f: &OwnedFd,
    stream: bool,
    eof: bool,
    unix: bool,
) -> Result<Queue, String> {
    let fd = f.as_raw_fd();
    let old_off =
        get_int(f, libc::SOL_SOCKET, libc::SO_PEEK_OFF).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    let old_cred = if unix {
        get_int(f, libc::SOL_SOCKET, libc::SO_PASSCRED).map_err(|e| format!("SO_PASSCRED: {e}"))?
    } else {
        1
    };
    if old_cred == 0 {
        set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
            .map_err(|e| format!("SO_PASSCRED: {e}"))?;
    }
    let result = peek_messages(fd, stream, eof);
    // The peek offset and SO_PASSCRED are socket state: put them back as
    // the app had them.
    if old_cred == 0 {
        set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 0)
            .map_err(|e| format!("SO_PASSCRED: {e}"))?;
    }
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old_off)
        .map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    result
}

fn peek_messages(fd: i32, stream: bool, eof: bool) -> Result<Queue, String> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).map_err(|e| format!("SO_PEEK_OFF: {e}"))?;
    let overflow = overflow_ids();
    let mut out = Queue::default();
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let result = loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for the kernel's SCM_MAX_FD (253) fds of one message and
        // its credentials.
        let mut cbuf = [0u64; 136];
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut m: libc::msghdr = unsafe { core::mem::zeroed() };
        m.msg_iov = &raw mut iov;
        m.msg_iovlen = 1;
        m.msg_control = cbuf.as_mut_ptr().cast();
        // size_t in glibc's msghdr, socklen_t in musl's; 1088 fits either.
        #[allow(clippy::cast_possible_truncation)]
        let controllen = core::mem::size_of_val(&cbuf) as _;
        m.msg_controllen = controllen;
        // SAFETY: recvmsg fills our iovec and control buffer.
        let n = unsafe {
            libc::recvmsg(
                fd,
                &raw mut m,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = last_os();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                break Ok(());
            }
            break Err(format!("peeking the queue: {e}"));
        }
        if n == 0 && (stream || eof) {
            // At EOF after a shutdown a read returns 0 for ever.
            break Ok(());
        }
        if out.messages.len() >= MESSAGE_LIMIT {
            break Err(format!("more than {MESSAGE_LIMIT} messages are queued"));
        }
        let mut passed = Vec::new();
        let mut sent_by = Ok(None);
        // Bounded by MESSAGE_LIMIT above.
        #[allow(clippy::cast_possible_truncation)]
        let index = out.messages.len() as u32;
        // SAFETY: walking the control messages the kernel just wrote.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const m) };
        while !c.is_null() {
            // SAFETY: `c` points into `cbuf`, as CMSG_FIRSTHDR/NXTHDR guarantee.
            let (level, ty) = unsafe { ((*c).cmsg_level, (*c).cmsg_type) };
            if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
                // SAFETY: an SCM_RIGHTS header the kernel wrote into `cbuf`.
                passed.extend(unsafe { take_rights(c) });
            }
            if level == libc::SOL_SOCKET && ty == libc::SCM_CREDENTIALS {
                // SAFETY: an SCM_CREDENTIALS header the kernel wrote into
                // `cbuf`.
                sent_by = unsafe { read_creds(c, index, overflow) };
            }
            // SAFETY: as above.
            c = unsafe { libc::CMSG_NXTHDR(&raw const m, c) };
        }
        if m.msg_flags & libc::MSG_CTRUNC != 0 {
            break Err("a queued message passes more descriptors than torpor reads".into());
        }
        if m.msg_flags & libc::MSG_TRUNC != 0 {
            break Err("a queued message is larger than 256 KiB".into());
        }
        let n = n.unsigned_abs();
        total += n;
        if total > QUEUE_LIMIT {
            break Err(format!(
                "{total} bytes or more are queued (torpor keeps up to {QUEUE_LIMIT})"
            ));
        }
        match sent_by {
            Ok(Some(by)) => out.creds.push(by),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if !passed.is_empty() {
            out.rights.push((index, passed));
        }
        out.messages.push(buf[..n].to_vec());
    };
    result.map(|()| out)
}

/// A socket name as messages show it: an abstract name as `@name`.
pub fn shown(name: &[u8]) -> String {
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

/// The socket's name, or its peer's; `None` when it has no peer.
fn name_of(f: &OwnedFd, peer: bool) -> Result<Option<Vec<u8>>, std::io::Error> {
    Ok(sock_name(f, peer)?.map(|raw| un_name(&raw)))
}

/// (message index, the descriptors it passes, held by torpor).
pub type Passed = Vec<(u32, Vec<OwnedFd>)>;

/// The descriptors in flight in the queue of the socket collected last,
/// and the clients of the connections waiting on it when it is a listener,
/// until the file table knows which description that socket is.
#[derive(Debug, Default)]
pub struct InFlight(
    std::cell::RefCell<Passed>,
    std::cell::RefCell<Vec<u64>>,
    std::cell::RefCell<Vec<SentBy>>,
);

impl InFlight {
    /// (message index, descriptors) of the socket collected last.
    pub fn take(&self) -> Passed {
        std::mem::take(&mut *self.0.borrow_mut())
    }

    /// The inodes of the clients waiting to be accepted by the listener
    /// collected last, in the order `accept` takes them.
    pub fn take_waiting(&self) -> Vec<u64> {
        std::mem::take(&mut *self.1.borrow_mut())
    }

    /// The credentials of the queued messages of the socket collected
    /// last that were sent with some.
    pub fn take_creds(&self) -> Vec<SentBy> {
        std::mem::take(&mut *self.2.borrow_mut())
    }
}

/// The most connections waiting on one listener an image keeps.
pub const WAITING_LIMIT: usize = 1024;

/// A listener's waiting connections: the inode of each client, in the
/// order `accept` takes them. One whose client has sent bytes (queued in
/// the connection's unaccepted socket, which only an `accept` can read) or
/// closed is refused.
fn waiting_clients(name: &[u8], d: &Diag) -> Result<Vec<u64>, String> {
    let name = shown(name);
    if d.icons.len() != d.waiting as usize {
        return Err(format!(
            "listener {name} has {} connection(s) waiting to be accepted, of which sock_diag lists {}",
            d.waiting,
            d.icons.len()
        ));
    }
    if d.icons.len() > WAITING_LIMIT {
        return Err(format!(
            "listener {name} has {} connections waiting to be accepted (torpor keeps up to {WAITING_LIMIT})",
            d.icons.len()
        ));
    }
    for &client in &d.icons {
        if client == 0 {
            return Err(format!(
                "listener {name} has a connection waiting to be accepted whose client has closed it, which torpor cannot keep"
            ));
        }
        // What the client sent waits in the unaccepted socket, which
        // sock_diag does not show: the client's send buffer holds it (its
        // bytes with the kernel's overhead).
        let c = diag(client)?;
        if c.backlog > 0 {
            return Err(format!(
                "listener {name} has a connection waiting to be accepted whose client socket:[{client}] has sent data (its send buffer holds {} bytes with the kernel's overhead), which torpor cannot read without accepting the connection",
                c.backlog
            ));
        }
    }
    Ok(d.icons.clone())
}

pub(super) fn collect(
    pid: i32,
    fd: i32,
    inode: u64,
) -> Result<(UnixSocket, Queue, Vec<u64>), String> {
    let f = dup_from(pid, fd).map_err(|e| format!("duplicating the fd: {e}"))?;
    let io = |e: std::io::Error| e.to_string();
    let sock_type = get_int(&f, libc::SOL_SOCKET, libc::SO_TYPE).map_err(io)?;
    let d = diag(inode)?;
    let name = name_of(&f, false).map_err(io)?.unwrap_or_default();
    let peer_name = name_of(&f, true).map_err(io)?;
    // A peer, even a closed or unnamed one (socketpair), is a connection.
    let connected = peer_name.is_some() || d.peer != 0;
    let peer_name = peer_name.unwrap_or_default();
    let mut bind_path = name.clone();
    if !name.is_empty() && name[0] != 0 && name[0] != b'/' {
        // Bound by a relative path: it meant the cwd of the time.
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(io)?;
        use std::os::unix::ffi::OsStrExt;
        let mut abs = cwd.as_os_str().as_bytes().to_vec();
        abs.push(b'/');
        abs.extend_from_slice(&name);
        bind_path = abs;
    }
    let listening = d.state == TCP_LISTEN;
    let mut queue = if listening {
        if d.peer != 0 {
            return Err("listener with a peer".into());
        }
        Queue::default()
    } else {
        peek_queue(
            &f,
            sock_type == libc::SOCK_STREAM,
            d.shutdown & 1 != 0,
            true,
        )?
    };
    let waiting = if listening && d.waiting > 0 {
        waiting_clients(&name, &d)?
    } else {
        Vec::new()
    };
    let socket = UnixSocket {
        sock_type,
        inode,
        peer: d.peer,
        connected,
        listening,
        backlog: d.backlog,
        name: RawPath(name),
        bind_path: RawPath(bind_path),
        peer_name: RawPath(peer_name),
        shutdown: d.shutdown,
        queue: std::mem::take(&mut queue.messages),
        opts: collect_opts(&f, false).map_err(io)?,
    };
    Ok((socket, queue, waiting))
}

/// One end of a pair created for the first of two peers, kept until the
/// second is opened: (this end in torpor, a duplicate of the first peer's
/// end, the first peer's shutdown bits, whether the first peer's queue
/// waits for [`Pending::pass`]).
///
/// A queue with descriptors in flight is sent once every description of
/// the tree is open, with the pair's shutdowns after it.
#[derive(Debug, Default)]
pub struct Pending {
    ends: BTreeMap<u64, (OwnedFd, OwnedFd, u8, bool)>,
    later: Vec<Later>,
    /// The clients of connections waiting on a listener, by open file
    /// index, not connected yet.
    clients: BTreeMap<u32, OwnedFd>,
}

/// What waits until every description of the tree is open.
#[derive(Debug)]
enum Later {
    /// Send `queue` through `fd`, message `i` passing the descriptions
    /// `rights[i]` names (indices into the restored files).
    Send {
        fd: OwnedFd,
        /// The socket the queue is sent to.
        rx: OwnedFd,
        queue: Vec<Vec<u8>>,
        rights: BTreeMap<u32, Vec<u32>>,
        creds: BTreeMap<u32, libc::ucred>,
    },
    Shut {
        fd: OwnedFd,
        bits: u8,
        peer_bits: u8,
    },
}

impl Pending {
    /// Connects the clients of the connections waiting on each listener,
    /// once every description is open (every listener listens): in the
    /// order `accept` took them, each to its listener's name, where they
    /// wait again.
    pub fn connect_waiting(
        &mut self,
        waiting: &[crate::engine::state::Waiting],
        files: &[crate::engine::state::OpenFile],
    ) -> Result<(), std::io::Error> {
        for w in waiting {
            let Some(crate::engine::state::FileKind::Unix(l)) =
                files.get(w.listener as usize).map(|f| &f.kind)
            else {
                return Err(std::io::Error::other(format!(
                    "file {} is no UNIX listener",
                    w.listener
                )));
            };
            let (a, len) = sockaddr_un(l.bind_path.as_bytes())?;
            for c in &w.clients {
                let fd = self.clients.remove(c).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "the client (file {c}) of a connection waiting on {} was not opened",
                        l.bind_path
                    ))
                })?;
                // SAFETY: connect reads `len` bytes of `a`.
                if unsafe { libc::connect(fd.as_raw_fd(), (&raw const a).cast(), len) } < 0 {
                    let e = last_os();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("connecting a waiting client again to {}: {e}", l.bind_path),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether a queue waiting names senders of the tree in its messages'
    /// credentials: sent once the tree's processes exist, as the kernel
    /// takes credentials only of a process there is.
    pub fn sends_as_tasks(&self) -> bool {
        self.later
            .iter()
            .any(|l| matches!(l, Later::Send { creds, .. } if !creds.is_empty()))
    }

    /// Sends the queues that pass descriptors or credentials, then the
    /// shutdowns that waited for them; `fds[i]` is torpor's descriptor of
    /// restored file i.
    pub fn pass(&mut self, fds: &[i32]) -> Result<(), std::io::Error> {
        for l in std::mem::take(&mut self.later) {
            match l {
                Later::Send {
                    fd,
                    rx,
                    queue,
                    rights,
                    creds,
                } => {
                    let quiet = Quiet::new(&[&fd, &rx])?;
                    for (i, m) in (0u32..).zip(&queue) {
                        let passed = rights
                            .get(&i)
                            .map(|files| {
                                files
                                    .iter()
                                    .map(|&f| {
                                        fds.get(f as usize).copied().ok_or_else(|| {
                                            std::io::Error::other(format!(
                                                "a queued message passes file {f}, which the restore did not open"
                                            ))
                                        })
                                    })
                                    .collect::<Result<Vec<i32>, _>>()
                            })
                            .transpose()?
                            .unwrap_or_default();
                        send_one(fd.as_raw_fd(), m, &passed, creds.get(&i))?;
                    }
                    quiet.restore()?;
                }
                Later::Shut {
                    fd,
                    bits,
                    peer_bits,
                } => shut(fd.as_raw_fd(), bits, peer_bits)?,
            }
        }
        Ok(())
    }
}

/// Sends one message, passing `fds` with it when there are any, and the
/// credentials `creds` when given (`SCM_CREDENTIALS`: torpor, root, may
/// name any process there is and any uid and gid).
fn send_one(
    fd: i32,
    m: &[u8],
    fds: &[i32],
    creds: Option<&libc::ucred>,
) -> Result<(), std::io::Error> {
    if fds.is_empty() && creds.is_none() {
        // SAFETY: sending our buffer.
        let n = unsafe {
            libc::send(
                fd,
                m.as_ptr().cast(),
                m.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 || n.unsigned_abs() != m.len() {
            return Err(std::io::Error::other(format!(
                "re-queueing {} bytes: {}",
                m.len(),
                last_os()
            )));
        }
        return Ok(());
    }
    let mut iov = libc::iovec {
        iov_base: m.as_ptr().cast_mut().cast(),
        iov_len: m.len(),
    };
    let mut cbuf = [0u64; 136];
    let bytes = core::mem::size_of_val(fds);
    let cred_bytes = core::mem::size_of::<libc::ucred>();
    // SAFETY: CMSG_SPACE only computes.
    let (fd_space, cred_space) = unsafe {
        (
            if fds.is_empty() {
                0
            } else {
                libc::CMSG_SPACE(u32::try_from(bytes).map_err(std::io::Error::other)?)
            },
            if creds.is_some() {
                libc::CMSG_SPACE(u32::try_from(cred_bytes).map_err(std::io::Error::other)?)
            } else {
                0
            },
        )
    };
    let space = fd_space + cred_space;
    if space as usize > core::mem::size_of_val(&cbuf) {
        return Err(std::io::Error::other(format!(
            "a queued message passes {} descriptors",
            fds.len()
        )));
    }
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // size_t in glibc's msghdr, socklen_t in musl's; at most 1088.
    #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
    {
        msg.msg_controllen = space as _;
    }
    // SAFETY: the control buffer has room for the headers of `space`
    // bytes (checked above), the descriptors' first, the credentials'
    // after; their data is written unaligned, byte for byte.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        if !fds.is_empty() {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
            {
                (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            }
            let data = libc::CMSG_DATA(c);
            for (i, f) in fds.iter().enumerate() {
                data.add(i * 4).cast::<i32>().write_unaligned(*f);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
        if let Some(u) = creds {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_CREDENTIALS;
            #[allow(clippy::cast_possible_truncation, clippy::unnecessary_cast)]
            {
                (*c).cmsg_len = libc::CMSG_LEN(cred_bytes as u32) as _;
            }
            libc::CMSG_DATA(c).cast::<libc::ucred>().write_unaligned(*u);
        }
    }
    // SAFETY: sendmsg reads our iovec and control buffer.
    let n = unsafe { libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 || n.unsigned_abs() != m.len() {
        return Err(std::io::Error::other(match creds {
            Some(u) => format!(
                "re-queueing {} bytes with {} descriptors as sent by process {} (uid {}, gid {}): {}",
                m.len(),
                fds.len(),
                u.pid,
                u.uid,
                u.gid,
                last_os()
            ),
            None => format!(
                "re-queueing {} bytes with {} descriptors: {}",
                m.len(),
                fds.len(),
                last_os()
            ),
        }));
    }
    Ok(())
}

/// `SO_PASSCRED` cleared on both ends of a send while a queue is sent
/// again: the kernel then adds no credentials of its own (torpor's) to a
/// message sent without, which reads as sent with none, as at the dump; a
/// message with recorded credentials names them itself. [`Quiet::restore`]
/// puts the option back.
struct Quiet(Vec<(i32, i32)>);

impl Quiet {
    fn new(fds: &[&OwnedFd]) -> Result<Self, std::io::Error> {
        let mut had = Vec::new();
        for f in fds {
            let v = get_int(f, libc::SOL_SOCKET, libc::SO_PASSCRED)?;
            if v != 0 {
                set_int(f.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 0)?;
                had.push((f.as_raw_fd(), v));
            }
        }
        Ok(Quiet(had))
    }

    fn restore(self) -> Result<(), std::io::Error> {
        for &(fd, v) in &self.0 {
            set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, v)?;
        }
        Ok(())
    }
}

/// A duplicate of a descriptor of torpor's, close-on-exec.
fn dup(f: &OwnedFd) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: duplicating our own fd.
    owned(libc::c_long::from(unsafe {
        libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)
    }))
}

fn send_all(fd: i32, queue: &[Vec<u8>]) -> Result<(), std::io::Error> {
    queue.iter().try_for_each(|m| send_one(fd, m, &[], None))
}

fn shut(fd: i32, bits: u8, peer_bits: u8) -> Result<(), std::io::Error> {
    // A receive side shut only by the peer's send shutdown follows from it.
    // SAFETY: shutdown takes integers.
    if bits & 2 != 0 && unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
        return Err(last_os());
    }
    // SAFETY: shutdown takes integers.
    if bits & 1 != 0 && peer_bits & 2 == 0 && unsafe { libc::shutdown(fd, libc::SHUT_RD) } < 0 {
        return Err(last_os());
    }
    Ok(())
}

fn new_socket(s: &UnixSocket) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: socket takes integers only.
    owned(libc::c_long::from(unsafe {
        libc::socket(libc::AF_UNIX, s.sock_type | libc::SOCK_CLOEXEC, 0)
    }))
}

fn bind(fd: i32, s: &UnixSocket) -> Result<(), std::io::Error> {
    let path = s.bind_path.as_bytes();
    if path.first() != Some(&0) {
        // The socket file of the dumped socket outlives it; only a socket
        // file is ever removed.
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::FileTypeExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(p)?;
        }
    }
    let (a, len) = sockaddr_un(path)?;
    // SAFETY: bind reads `len` bytes of `a`.
    if unsafe { libc::bind(fd, (&raw const a).cast(), len) } < 0 {
        let e = last_os();
        return Err(std::io::Error::new(
            e.kind(),
            format!("binding {}: {e}", s.bind_path),
        ));
    }
    Ok(())
}

/// `waits`: the open file index of a client of a connection waiting on a
/// listener, which [`Pending::connect_waiting`] connects later.
pub(super) fn open(
    s: &UnixSocket,
    nonblock: bool,
    pending: &mut Pending,
    rights: BTreeMap<u32, Vec<u32>>,
    creds: BTreeMap<u32, libc::ucred>,
    extra: &[crate::image::records::RawSockOpt],
    waits: Option<u32>,
) -> Result<i32, std::io::Error> {
    let passes = !rights.is_empty() || !creds.is_empty();
    let mut later = Some((rights, creds));
    // Sends this socket's queue through `to`: now, or once every
    // description is open when it passes some, or once the tree's
    // processes exist when it names senders.
    let mut fill =
        |pending: &mut Pending, to: &OwnedFd, rx: &OwnedFd| -> Result<(), std::io::Error> {
            match later.take() {
                Some((rights, creds)) if !rights.is_empty() || !creds.is_empty() => {
                    pending.later.push(Later::Send {
                        fd: dup(to)?,
                        rx: dup(rx)?,
                        queue: s.queue.clone(),
                        rights,
                        creds,
                    });
                    Ok(())
                }
                _ if s.queue.is_empty() => Ok(()),
                _ => {
                    let quiet = Quiet::new(&[to, rx])?;
                    send_all(to.as_raw_fd(), &s.queue)?;
                    quiet.restore()
                }
            }
        };
    let f = if s.peer != 0 || (s.connected && s.peer_name.as_bytes().is_empty()) {
        // A pair: both ends in the tree, or the peer closed.
        if let Some((mine, first, first_shut, first_later)) = pending.ends.remove(&s.inode) {
            super::sockopt::apply(mine.as_raw_fd(), extra)?;
            fill(pending, &first, &mine)?;
            if passes || first_later {
                // A shutdown would refuse the sends that wait.
                pending.later.push(Later::Shut {
                    fd: dup(&first)?,
                    bits: first_shut,
                    peer_bits: s.shutdown,
                });
                pending.later.push(Later::Shut {
                    fd: dup(&mine)?,
                    bits: s.shutdown,
                    peer_bits: first_shut,
                });
            } else {
                shut(first.as_raw_fd(), first_shut, s.shutdown)?;
                shut(mine.as_raw_fd(), s.shutdown, first_shut)?;
            }
            mine
        } else {
            let mut p = [0i32; 2];
            // SAFETY: socketpair writes two fds.
            if unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    s.sock_type | libc::SOCK_CLOEXEC,
                    0,
                    p.as_mut_ptr(),
                )
            } < 0
            {
                return Err(last_os());
            }
            let (a, b) = (
                owned(libc::c_long::from(p[0]))?,
                owned(libc::c_long::from(p[1]))?,
            );
            super::sockopt::apply(a.as_raw_fd(), extra)?;
            fill(pending, &b, &a)?;
            let a2 = dup(&a)?;
            if s.peer != 0 {
                pending.ends.insert(s.peer, (b, a2, s.shutdown, passes));
            } else {
                // The peer is gone: its end closes, as it had (after the
                // queue that waits, which holds a duplicate of it).
                shut(a.as_raw_fd(), s.shutdown, 2)?;
                drop((b, a2));
            }
            a
        }
    } else {
        let f = new_socket(s)?;
        super::sockopt::apply(f.as_raw_fd(), extra)?;
        if !s.bind_path.as_bytes().is_empty() {
            bind(f.as_raw_fd(), s)?;
        }
        if s.listening {
            // listen(2) caps the backlog at net.core.somaxconn: any larger
            // one means the same.
            let backlog = i32::try_from(s.backlog).unwrap_or(i32::MAX);
            // SAFETY: listen takes integers.
            if unsafe { libc::listen(f.as_raw_fd(), backlog) } < 0 {
                return Err(last_os());
            }
        } else if let Some(file) = waits {
            pending.clients.insert(file, dup(&f)?);
        } else if !s.peer_name.as_bytes().is_empty() {
            let (a, len) = sockaddr_un(s.peer_name.as_bytes())?;
            // SAFETY: connect reads `len` bytes of `a`.
            if unsafe { libc::connect(f.as_raw_fd(), (&raw const a).cast(), len) } < 0 {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("connecting to {}: {e}", s.peer_name),
                ));
            }
        }
        if !s.queue.is_empty() {
            if s.sock_type == libc::SOCK_STREAM || s.bind_path.as_bytes().is_empty() {
                return Err(std::io::Error::other(
                    "queued data on a socket with no peer to send it",
                ));
            }
            let tmp = new_socket(s)?;
            let (a, len) = sockaddr_un(s.bind_path.as_bytes())?;
            // SAFETY: connect reads `len` bytes of `a`.
            if unsafe { libc::connect(tmp.as_raw_fd(), (&raw const a).cast(), len) } < 0 {
                return Err(last_os());
            }
            fill(pending, &tmp, &f)?;
        }
        f
    };
    apply_opts(f.as_raw_fd(), &s.opts, false)?;
    if nonblock {
        // SAFETY: F_SETFL on our fd.
        if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(last_os());
        }
    }
    Ok(into_raw(f))
}

/// Refuses a socket connected to a peer outside the tree: the tree alone
/// cannot bring the connection back. A datagram socket connected to a named
/// socket outside is connected again by name (its `peer` is cleared).
pub(super) fn check_peer(s: &mut UnixSocket, socks: &[(u64, u64)]) -> Result<(), String> {
    if s.peer == 0 || socks.contains(&(s.peer, s.inode)) {
        return Ok(());
    }
    if socks.iter().any(|&(ino, _)| ino == s.peer) && !s.peer_name.as_bytes().is_empty() {
        // Connected to a named socket of the tree that is not connected back.
        s.peer = 0;
        return Ok(());
    }
    if s.sock_type == libc::SOCK_DGRAM && !s.peer_name.as_bytes().is_empty() {
        s.peer = 0;
        return Ok(());
    }
    if s.peer_name.as_bytes().is_empty() {
        return Err(format!(
            "its peer socket:[{}] is outside the dumped tree",
            s.peer
        ));
    }
    Err(format!(
        "it is connected to {} (socket:[{}]) outside the dumped tree",
        s.peer_name, s.peer
    ))
}

impl super::AnonKind for UnixSocket {
    const NAME: &'static str = "a UNIX socket";
    const CLAIM: super::Claim = super::Claim::Socket(&[libc::AF_UNIX]);

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let inode = p.socket.map_or(0, |(inode, _)| inode);
        let (socket, queue, waiting) = collect(p.pid, p.fd, inode)
            .map_err(|e| p.unsupported(format!("a UNIX socket: {e}")))?;
        let rights = queue.rights;
        if !queue.creds.is_empty() {
            let Some(inflight) = p.inflight else {
                return Err(p.unsupported(format!(
                    "a UNIX socket: socket:[{inode}] has messages queued with their senders' credentials (SCM_CREDENTIALS), which torpor keeps only in a dump of its tree"
                )));
            };
            *inflight.2.borrow_mut() = queue.creds;
        }
        if !waiting.is_empty() {
            let Some(inflight) = p.inflight else {
                return Err(p.unsupported(format!(
                    "a UNIX socket: listener socket:[{inode}] has connections waiting to be accepted, which torpor keeps only in a dump of its tree"
                )));
            };
            *inflight.1.borrow_mut() = waiting;
        }
        if !rights.is_empty() {
            let Some(inflight) = p.inflight else {
                return Err(p.unsupported(format!(
                    "a UNIX socket: socket:[{inode}] has file descriptors in flight (SCM_RIGHTS), which torpor keeps only in a dump of its tree"
                )));
            };
            *inflight.0.borrow_mut() = rights;
        }
        Ok(socket)
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        let nonblock = cx.nonblock();
        let rights = cx
            .rights
            .iter()
            .filter(|r| r.socket == cx.file)
            .map(|r| (r.message, r.files.clone()))
            .collect();
        let creds = cx
            .msg_creds
            .iter()
            .filter(|c| c.socket == cx.file)
            .map(|c| {
                (
                    c.message,
                    libc::ucred {
                        pid: c.pid,
                        uid: c.uid,
                        gid: c.gid,
                    },
                )
            })
            .collect();
        let waits = cx
            .waiting
            .iter()
            .any(|w| w.clients.contains(&cx.file))
            .then_some(cx.file);
        Ok(open(
            self,
            nonblock,
            cx.pending,
            rights,
            creds,
            cx.sock_opts,
            waits,
        )?)
    }
}

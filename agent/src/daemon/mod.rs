//! `torpor daemon`: the request step. Applications connect to the UNIX
//! socket and ask to hibernate or checkpoint; the daemon checks who they
//! are, hands the work to the checkpoint [`Engine`], and cuts the power.
//!
//! One thread, one `poll()` loop: the Pi Zero has one core, and requests
//! are served one at a time anyway (there is one power supply). Memory is
//! bounded: at most [`MAX_CLIENTS`] connections, one fixed-size packet
//! buffer. Malformed input gets an error reply and never disturbs the
//! other clients.
//!
//! Nobody can take the daemon from root ([`Limits`]): a user other than
//! root holds at most `access.connections_per_user` connections, and the
//! last [`ROOT_RESERVED`] are root's alone. A connection must send a
//! request within `access.idle_timeout_s` of connecting and of each reply
//! until it has been granted one (an authorized `Hibernate` or
//! `Checkpoint`, or root's `Restored`); from then on it may stay idle as
//! long as it likes, because an application keeps its connection across
//! hibernations. A refused connection is told `Busy` and kept, up to
//! [`PARKED`] of them for at most [`PARK_TIME`], until its request arrives,
//! so that the client reads the reply instead of a broken pipe.
//!
//! Hibernate, in order (any failure before the cut: an error reply, and the
//! app runs on):
//!
//! ```text
//!   authorize (SO_PEERCRED, /proc/PID/status, access.allow_users)
//!   power.prepare        the GPIO line, inactive         -> PowerFailed
//!   engine.hibernate     dump, store, verify; tree stays frozen -> DumpFailed/StoreFailed
//!   power.arm_wake       only with wake_after_s          -> PowerFailed (engine.abandon)
//!   power.cut            sync, line active, reboot(POWER_OFF) fallback
//!                                                        -> PowerFailed (engine.abandon)
//! ```

pub mod auth;
pub mod listen;
pub(crate) mod log;
pub mod store_engine;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

pub use auth::{Peer, Refusal};
pub use listen::{BindError, Listener};
pub use nix::unistd::Pid;

use crate::image::records::RequestedBy;
use crate::power::{PowerDown, PowerError};
use crate::protocol::{
    self, packet, Checkpointed, Clock, ErrorKind, ErrorReply, Reply, Request, Resumed, Status,
    StoreSummary, Target, MAX_MESSAGE,
};

/// The most connections served at once; more are refused with `Busy`.
pub const MAX_CLIENTS: usize = 32;

/// Connections only root may open: users other than root together hold at
/// most `MAX_CLIENTS - ROOT_RESERVED`.
pub const ROOT_RESERVED: usize = 4;

/// Refused connections kept until their request arrives, so that they read
/// their `Busy` reply; beyond this many the oldest is closed.
pub const PARKED: usize = 8;

/// The longest a refused connection is kept.
pub const PARK_TIME: Duration = Duration::from_secs(2);

/// How often the daemon looks for tasks a given-up freeze left seized.
const LINGER_POLL: Duration = Duration::from_millis(200);

/// Connection limits (`[access]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection not yet granted a request is closed when no request
    /// arrives within this long of connecting or of its last reply.
    pub idle_timeout: Duration,
    /// Connections one user other than root may hold at once.
    pub per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle_timeout: Duration::from_secs(crate::config::defaults::IDLE_TIMEOUT_S.into()),
            per_user: usize::try_from(crate::config::defaults::CONNECTIONS_PER_USER)
                .unwrap_or(MAX_CLIENTS),
        }
    }
}

/// An image the engine wrote and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub generation: u64,
    pub image_bytes: u64,
}

/// Why the engine could not checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("process {0} does not exist")]
    NoSuchProcess(Pid),
    #[error("checkpoint failed: {0}")]
    Dump(String),
    #[error("image store failed: {0}")]
    Store(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unsupported(String),
}

impl CheckpointError {
    /// The error kind the client is told.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CheckpointError::NoSuchProcess(_) => ErrorKind::NoSuchProcess,
            CheckpointError::Dump(_) => ErrorKind::DumpFailed,
            CheckpointError::Store(_) => ErrorKind::StoreFailed,
            CheckpointError::Busy(_) => ErrorKind::Busy,
            CheckpointError::Unsupported(_) => ErrorKind::Unsupported,
        }
    }
}

/// The checkpoint engine and image store, as the daemon drives them.
/// Requests reach it only after authorization.
pub trait Engine {
    /// Checkpoints the tree rooted at `pid` into the store and verifies the
    /// image. `conn_fd` is the daemon's end of the caller's connection: the
    /// image must bring the caller's end back as a live socket at the same
    /// fd number, which then receives `Resumed`. On `Ok` the tree stays
    /// frozen, because the power is cut next; on `Err` it runs on unharmed.
    fn hibernate(
        &mut self,
        pid: Pid,
        conn_fd: RawFd,
        wake: Option<u32>,
    ) -> Result<Stored, CheckpointError>;

    /// The power could not be cut after `hibernate` returned `generation`:
    /// invalidate that image (so the next boot does not restore a second
    /// copy of a tree that is still running) and let the tree run again.
    fn abandon(&mut self, pid: Pid, generation: u64) -> Result<(), CheckpointError>;

    /// Checkpoints the tree rooted at `pid` and lets it keep running.
    fn checkpoint(&mut self, pid: Pid, conn_fd: RawFd) -> Result<Stored, CheckpointError>;

    /// A summary of the store for `Status`.
    fn status(&mut self) -> StoreSummary;

    /// Who asks for the next `hibernate` or `checkpoint`: the image records
    /// it, and a restore then acts on files with no more than that user's
    /// rights (`docs/security.md`).
    fn requested_by(&mut self, _who: RequestedBy) {}

    /// The power came back without a reboot after `hibernate` (a simulated
    /// supply): the tree rooted at `pid` runs again.
    fn power_returned(&mut self, _pid: Pid) {}

    /// [`hibernate`](Engine::hibernate) for every managed application at
    /// once, into one image: `trees` are the roots and application names,
    /// `pid` the one whose tree holds the caller. If any tree cannot be
    /// dumped, every tree runs on and the error names that application.
    fn hibernate_all(
        &mut self,
        trees: &[(Pid, String)],
        pid: Pid,
        conn_fd: RawFd,
        wake: Option<u32>,
    ) -> Result<Stored, CheckpointError> {
        match trees {
            [(only, _)] if *only == pid => self.hibernate(pid, conn_fd, wake),
            _ => Err(CheckpointError::Unsupported(
                "this engine hibernates one tree at a time".into(),
            )),
        }
    }
}

/// What the daemon needs to know beyond its devices.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Uids from `access.allow_users`.
    pub allowed_uids: Vec<u32>,
}

/// Why the daemon stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("poll failed: {0}")]
    Poll(std::io::Error),
}

struct Conn {
    fd: OwnedFd,
    peer: Peer,
    /// When the connection is closed unless a request arrives; `None` once
    /// it has been granted a request.
    deadline: Option<Instant>,
}

/// A refused connection, told `Busy`, waiting for its request.
struct Parked {
    fd: OwnedFd,
    until: Instant,
}

/// What to do with a connection after serving it.
enum After {
    Keep,
    Close,
}

/// The daemon: a listener, its connections, an engine and a power supply.
pub struct Daemon<E, P> {
    listener: Listener,
    conns: heapless::Vec<Conn, MAX_CLIENTS>,
    parked: heapless::Vec<Parked, PARKED>,
    settings: Settings,
    limits: Limits,
    /// The request being served was authorized (or was root's `Restored`).
    granted: bool,
    engine: E,
    power: P,
    own_pid: u32,
    /// The managed applications (`[[app]]`) and the registry directory
    /// `torpor run` writes: a request from inside one of their trees
    /// hibernates them all.
    apps: Option<(Vec<crate::config::AppConfig>, std::path::PathBuf)>,
}

impl<E, P> std::fmt::Debug for Daemon<E, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("listener", &self.listener)
            .field("clients", &self.conns.len())
            .finish()
    }
}

fn error_reply(kind: ErrorKind, message: &str) -> Reply {
    Reply::Error(ErrorReply::new(kind, message))
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hibernate { .. } => "Hibernate",
        Request::Checkpoint { .. } => "Checkpoint",
        Request::Status => "Status",
        Request::Restored { .. } => "Restored",
    }
}

impl<E: Engine, P: PowerDown> Daemon<E, P> {
    pub fn new(listener: Listener, settings: Settings, engine: E, power: P) -> Self {
        Daemon {
            listener,
            conns: heapless::Vec::new(),
            parked: heapless::Vec::new(),
            settings,
            limits: Limits::default(),
            granted: false,
            engine,
            power,
            own_pid: std::process::id(),
            apps: None,
        }
    }

    /// The same daemon, managing the applications of `apps` and of the
    /// registry in `dir` (see `crate::apps`).
    #[must_use]
    pub fn with_apps(
        mut self,
        apps: Vec<crate::config::AppConfig>,
        dir: std::path::PathBuf,
    ) -> Self {
        self.apps = Some((apps, dir));
        self
    }

    /// Every running managed application, when `pid` is inside one of
    /// their trees; each must be one the caller may hibernate.
    fn managed_trees(&self, peer: Peer, pid: Pid) -> Result<Option<Vec<(Pid, String)>>, Refusal> {
        let Some((config, dir)) = &self.apps else {
            return Ok(None);
        };
        let apps = crate::apps::managed(config, dir);
        if crate::apps::owner_of(&apps, pid.as_raw()).is_none() {
            return Ok(None);
        }
        let (roots, left) = crate::apps::plan(&apps);
        for (name, why) in &left {
            log::info!("hibernate: app {name} is left out: {why}");
        }
        let mut trees = Vec::new();
        for (root, name) in roots {
            let r = u32::try_from(root).unwrap_or(0);
            let p = self
                .authorize(peer, Target::Pid(r), "hibernate")
                .map_err(|e| Refusal {
                    kind: e.kind,
                    message: format!("app {name} (pid {root}): {}", e.message),
                })?;
            trees.push((p, name));
        }
        Ok(Some(trees))
    }

    /// The same daemon with other connection limits.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    pub fn power(&self) -> &P {
        &self.power
    }

    /// Serves clients until `stop` becomes readable (a signalfd, a pipe).
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Result<(), DaemonError> {
        log::info!("serving {}", self.listener.path().display());
        const SLOTS: usize = MAX_CLIENTS + PARKED + 2;
        loop {
            let lingering = crate::engine::freeze::release_lingering() > 0;
            let timeout = self.poll_timeout(lingering);
            let ready = {
                let mut fds: heapless::Vec<PollFd<'_>, SLOTS> = heapless::Vec::new();
                let events = PollFlags::POLLIN;
                // Capacity is SLOTS: conns holds at most MAX_CLIENTS, parked PARKED.
                let _ = fds.push(PollFd::new(stop, events));
                let _ = fds.push(PollFd::new(self.listener.as_fd(), events));
                for c in &self.conns {
                    let _ = fds.push(PollFd::new(c.fd.as_fd(), events));
                }
                for p in &self.parked {
                    let _ = fds.push(PollFd::new(p.fd.as_fd(), events));
                }
                match nix::poll::poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(DaemonError::Poll(e.into())),
                }
                let mut ready = [false; SLOTS];
                for (r, fd) in ready.iter_mut().zip(&fds) {
                    *r = fd.revents().is_some_and(|e| !e.is_empty());
                }
                ready
            };
            if ready[0] {
                log::info!("stopping");
                return Ok(());
            }
            let now = Instant::now();
            // Parked connections: a request (or a hang-up) arrived, or time is up.
            let first_parked = self.conns.len() + 2;
            for i in (0..self.parked.len()).rev() {
                if ready[first_parked + i] {
                    let mut discard = [0u8; MAX_MESSAGE];
                    let _ = packet::recv_packet(self.parked[i].fd.as_fd(), &mut discard, true);
                    self.parked.swap_remove(i);
                } else if self.parked[i].until <= now {
                    self.parked.swap_remove(i);
                }
            }
            // Connections first, newest last; indexes shift on removal, so walk backwards.
            for i in (0..self.conns.len()).rev() {
                if ready[i + 2] {
                    if let After::Close = self.serve_conn(i) {
                        self.conns.swap_remove(i);
                    }
                } else if self.conns[i].deadline.is_some_and(|d| d <= now) {
                    let peer = self.conns[i].peer;
                    log::warning!(
                        "closed a connection from pid {} uid {}: no request within {} s",
                        peer.pid,
                        peer.uid,
                        self.limits.idle_timeout.as_secs_f32()
                    );
                    self.conns.swap_remove(i);
                }
            }
            if ready[1] {
                self.accept();
            }
        }
    }

    /// How long `poll` may wait: until the nearest deadline of a connection
    /// or a parked refusal, or [`LINGER_POLL`] while a freeze left tasks
    /// seized.
    fn poll_timeout(&self, lingering: bool) -> PollTimeout {
        let now = Instant::now();
        let nearest = self
            .conns
            .iter()
            .filter_map(|c| c.deadline)
            .chain(self.parked.iter().map(|p| p.until))
            .min()
            .map(|d| d.saturating_duration_since(now));
        let wait = match (nearest, lingering) {
            (Some(d), true) => Some(d.min(LINGER_POLL)),
            (Some(d), false) => Some(d),
            (None, true) => Some(LINGER_POLL),
            (None, false) => None,
        };
        match wait {
            None => PollTimeout::NONE,
            // Rounded up, so a deadline is past when poll returns.
            Some(d) => {
                let ms = d.as_millis().saturating_add(1);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        }
    }

    /// Why a connection from `peer` cannot be taken now, if it cannot.
    fn refusal(&self, peer: Peer) -> Option<String> {
        if self.conns.is_full() {
            return Some(format!(
                "the daemon already serves {MAX_CLIENTS} connections"
            ));
        }
        if peer.uid == 0 {
            return None;
        }
        let open = MAX_CLIENTS - ROOT_RESERVED;
        if self.conns.iter().filter(|c| c.peer.uid != 0).count() >= open {
            return Some(format!(
                "the daemon already serves {open} connections of users other than root; the other {ROOT_RESERVED} are kept for root"
            ));
        }
        let own = self.conns.iter().filter(|c| c.peer.uid == peer.uid).count();
        if own >= self.limits.per_user {
            return Some(format!(
                "uid {} already holds {own} connections, the most access.connections_per_user allows",
                peer.uid
            ));
        }
        None
    }

    /// Accepts every waiting connection. A failing accept (out of file
    /// descriptors, say) costs the waiting client, never the daemon.
    fn accept(&mut self) {
        loop {
            let fd = match self.listener.accept() {
                Ok(Some(fd)) => fd,
                Ok(None) => return,
                Err(e) => {
                    log::error!("accepting a connection failed: {e}");
                    // The connection stays queued; do not spin on it.
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    return;
                }
            };
            let peer = match Peer::of(&fd) {
                Ok(p) => p,
                Err(e) => {
                    log::warning!("refused a connection: its credentials are unreadable: {e}");
                    continue;
                }
            };
            if let Some(why) = self.refusal(peer) {
                log::warning!(
                    "refused connection from pid {} uid {}: {why}",
                    peer.pid,
                    peer.uid
                );
                if send(fd.as_fd(), &error_reply(ErrorKind::Busy, &why)) {
                    self.park(fd);
                }
                continue;
            }
            let deadline = Some(Instant::now() + self.limits.idle_timeout);
            // Cannot fail: `refusal` checked for room.
            let _ = self.conns.push(Conn { fd, peer, deadline });
        }
    }

    /// Keeps a refused connection until its request arrives: closed before
    /// the client has sent it, the connection would fail the client's send
    /// with a broken pipe instead of letting it read `Busy`.
    fn park(&mut self, fd: OwnedFd) {
        let mut discard = [0u8; MAX_MESSAGE];
        match packet::recv_packet(fd.as_fd(), &mut discard, true) {
            // The request (or a hang-up) is already there: nothing to wait for.
            Ok(_) => return,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
            Err(_) => {}
        }
        if self.parked.is_full() {
            self.parked.remove(0);
        }
        let until = Instant::now() + PARK_TIME.min(self.limits.idle_timeout);
        // Cannot fail: room was made above.
        let _ = self.parked.push(Parked { fd, until });
    }

    /// Reads one packet from connection `i` and answers it.
    fn serve_conn(&mut self, i: usize) -> After {
        let mut buf = [0u8; MAX_MESSAGE];
        let (raw, peer) = (self.conns[i].fd.as_raw_fd(), self.conns[i].peer);
        let n = match packet::recv_packet(self.conns[i].fd.as_fd(), &mut buf, true) {
            Ok(0) => return After::Close,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return After::Keep,
            Err(e) => {
                log::warning!(
                    "dropped connection from pid {} uid {}: {e}",
                    peer.pid,
                    peer.uid
                );
                return After::Close;
            }
        };
        self.granted = false;
        let reply = match protocol::decode_request(&buf, n) {
            Ok(request) => self.serve(peer, raw, request),
            Err(e) => {
                log::warning!(
                    "refused a message from pid {} uid {}: {e}",
                    peer.pid,
                    peer.uid
                );
                error_reply(e.kind(), &e.to_string())
            }
        };
        if !send(self.conns[i].fd.as_fd(), &reply) {
            return After::Close;
        }
        // Serving adds and removes no connection: `i` is still this one.
        let c = &mut self.conns[i];
        if self.granted {
            c.deadline = None;
        } else if c.deadline.is_some() {
            c.deadline = Some(Instant::now() + self.limits.idle_timeout);
        }
        After::Keep
    }

    fn refuse(&self, peer: Peer, what: &str, kind: ErrorKind, why: &str) -> Reply {
        log::warning!(
            "refused {what} from pid {} uid {}: {kind}: {why}",
            peer.pid,
            peer.uid
        );
        error_reply(kind, why)
    }

    fn authorize(&self, peer: Peer, target: Target, verb: &str) -> Result<Pid, Refusal> {
        let pid = auth::authorize(
            peer,
            target,
            verb,
            &self.settings.allowed_uids,
            self.own_pid,
            auth::process_uids,
        )?;
        auth::check_tree(peer, pid, verb)?;
        let pid = i32::try_from(pid).map_err(|_| Refusal {
            kind: ErrorKind::NoSuchProcess,
            message: format!("pid {pid} is out of range"),
        })?;
        Ok(Pid::from_raw(pid))
    }

    /// The user behind `peer`, as its image records it: uid and gid from
    /// the kernel, supplementary groups from the peer's `/proc` entry.
    fn requester(&self, peer: Peer) -> Result<RequestedBy, Refusal> {
        let groups = auth::process_groups(peer.pid).map_err(|e| Refusal {
            kind: ErrorKind::NoSuchProcess,
            message: format!(
                "cannot read the groups of pid {} (uid {}): {e}",
                peer.pid, peer.uid
            ),
        })?;
        Ok(RequestedBy {
            uid: peer.uid,
            gid: peer.gid,
            groups,
        })
    }

    /// Answers one decoded request.
    fn serve(&mut self, peer: Peer, conn: RawFd, request: Request) -> Reply {
        let what = request_name(&request);
        match request {
            Request::Status => Reply::Status(Status {
                daemon_version: protocol::bounded_text(crate::VERSION),
                protocol: protocol::VERSION,
                store: self.engine.status(),
                wake_alarm: self.power.wake_available(),
            }),
            Request::Checkpoint { target } => {
                let pid = match self.authorize(peer, target, "checkpoint") {
                    Ok(pid) => pid,
                    Err(r) => return self.refuse(peer, what, r.kind, &r.message),
                };
                self.granted = true;
                match self.requester(peer) {
                    Ok(who) => self.engine.requested_by(who),
                    Err(r) => return self.refuse(peer, what, r.kind, &r.message),
                }
                match self.engine.checkpoint(pid, conn) {
                    Ok(s) => {
                        log::info!(
                            "checkpointed pid {pid} for uid {}: generation {}, {} bytes",
                            peer.uid,
                            s.generation,
                            s.image_bytes
                        );
                        Reply::Checkpointed(Checkpointed {
                            generation: s.generation,
                            image_bytes: s.image_bytes,
                        })
                    }
                    Err(e) => self.refuse(peer, what, e.kind(), &format!("pid {pid}: {e}")),
                }
            }
            Request::Hibernate {
                target,
                wake_after_s,
            } => {
                let pid = match self.authorize(peer, target, "hibernate") {
                    Ok(pid) => pid,
                    Err(r) => return self.refuse(peer, what, r.kind, &r.message),
                };
                let trees = match self.managed_trees(peer, pid) {
                    Ok(t) => t,
                    Err(r) => return self.refuse(peer, what, r.kind, &r.message),
                };
                self.granted = true;
                self.hibernate(peer, pid, trees.as_deref(), conn, wake_after_s)
            }
            Request::Restored { pid, resumed } => self.restored(peer, conn, pid, resumed),
        }
    }

    /// `torpor boot` gave this connection to a restored tree: it now belongs
    /// to the tree's root, which reads the `Resumed` reply.
    fn restored(&mut self, peer: Peer, conn: RawFd, pid: u32, resumed: Resumed) -> Reply {
        let what = "Restored";
        if peer.uid != 0 {
            return self.refuse(
                peer,
                what,
                ErrorKind::Unauthorized,
                "only root restores trees",
            );
        }
        let (uid, gid) = match auth::process_uids(pid) {
            // Not root's group for a gid that cannot be read.
            Ok(Some(uids)) => match process_gid(pid) {
                Some(gid) => (uids[0], gid),
                None => {
                    return self.refuse(
                        peer,
                        what,
                        ErrorKind::NoSuchProcess,
                        &format!("pid {pid}: no readable Gid in /proc/{pid}/status"),
                    )
                }
            },
            Ok(None) => {
                return self.refuse(
                    peer,
                    what,
                    ErrorKind::NoSuchProcess,
                    &format!("pid {pid} does not exist"),
                )
            }
            Err(e) => {
                return self.refuse(
                    peer,
                    what,
                    ErrorKind::NoSuchProcess,
                    &format!("pid {pid}: {e}"),
                )
            }
        };
        if let Some(c) = self.conns.iter_mut().find(|c| c.fd.as_raw_fd() == conn) {
            c.peer = Peer { pid, uid, gid };
        }
        // The connection now belongs to the restored tree, which holds it
        // for as long as it likes.
        self.granted = true;
        let slept = resumed
            .slept_for_ms
            .map_or_else(|| "an unknown time".to_string(), |ms| format!("{ms} ms"));
        log::info!(
            "pid {pid} (uid {uid}) restored from image generation {} after {slept} ({} clock); sending Resumed",
            resumed.generation,
            resumed.clock
        );
        Reply::Resumed(resumed)
    }

    fn hibernate(
        &mut self,
        peer: Peer,
        pid: Pid,
        trees: Option<&[(Pid, String)]>,
        conn: RawFd,
        wake: Option<u32>,
    ) -> Reply {
        let what = "Hibernate";
        if wake == Some(0) {
            return self.refuse(
                peer,
                what,
                ErrorKind::Malformed,
                "wake_after_s must be at least 1 second",
            );
        }
        if wake.is_some() && !self.power.wake_available() {
            return self.refuse(
                peer,
                what,
                ErrorKind::Unsupported,
                "wake_after_s needs an RTC wake alarm, and rtc.device is \"none\"",
            );
        }
        if let Err(e) = self.power.prepare() {
            return self.refuse(
                peer,
                what,
                ErrorKind::PowerFailed,
                &format!("pid {pid} not hibernated: {e}"),
            );
        }
        match self.requester(peer) {
            Ok(who) => self.engine.requested_by(who),
            Err(r) => return self.refuse(peer, what, r.kind, &r.message),
        }
        let result = match trees {
            Some(t) => {
                let names: Vec<&str> = t.iter().map(|(_, n)| n.as_str()).collect();
                log::info!("hibernating every managed app: {}", names.join(", "));
                self.engine.hibernate_all(t, pid, conn, wake)
            }
            None => self.engine.hibernate(pid, conn, wake),
        };
        let stored = match result {
            Ok(s) => s,
            Err(e) => {
                self.power.release();
                let whom = if trees.is_some() {
                    "no app hibernated".to_string()
                } else {
                    format!("pid {pid} not hibernated")
                };
                return self.refuse(peer, what, e.kind(), &format!("{whom}: {e}"));
            }
        };
        log::info!(
            "hibernating pid {pid} for uid {}: image generation {} ({} bytes) stored",
            peer.uid,
            stored.generation,
            stored.image_bytes
        );
        if let Some(after) = wake {
            match self.power.arm_wake(after) {
                Ok(at) => log::info!("wake alarm set to RTC time {at} ({after} s from now)"),
                Err(e) => return self.power_failed(peer, pid, stored, e),
            }
        }
        log::info!("cutting the power");
        match self.power.cut() {
            Ok(slept_for_ms) => {
                self.power.release();
                self.engine.power_returned(pid);
                log::info!(
                    "power is back after {slept_for_ms} ms without a reboot; pid {pid} resumes"
                );
                Reply::Resumed(Resumed {
                    slept_for_ms: Some(slept_for_ms),
                    clock: Clock::Wall,
                    generation: stored.generation,
                })
            }
            Err(e) => {
                if wake.is_some() {
                    if let Err(e) = self.power.disarm_wake() {
                        log::error!("clearing the wake alarm failed: {e}");
                    }
                }
                self.power_failed(peer, pid, stored, e)
            }
        }
    }

    /// The image is stored but the power stays on: drop the image, let the tree run.
    fn power_failed(&mut self, peer: Peer, pid: Pid, stored: Stored, e: PowerError) -> Reply {
        self.power.release();
        let mut why = format!("pid {pid} not hibernated: {e}");
        if let Err(abandon) = self.engine.abandon(pid, stored.generation) {
            log::error!(
                "could not abandon image generation {}: {abandon}",
                stored.generation
            );
            why.push_str(&format!(
                "; abandoning image generation {} failed too: {abandon}",
                stored.generation
            ));
        }
        self.refuse(peer, "Hibernate", ErrorKind::PowerFailed, &why)
    }
}

/// Sends one reply without blocking; `false` when the client is gone or
/// does not read its replies.
fn send(fd: BorrowedFd<'_>, reply: &Reply) -> bool {
    let (buf, len) = match protocol::encode_reply(reply) {
        Ok(b) => b,
        Err(e) => {
            log::error!("cannot encode a reply: {e}");
            return false;
        }
    };
    match packet::send_packet(fd, &buf[..len], true) {
        Ok(()) => true,
        Err(e) => {
            log::warning!("dropped a client: sending its reply failed: {e}");
            false
        }
    }
}

/// The real gid of a process, from /proc/PID/status.
fn process_gid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Gid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

//! The daemon stays responsive to root: users other than root hold a
//! bounded number of connections, the last slots are root's, an idle
//! connection is closed, and a refused client reads `Busy` rather than a
//! broken pipe.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use common::{exchange_on, pipe, temp_dir, EngineOutcome, FakeEngine, SimulatedSupply, SUMMARY};
use torpor::daemon::{Daemon, Limits, Listener, Settings, Stored, MAX_CLIENTS, ROOT_RESERVED};
use torpor::protocol::{self, packet, ErrorKind, Reply, Request, Target, MAX_MESSAGE};

struct Running {
    socket: std::path::PathBuf,
    dir: std::path::PathBuf,
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(tag: &str, limits: Limits) -> Running {
    let dir = temp_dir(tag);
    let socket = dir.join("torpor.sock");
    let listener = Listener::bind(&socket, 0, 0, 0o666).unwrap();
    let (stop_r, stop_w) = pipe();
    let engine = FakeEngine::new(EngineOutcome::Store(Stored {
        generation: 1,
        image_bytes: 4096,
    }));
    let mut daemon = Daemon::new(
        listener,
        Settings::default(),
        engine,
        SimulatedSupply::new(),
    )
    .with_limits(limits);
    let thread = std::thread::spawn(move || daemon.run(stop_r.as_fd()).unwrap());
    Running {
        socket,
        dir,
        stop: Some(stop_w),
        thread: Some(thread),
    }
}

fn encode(r: &Request) -> Vec<u8> {
    let (buf, len) = protocol::encode_request(r).unwrap();
    buf[..len].to_vec()
}

fn busy(reply: Reply) -> String {
    match reply {
        Reply::Error(e) if e.kind == ErrorKind::Busy => e.message.as_str().to_string(),
        other => panic!("expected Busy, got {other:?}"),
    }
}

/// A process running as `uid` that opens `n` connections to `socket`,
/// sends nothing and holds them until killed.
struct Holder(i32);

impl Holder {
    fn new(socket: &Path, uid: u32, n: usize) -> Holder {
        let (addr, len) = packet::socket_address(socket).unwrap();
        let (r, w) = pipe();
        // SAFETY: the child below only calls async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: plain syscalls on stack values in the forked child.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(uid, uid, uid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    libc::_exit(10);
                }
                for _ in 0..n {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
                    if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                        libc::_exit(11);
                    }
                }
                libc::write(w.as_raw_fd(), [1u8].as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        drop(w);
        let mut b = [0u8; 1];
        use std::io::Read;
        std::fs::File::from(r).read_exact(&mut b).unwrap();
        Holder(pid)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// One request from a fresh connection as `uid`: the send must succeed
/// (no broken pipe) and a reply must arrive.
fn ask_as(socket: &Path, uid: u32, request: &Request) -> Reply {
    let (addr, len) = packet::socket_address(socket).unwrap();
    let req = encode(request);
    let (r, w) = pipe();
    // SAFETY: the child below only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain syscalls on stack buffers in the forked child.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(10);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(11);
            }
            if libc::send(fd, req.as_ptr().cast(), req.len(), libc::MSG_NOSIGNAL) < 0 {
                libc::_exit(12);
            }
            let mut buf = [0u8; 512];
            let Ok(n) = usize::try_from(libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))
            else {
                libc::_exit(13);
            };
            libc::write(w.as_raw_fd(), buf.as_ptr().cast(), n);
            libc::_exit(0);
        }
    }
    drop(w);
    let mut out = Vec::new();
    use std::io::Read;
    std::fs::File::from(r).read_to_end(&mut out).unwrap();
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "client failed: status {status:#x}"
    );
    protocol::decode_reply(&out, out.len()).unwrap()
}

/// Root sends on a fresh connection; the send succeeds and a reply arrives.
fn ask_as_root(socket: &Path, request: &Request) -> Reply {
    let fd = packet::connect(socket).unwrap();
    exchange_on(fd.as_fd(), &encode(request))
}

#[test]
fn idle_connections_of_a_user_who_may_not_act_leave_root_served() {
    let d = start("limits-idle-user", Limits::default());
    // uid 65534 is not in access.allow_users: it may not act at all.
    let _held = Holder::new(&d.socket, 65534, 40);
    match ask_as_root(&d.socket, &Request::Status) {
        Reply::Status(s) => assert_eq!(s.store, SUMMARY),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        busy(ask_as(&d.socket, 65534, &Request::Status)),
        "uid 65534 already holds 4 connections, the most access.connections_per_user allows"
    );
    // Another user still gets in.
    assert!(matches!(
        ask_as(&d.socket, 65533, &Request::Status),
        Reply::Status(_)
    ));
}

#[test]
fn the_last_slots_are_roots_and_root_then_reads_busy() {
    let d = start("limits-reserved", Limits::default());
    let open = MAX_CLIENTS - ROOT_RESERVED;
    let per = Limits::default().per_user;
    let holders: Vec<Holder> = (0..open / per)
        .map(|k| Holder::new(&d.socket, 60000 + u32::try_from(k).unwrap(), per))
        .collect();
    assert_eq!(holders.len() * per, open);
    assert_eq!(
        busy(ask_as(&d.socket, 61000, &Request::Status)),
        "the daemon already serves 28 connections of users other than root; the other 4 are kept for root"
    );
    // Root takes the reserved slots...
    let mut mine = Vec::new();
    for _ in 0..ROOT_RESERVED {
        let fd = packet::connect(&d.socket).unwrap();
        assert!(matches!(
            exchange_on(fd.as_fd(), &encode(&Request::Status)),
            Reply::Status(_)
        ));
        mine.push(fd);
    }
    // ...and beyond them reads Busy: its send does not fail.
    assert_eq!(
        busy(ask_as_root(&d.socket, &Request::Status)),
        "the daemon already serves 32 connections"
    );
    drop(mine.pop());
    let mut served = false;
    for _ in 0..100 {
        if let Reply::Status(_) = ask_as_root(&d.socket, &Request::Status) {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(served, "root was not served once its connection left");
}

fn closed(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; MAX_MESSAGE];
    matches!(packet::recv_packet(fd.as_fd(), &mut buf, false), Ok(0))
}

#[test]
fn connections_that_send_nothing_are_closed_and_granted_ones_stay() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let d = start("limits-timeout", limits);
    let silent = packet::connect(&d.socket).unwrap();
    let after_status = packet::connect(&d.socket).unwrap();
    assert!(matches!(
        exchange_on(after_status.as_fd(), &encode(&Request::Status)),
        Reply::Status(_)
    ));
    // A refused request grants nothing: the daemon never targets itself.
    let granted = packet::connect(&d.socket).unwrap();
    assert!(matches!(
        exchange_on(
            granted.as_fd(),
            &encode(&Request::Checkpoint {
                target: Target::Pid(std::process::id()),
            }),
        ),
        Reply::Error(_)
    ));
    // A connection that was granted a request: like an app's, which it
    // keeps across hibernations.
    let sleeper = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let granted_ok = packet::connect(&d.socket).unwrap();
    assert!(matches!(
        exchange_on(
            granted_ok.as_fd(),
            &encode(&Request::Checkpoint {
                target: Target::Pid(sleeper.id()),
            }),
        ),
        Reply::Checkpointed(_)
    ));
    let t = std::time::Instant::now();
    assert!(closed(&silent), "a silent connection is closed");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(closed(&after_status), "idle after a Status reply: closed");
    assert!(closed(&granted), "a refused request grants nothing");
    // Well past the timeout, the granted connection is still served.
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(
        exchange_on(granted_ok.as_fd(), &encode(&Request::Status)),
        Reply::Status(_)
    ));
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
fn check_config_shows_limits_that_are_set() {
    let dir = temp_dir("limits-check");
    let file = dir.join("torpor.toml");
    std::fs::write(&file, "[access]\nidle_timeout_s = 30\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_torpor"))
        .args(["daemon", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("access.allow_users = []\naccess.idle_timeout_s = 30\nlog.target = stderr\n"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

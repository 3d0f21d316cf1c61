//! `torpor daemon` served on a thread with a recording engine and a simulated
//! supply: every request kind, every kind of bad input, and who may ask.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use common::*;
use torpor::protocol::{
    self, packet, Checkpointed, Clock, ErrorKind, ErrorReply, Reply, Request, Resumed, Status,
    Target, MAX_MESSAGE,
};
use torpor_client::{Client, ClientError};

fn me() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

fn expect_error(reply: Reply, kind: ErrorKind) -> String {
    match reply {
        Reply::Error(ErrorReply { kind: k, message }) => {
            assert_eq!(k, kind, "message: {message}");
            message.to_string()
        }
        other => panic!("expected a {kind} error, got {other:?}"),
    }
}

fn status_ok(socket: &Path) {
    let s = Client::connect(socket).unwrap().status().unwrap();
    assert_eq!(
        s,
        Status {
            daemon_version: protocol::bounded_text(torpor::VERSION),
            protocol: protocol::VERSION,
            store: SUMMARY,
            wake_alarm: true,
        }
    );
}

/// A root-owned process to target, killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn new() -> Self {
        Sleeper(
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn raw(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn default_daemon(
    tag: &str,
) -> (
    Running<FakeEngine, SimulatedSupply>,
    FakeEngine,
    SimulatedSupply,
) {
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let supply = SimulatedSupply::new();
    let d = start(tag, vec![], engine.clone(), supply.clone());
    (d, engine, supply)
}

#[test]
fn status_reports_version_store_and_alarm() {
    let (d, engine, _) = default_daemon("status");
    status_ok(&d.socket);
    assert_eq!(engine.calls(), vec![EngineCall::Status]);
}

#[test]
fn hibernate_caller_returns_resumed_after_the_simulated_cut() {
    let (d, engine, supply) = default_daemon("hib");
    let request = encode(&Request::Hibernate {
        target: Target::Caller,
        wake_after_s: Some(60),
    });
    let (child, reply) = in_child(&d.socket, &request, false);
    assert_eq!(
        reply,
        Reply::Resumed(Resumed {
            slept_for_ms: Some(12_345),
            clock: Clock::Wall,
            generation: 7
        })
    );
    assert_eq!(
        engine.calls(),
        vec![EngineCall::Hibernate {
            pid: child,
            wake: Some(60),
            conn_peer_pid: child
        }]
    );
    assert_eq!(
        supply.calls(),
        vec![
            SupplyCall::Prepare,
            SupplyCall::ArmWake(60),
            SupplyCall::Cut,
            SupplyCall::Release
        ]
    );
}

#[test]
fn hibernate_named_target_through_the_client_library() {
    let (d, engine, supply) = default_daemon("hibpid");
    let target = Sleeper::new();
    let mut c = Client::connect(&d.socket).unwrap();
    let r = c.hibernate_target(Target::Pid(target.pid()), None).unwrap();
    assert_eq!(
        r,
        Resumed {
            slept_for_ms: Some(12_345),
            clock: Clock::Wall,
            generation: 7
        }
    );
    assert_eq!(
        engine.calls(),
        vec![EngineCall::Hibernate {
            pid: target.raw(),
            wake: None,
            conn_peer_pid: me()
        }]
    );
    assert_eq!(
        supply.calls(),
        vec![SupplyCall::Prepare, SupplyCall::Cut, SupplyCall::Release]
    );
    // The same connection keeps working after the resume.
    assert_eq!(c.status().unwrap().store, SUMMARY);
}

#[test]
fn checkpoint_named_pid_returns_the_stored_image() {
    let (d, engine, supply) = default_daemon("ckpt");
    let target = Sleeper::new();
    let got = Client::connect(&d.socket)
        .unwrap()
        .checkpoint_target(Target::Pid(target.pid()))
        .unwrap();
    assert_eq!(
        got,
        Checkpointed {
            generation: 7,
            image_bytes: 1_234_567
        }
    );
    assert_eq!(
        engine.calls(),
        vec![EngineCall::Checkpoint {
            pid: target.raw(),
            conn_peer_pid: me()
        }]
    );
    assert!(supply.calls().is_empty());
    // Checkpoint of the caller: the pid comes from SO_PEERCRED.
    let (child, reply) = in_child(
        &d.socket,
        &encode(&Request::Checkpoint {
            target: Target::Caller,
        }),
        false,
    );
    assert_eq!(
        reply,
        Reply::Checkpointed(Checkpointed {
            generation: 7,
            image_bytes: 1_234_567
        })
    );
    assert_eq!(
        engine.calls()[1],
        EngineCall::Checkpoint {
            pid: child,
            conn_peer_pid: child
        }
    );
}

#[test]
fn engine_failure_is_reported_and_the_line_released() {
    let engine = FakeEngine::new(EngineOutcome::DumpFails("pid 4242 is a zombie".into()));
    let supply = SimulatedSupply::new();
    let d = start("dumpfail", vec![], engine.clone(), supply.clone());
    let target = Sleeper::new();
    let e = Client::connect(&d.socket)
        .unwrap()
        .hibernate_target(Target::Pid(target.pid()), None)
        .unwrap_err();
    let ClientError::Daemon(e) = e else {
        panic!("{e}")
    };
    assert_eq!(e.kind, ErrorKind::DumpFailed);
    assert_eq!(
        e.message.as_str(),
        format!(
            "pid {} not hibernated: checkpoint failed: pid 4242 is a zombie",
            target.pid()
        )
    );
    assert_eq!(
        supply.calls(),
        vec![SupplyCall::Prepare, SupplyCall::Release]
    );

    let engine = FakeEngine::new(EngineOutcome::StoreFails(
        "/dev/mmcblk0p3: read-back CRC mismatch".into(),
    ));
    let d2 = start("storefail", vec![], engine.clone(), SimulatedSupply::new());
    let e = Client::connect(&d2.socket)
        .unwrap()
        .checkpoint_target(Target::Pid(target.pid()))
        .unwrap_err();
    assert_eq!(e.daemon_kind(), Some(ErrorKind::StoreFailed));
    assert_eq!(
        e.to_string(),
        format!(
            "the torpor daemon refused: StoreFailed: pid {}: image store failed: /dev/mmcblk0p3: read-back CRC mismatch",
            target.pid()
        )
    );
}

#[test]
fn missing_gpio_refuses_before_the_engine_runs() {
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let mut supply = SimulatedSupply::new();
    supply.prepare_fails = true;
    let d = start("nogpio", vec![], engine.clone(), supply.clone());
    let target = Sleeper::new();
    let e = Client::connect(&d.socket)
        .unwrap()
        .hibernate_target(Target::Pid(target.pid()), None)
        .unwrap_err();
    let ClientError::Daemon(e) = e else {
        panic!("{e}")
    };
    assert_eq!(e.kind, ErrorKind::PowerFailed);
    assert_eq!(
        e.message.as_str(),
        format!(
            "pid {} not hibernated: cannot request gpiochip9 line 26 as the power output: No such file or directory (os error 2)",
            target.pid()
        )
    );
    assert!(engine.calls().is_empty());
}

#[test]
fn failed_cut_abandons_the_image_and_clears_the_alarm() {
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let mut supply = SimulatedSupply::new();
    supply.cut_fails = true;
    let d = start("cutfail", vec![], engine.clone(), supply.clone());
    let target = Sleeper::new();
    let e = Client::connect(&d.socket)
        .unwrap()
        .hibernate_target(Target::Pid(target.pid()), Some(5))
        .unwrap_err();
    assert_eq!(e.daemon_kind(), Some(ErrorKind::PowerFailed));
    assert!(
        e.to_string().ends_with(
            "not hibernated: still running 3000 ms after gpiochip0 line 26 went active, and reboot(POWER_OFF) failed: Operation not permitted (os error 1)"
        ),
        "{e}"
    );
    assert_eq!(
        engine.calls(),
        vec![
            EngineCall::Hibernate {
                pid: target.raw(),
                wake: Some(5),
                conn_peer_pid: me()
            },
            EngineCall::Abandon {
                pid: target.raw(),
                generation: 7
            },
        ]
    );
    assert_eq!(
        supply.calls(),
        vec![
            SupplyCall::Prepare,
            SupplyCall::ArmWake(5),
            SupplyCall::Cut,
            SupplyCall::DisarmWake,
            SupplyCall::Release
        ]
    );
}

#[test]
fn wake_requests_the_daemon_cannot_honour_are_refused() {
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let mut supply = SimulatedSupply::new();
    supply.wake = false;
    let d = start("nowake", vec![], engine.clone(), supply.clone());
    let target = Sleeper::new();
    let e = Client::connect(&d.socket)
        .unwrap()
        .hibernate_target(Target::Pid(target.pid()), Some(60))
        .unwrap_err();
    assert_eq!(e.daemon_kind(), Some(ErrorKind::Unsupported));
    assert!(e.to_string().contains("rtc.device is \"none\""), "{e}");
    let e = Client::connect(&d.socket)
        .unwrap()
        .hibernate_target(Target::Pid(target.pid()), Some(0))
        .unwrap_err();
    assert_eq!(e.daemon_kind(), Some(ErrorKind::Malformed));
    assert!(engine.calls().is_empty());
    assert!(supply.calls().is_empty());
}

#[test]
fn absent_and_special_targets_are_refused() {
    let (d, engine, _) = default_daemon("absent");
    // PIDs above pid_max never exist.
    let reply = raw_exchange(
        &d.socket,
        &encode(&Request::Hibernate {
            target: Target::Pid(0x3fff_ffff),
            wake_after_s: None,
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::NoSuchProcess),
        "cannot hibernate pid 1073741823: no such process"
    );
    let reply = raw_exchange(
        &d.socket,
        &encode(&Request::Checkpoint {
            target: Target::Pid(0),
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::NoSuchProcess),
        "pid 0 names no process"
    );
    // The daemon runs in this process: it will not checkpoint itself.
    let reply = raw_exchange(
        &d.socket,
        &encode(&Request::Checkpoint {
            target: Target::Caller,
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::Unsupported),
        format!(
            "pid {} is the torpor daemon itself, which cannot checkpoint itself",
            me()
        )
    );
    assert!(engine.calls().is_empty());
}

fn encode(r: &Request) -> Vec<u8> {
    let (buf, n) = protocol::encode_request(r).unwrap();
    buf[..n].to_vec()
}

/// A bad message gets exactly `kind`, its connection and other clients keep being served.
fn bad_input(socket: &Path, bytes: &[u8], kind: ErrorKind) -> String {
    let fd = packet::connect(socket).unwrap();
    let message = expect_error(exchange_on(fd.as_fd(), bytes), kind);
    // The same connection still works ...
    match exchange_on(fd.as_fd(), &encode(&Request::Status)) {
        Reply::Status(s) => assert_eq!(s.store, SUMMARY),
        other => panic!("{other:?}"),
    }
    // ... and so does a new one.
    status_ok(socket);
    message
}

#[test]
fn malformed_input_gets_malformed_and_the_daemon_keeps_serving() {
    let (d, engine, supply) = default_daemon("malformed");
    let s = &d.socket;
    let full = encode(&Request::Hibernate {
        target: Target::Pid(300),
        wake_after_s: Some(70_000),
    });
    assert_eq!(full, [1, 0, 0, 1, 0xac, 0x02, 1, 0xf0, 0xa2, 0x04]);
    // Truncated at every length past the version header.
    for cut in 2..full.len() {
        let m = bad_input(s, &full[..cut], ErrorKind::Malformed);
        assert_eq!(
            m, "the message ends in the middle of a field (protocol 1.0, this side speaks 1.0)",
            "cut at {cut}"
        );
    }
    assert_eq!(
        bad_input(s, &[1], ErrorKind::Malformed),
        "message of 1 bytes is shorter than the 2-byte version header"
    );
    // Wrong variant tags: request 4, target 2, option 2.
    let unknown = "an unknown variant tag, or a string longer than its bound (protocol 1.0, this side speaks 1.0)";
    assert_eq!(bad_input(s, &[1, 0, 4], ErrorKind::Malformed), unknown);
    assert_eq!(bad_input(s, &[1, 0, 1, 2], ErrorKind::Malformed), unknown);
    assert_eq!(
        bad_input(s, &[1, 0, 0, 0, 2], ErrorKind::Malformed),
        "an option tag is neither 0 nor 1 (protocol 1.0, this side speaks 1.0)"
    );
    assert_eq!(
        bad_input(s, &[1, 0, 2, 0], ErrorKind::Malformed),
        "1 unexpected byte(s) after the end of the message"
    );
    // A varint longer than a u32 allows.
    assert_eq!(
        bad_input(s, &[1, 0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], ErrorKind::Malformed),
        "a variable-length integer is longer than its type allows (protocol 1.0, this side speaks 1.0)"
    );
    let calls = engine.calls();
    assert!(calls.iter().all(|c| *c == EngineCall::Status), "{calls:?}");
    assert!(supply.calls().is_empty());
    // Pseudo-random bodies behind a valid header: the daemon answers each
    // exactly as the decoder judges it and never stops.
    let mut x: u32 = 0x1234_5678;
    for round in 0..200 {
        let mut msg = vec![1u8, 0];
        for _ in 0..(round % 24) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            msg.push(x.to_le_bytes()[0]);
        }
        let reply = raw_exchange(s, &msg);
        match protocol::decode_request(&msg, msg.len()) {
            Err(e) => assert_eq!(
                reply,
                Reply::Error(ErrorReply::new(e.kind(), &e.to_string())),
                "{msg:02x?}"
            ),
            Ok(_) => {
                assert!(
                    !matches!(
                        reply,
                        Reply::Error(ErrorReply {
                            kind: ErrorKind::Malformed,
                            ..
                        })
                    ),
                    "{msg:02x?}"
                )
            }
        }
    }
    status_ok(s);
}

#[test]
fn oversized_and_unknown_version_input() {
    let (d, engine, _) = default_daemon("oversized");
    let s = &d.socket;
    let mut big = encode(&Request::Status);
    big.resize(600, 0);
    assert_eq!(
        bad_input(s, &big, ErrorKind::Oversized),
        "message of 600 bytes exceeds the 512-byte limit"
    );
    let mut just = encode(&Request::Status);
    just.resize(MAX_MESSAGE + 1, 0);
    assert_eq!(
        bad_input(s, &just, ErrorKind::Oversized),
        "message of 513 bytes exceeds the 512-byte limit"
    );
    // 512 bytes is not oversized, only trailing garbage.
    just.truncate(MAX_MESSAGE);
    assert_eq!(
        bad_input(s, &just, ErrorKind::Malformed),
        "509 unexpected byte(s) after the end of the message"
    );
    assert_eq!(
        bad_input(s, &[2, 0, 2], ErrorKind::UnsupportedVersion),
        "protocol version 2.0 is not supported: this side speaks 1.0"
    );
    assert_eq!(
        bad_input(s, &[0, 9], ErrorKind::UnsupportedVersion),
        "protocol version 0.9 is not supported: this side speaks 1.0"
    );
    // A newer minor of the same major is understood.
    match raw_exchange(s, &[1, 7, 2]) {
        Reply::Status(st) => assert_eq!(st.store, SUMMARY),
        other => panic!("{other:?}"),
    }
    let calls = engine.calls();
    assert!(calls.iter().all(|c| *c == EngineCall::Status), "{calls:?}");
}

#[test]
fn connections_beyond_the_limit_get_busy() {
    let (d, _, _) = default_daemon("busy");
    let mut held = Vec::new();
    for _ in 0..torpor::daemon::MAX_CLIENTS {
        let fd = packet::connect(&d.socket).unwrap();
        // A round trip makes sure the daemon has accepted this one.
        assert!(matches!(
            exchange_on(fd.as_fd(), &encode(&Request::Status)),
            Reply::Status(_)
        ));
        held.push(fd);
    }
    let extra = packet::connect(&d.socket).unwrap();
    let mut buf = [0u8; MAX_MESSAGE];
    let n = packet::recv_packet(extra.as_fd(), &mut buf, false).unwrap();
    let m = expect_error(protocol::decode_reply(&buf, n).unwrap(), ErrorKind::Busy);
    assert_eq!(m, "the daemon already serves 32 connections");
    // Room again once a client leaves (the daemon notices the hang-up on its
    // next poll, so the first attempts may still be turned away).
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        let fd = packet::connect(&d.socket).unwrap();
        if packet::send_packet(fd.as_fd(), &encode(&Request::Status), false).is_ok() {
            if let Ok(n @ 1..) = packet::recv_packet(fd.as_fd(), &mut buf, false) {
                if let Ok(Reply::Status(_)) = protocol::decode_reply(&buf, n) {
                    served = true;
                    break;
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(served, "no connection was served after one left");
}

#[test]
fn a_live_daemon_is_not_replaced_and_a_stale_socket_is() {
    let (d, _, _) = default_daemon("live");
    let e = torpor::daemon::Listener::bind(&d.socket, 0, 0, 0o600).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "another torpor daemon is already serving {}",
            d.socket.display()
        )
    );
    let dir = temp_dir("stale");
    let path = dir.join("s.sock");
    // A socket file nobody listens on: bound, then its fd closed.
    let fd = packet::seqpacket_socket().unwrap();
    let (addr, len) = packet::socket_address(&path).unwrap();
    // SAFETY: addr is a valid sockaddr_un of len bytes.
    let bound = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    assert_eq!(bound, 0);
    drop(fd);
    let l = torpor::daemon::Listener::bind(&path, 0, 0, 0o640).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (0, 0));
    drop(l);
    assert!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
    std::fs::write(&path, b"x").unwrap();
    let e = torpor::daemon::Listener::bind(&path, 0, 0, 0o600).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs one request as uid/gid 65534 in a forked child; returns the child's
/// pid and the reply.
fn as_nobody(socket: &Path, request: &[u8]) -> (i32, Reply) {
    in_child(socket, request, true)
}

/// Runs one request from a forked child, as root or as uid/gid 65534. The
/// daemon runs in this process, so a caller other than the daemon must be
/// another process. The child makes only async-signal-safe calls.
fn in_child(socket: &Path, request: &[u8], nobody: bool) -> (i32, Reply) {
    let (addr, len) = packet::socket_address(socket).unwrap();
    let (r, w) = pipe();
    let mut req = [0u8; 64];
    req[..request.len()].copy_from_slice(request);
    let req_len = request.len();
    // SAFETY: the child below only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: plain syscalls on stack buffers in the forked child.
        unsafe {
            let w = w.as_raw_fd();
            if nobody
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0)
            {
                libc::_exit(10);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            if fd < 0 || libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(11);
            }
            if libc::send(fd, req.as_ptr().cast(), req_len, 0) < 0 {
                libc::_exit(12);
            }
            let mut buf = [0u8; 512];
            let Ok(n) = usize::try_from(libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0))
            else {
                libc::_exit(13);
            };
            libc::write(w, buf.as_ptr().cast(), n);
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
        "child failed: status {status:#x}"
    );
    (pid, protocol::decode_reply(&out, out.len()).unwrap())
}

#[test]
fn users_not_allowed_are_refused_and_the_engine_never_sees_them() {
    let (d, engine, supply) = default_daemon("notallowed");
    // The target: a root-owned process other than the daemon.
    let sleeper = Sleeper::new();
    let root_pid = sleeper.pid();
    let (_, reply) = as_nobody(
        &d.socket,
        &encode(&Request::Hibernate {
            target: Target::Pid(root_pid),
            wake_after_s: None,
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::Unauthorized),
        format!("uid 65534 may not hibernate pid {root_pid}: only root and the users in access.allow_users may")
    );
    // Its own process, but not listed in allow_users.
    let (child_pid, reply) = as_nobody(
        &d.socket,
        &encode(&Request::Hibernate {
            target: Target::Caller,
            wake_after_s: None,
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::Unauthorized),
        format!("uid 65534 may not hibernate pid {child_pid}: only root and the users in access.allow_users may")
    );
    let (_, reply) = as_nobody(
        &d.socket,
        &encode(&Request::Checkpoint {
            target: Target::Caller,
        }),
    );
    expect_error(reply, ErrorKind::Unauthorized);
    // Status is open to anyone who can connect.
    let (_, reply) = as_nobody(&d.socket, &encode(&Request::Status));
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
    drop(sleeper);
    assert_eq!(engine.calls(), vec![EngineCall::Status]);
    assert!(supply.calls().is_empty());
}

#[test]
fn allowed_users_may_hibernate_only_their_own_processes() {
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let supply = SimulatedSupply::new();
    let d = start("allowed", vec![65534], engine.clone(), supply.clone());
    let sleeper = Sleeper::new();
    let root_pid = sleeper.pid();
    let (_, reply) = as_nobody(
        &d.socket,
        &encode(&Request::Hibernate {
            target: Target::Pid(root_pid),
            wake_after_s: Some(9),
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::Unauthorized),
        format!("uid 65534 may not hibernate pid {root_pid}: the process belongs to uid 0 (effective 0, saved 0)")
    );
    let (_, reply) = as_nobody(
        &d.socket,
        &encode(&Request::Checkpoint {
            target: Target::Pid(root_pid),
        }),
    );
    assert_eq!(
        expect_error(reply, ErrorKind::Unauthorized),
        format!("uid 65534 may not checkpoint pid {root_pid}: the process belongs to uid 0 (effective 0, saved 0)")
    );
    drop(sleeper);
    assert!(engine.calls().is_empty(), "{:?}", engine.calls());
    assert!(supply.calls().is_empty());

    // Its own process tree passes to the engine, with the caller's pid from SO_PEERCRED.
    let (child_pid, reply) = as_nobody(
        &d.socket,
        &encode(&Request::Hibernate {
            target: Target::Caller,
            wake_after_s: Some(9),
        }),
    );
    assert_eq!(
        reply,
        Reply::Resumed(Resumed {
            slept_for_ms: Some(12_345),
            clock: Clock::Wall,
            generation: 7
        })
    );
    assert_eq!(
        engine.calls(),
        vec![EngineCall::Hibernate {
            pid: child_pid,
            wake: Some(9),
            conn_peer_pid: child_pid
        }]
    );
    assert_eq!(
        supply.calls(),
        vec![
            SupplyCall::Prepare,
            SupplyCall::ArmWake(9),
            SupplyCall::Cut,
            SupplyCall::Release
        ]
    );
}

#[test]
fn stopping_removes_the_socket() {
    let (d, _, _) = default_daemon("stop");
    let path = d.socket.clone();
    status_ok(&path);
    let daemon = d.stop();
    drop(daemon);
    assert!(!path.exists());
}

/// The client library's own-process calls, from a forked child (the daemon
/// runs in this process). The library allocates nothing on these paths, so
/// the child stays async-signal-safe; it reports through its exit status.
#[test]
fn client_library_hibernates_and_checkpoints_its_own_process() {
    let (d, engine, supply) = default_daemon("client-self");
    let path = d.socket.clone();
    // SAFETY: the child runs only allocation-free code and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = (|| {
            let mut c = Client::connect(&path).ok()?;
            let r = c.hibernate(Some(30)).ok()?;
            if r != (Resumed {
                slept_for_ms: Some(12_345),
                clock: Clock::Wall,
                generation: 7,
            }) {
                return Some(2);
            }
            let k = c.checkpoint().ok()?;
            if k != (Checkpointed {
                generation: 7,
                image_bytes: 1_234_567,
            }) {
                return Some(3);
            }
            Some(0)
        })()
        .unwrap_or(1);
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
    assert_eq!(
        engine.calls(),
        vec![
            EngineCall::Hibernate {
                pid,
                wake: Some(30),
                conn_peer_pid: pid
            },
            EngineCall::Checkpoint {
                pid,
                conn_peer_pid: pid
            },
        ]
    );
    assert_eq!(
        supply.calls(),
        vec![
            SupplyCall::Prepare,
            SupplyCall::ArmWake(30),
            SupplyCall::Cut,
            SupplyCall::Release
        ]
    );
}

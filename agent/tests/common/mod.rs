//! Fakes and helpers shared by the daemon, power and example tests.
#![allow(dead_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use torpor::daemon::{CheckpointError, Daemon, Engine, Listener, Pid, Settings, Stored};
use torpor::power::{PowerDown, PowerError, PowerLine, System, WakeAlarm};
use torpor::protocol::{packet, Reply, StoreState, StoreSummary, MAX_MESSAGE};

/// A fresh directory under /tmp that any user may enter.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(format!(
        "/tmp/torpor-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What the engine was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineCall {
    /// `conn_peer_pid`: the pid the kernel reports for the peer of the fd the
    /// engine was handed, which proves it is the caller's connection.
    Hibernate {
        pid: i32,
        wake: Option<u32>,
        conn_peer_pid: i32,
    },
    Abandon {
        pid: i32,
        generation: u64,
    },
    Checkpoint {
        pid: i32,
        conn_peer_pid: i32,
    },
    Status,
}

/// How the fake engine answers.
#[derive(Debug, Clone)]
pub enum EngineOutcome {
    Store(Stored),
    DumpFails(String),
    StoreFails(String),
}

#[derive(Debug, Clone)]
pub struct FakeEngine {
    pub calls: Arc<Mutex<Vec<EngineCall>>>,
    pub outcome: EngineOutcome,
}

pub const STORED: Stored = Stored {
    generation: 7,
    image_bytes: 1_234_567,
};
pub const SUMMARY: StoreSummary = StoreSummary {
    state: StoreState::Valid,
    generation: 6,
    image_bytes: 987_654,
};

impl FakeEngine {
    pub fn new(outcome: EngineOutcome) -> Self {
        FakeEngine {
            calls: Arc::default(),
            outcome,
        }
    }
    pub fn calls(&self) -> Vec<EngineCall> {
        self.calls.lock().unwrap().clone()
    }
    fn result(&self) -> Result<Stored, CheckpointError> {
        match &self.outcome {
            EngineOutcome::Store(s) => Ok(*s),
            EngineOutcome::DumpFails(m) => Err(CheckpointError::Dump(m.clone())),
            EngineOutcome::StoreFails(m) => Err(CheckpointError::Store(m.clone())),
        }
    }
}

fn peer_pid(fd: RawFd) -> i32 {
    // SAFETY: the daemon keeps the connection open for the duration of the call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)
        .unwrap()
        .pid()
}

impl Engine for FakeEngine {
    fn hibernate(
        &mut self,
        pid: Pid,
        conn_fd: RawFd,
        wake: Option<u32>,
    ) -> Result<Stored, CheckpointError> {
        self.calls.lock().unwrap().push(EngineCall::Hibernate {
            pid: pid.as_raw(),
            wake,
            conn_peer_pid: peer_pid(conn_fd),
        });
        self.result()
    }
    fn abandon(&mut self, pid: Pid, generation: u64) -> Result<(), CheckpointError> {
        self.calls.lock().unwrap().push(EngineCall::Abandon {
            pid: pid.as_raw(),
            generation,
        });
        Ok(())
    }
    fn checkpoint(&mut self, pid: Pid, conn_fd: RawFd) -> Result<Stored, CheckpointError> {
        self.calls.lock().unwrap().push(EngineCall::Checkpoint {
            pid: pid.as_raw(),
            conn_peer_pid: peer_pid(conn_fd),
        });
        self.result()
    }
    fn status(&mut self) -> StoreSummary {
        self.calls.lock().unwrap().push(EngineCall::Status);
        SUMMARY
    }
}

/// A simulated supply: records what the daemon asks and comes back after
/// `slept_ms` when cut (or fails where told to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupplyCall {
    Prepare,
    ArmWake(u32),
    DisarmWake,
    Cut,
    Release,
}

#[derive(Debug, Clone)]
pub struct SimulatedSupply {
    pub calls: Arc<Mutex<Vec<SupplyCall>>>,
    pub wake: bool,
    pub prepare_fails: bool,
    pub cut_fails: bool,
    pub slept_ms: u64,
}

impl SimulatedSupply {
    pub fn new() -> Self {
        SimulatedSupply {
            calls: Arc::default(),
            wake: true,
            prepare_fails: false,
            cut_fails: false,
            slept_ms: 12_345,
        }
    }
    pub fn calls(&self) -> Vec<SupplyCall> {
        self.calls.lock().unwrap().clone()
    }
}

impl PowerDown for SimulatedSupply {
    fn wake_available(&self) -> bool {
        self.wake
    }
    fn prepare(&mut self) -> Result<(), PowerError> {
        self.calls.lock().unwrap().push(SupplyCall::Prepare);
        if self.prepare_fails {
            return Err(PowerError::Request {
                chip: "gpiochip9".into(),
                line: 26,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(())
    }
    fn arm_wake(&mut self, after_s: u32) -> Result<u64, PowerError> {
        self.calls
            .lock()
            .unwrap()
            .push(SupplyCall::ArmWake(after_s));
        Ok(1_700_000_000 + u64::from(after_s))
    }
    fn disarm_wake(&mut self) -> Result<(), PowerError> {
        self.calls.lock().unwrap().push(SupplyCall::DisarmWake);
        Ok(())
    }
    fn cut(&mut self) -> Result<u64, PowerError> {
        self.calls.lock().unwrap().push(SupplyCall::Cut);
        if self.cut_fails {
            return Err(PowerError::StillAlive {
                chip: "gpiochip0".into(),
                line: 26,
                timeout_ms: 3000,
                source: io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        Ok(self.slept_ms)
    }
    fn release(&mut self) {
        self.calls.lock().unwrap().push(SupplyCall::Release);
    }
}

/// Every device access of the real power sequence, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    Request { chip: String, line: u32, high: bool },
    Set { high: bool },
    ReleaseLine,
    RtcNow,
    AlarmWrite(String),
    Sync,
    Sleep(u32),
    PowerOff,
}

pub type Log = Arc<Mutex<Vec<Device>>>;

#[derive(Debug, Clone)]
pub struct FakeLine {
    pub log: Log,
    pub fail_request: bool,
}
impl PowerLine for FakeLine {
    fn request(&mut self, chip: &str, line: u32, high: bool) -> io::Result<()> {
        self.log.lock().unwrap().push(Device::Request {
            chip: chip.into(),
            line,
            high,
        });
        if self.fail_request {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Ok(())
    }
    fn set(&mut self, high: bool) -> io::Result<()> {
        self.log.lock().unwrap().push(Device::Set { high });
        Ok(())
    }
    fn release(&mut self) {
        self.log.lock().unwrap().push(Device::ReleaseLine);
    }
}

#[derive(Debug, Clone)]
pub struct FakeAlarm {
    pub log: Log,
    pub now: u64,
    pub fail_write: bool,
}
impl WakeAlarm for FakeAlarm {
    fn now(&mut self) -> io::Result<u64> {
        self.log.lock().unwrap().push(Device::RtcNow);
        Ok(self.now)
    }
    fn write(&mut self, value: &str) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Device::AlarmWrite(value.into()));
        if self.fail_write {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct FakeSystem {
    pub log: Log,
}
impl System for FakeSystem {
    fn sync(&mut self) {
        self.log.lock().unwrap().push(Device::Sync);
    }
    fn sleep_ms(&mut self, ms: u32) {
        self.log.lock().unwrap().push(Device::Sleep(ms));
    }
    fn power_off(&mut self) -> io::Error {
        self.log.lock().unwrap().push(Device::PowerOff);
        io::Error::from_raw_os_error(libc::EPERM)
    }
}

/// A daemon serving on a thread; dropping it stops the daemon.
pub struct Running<E: Engine + Send + 'static, P: PowerDown + Send + 'static> {
    pub socket: PathBuf,
    pub dir: PathBuf,
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<Daemon<E, P>>>,
}

pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array; both are then owned here.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds from pipe2.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

pub fn start<E: Engine + Send + 'static, P: PowerDown + Send + 'static>(
    tag: &str,
    allowed_uids: Vec<u32>,
    engine: E,
    power: P,
) -> Running<E, P> {
    start_with(tag, allowed_uids, engine, power, |d, _| d)
}

/// [`start`], the daemon first passed through `setup` with its socket's
/// path (to manage applications, say).
pub fn start_with<E: Engine + Send + 'static, P: PowerDown + Send + 'static>(
    tag: &str,
    allowed_uids: Vec<u32>,
    engine: E,
    power: P,
    setup: impl FnOnce(Daemon<E, P>, &Path) -> Daemon<E, P>,
) -> Running<E, P> {
    let dir = temp_dir(tag);
    let socket = dir.join("torpor.sock");
    let listener = Listener::bind(&socket, 0, 0, 0o666).unwrap();
    let (stop_r, stop_w) = pipe();
    let mut daemon = setup(
        Daemon::new(listener, Settings { allowed_uids }, engine, power),
        &socket,
    );
    let thread = std::thread::spawn(move || {
        daemon.run(stop_r.as_fd()).unwrap();
        daemon
    });
    Running {
        socket,
        dir,
        stop: Some(stop_w),
        thread: Some(thread),
    }
}

impl<E: Engine + Send + 'static, P: PowerDown + Send + 'static> Running<E, P> {
    /// Stops the daemon and hands it back for inspection.
    pub fn stop(mut self) -> Daemon<E, P> {
        self.stop.take();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl<E: Engine + Send + 'static, P: PowerDown + Send + 'static> Drop for Running<E, P> {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends raw bytes as one packet and returns the decoded reply.
pub fn raw_exchange(socket: &Path, bytes: &[u8]) -> Reply {
    let fd = packet::connect(socket).unwrap();
    exchange_on(fd.as_fd(), bytes)
}

pub fn exchange_on(fd: BorrowedFd<'_>, bytes: &[u8]) -> Reply {
    packet::send_packet(fd, bytes, false).unwrap();
    let mut buf = [0u8; MAX_MESSAGE];
    let n = packet::recv_packet(fd, &mut buf, false).unwrap();
    assert!(n > 0, "the daemon closed the connection");
    torpor::protocol::decode_reply(&buf, n).unwrap()
}

pub fn raw_fd(fd: &impl AsRawFd) -> RawFd {
    fd.as_raw_fd()
}

mod netlink;
#[allow(unused_imports)]
pub use netlink::netlink_waiting;

//! The daemon's log: one line per event, written with a single write so
//! lines from several processes do not mix.
//!
//! On stderr (the default, and what systemd's journal collects) a line reads
//! `torpor[PID]: LEVEL: MESSAGE`. With `[log] target = "syslog"` each line is
//! one datagram `<PRI>torpor[PID]: MESSAGE` (facility daemon, the severity
//! in PRI) sent to the syslog socket, normally `/dev/log`: under a SysV init
//! script the daemon runs detached with stderr on /dev/null, and BusyBox
//! `syslogd` keeps the lines in /var/log/messages. While no syslog daemon
//! listens, lines go to the kernel log (`/dev/kmsg`, read with `dmesg`), and
//! if that fails too, to stderr: an event is never silently dropped while
//! some sink still takes it.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How much a log line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warning,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }

    /// The syslog severity (RFC 5424 numbering).
    fn severity(self) -> u8 {
        match self {
            Level::Info => 6,
            Level::Warning => 4,
            Level::Error => 3,
        }
    }
}

/// syslog facility `daemon`.
const FACILITY_DAEMON: u8 = 3;

/// The kernel log device, the fallback while no syslog daemon listens.
pub const KMSG: &str = "/dev/kmsg";

/// Formats one stderr log line (without writing it).
pub fn line(level: Level, args: std::fmt::Arguments<'_>) -> String {
    format!(
        "torpor[{}]: {}: {}\n",
        std::process::id(),
        level.name(),
        args
    )
}

/// Formats one syslog message, as sent to the syslog socket or the kernel log.
pub fn syslog_message(level: Level, args: std::fmt::Arguments<'_>) -> String {
    let pri = FACILITY_DAEMON * 8 + level.severity();
    format!("<{pri}>torpor[{}]: {}", std::process::id(), args)
}

/// Where log lines go.
#[derive(Debug)]
pub enum Sink {
    Stderr,
    Syslog(Syslog),
}

/// A syslog sink: a datagram socket connected to the syslog daemon's
/// socket, reconnected when the syslog daemon (re)starts, and the kernel log
/// device for the time none listens.
#[derive(Debug)]
pub struct Syslog {
    socket_path: PathBuf,
    kmsg_path: PathBuf,
    socket: Option<UnixDatagram>,
}

impl Syslog {
    pub fn new(socket_path: &Path, kmsg_path: &Path) -> Syslog {
        Syslog {
            socket_path: socket_path.to_owned(),
            kmsg_path: kmsg_path.to_owned(),
            socket: None,
        }
    }

    fn connect(&mut self) -> std::io::Result<&UnixDatagram> {
        let s = match self.socket.take() {
            Some(s) => s,
            None => {
                let s = UnixDatagram::unbound()?;
                s.connect(&self.socket_path)?;
                s
            }
        };
        Ok(self.socket.insert(s))
    }

    fn send_to_syslog(&mut self, message: &str) -> std::io::Result<()> {
        match self.connect().and_then(|s| s.send(message.as_bytes())) {
            Ok(_) => Ok(()),
            Err(_) => {
                // The syslog daemon restarted (the old socket is gone) or is
                // not up yet: one fresh connection, then give up on it.
                self.socket = None;
                self.connect()?.send(message.as_bytes()).map(|_| ())
            }
        }
    }

    /// Sends one message: to syslog, else to the kernel log, else to stderr.
    fn write(&mut self, level: Level, args: std::fmt::Arguments<'_>) {
        let message = syslog_message(level, args);
        if self.send_to_syslog(&message).is_ok() {
            return;
        }
        let to_kmsg = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.kmsg_path)
            .and_then(|mut f| f.write_all(format!("{message}\n").as_bytes()));
        if to_kmsg.is_err() {
            write_stderr(&line(level, args));
        }
    }
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Stderr);

/// Sends every later log line of this process to `sink`.
pub fn set_sink(sink: Sink) {
    *SINK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = sink;
}

fn write_stderr(text: &str) {
    // A log that cannot be written must not stop the daemon.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Writes one log line to the current sink.
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let mut sink = SINK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &mut *sink {
        Sink::Stderr => write_stderr(&line(level, args)),
        Sink::Syslog(s) => s.write(level, args),
    }
}

macro_rules! info {
    ($($arg:tt)*) => { $crate::daemon::log::write($crate::daemon::log::Level::Info, format_args!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::daemon::log::write($crate::daemon::log::Level::Warning, format_args!($($arg)*)) };
}
macro_rules! error {
    ($($arg:tt)*) => { $crate::daemon::log::write($crate::daemon::log::Level::Error, format_args!($($arg)*)) };
}
pub(crate) use {error, info, warning};

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("torpor-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn received(server: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn syslog_messages_carry_facility_daemon_and_the_severity() {
        let pid = std::process::id();
        assert_eq!(
            syslog_message(Level::Info, format_args!("serving {}", "/run/torpor.sock")),
            format!("<30>torpor[{pid}]: serving /run/torpor.sock")
        );
        assert_eq!(
            syslog_message(Level::Warning, format_args!("w")),
            format!("<28>torpor[{pid}]: w")
        );
        assert_eq!(
            syslog_message(Level::Error, format_args!("e")),
            format!("<27>torpor[{pid}]: e")
        );
    }

    #[test]
    fn a_syslog_daemon_that_restarts_gets_the_next_lines() {
        let dir = scratch("restart");
        let socket = dir.join("log");
        let kmsg = dir.join("kmsg");
        std::fs::write(&kmsg, b"").unwrap();
        let pid = std::process::id();
        let mut sink = Syslog::new(&socket, &kmsg);

        let server = UnixDatagram::bind(&socket).unwrap();
        sink.write(Level::Info, format_args!("one"));
        assert_eq!(received(&server), format!("<30>torpor[{pid}]: one"));

        // syslogd restarts: a new socket at the same path.
        drop(server);
        std::fs::remove_file(&socket).unwrap();
        let server = UnixDatagram::bind(&socket).unwrap();
        sink.write(Level::Error, format_args!("two"));
        assert_eq!(received(&server), format!("<27>torpor[{pid}]: two"));
        assert_eq!(
            std::fs::read(&kmsg).unwrap(),
            b"",
            "nothing went to the kernel log"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_syslog_daemon_lines_go_to_the_kernel_log() {
        let dir = scratch("kmsg");
        let socket = dir.join("log");
        let kmsg = dir.join("kmsg");
        std::fs::write(&kmsg, b"").unwrap();
        let pid = std::process::id();
        let mut sink = Syslog::new(&socket, &kmsg);
        sink.write(Level::Warning, format_args!("no syslogd"));
        // A kmsg write appends; the stand-in file is opened without O_APPEND,
        // so each write lands at offset 0: check one at a time.
        assert_eq!(
            std::fs::read_to_string(&kmsg).unwrap(),
            format!("<28>torpor[{pid}]: no syslogd\n")
        );

        // syslogd comes up: lines go there again.
        let server = UnixDatagram::bind(&socket).unwrap();
        sink.write(Level::Info, format_args!("back"));
        assert_eq!(received(&server), format!("<30>torpor[{pid}]: back"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

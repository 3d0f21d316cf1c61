//! The daemon's log: one line per event on stderr, `torpor[PID]: LEVEL: MESSAGE`,
//! written with a single write so lines from several processes do not mix.

use std::io::Write;

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
}

/// Formats one log line (without writing it).
pub fn line(level: Level, args: std::fmt::Arguments<'_>) -> String {
    format!("torpor[{}]: {}: {}\n", std::process::id(), level.name(), args)
}

/// Writes one log line to stderr.
pub fn write(level: Level, args: std::fmt::Arguments<'_>) {
    let text = line(level, args);
    // A log that cannot be written must not stop the daemon.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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

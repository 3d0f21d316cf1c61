//! `torpor daemon`: read the configuration, listen, serve until SIGTERM.

use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::{self, Config, ConnLimits, LogTarget};
use crate::daemon::log;
use crate::daemon::store_engine::StoreEngine;
use crate::daemon::{Daemon, Engine, Limits, Listener, Settings};

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Listen here instead of at socket.path of the configuration.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Keep images in this store (a partition or a file) instead of store.device.
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Log to stderr or to syslog instead of log.target of the configuration.
    #[arg(long, value_name = "TARGET", value_parser = ["stderr", "syslog"])]
    pub log: Option<String>,
    /// Check the configuration, print the settings in effect, and exit.
    #[arg(long, conflicts_with = "cut_power")]
    pub check_config: bool,
    /// Do not serve: cut the power now through the configured GPIO, to
    /// test a board's wiring. Returns only if the cut fails.
    #[arg(long)]
    pub cut_power: bool,
    /// With --cut-power: first set the RTC to power the board up again after SECS seconds.
    #[arg(long, value_name = "SECS", requires = "cut_power", value_parser = clap::value_parser!(u32).range(1..))]
    pub wake_after: Option<u32>,
}

/// Loads and fully checks the configuration, including user and group names.
fn load(args: &DaemonArgs) -> Result<(Config, ConnLimits), config::ConfigError> {
    let (mut c, limits) = Config::load_or_default_with_limits(&args.config)?;
    c.resolve()?;
    crate::store::allow_group_read(c.store.allow_group_read);
    if let Some(s) = &args.socket {
        c.socket.path = s.clone();
    }
    if let Some(s) = &args.store {
        c.store.device = s.clone();
    }
    match args.log.as_deref() {
        Some("stderr") => c.log.target = LogTarget::Stderr,
        Some("syslog") => c.log.target = LogTarget::Syslog,
        _ => {}
    }
    Ok((c, limits))
}

/// The settings in effect, one `section.key = value` per line.
fn settings_text(c: &Config, l: &ConnLimits) -> String {
    let users: Vec<String> = c
        .access
        .allow_users
        .iter()
        .map(ToString::to_string)
        .collect();
    let rtc = c
        .rtc
        .wakealarm
        .as_ref()
        .map_or_else(|| "none".to_string(), |p| p.display().to_string());
    // The connection limits show only when set, so the usual listing stays
    // as it was before they existed.
    let mut limits = String::new();
    if c.restore.tcp_established {
        limits.push_str("restore.tcp_established = true\n");
    }
    if l.idle_timeout_s != config::defaults::IDLE_TIMEOUT_S {
        limits.push_str(&format!("access.idle_timeout_s = {}\n", l.idle_timeout_s));
    }
    if l.connections_per_user != config::defaults::CONNECTIONS_PER_USER {
        limits.push_str(&format!(
            "access.connections_per_user = {}\n",
            l.connections_per_user
        ));
    }
    format!(
        "{}: configuration is valid
socket.path = {}
socket.owner = {}
socket.group = {}
socket.mode = {:04o}
store.device = {}
power.chip = {}
power.line = {}
power.active_low = {}
power.hold_ms = {}
power.timeout_ms = {}
rtc.device = {rtc}
restore.attempts = {}
restore.tty = {}
access.allow_users = [{}]
{limits}log.target = {}
log.socket = {}
",
        c.origin.display(),
        c.socket.path.display(),
        c.socket.owner,
        c.socket.group,
        c.socket.mode,
        c.store.device.display(),
        c.power.chip,
        c.power.line,
        c.power.active_low,
        c.power.hold_ms,
        c.power.timeout_ms,
        c.restore.attempts,
        c.restore.tty.display(),
        users.join(", "),
        c.log.target,
        c.log.socket.display()
    )
}

/// `torpor daemon` with the checkpoint engine and the configured store
/// (`--store` overrides `store.device`).
pub fn run(args: DaemonArgs) -> i32 {
    match load(&args) {
        Ok((c, _)) => run_with(
            args,
            StoreEngine::new(c.store.device).tcp_established(c.restore.tcp_established),
        ),
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

/// `torpor daemon` driving `engine`.
pub fn run_with<E: Engine>(args: DaemonArgs, engine: E) -> i32 {
    let (config, limits) = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    if args.check_config {
        use std::io::Write;
        // A closed stdout (`| head`) is not worth a panic.
        let _ = std::io::stdout()
            .lock()
            .write_all(settings_text(&config, &limits).as_bytes());
        return 0;
    }
    if config.log.target == LogTarget::Syslog {
        log::set_sink(log::Sink::Syslog(log::Syslog::new(
            &config.log.socket,
            std::path::Path::new(log::KMSG),
        )));
    }
    if args.cut_power {
        return match cut_power(&config, args.wake_after) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{e}");
                1
            }
        };
    }
    match serve(&config, &limits, engine) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

/// The daemon's power-down sequence on its own, with the real devices.
fn cut_power(config: &Config, wake_after: Option<u32>) -> Result<(), crate::power::PowerError> {
    use crate::power::PowerDown;
    let mut power = crate::power::from_config(config);
    power.prepare()?;
    if let Some(after) = wake_after {
        let at = power.arm_wake(after)?;
        log::info!("wake alarm set to RTC time {at} ({after} s from now)");
    }
    log::info!(
        "cutting the power: {} line {} goes {}",
        config.power.chip,
        config.power.line,
        if config.power.active_low {
            "low"
        } else {
            "high"
        }
    );
    let result = power.cut().map(|_| ());
    if wake_after.is_some() {
        if let Err(e) = power.disarm_wake() {
            log::error!("clearing the wake alarm failed: {e}");
        }
    }
    power.release();
    result
}

fn serve<E: Engine>(config: &Config, limits: &ConnLimits, engine: E) -> Result<(), String> {
    let uid = config.socket_owner().map_err(|e| e.to_string())?;
    let gid = config.socket_group().map_err(|e| e.to_string())?;
    let allowed_uids = config.allowed_uids().map_err(|e| e.to_string())?;
    // SIGTERM and SIGINT arrive through a signalfd in the poll loop, so a
    // stop never interrupts a request half-way.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("cannot block SIGTERM/SIGINT: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;
    let listener = Listener::bind(&config.socket.path, uid, gid, config.socket.mode)
        .map_err(|e| e.to_string())?;
    let power = crate::power::from_config(config);
    let limits = Limits {
        idle_timeout: std::time::Duration::from_secs(limits.idle_timeout_s.into()),
        per_user: crate::engine::conv::fit(
            limits.connections_per_user,
            "usize",
            "access.connections_per_user",
        )
        .map_err(|e| e.to_string())?,
    };
    let mut daemon = Daemon::new(listener, Settings { allowed_uids }, engine, power)
        .with_limits(limits)
        .with_apps(
            config.apps.clone(),
            crate::apps::dir_for(&config.socket.path),
        );
    daemon.run(signals.as_fd()).map_err(|e| e.to_string())
}

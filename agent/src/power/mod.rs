//! Power: the last step on the way down. Arm the RTC wake alarm, sync, and
//! cut the board's power through a GPIO; if the board is still alive after
//! the timeout, fall back to `reboot(POWER_OFF)`.
//!
//! The sequence lives in [`Power`]; the devices it drives sit behind three
//! small traits ([`PowerLine`], [`WakeAlarm`], [`System`]) so tests can
//! observe the exact order and values with fakes. The real implementations
//! in [`devices`] are thin.
//!
//! The sequence, with the defaults of `/etc/torpor.toml`:
//!
//! ```text
//!   prepare:  request gpiochip0 line 26 as output, level inactive
//!   arm:      wakealarm <- "0"; wakealarm <- RTC now + N      (only with a wake time)
//!   cut:      sync(); hold inactive 100 ms; drive active;
//!             wait 3000 ms (power should die here); sync(); reboot(POWER_OFF)
//! ```

pub mod devices;

use std::io;

use crate::config::{Config, PowerConfig};

/// The power GPIO, requested as an output.
pub trait PowerLine {
    /// Requests `line` of `chip` as an output driven to `high` (a physical level).
    fn request(&mut self, chip: &str, line: u32, high: bool) -> io::Result<()>;
    /// Drives the requested line to `high` (a physical level).
    fn set(&mut self, high: bool) -> io::Result<()>;
    /// Releases the line (the level it holds is then up to the hardware).
    fn release(&mut self);
}

/// The RTC's wake alarm (the sysfs `wakealarm` file).
pub trait WakeAlarm {
    /// The RTC's current time in seconds since the epoch.
    fn now(&mut self) -> io::Result<u64>;
    /// Writes `value` to the alarm ("0" clears it, a number sets it).
    fn write(&mut self, value: &str) -> io::Result<()>;
}

/// What the power sequence needs from the operating system.
pub trait System {
    fn sync(&mut self);
    fn sleep_ms(&mut self, ms: u32);
    /// `reboot(LINUX_REBOOT_CMD_POWER_OFF)`: returns only when it failed.
    fn power_off(&mut self) -> io::Error;
}

/// Why the power could not be cut or the alarm set.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("cannot request {chip} line {line} as the power output: {source}")]
    Request {
        chip: String,
        line: u32,
        source: io::Error,
    },
    #[error("cannot drive {chip} line {line} {level}: {source}")]
    Drive {
        chip: String,
        line: u32,
        level: &'static str,
        source: io::Error,
    },
    #[error("no RTC wake alarm is configured (rtc.device = \"none\")")]
    NoAlarm,
    #[error("cannot read the RTC time for the wake alarm {path}: {source}")]
    RtcTime { path: String, source: io::Error },
    #[error("cannot write {value:?} to the wake alarm {path}: {source}")]
    AlarmWrite {
        path: String,
        value: String,
        source: io::Error,
    },
    #[error("the wake time RTC {now} s + {after} s overflows")]
    AlarmOverflow { now: u64, after: u32 },
    #[error(
        "still running {timeout_ms} ms after {chip} line {line} went active, and reboot(POWER_OFF) failed: {source}"
    )]
    StillAlive {
        chip: String,
        line: u32,
        timeout_ms: u32,
        source: io::Error,
    },
    #[error("the power line was not requested before the cut")]
    NotPrepared,
}

/// The power supply as the daemon sees it.
pub trait PowerDown {
    /// Whether a wake alarm can be set.
    fn wake_available(&self) -> bool;
    /// Takes the power line, at its inactive level. Done before the dump so
    /// a missing GPIO is reported while the app can still run on.
    fn prepare(&mut self) -> Result<(), PowerError>;
    /// Sets the wake alarm `after_s` seconds from now; returns the RTC epoch
    /// it was set to.
    fn arm_wake(&mut self, after_s: u32) -> Result<u64, PowerError>;
    /// Clears the wake alarm (after a failure, so the board does not wake
    /// for nothing).
    fn disarm_wake(&mut self) -> Result<(), PowerError>;
    /// Cuts the power. With a real supply it never returns `Ok`: either the
    /// power dies or the fallback fails. `Ok` means the supply came back
    /// without a reboot (a simulated supply), after the given milliseconds.
    fn cut(&mut self) -> Result<u64, PowerError>;
    /// Lets go of the line after a failure before the cut.
    fn release(&mut self);
}

/// The real power sequence over the three device traits.
#[derive(Debug)]
pub struct Power<L, W, S> {
    settings: PowerConfig,
    alarm_path: Option<String>,
    line: L,
    alarm: Option<W>,
    system: S,
    prepared: bool,
}

impl<L: PowerLine, W: WakeAlarm, S: System> Power<L, W, S> {
    /// `alarm` is `None` when the board has no RTC to wake it.
    pub fn new(settings: PowerConfig, line: L, alarm: Option<(String, W)>, system: S) -> Self {
        let (alarm_path, alarm) = match alarm {
            Some((p, a)) => (Some(p), Some(a)),
            None => (None, None),
        };
        Power {
            settings,
            alarm_path,
            line,
            alarm,
            system,
            prepared: false,
        }
    }

    /// The physical level that cuts the power.
    fn active_level(&self) -> bool {
        !self.settings.active_low
    }

    fn level_name(high: bool) -> &'static str {
        if high {
            "high"
        } else {
            "low"
        }
    }

    fn alarm_write(&mut self, value: &str) -> Result<(), PowerError> {
        let path = self.alarm_path.clone().unwrap_or_default();
        let alarm = self.alarm.as_mut().ok_or(PowerError::NoAlarm)?;
        alarm.write(value).map_err(|source| PowerError::AlarmWrite {
            path,
            value: value.to_string(),
            source,
        })
    }

    /// Access to the devices (tests inspect their fakes through this).
    pub fn parts(&self) -> (&L, Option<&W>, &S) {
        (&self.line, self.alarm.as_ref(), &self.system)
    }
}

impl<L: PowerLine, W: WakeAlarm, S: System> PowerDown for Power<L, W, S> {
    fn wake_available(&self) -> bool {
        self.alarm.is_some()
    }

    fn prepare(&mut self) -> Result<(), PowerError> {
        let inactive = !self.active_level();
        let (chip, line) = (self.settings.chip.clone(), self.settings.line);
        self.line
            .request(&chip, line, inactive)
            .map_err(|source| PowerError::Request { chip, line, source })?;
        self.prepared = true;
        Ok(())
    }

    fn arm_wake(&mut self, after_s: u32) -> Result<u64, PowerError> {
        if self.alarm.is_none() {
            return Err(PowerError::NoAlarm);
        }
        // The kernel refuses (EBUSY) to replace an armed alarm: clear it first.
        self.alarm_write("0")?;
        let path = self.alarm_path.clone().unwrap_or_default();
        // Absolute RTC time rather than "+N": the RTC need not agree with
        // the system clock, and the kernel compares against the RTC.
        let now = self
            .alarm
            .as_mut()
            .ok_or(PowerError::NoAlarm)?
            .now()
            .map_err(|source| PowerError::RtcTime { path, source })?;
        let at = now
            .checked_add(u64::from(after_s))
            .ok_or(PowerError::AlarmOverflow {
                now,
                after: after_s,
            })?;
        self.alarm_write(&at.to_string())?;
        Ok(at)
    }

    fn disarm_wake(&mut self) -> Result<(), PowerError> {
        if self.alarm.is_none() {
            return Ok(());
        }
        self.alarm_write("0")
    }

    fn cut(&mut self) -> Result<u64, PowerError> {
        if !self.prepared {
            return Err(PowerError::NotPrepared);
        }
        let (chip, line) = (self.settings.chip.clone(), self.settings.line);
        let active = self.active_level();
        self.system.sync();
        self.system.sleep_ms(self.settings.hold_ms);
        self.line.set(active).map_err(|source| PowerError::Drive {
            chip: chip.clone(),
            line,
            level: Self::level_name(active),
            source,
        })?;
        // The line stays active: if the supply is slow to die, it still dies.
        self.system.sleep_ms(self.settings.timeout_ms);
        self.system.sync();
        let source = self.system.power_off();
        Err(PowerError::StillAlive {
            chip,
            line,
            timeout_ms: self.settings.timeout_ms,
            source,
        })
    }

    fn release(&mut self) {
        if self.prepared {
            self.line.release();
            self.prepared = false;
        }
    }
}

/// The real devices for `config`.
pub fn from_config(
    config: &Config,
) -> Power<devices::CdevLine, devices::SysfsAlarm, devices::LinuxSystem> {
    let alarm = config
        .rtc
        .wakealarm
        .as_ref()
        .map(|p| (p.display().to_string(), devices::SysfsAlarm::new(p.clone())));
    Power::new(
        config.power.clone(),
        devices::CdevLine::default(),
        alarm,
        devices::LinuxSystem,
    )
}

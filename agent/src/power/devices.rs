//! The real devices behind the power traits: the GPIO character device
//! (through linux-embedded-hal's `CdevPin`), the sysfs RTC wake alarm, and
//! the kernel's sync and reboot calls. Each is a few lines; the sequence
//! that uses them is tested with fakes in the parent module.

use std::io::{self, Write};
use std::path::PathBuf;

use embedded_hal::digital::OutputPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;

use super::{PowerLine, System, WakeAlarm};

/// The power GPIO as a `CdevPin`. The line is requested without the
/// kernel's ACTIVE_LOW flag, so levels here are physical; polarity is
/// decided once, in `Power`.
#[derive(Default)]
pub struct CdevLine {
    pin: Option<CdevPin>,
}

impl std::fmt::Debug for CdevLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdevLine")
            .field("requested", &self.pin.is_some())
            .finish()
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl PowerLine for CdevLine {
    fn request(&mut self, chip: &str, line: u32, high: bool) -> io::Result<()> {
        let path = if chip.starts_with('/') {
            PathBuf::from(chip)
        } else {
            PathBuf::from("/dev").join(chip)
        };
        let mut chip = Chip::new(&path).map_err(other)?;
        let handle = chip
            .get_line(line)
            .and_then(|l| l.request(LineRequestFlags::OUTPUT, u8::from(high), "torpor-power"))
            .map_err(other)?;
        self.pin = Some(CdevPin::new(handle).map_err(other)?);
        Ok(())
    }

    fn set(&mut self, high: bool) -> io::Result<()> {
        let pin = self
            .pin
            .as_mut()
            .ok_or_else(|| other("the line is not requested"))?;
        if high {
            pin.set_high().map_err(other)
        } else {
            pin.set_low().map_err(other)
        }
    }

    fn release(&mut self) {
        self.pin = None;
    }
}

/// `/sys/class/rtc/rtcN/wakealarm`; the RTC time comes from the sibling
/// `since_epoch`.
#[derive(Debug)]
pub struct SysfsAlarm {
    path: PathBuf,
}

impl SysfsAlarm {
    pub fn new(path: PathBuf) -> Self {
        SysfsAlarm { path }
    }
}

impl WakeAlarm for SysfsAlarm {
    fn now(&mut self) -> io::Result<u64> {
        let since = self.path.with_file_name("since_epoch");
        let text = std::fs::read_to_string(&since)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", since.display())))?;
        text.trim().parse().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {text:?}: {e}", since.display()),
            )
        })
    }

    fn write(&mut self, value: &str) -> io::Result<()> {
        // One write(2) per value: sysfs takes each write as a whole.
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        f.write_all(value.as_bytes())
    }
}

/// The running kernel.
#[derive(Debug)]
pub struct LinuxSystem;

impl System for LinuxSystem {
    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn sleep_ms(&mut self, ms: u32) {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(ms)));
    }

    fn power_off(&mut self) -> io::Error {
        // On success reboot(2) does not return.
        match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
            Err(e) => e.into(),
            Ok(never) => match never {},
        }
    }
}

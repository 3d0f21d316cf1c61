//! timerfd: clock, interval, time left and unread expirations. A relative
//! timer fires after the time it had left, counted from the restore; an
//! absolute `CLOCK_REALTIME` timer keeps its wall-clock deadline, and so
//! does an absolute `CLOCK_MONOTONIC`/`CLOCK_BOOTTIME` one when the tree
//! gets a time namespace continuing its clocks. torpor creates the timer
//! outside that namespace, so the deadline is moved into torpor's view.
//!
//! Unsafe code: timerfd_create, timerfd_settime and the ioctl that sets the
//! tick count go through libc with pointers to our structs.
#![allow(unsafe_code)]

use super::{field, into_raw, last_os, owned};
use crate::arch::Bits;
use crate::engine::clocks::Offsets;
use crate::engine::conv;
use crate::image::records::TimerFd;

const NS: u64 = 1_000_000_000;
/// `TFD_IOC_SET_TICKS`: `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: libc::Ioctl = 0x4008_5400;

/// `(sec, nsec)` as fdinfo prints an `it_value`/`it_interval`.
fn pair_ns(s: &str) -> Option<u64> {
    let (a, b) = s.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    let sec: u64 = a.trim().parse().ok()?;
    let nsec: u64 = b.trim().parse().ok()?;
    sec.checked_mul(NS)?.checked_add(nsec)
}

fn now_ns(clock: i32) -> Result<u64, std::io::Error> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(clock, &raw mut ts) } < 0 {
        return Err(last_os());
    }
    let sec: u64 = conv::fit(ts.tv_sec, "u64", format_args!("clock {clock} seconds"))?;
    let nsec: u64 = conv::fit(ts.tv_nsec, "u64", format_args!("clock {clock} nanoseconds"))?;
    sec.checked_mul(NS)
        .and_then(|v| v.checked_add(nsec))
        .ok_or_else(|| std::io::Error::other(format!("clock {clock}: {sec} s overflow 64-bit ns")))
}

// libc deprecates time_t on musl ahead of its 64-bit change; the field has
// that type whichever it is.
#[allow(deprecated)]
fn timespec(ns: u64) -> Result<libc::timespec, std::io::Error> {
    Ok(libc::timespec {
        tv_sec: conv::fit(ns / NS, "time_t", "timer seconds")?,
        // Below 10^9: fits.
        tv_nsec: libc::c_long::try_from(ns % NS).unwrap_or(0),
    })
}

/// Clocks whose absolute values mean the same after a power cycle.
fn is_wall_clock(clock: i32) -> bool {
    clock == libc::CLOCK_REALTIME || clock == libc::CLOCK_REALTIME_ALARM
}

/// The fdinfo reading whose clock readings around it are this close is
/// taken at once; a preempted one is read again, a few times at most.
const READ_WINDOW_NS: u64 = 100_000;
const READ_TRIES: u32 = 8;

/// Reads the timerfd's fdinfo at `path`: the deadline is the time left
/// plus the clock read halfway through the reading, bracketed closely so
/// that a restore can give back the absolute deadline within microseconds.
pub(super) fn collect_from(path: &str) -> Result<TimerFd, String> {
    let read = || std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"));
    let first = read()?;
    let clock: i32 = field(&first, "clockid")
        .and_then(|v| v.parse().ok())
        .ok_or("no readable clockid")?;
    let now = || now_ns(clock).map_err(|e| format!("clock {clock}: {e}"));
    let mut tries = 0;
    loop {
        tries += 1;
        let before = now()?;
        let info = read()?;
        let after = now()?;
        if after - before <= READ_WINDOW_NS || tries >= READ_TRIES {
            return collect(&info, before + (after - before) / 2);
        }
    }
}

/// Parses a timerfd's fdinfo read at `now` on its clock.
pub(super) fn collect(info: &str, now: u64) -> Result<TimerFd, String> {
    let clock: i32 = field(info, "clockid")
        .and_then(|v| v.parse().ok())
        .ok_or("no readable clockid")?;
    let ticks: u64 = field(info, "ticks")
        .and_then(|v| v.parse().ok())
        .ok_or("no readable ticks")?;
    let settime_flags = field(info, "settime flags")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .ok_or("no readable settime flags")?;
    let value_ns = field(info, "it_value")
        .and_then(pair_ns)
        .ok_or("no readable it_value")?;
    let interval_ns = field(info, "it_interval")
        .and_then(pair_ns)
        .ok_or("no readable it_interval")?;
    let deadline_ns = if value_ns > 0 { now + value_ns } else { 0 };
    Ok(TimerFd {
        clock,
        settime_flags,
        interval_ns,
        value_ns,
        deadline_ns,
        ticks,
    })
}

/// `shift`: how far the tree's clocks are ahead of torpor's, when the tree
/// gets a time namespace; `None` when it reads the host's clocks.
pub(super) fn open(
    s: &TimerFd,
    nonblock: bool,
    shift: Option<Offsets>,
) -> Result<i32, std::io::Error> {
    let mut flags = libc::TFD_CLOEXEC;
    if nonblock {
        flags |= libc::TFD_NONBLOCK;
    }
    // SAFETY: timerfd_create takes integers only.
    let f = owned(libc::c_long::from(unsafe {
        libc::timerfd_create(s.clock, flags)
    }))?;
    use std::os::fd::AsRawFd;
    let armed = s.value_ns > 0 || s.interval_ns > 0;
    if armed {
        let abs = s.settime_flags & (libc::TFD_TIMER_ABSTIME as u32) != 0;
        // An interval timer due at the freeze is due at once, not disarmed.
        let left = s.value_ns.max(1);
        let (value, set_flags) = if abs {
            let at = match shift.and_then(|o| o.for_clock(s.clock)) {
                _ if is_wall_clock(s.clock) => s.deadline_ns,
                // The deadline in the tree's namespace, in torpor's view.
                Some(ahead) if s.deadline_ns > 0 => {
                    // Beyond u64::MAX ns a deadline is never due, as at
                    // u64::MAX itself.
                    u64::try_from((i128::from(s.deadline_ns) - i128::from(ahead)).max(1))
                        .unwrap_or(u64::MAX)
                }
                // Past u64::MAX ns a timer is never due, as at u64::MAX.
                _ => now_ns(s.clock)?.saturating_add(left),
            };
            (at, s.settime_flags)
        } else {
            (left, s.settime_flags & !(libc::TFD_TIMER_ABSTIME as u32))
        };
        let its = libc::itimerspec {
            it_interval: timespec(s.interval_ns)?,
            it_value: timespec(value)?,
        };
        let set_flags = set_flags.bits();
        // SAFETY: timerfd_settime reads one itimerspec; no old value.
        if unsafe {
            libc::timerfd_settime(
                f.as_raw_fd(),
                set_flags,
                &raw const its,
                std::ptr::null_mut(),
            )
        } < 0
        {
            return Err(last_os());
        }
    }
    if s.ticks > 0 {
        let ticks = s.ticks;
        // SAFETY: TFD_IOC_SET_TICKS reads one u64.
        if unsafe { libc::ioctl(f.as_raw_fd(), TFD_IOC_SET_TICKS, &raw const ticks) } < 0 {
            let e = last_os();
            return Err(std::io::Error::new(
                e.kind(),
                format!("restoring {ticks} unread expirations: {e}"),
            ));
        }
    }
    Ok(into_raw(f))
}

impl super::AnonKind for TimerFd {
    const NAME: &'static str = "a timerfd";
    const CLAIM: super::Claim = super::Claim::Link("anon_inode:[timerfd]");

    fn collect(p: &super::Probe<'_>) -> Result<Self, crate::engine::Cause> {
        let path = format!("/proc/{}/fdinfo/{}", p.pid, p.fd);
        collect_from(&path).map_err(|e| p.bad_fdinfo(&path, &e))
    }

    fn open(&self, cx: &mut super::OpenCx<'_>) -> Result<i32, crate::engine::Cause> {
        Ok(open(self, cx.nonblock(), cx.shift)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The timespec fields are i64 here and i32 on 32-bit ARM.
    #[allow(clippy::useless_conversion)]
    #[test]
    fn timer_seconds_beyond_time_t_are_refused() {
        let r = timespec(u64::MAX);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if core::mem::size_of_val(&zero.tv_sec) == 4 {
            let e = r.expect_err("beyond a 32-bit time_t").to_string();
            assert_eq!(e, "timer seconds 18446744073 does not fit time_t");
        } else {
            let t = r.expect("fits a 64-bit time_t");
            assert_eq!(
                (i64::from(t.tv_sec), i64::from(t.tv_nsec)),
                (18_446_744_073, 709_551_615)
            );
        }
        let t = timespec(1_500_000_000).expect("small");
        assert_eq!(
            (i64::from(t.tv_sec), i64::from(t.tv_nsec)),
            (1, 500_000_000)
        );
    }

    #[test]
    fn fdinfo_text() {
        let t = collect("clockid: 0\nticks: 2\nsettime flags: 01\nit_value: (2, 951542206)\nit_interval: (1, 0)\n", 7).expect("valid");
        assert_eq!((t.clock, t.ticks, t.settime_flags), (0, 2, 1));
        assert_eq!((t.value_ns, t.interval_ns), (2_951_542_206, 1_000_000_000));
        assert_eq!(t.deadline_ns, 2_951_542_213);
        assert!(collect("clockid: 1\nticks: 0\n", 7).is_err());
        assert_eq!(pair_ns("(1, x)"), None);
    }
}

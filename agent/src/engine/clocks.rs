//! The tree's clocks: read at the freeze as the tree sees them, and at a
//! restore continued in a new time namespace (`CONFIG_TIME_NS`).
//!
//! ```text
//!  dump:    tree view = torpor's clock − torpor's offsets + the tree's
//!           offsets (/proc/PID/timens_offsets; 0 in the root namespace)
//!  restore: unshare(CLONE_NEWTIME)          torpor's children get a new ns
//!           /proc/self/timens_offsets       monotonic = at the dump
//!                                           boottime  = at the dump + the
//!                                           wall-clock time asleep
//!           fork the root                   the ns is frozen from here on
//!           setns(torpor's own ns)          torpor may clone threads again
//! ```
//!
//! The offsets must be written before any task enters the namespace; the
//! kernel also refuses `CLONE_VM` while a task's namespace and the one for
//! its children differ, hence the way back for torpor itself. The restored
//! tasks are in the namespace both ways, so their threads (`clone3` with
//! `CLONE_VM`) are allowed, and their `[vvar]` is faulted in afresh with the
//! namespace's page, so clocks read through the vDSO agree with the syscall.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::engine::state::{FileKind, OpenFile};
use crate::engine::{procfs, Cause};
use crate::image::records::Clocks;

const NS: i128 = 1_000_000_000;
const CLOCK_BOOTTIME_ALARM: i32 = 9;

/// How far one view of `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` is ahead of
/// another, in ns: a time namespace's offsets over the host, or the tree's
/// view over torpor's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    pub monotonic_ns: i64,
    pub boottime_ns: i64,
}

impl Offsets {
    /// The offset for timers on `clock`; `None` for clocks no namespace
    /// moves (the wall clocks).
    pub fn for_clock(&self, clock: i32) -> Option<i64> {
        match clock {
            libc::CLOCK_MONOTONIC => Some(self.monotonic_ns),
            libc::CLOCK_BOOTTIME | CLOCK_BOOTTIME_ALARM => Some(self.boottime_ns),
            _ => None,
        }
    }

    fn minus(self, o: Offsets) -> Offsets {
        Offsets {
            monotonic_ns: self.monotonic_ns.saturating_sub(o.monotonic_ns),
            boottime_ns: self.boottime_ns.saturating_sub(o.boottime_ns),
        }
    }
}

/// Parses `/proc/PID/timens_offsets`: `monotonic SEC NSEC` and `boottime
/// SEC NSEC` lines (SEC may be negative, NSEC is not).
pub fn parse_offsets(path: &str, text: &str) -> Result<Offsets, Cause> {
    let bad = |line: &str| Cause::Refused(format!("{path}: unreadable line {line:?}"));
    let mut o = Offsets::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut w = line.split_whitespace();
        let (Some(name), Some(sec), Some(nsec), None) = (w.next(), w.next(), w.next(), w.next())
        else {
            return Err(bad(line));
        };
        let sec: i64 = sec.parse().map_err(|_| bad(line))?;
        let nsec: u32 = nsec.parse().map_err(|_| bad(line))?;
        if i128::from(nsec) >= NS {
            return Err(bad(line));
        }
        let v = i64::try_from(i128::from(sec) * NS + i128::from(nsec)).map_err(|_| bad(line))?;
        match name {
            "monotonic" => o.monotonic_ns = v,
            "boottime" => o.boottime_ns = v,
            _ => return Err(bad(line)),
        }
    }
    Ok(o)
}

/// The text that sets `o` through `/proc/self/timens_offsets`.
pub fn format_offsets(o: Offsets) -> String {
    let split = |v: i64| (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000));
    let (ms, mn) = split(o.monotonic_ns);
    let (bs, bn) = split(o.boottime_ns);
    format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n")
}

/// True when the kernel has time namespaces.
pub fn kernel_has_timens() -> bool {
    Path::new("/proc/self/ns/time").exists()
}

/// The offsets of the time namespace `who` (a pid or `self`) gives its
/// children; all zero on a kernel without time namespaces.
fn offsets_of(who: &str) -> Result<Offsets, Cause> {
    let path = format!("/proc/{who}/timens_offsets");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_offsets(&path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Offsets::default()),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("reading {path}: {e}")).into()),
    }
}

/// Identity of a namespace file (`/proc/PID/ns/NAME`).
fn ns_id(who: &str, name: &str) -> Result<(u64, u64), Cause> {
    let path = format!("/proc/{who}/ns/{name}");
    let md = std::fs::metadata(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("reading {path}: {e}")))?;
    Ok((md.dev(), md.ino()))
}

/// `CLONE_NEWTIME`, which nix has no name for, as clone flags.
fn new_time() -> nix::sched::CloneFlags {
    nix::sched::CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)
}

/// `clock_gettime(clock)` in ns.
pub fn now_ns(clock: i32) -> Result<i128, Cause> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::from_raw(clock))
        .map_err(std::io::Error::from)?;
    Ok(i128::from(ts.tv_sec()) * NS + i128::from(ts.tv_nsec()))
}

/// Clock sums saturate rather than fail: a clock reading, a shift and a
/// deadline each fit 64 bits, so only a sum at the ends of the range clamps,
/// and a clamped deadline or offset still lies in the far future or past
/// (the kernel refuses a time namespace offset beyond its own range).
fn clamp_u64(v: i128) -> u64 {
    u64::try_from(v.max(0)).unwrap_or(u64::MAX)
}

/// See [`clamp_u64`].
fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// The tree's clocks, read once it is frozen, and how far the tree's view
/// is ahead of torpor's (for deadlines torpor reads on the tree's behalf).
#[derive(Debug, Clone, Copy)]
pub struct AtFreeze {
    pub record: Clocks,
    pub tree_over_torpor: Offsets,
}

/// Reads the clocks of the frozen tree `pids` (root first, live processes
/// only). Refuses a tree spread over several time namespaces, or with a
/// namespace made for children that have not been born: a restore puts the
/// whole tree in one namespace.
pub fn collect(pids: &[i32]) -> Result<AtFreeze, Cause> {
    let kernel_timens = kernel_has_timens();
    let mut own_namespace = false;
    let mut tree = Offsets::default();
    let mut mine = Offsets::default();
    if let (true, Some(&root)) = (kernel_timens, pids.first()) {
        let root_ns = ns_id(&root.to_string(), "time")?;
        for &pid in pids {
            let who = pid.to_string();
            if ns_id(&who, "time")? != root_ns {
                return Err(Cause::Unsupported(format!(
                    "process {pid} is in another time namespace than the root {root}: a restore puts the tree in one"
                )));
            }
            if ns_id(&who, "time_for_children")? != root_ns {
                return Err(Cause::Unsupported(format!(
                    "process {pid} made a time namespace for its children (unshare(CLONE_NEWTIME)), which torpor cannot keep"
                )));
            }
        }
        own_namespace = root_ns != ns_id("self", "time")?;
        tree = offsets_of(&root.to_string())?;
        mine = offsets_of("self")?;
    }
    let shift = tree.minus(mine);
    let mono = now_ns(libc::CLOCK_MONOTONIC)?;
    let boot = now_ns(libc::CLOCK_BOOTTIME)?;
    let real = now_ns(libc::CLOCK_REALTIME)?;
    Ok(AtFreeze {
        record: Clocks {
            monotonic_ns: clamp_u64(mono + i128::from(shift.monotonic_ns)),
            boottime_ns: clamp_u64(boot + i128::from(shift.boottime_ns)),
            realtime_ns: clamp_i64(real),
            monotonic_offset_ns: tree.monotonic_ns,
            boottime_offset_ns: tree.boottime_ns,
            own_namespace,
            kernel_timens,
        },
        tree_over_torpor: shift,
    })
}

/// Moves the absolute deadlines torpor read on the tree's behalf (timerfd
/// `deadline_ns`) into the tree's view of their clock.
pub fn to_tree_view(files: &mut [OpenFile], shift: Offsets) {
    for f in files {
        if let FileKind::TimerFd(t) = &mut f.kind {
            if let (Some(s), true) = (shift.for_clock(t.clock), t.deadline_ns > 0) {
                t.deadline_ns = clamp_u64(i128::from(t.deadline_ns) + i128::from(s));
            }
        }
    }
}

/// The offsets over the host that continue `c` now: `CLOCK_MONOTONIC` where
/// it stood at the dump, `CLOCK_BOOTTIME` where it stood plus the time the
/// wall clock moved forward since (nothing if it moved back).
pub fn continuing(
    c: &Clocks,
    host_monotonic_ns: i128,
    host_boottime_ns: i128,
    realtime_ns: i128,
) -> Offsets {
    let asleep = (realtime_ns - i128::from(c.realtime_ns)).max(0);
    Offsets {
        monotonic_ns: clamp_i64(i128::from(c.monotonic_ns) - host_monotonic_ns),
        boottime_ns: clamp_i64(i128::from(c.boottime_ns) + asleep - host_boottime_ns),
    }
}

/// Which clocks a restored tree reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockMode {
    /// Its own time namespace, continuing the clocks of the dump with these
    /// offsets over the host.
    Namespace(Offsets),
    /// The host's clocks, for the reason given.
    Host(String),
}

impl std::fmt::Display for ClockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClockMode::Namespace(o) => write!(
                f,
                "the tree has its own time namespace: CLOCK_MONOTONIC continues from the dump, CLOCK_BOOTTIME also counts the time asleep (offsets over the host: monotonic {} ns, boottime {} ns)",
                o.monotonic_ns, o.boottime_ns
            ),
            ClockMode::Host(why) => write!(
                f,
                "the tree reads the host's CLOCK_MONOTONIC and CLOCK_BOOTTIME, which moved since the dump (backwards after a reboot): {why}"
            ),
        }
    }
}

/// A time namespace made for torpor's children, not yet entered by any:
/// the restore forks the root while it lives, then [`ChildTimeNs::leave`]s.
#[derive(Debug)]
pub struct ChildTimeNs {
    /// torpor's own time namespace, to return to.
    own: File,
    /// The namespace's offsets over the host.
    pub offsets: Offsets,
    /// How far the tree's view is ahead of torpor's.
    pub tree_over_torpor: Offsets,
    left: bool,
}

fn single_threaded() -> Result<bool, Cause> {
    let st = procfs::read("/proc/self/status")?;
    Ok(st
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        == Some(1))
}

/// Makes the time namespace the restored tree will live in, or says why the
/// tree reads the host's clocks: `host_clocks` asked for, no clocks record
/// (an image of format 1.0), no time namespaces in the kernel, not
/// permitted. Other failures are errors.
pub fn prepare(
    c: Option<&Clocks>,
    host_clocks: bool,
) -> Result<(Option<ChildTimeNs>, ClockMode), Cause> {
    let host = |why: &str| Ok((None, ClockMode::Host(why.to_string())));
    let Some(c) = c else {
        return host("the image holds no clocks record (format 1.0)");
    };
    if host_clocks {
        return host("--no-timens (restore.timens = false) asks for them");
    }
    if !kernel_has_timens() {
        return host("this kernel has no time namespaces (CONFIG_TIME_NS)");
    }
    if !single_threaded()? {
        return host("torpor runs several threads here and could not leave a time namespace again");
    }
    let own = File::open("/proc/self/ns/time")
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening /proc/self/ns/time: {e}")))?;
    let mine = offsets_of("self")?;
    // This changes only the namespace of torpor's future children.
    if let Err(e) = nix::sched::unshare(new_time()) {
        let e = std::io::Error::from(e);
        if e.raw_os_error() == Some(libc::EPERM) {
            return host("creating a time namespace is not permitted (needs CAP_SYS_ADMIN)");
        }
        return Err(std::io::Error::new(e.kind(), format!("unshare(CLONE_NEWTIME): {e}")).into());
    }
    let mut ns = ChildTimeNs {
        own,
        offsets: Offsets::default(),
        tree_over_torpor: Offsets::default(),
        left: false,
    };
    let host_mono = now_ns(libc::CLOCK_MONOTONIC)? - i128::from(mine.monotonic_ns);
    let host_boot = now_ns(libc::CLOCK_BOOTTIME)? - i128::from(mine.boottime_ns);
    let offsets = continuing(c, host_mono, host_boot, now_ns(libc::CLOCK_REALTIME)?);
    let text = format_offsets(offsets);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/timens_offsets")
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        ns.leave()?;
        if e.raw_os_error() == Some(libc::EPERM) {
            return host("setting time namespace offsets is not permitted (needs CAP_SYS_TIME)");
        }
        return Err(std::io::Error::new(
            e.kind(),
            format!(
                "writing {:?} to /proc/self/timens_offsets: {e}",
                text.trim_end()
            ),
        )
        .into());
    }
    ns.offsets = offsets;
    ns.tree_over_torpor = offsets.minus(mine);
    Ok((Some(ns), ClockMode::Namespace(offsets)))
}

impl ChildTimeNs {
    /// Back to torpor's own namespace for its children; the tasks already
    /// forked stay in the new one.
    pub fn leave(&mut self) -> Result<(), Cause> {
        if self.left {
            return Ok(());
        }
        if let Err(e) = nix::sched::setns(&self.own, new_time()) {
            let e = std::io::Error::from(e);
            return Err(std::io::Error::new(
                e.kind(),
                format!("returning to torpor's time namespace: {e}"),
            )
            .into());
        }
        self.left = true;
        Ok(())
    }
}

impl Drop for ChildTimeNs {
    fn drop(&mut self) {
        // A failed restore: torpor goes on with its own namespace.
        let _ = self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_read_and_write_the_kernel_format() {
        let o = parse_offsets(
            "t",
            "monotonic           -5    250000000\nboottime            3         7\n",
        )
        .expect("valid");
        assert_eq!(
            o,
            Offsets {
                monotonic_ns: -4_750_000_000,
                boottime_ns: 3_000_000_007
            }
        );
        assert_eq!(format_offsets(o), "monotonic -5 250000000\nboottime 3 7\n");
        assert_eq!(
            parse_offsets("t", &format_offsets(o)).expect("round trip"),
            o
        );
        assert!(parse_offsets("t", "monotonic 1 1000000000\n").is_err());
        assert!(parse_offsets("t", "realtime 1 0\n").is_err());
        assert!(parse_offsets("t", "monotonic 1\n").is_err());
        assert_eq!(parse_offsets("t", "").expect("empty"), Offsets::default());
    }

    #[test]
    fn monotonic_continues_and_boottime_counts_the_sleep() {
        let c = Clocks {
            monotonic_ns: 50_000_000_000,
            boottime_ns: 60_000_000_000,
            realtime_ns: 1_700_000_000_000_000_000,
            ..Clocks::default()
        };
        // Ten seconds asleep, host clocks after a reboot near 3 s and 4 s.
        let o = continuing(&c, 3_000_000_000, 4_000_000_000, 1_700_000_010_000_000_000);
        assert_eq!(
            o,
            Offsets {
                monotonic_ns: 47_000_000_000,
                boottime_ns: 66_000_000_000
            }
        );
        // The wall clock went back (an RTC-less board): no sleep counted.
        let o = continuing(&c, 3_000_000_000, 4_000_000_000, 5_000_000_000);
        assert_eq!(
            o,
            Offsets {
                monotonic_ns: 47_000_000_000,
                boottime_ns: 56_000_000_000
            }
        );
    }

    #[test]
    fn only_monotonic_and_boottime_timers_move() {
        let o = Offsets {
            monotonic_ns: -7,
            boottime_ns: 9,
        };
        assert_eq!(o.for_clock(libc::CLOCK_MONOTONIC), Some(-7));
        assert_eq!(o.for_clock(libc::CLOCK_BOOTTIME), Some(9));
        assert_eq!(o.for_clock(CLOCK_BOOTTIME_ALARM), Some(9));
        assert_eq!(o.for_clock(libc::CLOCK_REALTIME), None);
    }
}

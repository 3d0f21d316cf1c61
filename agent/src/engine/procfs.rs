//! Parsers for the `/proc` files the dump reads. Each parser takes the
//! file's text so it can be tested on fixed samples; the `read_*` helpers
//! fetch the live file.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("{path}: malformed: {what}")]
    Malformed { path: String, what: String },
}

pub fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|err| ProcError::Io {
        path: path.to_string(),
        err,
    })
}

fn bad(path: &str, what: impl Into<String>) -> ProcError {
    ProcError::Malformed {
        path: path.to_string(),
        what: what.into(),
    }
}

/// Fields of `/proc/PID/stat` the engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Field 7: the controlling terminal's device number, 0 for none.
    pub tty_nr: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Field 52: the wait status of an exited task (a zombie's exit code),
    /// 0 while it runs; absent on old kernels.
    pub exit_code: i32,
    /// Field 19: -20..=19.
    pub nice: i32,
    /// Field 40: the real-time priority, 0 outside `SCHED_FIFO`/`RR`.
    pub rt_priority: u32,
    /// Field 41: the scheduling policy, without `SCHED_RESET_ON_FORK`.
    pub policy: u32,
}

pub fn parse_stat(path: &str, text: &str) -> Result<Stat, ProcError> {
    // comm may hold spaces and parentheses: fields start after the last ')'.
    let close = text
        .rfind(')')
        .ok_or_else(|| bad(path, "no ')' after comm"))?;
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    let get = |n: usize| -> Result<&str, ProcError> {
        f.get(n - 3)
            .copied()
            .ok_or_else(|| bad(path, format!("missing field {n}")))
    };
    let num = |n: usize| -> Result<u64, ProcError> {
        get(n)?
            .parse::<u64>()
            .map_err(|_| bad(path, format!("field {n} is not a number")))
    };
    let int = |n: usize| -> Result<i32, ProcError> {
        get(n)?
            .parse::<i32>()
            .map_err(|_| bad(path, format!("field {n} is not a number")))
    };
    Ok(Stat {
        state: get(3)?.chars().next().unwrap_or('?'),
        ppid: int(4)?,
        pgid: int(5)?,
        sid: int(6)?,
        tty_nr: num(7)?,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
        exit_code: get(52).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        nice: int(19)?,
        rt_priority: int(40)?
            .try_into()
            .map_err(|_| bad(path, "field 40 is negative"))?,
        policy: int(41)?
            .try_into()
            .map_err(|_| bad(path, "field 41 is negative"))?,
    })
}

/// Fields of `/proc/PID/status` the engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: u32,
    pub sig_blocked: u64,
    pub sig_pending: u64,
    pub shd_pending: u64,
    /// CapInh, CapPrm, CapEff, CapBnd, CapAmb.
    pub caps: [u64; 5],
    pub no_new_privs: bool,
    /// `Seccomp`: 0 none, 1 strict, 2 filters.
    pub seccomp: u32,
    /// `Seccomp_filters`: how many filters the task runs under.
    pub seccomp_filters: u32,
}

pub fn parse_status(path: &str, text: &str) -> Result<Status, ProcError> {
    let mut s = Status::default();
    let mut seen_uid = false;
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let ids = |v: &str| -> Result<[u32; 4], ProcError> {
            let n: Vec<u32> = v
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if n.len() != 4 {
                return Err(bad(path, format!("{key} needs 4 ids")));
            }
            Ok([n[0], n[1], n[2], n[3]])
        };
        let hex = |v: &str| {
            u64::from_str_radix(v, 16).map_err(|_| bad(path, format!("{key} is not hex")))
        };
        match key {
            "Uid" => {
                s.uids = ids(val)?;
                seen_uid = true;
            }
            "Gid" => s.gids = ids(val)?,
            "Groups" => {
                s.groups = val
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            }
            "Umask" => {
                s.umask =
                    u32::from_str_radix(val, 8).map_err(|_| bad(path, "Umask is not octal"))?;
            }
            "SigBlk" => s.sig_blocked = hex(val)?,
            "SigPnd" => s.sig_pending = hex(val)?,
            "ShdPnd" => s.shd_pending = hex(val)?,
            "CapInh" => s.caps[0] = hex(val)?,
            "CapPrm" => s.caps[1] = hex(val)?,
            "CapEff" => s.caps[2] = hex(val)?,
            "CapBnd" => s.caps[3] = hex(val)?,
            "CapAmb" => s.caps[4] = hex(val)?,
            "NoNewPrivs" => s.no_new_privs = val == "1",
            "Seccomp" => {
                s.seccomp = val
                    .parse()
                    .map_err(|_| bad(path, "Seccomp is not a number"))?
            }
            "Seccomp_filters" => {
                s.seccomp_filters = val
                    .parse()
                    .map_err(|_| bad(path, "Seccomp_filters is not a number"))?;
            }
            _ => {}
        }
    }
    if !seen_uid {
        return Err(bad(path, "no Uid line"));
    }
    Ok(s)
}

/// One mapping from `/proc/PID/smaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path or pseudo name (`[heap]`, `[stack]`, `[vdso]`...), empty if anonymous.
    pub name: String,
    /// The two-letter VmFlags (`rd`, `wr`, `gd`, `dd`...).
    pub vm_flags: Vec<String>,
    /// smaps `Anonymous:` and `Swap:` in kB (None from plain `maps`): a
    /// mapping with neither holds no page a dump must store, whatever its
    /// size, so its pagemap need not be read.
    pub anon_kb: Option<u64>,
    pub swap_kb: Option<u64>,
}

impl MapEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
}

fn parse_map_header(path: &str, line: &str) -> Result<MapEntry, ProcError> {
    let mut it = line.splitn(6, ' ');
    let range = it.next().unwrap_or("");
    let perms = it.next().unwrap_or("");
    let offset = it.next().unwrap_or("");
    let dev = it.next().unwrap_or("");
    let inode = it.next().unwrap_or("");
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| bad(path, format!("bad range in {line:?}")))?;
    let hex = |v: &str| u64::from_str_radix(v, 16).map_err(|_| bad(path, format!("bad hex {v:?}")));
    let (maj, min) = dev
        .split_once(':')
        .ok_or_else(|| bad(path, format!("bad dev in {line:?}")))?;
    let p = perms.as_bytes();
    if p.len() != 4 {
        return Err(bad(path, format!("bad perms in {line:?}")));
    }
    Ok(MapEntry {
        start: hex(a)?,
        end: hex(b)?,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        shared: p[3] == b's',
        offset: hex(offset)?,
        dev_major: u32::from_str_radix(maj, 16).map_err(|_| bad(path, "bad dev major"))?,
        dev_minor: u32::from_str_radix(min, 16).map_err(|_| bad(path, "bad dev minor"))?,
        inode: inode
            .parse()
            .map_err(|_| bad(path, format!("bad inode in {line:?}")))?,
        name,
        vm_flags: Vec::new(),
        anon_kb: None,
        swap_kb: None,
    })
}

/// Parses `/proc/PID/smaps` (or `maps`, which lacks VmFlags).
pub fn parse_smaps(path: &str, text: &str) -> Result<Vec<MapEntry>, ProcError> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        smaps_line(path, line, &mut out)?;
    }
    Ok(out)
}

/// Reads and parses `/proc/PID/smaps` line by line: the file runs to about
/// 1.5 KiB per mapping, so a process with thousands of mappings would
/// otherwise cost megabytes of text held at once.
pub fn read_smaps(path: &str) -> Result<Vec<MapEntry>, ProcError> {
    use std::io::BufRead;
    let io_err = |err| ProcError::Io {
        path: path.to_string(),
        err,
    };
    let f = std::fs::File::open(path).map_err(io_err)?;
    let mut rd = io::BufReader::with_capacity(4096, f);
    let mut out: Vec<MapEntry> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).map_err(io_err)? == 0 {
            return Ok(out);
        }
        smaps_line(path, line.trim_end_matches('\n'), &mut out)?;
    }
}

/// One line of smaps: a mapping's header starts an entry, the fields that
/// follow fill it in.
fn smaps_line(path: &str, line: &str, out: &mut Vec<MapEntry>) -> Result<(), ProcError> {
    let first = line.split(' ').next().unwrap_or("");
    if first.contains('-') && !first.ends_with(':') {
        out.push(parse_map_header(path, line)?);
    } else if let Some((key @ ("Anonymous" | "Swap"), v)) = line.split_once(':') {
        let last = out
            .last_mut()
            .ok_or_else(|| bad(path, "smaps field before any mapping"))?;
        let kb = v
            .trim()
            .strip_suffix(" kB")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| bad(path, format!("bad {key} line {line:?}")))?;
        if key == "Swap" {
            last.swap_kb = Some(kb);
        } else {
            last.anon_kb = Some(kb);
        }
    } else if let Some(flags) = line.strip_prefix("VmFlags:") {
        let last = out
            .last_mut()
            .ok_or_else(|| bad(path, "VmFlags before any mapping"))?;
        last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
    }
    Ok(())
}

/// `/proc/PID/fdinfo/N`: position, open flags (octal) and mount id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    pub flags: u32,
    pub mnt_id: u64,
}

pub fn parse_fdinfo(path: &str, text: &str) -> Result<FdInfo, ProcError> {
    let mut fi = FdInfo::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => fi.pos = v.parse().map_err(|_| bad(path, "bad pos"))?,
            "flags" => {
                fi.flags = u32::from_str_radix(v, 8).map_err(|_| bad(path, "bad flags"))?;
                seen = true;
            }
            "mnt_id" => fi.mnt_id = v.parse().map_err(|_| bad(path, "bad mnt_id"))?,
            _ => {}
        }
    }
    if !seen {
        return Err(bad(path, "no flags line"));
    }
    Ok(fi)
}

/// One entry of `/proc/PID/timers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerEntry {
    pub id: i32,
    pub signo: i32,
    pub value: u64,
    /// SIGEV_SIGNAL (0), SIGEV_NONE (1), SIGEV_THREAD (2), | SIGEV_THREAD_ID (4).
    pub notify: i32,
    pub target: i32,
    pub clock: i32,
}

/// Parses `/proc/PID/timers`: blocks of `ID:`, `signal: SIG/VALUE`,
/// `notify: KIND/pid.N` or `KIND/tid.N`, `ClockID:`.
pub fn parse_timers(path: &str, text: &str) -> Result<Vec<TimerEntry>, ProcError> {
    let mut out: Vec<TimerEntry> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let num = |x: &str| {
            x.parse::<i32>()
                .map_err(|_| bad(path, format!("bad number in {line:?}")))
        };
        if k == "ID" {
            out.push(TimerEntry {
                id: num(v)?,
                ..Default::default()
            });
            continue;
        }
        let t = out
            .last_mut()
            .ok_or_else(|| bad(path, format!("{k} before any ID")))?;
        match k {
            "signal" => {
                let (sig, val) = v
                    .split_once('/')
                    .ok_or_else(|| bad(path, format!("bad signal in {line:?}")))?;
                t.signo = num(sig)?;
                let val = val.trim_start_matches("0x");
                t.value = u64::from_str_radix(val, 16)
                    .map_err(|_| bad(path, format!("bad value in {line:?}")))?;
            }
            "notify" => {
                let (kind, who) = v
                    .split_once('/')
                    .ok_or_else(|| bad(path, format!("bad notify in {line:?}")))?;
                let base = match kind {
                    "signal" => 0,
                    "none" => 1,
                    "thread" => 2,
                    _ => return Err(bad(path, format!("unknown notify {kind:?}"))),
                };
                let (scope, id) = who
                    .split_once('.')
                    .ok_or_else(|| bad(path, format!("bad notify in {line:?}")))?;
                t.notify = base | if scope == "tid" { 4 } else { 0 };
                t.target = num(id)?;
            }
            "ClockID" => t.clock = num(v)?,
            _ => {}
        }
    }
    Ok(out)
}

/// `/proc/PID/limits`: (soft, hard) per resource in RLIMIT order;
/// `unlimited` is `u64::MAX`. Readable where prlimit(2) on another user's
/// process is not (it needs CAP_SYS_RESOURCE).
pub fn parse_limits(path: &str, text: &str) -> Result<Vec<(u64, u64)>, ProcError> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        // The name column is 26 characters wide and may contain spaces.
        let rest = line
            .get(26..)
            .ok_or_else(|| bad(path, format!("short line {line:?}")))?;
        let mut f = rest.split_whitespace();
        let mut val = || -> Result<u64, ProcError> {
            match f.next() {
                Some("unlimited") => Ok(u64::MAX),
                Some(v) => v
                    .parse()
                    .map_err(|_| bad(path, format!("bad limit in {line:?}"))),
                None => Err(bad(path, format!("missing limit in {line:?}"))),
            }
        };
        let soft = val()?;
        let hard = val()?;
        out.push((soft, hard));
    }
    if out.is_empty() {
        return Err(bad(path, "no limits"));
    }
    Ok(out)
}

/// The kind-specific part of `/proc/PID/fdinfo/N` for the anonymous-inode
/// files torpor recreates.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonInfo {
    EventFd {
        count: u64,
        semaphore: bool,
    },
    SignalFd {
        mask: u64,
    },
    /// Times as (seconds, nanoseconds); `value` is the time left.
    TimerFd {
        clock: i32,
        value: (i64, i64),
        interval: (i64, i64),
        ticks: u64,
    },
    /// Watched fds: (fd, events, data).
    Epoll {
        targets: Vec<(i32, u32, u64)>,
    },
}

#[cfg(test)]
fn pair(path: &str, v: &str) -> Result<(i64, i64), ProcError> {
    let inner = v.trim().trim_start_matches('(').trim_end_matches(')');
    let (a, b) = inner
        .split_once(',')
        .ok_or_else(|| bad(path, format!("bad time {v:?}")))?;
    let n = |x: &str| {
        x.trim()
            .parse::<i64>()
            .map_err(|_| bad(path, format!("bad time {v:?}")))
    };
    Ok((n(a)?, n(b)?))
}

/// Parses the fdinfo of an `anon_inode:[eventfd|signalfd|timerfd|eventpoll]`.
#[cfg(test)]
pub fn parse_anon_fdinfo(path: &str, kind: &str, text: &str) -> Result<AnonInfo, ProcError> {
    let field = |name: &str| -> Option<&str> {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(str::trim)
        })
    };
    let need = |name: &str| field(name).ok_or_else(|| bad(path, format!("no {name} line")));
    let hex = |v: &str| {
        u64::from_str_radix(v.trim(), 16).map_err(|_| bad(path, format!("bad hex {v:?}")))
    };
    match kind {
        "eventfd" => Ok(AnonInfo::EventFd {
            count: hex(need("eventfd-count")?)?,
            semaphore: field("eventfd-semaphore") == Some("1"),
        }),
        "signalfd" => Ok(AnonInfo::SignalFd {
            mask: hex(need("sigmask")?)?,
        }),
        "timerfd" => Ok(AnonInfo::TimerFd {
            clock: need("clockid")?
                .parse()
                .map_err(|_| bad(path, "bad clockid"))?,
            value: pair(path, need("it_value")?)?,
            interval: pair(path, need("it_interval")?)?,
            ticks: need("ticks")?.parse().map_err(|_| bad(path, "bad ticks"))?,
        }),
        "eventpoll" => {
            let mut targets = Vec::new();
            for l in text.lines().filter(|l| l.starts_with("tfd:")) {
                // tfd: %8d events: %8x data: %16llx  pos:... ino:... sdev:...
                let f: Vec<&str> = l.split_whitespace().collect();
                let at = |k: &str| {
                    f.iter()
                        .position(|x| *x == k)
                        .and_then(|i| f.get(i + 1))
                        .copied()
                };
                let tfd = at("tfd:")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad(path, format!("bad {l:?}")))?;
                let ev = at("events:").ok_or_else(|| bad(path, format!("bad {l:?}")))?;
                let data = at("data:").ok_or_else(|| bad(path, format!("bad {l:?}")))?;
                let events = u32::from_str_radix(ev, 16)
                    .map_err(|_| bad(path, format!("bad events in {l:?}")))?;
                targets.push((tfd, events, hex(data)?));
            }
            Ok(AnonInfo::Epoll { targets })
        }
        other => Err(bad(path, format!("no parser for anon_inode:[{other}]"))),
    }
}

/// pagemap entry bits.
pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAP: u64 = 1 << 62;
/// Set when the page is file-backed or shared-anonymous.
pub const PM_FILE: u64 = 1 << 61;

/// Direct children of every thread of `pid`.
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for tid in threads(pid)? {
        let path = format!("/proc/{pid}/task/{tid}/children");
        match std::fs::read_to_string(&path) {
            Ok(t) => out.extend(t.split_whitespace().filter_map(|x| x.parse::<i32>().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(ProcError::Io { path, err }),
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Thread ids of `pid`, sorted.
pub fn threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&path).map_err(|err| ProcError::Io {
        path: path.clone(),
        err,
    })?;
    let mut out: Vec<i32> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Open fd numbers of `pid`, sorted.
pub fn fds(pid: i32) -> Result<Vec<i32>, ProcError> {
    let path = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&path).map_err(|err| ProcError::Io {
        path: path.clone(),
        err,
    })?;
    let mut out: Vec<i32> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The target of a /proc link as the kernel gave it, bytes and all.
pub fn readlink_raw(path: &str) -> Result<crate::image::records::RawPath, ProcError> {
    std::fs::read_link(path)
        .map(|p| crate::image::records::RawPath::from(p.as_path()))
        .map_err(|err| ProcError::Io {
            path: path.to_string(),
            err,
        })
}

pub fn readlink(path: &str) -> Result<String, ProcError> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|err| ProcError::Io {
            path: path.to_string(),
            err,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (my (odd) prog) S 1 4242 4242 34816 4242 4194304 100 0 0 0 1 2 0 0 15 -5 1 0 12345 2252800 200 18446744073709551615 94000000000000 94000000004000 140730000000000 0 0 0 0 0 0 0 0 0 17 1 7 1 0 0 0 94000000010000 94000000010600 94000001000000 140730000001000 140730000001020 140730000001020 140730000001100 768\n";

    #[test]
    fn stat_fields_after_odd_comm() {
        let s = parse_stat("stat", STAT).expect("valid");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgid, s.sid), (1, 4242, 4242));
        assert_eq!(s.tty_nr, 34816);
        assert_eq!(s.start_code, 94_000_000_000_000);
        assert_eq!(s.end_code, 94_000_000_004_000);
        assert_eq!(s.start_stack, 140_730_000_000_000);
        assert_eq!(s.start_data, 94_000_000_010_000);
        assert_eq!(s.end_data, 94_000_000_010_600);
        assert_eq!(s.start_brk, 94_000_001_000_000);
        assert_eq!(s.arg_start, 140_730_000_001_000);
        assert_eq!(s.arg_end, 140_730_000_001_020);
        assert_eq!(s.env_start, 140_730_000_001_020);
        assert_eq!(s.env_end, 140_730_000_001_100);
        assert_eq!(s.exit_code, 768);
        assert_eq!((s.nice, s.rt_priority, s.policy), (-5, 7, 1));
    }

    #[test]
    fn stat_truncated_is_an_error() {
        assert!(parse_stat("stat", "1 (x) S 0 1 1").is_err());
        assert!(parse_stat("stat", "garbage").is_err());
    }

    #[test]
    fn status_ids_umask_masks() {
        let t = "Name:\tx\nUmask:\t0027\nState:\tS\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\nGroups:\t4 24 27 \nSigPnd:\t0000000000000100\nShdPnd:\t0000000000004000\nSigBlk:\t0000000000010002\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffdfff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let s = parse_status("status", t).expect("valid");
        assert_eq!(s.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gids, [5, 6, 7, 8]);
        assert_eq!(s.groups, vec![4, 24, 27]);
        assert_eq!(s.umask, 0o027);
        assert_eq!(s.sig_pending, 0x100);
        assert_eq!(s.shd_pending, 0x4000);
        assert_eq!(s.sig_blocked, 0x10002);
        assert_eq!(
            s.caps,
            [0, 0x1ff_feff_ffff, 0x1ff_feff_dfff, 0x1ff_feff_ffff, 0]
        );
        assert!(s.no_new_privs);
        assert!(parse_status("status", "Name: x\n").is_err());
    }

    #[test]
    fn smaps_headers_and_flags() {
        let t = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:00 325843                     /usr/bin/my prog
Size:                  4 kB
VmFlags: rd mr mw me dw sd
55d0c0c00000-55d0c0c21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Anonymous:            12 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me ac sd
7ffd26757000-7ffd26778000 rw-s 00001000 00:05 77                         /dev/zero (deleted)
VmFlags: rd wr sh mr mw me ms gd
";
        let m = parse_smaps("smaps", t).expect("valid");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].start, 0x55d0_c0a0_0000);
        assert_eq!(m[0].end, 0x55d0_c0a0_1000);
        assert!(m[0].read && !m[0].write && !m[0].exec && !m[0].shared);
        assert_eq!(
            (m[0].dev_major, m[0].dev_minor, m[0].inode),
            (0xfe, 0, 325_843)
        );
        assert_eq!(m[0].name, "/usr/bin/my prog");
        assert_eq!(m[1].name, "[heap]");
        assert!(m[1].has_flag("ac"));
        assert_eq!((m[1].anon_kb, m[1].swap_kb), (Some(12), Some(4)));
        assert_eq!((m[0].anon_kb, m[0].swap_kb), (None, None));
        assert!(m[2].shared && m[2].has_flag("gd"));
        assert_eq!(m[2].offset, 0x1000);
        assert!(parse_smaps("smaps", "zzzz-1000 rw-p 0 0:0 0\n").is_err());

        // Streamed from a file, line by line, the same entries come out,
        // and bad lines are refused the same way.
        let dir = std::env::temp_dir().join(format!("torpor-smaps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("smaps");
        std::fs::write(&file, t).expect("write sample");
        let path = file.to_str().expect("utf-8 temp path");
        assert_eq!(read_smaps(path).expect("valid"), m);
        std::fs::write(&file, "Anonymous: 4 kB\n").expect("write sample");
        let err = read_smaps(path).expect_err("field before mapping");
        assert!(
            err.to_string().contains("smaps field before any mapping"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert!(matches!(read_smaps(path), Err(ProcError::Io { .. })));
    }

    #[test]
    fn fdinfo_pos_and_octal_flags() {
        let f = parse_fdinfo(
            "fdinfo",
            "pos:\t1234\nflags:\t02102001\nmnt_id:\t27\nino:\t5\n",
        )
        .expect("valid");
        assert_eq!(f.pos, 1234);
        assert_eq!(f.flags, 0o2_102_001);
        assert_eq!(f.mnt_id, 27);
        assert!(parse_fdinfo("fdinfo", "pos: 1\n").is_err());
    }

    #[test]
    fn limits_table() {
        let t = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax file size             1024                 unlimited            bytes     \nMax open files            512                  1024                 files     \n";
        let v = parse_limits("limits", t).expect("valid");
        assert_eq!(v, vec![(u64::MAX, u64::MAX), (1024, u64::MAX), (512, 1024)]);
        assert!(parse_limits("limits", "Limit   x\nMax cpu\n").is_err());
        let pid = i32::try_from(std::process::id()).expect("pid");
        let live = parse_limits(
            "limits",
            &read(&format!("/proc/{pid}/limits")).expect("limits"),
        )
        .expect("parse");
        assert_eq!(live.len(), 16);
    }

    #[test]
    fn anon_inode_fdinfo() {
        let ev = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:                5\neventfd-id: 6\neventfd-semaphore: 1\n";
        assert_eq!(
            parse_anon_fdinfo("f", "eventfd", ev).expect("ev"),
            AnonInfo::EventFd {
                count: 5,
                semaphore: true
            }
        );
        let sf = "pos:\t0\nflags:\t02\nsigmask:\t0000000000000200\n";
        assert_eq!(
            parse_anon_fdinfo("f", "signalfd", sf).expect("sf"),
            AnonInfo::SignalFd { mask: 0x200 }
        );
        let tf = "clockid: 1\nticks: 0\nsettime flags: 00\nit_value: (99, 980730296)\nit_interval: (1, 0)\n";
        assert_eq!(
            parse_anon_fdinfo("f", "timerfd", tf).expect("tf"),
            AnonInfo::TimerFd {
                clock: 1,
                value: (99, 980_730_296),
                interval: (1, 0),
                ticks: 0
            }
        );
        let ep = "pos:\t0\nflags:\t02\ntfd:        5 events:       19 data:                7  pos:0 ino:40e sdev:f\ntfd:       12 events:        1 data:     7f0000001234  pos:0 ino:1 sdev:f\n";
        assert_eq!(
            parse_anon_fdinfo("f", "eventpoll", ep).expect("ep"),
            AnonInfo::Epoll {
                targets: vec![(5, 0x19, 7), (12, 1, 0x7f00_0000_1234)]
            }
        );
        assert!(parse_anon_fdinfo("f", "eventfd", "pos: 0\n").is_err());
        assert!(parse_anon_fdinfo(
            "f",
            "timerfd",
            "clockid: 1\nit_value: 99\nit_interval: (1, 0)\n"
        )
        .is_err());
        assert!(parse_anon_fdinfo("f", "inotify", "").is_err());
    }

    #[test]
    fn timers_blocks() {
        let t = "ID: 0\nsignal: 35/000000000000feed\nnotify: signal/pid.4242\nClockID: 1\nID: 3\nsignal: 14/0000000000000000\nnotify: signal/tid.4250\nClockID: 0\n";
        let v = parse_timers("timers", t).expect("valid");
        assert_eq!(
            v,
            vec![
                TimerEntry {
                    id: 0,
                    signo: 35,
                    value: 0xfeed,
                    notify: 0,
                    target: 4242,
                    clock: 1
                },
                TimerEntry {
                    id: 3,
                    signo: 14,
                    value: 0,
                    notify: 4,
                    target: 4250,
                    clock: 0
                },
            ]
        );
        assert!(parse_timers("timers", "signal: 1/0\n").is_err());
        assert!(parse_timers("timers", "ID: 1\nnotify: weird/pid.1\n").is_err());
    }

    // The ARMv6 and AArch64 unit tests run under qemu-user, whose
    // /proc/self/stat is qemu's own rendering with fewer fields than the
    // kernel's; the real ARM kernel's /proc is exercised by every dump on the
    // emulated Pi Zero bench.
    #[test]
    #[cfg(not(any(target_arch = "arm", target_arch = "aarch64")))]
    fn live_self() {
        let pid = i32::try_from(std::process::id()).expect("pid fits");
        let s =
            parse_stat("stat", &read(&format!("/proc/{pid}/stat")).expect("stat")).expect("parse");
        assert!(s.start_code > 0 && s.arg_start < s.arg_end);
        let m = parse_smaps(
            "smaps",
            &read(&format!("/proc/{pid}/smaps")).expect("smaps"),
        )
        .expect("parse");
        assert!(m.iter().any(|e| e.name == "[stack]" && e.has_flag("gd")));
        assert!(threads(pid).expect("threads").contains(&pid));
    }
}

//! Host end-to-end tests: every test app of `tests/apps`, three ways.
//!
//! - `control`: the app alone (start → READY → go → `PASS`), proving the app
//!   itself is right.
//! - `negative`: each `--selftest-fail=WHAT` perturbation of the app's own
//!   state must turn into `FAIL <name>: ...` and exit 1, proving each check
//!   can fail.
//! - `checkpoint`: start → READY → `torpor dump` (the tree is killed) →
//!   `torpor restore` → the same again → go → `PASS`, exit 0.
//! - `lazy`: the checkpoint run with `torpor restore --lazy`, which must
//!   say it served pages lazily (not fall back to an eager restore).
//!
//! A `torpor` binary without the `dump` and `restore` commands fails every
//! checkpoint test with a message naming the command it lacks.

#[path = "e2e/harness.rs"]
mod harness;

fn must<T>(result: Result<T, String>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("\n{e}\n"),
    }
}

/// Control, negative and checkpoint tests for one app.
macro_rules! app_tests {
    (
        $module:ident, $app:literal,
        args: [$($arg:literal),*],
        checkpoint_args: [$($carg:literal),*],
        negative_args: [$($narg:literal),*],
        negatives: [$($what:literal),+ $(,)?] $(,)?
    ) => {
        mod $module {
            use super::*;

            #[test]
            fn control() {
                let _one = harness::one_at_a_time($app);
                let log = must(harness::control_run($app, &[$($arg),*]));
                check_log($app, &log);
            }

            #[test]
            fn negative() {
                let _one = harness::one_at_a_time($app);
                must(harness::negative_runs($app, &[$($narg),*], &[$($what),+]));
            }

            #[test]
            fn checkpoint() {
                let _one = harness::one_at_a_time($app);
                let log = must(harness::checkpoint_run($app, &[$($carg),*], 2));
                check_log($app, &log);
            }

            /// The same checkpoint run, each restore lazy: the app runs
            /// while its pages arrive, and checks every byte as before.
            #[test]
            fn lazy() {
                let _one = harness::one_at_a_time($app);
                let log = must(harness::checkpoint_run_with(
                    $app,
                    &[$($carg),*],
                    2,
                    &["--lazy"],
                    &|_, _| Ok(()),
                    &|_, _, _| Ok(()),
                ));
                check_log($app, &log);
            }
        }
    };
}

/// Checks an app's log beyond its last line where the harness can.
fn check_log(app: &str, log: &str) {
    if app == "counter" {
        must(harness::check_counter_log(log));
    }
}

app_tests!(counter, "counter",
    args: ["100"], checkpoint_args: ["100"], negative_args: ["100"],
    negatives: ["skip", "log"]);

app_tests!(memory, "memory",
    args: [], checkpoint_args: [], negative_args: ["8"],
    negatives: ["anon", "cow", "shared", "shm", "heap", "stack", "guard", "ro", "big", "maps"]);

app_tests!(brk, "brk",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["break", "region", "small", "large", "grow"]);

app_tests!(fpu, "fpu",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["vec", "ctl", "x87", "ymm"]);

app_tests!(signals, "signals",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["action", "mask", "pending", "value", "altstack"]);

app_tests!(itimer, "itimer",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["real", "virtual", "prof", "posix", "stop", "disarmed"]);

app_tests!(threads, "threads",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["tls", "stack", "tid", "name", "main-tls"]);

app_tests!(tree, "tree",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["pipe", "eof", "pgid", "child-exit", "pipe-size"]);

app_tests!(files, "files",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["offset", "flags", "cloexec", "fdnum", "append", "content", "unlinked", "bigunlinked", "cow", "solo", "dup", "stdout"]);

// The checkpoint run sleeps longer so that both cycles catch the sleeper mid-sleep.
app_tests!(blocking, "blocking",
    args: [], checkpoint_args: ["6000"], negative_args: ["1500"],
    negatives: ["sleep", "read", "status", "helper"]);

app_tests!(rustapp, "rustapp",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["tls", "stack", "tid", "name", "vec", "map", "boxed", "main-tls"]);

app_tests!(breadth_events, "breadth_events",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["eventfd", "semaphore", "timerfd", "interval", "realtime", "ticks", "signalfd", "epoll", "inotify"]);

app_tests!(breadth_unix, "breadth_unix",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["stream", "dgram", "seqpacket", "listener", "accepted", "abstract", "bound", "rcvbuf"]);

// The checkpoint run passes 1: the app then expects its TCP connection reset.
app_tests!(breadth_inet, "breadth_inet",
    args: [], checkpoint_args: ["1"], negative_args: [],
    negatives: ["listener", "port", "reset", "options", "udp", "peer", "queue"]);

app_tests!(breadth_shm, "breadth_shm",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["content", "seals", "offset", "name", "size", "posix-shm", "posix-shared"]);

/// The POSIX shared memory file of breadth_shm is removed between dump and
/// restore, as a power cycle empties /dev/shm: the restore recreates it
/// from the image, with its contents, and the app finds them shared again.
#[test]
fn breadth_shm_posix_shm_survives_a_power_cycle() {
    let log = must(harness::checkpoint_run_between(
        "breadth_shm",
        &[],
        2,
        &|pid, _| {
            let path = format!("/dev/shm/torpor-breadth-{pid}");
            std::fs::remove_file(&path).map_err(|e| format!("removing {path}: {e}"))
        },
    ));
    check_log("breadth_shm", &log);
}

app_tests!(breadth_segments, "breadth_segments",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["big", "offset", "sparse", "sealed", "future", "shared", "description", "mapped", "private",
                "sysv", "sysv-id", "sysv-shared", "removed", "rdonly"]);

/// A power cycle empties the IPC namespace: segment 1 of breadth_segments
/// (key 0x5452PPPP, still attached at the dump, so it survives the kill)
/// is removed between dump and restore, and the restore must recreate it
/// from the image with its id, key, size, mode and contents, attached
/// again in both processes and shared between them.
#[test]
fn breadth_segments_sysv_survives_a_power_cycle() {
    let log = must(harness::checkpoint_run_between(
        "breadth_segments",
        &[],
        2,
        &|pid, _| {
            let key = 0x5452_0000 | (pid & 0xffff);
            // SAFETY: shmget and shmctl take integers; IPC_RMID no buffer.
            let id = unsafe { libc::shmget(key, 0, 0) };
            if id < 0 {
                return Err(format!(
                    "segment key {key:#x}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: as above.
            if unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } != 0 {
                return Err(format!(
                    "removing segment {id}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(())
        },
    ));
    check_log("breadth_segments", &log);
}

/// Between dump and restore another segment takes the key of segment 1
/// of breadth_segments: the restore must refuse, naming the key and the
/// segment holding it, before anything is created.
#[test]
fn breadth_segments_restore_refuses_a_taken_key() {
    let intruder = std::cell::Cell::new(-1);
    let key_of = |pid: i32| 0x5452_0000 | (pid & 0xffff);
    let result = harness::checkpoint_run_between("breadth_segments", &[], 1, &|pid, _| {
        let key = key_of(pid);
        // SAFETY: shmget and shmctl take integers; IPC_RMID no buffer.
        let id = unsafe { libc::shmget(key, 0, 0) };
        // SAFETY: as above.
        if id < 0 || unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } != 0 {
            return Err(format!(
                "removing segment key {key:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above.
        let other = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
        if other < 0 {
            return Err(format!(
                "creating another segment with key {key:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        intruder.set(other);
        Ok(())
    });
    let other = intruder.get();
    if other >= 0 {
        // SAFETY: as above.
        unsafe { libc::shmctl(other, libc::IPC_RMID, std::ptr::null_mut()) };
    }
    let err = match result {
        Ok(log) => panic!("the restore should have been refused, the app ran on:\n{log}"),
        Err(e) => e,
    };
    assert!(other >= 0, "{err}");
    let want = format!("is now held by segment {other} (4096 bytes); remove it (ipcrm -m {other})");
    assert!(
        err.contains("restore failed") && err.contains(&want),
        "expected a refusal containing {want:?}, got:\n{err}"
    );
}

// Restored, the pipes to the peer outside the tree come back cut.
app_tests!(breadth_pipes, "breadth_pipes",
    args: [], checkpoint_args: ["1"], negative_args: [],
    negatives: ["data", "size", "inner", "closed"]);

app_tests!(breadth_seccomp, "breadth_seccomp",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["count", "order", "own", "strict"]);

/// One cycle alone: two cycles would hide filters installed in reverse
/// order (reversed twice).
#[test]
fn breadth_seccomp_one_cycle_keeps_the_filter_order() {
    must(harness::checkpoint_run("breadth_seccomp", &[], 1));
}

app_tests!(breadth_attrs, "breadth_attrs",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["policy", "nice", "name", "subreaper", "oom", "personality", "vmflags",
        "wipe", "pdeathsig", "dumpable", "thp", "child-oom"]);

app_tests!(breadth_locks, "breadth_locks",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["flock", "ofd", "posix", "range", "sync", "lease", "async", "sigio"]);

app_tests!(breadth_pty, "breadth_pty",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["queued", "winsize", "termios", "packet", "lock", "child"]);

app_tests!(breadth_pidfd, "breadth_pidfd",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["child", "zombie", "flags", "fdnum", "cloexec"]);

app_tests!(breadth_rights, "breadth_rights",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["queue", "offset", "child", "pipe"]);

app_tests!(breadth_flight, "breadth_flight",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["queue", "nested", "data", "inet", "notify"]);

app_tests!(breadth_backlog, "breadth_backlog",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["order", "child"]);

app_tests!(breadth_aio, "breadth_aio",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["event", "data", "membarrier"]);

/// An AIO ring whose header is not the kernel's (the app overwrote its
/// magic): the dump refuses it, naming the process and the mapping, and
/// the app runs on.
#[test]
fn breadth_aio_a_ring_the_kernel_would_not_make_is_refused() {
    let _one = harness::one_at_a_time("breadth_aio");
    must(harness::refused_dump_run_checked(
        "breadth_aio",
        &["1"],
        &|pid, reason| {
            let want = format!("process {pid}: AIO ring 0x");
            if reason.contains(&want)
                && reason.contains("magic 0x0")
                && reason.contains("(mapping /[aio] (deleted))")
            {
                Ok(())
            } else {
                Err(format!(
                    "expected a reason naming process {pid}, the ring's magic and its mapping, got: {reason}"
                ))
            }
        },
    ));
}

app_tests!(breadth_creds, "breadth_creds",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["queue", "stream", "passcred", "child"]);

app_tests!(breadth_sockopts, "breadth_sockopts",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["broadcast", "keepidle", "peek", "lite", "multicast"]);

// Needs CAP_NET_ADMIN: after go the app adds an address to lo.
app_tests!(breadth_netlink, "breadth_netlink",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["port", "groups", "option", "event"]);

// Needs CAP_NET_RAW: packet sockets.
app_tests!(breadth_packet, "breadth_packet",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["option", "bind"]);

// Root: makes cgroups below the v2 hierarchy's root. On a hybrid host,
// whose controllers are v1's, the pids limit goes unchecked here; the
// emulated boards check it.
app_tests!(breadth_cgroup, "breadth_cgroup",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["cgroup", "child"]);

// Needs CAP_SYS_ADMIN: fanotify groups, on two tmpfs the app mounts.
app_tests!(breadth_fanotify, "breadth_fanotify",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["mask", "event"]);

/// One cycle alone: two cycles would hide marks added in reverse order
/// (reversed twice).
#[test]
fn breadth_fanotify_one_cycle_keeps_the_mark_order() {
    must(harness::checkpoint_run("breadth_fanotify", &[], 1));
}

app_tests!(breadth_procfd, "breadth_procfd",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["offset", "target", "fdnum", "cloexec"]);

app_tests!(breadth_stopped, "breadth_stopped",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["stopped", "status"]);

app_tests!(breadth_clock, "breadth_clock",
    args: [], checkpoint_args: [], negative_args: [],
    negatives: ["monotonic", "boottime", "vdso", "timerfd", "abstime", "posix"]);

/// breadth_clock across dumps with the tree kept asleep between dump and
/// restore: in a time namespace (the default where the kernel has them)
/// its monotonic clock skips the sleep, and with `--no-timens` it does not.
mod breadth_clock_asleep {
    use super::*;
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Each cycle keeps the tree dumped this long before the restore.
    const ASLEEP: Duration = Duration::from_millis(1000);

    /// Fails the test on a kernel without time namespaces: what it tests
    /// cannot happen there.
    fn require_timens() {
        assert!(
            Path::new("/proc/self/ns/time").exists(),
            "this kernel has no time namespaces (no /proc/self/ns/time): \
             the test needs CONFIG_TIME_NS, Linux 5.6 or later"
        );
    }

    fn time_ns(pid: &str) -> Result<String, String> {
        std::fs::read_link(format!("/proc/{pid}/ns/time"))
            .map(|l| l.to_string_lossy().into_owned())
            .map_err(|e| format!("reading /proc/{pid}/ns/time: {e}"))
    }

    /// `/proc/PID/timens_offsets` as (monotonic, boottime) in ns.
    fn offsets(pid: i32) -> Result<(i128, i128), String> {
        let path = format!("/proc/{pid}/timens_offsets");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        let mut got = (None, None);
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let [name, sec, nsec] = w[..] else {
                return Err(format!("{path}: unexpected line {line:?}"));
            };
            let v = sec
                .parse::<i128>()
                .map_err(|e| format!("{path}: {line:?}: {e}"))?
                * 1_000_000_000
                + nsec
                    .parse::<i128>()
                    .map_err(|e| format!("{path}: {line:?}: {e}"))?;
            match name {
                "monotonic" => got.0 = Some(v),
                "boottime" => got.1 = Some(v),
                _ => return Err(format!("{path}: unexpected line {line:?}")),
            }
        }
        match got {
            (Some(m), Some(b)) => Ok((m, b)),
            _ => Err(format!(
                "{path}: expected monotonic and boottime lines, got {text:?}"
            )),
        }
    }

    fn ms(d: Duration) -> i128 {
        i128::try_from(d.as_millis()).unwrap_or(i128::MAX)
    }

    /// Two cycles, each asleep a second: the second dumps a tree already in
    /// a torpor-made namespace, whose clocks must go on from its own view.
    #[test]
    fn monotonic_skips_the_sleep_in_a_time_namespace() {
        require_timens();
        let host = must(time_ns("self"));
        let asleep_total = 2 * ms(ASLEEP);
        let dumped_for = Mutex::new(Duration::ZERO);
        let log = must(harness::checkpoint_run_with(
            "breadth_clock",
            &[&asleep_total.to_string()],
            2,
            &[],
            &|_, _| {
                std::thread::sleep(ASLEEP);
                Ok(())
            },
            &|pid, _, cycle| {
                for task in harness::process_tree(pid) {
                    let ns = time_ns(&task.to_string())?;
                    if ns == host {
                        return Err(format!(
                            "restored process {task} is in the host's time namespace {ns}"
                        ));
                    }
                }
                let mut total = dumped_for.lock().unwrap_or_else(|e| e.into_inner());
                *total += cycle.dumped_for;
                // The monotonic clock stood still from the freeze to the
                // restore: behind the host by the time asleep so far, which
                // is at least the sleeps and at most the dump-to-restore
                // spans. The boottime clock counted it: with the host.
                let (mono, boot) = offsets(pid)?;
                let (lo, hi) = (
                    -ms(*total) * 1_000_000,
                    -i128::from(cycle.number) * ms(ASLEEP) * 1_000_000,
                );
                if mono < lo || mono > hi {
                    return Err(format!(
                        "monotonic offset: expected {lo} to {hi} ns, got {mono} ns"
                    ));
                }
                if boot.abs() > 100_000_000 {
                    return Err(format!(
                        "boottime offset: expected within 100 ms of 0, got {boot} ns"
                    ));
                }
                Ok(())
            },
        ));
        assert!(
            log.lines().any(|l| l == "MODE timens"),
            "breadth_clock did not see a time namespace:\n{log}"
        );
    }

    /// `--no-timens`: the host's clocks, which ran on while the tree slept.
    #[test]
    fn no_timens_keeps_the_host_clocks() {
        let host = if Path::new("/proc/self/ns/time").exists() {
            Some(must(time_ns("self")))
        } else {
            None
        };
        let log = must(harness::checkpoint_run_with(
            "breadth_clock",
            &[&ms(ASLEEP).to_string()],
            1,
            &["--no-timens"],
            &|_, _| {
                std::thread::sleep(ASLEEP);
                Ok(())
            },
            &|pid, _, _| match &host {
                Some(host) if time_ns(&pid.to_string())? != *host => Err(format!(
                    "restored process {pid} is not in the host's time namespace {host}"
                )),
                _ => Ok(()),
            },
        ));
        assert!(
            log.lines().any(|l| l == "MODE host"),
            "breadth_clock did not see the host's clocks:\n{log}"
        );
    }
}

/// rustapp's rseq check must catch a thread whose rseq area is no longer
/// registered (glibc then reads a stale CPU number). It pins threads to two
/// CPUs, so it needs two. The perturbation is written for x86_64 glibc's
/// rseq registration: elsewhere the test does not exist.
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
#[test]
fn rustapp_rseq_check_can_fail() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "the rseq check pins threads to two CPUs; this machine offers {cpus}"
    );
    must(harness::negative_run("rustapp", &[], "rseq"));
}

/// exiter ends by itself shortly after READY: dumping it must either fail
/// cleanly or succeed and restore, whatever instant it exits at.
mod exiter {
    use super::*;

    #[test]
    fn control() {
        must(harness::control_run("exiter", &[]));
    }

    #[test]
    fn negative() {
        must(harness::negative_runs("exiter", &[], &["status"]));
    }

    #[test]
    fn checkpoint() {
        for delay_ms in ["0", "5", "20", "50", "200", "1000"] {
            let outcome = must(harness::exiting_dump_run("exiter", &[delay_ms]));
            eprintln!("exiter {delay_ms} ms: {outcome}");
        }
    }
}

/// badfd holds an fd torpor must refuse: the dump fails with a reason and the
/// app runs on untouched.
mod badfd {
    use super::*;

    #[test]
    fn control() {
        must(harness::control_run("badfd", &[]));
    }

    #[test]
    fn negative() {
        must(harness::negative_runs("badfd", &[], &["fd", "memory"]));
    }

    #[test]
    fn checkpoint() {
        let reason = must(harness::refused_dump_run("badfd", &[]));
        eprintln!("badfd: dump refused: {}", reason.trim_end());
    }
}

/// breadth_refuse holds at fd 7 an object torpor refuses: each dump fails
/// with a reason naming fd 7 and the kind, and the app runs on unharmed.
mod breadth_refuse {
    use super::*;

    #[test]
    fn control() {
        for kind in [
            "--kind=netlink",
            "--kind=perf",
            "--kind=ring",
            "--kind=fanout",
            "--kind=mclist",
            "--kind=packetq",
            "--kind=scm",
            "--kind=backlog",
        ] {
            must(harness::control_run("breadth_refuse", &[kind]));
        }
    }

    #[test]
    fn negative() {
        must(harness::negative_runs(
            "breadth_refuse",
            &[],
            &["fd", "memory"],
        ));
    }

    fn refused(kind: &str, why: &str) {
        let reason = must(harness::refused_dump_run("breadth_refuse", &[kind]));
        assert!(
            reason.contains("fd 7 of process") && reason.contains(why),
            "breadth_refuse {kind}: expected a reason naming fd 7 and {why:?}, got: {reason}"
        );
    }

    /// The reason names the bytes waiting, as /proc/PID/net/netlink
    /// counts them while the app still waits.
    #[test]
    fn netlink_socket_with_a_reply_waiting_is_refused() {
        must(harness::refused_dump_run_checked(
            "breadth_refuse",
            &["--kind=netlink"],
            &|pid, reason| {
                let inode = std::fs::read_link(format!("/proc/{pid}/fd/7"))
                    .map_err(|e| format!("fd 7: {e}"))?;
                let want = format!(
                    "fd 7 of process {pid} ({}): a netlink socket: {} bytes of messages wait unread in its receive queue, which torpor cannot queue again",
                    inode.display(),
                    harness::netlink_waiting(pid, 7)
                );
                if reason.contains(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected a reason containing {want:?}, got: {reason}"
                    ))
                }
            },
        ));
    }

    #[test]
    fn packet_socket_with_a_ring_is_refused() {
        refused(
            "--kind=ring",
            "a packet socket: it has a ring (PACKET_RX_RING), which torpor cannot restore",
        );
    }

    #[test]
    fn packet_socket_in_a_fanout_group_is_refused() {
        refused(
            "--kind=fanout",
            "a packet socket: it is in a fanout group (PACKET_FANOUT), which torpor cannot restore",
        );
    }

    #[test]
    fn packet_socket_with_a_membership_is_refused() {
        refused(
            "--kind=mclist",
            "a packet socket: it has 1 membership(s) (PACKET_ADD_MEMBERSHIP), which torpor cannot restore",
        );
    }

    /// The reason names the bytes waiting, as /proc/PID/net/packet counts
    /// them while the app still waits.
    #[test]
    fn packet_socket_with_a_packet_waiting_is_refused() {
        must(harness::refused_dump_run_checked(
            "breadth_refuse",
            &["--kind=packetq"],
            &|pid, reason| {
                let inode = std::fs::read_link(format!("/proc/{pid}/fd/7"))
                    .map_err(|e| format!("fd 7: {e}"))?;
                let want = format!(
                    "fd 7 of process {pid} ({}): a packet socket: {} bytes of packets wait unread in its receive queue, which torpor cannot queue again",
                    inode.display(),
                    harness::packet_waiting(pid, 7)
                );
                if reason.contains(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected a reason containing {want:?}, got: {reason}"
                    ))
                }
            },
        ));
    }

    #[test]
    fn perf_event_is_refused() {
        refused("--kind=perf", "anon_inode:[perf_event]");
    }

    #[test]
    fn pidfd_in_flight_is_refused() {
        refused(
            "--kind=scm",
            "file descriptors in flight (SCM_RIGHTS): message 0 passes anon_inode:[pidfd], a pidfd or file of /proc, which torpor does not keep in flight",
        );
    }

    /// A waiting connection whose client sent bytes: they wait in the
    /// unaccepted socket, which only an accept could read.
    #[test]
    fn unaccepted_connection_with_bytes_is_refused() {
        let reason = must(harness::refused_dump_run(
            "breadth_refuse",
            &["--kind=backlog"],
        ));
        let head = ": a UNIX socket: listener @torpor-refuse-";
        let waits = " has a connection waiting to be accepted whose client socket:[";
        let sent = "] has sent data (its send buffer holds ";
        let tail = " bytes with the kernel's overhead), which torpor cannot read without accepting the connection";
        let at = |s: &str| reason.find(s);
        assert!(
            reason.contains("fd 7 of process")
                && at(head) < at(waits)
                && at(waits) < at(sent)
                && at(sent) < at(tail)
                && at(head).is_some(),
            "expected a refusal naming fd 7, its listener and what the client sent, got: {reason}"
        );
        let bytes: &str = &reason[at(sent).unwrap_or(0) + sent.len()..at(tail).unwrap_or(0)];
        assert!(
            bytes.parse::<u32>().is_ok_and(|n| n >= 1),
            "expected the bytes the client's send buffer holds, got {bytes:?} in: {reason}"
        );
    }
}

/// The harness's own log check must catch a gap and a repeat.
#[test]
fn counter_log_check_detects_gaps_and_repeats() {
    let good = "READY counter\ncount 0\ncount 1\ncount 2\nPASS counter\n";
    assert_eq!(harness::check_counter_log(good), Ok(()));
    let gap = "READY counter\ncount 0\ncount 2\nPASS counter\n";
    assert_eq!(
        harness::check_counter_log(gap),
        Err("counter log line 3: expected 'count 1', got 'count 2'".to_string())
    );
    let repeat = "READY counter\ncount 0\ncount 1\ncount 1\nPASS counter\n";
    assert_eq!(
        harness::check_counter_log(repeat),
        Err("counter log line 4: expected 'count 2', got 'count 1'".to_string())
    );
    let empty = "READY counter\nPASS counter\n";
    assert!(harness::check_counter_log(empty).is_err());
}

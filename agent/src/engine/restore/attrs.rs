//! The `task-attrs` of a process, each set at the step of the restore it
//! belongs to:
//!
//! ```text
//!  process   madvise of every mapping with flags; child subreaper,
//!            THP disabled; the login uid, in the main thread before the
//!            other threads are cloned (they inherit it) and while it is
//!            still privileged
//!  thread    nice, policy and real-time priority, before the thread's
//!            credentials: the thread is still torpor's, so an image taken
//!            for a user may hold only what that user could set
//!            (`owner_may_set`, checked at the dump and at validate)
//!  process   after every thread's credentials: oom_score_adj, written by
//!            the task itself through /proc/self, then dumpable, which a
//!            change of credentials resets
//!  detach    the parent-death signal of every thread, once the tree's
//!            parents are final (credential changes clear it too)
//! ```

use crate::arch::{nr, Bits};
use crate::engine::ptrace::Mem;
use crate::engine::remote::Remote;
use crate::engine::state::ProcessState;
use crate::engine::Cause;
use crate::image::records::{ThreadAttrs, VmaAdvice};

use super::trampoline::Scratch;

const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;
const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_SET_SECUREBITS: u64 = 28;
const PRIO_PROCESS: u64 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_RESET_ON_FORK: u64 = 0x4000_0000;

/// Why the owner of an image taken for a user (not root) could not have
/// set an attribute of `p` itself: a real-time policy or a nice value below
/// 0 needs `CAP_SYS_NICE`, an `oom_score_adj` below 0 `CAP_SYS_RESOURCE`,
/// which such an image never holds (see `validate::check_requester`). The
/// limits `RLIMIT_RTPRIO` and `RLIMIT_NICE` grant are not counted: the
/// image's own limits are not evidence of what the user was allowed.
pub fn owner_may_set(p: &ProcessState, uid: u32) -> Result<(), String> {
    let pid = p.task.pid;
    for t in &p.attrs.threads {
        if matches!(t.policy, SCHED_FIFO | SCHED_RR) {
            return Err(format!(
                "thread {} of process {pid} runs under real-time policy {} (priority {}), which uid {uid} may not set without CAP_SYS_NICE",
                t.tid,
                policy_name(t.policy),
                t.rt_priority
            ));
        }
        if t.nice < 0 {
            return Err(format!(
                "thread {} of process {pid} has nice value {}, which uid {uid} may not set without CAP_SYS_NICE",
                t.tid, t.nice
            ));
        }
    }
    if p.attrs.loginuid != u32::MAX && p.attrs.loginuid != uid {
        return Err(format!(
            "process {pid} has login uid {}, which uid {uid} may not set",
            p.attrs.loginuid
        ));
    }
    if p.attrs.oom_score_adj < 0 {
        return Err(format!(
            "process {pid} has oom_score_adj {}, which uid {uid} may not set without CAP_SYS_RESOURCE",
            p.attrs.oom_score_adj
        ));
    }
    Ok(())
}

/// The values the restore can set, checked before anything is created.
pub fn check(p: &ProcessState) -> Result<(), String> {
    let pid = p.task.pid;
    let a = &p.attrs;
    if a.dumpable > 2 {
        return Err(format!("process {pid}: dumpable {}", a.dumpable));
    }
    if !(-1000..=1000).contains(&a.oom_score_adj) {
        return Err(format!("process {pid}: oom_score_adj {}", a.oom_score_adj));
    }
    for t in &a.threads {
        if !p.threads.iter().any(|x| x.tid == t.tid) {
            return Err(format!(
                "process {pid}: attributes of thread {}, which it does not have",
                t.tid
            ));
        }
        let rt = matches!(t.policy, SCHED_FIFO | SCHED_RR);
        let prio_ok = if rt {
            (1..=99).contains(&t.rt_priority)
        } else {
            t.rt_priority == 0
        };
        if !matches!(t.policy, 0 | 1 | 2 | 3 | 5) || !prio_ok {
            return Err(format!(
                "thread {}: policy {} with priority {}",
                t.tid, t.policy, t.rt_priority
            ));
        }
        if !(-20..=19).contains(&t.nice) || !(0..=64).contains(&t.pdeathsig) {
            return Err(format!(
                "thread {}: nice {}, parent-death signal {}",
                t.tid, t.nice, t.pdeathsig
            ));
        }
    }
    for v in &a.advice {
        if v.flags & !VmaAdvice::ALL != 0 || v.flags == 0 {
            return Err(format!(
                "process {pid}: madvise flags {:#x} at {:#x}",
                v.flags, v.start
            ));
        }
        if !p.vmas.iter().any(|m| m.start <= v.start && v.end <= m.end) || v.start >= v.end {
            return Err(format!(
                "process {pid}: madvise flags for {:#x}-{:#x}, which is no mapping of it",
                v.start, v.end
            ));
        }
    }
    Ok(())
}

fn policy_name(p: u32) -> &'static str {
    match p {
        0 => "SCHED_OTHER",
        SCHED_FIFO => "SCHED_FIFO",
        SCHED_RR => "SCHED_RR",
        3 => "SCHED_BATCH",
        5 => "SCHED_IDLE",
        _ => "unknown",
    }
}

/// The attributes of `tid`, a new thread's when the image names none.
pub(super) fn thread_attrs(p: &ProcessState, tid: i32) -> ThreadAttrs {
    p.attrs
        .threads
        .iter()
        .find(|t| t.tid == tid)
        .copied()
        .unwrap_or(ThreadAttrs {
            tid,
            ..ThreadAttrs::default()
        })
}

/// The `madvise` flags of every mapping, the process-wide prctl attributes
/// and the login uid; in the main thread, once its mappings are in place
/// and before the other threads are cloned.
pub(super) fn set_process_attrs(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    for v in &p.attrs.advice {
        for (bit, _, advice) in VmaAdvice::TABLE {
            if v.flags & bit != 0 {
                r.syscall(
                    "madvise",
                    nr::MADVISE,
                    [v.start, v.end - v.start, u64::from(advice.bits()), 0, 0, 0],
                )?;
            }
        }
    }
    if p.attrs.child_subreaper {
        r.prctl(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            PR_SET_CHILD_SUBREAPER,
            1,
            0,
        )?;
    }
    // Always: a restored process must not keep torpor's setting.
    r.prctl(
        "prctl(PR_SET_THP_DISABLE)",
        PR_SET_THP_DISABLE,
        u64::from(p.attrs.thp_disable),
        0,
    )?;
    // Inherited from torpor: written only when the image's differs, by
    // the task itself (the kernel lets only a task set its own).
    let now = crate::engine::collect::read_loginuid(p.task.pid)?;
    if now != p.attrs.loginuid {
        write_own_proc(r, mem, tramp, "loginuid", &p.attrs.loginuid.to_string()).map_err(|e| {
            Cause::Refused(format!(
                "login uid {} of process {} (this torpor's is {now}): {e}",
                p.attrs.loginuid, p.task.pid
            ))
        })?;
    }
    Ok(())
}

/// Writes `value` to `/proc/self/NAME` in the borrowed task.
fn write_own_proc(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    name: &str,
    value: &str,
) -> Result<(), Cause> {
    let mut s = Scratch::at(mem, tramp);
    let path = s.c_string(format!("/proc/self/{name}").as_bytes())?;
    let text = s.bytes(value.as_bytes())?;
    let fd = r.syscall(
        "openat(/proc/self)",
        nr::OPENAT,
        [
            u64::from(libc::AT_FDCWD.bits()),
            path,
            u64::from((libc::O_WRONLY | libc::O_CLOEXEC).bits()),
            0,
            0,
            0,
        ],
    )?;
    let wrote = r.syscall(
        "write(/proc/self)",
        nr::WRITE,
        [fd, text, value.len() as u64, 0, 0, 0],
    );
    r.syscall("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
    if wrote? != value.len() as u64 {
        return Err(Cause::Refused(format!("/proc/self/{name}: a short write")));
    }
    Ok(())
}

/// Nice value, then policy and real-time priority of the borrowed thread
/// `tid` of process `pid`, while it still has torpor's rights (see
/// `owner_may_set`); each only where it differs from what the thread has
/// from torpor, so that a torpor without privileges restores a tree that
/// never changed them.
pub(super) fn set_sched(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    pid: i32,
    t: &ThreadAttrs,
) -> Result<(), Cause> {
    let now = crate::engine::collect::thread_sched(pid, t.tid)?;
    let tid = u64::from(t.tid.bits());
    if now.nice != t.nice {
        // The raw syscall takes the nice value itself, as a signed int.
        r.syscall(
            "setpriority",
            nr::SETPRIORITY,
            [PRIO_PROCESS, tid, u64::from(t.nice.bits()), 0, 0, 0],
        )?;
    }
    let same = (now.policy, now.rt_priority, now.reset_on_fork)
        == (t.policy, t.rt_priority, t.reset_on_fork);
    if !same {
        let prio = i32::try_from(t.rt_priority)
            .map_err(|_| Cause::Refused(format!("real-time priority {}", t.rt_priority)))?;
        let at = Scratch::at(mem, tramp).value(&prio)?;
        let policy = u64::from(t.policy)
            | if t.reset_on_fork {
                SCHED_RESET_ON_FORK
            } else {
                0
            };
        r.syscall(
            "sched_setscheduler",
            nr::SCHED_SETSCHEDULER,
            [tid, policy, at, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// The securebits of the borrowed thread, while it is still privileged
/// (`PR_SET_SECUREBITS` needs `CAP_SETPCAP`).
pub(super) fn set_securebits(r: &mut Remote<'_>, bits: u32) -> Result<(), Cause> {
    r.prctl(
        "prctl(PR_SET_SECUREBITS)",
        PR_SET_SECUREBITS,
        u64::from(bits),
        0,
    )?;
    Ok(())
}

/// After every thread's credentials: `oom_score_adj`, written by the task
/// through its own /proc/self (so the kernel checks the task's rights, not
/// torpor's), then the dumpable flag, which the credential change reset.
pub(super) fn set_final_attrs(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    let dumpable_now = r.prctl("prctl(PR_GET_DUMPABLE)", PR_GET_DUMPABLE, 0, 0)?;
    let mut dumpable_now = u32::try_from(dumpable_now).unwrap_or(u32::MAX);
    let oom_now = crate::engine::collect::read_oom_score_adj(p.task.pid)?;
    if oom_now != p.attrs.oom_score_adj {
        // A task that is not dumpable has its /proc files owned by root;
        // it is made dumpable for the write and gets its own value below.
        if dumpable_now != 1 {
            r.prctl("prctl(PR_SET_DUMPABLE)", PR_SET_DUMPABLE, 1, 0)?;
            dumpable_now = 1;
        }
        write_own_proc(
            r,
            mem,
            tramp,
            "oom_score_adj",
            &p.attrs.oom_score_adj.to_string(),
        )
        .map_err(|e| {
            Cause::Refused(format!(
                "oom_score_adj {} of process {} (it has {oom_now}): {e}",
                p.attrs.oom_score_adj, p.task.pid
            ))
        })?;
    }
    // 2 (SUID_DUMP_ROOT) is the kernel's own: prctl sets only 0 or 1, and
    // such a process is not dumpable by its user either.
    let dumpable = u32::from(p.attrs.dumpable == 1);
    if dumpable_now != dumpable {
        r.prctl(
            "prctl(PR_SET_DUMPABLE)",
            PR_SET_DUMPABLE,
            u64::from(dumpable),
            0,
        )?;
    }
    Ok(())
}

/// The parent-death signal of thread `tid`, at its own pc.
pub(super) fn set_pdeathsig(tid: i32, sig: i32) -> Result<(), Cause> {
    let mem = Mem::open(tid)?;
    let mut r = Remote::at_pc(tid, &mem)?;
    r.prctl(
        "prctl(PR_SET_PDEATHSIG)",
        PR_SET_PDEATHSIG,
        u64::from(sig.bits()),
        0,
    )?;
    r.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::restore::plan::tests::process;

    fn with_thread(t: ThreadAttrs) -> ProcessState {
        let mut p = process(100, 0);
        p.attrs.threads.push(t);
        p
    }

    fn thread(policy: u32, rt_priority: u32, nice: i32) -> ThreadAttrs {
        ThreadAttrs {
            tid: 100,
            policy,
            rt_priority,
            nice,
            ..ThreadAttrs::default()
        }
    }

    #[test]
    fn a_user_may_hold_what_needs_no_capability() {
        let mut p = with_thread(thread(3, 0, 19));
        p.attrs.oom_score_adj = 1000;
        p.attrs.loginuid = 1000;
        p.attrs.child_subreaper = true;
        assert_eq!(owner_may_set(&p, 1000), Ok(()));
        p.attrs.loginuid = u32::MAX;
        assert_eq!(owner_may_set(&p, 1000), Ok(()));
        assert_eq!(check(&p), Ok(()));
    }

    #[test]
    fn a_user_may_not_hold_what_needs_a_capability() {
        let e = owner_may_set(&with_thread(thread(1, 17, 0)), 1000).unwrap_err();
        assert_eq!(e, "thread 100 of process 100 runs under real-time policy SCHED_FIFO (priority 17), which uid 1000 may not set without CAP_SYS_NICE");
        let e = owner_may_set(&with_thread(thread(2, 1, 0)), 1000).unwrap_err();
        assert!(e.contains("SCHED_RR (priority 1)"), "{e}");
        let e = owner_may_set(&with_thread(thread(0, 0, -1)), 1000).unwrap_err();
        assert_eq!(e, "thread 100 of process 100 has nice value -1, which uid 1000 may not set without CAP_SYS_NICE");
        let mut p = process(100, 0);
        p.attrs.oom_score_adj = -1;
        let e = owner_may_set(&p, 1000).unwrap_err();
        assert_eq!(
            e,
            "process 100 has oom_score_adj -1, which uid 1000 may not set without CAP_SYS_RESOURCE"
        );
        p.attrs.oom_score_adj = 0;
        p.attrs.loginuid = 0;
        let e = owner_may_set(&p, 1000).unwrap_err();
        assert_eq!(e, "process 100 has login uid 0, which uid 1000 may not set");
    }

    #[test]
    fn values_out_of_the_kernels_range_are_refused() {
        for (t, want) in [
            (thread(1, 0, 0), "policy 1 with priority 0"),
            (thread(1, 100, 0), "policy 1 with priority 100"),
            (thread(0, 5, 0), "policy 0 with priority 5"),
            (thread(6, 0, 0), "policy 6 with priority 0"),
            (thread(0, 0, 20), "nice 20"),
            (thread(0, 0, -21), "nice -21"),
        ] {
            let e = check(&with_thread(t)).unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        }
        let mut t = thread(0, 0, 0);
        t.pdeathsig = 65;
        assert!(check(&with_thread(t)).unwrap_err().contains("signal 65"));
        t.pdeathsig = 0;
        t.tid = 101;
        assert_eq!(
            check(&with_thread(t)).unwrap_err(),
            "process 100: attributes of thread 101, which it does not have"
        );
        let mut p = process(100, 0);
        p.attrs.oom_score_adj = 1001;
        assert!(check(&p).unwrap_err().contains("oom_score_adj 1001"));
        p.attrs.oom_score_adj = 0;
        p.attrs.dumpable = 3;
        assert!(check(&p).unwrap_err().contains("dumpable 3"));
    }

    #[test]
    fn advice_must_fall_in_a_mapping_and_name_known_flags() {
        let mut p = process(100, 0);
        p.attrs.advice.push(VmaAdvice {
            start: 0x10000,
            end: 0x12000,
            flags: VmaAdvice::DONTFORK | VmaAdvice::MERGEABLE,
        });
        assert_eq!(check(&p), Ok(()));
        p.attrs.advice[0].flags = 64;
        assert_eq!(
            check(&p).unwrap_err(),
            "process 100: madvise flags 0x40 at 0x10000"
        );
        p.attrs.advice[0].flags = 0;
        assert!(check(&p).is_err());
        p.attrs.advice[0].flags = VmaAdvice::DONTDUMP;
        p.attrs.advice[0].end = 0x21000;
        assert_eq!(
            check(&p).unwrap_err(),
            "process 100: madvise flags for 0x10000-0x21000, which is no mapping of it"
        );
    }

    #[test]
    fn a_thread_the_image_does_not_name_gets_a_new_threads_attributes() {
        let p = with_thread(thread(3, 0, 5));
        assert_eq!(thread_attrs(&p, 100).policy, 3);
        let other = thread_attrs(&p, 7);
        assert_eq!(
            other,
            ThreadAttrs {
                tid: 7,
                ..ThreadAttrs::default()
            }
        );
    }
}

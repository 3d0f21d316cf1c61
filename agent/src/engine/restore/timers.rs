//! POSIX timers with their ids, armed as they were.

use crate::arch::{nr, Bits};
use crate::engine::ptrace::{Mem, RemotePtr};
use crate::engine::remote::{Remote, RemoteError};
use crate::engine::state::ProcessState;
use crate::engine::Cause;

use super::trampoline::Scratch;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
pub(super) const ITIMER_REAL: usize = 0;
/// Timers created and deleted at most to reach a wanted id in order.
const MAX_TIMER_ID_SKIP: u32 = 1 << 16;

/// POSIX timers with their ids: timer_create takes the id from its output
/// argument while PR_TIMER_CREATE_RESTORE_IDS is on.
pub(super) fn restore_timers(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    if p.task.posix_timers.is_empty() {
        return Ok(());
    }
    let by_prctl = match r.prctl(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        PR_TIMER_CREATE_RESTORE_IDS,
        1,
        0,
    ) {
        Ok(_) => true,
        // Kernels before the request (6.1 on the Pi Zero) hand out ids in
        // order from 0 in a new process and never reuse one: create timers
        // in id order, deleting the ones that land below the wanted id.
        Err(RemoteError::Syscall { err, .. }) if err.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => return Err(e.into()),
    };
    let word = core::mem::size_of::<usize>();
    let mut order: Vec<_> = p.task.posix_timers.iter().collect();
    order.sort_by_key(|t| t.id);
    let created = (|| -> Result<(), Cause> {
        for t in order {
            // struct sigevent: value (a native word), signo, notify, tid;
            // 64 bytes in all.
            let mut sev = vec![0u8; 64];
            sev[..word].copy_from_slice(&t.value.to_le_bytes()[..word]);
            sev[word..word + 4].copy_from_slice(&t.signo.to_le_bytes());
            sev[word + 4..word + 8].copy_from_slice(&t.notify.to_le_bytes());
            sev[word + 8..word + 12].copy_from_slice(&t.tid.to_le_bytes());
            let mut s = Scratch::at(mem, tramp);
            let sev_at = s.bytes(&sev)?;
            let id_at = s.value(&t.id)?;
            let mut skipped = 0u32;
            loop {
                r.syscall(
                    "timer_create",
                    nr::TIMER_CREATE,
                    [u64::from(t.clock.bits()), sev_at, id_at, 0, 0, 0],
                )?;
                let got: i32 = mem.read_value(RemotePtr::<i32>::new(id_at))?;
                if got == t.id {
                    break;
                }
                if by_prctl || got > t.id || skipped >= MAX_TIMER_ID_SKIP {
                    return Err(Cause::Refused(format!(
                        "POSIX timer {} came back as {got}",
                        t.id
                    )));
                }
                r.syscall(
                    "timer_delete",
                    nr::TIMER_DELETE,
                    [u64::from(got.bits()), 0, 0, 0, 0, 0],
                )?;
                skipped += 1;
            }
            if t.value_ns != 0 {
                let its = [timespec(t.interval_ns)?, timespec(t.value_ns)?];
                let its_at = s.value(&its)?;
                r.syscall(
                    "timer_settime",
                    nr::TIMER_SETTIME,
                    [u64::from(t.id.bits()), 0, its_at, 0, 0, 0],
                )?;
            }
        }
        Ok(())
    })();
    if by_prctl {
        r.prctl(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            PR_TIMER_CREATE_RESTORE_IDS,
            0,
            0,
        )?;
    }
    created
}

/// Nanoseconds as a native `timespec` (seconds, nanoseconds).
fn timespec(ns: u64) -> Result<[isize; 2], Cause> {
    let fit = |v: u64| {
        isize::try_from(v).map_err(|_| {
            Cause::Refused(format!(
                "a timer of {ns}ns does not fit this architecture's timespec"
            ))
        })
    };
    Ok([fit(ns / 1_000_000_000)?, fit(ns % 1_000_000_000)?])
}

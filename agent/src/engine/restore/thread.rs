//! One thread's own state, in its own context: name, tid address, robust
//! list, alternate stack, rseq, TLS, pending signals, nice value and
//! scheduling policy, seccomp filters of its own, credentials, then FPU
//! and general registers with the signal mask, which take effect when the
//! tree is released.

use crate::arch::{self, nr, Bits, Regs};
use crate::engine::remote::Remote;
use crate::engine::Cause;

use super::creds::restore_creds;
use super::memory::Rebuild;
use super::seccomp::install_own_filters;
use super::trampoline::Scratch;

/// The signal number of a raw siginfo from the image (its first 4 bytes).
pub(super) fn siginfo_signo(info: &[u8]) -> Result<i32, Cause> {
    let head: [u8; 4] = info
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Cause::Refused(format!("a pending siginfo of {} bytes", info.len())))?;
    let sig = i32::from_le_bytes(head);
    if !(1..=64).contains(&sig) {
        return Err(Cause::Refused(format!(
            "a pending siginfo for signal {sig}"
        )));
    }
    Ok(sig)
}

pub(super) fn restore_thread(
    rb: &Rebuild<'_>,
    t: &crate::image::records::Thread,
) -> Result<(), Cause> {
    let p = rb.p;
    let mem = &rb.mem;
    let tramp = rb.tramp;
    let mut r = Remote::at(t.tid, mem, tramp)?;
    const PR_SET_NAME: u64 = 15;
    let name = t.comm.as_bytes();
    let at = Scratch::at(mem, tramp).c_string(&name[..name.len().min(15)])?;
    r.prctl("prctl(PR_SET_NAME)", PR_SET_NAME, at, 0)?;
    r.syscall(
        "set_tid_address",
        nr::SET_TID_ADDRESS,
        [t.tid_address, 0, 0, 0, 0, 0],
    )?;
    if t.robust_list.head != 0 {
        r.syscall(
            "set_robust_list",
            nr::SET_ROBUST_LIST,
            [t.robust_list.head, t.robust_list.len, 0, 0, 0, 0],
        )?;
    }
    // Always set: a disabled stack must also replace the one inherited
    // from torpor.
    const SS_DISABLE: i32 = 2;
    let ss = torpor_parasite::KStack {
        sp: arch::native(t.altstack.sp),
        flags: if t.altstack.flags & SS_DISABLE.bits() != 0 {
            SS_DISABLE
        } else {
            0
        },
        size: arch::native(t.altstack.size),
        ..Default::default()
    };
    let at = Scratch::at(mem, tramp).value(&ss)?;
    r.syscall("sigaltstack", nr::SIGALTSTACK, [at, 0, 0, 0, 0, 0])?;
    if let Some(rs) = t.rseq {
        r.syscall(
            "rseq",
            nr::RSEQ,
            [rs.addr, u64::from(rs.len), 0, u64::from(rs.sig), 0, 0],
        )?;
    }
    if let Some((n, a)) = arch::tls_restore_syscall(t.tls) {
        r.syscall("set_tls", n, a)?;
    }
    for info in &t.pending {
        let sig = siginfo_signo(&info.raw)?;
        let at = Scratch::at(mem, tramp).bytes(&info.raw)?;
        r.syscall(
            "rt_tgsigqueueinfo",
            nr::RT_TGSIGQUEUEINFO,
            [
                u64::from(p.task.pid.bits()),
                u64::from(t.tid.bits()),
                u64::from(sig.bits()),
                at,
                0,
                0,
            ],
        )?;
    }
    // With torpor's rights still: see `attrs::owner_may_set`.
    super::attrs::set_sched(
        &mut r,
        mem,
        tramp,
        p.task.pid,
        &super::attrs::thread_attrs(p, t.tid),
    )?;
    // With torpor's rights still: a filter needs no_new_privs or
    // CAP_SYS_ADMIN, which the thread's own credentials may not give.
    install_own_filters(&mut r, mem, tramp, p, t.tid)?;
    restore_creds(&mut r, mem, tramp, &p.task.creds)?;
    arch::set_fpregs(t.tid, &t.regs.fpu)?;
    let mut regs = Regs::from_bytes(&t.regs.gpr)?;
    regs.for_resume();
    r.replace_saved(regs, t.sigmask);
    r.finish()?;
    Ok(())
}

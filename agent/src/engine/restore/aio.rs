//! The AIO contexts and `membarrier` registrations of a process (see
//! `engine::aio`), made in the process once its mappings are final and
//! before its other threads exist.
//!
//! A context's ring comes from `io_setup`, asked for as many events as
//! make a ring of the recorded size on this host (checked: the new ring
//! must hold the recorded `nr`), and is moved to the recorded address,
//! which the kernel takes as the new context id. The kernel keeps its own
//! copy of the ring's tail, which only completions move: requests that
//! complete at once (reads of no bytes from the process's executable)
//! bring it there. The first `head` are reaped, which puts the ring's
//! head in place too; the rest stay unreaped, counted by the kernel like
//! the completions they stand for, and their events are overwritten with
//! the recorded ones. `io_getevents` then returns exactly what it would
//! have at the dump.

use crate::arch::{nr, Bits};
use crate::engine::aio::{event_at, event_bytes, possible_cpus, read_header, setup_events};
use crate::engine::ptrace::{Mem, RemotePtr};
use crate::engine::remote::Remote;
use crate::engine::state::ProcessState;
use crate::engine::Cause;
use crate::image::records::{AioRing, Membarrier};

use super::trampoline::Scratch;

/// Requests submitted and reaped in one remote call each.
const BATCH: u32 = 32;
/// Bytes of a `struct iocb`.
const IOCB_BYTES: usize = 64;
const IOCB_CMD_PREAD: u16 = 0;

/// Registers the process for every `membarrier` kind the image says it
/// was; a kernel without one is named with the process and the kind.
pub(super) fn register_membarrier(r: &mut Remote<'_>, p: &ProcessState) -> Result<(), Cause> {
    let pid = p.task.pid;
    for bit in [
        Membarrier::GLOBAL_EXPEDITED,
        Membarrier::PRIVATE_EXPEDITED,
        Membarrier::PRIVATE_EXPEDITED_SYNC_CORE,
        Membarrier::PRIVATE_EXPEDITED_RSEQ,
    ] {
        if p.membarrier.registered & bit == 0 {
            continue;
        }
        r.syscall(
            "membarrier",
            nr::MEMBARRIER,
            [u64::from(bit), 0, 0, 0, 0, 0],
        )
        .map_err(|e| {
            Cause::Refused(format!(
                "process {pid} was registered for {} membarriers, which this kernel refuses: {e}",
                Membarrier::name(bit)
            ))
        })?;
    }
    Ok(())
}

/// Makes every AIO context of `p`; `fd` is a descriptor of the task open
/// for reading a regular file (its executable's).
pub(super) fn restore_rings(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
    fd: i32,
) -> Result<(), Cause> {
    if p.aio.is_empty() {
        return Ok(());
    }
    let pid = p.task.pid;
    let cpus = possible_cpus()?;
    let ps = crate::engine::page_size();
    for ring in &p.aio {
        let named = |why: String| {
            Cause::Refused(format!(
                "process {pid}: AIO ring {:#x}-{:#x}: {why}",
                ring.start,
                ring.start + ring.size
            ))
        };
        let n = setup_events(ring.size, cpus, ps).map_err(named)?;
        let ctx_at = Scratch::at(mem, tramp).value(&0usize)?;
        r.syscall("io_setup", nr::IO_SETUP, [n, ctx_at, 0, 0, 0, 0])
            .map_err(|e| named(format!("io_setup({n}): {e}")))?;
        let ctx = mem.read_value(RemotePtr::<usize>::new(ctx_at))? as u64;
        let [_, got_nr, ..] = read_header(mem, ctx)?;
        if got_nr != ring.nr {
            return Err(named(format!(
                "io_setup({n}) made a ring of {got_nr} events here, {} in the image",
                ring.nr
            )));
        }
        // The recorded range is free, so the new ring is either there
        // already or apart from it (mremap refuses overlapping ranges).
        if ctx != ring.start {
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let moved = r
                .syscall(
                    "mremap (AIO ring)",
                    nr::MREMAP,
                    [ctx, ring.size, ring.size, flags, ring.start, 0],
                )
                .map_err(|e| named(format!("moving the ring from {ctx:#x}: {e}")))?;
            if moved != ring.start {
                return Err(named(format!("the ring moved to {moved:#x}")));
            }
        }
        bring_to(r, mem, tramp, ring, fd).map_err(|e| named(e.to_string()))?;
        for (i, e) in (0u32..).zip(&ring.events) {
            let at = event_at(ring.start, (ring.head + i) % ring.nr);
            mem.write(RemotePtr::<u8>::new(at), &event_bytes(e))?;
        }
    }
    Ok(())
}

/// Completes requests in the new context at `ring.start` until the
/// kernel's head and tail are the recorded ones, the last `pending` left
/// unreaped.
fn bring_to(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    ring: &AioRing,
    fd: i32,
) -> Result<(), Cause> {
    let mut reaped = 0;
    while reaped < ring.head {
        let b = BATCH.min(ring.head - reaped);
        complete(r, mem, tramp, ring.start, fd, b, true)?;
        reaped += b;
    }
    let mut left = ring.pending();
    while left > 0 {
        let b = BATCH.min(left);
        complete(r, mem, tramp, ring.start, fd, b, false)?;
        left -= b;
    }
    let [_, _, head, tail, ..] = read_header(mem, ring.start)?;
    if head != ring.head || tail != ring.tail {
        return Err(Cause::Refused(format!(
            "the ring's head and tail are {head} and {tail}, not {} and {}",
            ring.head, ring.tail
        )));
    }
    Ok(())
}

/// Submits `count` reads of no bytes from `fd` to the context `ctx`,
/// which complete at once, and reaps them if `reap`.
fn complete(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    ctx: u64,
    fd: i32,
    count: u32,
    reap: bool,
) -> Result<(), Cause> {
    let mut s = Scratch::at(mem, tramp);
    let n = count as usize;
    let buf = s.bytes(&[0u8; 16])?;
    let mut iocbs = vec![0u8; IOCB_BYTES * n];
    for cb in iocbs.chunks_exact_mut(IOCB_BYTES) {
        cb[16..18].copy_from_slice(&IOCB_CMD_PREAD.to_ne_bytes());
        cb[20..24].copy_from_slice(&fd.bits().to_ne_bytes());
        cb[24..32].copy_from_slice(&buf.to_ne_bytes());
    }
    let iocbs_at = s.bytes(&iocbs)?;
    let word = core::mem::size_of::<usize>();
    let mut ptrs = Vec::with_capacity(word * n);
    for i in 0..n {
        let at = iocbs_at + (i * IOCB_BYTES) as u64;
        ptrs.extend_from_slice(&(crate::arch::native(at)).to_ne_bytes());
    }
    let ptrs_at = s.bytes(&ptrs)?;
    let count = u64::from(count);
    let submitted = r.syscall("io_submit", nr::IO_SUBMIT, [ctx, count, ptrs_at, 0, 0, 0])?;
    if submitted != count {
        return Err(Cause::Refused(format!(
            "io_submit took {submitted} of {count} requests"
        )));
    }
    if reap {
        let events = s.bytes(&vec![0u8; 32 * n])?;
        let got = r.syscall(
            "io_getevents",
            nr::IO_GETEVENTS,
            [ctx, count, count, events, 0, 0],
        )?;
        if got != count {
            return Err(Cause::Refused(format!(
                "io_getevents reaped {got} of {count} requests"
            )));
        }
    }
    Ok(())
}

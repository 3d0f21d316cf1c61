//! The address space of one task, first half: the trampoline goes into a
//! hole of the final layout, torpor's own mappings (inherited through the
//! fork) go, the kernel's special mappings and the shared objects move to
//! their addresses, and every VMA of the image is mapped with its final
//! protection. Pages follow from the image stream (`pages`); what needs the
//! complete layout comes after (`process`).

use std::collections::BTreeMap;

use crate::arch::{self, nr};
use crate::engine::collect::{is_fixed_kernel_mapping, SPECIAL_MAPPINGS};
use crate::engine::files::owner::Acting;
use crate::engine::procfs;
use crate::engine::ptrace::{self, Mem};
use crate::engine::remote::{Remote, RemoteError};
use crate::engine::state::{Backing, ProcessState, Vma};
use crate::engine::{conv, Cause};

use super::trampoline::{self, hole, remote_open, with_remote, TRAMP_SIZE};

/// A task whose mappings are in place, its trampoline at `tramp`.
#[derive(Debug)]
pub(super) struct Rebuild<'a> {
    pub(super) p: &'a ProcessState,
    pub(super) mem: Mem,
    pub(super) tramp: u64,
    /// The task's inherited descriptor of its executable (`files::held`).
    pub(super) exe_fd: i32,
    /// torpor's descriptors in the task start here; closed once the
    /// executable is set.
    pub(super) high_fd: i32,
}

/// Step one of a task's rebuild: trampoline, unmap, specials, mappings.
pub(super) fn map_process<'a>(
    p: &'a ProcessState,
    high_fd: i32,
    shm: &BTreeMap<u64, (u64, u64)>,
    segs: &crate::engine::files::Segments,
) -> Result<Rebuild<'a>, Cause> {
    let pid = p.task.pid;
    let mem = Mem::open(pid)?;
    let maps_path = format!("/proc/{pid}/maps");
    let current = procfs::parse_smaps(&maps_path, &procfs::read(&maps_path)?)?;
    let mut busy = image_ranges(p);
    busy.extend(current.iter().map(|m| (m.start, m.end)));
    let tramp = hole(&mut busy, TRAMP_SIZE)
        .ok_or_else(|| Cause::Refused("no hole for the trampoline".into()))?;
    trampoline::place(pid, &mem, tramp)?;
    let rb = Rebuild {
        p,
        mem,
        tramp,
        exe_fd: segs.held().exe(pid)?,
        high_fd,
    };
    let inherited_rseq = ptrace::rseq_config(pid)?;
    with_remote(&rb.mem, pid, tramp, |r| {
        // The task inherited torpor's rseq registration; the kernel would
        // write into memory about to disappear.
        if let Some((addr, len, sig)) = inherited_rseq {
            const RSEQ_FLAG_UNREGISTER: u64 = 1;
            r.syscall(
                "rseq (unregister)",
                nr::RSEQ,
                [
                    addr,
                    u64::from(len),
                    RSEQ_FLAG_UNREGISTER,
                    u64::from(sig),
                    0,
                    0,
                ],
            )?;
        }
        // Unmap torpor's image in the child, keeping the kernel's specials.
        let in_shm = |a: u64| shm.values().any(|&(s, len)| a >= s && a < s + len);
        let maps: Vec<(u64, u64, bool)> = current
            .iter()
            .map(|m| {
                let keep = SPECIAL_MAPPINGS.contains(&m.name.as_str())
                    || is_fixed_kernel_mapping(&m.name)
                    || in_shm(m.start);
                (m.start, m.end, keep)
            })
            .collect();
        for (start, end) in unmap_spans(maps, (tramp, tramp + TRAMP_SIZE)) {
            r.munmap("munmap", start, end - start)?;
        }
        move_specials(r, p, &current, tramp, shm)?;
        segs.attach_sysv(r, p)?;
        let who = Acting::of(p);
        for v in &p.vmas {
            map_vma(r, &rb.mem, tramp, v, segs, &who)?;
        }
        Ok(())
    })?;
    Ok(rb)
}

/// The address ranges the process has at the end: its mappings and its
/// AIO rings, which nothing torpor places meanwhile may take.
fn image_ranges(p: &ProcessState) -> Vec<(u64, u64)> {
    p.vmas
        .iter()
        .map(|v| (v.start, v.end))
        .chain(p.aio.iter().map(|r| (r.start, r.start + r.size)))
        .collect()
}

/// The ranges that unmap every mapping of `maps` (start, end, kept) not
/// kept, in as few calls as can be: a range spans consecutive mappings
/// and the holes between them (munmap passes over a hole), stopping at a
/// kept mapping and short of `tramp`, mapped after `maps` was read.
fn unmap_spans(mut maps: Vec<(u64, u64, bool)>, tramp: (u64, u64)) -> Vec<(u64, u64)> {
    maps.sort_unstable();
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut open = false;
    for (start, end, keep) in maps {
        if keep {
            open = false;
            continue;
        }
        match spans.last_mut() {
            // The hole up to this mapping holds no trampoline.
            Some(last) if open && (tramp.1 <= last.1 || tramp.0 >= start) => last.1 = end,
            _ => spans.push((start, end)),
        }
        open = true;
    }
    spans
}

/// Moves the kernel's special mappings and the parts of shared memory
/// objects this task maps to their addresses in the image.
fn move_specials(
    r: &mut Remote<'_>,
    p: &ProcessState,
    current: &[procfs::MapEntry],
    tramp: u64,
    shm: &BTreeMap<u64, (u64, u64)>,
) -> Result<(), Cause> {
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (from, size, to)
    for v in &p.vmas {
        if let Backing::Shm { id, offset } = v.backing {
            let &(addr, _) = shm.get(&id).ok_or_else(|| {
                Cause::Refused(format!("shared memory object {id} was not created"))
            })?;
            moves.push((addr + offset, v.end - v.start, v.start));
        }
    }
    for v in &p.vmas {
        let Backing::Special(name) = &v.backing else {
            continue;
        };
        let cur = current.iter().find(|m| &m.name == name).ok_or_else(|| {
            Cause::Refused(format!(
                "this kernel provides no {name}, which the image needs"
            ))
        })?;
        if cur.end - cur.start != v.end - v.start {
            return Err(Cause::Refused(format!(
                "{name} is {} bytes here, {} in the image",
                cur.end - cur.start,
                v.end - v.start
            )));
        }
        moves.push((cur.start, v.end - v.start, v.start));
    }
    for m in current {
        if SPECIAL_MAPPINGS.contains(&m.name.as_str())
            && !p
                .vmas
                .iter()
                .any(|v| matches!(&v.backing, Backing::Special(n) if *n == m.name))
        {
            r.munmap("munmap (special)", m.start, m.end - m.start)?;
        }
    }
    // First out of the way (sources and targets may overlap), then what is
    // left of the shared objects is unmapped — a target may lie inside an
    // object's old range — and then everything goes home.
    let mut busy = image_ranges(p);
    busy.extend(moves.iter().map(|(f, s, _)| (*f, *f + *s)));
    busy.extend(shm.values().map(|&(addr, size)| (addr, addr + size)));
    busy.push((tramp, tramp + TRAMP_SIZE));
    let slots = staging(&mut busy, &moves)
        .ok_or_else(|| Cause::Refused("no room to move the special mappings".into()))?;
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    let mv = |r: &mut Remote<'_>, name: &'static str, from: u64, size: u64, to: u64| {
        let args = [from, size, size, flags, to, 0];
        r.syscall(name, nr::MREMAP, args)
            .map(drop)
            .map_err(|e| match e {
                RemoteError::Syscall { .. } => Cause::Refused(format!(
                    "{e} moving {size:#x} bytes from {from:#x} to {to:#x}"
                )),
                e => Cause::from(e),
            })
    };
    for (&(from, size, _), &tmp) in moves.iter().zip(&slots) {
        mv(r, "mremap (special, out of the way)", from, size, tmp)?;
    }
    // What is left of the shared objects: the parts this task does not map.
    for &(addr, size) in shm.values() {
        r.munmap("munmap (shared memory)", addr, size)?;
    }
    for (&(_, size, to), &tmp) in moves.iter().zip(&slots) {
        mv(r, "mremap (special, into place)", tmp, size, to)?;
    }
    Ok(())
}

/// Where each of `moves` (from, size, to) waits between leaving its old
/// address and reaching `to`: one hole of `busy` holding them all, each at
/// an address congruent to its `to` modulo `SHMLBA`. A shared mapping on a
/// CPU whose data cache aliases may only move to its own cache colour (any
/// other address is EINVAL), and the colour of `to` is right: the kernel
/// placed the mapping there at the dump.
fn staging(busy: &mut [(u64, u64)], moves: &[(u64, u64, u64)]) -> Option<Vec<u64>> {
    let align = arch::SHMLBA;
    let span = moves
        .iter()
        .try_fold(0u64, |acc, m| acc.checked_add(m.1)?.checked_add(align))?;
    let mut at = hole(busy, span)?;
    let mut slots = Vec::with_capacity(moves.len());
    for &(_, size, to) in moves {
        let slot = at + (to.wrapping_sub(at) & (align - 1));
        slots.push(slot);
        at = slot + size;
    }
    Some(slots)
}

fn map_vma(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    v: &Vma,
    segs: &crate::engine::files::Segments,
    who: &Acting,
) -> Result<(), Cause> {
    let len = v.end - v.start;
    let fixed = libc::MAP_FIXED_NOREPLACE;
    match &v.backing {
        Backing::Special(_) => Ok(()),
        // With its final protection: pages are written through
        // /proc/PID/mem, which may write private memory of any protection,
        // and a PROT_NONE reservation stays free of commit charge.
        Backing::Anon => {
            let mut flags = fixed | libc::MAP_ANONYMOUS | libc::MAP_PRIVATE;
            if v.grows_down {
                flags |= libc::MAP_GROWSDOWN;
            }
            if v.noreserve {
                flags |= libc::MAP_NORESERVE;
            }
            r.mmap("mmap (anonymous)", v.start, len, v.prot, flags, -1, 0)?;
            Ok(())
        }
        // Moved into place with the specials; attached before.
        Backing::Shm { .. } | Backing::Sysv { .. } => Ok(()),
        // From the descriptor torpor opened as the task and the task
        // inherited (`files::held`).
        Backing::File { path, offset, .. } => {
            let rw = v.shared && v.prot & libc::PROT_WRITE != 0;
            let fd = segs.held().mapped(path, rw, who)?;
            map_fd(r, v, fd, path, *offset)
        }
        // A shared memfd mapping that could not become writable (of a
        // write-sealed memfd, say) is made from a read-only fd, which keeps
        // it so and lets the seal be added after.
        Backing::Memfd {
            id,
            offset,
            may_write,
        } => map_from(
            r,
            mem,
            tramp,
            v,
            &segs.memfd_path(*id)?,
            *offset,
            v.shared && *may_write,
        ),
        Backing::Unlinked {
            inode,
            offset,
            may_write,
        } => map_from(
            r,
            mem,
            tramp,
            v,
            &segs.unlinked_path(*inode)?,
            *offset,
            v.shared && *may_write,
        ),
    }
}

/// Maps `v` from torpor's object at `path` (`/proc/self/fd/N`, reopened
/// in the task, read-write when the mapping is shared and may write).
fn map_from(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    v: &Vma,
    path: &str,
    offset: u64,
    writable_shared: bool,
) -> Result<(), Cause> {
    let fd = remote_open(
        r,
        mem,
        tramp,
        path.as_bytes(),
        if writable_shared {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        },
    )?;
    let fd_i: i32 = conv::fit(fd, "int", format_args!("descriptor of {path} in the task"))?;
    let res = map_fd(r, v, fd_i, path, offset);
    r.close(fd)?;
    res
}

/// Maps `v` from the task's descriptor `fd` of the file at `path`.
fn map_fd(r: &mut Remote<'_>, v: &Vma, fd: i32, path: &str, offset: u64) -> Result<(), Cause> {
    let flags = libc::MAP_FIXED_NOREPLACE
        | if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    r.mmap(
        "mmap (file)",
        v.start,
        v.end - v.start,
        v.prot,
        flags,
        fd,
        offset,
    )
    .map_err(|e| {
        Cause::Refused(format!(
            "mapping {} ({path}) at {:#x}: {e}",
            v.name, v.start
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torpor_s_mappings_go_in_few_munmaps_sparing_kept_ones_and_the_trampoline() {
        let maps = vec![
            // Out of order, as nothing promises otherwise.
            (0x5000, 0x6000, false),
            (0x1000, 0x2000, false),
            (0x3000, 0x4000, false),
            // The vdso, kept: a span ends before it.
            (0x8000, 0x9000, true),
            (0xa000, 0xb000, false),
            // The trampoline lies in the hole 0xc000..0x20000.
            (0x20000, 0x21000, false),
            (0x22000, 0x23000, false),
            (0xffff_f000, 0x1_0000_0000, true),
        ];
        assert_eq!(
            unmap_spans(maps.clone(), (0x10000, 0x14000)),
            vec![(0x1000, 0x6000), (0xa000, 0xb000), (0x20000, 0x23000)]
        );
        // A trampoline elsewhere splits nothing.
        assert_eq!(
            unmap_spans(maps, (0x4000_0000, 0x4000_4000)),
            vec![(0x1000, 0x6000), (0xa000, 0x23000)]
        );
        assert!(unmap_spans(vec![(0x1000, 0x2000, true)], (0, 0x1000)).is_empty());
    }

    #[test]
    fn staging_slots_keep_the_cache_colour_and_stay_clear() {
        let align = arch::SHMLBA;
        // A shared object piece whose home is one page past a colour
        // boundary, a one-page special, and a hole that starts off-colour.
        let moves = [
            (0x7000_0000, 0x10000, 0x4000_1000 + 3 * 4096),
            (0x7100_0000, 0x1000, 0x4100_0000),
            (0x7200_0000, 0x2000, 0x4200_0000 + 4096),
        ];
        let mut busy = vec![
            (0x0000_1000, 0x0100_3000),
            (0x7000_0000, 0x7001_0000),
            (0x7100_0000, 0x7100_1000),
        ];
        let fixed = busy.clone();
        let slots = staging(&mut busy, &moves).expect("room");
        let mut end = 0;
        for (&(_, size, to), &slot) in moves.iter().zip(&slots) {
            assert_eq!(slot % align, to % align, "slot {slot:#x} for {to:#x}");
            assert_eq!(slot % 4096, 0);
            assert!(slot >= end, "slots overlap");
            end = slot + size;
            for &(s, e) in &fixed {
                assert!(
                    slot + size <= s || slot >= e,
                    "slot {slot:#x} overlaps {s:#x}-{e:#x}"
                );
            }
        }
        assert!(slots[0] >= 0x0100_3000);
    }
}

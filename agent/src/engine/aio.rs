//! AIO contexts (`io_setup`) and `membarrier` registrations: kernel state
//! of a process's mm that no file or mapping record holds.
//!
//! An AIO context shows only as its ring, a shared mapping named
//! `/[aio] (deleted)` whose address is the context id the application
//! holds. The dump reads the ring's header and the completions between
//! `head` and `tail` from the frozen task's memory; the ring is not a
//! mapping of the image. The restore makes a context whose ring has the
//! same number of events, moves the ring to its address (the kernel
//! follows an `mremap` of the ring and changes the context id with it),
//! brings the kernel's `head` and `tail` to the recorded ones and writes
//! the completions back (`restore::aio`).
//!
//! Requests in flight at the dump cannot be seen: the kernel counts them
//! only in the context's private accounting. One still in flight is lost
//! (it never completes in the restored process), and one that completes
//! after the ring was read completes only in the dumped process.
//!
//! `membarrier` registrations are asked of the task: with
//! `MEMBARRIER_CMD_GET_REGISTRATIONS` where the kernel has it (6.3 on),
//! which tells every kind; elsewhere each private kind is probed with its
//! barrier command, which fails with `EPERM` unless the process registered
//! for it. A registration for global expedited barriers is not seen on a
//! kernel without `GET_REGISTRATIONS` (the global command never fails) and
//! is then not restored.
//!
//! Unsafe code: `membarrier(MEMBARRIER_CMD_QUERY)` in torpor itself, which
//! passes no memory.
#![allow(unsafe_code)]

use crate::engine::procfs::MapEntry;
use crate::engine::ptrace::{Mem, RemotePtr};
use crate::engine::Cause;
use crate::image::records::{
    AioRing, IoEvent, Membarrier, AIO_RING_COMPAT, AIO_RING_HEADER, AIO_RING_INCOMPAT,
    AIO_RING_MAGIC, IO_EVENT_BYTES,
};

/// The name an AIO ring mapping has in `/proc/PID/maps`.
pub const AIO_RING_NAME: &str = "/[aio] (deleted)";

/// Whether a mapping is an AIO ring.
pub fn is_aio_ring(m: &MapEntry) -> bool {
    m.name == AIO_RING_NAME
}

/// [`AIO_RING_HEADER`] and [`IO_EVENT_BYTES`] as buffer lengths.
const HEADER_LEN: usize = 32;
const EVENT_LEN: usize = 32;

/// The kernel's limit on the events of a context: `io_setup` refuses more
/// than fit 256 MiB of events.
const MAX_EVENTS: u64 = 0x1000_0000 / IO_EVENT_BYTES;

/// The header fields of a ring, from its first 32 bytes.
fn header_of(b: &[u8; HEADER_LEN]) -> [u32; 8] {
    let mut out = [0u32; 8];
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        let mut w = [0u8; 4];
        w.copy_from_slice(c);
        *o = u32::from_ne_bytes(w);
    }
    out
}

/// Reads the header of the ring at `start` in the task behind `mem`:
/// id, nr, head, tail, magic, compat and incompat features, header length.
pub fn read_header(mem: &Mem, start: u64) -> Result<[u32; 8], Cause> {
    let mut b = [0u8; HEADER_LEN];
    mem.read(RemotePtr::<u8>::new(start), &mut b)?;
    Ok(header_of(&b))
}

/// Where event `index` of a ring at `start` lies.
pub fn event_at(start: u64, index: u32) -> u64 {
    start + AIO_RING_HEADER + u64::from(index) * IO_EVENT_BYTES
}

/// The bytes of one event, as the kernel lays it out.
pub fn event_bytes(e: &IoEvent) -> [u8; EVENT_LEN] {
    let mut b = [0u8; EVENT_LEN];
    b[0..8].copy_from_slice(&e.data.to_ne_bytes());
    b[8..16].copy_from_slice(&e.obj.to_ne_bytes());
    b[16..24].copy_from_slice(&e.res.to_ne_bytes());
    b[24..32].copy_from_slice(&e.res2.to_ne_bytes());
    b
}

fn event_of(b: &[u8]) -> IoEvent {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i..i + 8]);
        w
    };
    IoEvent {
        data: u64::from_ne_bytes(word(0)),
        obj: u64::from_ne_bytes(word(8)),
        res: i64::from_ne_bytes(word(16)),
        res2: i64::from_ne_bytes(word(24)),
    }
}

/// Everything the kernel would refuse or a restore could not rebuild in a
/// ring: its place and size, the header, head and tail, and the number
/// of completions. `page_size` is the image's.
pub fn check_ring(r: &AioRing, page_size: u64) -> Result<(), String> {
    let at = format!(
        "AIO ring {:#x}-{:#x}",
        r.start,
        r.start.wrapping_add(r.size)
    );
    if r.size == 0 || r.start % page_size != 0 || r.size % page_size != 0 {
        return Err(format!("{at}: not whole pages of {page_size} bytes"));
    }
    if r.start.checked_add(r.size).is_none() {
        return Err(format!("{at}: past the end of the address space"));
    }
    if r.magic != AIO_RING_MAGIC
        || r.compat_features != AIO_RING_COMPAT
        || r.incompat_features != AIO_RING_INCOMPAT
        || u64::from(r.header_length) != AIO_RING_HEADER
    {
        return Err(format!(
            "{at}: magic {:#x}, features {}/{}, header of {} bytes (the kernel's are {AIO_RING_MAGIC:#x}, {AIO_RING_COMPAT}/{AIO_RING_INCOMPAT}, {AIO_RING_HEADER})",
            r.magic, r.compat_features, r.incompat_features, r.header_length
        ));
    }
    let nr = r.size / IO_EVENT_BYTES - 1;
    if u64::from(r.nr) != nr || nr > MAX_EVENTS {
        return Err(format!(
            "{at}: {} events in a ring of {} bytes (the kernel makes it hold {nr})",
            r.nr, r.size
        ));
    }
    if r.head >= r.nr || r.tail >= r.nr {
        return Err(format!(
            "{at}: head {} and tail {} in a ring of {} events",
            r.head, r.tail, r.nr
        ));
    }
    let pending = r.pending() as usize;
    if r.first != 0 || r.events.len() != pending {
        return Err(format!(
            "{at}: {} completions kept of the {pending} from head {} to tail {}",
            r.events.len(),
            r.head,
            r.tail
        ));
    }
    Ok(())
}

/// Reads the AIO ring mapping `m` of process `pid`: refused if it is not
/// a whole ring as the kernel made it (the rest of it unmapped, moved or
/// made read-only by the application) or its header is not the kernel's.
pub fn read_ring(pid: i32, mem: &Mem, m: &MapEntry, page_size: u64) -> Result<AioRing, Cause> {
    let refuse = |why: String| {
        Cause::Unsupported(format!(
            "process {pid}: {why} (mapping {}), which torpor cannot restore",
            m.name
        ))
    };
    if !m.shared || !m.read || !m.write || m.exec || m.offset != 0 {
        return Err(refuse(format!(
            "AIO ring {:#x}-{:#x}: not the whole read-write shared mapping io_setup makes",
            m.start, m.end
        )));
    }
    let [id, nr, head, tail, magic, compat_features, incompat_features, header_length] =
        read_header(mem, m.start)?;
    let mut r = AioRing {
        start: m.start,
        size: m.end - m.start,
        id,
        nr,
        head,
        tail,
        magic,
        compat_features,
        incompat_features,
        header_length,
        first: 0,
        events: Vec::new(),
    };
    let pending = r.pending();
    // Checked before the events are read: `nr` sizes the reads.
    let mut header_only = r.clone();
    header_only.events = vec![IoEvent::default(); pending as usize];
    check_ring(&header_only, page_size).map_err(refuse)?;
    // From head to the end of the ring, then from its start.
    let to_end = pending.min(nr - head);
    for (from, count) in [(head, to_end), (0, pending - to_end)] {
        if count == 0 {
            continue;
        }
        let len = usize::try_from(u64::from(count) * IO_EVENT_BYTES)
            .map_err(|_| refuse(format!("{count} completions")))?;
        let mut b = vec![0u8; len];
        mem.read(RemotePtr::<u8>::new(event_at(m.start, from)), &mut b)?;
        r.events.extend(b.chunks_exact(EVENT_LEN).map(event_of));
    }
    Ok(r)
}

/// How many CPUs the kernel counts as possible
/// (`/sys/devices/system/cpu/possible`, as `0-3` or `0,2-5`).
pub fn possible_cpus() -> Result<u64, Cause> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    parse_cpu_list(text.trim()).ok_or_else(|| Cause::Refused(format!("{path}: {text:?}")))
}

fn parse_cpu_list(s: &str) -> Option<u64> {
    let mut n = 0u64;
    for part in s.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
            None => {
                let v = part.parse::<u64>().ok()?;
                (v, v)
            }
        };
        if hi < lo || hi > 1 << 20 {
            return None;
        }
        n += hi - lo + 1;
    }
    (n > 0).then_some(n)
}

/// The pages of the ring `io_setup(n)` makes with `cpus` possible CPUs:
/// the kernel takes at least 4 events per CPU, doubles them, adds 2 and
/// rounds the ring (header and events) up to pages.
fn ring_pages(n: u64, cpus: u64, page_size: u64) -> u64 {
    let events = n.max(4 * cpus) * 2 + 2;
    (AIO_RING_HEADER + events * IO_EVENT_BYTES).div_ceil(page_size)
}

/// The `nr_events` to pass to `io_setup` for a ring of `size` bytes on a
/// host with `cpus` possible CPUs: the largest that still makes a ring of
/// that size (a context accepts that many requests in flight, at least
/// as many as the dumped one did).
pub fn setup_events(size: u64, cpus: u64, page_size: u64) -> Result<u64, String> {
    if size == 0 || size % page_size != 0 {
        return Err(format!("a ring of {size} bytes is not whole pages"));
    }
    let pages = size / page_size;
    let most = (size / IO_EVENT_BYTES)
        .checked_sub(3)
        .ok_or_else(|| format!("a ring of {size} bytes"))?;
    let n = (most / 2).max(1);
    if n.max(4 * cpus) * 2 > MAX_EVENTS {
        return Err(format!(
            "a ring of {pages} pages is larger than the kernel makes"
        ));
    }
    let got = ring_pages(n, cpus, page_size);
    if got != pages {
        return Err(format!(
            "a ring of {pages} pages cannot be made on this host, whose {cpus} possible CPUs make every ring at least {got} pages"
        ));
    }
    Ok(n)
}

/// `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3).
const MEMBARRIER_GET_REGISTRATIONS: u64 = 512;

/// The barrier command that fails with `EPERM` unless the process
/// registered with `register`.
fn probe_command(register: u32) -> u64 {
    u64::from(register / 2)
}

/// The `membarrier` registrations of the process `r` borrows a thread of.
pub fn read_membarrier(r: &mut crate::engine::remote::Remote<'_>) -> Result<Membarrier, Cause> {
    use crate::arch::nr;
    let args = |cmd: u64| [cmd, 0, 0, 0, 0, 0];
    let got = r.syscall_raw(nr::MEMBARRIER, args(MEMBARRIER_GET_REGISTRATIONS))?;
    if got >= 0 {
        let registered = u32::try_from(got)
            .ok()
            .filter(|m| m & !Membarrier::ALL == 0)
            .ok_or_else(|| {
                Cause::Unsupported(format!(
                    "membarrier registrations {got:#x}, which torpor does not know"
                ))
            })?;
        return Ok(Membarrier { registered });
    }
    if got == -i64::from(libc::ENOSYS) {
        return Ok(Membarrier::default());
    }
    let mut probed = Vec::new();
    for bit in PROBED {
        // A barrier among the process's own threads, all frozen.
        probed.push((
            bit,
            r.syscall_raw(nr::MEMBARRIER, args(probe_command(bit)))?,
        ));
    }
    from_probes(&probed).map_err(Cause::Unsupported)
}

/// The kinds a kernel without `GET_REGISTRATIONS` lets torpor probe.
const PROBED: [u32; 3] = [
    Membarrier::PRIVATE_EXPEDITED,
    Membarrier::PRIVATE_EXPEDITED_SYNC_CORE,
    Membarrier::PRIVATE_EXPEDITED_RSEQ,
];

/// The registrations the barrier commands' results (registration, raw
/// result) tell: 0 registered, `EPERM` not, `EINVAL` a kind the kernel
/// does not have; anything else is refused.
fn from_probes(probed: &[(u32, i64)]) -> Result<Membarrier, String> {
    let mut registered = 0;
    for &(bit, rc) in probed {
        match rc {
            0 => registered |= bit,
            e if e == -i64::from(libc::EPERM) || e == -i64::from(libc::EINVAL) => {}
            e => {
                return Err(format!(
                    "membarrier ({} barrier) returned {e}",
                    Membarrier::name(bit)
                ))
            }
        }
    }
    Ok(Membarrier { registered })
}

/// The `membarrier` commands this kernel has (`MEMBARRIER_CMD_QUERY`);
/// none without the syscall.
pub fn membarrier_supported() -> u32 {
    // SAFETY: membarrier(QUERY, 0, 0) takes no pointer; it returns a mask
    // or -1.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, 0, 0, 0) };
    u32::try_from(rc).unwrap_or(0)
}

/// What this host must have for the AIO contexts and `membarrier`
/// registrations of `p`, checked before anything is created: each
/// registration's command, and rings of each recorded size.
pub fn check_host(p: &crate::engine::state::ProcessState) -> Result<(), String> {
    let pid = p.task.pid;
    if p.membarrier.registered != 0 {
        let have = membarrier_supported();
        for bit in [
            Membarrier::GLOBAL_EXPEDITED,
            Membarrier::PRIVATE_EXPEDITED,
            Membarrier::PRIVATE_EXPEDITED_SYNC_CORE,
            Membarrier::PRIVATE_EXPEDITED_RSEQ,
        ] {
            if p.membarrier.registered & bit != 0 && have & bit == 0 {
                return Err(format!(
                    "process {pid} was registered for {} membarriers, which this kernel does not have",
                    Membarrier::name(bit)
                ));
            }
        }
    }
    if p.aio.is_empty() {
        return Ok(());
    }
    let cpus = possible_cpus().map_err(|e| e.to_string())?;
    let ps = crate::engine::page_size();
    for r in &p.aio {
        setup_events(r.size, cpus, ps).map_err(|why| {
            format!(
                "process {pid}: AIO ring {:#x}-{:#x}: {why}",
                r.start,
                r.start + r.size
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> AioRing {
        AioRing {
            start: 0x7f00_0000_0000,
            size: 4096,
            id: 0,
            nr: 127,
            head: 125,
            tail: 2,
            magic: AIO_RING_MAGIC,
            compat_features: 1,
            incompat_features: 0,
            header_length: 32,
            first: 0,
            events: vec![IoEvent::default(); 4],
        }
    }

    #[test]
    fn a_ring_s_completions_wrap_around_its_end() {
        let r = ring();
        assert_eq!(r.pending(), 4);
        assert_eq!(check_ring(&r, 4096), Ok(()));
        assert_eq!(event_at(0x1000, 0), 0x1020);
        assert_eq!(event_at(0x1000, 126), 0x1000 + 32 + 126 * 32);
    }

    #[test]
    fn a_ring_the_kernel_would_not_make_is_refused() {
        type Spoil = fn(&mut AioRing);
        let cases: [(&str, Spoil); 8] = [
            ("magic", |r| r.magic = 0),
            ("header", |r| r.header_length = 64),
            ("features", |r| r.incompat_features = 1),
            ("events", |r| r.nr = 126),
            ("pages", |r| r.size = 4000),
            ("head", |r| r.head = 127),
            ("tail", |r| r.tail = 200),
            ("completions", |r| r.events.push(IoEvent::default())),
        ];
        for (what, f) in cases {
            let mut r = ring();
            f(&mut r);
            assert!(check_ring(&r, 4096).is_err(), "{what}");
        }
        let mut r = ring();
        r.start += 8;
        assert!(check_ring(&r, 4096).is_err(), "alignment");
        let mut r = ring();
        r.start = u64::MAX - 4095;
        assert!(check_ring(&r, 4096).is_err(), "overflow");
    }

    #[test]
    fn io_setup_is_asked_for_a_ring_of_the_same_pages() {
        for cpus in [1, 2, 4, 8] {
            for n in [1u64, 5, 62, 63, 100, 1000, 4096] {
                let pages = ring_pages(n, cpus, 4096);
                let asked = setup_events(pages * 4096, cpus, 4096).expect("possible");
                assert_eq!(ring_pages(asked, cpus, 4096), pages, "{cpus} cpus, {n}");
                assert!(asked >= n, "{cpus} cpus, {n}");
            }
        }
        // One page holds 127 events: io_setup(62) makes it, 63 does not.
        assert_eq!(setup_events(4096, 2, 4096), Ok(62));
        assert_eq!(ring_pages(63, 2, 4096), 2);
        // 64 CPUs make every ring at least 5 pages.
        let e = setup_events(4096, 64, 4096).unwrap_err();
        assert!(e.contains("at least 5 pages"), "{e}");
        assert!(setup_events(4000, 1, 4096).is_err());
    }

    #[test]
    fn this_host_can_make_the_smallest_ring_it_makes() {
        let cpus = possible_cpus().expect("possible cpus");
        let ps = crate::engine::page_size();
        let mut p = crate::engine::state::ProcessState::default();
        let mut r = ring();
        r.size = ring_pages(1, cpus, ps) * ps;
        r.nr = u32::try_from(r.size / 32 - 1).expect("nr");
        p.aio.push(r);
        assert_eq!(check_host(&p), Ok(()));
        // A page or two more are as possible.
        for extra in [1, 2] {
            p.aio[0].size = (ring_pages(1, cpus, ps) + extra) * ps;
            assert_eq!(check_host(&p), Ok(()), "{extra} more pages");
        }
    }

    #[test]
    fn cpu_lists_count_every_cpu() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0,2-5"), Some(5));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    #[test]
    fn events_have_the_kernel_layout() {
        let e = IoEvent {
            data: 1,
            obj: 0x1122_3344_5566_7788,
            res: -5,
            res2: 7,
        };
        let b = event_bytes(&e);
        assert_eq!(event_of(&b), e);
        assert_eq!(b[8], 0x88);
        assert_eq!(b[16..24], (-5i64).to_le_bytes());
    }

    #[test]
    fn probes_tell_registered_kinds_from_unregistered_and_unknown_ones() {
        let eperm = -i64::from(libc::EPERM);
        let einval = -i64::from(libc::EINVAL);
        let got = from_probes(&[
            (Membarrier::PRIVATE_EXPEDITED, 0),
            (Membarrier::PRIVATE_EXPEDITED_SYNC_CORE, einval),
            (Membarrier::PRIVATE_EXPEDITED_RSEQ, eperm),
        ]);
        assert_eq!(
            got,
            Ok(Membarrier {
                registered: Membarrier::PRIVATE_EXPEDITED
            })
        );
        let e = from_probes(&[(Membarrier::PRIVATE_EXPEDITED_RSEQ, -i64::from(libc::EFAULT))])
            .unwrap_err();
        assert!(e.contains("private expedited rseq barrier"), "{e}");
    }

    #[test]
    fn each_registration_is_probed_with_its_barrier() {
        assert_eq!(probe_command(Membarrier::PRIVATE_EXPEDITED), 8);
        assert_eq!(probe_command(Membarrier::PRIVATE_EXPEDITED_SYNC_CORE), 32);
        assert_eq!(probe_command(Membarrier::PRIVATE_EXPEDITED_RSEQ), 128);
    }
}

//! The image's second pass, the only one that reads the pages: records
//! stream in order, each task record starting that task's address space
//! (`memory`), its page records copied straight into the task, object data
//! filling memfds and SysV segments, and the next task record (or the end)
//! finishing the task before (`process`). Every record is checked as it
//! comes: its CRC, a task record must be the process the first pass read,
//! a page record must fall inside a mapping of its task that takes pages
//! (`plan::page_target`), object data inside its object
//! (`Segments::fill`), and at the end the trailer's page count and CRC of
//! the whole image. Any refusal kills the tree built so far (`Created`);
//! none of it has run, since the tasks run only once this pass is over
//! and every task is complete. A damaged image is reported as a failed
//! validation, whichever pass found it.
//!
//! In a lazy restore (`lazy`) this pass reads no page data of lazy
//! mappings: it notes where their records lie, which the first pass
//! found (`ImageReader::knowing_pages`: a run of page records is one seek,
//! not a read of each frame), and the others are read on their own,
//! CRC-checked, as they come; the trailer's page count is checked, the
//! whole-image CRC is not (each record's is, when read: a place the first
//! pass gave that no longer holds that page record is refused then).

use std::collections::BTreeMap;
use std::io::Read;

use crate::engine::ptrace::{self, Mem, RemotePtr};
use crate::engine::state::{ImageState, ProcessState};
use crate::engine::{EngineError, Step, StepExt};
use crate::image::records::Task;
use crate::image::{Codec, ImageReader, Kind};

use super::lazy;
use super::memory::{map_process, Rebuild};
use super::process::finish_process;
use super::tasks::Created;
use super::{refused, RestoreStats};

/// A lazy restore's part in the second pass: the reader defers every
/// page record (`ImageReader::deferring_pages`); those of lazy mappings
/// of a task with a userfaultfd go to the server, the others are read
/// from `fetch` and written as always.
pub(super) struct LazyPass<'a> {
    pub(super) fetch: &'a mut dyn ReadSeek,
    pub(super) scratch: Vec<u8>,
    pub(super) server: &'a lazy::Handle,
    /// Starts the server, once.
    pub(super) start: &'a mut dyn FnMut(),
    /// The task being rebuilt, when its pages come lazily.
    pub(super) current: Option<lazy::Deferral>,
    /// Why some process's pages came eagerly after all.
    pub(super) fell_back: Option<String>,
}

impl std::fmt::Debug for LazyPass<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPass")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// A source of page records read at any offset.
pub(super) trait ReadSeek: Read + std::io::Seek {}
impl<T: Read + std::io::Seek> ReadSeek for T {}

/// Streams the page records of the image into the tasks, rebuilding each
/// task's mappings when its record comes.
#[allow(clippy::too_many_arguments)]
pub(super) fn rebuild_all<R: Read>(
    st: &ImageState,
    mut rd: ImageReader<R>,
    created: &mut Created,
    high_fd: i32,
    shm: &BTreeMap<u64, (u64, u64)>,
    segs: &mut crate::engine::files::Segments,
    progress: Option<&dyn crate::engine::Progress>,
    mut lazy: Option<&mut LazyPass<'_>>,
) -> Result<RestoreStats, EngineError> {
    progress.inspect(|pr| pr.expect(st.pages.saturating_mul(st.page_size)));
    // The image's own faults are the validation's: the first pass stepped
    // over these bytes.
    let rstep = Step::Validate;
    // At most max(PAGE_BATCH_BYTES, page_size) bytes: a u32 value, which
    // fits usize on every target.
    let batch = rd.header().batch_pages() as usize * rd.header().page_size as usize;
    let mut buf = vec![0u8; batch];
    let mut stats = RestoreStats::default();
    let mut cur: Option<Rebuild<'_>> = None;
    // The zombie whose task record came last: pages of it are refused.
    let mut zombie: Option<&ProcessState> = None;
    let mut idx = 0usize;
    let mut passing_over = false;
    let finish = |rb: Rebuild<'_>,
                  created: &mut Created,
                  stats: &mut RestoreStats,
                  lazy: Option<&mut LazyPass<'_>>|
     -> Result<(), EngineError> {
        let pid = rb.p.task.pid;
        // Faults from here on are the server's: a remote syscall may touch
        // a lazy page.
        if let Some(l) = lazy {
            if let Some(d) = l.current.take() {
                (l.start)();
                l.server.send(lazy::Msg::Add(d));
            }
        }
        stats.threads += finish_process(&rb, &st.files, created).step(Step::Rebuild(pid))?;
        stats.processes += 1;
        Ok(())
    };
    loop {
        let rec = rd.next_record().step(rstep)?;
        let Some(rec) = rec else { break };
        match rec.kind() {
            Kind::Task => {
                if let Some(rb) = cur.take() {
                    finish(rb, created, &mut stats, lazy.as_deref_mut())?;
                }
                let t: Task = rec.decode().step(rstep)?;
                // Another tree of the image, restored on its own.
                passing_over = crate::engine::trees::passed_over_task(st, t.pid);
                if passing_over {
                    continue;
                }
                let p = st
                    .processes
                    .get(idx)
                    .filter(|p| p.task.pid == t.pid)
                    .ok_or_else(|| {
                        refused(Step::ReadImage, "image changed while restoring".into())
                    })?;
                idx += 1;
                zombie = None;
                if p.task.exit_status.is_some() {
                    zombie = Some(p);
                    stats.processes += 1;
                    continue;
                }
                let rb = map_process(p, high_fd, shm, segs).step(Step::MapMemory(p.task.pid))?;
                if let Some(l) = lazy.as_deref_mut() {
                    match lazy::attach(&rb, st.page_size).step(Step::MapMemory(p.task.pid))? {
                        Ok(d) => l.current = Some(d),
                        Err(why) => {
                            crate::daemon::log::warning!(
                                "lazy restore unavailable ({why}): process {} restored eagerly",
                                p.task.pid
                            );
                            l.fell_back.get_or_insert(why);
                        }
                    }
                }
                cur = Some(rb);
            }
            Kind::Pages if passing_over => {}
            Kind::Pages => {
                let deferred = rec.page_ref();
                let eager = match deferred {
                    Some(_) => None,
                    None => Some(rec.pages().step(rstep)?),
                };
                let first = match (deferred, eager) {
                    (Some(at), _) => at.vaddr,
                    (None, Some(p)) => p.vaddr,
                    (None, None) => 0,
                };
                let Some(rb) = cur.as_ref() else {
                    let why = match zombie {
                        Some(z) => super::plan::page_target(z, first, 0).err(),
                        None => None,
                    };
                    return Err(refused(
                        Step::ReadImage,
                        why.unwrap_or_else(|| "pages before any task".into()),
                    ));
                };
                if let Some(at) = deferred {
                    let pid = rb.p.task.pid;
                    let len = u64::from(at.pages) * st.page_size;
                    let v = super::plan::page_target(rb.p, at.vaddr, len)
                        .map_err(|why| refused(Step::WriteMemory(pid), why))?;
                    let Some(l) = lazy.as_deref_mut() else {
                        return Err(refused(
                            rstep,
                            "a deferred page record outside a lazy restore".into(),
                        ));
                    };
                    if let (Some(d), true) = (l.current.as_mut(), lazy::lazy_vma(v)) {
                        stats.page_bytes += d.defer(at);
                        continue;
                    }
                    let ps = u32::try_from(st.page_size).unwrap_or(u32::MAX);
                    let info =
                        crate::image::read_pages_at(l.fetch, &at, ps, &mut l.scratch, &mut buf)
                            .step(rstep)?;
                    let data = &buf[..info.len];
                    let writable = v.prot & libc::PROT_WRITE != 0;
                    put_pages(pid, &rb.mem, writable, at.vaddr, data)
                        .step(Step::WriteMemory(pid))?;
                    stats.page_bytes += data.len() as u64;
                    progress.inspect(|pr| pr.advance(data.len() as u64));
                    continue;
                }
                let p = match eager {
                    Some(p) => p,
                    None => rec.pages().step(rstep)?,
                };
                // Raw pages go to the task straight from the record.
                let (vaddr, data) = if p.codec == Codec::Raw {
                    (p.vaddr, p.data)
                } else {
                    let info = rec.decode_pages_into(&mut buf).step(rstep)?;
                    (info.vaddr, &buf[..info.len])
                };
                let v = super::plan::page_target(rb.p, vaddr, data.len() as u64)
                    .map_err(|why| refused(Step::WriteMemory(rb.p.task.pid), why))?;
                let writable = v.prot & libc::PROT_WRITE != 0;
                put_pages(rb.p.task.pid, &rb.mem, writable, vaddr, data)
                    .step(Step::WriteMemory(rb.p.task.pid))?;
                stats.page_bytes += data.len() as u64;
                progress.inspect(|pr| pr.advance(data.len() as u64));
            }
            Kind::ObjectData => {
                let d: crate::image::records::ObjectData = rec.decode().step(rstep)?;
                if !crate::engine::trees::passed_over_object(st, &d.object) {
                    segs.fill(&d).step(Step::FillObjects)?;
                }
            }
            _ => {}
        }
    }
    if let Some(rb) = cur.take() {
        finish(rb, created, &mut stats, lazy)?;
    }
    Ok(stats)
}

/// Copies `data` into the task at `vaddr`: with one process_vm_writev into
/// a mapping the task may write (a single copy into the final pages), else
/// through `/proc/PID/mem`, which writes any private mapping whatever its
/// protection (a read-only data section, a PROT_NONE guard with contents).
fn put_pages(
    pid: i32,
    mem: &Mem,
    writable: bool,
    vaddr: u64,
    data: &[u8],
) -> Result<(), ptrace::PtraceError> {
    if writable && matches!(ptrace::vm_write(pid, vaddr, data), Ok(n) if n == data.len()) {
        return Ok(());
    }
    mem.write(RemotePtr::<u8>::new(vaddr), data)
}

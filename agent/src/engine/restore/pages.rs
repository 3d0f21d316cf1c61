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

use std::collections::BTreeMap;
use std::io::Read;

use crate::engine::ptrace::{self, Mem, RemotePtr};
use crate::engine::state::{ImageState, ProcessState};
use crate::engine::{EngineError, Step, StepExt};
use crate::image::records::Task;
use crate::image::{Codec, ImageReader, Kind};

use super::memory::{map_process, Rebuild};
use super::process::finish_process;
use super::tasks::Created;
use super::{refused, RestoreStats};

/// Streams the page records of the image into the tasks, rebuilding each
/// task's mappings when its record comes.
pub(super) fn rebuild_all<R: Read>(
    st: &ImageState,
    image: R,
    created: &mut Created,
    high_fd: i32,
    shm: &BTreeMap<u64, (u64, u64)>,
    segs: &mut crate::engine::files::Segments,
    progress: Option<&dyn crate::engine::Progress>,
) -> Result<RestoreStats, EngineError> {
    progress.inspect(|pr| pr.expect(st.pages.saturating_mul(st.page_size)));
    // The image's own faults are the validation's: the first pass stepped
    // over these bytes.
    let rstep = Step::Validate;
    let mut rd = ImageReader::new(image).step(rstep)?;
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
                  stats: &mut RestoreStats|
     -> Result<(), EngineError> {
        let pid = rb.p.task.pid;
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
                    finish(rb, created, &mut stats)?;
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
                cur = Some(map_process(p, high_fd, shm, segs).step(Step::MapMemory(p.task.pid))?);
            }
            Kind::Pages if passing_over => {}
            Kind::Pages => {
                let p = rec.pages().step(rstep)?;
                let Some(rb) = cur.as_ref() else {
                    let why = match zombie {
                        Some(z) => super::plan::page_target(z, p.vaddr, 0).err(),
                        None => None,
                    };
                    return Err(refused(
                        Step::ReadImage,
                        why.unwrap_or_else(|| "pages before any task".into()),
                    ));
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
        finish(rb, created, &mut stats)?;
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

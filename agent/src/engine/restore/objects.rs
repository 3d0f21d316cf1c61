//! The tree's shared objects, opened in torpor before any task exists:
//! every open file description (files by path at their offsets, devices
//! and terminals, pipes and FIFOs with their unread bytes, unlinked files,
//! sockets, eventfds, timerfds, epoll and inotify instances, the
//! connection to the daemon, inherited descriptors), each shared anonymous
//! memory object, memfds and SysV segments. Tasks inherit them through the
//! fork and take theirs at their numbers.
//!
//! Unsafe code: descriptors are opened, duplicated above the tree's own
//! numbers and closed with libc calls, and shared memory objects are
//! mapped in torpor with `mmap`.
#![allow(unsafe_code)]

use std::collections::BTreeMap;

use crate::arch;
use crate::engine::clocks::Offsets;
use crate::engine::files::owner::{self, Acting, Opening};
use crate::engine::files::pipe::PipeEnds;
use crate::engine::files::{move_high, OpenCx};
use crate::engine::state::{Backing, ImageState};
use crate::engine::{EngineError, Step, StepExt};

use super::{last_os, RestoreOptions};

/// Descriptors torpor opens for the tree before forking; every task takes
/// the ones it needs at their numbers with dup2 and closes the rest.
#[derive(Debug)]
pub(super) struct Objects {
    /// fd in torpor of each `OpenFile`, all at or above `high`.
    pub(super) fds: Vec<i32>,
    /// Each shared memory object as a MAP_SHARED|MAP_ANONYMOUS mapping in
    /// torpor, by id: (address, size). Every task inherits it at the same
    /// address and moves the parts it maps into place, so the object stays
    /// one object, as the kernel's own shared anonymous memory.
    pub(super) shm: BTreeMap<u64, (u64, u64)>,
    /// Memfds and SysV segments.
    pub(super) segs: crate::engine::files::Segments,
    pub(super) high: i32,
    /// TCP connections in repair mode until the tree is complete.
    pub(super) tcp: crate::engine::files::TcpRestored,
    /// The queues of UNIX sockets still to fill, with the shutdowns after
    /// them, when some message names a sender of the tree
    /// ([`crate::engine::files::Pending::pass`] once the tasks exist).
    pub(super) unix: Option<crate::engine::files::Pending>,
}

impl Drop for Objects {
    fn drop(&mut self) {
        for &fd in &self.fds {
            // SAFETY: closing fds this struct opened.
            unsafe { libc::close(fd) };
        }
        for &(addr, size) in self.shm.values() {
            // SAFETY: unmapping the regions this struct mapped; nothing in
            // torpor refers to them.
            unsafe { libc::munmap(arch::native(addr) as *mut libc::c_void, arch::native(size)) };
        }
    }
}

/// `shift`: how far the tree's clocks are ahead of torpor's, when the tree
/// gets a time namespace; `made`: the tmpfs files the restore recreated.
pub(super) fn open_objects(
    st: &ImageState,
    opts: &RestoreOptions,
    shift: Option<Offsets>,
    made: &[String],
) -> Result<Objects, EngineError> {
    let step = Step::OpenFiles;
    let max_target = st
        .processes
        .iter()
        .flat_map(|p| p.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(2);
    let high = max_target.max(64) + 1;
    let mut objs = Objects {
        fds: Vec::new(),
        shm: BTreeMap::new(),
        segs: crate::engine::files::Segments::create(st, high, made).step(step)?,
        high,
        tcp: crate::engine::files::TcpRestored::default(),
        unix: None,
    };
    let mut shm_size: BTreeMap<u64, u64> = BTreeMap::new();
    for v in st.processes.iter().flat_map(|p| p.vmas.iter()) {
        if let Backing::Shm { id, offset } = v.backing {
            let e = shm_size.entry(id).or_insert(0);
            *e = (*e).max(offset + (v.end - v.start));
        }
    }
    for (id, size) in shm_size {
        // SAFETY: a fresh shared anonymous mapping; torpor never touches it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                arch::native(size),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(last_os()).step(step);
        }
        objs.shm.insert(id, (addr as u64, size));
    }
    let mut pipes = PipeEnds::create(st, &opts.inherit, high).step(step)?;
    let root_asked = st.requested_by.as_ref().is_none_or(|r| r.uid == 0);
    let mut pending = crate::engine::files::Pending::default();
    let mut ptys = crate::engine::files::Ptys::default();
    let mut tcp = crate::engine::files::TcpRestored::default();
    let holders = owner::holders(st);
    for (i, f) in st.files.iter().enumerate() {
        let who = holders
            .get(i)
            .copied()
            .flatten()
            .map_or_else(Acting::root, Acting::of);
        let opening = Opening {
            who: &who,
            owners: &st.owners,
            root_asked,
        };
        let file: u32 = crate::engine::conv::fit(i, "u32", "open file index").step(step)?;
        let mut cx = OpenCx {
            // O_ASYNC is set later by the task itself (files::arm_sigio).
            flags: f.flags & !crate::engine::files::O_ASYNC,
            pending: &mut pending,
            segs: &objs.segs,
            shift,
            opening: &opening,
            pipes: &mut pipes,
            inherit: &opts.inherit,
            tty: opts.tty.as_deref(),
            torpor_conn: opts.torpor_conn,
            ptys: &mut ptys,
            tcp: &mut tcp,
            file,
            rights: &st.rights,
            waiting: &st.waiting,
            msg_creds: &st.msg_creds,
            sock_opts: st.sock_opts.get(&file).map_or(&[][..], Vec::as_slice),
        };
        let fd = f
            .kind
            .open(&mut cx)
            .map_err(|e| name_socket(st, &f.kind, file, e))
            .step(step)?;
        if let crate::engine::state::FileKind::TcpConnection(_) = &f.kind {
            // Its socket is made in repair mode, options after.
            crate::engine::files::sockopt::apply(fd, cx.sock_opts).step(step)?;
        }
        let fd = move_high(fd, high).step(step)?;
        objs.fds.push(fd);
    }
    // Every description is open: the clients waiting on a listener
    // connect again, and the queues that pass descriptions are filled.
    pending.connect_waiting(&st.waiting, &st.files).step(step)?;
    if pending.sends_as_tasks() {
        // Messages sent with their senders' credentials name processes of
        // the tree: they are sent once the tasks exist.
        objs.unix = Some(pending);
    } else {
        pending.pass(&objs.fds).step(step)?;
    }
    // The spare pipe ends close with `pipes`: the descriptions hold dups.
    drop(pipes);
    ptys.finish().step(step)?;
    objs.tcp = tcp;
    Ok(objs)
}

/// A netlink or packet socket that cannot be made again (its port id
/// taken, its interface gone) or a fanotify group whose marks cannot be
/// added again is named by the first fd that holds it.
fn name_socket(
    st: &ImageState,
    kind: &crate::engine::state::FileKind,
    file: u32,
    e: crate::engine::Cause,
) -> crate::engine::Cause {
    use crate::engine::state::FileKind;
    if !matches!(
        kind,
        FileKind::Netlink(_) | FileKind::Packet(_) | FileKind::Fanotify(_)
    ) {
        return e;
    }
    let holder = st.processes.iter().find_map(|p| {
        p.fds
            .iter()
            .find(|f| f.file == file)
            .map(|f| (p.task.pid, f.fd))
    });
    match (e, holder) {
        (crate::engine::Cause::Refused(m), Some((pid, fd))) => {
            crate::engine::Cause::Refused(format!("fd {fd} of process {pid}: {m}"))
        }
        (e, _) => e,
    }
}

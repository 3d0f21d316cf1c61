//! Restore: validate the image, fork the tree with its original pids, let
//! each task set up what it can itself, then rebuild every address space
//! from outside through a syscall trampoline, and let the tree go.
//!
//! ```text
//!  torpor ── unshare(CLONE_NEWTIME), offsets (`clocks`: the tree's own
//!    │       time namespace, where the kernel has them); open the objects
//!    ├─ clone3(set_tid=root) ──────▶ root: setsid/setpgid, clone3 its
//!    │                                children (each does the same), fds,
//!    │                                cwd, umask, rlimits, "ready", pause()
//!    ├─ setns back to torpor's own time namespace
//!    ├─ seize + interrupt every task
//!    ├─ per task: trampoline in a hole → unmap torpor's image → move
//!    │  vdso/vvar → mmap every VMA → pages via /proc/PID/mem → mprotect →
//!    │  PR_SET_MM_MAP → sigactions, itimers → threads (clone3 set_tid) →
//!    │  per thread: tid address, robust list, altstack, rseq, TLS,
//!    │  pending signals, creds, FPU, registers → trampoline unmapped
//!    └─ detach everything; torpor exits and the root is re-parented
//! ```
//! Any failure kills every task created and names the step.
#![allow(unsafe_code)]

use crate::arch::Bits;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use torpor_parasite::KSigaction;

use crate::arch::{self, nr, Regs};
use crate::engine::clocks::{ClockMode, Offsets};
use crate::engine::collect::{is_fixed_kernel_mapping, SPECIAL_MAPPINGS};
use crate::engine::image_io::{self, ImageState};
use crate::engine::procfs;
use crate::engine::ptrace::{self, Mem, RemotePtr, Stop};
use crate::engine::remote::{Remote, RemoteError};
use crate::engine::state::{Backing, FileKind, OpenFile, OutsideEnd, ProcessState, Vma};
use crate::engine::{Cause, EngineError, StepExt};
use crate::image::{Codec, ImageReader, Kind};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// A terminal to use in place of one that no longer exists.
    pub tty: Option<PathBuf>,
    /// A socket connected to `torpor daemon`, which becomes the tree's
    /// connection to the daemon (`FileKind::TorporConn`). The caller keeps
    /// its own descriptor to ask the daemon for `Resumed` afterwards.
    pub torpor_conn: Option<i32>,
    /// Descriptors (of this process) for the image's external fds, by key.
    pub inherit: Vec<(String, i32)>,
    /// Leave the tree on the host's clocks (`--no-timens`) instead of a
    /// time namespace continuing the clocks of the dump.
    pub host_clocks: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreStats {
    pub processes: usize,
    pub threads: usize,
    pub page_bytes: u64,
    /// The clocks the tree reads: its own time namespace, or the host's
    /// and why.
    pub clocks: Option<ClockMode>,
}

fn refused(step: &str, why: String) -> EngineError {
    EngineError {
        step: step.to_string(),
        cause: Cause::Refused(why),
    }
}

fn last_os() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Restores the image in `path`. Returns once the restored tree runs.
pub fn restore_file(path: &Path, opts: &RestoreOptions) -> Result<RestoreStats, EngineError> {
    let vstep = || "validate".to_string();
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))
    };
    let state = image_io::read_state(open().step(vstep)?).step(vstep)?;
    validate(&state, opts)?;
    restore(&state, opts, open().step(vstep)?)
}

/// Restores the newest valid image of the store at `path`.
pub fn restore_store(path: &Path, opts: &RestoreOptions) -> Result<RestoreStats, EngineError> {
    let vstep = || "validate".to_string();
    let store = crate::store::Store::open(path).step(|| "store".to_string())?;
    let newest = || -> Result<_, EngineError> {
        match store.newest().step(|| "store".to_string())? {
            Some((_, r)) => Ok(BufReader::new(r)),
            None => Err(refused(
                "store",
                format!("{} holds no valid image", path.display()),
            )),
        }
    };
    let state = image_io::read_state(newest()?).step(vstep)?;
    validate(&state, opts)?;
    restore(&state, opts, newest()?)
}

/// Checks everything a restore depends on before anything is created.
pub fn validate(st: &ImageState, opts: &RestoreOptions) -> Result<(), EngineError> {
    let step = "validate";
    if st.processes.is_empty() {
        return Err(refused(step, "the image holds no process".into()));
    }
    for p in &st.processes {
        if p.zombie.is_some() {
            if p.ppid == 0 {
                return Err(refused(
                    step,
                    format!("the root {} of the image is a zombie", p.pid),
                ));
            }
            if Path::new(&format!("/proc/{}", p.pid)).exists() {
                return Err(refused(
                    step,
                    format!(
                        "pid {} (a zombie in the image) is in use by another task",
                        p.pid
                    ),
                ));
            }
            continue;
        }
        for t in &p.threads {
            if Path::new(&format!("/proc/{}", t.tid)).exists() {
                return Err(refused(
                    step,
                    format!(
                        "pid {} (of process {}) is in use by another task",
                        t.tid, p.pid
                    ),
                ));
            }
            Regs::from_bytes(&t.regs).step(|| step.to_string())?;
        }
        if p.threads.first().map(|t| t.tid) != Some(p.pid) {
            return Err(refused(
                step,
                format!("process {} has no main thread record", p.pid),
            ));
        }
        if p.root != "/" {
            return Err(refused(
                step,
                format!("process {} ran in a changed root ({})", p.pid, p.root),
            ));
        }
        if p.ppid != 0 && !st.processes.iter().any(|q| q.pid == p.ppid) {
            return Err(refused(
                step,
                format!("parent {} of process {} is not in the image", p.ppid, p.pid),
            ));
        }
        if !Path::new(&p.cwd).is_dir() {
            return Err(refused(
                step,
                format!("working directory {} of process {} is gone", p.cwd, p.pid),
            ));
        }
        if !Path::new(&p.exe).exists() {
            return Err(refused(
                step,
                format!("executable {} of process {} is gone", p.exe, p.pid),
            ));
        }
        for v in &p.vmas {
            if let Backing::File { path, identity, .. } = &v.backing {
                if crate::engine::files::tmpfs_file_to_recreate(st, path) {
                    continue;
                }
                let md = std::fs::metadata(path).map_err(|e| {
                    refused(
                        step,
                        format!("mapped file {path} of process {}: {e}", p.pid),
                    )
                })?;
                let now = (md.dev(), md.ino(), md.size(), md.mtime(), md.mtime_nsec());
                let then = (
                    identity.dev,
                    identity.inode,
                    identity.size,
                    identity.mtime_sec,
                    identity.mtime_nsec,
                );
                if now != then {
                    return Err(refused(
                        step,
                        format!("mapped file {path} changed since the dump (dev, inode, size, mtime {now:?}, image has {then:?})"),
                    ));
                }
            }
        }
        for f in &p.fds {
            if st.files.get(f.file as usize).is_none() {
                return Err(refused(
                    step,
                    format!("fd {} of process {} names no file", f.fd, p.pid),
                ));
            }
        }
    }
    for o in &st.unlinked {
        unlinked_dir_exists(&String::from_utf8_lossy(o.path.as_bytes()))
            .map_err(|why| refused(step, why))?;
    }
    for f in &st.files {
        match &f.kind {
            FileKind::External { key } => {
                if !opts.inherit.iter().any(|(k, _)| k == key) {
                    return Err(refused(
                        step,
                        format!(
                            "external fd {key:?} needs a descriptor: give --inherit-fd {key}=FD"
                        ),
                    ));
                }
            }
            FileKind::Path { path, .. } => {
                if !Path::new(path).exists() {
                    return Err(refused(step, format!("open file {path} is gone")));
                }
            }
            FileKind::Device { path, tty, .. } => {
                if !(Path::new(path).exists() || (*tty && opts.tty.is_some())) {
                    let hint = if *tty {
                        "; give --tty PATH to use another terminal"
                    } else {
                        ""
                    };
                    return Err(refused(step, format!("device {path} is gone{hint}")));
                }
            }
            FileKind::Unlinked { path, .. } => {
                unlinked_dir_exists(path).map_err(|why| refused(step, why))?
            }
            // Checked with the image's unlinked-file objects above.
            FileKind::UnlinkedFile { .. } => {}
            FileKind::Pipe { pipe, fifo, .. } => {
                if st.pipes.get(*pipe as usize).is_none() {
                    return Err(refused(step, format!("pipe {pipe} missing from the image")));
                }
                if let Some(path) = fifo {
                    use std::os::unix::fs::FileTypeExt;
                    let is_fifo = std::fs::metadata(path)
                        .map(|m| m.file_type().is_fifo())
                        .unwrap_or(false);
                    if !is_fifo {
                        return Err(refused(step, format!("FIFO {path} is gone")));
                    }
                }
            }
            FileKind::Anon(_) => {}
            FileKind::TorporConn => {
                if opts.torpor_conn.is_none() {
                    return Err(refused(
                        step,
                        "the image holds a connection to torpor daemon; restore it with `torpor boot` or `torpor run`, which reconnect it".into(),
                    ));
                }
            }
        }
    }
    crate::engine::files::Segments::check(st).map_err(|e| refused(step, e))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Phase 1: objects and tasks.

/// Descriptors torpor opens for the tree before forking; every task takes
/// the ones it needs at their numbers with dup2 and closes the rest.
#[derive(Debug)]
struct Objects {
    /// fd in torpor of each `OpenFile`, all at or above `high`.
    fds: Vec<i32>,
    /// Each shared memory object as a MAP_SHARED|MAP_ANONYMOUS mapping in
    /// torpor, by id: (address, size). Every task inherits it at the same
    /// address and moves the parts it maps into place, so the object stays
    /// one object, as the kernel's own shared anonymous memory.
    shm: BTreeMap<u64, (u64, u64)>,
    /// Memfds and SysV segments.
    segs: crate::engine::files::Segments,
    high: i32,
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

fn cstr(s: &str) -> Result<std::ffi::CString, Cause> {
    std::ffi::CString::new(s).map_err(|_| Cause::Refused(format!("path {s:?} holds a NUL byte")))
}

fn move_high(fd: i32, high: i32) -> Result<i32, Cause> {
    // SAFETY: fcntl on an fd we own; the old one is closed after.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
    let err = last_os();
    // SAFETY: closing the fd just duplicated.
    unsafe { libc::close(fd) };
    if n < 0 {
        return Err(err.into());
    }
    Ok(n)
}

/// `shift`: how far the tree's clocks are ahead of torpor's, when the tree
/// gets a time namespace.
fn open_objects(
    st: &ImageState,
    opts: &RestoreOptions,
    shift: Option<Offsets>,
) -> Result<Objects, EngineError> {
    let step = || "open files".to_string();
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
        segs: crate::engine::files::Segments::create(st, high).step(step)?,
        high,
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
    // Each pipe is created once; its first read/write descriptions use the
    // two ends, further ones reopen the pipe through /proc/self/fd.
    let mut pipe_ends: BTreeMap<u32, (i32, i32, bool, bool)> = BTreeMap::new();
    for (i, pipe) in st.pipes.iter().enumerate() {
        let id = u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(outside) = pipe.outside {
            let key = format!("pipe:[{}]", pipe.inode);
            if let Some(&(_, given)) = opts.inherit.iter().find(|(k, _)| *k == key) {
                // The caller's descriptor stands in for the pipe, used as it
                // is: its own data is what the tree reads next.
                // SAFETY: duplicating a descriptor the caller handed over.
                let fd = unsafe { libc::fcntl(given, libc::F_DUPFD_CLOEXEC, 0) };
                if fd < 0 {
                    let e = last_os();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("taking --inherit-fd {key}={given}: {e}"),
                    ))
                    .step(step);
                }
                let fd = move_high(fd, high).step(step)?;
                pipe_ends.insert(id, (fd, fd, false, false));
                continue;
            }
            let what = match outside {
                OutsideEnd::Read => "its reader was outside the tree: writes to it now fail with EPIPE".to_string(),
                OutsideEnd::Write => format!(
                    "its writer was outside the tree: the tree reads the {} bytes left, then end of file",
                    pipe.data.len()
                ),
            };
            eprintln!("torpor: {key}: {what} (give --inherit-fd {key}=FD to connect it)");
        }
        let fifo = st.files.iter().find_map(|f| match &f.kind {
            FileKind::Pipe {
                pipe,
                fifo: Some(path),
                ..
            } if *pipe == id => Some(path.clone()),
            _ => None,
        });
        let mut p = [0i32; 2];
        // A FIFO someone outside the tree still holds (on the same boot) is
        // the one the tree left: its bytes are the live ones.
        let mut live_fifo = false;
        if let Some(path) = &fifo {
            let c = cstr(path).step(step)?;
            // Opening for writing without blocking succeeds only if a
            // reader exists: one outside the tree, which may have read the
            // bytes saved at the dump.
            // SAFETY: open with a valid C string; the result is checked.
            let probe = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if probe >= 0 {
                live_fifo = true;
                // SAFETY: closing the probe just opened.
                unsafe { libc::close(probe) };
            }
            // A named FIFO: opened read-write, it is reader and writer for
            // the reopenings below, which therefore never block.
            // SAFETY: open with a valid C string; the result is checked.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("opening FIFO {path}: {e}"),
                ))
                .step(step);
            }
            let mut queued: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            if unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut queued) } == 0 && queued > 0 {
                // A writer outside kept it, and the bytes, alive.
                live_fifo = true;
            }
            p = [fd, fd];
        // SAFETY: pipe2 writes two fds.
        } else if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
            return Err(last_os()).step(step);
        }
        // At least the default, and room for the data whatever the image says.
        let size = libc::c_int::try_from(pipe.size.max(65536)).unwrap_or(65536);
        // SAFETY: fcntl on our own pipe.
        if unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, size) } < 0 {
            return Err(last_os()).step(step);
        }
        // Bytes written by the tree for a reader outside went with that
        // reader; bytes from a writer outside are the tree's to read.
        let data: &[u8] = if pipe.outside == Some(OutsideEnd::Read) || live_fifo {
            &[]
        } else {
            &pipe.data
        };
        let mut off = 0;
        while off < data.len() {
            // SAFETY: writing from our buffer into our pipe, which has room.
            let n = unsafe { libc::write(p[1], data[off..].as_ptr().cast(), data.len() - off) };
            if n <= 0 {
                return Err(last_os()).step(step);
            }
            off += n.bits();
        }
        if fifo.is_some() {
            let rw = move_high(p[0], high).step(step)?;
            // Every description of a FIFO is a reopening (used: true).
            pipe_ends.insert(id, (rw, rw, true, true));
        } else {
            let r = move_high(p[0], high).step(step)?;
            let w = move_high(p[1], high).step(step)?;
            pipe_ends.insert(id, (r, w, false, false));
        }
    }
    let mut pending = crate::engine::files::Pending::default();
    for f in &st.files {
        let fd =
            open_object(f, &mut pipe_ends, &mut pending, opts, &objs.segs, shift).step(step)?;
        let fd = move_high(fd, high).step(step)?;
        objs.fds.push(fd);
    }
    for (r, w, _, _) in pipe_ends.values() {
        // SAFETY: the spare pipe ends torpor kept; descriptions hold dups.
        unsafe {
            libc::close(*r);
            if w != r {
                libc::close(*w);
            }
        }
    }
    Ok(objs)
}

fn open_object(
    f: &OpenFile,
    pipes: &mut BTreeMap<u32, (i32, i32, bool, bool)>,
    pending: &mut crate::engine::files::Pending,
    opts: &RestoreOptions,
    segs: &crate::engine::files::Segments,
    shift: Option<Offsets>,
) -> Result<i32, Cause> {
    // O_ASYNC is set later by the task itself (files::arm_sigio).
    let open_flags = (f.flags.bits()
        & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_ASYNC))
        | libc::O_CLOEXEC;
    let open = |path: &str, flags: i32| -> Result<i32, Cause> {
        let c = cstr(path)?;
        // SAFETY: open with a valid C string.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            let e = last_os();
            return Err(std::io::Error::new(e.kind(), format!("opening {path}: {e}")).into());
        }
        Ok(fd)
    };
    match &f.kind {
        FileKind::External { key } => {
            let &(_, given) =
                opts.inherit.iter().find(|(k, _)| k == key).ok_or_else(|| {
                    Cause::Refused(format!("no descriptor for external fd {key:?}"))
                })?;
            // SAFETY: duplicating a descriptor the caller handed over.
            let fd = unsafe { libc::fcntl(given, libc::F_DUPFD_CLOEXEC, 0) };
            if fd < 0 {
                let e = last_os();
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("creating external fd {key:?}: {e}"),
                )
                .into());
            }
            Ok(fd)
        }
        FileKind::Path { path, pos, .. } => {
            let fd = open(path, open_flags)?;
            let off = libc::off_t::try_from(*pos).unwrap_or(0);
            // SAFETY: lseek on the fd just opened. Directories may refuse
            // arbitrary positions; their position is a cookie.
            // SAFETY: a plain syscall on integers or live C strings.
            let r = unsafe { libc::lseek(fd, off, libc::SEEK_SET) };
            if r < 0 && !Path::new(path).is_dir() {
                let e = last_os();
                // SAFETY: closing our fd on the error path.
                unsafe { libc::close(fd) };
                return Err(
                    std::io::Error::new(e.kind(), format!("seeking {path} to {pos}: {e}")).into(),
                );
            }
            Ok(fd)
        }
        FileKind::UnlinkedFile { inode, pos, .. } => {
            // The file made (and filled) once per inode; each description
            // is a reopening with its own flags and offset.
            seek_new(open(&segs.unlinked_path(*inode)?, open_flags)?, *pos)
        }
        FileKind::Unlinked { path, pos, data } => {
            let tmp = create_unlinked(path, data)?;
            // Reopened with the original flags; the file keeps no name.
            let fd = open(&format!("/proc/self/fd/{tmp}"), open_flags);
            // SAFETY: closing the creation fd; `fd` holds the file.
            unsafe { libc::close(tmp) };
            seek_new(fd?, *pos)
        }
        FileKind::Device { path, tty, .. } => {
            let p = if *tty && !Path::new(path).exists() {
                opts.tty
                    .as_ref()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.clone())
            } else {
                path.clone()
            };
            open(&p, open_flags | libc::O_NOCTTY)
        }
        FileKind::Pipe { pipe, write, .. } => {
            let e = pipes
                .get_mut(pipe)
                .ok_or_else(|| Cause::Refused(format!("pipe {pipe} missing from the image")))?;
            let (src, used) = if *write {
                (e.1, &mut e.3)
            } else {
                (e.0, &mut e.2)
            };
            let fd = if *used {
                open(&format!("/proc/self/fd/{src}"), open_flags)?
            } else {
                *used = true;
                // SAFETY: duplicating our own pipe end.
                let d = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 0) };
                if d < 0 {
                    return Err(last_os().into());
                }
                d
            };
            let status = f.flags.bits() & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_DIRECT);
            // SAFETY: setting status flags on our fd.
            if unsafe { libc::fcntl(fd, libc::F_SETFL, status) } < 0 {
                return Err(last_os().into());
            }
            Ok(fd)
        }
        FileKind::Anon(a) => crate::engine::files::open(
            a,
            f.flags & !crate::engine::files::O_ASYNC,
            pending,
            segs,
            shift,
        ),
        FileKind::TorporConn => {
            let conn = opts.torpor_conn.ok_or_else(|| {
                Cause::Refused("no connection to torpor daemon to give the tree".into())
            })?;
            crate::engine::torpor_conn::dup_for_tree(conn, f.flags).map_err(Cause::from)
        }
    }
}

/// A nameless regular file holding `data`, in the directory the unlinked
/// file lived in (so on the same file system): O_TMPFILE, or a temporary
/// name removed at once where the file system lacks O_TMPFILE.
/// Moves the fd just opened to `pos`; closes it if that fails.
fn seek_new(fd: i32, pos: u64) -> Result<i32, Cause> {
    let off = libc::off_t::try_from(pos).unwrap_or(0);
    // SAFETY: lseek on an fd of ours.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
        let e = last_os();
        // SAFETY: closing our fd on the error path.
        unsafe { libc::close(fd) };
        return Err(e.into());
    }
    Ok(fd)
}

/// An unlinked file is recreated in the directory it lived in.
fn unlinked_dir_exists(path: &str) -> Result<(), String> {
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "directory {} of unlinked file {path} is gone",
            dir.display()
        ))
    }
}

pub(crate) fn create_unlinked(path: &str, data: &[u8]) -> Result<i32, Cause> {
    let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
    let cdir = cstr(&dir.to_string_lossy())?;
    // SAFETY: open with a valid C string; the result is checked.
    let mut fd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        let name = format!("{}/.torpor-unlinked-{}", dir.display(), std::process::id());
        let cname = cstr(&name)?;
        // SAFETY: as above; the name is removed right away.
        fd = unsafe {
            libc::open(
                cname.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = last_os();
            return Err(std::io::Error::new(
                e.kind(),
                format!("recreating unlinked {path} in {}: {e}", dir.display()),
            )
            .into());
        }
        // SAFETY: unlinking the name just created.
        unsafe { libc::unlink(cname.as_ptr()) };
    }
    let mut off = 0;
    while off < data.len() {
        // SAFETY: writing from our buffer into our fd.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if n <= 0 {
            let e = last_os();
            // SAFETY: closing our fd on the error path.
            unsafe { libc::close(fd) };
            return Err(e.into());
        }
        off += n.bits();
    }
    Ok(fd)
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// fork(2) with a chosen pid: 0 in the child, the pid in the parent.
#[allow(clippy::useless_conversion)] // c_long is i32 on 32-bit ARM
pub(crate) fn fork_with_pid(pid: i32) -> Result<i32, std::io::Error> {
    let tid: libc::pid_t = pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: (&raw const tid) as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a
    // copy of this single-threaded process and returns 0 here.
    // SAFETY: a plain syscall on integers or live C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            core::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        let e = last_os();
        let why = if e.raw_os_error() == Some(libc::EEXIST) {
            format!("pid {pid} is already in use")
        } else {
            format!("clone3 with pid {pid}: {e}")
        };
        return Err(std::io::Error::new(e.kind(), why));
    }
    Ok(i32::try_from(r).unwrap_or(-1))
}

/// Writes one report line to torpor (atomic: shorter than PIPE_BUF).
fn report(fd: i32, line: &str) {
    let mut b = line.as_bytes().to_vec();
    b.truncate(500);
    b.push(b'\n');
    // SAFETY: writing our buffer to the report pipe.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// Runs in each new task (a copy of torpor): recreate children, session,
/// group and fds, report, and wait to be taken over by the tracer.
fn task_main(st: &ImageState, idx: usize, objs: &Objects, report_fd: i32) -> ! {
    let p = &st.processes[idx];
    if let Err(e) = task_setup(st, idx, objs, report_fd) {
        report(report_fd, &format!("{} err {e}", p.pid));
        // SAFETY: leaving the forked child without running torpor's exit path.
        unsafe { libc::_exit(1) };
    }
    report(report_fd, &format!("{} ok", p.pid));
    // SAFETY: closing the report pipe; nothing else refers to it.
    unsafe { libc::close(report_fd) };
    if let Some(status) = p.zombie {
        exit_as(status);
    }
    loop {
        // SAFETY: pause has no memory effects; the tracer interrupts it.
        unsafe { libc::pause() };
    }
}

/// Ends a recreated zombie with its recorded wait status: killed by the
/// same signal (without a core file), or exited with the same code.
fn exit_as(status: i32) -> ! {
    let sig = status & 0x7f;
    if sig != 0 {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on integers and on local structs; the
        // signal's default action ends the process.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &raw const no_core);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            libc::sigaddset(&raw mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    // SAFETY: leaving the forked child without running torpor's exit path.
    unsafe { libc::_exit((status >> 8) & 0xff) }
}

fn task_setup(st: &ImageState, idx: usize, objs: &Objects, report_fd: i32) -> Result<(), String> {
    let p = &st.processes[idx];
    let fork_children = |early: bool| -> Result<(), String> {
        for (ci, c) in st.processes.iter().enumerate() {
            if c.ppid != p.pid || ci == idx {
                continue;
            }
            // A child still in the session this task had before its setsid
            // must be forked before it.
            let keeps_old_session = c.sid != p.sid && c.sid != c.pid;
            if keeps_old_session != early {
                continue;
            }
            match fork_with_pid(c.pid) {
                Ok(0) => task_main(st, ci, objs, report_fd),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    };
    fork_children(true)?;
    // SAFETY (all libc calls below): plain syscalls on integers or on C
    // strings that live across the call.
    if p.sid == p.pid {
        // SAFETY: see above.
        if unsafe { libc::setsid() } < 0 {
            return Err(format!("setsid: {}", last_os()));
        }
    } else if idx != 0 {
        // SAFETY: see above.
        let now = unsafe { libc::getsid(0) };
        if now != p.sid {
            return Err(format!(
                "cannot join session {} (it is in session {now})",
                p.sid
            ));
        }
    }
    if p.pgid == p.pid && p.sid != p.pid {
        // SAFETY: see above.
        if unsafe { libc::setpgid(0, 0) } < 0 {
            return Err(format!("setpgid: {}", last_os()));
        }
    // SAFETY: see above.
    } else if idx != 0 && p.sid != p.pid && p.pgid != unsafe { libc::getpgid(0) } {
        // SAFETY: see above.
        if unsafe { libc::setpgid(0, p.pgid) } < 0 {
            return Err(format!("joining process group {}: {}", p.pgid, last_os()));
        }
    }
    fork_children(false)?;
    if p.zombie.is_some() {
        // Nothing more: it only has to exit, once it has reported.
        return Ok(());
    }
    // Descriptors at their numbers.
    let mut targets: Vec<i32> = Vec::new();
    for f in &p.fds {
        let src = objs.fds[f.file as usize];
        // SAFETY: a plain syscall on integers or live C strings.
        if unsafe { libc::dup2(src, f.fd) } < 0 {
            return Err(format!("dup2 to fd {}: {}", f.fd, last_os()));
        }
        // SAFETY: a plain syscall on integers or live C strings.
        if f.cloexec && unsafe { libc::fcntl(f.fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(format!("FD_CLOEXEC on fd {}: {}", f.fd, last_os()));
        }
        targets.push(f.fd);
    }
    targets.push(report_fd);
    // The memfds, for the tracer to map them (closed after).
    targets.extend(objs.segs.fds());
    targets.sort_unstable();
    let mut next: u32 = 0;
    for &t in &targets {
        let t = t.bits();
        if t > next {
            // SAFETY: a plain syscall on integers or live C strings.
            unsafe { libc::syscall(libc::SYS_close_range, next, t - 1, 0) };
        }
        next = t + 1;
    }
    // SAFETY: a plain syscall on integers or live C strings.
    unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0) };
    crate::engine::files::register_epolls(p, &st.files)?;
    crate::engine::files::take_locks(p)?;
    // Signal-driven I/O, armed through the fd with the lowest number in the
    // first process holding the description: the fd the kernel reports.
    let mut fds: Vec<&crate::engine::state::Fd> = p.fds.iter().collect();
    fds.sort_by_key(|f| f.fd);
    let mut armed = std::collections::BTreeSet::new();
    for f in fds {
        let of = &st.files[f.file as usize];
        let Some(s) = &of.sigio else { continue };
        let first = st
            .processes
            .iter()
            .find(|q| q.fds.iter().any(|g| g.file == f.file))
            .map(|q| q.pid);
        if first == Some(p.pid) && armed.insert(f.file) {
            crate::engine::files::arm_sigio(f.fd, of.flags, s)?;
        }
    }
    // A session leader takes its controlling terminal back from the fd
    // that opens it (the original device or its --tty substitute).
    if p.ctty != 0 && p.sid == p.pid {
        let holder = p.fds.iter().find(|f| {
            matches!(st.files[f.file as usize].kind, FileKind::Device { rdev, tty: true, .. } if rdev == p.ctty)
        });
        if let Some(f) = holder {
            // SAFETY: ioctl on an fd of this task, integer argument.
            if unsafe { libc::ioctl(f.fd, libc::TIOCSCTTY, 0) } < 0 {
                return Err(format!(
                    "taking fd {} as controlling terminal: {}",
                    f.fd,
                    last_os()
                ));
            }
        }
    }
    let cwd = cstr(&p.cwd).map_err(|e| e.to_string())?;
    // SAFETY: a plain syscall on integers or live C strings.
    if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
        return Err(format!("chdir {}: {}", p.cwd, last_os()));
    }
    // SAFETY: a plain syscall on integers or live C strings.
    unsafe { libc::umask(p.umask as libc::mode_t) };
    // SAFETY: a plain syscall on integers or live C strings.
    if unsafe { libc::personality(libc::c_ulong::from(p.personality)) } < 0 {
        return Err(format!("personality {:#x}: {}", p.personality, last_os()));
    }
    for (res, (cur, max)) in p.rlimits.iter().enumerate() {
        let lim = libc::rlimit {
            rlim_cur: *cur,
            rlim_max: *max,
        };
        // SAFETY: a plain syscall on integers or live C strings.
        if unsafe { libc::setrlimit(res.try_into().unwrap_or(!0), &raw const lim) } < 0 {
            return Err(format!("setrlimit {res}: {}", last_os()));
        }
    }
    Ok(())
}

/// Tasks created so far; killed unless the restore completes.
#[derive(Debug, Default)]
struct Created {
    pids: Vec<i32>,
    traced: Vec<i32>,
    done: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Only tasks that are really ours: a pid that could not be created
        // may belong to someone else.
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let ours: Vec<i32> = self
            .pids
            .iter()
            .copied()
            .filter(|pid| {
                let path = format!("/proc/{pid}/stat");
                let ppid = procfs::read(&path)
                    .ok()
                    .and_then(|t| procfs::parse_stat(&path, &t).ok())
                    .map(|s| s.ppid);
                ppid.is_some_and(|pp| pp == me || self.pids.contains(&pp))
            })
            .collect();
        for &pid in &ours {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Leaders last: a traced leader's exit waits for its threads.
        let mut order: Vec<i32> = self
            .traced
            .iter()
            .copied()
            .filter(|t| !self.pids.contains(t))
            .collect();
        order.extend(
            self.traced
                .iter()
                .copied()
                .filter(|t| self.pids.contains(t)),
        );
        for &tid in &order {
            while let Ok(s) = ptrace::wait(tid) {
                if matches!(s, Stop::Exited(_) | Stop::Killed(_)) {
                    break;
                }
            }
        }
        // Reap the root (torpor's child) and anything else that is ours.
        for &pid in &self.pids {
            let mut status = 0;
            // SAFETY: waitpid writes the status word.
            unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL | libc::WNOHANG) };
        }
    }
}

fn create_tasks(st: &ImageState, objs: &Objects, created: &mut Created) -> Result<(), EngineError> {
    let step = || "create tasks".to_string();
    let mut rp = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    if unsafe { libc::pipe2(rp.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(last_os()).step(step);
    }
    let report_w = move_high(
        rp[1],
        objs.high + i32::try_from(objs.fds.len()).unwrap_or(0),
    )
    .step(step)?;
    let root = &st.processes[0];
    let r = fork_with_pid(root.pid);
    match r {
        Ok(0) => task_main(st, 0, objs, report_w),
        Ok(_) => {}
        Err(e) => {
            // SAFETY: closing our report pipe.
            unsafe {
                libc::close(rp[0]);
                libc::close(report_w);
            }
            return Err(e).step(step);
        }
    }
    created.pids = st.processes.iter().map(|p| p.pid).collect();
    // SAFETY: torpor keeps only the read end.
    unsafe { libc::close(report_w) };
    // SAFETY: rp[0] is ours; File takes ownership.
    let mut rd = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(rp[0]) };
    let mut text = String::new();
    let mut ok = 0;
    let mut buf = [0u8; 512];
    while ok < st.processes.len() {
        let n = rd.read(&mut buf).step(step)?;
        if n == 0 {
            return Err(refused(
                "create tasks",
                format!("tasks ended before reporting ready: {text}"),
            ));
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(nl) = text.find('\n') {
            let line: String = text.drain(..=nl).collect();
            let line = line.trim_end();
            if let Some((pid, msg)) = line.split_once(" err ") {
                return Err(refused("create tasks", format!("process {pid}: {msg}")));
            }
            ok += 1;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Phase 2: address spaces.

/// Size of the trampoline area: code in the first page, data after it.
const TRAMP_SIZE: u64 = 4 * 4096;
/// Offset of the data area in the trampoline.
const DATA: u64 = 4096;

fn hole(busy: &mut [(u64, u64)], size: u64) -> Option<u64> {
    busy.sort_unstable();
    let mut at: u64 = 0x0100_0000;
    for &(s, e) in busy.iter() {
        if e <= at {
            continue;
        }
        if s >= at + size {
            return Some(at);
        }
        at = at.max(e);
    }
    Some(at)
}

struct Rebuild<'a> {
    p: &'a ProcessState,
    mem: Mem,
    tramp: u64,
}

/// Runs `f` with a remote-syscall guard on `tid` at the trampoline.
fn with_remote<T>(
    mem: &Mem,
    tid: i32,
    tramp: u64,
    f: impl FnOnce(&mut Remote<'_>) -> Result<T, Cause>,
) -> Result<T, Cause> {
    let mut r = Remote::at(tid, mem, tramp)?;
    let v = f(&mut r)?;
    r.finish()?;
    Ok(v)
}

fn write_data<T: Copy>(mem: &Mem, tramp: u64, off: u64, v: &T) -> Result<u64, Cause> {
    let at = tramp + DATA + off;
    mem.write_value(RemotePtr::<T>::new(at), v)?;
    Ok(at)
}

fn write_bytes(mem: &Mem, tramp: u64, off: u64, b: &[u8]) -> Result<u64, Cause> {
    let at = tramp + DATA + off;
    if off + b.len() as u64 > TRAMP_SIZE - DATA {
        return Err(Cause::Refused(format!(
            "{} bytes do not fit the trampoline data area",
            b.len()
        )));
    }
    mem.write(RemotePtr::<u8>::new(at), b)?;
    Ok(at)
}

fn remote_open(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    path: &str,
    flags: i32,
) -> Result<u64, Cause> {
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    let at = write_bytes(mem, tramp, 0, &b)?;
    let fd = r.syscall_raw(
        nr::OPENAT,
        [
            (-100i64).bits(),
            at,
            u64::from((flags | libc::O_CLOEXEC).bits()),
            0,
            0,
            0,
        ],
    )?;
    if fd < 0 {
        let errno = i32::try_from(-fd).unwrap_or(libc::EINVAL);
        return Err(Cause::Io(std::io::Error::new(
            std::io::Error::from_raw_os_error(errno).kind(),
            format!(
                "opening {path} in process {}: {}",
                r.tid(),
                std::io::Error::from_raw_os_error(errno)
            ),
        )));
    }
    Ok(fd.bits())
}

/// Step one of a task's rebuild: trampoline, unmap, specials, mappings.
fn map_process<'a>(
    p: &'a ProcessState,
    high_fd: i32,
    shm: &BTreeMap<u64, (u64, u64)>,
    segs: &crate::engine::files::Segments,
) -> Result<Rebuild<'a>, Cause> {
    let pid = p.pid;
    let mem = Mem::open(pid)?;
    let maps_path = format!("/proc/{pid}/maps");
    let current = procfs::parse_smaps(&maps_path, &procfs::read(&maps_path)?)?;
    let mut busy: Vec<(u64, u64)> = p.vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.extend(current.iter().map(|m| (m.start, m.end)));
    let tramp = hole(&mut busy, TRAMP_SIZE)
        .ok_or_else(|| Cause::Refused("no hole for the trampoline".into()))?;
    {
        let mut r = Remote::at_pc(pid, &mem)?;
        let (n, a) = arch::mmap_args(
            tramp,
            TRAMP_SIZE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        let got = r.syscall("mmap (trampoline)", n, a)?;
        if got != tramp {
            return Err(Cause::Refused(format!(
                "trampoline landed at {got:#x}, not {tramp:#x}"
            )));
        }
        r.finish()?;
    }
    mem.write(RemotePtr::<u8>::new(tramp), arch::SYSCALL_TRAP)?;
    let rb = Rebuild { p, mem, tramp };
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
        for m in &current {
            if SPECIAL_MAPPINGS.contains(&m.name.as_str())
                || is_fixed_kernel_mapping(&m.name)
                || in_shm(m.start)
            {
                continue;
            }
            r.syscall("munmap", nr::MUNMAP, [m.start, m.end - m.start, 0, 0, 0, 0])?;
        }
        move_specials(r, p, &current, tramp, shm)?;
        segs.attach_sysv(r, p)?;
        for v in &p.vmas {
            map_vma(r, &rb.mem, tramp, v, segs)?;
        }
        // torpor's descriptors above the task's own: the report pipe may
        // still be open if the task was stopped right after reporting.
        r.syscall(
            "close_range",
            nr::CLOSE_RANGE,
            [u64::from(high_fd.bits()), u64::from(u32::MAX), 0, 0, 0, 0],
        )?;
        Ok(())
    })?;
    Ok(rb)
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
            r.syscall(
                "munmap (special)",
                nr::MUNMAP,
                [m.start, m.end - m.start, 0, 0, 0, 0],
            )?;
        }
    }
    // First out of the way (sources and targets may overlap), then what is
    // left of the shared objects is unmapped — a target may lie inside an
    // object's old range — and then everything goes home.
    let mut busy: Vec<(u64, u64)> = p.vmas.iter().map(|v| (v.start, v.end)).collect();
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
        r.syscall(
            "munmap (shared memory)",
            nr::MUNMAP,
            [addr, size, 0, 0, 0, 0],
        )?;
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
            let (n, a) = arch::mmap_args(v.start, len, v.prot, flags, -1, 0);
            r.syscall("mmap (anonymous)", n, a)?;
            Ok(())
        }
        // Moved into place with the specials; attached before.
        Backing::Shm { .. } | Backing::Sysv { .. } => Ok(()),
        Backing::File { path, offset, .. } => {
            let writable_shared = v.shared && v.prot & libc::PROT_WRITE != 0;
            map_from(r, mem, tramp, v, path, *offset, writable_shared)
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

/// Maps `v` from the file at `path` (opened in the task, read-write when
/// the mapping is shared and may write).
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
        path,
        if writable_shared {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        },
    )?;
    let flags = libc::MAP_FIXED_NOREPLACE
        | if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    let fd_i = i32::try_from(fd).unwrap_or(-1);
    let (n, a) = arch::mmap_args(v.start, v.end - v.start, v.prot, flags, fd_i, offset);
    let res = r.syscall("mmap (file)", n, a);
    r.syscall("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0])?;
    res.map_err(|e| {
        Cause::Refused(format!(
            "mapping {} ({path}) at {:#x}: {e}",
            v.name, v.start
        ))
    })?;
    Ok(())
}

/// The kernel's `struct prctl_mm_map`: `auxv` is a native pointer (`__u64 *`),
/// so on 32-bit ARM the fields after it move up by four bytes; padding makes
/// it 104 bytes on both architectures.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: usize,
    auxv_size: u32,
    exe_fd: u32,
}
const _: () = assert!(core::mem::size_of::<PrctlMmMap>() == 104);

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// Step two: protections, mm fields, signals, threads, registers.
fn finish_process(rb: &Rebuild<'_>, created: &mut Created) -> Result<usize, Cause> {
    let p = rb.p;
    let pid = p.pid;
    let mem = &rb.mem;
    let tramp = rb.tramp;
    with_remote(mem, pid, tramp, |r| {
        for v in &p.vmas {
            if matches!(v.backing, Backing::Shm { .. })
                && v.prot != libc::PROT_READ | libc::PROT_WRITE
            {
                r.syscall(
                    "mprotect",
                    nr::MPROTECT,
                    [v.start, v.end - v.start, u64::from(v.prot.bits()), 0, 0, 0],
                )?;
            }
        }
        let exe_fd = remote_open(r, mem, tramp, &p.exe, libc::O_RDONLY)?;
        let auxv_at = write_bytes(mem, tramp, 512, &p.auxv)?;
        let m = &p.mm;
        let map = PrctlMmMap {
            start_code: m.start_code,
            end_code: m.end_code,
            start_data: m.start_data,
            end_data: m.end_data,
            start_brk: m.start_brk,
            brk: m.brk,
            start_stack: m.start_stack,
            arg_start: m.arg_start,
            arg_end: m.arg_end,
            env_start: m.env_start,
            env_end: m.env_end,
            auxv: arch::native(auxv_at),
            auxv_size: u32::try_from(p.auxv.len()).unwrap_or(0),
            exe_fd: u32::try_from(exe_fd).unwrap_or(u32::MAX),
        };
        let map_at = write_data(mem, tramp, 0, &map)?;
        let res = r.syscall(
            "prctl(PR_SET_MM_MAP)",
            nr::PRCTL,
            [PR_SET_MM, PR_SET_MM_MAP, map_at, 104, 0, 0],
        );
        r.syscall("close", nr::CLOSE, [exe_fd, 0, 0, 0, 0, 0])?;
        res?;
        for (i, sa) in p.sigactions.iter().enumerate() {
            let sig = i as u64 + 1;
            if sig == 9 || sig == 19 {
                continue;
            }
            let mut k = KSigaction {
                handler: arch::native(sa.handler),
                flags: arch::native(sa.flags),
                restorer: arch::native(sa.restorer),
                ..Default::default()
            };
            for (j, w) in k.mask.iter_mut().enumerate() {
                *w = arch::native(sa.mask >> (j * usize::BITS as usize));
            }
            let at = write_data(mem, tramp, 0, &k)?;
            r.syscall("rt_sigaction", nr::RT_SIGACTION, [sig, at, 0, 8, 0, 0])?;
        }
        for (which, t) in p.itimers.iter().enumerate() {
            let mut value_usec = t.value_usec;
            if t.value_sec == 0 && t.value_usec == 0 {
                if which != ITIMER_REAL || (t.interval_sec == 0 && t.interval_usec == 0) {
                    continue;
                }
                // An expired periodic ITIMER_REAL reads as 0 left until its
                // SIGALRM (pending, restored with the other signals) is
                // dequeued, which re-arms it. Expiring it at once recreates
                // exactly that; setting 0 would disarm it for good.
                value_usec = 1;
            }
            let v = torpor_parasite::KItimerval {
                interval_sec: arch::native_signed(t.interval_sec),
                interval_usec: arch::native_signed(t.interval_usec),
                value_sec: arch::native_signed(t.value_sec),
                value_usec: arch::native_signed(value_usec),
            };
            let at = write_data(mem, tramp, 0, &v)?;
            r.syscall("setitimer", nr::SETITIMER, [which as u64, at, 0, 0, 0, 0])?;
        }
        // Threads, created from the main thread with their tids.
        ptrace::set_options(pid, ptrace::PTRACE_O_TRACECLONE)?;
        for t in p.threads.iter().skip(1) {
            let tid_at = write_data(mem, tramp, 256, &t.tid)?;
            let args = CloneArgs {
                flags: (libc::CLONE_VM
                    | libc::CLONE_FS
                    | libc::CLONE_FILES
                    | libc::CLONE_SIGHAND
                    | libc::CLONE_THREAD
                    | libc::CLONE_SYSVSEM) as u64,
                set_tid: tid_at,
                set_tid_size: 1,
                ..Default::default()
            };
            let at = write_data(mem, tramp, 0, &args)?;
            let got = r.syscall(
                "clone3 (thread)",
                nr::CLONE3,
                [at, core::mem::size_of::<CloneArgs>() as u64, 0, 0, 0, 0],
            )?;
            if got != u64::from(t.tid.bits()) {
                return Err(Cause::Refused(format!(
                    "thread {} came back as {got}",
                    t.tid
                )));
            }
            created.traced.push(t.tid);
            match ptrace::wait(t.tid)? {
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(ptrace::PtraceError::TaskDied(t.tid).into())
                }
                _ => {}
            }
        }
        // After the threads: a timer may notify one of them.
        restore_timers(r, mem, tramp, p)?;
        for info in &p.shared_pending {
            let sig = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
            let at = write_bytes(mem, tramp, 0, info)?;
            r.syscall(
                "rt_sigqueueinfo",
                nr::RT_SIGQUEUEINFO,
                [u64::from(pid.bits()), u64::from(sig.bits()), at, 0, 0, 0],
            )?;
        }
        install_seccomp(r, mem, tramp, p)?;
        Ok(())
    })?;
    for t in p.threads.iter() {
        restore_thread(rb, t)?;
    }
    // The trampoline goes last, through a syscall patched at the main
    // thread's final pc (the trampoline cannot unmap itself and trap).
    let mut r = Remote::at_pc(pid, mem)?;
    r.syscall(
        "munmap (trampoline)",
        nr::MUNMAP,
        [tramp, TRAMP_SIZE, 0, 0, 0, 0],
    )?;
    r.finish()?;
    Ok(p.threads.len())
}

/// The process's seccomp filters, oldest first, for all its threads
/// (`SECCOMP_FILTER_FLAG_TSYNC`). They apply to the task's own syscalls
/// once torpor detaches: until then `PTRACE_O_SUSPEND_SECCOMP` keeps them
/// from the syscalls torpor still injects.
fn install_seccomp(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
    if p.seccomp.is_empty() {
        return Ok(());
    }
    for t in &p.threads {
        let options = ptrace::PTRACE_O_TRACECLONE | ptrace::PTRACE_O_SUSPEND_SECCOMP;
        ptrace::set_options(t.tid, options).map_err(|e| {
            Cause::Refused(format!(
                "restoring the seccomp filters of process {} needs PTRACE_O_SUSPEND_SECCOMP: {e}",
                p.pid
            ))
        })?;
    }
    let word = core::mem::size_of::<usize>();
    for (i, f) in p.seccomp.iter().enumerate() {
        let len = f.program.len() as u64;
        let insns = u16::try_from(len / 8)
            .map_err(|_| Cause::Refused(format!("seccomp filter {i}: {len} bytes")))?;
        let (n, a) = arch::mmap_args(
            0,
            len.max(1),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let at = r.syscall("mmap (seccomp filter)", n, a)?;
        mem.write(RemotePtr::<u8>::new(at), &f.program)?;
        // struct sock_fprog: u16 len, then a native pointer.
        let mut fprog = vec![0u8; 2 * word];
        fprog[..2].copy_from_slice(&insns.to_le_bytes());
        fprog[word..].copy_from_slice(&at.to_le_bytes()[..word]);
        let fprog_at = write_bytes(mem, tramp, 0, &fprog)?;
        let res = r.syscall(
            "seccomp(SECCOMP_SET_MODE_FILTER)",
            nr::SECCOMP,
            [
                SECCOMP_SET_MODE_FILTER,
                f.flags | SECCOMP_FILTER_FLAG_TSYNC,
                fprog_at,
                0,
                0,
                0,
            ],
        );
        r.syscall(
            "munmap (seccomp filter)",
            nr::MUNMAP,
            [at, len.max(1), 0, 0, 0, 0],
        )?;
        if let Ok(tid) = &res {
            if *tid != 0 {
                return Err(Cause::Refused(format!(
                    "seccomp filter {i}: thread {tid} could not take it"
                )));
            }
        }
        res?;
    }
    Ok(())
}

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const ITIMER_REAL: usize = 0;
/// Timers created and deleted at most to reach a wanted id in order.
const MAX_TIMER_ID_SKIP: u32 = 1 << 16;

/// POSIX timers with their ids: timer_create takes the id from its output
/// argument while PR_TIMER_CREATE_RESTORE_IDS is on.
fn restore_timers(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    p: &ProcessState,
) -> Result<(), Cause> {
    if p.posix_timers.is_empty() {
        return Ok(());
    }
    let by_prctl = match r.syscall(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        nr::PRCTL,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    ) {
        Ok(_) => true,
        // Kernels before the request (6.1 on the Pi Zero) hand out ids in
        // order from 0 in a new process and never reuse one: create timers
        // in id order, deleting the ones that land below the wanted id.
        Err(RemoteError::Syscall { err, .. }) if err.raw_os_error() == Some(libc::EINVAL) => false,
        Err(e) => return Err(e.into()),
    };
    let word = core::mem::size_of::<usize>();
    let mut order: Vec<_> = p.posix_timers.iter().collect();
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
            let sev_at = write_bytes(mem, tramp, 0, &sev)?;
            let id_at = write_data(mem, tramp, 128, &t.id)?;
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
            if t.left != (0, 0) {
                let its = [t.interval.0, t.interval.1, t.left.0, t.left.1].map(arch::native_signed);
                let its_at = write_data(mem, tramp, 256, &its)?;
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
        r.syscall(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            nr::PRCTL,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        )?;
    }
    created
}

const PR_SET_KEEPCAPS: u64 = 8;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `capset` of this thread, through the trampoline's data area.
fn capset(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    inh: u64,
    prm: u64,
    eff: u64,
) -> Result<(), Cause> {
    // Header {version, pid 0}, then two {effective, permitted, inheritable}
    // blocks: low and high 32 bits.
    let lo = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(0);
    let hi = |v: u64| u32::try_from(v >> 32).unwrap_or(0);
    let words: [u32; 8] = [
        CAPABILITY_VERSION_3,
        0,
        lo(eff),
        lo(prm),
        lo(inh),
        hi(eff),
        hi(prm),
        hi(inh),
    ];
    let at = write_data(mem, tramp, 0, &words)?;
    r.syscall("capset", nr::CAPSET, [at, at + 8, 0, 0, 0, 0])?;
    Ok(())
}

/// User and group ids, groups and capabilities of one thread, from the
/// root-owned state every restored task starts with: the bounding set is
/// narrowed while still privileged, permitted capabilities are kept across
/// the uid change, then the exact sets, ambient ones and no_new_privs.
fn restore_creds(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    c: &crate::engine::state::Creds,
) -> Result<(), Cause> {
    let me = procfs::parse_status("/proc/self/status", &procfs::read("/proc/self/status")?)?;
    let last_cap: u32 = procfs::read("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .unwrap_or(40);
    let ids_change = !c.groups.is_empty() || c.uids != [0; 4] || c.gids != [0; 4];
    let caps_change = c.caps != me.caps;
    if caps_change {
        for cap in 0..=last_cap.min(63) {
            if c.caps[3] & (1u64 << cap) == 0 && me.caps[3] & (1u64 << cap) != 0 {
                r.syscall(
                    "prctl(PR_CAPBSET_DROP)",
                    nr::PRCTL,
                    [PR_CAPBSET_DROP, u64::from(cap), 0, 0, 0, 0],
                )?;
            }
        }
        // Inheritable first, while every permitted capability is there.
        capset(r, mem, tramp, c.caps[0], me.caps[1], me.caps[2])?;
    }
    if ids_change {
        if caps_change {
            r.syscall(
                "prctl(PR_SET_KEEPCAPS)",
                nr::PRCTL,
                [PR_SET_KEEPCAPS, 1, 0, 0, 0, 0],
            )?;
        }
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let at = write_bytes(mem, tramp, 0, &groups)?;
        r.syscall(
            "setgroups",
            nr::SETGROUPS,
            [c.groups.len() as u64, at, 0, 0, 0, 0],
        )?;
        let [g0, g1, g2, _] = c.gids.map(u64::from);
        r.syscall("setresgid", nr::SETRESGID, [g0, g1, g2, 0, 0, 0])?;
        let [u0, u1, u2, _] = c.uids.map(u64::from);
        r.syscall("setresuid", nr::SETRESUID, [u0, u1, u2, 0, 0, 0])?;
        if caps_change {
            r.syscall(
                "prctl(PR_SET_KEEPCAPS)",
                nr::PRCTL,
                [PR_SET_KEEPCAPS, 0, 0, 0, 0, 0],
            )?;
        }
    }
    if caps_change {
        capset(r, mem, tramp, c.caps[0], c.caps[1], c.caps[2])?;
        for cap in 0..=last_cap.min(63) {
            if c.caps[4] & (1u64 << cap) != 0 {
                r.syscall(
                    "prctl(PR_CAP_AMBIENT_RAISE)",
                    nr::PRCTL,
                    [
                        PR_CAP_AMBIENT,
                        PR_CAP_AMBIENT_RAISE,
                        u64::from(cap),
                        0,
                        0,
                        0,
                    ],
                )?;
            }
        }
    }
    if c.no_new_privs && !me.no_new_privs {
        r.syscall(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            nr::PRCTL,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

fn restore_thread(rb: &Rebuild<'_>, t: &crate::engine::state::ThreadState) -> Result<(), Cause> {
    let p = rb.p;
    let mem = &rb.mem;
    let tramp = rb.tramp;
    let mut r = Remote::at(t.tid, mem, tramp)?;
    const PR_SET_NAME: u64 = 15;
    let mut name = t.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let at = write_bytes(mem, tramp, 0, &name)?;
    r.syscall(
        "prctl(PR_SET_NAME)",
        nr::PRCTL,
        [PR_SET_NAME, at, 0, 0, 0, 0],
    )?;
    r.syscall(
        "set_tid_address",
        nr::SET_TID_ADDRESS,
        [t.tid_address, 0, 0, 0, 0, 0],
    )?;
    if t.robust_head != 0 {
        r.syscall(
            "set_robust_list",
            nr::SET_ROBUST_LIST,
            [t.robust_head, t.robust_len, 0, 0, 0, 0],
        )?;
    }
    // Always set: a disabled stack must also replace the one inherited
    // from torpor.
    const SS_DISABLE: i32 = 2;
    let ss = torpor_parasite::KStack {
        sp: arch::native(t.altstack.sp),
        flags: t.altstack.flags & SS_DISABLE,
        size: arch::native(t.altstack.size),
    };
    let at = write_data(mem, tramp, 0, &ss)?;
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
        let sig = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        let at = write_bytes(mem, tramp, 0, info)?;
        r.syscall(
            "rt_tgsigqueueinfo",
            nr::RT_TGSIGQUEUEINFO,
            [
                u64::from(p.pid.bits()),
                u64::from(t.tid.bits()),
                u64::from(sig.bits()),
                at,
                0,
                0,
            ],
        )?;
    }
    restore_creds(&mut r, mem, tramp, &p.creds)?;
    arch::set_fpregs(t.tid, &t.fpregs)?;
    let mut regs = Regs::from_bytes(&t.regs)?;
    regs.for_resume();
    r.replace_saved(regs, t.sigmask);
    r.finish()?;
    Ok(())
}

/// Streams the page records of the image into the tasks, rebuilding each
/// task's mappings when its record comes.
fn rebuild_all<R: Read>(
    st: &ImageState,
    image: R,
    created: &mut Created,
    high_fd: i32,
    shm: &BTreeMap<u64, (u64, u64)>,
    segs: &mut crate::engine::files::Segments,
) -> Result<RestoreStats, EngineError> {
    let rstep = || "read image".to_string();
    let mut rd = ImageReader::new(image).step(rstep)?;
    let batch = rd.header().batch_pages() as usize * rd.header().page_size as usize;
    let mut buf = vec![0u8; batch];
    let mut stats = RestoreStats::default();
    let mut cur: Option<Rebuild<'_>> = None;
    let mut idx = 0usize;
    let finish = |rb: Rebuild<'_>,
                  created: &mut Created,
                  stats: &mut RestoreStats|
     -> Result<(), EngineError> {
        let pid = rb.p.pid;
        stats.threads += finish_process(&rb, created).step(|| format!("rebuild {pid}"))?;
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
                let p = st
                    .processes
                    .get(idx)
                    .ok_or_else(|| refused("read image", "image changed while restoring".into()))?;
                idx += 1;
                if p.zombie.is_some() {
                    stats.processes += 1;
                    continue;
                }
                cur = Some(
                    map_process(p, high_fd, shm, segs).step(|| format!("map memory {}", p.pid))?,
                );
            }
            Kind::Pages => {
                let rb = cur
                    .as_ref()
                    .ok_or_else(|| refused("read image", "pages before any task".into()))?;
                // Raw pages go to the task straight from the record: no copy.
                let p = rec.pages().step(rstep)?;
                let (vaddr, data) = if p.codec == Codec::Raw {
                    (p.vaddr, p.data)
                } else {
                    let info = rec.decode_pages_into(&mut buf).step(rstep)?;
                    (info.vaddr, &buf[..info.len])
                };
                rb.mem
                    .write(RemotePtr::<u8>::new(vaddr), data)
                    .step(|| format!("write memory {}", rb.p.pid))?;
                stats.page_bytes += data.len() as u64;
            }
            Kind::ObjectData => {
                let d = rec.decode().step(rstep)?;
                segs.fill(&d)
                    .step(|| "fill memfds and SysV segments".to_string())?;
            }
            _ => {}
        }
    }
    if let Some(rb) = cur.take() {
        finish(rb, created, &mut stats)?;
    }
    Ok(stats)
}

/// Recreates the tree described by `st`, reading pages from `image`.
pub fn restore<R: Read>(
    st: &ImageState,
    opts: &RestoreOptions,
    image: R,
) -> Result<RestoreStats, EngineError> {
    // Orphans of a task that failed come to torpor, to be killed with the
    // rest; once torpor exits, the restored root moves on to the next
    // subreaper or init as usual.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(last_os()).step(|| "restore".to_string());
    }
    crate::engine::files::recreate_tmpfs_files(st).step(|| "recreate tmpfs files".to_string())?;
    // The namespace first: timerfd deadlines are set in its view.
    let (mut timens, clocks) = crate::engine::clocks::prepare(st.clocks.as_ref(), opts.host_clocks)
        .step(|| "time namespace".to_string())?;
    let mut objs = open_objects(st, opts, timens.as_ref().map(|t| t.tree_over_torpor))?;
    let mut created = Created::default();
    create_tasks(st, &objs, &mut created)?;
    // The whole tree is in the namespace: torpor takes its own back.
    if let Some(t) = timens.as_mut() {
        t.leave().step(|| "time namespace".to_string())?;
    }
    let high_fd = objs.high;
    let shm = objs.shm.clone();
    let step = || "seize tasks".to_string();
    for p in st.processes.iter().filter(|p| p.zombie.is_none()) {
        ptrace::seize(p.pid, 0).step(step)?;
        created.traced.push(p.pid);
        ptrace::interrupt(p.pid).step(step)?;
        loop {
            match ptrace::wait(p.pid).step(step)? {
                Stop::Event(_, ptrace::PTRACE_EVENT_STOP) => break,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(ptrace::PtraceError::TaskDied(p.pid)).step(step);
                }
                Stop::Signal(_) | Stop::Event(..) => ptrace::cont(p.pid, 0).step(step)?,
            }
        }
    }
    let mut stats = rebuild_all(st, image, &mut created, high_fd, &shm, &mut objs.segs)?;
    // Seals and removals once every task has its mappings.
    objs.segs
        .finish()
        .step(|| "seal memfds and remove SysV segments".to_string())?;
    stats.clocks = Some(clocks);
    // Owners of signal-driven I/O may be any process or thread of the tree:
    // set now that all exist.
    for (i, f) in st.files.iter().enumerate() {
        if let (Some(s), Some(&fd)) = (&f.sigio, objs.fds.get(i)) {
            crate::engine::files::set_sigio_owner(fd, s)
                .map_err(Cause::Refused)
                .step(|| "signal-driven I/O".to_string())?;
        }
    }
    drop(objs);
    // A process stopped at the dump gets SIGSTOP while still traced: it
    // stops again on release, before running any code of its own.
    for p in st
        .processes
        .iter()
        .filter(|p| p.stopped && p.zombie.is_none())
    {
        // SAFETY: kill takes integers; the task is ours and traced.
        if unsafe { libc::kill(p.pid, libc::SIGSTOP) } < 0 {
            return Err(last_os()).step(|| format!("stopping process {} again", p.pid));
        }
    }
    for &tid in &created.traced {
        ptrace::detach(tid).step(|| "detach".to_string())?;
    }
    created.done = true;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn hole_skips_busy_ranges() {
        let mut busy = vec![(0x0100_0000, 0x0100_4000), (0x0100_5000, 0x0100_6000)];
        assert_eq!(hole(&mut busy, 0x1000), Some(0x0100_4000));
        assert_eq!(hole(&mut busy, 0x2000), Some(0x0100_6000));
    }
}

//! `torpor check`: probe every kernel feature torpor relies on, by using it.
//!
//! Each probe exercises the real interface on this process or on a throwaway
//! child, so a feature that is compiled in but forbidden (seccomp, missing
//! capability, qemu-user) is reported as missing with the reason.
//!
//! Unsafe code: each probe calls the raw interface it checks (ptrace, prctl,
//! kcmp, pidfd_getfd, process_vm_readv, fork) through libc.
#![allow(unsafe_code)]

use std::fmt;
use std::io;

/// Whether torpor cannot work without a feature or merely loses something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Required,
    Optional,
}

/// The outcome of one probe.
#[derive(Debug)]
pub struct Probe {
    pub name: &'static str,
    pub what: &'static str,
    pub need: Need,
    pub result: Result<(), String>,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.result, self.need) {
            (Ok(()), _) => write!(f, "present  {:<22} {}", self.name, self.what),
            (Err(why), Need::Required) => {
                write!(f, "MISSING  {:<22} {}: {why}", self.name, self.what)
            }
            (Err(why), Need::Optional) => {
                write!(
                    f,
                    "absent   {:<22} {} (optional): {why}",
                    self.name, self.what
                )
            }
        }
    }
}

fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "not implemented by this kernel (ENOSYS)".into(),
        Some(libc::EPERM) => {
            "not permitted (EPERM): run as root or with CAP_CHECKPOINT_RESTORE".into()
        }
        Some(libc::EINVAL) => "rejected (EINVAL): the kernel lacks this option".into(),
        _ => e.to_string(),
    }
}

fn last_err() -> String {
    errno_text(&io::Error::last_os_error())
}

/// Runs every probe, in the order the engine uses the features.
pub fn probes() -> Vec<Probe> {
    let p = |name, what, need, result| Probe {
        name,
        what,
        need,
        result,
    };
    vec![
        p(
            "ptrace-seize",
            "PTRACE_SEIZE + PTRACE_INTERRUPT of a child",
            Need::Required,
            probe_ptrace_seize(),
        ),
        p(
            "process_vm_readv",
            "bulk reads of another address space",
            Need::Required,
            probe_process_vm_readv(),
        ),
        p(
            "proc-pagemap",
            "/proc/PID/pagemap",
            Need::Required,
            probe_pagemap(),
        ),
        p(
            "proc-map_files",
            "/proc/PID/map_files",
            Need::Required,
            probe_map_files(),
        ),
        p(
            "pr_set_mm_map",
            "prctl(PR_SET_MM, PR_SET_MM_MAP) (CONFIG_CHECKPOINT_RESTORE)",
            Need::Required,
            probe_pr_set_mm_map(),
        ),
        p(
            "pr_get_tid_address",
            "prctl(PR_GET_TID_ADDRESS) (CONFIG_CHECKPOINT_RESTORE)",
            Need::Required,
            probe_get_tid_address(),
        ),
        p(
            "kcmp",
            "kcmp(2) to compare files of two tasks (CONFIG_KCMP)",
            Need::Required,
            probe_kcmp(),
        ),
        p(
            "clone3-set_tid",
            "clone3 with set_tid: restore with the original PIDs",
            Need::Required,
            probe_clone3_set_tid(),
        ),
        p(
            "pidfd_getfd",
            "pidfd_open + pidfd_getfd: copy a task's file",
            Need::Optional,
            probe_pidfd_getfd(),
        ),
        p(
            "time-namespace",
            "time namespaces: continuous monotonic clocks after restore",
            Need::Optional,
            probe_path("/proc/self/ns/time"),
        ),
        p(
            "sysv-shm-ids",
            "/proc/sys/kernel/shm_next_id: SysV segments recreated with their ids",
            Need::Optional,
            probe_path("/proc/sys/kernel/shm_next_id"),
        ),
        p(
            "gpio-cdev",
            "/dev/gpiochip0: the power GPIO",
            Need::Optional,
            probe_path("/dev/gpiochip0"),
        ),
    ]
}

fn probe_path(path: &str) -> Result<(), String> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| format!("{path}: {}", errno_text(&e)))
}

fn probe_pagemap() -> Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open("/proc/self/pagemap").map_err(|e| errno_text(&e))?;
    let mut entry = [0u8; 8];
    f.read_exact(&mut entry).map_err(|e| errno_text(&e))
}

fn probe_map_files() -> Result<(), String> {
    let mut entries = std::fs::read_dir("/proc/self/map_files").map_err(|e| errno_text(&e))?;
    let first = entries
        .next()
        .ok_or("the directory is empty")?
        .map_err(|e| errno_text(&e))?;
    std::fs::read_link(first.path())
        .map(|_| ())
        .map_err(|e| errno_text(&e))
}

fn probe_process_vm_readv() -> Result<(), String> {
    let source = [0x5au8, 0xa5, 0x3c, 0xc3];
    let mut dest = [0u8; 4];
    let local = libc::iovec {
        iov_base: dest.as_mut_ptr().cast(),
        iov_len: dest.len(),
    };
    let remote = libc::iovec {
        iov_base: source.as_ptr().cast_mut().cast(),
        iov_len: source.len(),
    };
    // SAFETY: both iovecs describe live buffers of this process of the given
    // lengths; the kernel writes only into `dest`.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        return Err(last_err());
    }
    if dest != source {
        return Err(format!("read back {dest:02x?}, expected {source:02x?}"));
    }
    Ok(())
}

fn probe_pr_set_mm_map() -> Result<(), String> {
    let mut size: libc::c_uint = 0;
    // SAFETY: PR_SET_MM_MAP_SIZE only writes one unsigned int to the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE,
            &mut size as *mut libc::c_uint,
            0,
            0,
        )
    };
    if r < 0 {
        return Err(last_err());
    }
    if size == 0 {
        return Err("the kernel reported a zero-sized prctl_mm_map".into());
    }
    Ok(())
}

fn probe_get_tid_address() -> Result<(), String> {
    let mut addr: usize = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer-sized value to the pointer.
    let r = unsafe { libc::prctl(libc::PR_GET_TID_ADDRESS, &mut addr as *mut usize, 0, 0, 0) };
    if r < 0 {
        return Err(last_err());
    }
    Ok(())
}

const KCMP_FILE: libc::c_long = 0;

fn probe_kcmp() -> Result<(), String> {
    // SAFETY: kcmp only compares kernel objects of the given tasks; fd 0 may be
    // closed, which is EBADF and still proves the call exists.
    let r = unsafe {
        let me = libc::c_long::from(libc::getpid());
        libc::syscall(
            libc::SYS_kcmp,
            me,
            me,
            KCMP_FILE,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EBADF) {
        return Err(last_err());
    }
    Ok(())
}

fn probe_pidfd_getfd() -> Result<(), String> {
    // SAFETY: pidfd_open on our own pid creates a new fd owned here and
    // closed below.
    let pidfd = unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            libc::c_long::from(libc::getpid()),
            0 as libc::c_long,
        )
    };
    if pidfd < 0 {
        return Err(format!("pidfd_open: {}", last_err()));
    }
    let pidfd = libc::c_int::try_from(pidfd).map_err(|_| "pidfd out of range".to_string())?;
    let probe_fd = std::fs::File::open("/proc/self/stat").map_err(|e| errno_text(&e))?;
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd is a valid pidfd for this process; the copied fd is closed.
    let copied = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            libc::c_long::from(pidfd),
            libc::c_long::from(probe_fd.as_raw_fd()),
            0 as libc::c_long,
        )
    };
    let result = if copied < 0 {
        Err(format!("pidfd_getfd: {}", last_err()))
    } else {
        Ok(())
    };
    // SAFETY: both fds were created above and are closed exactly once.
    unsafe {
        if copied >= 0 {
            // c_long is c_int on 32-bit ARM.
            #[allow(irrefutable_let_patterns)]
            if let Ok(fd) = libc::c_int::try_from(copied) {
                libc::close(fd);
            }
        }
        libc::close(pidfd);
    }
    result
}

/// Fork a child that waits in pause(), seize and interrupt it, then kill it.
fn probe_ptrace_seize() -> Result<(), String> {
    // SAFETY: the child only calls async-signal-safe functions (pause, _exit).
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", last_err()));
    }
    if child == 0 {
        // SAFETY: async-signal-safe calls in the forked child.
        unsafe {
            libc::pause();
            libc::_exit(0);
        }
    }
    let result = seize_and_interrupt(child);
    // SAFETY: `child` is our own child; it is killed and reaped exactly once.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    result
}

fn seize_and_interrupt(pid: libc::pid_t) -> Result<(), String> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: PTRACE_SEIZE/INTERRUPT take no pointers (addr and data are 0).
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, null, null) } < 0 {
        return Err(format!("PTRACE_SEIZE: {}", last_err()));
    }
    // SAFETY: as above.
    if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, null, null) } < 0 {
        return Err(format!("PTRACE_INTERRUPT: {}", last_err()));
    }
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local int.
    if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } != pid {
        return Err(format!("waitpid: {}", last_err()));
    }
    if !libc::WIFSTOPPED(status) || (status >> 16) != libc::PTRACE_EVENT_STOP {
        return Err(format!(
            "expected a PTRACE_EVENT_STOP, got wait status {status:#x}"
        ));
    }
    Ok(())
}

/// Create a child with a chosen free PID, the way restore does.
fn probe_clone3_set_tid() -> Result<(), String> {
    let last: i64 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .map_err(|e| format!("/proc/sys/kernel/ns_last_pid: {}", errno_text(&e)))?
        .trim()
        .parse()
        .map_err(|e| format!("ns_last_pid: {e}"))?;
    let max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    // Pick PIDs well ahead of the allocator so normal forks do not race us.
    for step in 1..64i64 {
        let candidate = 300 + (last + 1000 * step - 300).rem_euclid(max - 300);
        if std::path::Path::new(&format!("/proc/{candidate}")).exists() {
            continue;
        }
        let tid: libc::pid_t = libc::pid_t::try_from(candidate).map_err(|e| e.to_string())?;
        let r = match crate::engine::restore::fork_with_pid(tid) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.to_string()),
        };
        if r == 0 {
            // SAFETY: async-signal-safe exit of the forked child.
            unsafe { libc::_exit(0) };
        }
        let child = libc::pid_t::try_from(r).map_err(|e| e.to_string())?;
        let mut status = 0;
        // SAFETY: reap our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        if child != tid {
            return Err(format!("asked for PID {tid}, the kernel gave {child}"));
        }
        return Ok(());
    }
    Err("no free PID found to try".into())
}

/// `torpor check`: one line per feature; exit status 1 if a required one is missing.
pub fn run() -> i32 {
    let probes = probes();
    let mut missing = 0;
    for p in &probes {
        println!("{p}");
        if p.need == Need::Required && p.result.is_err() {
            missing += 1;
        }
    }
    if missing > 0 {
        println!("{missing} required feature(s) missing: torpor cannot checkpoint on this system");
        1
    } else {
        println!("all required features present");
        0
    }
}

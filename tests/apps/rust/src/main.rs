//! rustapp: the Rust test app. Threads with `thread_local!` values, heap
//! collections with known contents, and threads blocked on a `Condvar` and on
//! a channel across the checkpoint.
//!
//! After go every worker checks its thread-locals (set at run time and
//! const-initialised), a pattern on its own stack, its tid (from
//! /proc/thread-self) and its name; main checks a `Vec`, a `HashMap` and a
//! boxed slice on the heap, its own thread-local and that no fd came or
//! went. Every thread also checks
//! that libc's `sched_getcpu` agrees with the CPU it is pinned to, twice on
//! two CPUs: glibc answers from the thread's rseq area, so a registration
//! lost in the restore shows up as a stale CPU number.
//!
//! Prints `PASS rustapp` or `FAIL rustapp: ...` and exits 0 or 1, like the C
//! apps (see tests/apps/common.h for the protocol).
//!
//! Usage: rustapp [--selftest-fail=tls|stack|tid|name|vec|map|boxed|main-tls|rseq]
//! (`rseq` needs x86_64 glibc and two CPUs).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

const NAME: &str = "rustapp";
const WORKERS: usize = 4;
const VEC_LEN: usize = 1 << 20;
const MAP_LEN: u32 = 5000;
const BOXED_LEN: usize = 1 << 20;

thread_local! {
    static TL_VALUE: Cell<u64> = const { Cell::new(0) };
    static TL_TEXT: RefCell<String> = const { RefCell::new(String::new()) };
    static TL_CONST: Cell<u64> = const { Cell::new(0x7e57_c0de) };
}

extern "C" {
    fn sched_getcpu() -> i32;
    fn sched_getaffinity(pid: i32, size: usize, mask: *mut u64) -> i32;
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
}

const CPU_WORDS: usize = 16;

/// Unregisters the calling thread's rseq area and leaves `cpu` in it, for
/// the `rseq` negative control: the state of a restore that copied the area
/// but forgot the registration, where glibc keeps reading a stale CPU number.
#[cfg(all(target_arch = "x86_64", target_env = "gnu"))]
fn unregister_rseq(cpu: u32) -> Result<(), String> {
    use std::ffi::{c_char, c_long, c_void};
    extern "C" {
        fn dlsym(handle: *mut c_void, name: *const c_char) -> *mut c_void;
        fn syscall(number: c_long, ...) -> c_long;
    }
    const SYS_RSEQ: c_long = 334;
    const RSEQ_FLAG_UNREGISTER: c_long = 1;
    const RSEQ_SIG: c_long = 0x5305_3053;
    // SAFETY: dlsym with RTLD_DEFAULT (null) and a NUL-terminated name only looks a symbol up.
    let offset = unsafe { dlsym(std::ptr::null_mut(), c"__rseq_offset".as_ptr()) }.cast::<isize>();
    // SAFETY: as above.
    let size = unsafe { dlsym(std::ptr::null_mut(), c"__rseq_size".as_ptr()) }.cast::<u32>();
    if offset.is_null() || size.is_null() {
        return Err("this libc exports no __rseq_offset/__rseq_size".to_string());
    }
    let tp: usize;
    // SAFETY: on x86_64 the first word of the TCB at fs:0 is the thread pointer itself.
    unsafe { std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp) };
    // SAFETY: glibc's exported variables, valid for the life of the process.
    let (offset, size) = unsafe { (*offset, *size) };
    let area = tp.wrapping_add_signed(offset);
    // glibc registers a 32-byte area whatever __rseq_size says; the kernel wants the registered length.
    for len in [32, c_long::from(size)] {
        // SAFETY: rseq(UNREGISTER) only compares the arguments with the thread's registration.
        let r = unsafe { syscall(SYS_RSEQ, area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) };
        if r == 0 {
            // The kernel marks the area unregistered (cpu_id -1, so glibc would ask the kernel);
            // a restored area instead still holds the CPU of the dump: put one back.
            // SAFETY: area is this thread's live rseq area in glibc's TCB; cpu_id is the u32 at +4.
            unsafe { ((area + 4) as *mut u32).write_volatile(cpu) };
            return Ok(());
        }
    }
    Err(format!(
        "rseq unregister failed: {}",
        std::io::Error::last_os_error()
    ))
}

#[cfg(not(all(target_arch = "x86_64", target_env = "gnu")))]
fn unregister_rseq(_cpu: u32) -> Result<(), String> {
    Err("the rseq perturbation is implemented for x86_64 glibc only".to_string())
}

fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pattern_byte(seed: u64, i: usize) -> u8 {
    (mix64(seed + (i / 8) as u64) >> (8 * (i % 8))) as u8
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The protocol has no way to report a broken stdout; the harness sees a missing line.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn go_exists() -> bool {
    Path::new("go").exists()
}

fn wait_go() {
    while !go_exists() {
        thread::sleep(Duration::from_millis(20));
    }
}

/// The calling thread's kernel tid, from /proc/thread-self -> "PID/task/TID".
fn gettid() -> Result<u32, String> {
    let link =
        std::fs::read_link("/proc/thread-self").map_err(|e| format!("/proc/thread-self: {e}"))?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("/proc/thread-self: unexpected target {}", link.display()))
}

fn comm(tid: u32) -> Result<String, String> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim_end().to_string())
        .map_err(|e| format!("/proc/self/task/{tid}/comm: {e}"))
}

/// The open fds and what they are; the listing's own fd, closed by the time
/// it is looked at, drops out.
fn open_fds() -> Vec<(u32, String)> {
    let names: Vec<u32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut fds: Vec<(u32, String)> = names
        .into_iter()
        .filter_map(|fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

fn allowed_cpus() -> Vec<usize> {
    let mut mask = [0u64; CPU_WORDS];
    // SAFETY: mask is a writable buffer of exactly the size passed.
    let r = unsafe { sched_getaffinity(0, std::mem::size_of_val(&mask), mask.as_mut_ptr()) };
    if r != 0 {
        return Vec::new();
    }
    (0..CPU_WORDS * 64)
        .filter(|&c| mask[c / 64] & (1 << (c % 64)) != 0)
        .collect()
}

fn pin(cpus: &[usize]) -> bool {
    let mut mask = [0u64; CPU_WORDS];
    for &c in cpus {
        mask[c / 64] |= 1 << (c % 64);
    }
    // SAFETY: mask is a readable buffer of exactly the size passed.
    unsafe { sched_setaffinity(0, std::mem::size_of_val(&mask), mask.as_ptr()) == 0 }
}

/// Pins the calling thread to two CPUs in turn and checks that libc reports
/// each one; restores the original affinity afterwards.
fn check_cpu_reporting(who: &str, allowed: &[usize]) -> Result<(), String> {
    if allowed.len() < 2 {
        return Ok(());
    }
    let mut result = Ok(());
    for &cpu in &allowed[..2] {
        if !pin(&[cpu]) {
            continue;
        }
        thread::yield_now();
        // SAFETY: sched_getcpu takes no arguments and has no preconditions.
        let got = unsafe { sched_getcpu() };
        if got != cpu as i32 && result.is_ok() {
            result = Err(format!(
                "{who}: sched_getcpu pinned to CPU {cpu}: expected {cpu}, got {got}"
            ));
        }
    }
    pin(allowed);
    result
}

struct Shared {
    go: Mutex<bool>,
    cond: Condvar,
}

struct Worker {
    index: usize,
    tid: u32,
    name: String,
}

fn worker(
    index: usize,
    shared: Arc<Shared>,
    rx: Option<mpsc::Receiver<u64>>,
    started: mpsc::Sender<Worker>,
    perturb: Option<String>,
    allowed: Vec<usize>,
) -> Result<(), String> {
    let name = thread::current().name().unwrap_or("").to_string();
    let value = mix64(900 + index as u64);
    TL_VALUE.with(|v| v.set(value));
    let text = format!("thread-local text of worker {index}: {value:x}");
    TL_TEXT.with(|t| *t.borrow_mut() = text.clone());
    let mut stack = [0u8; 4096];
    for (i, b) in stack.iter_mut().enumerate() {
        *b = pattern_byte(950 + index as u64, i);
    }
    let stack = std::hint::black_box(stack);
    let tid = gettid()?;
    started
        .send(Worker {
            index,
            tid,
            name: name.clone(),
        })
        .map_err(|_| "main thread gone".to_string())?;

    match rx {
        Some(rx) => {
            let token = rx
                .recv()
                .map_err(|_| format!("worker {index}: channel closed"))?;
            if token != 0x60 {
                return Err(format!(
                    "worker {index} channel token: expected 0x60, got {token:#x}"
                ));
            }
        }
        None => {
            let mut go = shared.go.lock().map_err(|_| "poisoned".to_string())?;
            while !*go {
                go = shared.cond.wait(go).map_err(|_| "poisoned".to_string())?;
            }
        }
    }

    let mine = |what: &str| perturb.as_deref() == Some(what) && index == 1;
    if mine("tls") {
        TL_VALUE.with(|v| v.set(value ^ 1));
    }
    let mut stack = stack;
    if mine("stack") {
        stack[17] ^= 1;
    }
    if mine("rseq") {
        // SAFETY: sched_getcpu takes no arguments and has no preconditions.
        let cpu = u32::try_from(unsafe { sched_getcpu() }).unwrap_or(0);
        if let Err(e) = unregister_rseq(cpu) {
            say(&format!("FAIL {NAME}: cannot perturb rseq: {e}\n"));
            std::process::exit(2);
        }
    }
    if mine("name") {
        std::fs::write(format!("/proc/self/task/{tid}/comm"), "renamed")
            .map_err(|e| format!("renaming: {e}"))?;
    }

    let got = TL_VALUE.with(|v| v.get());
    if got != value {
        return Err(format!(
            "worker {index} thread_local value: expected {value:#x}, got {got:#x}"
        ));
    }
    let got_text = TL_TEXT.with(|t| t.borrow().clone());
    if got_text != text {
        return Err(format!(
            "worker {index} thread_local text: expected '{text}', got '{got_text}'"
        ));
    }
    let got_const = TL_CONST.with(|c| c.get());
    if got_const != 0x7e57_c0de {
        return Err(format!(
            "worker {index} const thread_local: expected 0x7e57c0de, got {got_const:#x}"
        ));
    }
    for (i, &b) in stack.iter().enumerate() {
        let want = pattern_byte(950 + index as u64, i);
        if b != want {
            return Err(format!(
                "worker {index} stack byte {i}: expected {want:#04x}, got {b:#04x}"
            ));
        }
    }
    let tid_now = gettid()?;
    if tid_now != tid {
        return Err(format!("worker {index} tid: expected {tid}, got {tid_now}"));
    }
    let comm_now = comm(tid_now)?;
    if comm_now != name {
        return Err(format!(
            "worker {index} name: expected '{name}', got '{comm_now}'"
        ));
    }
    check_cpu_reporting(&format!("worker {index}"), &allowed)
}

fn main() {
    let mut perturb: Option<String> = None;
    for arg in std::env::args().skip(1) {
        match arg.strip_prefix("--selftest-fail=") {
            Some(what) => perturb = Some(what.to_string()),
            None => {
                say(&format!("FAIL {NAME}: unknown argument '{arg}'\n"));
                std::process::exit(2);
            }
        }
    }
    const KNOWN: [&str; 9] = [
        "tls", "stack", "tid", "name", "vec", "map", "boxed", "main-tls", "rseq",
    ];
    if let Some(p) = &perturb {
        if !KNOWN.contains(&p.as_str()) {
            say(&format!(
                "FAIL {NAME}: unknown --selftest-fail target '{p}'\n"
            ));
            std::process::exit(2);
        }
    }
    let pid = std::process::id();
    let allowed = allowed_cpus();

    let mut vec: Vec<u64> = (0..VEC_LEN as u64).map(|i| mix64(i ^ 0xabc)).collect();
    let mut map: HashMap<u32, String> = (0..MAP_LEN)
        .map(|i| (i * 7, format!("value-{i}-{:x}", mix64(u64::from(i)))))
        .collect();
    let mut boxed: Box<[u8]> = (0..BOXED_LEN).map(|i| pattern_byte(990, i)).collect();
    TL_VALUE.with(|v| v.set(0x3a1a));

    let shared = Arc::new(Shared {
        go: Mutex::new(false),
        cond: Condvar::new(),
    });
    let (started_tx, started_rx) = mpsc::channel();
    let (token_tx, token_rx) = mpsc::channel();
    let mut token_rx = Some(token_rx);
    let mut handles = Vec::new();
    for index in 0..WORKERS {
        let shared = Arc::clone(&shared);
        let started = started_tx.clone();
        let rx = if index == WORKERS - 1 {
            token_rx.take()
        } else {
            None
        };
        let perturb = perturb.clone();
        let allowed = allowed.clone();
        let handle = thread::Builder::new()
            .name(format!("rworker-{index}"))
            .spawn(move || worker(index, shared, rx, started, perturb, allowed));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                say(&format!("FAIL {NAME}: spawning worker {index}: {e}\n"));
                std::process::exit(1);
            }
        }
    }
    let mut workers: Vec<Worker> = Vec::new();
    for _ in 0..WORKERS {
        match started_rx.recv() {
            Ok(w) => workers.push(w),
            Err(_) => {
                say(&format!("FAIL {NAME}: a worker died before READY\n"));
                std::process::exit(1);
            }
        }
    }
    // Every worker asleep in its wait before READY.
    for w in &workers {
        let stat_path = format!("/proc/self/task/{}/stat", w.tid);
        loop {
            let stat = std::fs::read_to_string(&stat_path).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|p| stat[p + 1..].trim_start().chars().next());
            if state == Some('S') {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    let fds_before: Vec<u32> = open_fds().into_iter().map(|(fd, _)| fd).collect();
    say(&format!("READY {NAME}\n"));
    wait_go();

    let p = perturb.as_deref();
    if p == Some("vec") {
        vec[VEC_LEN / 3] ^= 1;
    }
    if p == Some("map") {
        map.insert(7 * 4321, "changed".to_string());
    }
    if p == Some("boxed") {
        boxed[BOXED_LEN - 1] ^= 1;
    }
    if p == Some("main-tls") {
        TL_VALUE.with(|v| v.set(0x3a1b));
    }
    let mut tid_expect: Vec<u32> = workers.iter().map(|w| w.tid).collect();
    if p == Some("tid") {
        tid_expect[0] += 1;
    }

    let mut failures: Vec<String> = Vec::new();
    if std::process::id() != pid {
        failures.push(format!("pid: expected {pid}, got {}", std::process::id()));
    }
    for (w, &want) in workers.iter().zip(&tid_expect) {
        let stat = format!("/proc/self/task/{want}/comm");
        match std::fs::read_to_string(&stat) {
            Ok(c) if c.trim_end() == w.name => {}
            Ok(c) => failures.push(format!(
                "worker {} at tid {want}: expected name '{}', got '{}'",
                w.index,
                w.name,
                c.trim_end()
            )),
            Err(e) => failures.push(format!("worker {} at tid {want}: {stat}: {e}", w.index)),
        }
    }

    {
        let mut go = shared.go.lock().unwrap_or_else(|e| e.into_inner());
        *go = true;
        shared.cond.notify_all();
    }
    if token_tx.send(0x60).is_err() {
        failures.push("the channel worker is gone".to_string());
    }
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => failures.push(msg),
            Err(_) => failures.push("a worker panicked".to_string()),
        }
    }

    if let Some(i) = (0..VEC_LEN).find(|&i| vec[i] != mix64(i as u64 ^ 0xabc)) {
        failures.push(format!(
            "vec[{i}]: expected {:#x}, got {:#x}",
            mix64(i as u64 ^ 0xabc),
            vec[i]
        ));
    }
    if vec.len() != VEC_LEN {
        failures.push(format!("vec length: expected {VEC_LEN}, got {}", vec.len()));
    }
    if map.len() != MAP_LEN as usize {
        failures.push(format!("map length: expected {MAP_LEN}, got {}", map.len()));
    }
    for i in 0..MAP_LEN {
        let want = format!("value-{i}-{:x}", mix64(u64::from(i)));
        match map.get(&(i * 7)) {
            Some(v) if *v == want => {}
            other => {
                failures.push(format!("map[{}]: expected '{want}', got {other:?}", i * 7));
                break;
            }
        }
    }
    if let Some(i) = (0..BOXED_LEN).find(|&i| boxed[i] != pattern_byte(990, i)) {
        failures.push(format!(
            "boxed slice byte {i}: expected {:#04x}, got {:#04x}",
            pattern_byte(990, i),
            boxed[i]
        ));
    }
    let main_tl = TL_VALUE.with(|v| v.get());
    if main_tl != 0x3a1a {
        failures.push(format!(
            "main thread_local: expected 0x3a1a, got {main_tl:#x}"
        ));
    }
    if let Err(e) = check_cpu_reporting("main", &allowed) {
        failures.push(e);
    }
    let fds_after = open_fds();
    if fds_after
        .iter()
        .map(|(fd, _)| *fd)
        .ne(fds_before.iter().copied())
    {
        failures.push(format!(
            "open fds: expected {fds_before:?}, got {fds_after:?}"
        ));
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("TracerPid:")) {
            let tracer = line["TracerPid:".len()..].trim();
            if tracer != "0" {
                failures.push(format!("TracerPid: expected 0, got {tracer}"));
            }
        }
    }

    match failures.len() {
        0 => {
            say(&format!("PASS {NAME}\n"));
            std::process::exit(0);
        }
        1 => say(&format!("FAIL {NAME}: {}\n", failures[0])),
        n => say(&format!(
            "FAIL {NAME}: {} (and {} more)\n",
            failures[0],
            n - 1
        )),
    }
    std::process::exit(1);
}

//! Hibernation end to end on this machine: the daemon with the real engine
//! and a store file, a power supply whose cut kills the frozen tree (as a
//! real cut would), then `torpor boot` restores the app, which receives
//! `Resumed` on its old fd and checks its memory. And the boot step's
//! refusals: a corrupt image, a restore that fails every time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{start, temp_dir};
use torpor::daemon::store_engine::StoreEngine;
use torpor::power::{PowerDown, PowerError};

const TORPOR: &str = env!("CARGO_BIN_EXE_torpor");

/// A supply whose cut takes the frozen tree down with the "power" and
/// records that it happened.
#[derive(Debug, Clone, Default)]
struct CuttingSupply {
    victim: Arc<AtomicI32>,
    cuts: Arc<Mutex<u32>>,
}

impl PowerDown for CuttingSupply {
    fn wake_available(&self) -> bool {
        false
    }
    fn prepare(&mut self) -> Result<(), PowerError> {
        Ok(())
    }
    fn arm_wake(&mut self, _: u32) -> Result<u64, PowerError> {
        Ok(0)
    }
    fn disarm_wake(&mut self) -> Result<(), PowerError> {
        Ok(())
    }
    fn cut(&mut self) -> Result<u64, PowerError> {
        *self.cuts.lock().unwrap() += 1;
        let pid = self.victim.load(Ordering::SeqCst);
        // SAFETY: kill has no memory effects.
        let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(killed, 0, "the frozen app is gone before the cut");
        Ok(0)
    }
    fn release(&mut self) {}
}

fn sleepy_counter(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sleepy-counter.c");
    let bin = dir.join("sleepy-counter");
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// A command whose process inherits no descriptor beyond 0, 1 and 2 (the
/// test runner may leave some open without close-on-exec).
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    // SAFETY: between fork and exec only close_range, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

fn spawn_app(bin: &Path, socket: &Path, log: &Path, extra: &[&str]) -> Child {
    let f = std::fs::File::create(log).unwrap();
    clean(bin)
        .arg(socket)
        .args(["5", "10"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap()
}

fn wait_for(log: &Path, what: &str, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) || text.contains("FAIL") {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no {what:?} in {}:\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn torpor(args: &[&str]) -> Output {
    clean(TORPOR).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A configuration file with every default.
fn empty_config(dir: &Path) -> PathBuf {
    let p = dir.join("defaults.toml");
    std::fs::write(&p, "").unwrap();
    p
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn checkpoint_then_hibernate_then_boot_resumes_the_app_on_its_fd() {
    hibernate_then_boot("hibernate", "");
}

/// The same with `[restore] lazy = true`: the app runs, hears it resumed
/// and checks its memory while its pages arrive.
#[test]
fn a_lazy_boot_resumes_the_app_on_its_fd() {
    hibernate_then_boot("hibernate-lazy", "[restore]\nlazy = true\n");
}

fn hibernate_then_boot(name: &str, config: &str) {
    let dir = temp_dir(name);
    let store = dir.join("store.img");
    let bin = sleepy_counter(&dir);
    let supply = CuttingSupply::default();
    let daemon = start(
        "hibernate-daemon",
        vec![],
        StoreEngine::new(store.clone()),
        supply.clone(),
    );
    let log = dir.join("app.log");
    let mut app = spawn_app(&bin, &daemon.socket, &log, &["checkpoint"]);
    let pid = i32::try_from(app.id()).unwrap();
    supply.victim.store(pid, Ordering::SeqCst);

    // Checkpoint: the tree keeps running and the image verifies.
    let t = wait_for(&log, "hibernating at counter 5", 20);
    assert!(t.contains("checkpointed: generation 1,"), "{t}");
    // Hibernate: the supply cut the power (killed the frozen tree). The app
    // is reaped only after the cut: until then the daemon thread, its tracer
    // in this same process, is waiting for its stops, and a wait from this
    // thread could take one of them.
    let start = Instant::now();
    while *supply.cuts.lock().unwrap() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the power was never cut"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = app.wait().unwrap();
    assert_eq!(*supply.cuts.lock().unwrap(), 1);
    assert!(
        !status.success(),
        "the app ran to the end instead of being cut:\n{t}"
    );
    let before = std::fs::read_to_string(&log).unwrap();
    assert!(!before.contains("resumed"), "{before}");
    assert!(
        !before.contains("counter 6"),
        "the app ran on after its image was taken:\n{before}"
    );
    let st = text(&torpor(&[
        "store",
        "status",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(
        st.contains("valid generation 2") && st.contains("verified yes"),
        "{st}"
    );

    // Power is back: the boot step restores the app and reconnects it.
    let conf = empty_config(&dir);
    std::fs::write(&conf, config).unwrap();
    let boot = torpor(&[
        "boot",
        "--config",
        conf.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--socket",
        daemon.socket.to_str().unwrap(),
    ]);
    assert!(boot.status.success(), "{}", text(&boot));
    assert!(
        text(&boot).contains("restoring image generation 2 from slot B (attempt 1 of 3)"),
        "{}",
        text(&boot)
    );
    assert_eq!(
        text(&boot).contains("info: lazily: "),
        !config.is_empty(),
        "{}",
        text(&boot)
    );
    let t = wait_for(&log, "PASS sleepy-counter", 20);
    let fd_line = t.lines().find(|l| l.starts_with("connected to")).unwrap();
    let fd = fd_line.rsplit(' ').next().unwrap();
    assert!(t.contains(&format!("resumed on fd {fd}: slept ")), "{t}");
    assert!(t.contains("image generation 2\n"), "{t}");
    assert!(
        t.contains("memory verified: 1048576 bytes and counter 5"),
        "{t}"
    );
    assert!(
        t.contains("counter 6\n") && t.contains("counter 10\n"),
        "{t}"
    );
    assert!(!t.contains("FAIL"), "{t}");
    let st = text(&torpor(&[
        "store",
        "status",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(st.contains("slot B: consumed generation 2"), "{st}");
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(daemon);
}

#[test]
fn hibernate_refused_by_a_missing_store_leaves_the_app_running() {
    let dir = temp_dir("hibernate-refused");
    // A directory is no store: the commit cannot even start.
    let store = dir.join("not-a-store");
    std::fs::create_dir(&store).unwrap();
    let bin = sleepy_counter(&dir);
    let supply = CuttingSupply::default();
    let daemon = start(
        "hibernate-refused-daemon",
        vec![],
        StoreEngine::new(store),
        supply.clone(),
    );
    let log = dir.join("app.log");
    let mut app = spawn_app(&bin, &daemon.socket, &log, &[]);
    let t = wait_for(&log, "PASS sleepy-counter", 20);
    assert!(
        t.contains("daemon error (kind 8): pid ") && t.contains("not hibernated"),
        "{t}"
    );
    assert!(
        t.contains("image store failed: cannot open store") && t.contains("Is a directory"),
        "{t}"
    );
    assert_eq!(*supply.cuts.lock().unwrap(), 0);
    // It ran on after the refusal (it got the error, so it was not frozen).
    assert!(
        t.contains("hibernate refused; running on\ncounter 6\n"),
        "{t}"
    );
    assert!(
        t.contains("counter 10\nPASS sleepy-counter (not hibernated)"),
        "{t}"
    );
    assert_eq!(app.wait().unwrap().code(), Some(0));
    drop(daemon);
}

/// A long-running process dumped into `store`, left running.
fn dumped_sleeper(store: &Path) -> Child {
    let child = clean("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let o = torpor(&[
        "dump",
        "--pid",
        &child.id().to_string(),
        "--store",
        store.to_str().unwrap(),
        "--leave-running",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    child
}

fn boot_with(config: &Path, store: &Path) -> String {
    let o = torpor(&[
        "boot",
        "--config",
        config.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

#[test]
fn a_corrupt_image_is_a_cold_start_and_is_never_tried_again() {
    let dir = temp_dir("boot-corrupt");
    let store = dir.join("store.img");
    let mut child = dumped_sleeper(&store);
    child.kill().unwrap();
    child.wait().unwrap();
    // Flip bytes in the middle of slot A's image area.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&store)
            .unwrap();
        let mut b = [0u8; 16];
        f.read_exact_at(&mut b, 4096 + 200).unwrap();
        for x in &mut b {
            *x ^= 0x5a;
        }
        f.write_all_at(&b, 4096 + 200).unwrap();
    }
    let config = dir.join("torpor.toml");
    std::fs::write(&config, "[restore]\nattempts = 2\n").unwrap();
    let out = boot_with(&config, &store);
    assert!(
        out.contains("cold start: image generation 1 in slot A is corrupt: "),
        "{out}"
    );
    assert!(out.contains("marked consumed"), "{out}");
    let st = text(&torpor(&[
        "store",
        "status",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(st.contains("slot A: consumed generation 1"), "{st}");
    let out = boot_with(&config, &store);
    assert!(
        out.contains("cold start: image generation 1 in slot A was already restored"),
        "{out}"
    );
}

/// Where slot A's page records lie in `store`: (offset in the store file
/// of the record's payload, payload length).
fn slot_a_page_records(store: &Path) -> Vec<(u64, u64)> {
    use torpor::store::{Slot, Store};
    let st = Store::open_read_only(store).unwrap();
    let (_, reader) = st.image(Slot::A).unwrap();
    let rd = torpor::image::ImageReader::new(std::io::BufReader::new(reader))
        .unwrap()
        .indexing_pages();
    let (_, index) = torpor::engine::image_io::read_state_indexed(rd).unwrap();
    // The image starts a sector pair (4096 bytes) into the slot; a frame is
    // its length (4 bytes) and kind (1) before the payload.
    index
        .iter()
        .map(|r| (4096 + r.offset + 5, u64::from(r.len)))
        .collect()
}

/// Boot reads the image once: a page record damaged on the card is found
/// as the restore reads it, before any task of the tree has run (eager), or
/// while the tree runs and before it can touch a page of it (lazy). Either
/// way nothing of the tree is left, the boot cold-starts naming the record,
/// and the image is never tried again.
#[test]
fn a_damaged_page_record_is_a_cold_start_eager_or_lazy() {
    for (how, config) in [("eager", ""), ("lazy", "lazy = true\n")] {
        let dir = temp_dir(&format!("boot-damaged-pages-{how}"));
        let store = dir.join("store.img");
        let mut child = dumped_sleeper(&store);
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        let records = slot_a_page_records(&store);
        // The last: the stack, a lazy mapping, fetched last.
        let &(at, len) = records.last().expect("the sleeper has pages");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&store)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at + len / 2).unwrap();
            b[0] ^= 0x01;
            f.write_all_at(&b, at + len / 2).unwrap();
        }
        let cfg = dir.join("torpor.toml");
        std::fs::write(&cfg, format!("[restore]\nattempts = 2\n{config}")).unwrap();
        let out = boot_with(&cfg, &store);
        assert!(
            out.contains(&format!(
                "cold start: image generation 1 in slot A is corrupt: {}",
                if how == "lazy" { "lazy pages: " } else { "" }
            )),
            "{how}: {out}"
        );
        assert!(
            out.contains(&format!(
                "CRC mismatch in the pages record at offset {}",
                at - 4096 - 5
            )),
            "{how}: {out}"
        );
        assert!(out.contains("; marked consumed"), "{how}: {out}");
        assert!(!out.contains("restored as pid"), "{how}: {out}");
        // The pid the tree had is free again: no task of it is left.
        let end = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{how}: pid {pid} is still there"
        );
        let st = text(&torpor(&[
            "store",
            "status",
            "--store",
            store.to_str().unwrap(),
        ]));
        assert!(st.contains("slot A: consumed generation 1"), "{how}: {st}");
    }
}

#[test]
fn a_restore_failing_every_time_gives_up_after_the_configured_attempts() {
    let dir = temp_dir("boot-attempts");
    let store = dir.join("store.img");
    // Left running: its pid stays in use, so every restore fails.
    let mut child = dumped_sleeper(&store);
    let pid = child.id();
    let config = dir.join("torpor.toml");
    std::fs::write(&config, "[restore]\nattempts = 2\n").unwrap();
    let out = boot_with(&config, &store);
    assert!(
        out.contains("restoring image generation 1 from slot A (attempt 1 of 2)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "failed (attempt 1 of 2): validate: pid {pid} (of process {pid}) is in use"
        )),
        "{out}"
    );
    assert!(!out.contains("giving up"), "{out}");
    let st = text(&torpor(&[
        "store",
        "status",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(
        st.contains("slot A: restoring generation 1") && st.contains("attempts 1"),
        "{st}"
    );
    let out = boot_with(&config, &store);
    assert!(
        out.contains("failed (attempt 2 of 2)") && out.contains("giving up, marked consumed"),
        "{out}"
    );
    let st = text(&torpor(&[
        "store",
        "status",
        "--store",
        store.to_str().unwrap(),
    ]));
    assert!(
        st.contains("slot A: consumed generation 1") && st.contains("attempts 2"),
        "{st}"
    );
    let out = boot_with(&config, &store);
    assert!(
        out.contains("cold start: image generation 1 in slot A was already restored"),
        "{out}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_image_of_a_crashed_restore_counts_as_an_attempt() {
    let dir = temp_dir("boot-crashed");
    let store = dir.join("store.img");
    let mut child = dumped_sleeper(&store);
    child.kill().unwrap();
    child.wait().unwrap();
    // Two boots that died during the restore (the slot says restoring, attempts 2).
    let mut s = torpor::store::Store::open(&store).unwrap();
    s.begin_restore(torpor::store::Slot::A).unwrap();
    s.begin_restore(torpor::store::Slot::A).unwrap();
    drop(s);
    let config = dir.join("torpor.toml");
    std::fs::write(&config, "[restore]\nattempts = 2\n").unwrap();
    let out = boot_with(&config, &store);
    assert!(
        out.contains("cold start: image generation 1 in slot A failed to restore 2 time(s) (restore.attempts = 2); giving up, marked consumed"),
        "{out}"
    );
}

#[test]
fn run_execs_the_command_when_no_image_is_its_own() {
    let dir = temp_dir("run-cold");
    let store = dir.join("store.img");
    let pidfile = dir.join("app.pid");
    let o = torpor(&[
        "run",
        "--name",
        "echo",
        "--config",
        empty_config(&dir).to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--pidfile",
        pidfile.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo started as $$",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("started as {pid}")
    );
    assert!(text(&o).contains("cold start: no store at"), "{}", text(&o));
}

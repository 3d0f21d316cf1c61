//! The board's managed applications hibernating together, through the
//! daemon with the real engine and a store file: applications started by
//! `torpor run --name`, one `Hibernate` (from an application, or
//! `torpor hibernate --all` from a shell) dumps every tree into one image,
//! the power cut kills them all (as a real cut would), and `torpor boot`
//! brings each back, which its own `torpor run` line then adopts. A tree
//! torpor refuses keeps the power on and every application runs on.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{netlink_waiting, start_with, temp_dir};
use torpor::config::AppConfig;
use torpor::daemon::store_engine::StoreEngine;
use torpor::power::{PowerDown, PowerError};

const TORPOR: &str = env!("CARGO_BIN_EXE_torpor");

/// A supply whose cut kills every process of the frozen trees, as the
/// power going down would, and counts the cuts.
#[derive(Debug, Clone, Default)]
struct CuttingSupply {
    victims: Arc<Mutex<Vec<i32>>>,
    cuts: Arc<Mutex<u32>>,
}

impl CuttingSupply {
    fn cuts(&self) -> u32 {
        *self.cuts.lock().unwrap()
    }
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
        for &pid in self.victims.lock().unwrap().iter() {
            // SAFETY: kill has no memory effects.
            let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
            assert_eq!(killed, 0, "process {pid} is gone before the cut");
        }
        Ok(0)
    }
    fn release(&mut self) {}
}

/// Compiles one C source of the repository with the test apps' header.
fn compile(dir: &Path, src: &str, name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = dir.join(name);
    let out = Command::new("cc")
        .args(["-O2", "-Wall", "-pthread", "-I"])
        .arg(root.join("tests/apps"))
        .arg("-o")
        .arg(&bin)
        .arg(root.join(src))
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "cc {src} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// A command whose process inherits no descriptor beyond 0, 1 and 2.
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

/// Where the tests' applications find the store and the daemon.
struct Board {
    dir: PathBuf,
    config: PathBuf,
    store: PathBuf,
    socket: PathBuf,
}

impl Board {
    fn places(&self) -> Vec<String> {
        [
            "--config",
            self.config.to_str().unwrap(),
            "--store",
            self.store.to_str().unwrap(),
            "--socket",
            self.socket.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// The application's work directory: its log, its `torpor run`
    /// output, its PID file.
    fn work(&self, name: &str) -> PathBuf {
        self.dir.join("apps").join(name)
    }

    /// `torpor run --name NAME -- CMD...` in a fresh work directory, the
    /// command's output in `app.log` (opened with O_TRUNC, as the test
    /// apps' protocol wants), torpor's own lines in `run.err`.
    fn run(&self, name: &str, command: &[&str]) -> Child {
        let w = self.work(name);
        let _ = std::fs::remove_dir_all(&w);
        std::fs::create_dir_all(&w).unwrap();
        clean(TORPOR)
            .current_dir(&w)
            .args(["run", "--name", name])
            .args(self.places())
            .arg("--pidfile")
            .arg(w.join("pid"))
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(w.join("app.log")).unwrap())
            .stderr(std::fs::File::create(w.join("run.err")).unwrap())
            .spawn()
            .unwrap()
    }

    /// The same `torpor run` line at the next boot: it adopts the tree
    /// `torpor boot` restored and exits.
    fn run_again(&self, name: &str, command: &[&str]) -> Output {
        let w = self.work(name);
        clean(TORPOR)
            .current_dir(&w)
            .args(["run", "--name", name])
            .args(self.places())
            .arg("--pidfile")
            .arg(w.join("pid"))
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.work(name).join("app.log")).unwrap_or_default()
    }

    fn wait_for(&self, name: &str, what: &str, secs: u64) -> String {
        let start = Instant::now();
        loop {
            let text = self.log(name);
            if text.contains(what) {
                return text;
            }
            assert!(
                !text.contains("FAIL") && start.elapsed() < Duration::from_secs(secs),
                "no {what:?} in the log of {name}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn torpor(&self, args: &[&str]) -> Output {
        clean(TORPOR).args(args).output().unwrap()
    }

    /// `torpor boot`, as the init hook runs it at power-on.
    fn boot(&self) -> Output {
        clean(TORPOR)
            .arg("boot")
            .args(self.places())
            .output()
            .unwrap()
    }

    fn hibernate(&self, how: &str) -> Output {
        self.torpor(&[
            "hibernate",
            how,
            "--socket",
            self.socket.to_str().unwrap(),
            "--config",
            self.config.to_str().unwrap(),
        ])
    }

    /// Lets the application's verification run and waits for its PASS.
    fn go(&self, name: &str, app: &str) -> String {
        std::fs::write(self.work(name).join("go"), "").unwrap();
        self.wait_for(name, &format!("PASS {app}\n"), 30)
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pid_of(c: &Child) -> i32 {
    i32::try_from(c.id()).unwrap()
}

/// The last `count N` a counter printed.
fn last_count(log: &str) -> u64 {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("count ")?.parse().ok())
        .unwrap_or_else(|| panic!("no count yet:\n{log}"))
}

/// Waits until `pid` no longer exists (reaping it if it is a child of
/// this process).
fn wait_gone(pid: i32) {
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        // SAFETY: waitpid has no memory effects beyond the status word.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pid {pid} outlived the power cut"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn children(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Waits for the supply's first cut.
fn wait_cut(supply: &CuttingSupply) {
    let start = Instant::now();
    while supply.cuts() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the power was never cut"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A board whose config lists `ghost` (never started) as `[[app]]`.
fn board(tag: &str, dir: &Path, socket: &Path) -> Board {
    let config = dir.join("torpor.toml");
    std::fs::write(&config, "[[app]]\nname = \"ghost\"\n").unwrap();
    Board {
        dir: dir.to_path_buf(),
        config,
        store: dir.join(format!("{tag}-store.img")),
        socket: socket.to_path_buf(),
    }
}

#[test]
fn one_hibernate_takes_every_managed_app_and_boot_brings_each_back() {
    let dir = temp_dir("managed");
    let counter = compile(&dir, "tests/apps/counter.c", "counter");
    let sleepy = compile(&dir, "examples/sleepy-counter.c", "sleepy-counter");
    let store = dir.join("managed-store.img");
    let supply = CuttingSupply::default();
    let ghost = AppConfig {
        name: "ghost".into(),
        pidfile: None,
    };
    let daemon = start_with(
        "managed-daemon",
        vec![],
        StoreEngine::new(store),
        supply.clone(),
        |d, socket| d.with_apps(vec![ghost], torpor::apps::dir_for(socket)),
    );
    let b = board("managed", &dir, &daemon.socket);
    let registry = torpor::apps::dir_for(&daemon.socket);

    // Two counters, the second under a shell that waits for it.
    let c = counter.to_str().unwrap();
    let wrapped = format!("{c} 100 & echo $! >child.pid; wait");
    let mut a = b.run("counter-a", &[c, "100"]);
    let mut shell = b.run("counter-b", &["sh", "-c", &wrapped]);
    let (pa, pb) = (pid_of(&a), pid_of(&shell));
    b.wait_for("counter-a", "count 2\n", 20);
    b.wait_for("counter-b", "count 2\n", 20);
    let child: i32 = std::fs::read_to_string(b.work("counter-b").join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(children(pb), child.to_string());
    // The child is no application of its own, whatever the registry says.
    torpor::apps::record(&registry, "inner", child, torpor::apps::Origin::Started).unwrap();

    let st = b.hibernate("--status");
    assert!(st.status.success(), "{}", text(&st));
    assert_eq!(
        String::from_utf8_lossy(&st.stdout),
        format!(
            "daemon {} (protocol {})\n\
             store: empty, generation 0, 0 bytes\n\
             wake alarm: not configured\n\
             app ghost: left out: not running (no pid in {reg}/ghost)\n\
             app counter-a: pid {pa}, included\n\
             app counter-b: pid {pb}, included\n\
             app inner: left out: pid {child} is inside the tree of counter-b, which includes it\n",
            torpor::VERSION,
            torpor::protocol::VERSION,
            reg = registry.display()
        )
    );

    // The third application asks; every tree goes into one image.
    let sock = b.socket.to_str().unwrap().to_string();
    let s = sleepy.to_str().unwrap();
    let mut requester = b.run("sleepy", &[s, &sock, "5", "10"]);
    let ps = pid_of(&requester);
    supply.victims.lock().unwrap().extend([pa, pb, child, ps]);
    // Reaped only after the cut: until then the daemon thread, their
    // tracer in this process, waits for their stops.
    wait_cut(&supply);
    for c in [&mut a, &mut shell, &mut requester] {
        assert!(!c.wait().unwrap().success());
    }
    wait_gone(child);
    assert_eq!(supply.cuts(), 1);
    let before_a = last_count(&b.log("counter-a"));
    let before_b = last_count(&b.log("counter-b"));
    let slept = b.log("sleepy");
    assert!(
        slept.ends_with("counter 5\nhibernating at counter 5\n"),
        "{slept}"
    );
    // The registry is on a tmpfs: the power took it.
    std::fs::remove_dir_all(&registry).unwrap();

    // Power is back: every tree at once, each noted for its own line.
    let boot = b.boot();
    let out = text(&boot);
    assert!(boot.status.success(), "{out}");
    for want in [
        "restoring image generation 1 from slot A (attempt 1 of 3)".to_string(),
        format!("counter-a: restored as pid {pa}"),
        format!("counter-b: restored as pid {pb}"),
        format!("sleepy: restored as pid {ps}"),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    for (name, pid, cmd) in [
        ("counter-a", pa, vec![c, "100"]),
        ("counter-b", pb, vec!["sh", "-c", &wrapped]),
        ("sleepy", ps, vec![s, &sock, "5", "10"]),
    ] {
        let o = b.run_again(name, &cmd);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains(&format!("{name}: restored at boot as pid {pid}\n")),
            "{}",
            text(&o)
        );
        let noted = std::fs::read_to_string(b.work(name).join("pid")).unwrap();
        assert_eq!(noted.trim(), pid.to_string());
    }

    // The requester got Resumed on its old fd and counts on from 6.
    let t = b.wait_for("sleepy", "PASS sleepy-counter\n", 30);
    let fd = t
        .lines()
        .find_map(|l| l.strip_prefix("connected to ")?.rsplit(' ').next())
        .unwrap()
        .to_string();
    let (_, after) = t
        .split_once(&format!(
            "hibernating at counter 5\nresumed on fd {fd}: slept "
        ))
        .unwrap_or_else(|| panic!("no Resumed on fd {fd}:\n{t}"));
    let (ms, after) = after.split_once(" ms").unwrap();
    assert!(ms.parse::<u64>().is_ok(), "{t}");
    assert!(
        after.starts_with(
            " (wall clock), image generation 1\n\
             memory verified: 1048576 bytes and counter 5\ncounter 6\n"
        ),
        "{t}"
    );
    // The counters go on from where they stood, the child under its shell.
    let t = b.wait_for("counter-a", &format!("count {}\n", before_a + 1), 20);
    assert!(
        t.contains(&format!("count {before_a}\ncount {}\n", before_a + 1)),
        "{t}"
    );
    let t = b.wait_for("counter-b", &format!("count {}\n", before_b + 1), 20);
    assert!(
        t.contains(&format!("count {before_b}\ncount {}\n", before_b + 1)),
        "{t}"
    );
    assert_eq!(children(pb), child.to_string());
    // Each checks its own log (every count once, in order) and memory.
    b.go("counter-a", "counter");
    b.go("counter-b", "counter");
    drop(daemon);
}

#[test]
fn a_refused_tree_names_its_app_and_hibernate_all_then_takes_the_others() {
    let dir = temp_dir("managed-all");
    let counter = compile(&dir, "tests/apps/counter.c", "counter");
    let badfd = compile(&dir, "tests/apps/badfd.c", "badfd");
    let store = dir.join("all-store.img");
    let supply = CuttingSupply::default();
    let daemon = start_with(
        "managed-all-daemon",
        vec![],
        StoreEngine::new(store),
        supply.clone(),
        |d, socket| d.with_apps(vec![], torpor::apps::dir_for(socket)),
    );
    let b = board("all", &dir, &daemon.socket);
    let c = counter.to_str().unwrap();
    let mut a = b.run("counter", &[c, "100"]);
    let mut netlink = b.run("netlink", &[badfd.to_str().unwrap()]);
    let (pa, pn) = (pid_of(&a), pid_of(&netlink));
    b.wait_for("counter", "count 2\n", 20);
    b.wait_for("netlink", "READY badfd\n", 20);

    // The netlink socket with a reply waiting is refused: no cut, the
    // error names the app.
    let o = b.hibernate("--all");
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let prefix = format!(
        "torpor: error: DumpFailed: no app hibernated: checkpoint failed: app netlink (pid {pn}): files {pn}: fd 7 of process {pn} (socket:["
    );
    assert!(err.starts_with(&prefix), "{err}");
    let waiting = netlink_waiting(pn, 7);
    assert!(
        err.ends_with(&format!(
            "]): a netlink socket: {waiting} bytes of messages wait unread in its receive queue, which torpor cannot queue again\n"
        )),
        "{err}"
    );
    assert_eq!(supply.cuts(), 0);
    // Both run on: the counter counts, badfd finds fd 7 and its memory untouched.
    let now = last_count(&b.log("counter"));
    b.wait_for("counter", &format!("count {}\n", now + 2), 20);
    b.go("netlink", "badfd");
    assert_eq!(netlink.wait().unwrap().code(), Some(0));

    // Without it, `--all` hibernates the rest; the simulated supply comes
    // back at once, so the shell gets Resumed.
    supply.victims.lock().unwrap().push(pa);
    let o = b.hibernate("--all");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "resumed after 0.0 s (wall clock), image generation 1\n"
    );
    assert_eq!(supply.cuts(), 1);
    assert!(!a.wait().unwrap().success());
    let before = last_count(&b.log("counter"));
    let boot = b.boot();
    let out = text(&boot);
    assert!(boot.status.success(), "{out}");
    assert!(
        out.contains(&format!("counter: restored as pid {pa}")),
        "{out}"
    );
    assert!(!out.contains("netlink"), "{out}");
    let t = b.wait_for("counter", &format!("count {}\n", before + 1), 20);
    assert!(
        t.contains(&format!("count {before}\ncount {}\n", before + 1)),
        "{t}"
    );
    b.go("counter", "counter");
    drop(daemon);
}

#[test]
fn a_tree_that_cannot_come_back_cold_starts_while_the_others_run_on() {
    let dir = temp_dir("managed-apart");
    let counter = compile(&dir, "tests/apps/counter.c", "counter");
    // The second counter's own copy, changed after the hibernation.
    let other = dir.join("counter-copy");
    std::fs::copy(&counter, &other).unwrap();
    let store = dir.join("apart-store.img");
    let supply = CuttingSupply::default();
    let daemon = start_with(
        "managed-apart-daemon",
        vec![],
        StoreEngine::new(store),
        supply.clone(),
        |d, socket| d.with_apps(vec![], torpor::apps::dir_for(socket)),
    );
    let b = board("apart", &dir, &daemon.socket);
    let registry = torpor::apps::dir_for(&daemon.socket);
    let (c, o) = (counter.to_str().unwrap(), other.to_str().unwrap());
    let mut a = b.run("counter-a", &[c, "100"]);
    let mut z = b.run("counter-b", &[o, "100"]);
    let (pa, pz) = (pid_of(&a), pid_of(&z));
    b.wait_for("counter-a", "count 2\n", 20);
    b.wait_for("counter-b", "count 2\n", 20);
    supply.victims.lock().unwrap().extend([pa, pz]);
    let h = b.hibernate("--all");
    assert!(h.status.success(), "{}", text(&h));
    assert!(!a.wait().unwrap().success());
    assert!(!z.wait().unwrap().success());
    let before = last_count(&b.log("counter-a"));
    std::fs::remove_dir_all(&registry).unwrap();
    let identity = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        format!(
            "({}, {}, {}, {}, {})",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        )
    };
    let then = identity(&other);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&other)
            .unwrap();
        f.write_all(b"changed after the hibernation").unwrap();
    }
    let changed = format!(
        "validate: mapped file {o} changed since the dump (dev, inode, size, mtime {}, image has {then})",
        identity(&other)
    );

    let boot = b.boot();
    let out = text(&boot);
    assert!(boot.status.success(), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |x| x.1))
        .collect();
    let whole = lines
        .iter()
        .find(|l| l.contains("with every tree at once failed"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        *whole,
        format!(
            "warning: restoring image generation 1 with every tree at once failed: {changed}; restoring each tree on its own"
        )
    );
    assert!(
        lines.contains(&format!("info: counter-a: restored as pid {pa}").as_str()),
        "{out}"
    );
    assert!(
        lines.contains(
            &format!("warning: counter-b: not restored, it starts afresh: {changed}").as_str()
        ),
        "{out}"
    );
    assert!(!out.contains(&format!("restored as pid {pz}")), "{out}");
    assert!(!Path::new(&format!("/proc/{pz}")).exists(), "{out}");
    let st = text(&b.torpor(&["store", "status", "--store", b.store.to_str().unwrap()]));
    assert!(st.contains("slot A: consumed generation 1"), "{st}");

    // Its own line adopts counter-a; counter-b's starts it afresh.
    let adopt = b.run_again("counter-a", &[c, "100"]);
    assert!(
        text(&adopt).contains(&format!("counter-a: restored at boot as pid {pa}\n")),
        "{}",
        text(&adopt)
    );
    let mut fresh = b.run("counter-b", &[o, "100"]);
    b.wait_for("counter-b", "READY counter\ncount 0\n", 20);
    let err = std::fs::read_to_string(b.work("counter-b").join("run.err")).unwrap();
    assert!(
        err.contains("cold start: image generation 1 in slot A was already restored"),
        "{err}"
    );
    assert_ne!(pid_of(&fresh), pz);
    let t = b.wait_for("counter-a", &format!("count {}\n", before + 1), 20);
    assert!(
        t.contains(&format!("count {before}\ncount {}\n", before + 1)),
        "{t}"
    );
    b.go("counter-a", "counter");
    b.go("counter-b", "counter");
    assert_eq!(fresh.wait().unwrap().code(), Some(0));
    drop(daemon);
}

/// A tree whose restore fails once its tasks exist (here a file limit
/// above what `torpor boot` may raise) is killed whole, pid by pid, and
/// cold-started by its own line, while the tree restored beside it runs on.
#[test]
fn a_tree_failing_after_its_tasks_exist_is_killed_and_the_others_run_on() {
    use std::os::unix::process::CommandExt;
    let dir = temp_dir("managed-late");
    let counter = compile(&dir, "tests/apps/counter.c", "counter");
    let store = dir.join("late-store.img");
    let supply = CuttingSupply::default();
    let daemon = start_with(
        "managed-late-daemon",
        vec![],
        StoreEngine::new(store),
        supply.clone(),
        |d, socket| d.with_apps(vec![], torpor::apps::dir_for(socket)),
    );
    let b = board("late", &dir, &daemon.socket);
    let registry = torpor::apps::dir_for(&daemon.socket);
    let c = counter.to_str().unwrap();
    // counter-a's file limit is one the boot may keep; counter-b's hard
    // limit is above the boot's own.
    let a_line = ["/bin/sh", "-c", "ulimit -n 1024 && exec \"$0\" 100", c];
    let b_line = ["/bin/sh", "-c", "ulimit -n 4096 && exec \"$0\" 100", c];
    let mut a = b.run("counter-a", &a_line);
    let mut z = b.run("counter-b", &b_line);
    let (pa, pz) = (pid_of(&a), pid_of(&z));
    b.wait_for("counter-a", "count 2\n", 20);
    b.wait_for("counter-b", "count 2\n", 20);
    supply.victims.lock().unwrap().extend([pa, pz]);
    let h = b.hibernate("--all");
    assert!(h.status.success(), "{}", text(&h));
    assert!(!a.wait().unwrap().success());
    assert!(!z.wait().unwrap().success());
    let before = last_count(&b.log("counter-a"));
    std::fs::remove_dir_all(&registry).unwrap();

    let mut cmd = clean(TORPOR);
    cmd.arg("boot").args(b.places());
    // SAFETY: setrlimit between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let rl = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 2048,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const rl);
            Ok(())
        });
    }
    let boot = cmd.output().unwrap();
    let out = text(&boot);
    assert!(boot.status.success(), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |x| x.1))
        .collect();
    let failed = format!("create tasks: process {pz}: setrlimit 7: Operation not permitted");
    let whole = lines
        .iter()
        .find(|l| l.contains("with every tree at once failed"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        whole.starts_with("warning: restoring image generation 1 with every tree at once failed: create tasks: process "),
        "{out}"
    );
    assert!(whole.ends_with("; restoring each tree on its own"), "{out}");
    assert!(
        lines.contains(&format!("info: counter-a: restored as pid {pa}").as_str()),
        "{out}"
    );
    let lost = lines
        .iter()
        .find(|l| l.starts_with("warning: counter-b: not restored, it starts afresh: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(lost.contains(&failed), "{out}");
    assert!(!out.contains(&format!("restored as pid {pz}")), "{out}");
    // Created, then killed: nothing of counter-b's tree is left.
    assert!(
        !Path::new(&format!("/proc/{pz}")).exists(),
        "{out}{:?}",
        std::fs::read_to_string(format!("/proc/{pz}/stat"))
    );

    let adopt = b.run_again("counter-a", &a_line);
    assert!(
        text(&adopt).contains(&format!("counter-a: restored at boot as pid {pa}\n")),
        "{}",
        text(&adopt)
    );
    let mut fresh = b.run("counter-b", &b_line);
    b.wait_for("counter-b", "READY counter\ncount 0\n", 20);
    assert_ne!(pid_of(&fresh), pz);
    let t = b.wait_for("counter-a", &format!("count {}\n", before + 1), 20);
    assert!(
        t.contains(&format!("count {before}\ncount {}\n", before + 1)),
        "{t}"
    );
    b.go("counter-a", "counter");
    b.go("counter-b", "counter");
    assert_eq!(fresh.wait().unwrap().code(), Some(0));
    drop(daemon);
}

//! `torpor daemon` and `torpor hibernate` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_torpor");

fn temp_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/torpor-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn torpor(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_config_prints_every_setting() {
    let dir = temp_dir("check");
    let file = dir.join("torpor.toml");
    std::fs::write(
        &file,
        "[socket]\nmode = \"0660\"\ngroup = \"root\"\n[power]\nline = 17\nactive_low = true\n[rtc]\ndevice = \"none\"\n[access]\nallow_users = [\"root\", 1000]\n",
    )
    .unwrap();
    let out = torpor(&[
        "daemon",
        "--check-config",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert_eq!(text(&out.stderr), "");
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: configuration is valid
socket.path = /run/torpor.sock
socket.owner = 0
socket.group = root
socket.mode = 0660
store.device = /dev/mmcblk0p3
power.chip = gpiochip0
power.line = 17
power.active_low = true
power.hold_ms = 100
power.timeout_ms = 3000
rtc.device = none
restore.attempts = 3
restore.tty = /dev/console
access.allow_users = [root, 1000]
log.target = stderr
log.socket = /dev/log
",
            file.display()
        )
    );
    assert_eq!(out.status.code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_config_stops_the_daemon_with_the_key_and_file() {
    let dir = temp_dir("badconf");
    let file = dir.join("torpor.toml");
    for (body, why) in [
        (
            "[power]\nline = 99\n",
            "`power.line` = 99: must be between 0 and 63",
        ),
        (
            "[socket]\nmode = \"0999\"\n",
            "`socket.mode` = \"0999\": not an octal mode",
        ),
        (
            "[restore]\nattempts = 0\n",
            "`restore.attempts` = 0: must be at least 1",
        ),
        ("[power]\ngpio = 3\n", "unknown key `power.gpio`"),
        (
            "[log]\ntarget = \"file\"\n",
            "`log.target` = \"file\": must be \"stderr\" or \"syslog\"",
        ),
        ("[log]\nsocket = \"dev/log\"\n", "`log.socket`"),
        (
            "[access]\nallow_users = [\"no-such-user-torpor\"]\n",
            "`access.allow_users`: no user named `no-such-user-torpor`",
        ),
    ] {
        std::fs::write(&file, body).unwrap();
        for extra in [&["--check-config"][..], &[][..]] {
            let mut args = vec!["daemon", "--config", file.to_str().unwrap()];
            args.extend_from_slice(extra);
            let out = torpor(&args);
            let err = text(&out.stderr);
            let prefix = "torpor[";
            assert!(err.starts_with(prefix), "{err}");
            let after_pid = err.split_once("]: ").map(|(_, rest)| rest).unwrap();
            assert!(
                after_pid.starts_with(&format!("error: {}: {why}", file.display())),
                "{err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            assert_eq!(out.status.code(), Some(1));
        }
    }
    let out = torpor(&[
        "daemon",
        "--check-config",
        "--config",
        "/nonexistent/torpor.toml",
    ]);
    assert!(text(&out.stderr).ends_with(
        "]: error: /nonexistent/torpor.toml: cannot read: No such file or directory (os error 2)\n"
    ));
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    /// The daemon binary with this build's engine, a GPIO chip that does not
    /// exist and no RTC.
    fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, "")
    }

    /// As `start`, with more configuration text appended.
    fn start_with(tag: &str, more_config: &str) -> Daemon {
        let dir = temp_dir(tag);
        let file = dir.join("torpor.toml");
        let socket = dir.join("torpor.sock");
        let config = format!(
            "[power]\nchip = \"/nonexistent/gpiochip\"\n[rtc]\ndevice = \"none\"\n{more_config}"
        )
        .replace("DIR", dir.to_str().unwrap());
        std::fs::write(&file, config).unwrap();
        let child = Command::new(BIN)
            .args([
                "daemon",
                "--config",
                file.to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Ready once it accepts a connection (the file appears a moment before).
        let mut ready = false;
        for _ in 0..500 {
            if torpor_client::packet::connect(&socket).is_ok() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(ready, "the daemon does not listen on {}", socket.display());
        Daemon {
            child: Some(child),
            socket,
            dir,
        }
    }

    fn socket(&self) -> &str {
        self.socket.to_str().unwrap()
    }

    /// SIGTERM; returns the daemon's exit code and log.
    fn stop(mut self) -> (Option<i32>, String) {
        let child = self.child.take().unwrap();
        // SAFETY: kill() on our own child's pid.
        unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        (out.status.code(), text(&out.stderr))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn no_leftover(path: &Path) {
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn hibernate_command_against_the_daemon_binary() {
    let d = Daemon::start("serve");
    let out = torpor(&["hibernate", "--socket", d.socket(), "--status"]);
    assert_eq!(
        text(&out.stdout),
        format!(
            "daemon {} (protocol 1.0)\nstore: unavailable, generation 0, 0 bytes\nwake alarm: not configured\n",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(out.status.code(), Some(0));

    // Without --pid the target is the parent: this test process.
    let me = std::process::id();
    let out = torpor(&["hibernate", "--socket", d.socket()]);
    assert_eq!(
        text(&out.stderr),
        format!(
            "torpor: error: PowerFailed: pid {me} not hibernated: cannot request /nonexistent/gpiochip line 26 as the power output: No such file or directory (os error 2)\n"
        )
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(out.status.code(), Some(1));

    let out = torpor(&[
        "hibernate",
        "--socket",
        d.socket(),
        "--wake-after",
        "60",
        "--pid",
        &me.to_string(),
    ]);
    assert_eq!(
        text(&out.stderr),
        "torpor: error: Unsupported: wake_after_s needs an RTC wake alarm, and rtc.device is \"none\"\n"
    );
    assert_eq!(out.status.code(), Some(1));

    let out = torpor(&[
        "hibernate",
        "--socket",
        d.socket(),
        "--checkpoint",
        "--pid",
        &me.to_string(),
    ]);
    assert_eq!(
        text(&out.stderr),
        format!("torpor: error: StoreFailed: pid {me}: image store failed: cannot open store /dev/mmcblk0p3: No such file or directory (os error 2)\n")
    );
    assert_eq!(out.status.code(), Some(1));

    // A second daemon on the same socket refuses to start.
    let out = torpor(&["daemon", "--socket", d.socket()]);
    assert!(text(&out.stderr).ends_with(&format!(
        "]: error: another torpor daemon is already serving {}\n",
        d.socket()
    )));
    assert_eq!(out.status.code(), Some(1));

    let socket = d.socket.clone();
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    no_leftover(&socket);
    // One format for every line; every refusal says why.
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines {
        let (head, rest) = l.split_once("]: ").unwrap();
        assert!(
            head.starts_with("torpor[") && head[7..].parse::<u32>().is_ok(),
            "{l}"
        );
        assert!(
            ["info: ", "warning: ", "error: "]
                .iter()
                .any(|p| rest.starts_with(p)),
            "{l}"
        );
    }
    assert!(
        lines[0].ends_with(&format!("info: serving {}", socket.display())),
        "{log}"
    );
    let refusals: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("warning: refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{log}");
    assert!(refusals[0].ends_with(&format!(
        "warning: refused Hibernate from pid {} uid 0: PowerFailed: pid {me} not hibernated: cannot request /nonexistent/gpiochip line 26 as the power output: No such file or directory (os error 2)",
        refusals[0].split("from pid ").nth(1).unwrap().split(' ').next().unwrap()
    )), "{log}");
    assert!(lines.last().unwrap().ends_with("info: stopping"), "{log}");
}

#[test]
fn the_daemon_logs_to_syslog_when_configured() {
    use std::os::unix::net::UnixDatagram;
    let dir = temp_dir("syslogd");
    let log_socket = dir.join("log");
    // Stands in for syslogd: bound before the daemon starts, as at boot.
    let syslogd = UnixDatagram::bind(&log_socket).unwrap();
    syslogd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let d = Daemon::start_with(
        "syslog",
        &format!(
            "[log]\ntarget = \"syslog\"\nsocket = \"{}\"\n",
            log_socket.display()
        ),
    );
    let pid = d.child.as_ref().unwrap().id();
    let me = std::process::id();
    let out = torpor(&[
        "hibernate",
        "--socket",
        d.socket(),
        "--wake-after",
        "60",
        "--pid",
        &me.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let socket = d.socket.clone();
    let (code, stderr) = d.stop();
    assert_eq!(code, Some(0));
    assert_eq!(stderr, "", "every line went to syslog");

    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < 3 {
        let n = syslogd
            .recv(&mut buf)
            .expect("a syslog message within 10 s");
        got.push(text(&buf[..n]));
    }
    assert_eq!(
        got[0],
        format!("<30>torpor[{pid}]: serving {}", socket.display())
    );
    let client = got[1]
        .split("from pid ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        got[1],
        format!("<28>torpor[{pid}]: refused Hibernate from pid {client} uid 0: Unsupported: wake_after_s needs an RTC wake alarm, and rtc.device is \"none\"")
    );
    assert_eq!(got[2], format!("<30>torpor[{pid}]: stopping"));

    // --log overrides the file.
    let file = dir.join("torpor.toml");
    std::fs::write(
        &file,
        "[log]\ntarget = \"syslog\"\nsocket = \"/run/syslog.sock\"\n",
    )
    .unwrap();
    let out = torpor(&[
        "daemon",
        "--check-config",
        "--config",
        file.to_str().unwrap(),
        "--log",
        "stderr",
    ]);
    assert!(
        text(&out.stdout).ends_with("log.target = stderr\nlog.socket = /run/syslog.sock\n"),
        "{}",
        text(&out.stdout)
    );
    let out = torpor(&[
        "daemon",
        "--check-config",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stdout).ends_with("log.target = syslog\nlog.socket = /run/syslog.sock\n"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(torpor(&["daemon", "--log", "file"]).status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hibernate_command_without_a_daemon() {
    let out = torpor(&[
        "hibernate",
        "--socket",
        "/nonexistent/torpor.sock",
        "--status",
    ]);
    assert_eq!(
        text(&out.stderr),
        "torpor: error: cannot connect to the torpor daemon at /nonexistent/torpor.sock: No such file or directory (os error 2)\n"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn cut_power_reports_a_missing_gpio() {
    let dir = temp_dir("cut");
    let file = dir.join("torpor.toml");
    std::fs::write(
        &file,
        "[power]\nchip = \"/nonexistent/gpiochip\"\nline = 5\n",
    )
    .unwrap();
    let out = torpor(&[
        "daemon",
        "--config",
        file.to_str().unwrap(),
        "--cut-power",
        "--wake-after",
        "30",
    ]);
    let err = text(&out.stderr);
    assert!(
        err.ends_with("]: error: cannot request /nonexistent/gpiochip line 5 as the power output: No such file or directory (os error 2)\n"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(out.status.code(), Some(1));
    // --wake-after needs --cut-power, and at least 1 second.
    assert_eq!(
        torpor(&["daemon", "--wake-after", "30"]).status.code(),
        Some(2)
    );
    assert_eq!(
        torpor(&["daemon", "--cut-power", "--wake-after", "0"])
            .status
            .code(),
        Some(2)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The records of the newest image in `store` whose kind is `kind`, as
/// `torpor show` prints them.
fn shown_records(store: &Path, kind: &str) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["show", "--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind)
        .cloned()
        .collect()
}

/// An image the daemon writes names the user who asked for it: the boot
/// restore then acts on files with no more than that user's rights.
#[test]
fn a_checkpoint_records_who_asked() {
    use std::os::unix::process::CommandExt;
    let d = Daemon::start_with(
        "requester",
        "[socket]\nmode = \"0666\"\n[store]\ndevice = \"DIR/store\"\n[access]\nallow_users = [65534]\n",
    );
    let store = d.dir.join("store");
    let checkpoint = |pid: u32, uid: Option<u32>| {
        let mut c = Command::new(BIN);
        c.args([
            "hibernate",
            "--socket",
            d.socket(),
            "--checkpoint",
            "--pid",
            &pid.to_string(),
        ]);
        if let Some(uid) = uid {
            c.uid(uid).gid(uid);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    };

    // Root, for a process of its own.
    let mut app = Command::new("sleep").arg("1000").spawn().unwrap();
    checkpoint(app.id(), None);
    let got = shown_records(&store, "requested-by");
    assert_eq!(got.len(), 1, "{got:?}");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let groups: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .unwrap()
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    assert_eq!(got[0]["value"]["uid"], 0);
    assert_eq!(got[0]["value"]["gid"], 0);
    assert_eq!(got[0]["value"]["groups"], serde_json::json!(groups));
    app.kill().unwrap();
    app.wait().unwrap();

    // An allowed user, for its own process.
    let mut app = Command::new("sleep")
        .arg("1000")
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    checkpoint(app.id(), Some(65534));
    let got = shown_records(&store, "requested-by");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["value"]["uid"], 65534);
    assert_eq!(got[0]["value"]["gid"], 65534);
    assert_eq!(got[0]["value"]["groups"], serde_json::json!([]));
    app.kill().unwrap();
    app.wait().unwrap();
}

/// An allowed user's tree with a set-user-ID-root child: the child's
/// memory is not the user's to read, so the checkpoint is refused, naming
/// the child and its ids, and nothing is stored.
#[test]
fn a_tree_with_a_setuid_child_is_refused_for_its_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let d = Daemon::start_with(
        "setuid-child",
        "[socket]\nmode = \"0666\"\n[store]\ndevice = \"DIR/store\"\n[access]\nallow_users = [65534]\n",
    );
    let suid = d.dir.join("suid-sleep");
    std::fs::copy("/bin/sleep", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let mut app = Command::new("sh")
        .args(["-c", &format!("{} 1000 & exec sleep 1000", suid.display())])
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    let root = app.id();
    // The child, once it runs the set-user-ID program.
    let mut child = None;
    for _ in 0..500 {
        let kids = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
            .unwrap_or_default();
        child = kids.split_whitespace().next().and_then(|c| {
            let status = std::fs::read_to_string(format!("/proc/{c}/status")).ok()?;
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
                .then(|| c.to_string())
        });
        if child.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let child = child.expect("the set-user-ID child runs");
    let out = Command::new(BIN)
        .args([
            "hibernate",
            "--socket",
            d.socket(),
            "--checkpoint",
            "--pid",
            &root.to_string(),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = Command::new("kill").args(["-9", &child]).status();
    app.kill().unwrap();
    app.wait().unwrap();
    assert_eq!(
        text(&out.stderr),
        format!(
            "torpor: error: Unauthorized: uid 65534 may not checkpoint pid {root}: process {child} in its tree has uids 65534, 0, 0, 0 (real, effective, saved, fs)\n"
        )
    );
    assert_eq!(out.status.code(), Some(1));
    // Nothing was dumped: the store was never even created.
    assert!(!d.dir.join("store").exists(), "an image was stored");
}

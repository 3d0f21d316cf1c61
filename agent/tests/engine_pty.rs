//! Pseudo-terminal pairs inside the dumped tree: a tmux server with a
//! counting pane comes back with its pane on the same `/dev/pts/N`, the
//! count going on and a client attaching and typing into it; a program
//! holding pairs of its own finds each pair's index, line settings, window
//! size, packet mode, lock and unread output as they were; and a pair with
//! input its slave has not read is refused at the dump, the program
//! running on.

mod engine_util;
use engine_util::*;

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// The tests here allocate pseudo-terminals: one test's pairs must not
/// take an index another test's restore needs.
static PTYS: Mutex<()> = Mutex::new(());

/// `session tty_nr tpgid` of `pid` (fields 6 to 8 of its stat).
fn terminal_fields(pid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let w: Vec<&str> = rest.split_whitespace().collect();
    w[3..6].join(" ")
}

struct Tmux {
    sock: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let mut c = Command::new("tmux");
        c.args(["-S", &self.sock, "-f", "/dev/null"]).args(args);
        // The server starts from the first command: none of this test's
        // descriptors may reach it.
        // SAFETY: between fork and exec only close_range, which is
        // async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let o = c.output().expect("run tmux");
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8")
    }

    /// The pane's `n=K` lines, its whole history.
    fn counted(&self) -> Vec<u64> {
        self.cmd(&["capture-pane", "-p", "-S", "-"])
            .lines()
            .filter_map(|l| l.strip_prefix("n=")?.parse().ok())
            .collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-S", &self.sock, "kill-server"])
            .output();
    }
}

const PANE: &str = r#"
i=0
while :; do
    if read -t 0.05 l; then echo "got:$l"; fi
    echo "n=$i"
    i=$((i+1))
done
"#;

#[test]
fn tmux_server_and_its_pane_come_back_on_the_same_terminal() {
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = scratch("pty-tmux");
    let pane = dir.join("pane.sh");
    std::fs::write(&pane, PANE).expect("pane script");
    let img = dir.join("tmux.img");
    let tmux = Tmux {
        sock: dir.join("sock").to_string_lossy().into_owned(),
    };
    // A shell with job control runs the counting script as its foreground
    // job, in a process group of its own.
    let shell = format!("bash -c 'set -m; bash {}; exit 3'", pane.display());
    tmux.cmd(&["new-session", "-d", "-x", "91", "-y", "33", &shell]);
    let server: i32 = tmux
        .cmd(&["display", "-p", "#{pid}"])
        .trim()
        .parse()
        .expect("pid");
    let mut reaper = Reaper::default();
    reaper.add(server);
    let pane_pid: i32 = tmux
        .cmd(&["display", "-p", "#{pane_pid}"])
        .trim()
        .parse()
        .expect("pid");
    reaper.add(pane_pid);
    let tty = tmux
        .cmd(&["display", "-p", "#{pane_tty}"])
        .trim()
        .to_string();
    assert!(tty.starts_with("/dev/pts/"), "{tty}");
    wait_for("the pane counting", || tmux.counted().len() >= 10);
    let size = |tty: &str| {
        let o = Command::new("stty")
            .args(["-F", tty, "size"])
            .output()
            .expect("stty");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(size(&tty), "33 91");
    let fields = terminal_fields(pane_pid);
    let job: i32 = std::fs::read_to_string(format!("/proc/{pane_pid}/task/{pane_pid}/children"))
        .expect("children")
        .trim()
        .parse()
        .expect("one job");
    reaper.add(job);
    // The pane's shell leads its session on the pane's terminal; its job
    // is the foreground group.
    assert_eq!(
        fields,
        format!(
            "{pane_pid} {} {job}",
            136 << 8 | tty[9..].parse::<i32>().expect("N")
        )
    );
    assert_eq!(terminal_fields(job), fields);
    // The clients of the commands above gone from the server: it holds
    // its listener and its own pipe only.
    wait_for("the server without clients", || {
        let links: Vec<String> = std::fs::read_dir(format!("/proc/{server}/fd"))
            .expect("fds")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|l| l.to_string_lossy().into_owned())
            .collect();
        let count = |p: &str| links.iter().filter(|l| l.starts_with(p)).count();
        count("socket:") == 1 && count("pipe:") == 2
    });

    dump(server, &img, &[]);
    for p in [server, pane_pid, job] {
        wait_for("the dumped tree gone", || {
            // SAFETY: waitpid with WNOHANG on a child of this process.
            unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
            !std::path::Path::new(&format!("/proc/{p}")).exists()
        });
    }
    restore(&img);
    assert_eq!(tmux.cmd(&["display", "-p", "#{pane_tty}"]).trim(), tty);
    assert_eq!(
        tmux.cmd(&["display", "-p", "#{pane_pid}"]).trim(),
        pane_pid.to_string()
    );
    assert_eq!(terminal_fields(pane_pid), fields);
    assert_eq!(terminal_fields(job), fields);
    assert_eq!(size(&tty), "33 91");
    let now = tmux.counted().len();
    wait_for("the pane counting on", || tmux.counted().len() >= now + 10);
    let n = tmux.counted();
    assert_eq!(
        n,
        (0..n.len() as u64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );

    // A client types into the pane: through the master, the line
    // discipline and the read of the foreground job (a background one
    // would be stopped by SIGTTIN).
    tmux.cmd(&["send-keys", "hello", "Enter"]);
    wait_for("the pane reading the typed line", || {
        tmux.cmd(&["capture-pane", "-p", "-S", "-"])
            .lines()
            .any(|l| l == "got:hello")
    });
}

const PAIRS: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

static int failed;
#define CHECK(c) do { if (!(c)) { printf("FAIL %s\n", #c); failed = 1; } } while (0)

static int geti(int fd, unsigned long req) {
    int v = -1;
    if (ioctl(fd, req, &v) < 0) return -2;
    return v;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    /* fd 3 master A, fd 4 its slave; fd 5 master B, locked. */
    int a = posix_openpt(O_RDWR | O_NOCTTY);
    if (a != 3 || grantpt(a) || unlockpt(a)) return 2;
    int s = open(ptsname(a), O_RDWR | O_NOCTTY);
    if (s != 4) return 3;
    int b = posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK);
    if (b != 5) return 4;
    struct termios t;
    tcgetattr(s, &t);
    t.c_lflag &= ~(ECHO | ISIG);
    t.c_iflag |= IUCLC;
    t.c_cc[VMIN] = 3;
    t.c_cc[VTIME] = 7;
    t.c_cc[VINTR] = 'X';
    if (tcsetattr(s, TCSANOW, &t)) return 5;
    struct winsize ws = { .ws_row = 17, .ws_col = 43, .ws_xpixel = 100, .ws_ypixel = 200 };
    if (ioctl(a, TIOCSWINSZ, &ws)) return 6;
    struct winsize wb = { .ws_row = 5, .ws_col = 6 };
    if (ioctl(b, TIOCSWINSZ, &wb)) return 7;
    int one = 1;
    if (ioctl(b, TIOCPKT, &one)) return 8;
    /* Output the master has not read: "queued\r\n" after ONLCR. */
    if (write(s, "queued\n", 7) != 7) return 9;
    int ia = geti(a, TIOCGPTN), ib = geti(b, TIOCGPTN);
    printf("ready %d %d\n", ia, ib);
    int sig;
    sigwait(&m, &sig);

    CHECK(geti(a, TIOCGPTN) == ia);
    CHECK(geti(b, TIOCGPTN) == ib);
    CHECK(geti(a, TIOCGPTLCK) == 0);
    CHECK(geti(b, TIOCGPTLCK) == 1);
    CHECK(geti(a, TIOCGPKT) == 0);
    CHECK(geti(b, TIOCGPKT) == 1);
    CHECK(fcntl(b, F_GETFL) & O_NONBLOCK);
    CHECK(!(fcntl(a, F_GETFL) & O_NONBLOCK));
    struct stat st;
    CHECK(fstat(s, &st) == 0 && major(st.st_rdev) == 136 && minor(st.st_rdev) == (unsigned)ia);
    struct termios u;
    CHECK(tcgetattr(s, &u) == 0);
    CHECK(u.c_lflag == t.c_lflag && u.c_iflag == t.c_iflag && u.c_oflag == t.c_oflag
          && u.c_cflag == t.c_cflag && memcmp(u.c_cc, t.c_cc, NCCS) == 0);
    struct winsize w2;
    CHECK(ioctl(s, TIOCGWINSZ, &w2) == 0 && w2.ws_row == 17 && w2.ws_col == 43
          && w2.ws_xpixel == 100 && w2.ws_ypixel == 200);
    CHECK(ioctl(b, TIOCGWINSZ, &w2) == 0 && w2.ws_row == 5 && w2.ws_col == 6);
    char buf[64] = {0};
    fcntl(a, F_SETFL, O_NONBLOCK);
    ssize_t n = read(a, buf, sizeof buf);
    CHECK(n == 8 && memcmp(buf, "queued\r\n", 8) == 0);
    CHECK(read(a, buf, sizeof buf) < 0);
    /* The pair still works both ways, IUCLC included. */
    CHECK(write(a, "PING\n", 5) == 5);
    memset(buf, 0, sizeof buf);
    n = read(s, buf, sizeof buf);
    CHECK(n == 5 && memcmp(buf, "ping\n", 5) == 0);
    CHECK(write(s, "pong\n", 5) == 5);
    usleep(100000);
    n = read(a, buf, sizeof buf);
    CHECK(n == 6 && memcmp(buf, "pong\r\n", 6) == 0);
    /* Locked: no one opens B's slave. */
    char path[32];
    snprintf(path, sizeof path, "/dev/pts/%d", ib);
    CHECK(open(path, O_RDWR | O_NOCTTY) < 0);
    puts(failed ? "FAIL" : "PASS");
    return 0;
}
"#;

#[test]
fn pty_pairs_keep_index_line_settings_window_packet_lock_and_unread_output() {
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = scratch("pty-pairs");
    let bin = compile(&dir, "pairs", PAIRS, &[]);
    let out = dir.join("out");
    let img = dir.join("pairs.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || lines(&out).len() == 1);
    let ready = lines(&out)[0].clone();
    let idx: Vec<u32> = ready
        .strip_prefix("ready ")
        .expect("ready line")
        .split(' ')
        .map(|n| n.parse().expect("index"))
        .collect();
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert!(runs(pid, &bin), "the program runs again");
    let link = |fd: i32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .expect("fd link")
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(link(4), format!("/dev/pts/{}", idx[0]));
    assert_eq!(link(3), "/dev/ptmx");
    // SAFETY: kill with plain integers.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(reap(pid), 0);
    reaper.0.clear();
    assert_eq!(lines(&out), [ready, "PASS".to_string()]);
}

const TYPED: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int a = posix_openpt(O_RDWR | O_NOCTTY);
    if (a != 3 || grantpt(a) || unlockpt(a)) return 2;
    int s = open(ptsname(a), O_RDWR | O_NOCTTY);
    if (s != 4) return 3;
    /* A line typed into the master that the slave side never reads. */
    if (write(a, "typed\n", 6) != 6) return 4;
    puts("ready");
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

#[test]
fn pty_with_input_its_slave_has_not_read_is_refused_and_runs_on() {
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = scratch("pty-typed");
    let bin = compile(&dir, "typed", TYPED, &[]);
    let out = dir.join("out");
    let img = dir.join("typed.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("counting", || lines(&out).len() > 3);
    let slave = std::fs::read_link(format!("/proc/{pid}/fd/4")).expect("slave");
    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["dump", "--pid", &pid.to_string(), "--image", &i]);
    assert!(!o.status.success(), "dumped a pair with unread input");
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!(
        "files {pid}: fd 3 of process {pid} (/dev/ptmx): a pseudo-terminal master whose \
         slave {} has 6 bytes of input not read yet, which torpor cannot queue again as \
         they were",
        slave.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(!Path::new(&i).exists(), "no image left behind");
    let n = lines(&out).len();
    wait_for("counting on after the refusal", || {
        lines(&out).len() > n + 5
    });
    assert!(runs(pid, &bin));
}

const MASTER_ONLY: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int a = posix_openpt(O_RDWR | O_NOCTTY);
    if (a != 3 || grantpt(a) || unlockpt(a)) return 2;
    printf("%s\n", ptsname(a));
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

#[test]
fn pty_whose_slave_is_open_outside_the_tree_is_refused_and_runs_on() {
    use std::os::fd::AsRawFd;
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = scratch("pty-outside");
    let bin = compile(&dir, "master", MASTER_ONLY, &[]);
    let out = dir.join("out");
    let img = dir.join("outside.img");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("counting", || lines(&out).len() > 3);
    let slave = lines(&out)[0].clone();
    // This process, outside the tree, holds the slave.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&slave)
        .expect("open the slave");
    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["dump", "--pid", &pid.to_string(), "--image", &i]);
    assert!(
        !o.status.success(),
        "dumped a pair whose slave is held outside"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!(
        "files: the pseudo-terminal {slave}, whose master the tree holds, is also open in \
         process {} outside the tree (fd {}), which would be left without it",
        std::process::id(),
        held.as_raw_fd()
    );
    assert!(err.contains(&want), "{err}");
    let n = lines(&out).len();
    wait_for("counting on after the refusal", || {
        lines(&out).len() > n + 5
    });
    assert!(runs(pid, &bin));
    // Once it is closed, the same tree dumps.
    drop(held);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    reaper.0.clear();
}

/// A slave whose master is outside the tree stays a terminal reopened by
/// path, whose identity the image records like any path's.
#[test]
fn slave_of_a_master_outside_the_tree_is_a_terminal_with_its_identity() {
    let _ptys = PTYS.lock().unwrap_or_else(|e| e.into_inner());
    become_subreaper();
    let dir = scratch("pty-outside-master");
    let bin = compile(&dir, "master", MASTER_ONLY, &[]);
    let img = dir.join("slave.img");
    // The master here, the slave as the program's stdout.
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname on the fd just opened.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0 && libc::grantpt(m) == 0 && libc::unlockpt(m) == 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m))
            .to_string_lossy()
            .into_owned();
        (m, name)
    };
    let pid = spawn(&bin, &[], Some(Path::new(&slave)));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("the program on the terminal", || {
        std::fs::read_link(format!("/proc/{pid}/fd/1")).is_ok_and(|l| l == Path::new(&slave))
    });
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    reaper.0.clear();
    let o = torpor(&["show", &img.to_string_lossy()]);
    assert!(o.status.success());
    let shown = String::from_utf8_lossy(&o.stdout);
    let tty = shown
        .lines()
        .find(|l| l.contains(r#""kind":"fd""#) && l.contains(r#""fd":1,"#))
        .expect("fd 1");
    assert!(tty.contains(r#""Tty":{"flags":"#), "{tty}");
    assert!(tty.contains(&format!(r#""path":"{slave}""#)), "{tty}");
    assert!(
        shown
            .lines()
            .any(|l| l.contains(r#""kind":"file-owner""#)
                && l.contains(&format!(r#""path":"{slave}""#))),
        "no identity of {slave}"
    );
    // SAFETY: closing our own master.
    unsafe { libc::close(master) };
}

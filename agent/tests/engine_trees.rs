//! Several trees in one image: `torpor dump --pid A --pid B` freezes both,
//! writes one image with two roots and kills both; `torpor restore` brings
//! back every process with its pid, parent, memory (byte-exact) and
//! descriptors (file, offset, number), and each goes on counting without a
//! gap. A tree torpor refuses fails the whole dump, names that tree, and
//! leaves every tree running.

mod engine_util;
use engine_util::*;

/// `trees SEED FILE [child]`: fills 3 MiB from SEED, opens FILE at fd
/// 20 + SEED at offset 100 * SEED, optionally forks a child doing the same
/// with SEED + 50, and counts on stdout. SIGUSR1 makes every process check
/// its memory and descriptor and print `PASS SEED` or `FAIL SEED why`.
const TREES: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define SIZE (3UL << 20)
static volatile sig_atomic_t usr1;
static void on_usr1(int s) { (void)s; usr1 = 1; }
static unsigned char *mem;
static int seed;
static char path[256];

static unsigned char byte_at(size_t i) {
    unsigned long x = (i + 1) * 2654435761UL ^ (unsigned long)seed * 40503UL;
    return (unsigned char)(x >> 7);
}

static void setup(void) {
    mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < SIZE; i++) mem[i] = byte_at(i);
    int fd = open(path, O_RDWR);
    lseek(fd, 100L * seed, SEEK_SET);
    dup2(fd, 20 + seed);
    close(fd);
}

static void check(void) {
    for (size_t i = 0; i < SIZE; i++) {
        if (mem[i] != byte_at(i)) { printf("FAIL %d memory at %zu\n", seed, i); return; }
    }
    int fd = 20 + seed;
    off_t off = lseek(fd, 0, SEEK_CUR);
    if (off != 100L * seed) { printf("FAIL %d offset %ld\n", seed, (long)off); return; }
    char link[64], target[256];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) { printf("FAIL %d no fd %d\n", seed, fd); return; }
    target[n] = 0;
    if (strcmp(target, path) != 0) { printf("FAIL %d fd %d is %s\n", seed, fd, target); return; }
    printf("PASS %d\n", seed);
}

static void count(void) {
    for (unsigned long i = 0;; i++) {
        if (usr1) { usr1 = 0; check(); }
        printf("%lu\n", i);
        usleep(5000);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    seed = atoi(argv[1]);
    snprintf(path, sizeof path, "%s", argv[2]);
    signal(SIGUSR1, on_usr1);
    if (argc > 3) {
        char out[300];
        snprintf(out, sizeof out, "%s.child", argv[2]);
        pid_t c = fork();
        if (c == 0) {
            seed += 50;
            freopen(out, "w", stdout);
            setvbuf(stdout, NULL, _IONBF, 0);
            setup();
            count();
        }
    }
    setup();
    count();
}
"#;

const WITH_NETLINK: &str = r#"
#include <stdio.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    /* An acknowledgement left unread: a queue a dump refuses. */
    int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct nlmsghdr h = { sizeof h, NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, 1, 0 };
    if (send(s, &h, sizeof h, 0) != sizeof h)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(5000);
    }
}
"#;

fn ppid_of(pid: i32) -> i32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let f: Vec<&str> = s[s.rfind(')').expect("comm") + 2..].split(' ').collect();
    f[1].parse().expect("ppid")
}

fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|c| c.parse().expect("pid"))
        .collect()
}

/// The counting lines of `out` (the checks' lines left out).
fn counted(out: &std::path::Path) -> usize {
    lines(out).iter().filter(|l| !l.contains(' ')).count()
}

#[test]
fn two_trees_in_one_image_come_back_together() {
    become_subreaper();
    let dir = scratch("trees-two");
    let bin = compile(&dir, "trees", TREES, &[]);
    let (fa, fb) = (dir.join("a.data"), dir.join("b.data"));
    for f in [&fa, &fb] {
        std::fs::write(f, vec![b'x'; 4096]).expect("data file");
    }
    let (oa, ob) = (dir.join("a.out"), dir.join("b.out"));
    let oc = dir.join("a.data.child");
    let a = spawn(&bin, &["1", fa.to_str().expect("utf8"), "child"], Some(&oa));
    let b = spawn(&bin, &["2", fb.to_str().expect("utf8")], Some(&ob));
    let mut reaper = Reaper::default();
    reaper.add(a);
    reaper.add(b);
    wait_for("output", || {
        counted(&oa) >= 3 && counted(&ob) >= 3 && counted(&oc) >= 3
    });
    let kids = children_of(a);
    assert_eq!(kids.len(), 1, "one child of {a}");
    let c = kids[0];
    reaper.add(c);

    let img = dir.join("trees.img");
    let o = torpor(&[
        "dump",
        "--pid",
        &a.to_string(),
        "--pid",
        &b.to_string(),
        "--image",
        img.to_str().expect("utf8"),
    ]);
    assert!(
        o.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Three processes of one thread each, each with its 3 MiB of pattern.
    let said = String::from_utf8_lossy(&o.stderr).trim_end().to_string();
    let bytes: u64 = said
        .strip_prefix("torpor: dumped 3 process(es), 3 thread(s), ")
        .and_then(|r| r.strip_suffix(&format!(" bytes of memory into {}", img.display())))
        .unwrap_or_else(|| panic!("summary: {said}"))
        .parse()
        .expect("bytes");
    assert!(bytes >= 3 * (3 << 20), "{bytes} bytes of memory");
    assert_eq!(reap(a), libc::SIGKILL);
    assert_eq!(reap(b), libc::SIGKILL);
    // Re-parented to this subreaper when its parent died.
    assert_eq!(reap(c), libc::SIGKILL);
    let before = [counted(&oa), counted(&ob), counted(&oc)];

    restore(&img);
    let me = i32::try_from(std::process::id()).expect("pid fits");
    for pid in [a, b] {
        assert!(runs(pid, &bin), "{pid} runs again");
        assert_eq!(ppid_of(pid), me, "{pid} is ours again (subreaper)");
    }
    assert!(runs(c, &bin), "the child {c} runs again");
    assert_eq!(ppid_of(c), a, "the child's parent");
    wait_for("counting again", || {
        counted(&oa) > before[0] + 3 && counted(&ob) > before[1] + 3 && counted(&oc) > before[2] + 3
    });
    for pid in [a, b, c] {
        // SAFETY: kill with plain integers.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
    }
    let pass = |out: &std::path::Path, seed: i32| {
        lines(out)
            .into_iter()
            .find(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
            .is_some_and(|l| {
                assert_eq!(l, format!("PASS {seed}"));
                true
            })
    };
    wait_for("the checks", || {
        pass(&oa, 1) && pass(&ob, 2) && pass(&oc, 51)
    });
    for pid in [c, a, b] {
        kill_and_reap(pid);
    }
    for out in [&oa, &ob, &oc] {
        let nums: Vec<u64> = lines(out)
            .iter()
            .filter(|l| !l.contains(' '))
            .map(|l| l.parse().expect("number"))
            .collect();
        let want: Vec<u64> = (0..nums.len() as u64).collect();
        assert_eq!(nums, want, "{} counted without a gap", out.display());
    }
}

#[test]
fn one_refused_tree_fails_the_dump_by_name_and_every_tree_runs_on() {
    become_subreaper();
    let dir = scratch("trees-refused");
    let bin = compile(&dir, "trees", TREES, &[]);
    let sock = compile(&dir, "sock", WITH_NETLINK, &[]);
    let fa = dir.join("a.data");
    std::fs::write(&fa, vec![b'x'; 4096]).expect("data file");
    let (oa, ob) = (dir.join("a.out"), dir.join("b.out"));
    let a = spawn(&bin, &["1", fa.to_str().expect("utf8")], Some(&oa));
    let b = spawn(&sock, &[], Some(&ob));
    let mut reaper = Reaper::default();
    reaper.add(a);
    reaper.add(b);
    wait_for("output", || counted(&oa) >= 3 && counted(&ob) >= 3);
    let img = dir.join("trees.img");
    let o = torpor(&[
        "dump",
        "--pid",
        &a.to_string(),
        "--pid",
        &b.to_string(),
        "--image",
        img.to_str().expect("utf8"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let inode = std::fs::read_link(format!("/proc/{b}/fd/3"))
        .expect("fd 3")
        .to_string_lossy()
        .into_owned();
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or(""),
        format!(
            "torpor: error: tree of process {b}: files {b}: fd 3 of process {b} ({inode}): a netlink socket: {} bytes of messages wait unread in its receive queue, which torpor cannot queue again",
            netlink_waiting(b, 3)
        ),
    );
    assert!(!img.exists(), "no image left behind");
    let n = [counted(&oa), counted(&ob)];
    wait_for("both to go on", || {
        counted(&oa) >= n[0] + 5 && counted(&ob) >= n[1] + 5
    });
    for pid in [a, b] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(
            status.lines().any(|l| l == "TracerPid:\t0"),
            "{pid} detached"
        );
        kill_and_reap(pid);
    }
    assert_counted_from_zero(&ob);
}

#[test]
fn a_root_inside_another_tree_is_refused() {
    become_subreaper();
    let dir = scratch("trees-nested");
    let bin = compile(&dir, "trees", TREES, &[]);
    let fa = dir.join("a.data");
    std::fs::write(&fa, vec![b'x'; 4096]).expect("data file");
    let oa = dir.join("a.out");
    let oc = dir.join("a.data.child");
    let a = spawn(&bin, &["1", fa.to_str().expect("utf8"), "child"], Some(&oa));
    let mut reaper = Reaper::default();
    reaper.add(a);
    wait_for("output", || counted(&oa) >= 3 && counted(&oc) >= 3);
    let c = children_of(a)[0];
    reaper.add(c);
    let img = dir.join("nested.img");
    for (first, second, want) in [
        (a, c, format!("tree of process {c}: freeze: process {c} is in the tree of process {a}: give each tree once, by its root")),
        (c, a, format!("tree of process {c}: freeze: process {c} is in the tree of process {a}: give each tree once, by its root")),
        (a, a, format!("tree of process {a}: freeze: process {a} is given twice")),
    ] {
        let o = torpor(&[
            "dump",
            "--pid",
            &first.to_string(),
            "--pid",
            &second.to_string(),
            "--image",
            img.to_str().expect("utf8"),
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).trim_end(),
            format!("torpor: error: {want}")
        );
        assert!(!img.exists());
    }
    assert!(alive(a) && alive(c));
}

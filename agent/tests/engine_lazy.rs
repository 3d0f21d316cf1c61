//! Lazy restore (`torpor restore --lazy`): the tree runs while its private
//! anonymous pages arrive, and the kernel's view of them stays the
//! program's own.
//!
//! - A child forked, a range dropped with `MADV_DONTNEED`, a range moved
//!   with `mremap` and a range unmapped and mapped afresh, all while
//!   64 MiB are still arriving: the child sees every byte, the dropped and
//!   fresh ranges read zero (never the image's bytes), the moved range
//!   holds its bytes at its new address.
//! - A page record damaged in the image is found only after the tree runs:
//!   the tree is killed and the error names the record and its CRC.
//! - Where userfaultfd is refused (here by a seccomp filter on torpor), the
//!   restore is eager, says so once, and the program is exact.

mod engine_util;
use engine_util::*;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

const LAZY: &str = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define MB (1UL << 20)
#define BIG (64 * MB)
static int fails;
#define CHECK(c) do { if (!(c)) { printf("FAIL %s\n", #c); fails++; } } while (0)

static void fill(unsigned char *p, size_t n, unsigned long seed) {
    unsigned long s = seed * 0x9E3779B97F4A7C15UL + 1;
    for (size_t i = 0; i < n; i += 8) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        memcpy(p + i, &s, n - i < 8 ? n - i : 8);
    }
}
static int all_zero(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) if (p[i]) return 0;
    return 1;
}

int main(int argc, char **argv) {
    (void)argc;
    setvbuf(stdout, NULL, _IONBF, 0);
    unsigned char *big = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *spot = mmap(NULL, MB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    fill(big, BIG, 1);
    printf("ready %lx\n", (unsigned long)big);
    struct timespec ms = {0, 1000000};
    while (access(argv[1], F_OK) != 0)
        nanosleep(&ms, NULL);
    /* Right after the restore, pages still arriving. */
    pid_t c = fork();
    if (c == 0) {
        unsigned char *q = malloc(BIG);
        fill(q, BIG, 1);
        _exit(memcmp(big, q, BIG) == 0 ? 0 : 3);
    }
    madvise(big + 8 * MB, MB, MADV_DONTNEED);
    unsigned char *moved = mremap(big + 16 * MB, MB, MB, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
    munmap(big + 32 * MB, MB);
    unsigned char *fresh = mmap(big + 32 * MB, MB, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    CHECK(moved == spot);
    CHECK(fresh == big + 32 * MB);
    unsigned char *q = malloc(BIG);
    fill(q, BIG, 1);
    CHECK(memcmp(big, q, 8 * MB) == 0);
    CHECK(all_zero(big + 8 * MB, MB));
    CHECK(memcmp(big + 9 * MB, q + 9 * MB, 7 * MB) == 0);
    CHECK(memcmp(moved, q + 16 * MB, MB) == 0);
    CHECK(memcmp(big + 17 * MB, q + 17 * MB, 15 * MB) == 0);
    CHECK(all_zero(fresh, MB));
    CHECK(memcmp(big + 33 * MB, q + 33 * MB, BIG - 33 * MB) == 0);
    int st = -1;
    CHECK(waitpid(c, &st, 0) == c);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    printf(fails ? "DONE\n" : "PASS\n");
    return 0;
}
"#;

/// Starts the program and waits for it; returns its pid and the address
/// of its 64 MiB region.
fn start(dir: &Path, bin: &Path, out: &Path) -> (i32, u64) {
    let go = dir.join("go");
    let pid = spawn(bin, &[go.to_str().expect("utf8")], Some(out));
    wait_for("ready", || {
        lines(out).first().is_some_and(|l| l.starts_with("ready "))
    });
    let first = lines(out)[0].clone();
    let addr = u64::from_str_radix(&first["ready ".len()..], 16).expect("address");
    (pid, addr)
}

fn restore_lazy(img: &Path) -> std::process::Output {
    let i = img.to_string_lossy().into_owned();
    torpor(&["restore", "--image", &i, "--lazy"])
}

#[test]
fn a_lazy_tree_forks_drops_moves_and_remaps_while_its_pages_arrive() {
    become_subreaper();
    let dir = scratch("lazy-events");
    let bin = compile(&dir, "lazy", LAZY, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("lazy.img");
    let (pid, _) = start(&dir, &bin, &out);
    let mut reaper = Reaper::default();
    reaper.add(pid);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    // The program goes on as soon as it runs.
    std::fs::write(dir.join("go"), b"").expect("go");
    let o = restore_lazy(&img);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "restore failed: {err}");
    assert!(
        err.contains("torpor: the tree runs; its pages arrive lazily"),
        "{err}"
    );
    // The parent and the child forked while pages were missing.
    assert!(
        err.contains("torpor: lazily: 2 process(es), "),
        "not served lazily to both: {err}"
    );
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..], ["PASS".to_string()]);
}

/// Offset and payload length of the `Pages` record (kind 8) whose pages
/// start at `vaddr`, walking the frames: `[len: u32 LE][kind][payload][crc]`.
fn page_record(image: &[u8], vaddr: u64) -> (usize, usize) {
    let mut at = 0usize;
    while at + 5 <= image.len() {
        let len = u32::from_le_bytes(image[at..at + 4].try_into().expect("4 bytes")) as usize;
        if image[at + 4] == 8 {
            // The payload starts with the address, a postcard varint.
            let mut v = 0u64;
            for (i, b) in image[at + 5..at + 15].iter().enumerate() {
                v |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    break;
                }
            }
            if v == vaddr {
                return (at, len);
            }
        }
        at += 9 + len;
    }
    panic!("no page record at {vaddr:#x}");
}

#[test]
fn a_damaged_page_record_found_after_the_tree_runs_kills_it() {
    become_subreaper();
    let dir = scratch("lazy-damaged");
    let bin = compile(&dir, "lazy", LAZY, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("lazy.img");
    let (pid, big) = start(&dir, &bin, &out);
    let mut reaper = Reaper::default();
    reaper.add(pid);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    // One byte of page data in the middle of the region: the restore reads
    // only the record's head before the tree runs.
    let mut image = std::fs::read(&img).expect("image");
    let (at, len) = page_record(&image, big + (40 << 20));
    image[at + 5 + len - 1] ^= 0x5a;
    std::fs::write(&img, &image).expect("damaged image");
    let o = restore_lazy(&img);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a damaged image restored: {err}");
    assert!(
        err.contains("torpor: the tree runs; its pages arrive lazily"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "torpor: error: lazy pages: CRC mismatch in the pages record at offset {at}:"
        )),
        "{err}"
    );
    // Killed, never let go with wrong memory: it printed nothing more.
    assert_eq!(reap(pid), libc::SIGKILL);
    assert_eq!(lines(&out).len(), 1);
}

/// A seccomp filter refusing `userfaultfd` with EPERM, and allowing
/// everything else.
fn refuse_userfaultfd() -> std::io::Result<()> {
    let nr = u32::try_from(libc::SYS_userfaultfd).expect("syscall number");
    // BPF opcodes are 16 bits wide; libc declares them as u32.
    let op = |c: u32| u16::try_from(c).expect("BPF opcode");
    let prog = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
            jt: 0,
            jf: 1,
            k: nr,
        },
        libc::sock_filter {
            code: op(libc::BPF_RET | libc::BPF_K),
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM.unsigned_abs(),
        },
        libc::sock_filter {
            code: op(libc::BPF_RET | libc::BPF_K),
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).expect("4 instructions"),
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the filter `fprog` points at, which lives
    // until the call returns.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn without_userfaultfd_a_lazy_restore_is_eager_and_says_so_once() {
    become_subreaper();
    let dir = scratch("lazy-fallback");
    let bin = compile(&dir, "lazy", LAZY, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("lazy.img");
    let (pid, _) = start(&dir, &bin, &out);
    let mut reaper = Reaper::default();
    reaper.add(pid);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    std::fs::write(dir.join("go"), b"").expect("go");
    let mut cmd = Command::new(TORPOR);
    cmd.args(["restore", "--image", img.to_str().expect("utf8"), "--lazy"])
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(refuse_userfaultfd);
    }
    let o = cmd.output().expect("run torpor");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "restore failed: {err}");
    // `torpor[PID]: warning: ...`
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("lazy restore unavailable"))
        .filter_map(|l| l.split_once("]: ").map(|(_, m)| m))
        .collect();
    assert_eq!(
        said,
        ["warning: lazy restore unavailable (userfaultfd: Operation not permitted (os error 1)): restoring eagerly"],
        "{err}"
    );
    assert!(!err.contains("lazily"), "{err}");
    assert!(!err.contains("the tree runs"), "{err}");
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..], ["PASS".to_string()]);
}

/// While torpor still serves a lazy restore (held here with SIGSTOP, its
/// pages missing), a dump of the tree is refused: pagemap would show the
/// missing pages as absent and the image would lose them. Once torpor goes
/// on, every page comes in and the program is exact.
#[test]
fn a_tree_still_being_restored_lazily_is_not_dumped() {
    use std::io::BufRead;
    become_subreaper();
    let dir = scratch("lazy-dump");
    let bin = compile(&dir, "lazy", LAZY, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("lazy.img");
    let (pid, _) = start(&dir, &bin, &out);
    let mut reaper = Reaper::default();
    reaper.add(pid);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let mut t = Command::new(TORPOR)
        .args(["restore", "--image", img.to_str().expect("utf8"), "--lazy"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run torpor");
    let tpid = i32::try_from(t.id()).expect("pid");
    let mut err = std::io::BufReader::new(t.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(err.read_line(&mut line).expect("stderr"), 0, "{seen}");
        seen.push_str(&line);
        if line.contains("the tree runs; its pages arrive lazily") {
            break;
        }
    }
    // SAFETY: kill has no memory effects; tpid is our child.
    assert_eq!(unsafe { libc::kill(tpid, libc::SIGSTOP) }, 0);
    let img2 = dir.join("again.img");
    let i2 = img2.to_string_lossy().into_owned();
    let o = torpor(&["dump", "--pid", &pid.to_string(), "--image", &i2]);
    let why = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "dumped mid-restore: {why}");
    assert!(
        why.contains(&format!("of process {pid} is registered with userfaultfd")),
        "{why}"
    );
    assert!(alive(pid), "the refused dump left the tree running");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(tpid, libc::SIGCONT) }, 0);
    std::io::Read::read_to_string(&mut err, &mut seen).expect("stderr");
    assert!(t.wait().expect("torpor").success(), "{seen}");
    std::fs::write(dir.join("go"), b"").expect("go");
    assert_eq!(reap(pid), 0);
    assert_eq!(lines(&out)[1..], ["PASS".to_string()]);
}

//! File locks on files the process also maps shared. POSIX locks belong to
//! the process and end with any close of a descriptor of their file, so
//! they must survive the restore's own descriptors of the mapped files
//! being closed in the task. The real case: a SQLite writer in WAL mode
//! locks its database and its `-shm` index, both mapped shared; without
//! those locks a second connection closing the database believes itself
//! the last one, checkpoints and deletes `-wal` and `-shm` under the writer.

mod engine_util;
use engine_util::*;

use std::path::Path;
use std::process::Command;

/// The `lock:` lines of every fd of `pid`, as `fd: KIND MODE start end`,
/// sorted (the kernel lists an inode's locks in the order they were taken;
/// the holder's pid and the inode are left out: the inode is the same
/// file's, the pid is checked to be the process's own).
fn locks(pid: i32) -> Vec<String> {
    let mut out = Vec::new();
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    for fd in fds {
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w.len(), 8, "lock line {l:?}");
            // An OFD lock belongs to no process.
            let holder = if w[1] == "OFDLCK" { -1 } else { pid };
            assert_eq!(w[4], holder.to_string(), "holder of {l:?}");
            out.push(format!(
                "{fd}: {} {} {} {} {}",
                w[1], w[2], w[3], w[6], w[7]
            ));
        }
    }
    out.sort();
    out
}

/// The mappings of `pid` of files under `dir`: `perms path`.
fn mapped(pid: i32, dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut v: Vec<String> = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("maps")
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let path = w.get(5)?;
            path.starts_with(&dir)
                .then(|| format!("{} {}", w[1], &path[dir.len() + 1..]))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

const WRITER: &str = r#"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
# Reads through a shared mapping of the database as well as of the -shm.
db.execute("PRAGMA mmap_size=1048576")
db.execute("CREATE TABLE t(n INTEGER)")
db.execute("PRAGMA wal_checkpoint")
i = 0
while True:
    db.execute("INSERT INTO t VALUES (?)", (i,))
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == i + 1
    print(i, flush=True)
    i += 1
    time.sleep(0.02)
"#;

/// Another connection: opens the database, reads, closes. Prints the
/// number of rows it saw.
const READER: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(c.execute("SELECT count(*) FROM t").fetchone()[0])
c.close()
"#;

/// Every row of the database, in order.
const ROWS: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(" ".join(str(r[0]) for r in c.execute("SELECT n FROM t ORDER BY rowid")))
c.close()
"#;

fn python(script: &Path, db: &Path) -> String {
    let o = Command::new("python3")
        .arg(script)
        .arg(db)
        .output()
        .expect("run python3");
    assert!(
        o.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn last_count(out: &Path) -> u64 {
    lines(out)
        .last()
        .map(|l| l.parse().expect("number"))
        .unwrap_or(0)
}

#[test]
fn sqlite_wal_writer_keeps_its_locks_and_data_when_another_connection_closes() {
    become_subreaper();
    let dir = scratch("sqlite-wal");
    let writer = dir.join("writer.py");
    let reader = dir.join("reader.py");
    let rows = dir.join("rows.py");
    std::fs::write(&writer, WRITER).expect("writer");
    std::fs::write(&reader, READER).expect("reader");
    std::fs::write(&rows, ROWS).expect("rows");
    let db = dir.join("db");
    let out = dir.join("out");
    let img = dir.join("sqlite.img");
    let wp = writer.to_string_lossy().into_owned();
    let dbp = db.to_string_lossy().into_owned();
    let pid = spawn(Path::new("python3"), &[&wp, &dbp], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("20 rows written", || last_count(&out) >= 20);
    // The case at hand: both locked files are mapped shared.
    assert_eq!(mapped(pid, &dir), vec!["r--s db", "rw-s db-shm"]);
    // Between two transactions: a read lock in the database's shared
    // range, and the -shm's "DMS" byte that tells other connections the
    // index is in use (a transaction adds locks on other bytes of the -shm
    // for its duration).
    let idle = [
        "3: POSIX ADVISORY READ 1073741826 1073742335",
        "5: POSIX ADVISORY READ 128 128",
    ];
    wait_for("the writer between two transactions", || locks(pid) == idle);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert!(alive(pid), "the writer runs again");
    wait_for("the writer's locks again", || locks(pid) == idle);
    let before = last_count(&out);
    wait_for("the writer writing again", || {
        last_count(&out) >= before + 10
    });

    let seen: u64 = python(&reader, &db).parse().expect("a count");
    assert!(seen > before, "the other connection saw {seen} rows");
    // It was not the last connection: the WAL and its index stay.
    assert!(dir.join("db-wal").exists(), "db-wal deleted");
    assert!(dir.join("db-shm").exists(), "db-shm deleted");
    wait_for("the writer's locks still", || locks(pid) == idle);
    let after = last_count(&out);
    wait_for("the writer writing after the other connection", || {
        last_count(&out) >= after + 10
    });
    assert!(alive(pid), "the writer still runs");

    // Every row it reported committed, in the database as any connection
    // sees it: none lost into a deleted WAL.
    // SAFETY: kill with plain integers.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(reap(pid), libc::SIGKILL);
    reaper.0.clear();
    let last = last_count(&out);
    let all: Vec<u64> = python(&rows, &db)
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    // The writer may have been killed between a commit and its report.
    let n = all.len() as u64;
    assert!(
        n == last + 1 || n == last + 2,
        "{n} rows, last reported {last}"
    );
    assert_eq!(all, (0..n).collect::<Vec<u64>>());
}

const LOCKER: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>
static int lock(int fd, int cmd, short type, off_t start, off_t len) {
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET,
                        .l_start = start, .l_len = len };
    return fcntl(fd, cmd, &fl);
}
int main(int argc, char **argv) {
    (void)argc;
    /* fd 3 and 4: one file, mapped shared through fd 3 and privately
       through a descriptor closed at once; fd 5: a second file, mapped
       shared only through a descriptor closed at once. */
    int a = open(argv[1], O_RDWR | O_CREAT, 0600);
    int b = open(argv[1], O_RDWR);
    int c = open(argv[2], O_RDWR | O_CREAT, 0600);
    if (a != 3 || b != 4 || c != 5) return 2;
    if (ftruncate(a, 8192) || ftruncate(c, 4096)) return 3;
    char *s = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, a, 0);
    int t = open(argv[1], O_RDONLY);
    char *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, t, 4096);
    close(t);
    int u = open(argv[2], O_RDWR);
    char *q = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, u, 0);
    close(u);
    if (s == MAP_FAILED || p == MAP_FAILED || q == MAP_FAILED) return 4;
    s[0] = 'x';
    q[0] = 'y';
    if (lock(a, F_SETLK, F_WRLCK, 0, 10)) return 5;
    if (lock(a, F_SETLK, F_RDLCK, 4096, 0)) return 6;
    if (lock(b, F_OFD_SETLK, F_WRLCK, 100, 10)) return 7;
    if (flock(b, LOCK_EX)) return 8;
    if (lock(c, F_SETLK, F_WRLCK, 7, 1)) return 9;
    if (lock(c, F_OFD_SETLK, F_RDLCK, 20, 5)) return 10;
    puts("ready");
    fflush(stdout);
    for (;;) pause();
}
"#;

/// What `LOCKER` holds, as [`locks`] shows it.
const LOCKER_HOLDS: [&str; 6] = [
    "3: POSIX ADVISORY READ 4096 EOF",
    "3: POSIX ADVISORY WRITE 0 9",
    "4: FLOCK ADVISORY WRITE 0 EOF",
    "4: OFDLCK ADVISORY WRITE 100 109",
    "5: OFDLCK ADVISORY READ 20 24",
    "5: POSIX ADVISORY WRITE 7 7",
];

#[test]
fn posix_ofd_and_flock_locks_on_files_mapped_shared_and_private_come_back() {
    become_subreaper();
    let dir = scratch("locks-mapped");
    let bin = compile(&dir, "locker", LOCKER, &[]);
    let out = dir.join("out");
    let img = dir.join("locks.img");
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data dir");
    let one = data.join("one").to_string_lossy().into_owned();
    let two = data.join("two").to_string_lossy().into_owned();
    let pid = spawn(&bin, &[&one, &two], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || lines(&out) == ["ready"]);
    assert_eq!(mapped(pid, &data), vec!["r--p one", "rw-s one", "rw-s two"]);
    assert_eq!(locks(pid), LOCKER_HOLDS);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img);
    assert!(runs(pid, &bin), "the locker runs again");
    assert_eq!(locks(pid), LOCKER_HOLDS);
}

#[test]
fn posix_lock_taken_meanwhile_by_another_process_fails_the_restore_naming_fd_and_range() {
    use std::os::fd::AsRawFd;
    become_subreaper();
    let dir = scratch("locks-conflict");
    let bin = compile(&dir, "locker", LOCKER, &[]);
    let out = dir.join("out");
    let img = dir.join("locks.img");
    let data = dir.join("data");
    std::fs::create_dir(&data).expect("data dir");
    let one = data.join("one").to_string_lossy().into_owned();
    let two = data.join("two").to_string_lossy().into_owned();
    let pid = spawn(&bin, &[&one, &two], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("ready", || lines(&out) == ["ready"]);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);

    // This process takes byte 5 of "one", inside the restored process's
    // write lock on bytes 0-9.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&one)
        .expect("open one");
    let take = |t: i32| {
        let fl = libc::flock {
            l_type: i16::try_from(t).expect("lock type"),
            l_whence: 0,
            l_start: 5,
            l_len: 1,
            l_pid: 0,
        };
        // SAFETY: fcntl reads one struct flock on our own fd.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &raw const fl) };
        assert_eq!(rc, 0, "F_SETLK");
    };
    take(libc::F_WRLCK);
    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["restore", "--image", &i]);
    assert!(!o.status.success(), "restored over a conflicting lock");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "rebuild {pid}: taking the POSIX lock on fd 3 (bytes 0-9) again: \
             Resource temporarily unavailable (os error 11)"
        )),
        "{err}"
    );
    assert!(!alive(pid), "the failed restore left process {pid}");
    take(libc::F_UNLCK);
    restore(&img);
    reaper.add(pid);
    assert!(runs(pid, &bin), "the locker runs");
    assert_eq!(locks(pid), LOCKER_HOLDS);
}

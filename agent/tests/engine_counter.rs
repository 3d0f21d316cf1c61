//! The first milestone: a counter writing to a regular file is dumped
//! (and killed), restored with the same pid, and continues without a gap or
//! a repeat.

mod engine_util;
use engine_util::*;

const COUNTER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    long ms = atol(argv[1]);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(ms * 1000);
    }
}
"#;

fn numbers(path: &std::path::Path) -> Vec<u64> {
    lines(path)
        .iter()
        .map(|l| l.parse().expect("a number per line"))
        .collect()
}

#[test]
fn counter_continues_after_restore_with_same_pid() {
    become_subreaper();
    let dir = scratch("counter");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("counter.img");
    let pid = spawn(&bin, &["50"], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("three numbers", || lines(&out).len() >= 3);

    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL, "the dumped counter is killed");
    let before = numbers(&out);
    let last = *before.last().expect("some output");

    restore(&img);
    assert!(alive(pid), "restored counter runs with pid {pid}");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
    assert_eq!(exe, bin);
    let mut fds: Vec<(i32, std::path::PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_str()?.parse().ok()?,
                std::fs::read_link(e.path()).ok()?,
            ))
        })
        .collect();
    fds.sort();
    let null = std::path::PathBuf::from("/dev/null");
    assert_eq!(
        fds,
        vec![(0, null.clone()), (1, out.clone()), (2, null)],
        "exactly the original fds"
    );
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/1")).expect("fdinfo");
    let pos: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .expect("pos")
        .trim()
        .parse()
        .expect("number");
    let len = std::fs::metadata(&out).expect("out").len();
    assert!(
        pos == len || pos + 4 >= len,
        "stdout offset {pos} continues at the end of {len} bytes"
    );
    wait_for("five more numbers", || {
        numbers(&out).len() as u64 >= last + 6
    });
    kill_and_reap(pid);

    let all = numbers(&out);
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want, "consecutive numbers, no gap, no repeat");
    assert!(all.len() as u64 > last + 5);
}

#[test]
fn restored_counter_dumps_and_restores_again() {
    become_subreaper();
    let dir = scratch("counter-twice");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let out = dir.join("out.txt");
    let img1 = dir.join("first.img");
    let img2 = dir.join("second.img");
    let pid = spawn(&bin, &["30"], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("three numbers", || lines(&out).len() >= 3);
    dump(pid, &img1, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img1);
    let n1 = numbers(&out).len() as u64;
    wait_for("more numbers", || numbers(&out).len() as u64 >= n1 + 3);

    // The restored counter is re-parented to this subreaper.
    dump(pid, &img2, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    restore(&img2);
    let n2 = numbers(&out).len() as u64;
    wait_for("more numbers again", || {
        numbers(&out).len() as u64 >= n2 + 3
    });
    kill_and_reap(pid);
    let all = numbers(&out);
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want, "consecutive across two dumps and restores");
}

#[test]
fn leave_running_keeps_the_counter_and_restore_refuses_its_pid() {
    become_subreaper();
    let dir = scratch("counter-leave");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("leave.img");
    let pid = spawn(&bin, &["20"], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("three numbers", || lines(&out).len() >= 3);
    dump(pid, &img, &["--leave-running"]);
    assert!(alive(pid), "--leave-running keeps the tree");
    let n = numbers(&out).len();
    wait_for("the counter to go on", || numbers(&out).len() >= n + 3);

    let before: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let i = img.to_string_lossy().into_owned();
    let o = torpor(&["restore", "--image", &i]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("torpor: error: validate: "), "{err}");
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("in use"),
        "{err}"
    );
    let after: Vec<String> = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let new: Vec<&String> = after
        .iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/exe"))
                .map(|e| e == bin)
                .unwrap_or(false)
        })
        .collect();
    assert!(new.is_empty(), "nothing left behind: {new:?}");
    kill_and_reap(pid);
    let all = numbers(&out);
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want, "the dump did not disturb the counter");
}

#[test]
fn counter_through_the_ab_store() {
    become_subreaper();
    let dir = scratch("counter-store");
    let bin = compile(&dir, "counter", COUNTER, &[]);
    let out = dir.join("out.txt");
    let store = dir.join("store.bin");
    let s = store.to_string_lossy().into_owned();
    let pid = spawn(&bin, &["30"], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("three numbers", || lines(&out).len() >= 3);
    let o = torpor(&["dump", "--pid", &pid.to_string(), "--store", &s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(reap(pid), libc::SIGKILL);
    let n = numbers(&out).len() as u64;
    let o = torpor(&["restore", "--store", &s]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("more numbers", || numbers(&out).len() as u64 >= n + 3);
    kill_and_reap(pid);
    let all = numbers(&out);
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want);
}

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
    lines(path).iter().map(|l| l.parse().expect("a number per line")).collect()
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
    wait_for("five more numbers", || numbers(&out).len() as u64 >= last + 6);
    kill_and_reap(pid);

    let all = numbers(&out);
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want, "consecutive numbers, no gap, no repeat");
    assert!(all.len() as u64 > last + 5);
}

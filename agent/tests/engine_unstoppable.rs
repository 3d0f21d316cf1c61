//! Trees a dump cannot stop or cannot restore are refused within a bound,
//! before any task is seized, and run on as if nothing had happened: a
//! parent waiting in vfork() for a child that never execs nor exits, and
//! the init of a pid namespace.

mod engine_util;
use engine_util::*;

use std::time::{Duration, Instant};

/// The parent vforks a child that never execs nor exits: the parent sleeps
/// uninterruptibly until the child is killed, then says so.
const VFORK: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pid_t c = vfork();
    if (c == 0) {
        for (;;)
            pause();
    }
    printf("resumed after %d\n", (int)c);
    for (;;)
        pause();
}
"#;

/// The parent unshares a pid namespace and forks its init, which forks a
/// child of its own; the init counts, so a frozen init shows.
const PIDNS: &str = r#"
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (unshare(CLONE_NEWPID) != 0)
        return 2;
    pid_t init = fork();
    if (init < 0)
        return 3;
    if (init == 0) {
        if (fork() == 0) {
            for (;;)
                pause();
        }
        for (unsigned long i = 0;; i++) {
            printf("%d %lu\n", (int)getpid(), i);
            usleep(20000);
        }
    }
    for (;;)
        pause();
}
"#;

fn field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect()
}

fn ns(pid: impl std::fmt::Display) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .expect("pid namespace link")
        .to_string_lossy()
        .into_owned()
}

/// `torpor dump` of `pid`: it must fail within 10 s; returns the first line
/// of its error output.
fn refused_dump(pid: i32, img: &std::path::Path) -> String {
    let t = Instant::now();
    let o = torpor(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--image",
        img.to_str().expect("utf8"),
    ]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the refusal took {:?}",
        t.elapsed()
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(!img.exists(), "a refused dump leaves no image");
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_vfork_in_progress_is_refused_and_the_tree_runs_on() {
    become_subreaper();
    let dir = scratch("vfork");
    let bin = compile(&dir, "vfork", VFORK, &[]);
    let out = dir.join("out.txt");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("the vfork child", || children(pid).len() == 1);
    let child = children(pid)[0];
    reaper.add(child);
    wait_for("the parent to wait for its vfork child", || {
        field(pid, "State:").starts_with('D')
    });
    let img = dir.join("vfork.img");
    assert_eq!(
        refused_dump(pid, &img),
        format!(
            "torpor: error: freeze: process {pid} is waiting in vfork() for its child to exec or exit; a vfork in progress cannot be checkpointed"
        )
    );
    // Nobody traces either task, and the parent goes on once its child is gone.
    assert_eq!(field(pid, "TracerPid:"), "0");
    assert_eq!(field(child, "TracerPid:"), "0");
    assert!(alive(child));
    kill_and_reap(child);
    wait_for("the parent to resume", || {
        lines(&out) == vec![format!("resumed after {child}")]
    });
    assert!(alive(pid));
    assert_eq!(field(pid, "TracerPid:"), "0");
}

#[test]
fn a_pid_namespace_init_is_refused_and_runs_on() {
    become_subreaper();
    let dir = scratch("pidns");
    let bin = compile(&dir, "pidns", PIDNS, &[]);
    let out = dir.join("out.txt");
    let parent = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(parent);
    wait_for("the namespace's init", || children(parent).len() == 1);
    let init = children(parent)[0];
    reaper.add(init);
    wait_for("the init's child", || children(init).len() == 1);
    reaper.add(children(init)[0]);
    wait_for("output", || lines(&out).len() >= 3);
    assert_eq!(field(init, "NSpid:"), format!("{init}\t1"));
    let own = ns("self");
    let inner = ns(init);
    let img = dir.join("pidns.img");
    let why = format!(
        "torpor restores every pid in its own pid namespace {own}, so this tree cannot be checkpointed"
    );
    assert_eq!(
        refused_dump(init, &img),
        format!(
            "torpor: error: freeze: process {init} is the init (pid 1) of pid namespace {inner}; {why}"
        )
    );
    // The parent's children go into the new namespace.
    assert_eq!(
        refused_dump(parent, &img),
        format!(
            "torpor: error: freeze: process {parent} has unshared pid namespace {inner} for its children; {why}"
        )
    );
    // The init keeps counting, untraced.
    assert_eq!(field(init, "TracerPid:"), "0");
    let before = lines(&out).len();
    wait_for("more output", || lines(&out).len() >= before + 3);
    assert!(lines(&out).iter().all(|l| l.starts_with("1 ")));
}

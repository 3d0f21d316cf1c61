//! Children that keep exiting while their tree is dumped. In a file of its
//! own: it churns through pids, which must not race the pid reuse checks of
//! other tests.

mod engine_util;
use engine_util::*;

const CHURN: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        pid_t c = fork();
        if (c == 0) _exit(0);
        usleep(300);
        waitpid(c, NULL, 0);
        if (i % 100 == 0) printf("%lu\n", i / 100);
    }
}
"#;

/// Children that exit while the tree is being frozen or read (zombies,
/// vanished tasks): each dump either succeeds or fails naming the step and
/// the task, and the tree runs on untraced either way.
#[test]
fn tasks_exiting_mid_dump_never_harm_the_tree() {
    become_subreaper();
    let dir = scratch("fail-churn");
    let bin = compile(&dir, "churn", CHURN, &[]);
    let out = dir.join("out.txt");
    let pid = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 2);
    let mut failures = 0;
    for i in 0..20 {
        let img = dir.join(format!("churn-{i}.img"));
        let o = torpor(&[
            "dump",
            "--pid",
            &pid.to_string(),
            "--image",
            img.to_str().expect("utf8"),
            "--leave-running",
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        match o.status.code() {
            Some(0) => assert!(img.exists()),
            Some(1) => {
                failures += 1;
                assert!(!img.exists(), "a failed dump leaves no image");
                let first = err.lines().next().unwrap_or("");
                assert!(
                    first.starts_with("torpor: error: freeze: ")
                        || first.starts_with("torpor: error: collect ")
                        || first.starts_with("torpor: error: files ")
                        || first.starts_with("torpor: error: parasite ")
                        || first.starts_with("torpor: error: memory "),
                    "{err}"
                );
                assert!(
                    first.contains("is gone")
                        || first.contains("zombie")
                        || first.contains("No such"),
                    "{err}"
                );
            }
            other => panic!("dump ended with {other:?}: {err}"),
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(
            status.lines().any(|l| l == "TracerPid:\t0"),
            "detached after attempt {i}"
        );
    }
    let n = lines(&out).len();
    wait_for("the tree to go on", || lines(&out).len() >= n + 2);
    kill_and_reap(pid);
    let all: Vec<u64> = lines(&out)
        .iter()
        .map(|l| l.parse().expect("number"))
        .collect();
    let want: Vec<u64> = (0..all.len() as u64).collect();
    assert_eq!(all, want);
    eprintln!("{failures} of 20 dumps met an exiting child");
}

const PAIR: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/resource.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct rlimit rl = { 4096, 8192 };
    setrlimit(RLIMIT_NOFILE, &rl);
    pid_t c = fork();
    if (c == 0) {
        for (;;) pause();
    }
    printf("%d\n", c);
    for (;;) pause();
}
"#;

/// A failure after tasks exist (here a limit torpor may not raise) kills
/// every task created and names the process and the step.
#[test]
fn failure_after_creation_leaves_nothing_behind() {
    use std::os::unix::process::CommandExt;
    become_subreaper();
    let dir = scratch("fail-late");
    let bin = compile(&dir, "pair", PAIR, &[]);
    let out = dir.join("out.txt");
    let img = dir.join("pair.img");
    let root = spawn(&bin, &[], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(root);
    wait_for("child pid", || !lines(&out).is_empty());
    let child: i32 = lines(&out)[0].parse().expect("pid");
    reaper.add(child);
    dump(root, &img, &[]);
    assert_eq!(reap(root), libc::SIGKILL);
    assert_eq!(reap(child), libc::SIGKILL);

    let mut cmd = std::process::Command::new(TORPOR);
    cmd.args(["restore", "--image", img.to_str().expect("utf8")]);
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
    let o = cmd.output().expect("run torpor");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("torpor: error: create tasks: process "),
        "{err}"
    );
    assert!(
        err.contains("setrlimit 7: Operation not permitted"),
        "{err}"
    );
    // By program, not by pid alone: other tests here churn through pids.
    assert!(!runs(root, &bin), "root {root} left behind");
    assert!(!runs(child, &bin), "child {child} left behind");
}

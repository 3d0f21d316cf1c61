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
    assert_counted_from_zero(&out);
    eprintln!("{failures} of 20 dumps met an exiting child");
}

//! `torpor check` probes the kernel features it relies on, one line each.

use std::process::Command;

#[test]
fn check_reports_every_feature_on_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_torpor"))
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let names = [
        "ptrace-seize",
        "process_vm_readv",
        "proc-pagemap",
        "proc-map_files",
        "pr_set_mm_map",
        "pr_get_tid_address",
        "kcmp",
        "clone3-set_tid",
        "pidfd_getfd",
        "time-namespace",
        "sysv-shm-ids",
        "gpio-cdev",
    ];
    for name in names {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(name))
            .collect();
        assert_eq!(lines.len(), 1, "expected one line for {name} in:\n{text}");
        let state = lines[0].split_whitespace().next().unwrap();
        assert!(
            ["present", "MISSING", "absent"].contains(&state),
            "bad state in {:?}",
            lines[0]
        );
    }
    // The test machine is a root x86_64 host: every required feature must be there,
    // and the exit status must agree with the summary line.
    assert!(text.contains("all required features present"), "{text}");
    assert_eq!(out.status.code(), Some(0));
}

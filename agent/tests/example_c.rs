//! examples/hibernate.c speaks the protocol from docs/protocol.md by hand:
//! compiled with cc and run against a daemon with a recording engine, it
//! gets exactly the replies the daemon sent.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Compiles the example once per test into `dir`.
fn compile(dir: &Path) -> PathBuf {
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hibernate.c");
    let bin = dir.join("hibernate");
    let out = Command::new("cc")
        .args([
            "-std=c99",
            "-D_DEFAULT_SOURCE",
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-o",
        ])
        .arg(&bin)
        .arg(source)
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "cc warned:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn run_captured(bin: &Path, args: &[&str]) -> (i32, Output) {
    let child = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    (pid, child.wait_with_output().unwrap())
}

#[test]
fn c_example_hibernates_and_prints_resumed() {
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let mut supply = SimulatedSupply::new();
    // More than 32 bits, so the example's 64-bit varint decoding is exercised.
    supply.slept_ms = 5_000_000_123;
    let d = start("c-resumed", vec![], engine.clone(), supply.clone());
    let bin = compile(&d.dir);
    let socket = d.socket.to_str().unwrap();
    let (pid, out) = run_captured(&bin, &[socket, "3600"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "resumed: slept_for_ms=5000000123 clock=wall generation=7\n"
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        engine.calls(),
        vec![EngineCall::Hibernate {
            pid,
            wake: Some(3600),
            conn_peer_pid: pid
        }]
    );
    assert_eq!(
        supply.calls(),
        vec![
            SupplyCall::Prepare,
            SupplyCall::ArmWake(3600),
            SupplyCall::Cut,
            SupplyCall::Release
        ]
    );

    // Without a wake time the option byte is 00.
    let (pid, out) = run_captured(&bin, &[socket]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        engine.calls()[1],
        EngineCall::Hibernate {
            pid,
            wake: None,
            conn_peer_pid: pid
        }
    );
}

#[test]
fn c_example_prints_the_daemons_error() {
    let engine = FakeEngine::new(EngineOutcome::DumpFails(
        "/proc/PID/pagemap: permission denied".into(),
    ));
    let d = start("c-error", vec![], engine.clone(), SimulatedSupply::new());
    let bin = compile(&d.dir);
    let (pid, out) = run_captured(&bin, &[d.socket.to_str().unwrap(), "60"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: DumpFailed: pid {pid} not hibernated: checkpoint failed: /proc/PID/pagemap: permission denied\n"
        )
    );
    assert_eq!(out.status.code(), Some(1));

    let mut supply = SimulatedSupply::new();
    supply.wake = false;
    let d2 = start(
        "c-unsupported",
        vec![],
        FakeEngine::new(EngineOutcome::Store(STORED)),
        supply,
    );
    let (_, out) = run_captured(&bin, &[d2.socket.to_str().unwrap(), "60"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: Unsupported: wake_after_s needs an RTC wake alarm, and rtc.device is \"none\"\n"
    );
    assert_eq!(out.status.code(), Some(1));
}

//! The power sequence against fake devices: exact order and values, on its
//! own and driven by the daemon.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use torpor::config::PowerConfig;
use torpor::power::{Power, PowerDown};
use torpor::protocol::{ErrorKind, Target};
use torpor_client::Client;

const RTC_NOW: u64 = 1_700_000_000;

fn settings(active_low: bool) -> PowerConfig {
    PowerConfig {
        chip: "gpiochip0".into(),
        line: 26,
        active_low,
        hold_ms: 100,
        timeout_ms: 3000,
    }
}

fn power(active_low: bool, rtc: bool) -> (Power<FakeLine, FakeAlarm, FakeSystem>, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let line = FakeLine {
        log: log.clone(),
        fail_request: false,
    };
    let alarm = rtc.then(|| {
        (
            "/sys/class/rtc/rtc0/wakealarm".to_string(),
            FakeAlarm {
                log: log.clone(),
                now: RTC_NOW,
                fail_write: false,
            },
        )
    });
    let system = FakeSystem { log: log.clone() };
    (Power::new(settings(active_low), line, alarm, system), log)
}

fn take(log: &Log) -> Vec<Device> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn full_sequence_active_high_with_wake_alarm() {
    let (mut p, log) = power(false, true);
    assert!(p.wake_available());
    p.prepare().unwrap();
    assert_eq!(
        take(&log),
        vec![Device::Request {
            chip: "gpiochip0".into(),
            line: 26,
            high: false
        }]
    );
    assert_eq!(p.arm_wake(3600).unwrap(), RTC_NOW + 3600);
    assert_eq!(
        take(&log),
        vec![
            Device::AlarmWrite("0".into()),
            Device::RtcNow,
            Device::AlarmWrite("1700003600".into())
        ]
    );
    let e = p.cut().unwrap_err();
    assert_eq!(
        take(&log),
        vec![
            Device::Sync,
            Device::Sleep(100),
            Device::Set { high: true },
            Device::Sleep(3000),
            Device::Sync,
            Device::PowerOff,
        ]
    );
    assert_eq!(
        e.to_string(),
        "still running 3000 ms after gpiochip0 line 26 went active, and reboot(POWER_OFF) failed: Operation not permitted (os error 1)"
    );
}

#[test]
fn active_low_inverts_both_levels() {
    let (mut p, log) = power(true, false);
    assert!(!p.wake_available());
    p.prepare().unwrap();
    p.cut().unwrap_err();
    let got = take(&log);
    assert_eq!(
        got[0],
        Device::Request {
            chip: "gpiochip0".into(),
            line: 26,
            high: true
        }
    );
    assert_eq!(got[3], Device::Set { high: false });
}

#[test]
fn refusals_name_the_device() {
    let (mut p, log) = power(false, false);
    assert_eq!(
        p.arm_wake(5).unwrap_err().to_string(),
        "no RTC wake alarm is configured (rtc.device = \"none\")"
    );
    assert_eq!(
        p.cut().unwrap_err().to_string(),
        "the power line was not requested before the cut"
    );
    assert!(
        take(&log).is_empty(),
        "nothing is touched before the line is requested"
    );

    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let mut p = Power::new(
        settings(false),
        FakeLine {
            log: log.clone(),
            fail_request: true,
        },
        Some((
            "/sys/class/rtc/rtc0/wakealarm".to_string(),
            FakeAlarm {
                log: log.clone(),
                now: RTC_NOW,
                fail_write: true,
            },
        )),
        FakeSystem { log: log.clone() },
    );
    assert_eq!(
        p.prepare().unwrap_err().to_string(),
        "cannot request gpiochip0 line 26 as the power output: Device or resource busy (os error 16)"
    );
    assert_eq!(
        p.arm_wake(5).unwrap_err().to_string(),
        "cannot write \"0\" to the wake alarm /sys/class/rtc/rtc0/wakealarm: Device or resource busy (os error 16)"
    );
}

/// The daemon with the real sequence over fake devices: the cut "fails"
/// (the fake reboot returns EPERM), so the app gets PowerFailed, the image
/// is abandoned, the alarm cleared and the line released.
#[test]
fn daemon_drives_the_exact_device_sequence() {
    let (p, log) = power(false, true);
    let engine = FakeEngine::new(EngineOutcome::Store(STORED));
    let d = start("powerseq", vec![], engine.clone(), p);
    let mut target = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = target.id();
    let e = Client::connect(&d.socket)
        .unwrap()
        .hibernate_target(Target::Pid(pid), Some(60))
        .unwrap_err();
    target.kill().unwrap();
    target.wait().unwrap();
    assert_eq!(e.daemon_kind(), Some(ErrorKind::PowerFailed));
    assert_eq!(
        take(&log),
        vec![
            Device::Request {
                chip: "gpiochip0".into(),
                line: 26,
                high: false
            },
            Device::AlarmWrite("0".into()),
            Device::RtcNow,
            Device::AlarmWrite("1700000060".into()),
            Device::Sync,
            Device::Sleep(100),
            Device::Set { high: true },
            Device::Sleep(3000),
            Device::Sync,
            Device::PowerOff,
            Device::AlarmWrite("0".into()),
            Device::ReleaseLine,
        ]
    );
    let pid = i32::try_from(pid).unwrap();
    assert_eq!(
        engine.calls()[1],
        EngineCall::Abandon { pid, generation: 7 }
    );
}

/// The real sysfs alarm against a stand-in directory. `wakealarm` is a
/// FIFO held open here, so every byte written arrives in order.
#[test]
fn sysfs_alarm_writes_zero_then_the_rtc_epoch() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use torpor::power::devices::SysfsAlarm;

    let dir = temp_dir("rtc");
    let alarm = dir.join("wakealarm");
    std::fs::write(dir.join("since_epoch"), "1764201600\n").unwrap();
    nix::unistd::mkfifo(&alarm, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Read-write: opening does not wait for a writer, and the writer's open
    // does not wait for a reader.
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&alarm)
        .unwrap();
    let mut drain = || {
        let mut buf = [0u8; 64];
        match fifo.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => String::new(),
            Err(e) => panic!("{e}"),
        }
    };
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let mut p = Power::new(
        settings(false),
        FakeLine {
            log: log.clone(),
            fail_request: false,
        },
        Some((alarm.display().to_string(), SysfsAlarm::new(alarm.clone()))),
        FakeSystem { log },
    );
    assert_eq!(p.arm_wake(90).unwrap(), 1_764_201_690);
    assert_eq!(drain(), "01764201690");

    // An unreadable RTC time is named with its file, after the alarm was cleared.
    std::fs::write(dir.join("since_epoch"), "soon\n").unwrap();
    let e = p.arm_wake(90).unwrap_err();
    assert_eq!(drain(), "0");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot read the RTC time for the wake alarm {}: {}: \"soon\\n\": invalid digit found in string",
            alarm.display(),
            dir.join("since_epoch").display()
        )
    );
    p.disarm_wake().unwrap();
    assert_eq!(drain(), "0");
    std::fs::remove_dir_all(&dir).unwrap();
}

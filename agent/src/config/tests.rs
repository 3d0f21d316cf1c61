use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/etc/torpor.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(FILE))
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn empty_file_gives_the_documented_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.socket.path, PathBuf::from("/run/torpor.sock"));
    assert_eq!(
        (
            c.socket.owner.clone(),
            c.socket.group.clone(),
            c.socket.mode
        ),
        (Id::Num(0), Id::Num(0), 0o600)
    );
    assert_eq!(c.store.device, PathBuf::from("/dev/mmcblk0p3"));
    assert_eq!(
        c.power,
        PowerConfig {
            chip: "gpiochip0".into(),
            line: 26,
            active_low: false,
            hold_ms: 100,
            timeout_ms: 3000
        }
    );
    assert_eq!(
        c.rtc.wakealarm,
        Some(PathBuf::from("/sys/class/rtc/rtc0/wakealarm"))
    );
    assert_eq!(
        c.restore,
        RestoreConfig {
            attempts: 3,
            tty: PathBuf::from("/dev/console"),
            timens: true,
            lazy: false,
            tcp_established: false
        }
    );
    assert!(c.access.allow_users.is_empty());
    // Empty sections change nothing either.
    assert_eq!(
        parse("[socket]\n[store]\n[power]\n[rtc]\n[restore]\n[access]\n[log]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn every_key_is_read() {
    let c = parse(
        r#"
[socket]
path = "/run/app/torpor.sock"
owner = "root"
group = 20
mode = "0660"

[store]
device = "/dev/mmcblk0p4"

[power]
chip = "/dev/gpiochip1"
line = 63
active_low = true
hold_ms = 250
timeout_ms = 10000

[rtc]
device = "/sys/class/rtc/rtc1/wakealarm"

[restore]
attempts = 5
timens = false
lazy = true
tty = "/dev/ttyAMA0"
tcp_established = true

[access]
allow_users = ["pi", 1000]

[log]
target = "syslog"
socket = "/run/systemd/journal/dev-log"
"#,
    )
    .unwrap();
    assert_eq!(
        c,
        Config {
            origin: PathBuf::from(FILE),
            socket: SocketConfig {
                path: PathBuf::from("/run/app/torpor.sock"),
                owner: Id::Name("root".into()),
                group: Id::Num(20),
                mode: 0o660,
            },
            store: StoreConfig {
                device: PathBuf::from("/dev/mmcblk0p4"),
                allow_group_read: false,
            },
            power: PowerConfig {
                chip: "/dev/gpiochip1".into(),
                line: 63,
                active_low: true,
                hold_ms: 250,
                timeout_ms: 10_000
            },
            rtc: RtcConfig {
                wakealarm: Some(PathBuf::from("/sys/class/rtc/rtc1/wakealarm"))
            },
            restore: RestoreConfig {
                attempts: 5,
                tty: PathBuf::from("/dev/ttyAMA0"),
                timens: false,
                lazy: true,
                tcp_established: true
            },
            access: AccessConfig {
                allow_users: vec![Id::Name("pi".into()), Id::Num(1000)]
            },
            log: LogConfig {
                target: LogTarget::Syslog,
                socket: PathBuf::from("/run/systemd/journal/dev-log")
            },
            apps: Vec::new(),
        }
    );
    assert_eq!(
        parse("[rtc]\ndevice = \"none\"\n").unwrap().rtc.wakealarm,
        None
    );
}

#[test]
fn unknown_keys_are_named_with_their_section() {
    assert_eq!(
        err("[power]\nlin = 26\n"),
        "/etc/torpor.toml: unknown key `power.lin` (known here: chip, line, active_low, hold_ms, timeout_ms)"
    );
    assert_eq!(
        err("[powr]\nline = 26\n"),
        "/etc/torpor.toml: unknown key `powr` (known here: socket, store, power, rtc, restore, access, log, app)"
    );
    assert_eq!(
        err("verbose = true\n"),
        "/etc/torpor.toml: unknown key `verbose` (known here: socket, store, power, rtc, restore, access, log, app)"
    );
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(
        err("[power]\nline = \"26\"\n"),
        "/etc/torpor.toml: `power.line` must be an integer, found a string"
    );
    assert_eq!(
        err("[power]\nactive_low = 1\n"),
        "/etc/torpor.toml: `power.active_low` must be a boolean (true or false), found an integer"
    );
    assert_eq!(
        err("[socket]\nmode = 0o660\n"),
        "/etc/torpor.toml: `socket.mode` must be an octal string such as \"0660\", found an integer"
    );
    assert_eq!(
        err("power = 3\n"),
        "/etc/torpor.toml: `power` must be a table ([section]), found an integer"
    );
    assert_eq!(
        err("[access]\nallow_users = \"pi\"\n"),
        "/etc/torpor.toml: `access.allow_users` must be an array of user names or uids, found a string"
    );
    assert_eq!(
        err("[access]\nallow_users = [1.5]\n"),
        "/etc/torpor.toml: `access.allow_users` must be a name (string) or a numeric id (integer), found a float"
    );
    assert_eq!(
        err("[store]\ndevice = 3\n"),
        "/etc/torpor.toml: `store.device` must be a string, found an integer"
    );
}

#[test]
fn out_of_range_values_are_named() {
    assert_eq!(
        err("[power]\nline = 64\n"),
        "/etc/torpor.toml: `power.line` = 64: must be between 0 and 63"
    );
    assert_eq!(
        err("[power]\nline = -1\n"),
        "/etc/torpor.toml: `power.line` = -1: must be between 0 and 63"
    );
    assert_eq!(
        err("[power]\ntimeout_ms = 600001\n"),
        "/etc/torpor.toml: `power.timeout_ms` = 600001: must be between 0 and 600000"
    );
    assert_eq!(
        err("[power]\nhold_ms = 60001\n"),
        "/etc/torpor.toml: `power.hold_ms` = 60001: must be between 0 and 60000"
    );
    assert_eq!(
        err("[restore]\nattempts = 0\n"),
        "/etc/torpor.toml: `restore.attempts` = 0: must be at least 1: with 0 an image would never be restored"
    );
    assert_eq!(
        err("[restore]\nattempts = 256\n"),
        "/etc/torpor.toml: `restore.attempts` = 256: must be between 1 and 255"
    );
    let not_octal =
        "not an octal mode: expected up to four octal digits, at most \"0777\", such as \"0660\"";
    for bad in ["0698", "rw-rw----", "", "01777", "07777"] {
        assert_eq!(
            err(&format!("[socket]\nmode = \"{bad}\"\n")),
            format!("/etc/torpor.toml: `socket.mode` = {bad:?}: {not_octal}")
        );
    }
    assert_eq!(
        parse("[socket]\nmode = \"666\"\n").unwrap().socket.mode,
        0o666
    );
    assert_eq!(
        err("[socket]\npath = \"run/torpor.sock\"\n"),
        "/etc/torpor.toml: `socket.path` = \"run/torpor.sock\": must be an absolute path"
    );
    let long = format!("/{}", "x".repeat(120));
    assert_eq!(
        err(&format!("[socket]\npath = \"{long}\"\n")),
        format!("/etc/torpor.toml: `socket.path` = {long}: longer than the 107 bytes a UNIX socket path may have")
    );
    assert_eq!(
        err("[rtc]\ndevice = \"rtc0\"\n"),
        "/etc/torpor.toml: `rtc.device` = \"rtc0\": must be an absolute path or \"none\""
    );
    assert_eq!(
        err("[power]\nchip = \"gpio/chip0\"\n"),
        "/etc/torpor.toml: `power.chip` = \"gpio/chip0\": must be a chip name under /dev (\"gpiochip0\") or an absolute path"
    );
    assert_eq!(
        err("[socket]\nowner = -5\n"),
        "/etc/torpor.toml: `socket.owner` = -5: a numeric id must be between 0 and 4294967294"
    );
}

#[test]
fn syntax_errors_name_the_file_and_line() {
    let e = err("[power\nline = 26\n");
    assert!(e.starts_with("/etc/torpor.toml: not valid TOML: "), "{e}");
    assert!(e.contains("line 1"), "{e}");
    let e = err("[power]\nline = 26\nline = 27\n");
    assert!(e.starts_with("/etc/torpor.toml: not valid TOML: "), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn names_are_resolved_against_the_user_database() {
    let c = parse(
        "[socket]\nowner = \"root\"\ngroup = \"root\"\n[access]\nallow_users = [\"root\", 65534]\n",
    )
    .unwrap();
    assert_eq!(c.socket_owner().unwrap(), 0);
    assert_eq!(c.socket_group().unwrap(), 0);
    assert_eq!(c.allowed_uids().unwrap(), vec![0, 65534]);
    let c = parse("[access]\nallow_users = [\"no-such-user-torpor\"]\n").unwrap();
    assert_eq!(
        c.resolve().unwrap_err().to_string(),
        "/etc/torpor.toml: `access.allow_users`: no user named `no-such-user-torpor` on this system"
    );
    let c = parse("[socket]\ngroup = \"no-such-group-torpor\"\n").unwrap();
    assert_eq!(
        c.resolve().unwrap_err().to_string(),
        "/etc/torpor.toml: `socket.group`: no group named `no-such-group-torpor` on this system"
    );
}

#[test]
fn a_missing_file_is_an_error_unless_it_is_the_default_path() {
    let e = Config::load(Path::new("/nonexistent/torpor.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/torpor.toml: cannot read: No such file or directory (os error 2)"
    );
    assert!(Config::load_or_default(Path::new("/nonexistent/torpor.toml")).is_err());
}

#[test]
fn connection_limits_have_defaults_ranges_and_their_keys() {
    let limits = |text: &str| Config::parse_with_limits(text, Path::new(FILE)).map(|(_, l)| l);
    assert_eq!(
        limits("").unwrap(),
        ConnLimits {
            idle_timeout_s: 10,
            connections_per_user: 4
        }
    );
    assert_eq!(
        limits("[access]\nidle_timeout_s = 60\nconnections_per_user = 28\n").unwrap(),
        ConnLimits {
            idle_timeout_s: 60,
            connections_per_user: 28
        }
    );
    assert_eq!(
        err("[access]\nidle_timeout_s = 0\n"),
        "/etc/torpor.toml: `access.idle_timeout_s` = 0: must be between 1 and 3600"
    );
    assert_eq!(
        err("[access]\nconnections_per_user = 29\n"),
        "/etc/torpor.toml: `access.connections_per_user` = 29: must be between 1 and 28"
    );
    assert_eq!(
        err("[access]\nidle = 3\n"),
        "/etc/torpor.toml: unknown key `access.idle` (known here: allow_users, idle_timeout_s, connections_per_user)"
    );
    // The limits leave the rest of the configuration as it was.
    assert_eq!(
        parse("[access]\nidle_timeout_s = 60\n").unwrap(),
        Config {
            origin: PathBuf::from(FILE),
            ..Config::default()
        }
    );
}

#[test]
fn store_allow_group_read_is_a_boolean_off_by_default() {
    assert!(!parse("").unwrap().store.allow_group_read);
    assert!(
        parse("[store]\nallow_group_read = true\n")
            .unwrap()
            .store
            .allow_group_read
    );
    assert_eq!(
        err("[store]\nallow_group_read = \"yes\"\n"),
        "/etc/torpor.toml: `store.allow_group_read` must be a boolean (true or false), found a string"
    );
    assert_eq!(
        err("[store]\nallow_group = true\n"),
        "/etc/torpor.toml: unknown key `store.allow_group` (known here: device, allow_group_read)"
    );
}

#[test]
fn managed_apps_are_listed_with_unique_names() {
    let c = Config::parse(
        "[[app]]\nname = \"logger\"\npidfile = \"/run/logger.pid\"\n\n[[app]]\nname = \"mqtt-bridge\"\n",
        Path::new("/etc/torpor.toml"),
    )
    .expect("two apps");
    assert_eq!(
        c.apps,
        [
            AppConfig {
                name: "logger".into(),
                pidfile: Some(PathBuf::from("/run/logger.pid")),
            },
            AppConfig {
                name: "mqtt-bridge".into(),
                pidfile: None,
            },
        ]
    );
    assert_eq!(
        err("[[app]]\nname = \"a\"\n[[app]]\nname = \"a\"\n"),
        "/etc/torpor.toml: `app[1].name` = \"a\": another [[app]] has this name"
    );
    assert_eq!(
        err("[[app]]\npidfile = \"/run/x.pid\"\n"),
        "/etc/torpor.toml: `app[0].name` = (missing): every [[app]] needs a name"
    );
    assert_eq!(
        err("[[app]]\nname = \"../etc\"\n"),
        "/etc/torpor.toml: `app[0].name` = \"../etc\": only letters, digits, '.', '_' and '-', not starting with '.'"
    );
    assert_eq!(
        err("[[app]]\nname = \"x\"\ncmd = 1\n"),
        "/etc/torpor.toml: unknown key `app[0].cmd` (known here: name, pidfile)"
    );
    assert_eq!(
        err("app = 3\n"),
        "/etc/torpor.toml: `app` must be an array of tables ([[app]]), found an integer"
    );
}

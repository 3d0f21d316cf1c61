//! The board's managed applications: those `torpor run --name APP` started
//! (or restored), and those `/etc/torpor.toml` lists as `[[app]]`. When one
//! of them asks to hibernate, all of them go into one image.
//!
//! `torpor run` and `torpor boot` note each application's pid in the
//! registry directory beside the daemon's socket ([`dir_for`]:
//! `/run/torpor.apps` for `/run/torpor.sock`), one file per name holding
//! `PID\n` for a cold start or `restored PID\n` for a tree `torpor boot`
//! brought back (which the application's own `torpor run` line then
//! adopts instead of starting it again). The directory is on a tmpfs, so a
//! boot starts with none.

use std::path::{Path, PathBuf};

use crate::config::AppConfig;

/// The registry of the daemon listening on `socket`.
pub fn dir_for(socket: &Path) -> PathBuf {
    socket.with_extension("apps")
}

/// The longest application name.
pub const MAX_NAME: usize = 64;

/// A name is a file name in the registry: letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else if name.len() > MAX_NAME {
        Err(format!("longer than {MAX_NAME} bytes"))
    } else {
        Err("only letters, digits, '.', '_' and '-', not starting with '.'".into())
    }
}

/// How a registry entry came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `torpor run` started the command.
    Started,
    /// `torpor boot` restored the tree.
    Restored,
}

/// Notes `pid` as application `name` in `dir`.
pub fn record(dir: &Path, name: &str, pid: i32, origin: Origin) -> std::io::Result<()> {
    check_name(name).map_err(|why| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("application name {name:?}: {why}"),
        )
    })?;
    std::fs::create_dir_all(dir)?;
    let text = match origin {
        Origin::Started => format!("{pid}\n"),
        Origin::Restored => format!("restored {pid}\n"),
    };
    // Written beside and renamed: a reader never sees half a line.
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The entry of `name` in `dir`, if any and well-formed.
pub fn lookup(dir: &Path, name: &str) -> Option<(i32, Origin)> {
    check_name(name).ok()?;
    parse_entry(&std::fs::read_to_string(dir.join(name)).ok()?)
}

fn parse_entry(text: &str) -> Option<(i32, Origin)> {
    let line = text.strip_suffix('\n')?;
    let (origin, pid) = match line.strip_prefix("restored ") {
        Some(p) => (Origin::Restored, p),
        None => (Origin::Started, line),
    };
    let pid: i32 = pid.parse().ok()?;
    (pid > 0).then_some((pid, origin))
}

/// A managed application and where its pid came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    /// Its root's pid, when known.
    pub pid: Option<i32>,
    /// Where the pid was read (the registry entry or the `pidfile`).
    pub source: PathBuf,
}

impl App {
    /// Whether the application runs: its pid exists and is no zombie.
    pub fn running(&self) -> bool {
        self.pid.is_some_and(alive)
    }
}

/// The process exists and has not exited.
pub fn alive(pid: i32) -> bool {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rfind(')')
        .and_then(|i| s.get(i + 2..i + 3))
        .is_some_and(|st| st != "Z" && st != "X")
}

/// Every managed application: the `[[app]]` entries in order (pid from the
/// registry, else from their `pidfile`), then the registry's other names
/// in name order.
pub fn managed(config: &[AppConfig], dir: &Path) -> Vec<App> {
    let mut apps: Vec<App> = config
        .iter()
        .map(|a| {
            let entry = dir.join(&a.name);
            match (lookup(dir, &a.name), &a.pidfile) {
                (Some((pid, _)), _) => App {
                    name: a.name.clone(),
                    pid: Some(pid),
                    source: entry,
                },
                (None, Some(pf)) => App {
                    name: a.name.clone(),
                    pid: std::fs::read_to_string(pf)
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                        .filter(|p: &i32| *p > 0),
                    source: pf.clone(),
                },
                (None, None) => App {
                    name: a.name.clone(),
                    pid: None,
                    source: entry,
                },
            }
        })
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| check_name(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for n in names {
        if apps.iter().any(|a| a.name == n) {
            continue;
        }
        if let Some((pid, _)) = lookup(dir, &n) {
            apps.push(App {
                source: dir.join(&n),
                name: n,
                pid: Some(pid),
            });
        }
    }
    apps
}

/// The parent of `pid`, from /proc.
fn parent(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    rest.split(' ').nth(1)?.parse().ok()
}

/// The running application whose tree holds `pid` (its root or a
/// descendant).
pub fn owner_of(apps: &[App], pid: i32) -> Option<&App> {
    let mut cur = pid;
    // Bounded: a parent chain longer than this is a /proc race.
    for _ in 0..4096 {
        if let Some(a) = apps.iter().find(|a| a.pid == Some(cur) && a.running()) {
            return Some(a);
        }
        cur = parent(cur)?;
        if cur <= 1 {
            return None;
        }
    }
    None
}

/// The roots that go into an image, with their names; and the names left
/// out, with why.
pub type Plan = (Vec<(i32, String)>, Vec<(String, String)>);

/// Which managed applications go into an image, each with its root, and
/// why the others do not: not running, or inside another one's tree.
pub fn plan(apps: &[App]) -> Plan {
    let mut roots: Vec<(i32, String)> = Vec::new();
    let mut left: Vec<(String, String)> = Vec::new();
    for a in apps {
        let Some(pid) = a.pid.filter(|p| alive(*p)) else {
            let why = match a.pid {
                Some(p) => format!("not running (pid {p} from {} is gone)", a.source.display()),
                None => format!("not running (no pid in {})", a.source.display()),
            };
            left.push((a.name.clone(), why));
            continue;
        };
        let others: Vec<App> = apps.iter().filter(|o| o.name != a.name).cloned().collect();
        let above = parent(pid).and_then(|pp| owner_of(&others, pp));
        if let Some(o) = above {
            left.push((
                a.name.clone(),
                format!(
                    "pid {pid} is inside the tree of {}, which includes it",
                    o.name
                ),
            ));
            continue;
        }
        if roots.iter().any(|(r, _)| *r == pid) {
            left.push((a.name.clone(), format!("pid {pid} is listed twice")));
            continue;
        }
        roots.push((pid, a.name.clone()));
    }
    (roots, left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_names() {
        assert_eq!(
            dir_for(Path::new("/run/torpor.sock")),
            PathBuf::from("/run/torpor.apps")
        );
        assert_eq!(parse_entry("123\n"), Some((123, Origin::Started)));
        assert_eq!(parse_entry("restored 77\n"), Some((77, Origin::Restored)));
        assert_eq!(parse_entry("77"), None);
        assert_eq!(parse_entry("-4\n"), None);
        assert_eq!(parse_entry("restored x\n"), None);
        assert!(check_name("mqtt-bridge_2.0").is_ok());
        assert_eq!(
            check_name("a/b"),
            Err("only letters, digits, '.', '_' and '-', not starting with '.'".into())
        );
        assert!(check_name(".hidden").is_err());
        assert_eq!(
            check_name(&"x".repeat(65)),
            Err("longer than 64 bytes".into())
        );
    }

    #[test]
    fn the_registry_and_the_config_make_one_list() {
        let dir = std::env::temp_dir().join(format!("torpor-apps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let me = i32::try_from(std::process::id()).expect("pid");
        record(&dir, "logger", me, Origin::Started).expect("record");
        record(&dir, "web", 4_194_999, Origin::Restored).expect("record");
        assert_eq!(lookup(&dir, "web"), Some((4_194_999, Origin::Restored)));
        let config = [
            AppConfig {
                name: "web".into(),
                pidfile: None,
            },
            AppConfig {
                name: "sensor".into(),
                pidfile: None,
            },
        ];
        let apps = managed(&config, &dir);
        let names: Vec<(&str, Option<i32>)> =
            apps.iter().map(|a| (a.name.as_str(), a.pid)).collect();
        assert_eq!(
            names,
            [
                ("web", Some(4_194_999)),
                ("sensor", None),
                ("logger", Some(me))
            ]
        );
        let (roots, left) = plan(&apps);
        assert_eq!(roots, [(me, "logger".to_string())]);
        assert_eq!(
            left,
            [
                (
                    "web".to_string(),
                    format!(
                        "not running (pid 4194999 from {} is gone)",
                        dir.join("web").display()
                    )
                ),
                (
                    "sensor".to_string(),
                    format!("not running (no pid in {})", dir.join("sensor").display())
                ),
            ]
        );
        assert_eq!(owner_of(&apps, me).map(|a| a.name.as_str()), Some("logger"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

//! `/etc/torpor.toml`: the daemon's settings, typed and checked at start-up.
//!
//! Every key is optional and has a documented default (docs/config.md). A
//! key the parser does not know, a value of the wrong type and a value out
//! of range are errors naming the file and the key: a typo must not silently
//! fall back to a default that cuts the wrong GPIO.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

/// Where the daemon reads its settings unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/torpor.toml";

/// Defaults, one per key (docs/config.md repeats them).
pub mod defaults {
    pub const SOCKET_PATH: &str = torpor_client::DEFAULT_SOCKET;
    pub const SOCKET_MODE: u32 = 0o600;
    pub const STORE_DEVICE: &str = "/dev/mmcblk0p3";
    pub const POWER_CHIP: &str = "gpiochip0";
    /// GPIO 26: the pin the Raspberry Pi `gpio-poweroff` overlay uses by default.
    pub const POWER_LINE: u32 = 26;
    pub const POWER_HOLD_MS: u32 = 100;
    /// As the kernel's gpio-poweroff driver: 3 s before declaring the cut failed.
    pub const POWER_TIMEOUT_MS: u32 = 3000;
    pub const RTC_DEVICE: &str = "/sys/class/rtc/rtc0/wakealarm";
    pub const RESTORE_ATTEMPTS: u32 = 3;
    pub const RESTORE_TTY: &str = "/dev/console";
    pub const LOG_SOCKET: &str = "/dev/log";
    /// Seconds a connection has to send a request until one is granted.
    pub const IDLE_TIMEOUT_S: u32 = 10;
    /// Connections one user other than root may hold.
    pub const CONNECTIONS_PER_USER: u32 = 4;
}

/// The largest GPIO line offset accepted (`power.line`).
pub const MAX_LINE: u32 = 63;
/// The largest `power.hold_ms`.
pub const MAX_HOLD_MS: u32 = 60_000;
/// The largest `power.timeout_ms`.
pub const MAX_TIMEOUT_MS: u32 = 600_000;
/// The largest `restore.attempts`.
pub const MAX_ATTEMPTS: u32 = 255;
/// The largest `access.idle_timeout_s`: an hour.
pub const MAX_IDLE_TIMEOUT_S: u32 = 3600;
/// The largest `access.connections_per_user`: every connection not kept for root.
pub const MAX_CONNECTIONS_PER_USER: u32 = 28;

/// A user or group, by name or by numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Name(String),
    Num(u32),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Name(n) => f.write_str(n),
            Id::Num(n) => write!(f, "{n}"),
        }
    }
}

/// `[socket]`: where and with which permissions the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub owner: Id,
    pub group: Id,
    /// Permission bits of the socket file (connecting needs write permission).
    pub mode: u32,
}

/// `[store]`: the A/B image store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub device: PathBuf,
    /// The store's group may read it (mode 0640); by default torpor refuses
    /// a store anyone but its owner can read.
    pub allow_group_read: bool,
}

/// `[power]`: the GPIO that cuts the board's power.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerConfig {
    /// A chip name under /dev (`gpiochip0`) or an absolute path.
    pub chip: String,
    pub line: u32,
    /// The power is cut by driving the line low instead of high.
    pub active_low: bool,
    /// How long the line stays at its inactive level, after the disks are
    /// synced, before it is driven active.
    pub hold_ms: u32,
    /// How long the line is held active before the cut counts as failed and
    /// the daemon falls back to `reboot(POWER_OFF)`.
    pub timeout_ms: u32,
}

/// `[rtc]`: the wake alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcConfig {
    /// The sysfs `wakealarm` file, or `None` when the board has no RTC.
    pub wakealarm: Option<PathBuf>,
}

/// `[restore]`: how the boot hook restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    /// Restore attempts of one image before the boot hook gives up on it.
    pub attempts: u32,
    /// The terminal given to a restored app whose terminal is gone.
    pub tty: PathBuf,
    /// Restore apps in a time namespace continuing their monotonic clocks,
    /// where the kernel has time namespaces (`false`: the host's clocks).
    pub timens: bool,
    /// Let restored apps run before their private anonymous pages are in:
    /// they arrive through userfaultfd on first touch and in the background.
    pub lazy: bool,
    /// Keep established TCP connections through TCP repair mode, in the
    /// daemon's dumps and the boot hook's restores (`false`: they come
    /// back reset).
    pub tcp_established: bool,
}

/// `[access]`: who besides root may ask.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessConfig {
    /// Users allowed to hibernate and checkpoint processes they own.
    pub allow_users: Vec<Id>,
}

/// The connection limits of `[access]`, parsed with the rest of the file
/// ([`Config::parse_with_limits`]) and kept beside [`Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Seconds a connection has to send a request, from connecting and from
    /// each reply, until it has been granted one.
    pub idle_timeout_s: u32,
    /// Connections one user other than root may hold at once.
    pub connections_per_user: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            idle_timeout_s: defaults::IDLE_TIMEOUT_S,
            connections_per_user: defaults::CONNECTIONS_PER_USER,
        }
    }
}

/// Where the daemon's log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogTarget::Stderr => "stderr",
            LogTarget::Syslog => "syslog",
        })
    }
}

/// `[log]`: where the daemon logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub target: LogTarget,
    /// The syslog daemon's datagram socket.
    pub socket: PathBuf,
}

/// One `[[app]]`: an application the daemon manages, hibernated with every
/// other managed application in one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// The name `torpor run --name` gives it (letters, digits, `.`, `_`,
    /// `-`; at most [`crate::apps::MAX_NAME`] bytes).
    pub name: String,
    /// Where its pid is found when it is not started by `torpor run`.
    pub pidfile: Option<PathBuf>,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file the settings came from (named in every later error).
    pub origin: PathBuf,
    pub socket: SocketConfig,
    pub store: StoreConfig,
    pub power: PowerConfig,
    pub rtc: RtcConfig,
    pub restore: RestoreConfig,
    pub access: AccessConfig,
    pub log: LogConfig,
    /// `[[app]]`: the managed applications, in file order.
    pub apps: Vec<AppConfig>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid TOML: {message}", file.display())]
    Syntax { file: PathBuf, message: String },
    #[error("{}: unknown key `{key}` (known here: {known})", file.display())]
    UnknownKey {
        file: PathBuf,
        key: String,
        known: String,
    },
    #[error("{}: `{key}` must be {expected}, found {found}", file.display())]
    WrongType {
        file: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{}: `{key}` = {value}: {why}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        value: String,
        why: String,
    },
    #[error("{}: `{key}`: no {what} named `{name}` on this system", file.display())]
    UnknownId {
        file: PathBuf,
        key: String,
        what: &'static str,
        name: String,
    },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            origin: PathBuf::from(DEFAULT_PATH),
            socket: SocketConfig {
                path: PathBuf::from(defaults::SOCKET_PATH),
                owner: Id::Num(0),
                group: Id::Num(0),
                mode: defaults::SOCKET_MODE,
            },
            store: StoreConfig {
                device: PathBuf::from(defaults::STORE_DEVICE),
                allow_group_read: false,
            },
            power: PowerConfig {
                chip: defaults::POWER_CHIP.to_string(),
                line: defaults::POWER_LINE,
                active_low: false,
                hold_ms: defaults::POWER_HOLD_MS,
                timeout_ms: defaults::POWER_TIMEOUT_MS,
            },
            rtc: RtcConfig {
                wakealarm: Some(PathBuf::from(defaults::RTC_DEVICE)),
            },
            restore: RestoreConfig {
                attempts: defaults::RESTORE_ATTEMPTS,
                tty: PathBuf::from(defaults::RESTORE_TTY),
                timens: true,
                lazy: false,
                tcp_established: false,
            },
            access: AccessConfig::default(),
            log: LogConfig {
                target: LogTarget::Stderr,
                socket: PathBuf::from(defaults::LOG_SOCKET),
            },
            apps: Vec::new(),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// One `[section]` of the file, with its known keys.
struct Section<'a> {
    file: &'a Path,
    name: &'a str,
    table: Option<&'a Table>,
}

impl<'a> Section<'a> {
    fn new(
        file: &'a Path,
        root: &'a Table,
        name: &'a str,
        known: &[&str],
    ) -> Result<Self, ConfigError> {
        let table = match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                return Err(ConfigError::WrongType {
                    file: file.to_owned(),
                    key: name.to_string(),
                    expected: "a table ([section])",
                    found: type_name(other),
                })
            }
        };
        if let Some(t) = table {
            if let Some(key) = t.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ConfigError::UnknownKey {
                    file: file.to_owned(),
                    key: format!("{name}.{key}"),
                    known: known.join(", "),
                });
            }
        }
        Ok(Section { file, name, table })
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType {
            file: self.file.to_owned(),
            key: self.key(key),
            expected,
            found: type_name(found),
        }
    }

    fn invalid(
        &self,
        key: &str,
        value: impl std::fmt::Display,
        why: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: self.key(key),
            value: value.to_string(),
            why: why.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.table.and_then(|t| t.get(key))
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "a boolean (true or false)", other)),
        }
    }

    fn integer(&self, key: &str, min: u32, max: u32) -> Result<Option<u32>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => match u32::try_from(*i) {
                Ok(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(self.invalid(key, i, format!("must be between {min} and {max}"))),
            },
            Some(other) => Err(self.wrong(key, "an integer", other)),
        }
    }

    fn absolute_path(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) if s.starts_with('/') && !s.contains('\0') => Ok(Some(PathBuf::from(s))),
            Some(s) => Err(self.invalid(key, format!("{s:?}"), "must be an absolute path")),
        }
    }

    fn id(&self, key: &str, value: &Value) -> Result<Id, ConfigError> {
        match value {
            Value::String(s) if !s.is_empty() => Ok(Id::Name(s.clone())),
            Value::String(_) => Err(self.invalid(key, "\"\"", "a name must not be empty")),
            Value::Integer(i) => match u32::try_from(*i) {
                Ok(v) if v != u32::MAX => Ok(Id::Num(v)),
                _ => Err(self.invalid(key, i, "a numeric id must be between 0 and 4294967294")),
            },
            other => Err(self.wrong(key, "a name (string) or a numeric id (integer)", other)),
        }
    }
}

/// `[[app]]` entries: each a table with `name` and an optional `pidfile`;
/// names are unique.
fn parse_apps(file: &Path, root: &Table) -> Result<Vec<AppConfig>, ConfigError> {
    let items = match root.get("app") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(ConfigError::WrongType {
                file: file.to_owned(),
                key: "app".into(),
                expected: "an array of tables ([[app]])",
                found: type_name(other),
            })
        }
    };
    let mut apps: Vec<AppConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut one = Table::new();
        one.insert(format!("app[{i}]"), item.clone());
        let key = format!("app[{i}]");
        let s = Section::new(file, &one, &key, &["name", "pidfile"])?;
        let name = s
            .string("name")?
            .ok_or_else(|| s.invalid("name", "(missing)", "every [[app]] needs a name"))?;
        if let Err(why) = crate::apps::check_name(name) {
            return Err(s.invalid("name", format!("{name:?}"), why));
        }
        if apps.iter().any(|a| a.name == name) {
            return Err(s.invalid("name", format!("{name:?}"), "another [[app]] has this name"));
        }
        apps.push(AppConfig {
            name: name.to_string(),
            pidfile: s.absolute_path("pidfile")?,
        });
    }
    Ok(apps)
}

/// Parses an octal permission string such as "0660".
fn parse_mode(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 4 || !text.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o777)
}

impl Config {
    /// Reads and checks the configuration file at `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Reads `file`, or returns the defaults when `file` is the default path
    /// and does not exist (a board that needs no changes needs no file).
    pub fn load_or_default(file: &Path) -> Result<Config, ConfigError> {
        Ok(Config::load_or_default_with_limits(file)?.0)
    }

    /// [`Config::load_or_default`] with the connection limits.
    pub fn load_or_default_with_limits(file: &Path) -> Result<(Config, ConnLimits), ConfigError> {
        if file == Path::new(DEFAULT_PATH) && !file.exists() {
            return Ok((Config::default(), ConnLimits::default()));
        }
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse_with_limits(&text, file)
    }

    /// Parses configuration text; `file` names the origin in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Ok(Config::parse_with_limits(text, file)?.0)
    }

    /// [`Config::parse`] with the connection limits.
    pub fn parse_with_limits(text: &str, file: &Path) -> Result<(Config, ConnLimits), ConfigError> {
        let root: Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                file: file.to_owned(),
                message: e.to_string().trim_end().to_string(),
            })?;
        const SECTIONS: [&str; 8] = [
            "socket", "store", "power", "rtc", "restore", "access", "log", "app",
        ];
        if let Some(key) = root.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey {
                file: file.to_owned(),
                key: key.clone(),
                known: SECTIONS.join(", "),
            });
        }
        let mut c = Config {
            origin: file.to_owned(),
            ..Config::default()
        };
        let mut limits = ConnLimits::default();

        let s = Section::new(file, &root, "socket", &["path", "owner", "group", "mode"])?;
        if let Some(p) = s.absolute_path("path")? {
            // sockaddr_un holds 108 bytes including the terminating NUL.
            if p.as_os_str().len() > 107 {
                return Err(s.invalid(
                    "path",
                    p.display(),
                    "longer than the 107 bytes a UNIX socket path may have",
                ));
            }
            c.socket.path = p;
        }
        if let Some(v) = s.get("owner") {
            c.socket.owner = s.id("owner", v)?;
        }
        if let Some(v) = s.get("group") {
            c.socket.group = s.id("group", v)?;
        }
        if let Some(m) = s.get("mode") {
            let Value::String(text) = m else {
                return Err(s.wrong("mode", "an octal string such as \"0660\"", m));
            };
            c.socket.mode = parse_mode(text).ok_or_else(|| {
                s.invalid(
                    "mode",
                    format!("{text:?}"),
                    "not an octal mode: expected up to four octal digits, at most \"0777\", such as \"0660\"",
                )
            })?;
        }

        let s = Section::new(file, &root, "store", &["device", "allow_group_read"])?;
        if let Some(p) = s.absolute_path("device")? {
            c.store.device = p;
        }
        if let Some(b) = s.boolean("allow_group_read")? {
            c.store.allow_group_read = b;
        }

        let s = Section::new(
            file,
            &root,
            "power",
            &["chip", "line", "active_low", "hold_ms", "timeout_ms"],
        )?;
        if let Some(chip) = s.string("chip")? {
            let ok = !chip.is_empty() && (chip.starts_with('/') || !chip.contains('/'));
            if !ok {
                return Err(s.invalid(
                    "chip",
                    format!("{chip:?}"),
                    "must be a chip name under /dev (\"gpiochip0\") or an absolute path",
                ));
            }
            c.power.chip = chip.to_string();
        }
        if let Some(line) = s.integer("line", 0, MAX_LINE)? {
            c.power.line = line;
        }
        if let Some(b) = s.boolean("active_low")? {
            c.power.active_low = b;
        }
        if let Some(v) = s.integer("hold_ms", 0, MAX_HOLD_MS)? {
            c.power.hold_ms = v;
        }
        if let Some(v) = s.integer("timeout_ms", 0, MAX_TIMEOUT_MS)? {
            c.power.timeout_ms = v;
        }

        let s = Section::new(file, &root, "rtc", &["device"])?;
        match s.string("device")? {
            None => {}
            Some("none") => c.rtc.wakealarm = None,
            Some(p) if p.starts_with('/') && !p.contains('\0') => {
                c.rtc.wakealarm = Some(PathBuf::from(p))
            }
            Some(p) => {
                return Err(s.invalid(
                    "device",
                    format!("{p:?}"),
                    "must be an absolute path or \"none\"",
                ))
            }
        }

        let s = Section::new(
            file,
            &root,
            "restore",
            &["attempts", "tty", "timens", "lazy", "tcp_established"],
        )?;
        if let Some(Value::Integer(0)) = s.get("attempts") {
            return Err(s.invalid(
                "attempts",
                0,
                "must be at least 1: with 0 an image would never be restored",
            ));
        }
        if let Some(v) = s.integer("attempts", 1, MAX_ATTEMPTS)? {
            c.restore.attempts = v;
        }
        if let Some(p) = s.absolute_path("tty")? {
            c.restore.tty = p;
        }
        if let Some(b) = s.boolean("timens")? {
            c.restore.timens = b;
        }
        if let Some(b) = s.boolean("lazy")? {
            c.restore.lazy = b;
        }
        if let Some(b) = s.boolean("tcp_established")? {
            c.restore.tcp_established = b;
        }

        let s = Section::new(
            file,
            &root,
            "access",
            &["allow_users", "idle_timeout_s", "connections_per_user"],
        )?;
        match s.get("allow_users") {
            None => {}
            Some(Value::Array(items)) => {
                c.access.allow_users = items
                    .iter()
                    .map(|v| s.id("allow_users", v))
                    .collect::<Result<_, _>>()?;
            }
            Some(other) => {
                return Err(s.wrong("allow_users", "an array of user names or uids", other))
            }
        }
        if let Some(v) = s.integer("idle_timeout_s", 1, MAX_IDLE_TIMEOUT_S)? {
            limits.idle_timeout_s = v;
        }
        if let Some(v) = s.integer("connections_per_user", 1, MAX_CONNECTIONS_PER_USER)? {
            limits.connections_per_user = v;
        }

        let s = Section::new(file, &root, "log", &["target", "socket"])?;
        match s.string("target")? {
            None => {}
            Some("stderr") => c.log.target = LogTarget::Stderr,
            Some("syslog") => c.log.target = LogTarget::Syslog,
            Some(t) => {
                return Err(s.invalid(
                    "target",
                    format!("{t:?}"),
                    "must be \"stderr\" or \"syslog\"",
                ))
            }
        }
        if let Some(p) = s.absolute_path("socket")? {
            if p.as_os_str().len() > 107 {
                return Err(s.invalid(
                    "socket",
                    p.display(),
                    "longer than the 107 bytes a UNIX socket path may have",
                ));
            }
            c.log.socket = p;
        }
        c.apps = parse_apps(file, &root)?;
        Ok((c, limits))
    }

    fn unknown_id(&self, key: &str, what: &'static str, name: &str) -> ConfigError {
        ConfigError::UnknownId {
            file: self.origin.clone(),
            key: key.to_string(),
            what,
            name: name.to_string(),
        }
    }

    fn lookup_user(&self, key: &str, id: &Id) -> Result<u32, ConfigError> {
        match id {
            Id::Num(n) => Ok(*n),
            Id::Name(name) => match nix::unistd::User::from_name(name) {
                Ok(Some(u)) => Ok(u.uid.as_raw()),
                _ => Err(self.unknown_id(key, "user", name)),
            },
        }
    }

    /// The socket's owner uid (names looked up in the user database).
    pub fn socket_owner(&self) -> Result<u32, ConfigError> {
        self.lookup_user("socket.owner", &self.socket.owner)
    }

    /// The socket's group gid (names looked up in the group database).
    pub fn socket_group(&self) -> Result<u32, ConfigError> {
        match &self.socket.group {
            Id::Num(n) => Ok(*n),
            Id::Name(name) => match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Ok(g.gid.as_raw()),
                _ => Err(self.unknown_id("socket.group", "group", name)),
            },
        }
    }

    /// The uids of `access.allow_users` (names looked up in the user database).
    pub fn allowed_uids(&self) -> Result<Vec<u32>, ConfigError> {
        self.access
            .allow_users
            .iter()
            .map(|id| self.lookup_user("access.allow_users", id))
            .collect()
    }

    /// Checks everything that needs the running system: user and group names.
    pub fn resolve(&self) -> Result<(), ConfigError> {
        self.socket_owner()?;
        self.socket_group()?;
        self.allowed_uids()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! `torpor boot`: the boot step. Restore the newest image of the store, or
//! let the board cold-start its applications.
//!
//! ```text
//!  store → newest slot (highest generation)
//!     empty / consumed          → cold start
//!     state records (pages stepped over, read once by the restore)
//!       damaged                 → consumed, cold start ("corrupt")
//!     attempts ≥ restore.attempts → consumed, cold start ("gave up")
//!     begin_restore (restoring, attempts + 1, synced)
//!     validate → connect to the daemon (if the tree had a connection)
//!     → rebuild, the pages checked as they go in → consumed →
//!     `Restored` to the daemon
//!     a damaged page record     → consumed, cold start ("corrupt")
//!     other failure             → stays restoring (the next boot retries)
//!                                 or, at the last attempt, consumed
//! ```
//!
//! The slot is marked `restoring` before anything is created, so a restore
//! that crashes the board counts as an attempt too: a bad image can never
//! make the board boot-loop.

use std::io::BufReader;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::config::{self, Config};
use crate::daemon::log;
use crate::engine::clocks::ClockMode;
use crate::engine::image_io;
use crate::engine::restore::{self, RestoreOptions};
use crate::engine::state::FileKind;
use crate::engine::state::ImageState;
use crate::engine::torpor_conn;
use crate::image::{Header, ImageError, ImageReader};
use crate::protocol::{self, packet, Clock, Request, Resumed};
use crate::store::{Slot, State, Store};

/// How long `torpor boot` waits for the daemon's socket to appear.
pub const DAEMON_WAIT: Duration = Duration::from_secs(10);
/// A wall clock before this (2020-01-01) was never set: the board has no
/// battery-backed clock and restarted from the epoch.
const CLOCK_FLOOR_NS: u64 = 1_577_836_800 * 1_000_000_000;

#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub places: PlaceArgs,
}

/// Where `torpor boot` and `torpor run` find the store and the daemon.
#[derive(Debug, Args)]
pub struct PlaceArgs {
    /// Configuration file (store.device, socket.path, restore.attempts, restore.tty, restore.timens,
    /// restore.lazy, restore.tcp_established).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// The store to restore from instead of store.device.
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// The daemon's socket instead of socket.path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl PlaceArgs {
    pub fn load(&self) -> Result<Places, String> {
        Places::load(&self.config, self.store.as_deref(), self.socket.as_deref())
    }
}

/// Where boot and run find things.
#[derive(Debug, Clone)]
pub struct Places {
    pub store: PathBuf,
    pub socket: PathBuf,
    pub attempts: u32,
    pub tty: PathBuf,
    /// `restore.timens`: a time namespace continuing the app's clocks.
    pub timens: bool,
    /// `restore.lazy`: pages arrive after the app runs.
    pub lazy: bool,
    /// `restore.tcp_established`: established TCP connections come back.
    pub tcp_established: bool,
}

impl Places {
    pub fn load(
        config: &Path,
        store: Option<&Path>,
        socket: Option<&Path>,
    ) -> Result<Places, String> {
        let c = Config::load_or_default(config).map_err(|e| e.to_string())?;
        crate::store::allow_group_read(c.store.allow_group_read);
        Ok(Places::from_config(&c, store, socket))
    }

    fn from_config(c: &Config, store: Option<&Path>, socket: Option<&Path>) -> Places {
        Places {
            store: store.map_or_else(|| c.store.device.clone(), Path::to_path_buf),
            socket: socket.map_or_else(|| c.socket.path.clone(), Path::to_path_buf),
            attempts: c.restore.attempts,
            tty: c.restore.tty.clone(),
            timens: c.restore.timens,
            lazy: c.restore.lazy,
            tcp_established: c.restore.tcp_established,
        }
    }
}

/// What the boot step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The tree rooted at `pid` runs again.
    Restored { pid: i32, generation: u64 },
    /// Nothing restored; the reason was logged.
    ColdStart(String),
}

/// Why a restore attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("store {path}: {source}")]
    Store {
        path: PathBuf,
        source: crate::store::StoreError,
    },
    #[error("image generation {generation} in slot {slot}: {what}")]
    Image {
        generation: u64,
        slot: Slot,
        what: String,
    },
}

/// The slot whose intact header has the highest generation. Its image is
/// not read here: the restore reads it once, checking every record on the
/// way (see [`boot`]).
fn newest_slot(store: &Store) -> Option<crate::store::SlotInfo> {
    Slot::BOTH
        .into_iter()
        .filter_map(|s| store.info(s))
        .max_by_key(|i| i.generation)
}

/// The root task's name (comm) in an image, to match `torpor run --name`.
pub fn image_name(st: &ImageState) -> Option<&str> {
    st.processes
        .first()
        .and_then(|p| p.threads.first())
        .map(|t| t.comm.as_str())
}

/// Restores the newest image of the store at `places.store`, if any is
/// restorable and (with `name`) belongs to that application.
pub fn boot(places: &Places, name: Option<&str>) -> Result<Outcome, BootError> {
    let serr = |source| BootError::Store {
        path: places.store.clone(),
        source,
    };
    if !places.store.exists() {
        return Ok(cold(format!("no store at {}", places.store.display())));
    }
    let mut store = Store::open(&places.store).map_err(serr)?;
    let Some(info) = newest_slot(&store) else {
        return Ok(cold(format!(
            "store {} holds no image",
            places.store.display()
        )));
    };
    let (slot, generation) = (info.slot, info.generation);
    match info.state {
        State::Empty => {
            return Ok(cold(format!(
                "store {} holds no image",
                places.store.display()
            )))
        }
        State::Consumed => {
            return Ok(cold(format!(
                "image generation {generation} in slot {slot} was already restored"
            )))
        }
        State::Valid | State::Restoring => {}
    }
    let corrupt = |store: &mut Store, why: &dyn std::fmt::Display| {
        store.mark(slot, State::Consumed).map_err(serr)?;
        Ok(cold(format!(
            "image generation {generation} in slot {slot} is corrupt: {why}; marked consumed"
        )))
    };
    let (_, reader) = store.image(slot).map_err(serr)?;
    // The image is read once. This first pass reads its state, each record
    // checked against its CRC, stepping over the pages; the restore reads
    // those into place, checking each page record and the whole image's
    // CRC before any task runs (a lazy restore, each page record before a
    // byte of it enters the tree). A lazy restore keeps their places, to
    // step over them without a read.
    let first = crate::image::ImageReader::new(BufReader::new(reader));
    let read = if places.lazy {
        first
            .map(crate::image::ImageReader::indexing_pages)
            .and_then(image_io::read_state_indexed)
    } else {
        first
            .map(crate::image::ImageReader::skipping_pages)
            .and_then(image_io::read_state_from)
            .map(|st| (st, Vec::new()))
    };
    let (state, index) = match read {
        Ok(x) => x,
        // An image no torpor of this format can read is as lost.
        Err(e) if e.is_damage() || matches!(e, ImageError::UnsupportedVersion { .. }) => {
            return corrupt(&mut store, &e)
        }
        Err(e) => return Err(image_err(generation, slot, e)),
    };
    if let Some(want) = name.filter(|_| !state.trees.is_empty()) {
        if !state.trees.iter().any(|t| t.name == want) {
            let names: Vec<&str> = state.trees.iter().map(|t| t.name.as_str()).collect();
            return Ok(cold(format!(
                "image generation {generation} in slot {slot} holds {}, not {want:?}; left for its own applications",
                names.join(", ")
            )));
        }
    } else if let Some(want) = name {
        let have = image_name(&state).unwrap_or("");
        if !same_name(want, have) {
            return Ok(cold(format!(
                "image generation {generation} in slot {slot} is of {have:?}, not {want:?}; left for its own application"
            )));
        }
    }
    if info.attempts >= places.attempts {
        store.mark(slot, State::Consumed).map_err(serr)?;
        return Ok(cold(format!(
            "image generation {generation} in slot {slot} failed to restore {} time(s) (restore.attempts = {}); giving up, marked consumed",
            info.attempts, places.attempts
        )));
    }
    let attempt = store.begin_restore(slot).map_err(serr)?;
    log::info!(
        "restoring image generation {generation} from slot {slot} (attempt {attempt} of {})",
        places.attempts
    );
    let dir = &crate::apps::dir_for(&places.socket);
    let failed = match restore_slot(&store, slot, generation, &state, &index, places) {
        Ok(pid) => {
            store.mark(slot, State::Consumed).map_err(serr)?;
            let pid = note_restored(dir, &state, name).unwrap_or(pid);
            return Ok(Outcome::Restored { pid, generation });
        }
        // Damaged bytes stay damaged: no other attempt, no tree alone.
        Err(Failed { why, damaged: true }) => {
            for t in &state.trees {
                log::warning!("{}: not restored, it starts afresh: {why}", t.name);
            }
            return corrupt(&mut store, &why);
        }
        Err(Failed { why, .. }) => why,
    };
    // Several trees that failed together may come back one by one: each
    // that fails is killed (the engine removes what it created) and is
    // cold-started by its own `torpor run` line.
    let mut why = failed;
    if state.trees.len() > 1 {
        match crate::engine::trees::split(&state) {
            Ok(parts) => {
                log::warning!(
                    "restoring image generation {generation} with every tree at once failed: {why}; restoring each tree on its own"
                );
                let mut restored: Option<i32> = None;
                for part in &parts {
                    let t = &part.trees[0];
                    match restore_slot(&store, slot, generation, part, &index, places)
                        .map_err(|f| f.why)
                    {
                        Ok(_) => {
                            let pid = note_restored(dir, part, name).unwrap_or(t.root);
                            if restored.is_none() || name == Some(t.name.as_str()) {
                                restored = Some(pid);
                            }
                        }
                        Err(e) => log::warning!("{}: not restored, it starts afresh: {e}", t.name),
                    }
                }
                if let Some(pid) = restored {
                    store.mark(slot, State::Consumed).map_err(serr)?;
                    // `torpor run --name` of a tree that failed cold-starts.
                    if name.is_some_and(|n| {
                        !parts.iter().any(|p| p.trees[0].name == n && alive_root(p))
                    }) {
                        return Ok(cold(format!(
                            "{} of image generation {generation} in slot {slot} was not restored",
                            name.unwrap_or_default()
                        )));
                    }
                    return Ok(Outcome::Restored { pid, generation });
                }
                why.push_str("; no tree came back on its own either");
            }
            Err(apart) => {
                // One line per application: each cold-starts by its own
                // `torpor run` line.
                for t in &state.trees {
                    log::warning!("{}: not restored, it starts afresh: {why}", t.name);
                }
                why.push_str(&format!("; the trees cannot come back apart: {apart}"));
            }
        }
    } else {
        for t in &state.trees {
            log::warning!("{}: not restored, it starts afresh: {why}", t.name);
        }
    }
    let last = attempt >= places.attempts;
    if last {
        store.mark(slot, State::Consumed).map_err(serr)?;
    }
    Ok(cold(format!(
        "restoring image generation {generation} from slot {slot} failed (attempt {attempt} of {}): {why}{}",
        places.attempts,
        if last { "; giving up, marked consumed" } else { "" }
    )))
}

/// Whether the root of the part's tree runs.
fn alive_root(part: &ImageState) -> bool {
    part.trees
        .first()
        .is_some_and(|t| crate::apps::alive(t.root))
}

/// Logs each application `st` brought back and notes it in the registry
/// `dir` for its own `torpor run` line; the root of `name`'s tree, when
/// it is one of them.
fn note_restored(dir: &Path, st: &ImageState, name: Option<&str>) -> Option<i32> {
    let mut mine = None;
    for t in &st.trees {
        log::info!("{}: restored as pid {}", t.name, t.root);
        if name == Some(t.name.as_str()) {
            mine = Some(t.root);
        } else if let Err(e) =
            crate::apps::record(dir, &t.name, t.root, crate::apps::Origin::Restored)
        {
            log::warning!("{}: noting pid {} failed: {e}", t.name, t.root);
        }
    }
    mine
}

fn cold(why: String) -> Outcome {
    log::warning!("cold start: {why}");
    Outcome::ColdStart(why)
}

fn image_err(generation: u64, slot: Slot, e: impl std::fmt::Display) -> BootError {
    BootError::Image {
        generation,
        slot,
        what: e.to_string(),
    }
}

/// comm is at most 15 bytes: a longer name matches its prefix.
fn same_name(want: &str, have: &str) -> bool {
    let w = want.as_bytes();
    want == have || (w.len() > 15 && have.len() == 15 && &w[..15] == have.as_bytes())
}

/// Why one restore attempt failed.
#[derive(Debug)]
struct Failed {
    why: String,
    /// The image's bytes are damaged (a record failed its CRC or does not
    /// decode): found while the restore read them, before any task ran.
    damaged: bool,
}

impl From<String> for Failed {
    fn from(why: String) -> Failed {
        Failed {
            why,
            damaged: false,
        }
    }
}

impl From<crate::engine::EngineError> for Failed {
    fn from(e: crate::engine::EngineError) -> Failed {
        let damaged = matches!(&e.cause, crate::engine::Cause::Image(i) if i.is_damage());
        Failed {
            why: e.to_string(),
            damaged,
        }
    }
}

/// One restore attempt; the root's pid on success.
fn restore_slot(
    store: &Store,
    slot: Slot,
    generation: u64,
    state: &ImageState,
    index: &[crate::image::PageRef],
    places: &Places,
) -> Result<i32, Failed> {
    let (_, reader) = store.image(slot).map_err(|e| e.to_string())?;
    let header = ImageReader::new(BufReader::new(reader))
        .map_err(|e| e.to_string())?
        .header()
        .clone();
    let needs_conn = state
        .files
        .iter()
        .any(|f| f.kind == FileKind::TorporConn(crate::engine::state::TorporConnFile));
    let conn: Option<OwnedFd> = if needs_conn {
        Some(
            torpor_conn::connect(&places.socket, DAEMON_WAIT)
                .map_err(|e| format!("reconnecting the application: {e}"))?,
        )
    } else {
        None
    };
    let tty = places.tty.exists().then(|| places.tty.clone());
    let pid = state.processes.first().map_or(0, |p| p.task.pid);
    let conn_root = conn_holder(state).unwrap_or(pid);
    // A lazy restore's app runs before the restore returns: it hears it
    // resumed as soon as it runs.
    let told = std::sync::Arc::new(TellResumed {
        conn: match &conn {
            Some(c) => Some(
                c.try_clone()
                    .map_err(|e| format!("the connection to the daemon: {e}"))?,
            ),
            None => None,
        },
        pid: u32::try_from(conn_root).unwrap_or(0),
        header: header.clone(),
        generation,
        sent: std::sync::atomic::AtomicBool::new(false),
    });
    let opts = RestoreOptions {
        tty,
        torpor_conn: conn.as_ref().map(AsRawFd::as_raw_fd),
        host_clocks: !places.timens,
        lazy: places.lazy,
        progress: places
            .lazy
            .then(|| told.clone() as std::sync::Arc<dyn crate::engine::Progress>),
        tcp_established: places.tcp_established,
        ..RestoreOptions::default()
    };
    restore::validate(state, &opts)?;
    let reader = || store.image(slot).map(|(_, r)| r).map_err(|e| e.to_string());
    let stats = if places.lazy {
        restore::restore_lazy(
            state,
            index.to_vec(),
            &opts,
            BufReader::new(reader()?),
            reader()?,
            reader()?,
        )
    } else {
        restore::restore(state, &opts, BufReader::new(reader()?))
    }?;
    log::info!(
        "restored {} process(es), {} thread(s), {} bytes of memory; root pid {pid}",
        stats.processes,
        stats.threads,
        stats.page_bytes
    );
    match &stats.clocks {
        Some(c @ ClockMode::Host(_)) => log::warning!("{c}"),
        Some(c) => log::info!("{c}"),
        None => {}
    }
    if let Some(l) = &stats.lazy {
        log::info!(
            "lazily: {} bytes on {} fault(s), {} bytes in the background",
            l.fault_bytes,
            l.faults,
            l.background_bytes
        );
    }
    told.tell();
    drop(conn);
    Ok(pid)
}

/// Tells the daemon that the app holding the connection resumed, once:
/// when a lazy restore's tree starts to run, else after the restore.
#[derive(Debug)]
struct TellResumed {
    conn: Option<OwnedFd>,
    /// The restore just created a task with this pid: positive.
    pid: u32,
    /// The image's: how long it slept is measured when told.
    header: Header,
    generation: u64,
    sent: std::sync::atomic::AtomicBool,
}

impl TellResumed {
    fn tell(&self) {
        let Some(conn) = &self.conn else { return };
        if self.sent.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // Not read here: the reply is the application's.
        let resumed = resumed_now(&self.header, self.generation);
        if let Err(e) = send_restored(conn, self.pid, resumed) {
            log::error!(
                "telling the daemon that pid {} resumed failed: {e}",
                self.pid
            );
        }
    }
}

impl crate::engine::Progress for TellResumed {
    fn expect(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn running(&self) {
        self.tell();
    }
}

/// The root of the tree whose processes hold the connection to the
/// daemon: the application that asked, which is told `Resumed`.
fn conn_holder(st: &ImageState) -> Option<i32> {
    let holder = st.processes.iter().find(|p| {
        p.fds.iter().any(|fd| {
            st.files
                .get(fd.file as usize)
                .is_some_and(|f| matches!(f.kind, FileKind::TorporConn(_)))
        })
    })?;
    let mut cur = holder;
    // Parents come first in an image: the chain ends within its length.
    for _ in 0..st.processes.len() {
        if cur.task.ppid == 0 {
            return Some(cur.task.pid);
        }
        cur = st.processes.iter().find(|p| p.task.pid == cur.task.ppid)?;
    }
    None
}

fn send_restored(conn: &OwnedFd, pid: u32, resumed: Resumed) -> std::io::Result<()> {
    let (buf, len) = protocol::encode_request(&Request::Restored { pid, resumed })
        .map_err(std::io::Error::other)?;
    packet::send_packet(conn.as_fd(), &buf[..len], false)
}

/// `Resumed` for an image made at `header.created_ns`: the wall clock
/// measures the sleep only when it was set both then and now and did not
/// go backwards; otherwise the time is unknown rather than wrong.
pub fn resumed_now(header: &Header, generation: u64) -> Resumed {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // 64-bit nanoseconds last until 2554.
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    slept(header.created_ns, now, generation)
}

fn slept(created_ns: u64, now_ns: u64, generation: u64) -> Resumed {
    if created_ns >= CLOCK_FLOOR_NS && now_ns >= created_ns {
        Resumed {
            slept_for_ms: Some((now_ns - created_ns) / 1_000_000),
            clock: Clock::Wall,
            generation,
        }
    } else {
        Resumed {
            slept_for_ms: None,
            clock: Clock::Unknown,
            generation,
        }
    }
}

/// `torpor boot`: exit 0 whether restored or cold-started (the board boots
/// on either way); 1 only when the store cannot be read.
pub fn run(args: &BootArgs) -> i32 {
    let places = match args.places.load() {
        Ok(p) => p,
        Err(e) => {
            log::error!("cold start: {e}");
            return 1;
        }
    };
    match boot(&places, None) {
        Ok(Outcome::Restored { pid, generation }) => {
            log::info!("boot: image generation {generation} restored, pid {pid} runs");
            0
        }
        Ok(Outcome::ColdStart(_)) => 0,
        Err(e) => {
            log::error!("cold start: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_counts_only_when_it_was_set() {
        let t = CLOCK_FLOOR_NS + 5_000_000_000;
        assert_eq!(
            slept(t, t + 2_500_000_000, 4),
            Resumed {
                slept_for_ms: Some(2500),
                clock: Clock::Wall,
                generation: 4
            }
        );
        // A clock that went backwards (reset to the epoch at boot).
        assert_eq!(
            slept(t, 3_000_000_000, 4),
            Resumed {
                slept_for_ms: None,
                clock: Clock::Unknown,
                generation: 4
            }
        );
        // Both times near the epoch: never set, any difference is meaningless.
        assert_eq!(slept(1_000_000_000, 9_000_000_000, 2).clock, Clock::Unknown);
    }

    #[test]
    fn resumed_goes_to_the_tree_holding_the_connection() {
        use crate::engine::restore::plan::tests::process;
        use crate::engine::state::{OpenFile, TorporConnFile};
        let conn = OpenFile {
            flags: 0,
            kind: FileKind::TorporConn(TorporConnFile),
            sigio: None,
        };
        let other = OpenFile {
            kind: FileKind::Device(crate::engine::state::DeviceFile {
                path: "/dev/null".into(),
                rdev: 0x103,
                tty: false,
            }),
            ..conn.clone()
        };
        // Trees 10 and 20; the connection is held by 21, a child of 20.
        let mut holder = process(21, 20);
        holder.fds[0].file = 1;
        let st = ImageState {
            files: vec![other, conn],
            processes: vec![process(10, 0), process(20, 0), holder],
            ..ImageState::default()
        };
        assert_eq!(conn_holder(&st), Some(20));
        let st = ImageState {
            processes: vec![process(10, 0)],
            ..st
        };
        assert_eq!(conn_holder(&st), None);
    }

    #[test]
    fn long_names_match_their_comm_prefix() {
        assert!(same_name("counter", "counter"));
        assert!(same_name("a-very-long-application", "a-very-long-app"));
        assert!(!same_name("counter", "counter2"));
        assert!(!same_name("short", "shor"));
    }
}

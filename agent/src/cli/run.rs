//! `torpor run --name APP -- CMD...`: start an application the way a
//! supervisor expects, restored from its image when the store holds one.
//!
//! Restored: the restored root is the application; its pid goes into the
//! PID file (BusyBox `start-stop-daemon --pidfile`) and to systemd as
//! `MAINPID=`, and `torpor run` exits 0, like a daemon that forked.
//! Otherwise `torpor run` writes its own pid and execs CMD, which keeps it.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::Args;

use crate::cli::boot::{self, Outcome, PlaceArgs};
use crate::daemon::log;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The application's name: an image is restored only if its root
    /// process has this name (its comm, at most 15 bytes compared).
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub places: PlaceArgs,
    /// Write the application's pid here.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// The command that cold-starts the application.
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

pub fn run(a: &RunArgs) -> Result<i32, String> {
    let places = a.places.load()?;
    let dir = &crate::apps::dir_for(&places.socket);
    // `torpor boot` already brought this application back with the others
    // of its image: adopt it.
    if let Some((pid, crate::apps::Origin::Restored)) = crate::apps::lookup(dir, &a.name) {
        if crate::apps::alive(pid) {
            log::info!("{}: restored at boot as pid {pid}", a.name);
            // Adopted once: a later run of this line starts it afresh.
            note(dir, &a.name, pid);
            announce(a, pid)?;
            return Ok(0);
        }
    }
    let outcome = match boot::boot(&places, Some(&a.name)) {
        Ok(o) => o,
        // An unreadable store must not keep the application from starting.
        Err(e) => {
            log::error!("cold start of {}: {e}", a.name);
            Outcome::ColdStart(e.to_string())
        }
    };
    if let Outcome::Restored { pid, generation } = outcome {
        log::info!(
            "{}: restored from image generation {generation} as pid {pid}",
            a.name
        );
        note(dir, &a.name, pid);
        announce(a, pid)?;
        return Ok(0);
    }
    // Pids are below PID_MAX_LIMIT (2^22): fits.
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    note(dir, &a.name, me);
    announce(a, me)?;
    let (cmd, args) = a.command.split_first().ok_or("give the command after --")?;
    let e = std::process::Command::new(cmd).args(args).exec();
    Err(format!("cannot run {cmd}: {e}"))
}

/// Tells the daemon (through the registry) that `name` runs as `pid`.
fn note(dir: &std::path::Path, name: &str, pid: i32) {
    if let Err(e) = crate::apps::record(dir, name, pid, crate::apps::Origin::Started) {
        log::warning!("{name}: noting pid {pid} in {} failed: {e}", dir.display());
    }
}

/// PID file and systemd notification for the application's pid.
fn announce(a: &RunArgs, pid: i32) -> Result<(), String> {
    if let Some(path) = &a.pidfile {
        std::fs::write(path, format!("{pid}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Err(e) = sd_notify(&format!("MAINPID={pid}\nREADY=1\n")) {
        log::warning!("telling systemd the main pid failed: {e}");
    }
    Ok(())
}

/// Sends `state` to systemd's `$NOTIFY_SOCKET` (a datagram socket, `@` for
/// the abstract namespace); nothing when not run by systemd.
pub fn sd_notify(state: &str) -> std::io::Result<()> {
    use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::new_abstract(name),
        None => UnixAddr::new(std::path::Path::new(&path)),
    }
    .map_err(std::io::Error::from)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    use std::os::fd::AsRawFd;
    sendto(fd.as_raw_fd(), state.as_bytes(), &addr, MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    Ok(())
}

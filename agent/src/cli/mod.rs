//! Command-line front end: one module per subcommand, each returning a
//! process exit code or an error whose message tells the user what to do.

pub mod boot;
pub mod check;
pub mod daemon;
pub mod dump;
pub mod hibernate;
pub mod progress;
pub mod restore;
pub mod run;
pub mod show;
pub mod store;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `torpor`: hibernation in user space.
#[derive(Debug, Parser)]
#[command(name = "torpor", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an image (a file or the newest image of a store) as JSON.
    Show(ShowArgs),
    /// Inspect or clear the A/B image store.
    Store(StoreArgs),
    /// Report the kernel features torpor relies on.
    Check,
    /// Checkpoint a process tree (every descendant, every thread) into an image.
    Dump(dump::DumpArgs),
    /// Recreate a process tree from an image with its original pids, in a time
    /// namespace continuing its monotonic clocks where the kernel has them.
    Restore(restore::RestoreArgs),
    /// Serve hibernate and checkpoint requests on the UNIX socket.
    Daemon(daemon::DaemonArgs),
    /// Ask the daemon to hibernate a process tree (or checkpoint it, or report status).
    Hibernate(hibernate::HibernateArgs),
    /// At boot: restore the newest image of the store, or cold-start (the boot hook).
    Boot(boot::BootArgs),
    /// Start an application, restored from its image when the store holds one.
    Run(run::RunArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Image file to print.
    #[arg(conflicts_with = "store", required_unless_present = "store")]
    pub image: Option<PathBuf>,
    /// Print the newest valid image of this store (partition or file).
    #[arg(long)]
    pub store: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub action: StoreAction,
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Show both slots: state, generation, length, CRC, attempts.
    Status {
        /// The store: a raw partition or a regular file.
        #[arg(long)]
        store: PathBuf,
    },
    /// Mark both slots empty.
    Clear {
        /// The store: a raw partition or a regular file.
        #[arg(long)]
        store: PathBuf,
    },
    /// Make PATH an empty store: a new file (mode 0600), an empty file, an
    /// all-zero partition, or one holding something else (erased). A valid
    /// store is only erased with --force.
    Init {
        /// The store: a raw partition or a regular file.
        #[arg(long, required_unless_present = "device", conflicts_with = "device")]
        store: Option<PathBuf>,
        /// A partition to prepare as the store: it must exist, and one that
        /// holds a filesystem (ext2/3/4, FAT, btrfs, XFS, swap) is refused.
        #[arg(long, value_name = "DEV")]
        device: Option<PathBuf>,
        /// Erase a store that already holds images, or (with --device) a
        /// filesystem.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result: Result<i32, String> = match cli.command {
        Command::Dump(a) => dump::run(&a),
        Command::Restore(a) => restore::run(&a),
        Command::Show(args) => show::run(&args).map(|()| 0).map_err(|e| e.to_string()),
        Command::Store(args) => store::run(&args.action)
            .map(|()| 0)
            .map_err(|e| e.to_string()),
        Command::Check => Ok(check::run()),
        Command::Daemon(args) => Ok(daemon::run(args)),
        Command::Hibernate(args) => Ok(hibernate::run(args)),
        Command::Boot(args) => Ok(boot::run(&args)),
        Command::Run(args) => run::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("torpor: error: {e}");
            1
        }
    }
}

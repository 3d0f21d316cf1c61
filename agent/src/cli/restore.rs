//! `torpor restore`: recreate a process tree from an image and let it run.

use std::path::PathBuf;

use clap::Args;

use crate::cli::progress::{self, Bar};
use crate::engine::restore::{restore_file, restore_store, RestoreOptions};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Image file to restore.
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    pub image: Option<PathBuf>,
    /// Restore the newest valid image of this A/B store instead.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Terminal to use in place of one that no longer exists.
    #[arg(long)]
    pub tty: Option<PathBuf>,
    /// Put this process's descriptor N in place of the image's external fd
    /// KEY (see `dump --external-fd`).
    #[arg(long, value_name = "KEY=N", value_parser = parse_inherit)]
    pub inherit_fd: Vec<(String, i32)>,
    /// Let the tree read the host's CLOCK_MONOTONIC and CLOCK_BOOTTIME. By
    /// default, where the kernel has time namespaces, the tree gets its own:
    /// its monotonic clock continues from the dump (the time asleep does not
    /// count) and its boottime clock also counts the time asleep.
    #[arg(long)]
    pub no_timens: bool,
    /// Bring back the established TCP connections the image keeps (see
    /// `dump --tcp-established`); such an image is refused without it.
    #[arg(long)]
    pub tcp_established: bool,
    /// Print nothing on success: no progress line, no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_inherit(s: &str) -> Result<(String, i32), String> {
    let bad = || format!("{s:?} is not KEY=N");
    let (key, fd) = s.rsplit_once('=').ok_or_else(bad)?;
    if key.is_empty() {
        return Err(bad());
    }
    Ok((key.to_string(), fd.parse().map_err(|_| bad())?))
}

pub fn run(a: &RestoreArgs) -> Result<i32, String> {
    let bar = Bar::on_terminal("restoring", a.quiet);
    let opts = RestoreOptions {
        tty: a.tty.clone(),
        inherit: a.inherit_fd.clone(),
        host_clocks: a.no_timens,
        tcp_established: a.tcp_established,
        progress: progress::hook(bar.as_ref()),
        ..RestoreOptions::default()
    };
    let stats = match (&a.image, &a.store) {
        (Some(img), _) => restore_file(img, &opts),
        (None, Some(store)) => restore_store(store, &opts),
        (None, None) => return Err("give --image FILE or --store PATH".to_string()),
    };
    if let Some(b) = &bar {
        b.finish();
    }
    let stats = stats.map_err(|e| e.to_string())?;
    if a.quiet {
        return Ok(0);
    }
    eprintln!(
        "torpor: restored {} process(es), {} thread(s), {} bytes of memory",
        stats.processes, stats.threads, stats.page_bytes
    );
    if let Some(c) = &stats.clocks {
        eprintln!("torpor: {c}");
    }
    Ok(0)
}

//! `torpor dump`: checkpoint a process tree into an image file.

use std::path::PathBuf;

use clap::Args;

use crate::cli::progress::{self, Bar};
use crate::engine::dump::{dump_many_to_file, dump_many_to_store, After, DumpOptions};

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Root of a tree to dump; all descendants and threads are included.
    /// Given several times, every tree is frozen first and all go into one
    /// image, which `torpor restore` brings back together.
    #[arg(long, required = true, num_args = 1)]
    pub pid: Vec<i32>,
    /// Image file to write.
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    pub image: Option<PathBuf>,
    /// Write into this A/B store (a raw partition or a file) instead.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Keep the tree running after a good dump (default: kill it).
    #[arg(long)]
    pub leave_running: bool,
    /// Leave fd FD of process PID out of the image as external fd KEY (a
    /// socket to a supervisor, say); the restore needs `--inherit-fd KEY=N`.
    #[arg(long, value_name = "PID:FD=KEY", value_parser = parse_external)]
    pub external_fd: Vec<(i32, i32, String)>,
    /// Keep established TCP connections: each is taken in TCP repair mode
    /// (sequence numbers, queues, options, window) and its packets are
    /// held off with an nftables table until the restore, so the peer goes
    /// on with the same connection. Without it they come back reset.
    #[arg(long)]
    pub tcp_established: bool,
    /// Print nothing on success: no progress line, no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_external(s: &str) -> Result<(i32, i32, String), String> {
    let bad = || format!("{s:?} is not PID:FD=KEY");
    let (pidfd, key) = s.split_once('=').ok_or_else(bad)?;
    let (pid, fd) = pidfd.split_once(':').ok_or_else(bad)?;
    if key.is_empty() {
        return Err(bad());
    }
    Ok((
        pid.parse().map_err(|_| bad())?,
        fd.parse().map_err(|_| bad())?,
        key.to_string(),
    ))
}

pub fn run(a: &DumpArgs) -> Result<i32, String> {
    let bar = Bar::on_terminal("dumping", a.quiet);
    let opts = DumpOptions {
        external: a.external_fd.clone(),
        progress: progress::hook(bar.as_ref()),
        tcp_established: a.tcp_established,
        ..DumpOptions::default()
    };
    let after = if a.leave_running {
        After::LeaveRunning
    } else {
        After::Kill
    };
    let (stats, dest) = match (&a.image, &a.store) {
        (Some(img), _) => (dump_many_to_file(&a.pid, img, after, &opts), img),
        (None, Some(store)) => (dump_many_to_store(&a.pid, store, after, &opts), store),
        (None, None) => return Err("give --image FILE or --store PATH".to_string()),
    };
    if let Some(b) = &bar {
        b.finish();
    }
    let stats = stats.map_err(|e| match e.root {
        // Which tree, when there are several.
        Some(root) if a.pid.len() > 1 => format!("tree of process {root}: {}", e.error),
        _ => e.error.to_string(),
    })?;
    if a.quiet {
        return Ok(0);
    }
    eprintln!(
        "torpor: dumped {} process(es), {} thread(s), {} bytes of memory into {}",
        stats.processes,
        stats.threads,
        stats.page_bytes,
        dest.display()
    );
    Ok(0)
}

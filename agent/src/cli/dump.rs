//! `torpor dump`: checkpoint a process tree into an image file.

use std::path::PathBuf;

use clap::Args;

use crate::engine::dump::{dump_to_file, dump_to_store, After};

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Root of the tree to dump; all descendants and threads are included.
    #[arg(long)]
    pub pid: i32,
    /// Image file to write.
    #[arg(long, conflicts_with = "store", required_unless_present = "store")]
    pub image: Option<PathBuf>,
    /// Write into this A/B store (a raw partition or a file) instead.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Keep the tree running after a good dump (default: kill it).
    #[arg(long)]
    pub leave_running: bool,
}

pub fn run(a: &DumpArgs) -> Result<i32, String> {
    let after = if a.leave_running {
        After::LeaveRunning
    } else {
        After::Kill
    };
    let (stats, dest) = match (&a.image, &a.store) {
        (Some(img), _) => (dump_to_file(a.pid, img, after), img),
        (None, Some(store)) => (dump_to_store(a.pid, store, after), store),
        (None, None) => return Err("give --image FILE or --store PATH".to_string()),
    };
    let stats = stats.map_err(|e| e.to_string())?;
    eprintln!(
        "torpor: dumped {} process(es), {} thread(s), {} bytes of memory into {}",
        stats.processes,
        stats.threads,
        stats.page_bytes,
        dest.display()
    );
    Ok(0)
}

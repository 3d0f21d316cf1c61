//! `torpor dump`: checkpoint a process tree into an image file.

use std::path::PathBuf;

use clap::Args;

use crate::engine::dump::{dump_to_file, After};

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Root of the tree to dump; all descendants and threads are included.
    #[arg(long)]
    pub pid: i32,
    /// Image file to write.
    #[arg(long)]
    pub image: PathBuf,
    /// Keep the tree running after a good dump (default: kill it).
    #[arg(long)]
    pub leave_running: bool,
}

pub fn run(a: &DumpArgs) -> Result<i32, String> {
    let after = if a.leave_running { After::LeaveRunning } else { After::Kill };
    let stats = dump_to_file(a.pid, &a.image, after).map_err(|e| e.to_string())?;
    eprintln!(
        "torpor: dumped {} process(es), {} thread(s), {} bytes of memory into {}",
        stats.processes,
        stats.threads,
        stats.page_bytes,
        a.image.display()
    );
    Ok(0)
}

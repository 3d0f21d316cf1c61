//! `torpor restore`: recreate a process tree from an image and let it run.

use std::path::PathBuf;

use clap::Args;

use crate::engine::restore::{restore_file, RestoreOptions};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Image file to restore.
    #[arg(long)]
    pub image: PathBuf,
    /// Terminal to use in place of one that no longer exists.
    #[arg(long)]
    pub tty: Option<PathBuf>,
}

pub fn run(a: &RestoreArgs) -> Result<i32, String> {
    let opts = RestoreOptions { tty: a.tty.clone() };
    let stats = restore_file(&a.image, &opts).map_err(|e| e.to_string())?;
    eprintln!(
        "torpor: restored {} process(es), {} thread(s), {} bytes of memory",
        stats.processes, stats.threads, stats.page_bytes
    );
    Ok(0)
}

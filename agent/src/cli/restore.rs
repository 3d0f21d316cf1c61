//! `torpor restore`: recreate a process tree from an image and let it run.

use std::path::PathBuf;

use clap::Args;

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
}

pub fn run(a: &RestoreArgs) -> Result<i32, String> {
    let opts = RestoreOptions { tty: a.tty.clone(), ..RestoreOptions::default() };
    let stats = match (&a.image, &a.store) {
        (Some(img), _) => restore_file(img, &opts),
        (None, Some(store)) => restore_store(store, &opts),
        (None, None) => return Err("give --image FILE or --store PATH".to_string()),
    }
    .map_err(|e| e.to_string())?;
    eprintln!(
        "torpor: restored {} process(es), {} thread(s), {} bytes of memory",
        stats.processes, stats.threads, stats.page_bytes
    );
    Ok(0)
}

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
    /// Let the tree run as soon as its registers, mappings and files are
    /// in place: its private anonymous pages arrive on first touch
    /// (userfaultfd) and in the background, and torpor exits once all are
    /// in. Where userfaultfd is unavailable the restore is eager, with one
    /// log line. If the image turns out damaged meanwhile, the tree is
    /// killed.
    #[arg(long)]
    pub lazy: bool,
    /// Bring back the established TCP connections the image keeps (see
    /// `dump --tcp-established`); such an image is refused without it.
    #[arg(long)]
    pub tcp_established: bool,
    /// Print nothing on success: no progress line, no summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Says when a lazy restore's tree starts to run, passing the pages on to
/// the progress line if there is one.
#[derive(Debug)]
struct Running(Option<std::sync::Arc<dyn crate::engine::Progress>>);

impl crate::engine::Progress for Running {
    fn expect(&self, bytes: u64) {
        if let Some(p) = &self.0 {
            p.expect(bytes);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(p) = &self.0 {
            p.advance(bytes);
        }
    }
    fn running(&self) {
        eprintln!("torpor: the tree runs; its pages arrive lazily");
    }
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
        progress: if a.lazy && !a.quiet {
            Some(std::sync::Arc::new(Running(progress::hook(bar.as_ref()))))
        } else {
            progress::hook(bar.as_ref())
        },
        lazy: a.lazy,
        tcp_established: a.tcp_established,
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
    if let Some(l) = &stats.lazy {
        eprintln!(
            "torpor: lazily: {} process(es), {} bytes on {} fault(s), {} bytes in the background, {} zero page(s)",
            l.processes, l.fault_bytes, l.faults, l.background_bytes, l.zero_pages
        );
    }
    Ok(0)
}

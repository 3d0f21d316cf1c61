//! The checkpoint/restore engine: freeze a process tree, collect its state,
//! stream it into an image; and rebuild a tree from an image.
//!
//! Flow of a dump: `freeze` (seize every thread) → `collect` (registers,
//! /proc, parasite, files) → `dump` (stream state and pages through
//! `image_io` into the image) → release or kill. Flow of a restore:
//! `image_io` reads and checks the whole image, `restore` validates it,
//! forks the tasks with their pids, rebuilds each address space through
//! remote syscalls (`remote`, `ptrace`), and lets the tree go; `clocks`
//! keeps the tree's monotonic clocks continuous across both. `procfs`
//! parses /proc; `state` is the plain data in between.

pub mod clocks;
pub mod collect;
pub mod dump;
pub mod files;
pub mod freeze;
pub mod image_io;
pub mod procfs;
pub mod ptrace;
pub mod remote;
pub mod restore;
pub mod state;
pub mod torpor_conn;

use crate::engine::procfs::ProcError;
use crate::engine::ptrace::PtraceError;
use crate::engine::remote::RemoteError;

/// The system page size.
pub fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Why a step of a dump or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Ptrace(#[from] PtraceError),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Refused(String),
}

impl From<crate::arch::RegsError> for Cause {
    fn from(e: crate::arch::RegsError) -> Self {
        Cause::Ptrace(e.into())
    }
}

/// A failed step: `<step>: <cause>`.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct EngineError {
    pub step: String,
    pub cause: Cause,
}

/// Attaches a step name to any error convertible into a [`Cause`].
pub trait StepExt<T> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, EngineError>;
}

impl<T, E: Into<Cause>> StepExt<T> for Result<T, E> {
    fn step(self, step: impl FnOnce() -> String) -> Result<T, EngineError> {
        self.map_err(|e| EngineError {
            step: step(),
            cause: e.into(),
        })
    }
}

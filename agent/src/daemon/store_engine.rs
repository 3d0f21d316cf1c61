//! The daemon's engine: the checkpoint engine writing into the A/B store.
//!
//! Hibernate dumps the caller's tree into the store's free slot (written,
//! synced, read back and verified by the store's commit) with the caller's
//! connection recorded as such, and keeps the tree frozen: the power is cut
//! next, and a tree that ran on after its image was taken would diverge
//! from it. Abandon marks that image consumed, so no boot restores a copy
//! of a tree that never stopped, and lets the tree go.

use std::os::fd::RawFd;
use std::path::PathBuf;

use crate::daemon::{log, CheckpointError, Engine, Pid, Stored};
use crate::engine::dump::{dump_frozen_with, dump_trees, DumpOptions, Trees};
use crate::engine::freeze::Frozen;
use crate::engine::torpor_conn;
use crate::engine::{Step, StepExt};
use crate::image::records::RequestedBy;
use crate::protocol::{StoreState, StoreSummary};
use crate::store::{self, SlotInfo, Store};

/// Checkpoints into the store at `path` (a partition, or a file created on
/// first use).
#[derive(Debug)]
pub struct StoreEngine {
    path: PathBuf,
    /// The tree kept frozen after a hibernate dump, by root pid.
    frozen: Option<(Pid, Frozen)>,
    /// The trees of every managed application, kept frozen after a
    /// hibernate of them all.
    frozen_all: Option<Trees>,
    /// Who asks for the next dump (`Engine::requested_by`), recorded in
    /// its image.
    requester: Option<RequestedBy>,
    /// Keep established TCP connections (`restore.tcp_established`).
    tcp_established: bool,
}

impl StoreEngine {
    pub fn new(path: PathBuf) -> Self {
        StoreEngine {
            path,
            frozen: None,
            frozen_all: None,
            requester: None,
            tcp_established: false,
        }
    }

    /// Dumps keep established TCP connections through repair mode.
    #[must_use]
    pub fn tcp_established(mut self, keep: bool) -> Self {
        self.tcp_established = keep;
        self
    }

    /// A partition must exist; a store file is created on first use.
    fn is_device(&self) -> bool {
        self.path.starts_with("/dev")
    }

    fn open(&self) -> Result<Store, CheckpointError> {
        if self.is_device() {
            Store::open(&self.path)
        } else {
            Store::open_or_create(&self.path)
        }
        .map_err(|e| CheckpointError::Store(e.to_string()))
    }

    /// Dumps every tree of `trees` into one image of the store, the
    /// caller's connection recorded as such; the trees stay frozen on `Ok`.
    fn dump_all(
        &mut self,
        trees: &[(Pid, String)],
        conn_fd: RawFd,
    ) -> Result<(Stored, Trees), CheckpointError> {
        let conn = caller_conn(conn_fd)?;
        let mut store = self.open()?;
        let writer = store
            .writer()
            .map_err(|e| CheckpointError::Store(e.to_string()))?;
        let mut committed: Option<SlotInfo> = None;
        let roots: Vec<i32> = trees.iter().map(|(p, _)| p.as_raw()).collect();
        let result = dump_trees(
            &roots,
            Some(conn),
            // The slot writer buffers, and lends its buffer to the pages.
            writer,
            &DumpOptions {
                requested_by: self.requester.take(),
                names: trees.iter().map(|(p, n)| (p.as_raw(), n.clone())).collect(),
                tcp_established: self.tcp_established,
                ..DumpOptions::default()
            },
            |w| {
                let info = w.commit().step(Step::Store)?;
                committed = Some(info);
                Ok(())
            },
        );
        let (_, frozen) = result.map_err(|e| {
            let name = e
                .root
                .and_then(|r| trees.iter().find(|(p, _)| p.as_raw() == r))
                .map(|(p, n)| format!("app {n} (pid {p}): "))
                .unwrap_or_default();
            failed(e.error.step, format!("{name}{}", e.error))
        })?;
        Ok((stored(committed)?, frozen))
    }

    /// Dumps the tree of `pid` into the store; the tree is frozen on `Ok`.
    fn dump(&mut self, pid: Pid, conn_fd: RawFd) -> Result<(Stored, Frozen), CheckpointError> {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(CheckpointError::NoSuchProcess(pid));
        }
        let conn = caller_conn(conn_fd)?;
        let mut store = self.open()?;
        let writer = store
            .writer()
            .map_err(|e| CheckpointError::Store(e.to_string()))?;
        let mut committed: Option<SlotInfo> = None;
        let result = dump_frozen_with(
            pid.as_raw(),
            Some(conn),
            // The slot writer buffers, and lends its buffer to the pages.
            writer,
            &DumpOptions {
                requested_by: self.requester.take(),
                tcp_established: self.tcp_established,
                ..DumpOptions::default()
            },
            |w| {
                let info = w.commit().step(Step::Store)?;
                committed = Some(info);
                Ok(())
            },
        );
        let (_, frozen) = result.map_err(|e| failed(e.step, e.to_string()))?;
        Ok((stored(committed)?, frozen))
    }
}

/// The inode of the caller's end of its connection to the daemon.
fn caller_conn(conn_fd: RawFd) -> Result<u64, CheckpointError> {
    torpor_conn::peer_inode(conn_fd).map_err(|e| {
        CheckpointError::Dump(format!(
            "cannot find the caller's end of its connection: {e}"
        ))
    })
}

/// A failed dump, as a store failure when the store or the image writing
/// failed, a dump failure otherwise.
fn failed(step: Step, text: String) -> CheckpointError {
    if matches!(step, Step::Store | Step::WriteImage) {
        CheckpointError::Store(text)
    } else {
        CheckpointError::Dump(text)
    }
}

/// What a dump stored: the slot the store committed.
fn stored(committed: Option<SlotInfo>) -> Result<Stored, CheckpointError> {
    let info =
        committed.ok_or_else(|| CheckpointError::Store("the image was never committed".into()))?;
    Ok(Stored {
        generation: info.generation,
        image_bytes: info.len,
    })
}

impl Engine for StoreEngine {
    fn hibernate(
        &mut self,
        pid: Pid,
        conn_fd: RawFd,
        _wake: Option<u32>,
    ) -> Result<Stored, CheckpointError> {
        if let Some((held, _)) = &self.frozen {
            return Err(CheckpointError::Busy(format!(
                "tree {held} is already being hibernated"
            )));
        }
        let (stored, frozen) = self.dump(pid, conn_fd)?;
        self.frozen = Some((pid, frozen));
        Ok(stored)
    }

    fn abandon(&mut self, pid: Pid, generation: u64) -> Result<(), CheckpointError> {
        let result = (|| {
            let mut store = self.open()?;
            let slot = store::Slot::BOTH
                .into_iter()
                .find(|s| store.info(*s).is_some_and(|i| i.generation == generation))
                .ok_or_else(|| {
                    CheckpointError::Store(format!("no slot holds image generation {generation}"))
                })?;
            store
                .mark(slot, store::State::Consumed)
                .map_err(|e| CheckpointError::Store(e.to_string()))?;
            log::info!("image generation {generation} in slot {slot} marked consumed");
            Ok(())
        })();
        // The trees run on whatever became of their image.
        if let Some(mut all) = self.frozen_all.take() {
            all.release();
        }
        if let Some((held, mut frozen)) = self.frozen.take() {
            if held != pid {
                log::warning!("abandon for pid {pid} releases tree {held}");
            }
            frozen.release();
        }
        result
    }

    fn hibernate_all(
        &mut self,
        trees: &[(Pid, String)],
        _pid: Pid,
        conn_fd: RawFd,
        _wake: Option<u32>,
    ) -> Result<Stored, CheckpointError> {
        if self.frozen.is_some() || self.frozen_all.is_some() {
            return Err(CheckpointError::Busy(
                "a hibernation is already under way".into(),
            ));
        }
        let (stored, frozen) = self.dump_all(trees, conn_fd)?;
        self.frozen_all = Some(frozen);
        Ok(stored)
    }

    fn requested_by(&mut self, who: RequestedBy) {
        self.requester = Some(who);
    }

    fn checkpoint(&mut self, pid: Pid, conn_fd: RawFd) -> Result<Stored, CheckpointError> {
        let (stored, mut frozen) = self.dump(pid, conn_fd)?;
        frozen.release();
        Ok(stored)
    }

    fn status(&mut self) -> StoreSummary {
        let unavailable = StoreSummary {
            state: StoreState::Unavailable,
            generation: 0,
            image_bytes: 0,
        };
        // Read-only, under the shared lock: a status never waits for a
        // dump's exclusive lock to be given up.
        let Ok(store) = Store::open_read_only(&self.path) else {
            return if self.path.exists() || self.is_device() {
                unavailable
            } else {
                StoreSummary {
                    state: StoreState::Empty,
                    generation: 0,
                    image_bytes: 0,
                }
            };
        };
        match store.newest() {
            Ok(Some((info, _))) => summary(&info),
            Ok(None) => {
                // The highest generation says why nothing is restorable.
                let top = store::Slot::BOTH
                    .into_iter()
                    .filter_map(|s| store.info(s))
                    .max_by_key(|i| i.generation);
                match top {
                    Some(i) if i.state == store::State::Consumed => summary(&i),
                    _ => StoreSummary {
                        state: StoreState::Empty,
                        generation: 0,
                        image_bytes: 0,
                    },
                }
            }
            Err(_) => unavailable,
        }
    }

    fn power_returned(&mut self, _pid: Pid) {
        if let Some(mut all) = self.frozen_all.take() {
            all.release();
        }
        if let Some((_, mut frozen)) = self.frozen.take() {
            frozen.release();
        }
    }
}

fn summary(i: &SlotInfo) -> StoreSummary {
    let state = match i.state {
        store::State::Empty => StoreState::Empty,
        store::State::Valid => StoreState::Valid,
        store::State::Restoring => StoreState::Restoring,
        store::State::Consumed => StoreState::Consumed,
    };
    StoreSummary {
        state,
        generation: i.generation,
        image_bytes: i.len,
    }
}

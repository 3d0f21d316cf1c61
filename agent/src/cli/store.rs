//! `torpor store status|clear|init`: inspect, empty or create the A/B image
//! store.

use std::io::{self, Write};

use super::StoreAction;
use crate::store::{Store, StoreError};

/// Why `torpor store` failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreCmdError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the output: {0}")]
    Output(io::Error),
    #[error("give --store PATH or --device DEV")]
    NoStore,
}

pub fn run(action: &StoreAction) -> Result<(), StoreCmdError> {
    let mut out = io::stdout().lock();
    match action {
        StoreAction::Status { store } => {
            let store = Store::open_read_only(store)?;
            for s in store.status() {
                writeln!(out, "{s}").map_err(StoreCmdError::Output)?;
            }
        }
        StoreAction::Clear { store: path } => {
            let mut store = Store::open(path)?;
            store.clear()?;
            writeln!(out, "store {}: both slots empty", path.display())
                .map_err(StoreCmdError::Output)?;
        }
        StoreAction::Init {
            store,
            device,
            force,
        } => {
            let (store, path) = match (store, device) {
                (_, Some(dev)) => (Store::init_device(dev, *force)?, dev),
                (Some(path), None) => (Store::init(path, *force)?, path),
                (None, None) => return Err(StoreCmdError::NoStore),
            };
            writeln!(
                out,
                "store {}: two empty slots of {} bytes of image each",
                path.display(),
                store.capacity()
            )
            .map_err(StoreCmdError::Output)?;
        }
    }
    Ok(())
}

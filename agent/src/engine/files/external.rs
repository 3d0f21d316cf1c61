//! Descriptors kept outside the image: the restore is handed one for each
//! key (`--inherit-fd KEY=FD`) and gives the tree a duplicate.
//!
//! Unsafe code: `fcntl(F_DUPFD_CLOEXEC)` on the descriptor handed in.
#![allow(unsafe_code)]

use crate::engine::state::ExternalFile;
use crate::engine::Cause;
use crate::image::records::FdKind;

use super::{last_os, CheckCx, FsKind, OpenCx};

impl FsKind for ExternalFile {
    const NAME: &'static str = "an external descriptor";

    fn record(&self, flags: u32) -> FdKind {
        FdKind::External {
            key: self.key.clone(),
            flags,
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        match k {
            FdKind::External { key, flags } => {
                Some(Ok((*flags, ExternalFile { key: key.clone() })))
            }
            _ => None,
        }
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<(), String> {
        let key = &self.key;
        if cx.inherit.iter().any(|(k, _)| k == key) {
            Ok(())
        } else {
            Err(format!(
                "external fd {key:?} needs a descriptor: give --inherit-fd {key}=FD"
            ))
        }
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let key = &self.key;
        let &(_, given) = cx
            .inherit
            .iter()
            .find(|(k, _)| k == key)
            .ok_or_else(|| Cause::Refused(format!("no descriptor for external fd {key:?}")))?;
        // SAFETY: duplicating a descriptor the caller handed over.
        let fd = unsafe { libc::fcntl(given, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            let e = last_os();
            return Err(std::io::Error::new(
                e.kind(),
                format!("creating external fd {key:?}: {e}"),
            )
            .into());
        }
        Ok(fd)
    }
}

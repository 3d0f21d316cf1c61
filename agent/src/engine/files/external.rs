//! Descriptors kept outside the image: the restore is handed one for each
//! key (`--inherit-fd KEY=FD`) and gives the tree a duplicate.

use crate::engine::state::ExternalFile;
use crate::engine::Cause;
use crate::image::records::FdKind;

use super::{dup_given, CheckCx, FsKind, OpenCx};

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
        dup_given(given, format_args!("creating external fd {key:?}"))
    }
}

//! Character devices and terminals, reopened by path; a terminal that is
//! gone may be replaced by one the operator names (`--tty`).

use crate::engine::state::DeviceFile;
use crate::engine::Cause;
use crate::image::records::FdKind;

use super::owner::{check_path, type_name, Check, Same};
use super::{open_own, CheckCx, FsKind, OpenCx};

impl FsKind for DeviceFile {
    const NAME: &'static str = "a device";

    fn record(&self, flags: u32) -> FdKind {
        let path = self.path.as_str().into();
        let rdev = self.rdev;
        if self.tty {
            FdKind::Tty { path, rdev, flags }
        } else {
            FdKind::Device { path, rdev, flags }
        }
    }

    fn from_record(k: &FdKind) -> Option<Result<(u32, Self), String>> {
        let (path, rdev, flags, tty) = match k {
            FdKind::Device { path, rdev, flags } => (path, rdev, flags, false),
            FdKind::Tty { path, rdev, flags } => (path, rdev, flags, true),
            _ => return None,
        };
        Some(Ok((
            *flags,
            DeviceFile {
                path: path.to_string(),
                rdev: *rdev,
                tty,
            },
        )))
    }

    fn check(&self, cx: &CheckCx<'_>) -> Result<(), String> {
        let path = &self.path;
        let exists = match check_path(cx.st, "device", path, cx.who, Same::Type) {
            Ok(md) => {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let t = md.file_type();
                if !(t.is_char_device() || t.is_block_device()) {
                    return Err(format!(
                        "device {path} changed since the dump: {}, the dump's was a device",
                        type_name(md.mode())
                    ));
                }
                true
            }
            Err(Check::Gone) => false,
            Err(Check::Refused(why)) => return Err(why),
        };
        if !(exists || (self.tty && cx.tty.is_some())) {
            let hint = if self.tty {
                "; give --tty PATH to use another terminal"
            } else {
                ""
            };
            return Err(format!("device {path} is gone{hint}"));
        }
        Ok(())
    }

    fn open(&self, cx: &mut OpenCx<'_>) -> Result<i32, Cause> {
        let flags = cx.open_flags() | libc::O_NOCTTY;
        match cx.tty {
            // The terminal the operator gave in place of one gone.
            Some(t) if self.tty && std::fs::symlink_metadata(&self.path).is_err() => {
                open_own(&t.to_string_lossy(), flags)
            }
            _ => cx.opening.open("device", &self.path, flags),
        }
    }
}

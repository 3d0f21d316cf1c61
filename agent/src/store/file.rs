//! The store on a partition or a regular file: who may see it, the lock
//! that keeps two torpor processes from writing it at once, and what the
//! device holds before it is used as a store.
//!
//! Images hold every byte of the dumped processes' memory, root's processes
//! included, and `torpor boot` restores whatever the store holds as the
//! image's owner. So the store must belong to root (or to the user running
//! torpor) and be neither readable nor writable by others; its group may
//! read it only when `store.allow_group_read` says so. A partition whose
//! group is `root` or `disk` keeps its group permissions: those groups can
//! read every disk of the system already.
//!
//! Every opener takes a `flock` on the store: writers exclusively, readers
//! shared. A second writer waits for the first one (up to [`LOCK_WAIT`]),
//! so two dumps commit one after the other.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::{
    Device, Slot, StoreError, CRC_AT, IMAGE_OFFSET, MAGIC, MIN_STORE_SIZE, SECTOR_BYTES, SLOT_ALIGN,
};

/// How long an opener waits for another torpor to release the store. A
/// dump of a Pi Zero's whole memory, written to an SD card, read back and
/// verified, takes well under this.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);
/// The bytes before a slot's image: its header copies and the gap after.
const HEADER_AREA: usize = 4096;
const _: () = assert!(HEADER_AREA as u64 == IMAGE_OFFSET);
/// How often a waiting opener tries the lock again.
const LOCK_POLL: Duration = Duration::from_millis(20);

static ALLOW_GROUP_READ: AtomicBool = AtomicBool::new(false);

/// Lets the store's group read it (`store.allow_group_read`), for every
/// store this process opens from now on.
pub fn allow_group_read(allow: bool) {
    ALLOW_GROUP_READ.store(allow, Ordering::Relaxed);
}

/// Reading only, or reading and writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// A block device or regular file, locked for as long as it is open.
#[derive(Debug)]
pub struct FileDevice {
    file: Flock<File>,
    len: u64,
    regular: bool,
}

impl FileDevice {
    /// Opens an existing block device or regular file for reading and
    /// writing, with the exclusive lock. A block device's size comes from
    /// seeking to its end (the kernel answers with the device size, as
    /// BLKGETSIZE64 would).
    pub fn open(path: &Path) -> Result<FileDevice, StoreError> {
        let file = open_file(path, Access::Write, false)?;
        FileDevice::locked(path, file, Access::Write, LOCK_WAIT)
    }

    /// Opens an existing block device or regular file read-only, with the
    /// shared lock.
    pub fn open_read_only(path: &Path) -> Result<FileDevice, StoreError> {
        let file = open_file(path, Access::Read, false)?;
        FileDevice::locked(path, file, Access::Read, LOCK_WAIT)
    }

    /// Opens `path` for writing, first creating it (mode 0600, never through
    /// a symbolic link) when nothing is there; an empty regular file is
    /// given `size` bytes.
    pub(super) fn create(path: &Path, size: u64) -> Result<FileDevice, StoreError> {
        let file = open_file(path, Access::Write, true)?;
        let mut dev = FileDevice::locked(path, file, Access::Write, LOCK_WAIT)?;
        dev.grow_empty(path, size)?;
        Ok(dev)
    }

    /// Opens `path` for `torpor store init`: created as by [`create`], and a
    /// regular file that others could read is made private first.
    ///
    /// [`create`]: FileDevice::create
    pub(super) fn for_init(path: &Path, size: u64) -> Result<FileDevice, StoreError> {
        let file = open_file(path, Access::Write, true)?;
        let meta = file.metadata().map_err(|e| open_err(path, e))?;
        if meta.is_file() && meta.mode() & 0o077 != 0 && owner_ok(meta.uid()) {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| open_err(path, e))?;
        }
        let mut dev = FileDevice::locked(path, file, Access::Write, LOCK_WAIT)?;
        // Too small to hold a store: whatever it holds is erased anyway.
        if dev.regular && dev.len < MIN_STORE_SIZE {
            dev.file.set_len(0).map_err(|e| open_err(path, e))?;
            dev.len = 0;
        }
        dev.grow_empty(path, size)?;
        Ok(dev)
    }

    /// Checks who may see the file, then takes its lock, waiting at most
    /// `wait`, and learns its size.
    fn locked(
        path: &Path,
        file: File,
        access: Access,
        wait: Duration,
    ) -> Result<FileDevice, StoreError> {
        let meta = file.metadata().map_err(|e| open_err(path, e))?;
        let ft = meta.file_type();
        if !ft.is_block_device() && !ft.is_file() {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
            });
        }
        exposure(
            path,
            &meta,
            ALLOW_GROUP_READ.load(Ordering::Relaxed),
            disk_group(),
        )?;
        let mut file = lock(path, file, access, wait)?;
        // After the lock: the writer that held it may have sized the file.
        let len = if ft.is_block_device() {
            file.seek(SeekFrom::End(0)).map_err(|e| open_err(path, e))?
        } else {
            file.metadata().map_err(|e| open_err(path, e))?.len()
        };
        Ok(FileDevice {
            file,
            len,
            regular: ft.is_file(),
        })
    }

    fn grow_empty(&mut self, path: &Path, size: u64) -> Result<(), StoreError> {
        if self.regular && self.len == 0 {
            self.file.set_len(size).map_err(|e| open_err(path, e))?;
            self.len = size;
        }
        Ok(())
    }
}

impl Device for FileDevice {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if !self.regular {
            return Ok(());
        }
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Ok(());
        };
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        nix::fcntl::fallocate(&*self.file, flags, offset, len).map_err(io::Error::from)
    }
}

fn open_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens the file; with `create`, a missing one is created exclusively
/// (mode 0600, a symbolic link in its place is not followed).
fn open_file(path: &Path, access: Access, create: bool) -> Result<File, StoreError> {
    let mut o = OpenOptions::new();
    o.read(true).write(access == Access::Write);
    if create {
        let made = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match made {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_err(path, e)),
        }
    }
    o.open(path).map_err(|e| open_err(path, e))
}

fn owner_ok(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The `disk` group's id, if the system has one.
fn disk_group() -> Option<u32> {
    nix::unistd::Group::from_name("disk")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Refuses a store someone besides its owner could read or change.
fn exposure(
    path: &Path,
    meta: &std::fs::Metadata,
    allow_group_read: bool,
    disk_gid: Option<u32>,
) -> Result<(), StoreError> {
    let mode = meta.mode() & 0o7777;
    let uid = meta.uid();
    let p = path.display();
    let why = if !owner_ok(uid) {
        Some(format!(
            "user {uid} could read the images in it and change them (chown root {p})"
        ))
    } else if mode & 0o006 != 0 {
        Some(format!(
            "every user could read the images in it or change them (chmod o-rw {p})"
        ))
    } else if meta.file_type().is_block_device()
        && (meta.gid() == 0 || Some(meta.gid()) == disk_gid)
    {
        None
    } else if mode & 0o020 != 0 {
        Some(format!(
            "its group could change the images in it (chmod g-w {p})"
        ))
    } else if mode & 0o040 != 0 && !allow_group_read {
        Some(format!(
            "its group could read the images in it (chmod g-r {p}, or set store.allow_group_read = true)"
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(StoreError::Exposed {
            path: path.to_path_buf(),
            mode,
            uid,
            why,
        }),
        None => Ok(()),
    }
}

/// Takes the store's lock: shared to read, exclusive to write; waits up to
/// `wait` for another torpor to let go.
fn lock(
    path: &Path,
    file: File,
    access: Access,
    wait: Duration,
) -> Result<Flock<File>, StoreError> {
    let arg = match access {
        Access::Read => FlockArg::LockSharedNonblock,
        Access::Write => FlockArg::LockExclusiveNonblock,
    };
    let start = Instant::now();
    let mut file = file;
    loop {
        match Flock::lock(file, arg) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                if start.elapsed() >= wait {
                    return Err(StoreError::Locked {
                        path: path.to_path_buf(),
                        waited: wait,
                    });
                }
                file = f;
                std::thread::sleep(LOCK_POLL);
            }
            Err((f, nix::errno::Errno::EINTR)) => file = f,
            Err((_, e)) => {
                return Err(StoreError::Lock {
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}

/// What a device holds where the slot headers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    /// Only zeros: a new partition or file.
    Blank,
    /// At least one intact header copy (of any layout version or size).
    Store,
    /// Anything else: data that is not ours to overwrite.
    Foreign,
}

/// Looks at the header blocks of both slots (where they are for the
/// device's size).
pub(super) fn content<D: Device>(dev: &D) -> Result<Content, StoreError> {
    if dev.len() < MIN_STORE_SIZE {
        // No room for a store; zeros are still nothing.
        let mut all = vec![0u8; usize::try_from(dev.len()).unwrap_or(0)];
        dev.read_at(&mut all, 0).map_err(|source| StoreError::Io {
            what: "read the header of",
            slot: Slot::A,
            offset: 0,
            source,
        })?;
        return Ok(if all.iter().all(|&b| b == 0) {
            Content::Blank
        } else {
            Content::Foreign
        });
    }
    let slot_size = (dev.len() / 2) / SLOT_ALIGN * SLOT_ALIGN;
    let mut blank = true;
    for slot in Slot::BOTH {
        let offset = slot_size * slot.index() as u64;
        let mut area = vec![0u8; HEADER_AREA];
        dev.read_at(&mut area, offset)
            .map_err(|source| StoreError::Io {
                what: "read the header of",
                slot,
                offset,
                source,
            })?;
        for sector in area.chunks_exact(SECTOR_BYTES).take(2) {
            let crc = crc32fast::hash(&sector[..CRC_AT]);
            if sector[..8] == MAGIC && sector[CRC_AT..] == crc.to_le_bytes() {
                return Ok(Content::Store);
            }
        }
        blank &= area.iter().all(|&b| b == 0);
    }
    Ok(if blank {
        Content::Blank
    } else {
        Content::Foreign
    })
}

/// Zeros the header blocks of both slots, so nothing of what the device
/// held before counts as a slot header.
pub(super) fn erase_headers(dev: &mut FileDevice) -> Result<(), StoreError> {
    if dev.len < MIN_STORE_SIZE {
        return Err(StoreError::TooSmall {
            len: dev.len,
            min: MIN_STORE_SIZE,
        });
    }
    let slot_size = (dev.len / 2) / SLOT_ALIGN * SLOT_ALIGN;
    let zeros = vec![0u8; HEADER_AREA];
    for slot in Slot::BOTH {
        let offset = slot_size * slot.index() as u64;
        let io = |what, source| StoreError::Io {
            what,
            slot,
            offset,
            source,
        };
        dev.write_at(&zeros, offset)
            .map_err(|e| io("erase the header of", e))?;
        dev.sync().map_err(|e| io("sync the header of", e))?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) fn open_waiting(
    path: &Path,
    write: bool,
    wait: Duration,
) -> Result<FileDevice, StoreError> {
    let access = if write { Access::Write } else { Access::Read };
    let file = open_file(path, access, false)?;
    FileDevice::locked(path, file, access, wait)
}

#[cfg(test)]
pub(super) fn check_exposure(
    path: &Path,
    allow_group_read: bool,
    disk_gid: Option<u32>,
) -> Result<(), StoreError> {
    let meta = std::fs::metadata(path).map_err(|e| open_err(path, e))?;
    exposure(path, &meta, allow_group_read, disk_gid)
}

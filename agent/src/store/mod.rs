//! The A/B image store: two slots on a raw partition (or a regular file), so
//! that a power cut at any instant leaves either the previous image or the new
//! one, never a torn one.
//!
//! ```text
//!  device offset 0                      slot_size                  2*slot_size
//!  +----------------------------------+----------------------------------+---
//!  | slot A                           | slot B                           |
//!  +----------------------------------+----------------------------------+---
//!
//!  one slot:
//!  +----------+----------+-----------+-------------------------------------+
//!  | header   | header   | (unused)  | image area: IMAGE_OFFSET..slot_size |
//!  | copy 0   | copy 1   |           |                                     |
//!  | 512 B    | 512 B    | to 4 KiB  |                                     |
//!  +----------+----------+-----------+-------------------------------------+
//!
//!  one header copy (512 bytes, little endian):
//!    0  magic "TORPORSL"     8  layout version u32   12  slot u8
//!   13  state u8            16  seq u64             24  generation u64
//!   32  image length u64    40  image CRC32 u32     44  restore attempts u32
//!   48  slot size u64       56  zeros ...          508  CRC32 of bytes 0..508
//! ```
//!
//! `slot_size` is half the device, rounded down to 4 KiB. Each slot keeps two
//! copies of its header and updates them alternately (`seq` says which is
//! newer), so a sector torn by a power cut only ever damages the copy being
//! written; the other still holds the slot's previous state.
//!
//! Commit protocol ([`SlotWriter::commit`]): the slot not holding the newest
//! image is first marked empty; the image is written into it and fsynced,
//! read back and verified (CRC and [`crate::image::verify`]); only then is its
//! header written, with the next generation, and fsynced.
//!
//! Reading ([`Store::newest`]) walks the slots from the highest generation
//! down: an empty or consumed slot ends the walk (an older image must never be
//! restored after a newer one was used or discarded); a valid or restoring
//! slot whose image verifies is the answer; one that fails to verify is
//! skipped.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::image::{self, ImageError, ImageSink};

mod file;
pub mod signature;
#[cfg(test)]
mod tests;

pub use file::{allow_group_read, FileDevice, LOCK_WAIT};

/// The sector size the header layout assumes.
pub const SECTOR: u64 = 512;
const SECTOR_BYTES: usize = 512;
/// Where the image starts inside a slot: after the two header copies,
/// aligned to 4 KiB.
pub const IMAGE_OFFSET: u64 = 4096;
/// Slot sizes are multiples of this.
const SLOT_ALIGN: u64 = 4096;
/// The smallest store: two slots of a header block and 4 KiB of image.
pub const MIN_STORE_SIZE: u64 = 4 * SLOT_ALIGN;
/// The size [`Store::open_or_create`] gives a new regular file (sparse).
pub const DEFAULT_FILE_SIZE: u64 = 256 * 1024 * 1024;

const MAGIC: [u8; 8] = *b"TORPORSL";
const LAYOUT_VERSION: u32 = 1;
const CRC_AT: usize = 508;
/// Image bytes written to the device per call: room for a few page records,
/// so that a dump reads pages straight into the slot writer's buffer
/// (`ImageSink`).
const WRITE_CHUNK: usize = 256 * 1024;

/// A store device: a partition, a file, or a fake in tests.
#[allow(clippy::len_without_is_empty)] // a store is never empty: it is refused when small
pub trait Device {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Gives back the space of `len` bytes from `offset` whose contents no
    /// longer matter (an image that was never committed). Where the device
    /// cannot, the bytes simply stay.
    fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Everything that can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is neither a block device nor a regular file")]
    NotAStore { path: PathBuf },
    #[error("store {path} has mode {mode:04o} and owner uid {uid}: {why}")]
    Exposed {
        path: PathBuf,
        mode: u32,
        uid: u32,
        why: String,
    },
    #[error(
        "store {path} is in use by another torpor: gave up after waiting {waited:?} for its lock"
    )]
    Locked {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("cannot lock store {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("{path} holds something other than a torpor store; to turn it into an empty store (erasing what it holds), run `torpor store init --store {path}`")]
    Foreign { path: PathBuf },
    #[error(
        "{path} already holds a torpor store; `torpor store init --force --store {path}` erases it"
    )]
    HoldsStore { path: PathBuf },
    #[error("{path} holds {what}; `torpor store init --force --device {path}` erases it")]
    HoldsFilesystem { path: PathBuf, what: &'static str },
    #[error("device {path}: {source}")]
    Device { path: PathBuf, source: io::Error },
    #[error("store is {len} bytes; it needs at least {min}")]
    TooSmall { len: u64, min: u64 },
    #[error("cannot {what} slot {slot} at device offset {offset}: {source}")]
    Io {
        what: &'static str,
        slot: Slot,
        offset: u64,
        source: io::Error,
    },
    #[error("image does not fit slot {slot}: it holds at most {capacity} bytes")]
    ImageTooLarge { slot: Slot, capacity: u64 },
    #[error("image read back from slot {slot} has CRC {found:#010x} over {len} bytes, {expected:#010x} was written")]
    ReadBack {
        slot: Slot,
        len: u64,
        expected: u32,
        found: u32,
    },
    #[error("image in slot {slot} does not verify: {source}")]
    Verify { slot: Slot, source: ImageError },
    #[error("slot {slot} holds no image (its header is {state})")]
    NoImage { slot: Slot, state: String },
}

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// The life of an image in a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum State {
    /// No image.
    Empty,
    /// A verified image, not yet restored.
    Valid,
    /// A restore of this image has begun (see [`SlotInfo::attempts`]).
    Restoring,
    /// The image was restored; it must not be restored again.
    Consumed,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::Empty => 0,
            State::Valid => 1,
            State::Restoring => 2,
            State::Consumed => 3,
        }
    }

    fn from_code(c: u8) -> Option<State> {
        [
            State::Empty,
            State::Valid,
            State::Restoring,
            State::Consumed,
        ]
        .into_iter()
        .find(|s| s.code() == c)
    }

    fn holds_image(self) -> bool {
        matches!(self, State::Valid | State::Restoring)
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "empty",
            State::Valid => "valid",
            State::Restoring => "restoring",
            State::Consumed => "consumed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A slot's header, as the store last read or wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    pub slot: Slot,
    pub state: State,
    /// Increases with every committed image; the newest image has the highest.
    pub generation: u64,
    pub len: u64,
    /// CRC32 of the `len` image bytes.
    pub crc: u32,
    /// Restores begun from this image.
    pub attempts: u32,
}

/// What `torpor store status` shows for one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// `None` when neither header copy is intact: blank (never written) when
    /// `problem` is `None` too, else damaged.
    pub info: Option<SlotInfo>,
    /// The slot holds an image (valid or restoring) that verifies.
    pub verified: bool,
    /// Why the header or the image was not accepted.
    pub problem: Option<String>,
}

impl fmt::Display for SlotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes_no = if self.verified { "yes" } else { "no" };
        match &self.info {
            Some(i) => write!(
                f,
                "slot {}: {} generation {} length {} crc {:#010x} attempts {} verified {}",
                self.slot, i.state, i.generation, i.len, i.crc, i.attempts, yes_no
            )?,
            None if self.problem.is_none() => {
                return write!(f, "slot {}: blank verified {}", self.slot, yes_no)
            }
            None => write!(f, "slot {}: damaged verified {}", self.slot, yes_no)?,
        }
        if let Some(p) = &self.problem {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

/// A header copy as stored: the slot info plus its update counter.
#[derive(Debug, Clone, Copy)]
struct Stored {
    info: SlotInfo,
    seq: u64,
    /// Which of the two copies holds it.
    copy: u64,
}

/// The two slots of a store on a device.
#[derive(Debug)]
pub struct Store<D: Device = FileDevice> {
    dev: D,
    slot_size: u64,
    headers: [Option<Stored>; 2],
    /// Why a slot has no header: both copies damaged, or a foreign layout.
    header_problem: [Option<String>; 2],
}

impl Store<FileDevice> {
    /// Opens the store on a partition or an existing regular file, for
    /// reading and writing, holding its lock exclusively until dropped.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Store::checked(FileDevice::open(path)?, path)
    }

    /// Opens the store for reading only (a read-only medium will do),
    /// sharing its lock with other readers until dropped.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Store::checked(FileDevice::open_read_only(path)?, path)
    }

    /// Opens the store at `path`, creating a regular file of `size` bytes,
    /// mode 0600, when nothing is there, or giving that size to an existing
    /// empty regular file. The file is sparse; unused slots cost nothing.
    pub fn create(path: &Path, size: u64) -> Result<Self, StoreError> {
        Store::checked(FileDevice::create(path, size)?, path)
    }

    /// [`create`](Self::create) with a file of [`DEFAULT_FILE_SIZE`].
    pub fn open_or_create(path: &Path) -> Result<Self, StoreError> {
        Store::create(path, DEFAULT_FILE_SIZE)
    }

    /// Makes `path` an empty store: a new regular file, an empty one, an
    /// all-zero partition, or anything that holds no store. A store is only
    /// erased with `force`.
    pub fn init(path: &Path, force: bool) -> Result<Self, StoreError> {
        let mut dev = FileDevice::for_init(path, DEFAULT_FILE_SIZE)?;
        match file::content(&dev)? {
            file::Content::Store if !force => {
                return Err(StoreError::HoldsStore {
                    path: path.to_path_buf(),
                })
            }
            _ => {}
        }
        file::erase_headers(&mut dev)?;
        let mut store = Store::with_device(dev)?;
        store.clear()?;
        Ok(store)
    }

    /// [`init`](Self::init) for a partition (`--device`): it must exist
    /// already, and one that holds a filesystem (ext2/3/4, FAT, btrfs, XFS,
    /// swap: [`signature`]) is only erased with `force`.
    pub fn init_device(path: &Path, force: bool) -> Result<Self, StoreError> {
        let derr = |source| StoreError::Device {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(derr)?;
        if let Some(what) = signature::filesystem(&mut f).map_err(derr)? {
            if !force {
                return Err(StoreError::HoldsFilesystem {
                    path: path.to_path_buf(),
                    what,
                });
            }
            // Erased, so neither this check nor blkid sees it again.
            signature::wipe(&mut f).map_err(derr)?;
        }
        drop(f);
        Store::init(path, force)
    }

    /// Opens the store on `dev`, refusing a device that holds neither a
    /// store nor zeros where the slot headers go.
    fn checked(dev: FileDevice, path: &Path) -> Result<Self, StoreError> {
        if file::content(&dev)? == file::Content::Foreign {
            return Err(StoreError::Foreign {
                path: path.to_path_buf(),
            });
        }
        Store::with_device(dev)
    }
}

impl<D: Device> Store<D> {
    /// Opens the store on `dev`, reading both slot headers.
    pub fn with_device(dev: D) -> Result<Self, StoreError> {
        let len = dev.len();
        if len < MIN_STORE_SIZE {
            return Err(StoreError::TooSmall {
                len,
                min: MIN_STORE_SIZE,
            });
        }
        let slot_size = (len / 2) / SLOT_ALIGN * SLOT_ALIGN;
        let mut store = Store {
            dev,
            slot_size,
            headers: [None, None],
            header_problem: [None, None],
        };
        for slot in Slot::BOTH {
            store.load_header(slot)?;
        }
        Ok(store)
    }

    /// The underlying device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Gives back the device.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// Bytes of image one slot can hold.
    pub fn capacity(&self) -> u64 {
        self.slot_size - IMAGE_OFFSET
    }

    fn base(&self, slot: Slot) -> u64 {
        self.slot_size * slot.index() as u64
    }

    fn load_header(&mut self, slot: Slot) -> Result<(), StoreError> {
        let mut best: Option<Stored> = None;
        let mut problems = Vec::new();
        for copy in 0..2u64 {
            let offset = self.base(slot) + copy * SECTOR;
            let mut sector = [0u8; SECTOR_BYTES];
            self.dev
                .read_at(&mut sector, offset)
                .map_err(|source| StoreError::Io {
                    what: "read the header of",
                    slot,
                    offset,
                    source,
                })?;
            match parse_header(&sector, slot, self.slot_size) {
                Ok((info, seq)) => {
                    if best.is_none_or(|b| seq > b.seq) {
                        best = Some(Stored { info, seq, copy });
                    }
                }
                Err(why) => problems.push(format!("header copy {copy}: {why}")),
            }
        }
        let i = slot.index();
        self.headers[i] = best;
        // Both copies blank is a slot never written, not a problem.
        let blank = problems.iter().all(|p| p.ends_with(": blank"));
        self.header_problem[i] = if best.is_none() && !blank {
            Some(problems.join("; "))
        } else {
            None
        };
        Ok(())
    }

    /// Writes `info` into the copy not holding the slot's current header,
    /// with the next sequence number, and syncs.
    fn store_header(&mut self, info: SlotInfo) -> Result<(), StoreError> {
        let slot = info.slot;
        let (seq, copy) = match self.headers[slot.index()] {
            Some(s) => (s.seq + 1, s.copy ^ 1),
            None => (1, 0),
        };
        let sector = encode_header(&info, seq, self.slot_size);
        let offset = self.base(slot) + copy * SECTOR;
        self.dev
            .write_at(&sector, offset)
            .map_err(|source| StoreError::Io {
                what: "write the header of",
                slot,
                offset,
                source,
            })?;
        self.dev.sync().map_err(|source| StoreError::Io {
            what: "sync the header of",
            slot,
            offset,
            source,
        })?;
        self.headers[slot.index()] = Some(Stored { info, seq, copy });
        self.header_problem[slot.index()] = None;
        Ok(())
    }

    /// The slot's header, if one copy is intact.
    pub fn info(&self, slot: Slot) -> Option<SlotInfo> {
        self.headers[slot.index()].map(|s| s.info)
    }

    /// Slots with an intact header, highest generation first.
    fn by_generation(&self) -> Vec<SlotInfo> {
        let mut v: Vec<SlotInfo> = Slot::BOTH.iter().filter_map(|s| self.info(*s)).collect();
        v.sort_by_key(|i| std::cmp::Reverse(i.generation));
        v
    }

    /// Reads the slot's image and checks it against its header: length,
    /// CRC, and every record ([`image::verify`]).
    fn check_image(&self, info: &SlotInfo) -> Result<(), StoreError> {
        let slot = info.slot;
        if info.len > self.capacity() {
            return Err(StoreError::ImageTooLarge {
                slot,
                capacity: self.capacity(),
            });
        }
        // Buffered, so the reader's small frame-head reads are not each a
        // device read.
        let mut tee = CrcTee {
            inner: io::BufReader::with_capacity(WRITE_CHUNK, self.reader(slot, info.len)),
            crc: crc32fast::Hasher::new(),
        };
        match image::verify(&mut tee) {
            Ok(_) => {}
            // A device error is the device's, not the image's.
            Err(ImageError::Io { source, offset }) => {
                return Err(StoreError::Io {
                    what: "read the image of",
                    slot,
                    offset: self.base(slot) + IMAGE_OFFSET + offset,
                    source,
                })
            }
            Err(source) => return Err(StoreError::Verify { slot, source }),
        }
        let found = tee.crc.finalize();
        if found != info.crc {
            return Err(StoreError::ReadBack {
                slot,
                len: info.len,
                expected: info.crc,
                found,
            });
        }
        Ok(())
    }

    fn reader(&self, slot: Slot, len: u64) -> SlotReader<'_, D> {
        let start = self.base(slot) + IMAGE_OFFSET;
        SlotReader {
            dev: &self.dev,
            start,
            pos: start,
            end: start + len,
        }
    }

    /// A reader for the image in `slot`, without verifying it again (an
    /// [`image::ImageReader`] checks every record as it reads). For the
    /// restore after [`begin_restore`](Self::begin_restore), which needs the
    /// store mutably and so ends the reader [`newest`](Self::newest) gave.
    pub fn image(&self, slot: Slot) -> Result<(SlotInfo, SlotReader<'_, D>), StoreError> {
        match self.info(slot) {
            Some(i) if i.state.holds_image() && i.len <= self.capacity() => {
                Ok((i, self.reader(slot, i.len)))
            }
            Some(i) => Err(StoreError::NoImage {
                slot,
                state: i.state.to_string(),
            }),
            None => Err(StoreError::NoImage {
                slot,
                state: "damaged".to_string(),
            }),
        }
    }

    /// The newest image to restore, verified, and a reader for it.
    pub fn newest(&self) -> Result<Option<(SlotInfo, SlotReader<'_, D>)>, StoreError> {
        for info in self.by_generation() {
            if !info.state.holds_image() {
                return Ok(None);
            }
            match self.check_image(&info) {
                Ok(()) => return Ok(Some((info, self.reader(info.slot, info.len)))),
                Err(e @ StoreError::Io { .. }) => return Err(e),
                Err(_) => continue,
            }
        }
        Ok(None)
    }

    /// Both slots: header, and whether the image verifies.
    pub fn status(&self) -> [SlotStatus; 2] {
        Slot::BOTH.map(|slot| {
            let info = self.info(slot);
            let (verified, problem) = match info {
                None => (false, self.header_problem[slot.index()].clone()),
                Some(i) if !i.state.holds_image() => (false, None),
                Some(i) => match self.check_image(&i) {
                    Ok(()) => (true, None),
                    Err(e) => (false, Some(e.to_string())),
                },
            };
            SlotStatus {
                slot,
                info,
                verified,
                problem,
            }
        })
    }

    /// Sets a slot's state (e.g. `Consumed` after a successful restore).
    pub fn mark(&mut self, slot: Slot, state: State) -> Result<SlotInfo, StoreError> {
        let info = match self.info(slot) {
            Some(i) => SlotInfo { state, ..i },
            None => SlotInfo {
                slot,
                state,
                generation: 0,
                len: 0,
                crc: 0,
                attempts: 0,
            },
        };
        self.store_header(info)?;
        Ok(info)
    }

    /// Records that a restore of the slot's image begins: state `Restoring`,
    /// one more attempt, durable before this returns. Returns the attempts
    /// including this one.
    pub fn begin_restore(&mut self, slot: Slot) -> Result<u32, StoreError> {
        let info = match self.info(slot) {
            Some(i) if i.state.holds_image() => i,
            Some(i) => {
                return Err(StoreError::NoImage {
                    slot,
                    state: i.state.to_string(),
                })
            }
            None => {
                return Err(StoreError::NoImage {
                    slot,
                    state: "damaged".to_string(),
                })
            }
        };
        let attempts = info.attempts.saturating_add(1);
        self.store_header(SlotInfo {
            state: State::Restoring,
            attempts,
            ..info
        })?;
        Ok(attempts)
    }

    /// Marks both slots empty (generations are kept, so no older image can
    /// come back).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        for slot in Slot::BOTH {
            self.mark(slot, State::Empty)?;
        }
        Ok(())
    }

    /// Starts writing a new image into the slot not holding the newest image.
    /// That slot is marked empty first; the previous image stays intact until
    /// [`SlotWriter::commit`] has verified the new one.
    pub fn writer(&mut self) -> Result<SlotWriter<'_, D>, StoreError> {
        let newest = self.newest()?.map(|(info, _)| info.slot);
        let slot = match newest {
            Some(s) => s.other(),
            // No image to keep: take the lower generation, so the highest
            // one (maybe a consumed image) keeps barring anything older.
            None => match (self.info(Slot::A), self.info(Slot::B)) {
                (Some(a), Some(b)) if a.generation > b.generation => Slot::B,
                (Some(_), None) => Slot::B,
                _ => Slot::A,
            },
        };
        let generation = Slot::BOTH
            .iter()
            .filter_map(|s| self.info(*s))
            .map(|i| i.generation)
            .max()
            .unwrap_or(0)
            + 1;
        // Generation 0 sorts the emptied slot below the other one, so it can
        // neither hide the other's image nor lift a consumed barrier.
        if self
            .info(slot)
            .is_none_or(|i| i.state != State::Empty || i.generation != 0)
        {
            self.store_header(SlotInfo {
                slot,
                state: State::Empty,
                generation: 0,
                len: 0,
                crc: 0,
                attempts: 0,
            })?;
        }
        Ok(SlotWriter {
            store: self,
            slot,
            generation,
            pos: 0,
            buf: vec![0; WRITE_CHUNK],
            fill: 0,
            crc: crc32fast::Hasher::new(),
            overflow: false,
            committed: false,
        })
    }
}

fn parse_header(
    s: &[u8; SECTOR_BYTES],
    slot: Slot,
    slot_size: u64,
) -> Result<(SlotInfo, u64), String> {
    let u32_at = |o: usize| u32::from_le_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if s[..8] != MAGIC {
        return Err(if s.iter().all(|&b| b == 0) {
            "blank".into()
        } else {
            "no magic".into()
        });
    }
    let crc = crc32fast::hash(&s[..CRC_AT]);
    if crc != u32_at(CRC_AT) {
        return Err(format!(
            "CRC mismatch (stored {:#010x}, computed {crc:#010x})",
            u32_at(CRC_AT)
        ));
    }
    if u32_at(8) != LAYOUT_VERSION {
        return Err(format!(
            "layout version {} (this torpor uses {LAYOUT_VERSION})",
            u32_at(8)
        ));
    }
    if usize::from(s[12]) != slot.index() {
        return Err(format!("written for slot index {}", s[12]));
    }
    let state = State::from_code(s[13]).ok_or_else(|| format!("unknown state {}", s[13]))?;
    if u64_at(48) != slot_size {
        return Err(format!(
            "written for a slot size of {} bytes, not {slot_size}",
            u64_at(48)
        ));
    }
    let info = SlotInfo {
        slot,
        state,
        generation: u64_at(24),
        len: u64_at(32),
        crc: u32_at(40),
        attempts: u32_at(44),
    };
    Ok((info, u64_at(16)))
}

fn encode_header(info: &SlotInfo, seq: u64, slot_size: u64) -> [u8; SECTOR_BYTES] {
    let mut s = [0u8; SECTOR_BYTES];
    s[..8].copy_from_slice(&MAGIC);
    s[8..12].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    s[12] = match info.slot {
        Slot::A => 0,
        Slot::B => 1,
    };
    s[13] = info.state.code();
    s[16..24].copy_from_slice(&seq.to_le_bytes());
    s[24..32].copy_from_slice(&info.generation.to_le_bytes());
    s[32..40].copy_from_slice(&info.len.to_le_bytes());
    s[40..44].copy_from_slice(&info.crc.to_le_bytes());
    s[44..48].copy_from_slice(&info.attempts.to_le_bytes());
    s[48..56].copy_from_slice(&slot_size.to_le_bytes());
    let crc = crc32fast::hash(&s[..CRC_AT]);
    s[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Reads a slot's image.
#[derive(Debug)]
pub struct SlotReader<'a, D: Device> {
    dev: &'a D,
    start: u64,
    pos: u64,
    end: u64,
}

/// Positions are the image's own (0 at its first byte); a position past its
/// end reads nothing, as in a file.
impl<D: Device> io::Seek for SlotReader<'_, D> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let here = self.pos - self.start;
        let len = self.end - self.start;
        // `pos` never goes below `start`: `here` is its offset.
        let new = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::Current(d) => here.checked_add_signed(d),
            io::SeekFrom::End(d) => len.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the image's start")
        })?;
        // Past the end is allowed and reads nothing: what lies beyond
        // belongs to no image.
        self.pos = self.start.checked_add(new).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek past the device's end")
        })?;
        Ok(new)
    }
}

impl<D: Device> Read for SlotReader<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        if n == 0 {
            return Ok(0);
        }
        self.dev.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Computes the CRC of what passes through.
struct CrcTee<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Read for CrcTee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

/// Writes a new image into a slot; nothing is visible until
/// [`commit`](SlotWriter::commit). Dropped without a commit, the store still
/// holds its previous image.
#[derive(Debug)]
pub struct SlotWriter<'a, D: Device> {
    store: &'a mut Store<D>,
    slot: Slot,
    generation: u64,
    /// Image bytes accepted so far.
    pos: u64,
    /// `WRITE_CHUNK` bytes, the first `fill` of them not yet on the device.
    buf: Vec<u8>,
    fill: usize,
    crc: crc32fast::Hasher,
    overflow: bool,
    committed: bool,
}

impl<D: Device> Drop for SlotWriter<'_, D> {
    /// An image never committed gives its space back: its slot's header
    /// says empty, so the bytes are of no use to anyone.
    fn drop(&mut self) {
        if self.committed || self.pos == 0 {
            return;
        }
        let start = self.store.base(self.slot) + IMAGE_OFFSET;
        let len = self.pos.div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        // Nothing depends on it: a device that cannot keeps the bytes.
        let _ = self.store.dev.discard(start, len);
    }
}

impl<D: Device> SlotWriter<'_, D> {
    /// The slot being written.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let start = self.pos - self.fill as u64;
        let offset = self.store.base(self.slot) + IMAGE_OFFSET + start;
        self.store.dev.write_at(&self.buf[..self.fill], offset)?;
        self.fill = 0;
        Ok(())
    }

    /// Refuses `n` more bytes than the slot holds, once and for good.
    fn check_room(&mut self, n: usize) -> io::Result<()> {
        let room = self.store.capacity() - self.pos;
        if n as u64 > room {
            self.overflow = true;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "image exceeds the slot capacity of {} bytes",
                    self.store.capacity()
                ),
            ));
        }
        Ok(())
    }

    /// Makes the image durable, reads it back and verifies it, then writes
    /// the slot header that makes it the newest image.
    pub fn commit(mut self) -> Result<SlotInfo, StoreError> {
        let slot = self.slot;
        let capacity = self.store.capacity();
        if self.overflow {
            return Err(StoreError::ImageTooLarge { slot, capacity });
        }
        let offset = self.store.base(slot) + IMAGE_OFFSET;
        self.flush_buf().map_err(|source| StoreError::Io {
            what: "write the image of",
            slot,
            offset,
            source,
        })?;
        self.store.dev.sync().map_err(|source| StoreError::Io {
            what: "sync the image of",
            slot,
            offset,
            source,
        })?;
        let info = SlotInfo {
            slot,
            state: State::Valid,
            generation: self.generation,
            len: self.pos,
            crc: self.crc.clone().finalize(),
            attempts: 0,
        };
        self.store.check_image(&info)?;
        self.store.store_header(info)?;
        self.committed = true;
        Ok(info)
    }
}

impl<D: Device> Write for SlotWriter<'_, D> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check_room(data.len())?;
        let n = data.len().min(WRITE_CHUNK - self.fill);
        self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
        self.crc.update(&data[..n]);
        self.fill += n;
        self.pos += n as u64;
        if self.fill == WRITE_CHUNK {
            self.flush_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Durability is commit's job; this only hands the bytes to the device.
        self.flush_buf()
    }
}

/// Room is lent in the write buffer: a dump reads page runs straight into
/// it (`ImageWriter::nonzero_pages_from`).
impl<D: Device> ImageSink for SlotWriter<'_, D> {
    fn room(&mut self, n: usize) -> io::Result<Option<&mut [u8]>> {
        if n > WRITE_CHUNK {
            return Ok(None);
        }
        self.check_room(n)?;
        if WRITE_CHUNK - self.fill < n {
            self.flush_buf()?;
        }
        Ok(Some(&mut self.buf[self.fill..]))
    }

    fn commit_room(&mut self, n: usize) -> io::Result<()> {
        if n > WRITE_CHUNK - self.fill {
            return Err(io::Error::other(format!(
                "{n} bytes committed, {} lent",
                WRITE_CHUNK - self.fill
            )));
        }
        self.check_room(n)?;
        self.crc.update(&self.buf[self.fill..self.fill + n]);
        self.fill += n;
        self.pos += n as u64;
        if self.fill == WRITE_CHUNK {
            self.flush_buf()?;
        }
        Ok(())
    }
}

use super::*;
use crate::image::records::{Kind, PipeData};
use crate::image::{Arch, Header, ImageWriter, FORMAT, MAGIC};

/// What happens to the sector being written when the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tear {
    /// The sector keeps its old contents.
    Old,
    /// The first half is new, the second half old.
    Half,
    /// The sector holds garbage.
    Garbage,
    /// The sector was written completely just before the cut.
    New,
}

const TEARS: [Tear; 4] = [Tear::Old, Tear::Half, Tear::Garbage, Tear::New];

/// What happens to writes not yet synced when the power goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// Every completed write is durable (a device without a write cache).
    WriteThrough,
    /// Writes since the last sync are lost (a volatile cache).
    LostUnsynced,
}

const CACHES: [Cache; 2] = [Cache::WriteThrough, Cache::LostUnsynced];

/// A device that loses power at its `cut_at`-th sector write: that sector is
/// torn, and nothing written afterwards persists. `durable` is what a reboot
/// sees.
#[derive(Debug)]
struct Fake {
    /// What reads return while the power is on.
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Sector writes since the last sync, for `LostUnsynced`.
    pending: Vec<u64>,
    sector_writes: u64,
    syncs: u64,
    cut_at: Option<u64>,
    tear: Tear,
    cache: Cache,
    dead: bool,
}

impl Fake {
    fn new(durable: Vec<u8>) -> Fake {
        Fake {
            live: durable.clone(),
            durable,
            pending: Vec::new(),
            sector_writes: 0,
            syncs: 0,
            cut_at: None,
            tear: Tear::Old,
            cache: Cache::WriteThrough,
            dead: false,
        }
    }

    fn blank(len: usize) -> Fake {
        Fake::new(vec![0; len])
    }

    fn cutting(durable: Vec<u8>, at: u64, tear: Tear, cache: Cache) -> Fake {
        Fake {
            cut_at: Some(at),
            tear,
            cache,
            ..Fake::new(durable)
        }
    }

    fn power_lost() -> io::Error {
        io::Error::other("power lost")
    }

    fn write_sector(&mut self, sector: u64, new: &[u8]) -> io::Result<()> {
        if self.dead {
            return Err(Fake::power_lost());
        }
        self.sector_writes += 1;
        let at = usize::try_from(sector * SECTOR).expect("fits");
        let range = at..at + SECTOR_BYTES;
        if self.cut_at == Some(self.sector_writes) {
            self.dead = true;
            if self.cache == Cache::LostUnsynced {
                for s in std::mem::take(&mut self.pending) {
                    let r = usize::try_from(s * SECTOR).expect("fits");
                    let old = self.durable[r..r + SECTOR_BYTES].to_vec();
                    self.live[r..r + SECTOR_BYTES].copy_from_slice(&old);
                }
            }
            let old = self.durable[range.clone()].to_vec();
            let torn: Vec<u8> = match self.tear {
                Tear::Old => old,
                Tear::New => new.to_vec(),
                Tear::Half => new[..256].iter().chain(&old[256..]).copied().collect(),
                Tear::Garbage => (0..SECTOR)
                    .map(|i| u8::try_from((i * 167 + sector * 13 + 91) % 251).unwrap_or(0))
                    .collect(),
            };
            self.durable[range].copy_from_slice(&torn);
            return Err(Fake::power_lost());
        }
        self.live[range.clone()].copy_from_slice(new);
        match self.cache {
            Cache::WriteThrough => self.durable[range].copy_from_slice(new),
            Cache::LostUnsynced => self.pending.push(sector),
        }
        Ok(())
    }
}

impl Device for Fake {
    fn len(&self) -> u64 {
        self.live.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).expect("fits");
        let src = self
            .live
            .get(at..at + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.len() {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "past the end"));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let sector = pos / SECTOR;
            let within = usize::try_from(pos % SECTOR).expect("fits");
            let n = (SECTOR_BYTES - within).min(buf.len() - done);
            let at = usize::try_from(sector * SECTOR).expect("fits");
            let mut s = self.live[at..at + SECTOR_BYTES].to_vec();
            s[within..within + n].copy_from_slice(&buf[done..done + n]);
            self.write_sector(sector, &s)?;
            done += n;
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(Fake::power_lost());
        }
        self.syncs += 1;
        for s in std::mem::take(&mut self.pending) {
            let r = usize::try_from(s * SECTOR).expect("fits");
            let new = self.live[r..r + SECTOR_BYTES].to_vec();
            self.durable[r..r + SECTOR_BYTES].copy_from_slice(&new);
        }
        Ok(())
    }
}

const DEV_LEN: usize = 64 * 1024;

/// A small but complete image whose bytes depend on `n`.
fn image(n: u8) -> Vec<u8> {
    let h = Header {
        magic: MAGIC,
        version: FORMAT,
        arch: Arch::host(),
        page_size: 4096,
        kernel_release: "6.1.0".into(),
        boot_id: format!("boot-{n}"),
        host_name: "zero".into(),
        created_ns: u64::from(n) * 1_000,
        torpor_version: crate::VERSION.into(),
    };
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.record(
        Kind::PipeData,
        &PipeData {
            id: u64::from(n),
            capacity: 65536,
            bytes: vec![n; 700],
        },
    )
    .expect("pipe");
    let mut page = vec![0u8; 4096];
    for (i, b) in page.iter_mut().enumerate() {
        *b = u8::try_from((i * 31 + usize::from(n) * 7) % 256).unwrap_or(0) ^ n;
    }
    w.pages(0x1_0000, &page).expect("pages");
    // And a page of noise (stored raw), so that a commit spans a dozen
    // sectors, each a place for the power to fail.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(n);
    for b in page.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        b.copy_from_slice(&seed.to_le_bytes());
    }
    w.pages(0x2_0000, &page).expect("pages");
    w.finish().expect("finish").0
}

fn commit<D: Device>(store: &mut Store<D>, img: &[u8]) -> Result<SlotInfo, StoreError> {
    let mut w = store.writer()?;
    // Odd-sized writes, as a streaming encoder would make them.
    for chunk in img.chunks(333) {
        w.write_all(chunk).map_err(|source| StoreError::Io {
            what: "write the image of",
            slot: Slot::A,
            offset: 0,
            source,
        })?;
    }
    w.commit()
}

fn newest_bytes<D: Device>(store: &Store<D>) -> Option<(SlotInfo, Vec<u8>)> {
    let (info, mut r) = store.newest().expect("newest")?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).expect("read image");
    Some((info, v))
}

/// A device holding `images` committed in order, and the commit's sector
/// write count of the last one.
fn device_with(images: &[Vec<u8>]) -> Vec<u8> {
    let mut store = Store::with_device(Fake::blank(DEV_LEN)).expect("open");
    for img in images {
        commit(&mut store, img).expect("commit");
    }
    store.into_device().durable
}

#[test]
fn commit_and_read_back() {
    let mut store = Store::with_device(Fake::blank(DEV_LEN)).expect("open");
    assert!(newest_bytes(&store).is_none());
    let first = commit(&mut store, &image(1)).expect("commit 1");
    assert_eq!(
        first,
        SlotInfo {
            slot: Slot::A,
            state: State::Valid,
            generation: 1,
            len: image(1).len() as u64,
            crc: crc32fast::hash(&image(1)),
            attempts: 0,
        }
    );
    let second = commit(&mut store, &image(2)).expect("commit 2");
    assert_eq!((second.slot, second.generation), (Slot::B, 2));
    let third = commit(&mut store, &image(3)).expect("commit 3");
    assert_eq!((third.slot, third.generation), (Slot::A, 3));

    // A reboot sees the same.
    let store = Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
    let (info, bytes) = newest_bytes(&store).expect("an image");
    assert_eq!(info, third);
    assert_eq!(bytes, image(3));
    let st = store.status();
    assert!(st[0].verified && st[1].verified, "{st:?}");
    assert_eq!(st[1].info.map(|i| i.generation), Some(2));
    assert_eq!(store.capacity(), (DEV_LEN as u64) / 2 - IMAGE_OFFSET);
}

/// Every sector write of a commit is a possible power cut.
fn power_cut_during_commit(before: &[Vec<u8>], new: &[u8]) {
    let base = device_with(before);
    let previous = before.last().cloned();
    let mut counter = Store::with_device(Fake::new(base.clone())).expect("open");
    commit(&mut counter, new).expect("uncut commit");
    let total = counter.into_device().sector_writes;
    assert!(total > 12, "a commit writes {total} sectors");

    for cache in CACHES {
        for tear in TEARS {
            let mut saw = [false, false];
            for k in 1..=total + 1 {
                let dev = Fake::cutting(base.clone(), k, tear, cache);
                let mut store = Store::with_device(dev).expect("open");
                let result = commit(&mut store, new);
                let dead = store.device().dead;
                assert_eq!(result.is_ok(), !dead, "k={k}: {result:?}");
                let after =
                    Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
                let got = newest_bytes(&after).map(|(_, b)| b);
                if got.as_deref() == Some(new) {
                    saw[1] = true;
                } else {
                    assert_eq!(
                        got, previous,
                        "cut at sector write {k}/{total}, {tear:?}, {cache:?}"
                    );
                    saw[0] = true;
                }
                if k > total {
                    assert_eq!(got.as_deref(), Some(new), "no cut: the new image");
                }
            }
            assert!(saw[0] && saw[1], "{tear:?} {cache:?}: both outcomes occur");
        }
    }
}

#[test]
fn power_cut_at_every_sector_of_a_first_commit() {
    power_cut_during_commit(&[], &image(1));
}

#[test]
fn power_cut_at_every_sector_keeps_previous_or_new() {
    power_cut_during_commit(&[image(1)], &image(2));
}

#[test]
fn power_cut_with_both_slots_full() {
    power_cut_during_commit(&[image(1), image(2), image(3)], &image(4));
}

#[test]
fn power_cut_after_consumed_never_revives_an_older_image() {
    // Slot B holds generation 2, consumed; slot A an older valid generation 1.
    let mut store =
        Store::with_device(Fake::new(device_with(&[image(1), image(2)]))).expect("open");
    store.mark(Slot::B, State::Consumed).expect("consume");
    assert!(
        newest_bytes(&store).is_none(),
        "generation 1 must not come back"
    );
    let base = store.into_device().durable;
    let mut counter = Store::with_device(Fake::new(base.clone())).expect("open");
    commit(&mut counter, &image(3)).expect("commit");
    let total = counter.into_device().sector_writes;
    for k in 1..=total {
        for tear in TEARS {
            let mut store =
                Store::with_device(Fake::cutting(base.clone(), k, tear, Cache::WriteThrough))
                    .expect("open");
            let _ = commit(&mut store, &image(3));
            let after = Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
            let got = newest_bytes(&after).map(|(_, b)| b);
            assert!(
                got.is_none() || got == Some(image(3)),
                "k={k} {tear:?}: {got:?}"
            );
        }
    }
}

#[test]
fn begin_restore_counts_attempts_durably() {
    let mut store =
        Store::with_device(Fake::new(device_with(&[image(1), image(2)]))).expect("open");
    assert_eq!(store.begin_restore(Slot::B).expect("begin"), 1);
    let mut store = Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
    let info = store.info(Slot::B).expect("header");
    assert_eq!(
        (info.state, info.attempts, info.generation),
        (State::Restoring, 1, 2)
    );
    // A restoring image is still the one to restore (the caller decides by
    // the attempt count).
    let (n, bytes) = newest_bytes(&store).expect("image");
    assert_eq!((n.slot, n.attempts), (Slot::B, 1));
    assert_eq!(bytes, image(2));
    // The boot sequence: find the newest, count the attempt, then read it.
    let slot = store.newest().expect("newest").map(|(i, _)| i.slot);
    assert_eq!(slot, Some(Slot::B));
    assert_eq!(store.begin_restore(Slot::B).expect("again"), 2);
    let (info, mut r) = store.image(Slot::B).expect("image");
    assert_eq!((info.state, info.attempts), (State::Restoring, 2));
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).expect("read");
    assert_eq!(bytes, image(2));
    assert_eq!(store.begin_restore(Slot::B).expect("again"), 3);

    // A power cut in the middle of the next increment leaves 3 or 4, never
    // a damaged header.
    let base = store.into_device().durable;
    for tear in TEARS {
        for cache in CACHES {
            let mut store =
                Store::with_device(Fake::cutting(base.clone(), 1, tear, cache)).expect("open");
            assert!(store.begin_restore(Slot::B).is_err(), "the cut write fails");
            let after = Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
            let info = after.info(Slot::B).expect("a header survives");
            let expect = if tear == Tear::New { 4 } else { 3 };
            assert_eq!(
                (info.state, info.attempts),
                (State::Restoring, expect),
                "{tear:?} {cache:?}"
            );
            assert_eq!(newest_bytes(&after).map(|(_, b)| b), Some(image(2)));
        }
    }

    // Consumed: no image, and the older one in slot A stays barred.
    let mut store = Store::with_device(Fake::new(base)).expect("open");
    store.mark(Slot::B, State::Consumed).expect("consume");
    assert!(newest_bytes(&store).is_none());
    let e = store.begin_restore(Slot::B).unwrap_err();
    assert_eq!(
        e.to_string(),
        "slot B holds no image (its header is consumed)"
    );
    // The next image goes to slot A, whose stale image is discarded.
    let info = commit(&mut store, &image(3)).expect("commit");
    assert_eq!((info.slot, info.generation), (Slot::A, 3));
}

#[test]
fn dropped_writer_keeps_the_previous_image() {
    let mut store = Store::with_device(Fake::new(device_with(&[image(1)]))).expect("open");
    {
        let mut w = store.writer().expect("writer");
        assert_eq!(w.slot(), Slot::B);
        w.write_all(&image(2)[..500]).expect("write");
        w.flush().expect("flush");
    }
    let (info, bytes) = newest_bytes(&store).expect("image");
    assert_eq!((info.slot, info.generation), (Slot::A, 1));
    assert_eq!(bytes, image(1));
    let st = store.status();
    assert_eq!(st[1].info.map(|i| i.state), Some(State::Empty));
}

#[test]
fn oversized_and_invalid_images_are_refused() {
    let mut store = Store::with_device(Fake::new(device_with(&[image(1)]))).expect("open");
    let cap = store.capacity();
    let mut w = store.writer().expect("writer");
    let big = vec![0u8; usize::try_from(cap).expect("fits") + 1];
    let e = w.write_all(&big).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    let e = w.commit().unwrap_err();
    assert!(
        matches!(e, StoreError::ImageTooLarge { slot: Slot::B, capacity } if capacity == cap),
        "{e:?}"
    );

    // Bytes that are not an image are refused at commit, before the header.
    let mut w = store.writer().expect("writer");
    w.write_all(b"not an image at all").expect("write");
    let e = w.commit().unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Verify {
                slot: Slot::B,
                source: ImageError::BadMagic { .. }
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("image in slot B does not verify: not a torpor image"),
        "{e}"
    );
    assert_eq!(newest_bytes(&store).map(|(_, b)| b), Some(image(1)));
}

#[test]
fn a_rotten_image_falls_back_and_is_reported() {
    let mut dev = device_with(&[image(1), image(2)]);
    // Slot B (generation 2): flip one bit in the middle of its image.
    let at = usize::try_from(DEV_LEN as u64 / 2 + IMAGE_OFFSET).expect("fits") + 600;
    dev[at] ^= 0x04;
    let store = Store::with_device(Fake::new(dev)).expect("open");
    let (info, bytes) = newest_bytes(&store).expect("falls back");
    assert_eq!((info.slot, info.generation), (Slot::A, 1));
    assert_eq!(bytes, image(1));
    let st = store.status();
    assert!(st[0].verified);
    assert!(!st[1].verified);
    let line = st[1].to_string();
    assert!(
        line.starts_with("slot B: valid generation 2 length "),
        "{line}"
    );
    assert!(
        line.contains(
            " verified no (image in slot B does not verify: CRC mismatch in the pipe-data record"
        ),
        "{line}"
    );
}

#[test]
fn one_damaged_header_copy_is_survived() {
    let mut store = Store::with_device(Fake::new(device_with(&[image(1)]))).expect("open");
    store
        .mark(Slot::A, State::Valid)
        .expect("rewrite: both copies now written");
    let mut dev = store.into_device().durable;
    // Damage the newer copy (copy 1, seq 2 after three writes: empty, valid,
    // valid): the older copy still says valid.
    dev[usize::try_from(SECTOR).expect("fits") + 30] ^= 1;
    let store = Store::with_device(Fake::new(dev.clone())).expect("open");
    assert_eq!(newest_bytes(&store).map(|(_, b)| b), Some(image(1)));
    // Both copies damaged: the slot is reported, not trusted.
    dev[30] ^= 1;
    let store = Store::with_device(Fake::new(dev)).expect("open");
    assert!(newest_bytes(&store).is_none());
    assert_eq!(store.status()[1].to_string(), "slot B: blank verified no");
    let line = store.status()[0].to_string();
    assert!(
        line.starts_with("slot A: damaged verified no (header copy 0: CRC mismatch"),
        "{line}"
    );
}

#[test]
fn clear_empties_both_slots() {
    let mut store =
        Store::with_device(Fake::new(device_with(&[image(1), image(2)]))).expect("open");
    store.clear().expect("clear");
    let store = Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
    assert!(newest_bytes(&store).is_none());
    for s in store.status() {
        assert_eq!(s.info.map(|i| i.state), Some(State::Empty));
        assert!(s.to_string().contains(": empty generation "), "{s}");
    }
}

#[test]
fn headers_are_bound_to_their_slot_and_layout() {
    let dev = device_with(&[image(1)]);
    // The same bytes on a bigger device: the slot size differs, so the
    // header refers to another layout and is not trusted.
    let mut bigger = dev.clone();
    bigger.resize(DEV_LEN * 2, 0);
    let store = Store::with_device(Fake::new(bigger)).expect("open");
    assert!(newest_bytes(&store).is_none());
    let why = store.status()[0].problem.clone().unwrap_or_default();
    assert!(
        why.contains("written for a slot size of 32768 bytes, not 65536"),
        "{why}"
    );
    // Slot A's header copied into slot B is not B's.
    let mut moved = vec![0u8; DEV_LEN];
    moved[DEV_LEN / 2..DEV_LEN / 2 + 1024].copy_from_slice(&dev[..1024]);
    let store = Store::with_device(Fake::new(moved)).expect("open");
    let why = store.status()[1].problem.clone().unwrap_or_default();
    assert!(why.contains("written for slot index 0"), "{why}");
}

#[test]
fn too_small_device_is_refused() {
    let e = Store::with_device(Fake::blank(8192)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::TooSmall {
                len: 8192,
                min: MIN_STORE_SIZE
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "store is 8192 bytes; it needs at least 16384"
    );
}

#[test]
fn file_store_round_trip() {
    let dir = std::env::temp_dir().join(format!("torpor-store-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("store.img");
    let _ = std::fs::remove_file(&path);
    let e = Store::open(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot open store {}", path.display())),
        "{e}"
    );
    {
        let mut store = Store::create(&path, 1 << 20).expect("create");
        commit(&mut store, &image(5)).expect("commit");
    }
    let store = Store::open(&path).expect("open");
    assert_eq!(
        newest_bytes(&store).map(|(i, b)| (i.generation, b)),
        Some((1, image(5)))
    );
    assert_eq!(store.capacity(), (1 << 19) - IMAGE_OFFSET);
    drop(store);
    let e = Store::open(&dir).unwrap_err();
    assert!(
        matches!(e, StoreError::NotAStore { .. } | StoreError::Open { .. }),
        "{e:?}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn image_writer_streams_into_a_slot() {
    // As a dump does: the encoder writes straight into the slot.
    let mut store = Store::with_device(Fake::new(device_with(&[image(1)]))).expect("open");
    let h = Header::blank();
    let pages: Vec<u8> = (0..4096 * 5)
        .map(|i| u8::try_from(i % 253).unwrap_or(0))
        .collect();
    fn fill<W: std::io::Write>(w: &mut ImageWriter<W>, pages: &[u8]) {
        w.record(
            Kind::PipeData,
            &PipeData {
                id: 2,
                capacity: 65536,
                bytes: vec![9; 10],
            },
        )
        .expect("pipe");
        w.pages(0x2000_0000, pages).expect("pages");
    }
    let mut w = ImageWriter::new(store.writer().expect("slot"), &h).expect("writer");
    fill(&mut w, &pages);
    let (slot, summary) = w.finish().expect("finish");
    let info = slot.commit().expect("commit");
    assert_eq!(
        (info.slot, info.generation, info.len),
        (Slot::B, 2, summary.bytes)
    );

    let mut expect = ImageWriter::new(Vec::new(), &h).expect("writer");
    fill(&mut expect, &pages);
    let (expect, _) = expect.finish().expect("finish");
    let store = Store::with_device(Fake::new(store.into_device().durable)).expect("reopen");
    assert_eq!(newest_bytes(&store).map(|(_, b)| b), Some(expect));
}

/// A scratch directory of its own for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("torpor-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_new_store_file_is_private() {
    let dir = scratch("private");
    let path = dir.join("store.bin");
    drop(Store::create(&path, 1 << 20).expect("create"));
    assert_eq!(mode_of(&path), 0o600);
    drop(Store::open_or_create(&dir.join("default.bin")).expect("create"));
    assert_eq!(mode_of(&dir.join("default.bin")), 0o600);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_store_others_can_read_is_refused() {
    let dir = scratch("exposed");
    let path = dir.join("store.bin");
    let p = path.display().to_string();
    {
        let mut store = Store::create(&path, 1 << 20).expect("create");
        commit(&mut store, &image(1)).expect("commit");
    }
    let before = std::fs::read(&path).expect("read");
    // As torpor used to create it.
    chmod(&path, 0o644);
    for e in [
        Store::open(&path).unwrap_err(),
        Store::open_read_only(&path).unwrap_err(),
        Store::open_or_create(&path).unwrap_err(),
    ] {
        assert_eq!(
            e.to_string(),
            format!(
                "store {p} has mode 0644 and owner uid 0: every user could read the images in it or change them (chmod o-rw {p})"
            )
        );
    }
    chmod(&path, 0o640);
    let e = Store::open(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "store {p} has mode 0640 and owner uid 0: its group could read the images in it (chmod g-r {p}, or set store.allow_group_read = true)"
        )
    );
    file::check_exposure(&path, true, None).expect("store.allow_group_read = true");
    chmod(&path, 0o660);
    let e = file::check_exposure(&path, true, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "store {p} has mode 0660 and owner uid 0: its group could change the images in it (chmod g-w {p})"
        )
    );
    chmod(&path, 0o600);
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(4321)), None).expect("chown");
    let e = Store::open(&path).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "store {p} has mode 0600 and owner uid 4321: user 4321 could read the images in it and change them (chown root {p})"
        )
    );
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(0)), None).expect("chown");
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert_eq!(
        newest_bytes(&Store::open_read_only(&path).expect("open")).map(|(_, b)| b),
        Some(image(1))
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_file_holding_something_else_is_refused_until_initialised() {
    let dir = scratch("foreign");
    let path = dir.join("notes.txt");
    let p = path.display().to_string();
    let text: Vec<u8> = b"my notes\n".repeat(4000);
    std::fs::write(&path, &text).expect("write");
    chmod(&path, 0o600);
    let refused = format!(
        "{p} holds something other than a torpor store; to turn it into an empty store (erasing what it holds), run `torpor store init --store {p}`"
    );
    assert_eq!(
        Store::open_or_create(&path).unwrap_err().to_string(),
        refused
    );
    assert_eq!(Store::open(&path).unwrap_err().to_string(), refused);
    assert_eq!(
        Store::open_read_only(&path).unwrap_err().to_string(),
        refused
    );
    assert_eq!(std::fs::read(&path).expect("read"), text);

    let store = Store::init(&path, false).expect("init");
    assert_eq!(
        store.status().map(|s| s.to_string()),
        [
            "slot A: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no",
            "slot B: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no",
        ]
    );
    drop(store);
    let mut store = Store::open(&path).expect("a store now");
    commit(&mut store, &image(2)).expect("commit");
    drop(store);
    assert_eq!(
        Store::init(&path, false).unwrap_err().to_string(),
        format!(
            "{p} already holds a torpor store; `torpor store init --force --store {p}` erases it"
        )
    );
    assert!(newest_bytes(&Store::open(&path).expect("open")).is_some());
    let store = Store::init(&path, true).expect("init --force");
    assert!(newest_bytes(&store).is_none());
    drop(store);

    // A partition never written reads as zeros: it is an empty store.
    let zeros = dir.join("zeros.bin");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).expect("write");
    chmod(&zeros, 0o600);
    let mut store = Store::open(&zeros).expect("all zeros is empty");
    commit(&mut store, &image(3)).expect("commit");
    // A world-readable file is made private by init.
    let loose = dir.join("loose.bin");
    std::fs::write(&loose, b"x").expect("write");
    chmod(&loose, 0o644);
    drop(Store::init(&loose, false).expect("init"));
    assert_eq!(mode_of(&loose), 0o600);
    assert_eq!(
        std::fs::metadata(&loose).expect("stat").len(),
        DEFAULT_FILE_SIZE
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn writers_exclude_everyone_and_readers_share() {
    let dir = scratch("lock");
    let path = dir.join("store.bin");
    let p = path.display().to_string();
    drop(Store::create(&path, 1 << 20).expect("create"));
    let wait = std::time::Duration::from_millis(100);
    let locked =
        format!("store {p} is in use by another torpor: gave up after waiting 100ms for its lock");
    let writer = Store::open(&path).expect("writer");
    assert_eq!(
        file::open_waiting(&path, true, wait)
            .unwrap_err()
            .to_string(),
        locked
    );
    assert_eq!(
        file::open_waiting(&path, false, wait)
            .unwrap_err()
            .to_string(),
        locked
    );
    drop(writer);
    let r1 = Store::open_read_only(&path).expect("reader 1");
    let r2 = Store::open_read_only(&path).expect("reader 2");
    assert_eq!(
        file::open_waiting(&path, true, wait)
            .unwrap_err()
            .to_string(),
        locked
    );
    drop((r1, r2));
    drop(file::open_waiting(&path, true, wait).expect("free again"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn concurrent_writers_commit_in_turn() {
    let dir = scratch("concurrent");
    let path = dir.join("store.bin");
    for round in 0..20u64 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|n| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // The first one creates the file; the other waits for
                    // its lock and then finds it sized.
                    let mut store = Store::open_or_create(&path).expect("open");
                    let mut w = store.writer().expect("writer");
                    w.write_all(&image(n)).expect("write");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    w.commit().expect("commit")
                })
            })
            .collect();
        let mut gens: Vec<u64> = threads
            .into_iter()
            .map(|t| t.join().expect("thread").generation)
            .collect();
        gens.sort_unstable();
        assert_eq!(gens, [2 * round + 1, 2 * round + 2], "round {round}");
        let store = Store::open_read_only(&path).expect("open");
        let (info, _) = newest_bytes(&store).expect("an image");
        assert_eq!(info.generation, 2 * round + 2);
        assert!(store.status().iter().all(|s| s.verified), "round {round}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn an_abandoned_write_keeps_the_previous_image_and_gives_its_space_back() {
    use std::os::unix::fs::MetadataExt;
    let dir = scratch("abandoned");
    let path = dir.join("store.bin");
    {
        let mut store = Store::create(&path, 4 << 20).expect("create");
        commit(&mut store, &image(1)).expect("commit");
    }
    let used = |p: &Path| std::fs::metadata(p).expect("stat").blocks() * 512;
    let before = used(&path);
    {
        let mut store = Store::open(&path).expect("open");
        let mut w = store.writer().expect("writer");
        w.write_all(&vec![0x5a; 1 << 20]).expect("write");
        w.flush().expect("flush");
        drop(w);
    }
    let after = used(&path);
    // The emptied slot's header may take a block of its own; the megabyte
    // of image does not stay.
    assert!(after <= before + 8192, "{before} -> {after} bytes used");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 4 << 20);
    let store = Store::open(&path).expect("open");
    assert_eq!(
        newest_bytes(&store).map(|(i, b)| (i.slot, i.generation, b)),
        Some((Slot::A, 1, image(1)))
    );
    assert_eq!(
        store.status()[1].to_string(),
        "slot B: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_slot_reader_seeks_within_its_image() {
    use std::io::{Seek, SeekFrom};
    let mut store = Store::with_device(Fake::blank(DEV_LEN)).expect("open");
    let first = image(1);
    commit(&mut store, &first).expect("commit");
    let img = image(2);
    commit(&mut store, &img).expect("commit");
    let (info, mut r) = store.newest().expect("newest").expect("an image");
    assert_eq!(info.len, img.len() as u64);
    let mut b = [0u8; 7];
    assert_eq!(r.seek(SeekFrom::Start(100)).expect("seek"), 100);
    r.read_exact(&mut b).expect("read");
    assert_eq!(b[..], img[100..107]);
    assert_eq!(r.seek(SeekFrom::Current(-7)).expect("seek"), 100);
    r.read_exact(&mut b).expect("read");
    assert_eq!(b[..], img[100..107]);
    let end = img.len() as u64;
    assert_eq!(r.seek(SeekFrom::End(-3)).expect("seek"), end - 3);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("read");
    assert_eq!(rest[..], img[img.len() - 3..]);
    // Past the end: nothing to read, and back again.
    assert_eq!(r.seek(SeekFrom::Current(10)).expect("seek"), end + 10);
    assert_eq!(r.read(&mut b).expect("read"), 0);
    assert_eq!(r.seek(SeekFrom::Current(-12)).expect("seek"), end - 2);
    assert_eq!(r.read(&mut b).expect("read"), 2);
    assert_eq!(b[..2], img[img.len() - 2..]);
    let e = r
        .seek(SeekFrom::Current(-i64::try_from(end).expect("small") - 1))
        .expect_err("before the start");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(e.to_string(), "seek before the image's start");
}

fn put_runs<W: ImageSink>(w: &mut ImageWriter<W>, runs: &[(u64, Vec<u8>)]) {
    for (vaddr, data) in runs {
        let pages = u32::try_from(data.len() / 4096).expect("pages");
        w.nonzero_pages_from(*vaddr, pages, |buf: &mut [u8]| {
            buf.copy_from_slice(data);
            Ok::<(), ()>(())
        })
        .expect("pages");
    }
}

/// Pages read straight into the slot writer's buffer make the image the
/// same pages written through it make, and it commits and verifies.
#[test]
fn pages_read_into_the_slot_writer_make_the_same_image() {
    let h = Header::blank();
    let mut noise = vec![0u8; 3 * 4096];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for b in noise.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        b.copy_from_slice(&seed.to_le_bytes());
    }
    // Noise (stored in place), noise around a zero page (moved out of
    // the lent room), and pages LZ4 shrinks.
    let mut holed = noise.clone();
    holed[4096..8192].fill(0);
    let runs: Vec<(u64, Vec<u8>)> = (0..40u64)
        .map(|i| {
            let data = if i % 2 == 0 { &noise } else { &holed };
            (0x10_0000 + i * 0x10_0000, data.clone())
        })
        .chain([(0x7000_0000, vec![3u8; 2 * 4096])])
        .collect();
    let mut plain = ImageWriter::new(Vec::new(), &h).expect("writer");
    put_runs(&mut plain, &runs);
    let (plain, _) = plain.finish().expect("finish");
    let mut store = Store::with_device(Fake::blank(1 << 20)).expect("open");
    let mut w = ImageWriter::new(store.writer().expect("slot writer"), &h).expect("writer");
    put_runs(&mut w, &runs);
    let (slot_writer, summary) = w.finish().expect("finish");
    let info = slot_writer.commit().expect("commit");
    assert_eq!(info.len, plain.len() as u64);
    assert_eq!(summary.bytes, plain.len() as u64);
    let (_, stored) = newest_bytes(&store).expect("an image");
    assert!(stored == plain, "the images differ");
}

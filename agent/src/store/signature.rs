//! Filesystem signatures: what `torpor store init --device` looks for
//! before it erases a partition, at the offsets where each filesystem's
//! tools write their magic.
//!
//! ```text
//!  ext2/3/4   0x53 0xef           at 1080 (superblock at 1024, s_magic at 56)
//!  vfat       "FAT12"/"FAT16"/"FAT" at 54, or "FAT32" at 82, with 0x55 0xaa at 510
//!  btrfs      "_BHRfS_M"          at 65600 (superblock at 64 KiB, magic at 64)
//!  xfs        "XFSB"              at 0
//!  swap       "SWAPSPACE2" or "SWAP-SPACE" in the last 10 bytes of the
//!             first page (4, 8, 16 or 64 KiB)
//! ```

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Each signature: the filesystem's name, the offset, the bytes.
const PLAIN: [(&str, u64, &[u8]); 4] = [
    ("an ext2/ext3/ext4 filesystem", 1080, &[0x53, 0xef]),
    ("a btrfs filesystem", 65_600, b"_BHRfS_M"),
    ("an XFS filesystem", 0, b"XFSB"),
    ("a swap area", 4086, b"SWAPSPACE2"),
];

/// Page sizes at whose end a swap signature may sit.
const SWAP_PAGES: [u64; 4] = [4096, 8192, 16_384, 65_536];

/// Reads `len` bytes at `at`; `None` past the end of a short device.
fn bytes_at<D: Read + Seek>(dev: &mut D, at: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
    dev.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len];
    match dev.read_exact(&mut buf) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The filesystem `dev` holds, by its signature, if any.
pub fn filesystem<D: Read + Seek>(dev: &mut D) -> io::Result<Option<&'static str>> {
    for (name, at, magic) in PLAIN {
        if bytes_at(dev, at, magic.len())?.as_deref() == Some(magic) {
            return Ok(Some(name));
        }
    }
    for page in SWAP_PAGES {
        if let Some(b) = bytes_at(dev, page - 10, 10)? {
            if b == b"SWAPSPACE2" || b == b"SWAP-SPACE" {
                return Ok(Some("a swap area"));
            }
        }
    }
    if let Some(boot) = bytes_at(dev, 0, 512)? {
        let fat = boot[54..57] == *b"FAT" || boot[82..87] == *b"FAT32";
        if fat && boot[510..512] == [0x55, 0xaa] {
            return Ok(Some("a FAT filesystem"));
        }
    }
    Ok(None)
}

/// Zeroes every signature [`filesystem`] looks for, where the device
/// reaches.
pub fn wipe<D: Read + Write + Seek>(dev: &mut D) -> io::Result<()> {
    let len = dev.seek(SeekFrom::End(0))?;
    let mut spots: Vec<(u64, usize)> = PLAIN.iter().map(|(_, at, m)| (*at, m.len())).collect();
    spots.extend(SWAP_PAGES.iter().map(|p| (p - 10, 10)));
    spots.extend([(54, 8), (82, 8), (510, 2)]);
    for (at, n) in spots {
        // Only what lies inside the device.
        if at + n as u64 <= len {
            dev.seek(SeekFrom::Start(at))?;
            dev.write_all(&vec![0u8; n])?;
        }
    }
    dev.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn with(at: usize, bytes: &[u8]) -> Cursor<Vec<u8>> {
        let mut v = vec![0u8; 128 * 1024];
        v[at..at + bytes.len()].copy_from_slice(bytes);
        Cursor::new(v)
    }

    #[test]
    fn each_signature_at_its_offset() {
        let found = |mut c: Cursor<Vec<u8>>| filesystem(&mut c).expect("read");
        assert_eq!(
            found(with(1080, &[0x53, 0xef])),
            Some("an ext2/ext3/ext4 filesystem")
        );
        assert_eq!(found(with(65_600, b"_BHRfS_M")), Some("a btrfs filesystem"));
        assert_eq!(found(with(0, b"XFSB")), Some("an XFS filesystem"));
        assert_eq!(found(with(4086, b"SWAPSPACE2")), Some("a swap area"));
        assert_eq!(found(with(16_374, b"SWAP-SPACE")), Some("a swap area"));
        let mut fat16 = with(54, b"FAT16   ");
        fat16.get_mut()[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(found(fat16), Some("a FAT filesystem"));
        let mut fat32 = with(82, b"FAT32   ");
        fat32.get_mut()[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(found(fat32), Some("a FAT filesystem"));
        // The magic one byte off, or a FAT label without the boot signature.
        assert_eq!(found(with(1081, &[0x53, 0xef])), None);
        assert_eq!(found(with(54, b"FAT16   ")), None);
        assert_eq!(found(with(0, &[])), None);
        let mut c = with(1080, &[0x53, 0xef]);
        wipe(&mut c).expect("wipe");
        assert_eq!(found(c), None);
        // A device shorter than the offsets is simply not that filesystem.
        assert_eq!(
            filesystem(&mut Cursor::new(vec![0u8; 100])).expect("read"),
            None
        );
    }
}

//! `torpor store init --device DEV`: a partition that holds a filesystem is
//! refused, naming it, until `--force`; a blank one becomes an empty store.
//! A plain file stands in for the partition (no loop device needed).

use std::path::PathBuf;
use std::process::{Command, Output};

fn torpor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torpor"))
        .args(args)
        .output()
        .expect("run torpor")
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("store-device-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// An 8 MiB "partition", private, with `magic` at `at`.
fn partition(path: &std::path::Path, at: usize, magic: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let mut v = vec![0u8; 8 << 20];
    v[at..at + magic.len()].copy_from_slice(magic);
    std::fs::write(path, &v).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn a_partition_with_a_filesystem_is_refused_until_forced() {
    let dir = scratch("fs");
    for (name, at, magic, what) in [
        (
            "ext4",
            1080,
            &[0x53u8, 0xef][..],
            "an ext2/ext3/ext4 filesystem",
        ),
        ("btrfs", 65_600, b"_BHRfS_M", "a btrfs filesystem"),
        ("xfs", 0, b"XFSB", "an XFS filesystem"),
        ("swap", 4086, b"SWAPSPACE2", "a swap area"),
    ] {
        let dev = dir.join(name);
        partition(&dev, at, magic);
        let p = dev.to_str().expect("utf-8");
        let before = std::fs::read(&dev).expect("read");
        let out = torpor(&["store", "init", "--device", p]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("torpor: error: {p} holds {what}; `torpor store init --force --device {p}` erases it\n")
        );
        assert_eq!(
            std::fs::read(&dev).expect("read"),
            before,
            "{name} untouched"
        );

        let out = torpor(&["store", "init", "--force", "--device", p]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cap = (8u64 << 20) / 2 - 4096;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("store {p}: two empty slots of {cap} bytes of image each\n")
        );
        assert_eq!(
            std::fs::metadata(&dev).expect("stat").len(),
            8 << 20,
            "not resized"
        );
        // The signature is gone with the filesystem: a second init sees a store.
        let out = torpor(&["store", "init", "--device", p]);
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("torpor: error: {p} already holds a torpor store; `torpor store init --force --store {p}` erases it\n")
        );
    }
}

#[test]
fn a_blank_partition_becomes_a_store_and_a_missing_one_is_an_error() {
    let dir = scratch("blank");
    let dev = dir.join("blank");
    partition(&dev, 0, &[]);
    let p = dev.to_str().expect("utf-8");
    let out = torpor(&["store", "init", "--device", p]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = torpor(&["store", "status", "--store", p]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "slot A: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no\n\
         slot B: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no\n"
    );
    let missing = dir.join("mmcblk0p9");
    let m = missing.to_str().expect("utf-8");
    let out = torpor(&["store", "init", "--device", m]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("torpor: error: device {m}: No such file or directory (os error 2)\n")
    );
    assert!(!missing.exists(), "a device is never created");
}

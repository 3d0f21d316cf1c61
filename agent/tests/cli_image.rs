//! `torpor show` and `torpor store` as a user runs them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use torpor::image::records::{Creds, Fd, FdKind, Kind, PipeData, RawPath, Task, Vma, VmaKind};
use torpor::image::{host_page_size, Header, ImageWriter};
use torpor::store::Store;

fn torpor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torpor"))
        .args(args)
        .output()
        .expect("run torpor")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("torpor-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn sample() -> Vec<u8> {
    let h = Header::for_host().expect("header");
    let ps = host_page_size() as usize;
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    w.record(
        Kind::Task,
        &Task {
            pid: 4242,
            ppid: 1,
            pgid: 4242,
            sid: 4242,
            comm: "counter".into(),
            creds: Creds {
                uid: 1000,
                groups: vec![27],
                ..Creds::default()
            },
            umask: 0o022,
            cwd: "/home/pi".into(),
            root: "/".into(),
            exe: "/usr/bin/counter".into(),
            ..Task::default()
        },
    )
    .expect("task");
    w.record(
        Kind::Vma,
        &Vma {
            start: 0x40_0000,
            end: 0x40_0000 + 3 * ps as u64,
            prot: 3,
            flags: 0x22,
            offset: 0,
            kind: VmaKind::Anon,
            file: None,
        },
    )
    .expect("vma");
    w.record(
        Kind::Fd,
        &Fd {
            fd: 1,
            fd_flags: 0,
            ofd: 0,
            kind: FdKind::Device {
                path: RawPath::from("/dev/null"),
                rdev: 0x103,
                flags: 1,
            },
        },
    )
    .expect("fd");
    w.record(
        Kind::PipeData,
        &PipeData {
            id: 9,
            capacity: 65536,
            bytes: b"tick".to_vec(),
        },
    )
    .expect("pipe");
    let mut mem = vec![0u8; 3 * ps];
    mem[ps..2 * ps].fill(0x61);
    w.pages(0x40_0000, &mem).expect("pages");
    w.finish().expect("finish").0
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "torpor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write file");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The clocks record of a tree restored once before (in a time namespace
/// of its own) comes out with every field.
#[test]
fn show_prints_the_clocks_record() {
    let dir = scratch("show-clocks");
    let path = dir.join("app.img");
    let h = Header::for_host().expect("header");
    let mut w = ImageWriter::new(Vec::new(), &h).expect("writer");
    let clocks = torpor::image::records::Clocks {
        monotonic_ns: 12_345_678_901,
        boottime_ns: 23_456_789_012,
        realtime_ns: 1_795_766_589_204_626_816,
        monotonic_offset_ns: -2_016_103_297,
        boottime_offset_ns: 8,
        own_namespace: true,
        kernel_timens: true,
    };
    w.record(Kind::Clocks, &clocks).expect("clocks");
    write_file(&path, &w.finish().expect("finish").0);
    let v = json(&torpor(&["show", path.to_str().expect("utf-8")]));
    assert_eq!(v["header"]["version"]["minor"], 7);
    let r = &v["records"][0];
    assert_eq!(r["kind"], "clocks");
    assert_eq!(
        r["value"],
        serde_json::json!({
            "monotonic_ns": 12_345_678_901u64,
            "boottime_ns": 23_456_789_012u64,
            "realtime_ns": 1_795_766_589_204_626_816i64,
            "monotonic_offset_ns": -2_016_103_297i64,
            "boottime_offset_ns": 8,
            "own_namespace": true,
            "kernel_timens": true,
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn show_prints_every_record_as_json() {
    let dir = scratch("show");
    let path = dir.join("app.img");
    let img = sample();
    write_file(&path, &img);
    let v = json(&torpor(&["show", path.to_str().expect("utf-8")]));

    let h = &v["header"];
    assert_eq!(h["magic"], "TORPORIM");
    assert_eq!(h["version"]["major"], 2);
    assert_eq!(h["page_size"], u64::from(host_page_size()));
    assert_eq!(h["torpor_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        h["arch"],
        serde_json::to_value(torpor::image::Arch::host()).expect("arch")
    );

    let recs = v["records"].as_array().expect("records");
    let kinds: Vec<&str> = recs
        .iter()
        .map(|r| r["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(
        kinds,
        ["task", "vma", "fd", "pipe-data", "pages", "pages", "pages"]
    );
    let task = &recs[0]["value"];
    assert_eq!(task["pid"], 4242);
    assert_eq!(task["comm"], "counter");
    assert_eq!(task["cwd"], "/home/pi");
    assert_eq!(task["creds"]["groups"], serde_json::json!([27]));
    assert_eq!(recs[1]["value"]["start"], 0x40_0000);
    assert_eq!(recs[1]["value"]["kind"], "Anon");
    assert_eq!(recs[2]["value"]["fd"], 1);
    assert_eq!(recs[2]["value"]["kind"]["Device"]["path"], "/dev/null");
    assert_eq!(recs[3]["value"]["id"], 9);
    assert_eq!(
        recs[3]["value"]["bytes"],
        serde_json::json!(b"tick".to_vec())
    );

    let ps = u64::from(host_page_size());
    let pages: Vec<(u64, u64, &str)> = recs[4..]
        .iter()
        .map(|r| {
            assert!(
                r.get("data").is_none(),
                "page data must not be printed: {r}"
            );
            (
                r["vaddr"].as_u64().expect("vaddr"),
                r["pages"].as_u64().expect("pages"),
                r["codec"].as_str().expect("codec"),
            )
        })
        .collect();
    assert_eq!(
        pages,
        [
            (0x40_0000, 1, "zero"),
            (0x40_0000 + ps, 1, "lz4"),
            (0x40_0000 + 2 * ps, 1, "zero")
        ]
    );
    assert_eq!(recs[4]["stored_bytes"], 0);
    let lz4 = recs[5]["stored_bytes"].as_u64().expect("stored");
    assert!(lz4 > 0 && lz4 < ps, "{lz4}");
    // Offsets are where the frames are.
    let off = usize::try_from(recs[0]["offset"].as_u64().expect("offset")).expect("fits");
    assert_eq!(img[off + 4], Kind::Task as u8);

    let s = &v["summary"];
    assert_eq!(s["records"], 9);
    assert_eq!(s["pages"], 3);
    assert_eq!(s["bytes"], img.len() as u64);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn show_refuses_damaged_and_foreign_files() {
    let dir = scratch("refuse");
    let path = dir.join("bad.img");
    let mut img = sample();
    let at = img.len() / 2;
    img[at] ^= 0x80;
    write_file(&path, &img);
    let out = torpor(&["show", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no partial JSON");
    let err = stderr(&out);
    let prefix = format!("torpor: error: {}: ", path.display());
    assert!(err.starts_with(&prefix), "{err}");
    assert!(
        err.contains("CRC mismatch") || err.contains("truncated") || err.contains("limit"),
        "{err}"
    );

    write_file(&path, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let err = stderr(&torpor(&["show", path.to_str().expect("utf-8")]));
    assert!(
        err.starts_with(&format!("{prefix}not a torpor image")),
        "{err}"
    );

    let missing = dir.join("missing.img");
    let out = torpor(&["show", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with(&format!(
        "torpor: error: cannot open image {}: ",
        missing.display()
    )));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn store_status_show_and_clear() {
    let dir = scratch("store");
    let path = dir.join("store.bin");
    let p = path.to_str().expect("utf-8");
    let img = sample();
    {
        let mut store = Store::create(&path, 1 << 20).expect("create");
        let mut w = store.writer().expect("writer");
        w.write_all(&img).expect("write");
        w.commit().expect("commit");
    }
    let out = torpor(&["store", "status", "--store", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let crc = crc32fast::hash(&img);
    assert_eq!(
        text,
        format!(
            "slot A: valid generation 1 length {} crc {crc:#010x} attempts 0 verified yes\n\
             slot B: blank verified no\n",
            img.len()
        )
    );

    let v = json(&torpor(&["show", "--store", p]));
    assert_eq!(v["slot"]["slot"], "A");
    assert_eq!(v["slot"]["generation"], 1);
    assert_eq!(v["records"][0]["value"]["comm"], "counter");
    assert_eq!(v["summary"]["bytes"], img.len() as u64);

    let out = torpor(&["store", "clear", "--store", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text =
        String::from_utf8_lossy(&torpor(&["store", "status", "--store", p]).stdout).into_owned();
    assert_eq!(
        text,
        format!(
            "slot A: empty generation 1 length {} crc {crc:#010x} attempts 0 verified no\n\
             slot B: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no\n",
            img.len()
        )
    );
    let out = torpor(&["show", "--store", p]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("torpor: error: store {p} holds no image to show\n")
    );

    let missing = dir.join("nope");
    let out = torpor(&[
        "store",
        "status",
        "--store",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!(
            "torpor: error: cannot open store {}: ",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// `torpor show IMAGE | head`: the reader leaves before the output ends,
/// and torpor ends quietly with status 0, not with a broken-pipe error.
#[test]
fn show_into_a_closed_pipe_ends_quietly() {
    let dir = scratch("show-closed-pipe");
    let path = dir.join("app.img");
    write_file(&path, &sample());
    let mut child = Command::new(env!("CARGO_BIN_EXE_torpor"))
        .args(["show", path.to_str().expect("utf-8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run torpor show");
    // The read end closes before torpor writes: its first write fails
    // with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("torpor show ends");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
}

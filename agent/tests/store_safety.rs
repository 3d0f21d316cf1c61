//! Images and the store as root writes them: private files, no link
//! followed, no foreign file overwritten, one writer at a time, read-only
//! stores readable, failed dumps leaving nothing behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn torpor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_torpor"))
        .args(args)
        .output()
        .expect("run torpor")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("torpor-safety-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, m: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).expect("chmod");
}

/// A process to dump, killed when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("wait").is_none()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dump_image(pid: &str, image: &Path) -> Output {
    torpor(&[
        "dump",
        "--pid",
        pid,
        "--leave-running",
        "--image",
        image.to_str().expect("utf-8"),
    ])
}

fn dump_store(pid: &str, store: &Path) -> Output {
    torpor(&[
        "dump",
        "--pid",
        pid,
        "--leave-running",
        "--store",
        store.to_str().expect("utf-8"),
    ])
}

#[test]
fn a_planted_part_link_is_refused_and_its_target_untouched() {
    let dir = scratch("planted");
    let victim = dir.join("victim");
    std::fs::write(&victim, b"precious\n").expect("write");
    let image = dir.join("app.img");
    let part = dir.join("app.img.part");
    std::os::unix::fs::symlink(&victim, &part).expect("symlink");
    let mut app = Sleeper::new();
    let out = dump_image(&app.pid(), &image);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "torpor: error: write image: creating {}: it already exists (left by a dump that did not finish, or put there by someone else); torpor neither follows nor overwrites it: remove it and dump again\n",
            part.display()
        )
    );
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious\n");
    assert!(std::fs::symlink_metadata(&part)
        .expect("link stays")
        .file_type()
        .is_symlink());
    assert!(!image.exists());
    assert!(app.alive());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_part_left_by_a_killed_dump_is_written_again() {
    let dir = scratch("stale-part");
    let image = dir.join("app.img");
    let part = dir.join("app.img.part");
    // What a dump killed while writing leaves: a 0600 file of root's,
    // locked by nobody, holding the start of an image.
    std::fs::write(&part, vec![0xa5u8; 100_000]).expect("write");
    chmod(&part, 0o600);
    let mut app = Sleeper::new();
    let out = dump_image(&app.pid(), &image);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!part.exists());
    assert_eq!(mode(&image), 0o600);
    let img = std::fs::read(&image).expect("read");
    assert!(!img.starts_with(&[0xa5; 16]), "written from its start");
    let out = torpor(&["show", image.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(app.alive());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_part_another_dump_is_writing_is_refused() {
    let dir = scratch("live-part");
    let image = dir.join("app.img");
    let part = dir.join("app.img.part");
    std::fs::write(&part, b"being written").expect("write");
    chmod(&part, 0o600);
    // The lock a dump holds while it writes.
    let held = nix::fcntl::Flock::lock(
        std::fs::File::open(&part).expect("open"),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .expect("flock");
    let mut app = Sleeper::new();
    let out = dump_image(&app.pid(), &image);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "torpor: error: write image: creating {}: another dump is writing it; dump again once it has finished\n",
            part.display()
        )
    );
    assert_eq!(std::fs::read(&part).expect("read"), b"being written");
    assert!(!image.exists());
    drop(held);
    assert!(app.alive());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_part_that_is_not_a_dumps_is_left_alone() {
    let dir = scratch("foreign-part");
    let image = dir.join("app.img");
    let part = dir.join("app.img.part");
    let refused = format!(
        "torpor: error: write image: creating {}: it already exists (left by a dump that did not finish, or put there by someone else); torpor neither follows nor overwrites it: remove it and dump again\n",
        part.display()
    );
    let mut app = Sleeper::new();
    // Readable by others: not created by a dump.
    std::fs::write(&part, b"someone's").expect("write");
    chmod(&part, 0o644);
    let out = dump_image(&app.pid(), &image);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), refused);
    assert_eq!(std::fs::read(&part).expect("read"), b"someone's");
    // Another name of a file elsewhere.
    chmod(&part, 0o600);
    let other = dir.join("other");
    std::fs::hard_link(&part, &other).expect("link");
    let out = dump_image(&app.pid(), &image);
    assert_eq!(stderr(&out), refused);
    assert_eq!(std::fs::read(&other).expect("read"), b"someone's");
    // Another user's.
    std::fs::remove_file(&other).expect("unlink");
    std::os::unix::fs::chown(&part, Some(65534), None).expect("chown");
    let out = dump_image(&app.pid(), &image);
    assert_eq!(stderr(&out), refused);
    assert_eq!(std::fs::read(&part).expect("read"), b"someone's");
    assert_eq!(std::fs::metadata(&part).expect("stat").uid(), 65534);
    assert!(!image.exists());
    assert!(app.alive());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn images_and_stores_are_private() {
    let dir = scratch("private");
    let image = dir.join("app.img");
    let store = dir.join("store.bin");
    let mut app = Sleeper::new();
    let out = dump_image(&app.pid(), &image);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&image), 0o600);
    assert!(!dir.join("app.img.part").exists());
    let out = dump_store(&app.pid(), &store);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(mode(&store), 0o600);
    assert!(app.alive());

    // As torpor used to create it: every user could read root's memory.
    chmod(&store, 0o644);
    let before = std::fs::read(&store).expect("read");
    let s = store.display();
    let refused = format!(
        "store {s} has mode 0644 and owner uid 0: every user could read the images in it or change them (chmod o-rw {s})"
    );
    let out = dump_store(&app.pid(), &store);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), format!("torpor: error: store: {refused}\n"));
    let p = store.to_str().expect("utf-8");
    let out = torpor(&["store", "status", "--store", p]);
    assert_eq!(stderr(&out), format!("torpor: error: {refused}\n"));
    let out = torpor(&["show", "--store", p]);
    assert_eq!(stderr(&out), format!("torpor: error: {refused}\n"));
    assert_eq!(std::fs::read(&store).expect("read"), before);
    assert_eq!(mode(&store), 0o644);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_failed_image_dump_leaves_the_previous_image() {
    let dir = scratch("failed-image");
    let image = dir.join("app.img");
    std::fs::write(&image, b"the previous image").expect("write");
    chmod(&image, 0o600);
    // A pid that no longer exists: the dump fails after the file was made.
    let mut gone = Command::new("true").spawn().expect("spawn");
    let pid = gone.id().to_string();
    gone.wait().expect("wait");
    let out = dump_image(&pid, &image);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(std::fs::read(&image).expect("read"), b"the previous image");
    assert!(!dir.join("app.img.part").exists());
    assert_eq!(
        std::fs::read_dir(&dir).expect("list").count(),
        1,
        "only the image"
    );

    // The same into a store that did not exist: an empty store remains,
    // sparse, private, its slots empty.
    let store = dir.join("store.bin");
    let out = dump_store(&pid, &store);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let meta = std::fs::metadata(&store).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.len(), torpor::store::DEFAULT_FILE_SIZE);
    assert!(
        meta.blocks() * 512 <= 64 * 1024,
        "{} bytes",
        meta.blocks() * 512
    );
    let out = torpor(&["store", "status", "--store", store.to_str().expect("utf-8")]);
    assert_eq!(
        stdout(&out),
        "slot A: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no\n\
         slot B: blank verified no\n"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_foreign_file_is_refused_until_store_init() {
    let dir = scratch("foreign");
    let notes = dir.join("notes.txt");
    let text = b"not a store\n".repeat(100);
    std::fs::write(&notes, &text).expect("write");
    chmod(&notes, 0o600);
    let p = notes.to_str().expect("utf-8");
    let app = Sleeper::new();
    let out = dump_store(&app.pid(), &notes);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("torpor: error: store: {p} holds something other than a torpor store; to turn it into an empty store (erasing what it holds), run `torpor store init --store {p}`\n")
    );
    assert_eq!(std::fs::read(&notes).expect("read"), text);

    let out = torpor(&["store", "init", "--store", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cap = torpor::store::DEFAULT_FILE_SIZE / 2 - 4096;
    assert_eq!(
        stdout(&out),
        format!("store {p}: two empty slots of {cap} bytes of image each\n")
    );
    let out = dump_store(&app.pid(), &notes);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = torpor(&["store", "init", "--store", p]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("torpor: error: {p} already holds a torpor store; `torpor store init --force --store {p}` erases it\n")
    );
    let out = torpor(&["store", "init", "--force", "--store", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = torpor(&["store", "status", "--store", p]);
    assert_eq!(
        stdout(&out),
        "slot A: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no\n\
         slot B: empty generation 0 length 0 crc 0x00000000 attempts 0 verified no\n"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn concurrent_dumps_into_one_store_commit_in_turn() {
    let dir = scratch("concurrent");
    let store = dir.join("store.bin");
    let p = store.to_str().expect("utf-8");
    let (a, b) = (Sleeper::new(), Sleeper::new());
    for round in 0..10u64 {
        let spawn = |pid: String| {
            Command::new(env!("CARGO_BIN_EXE_torpor"))
                .args(["dump", "--pid", &pid, "--leave-running", "--store", p])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn torpor")
        };
        let (ca, cb) = (spawn(a.pid()), spawn(b.pid()));
        for c in [ca, cb] {
            let out = c.wait_with_output().expect("wait");
            assert!(out.status.success(), "round {round}: {}", stderr(&out));
        }
        let text = stdout(&torpor(&["store", "status", "--store", p]));
        let mut gens: Vec<u64> = text
            .lines()
            .map(|l| {
                assert!(
                    l.contains(": valid generation ") && l.ends_with(" verified yes"),
                    "{text}"
                );
                l.split(' ')
                    .nth(4)
                    .and_then(|g| g.parse().ok())
                    .expect("generation")
            })
            .collect();
        gens.sort_unstable();
        assert_eq!(gens, [2 * round + 1, 2 * round + 2], "{text}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_read_only_store_is_read() {
    let dir = scratch("read-only");
    let store = dir.join("store.bin");
    let app = Sleeper::new();
    let out = dump_store(&app.pid(), &store);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = stdout(&torpor(&[
        "store",
        "status",
        "--store",
        store.to_str().expect("utf-8"),
    ]));
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    // A private mount namespace: a tmpfs holding a copy, then made
    // read-only, where opening for writing fails with EROFS.
    let script = format!(
        "set -e
mount -t tmpfs -o size=300m tmpfs {ro}
cp --sparse=always {store} {ro}/store.bin
mount -o remount,ro {ro}
{t} store status --store {ro}/store.bin > {dir}/status.txt
{t} show --store {ro}/store.bin > {dir}/show.json
if {t} store clear --store {ro}/store.bin 2> {dir}/clear.txt; then exit 3; fi
",
        ro = ro.display(),
        store = store.display(),
        t = env!("CARGO_BIN_EXE_torpor"),
        dir = dir.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "read-only setup or reads failed: {}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("status.txt")).expect("status"),
        status
    );
    let show: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("show.json")).expect("show")).expect("json");
    assert_eq!(show["slot"]["generation"], 1);
    assert_eq!(
        std::fs::read_to_string(dir.join("clear.txt")).expect("clear"),
        format!(
            "torpor: error: cannot open store {}/store.bin: Read-only file system (os error 30)\n",
            ro.display()
        )
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

//! A restore acts with the rights of the tasks it restores, never root's:
//! a path swapped for a symbolic link after the dump, a directory swapped
//! the same way, and crafted images are refused before anything is made,
//! and nothing a failed restore made stays.
#![allow(unsafe_code)]

mod engine_util;
use engine_util::*;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use torpor::image::records::{RequestedBy, TaskAttrs, ThreadAttrs, TmpfsFile};
use torpor::image::{ImageReader, ImageWriter, Kind, KindVisitor, Record, StateRecord};

/// The user the tree runs as.
const USER: u32 = 65534;

/// Opens argv[1] read-write (or, with a second argument, opens it and
/// unlinks it), then counts.
const HOLDER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    if (fd < 0) return 2;
    if (argc > 2 && unlink(argv[1]) != 0) return 3;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// Starts `bin args` as uid and gid `USER` with no groups, stdout into
/// `out`, every other fd closed.
#[allow(clippy::zombie_processes)] // reaped by pid with waitpid
fn spawn_as_user(bin: &Path, args: &[&str], out: &Path) -> i32 {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(out).expect("output")))
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(USER) != 0
                || libc::setuid(USER) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn as the user");
    i32::try_from(child.id()).expect("pid fits")
}

/// A scratch directory the user may enter, with `home`, a directory the
/// user owns, in it.
fn user_scratch(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = scratch(name);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.join("home");
    std::fs::create_dir(&home).expect("home");
    std::os::unix::fs::chown(&home, Some(USER), Some(USER)).expect("chown");
    (dir, home)
}

fn restore_err(img: &Path) -> String {
    let o = torpor(&["restore", "--image", img.to_str().expect("utf8")]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn an_open_file_swapped_for_a_symlink_is_refused() {
    become_subreaper();
    let (dir, home) = user_scratch("owner-symlink");
    let bin = compile(&dir, "holder", HOLDER, &[]);
    let note = home.join("note.txt");
    std::fs::write(&note, b"mine\n").expect("note");
    std::os::unix::fs::chown(&note, Some(USER), Some(USER)).expect("chown");
    let secret = dir.join("secret");
    std::fs::write(&secret, b"root only\n").expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[note.to_str().expect("utf8")], &out);
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("holder.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    // The user swaps its file for a link to root's (the file kept under
    // another name, so its inode is not reused below).
    std::fs::hard_link(&note, home.join("kept")).expect("link");
    std::fs::remove_file(&note).expect("remove");
    std::os::unix::fs::symlink(&secret, &note).expect("symlink");
    assert_eq!(
        restore_err(&img),
        format!(
            "torpor: error: validate: open file {} is reached through a symbolic link now, which a restore never follows",
            note.display()
        )
    );
    assert!(!runs(pid, &bin));
    assert_eq!(std::fs::read(&secret).expect("secret"), b"root only\n");
    // The same file put back as another one the user owns: not the dump's.
    std::fs::remove_file(&note).expect("remove");
    std::fs::write(&note, b"other\n").expect("note");
    std::os::unix::fs::chown(&note, Some(USER), Some(USER)).expect("chown");
    let err = restore_err(&img);
    assert!(
        err.starts_with(&format!(
            "torpor: error: validate: open file {} changed since the dump: inode ",
            note.display()
        )),
        "{err}"
    );
    assert!(!runs(pid, &bin));
}

#[test]
fn the_directory_of_an_unlinked_file_swapped_for_a_symlink_is_refused() {
    become_subreaper();
    let (dir, home) = user_scratch("owner-unlinked");
    let bin = compile(&dir, "holder", HOLDER, &[]);
    let sub = home.join("sub");
    std::fs::create_dir(&sub).expect("sub");
    std::os::unix::fs::chown(&sub, Some(USER), Some(USER)).expect("chown");
    let file = sub.join("gone.txt");
    std::fs::write(&file, b"unlinked bytes\n").expect("file");
    std::os::unix::fs::chown(&file, Some(USER), Some(USER)).expect("chown");
    let rootdir = dir.join("rootdir");
    std::fs::create_dir(&rootdir).expect("rootdir");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[file.to_str().expect("utf8"), "unlink"], &out);
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("holder.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    std::fs::rename(&sub, home.join("sub.old")).expect("rename");
    std::os::unix::fs::symlink(&rootdir, &sub).expect("symlink");
    assert_eq!(
        restore_err(&img),
        format!(
            "torpor: error: validate: directory {} is reached through a symbolic link now, which a restore never follows (unlinked file {} is recreated there)",
            sub.display(),
            file.display()
        )
    );
    assert!(!runs(pid, &bin));
    assert_eq!(std::fs::read_dir(&rootdir).expect("rootdir").count(), 0);
    // A root-owned directory in its place: the user may not create there.
    std::fs::remove_file(&sub).expect("unlink");
    std::fs::create_dir(&sub).expect("root's sub");
    assert_eq!(
        restore_err(&img),
        format!(
            "torpor: error: validate: directory {} changed since the dump: owner 0:0, the dump's was {USER}:{USER} (unlinked file {} is recreated there)",
            sub.display(),
            file.display()
        )
    );
    assert_eq!(std::fs::read_dir(&sub).expect("sub").count(), 0);
}

/// Writes every record of an image again, and `extra` right after the
/// first record of kind `after`.
struct Again<'r, 'a, W: std::io::Write>(&'r Record<'a>, &'r mut ImageWriter<W>);

impl<W: std::io::Write> KindVisitor for Again<'_, '_, W> {
    type Output = ();

    fn visit<T: StateRecord>(self) {
        let v: T = self.0.decode().expect("decode");
        self.1.write(&v).expect("record");
    }
}

fn rewrite(img: &[u8], after: Kind, extra: &dyn Fn(&mut ImageWriter<Vec<u8>>)) -> Vec<u8> {
    copy(img, None, after, extra)
}

/// The image without its records of kind `drop`.
fn without(img: &[u8], drop: Kind) -> Vec<u8> {
    copy(img, Some(drop), Kind::Header, &|_| {})
}

/// The image's records again, less those of kind `drop`, with `extra`
/// written after the first record of kind `after`.
fn copy(
    img: &[u8],
    drop: Option<Kind>,
    after: Kind,
    extra: &dyn Fn(&mut ImageWriter<Vec<u8>>),
) -> Vec<u8> {
    let mut r = ImageReader::new(img).expect("image");
    let mut w = ImageWriter::new(Vec::new(), r.header()).expect("writer");
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = false;
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            w.pages(info.vaddr, &buf[..info.len]).expect("pages");
        } else if Some(rec.kind()) != drop {
            rec.kind().visit(Again(&rec, &mut w)).expect("state");
        }
        if rec.kind() == after && !done {
            extra(&mut w);
            done = true;
        }
    }
    w.finish().expect("finish").0
}

#[test]
fn a_crafted_image_cannot_make_root_create_a_file() {
    become_subreaper();
    let dir = scratch("owner-crafted");
    let bin = compile(&dir, "holder", HOLDER, &[]);
    let target = dir.join("data");
    std::fs::write(&target, b"x").expect("file");
    let out = dir.join("out.txt");
    let pid = spawn(&bin, &[target.to_str().expect("utf8")], Some(&out));
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("holder.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let bytes = std::fs::read(&img).expect("image");

    // Contents of a "tmpfs file" anywhere: no process maps it.
    let evil = dir.join("evil");
    let path = evil.to_str().expect("utf8").to_string();
    let crafted = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&TmpfsFile {
            path: path.as_str().into(),
            mode: 0o104_755,
            uid: 0,
            gid: 0,
            size: 5,
            offset: 0,
            bytes: b"evil\n".to_vec(),
        })
        .expect("tmpfs-file");
    });
    let cimg = dir.join("crafted.img");
    std::fs::write(&cimg, &crafted).expect("write");
    assert_eq!(
        restore_err(&cimg),
        format!(
            "torpor: error: validate: the image holds the contents of tmpfs file {path}, which no process maps shared"
        )
    );
    assert!(!evil.exists());
    assert!(!runs(pid, &bin));

    // Taken for a user, holding root's tasks.
    let crafted = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    std::fs::write(&cimg, &crafted).expect("write");
    assert_eq!(
        restore_err(&cimg),
        format!(
            "torpor: error: validate: the image was taken for uid {USER}, but process {pid} has uids 0, 0, 0, 0 (real, effective, saved, fs)"
        )
    );
    assert!(!runs(pid, &bin));
}

/// Maps argv[1] read-only and private, then counts.
const MAPPER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) return 2;
    char *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) return 3;
    close(fd);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu %c\n", i, m[0]);
        usleep(20000);
    }
}
"#;

#[test]
fn a_mapped_file_is_opened_with_the_users_rights_not_roots() {
    become_subreaper();
    let (dir, _home) = user_scratch("owner-mapped");
    let bin = compile(&dir, "mapper", MAPPER, &[]);
    // Root's file, readable by everyone at the dump.
    let shared = dir.join("shared.dat");
    std::fs::write(&shared, b"s").expect("file");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[shared.to_str().expect("utf8")], &out);
    // Its output is its own: a restore for the user reopens it.
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).expect("chown");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("mapper.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    // The image as the daemon writes it for the user who asked.
    let bytes = std::fs::read(&img).expect("image");
    let asked = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    let uimg = dir.join("user.img");
    std::fs::write(&uimg, &asked).expect("write");
    // Root takes the user's access away: same inode, same owner.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        restore_err(&uimg),
        format!(
            "torpor: error: open files: mapped file {}: uid {USER} (its owner at the dump) may not open it: Permission denied (os error 13)",
            shared.display()
        )
    );
    assert!(!runs(pid, &bin));
    // Given back, the same image restores and the mapping reads the file.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = torpor(&["restore", "--image", uimg.to_str().expect("utf8")]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    reaper.add(pid);
    let before = lines(&out).len();
    wait_for("counting again", || lines(&out).len() >= before + 3);
    let last = lines(&out).last().cloned().expect("a line");
    assert!(last.ends_with(" s"), "{last}");
    // SAFETY: signalling the restored task.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(reap(pid), libc::SIGKILL);
}

/// A user's image holding scheduling or an oom_score_adj the user could not
/// set (they need CAP_SYS_NICE and CAP_SYS_RESOURCE) is refused in validate,
/// since the restore sets them with root's rights.
#[test]
fn a_users_image_cannot_make_root_raise_its_priority() {
    become_subreaper();
    let (dir, _home) = user_scratch("owner-attrs");
    let bin = compile(&dir, "mapper", MAPPER, &[]);
    let shared = dir.join("shared.dat");
    std::fs::write(&shared, b"s").expect("file");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[shared.to_str().expect("utf8")], &out);
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).expect("chown");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("attrs.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    // The attributes the process had (a nice value or login uid inherited
    // from the test's environment) give way to each crafted one.
    let bytes = without(&std::fs::read(&img).expect("image"), Kind::TaskAttrs);
    let asked = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    let cimg = dir.join("crafted.img");
    let cases = [
        (
            ThreadAttrs {
                tid: pid,
                policy: 1,
                rt_priority: 99,
                ..ThreadAttrs::default()
            },
            0,
            format!("thread {pid} of process {pid} runs under real-time policy SCHED_FIFO (priority 99), which uid {USER} may not set without CAP_SYS_NICE"),
        ),
        (
            ThreadAttrs {
                tid: pid,
                nice: -20,
                ..ThreadAttrs::default()
            },
            0,
            format!("thread {pid} of process {pid} has nice value -20, which uid {USER} may not set without CAP_SYS_NICE"),
        ),
        (
            ThreadAttrs {
                tid: pid,
                ..ThreadAttrs::default()
            },
            -1000,
            format!("process {pid} has oom_score_adj -1000, which uid {USER} may not set without CAP_SYS_RESOURCE"),
        ),
    ];
    for (t, oom, why) in cases {
        let crafted = rewrite(&asked, Kind::Task, &|w| {
            w.write(&TaskAttrs {
                oom_score_adj: oom,
                threads: vec![t],
                ..TaskAttrs::default()
            })
            .expect("task-attrs");
        });
        std::fs::write(&cimg, &crafted).expect("write");
        assert_eq!(
            restore_err(&cimg),
            format!("torpor: error: validate: {why}")
        );
        assert!(!runs(pid, &bin));
    }
    // The same image without them restores.
    let uimg = dir.join("user.img");
    std::fs::write(&uimg, &asked).expect("write");
    let o = torpor(&["restore", "--image", uimg.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    reaper.add(pid);
    let n = lines(&out).len();
    wait_for("the restored program to count", || {
        lines(&out).len() >= n + 3
    });
    kill_and_reap(pid);
}

/// Opens argv[1] read-only, sends it over a socketpair (fds 3 and 4) and
/// closes it: only the socket's queue holds it. Then counts.
const FLIGHT_SENDER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int sv[2];
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return 2;
    char b = 'f';
    struct iovec iov = { &b, 1 };
    union { struct cmsghdr h; char u[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.u, .msg_controllen = sizeof u.u };
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    if (sendmsg(sv[1], &m, 0) != 1) return 3;
    close(fd);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A file only a queued message holds is opened with the rights of the
/// process holding the socket, as any file of that process.
#[test]
fn a_file_in_flight_is_opened_with_the_users_rights_not_roots() {
    become_subreaper();
    let (dir, _home) = user_scratch("owner-flight");
    let bin = compile(&dir, "sender", FLIGHT_SENDER, &[]);
    let shared = dir.join("shared.dat");
    std::fs::write(&shared, b"s").expect("file");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[shared.to_str().expect("utf8")], &out);
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).expect("chown");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("sender.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let bytes = std::fs::read(&img).expect("image");
    let asked = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    let uimg = dir.join("user.img");
    std::fs::write(&uimg, &asked).expect("write");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        restore_err(&uimg),
        format!(
            "torpor: error: open files: open file {}: uid {USER} (its owner at the dump) may not open it: Permission denied (os error 13)",
            shared.display()
        )
    );
    assert!(!runs(pid, &bin));
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let o = torpor(&["restore", "--image", uimg.to_str().expect("utf8")]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    reaper.add(pid);
    let before = lines(&out).len();
    wait_for("counting again", || lines(&out).len() >= before + 3);
    // SAFETY: signalling the restored task.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(reap(pid), libc::SIGKILL);
}

/// A user's image puts its processes only into a cgroup the user may move
/// processes into (its `cgroup.procs` the user's); a restore for a user
/// makes no cgroup.
#[test]
fn a_users_image_goes_only_into_a_cgroup_the_user_may_move_processes_into() {
    use torpor::image::records::Cgroup;
    become_subreaper();
    let (dir, _home) = user_scratch("owner-cgroup");
    let bin = compile(&dir, "mapper", MAPPER, &[]);
    let shared = dir.join("shared.dat");
    std::fs::write(&shared, b"s").expect("file");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[shared.to_str().expect("utf8")], &out);
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).expect("chown");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("cg.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let asked = rewrite(&std::fs::read(&img).expect("image"), Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    let mount = cgroup2_mount(&dir);
    let name = format!(
        "{}/torpor-owner-{}",
        own_cgroup().trim_end_matches('/'),
        std::process::id()
    );
    let cg = mount.join(name.trim_start_matches('/'));
    let _ = std::fs::remove_dir(&cg);
    let crafted = rewrite(&asked, Kind::Task, &|w| {
        w.write(&Cgroup {
            path: name.clone(),
            pids: vec![pid],
            settings: vec![],
        })
        .expect("cgroup");
    });
    let cimg = dir.join("crafted.img");
    std::fs::write(&cimg, &crafted).expect("write");
    assert_eq!(
        restore_err(&cimg),
        format!("torpor: error: validate: the image puts processes [{pid}] into cgroup {name}, which does not exist, and a restore makes none for uid {USER}")
    );
    assert!(!cg.exists(), "no cgroup made");
    std::fs::create_dir(&cg).expect("root's cgroup");
    assert_eq!(
        restore_err(&cimg),
        format!("torpor: error: validate: the image puts processes [{pid}] into cgroup {name}, which uid {USER} may not move processes into")
    );
    assert!(!runs(pid, &bin));
    // Delegated to the user, it is the user's to use.
    std::os::unix::fs::chown(cg.join("cgroup.procs"), Some(USER), Some(USER)).expect("chown");
    let o = torpor(&["restore", "--image", cimg.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    reaper.add(pid);
    assert_eq!(cgroup_of(pid), name);
    let n = lines(&out).len();
    wait_for("the restored program to count", || {
        lines(&out).len() >= n + 3
    });
    kill_and_reap(pid);
    wait_for("the cgroup to empty", || std::fs::remove_dir(&cg).is_ok());
}

/// Sends itself a message on a datagram pair whose receiver, fd 3, has
/// `SO_PASSCRED` (its credentials recorded with it), then counts; when
/// the message is read on SIGUSR1 it prints its credentials.
const CREDS_SENDER: &str = r#"
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
static volatile sig_atomic_t asked;
static void on_usr1(int s) { (void)s; asked = 1; }
int main(void) {
    int sv[2], on = 1;
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 || dup2(sv[0], 3) != 3 || dup2(sv[1], 4) != 4 ||
        setsockopt(3, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0 || send(4, "mine", 4, 0) != 4)
        return 2;
    signal(SIGUSR1, on_usr1);
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        if (asked) {
            asked = 0;
            char b[8];
            union { struct cmsghdr align; char buf[CMSG_SPACE(sizeof(struct ucred))]; } c;
            struct iovec iov = { b, sizeof b };
            struct msghdr m;
            memset(&m, 0, sizeof m);
            m.msg_iov = &iov;
            m.msg_iovlen = 1;
            m.msg_control = c.buf;
            m.msg_controllen = sizeof c.buf;
            struct ucred u = { -1, 0, 0 };
            if (recvmsg(3, &m, MSG_DONTWAIT) == 4 && CMSG_FIRSTHDR(&m))
                memcpy(&u, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof u);
            printf("creds %d %u %u\n", (int)u.pid, (unsigned)u.uid, (unsigned)u.gid);
        }
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// A user's image may hold queued messages with the user's own
/// credentials only: one naming another uid or gid (which the user could
/// not have sent, and root would send as asked) is refused in validate,
/// naming the socket and the message; the message as dumped comes back
/// with the user's.
#[test]
fn a_users_image_cannot_queue_a_message_with_another_users_credentials() {
    use torpor::image::records::UnixCreds;
    become_subreaper();
    let (dir, _home) = user_scratch("owner-creds");
    let bin = compile(&dir, "credsender", CREDS_SENDER, &[]);
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[], &out);
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).expect("chown");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("creds.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let bytes = std::fs::read(&img).expect("image");
    let mut recorded = Vec::new();
    let mut r = ImageReader::new(&bytes[..]).expect("image");
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::UnixCreds {
            recorded.push(rec.decode::<UnixCreds>().expect("unix-creds"));
        }
    }
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let mine = recorded[0].clone();
    assert_eq!(
        (mine.message, mine.pid, mine.uid, mine.gid),
        (0, pid, USER, USER)
    );
    let asked = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    let cimg = dir.join("crafted.img");
    for (uid, gid) in [(0, USER), (USER, 0)] {
        let crafted = copy(&asked, Some(Kind::UnixCreds), Kind::UnixCreds, &|w| {
            w.write(&UnixCreds {
                uid,
                gid,
                ..mine.clone()
            })
            .expect("unix-creds");
        });
        std::fs::write(&cimg, &crafted).expect("write");
        assert_eq!(
            restore_err(&cimg),
            format!(
                "torpor: error: validate: the image was taken for uid {USER} (gid {USER}), but fd 3 of process {pid} holds message 0 queued with the credentials of process {pid} (uid {uid}, gid {gid})"
            )
        );
        assert!(!runs(pid, &bin));
    }
    let uimg = dir.join("user.img");
    std::fs::write(&uimg, &asked).expect("write");
    let o = torpor(&["restore", "--image", uimg.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    reaper.add(pid);
    // SAFETY: signalling the restored task.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let want = format!("creds {pid} {USER} {USER}");
    wait_for("the message's credentials", || lines(&out).contains(&want));
    // SAFETY: signalling the restored task.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(reap(pid), libc::SIGKILL);
}

/// A fanotify group an unprivileged user may make (`FAN_REPORT_FID`) at fd
/// 3, with an inode mark on argv[1]; then counts.
const FANOTIFY_USER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <sys/fanotify.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int g = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, O_RDONLY);
    if (argc < 2 || g != 3 || fanotify_mark(g, FAN_MARK_ADD, FAN_MODIFY, AT_FDCWD, argv[1]) != 0)
        return 2;
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        printf("%lu\n", i);
        usleep(20000);
    }
}
"#;

/// The image again with every fanotify group's record changed by `f`.
fn with_fanotify(img: &[u8], f: &dyn Fn(&mut torpor::image::records::Fanotify)) -> Vec<u8> {
    use torpor::image::records::{Fd, FdKind};
    let mut r = ImageReader::new(img).expect("image");
    let mut w = ImageWriter::new(Vec::new(), r.header()).expect("writer");
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(rec) = r.next_record().expect("record") {
        if rec.kind() == Kind::Pages {
            let info = rec.decode_pages_into(&mut buf).expect("pages");
            w.pages(info.vaddr, &buf[..info.len]).expect("pages");
        } else if rec.kind() == Kind::Fd {
            let mut fd: Fd = rec.decode().expect("fd");
            if let FdKind::Fanotify { state, .. } = &mut fd.kind {
                f(state);
            }
            w.write(&fd).expect("fd");
        } else {
            rec.kind().visit(Again(&rec, &mut w)).expect("state");
        }
    }
    w.finish().expect("finish").0
}

/// A user's image keeps a fanotify group the user could make; one the user
/// could not (reporting by descriptor, a mount mark) is refused naming the
/// fd.
#[test]
fn a_users_image_holds_only_a_fanotify_group_the_user_could_make() {
    use torpor::image::records::FanotifyObject;
    become_subreaper();
    let (dir, home) = user_scratch("owner-fanotify");
    let bin = compile(&dir, "fan", FANOTIFY_USER, &[]);
    let marked = home.join("marked");
    std::fs::write(&marked, b"").expect("file");
    std::os::unix::fs::chown(&marked, Some(USER), Some(USER)).expect("chown");
    let out = dir.join("out.txt");
    let pid = spawn_as_user(&bin, &[marked.to_str().expect("utf8")], &out);
    std::os::unix::fs::chown(&out, Some(USER), Some(USER)).expect("chown");
    let mut reaper = Reaper::default();
    reaper.add(pid);
    wait_for("output", || lines(&out).len() >= 3);
    let img = dir.join("fan.img");
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    let bytes = without(&std::fs::read(&img).expect("image"), Kind::TaskAttrs);
    let asked = rewrite(&bytes, Kind::Clocks, &|w| {
        w.write(&RequestedBy {
            uid: USER,
            gid: USER,
            groups: vec![],
        })
        .expect("requested-by");
    });
    let cimg = dir.join("crafted.img");
    let no_fid = with_fanotify(&asked, &|g| g.flags &= !0x200);
    std::fs::write(&cimg, &no_fid).expect("write");
    assert_eq!(
        restore_err(&cimg),
        format!("torpor: error: validate: fd 3 of process {pid} is a fanotify group that reports events by descriptor (no FAN_REPORT_FID), which uid {USER} may not make without CAP_SYS_ADMIN")
    );
    assert!(!runs(pid, &bin));
    let mount = with_fanotify(&asked, &|g| g.marks[0].object = FanotifyObject::Mount);
    std::fs::write(&cimg, &mount).expect("write");
    assert_eq!(
        restore_err(&cimg),
        format!(
            "torpor: error: validate: fd 3 of process {pid} is a fanotify group that marks the mount of {}, which uid {USER} may not make without CAP_SYS_ADMIN",
            marked.display()
        )
    );
    assert!(!runs(pid, &bin));
    // The image as taken restores, its group marking the file again.
    let uimg = dir.join("user.img");
    std::fs::write(&uimg, &asked).expect("write");
    let o = torpor(&["restore", "--image", uimg.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    reaper.add(pid);
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).expect("fdinfo");
    assert!(
        info.lines()
            .any(|l| l == "fanotify flags:200 event-flags:8000"
                || l == "fanotify flags:200 event-flags:0"),
        "{info}"
    );
    assert_eq!(
        info.lines()
            .filter(|l| l.starts_with("fanotify ino:"))
            .count(),
        1,
        "{info}"
    );
    let n = lines(&out).len();
    wait_for("the restored program to count", || {
        lines(&out).len() >= n + 3
    });
    kill_and_reap(pid);
}

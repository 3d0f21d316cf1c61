//! Control group (v2) membership: each process of a tree comes back in the
//! cgroup it was in, made again when it is gone (as after a power cycle),
//! joined as it is when it exists; a cgroup that cannot be made fails the
//! restore naming it, and leaves nothing behind.

mod engine_util;
use engine_util::*;

use std::path::{Path, PathBuf};

/// A parent that forks a child; both count into their own file.
const PAIR: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void count(const char *path) {
    FILE *f = fopen(path, "w");
    setvbuf(f, NULL, _IONBF, 0);
    for (unsigned long i = 0;; i++) {
        fprintf(f, "%lu\n", i);
        usleep(20000);
    }
}
int main(int argc, char **argv) {
    if (fork() == 0)
        count(argv[2]);
    count(argv[1]);
}
"#;

fn child_of(pid: i32) -> i32 {
    let mut kid = 0;
    wait_for("the child", || {
        kid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        kid != 0
    });
    kid
}

/// A test's cgroups, below the test's own cgroup, removed at the end.
struct Groups {
    base: PathBuf,
    name: String,
}

impl Groups {
    fn new(dir: &Path, test: &str) -> Self {
        let mount = cgroup2_mount(dir);
        let own = own_cgroup();
        let name = format!(
            "{}/torpor-{test}-{}",
            own.trim_end_matches('/'),
            std::process::id()
        );
        let base = mount.join(name.trim_start_matches('/'));
        let _ = std::fs::remove_dir_all(base.join("app"));
        let _ = std::fs::remove_dir(&base);
        std::fs::create_dir_all(base.join("app")).expect("make the app's cgroup");
        std::fs::create_dir_all(base.join("kid")).expect("make the child's cgroup");
        Groups { base, name }
    }

    fn path(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.name)
    }

    fn put(&self, leaf: &str, pid: i32) {
        std::fs::write(self.base.join(leaf).join("cgroup.procs"), pid.to_string())
            .expect("move into the cgroup");
        assert_eq!(cgroup_of(pid), self.path(leaf));
    }

    fn remove_leaves(&self) {
        for leaf in ["app", "kid"] {
            let _ = std::fs::remove_dir(self.base.join(leaf));
        }
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        self.remove_leaves();
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Kills a restored pair.
fn end_pair(pid: i32, kid: i32) {
    // SAFETY: kill with integer arguments.
    unsafe { libc::kill(kid, libc::SIGKILL) };
    kill_and_reap(pid);
    assert_eq!(reap(kid), libc::SIGKILL);
}

/// Dumps the pair with the parent in `app` and the child in `kid`; the
/// pair is killed.
fn dump_pair(dir: &Path, g: &Groups) -> (i32, i32, PathBuf, PathBuf, PathBuf) {
    let bin = compile(dir, "pair", PAIR, &[]);
    let (a, b) = (dir.join("parent.txt"), dir.join("child.txt"));
    let img = dir.join("pair.img");
    let pid = spawn(&bin, &[a.to_str().unwrap(), b.to_str().unwrap()], None);
    let kid = child_of(pid);
    g.put("app", pid);
    g.put("kid", kid);
    wait_for("counting", || lines(&a).len() >= 3 && lines(&b).len() >= 3);
    dump(pid, &img, &[]);
    assert_eq!(reap(pid), libc::SIGKILL, "the dumped parent is killed");
    // The orphan is this subreaper's.
    assert_eq!(reap(kid), libc::SIGKILL, "the dumped child is killed");
    (pid, kid, img, a, b)
}

#[test]
fn processes_come_back_in_their_cgroups_made_again_when_gone() {
    become_subreaper();
    let dir = scratch("cgroup-made");
    let g = Groups::new(&dir, "made");
    let (pid, kid, img, a, b) = dump_pair(&dir, &g);
    // As after a power cycle: the cgroups are gone.
    g.remove_leaves();
    assert!(!g.base.join("app").exists());

    restore(&img);
    assert!(alive(pid) && alive(kid));
    assert_eq!(cgroup_of(pid), g.path("app"));
    assert_eq!(cgroup_of(kid), g.path("kid"));
    assert_eq!(
        std::fs::read_to_string(g.base.join("app/cgroup.procs")).expect("procs"),
        format!("{pid}\n"),
        "exactly the parent"
    );
    assert_eq!(
        std::fs::read_to_string(g.base.join("kid/cgroup.procs")).expect("procs"),
        format!("{kid}\n"),
        "exactly the child"
    );
    let (na, nb) = (lines(&a).len(), lines(&b).len());
    wait_for("both counting on", || {
        lines(&a).len() > na + 2 && lines(&b).len() > nb + 2
    });
    end_pair(pid, kid);
}

#[test]
fn an_existing_cgroup_is_joined_and_the_restorers_own_is_left_out_of_the_image() {
    become_subreaper();
    let dir = scratch("cgroup-joined");
    let g = Groups::new(&dir, "joined");
    let (pid, kid, img, _, _) = dump_pair(&dir, &g);
    let show = torpor(&["show", img.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    let cgroup_records: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"cgroup\""))
        .collect();
    assert_eq!(cgroup_records.len(), 2, "one record per cgroup: {text}");
    assert!(
        cgroup_records[0].contains(&format!("\"path\":\"{}\",\"pids\":[{pid}]", g.path("app"))),
        "{}",
        cgroup_records[0]
    );
    assert!(
        cgroup_records[1].contains(&format!("\"path\":\"{}\",\"pids\":[{kid}]", g.path("kid"))),
        "{}",
        cgroup_records[1]
    );
    restore(&img);
    assert_eq!(cgroup_of(pid), g.path("app"));
    assert_eq!(cgroup_of(kid), g.path("kid"));
    end_pair(pid, kid);

    // A tree in the dumping torpor's own cgroup has no cgroup record: it
    // comes back where the restoring torpor is, as one it started would.
    let bin = compile(&dir, "pair2", PAIR, &[]);
    let (a, b) = (dir.join("a2.txt"), dir.join("b2.txt"));
    let pid = spawn(&bin, &[a.to_str().unwrap(), b.to_str().unwrap()], None);
    let kid = child_of(pid);
    wait_for("counting", || lines(&a).len() >= 2 && lines(&b).len() >= 2);
    let img2 = dir.join("own.img");
    dump(pid, &img2, &[]);
    assert_eq!(reap(pid), libc::SIGKILL);
    assert_eq!(reap(kid), libc::SIGKILL);
    let raw = std::fs::read(&img2).expect("image");
    let name = g.path("app");
    assert!(
        !raw.windows(name.len()).any(|w| w == name.as_bytes()),
        "no cgroup of another test in the image"
    );
    let list = torpor(&["show", img2.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    assert!(
        !listed.contains("\"kind\":\"cgroup\""),
        "no cgroup record: {listed}"
    );
    restore(&img2);
    assert_eq!(cgroup_of(pid), own_cgroup());
    assert_eq!(cgroup_of(kid), own_cgroup());
    end_pair(pid, kid);
}

#[test]
fn a_cgroup_that_cannot_be_made_fails_the_restore_naming_it_and_leaves_nothing() {
    become_subreaper();
    let dir = scratch("cgroup-refused");
    let g = Groups::new(&dir, "refused");
    let (pid, kid, img, _, _) = dump_pair(&dir, &g);
    g.remove_leaves();
    // No cgroup may be made below the base any more.
    std::fs::write(g.base.join("cgroup.max.depth"), "0").expect("max depth");
    let o = torpor(&["restore", "--image", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "restore must fail");
    assert!(
        err.contains(&format!("cgroup {}", g.path("app")))
            || err.contains(&format!("cgroup {}", g.path("kid"))),
        "names the cgroup: {err}"
    );
    assert!(err.contains("making cgroup"), "says what failed: {err}");
    assert!(!alive(pid) && !alive(kid), "nothing of the tree runs");
    assert!(!g.base.join("app").exists() && !g.base.join("kid").exists());
    // With the limit lifted the same image restores.
    std::fs::write(g.base.join("cgroup.max.depth"), "max").expect("max depth");
    restore(&img);
    assert_eq!(cgroup_of(pid), g.path("app"));
    assert_eq!(cgroup_of(kid), g.path("kid"));
    end_pair(pid, kid);
}

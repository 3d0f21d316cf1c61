//! Control group (v2) membership: each process of the tree goes back into
//! the cgroup it was in, which is made again, with the settings of its
//! controllers, when it no longer exists (after a power cycle).
//!
//! The dump reads each process's cgroup from the `0::` line of
//! `/proc/PID/cgroup` (a path from the root of torpor's cgroup namespace)
//! and records those other than torpor's own: a process in the dumping
//! torpor's cgroup comes back in the restoring torpor's, as one it started
//! would be. For each cgroup it records the controller settings
//! [`SETTINGS`] lists that its directory has. The restore moves each new process into its cgroup
//! before any of its memory is brought in, so what it maps is charged
//! there. A cgroup that exists is used as it is: its settings belong to
//! whoever made it. One that torpor makes gets the recorded settings, the
//! controllers they need being enabled in its parent first, and is removed
//! again if the restore fails.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::image::records::{Cgroup, CgroupSetting};

/// The controller files kept, in the order a restore writes them.
pub const SETTINGS: &[&str] = &[
    "cpu.weight",
    "cpu.max",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "io.weight",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.high",
    "memory.swap.max",
    "memory.oom.group",
    "pids.max",
];

/// The longest cgroup path or setting value an image may hold.
const PATH_MAX: usize = 4096;
const VALUE_MAX: usize = 256;

/// The v2 cgroup of a process or thread from its `cgroup` file in /proc
/// (`0::/a/b`), `None` on a kernel without the v2 hierarchy.
pub fn parse_membership(text: &str) -> Result<Option<String>, String> {
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Ok(None);
    };
    check_path(path)?;
    Ok(Some(path.to_string()))
}

/// A cgroup path as the image may hold it: absolute, each component a
/// plain name (no `.`, `..` or empty one), no NUL or newline.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.len() > PATH_MAX {
        return Err(format!("a cgroup path of {} bytes", path.len()));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!(
            "cgroup {path:?} is not absolute (outside the cgroup namespace?)"
        ));
    };
    if rest.is_empty() {
        return Ok(());
    }
    if path.contains(['\0', '\n']) {
        return Err(format!("cgroup {path:?} has a NUL or a newline"));
    }
    if rest
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("cgroup {path:?} has an empty, . or .. component"));
    }
    Ok(())
}

/// Checks a `cgroup` record from an image: its path, its settings (files
/// of [`SETTINGS`] only, each once, with a short one-line value).
pub fn check_record(c: &Cgroup) -> Result<(), String> {
    check_path(&c.path)?;
    if c.pids.is_empty() {
        return Err(format!("cgroup {} holds no process", c.path));
    }
    for (i, s) in c.settings.iter().enumerate() {
        if !SETTINGS.contains(&s.file.as_str()) {
            return Err(format!(
                "cgroup {}: {:?} is not a setting torpor keeps",
                c.path, s.file
            ));
        }
        if c.settings[..i].iter().any(|o| o.file == s.file) {
            return Err(format!("cgroup {}: {} twice", c.path, s.file));
        }
        if s.value.len() > VALUE_MAX || s.value.is_empty() || s.value.contains(['\0', '\n']) {
            return Err(format!(
                "cgroup {}: {} has a malformed value",
                c.path, s.file
            ));
        }
    }
    Ok(())
}

/// Where the v2 hierarchy is mounted, as torpor sees it: the mount point
/// and the cgroup path it shows (`/` for the whole hierarchy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub root: String,
}

impl Mount {
    /// The v2 mount of torpor's mount namespace that shows `path`, one of
    /// the whole hierarchy first.
    pub fn find(path: &str) -> Result<Option<Mount>, String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let mut mounts = parse_mountinfo(&text);
        mounts.sort_by_key(|m| m.root.len());
        Ok(mounts.into_iter().find(|m| m.dir_of(path).is_some()))
    }

    /// The directory of cgroup `path` under this mount, if it shows it.
    pub fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path.strip_prefix('/')?
        } else if path == self.root {
            ""
        } else {
            path.strip_prefix(self.root.as_str())?.strip_prefix('/')?
        };
        Some(if rel.is_empty() {
            self.point.clone()
        } else {
            self.point.join(rel)
        })
    }
}

/// The `cgroup2` mounts of a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(point)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let (root, point) = (unescape(root), unescape(point));
        if check_path(&root).is_ok() {
            out.push(Mount {
                point: PathBuf::from(point),
                root,
            });
        }
    }
    out
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (u32::from(b[i + 1] - b'0') << 6)
                | (u32::from(b[i + 2] - b'0') << 3)
                | u32::from(b[i + 3] - b'0');
            if let Ok(c) = u8::try_from(v) {
                out.push(c);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The settings of [`SETTINGS`] a cgroup directory has, as the kernel
/// prints them (one line, trailing newline dropped).
pub fn read_settings(dir: &Path) -> Result<Vec<CgroupSetting>, String> {
    let mut out = Vec::new();
    for &file in SETTINGS {
        let path = dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let value = text.trim_end_matches('\n');
                // An empty cpuset.cpus means "the parent's": nothing set.
                if value.is_empty() || value.contains('\n') || value.len() > VALUE_MAX {
                    continue;
                }
                out.push(CgroupSetting {
                    file: file.to_string(),
                    value: value.to_string(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(out)
}

/// The cgroups of the tree's live processes other than torpor's own, each
/// with the processes in it and its settings. Threads of one process in different cgroups
/// (threaded cgroups) are refused, naming the thread. For a user's image
/// (`user` not root) only cgroups the user may move processes into
/// (`cgroup.procs` the user's) are kept: a user's processes are restored
/// where the user could put them.
pub fn collect(procs: &[(i32, Vec<i32>)], user: Option<u32>) -> Result<Vec<Cgroup>, (i32, String)> {
    let own = own_cgroup().map_err(|e| (procs.first().map_or(0, |p| p.0), e))?;
    let mut out: Vec<Cgroup> = Vec::new();
    let mut mounts: Option<Vec<Mount>> = None;
    for (pid, tids) in procs {
        add_process(*pid, tids, own.as_deref(), user, &mut mounts, &mut out)
            .map_err(|e| (*pid, e))?;
    }
    Ok(out)
}

fn add_process(
    pid: i32,
    tids: &[i32],
    own: Option<&str>,
    user: Option<u32>,
    mounts: &mut Option<Vec<Mount>>,
    out: &mut Vec<Cgroup>,
) -> Result<(), String> {
    let path = format!("/proc/{pid}/cgroup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let Some(cg) = parse_membership(&text)? else {
        return Ok(());
    };
    for tid in tids.iter().filter(|&&t| t != pid) {
        let tpath = format!("/proc/{pid}/task/{tid}/cgroup");
        let text = std::fs::read_to_string(&tpath).map_err(|e| format!("{tpath}: {e}"))?;
        let theirs = parse_membership(&text).map_err(|e| format!("thread {tid}: {e}"))?;
        if theirs.as_deref() != Some(cg.as_str()) {
            return Err(format!(
                "thread {tid} of process {pid} is in cgroup {}, the process in {cg}: threaded cgroups are not kept",
                theirs.unwrap_or_default()
            ));
        }
    }
    // One in torpor's own cgroup comes back in the restoring torpor's, as
    // a process it started would be.
    if own == Some(cg.as_str()) {
        return Ok(());
    }
    if let Some(c) = out.iter_mut().find(|c| c.path == cg) {
        c.pids.push(pid);
        return Ok(());
    }
    let mounts = match mounts {
        Some(m) => m,
        None => {
            let text = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
            let mut m = parse_mountinfo(&text);
            m.sort_by_key(|m| m.root.len());
            mounts.insert(m)
        }
    };
    let dir = mounts.iter().find_map(|m| m.dir_of(&cg));
    if let Some(uid) = user {
        let owned = dir
            .as_ref()
            .and_then(|d| std::fs::metadata(d.join("cgroup.procs")).ok())
            .is_some_and(|md| md.uid() == uid);
        if !owned {
            return Ok(());
        }
    }
    let settings = match &dir {
        Some(d) if cg != "/" => read_settings(d)?,
        _ => Vec::new(),
    };
    out.push(Cgroup {
        path: cg,
        pids: vec![pid],
        settings,
    });
    Ok(())
}

/// Cgroups a restore made, removed again (deepest first) unless
/// [`Made::keep`] is called.
#[derive(Debug, Default)]
pub struct Made {
    dirs: Vec<PathBuf>,
    kept: bool,
}

impl Made {
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for d in self.dirs.iter().rev() {
            // Fails while a killed task is still being torn down; a cgroup
            // left empty is all that remains then.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The cgroup torpor is in itself.
fn own_cgroup() -> Result<Option<String>, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    parse_membership(&text)
}

fn write_file(path: &Path, value: &str) -> Result<(), String> {
    // As `echo VALUE > FILE` would: cgroupfs takes the whole value from
    // one write, and the truncation is a no-op there.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(value.as_bytes())
        .map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// The controller a setting file belongs to (`memory` of `memory.max`).
fn controller(file: &str) -> &str {
    file.split_once('.').map_or(file, |(c, _)| c)
}

/// Makes cgroup directory `dir` under `mount_point`, each missing
/// directory on the way with the controllers `need` enabled in its parent,
/// and returns whether `dir` itself was made.
fn make(mount_point: &Path, dir: &Path, need: &[&str], made: &mut Made) -> Result<bool, String> {
    if dir.is_dir() {
        return Ok(false);
    }
    let parent = dir
        .parent()
        .filter(|p| p.starts_with(mount_point))
        .ok_or_else(|| format!("{}: not under {}", dir.display(), mount_point.display()))?;
    make(mount_point, parent, need, made)?;
    if !need.is_empty() {
        let have = std::fs::read_to_string(parent.join("cgroup.subtree_control"))
            .map_err(|e| format!("{}/cgroup.subtree_control: {e}", parent.display()))?;
        let have: Vec<&str> = have.split_whitespace().collect();
        let add: Vec<String> = need
            .iter()
            .filter(|c| !have.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if !add.is_empty() {
            let add = add.join(" ");
            write_file(&parent.join("cgroup.subtree_control"), &add)
                .map_err(|e| format!("enabling controllers ({add}): {e}"))?;
        }
    }
    std::fs::create_dir(dir).map_err(|e| format!("making cgroup {}: {e}", dir.display()))?;
    #[cfg(test)]
    tests::as_cgroupfs(dir).map_err(|e| e.to_string())?;
    made.dirs.push(dir.to_path_buf());
    Ok(true)
}

/// Puts each process of the records into its cgroup (under `mount`),
/// making the cgroup with its settings when it does not exist. A process
/// already there (the cgroup torpor runs in) is left as it is.
pub fn apply_at(
    mount: &Mount,
    cgroups: &[Cgroup],
    own: Option<&str>,
    made: &mut Made,
) -> Result<(), String> {
    for c in cgroups {
        if own == Some(c.path.as_str()) {
            continue;
        }
        let dir = mount.dir_of(&c.path).ok_or_else(|| {
            format!(
                "cgroup {} is outside the cgroup2 mount at {}",
                c.path,
                mount.point.display()
            )
        })?;
        let mut need: Vec<&str> = c.settings.iter().map(|s| controller(&s.file)).collect();
        need.sort_unstable();
        need.dedup();
        let fresh =
            make(&mount.point, &dir, &need, made).map_err(|e| format!("cgroup {}: {e}", c.path))?;
        if fresh {
            for s in &c.settings {
                write_file(&dir.join(&s.file), &s.value)
                    .map_err(|e| format!("cgroup {}: {e}", c.path))?;
            }
        }
        for pid in &c.pids {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())
                .map_err(|e| format!("moving process {pid} into cgroup {}: {e}", c.path))?;
        }
    }
    Ok(())
}

/// Puts the restored processes into their cgroups ([`apply_at`] under the
/// v2 mount torpor sees).
pub fn apply(cgroups: &[Cgroup], made: &mut Made) -> Result<(), String> {
    let own = own_cgroup()?;
    for c in cgroups {
        if own.as_deref() == Some(c.path.as_str()) {
            continue;
        }
        let mount = match Mount::find(&c.path)? {
            Some(m) => m,
            None => mount_standard().map_err(|why| {
                format!(
                    "processes {:?} were in cgroup {}, but no cgroup2 file system is mounted here to put them back, and {why}",
                    c.pids, c.path
                )
            })?,
        };
        apply_at(&mount, std::slice::from_ref(c), own.as_deref(), made)?;
    }
    Ok(())
}

/// Where a restore mounts the v2 hierarchy when none is mounted: at a
/// boot, torpor runs before whatever mounted it at the dump.
const STANDARD: &str = "/sys/fs/cgroup";

/// Mounts the v2 hierarchy at [`STANDARD`], only on an empty directory (a
/// hybrid system's tmpfs of v1 hierarchies is not covered), saying so.
fn mount_standard() -> Result<Mount, String> {
    use nix::mount::MsFlags;
    let at = Path::new(STANDARD);
    let empty = std::fs::read_dir(at)
        .map_err(|e| format!("{STANDARD}: {e}"))?
        .next()
        .is_none();
    if !empty {
        return Err(format!(
            "{STANDARD} is not an empty directory to mount one on"
        ));
    }
    nix::mount::mount(
        Some("cgroup2"),
        at,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting cgroup2 on {STANDARD} failed: {e}"))?;
    eprintln!(
        "torpor: mounted cgroup2 on {STANDARD} to put the restored processes in their cgroups"
    );
    Ok(Mount {
        point: at.to_path_buf(),
        root: "/".into(),
    })
}

/// For a user's image: each cgroup must exist and be one the user may
/// move processes into (its `cgroup.procs` the user's), or be the one
/// torpor runs in; a restore makes none for a user.
pub fn user_may(cgroups: &[Cgroup], uid: u32) -> Result<(), String> {
    let own = own_cgroup()?;
    for c in cgroups {
        if own.as_deref() == Some(c.path.as_str()) {
            continue;
        }
        let dir = Mount::find(&c.path)?.and_then(|m| m.dir_of(&c.path));
        let md = dir
            .as_ref()
            .and_then(|d| std::fs::symlink_metadata(d.join("cgroup.procs")).ok());
        match md {
            Some(md) if md.uid() == uid && md.file_type().is_file() => {}
            Some(_) => {
                return Err(format!(
                    "the image puts processes {:?} into cgroup {}, which uid {uid} may not move processes into",
                    c.pids, c.path
                ))
            }
            None => {
                return Err(format!(
                    "the image puts processes {:?} into cgroup {}, which does not exist, and a restore makes none for uid {uid}",
                    c.pids, c.path
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(file: &str, value: &str) -> CgroupSetting {
        CgroupSetting {
            file: file.into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_v2_line_is_the_membership() {
        let text = "12:pids:/user.slice\n1:name=systemd:/x\n0::/user.slice/app.scope\n";
        assert_eq!(
            parse_membership(text).unwrap().as_deref(),
            Some("/user.slice/app.scope")
        );
        assert_eq!(parse_membership("4:memory:/m\n").unwrap(), None);
        assert_eq!(parse_membership("0::/\n").unwrap().as_deref(), Some("/"));
    }

    #[test]
    fn paths_outside_the_namespace_or_with_dot_components_are_refused() {
        for bad in ["/../..", "relative", "/a//b", "/a/./b", "/a/", "/a\nb"] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(parse_membership("0::/../sibling\n").is_err());
        for good in ["/", "/a", "/a.b/c-d e"] {
            assert_eq!(check_path(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn mountinfo_gives_the_cgroup2_mounts_with_their_roots() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
52 23 0:38 /a/b /mnt/my\\040cg rw shared:9 - cgroup2 none rw
";
        let m = parse_mountinfo(text);
        assert_eq!(
            m,
            vec![
                Mount {
                    point: "/sys/fs/cgroup/unified".into(),
                    root: "/".into()
                },
                Mount {
                    point: "/mnt/my cg".into(),
                    root: "/a/b".into()
                },
            ]
        );
        assert_eq!(
            m[0].dir_of("/x/y"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/x/y"))
        );
        assert_eq!(
            m[0].dir_of("/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(m[1].dir_of("/a/b/c"), Some(PathBuf::from("/mnt/my cg/c")));
        assert_eq!(m[1].dir_of("/a/b"), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(m[1].dir_of("/a/bc"), None);
        assert_eq!(m[1].dir_of("/x"), None);
    }

    #[test]
    fn records_with_unknown_duplicate_or_malformed_settings_are_refused() {
        let ok = Cgroup {
            path: "/app".into(),
            pids: vec![5],
            settings: vec![setting("memory.max", "1048576"), setting("pids.max", "max")],
        };
        assert_eq!(check_record(&ok), Ok(()));
        let mut bad = ok.clone();
        bad.settings.push(setting("cgroup.procs", "1"));
        assert!(check_record(&bad).unwrap_err().contains("not a setting"));
        let mut bad = ok.clone();
        bad.settings.push(setting("pids.max", "7"));
        assert!(check_record(&bad).unwrap_err().contains("pids.max twice"));
        let mut bad = ok.clone();
        bad.settings[0].value = "1\n2".into();
        assert!(check_record(&bad).unwrap_err().contains("malformed"));
        let mut bad = ok.clone();
        bad.pids.clear();
        assert!(check_record(&bad).unwrap_err().contains("no process"));
        let mut bad = ok;
        bad.path = "/../x".into();
        assert!(check_record(&bad).is_err());
    }

    /// Stands in for cgroupfs, which gives a new cgroup its files.
    pub(super) fn as_cgroupfs(dir: &Path) -> std::io::Result<()> {
        for f in SETTINGS
            .iter()
            .chain(&["cgroup.procs", "cgroup.subtree_control"])
        {
            std::fs::write(dir.join(f), "")?;
        }
        Ok(())
    }

    /// A made cgroup gets the controllers its settings need enabled in
    /// each new parent, then its settings in [`SETTINGS`] order and its
    /// processes; an existing one only its processes. Checked on a plain
    /// directory standing for the mount.
    #[test]
    fn a_missing_cgroup_is_made_with_its_settings_and_an_existing_one_is_only_joined() {
        let root = std::env::temp_dir().join(format!("torpor-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("old")).unwrap();
        as_cgroupfs(&root).unwrap();
        as_cgroupfs(&root.join("old")).unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "cpu pids\n").unwrap();
        std::fs::write(root.join("old/pids.max"), "9\n").unwrap();
        let mount = Mount {
            point: root.clone(),
            root: "/".into(),
        };
        let cgroups = vec![
            Cgroup {
                path: "/old".into(),
                pids: vec![11],
                settings: vec![setting("pids.max", "max")],
            },
            Cgroup {
                path: "/new/leaf".into(),
                pids: vec![12],
                settings: vec![setting("memory.max", "4096"), setting("pids.max", "20")],
            },
            Cgroup {
                path: "/mine".into(),
                pids: vec![13],
                settings: vec![setting("pids.max", "3")],
            },
        ];
        let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
        let mut made = Made::default();
        apply_at(&mount, &cgroups, Some("/mine"), &mut made).unwrap();
        assert_eq!(read("old/cgroup.procs"), "11");
        assert_eq!(
            read("old/pids.max"),
            "9\n",
            "an existing cgroup's settings are its owner's"
        );
        assert_eq!(
            read("cgroup.subtree_control"),
            "+memory",
            "only the missing controller"
        );
        assert_eq!(
            read("new/cgroup.subtree_control"),
            "+memory +pids",
            "in one write"
        );
        assert_eq!(read("new/cgroup.procs"), "");
        assert_eq!(read("new/leaf/memory.max"), "4096");
        assert_eq!(read("new/leaf/pids.max"), "20");
        assert_eq!(read("new/leaf/cpu.max"), "", "only recorded settings");
        assert_eq!(read("new/leaf/cgroup.procs"), "12");
        assert!(
            !root.join("mine").exists(),
            "torpor's own cgroup is left alone"
        );
        drop(made);
        assert!(
            root.join("new/leaf").is_dir(),
            "made cgroups are not empty: rmdir fails"
        );
        for f in SETTINGS
            .iter()
            .chain(&["cgroup.procs", "cgroup.subtree_control"])
        {
            std::fs::remove_file(root.join("new/leaf").join(f)).unwrap();
            std::fs::remove_file(root.join("new").join(f)).unwrap();
        }
        let made = Made {
            dirs: vec![root.join("new"), root.join("new/leaf")],
            kept: false,
        };
        drop(made);
        assert!(
            !root.join("new").exists(),
            "a failed restore removes what it made, deepest first"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}

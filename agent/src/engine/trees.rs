//! The trees of an image that holds several (one per managed application)
//! as states of their own, so that `torpor boot` can restore each tree
//! alone when they cannot all come back together: the tree that fails is
//! cold-started and the others run on.
//!
//! A part holds its tree's processes, the file descriptions, pipes and
//! objects (memfds, SysV segments, unlinked files, tmpfs files, shared
//! memory) only they refer to, renumbered, and its page runs. Trees that
//! share anything (a description, a pipe, a memfd, a connected UNIX
//! socket pair...) cannot come back apart: [`split`] refuses, naming what
//! they share. The restore passes over the records of the other trees
//! ([`Others`]) as it streams the image.

use std::collections::BTreeMap;

use crate::engine::state::{Backing, FileKind, ImageState, Others, PageRun};
use crate::image::records::ObjectRef;

/// What two trees may share, which keeps them from coming back apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Shared {
    File(u32),
    Pipe(u32),
    Memfd(u64),
    Sysv(i32),
    Unlinked(u64),
    Shm(u64),
    Tmpfs(Vec<u8>),
    Socket(u64),
}

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shared::File(i) => write!(f, "open file description {i}"),
            Shared::Pipe(i) => write!(f, "pipe {i}"),
            Shared::Memfd(id) => write!(f, "memfd {id}"),
            Shared::Sysv(id) => write!(f, "SysV segment {id}"),
            Shared::Unlinked(ino) => write!(f, "unlinked file {ino}"),
            Shared::Shm(id) => write!(f, "shared memory {id}"),
            Shared::Tmpfs(p) => write!(f, "tmpfs file {}", String::from_utf8_lossy(p)),
            Shared::Socket(ino) => write!(f, "UNIX socket {ino}"),
        }
    }
}

/// Which part each thing belongs to; a second part claiming it is refused.
struct Claims<'a> {
    st: &'a ImageState,
    owner: BTreeMap<Shared, usize>,
}

impl Claims<'_> {
    fn claim(&mut self, what: Shared, part: usize) -> Result<(), String> {
        match self.owner.get(&what) {
            Some(&other) if other != part => Err(format!(
                "the trees of {} and {} share {what}",
                self.st.trees[other].name, self.st.trees[part].name
            )),
            Some(_) => Ok(()),
            None => {
                self.owner.insert(what, part);
                Ok(())
            }
        }
    }

    fn holds(&self, what: &Shared, part: usize) -> bool {
        self.owner.get(what) == Some(&part)
    }
}

/// The tree (index into `st.trees`) of each process, by following parents
/// to a root. An image whose processes do not all belong to a named tree
/// cannot be split.
fn tree_of_each(st: &ImageState) -> Result<Vec<usize>, String> {
    let by_pid: BTreeMap<i32, usize> = st
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.task.pid, i))
        .collect();
    st.processes
        .iter()
        .map(|p| {
            let mut cur = p;
            // Bounded: a parent chain longer than the image is a cycle.
            for _ in 0..=st.processes.len() {
                if cur.task.ppid == 0 {
                    return st
                        .trees
                        .iter()
                        .position(|t| t.root == cur.task.pid)
                        .ok_or_else(|| {
                            format!(
                                "process {} is in the tree of {}, which has no name",
                                p.task.pid, cur.task.pid
                            )
                        });
                }
                cur = by_pid
                    .get(&cur.task.ppid)
                    .map(|&i| &st.processes[i])
                    .ok_or_else(|| {
                        format!(
                            "parent {} of process {} is not in the image",
                            cur.task.ppid, cur.task.pid
                        )
                    })?;
            }
            Err(format!("process {} has a parent cycle", p.task.pid))
        })
        .collect()
}

/// One state per tree of `st`, in the order of its tree records; see the
/// module documentation.
pub fn split(st: &ImageState) -> Result<Vec<ImageState>, String> {
    if st.trees.len() < 2 {
        return Err("the image holds one tree".into());
    }
    let tree = tree_of_each(st)?;
    let mut c = Claims {
        st,
        owner: BTreeMap::new(),
    };
    for (i, p) in st.processes.iter().enumerate() {
        let part = tree[i];
        for fd in &p.fds {
            c.claim(Shared::File(fd.file), part)?;
            let f = st
                .files
                .get(fd.file as usize)
                .ok_or_else(|| format!("fd {} of process {}: no such file", fd.fd, p.task.pid))?;
            match &f.kind {
                FileKind::Pipe(pf) => c.claim(Shared::Pipe(pf.pipe), part)?,
                FileKind::MemfdFile(m) => c.claim(Shared::Memfd(m.id), part)?,
                FileKind::UnlinkedFile(u) => c.claim(Shared::Unlinked(u.inode), part)?,
                FileKind::Unix(u) => c.claim(Shared::Socket(u.inode), part)?,
                _ => {}
            }
        }
        for v in &p.vmas {
            match &v.backing {
                Backing::Shm { id, .. } => c.claim(Shared::Shm(*id), part)?,
                Backing::Memfd { id, .. } => c.claim(Shared::Memfd(*id), part)?,
                Backing::Sysv { shmid, .. } => c.claim(Shared::Sysv(*shmid), part)?,
                Backing::Unlinked { inode, .. } => c.claim(Shared::Unlinked(*inode), part)?,
                Backing::File { path, .. }
                    if st.tmpfs_files.iter().any(|t| t.path.0 == path.as_bytes()) =>
                {
                    c.claim(Shared::Tmpfs(path.as_bytes().to_vec()), part)?;
                }
                _ => {}
            }
        }
    }
    // A connected pair of UNIX sockets is one object: both ends in one part.
    for f in &st.files {
        if let FileKind::Unix(u) = &f.kind {
            if let Some(&part) = c.owner.get(&Shared::Socket(u.inode)) {
                if u.peer != 0 && c.owner.contains_key(&Shared::Socket(u.peer)) {
                    c.claim(Shared::Socket(u.peer), part)?;
                }
            }
        }
    }
    // A descriptor in flight goes with the socket whose queue holds it, and
    // the object behind it with it (one round per level of sockets in
    // flight).
    for _ in 0..=crate::engine::state::RIGHTS_DEPTH {
        for r in &st.rights {
            if let Some(&part) = c.owner.get(&Shared::File(r.socket)) {
                for &f in &r.files {
                    c.claim(Shared::File(f), part)?;
                    match st.files.get(f as usize).map(|f| &f.kind) {
                        Some(FileKind::Pipe(pf)) => c.claim(Shared::Pipe(pf.pipe), part)?,
                        Some(FileKind::MemfdFile(m)) => c.claim(Shared::Memfd(m.id), part)?,
                        Some(FileKind::Unix(u)) => c.claim(Shared::Socket(u.inode), part)?,
                        _ => {}
                    }
                }
            }
        }
    }
    // A waiting connection's client goes with its listener.
    for w in &st.waiting {
        if let Some(&part) = c.owner.get(&Shared::File(w.listener)) {
            for &f in &w.clients {
                c.claim(Shared::File(f), part)?;
            }
        }
    }
    // A queued message sent by a process of another tree names a sender
    // that tree alone would not bring back.
    for m in &st.msg_creds {
        if let Some(&part) = c.owner.get(&Shared::File(m.socket)) {
            let sender = st.processes.iter().position(|p| p.task.pid == m.pid);
            if let Some(other) = sender.map(|i| tree[i]).filter(|&t| t != part) {
                return Err(format!(
                    "the trees of {} and {} share a queued message of a UNIX socket, sent by process {} (its credentials)",
                    st.trees[other].name, st.trees[part].name, m.pid
                ));
            }
        }
    }
    Ok((0..st.trees.len())
        .map(|part| part_of(st, &tree, &c, part))
        .collect())
}

fn part_of(st: &ImageState, tree: &[usize], c: &Claims<'_>, part: usize) -> ImageState {
    let mine: Vec<usize> = (0..st.processes.len())
        .filter(|&i| tree[i] == part)
        .collect();
    let files: Vec<u32> = (0..st.files.len())
        .filter_map(|i| u32::try_from(i).ok())
        .filter(|&i| c.holds(&Shared::File(i), part))
        .collect();
    let pipes: Vec<u32> = (0..st.pipes.len())
        .filter_map(|i| u32::try_from(i).ok())
        .filter(|&i| c.holds(&Shared::Pipe(i), part))
        .collect();
    // Indices in the part: positions in the kept lists, which fit as the
    // originals did.
    let renumber = |list: &[u32], old: u32| {
        list.iter()
            .position(|&x| x == old)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(old)
    };
    let processes: Vec<crate::engine::state::ProcessState> = mine
        .iter()
        .map(|&i| {
            let mut p = st.processes[i].clone();
            for fd in &mut p.fds {
                fd.file = renumber(&files, fd.file);
            }
            p
        })
        .collect();
    let page_runs: Vec<PageRun> = st
        .page_runs
        .iter()
        .filter_map(|r| {
            let process = mine.iter().position(|&i| i == r.process)?;
            Some(PageRun { process, ..*r })
        })
        .collect();
    let mut others = Others::default();
    for (i, p) in st.processes.iter().enumerate() {
        if tree[i] != part {
            others.pids.insert(p.task.pid);
        }
    }
    let memfds = st
        .memfds
        .iter()
        .filter(|o| {
            keep(
                c,
                part,
                Shared::Memfd(o.id),
                ObjectRef::Memfd(o.id),
                &mut others,
            )
        })
        .cloned()
        .collect();
    let sysv = st
        .sysv
        .iter()
        .filter(|o| {
            keep(
                c,
                part,
                Shared::Sysv(o.shmid),
                ObjectRef::Sysv(o.shmid),
                &mut others,
            )
        })
        .cloned()
        .collect();
    let unlinked = st
        .unlinked
        .iter()
        .filter(|o| {
            keep(
                c,
                part,
                Shared::Unlinked(o.inode),
                ObjectRef::Unlinked(o.inode),
                &mut others,
            )
        })
        .cloned()
        .collect();
    let cgroups = st
        .cgroups
        .iter()
        .filter_map(|cg| {
            let pids: Vec<i32> = cg
                .pids
                .iter()
                .copied()
                .filter(|pid| processes.iter().any(|p| p.task.pid == *pid))
                .collect();
            (!pids.is_empty()).then(|| crate::image::records::Cgroup { pids, ..cg.clone() })
        })
        .collect();
    ImageState {
        files: files
            .iter()
            .map(|&i| {
                let mut f = st.files[i as usize].clone();
                if let FileKind::Pipe(pf) = &mut f.kind {
                    pf.pipe = renumber(&pipes, pf.pipe);
                }
                f
            })
            .collect(),
        pipes: pipes
            .iter()
            .map(|&i| st.pipes[i as usize].clone())
            .collect(),
        processes,
        tmpfs_files: st
            .tmpfs_files
            .iter()
            .filter(|t| c.holds(&Shared::Tmpfs(t.path.0.clone()), part))
            .cloned()
            .collect(),
        memfds,
        sysv,
        unlinked,
        pages: page_runs.iter().map(|r| u64::from(r.pages)).sum(),
        page_runs,
        page_size: st.page_size,
        clocks: st.clocks,
        owners: st.owners.clone(),
        requested_by: st.requested_by.clone(),
        trees: vec![st.trees[part].clone()],
        others: Some(others),
        rights: st
            .rights
            .iter()
            .filter(|r| c.holds(&Shared::File(r.socket), part))
            .map(|r| crate::engine::state::Rights {
                socket: renumber(&files, r.socket),
                message: r.message,
                files: r.files.iter().map(|&f| renumber(&files, f)).collect(),
            })
            .collect(),
        waiting: st
            .waiting
            .iter()
            .filter(|w| c.holds(&Shared::File(w.listener), part))
            .map(|w| crate::engine::state::Waiting {
                listener: renumber(&files, w.listener),
                clients: w.clients.iter().map(|&f| renumber(&files, f)).collect(),
            })
            .collect(),
        msg_creds: st
            .msg_creds
            .iter()
            .filter(|m| c.holds(&Shared::File(m.socket), part))
            .map(|m| crate::engine::state::MsgCreds {
                socket: renumber(&files, m.socket),
                ..*m
            })
            .collect(),
        sock_opts: st
            .sock_opts
            .iter()
            .filter(|(&f, _)| c.holds(&Shared::File(f), part))
            .map(|(&f, o)| (renumber(&files, f), o.clone()))
            .collect(),
        cgroups,
    }
}

/// Whether an object is the part's; another's contents are passed over.
fn keep(c: &Claims<'_>, part: usize, what: Shared, obj: ObjectRef, others: &mut Others) -> bool {
    let mine = c.holds(&what, part);
    if !mine {
        others.objects.push(obj);
    }
    mine
}

/// Whether a record of the image belongs to another tree than the one
/// `st` restores: a task of another tree, or the contents of its objects.
pub fn passed_over_task(st: &ImageState, pid: i32) -> bool {
    st.others.as_ref().is_some_and(|o| o.pids.contains(&pid))
}

/// [`passed_over_task`] for object contents.
pub fn passed_over_object(st: &ImageState, obj: &ObjectRef) -> bool {
    st.others.as_ref().is_some_and(|o| o.objects.contains(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::{Fd, OpenFile, PipeFile, PipeState, ProcessState};
    use crate::image::records::Tree;

    fn process(pid: i32, ppid: i32, files: &[u32]) -> ProcessState {
        let mut p = crate::engine::restore::plan::tests::process(pid, ppid);
        p.fds = files
            .iter()
            .zip(3..)
            .map(|(&file, fd)| Fd {
                fd,
                file,
                cloexec: false,
            })
            .collect();
        p
    }

    fn pipe_end(pipe: u32, write: bool) -> OpenFile {
        OpenFile {
            flags: 0,
            kind: FileKind::Pipe(PipeFile {
                pipe,
                write,
                fifo: None,
            }),
            sigio: None,
        }
    }

    fn run(process: usize, vaddr: u64, pages: u32) -> PageRun {
        PageRun {
            process,
            vaddr,
            pages,
        }
    }

    /// Trees 10 (with child 11) and 20; 11 and 20 each hold a pipe of
    /// their own, interleaved in the lists.
    fn two_trees() -> ImageState {
        ImageState {
            files: vec![pipe_end(0, false), pipe_end(1, true), pipe_end(0, true)],
            pipes: vec![
                PipeState {
                    inode: 500,
                    ..PipeState::default()
                },
                PipeState {
                    inode: 600,
                    ..PipeState::default()
                },
            ],
            processes: vec![
                process(10, 0, &[]),
                process(20, 0, &[1]),
                process(11, 10, &[0, 2]),
            ],
            pages: 7,
            page_runs: vec![run(0, 0x10000, 1), run(1, 0x11000, 2), run(2, 0x12000, 4)],
            page_size: 4096,
            trees: vec![
                Tree {
                    root: 10,
                    name: "logger".into(),
                },
                Tree {
                    root: 20,
                    name: "bridge".into(),
                },
            ],
            ..ImageState::default()
        }
    }

    #[test]
    fn each_tree_keeps_its_own_processes_files_pipes_and_pages() {
        let parts = split(&two_trees()).expect("split");
        assert_eq!(parts.len(), 2);
        let (a, b) = (&parts[0], &parts[1]);
        assert_eq!(a.trees, [two_trees().trees[0].clone()]);
        let pids: Vec<i32> = a.processes.iter().map(|p| p.task.pid).collect();
        assert_eq!(pids, [10, 11]);
        let fds: Vec<u32> = a.processes[1].fds.iter().map(|f| f.file).collect();
        assert_eq!(fds, [0, 1]);
        assert_eq!(a.files, [pipe_end(0, false), pipe_end(0, true)]);
        assert_eq!(a.pipes.len(), 1);
        assert_eq!(a.pipes[0].inode, 500);
        assert_eq!(a.page_runs, [run(0, 0x10000, 1), run(1, 0x12000, 4)]);
        assert_eq!(a.pages, 5);
        assert_eq!(
            a.others,
            Some(Others {
                pids: [20].into(),
                objects: vec![]
            })
        );
        // The second tree's pipe is renumbered to the part's only one.
        assert_eq!(b.processes.len(), 1);
        assert_eq!(b.processes[0].fds[0].file, 0);
        assert_eq!(b.files, [pipe_end(0, true)]);
        assert_eq!(b.pipes[0].inode, 600);
        assert_eq!(b.page_runs, [run(0, 0x11000, 2)]);
        assert_eq!(b.pages, 2);
        assert_eq!(
            b.others.as_ref().map(|o| o.pids.clone()),
            Some([10, 11].into())
        );
        for p in &parts {
            crate::engine::restore::plan::check_structure(p).expect("a part is a whole image");
        }
    }

    #[test]
    fn trees_sharing_anything_cannot_come_apart() {
        let mut st = two_trees();
        // The logger's child holds the bridge's description too.
        st.processes[2].fds.push(Fd {
            fd: 9,
            file: 1,
            cloexec: false,
        });
        assert_eq!(
            split(&st).err(),
            Some("the trees of bridge and logger share open file description 1".into())
        );
        let mut st = two_trees();
        st.files[1] = pipe_end(0, true);
        assert_eq!(
            split(&st).err(),
            Some("the trees of bridge and logger share pipe 0".into())
        );
        // A message queued in the bridge's socket, sent by the logger's
        // child.
        let mut st = two_trees();
        let sent = |pid| crate::engine::state::MsgCreds {
            socket: 1,
            message: 0,
            pid,
            uid: 1000,
            gid: 1000,
        };
        st.msg_creds.push(sent(11));
        assert_eq!(
            split(&st).err(),
            Some("the trees of logger and bridge share a queued message of a UNIX socket, sent by process 11 (its credentials)".into())
        );
        // Sent by the bridge itself: it goes with the bridge, renumbered.
        st.msg_creds = vec![sent(20)];
        let parts = split(&st).expect("split");
        assert!(parts[0].msg_creds.is_empty());
        assert_eq!(
            parts[1].msg_creds,
            [crate::engine::state::MsgCreds {
                socket: 0,
                ..sent(20)
            }]
        );
        let mut st = two_trees();
        st.trees.pop();
        assert_eq!(split(&st).err(), Some("the image holds one tree".into()));
        let mut st = two_trees();
        st.trees[1].root = 11;
        assert_eq!(
            split(&st).err(),
            Some("process 20 is in the tree of 20, which has no name".into())
        );
        let mut st = two_trees();
        st.processes[2].task.ppid = 12;
        assert_eq!(
            split(&st).err(),
            Some("parent 12 of process 11 is not in the image".into())
        );
    }

    #[test]
    fn records_of_the_other_trees_are_passed_over() {
        let parts = split(&two_trees()).expect("split");
        assert!(passed_over_task(&parts[0], 20));
        assert!(!passed_over_task(&parts[0], 11));
        assert!(!passed_over_task(&two_trees(), 20));
        let mut st = two_trees();
        st.memfds.push(crate::image::records::MemfdObject {
            id: 77,
            ..Default::default()
        });
        let parts = split(&st).expect("split");
        // Held by no process: no part fills it.
        assert!(parts[0].memfds.is_empty() && parts[1].memfds.is_empty());
        assert!(passed_over_object(&parts[1], &ObjectRef::Memfd(77)));
        assert!(!passed_over_object(&st, &ObjectRef::Memfd(77)));
    }
}

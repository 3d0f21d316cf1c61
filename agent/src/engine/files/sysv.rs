//! SysV shared memory segments attached by the tree (`shmget` + `shmat`;
//! maps show `/SYSV<key> (deleted)` with the shmid as inode).
//!
//! A dump stores each attached segment once (`sysv-shm` record: id, key,
//! size, mode, owner, creator, whether it is marked for removal) with its
//! contents in `object-data` chunks. A restore in the host IPC namespace
//! uses a segment that is still there (same id, key, size and creator: the
//! same boot, never removed) as it is, with its live contents; creates a
//! missing one with the same id (`/proc/sys/kernel/shm_next_id`) and
//! fills it; refuses when another segment holds the id or the key. Each
//! task attaches its segments again at their addresses with their flags,
//! and a segment marked for removal is removed once all are attached.
//! Segments the tree created but has not attached are no part of any
//! process and are not saved.
//!
//! Unsafe code: SysV segments are made, attached and copied into through libc
//! (shmget, shmat, shmctl, shmdt), and the copy writes through the attachment.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;

use crate::arch::nr;
use crate::engine::procfs::MapEntry;
use crate::engine::remote::Remote;
use crate::engine::state::ImageState;
use crate::engine::state::{Backing, ProcessState, Vma};
use crate::engine::Cause;
use crate::image::records::{ObjectRef, SysvShm};
use crate::image::ImageWriter;

const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";
const SHM_TABLE: &str = "/proc/sysvipc/shm";
/// `SHM_DEST` in the mode: marked for removal, gone at the last detach.
const SHM_DEST: u32 = 0o1000;
/// `SHM_EXEC` (not in every libc).
const SHM_EXEC: i32 = 0o100000;

/// An attachment of a SysV segment: the maps name is `/SYSV` and the key
/// in eight hex digits, the inode is the shmid.
pub(super) fn mapping(m: &MapEntry) -> Option<Backing> {
    let key = m.name.strip_prefix("/SYSV")?.strip_suffix(" (deleted)")?;
    if key.len() != 8 || !key.bytes().all(|b| b.is_ascii_hexdigit()) || !m.has_flag("ms") {
        return None;
    }
    // SHM_RDONLY leaves the mapping without VM_MAYWRITE.
    Some(Backing::Sysv {
        shmid: i32::try_from(m.inode).ok()?,
        offset: m.offset,
        read_only: !m.has_flag("mw"),
    })
}

/// The key in a maps name `/SYSV<key> (deleted)` (0 if unreadable).
fn created_key(name: &str) -> i32 {
    let hex = name
        .strip_prefix("/SYSV")
        .and_then(|s| s.strip_suffix(" (deleted)"))
        .unwrap_or("");
    u32::from_str_radix(hex, 16).map_or(0, |k| i32::from_ne_bytes(k.to_ne_bytes()))
}

/// One line of /proc/sysvipc/shm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    key: i32,
    shmid: i32,
    perms: u32,
    size: u64,
    cpid: i32,
    uid: u32,
    gid: u32,
    cuid: u32,
    cgid: u32,
}

fn parse_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("{SHM_TABLE}: unreadable line {line:?}");
        if w.len() < 11 {
            return Err(bad());
        }
        let n = |i: usize| w[i].parse::<i64>().map_err(|_| bad());
        let u = |i: usize| w[i].parse::<u32>().map_err(|_| bad());
        out.push(Row {
            key: i32::try_from(n(0)?).map_err(|_| bad())?,
            shmid: i32::try_from(n(1)?).map_err(|_| bad())?,
            perms: u32::from_str_radix(w[2], 8).map_err(|_| bad())?,
            size: w[3].parse().map_err(|_| bad())?,
            cpid: i32::try_from(n(4)?).map_err(|_| bad())?,
            uid: u(7)?,
            gid: u(8)?,
            cuid: u(9)?,
            cgid: u(10)?,
        });
    }
    Ok(out)
}

fn rows() -> Result<Vec<Row>, String> {
    let text = std::fs::read_to_string(SHM_TABLE).map_err(|e| format!("{SHM_TABLE}: {e}"))?;
    parse_rows(&text)
}

/// Stores every segment the tree has attached: its record, then its
/// contents, read through one of its attachments.
pub(super) fn write<W: Write>(
    w: &mut ImageWriter<W>,
    procs: &[&ProcessState],
) -> Result<(), Cause> {
    let mut sources: BTreeMap<i32, (String, i32)> = BTreeMap::new();
    for p in procs {
        for v in &p.vmas {
            if let Backing::Sysv { shmid, .. } = v.backing {
                sources.entry(shmid).or_insert_with(|| {
                    (
                        format!("/proc/{}/map_files/{:x}-{:x}", p.task.pid, v.start, v.end),
                        created_key(&v.name),
                    )
                });
            }
        }
    }
    if sources.is_empty() {
        return Ok(());
    }
    let table = rows().map_err(Cause::Unsupported)?;
    for (shmid, (source, created_key)) in sources {
        let refuse = |what: String| {
            Cause::Unsupported(format!("SysV shared memory segment {shmid}: {what}"))
        };
        let row = table
            .iter()
            .find(|r| r.shmid == shmid)
            .ok_or_else(|| refuse(format!("not in {SHM_TABLE}")))?;
        let seg = SysvShm {
            shmid,
            key: row.key,
            size: row.size,
            mode: row.perms & 0o777,
            uid: row.uid,
            gid: row.gid,
            cuid: row.cuid,
            cgid: row.cgid,
            cpid: row.cpid,
            removed: row.perms & SHM_DEST != 0,
            created_key,
        };
        w.write(&seg)?;
        // The attachment opens as the segment's shmem file, which reads
        // and tells holes from data.
        let f =
            std::fs::File::open(&source).map_err(|e| refuse(format!("opening {source}: {e}")))?;
        super::write_contents(w, &f, row.size, ObjectRef::Sysv(shmid))
            .map_err(|e| refuse(format!("reading its contents: {e}")))?;
    }
    Ok(())
}

const SHMID_BUF: usize = 256;
const _: () = assert!(core::mem::size_of::<libc::shmid_ds>() <= SHMID_BUF);

/// Room for a shmid_ds of any layout.
#[repr(C, align(8))]
struct ShmidBuf([u8; SHMID_BUF]);

/// What a restore does with a segment of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Still there on this boot: used as it is.
    Reuse,
    /// Missing: created with its id and filled from the image.
    Create,
}

/// The plan for `seg` given the segments that exist now, or why the
/// restore must refuse.
fn plan(seg: &SysvShm, table: &[Row]) -> Result<Plan, String> {
    let name = format!(
        "SysV shared memory segment {} (key {:#x}, {} bytes)",
        seg.shmid, seg.key, seg.size
    );
    if let Some(r) = table.iter().find(|r| r.shmid == seg.shmid) {
        if r.key == seg.key && r.size == seg.size && r.cpid == seg.cpid {
            return Ok(Plan::Reuse);
        }
        return Err(format!(
            "{name}: id {} is now another segment (key {:#x}, {} bytes, created by pid {}); remove it (ipcrm -m {}) to restore",
            r.shmid, r.key, r.size, r.cpid, r.shmid
        ));
    }
    if seg.key != libc::IPC_PRIVATE {
        if let Some(r) = table.iter().find(|r| r.key == seg.key) {
            return Err(format!(
                "{name}: key {:#x} is now held by segment {} ({} bytes); remove it (ipcrm -m {}) to restore",
                seg.key, r.shmid, r.size, r.shmid
            ));
        }
    }
    Ok(Plan::Create)
}

/// Refuses, before anything is created, segments that cannot come back.
pub(super) fn check(st: &ImageState) -> Result<(), String> {
    if st.sysv.is_empty() {
        return Ok(());
    }
    let table = rows()?;
    let mut creates = false;
    for seg in &st.sysv {
        creates |= plan(seg, &table)? == Plan::Create;
    }
    if creates && !std::path::Path::new(SHM_NEXT_ID).exists() {
        return Err(format!("{SHM_NEXT_ID} is missing (a kernel without CONFIG_CHECKPOINT_RESTORE): SysV segments cannot get their ids back"));
    }
    Ok(())
}

/// A segment during a restore.
#[derive(Debug)]
pub(super) struct Restored {
    seg: SysvShm,
    /// Created by this restore (removed again if the restore fails).
    created: bool,
    /// torpor's own attachment, to fill it.
    at: Option<usize>,
}

fn os(what: String) -> impl FnOnce(std::io::Error) -> std::io::Error {
    move |e| std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Makes `seg` exist: the live one, or a new one with its id, mode and
/// owner.
pub(super) fn prepare(seg: &SysvShm) -> Result<Restored, std::io::Error> {
    let table = rows().map_err(std::io::Error::other)?;
    if plan(seg, &table).map_err(std::io::Error::other)? == Plan::Reuse {
        return Ok(Restored {
            seg: seg.clone(),
            created: false,
            at: None,
        });
    }
    let what = format!("recreating SysV segment {} (key {:#x})", seg.shmid, seg.key);
    std::fs::write(SHM_NEXT_ID, seg.shmid.to_string())
        .map_err(os(format!("{what}: {SHM_NEXT_ID}")))?;
    let size = usize::try_from(seg.size).map_err(|_| {
        std::io::Error::other(format!("{what}: {} bytes do not fit here", seg.size))
    })?;
    // Masked to nine bits: fits.
    let mode = i32::try_from(seg.mode & 0o777).unwrap_or(0o600);
    // A segment marked for removal is made with the key it was created
    // with, for its maps name, when no other segment holds that key; the
    // removal at the end makes its key private again.
    let key = if seg.removed
        && seg.created_key != libc::IPC_PRIVATE
        && !table.iter().any(|r| r.key == seg.created_key)
    {
        seg.created_key
    } else {
        seg.key
    };
    // SAFETY: shmget takes integers.
    let id = unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | mode) };
    if id < 0 {
        let e = super::last_os();
        // The id is no longer wanted by anyone. Unchecked: the shmget error
        // is the one to report, and every segment writes its own id first.
        let _ = std::fs::write(SHM_NEXT_ID, "-1");
        return Err(os(what)(e));
    }
    let mut r = Restored {
        seg: seg.clone(),
        created: true,
        at: None,
    };
    if id != seg.shmid {
        // Dropping `r` removes the segment with the wrong id.
        r.seg.shmid = id;
        return Err(std::io::Error::other(format!(
            "{what}: the kernel gave id {id}"
        )));
    }
    // IPC_SET reads only the owner and mode, at the start of shmid_ds in
    // every layout; the buffer is larger than any libc's struct (musl 1.2
    // on 32-bit ARM appends 64-bit times the libc crate's layout lacks).
    let mut buf = ShmidBuf([0; SHMID_BUF]);
    let ds = (&raw mut buf).cast::<libc::shmid_ds>();
    // SAFETY: `ds` points to SHMID_BUF zeroed, aligned bytes, more than a
    // shmid_ds; zero is a valid value of each field.
    // The mode is u16 in glibc's ipc_perm, mode_t (u32) in musl's.
    #[allow(clippy::useless_conversion)]
    unsafe {
        (*ds).shm_perm.uid = seg.uid;
        (*ds).shm_perm.gid = seg.gid;
        // Masked to nine bits: fits.
        (*ds).shm_perm.mode = (seg.mode & 0o777).try_into().unwrap_or(0o600);
    }
    // SAFETY: IPC_SET reads one shmid_ds from the buffer.
    if unsafe { libc::shmctl(id, libc::IPC_SET, ds) } < 0 {
        return Err(os(format!("{what}: setting its owner"))(super::last_os()));
    }
    Ok(r)
}

impl Restored {
    pub(super) fn shmid(&self) -> i32 {
        self.seg.shmid
    }

    pub(super) fn size(&self) -> u64 {
        self.seg.size
    }

    /// Writes image bytes into a segment this restore created (a live one
    /// keeps its live contents).
    pub(super) fn fill(&mut self, offset: u64, bytes: &[u8]) -> Result<(), std::io::Error> {
        if !self.created {
            return Ok(());
        }
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|e| *e <= self.seg.size);
        let (Some(_), Ok(off)) = (end, usize::try_from(offset)) else {
            return Err(std::io::Error::other(format!(
                "{} bytes at {offset} overflow SysV segment {} of {} bytes",
                bytes.len(),
                self.seg.shmid,
                self.seg.size
            )));
        };
        let base = match self.at {
            Some(a) => a,
            None => {
                // SAFETY: shmat lets the kernel choose the address.
                let p = unsafe { libc::shmat(self.seg.shmid, std::ptr::null(), 0) };
                if p as isize == -1 {
                    return Err(os(format!("attaching SysV segment {}", self.seg.shmid))(
                        super::last_os(),
                    ));
                }
                self.at = Some(p as usize);
                p as usize
            }
        };
        // SAFETY: [off, off + len) lies inside the attachment (checked
        // above); nothing else in torpor refers to it.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), (base + off) as *mut u8, bytes.len())
        };
        Ok(())
    }

    /// torpor's attachment goes.
    pub(super) fn detach(&mut self) {
        if let Some(a) = self.at.take() {
            // SAFETY: detaching torpor's own attachment, no longer used.
            unsafe { libc::shmdt(a as *const libc::c_void) };
        }
    }

    /// Marks the segment for removal when the image says so, now that
    /// every task has attached it.
    pub(super) fn finish(&mut self) -> Result<(), std::io::Error> {
        self.detach();
        self.created = false;
        if self.seg.removed {
            // SAFETY: IPC_RMID takes no buffer.
            if unsafe { libc::shmctl(self.seg.shmid, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
                return Err(os(format!(
                    "marking SysV segment {} for removal",
                    self.seg.shmid
                ))(super::last_os()));
            }
        }
        Ok(())
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        self.detach();
        if self.created {
            // SAFETY: removing the segment this failed restore created.
            unsafe { libc::shmctl(self.seg.shmid, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// In a task being rebuilt: attaches each of its segments at its address
/// with its flags, then trims and protects the attachment to the mappings
/// the task had (parts may have been unmapped or mprotected).
pub(super) fn attach(
    r: &mut Remote<'_>,
    p: &ProcessState,
    sizes: &BTreeMap<i32, u64>,
) -> Result<(), Cause> {
    let ps = crate::engine::page_size();
    let mut groups: BTreeMap<(u64, i32), Vec<&Vma>> = BTreeMap::new();
    for v in &p.vmas {
        if let Backing::Sysv { shmid, offset, .. } = v.backing {
            groups
                .entry((v.start.wrapping_sub(offset), shmid))
                .or_default()
                .push(v);
        }
    }
    for ((base, shmid), vmas) in groups {
        let size = *sizes.get(&shmid).ok_or_else(|| {
            Cause::Refused(format!(
                "SysV segment {shmid} at {base:#x} is not in the image"
            ))
        })?;
        let len = size.div_ceil(ps) * ps;
        let read_only = vmas.iter().all(|v| {
            matches!(
                v.backing,
                Backing::Sysv {
                    read_only: true,
                    ..
                }
            )
        });
        let exec = vmas.iter().any(|v| v.prot & libc::PROT_EXEC != 0);
        let mut flags = if read_only { libc::SHM_RDONLY } else { 0 };
        let mut prot = libc::PROT_READ | if read_only { 0 } else { libc::PROT_WRITE };
        if exec {
            flags |= SHM_EXEC;
            prot |= libc::PROT_EXEC;
        }
        let id =
            u64::try_from(shmid).map_err(|_| Cause::Refused(format!("SysV segment id {shmid}")))?;
        let got = r
            .syscall(
                "shmat",
                nr::SHMAT,
                [id, base, u64::from(flags.unsigned_abs()), 0, 0, 0],
            )
            .map_err(|e| {
                Cause::Refused(format!("attaching SysV segment {shmid} at {base:#x}: {e}"))
            })?;
        if got != base {
            return Err(Cause::Refused(format!(
                "SysV segment {shmid} attached at {got:#x}, not {base:#x}"
            )));
        }
        let mut at = base;
        for v in vmas {
            if v.start > at {
                r.munmap("munmap (SysV)", at, v.start - at)?;
            }
            if v.prot != prot {
                r.syscall(
                    "mprotect (SysV)",
                    nr::MPROTECT,
                    [
                        v.start,
                        v.end - v.start,
                        u64::from(v.prot.unsigned_abs()),
                        0,
                        0,
                        0,
                    ],
                )?;
            }
            at = v.end;
        }
        if at < base + len {
            r.munmap("munmap (SysV)", at, base + len - at)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
1414660096         32  1640                 12293  1398  1398      2  1000   100     0     0 1795766354          0 1795766354                  4096                     0
         0          1   600                  4096    77    78      0     0     0     0     0          0          0 1795766354                     0                     0
";

    fn seg(shmid: i32, key: i32, size: u64, cpid: i32) -> SysvShm {
        SysvShm {
            shmid,
            key,
            size,
            cpid,
            ..Default::default()
        }
    }

    #[test]
    fn keys_of_maps_names() {
        assert_eq!(created_key("/SYSV545233bc (deleted)"), 0x5452_33bc);
        assert_eq!(created_key("/SYSVffffffff (deleted)"), -1);
        assert_eq!(created_key("/SYSV00000000 (deleted)"), 0);
        assert_eq!(created_key("/SYSVnothex! (deleted)"), 0);
    }

    #[test]
    fn rows_parse() {
        let rows = parse_rows(TABLE).expect("rows");
        assert_eq!(
            rows[0],
            Row {
                key: 1_414_660_096,
                shmid: 32,
                perms: 0o1640,
                size: 12293,
                cpid: 1398,
                uid: 1000,
                gid: 100,
                cuid: 0,
                cgid: 0
            }
        );
        assert_eq!(rows[1].shmid, 1);
        assert!(parse_rows("header\n1 2 3\n").is_err());
    }

    #[test]
    fn plans() {
        let rows = parse_rows(TABLE).expect("rows");
        assert_eq!(
            plan(&seg(32, 1_414_660_096, 12293, 1398), &rows),
            Ok(Plan::Reuse)
        );
        assert_eq!(plan(&seg(33, 5, 12293, 1398), &rows), Ok(Plan::Create));
        // Same id, another creator: another segment.
        let e = plan(&seg(32, 1_414_660_096, 12293, 1400), &rows).expect_err("refused");
        assert!(e.contains("segment 32") && e.contains("ipcrm -m 32"), "{e}");
        // The key is taken by another id.
        let e = plan(&seg(40, 1_414_660_096, 12293, 1398), &rows).expect_err("refused");
        assert!(
            e.contains("key 0x54520000") && e.contains("held by segment 32"),
            "{e}"
        );
        // A private key is never taken.
        assert_eq!(plan(&seg(41, 0, 4096, 5), &rows), Ok(Plan::Create));
    }
}

//! Credentials of one thread, set last of everything a thread gets: ids,
//! groups, capabilities (bounding, inheritable, permitted, effective,
//! ambient), securebits and no_new_privs.

use crate::arch::nr;
use crate::engine::procfs;
use crate::engine::ptrace::Mem;
use crate::engine::remote::Remote;
use crate::engine::Cause;

use super::trampoline::Scratch;

const PR_SET_KEEPCAPS: u64 = 8;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `capset` of this thread, through the trampoline's data area.
fn capset(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    inh: u64,
    prm: u64,
    eff: u64,
) -> Result<(), Cause> {
    // Header {version, pid 0}, then two {effective, permitted, inheritable}
    // blocks: low and high 32 bits.
    // Masked and shifted to 32 bits: both fit.
    let lo = |v: u64| u32::try_from(v & 0xffff_ffff).unwrap_or(0);
    let hi = |v: u64| u32::try_from(v >> 32).unwrap_or(0);
    let words: [u32; 8] = [
        CAPABILITY_VERSION_3,
        0,
        lo(eff),
        lo(prm),
        lo(inh),
        hi(eff),
        hi(prm),
        hi(inh),
    ];
    let at = Scratch::at(mem, tramp).value(&words)?;
    r.syscall("capset", nr::CAPSET, [at, at + 8, 0, 0, 0, 0])?;
    Ok(())
}

/// User and group ids, groups and capabilities of one thread, from the
/// root-owned state every restored task starts with: the bounding set is
/// narrowed while still privileged, permitted capabilities are kept across
/// the uid change, then the exact sets, ambient ones and no_new_privs.
pub(super) fn restore_creds(
    r: &mut Remote<'_>,
    mem: &Mem,
    tramp: u64,
    c: &crate::image::records::Creds,
) -> Result<(), Cause> {
    let me = procfs::parse_status("/proc/self/status", &procfs::read("/proc/self/status")?)?;
    let cap_text = procfs::read("/proc/sys/kernel/cap_last_cap")?;
    let last_cap: u32 = cap_text
        .trim()
        .parse()
        .map_err(|_| procfs::ProcError::Malformed {
            path: "/proc/sys/kernel/cap_last_cap".into(),
            what: format!("{:?} is not a capability number", cap_text.trim()),
        })?;
    let (uids, gids, caps) = (c.uids(), c.gids(), c.caps());
    let ids_change = !c.groups.is_empty() || uids != [0; 4] || gids != [0; 4];
    let caps_change = caps != me.caps;
    let sb = c.securebits;
    // Permitted capabilities survive the uid change when anything is set
    // with them afterwards.
    let keep = ids_change && (caps_change || sb != 0);
    if caps_change {
        for cap in 0..=last_cap.min(63) {
            if caps[3] & (1u64 << cap) == 0 && me.caps[3] & (1u64 << cap) != 0 {
                r.prctl("prctl(PR_CAPBSET_DROP)", PR_CAPBSET_DROP, u64::from(cap), 0)?;
            }
        }
        // Inheritable first, while every permitted capability is there.
        capset(r, mem, tramp, caps[0], me.caps[1], me.caps[2])?;
    }
    if ids_change {
        if keep {
            r.prctl("prctl(PR_SET_KEEPCAPS)", PR_SET_KEEPCAPS, 1, 0)?;
        }
        let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let at = Scratch::at(mem, tramp).bytes(&groups)?;
        r.syscall(
            "setgroups",
            nr::SETGROUPS,
            [c.groups.len() as u64, at, 0, 0, 0, 0],
        )?;
        let [g0, g1, g2, _] = gids.map(u64::from);
        r.syscall("setresgid", nr::SETRESGID, [g0, g1, g2, 0, 0, 0])?;
        let [u0, u1, u2, _] = uids.map(u64::from);
        r.syscall("setresuid", nr::SETRESUID, [u0, u1, u2, 0, 0, 0])?;
        if keep {
            r.prctl("prctl(PR_SET_KEEPCAPS)", PR_SET_KEEPCAPS, 0, 0)?;
        }
    }
    let raise_ambient = |r: &mut Remote<'_>| -> Result<(), Cause> {
        for cap in 0..=last_cap.min(63) {
            if caps[4] & (1u64 << cap) != 0 {
                r.prctl(
                    "prctl(PR_CAP_AMBIENT_RAISE)",
                    PR_CAP_AMBIENT,
                    PR_CAP_AMBIENT_RAISE,
                    u64::from(cap),
                )?;
            }
        }
        Ok(())
    };
    if sb != 0 {
        // Securebits need CAP_SETPCAP in the effective set, which a uid
        // change cleared; ambient capabilities are raised before them,
        // since SECBIT_NO_CAP_AMBIENT_RAISE forbids it after.
        let inh = if caps_change { caps[0] } else { me.caps[0] };
        capset(r, mem, tramp, inh, me.caps[1], me.caps[1])?;
        if caps_change {
            raise_ambient(r)?;
        }
        super::attrs::set_securebits(r, sb)?;
    }
    if caps_change {
        capset(r, mem, tramp, caps[0], caps[1], caps[2])?;
        if sb == 0 {
            raise_ambient(r)?;
        }
    }
    if c.no_new_privs && !me.no_new_privs {
        r.prctl("prctl(PR_SET_NO_NEW_PRIVS)", PR_SET_NO_NEW_PRIVS, 1, 0)?;
    }
    Ok(())
}

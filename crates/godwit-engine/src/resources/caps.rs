//! Capabilities of each thread: the inheritable, permitted, effective,
//! bounding and ambient sets, securebits and no_new_privs. Read from
//! /proc/PID/task/TID/status (securebits by injected prctl); restored inside
//! each thread together with its credentials (see
//! [`crate::resources::attrs::restore_creds`]), because changing uids
//! changes capabilities:
//!
//! 1. bounding set: PR_CAPBSET_DROP of every capability not in it (needs
//!    CAP_SETPCAP, which the new thread still has as root);
//! 2. groups, gids; securebits = SECBIT_KEEP_CAPS, so that the permitted set
//!    survives a change to non-root uids; uids (the effective set and the
//!    ambient set are cleared by it);
//! 3. capset(inheritable, permitted as it is, effective = permitted), to
//!    hold CAP_SETPCAP again; the ambient set raised capability by
//!    capability; the saved securebits; capset of the saved three sets;
//! 4. no_new_privs, which cannot be undone, last.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{Caps, Creds, Process};
use godwit_sys::proc;

const PR_CAPBSET_DROP: u64 = 24;
const PR_GET_SECUREBITS: u64 = 27;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
pub const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Reads the credentials and capabilities of thread `rt.tid` (its
/// securebits by injected prctl). Uses no scratch.
pub fn dump(rt: &Remote) -> Result<(Creds, Caps)> {
    let (pid, tid) = (rt.pid, rt.tid);
    let st = proc::task_status(pid, tid).dumping(pid, "reading capabilities")?;
    let creds = Creds {
        uids: st.uids.to_vec(),
        gids: st.gids.to_vec(),
        groups: st.groups.clone(),
    };
    let securebits = rt
        .call(
            "prctl(PR_GET_SECUREBITS)",
            libc::SYS_prctl,
            [PR_GET_SECUREBITS, 0, 0, 0, 0, 0],
        )
        .dumping(pid, "reading securebits")? as u32;
    Ok((
        creds,
        Caps {
            inheritable: st.cap_inh,
            permitted: st.cap_prm,
            effective: st.cap_eff,
            bounding: st.cap_bnd,
            ambient: st.cap_amb,
            securebits,
            no_new_privs: st.no_new_privs,
        },
    ))
}

fn cap_list(bits: u64) -> String {
    (0..64)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a restore whose threads hold capabilities godwit does not have
/// (it could not give them) or lack no_new_privs that godwit has (it cannot
/// be cleared).
pub fn check(p: &Process) -> Result<()> {
    let me = proc::status(std::process::id() as i32)
        .restoring(p.pid, "reading godwit's own capabilities")?;
    for t in &p.threads {
        let Some(c) = &t.caps else { continue };
        let missing = (c.bounding & !me.cap_bnd) | (c.permitted & !me.cap_prm);
        if missing != 0 {
            return Err(EngineError::Refused {
                pid: p.pid,
                what: format!(
                    "thread {} holds capabilities godwit itself lacks (numbers {}; see capabilities(7)), which it could not give back; restore as a user holding them",
                    t.tid,
                    cap_list(missing)
                ),
            });
        }
        if me.no_new_privs && !c.no_new_privs {
            return Err(EngineError::Refused {
                pid: p.pid,
                what: format!(
                    "thread {} did not have no_new_privs, which godwit runs with and cannot clear",
                    t.tid
                ),
            });
        }
    }
    Ok(())
}

/// Step 1: drops from the bounding set of thread `rt.tid` every capability
/// not in `c.bounding`.
pub fn drop_bounding(rt: &Remote, c: &Caps) -> Result<()> {
    let pid = rt.pid;
    let now = proc::task_status(pid, rt.tid).restoring(pid, "reading capabilities")?;
    for cap in (0..64u64).filter(|b| now.cap_bnd & !c.bounding & (1 << b) != 0) {
        rt.call(
            "prctl(PR_CAPBSET_DROP)",
            libc::SYS_prctl,
            [PR_CAPBSET_DROP, cap, 0, 0, 0, 0],
        )
        .restoring(pid, "dropping from the capability bounding set")?;
    }
    Ok(())
}

/// Before the uids change: keep the permitted set across it.
pub fn keep_across_setuid(rt: &Remote) -> Result<()> {
    rt.call(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        [PR_SET_SECUREBITS, SECBIT_KEEP_CAPS, 0, 0, 0, 0],
    )
    .restoring(rt.pid, "keeping capabilities while setting uids")?;
    Ok(())
}

fn capset(rt: &Remote, inh: u64, prm: u64, eff: u64) -> Result<()> {
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0, 32] {
        for set in [eff, prm, inh] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    let a = rt.put(0, &b).restoring(rt.pid, "setting capabilities")?;
    rt.call("capset", libc::SYS_capset, [a, a + 8, 0, 0, 0, 0])
        .restoring(rt.pid, "setting capabilities (capset)")?;
    Ok(())
}

/// Step 3, after the uids: the three sets, the ambient set and securebits.
/// Uses scratch bytes [0, 32).
pub fn restore_sets(rt: &Remote, c: &Caps) -> Result<()> {
    let pid = rt.pid;
    let now = proc::task_status(pid, rt.tid).restoring(pid, "reading capabilities")?;
    if c.permitted & !now.cap_prm != 0 {
        return Err(EngineError::Refused {
            pid,
            what: format!(
                "thread {} lost permitted capabilities ({}) while its uids were set",
                rt.tid,
                cap_list(c.permitted & !now.cap_prm)
            ),
        });
    }
    capset(rt, c.inheritable, now.cap_prm, now.cap_prm)?;
    rt.call(
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        libc::SYS_prctl,
        [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0],
    )
    .restoring(pid, "setting ambient capabilities")?;
    for cap in (0..64u64).filter(|b| c.ambient & (1 << b) != 0) {
        rt.call(
            "prctl(PR_CAP_AMBIENT_RAISE)",
            libc::SYS_prctl,
            [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
        )
        .restoring(pid, "setting ambient capabilities")?;
    }
    rt.call(
        "prctl(PR_SET_SECUREBITS)",
        libc::SYS_prctl,
        [PR_SET_SECUREBITS, c.securebits as u64, 0, 0, 0, 0],
    )
    .restoring(pid, "setting securebits")?;
    capset(rt, c.inheritable, c.permitted, c.effective)
}

/// Step 4: no_new_privs, if the thread had it.
pub fn restore_no_new_privs(rt: &Remote, c: &Caps) -> Result<()> {
    if c.no_new_privs {
        rt.call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
        )
        .restoring(rt.pid, "setting no_new_privs")?;
    }
    Ok(())
}

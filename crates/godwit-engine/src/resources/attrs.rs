//! Process attributes: credentials, limits, name, personality, umask,
//! executable, session and group, and the memory layout the kernel keeps in
//! mm_struct (code/data/brk/stack/args/env bounds and the auxiliary vector).

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{Creds, MmLayout, Process, Rlimit};
use godwit_sys::{proc, process};

const RLIMIT_COUNT: u32 = 16;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// Fills the attribute fields of `p` for a frozen process. Uses injection for brk.
pub fn dump(r: &Remote, p: &mut Process) -> Result<()> {
    let pid = r.pid;
    let stage = "reading process attributes";
    let st = proc::stat(pid).dumping(pid, stage)?;
    let status = proc::status(pid).dumping(pid, stage)?;
    p.pid = pid;
    p.ppid = st.ppid;
    p.pgid = st.pgrp;
    p.sid = st.session;
    p.ctty_dev = match st.tty_nr {
        0 => 0,
        n => godwit_sys::tty::decode_kernel_dev(n),
    };
    p.comm = st.comm.clone();
    p.exe = proc::link(&format!("/proc/{pid}/exe"))
        .dumping(pid, stage)?
        .to_string_lossy()
        .into_owned();
    if p.exe.ends_with(" (deleted)") {
        return Err(EngineError::Unsupported {
            pid,
            what: format!("a deleted executable ({})", p.exe),
        });
    }
    // A seccomp filter cannot be read back and installed again yet; a restored
    // process without it would have lost a security boundary: refuse.
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Some(mode) = status_text.lines().find_map(|l| l.strip_prefix("Seccomp:")) {
        if mode.trim() != "0" {
            return Err(EngineError::Unsupported {
                pid,
                what: format!("a seccomp filter or strict mode (Seccomp: {}), which restore could not put back", mode.trim()),
            });
        }
    }
    p.umask = status.umask;
    p.personality = proc::personality(pid).dumping(pid, stage)?;
    p.creds = Some(Creds {
        uids: status.uids.to_vec(),
        gids: status.gids.to_vec(),
        groups: status.groups.clone(),
    });
    p.rlimits = proc::limits(pid)
        .dumping(pid, "reading resource limits")?
        .into_iter()
        .take(RLIMIT_COUNT as usize)
        .enumerate()
        .map(|(res, (soft, hard))| Rlimit {
            resource: res as u32,
            soft,
            hard,
        })
        .collect();
    let brk = r
        .call("brk", libc::SYS_brk, [0, 0, 0, 0, 0, 0])
        .dumping(pid, "reading the program break")?;
    p.mm = Some(MmLayout {
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
        auxv: proc::auxv(pid).dumping(pid, "reading the auxiliary vector")?,
    });
    Ok(())
}

/// Refuses a restore whose executable is gone.
pub fn check(p: &Process) -> Result<()> {
    std::fs::metadata(&p.exe).map_err(|e| EngineError::FileChanged {
        path: p.exe.clone(),
        detail: format!("the executable cannot be opened ({e})"),
    })?;
    Ok(())
}

/// Sets the mm_struct layout and the executable link (PR_SET_MM_MAP), after
/// the memory is in place. Uses scratch bytes [0, 4096 + auxv).
pub fn restore_mm(r: &Remote, p: &Process) -> Result<()> {
    let pid = r.pid;
    let mm =
        p.mm.as_ref()
            .ok_or_else(|| EngineError::BadImage("no memory layout".into()))?;
    let path = r
        .put_cstr(0, &p.exe)
        .restoring(pid, "opening the executable")?;
    let exe_fd = r
        .call(
            "openat",
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                path,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )
        .restoring(pid, "opening the executable")?;
    let mut auxv = Vec::with_capacity(mm.auxv.len() * 8);
    for w in &mm.auxv {
        auxv.extend_from_slice(&w.to_le_bytes());
    }
    let auxv_addr = r
        .put(4096, &auxv)
        .restoring(pid, "setting the memory layout")?;
    let mut map = Vec::with_capacity(104);
    for w in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ] {
        map.extend_from_slice(&w.to_le_bytes());
    }
    map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
    map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
    let a = r
        .put(1024, &map)
        .restoring(pid, "setting the memory layout")?;
    r.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, a, map.len() as u64, 0, 0],
    )
    .restoring(pid, "setting the memory layout (PR_SET_MM_MAP)")?;
    r.call("close", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])
        .restoring(pid, "closing the executable")?;
    Ok(())
}

/// umask, personality and resource limits.
pub fn restore_misc(r: &Remote, p: &Process) -> Result<()> {
    let pid = r.pid;
    r.call("umask", libc::SYS_umask, [p.umask as u64, 0, 0, 0, 0, 0])
        .restoring(pid, "setting the umask")?;
    r.call(
        "personality",
        libc::SYS_personality,
        [p.personality as u64, 0, 0, 0, 0, 0],
    )
    .restoring(pid, "setting the personality")?;
    for l in &p.rlimits {
        if let Err(e) = process::set_rlimit(pid, l.resource, l.soft, l.hard) {
            // Without CAP_SYS_RESOURCE a hard limit above ours cannot be set:
            // keep ours and say so.
            let (_, our_hard) =
                process::get_rlimit(pid, l.resource).restoring(pid, "setting resource limits")?;
            let soft = l.soft.min(our_hard);
            tracing::warn!(
                pid,
                resource = l.resource,
                "hard limit {} could not be restored ({e}); keeping {our_hard}",
                l.hard
            );
            process::set_rlimit(pid, l.resource, soft, our_hard)
                .restoring(pid, "setting resource limits")?;
        }
    }
    Ok(())
}

/// Makes the process a session leader if it was one (before it forks the
/// children that share its session).
pub fn restore_session(r: &Remote, p: &Process) -> Result<()> {
    if p.sid == p.pid {
        r.call("setsid", libc::SYS_setsid, [0; 6])
            .restoring(r.pid, "creating the session")?;
    }
    Ok(())
}

/// Puts the process in its process group (`leader`: it leads its own group).
pub fn restore_pgid(r: &Remote, p: &Process) -> Result<()> {
    if p.sid == p.pid {
        return Ok(()); // setsid made it the leader of its own group
    }
    r.call("setpgid", libc::SYS_setpgid, [0, p.pgid as u64, 0, 0, 0, 0])
        .restoring(r.pid, "joining the process group")?;
    Ok(())
}

/// Drops to the saved credentials in one thread (credentials are per thread).
pub fn restore_creds(rt: &Remote, p: &Process) -> Result<()> {
    let pid = rt.pid;
    let Some(c) = &p.creds else { return Ok(()) };
    if c.uids.len() != 4 || c.gids.len() != 4 {
        return Err(EngineError::BadImage(
            "credentials need 4 uids and 4 gids".into(),
        ));
    }
    let stage = "setting credentials";
    let mut groups = Vec::with_capacity(c.groups.len() * 4);
    for g in &c.groups {
        groups.extend_from_slice(&g.to_le_bytes());
    }
    let a = rt.put(0, &groups).restoring(pid, stage)?;
    rt.call(
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, a, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    rt.call(
        "setresgid",
        libc::SYS_setresgid,
        [
            c.gids[0] as u64,
            c.gids[1] as u64,
            c.gids[2] as u64,
            0,
            0,
            0,
        ],
    )
    .restoring(pid, stage)?;
    rt.call(
        "setfsgid",
        libc::SYS_setfsgid,
        [c.gids[3] as u64, 0, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    rt.call(
        "setfsuid",
        libc::SYS_setfsuid,
        [c.uids[3] as u64, 0, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    rt.call(
        "setresuid",
        libc::SYS_setresuid,
        [
            c.uids[0] as u64,
            c.uids[1] as u64,
            c.uids[2] as u64,
            0,
            0,
            0,
        ],
    )
    .restoring(pid, stage)?;
    Ok(())
}

//! Process attributes: credentials, limits, name, personality, umask,
//! executable, session and group, and the memory layout the kernel keeps in
//! mm_struct (code/data/brk/stack/args/env bounds and the auxiliary vector).

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::caps;
use crate::schema::{Creds, MmLayout, ProcAttrs, Process, Rlimit, Thread};
use godwit_sys::{proc, process};

const RLIMIT_COUNT: u32 = 16;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;
const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_SET_MDWE: u64 = 65;
const PR_GET_MDWE: u64 = 66;
/// membarrier(2) commands: each PRIVATE_EXPEDITED flavour fails with EPERM
/// in a process not registered for it; its registration is the next bit.
const MEMBARRIER_PRIVATE: [(u64, &str); 3] = [
    (1 << 3, "PRIVATE_EXPEDITED"),
    (1 << 5, "PRIVATE_EXPEDITED_SYNC_CORE"),
    (1 << 7, "PRIVATE_EXPEDITED_RSEQ"),
];
/// An unset loginuid.
const NO_LOGINUID: u32 = u32::MAX;

/// Fills the attribute fields of `p` for a frozen process. Uses injection for brk.
pub fn dump(r: &Remote, p: &mut Process) -> Result<()> {
    let pid = r.pid;
    let stage = "reading process attributes";
    // The memory layout from a live thread's stat (an exited main thread's
    // shows none), the rest from the main thread's.
    let st = proc::stat(pid).dumping(pid, stage)?;
    let main = proc::leader_stat(pid).dumping(pid, stage)?;
    let status = proc::status(pid).dumping(pid, stage)?;
    p.pid = pid;
    p.ppid = main.ppid;
    p.exit_signal = Some(main.exit_signal);
    p.pgid = main.pgrp;
    p.sid = main.session;
    p.ctty_dev = match main.tty_nr {
        0 => 0,
        n => godwit_sys::tty::decode_kernel_dev(n),
    };
    p.comm = main.comm.clone();
    p.exe = proc::link(&format!("{}/exe", godwit_sys::proc::dir(pid)))
        .dumping(pid, stage)?
        .to_string_lossy()
        .into_owned();
    if p.exe.ends_with(" (deleted)") {
        return Err(EngineError::Unsupported {
            pid,
            what: format!("a deleted executable ({})", p.exe),
        });
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
    p.attrs = Some(dump_proc_attrs(r)?);
    Ok(())
}

/// oom_score_adj, loginuid, child subreaper, THP disable, dumpable and the
/// membarrier registrations of a frozen process. Uses scratch bytes [0, 8).
fn dump_proc_attrs(r: &Remote) -> Result<ProcAttrs> {
    let pid = r.pid;
    let stage = "reading process attributes";
    let oom_score_adj =
        proc::read_int(&format!("/proc/{pid}/oom_score_adj")).dumping(pid, stage)? as i32;
    // loginuid is per thread (CONFIG_AUDIT): one value for all is kept.
    let loginuid = match proc::read_int(&format!("/proc/{pid}/loginuid")) {
        Ok(v) => v as u32,
        Err(_) if !std::path::Path::new(&format!("/proc/{pid}/loginuid")).exists() => NO_LOGINUID,
        Err(e) => return Err(e).dumping(pid, stage),
    };
    for tid in proc::tasks(pid).dumping(pid, stage)? {
        let theirs = proc::read_int(&format!("/proc/{pid}/task/{tid}/loginuid"))
            .map_or(loginuid, |v| v as u32);
        if theirs != loginuid {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "threads with different audit login uids (thread {tid}: {theirs}, the process: {loginuid})"
                ),
            });
        }
    }
    let prctl = |name: &'static str, op: u64, arg: u64| {
        r.call(name, libc::SYS_prctl, [op, arg, 0, 0, 0, 0])
            .dumping(pid, stage)
    };
    prctl(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        PR_GET_CHILD_SUBREAPER,
        r.scratch,
    )?;
    let subreaper = r.get(0, 4).dumping(pid, stage)?;
    let thp_disable = prctl("prctl(PR_GET_THP_DISABLE)", PR_GET_THP_DISABLE, 0)? as u32;
    let dumpable = prctl("prctl(PR_GET_DUMPABLE)", PR_GET_DUMPABLE, 0)? as u32;
    // EINVAL: a kernel before 6.3, without memory-deny-write-execute.
    let mdwe = r
        .inj()
        .run(libc::SYS_prctl, [PR_GET_MDWE, 0, 0, 0, 0, 0])
        .dumping(pid, stage)?
        .ret
        .max(0) as u32;
    // A private expedited membarrier in a frozen process interrupts none
    // of its threads (none runs); it fails with EPERM unless registered.
    let mut membarrier = 0;
    for (cmd, what) in MEMBARRIER_PRIVATE {
        let out = r
            .inj()
            .run(libc::SYS_membarrier, [cmd, 0, 0, 0, 0, 0])
            .dumping(pid, "probing membarrier registrations")?;
        match -out.ret as i32 {
            0 => membarrier |= (cmd << 1) as u32,
            libc::EPERM | libc::EINVAL => {}
            e => {
                tracing::warn!(
                    pid,
                    "membarrier {what} probe: {}",
                    std::io::Error::from_raw_os_error(e)
                );
            }
        }
    }
    // "/autogroup-N nice V" (CONFIG_SCHED_AUTOGROUP).
    let autogroup_nice = std::fs::read_to_string(format!("/proc/{pid}/autogroup"))
        .ok()
        .and_then(|t| t.split_whitespace().last().and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    Ok(ProcAttrs {
        autogroup_nice,
        oom_score_adj,
        loginuid,
        child_subreaper: subreaper != [0; 4],
        thp_disable,
        dumpable,
        membarrier,
        mdwe,
    })
}

/// Sets oom_score_adj (from outside), loginuid, child subreaper, THP disable
/// and membarrier registrations, before the threads are created (they
/// inherit loginuid) and while the process is still root. Uses scratch bytes
/// [0, 64).
pub fn restore_proc_attrs(r: &Remote, p: &Process) -> Result<()> {
    let Some(a) = &p.attrs else { return Ok(()) };
    let pid = r.pid;
    let path = format!("/proc/{pid}/oom_score_adj");
    let now = proc::read_int(&path).restoring(pid, "reading oom_score_adj")? as i32;
    if now != a.oom_score_adj {
        std::fs::write(&path, a.oom_score_adj.to_string()).map_err(|e| EngineError::Refused {
            pid: p.pid,
            what: format!(
                "its oom_score_adj {} could not be set ({e}); lowering it below {now} needs CAP_SYS_RESOURCE",
                a.oom_score_adj
            ),
        })?;
    }
    let lpath = format!("/proc/{pid}/loginuid");
    let login_now = proc::read_int(&lpath).map_or(NO_LOGINUID, |v| v as u32);
    if login_now != a.loginuid {
        set_loginuid(r, a.loginuid).map_err(|e| EngineError::Refused {
            pid: p.pid,
            what: format!(
                "its audit login uid {} could not be set ({e}); godwit's is {login_now} (see audit_set_loginuid: it needs CAP_AUDIT_CONTROL and a mutable loginuid)",
                a.loginuid
            ),
        })?;
    }
    // A session's autogroup is the session leader's: set only where the
    // restored process leads its own session (not a --shell-job root, which
    // joined godwit's).
    let leads = proc::stat(pid).is_ok_and(|st| st.session == pid);
    if leads && a.autogroup_nice != 0 {
        std::fs::write(
            format!("/proc/{pid}/autogroup"),
            a.autogroup_nice.to_string(),
        )
        .map_err(|e| EngineError::Refused {
            pid: p.pid,
            what: format!(
                "the nice value {} of its session's autogroup could not be set ({e})",
                a.autogroup_nice
            ),
        })?;
    }
    let stage = "setting process attributes";
    if a.child_subreaper {
        r.call(
            "prctl(PR_SET_CHILD_SUBREAPER)",
            libc::SYS_prctl,
            [PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0, 0],
        )
        .restoring(pid, stage)?;
    }
    let thp_now = r
        .call(
            "prctl(PR_GET_THP_DISABLE)",
            libc::SYS_prctl,
            [PR_GET_THP_DISABLE, 0, 0, 0, 0, 0],
        )
        .restoring(pid, stage)? as u32;
    if thp_now != a.thp_disable {
        let (on, flags) = ((a.thp_disable != 0) as u64, (a.thp_disable & !1) as u64);
        r.call(
            "prctl(PR_SET_THP_DISABLE)",
            libc::SYS_prctl,
            [PR_SET_THP_DISABLE, on, flags, 0, 0, 0],
        )
        .restoring(pid, "setting THP disable")?;
    }
    for (cmd, _) in MEMBARRIER_PRIVATE {
        if a.membarrier as u64 & (cmd << 1) != 0 {
            r.call(
                "membarrier(REGISTER)",
                libc::SYS_membarrier,
                [cmd << 1, 0, 0, 0, 0, 0],
            )
            .restoring(pid, "registering for membarrier")?;
        }
    }
    Ok(())
}

/// Writes /proc/self/loginuid inside the process (the kernel lets only the
/// task itself write it).
fn set_loginuid(r: &Remote, uid: u32) -> godwit_sys::Result<()> {
    let path = r.put_cstr(0, "/proc/self/loginuid")?;
    let text = uid.to_string();
    let buf = r.put(32, text.as_bytes())?;
    let fd = r.call(
        "openat(/proc/self/loginuid)",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            path,
            (libc::O_WRONLY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    let w = r.call(
        "write(loginuid)",
        libc::SYS_write,
        [fd, buf, text.len() as u64, 0, 0, 0],
    );
    r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    w.map(drop)
}

/// Sets the dumpable flag, after every thread's credentials (changing them
/// resets it to fs.suid_dumpable), and memory-deny-write-execute, which no
/// later mmap of the restore needs to pass.
pub fn restore_dumpable(r: &Remote, p: &Process) -> Result<()> {
    let Some(a) = &p.attrs else { return Ok(()) };
    let pid = r.pid;
    if a.mdwe != 0 {
        r.call(
            "prctl(PR_SET_MDWE)",
            libc::SYS_prctl,
            [PR_SET_MDWE, a.mdwe as u64, 0, 0, 0, 0],
        )
        .restoring(pid, "setting memory-deny-write-execute")?;
    }
    let stage = "setting the dumpable flag";
    if a.dumpable <= 1 {
        r.call(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [PR_SET_DUMPABLE, a.dumpable as u64, 0, 0, 0, 0],
        )
        .restoring(pid, stage)?;
    }
    let now = r
        .call(
            "prctl(PR_GET_DUMPABLE)",
            libc::SYS_prctl,
            [PR_GET_DUMPABLE, 0, 0, 0, 0, 0],
        )
        .restoring(pid, stage)? as u32;
    if now != a.dumpable {
        return Err(EngineError::Refused {
            pid: p.pid,
            what: format!(
                "its dumpable flag {} could not be set (it is {now}; 2 comes only from fs.suid_dumpable)",
                a.dumpable
            ),
        });
    }
    Ok(())
}

/// Refuses a restore whose executable is gone.
pub fn check(p: &Process) -> Result<()> {
    // --allow-file-changes cannot help here: the file must be there.
    std::fs::metadata(&p.exe).map_err(|e| EngineError::FileMissing {
        path: p.exe.clone(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the executable of process {} is gone; it must exist at the same path \
                 (put it back there, e.g. from a backup) before the image can be restored",
                p.pid
            )
        } else {
            format!("the executable of process {} cannot be read ({e})", p.pid)
        },
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

/// umask, personality, resource limits and the process-wide attributes
/// ([`restore_proc_attrs`]).
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
    restore_proc_attrs(r, p)
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

/// Refuses a process that is in a session it could not be put back in:
/// the restore creates each process in its parent's session, or in a new
/// one it leads (setsid). A process is in another session only when it was
/// re-parented (its parent, in that session, exited), e.g. to a subreaper
/// of the tree, while its session's leader is a zombie of the tree.
pub fn check_sessions(procs: &[Process]) -> Result<()> {
    for p in procs.iter().skip(1) {
        let Some(parent) = procs.iter().find(|q| q.pid == p.ppid) else {
            // Another root (`--pid A --pid B`): it is made by the first
            // root, in its session, or leads a new one.
            let first = &procs[0];
            if p.sid != p.pid && p.sid != first.sid {
                return Err(EngineError::Unsupported {
                    pid: p.pid,
                    what: format!(
                        "a process in session {} dumped with process {} of session {}: \
                         processes given together are put back in one session (the first's) \
                         unless they lead their own; dump them separately",
                        p.sid, first.pid, first.sid
                    ),
                });
            }
            continue;
        };
        if p.sid != p.pid && p.sid != parent.sid {
            return Err(EngineError::Unsupported {
                pid: p.pid,
                what: format!(
                    "a process in session {} while its parent {} is in session {}: \
                     it could not be put back in that session (a process joins its \
                     parent's session or leads a new one; it was re-parented after \
                     the process that made it in session {} exited)",
                    p.sid, parent.pid, parent.sid, p.sid
                ),
            });
        }
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

/// Drops to the saved credentials and capabilities in one thread (both are
/// per thread; see crate::resources::caps for the order), then sets what a
/// change of credentials resets: the parent-death signal, no_new_privs last.
pub fn restore_creds(rt: &Remote, p: &Process, t: &Thread) -> Result<()> {
    let pid = rt.pid;
    let Some(c) = t.creds.as_ref().or(p.creds.as_ref()) else {
        return Ok(());
    };
    if let Some(k) = &t.caps {
        caps::drop_bounding(rt, k)?;
    }
    restore_ids(rt, c, t.caps.is_some())?;
    if let Some(k) = &t.caps {
        caps::restore_sets(rt, k)?;
    }
    if let Some(a) = t.attrs.as_ref().filter(|a| a.pdeathsig != 0) {
        rt.call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [PR_SET_PDEATHSIG, a.pdeathsig as u64, 0, 0, 0, 0],
        )
        .restoring(pid, "setting the parent-death signal")?;
    }
    if let Some(k) = &t.caps {
        caps::restore_no_new_privs(rt, k)?;
    }
    Ok(())
}

/// Groups, gids and uids; with `keep_caps`, the permitted capabilities
/// survive the change of uids.
fn restore_ids(rt: &Remote, c: &Creds, keep_caps: bool) -> Result<()> {
    let pid = rt.pid;
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
    if keep_caps {
        caps::keep_across_setuid(rt)?;
    }
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

#[cfg(test)]
mod session_tests {
    use super::*;

    fn proc(pid: i32, ppid: i32, sid: i32, zombie: bool) -> Process {
        Process {
            pid,
            ppid,
            sid,
            pgid: sid,
            zombie,
            ..Default::default()
        }
    }

    #[test]
    fn sessions_that_can_be_rejoined_pass() {
        // Root leads 10; a child in it, a child leading its own, a zombie
        // that led its own, a grandchild in its parent's session.
        let procs = [
            proc(10, 1, 10, false),
            proc(11, 10, 10, false),
            proc(12, 10, 12, false),
            proc(13, 10, 13, true),
            proc(14, 12, 12, false),
        ];
        check_sessions(&procs).unwrap();
    }

    #[test]
    fn a_member_of_a_zombie_led_session_is_refused() {
        // 13 led a session and exited; its member 15 was re-parented to 10.
        let procs = [
            proc(10, 1, 10, false),
            proc(13, 10, 13, true),
            proc(15, 10, 13, false),
        ];
        let e = check_sessions(&procs).unwrap_err().to_string();
        assert!(e.contains("process 15") && e.contains("session 13"), "{e}");
    }
}

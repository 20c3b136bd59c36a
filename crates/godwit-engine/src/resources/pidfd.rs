//! pidfds (pidfd_open, clone(CLONE_PIDFD)).
//!
//! The dump side reads what a pidfd refers to from /proc/PID/fdinfo/FD
//! ("Pid:", -1 once the process has exited and been reaped) and its flags
//! (O_NONBLOCK, PIDFD_THREAD shown as O_EXCL, close-on-exec). A pidfd of a
//! process or thread outside the dumped tree is refused, naming the fd and
//! the target: the restore could not make it refer to that process.
//!
//! The restore side runs once every process, thread and zombie of the tree
//! exists: each process opens its pidfds itself (an injected pidfd_open of
//! the PID or TID, which the restore keeps, with the saved flags), and puts
//! them at their numbers; descriptors of one description in one process
//! (dup) share one again. A pidfd of a process that had exited and been
//! reaped is made the same way the original became one: the holder makes
//! a helper child that exits at once, opens its pidfd and reaps it (all by
//! injected calls, in the holder's PID namespace). Like the original, it is
//! readable (poll: the process exited), pidfd_send_signal fails with ESRCH
//! and waitid(P_PIDFD) with ECHILD.
//!
//! Not kept: a pidfd description shared by several processes (inherited
//! across fork) becomes one description per process (a pidfd's only state
//! is its O_NONBLOCK flag, which each keeps as it was).

use crate::error::{EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{Fd, FdKind, Process};
use std::collections::{HashMap, HashSet};

/// pidfd_open flags (linux/pidfd.h): PIDFD_NONBLOCK is O_NONBLOCK,
/// PIDFD_THREAD is O_EXCL.
const PIDFD_NONBLOCK: u32 = libc::O_NONBLOCK as u32;
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;
const STAGE: &str = "restoring pidfds";

/// Whether `target` (a /proc/PID/fd link) is a pidfd.
pub fn is_pidfd(target: &str) -> bool {
    target == "anon_inode:[pidfd]" || target.starts_with("pidfd:")
}

/// Fills `e` for pidfd `fd` of `pid`, referring to `target_pid` (fdinfo's
/// "Pid:").
pub fn dump(pid: i32, fd: i32, target_pid: Option<i32>, e: &mut Fd) -> Result<()> {
    let Some(target) = target_pid else {
        return Err(EngineError::Unsupported {
            pid,
            what: format!("fd {fd} (a pidfd whose fdinfo shows no Pid: line)"),
        });
    };
    e.kind = FdKind::Pidfd as i32;
    e.pidfd_pid = target;
    Ok(())
}

fn flags_of(f: &Fd) -> u32 {
    f.flags & (PIDFD_NONBLOCK | PIDFD_THREAD)
}

/// Refuses pidfds of processes or threads outside the tree (after the
/// whole tree is collected).
pub fn check_tree(procs: &[Process]) -> Result<()> {
    let pids: HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    let tids: HashSet<i32> = procs
        .iter()
        .flat_map(|p| p.threads.iter().map(|t| t.tid))
        .collect();
    for p in procs.iter().filter(|p| !p.zombie) {
        for f in p.fds.iter().filter(|f| f.kind == FdKind::Pidfd as i32) {
            let t = f.pidfd_pid;
            let thread = flags_of(f) & PIDFD_THREAD != 0;
            if t == -1 || pids.contains(&t) || (thread && tids.contains(&t)) {
                continue;
            }
            return Err(EngineError::Unsupported {
                pid: p.pid,
                what: format!(
                    "fd {} (a pidfd of {} {t}, which is outside the dumped process tree: \
                     the restored fd could not refer to it; dump a tree that holds it, \
                     or close the fd)",
                    f.fd,
                    if thread { "thread" } else { "process" }
                ),
            });
        }
    }
    Ok(())
}

/// Opens, in each process, its pidfds and puts them at their numbers.
/// Every process, thread and zombie of the tree must exist.
pub fn restore(procs: &[Process], remotes: &[Option<Remote>]) -> Result<()> {
    for (p, r) in procs.iter().zip(remotes) {
        let Some(r) = r else { continue };
        let mut first: HashMap<u64, u64> = HashMap::new();
        for f in p.fds.iter().filter(|f| f.kind == FdKind::Pidfd as i32) {
            let fd = f.fd as u64;
            let cloexec = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            if let Some(&at) = first.get(&f.file_id) {
                r.call("dup3", libc::SYS_dup3, [at, fd, cloexec, 0, 0, 0])
                    .restoring(r.pid, STAGE)?;
                continue;
            }
            let new = open(r, p, f)?;
            if new != fd {
                r.call("dup3", libc::SYS_dup3, [new, fd, cloexec, 0, 0, 0])
                    .restoring(r.pid, STAGE)?;
                r.call("close", libc::SYS_close, [new, 0, 0, 0, 0, 0])
                    .restoring(r.pid, STAGE)?;
            } else {
                r.call(
                    "fcntl(F_SETFD)",
                    libc::SYS_fcntl,
                    [
                        fd,
                        libc::F_SETFD as u64,
                        if f.cloexec {
                            libc::FD_CLOEXEC as u64
                        } else {
                            0
                        },
                        0,
                        0,
                        0,
                    ],
                )
                .restoring(r.pid, STAGE)?;
            }
            first.insert(f.file_id, fd);
        }
    }
    Ok(())
}

/// A new pidfd in the process behind `r` for `f`; returns its number.
fn open(r: &Remote, p: &Process, f: &Fd) -> Result<u64> {
    let flags = flags_of(f);
    if f.pidfd_pid == -1 {
        return exited(r, flags);
    }
    r.call(
        "pidfd_open",
        libc::SYS_pidfd_open,
        [f.pidfd_pid as u64, flags as u64, 0, 0, 0, 0],
    )
    .map_err(|e| EngineError::Refused {
        pid: p.pid,
        what: format!(
            "fd {} was a pidfd of {} {}, which could not be opened again ({e})",
            f.fd,
            if flags & PIDFD_THREAD != 0 {
                "thread"
            } else {
                "process"
            },
            f.pidfd_pid
        ),
    })
}

/// A pidfd, in the process behind `r`, of a process that has exited and
/// been reaped. The process makes a helper child (clone3 with CLONE_VM, so
/// nothing is copied, and no exit signal, so it gets no SIGCHLD) that exits
/// at once; it opens the zombie's pidfd and reaps it (waitid). All of it in
/// the process's own PID namespace, which a pidfd must belong to for
/// pidfd_send_signal to report ESRCH rather than EINVAL.
fn exited(r: &Remote, flags: u32) -> Result<u64> {
    const CLONE_VM: u64 = libc::CLONE_VM as u64;
    let mut args = Vec::with_capacity(88);
    for w in [CLONE_VM, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] {
        args.extend_from_slice(&w.to_le_bytes());
    }
    r.put(0, &args).restoring(r.pid, STAGE)?;
    let out = r
        .inj()
        .run(libc::SYS_clone3, [r.scratch, 88, 0, 0, 0, 0])
        .restoring(r.pid, STAGE)?;
    let (Some(host), true) = (out.new_task, out.ret > 0) else {
        return Err(EngineError::BadImage(format!(
            "process {}: the helper for a pidfd of an exited process could not be made \
             (clone3 returned {}, new task {:?})",
            r.vpid, out.ret, out.new_task
        )));
    };
    let vpid = out.ret as u64;
    if !crate::freeze::wait_interrupt_stop(host).restoring(r.pid, STAGE)? {
        return Err(EngineError::BadImage(format!(
            "process {}: the helper for a pidfd of an exited process vanished",
            r.vpid
        )));
    }
    let helper = Remote {
        pid: host,
        tid: host,
        vpid: vpid as i32,
        ..*r
    };
    helper
        .inj()
        .run_to_exit(libc::SYS_exit_group, [0; 6])
        .restoring(r.pid, STAGE)?;
    let fd = r
        .call(
            "pidfd_open",
            libc::SYS_pidfd_open,
            [vpid, flags as u64, 0, 0, 0, 0],
        )
        .restoring(r.pid, STAGE)?;
    // Reap it: waitid(P_PID, vpid, NULL, WEXITED | __WALL).
    r.call(
        "waitid",
        libc::SYS_waitid,
        [
            libc::P_PID as u64,
            vpid,
            0,
            (libc::WEXITED | libc::__WALL) as u64,
            0,
            0,
        ],
    )
    .restoring(r.pid, STAGE)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Thread;

    fn pidfd(fd: i32, target: i32, flags: u32) -> Fd {
        Fd {
            fd,
            kind: FdKind::Pidfd as i32,
            flags: libc::O_RDWR as u32 | flags,
            pidfd_pid: target,
            file_id: fd as u64,
            ..Default::default()
        }
    }

    fn tree(fds: Vec<Fd>) -> Vec<Process> {
        let thread = |tid| Thread {
            tid,
            ..Default::default()
        };
        vec![
            Process {
                pid: 100,
                threads: vec![thread(100), thread(101)],
                fds,
                ..Default::default()
            },
            Process {
                pid: 200,
                ppid: 100,
                threads: vec![thread(200)],
                ..Default::default()
            },
            Process {
                pid: 300,
                ppid: 100,
                zombie: true,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn pidfds_of_the_tree_pass() {
        let ok = tree(vec![
            pidfd(3, 100, 0),
            pidfd(4, 200, PIDFD_NONBLOCK),
            pidfd(5, 300, 0),
            pidfd(6, -1, 0),
            pidfd(7, 101, PIDFD_THREAD),
        ]);
        check_tree(&ok).unwrap();
    }

    #[test]
    fn pidfds_outside_the_tree_are_refused() {
        let e = check_tree(&tree(vec![pidfd(9, 4242, 0)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("process 100") && e.contains("fd 9") && e.contains("process 4242"),
            "{e}"
        );
        // A thread's TID without PIDFD_THREAD is no process of the tree.
        let e = check_tree(&tree(vec![pidfd(5, 101, 0)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("fd 5") && e.contains("101"), "{e}");
    }
}

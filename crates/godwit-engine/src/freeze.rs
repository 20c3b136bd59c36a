//! Freezing a process: seize and interrupt every thread, and give it back
//! exactly as it was (registers, signal masks) unless it is to be ended.

use crate::error::{DumpCtx, EngineError, Result};
use godwit_sys::ptrace::{self, Stop};
use godwit_sys::regs::GpRegs;
use godwit_sys::{proc, process};
use std::collections::BTreeMap;

/// One frozen thread and what it looked like when it stopped.
#[derive(Debug, Clone)]
pub struct FrozenThread {
    pub tid: i32,
    pub regs: GpRegs,
    pub sigmask: u64,
    /// Syscall user dispatch the thread had on (mode, selector, offset,
    /// len): switched off while frozen, so that injected calls are not
    /// turned into SIGSYS, and on again at release.
    pub syscall_dispatch: Option<[u64; 4]>,
}

/// A process whose threads are all in a ptrace stop. Dropping it without
/// calling [`Frozen::release`] or [`Frozen::kill`] releases it.
pub struct Frozen {
    pub pid: i32,
    pub threads: Vec<FrozenThread>,
    /// Stopped by job control with this signal (the group stop its threads
    /// reported when seized); 0: running.
    pub stop_signal: i32,
    /// The main thread has exited (pthread_exit, SYS_exit) while the other
    /// threads run: it is a zombie, not traced, and not in `threads`; the
    /// process is read through its first live thread (see
    /// [`godwit_sys::proc::read_via`]) until released or killed. Its wait
    /// status (what /proc/PID/stat shows as its exit code).
    pub leader_exited: Option<i32>,
    done: bool,
}

/// Why PTRACE_SEIZE of `tid` failed with EPERM, as far as /proc tells:
/// another tracer (named), a kernel thread, Yama, or (not root) another
/// user's process.
fn why_not_traced(tid: i32, e: &godwit_sys::SysError) -> String {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let tracer = proc::status(tid).map_or(0, |s| s.tracer_pid);
    if tracer > 0 {
        let comm = proc::stat(tracer).map_or_else(|_| "?".into(), |s| s.comm);
        return format!(
            "cannot trace thread {tid}: it is already traced by PID {tracer} ({comm}), \
             a debugger or tracer; detach it (or end PID {tracer}) and dump again"
        );
    }
    if proc::stat(tid).is_ok_and(|s| s.flags & PF_KTHREAD != 0) {
        return format!("cannot trace thread {tid}: it is a kernel thread, which cannot be dumped");
    }
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if process::euid() != 0 {
        return format!(
            "cannot trace thread {tid} ({e}); is it another user's process, or is another debugger attached?"
        );
    }
    match yama {
        Some(3) => format!(
            "cannot trace thread {tid} ({e}): ptrace is disabled on this host \
             (kernel.yama.ptrace_scope = 3, which only a reboot lifts)"
        ),
        Some(2) => format!(
            "cannot trace thread {tid} ({e}): kernel.yama.ptrace_scope = 2 lets only \
             CAP_SYS_PTRACE trace; run godwit with it"
        ),
        _ => format!(
            "cannot trace thread {tid} ({e}), though godwit runs as root and no tracer holds it; \
             a security module (SELinux, AppArmor, Yama) may forbid it"
        ),
    }
}

impl Frozen {
    /// Seizes and stops every thread of `pid`, looping until no new thread appears.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        let st = proc::stat(pid).map_err(|_| EngineError::NoSuchProcess { pid })?;
        let leader_exited = match zombie(pid, &st)? {
            Kind::LeaderExited(status) => Some(status),
            Kind::Zombie(_) | Kind::Live => None,
        };
        Frozen::adopt(pid, &[], leader_exited)
    }

    /// The thread through which calls are injected and the process is
    /// read: the main thread, or (its leader exited) the first live thread.
    pub fn main_tid(&self) -> i32 {
        match self.leader_exited {
            None => self.pid,
            Some(_) => self.threads.first().map_or(self.pid, |t| t.tid),
        }
    }

    /// Like [`Frozen::freeze`], for a process whose threads `seized` were
    /// already seized and interrupted (their stops not yet collected).
    /// `leader_exited`: the main thread is a zombie (with this wait status)
    /// while other threads run; only those are seized.
    fn adopt(pid: i32, seized: &[i32], leader_exited: Option<i32>) -> Result<Frozen> {
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
            stop_signal: 0,
            leader_exited,
            done: false,
        };
        let mut seen: BTreeMap<i32, ()> = BTreeMap::new();
        if leader_exited.is_some() {
            seen.insert(pid, ());
        }
        for &tid in seized {
            seen.insert(tid, ());
            frozen.collect_stop(tid)?;
        }
        loop {
            let tids = proc::tasks(pid).map_err(|_| EngineError::NoSuchProcess { pid })?;
            let new: Vec<i32> = tids.into_iter().filter(|t| !seen.contains_key(t)).collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                seen.insert(tid, ());
                match ptrace::seize(tid) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(libc::ESRCH) && tid != pid => continue,
                    Err(e) if e.errno() == Some(libc::EPERM) => {
                        return Err(EngineError::PermissionDenied {
                            pid,
                            detail: why_not_traced(tid, &e),
                        })
                    }
                    Err(e) => return Err(e).dumping(pid, "attaching to threads"),
                }
                ptrace::interrupt(tid).dumping(pid, "stopping threads")?;
                frozen.collect_stop(tid)?;
            }
        }
        frozen
            .threads
            .sort_by_key(|t| proc::main_thread_first(pid, t.tid));
        if frozen.leader_exited.is_some() {
            match frozen.threads.first() {
                Some(t) => proc::read_via(pid, t.tid),
                None => {
                    return Err(EngineError::ProcessExited {
                        pid,
                        stage: "stopping threads",
                    })
                }
            }
        }
        Ok(frozen)
    }

    /// Waits for seized, interrupted thread `tid` to stop and records it.
    fn collect_stop(&mut self, tid: i32) -> Result<()> {
        let pid = self.pid;
        let Some(sig) = wait_interrupt_stop_sig(tid).dumping(pid, "stopping threads")? else {
            if tid == pid {
                return Err(EngineError::ProcessExited {
                    pid,
                    stage: "stopping threads",
                });
            }
            return Ok(());
        };
        // A seized task reports SIGTRAP, or the group's stop signal while
        // the process is stopped by job control.
        if matches!(
            sig,
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
        ) {
            self.stop_signal = sig;
        }
        let regs = ptrace::get_regs(tid).dumping(pid, "reading registers")?;
        let sigmask = ptrace::get_sigmask(tid).dumping(pid, "reading signal mask")?;
        let syscall_dispatch = ptrace::syscall_dispatch(tid)
            .dumping(pid, "reading syscall user dispatch")?
            .filter(|c| c[0] != 0);
        if syscall_dispatch.is_some() {
            ptrace::set_syscall_dispatch(tid, [0; 4])
                .dumping(pid, "pausing syscall user dispatch")?;
        }
        // A thread under seccomp (strict or filter mode) would have the
        // syscalls injected into it filtered, and might be killed by them:
        // its protection is suspended while it is traced (ends with the
        // detach), see resources::seccomp.
        crate::resources::seccomp::suspend_frozen(pid, tid)?;
        self.threads.push(FrozenThread {
            tid,
            regs,
            sigmask,
            syscall_dispatch,
        });
        Ok(())
    }

    /// Puts every thread back as it was (registers, signal mask, syscall
    /// user dispatch) but keeps it stopped: nothing more is injected. Should
    /// godwit die from here on, the kernel detaches the threads and the
    /// process runs on as it was (`release` later sets the same again).
    pub fn settle(&self) -> Result<()> {
        for t in &self.threads {
            settle_thread(t).dumping(self.pid, "putting the threads' state back")?;
        }
        Ok(())
    }

    /// Puts every thread back as it was and lets the process run on.
    pub fn release(mut self) -> Result<()> {
        self.done = true;
        proc::end_read_via(self.pid);
        let mut first_err = None;
        for t in &self.threads {
            if let Err(e) = release_thread(t) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => Err(e).dumping(self.pid, "resuming the process"),
        }
    }

    /// Ends the process (SIGKILL). Its exit (which frees its memory: about
    /// 70 ms per GiB) is collected by a background thread, not awaited; a
    /// restore waits for a PID whose holder is still exiting.
    pub fn kill(mut self) -> Result<()> {
        self.done = true;
        proc::end_read_via(self.pid);
        // The leader may be reaped by its parent (when that is this process
        // too) before the thread below waits for it, and its PID given to a
        // new process (a restore of it): wait through a pidfd, which names
        // this process only. Other threads stay until their tracer reaps
        // them, so their ids cannot be reused meanwhile.
        let leader = process::pidfd_open(self.pid).ok();
        process::kill(self.pid, libc::SIGKILL).dumping(self.pid, "ending the process")?;
        let pid = self.pid;
        let tids: Vec<i32> = self.threads.iter().map(|t| t.tid).collect();
        std::thread::spawn(move || {
            let exited = |stop: &Stop| matches!(stop, Stop::Exited(_) | Stop::Killed(_));
            // Collect each thread's exit as its tracer; the leader's exit is
            // reported only after all other threads are gone, so it comes last.
            for tid in tids.into_iter().rev() {
                if let (true, Some(fd)) = (tid == pid, &leader) {
                    while let Ok(stop) = ptrace::wait_pidfd(fd) {
                        if exited(&stop) {
                            break;
                        }
                    }
                    continue;
                }
                while let Ok(stop) = ptrace::wait(tid) {
                    if exited(&stop) {
                        break;
                    }
                }
            }
        });
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            proc::end_read_via(self.pid);
            for t in &self.threads {
                if let Err(e) = release_thread(t) {
                    tracing::warn!(tid = t.tid, "could not release thread: {e}");
                }
            }
        }
    }
}

fn release_thread(t: &FrozenThread) -> godwit_sys::Result<()> {
    settle_thread(t)?;
    ptrace::detach(t.tid)
}

/// The thread's state as it was at the freeze (from the saved copy, so
/// doing it twice changes nothing).
fn settle_thread(t: &FrozenThread) -> godwit_sys::Result<()> {
    let mut regs = t.regs;
    regs.rewind_interrupted_syscall();
    ptrace::set_regs(t.tid, &regs)?;
    ptrace::set_sigmask(t.tid, t.sigmask)?;
    if let Some(c) = t.syscall_dispatch {
        ptrace::set_syscall_dispatch(t.tid, c)?;
    }
    Ok(())
}

/// Waits for the stop caused by PTRACE_INTERRUPT, passing on signals that
/// arrive first. Returns false if the thread exited.
pub(crate) fn wait_interrupt_stop(tid: i32) -> godwit_sys::Result<bool> {
    Ok(wait_interrupt_stop_sig(tid)?.is_some())
}

/// [`wait_interrupt_stop`], returning the signal of the PTRACE_EVENT_STOP
/// (SIGTRAP, or the stop signal of a job-control stop); None if the
/// thread exited.
fn wait_interrupt_stop_sig(tid: i32) -> godwit_sys::Result<Option<i32>> {
    loop {
        match ptrace::wait(tid)? {
            Stop::EventStop(sig) => return Ok(Some(sig)),
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Exited(_) | Stop::Killed(_) => return Ok(None),
            Stop::Syscall | Stop::Event(_) => ptrace::cont(tid, 0)?,
        }
    }
}

/// A member of a frozen process tree.
pub enum Member {
    Live(Frozen),
    /// A zombie: its IDs and the wait status its parent will collect.
    Zombie {
        pid: i32,
        ppid: i32,
        pgid: i32,
        sid: i32,
        status: i32,
        exit_signal: i32,
    },
}

impl Member {
    pub fn pid(&self) -> i32 {
        match self {
            Member::Live(f) => f.pid,
            Member::Zombie { pid, .. } => *pid,
        }
    }
}

/// Releases every live member; the first error, after trying them all.
pub fn release_all(members: Vec<Member>) -> Result<()> {
    let mut first = None;
    for m in members {
        if let Member::Live(f) = m {
            if let Err(e) = f.release() {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Freezes each of `roots` and all their descendants, parents before
/// children (the first root first). A process is frozen before
/// its children are listed, so none is missed. With a cgroup freezer, the
/// cgroup is frozen meanwhile and thawed before this returns. On an error
/// every process frozen so far is released.
pub fn freeze_tree(roots: &[i32], cgroup: Option<CgroupFreeze>) -> Result<Vec<Member>> {
    match cgroup {
        Some(cg) if cg.v1 => freeze_tree_v1(roots, cg),
        cg => {
            let members = freeze_tree_with(roots);
            drop(cg);
            members
        }
    }
}

/// What `pid` is: a zombie (its entry), a process whose main thread has
/// exited (pthread_exit, SYS_exit) while other threads run, which shows the
/// main thread's state, Z, too (the main thread's wait status: it is frozen
/// through its live threads), or a live process.
enum Kind {
    Zombie(Member),
    LeaderExited(i32),
    Live,
}

fn zombie(pid: i32, st: &proc::Stat) -> Result<Kind> {
    if st.state != 'Z' {
        return Ok(Kind::Live);
    }
    let others = proc::tasks(pid)
        .unwrap_or_default()
        .into_iter()
        .any(|t| t != pid);
    if others {
        return Ok(Kind::LeaderExited(st.exit_code));
    }
    Ok(Kind::Zombie(Member::Zombie {
        pid,
        ppid: st.ppid,
        pgid: st.pgrp,
        sid: st.session,
        status: st.exit_code,
        exit_signal: st.exit_signal,
    }))
}

/// Under a frozen cgroup v1, a seized task reports its interrupt stop only
/// once thawed: so seize and interrupt every thread of the (now unchanging)
/// tree first, thaw, then collect the stops. Processes that appear in
/// between are frozen the ordinary way afterwards.
fn freeze_tree_v1(roots: &[i32], cg: CgroupFreeze) -> Result<Vec<Member>> {
    // In tree order: a zombie, or a seized process with its threads.
    // (Seized threads, the main thread's wait status if it has exited.)
    type Seized = (Vec<i32>, Option<i32>);
    let mut seized: Vec<(i32, Result<Seized, Member>)> = Vec::new();
    let mut queue = std::collections::VecDeque::from(roots.to_vec());
    while let Some(pid) = queue.pop_front() {
        let st = match proc::stat(pid) {
            Ok(st) => st,
            Err(_) if roots.contains(&pid) => return Err(EngineError::NoSuchProcess { pid }),
            Err(_) => continue,
        };
        let leader_exited = match zombie(pid, &st)? {
            Kind::Zombie(z) => {
                seized.push((pid, Err(z)));
                continue;
            }
            Kind::LeaderExited(status) => Some(status),
            Kind::Live => None,
        };
        let mut tids = Vec::new();
        for tid in proc::tasks(pid).unwrap_or_default() {
            if leader_exited.is_some() && tid == pid {
                continue;
            }
            match ptrace::seize(tid) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::ESRCH) && tid != pid => continue,
                Err(e) if e.errno() == Some(libc::EPERM) => {
                    return Err(EngineError::PermissionDenied {
                        pid,
                        detail: why_not_traced(tid, &e),
                    })
                }
                Err(e) => return Err(e).dumping(pid, "attaching to threads"),
            }
            ptrace::interrupt(tid).dumping(pid, "stopping threads")?;
            tids.push(tid);
        }
        queue.extend(process::children(pid).dumping(pid, "listing child processes")?);
        seized.push((pid, Ok((tids, leader_exited))));
    }
    drop(cg);
    let known: Vec<i32> = seized.iter().map(|(p, _)| *p).collect();
    let mut members = Vec::new();
    let mut late = Vec::new();
    for (pid, tids) in seized {
        let (tids, leader_exited) = match tids {
            Ok(t) => t,
            Err(z) => {
                members.push(z);
                continue;
            }
        };
        match Frozen::adopt(pid, &tids, leader_exited) {
            Ok(f) => members.push(Member::Live(f)),
            Err(EngineError::NoSuchProcess { .. } | EngineError::ProcessExited { .. })
                if !roots.contains(&pid) => {}
            Err(e) => return Err(e),
        }
        for kid in process::children(pid).unwrap_or_default() {
            if !known.contains(&kid) {
                late.push(kid);
            }
        }
    }
    // Parents come before children in `members`; forks made during the thaw
    // (before their parent stopped) are frozen now, after their parents.
    for kid in late {
        members.extend(freeze_tree_with(&[kid])?);
    }
    Ok(members)
}

fn freeze_tree_with(roots: &[i32]) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    let mut queue = std::collections::VecDeque::from(roots.to_vec());
    while let Some(pid) = queue.pop_front() {
        let st = match proc::stat(pid) {
            Ok(st) => st,
            Err(_) if roots.contains(&pid) => return Err(EngineError::NoSuchProcess { pid }),
            Err(_) => continue, // exited and reaped meanwhile
        };
        let leader_exited = match zombie(pid, &st)? {
            Kind::Zombie(z) => {
                members.push(z);
                continue;
            }
            Kind::LeaderExited(status) => Some(status),
            Kind::Live => None,
        };
        let frozen = match Frozen::adopt(pid, &[], leader_exited) {
            Ok(f) => f,
            Err(EngineError::NoSuchProcess { .. } | EngineError::ProcessExited { .. })
                if !roots.contains(&pid) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let kids = process::children(pid).dumping(pid, "listing child processes")?;
        members.push(Member::Live(frozen));
        queue.extend(kids);
    }
    Ok(members)
}

/// A cgroup (v2, or a v1 freezer) frozen for the duration of the tree
/// freeze, so that no process of it runs (or forks) while the tree is being
/// seized. Thawed on drop; the seized tasks then stay in their ptrace stops.
pub struct CgroupFreeze {
    dir: std::path::PathBuf,
    v1: bool,
}

impl CgroupFreeze {
    /// Freezes the cgroup directory `dir` (v2: cgroup.freeze; v1:
    /// freezer.state) and waits until it is frozen.
    pub fn freeze(dir: &std::path::Path, pid: i32) -> Result<CgroupFreeze> {
        let bad = |detail: String| EngineError::Unsupported {
            pid,
            what: format!("the freezer of cgroup {}: {detail}", dir.display()),
        };
        let v1 = if dir.join("cgroup.freeze").exists() {
            false
        } else if dir.join("freezer.state").exists() {
            true
        } else {
            return Err(bad(
                "not a cgroup v2 directory (no cgroup.freeze) nor a v1 freezer (no freezer.state)"
                    .into(),
            ));
        };
        let (file, value) = if v1 {
            ("freezer.state", "FROZEN")
        } else {
            ("cgroup.freeze", "1")
        };
        std::fs::write(dir.join(file), value).map_err(|e| bad(e.to_string()))?;
        let guard = CgroupFreeze {
            dir: dir.to_path_buf(),
            v1,
        };
        let t0 = std::time::Instant::now();
        loop {
            let frozen = if v1 {
                std::fs::read_to_string(dir.join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
            } else {
                std::fs::read_to_string(dir.join("cgroup.events"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| l.trim() == "frozen 1")
            };
            if frozen {
                return Ok(guard);
            }
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                return Err(bad("it did not report frozen within 10 s".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Drop for CgroupFreeze {
    fn drop(&mut self) {
        let (file, value) = if self.v1 {
            ("freezer.state", "THAWED")
        } else {
            ("cgroup.freeze", "0")
        };
        if let Err(e) = std::fs::write(self.dir.join(file), value) {
            tracing::warn!("thawing cgroup {}: {e}", self.dir.display());
        }
    }
}

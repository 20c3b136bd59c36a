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
}

/// A process whose threads are all in a ptrace stop. Dropping it without
/// calling [`Frozen::release`] or [`Frozen::kill`] releases it.
pub struct Frozen {
    pub pid: i32,
    pub threads: Vec<FrozenThread>,
    done: bool,
}

impl Frozen {
    /// Seizes and stops every thread of `pid`, looping until no new thread appears.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        let mut frozen = Frozen {
            pid,
            threads: Vec::new(),
            done: false,
        };
        let mut seen: BTreeMap<i32, ()> = BTreeMap::new();
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
                            detail: format!(
                                "cannot trace thread {tid} ({e}); is another debugger attached, or is it another user's process?"
                            ),
                        })
                    }
                    Err(e) => return Err(e).dumping(pid, "attaching to threads"),
                }
                ptrace::interrupt(tid).dumping(pid, "stopping threads")?;
                if !wait_interrupt_stop(tid).dumping(pid, "stopping threads")? {
                    if tid == pid {
                        return Err(EngineError::ProcessExited {
                            pid,
                            stage: "stopping threads",
                        });
                    }
                    continue;
                }
                let regs = ptrace::get_regs(tid).dumping(pid, "reading registers")?;
                let sigmask = ptrace::get_sigmask(tid).dumping(pid, "reading signal mask")?;
                frozen.threads.push(FrozenThread { tid, regs, sigmask });
            }
        }
        frozen.threads.sort_by_key(|t| t.tid);
        Ok(frozen)
    }

    /// Puts every thread back as it was and lets the process run on.
    pub fn release(mut self) -> Result<()> {
        self.done = true;
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

    /// Ends the process (SIGKILL) and waits until it is gone.
    pub fn kill(mut self) -> Result<()> {
        self.done = true;
        process::kill(self.pid, libc::SIGKILL).dumping(self.pid, "ending the process")?;
        // Collect each thread's exit as its tracer; the leader's exit is
        // reported only after all other threads are gone, so it comes last.
        for t in self.threads.iter().rev() {
            while let Ok(stop) = ptrace::wait(t.tid) {
                if matches!(stop, Stop::Exited(_) | Stop::Killed(_)) {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            for t in &self.threads {
                if let Err(e) = release_thread(t) {
                    tracing::warn!(tid = t.tid, "could not release thread: {e}");
                }
            }
        }
    }
}

fn release_thread(t: &FrozenThread) -> godwit_sys::Result<()> {
    let mut regs = t.regs;
    regs.rewind_interrupted_syscall();
    ptrace::set_regs(t.tid, &regs)?;
    ptrace::set_sigmask(t.tid, t.sigmask)?;
    ptrace::detach(t.tid)
}

/// Waits for the stop caused by PTRACE_INTERRUPT, passing on signals that
/// arrive first. Returns false if the thread exited.
pub(crate) fn wait_interrupt_stop(tid: i32) -> godwit_sys::Result<bool> {
    loop {
        match ptrace::wait(tid)? {
            Stop::EventStop(_) => return Ok(true),
            Stop::Signal(sig) => ptrace::cont(tid, sig)?,
            Stop::Exited(_) | Stop::Killed(_) => return Ok(false),
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

/// Freezes `root` and all its descendants, parents before children. A
/// process is frozen before its children are listed, so none is missed.
pub fn freeze_tree(root: i32) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        let st = match proc::stat(pid) {
            Ok(st) => st,
            Err(_) if pid == root => return Err(EngineError::NoSuchProcess { pid }),
            Err(_) => continue, // exited and reaped meanwhile
        };
        if st.state == 'Z' {
            members.push(Member::Zombie {
                pid,
                ppid: st.ppid,
                pgid: st.pgrp,
                sid: st.session,
                status: st.exit_code,
            });
            continue;
        }
        let frozen = match Frozen::freeze(pid) {
            Ok(f) => f,
            Err(EngineError::NoSuchProcess { .. } | EngineError::ProcessExited { .. })
                if pid != root =>
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

/// A cgroup (v2) frozen for the duration of the tree freeze, so that no
/// process of it runs (or forks) while the tree is being seized. Thawed on
/// drop; the seized tasks then stay in their ptrace stops.
pub struct CgroupFreeze {
    dir: std::path::PathBuf,
}

impl CgroupFreeze {
    /// Freezes the cgroup v2 directory `dir` and waits until it is frozen.
    pub fn freeze(dir: &std::path::Path, pid: i32) -> Result<CgroupFreeze> {
        let bad = |detail: String| EngineError::Unsupported {
            pid,
            what: format!("the freezer of cgroup {}: {detail}", dir.display()),
        };
        if !dir.join("cgroup.freeze").exists() {
            return Err(bad(if dir.join("freezer.state").exists() {
                "cgroup v1 freezers are not supported yet; give a cgroup v2 directory".into()
            } else {
                "not a cgroup v2 directory (no cgroup.freeze)".into()
            }));
        }
        std::fs::write(dir.join("cgroup.freeze"), "1").map_err(|e| bad(e.to_string()))?;
        let guard = CgroupFreeze {
            dir: dir.to_path_buf(),
        };
        let t0 = std::time::Instant::now();
        loop {
            let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l.trim() == "frozen 1") {
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
        if let Err(e) = std::fs::write(self.dir.join("cgroup.freeze"), "0") {
            tracing::warn!("thawing cgroup {}: {e}", self.dir.display());
        }
    }
}

//! Job control: a process stopped by SIGSTOP, SIGTSTP, SIGTTIN or SIGTTOU
//! (a group stop). The freeze notes it (`freeze::Frozen::stop_signal`: a
//! seized thread reports the group's stop signal instead of SIGTRAP); the
//! restore lets the rebuilt process go stopped again, with the same signal
//! when it would stop it.

use crate::error::{EngineError, RestoreCtx, Result};
use crate::schema::Process;
use godwit_sys::{proc, process, ptrace};
use std::time::{Duration, Instant};

/// Lets a process that was stopped by job control go, stopped again: its
/// main thread takes a SIGSTOP (all signals else blocked meanwhile, so that
/// none is delivered first) and is detached with the saved stop signal,
/// which starts a group stop; the other threads, detached then, join it
/// before running any code. A later SIGCONT resumes it.
pub fn detach_stopped(pid: i32, tids: &[i32], p: &Process) -> Result<()> {
    let stage = "stopping the process again (it was stopped)";
    let main = tids[0];
    let mask = p.threads[0].sigmask;
    ptrace::set_sigmask(main, !0).restoring(p.pid, stage)?;
    process::kill(pid, libc::SIGSTOP).restoring(p.pid, stage)?;
    ptrace::cont(main, 0).restoring(p.pid, stage)?;
    loop {
        match ptrace::wait(main).restoring(p.pid, stage)? {
            ptrace::Stop::Signal(libc::SIGSTOP) => break,
            ptrace::Stop::Exited(_) | ptrace::Stop::Killed(_) => {
                return Err(EngineError::BadImage(format!(
                    "process {} exited while being stopped again",
                    p.pid
                )))
            }
            // Another signal cannot come first (all are blocked); traps
            // and events are passed over.
            _ => ptrace::cont(main, 0).restoring(p.pid, stage)?,
        }
    }
    // The saved signal (SIGTSTP, SIGTTIN, SIGTTOU: what waitpid reports)
    // stops the process only with its default action, unblocked, outside an
    // orphaned process group; otherwise SIGSTOP, which always does.
    let sig = p.stop_signal;
    let bit = 1u64 << (sig - 1);
    let default = p
        .sigactions
        .iter()
        .find(|a| a.signo == sig as u32)
        .is_none_or(|a| a.handler == 0);
    let sig = if sig == libc::SIGSTOP || (default && mask & bit == 0 && !pgrp_orphaned(pid)) {
        sig
    } else {
        tracing::info!(
            pid = p.pid,
            "stopped again with SIGSTOP (it had been stopped by signal {sig}, which would not stop it now)"
        );
        libc::SIGSTOP
    };
    ptrace::set_sigmask(main, mask).restoring(p.pid, stage)?;
    ptrace::detach_with_signal(main, sig).restoring(p.pid, stage)?;
    for &t in tids[1..].iter().rev() {
        ptrace::detach(t).restoring(p.pid, stage)?;
    }
    // The group stop must take: otherwise stop it now (it may have run a
    // little), and say so.
    let t0 = Instant::now();
    while proc::stat(pid).is_ok_and(|s| s.state != 'T') {
        if t0.elapsed() > Duration::from_secs(1) {
            tracing::warn!(
                pid = p.pid,
                "the process did not stop again with signal {sig}: sending SIGSTOP"
            );
            process::kill(pid, libc::SIGSTOP).restoring(p.pid, stage)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Whether the process group of host process `pid` is orphaned (the kernel
/// then discards SIGTSTP, SIGTTIN and SIGTTOU): no member has a parent in
/// another group of the same session, init aside.
fn pgrp_orphaned(pid: i32) -> bool {
    let Ok(me) = proc::stat(pid) else { return true };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    for e in dir.flatten() {
        let Some(q) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(st) = proc::stat(q) else { continue };
        if st.pgrp != me.pgrp || st.state == 'Z' || st.ppid <= 1 {
            continue;
        }
        if let Ok(parent) = proc::stat(st.ppid) {
            if parent.pgrp != me.pgrp && parent.session == me.session {
                return false;
            }
        }
    }
    true
}

//! Process-wide signal state: handlers (with flags, restorer and mask),
//! process-wide pending signals, and interval timers.

use crate::error::{DumpCtx, RestoreCtx, Result};
use crate::remote::{u64_at, Remote};
use crate::resources::threads;
use crate::schema::{Itimer, SigAction};
use godwit_sys::ptrace;

/// Signals whose disposition can be read and set (all but SIGKILL and SIGSTOP).
fn settable() -> impl Iterator<Item = u32> {
    (1..=64u32).filter(|s| *s != libc::SIGKILL as u32 && *s != libc::SIGSTOP as u32)
}

pub struct Signals {
    pub actions: Vec<SigAction>,
    pub shared_pending: Vec<Vec<u8>>,
    pub itimers: Vec<Itimer>,
}

/// Reads handlers and timers by injection. Uses scratch bytes [0, 65*32).
///
/// Only signals with a handler (SigCgt), and SIGCHLD (whose SA_NOCLDWAIT /
/// SA_NOCLDSTOP matter even with the default action), are read by injected
/// rt_sigaction; the others are default or ignored (SigIgn), and their
/// flags and mask have no effect, so they are not kept.
pub fn dump(r: &Remote) -> Result<Signals> {
    let pid = r.pid;
    let st = godwit_sys::proc::status(pid).dumping(pid, "reading signal dispositions")?;
    let bit = |sig: u32| 1u64 << (sig - 1);
    let queried = |sig: u32| st.sig_cgt & bit(sig) != 0 || sig == libc::SIGCHLD as u32;
    for sig in settable().filter(|s| queried(*s)) {
        r.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, 0, r.scratch + sig as u64 * 32, 8, 0, 0],
        )
        .dumping(pid, "reading signal handlers")?;
    }
    let b = r.get(0, 65 * 32).dumping(pid, "reading signal handlers")?;
    let actions = settable()
        .map(|sig| {
            let base = sig as usize * 4;
            if queried(sig) {
                SigAction {
                    signo: sig,
                    handler: u64_at(&b, base),
                    flags: u64_at(&b, base + 1),
                    restorer: u64_at(&b, base + 2),
                    mask: u64_at(&b, base + 3),
                }
            } else {
                SigAction {
                    signo: sig,
                    handler: if st.sig_ign & bit(sig) != 0 {
                        libc::SIG_IGN as u64
                    } else {
                        libc::SIG_DFL as u64
                    },
                    ..Default::default()
                }
            }
        })
        .filter(|a| a.handler != 0 || a.flags != 0 || a.mask != 0)
        .collect();
    let mut itimers = Vec::new();
    for which in 0..3u64 {
        r.call(
            "getitimer",
            libc::SYS_getitimer,
            [which, r.scratch, 0, 0, 0, 0],
        )
        .dumping(pid, "reading interval timers")?;
        let t = r.get(0, 32).dumping(pid, "reading interval timers")?;
        let interval_us = u64_at(&t, 0) * 1_000_000 + u64_at(&t, 1);
        let value_us = u64_at(&t, 2) * 1_000_000 + u64_at(&t, 3);
        if interval_us != 0 || value_us != 0 {
            itimers.push(Itimer {
                which: which as i32,
                interval_us,
                value_us,
            });
        }
    }
    let shared_pending = ptrace::peek_siginfo(r.tid, true)
        .dumping(pid, "reading pending signals")?
        .into_iter()
        .map(|s| s.to_vec())
        .collect();
    Ok(Signals {
        actions,
        shared_pending,
        itimers,
    })
}

/// Sets every handler (ones not saved go back to the default) and the timers.
///
/// The new process is a fork of godwit and still has godwit's actions, so
/// only the signals whose saved action differs from ours are set.
pub fn restore_handlers(r: &Remote, actions: &[SigAction], itimers: &[Itimer]) -> Result<()> {
    let pid = r.pid;
    for sig in settable() {
        let a = actions.iter().find(|a| a.signo == sig);
        let want = [
            a.map_or(0, |a| a.handler),
            a.map_or(0, |a| a.flags),
            a.map_or(0, |a| a.restorer),
            a.map_or(0, |a| a.mask),
        ];
        if godwit_sys::process::own_sigaction(sig).ok() == Some(want) {
            continue;
        }
        let mut b = Vec::with_capacity(32);
        for w in want {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = r.put(0, &b).restoring(pid, "setting signal handlers")?;
        r.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, addr, 0, 8, 0, 0],
        )
        .restoring(pid, "setting signal handlers")?;
    }
    for t in itimers {
        // A periodic ITIMER_REAL whose SIGALRM is pending but not yet
        // dequeued reads as value 0: the kernel re-arms it by one interval at
        // dequeue. setitimer with value 0 would disarm it, so arm it with one
        // interval, as the kernel would.
        let value_us = if t.value_us == 0 {
            t.interval_us
        } else {
            t.value_us
        };
        let mut b = Vec::with_capacity(32);
        for w in [
            t.interval_us / 1_000_000,
            t.interval_us % 1_000_000,
            value_us / 1_000_000,
            value_us % 1_000_000,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let addr = r.put(0, &b).restoring(pid, "setting interval timers")?;
        r.call(
            "setitimer",
            libc::SYS_setitimer,
            [t.which as u64, addr, 0, 0, 0, 0],
        )
        .restoring(pid, "setting interval timers")?;
    }
    Ok(())
}

/// Queues the process-wide pending signals again.
pub fn restore_pending(r: &Remote, shared: &[Vec<u8>]) -> Result<()> {
    for si in shared {
        threads::queue_signal(r, si, None)?;
    }
    Ok(())
}

//! POSIX timers (timer_create): id, clock, how they notify, interval and
//! time left. Restored with the same ids (PR_TIMER_CREATE_RESTORE_IDS, Linux
//! 6.14+). The overrun count of a timer whose signal is pending is not kept.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::{u64_at, Remote};
use crate::schema::PosixTimer;

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

/// Parses /proc/PID/timers (without times: those come from timer_gettime).
pub fn parse(text: &str) -> std::result::Result<Vec<PosixTimer>, String> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(": ") else {
            continue;
        };
        let v = v.trim();
        if k == "ID" {
            out.push(PosixTimer {
                id: v.parse().map_err(|_| format!("bad ID {v:?}"))?,
                ..Default::default()
            });
            continue;
        }
        let t = out.last_mut().ok_or_else(|| format!("{k} before any ID"))?;
        match k {
            "signal" => {
                let (sig, val) = v
                    .split_once('/')
                    .ok_or_else(|| format!("bad signal {v:?}"))?;
                t.signo = sig.parse().map_err(|_| format!("bad signal {v:?}"))?;
                t.sigval = u64::from_str_radix(val, 16).map_err(|_| format!("bad sigval {v:?}"))?;
            }
            "notify" => {
                let (how, target) = v
                    .split_once('/')
                    .ok_or_else(|| format!("bad notify {v:?}"))?;
                let (kind, id) = target
                    .split_once('.')
                    .ok_or_else(|| format!("bad notify {v:?}"))?;
                t.notify = match (how, kind) {
                    ("none", _) => SIGEV_NONE,
                    ("signal", "tid") => SIGEV_THREAD_ID,
                    ("signal", _) => SIGEV_SIGNAL,
                    _ => return Err(format!("unknown notify {v:?}")),
                };
                t.notify_tid = id.parse().map_err(|_| format!("bad notify {v:?}"))?;
            }
            "ClockID" => t.clock_id = v.parse().map_err(|_| format!("bad ClockID {v:?}"))?,
            _ => {}
        }
    }
    Ok(out)
}

/// Reads the process's POSIX timers. Uses scratch bytes [0, 32).
pub fn dump(r: &Remote) -> Result<Vec<PosixTimer>> {
    let pid = r.pid;
    let path = format!("/proc/{pid}/timers");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut timers = parse(&text).map_err(|detail| EngineError::Sys {
        pid,
        stage: "reading POSIX timers",
        source: godwit_sys::SysError::Proc { path, detail },
    })?;
    for t in &mut timers {
        r.call(
            "timer_gettime",
            libc::SYS_timer_gettime,
            [t.id as u64, r.scratch, 0, 0, 0, 0],
        )
        .dumping(pid, "reading POSIX timers")?;
        let b = r.get(0, 32).dumping(pid, "reading POSIX timers")?;
        t.interval_ns = u64_at(&b, 0) * 1_000_000_000 + u64_at(&b, 1);
        t.value_ns = u64_at(&b, 2) * 1_000_000_000 + u64_at(&b, 3);
    }
    timers.sort_by_key(|t| t.id);
    Ok(timers)
}

/// Creates the timers again with their ids, then arms them. The threads
/// they may notify must exist already. Uses scratch bytes [0, 160).
pub fn restore(r: &Remote, timers: &[PosixTimer]) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    let pid = r.pid;
    let stage = "creating POSIX timers";
    r.call(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
    )
    .restoring(
        pid,
        "creating POSIX timers with their ids (needs Linux 6.14+)",
    )?;
    for t in timers {
        // struct sigevent: sigval, signo, notify, then the thread id.
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.sigval.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_le_bytes());
        let ev_addr = r.put(0, &ev).restoring(pid, stage)?;
        let id_addr = r.put(64, &t.id.to_le_bytes()).restoring(pid, stage)?;
        r.call(
            "timer_create",
            libc::SYS_timer_create,
            [t.clock_id as u64, ev_addr, id_addr, 0, 0, 0],
        )
        .restoring(pid, stage)?;
        let got = i32::from_le_bytes(
            r.get(64, 4).restoring(pid, stage)?[..4]
                .try_into()
                .expect("4 bytes"),
        );
        if got != t.id {
            return Err(EngineError::BadImage(format!(
                "POSIX timer {} was created as {got}",
                t.id
            )));
        }
        if t.value_ns != 0 {
            let mut its = Vec::with_capacity(32);
            for w in [
                t.interval_ns / 1_000_000_000,
                t.interval_ns % 1_000_000_000,
                t.value_ns / 1_000_000_000,
                t.value_ns % 1_000_000_000,
            ] {
                its.extend_from_slice(&w.to_le_bytes());
            }
            let a = r.put(96, &its).restoring(pid, stage)?;
            r.call(
                "timer_settime",
                libc::SYS_timer_settime,
                [t.id as u64, 0, a, 0, 0, 0],
            )
            .restoring(pid, "arming POSIX timers")?;
        }
    }
    r.call(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_timers() {
        let t = parse(
            "ID: 2\nsignal: 12/0000000000000000\nnotify: signal/tid.3104\nClockID: 1\n\
             ID: 1\nsignal: 0/0000000000000000\nnotify: none/pid.3104\nClockID: 0\n\
             ID: 0\nsignal: 10/000000000000002a\nnotify: signal/pid.3104\nClockID: 1\n",
        )
        .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(
            (
                t[0].id,
                t[0].signo,
                t[0].notify,
                t[0].notify_tid,
                t[0].clock_id
            ),
            (2, 12, SIGEV_THREAD_ID, 3104, 1)
        );
        assert_eq!((t[1].notify, t[1].clock_id), (SIGEV_NONE, 0));
        assert_eq!(
            (t[2].signo, t[2].sigval, t[2].notify),
            (10, 42, SIGEV_SIGNAL)
        );
        assert!(parse("signal: 1/0\n").is_err());
        assert!(parse("ID: x\n").is_err());
        assert_eq!(parse("").unwrap(), vec![]);
    }
}

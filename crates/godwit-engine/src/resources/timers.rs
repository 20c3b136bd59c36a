//! POSIX timers (timer_create): id, clock, how they notify, interval, time
//! left and overrun count. Restored with the same ids
//! (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.14+).
//!
//! The kernel has no call that sets an overrun count; it computes one when a
//! timer's signal is taken: the intervals elapsed since the expiry that
//! queued it. So a timer that had overrun N is armed at an absolute time
//! (N + 1) intervals minus its time left in the past, with its interval; it
//! fires at once, and its signal, taken back by sigtimedwait in the process,
//! leaves timer_getoverrun() at N and the next expiry at the time left.

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
        t.overrun = r
            .call(
                "timer_getoverrun",
                libc::SYS_timer_getoverrun,
                [t.id as u64, 0, 0, 0, 0, 0],
            )
            .dumping(pid, "reading POSIX timers")? as i32;
    }
    timers.sort_by_key(|t| t.id);
    Ok(timers)
}

/// Creates the timers again with their ids, then arms them. The threads
/// they may notify must exist already (`host_of` maps an image TID to the
/// host's), with every signal blocked and none queued. Uses scratch bytes
/// [0, 312).
pub fn restore(
    r: &Remote,
    timers: &[PosixTimer],
    host_of: &dyn Fn(i32) -> Option<i32>,
) -> Result<()> {
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
        if t.value_ns == 0 {
            continue;
        }
        if let Some(start) = overrun_start(t) {
            rearm_with_overrun(r, t, start, host_of)?;
        } else {
            settime(r, t, 0, t.value_ns as i128)?;
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

/// Arms timer `t` with its interval and `value` (relative, or absolute
/// with TIMER_ABSTIME in `flags`).
fn settime(r: &Remote, t: &PosixTimer, flags: u64, value: i128) -> Result<()> {
    let pid = r.pid;
    let mut its = Vec::with_capacity(32);
    for w in [
        t.interval_ns / 1_000_000_000,
        t.interval_ns % 1_000_000_000,
        (value / 1_000_000_000) as u64,
        (value % 1_000_000_000) as u64,
    ] {
        its.extend_from_slice(&w.to_le_bytes());
    }
    let a = r.put(96, &its).restoring(pid, "arming POSIX timers")?;
    r.call(
        "timer_settime",
        libc::SYS_timer_settime,
        [t.id as u64, flags, a, 0, 0, 0],
    )
    .restoring(pid, "arming POSIX timers")?;
    Ok(())
}

/// Clocks whose absolute time godwit reads as the process would.
const WALL_CLOCKS: [i32; 6] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_BOOTTIME,
    libc::CLOCK_REALTIME_ALARM,
    libc::CLOCK_BOOTTIME_ALARM,
    libc::CLOCK_TAI,
];

/// When timer `t` had overrun and can be given its overrun back: the
/// absolute start time on its clock (see the module comment).
fn overrun_start(t: &PosixTimer) -> Option<i128> {
    let (i, left) = (t.interval_ns as i128, t.value_ns as i128);
    if t.overrun <= 0 || i == 0 || left == 0 || left > i || t.notify == SIGEV_NONE || t.signo <= 0 {
        return None;
    }
    if !WALL_CLOCKS.contains(&t.clock_id) {
        return None;
    }
    let now = godwit_sys::clock::now_ns(t.clock_id).ok()?;
    let start = now + left - (t.overrun as i128 + 1) * i;
    (start > 0).then_some(start)
}

/// Arms `t` at `start` in the past and takes its signal back, in the thread
/// it notifies (or the main thread): its overrun count is then the one saved.
fn rearm_with_overrun(
    r: &Remote,
    t: &PosixTimer,
    start: i128,
    host_of: &dyn Fn(i32) -> Option<i32>,
) -> Result<()> {
    let pid = r.pid;
    let stage = "restoring a POSIX timer's overrun count";
    let rt = if t.notify == SIGEV_THREAD_ID {
        let host = host_of(t.notify_tid).ok_or_else(|| {
            EngineError::BadImage(format!(
                "POSIX timer {} notifies thread {}, which is not in the image",
                t.id, t.notify_tid
            ))
        })?;
        r.for_thread(host)
    } else {
        *r
    };
    settime(r, t, libc::TIMER_ABSTIME as u64, start)?;
    let set = 1u64 << (t.signo - 1);
    let set_addr = rt.put(160, &set.to_le_bytes()).restoring(pid, stage)?;
    // The expiry is handled by the timer interrupt: give it up to a second
    // (struct timespec {1, 0}).
    let timeout: Vec<u8> = [1u64, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    let to_addr = rt.put(168, &timeout).restoring(pid, stage)?;
    let info_addr = rt.scratch + 184;
    let got = rt
        .call(
            "rt_sigtimedwait",
            libc::SYS_rt_sigtimedwait,
            [set_addr, info_addr, to_addr, 8, 0, 0],
        )
        .restoring(pid, stage)?;
    if got != t.signo as u64 {
        return Err(EngineError::BadImage(format!(
            "POSIX timer {}: waited for signal {}, got {got}",
            t.id, t.signo
        )));
    }
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
        assert!(parse("ID: 1\nsignal: 10/0\nnotify: bogus/pid.1\n").is_err());
        assert!(parse("ID: x\n").is_err());
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn overrun_start_only_when_it_can_be_rebuilt() {
        let t = PosixTimer {
            id: 0,
            clock_id: libc::CLOCK_MONOTONIC,
            signo: libc::SIGUSR1,
            notify: SIGEV_SIGNAL,
            interval_ns: 60_000_000_000,
            value_ns: 30_000_000_000,
            overrun: 3,
            ..Default::default()
        };
        let now = godwit_sys::clock::now_ns(libc::CLOCK_MONOTONIC).unwrap();
        let start = overrun_start(&t).expect("a start time");
        let want = now + 30_000_000_000 - 4 * 60_000_000_000;
        assert!((start - want).abs() < 1_000_000_000, "{start} vs {want}");
        for other in [
            PosixTimer {
                overrun: 0,
                ..t.clone()
            },
            PosixTimer {
                interval_ns: 0,
                ..t.clone()
            },
            PosixTimer {
                value_ns: 61_000_000_000,
                ..t.clone()
            },
            PosixTimer {
                notify: SIGEV_NONE,
                ..t.clone()
            },
            PosixTimer {
                clock_id: -6,
                ..t.clone()
            }, // a CPU-time clock
            PosixTimer {
                overrun: i32::MAX,
                ..t.clone()
            }, // before the clock's zero
        ] {
            assert_eq!(overrun_start(&other), None, "{other:?}");
        }
    }
}

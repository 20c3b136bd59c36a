//! Scheduling of each thread: policy (SCHED_OTHER, BATCH, IDLE, FIFO, RR),
//! real-time priority, nice value, a custom time slice, SCHED_RESET_ON_FORK,
//! CPU affinity and I/O priority. All read from outside at dump time and set from outside (by
//! godwit, root, on the thread's host TID) at the end of a restore, once
//! godwit no longer shares its CPU with the threads (crate::colocate).

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::schema::{Process, Sched};
use godwit_sys::proc;
use godwit_sys::sched::{self, CpuSet, SchedAttr};

const SCHED_OTHER: u32 = 0;
const SCHED_FIFO: u32 = 1;
const SCHED_RR: u32 = 2;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
const SCHED_DEADLINE: u32 = 6;
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

fn policy_name(p: u32) -> &'static str {
    match p {
        SCHED_OTHER => "SCHED_OTHER",
        SCHED_FIFO => "SCHED_FIFO",
        SCHED_RR => "SCHED_RR",
        SCHED_BATCH => "SCHED_BATCH",
        SCHED_IDLE => "SCHED_IDLE",
        SCHED_DEADLINE => "SCHED_DEADLINE",
        _ => "an unknown policy",
    }
}

/// Reads the scheduling of thread `tid` of frozen process `pid`.
pub fn dump(pid: i32, tid: i32) -> Result<Sched> {
    let stage = "reading thread scheduling";
    let a = sched::get_attr(tid).dumping(pid, stage)?;
    let rt = matches!(a.policy, SCHED_FIFO | SCHED_RR);
    if !matches!(a.policy, SCHED_OTHER | SCHED_BATCH | SCHED_IDLE) && !rt {
        return Err(EngineError::Unsupported {
            pid,
            what: format!(
                "thread {tid} runs under {} (policy {}), which restore could not set again",
                policy_name(a.policy),
                a.policy
            ),
        });
    }
    // Utilisation clamps (CONFIG_UCLAMP_TASK; 0 and 0 without it): only the
    // defaults are kept (min 0, or 1024 for a real-time thread; max 1024).
    let default_min = if rt { a.util_min } else { 0 };
    if (a.util_min, a.util_max) != (0, 0) && (a.util_min != default_min || a.util_max != 1024) {
        return Err(EngineError::Unsupported {
            pid,
            what: format!(
                "thread {tid} has utilisation clamps (sched_util_min {}, max {}), which restore does not set yet",
                a.util_min, a.util_max
            ),
        });
    }
    // sched_getattr reports 0 as the nice value of a real-time thread; the
    // one it keeps for a return to SCHED_OTHER is in /proc.
    let nice = proc::task_nice(pid, tid).dumping(pid, stage)?;
    // A fair thread's sched_runtime is its time slice: the base slice unless
    // it chose one (6.12+). Godwit's own thread has the base slice.
    let base = sched::get_attr(0).dumping(pid, stage)?.runtime;
    let slice_ns = if !rt && a.runtime != base {
        a.runtime
    } else {
        0
    };
    Ok(Sched {
        policy: a.policy,
        priority: a.priority,
        nice,
        reset_on_fork: a.flags & SCHED_FLAG_RESET_ON_FORK != 0,
        cpus: sched::affinity(tid).dumping(pid, stage)?.to_words(),
        ioprio: sched::ioprio(tid).dumping(pid, stage)?,
        slice_ns,
    })
}

/// The CPUs of `s` that this host has online; the ones it lacks apart.
fn usable(s: &Sched, online: &CpuSet) -> (CpuSet, Vec<usize>) {
    let (want, mut missing) = CpuSet::from_words(&s.cpus);
    let keep = want.and(online);
    missing.extend(want.cpus().into_iter().filter(|c| !keep.contains(*c)));
    (keep, missing)
}

/// Refuses a restore in which a thread could run on none of the CPUs its
/// affinity allows.
pub fn check(p: &Process) -> Result<()> {
    let online = sched::online_cpus().restoring(p.pid, "reading the online CPUs")?;
    for t in &p.threads {
        let Some(s) = &t.sched else { continue };
        let (keep, missing) = usable(s, &online);
        if keep.is_empty() {
            return Err(EngineError::Refused {
                pid: p.pid,
                what: format!(
                    "thread {} may only run on CPUs {missing:?}, none of which this host has (online: {:?}); restore it on a host with those CPUs",
                    t.tid,
                    online.cpus()
                ),
            });
        }
    }
    Ok(())
}

/// Sets the saved scheduling on thread `tid` of process `pid` (host ids):
/// affinity (on the saved CPUs this host has; a warning names those it
/// lacks), I/O priority, nice value, then policy and priority.
pub fn restore(pid: i32, tid: i32, image_tid: i32, s: &Sched) -> Result<()> {
    let online = sched::online_cpus().restoring(pid, "reading the online CPUs")?;
    let (keep, missing) = usable(s, &online);
    if keep.is_empty() {
        return Err(EngineError::Refused {
            pid,
            what: format!(
                "thread {image_tid} may only run on CPUs {missing:?}, which this host lacks"
            ),
        });
    }
    if !missing.is_empty() {
        tracing::warn!(
            pid,
            tid = image_tid,
            "thread {image_tid} may run on CPUs {missing:?}, which this host does not have: it runs on {:?}",
            keep.cpus()
        );
    }
    sched::set_affinity(tid, &keep).restoring(pid, "setting a thread's CPU affinity")?;
    let now = sched::affinity(tid).restoring(pid, "setting a thread's CPU affinity")?;
    if now != keep {
        // A cpuset narrower than the saved affinity: the kernel keeps the
        // CPUs the thread asked for and uses those the cpuset allows.
        tracing::warn!(
            pid,
            tid = image_tid,
            "thread {image_tid} asked for CPUs {:?}; its cpuset lets it use {:?}",
            keep.cpus(),
            now.cpus()
        );
    }
    sched::set_ioprio(tid, s.ioprio).restoring(pid, "setting a thread's I/O priority")?;
    let flags = if s.reset_on_fork {
        SCHED_FLAG_RESET_ON_FORK
    } else {
        0
    };
    // The nice value is set by SCHED_OTHER and SCHED_BATCH only (switching
    // to SCHED_IDLE keeps the old one, measured on 6.18): the other
    // policies get it under SCHED_OTHER first, for a later return to it.
    let direct = matches!(s.policy, SCHED_OTHER | SCHED_BATCH);
    if !direct {
        let fair = SchedAttr {
            policy: SCHED_OTHER,
            nice: s.nice,
            ..Default::default()
        };
        sched::set_attr(tid, &fair).restoring(pid, "setting a thread's nice value")?;
    }
    let a = SchedAttr {
        policy: s.policy,
        priority: s.priority,
        nice: s.nice,
        flags,
        runtime: s.slice_ns,
        ..Default::default()
    };
    sched::set_attr(tid, &a).restoring(pid, "setting a thread's scheduling policy")?;
    tracing::debug!(
        pid,
        tid = image_tid,
        policy = policy_name(s.policy),
        "scheduling set"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_this_host_lacks_are_left_out() {
        let online = sched::parse_cpu_list("0-1").unwrap();
        let s = |cpus: &[u64]| Sched {
            cpus: cpus.to_vec(),
            ..Default::default()
        };
        let (keep, missing) = usable(&s(&[0b1010]), &online);
        assert_eq!((keep.cpus(), missing), (vec![1], vec![3]));
        let (keep, missing) = usable(&s(&[0, 1]), &online);
        assert!(keep.is_empty());
        assert_eq!(missing, vec![64]);
        let p = Process {
            pid: 7,
            threads: vec![crate::schema::Thread {
                tid: 7,
                sched: Some(s(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 << 63])),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = check(&p).unwrap_err().to_string();
        assert!(e.contains("thread 7") && e.contains("1023"), "{e}");
    }
}

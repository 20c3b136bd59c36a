//! Godwit's restoring thread and the tasks it rebuilds share one CPU while it
//! injects system calls into them: every injected call wakes the task and
//! then godwit again, and a wake-up across CPUs is an inter-processor
//! interrupt (expensive in a virtual machine: ~200 µs per call against ~25
//! µs on one CPU, measured here). Page copies, which need both CPUs, run
//! outside with [`unpinned`]. Pinning is only an optimisation: when the
//! kernel refuses it (a cpuset, a seccomp filter), restore goes on as before.

use godwit_sys::sched::{self, CpuSet};
use std::cell::Cell;

thread_local! {
    /// The CPUs this thread may use when it is not pinned (set while a
    /// [`OneCpu`] lives on it).
    static WIDE: Cell<Option<(CpuSet, usize)>> = const { Cell::new(None) };
}

/// Pins the calling thread to the CPU it runs on; gives it its CPUs back
/// when dropped.
pub struct OneCpu {
    cpu: usize,
    wide: CpuSet,
}

impl OneCpu {
    /// Pins the calling thread; None (and nothing changed) if that fails.
    pub fn here() -> Option<OneCpu> {
        let wide = sched::affinity(0).ok()?;
        let cpu = sched::current_cpu().ok()?;
        if !wide.contains(cpu) {
            return None;
        }
        sched::set_affinity(0, &CpuSet::single(cpu)).ok()?;
        WIDE.with(|w| w.set(Some((wide, cpu))));
        Some(OneCpu { cpu, wide })
    }

    /// Puts task `tid` on the same CPU (its clones inherit it).
    pub fn join(&self, tid: i32) {
        if let Err(e) = sched::set_affinity(tid, &CpuSet::single(self.cpu)) {
            tracing::debug!(tid, error = %e, "could not pin a restored task");
        }
    }

    /// The CPUs godwit had before it pinned itself.
    pub fn wide(&self) -> CpuSet {
        self.wide
    }
}

/// Gives task `tid` the CPUs `wide` (godwit's: what a restored task of an
/// image without saved affinity would have inherited).
pub fn give_cpus(tid: i32, wide: &CpuSet) {
    if let Err(e) = sched::set_affinity(tid, wide) {
        tracing::warn!(tid, error = %e, "could not give a restored task back all CPUs");
    }
}

impl Drop for OneCpu {
    fn drop(&mut self) {
        WIDE.with(|w| w.set(None));
        let _ = sched::set_affinity(0, &self.wide);
    }
}

/// Runs `f` with the calling thread's CPUs widened again if it is pinned by
/// a [`OneCpu`] (threads `f` spawns inherit them), then pins it back.
pub fn unpinned<R>(f: impl FnOnce() -> R) -> R {
    let Some((wide, cpu)) = WIDE.with(|w| w.get()) else {
        return f();
    };
    let widened = sched::set_affinity(0, &wide).is_ok();
    let out = f();
    if widened {
        let _ = sched::set_affinity(0, &CpuSet::single(cpu));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_widens_and_gives_back() {
        std::thread::spawn(|| {
            let before = sched::affinity(0).unwrap();
            let n = |s: &CpuSet| (0..1024).filter(|&c| s.contains(c)).count();
            let Some(one) = OneCpu::here() else {
                return; // pinning refused here (a cpuset): nothing to check
            };
            assert_eq!(n(&sched::affinity(0).unwrap()), 1);
            let inside = unpinned(|| n(&sched::affinity(0).unwrap()));
            assert_eq!(inside, n(&before));
            assert_eq!(
                n(&sched::affinity(0).unwrap()),
                1,
                "pinned again after unpinned"
            );
            drop(one);
            assert_eq!(n(&sched::affinity(0).unwrap()), n(&before));
        })
        .join()
        .unwrap();
    }
}

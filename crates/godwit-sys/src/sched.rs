//! CPU affinity of tasks.
//!
//! An injected system call is a ping-pong between godwit and the traced task:
//! each stop wakes the other side. When the two run on different CPUs every
//! wake-up is a cross-CPU interrupt, which in a virtual machine costs tens of
//! microseconds; on one CPU the switch is direct. Restore keeps both on the
//! same CPU while it issues thousands of calls.

use crate::{Result, SysError};

/// A set of CPUs, as sched_{get,set}affinity take it.
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl std::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| self.contains(c))
            .collect();
        write!(f, "CpuSet{cpus:?}")
    }
}

impl CpuSet {
    /// The set holding only `cpu`.
    pub fn single(cpu: usize) -> CpuSet {
        // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
        let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
        unsafe { libc::CPU_SET(cpu, &mut s) };
        CpuSet(s)
    }

    pub fn contains(&self, cpu: usize) -> bool {
        // SAFETY: CPU_ISSET bounds-checks `cpu` and only reads the set.
        cpu < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(cpu, &self.0) }
    }
}

/// The CPUs task `tid` (0: the calling thread) may run on.
pub fn affinity(tid: i32) -> Result<CpuSet> {
    // SAFETY: as in CpuSet::single.
    let mut s: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into `s`.
    let r = unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut s) };
    if r < 0 {
        return Err(SysError::call("sched_getaffinity", tid));
    }
    Ok(CpuSet(s))
}

/// Lets task `tid` (0: the calling thread) run only on `set`.
pub fn set_affinity(tid: i32, set: &CpuSet) -> Result<()> {
    // SAFETY: the kernel reads size_of::<cpu_set_t>() bytes from `set`.
    let r = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set.0) };
    if r < 0 {
        return Err(SysError::call("sched_setaffinity", tid));
    }
    Ok(())
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Result<usize> {
    // SAFETY: sched_getcpu has no arguments.
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 {
        return Err(SysError::call("sched_getcpu", "godwit"));
    }
    Ok(c as usize)
}

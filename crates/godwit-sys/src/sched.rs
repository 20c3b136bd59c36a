//! Scheduling of tasks: CPU affinity, policy and priorities
//! (sched_getattr/sched_setattr), I/O priority.
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

impl PartialEq for CpuSet {
    fn eq(&self, other: &CpuSet) -> bool {
        self.cpus() == other.cpus()
    }
}

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

    /// The empty set.
    pub fn empty() -> CpuSet {
        // SAFETY: cpu_set_t is plain bits; all-zero is the empty set.
        CpuSet(unsafe { std::mem::zeroed() })
    }

    /// Adds `cpu` (ignored beyond the set's size).
    pub fn add(&mut self, cpu: usize) {
        if cpu < libc::CPU_SETSIZE as usize {
            // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
            unsafe { libc::CPU_SET(cpu, &mut self.0) };
        }
    }

    /// The CPUs in the set, in order.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| self.contains(c))
            .collect()
    }

    /// The set as 64-bit words, bit `c % 64` of word `c / 64` for CPU `c`;
    /// trailing zero words left out.
    pub fn to_words(&self) -> Vec<u64> {
        let mut w = vec![0u64; libc::CPU_SETSIZE as usize / 64];
        for c in self.cpus() {
            w[c / 64] |= 1 << (c % 64);
        }
        while w.last() == Some(&0) {
            w.pop();
        }
        w
    }

    /// The set [`to_words`](Self::to_words) gave; CPUs beyond this set's
    /// size (1024) are dropped and returned apart.
    pub fn from_words(words: &[u64]) -> (CpuSet, Vec<usize>) {
        let mut s = CpuSet::empty();
        let mut beyond = Vec::new();
        for (i, w) in words.iter().enumerate() {
            for b in 0..64 {
                if w & (1 << b) != 0 {
                    let c = i * 64 + b;
                    if c < libc::CPU_SETSIZE as usize {
                        s.add(c);
                    } else {
                        beyond.push(c);
                    }
                }
            }
        }
        (s, beyond)
    }

    /// CPUs in both sets.
    pub fn and(&self, other: &CpuSet) -> CpuSet {
        let mut s = CpuSet::empty();
        for c in self.cpus().into_iter().filter(|&c| other.contains(c)) {
            s.add(c);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.cpus().is_empty()
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

/// The CPUs online on this host (/sys/devices/system/cpu/online, a list
/// like "0-3,6").
pub fn online_cpus() -> Result<CpuSet> {
    let path = "/sys/devices/system/cpu/online";
    let text = std::fs::read_to_string(path).map_err(|e| SysError::Proc {
        path: path.into(),
        detail: e.to_string(),
    })?;
    parse_cpu_list(&text).ok_or_else(|| SysError::Proc {
        path: path.into(),
        detail: format!("not a CPU list: {:?}", text.trim()),
    })
}

/// Parses a CPU list ("0-3,6").
pub fn parse_cpu_list(text: &str) -> Option<CpuSet> {
    let mut s = CpuSet::empty();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = part.parse::<usize>().ok()?;
                (a, a)
            }
        };
        for c in a..=b.min(libc::CPU_SETSIZE as usize - 1) {
            s.add(c);
        }
    }
    Some(s)
}

/// struct sched_attr (sched_getattr(2)), the fields Godwit keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedAttr {
    /// SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5, DEADLINE 6.
    pub policy: u32,
    /// SCHED_FLAG_* (SCHED_FLAG_RESET_ON_FORK is 1).
    pub flags: u64,
    pub nice: i32,
    /// The real-time priority (FIFO, RR).
    pub priority: u32,
    /// SCHED_DEADLINE parameters, nanoseconds.
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    /// Utilisation clamps (0 when the kernel has none).
    pub util_min: u32,
    pub util_max: u32,
}

/// Size of struct sched_attr with the utilisation clamps (SCHED_ATTR_SIZE_VER1).
const SCHED_ATTR_SIZE: usize = 56;

/// The scheduling attributes of task `tid` (any task, from outside).
pub fn get_attr(tid: i32) -> Result<SchedAttr> {
    let mut b = [0u8; SCHED_ATTR_SIZE];
    // SAFETY: the kernel writes at most SCHED_ATTR_SIZE bytes into `b`
    // (the size passed), which lives for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            b.as_mut_ptr(),
            SCHED_ATTR_SIZE as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(SysError::call("sched_getattr", format!("task {tid}")));
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    Ok(SchedAttr {
        policy: u32_at(4),
        flags: u64_at(8),
        nice: u32_at(16) as i32,
        priority: u32_at(20),
        runtime: u64_at(24),
        deadline: u64_at(32),
        period: u64_at(40),
        util_min: u32_at(48),
        util_max: u32_at(52),
    })
}

/// Sets policy, flags, nice and priority of task `tid` (the utilisation
/// clamps are left alone).
pub fn set_attr(tid: i32, a: &SchedAttr) -> Result<()> {
    const SCHED_FLAG_UTIL_CLAMP: u64 = 0x60;
    let mut b = [0u8; 48];
    b[0..4].copy_from_slice(&48u32.to_le_bytes());
    b[4..8].copy_from_slice(&a.policy.to_le_bytes());
    b[8..16].copy_from_slice(&(a.flags & !SCHED_FLAG_UTIL_CLAMP).to_le_bytes());
    b[16..20].copy_from_slice(&a.nice.to_le_bytes());
    b[20..24].copy_from_slice(&a.priority.to_le_bytes());
    b[24..32].copy_from_slice(&a.runtime.to_le_bytes());
    b[32..40].copy_from_slice(&a.deadline.to_le_bytes());
    b[40..48].copy_from_slice(&a.period.to_le_bytes());
    // SAFETY: the kernel reads the struct's size (its first field, 48)
    // bytes from `b`, which lives for the call.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, b.as_ptr(), 0 as libc::c_uint) };
    if r < 0 {
        return Err(SysError::call("sched_setattr", format!("task {tid}")));
    }
    Ok(())
}

const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// The I/O priority of task `tid` (ioprio_get(IOPRIO_WHO_PROCESS, tid)):
/// class << 13 | level.
pub fn ioprio(tid: i32) -> Result<i32> {
    // SAFETY: plain integer syscall.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if r < 0 {
        return Err(SysError::call("ioprio_get", format!("task {tid}")));
    }
    Ok(r as i32)
}

/// Sets the I/O priority of task `tid` (that task only).
pub fn set_ioprio(tid: i32, prio: i32) -> Result<()> {
    // SAFETY: plain integer syscall.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, prio) };
    if r < 0 {
        return Err(SysError::call("ioprio_set", format!("task {tid}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_words() {
        let s = parse_cpu_list("0-2,5\n").unwrap();
        assert_eq!(s.cpus(), vec![0, 1, 2, 5]);
        assert_eq!(s.to_words(), vec![0b100111]);
        let (back, beyond) =
            CpuSet::from_words(&[0b100111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(back, s);
        assert_eq!(beyond, vec![1024]);
        assert!(parse_cpu_list("x").is_none());
    }

    #[test]
    fn own_sched_attr_reads() {
        let a = get_attr(0).unwrap();
        assert!(a.policy <= 6);
        assert!(ioprio(0).is_ok());
    }
}

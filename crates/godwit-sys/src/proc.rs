//! Parsers for the /proc files Godwit reads.

use crate::{Result, SysError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

/// Processes whose main thread has exited while other threads run (a
/// zombie thread-group leader), by PID: the live thread through which they
/// are read. Their leader's /proc entries for the memory map, descriptors,
/// cwd and namespaces are empty (the leader released them when it exited),
/// and so are process_vm_readv, pidfd_getfd and kcmp through its PID.
static VIA: RwLock<BTreeMap<i32, i32>> = RwLock::new(BTreeMap::new());

/// From now on, reads of process `pid`'s memory, descriptors and other
/// per-thread /proc entries go through its live thread `tid`.
pub fn read_via(pid: i32, tid: i32) {
    VIA.write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid, tid);
}

/// Ends [`read_via`] for `pid`.
pub fn end_read_via(pid: i32) {
    VIA.write().unwrap_or_else(|e| e.into_inner()).remove(&pid);
}

/// The task to name for reads of process `pid`'s memory and descriptors:
/// `pid` itself, or the live thread registered with [`read_via`].
pub fn via(pid: i32) -> i32 {
    VIA.read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&pid)
        .copied()
        .unwrap_or(pid)
}

/// The /proc directory holding process `pid`'s per-thread entries (maps,
/// fd, fdinfo, cwd, root, exe, ns, mem...): /proc/PID, or
/// /proc/PID/task/TID for a process registered with [`read_via`].
pub fn dir(pid: i32) -> String {
    match via(pid) {
        t if t == pid => format!("/proc/{pid}"),
        t => format!("/proc/{pid}/task/{t}"),
    }
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| SysError::Proc {
        path: path.to_string(),
        detail: e.to_string(),
    })
}

fn bad(path: &str, detail: impl Into<String>) -> SysError {
    SysError::Proc {
        path: path.to_string(),
        detail: detail.into(),
    }
}

/// One line of /proc/PID/smaps with its VmFlags.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`, `[stack]`, `[vdso]` ...); empty for anonymous memory.
    pub name: String,
    /// Two-letter VmFlags (`rd`, `wr`, `gd`, `dc`, ...).
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    pub fn has_flag(&self, f: &str) -> bool {
        self.vm_flags.iter().any(|x| x == f)
    }
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Parses one header line of maps/smaps.
pub fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let (maj, min) = dev.split_once(':')?;
    if perms.len() < 4 {
        return None;
    }
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        shared: perms[3] == b's',
        offset,
        dev_major: u32::from_str_radix(maj, 16).ok()?,
        dev_minor: u32::from_str_radix(min, 16).ok()?,
        inode,
        name,
        vm_flags: Vec::new(),
    })
}

/// Reads /proc/PID/maps: every mapping, without VmFlags (cheap: unlike
/// smaps it does not walk the page tables).
pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    let path = format!("{}/maps", dir(pid));
    read(&path)?
        .lines()
        .map(|line| parse_map_line(line).ok_or_else(|| bad(&path, format!("bad line {line:?}"))))
        .collect()
}

/// Reads /proc/PID/smaps: every mapping with its VmFlags. It costs a page
/// table walk (about 10 ms per GiB mapped).
pub fn smaps(pid: i32) -> Result<Vec<MapEntry>> {
    let path = format!("{}/smaps", dir(pid));
    let text = read(&path)?;
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        let first = line.as_bytes().first().copied().unwrap_or(b' ');
        if first.is_ascii_digit() || (b'a'..=b'f').contains(&first) {
            out.push(parse_map_line(line).ok_or_else(|| bad(&path, format!("bad line {line:?}")))?);
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vm_flags = flags.split_whitespace().map(str::to_string).collect();
            }
        }
    }
    Ok(out)
}

/// The memory-layout fields of /proc/PID/stat (visible to a tracer or root).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    /// The kernel's per-task flags (PF_*; PF_EXITING = 0x4).
    pub flags: u64,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// The controlling terminal's device number, kernel 32-bit encoding
    /// (0: none; see `tty::decode_kernel_dev`).
    pub tty_nr: u32,
    /// The foreground process group of that terminal (-1: none).
    pub tpgid: i32,
    pub num_threads: i64,
    pub start_time: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The wait status of a zombie.
    pub exit_code: i32,
    /// The signal its parent gets when it exits (clone's exit signal).
    pub exit_signal: i32,
}

/// Parses the text of /proc/PID/stat.
pub fn parse_stat(text: &str, path: &str) -> Result<Stat> {
    let open = text.find('(').ok_or_else(|| bad(path, "no '('"))?;
    let close = text.rfind(')').ok_or_else(|| bad(path, "no ')'"))?;
    let comm = text[open + 1..close].to_string();
    // Field 3 (state) is the first after the comm.
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let n = |i: usize| -> Result<u64> {
        f.get(i - 3)
            .and_then(|s| s.parse::<i64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| bad(path, format!("field {i} missing")))
    };
    Ok(Stat {
        comm,
        state: f.first().and_then(|s| s.chars().next()).unwrap_or('?'),
        flags: n(9)?,
        ppid: n(4)? as i32,
        pgrp: n(5)? as i32,
        session: n(6)? as i32,
        tty_nr: n(7)? as u32,
        tpgid: n(8)? as i32,
        num_threads: n(20)? as i64,
        start_time: n(22)?,
        start_code: n(26)?,
        end_code: n(27)?,
        start_stack: n(28)?,
        start_data: n(45)?,
        end_data: n(46)?,
        start_brk: n(47)?,
        arg_start: n(48)?,
        arg_end: n(49)?,
        env_start: n(50)?,
        env_end: n(51)?,
        exit_code: n(52).unwrap_or(0) as i32,
        exit_signal: n(38)? as i32,
    })
}

/// /proc/PID/stat of the main thread itself, even when it has exited
/// (registered with [`read_via`]): its comm and exit signal.
pub fn leader_stat(pid: i32) -> Result<Stat> {
    let path = format!("/proc/{pid}/stat");
    parse_stat(&read(&path)?, &path)
}

/// /proc/PID/stat (for a process registered with [`read_via`], its live
/// thread's: the memory layout fields are empty in the exited leader's).
pub fn stat(pid: i32) -> Result<Stat> {
    let path = format!("{}/stat", dir(pid));
    parse_stat(&read(&path)?, &path)
}

/// Fields of /proc/PID/status that Godwit uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: u32,
    pub tgid: i32,
    /// The parent's PID (PPid).
    pub ppid: i32,
    /// The PID of the task tracing this one (TracerPid), 0 if none.
    pub tracer_pid: i32,
    /// The PID in each nested PID namespace, outermost first.
    pub nspid: Vec<i32>,
    pub cap_eff: u64,
    /// Inheritable, permitted, bounding and ambient capability sets.
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    /// The no_new_privs bit.
    pub no_new_privs: bool,
    /// Signals with a handler (SigCgt) and ignored ones (SigIgn), bit n-1 for signal n.
    pub sig_cgt: u64,
    pub sig_ign: u64,
    /// Resident private anonymous memory (RssAnon), bytes.
    pub rss_anon: u64,
    /// All resident memory (VmRSS), bytes.
    pub vm_rss: u64,
    /// Seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Number of seccomp filters in the task's stack (Seccomp_filters).
    pub seccomp_filters: u32,
    /// Memory locked by mlock (VmLck), bytes.
    pub vm_lck: u64,
}

pub fn parse_status(text: &str, path: &str) -> Result<Status> {
    let mut st = Status::default();
    let four = |v: &str| -> Result<[u32; 4]> {
        let x: Vec<u32> = v
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        x.try_into().map_err(|_| bad(path, "bad Uid/Gid line"))
    };
    let hex = |v: &str, what: &str| -> Result<u64> {
        u64::from_str_radix(v, 16).map_err(|_| bad(path, format!("bad {what}")))
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Uid" => st.uids = four(v)?,
            "Gid" => st.gids = four(v)?,
            "Groups" => {
                st.groups = v
                    .split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect()
            }
            "Umask" => st.umask = u32::from_str_radix(v, 8).map_err(|_| bad(path, "bad Umask"))?,
            "Tgid" => st.tgid = v.parse().map_err(|_| bad(path, "bad Tgid"))?,
            "PPid" => st.ppid = v.parse().map_err(|_| bad(path, "bad PPid"))?,
            "TracerPid" => st.tracer_pid = v.parse().map_err(|_| bad(path, "bad TracerPid"))?,
            "NSpid" => {
                st.nspid = v
                    .split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect()
            }
            "CapEff" => st.cap_eff = hex(v, "CapEff")?,
            "CapInh" => st.cap_inh = hex(v, "CapInh")?,
            "CapPrm" => st.cap_prm = hex(v, "CapPrm")?,
            "CapBnd" => st.cap_bnd = hex(v, "CapBnd")?,
            "CapAmb" => st.cap_amb = hex(v, "CapAmb")?,
            "NoNewPrivs" => st.no_new_privs = v == "1",
            "Seccomp" => st.seccomp = v.parse().map_err(|_| bad(path, "bad Seccomp"))?,
            "Seccomp_filters" => {
                st.seccomp_filters = v.parse().map_err(|_| bad(path, "bad Seccomp_filters"))?
            }
            "SigCgt" => {
                st.sig_cgt = u64::from_str_radix(v, 16).map_err(|_| bad(path, "bad SigCgt"))?
            }
            "SigIgn" => {
                st.sig_ign = u64::from_str_radix(v, 16).map_err(|_| bad(path, "bad SigIgn"))?
            }
            "RssAnon" => st.rss_anon = kb_field(v),
            "VmRSS" => st.vm_rss = kb_field(v),
            "VmLck" => st.vm_lck = kb_field(v),
            _ => {}
        }
    }
    Ok(st)
}

/// A "NNN kB" field of /proc/PID/status, in bytes (0 if unreadable).
fn kb_field(v: &str) -> u64 {
    v.trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .map_or(0, |kb| kb * 1024)
}

/// /proc/PID/status (for a process registered with [`read_via`], its live
/// thread's: umask and the memory fields are missing in the exited
/// leader's).
pub fn status(pid: i32) -> Result<Status> {
    let path = format!("{}/status", dir(pid));
    parse_status(&read(&path)?, &path)
}

/// /proc/PID/task/TID/status: the per-thread fields (credentials,
/// capabilities, no_new_privs) of one thread.
pub fn task_status(pid: i32, tid: i32) -> Result<Status> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    parse_status(&read(&path)?, &path)
}

/// A small /proc file holding one integer (oom_score_adj, loginuid, ...).
pub fn read_int(path: &str) -> Result<i64> {
    let text = read(path)?;
    text.trim()
        .parse()
        .map_err(|_| bad(path, format!("not an integer: {:?}", text.trim())))
}

/// The thread ids of a process: the main thread first, the others in
/// ascending order (see [`main_thread_first`]).
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/task");
    let mut v: Vec<i32> = std::fs::read_dir(&path)
        .map_err(|e| bad(&path, e.to_string()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable_by_key(|&t| main_thread_first(pid, t));
    Ok(v)
}

/// The sort key putting the main thread of process `pid` (thread id ==
/// `pid`) before its other threads, and those in ascending order. Thread
/// ids are not ordered by age: once PIDs wrap at pid_max, a thread made
/// after the main thread may have a smaller id than it.
pub fn main_thread_first(pid: i32, tid: i32) -> (bool, i32) {
    (tid != pid, tid)
}

/// The open file descriptor numbers of a process, sorted.
pub fn fds(pid: i32) -> Result<Vec<i32>> {
    let path = format!("{}/fd", dir(pid));
    let mut v: Vec<i32> = std::fs::read_dir(&path)
        .map_err(|e| bad(&path, e.to_string()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// /proc/PID/fdinfo/FD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// open(2) flags, including O_CLOEXEC.
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    /// The locks held through this open file description ("lock:" lines):
    /// POSIX locks of the process, OFD locks, flock locks, leases.
    pub locks: Vec<LockLine>,
    /// A pidfd: the PID (or TID) it refers to, as this /proc sees it
    /// ("Pid:"); -1 once that process has exited and been reaped.
    pub pidfd_pid: Option<i32>,
}

/// One lock as /proc/locks and the "lock:" lines of fdinfo show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockLine {
    /// POSIX, OFDLCK, FLOCK, LEASE, DELEG, ...
    pub kind: String,
    /// ADVISORY (or MANDATORY, ACTIVE, BREAKING, ... for leases).
    pub mode: String,
    /// READ, WRITE (or UNLCK, RW, NONE).
    pub access: String,
    /// The owner's PID (-1 for OFD locks).
    pub pid: i32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
    pub start: u64,
    /// Last byte, inclusive; None: to the end of the file.
    pub end: Option<u64>,
}

/// Parses one lock line after its "N: " number, such as
/// `POSIX  ADVISORY  WRITE 1234 fe:00:1001 10 29`.
pub fn parse_lock_line(text: &str) -> Option<LockLine> {
    let mut w = text.split_whitespace();
    let kind = w.next()?.to_string();
    let mode = w.next()?.to_string();
    let access = w.next()?.to_string();
    let pid = w.next()?.parse().ok()?;
    let mut dev = w.next()?.split(':');
    let dev_major = u32::from_str_radix(dev.next()?, 16).ok()?;
    let dev_minor = u32::from_str_radix(dev.next()?, 16).ok()?;
    let ino = dev.next()?.parse().ok()?;
    let start = w.next()?.parse().ok()?;
    let end = match w.next()? {
        "EOF" => None,
        n => Some(n.parse().ok()?),
    };
    Some(LockLine {
        kind,
        mode,
        access,
        pid,
        dev_major,
        dev_minor,
        ino,
        start,
        end,
    })
}

/// Strips the "N: " (and, for a waiter, "N: -> ") in front of a lock line;
/// None for waiters (blocked requests, not locks).
fn lock_body(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(':')?;
    let rest = rest.trim_start();
    (!rest.starts_with("->")).then_some(rest)
}

/// Every lock held on this host (/proc/locks), waiters left out.
pub fn locks() -> Result<Vec<LockLine>> {
    let path = "/proc/locks";
    let text = read(path)?;
    text.lines()
        .filter_map(lock_body)
        .map(|l| parse_lock_line(l).ok_or_else(|| bad(path, format!("bad lock line {l:?}"))))
        .collect()
}

pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo> {
    let path = format!("{}/fdinfo/{fd}", dir(pid));
    let text = read(&path)?;
    let mut fi = FdInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => fi.pos = v.parse().map_err(|_| bad(&path, "bad pos"))?,
            "flags" => fi.flags = u32::from_str_radix(v, 8).map_err(|_| bad(&path, "bad flags"))?,
            "mnt_id" => fi.mnt_id = v.parse().unwrap_or(0),
            "ino" => fi.ino = v.parse().unwrap_or(0),
            "Pid" => {
                fi.pidfd_pid = Some(v.parse().map_err(|_| bad(&path, "bad Pid"))?);
            }
            "lock" => {
                let l = lock_body(v)
                    .and_then(parse_lock_line)
                    .ok_or_else(|| bad(&path, format!("bad lock line {v:?}")))?;
                fi.locks.push(l);
            }
            _ => {}
        }
    }
    Ok(fi)
}

/// The interest list of epoll descriptor `fd` of `pid`: (fd, events, data).
pub fn epoll_targets(pid: i32, fd: i32) -> Result<Vec<(i32, u32, u64)>> {
    let path = format!("{}/fdinfo/{fd}", dir(pid));
    parse_epoll_targets(&read(&path)?, &path)
}

pub fn parse_epoll_targets(text: &str, path: &str) -> Result<Vec<(i32, u32, u64)>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let field = |key: &str| {
            w.iter()
                .position(|x| *x == key)
                .and_then(|i| w.get(i + 1))
                .copied()
        };
        let parsed = (|| {
            Some((
                field("tfd:")?.parse().ok()?,
                u32::from_str_radix(field("events:")?, 16).ok()?,
                u64::from_str_radix(field("data:")?, 16).ok()?,
            ))
        })();
        out.push(parsed.ok_or_else(|| bad(path, format!("bad epoll line {line:?}")))?);
    }
    Ok(out)
}

/// The target of a /proc symlink (fd, cwd, exe, ...).
pub fn link(path: &str) -> Result<PathBuf> {
    std::fs::read_link(path).map_err(|e| bad(path, e.to_string()))
}

pub fn auxv(pid: i32) -> Result<Vec<u64>> {
    let path = format!("{}/auxv", dir(pid));
    let bytes = std::fs::read(&path).map_err(|e| bad(&path, e.to_string()))?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks of 8")))
        .collect())
}

pub fn personality(pid: i32) -> Result<u32> {
    let path = format!("{}/personality", dir(pid));
    let t = read(&path)?;
    u32::from_str_radix(t.trim(), 16).map_err(|_| bad(&path, "bad value"))
}

/// Resource limits 0..16 as /proc/PID/limits shows them, as (soft, hard)
/// pairs; "unlimited" is `u64::MAX` (RLIM_INFINITY). The file is readable
/// without injecting anything and without CAP_SYS_RESOURCE (which
/// prlimit64 on another user's process needs).
pub fn limits(pid: i32) -> Result<Vec<(u64, u64)>> {
    let path = format!("{}/limits", dir(pid));
    parse_limits(&read(&path)?, &path)
}

/// Rows after the heading, in resource order: a name padded to 25 columns
/// and a space, then soft, hard and (not always) units.
pub fn parse_limits(text: &str, path: &str) -> Result<Vec<(u64, u64)>> {
    let value = |v: Option<&str>| -> Result<u64> {
        match v {
            Some("unlimited") => Ok(u64::MAX),
            Some(n) => n
                .parse()
                .map_err(|_| bad(path, format!("bad limit value {n:?}"))),
            None => Err(bad(path, "a limit row without its values")),
        }
    };
    let mut out = Vec::with_capacity(16);
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let rest = line
            .get(26..)
            .ok_or_else(|| bad(path, format!("short limit row {line:?}")))?;
        let mut it = rest.split_whitespace();
        let soft = value(it.next())?;
        let hard = value(it.next())?;
        out.push((soft, hard));
    }
    if out.len() < 16 {
        return Err(bad(path, format!("{} limit rows, expected 16", out.len())));
    }
    Ok(out)
}

/// The nice value of thread `tid` (field 19 of /proc/PID/task/TID/stat):
/// also the one a real-time thread returns to if made SCHED_OTHER again.
pub fn task_nice(pid: i32, tid: i32) -> Result<i32> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let text = read(&path)?;
    text.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(16))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(&path, "no nice field"))
}

/// The VMAs of `pid` that /proc/PID/numa_maps shows with a policy other
/// than "default" (their own, from mbind, or else the thread's): their
/// start addresses. Empty without CONFIG_NUMA. (Reading it walks every
/// resident page: worth it for many small areas, not for big ones.)
pub fn vma_policy_starts(pid: i32) -> Result<Vec<u64>> {
    let path = format!("{}/numa_maps", dir(pid));
    if !std::path::Path::new(&path).exists() {
        return Ok(Vec::new());
    }
    let text = read(&path)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let (Some(start), Some(policy)) = (w.next(), w.next()) else {
            continue;
        };
        if policy == "default" {
            continue;
        }
        out.push(u64::from_str_radix(start, 16).map_err(|_| bad(&path, "bad address"))?);
    }
    Ok(out)
}

pub fn comm(pid: i32, tid: i32) -> Result<String> {
    Ok(read(&format!("/proc/{pid}/task/{tid}/comm"))?
        .trim_end_matches('\n')
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_thread_first_after_a_pid_wrap() {
        // Main thread 32766; its later threads got 32767, then 301 and 300
        // after PIDs wrapped at pid_max.
        let mut v = vec![301, 32767, 300, 32766];
        v.sort_by_key(|&t| main_thread_first(32766, t));
        assert_eq!(v, [32766, 300, 301, 32767]);
    }

    #[test]
    fn lock_lines() {
        let l = parse_lock_line("POSIX  ADVISORY  WRITE 6420 fe:00:10011155 10 29").unwrap();
        assert_eq!(
            (l.kind.as_str(), l.access.as_str(), l.pid),
            ("POSIX", "WRITE", 6420)
        );
        assert_eq!((l.dev_major, l.dev_minor, l.ino), (0xfe, 0, 10011155));
        assert_eq!((l.start, l.end), (10, Some(29)));
        let l = parse_lock_line("OFDLCK ADVISORY  READ -1 08:01:77 100 EOF").unwrap();
        assert_eq!((l.pid, l.end), (-1, None));
        assert_eq!(
            lock_body("3: FLOCK  ADVISORY  WRITE 1 00:1f:2 0 EOF"),
            Some("FLOCK  ADVISORY  WRITE 1 00:1f:2 0 EOF")
        );
        assert_eq!(
            lock_body("3: -> FLOCK  ADVISORY  WRITE 1 00:1f:2 0 EOF"),
            None
        );
    }

    #[test]
    fn map_lines() {
        let e = parse_map_line(
            "7f309e796000-7f309e79a000 r--p 00000000 00:00 0                          [vvar]",
        )
        .unwrap();
        assert_eq!(e.start, 0x7f309e796000);
        assert_eq!(e.name, "[vvar]");
        assert!(e.read && !e.write && !e.shared);
        let e = parse_map_line("55d0c0a00000-55d0c0a01000 rw-s 00001000 fe:01 1234   /tmp/a b")
            .unwrap();
        assert_eq!((e.dev_major, e.dev_minor, e.inode), (0xfe, 1, 1234));
        assert_eq!(e.name, "/tmp/a b");
        assert!(e.shared && e.write);
        let e = parse_map_line("55d0c0a00000-55d0c0a01000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(e.name, "");
        assert!(parse_map_line("garbage").is_none());
    }

    #[test]
    fn own_process() {
        let me = std::process::id() as i32;
        let maps = smaps(me).unwrap();
        assert!(maps.iter().any(|m| m.name == "[stack]" && m.has_flag("gd")));
        let st = stat(me).unwrap();
        assert!(st.start_code > 0 && st.arg_start > 0);
        let s = status(me).unwrap();
        assert_eq!(s.tgid, me);
        assert!(tasks(me).unwrap().contains(&me));
        assert!(fds(me).unwrap().contains(&0) || fds(me).is_ok());
        assert!(auxv(me).unwrap().len() > 4);
    }

    /// A process read through one of its threads: per-thread entries come
    /// from /proc/PID/task/TID until end_read_via. (A made-up PID: only
    /// the path is built; our own is read by the other tests meanwhile.)
    #[test]
    fn read_via_a_thread() {
        let pid = i32::MAX - 7;
        assert_eq!(dir(pid), format!("/proc/{pid}"));
        read_via(pid, pid + 1);
        assert_eq!(via(pid), pid + 1);
        assert_eq!(dir(pid), format!("/proc/{pid}/task/{}", pid + 1));
        end_read_via(pid);
        assert_eq!(via(pid), pid);
        assert_eq!(dir(pid), format!("/proc/{pid}"));
        let me = std::process::id() as i32;
        assert_eq!(leader_stat(me).unwrap().comm, stat(me).unwrap().comm);
    }

    #[test]
    fn limits_as_prlimit_says() {
        let me = std::process::id() as i32;
        let rows = limits(me).unwrap();
        for (res, row) in rows.iter().enumerate().take(16) {
            let mut l = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: prlimit64 on ourselves, reading into a local struct.
            let rc = unsafe { libc::prlimit64(0, res as _, std::ptr::null(), &mut l) };
            assert_eq!(rc, 0);
            assert_eq!(*row, (l.rlim_cur, l.rlim_max), "resource {res}");
        }
        let t = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax nice priority         0                    0                    \n";
        assert!(parse_limits(t, "x").is_err(), "two rows are not all");
        let mut full = String::from(t);
        for _ in 0..14 {
            full.push_str(
                "Max locked memory         8388608              unlimited            bytes     \n",
            );
        }
        let v = parse_limits(&full, "x").unwrap();
        assert_eq!(v[0], (u64::MAX, u64::MAX));
        assert_eq!(v[1], (0, 0));
        assert_eq!(v[15], (8388608, u64::MAX));
        assert!(parse_limits(&full.replace("8388608", "8x"), "x").is_err());
    }

    #[test]
    fn epoll_lines() {
        let t = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\ntfd:        7 events:       19 data:                7  pos:0 ino:7cc8 sdev:9\ntfd:       12 events: 80000001 data: ffffffffffffffff  pos:0 ino:1 sdev:f\n";
        let v = parse_epoll_targets(t, "x").unwrap();
        assert_eq!(v, vec![(7, 0x19, 7), (12, 0x8000_0001, u64::MAX)]);
        assert!(parse_epoll_targets("tfd: x events: 1 data: 2", "x").is_err());
    }

    #[test]
    fn stat_with_odd_comm() {
        // Fields 3..=52; field i holds i, except the ones checked below.
        let mut f: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        f[0] = "S".into();
        let line = format!("42 (a) b (c)) {}", f.join(" "));
        let s = parse_stat(&line, "x").unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!((s.state, s.ppid, s.pgrp, s.session), ('S', 4, 5, 6));
        assert_eq!((s.start_code, s.end_code, s.start_stack), (26, 27, 28));
        assert_eq!((s.start_data, s.end_data, s.start_brk), (45, 46, 47));
        assert_eq!(
            (s.arg_start, s.arg_end, s.env_start, s.env_end),
            (48, 49, 50, 51)
        );
        assert!(parse_stat("nonsense", "x").is_err());
    }
}

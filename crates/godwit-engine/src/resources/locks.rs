//! File locks: POSIX record locks (fcntl F_SETLK; owned by the process),
//! OFD locks (F_OFD_SETLK; owned by the open file description) and flock
//! locks (owned by the description). The "lock:" lines of
//! /proc/PID/fdinfo/FD tell which descriptor holds which lock; /proc/locks,
//! which other locks exist on the same files. Each lock is taken again on
//! restore, inside the process, through the restored descriptor, once its
//! descriptors are in place: a POSIX lock by the process that held it, an
//! OFD or flock lock by a process holding its description (which the
//! restore shares again as it was, across fork and dup).
//!
//! Refused at dump time, naming fd, path and kind: leases and delegations,
//! locks that are not advisory, locks on anything but regular files and
//! directories, and a lock on the same file held outside the dumped tree.

use crate::error::{EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{Fd, FdKind, FileLock, Process};
use godwit_sys::proc::{self, LockLine};
use std::collections::HashMap;

pub const POSIX: u32 = 1;
pub const OFD: u32 = 2;
pub const FLOCK: u32 = 3;

const F_SETLK: u64 = 6;
const F_OFD_SETLK: u64 = 37;
const F_RDLCK: i16 = 0;
const F_WRLCK: i16 = 1;
const LOCK_SH: u64 = 1;
const LOCK_EX: u64 = 2;
const LOCK_NB: u64 = 4;

fn kind_name(kind: u32) -> &'static str {
    match kind {
        POSIX => "POSIX record lock (fcntl)",
        OFD => "open file description lock (F_OFD_SETLK)",
        FLOCK => "flock() lock",
        _ => "lock",
    }
}

fn refuse(pid: i32, f: &Fd, what: String) -> EngineError {
    EngineError::Unsupported {
        pid,
        what: format!("fd {} ({}): {what}", f.fd, f.path),
    }
}

/// The locks `fdinfo` shows for descriptor `f` of `pid`.
pub fn dump(pid: i32, f: &Fd, lines: &[LockLine]) -> Result<Vec<FileLock>> {
    let mut out = Vec::new();
    for l in lines {
        let kind = match l.kind.as_str() {
            "POSIX" => POSIX,
            "OFDLCK" => OFD,
            "FLOCK" => FLOCK,
            "LEASE" | "DELEG" => {
                return Err(refuse(
                    pid,
                    f,
                    format!(
                        "a {} {} lease, which restore cannot take again exactly (it would break other openers' access)",
                        l.mode, l.access
                    ),
                ))
            }
            other => return Err(refuse(pid, f, format!("a lock of kind {other}"))),
        };
        if l.mode != "ADVISORY" {
            return Err(refuse(
                pid,
                f,
                format!("a {} {} lock", l.mode, kind_name(kind)),
            ));
        }
        let write = match l.access.as_str() {
            "READ" => false,
            "WRITE" => true,
            a => {
                return Err(refuse(
                    pid,
                    f,
                    format!("a {} with access {a}", kind_name(kind)),
                ))
            }
        };
        if f.kind != FdKind::Regular as i32 && f.kind != FdKind::Directory as i32 {
            return Err(refuse(
                pid,
                f,
                format!(
                    "a {} on something other than a regular file or directory",
                    kind_name(kind)
                ),
            ));
        }
        out.push(FileLock {
            kind,
            write,
            start: l.start,
            len: l.end.map_or(0, |e| e + 1 - l.start),
            dev_major: l.dev_major,
            dev_minor: l.dev_minor,
            ino: l.ino,
        });
    }
    Ok(out)
}

/// What tells two locks apart on one file: kind, access, range, and the
/// owner for a POSIX lock (its process).
type LockKey = (u32, bool, u64, u64, i32);

/// Across the frozen tree (after `files::link_descriptions`): refuses a
/// lock on a file the tree holds locks on that no process of the tree holds
/// (another process's, or a description outside the tree).
pub fn check_tree(procs: &[Process]) -> Result<()> {
    // Each lock once: POSIX per process, OFD and flock per description.
    let mut ours: HashMap<(u32, u32, u64), Vec<LockKey>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut holder: HashMap<(u32, u32, u64), (i32, &Fd)> = HashMap::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        for f in &p.fds {
            for l in &f.locks {
                let owner = if l.kind == POSIX {
                    p.pid as i64
                } else {
                    -(f.file_id as i64)
                };
                if !seen.insert((
                    owner,
                    l.kind,
                    l.write,
                    l.start,
                    l.len,
                    l.ino,
                    l.dev_major,
                    l.dev_minor,
                )) {
                    continue;
                }
                let file = (l.dev_major, l.dev_minor, l.ino);
                let pid = if l.kind == POSIX { p.pid } else { -1 };
                ours.entry(file)
                    .or_default()
                    .push((l.kind, l.write, l.start, l.len, pid));
                holder.entry(file).or_insert((p.pid, f));
            }
        }
    }
    if ours.is_empty() {
        return Ok(());
    }
    let all = proc::locks().map_err(|source| EngineError::Sys {
        pid: procs[0].pid,
        stage: "reading /proc/locks",
        source,
    })?;
    for l in all {
        let file = (l.dev_major, l.dev_minor, l.ino);
        let Some(list) = ours.get_mut(&file) else {
            continue;
        };
        let kind = match l.kind.as_str() {
            "POSIX" => POSIX,
            "OFDLCK" => OFD,
            "FLOCK" => FLOCK,
            _ => 0,
        };
        let key = (
            kind,
            l.access == "WRITE",
            l.start,
            l.end.map_or(0, |e| e + 1 - l.start),
            if kind == POSIX { l.pid } else { -1 },
        );
        if let Some(i) = list.iter().position(|k| *k == key) {
            list.swap_remove(i);
            continue;
        }
        let (pid, f) = holder[&file];
        let who = match kind {
            POSIX | FLOCK => format!("process {} outside the dumped tree", l.pid),
            _ => "an open file description outside the dumped tree".to_string(),
        };
        return Err(refuse(
            pid,
            f,
            format!(
                "the file it locks is also locked by {who} ({} {} {} from byte {}): restore could not keep both",
                l.kind, l.mode, l.access, l.start
            ),
        ));
    }
    Ok(())
}

/// Takes the locks of process `p` again through its descriptors, now in
/// place. Uses scratch bytes [0, 32).
pub fn restore(r: &Remote, p: &Process) -> Result<()> {
    let pid = r.pid;
    for f in &p.fds {
        for l in &f.locks {
            let ret = match l.kind {
                POSIX | OFD => {
                    // struct flock: l_type, l_whence (SEEK_SET), l_start,
                    // l_len, l_pid (0, as OFD locks require).
                    let mut b = [0u8; 32];
                    let t = if l.write { F_WRLCK } else { F_RDLCK };
                    b[0..2].copy_from_slice(&t.to_le_bytes());
                    b[8..16].copy_from_slice(&l.start.to_le_bytes());
                    b[16..24].copy_from_slice(&l.len.to_le_bytes());
                    let a = r.put(0, &b).restoring(pid, "taking file locks")?;
                    let cmd = if l.kind == POSIX {
                        F_SETLK
                    } else {
                        F_OFD_SETLK
                    };
                    r.inj()
                        .run(libc::SYS_fcntl, [f.fd as u64, cmd, a, 0, 0, 0])
                        .restoring(pid, "taking file locks")?
                        .ret
                }
                FLOCK => {
                    let op = if l.write { LOCK_EX } else { LOCK_SH };
                    r.inj()
                        .run(libc::SYS_flock, [f.fd as u64, op | LOCK_NB, 0, 0, 0, 0])
                        .restoring(pid, "taking file locks")?
                        .ret
                }
                k => {
                    return Err(EngineError::BadImage(format!(
                        "process {}, fd {}: unknown lock kind {k}",
                        p.pid, f.fd
                    )))
                }
            };
            if ret < 0 {
                let e = std::io::Error::from_raw_os_error(-ret as i32);
                let range = match l.len {
                    0 => format!("bytes {}..end of file", l.start),
                    n => format!("bytes {}..{}", l.start, l.start + n),
                };
                let busy = matches!(-ret as i32, libc::EAGAIN | libc::EACCES);
                return Err(EngineError::Refused {
                    pid: p.pid,
                    what: format!(
                        "fd {} ({}): its {} {} ({range}) could not be taken again ({e}){}",
                        f.fd,
                        f.path,
                        if l.write { "write" } else { "read" },
                        kind_name(l.kind),
                        if busy {
                            "; another process holds a conflicting lock now (the original, if it was dumped with --leave-running and still runs?)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
    }
    Ok(())
}

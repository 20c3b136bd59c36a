//! Files: the descriptor table (regular files, directories, a few character
//! devices, pipes inside the process and FIFOs with their unread data,
//! memfds) and the cwd. Terminals are classified here and handled by
//! `resources::tty`.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::{anon, deleted, external, memory, pidfd, sockets, tty};
use crate::schema::{EpollTarget, Extent, External, Fd, FdKind, Pipe, Process};
use godwit_sys::{proc, process};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

/// Character devices that hold no state and can simply be opened again.
const STATELESS_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

pub struct Files {
    pub fds: Vec<Fd>,
    pub pipes: Vec<Pipe>,
    pub cwd: String,
    /// The working directory when it was removed (see `Process::cwd_deleted`).
    pub cwd_deleted: Option<Fd>,
}

fn unsupported(pid: i32, fd: i32, what: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported {
        pid,
        what: format!("fd {fd} ({what})"),
    }
}

/// Reads the descriptor table of a frozen process. `max_deleted`: the
/// most data (bytes, holes not counted) kept of one deleted-but-open file.
pub fn dump(pid: i32, max_deleted: u64) -> Result<Files> {
    let cwd = proc::link(&format!("{}/cwd", godwit_sys::proc::dir(pid)))
        .dumping(pid, "reading the cwd")?
        .to_string_lossy()
        .into_owned();
    let cwd_deleted = dump_deleted_cwd(pid, &cwd)?;
    let mut fds = Vec::new();
    let mut lock_lines = Vec::new();
    let mut pidfd: Option<OwnedFd> = None;
    for fd in proc::fds(pid).dumping(pid, "listing file descriptors")? {
        fds.push(describe(
            pid,
            fd,
            &cwd,
            &mut pidfd,
            &mut lock_lines,
            max_deleted,
        )?);
    }
    // What belongs to the open file description itself: the pipe buffer
    // size, the owner of I/O signals (O_ASYNC, SIGURG) and their signal.
    for e in fds.iter_mut().filter(|e| !is_o_path(e)) {
        let stage = "reading descriptor owners and pipe sizes";
        let pfd = match &pidfd {
            Some(p) => p,
            None => pidfd.insert(process::pidfd_open(pid).dumping(pid, stage)?),
        };
        let ours = process::pidfd_getfd(pfd, e.fd).dumping(pid, stage)?;
        if is_pipe_like(e) {
            e.pipe_size = process::pipe_size(&ours).dumping(pid, stage)?;
        }
        (e.owner_type, e.owner_pid) = process::fd_owner(&ours).dumping(pid, stage)?;
        e.signal = process::fd_signal(&ours).dumping(pid, stage)?;
    }
    // Each watch is keyed by (description, fd number it was added under):
    // find the fd that holds its description now (the number may have
    // been closed since, even reused by another file).
    let numbers: Vec<i32> = fds.iter().map(|x| x.fd).collect();
    for f in fds.iter_mut().filter(|f| f.kind == FdKind::Epoll as i32) {
        let epfd = f.fd;
        let mut seen: HashMap<i32, u32> = HashMap::new();
        for t in &mut f.epoll {
            let toff = seen.entry(t.fd).or_default();
            let this = *toff;
            *toff += 1;
            let is = |fd: i32| {
                process::epoll_target_is(pid, epfd, t.fd, this, fd)
                    .dumping(pid, "reading epoll interest lists")
            };
            if numbers.contains(&t.fd) && is(t.fd)? {
                continue;
            }
            let mut holder = None;
            for &n in numbers.iter().filter(|&&n| n != t.fd && n != epfd) {
                if is(n)? {
                    holder = Some(n);
                    break;
                }
            }
            // None: not held here; fine if another process sharing this
            // epoll description (a fork child's copy) is the one that
            // makes it again and holds it (link_descriptions checks).
            t.held_at = Some(holder.unwrap_or(NOT_HELD));
        }
    }
    for (fd, lines) in lock_lines {
        if let Some(e) = fds.iter_mut().find(|e| e.fd == fd) {
            e.locks = crate::resources::locks::dump(pid, e, &lines)?;
        }
    }
    let pipes = Vec::new();
    let cwd = match &cwd_deleted {
        Some(d) => d.path.clone(),
        None => cwd,
    };
    Ok(Files {
        fds,
        pipes,
        cwd,
        cwd_deleted,
    })
}

/// The PID and the rest of a path under /proc/PID/ (`/proc/12/stat` →
/// (12, "stat")); None for other paths (/proc/meminfo, /proc/self is
/// never a link target: it reads as /proc/PID).
fn proc_pid_path(path: &str) -> Option<(i32, &str)> {
    let rest = path.strip_prefix("/proc/")?;
    let (num, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let pid = num
        .parse()
        .ok()
        .filter(|_| num.bytes().all(|b| b.is_ascii_digit()))?;
    Some((pid, tail))
}

/// The path process `own_pid` (its PID in the image) opens a file of `path`
/// by: a file under its own /proc/PID/ is opened under /proc/self/, so that
/// it is the restored process's, whatever PID it has on this host.
fn open_path(path: &str, own_pid: i32) -> std::borrow::Cow<'_, str> {
    match proc_pid_path(path) {
        Some((p, "")) if p == own_pid => "/proc/self".into(),
        Some((p, tail)) if p == own_pid => format!("/proc/self/{tail}").into(),
        _ => path.into(),
    }
}

/// Refuses files under /proc/PID/ that the restore could not open as the
/// same process's: PID must be a process of the tree that holds the
/// description, and every other holder one of its descendants (so that the
/// description is made again in PID itself, through /proc/self).
fn check_proc_files(procs: &[Process]) -> Result<()> {
    let parent = parents(procs);
    let index: HashMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let below = |mut i: usize, top: usize| loop {
        if i == top {
            break true;
        }
        match parent[i] {
            Some(p) => i = p,
            None => break false,
        }
    };
    for (i, p) in procs.iter().enumerate() {
        for f in p.fds.iter().filter(|f| {
            matches!(
                FdKind::try_from(f.kind),
                Ok(FdKind::Regular | FdKind::Directory)
            ) && !f.deleted
        }) {
            let Some((owner, _)) = proc_pid_path(&f.path) else {
                continue;
            };
            let ok = index.get(&owner).is_some_and(|&o| {
                procs[o].fds.iter().any(|g| g.file_id == f.file_id) && below(i, o)
            });
            if !ok {
                return Err(unsupported(
                    p.pid,
                    f.fd,
                    format!(
                        "{}: a /proc file of process {owner}, which {}; it would name another process after a restore",
                        f.path,
                        if index.contains_key(&owner) {
                            "did not open it itself for this process or its children"
                        } else if procs.iter().any(|q| q.threads.iter().any(|t| t.tid == owner)) {
                            "is a thread (not its thread group leader) of the tree: its files cannot be opened before its threads exist"
                        } else {
                            "is not in the dumped tree"
                        }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `f` is an O_PATH descriptor (only F_GETFD/F_SETFD/F_GETFL and
/// dups work on it: no offset, owner, signal or status flags).
pub(crate) fn is_o_path(f: &Fd) -> bool {
    f.flags & libc::O_PATH as u32 != 0
}

/// Describes fd `fd` of frozen process `pid` (its kind and what restores
/// it); `pidfd` is opened on first need; lock lines are added to `locks`.
fn describe(
    pid: i32,
    fd: i32,
    cwd: &str,
    pidfd: &mut Option<OwnedFd>,
    lock_lines: &mut Vec<(i32, Vec<proc::LockLine>)>,
    max_deleted: u64,
) -> Result<Fd> {
    let target = proc::link(&format!("{}/fd/{fd}", godwit_sys::proc::dir(pid)))
        .dumping(pid, "reading file descriptors")?
        .to_string_lossy()
        .into_owned();
    let info = proc::fdinfo(pid, fd).dumping(pid, "reading file descriptors")?;
    if !info.locks.is_empty() {
        lock_lines.push((fd, info.locks.clone()));
    }
    let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    let mut e = Fd {
        fd,
        flags,
        cloexec,
        pos: info.pos,
        ..Default::default()
    };
    if let Some(ino) = target
        .strip_prefix("pipe:[")
        .and_then(|s| s.strip_suffix(']'))
    {
        let ino: u64 = ino.parse().map_err(|_| unsupported(pid, fd, &target))?;
        e.kind = FdKind::Pipe as i32;
        e.pipe_id = ino;
        e.path.clear();
        return Ok(e);
    }
    if let Some(ino) = target
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
    {
        let ino: u64 = ino.parse().map_err(|_| unsupported(pid, fd, &target))?;
        let pfd = match &pidfd {
            Some(p) => p,
            None => pidfd.insert(process::pidfd_open(pid).dumping(pid, "reading sockets")?),
        };
        let ours = process::pidfd_getfd(pfd, fd).dumping(pid, "reading sockets")?;
        let (kind, socket) = sockets::dump(pid, fd, ino, &ours, cwd)?;
        e.kind = kind as i32;
        e.socket = Some(socket);
        return Ok(e);
    }
    if pidfd::is_pidfd(&target) {
        pidfd::dump(pid, fd, info.pidfd_pid, &mut e)?;
        return Ok(e);
    }
    if target == "anon_inode:[eventpoll]" {
        e.kind = FdKind::Epoll as i32;
        e.epoll = proc::epoll_targets(pid, fd)
            .dumping(pid, "reading epoll interest lists")?
            .into_iter()
            .map(|(fd, events, data)| EpollTarget {
                fd,
                events,
                data,
                held_at: None,
            })
            .collect();
        return Ok(e);
    }
    if let Some(name) = target.strip_prefix("anon_inode:") {
        anon::dump(pid, fd, name, &mut e)?;
        return Ok(e);
    }
    if !target.starts_with('/') {
        let kind = target.split(':').next().unwrap_or("unknown");
        return Err(unsupported(pid, fd, format!("{kind}: {target}")));
    }
    if let Some(name) = memory::memfd_name(&target) {
        if describe_memfd(pid, fd, name, &mut e)? {
            return Ok(e);
        }
    }
    if let Some(path) = target.strip_suffix(" (deleted)") {
        e.path = path.to_string();
        save_deleted(pid, fd, pidfd, &mut e, max_deleted)?;
        return Ok(e);
    }
    let md = std::fs::metadata(format!("{}/fd/{fd}", godwit_sys::proc::dir(pid)))
        .map_err(|err| unsupported(pid, fd, format!("{target}: {err}")))?;
    let ft = md.file_type();
    e.path = target.clone();
    if is_o_path(&e) {
        // A path-only descriptor: no offset, owner or data; opened
        // again with O_PATH. A symlink is only reachable so with
        // O_NOFOLLOW, which it is opened with again.
        e.kind = if ft.is_dir() {
            FdKind::Directory
        } else {
            FdKind::Regular
        } as i32;
        if ft.is_symlink() {
            e.flags |= libc::O_NOFOLLOW as u32;
        }
        e.size = md.size();
        return Ok(e);
    }
    if ft.is_file() {
        e.kind = FdKind::Regular as i32;
        e.size = md.size();
        e.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    } else if ft.is_dir() {
        e.kind = FdKind::Directory as i32;
    } else if ft.is_char_device() && STATELESS_DEVICES.contains(&target.as_str()) {
        e.kind = FdKind::CharDevice as i32;
    } else if ft.is_char_device() {
        let pfd = match &pidfd {
            Some(p) => p,
            None => pidfd.insert(process::pidfd_open(pid).dumping(pid, "reading terminals")?),
        };
        if !tty::dump(pid, fd, &target, &md, pfd, &mut e)? {
            return Err(unsupported(pid, fd, format!("character device {target}")));
        }
    } else if ft.is_fifo() {
        e.kind = FdKind::Fifo as i32;
        e.pipe_id = memory::shmem_id_of(md.dev(), md.ino());
    } else {
        return Err(unsupported(pid, fd, target.clone()));
    }
    Ok(e)
}

/// Kinds a descriptor in flight (passed in a queued unix socket message)
/// may be: those made again from what the `Fd` alone holds.
const PASSABLE: &[FdKind] = &[
    FdKind::Regular,
    FdKind::Directory,
    FdKind::CharDevice,
    FdKind::Pipe,
    FdKind::EventFd,
    FdKind::TimerFd,
    FdKind::UnixSocket,
];

/// Describes a descriptor in flight, installed in godwit by a peek of the
/// queue that carries it (`fd`), like any fd of a process. Err: a readable
/// reason it cannot be kept.
pub(crate) fn describe_passed(fd: &OwnedFd) -> std::result::Result<Fd, String> {
    let me = std::process::id() as i32;
    let raw = fd.as_raw_fd();
    let mut pidfd = None;
    let mut locks = Vec::new();
    let mut e =
        describe(me, raw, "/", &mut pidfd, &mut locks, MAX_DELETED).map_err(|e| e.to_string())?;
    let kind = FdKind::try_from(e.kind).unwrap_or(FdKind::Regular);
    if !PASSABLE.contains(&kind) || e.deleted {
        let what = if e.path.is_empty() {
            format!("{kind:?}")
        } else {
            format!("{kind:?} {}", e.path)
        };
        return Err(format!(
            "a descriptor in flight of a kind that cannot be passed again yet ({what})"
        ));
    }
    if !locks.is_empty() {
        return Err(format!("a descriptor in flight holding locks ({})", e.path));
    }
    if is_pipe_like(&e) {
        e.pipe_size = process::pipe_size(fd).map_err(|e| e.to_string())?;
    }
    (e.owner_type, e.owner_pid) = process::fd_owner(fd).map_err(|e| e.to_string())?;
    e.signal = process::fd_signal(fd).map_err(|e| e.to_string())?;
    Ok(e)
}

fn is_pipe_like(f: &Fd) -> bool {
    f.kind == FdKind::Pipe as i32 || f.kind == FdKind::Fifo as i32
}

/// The largest pipe buffer an unprivileged process may ask for here
/// (/proc/sys/fs/pipe-max-size).
fn pipe_max_size() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether godwit itself has CAP_SYS_RESOURCE (capability 24), which lifts
/// pipe-max-size.
fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Refuses, before anything is created, the restore of process `pid` when
/// one of its pipes or FIFOs had a buffer larger than this host lets godwit
/// make (above pipe-max-size, without CAP_SYS_RESOURCE).
pub fn check_pipe_sizes(pid: i32, fds: &[Fd]) -> Result<()> {
    let Some(max) = pipe_max_size() else {
        return Ok(());
    };
    for f in fds.iter().filter(|f| is_pipe_like(f)) {
        if u64::from(f.pipe_size) > max && !has_cap_sys_resource() {
            return Err(EngineError::Refused {
                pid,
                what: pipe_size_refusal(f, &format!("this host's fs.pipe-max-size is {max} bytes and godwit lacks CAP_SYS_RESOURCE")),
            });
        }
    }
    Ok(())
}

fn pipe_size_refusal(f: &Fd, why: &str) -> String {
    let what = if f.kind == FdKind::Fifo as i32 {
        format!("the FIFO {}", f.path)
    } else {
        format!("pipe:[{}]", f.pipe_id)
    };
    format!(
        "fd {} ({what}) had a {}-byte buffer, which cannot be made again ({why}); \
         raise the limit (sysctl fs.pipe-max-size={}) or restore with CAP_SYS_RESOURCE",
        f.fd, f.pipe_size, f.pipe_size
    )
}

/// Gives new pipe or FIFO descriptor `fd` (of `r`) the buffer size it had.
fn restore_pipe_size(r: &Remote, fd: u64, f: &Fd) -> Result<()> {
    if f.pipe_size == 0 || !is_pipe_like(f) {
        return Ok(());
    }
    r.call(
        "fcntl(F_SETPIPE_SZ)",
        libc::SYS_fcntl,
        [fd, libc::F_SETPIPE_SZ as u64, f.pipe_size as u64, 0, 0, 0],
    )
    .map_err(|e| EngineError::Refused {
        pid: r.pid,
        what: pipe_size_refusal(f, &e.to_string()),
    })?;
    Ok(())
}

fn is_write_end(f: &Fd) -> bool {
    f.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32
}

/// Describes fd `fd`, whose link names memfd `name`, as a memfd; false when
/// it is not one after all (a deleted file that happens to have such a path).
fn describe_memfd(pid: i32, fd: i32, name: &str, e: &mut Fd) -> Result<bool> {
    let link = format!("{}/fd/{fd}", godwit_sys::proc::dir(pid));
    let fs = godwit_sys::process::fs_type(&link).dumping(pid, "reading a memfd")?;
    // A hugetlb memfd (MFD_HUGETLB) too: its shmem object keeps the page
    // size (ShmemObject::huge_page_size, see memory::collect_shmem).
    if fs != libc::TMPFS_MAGIC && fs != libc::HUGETLBFS_MAGIC {
        return Ok(false);
    }
    let md =
        std::fs::metadata(&link).map_err(|err| unsupported(pid, fd, format!("{link}: {err}")))?;
    e.kind = FdKind::Memfd as i32;
    e.path = name.to_string();
    e.shmem_id = memory::shmem_id_of(md.dev(), md.ino());
    e.size = md.size();
    Ok(true)
}

fn can_read(f: &Fd) -> bool {
    f.flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32
}

/// Across a frozen tree (parents first): gives every open file description
/// an id (`Fd::file_id`; fds sharing one description, in one process or
/// several, get the same id), marks the pipe ends whose other end is not in
/// the tree as connected outside it (`resources::external`), and saves each
/// pipe's unread data once, with its first holder. `accept_pending`: the
/// processes end after the dump, so godwit may accept the connections
/// waiting on their unix listeners (`sockets::unix`).
pub fn link_descriptions(procs: &mut [Process], accept_pending: bool) -> Result<()> {
    // Candidates for sharing have the same kind, path, pipe, socket and
    // access mode; kcmp then tells whether two fds are one description.
    type Key = (i32, String, u64, u32, u64);
    for p in procs.iter().filter(|p| !p.zombie) {
        memory::check_deleted_maps(p)?;
    }
    memory::share_deleted_files(procs)?;
    let mut reps: HashMap<Key, Vec<(i32, i32, u64)>> = HashMap::new();
    let mut next_id = 1u64;
    for p in procs.iter_mut().filter(|p| !p.zombie) {
        let pid = p.pid;
        for f in &mut p.fds {
            let key = (
                f.kind,
                f.path.clone(),
                f.pipe_id,
                f.flags & libc::O_ACCMODE as u32,
                f.socket.as_ref().map_or(0, |s| s.ino),
            );
            let list = reps.entry(key).or_default();
            let mut found = None;
            for &(rpid, rfd, id) in list.iter() {
                if process::same_file(pid, f.fd, rpid, rfd)
                    .dumping(pid, "comparing file descriptors")?
                {
                    found = Some(id);
                    break;
                }
            }
            f.file_id = match found {
                Some(id) => id,
                None => {
                    list.push((pid, f.fd, next_id));
                    next_id += 1;
                    next_id - 1
                }
            };
        }
    }
    check_proc_files(procs)?;
    // Unix sockets: peers inside the tree; queues read once, with the
    // descriptions in flight in them, which godwit holds meanwhile. These
    // get ids too, the same as a process's fd of the same description.
    let inflight = sockets::link_unix(procs, accept_pending)?;
    let me = std::process::id() as i32;
    for inf in &inflight {
        let f = inf.get_mut(procs);
        let key = (
            f.kind,
            f.path.clone(),
            f.pipe_id,
            f.flags & libc::O_ACCMODE as u32,
            f.socket.as_ref().map_or(0, |s| s.ino),
        );
        let list = reps.entry(key).or_default();
        let mut found = None;
        for &(rpid, rfd, id) in list.iter() {
            if process::same_file(me, f.fd, rpid, rfd)
                .dumping(inf.pid, "comparing descriptors in flight")?
            {
                found = Some(id);
                break;
            }
        }
        f.file_id = match found {
            Some(id) => id,
            None => {
                list.push((me, f.fd, next_id));
                next_id += 1;
                next_id - 1
            }
        };
    }
    // Pipes: both ends inside the tree; data read once.
    // Readers are (pid, fd): a process's, or godwit's for an end in flight.
    let mut ends: BTreeMap<u64, (Option<(i32, i32)>, bool)> = BTreeMap::new();
    for p in procs.iter() {
        for f in p.fds.iter().filter(|f| f.kind == FdKind::Pipe as i32) {
            let e = ends.entry(f.pipe_id).or_insert((None, false));
            if is_write_end(f) {
                e.1 = true;
            } else if e.0.is_none() {
                e.0 = Some((p.pid, f.fd));
            }
        }
    }
    let mut passed_pipes: HashMap<u64, i32> = HashMap::new();
    for inf in &inflight {
        let f = inf.get(procs);
        if f.kind != FdKind::Pipe as i32 {
            continue;
        }
        passed_pipes.insert(f.pipe_id, inf.pid);
        let e = ends.entry(f.pipe_id).or_insert((None, false));
        if is_write_end(f) {
            e.1 = true;
        } else if e.0.is_none() {
            e.0 = Some((me, f.fd));
        }
    }
    for (id, (reader, has_writer)) in ends {
        if let (Some(&pid), None) = (passed_pipes.get(&id), reader.filter(|_| has_writer)) {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "a pipe end (pipe:[{id}]) passed in a queued unix socket message (SCM_RIGHTS) whose other end no process of the tree holds"
                ),
            });
        }
        let Some((rpid, rfd)) = reader.filter(|_| has_writer) else {
            // An end whose other end no process of the tree holds: kept as
            // connected outside the tree (resources::external), with the
            // bytes in the pipe when the tree holds its read end.
            let data = match reader {
                Some((pid, rfd)) => {
                    let pidfd = process::pidfd_open(pid).dumping(pid, "reading pipes")?;
                    let theirs = process::pidfd_getfd(&pidfd, rfd).dumping(pid, "reading pipes")?;
                    peek_pipe(pid, &theirs, rfd)?
                }
                None => Vec::new(),
            };
            mark_external(procs, FdKind::Pipe, id, data, 0, 0);
            continue;
        };
        let pidfd = process::pidfd_open(rpid).dumping(rpid, "reading pipes")?;
        let theirs = process::pidfd_getfd(&pidfd, rfd).dumping(rpid, "reading pipes")?;
        let data = peek_pipe(rpid, &theirs, rfd)?;
        let first = procs
            .iter()
            .position(|p| {
                p.fds
                    .iter()
                    .any(|f| f.pipe_id == id && f.kind == FdKind::Pipe as i32)
            })
            .unwrap_or(0);
        procs[first].pipes.push(Pipe { id, data });
    }
    // FIFOs: their ends may be anywhere. The unread data is saved once, if
    // the tree can read it (holds a read end); otherwise it belongs to
    // readers outside the tree and stays in the FIFO. A deleted FIFO is
    // made again apart from the old one: its data is saved in any case,
    // read through a read end godwit opens when the tree holds none.
    // FIFO id → (first holder, a read end in the tree (process index, fd),
    // a holder of it deleted (PID, fd)).
    type FifoEnds = (usize, Option<(usize, i32)>, Option<(i32, i32)>);
    let mut fifos: BTreeMap<u64, FifoEnds> = BTreeMap::new();
    for (i, p) in procs.iter().enumerate() {
        for f in p.fds.iter().filter(|f| f.kind == FdKind::Fifo as i32) {
            let e = fifos.entry(f.pipe_id).or_insert((i, None, None));
            if e.1.is_none() && can_read(f) && !is_o_path(f) {
                e.1 = Some((i, f.fd));
            }
            if f.deleted && e.2.is_none() {
                e.2 = Some((p.pid, f.fd));
            }
        }
    }
    for (id, (first, reader, deleted)) in fifos {
        let stage = "reading FIFOs";
        let data = match (reader, deleted) {
            (Some((i, rfd)), _) => {
                let pid = procs[i].pid;
                let pidfd = process::pidfd_open(pid).dumping(pid, stage)?;
                let theirs = process::pidfd_getfd(&pidfd, rfd).dumping(pid, stage)?;
                peek_pipe(pid, &theirs, rfd)?
            }
            (None, Some((pid, fd))) => {
                let path = format!("{}/fd/{fd}", godwit_sys::proc::dir(pid));
                let ours = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| EngineError::Sys {
                        pid,
                        stage,
                        source: godwit_sys::SysError::Proc {
                            path,
                            detail: format!("opening a read end of a deleted FIFO: {e}"),
                        },
                    })?;
                peek_pipe(pid, &OwnedFd::from(ours), fd)?
            }
            (None, None) => continue,
        };
        if !data.is_empty() {
            procs[first].pipes.push(Pipe { id, data });
        }
    }
    drop(inflight);
    // An epoll description is made again by the first process holding it
    // (parents first), from its interest list: each of its watches must be
    // of a file that process holds.
    let mut made = std::collections::HashSet::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        for f in p.fds.iter().filter(|f| f.kind == FdKind::Epoll as i32) {
            if !made.insert(f.file_id) {
                continue;
            }
            if let Some(t) = f.epoll.iter().find(|t| t.held_at == Some(NOT_HELD)) {
                return Err(unsupported(
                    p.pid,
                    f.fd,
                    format!(
                        "an epoll instance watching, under fd number {}, a file no fd of the process holds any more",
                        t.fd
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `EpollTarget::held_at` of a watch whose file the process dumped does
/// not hold (only in an image's copies that are not made again).
const NOT_HELD: i32 = -1;

/// Marks every fd of pipe `id` (`was` PIPE) or unix socket inode `id` (`was`
/// UNIX_SOCKET) as connected outside the tree; `data` goes with the first.
pub(crate) fn mark_external(
    procs: &mut [Process],
    was: FdKind,
    id: u64,
    mut data: Vec<u8>,
    sock_type: i32,
    unread: u64,
) {
    let key = match was {
        FdKind::Pipe => format!("pipe:[{id}]"),
        _ => format!("socket:[{id}]"),
    };
    for f in procs.iter_mut().flat_map(|p| p.fds.iter_mut()) {
        let hit = f.kind == was as i32
            && match was {
                FdKind::Pipe => f.pipe_id == id,
                _ => f.socket.as_ref().is_some_and(|s| s.ino == id),
            };
        if hit {
            f.kind = FdKind::External as i32;
            f.external = Some(External {
                key: key.clone(),
                was: was as i32,
                data: std::mem::take(&mut data),
                sock_type,
                unread,
            });
        }
    }
}

/// Most data of one deleted-but-open file a dump keeps by default
/// (`DumpOptions::max_deleted_file_size` raises it).
pub const MAX_DELETED: u64 = 64 << 20;

/// Deleted files with more data than this keep it in the page file
/// (`Fd::deleted_runs`), not in the manifest.
pub const INLINE_DELETED: u64 = 1 << 20;

/// Character devices a deleted node of may be made again (with mknod):
/// those that hold no state, as [`STATELESS_DEVICES`] (1:3 null, 1:5 zero,
/// 1:7 full, 1:8 random, 1:9 urandom).
const STATELESS_RDEVS: &[(u32, u32)] = &[(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)];

/// Refuses a deleted object (of fd `fd`, at `path`) whose directory is gone
/// too: there is nowhere to make it again next to where it was.
fn check_deleted_dir(pid: i32, fd: Option<i32>, path: &str) -> Result<()> {
    let dir = std::path::Path::new(path)
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    if std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let what = format!(
        "the deleted {path}, whose directory {} is gone too: it cannot be made again next to where it was",
        dir.display()
    );
    Err(match fd {
        Some(fd) => unsupported(pid, fd, what),
        None => EngineError::Unsupported { pid, what },
    })
}

/// Whether `f` is an inotify instance with a watch on a deleted file.
fn watches_deleted(f: &Fd) -> bool {
    f.anon
        .iter()
        .flat_map(|a| &a.watches)
        .any(|w| w.node_id != 0)
}

/// Saves what makes a deleted object again (besides a regular file's
/// data): its kind, mode, owner, group, times and identity.
fn deleted_meta(e: &mut Fd, md: &std::fs::Metadata) {
    e.deleted = true;
    e.node_id = memory::shmem_id_of(md.dev(), md.ino());
    e.mode = md.mode() & 0o7777;
    e.uid = md.uid();
    e.gid = md.gid();
    e.atime_ns = md.atime() * 1_000_000_000 + md.atime_nsec();
    e.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
}

/// The working directory `cwd` (as /proc/PID/cwd reads) of `pid` when it
/// was removed: described as a deleted directory.
fn dump_deleted_cwd(pid: i32, cwd: &str) -> Result<Option<Fd>> {
    let Some(path) = cwd.strip_suffix(" (deleted)") else {
        return Ok(None);
    };
    deleted_dir(pid, "cwd", path, "a deleted working directory", path).map(Some)
}

/// Deleted directory `path`, reached through /proc/PID/`link` (cwd or
/// root), described as one to make again (`what`, `shown`: how messages
/// name it): refused when it cannot be read or its own directory is gone.
fn deleted_dir(pid: i32, link: &str, path: &str, what: &str, shown: &str) -> Result<Fd> {
    let md =
        std::fs::metadata(format!("{}/{link}", godwit_sys::proc::dir(pid))).map_err(|err| {
            EngineError::Unsupported {
                pid,
                what: format!("{what} ({shown} (deleted)) that cannot be read ({err})"),
            }
        })?;
    check_deleted_dir(pid, None, path).map_err(|_| EngineError::Unsupported {
        pid,
        what: format!(
            "{what} ({shown}) whose own directory is gone too: it cannot be made again next to where it was"
        ),
    })?;
    let mut e = Fd {
        fd: -1,
        kind: FdKind::Directory as i32,
        path: path.to_string(),
        ..Default::default()
    };
    deleted_meta(&mut e, &md);
    Ok(e)
}

/// Keeps what makes again an object that was deleted while open: a regular
/// file's contents, a FIFO, a directory, a symlink (O_PATH|O_NOFOLLOW) or
/// a stateless character device node.
fn save_deleted(
    pid: i32,
    fd: i32,
    pidfd: &mut Option<OwnedFd>,
    e: &mut Fd,
    max_deleted: u64,
) -> Result<()> {
    let link = format!("{}/fd/{fd}", godwit_sys::proc::dir(pid));
    // /proc/PID/fd/N leads to the object itself (to the symlink, for an
    // O_PATH|O_NOFOLLOW descriptor of one).
    let md =
        std::fs::metadata(&link).map_err(|err| unsupported(pid, fd, format!("{link}: {err}")))?;
    let ft = md.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            e.pipe_id = memory::shmem_id_of(md.dev(), md.ino());
            FdKind::Fifo
        } else if ft.is_dir() {
            FdKind::Directory
        } else if ft.is_char_device() {
            let rdev = dev_numbers(md.rdev());
            if !STATELESS_RDEVS.contains(&rdev) {
                return Err(unsupported(
                    pid,
                    fd,
                    format!(
                        "{}, a removed node of character device {}:{}, which is not one that holds no state (null, zero, full, random, urandom; a terminal whose master side was closed is left so too)",
                        e.path, rdev.0, rdev.1
                    ),
                ));
            }
            e.rdev = md.rdev();
            FdKind::CharDevice
        } else if is_o_path(e) && is_deleted_symlink(pid, fd, pidfd)? {
            let pfd = match &pidfd {
                Some(p) => p,
                None => pidfd.insert(process::pidfd_open(pid).dumping(pid, "reading a symlink")?),
            };
            let ours = process::pidfd_getfd(pfd, fd).dumping(pid, "reading a symlink")?;
            let target = process::readlink_fd(&ours).dumping(pid, "reading a symlink")?;
            e.link_target = String::from_utf8(target).map_err(|_| {
                unsupported(
                    pid,
                    fd,
                    format!("the deleted symlink {}, whose target is not UTF-8", e.path),
                )
            })?;
            e.flags |= libc::O_NOFOLLOW as u32;
            FdKind::Regular
        } else {
            return Err(unsupported(
                pid,
                fd,
                format!(
                    "{}, a deleted {} (block devices and sockets are not made again)",
                    e.path,
                    if ft.is_block_device() {
                        "block device node"
                    } else {
                        "non-regular file"
                    }
                ),
            ));
        };
        check_deleted_dir(pid, Some(fd), &e.path)?;
        e.kind = kind as i32;
        deleted_meta(e, &md);
        return Ok(());
    }
    check_deleted_dir(pid, Some(fd), &e.path)?;
    // Without touching its access time (O_NOATIME needs to own the file
    // or CAP_FOWNER; otherwise it is read plainly).
    let open = |noatime: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        if noatime {
            std::os::unix::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NOATIME);
        }
        o.open(&link)
    };
    let read_err = |err: std::io::Error| EngineError::Sys {
        pid,
        stage: "reading a deleted file",
        source: godwit_sys::SysError::Proc {
            path: link.clone(),
            detail: err.to_string(),
        },
    };
    let file = open(true).or_else(|_| open(false)).map_err(read_err)?;
    // Only the ranges holding data; the holes are made again at restore.
    let extents = data_extents(&file, md.size());
    let stored: u64 = extents.iter().map(|x| x.length).sum();
    if stored > max_deleted {
        return Err(unsupported(
            pid,
            fd,
            format!(
                "a deleted file holding {stored} bytes of data ({}); at most {max_deleted} are kept (raise it with --max-deleted-file-size)",
                e.path
            ),
        ));
    }
    e.kind = FdKind::Regular as i32;
    e.size = md.size();
    deleted_meta(e, &md);
    if stored > INLINE_DELETED {
        // Read into the page file with the shared memory (memory::collect_shmem).
        e.deleted_in_pages = true;
        return Ok(());
    }
    let mut data = vec![0u8; stored as usize];
    let mut at = 0usize;
    for x in &extents {
        let buf = &mut data[at..at + x.length as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, x.offset).map_err(read_err)?;
        at += x.length as usize;
    }
    e.deleted_data = data;
    e.extents = extents;
    Ok(())
}

/// Whether fd `fd` of `pid` (O_PATH) is a symlink: its stat through the
/// descriptor itself (AT_EMPTY_PATH), since /proc/PID/fd/N leads to it.
fn is_deleted_symlink(pid: i32, fd: i32, pidfd: &mut Option<OwnedFd>) -> Result<bool> {
    let pfd = match &pidfd {
        Some(p) => p,
        None => pidfd.insert(process::pidfd_open(pid).dumping(pid, "reading a symlink")?),
    };
    let ours = process::pidfd_getfd(pfd, fd).dumping(pid, "reading a symlink")?;
    let (mode, _, _) =
        process::fd_stat(std::os::fd::AsFd::as_fd(&ours)).dumping(pid, "reading a symlink")?;
    Ok(mode & libc::S_IFMT == libc::S_IFLNK)
}

/// (major, minor) of a device number.
fn dev_numbers(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// The ranges of `file` (of `size` bytes) that hold data, found with
/// SEEK_DATA / SEEK_HOLE; the whole file on a filesystem that has neither.
fn data_extents(file: &std::fs::File, size: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    if size == 0 {
        return out;
    }
    if process::seek_data(file, 0, false).is_none() {
        // SEEK_HOLE from 0 always answers where it is supported.
        out.push(Extent {
            offset: 0,
            length: size,
        });
        return out;
    }
    let mut pos = 0;
    while pos < size {
        // None: ENXIO, no data from here to the end.
        let Some(start) = process::seek_data(file, pos, true).filter(|&s| s < size) else {
            break;
        };
        let end = process::seek_data(file, start, false)
            .unwrap_or(size)
            .min(size);
        if end <= start {
            break;
        }
        out.push(Extent {
            offset: start,
            length: end - start,
        });
        pos = end;
    }
    out
}

/// `ns` nanoseconds since the epoch (before it when negative).
pub(crate) fn system_time(ns: i64) -> std::time::SystemTime {
    let d = std::time::Duration::from_nanos(ns.unsigned_abs());
    if ns >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// Copies the unread bytes of the pipe behind `fd` of `pid` without consuming them.
fn peek_pipe(pid: i32, theirs: &OwnedFd, fd: i32) -> Result<Vec<u8>> {
    let stage = "reading pipe contents";
    let pending = process::pipe_pending(theirs).dumping(pid, stage)?;
    if pending == 0 {
        return Ok(Vec::new());
    }
    let (rd, wr) = process::pipe().dumping(pid, stage)?;
    process::set_pipe_size(&wr, pending).dumping(pid, stage)?;
    let mut copied = 0;
    while copied < pending {
        let n = process::tee(theirs, &wr, pending - copied).dumping(pid, stage)?;
        if n == 0 {
            break;
        }
        copied += n;
    }
    drop(wr);
    let mut data = Vec::with_capacity(copied);
    std::fs::File::from(rd)
        .read_to_end(&mut data)
        .map_err(|e| EngineError::Sys {
            pid,
            stage,
            source: godwit_sys::SysError::Proc {
                path: format!("pipe fd {fd}"),
                detail: e.to_string(),
            },
        })?;
    Ok(data)
}

/// Refuses a restore whose files are gone or changed (see docs: an O_APPEND
/// file may have grown, others must have their dump-time size).
pub fn check(fds: &[Fd], allow_changes: bool) -> Result<()> {
    for f in fds.iter().filter(|f| !f.deleted) {
        if matches!(
            FdKind::try_from(f.kind),
            Ok(FdKind::Pipe
                | FdKind::Epoll
                | FdKind::TcpListen
                | FdKind::TcpEstablished
                | FdKind::Udp
                | FdKind::UnixSocket
                | FdKind::EventFd
                | FdKind::TimerFd
                | FdKind::SignalFd
                | FdKind::Inotify
                | FdKind::Fanotify
                | FdKind::Memfd
                | FdKind::Tty
                | FdKind::External
                | FdKind::Pidfd
                | FdKind::RawSocket
                | FdKind::PacketSocket
                | FdKind::NetlinkSocket)
        ) {
            continue;
        }
        // Files of a process of the tree: checked as they are opened, once
        // the process exists.
        if proc_pid_path(&f.path).is_some() {
            continue;
        }
        if f.kind == FdKind::Fifo as i32 {
            let md = std::fs::metadata(&f.path).map_err(|e| EngineError::FileMissing {
                path: f.path.clone(),
                detail: format!(
                    "the named pipe (FIFO) of fd {} is gone ({e}); create it again with mkfifo",
                    f.fd
                ),
            })?;
            if !md.file_type().is_fifo() {
                return Err(EngineError::FileMissing {
                    path: f.path.clone(),
                    detail: format!(
                        "fd {} was a named pipe (FIFO) there, now it is not; put a FIFO back",
                        f.fd
                    ),
                });
            }
            continue;
        }
        let md = if is_o_path(f) && f.flags & libc::O_NOFOLLOW as u32 != 0 {
            std::fs::symlink_metadata(&f.path)
        } else {
            std::fs::metadata(&f.path)
        }
        .map_err(|e| EngineError::FileChanged {
            path: f.path.clone(),
            detail: format!("the file of fd {} cannot be opened ({e})", f.fd),
        })?;
        // An O_PATH descriptor reads nothing of its file: only that it is there.
        if allow_changes || f.kind != FdKind::Regular as i32 || is_o_path(f) {
            continue;
        }
        let append = f.flags & libc::O_APPEND as u32 != 0;
        let ok = if append {
            md.size() >= f.size
        } else {
            md.size() == f.size
        };
        if !ok {
            return Err(EngineError::FileChanged {
                path: f.path.clone(),
                detail: format!(
                    "fd {}: the file's size changed from {} to {} bytes",
                    f.fd,
                    f.size,
                    md.size()
                ),
            });
        }
    }
    Ok(())
}

/// How the open file descriptions of a tree are made again. Each is created
/// once, in the lowest common ancestor of the processes holding it, at a
/// staging number (`stage_base + id`) above every real fd number; children
/// forked after that inherit it. Each holder then moves it to its own fd
/// numbers ([`FdPlan::place`]) and closes the staging range.
pub struct FdPlan {
    stage_base: u64,
    max_id: u64,
    /// Description id → (creating process index, a representative Fd).
    descs: BTreeMap<u64, (usize, Fd)>,
    /// Pipe id → (unread data, creating process index); FIFO id → (unread
    /// data, unused).
    pipes: HashMap<u64, (Vec<u8>, usize)>,
    /// FIFO description id → its FIFO's id, for the description whose
    /// opening refills the FIFO's data.
    fifo_refill: HashMap<u64, u64>,
    /// Process index → its fd numbers → description ids.
    holder_fds: HashMap<usize, HashMap<i32, u64>>,
    /// Unix sockets, created in groups of connected sockets.
    unix: sockets::UnixPlan,
    /// Terminals: each pty created whole by one process.
    tty: tty::TtyPlan,
    /// TCP connections rebuilt, finished just before the processes run.
    tcp: sockets::tcp::RestoredSet,
    /// Descriptors connected outside the tree: --inherit-fd or stand-ins.
    external: external::ExternalPlan,
    /// Process index → its PID in the image.
    pids: Vec<i32>,
    /// Unix socket groups finished once every process exists (their queues
    /// carry credentials of processes created after theirs): (creator, group).
    unix_late: std::sync::Mutex<Vec<(usize, sockets::unix::PendingGroup)>>,
    /// Objects deleted while open: made again once, used by every holder.
    nodes: deleted::Nodes,
    /// Description id → the first process (index) holding it, whose page
    /// file holds a big deleted file's data.
    first_holder: HashMap<u64, usize>,
}

/// The lowest common ancestor (by index, parents before children) of `set`.
pub fn lca(parent: &[Option<usize>], set: &[usize]) -> usize {
    let chain = |mut i: usize| {
        let mut c = vec![i];
        while let Some(p) = parent[i] {
            c.push(p);
            i = p;
        }
        c
    };
    let chains: Vec<Vec<usize>> = set.iter().map(|&i| chain(i)).collect();
    chains[0]
        .iter()
        .copied()
        .find(|a| chains.iter().all(|c| c.contains(a)))
        .unwrap_or(0)
}

/// Each process's parent index (None for the root).
pub fn parents(procs: &[Process]) -> Vec<Option<usize>> {
    let index: HashMap<i32, usize> = procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    procs.iter().map(|p| index.get(&p.ppid).copied()).collect()
}

impl FdPlan {
    /// `shell`: the caller's terminal, for fds that were on a terminal
    /// outside the tree (--shell-job); `inherit`: godwit's descriptors for
    /// those connected outside the tree (--inherit-fd).
    pub fn new(
        procs: &[Process],
        shell: Option<&tty::CallerTerminal>,
        inherit: &[external::Inherit],
    ) -> Result<FdPlan> {
        let external = external::ExternalPlan::new(procs, inherit)?;
        let index: HashMap<i32, usize> =
            procs.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
        let parent: Vec<Option<usize>> =
            procs.iter().map(|p| index.get(&p.ppid).copied()).collect();
        let mut holders: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut pipe_holders: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut reps: BTreeMap<u64, Fd> = BTreeMap::new();
        let mut max_fd = 0;
        for (i, p) in procs.iter().enumerate() {
            // pidfds are opened by their holders once every process exists
            // (resources::pidfd), not planned here.
            for f in p.fds.iter().filter(|f| f.kind != FdKind::Pidfd as i32) {
                if f.file_id == 0 {
                    return Err(EngineError::BadImage(format!(
                        "process {} fd {} has no description id",
                        p.pid, f.fd
                    )));
                }
                max_fd = max_fd.max(f.fd as u64);
                holders.entry(f.file_id).or_default().push(i);
                reps.entry(f.file_id).or_insert_with(|| f.clone());
                if f.kind == FdKind::Pipe as i32 {
                    pipe_holders.entry(f.pipe_id).or_default().push(i);
                }
            }
        }
        // Descriptions in flight in unix socket queues are held, until the
        // refill sends them, by the process that creates the socket.
        let unix = sockets::UnixPlan::new(procs, &reps, &holders, &parent)?;
        for (creator, f) in unix.passed() {
            if f.file_id == 0 {
                return Err(EngineError::BadImage(
                    "a descriptor in flight has no description id".into(),
                ));
            }
            holders.entry(f.file_id).or_default().push(creator);
            reps.entry(f.file_id).or_insert_with(|| f.clone());
            if f.kind == FdKind::Pipe as i32 {
                pipe_holders.entry(f.pipe_id).or_default().push(creator);
            }
        }
        let pipes = procs
            .iter()
            .flat_map(|p| &p.pipes)
            .map(|pp| {
                let creator = pipe_holders.get(&pp.id).map_or(0, |h| lca(&parent, h));
                (pp.id, (pp.data.clone(), creator))
            })
            .collect::<HashMap<_, _>>();
        let tty = tty::TtyPlan::new(procs, &reps, &holders, &parent, shell)?;
        let mut descs = BTreeMap::new();
        for (id, f) in reps {
            let creator = if f.kind == FdKind::Pipe as i32 {
                pipes.get(&f.pipe_id).map(|p| p.1).ok_or_else(|| {
                    EngineError::BadImage(format!("pipe:[{}] has no saved state", f.pipe_id))
                })?
            } else if let Some(c) = unix.creator(id) {
                c
            } else if let Some(c) = tty.creator(id) {
                c
            } else {
                lca(&parent, &holders[&id])
            };
            descs.insert(id, (creator, f));
        }
        // A FIFO's data goes in with the first of its descriptions opened
        // (processes are built in order, parents first).
        let mut first_open: HashMap<u64, (usize, u64)> = HashMap::new();
        for (id, (creator, f)) in &descs {
            if f.kind == FdKind::Fifo as i32 {
                let e = first_open.entry(f.pipe_id).or_insert((*creator, *id));
                if *creator < e.0 {
                    *e = (*creator, *id);
                }
            }
        }
        let fifo_refill = first_open
            .into_iter()
            .map(|(pipe, (_, id))| (id, pipe))
            .collect();
        let max_id = descs.keys().next_back().copied().unwrap_or(0);
        let nodes = deleted::Nodes::new(descs.values().map(|(_, f)| f), procs);
        let first_holder = holders.iter().map(|(id, h)| (*id, h[0])).collect();
        let holder_fds = procs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let fds = p.fds.iter().filter(|f| f.kind != FdKind::Pidfd as i32);
                (i, fds.map(|f| (f.fd, f.file_id)).collect())
            })
            .collect();
        Ok(FdPlan {
            stage_base: max_fd + 1,
            max_id,
            descs,
            pipes,
            fifo_refill,
            holder_fds,
            unix,
            tty,
            tcp: Default::default(),
            unix_late: Default::default(),
            external,
            pids: procs.iter().map(|p| p.pid).collect(),
            nodes,
            first_holder,
        })
    }

    fn stage(&self, id: u64) -> u64 {
        self.stage_base + id
    }

    /// Once every process of the tree exists (before any places its fds):
    /// the unix socket groups left for then ([`FdPlan::create`]).
    pub fn finish_unix(&self, remotes: &[Option<Remote>]) -> Result<()> {
        let late = std::mem::take(&mut *self.unix_late.lock().expect("not poisoned"));
        for (idx, p) in late {
            let r = remotes.get(idx).copied().flatten().ok_or_else(|| {
                EngineError::BadImage(format!(
                    "process {idx} creates unix sockets but does not run"
                ))
            })?;
            self.unix.finish(&r, vec![p], &|id| self.stage(id))?;
        }
        Ok(())
    }

    /// The highest fd number the plan uses (must be below RLIMIT_NOFILE).
    pub fn highest_fd(&self) -> u64 {
        self.stage(self.max_id)
    }

    /// Moves new descriptor `fd` to the staging number of description `id`.
    fn to_stage(&self, r: &Remote, fd: u64, id: u64) -> Result<()> {
        let pid = r.pid;
        if let Some((_, f)) = self.descs.get(&id) {
            restore_pipe_size(r, fd, f)?;
        }
        r.call("dup3", libc::SYS_dup3, [fd, self.stage(id), 0, 0, 0, 0])
            .restoring(pid, "opening files")?;
        r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
            .restoring(pid, "opening files")?;
        Ok(())
    }

    /// Creates, in process `idx` (`r`), the descriptions it is the creator
    /// of, at their staging numbers. Uses scratch bytes [0, 8192). `shm_fd`
    /// gives the staging fd (in this process) of a shmem object, which a
    /// memfd description is opened from.
    pub fn create(
        &self,
        r: &Remote,
        idx: usize,
        shm_fd: &dyn Fn(u64) -> Option<u64>,
        pages: &[memory::Pages],
    ) -> Result<()> {
        let pid = r.pid;
        let stage = "opening files";
        // Pipes first: one pipe2 gives the first read and write descriptions.
        let mut done: HashMap<u64, ()> = HashMap::new();
        for (id, (creator, f)) in &self.descs {
            if *creator != idx || f.kind != FdKind::Pipe as i32 || done.contains_key(id) {
                continue;
            }
            r.call("pipe2", libc::SYS_pipe2, [r.scratch, 0, 0, 0, 0, 0])
                .restoring(pid, "creating pipes")?;
            let b = r.get(0, 8).restoring(pid, "creating pipes")?;
            let rd = i32::from_le_bytes(b[0..4].try_into().expect("4")) as u64;
            let wr = i32::from_le_bytes(b[4..8].try_into().expect("4")) as u64;
            let (mut rd_used, mut wr_used) = (false, false);
            let (mut rd_stage, mut wr_stage) = (None, None);
            let same_pipe: Vec<(u64, &Fd)> = self
                .descs
                .iter()
                .filter(|(_, (_, g))| g.kind == FdKind::Pipe as i32 && g.pipe_id == f.pipe_id)
                .map(|(id, (_, g))| (*id, g))
                .collect();
            for (gid, g) in same_pipe {
                let write = is_write_end(g);
                let fd = match (write, rd_used, wr_used) {
                    (false, false, _) => {
                        rd_used = true;
                        rd
                    }
                    (true, _, false) => {
                        wr_used = true;
                        wr
                    }
                    // Another description of an end: open it again.
                    _ => {
                        let src = if write { wr_stage } else { rd_stage }.unwrap_or(if write {
                            wr
                        } else {
                            rd
                        });
                        let a = r
                            .put_cstr(0, &format!("/proc/self/fd/{src}"))
                            .restoring(pid, stage)?;
                        let mode = if write {
                            libc::O_WRONLY
                        } else {
                            libc::O_RDONLY
                        };
                        r.call(
                            "openat",
                            libc::SYS_openat,
                            [libc::AT_FDCWD as u64, a, mode as u64, 0, 0, 0],
                        )
                        .restoring(pid, "opening a pipe again")?
                    }
                };
                let status = (g.flags & (libc::O_NONBLOCK | libc::O_DIRECT) as u32) as u64;
                r.call(
                    "fcntl(F_SETFL)",
                    libc::SYS_fcntl,
                    [fd, libc::F_SETFL as u64, status, 0, 0, 0],
                )
                .restoring(pid, stage)?;
                self.to_stage(r, fd, gid)?;
                if write {
                    wr_stage.get_or_insert(self.stage(gid));
                } else {
                    rd_stage.get_or_insert(self.stage(gid));
                }
                done.insert(gid, ());
            }
            for (fd, used) in [(rd, rd_used), (wr, wr_used)] {
                if !used {
                    r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
                        .restoring(pid, stage)?;
                }
            }
            let data = self
                .pipes
                .get(&f.pipe_id)
                .map(|p| p.0.as_slice())
                .unwrap_or_default();
            if let (false, Some(w)) = (data.is_empty(), wr_stage) {
                let pidfd = process::pidfd_open(pid).restoring(pid, "refilling pipes")?;
                let w = process::pidfd_getfd(&pidfd, w as i32).restoring(pid, "refilling pipes")?;
                // The buffer already has its saved size (to_stage); older
                // images have none, and the data needs room.
                if data.len() > 65536.max(f.pipe_size as usize) {
                    process::set_pipe_size(&w, data.len()).restoring(pid, "refilling pipes")?;
                }
                write_all_fd(&w, data).restoring(pid, "refilling pipes")?;
            }
        }
        let (made, unix_pending) = self.unix.create(r, idx)?;
        for (id, fd) in made {
            self.to_stage(r, fd, id)?;
        }
        for (id, fd) in self.tty.create(r, idx)? {
            self.to_stage(r, fd, id)?;
        }
        let mut deferred: Vec<(u64, &Fd, u64)> = Vec::new();
        for (id, (creator, f)) in &self.descs {
            if *creator != idx {
                continue;
            }
            let kind = FdKind::try_from(f.kind).unwrap_or(FdKind::Regular);
            let status_flags = (f.flags
                & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME) as u32)
                as u64;
            let fd = match kind {
                FdKind::Pipe | FdKind::Epoll | FdKind::UnixSocket | FdKind::Pidfd => continue,
                FdKind::Tty if f.tty.as_ref().is_some_and(|t| t.external) => {
                    match self.external.open_tty(r, f) {
                        Some(fd) => fd?,
                        None => self.tty.open_external(r, f)?,
                    }
                }
                FdKind::Tty => continue,
                FdKind::External => self.external.open(r, f)?,
                FdKind::EventFd
                | FdKind::TimerFd
                | FdKind::SignalFd
                | FdKind::Inotify
                | FdKind::Fanotify => {
                    if watches_deleted(f) {
                        // After the deleted files it watches are opened.
                        deferred.push((*id, f, status_flags));
                        continue;
                    }
                    self.create_anon(r, f, status_flags, pages)?
                }
                FdKind::Memfd => {
                    let src = shm_fd(f.shmem_id).ok_or_else(|| {
                        EngineError::BadImage(format!(
                            "memfd fd {} ({}) has no shared memory object",
                            f.fd, f.path
                        ))
                    })?;
                    let a = r
                        .put_cstr(0, &format!("/proc/self/fd/{src}"))
                        .restoring(pid, stage)?;
                    let oflags = f.flags
                        & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
                    let fd = r
                        .call(
                            "openat",
                            libc::SYS_openat,
                            [libc::AT_FDCWD as u64, a, oflags as u64, 0, 0, 0],
                        )
                        .restoring(pid, "opening a memfd again")?;
                    if !is_o_path(f) {
                        r.call(
                            "lseek",
                            libc::SYS_lseek,
                            [fd, f.pos, libc::SEEK_SET as u64, 0, 0, 0],
                        )
                        .restoring(pid, "setting file offsets")?;
                    }
                    fd
                }
                FdKind::Fifo if f.deleted => {
                    let oflags = f.flags
                        & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
                    self.nodes.use_node(
                        r,
                        f,
                        deleted::Use::Open(oflags),
                        &|tmp| self.open_fifo(r, *id, f, tmp),
                        None,
                    )?
                }
                FdKind::Fifo => self.open_fifo(r, *id, f, &f.path)?,
                FdKind::TcpListen => {
                    let s = f.socket.as_ref().ok_or_else(|| {
                        EngineError::BadImage(format!("fd {} is a socket without details", f.fd))
                    })?;
                    sockets::restore(r, f.fd, s, status_flags)?
                }
                FdKind::TcpEstablished => {
                    let s = f.socket.as_ref().ok_or_else(|| {
                        EngineError::BadImage(format!("fd {} is a socket without details", f.fd))
                    })?;
                    sockets::tcp::restore_established(r, f.fd, s, status_flags, &self.tcp)?
                }
                FdKind::Udp => {
                    let s = f.socket.as_ref().ok_or_else(|| {
                        EngineError::BadImage(format!("fd {} is a socket without details", f.fd))
                    })?;
                    sockets::udp::restore(r, f.fd, s, status_flags)?
                }
                k @ (FdKind::RawSocket | FdKind::PacketSocket | FdKind::NetlinkSocket) => {
                    let s = f.socket.as_ref().ok_or_else(|| {
                        EngineError::BadImage(format!("fd {} is a socket without details", f.fd))
                    })?;
                    sockets::restore_other(r, k, f.fd, s, status_flags)?
                }
                FdKind::Regular | FdKind::Directory | FdKind::CharDevice => {
                    let a = r
                        .put_cstr(0, &open_path(&f.path, self.pids[idx]))
                        .restoring(pid, stage)?;
                    let oflags = f.flags
                        & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
                    let fd = if f.deleted {
                        // A big file's data is in its first holder's page file.
                        let data = self.first_holder.get(id).and_then(|&i| pages.get(i));
                        self.nodes.use_node(
                            r,
                            f,
                            deleted::Use::Open(oflags),
                            &|_| unreachable!(),
                            data,
                        )?
                    } else {
                        r.call(
                            "openat",
                            libc::SYS_openat,
                            [libc::AT_FDCWD as u64, a, oflags as u64, 0, 0, 0],
                        )
                        .map_err(|e| EngineError::FileChanged {
                            path: f.path.clone(),
                            detail: format!("fd {} cannot be opened again ({e})", f.fd),
                        })?
                    };
                    if kind != FdKind::CharDevice && !is_o_path(f) {
                        r.call(
                            "lseek",
                            libc::SYS_lseek,
                            [fd, f.pos, libc::SEEK_SET as u64, 0, 0, 0],
                        )
                        .restoring(pid, "setting file offsets")?;
                    }
                    fd
                }
            };
            self.to_stage(r, fd, *id)?;
        }
        // inotify instances watching deleted files, once the process's
        // descriptors of those files are open: the watch is added on the
        // file made again, and the events of the restore read away.
        for (id, f, status_flags) in deferred {
            let fd = self.create_anon(r, f, status_flags, pages)?;
            self.to_stage(r, fd, id)?;
        }
        // Queues carrying descriptions, once those exist (made here or
        // inherited from an ancestor).
        let (late, now): (Vec<_>, Vec<_>) = unix_pending.into_iter().partition(|p| p.late);
        self.unix.finish(r, now, &|id| self.stage(id))?;
        self.unix_late
            .lock()
            .expect("not poisoned")
            .extend(late.into_iter().map(|p| (idx, p)));
        // Epoll instances last: their interest lists name other descriptions.
        for (id, (creator, f)) in &self.descs {
            if *creator == idx && f.kind == FdKind::Epoll as i32 {
                self.create_epoll(r, idx, *id, f)?;
            }
        }
        Ok(())
    }

    /// Creates an anonymous descriptor ([`anon::restore`]) with its status
    /// flags; an inotify watch on a deleted file is added on the file made
    /// again for the descriptors holding it ([`deleted::Nodes`]).
    fn create_anon(
        &self,
        r: &Remote,
        f: &Fd,
        status_flags: u64,
        pages: &[memory::Pages],
    ) -> Result<u64> {
        let at_node = |node: u64, watch: &dyn Fn(&str) -> Result<u64>| -> Result<u64> {
            let (held_id, held) = self
                .descs
                .iter()
                .map(|(id, (_, d))| (id, d))
                .find(|(_, d)| d.deleted && d.node_id == node && d.kind == FdKind::Regular as i32)
                .ok_or_else(|| {
                    EngineError::BadImage(format!(
                        "fd {}: an inotify watch on deleted file {node:#x}, which no descriptor holds",
                        f.fd
                    ))
                })?;
            let data = self.first_holder.get(held_id).and_then(|&i| pages.get(i));
            self.nodes
                .use_node(r, held, deleted::Use::Path, watch, data)
        };
        let fd = anon::restore(r, f, &at_node)?;
        r.call(
            "fcntl(F_SETFL)",
            libc::SYS_fcntl,
            [fd, libc::F_SETFL as u64, status_flags, 0, 0, 0],
        )
        .restoring(r.pid, "opening files")?;
        Ok(fd)
    }

    /// Opens FIFO description `id` in the process behind `r`, without
    /// blocking: the FIFO is opened read-write first (which never waits for
    /// a peer and is a peer for both ends), then again through
    /// /proc/self/fd with the saved flags; the saved data is written once.
    fn open_fifo(&self, r: &Remote, id: u64, f: &Fd, path: &str) -> Result<u64> {
        let pid = r.pid;
        let stage = "opening FIFOs";
        let both = r
            .openat(path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)
            .map_err(|e| EngineError::FileMissing {
                path: f.path.clone(),
                detail: format!(
                    "the named pipe (FIFO) of fd {} cannot be opened ({e})",
                    f.fd
                ),
            })?;
        let data = self
            .fifo_refill
            .get(&id)
            .and_then(|pipe| self.pipes.get(pipe))
            .map(|p| p.0.as_slice())
            .unwrap_or_default();
        if !data.is_empty() {
            let pidfd = process::pidfd_open(pid).restoring(pid, "refilling FIFOs")?;
            let w = process::pidfd_getfd(&pidfd, both as i32).restoring(pid, "refilling FIFOs")?;
            // Room for the data now; the saved size is set once the FIFO
            // is opened with its flags (to_stage), and holds the data.
            if data.len() > 65536 {
                process::set_pipe_size(&w, data.len()).restoring(pid, "refilling FIFOs")?;
            }
            write_all_fd(&w, data).restoring(pid, "refilling FIFOs")?;
        }
        let b = r
            .put_cstr(0, &format!("/proc/self/fd/{both}"))
            .restoring(pid, stage)?;
        let oflags =
            f.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
        let fd = r
            .call(
                "openat",
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, b, oflags as u64, 0, 0, 0],
            )
            .restoring(pid, "opening a FIFO again")?;
        r.call("close", libc::SYS_close, [both, 0, 0, 0, 0, 0])
            .restoring(pid, stage)?;
        Ok(fd)
    }

    /// Creates an epoll instance in process `idx` and fills its interest
    /// list. Each watched fd is put at its own number for the EPOLL_CTL_ADD
    /// (entries are keyed by file and fd number, so later EPOLL_CTL_MOD/DEL
    /// by the process find them) and closed again; the entry stays, since the
    /// file is still open at its staging number.
    fn create_epoll(&self, r: &Remote, idx: usize, id: u64, f: &Fd) -> Result<()> {
        let pid = r.pid;
        let stage = "creating epoll instances";
        let ep = r
            .call("epoll_create1", libc::SYS_epoll_create1, [0, 0, 0, 0, 0, 0])
            .restoring(pid, stage)?;
        // At its staging number at once: the watched fds are put at their
        // own numbers below, one of which may be the number it got.
        self.to_stage(r, ep, id)?;
        let ep = self.stage(id);
        let own = self.holder_fds.get(&idx);
        for t in &f.epoll {
            let at = t.held_at.unwrap_or(t.fd);
            let file_id = own.and_then(|m| m.get(&at)).copied().ok_or_else(|| {
                EngineError::BadImage(format!(
                    "epoll fd {} watches fd {at}, which the process creating it does not hold",
                    f.fd
                ))
            })?;
            // A descriptor connected outside the tree whose stand-in is
            // /dev/null, which epoll cannot watch (EPERM): the watch goes,
            // as the warning about that descriptor says.
            if self
                .descs
                .get(&file_id)
                .is_some_and(|(_, d)| self.external.is_dev_null(d))
            {
                continue;
            }
            r.call(
                "dup3",
                libc::SYS_dup3,
                [self.stage(file_id), t.fd as u64, 0, 0, 0, 0],
            )
            .restoring(pid, stage)?;
            // struct epoll_event is packed on x86_64: u32 events, u64 data.
            let mut ev = Vec::with_capacity(12);
            ev.extend_from_slice(&t.events.to_le_bytes());
            ev.extend_from_slice(&t.data.to_le_bytes());
            let a = r.put(0, &ev).restoring(pid, stage)?;
            r.call(
                "epoll_ctl",
                libc::SYS_epoll_ctl,
                [ep, libc::EPOLL_CTL_ADD as u64, t.fd as u64, a, 0, 0],
            )
            .restoring(pid, "filling epoll interest lists")?;
            r.call("close", libc::SYS_close, [t.fd as u64, 0, 0, 0, 0, 0])
                .restoring(pid, stage)?;
        }
        Ok(())
    }

    /// Terminals, in process `p` (`r`) once its session exists and its
    /// descriptions are made, before it forks: see [`tty::TtyPlan::set_ctty`].
    pub fn set_ctty(&self, r: &Remote, p: &Process, joins_caller: bool) -> Result<()> {
        self.tty.set_ctty(r, p, joins_caller, |id| self.stage(id))
    }

    /// Terminals, once every process group exists: foreground groups.
    pub fn restore_foreground(&self, procs: &[Process], remotes: &[Option<Remote>]) -> Result<()> {
        self.tty.restore_foreground(procs, remotes)
    }

    /// Terminals, last: the caller's terminal settings (--shell-job).
    pub fn finish_terminals(&self) -> Result<()> {
        self.tty.finish()
    }

    /// What each descriptor connected outside the tree became.
    pub fn external_uses(&self) -> Vec<external::ExternalUse> {
        self.external.uses()
    }

    /// Starts the TCP connections rebuilt (out of repair mode, locks lifted).
    pub fn finish_tcp(&self) -> Result<()> {
        self.tcp.finish()
    }

    /// Puts the process's descriptors at their numbers and closes the
    /// staging range.
    pub fn place(&self, r: &Remote, p: &Process) -> Result<()> {
        let pid = r.pid;
        for f in p.fds.iter().filter(|f| f.kind != FdKind::Pidfd as i32) {
            let cloexec = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            r.call(
                "dup3",
                libc::SYS_dup3,
                [self.stage(f.file_id), f.fd as u64, cloexec, 0, 0, 0],
            )
            .restoring(pid, "placing file descriptors")?;
        }
        if self.max_id > 0 {
            r.call(
                "close_range",
                libc::SYS_close_range,
                [self.stage(1), self.stage(self.max_id), 0, 0, 0, 0],
            )
            .restoring(pid, "closing staging descriptors")?;
        }
        Ok(())
    }
}

/// Once every process, thread and process group of the tree exists: the
/// owner of I/O signals (F_SETOWN_EX, kept as the same PID/TID/PGID since
/// those are kept), their signal (F_SETSIG), then O_ASYNC at each fd's own
/// number (the kernel records the fd number for the signal's si_fd).
pub fn restore_async(procs: &[Process], remotes: &[Option<Remote>]) -> Result<()> {
    for (p, r) in procs.iter().zip(remotes) {
        let Some(r) = r else { continue };
        let pid = r.pid;
        let stage = "restoring I/O signal owners (O_ASYNC)";
        for f in &p.fds {
            let fd = f.fd as u64;
            if f.signal != 0 {
                r.call(
                    "fcntl(F_SETSIG)",
                    libc::SYS_fcntl,
                    [fd, process::F_SETSIG as u64, f.signal as u64, 0, 0, 0],
                )
                .restoring(pid, stage)?;
            }
            if f.owner_pid != 0 {
                let mut owner = Vec::with_capacity(8);
                owner.extend_from_slice(&f.owner_type.to_le_bytes());
                owner.extend_from_slice(&f.owner_pid.to_le_bytes());
                let a = r.put(0, &owner).restoring(pid, stage)?;
                r.call(
                    "fcntl(F_SETOWN_EX)",
                    libc::SYS_fcntl,
                    [fd, process::F_SETOWN_EX as u64, a, 0, 0, 0],
                )
                .map_err(|e| EngineError::Refused {
                    pid,
                    what: format!(
                        "fd {} sent its I/O signals to {} {}, which cannot be made its owner again ({e}); \
                         that process must exist (restore the tree that holds it)",
                        f.fd,
                        match f.owner_type {
                            process::F_OWNER_TID => "thread",
                            process::F_OWNER_PGRP => "process group",
                            _ => "process",
                        },
                        f.owner_pid
                    ),
                })?;
            }
            if f.flags & libc::O_ASYNC as u32 != 0 {
                let status = (f.flags
                    & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME) as u32)
                    as u64;
                // Off, then on: open(2) may have left O_ASYNC in the flags
                // without registering the fd for signals.
                for flags in [status, status | libc::O_ASYNC as u64] {
                    r.call(
                        "fcntl(F_SETFL)",
                        libc::SYS_fcntl,
                        [fd, libc::F_SETFL as u64, flags, 0, 0, 0],
                    )
                    .restoring(pid, stage)?;
                }
            }
        }
    }
    Ok(())
}

/// The process's root directory if it was chroot'ed (empty if it is
/// godwit's own), and its description when it was removed.
pub fn dump_root(pid: i32) -> Result<(String, Option<Fd>)> {
    let root = proc::link(&format!("{}/root", godwit_sys::proc::dir(pid)))
        .dumping(pid, "reading the root directory")?
        .to_string_lossy()
        .into_owned();
    if root == "/" {
        return Ok((String::new(), None));
    }
    let Some(path) = root.strip_suffix(" (deleted)") else {
        return Ok((root, None));
    };
    let e = deleted_dir(
        pid,
        "root",
        path,
        "a deleted root directory",
        &format!("chroot into {path}"),
    )?;
    Ok((path.to_string(), Some(e)))
}

/// Refuses a restore whose chroot directory is no longer a directory.
pub fn check_root(p: &Process) -> Result<()> {
    // A removed one is made again (its directory is checked by deleted::check).
    if p.root.is_empty() || p.root_deleted.is_some() || std::path::Path::new(&p.root).is_dir() {
        return Ok(());
    }
    Err(EngineError::FileChanged {
        path: p.root.clone(),
        detail: format!(
            "process {}'s root directory (it ran chroot'ed there) is gone",
            p.pid
        ),
    })
}

/// chroot into the saved root, once every file of the process is open
/// (paths are godwit's, resolved from its root) and before its credentials
/// drop CAP_SYS_CHROOT. Its cwd stays where it was set.
pub fn restore_root(r: &Remote, p: &Process) -> Result<()> {
    if p.root.is_empty() {
        return Ok(());
    }
    let a = r
        .put_cstr(0, &p.root)
        .restoring(r.pid, "setting the root directory")?;
    r.call("chroot", libc::SYS_chroot, [a, 0, 0, 0, 0, 0])
        .map_err(|e| EngineError::FileChanged {
            path: p.root.clone(),
            detail: format!("the root directory (chroot) cannot be entered ({e})"),
        })?;
    Ok(())
}

impl FdPlan {
    /// Sets the working directory of process `p` (`r`): a removed one is
    /// made again (or found, when a descriptor of the tree holds it) and
    /// entered ([`deleted::Nodes`]).
    pub fn restore_cwd(&self, r: &Remote, p: &Process) -> Result<()> {
        match &p.cwd_deleted {
            Some(d) => {
                self.nodes
                    .use_node(r, d, deleted::Use::Chdir, &|_| unreachable!(), None)?;
                Ok(())
            }
            None => restore_cwd(r, &p.cwd),
        }
    }

    /// [`restore_root`], for a removed root directory too: made again (or
    /// found: the same directory as a descriptor's or the cwd's) and
    /// entered with chroot.
    pub fn restore_root(&self, r: &Remote, p: &Process) -> Result<()> {
        match &p.root_deleted {
            Some(d) => {
                self.nodes
                    .use_node(r, d, deleted::Use::Chroot, &|_| unreachable!(), None)?;
                Ok(())
            }
            None => restore_root(r, p),
        }
    }

    /// The staging descriptor (in process `p`, before it places its fds) of
    /// a description of the deleted file `node` that `p` holds: what a
    /// private mapping of that file is mapped from.
    pub fn node_fd(&self, p: &Process, node: u64) -> Option<u64> {
        p.fds
            .iter()
            .find(|f| f.deleted && f.node_id == node && f.kind == FdKind::Regular as i32)
            .map(|f| self.stage(f.file_id))
    }
}

/// Enters the working directory of the restored process.
pub fn restore_cwd(r: &Remote, cwd: &str) -> Result<()> {
    let a = r.put_cstr(0, cwd).restoring(r.pid, "setting the cwd")?;
    r.call("chdir", libc::SYS_chdir, [a, 0, 0, 0, 0, 0])
        .map_err(|e| EngineError::FileChanged {
            path: cwd.to_string(),
            detail: format!("the working directory cannot be entered ({e})"),
        })?;
    Ok(())
}

fn write_all_fd(fd: &OwnedFd, data: &[u8]) -> godwit_sys::Result<()> {
    let mut off = 0;
    while off < data.len() {
        let n = process::write(fd.as_raw_fd(), &data[off..])?;
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_of_the_process_itself_open_under_proc_self() {
        assert_eq!(proc_pid_path("/proc/12/stat"), Some((12, "stat")));
        assert_eq!(proc_pid_path("/proc/12"), Some((12, "")));
        assert_eq!(proc_pid_path("/proc/meminfo"), None);
        assert_eq!(proc_pid_path("/proc/+12/stat"), None);
        assert_eq!(proc_pid_path("/tmp/proc/12"), None);
        assert_eq!(open_path("/proc/12/status", 12), "/proc/self/status");
        assert_eq!(open_path("/proc/12/fd", 12), "/proc/self/fd");
        assert_eq!(open_path("/proc/12", 12), "/proc/self");
        assert_eq!(open_path("/proc/13/stat", 12), "/proc/13/stat");
        assert_eq!(open_path("/proc/120/stat", 12), "/proc/120/stat");
        assert_eq!(open_path("/etc/hosts", 12), "/etc/hosts");
    }
}

//! Files: the descriptor table (regular files, directories, a few character
//! devices, pipes inside the process with their unread data) and the cwd.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::{anon, sockets};
use crate::schema::{EpollTarget, Fd, FdKind, Pipe};
use godwit_sys::{proc, process};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Character devices that hold no state and can simply be opened again.
const STATELESS_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

pub struct Files {
    pub fds: Vec<Fd>,
    pub pipes: Vec<Pipe>,
    pub cwd: String,
}

fn unsupported(pid: i32, fd: i32, what: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported {
        pid,
        what: format!("fd {fd} ({what})"),
    }
}

/// Reads the descriptor table of a frozen process.
pub fn dump(pid: i32) -> Result<Files> {
    let cwd = proc::link(&format!("/proc/{pid}/cwd"))
        .dumping(pid, "reading the cwd")?
        .to_string_lossy()
        .into_owned();
    if cwd.ends_with(" (deleted)") {
        return Err(EngineError::Unsupported {
            pid,
            what: format!("a deleted working directory ({cwd})"),
        });
    }
    let mut fds = Vec::new();
    let mut pidfd: Option<OwnedFd> = None;
    let mut pipe_ends: BTreeMap<u64, (bool, bool, i32)> = BTreeMap::new();
    for fd in proc::fds(pid).dumping(pid, "listing file descriptors")? {
        let target = proc::link(&format!("/proc/{pid}/fd/{fd}"))
            .dumping(pid, "reading file descriptors")?
            .to_string_lossy()
            .into_owned();
        let info = proc::fdinfo(pid, fd).dumping(pid, "reading file descriptors")?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let mut e = Fd {
            fd,
            flags,
            cloexec,
            pos: info.pos,
            ..Default::default()
        };
        if let Some(ino) = target.strip_prefix("pipe:[").and_then(|s| s.strip_suffix(']')) {
            let ino: u64 = ino.parse().map_err(|_| unsupported(pid, fd, &target))?;
            e.kind = FdKind::Pipe as i32;
            e.pipe_id = ino;
            e.path.clear();
            let write = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let ends = pipe_ends.entry(ino).or_insert((false, false, fd));
            if write {
                ends.1 = true;
            } else {
                ends.0 = true;
                ends.2 = fd;
            }
            fds.push(e);
            continue;
        }
        if target.starts_with("socket:[") {
            let pfd = match &pidfd {
                Some(p) => p,
                None => pidfd.insert(process::pidfd_open(pid).dumping(pid, "reading sockets")?),
            };
            let ours = process::pidfd_getfd(pfd, fd).dumping(pid, "reading sockets")?;
            e.socket = Some(sockets::dump(pid, fd, &ours)?);
            e.kind = FdKind::TcpListen as i32;
            fds.push(e);
            continue;
        }
        if target == "anon_inode:[eventpoll]" {
            e.kind = FdKind::Epoll as i32;
            e.epoll = proc::epoll_targets(pid, fd)
                .dumping(pid, "reading epoll interest lists")?
                .into_iter()
                .map(|(fd, events, data)| EpollTarget { fd, events, data })
                .collect();
            fds.push(e);
            continue;
        }
        if let Some(name) = target.strip_prefix("anon_inode:") {
            anon::dump(pid, fd, name, &mut e)?;
            fds.push(e);
            continue;
        }
        if !target.starts_with('/') {
            let kind = target.split(':').next().unwrap_or("unknown");
            return Err(unsupported(pid, fd, format!("{kind}: {target}")));
        }
        if target.ends_with(" (deleted)") {
            return Err(unsupported(pid, fd, format!("a deleted file: {target}")));
        }
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|err| unsupported(pid, fd, format!("{target}: {err}")))?;
        let ft = md.file_type();
        e.path = target.clone();
        if ft.is_file() {
            e.kind = FdKind::Regular as i32;
            e.size = md.size();
            e.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        } else if ft.is_dir() {
            e.kind = FdKind::Directory as i32;
        } else if ft.is_char_device() && STATELESS_DEVICES.contains(&target.as_str()) {
            e.kind = FdKind::CharDevice as i32;
        } else if ft.is_char_device() {
            return Err(unsupported(pid, fd, format!("character device {target}")));
        } else if ft.is_fifo() {
            return Err(unsupported(pid, fd, format!("named pipe (FIFO) {target}")));
        } else {
            return Err(unsupported(pid, fd, format!("{target}")));
        }
        fds.push(e);
    }
    for f in fds.iter().filter(|f| f.kind == FdKind::Epoll as i32) {
        for t in &f.epoll {
            if !fds.iter().any(|x| x.fd == t.fd) {
                return Err(unsupported(
                    pid,
                    f.fd,
                    format!("an epoll instance watching fd {} which is no longer open", t.fd),
                ));
            }
        }
    }
    let mut pipes = Vec::new();
    if !pipe_ends.is_empty() && pidfd.is_none() {
        pidfd = Some(process::pidfd_open(pid).dumping(pid, "reading pipes")?);
    }
    for (ino, (has_read, has_write, read_fd)) in pipe_ends {
        if !(has_read && has_write) {
            let fd = fds.iter().find(|f| f.pipe_id == ino).map_or(-1, |f| f.fd);
            return Err(unsupported(
                pid,
                fd,
                format!("pipe:[{ino}] whose other end is outside the process; pipes between processes come with process-tree support"),
            ));
        }
        let pidfd = pidfd.as_ref().expect("opened above");
        let data = peek_pipe(pid, pidfd, read_fd)?;
        pipes.push(Pipe { id: ino, data });
    }
    Ok(Files { fds, pipes, cwd })
}

/// Copies the unread bytes of the pipe behind `fd` of `pid` without consuming them.
fn peek_pipe(pid: i32, pidfd: &OwnedFd, fd: i32) -> Result<Vec<u8>> {
    let stage = "reading pipe contents";
    let theirs = process::pidfd_getfd(pidfd, fd).dumping(pid, stage)?;
    let pending = process::pipe_pending(&theirs).dumping(pid, stage)?;
    if pending == 0 {
        return Ok(Vec::new());
    }
    let (rd, wr) = process::pipe().dumping(pid, stage)?;
    process::set_pipe_size(&wr, pending).dumping(pid, stage)?;
    let mut copied = 0;
    while copied < pending {
        let n = process::tee(&theirs, &wr, pending - copied).dumping(pid, stage)?;
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
    for f in fds {
        if matches!(
            FdKind::try_from(f.kind),
            Ok(FdKind::Pipe
                | FdKind::Epoll
                | FdKind::TcpListen
                | FdKind::EventFd
                | FdKind::TimerFd
                | FdKind::SignalFd
                | FdKind::Inotify)
        ) {
            continue;
        }
        let md = std::fs::metadata(&f.path).map_err(|e| EngineError::FileChanged {
            path: f.path.clone(),
            detail: format!("the file of fd {} cannot be opened ({e})", f.fd),
        })?;
        if allow_changes || f.kind != FdKind::Regular as i32 {
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

/// Opens every descriptor in the restored process at its number, with its
/// offset and flags; refills pipes. Uses scratch bytes [0, 8192).
pub fn restore(r: &Remote, cwd: &str, fds: &[Fd], pipes: &[Pipe]) -> Result<()> {
    let pid = r.pid;
    let stage = "opening files";
    let a = r.put_cstr(0, cwd).restoring(pid, "setting the cwd")?;
    r.call("chdir", libc::SYS_chdir, [a, 0, 0, 0, 0, 0])
        .map_err(|e| EngineError::FileChanged {
            path: cwd.to_string(),
            detail: format!("the working directory cannot be entered ({e})"),
        })?;
    // Every new descriptor is first moved above all target numbers, so that
    // placing them with dup3 never overwrites one still needed.
    let staging_base = fds.iter().map(|f| f.fd).max().unwrap_or(0) as u64 + 1;
    let mut staged: Vec<(u64, &Fd)> = Vec::new();
    let stage_fd = |fd: u64| -> Result<u64> {
        let high = r
            .call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD as u64, staging_base, 0, 0, 0])
            .restoring(pid, stage)?;
        r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
            .restoring(pid, stage)?;
        Ok(high)
    };
    let mut pipe_fds: HashMap<u64, (u64, u64)> = HashMap::new();
    for p in pipes {
        r.call("pipe2", libc::SYS_pipe2, [r.scratch, 0, 0, 0, 0, 0])
            .restoring(pid, "creating pipes")?;
        let b = r.get(0, 8).restoring(pid, "creating pipes")?;
        let rd = i32::from_le_bytes(b[0..4].try_into().expect("4")) as u64;
        let wr = i32::from_le_bytes(b[4..8].try_into().expect("4")) as u64;
        let (rd, wr) = (stage_fd(rd)?, stage_fd(wr)?);
        if !p.data.is_empty() {
            let pidfd = process::pidfd_open(pid).restoring(pid, "refilling pipes")?;
            let w = process::pidfd_getfd(&pidfd, wr as i32).restoring(pid, "refilling pipes")?;
            if p.data.len() > 65536 {
                process::set_pipe_size(&w, p.data.len()).restoring(pid, "refilling pipes")?;
            }
            write_all_fd(&w, &p.data).restoring(pid, "refilling pipes")?;
        }
        pipe_fds.insert(p.id, (rd, wr));
    }
    for f in fds {
        let kind = FdKind::try_from(f.kind).unwrap_or(FdKind::Regular);
        let status_flags = (f.flags & (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME) as u32) as u64;
        let high = if kind == FdKind::Epoll {
            // Created once every fd it watches has its number (below).
            continue;
        } else if matches!(kind, FdKind::EventFd | FdKind::TimerFd | FdKind::SignalFd | FdKind::Inotify) {
            let fd = anon::restore(r, f)?;
            r.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status_flags, 0, 0, 0])
                .restoring(pid, stage)?;
            stage_fd(fd)?
        } else if kind == FdKind::TcpListen {
            let s = f
                .socket
                .as_ref()
                .ok_or_else(|| EngineError::BadImage(format!("fd {} is a socket without details", f.fd)))?;
            let fd = sockets::restore(r, f.fd, s, status_flags)?;
            stage_fd(fd)?
        } else if kind == FdKind::Pipe {
            let (rd, wr) = *pipe_fds
                .get(&f.pipe_id)
                .ok_or_else(|| EngineError::BadImage(format!("fd {} names an unknown pipe", f.fd)))?;
            let write = f.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let end = if write { wr } else { rd };
            // Each fd gets its own copy; the originals are closed at the end.
            let dup = r
                .call("fcntl(F_DUPFD)", libc::SYS_fcntl, [end, libc::F_DUPFD as u64, staging_base, 0, 0, 0])
                .restoring(pid, stage)?;
            r.call("fcntl(F_SETFL)", libc::SYS_fcntl, [dup, libc::F_SETFL as u64, status_flags, 0, 0, 0])
                .restoring(pid, stage)?;
            dup
        } else {
            let a = r.put_cstr(0, &f.path).restoring(pid, stage)?;
            let oflags = f.flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY) as u32);
            let fd = r
                .call("openat", libc::SYS_openat, [libc::AT_FDCWD as u64, a, oflags as u64, 0, 0, 0])
                .map_err(|e| EngineError::FileChanged {
                    path: f.path.clone(),
                    detail: format!("fd {} cannot be opened again ({e})", f.fd),
                })?;
            let fd = stage_fd(fd)?;
            if kind == FdKind::Regular || kind == FdKind::Directory {
                r.call("lseek", libc::SYS_lseek, [fd, f.pos, libc::SEEK_SET as u64, 0, 0, 0])
                    .restoring(pid, "setting file offsets")?;
            }
            fd
        };
        staged.push((high, f));
    }
    for (_, (rd, wr)) in pipe_fds {
        for fd in [rd, wr] {
            r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
                .restoring(pid, stage)?;
        }
    }
    for (high, f) in staged {
        let cloexec = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        r.call("dup3", libc::SYS_dup3, [high, f.fd as u64, cloexec, 0, 0, 0])
            .restoring(pid, "placing file descriptors")?;
        r.call("close", libc::SYS_close, [high, 0, 0, 0, 0, 0])
            .restoring(pid, stage)?;
    }
    for f in fds.iter().filter(|f| f.kind == FdKind::Epoll as i32) {
        restore_epoll(r, f)?;
    }
    Ok(())
}

/// Creates an epoll instance at its number and fills its interest list.
fn restore_epoll(r: &Remote, f: &Fd) -> Result<()> {
    let pid = r.pid;
    let stage = "creating epoll instances";
    let ep = r
        .call("epoll_create1", libc::SYS_epoll_create1, [0, 0, 0, 0, 0, 0])
        .restoring(pid, stage)?;
    let cloexec = if f.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
    if ep != f.fd as u64 {
        r.call("dup3", libc::SYS_dup3, [ep, f.fd as u64, cloexec, 0, 0, 0])
            .restoring(pid, stage)?;
        r.call("close", libc::SYS_close, [ep, 0, 0, 0, 0, 0])
            .restoring(pid, stage)?;
    } else if f.cloexec {
        r.call("fcntl(F_SETFD)", libc::SYS_fcntl, [ep, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64, 0, 0, 0])
            .restoring(pid, stage)?;
    }
    for t in &f.epoll {
        // struct epoll_event is packed on x86_64: u32 events, u64 data.
        let mut ev = Vec::with_capacity(12);
        ev.extend_from_slice(&t.events.to_le_bytes());
        ev.extend_from_slice(&t.data.to_le_bytes());
        let a = r.put(0, &ev).restoring(pid, stage)?;
        r.call("epoll_ctl", libc::SYS_epoll_ctl, [f.fd as u64, libc::EPOLL_CTL_ADD as u64, t.fd as u64, a, 0, 0])
            .restoring(pid, "filling epoll interest lists")?;
    }
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

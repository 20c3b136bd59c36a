//! Anonymous-inode descriptors: eventfd, timerfd, signalfd, inotify,
//! fanotify.
//!
//! The dump side reads their state from /proc/PID/fdinfo/FD; the restore
//! side creates them again by injected syscalls in the restored process. The
//! caller (resources::files) handles O_NONBLOCK, close-on-exec and the fd
//! number. What is kept, per kind:
//!
//! - eventfd: the counter and EFD_SEMAPHORE (read from `eventfd-semaphore:`;
//!   older kernels do not show it, and the fd is then restored without
//!   semaphore mode).
//! - timerfd: the clock, the interval, the time left to the next expiry (the
//!   time the process spends checkpointed does not count, like for its other
//!   timers), the `timerfd_settime` flags (TFD_TIMER_ABSTIME,
//!   TFD_TIMER_CANCEL_ON_SET, kept in `AnonFd::flags`: timerfds have no
//!   creation flags besides O_NONBLOCK/O_CLOEXEC) and the expirations not
//!   yet read. Before reading fdinfo the dump calls `timerfd_gettime` on a
//!   copy of the fd, which makes the kernel count all the missed periods of
//!   a periodic timer (fdinfo alone shows at most one). An absolute timer is
//!   set again at "now + time left" on its clock, so a CLOCK_REALTIME
//!   deadline moves by the time spent checkpointed (the image keeps only the
//!   time left), and whether a TFD_TIMER_CANCEL_ON_SET timer was already
//!   cancelled by a clock change is not kept. Unread expirations are
//!   put back exactly with the TFD_IOC_SET_TICKS ioctl; on a kernel without
//!   it (no CONFIG_CHECKPOINT_RESTORE) the timer is instead armed to expire
//!   1 ns after the restore (with its interval), so that one expiration is
//!   readable again: the count is then 1 and a pending one-shot expiry is
//!   lost.
//! - signalfd: the signal set. Pending signals belong to the process and its
//!   threads and are restored with them.
//! - inotify: each watch (wd, mask and path). The kernel names a watch by
//!   inode and device; its path is found by opening the file handle that
//!   fdinfo shows (open_by_handle_at, needs CAP_DAC_READ_SEARCH) on a mount
//!   of that device, and checked against the inode and device (the mount
//!   point is opened for this, which watchers of it may see as an open). The
//!   paths are those seen by godwit, like the paths of other files. On restore
//!   the watches are added in wd order; the kernel hands out wds one after
//!   the other (cyclically, from 1), so the numbers of removed watches are
//!   used up by adding and removing a watch, and each restored wd is checked.
//!   The IN_IGNORED events those removals queue are then read away, and with
//!   them any event of the restored watches that happened during the restore
//!   (before the process runs again, like all changes while checkpointed).
//!   Events not yet read at dump time cannot be put back: such a dump is
//!   refused (retry it). The next wd the kernel hands out after the restore
//!   is one more than the highest watch (the original may have been further
//!   along if its newest watches were removed). A watch on a deleted
//!   regular file that a descriptor of the same process holds is kept by
//!   that file's node id (`InotifyWatch::node_id`): on restore it is added
//!   on the file the deleted-files code makes again, while it has its
//!   temporary name (the caller creates such an instance after the
//!   process's other descriptors), and the events of the restore are read
//!   away.
//! - fanotify: the fanotify_init flags and event_f_flags (fdinfo's
//!   `fanotify flags:` line) and each mark: on an inode (its path found from
//!   its file handle as for inotify), a mount (its mount point, by mount id
//!   in godwit's /proc/self/mountinfo, refused when another mount hides it)
//!   or a filesystem (a mount point of its device), with its mask, ignore
//!   mask and flags (FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE,
//!   FAN_MARK_IGNORE). Marks are added again in the opposite order of
//!   fdinfo's (the kernel lists the newest first), so the list reads the
//!   same. A mark left with both masks empty (an ignore mask cleared by a
//!   modification) has no effect and cannot be made again: it is not kept.
//!   Refused: events queued and not read (retry the dump), marks that
//!   ask for permission events (a permission event read and not yet
//!   answered cannot be seen, and would be lost), marks of other kinds, and
//!   marks whose file, mount or filesystem cannot be found.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{AnonFd, FanotifyMark, FanotifyTarget, Fd, FdKind, InotifyWatch};
use godwit_sys::{handle, proc, process, SysError};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

/// eventfd creation flag (linux/eventfd.h).
const EFD_SEMAPHORE: u32 = 1;
/// timerfd_settime flags (linux/timerfd.h).
const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
/// `_IOW('T', 0, u64)`: set the unread expirations of a timerfd.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
/// inotify_add_watch flags that only steer the call itself.
const IN_ADD_FLAGS: u32 =
    libc::IN_ONLYDIR | libc::IN_DONT_FOLLOW | IN_MASK_CREATE | libc::IN_MASK_ADD;
const IN_MASK_CREATE: u32 = 0x1000_0000;
/// At most this many numbers of removed inotify watches are used up again
/// (two injected syscalls each).
const MAX_WD_GAP: u64 = 100_000;
const NS: u64 = 1_000_000_000;

fn unsupported(pid: i32, fd: i32, what: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported {
        pid,
        what: format!("fd {fd} ({what})"),
    }
}

fn bad_fdinfo(pid: i32, fd: i32, detail: String) -> EngineError {
    EngineError::Sys {
        pid,
        stage: "reading anonymous descriptors",
        source: SysError::Proc {
            path: format!("{}/fdinfo/{fd}", godwit_sys::proc::dir(pid)),
            detail,
        },
    }
}

/// Fills `e` (kind and state) for descriptor `fd` of `pid`, whose
/// /proc/PID/fd link reads `anon_inode:NAME`; refuses kinds not supported.
pub fn dump(pid: i32, fd: i32, name: &str, e: &mut Fd) -> Result<()> {
    let stage = "reading anonymous descriptors";
    let kind = match name {
        "[eventfd]" => FdKind::EventFd,
        "[timerfd]" => FdKind::TimerFd,
        "[signalfd]" => FdKind::SignalFd,
        "inotify" => FdKind::Inotify,
        "[fanotify]" => FdKind::Fanotify,
        _ => return Err(unsupported(pid, fd, describe_unsupported(name))),
    };
    let read_info = || {
        let path = format!("{}/fdinfo/{fd}", godwit_sys::proc::dir(pid));
        std::fs::read_to_string(&path)
            .map_err(|err| SysError::Proc {
                path,
                detail: err.to_string(),
            })
            .dumping(pid, stage)
    };
    let anon = match kind {
        FdKind::EventFd => {
            let ev = parse_eventfd(&read_info()?).map_err(|d| bad_fdinfo(pid, fd, d))?;
            AnonFd {
                counter: ev.counter,
                flags: if ev.semaphore { EFD_SEMAPHORE } else { 0 },
                ..Default::default()
            }
        }
        FdKind::TimerFd => {
            // Let the kernel count the missed periods of a periodic timer.
            let pidfd = process::pidfd_open(pid).dumping(pid, stage)?;
            let ours = process::pidfd_getfd(&pidfd, fd).dumping(pid, stage)?;
            handle::timerfd_gettime(ours.as_fd()).dumping(pid, stage)?;
            let t = parse_timerfd(&read_info()?).map_err(|d| bad_fdinfo(pid, fd, d))?;
            AnonFd {
                flags: t.settime_flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET),
                clock_id: t.clock_id,
                interval_ns: t.interval_ns,
                value_ns: t.value_ns,
                ticks: t.ticks,
                ..Default::default()
            }
        }
        FdKind::SignalFd => AnonFd {
            sigmask: parse_signalfd(&read_info()?).map_err(|d| bad_fdinfo(pid, fd, d))?,
            ..Default::default()
        },
        FdKind::Fanotify => dump_fanotify(pid, fd, &read_info)?,
        // The kind left: FdKind::Inotify.
        _ => dump_inotify(pid, fd, &read_info)?,
    };
    e.kind = kind as i32;
    e.anon = Some(anon);
    Ok(())
}

/// Refuses notification descriptor `fd` of `pid` (`what`) while events wait
/// in it to be read: they cannot be queued again.
fn no_events_waiting(pid: i32, fd: i32, stage: &'static str, what: &str) -> Result<()> {
    let pidfd = process::pidfd_open(pid).dumping(pid, stage)?;
    let ours = process::pidfd_getfd(&pidfd, fd).dumping(pid, stage)?;
    let unread = process::pipe_pending(&ours).dumping(pid, stage)?;
    if unread > 0 {
        return Err(unsupported(
            pid,
            fd,
            format!("{what} with {unread} bytes of events not yet read, which cannot be queued again; retry the dump"),
        ));
    }
    Ok(())
}

/// The watches of inotify descriptor `fd` of `pid`, each with its path.
fn dump_inotify(pid: i32, fd: i32, read_info: &dyn Fn() -> Result<String>) -> Result<AnonFd> {
    no_events_waiting(pid, fd, "reading inotify instances", "an inotify instance")?;
    let raw = parse_inotify(&read_info()?).map_err(|d| bad_fdinfo(pid, fd, d))?;
    let gap = raw.last().map_or(0, |w| w.wd as u64) - raw.len() as u64;
    if gap > MAX_WD_GAP {
        return Err(unsupported(
            pid,
            fd,
            format!("an inotify instance whose watch numbers go up to {} after {gap} removed watches (at most {MAX_WD_GAP} can be skipped on restore)", raw.last().map_or(0, |w| w.wd)),
        ));
    }
    let mounts = mounts_by_device();
    let held = deleted_held(pid);
    let mut watches = Vec::with_capacity(raw.len());
    for w in &raw {
        if let Some(path) = held.get(&(w.sdev, w.ino)) {
            watches.push(InotifyWatch {
                wd: w.wd,
                path: path.clone(),
                mask: w.mask & !IN_ADD_FLAGS,
                node_id: crate::resources::memory::shmem_id(
                    (w.sdev >> 20) as u32,
                    (w.sdev & 0xfffff) as u32,
                    w.ino,
                ),
            });
            continue;
        }
        let path = watch_path(w, &mounts).map_err(|why| {
            unsupported(
                pid,
                fd,
                format!(
                    "inotify watch {} on inode {} of device {}:{}: {why}",
                    w.wd,
                    w.ino,
                    w.sdev >> 20,
                    w.sdev & 0xfffff
                ),
            )
        })?;
        watches.push(InotifyWatch {
            wd: w.wd,
            path,
            mask: w.mask & !IN_ADD_FLAGS,
            node_id: 0,
        });
    }
    Ok(AnonFd {
        watches,
        ..Default::default()
    })
}

/// The deleted files (link count 0) that descriptors of `pid` hold, by
/// (kernel device, inode): the path each was at, as its fd's link shows it
/// without " (deleted)". The deleted-files code makes them again at restore
/// (Fd::node_id), and an inotify watch on one is added again on that file.
fn deleted_held(pid: i32) -> std::collections::HashMap<(u64, u64), String> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("{}/fd", godwit_sys::proc::dir(pid))) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let Some(path) = link.to_str().and_then(|l| l.strip_suffix(" (deleted)")) else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        match std::fs::metadata(e.path()) {
            Ok(md) if md.nlink() == 0 && md.file_type().is_file() => {
                out.insert((kernel_dev(md.dev()), md.ino()), path.to_string());
            }
            _ => {}
        }
    }
    out
}

/// fanotify mark flags that fdinfo shows (`mflags:`).
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
const FAN_MARK_SHOWN: u32 = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;
/// fanotify_mark flags used on restore.
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
/// Permission events (FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM,
/// FAN_PRE_ACCESS and any later ones in that byte).
const FAN_PERM_EVENTS: u32 = 0x00ff_0000;

/// The flags and marks of fanotify descriptor `fd` of `pid`.
fn dump_fanotify(pid: i32, fd: i32, read_info: &dyn Fn() -> Result<String>) -> Result<AnonFd> {
    no_events_waiting(pid, fd, "reading fanotify groups", "a fanotify group")?;
    let info = parse_fanotify(&read_info()?).map_err(|d| bad_fdinfo(pid, fd, d))?;
    let mounts = mounts_by_device();
    let mount_ids = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut marks = Vec::with_capacity(info.marks.len());
    // fdinfo lists the newest mark first: the image keeps them oldest first.
    for m in info.marks.iter().rev() {
        let refuse = |why: String| {
            unsupported(
                pid,
                fd,
                format!("a fanotify group's mark on {}: {why}", m.what()),
            )
        };
        if (m.mask | m.ignored_mask) & FAN_PERM_EVENTS != 0 {
            return Err(refuse(format!(
                "it asks for permission events (mask {:#x}); one read and not yet answered cannot be seen and would be lost",
                m.mask
            )));
        }
        if m.mask == 0 && m.ignored_mask == 0 {
            // An ignore mask without FAN_MARK_IGNORED_SURV_MODIFY is cleared
            // by the next modification; the mark is left with no effect on
            // any event, and fanotify_mark cannot make such a mark.
            tracing::info!(pid, fd, mark = %m.what(), "a fanotify mark with empty masks (no effect) is not kept");
            continue;
        }
        if m.mflags & !FAN_MARK_SHOWN != 0 {
            return Err(refuse(format!("unknown mark flags {:#x}", m.mflags)));
        }
        let (target, path) = match m.on {
            MarkOn::Inode {
                ino,
                sdev,
                ref handle,
            } => {
                let w = RawWatch {
                    wd: 0,
                    ino,
                    sdev,
                    mask: m.mask,
                    handle: handle.clone(),
                };
                (
                    FanotifyTarget::Inode,
                    watch_path(&w, &mounts).map_err(refuse)?,
                )
            }
            MarkOn::Mount(id) => (
                FanotifyTarget::Mount,
                mount_point_of(&mount_ids, id).map_err(refuse)?,
            ),
            MarkOn::Filesystem(sdev) => {
                let point = mounts
                    .iter()
                    .find(|(d, _)| *d == sdev)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| {
                        refuse("no mount of that filesystem is visible to godwit".into())
                    })?;
                (FanotifyTarget::Filesystem, point)
            }
        };
        marks.push(FanotifyMark {
            target: target as i32,
            path,
            mflags: m.mflags,
            mask: m.mask,
            ignored_mask: m.ignored_mask,
        });
    }
    Ok(AnonFd {
        // Kept whole: the group remembers FAN_CLOEXEC and FAN_NONBLOCK too
        // (fdinfo shows them); the fd's own flags are set afterwards.
        flags: info.flags,
        fanotify_event_flags: info.event_flags,
        fanotify_marks: marks,
        ..Default::default()
    })
}

/// The mount point of the mount with id `id` in mountinfo `text`, refused
/// when a later mount on the same point hides it.
fn mount_point_of(text: &str, id: u64) -> Result<String, String> {
    let entries: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.first()?.parse().ok()?, unescape_octal(f.get(4)?)))
        })
        .collect();
    let Some(pos) = entries.iter().position(|(i, _)| *i == id) else {
        return Err(format!("mount {id} is not visible to godwit"));
    };
    let point = &entries[pos].1;
    if entries[pos + 1..].iter().any(|(_, p)| p == point) {
        return Err(format!(
            "mount {id} on {point} is hidden by another mount on it"
        ));
    }
    Ok(point.clone())
}

/// What an unsupported anonymous descriptor is, for the error message.
fn describe_unsupported(name: &str) -> String {
    let what = match name {
        "[io_uring]" => "an io_uring instance",
        "[userfaultfd]" => "a userfaultfd",
        "[perf_event]" => "a perf event",
        "[pidfd]" => "a pidfd",
        "[fanotify]" => "a fanotify instance",
        _ if name.starts_with("bpf") => "a BPF object",
        _ if name.starts_with("kvm") => "a KVM descriptor",
        _ => "an anonymous descriptor",
    };
    format!("{what}, anon_inode:{name}")
}

#[derive(Debug, PartialEq, Eq)]
struct EventFdInfo {
    counter: u64,
    semaphore: bool,
}

#[derive(Debug, PartialEq, Eq)]
struct TimerFdInfo {
    clock_id: i32,
    ticks: u64,
    settime_flags: u32,
    value_ns: u64,
    interval_ns: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct RawWatch {
    wd: i32,
    ino: u64,
    /// The kernel's dev_t: major << 20 | minor.
    sdev: u64,
    mask: u32,
    /// (fhandle-type, f_handle) when the filesystem can encode one.
    handle: Option<(i32, Vec<u8>)>,
}

/// The value of `key:` in fdinfo text, trimmed.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
}

fn need<'a>(text: &'a str, key: &str) -> Result<&'a str, String> {
    field(text, key).ok_or_else(|| format!("no {key:?} line"))
}

fn hex(v: &str, what: &str) -> Result<u64, String> {
    u64::from_str_radix(v, 16).map_err(|_| format!("bad {what} {v:?}"))
}

fn parse_eventfd(text: &str) -> Result<EventFdInfo, String> {
    Ok(EventFdInfo {
        counter: hex(need(text, "eventfd-count")?, "eventfd-count")?,
        semaphore: match field(text, "eventfd-semaphore") {
            Some(v) => {
                v.parse::<u32>()
                    .map_err(|_| format!("bad eventfd-semaphore {v:?}"))?
                    != 0
            }
            None => false,
        },
    })
}

/// "(sec, nsec)" as nanoseconds.
fn timespec_ns(v: &str, what: &str) -> Result<u64, String> {
    let err = || format!("bad {what} {v:?}");
    let (s, n) = v
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .and_then(|v| v.split_once(','))
        .ok_or_else(err)?;
    let s: u64 = s.trim().parse().map_err(|_| err())?;
    let n: u64 = n.trim().parse().map_err(|_| err())?;
    s.checked_mul(NS)
        .and_then(|s| s.checked_add(n))
        .ok_or_else(err)
}

fn parse_timerfd(text: &str) -> Result<TimerFdInfo, String> {
    let flags = need(text, "settime flags")?;
    Ok(TimerFdInfo {
        clock_id: need(text, "clockid")?
            .parse()
            .map_err(|_| "bad clockid".to_string())?,
        ticks: need(text, "ticks")?
            .parse()
            .map_err(|_| "bad ticks".to_string())?,
        settime_flags: u32::from_str_radix(flags, 8)
            .map_err(|_| format!("bad settime flags {flags:?}"))?,
        value_ns: timespec_ns(need(text, "it_value")?, "it_value")?,
        interval_ns: timespec_ns(need(text, "it_interval")?, "it_interval")?,
    })
}

fn parse_signalfd(text: &str) -> Result<u64, String> {
    hex(need(text, "sigmask")?, "sigmask")
}

/// The watches of an inotify fdinfo, in wd order.
fn parse_inotify(text: &str) -> Result<Vec<RawWatch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let get = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        };
        let req = |key: &str| get(key).ok_or_else(|| format!("no {key} in {line:?}"));
        let wd = hex(req("wd")?, "wd")?;
        let handle = parse_handle(&get, line)?;
        out.push(RawWatch {
            wd: i32::try_from(wd)
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| format!("bad wd in {line:?}"))?,
            ino: hex(req("ino")?, "ino")?,
            sdev: hex(req("sdev")?, "sdev")?,
            mask: hex(req("mask")?, "mask")? as u32,
            handle,
        });
    }
    out.sort_by_key(|w| w.wd);
    if out.windows(2).any(|p| p[0].wd == p[1].wd) {
        return Err("two watches with the same wd".into());
    }
    Ok(out)
}

#[derive(Debug, PartialEq, Eq)]
enum MarkOn {
    Inode {
        ino: u64,
        sdev: u64,
        handle: Option<(i32, Vec<u8>)>,
    },
    Mount(u64),
    Filesystem(u64),
}

#[derive(Debug, PartialEq, Eq)]
struct RawMark {
    on: MarkOn,
    mflags: u32,
    mask: u32,
    ignored_mask: u32,
}

impl RawMark {
    fn what(&self) -> String {
        match &self.on {
            MarkOn::Inode { ino, sdev, .. } => {
                format!("inode {ino} of device {}:{}", sdev >> 20, sdev & 0xfffff)
            }
            MarkOn::Mount(id) => format!("mount {id}"),
            MarkOn::Filesystem(sdev) => {
                format!("the filesystem of device {}:{}", sdev >> 20, sdev & 0xfffff)
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct FanotifyInfo {
    flags: u32,
    event_flags: u32,
    /// In fdinfo's order (newest first).
    marks: Vec<RawMark>,
}

/// The `fhandle-bytes:N fhandle-type:T f_handle:HEX` of an fdinfo line.
fn parse_handle<'a>(
    get: &dyn Fn(&str) -> Option<&'a str>,
    line: &str,
) -> Result<Option<(i32, Vec<u8>)>, String> {
    let (Some(n), Some(t), Some(h)) = (get("fhandle-bytes"), get("fhandle-type"), get("f_handle"))
    else {
        return Ok(None);
    };
    let n = hex(n, "fhandle-bytes")? as usize;
    let t = hex(t, "fhandle-type")? as i32;
    if h.len() != 2 * n || n > handle::MAX_HANDLE_BYTES {
        return Err(format!("bad f_handle in {line:?}"));
    }
    let bytes = (0..n)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("bad f_handle in {line:?}"))?;
    Ok(Some((t, bytes)))
}

/// The flags and marks of a fanotify fdinfo.
fn parse_fanotify(text: &str) -> Result<FanotifyInfo, String> {
    let mut flags = None;
    let mut marks = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("fanotify ") else {
            continue;
        };
        let get = |key: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        };
        let req = |key: &str| get(key).ok_or_else(|| format!("no {key} in {line:?}"));
        if let Some(f) = get("flags") {
            flags = Some((
                hex(f, "flags")? as u32,
                hex(req("event-flags")?, "event-flags")? as u32,
            ));
            continue;
        }
        let on = if let Some(ino) = get("ino") {
            MarkOn::Inode {
                ino: hex(ino, "ino")?,
                sdev: hex(req("sdev")?, "sdev")?,
                handle: parse_handle(&get, line)?,
            }
        } else if let Some(id) = get("mnt_id") {
            MarkOn::Mount(hex(id, "mnt_id")?)
        } else if let Some(dev) = get("sdev") {
            MarkOn::Filesystem(hex(dev, "sdev")?)
        } else {
            return Err(format!("a fanotify mark of an unknown kind: {line:?}"));
        };
        marks.push(RawMark {
            on,
            mflags: hex(req("mflags")?, "mflags")? as u32,
            mask: hex(req("mask")?, "mask")? as u32,
            ignored_mask: hex(req("ignored_mask")?, "ignored_mask")? as u32,
        });
    }
    let (flags, event_flags) = flags.ok_or("no \"fanotify flags:\" line")?;
    Ok(FanotifyInfo {
        flags,
        event_flags,
        marks,
    })
}

/// Mount points of ours, per device (the kernel's major << 20 | minor),
/// mounts of a filesystem's root first.
fn mounts_by_device() -> Vec<(u64, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v = parse_mountinfo(&text);
    v.sort_by_key(|m| !m.2);
    v.into_iter().map(|(dev, point, _)| (dev, point)).collect()
}

/// (device, mount point, whether the mount shows the filesystem's root).
fn parse_mountinfo(text: &str) -> Vec<(u64, String, bool)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(devs), Some(root), Some(point)) = (f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        let Some((maj, min)) = devs.split_once(':') else {
            continue;
        };
        let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
            continue;
        };
        out.push((maj << 20 | min, unescape_octal(point), *root == "/"));
    }
    out
}

/// Undoes the `\ooo` escapes of /proc/self/mountinfo.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = |k: usize| b.get(i + k).copied().filter(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' {
            if let (Some(x), Some(y), Some(z)) = (oct(1), oct(2), oct(3)) {
                let v = (x - b'0') as u32 * 64 + (y - b'0') as u32 * 8 + (z - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The kernel's dev_t (major << 20 | minor) of a userspace st_dev.
fn kernel_dev(st_dev: u64) -> u64 {
    let major = ((st_dev >> 32) & 0xffff_f000) | ((st_dev >> 8) & 0xfff);
    let minor = ((st_dev >> 12) & 0xffff_ff00) | (st_dev & 0xff);
    major << 20 | minor
}

/// The path of the inode an inotify watch is on, checked against its inode
/// and device; or why it cannot be found.
fn watch_path(w: &RawWatch, mounts: &[(u64, String)]) -> Result<String, String> {
    let Some((htype, bytes)) = &w.handle else {
        return Err("its filesystem gives no file handle to find its path by".into());
    };
    let mut tried = false;
    let mut last = String::from("no mount of that device was found");
    for (_, point) in mounts.iter().filter(|(d, _)| *d == w.sdev) {
        // An O_PATH descriptor makes no inotify/fanotify events on the
        // mount point, but many kernels refuse it (EBADF) and then a real
        // open (one IN_OPEN/IN_CLOSE_NOWRITE for watchers of it) is needed.
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(point)
            .and_then(|m| match handle::open_by_handle(m.as_fd(), *htype, bytes) {
                Err(e) if e.errno() == Some(libc::EBADF) => {
                    let m = std::fs::File::open(point)?;
                    Ok(handle::open_by_handle(m.as_fd(), *htype, bytes))
                }
                other => Ok(other),
            });
        let Ok(opened) = opened else {
            continue;
        };
        tried = true;
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(libc::ESTALE) => {
                return Err("its file was deleted and is not held open by the process".into());
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let link = match proc::link(&format!("/proc/self/fd/{}", fd.as_raw_fd())) {
            Ok(l) => l,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let Some(path) = link.to_str() else {
            return Err(format!("its path {} is not UTF-8", link.display()));
        };
        if path.ends_with(" (deleted)") {
            return Err(format!(
                "its file was deleted ({path}) and is not held open by the process"
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.ino() == w.ino && kernel_dev(md.dev()) == w.sdev => {
                return Ok(path.to_string())
            }
            Ok(_) => last = format!("{path} (found through {point}) is another file"),
            Err(e) => last = format!("{path}: {e}"),
        }
    }
    if !tried {
        return Err("no mount of its device is visible to godwit".into());
    }
    Err(format!("its path could not be found: {last}"))
}

/// Gives the temporary path of a deleted file being made again (by its
/// `Fd::node_id`) to a function, while that path exists.
pub type AtNode<'a> = dyn Fn(u64, &dyn Fn(&str) -> Result<u64>) -> Result<u64> + 'a;

/// Creates the descriptor again in the restored process; returns its number
/// there (any number: the caller moves it into place). Uses scratch bytes
/// [0, 12288). `at_node`: for inotify watches on deleted files.
pub fn restore(r: &Remote, f: &Fd, at_node: &AtNode) -> Result<u64> {
    let a = f.anon.as_ref().ok_or_else(|| {
        EngineError::BadImage(format!(
            "fd {} is an anonymous descriptor without its state",
            f.fd
        ))
    })?;
    match FdKind::try_from(f.kind) {
        Ok(FdKind::EventFd) => restore_eventfd(r, a),
        Ok(FdKind::TimerFd) => restore_timerfd(r, a),
        Ok(FdKind::SignalFd) => restore_signalfd(r, a),
        Ok(FdKind::Inotify) => restore_inotify(r, f.fd, a, at_node),
        Ok(FdKind::Fanotify) => restore_fanotify(r, f.fd, a),
        _ => Err(EngineError::BadImage(format!(
            "fd {}: not an anonymous descriptor (kind {})",
            f.fd, f.kind
        ))),
    }
}

fn restore_eventfd(r: &Remote, a: &AnonFd) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating eventfds";
    // eventfd2 takes an unsigned int; a larger counter is written afterwards.
    let (init, rest) = match u32::try_from(a.counter) {
        Ok(c) => (c as u64, 0),
        Err(_) => (0, a.counter),
    };
    let flags = (a.flags & EFD_SEMAPHORE) as u64;
    let fd = r
        .call("eventfd2", libc::SYS_eventfd2, [init, flags, 0, 0, 0, 0])
        .restoring(pid, stage)?;
    if rest > 0 {
        let buf = r.put(0, &rest.to_le_bytes()).restoring(pid, stage)?;
        r.call("write(eventfd)", libc::SYS_write, [fd, buf, 8, 0, 0, 0])
            .restoring(pid, stage)?;
    }
    Ok(fd)
}

fn timespec(ns: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(ns / NS).to_le_bytes());
    b[8..].copy_from_slice(&(ns % NS).to_le_bytes());
    b
}

fn restore_timerfd(r: &Remote, a: &AnonFd) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating timerfds";
    let fd = r
        .call(
            "timerfd_create",
            libc::SYS_timerfd_create,
            [a.clock_id as u64, 0, 0, 0, 0, 0],
        )
        .restoring(pid, stage)?;
    // Arms the timer: first expiry `value` ns from now, then every interval.
    let arm = |value: u64| -> Result<()> {
        let flags = a.flags & (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET);
        let value = if flags & TFD_TIMER_ABSTIME != 0 {
            let now = r.put(0, &[0u8; 16]).restoring(pid, stage)?;
            r.call(
                "clock_gettime",
                libc::SYS_clock_gettime,
                [a.clock_id as u64, now, 0, 0, 0, 0],
            )
            .restoring(pid, stage)?;
            let b = r.get(0, 16).restoring(pid, stage)?;
            let now = crate::remote::u64_at(&b, 0) * NS + crate::remote::u64_at(&b, 1);
            now + value
        } else {
            value
        };
        let mut its = Vec::with_capacity(32);
        its.extend_from_slice(&timespec(a.interval_ns));
        its.extend_from_slice(&timespec(value));
        let p = r.put(64, &its).restoring(pid, stage)?;
        r.call(
            "timerfd_settime",
            libc::SYS_timerfd_settime,
            [fd, flags as u64, p, 0, 0, 0],
        )
        .restoring(pid, "setting timerfds")?;
        Ok(())
    };
    if a.value_ns > 0 {
        arm(a.value_ns)?;
    } else if a.interval_ns > 0 {
        // A periodic timer due right now.
        arm(1)?;
    }
    if a.ticks > 0 {
        let p = r.put(0, &a.ticks.to_le_bytes()).restoring(pid, stage)?;
        match r.call(
            "ioctl(TFD_IOC_SET_TICKS)",
            libc::SYS_ioctl,
            [fd, TFD_IOC_SET_TICKS, p, 0, 0, 0],
        ) {
            Ok(_) => {}
            Err(e) if e.errno() == Some(libc::ENOTTY) => {
                tracing::warn!(
                    pid,
                    ticks = a.ticks,
                    "this kernel cannot set timerfd expirations; arming a 1 ns expiry instead"
                );
                arm(1)?;
            }
            Err(e) => return Err(e).restoring(pid, "setting timerfd expirations"),
        }
    }
    Ok(fd)
}

fn restore_signalfd(r: &Remote, a: &AnonFd) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating signalfds";
    let mask = r.put(0, &a.sigmask.to_le_bytes()).restoring(pid, stage)?;
    // fd -1: a new signalfd; the set is 8 bytes (_NSIG / 8).
    r.call(
        "signalfd4",
        libc::SYS_signalfd4,
        [u64::MAX, mask, 8, 0, 0, 0],
    )
    .restoring(pid, stage)
}

fn restore_inotify(r: &Remote, fd_no: i32, a: &AnonFd, at_node: &AtNode) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating inotify instances";
    let mut watches: Vec<&InotifyWatch> = a.watches.iter().collect();
    watches.sort_by_key(|w| w.wd);
    let bad = |what: String| EngineError::BadImage(format!("fd {fd_no} (inotify): {what}"));
    if watches.first().is_some_and(|w| w.wd < 1) || watches.windows(2).any(|p| p[0].wd == p[1].wd) {
        return Err(bad("watch numbers are not distinct positive numbers".into()));
    }
    let gap = watches.last().map_or(0, |w| w.wd as u64) - watches.len() as u64;
    if gap > MAX_WD_GAP {
        return Err(bad(format!(
            "{gap} watch numbers to skip (at most {MAX_WD_GAP})"
        )));
    }
    // Non-blocking until the caller sets the fd's own flags, so that the
    // IN_IGNORED events of skipped numbers can be read away below.
    let fd = r
        .call(
            "inotify_init1",
            libc::SYS_inotify_init1,
            [libc::IN_NONBLOCK as u64, 0, 0, 0, 0, 0],
        )
        .restoring(pid, stage)?;
    let add = |w: &InotifyWatch, path: &str| -> Result<i32> {
        let p = r.put_cstr(0, path).restoring(pid, stage)?;
        let mask = (w.mask & !IN_ADD_FLAGS) | libc::IN_DONT_FOLLOW;
        let wd = r
            .call(
                "inotify_add_watch",
                libc::SYS_inotify_add_watch,
                [fd, p, mask as u64, 0, 0, 0],
            )
            .map_err(|e| EngineError::FileChanged {
                path: w.path.clone(),
                detail: format!(
                    "inotify watch {} of fd {fd_no} cannot be added again ({e})",
                    w.wd
                ),
            })?;
        Ok(wd as i32)
    };
    let next = std::cell::Cell::new(1);
    let skipped = std::cell::Cell::new(0u64);
    let mut on_deleted = false;
    for w in watches {
        // Uses up the number of each removed watch with a watch added and
        // removed again (on the same file: it is not watched yet), then
        // adds the watch.
        let watch = |path: &str| -> Result<u64> {
            while next.get() < w.wd {
                let got = add(w, path)?;
                if got != next.get() {
                    return Err(bad(format!(
                        "skipping removed watch {} got watch number {got}",
                        next.get()
                    )));
                }
                r.call(
                    "inotify_rm_watch",
                    libc::SYS_inotify_rm_watch,
                    [fd, got as u64, 0, 0, 0, 0],
                )
                .restoring(pid, stage)?;
                next.set(next.get() + 1);
                skipped.set(skipped.get() + 1);
            }
            let got = add(w, path)?;
            if got != w.wd {
                return Err(bad(format!(
                    "the watch on {} got number {got} instead of {}",
                    w.path, w.wd
                )));
            }
            next.set(w.wd + 1);
            Ok(0)
        };
        if w.node_id != 0 {
            // The deleted file, made again under a temporary name: watched
            // there before the name is removed again.
            at_node(w.node_id, &watch)?;
            on_deleted = true;
        } else {
            watch(&w.path)?;
        }
    }
    let skipped = skipped.get();
    // Events of the restore itself: IN_IGNORED of skipped numbers, and
    // those of deleted files made again (their name removed: IN_ATTRIB).
    if skipped > 0 || on_deleted {
        // Each read takes up to 256 IN_IGNORED events (16 bytes each); stop
        // in any case once those are surely gone.
        const BUF: u64 = 4096;
        for _ in 0..skipped / 256 + 16 {
            match r.call(
                "read(inotify)",
                libc::SYS_read,
                [fd, r.scratch + 8192, BUF, 0, 0, 0],
            ) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.errno() == Some(libc::EAGAIN) => break,
                Err(e) => return Err(e).restoring(pid, stage),
            }
        }
    }
    Ok(fd)
}

fn restore_fanotify(r: &Remote, fd_no: i32, a: &AnonFd) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating fanotify groups";
    let fd = r
        .call(
            "fanotify_init",
            libc::SYS_fanotify_init,
            [a.flags as u64, a.fanotify_event_flags as u64, 0, 0, 0, 0],
        )
        .restoring(pid, stage)?;
    for m in &a.fanotify_marks {
        let Ok(target) = FanotifyTarget::try_from(m.target) else {
            return Err(EngineError::BadImage(format!(
                "fd {fd_no} (fanotify): a mark of unknown kind {}",
                m.target
            )));
        };
        let on = match target {
            FanotifyTarget::Inode => FAN_MARK_DONT_FOLLOW,
            FanotifyTarget::Mount => FAN_MARK_MOUNT,
            FanotifyTarget::Filesystem => FAN_MARK_FILESYSTEM,
        };
        let p = r.put_cstr(0, &m.path).restoring(pid, stage)?;
        let mark = |flags: u32, mask: u32| -> Result<()> {
            r.call(
                "fanotify_mark",
                libc::SYS_fanotify_mark,
                [
                    fd,
                    (FAN_MARK_ADD | on | flags) as u64,
                    mask as u64,
                    libc::AT_FDCWD as u64,
                    p,
                    0,
                ],
            )
            .map_err(|e| EngineError::FileChanged {
                path: m.path.clone(),
                detail: format!("a mark of fanotify fd {fd_no} cannot be added again ({e})"),
            })?;
            Ok(())
        };
        let evictable = m.mflags & FAN_MARK_EVICTABLE;
        if m.mask != 0 {
            mark(evictable, m.mask)?;
        }
        if m.ignored_mask != 0 {
            let how = if m.mflags & FAN_MARK_IGNORE != 0 {
                FAN_MARK_IGNORE
            } else {
                FAN_MARK_IGNORED_MASK
            };
            mark(
                how | evictable | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY),
                m.ignored_mask,
            )?;
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTFD: &str = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\neventfd-count:                5\neventfd-id: 1\neventfd-semaphore: 1\n";
    const EVENTFD_OLD: &str = "pos:\t0\nflags:\t02\nmnt_id:\t15\neventfd-count: fffffffffffffffe\n";
    const TIMERFD: &str = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\nsettime flags: 03\nit_value: (99, 401987575)\nit_interval: (0, 20000000)\n";
    const SIGNALFD: &str =
        "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nsigmask:\t0000000000004200\n";
    const INOTIFY: &str = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1038\n\
        inotify wd:c ino:13 sdev:fe00000 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:1300000000000000\n\
        inotify wd:1 ino:3c4a7 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n\
        inotify wd:2 ino:5 sdev:17 mask:2 ignored_mask:0\n";

    #[test]
    fn parses_eventfd() {
        assert_eq!(
            parse_eventfd(EVENTFD),
            Ok(EventFdInfo {
                counter: 5,
                semaphore: true
            })
        );
        assert_eq!(
            parse_eventfd(EVENTFD_OLD),
            Ok(EventFdInfo {
                counter: 0xffff_ffff_ffff_fffe,
                semaphore: false
            })
        );
        assert!(parse_eventfd("pos: 0\n").is_err());
        assert!(parse_eventfd("eventfd-count: zz\n").is_err());
    }

    #[test]
    fn parses_timerfd() {
        assert_eq!(
            parse_timerfd(TIMERFD),
            Ok(TimerFdInfo {
                clock_id: 1,
                ticks: 3,
                settime_flags: 3,
                value_ns: 99_401_987_575,
                interval_ns: 20_000_000,
            })
        );
        assert!(
            parse_timerfd(&TIMERFD.replace("it_value: (99, 401987575)", "it_value: 99")).is_err()
        );
        assert!(parse_timerfd(&TIMERFD.replace("ticks: 3\n", "")).is_err());
    }

    #[test]
    fn parses_signalfd() {
        assert_eq!(
            parse_signalfd(SIGNALFD),
            Ok(1 << (libc::SIGUSR1 - 1) | 1 << (libc::SIGTERM - 1))
        );
        assert!(parse_signalfd("flags: 02\n").is_err());
    }

    #[test]
    fn parses_inotify_in_wd_order() {
        let w = parse_inotify(INOTIFY).unwrap();
        assert_eq!(w.iter().map(|w| w.wd).collect::<Vec<_>>(), [1, 2, 12]);
        assert_eq!(
            w[0],
            RawWatch {
                wd: 1,
                ino: 0x3c4a7,
                sdev: 0xfe0_0000,
                mask: libc::IN_CREATE,
                handle: Some((1, vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0])),
            }
        );
        assert_eq!(w[1].handle, None);
        assert_eq!(w[2].mask, libc::IN_ALL_EVENTS);
        assert!(parse_inotify(
            "inotify wd:1 ino:1 sdev:1 mask:1 fhandle-bytes:8 fhandle-type:1 f_handle:12\n"
        )
        .is_err());
        assert!(parse_inotify("inotify wd:0 ino:1 sdev:1 mask:1\n").is_err());
        assert!(parse_inotify(
            "inotify wd:1 ino:1 sdev:1 mask:1\ninotify wd:1 ino:2 sdev:1 mask:1\n"
        )
        .is_err());
        assert!(parse_inotify("pos: 0\n").unwrap().is_empty());
    }

    #[test]
    fn parses_fanotify() {
        let f = parse_fanotify("pos:\t0\nflags:\t02\nfanotify flags:14 event-flags:8002\n\
            fanotify ino:9aa13d sdev:fe00000 mflags:440 mask:8 ignored_mask:1 fhandle-bytes:8 fhandle-type:1 f_handle:3da19a0056adf5ea\n\
            fanotify sdev:fe00000 mflags:40 mask:0 ignored_mask:3\n\
            fanotify mnt_id:1b mflags:0 mask:2 ignored_mask:0\n")
        .unwrap();
        assert_eq!((f.flags, f.event_flags), (0x14, 0x8002));
        assert_eq!(f.marks.len(), 3);
        assert_eq!(
            f.marks[0].on,
            MarkOn::Inode {
                ino: 0x9aa13d,
                sdev: 0xfe00000,
                handle: Some((1, vec![0x3d, 0xa1, 0x9a, 0, 0x56, 0xad, 0xf5, 0xea]))
            }
        );
        assert_eq!(
            (f.marks[0].mflags, f.marks[0].mask, f.marks[0].ignored_mask),
            (0x440, 8, 1)
        );
        assert_eq!(f.marks[1].on, MarkOn::Filesystem(0xfe00000));
        assert_eq!(f.marks[2].on, MarkOn::Mount(0x1b));
        assert!(parse_fanotify("pos: 0\n").is_err());
        assert!(parse_fanotify(
            "fanotify flags:0 event-flags:0\nfanotify mntns:1 mflags:0 mask:1 ignored_mask:0\n"
        )
        .is_err());
    }

    #[test]
    fn finds_visible_mount_points() {
        let mi = "27 1 254:0 / / rw - ext4 /dev/vda rw\n40 27 0:33 / /mnt\\040x rw - tmpfs t rw\n41 27 0:34 / /mnt\\040x rw - tmpfs t rw\n";
        assert_eq!(mount_point_of(mi, 27).unwrap(), "/");
        assert_eq!(mount_point_of(mi, 41).unwrap(), "/mnt x");
        assert!(mount_point_of(mi, 40).unwrap_err().contains("hidden"));
        assert!(mount_point_of(mi, 99).is_err());
    }

    #[test]
    fn parses_mountinfo_and_devices() {
        let m = parse_mountinfo(
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
             42 27 254:0 /run/netns /run/netns rw - ext4 /dev/vda rw\n\
             50 27 0:45 / /mnt/with\\040space rw - tmpfs tmpfs rw\n",
        );
        assert_eq!(
            m,
            [
                (254 << 20, "/".to_string(), true),
                (254 << 20, "/run/netns".to_string(), false),
                (45, "/mnt/with space".to_string(), true),
            ]
        );
        // glibc's makedev layout.
        assert_eq!(kernel_dev(0xfe00), 254 << 20);
        assert_eq!(kernel_dev(0x1231_0345), (0x103 << 20) | 0x1_2345);
        assert_eq!(kernel_dev(0x12_3456), (0x234 << 20) | 0x156);
    }

    #[test]
    fn unsupported_kinds_are_named() {
        let mut e = Fd::default();
        let err = dump(1, 7, "[io_uring]", &mut e).unwrap_err().to_string();
        assert!(err.contains("fd 7") && err.contains("io_uring"), "{err}");
        let err = dump(1, 8, "[userfaultfd]", &mut e).unwrap_err().to_string();
        assert!(
            err.contains("fd 8") && err.contains("anon_inode:[userfaultfd]"),
            "{err}"
        );
        assert_eq!(e, Fd::default());
    }

    #[test]
    fn timespec_layout() {
        let b = timespec(3 * NS + 7);
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 3);
        assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), 7);
    }
}

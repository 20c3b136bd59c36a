//! Descriptors connected outside the dumped tree: a pipe end whose other end
//! no process of the tree holds (`prog | tee log` with only `prog` dumped,
//! a child of a supervisor or of Python's subprocess), a unix socket whose
//! peer is outside the tree.
//!
//! Dump ([`crate::resources::files::link_descriptions`] and
//! [`crate::resources::sockets::link_unix`]) marks them kind EXTERNAL with a
//! stable key, "pipe:[INODE]" or "socket:[INODE]" as /proc/PID/fd shows it,
//! and for a pipe's read end the bytes in the pipe (read without consuming
//! them). [`list`] says which there are (dump, inspect, migrate print them).
//!
//! Restore ([`ExternalPlan`]): `--inherit-fd N:KEY` (or `N:fd:PID:FD`) puts
//! godwit's own fd N in place of every descriptor that referred to KEY: the
//! process gets a descriptor of the same open file description (passed
//! with SCM_RIGHTS over a socketpair made in the process), at its own fd
//! number, with its close-on-exec flag and O_NONBLOCK. A key no
//! `--inherit-fd` names gets a stand-in that never kills the process:
//! - a pipe's write end: /dev/null opened for writing (every write succeeds
//!   and is discarded; a pipe nobody reads would raise SIGPIPE, one only the
//!   process itself reads would block once full);
//! - a pipe's read end: a new pipe holding the saved bytes whose write end is
//!   closed (the process reads them, then end of file);
//! - a unix socket: /dev/null opened read-write (reads see end of file,
//!   writes are discarded; socket calls such as send(2) fail with ENOTSOCK,
//!   which reports an error instead of raising SIGPIPE as a socket whose
//!   peer is gone would).
//!
//! Each such replacement is reported ([`ExternalPlan::uses`]) so the caller
//! can warn, naming process, fd and key.

use crate::error::{EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{External, Fd, FdKind, Process};
use godwit_sys::process;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

const STAGE: &str = "connecting descriptors from outside the tree";

/// One descriptor of a dumped process connected outside the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalFd {
    pub pid: i32,
    pub fd: i32,
    /// "pipe:[INODE]" or "socket:[INODE]".
    pub key: String,
    /// "pipe write end", "pipe read end", "unix stream socket", ...
    pub what: String,
    /// Bytes saved with it (a pipe's read end).
    pub saved: u64,
    /// Unread bytes left in it on the host, not saved (a socket).
    pub unread: u64,
    /// Watched by an epoll instance of its process.
    pub epoll_watched: bool,
}

/// The list as `--json` output and the agent's API give it.
pub fn to_json(list: &[ExternalFd]) -> serde_json::Value {
    list.iter()
        .map(|x| {
            serde_json::json!({
                "pid": x.pid, "fd": x.fd, "key": x.key, "what": x.what,
                "saved_bytes": x.saved, "unread_bytes_not_saved": x.unread,
            })
        })
        .collect()
}

fn what(f: &Fd, e: &External) -> String {
    if e.was == FdKind::UnixSocket as i32 {
        let t = match e.sock_type {
            libc::SOCK_STREAM => "stream",
            libc::SOCK_DGRAM => "datagram",
            libc::SOCK_SEQPACKET => "seqpacket",
            _ => "unknown-type",
        };
        format!("unix {t} socket")
    } else if is_write_end(f) {
        "pipe write end".into()
    } else {
        "pipe read end".into()
    }
}

fn is_write_end(f: &Fd) -> bool {
    f.flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32
}

fn external_of(f: &Fd) -> Option<&External> {
    (f.kind == FdKind::External as i32)
        .then_some(f.external.as_ref())
        .flatten()
}

/// The descriptors of `procs` connected outside the tree, in tree and fd order.
pub fn list(procs: &[Process]) -> Vec<ExternalFd> {
    let mut out = Vec::new();
    for p in procs {
        for f in &p.fds {
            if let Some(e) = external_of(f) {
                let epoll_watched = p
                    .fds
                    .iter()
                    .filter(|x| x.kind == FdKind::Epoll as i32)
                    .any(|x| x.epoll.iter().any(|t| t.fd == f.fd));
                out.push(ExternalFd {
                    pid: p.pid,
                    fd: f.fd,
                    key: e.key.clone(),
                    what: what(f, e),
                    saved: e.data.len() as u64,
                    unread: e.unread,
                    epoll_watched,
                });
            }
        }
    }
    out
}

/// What a descriptor connected outside the tree gets when no --inherit-fd
/// names it.
pub fn default_for(x: &ExternalFd) -> &'static str {
    if x.what.starts_with("unix") {
        "/dev/null (reads see end of file, writes are discarded, socket calls fail with ENOTSOCK)"
    } else if x.what == "pipe write end" {
        "/dev/null (writes succeed and are discarded)"
    } else {
        "a pipe holding the saved unread bytes, then end of file"
    }
}

/// Why a descriptor got its stand-in: `godwit restore` without a
/// `--inherit-fd` naming it.
pub const NOT_GIVEN: &str = "no --inherit-fd names it";
/// ... over `godwit migrate`.
pub const MIGRATED: &str = "no `migrate --inherit-fd` names it (a path at the destination or null)";
/// ... restored through a node's API (godwitd).
pub const NODE_API: &str =
    "the node API passes no descriptors (restore the image with godwit restore --inherit-fd for that)";

/// The warning for a descriptor connected outside the tree that gets its
/// stand-in: names the process, the fd, the key and what it is now; `why`
/// is one of [`NOT_GIVEN`], [`MIGRATED`], [`NODE_API`].
pub fn warning(x: &ExternalFd, why: &str) -> String {
    format!(
        "process {} fd {} ({}, {}) was connected outside the dumped tree and {why}: it is now {}{}",
        x.pid,
        x.fd,
        x.what,
        x.key,
        default_for(x),
        if x.epoll_watched && x.what != "pipe read end" {
            "; its epoll instance no longer watches it (epoll cannot watch /dev/null)"
        } else {
            ""
        }
    )
}

/// `--inherit-fd N:WHAT`: godwit's fd `fd` replaces `what`, a key
/// ("pipe:[INODE]", "socket:[INODE]") or "fd:PID:FD".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherit {
    pub fd: i32,
    pub what: String,
}

impl std::str::FromStr for Inherit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Inherit, String> {
        let (n, what) = s.split_once(':').ok_or_else(|| {
            format!("{s:?}: expected FD:KEY, e.g. 3:pipe:[12345], 0:tty:[136:4] or 0:fd:PID:FD")
        })?;
        let fd: i32 = n
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{s:?}: {n:?} is not a descriptor number"))?;
        let ok = |inner: &str| inner.parse::<u64>().is_ok();
        let valid = what
            .strip_prefix("pipe:[")
            .or_else(|| what.strip_prefix("socket:["))
            .and_then(|x| x.strip_suffix(']'))
            .is_some_and(ok)
            || what
                .strip_prefix("tty:[")
                .and_then(|x| x.strip_suffix(']'))
                .and_then(|x| x.split_once(':'))
                .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
            || what
                .strip_prefix("fd:")
                .and_then(|x| x.split_once(':'))
                .is_some_and(|(p, f)| p.parse::<i32>().is_ok() && f.parse::<i32>().is_ok());
        if !valid {
            return Err(format!(
                "{s:?}: {what:?} is neither pipe:[INODE], socket:[INODE], tty:[MAJOR:MINOR] nor fd:PID:FD"
            ));
        }
        Ok(Inherit {
            fd,
            what: what.to_string(),
        })
    }
}

/// Which descriptor a `migrate --inherit-fd` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// Fd N of the (first) root process.
    RootFd(i32),
    /// Fd FD of process PID (`fd:PID:FD`).
    ProcFd(i32, i32),
    /// Every descriptor connected to "pipe:[INODE]" or "socket:[INODE]".
    Key(String),
}

/// What the destination connects in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// /dev/null, opened as the descriptor was (reads see end of file,
    /// writes are discarded).
    Null,
    /// A path on the destination: a file (a write end appends to it,
    /// created if missing; a read end reads it) or a FIFO.
    Path(String),
}

/// `godwit migrate --inherit-fd WHICH:TARGET`: the destination agent opens
/// TARGET (a path there, or `null`) and connects it in place of a
/// descriptor connected outside the tree. WHICH: `N` (fd N of the root
/// process), `fd:PID:FD`, `pipe:[INODE]` or `socket:[INODE]`. A descriptor
/// of this host (restore's `N:KEY` with N godwit's fd) cannot cross hosts:
/// refused when parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInherit {
    pub which: Which,
    pub target: Target,
}

impl std::fmt::Display for RemoteInherit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.which {
            Which::RootFd(n) => write!(f, "{n}:")?,
            Which::ProcFd(p, n) => write!(f, "fd:{p}:{n}:")?,
            Which::Key(k) => write!(f, "{k}:")?,
        }
        match &self.target {
            Target::Null => write!(f, "null"),
            Target::Path(p) => write!(f, "{p}"),
        }
    }
}

impl std::str::FromStr for RemoteInherit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<RemoteInherit, String> {
        let usage = "expected FD:TARGET, fd:PID:FD:TARGET, pipe:[INODE]:TARGET or socket:[INODE]:TARGET, TARGET a path on the destination or null";
        let num = |x: &str| x.parse::<i32>().ok().filter(|n| *n >= 0);
        let (which, target) = if let Some(rest) = s.strip_prefix("fd:") {
            let mut it = rest.splitn(3, ':');
            match (it.next().and_then(num), it.next().and_then(num), it.next()) {
                (Some(p), Some(n), Some(t)) => (Which::ProcFd(p, n), t),
                _ => return Err(format!("{s:?}: {usage}")),
            }
        } else if s.starts_with("pipe:[") || s.starts_with("socket:[") {
            let (key, t) = s
                .split_once("]:")
                .ok_or_else(|| format!("{s:?}: {usage}"))?;
            let key = format!("{key}]");
            let inode = key
                .split_once('[')
                .and_then(|(_, x)| x.strip_suffix(']'))
                .and_then(|x| x.parse::<u64>().ok());
            if inode.is_none() {
                return Err(format!("{s:?}: {usage}"));
            }
            (Which::Key(key), t)
        } else {
            let (n, t) = s.split_once(':').ok_or_else(|| format!("{s:?}: {usage}"))?;
            let n = num(n).ok_or_else(|| format!("{s:?}: {n:?} is not a descriptor number"))?;
            (Which::RootFd(n), t)
        };
        let target = if target == "null" {
            Target::Null
        } else if target.starts_with('/') {
            Target::Path(target.to_string())
        } else if target.parse::<i32>().is_ok()
            || target.starts_with("fd:")
            || target.starts_with("pipe:[")
            || target.starts_with("socket:[")
            || target.starts_with("tty:[")
        {
            return Err(format!(
                "{s:?}: a descriptor of this host cannot cross to the destination; give a path there (a file or a FIFO) or null"
            ));
        } else {
            return Err(format!(
                "{s:?}: {target:?} is neither an absolute path on the destination nor null"
            ));
        };
        Ok(RemoteInherit { which, target })
    }
}

/// The key a `migrate --inherit-fd` names among `externals` (`root`: the
/// first root's PID), or None.
pub fn key_of(externals: &[ExternalFd], root: i32, which: &Which) -> Option<String> {
    match which {
        Which::Key(k) => externals
            .iter()
            .find(|x| &x.key == k)
            .map(|x| x.key.clone()),
        Which::RootFd(n) => externals
            .iter()
            .find(|x| x.pid == root && x.fd == *n)
            .map(|x| x.key.clone()),
        Which::ProcFd(p, n) => externals
            .iter()
            .find(|x| x.pid == *p && x.fd == *n)
            .map(|x| x.key.clone()),
    }
}

/// Whether `x` is connected at the destination by one of `given`.
pub fn given_for(
    externals: &[ExternalFd],
    root: i32,
    given: &[RemoteInherit],
    x: &ExternalFd,
) -> Option<RemoteInherit> {
    given
        .iter()
        .find(|g| key_of(externals, root, &g.which).as_deref() == Some(x.key.as_str()))
        .cloned()
}

/// At a migration's destination: opens each target of `given` (for the
/// image's processes `procs`, `root` the first root's PID) as the
/// descriptor it replaces was open (a write end: appending, a file created
/// 0644 if missing; a read end: reading; a socket: /dev/null only), and
/// returns the opened descriptors with the `--inherit-fd` that restore
/// takes for each (keep the descriptors open until the restore is done).
/// A name that matches no descriptor connected outside the tree, or a
/// target that cannot be opened, is an error naming it.
pub fn open_at_destination(
    procs: &[Process],
    root: i32,
    given: &[RemoteInherit],
) -> Result<Vec<(OwnedFd, Inherit)>> {
    let externals = list(procs);
    let mut out: Vec<(OwnedFd, Inherit)> = Vec::new();
    for g in given {
        let err = |why: String| EngineError::InheritFd(format!("migrate --inherit-fd {g}: {why}"));
        let key = key_of(&externals, root, &g.which).ok_or_else(|| {
            let keys: Vec<String> = externals
                .iter()
                .map(|x| format!("process {} fd {} ({})", x.pid, x.fd, x.key))
                .collect();
            err(format!(
                "no such descriptor connected outside the dumped tree; {}",
                match keys.is_empty() {
                    true => "the tree has none".to_string(),
                    false => format!("it has {}", keys.join(", ")),
                }
            ))
        })?;
        if out.iter().any(|(_, i)| i.what == key) {
            return Err(err(format!("{key} is given twice")));
        }
        let (f, e) = procs
            .iter()
            .flat_map(|p| &p.fds)
            .find_map(|f| external_of(f).filter(|e| e.key == key).map(|e| (f, e)))
            .ok_or_else(|| err(format!("{key} is not in the image")))?;
        let socket = e.was == FdKind::UnixSocket as i32;
        let write = is_write_end(f);
        let fd = open_target(&g.target, socket, write).map_err(err)?;
        let n = fd.as_raw_fd();
        out.push((fd, Inherit { fd: n, what: key }));
    }
    Ok(out)
}

/// Opens `t` for a unix socket's place (`socket`), a pipe's write end
/// (`write`) or its read end.
fn open_target(t: &Target, socket: bool, write: bool) -> std::result::Result<OwnedFd, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut o = std::fs::OpenOptions::new();
    let mut flags = libc::O_CLOEXEC;
    let path = match t {
        Target::Null => {
            o.read(socket || !write).write(socket || write);
            "/dev/null"
        }
        Target::Path(_) if socket => {
            return Err(
                "it is a unix socket: only null can take its place at the destination (a path would be no socket)"
                    .into(),
            )
        }
        Target::Path(p) => {
            let meta = std::fs::metadata(p).ok();
            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                return Err(format!("{p} is a directory on the destination"));
            }
            let fifo = meta.as_ref().is_some_and(|m| m.file_type().is_fifo());
            if write {
                o.write(true).append(true).create(!fifo).mode(0o644);
            } else {
                o.read(true);
            }
            // A FIFO: opened without waiting for its other end (restore
            // sets O_NONBLOCK as the process had it).
            if fifo {
                flags |= libc::O_NONBLOCK;
            }
            p.as_str()
        }
    };
    o.custom_flags(flags);
    o.open(path)
        .map(OwnedFd::from)
        .map_err(|e| match (e.raw_os_error(), write) {
            (Some(libc::ENXIO), true) => {
                format!("no process reads the FIFO {path} on the destination")
            }
            _ => format!(
                "opening {path} on the destination {}: {e}",
                if write {
                    "for appending"
                } else {
                    "for reading"
                }
            ),
        })
}

/// How one descriptor connected outside the tree was restored.
#[derive(Debug, Clone)]
pub struct ExternalUse {
    pub fd: ExternalFd,
    /// The godwit fd it was connected to (--inherit-fd), or None: the
    /// default stand-in ([`default_for`]).
    pub inherited: Option<i32>,
    /// Saved or unread bytes that could not be given back (a warning).
    pub lost: Option<String>,
}

/// How the descriptors connected outside the tree are restored.
pub struct ExternalPlan {
    /// Key → (godwit's fd number, a duplicate of it).
    inherited: HashMap<String, (i32, OwnedFd)>,
    /// Key → its saved read-end bytes.
    data: HashMap<String, Vec<u8>>,
    /// Keys whose saved bytes were put back (once per key).
    refilled: Mutex<HashSet<String>>,
    /// Key → a note on bytes that could not be given back.
    lost: Mutex<BTreeMap<String, String>>,
    externals: Vec<ExternalFd>,
}

impl ExternalPlan {
    /// Checks the `--inherit-fd` requests against the image: each names a
    /// descriptor connected outside the tree, and godwit's fd is open.
    pub fn new(procs: &[Process], inherit: &[Inherit]) -> Result<ExternalPlan> {
        let externals = list(procs);
        let ttys: Vec<String> = procs
            .iter()
            .flat_map(|p| &p.fds)
            .filter_map(external_tty_key)
            .collect();
        let keys: Vec<&str> = {
            let mut k: Vec<&str> = externals
                .iter()
                .map(|x| x.key.as_str())
                .chain(ttys.iter().map(String::as_str))
                .collect();
            k.sort_unstable();
            k.dedup();
            k
        };
        let mut inherited = HashMap::new();
        for i in inherit {
            let key = if let Some(pf) = i.what.strip_prefix("fd:") {
                let (p, f) = pf.split_once(':').unwrap_or((pf, ""));
                let (p, f) = (p.parse::<i32>().ok(), f.parse::<i32>().ok());
                let proc_ = procs.iter().find(|x| Some(x.pid) == p);
                let fd = proc_.and_then(|x| x.fds.iter().find(|d| Some(d.fd) == f));
                match (proc_, fd) {
                    (None, _) => {
                        return Err(EngineError::InheritFd(format!(
                            "--inherit-fd {}:{}: the image holds no process {}",
                            i.fd,
                            i.what,
                            p.unwrap_or(0)
                        )))
                    }
                    (Some(_), None) => {
                        return Err(EngineError::InheritFd(format!(
                            "--inherit-fd {}:{}: that process had no such fd",
                            i.fd, i.what
                        )))
                    }
                    (Some(_), Some(d)) => match external_of(d)
                        .map(|e| e.key.clone())
                        .or_else(|| external_tty_key(d))
                    {
                        Some(k) => k,
                        None => {
                            return Err(EngineError::InheritFd(format!(
                                "--inherit-fd {}:{}: that fd is not connected outside the dumped tree (it is restored as it was); {}",
                                i.fd,
                                i.what,
                                available(&keys)
                            )))
                        }
                    },
                }
            } else {
                i.what.clone()
            };
            if !keys.contains(&key.as_str()) {
                return Err(EngineError::InheritFd(format!(
                    "--inherit-fd {}:{}: the image has no descriptor connected outside the tree to {key}; {}",
                    i.fd,
                    i.what,
                    available(&keys)
                )));
            }
            let ours = process::dup_fd(i.fd).map_err(|e| {
                EngineError::InheritFd(format!(
                    "--inherit-fd {}:{}: godwit has no fd {} open ({e}); open it when starting godwit (e.g. {}<&N or {}>FILE in a shell)",
                    i.fd, i.what, i.fd, i.fd, i.fd
                ))
            })?;
            check_access(procs, &key, i, &ours)?;
            if let Some((n, _)) = inherited.insert(key.clone(), (i.fd, ours)) {
                return Err(EngineError::InheritFd(format!(
                    "--inherit-fd: {key} is given twice (fds {n} and {})",
                    i.fd
                )));
            }
        }
        let mut data = HashMap::new();
        for f in procs.iter().flat_map(|p| &p.fds) {
            if let Some(e) = external_of(f).filter(|e| !e.data.is_empty()) {
                data.entry(e.key.clone()).or_insert_with(|| e.data.clone());
            }
        }
        Ok(ExternalPlan {
            inherited,
            data,
            refilled: Mutex::new(HashSet::new()),
            lost: Mutex::new(BTreeMap::new()),
            externals,
        })
    }

    /// For `f`, a slave of a terminal whose master is outside the tree
    /// (kind TTY, external) that an `--inherit-fd` names: opens godwit's
    /// descriptor in its place in `r` (with the saved O_NONBLOCK); None
    /// when no --inherit-fd names its terminal.
    pub fn open_tty(&self, r: &Remote, f: &Fd) -> Option<Result<u64>> {
        let key = external_tty_key(f)?;
        let (_, ours) = self.inherited.get(&key)?;
        let pid = r.pid;
        Some((|| {
            set_nonblock(pid, ours, f.flags & libc::O_NONBLOCK as u32 != 0)?;
            install(r, ours)
        })())
    }

    /// Whether `f` gets /dev/null as its stand-in (connected outside the
    /// tree, not inherited, a pipe's write end or a socket).
    pub fn is_dev_null(&self, f: &Fd) -> bool {
        external_of(f).is_some_and(|e| {
            !self.inherited.contains_key(&e.key)
                && (e.was == FdKind::UnixSocket as i32 || is_write_end(f))
        })
    }

    /// Whether the image has descriptors connected outside the tree.
    pub fn is_empty(&self) -> bool {
        self.externals.is_empty()
    }

    /// What each descriptor connected outside the tree became.
    pub fn uses(&self) -> Vec<ExternalUse> {
        let lost = self.lost.lock().expect("not poisoned");
        self.externals
            .iter()
            .map(|x| ExternalUse {
                fd: x.clone(),
                inherited: self.inherited.get(&x.key).map(|(n, _)| *n),
                lost: lost.get(&x.key).cloned(),
            })
            .collect()
    }

    fn note_lost(&self, key: &str, note: String) {
        self.lost
            .lock()
            .expect("not poisoned")
            .insert(key.to_string(), note);
    }

    /// Opens, in the process behind `r`, the descriptor that replaces `f`
    /// (kind EXTERNAL); returns its number there.
    pub fn open(&self, r: &Remote, f: &Fd) -> Result<u64> {
        let pid = r.pid;
        let e = external_of(f).ok_or_else(|| {
            EngineError::BadImage(format!(
                "fd {} is connected outside the tree without details",
                f.fd
            ))
        })?;
        let nonblock = f.flags & libc::O_NONBLOCK as u32 != 0;
        let socket = e.was == FdKind::UnixSocket as i32;
        let first = self
            .refilled
            .lock()
            .expect("not poisoned")
            .insert(e.key.clone());
        if let Some((n, ours)) = self.inherited.get(&e.key) {
            // The description is godwit's (and its caller's): O_NONBLOCK
            // is set on it as the process had it.
            set_nonblock(pid, ours, nonblock)?;
            if first {
                self.refill_inherited(pid, *n, ours, e)?;
            }
            return install(r, ours);
        }
        if socket || is_write_end(f) {
            let mode = if socket { libc::O_RDWR } else { libc::O_WRONLY };
            let flags = mode | if nonblock { libc::O_NONBLOCK } else { 0 };
            let a = r.put_cstr(0, "/dev/null").restoring(pid, STAGE)?;
            if socket && e.unread > 0 && first {
                self.note_lost(
                    &e.key,
                    format!(
                        "{} unread bytes stay in {} on the dumping host",
                        e.unread, e.key
                    ),
                );
            }
            return r
                .call(
                    "openat",
                    libc::SYS_openat,
                    [libc::AT_FDCWD as u64, a, flags as u64, 0, 0, 0],
                )
                .restoring(pid, STAGE);
        }
        // A read end: a pipe with the saved bytes, its write end closed.
        r.call("pipe2", libc::SYS_pipe2, [r.scratch, 0, 0, 0, 0, 0])
            .restoring(pid, STAGE)?;
        let b = r.get(0, 8).restoring(pid, STAGE)?;
        let rd = i32::from_le_bytes(b[0..4].try_into().expect("4")) as u64;
        let wr = i32::from_le_bytes(b[4..8].try_into().expect("4")) as u64;
        let data = self.data.get(&e.key).filter(|_| first);
        if let Some(data) = data {
            let pidfd = process::pidfd_open(pid).restoring(pid, STAGE)?;
            let w = process::pidfd_getfd(&pidfd, wr as i32).restoring(pid, STAGE)?;
            if data.len() > 65536 {
                process::set_pipe_size(&w, data.len()).restoring(pid, STAGE)?;
            }
            write_all(&w, data).restoring(pid, STAGE)?;
        }
        r.call("close", libc::SYS_close, [wr, 0, 0, 0, 0, 0])
            .restoring(pid, STAGE)?;
        if nonblock {
            r.call(
                "fcntl(F_SETFL)",
                libc::SYS_fcntl,
                [rd, libc::F_SETFL as u64, libc::O_NONBLOCK as u64, 0, 0, 0],
            )
            .restoring(pid, STAGE)?;
        }
        Ok(rd)
    }

    /// Puts the saved bytes of a pipe's read end into the pipe godwit's fd
    /// `n` (`ours`) reads from, unless it is the very pipe they are still in.
    fn refill_inherited(&self, pid: i32, n: i32, ours: &OwnedFd, e: &External) -> Result<()> {
        let Some(data) = self.data.get(&e.key) else {
            if e.unread > 0 {
                let (_, _, ino) = process::fd_stat(ours.as_fd()).restoring(pid, STAGE)?;
                if format!("socket:[{ino}]") != e.key {
                    self.note_lost(
                        &e.key,
                        format!(
                            "{} unread bytes stay in {} on the dumping host, not in fd {n}",
                            e.unread, e.key
                        ),
                    );
                }
            }
            return Ok(());
        };
        let (mode, _, ino) = process::fd_stat(ours.as_fd()).restoring(pid, STAGE)?;
        if mode & libc::S_IFMT != libc::S_IFIFO {
            self.note_lost(
                &e.key,
                format!(
                    "{} saved unread bytes were not given back: godwit's fd {n} is not a pipe",
                    data.len()
                ),
            );
            return Ok(());
        }
        if format!("pipe:[{ino}]") == e.key {
            // The same pipe, on the same host: the bytes are still in it.
            return Ok(());
        }
        let path = format!("/proc/self/fd/{}", ours.as_raw_fd());
        let w: OwnedFd = std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().write(true),
            libc::O_NONBLOCK,
        )
        .open(&path)
        .map_err(|err| EngineError::Restore {
            pid,
            stage: STAGE,
            source: godwit_sys::SysError::Proc {
                path: path.clone(),
                detail: format!("opening the pipe of godwit's fd {n} for writing: {err}"),
            },
        })?
        .into();
        let room = process::pipe_size(&w).restoring(pid, STAGE)? as usize;
        let queued = process::pipe_pending(ours).restoring(pid, STAGE)?;
        if data.len() + queued > room {
            process::set_pipe_size(&w, data.len() + queued).restoring(pid, STAGE)?;
        }
        write_all(&w, data).restoring(pid, STAGE)?;
        Ok(())
    }
}

/// The key of `f` if it is a terminal slave whose master is outside the
/// tree (kind TTY, external: dumped with --shell-job): "tty:[MAJOR:MINOR]".
fn external_tty_key(f: &Fd) -> Option<String> {
    f.tty
        .as_ref()
        .filter(|t| f.kind == FdKind::Tty as i32 && t.external && !t.master)
        .map(|t| crate::resources::tty::external_key(t.dev))
}

/// Sets or clears O_NONBLOCK on godwit's (and its caller's) description.
fn set_nonblock(pid: i32, ours: &OwnedFd, nonblock: bool) -> Result<()> {
    let cur = process::status_flags(ours.as_fd()).restoring(pid, STAGE)?;
    let want = if nonblock {
        cur | libc::O_NONBLOCK
    } else {
        cur & !libc::O_NONBLOCK
    };
    if want != cur {
        process::set_status_flags(ours.as_fd(), want).restoring(pid, STAGE)?;
    }
    Ok(())
}

/// Refuses a pipe end given for the other end (a write-only descriptor for
/// a read end, or a read-only one for a write end): the process could not
/// use it.
fn check_access(procs: &[Process], key: &str, i: &Inherit, ours: &OwnedFd) -> Result<()> {
    let mode = process::status_flags(ours.as_fd())
        .map_err(|e| EngineError::InheritFd(format!("--inherit-fd {}:{}: {e}", i.fd, i.what)))?
        & libc::O_ACCMODE;
    if key.starts_with("tty:[") && !godwit_sys::tty::is_terminal(ours.as_fd()) {
        return Err(EngineError::InheritFd(format!(
            "--inherit-fd {}:{}: {key} was a terminal and needs a terminal in its place; godwit's fd {} is none",
            i.fd, i.what, i.fd
        )));
    }
    for f in procs.iter().flat_map(|p| &p.fds) {
        let Some(e) = external_of(f).filter(|e| e.key == key) else {
            continue;
        };
        let want = f.flags as i32 & libc::O_ACCMODE;
        let ok = mode == libc::O_RDWR || want == mode;
        if !ok && e.was == FdKind::Pipe as i32 {
            let (need, have) = if is_write_end(f) {
                ("writing", "read-only")
            } else {
                ("reading", "write-only")
            };
            return Err(EngineError::InheritFd(format!(
                "--inherit-fd {}:{}: {key} was a {} and needs a descriptor open for {need}; godwit's fd {} is {have}",
                i.fd,
                i.what,
                what(f, e),
                i.fd
            )));
        }
    }
    Ok(())
}

fn available(keys: &[&str]) -> String {
    if keys.is_empty() {
        "the image has none (`godwit inspect` lists them)".into()
    } else {
        format!("the image has {}", keys.join(", "))
    }
}

fn write_all(fd: &OwnedFd, data: &[u8]) -> godwit_sys::Result<()> {
    let mut off = 0;
    while off < data.len() {
        off += process::write(fd.as_raw_fd(), &data[off..])?;
    }
    Ok(())
}

/// Scratch layout of [`install`].
const S_PAIR: u64 = 0;
const S_BYTE: u64 = 16;
const S_IOV: u64 = 32;
const S_MSG: u64 = 64;
const S_CTL: u64 = 128;
const CTL_LEN: u64 = 24;

/// Gives the process behind `r` a descriptor of the open file description
/// of `ours`: an injected socketpair, godwit sends `ours` into one end
/// (SCM_RIGHTS, through its pidfd_getfd copy), an injected recvmsg takes it
/// from the other; both ends are closed again. Returns the new fd number.
fn install(r: &Remote, ours: &OwnedFd) -> Result<u64> {
    let pid = r.pid;
    r.call(
        "socketpair",
        libc::SYS_socketpair,
        [
            libc::AF_UNIX as u64,
            (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
            0,
            r.scratch + S_PAIR,
            0,
            0,
        ],
    )
    .restoring(pid, STAGE)?;
    let b = r.get(S_PAIR, 8).restoring(pid, STAGE)?;
    let a = i32::from_le_bytes(b[0..4].try_into().expect("4")) as u64;
    let z = i32::from_le_bytes(b[4..8].try_into().expect("4")) as u64;
    let got = (|| {
        let pidfd = process::pidfd_open(pid).restoring(pid, STAGE)?;
        let sender = process::pidfd_getfd(&pidfd, a as i32).restoring(pid, STAGE)?;
        process::send_fd(sender.as_fd(), ours.as_fd()).restoring(pid, STAGE)?;
        drop(sender);
        // struct iovec { base, len }, struct msghdr (x86_64, 56 bytes):
        // name, namelen(+pad), iov, iovlen, control, controllen, flags(+pad).
        let mut iov = Vec::with_capacity(16);
        iov.extend_from_slice(&(r.scratch + S_BYTE).to_le_bytes());
        iov.extend_from_slice(&1u64.to_le_bytes());
        r.put(S_IOV, &iov).restoring(pid, STAGE)?;
        let mut msg = Vec::with_capacity(56);
        for v in [0u64, 0, r.scratch + S_IOV, 1, r.scratch + S_CTL, CTL_LEN, 0] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        r.put(S_MSG, &msg).restoring(pid, STAGE)?;
        r.put(S_CTL, &[0u8; CTL_LEN as usize])
            .restoring(pid, STAGE)?;
        r.call(
            "recvmsg",
            libc::SYS_recvmsg,
            [z, r.scratch + S_MSG, libc::MSG_CMSG_CLOEXEC as u64, 0, 0, 0],
        )
        .restoring(pid, STAGE)?;
        let c = r.get(S_CTL, CTL_LEN as usize).restoring(pid, STAGE)?;
        let level = i32::from_le_bytes(c[8..12].try_into().expect("4"));
        let kind = i32::from_le_bytes(c[12..16].try_into().expect("4"));
        if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
            return Err(EngineError::Restore {
                pid,
                stage: STAGE,
                source: godwit_sys::SysError::Proc {
                    path: format!("process {pid} socketpair"),
                    detail: "no descriptor arrived".into(),
                },
            });
        }
        Ok(i32::from_le_bytes(c[16..20].try_into().expect("4")) as u64)
    })();
    for fd in [a, z] {
        r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
            .restoring(pid, STAGE)?;
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_inherit_fd_forms() {
        let r: RemoteInherit = "1:/var/log/app.log".parse().unwrap();
        assert_eq!(r.which, Which::RootFd(1));
        assert_eq!(r.target, Target::Path("/var/log/app.log".into()));
        assert_eq!(r.to_string(), "1:/var/log/app.log");
        let r: RemoteInherit = "fd:1200:2:null".parse().unwrap();
        assert_eq!(
            (r.which.clone(), r.target.clone()),
            (Which::ProcFd(1200, 2), Target::Null)
        );
        assert_eq!(r.to_string().parse::<RemoteInherit>().unwrap(), r);
        let r: RemoteInherit = "pipe:[77]:/run/in.fifo".parse().unwrap();
        assert_eq!(r.which, Which::Key("pipe:[77]".into()));
        assert_eq!(r.to_string(), "pipe:[77]:/run/in.fifo");
        for bad in [
            "1",
            "x:null",
            "1:rel/path",
            "-1:null",
            "fd:1:null",
            "pipe:[x]:null",
        ] {
            assert!(bad.parse::<RemoteInherit>().is_err(), "{bad}");
        }
        for local in ["1:3", "1:fd:12:1", "1:pipe:[12]", "1:tty:[136:4]"] {
            let e = local.parse::<RemoteInherit>().unwrap_err();
            assert!(e.contains("cannot cross"), "{local}: {e}");
        }
    }

    #[test]
    fn inherit_fd_forms() {
        let i: Inherit = "3:pipe:[1234]".parse().unwrap();
        assert_eq!((i.fd, i.what.as_str()), (3, "pipe:[1234]"));
        let i: Inherit = "0:socket:[77]".parse().unwrap();
        assert_eq!((i.fd, i.what.as_str()), (0, "socket:[77]"));
        let i: Inherit = "0:tty:[136:4]".parse().unwrap();
        assert_eq!((i.fd, i.what.as_str()), (0, "tty:[136:4]"));
        let i: Inherit = "4:fd:1200:1".parse().unwrap();
        assert_eq!((i.fd, i.what.as_str()), (4, "fd:1200:1"));
        for bad in [
            "3",
            "x:pipe:[1]",
            "3:pipe:[x]",
            "3:pipe:1",
            "3:fd:12",
            "-1:pipe:[1]",
            "3:tty:[1]",
            "3:tty:[136]",
            "3:tty:[a:1]",
        ] {
            assert!(bad.parse::<Inherit>().is_err(), "{bad}");
        }
    }
}

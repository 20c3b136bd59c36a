//! Unix sockets (AF_UNIX): stream, datagram and seqpacket, unnamed, bound
//! to a path or to an abstract name, listening or connected.
//!
//! Dump, per process ([`dump`]): NETLINK_SOCK_DIAG gives the socket's type,
//! state, peer (by inode), queue lengths and shutdown state; the socket
//! itself (pidfd_getfd) its name and options. Across the tree
//! ([`link_unix`]): the peer of every connected socket must be in the tree
//! (a datagram socket connected to a named socket outside it is connected
//! to that name again on restore), and each socket's receive queue is read
//! once, without consuming it, message by message (SO_PEEK_OFF), with the
//! descriptions in flight in it (SCM_RIGHTS), described like any fd and
//! made again on restore by the socket's creator before the refill sends
//! them ([`UnixPlan::finish`]). Connections waiting on a listener are
//! accepted by godwit when the processes end after the dump, their data
//! saved, and made again on restore by connecting their clients (sockets
//! of the tree) to the re-created listener in the same order.
//!
//! Restore ([`UnixPlan`]): sockets linked by their peers form a group that
//! is created at once in the lowest common ancestor of all their holders,
//! like the two ends of a pipe: connected pairs by socketpair (a socket
//! whose peer was closed by a socketpair whose other end is closed again at
//! the end), the others by socket; then bind (a stale socket file left by
//! the dead original at the path is removed first), listen, connect; the
//! queues are refilled from godwit through the sending end (pidfd_getfd),
//! keeping message boundaries; then shutdown, and the options.
//!
//! What differs after a restore (docs/SUPPORTED.md):
//! - A connection accepted from a listener comes back as a socketpair: its
//!   ends are unnamed, so getsockname of the accepted end (and getpeername
//!   of the connecting end) return an empty address, not the listener's.
//! - SO_PEERCRED of a restored connection (and of a listener) keeps its
//!   uid and gid (the pair is made, the listener listens, under those
//!   effective ids when godwit runs as root), but names as pid the process
//!   that created it on restore (the common ancestor of its holders). Both
//!   ends of a restored pair report the same credentials: those the
//!   accepted end (the named one) reported, which a server checks.
//! - Queued messages were sent again by godwit: a receiver that turns
//!   SO_PASSCRED on later sees godwit's credentials on them. One that has
//!   it on at dump time gets each message with the credentials it was sent
//!   with (their pid must be a process of the tree).

use super::unsupported;
use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::files::lca;
use crate::schema::{Fd, FdKind, MsgCred, Passed, Process, SockOpt, Socket};
use godwit_sys::sockdiag::{self, SO_PASSPIDFD, SO_PEEK_OFF};
use godwit_sys::{process, SysError};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Integer options kept: (name at SOL_SOCKET, the value of a new socket,
/// not saved when equal).
const OPTIONS: &[(i32, Option<i32>)] = &[
    (libc::SO_RCVBUF, None),
    (libc::SO_SNDBUF, None),
    (libc::SO_RCVLOWAT, Some(1)),
    (libc::SO_PRIORITY, Some(0)),
    (libc::SO_MARK, Some(0)),
    (libc::SO_PASSCRED, Some(0)),
    (libc::SO_PASSSEC, Some(0)),
    (SO_PASSPIDFD, Some(0)),
    (SO_PEEK_OFF, Some(-1)),
];

/// Options set last, after bind, connect and the refill: SO_PASSCRED on an
/// unnamed socket would give it a name (autobind) when it connects.
const LATE: &[i32] = &[
    libc::SO_PASSCRED,
    libc::SO_PASSSEC,
    SO_PASSPIDFD,
    SO_PEEK_OFF,
];

/// `Socket::pending_listener` of a connecting socket while its listener is
/// not known yet (dump).
const CONNECTING: u64 = u64::MAX;

/// Scratch offsets used on restore.
const SCRATCH_INTS: u64 = 0;
const SCRATCH_ADDR: u64 = 64;
const SCRATCH_PATH: u64 = 512;

fn kind_name(sock_type: i32) -> &'static str {
    match sock_type {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "datagram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}

/// A connection-oriented type (stream, seqpacket).
fn connection(s: &Socket) -> bool {
    s.sock_type != libc::SOCK_DGRAM
}

/// The path of a socket address bound to a path (not abstract, not unnamed).
fn path_of(addr: &[u8]) -> Option<PathBuf> {
    let p = addr.get(2..)?;
    if p.first().is_none_or(|b| *b == 0) {
        return None;
    }
    let end = p.iter().position(|b| *b == 0).unwrap_or(p.len());
    Some(PathBuf::from(OsStr::from_bytes(&p[..end])))
}

/// A readable form of a socket address: a path, @abstract, or "unnamed".
pub fn show_addr(addr: &[u8]) -> String {
    if let Some(p) = path_of(addr) {
        return p.display().to_string();
    }
    match addr.get(3..) {
        Some(name) if addr.len() > 2 => format!(
            "@{}",
            name.iter()
                .flat_map(|b| std::ascii::escape_default(*b))
                .map(char::from)
                .collect::<String>()
        ),
        _ => "unnamed".into(),
    }
}

/// Where a socket path is, given the directory relative paths resolve in.
fn full_path(path: &Path, cwd: &str) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(cwd).join(path)
    }
}

/// Whether the socket's name is bound again on restore: a named socket,
/// except the ends of a connection (an accepted socket shares the
/// listener's name without owning it).
fn binds(s: &Socket) -> bool {
    s.addr.len() > 2 && !(connection(s) && (s.peer_ino != 0 || s.peer_gone))
}

/// The kernel's dev_t (major << 20 | minor) and a stat st_dev are one device.
fn same_dev(st_dev: u64, kdev: u32) -> bool {
    libc::major(st_dev) == kdev >> 20 && libc::minor(st_dev) == kdev & 0xf_ffff
}

/// Describes unix socket `fd` (inode `ino`) of frozen process `pid`, held
/// by us as `ours`; `cwd` is the process's working directory. The queue is
/// read later, once per socket ([`link_unix`]).
pub fn dump(pid: i32, fd: i32, ino: u64, ours: &OwnedFd, cwd: &str) -> Result<Socket> {
    let stage = "reading unix sockets";
    let show =
        sockdiag::SHOW_NAME | sockdiag::SHOW_VFS | sockdiag::SHOW_PEER | sockdiag::SHOW_RQLEN;
    let d = sockdiag::unix_socket(ino as u32, show)
        .dumping(pid, stage)?
        .ok_or_else(|| {
            unsupported(
                pid,
                fd,
                "a unix socket sock_diag does not find (in another network namespace?)".into(),
            )
        })?;
    let sock_type = d.sock_type as i32;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&sock_type) {
        return Err(unsupported(
            pid,
            fd,
            format!("a unix socket of type {sock_type}"),
        ));
    }
    let mut s = Socket {
        family: libc::AF_UNIX,
        sock_type,
        addr: process::getsockname(ours).dumping(pid, stage)?,
        ino,
        listening: d.state == sockdiag::STATE_LISTEN,
        shutdown: d.shutdown as u32,
        ..Default::default()
    };
    if s.listening {
        // Connections waiting to be accepted: taken in link_unix.
        s.backlog = d.rqlen.unwrap_or((0, 0)).1;
    }
    match d.peer {
        Some(0)
            if connection(&s) && d.shutdown != sockdiag::RCV_SHUTDOWN | sockdiag::SEND_SHUTDOWN =>
        {
            // Not accepted yet by its listener: found in link_unix.
            s.pending_listener = CONNECTING;
            let a = sockdiag::getpeername(ours.as_fd()).dumping(pid, stage)?;
            if a.len() > 2 {
                s.peer_addr = a;
            }
        }
        Some(0) => s.peer_gone = true,
        Some(p) => s.peer_ino = p as u64,
        None => {}
    }
    if s.peer_ino != 0 {
        // Kept for a datagram socket connected outside the tree; for the
        // message naming the peer otherwise.
        let a = sockdiag::getpeername(ours.as_fd()).dumping(pid, stage)?;
        if a.len() > 2 {
            s.peer_addr = a;
        }
    }
    (s.cred_pid, s.cred_uid, s.cred_gid) = sockdiag::peer_cred(ours.as_fd()).dumping(pid, stage)?;
    let relative = |a: &[u8]| path_of(a).is_some_and(|p| p.is_relative());
    if relative(&s.addr) || relative(&s.peer_addr) {
        s.cwd = cwd.to_string();
    }
    if let (true, Some(path)) = (binds(&s), path_of(&s.addr)) {
        let full = full_path(&path, cwd);
        let seen = format!("{}/root{}", godwit_sys::proc::dir(pid), full.display());
        match std::fs::symlink_metadata(&seen) {
            Ok(md)
                if md.file_type().is_socket()
                    && d.vfs.is_some_and(|(i, dev)| {
                        md.ino() == i as u64 && same_dev(md.dev(), dev)
                    }) =>
            {
                s.file_mode = md.mode() & 0o7777;
                s.file_uid = md.uid();
                s.file_gid = md.gid();
            }
            // Removed, or removed and something else made at its path
            // since (a FIFO, another socket's file): the socket keeps its
            // name either way, bound without a file of its own.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => s.file_unlinked = true,
            Ok(_) => s.file_unlinked = true,
            Err(e) => {
                return Err(EngineError::Sys {
                    pid,
                    stage,
                    source: SysError::Proc {
                        path: seen,
                        detail: e.to_string(),
                    },
                })
            }
        }
    }
    for &(name, default) in OPTIONS {
        let Some(value) =
            sockdiag::get_option(ours.as_fd(), libc::SOL_SOCKET, name).dumping(pid, stage)?
        else {
            continue;
        };
        if Some(value) != default {
            s.options.push(SockOpt {
                level: libc::SOL_SOCKET,
                name,
                value,
            });
        }
    }
    Ok(s)
}

fn option(s: &Socket, name: i32) -> i32 {
    s.options
        .iter()
        .find(|o| o.level == libc::SOL_SOCKET && o.name == name)
        .map_or(0, |o| o.value)
}

/// A descriptor in flight (passed in a queued message), held by godwit
/// during the dump, and where it is described: message `k`, descriptor `l`
/// of the queue saved with fd `j` of process `i`.
pub struct InFlight {
    /// The process holding the socket, and its fd.
    pub pid: i32,
    carrier_fd: i32,
    at: (usize, usize, usize, usize),
    _fd: OwnedFd,
}

impl InFlight {
    pub fn get<'a>(&self, procs: &'a [Process]) -> &'a Fd {
        let (i, j, k, l) = self.at;
        &procs[i].fds[j]
            .socket
            .as_ref()
            .expect("a unix socket")
            .queue_fds[k]
            .fds[l]
    }

    pub fn get_mut<'a>(&self, procs: &'a mut [Process]) -> &'a mut Fd {
        let (i, j, k, l) = self.at;
        &mut procs[i].fds[j]
            .socket
            .as_mut()
            .expect("a unix socket")
            .queue_fds[k]
            .fds[l]
    }
}

/// What [`sockets_in_flight`] found: (inode, (peer inode, address)) of
/// each unix socket in flight, and the queues it peeked, by socket inode.
type Found = (
    HashMap<u64, (u64, Vec<u8>)>,
    HashMap<u64, Vec<sockdiag::Queued>>,
);

/// The unix sockets in flight in the queues of the tree's sockets, found by
/// a first peek of each queue that the tree reads (peer in the tree).
fn sockets_in_flight(procs: &[Process], first: &BTreeMap<u64, (usize, usize)>) -> Result<Found> {
    let stage = "looking for unix sockets in flight";
    let mut out = HashMap::new();
    let mut peeked = HashMap::new();
    let mut pidfds: HashMap<i32, OwnedFd> = HashMap::new();
    for (&ino, &(i, j)) in first {
        let s = procs[i].fds[j].socket.as_ref().expect("a unix socket");
        if s.listening
            || (connection(s) && s.peer_ino == 0 && !s.peer_gone)
            || (s.peer_ino != 0 && !first.contains_key(&s.peer_ino))
        {
            continue;
        }
        let (pid, fd) = (procs[i].pid, procs[i].fds[j].fd);
        let pidfd = match pidfds.get(&pid) {
            Some(p) => p,
            None => pidfds
                .entry(pid)
                .or_insert(process::pidfd_open(pid).dumping(pid, stage)?),
        };
        let ours = process::pidfd_getfd(pidfd, fd).dumping(pid, stage)?;
        // A peek would report (and clear) a pending error: left to the
        // main pass, which refuses it.
        if sockdiag::pending_error(ours.as_fd()).dumping(pid, stage)? {
            continue;
        }
        let bytes = if s.sock_type == libc::SOCK_STREAM {
            process::pipe_pending(&ours).dumping(pid, stage)?
        } else {
            0
        };
        let msgs =
            sockdiag::peek_queue(ours.as_fd(), s.sock_type, bytes, true).dumping(pid, stage)?;
        for passed in msgs.iter().flat_map(|m| &m.passed) {
            let (mode, _, pino) = process::fd_stat(passed.as_fd()).dumping(pid, stage)?;
            if mode & libc::S_IFMT != libc::S_IFSOCK {
                continue;
            }
            let show = sockdiag::SHOW_NAME | sockdiag::SHOW_PEER;
            if let Some(d) = sockdiag::unix_socket(pino as u32, show).dumping(pid, stage)? {
                let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
                addr.extend_from_slice(d.name.as_deref().unwrap_or_default());
                out.insert(pino, (d.peer.unwrap_or(0) as u64, addr));
            }
        }
        peeked.insert(ino, msgs);
    }
    Ok((out, peeked))
}

/// The connections waiting on the tree's listeners: accepted by godwit
/// (when `accept`: the dumped processes end after the dump), each one's
/// unread data saved and its client, which must be a socket of the tree,
/// linked to the listener. Refused otherwise, and for a connecting socket
/// whose listener is not in the tree.
fn take_pending(
    procs: &mut [Process],
    first: &BTreeMap<u64, (usize, usize)>,
    accept: bool,
) -> Result<()> {
    let stage = "accepting waiting unix connections";
    let tree_pids: Vec<i32> = procs.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
    let mut held = Vec::new();
    let mut linked: HashMap<u64, u64> = HashMap::new();
    for (&ino, &(i, j)) in first {
        let s = procs[i].fds[j].socket.as_ref().expect("a unix socket");
        if !s.listening {
            continue;
        }
        let pid = procs[i].pid;
        let fd = procs[i].fds[j].fd;
        let kind = kind_name(s.sock_type);
        let name = show_addr(&s.addr);
        let refuse = |what: String| {
            Err(unsupported(
                pid,
                fd,
                format!("a listening unix {kind} socket ({name}) {what}"),
            ))
        };
        let waiting = sockdiag::unix_socket(ino as u32, sockdiag::SHOW_RQLEN)
            .dumping(pid, stage)?
            .and_then(|d| d.rqlen)
            .map_or(0, |r| r.0);
        if waiting == 0 {
            continue;
        }
        if !accept {
            return refuse(format!("with {waiting} connection(s) waiting to be accepted, which only a dump that ends the processes takes; retry the dump"));
        }
        if s.file_unlinked {
            return refuse(format!("with {waiting} connection(s) waiting to be accepted, whose socket file was removed (its clients could not connect again)"));
        }
        let passcred = option(s, libc::SO_PASSCRED) != 0;
        let pidfd = process::pidfd_open(pid).dumping(pid, stage)?;
        let ours = process::pidfd_getfd(&pidfd, fd).dumping(pid, stage)?;
        let mut pending = Vec::new();
        while let Some(conn) = sockdiag::accept_nonblock(ours.as_fd()).dumping(pid, stage)? {
            let (_, _, cino) = process::fd_stat(conn.as_fd()).dumping(pid, stage)?;
            let peer = sockdiag::unix_socket(cino as u32, sockdiag::SHOW_PEER)
                .dumping(pid, stage)?
                .and_then(|d| d.peer)
                .unwrap_or(0) as u64;
            let client = first
                .get(&peer)
                .and_then(|&(a, b)| procs[a].fds[b].socket.as_ref());
            if client.is_none_or(|c| c.pending_listener != CONNECTING) {
                return refuse(format!(
                    "with a connection waiting to be accepted from socket:[{peer}], which no process of the dumped tree holds"
                ));
            }
            let bytes = if s.sock_type == libc::SOCK_STREAM {
                process::pipe_pending(&conn).dumping(pid, stage)?
            } else {
                0
            };
            let msgs = sockdiag::peek_queue(conn.as_fd(), s.sock_type, bytes, false)
                .dumping(pid, stage)?;
            if msgs.iter().any(|m| m.fds > 0 || m.other_control) {
                return refuse(
                    "with a connection waiting to be accepted whose queued data carries descriptors, a security label or a pidfd".into(),
                );
            }
            let mut c = crate::schema::PendingConn {
                peer_ino: peer,
                ..Default::default()
            };
            if passcred {
                for m in &msgs {
                    let (cpid, uid, gid) = m.creds.unwrap_or((0, 0, 0));
                    if !tree_pids.contains(&cpid) {
                        return refuse(format!(
                            "that receives credentials (SO_PASSCRED), with a waiting connection holding a message sent by pid {cpid}, which is not a process of the dumped tree"
                        ));
                    }
                    c.queue_creds.push(MsgCred {
                        pid: cpid,
                        uid,
                        gid,
                    });
                }
                c.queue = msgs.into_iter().map(|m| m.data).collect();
            } else if s.sock_type == libc::SOCK_STREAM {
                let all: Vec<u8> = msgs.into_iter().flat_map(|m| m.data).collect();
                if !all.is_empty() {
                    c.queue = vec![all];
                }
            } else {
                c.queue = msgs.into_iter().map(|m| m.data).collect();
            }
            linked.insert(peer, ino);
            pending.push(c);
            held.push(conn);
        }
        tracing::debug!(
            pid,
            fd,
            connections = pending.len(),
            "waiting connections accepted"
        );
        procs[i].fds[j]
            .socket
            .as_mut()
            .expect("a unix socket")
            .pending = pending;
    }
    for p in procs.iter_mut() {
        let pid = p.pid;
        for f in p.fds.iter_mut() {
            let Some(s) = f
                .socket
                .as_mut()
                .filter(|_| f.kind == FdKind::UnixSocket as i32)
            else {
                continue;
            };
            if s.pending_listener != CONNECTING {
                continue;
            }
            match linked.get(&s.ino) {
                Some(l) => s.pending_listener = *l,
                None => {
                    return Err(unsupported(
                        pid,
                        f.fd,
                        format!(
                            "a unix {} socket whose connection to {} is not accepted yet by its listener, which is not in the dumped tree; retry the dump",
                            kind_name(s.sock_type),
                            show_addr(&s.peer_addr)
                        ),
                    ))
                }
            }
        }
    }
    // The accepted connections are closed: the processes end after the dump.
    drop(held);
    Ok(())
}

/// Across the frozen tree (after [`dump`] of every process): marks each
/// connected socket whose peer is outside the tree as connected outside it
/// (`resources::external`) and saves each other socket's receive queue
/// once, with its first fd (in tree order), with the descriptions in flight
/// in it, which are returned (held by godwit until they are given ids).
pub fn link_unix(procs: &mut [Process], accept_pending: bool) -> Result<Vec<InFlight>> {
    let mut inflight = Vec::new();
    let mut first: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for (i, p) in procs.iter().enumerate().filter(|(_, p)| !p.zombie) {
        for (j, f) in p.fds.iter().enumerate() {
            if let (true, Some(s)) = (f.kind == FdKind::UnixSocket as i32, &f.socket) {
                first.entry(s.ino).or_insert((i, j));
            }
        }
    }
    take_pending(procs, &first, accept_pending)?;
    // (peer inode, address) of each socket as dumped.
    let peers: HashMap<u64, (u64, Vec<u8>)> = first
        .iter()
        .map(|(ino, &(i, j))| {
            let s = procs[i].fds[j].socket.as_ref().expect("a unix socket");
            (*ino, (s.peer_ino, s.addr.clone()))
        })
        .collect();
    let mut peers = peers;
    // Unix sockets in flight count as sockets of the tree for their peers.
    // The queues peeked to find them are not peeked again (a second peek
    // skips zero-length datagrams the first one saw).
    let (carried, mut peeked) = sockets_in_flight(procs, &first)?;
    peers.extend(carried);
    let tree_pids: Vec<i32> = procs.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
    let mut pidfds: HashMap<i32, OwnedFd> = HashMap::new();
    let mut external = Vec::new();
    let stage = "reading unix socket queues";
    for (&ino, &(i, j)) in &first {
        let pid = procs[i].pid;
        let fd = procs[i].fds[j].fd;
        let mut s = procs[i].fds[j].socket.clone().expect("a unix socket");
        let kind = kind_name(s.sock_type);
        let name = show_addr(&s.addr);
        let refuse = |what: String| {
            Err(unsupported(
                pid,
                fd,
                format!("a unix {kind} socket ({name}) {what}"),
            ))
        };
        let mut mutual = false;
        if s.peer_ino != 0 {
            match peers.get(&s.peer_ino) {
                None if !connection(&s) && !s.peer_addr.is_empty() => s.peer_ino = 0,
                None => {
                    // Its peer is outside the tree: kept as connected
                    // outside it (resources::external). What is queued
                    // stays in the socket on the host.
                    let pidfd = match pidfds.get(&pid) {
                        Some(p) => p,
                        None => pidfds
                            .entry(pid)
                            .or_insert(process::pidfd_open(pid).dumping(pid, stage)?),
                    };
                    let ours = process::pidfd_getfd(pidfd, fd).dumping(pid, stage)?;
                    let unread = process::pipe_pending(&ours).unwrap_or(0) as u64;
                    external.push((ino, s.sock_type, unread));
                    continue;
                }
                Some((peer_peer, peer_addr)) => {
                    s.peer_addr.clear();
                    mutual = *peer_peer == ino && s.peer_ino != ino;
                    if !mutual && peer_addr.len() <= 2 {
                        return refuse("connected to an unnamed datagram socket that is not connected back to it".into());
                    }
                }
            }
        }
        // Nothing can be queued on a listener or an unconnected stream or
        // seqpacket socket.
        if !s.listening && (!connection(&s) || s.peer_ino != 0 || s.peer_gone) {
            let pidfd = match pidfds.get(&pid) {
                Some(p) => p,
                None => pidfds
                    .entry(pid)
                    .or_insert(process::pidfd_open(pid).dumping(pid, stage)?),
            };
            let ours = process::pidfd_getfd(pidfd, fd).dumping(pid, stage)?;
            if sockdiag::pending_error(ours.as_fd()).dumping(pid, stage)? {
                return refuse(
                    "with a pending error (such as ECONNRESET) not yet reported to the process, which cannot be restored yet".into(),
                );
            }
            let stream = s.sock_type == libc::SOCK_STREAM;
            let bytes = if stream {
                process::pipe_pending(&ours).dumping(pid, stage)?
            } else {
                0
            };
            if stream && sockdiag::oob_pending(ours.as_fd()) {
                return refuse("with an unread out-of-band byte (MSG_OOB)".into());
            }
            let mut msgs = match peeked.remove(&ino) {
                Some(m) => m,
                None => sockdiag::peek_queue(ours.as_fd(), s.sock_type, bytes, true)
                    .dumping(pid, stage)?,
            };
            if !msgs.is_empty() {
                tracing::debug!(
                    pid,
                    fd,
                    messages = ?msgs.iter().map(|m| (m.data.len(), m.fds)).collect::<Vec<_>>(),
                    "unix socket queue read"
                );
                let rights = msgs.iter().any(|m| m.fds > 0);
                if rights {
                    // The descriptions in flight, described like any fd;
                    // godwit holds them until ids are given (files).
                    let mut passed = Vec::new();
                    for (k, m) in msgs.iter_mut().enumerate() {
                        let mut list = Vec::new();
                        for (l, owned) in std::mem::take(&mut m.passed).into_iter().enumerate() {
                            let f = match crate::resources::files::describe_passed(&owned) {
                                Ok(f) => f,
                                Err(why) => {
                                    return refuse(format!(
                                        "with queued message {} carrying descriptor {} of {} (SCM_RIGHTS) that cannot be dumped: {why}; retry the dump once it is read",
                                        k + 1,
                                        l + 1,
                                        m.fds
                                    ))
                                }
                            };
                            list.push(f);
                            inflight.push(InFlight {
                                pid,
                                carrier_fd: fd,
                                at: (i, j, k, l),
                                _fd: owned,
                            });
                        }
                        passed.push(Passed { fds: list });
                    }
                    s.queue_fds = passed;
                }
                if msgs.iter().any(|m| m.other_control) {
                    return refuse(
                        "with a queued message carrying a security label or pidfd".into(),
                    );
                }
                if option(&s, SO_PASSPIDFD) != 0 {
                    return refuse(format!(
                        "that receives its senders' pidfds (SO_PASSPIDFD), with {} message(s) queued whose senders cannot be kept; retry the dump",
                        msgs.len()
                    ));
                }
                let passcred = option(&s, libc::SO_PASSCRED) != 0;
                if passcred {
                    // Sent again with the same credentials: the pid must
                    // name the same process after restore, one of the tree.
                    for m in &msgs {
                        let (cpid, _, _) = m.creds.unwrap_or((0, 0, 0));
                        if !tree_pids.contains(&cpid) {
                            return refuse(format!(
                                "that receives its senders' credentials (SO_PASSCRED), with a queued message sent by pid {cpid}, which is not a process of the dumped tree (its pid could not be named again on restore); retry the dump once it is read"
                            ));
                        }
                    }
                    s.queue_creds = msgs
                        .iter()
                        .map(|m| {
                            let (pid, uid, gid) = m.creds.unwrap_or((0, 0, 0));
                            MsgCred { pid, uid, gid }
                        })
                        .collect();
                }
                let from_peer = s.peer_ino != 0 && (mutual || s.addr.len() > 2);
                let from_anyone = !connection(&s)
                    && s.peer_ino == 0
                    && !s.peer_gone
                    && s.peer_addr.is_empty()
                    && s.addr.len() > 2
                    && msgs.iter().all(|m| m.sender.is_empty());
                if !(from_peer || s.peer_gone || from_anyone) {
                    let senders: Vec<String> = msgs
                        .iter()
                        .filter(|m| !m.sender.is_empty())
                        .map(|m| show_addr(&m.sender))
                        .collect();
                    return refuse(format!(
                        "with {} queued message(s) that cannot be sent to it again with their sender{}; retry the dump",
                        msgs.len(),
                        if senders.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", senders.join(", "))
                        }
                    ));
                }
                s.queue = if stream && !passcred && !rights {
                    vec![msgs.into_iter().flat_map(|m| m.data).collect()]
                } else {
                    msgs.into_iter().map(|m| m.data).collect()
                };
            }
        }
        procs[i].fds[j].socket = Some(s);
    }
    // The queues of the unix sockets in flight, read through godwit's copy.
    for inf in &inflight {
        let f = inf.get(procs);
        if f.kind != FdKind::UnixSocket as i32 {
            continue;
        }
        let s = f.socket.clone().expect("a unix socket");
        let kind = kind_name(s.sock_type);
        let refuse = |what: String| {
            Err(unsupported(
                inf.pid,
                inf.carrier_fd,
                format!(
                    "a unix socket with a unix {kind} socket (socket:[{}]) in flight in its queue, {what}",
                    s.ino
                ),
            ))
        };
        if s.listening {
            return refuse("which is listening (not kept yet)".into());
        }
        if s.peer_ino != 0 && !peers.contains_key(&s.peer_ino) {
            return refuse(format!(
                "connected to socket:[{}] outside the dumped tree",
                s.peer_ino
            ));
        }
        if s.pending_listener != 0 {
            return refuse("whose connection is not accepted yet".into());
        }
        let stream = s.sock_type == libc::SOCK_STREAM;
        let ours = &inf._fd;
        if sockdiag::pending_error(ours.as_fd()).dumping(inf.pid, stage)? {
            return refuse("with a pending error".into());
        }
        let bytes = if stream {
            process::pipe_pending(ours).dumping(inf.pid, stage)?
        } else {
            0
        };
        let msgs = if !connection(&s) || s.peer_ino != 0 || s.peer_gone {
            sockdiag::peek_queue(ours.as_fd(), s.sock_type, bytes, false).dumping(inf.pid, stage)?
        } else {
            Vec::new()
        };
        if msgs.is_empty() {
            continue;
        }
        if msgs.iter().any(|m| m.fds > 0) {
            return refuse(
                "whose own queue carries descriptors (nested SCM_RIGHTS, not kept)".into(),
            );
        }
        if msgs.iter().any(|m| m.other_control) {
            return refuse("whose queue carries a security label or pidfd".into());
        }
        if option(&s, libc::SO_PASSCRED) != 0 || option(&s, SO_PASSPIDFD) != 0 {
            return refuse("that receives credentials, with messages queued (not kept yet)".into());
        }
        let mutual = peers
            .get(&s.peer_ino)
            .is_some_and(|(pp, _)| *pp == s.ino && s.peer_ino != s.ino);
        if !(mutual || s.peer_gone) {
            return refuse("with messages queued from senders that cannot be kept".into());
        }
        let queue = if stream {
            vec![msgs.into_iter().flat_map(|m| m.data).collect()]
        } else {
            msgs.into_iter().map(|m| m.data).collect()
        };
        inf.get_mut(procs)
            .socket
            .as_mut()
            .expect("a unix socket")
            .queue = queue;
    }
    for (ino, sock_type, unread) in external {
        crate::resources::files::mark_external(
            procs,
            FdKind::UnixSocket,
            ino,
            Vec::new(),
            sock_type,
            unread,
        );
    }
    Ok(inflight)
}

/// One socket to create: its description id and saved state.
struct Member {
    id: u64,
    /// O_NONBLOCK and other status flags.
    status: u64,
    fd: i32,
    s: Socket,
}

/// What [`UnixPlan::create`] made: (description id, fd) of each socket,
/// and the groups left to finish.
pub type Created = (Vec<(u64, u64)>, Vec<PendingGroup>);

/// A group made but not finished yet: its queues carry descriptions.
pub struct PendingGroup {
    group: usize,
    ghosts: HashMap<u64, u64>,
    unbound: Vec<Unbound>,
    /// Its queues carry credentials naming a process of the tree not
    /// created yet: finished once every process exists.
    pub late: bool,
}

/// Sockets linked by their peers, created together.
struct Group {
    creator: usize,
    members: Vec<Member>,
}

/// How the unix sockets of an image are created again (module docs).
#[derive(Default)]
pub struct UnixPlan {
    groups: Vec<Group>,
    creators: HashMap<u64, usize>,
    /// Each process's PID as saved.
    pids: Vec<i32>,
}

fn find(up: &mut [usize], mut i: usize) -> usize {
    while up[i] != i {
        up[i] = up[up[i]];
        i = up[i];
    }
    i
}

impl UnixPlan {
    /// `reps`: description id → a representative fd; `holders`: description
    /// id → the indexes of the processes holding it.
    pub fn new(
        procs: &[Process],
        reps: &BTreeMap<u64, Fd>,
        holders: &BTreeMap<u64, Vec<usize>>,
        parent: &[Option<usize>],
    ) -> Result<UnixPlan> {
        // Queues are saved with one fd of the socket: find it whichever it is.
        let mut queues: HashMap<u64, &Socket> = HashMap::new();
        for f in procs.iter().flat_map(|p| &p.fds) {
            if let (true, Some(s)) = (f.kind == FdKind::UnixSocket as i32, &f.socket) {
                if !s.queue.is_empty() {
                    queues.entry(s.ino).or_insert(s);
                }
            }
        }
        let mut members = Vec::new();
        for (id, f) in reps
            .iter()
            .filter(|(_, f)| f.kind == FdKind::UnixSocket as i32)
        {
            let mut s = f.socket.clone().ok_or_else(|| {
                EngineError::BadImage(format!("fd {} is a unix socket without details", f.fd))
            })?;
            if s.queue.is_empty() {
                if let Some(q) = queues.get(&s.ino) {
                    s.queue = q.queue.clone();
                    s.queue_creds = q.queue_creds.clone();
                    s.queue_fds = q.queue_fds.clone();
                }
            }
            members.push(Member {
                id: *id,
                status: (f.flags & libc::O_NONBLOCK as u32) as u64,
                fd: f.fd,
                s,
            });
        }
        // Unix sockets in flight: members too, made with the socket whose
        // queue carries them (same group, so before its refill).
        let mut carried_by: Vec<(u64, u64)> = Vec::new();
        let mut extra = Vec::new();
        for m in &members {
            for f in m.s.queue_fds.iter().flat_map(|p| &p.fds) {
                let Some(cs) = f
                    .socket
                    .as_ref()
                    .filter(|_| f.kind == FdKind::UnixSocket as i32)
                else {
                    continue;
                };
                carried_by.push((m.s.ino, cs.ino));
                if !members.iter().any(|x| x.id == f.file_id)
                    && !extra.iter().any(|x: &Member| x.id == f.file_id)
                {
                    extra.push(Member {
                        id: f.file_id,
                        status: (f.flags & libc::O_NONBLOCK as u32) as u64,
                        fd: f.fd,
                        s: cs.clone(),
                    });
                }
            }
        }
        members.extend(extra);
        let index: HashMap<u64, usize> = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.s.ino, i))
            .collect();
        let mut up: Vec<usize> = (0..members.len()).collect();
        for (a, b) in carried_by {
            let (a, b) = (find(&mut up, index[&a]), find(&mut up, index[&b]));
            up[a] = b;
        }
        for (i, m) in members.iter().enumerate() {
            if m.s.pending_listener != 0 {
                // A connection waiting on a listener: made by connecting to it.
                let j = *index.get(&m.s.pending_listener).ok_or_else(|| {
                    EngineError::BadImage(format!(
                        "unix socket:[{}] waits on listener socket:[{}], which is not in the image",
                        m.s.ino, m.s.pending_listener
                    ))
                })?;
                let (a, b) = (find(&mut up, i), find(&mut up, j));
                up[a] = b;
            }
            if m.s.peer_ino == 0 {
                continue;
            }
            let j = *index.get(&m.s.peer_ino).ok_or_else(|| {
                EngineError::BadImage(format!(
                    "unix socket:[{}] is connected to socket:[{}], which is not in the image",
                    m.s.ino, m.s.peer_ino
                ))
            })?;
            let (a, b) = (find(&mut up, i), find(&mut up, j));
            up[a] = b;
        }
        let mut by_root: BTreeMap<usize, Vec<Member>> = BTreeMap::new();
        for (i, m) in members.into_iter().enumerate() {
            let root = find(&mut up, i);
            by_root.entry(root).or_default().push(m);
        }
        let mut plan = UnixPlan {
            pids: procs.iter().map(|p| p.pid).collect(),
            ..Default::default()
        };
        for (_, members) in by_root {
            let all: Vec<usize> = members
                .iter()
                .flat_map(|m| holders.get(&m.id).cloned().unwrap_or_default())
                .collect();
            let creator = if all.is_empty() { 0 } else { lca(parent, &all) };
            for m in &members {
                plan.creators.insert(m.id, creator);
            }
            plan.groups.push(Group { creator, members });
        }
        Ok(plan)
    }

    /// The process that creates description `id`, if it is a unix socket.
    pub fn creator(&self, id: u64) -> Option<usize> {
        self.creators.get(&id).copied()
    }

    /// Creates, in process `idx` (`r`), the socket groups it is the creator
    /// of; returns (description id, fd in the process) of each. Uses
    /// scratch bytes [0, 8192).
    ///
    /// A group whose queues carry descriptions (SCM_RIGHTS) is finished
    /// later ([`UnixPlan::finish`], once the process made every description
    /// it creates): it is returned among the pending ones.
    pub fn create(&self, r: &Remote, idx: usize) -> Result<Created> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for (gi, g) in self
            .groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.creator == idx)
        {
            let creds: Vec<i32> = g
                .members
                .iter()
                .flat_map(|m| {
                    m.s.queue_creds
                        .iter()
                        .chain(m.s.pending.iter().flat_map(|c| &c.queue_creds))
                })
                .map(|c| c.pid)
                .collect();
            if !creds.is_empty() && self.pids.get(idx).is_some_and(|p| *p != r.pid) {
                // Restored in a new PID namespace: godwit would name the
                // senders by PIDs of its own namespace.
                return Err(EngineError::Restore {
                    pid: r.pid,
                    stage: STAGE,
                    source: SysError::Proc {
                        path: format!("unix socket fd {}", g.members[0].fd),
                        detail: "queued messages carry their senders' credentials, which cannot be sent again from outside the new PID namespace; restore without --pid-ns".into(),
                    },
                });
            }
            let (fds, ghosts, unbound) = create_group(r, &g.members)?;
            // A sender not created yet (a child of the creator): the group
            // is finished once every process exists. Not with a stand-in
            // peer, which the children would inherit.
            let late = ghosts.is_empty() && creds.iter().any(|p| !process::alive(*p));
            if late || g.members.iter().any(|m| !m.s.queue_fds.is_empty()) {
                pending.push(PendingGroup {
                    group: gi,
                    ghosts,
                    unbound,
                    late,
                });
            } else {
                let none = |id: u64| -> Result<OwnedFd> {
                    Err(EngineError::BadImage(format!(
                        "description {id} in flight in a group without any"
                    )))
                };
                let done = finish_group(r, &g.members, &fds, &ghosts, &none);
                finish_unbound(r.pid, unbound);
                done?;
            }
            out.extend(g.members.iter().map(|m| (m.id, fds[&m.s.ino])));
        }
        Ok((out, pending))
    }

    /// Finishes the groups [`UnixPlan::create`] left pending, their sockets
    /// and the descriptions in flight now at `stage(id)` in the process.
    pub fn finish(
        &self,
        r: &Remote,
        pending: Vec<PendingGroup>,
        stage: &dyn Fn(u64) -> u64,
    ) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let pid = r.pid;
        let pidfd = process::pidfd_open(pid).restoring(pid, "refilling unix sockets")?;
        let carried = |id: u64| -> Result<OwnedFd> {
            process::pidfd_getfd(&pidfd, stage(id) as i32)
                .restoring(pid, "passing descriptors in flight")
        };
        for p in pending {
            let g = &self.groups[p.group];
            let fds: HashMap<u64, u64> = g.members.iter().map(|m| (m.s.ino, stage(m.id))).collect();
            let done = finish_group(r, &g.members, &fds, &p.ghosts, &carried);
            finish_unbound(pid, p.unbound);
            done?;
        }
        Ok(())
    }

    /// Every description in flight in a saved queue, with the process that
    /// creates the socket whose queue carries it.
    pub fn passed(&self) -> Vec<(usize, &Fd)> {
        self.groups
            .iter()
            .flat_map(|g| {
                g.members.iter().flat_map(move |m| {
                    m.s.queue_fds
                        .iter()
                        .flat_map(|p| &p.fds)
                        .map(move |f| (g.creator, f))
                })
            })
            .collect()
    }
}

const STAGE: &str = "creating unix sockets";

/// An injected call's failure, naming the call and what it was for.
fn failed(pid: i32, call: &'static str, target: String, e: SysError) -> EngineError {
    let source = match e.errno() {
        Some(errno) => SysError::Call {
            call,
            target,
            source: std::io::Error::from_raw_os_error(errno),
        },
        None => e,
    };
    EngineError::Restore {
        pid,
        stage: STAGE,
        source,
    }
}

fn local_err(pid: i32, path: &Path, detail: String) -> EngineError {
    EngineError::Restore {
        pid,
        stage: STAGE,
        source: SysError::Proc {
            path: path.display().to_string(),
            detail,
        },
    }
}

/// Creates a group's sockets, binds, listens and connects them; returns
/// their fds (by inode), the stand-in peers of those whose peer is gone,
/// and the files kept for sockets whose file had been removed.
type Made = (HashMap<u64, u64>, HashMap<u64, u64>, Vec<Unbound>);

fn create_group(r: &Remote, members: &[Member]) -> Result<Made> {
    let pid = r.pid;
    let by_ino: HashMap<u64, &Member> = members.iter().map(|m| (m.s.ino, m)).collect();
    let mutual = |m: &Member| {
        m.s.peer_ino != 0
            && m.s.peer_ino != m.s.ino
            && by_ino
                .get(&m.s.peer_ino)
                .is_some_and(|p| p.s.peer_ino == m.s.ino)
    };
    let mut fds: HashMap<u64, u64> = HashMap::new();
    let mut ghosts: HashMap<u64, u64> = HashMap::new();
    // Sockets, connected pairs at once.
    for m in members {
        if fds.contains_key(&m.s.ino) {
            continue;
        }
        let t = m.s.sock_type as u64;
        if mutual(m) || m.s.peer_gone {
            // Both ends report the credentials of the process making the
            // pair: those of the accepted (named) end, which a server checks.
            let peer = by_ino.get(&m.s.peer_ino).filter(|p| p.s.addr.len() > 2);
            let creds = cred(&peer.map_or(m, |p| *p).s);
            as_creds(r, creds, || {
                r.call(
                    "socketpair",
                    libc::SYS_socketpair,
                    [libc::AF_UNIX as u64, t, 0, r.scratch + SCRATCH_INTS, 0, 0],
                )
                .map_err(|e| failed(pid, "socketpair", format!("fd {}", m.fd), e))
            })?;
            let b = r.get(SCRATCH_INTS, 8).restoring(pid, STAGE)?;
            let a = i32::from_le_bytes(b[0..4].try_into().expect("4")) as u64;
            let z = i32::from_le_bytes(b[4..8].try_into().expect("4")) as u64;
            fds.insert(m.s.ino, a);
            if m.s.peer_gone {
                ghosts.insert(m.s.ino, z);
            } else {
                fds.insert(m.s.peer_ino, z);
            }
        } else {
            let fd = r
                .call(
                    "socket",
                    libc::SYS_socket,
                    [libc::AF_UNIX as u64, t, 0, 0, 0, 0],
                )
                .map_err(|e| failed(pid, "socket", format!("fd {}", m.fd), e))?;
            fds.insert(m.s.ino, fd);
        }
    }
    for m in members {
        set_options(r, fds[&m.s.ino], m, false)?;
    }
    // Sockets whose file was removed keep a file until their queues are
    // refilled (the datagrams are sent to the name): `Unbound`, finished
    // by the caller once the queues are in (or the restore failed).
    let mut unbound = Vec::new();
    let linked = (|| {
        for m in members.iter().filter(|m| binds(&m.s)) {
            unbound.extend(bind(r, fds[&m.s.ino], m)?);
        }
        for m in members.iter().filter(|m| m.s.listening) {
            // A listener's SO_PEERCRED: the credentials it listened with.
            as_creds(r, cred(&m.s), || {
                r.call(
                    "listen",
                    libc::SYS_listen,
                    [fds[&m.s.ino], m.s.backlog as u64, 0, 0, 0, 0],
                )
                .map_err(|e| failed(pid, "listen", show_addr(&m.s.addr), e))
            })?;
        }
        // Datagram sockets connected one way: to a named socket of the group,
        // or outside the tree.
        for m in members.iter().filter(|m| !connection(&m.s)) {
            let (addr, cwd) = match by_ino.get(&m.s.peer_ino) {
                Some(p) if !mutual(m) => (&p.s.addr, &p.s.cwd),
                Some(_) => continue,
                None if !m.s.peer_addr.is_empty() => (&m.s.peer_addr, &m.s.cwd),
                None => continue,
            };
            connect(r, fds[&m.s.ino], addr, cwd)?;
        }
        // Connections waiting on a listener: their clients connect again, in
        // the order they waited.
        for l in members.iter().filter(|m| m.s.listening) {
            for c in &l.s.pending {
                let client = by_ino.get(&c.peer_ino).ok_or_else(|| {
                    EngineError::BadImage(format!(
                        "listener socket:[{}] has a waiting connection from socket:[{}], which is not in the image",
                        l.s.ino, c.peer_ino
                    ))
                })?;
                connect(r, fds[&client.s.ino], &l.s.addr, &l.s.cwd)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = linked {
        finish_unbound(pid, unbound);
        return Err(e);
    }
    Ok((fds, ghosts, unbound))
}

/// Removes the files kept for sockets whose file had been removed (and puts
/// back what was moved aside for their bind); failures are logged: the
/// restore has its result already.
fn finish_unbound(pid: i32, unbound: Vec<Unbound>) {
    for u in unbound {
        if let Err(e) = u.finish(pid) {
            tracing::warn!("{e}");
        }
    }
}

/// The fd (in godwit) of a description in flight, by its id.
type Carried<'a> = dyn Fn(u64) -> Result<OwnedFd> + 'a;

/// The second half of a group's creation ([`create_group`] made and linked
/// its sockets, now at `fds` by inode): the queues refilled, shutdown, the
/// stand-in peers closed, the late options and the status flags.
fn finish_group(
    r: &Remote,
    members: &[Member],
    fds: &HashMap<u64, u64>,
    ghosts: &HashMap<u64, u64>,
    carried: &Carried<'_>,
) -> Result<()> {
    let pid = r.pid;
    let by_ino: HashMap<u64, &Member> = members.iter().map(|m| (m.s.ino, m)).collect();
    let mutual = |m: &Member| {
        m.s.peer_ino != 0
            && m.s.peer_ino != m.s.ino
            && by_ino
                .get(&m.s.peer_ino)
                .is_some_and(|p| p.s.peer_ino == m.s.ino)
    };
    // The queues, sent again by the peer (or the closed peer's stand-in).
    let pidfd = if members
        .iter()
        .any(|m| !m.s.queue.is_empty() || m.s.pending.iter().any(|c| !c.queue.is_empty()))
    {
        Some(process::pidfd_open(pid).restoring(pid, "refilling unix sockets")?)
    } else {
        None
    };
    for m in members.iter().filter(|m| !m.s.queue.is_empty()) {
        let pidfd = pidfd.as_ref().expect("opened above");
        let (sender, to) = if m.s.peer_gone {
            (Some(ghosts[&m.s.ino]), None)
        } else if m.s.peer_ino != 0 {
            let to = (!mutual(m)).then(|| absolute(&m.s.addr, &m.s.cwd));
            (Some(fds[&m.s.peer_ino]), to)
        } else {
            (None, Some(absolute(&m.s.addr, &m.s.cwd)))
        };
        let sender =
            match sender {
                Some(fd) => process::pidfd_getfd(pidfd, fd as i32)
                    .restoring(pid, "refilling unix sockets")?,
                None => sockdiag::unix_socket_new(m.s.sock_type)
                    .restoring(pid, "refilling unix sockets")?,
            };
        refill(pid, &sender, m, to.as_deref(), carried)?;
    }
    // What the waiting connections' clients sent, sent again by them.
    for l in members.iter().filter(|m| m.s.listening) {
        for c in l.s.pending.iter().filter(|c| !c.queue.is_empty()) {
            let client = by_ino[&c.peer_ino];
            let pidfd = pidfd.as_ref().expect("opened above");
            let sender = process::pidfd_getfd(pidfd, fds[&client.s.ino] as i32)
                .restoring(pid, "refilling unix sockets")?;
            let waiting = Member {
                id: client.id,
                status: 0,
                fd: client.fd,
                s: Socket {
                    sock_type: client.s.sock_type,
                    queue: c.queue.clone(),
                    queue_creds: c.queue_creds.clone(),
                    ..Default::default()
                },
            };
            refill(pid, &sender, &waiting, None, carried)?;
        }
    }
    for m in members.iter().filter(|m| m.s.shutdown != 0) {
        let how = (m.s.shutdown & 3) as u64 - 1;
        r.call(
            "shutdown",
            libc::SYS_shutdown,
            [fds[&m.s.ino], how, 0, 0, 0, 0],
        )
        .map_err(|e| failed(pid, "shutdown", format!("fd {}", m.fd), e))?;
    }
    for fd in ghosts.values() {
        r.call("close", libc::SYS_close, [*fd, 0, 0, 0, 0, 0])
            .restoring(pid, STAGE)?;
    }
    for m in members {
        let fd = fds[&m.s.ino];
        set_options(r, fd, m, true)?;
        r.call(
            "fcntl(F_SETFL)",
            libc::SYS_fcntl,
            [fd, libc::F_SETFL as u64, m.status, 0, 0, 0],
        )
        .restoring(pid, STAGE)?;
    }
    tracing::debug!(pid, sockets = members.len(), "unix sockets restored");
    Ok(())
}

/// The (uid, gid) a socket's SO_PEERCRED reported, if any.
fn cred(s: &Socket) -> Option<(u32, u32)> {
    (s.cred_pid != 0 && s.cred_uid != u32::MAX).then_some((s.cred_uid, s.cred_gid))
}

/// Runs `f` (injected calls in the process behind `r`) with the process's
/// effective uid and gid set to `creds`, then back to root. Only when
/// godwit runs as root (the process then has real and saved uid 0, so it
/// may switch back) and `creds` are not root's; otherwise just runs `f`.
fn as_creds<T>(r: &Remote, creds: Option<(u32, u32)>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let Some((uid, gid)) = creds.filter(|c| *c != (0, 0)) else {
        return f();
    };
    if process::euid() != 0 {
        return f();
    }
    let keep = u32::MAX as u64;
    let set = |name: &'static str, nr: i64, id: u32| {
        r.call(name, nr, [keep, id as u64, keep, 0, 0, 0])
            .map_err(|e| failed(r.pid, name, format!("effective id {id}"), e))
    };
    set("setresgid", libc::SYS_setresgid, gid)?;
    if let Err(e) = set("setresuid", libc::SYS_setresuid, uid) {
        let _ = set("setresgid", libc::SYS_setresgid, 0);
        return Err(e);
    }
    let out = f();
    set("setresuid", libc::SYS_setresuid, 0)?;
    set("setresgid", libc::SYS_setresgid, 0)?;
    out
}

/// Sets the saved options: the early ones, or the LATE ones.
fn set_options(r: &Remote, fd: u64, m: &Member, late: bool) -> Result<()> {
    for o in
        m.s.options
            .iter()
            .filter(|o| LATE.contains(&o.name) == late)
    {
        // SO_RCVBUF/SO_SNDBUF report double what was set; the kernel doubles again.
        let value = if o.name == libc::SO_RCVBUF || o.name == libc::SO_SNDBUF {
            o.value / 2
        } else {
            o.value
        };
        let a = r
            .put(SCRATCH_INTS, &value.to_le_bytes())
            .restoring(r.pid, STAGE)?;
        r.call(
            "setsockopt",
            libc::SYS_setsockopt,
            [fd, o.level as u64, o.name as u64, a, 4, 0],
        )
        .map_err(|e| {
            failed(
                r.pid,
                "setsockopt",
                format!("option {} of fd {}", o.name, m.fd),
                e,
            )
        })?;
    }
    Ok(())
}

/// Enters `cwd` in the process when `addr` is a relative path.
fn enter_dir_for(r: &Remote, addr: &[u8], cwd: &str) -> Result<()> {
    if path_of(addr).is_some_and(|p| p.is_relative()) {
        let a = r.put_cstr(SCRATCH_PATH, cwd).restoring(r.pid, STAGE)?;
        r.call("chdir", libc::SYS_chdir, [a, 0, 0, 0, 0, 0])
            .map_err(|e| failed(r.pid, "chdir", cwd.to_string(), e))?;
    }
    Ok(())
}

/// The address with a relative path made absolute (for use from godwit).
fn absolute(addr: &[u8], cwd: &str) -> Vec<u8> {
    match path_of(addr) {
        Some(p) if p.is_relative() => {
            let mut a = addr[..2].to_vec();
            a.extend_from_slice(full_path(&p, cwd).as_os_str().as_bytes());
            a.push(0);
            a
        }
        _ => addr.to_vec(),
    }
}

/// Removes a socket file left at `path` by a socket that no longer exists.
/// Anything else there (another kind of file, a live socket's file) is an
/// error: nothing is removed.
fn clear_stale(pid: i32, path: &Path) -> Result<()> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(local_err(pid, path, e.to_string())),
    };
    if !md.file_type().is_socket() {
        return Err(local_err(
            pid,
            path,
            "the path of a unix socket to bind is taken by a file that is not a socket; move it away".into(),
        ));
    }
    let live = sockdiag::unix_sockets(sockdiag::SHOW_VFS).restoring(pid, STAGE)?;
    if live.iter().any(|u| {
        u.vfs
            .is_some_and(|(i, d)| md.ino() == i as u64 && same_dev(md.dev(), d))
    }) {
        return Err(local_err(
            pid,
            path,
            "the unix socket's path is bound by a running socket on this host (stop the process using it)".into(),
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| local_err(pid, path, format!("removing the stale socket file: {e}")))?;
    tracing::debug!(pid, path = %path.display(), "stale socket file removed");
    Ok(())
}

/// What is left to do after a socket whose file had been removed is bound
/// again: remove the file the bind made, and put back what was at its path
/// at the dump (moved aside for the bind). Done once the group's queues are
/// refilled (they are sent to the name).
pub(crate) struct Unbound {
    path: PathBuf,
    aside: Option<PathBuf>,
}

impl Unbound {
    fn finish(self, pid: i32) -> Result<()> {
        std::fs::remove_file(&self.path).map_err(|e| {
            local_err(
                pid,
                &self.path,
                format!("removing the socket file again: {e}"),
            )
        })?;
        self.put_back(pid)
    }

    fn put_back(&self, pid: i32) -> Result<()> {
        if let Some(a) = &self.aside {
            std::fs::rename(a, &self.path).map_err(|e| {
                local_err(
                    pid,
                    &self.path,
                    format!(
                        "putting back the file moved to {} for a bind: {e}",
                        a.display()
                    ),
                )
            })?;
        }
        Ok(())
    }
}

/// Binds socket `fd` (of `r`) to the name of `m`. A socket whose file had
/// been removed is bound to its name too (getsockname must report it): if
/// something was made at that path since, it is moved aside for the bind;
/// the returned [`Unbound`] removes the new file and puts it back.
fn bind(r: &Remote, fd: u64, m: &Member) -> Result<Option<Unbound>> {
    let pid = r.pid;
    let s = &m.s;
    let path = path_of(&s.addr).map(|p| full_path(&p, &s.cwd));
    if let (Some(p), false) = (&path, s.file_unlinked) {
        clear_stale(pid, p)?;
    }
    let mut unbound = None;
    if let (Some(p), true) = (&path, s.file_unlinked) {
        let aside = if std::fs::symlink_metadata(p).is_ok() {
            let mut name = p.file_name().unwrap_or_default().to_os_string();
            name.push(format!(".godwit-aside-{pid}"));
            let a = p.with_file_name(name);
            std::fs::rename(p, &a).map_err(|e| {
                local_err(
                    pid,
                    p,
                    format!("moving aside the file now at a removed socket's path: {e}"),
                )
            })?;
            Some(a)
        } else {
            None
        };
        unbound = Some(Unbound {
            path: p.clone(),
            aside,
        });
    }
    let bound = (|| {
        enter_dir_for(r, &s.addr, &s.cwd)?;
        let a = r.put(SCRATCH_ADDR, &s.addr).restoring(pid, STAGE)?;
        r.call(
            "bind",
            libc::SYS_bind,
            [fd, a, s.addr.len() as u64, 0, 0, 0],
        )
        .map_err(|e| {
            let what = if e.errno() == Some(libc::EADDRINUSE) {
                format!(
                    "{} (in use on this host: stop the process using it)",
                    show_addr(&s.addr)
                )
            } else {
                show_addr(&s.addr)
            };
            failed(pid, "bind", what, e)
        })
    })();
    if let Err(e) = bound {
        if let Some(u) = &unbound {
            u.put_back(pid)?;
        }
        return Err(e);
    }
    if let (Some(p), false) = (&path, s.file_unlinked) {
        std::os::unix::fs::lchown(p, Some(s.file_uid), Some(s.file_gid))
            .map_err(|e| local_err(pid, p, format!("setting the socket file's owner: {e}")))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(s.file_mode))
            .map_err(|e| local_err(pid, p, format!("setting the socket file's mode: {e}")))?;
    }
    Ok(unbound)
}

fn connect(r: &Remote, fd: u64, addr: &[u8], cwd: &str) -> Result<()> {
    enter_dir_for(r, addr, cwd)?;
    let a = r.put(SCRATCH_ADDR, addr).restoring(r.pid, STAGE)?;
    r.call(
        "connect",
        libc::SYS_connect,
        [fd, a, addr.len() as u64, 0, 0, 0],
    )
    .map_err(|e| failed(r.pid, "connect", show_addr(addr), e))?;
    Ok(())
}

/// Sends the saved queue of `m` from `sender` (to `to` if given), message
/// by message, with the sender's send buffer raised for the time of it.
fn refill(
    pid: i32,
    sender: &OwnedFd,
    m: &Member,
    to: Option<&[u8]>,
    carried: &Carried<'_>,
) -> Result<()> {
    let stage = "refilling unix sockets";
    let sfd = sender.as_fd();
    let total: usize = m.s.queue.iter().map(|q| q.len()).sum();
    let need = (2 * total + 1024 * (m.s.queue.len() + 16)).min(i32::MAX as usize / 2) as i32;
    let orig = sockdiag::get_option(sfd, libc::SOL_SOCKET, libc::SO_SNDBUF)
        .restoring(pid, stage)?
        .unwrap_or(need);
    let raised = orig < need
        && sockdiag::set_option(sfd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, need).is_ok();
    let sent = (|| {
        for (k, msg) in m.s.queue.iter().enumerate() {
            let creds = m.s.queue_creds.get(k).map(|c| (c.pid, c.uid, c.gid));
            // The descriptions it carries, taken from where the restorer
            // made them; closed again once sent.
            let passed: Vec<OwnedFd> = match m.s.queue_fds.get(k) {
                Some(p) => p
                    .fds
                    .iter()
                    .map(|f| carried(f.file_id))
                    .collect::<Result<_>>()
                    .map_err(|e| SysError::Proc {
                        path: format!("unix socket fd {}", m.fd),
                        detail: format!("a descriptor in flight: {e}"),
                    })?,
                None => Vec::new(),
            };
            let mut passed: Vec<BorrowedFd<'_>> = passed.iter().map(|f| f.as_fd()).collect();
            let mut off = 0;
            loop {
                let n = match creds {
                    None if passed.is_empty() => sockdiag::send_to(sfd, &msg[off..], to)?,
                    None => sockdiag::send_msg(sfd, &msg[off..], to, None, &passed)?,
                    Some((cpid, uid, gid)) => {
                        sockdiag::send_msg(sfd, &msg[off..], to, Some((cpid, uid, gid)), &passed)
                            .map_err(|e| match e.errno() {
                                Some(libc::ESRCH) => SysError::Call {
                                    call: "sendmsg(SCM_CREDENTIALS)",
                                    target: format!(
                                        "a queued message sent by pid {cpid}, which does not exist (yet) when the queue is refilled"
                                    ),
                                    source: std::io::Error::from_raw_os_error(libc::ESRCH),
                                },
                                _ => e,
                            })?
                    }
                };
                // Descriptors go with the first part of a message only.
                passed.clear();
                off += n;
                if off >= msg.len() || m.s.sock_type != libc::SOCK_STREAM {
                    break;
                }
            }
        }
        Ok::<(), SysError>(())
    })();
    if raised {
        let _ = sockdiag::set_option(sfd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, orig / 2);
    }
    sent.map_err(|e| EngineError::Restore {
        pid,
        stage: "refilling the queue of a unix socket",
        source: e,
    })?;
    tracing::debug!(
        pid,
        fd = m.fd,
        messages = m.s.queue.len(),
        bytes = total,
        "unix socket queue refilled"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &[u8]) -> Vec<u8> {
        let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(name);
        a
    }

    #[test]
    fn names() {
        assert_eq!(show_addr(&addr(b"")), "unnamed");
        assert_eq!(show_addr(&addr(b"/run/x.sock\0")), "/run/x.sock");
        assert_eq!(show_addr(&addr(b"\0godwit\x01")), "@godwit\\x01");
        assert_eq!(path_of(&addr(b"rel/s\0")), Some(PathBuf::from("rel/s")));
        assert_eq!(path_of(&addr(b"\0abs")), None);
        assert_eq!(absolute(&addr(b"rel\0"), "/tmp/d"), addr(b"/tmp/d/rel\0"));
        assert_eq!(absolute(&addr(b"/abs\0"), "/tmp/d"), addr(b"/abs\0"));
        assert_eq!(absolute(&addr(b"\0x"), "/tmp/d"), addr(b"\0x"));
    }

    #[test]
    fn accepted_connections_are_not_bound_again() {
        let mut s = Socket {
            family: libc::AF_UNIX,
            sock_type: libc::SOCK_STREAM,
            addr: addr(b"/tmp/l\0"),
            ..Default::default()
        };
        assert!(binds(&s), "a listener or a bound socket");
        s.peer_ino = 5;
        assert!(
            !binds(&s),
            "an accepted connection shares the listener's name"
        );
        s.sock_type = libc::SOCK_DGRAM;
        assert!(binds(&s), "a bound datagram socket connected somewhere");
        s.addr = addr(b"");
        assert!(!binds(&s));
    }

    #[test]
    fn devices() {
        let st_dev = libc::makedev(8, 3);
        assert!(same_dev(st_dev, (8 << 20) | 3));
        assert!(!same_dev(st_dev, (8 << 20) | 4));
    }

    #[test]
    fn only_stale_socket_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        assert!(clear_stale(1, &path).is_ok(), "nothing there");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        match clear_stale(1, &path) {
            Err(e) => assert!(e.to_string().contains("running socket"), "{e}"),
            Ok(()) => {
                // Without sock_diag every socket file looks stale.
                assert!(sockdiag::unix_sockets(sockdiag::SHOW_VFS).is_err());
                return;
            }
        }
        assert!(path.exists(), "a live socket's file is kept");
        drop(live);
        clear_stale(1, &path).unwrap();
        assert!(!path.exists(), "a dead socket's file is removed");
        std::fs::write(&path, "not a socket").unwrap();
        let e = clear_stale(1, &path).unwrap_err().to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert!(path.exists());
    }

    fn sock(ino: u64, peer: u64) -> Fd {
        Fd {
            kind: FdKind::UnixSocket as i32,
            socket: Some(Socket {
                family: libc::AF_UNIX,
                sock_type: libc::SOCK_STREAM,
                ino,
                peer_ino: peer,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn connected_sockets_are_made_together_in_the_common_ancestor() {
        // Process 0 with children 1 and 2; a pair split between 1 and 2, a
        // socket of its own in 2.
        let parent = vec![None, Some(0), Some(0)];
        let reps: BTreeMap<u64, Fd> =
            [(1, sock(10, 11)), (2, sock(11, 10)), (3, sock(12, 0))].into();
        let holders: BTreeMap<u64, Vec<usize>> = [(1, vec![1]), (2, vec![2]), (3, vec![2])].into();
        let plan = UnixPlan::new(&[], &reps, &holders, &parent).unwrap();
        assert_eq!(plan.creator(1), Some(0));
        assert_eq!(plan.creator(2), Some(0));
        assert_eq!(plan.creator(3), Some(2));
        assert_eq!(plan.groups.len(), 2);
        let reps: BTreeMap<u64, Fd> = [(1, sock(10, 99))].into();
        assert!(UnixPlan::new(&[], &reps, &holders, &parent).is_err());
    }
}

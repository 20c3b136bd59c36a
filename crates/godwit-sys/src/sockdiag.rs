//! Unix sockets seen from the tracer.
//!
//! * NETLINK_SOCK_DIAG queries ([`unix_socket`], [`unix_sockets`]): a unix
//!   socket's type, state, bound name and file, peer (by inode), queue
//!   lengths and shutdown state. The request is built and the replies parsed
//!   by small pure functions ([`unix_request`], [`parse_replies`]).
//! * Calls on a unix socket borrowed from a frozen process (pidfd_getfd):
//!   reading every queued message without consuming it ([`peek_queue`]),
//!   options, the peer's address.
//! * Calls used to refill a restored socket: [`send_to`], [`unix_socket_new`].

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// sizeof(struct unix_diag_req).
const REQ_LEN: usize = 24;
/// sizeof(struct unix_diag_msg).
const MSG_LEN: usize = 16;

/// `udiag_show` bits: which attributes the kernel adds to each reply.
pub const SHOW_NAME: u32 = 0x01;
pub const SHOW_VFS: u32 = 0x02;
pub const SHOW_PEER: u32 = 0x04;
pub const SHOW_ICONS: u32 = 0x08;
pub const SHOW_RQLEN: u32 = 0x10;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// The (TCP-named) states a unix socket reports.
pub const STATE_ESTABLISHED: u8 = 1;
pub const STATE_CLOSE: u8 = 7;
pub const STATE_LISTEN: u8 = 10;

/// `sk_shutdown` bits.
pub const RCV_SHUTDOWN: u8 = 1;
pub const SEND_SHUTDOWN: u8 = 2;

/// Socket options and control messages that libc may not name yet.
pub const SO_PEEK_OFF: i32 = 42;
pub const SO_PASSPIDFD: i32 = 76;
const SCM_RIGHTS: i32 = 1;
const SCM_CREDENTIALS: i32 = 2;
const SCM_PIDFD: i32 = 4;

/// What NETLINK_SOCK_DIAG says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSock {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// STATE_LISTEN, STATE_ESTABLISHED, STATE_CLOSE, ...
    pub state: u8,
    /// sun_path as bound (an abstract name starts with a NUL byte; a path
    /// ends with one); None when unbound (SHOW_NAME).
    pub name: Option<Vec<u8>>,
    /// The bound socket file: (inode, kernel dev_t) (SHOW_VFS).
    pub vfs: Option<(u32, u32)>,
    /// The peer's inode (SHOW_PEER). `Some(0)`: connected to a socket that
    /// has no file any more (closed, or a connection not yet accepted).
    pub peer: Option<u32>,
    /// (rqueue, wqueue) (SHOW_RQLEN): for a listener, connections waiting to
    /// be accepted and the backlog; else bytes queued to be read (of the
    /// first datagram for SOCK_DGRAM) and bytes sent but not yet read.
    pub rqlen: Option<(u32, u32)>,
    /// Inodes of the connections waiting to be accepted (SHOW_ICONS).
    pub icons: Vec<u32>,
    /// RCV_SHUTDOWN | SEND_SHUTDOWN.
    pub shutdown: u8,
}

/// One reply of a sock_diag exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Sock(UnixSock),
    /// NLMSG_ERROR: 0 is an acknowledgement, else a positive errno.
    Error(i32),
    /// NLMSG_DONE: the end of a dump.
    Done,
}

/// A SOCK_DIAG_BY_FAMILY request for unix sockets: one socket by inode
/// (`Some(ino)`), or a dump of all of them.
pub fn unix_request(ino: Option<u32>, show: u32, seq: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + REQ_LEN) as u32;
    let flags = NLM_F_REQUEST | if ino.is_none() { NLM_F_DUMP } else { 0 };
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req
    b.push(libc::AF_UNIX as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b.extend_from_slice(&ino.unwrap_or(0).to_ne_bytes());
    b.extend_from_slice(&show.to_ne_bytes());
    // udiag_cookie: INET_DIAG_NOCOOKIE
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses the netlink messages in one datagram received from the kernel.
pub fn parse_replies(buf: &[u8]) -> std::result::Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off).unwrap_or(0) as usize;
        let kind = u16_at(buf, off + 4).unwrap_or(0);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(format!("a netlink message of {len} bytes at {off}"));
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        match kind {
            NLMSG_DONE => out.push(Reply::Done),
            NLMSG_ERROR => {
                let e = u32_at(payload, 0).ok_or("a short netlink error")? as i32;
                out.push(Reply::Error(-e));
            }
            SOCK_DIAG_BY_FAMILY => out.push(Reply::Sock(parse_unix(payload)?)),
            k => return Err(format!("an unexpected netlink message type {k}")),
        }
        off += align4(len);
    }
    Ok(out)
}

/// Parses a unix_diag_msg and its attributes.
pub fn parse_unix(p: &[u8]) -> std::result::Result<UnixSock, String> {
    if p.len() < MSG_LEN || p[0] != libc::AF_UNIX as u8 {
        return Err(format!("a unix_diag_msg of {} bytes", p.len()));
    }
    let mut s = UnixSock {
        sock_type: p[1],
        state: p[2],
        ino: u32_at(p, 4).unwrap_or(0),
        ..Default::default()
    };
    let mut off = MSG_LEN;
    while off + 4 <= p.len() {
        let len = u16_at(p, off).unwrap_or(0) as usize;
        let kind = u16_at(p, off + 2).unwrap_or(0) & 0x3fff;
        if len < 4 || off + len > p.len() {
            return Err(format!("an attribute of {len} bytes at {off}"));
        }
        let a = &p[off + 4..off + len];
        let short = || format!("attribute {kind} of {} bytes", a.len());
        match kind {
            UNIX_DIAG_NAME => s.name = Some(a.to_vec()),
            UNIX_DIAG_VFS => {
                s.vfs = Some((
                    u32_at(a, 0).ok_or_else(short)?,
                    u32_at(a, 4).ok_or_else(short)?,
                ))
            }
            UNIX_DIAG_PEER => s.peer = Some(u32_at(a, 0).ok_or_else(short)?),
            UNIX_DIAG_ICONS => {
                s.icons = a
                    .chunks_exact(4)
                    .map(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")))
                    .collect()
            }
            UNIX_DIAG_RQLEN => {
                s.rqlen = Some((
                    u32_at(a, 0).ok_or_else(short)?,
                    u32_at(a, 4).ok_or_else(short)?,
                ))
            }
            UNIX_DIAG_SHUTDOWN => s.shutdown = *a.first().ok_or_else(short)?,
            _ => {}
        }
        off += align4(len);
    }
    Ok(s)
}

/// Sends `req` on a new NETLINK_SOCK_DIAG socket and collects the sockets
/// of the replies (until NLMSG_DONE for a dump, the first reply otherwise).
fn exchange(req: &[u8], dump: bool, what: &str) -> Result<Vec<UnixSock>> {
    // SAFETY: plain integer syscall.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    let fd = check(fd as i64, "socket(NETLINK_SOCK_DIAG)", what)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: an all-zero sockaddr_nl is valid; the family is set below.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `req` is a valid buffer and `kernel` a valid sockaddr_nl of the size given.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    check(r as i64, "sendto(NETLINK_SOCK_DIAG)", what)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid out-buffer of its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        let n = check(n as i64, "recv(NETLINK_SOCK_DIAG)", what)? as usize;
        if n == 0 {
            return Ok(out);
        }
        let replies = parse_replies(&buf[..n]).map_err(|detail| SysError::Proc {
            path: format!("sock_diag reply for {what}"),
            detail,
        })?;
        for r in replies {
            match r {
                Reply::Sock(s) => {
                    out.push(s);
                    if !dump {
                        return Ok(out);
                    }
                }
                Reply::Done | Reply::Error(0) => return Ok(out),
                Reply::Error(e) => return Err(SysError::call_errno("sock_diag", what, e)),
            }
        }
    }
}

/// The unix socket with inode `ino` in our network namespace, None if
/// there is none. `show` is a set of SHOW_* bits.
pub fn unix_socket(ino: u32, show: u32) -> Result<Option<UnixSock>> {
    let what = format!("unix socket inode {ino}");
    match exchange(&unix_request(Some(ino), show, 1), false, &what) {
        Ok(mut v) => Ok(v.pop()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every unix socket of our network namespace.
pub fn unix_sockets(show: u32) -> Result<Vec<UnixSock>> {
    exchange(&unix_request(None, show, 1), true, "unix sockets")
}

/// One control message: (level, type, data).
pub type Cmsg = (i32, i32, Vec<u8>);

/// Splits a control buffer (as filled by recvmsg) into its messages.
pub fn parse_control(buf: &[u8]) -> Vec<Cmsg> {
    // struct cmsghdr on 64-bit Linux: size_t len; int level; int type; data
    // aligned to 8 bytes.
    const HDR: usize = 16;
    let mut out = Vec::new();
    let mut off = 0;
    while off + HDR <= buf.len() {
        let len = u64::from_ne_bytes(buf[off..off + 8].try_into().expect("8 bytes")) as usize;
        if len < HDR || off + len > buf.len() {
            break;
        }
        let level = u32_at(buf, off + 8).unwrap_or(0) as i32;
        let kind = u32_at(buf, off + 12).unwrap_or(0) as i32;
        out.push((level, kind, buf[off + HDR..off + len].to_vec()));
        off += (len + 7) & !7;
    }
    out
}

/// One message found in a receive queue.
#[derive(Debug, Default)]
pub struct Queued {
    pub data: Vec<u8>,
    /// The sender's address (empty: unnamed sender, or a stream socket).
    pub sender: Vec<u8>,
    /// How many descriptors are passed with it (SCM_RIGHTS).
    pub fds: usize,
    /// Those descriptors, installed in our process by the peek, when the
    /// caller asked to keep them ([`peek_queue`]); else closed at once.
    pub passed: Vec<OwnedFd>,
    /// The sender's (pid, uid, gid).
    pub creds: Option<(i32, u32, u32)>,
    /// Other control messages (security label, pidfd).
    pub other_control: bool,
}

fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<i32> {
    crate::process::getsockopt_int(fd, level, name)
}

/// An integer socket option of a socket we hold (None when this kernel
/// does not know the option).
pub fn get_option(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<Option<i32>> {
    match get_int(fd, level, name) {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(e.errno(), Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets an integer socket option of a socket we hold.
pub fn set_option(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> Result<()> {
    // SAFETY: a valid pointer to one int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(
        r as i64,
        "setsockopt",
        format!("level {level} option {name}"),
    )
    .map(drop)
}

/// The address of the peer of a connected socket we hold, as raw sockaddr bytes.
pub fn getpeername(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    crate::process::getpeername(fd)
}

/// SO_PEERCRED of a socket we hold: (pid, uid, gid); pid 0 when it has none.
pub fn peer_cred(fd: BorrowedFd<'_>) -> Result<(i32, u32, u32)> {
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut c as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    check(r as i64, "getsockopt(SO_PEERCRED)", "socket")?;
    Ok((c.pid, c.uid, c.gid))
}

/// Whether a unix stream socket holds an out-of-band byte not yet read.
pub fn oob_pending(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a one-byte out-buffer.
    let r = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr() as *mut libc::c_void,
            1,
            libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    r >= 0
}

/// Whether a socket we hold has a pending error (POLLERR), which the next
/// receive call, even a peek, would report and clear.
pub fn pending_error(fd: BorrowedFd<'_>) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    check(r as i64, "poll", format!("socket fd {}", fd.as_raw_fd()))?;
    Ok(p.revents & libc::POLLERR != 0)
}

/// An offset as SO_PEEK_OFF takes it.
fn peek_off(off: usize) -> Result<i32> {
    i32::try_from(off)
        .map_err(|_| SysError::call_errno("setsockopt(SO_PEEK_OFF)", "socket", libc::EOVERFLOW))
}

/// One recvmsg(MSG_PEEK) into a `cap`-byte buffer: None when nothing is
/// queued (EAGAIN), else (the message's full length, the message with at
/// most `cap` bytes of data). Descriptors passed with the message, which
/// the peek installs in our process, are closed at once.
fn peek_one(
    fd: BorrowedFd<'_>,
    cap: usize,
    trunc: bool,
    keep: bool,
) -> Result<Option<(usize, Queued)>> {
    let mut data = vec![0u8; cap];
    let mut name = [0u8; 128];
    // u64 words keep the control buffer aligned for struct cmsghdr.
    let mut control = [0u64; 512];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr() as *mut libc::c_void;
    msg.msg_namelen = name.len() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    let flags = libc::MSG_PEEK
        | libc::MSG_DONTWAIT
        | libc::MSG_CMSG_CLOEXEC
        | if trunc { libc::MSG_TRUNC } else { 0 };
    // SAFETY: `msg` points to live buffers of the lengths it states.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(SysError::Call {
            call: "recvmsg(MSG_PEEK)",
            target: format!("socket fd {}", fd.as_raw_fd()),
            source: e,
        });
    }
    let full = r as usize;
    data.truncate(full.min(cap));
    let ctl_len = (msg.msg_controllen as usize).min(std::mem::size_of_val(&control));
    let ctl: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut q = Queued {
        data,
        sender: name[..(msg.msg_namelen as usize).min(name.len())].to_vec(),
        ..Default::default()
    };
    if q.sender.len() <= 2 {
        q.sender.clear();
    }
    for (level, kind, d) in parse_control(&ctl[..ctl_len]) {
        if level != libc::SOL_SOCKET {
            q.other_control = true;
            continue;
        }
        match kind {
            SCM_RIGHTS | SCM_PIDFD => {
                for c in d.chunks_exact(4) {
                    let n = i32::from_ne_bytes(c.try_into().expect("4 bytes"));
                    // SAFETY: the kernel installed this descriptor in our
                    // table for this message; nothing else refers to it.
                    let owned = unsafe { OwnedFd::from_raw_fd(n) };
                    if kind == SCM_RIGHTS {
                        q.fds += 1;
                        if keep {
                            q.passed.push(owned);
                        }
                    }
                }
                if kind == SCM_PIDFD {
                    q.other_control = true;
                }
            }
            SCM_CREDENTIALS if d.len() >= 12 => {
                q.creds = Some((
                    u32_at(&d, 0).unwrap_or(0) as i32,
                    u32_at(&d, 4).unwrap_or(0),
                    u32_at(&d, 8).unwrap_or(0),
                ));
            }
            _ => q.other_control = true,
        }
    }
    Ok(Some((full, q)))
}

/// Puts SO_PEEK_OFF and SO_PASSCRED back as they were.
struct PeekGuard<'a> {
    fd: BorrowedFd<'a>,
    peek_off: i32,
    passcred: i32,
}

impl Drop for PeekGuard<'_> {
    fn drop(&mut self) {
        let _ = set_option(self.fd, libc::SOL_SOCKET, SO_PEEK_OFF, self.peek_off);
        let _ = set_option(self.fd, libc::SOL_SOCKET, libc::SO_PASSCRED, self.passcred);
    }
}

/// Every message in the receive queue of unix socket `fd` (of `sock_type`),
/// in order, without consuming them. A stream socket's bytes come as one
/// chunk per writer (or per passed descriptor set); `stream_bytes` is how
/// many are queued. Uses SO_PEEK_OFF to walk the queue, and SO_PASSCRED to
/// tell a zero-length message from the end of a shut-down seqpacket
/// socket; both are put back as they were, whatever happens. The socket
/// must not be read by anyone else meanwhile (its process is frozen), must
/// be connected if it is a seqpacket socket, and should have no pending
/// error ([`pending_error`]): a datagram peek would report and clear it.
///
/// On a stream socket, a peek reports the descriptors of a write together
/// with the bytes written before it since the previous descriptors (this
/// kernel reports them on a peek of any of those bytes, so where that write
/// starts cannot be found): they come in one chunk.
///
/// With `keep`, the descriptors passed with each message (SCM_RIGHTS),
/// which each peek installs in our process as new descriptors of the same
/// open file descriptions, are kept in [`Queued::passed`]; else closed.
pub fn peek_queue(
    fd: BorrowedFd<'_>,
    sock_type: i32,
    stream_bytes: usize,
    keep: bool,
) -> Result<Vec<Queued>> {
    let guard = PeekGuard {
        fd,
        peek_off: get_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF)?,
        passcred: get_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED)?,
    };
    set_option(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    set_option(fd, libc::SOL_SOCKET, SO_PEEK_OFF, 0)?;
    let stream = sock_type == libc::SOCK_STREAM;
    let mut out = Vec::new();
    let mut off: usize = 0;
    let mut cap = 64 * 1024;
    loop {
        if stream && off >= stream_bytes {
            break;
        }
        let want = if stream {
            (stream_bytes - off).max(1)
        } else {
            cap
        };
        let Some((full, q)) = peek_one(fd, want, !stream, keep)? else {
            break;
        };
        if stream {
            if full == 0 {
                break;
            }
        } else {
            if full == 0 && q.creds.is_none() {
                // The end of a shut-down seqpacket socket, not a message.
                break;
            }
            if full > cap {
                // Truncated: peek this message again with room for all of it.
                cap = full.next_power_of_two();
                set_option(fd, libc::SOL_SOCKET, SO_PEEK_OFF, peek_off(off)?)?;
                continue;
            }
        }
        off += q.data.len();
        out.push(q);
        if out.len() > 1 << 20 {
            return Err(SysError::call_errno(
                "recvmsg(MSG_PEEK)",
                "a socket with more than a million queued messages",
                libc::E2BIG,
            ));
        }
    }
    drop(guard);
    Ok(out)
}

/// Accepts one connection waiting on listener `fd` (a copy we hold of a
/// frozen process's listener), without blocking: None when none waits.
pub fn accept_nonblock(fd: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    // The listener's description may be blocking: look first.
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    check(n as i64, "poll", format!("listener fd {}", fd.as_raw_fd()))?;
    if p.revents & libc::POLLIN == 0 {
        return Ok(None);
    }
    // SAFETY: no address is asked for; plain integer syscall.
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
        return Ok(None);
    }
    let fd = check(
        r as i64,
        "accept4",
        format!("listener fd {}", fd.as_raw_fd()),
    )?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// A new unix socket of `sock_type` in our process (close-on-exec).
pub fn unix_socket_new(sock_type: i32) -> Result<OwnedFd> {
    // SAFETY: plain integer syscall.
    let r = unsafe { libc::socket(libc::AF_UNIX, sock_type | libc::SOCK_CLOEXEC, 0) };
    let fd = check(r as i64, "socket(AF_UNIX)", "godwit")?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `data` (one message on a datagram or seqpacket socket) without
/// blocking and without SIGPIPE, to `addr` (raw sockaddr bytes) if given.
/// Returns the bytes sent.
pub fn send_to(fd: BorrowedFd<'_>, data: &[u8], addr: Option<&[u8]>) -> Result<usize> {
    let (ap, al) = match addr {
        Some(a) => (
            a.as_ptr() as *const libc::sockaddr,
            a.len() as libc::socklen_t,
        ),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `data` and `addr` are valid buffers of the lengths given.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            ap,
            al,
        )
    };
    check(r as i64, "sendto", format!("socket fd {}", fd.as_raw_fd())).map(|n| n as usize)
}

/// Sends `data` like [`send_to`], with the sender's credentials `creds`
/// (pid, uid, gid) as SCM_CREDENTIALS and descriptors `fds` as SCM_RIGHTS
/// when given. Root may name any existing pid and any uid and gid; the pid
/// must be a live process (ESRCH otherwise).
pub fn send_msg(
    fd: BorrowedFd<'_>,
    data: &[u8],
    addr: Option<&[u8]>,
    creds: Option<(i32, u32, u32)>,
    fds: &[BorrowedFd<'_>],
) -> Result<usize> {
    // cmsghdr: u64 len, i32 level, i32 type, then data padded to 8 bytes.
    let mut control: Vec<u64> = Vec::new();
    let mut push = |level: i32, kind: i32, payload: &[u8]| {
        let len = 16 + payload.len();
        let mut b = Vec::with_capacity(len.div_ceil(8) * 8);
        b.extend_from_slice(&(len as u64).to_ne_bytes());
        b.extend_from_slice(&level.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize(len.div_ceil(8) * 8, 0);
        control.extend(
            b.chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes"))),
        );
    };
    if let Some((pid, uid, gid)) = creds {
        let mut c = Vec::with_capacity(12);
        c.extend_from_slice(&pid.to_ne_bytes());
        c.extend_from_slice(&uid.to_ne_bytes());
        c.extend_from_slice(&gid.to_ne_bytes());
        push(libc::SOL_SOCKET, SCM_CREDENTIALS, &c);
    }
    if !fds.is_empty() {
        let c: Vec<u8> = fds
            .iter()
            .flat_map(|f| f.as_raw_fd().to_ne_bytes())
            .collect();
        push(libc::SOL_SOCKET, SCM_RIGHTS, &c);
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some(a) = addr {
        msg.msg_name = a.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = a.len() as libc::socklen_t;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !control.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() * 8;
    }
    // SAFETY: `msg` points to live buffers of the lengths it states; the
    // kernel only reads them; the descriptors named are open (borrowed).
    let r = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    check(r as i64, "sendmsg", format!("socket fd {}", fd.as_raw_fd())).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    #[test]
    fn request_layout() {
        let r = unix_request(Some(1234), SHOW_PEER | SHOW_RQLEN, 7);
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), Some(40));
        assert_eq!(u16_at(&r, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(u16_at(&r, 6), Some(NLM_F_REQUEST));
        assert_eq!(u32_at(&r, 8), Some(7));
        assert_eq!(r[16], libc::AF_UNIX as u8);
        assert_eq!(u32_at(&r, 20), Some(u32::MAX));
        assert_eq!(u32_at(&r, 24), Some(1234));
        assert_eq!(u32_at(&r, 28), Some(SHOW_PEER | SHOW_RQLEN));
        assert_eq!(u32_at(&r, 32), Some(u32::MAX));
        let d = unix_request(None, SHOW_VFS, 1);
        assert_eq!(u16_at(&d, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&d, 24), Some(0));
    }

    #[test]
    fn parses_a_socket_with_every_attribute() {
        let mut p = vec![
            libc::AF_UNIX as u8,
            libc::SOCK_STREAM as u8,
            STATE_LISTEN,
            0,
        ];
        p.extend_from_slice(&words(&[99, u32::MAX, u32::MAX]));
        p.extend(attr(UNIX_DIAG_NAME, b"\0abstract"));
        p.extend(attr(UNIX_DIAG_VFS, &words(&[555, 0x80_0001])));
        p.extend(attr(UNIX_DIAG_PEER, &words(&[0])));
        p.extend(attr(UNIX_DIAG_ICONS, &words(&[7, 8])));
        p.extend(attr(UNIX_DIAG_RQLEN, &words(&[2, 128])));
        p.extend(attr(5, &[0; 36])); // meminfo: ignored
        p.extend(attr(UNIX_DIAG_SHUTDOWN, &[SEND_SHUTDOWN]));
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, &p);
        buf.extend(nlmsg(NLMSG_DONE, &[0; 4]));
        let r = parse_replies(&buf).unwrap();
        assert_eq!(
            r,
            vec![
                Reply::Sock(UnixSock {
                    ino: 99,
                    sock_type: libc::SOCK_STREAM as u8,
                    state: STATE_LISTEN,
                    name: Some(b"\0abstract".to_vec()),
                    vfs: Some((555, 0x80_0001)),
                    peer: Some(0),
                    rqlen: Some((2, 128)),
                    icons: vec![7, 8],
                    shutdown: SEND_SHUTDOWN,
                }),
                Reply::Done
            ]
        );
    }

    #[test]
    fn parses_errors_and_rejects_garbage() {
        let mut e = words(&[(-libc::ENOENT) as u32]);
        e.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse_replies(&nlmsg(NLMSG_ERROR, &e)).unwrap(),
            vec![Reply::Error(libc::ENOENT)]
        );
        // A length past the end of the buffer.
        let mut bad = nlmsg(SOCK_DIAG_BY_FAMILY, &[1; 20]);
        bad[0] = 200;
        assert!(parse_replies(&bad).is_err());
        // Not a unix_diag_msg.
        assert!(parse_replies(&nlmsg(SOCK_DIAG_BY_FAMILY, &[2; 16])).is_err());
        // An attribute longer than its message.
        let mut p = vec![libc::AF_UNIX as u8, 1, 1, 0];
        p.extend_from_slice(&[0; 12]);
        p.extend_from_slice(&[40, 0, 2, 0, 1, 0, 0, 0]);
        assert!(parse_unix(&p).is_err());
        assert_eq!(parse_replies(&[]).unwrap(), vec![]);
    }

    #[test]
    fn control_messages() {
        let mut b = Vec::new();
        b.extend_from_slice(&(16u64 + 12).to_ne_bytes());
        b.extend_from_slice(&(libc::SOL_SOCKET as u32).to_ne_bytes());
        b.extend_from_slice(&(SCM_CREDENTIALS as u32).to_ne_bytes());
        b.extend_from_slice(&words(&[10, 20, 30]));
        b.extend_from_slice(&[0; 4]); // padding to 8
        b.extend_from_slice(&(16u64 + 4).to_ne_bytes());
        b.extend_from_slice(&(libc::SOL_SOCKET as u32).to_ne_bytes());
        b.extend_from_slice(&(SCM_RIGHTS as u32).to_ne_bytes());
        b.extend_from_slice(&words(&[5]));
        let c = parse_control(&b);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            (libc::SOL_SOCKET, SCM_CREDENTIALS, words(&[10, 20, 30]))
        );
        assert_eq!(c[1], (libc::SOL_SOCKET, SCM_RIGHTS, words(&[5])));
        assert!(parse_control(&b[..10]).is_empty());
    }

    fn pair(kind: i32) -> (OwnedFd, OwnedFd) {
        let mut sv = [0i32; 2];
        // SAFETY: test-only socketpair into a valid array.
        let r = unsafe {
            libc::socketpair(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr())
        };
        assert_eq!(r, 0);
        // SAFETY: two new descriptors we now own.
        unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
    }

    fn ino(fd: &OwnedFd) -> u32 {
        let f = std::fs::File::from(fd.try_clone().unwrap());
        f.metadata().unwrap().ino() as u32
    }

    #[test]
    fn finds_the_peer_of_a_live_pair() {
        let (a, b) = pair(libc::SOCK_STREAM);
        send_to(a.as_fd(), b"hello", None).unwrap();
        let s = match unix_socket(ino(&b), SHOW_PEER | SHOW_RQLEN | SHOW_NAME) {
            Ok(s) => s.expect("the socket is found"),
            Err(e)
                if e.errno() == Some(libc::EPROTONOSUPPORT) || e.errno() == Some(libc::ENOENT) =>
            {
                eprintln!("skipped: no unix_diag here ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(s.ino, ino(&b));
        assert_eq!(s.peer, Some(ino(&a)));
        assert_eq!(s.rqlen, Some((5, 0)));
        assert_eq!(s.state, STATE_ESTABLISHED);
        assert_eq!(s.name, None);
        // SAFETY: plain calls without arguments.
        let me = unsafe { (libc::getpid(), libc::geteuid(), libc::getegid()) };
        assert_eq!(peer_cred(b.as_fd()).unwrap(), me);
        let all = unix_sockets(SHOW_PEER).unwrap();
        assert!(all
            .iter()
            .any(|x| x.ino == ino(&a) && x.peer == Some(ino(&b))));
        drop(a);
        let s = unix_socket(ino(&b), SHOW_PEER).unwrap().unwrap();
        assert_eq!(s.peer, Some(0), "a closed peer");
        assert_eq!(s.shutdown, RCV_SHUTDOWN | SEND_SHUTDOWN);
        assert_eq!(unix_socket(u32::MAX - 1, SHOW_PEER).unwrap(), None);
    }

    #[test]
    fn peeks_every_message_and_leaves_them() {
        for kind in [libc::SOCK_DGRAM, libc::SOCK_SEQPACKET, libc::SOCK_STREAM] {
            let (a, b) = pair(kind);
            let big = vec![7u8; 100_000];
            for m in [&b"one"[..], b"", &big, b"four"] {
                send_to(a.as_fd(), m, None).unwrap();
            }
            if kind == libc::SOCK_SEQPACKET {
                // SAFETY: test-only shutdown of a socket we own.
                unsafe { libc::shutdown(a.as_raw_fd(), libc::SHUT_WR) };
            }
            let total = 3 + big.len() + 4;
            let q = peek_queue(b.as_fd(), kind, total, false).unwrap();
            let data: Vec<u8> = q.iter().flat_map(|m| m.data.clone()).collect();
            assert_eq!(data.len(), total, "type {kind}");
            if kind != libc::SOCK_STREAM {
                let lens: Vec<usize> = q.iter().map(|m| m.data.len()).collect();
                assert_eq!(lens, vec![3, 0, big.len(), 4], "type {kind}");
            }
            assert!(q.iter().all(|m| m.fds == 0 && !m.other_control));
            // Nothing consumed, options as they were.
            assert_eq!(
                get_int(b.as_fd(), libc::SOL_SOCKET, SO_PEEK_OFF).unwrap(),
                -1
            );
            assert_eq!(
                get_int(b.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED).unwrap(),
                0
            );
            let mut buf = [0u8; 3];
            // SAFETY: test-only read into a local buffer.
            let n =
                unsafe { libc::recv(b.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, 3, 0) };
            assert_eq!(&buf[..n as usize], b"one", "type {kind}");
        }
    }

    #[test]
    fn sees_passed_descriptors() {
        let (a, b) = pair(libc::SOCK_DGRAM);
        let fd = a.as_raw_fd();
        let mut ctl = [0u64; 4];
        let mut data = *b"x";
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: 1,
        };
        // SAFETY: test-only sendmsg of one SCM_RIGHTS message built in `ctl`.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctl.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            *(libc::CMSG_DATA(c) as *mut i32) = fd;
            assert_eq!(libc::sendmsg(fd, &msg, 0), 1);
        }
        let q = peek_queue(b.as_fd(), libc::SOCK_DGRAM, 0, false).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].fds, 1);
        assert!(q[0].creds.is_some());
        assert!(!oob_pending(b.as_fd()));
        assert!(!pending_error(b.as_fd()).unwrap());
    }

    #[test]
    fn sees_a_pending_error_without_clearing_it() {
        // A seqpacket socket whose peer is closed with data unread gets ECONNRESET.
        let (a, b) = pair(libc::SOCK_SEQPACKET);
        send_to(b.as_fd(), b"unread", None).unwrap();
        drop(a);
        assert!(pending_error(b.as_fd()).unwrap());
        assert!(pending_error(b.as_fd()).unwrap(), "still pending");
        assert_eq!(
            get_int(b.as_fd(), libc::SOL_SOCKET, libc::SO_ERROR).unwrap(),
            libc::ECONNRESET
        );
        assert!(
            !pending_error(b.as_fd()).unwrap(),
            "read and cleared by SO_ERROR"
        );
    }
}

//! Listening TCP sockets (IPv4 and IPv6): created, configured, bound and
//! put to listen again. Connected TCP sockets (TCP_REPAIR) come later; they
//! stop the dump with a message naming the fd.

use super::unsupported;
use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{SockOpt, Socket};
use godwit_sys::process;
use std::os::fd::OwnedFd;

/// Integer options carried over to the new socket (level, name).
const OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
];

/// Describes TCP socket `fd` of `pid`, held by us as `ours` (from pidfd_getfd).
pub fn dump(pid: i32, fd: i32, ours: &OwnedFd) -> Result<Socket> {
    let stage = "reading sockets";
    let opt = |l, n| process::getsockopt_int(ours, l, n).dumping(pid, stage);
    let family = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let sock_type = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let listening = opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    let fam = match family {
        libc::AF_INET => "TCP/IPv4",
        libc::AF_INET6 => "TCP/IPv6",
        f => {
            return Err(unsupported(
                pid,
                fd,
                format!("a socket of address family {f}"),
            ))
        }
    };
    if sock_type != libc::SOCK_STREAM {
        return Err(unsupported(
            pid,
            fd,
            format!("a {} datagram or raw socket", &fam[4..]),
        ));
    }
    if !listening {
        return Err(unsupported(pid, fd, format!("a connected or unbound {fam} socket; moving live TCP connections needs TCP_REPAIR support")));
    }
    let (waiting, backlog) = process::tcp_listen_queue(ours).dumping(pid, stage)?;
    if waiting > 0 {
        return Err(unsupported(
            pid,
            fd,
            format!("a listening {fam} socket with {waiting} connection(s) waiting to be accepted; retry the dump"),
        ));
    }
    let mut options = Vec::new();
    for &(level, name) in OPTIONS {
        options.push(SockOpt {
            level,
            name,
            value: opt(level, name)?,
        });
    }
    if family == libc::AF_INET6 {
        let name = libc::IPV6_V6ONLY;
        options.push(SockOpt {
            level: libc::IPPROTO_IPV6,
            name,
            value: opt(libc::IPPROTO_IPV6, name)?,
        });
    }
    Ok(Socket {
        family,
        sock_type,
        protocol,
        addr: process::getsockname(ours).dumping(pid, stage)?,
        backlog,
        options,
        ..Default::default()
    })
}

/// Creates the socket again in the restored process; returns its fd there.
/// `status_flags` carries O_NONBLOCK. Uses scratch bytes [0, 256).
pub fn restore(r: &Remote, fd: i32, s: &Socket, status_flags: u64) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating sockets";
    let nonblock = if status_flags & libc::O_NONBLOCK as u64 != 0 {
        libc::SOCK_NONBLOCK
    } else {
        0
    };
    let sfd = r
        .call(
            "socket",
            libc::SYS_socket,
            [
                s.family as u64,
                (s.sock_type | nonblock) as u64,
                s.protocol as u64,
                0,
                0,
                0,
            ],
        )
        .restoring(pid, stage)?;
    for o in &s.options {
        // SO_RCVBUF/SO_SNDBUF report double what was set; the kernel doubles again.
        let value = if o.level == libc::SOL_SOCKET
            && (o.name == libc::SO_RCVBUF || o.name == libc::SO_SNDBUF)
        {
            o.value / 2
        } else {
            o.value
        };
        let a = r.put(0, &value.to_le_bytes()).restoring(pid, stage)?;
        r.call(
            "setsockopt",
            libc::SYS_setsockopt,
            [sfd, o.level as u64, o.name as u64, a, 4, 0],
        )
        .restoring(pid, "setting socket options")?;
    }
    let a = r.put(64, &s.addr).restoring(pid, stage)?;
    r.call("bind", libc::SYS_bind, [sfd, a, s.addr.len() as u64, 0, 0, 0])
        .map_err(|e| EngineError::Restore {
            pid,
            stage: if e.errno() == Some(libc::EADDRINUSE) {
                "binding a listening socket: its address is in use on this host (stop the process using it)"
            } else {
                "binding a listening socket"
            },
            source: e,
        })?;
    r.call(
        "listen",
        libc::SYS_listen,
        [sfd, s.backlog as u64, 0, 0, 0, 0],
    )
    .restoring(pid, "listening")?;
    tracing::debug!(pid, fd, "listening socket restored");
    Ok(sfd)
}

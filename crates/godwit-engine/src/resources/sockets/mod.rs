//! Sockets. Supported: listening TCP sockets and, with --tcp-established,
//! established TCP connections (IPv4, IPv6; `tcp`), UDP sockets with their
//! queued datagrams (`udp`), and unix sockets of every type (`unix`).
//! Others (raw, netlink, ...) stop the dump with a message naming the fd.

pub mod tcp;
pub mod udp;
pub mod unix;

use crate::error::{DumpCtx, EngineError, Result};
use crate::schema::{FdKind, Socket};
use godwit_sys::process;
use std::os::fd::OwnedFd;

pub use tcp::restore;
pub use unix::{link_unix, UnixPlan};

pub(crate) fn unsupported(pid: i32, fd: i32, what: String) -> EngineError {
    EngineError::Unsupported {
        pid,
        what: format!("fd {fd} ({what})"),
    }
}

/// Describes socket `fd` (inode `ino`) of frozen process `pid`, held by us
/// as `ours` (from pidfd_getfd); `cwd` is the process's working directory.
pub fn dump(pid: i32, fd: i32, ino: u64, ours: &OwnedFd, cwd: &str) -> Result<(FdKind, Socket)> {
    let family = process::getsockopt_int(ours, libc::SOL_SOCKET, libc::SO_DOMAIN)
        .dumping(pid, "reading sockets")?;
    match family {
        libc::AF_UNIX => Ok((FdKind::UnixSocket, unix::dump(pid, fd, ino, ours, cwd)?)),
        libc::AF_INET | libc::AF_INET6
            if process::getsockopt_int(ours, libc::SOL_SOCKET, libc::SO_TYPE)
                .dumping(pid, "reading sockets")?
                == libc::SOCK_DGRAM =>
        {
            let mut s = udp::dump(pid, fd, ours)?;
            s.ino = ino;
            Ok((FdKind::Udp, s))
        }
        libc::AF_INET | libc::AF_INET6 => {
            let (kind, mut s) = tcp::dump(pid, fd, ours)?;
            s.ino = ino;
            Ok((kind, s))
        }
        libc::AF_NETLINK => Err(unsupported(pid, fd, "a netlink socket".into())),
        f => Err(unsupported(
            pid,
            fd,
            format!("a socket of address family {f}"),
        )),
    }
}

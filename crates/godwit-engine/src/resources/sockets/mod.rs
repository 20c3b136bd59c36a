//! Sockets. Supported: listening TCP sockets and, with --tcp-established,
//! established TCP connections (IPv4, IPv6; `tcp`), UDP, UDP-Lite and ICMP
//! "ping" sockets with their queued datagrams (`udp`), raw IPv4/IPv6
//! sockets (`raw`), packet sockets (`packet`), netlink sockets
//! (`netlink`), and unix sockets of every type (`unix`). Others stop the
//! dump with a message naming the fd.

pub mod netlink;
pub mod packet;
pub mod raw;
pub mod tcp;
pub mod udp;
pub mod unix;

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{FdKind, SockOptBytes, Socket};
use godwit_sys::{process, rawsock, tcp as t, SysError};
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
        libc::AF_INET | libc::AF_INET6 => {
            match process::getsockopt_int(ours, libc::SOL_SOCKET, libc::SO_TYPE)
                .dumping(pid, "reading sockets")?
            {
                libc::SOCK_DGRAM => Ok((FdKind::Udp, udp::dump(pid, fd, ino, ours)?)),
                libc::SOCK_RAW => Ok((FdKind::RawSocket, raw::dump(pid, fd, ino, ours)?)),
                _ => {
                    let (kind, mut s) = tcp::dump(pid, fd, ours)?;
                    s.ino = ino;
                    Ok((kind, s))
                }
            }
        }
        libc::AF_PACKET => Ok((FdKind::PacketSocket, packet::dump(pid, fd, ino, ours)?)),
        libc::AF_NETLINK => Ok((FdKind::NetlinkSocket, netlink::dump(pid, fd, ino, ours)?)),
        f => Err(unsupported(
            pid,
            fd,
            format!("a socket of address family {f}"),
        )),
    }
}

/// Restores a raw, packet or netlink socket (`kind`) in the process
/// behind `r`; returns its fd there.
pub fn restore_other(
    r: &Remote,
    kind: FdKind,
    fd: i32,
    s: &Socket,
    status_flags: u64,
) -> Result<u64> {
    match kind {
        FdKind::RawSocket => raw::restore(r, fd, s, status_flags),
        FdKind::PacketSocket => packet::restore(r, fd, s, status_flags),
        FdKind::NetlinkSocket => netlink::restore(r, fd, s, status_flags),
        k => Err(EngineError::BadImage(format!(
            "fd {fd}: {k:?} is not a raw, packet or netlink socket"
        ))),
    }
}

/// The classic BPF filter attached to socket `ours` (empty: none); an
/// eBPF one, which cannot be read back, is refused naming `me`.
pub(crate) fn read_filter(pid: i32, fd: i32, ours: &OwnedFd, me: &str) -> Result<Vec<u8>> {
    rawsock::filter(ours).map_err(|e| {
        unsupported(
            pid,
            fd,
            format!("{me} with a socket filter that cannot be read back (an eBPF program?): {e}"),
        )
    })
}

/// The device a socket is bound to (SO_BINDTODEVICE) as an option to set
/// again, None when it is bound to none. Set before the socket is bound
/// (as it must be), so a restore refuses a device this host lacks.
pub(crate) fn read_bound_device(pid: i32, ours: &OwnedFd) -> Result<Option<SockOptBytes>> {
    let v = rawsock::get_bytes(ours, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, 16)
        .dumping(pid, "reading sockets")?;
    let name: Vec<u8> = v.into_iter().take_while(|&c| c != 0).collect();
    Ok((!name.is_empty()).then(|| SockOptBytes {
        level: libc::SOL_SOCKET,
        name: libc::SO_BINDTODEVICE,
        value: name,
    }))
}

/// The device name of an SO_BINDTODEVICE option.
pub(crate) fn device_name(o: &SockOptBytes) -> String {
    String::from_utf8_lossy(&o.value).into_owned()
}

/// Creates socket `s` (its family, type, protocol; O_NONBLOCK from
/// `status_flags`) in the process behind `r`: (its fd there, ours).
pub(crate) fn new_socket(
    r: &Remote,
    s: &Socket,
    status_flags: u64,
    stage: &'static str,
) -> Result<(u64, OwnedFd)> {
    let pid = r.pid;
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
        .restoring(pid, "creating sockets")?;
    let pidfd = process::pidfd_open(pid).restoring(pid, stage)?;
    let sock = process::pidfd_getfd(&pidfd, sfd as i32).restoring(pid, stage)?;
    Ok((sfd, sock))
}

/// Sets socket `sock`'s saved options again (buffer sizes forced, as
/// they were; SO_LOCK_FILTER left for [`finish_filter`]): on failure,
/// which option and why.
pub(crate) fn apply_options(sock: &OwnedFd, s: &Socket) -> Result<(), (String, SysError)> {
    for o in &s.options {
        let (name, value) = match (o.level, o.name) {
            (libc::SOL_SOCKET, libc::SO_LOCK_FILTER) => continue,
            (libc::SOL_SOCKET, libc::SO_RCVBUF) => (libc::SO_RCVBUFFORCE, o.value / 2),
            (libc::SOL_SOCKET, libc::SO_SNDBUF) => (libc::SO_SNDBUFFORCE, o.value / 2),
            _ => (o.name, o.value),
        };
        if let Err(e) = t::set_int(sock, o.level, name, value) {
            if value != 0 {
                return Err((format!("option {}/{}", o.level, o.name), e));
            }
        }
    }
    for o in &s.byte_options {
        rawsock::set_bytes(sock, o.level, o.name, &o.value).map_err(|e| {
            let what = if (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_BINDTODEVICE) {
                format!("SO_BINDTODEVICE to {}", device_name(o))
            } else {
                format!("option {}/{}", o.level, o.name)
            };
            (what, e)
        })?;
    }
    Ok(())
}

/// Attaches the saved filter again, then locks it if it was locked
/// (SO_LOCK_FILTER).
pub(crate) fn finish_filter(sock: &OwnedFd, s: &Socket) -> Result<(), (String, SysError)> {
    if !s.filter.is_empty() {
        rawsock::attach_filter(sock, &s.filter)
            .map_err(|e| ("its socket filter (SO_ATTACH_FILTER)".to_string(), e))?;
    }
    let locked = s
        .options
        .iter()
        .any(|o| (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_LOCK_FILTER) && o.value != 0);
    if locked {
        t::set_int(sock, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1)
            .map_err(|e| ("SO_LOCK_FILTER".to_string(), e))?;
    }
    Ok(())
}

/// A failure restoring socket fd `fd` (`desc`) of `pid`: `what` failed.
pub(crate) fn restore_failed(
    pid: i32,
    fd: i32,
    stage: &'static str,
    desc: &str,
    what: &str,
    e: SysError,
) -> EngineError {
    EngineError::Restore {
        pid,
        stage,
        source: SysError::Call {
            call: "socket",
            target: format!("fd {fd} {desc} ({what})"),
            source: match e.errno() {
                Some(n) => std::io::Error::from_raw_os_error(n),
                None => std::io::Error::other(e.to_string()),
            },
        },
    }
}

//! Netlink sockets (any protocol: NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT,
//! generic, ...): made again with the same protocol and type, bound to the
//! same port id (`addr`, a sockaddr_nl; the restore is refused, naming the
//! socket, when another socket holds that id), in the same multicast
//! groups (NETLINK_LIST_MEMBERSHIPS, joined again one by one), connected
//! to the same peer, with their options and socket filter. Messages
//! waiting to be read (replies, notifications) cannot be put back: a dump
//! with any is refused, naming the socket.

use super::{apply_options, finish_filter, new_socket, restore_failed, unsupported};
use crate::error::{DumpCtx, Result};
use crate::remote::Remote;
use crate::schema::{SockOpt, Socket};
use godwit_sys::{process, rawsock, tcp as t};
use std::os::fd::OwnedFd;

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

const OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_PASSCRED),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_LOCK_FILTER),
    (SOL_NETLINK, 3),  // NETLINK_PKTINFO
    (SOL_NETLINK, 4),  // NETLINK_BROADCAST_ERROR
    (SOL_NETLINK, 5),  // NETLINK_NO_ENOBUFS
    (SOL_NETLINK, 8),  // NETLINK_LISTEN_ALL_NSID
    (SOL_NETLINK, 10), // NETLINK_CAP_ACK
    (SOL_NETLINK, 11), // NETLINK_EXT_ACK
    (SOL_NETLINK, 12), // NETLINK_GET_STRICT_CHK
];

/// (port id, groups bitmask of the first 32) of a raw sockaddr_nl.
fn nl_addr(b: &[u8]) -> (u32, u32) {
    let at = |o: usize| {
        b.get(o..o + 4)
            .map_or(0, |w| u32::from_ne_bytes(w.try_into().expect("4 bytes")))
    };
    (at(4), at(8))
}

fn sockaddr_nl(port: u32, groups: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&port.to_ne_bytes());
    b.extend_from_slice(&groups.to_ne_bytes());
    b
}

/// The group numbers set in a NETLINK_LIST_MEMBERSHIPS bitmap.
fn groups_of(bitmap: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for (j, w) in bitmap.chunks_exact(4).enumerate() {
        let w = u32::from_ne_bytes(w.try_into().expect("4 bytes"));
        for i in 0..32 {
            if w & (1 << i) != 0 {
                out.push(j as u32 * 32 + i + 1);
            }
        }
    }
    out
}

/// "a netlink socket of protocol 0, port id 1234, in groups [1, 5]".
fn describe(s: &Socket) -> String {
    let (port, _) = nl_addr(&s.addr);
    let mut d = format!(
        "a netlink socket of protocol {}, port id {port}",
        s.protocol
    );
    if !s.groups.is_empty() {
        d += &format!(", in groups {:?}", s.groups);
    }
    if !s.peer_addr.is_empty() {
        let (p, g) = nl_addr(&s.peer_addr);
        d += &format!(", connected to port id {p} (groups {g:#x})");
    }
    d
}

/// Describes netlink socket `fd` (inode `ino`) of `pid`, held by us as
/// `ours`.
pub fn dump(pid: i32, fd: i32, ino: u64, ours: &OwnedFd) -> Result<Socket> {
    let stage = "reading netlink sockets";
    let opt = |l, n| process::getsockopt_int(ours, l, n).dumping(pid, stage);
    let sock_type = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let addr = process::getsockname(ours).dumping(pid, stage)?;
    let peer = process::getpeername(ours).dumping(pid, stage)?;
    let peer_addr = if nl_addr(&peer) == (0, 0) {
        Vec::new()
    } else {
        peer
    };
    let bitmap = rawsock::get_bytes(ours, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 4096)
        .dumping(pid, stage)?;
    let mut s = Socket {
        family: libc::AF_NETLINK,
        sock_type,
        protocol,
        addr,
        peer_addr,
        groups: groups_of(&bitmap),
        ino,
        ..Default::default()
    };
    let me = describe(&s);
    for &(level, name) in OPTIONS {
        if let Ok(value) = process::getsockopt_int(ours, level, name) {
            s.options.push(SockOpt { level, name, value });
        }
    }
    s.filter = super::read_filter(pid, fd, ours, &me)?;
    if rawsock::pending(ours).dumping(pid, stage)? {
        return Err(unsupported(
            pid,
            fd,
            format!("{me} with messages waiting to be read (replies or notifications), which cannot be put back; retry once they are read"),
        ));
    }
    tracing::debug!(pid, fd, sock = %me, "netlink socket read");
    Ok(s)
}

/// Makes netlink socket `s` again in the process behind `r`; returns its
/// fd there. `status_flags` carries O_NONBLOCK.
pub fn restore(r: &Remote, fd: i32, s: &Socket, status_flags: u64) -> Result<u64> {
    let pid = r.pid;
    let stage = "restoring a netlink socket";
    let (sfd, sock) = new_socket(r, s, status_flags, stage)?;
    let me = describe(s);
    let failed = |what: &str, e| restore_failed(pid, fd, stage, &me, what, e);
    apply_options(&sock, s).map_err(|(w, e)| failed(&w, e))?;
    let (port, _) = nl_addr(&s.addr);
    if port != 0 {
        t::bind(&sock, &sockaddr_nl(port, 0)).map_err(|e| {
            let what = if e.errno() == Some(libc::EADDRINUSE) {
                format!(
                    "bind to port id {port}: another netlink socket of this protocol holds it here"
                )
            } else {
                format!("bind to port id {port}")
            };
            failed(&what, e)
        })?;
    }
    for &g in &s.groups {
        t::set_int(&sock, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g as i32)
            .map_err(|e| failed(&format!("joining group {g}"), e))?;
    }
    if !s.peer_addr.is_empty() {
        t::connect(&sock, &s.peer_addr).map_err(|e| failed("connect", e))?;
    }
    finish_filter(&sock, s).map_err(|(w, e)| failed(&w, e))?;
    tracing::debug!(pid, fd, sock = %me, "netlink socket restored");
    Ok(sfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_bitmaps() {
        let mut b = vec![0u8; 8];
        b[0] = 0b101;
        b[4] = 1;
        assert_eq!(groups_of(&b), vec![1, 3, 33]);
        assert_eq!(nl_addr(&sockaddr_nl(77, 5)), (77, 5));
    }
}

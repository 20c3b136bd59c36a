//! Raw IPv4/IPv6 sockets (SOCK_RAW, any protocol): made again with the
//! same protocol, options (IP_HDRINCL, IPV6_CHECKSUM, ...), ICMP filter
//! (ICMP_FILTER, ICMPV6_FILTER), socket filter, bound address and
//! connected peer (read from /proc/PID/net/raw{,6}: getpeername does not
//! answer for a raw socket). Packets queued on one are not put back (a
//! packet sent again would also reach every other raw socket and the
//! host's own stack): a dump with a non-empty queue is refused, naming it.

use super::{apply_options, finish_filter, new_socket, restore_failed, unsupported};
use crate::error::{DumpCtx, Result};
use crate::remote::Remote;
use crate::schema::{SockOpt, SockOptBytes, Socket};
use godwit_sys::{process, rawsock, tcp as t};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMPV6_FILTER: i32 = 1;
const IPV6_CHECKSUM: i32 = 7;
const IPV6_HDRINCL: i32 = 36;

const OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    (libc::SOL_SOCKET, libc::SO_LOCK_FILTER),
];

const IPV4_OPTIONS: &[(i32, i32)] = &[
    (libc::IPPROTO_IP, libc::IP_HDRINCL),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP),
    (libc::IPPROTO_IP, libc::IP_FREEBIND),
    (libc::IPPROTO_IP, libc::IP_PKTINFO),
    (libc::IPPROTO_IP, libc::IP_RECVTOS),
    (libc::IPPROTO_IP, libc::IP_RECVTTL),
    (libc::IPPROTO_IP, libc::IP_RECVERR),
];

const IPV6_OPTIONS: &[(i32, i32)] = &[
    (libc::IPPROTO_IPV6, IPV6_CHECKSUM),
    (libc::IPPROTO_IPV6, IPV6_HDRINCL),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
];

/// "protocol 1, bound to 127.0.0.1, connected to 127.0.0.2".
fn describe(s: &Socket) -> String {
    let v = if s.family == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    };
    let mut d = format!("a raw {v} socket of protocol {}", s.protocol);
    if let Some(a) = t::sockaddr(&s.addr).filter(|a| !a.ip().is_unspecified()) {
        d += &format!(", bound to {}", a.ip());
    }
    if let Some(a) = t::sockaddr(&s.peer_addr) {
        d += &format!(", connected to {}", a.ip());
    }
    d
}

/// Describes raw socket `fd` (inode `ino`) of `pid`, held by us as `ours`.
pub fn dump(pid: i32, fd: i32, ino: u64, ours: &OwnedFd) -> Result<Socket> {
    let stage = "reading raw sockets";
    let opt = |l, n| process::getsockopt_int(ours, l, n).dumping(pid, stage);
    let family = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let protocol = opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let addr = process::getsockname(ours).dumping(pid, stage)?;
    let file = if family == libc::AF_INET6 {
        "raw6"
    } else {
        "raw"
    };
    let line = rawsock::proc_inet(pid, file, ino).dumping(pid, stage)?;
    let Some(line) = line else {
        return Err(unsupported(
            pid,
            fd,
            format!("a raw socket not listed in /proc/{pid}/net/{file}"),
        ));
    };
    let peer_addr = if line.state == 1 {
        t::raw_sockaddr(SocketAddr::new(line.remote.0, 0))
    } else {
        Vec::new()
    };
    let mut s = Socket {
        family,
        sock_type: libc::SOCK_RAW,
        protocol,
        addr,
        peer_addr,
        ino,
        ..Default::default()
    };
    let me = describe(&s);
    let family_options = if family == libc::AF_INET6 {
        IPV6_OPTIONS
    } else {
        IPV4_OPTIONS
    };
    for &(level, name) in OPTIONS.iter().chain(family_options) {
        // ICMPv6 always has its checksum at offset 2, which cannot be set.
        if (level, name, protocol) == (libc::IPPROTO_IPV6, IPV6_CHECKSUM, libc::IPPROTO_ICMPV6) {
            continue;
        }
        if let Ok(value) = process::getsockopt_int(ours, level, name) {
            s.options.push(SockOpt { level, name, value });
        }
    }
    let bytes = match (family, protocol) {
        (libc::AF_INET, libc::IPPROTO_ICMP) => Some((SOL_RAW, ICMP_FILTER, 4)),
        (libc::AF_INET6, libc::IPPROTO_ICMPV6) => Some((libc::IPPROTO_ICMPV6, ICMPV6_FILTER, 32)),
        _ => None,
    };
    if let Some((level, name, len)) = bytes {
        let value = rawsock::get_bytes(ours, level, name, len).dumping(pid, stage)?;
        s.byte_options.push(SockOptBytes { level, name, value });
    }
    s.filter = super::read_filter(pid, fd, ours, &me)?;
    s.byte_options.extend(super::read_bound_device(pid, ours)?);
    if rawsock::pending(ours).dumping(pid, stage)? || line.rx_queue > 0 {
        return Err(unsupported(
            pid,
            fd,
            format!("{me} with packets queued ({} bytes), which cannot be put back exactly (sent again they would reach other sockets too); retry once they are read", line.rx_queue),
        ));
    }
    tracing::debug!(pid, fd, sock = %me, "raw socket read");
    Ok(s)
}

/// Makes raw socket `s` again in the process behind `r`; returns its fd
/// there. `status_flags` carries O_NONBLOCK.
pub fn restore(r: &Remote, fd: i32, s: &Socket, status_flags: u64) -> Result<u64> {
    let pid = r.pid;
    let stage = "restoring a raw socket";
    let (sfd, sock) = new_socket(r, s, status_flags, stage)?;
    let me = describe(s);
    let failed = |what: &str, e| restore_failed(pid, fd, stage, &me, what, e);
    apply_options(&sock, s).map_err(|(w, e)| failed(&w, e))?;
    if let Some(a) = t::sockaddr(&s.addr).filter(|a| !a.ip().is_unspecified()) {
        // The port a raw socket shows is its protocol: bind with none.
        let mut b = s.addr.clone();
        b[2..4].copy_from_slice(&[0, 0]);
        t::bind(&sock, &b).map_err(|e| failed(&format!("bind to {}", a.ip()), e))?;
    }
    if !s.peer_addr.is_empty() {
        t::connect(&sock, &s.peer_addr).map_err(|e| failed("connect", e))?;
    }
    finish_filter(&sock, s).map_err(|(w, e)| failed(&w, e))?;
    tracing::debug!(pid, fd, sock = %me, "raw socket restored");
    Ok(sfd)
}

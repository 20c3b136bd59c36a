//! UDP sockets (IPv4 and IPv6): bound, connected or neither, with their
//! options and the datagrams waiting to be read. Each queued datagram is
//! saved with its sender's address, and put back in the restored socket's
//! queue as a datagram from that sender (godwit-sys `udp::inject`: a raw
//! packet with that source address and port, looped back to the socket).
//! What cannot be put back exactly is refused, named: datagrams queued on
//! a socket that reads their destination address, timestamps or other
//! ancillary data, or that shares its port (SO_REUSEPORT); a datagram
//! being corked.

use super::unsupported;
use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{SockOpt, Socket};
use godwit_sys::tcp as t;
use godwit_sys::{process, udp, SysError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Options carried over (level, name), for either family; those a socket
/// does not answer are left out.
const OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_NO_CHECK),
    (libc::IPPROTO_UDP, libc::UDP_CORK),
];

/// Options of IPv4 sockets (and IPv6 ones, which answer them too).
const IPV4_OPTIONS: &[(i32, i32)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP),
    (libc::IPPROTO_IP, libc::IP_FREEBIND),
];

const IPV6_OPTIONS: &[(i32, i32)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
];

/// Options asking for ancillary data with each datagram read: kept, but a
/// re-queued datagram could not carry the original's (name for messages).
const ANCILLARY: &[(i32, i32, &str)] = &[
    (libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO"),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, "IP_RECVTOS"),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, "IP_RECVTTL"),
    (
        libc::IPPROTO_IP,
        libc::IP_RECVORIGDSTADDR,
        "IP_RECVORIGDSTADDR",
    ),
    (libc::IPPROTO_IP, libc::IP_RECVERR, "IP_RECVERR"),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVPKTINFO,
        "IPV6_RECVPKTINFO",
    ),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, "IPV6_RECVTCLASS"),
    (
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVHOPLIMIT,
        "IPV6_RECVHOPLIMIT",
    ),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, "IPV6_RECVERR"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, "SO_TIMESTAMP"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPING, "SO_TIMESTAMPING"),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, "SO_RXQ_OVFL"),
    (libc::IPPROTO_UDP, libc::UDP_GRO, "UDP_GRO"),
];

/// Describes UDP socket `fd` of `pid`, held by us as `ours` (from
/// pidfd_getfd), with its queued datagrams.
pub fn dump(pid: i32, fd: i32, ours: &OwnedFd) -> Result<Socket> {
    let stage = "reading sockets";
    let opt = |l, n| process::getsockopt_int(ours, l, n).dumping(pid, stage);
    let family = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let sock_type = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let v = if family == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    };
    if protocol != libc::IPPROTO_UDP {
        let what = match protocol {
            libc::IPPROTO_UDPLITE => format!("a UDP-Lite/{v} socket"),
            libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6 => format!("an ICMP ({v} ping) socket"),
            p => format!("an {v} datagram socket of protocol {p}"),
        };
        return Err(unsupported(pid, fd, what));
    }
    let addr = process::getsockname(ours).dumping(pid, stage)?;
    let peer_addr = match process::getpeername(ours) {
        Ok(a) => a,
        Err(e) if e.errno() == Some(libc::ENOTCONN) => Vec::new(),
        Err(e) => return Err(e).dumping(pid, stage),
    };
    let me = format!("a UDP/{v} socket {}", describe(&addr, &peer_addr));
    let mut options = Vec::new();
    let family_options = if family == libc::AF_INET6 {
        IPV6_OPTIONS
    } else {
        IPV4_OPTIONS
    };
    for &(level, name) in OPTIONS.iter().chain(family_options) {
        if let Ok(value) = process::getsockopt_int(ours, level, name) {
            options.push(SockOpt { level, name, value });
        }
    }
    let (_, outq, _) = t::queue_lengths(ours).unwrap_or((0, 0, 0));
    if outq > 0 {
        return Err(unsupported(
            pid,
            fd,
            format!("{me} with {outq} bytes of a datagram being built (UDP_CORK or MSG_MORE) or not yet sent; retry the dump"),
        ));
    }
    let queue =
        udp::peek_datagrams(ours).dumping(pid, "reading the datagrams queued on a UDP socket")?;
    if !queue.is_empty() {
        let n = queue.len();
        if opt(libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0 {
            return Err(unsupported(
                pid,
                fd,
                format!("{me} sharing its port (SO_REUSEPORT) with {n} datagram(s) queued, which could not be put back in its queue alone; retry once they are read"),
            ));
        }
        for &(level, name, label) in ANCILLARY {
            if process::getsockopt_int(ours, level, name).unwrap_or(0) != 0 {
                return Err(unsupported(
                    pid,
                    fd,
                    format!("{me} that reads {label} data with each datagram, with {n} datagram(s) queued whose {label} data could not be kept; retry once they are read"),
                ));
            }
        }
        for d in &queue {
            if t::sockaddr(&d.from).is_none() {
                return Err(unsupported(
                    pid,
                    fd,
                    format!("{me} with a datagram queued from {}", t::show(&d.from)),
                ));
            }
        }
    }
    tracing::debug!(pid, fd, sock = %me, queued = queue.len(), "UDP socket read");
    let (queue, queue_from) = queue.into_iter().map(|d| (d.data, d.from)).unzip();
    Ok(Socket {
        family,
        sock_type,
        protocol,
        addr,
        peer_addr,
        options,
        queue,
        queue_from,
        ..Default::default()
    })
}

/// "bound to 127.0.0.1:5353, connected to 10.0.0.1:53".
fn describe(addr: &[u8], peer: &[u8]) -> String {
    let bound = t::sockaddr(addr).filter(|a| a.port() != 0);
    let mut s = match bound {
        Some(a) => format!("bound to {a}"),
        None => "not bound".to_string(),
    };
    if !peer.is_empty() {
        s += &format!(", connected to {}", t::show(peer));
    }
    s
}

/// Where a datagram from `from` is sent to land in the queue of a socket
/// bound to `local`: its address, or the loopback address for a wildcard;
/// IPv4 for an IPv4 (or IPv4-mapped) sender.
fn destination(local: SocketAddr, from: SocketAddr) -> SocketAddr {
    let local = t::unmapped(local);
    let ip = match (from.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(a)) if !a.is_unspecified() => IpAddr::V4(a),
        (IpAddr::V4(_), _) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(_), IpAddr::V6(a)) if !a.is_unspecified() => IpAddr::V6(a),
        (IpAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, local.port())
}

fn failed(pid: i32, fd: i32, s: &Socket, what: &str, e: SysError) -> EngineError {
    EngineError::Restore {
        pid,
        stage: "restoring a UDP socket",
        source: SysError::Call {
            call: "UDP socket",
            target: format!("fd {fd} {} ({what})", describe(&s.addr, &s.peer_addr)),
            source: match e.errno() {
                Some(n) => std::io::Error::from_raw_os_error(n),
                None => std::io::Error::other(e.to_string()),
            },
        },
    }
}

/// Creates the socket again in the restored process (behind `r`), bound,
/// connected and with its datagrams queued as they were; returns its fd
/// there. `status_flags` carries O_NONBLOCK.
pub fn restore(r: &Remote, fd: i32, s: &Socket, status_flags: u64) -> Result<u64> {
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
    let pidfd = process::pidfd_open(pid).restoring(pid, "restoring a UDP socket")?;
    let sock = process::pidfd_getfd(&pidfd, sfd as i32).restoring(pid, "restoring a UDP socket")?;
    let err = |what: &str| {
        let what = what.to_string();
        move |e: SysError| failed(pid, fd, s, &what, e)
    };
    for o in &s.options {
        let (name, value) = match (o.level, o.name) {
            (libc::SOL_SOCKET, libc::SO_RCVBUF) => (libc::SO_RCVBUFFORCE, o.value / 2),
            (libc::SOL_SOCKET, libc::SO_SNDBUF) => (libc::SO_SNDBUFFORCE, o.value / 2),
            _ => (o.name, o.value),
        };
        if let Err(e) = t::set_int(&sock, o.level, name, value) {
            if value != 0 {
                return Err(failed(
                    pid,
                    fd,
                    s,
                    &format!("option {}/{}", o.level, o.name),
                    e,
                ));
            }
        }
    }
    let local = t::sockaddr(&s.addr);
    if local.is_some_and(|a| a.port() != 0) {
        t::bind(&sock, &s.addr).map_err(|e| {
            let what = if e.errno() == Some(libc::EADDRINUSE) {
                "bind: the address is in use on this host (stop the process using it)"
            } else {
                "bind"
            };
            failed(pid, fd, s, what, e)
        })?;
    }
    if !s.peer_addr.is_empty() {
        t::connect(&sock, &s.peer_addr).map_err(err("connect"))?;
    }
    if !s.queue.is_empty() {
        requeue(&sock, s).map_err(err("re-queuing its datagrams"))?;
    }
    tracing::debug!(
        pid,
        fd,
        sock = describe(&s.addr, &s.peer_addr),
        queued = s.queue.len(),
        "UDP socket restored"
    );
    Ok(sfd)
}

/// Puts the saved datagrams back in the queue of `sock`, from their
/// senders, and waits until they are all there.
fn requeue(sock: &OwnedFd, s: &Socket) -> Result<(), SysError> {
    let bad = |what: &str| SysError::Proc {
        path: "UDP socket".into(),
        detail: what.to_string(),
    };
    if s.queue_from.len() != s.queue.len() {
        return Err(bad("queued datagrams without their senders"));
    }
    let local =
        t::sockaddr(&process::getsockname(sock)?).ok_or_else(|| bad("not an IPv4/IPv6 address"))?;
    for (data, from) in s.queue.iter().zip(&s.queue_from) {
        let from = t::sockaddr(from).ok_or_else(|| bad("a datagram without a sender"))?;
        let from = t::unmapped(from);
        udp::inject(sock, from, destination(local, from), data)?;
    }
    // Looped-back packets are queued by the network stack shortly after.
    let t0 = Instant::now();
    loop {
        let n = udp::queued(sock)?;
        if n >= s.queue.len() {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(2) {
            return Err(bad(&format!(
                "{n} of {} re-sent datagrams arrived (dropped by a firewall, or the receive buffer is too small?)",
                s.queue.len()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            destination(a("0.0.0.0:53"), a("10.0.0.1:9")),
            a("127.0.0.1:53")
        );
        assert_eq!(
            destination(a("10.1.1.1:53"), a("10.0.0.1:9")),
            a("10.1.1.1:53")
        );
        assert_eq!(
            destination(a("[::]:53"), a("10.0.0.1:9")),
            a("127.0.0.1:53")
        );
        assert_eq!(destination(a("[::]:53"), a("[fe80::1]:9")), a("[::1]:53"));
        assert_eq!(
            destination(a("[::ffff:10.1.1.1]:53"), a("10.0.0.1:9")),
            a("10.1.1.1:53")
        );
    }
}

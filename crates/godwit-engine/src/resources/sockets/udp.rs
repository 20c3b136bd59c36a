//! Datagram sockets of IPv4 and IPv6: UDP, UDP-Lite and ICMP "ping"
//! sockets (SOCK_DGRAM, IPPROTO_ICMP / IPPROTO_ICMPV6), bound (a ping
//! socket's port is its echo identifier), connected or neither, with their
//! options and the datagrams waiting to be read. Each queued datagram is
//! saved with its sender's address, and put back in the restored socket's
//! queue as a datagram from that sender (a raw packet with that source
//! address and port, looped back to the socket: godwit-sys `udp::inject_of`
//! for UDP and UDP-Lite, `rawsock::inject_icmp` for the echo replies of a
//! ping socket). A ping socket's queue cannot be peeked past its first
//! message: its replies are read at dump time and put back at once the
//! same way, in order. What cannot be put back exactly is refused, named:
//! datagrams queued on a socket that reads their destination address,
//! timestamps or other ancillary data, that shares its port
//! (SO_REUSEPORT), or that is bound to a device other than lo
//! (SO_BINDTODEVICE: re-sent datagrams come in through lo); a datagram
//! being corked.

use super::unsupported;
use crate::error::{DumpCtx, EngineError, Result};
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
    (libc::SOL_SOCKET, libc::SO_LOCK_FILTER),
];

const UDPLITE_SEND_CSCOV: i32 = 10;
const UDPLITE_RECV_CSCOV: i32 = 11;

/// UDP-Lite's checksum coverage (sent, and required of what is received).
const UDPLITE_OPTIONS: &[(i32, i32)] = &[
    (libc::IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV),
    (libc::IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV),
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

/// What a datagram socket of `protocol` is called in messages.
fn kind_name(protocol: i32) -> &'static str {
    match protocol {
        libc::IPPROTO_UDPLITE => "UDP-Lite",
        libc::IPPROTO_ICMP => "ICMP (ping)",
        libc::IPPROTO_ICMPV6 => "ICMPv6 (ping)",
        _ => "UDP",
    }
}

fn is_ping(protocol: i32) -> bool {
    protocol == libc::IPPROTO_ICMP || protocol == libc::IPPROTO_ICMPV6
}

/// Describes datagram socket `fd` (inode `ino`) of `pid`, held by us as
/// `ours` (from pidfd_getfd), with its queued datagrams.
pub fn dump(pid: i32, fd: i32, ino: u64, ours: &OwnedFd) -> Result<Socket> {
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
    if !matches!(
        protocol,
        libc::IPPROTO_UDP | libc::IPPROTO_UDPLITE | libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6
    ) {
        return Err(unsupported(
            pid,
            fd,
            format!("an {v} datagram socket of protocol {protocol}"),
        ));
    }
    let addr = process::getsockname(ours).dumping(pid, stage)?;
    let peer_addr = if is_ping(protocol) {
        // getpeername answers ENOTCONN for a connected ping socket (it
        // has no remote port): /proc/PID/net/icmp{,6} has its peer.
        let file = if family == libc::AF_INET6 {
            "icmp6"
        } else {
            "icmp"
        };
        match godwit_sys::rawsock::proc_inet(pid, file, ino).dumping(pid, stage)? {
            Some(p) if p.state == 1 => t::raw_sockaddr(SocketAddr::new(p.remote.0, 0)),
            Some(_) => Vec::new(),
            None => {
                return Err(unsupported(
                    pid,
                    fd,
                    format!("a {v} ping socket not listed in /proc/{pid}/net/{file}"),
                ))
            }
        }
    } else {
        match process::getpeername(ours) {
            Ok(a) => a,
            Err(e) if e.errno() == Some(libc::ENOTCONN) => Vec::new(),
            Err(e) => return Err(e).dumping(pid, stage),
        }
    };
    let me = format!(
        "a {}/{v} socket {}",
        kind_name(protocol),
        describe(&addr, &peer_addr)
    );
    let mut options = Vec::new();
    let family_options = if family == libc::AF_INET6 {
        IPV6_OPTIONS
    } else {
        IPV4_OPTIONS
    };
    let lite: &[(i32, i32)] = if protocol == libc::IPPROTO_UDPLITE {
        UDPLITE_OPTIONS
    } else {
        &[]
    };
    let ancillary = ANCILLARY.iter().map(|&(l, n, _)| (l, n));
    for (level, name) in OPTIONS
        .iter()
        .chain(family_options)
        .chain(lite)
        .copied()
        .chain(ancillary)
    {
        if family == libc::AF_INET && level == libc::IPPROTO_IPV6 {
            continue;
        }
        if let Ok(value) = process::getsockopt_int(ours, level, name) {
            options.push(SockOpt { level, name, value });
        }
    }
    let filter = super::read_filter(pid, fd, ours, &me)?;
    let device = super::read_bound_device(pid, ours)?;
    let (_, outq, _) = t::queue_lengths(ours).unwrap_or((0, 0, 0));
    if outq > 0 {
        return Err(unsupported(
            pid,
            fd,
            format!("{me} with {outq} bytes of a datagram being built (UDP_CORK or MSG_MORE) or not yet sent; retry the dump"),
        ));
    }
    let reading = "reading the datagrams queued on a datagram socket";
    let counted = if is_ping(protocol) {
        godwit_sys::rawsock::pending(ours)
            .dumping(pid, reading)?
            .then(|| "some".to_string())
    } else {
        match udp::queued(ours).dumping(pid, reading)? {
            0 => None,
            k => Some(k.to_string()),
        }
    };
    let any = counted.is_some();
    if let Some(n) = counted {
        if let Some(dev) = device
            .as_ref()
            .map(super::device_name)
            .filter(|d| d != "lo")
        {
            return Err(unsupported(
                pid,
                fd,
                format!("{me} bound to device {dev} (SO_BINDTODEVICE) with {n} datagram(s) queued, which could not be put back (they would come in through lo); retry once they are read"),
            ));
        }
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
    }
    let queue = if !any {
        Vec::new()
    } else if is_ping(protocol) {
        take_and_put_back(ours, protocol).dumping(pid, reading)?
    } else {
        udp::peek_datagrams(ours).dumping(pid, reading)?
    };
    for d in &queue {
        if t::sockaddr(&d.from).is_none() {
            return Err(unsupported(
                pid,
                fd,
                format!("{me} with a datagram queued from {}", t::show(&d.from)),
            ));
        }
    }
    tracing::debug!(pid, fd, sock = %me, queued = queue.len(), "datagram socket read");
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
        filter,
        byte_options: device.into_iter().collect(),
        ino,
        ..Default::default()
    })
}

/// A ping socket's queued echo replies, read (its queue cannot be peeked
/// past its head) and put back at once in the same socket, in order.
fn take_and_put_back(sock: &OwnedFd, protocol: i32) -> Result<Vec<udp::Datagram>, SysError> {
    let (before, _) = godwit_sys::rawsock::rcv_mem(sock)?;
    let queue = godwit_sys::rawsock::take_datagrams(sock)?;
    let from: Vec<Vec<u8>> = queue.iter().map(|d| d.from.clone()).collect();
    let data: Vec<Vec<u8>> = queue.iter().map(|d| d.data.clone()).collect();
    requeue_raw(sock, protocol, &data, &from, Some(before))?;
    Ok(queue)
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
        stage: "restoring a datagram socket",
        source: SysError::Call {
            call: kind_name(s.protocol),
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
    let (sfd, sock) = super::new_socket(r, s, status_flags, "restoring a datagram socket")?;
    let err = |what: &str| {
        let what = what.to_string();
        move |e: SysError| failed(pid, fd, s, &what, e)
    };
    super::apply_options(&sock, s).map_err(|(what, e)| failed(pid, fd, s, &what, e))?;
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
    super::finish_filter(&sock, s).map_err(|(what, e)| failed(pid, fd, s, &what, e))?;
    tracing::debug!(
        pid,
        fd,
        sock = describe(&s.addr, &s.peer_addr),
        queued = s.queue.len(),
        "datagram socket restored"
    );
    Ok(sfd)
}

/// Puts the saved datagrams back in the queue of `sock`, from their
/// senders, and waits until they are all there.
fn requeue(sock: &OwnedFd, s: &Socket) -> Result<(), SysError> {
    requeue_raw(sock, s.protocol, &s.queue, &s.queue_from, None)
}

/// [`requeue`] of `queue` (from `from`) on a socket of `protocol`. A ping
/// socket's queue cannot be counted by peeking: its replies have all
/// arrived when the receive queue holds `mem_goal` bytes again (the dump's
/// own put-back), or else when its size stays the same a while, with no
/// drop.
fn requeue_raw(
    sock: &OwnedFd,
    protocol: i32,
    queue: &[Vec<u8>],
    from: &[Vec<u8>],
    mem_goal: Option<u32>,
) -> Result<(), SysError> {
    let bad = |what: &str| SysError::Proc {
        path: format!("{} socket", kind_name(protocol)),
        detail: what.to_string(),
    };
    if from.len() != queue.len() {
        return Err(bad("queued datagrams without their senders"));
    }
    let local =
        t::sockaddr(&process::getsockname(sock)?).ok_or_else(|| bad("not an IPv4/IPv6 address"))?;
    let (_, drops_before) = if is_ping(protocol) {
        godwit_sys::rawsock::rcv_mem(sock)?
    } else {
        (0, 0)
    };
    for (data, from) in queue.iter().zip(from) {
        let from = t::sockaddr(from).ok_or_else(|| bad("a datagram without a sender"))?;
        let from = t::unmapped(from);
        let to = destination(local, from);
        if is_ping(protocol) {
            godwit_sys::rawsock::inject_icmp(sock, from.ip(), to.ip(), data)?;
        } else {
            udp::inject_of(protocol, sock, from, to, data)?;
        }
    }
    // Looped-back packets are queued by the network stack shortly after.
    let t0 = Instant::now();
    let mut last = (u32::MAX, Instant::now());
    loop {
        let done = if is_ping(protocol) {
            let (mem, drops) = godwit_sys::rawsock::rcv_mem(sock)?;
            if drops != drops_before {
                return Err(bad(&format!(
                    "{} re-sent echo replies dropped (the receive buffer is too small?)",
                    drops.wrapping_sub(drops_before)
                )));
            }
            if mem != last.0 {
                last = (mem, Instant::now());
            }
            queue.is_empty()
                || mem_goal == Some(mem)
                || (mem > 0 && last.1.elapsed() > Duration::from_millis(50))
        } else {
            udp::queued(sock)? >= queue.len()
        };
        if done {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(2) {
            return Err(bad(&format!(
                "the {} re-sent datagrams did not all arrive (dropped by a firewall, or the receive buffer is too small?)",
                queue.len()
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

//! Ping (ICMP datagram), raw, packet and netlink sockets seen from the
//! tracer, and what refills or configures one again.
//!
//! * Options that are not integers ([`get_bytes`], [`set_bytes`]): ICMP
//!   filters, netlink group lists; a socket's classic BPF filter
//!   ([`filter`], [`attach_filter`]).
//! * Queues: whether anything waits to be read ([`pending`]); a ping
//!   socket's echo replies read ([`take_datagrams`], which consumes them:
//!   such sockets cannot be peeked past their first message) and put back
//!   from their sender ([`inject_icmp`]).
//! * What only /proc tells: a raw or ping socket's peer and queue lengths
//!   ([`proc_inet`], from /proc/PID/net/{raw,raw6,icmp,icmp6}).
//! * Interfaces by index and name in a socket's own network namespace
//!   ([`if_name`], [`if_index`]); a packet socket's multicast memberships,
//!   rings and fanout ([`packet_diag`], NETLINK_SOCK_DIAG).

use crate::tcp::socket_in_netns_of;
use crate::udp::{fold, sum16, Datagram};
use crate::{check, Result, SysError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// SO_ATTACH_FILTER, which SO_GET_FILTER shares.
const SO_ATTACH_FILTER: i32 = 26;

/// A socket option of up to `cap` bytes, as the kernel returns it.
pub fn get_bytes(fd: impl AsFd, level: i32, name: i32, cap: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; cap];
    let mut len = cap as libc::socklen_t;
    // SAFETY: `buf` is a valid out-buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    check(
        r as i64,
        "getsockopt",
        format!("level {level} option {name}"),
    )?;
    buf.truncate((len as usize).min(cap));
    Ok(buf)
}

/// Sets a socket option to the bytes `value`.
pub fn set_bytes(fd: impl AsFd, level: i32, name: i32, value: &[u8]) -> Result<()> {
    // SAFETY: `value` is a valid buffer of the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            value.as_ptr() as *const libc::c_void,
            value.len() as libc::socklen_t,
        )
    };
    check(
        r as i64,
        "setsockopt",
        format!("level {level} option {name}"),
    )
    .map(|_| ())
}

/// The classic BPF program attached to a socket (SO_GET_FILTER), 8 bytes
/// per instruction; empty when there is none. An eBPF program (which the
/// kernel cannot give back) is an error.
pub fn filter(fd: impl AsFd) -> Result<Vec<u8>> {
    let fd = fd.as_fd();
    let mut len: libc::socklen_t = 0;
    // SAFETY: a zero length asks for the instruction count only; the
    // pointer is not written.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    };
    check(r as i64, "getsockopt(SO_GET_FILTER)", "socket")?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let n = len as usize;
    let mut buf = vec![0u8; n * 8];
    let mut len2 = len;
    // SAFETY: `buf` has room for `len` instructions of 8 bytes, the unit
    // in which SO_GET_FILTER counts.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len2,
        )
    };
    check(r as i64, "getsockopt(SO_GET_FILTER)", "socket")?;
    buf.truncate((len2 as usize).min(n) * 8);
    Ok(buf)
}

/// Attaches classic BPF program `insns` (8 bytes per instruction).
pub fn attach_filter(fd: impl AsFd, insns: &[u8]) -> Result<()> {
    if insns.is_empty() || insns.len() % 8 != 0 || insns.len() / 8 > u16::MAX as usize {
        return Err(SysError::call_errno(
            "setsockopt(SO_ATTACH_FILTER)",
            format!("a filter of {} bytes", insns.len()),
            libc::EINVAL,
        ));
    }
    let prog = libc::sock_fprog {
        len: (insns.len() / 8) as u16,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points to `len` instructions of 8 bytes in `insns`,
    // which outlives the call; the kernel copies them.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(r as i64, "setsockopt(SO_ATTACH_FILTER)", "socket").map(|_| ())
}

/// Whether a message waits to be read on a socket we hold (a peek of zero
/// bytes; nothing is consumed).
pub fn pending(fd: impl AsFd) -> Result<bool> {
    let mut b = [0u8; 1];
    // SAFETY: `b` is a valid buffer; zero bytes of it are asked for.
    let r = unsafe {
        libc::recv(
            fd.as_fd().as_raw_fd(),
            b.as_mut_ptr() as *mut libc::c_void,
            0,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if r >= 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(false),
        _ => Err(SysError::Call {
            call: "recv(MSG_PEEK)",
            target: "socket".into(),
            source: e,
        }),
    }
}

/// Reads (consuming them) every datagram queued on a socket we hold, in
/// order, with its sender. For sockets whose queue cannot be peeked past
/// its head (ping sockets): the caller puts them back.
pub fn take_datagrams(fd: impl AsFd) -> Result<Vec<Datagram>> {
    let fd = fd.as_fd();
    let mut out = Vec::new();
    loop {
        let mut data = vec![0u8; 65536];
        let mut name = [0u8; 128];
        let mut namelen = name.len() as libc::socklen_t;
        // SAFETY: `data` and `name` are valid out-buffers of the lengths
        // given.
        let r = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                data.as_mut_ptr() as *mut libc::c_void,
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                name.as_mut_ptr() as *mut libc::sockaddr,
                &mut namelen,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(out);
            }
            return Err(SysError::Call {
                call: "recvfrom",
                target: "a datagram socket's queue".into(),
                source: e,
            });
        }
        let n = r as usize;
        data.truncate(n.min(data.len()));
        let from = name[..(namelen as usize).min(name.len())].to_vec();
        out.push(Datagram { from, data });
        if n > 65536 || out.len() > 1 << 20 {
            return Err(SysError::call_errno(
                "recvfrom",
                "a datagram socket's queue (a message over 64 KiB, or over a million)",
                libc::E2BIG,
            ));
        }
    }
}

/// (bytes the receive queue takes, packets dropped at the socket so far)
/// from SO_MEMINFO.
pub fn rcv_mem(fd: impl AsFd) -> Result<(u32, u32)> {
    const SO_MEMINFO: i32 = 55;
    let b = get_bytes(fd, libc::SOL_SOCKET, SO_MEMINFO, 9 * 4)?;
    let at = |i: usize| u32_at(&b, i * 4).unwrap_or(0);
    Ok((at(0), at(8)))
}

/// The IP packet carrying ICMP (IPv4) or ICMPv6 message `icmp` from `src`
/// to `dst`, its checksum computed again (over a pseudo-header for IPv6).
pub fn icmp_packet(src: IpAddr, dst: IpAddr, icmp: &[u8]) -> Option<Vec<u8>> {
    if icmp.len() < 4 {
        return None;
    }
    let mut l4 = icmp.to_vec();
    l4[2] = 0;
    l4[3] = 0;
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let c = fold(sum16(&l4, 0));
            let mut p = crate::udp::ip_packet(src, dst, libc::IPPROTO_ICMP as u8, l4, 2, false)?;
            p[22..24].copy_from_slice(&c.to_be_bytes());
            Some(p)
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            crate::udp::ip_packet(src, dst, libc::IPPROTO_ICMPV6 as u8, l4, 2, false)
        }
        _ => None,
    }
}

/// Puts ICMP message `icmp` (an echo reply, as a ping socket reads it) in
/// the queue of the ping socket it is for, in the network namespace of
/// socket `ns_of`: a raw packet from `src`, looped back to `dst` (an
/// address of this host).
pub fn inject_icmp(ns_of: impl AsFd, src: IpAddr, dst: IpAddr, icmp: &[u8]) -> Result<()> {
    let what = format!("re-queuing an ICMP message from {src} to {dst}");
    let pkt = icmp_packet(src, dst, icmp)
        .ok_or_else(|| SysError::call_errno("sendto(raw)", &what, libc::EINVAL))?;
    crate::udp::send_raw(ns_of.as_fd(), dst, &pkt, &what)
}

/// One socket's line of /proc/PID/net/{raw,raw6,icmp,icmp6,udp,...}.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInet {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// TCP_ESTABLISHED (1) when connected.
    pub state: u8,
    pub tx_queue: u64,
    pub rx_queue: u64,
}

fn hex_addr(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(a, 16).ok()?.to_ne_bytes(),
        )),
        32 => {
            let mut o = [0u8; 16];
            for i in 0..4 {
                let w = u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).ok()?;
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Parses the text of a /proc/net/{raw,icmp,...} file: the line of the
/// socket with inode `ino`, if any.
pub fn parse_proc_inet(text: &str, ino: u64) -> Option<ProcInet> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[9].parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let (tx, rx) = f[4].split_once(':')?;
        return Some(ProcInet {
            local: hex_addr(f[1])?,
            remote: hex_addr(f[2])?,
            state: u8::from_str_radix(f[3], 16).ok()?,
            tx_queue: u64::from_str_radix(tx, 16).ok()?,
            rx_queue: u64::from_str_radix(rx, 16).ok()?,
        });
    }
    None
}

/// The line of socket inode `ino` in /proc/`pid`/net/`file` (the network
/// namespace of process `pid`), None when it is not there.
pub fn proc_inet(pid: i32, file: &str, ino: u64) -> Result<Option<ProcInet>> {
    let path = format!("{}/net/{file}", crate::proc::dir(pid));
    let text = std::fs::read_to_string(&path).map_err(|e| SysError::Proc {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    Ok(parse_proc_inet(&text, ino))
}

fn ifreq_call(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    ifr: &mut libc::ifreq,
    what: &str,
) -> Result<()> {
    // SAFETY: SIOCGIFNAME and SIOCGIFINDEX read and write one struct
    // ifreq, which `ifr` is.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, ifr as *mut libc::ifreq) };
    check(r as i64, "ioctl", what).map(|_| ())
}

/// The name of interface `index` in the network namespace of socket `fd`.
pub fn if_name(fd: impl AsFd, index: i32) -> Result<String> {
    // SAFETY: an all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_ifru.ifru_ifindex = index;
    ifreq_call(
        fd.as_fd(),
        libc::SIOCGIFNAME,
        &mut ifr,
        &format!("SIOCGIFNAME of interface {index}"),
    )?;
    let name: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// The index of interface `name` in the network namespace of socket `fd`.
pub fn if_index(fd: impl AsFd, name: &str) -> Result<i32> {
    // SAFETY: an all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= ifr.ifr_name.len() {
        return Err(SysError::call_errno(
            "ioctl(SIOCGIFINDEX)",
            format!("interface {name:?}"),
            libc::EINVAL,
        ));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifreq_call(
        fd.as_fd(),
        libc::SIOCGIFINDEX,
        &mut ifr,
        &format!("SIOCGIFINDEX of interface {name}"),
    )?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
}

/// One multicast/promiscuous membership of a packet socket
/// (PACKET_ADD_MEMBERSHIP), `count` times over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketMembership {
    pub ifindex: i32,
    pub count: u32,
    pub kind: u16,
    pub addr: Vec<u8>,
}

/// What packet_diag tells about a packet socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PacketDiag {
    pub memberships: Vec<PacketMembership>,
    pub rx_ring: bool,
    pub tx_ring: bool,
    pub fanout: bool,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NETLINK_SOCK_DIAG: i32 = 4;

/// The SOCK_DIAG_BY_FAMILY dump request for every packet socket, showing
/// memberships (MCLIST), rings (RING_CFG) and fanout.
fn packet_request() -> Vec<u8> {
    const SHOW: u32 = 0x2 | 0x4 | 0x8;
    let len = 16 + 20u32;
    let mut b = Vec::with_capacity(len as usize);
    b.extend_from_slice(&len.to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.push(libc::AF_PACKET as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&SHOW.to_ne_bytes());
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

/// Parses one packet_diag_msg with its attributes: (inode, what it says).
pub fn parse_packet_msg(p: &[u8]) -> Option<(u32, PacketDiag)> {
    const MSG: usize = 16;
    let ino = u32_at(p, 4)?;
    let mut d = PacketDiag::default();
    let mut off = MSG;
    while off + 4 <= p.len() {
        let len = u16_at(p, off)? as usize;
        let kind = u16_at(p, off + 2)?;
        if len < 4 || off + len > p.len() {
            return None;
        }
        let v = &p[off + 4..off + len];
        match kind {
            1 => {
                // struct packet_diag_mclist: index, count, type, alen, addr[32]
                for m in v.chunks_exact(44) {
                    let alen = (u16_at(m, 10)? as usize).min(32);
                    d.memberships.push(PacketMembership {
                        ifindex: u32_at(m, 0)? as i32,
                        count: u32_at(m, 4)?,
                        kind: u16_at(m, 8)?,
                        addr: m[12..12 + alen].to_vec(),
                    });
                }
            }
            2 => d.rx_ring = true,
            3 => d.tx_ring = true,
            4 => d.fanout = true,
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some((ino, d))
}

/// What packet_diag says of packet socket inode `ino`, asked in the
/// network namespace of socket `ns_of`; None when it is not listed.
pub fn packet_diag(ns_of: impl AsFd, ino: u64) -> Result<Option<PacketDiag>> {
    let what = format!("packet socket inode {ino}");
    let sock = socket_in_netns_of(
        ns_of.as_fd(),
        libc::AF_NETLINK,
        libc::SOCK_DGRAM,
        NETLINK_SOCK_DIAG,
        &what,
    )?;
    let req = packet_request();
    // SAFETY: `req` is a valid buffer of its length; a null address sends
    // to the kernel.
    let r = unsafe {
        libc::send(
            sock.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
        )
    };
    check(r as i64, "send(NETLINK_SOCK_DIAG)", &what)?;
    let mut found = None;
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
        let n = check(n as i64, "recv(NETLINK_SOCK_DIAG)", &what)? as usize;
        if n == 0 {
            return Ok(found);
        }
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&buf, off).unwrap_or(0) as usize;
            let kind = u16_at(&buf, off + 4).unwrap_or(0);
            if len < 16 || off + len > n {
                return Err(SysError::Proc {
                    path: format!("sock_diag reply for {what}"),
                    detail: format!("a netlink message of {len} bytes"),
                });
            }
            let payload = &buf[off + 16..off + len];
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(found),
                libc::NLMSG_ERROR => {
                    let e = u32_at(payload, 0).unwrap_or(0) as i32;
                    if e == 0 {
                        return Ok(found);
                    }
                    return Err(SysError::call_errno("sock_diag", &what, -e));
                }
                _ if kind == SOCK_DIAG_BY_FAMILY => {
                    if let Some((i, d)) = parse_packet_msg(payload) {
                        if i as u64 == ino {
                            found = Some(d);
                        }
                    }
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_lines() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n 162: 0100007F:0001 0100007F:0000 01 00000000:00000010 00:00000000 00000000     0        0 840062 2 00000000473d3482 0\n";
        let p = parse_proc_inet(text, 840062).unwrap();
        assert_eq!(p.local, (IpAddr::V4(Ipv4Addr::LOCALHOST), 1));
        assert_eq!(p.state, 1);
        assert_eq!(p.rx_queue, 16);
        assert!(parse_proc_inet(text, 1).is_none());
        let v6 = "h\n 1: 00000000000000000000000001000000:0000 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 77 2 0 0\n";
        let p = parse_proc_inet(v6, 77).unwrap();
        assert_eq!(p.local.0, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn icmp_checksums() {
        let echo = [0u8, 0, 0x12, 0x34, 0x10, 0x92, 0, 1, b'h', b'i'];
        let p = icmp_packet(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &echo,
        )
        .unwrap();
        assert_eq!(fold(sum16(&p[20..], 0)), 0, "ICMP checksum");
        assert_eq!(fold(sum16(&p[..20], 0)), 0, "IP header checksum");
        assert!(icmp_packet(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            &echo
        )
        .is_none());
    }
}

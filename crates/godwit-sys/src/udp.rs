//! UDP sockets: their queued datagrams read without consuming them
//! ([`peek_datagrams`]), and put back in a restored socket's queue with
//! their sender's address and port ([`inject`]: a raw IPv4/IPv6 packet
//! with that source, sent to the socket's address).

use crate::tcp::socket_in_netns_of;
use crate::{check, Result, SysError};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

const SO_PEEK_OFF: i32 = 42;

/// One queued datagram: its sender (raw sockaddr) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub from: Vec<u8>,
    pub data: Vec<u8>,
}

fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> Result<i32> {
    crate::tcp::get_int(fd, level, name)
}

fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32) -> Result<()> {
    crate::tcp::set_int(fd, level, name, v)
}

/// One recvmsg(MSG_PEEK | MSG_TRUNC): None when the queue has no more.
fn peek_one(fd: BorrowedFd<'_>, cap: usize) -> Result<Option<(usize, Datagram)>> {
    let mut data = vec![0u8; cap];
    let mut name = [0u8; 128];
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
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_TRUNC;
    // SAFETY: `msg` points to live buffers of the lengths it states.
    let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(None);
        }
        return Err(SysError::Call {
            call: "recvmsg(MSG_PEEK)",
            target: "UDP socket".into(),
            source: e,
        });
    }
    let full = r as usize;
    data.truncate(full.min(cap));
    let from = name[..(msg.msg_namelen as usize).min(name.len())].to_vec();
    Ok(Some((full, Datagram { from, data })))
}

/// Every datagram queued on UDP socket `fd`, in order, without consuming
/// them (SO_PEEK_OFF walks the queue; it is put back as it was). The
/// socket must not be read meanwhile (its process is frozen). Datagrams
/// of length zero are not seen (a peek at an offset skips them).
pub fn peek_datagrams(fd: impl AsFd) -> Result<Vec<Datagram>> {
    let fd = fd.as_fd();
    let before = get_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    set_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF, 0)?;
    let walk = (|| {
        let mut out = Vec::new();
        loop {
            let Some((full, d)) = peek_one(fd, 65536)? else {
                return Ok(out);
            };
            if full > d.data.len() {
                return Err(SysError::call_errno(
                    "recvmsg(MSG_PEEK)",
                    format!("a queued datagram of {full} bytes"),
                    libc::EMSGSIZE,
                ));
            }
            if full == 0 {
                return Ok(out);
            }
            out.push(d);
            if out.len() > 1 << 20 {
                return Err(SysError::call_errno(
                    "recvmsg(MSG_PEEK)",
                    "a UDP socket with more than a million queued datagrams",
                    libc::E2BIG,
                ));
            }
        }
    })();
    let back = set_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF, before);
    let out = walk?;
    back?;
    Ok(out)
}

/// How many datagrams are queued on `fd` now (peeked as above).
pub fn queued(fd: impl AsFd) -> Result<usize> {
    Ok(peek_datagrams(fd)?.len())
}

/// The ones' complement sum of `data` as big-endian 16-bit words (a last
/// odd byte padded with zero), added to `acc`.
pub(crate) fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += w as u32;
    }
    acc
}

/// The Internet checksum of a sum from [`sum16`]: carries folded in, then
/// complemented.
pub(crate) fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The IP packet carrying `payload` from `src` to `dst` (both IPv4 or both
/// IPv6), with a UDP checksum.
pub fn packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    packet_of(libc::IPPROTO_UDP, src, dst, payload)
}

/// [`packet`] for UDP (`IPPROTO_UDP`) or UDP-Lite (`IPPROTO_UDPLITE`,
/// whose length field, the checksum coverage, then covers it all).
pub fn packet_of(proto: i32, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let ulen = u16::try_from(8 + payload.len()).ok()?;
    let mut udp = Vec::with_capacity(ulen as usize);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    ip_packet(src.ip(), dst.ip(), proto as u8, udp, 6, true)
}

/// An IP packet from `src` to `dst` (both IPv4 or both IPv6) carrying
/// transport segment `l4` of protocol `proto`, whose checksum (16 bits at
/// `csum_at`, zero in `l4`) is filled in; `udp`: a zero sum is sent as
/// 0xffff.
pub(crate) fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    mut l4: Vec<u8>,
    csum_at: usize,
    udp: bool,
) -> Option<Vec<u8>> {
    let len = l4.len();
    let (mut out, pseudo) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(20 + len).ok()?;
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = fold(sum16(&h, 0));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            let mut p = s.octets().to_vec();
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(u16::try_from(len).ok()?).to_be_bytes());
            (h, p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(u16::try_from(len).ok()?).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let mut p = s.octets().to_vec();
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
            (h, p)
        }
        _ => return None,
    };
    let c = match fold(sum16(&l4, sum16(&pseudo, 0))) {
        0 if udp => 0xffff,
        c => c,
    };
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&l4);
    Some(out)
}

/// Sends IP packet `pkt` to `dst` through a raw socket in the network
/// namespace of socket `ns_of`.
pub(crate) fn send_raw(ns_of: BorrowedFd<'_>, dst: IpAddr, pkt: &[u8], what: &str) -> Result<()> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let raw = socket_in_netns_of(ns_of, domain, libc::SOCK_RAW, libc::IPPROTO_RAW, what)?;
    let to = crate::tcp::raw_sockaddr(SocketAddr::new(dst, 0));
    // SAFETY: valid buffers of the lengths given.
    let r = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            pkt.as_ptr() as *const libc::c_void,
            pkt.len(),
            0,
            to.as_ptr() as *const libc::sockaddr,
            to.len() as libc::socklen_t,
        )
    };
    check(r as i64, "sendto(raw)", what)?;
    Ok(())
}

/// Puts a datagram from `src` in the queue of the UDP socket bound to
/// `dst`, in the network namespace of socket `ns_of`: a raw packet with
/// that source, looped back to `dst` (which must be an address of this
/// host).
pub fn inject(ns_of: impl AsFd, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<()> {
    inject_of(libc::IPPROTO_UDP, ns_of, src, dst, payload)
}

/// [`inject`] for UDP or UDP-Lite (`proto`, as [`packet_of`]).
pub fn inject_of(
    proto: i32,
    ns_of: impl AsFd,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> Result<()> {
    let what = format!("re-queuing a datagram from {src} to {dst}");
    let pkt = packet_of(proto, src, dst, payload)
        .ok_or_else(|| SysError::call_errno("sendto(raw)", &what, libc::EMSGSIZE))?;
    send_raw(ns_of.as_fd(), dst.ip(), &pkt, &what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    #[test]
    fn checksums_are_valid() {
        let p = packet(
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.2:53".parse().unwrap(),
            b"hello",
        )
        .unwrap();
        assert_eq!(fold(sum16(&p[..20], 0)), 0, "IPv4 header checksum");
        assert_eq!(p.len(), 20 + 8 + 5);
        let p6 = packet("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap(), b"x").unwrap();
        assert_eq!(p6.len(), 40 + 8 + 1);
        assert!(packet(
            "[::1]:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            b""
        )
        .is_none());
    }

    fn wait_queued(s: &UdpSocket, n: usize) {
        let t0 = Instant::now();
        while queued(s).unwrap() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "datagrams never arrived"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Peeked datagrams come back, in order, with their senders; injected
    /// ones arrive from the address and port given.
    #[test]
    fn peek_and_inject() {
        for (any, lo) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "::1")] {
            let r = UdpSocket::bind(any).unwrap();
            let a = UdpSocket::bind(any).unwrap();
            let b = UdpSocket::bind(any).unwrap();
            a.send_to(b"one", r.local_addr().unwrap()).unwrap();
            b.send_to(b"two", r.local_addr().unwrap()).unwrap();
            wait_queued(&r, 2);
            let q = peek_datagrams(&r).unwrap();
            assert_eq!(q.len(), 2);
            assert_eq!(q[0].data, b"one");
            assert_eq!(
                crate::tcp::sockaddr(&q[0].from),
                Some(a.local_addr().unwrap())
            );
            assert_eq!(q[1].data, b"two");
            // Nothing was consumed.
            assert_eq!(queued(&r).unwrap(), 2);
            let mut buf = [0u8; 16];
            r.recv_from(&mut buf).unwrap();
            r.recv_from(&mut buf).unwrap();
            let from: SocketAddr = format!("[{lo}]:4321")
                .replace("[127.0.0.1]", "127.0.0.1")
                .parse()
                .unwrap();
            inject(&r, from, r.local_addr().unwrap(), b"again").unwrap();
            r.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let (n, src) = r.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"again");
            assert_eq!(src, from);
        }
    }
}

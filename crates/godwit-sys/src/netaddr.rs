//! Addresses of this host's interfaces, for `--move-ip`: list, add and
//! remove them (rtnetlink, through the rust-netlink crates), and announce a
//! moved address to the neighbours at once: a gratuitous ARP (IPv4) or an
//! unsolicited neighbour advertisement (IPv6), so that peers send to the new
//! host without waiting for their caches to expire.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{Result, SysError};

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfAddr {
    pub ifindex: u32,
    pub ifname: String,
    pub addr: IpAddr,
    pub prefix: u8,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Its hardware (MAC) address; empty for loopback and tunnels.
    pub mac: Vec<u8>,
}

fn nl_error(what: &str, e: impl std::fmt::Display) -> SysError {
    SysError::Net {
        what: what.to_string(),
        source: std::io::Error::other(format!("malformed rtnetlink answer: {e}")),
    }
}

fn io_error(what: &str, e: std::io::Error) -> SysError {
    SysError::Net {
        what: what.to_string(),
        source: e,
    }
}

/// Sends one request and collects the answers (a dump's parts, or the ack).
fn request(msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| io_error(what, e))?;
    socket.bind_auto().map_err(|e| io_error(what, e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| io_error(what, e))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket.send(&buf, 0).map_err(|e| io_error(what, e))?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| io_error(what, e))?;
        let mut offset = 0;
        while offset < size {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[offset..size]).map_err(|e| nl_error(what, e))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    if e.code.is_none() {
                        // An ack: the request is done.
                        return Ok(out);
                    }
                    return Err(io_error(what, e.to_io()));
                }
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
        if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
            return Ok(out);
        }
    }
}

/// Every interface of this network namespace.
pub fn links() -> Result<Vec<Link>> {
    let answers = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        "listing interfaces",
    )?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                let mut link = Link {
                    index: l.header.index,
                    name: String::new(),
                    mac: Vec::new(),
                };
                for a in l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => link.name = n,
                        LinkAttribute::Address(m) => link.mac = m,
                        _ => {}
                    }
                }
                Some(link)
            }
            _ => None,
        })
        .collect())
}

/// Every address of every interface of this network namespace.
pub fn addresses() -> Result<Vec<IfAddr>> {
    let names = links()?;
    let answers = request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        "listing addresses",
    )?;
    let mut out = Vec::new();
    for m in answers {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // IFA_LOCAL is the interface's own address on point-to-point links,
        // IFA_ADDRESS elsewhere.
        let mut local = None;
        let mut address = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                _ => {}
            }
        }
        if let Some(addr) = local.or(address) {
            out.push(IfAddr {
                ifindex: a.header.index,
                ifname: names
                    .iter()
                    .find(|l| l.index == a.header.index)
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
                addr,
                prefix: a.header.prefix_len,
            });
        }
    }
    Ok(out)
}

fn address_message(ifindex: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = ifindex;
    m.header.prefix_len = prefix;
    m.header.family = match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.attributes.push(AddressAttribute::Local(addr));
    m.attributes.push(AddressAttribute::Address(addr));
    if let IpAddr::V4(v4) = addr {
        if prefix < 31 {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let bcast = Ipv4Addr::from(u32::from(v4) | !mask);
            m.attributes.push(AddressAttribute::Broadcast(bcast));
        }
    } else {
        // No duplicate address detection: the address is moving here from
        // a host that gave it up a moment ago, and must be usable at once.
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

/// Adds `addr/prefix` to interface `ifindex`.
pub fn add_address(ifindex: u32, addr: IpAddr, prefix: u8) -> Result<()> {
    request(
        RouteNetlinkMessage::NewAddress(address_message(ifindex, addr, prefix)),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &format!("adding {addr}/{prefix}"),
    )
    .map(drop)
}

/// Removes `addr/prefix` from interface `ifindex`.
pub fn del_address(ifindex: u32, addr: IpAddr, prefix: u8) -> Result<()> {
    request(
        RouteNetlinkMessage::DelAddress(address_message(ifindex, addr, prefix)),
        NLM_F_REQUEST | NLM_F_ACK,
        &format!("removing {addr}/{prefix}"),
    )
    .map(drop)
}

/// Whether `a` and `b` are in the same subnet of `prefix` bits.
pub fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    fn bits(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    }
    let ((x, wx), (y, wy)) = (bits(a), bits(b));
    if wx != wy || u32::from(prefix) > wx {
        return false;
    }
    let shift = wx - u32::from(prefix);
    shift >= 128 || (x >> shift) == (y >> shift)
}

/// Tells the neighbours on interface `ifindex` that `addr` is here now:
/// a gratuitous ARP request and reply (IPv4), or an unsolicited neighbour
/// advertisement with the override flag to all nodes (IPv6).
pub fn announce(ifindex: u32, addr: IpAddr) -> Result<()> {
    let link = links()?
        .into_iter()
        .find(|l| l.index == ifindex)
        .ok_or_else(|| {
            io_error(
                "announcing an address",
                std::io::Error::other(format!("no interface with index {ifindex}")),
            )
        })?;
    if link.mac.len() != 6 {
        // Loopback and layer-3 devices have no neighbours to tell.
        return Ok(());
    }
    let mac: [u8; 6] = link.mac[..6].try_into().expect("6 bytes");
    match addr {
        IpAddr::V4(v4) => {
            for op in [1u16, 2u16] {
                send_arp(ifindex, mac, v4, op)?;
            }
            Ok(())
        }
        IpAddr::V6(v6) => send_unsolicited_na(ifindex, mac, v6),
    }
}

/// A raw socket of `domain`, closed on drop.
fn raw_socket(domain: i32, ty: i32, proto: i32, what: &str) -> Result<OwnedFd> {
    // SAFETY: plain integer syscall.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io_error(what, std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One ARP packet for `ip` at `mac`, broadcast: operation 1 (request) or 2
/// (reply), sender = target = `ip`.
fn send_arp(ifindex: u32, mac: [u8; 6], ip: Ipv4Addr, op: u16) -> Result<()> {
    let what = "sending a gratuitous ARP";
    let eth_p_arp = 0x0806u16;
    let fd = raw_socket(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        i32::from(eth_p_arp.to_be()),
        what,
    )?;
    let mut pkt = Vec::with_capacity(28);
    pkt.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    pkt.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    pkt.push(6);
    pkt.push(4);
    pkt.extend_from_slice(&op.to_be_bytes());
    pkt.extend_from_slice(&mac);
    pkt.extend_from_slice(&ip.octets());
    pkt.extend_from_slice(&[0xff; 6]);
    pkt.extend_from_slice(&ip.octets());
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = eth_p_arp.to_be();
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `pkt` and `sa` are valid for the lengths given for the whole call.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(io_error(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// An unsolicited neighbour advertisement (override flag set) for `ip` at
/// `mac`, to all nodes (ff02::1), hop limit 255 as the protocol requires.
fn send_unsolicited_na(ifindex: u32, mac: [u8; 6], ip: Ipv6Addr) -> Result<()> {
    let what = "sending an unsolicited neighbour advertisement";
    let fd = raw_socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6, what)?;
    let hops: libc::c_int = 255;
    // SAFETY: `hops` is a valid c_int for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            (&hops as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r < 0 {
        return Err(io_error(what, std::io::Error::last_os_error()));
    }
    // Type 136, code 0, checksum (the kernel fills it for ICMPv6 raw
    // sockets), flags: override (0x20 in the first byte), the target, then
    // the target link-layer address option (type 2, length 1 = 8 bytes).
    let mut pkt = vec![136u8, 0, 0, 0, 0x20, 0, 0, 0];
    pkt.extend_from_slice(&ip.octets());
    pkt.extend_from_slice(&[2, 1]);
    pkt.extend_from_slice(&mac);
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    sa.sin6_scope_id = ifindex;
    // SAFETY: `pkt` and `sa` are valid for the lengths given for the whole call.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    if r < 0 {
        return Err(io_error(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_subnet(ip("10.1.2.3"), ip("10.1.2.200"), 24));
        assert!(!same_subnet(ip("10.1.2.3"), ip("10.1.3.3"), 24));
        assert!(same_subnet(ip("10.1.2.3"), ip("99.9.9.9"), 0));
        assert!(!same_subnet(ip("10.1.2.3"), ip("::1"), 0));
        assert!(same_subnet(ip("fd00::1"), ip("fd00::2"), 64));
        assert!(!same_subnet(ip("fd00::1"), ip("fd01::2"), 64));
    }

    #[test]
    fn loopback_is_listed() {
        let addrs = addresses().unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST) && a.ifname == "lo"),
            "{addrs:?}"
        );
    }
}

//! Packet sockets (AF_PACKET, SOCK_RAW or SOCK_DGRAM): made again with the
//! same protocol, bound to the same interface (saved by name, its index
//! looked up again at restore in the process's network namespace; a
//! missing interface refuses the restore, naming it), with the same
//! multicast/promiscuous memberships (read with packet_diag), options
//! (PACKET_AUXDATA, PACKET_VERSION, ...) and socket filter. Until it is
//! configured, the new socket drops everything (a filter that accepts
//! nothing), and what it caught meanwhile is thrown away: it sees only
//! what the original, so configured, would have.
//! Refused, naming the socket: fanout groups (PACKET_FANOUT), mapped
//! rings (PACKET_RX_RING / PACKET_TX_RING), packets waiting to be read
//! (which cannot be put back), and SOCK_PACKET sockets.

use super::{apply_options, new_socket, restore_failed, unsupported};
use crate::error::{DumpCtx, Result};
use crate::remote::Remote;
use crate::schema::{PacketMembership, SockOpt, Socket};
use godwit_sys::{process, rawsock, tcp as t, SysError};
use std::os::fd::OwnedFd;

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_VERSION: i32 = 10;
const PACKET_FANOUT: i32 = 18;
const SO_DETACH_FILTER: i32 = 27;

const OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS),
    (libc::SOL_SOCKET, libc::SO_LOCK_FILTER),
    (SOL_PACKET, PACKET_VERSION),
    (SOL_PACKET, 8),  // PACKET_AUXDATA
    (SOL_PACKET, 9),  // PACKET_ORIGDEV
    (SOL_PACKET, 12), // PACKET_RESERVE
    (SOL_PACKET, 14), // PACKET_LOSS
    (SOL_PACKET, 15), // PACKET_VNET_HDR
    (SOL_PACKET, 17), // PACKET_TIMESTAMP
    (SOL_PACKET, 19), // PACKET_TX_HAS_OFF
    (SOL_PACKET, 20), // PACKET_QDISC_BYPASS
    (SOL_PACKET, 23), // PACKET_IGNORE_OUTGOING
];

/// (protocol in network order, interface index) of a raw sockaddr_ll.
fn ll_addr(b: &[u8]) -> (u16, i32) {
    let proto = b.get(2..4).map_or(0, |w| u16::from_ne_bytes([w[0], w[1]]));
    let index = b
        .get(4..8)
        .map_or(0, |w| i32::from_ne_bytes(w.try_into().expect("4 bytes")));
    (proto, index)
}

fn sockaddr_ll(proto: u16, index: i32) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
    b[2..4].copy_from_slice(&proto.to_ne_bytes());
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// "a packet socket (SOCK_RAW, protocol 0x0003) bound to lo".
fn describe(s: &Socket) -> String {
    let kind = if s.sock_type == libc::SOCK_DGRAM {
        "SOCK_DGRAM"
    } else {
        "SOCK_RAW"
    };
    let (proto, _) = ll_addr(&s.addr);
    let mut d = format!(
        "a packet socket ({kind}, protocol {:#06x})",
        u16::from_be(proto)
    );
    if !s.ifname.is_empty() {
        d += &format!(" bound to {}", s.ifname);
    }
    d
}

/// Describes packet socket `fd` (inode `ino`) of `pid`, held by us as
/// `ours`.
pub fn dump(pid: i32, fd: i32, ino: u64, ours: &OwnedFd) -> Result<Socket> {
    let stage = "reading packet sockets";
    let opt = |l, n| process::getsockopt_int(ours, l, n).dumping(pid, stage);
    let sock_type = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    if sock_type != libc::SOCK_RAW && sock_type != libc::SOCK_DGRAM {
        return Err(unsupported(
            pid,
            fd,
            format!("a packet socket of type {sock_type} (SOCK_PACKET)"),
        ));
    }
    let addr = process::getsockname(ours).dumping(pid, stage)?;
    // SO_PROTOCOL answers 0: the protocol (network order, as socket(2)
    // takes it) is the bound address's.
    let (proto, index) = ll_addr(&addr);
    let protocol = proto as i32;
    let mut s = Socket {
        family: libc::AF_PACKET,
        sock_type,
        protocol,
        addr,
        ino,
        ..Default::default()
    };
    if index != 0 {
        s.ifname = rawsock::if_name(ours, index).dumping(pid, stage)?;
    }
    let me = describe(&s);
    let refuse = |why: String| Err(unsupported(pid, fd, format!("{me} {why}")));
    if opt(SOL_PACKET, PACKET_FANOUT)? != 0 {
        return refuse("in a fanout group (PACKET_FANOUT), which is not kept".into());
    }
    let Some(diag) = rawsock::packet_diag(ours, ino).dumping(pid, stage)? else {
        return refuse("not listed by packet_diag".into());
    };
    if diag.rx_ring || diag.tx_ring {
        return refuse(
            "with a mapped ring (PACKET_RX_RING / PACKET_TX_RING), which is not kept".into(),
        );
    }
    if diag.fanout {
        return refuse("in a fanout group (PACKET_FANOUT), which is not kept".into());
    }
    for m in &diag.memberships {
        let ifname = rawsock::if_name(ours, m.ifindex).dumping(pid, stage)?;
        s.packet_memberships.push(PacketMembership {
            ifname,
            kind: m.kind as u32,
            addr: m.addr.clone(),
            count: m.count,
        });
    }
    for &(level, name) in OPTIONS {
        if let Ok(value) = process::getsockopt_int(ours, level, name) {
            s.options.push(SockOpt { level, name, value });
        }
    }
    s.filter = super::read_filter(pid, fd, ours, &me)?;
    if rawsock::pending(ours).dumping(pid, stage)? {
        return refuse(
            "with packets waiting to be read, which cannot be put back; retry once they are read"
                .into(),
        );
    }
    tracing::debug!(pid, fd, sock = %me, "packet socket read");
    Ok(s)
}

/// A classic BPF program that accepts nothing ("ret #0").
const DROP_ALL: [u8; 8] = [0x06, 0, 0, 0, 0, 0, 0, 0];

/// Makes packet socket `s` again in the process behind `r`; returns its
/// fd there. `status_flags` carries O_NONBLOCK.
pub fn restore(r: &Remote, fd: i32, s: &Socket, status_flags: u64) -> Result<u64> {
    let pid = r.pid;
    let stage = "restoring a packet socket";
    let (sfd, sock) = new_socket(r, s, status_flags, stage)?;
    let me = describe(s);
    let failed = |what: &str, e| restore_failed(pid, fd, stage, &me, what, e);
    // Nothing is let in until the socket is as it was.
    rawsock::attach_filter(&sock, &DROP_ALL).map_err(|e| failed("a drop-all filter", e))?;
    apply_options(&sock, s).map_err(|(w, e)| failed(&w, e))?;
    let index_of = |name: &str| {
        rawsock::if_index(&sock, name).map_err(|e| {
            failed(
                &format!("interface {name}, which this network namespace does not have"),
                e,
            )
        })
    };
    let (proto, index) = ll_addr(&s.addr);
    if index != 0 || proto as i32 != s.protocol {
        let index = if index == 0 { 0 } else { index_of(&s.ifname)? };
        t::bind(&sock, &sockaddr_ll(proto, index)).map_err(|e| failed("bind", e))?;
    }
    for m in &s.packet_memberships {
        let index = index_of(&m.ifname)?;
        // struct packet_mreq: ifindex, type, alen, address[8].
        let mut mreq = vec![0u8; 16];
        mreq[0..4].copy_from_slice(&index.to_ne_bytes());
        mreq[4..6].copy_from_slice(&(m.kind as u16).to_ne_bytes());
        let alen = m.addr.len().min(8);
        mreq[6..8].copy_from_slice(&(alen as u16).to_ne_bytes());
        mreq[8..8 + alen].copy_from_slice(&m.addr[..alen]);
        for _ in 0..m.count.max(1) {
            rawsock::set_bytes(&sock, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)
                .map_err(|e| failed(&format!("membership on {}", m.ifname), e))?;
        }
    }
    // What the drop-all filter let through before it was attached.
    rawsock::take_datagrams(&sock).map_err(|e| failed("emptying its queue", e))?;
    let filter: Result<(), (String, SysError)> = if s.filter.is_empty() {
        t::set_int(&sock, libc::SOL_SOCKET, SO_DETACH_FILTER, 0)
            .map_err(|e| ("SO_DETACH_FILTER".to_string(), e))
    } else {
        Ok(())
    };
    filter.map_err(|(w, e)| failed(&w, e))?;
    super::finish_filter(&sock, s).map_err(|(w, e)| failed(&w, e))?;
    tracing::debug!(pid, fd, sock = %me, "packet socket restored");
    Ok(sfd)
}

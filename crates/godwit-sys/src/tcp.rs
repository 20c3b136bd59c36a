//! TCP connections taken apart and put together again (TCP_REPAIR), and a
//! network lock that keeps a connection's packets away while it has no
//! socket.
//!
//! * Repair mode on a socket we hold ([`set_repair`]): its queues read
//!   without consuming them ([`peek_queue`]) and their sequence numbers
//!   ([`queue_seq`]); on a fresh socket, the same set again
//!   ([`set_queue_seq`], [`repair_send`]), options negotiated at the
//!   handshake ([`set_repair_options`]) and the windows
//!   ([`repair_window`], [`set_repair_window`]). `bind`/`connect` in repair
//!   mode send nothing.
//! * [`lock`] / [`unlock`]: nf_tables rules (table `godwit`, families ip
//!   and ip6, one input and one output chain per connection) dropping every
//!   packet of one connection, built over NETLINK_NETFILTER.

use crate::{check, Result, SysError};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub const TCP_REPAIR: i32 = 19;
pub const TCP_REPAIR_QUEUE: i32 = 20;
pub const TCP_QUEUE_SEQ: i32 = 21;
pub const TCP_REPAIR_OPTIONS: i32 = 22;
pub const TCP_TIMESTAMP: i32 = 24;
pub const TCP_REPAIR_WINDOW: i32 = 29;

/// Which queue TCP_QUEUE_SEQ, recv(MSG_PEEK) and send address in repair mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    Recv = 1,
    Send = 2,
}

/// Values of TCP_REPAIR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    On = 1,
    /// Off, with a window probe to the peer.
    Off = 0,
    /// Off without a window probe (the socket's state was not changed).
    OffNoWindowProbe = -1,
}

/// Option codes of TCP_REPAIR_OPTIONS.
pub const TCPOPT_MSS: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;

/// `tcpi_options` bits.
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;

/// TCP states (`tcpi_state`).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_CLOSING: u8 = 11;

/// The name of TCP state `s`.
pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "an unknown state",
    }
}

fn set_raw(fd: BorrowedFd<'_>, level: i32, name: i32, what: &'static str, v: &[u8]) -> Result<()> {
    // SAFETY: `v` is a valid buffer of the length given; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v.as_ptr() as *const libc::c_void,
            v.len() as libc::socklen_t,
        )
    };
    check(r as i64, what, "TCP socket").map(|_| ())
}

fn get_raw(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    what: &'static str,
    v: &mut [u8],
) -> Result<usize> {
    let mut len = v.len() as libc::socklen_t;
    // SAFETY: `v` is a valid out-buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    check(r as i64, what, "TCP socket")?;
    Ok(len as usize)
}

/// setsockopt of one int.
pub fn set_int(fd: impl AsFd, level: i32, name: i32, value: i32) -> Result<()> {
    set_raw(fd.as_fd(), level, name, "setsockopt", &value.to_ne_bytes())
}

/// getsockopt of one int.
pub fn get_int(fd: impl AsFd, level: i32, name: i32) -> Result<i32> {
    let mut b = [0u8; 4];
    get_raw(fd.as_fd(), level, name, "getsockopt", &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

/// Puts the socket in or out of repair mode.
pub fn set_repair(fd: impl AsFd, mode: Repair) -> Result<()> {
    set_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_REPAIR,
        "setsockopt(TCP_REPAIR)",
        &(mode as i32).to_ne_bytes(),
    )
}

/// Selects the queue the next repair calls address.
pub fn set_queue(fd: impl AsFd, q: Queue) -> Result<()> {
    set_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_REPAIR_QUEUE,
        "setsockopt(TCP_REPAIR_QUEUE)",
        &(q as i32).to_ne_bytes(),
    )
}

/// The sequence number after the selected queue's last byte (send:
/// write_seq, receive: rcv_nxt).
pub fn queue_seq(fd: impl AsFd) -> Result<u32> {
    let mut b = [0u8; 4];
    get_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_QUEUE_SEQ,
        "getsockopt(TCP_QUEUE_SEQ)",
        &mut b,
    )?;
    Ok(u32::from_ne_bytes(b))
}

/// Sets the selected queue's sequence number (a closed socket in repair
/// mode: where its first byte will be).
pub fn set_queue_seq(fd: impl AsFd, seq: u32) -> Result<()> {
    set_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_QUEUE_SEQ,
        "setsockopt(TCP_QUEUE_SEQ)",
        &seq.to_ne_bytes(),
    )
}

/// What TCP_INFO says that a repair needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub state: u8,
    /// TCPI_OPT_* bits.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
}

/// Parses the head of a struct tcp_info.
pub fn parse_info(b: &[u8]) -> Option<Info> {
    if b.len() < 7 {
        return None;
    }
    Some(Info {
        state: b[0],
        options: b[5],
        // Bit-fields, first declared in the low bits: snd_wscale:4, rcv_wscale:4.
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
    })
}

pub fn info(fd: impl AsFd) -> Result<Info> {
    let mut b = [0u8; 256];
    let n = get_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        "getsockopt(TCP_INFO)",
        &mut b,
    )?;
    parse_info(&b[..n]).ok_or_else(|| SysError::Proc {
        path: "TCP_INFO".into(),
        detail: format!("{n} bytes, too short"),
    })
}

/// Sets options negotiated at the handshake: (TCPOPT_* code, value) pairs.
/// The socket must be connected in repair mode.
pub fn set_repair_options(fd: impl AsFd, opts: &[(u32, u32)]) -> Result<()> {
    let mut b = Vec::with_capacity(opts.len() * 8);
    for (code, val) in opts {
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&val.to_ne_bytes());
    }
    set_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_REPAIR_OPTIONS,
        "setsockopt(TCP_REPAIR_OPTIONS)",
        &b,
    )
}

/// struct tcp_repair_window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

pub fn repair_window(fd: impl AsFd) -> Result<Window> {
    let mut b = [0u8; 20];
    get_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_REPAIR_WINDOW,
        "getsockopt(TCP_REPAIR_WINDOW)",
        &mut b,
    )?;
    let w = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    Ok(Window {
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
    })
}

pub fn set_repair_window(fd: impl AsFd, w: &Window) -> Result<()> {
    let mut b = Vec::with_capacity(20);
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    set_raw(
        fd.as_fd(),
        libc::IPPROTO_TCP,
        TCP_REPAIR_WINDOW,
        "setsockopt(TCP_REPAIR_WINDOW)",
        &b,
    )
}

fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, what: &'static str) -> Result<u32> {
    let mut n: libc::c_int = 0;
    // SAFETY: these ioctls write one int to the valid out-pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut n) };
    check(r as i64, what, "TCP socket")?;
    Ok(n as u32)
}

/// Queue lengths: (unread received bytes, unacknowledged + unsent bytes,
/// unsent bytes).
pub fn queue_lengths(fd: impl AsFd) -> Result<(u32, u32, u32)> {
    let fd = fd.as_fd();
    const SIOCOUTQNSD: libc::c_ulong = 0x894B;
    Ok((
        ioctl_int(fd, libc::FIONREAD, "ioctl(SIOCINQ)")?,
        ioctl_int(fd, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")?,
        ioctl_int(fd, SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)")?,
    ))
}

/// Reads the first `len` bytes of the selected queue without consuming
/// them (the socket is in repair mode, its queue chosen by [`set_queue`]).
pub fn peek_queue(fd: impl AsFd, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    // SAFETY: `buf` is a valid out-buffer of `len` bytes.
    let r = unsafe {
        libc::recv(
            fd.as_fd().as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let n = check(r as i64, "recv(MSG_PEEK)", "TCP socket in repair mode")? as usize;
    if n != len {
        return Err(SysError::Proc {
            path: "TCP queue".into(),
            detail: format!("{n} of {len} queued bytes could be read"),
        });
    }
    Ok(buf)
}

/// Writes `data` whole (repair mode: into the selected queue without
/// sending; otherwise an ordinary send), in pieces of at most 64 KiB.
pub fn send_all(fd: impl AsFd, data: &[u8]) -> Result<()> {
    let fd = fd.as_fd();
    let mut off = 0;
    while off < data.len() {
        let piece = &data[off..data.len().min(off + 65536)];
        // SAFETY: `piece` is a valid buffer of the length given.
        let r = unsafe {
            libc::send(
                fd.as_raw_fd(),
                piece.as_ptr() as *const libc::c_void,
                piece.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        let n = check(
            r as i64,
            "send",
            format!("TCP socket ({} of {} bytes written)", off, data.len()),
        )?;
        if n == 0 {
            return Err(SysError::call_errno("send", "TCP socket", libc::EIO));
        }
        off += n as usize;
    }
    Ok(())
}

/// Binds a socket we hold to `addr` (raw sockaddr bytes).
pub fn bind(fd: impl AsFd, addr: &[u8]) -> Result<()> {
    // SAFETY: `addr` is a valid buffer of the length given.
    let r = unsafe {
        libc::bind(
            fd.as_fd().as_raw_fd(),
            addr.as_ptr() as *const libc::sockaddr,
            addr.len() as libc::socklen_t,
        )
    };
    check(r as i64, "bind", show(addr)).map(|_| ())
}

/// Connects a socket we hold to `addr` (raw sockaddr bytes); in repair
/// mode this sends nothing and makes the socket ESTABLISHED at once.
pub fn connect(fd: impl AsFd, addr: &[u8]) -> Result<()> {
    // SAFETY: `addr` is a valid buffer of the length given.
    let r = unsafe {
        libc::connect(
            fd.as_fd().as_raw_fd(),
            addr.as_ptr() as *const libc::sockaddr,
            addr.len() as libc::socklen_t,
        )
    };
    check(r as i64, "connect", show(addr)).map(|_| ())
}

/// An IPv4 or IPv6 raw sockaddr as an address and port.
pub fn sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(a), port))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(a), port))
        }
        _ => None,
    }
}

/// An address and port as raw sockaddr bytes (sockaddr_in or sockaddr_in6).
pub fn raw_sockaddr(a: SocketAddr) -> Vec<u8> {
    let mut b = Vec::new();
    match a.ip() {
        IpAddr::V4(v4) => {
            b.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&v4.octets());
            b.extend_from_slice(&[0; 8]);
        }
        IpAddr::V6(v6) => {
            b.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&v6.octets());
            b.extend_from_slice(&[0; 4]);
        }
    }
    b
}

/// A raw sockaddr for display.
pub fn show(b: &[u8]) -> String {
    sockaddr(b).map_or_else(
        || format!("an address of {} bytes", b.len()),
        |a| a.to_string(),
    )
}

/// The FIN of peer `peer` to the connection's `local` end, as an IP
/// packet: sequence `seq`, acknowledging `ack`, advertising `window`
/// (already scaled down). No options.
pub fn fin_packet(
    peer: SocketAddr,
    local: SocketAddr,
    seq: u32,
    ack: u32,
    window: u16,
) -> Option<Vec<u8>> {
    let (peer, local) = (unmapped(peer), unmapped(local));
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&peer.port().to_be_bytes());
    h.extend_from_slice(&local.port().to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&ack.to_be_bytes());
    h.push(5 << 4); // data offset: 5 words
    h.push(0x11); // FIN | ACK
    h.extend_from_slice(&window.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    crate::udp::ip_packet(peer.ip(), local.ip(), libc::IPPROTO_TCP as u8, h, 16, false)
}

/// Delivers the peer's FIN (see [`fin_packet`]) to the connection of
/// socket `sock` again, through a raw socket in its network namespace: how
/// a restored connection learns that its peer had closed its side.
pub fn inject_fin(
    sock: impl AsFd,
    peer: SocketAddr,
    local: SocketAddr,
    seq: u32,
    ack: u32,
    window: u16,
) -> Result<()> {
    let what = format!("delivering the FIN of {peer} to {local}");
    let pkt = fin_packet(peer, local, seq, ack, window)
        .ok_or_else(|| SysError::call_errno("sendto(raw)", &what, libc::EINVAL))?;
    crate::udp::send_raw(sock.as_fd(), unmapped(local).ip(), &pkt, &what)
}

/// shutdown(SHUT_WR) on a socket we hold.
pub fn shutdown_write(sock: impl AsFd) -> Result<()> {
    // SAFETY: plain integer syscall on a descriptor we hold.
    let r = unsafe { libc::shutdown(sock.as_fd().as_raw_fd(), libc::SHUT_WR) };
    check(r as i64, "shutdown(SHUT_WR)", "TCP socket").map(|_| ())
}

// ---- The network lock (nf_tables over netlink) ----

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
/// Before connection tracking (-200) and every filter.
const LOCK_PRIORITY: i32 = -300;

/// The nf_tables table holding Godwit's network locks.
pub const LOCK_TABLE: &str = "godwit";

/// Netlink attributes being written.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        while self.0.len() & 3 != 0 {
            self.0.push(0);
        }
        self
    }
    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(kind, &b)
    }
    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.put(kind, &v.to_be_bytes())
    }
    fn nest(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }
}

/// One expression of a rule: (name, its attributes).
fn expr(name: &str, data: &Attrs) -> Attrs {
    let mut e = Attrs::default();
    e.str(1, name).nest(2, data);
    e
}

/// Loads `len` bytes at `offset` of header `base` (1 network, 2
/// transport) and compares them with `value`.
fn match_bytes(exprs: &mut Attrs, base: u32, offset: u32, value: &[u8]) {
    let mut p = Attrs::default();
    // NFTA_PAYLOAD_DREG = NFT_REG_1, BASE, OFFSET, LEN
    p.be32(1, 1)
        .be32(2, base)
        .be32(3, offset)
        .be32(4, value.len() as u32);
    exprs.nest(1, &expr("payload", &p));
    let mut data = Attrs::default();
    data.put(1, value); // NFTA_DATA_VALUE
    let mut c = Attrs::default();
    c.be32(1, 1).be32(2, 0).nest(3, &data); // SREG = NFT_REG_1, OP = EQ, DATA
    exprs.nest(1, &expr("cmp", &c));
}

/// The expressions of a rule dropping TCP packets from `src` to `dst`.
fn drop_rule(src: SocketAddr, dst: SocketAddr) -> Attrs {
    let mut exprs = Attrs::default();
    // meta l4proto == tcp
    let mut m = Attrs::default();
    m.be32(2, 16).be32(1, 1); // KEY = NFT_META_L4PROTO, DREG = NFT_REG_1
    exprs.nest(1, &expr("meta", &m));
    let mut data = Attrs::default();
    data.put(1, &[libc::IPPROTO_TCP as u8]);
    let mut c = Attrs::default();
    c.be32(1, 1).be32(2, 0).nest(3, &data);
    exprs.nest(1, &expr("cmp", &c));
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            match_bytes(&mut exprs, 1, 12, &s.octets());
            match_bytes(&mut exprs, 1, 16, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            match_bytes(&mut exprs, 1, 8, &v6(s));
            match_bytes(&mut exprs, 1, 24, &v6(d));
        }
    }
    let mut ports = src.port().to_be_bytes().to_vec();
    ports.extend_from_slice(&dst.port().to_be_bytes());
    match_bytes(&mut exprs, 2, 0, &ports);
    // immediate verdict drop
    let mut code = Attrs::default();
    code.be32(1, 0); // NFTA_VERDICT_CODE = NF_DROP
    let mut verdict = Attrs::default();
    verdict.nest(2, &code); // NFTA_DATA_VERDICT
    let mut i = Attrs::default();
    i.be32(1, 0).nest(2, &verdict); // DREG = NFT_REG_VERDICT, DATA
    exprs.nest(1, &expr("immediate", &i));
    exprs
}

/// A batch of nf_tables messages.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    family: u8,
    /// Messages that ask for an acknowledgement.
    acked: u32,
}

impl Batch {
    fn new(family: u8) -> Batch {
        let mut b = Batch {
            buf: Vec::new(),
            seq: 1,
            family,
            acked: 0,
        };
        b.msg(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        b
    }
    fn msg(&mut self, kind: u16, flags: u16, family: u8, res_id: u16, attrs: &[u8]) {
        let len = 16 + 4 + attrs.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(attrs);
        self.seq += 1;
    }
    fn nft(&mut self, kind: u16, flags: u16, attrs: &Attrs) {
        let family = self.family;
        self.msg(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family,
            0,
            &attrs.0,
        );
        self.acked += 1;
    }
    fn finish(mut self) -> (Vec<u8>, u32) {
        self.msg(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        (self.buf, self.acked)
    }
}

/// A NETLINK_NETFILTER socket in the network namespace of socket
/// `ns_of` (a netlink socket talks to the namespace it was created in):
/// created by a short-lived thread that enters that namespace when it is
/// not ours.
fn netfilter_socket(ns_of: BorrowedFd<'_>, what: &str) -> Result<OwnedFd> {
    socket_in_netns_of(
        ns_of,
        libc::AF_NETLINK,
        libc::SOCK_RAW,
        NETLINK_NETFILTER,
        what,
    )
}

/// A new socket (close-on-exec) in the network namespace of socket
/// `ns_of` (a socket belongs to the namespace it was created in): created
/// by a short-lived thread that enters that namespace when it is not ours.
pub fn socket_in_netns_of(
    ns_of: BorrowedFd<'_>,
    domain: i32,
    kind: i32,
    protocol: i32,
    what: &str,
) -> Result<OwnedFd> {
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    let new = || -> Result<OwnedFd> {
        // SAFETY: plain socket(2) call.
        let r = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
        let fd = check(r as i64, "socket", what)?;
        // SAFETY: the kernel returned a new descriptor that we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    };
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd.
    let r = unsafe { libc::ioctl(ns_of.as_raw_fd(), SIOCGSKNS, 0) };
    let ns = check(r as i64, "ioctl(SIOCGSKNS)", what)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let ns = unsafe { OwnedFd::from_raw_fd(ns as i32) };
    let theirs = std::fs::metadata(format!("/proc/self/fd/{}", ns.as_raw_fd()));
    let ours = std::fs::metadata("/proc/thread-self/ns/net");
    if let (Ok(a), Ok(b)) = (&theirs, &ours) {
        use std::os::unix::fs::MetadataExt;
        if (a.dev(), a.ino()) == (b.dev(), b.ino()) {
            return new();
        }
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this short-lived thread only (a network
            // namespace may be entered by one thread of many).
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            check(r as i64, "setns(CLONE_NEWNET)", what)?;
            new()
        })
        .join()
        .unwrap_or_else(|_| Err(SysError::call_errno("setns", what, libc::EIO)))
    })
}

/// Sends a batch; Ok(()) once every message is acknowledged, or the first
/// error the kernel reports (the batch is then not applied).
fn run(ns_of: BorrowedFd<'_>, batch: Batch, what: &str) -> Result<()> {
    let (buf, mut acks) = batch.finish();
    let sock = netfilter_socket(ns_of, what)?;
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address of the sizes given.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            0,
            &kernel as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    check(r as i64, "sendto(nf_tables)", what)?;
    let mut rbuf = vec![0u8; 65536];
    while acks > 0 {
        let mut p = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, 5000) };
        check(r as i64, "poll(nf_tables)", what)?;
        if r == 0 {
            return Err(SysError::call_errno("nf_tables", what, libc::ETIMEDOUT));
        }
        // SAFETY: `rbuf` is a valid out-buffer of its length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                rbuf.as_mut_ptr() as *mut libc::c_void,
                rbuf.len(),
                0,
            )
        };
        let n = check(n as i64, "recv(nf_tables)", what)? as usize;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(rbuf[off..off + 4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes(rbuf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 || off + len > n {
                break;
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let err = i32::from_ne_bytes(rbuf[off + 16..off + 20].try_into().expect("4"));
                if err != 0 {
                    return Err(SysError::call_errno("nf_tables", what, -err));
                }
                acks -= 1;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

fn lock_family(local: SocketAddr, peer: SocketAddr) -> u8 {
    match (local.ip(), peer.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => NFPROTO_IPV4,
        _ => NFPROTO_IPV6,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries (such a
/// connection's packets are IPv4).
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The chain names of the lock of connection `local` ↔ `peer`.
pub fn lock_chains(local: SocketAddr, peer: SocketAddr) -> (String, String) {
    let tag = format!("{}-{}", unmapped(local), unmapped(peer));
    (format!("in {tag}"), format!("out {tag}"))
}

/// Drops every packet of the TCP connection `local` ↔ `peer` in the
/// network namespace of socket `sock`, both ways, until [`unlock`]: rules
/// in table [`LOCK_TABLE`] (family ip or ip6) that outlive this process.
pub fn lock(sock: impl AsFd, local: SocketAddr, peer: SocketAddr) -> Result<()> {
    let (local, peer) = (unmapped(local), unmapped(peer));
    let what = format!("locking {local} <-> {peer}");
    let mut b = Batch::new(lock_family(local, peer));
    let mut t = Attrs::default();
    t.str(1, LOCK_TABLE);
    b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, &t);
    let (cin, cout) = lock_chains(local, peer);
    for (chain, hook, src, dst) in [
        (&cin, NF_INET_LOCAL_IN, peer, local),
        (&cout, NF_INET_LOCAL_OUT, local, peer),
    ] {
        let mut h = Attrs::default();
        h.be32(1, hook).be32(2, LOCK_PRIORITY as u32);
        let mut c = Attrs::default();
        c.str(1, LOCK_TABLE)
            .str(3, chain)
            .nest(4, &h)
            .be32(5, 1) // policy NF_ACCEPT
            .str(7, "filter");
        b.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &c);
        let mut r = Attrs::default();
        r.str(1, LOCK_TABLE)
            .str(2, chain)
            .nest(4, &drop_rule(src, dst));
        b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &r);
    }
    run(sock.as_fd(), b, &what)
}

/// Removes the lock of `local` ↔ `peer` in the network namespace of
/// socket `sock`; Ok(false) when there was none.
pub fn unlock(sock: impl AsFd, local: SocketAddr, peer: SocketAddr) -> Result<bool> {
    let (local, peer) = (unmapped(local), unmapped(peer));
    let what = format!("unlocking {local} <-> {peer}");
    let family = lock_family(local, peer);
    let mut b = Batch::new(family);
    let (cin, cout) = lock_chains(local, peer);
    for chain in [&cin, &cout] {
        let mut c = Attrs::default();
        c.str(1, LOCK_TABLE).str(2, chain);
        b.nft(NFT_MSG_DELRULE, 0, &c); // every rule of the chain
        let mut c = Attrs::default();
        c.str(1, LOCK_TABLE).str(3, chain);
        b.nft(NFT_MSG_DELCHAIN, 0, &c);
    }
    match run(sock.as_fd(), b, &what) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    }
    // The table stays (empty): deleting it would take every other lock
    // in it along.
    Ok(true)
}

/// [`unlock`] in godwit's own network namespace.
pub fn unlock_here(local: SocketAddr, peer: SocketAddr) -> Result<bool> {
    // SAFETY: plain socket(2) call; the socket only names our namespace.
    let r = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = check(r as i64, "socket", "godwit")?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    let any = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    unlock(&any, local, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_info_head() {
        let b = [1u8, 0, 0, 0, 0, 7, 0x97];
        let i = parse_info(&b).unwrap();
        assert_eq!(i.state, 1);
        assert_eq!(i.options, 7);
        assert_eq!(i.snd_wscale, 7);
        assert_eq!(i.rcv_wscale, 9);
        assert!(parse_info(&b[..6]).is_none());
    }

    #[test]
    fn sockaddrs() {
        let mut v4 = vec![0u8; 16];
        v4[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8080u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(show(&v4), "127.0.0.1:8080");
        let mut v6 = vec![0u8; 28];
        v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(show(&v6), "[::1]:443");
        assert_eq!(raw_sockaddr(sockaddr(&v6).unwrap()), v6);
        assert_eq!(raw_sockaddr(sockaddr(&v4).unwrap()), v4);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(unmapped(mapped).to_string(), "10.0.0.1:5");
        assert_eq!(show(&[1, 0]), "an address of 2 bytes");
    }

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::default();
        a.str(1, "ab");
        assert_eq!(a.0, [7, 0, 1, 0, b'a', b'b', 0, 0]);
        let mut n = Attrs::default();
        n.nest(4, &a);
        assert_eq!(&n.0[..4], &[12, 0, 4, 0x80]);
    }
}

#[cfg(test)]
mod live {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    /// A locked connection passes nothing; unlocked, what was held back
    /// arrives (retransmitted).
    #[test]
    fn lock_holds_a_connection_back() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, peer) = l.accept().unwrap();
        let local = s.local_addr().unwrap();
        lock(&s, local, peer).unwrap();
        c.write_all(b"held").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 4];
        let early = s.read(&mut b);
        let removed = unlock(&s, local, peer).unwrap();
        assert!(early.is_err(), "data passed the lock: {early:?}");
        assert!(removed);
        assert!(!unlock(&s, local, peer).unwrap());
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");
    }

    /// Brings `lo` up in this thread's network namespace.
    fn lo_up() {
        let s = std::net::UdpSocket::bind("0.0.0.0:0");
        // A new namespace's lo is down: no address yet, any socket will do.
        let s = s.unwrap_or_else(|_| std::net::UdpSocket::bind("[::]:0").unwrap());
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the valid ifreq.
        unsafe {
            assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr), 0);
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as i16;
            assert_eq!(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr), 0);
        }
    }

    /// A connection in another network namespace is locked there.
    #[test]
    fn lock_works_in_the_sockets_namespace() {
        let (mut c, mut s, peer) = std::thread::spawn(|| {
            // SAFETY: unshare on this thread only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            lo_up();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, peer) = l.accept().unwrap();
            (c, s, peer)
        })
        .join()
        .unwrap();
        let local = s.local_addr().unwrap();
        lock(&s, local, peer).unwrap();
        c.write_all(b"held").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 4];
        let early = s.read(&mut b);
        let removed = unlock(&s, local, peer).unwrap();
        assert!(early.is_err(), "data passed the lock: {early:?}");
        assert!(removed);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"held");
    }
}

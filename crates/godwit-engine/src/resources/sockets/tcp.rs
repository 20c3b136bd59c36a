//! TCP sockets (IPv4 and IPv6).
//!
//! * Listening: created, configured, bound and put to listen again by
//!   injected calls.
//! * Established (`--tcp-established`): [`dump`] only notes the connection;
//!   [`repair_all`], once the whole tree is collected, locks each
//!   connection (godwit-sys `tcp::lock`: nf_tables rules dropping its
//!   packets both ways), puts the socket in repair mode through our
//!   pidfd_getfd copy and reads its sequence numbers, queues, negotiated
//!   options and windows. The returned [`Repairs`] takes the sockets out of
//!   repair mode and lifts the locks when dropped (a failed dump,
//!   --leave-running), or leaves both as they are ([`Repairs::keep`]) when
//!   the processes are ended: a socket closed in repair mode goes without a
//!   FIN or RST, and the lock keeps the host from answering the peer's
//!   packets with a reset until the restore.
//! * [`restore_established`] creates the socket in the process (injected
//!   socket()), takes a copy of it and rebuilds the connection in repair
//!   mode; [`Restored::finish`], just before the processes run, lifts the
//!   lock, leaves repair mode (a window probe tells the peer where we are)
//!   and sends what had not been sent yet.

use super::unsupported;
use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{FdKind, Process, SockOpt, Socket, TcpConnection};
use godwit_sys::tcp::{self as t, Queue, Repair};
use godwit_sys::{process, SysError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

/// Integer options carried over to the new socket (level, name).
const OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
];

/// Options only a connection has (level, name).
const CONNECTION_OPTIONS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_QUICKACK),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
];

/// The states a connection can be moved in.
const MOVABLE: &[u8] = &[
    t::TCP_ESTABLISHED,
    t::TCP_FIN_WAIT1,
    t::TCP_FIN_WAIT2,
    t::TCP_CLOSE_WAIT,
    t::TCP_LAST_ACK,
    t::TCP_CLOSING,
];

/// "127.0.0.1:5000 <-> 127.0.0.1:40312".
fn connection(s: &Socket) -> String {
    format!("{} <-> {}", t::show(&s.addr), t::show(&s.peer_addr))
}

/// Describes TCP socket `fd` of `pid`, held by us as `ours` (from
/// pidfd_getfd). A connection is only noted here (kind TcpEstablished,
/// no `tcp` yet): [`repair_all`] reads it.
pub fn dump(pid: i32, fd: i32, ours: &OwnedFd) -> Result<(FdKind, Socket)> {
    let stage = "reading sockets";
    let opt = |l, n| process::getsockopt_int(ours, l, n).dumping(pid, stage);
    let family = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let sock_type = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let protocol = opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    let listening = opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0;
    let fam = match family {
        libc::AF_INET => "TCP/IPv4",
        libc::AF_INET6 => "TCP/IPv6",
        f => {
            return Err(unsupported(
                pid,
                fd,
                format!("a socket of address family {f}"),
            ))
        }
    };
    if sock_type != libc::SOCK_STREAM {
        return Err(unsupported(
            pid,
            fd,
            format!("a {} datagram or raw socket", &fam[4..]),
        ));
    }
    if protocol != libc::IPPROTO_TCP {
        return Err(unsupported(
            pid,
            fd,
            format!(
                "a {} stream socket of protocol {protocol} (MPTCP or other)",
                &fam[4..]
            ),
        ));
    }
    let mut options = Vec::new();
    let save = |options: &mut Vec<SockOpt>, level, name| -> Result<()> {
        options.push(SockOpt {
            level,
            name,
            value: opt(level, name)?,
        });
        Ok(())
    };
    for &(level, name) in OPTIONS {
        save(&mut options, level, name)?;
    }
    if family == libc::AF_INET6 {
        save(&mut options, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    let addr = process::getsockname(ours).dumping(pid, stage)?;
    if !listening {
        let info = t::info(ours).dumping(pid, stage)?;
        if info.state == 7 {
            return Err(unsupported(
                pid,
                fd,
                format!("an unconnected {fam} socket (bound to {})", t::show(&addr)),
            ));
        }
        for &(level, name) in CONNECTION_OPTIONS {
            save(&mut options, level, name)?;
        }
        let peer_addr = match process::getpeername(ours) {
            Ok(a) => a,
            Err(e) if e.errno() == Some(libc::ENOTCONN) => Vec::new(),
            Err(e) => return Err(e).dumping(pid, stage),
        };
        let s = Socket {
            family,
            sock_type,
            protocol,
            addr,
            peer_addr,
            options,
            // The state seen now, for messages; repair_all reads the rest.
            tcp: Some(TcpConnection {
                state: info.state as u32,
                ..Default::default()
            }),
            ..Default::default()
        };
        if !MOVABLE.contains(&info.state) {
            return Err(unsupported(
                pid,
                fd,
                format!(
                    "a TCP connection {} in state {} (only ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING connections can be moved; retry once it is closed or established)",
                    connection(&s),
                    t::state_name(info.state)
                ),
            ));
        }
        tracing::debug!(pid, fd, conn = connection(&s), "TCP connection noted");
        return Ok((FdKind::TcpEstablished, s));
    }
    let (waiting, backlog) = process::tcp_listen_queue(ours).dumping(pid, stage)?;
    if waiting > 0 {
        // Such a connection exists only in the listener's accept queue:
        // the kernel has no call that puts one into a new listener's queue
        // (a connection rebuilt in repair mode is already accepted), so it
        // cannot come back for the program's accept(), with or without
        // --tcp-established.
        return Err(unsupported(
            pid,
            fd,
            format!(
                "a listening {fam} socket on {} with {waiting} connection(s) waiting to be accepted, which cannot be put back in a listener's accept queue (also not with --tcp-established); retry the dump once the program has accepted them",
                t::show(&addr)
            ),
        ));
    }
    Ok((
        FdKind::TcpListen,
        Socket {
            family,
            sock_type,
            protocol,
            addr,
            backlog,
            options,
            ..Default::default()
        },
    ))
}

/// One connection of a frozen process, locked and in repair mode.
struct Held {
    sock: OwnedFd,
    pid: i32,
    local: SocketAddr,
    peer: SocketAddr,
    locked: bool,
    repaired: bool,
    /// SO_REUSEADDR before repair mode, which clears it when left.
    reuseaddr: i32,
}

/// The connections a dump put in repair mode. Dropped: they leave repair
/// mode (without a window probe: nothing changed) and their locks are
/// lifted, so the processes go on as before.
#[derive(Default)]
pub struct Repairs {
    held: Vec<Held>,
}

impl Repairs {
    /// Leaves every connection locked and in repair mode, for processes
    /// that are being ended: their sockets close without a word to the
    /// peer, whose packets the lock drops until the restore.
    pub fn keep(mut self) {
        for h in self.held.drain(..) {
            tracing::debug!(pid = h.pid, local = %h.local, peer = %h.peer, "TCP connection left locked for the restore");
        }
    }

    /// Takes every connection out of repair mode and lifts its lock; the
    /// first failure is returned after all were tried.
    pub fn release(mut self) -> Result<()> {
        self.release_all()
    }

    fn release_all(&mut self) -> Result<()> {
        let mut first = None;
        for h in self.held.drain(..) {
            if h.repaired {
                let off = t::set_repair(&h.sock, Repair::OffNoWindowProbe).and_then(|()| {
                    t::set_int(&h.sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, h.reuseaddr)
                });
                if let Err(e) = off {
                    tracing::warn!(pid = h.pid, local = %h.local, peer = %h.peer, "leaving TCP repair mode: {e}");
                    first.get_or_insert(EngineError::Sys {
                        pid: h.pid,
                        stage: "taking a TCP connection out of repair mode",
                        source: e,
                    });
                }
            }
            if h.locked {
                if let Err(e) = t::unlock(&h.sock, h.local, h.peer) {
                    tracing::warn!(pid = h.pid, local = %h.local, peer = %h.peer, "lifting the network lock: {e}");
                    first.get_or_insert(EngineError::Sys {
                        pid: h.pid,
                        stage: "lifting the network lock of a TCP connection",
                        source: e,
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Repairs {
    fn drop(&mut self) {
        let _ = self.release_all();
    }
}

fn addr_of(pid: i32, fd: i32, raw: &[u8]) -> Result<SocketAddr> {
    t::sockaddr(raw)
        .ok_or_else(|| unsupported(pid, fd, format!("a TCP connection with {}", t::show(raw))))
}

/// Reads every TCP connection of the frozen tree (kind TcpEstablished) in
/// repair mode, behind a network lock, into its `Socket::tcp` (every fd of
/// one socket gets the same). Without `allowed` (--tcp-established) the
/// first connection stops the dump, named.
pub fn repair_all(procs: &mut [Process], allowed: bool) -> Result<Repairs> {
    let mut repairs = Repairs::default();
    let mut done: HashMap<u64, TcpConnection> = HashMap::new();
    for p in procs.iter_mut().filter(|p| !p.zombie) {
        let pid = p.pid;
        let mut pidfd = None;
        for f in p
            .fds
            .iter_mut()
            .filter(|f| f.kind == FdKind::TcpEstablished as i32)
        {
            let Some(s) = f.socket.as_mut() else { continue };
            if let Some(c) = done.get(&s.ino) {
                s.tcp = Some(c.clone());
                continue;
            }
            if !allowed {
                return Err(EngineError::NeedsTcpEstablished {
                    pid,
                    what: format!(
                        "fd {} is a TCP socket with {} connection {}",
                        f.fd,
                        match s.tcp.as_ref().map_or(1, |c| c.state as u8) {
                            t::TCP_ESTABLISHED => "an established".to_string(),
                            st => format!("a half-closed ({})", t::state_name(st)),
                        },
                        connection(s)
                    ),
                });
            }
            let pfd = match &pidfd {
                Some(x) => x,
                None => {
                    pidfd.insert(process::pidfd_open(pid).dumping(pid, "reading TCP connections")?)
                }
            };
            let sock = process::pidfd_getfd(pfd, f.fd).dumping(pid, "reading TCP connections")?;
            let local = addr_of(pid, f.fd, &s.addr)?;
            let peer = addr_of(pid, f.fd, &s.peer_addr)?;
            repairs.held.push(Held {
                sock,
                pid,
                local,
                peer,
                locked: false,
                repaired: false,
                reuseaddr: 0,
            });
            let h = repairs.held.last_mut().expect("just pushed");
            t::lock(&h.sock, local, peer).map_err(|e| EngineError::Sys {
                pid,
                stage: "locking a TCP connection (nf_tables rules in table `godwit`; the kernel needs nf_tables and godwit CAP_NET_ADMIN)",
                source: e,
            })?;
            h.locked = true;
            h.reuseaddr = t::get_int(&h.sock, libc::SOL_SOCKET, libc::SO_REUSEADDR)
                .dumping(pid, "reading TCP connections")?;
            t::set_repair(&h.sock, Repair::On)
                .dumping(pid, "putting a TCP connection in repair mode")?;
            h.repaired = true;
            // Checked locked and in repair mode: the state cannot change since.
            let info = t::info(&h.sock).dumping(pid, "reading TCP connections")?;
            if !MOVABLE.contains(&info.state) {
                return Err(unsupported(
                    pid,
                    f.fd,
                    format!(
                        "a TCP connection {} in state {} (only ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK and CLOSING connections can be moved; retry once it is closed or established)",
                        connection(s),
                        t::state_name(info.state)
                    ),
                ));
            }
            let c = read_connection(pid, &h.sock)?;
            tracing::debug!(
                pid,
                fd = f.fd,
                conn = connection(s),
                send = c.send_queue.len(),
                unsent = c.unsent,
                recv = c.recv_queue.len(),
                "TCP connection read in repair mode"
            );
            done.insert(s.ino, c.clone());
            s.tcp = Some(c);
        }
    }
    Ok(repairs)
}

/// Reads a connection in repair mode (with no packet coming or going).
fn read_connection(pid: i32, sock: &OwnedFd) -> Result<TcpConnection> {
    let stage = "reading a TCP connection in repair mode";
    let info = t::info(sock).dumping(pid, stage)?;
    let (inq, outq, unsent) = t::queue_lengths(sock).dumping(pid, stage)?;
    t::set_queue(sock, Queue::Send).dumping(pid, stage)?;
    let write_seq = t::queue_seq(sock).dumping(pid, stage)?;
    let fin_unacked = matches!(
        info.state,
        t::TCP_FIN_WAIT1 | t::TCP_CLOSING | t::TCP_LAST_ACK
    ) && outq > 0;
    let send_queue =
        t::peek_queue(sock, (outq - fin_unacked as u32) as usize).dumping(pid, stage)?;
    t::set_queue(sock, Queue::Recv).dumping(pid, stage)?;
    let rcv_nxt = t::queue_seq(sock).dumping(pid, stage)?;
    let recv_queue = t::peek_queue(sock, inq as usize).dumping(pid, stage)?;
    // In repair mode TCP_MAXSEG reports the MSS clamp from the handshake.
    let mss = t::get_int(sock, libc::IPPROTO_TCP, libc::TCP_MAXSEG).dumping(pid, stage)? as u32;
    let timestamps_ok = info.options & t::TCPI_OPT_TIMESTAMPS != 0;
    let timestamp = if timestamps_ok {
        t::get_int(sock, libc::IPPROTO_TCP, t::TCP_TIMESTAMP).dumping(pid, stage)? as u32
    } else {
        0
    };
    let w = t::repair_window(sock).dumping(pid, stage)?;
    // A FIN takes a sequence number of its own, and is in no queue we read:
    // ours (sent) sits at the end of the send queue until acknowledged.
    let fin_sent = matches!(
        info.state,
        t::TCP_FIN_WAIT1 | t::TCP_FIN_WAIT2 | t::TCP_CLOSING | t::TCP_LAST_ACK
    );
    let fin_received = matches!(
        info.state,
        t::TCP_CLOSE_WAIT | t::TCP_CLOSING | t::TCP_LAST_ACK
    );
    let data_len = send_queue.len() as u32;
    let unsent_data = match fin_sent && unsent > 0 {
        true => unsent - 1,
        false => unsent,
    };
    Ok(TcpConnection {
        state: info.state as u32,
        send_seq: write_seq
            .wrapping_sub(fin_sent as u32)
            .wrapping_sub(data_len),
        send_queue,
        unsent: unsent_data.min(data_len),
        recv_seq: rcv_nxt.wrapping_sub(fin_received as u32).wrapping_sub(inq),
        recv_queue,
        mss,
        wscale_ok: info.options & t::TCPI_OPT_WSCALE != 0,
        snd_wscale: info.snd_wscale as u32,
        rcv_wscale: info.rcv_wscale as u32,
        sack_ok: info.options & t::TCPI_OPT_SACK != 0,
        timestamps_ok,
        timestamp,
        snd_wl1: w.snd_wl1,
        snd_wnd: w.snd_wnd,
        max_window: w.max_window,
        rcv_wnd: w.rcv_wnd,
        rcv_wup: w.rcv_wup,
        fin_sent,
        fin_received,
    })
}

/// Lifts, in godwit's network namespace, the locks a dump left on the
/// connections of image `ck` (for an image that will not be restored);
/// returns each connection with whether a lock was found.
pub fn unlock_image(ck: &crate::schema::Checkpoint) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for p in &ck.processes {
        for f in p
            .fds
            .iter()
            .filter(|f| f.kind == FdKind::TcpEstablished as i32)
        {
            let Some(s) = &f.socket else { continue };
            let (Some(local), Some(peer)) = (t::sockaddr(&s.addr), t::sockaddr(&s.peer_addr))
            else {
                continue;
            };
            let found = t::unlock_here(local, peer).map_err(|e| EngineError::Sys {
                pid: p.pid,
                stage: "lifting the network lock of a TCP connection",
                source: e,
            })?;
            out.push((
                format!("process {} fd {} {}", p.pid, f.fd, connection(s)),
                found,
            ));
        }
    }
    Ok(out)
}

/// Refuses an image holding TCP connections unless `allowed`.
pub fn check(p: &Process, allowed: bool) -> Result<()> {
    if allowed {
        return Ok(());
    }
    let conns: Vec<String> = p
        .fds
        .iter()
        .filter(|f| f.kind == FdKind::TcpEstablished as i32)
        .map(|f| {
            let c = f.socket.as_ref().map(connection).unwrap_or_default();
            format!("process {} fd {} {c}", p.pid, f.fd)
        })
        .collect();
    if conns.is_empty() {
        Ok(())
    } else {
        Err(EngineError::ImageNeedsTcpEstablished(conns.join(", ")))
    }
}

/// Creates the socket again in the restored process; returns its fd there.
/// `status_flags` carries O_NONBLOCK. Uses scratch bytes [0, 256).
pub fn restore(r: &Remote, fd: i32, s: &Socket, status_flags: u64) -> Result<u64> {
    let pid = r.pid;
    let stage = "creating sockets";
    let sfd = new_socket(r, s, status_flags)?;
    for o in &s.options {
        // SO_RCVBUF/SO_SNDBUF report double what was set; the kernel doubles again.
        let value = if o.level == libc::SOL_SOCKET
            && (o.name == libc::SO_RCVBUF || o.name == libc::SO_SNDBUF)
        {
            o.value / 2
        } else {
            o.value
        };
        let a = r.put(0, &value.to_le_bytes()).restoring(pid, stage)?;
        r.call(
            "setsockopt",
            libc::SYS_setsockopt,
            [sfd, o.level as u64, o.name as u64, a, 4, 0],
        )
        .restoring(pid, "setting socket options")?;
    }
    let a = r.put(64, &s.addr).restoring(pid, stage)?;
    r.call("bind", libc::SYS_bind, [sfd, a, s.addr.len() as u64, 0, 0, 0])
        .map_err(|e| EngineError::Restore {
            pid,
            stage: if e.errno() == Some(libc::EADDRINUSE) {
                "binding a listening socket: its address is in use on this host (stop the process using it)"
            } else {
                "binding a listening socket"
            },
            source: e,
        })?;
    r.call(
        "listen",
        libc::SYS_listen,
        [sfd, s.backlog as u64, 0, 0, 0, 0],
    )
    .restoring(pid, "listening")?;
    tracing::debug!(pid, fd, "listening socket restored");
    Ok(sfd)
}

fn new_socket(r: &Remote, s: &Socket, status_flags: u64) -> Result<u64> {
    let nonblock = if status_flags & libc::O_NONBLOCK as u64 != 0 {
        libc::SOCK_NONBLOCK
    } else {
        0
    };
    r.call(
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
    .restoring(r.pid, "creating sockets")
}

/// A connection rebuilt in a restored process, still in repair mode and
/// behind its lock until [`finish`](Self::finish). Dropped unfinished (a
/// failed restore), the socket stays in repair mode and goes silently
/// with the process.
pub struct Restored {
    sock: OwnedFd,
    pid: i32,
    fd: i32,
    local: SocketAddr,
    peer: SocketAddr,
    /// Bytes never sent before the dump: sent now, after repair mode.
    unsent: Vec<u8>,
    /// What is left to do once out of repair mode: shut down our side
    /// (FIN), deliver the peer's FIN again (with these sequence number,
    /// acknowledgement and window), in the order of `state`.
    state: u8,
    fin_sent: bool,
    fin_received: bool,
    peer_fin: (u32, u32, u16),
    /// SO_REUSEADDR as saved: leaving repair mode clears it.
    reuseaddr: i32,
}

/// The connections of a restore, finished together before the processes run.
#[derive(Default)]
pub struct RestoredSet(Mutex<Vec<Restored>>);

impl RestoredSet {
    /// Lifts each lock, takes each socket out of repair mode (with a window
    /// probe, so the peer hears from us at once) and sends what had not
    /// been sent.
    pub fn finish(&self) -> Result<()> {
        let all = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for c in all {
            let stage = "starting a restored TCP connection";
            let unlocked = t::unlock(&c.sock, c.local, c.peer)
                .restoring(c.pid, "lifting the network lock of a TCP connection")?;
            t::set_repair(&c.sock, Repair::Off).restoring(c.pid, stage)?;
            t::set_int(&c.sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, c.reuseaddr)
                .restoring(c.pid, stage)?;
            send_unsent(&c).restoring(c.pid, "sending the unsent bytes of a TCP connection")?;
            close_sides(&c)?;
            tracing::debug!(pid = c.pid, fd = c.fd, local = %c.local, peer = %c.peer, unlocked, "TCP connection restored");
        }
        Ok(())
    }
}

/// Shuts our side down and delivers the peer's FIN again, as the
/// connection had them: CLOSING (our FIN went first), else the peer's
/// first. Waits until the peer's FIN is taken in.
fn close_sides(c: &Restored) -> Result<()> {
    let stage = "closing a side of a restored TCP connection";
    let shut = || t::shutdown_write(&c.sock).restoring(c.pid, stage);
    if c.fin_sent && c.state == t::TCP_CLOSING {
        shut()?;
    }
    if c.fin_received {
        let (seq, ack, window) = c.peer_fin;
        t::inject_fin(&c.sock, c.peer, c.local, seq, ack, window).restoring(c.pid, stage)?;
        let t0 = std::time::Instant::now();
        loop {
            let state = t::info(&c.sock).restoring(c.pid, stage)?.state;
            if state != t::TCP_ESTABLISHED && state != t::TCP_FIN_WAIT1 {
                break;
            }
            if t0.elapsed() > std::time::Duration::from_secs(2) {
                return Err(EngineError::Restore {
                    pid: c.pid,
                    stage: "delivering the peer's FIN to a restored TCP connection again (it stays in state ESTABLISHED; a firewall dropping it?)",
                    source: SysError::Call {
                        call: "inject FIN",
                        target: format!("fd {}", c.fd),
                        source: std::io::Error::from_raw_os_error(libc::ETIMEDOUT),
                    },
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    if c.fin_sent && c.state != t::TCP_CLOSING {
        shut()?;
    }
    let state = t::info(&c.sock).map(|i| i.state).unwrap_or(0);
    if state != c.state && !(c.state == t::TCP_FIN_WAIT2 && state == t::TCP_FIN_WAIT1) {
        tracing::debug!(
            pid = c.pid,
            fd = c.fd,
            was = t::state_name(c.state),
            now = t::state_name(state),
            "restored TCP connection state"
        );
    }
    Ok(())
}

/// Sends the bytes that had not been sent at the dump, with the send
/// buffer raised for the time of it (the sent part is in the queue again,
/// counted with more overhead than when the process wrote it).
fn send_unsent(c: &Restored) -> Result<(), SysError> {
    if c.unsent.is_empty() {
        return Ok(());
    }
    let orig = t::get_int(&c.sock, libc::SOL_SOCKET, libc::SO_SNDBUF)?;
    let need = (orig as usize + 2 * c.unsent.len() + (1 << 20)).min(i32::MAX as usize / 2) as i32;
    t::set_int(&c.sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, need)?;
    let sent = t::send_all(&c.sock, &c.unsent);
    // Reported doubled, set halved.
    let back = t::set_int(&c.sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, orig / 2);
    sent.and(back)
}

/// The window the peer last advertised, as it would put it in a segment.
fn peer_window(c: &TcpConnection) -> u16 {
    let shift = if c.wscale_ok { c.snd_wscale.min(14) } else { 0 };
    (c.snd_wnd >> shift).min(u16::MAX as u32) as u16
}

fn restore_err(pid: i32, fd: i32, s: &Socket, what: &str, e: SysError) -> EngineError {
    EngineError::Restore {
        pid,
        stage: "restoring a TCP connection",
        source: SysError::Call {
            call: "TCP repair",
            target: format!("fd {fd} {} ({what})", connection(s)),
            source: match e.errno() {
                Some(n) => std::io::Error::from_raw_os_error(n),
                None => std::io::Error::other(e.to_string()),
            },
        },
    }
}

/// Rebuilds a connection in the restored process (behind `r`) and returns
/// its fd there; `set` finishes it before the process runs.
pub fn restore_established(
    r: &Remote,
    fd: i32,
    s: &Socket,
    status_flags: u64,
    set: &RestoredSet,
) -> Result<u64> {
    let pid = r.pid;
    let c = s.tcp.as_ref().ok_or_else(|| {
        EngineError::BadImage(format!("fd {fd} is a TCP connection without its state"))
    })?;
    let local = t::sockaddr(&s.addr)
        .ok_or_else(|| EngineError::BadImage(format!("fd {fd}: bad local address")))?;
    let peer = t::sockaddr(&s.peer_addr)
        .ok_or_else(|| EngineError::BadImage(format!("fd {fd}: bad peer address")))?;
    if c.unsent as usize > c.send_queue.len() {
        return Err(EngineError::BadImage(format!(
            "fd {fd}: {} unsent bytes in a send queue of {}",
            c.unsent,
            c.send_queue.len()
        )));
    }
    let sfd = new_socket(r, s, status_flags)?;
    let pidfd = process::pidfd_open(pid).restoring(pid, "restoring a TCP connection")?;
    let sock =
        process::pidfd_getfd(&pidfd, sfd as i32).restoring(pid, "restoring a TCP connection")?;
    let err = |what: &str| {
        let what = what.to_string();
        move |e: SysError| restore_err(pid, fd, s, &what, e)
    };
    for o in &s.options {
        let (name, value) = match (o.level, o.name) {
            // Reported doubled; FORCE: beyond rmem_max/wmem_max as it was.
            (libc::SOL_SOCKET, libc::SO_RCVBUF) => (libc::SO_RCVBUFFORCE, o.value / 2),
            (libc::SOL_SOCKET, libc::SO_SNDBUF) => (libc::SO_SNDBUFFORCE, o.value / 2),
            _ => (o.name, o.value),
        };
        if let Err(e) = t::set_int(&sock, o.level, name, value) {
            // Options that cannot be set to their default are no loss.
            if value != 0 {
                return Err(restore_err(
                    pid,
                    fd,
                    s,
                    &format!("option {}/{}", o.level, o.name),
                    e,
                ));
            }
        }
    }
    // After the options: SO_REUSEADDR would undo the forced address reuse
    // that repair mode gives.
    t::set_repair(&sock, Repair::On).map_err(err("repair mode"))?;
    t::bind(&sock, &s.addr).map_err(err("bind"))?;
    t::set_queue(&sock, Queue::Send).map_err(err("send queue"))?;
    t::set_queue_seq(&sock, c.send_seq).map_err(err("send sequence"))?;
    t::set_queue(&sock, Queue::Recv).map_err(err("receive queue"))?;
    t::set_queue_seq(&sock, c.recv_seq).map_err(err("receive sequence"))?;
    t::connect(&sock, &s.peer_addr).map_err(err("connect in repair mode"))?;
    let mut opts = vec![(t::TCPOPT_MSS, c.mss)];
    if c.wscale_ok {
        opts.push((t::TCPOPT_WINDOW, c.snd_wscale | (c.rcv_wscale << 16)));
    }
    if c.sack_ok {
        opts.push((t::TCPOPT_SACK_PERM, 0));
    }
    if c.timestamps_ok {
        opts.push((t::TCPOPT_TIMESTAMP, 0));
    }
    t::set_repair_options(&sock, &opts).map_err(err("options"))?;
    if c.timestamps_ok {
        t::set_int(
            &sock,
            libc::IPPROTO_TCP,
            t::TCP_TIMESTAMP,
            c.timestamp as i32,
        )
        .map_err(err("timestamp"))?;
    }
    let sent = c.send_queue.len() - c.unsent as usize;
    t::set_queue(&sock, Queue::Send).map_err(err("send queue"))?;
    t::send_all(&sock, &c.send_queue[..sent]).map_err(err("refilling the send queue"))?;
    t::set_queue(&sock, Queue::Recv).map_err(err("receive queue"))?;
    t::send_all(&sock, &c.recv_queue).map_err(err("refilling the receive queue"))?;
    // The peer's FIN, delivered later, is not in rcv_nxt yet.
    let rcv_end = c.recv_seq.wrapping_add(c.recv_queue.len() as u32);
    let rcv_wup = match (c.rcv_wup.wrapping_sub(rcv_end) as i32) > 0 {
        true => rcv_end,
        false => c.rcv_wup,
    };
    t::set_repair_window(
        &sock,
        &t::Window {
            snd_wl1: c.snd_wl1,
            snd_wnd: c.snd_wnd,
            max_window: c.max_window,
            rcv_wnd: c.rcv_wnd,
            rcv_wup,
        },
    )
    .map_err(err("windows"))?;
    tracing::debug!(
        pid,
        fd,
        conn = connection(s),
        "TCP connection rebuilt in repair mode"
    );
    set.0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Restored {
            sock,
            pid,
            fd,
            local,
            peer,
            unsent: c.send_queue[sent..].to_vec(),
            state: c.state as u8,
            fin_sent: c.fin_sent,
            fin_received: c.fin_received,
            peer_fin: (rcv_end, c.send_seq, peer_window(c)),
            reuseaddr: s
                .options
                .iter()
                .find(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR)
                .map_or(0, |o| o.value),
        });
    Ok(sfd)
}

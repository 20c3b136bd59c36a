//! Established TCP connections across a dump and a restore
//! (--tcp-established). The server (tests/progs/tcpecho.c) is dumped; its
//! client is this test process, which is not: it sends a numbered stream
//! and checks every echoed byte, so a reset, an EOF, a lost or a repeated
//! byte anywhere shows. Servers listen on ports 23311-23329, below the
//! ephemeral range (32768-60999), so no client socket can hold them.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Byte `i` of the client's stream: lines "msg 00000042\n".
fn stream(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|i| format!("msg {:08}\n", i / 13).as_bytes()[(i % 13) as usize])
        .collect()
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
    stop: AtomicBool,
    pause_reading: AtomicBool,
    error: Mutex<Option<String>>,
}

/// The client: one thread writes the stream (a line a millisecond, or as
/// fast as it can with `flood`), one reads the echo and checks it.
struct Client {
    s: Arc<Shared>,
    local: SocketAddr,
    server: SocketAddr,
    /// Keeps the connection open until the client is dropped.
    _conn: TcpStream,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    fn start(server: SocketAddr, flood: bool) -> Client {
        let conn = TcpStream::connect(server).unwrap();
        let local = conn.local_addr().unwrap();
        let s = Arc::new(Shared::default());
        let mut w = conn.try_clone().unwrap();
        let mut r = conn.try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        r.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let sw = s.clone();
        let writer = std::thread::spawn(move || {
            let mut pos = 0u64;
            while !sw.stop.load(Ordering::SeqCst) {
                let chunk = stream(pos, if flood { 13 * 512 } else { 13 });
                match w.write(&chunk) {
                    Ok(n) => {
                        pos += n as u64;
                        sw.sent.store(pos, Ordering::SeqCst);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => {
                        sw.error
                            .lock()
                            .unwrap()
                            .get_or_insert(format!("write at {pos}: {e}"));
                        return;
                    }
                }
                if !flood {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let sr = s.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut pos = 0u64;
            loop {
                if sr.stop.load(Ordering::SeqCst) && pos == sr.sent.load(Ordering::SeqCst) {
                    return;
                }
                if sr.pause_reading.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let err = match r.read(&mut buf) {
                    Ok(0) => format!("EOF after {pos} bytes"),
                    Ok(n) => {
                        if buf[..n] != stream(pos, n)[..] {
                            let k = (0..n)
                                .find(|&k| buf[k] != stream(pos + k as u64, 1)[0])
                                .unwrap();
                            format!(
                                "byte {} of the echo is wrong: got {:?}, expected {:?}",
                                pos + k as u64,
                                String::from_utf8_lossy(&buf[k..n.min(k + 13)]),
                                String::from_utf8_lossy(&stream(pos + k as u64, 13))
                            )
                        } else {
                            pos += n as u64;
                            sr.received.store(pos, Ordering::SeqCst);
                            continue;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(e) => format!("read after {pos} bytes: {e}"),
                };
                sr.error.lock().unwrap().get_or_insert(err);
                return;
            }
        });
        Client {
            s,
            local,
            server,
            _conn: conn,
            threads: vec![writer, reader],
        }
    }

    fn sent(&self) -> u64 {
        self.s.sent.load(Ordering::SeqCst)
    }

    fn received(&self) -> u64 {
        self.s.received.load(Ordering::SeqCst)
    }

    fn check(&self, when: &str) {
        let e = self.s.error.lock().unwrap().clone();
        if let Some(e) = e {
            panic!("the client failed {when}: {e}");
        }
    }

    /// Waits until `n` bytes came back, failing at once on a client error.
    fn wait_received(&self, n: u64, when: &str) {
        wait_for(
            &format!("{n} echoed bytes {when}"),
            Duration::from_secs(30),
            || {
                self.check(when);
                self.received() >= n
            },
        );
    }

    /// Stops writing, waits for the whole stream to come back, checks it.
    fn finish(&mut self, when: &str) -> u64 {
        self.s.stop.store(true, Ordering::SeqCst);
        let writer = self.threads.remove(0);
        writer.join().unwrap();
        let sent = self.sent();
        self.wait_received(sent, when);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.check(when);
        assert_eq!(self.received(), sent, "every byte sent came back {when}");
        sent
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.s.stop.store(true, Ordering::SeqCst);
        self.s.sent.store(u64::MAX, Ordering::SeqCst);
        if let Ok(mut e) = self.s.error.lock() {
            e.get_or_insert("dropped".into());
        }
        // A test that failed between a dump and its restore leaves the
        // connection's network lock behind: lift it (no-op otherwise).
        let _ = godwit_sys::tcp::unlock(&self._conn, self.server, self.local);
    }
}

fn server_addr(port: u16, v6: bool) -> SocketAddr {
    if v6 {
        format!("[::1]:{port}").parse().unwrap()
    } else {
        format!("127.0.0.1:{port}").parse().unwrap()
    }
}

fn server(port: u16, v6: bool, conns: u32) -> Proc {
    server_family(port, if v6 { "6" } else { "4" }, conns)
}

fn server_family(port: u16, family: &str, conns: u32) -> Proc {
    let port = port.to_string();
    let conns = conns.to_string();
    Proc::test_prog_with("tcpecho", &[&port, family, &conns])
}

/// The server wrote no failure.
fn server_ok(p: &Proc) {
    if let Ok(r) = std::fs::read_to_string(p.path("result")) {
        panic!("the server failed: {r}; output: {}", p.output());
    }
}

/// (state, send queue, receive queue) of the server's end of the
/// connection from `client`, from /proc/net/tcp{,6}.
fn server_side(port: u16, client: SocketAddr) -> Option<(u8, u64, u64)> {
    let file = if client.is_ipv6() {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let text = std::fs::read_to_string(file).unwrap();
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let lport = u16::from_str_radix(f[1].rsplit(':').next()?, 16).ok()?;
        let rport = u16::from_str_radix(f[2].rsplit(':').next()?, 16).ok()?;
        if lport != port || rport != client.port() {
            return None;
        }
        let st = u8::from_str_radix(f[3], 16).ok()?;
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            st,
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Dump with --tcp-established (the server ends), wait, restore, and check
/// the client saw nothing but a pause.
fn move_connection(port: u16, v6: bool) {
    move_connection_of(server(port, v6, 1), port, v6);
}

fn move_connection_of(mut p: Proc, port: u16, v6: bool) {
    let mut c = Client::start(server_addr(port, v6), false);
    c.wait_received(20_000, "before the dump");
    p.dump(&["--tcp-established"]);
    let pid = p.pid;
    wait_for(
        "the dump to end the server",
        Duration::from_secs(10),
        || dead(pid),
    );
    p.end_original();
    // The client keeps writing into a connection that has no socket on
    // this host: the lock keeps the host from answering with a reset.
    std::thread::sleep(Duration::from_millis(500));
    c.check("while the server was gone");
    let at_restore = c.sent();
    // An image with a connection needs the flag at restore too.
    let img = p.images();
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert!(!out.status.success(), "restore without --tcp-established");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tcp-established"), "names the flag: {err}");
    assert!(gone(p.pid), "nothing was restored");
    p.restore_with(&["--tcp-established"]);
    assert_eq!(reuseaddr_of(p.pid, 4), 1, "SO_REUSEADDR after the restore");
    // The listening socket came back too.
    TcpStream::connect(server_addr(port, v6)).expect("the restored server listens");
    c.wait_received(at_restore + 20_000, "after the restore");
    let total = c.finish("after the restore");
    assert!(total > at_restore + 20_000);
    server_ok(&p);
}

#[test]
fn ipv4_connection_survives_dump_and_restore() {
    move_connection(23311, false);
}

#[test]
fn ipv6_connection_survives_dump_and_restore() {
    move_connection(23312, true);
}

/// A dual-stack IPv6 server socket with an IPv4 client: the connection's
/// addresses are IPv4-mapped, its packets (and its lock) IPv4.
#[test]
fn ipv4_mapped_connection_survives_dump_and_restore() {
    let port = 23317;
    move_connection_of(server_family(port, "46", 1), port, false);
}

/// The client stops reading while flooding: the server's echo fills its
/// send queue (unacknowledged and unsent bytes) and then, the server being
/// stuck in write(), its receive queue. Both move with the connection.
#[test]
fn queued_data_in_both_directions_moves_with_the_connection() {
    let port = 23313;
    let mut p = server(port, false, 1);
    let mut c = Client::start(server_addr(port, false), true);
    c.wait_received(200_000, "before the dump");
    c.s.pause_reading.store(true, Ordering::SeqCst);
    // Until both queues are full and stay so (the send buffer grows up to
    // its limit first, while the server still reads) for half a second.
    let mut stable = 0;
    wait_for(
        "the server's queues to fill",
        Duration::from_secs(30),
        || {
            c.check("while filling the queues");
            let seen = server_side(port, c.local).unwrap_or_default();
            stable = if seen.1 > 100_000 && seen.2 > 50_000 {
                stable + 1
            } else {
                0
            };
            std::thread::sleep(Duration::from_millis(40));
            stable >= 10
        },
    );
    p.dump(&["--tcp-established"]);
    p.end_original();
    // The image holds both queues (godwit inspect).
    let img = p.images();
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["--json", "inspect", img.to_str().unwrap()])).unwrap();
    let fd4 = v["processes"][0]["fds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["fd"] == 4)
        .cloned()
        .unwrap();
    let t = &fd4["socket"]["tcp"];
    assert_eq!(t["state"], "ESTABLISHED", "{fd4}");
    assert!(t["send_queue_bytes"].as_u64().unwrap() > 0, "{fd4}");
    assert!(t["recv_queue_bytes"].as_u64().unwrap() > 0, "{fd4}");
    std::thread::sleep(Duration::from_millis(300));
    c.check("while the server was gone");
    p.restore_with(&["--tcp-established"]);
    let back = server_side(port, c.local).expect("the connection is back");
    assert_eq!(back.0, 1, "ESTABLISHED after the restore");
    assert!(
        back.1 > 0 && back.2 > 0,
        "queues after the restore: {back:?} (at dump: {t})"
    );
    let at_restore = c.sent();
    c.s.pause_reading.store(false, Ordering::SeqCst);
    c.wait_received(at_restore + 100_000, "after the restore");
    c.finish("after the restore");
    server_ok(&p);
}

/// Without --tcp-established the dump is refused, naming the fd, the
/// connection and the flag; the server and its connection run on.
#[test]
fn connection_refused_without_the_flag() {
    let port = 23314;
    let p = server(port, false, 1);
    let mut c = Client::start(server_addr(port, false), false);
    c.wait_received(5_000, "before the dump");
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "exit code");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "--tcp-established".to_string(),
        "fd 4".to_string(),
        format!("127.0.0.1:{port}"),
        c.local.to_string(),
    ] {
        assert!(err.contains(&want), "the message names {want}: {err}");
    }
    assert!(!img.join("manifest.img").exists(), "no image");
    assert!(!dead(p.pid), "the server runs on");
    let n = c.received();
    c.wait_received(n + 20_000, "after the refused dump");
    c.finish("after the refused dump");
    server_ok(&p);
}

/// A listener with a connection not yet accepted is refused, also with
/// --tcp-established, naming its fd, address and the number waiting; the
/// server runs on, its connection and the one waiting untouched.
#[test]
fn listener_with_connections_not_yet_accepted_is_refused() {
    let port = 23329;
    // It accepts one connection: the second waits in the accept queue.
    let p = server(port, false, 1);
    let mut c = Client::start(server_addr(port, false), false);
    c.wait_received(5_000, "before the dump");
    let mut waiting = TcpStream::connect(server_addr(port, false)).unwrap();
    waiting.write_all(b"sent before the accept").unwrap();
    let local = waiting.local_addr().unwrap();
    wait_for("the connection to wait", Duration::from_secs(5), || {
        server_side(port, local).is_some_and(|(st, _, rx)| st == 1 && rx > 0)
    });
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--tcp-established",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "exit code");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "fd 3".to_string(),
        format!("127.0.0.1:{port}"),
        "1 connection(s) waiting to be accepted".to_string(),
    ] {
        assert!(err.contains(&want), "the message names {want}: {err}");
    }
    assert!(!img.join("manifest.img").exists(), "no image");
    assert!(!dead(p.pid), "the server runs on");
    let n = c.received();
    c.wait_received(n + 20_000, "after the refused dump");
    c.finish("after the refused dump");
    let still = server_side(port, local);
    assert!(
        still.is_some_and(|(st, _, rx)| st == 1 && rx == 22),
        "the waiting connection is as it was: {still:?}"
    );
    drop(waiting);
}

/// A dump that fails after it has put the connection in repair mode and
/// locked it (the server also holds a unix socket with a descriptor in
/// flight, which godwit finds only after the connections are read) leaves
/// the connection working at once, its options as they were.
#[test]
fn failed_dump_leaves_the_connection_working() {
    let port = 23315;
    let p = server_mode(port, "scm");
    let mut c = Client::start(server_addr(port, false), false);
    c.wait_received(5_000, "before the dump");
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
        "--tcp-established",
    ]);
    assert_eq!(out.status.code(), Some(5), "exit code");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SCM_RIGHTS"), "the reason: {err}");
    assert!(!dead(p.pid), "the server runs on");
    assert!(!img.join("manifest.img").exists(), "no image");
    // At once: a connection left locked or in repair mode would stall.
    let n = c.received();
    wait_for("the echo to go on", Duration::from_secs(2), || {
        c.check("after the failed dump");
        c.received() > n + 5_000
    });
    assert_eq!(
        reuseaddr_of(p.pid, 4),
        1,
        "SO_REUSEADDR after the failed dump"
    );
    c.finish("after the failed dump");
    server_ok(&p);
}

/// --leave-running: the connection is read in repair mode and given back;
/// the server and its client go on as if nothing happened.
#[test]
fn leave_running_leaves_the_connection_working() {
    let port = 23316;
    let mut p = server(port, false, 1);
    let mut c = Client::start(server_addr(port, false), false);
    c.wait_received(5_000, "before the dump");
    assert_eq!(reuseaddr_of(p.pid, 4), 1);
    p.dump(&["--tcp-established", "--leave-running"]);
    assert!(!dead(p.pid), "the server runs on");
    assert_eq!(reuseaddr_of(p.pid, 4), 1, "SO_REUSEADDR after the dump");
    let n = c.received();
    wait_for("the echo to go on", Duration::from_secs(2), || {
        c.check("after the dump");
        c.received() > n + 5_000
    });
    c.finish("after the dump");
    server_ok(&p);
}

/// SO_REUSEADDR of `fd` of `pid` (tcpecho sets it on its listener; the
/// accepted connection inherits it): repair mode must not lose it.
fn reuseaddr_of(pid: i32, fd: i32) -> i32 {
    let pidfd = godwit_sys::process::pidfd_open(pid).unwrap();
    let sock = godwit_sys::process::pidfd_getfd(&pidfd, fd).unwrap();
    godwit_sys::process::getsockopt_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap()
}

fn server_mode(port: u16, mode: &str) -> Proc {
    let port = port.to_string();
    Proc::test_prog_with("tcpecho", &[&port, "4", "1", mode])
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(14695981039346656037u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(1099511628211)
    })
}

/// Waits for the server's end of the connection from `client` to be in
/// `state`, and returns its (send, receive) queue lengths.
fn wait_state(port: u16, client: SocketAddr, state: u8, name: &str) -> (u64, u64) {
    let mut seen = None;
    wait_for(
        &format!("the server's side in {name}"),
        Duration::from_secs(10),
        || {
            seen = server_side(port, client);
            seen.is_some_and(|s| s.0 == state)
        },
    );
    let s = seen.unwrap();
    (s.1, s.2)
}

/// The client has sent its last byte and closed its side; the server has
/// not read them yet (CLOSE_WAIT with 30000 bytes unread). After the
/// restore it reads them all, echoes them, reads EOF and closes its side:
/// the client gets the whole echo, then EOF.
#[test]
fn close_wait_connection_with_unread_data_moves() {
    let port = 23318;
    let mut p = server_mode(port, "eof");
    std::fs::write(p.path("pause"), "").unwrap();
    let mut c = TcpStream::connect(server_addr(port, false)).unwrap();
    let client = c.local_addr().unwrap();
    let sent = stream(0, 30_000);
    c.write_all(&sent).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (_, rx) = wait_state(port, client, 8, "CLOSE_WAIT");
    // /proc/net/tcp counts the FIN in the receive queue.
    assert_eq!(rx, 30_001, "unread at dump");
    p.dump(&["--tcp-established"]);
    p.end_original();
    p.restore_with(&["--tcp-established"]);
    // At once: the restore itself delivers the peer's FIN again (the peer
    // would resend it only when it hears from us, later).
    let back = server_side(port, client).expect("the connection is back");
    assert_eq!(back.0, 8, "CLOSE_WAIT right after the restore: {back:?}");
    assert_eq!(back.2, 30_001, "unread after the restore");
    std::fs::remove_file(p.path("pause")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut echo = Vec::new();
    c.read_to_end(&mut echo)
        .expect("the echo, then EOF, no reset");
    assert!(
        echo == sent,
        "the echo ({} bytes) is what was sent",
        echo.len()
    );
    let eof = p.path("eof");
    wait_for("the server to see EOF", Duration::from_secs(10), || {
        eof.exists()
    });
    assert_eq!(
        std::fs::read_to_string(eof).unwrap().split(' ').next(),
        Some("30000")
    );
    server_ok(&p);
}

/// The server shut its side down at once (FIN_WAIT2) and only reads. The
/// client, which saw EOF, keeps sending across the dump and restore; the
/// server reads every byte, in order, then the client's EOF.
#[test]
fn fin_wait2_connection_moves_and_keeps_receiving() {
    let port = 23319;
    let mut p = server_mode(port, "shutfirst");
    let mut c = TcpStream::connect(server_addr(port, false)).unwrap();
    let client = c.local_addr().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(c.read(&mut b).unwrap(), 0, "the server shut its side down");
    let all = stream(0, 40_000);
    c.write_all(&all[..20_000]).unwrap();
    let count = p.path("count");
    wait_for(
        "the server to read 20000 bytes",
        Duration::from_secs(10),
        || std::fs::read_to_string(&count).is_ok_and(|s| s.starts_with("20000 ")),
    );
    wait_state(port, client, 5, "FIN_WAIT2");
    p.dump(&["--tcp-established"]);
    p.end_original();
    // Sent while the server is gone: held back, retransmitted later.
    c.write_all(&all[20_000..30_000]).unwrap();
    p.restore_with(&["--tcp-established"]);
    wait_state(port, client, 5, "FIN_WAIT2 after the restore");
    c.write_all(&all[30_000..]).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let eof = p.path("eof");
    wait_for("the server to see EOF", Duration::from_secs(20), || {
        eof.exists()
    });
    assert_eq!(
        std::fs::read_to_string(eof).unwrap().trim(),
        format!("40000 {}", fnv1a(&all)),
        "the server read every byte in order"
    );
    assert_eq!(c.read(&mut b).unwrap(), 0, "still EOF, no reset");
    server_ok(&p);
}

/// An image that will not be restored: `godwit unlock-tcp` lifts the lock,
/// and the peer learns at once that the connection is gone (a reset).
#[test]
fn unlock_tcp_lets_the_peer_know() {
    let port = 23320;
    let mut p = server(port, false, 1);
    let c = Client::start(server_addr(port, false), false);
    c.wait_received(5_000, "before the dump");
    p.dump(&["--tcp-established"]);
    p.end_original();
    std::thread::sleep(Duration::from_millis(300));
    c.check("while the server was gone");
    let img = p.images();
    let out = godwit_ok(&["unlock-tcp", "--images", img.to_str().unwrap()]);
    assert!(
        out.contains("unlocked") && out.contains(&c.local.to_string()),
        "{out}"
    );
    wait_for(
        "the client to see the connection end",
        Duration::from_secs(20),
        || c.s.error.lock().unwrap().is_some(),
    );
    let e = c.s.error.lock().unwrap().clone().unwrap();
    assert!(e.contains("reset") || e.contains("Broken pipe"), "{e}");
    let again = godwit_ok(&["unlock-tcp", "--images", img.to_str().unwrap()]);
    assert!(again.contains("was not locked"), "{again}");
}

/// Both ends of a connection in the dumped process (python3: a client
/// connected to its own listener, ping-pong over it): both move, each
/// behind its own lock, and keep talking to each other.
#[test]
fn connection_with_both_ends_in_the_tree_moves() {
    let script = r#"
import os, socket, sys
d, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(1)
a = socket.create_connection(("127.0.0.1", port)); b, _ = srv.accept()
n = 0
while True:
    msg = b"%08d" % n
    a.sendall(msg)
    if b.recv(8, socket.MSG_WAITALL) != msg: sys.exit("b got something else")
    b.sendall(msg * 2)
    if a.recv(16, socket.MSG_WAITALL) != msg * 2: sys.exit("a got something else")
    n += 1
    with open(d + "/count.tmp", "w") as f: f.write(str(n))
    os.rename(d + "/count.tmp", d + "/count")
"#;
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let mut p = Proc::spawn_in(dir, "python3", &["-c", script, &d, "23327"]);
    let file = p.path("count");
    let count = || {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_for("python to ping-pong", Duration::from_secs(20), || {
        count() > 100
    });
    p.dump(&["--tcp-established"]);
    p.end_original();
    let at_dump = count();
    p.restore_with(&["--tcp-established"]);
    let pid = p.pid;
    wait_for("the ping-pong to go on", Duration::from_secs(20), || {
        count() > at_dump + 1000 || dead(pid)
    });
    assert!(
        !dead(p.pid),
        "python failed after the restore: {}",
        p.output()
    );
}

/// A restore that fails after it has rebuilt the connection (the server's
/// UDP port is taken on this host meanwhile) leaves the peer none the wiser:
/// the half-built process goes with its socket in repair mode, the lock
/// stays (lifted before the failure, the peer would get the reset of the
/// dying socket), and the next restore brings the connection back.
#[test]
fn failed_restore_keeps_the_connection_for_the_next() {
    let port = 23328;
    let mut p = server_mode(port, "udp");
    let mut c = Client::start(server_addr(port, false), false);
    c.wait_received(5_000, "before the dump");
    p.dump(&["--tcp-established"]);
    p.end_original();
    let squatter = std::net::UdpSocket::bind(("127.0.0.1", port + 100)).unwrap();
    let img = p.images();
    let out = godwit(&[
        "restore",
        "--images",
        img.to_str().unwrap(),
        "--tcp-established",
    ]);
    assert!(!out.status.success(), "the restore fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    let pid = p.pid;
    assert!(reaped(pid), "the half-built process is gone");
    // Its socket went silently (closed in repair mode): no orphan left
    // closing the connection (FIN_WAIT1) on this host.
    let left = server_side(port, c.local);
    assert!(left.is_none(), "the failed restore left {left:?}");
    std::thread::sleep(Duration::from_millis(300));
    c.check("after the failed restore");
    drop(squatter);
    let at_restore = c.sent();
    p.restore_with(&["--tcp-established"]);
    c.wait_received(at_restore + 10_000, "after the second restore");
    c.finish("after the second restore");
    server_ok(&p);
}

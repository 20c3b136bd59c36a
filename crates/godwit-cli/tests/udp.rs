//! UDP sockets across a dump and a restore: a bound echo socket whose
//! queued datagrams (sent before the dump, not read yet) are answered after
//! the restore, each to its own sender, and a connected socket that keeps
//! its peer and its local port (tests/progs/udpecho.c).

mod common;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

fn lo(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        format!("[::1]:{port}").parse().unwrap()
    } else {
        format!("127.0.0.1:{port}").parse().unwrap()
    }
}

fn recv(s: &UdpSocket) -> (String, SocketAddr) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 256];
    let (n, from) = s.recv_from(&mut b).expect("a datagram");
    (String::from_utf8_lossy(&b[..n]).into_owned(), from)
}

fn server(port: u16, v6: bool, peer: u16, extra: &[&str]) -> Proc {
    let (port, peer) = (port.to_string(), peer.to_string());
    let mut args = vec![port.as_str(), if v6 { "6" } else { "4" }, peer.as_str()];
    args.extend_from_slice(extra);
    Proc::test_prog_with("udpecho", &args)
}

fn pause(p: &Proc) {
    std::fs::write(p.path("pause"), "").unwrap();
    let paused = p.path("paused");
    wait_for(
        "the server to stop reading",
        Duration::from_secs(10),
        || paused.exists(),
    );
}

fn server_ok(p: &Proc) {
    if let Ok(r) = std::fs::read_to_string(p.path("result")) {
        panic!("the server failed: {r}; output: {}", p.output());
    }
}

/// Sends a1..a5 and b1..b3 from two sockets while the server does not read.
fn queue_some(server: SocketAddr, a: &UdpSocket, b: &UdpSocket) {
    for i in 1..=5 {
        a.send_to(format!("a{i}").as_bytes(), server).unwrap();
        if i <= 3 {
            b.send_to(format!("b{i}").as_bytes(), server).unwrap();
        }
    }
}

fn check_echoes(server: SocketAddr, a: &UdpSocket, b: &UdpSocket, when: &str) {
    for i in 1..=5 {
        assert_eq!(recv(a), (format!("a{i}"), server), "echo to a {when}");
    }
    for i in 1..=3 {
        assert_eq!(recv(b), (format!("b{i}"), server), "echo to b {when}");
    }
}

fn round_trip(port: u16, peer_port: u16, v6: bool) {
    let peer = UdpSocket::bind(lo(v6, peer_port)).unwrap();
    let mut p = server(port, v6, peer_port, &[]);
    let (hello, conn) = recv(&peer);
    assert_eq!(hello, "hello");
    let server = lo(v6, port);
    let a = UdpSocket::bind(lo(v6, 0)).unwrap();
    let b = UdpSocket::bind(lo(v6, 0)).unwrap();
    a.send_to(b"ping", server).unwrap();
    assert_eq!(recv(&a), ("ping".to_string(), server));
    pause(&p);
    queue_some(server, &a, &b);
    std::thread::sleep(Duration::from_millis(100));
    p.dump(&[]);
    p.end_original();
    p.restore();
    std::fs::remove_file(p.path("pause")).unwrap();
    std::fs::write(p.path("say"), "").unwrap();
    // The queued datagrams, answered now, each to its own sender: they
    // came back into the queue from the right address and port.
    check_echoes(server, &a, &b, "after the restore");
    // The connected socket: same peer, same local port.
    assert_eq!(recv(&peer), ("after".to_string(), conn));
    a.send_to(b"more", server).unwrap();
    assert_eq!(recv(&a), ("more".to_string(), server));
    server_ok(&p);
}

#[test]
fn ipv4_udp_sockets_with_queued_datagrams() {
    round_trip(23321, 23322, false);
}

#[test]
fn ipv6_udp_sockets_with_queued_datagrams() {
    round_trip(23323, 23324, true);
}

/// Queued datagrams on a socket that reads their destination address
/// (IP_PKTINFO) cannot be put back exactly: refused, naming it; the server
/// runs on and answers them.
#[test]
fn queued_datagrams_with_pktinfo_refused() {
    let peer = UdpSocket::bind(lo(false, 23326)).unwrap();
    let p = server(23325, false, 23326, &["pktinfo"]);
    assert_eq!(recv(&peer).0, "hello");
    let server = lo(false, 23325);
    let a = UdpSocket::bind(lo(false, 0)).unwrap();
    let b = UdpSocket::bind(lo(false, 0)).unwrap();
    pause(&p);
    queue_some(server, &a, &b);
    std::thread::sleep(Duration::from_millis(100));
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
    assert!(
        err.contains("IP_PKTINFO") && err.contains("fd 3") && err.contains("127.0.0.1:23325"),
        "names the fd, the socket and the option: {err}"
    );
    assert!(!dead(p.pid), "the server runs on");
    std::fs::remove_file(p.path("pause")).unwrap();
    check_echoes(server, &a, &b, "after the refused dump");
    server_ok(&p);
}

//! Ping (ICMP), UDP-Lite, raw, packet and netlink sockets across a dump
//! and a restore (tests/progs/rawsocks.c, one mode each). Each program
//! runs in a network namespace of its own (loopback up, ping sockets
//! allowed to group 0 there only), and is restored into it.

mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A network namespace held by a `sleep` started in it; killed on drop.
struct NetNs(Child);

impl NetNs {
    fn new() -> NetNs {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let ns = NetNs(child);
        let me = std::fs::read_link("/proc/self/ns/net").unwrap();
        let pid = ns.pid();
        wait_for("the namespace", Duration::from_secs(10), || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|n| n != me)
        });
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns.run(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
        ns
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn enter(&self) -> Vec<String> {
        vec!["-t".into(), self.pid(), "-n".into()]
    }

    fn run(&self, cmd: &[&str]) {
        let st = Command::new("nsenter")
            .args(self.enter())
            .args(cmd)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd:?} in the namespace");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// rawsocks `mode`, started in `ns`, once it is ready.
fn start(ns: &NetNs, mode: &str) -> Proc {
    start_with(ns, mode, &[])
}

/// [`start`] with arguments after the mode.
fn start_with(ns: &NetNs, mode: &str, extra: &[&str]) -> Proc {
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let prog = progs().join("rawsocks");
    let mut args = ns.enter();
    args.extend([prog.to_str().unwrap().to_string(), d, mode.to_string()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = Proc::spawn_in(dir, "nsenter", &args);
    let ready = p.path("ready");
    let pid = p.pid;
    wait_for(
        &format!("rawsocks {mode} to be ready"),
        Duration::from_secs(20),
        || ready.exists() || dead(pid),
    );
    assert!(ready.exists(), "rawsocks {mode}: {}", p.output());
    p.tree = descendants(pid);
    p
}

/// Dump, end, restore (in the namespace) and the program's verdict.
fn round_trip(mode: &str) {
    let ns = NetNs::new();
    let mut p = start(&ns, mode);
    p.dump(&[]);
    p.end_original();
    let img = p.images();
    let out = Command::new("nsenter")
        .args(ns.enter())
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args(["restore", "--images", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        p.pid.to_string()
    );
    let v = p.verdict();
    assert_eq!(v, "PASS", "rawsocks {mode}: {v}; output: {}", p.output());
}

#[test]
fn ipv4_ping_socket_with_queued_replies() {
    round_trip("ping4");
}

#[test]
fn ipv6_ping_socket_with_queued_replies() {
    round_trip("ping6");
}

#[test]
fn udplite_sockets_with_queued_datagrams() {
    round_trip("udplite");
}

#[test]
fn raw_sockets() {
    round_trip("raw");
}

#[test]
fn packet_sockets() {
    round_trip("packet");
}

#[test]
fn netlink_sockets() {
    round_trip("netlink");
}

/// A netlink socket with a reply not read yet: refused, naming the fd and
/// why; the program runs on untouched.
#[test]
fn netlink_socket_with_pending_messages_refused() {
    let ns = NetNs::new();
    let p = start(&ns, "netlink-pending");
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
        err.contains("fd 3") && err.contains("netlink") && err.contains("waiting to be read"),
        "names the fd and why: {err}"
    );
    assert!(!dead(p.pid), "the program runs on");
}

/// A ping socket's replies are read at dump time (its queue cannot be
/// peeked) and put back at once: a process left running finds them all,
/// in order, from the same sender.
#[test]
fn ping_replies_kept_by_a_dump_that_leaves_the_process_running() {
    for mode in ["ping4", "ping6"] {
        let ns = NetNs::new();
        let mut p = start(&ns, mode);
        p.dump(&["--leave-running"]);
        assert!(!dead(p.pid), "{mode}: the process runs on");
        let v = p.verdict();
        assert_eq!(
            v,
            "PASS",
            "rawsocks {mode} left running: {v}; output: {}",
            p.output()
        );
    }
}

/// `godwit restore` (with `extra` flags) of `p`'s image, in `ns`.
fn restore_in(ns: &NetNs, p: &Proc, extra: &[&str]) -> std::process::Output {
    let img = p.images();
    Command::new("nsenter")
        .args(ns.enter())
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args(["restore", "--images", img.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap()
}

/// A packet socket bound to an interface the restoring namespace does not
/// have: the restore is refused, naming the fd and the interface.
#[test]
fn packet_socket_restore_refused_without_its_interface() {
    let ns = NetNs::new();
    let mut p = start(&ns, "packet");
    p.dump(&[]);
    p.end_original();
    ns.run(&["ip", "link", "set", "lo", "down"]);
    ns.run(&["ip", "link", "set", "lo", "name", "lo0"]);
    let out = restore_in(&ns, &p, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restored without lo: {err}");
    assert!(
        err.contains("fd 3") && err.contains("interface lo,"),
        "names the fd and the interface: {err}"
    );
    let pid = p.pid;
    wait_for(
        "the failed restore's process to end",
        Duration::from_secs(10),
        || dead(pid),
    );
}

/// A netlink socket whose port id another socket holds at restore time:
/// the restore is refused, naming the fd and the port id.
#[test]
fn netlink_socket_restore_refused_when_its_port_id_is_taken() {
    let ns = NetNs::new();
    let mut p = start(&ns, "netlink");
    p.dump(&[]);
    p.end_original();
    let _holder = start_with(&ns, "nlhold", &[&p.pid.to_string()]);
    let out = restore_in(&ns, &p, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restored a second holder of the port id: {err}"
    );
    assert!(
        err.contains("fd 3") && err.contains("port id") && err.contains("holds it"),
        "names the fd and the port id: {err}"
    );
    let pid = p.pid;
    wait_for(
        "the failed restore's process to end",
        Duration::from_secs(10),
        || dead(pid),
    );
}

//! Migration over a stream, both ends in this test: a counter moves into a
//! new PID namespace on this host and counts on; every failure before the
//! switch leaves it counting at the source.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use godwit_engine::migrate::{self, MigrateError, MigrateOptions, Mode, ReceiveOptions};
use godwit_engine::Quiet;

struct Counter {
    child: Child,
    pid: i32,
    log: PathBuf,
    _dir: tempfile::TempDir,
    restored_init: Option<i32>,
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(init) = self.restored_init {
            // SAFETY: plain kill(2) of the namespace init this test made.
            unsafe { libc::kill(init, libc::SIGKILL) };
        }
    }
}

fn gcc(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/progs/{name}.c"));
    let bin = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc must be installed");
    assert!(st.success());
    bin
}

fn counter() -> Counter {
    let dir = tempfile::tempdir().unwrap();
    let launch = gcc(dir.path(), "launch");
    let prog = gcc(dir.path(), "counter");
    let log = dir.path().join("log");
    let child = Command::new(launch)
        .arg(&prog)
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let c = Counter {
        child,
        pid,
        log,
        _dir: dir,
        restored_init: None,
    };
    wait_until("the counter counts", || last(&c.log) >= 3);
    c
}

fn last(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

fn opts(mode: Mode) -> MigrateOptions {
    MigrateOptions {
        mode,
        pid_ns: true,
        dump: Default::default(),
        watchdog: Duration::from_secs(30),
        keep_image: None,
        move_ip: None,
    }
}

fn recv_opts() -> ReceiveOptions {
    ReceiveOptions {
        max_bytes: 1 << 30,
        node: "test-destination".into(),
        force_pid_ns: false,
        keep_root: None,
    }
}

/// The log holds every number from 0 to its last, once, in order.
fn check_no_gap(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    for (i, l) in text.lines().enumerate() {
        assert_eq!(l, i.to_string(), "line {i} of the counter's log");
    }
}

fn moves(mode: Mode) {
    let mut c = counter();
    let (a, b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || migrate::receive(b, "source", &recv_opts(), &Quiet));
    let report = migrate::send(a, "destination", c.pid, &opts(mode), &Quiet).unwrap();
    let received = dest.join().unwrap().unwrap();
    c.restored_init = received.restore.ns_init;
    assert_eq!(report.pid, c.pid, "same PID inside the new namespace");
    assert_eq!(report.node, "test-destination");
    assert!(report.bytes_sent > 0 && report.downtime < report.total);
    // The source copy is gone; the destination's counts on.
    wait_until("the source copy to end", || {
        matches!(state(c.pid), None | Some('Z') | Some('X'))
    });
    let at = last(&c.log);
    wait_until("the moved counter to count", || last(&c.log) >= at + 3);
    check_no_gap(&c.log);
}

#[test]
fn stop_copy_moves_a_counter() {
    moves(Mode::StopCopy);
}

#[test]
fn pre_copy_moves_a_counter() {
    moves(Mode::PreCopy);
}

/// The source keeps counting, not stopped, after a failed migration.
fn still_counting(c: &Counter) {
    let at = last(&c.log);
    wait_until("the source to count on", || last(&c.log) >= at + 3);
    assert!(
        matches!(state(c.pid), Some('S') | Some('R')),
        "{:?}",
        state(c.pid)
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();
    assert!(status.contains("TracerPid:\t0"), "still traced:\n{status}");
}

#[test]
fn destination_gone_mid_transfer_leaves_the_source_running() {
    let c = counter();
    let (a, b) = UnixStream::pair().unwrap();
    // The destination answers the hello, reads a little of the image, dies.
    let dest = std::thread::spawn(move || {
        use godwit_image::stream::{recv_message, send_message};
        let mut b = b;
        recv_message(&mut b, Path::new("source")).unwrap();
        send_message(&mut b, br#"{"ok": true}"#).unwrap();
        let mut buf = vec![0u8; 4096];
        std::io::Read::read_exact(&mut b, &mut buf).unwrap();
        drop(b);
    });
    let e = migrate::send(a, "destination", c.pid, &opts(Mode::StopCopy), &Quiet).unwrap_err();
    dest.join().unwrap();
    assert!(
        matches!(e, MigrateError::Dump(_) | MigrateError::Link { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("left running at the source"), "{e}");
    still_counting(&c);
}

#[test]
fn pid_taken_at_the_destination_is_refused_before_anything_moves() {
    let c = counter();
    let (a, b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || migrate::receive(b, "source", &recv_opts(), &Quiet));
    let mut o = opts(Mode::StopCopy);
    // Same PID namespace as the source: the PID is in use "there".
    o.pid_ns = false;
    let e = migrate::send(a, "destination", c.pid, &o, &Quiet).unwrap_err();
    assert!(matches!(e, MigrateError::Refused { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!("PID {} is in use", c.pid)),
        "{e}"
    );
    assert!(dest.join().unwrap().is_err());
    still_counting(&c);
}

#[test]
fn destination_restore_failure_leaves_the_source_running() {
    let c = counter();
    let (a, b) = UnixStream::pair().unwrap();
    // A destination that takes the image, then says its restore failed.
    let dest = std::thread::spawn(move || {
        use godwit_image::stream::{recv_message, send_message};
        let mut b = b;
        recv_message(&mut b, Path::new("source")).unwrap();
        send_message(&mut b, br#"{"ok": true}"#).unwrap();
        godwit_image::receive_image(&mut b, "source", 1 << 30).unwrap();
        send_message(&mut b, br#"{"ok": false, "error": "disk full"}"#).unwrap();
    });
    let e = migrate::send(a, "destination", c.pid, &opts(Mode::StopCopy), &Quiet).unwrap_err();
    dest.join().unwrap();
    assert!(matches!(e, MigrateError::RestoreFailed { .. }), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");
    still_counting(&c);
}

#[test]
fn link_cut_after_go_leaves_the_source_stopped_not_running() {
    let c = counter();
    let (a, b) = UnixStream::pair().unwrap();
    // The destination says ready, reads the go, and vanishes.
    let dest = std::thread::spawn(move || {
        use godwit_image::stream::{recv_message, send_message};
        let mut b = b;
        recv_message(&mut b, Path::new("source")).unwrap();
        send_message(&mut b, br#"{"ok": true}"#).unwrap();
        godwit_image::receive_image(&mut b, "source", 1 << 30).unwrap();
        send_message(&mut b, br#"{"ok": true, "ready": true}"#).unwrap();
        recv_message(&mut b, Path::new("source")).unwrap();
    });
    let e = migrate::send(a, "destination", c.pid, &opts(Mode::StopCopy), &Quiet).unwrap_err();
    dest.join().unwrap();
    assert!(matches!(e, MigrateError::Uncertain { .. }), "{e}");
    wait_until(
        &format!("the source copy to be stopped ({:?})", state(c.pid)),
        || state(c.pid) == Some('T'),
    );
    let at = last(&c.log);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(last(&c.log), at, "a stopped source must not count");
    // SIGCONT: it counts on, nothing lost.
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(c.pid, libc::SIGCONT) };
    wait_until("the source to count again", || last(&c.log) >= at + 3);
    check_no_gap(&c.log);
}

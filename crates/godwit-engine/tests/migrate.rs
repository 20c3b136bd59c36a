//! Migration over a stream, both ends in this test: a counter moves into a
//! new PID namespace on this host and counts on; every failure before the
//! switch leaves it counting at the source. Post-copy: a process whose
//! memory follows it checks every page it touches (tests/progs/lazymem.c).

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
        // Bound at start: a program that checks its memory still reports
        // (through its crash handler) when that memory is wrong.
        .args(["-O1", "-Wl,-z,now", "-o"])
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

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(10), f)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out: {what}");
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
        inherit_fds: Vec::new(),
    }
}

fn recv_opts() -> ReceiveOptions {
    ReceiveOptions {
        max_bytes: 4 << 30,
        node: "test-destination".into(),
        force_pid_ns: false,
        keep_root: None,
        defer_fill: Some(godwit_engine::deferred::MIN_BYTES),
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
    let report = migrate::send(a, "destination", &[c.pid], &opts(mode), &Quiet).unwrap();
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

/// A destination that plays `script` on its end of the stream instead of
/// receiving; the migration of `c` to it must fail: its error.
fn migrate_to_scripted(
    c: &Counter,
    script: impl FnOnce(&mut UnixStream) + Send + 'static,
) -> MigrateError {
    let (a, mut b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || script(&mut b));
    let e = migrate::send(a, "destination", &[c.pid], &opts(Mode::StopCopy), &Quiet).unwrap_err();
    dest.join().unwrap();
    e
}

/// The scripted destination's first steps: take the hello, say yes.
fn accept_hello(b: &mut UnixStream) {
    godwit_image::stream::recv_message(b, Path::new("source")).unwrap();
    godwit_image::stream::send_message(b, br#"{"ok": true}"#).unwrap();
}

#[test]
fn destination_gone_mid_transfer_leaves_the_source_running() {
    let c = counter();
    // The destination answers the hello, reads a little of the image, dies.
    let e = migrate_to_scripted(&c, |b| {
        accept_hello(b);
        let mut buf = vec![0u8; 4096];
        std::io::Read::read_exact(b, &mut buf).unwrap();
    });
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
    let e = migrate::send(a, "destination", &[c.pid], &o, &Quiet).unwrap_err();
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
    // A destination that takes the image, then says its restore failed.
    let e = migrate_to_scripted(&c, |b| {
        accept_hello(b);
        godwit_image::receive_image(b, "source", 1 << 30).unwrap();
        godwit_image::stream::send_message(b, br#"{"ok": false, "error": "disk full"}"#).unwrap();
    });
    assert!(matches!(e, MigrateError::RestoreFailed { .. }), "{e}");
    assert!(e.to_string().contains("disk full"), "{e}");
    still_counting(&c);
}

#[test]
fn link_cut_after_go_leaves_the_source_stopped_not_running() {
    let c = counter();
    // The destination says ready, reads the go, and vanishes.
    let e = migrate_to_scripted(&c, |b| {
        accept_hello(b);
        godwit_image::receive_image(b, "source", 1 << 30).unwrap();
        godwit_image::stream::send_message(b, br#"{"ok": true, "ready": true}"#).unwrap();
        godwit_image::stream::recv_message(b, Path::new("source")).unwrap();
    });
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

#[test]
fn post_copy_moves_a_counter() {
    moves(Mode::PostCopy);
}

#[test]
fn pre_copy_then_post_copy_moves_a_counter() {
    moves(Mode::PreCopyPostCopy);
}

/// tests/progs/lazymem.c: `mib` MiB of pages it keeps checking and
/// rewriting, logging "pass N" per pass and "BAD ..." on a wrong page.
fn lazymem(mib: u64, how: &str) -> Counter {
    let dir = tempfile::tempdir().unwrap();
    let launch = gcc(dir.path(), "launch");
    let prog = gcc(dir.path(), "lazymem");
    let log = dir.path().join("log");
    let mut cmd = Command::new(launch);
    cmd.arg(&prog).arg(&log).arg(mib.to_string());
    if !how.is_empty() {
        cmd.arg(how);
    }
    let child = cmd
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
    wait_until("lazymem to make a pass", || {
        log_text(&c).contains("pass 1\n")
    });
    c
}

fn log_text(c: &Counter) -> String {
    std::fs::read_to_string(&c.log).unwrap_or_default()
}

/// Lines of the log after byte `from` that start with `word`.
fn lines_after(c: &Counter, from: usize, word: &str) -> usize {
    let t = log_text(c);
    t.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.starts_with(word))
        .count()
}

fn no_bad_page(c: &Counter) {
    let t = log_text(c);
    let bad: Vec<&str> = t.lines().filter(|l| l.starts_with("BAD")).collect();
    assert!(bad.is_empty(), "a page was wrong: {bad:?}");
}

/// Held by the tests that move hundreds of MiB, one at a time: on two
/// cores their timing means something only when they do not all run at
/// once.
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Post-copies a lazymem of `mib` MiB; returns the reports.
fn post_copy(c: &mut Counter, mode: Mode) -> (migrate::MigrateReport, migrate::ReceiveReport) {
    move_with(c, mode, recv_opts())
}

/// Moves `c` with `mode` to a destination taking `recv`; returns the reports.
fn move_with(
    c: &mut Counter,
    mode: Mode,
    recv: ReceiveOptions,
) -> (migrate::MigrateReport, migrate::ReceiveReport) {
    let (a, b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || migrate::receive(b, "source", &recv, &Quiet));
    let sent = migrate::send(a, "destination", &[c.pid], &opts(mode), &Quiet);
    let received = dest.join().unwrap();
    if let Ok(r) = &received {
        c.restored_init = r.restore.ns_init;
    }
    let report = sent.unwrap();
    let received = received.unwrap();
    eprintln!(
        "{}: downtime {:.1} ms, all pages after {:.1} ms, {} MiB lazy, image {} MiB, {} faults ({} pages), {} pushed, {:?}",
        mode.name(),
        report.downtime.as_secs_f64() * 1e3,
        report.all_pages_after.unwrap_or_default().as_secs_f64() * 1e3,
        report.lazy_bytes >> 20,
        received.bytes >> 20,
        report.faults,
        report.fault_pages,
        report.pushed_pages,
        received.postcopy
    );
    wait_for("the source copy to end", Duration::from_secs(20), || {
        matches!(state(c.pid), None | Some('Z') | Some('X'))
    });
    (report, received)
}

#[test]
fn post_copy_of_256_mib_never_shows_a_wrong_page() {
    let _one = heavy();
    let mut c = lazymem(256, "");
    let (report, received) = post_copy(&mut c, Mode::PostCopy);
    // The memory was not in the image: it followed.
    assert!(report.lazy_bytes >= 256 << 20, "{}", report.lazy_bytes);
    assert!(
        received.bytes < 32 << 20,
        "image of {} bytes",
        received.bytes
    );
    assert!(report.all_pages_after.unwrap() >= report.downtime);
    assert!(report.faults > 0, "the process touched its memory at once");
    assert!(
        report.fault_pages + report.pushed_pages >= 65536,
        "{} + {} pages",
        report.fault_pages,
        report.pushed_pages
    );
    // It goes on checking every page, at the destination.
    let at = log_text(&c).len();
    wait_for(
        "two passes at the destination",
        Duration::from_secs(30),
        || {
            no_bad_page(&c);
            lines_after(&c, at, "pass") >= 2
        },
    );
    no_bad_page(&c);
}

#[test]
fn post_copy_follows_dontneed_munmap_mremap_and_fork() {
    follows_the_churn(Mode::PostCopy);
}

/// Moves a churning lazymem with `mode`, whose pages arrive after it runs
/// (post-copy, or the fill after the run): its DONTNEED, munmap, mremap and
/// fork must fall while pages are still arriving (on a busy host the
/// process may get the CPU only once they are all in: then again), and it
/// never sees a wrong page.
fn follows_the_churn(mode: Mode) {
    let _one = heavy();
    for attempt in 1..=3 {
        let mut c = lazymem(256, "churn");
        let at = log_text(&c).len();
        let (_, received) = post_copy(&mut c, mode);
        wait_for(
            "a churn and a pass at the destination",
            Duration::from_secs(30),
            || {
                no_bad_page(&c);
                lines_after(&c, at, "churned") >= 1 && lines_after(&c, at, "pass") >= 2
            },
        );
        no_bad_page(&c);
        let stats = received
            .postcopy
            .clone()
            .expect("pages placed after the run");
        if attempt < 3 && (stats.forks == 0 || stats.dropped_pages == 0) {
            eprintln!("the churn came after the pages ({stats:?}); again");
            continue;
        }
        assert!(stats.forks >= 1, "no fork while pages arrived: {stats:?}");
        assert!(
            stats.dropped_pages > 0,
            "nothing released while pages arrived: {stats:?}"
        );
        return;
    }
}

#[test]
fn pre_copy_then_post_copy_of_a_busy_process() {
    let _one = heavy();
    let mut c = lazymem(64, "sparse");
    let (report, _) = post_copy(&mut c, Mode::PreCopyPostCopy);
    let pre = &report.dump.precopy;
    assert!(pre.bytes_running >= 64 << 20, "little pre-copied: {pre:?}");
    // (What it wrote after the last round is left for post-copy: usually
    // some pages, none if it did not run meanwhile.)
    assert!(
        report.lazy_bytes < 32 << 20,
        "{} bytes left for post-copy",
        report.lazy_bytes
    );
    let at = log_text(&c).len();
    wait_for(
        "two passes at the destination",
        Duration::from_secs(30),
        || {
            no_bad_page(&c);
            lines_after(&c, at, "pass") >= 2
        },
    );
    no_bad_page(&c);
}

#[test]
fn stop_copy_of_256_mib_runs_before_its_memory_is_in_place() {
    let _one = heavy();
    let mut c = lazymem(256, "");
    let (report, received) = post_copy(&mut c, Mode::StopCopy);
    // The whole memory went in the image; the destination placed it after
    // the process ran (crate::deferred), faults first.
    assert!(
        received.bytes >= 256 << 20,
        "image of {} bytes",
        received.bytes
    );
    assert_eq!(report.lazy_bytes, 0);
    let stats = received.postcopy.clone().expect("a deferred fill");
    assert!(stats.fault_pages + stats.pushed_pages >= 60000, "{stats:?}");
    let at = log_text(&c).len();
    wait_for(
        "two passes at the destination",
        Duration::from_secs(30),
        || {
            no_bad_page(&c);
            lines_after(&c, at, "pass") >= 2
        },
    );
    no_bad_page(&c);
}

#[test]
fn pre_copy_fill_after_run_follows_dontneed_munmap_mremap_and_fork() {
    follows_the_churn(Mode::PreCopy);
}

/// Live processes whose executable's path contains `needle` (the
/// executable link, not the command line, which lies in the process's
/// memory).
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.to_string_lossy().contains(needle)
            && !matches!(state(pid), None | Some('Z') | Some('X'))
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn link_cut_mid_post_copy_kills_the_destination_copy_and_keeps_the_source() {
    let _one = heavy();
    let c = lazymem(256, "");
    let (a, a2) = UnixStream::pair().unwrap();
    let (b2, b) = UnixStream::pair().unwrap();
    // A relay that cuts the link once 64 MiB went to the destination: the
    // image is small, so that is in the middle of the post-copy.
    let relay = {
        let (mut from, mut to) = (a2.try_clone().unwrap(), b2.try_clone().unwrap());
        let (x, y) = (a2.try_clone().unwrap(), b2.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut n = 0usize;
            while n < 64 << 20 {
                let Ok(k) = std::io::Read::read(&mut from, &mut buf) else {
                    break;
                };
                if k == 0 || std::io::Write::write_all(&mut to, &buf[..k]).is_err() {
                    break;
                }
                n += k;
            }
            let _ = x.shutdown(std::net::Shutdown::Both);
            let _ = y.shutdown(std::net::Shutdown::Both);
        })
    };
    let back = {
        let (mut from, mut to) = (b2.try_clone().unwrap(), a2.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
        })
    };
    // The destination's thread lives on after its failure (as a daemon's
    // would): a PID namespace's init dies with the thread that made it,
    // which would hide a process left behind.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let dest = std::thread::spawn(move || {
        let r = migrate::receive(b, "source", &recv_opts(), &Quiet);
        done_tx
            .send(r.map(|_| ()).map_err(|e| e.to_string()))
            .unwrap();
        let _ = end_rx.recv();
    });
    let e = migrate::send(a, "destination", &[c.pid], &opts(Mode::PostCopy), &Quiet).unwrap_err();
    let de = done_rx.recv().unwrap().unwrap_err();
    // The destination's copy is gone by the time it reports (it killed it
    // before returning, while it could not yet see a missing page).
    let needle = c._dir.path().to_str().unwrap().to_string();
    assert_eq!(
        processes_with(&needle),
        vec![c.pid],
        "a copy left at the destination"
    );
    relay.join().unwrap();
    back.join().unwrap();
    assert!(matches!(e, MigrateError::PostCopyLinkLost { .. }), "{e}");
    assert!(de.contains("post-copy") && de.contains("killed"), "{de}");
    // The source copy is the only one, stopped.
    drop(end_tx);
    dest.join().unwrap();
    wait_until("the source copy to be stopped", || {
        state(c.pid) == Some('T')
    });
    no_bad_page(&c);
    let at = log_text(&c).len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log_text(&c).len(), at, "a stopped source must not run");
    // Its memory is whole: it goes on from where it was.
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(c.pid, libc::SIGCONT) };
    wait_until("the source to pass again", || {
        lines_after(&c, at, "pass") >= 2
    });
    no_bad_page(&c);
}

#[test]
fn destination_failing_mid_post_copy_resumes_the_source() {
    let c = counter();
    let (a, b) = UnixStream::pair().unwrap();
    // A destination that runs the process, asks for one page, then says it
    // could not go on and killed its copy.
    let dest = std::thread::spawn(move || {
        use godwit_image::stream::{read_header, recv_message, send_message, Received};
        let mut b = b;
        recv_message(&mut b, Path::new("source")).unwrap();
        send_message(&mut b, br#"{"ok": true}"#).unwrap();
        let image = godwit_image::receive_image(&mut b, "source", 1 << 30).unwrap();
        let reader = godwit_image::ImageReader::from_source(Box::new(image)).unwrap();
        let ck: godwit_engine::schema::Checkpoint = reader.metadata().unwrap();
        let run = ck.processes[0]
            .vmas
            .iter()
            .find_map(|v| v.lazy.first().cloned())
            .expect("a lazy page run in the image");
        send_message(&mut b, br#"{"ok": true, "ready": true}"#).unwrap();
        recv_message(&mut b, Path::new("source")).unwrap();
        send_message(&mut b, br#"{"ok": true, "running": true, "pid": 1}"#).unwrap();
        let want = format!(
            r#"{{"want": [[{}, {}, 4096]], "fault": true}}"#,
            ck.processes[0].pid, run.addr
        );
        send_message(&mut b, want.as_bytes()).unwrap();
        let Received::Message(m) = recv_message(&mut b, Path::new("source")).unwrap() else {
            panic!("no answer")
        };
        assert!(String::from_utf8_lossy(&m).contains("true"));
        let h = read_header(&mut b).unwrap();
        assert_eq!(h.len, 4096);
        let mut page = vec![0u8; 4096];
        std::io::Read::read_exact(&mut b, &mut page).unwrap();
        send_message(
            &mut b,
            br#"{"failed": "no memory left here", "killed": true}"#,
        )
        .unwrap();
    });
    let e = migrate::send(a, "destination", &[c.pid], &opts(Mode::PostCopy), &Quiet).unwrap_err();
    dest.join().unwrap();
    assert!(matches!(e, MigrateError::PostCopyResumed { .. }), "{e}");
    assert!(e.to_string().contains("no memory left here"), "{e}");
    still_counting(&c);
    check_no_gap(&c.log);
}

/// Runs tests/progs/`name`.c (the harness protocol: DIR/ready, DIR/go,
/// DIR/result), moves it with `mode` once ready, lets it check itself at
/// the destination.
fn harness_moves(name: &str, mode: Mode) {
    harness_moves_then(name, mode, |_, _| {});
}

/// [`harness_moves`], calling `then` with the original's and the moved
/// root's host PIDs once it runs at the destination, before its verdict.
fn harness_moves_then(name: &str, mode: Mode, then: impl FnOnce(i32, i32)) {
    let dir = tempfile::tempdir().unwrap();
    let prog = gcc(dir.path(), name);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let child = Command::new(&prog)
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut c = Counter {
        child,
        pid,
        log: work.join("result"),
        _dir: dir,
        restored_init: None,
    };
    wait_until("the program to be ready", || work.join("ready").exists());
    let received = if mode.lazy() {
        let (report, received) = post_copy(&mut c, mode);
        assert!(report.lazy_bytes > 0, "nothing followed the process");
        received
    } else {
        // However little memory it has: placed after it runs.
        let recv = ReceiveOptions {
            defer_fill: Some(0),
            ..recv_opts()
        };
        let (_, received) = move_with(&mut c, mode, recv);
        let stats = received.postcopy.as_ref().expect("a deferred fill");
        assert!(stats.fault_pages + stats.pushed_pages > 0, "{stats:?}");
        received
    };
    then(pid, received.restore.host_pid);
    std::fs::write(work.join("go"), b"go").unwrap();
    wait_for("the program's verdict", Duration::from_secs(30), || {
        work.join("result").exists()
    });
    let verdict = std::fs::read_to_string(work.join("result")).unwrap();
    assert_eq!(verdict.trim(), "PASS", "{name} after {}", mode.name());
}

#[test]
fn post_copy_brings_every_kind_of_memory() {
    harness_moves("memory", Mode::PostCopy);
}

#[test]
fn post_copy_moves_threads() {
    harness_moves("threads", Mode::PostCopy);
}

/// Not a check: prints downtime and totals per mode for 64 MiB and 1 GiB
/// (`cargo test --release -p godwit-engine --test migrate measure -- --ignored --nocapture`).
#[test]
#[ignore]
fn measure_migration_modes() {
    for mib in [64, 1024] {
        for mode in [
            Mode::StopCopy,
            Mode::PreCopy,
            Mode::PostCopy,
            Mode::PreCopyPostCopy,
        ] {
            let mut c = lazymem(mib, "sparse");
            let (r, _) = post_copy(&mut c, mode);
            println!(
                "MEASURE {mib} MiB {}: downtime {:.1} ms, all pages after {:.1} ms, total {:.1} ms, {} MiB sent, {} MiB lazy, faults {} ({} pages), pushed {}",
                mode.name(),
                r.downtime.as_secs_f64() * 1e3,
                r.all_pages_after.unwrap_or(r.downtime).as_secs_f64() * 1e3,
                r.total.as_secs_f64() * 1e3,
                r.bytes_sent >> 20,
                r.lazy_bytes >> 20,
                r.faults,
                r.fault_pages,
                r.pushed_pages
            );
            let at = log_text(&c).len();
            wait_for("a pass at the destination", Duration::from_secs(60), || {
                no_bad_page(&c);
                lines_after(&c, at, "pass") >= 1
            });
        }
    }
}

#[test]
fn post_copy_moves_a_process_tree() {
    harness_moves("tree", Mode::PostCopy);
}

#[test]
fn post_copy_keeps_pages_shared_copy_on_write_right() {
    harness_moves("cow", Mode::PostCopy);
}

#[test]
fn fill_after_run_brings_every_kind_of_memory() {
    harness_moves("memory", Mode::StopCopy);
}

#[test]
fn fill_after_run_moves_threads() {
    harness_moves("threads", Mode::PreCopy);
}

#[test]
fn fill_after_run_moves_a_process_tree() {
    harness_moves("tree", Mode::StopCopy);
}

#[test]
fn fill_after_run_keeps_pages_shared_copy_on_write_right() {
    harness_moves("cow", Mode::PreCopy);
}

#[test]
fn fill_after_run_of_a_forking_server_sharing_its_memory() {
    let _one = heavy();
    // Its shared areas are filled before the forks, the rest after.
    harness_moves("cowshare", Mode::StopCopy);
}

/// The proportional set size (Pss) of a process and its descendants.
fn tree_pss(pid: i32) -> u64 {
    let mut queue = vec![pid];
    let mut pss = 0;
    while let Some(p) = queue.pop() {
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        pss += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            << 10;
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        queue.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    pss
}

/// A forking server (256 MiB shared by a parent, 4 children and a
/// grandchild) moved in pre-copy: every process is pre-copied while it
/// runs, and at the destination the pages they still shared are shared
/// again (the tree's Pss as before, not six times the parent's memory);
/// every process finds its memory right.
#[test]
fn pre_copy_of_a_forking_server_keeps_its_memory_shared() {
    let _one = heavy();
    let mut before = 0;
    harness_moves_then("cowshare", Mode::PreCopy, |_, moved| {
        let after = tree_pss(moved);
        eprintln!(
            "cowshare pre-copy: Pss {} MiB at the destination",
            after >> 20
        );
        before = after;
    });
    // 256 MiB shared by six processes, each with 1 MiB of its own.
    assert!(
        before < 300 << 20,
        "the moved tree's Pss is {} MiB",
        before >> 20
    );
}

/// Processes sharing memory copy-on-write, all writing to it while the
/// pre-copy runs: each comes back with its own view (pages still shared
/// are shared again; a page one of them wrote is not seen by another).
#[test]
fn pre_copy_of_forked_processes_all_writing_keeps_each_view() {
    harness_moves("cowbusy", Mode::PreCopy);
}

#[test]
fn an_image_with_lazy_pages_is_refused_outside_a_post_copy() {
    use godwit_engine::dump::{dump_to, End};
    let c = counter();
    let images = tempfile::tempdir().unwrap();
    let dir = images.path().join("img");
    let writer = godwit_image::ImageWriter::create(&dir).unwrap().sync(false);
    let end = End::Hold {
        precopy: false,
        lazy: true,
    };
    let (report, held) = dump_to(&[c.pid], writer, &Default::default(), &Quiet, end).unwrap();
    assert!(report.lazy_bytes > 0);
    // The source copy runs on; its image lacks the memory.
    held.unwrap().release().unwrap();
    let opts = godwit_engine::restore::RestoreOptions {
        pid_ns: true,
        ..Default::default()
    };
    let e = godwit_engine::restore::restore(&dir, &opts, &Quiet).unwrap_err();
    assert!(e.to_string().contains("lazy pages"), "{e}");
    still_counting(&c);
}

/// The restore touches memory still at the source (here the threads' rseq
/// areas, which the dump otherwise always sends): the destination fetches
/// it before the processes run instead of waiting forever.
#[test]
fn post_copy_serves_pages_the_restore_itself_touches() {
    godwit_engine::dump::LAZY_RSEQ_FOR_TESTS.store(true, std::sync::atomic::Ordering::Relaxed);
    harness_moves("threads", Mode::PostCopy);
}

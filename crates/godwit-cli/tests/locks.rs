//! File locks: held again after restore, as a process that was not dumped
//! sees them; refused when they cannot be kept (a lease, a lock on the same
//! file held outside the tree).

mod common;
use common::*;
use std::os::fd::AsRawFd;

/// F_GETLK / F_OFD_GETLK for a write lock on [start, start + len) of
/// `file`: the type and owner PID of a conflicting lock (F_UNLCK: none).
fn conflict(file: &std::fs::File, cmd: i32, start: i64, len: i64) -> (i16, i32) {
    // SAFETY: plain data struct; all-zero is valid.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as i16;
    l.l_whence = libc::SEEK_SET as i16;
    l.l_start = start;
    l.l_len = len;
    // SAFETY: fcntl with a pointer to a live struct flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut l) };
    assert_eq!(r, 0, "fcntl({cmd}): {}", std::io::Error::last_os_error());
    (l.l_type, l.l_pid)
}

/// flock(LOCK_NB | op) succeeds (and is undone) or fails with EWOULDBLOCK.
fn can_flock(file: &std::fs::File, op: i32) -> bool {
    // SAFETY: plain integer syscall on a file we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return true;
    }
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EWOULDBLOCK)
    );
    false
}

fn open(p: &Proc, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p.path(name))
        .unwrap()
}

#[test]
fn file_locks_are_held_after_restore() {
    let mut p = Proc::test_prog("locks");
    let child: i32 = std::fs::read_to_string(p.path("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    p.dump(&[]);
    let img = p.images();
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["--json", "inspect", img.to_str().unwrap()])).unwrap();
    let kinds: Vec<String> = v["processes"][0]["fds"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["locks"].as_array().cloned().unwrap_or_default())
        .map(|l| l["kind"].as_str().unwrap().to_string())
        .collect();
    for k in ["posix", "ofd", "flock"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "inspect shows no {k} lock: {kinds:?}"
        );
    }
    p.end_original();
    p.restore();
    let (a, b, c, d) = (open(&p, "a"), open(&p, "b"), open(&p, "c"), open(&p, "d"));
    let (wr, rd, un) = (
        libc::F_WRLCK as i16,
        libc::F_RDLCK as i16,
        libc::F_UNLCK as i16,
    );
    assert_eq!(
        conflict(&a, libc::F_GETLK, 10, 20),
        (wr, p.pid),
        "POSIX write lock"
    );
    assert_eq!(
        conflict(&a, libc::F_GETLK, 50, 10),
        (rd, p.pid),
        "POSIX read lock"
    );
    assert_eq!(
        conflict(&a, libc::F_GETLK, 100, 100),
        (rd, child),
        "the child's POSIX lock"
    );
    assert_eq!(conflict(&a, libc::F_GETLK, 300, 10).0, un, "no lock beyond");
    assert_eq!(
        conflict(&b, libc::F_OFD_GETLK, 100, 0),
        (rd, -1),
        "OFD lock"
    );
    assert_eq!(
        conflict(&b, libc::F_OFD_GETLK, 0, 100).0,
        un,
        "no OFD lock before 100"
    );
    assert!(!can_flock(&c, libc::LOCK_SH), "exclusive flock");
    assert!(
        can_flock(&d, libc::LOCK_SH),
        "shared flock lets others share"
    );
    assert!(!can_flock(&d, libc::LOCK_EX), "shared flock");
    drop((a, b, c, d));
    assert_eq!(p.verdict(), "PASS");
}

fn refused(p: &mut Proc, what: &[&str]) {
    let img = p.images();
    let pid = p.pid.to_string();
    let out = godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "dump should be refused: {err}");
    for w in what {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    assert!(!gone(p.pid), "a refused dump leaves the process running");
}

#[test]
fn lease_is_refused() {
    let mut p = Proc::test_prog_with("locks", &["lease"]);
    let e = p.path("e");
    refused(&mut p, &["lease", e.to_str().unwrap()]);
    assert_eq!(p.verdict(), "PASS", "the process is unharmed");
}

#[test]
fn lock_held_outside_the_tree_is_refused() {
    let mut p = Proc::test_prog("locks");
    let a = open(&p, "a");
    // A read lock of ours, compatible with the program's, on the same file.
    // SAFETY: plain data struct; all-zero is valid.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_RDLCK as i16;
    l.l_start = 400;
    l.l_len = 10;
    // SAFETY: fcntl with a pointer to a live struct flock.
    assert_eq!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETLK, &l) }, 0);
    let path = p.path("a");
    let me = std::process::id().to_string();
    refused(
        &mut p,
        &["outside the dumped tree", path.to_str().unwrap(), &me],
    );
    drop(a);
    assert_eq!(p.verdict(), "PASS", "the process is unharmed");
}

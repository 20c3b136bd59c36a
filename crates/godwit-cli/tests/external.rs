//! Descriptors connected outside the dumped tree: pipes and unix sockets
//! whose other end a process that is not dumped holds (the test process
//! itself, or `cat` in `prog | cat`). Dump records them; `restore
//! --inherit-fd N:KEY` puts the restorer's fd N in their place; without it
//! they get a stand-in that never kills the process, with a warning.
//! tests/progs/extio.c is the dumped program.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Kills and reaps the given PIDs (restored processes are our children, as
/// we are a subreaper) when the test ends, passed or not.
struct Reap(Vec<i32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if !gone(pid) {
                // SAFETY: kill and reap a PID this test started or restored.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                reaped(pid);
            }
        }
    }
}

fn extio() -> String {
    progs().join("extio").to_str().unwrap().to_string()
}

fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("godwit-ext")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    d
}

/// A log file in `dir`, for the fds of the programs the test does not use
/// (otherwise they would be the test runner's pipes: outside the tree too).
fn log(dir: &Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log"))
            .unwrap(),
    )
}

fn read_int(p: &Path) -> i64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

fn wait_ready(dir: &Path) -> i32 {
    let ready = dir.join("ready");
    wait_for("the program to be ready", Duration::from_secs(20), || {
        ready.exists()
    });
    read_int(&dir.join("pid")) as i32
}

/// `godwit args...` with `fds` (target number, our descriptor) open in it.
fn godwit_with(args: &[&str], fds: &[(i32, &OwnedFd)]) -> Output {
    let pairs: Vec<(i32, i32)> = fds.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect();
    let mut c = Command::new(env!("CARGO_BIN_EXE_godwit"));
    c.args(args).stdin(Stdio::null());
    // SAFETY: only dup2 (async-signal-safe) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            // Out of the way first, so no target number overwrites a source.
            let mut moved = Vec::new();
            for &(_, src) in &pairs {
                let tmp = libc::fcntl(src, libc::F_DUPFD, 100);
                if tmp < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved.push(tmp);
            }
            for (&(n, _), &tmp) in pairs.iter().zip(&moved) {
                if libc::dup2(tmp, n) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    c.output().expect("running godwit")
}

fn dump_json(pid: i32, img: &Path) -> serde_json::Value {
    let out = godwit_ok(&[
        "--json",
        "dump",
        "--pid",
        &pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// The key dump gave for `fd` of `pid`, checking what it says it is.
fn key_of(v: &serde_json::Value, pid: i32, fd: i32, what: &str) -> String {
    let list = v["externals"].as_array().expect("externals listed");
    let x = list
        .iter()
        .find(|x| x["pid"] == pid && x["fd"] == fd)
        .unwrap_or_else(|| panic!("fd {fd} not listed as connected outside: {v}"));
    assert_eq!(x["what"], what, "{v}");
    x["key"].as_str().unwrap().to_string()
}

fn restore_ok(img: &Path, extra: &[&str], fds: &[(i32, &OwnedFd)], pid: i32) -> String {
    let mut args = vec!["restore", "--images", img.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = godwit_with(&args, fds);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "restore failed: {err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pid.to_string());
    err
}

/// `sh -c 'extio writer | cat > out'`, only extio dumped: its stdout is a
/// pipe whose reader (cat) is outside the tree. The test holds a write end
/// of that pipe across dump and restore (so cat does not see end of file
/// while the process is away) and passes it as `--inherit-fd 3:pipe:[N]`:
/// cat receives every line, none lost or repeated, including those written
/// after the restore.
#[test]
fn pipe_to_cat_continues_through_inherited_fd() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' '{d}' writer | cat > '{d}/out'", extio()))
        .stdin(Stdio::null())
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let mut reap = Reap(vec![pid]);
    let hold: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/1"))
        .unwrap()
        .into();
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 1, "pipe write end");
    assert!(key.starts_with("pipe:["), "{key}");
    wait_for(
        "the dumped process to be gone",
        Duration::from_secs(10),
        || gone(pid),
    );
    let at_dump = read_int(&dir.path().join("count"));
    let arg = format!("3:{key}");
    let err = restore_ok(&img, &["--inherit-fd", &arg], &[(3, &hold)], pid);
    assert!(!err.contains("warning"), "no stand-in expected: {err}");
    let count = dir.path().join("count");
    wait_for(
        "lines written after the restore",
        Duration::from_secs(20),
        || read_int(&count) > at_dump + 100,
    );
    assert!(!dir.path().join("error").exists(), "a write failed");
    // End it; the last holder of the write end goes, cat sees end of file.
    drop(reap.0.drain(..));
    // SAFETY: kill and reap the restored process (our child, subreaper).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(reaped(pid));
    drop(hold);
    assert!(sh.wait().unwrap().success());
    let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
    let lines: Vec<i64> = out.lines().map(|l| l.parse().unwrap()).collect();
    for (i, n) in lines.iter().enumerate() {
        assert_eq!(*n, i as i64, "line {i} of cat's output: lost or repeated");
    }
    assert!(
        lines.len() as i64 > at_dump + 100,
        "{} lines, {at_dump} at the dump",
        lines.len()
    );
}

/// The same pipeline restored without --inherit-fd, after cat has gone (it
/// saw end of file when the dump ended the writer): a warning names the
/// process, fd 1 and the pipe; the process keeps running, its writes go to
/// /dev/null and none raises SIGPIPE. Its stdout is also in an epoll
/// interest list, which cannot hold /dev/null: the warning says the watch
/// goes.
#[test]
fn pipe_write_end_without_inherit_fd_writes_to_dev_null() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' '{d}' writer epoll | cat > '{d}/out'",
            extio()
        ))
        .stdin(Stdio::null())
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 1, "pipe write end");
    assert!(sh.wait().unwrap().success(), "cat ends at end of file");
    wait_for(
        "the dumped process to be gone",
        Duration::from_secs(10),
        || gone(pid),
    );
    // What the text output of inspect says.
    let shown = godwit_ok(&["inspect", img.to_str().unwrap()]);
    assert!(
        shown.contains(&key) && shown.contains("connected outside"),
        "{shown}"
    );
    let at_dump = read_int(&dir.path().join("count"));
    let err = restore_ok(&img, &[], &[], pid);
    assert!(
        err.contains("warning")
            && err.contains(&format!("process {pid} fd 1"))
            && err.contains(&key)
            && err.contains("/dev/null")
            && err.contains("epoll"),
        "{err}"
    );
    let count = dir.path().join("count");
    wait_for("writes after the restore", Duration::from_secs(20), || {
        read_int(&count) > at_dump + 100 || dead(pid)
    });
    assert!(!dead(pid), "the restored process died");
    assert!(!dir.path().join("error").exists(), "a write failed");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap(),
        Path::new("/dev/null")
    );
}

/// A reader whose stdin pipe holds bytes it has not read at the dump (the
/// writer, the test, is outside the tree): the bytes are saved, and put
/// into the pipe given with --inherit-fd ahead of what is written there
/// after the restore.
#[test]
fn unread_bytes_of_a_read_end_go_to_the_inherited_pipe() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let (r, mut w) = std::io::pipe().unwrap();
    let mut child = Command::new(extio())
        .args([d.as_str(), "reader", "before the dump\nafter the restore\n"])
        .stdin(Stdio::from(OwnedFd::from(r)))
        .stdout(log(dir.path()))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    w.write_all(b"before the dump\n").unwrap();
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 0, "pipe read end");
    let x = &v["externals"][0];
    assert_eq!(x["saved_bytes"], 16, "{v}");
    child.wait().unwrap();
    drop(w);
    let (r2, mut w2) = std::io::pipe().unwrap();
    let r2 = OwnedFd::from(r2);
    let err = restore_ok(
        &img,
        &["--inherit-fd", &format!("3:{key}")],
        &[(3, &r2)],
        pid,
    );
    assert!(!err.contains("warning"), "{err}");
    drop(r2);
    w2.write_all(b"after the restore\n").unwrap();
    drop(w2);
    assert_eq!(go_and_verdict(dir.path()), "PASS");
}

/// The reader given back its own pipe (still alive: the test holds both a
/// write end and, opened through /proc, a read end of it): the unread bytes
/// are still in that pipe, so they are not put in a second time.
#[test]
fn unread_bytes_are_not_repeated_when_the_same_pipe_is_inherited() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let (r, mut w) = std::io::pipe().unwrap();
    let mut child = Command::new(extio())
        .args([d.as_str(), "reader", "once\nand more\n"])
        .stdin(Stdio::from(OwnedFd::from(r)))
        .stdout(log(dir.path()))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    w.write_all(b"once\n").unwrap();
    let held: OwnedFd = std::fs::File::open(format!("/proc/{pid}/fd/0"))
        .unwrap()
        .into();
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 0, "pipe read end");
    child.wait().unwrap();
    let err = restore_ok(
        &img,
        &["--inherit-fd", &format!("3:{key}")],
        &[(3, &held)],
        pid,
    );
    assert!(!err.contains("warning"), "{err}");
    drop(held);
    w.write_all(b"and more\n").unwrap();
    drop(w);
    assert_eq!(go_and_verdict(dir.path()), "PASS");
}

/// The same reader restored without --inherit-fd: its stdin is a pipe
/// holding the saved bytes, then end of file; a warning names fd 0.
#[test]
fn read_end_without_inherit_fd_reads_the_saved_bytes_then_eof() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let (r, mut w) = std::io::pipe().unwrap();
    let mut child = Command::new(extio())
        .args([d.as_str(), "reader", "kept across\n"])
        .stdin(Stdio::from(OwnedFd::from(r)))
        .stdout(log(dir.path()))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    w.write_all(b"kept across\n").unwrap();
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 0, "pipe read end");
    child.wait().unwrap();
    // The writer stays open here: the restored process must not wait for it.
    let err = restore_ok(&img, &[], &[], pid);
    assert!(
        err.contains(&format!("process {pid} fd 0")) && err.contains(&key),
        "{err}"
    );
    assert_eq!(go_and_verdict(dir.path()), "PASS");
    drop(w);
}

fn echo_round(w: &mut impl Write, r: &mut impl Read, msg: &str) {
    w.write_all(msg.as_bytes()).unwrap();
    let want = format!("echo:{msg}");
    let mut got = vec![0u8; want.len()];
    r.read_exact(&mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// A child started as subprocess.Popen(stdin=PIPE, stdout=PIPE) starts it
/// (here by the test itself, with the same two pipes), dumped alone;
/// restored with --inherit-fd for both pipes (one by its key, one as
/// fd:PID:FD), the test talks to it through the new pipes; at end of file
/// on its stdin it exits.
#[test]
fn popen_style_child_restored_with_both_pipes_inherited() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut child = Command::new(extio())
        .args([d.as_str(), "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    let (mut cin, mut cout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    echo_round(&mut cin, &mut cout, "before\n");
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key0 = key_of(&v, pid, 0, "pipe read end");
    key_of(&v, pid, 1, "pipe write end");
    child.wait().unwrap();
    drop((cin, cout));
    let (in_r, mut in_w) = std::io::pipe().unwrap();
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let (in_r, out_w) = (OwnedFd::from(in_r), OwnedFd::from(out_w));
    let fd1 = format!("4:fd:{pid}:1");
    let err = restore_ok(
        &img,
        &["--inherit-fd", &format!("3:{key0}"), "--inherit-fd", &fd1],
        &[(3, &in_r), (4, &out_w)],
        pid,
    );
    assert!(!err.contains("warning"), "{err}");
    drop((in_r, out_w));
    echo_round(&mut in_w, &mut out_r, "after the restore\n");
    echo_round(&mut in_w, &mut out_r, "and again\n");
    drop(in_w);
    let mut rest = Vec::new();
    out_r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    wait_for("the child to exit", Duration::from_secs(10), || dead(pid));
}

/// A Python parent with a child from subprocess.Popen(stdin=PIPE,
/// stdout=PIPE) (tests/progs/popen.py); only the child is dumped. The test
/// holds an end of each of its two pipes across the dump (the other ends
/// stay with Python) and gives them back with --inherit-fd N:fd:PID:FD:
/// the Python parent talks to the restored child through its original Popen
/// pipes, and closing its stdin ends the child.
#[test]
fn python_popen_child_keeps_its_parents_pipes() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let script = repo().join("tests/progs/popen.py");
    let mut py = Command::new("python3")
        .arg(&script)
        .args([extio().as_str(), d.as_str()])
        .stdin(Stdio::null())
        .stdout(log(dir.path()))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let mut reap = Reap(vec![py.id() as i32]);
    let child = dir.path().join("child");
    wait_for(
        "the Python parent to talk to its child",
        Duration::from_secs(20),
        || child.exists(),
    );
    let pid = read_int(&child) as i32;
    reap.0.push(pid);
    let stdin_r: OwnedFd = std::fs::File::open(format!("/proc/{pid}/fd/0"))
        .unwrap()
        .into();
    let stdout_w: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/fd/1"))
        .unwrap()
        .into();
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    key_of(&v, pid, 0, "pipe read end");
    key_of(&v, pid, 1, "pipe write end");
    wait_for(
        "Python to reap its dumped child",
        Duration::from_secs(10),
        || gone(pid),
    );
    let err = restore_ok(
        &img,
        &[
            "--inherit-fd",
            &format!("3:fd:{pid}:0"),
            "--inherit-fd",
            &format!("4:fd:{pid}:1"),
        ],
        &[(3, &stdin_r), (4, &stdout_w)],
        pid,
    );
    assert!(!err.contains("warning"), "{err}");
    drop((stdin_r, stdout_w));
    std::fs::write(dir.path().join("go"), "").unwrap();
    let result = dir.path().join("result");
    wait_for("Python's verdict", Duration::from_secs(20), || {
        result.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&result).unwrap().trim(),
        "PASS",
        "{}",
        std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
    );
    assert!(py.wait().unwrap().success());
    wait_for("the child to exit", Duration::from_secs(10), || dead(pid));
}

/// A unix stream socket whose peer the launcher (the test) keeps, used as
/// the child's stdin and stdout (one open file description): restored with
/// --inherit-fd from a socketpair the test provides; both fds share the new
/// socket and the test talks to it.
#[test]
fn unix_socket_peer_outside_restored_with_inherited_socket() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = Command::new(extio())
        .args([d.as_str(), "echo"])
        .stdin(Stdio::from(OwnedFd::from(a.try_clone().unwrap())))
        .stdout(Stdio::from(OwnedFd::from(a)))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    let mut b2 = b.try_clone().unwrap();
    echo_round(&mut b, &mut b2, "before\n");
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 0, "unix stream socket");
    assert_eq!(key_of(&v, pid, 1, "unix stream socket"), key);
    child.wait().unwrap();
    drop((b, b2));
    let (c, mut e) = std::os::unix::net::UnixStream::pair().unwrap();
    let c = OwnedFd::from(c);
    let err = restore_ok(
        &img,
        &["--inherit-fd", &format!("3:{key}")],
        &[(3, &c)],
        pid,
    );
    assert!(!err.contains("warning"), "{err}");
    drop(c);
    let l0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    let l1 = std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    assert_eq!(l0, l1, "one socket for both fds");
    let mut e2 = e.try_clone().unwrap();
    echo_round(&mut e, &mut e2, "after the restore\n");
    e.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("the child to exit", Duration::from_secs(10), || dead(pid));
}

/// --inherit-fd into a new PID namespace (where godwit's own PID does not
/// exist): the descriptor still arrives (SCM_RIGHTS).
#[test]
fn inherited_socket_in_a_new_pid_namespace() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut child = Command::new(extio())
        .args([d.as_str(), "echo"])
        .stdin(Stdio::from(OwnedFd::from(a.try_clone().unwrap())))
        .stdout(Stdio::from(OwnedFd::from(a)))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let mut reap = Reap(vec![pid]);
    let mut b2 = b.try_clone().unwrap();
    echo_round(&mut b, &mut b2, "before\n");
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 0, "unix stream socket");
    child.wait().unwrap();
    drop((b, b2));
    let (c, mut e) = std::os::unix::net::UnixStream::pair().unwrap();
    let c = OwnedFd::from(c);
    let out = godwit_with(
        &[
            "--json",
            "restore",
            "--pid-ns",
            "--images",
            img.to_str().unwrap(),
            "--inherit-fd",
            &format!("3:{key}"),
        ],
        &[(3, &c)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let host = r["host_pid"].as_i64().unwrap() as i32;
    reap.0.push(host);
    if let Some(init) = r["ns_init"].as_i64() {
        reap.0.push(init as i32);
    }
    assert_eq!(r["externals"][0]["inherited_from"], 3, "{r}");
    drop(c);
    let mut e2 = e.try_clone().unwrap();
    echo_round(&mut e, &mut e2, "in the namespace\n");
    e.shutdown(std::net::Shutdown::Write).unwrap();
    wait_for("the child to exit", Duration::from_secs(10), || dead(host));
}

/// --inherit-fd naming something the image does not have, or giving a pipe's
/// write end for a read end, is a usage error (exit 2; the first lists the
/// keys the image has), and creates nothing.
#[test]
fn inherit_fd_for_an_unknown_key_is_refused() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let (r, w) = std::io::pipe().unwrap();
    let mut child = Command::new(extio())
        .args([d.as_str(), "reader", ""])
        .stdin(Stdio::from(OwnedFd::from(r)))
        .stdout(log(dir.path()))
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let _reap = Reap(vec![pid]);
    let img = dir.path().join("img");
    let v = dump_json(pid, &img);
    let key = key_of(&v, pid, 0, "pipe read end");
    child.wait().unwrap();
    let out = godwit_with(
        &[
            "restore",
            "--images",
            img.to_str().unwrap(),
            "--inherit-fd",
            "0:pipe:[1]",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&key), "{err}");
    // The write end of a pipe given for a read end.
    let (_r2, w2) = std::io::pipe().unwrap();
    let w2 = OwnedFd::from(w2);
    let out = godwit_with(
        &[
            "restore",
            "--images",
            img.to_str().unwrap(),
            "--inherit-fd",
            &format!("3:{key}"),
        ],
        &[(3, &w2)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("open for reading"), "{err}");
    assert!(gone(pid));
    drop(w);
}

/// Tells the program in `dir` to go on (DIR/go) and returns its verdict.
fn go_and_verdict(dir: &Path) -> String {
    std::fs::write(dir.join("go"), "").unwrap();
    let result = dir.join("result");
    wait_for("the verdict", Duration::from_secs(20), || result.exists());
    std::fs::read_to_string(result).unwrap().trim().to_string()
}

/// `sh -c 'extio writer | cat > out'` with both ends given (`dump --pid
/// WRITER --pid CAT`): one image, the pipe between them inside it (no
/// descriptor listed as connected outside), restored as one pipe again
/// (both fds name the same pipe), and cat receives every line, none lost
/// or repeated, through the dump. Dumped one by one, the pipe would be
/// outside each image and become /dev/null and end of file.
#[test]
fn both_ends_of_a_pipeline_dumped_together_keep_their_pipe() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{launch}' '{}' '{d}' writer | '{launch}' sh -c 'echo $$ > \"{d}/catpid\"; exec cat > \"{d}/out\"'",
            extio(),
            launch = progs().join("launch").display()
        ))
        .stdin(Stdio::null())
        .stderr(log(dir.path()))
        .spawn()
        .unwrap();
    let pid = wait_ready(dir.path());
    let cat = read_int(&dir.path().join("catpid")) as i32;
    let mut reap = Reap(vec![pid, cat]);
    let img = dir.path().join("img");
    let out = godwit_ok(&[
        "--json",
        "dump",
        "--pid",
        &pid.to_string(),
        "--pid",
        &cat.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["roots"], serde_json::json!([pid, cat]), "{v}");
    assert_eq!(v["externals"], serde_json::json!([]), "{v}");
    wait_for(
        "the dumped processes to be gone",
        Duration::from_secs(10),
        || gone(pid) && gone(cat),
    );
    // The shell saw both exit.
    let _ = sh.wait();
    let at_dump = read_int(&dir.path().join("count"));
    let out = godwit_with(&["restore", "--images", img.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "restore failed: {err}");
    assert!(!err.contains("warning"), "no stand-in expected: {err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{pid}\n{cat}")
    );
    let link = |p: i32, fd: i32| std::fs::read_link(format!("/proc/{p}/fd/{fd}")).unwrap();
    let pipe = link(pid, 1);
    assert!(pipe.to_str().unwrap().starts_with("pipe:["), "{pipe:?}");
    assert_eq!(link(cat, 0), pipe, "the writer and cat hold one pipe again");
    // Both are siblings again: neither is the other's parent.
    assert_ne!(ppid_of(cat), Some(pid));
    let count = dir.path().join("count");
    wait_for(
        "lines written after the restore",
        Duration::from_secs(20),
        || read_int(&count) > at_dump + 100,
    );
    assert!(!dir.path().join("error").exists(), "a write failed");
    // The writer ends: cat sees end of file and exits by itself.
    // SAFETY: kill the restored writer (our child, as we are a subreaper).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(reaped(pid));
    assert!(reaped(cat), "cat did not see the end of its pipe");
    reap.0.clear();
    let text = std::fs::read_to_string(dir.path().join("out")).unwrap();
    let lines: Vec<i64> = text.lines().map(|l| l.parse().unwrap()).collect();
    for (i, n) in lines.iter().enumerate() {
        assert_eq!(*n, i as i64, "line {i} of cat's output: lost or repeated");
    }
    assert!(
        lines.len() as i64 > at_dump + 100,
        "{} lines, {at_dump} at the dump",
        lines.len()
    );
}

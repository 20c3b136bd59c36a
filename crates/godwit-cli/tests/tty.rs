//! Terminals: a pty whose master is inside the dumped tree (script(1)), a
//! shell job on a terminal made by the test (dump and restore --shell-job),
//! and a terminal that is refused (/dev/console).

mod common;
use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn test_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("godwit-tty")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn wait_ready(p: &Proc) {
    let ready = p.path("ready");
    let pid = p.pid;
    wait_for("the program to be ready", Duration::from_secs(20), || {
        ready.exists() || dead(pid)
    });
    assert!(ready.exists(), "exited before ready: {}", p.output());
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A pty made by the test: the master, and the slave until it is given away.
struct Pty {
    master: File,
    slave: Option<OwnedFd>,
    path: String,
    seen: String,
}

impl Pty {
    fn open() -> Pty {
        // SAFETY: open/ioctl with valid arguments; the descriptors returned
        // are owned right away.
        unsafe {
            let m = libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
            );
            assert!(m >= 0, "open /dev/ptmx");
            let master = File::from_raw_fd(m);
            let unlock: libc::c_int = 0;
            assert_eq!(libc::ioctl(m, libc::TIOCSPTLCK, &unlock), 0);
            let mut n: libc::c_uint = 0;
            assert_eq!(libc::ioctl(m, libc::TIOCGPTN, &mut n), 0);
            let path = format!("/dev/pts/{n}");
            let cpath = std::ffi::CString::new(path.clone()).unwrap();
            let s = libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            assert!(s >= 0, "open {path}");
            Pty {
                master,
                slave: Some(OwnedFd::from_raw_fd(s)),
                path,
                seen: String::new(),
            }
        }
    }

    fn set_winsize(&self, rows: u16, cols: u16) {
        let w = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one struct winsize from a valid pointer.
        let r = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &w) };
        assert_eq!(r, 0);
    }

    /// The slave as a Stdio, for a child's fds 0-2.
    fn slave_stdio(&self) -> Stdio {
        Stdio::from(self.slave.as_ref().unwrap().try_clone().unwrap())
    }

    fn send(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Reads the master until `needle` appears after what was seen before;
    /// returns the text from there to the end of its line.
    fn expect(&mut self, needle: &str) -> String {
        let t0 = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(at) = self.seen.find(needle) {
                let rest = self.seen[at..].to_string();
                let line = rest.lines().next().unwrap_or("").trim_end().to_string();
                self.seen = rest[needle.len()..].to_string();
                return line;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "timed out waiting for {needle:?} on {}; saw {:?}",
                self.path,
                self.seen
            );
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Makes the child the leader of a new session whose controlling terminal
/// is its standard input (as a terminal emulator or sshd starts a shell).
fn new_session_on_stdin(cmd: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `script` holds the master of a pty; the program on its slave, in the
/// session script made for it, reads lines and answers them. The tree
/// (sh → ttyfeed | script → sh → ttyecho) is dumped and restored; the
/// program keeps its terminal settings, window size, controlling terminal
/// and foreground process group, and goes on answering.
#[test]
fn pty_inside_the_tree_under_script() {
    let dir = test_dir();
    let input = dir.path().join("in");
    std::fs::write(&input, "").unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let cmd = format!(
        "{} {} | SHELL=/bin/sh script -q -c '{} {d} session; exit' /dev/null",
        progs().join("ttyfeed").display(),
        input.display(),
        progs().join("ttyecho").display(),
    );
    let mut p = Proc::spawn_in(dir, "sh", &["-c", &cmd]);
    wait_ready(&p);
    p.tree = descendants(p.pid);
    let send = |line: &str| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&input)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let expect = |p: &Proc, needle: &str| {
        wait_for(needle, Duration::from_secs(20), || {
            p.output().contains(needle)
        });
    };
    send("hello");
    expect(&p, "got: hello");

    let v = p.dump(&[]);
    assert_eq!(v["processes"], 5, "{v}");
    let img = p.images();
    let info = godwit_ok(&["--json", "inspect", img.to_str().unwrap()]);
    assert!(
        info.contains("/dev/ptmx"),
        "the master is in the image: {info}"
    );
    p.end_original();
    p.restore();

    send("again");
    expect(&p, "got: again");
    send("check");
    let v = p.verdict();
    assert_eq!(v, "PASS", "after restore: {}", p.output());
    expect(&p, "verdict: PASS size 37x101");
}

/// A program started on a terminal whose master the test holds (like a
/// shell job in a terminal emulator): refused without --shell-job, dumped
/// with it, and restored with `restore --shell-job` run on another terminal,
/// where it answers; it is in godwit's session and in the foreground.
#[test]
fn shell_job() {
    let dir = test_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let mut a = Pty::open();
    a.set_winsize(24, 80);
    let mut cmd = Command::new(progs().join("launch"));
    cmd.arg(progs().join("ttyecho"))
        .args([d.as_str(), "shell"])
        .stdin(a.slave_stdio())
        .stdout(a.slave_stdio())
        .stderr(a.slave_stdio());
    new_session_on_stdin(&mut cmd);
    let child = cmd.spawn().unwrap();
    drop(cmd);
    a.slave = None;
    let pid = child.id() as i32;
    let mut p = Proc {
        child: Some(child),
        pid,
        tree: Vec::new(),
        dir,
        affinity: Vec::new(),
    };
    wait_ready(&p);
    a.send("hello");
    a.expect("got: hello");

    // Without --shell-job: refused, saying what and what to do.
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    for needle in [
        format!("process {pid}"),
        "fd 0".to_string(),
        a.path.clone(),
        "--shell-job".to_string(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing in: {err}");
    }
    a.send("still");
    a.expect("got: still");

    p.dump(&["--shell-job"]);
    p.end_original();
    drop(a);

    // An image of a shell job needs --shell-job, and a terminal on stdin.
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("--shell-job"),
        "{}",
        stderr_of(&out)
    );
    let out = godwit(&["restore", "--shell-job", "--images", img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("not a terminal"),
        "{}",
        stderr_of(&out)
    );
    assert!(gone(pid), "a refused restore left a process");

    // The caller: a session on terminal B (godwit leads it here, as a shell
    // would run it in the foreground).
    let mut b = Pty::open();
    b.set_winsize(50, 132);
    let errlog = p.path("restore.err");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_godwit"));
    cmd.args(["restore", "--shell-job", "--images", img.to_str().unwrap()])
        .stdin(b.slave_stdio())
        .stdout(Stdio::piped())
        .stderr(File::create(&errlog).unwrap());
    new_session_on_stdin(&mut cmd);
    let mut restore = cmd.spawn().unwrap();
    drop(cmd);
    b.slave = None;
    let mut first = String::new();
    let mut stdout = restore.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while !first.ends_with('\n') && stdout.read(&mut byte).unwrap_or(0) == 1 {
        first.push(byte[0] as char);
    }
    assert_eq!(
        first.trim(),
        pid.to_string(),
        "restore printed the PID; stderr: {}",
        std::fs::read_to_string(&errlog).unwrap_or_default()
    );
    b.send("hello again");
    b.expect("got: hello again");
    b.send("check");
    let verdict = b.expect("verdict:");
    assert_eq!(
        verdict,
        format!("verdict: PASS size 50x132 on {}", b.path),
        "stderr: {}",
        std::fs::read_to_string(&errlog).unwrap_or_default()
    );
    assert_eq!(p.verdict(), "PASS");
    // godwit stays in the foreground while the process runs.
    assert!(restore.try_wait().unwrap().is_none(), "godwit left early");
    // SAFETY: plain kill of the process we restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = restore.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "godwit did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "godwit restore --shell-job: {status}");
    wait_for(
        "the restored process to be reaped",
        Duration::from_secs(10),
        || reaped(pid),
    );

    // --leave-termios: the caller's terminal keeps its own settings (echo
    // on), which the program notices.
    let mut c = Pty::open();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_godwit"));
    cmd.args([
        "restore",
        "--shell-job",
        "--leave-termios",
        "--images",
        img.to_str().unwrap(),
    ])
    .stdin(c.slave_stdio())
    .stdout(Stdio::null())
    .stderr(File::create(&errlog).unwrap());
    new_session_on_stdin(&mut cmd);
    let mut restore = cmd.spawn().unwrap();
    drop(cmd);
    c.slave = None;
    c.send("check");
    let verdict = c.expect("verdict:");
    assert_eq!(
        verdict,
        "verdict: FAIL: ECHO is on again",
        "stderr: {}",
        std::fs::read_to_string(&errlog).unwrap_or_default()
    );
    // SAFETY: plain kill of the process we restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    restore.wait().unwrap();
}

/// A process that had no controlling terminal (and does not lead its
/// session) does not keep the one it inherits from a godwit whose session
/// has one.
#[test]
fn no_controlling_terminal_stays_none() {
    let dir = test_dir();
    let d = dir.path().to_str().unwrap().to_string();
    let script = format!(
        "{} /dev/null & echo $! > {d}/pid; wait",
        progs().join("ttyfeed").display()
    );
    let mut cmd = Command::new(progs().join("launch"));
    cmd.args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut holder = cmd.spawn().unwrap();
    let pid_file = dir.path().join("pid");
    wait_for("the pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let tty_nr = |pid: i32| -> i64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[4].parse().unwrap()
    };
    wait_for("ttyfeed to run", Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("ttyfeed"))
    });
    assert_eq!(tty_nr(pid), 0, "started without a controlling terminal");
    let mut p = Proc {
        child: None,
        pid,
        tree: Vec::new(),
        dir,
        affinity: Vec::new(),
    };
    p.dump(&[]);
    holder.wait().unwrap();
    wait_for("the PID to be free", Duration::from_secs(10), || gone(pid));

    // godwit runs in a session whose controlling terminal is B.
    let b = Pty::open();
    let restored = p.path("restored");
    let img = p.images();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "{} restore --images {} > {} 2>&1; exec sleep 60",
            env!("CARGO_BIN_EXE_godwit"),
            img.display(),
            restored.display()
        ),
    ])
    .stdin(b.slave_stdio())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    new_session_on_stdin(&mut cmd);
    let mut shell = cmd.spawn().unwrap();
    drop(cmd);
    wait_for("the restore", Duration::from_secs(20), || {
        std::fs::read_to_string(&restored).is_ok_and(|s| s.ends_with('\n'))
    });
    let out = std::fs::read_to_string(&restored).unwrap();
    assert_eq!(out.trim(), pid.to_string(), "restore output: {out}");
    assert_ne!(tty_nr(shell.id() as i32), 0, "the caller has a terminal");
    assert_eq!(tty_nr(pid), 0, "the restored process has none");
    let _ = shell.kill();
    shell.wait().unwrap();
}

/// A terminal other than a pty (here /dev/console) stops the dump with a
/// message naming the PID, the fd and the device; the process goes on.
#[test]
fn console_is_refused() {
    let p = Proc::spawn("sh", &["-c", "exec sleep 1000 3</dev/console"]);
    let pid = p.pid;
    wait_for("sleep to hold the console", Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|l| l.ends_with("console"))
    });
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    for needle in [&format!("process {pid}"), "fd 3", "/dev/console"] {
        assert!(err.contains(needle), "{needle:?} missing in: {err}");
    }
    // Just released, it may still be on its way back into nanosleep.
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    wait_for("sleep to sleep again", Duration::from_secs(5), || {
        status().contains("State:\tS")
    });
    let status = status();
    assert!(
        status.contains("State:\tS") && status.contains("TracerPid:\t0"),
        "the process runs on, untraced: {status}"
    );
}

/// A program whose fds 0-2 are the slave of a pty the test holds the master
/// of (someone else's terminal; the program does not lead its session): the
/// dump needs --shell-job, and a restore without --shell-job needs
/// `--inherit-fd N:tty:[MAJOR:MINOR]`, which puts godwit's fd N (here the
/// slave of another pty) in the place of every fd that was on it.
#[test]
fn terminal_outside_the_tree_by_inherit_fd() {
    let dir = test_dir();
    let mut a = Pty::open();
    let mut cmd = Command::new(progs().join("launch"));
    cmd.args(["sh", "-c", "while read l; do echo \"got: $l\"; done"])
        .stdin(a.slave_stdio())
        .stdout(a.slave_stdio())
        .stderr(a.slave_stdio());
    let child = cmd.spawn().unwrap();
    drop(cmd);
    a.slave = None;
    let pid = child.id() as i32;
    let mut p = Proc {
        child: Some(child),
        pid,
        tree: Vec::new(),
        dir,
        affinity: Vec::new(),
    };
    a.send("hello");
    a.expect("got: hello");
    let minor: u32 = a.path.strip_prefix("/dev/pts/").unwrap().parse().unwrap();
    let key = format!("tty:[136:{minor}]");

    // Without --shell-job the dump is refused and says what to do.
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    for needle in ["fd 0", a.path.as_str(), "--shell-job", "--inherit-fd"] {
        assert!(err.contains(needle), "{needle:?} missing in: {err}");
    }
    // The dump names the key to give.
    let v = p.dump(&["--shell-job"]);
    let terminals = v["terminals"]
        .as_array()
        .expect("terminals in the dump's JSON");
    assert!(
        terminals
            .iter()
            .any(|t| t["fd"] == 0 && t["key"] == key.as_str() && t["terminal"] == a.path.as_str()),
        "{v}"
    );
    p.end_original();
    drop(a);

    // Neither --shell-job nor --inherit-fd: refused, naming the key.
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        format!("process {pid} fd 0"),
        format!("--inherit-fd N:{key}"),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing in: {err}");
    }
    // A descriptor that is no terminal (godwit's stdin is /dev/null here)
    // is refused for it; the terminal named by one of its fds.
    let out = godwit(&[
        "restore",
        "--inherit-fd",
        &format!("0:fd:{pid}:1"),
        "--images",
        img.to_str().unwrap(),
    ]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs a terminal"), "{err}");
    assert!(gone(pid), "a refused restore left a process");

    // godwit's fd 0 is the slave of B (godwit is not in B's session).
    let mut b = Pty::open();
    let out = Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args([
            "restore",
            "--inherit-fd",
            &format!("0:{key}"),
            "--images",
            img.to_str().unwrap(),
        ])
        .stdin(b.slave_stdio())
        .output()
        .unwrap();
    b.slave = None;
    assert!(out.status.success(), "restore: {}", stderr_of(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pid.to_string());
    for fd in 0..3 {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert_eq!(link.to_str().unwrap(), b.path, "fd {fd}");
    }
    b.send("hello again");
    b.expect("got: hello again");
    // SAFETY: plain kill of the process we restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(
        "the restored process to be reaped",
        Duration::from_secs(10),
        || reaped(pid),
    );
}

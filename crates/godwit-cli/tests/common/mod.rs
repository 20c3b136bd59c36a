//! The end-to-end harness: builds the C test programs with gcc, starts real
//! processes, drives the `godwit` binary on them, and cleans up (killing and
//! reaping every process it started or restored) even when a test fails.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles every tests/progs/*.c once per test binary; returns the bin dir.
pub fn progs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The restored processes are re-parented to us, so we can reap them.
        // SAFETY: plain integer prctl on ourselves.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let src = repo().join("tests/progs");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("progs");
        std::fs::create_dir_all(&out).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("c") {
                continue;
            }
            let bin = out.join(p.file_stem().unwrap());
            let st = Command::new("gcc")
                .args(["-O1", "-g", "-Wall", "-o"])
                .arg(&bin)
                .arg(&p)
                .arg("-lpthread")
                .status()
                .expect("gcc must be installed");
            assert!(st.success(), "compiling {}", p.display());
        }
        out
    })
}

pub fn godwit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running godwit")
}

pub fn godwit_ok(args: &[&str]) -> String {
    let out = godwit(args);
    assert!(
        out.status.success(),
        "godwit {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Reaps `pid` if it is a dead child of ours (restored processes are, via
/// the subreaper) and waits until the PID is free.
pub fn reaped(pid: i32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        // SAFETY: non-blocking waitpid on one PID; harmless if not our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A process under test; kills and reaps it (and what was restored from it) on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub pid: i32,
    pub dir: tempfile::TempDir,
}

impl Proc {
    /// Starts `program args...` through the `launch` wrapper (no inherited fds).
    pub fn spawn(program: &str, args: &[&str]) -> Proc {
        let dir = tempfile::Builder::new().prefix("godwit-e2e").tempdir().unwrap();
        Self::spawn_in(dir, program, args)
    }

    pub fn spawn_in(dir: tempfile::TempDir, program: &str, args: &[&str]) -> Proc {
        let log = std::fs::File::create(dir.path().join("out")).unwrap();
        let child = Command::new(progs().join("launch"))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        Proc {
            child: Some(child),
            pid,
            dir,
        }
    }

    /// Starts a tests/progs program with the test directory as its argument.
    pub fn test_prog(name: &str) -> Proc {
        let dir = tempfile::Builder::new().prefix("godwit-e2e").tempdir().unwrap();
        // The attrs program drops to uid 2000: let it write its result.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let prog = progs().join(name);
        let mut p = Self::spawn_in(dir, prog.to_str().unwrap(), &[&d]);
        let ready = p.path("ready");
        let pid = p.pid;
        wait_for(&format!("{name} to be ready"), Duration::from_secs(20), || {
            ready.exists() || gone(pid)
        });
        assert!(ready.exists(), "{name} exited before ready: {}", p.output());
        p.pid = pid;
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn images(&self) -> PathBuf {
        self.path("img")
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.path("out")).unwrap_or_default()
    }

    /// Reaps the original process after a dump ended it (or kills it first).
    pub fn end_original(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let pid = self.pid;
        wait_for("the original PID to be free", Duration::from_secs(10), || gone(pid));
    }

    /// Restores the image and checks the new process has the same PID.
    pub fn restore(&mut self) {
        let img = self.images();
        let out = godwit_ok(&["restore", "--images", img.to_str().unwrap()]);
        assert_eq!(out.trim(), self.pid.to_string(), "restore printed the PID");
        assert!(!gone(self.pid), "restored process is not running");
    }

    /// Tells the test program to verify itself and returns its verdict.
    pub fn verdict(&self) -> String {
        std::fs::write(self.path("go"), "").unwrap();
        let result = self.path("result");
        wait_for("the program's verdict", Duration::from_secs(30), || {
            result.exists() || gone(self.pid)
        });
        // A process that exited may have written its result just before.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(&result)
            .unwrap_or_else(|_| format!("NO RESULT (process gone); output: {}", self.output()))
            .trim()
            .to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        } else if !gone(self.pid) {
            // SAFETY: plain integer kill/waitpid on a PID we restored.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        } else {
            // SAFETY: reap a zombie child (restored processes are ours via the subreaper).
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
    }
}

/// dump (+ --leave-running) → restore → verify, for a tests/progs program.
pub fn round_trip(name: &str, leave_running: bool) {
    let mut p = Proc::test_prog(name);
    let img = p.images();
    let pid = p.pid.to_string();
    let mut args = vec!["dump", "--pid", &pid, "--images", img.to_str().unwrap()];
    if leave_running {
        args.push("--leave-running");
    }
    godwit_ok(&args);
    if leave_running {
        assert!(!gone(p.pid), "--leave-running ended the process");
    }
    p.end_original();
    p.restore();
    let v = p.verdict();
    assert_eq!(v, "PASS", "{name} (leave_running={leave_running}) after restore: {v}; output: {}", p.output());
}

//! The processes the benchmark dumps: a small C program compiled at run time
//! (see `target.c`), and the bookkeeping that makes sure each one is killed
//! and reaped whatever happens.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE: &str = include_str!("target.c");

/// How long a target may take to fill its memory and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a target may take to check its memory after SIGUSR1.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);

/// Compiles the target program into `dir`; returns the executable's path.
pub fn compile(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("target.c");
    std::fs::write(&src, SOURCE).with_context(|| format!("writing {}", src.display()))?;
    let bin = dir.join("godwit-bench-target");
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running gcc (the benchmark compiles its target program; apt-get install gcc)")?;
    if !out.status.success() {
        bail!(
            "gcc could not compile the target program ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(bin)
}

/// One target process. Dropping it kills and reaps the process it stands for
/// (the original, or the restored one after [`Target::adopt`]).
pub struct Target {
    pub pid: i32,
    /// Address and length of its big memory region.
    pub addr: u64,
    pub len: u64,
    result: PathBuf,
    running: bool,
}

impl Target {
    /// A process holding `mib` MiB of dirty anonymous memory, every 8-byte
    /// word distinct, that checks its memory on SIGUSR1.
    pub fn hold(bin: &Path, dir: &Path, mib: u64, tag: &str) -> Result<Target> {
        let result = dir.join(format!("result-{tag}"));
        let ready = dir.join(format!("ready-{tag}"));
        let mut cmd = Command::new(bin);
        cmd.arg("hold")
            .arg(mib.to_string())
            .arg(&ready)
            .arg(&result);
        Target::spawn(cmd, ready, result)
    }

    /// A tree of `n` processes holding `mib` MiB of dirty memory each.
    pub fn tree(bin: &Path, dir: &Path, n: u32, mib: u64, tag: &str) -> Result<Target> {
        let ready = dir.join(format!("ready-{tag}"));
        let mut cmd = Command::new(bin);
        cmd.arg("tree")
            .arg(n.to_string())
            .arg(mib.to_string())
            .arg(&ready);
        Target::spawn(cmd, ready, PathBuf::new())
    }

    /// A process with `n` separate one-page mappings.
    pub fn vmas(bin: &Path, dir: &Path, n: u32, tag: &str) -> Result<Target> {
        let ready = dir.join(format!("ready-{tag}"));
        let mut cmd = Command::new(bin);
        cmd.arg("vmas").arg(n.to_string()).arg(&ready);
        Target::spawn(cmd, ready, PathBuf::new())
    }

    /// A process holding `mib` MiB of mapped but never touched memory
    /// (`thp`: with MADV_HUGEPAGE), to measure writes into fresh memory.
    pub fn sink(bin: &Path, dir: &Path, mib: u64, thp: bool, tag: &str) -> Result<Target> {
        let ready = dir.join(format!("ready-{tag}"));
        let mut cmd = Command::new(bin);
        cmd.arg("sink").arg(mib.to_string()).arg(&ready);
        if thp {
            cmd.arg("thp");
        }
        Target::spawn(cmd, ready, PathBuf::new())
    }

    /// Starts `cmd` (a target mode of its own) and waits for its READY file.
    pub fn spawn_cmd(cmd: Command, ready: PathBuf, result: PathBuf) -> Result<Target> {
        Target::spawn(cmd, ready, result)
    }

    fn spawn(mut cmd: Command, ready: PathBuf, result: PathBuf) -> Result<Target> {
        let _ = std::fs::remove_file(&ready);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the target program")?;
        let mut t = Target {
            pid: child.id() as i32,
            addr: 0,
            len: 0,
            result,
            running: true,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let mut it = text.split_whitespace().map(str::parse::<u64>);
                match (it.next(), it.next()) {
                    (Some(Ok(addr)), Some(Ok(len))) => {
                        t.addr = addr;
                        t.len = len;
                        return Ok(t);
                    }
                    _ => bail!("the target wrote a malformed ready file: {text:?}"),
                }
            }
            if let Some(status) = child.try_wait().context("waiting for the target")? {
                t.running = false;
                bail!("the target program exited ({status}) before it was ready");
            }
            if t0.elapsed() > READY_TIMEOUT {
                bail!("the target program was not ready after {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// After a dump that ended the process: collect it and wait until its PID is free.
    pub fn ended_by_dump(&mut self) {
        self.running = false;
        reap(self.pid);
    }

    /// The process now running under our PID is the restored one; it is our
    /// child because we are a subreaper.
    pub fn adopt(&mut self, pid: i32) {
        self.pid = pid;
        self.running = true;
    }

    /// Has the process check every word of its memory (SIGUSR1); fails unless
    /// it reports that all are as written.
    pub fn check(&self) -> Result<()> {
        let _ = std::fs::remove_file(&self.result);
        signal(self.pid, libc::SIGUSR1).context("asking the target to check its memory")?;
        let t0 = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.result) {
                if text.starts_with("OK") {
                    return Ok(());
                }
                bail!(
                    "process {} found its memory corrupted: {}",
                    self.pid,
                    text.trim()
                );
            }
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                bail!("process {} died while checking its memory", self.pid);
            }
            if t0.elapsed() > CHECK_TIMEOUT {
                bail!(
                    "process {} did not answer SIGUSR1 within {CHECK_TIMEOUT:?}: it is not running properly",
                    self.pid
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.running {
            let _ = signal(self.pid, libc::SIGKILL);
            reap(self.pid);
        }
    }
}

fn signal(pid: i32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill has no memory arguments.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Collects `pid` if it is our child (ECHILD if a tracer already did, or if
/// it is not ours), then waits until /proc no longer shows it.
pub fn reap(pid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break;
    }
    wait_gone(pid, Duration::from_secs(10));
}

/// Waits until /proc/PID is gone (a zombie still has one).
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let path = format!("/proc/{pid}");
    let t0 = Instant::now();
    while Path::new(&path).exists() {
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Collects any exited child we have not collected yet (a stub left by a
/// failed restore is re-parented to us).
pub fn reap_strays() {
    loop {
        let mut status = 0;
        // SAFETY: valid out-pointer; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
        if r <= 0 {
            break;
        }
    }
}

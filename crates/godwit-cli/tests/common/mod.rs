//! The end-to-end harness: builds the C test programs with gcc, starts real
//! processes, drives the `godwit` binary on them, and cleans up (killing and
//! reaping every process it started or restored) even when a test fails.
#![allow(dead_code)]

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

/// Gone, or a zombie (not a process whose main thread alone has exited:
/// it shows Z too while its other threads run).
pub fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
                && std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) <= 1
        }
        Err(_) => true,
    }
}

/// All descendants of `pid` (not `pid` itself), children before their own children.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok())
            {
                out.push(k);
                queue.push(k);
            }
        }
    }
    out
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

/// The parent of `pid`, if it exists.
pub fn ppid_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// One line of /proc/sysvipc/shm: (key, shmid, cpid, lpid, nattch).
pub fn sysv_segments() -> Vec<(i32, i32, i32, i32, u64)> {
    std::fs::read_to_string("/proc/sysvipc/shm")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.parse().ok()?,
                f.get(1)?.parse().ok()?,
                f.get(4)?.parse().ok()?,
                f.get(5)?.parse().ok()?,
                f.get(6)?.parse().ok()?,
            ))
        })
        .collect()
}

/// Removes the SysV shared memory segments a dead tree left behind: not
/// attached any more, created or last attached/detached by one of `pids`
/// (what a user would do with ipcrm before restoring on the same host).
pub fn remove_leftover_segments(pids: &[i32]) {
    for (_, shmid, cpid, lpid, nattch) in sysv_segments() {
        if nattch == 0 && (pids.contains(&cpid) || pids.contains(&lpid)) {
            // SAFETY: IPC_RMID does not use the buffer pointer.
            unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
}

/// A process under test; kills and reaps it (and what was restored from it) on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub pid: i32,
    /// The descendants when the program said it was ready.
    pub tree: Vec<i32>,
    pub dir: tempfile::TempDir,
    /// Cpus_allowed_list of each thread of the root ("PID/task/TID"), as
    /// [`Proc::dump`] found it: a restore must give each its own back.
    pub affinity: Vec<(String, String)>,
}

impl Proc {
    /// Starts `program args...` through the `launch` wrapper (no inherited fds).
    pub fn spawn(program: &str, args: &[&str]) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("godwit-e2e")
            .tempdir()
            .unwrap();
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
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        Proc {
            child: Some(child),
            pid,
            tree: Vec::new(),
            dir,
            affinity: Vec::new(),
        }
    }

    /// Starts a tests/progs program with the test directory as its argument.
    pub fn test_prog(name: &str) -> Proc {
        Self::test_prog_with(name, &[])
    }

    /// [`test_prog`](Self::test_prog) with arguments after the directory.
    pub fn test_prog_with(name: &str, extra: &[&str]) -> Proc {
        Self::test_prog_as(None, name, extra)
    }

    /// [`test_prog_with`](Self::test_prog_with), run as `uid` (and its gid)
    /// when given, through setpriv.
    pub fn test_prog_as(uid: Option<u32>, name: &str, extra: &[&str]) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("godwit-e2e")
            .tempdir()
            .unwrap();
        // The attrs program drops to uid 2000: let it write its result.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let prog = progs().join(name);
        let prog = prog.to_str().unwrap();
        let ids = uid.map(|u| [format!("--reuid={u}"), format!("--regid={u}")]);
        let mut args: Vec<&str> = Vec::new();
        if let Some(ids) = &ids {
            args.extend([ids[0].as_str(), ids[1].as_str(), "--clear-groups", prog]);
        }
        args.push(d.as_str());
        args.extend_from_slice(extra);
        let program = if uid.is_some() { "setpriv" } else { prog };
        let mut p = Self::spawn_in(dir, program, &args);
        let ready = p.path("ready");
        let pid = p.pid;
        wait_for(
            &format!("{name} to be ready"),
            Duration::from_secs(20),
            || ready.exists() || dead(pid),
        );
        assert!(ready.exists(), "{name} exited before ready: {}", p.output());
        p.tree = descendants(pid);
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

    /// Reaps the original process after a dump ended it (or kills it, and
    /// all its descendants, first), and removes the SysV shared memory
    /// segments it left behind.
    pub fn end_original(&mut self) {
        let tree = self.end_original_leaving_segments();
        remove_leftover_segments(&tree);
    }

    /// [`Proc::end_original`] without removing SysV segments; returns the
    /// PIDs of the tree.
    pub fn end_original_leaving_segments(&mut self) -> Vec<i32> {
        let mut tree = std::mem::take(&mut self.tree);
        tree.extend(stop_tree(self.pid));
        tree.sort_unstable();
        tree.dedup();
        for pid in &tree {
            // SAFETY: plain kill of a PID in the tree we started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        // Reaping the root re-parents its children to us (the subreaper).
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &pid in &tree {
            wait_for(
                "a process of the original tree to be gone",
                Duration::from_secs(10),
                || reaped(pid),
            );
        }
        let pid = self.pid;
        wait_for(
            "the original PID to be free",
            Duration::from_secs(10),
            || gone(pid),
        );
        // The restore brings the same PIDs back: Drop ends those too.
        self.tree = tree.clone();
        tree.push(pid);
        tree
    }

    /// Restores the image and checks the new process has the same PID.
    pub fn restore(&mut self) {
        self.restore_with(&[]);
    }

    pub fn restore_with(&mut self, extra: &[&str]) {
        let img = self.images();
        let mut args = vec!["restore", "--images", img.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = godwit_ok(&args);
        assert_eq!(out.trim(), self.pid.to_string(), "restore printed the PID");
        assert!(!gone(self.pid), "restored process is not running");
        // Restore pins itself and the process to one CPU while it rebuilds
        // it: every thread must have been given its own CPUs back.
        for (task, before) in &self.affinity {
            let now = cpus_allowed(task);
            if now.is_empty() {
                continue; // the thread has exited since
            }
            assert_eq!(&now, before, "restored thread {task}: CPU affinity");
        }
    }

    /// Tells the test program to verify itself and returns its verdict.
    pub fn verdict(&self) -> String {
        std::fs::write(self.path("go"), "").unwrap();
        let result = self.path("result");
        wait_for("the program's verdict", Duration::from_secs(30), || {
            result.exists() || dead(self.pid)
        });
        // A process that exited may have written its result just before.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(&result)
            .unwrap_or_else(|_| format!("NO RESULT (process gone); output: {}", self.output()))
            .trim()
            .to_string()
    }
}

/// Stops (SIGSTOP) the process `root` and its descendants, again until no
/// new one appears, so that nothing forks (a pool replacing a worker) or
/// dies (orphaning its children) while the tree is listed and killed.
/// Returns the descendants.
pub fn stop_tree(root: i32) -> Vec<i32> {
    let mut stopped: Vec<i32> = Vec::new();
    for _ in 0..10 {
        let mut fresh: Vec<i32> = std::iter::once(root)
            .chain(descendants(root))
            .filter(|p| !stopped.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for &p in &fresh {
            // SAFETY: plain kill of a process of a tree a test started or restored.
            unsafe { libc::kill(p, libc::SIGSTOP) };
        }
        stopped.append(&mut fresh);
        std::thread::sleep(Duration::from_millis(2));
    }
    stopped.retain(|&p| p != root);
    stopped
}

/// The init of a PID namespace a restore made (`--pid-ns`): killed and
/// reaped on drop (it is ours via the subreaper), which ends every process
/// in the namespace.
pub struct NsInit(pub i32);

impl Drop for NsInit {
    fn drop(&mut self) {
        // SAFETY: kill and reap the namespace init we restored.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_tree(self.pid);
        let mut all: Vec<i32> = descendants(self.pid);
        all.extend(self.tree.iter().copied());
        all.push(self.pid);
        // What is left of the tree: descendants of the root, and processes
        // of the tree re-parented to us (the subreaper) when the root died.
        let me = std::process::id() as i32;
        let orphans: Vec<i32> = self
            .tree
            .iter()
            .copied()
            .filter(|p| ppid_of(*p) == Some(me))
            .collect();
        for pid in descendants(self.pid).into_iter().chain(orphans) {
            // SAFETY: kill and reap what is left of the tree we started or restored.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
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
        // SysV segments outlive their processes: remove the tree's, once
        // its processes are dead (a dying process detaches before that).
        let related = sysv_segments()
            .iter()
            .any(|&(_, _, cpid, lpid, _)| all.contains(&cpid) || all.contains(&lpid));
        if related {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) && !all.iter().all(|p| dead(*p)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            remove_leftover_segments(&all);
        }
    }
}

impl Proc {
    /// `godwit --json dump` of this process's tree (with `extra` flags);
    /// records the PIDs it took, so they can be ended and reaped.
    pub fn dump(&mut self, extra: &[&str]) -> serde_json::Value {
        let img = self.images();
        let pid = self.pid.to_string();
        let mut args = vec![
            "--json",
            "dump",
            "--pid",
            &pid,
            "--images",
            img.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.affinity = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .map(|d| {
                d.flatten()
                    .map(|t| {
                        let task = format!("{}/task/{}", self.pid, t.file_name().to_string_lossy());
                        let cpus = cpus_allowed(&task);
                        (task, cpus)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&godwit_ok(&args)).unwrap();
        for p in v["pids"].as_array().unwrap() {
            let p = p.as_i64().unwrap() as i32;
            if p != self.pid && !self.tree.contains(&p) {
                self.tree.push(p);
            }
        }
        v
    }
}

/// dump (+ --leave-running) → restore → verify, for a tests/progs program.
pub fn round_trip(name: &str, leave_running: bool) {
    round_trip_with(name, &[], &[], leave_running);
}

/// [`round_trip`] of test program `name` started with `args`, dumped with
/// `dump_args` too.
pub fn round_trip_with(name: &str, args: &[&str], dump_args: &[&str], leave_running: bool) {
    let mut p = Proc::test_prog_with(name, args);
    let mut all = dump_args.to_vec();
    if leave_running {
        all.push("--leave-running");
    }
    p.dump(&all);
    if leave_running {
        assert!(!gone(p.pid), "--leave-running ended the process");
    }
    p.end_original();
    p.restore();
    let v = p.verdict();
    assert_eq!(
        v,
        "PASS",
        "{name} {args:?} (leave_running={leave_running}) after restore: {v}; output: {}",
        p.output()
    );
}

/// Cpus_allowed_list of /proc/WHAT/status.
pub fn cpus_allowed(what: &str) -> String {
    std::fs::read_to_string(format!("/proc/{what}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// 2 MiB huge pages for the hugetlb tests (/proc/sys/vm/nr_hugepages).
#[allow(dead_code)]
pub mod hugepages {
    use std::sync::{Mutex, MutexGuard};

    const NR: &str = "/proc/sys/vm/nr_hugepages";
    const DIR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

    fn read(path: &str) -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// 2 MiB pages free and not reserved.
    pub fn available() -> u64 {
        read(&format!("{DIR}/free_hugepages"))
            .saturating_sub(read(&format!("{DIR}/resv_hugepages")))
    }

    /// Huge pages made available for a test (nr_hugepages raised if need
    /// be); puts nr_hugepages back as it was when dropped, also when the
    /// test fails. One at a time: the tests of this binary run in parallel.
    pub struct Reserved {
        saved: u64,
        _one: MutexGuard<'static, ()>,
    }

    static ONE: Mutex<()> = Mutex::new(());

    impl Reserved {
        pub fn at_least(pages: u64) -> Reserved {
            let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
            let saved = read(NR);
            let r = Reserved { saved, _one: one };
            // Only ever raised: never below what it was. Again while that
            // helps (pages in use as surplus become persistent ones first).
            for _ in 0..3 {
                let have = available();
                if have >= pages {
                    break;
                }
                std::fs::write(NR, (read(NR) + pages - have).to_string()).unwrap();
            }
            let have = available();
            assert!(
                have >= pages,
                "the kernel could not give the {pages} huge pages of 2 MiB this test needs: {have} available after raising {NR} from {saved} to {} (memory too small or too fragmented)",
                read(NR)
            );
            r
        }

        /// Back to what nr_hugepages was (pages in use stay, as surplus).
        pub fn release(&self) {
            let _ = std::fs::write(NR, self.saved.to_string());
        }
    }

    impl Drop for Reserved {
        fn drop(&mut self) {
            self.release();
        }
    }
}

/// The host PID of the godwitd serving data directory `data`.
pub fn godwitd_pid(data: &Path) -> Option<i32> {
    let data = data.to_str()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmd
            .split(|c| *c == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("/godwitd")) && args.iter().any(|a| a == data) {
            return Some(pid);
        }
    }
    None
}

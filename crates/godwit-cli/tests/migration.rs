//! `godwit migrate` between simulated hosts (scripts/cluster.sh: each host
//! its own network, PID and mount namespace, with its own godwitd): a live
//! process moves and continues; every failure before the switch-over leaves
//! it running at the source, and nothing half-alive at the destination.

mod common;

use common::{progs, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const PORT: u16 = 7431;
const TOKEN: &str = "migration-test-token-0123456789abcdef";

fn script() -> PathBuf {
    common::repo().join("scripts/cluster.sh")
}

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_godwit"))
        .parent()
        .unwrap()
        .join(name)
}

/// A simulated cluster of `n` hosts; torn down (every process of its hosts
/// ended) on drop.
struct Cluster {
    name: String,
    prefix: String,
    dir: tempfile::TempDir,
    agents: Vec<Option<Child>>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    fn up(n: usize) -> Cluster {
        progs();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() * 7 + seq) % 200;
        let name = format!("m{:05}", (std::process::id() * 16 + seq) % 100_000);
        let prefix = format!("10.214.{id}");
        let out = Command::new(script())
            .args(["up", &name, &n.to_string(), &prefix])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.stderr.is_empty() {
            eprintln!(
                "cluster.sh up {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("godwit-migration")
            .tempdir()
            .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Cluster {
            name,
            prefix,
            dir,
            agents: (0..n).map(|_| None).collect(),
        }
    }

    fn addr(&self, host: usize) -> String {
        format!("{}.{host}", self.prefix)
    }

    fn agent_addr(&self, host: usize) -> String {
        format!("{}:{PORT}", self.addr(host))
    }

    fn token(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    fn data(&self, host: usize) -> PathBuf {
        self.dir.path().join(format!("node{host}"))
    }

    fn exec(&self, host: usize) -> Command {
        let mut c = Command::new(script());
        c.args(["exec", &self.name, &host.to_string()]);
        c
    }

    fn run(&self, host: usize, args: &[&str]) -> Output {
        self.exec(host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sh(&self, host: usize, script: &str) -> String {
        let out = self.run(host, &["sh", "-c", script]);
        if !out.status.success() {
            let inits: Vec<String> = (1..=self.agents.len())
                .map(|h| {
                    let f = format!("/run/godwit-cluster/{}/n{h}.init", self.name);
                    let pid = std::fs::read_to_string(&f).unwrap_or_default();
                    let pid = pid.trim();
                    format!(
                        "host {h}: init {pid} {} {}",
                        std::fs::read_to_string(format!(
                            "/run/godwit-cluster/{}/n{h}.ended",
                            self.name
                        ))
                        .unwrap_or_default(),
                        std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .ok()
                            .and_then(|st| st
                                .lines()
                                .find(|l| l.starts_with("State"))
                                .map(str::to_string))
                            .unwrap_or_else(|| "gone".into())
                    )
                })
                .collect();
            panic!(
                "on host {host}: {script}: {}\ninits: {inits:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts godwitd on `host` (1-based) and waits until it serves.
    fn start_agent(&mut self, host: usize) {
        let mut child = self
            .exec(host)
            .arg(bin("godwitd"))
            .args(["--listen", &self.agent_addr(host), "--data"])
            .arg(self.data(host))
            .arg("--token-file")
            .arg(self.token())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.dir.path().join(format!("agent{host}.log"))).unwrap(),
            )
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("GODWITD_READY"), "godwitd said {line:?}");
        self.agents[host - 1] = Some(child);
    }

    /// The host PID of the godwitd serving `host`.
    fn agent_host_pid(&self, host: usize) -> i32 {
        common::godwitd_pid(&self.data(host))
            .unwrap_or_else(|| panic!("no godwitd for host {host}"))
    }

    /// Starts `program args` on `host` detached (re-parented to the host's
    /// init), with PID `pid` in the host's namespace; returns that PID.
    fn spawn_at(&self, host: usize, pid: u32, program: &Path, args: &[&str]) -> u32 {
        let launch = progs().join("launch");
        let mut cmd = format!(
            "echo {} > /proc/sys/kernel/ns_last_pid; {} {}",
            pid - 1,
            launch.display(),
            program.display()
        );
        for a in args {
            cmd.push(' ');
            cmd.push_str(a);
        }
        cmd.push_str(" </dev/null >/dev/null 2>&1 & echo $!");
        let got: u32 = self.sh(host, &cmd).trim().parse().unwrap();
        assert_eq!(got, pid, "the program did not get the PID asked for");
        got
    }

    /// Waits (5 s at most) until PID `pid` on `host` runs or sleeps (S or
    /// R), as a live process does between two looks: right after a restore
    /// or a release it may still be in D or t for a moment on a loaded host.
    fn await_running(&self, host: usize, pid: u32) {
        let t0 = std::time::Instant::now();
        loop {
            let st = self.state(host, pid);
            if matches!(st, Some('S' | 'R')) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5) && st.is_some(),
                "process {pid} on host {host}: state {st:?}, not running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The state letter of PID `pid` on `host`, None if there is none.
    fn state(&self, host: usize, pid: u32) -> Option<char> {
        let out = self.run(host, &["cat", &format!("/proc/{pid}/stat")]);
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Whether `pid` is traced on `host`.
    fn traced(&self, host: usize, pid: u32) -> bool {
        let out = self.run(host, &["cat", &format!("/proc/{pid}/status")]);
        !String::from_utf8_lossy(&out.stdout).contains("TracerPid:\t0")
    }

    /// `godwit migrate` of `pid` from host `from` to host `to`'s agent,
    /// started in the background (output piped).
    fn spawn_migrate(&self, from: usize, pid: u32, to: usize, extra: &[&str]) -> Child {
        let pid = pid.to_string();
        let to = self.agent_addr(to);
        self.exec(from)
            .arg(env!("CARGO_BIN_EXE_godwit"))
            .arg("migrate")
            .args(extra)
            .args(["--pid", &pid, "--to", &to, "--token-file"])
            .arg(self.token())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn migrate(&self, from: usize, pid: u32, to: usize, extra: &[&str]) -> Output {
        let pid = pid.to_string();
        let to = self.agent_addr(to);
        let token = self.token();
        let mut args = vec![
            "--json",
            "migrate",
            "--pid",
            &pid,
            "--to",
            &to,
            "--token-file",
            token.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.exec(from)
            .arg(env!("CARGO_BIN_EXE_godwit"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.name]).status();
        for a in self.agents.iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "godwit migrate failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn last_line(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

fn check_counts_on(log: &Path) {
    let at = last_line(log);
    wait_for("the counter to count on", Duration::from_secs(10), || {
        last_line(log) >= at + 3
    });
    let text = std::fs::read_to_string(log).unwrap();
    for (i, l) in text.lines().enumerate() {
        assert_eq!(
            l,
            i.to_string(),
            "line {i} of the counter's log: a gap or a repeat"
        );
    }
}

fn counter_moves(mode: &str) {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let log = c.dir.path().join("counter.log");
    let pid = c.spawn_at(1, 4000, &progs().join("counter"), &[log.to_str().unwrap()]);
    wait_for("the counter to count", Duration::from_secs(10), || {
        last_line(&log) >= 3
    });
    let v = json_of(&c.migrate(1, pid, 2, &["--mode", mode]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["mode"], mode);
    assert_eq!(v["dest_pid"], pid, "{v}");
    assert!(v["downtime_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["bytes_sent"].as_u64().unwrap() > 0, "{v}");
    assert!(v["phases"].as_array().unwrap().len() >= 3, "{v}");
    // Gone from host 1, running on host 2 with the same PID.
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    c.await_running(2, pid);
    assert!(!c.traced(2, pid), "the moved process is still traced");
    check_counts_on(&log);
}

/// A writer whose stdout is a pipe to `cat` (not migrated): the
/// destination cannot be handed the source's pipe, so the pipe's write end
/// becomes /dev/null there; `godwit migrate` warns, naming the process, fd
/// 1 and the pipe, and the process runs on, its writes raising no SIGPIPE.
#[test]
fn pipe_to_a_process_left_behind_becomes_dev_null_with_a_warning() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().join("w");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    c.sh(
        1,
        &format!(
            "echo 4199 > /proc/sys/kernel/ns_last_pid; {} {} {d} writer 2>/dev/null </dev/null | cat > {d}/out 2>/dev/null & echo",
            progs().join("launch").display(),
            progs().join("extio").display()
        ),
    );
    let ready = dir.join("ready");
    wait_for("the writer to be ready", Duration::from_secs(10), || {
        ready.exists()
    });
    let pid: u32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = c.migrate(1, pid, 2, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let v = json_of(&out);
    let x = &v["externals"][0];
    assert_eq!(
        (x["pid"].as_u64(), x["fd"].as_u64()),
        (Some(pid as u64), Some(1)),
        "{v}"
    );
    let key = x["key"].as_str().unwrap();
    assert!(
        err.contains("warning")
            && err.contains(&format!("process {pid} fd 1"))
            && err.contains(key)
            && err.contains("/dev/null"),
        "{err}"
    );
    let count = dir.join("count");
    let at = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    wait_for("writes at the destination", Duration::from_secs(10), || {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > at + 50)
    });
    c.await_running(2, pid);
    assert!(!dir.join("error").exists(), "a write failed");
    let link = c.sh(2, &format!("readlink /proc/{pid}/fd/1"));
    assert_eq!(link.trim(), "/dev/null");
}

/// `extio writer | cat` with both given (`--pid WRITER --pid CAT`): one
/// migration, one freeze, the pipe between them moved once, so at the
/// destination cat still reads what the writer writes (no stand-in, no
/// warning). Moved one by one, the pipe would become /dev/null there.
fn both_ends_of_a_pipeline_move_together(mode: &str) {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().join("w");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let launch = progs().join("launch");
    c.sh(
        1,
        &format!(
            "echo 4299 > /proc/sys/kernel/ns_last_pid; {l} {} {d} writer 2>/dev/null </dev/null | {l} sh -c 'echo $$ > {d}/catpid; exec cat > {d}/out' 2>/dev/null & echo",
            progs().join("extio").display(),
            l = launch.display(),
        ),
    );
    wait_for("the writer to be ready", Duration::from_secs(10), || {
        dir.join("ready").exists()
    });
    let read = |name: &str| -> u32 {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let (pid, cat) = (read("pid"), read("catpid"));
    assert!(pid > 0 && cat > 0);
    let out = c.migrate(1, pid, 2, &["--pid", &cat.to_string(), "--mode", mode]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let v = json_of(&out);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(v["externals"], serde_json::json!([]), "{v}");
    assert_eq!(v["roots"], serde_json::json!([pid, cat]), "{v}");
    assert_eq!(v["dest_roots"].as_array().map(Vec::len), Some(2), "{v}");
    for p in [pid, cat] {
        wait_for("the source copies to end", Duration::from_secs(10), || {
            c.state(1, p).is_none()
        });
        c.await_running(2, p);
    }
    let w = c.sh(2, &format!("readlink /proc/{pid}/fd/1"));
    let r = c.sh(2, &format!("readlink /proc/{cat}/fd/0"));
    assert!(w.starts_with("pipe:["), "{w}");
    assert_eq!(w, r, "the writer and cat hold one pipe at the destination");
    let lines = || {
        std::fs::read_to_string(dir.join("out"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let at = lines();
    wait_for(
        "cat to receive lines at the destination",
        Duration::from_secs(10),
        || lines() > at + 50,
    );
    assert!(!dir.join("error").exists(), "a write failed");
    let text = std::fs::read_to_string(dir.join("out")).unwrap();
    for (i, l) in text.lines().enumerate() {
        assert_eq!(
            l,
            i.to_string(),
            "line {i} of cat's output: lost or repeated"
        );
    }
}

#[test]
fn both_ends_of_a_pipeline_move_together_stop_copy() {
    both_ends_of_a_pipeline_move_together("stop-copy");
}

#[test]
fn both_ends_of_a_pipeline_move_together_post_copy() {
    both_ends_of_a_pipeline_move_together("post-copy");
}

/// The agent moves a process of its node on request (`godwit node
/// migrate`, POST /v1/processes/PID/migrate, as the dashboard and the
/// balancer do): the counter goes on at host 2 without a gap, and host 1's
/// metrics count the migration sent and its downtime. An unknown PID is
/// refused naming it.
#[test]
fn an_agent_moves_a_process_of_its_node_on_request() {
    let mut c = Cluster::up(2);
    c.start_agent(1);
    c.start_agent(2);
    let log = c.dir.path().join("counter.log");
    let pid = c.spawn_at(1, 4500, &progs().join("counter"), &[log.to_str().unwrap()]);
    wait_for("the counter to count", Duration::from_secs(10), || {
        last_line(&log) >= 3
    });
    let godwit = env!("CARGO_BIN_EXE_godwit");
    let (a1, a2) = (c.agent_addr(1), c.agent_addr(2));
    let token = c.token();
    let token = token.to_str().unwrap();
    let node = |args: &[&str]| {
        let mut all = vec![
            godwit,
            "--json",
            "node",
            "--agent",
            &a1,
            "--token-file",
            token,
        ];
        all.extend_from_slice(args);
        c.run(1, &all)
    };
    let out = node(&["migrate", "--pid", "99999", "--to", &a2]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("99999"), "{err}");
    let v = json_of(&node(&[
        "migrate",
        "--pid",
        &pid.to_string(),
        "--to",
        &a2,
        "--mode",
        "pre-copy",
    ]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["dest_pid"], pid, "{v}");
    assert_eq!(v["mode"], "pre-copy", "{v}");
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    c.await_running(2, pid);
    assert!(!c.traced(2, pid), "the moved process is still traced");
    check_counts_on(&log);
    let metrics = c.run(
        1,
        &[
            godwit,
            "node",
            "--agent",
            &a1,
            "--token-file",
            token,
            "metrics",
        ],
    );
    let text = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(text.contains("godwit_migrations_sent_total 1"), "{text}");
    assert!(
        text.contains("godwit_migration_downtime_seconds_count 1"),
        "{text}"
    );
}

#[test]
fn counter_moves_between_hosts_stop_copy() {
    counter_moves("stop-copy");
}

#[test]
fn counter_moves_between_hosts_pre_copy() {
    counter_moves("pre-copy");
}

#[test]
fn counter_moves_between_hosts_post_copy() {
    counter_moves("post-copy");
}

/// A process whose threads were made after PIDs wrapped at pid_max: its
/// main thread (32766) has a larger id than its other threads (32767, then
/// 300 and up), which must not be taken for the main thread (CI once
/// restored such a process as "the first thread is not the main thread").
/// tests/progs/threads.c moves and then checks every thread carried on.
#[test]
fn threads_made_after_a_pid_wrap_move() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().join("threads");
    std::fs::create_dir(&dir).unwrap();
    // A new PID namespace's pid_max is not the machine's: make it wrap
    // where this machine's does (KERNEL.md).
    c.sh(1, "echo 32768 > /proc/sys/kernel/pid_max");
    let pid = c.spawn_at(1, 32766, &progs().join("threads"), &[dir.to_str().unwrap()]);
    wait_for("the threads program to be ready", Duration::from_secs(10), || {
        dir.join("ready").exists()
    });
    let tids = c.sh(1, &format!("ls /proc/{pid}/task"));
    let tids: Vec<u32> = tids.split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert!(
        tids.len() == 6 && tids.iter().any(|&t| t < pid),
        "no thread id below the main thread's ({pid}): {tids:?}"
    );
    let v = json_of(&c.migrate(1, pid, 2, &["--mode", "stop-copy"]));
    assert_eq!(v["dest_pid"], pid, "{v}");
    c.await_running(2, pid);
    let moved = c.sh(2, &format!("ls /proc/{pid}/task"));
    let mut moved: Vec<u32> = moved.split_whitespace().map(|t| t.parse().unwrap()).collect();
    moved.sort_unstable();
    let mut want = tids.clone();
    want.sort_unstable();
    assert_eq!(moved, want, "the threads did not keep their ids");
    std::fs::write(dir.join("go"), "").unwrap();
    wait_for("the threads program's verdict", Duration::from_secs(10), || {
        dir.join("result").exists()
    });
    let verdict = std::fs::read_to_string(dir.join("result")).unwrap();
    assert_eq!(verdict.trim(), "PASS");
}

/// hugetlb memory (tests/progs/hugetlb.c without its hugetlbfs files and
/// SysV segment, whose id the simulated hosts' one IPC namespace keeps
/// taken by the source: private and shared MAP_HUGETLB, a hugetlb memfd)
/// moves with its contents and page size in every mode: it is never left
/// lazy nor deferred (filled before the process runs).
fn hugetlb_moves(mode: &str, pid: u32) {
    // Both copies at once (the source's until the switch): 2 x 5 pages.
    let _pages = common::hugepages::Reserved::at_least(13);
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().join("prog");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let pid = c.spawn_at(
        1,
        pid,
        &progs().join("hugetlb"),
        &[dir.to_str().unwrap(), "-", "nosysv"],
    );
    wait_for("hugetlb to be ready", Duration::from_secs(20), || {
        dir.join("ready").exists() || dir.join("result").exists()
    });
    assert!(
        dir.join("ready").exists(),
        "{:?}",
        std::fs::read_to_string(dir.join("result"))
    );
    let out = c.migrate(1, pid, 2, &["--mode", mode]);
    let v = json_of(&out);
    assert_eq!(v["ok"], true, "{mode}: {v}");
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    std::fs::write(dir.join("go"), "").unwrap();
    wait_for("the verdict", Duration::from_secs(30), || {
        dir.join("result").exists()
    });
    let verdict = std::fs::read_to_string(dir.join("result")).unwrap();
    assert_eq!(verdict.trim(), "PASS", "{mode}");
}

#[test]
fn hugetlb_moves_between_hosts() {
    hugetlb_moves("stop-copy", 4100);
    hugetlb_moves("pre-copy", 4200);
    hugetlb_moves("post-copy", 4300);
}

/// Host PIDs of `godwit migrate` runs for `pid` (whatever namespace they
/// were started in).
fn migrate_commands_for(pid: u32) -> Vec<i32> {
    let exe = std::fs::canonicalize(env!("CARGO_BIN_EXE_godwit")).unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{p}/exe")).ok().as_ref() != Some(&exe) {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == b"migrate")
            && args.iter().any(|a| *a == pid.to_string().as_bytes())
        {
            out.push(p);
        }
    }
    out
}

/// The source (the `godwit migrate` command, which holds the frozen copy
/// and serves its pages) killed while a post-copy runs: the destination
/// cannot go on without those pages and kills its copy, and the source's
/// copy, its tracer gone, runs on where it was, its memory whole.
#[test]
fn source_killed_mid_post_copy_leaves_one_copy_at_the_source() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().to_path_buf();
    let pid = c.spawn_target(1, 4150, &["writer", "1024", "20"]);
    let migrate = c.spawn_migrate(1, pid, 2, &["--mode", "post-copy"]);
    // Once the copy at the destination runs (no longer traced): the pages
    // are following it.
    let t0 = Instant::now();
    while c.state(2, pid).is_none() || c.traced(2, pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the process never ran at the destination"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let source = migrate_commands_for(pid);
    assert_eq!(source.len(), 1, "{source:?}");
    // SAFETY: plain kill of the godwit command this test started.
    unsafe { libc::kill(source[0], libc::SIGKILL) };
    let _ = migrate.wait_with_output().unwrap();
    wait_for(
        "the destination to end its copy",
        Duration::from_secs(30),
        || c.state(2, pid).is_none(),
    );
    wait_for("the source copy to run", Duration::from_secs(10), || {
        matches!(c.state(1, pid), Some('S' | 'R')) && !c.traced(1, pid)
    });
    c.sh(1, &format!("kill -USR1 {pid}"));
    wait_for(
        "the source to check its memory",
        Duration::from_secs(60),
        || dir.join("result").exists(),
    );
    let verdict = std::fs::read_to_string(dir.join("result")).unwrap();
    assert!(verdict.starts_with("OK"), "{verdict}");
}

/// A process of 1 GiB, every word checked after the move.
#[test]
fn a_gigabyte_moves_and_every_page_is_right() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().to_path_buf();
    let pid = c.spawn_target(1, 4100, &["hold", "1024"]);
    let v = json_of(&c.migrate(1, pid, 2, &["--mode", "pre-copy"]));
    assert!(v["memory_bytes"].as_u64().unwrap() >= 1 << 30, "{v}");
    c.sh(2, &format!("kill -USR1 {pid}"));
    wait_for(
        "the moved process to check its memory",
        Duration::from_secs(60),
        || dir.join("result").exists(),
    );
    let verdict = std::fs::read_to_string(dir.join("result")).unwrap();
    assert!(verdict.starts_with("OK"), "{verdict}");
}

impl Cluster {
    /// Starts the benchmark's target program (`hold MIB` or `writer MIB
    /// RATE`) on `host` with PID `pid`, its ready/result/stalls files in the
    /// cluster's directory, and waits until its memory is filled.
    fn spawn_target(&self, host: usize, pid: u32, args: &[&str]) -> u32 {
        let dir = self.dir.path();
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.push(dir.join("ready").to_str().unwrap().into());
        all.push(dir.join("result").to_str().unwrap().into());
        if args.first() == Some(&"writer") {
            all.push(dir.join("stalls").to_str().unwrap().into());
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let pid = self.spawn_at(host, pid, &bench_target(dir), &all);
        wait_for(
            "the target to fill its memory",
            Duration::from_secs(60),
            || dir.join("ready").exists(),
        );
        pid
    }
}

fn bench_target(dir: &Path) -> PathBuf {
    let src = common::repo().join("crates/godwit-bench/src/target.c");
    let out = dir.join("target");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Running on host 1 as before: not stopped, not traced, counting.
fn still_at_source(c: &Cluster, pid: u32, log: &Path) {
    c.await_running(1, pid);
    assert!(!c.traced(1, pid), "the source process is still traced");
    check_counts_on(log);
}

#[test]
fn pid_taken_at_the_destination_is_refused_then_pid_ns_moves_it() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let log = c.dir.path().join("counter.log");
    let pid = c.spawn_at(1, 4200, &progs().join("counter"), &[log.to_str().unwrap()]);
    // The same PID taken on host 2.
    let sleeper = c.spawn_at(2, 4200, Path::new("/bin/sleep"), &["1000"]);
    assert_eq!(sleeper, pid);
    wait_for("the counter to count", Duration::from_secs(10), || {
        last_line(&log) >= 3
    });
    let out = c.migrate(1, pid, 2, &[]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("PID {pid} is in use")) && err.contains("--pid-ns"),
        "{err}"
    );
    still_at_source(&c, pid, &log);
    // With a PID namespace of its own at the destination, it moves.
    let v = json_of(&c.migrate(1, pid, 2, &["--pid-ns"]));
    assert_eq!(v["dest_pid"], pid);
    assert_ne!(v["dest_host_pid"], pid);
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    check_counts_on(&log);
}

#[test]
fn destination_agent_killed_mid_transfer_leaves_it_running_at_the_source() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().to_path_buf();
    // Big enough that the transfer lasts a while.
    let pid = c.spawn_target(1, 4300, &["writer", "1024", "20"]);
    let migrate = c.spawn_migrate(1, pid, 2, &[]);
    // Kill the destination's agent once the image is flowing.
    let agent = c.agent_host_pid(2);
    let t0 = Instant::now();
    // Bytes the destination received on the migration connection.
    let rx_bytes = || -> u64 {
        let out = c.sh(
            2,
            &format!("ss -tinH state established '( sport = :{PORT} )'"),
        );
        out.split_whitespace()
            .filter_map(|w| w.strip_prefix("bytes_received:"))
            .filter_map(|v| v.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    while rx_bytes() < 64 << 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the image does not flow"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: plain kill of the godwitd this test started.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    let out = migrate.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("left running at the source"), "{err}");
    // Running at the source, memory whole; nothing of it at the destination.
    c.await_running(1, pid);
    assert!(!c.traced(1, pid));
    c.sh(1, &format!("kill -USR1 {pid}"));
    wait_for(
        "the source to check its memory",
        Duration::from_secs(60),
        || dir.join("result").exists(),
    );
    let verdict = std::fs::read_to_string(dir.join("result")).unwrap();
    assert!(verdict.starts_with("OK"), "{verdict}");
    assert_eq!(
        c.state(2, pid),
        None,
        "a half-built copy is left at the destination: {}",
        c.sh(2, "ps -eo pid,ppid,stat,comm")
    );
}

#[test]
fn link_cut_mid_transfer_leaves_it_running_at_the_source() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let log = c.dir.path().join("counter.log");
    let pid = c.spawn_at(1, 4400, &progs().join("counter"), &[log.to_str().unwrap()]);
    wait_for("the counter to count", Duration::from_secs(10), || {
        last_line(&log) >= 3
    });
    // The destination's link is down: the connection cannot even start.
    let veth = format!("gw{}2", c.name);
    let st = Command::new("ip")
        .args(["link", "set", &veth, "down"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = c.migrate(1, pid, 2, &["--watchdog", "3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was not touched") || err.contains("left running"),
        "{err}"
    );
    still_at_source(&c, pid, &log);
}

#[test]
fn destination_disk_full_leaves_it_running_at_the_source() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    // Host 2 keeps images on a tmpfs of 1 MiB (its own mount namespace).
    let images = c.data(2).join("images");
    c.sh(
        2,
        &format!(
            "mkdir -p {0}/full && mount -t tmpfs -o size=1m tmpfs {0}/full",
            images.display()
        ),
    );
    let pid = c.spawn_target(1, 4500, &["hold", "64"]);
    let keep = images.join("full/img");
    let out = c.migrate(1, pid, 2, &["--keep-image", keep.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left") && err.contains("left running at the source"),
        "{err}"
    );
    c.await_running(1, pid);
    assert!(!c.traced(1, pid));
    assert_eq!(c.state(2, pid), None);
}

/// A TCP service bound to a service address moves with it: a client that
/// knew it at host 1 reaches it at host 2 at once (its ARP cache was told).
#[test]
fn service_address_moves_with_the_process() {
    let mut c = Cluster::up(3);
    c.start_agent(2);
    let service = format!("{}.100", c.prefix);
    c.sh(1, &format!("ip addr add {service}/24 dev eth0"));
    let server = c.dir.path().join("server.py");
    std::fs::write(
        &server,
        "import socket, os\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind((os.environ.get('ADDR', '0.0.0.0'), 8080))\n\
         s.listen(8)\n\
         n = 0\n\
         while True:\n\
         \x20   c, _ = s.accept()\n\
         \x20   n += 1\n\
         \x20   c.sendall(b'hello %d from %d\\n' % (n, os.getpid()))\n\
         \x20   c.close()\n",
    )
    .unwrap();
    let pid = {
        let cmd = format!(
            "echo 4599 > /proc/sys/kernel/ns_last_pid; ADDR={service} {} python3 {} </dev/null >/dev/null 2>&1 & echo $!",
            progs().join("launch").display(),
            server.display()
        );
        c.sh(1, &cmd).trim().parse::<u32>().unwrap()
    };
    let fetch = || -> String {
        c.sh(
            3,
            &format!(
                "python3 -c \"import socket; s=socket.create_connection(('{service}', 8080), timeout=5); print(s.recv(100).decode().strip())\""
            ),
        )
        .trim()
        .to_string()
    };
    let probe = format!("import socket; socket.create_connection(('{service}', 8080), timeout=1)");
    let t0 = Instant::now();
    while !c.run(3, &["python3", "-c", &probe]).status.success() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server does not answer: host 1: {}; host 3: {}",
            c.sh(1, "ss -ltnp; ip -br addr; ps -e"),
            c.sh(3, "ip neigh")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fetch(), format!("hello 2 from {pid}"));
    let v = json_of(&c.migrate(1, pid, 2, &["--move-ip", &format!("{service}/24")]));
    assert_eq!(v["dest_pid"], pid);
    // The client (its ARP cache still naming host 1) reaches host 2 at once.
    assert_eq!(fetch(), format!("hello 3 from {pid}"));
    assert!(!c.sh(1, "ip -br addr show dev eth0").contains(&service));
    assert!(c.sh(2, "ip -br addr show dev eth0").contains(&service));
}

/// One connection that a client on host 3 holds to redis-server across its
/// move from host 1 to host 2: every INCR answered once, in order, no
/// reconnect; the address moves with it.
fn redis_keeps_its_client(mode: &str) {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("redis-server is not installed: scripts/setup.sh installs it");
    }
    let mut c = Cluster::up(3);
    c.start_agent(2);
    let service = format!("{}.100", c.prefix);
    c.sh(1, &format!("ip addr add {service}/24 dev eth0"));
    let dir = c.dir.path().to_path_buf();
    let pid = {
        let cmd = format!(
            "echo 4699 > /proc/sys/kernel/ns_last_pid; {} redis-server --bind {service} --port 6390 \
             --save '' --appendonly no --dir {} --protected-mode no </dev/null >/dev/null 2>&1 & echo $!",
            progs().join("launch").display(),
            dir.display()
        );
        c.sh(1, &cmd).trim().parse::<u32>().unwrap()
    };
    let client = dir.join("client.py");
    std::fs::write(
        &client,
        r#"import os, socket, sys, time
addr, out, stop = sys.argv[1], sys.argv[2], sys.argv[3]
def publish(text):
    open(out + ".tmp", "w").write(text)
    os.rename(out + ".tmp", out)
s = None
for _ in range(600):
    try:
        s = socket.create_connection((addr, 6390), timeout=30)
        break
    except OSError:
        time.sleep(0.05)
if s is None:
    publish("BAD could not connect to redis-server\n"); sys.exit(1)
f = s.makefile("rb")
n, last, gap, t = 0, None, 0.0, time.monotonic()
try:
    while not os.path.exists(stop):
        s.sendall(b"*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n")
        line = f.readline()
        now = time.monotonic()
        gap, t = max(gap, now - t), now
        if not line.startswith(b":"):
            publish("BAD reply %r after %d\n" % (line, n)); sys.exit(1)
        v = int(line[1:])
        if last is not None and v != last + 1:
            publish("BAD %d after %d\n" % (v, last)); sys.exit(1)
        last, n = v, n + 1
        if n % 10 == 0:
            publish("RUN %d %d %.3f\n" % (n, last, gap))
        time.sleep(0.005)
except Exception as e:
    publish("BAD %s after %d\n" % (e, n)); sys.exit(1)
publish("OK %d %d %.3f\n" % (n, last, gap))
"#,
    )
    .unwrap();
    let out = dir.join("client.out");
    let stop = dir.join("client.stop");
    let mut cl = c
        .exec(3)
        .args(["python3", client.to_str().unwrap(), &service])
        .arg(&out)
        .arg(&stop)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let count = || -> u64 {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(!t.starts_with("BAD"), "the client: {t}");
        t.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while count() < 50 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "the client does not talk to redis: client {:?}; host 1: {}; host 3: {}",
            std::fs::read_to_string(&out),
            c.sh(1, "ss -ltnp; ip -br addr"),
            c.sh(3, "ss -tnp; ip neigh")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let v = json_of(&c.migrate(
        1,
        pid,
        2,
        &[
            "--mode",
            mode,
            "--tcp-established",
            "--move-ip",
            &format!("{service}/24"),
        ],
    ));
    assert_eq!(v["dest_pid"], pid);
    let at = count();
    wait_for(
        "the client to go on talking",
        Duration::from_secs(20),
        || count() >= at + 100,
    );
    std::fs::write(&stop, "").unwrap();
    let _ = cl.wait();
    let verdict = std::fs::read_to_string(&out).unwrap();
    assert!(verdict.starts_with("OK"), "the client: {verdict}");
    c.await_running(2, pid);
    assert_eq!(c.state(1, pid), None);
}

#[test]
fn redis_keeps_its_client_connection_stop_copy() {
    redis_keeps_its_client("stop-copy");
}

#[test]
fn redis_keeps_its_client_connection_pre_copy() {
    redis_keeps_its_client("pre-copy");
}

#[test]
fn redis_keeps_its_client_connection_post_copy() {
    redis_keeps_its_client("post-copy");
}

/// The "pass N" lines of lazymem's log, and whether it found a bad page.
fn passes(log: &Path) -> (usize, bool) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    (
        text.lines().filter(|l| l.starts_with("pass ")).count(),
        text.contains("BAD"),
    )
}

/// --max-downtime with pre-copy measures, at the freeze, what the process
/// wrote since its last round and how fast its rounds went. lazymem (64
/// MiB, rewriting one page in 1024 per pass) writes little between rounds:
/// with 30 ms allowed it goes as a pre-copy (sending 64 MiB while frozen
/// would take longer than that, which a prediction from its size would
/// have said); with 0 ms, what it wrote since its last round follows it
/// (pre-copy-post-copy, the printed mode says so). Either way every page
/// is right (lazymem checks all of them each pass).
#[test]
fn max_downtime_measures_what_is_left_at_the_freeze() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let log = c.dir.path().join("lazymem.log");
    let pid = c.spawn_at(
        1,
        4900,
        &progs().join("lazymem"),
        &[log.to_str().unwrap(), "64", "sparse"],
    );
    wait_for("lazymem to pass", Duration::from_secs(10), || {
        passes(&log).0 >= 2
    });
    let passes_on = |log: &Path| {
        let at = passes(log).0;
        wait_for("lazymem to pass on", Duration::from_secs(20), || {
            passes(log).0 >= at + 2
        });
        assert!(
            !passes(log).1,
            "a bad page: {}",
            std::fs::read_to_string(log).unwrap()
        );
    };
    let v = json_of(&c.migrate(1, pid, 2, &["--mode", "pre-copy", "--max-downtime", "30"]));
    assert_eq!(v["mode"], "pre-copy", "{v}");
    assert_eq!(v["lazy_bytes"].as_u64().unwrap_or(0), 0, "{v}");
    passes_on(&log);
    // And back, allowing no frozen copy at all.
    c.start_agent(1);
    let v = json_of(&c.migrate(2, pid, 1, &["--mode", "pre-copy", "--max-downtime", "0"]));
    assert_eq!(v["mode"], "pre-copy-post-copy", "{v}");
    assert!(v["lazy_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    passes_on(&log);
}

/// A PID inside another's tree (which moves whole) is refused before
/// anything is touched or any connection made.
#[test]
fn a_pid_inside_another_pids_tree_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 100 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let child: u32 = line.trim().parse().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args([
            "migrate",
            "--pid",
            &parent.id().to_string(),
            "--pid",
            &child.to_string(),
        ])
        .args(["--to", "127.0.0.1:9", "--token-file"])
        .arg(&token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // SAFETY: plain kills of the two processes this test started.
    unsafe {
        libc::kill(child as i32, libc::SIGKILL);
        libc::kill(parent.id() as i32, libc::SIGKILL);
    }
    let _ = parent.wait();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "process {child} is a descendant of process {}",
            parent.id()
        )),
        "{err}"
    );
    // Untouched: nothing was connected to or stopped.
    assert!(!err.contains("connecting"), "{err}");
}

/// The total Pss (smaps_rollup, bytes) of `pids` on `host`.
fn pss_on(c: &Cluster, host: usize, pids: &[u64]) -> u64 {
    let list: Vec<String> = pids.iter().map(u64::to_string).collect();
    let out = c.sh(
        host,
        &format!(
            "for p in {}; do grep '^Pss:' /proc/$p/smaps_rollup; done",
            list.join(" ")
        ),
    );
    out.lines()
        .filter_map(|l| l.strip_prefix("Pss:"))
        .filter_map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

/// A forking server (tests/progs/cowshare.c: a parent with 64 MiB written
/// before it forked 4 children, one with a grandchild; each child rewrote
/// 1 MiB of it) moved post-copy: the pages the children share with their
/// parent are sent with the image and restored shared, not served lazily
/// into each process as a copy of its own: the tree's Pss at the
/// destination is about what it was at the source (not six times the
/// parent's), and every process finds its memory right.
#[test]
fn a_forking_tree_keeps_its_shared_memory_under_post_copy() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let dir = c.dir.path().join("prog");
    std::fs::create_dir(&dir).unwrap();
    let pid = c.spawn_at(
        1,
        4500,
        &progs().join("cowshare"),
        &[dir.to_str().unwrap(), "64"],
    );
    wait_for("cowshare to be ready", Duration::from_secs(30), || {
        dir.join("ready").exists() || dir.join("result").exists()
    });
    assert!(
        dir.join("ready").exists(),
        "{:?}",
        std::fs::read_to_string(dir.join("result"))
    );
    let out = c.migrate(1, pid, 2, &["--mode", "post-copy"]);
    let v = json_of(&out);
    assert_eq!(v["mode"], "post-copy", "{v}");
    let pids: Vec<u64> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(pids.len(), 6, "the parent, 4 children, a grandchild: {v}");
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    let after = pss_on(&c, 2, &pids);
    eprintln!(
        "cowshare 64 MiB post-copy: tree Pss {} MiB at the destination; {} MiB in the image, {} MiB lazy",
        after >> 20,
        v["memory_bytes"].as_u64().unwrap_or(0) >> 20,
        v["lazy_bytes"].as_u64().unwrap_or(0) >> 20
    );
    // One copy of the 64 MiB, the children's own 1 MiB each, the rest:
    // well under two copies.
    assert!(
        after < 100 << 20,
        "tree Pss {after} bytes after post-copy: {v}"
    );
    std::fs::write(dir.join("go"), "").unwrap();
    wait_for("the verdict", Duration::from_secs(60), || {
        dir.join("result").exists()
    });
    let verdict = std::fs::read_to_string(dir.join("result")).unwrap();
    assert_eq!(verdict.trim(), "PASS");
}

/// Starts `extio DIR writer | cat > DIR/out` on host 1 (only the writer
/// is moved; cat stays), the writer's PID set to `pid`; returns the
/// writer's directory.
fn writer_into_cat(c: &Cluster, pid: u32) -> PathBuf {
    let dir = c.dir.path().join(format!("w{pid}"));
    std::fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    c.sh(
        1,
        &format!(
            "echo {} > /proc/sys/kernel/ns_last_pid; {} {} {d} writer 2>/dev/null </dev/null | cat > {d}/out 2>/dev/null & echo",
            pid - 1,
            progs().join("launch").display(),
            progs().join("extio").display()
        ),
    );
    wait_for("the writer to be ready", Duration::from_secs(10), || {
        dir.join("ready").exists()
    });
    let got: u32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(got, pid);
    dir
}

/// The writer's lines, first those cat got at the source (`out`), then
/// those written at the destination into `dest`: each once, none missing.
fn lines_continue(dir: &Path, dest: &Path) {
    let lines = || {
        std::fs::read_to_string(dest)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_for("lines at the destination", Duration::from_secs(10), || {
        lines() > 50
    });
    assert!(!dir.join("error").exists(), "a write failed");
    // cat at the source has read what was in the pipe and ended.
    let out = dir.join("out");
    let mut text = String::new();
    wait_for("cat at the source to end", Duration::from_secs(10), || {
        let before = std::fs::read_to_string(&out).unwrap_or_default();
        std::thread::sleep(Duration::from_millis(200));
        text = std::fs::read_to_string(&out).unwrap_or_default();
        before == text
    });
    let moved = std::fs::read_to_string(dest).unwrap();
    let all: Vec<&str> = text.lines().chain(moved.lines()).collect();
    assert!(text.lines().count() > 20, "lines before the move: {text:?}");
    for (i, l) in all.iter().enumerate() {
        assert_eq!(*l, i.to_string(), "line {i}: lost or repeated");
    }
}

/// `godwit migrate --inherit-fd 1:PATH` of a writer whose stdout is a pipe
/// to `cat` left behind: the destination opens PATH (a file there,
/// appended to) in the pipe's place, so the lines go on in it, none lost
/// or repeated; no warning names fd 1, and the report says where it went.
/// A descriptor of this host as the target is refused before anything is
/// touched; a fd that is not connected outside the tree is refused by the
/// destination, and the writer runs on at the source.
#[test]
fn inherit_fd_connects_a_file_at_the_destination() {
    let mut c = Cluster::up(2);
    c.start_agent(2);
    let pid = 4600;
    let dir = writer_into_cat(&c, pid);
    let dest = dir.join("dest.log");
    let spec = format!("1:{}", dest.display());

    let out = c.migrate(1, pid, 2, &["--inherit-fd", "1:3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("cannot cross"), "{err}");
    let out = c.migrate(1, pid, 2, &["--inherit-fd", "0:null"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("no such descriptor connected outside") && err.contains("fd 1"),
        "{err}"
    );
    // (Released as the refusal comes back: it may show stopped an instant.)
    wait_for(
        "the writer to run on at the source",
        Duration::from_secs(5),
        || matches!(c.state(1, pid), Some('S' | 'R')),
    );
    let count = || {
        std::fs::read_to_string(dir.join("count"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let at = count();
    wait_for("the writer to write on", Duration::from_secs(5), || {
        count() > at + 5
    });

    let out = c.migrate(1, pid, 2, &["--inherit-fd", &spec]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let v = json_of(&out);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(
        v["externals"][0]["at_destination"],
        dest.to_str().unwrap(),
        "{v}"
    );
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    let link = c.sh(2, &format!("readlink /proc/{pid}/fd/1"));
    assert_eq!(link.trim(), dest.to_str().unwrap());
    let flags = c.sh(2, &format!("grep flags /proc/{pid}/fdinfo/1"));
    let flags = u32::from_str_radix(flags.split_whitespace().nth(1).unwrap(), 8).unwrap();
    assert!(
        flags & libc::O_APPEND as u32 != 0 && flags & 3 == 1,
        "{flags:o}"
    );
    lines_continue(&dir, &dest);
}

/// The same through the source node's agent (`godwit node migrate
/// --inherit-fd`, the API's `inherit_fds`), post-copy, the target a FIFO
/// at the destination that another process there reads: the lines go on
/// through it.
#[test]
fn inherit_fd_through_the_agent_into_a_fifo_post_copy() {
    let mut c = Cluster::up(2);
    c.start_agent(1);
    c.start_agent(2);
    let pid = 4700;
    let dir = writer_into_cat(&c, pid);
    let d = dir.to_str().unwrap();
    let fifo = dir.join("fifo");
    let dest = dir.join("viafifo");
    c.sh(
        2,
        &format!(
            "mkfifo {f}; {l} sh -c 'echo $$ > {d}/catpid; exec cat {f} > {o}' </dev/null >/dev/null 2>&1 & echo",
            f = fifo.display(),
            o = dest.display(),
            l = progs().join("launch").display()
        ),
    );
    wait_for(
        "the reader at the destination",
        Duration::from_secs(10),
        || dir.join("catpid").exists(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let godwit = env!("CARGO_BIN_EXE_godwit");
    let (a1, a2) = (c.agent_addr(1), c.agent_addr(2));
    let token = c.token();
    let spec = format!("1:{}", fifo.display());
    let out = c.run(
        1,
        &[
            godwit,
            "--json",
            "node",
            "--agent",
            &a1,
            "--token-file",
            token.to_str().unwrap(),
            "migrate",
            "--pid",
            &pid.to_string(),
            "--to",
            &a2,
            "--mode",
            "post-copy",
            "--inherit-fd",
            &spec,
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["mode"], "post-copy", "{v}");
    assert_eq!(
        v["externals"][0]["at_destination"],
        fifo.to_str().unwrap(),
        "{v}"
    );
    wait_for("the source copy to end", Duration::from_secs(10), || {
        c.state(1, pid).is_none()
    });
    let link = c.sh(2, &format!("readlink /proc/{pid}/fd/1"));
    assert_eq!(link.trim(), fifo.to_str().unwrap());
    lines_continue(&dir, &dest);
}

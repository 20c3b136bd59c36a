//! Nodes that know each other, on simulated hosts (scripts/cluster.sh): three
//! godwitd with peers exchange heartbeats carrying their load; `godwit nodes`
//! shows them alive; one agent killed turns dead within the documented bound
//! (--dead-after-ms + one check) and alive again when it comes back; `godwit ps
//! --all-nodes` shows a process of another node; /metrics parses as Prometheus
//! text and counts a checkpoint and a restore.

mod common;

use common::{progs, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PORT: u16 = 7432;
const METRICS_PORT: u16 = 9464;
const TOKEN: &str = "cluster-nodes-test-token-0123456789abcdef";
const HEARTBEAT_MS: u64 = 300;
const DEAD_AFTER_MS: u64 = 1200;

fn script() -> PathBuf {
    common::repo().join("scripts/cluster.sh")
}

/// Three simulated hosts; torn down (every process of its hosts ended) on drop.
struct Hosts {
    name: String,
    prefix: String,
    dir: tempfile::TempDir,
    agents: Vec<Option<Child>>,
}

impl Hosts {
    fn up(n: usize) -> Hosts {
        progs();
        // Distinct per test of this binary (they run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = (std::process::id() * 11 + k * 53) % 200;
        let name = format!("c{:05}", (std::process::id() * 13 + k * 7919) % 100_000);
        let prefix = format!("10.215.{id}");
        let out = Command::new(script())
            .args(["up", &name, &n.to_string(), &prefix])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = tempfile::Builder::new()
            .prefix("godwit-nodes")
            .tempdir()
            .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Hosts {
            name,
            prefix,
            dir,
            agents: (0..n).map(|_| None).collect(),
        }
    }

    fn agent_addr(&self, host: usize) -> String {
        format!("{}.{host}:{PORT}", self.prefix)
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

    fn sh(&self, host: usize, script: &str) -> String {
        let out = self
            .exec(host)
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "on host {host}: {script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts godwitd on `host` as node `nHOST` with `args` and waits until it serves.
    fn start_agent(&mut self, host: usize, args: &[&str]) {
        if let Some(mut old) = self.agents[host - 1].take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("agent{host}.log")))
            .unwrap();
        let mut child = self
            .exec(host)
            .arg(Path::new(env!("CARGO_BIN_EXE_godwit")).with_file_name("godwitd"))
            .args(["--listen", &self.agent_addr(host), "--data"])
            .arg(self.data(host))
            .arg("--token-file")
            .arg(self.token())
            .args(["--node-name", &format!("n{host}")])
            .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--dead-after-ms", &DEAD_AFTER_MS.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("GODWITD_READY"), "godwitd said {line:?}");
        self.agents[host - 1] = Some(child);
    }

    /// `godwit --json service --agent (host's agent) --token-file ...` with
    /// `names` as the name service, to be given its subcommand.
    fn service_cmd(&self, host: usize, names: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_godwit"));
        cmd.env("GODWIT_NAMES", names)
            .args([
                "--json",
                "service",
                "--agent",
                &self.agent_addr(host),
                "--token-file",
            ])
            .arg(self.token());
        cmd
    }

    /// The state letter of `pid` on `host` (R, S, T, ...).
    fn state_letter(&self, host: usize, pid: &str) -> String {
        self.sh(host, &format!("sed 's/.*) //' /proc/{pid}/stat | cut -c1"))
            .trim()
            .to_string()
    }

    /// The whole host dies: its init is killed, and every process of its
    /// PID namespace with it (its agent included).
    fn kill_host(&self, host: usize) {
        let out = Command::new(script())
            .args(["init", &self.name, &host.to_string()])
            .output()
            .unwrap();
        let init: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        // SAFETY: kills the init of the simulated host this test made.
        unsafe { libc::kill(init, libc::SIGKILL) };
    }

    /// The host PID of the godwitd serving `host` (the one this test started).
    fn agent_host_pid(&self, host: usize) -> i32 {
        common::godwitd_pid(&self.data(host))
            .unwrap_or_else(|| panic!("no godwitd for host {host}"))
    }

    /// `godwit ARGS` against host `host`'s agent (from the calling namespace).
    fn godwit(&self, host: usize, args: &[&str]) -> Output {
        let agent = self.agent_addr(host);
        let token = self.token();
        let mut all: Vec<&str> = Vec::new();
        let (head, rest) = args.split_at(if args[0] == "node" { 2 } else { 1 });
        if args[0] == "node" {
            all.extend_from_slice(&["node", "--agent", &agent, "--token-file"]);
            all.push(token.to_str().unwrap());
            all.extend_from_slice(&head[1..]);
        } else {
            all.extend_from_slice(head);
            all.extend_from_slice(&["--agent", &agent, "--token-file"]);
            all.push(token.to_str().unwrap());
        }
        all.extend_from_slice(rest);
        common::godwit(&all)
    }

    fn godwit_ok(&self, host: usize, args: &[&str]) -> String {
        let out = self.godwit(host, args);
        assert!(
            out.status.success(),
            "godwit {args:?} on host {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, host: usize, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.godwit_ok(host, &a)).unwrap()
    }

    /// `godwit nodes --json` through host `host`'s agent: name -> node.
    fn nodes(&self, host: usize) -> Vec<Value> {
        self.json(host, &["nodes"])["nodes"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn health(&self, host: usize, of: &str) -> String {
        self.nodes(host)
            .iter()
            .find(|n| n["name"] == of)
            .map(|n| n["health"].as_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", &self.name]).status();
        for a in self.agents.iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// OpenMetrics text: `name value` samples by name (with their labels), checked
/// line by line; the text ends with `# EOF`.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF:\n{text}");
    let mut out = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') {
            assert!(
                l.starts_with("# HELP ")
                    || l.starts_with("# TYPE ")
                    || l.starts_with("# UNIT ")
                    || l == "# EOF",
                "bad comment line {l:?}"
            );
            continue;
        }
        let (name, value) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {l:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {l:?}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {l:?}"
        );
        if let Some(labels) = name.strip_prefix(bare) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {l:?}"
            );
        }
        out.push((name.to_string(), v));
    }
    out
}

fn metric(m: &[(String, f64)], name: &str) -> f64 {
    m.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no metric {name} in {m:?}"))
        .1
}

#[test]
fn three_nodes_heartbeats_health_load_and_metrics() {
    let mut c = Hosts::up(3);
    let all = c.dir.path().join("peers-all");
    let first_two = c.dir.path().join("peers-12");
    let line = |h: usize| format!("n{h} {}\n", c.agent_addr(h));
    std::fs::write(&all, line(1) + &line(2) + &line(3)).unwrap();
    std::fs::write(&first_two, line(1) + &line(2)).unwrap();
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    c.start_agent(
        1,
        &[
            "--peers",
            first_two.to_str().unwrap(),
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    c.start_agent(2, &["--peers", all.to_str().unwrap()]);
    c.start_agent(3, &["--peers", all.to_str().unwrap()]);

    // n3 joins n1 by `godwit node add`, kept private in n1's data dir.
    let out = c.godwit_ok(1, &["node", "add", "n3", &c.agent_addr(3)]);
    assert!(out.contains("added"), "{out}");
    let kept = c.data(1).join("peers");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        format!("n3 {}\n", c.agent_addr(3))
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Every agent sees three alive nodes with their load.
    for h in 1..=3 {
        wait_for("three alive nodes", Duration::from_secs(15), || {
            let n = c.nodes(h);
            n.len() == 3
                && n.iter().all(|n| {
                    n["health"] == "alive"
                        && n["load"]["mem_total_bytes"].as_u64().unwrap_or(0) > 0
                        && n["load"]["cpus"].as_u64().unwrap_or(0) > 0
                })
        });
    }
    let v = c.json(1, &["nodes"]);
    assert_eq!(v["dead_after_ms"], DEAD_AFTER_MS);
    assert_eq!(v["heartbeat_ms"], HEARTBEAT_MS);
    let table = c.godwit_ok(1, &["nodes"]);
    for n in ["n1*", "n2", "n3"] {
        assert!(table.contains(n), "{table}");
    }
    let history = c.json(1, &["node", "load", "--history"]);
    assert!(
        history["samples"].as_array().unwrap().len() >= 2,
        "{history}"
    );

    // A process on n1 checkpointed and restored through n1's agent: counted in the
    // metrics, and seen from n2 with where it runs.
    let counter_log = c.dir.path().join("counter.log");
    let pid: u32 = c
        .sh(
            1,
            &format!(
                "echo 3999 > /proc/sys/kernel/ns_last_pid; {} {} {} </dev/null >/dev/null 2>&1 & echo $!",
                progs().join("launch").display(),
                progs().join("counter").display(),
                counter_log.display()
            ),
        )
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid_s = pid.to_string();
    c.godwit_ok(
        1,
        &[
            "node",
            "checkpoint",
            "--pid",
            &pid_s,
            "--id",
            "c1",
            "--stop",
        ],
    );
    c.godwit_ok(1, &["node", "restore", "c1"]);
    wait_for("n1's process seen from n2", Duration::from_secs(10), || {
        c.json(2, &["ps", "--all-nodes"])["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| {
                p["node"] == "n1"
                    && p["pid"] == pid
                    && p["kind"] == "transparent"
                    && p["rss_bytes"].as_u64().unwrap_or(0) > 0
            })
    });
    // Without --all-nodes: only n2's own (none).
    let own = c.json(2, &["ps"]);
    assert_eq!(own["processes"].as_array().unwrap().len(), 0, "{own}");
    let table = c.godwit_ok(2, &["ps", "--all-nodes"]);
    assert!(table.contains("n1") && table.contains("counter"), "{table}");

    let text = c.godwit_ok(1, &["node", "metrics"]);
    let m = parse_metrics(&text);
    assert_eq!(metric(&m, "godwit_checkpoints_total"), 1.0, "{text}");
    assert!(metric(&m, "godwit_checkpoint_bytes_total") > 0.0);
    assert_eq!(metric(&m, "godwit_checkpoint_frozen_seconds_count"), 1.0);
    assert_eq!(metric(&m, "godwit_restores_total"), 1.0);
    assert!(metric(&m, "godwit_node_mem_available_bytes") > 0.0);
    assert_eq!(metric(&m, "godwit_peer_up{peer=\"n2\"}"), 1.0);
    assert_eq!(metric(&m, "godwit_peer_up{peer=\"n3\"}"), 1.0);
    // The same on the plain loopback listener, as Prometheus scrapes it.
    // (bash's /dev/tcp: no HTTP client needed on the machine.)
    let out = c
        .exec(1)
        .args([
            "bash",
            "-c",
            &format!(
                "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT}; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
            ),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let answer = String::from_utf8(out.stdout).unwrap();
    let (head, plain) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("application/openmetrics-text"),
        "{head}"
    );
    let pm = parse_metrics(plain);
    assert_eq!(metric(&pm, "godwit_checkpoints_total"), 1.0);
    // The loopback listener is not reachable from outside the host.
    let outside: std::net::SocketAddr = format!("{}.1:{METRICS_PORT}", c.prefix).parse().unwrap();
    assert!(std::net::TcpStream::connect_timeout(&outside, Duration::from_secs(2)).is_err());

    // n3's agent killed: dead on n1 within the bound, then back.
    let pid3 = c.agent_host_pid(3);
    // Only the godwitd this test started.
    let killed = Command::new("kill")
        .args(["-KILL", &pid3.to_string()])
        .status()
        .unwrap();
    let t0 = Instant::now();
    assert!(killed.success());
    let mut seen_suspect = false;
    loop {
        let h = c.health(1, "n3");
        if h == "dead" {
            break;
        }
        seen_suspect |= h == "suspect";
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "n3 not dead after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t0.elapsed();
    let check_ms = c.json(1, &["nodes"])["check_ms"].as_u64().unwrap();
    // The bound: --dead-after-ms plus one check after the last heartbeat, which
    // came before the kill. The agent's own measure (the silence it logged when it
    // declared n3 dead, which is at least the time since the kill) is held to it,
    // with 250 ms for scheduling on a busy machine; what the test saw adds its polling through
    // `godwit nodes` (TLS handshakes on a busy machine).
    let log = std::fs::read_to_string(c.dir.path().join("agent1.log")).unwrap();
    let silent_ms: u64 = log
        .lines()
        .find(|l| l.contains("node dead") && l.contains("peer=n3"))
        .and_then(|l| l.split("silent_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no `node dead` line for n3 in agent1.log:\n{log}"));
    eprintln!(
        "n3 dead on n1 after {took:?} as the test saw it, {silent_ms} ms of silence as n1 saw it (bound {DEAD_AFTER_MS} + {check_ms} ms)"
    );
    assert!(
        silent_ms <= DEAD_AFTER_MS + check_ms + 250,
        "declared dead after {silent_ms} ms of silence"
    );
    assert!(
        took <= Duration::from_millis(DEAD_AFTER_MS + check_ms + 1500),
        "dead after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(DEAD_AFTER_MS - HEARTBEAT_MS),
        "declared dead too early: {took:?}"
    );
    assert!(seen_suspect, "n3 was never suspect on the way");
    assert_eq!(c.health(2, "n3"), "dead");
    let m = parse_metrics(&c.godwit_ok(1, &["node", "metrics"]));
    assert_eq!(
        metric(&m, "godwit_node_events_total{peer=\"n3\",event=\"dead\"}"),
        1.0
    );
    assert!(metric(&m, "godwit_heartbeats_missed_total{peer=\"n3\"}") >= 2.0);
    assert_eq!(metric(&m, "godwit_peer_up{peer=\"n3\"}"), 0.0);

    c.start_agent(3, &["--peers", all.to_str().unwrap()]);
    let t1 = Instant::now();
    wait_for("n3 back on n1", Duration::from_secs(10), || {
        c.health(1, "n3") == "alive"
    });
    eprintln!("n3 alive again on n1 {:?} after it started", t1.elapsed());
    wait_for("n3 back on n2", Duration::from_secs(10), || {
        c.health(2, "n3") == "alive"
    });
    let m = parse_metrics(&c.godwit_ok(1, &["node", "metrics"]));
    assert_eq!(
        metric(&m, "godwit_node_events_total{peer=\"n3\",event=\"back\"}"),
        1.0
    );
    let log = std::fs::read_to_string(c.dir.path().join("agent1.log")).unwrap();
    assert!(
        log.contains("node dead") && log.contains("node back"),
        "{log}"
    );
    // The restored counter is one this test started: ended with the hosts.
}

/// Six busy processes adopted on n1 (of three nodes balancing): the
/// balancers spread them two per node, then nothing moves back and forth
/// (no migration over several more rounds). `godwit balance --dry-run`
/// explains the plan.
#[test]
fn six_busy_processes_spread_over_three_nodes_and_stay() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, balancing);
    let mut pids = Vec::new();
    for i in 0..6 {
        // High PIDs, free on every host (each has its own PID namespace).
        let pid = c.sh(
            1,
            &format!(
                "echo {} > /proc/sys/kernel/ns_last_pid; sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $!",
                5000 + i * 10
            ),
        );
        let pid = pid.trim().to_string();
        c.godwit_ok(1, &["node", "adopt", "--pid", &pid]);
        pids.push(pid);
    }
    let spread = |c: &Hosts| -> Vec<usize> {
        let v = c.json(1, &["ps", "--all-nodes"]);
        (1..=3)
            .map(|h| {
                v["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["node"] == format!("n{h}") && p["kind"] == "transparent")
                    .count()
            })
            .collect()
    };
    let t0 = Instant::now();
    wait_for(
        "two busy processes per node",
        Duration::from_secs(120),
        || spread(&c) == vec![2, 2, 2],
    );
    eprintln!("spread in {:.1} s", t0.elapsed().as_secs_f64());
    let sent = |c: &Hosts| -> f64 {
        (1..=3)
            .map(|h| {
                let text = c.godwit_ok(h, &["node", "metrics"]);
                metric(&parse_metrics(&text), "godwit_migrations_sent_total")
            })
            .sum()
    };
    let moves = sent(&c);
    assert!(moves >= 4.0, "{moves} migrations for 4 needed moves");
    // Several more rounds (each node looks every second; arrivals cool
    // down for 3 s): nothing moves.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(sent(&c), moves, "processes moved back and forth");
    assert_eq!(spread(&c), vec![2, 2, 2]);
    let plan = c.godwit_ok(1, &["balance", "--dry-run"]);
    assert!(
        plan.contains("balancing on n1 is on") && plan.contains("plan: no move"),
        "{plan}"
    );
    // Every busy loop still runs, somewhere.
    let v = c.json(1, &["ps", "--all-nodes"]);
    for pid in &pids {
        assert!(
            v["processes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"].to_string() == *pid),
            "{pid} is gone: {v}"
        );
    }
}

/// n1 may give its managed processes 64 MiB (`--balance-mem-budget-mib`):
/// a process holding 100 MiB adopted there is moved to another node, and
/// stays there (n1 could not take it back).
#[test]
fn a_node_over_its_memory_budget_is_relieved() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, |h| {
        let mut a = balancing(h);
        if h == 1 {
            a.extend(["--balance-mem-budget-mib".into(), "64".into()]);
        }
        a
    });
    let pid = c.sh(
        1,
        "echo 6000 > /proc/sys/kernel/ns_last_pid; python3 -c 'import time; x = bytearray(b\"\\x01\") * (100 << 20); time.sleep(10**6)' </dev/null >/dev/null 2>&1 & echo $!",
    );
    let pid = pid.trim().to_string();
    // Adopted once it holds its memory.
    wait_for(
        "the process to hold 100 MiB",
        Duration::from_secs(20),
        || {
            let rss = c.sh(1, &format!("grep VmRSS /proc/{pid}/status || true"));
            rss.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(0)
                > 100 << 10
        },
    );
    c.godwit_ok(1, &["node", "adopt", "--pid", &pid]);
    let node_of = |c: &Hosts| -> String {
        let v = c.json(1, &["ps", "--all-nodes"]);
        v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"].to_string() == pid)
            .map(|p| p["node"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    wait_for("the process to leave n1", Duration::from_secs(60), || {
        matches!(node_of(&c).as_str(), "n2" | "n3")
    });
    let there = node_of(&c);
    let done = c.json(1, &["balance"]);
    let m = &done["done"][0]["move"];
    assert_eq!(m["reason"], "memory", "{done}");
    assert!(
        m["why"].as_str().unwrap().contains("64 MiB budget"),
        "{done}"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(node_of(&c), there, "it moved again");
}

/// A counter protected on n1 (a checkpoint every second, one copy on n2):
/// n1 dies whole (its init killed: every process of the host); n2 declares
/// it dead and restores the counter from its copy, which counts on from
/// the checkpoint. n1 comes back with its old data: it drops the process
/// (n2 owns it at a higher generation) instead of running it again: one
/// live copy.
#[test]
fn a_protected_process_runs_again_on_a_peer_when_its_node_dies() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, |_| Vec::new());
    let (_, id, log) = protected_counter(&c, 7001);
    let last = || last_count(&log);
    // n1 dies: every process of the host, its agent and the counter.
    let at_death = last();
    c.kill_host(1);
    let t0 = Instant::now();
    wait_for("the counter to run on n2", Duration::from_secs(30), || {
        let v = c.json(2, &["protect"]);
        v["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str() && r["generation"] == 2)
    });
    let took = t0.elapsed();
    eprintln!("taken over {:.2} s after the host died", took.as_secs_f64());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // It counts on from its last checkpoint.
    wait_for(
        "the restored counter to count",
        Duration::from_secs(10),
        || last() > at_death + 2,
    );
    let owner = c.json(2, &["protect"]);
    let r = owner["owned"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(r["owner"], "n2");
    assert_eq!(
        c.sh(2, &format!("cat /proc/{}/comm", r["pid"])).trim(),
        "counter"
    );
    // n1 comes back with its old data: fenced, it runs nothing.
    let out = Command::new(script())
        .args(["revive", &c.name, "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = c.dir.path().join("peers-all");
    c.start_agent(1, &["--peers", all.to_str().unwrap()]);
    let back = c.json(1, &["protect"]);
    assert!(back["owned"].as_array().unwrap().is_empty(), "{back}");
    let counters = c.sh(
        1,
        "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -c '^counter$' || true",
    );
    assert_eq!(counters.trim(), "0", "a second copy runs on n1");
}

/// Fencing when the old owner was only cut off: n1's link goes down; n1,
/// hearing one node of three, pauses its protected counter, and n2 (with
/// n3, a majority) takes it over; once the link is back, n1 learns that n2
/// owns it at a higher generation and kills its paused copy: never two
/// running copies.
#[test]
fn a_cut_off_owner_pauses_its_copy_and_kills_it_when_it_is_back() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, |_| Vec::new());
    let (pid, id, _) = protected_counter(&c, 7101);
    let veth = format!("gw{}1", c.name);
    let link = |state: &str| {
        let st = Command::new("ip")
            .args(["link", "set", &veth, state])
            .status()
            .unwrap();
        assert!(st.success());
    };
    link("down");
    wait_for("n2 to take over", Duration::from_secs(30), || {
        let v = c.json(2, &["protect"]);
        v["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str())
    });
    // Cut off, n1 hears one node of three: its copy is paused (stopped,
    // not killed: had nobody taken over, it would continue).
    assert_eq!(c.sh(1, &format!("cat /proc/{pid}/comm")).trim(), "counter");
    assert_eq!(
        c.state_letter(1, &pid),
        "T",
        "n1's copy runs on while n2's runs"
    );
    link("up");
    // Gone (killed and reaped by the host's init), not merely stopped for a
    // checkpoint of n1's own loop.
    wait_for("n1 to kill its copy", Duration::from_secs(30), || {
        c.sh(
            1,
            &format!("test -e /proc/{pid} && echo there || echo gone"),
        )
        .trim()
            == "gone"
    });
    let v = c.json(1, &["protect"]);
    assert!(v["owned"].as_array().unwrap().is_empty(), "{v}");
    let v = c.json(2, &["protect"]);
    let r = v["owned"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        c.sh(2, &format!("cat /proc/{}/comm", r["pid"])).trim(),
        "counter"
    );
}

/// Quorum without a takeover: n1 stops hearing both peers (their agents
/// are killed: no one is left to take over). Hearing one node of three, n1
/// pauses its protected counter; once n2's agent is back, n1 hears a
/// majority, learns that nobody took the counter over, and lets it
/// continue from where it was paused: nothing lost.
#[test]
fn an_owner_without_a_majority_pauses_and_continues_when_it_has_one() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, |_| Vec::new());
    let (pid, _id, log) = protected_counter(&c, 7201);
    let last = || last_count(&log);
    let state = |c: &Hosts| c.state_letter(1, &pid.to_string());
    for h in [2, 3] {
        let agent = c.agent_host_pid(h);
        // SAFETY: kills the godwitd this test started on host h.
        unsafe { libc::kill(agent, libc::SIGKILL) };
        let mut a = c.agents[h - 1].take().unwrap();
        let _ = a.kill();
        a.wait().unwrap();
    }
    wait_for("n1 to pause its counter", Duration::from_secs(20), || {
        state(&c) == "T"
    });
    let paused_at = last();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(last(), paused_at, "the paused counter counted");
    let all = c.dir.path().join("peers-all");
    c.start_agent(2, &["--peers", all.to_str().unwrap()]);
    wait_for("the counter to continue", Duration::from_secs(20), || {
        last() > paused_at + 1
    });
    assert_ne!(state(&c), "T");
    let v = c.json(1, &["protect"]);
    let r = &v["owned"][0];
    assert_eq!(r["owner"], "n1", "{v}");
    assert_eq!(r["generation"], 1, "{v}");
    let v = c.json(2, &["protect"]);
    assert!(
        v["owned"].as_array().unwrap().is_empty(),
        "n2 took it over: {v}"
    );
}

/// An etcd server of a test, in the calling namespace, listening on the
/// bridge address every simulated host reaches; killed on drop.
struct EtcdServer {
    child: Child,
    url: String,
}

impl EtcdServer {
    fn start(c: &Hosts) -> EtcdServer {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (cp, pp) = (free(), free());
        let client = format!("http://{}.254:{cp}", c.prefix);
        let peer = format!("http://127.0.0.1:{pp}");
        let child = Command::new("etcd")
            .args(["--name", "gw", "--data-dir"])
            .arg(c.dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("gw={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server; scripts/setup.sh installs it)");
        let e = EtcdServer {
            child,
            url: format!("etcd+http://{}.254:{cp}", c.prefix),
        };
        let addr = format!("{}.254:{cp}", c.prefix);
        wait_for("etcd to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        e
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Membership through etcd: three agents given only `--cluster-etcd` learn
/// one another from their leased keys; when n1's host dies its protected
/// counter runs on n2; when etcd itself goes away, no node can renew its
/// lease, so none has a quorum: n2 pauses the counter it now owns.
#[test]
fn agents_meet_through_etcd_leases_and_act_only_while_they_hold_one() {
    let mut c = Hosts::up(3);
    let mut etcd = EtcdServer::start(&c);
    for h in 1..=3 {
        let url = etcd.url.clone();
        c.start_agent(h, &["--cluster-etcd", &url]);
    }
    wait_for(
        "every node to know the two others",
        Duration::from_secs(30),
        || {
            (1..=3).all(|h| {
                let me = format!("n{h}");
                let n: Vec<Value> = c
                    .nodes(h)
                    .into_iter()
                    .filter(|x| x["name"] != me.as_str())
                    .collect();
                n.len() == 2 && n.iter().all(|x| x["health"] == "alive")
            })
        },
    );
    let (_, id, _) = protected_counter(&c, 7301);
    c.kill_host(1);
    wait_for("the counter to run on n2", Duration::from_secs(30), || {
        c.json(2, &["protect"])["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str() && r["generation"] == 2)
    });
    assert_eq!(c.health(2, "n1"), "dead");
    let v = c.json(2, &["protect"]);
    let pid = v["owned"][0]["pid"].as_i64().unwrap();
    let state = |c: &Hosts| c.state_letter(2, &pid.to_string());
    assert_ne!(state(&c), "T");
    etcd.child.kill().unwrap();
    etcd.child.wait().unwrap();
    wait_for(
        "n2 to pause the counter without etcd",
        Duration::from_secs(20),
        || state(&c) == "T",
    );
}

/// The last number a counter wrote to `log` (0 before the first).
fn last_count(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts godwitd on each of `c`'s three hosts, peers of one another, with
/// `extra(host)` added to its options.
fn three_peers(c: &mut Hosts, extra: impl Fn(usize) -> Vec<String>) {
    let all = c.dir.path().join("peers-all");
    let line = |h: usize| format!("n{h} {}\n", c.agent_addr(h));
    std::fs::write(&all, line(1) + &line(2) + &line(3)).unwrap();
    for h in 1..=3 {
        let mut args = vec!["--peers".to_string(), all.to_str().unwrap().to_string()];
        args.extend(extra(h));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.start_agent(h, &args);
    }
}

/// The balancers on, looking every second, arrivals cooling down 3 s.
fn balancing(_: usize) -> Vec<String> {
    [
        "--balance",
        "--balance-every-ms",
        "1000",
        "--balance-cooldown-secs",
        "3",
    ]
    .map(String::from)
    .to_vec()
}

/// A counter started on n1 with PID `pid` and protected there (a
/// checkpoint every second, one copy); returns its PID, the protection's
/// id and its log, once n2 holds a copy.
fn protected_counter(c: &Hosts, pid: u32) -> (String, String, PathBuf) {
    let log = c.dir.path().join(format!("counter{pid}.log"));
    let pid = c.sh(
        1,
        &format!(
            "echo {} > /proc/sys/kernel/ns_last_pid; {} {} </dev/null >/dev/null 2>&1 & echo $!",
            pid - 1,
            progs().join("counter").display(),
            log.display()
        ),
    );
    let pid = pid.trim().to_string();
    wait_for("the counter to count", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
    });
    let v = c.json(
        1,
        &["protect", "--pid", &pid, "--every", "1", "--replicas", "1"],
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["holders"], serde_json::json!(["n2"]), "{v}");
    wait_for("a copy on n2", Duration::from_secs(30), || {
        let h = c.json(2, &["protect"]);
        h["held"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
    });
    (pid, id, log)
}

/// `godwit run --protect -- PROGRAM` on a node: the program starts there,
/// detached (not a child of the command, which returns), managed and
/// protected by the node's agent, its copies going to a peer.
#[test]
fn godwit_run_protect_starts_a_protected_program() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, |_| Vec::new());
    let log = c.dir.path().join("run.log");
    let out = c.sh(
        1,
        &format!(
            "{} --json run --agent {} --token-file {} --protect --every 1 --replicas 1 -- {} {}",
            env!("CARGO_BIN_EXE_godwit"),
            c.agent_addr(1),
            c.token().display(),
            progs().join("counter").display(),
            log.display()
        ),
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let (pid, id) = (
        v["pid"].as_i64().unwrap(),
        v["id"].as_str().unwrap().to_string(),
    );
    assert!(v["program"].as_str().unwrap().ends_with("/counter"), "{v}");
    wait_for("the program to count", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
    });
    // Re-parented: the command that started it has returned.
    let ppid = c.sh(1, &format!("cut -d' ' -f4 /proc/{pid}/stat"));
    assert_eq!(ppid.trim(), "1", "not detached");
    wait_for("a copy on n2", Duration::from_secs(30), || {
        let h = c.json(2, &["protect"]);
        h["held"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == id.as_str())
    });
}

/// Host `host`, dead, comes back with its old data and its agent.
fn revive_host(c: &mut Hosts, host: usize) {
    let out = Command::new(script())
        .args(["revive", &c.name, &host.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = c.dir.path().join("peers-all");
    c.start_agent(host, &["--peers", all.to_str().unwrap()]);
}

/// How many processes named `comm` run on `host`.
fn running(c: &Hosts, host: usize, comm: &str) -> usize {
    c.sh(
        host,
        &format!(
            "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -c '^{comm}$' || true"
        ),
    )
    .trim()
    .parse()
    .unwrap()
}

/// The checkpoint `host` holds of the protected process `id`, if any.
fn held_checkpoint(c: &Hosts, host: usize, id: &str) -> Option<String> {
    c.json(host, &["protect"])["held"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .and_then(|x| x["checkpoint"].as_str().map(String::from))
}

/// redis-cli against `addr`:6391 (from the calling namespace, through the
/// bridge): its answer.
fn redis_cli(addr: &str, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", addr, "-p", "6391"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli must be installed (scripts/setup.sh)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// redis-server with data, protected on n1 (listening on 0.0.0.0, so it
/// serves on whichever host runs it): n1 dies whole; n2 restores it from
/// its copy and answers, at n2's address, with every key of the last
/// checkpoint. n1 comes back: fenced, no second redis-server.
#[test]
fn a_protected_redis_server_serves_its_data_on_a_peer_when_its_host_dies() {
    let mut c = Hosts::up(3);
    three_peers(&mut c, |_| Vec::new());
    let dir = c.dir.path().join("redis");
    std::fs::create_dir(&dir).unwrap();
    let pid = c.sh(
        1,
        &format!(
            "echo 7199 > /proc/sys/kernel/ns_last_pid; {} redis-server --bind 0.0.0.0 --port 6391 \
             --save '' --appendonly no --dir {} --protected-mode no </dev/null >/dev/null 2>&1 & echo $!",
            progs().join("launch").display(),
            dir.display()
        ),
    );
    let pid = pid.trim().to_string();
    let (n1, n2) = (format!("{}.1", c.prefix), format!("{}.2", c.prefix));
    wait_for("redis to answer on n1", Duration::from_secs(20), || {
        redis_cli(&n1, &["ping"]) == "PONG"
    });
    let v = c.json(
        1,
        &["protect", "--pid", &pid, "--every", "1", "--replicas", "1"],
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["holders"], serde_json::json!(["n2"]), "{v}");
    wait_for("a copy on n2", Duration::from_secs(30), || {
        held_checkpoint(&c, 2, &id).is_some()
    });
    // Data written after that copy: in the checkpoints from now on.
    for i in 0..300 {
        assert_eq!(
            redis_cli(&n1, &["set", &format!("key{i}"), &format!("value-{i}")]),
            "OK"
        );
    }
    assert_eq!(redis_cli(&n1, &["rpush", "list", "a", "b", "c"]), "3");
    let before = held_checkpoint(&c, 2, &id);
    // Two newer copies: the second began after the writes had ended.
    let mut seen = before.clone();
    for _ in 0..2 {
        wait_for("a newer copy on n2", Duration::from_secs(30), || {
            let now = held_checkpoint(&c, 2, &id);
            let newer = now != seen;
            if newer {
                seen = now;
            }
            newer
        });
    }
    c.kill_host(1);
    let t0 = Instant::now();
    wait_for("redis to run on n2", Duration::from_secs(30), || {
        c.json(2, &["protect"])["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str() && r["generation"] == 2)
    });
    wait_for("redis to answer on n2", Duration::from_secs(10), || {
        redis_cli(&n2, &["ping"]) == "PONG"
    });
    let took = t0.elapsed();
    eprintln!(
        "redis serves on n2 {:.2} s after n1 died",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(redis_cli(&n2, &["dbsize"]), "301");
    assert_eq!(redis_cli(&n2, &["get", "key0"]), "value-0");
    assert_eq!(redis_cli(&n2, &["get", "key299"]), "value-299");
    assert_eq!(redis_cli(&n2, &["lrange", "list", "0", "-1"]), "a\nb\nc");
    assert_eq!(redis_cli(&n2, &["incr", "new"]), "1");
    assert_eq!(running(&c, 2, "redis-server"), 1);
    // n1 comes back with its old data: fenced, it runs no second redis.
    revive_host(&mut c, 1);
    let back = c.json(1, &["protect"]);
    assert!(back["owned"].as_array().unwrap().is_empty(), "{back}");
    assert_eq!(running(&c, 1, "redis-server"), 0, "a second redis on n1");
    assert_eq!(redis_cli(&n2, &["get", "key7"]), "value-7");
}

/// The bank example (a conformist service), built next to `godwit` when missing.
fn bank_bin() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_godwit")).parent().unwrap();
    let bin = dir.join("bank");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "bank", "--target-dir"])
            .arg(dir.parent().unwrap())
            .status()
            .expect("run cargo build -p bank");
        assert!(status.success(), "building the bank example failed");
    }
    bin
}

/// A conformist service (the bank) started on n1 with `--replicas 1`
/// (a checkpoint every 0.5 s, each copied to n2), its name in n3's name
/// service, under load from a client on n3: n1 dies whole; n2 starts the
/// bank again under its UUID from the newest copy, it re-registers, the
/// client rebinds and goes on (no call fails), and the accounts are those
/// of the last checkpoint: the sum of the balances is conserved (transfers
/// only). n1 comes back: fenced, it runs no second bank.
#[test]
fn a_protected_service_runs_again_on_a_peer_when_its_host_dies() {
    let bank = bank_bin();
    let mut c = Hosts::up(3);
    let allow = bank.to_str().unwrap().to_string();
    three_peers(&mut c, |_| vec!["--allow-exec".into(), allow.clone()]);
    let names = format!("agent://{}", c.agent_addr(3));
    let out = c
        .service_cmd(1, &names)
        .args(["start", "--interval", "0.5", "--replicas", "1", "--"])
        .args([bank.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "service start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let uuid = v["uuid"].as_str().unwrap().to_string();
    assert_eq!(v["holders"], serde_json::json!(["n2"]), "{v}");
    // The load, from n3, through n3's name service.
    let mut load = c
        .exec(3)
        .arg(&bank)
        .args(["load", "--uuid", &uuid, "--names", &names, "--token-file"])
        .arg(c.token())
        .args([
            "--accounts",
            "8",
            "--clients",
            "2",
            "--duration-secs",
            "14",
            "--accrual-every-ms",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // It exits 1 on the transfers acknowledged after the last checkpoint,
        // which the bank lost with n1 (checked below): its reason in a file.
        .stderr(std::fs::File::create(c.dir.path().join("load.err")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(load.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.starts_with("LOAD_READY 8"), "{ready}");
    // Two newer copies on n2 since the accounts were opened.
    let mut seen = held_checkpoint(&c, 2, &uuid);
    for _ in 0..2 {
        wait_for("a newer copy on n2", Duration::from_secs(30), || {
            let now = held_checkpoint(&c, 2, &uuid);
            let newer = now.is_some() && now != seen;
            if newer {
                seen = now;
            }
            newer
        });
    }
    let v = c.json(1, &["protect"]);
    let r = v["owned"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == uuid.as_str())
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    assert!(r["lag_ms"].as_u64().unwrap() < 10_000, "{r}");
    assert!(r["replicated"]["n2"].is_array(), "{r}");
    let last_seen = held_checkpoint(&c, 2, &uuid).unwrap();
    c.kill_host(1);
    let t0 = Instant::now();
    wait_for("the bank to run on n2", Duration::from_secs(30), || {
        c.json(2, &["protect"])["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == uuid.as_str() && r["generation"] == 2)
    });
    let took = t0.elapsed();
    eprintln!(
        "the bank serves on n2 {:.2} s after n1 died",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Listed on n2 as the service, at n2's address (`ps` reads the load sample).
    wait_for("the bank listed on n2", Duration::from_secs(10), || {
        c.json(2, &["ps"])["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| {
                p["uuid"] == uuid.as_str()
                    && p["kind"] == "service"
                    && p["address"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(&format!("{}.2:", c.prefix)))
            })
    });
    // Resumed from the newest copy n2 held (at least the one seen last).
    let out = c
        .service_cmd(2, &names)
        .args(["status", &uuid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from = st["restored_from"]
        .as_str()
        .unwrap_or_else(|| panic!("{st}"));
    assert!(
        from >= last_seen.as_str(),
        "restored {from}, n2 held {last_seen}"
    );
    // The client rebinds through n3's name service and goes on.
    let report = lines.next().unwrap().unwrap();
    let _ = load.wait();
    let report: Value = serde_json::from_str(&report).unwrap();
    eprintln!("load report: {report}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    assert!(report["transfers_acked"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["total_expected"], 8_000_000, "{report}");
    assert_eq!(report["total_actual"], 8_000_000, "{report}");
    assert_eq!(running(&c, 2, "bank"), 1);
    // n1 comes back with its old data: fenced, it runs no second bank.
    revive_host(&mut c, 1);
    let back = c.json(1, &["protect"]);
    assert!(back["owned"].as_array().unwrap().is_empty(), "{back}");
    assert_eq!(running(&c, 1, "bank"), 0, "a second bank on n1");
    assert_eq!(running(&c, 2, "bank"), 1);
}

/// A protected process holding 64 MiB (random, so incompressible) that
/// writes one byte somewhere every 0.5 s: its first copy to n2 carries all its
/// chunks, each later one only the chunks n2 lacks (the owner offers the
/// checkpoint's chunk list, n2 answers what it lacks). The bytes sent and
/// the lag are shown per holder. `GODWIT_REPL_MIB` and
/// `GODWIT_REPL_CHECKPOINTS` change the size and the number of copies
/// watched (docs/PERFORMANCE.md's figures: 256 and 10).
#[test]
fn copies_carry_only_the_chunks_a_holder_lacks() {
    let env = |k: &str, d: u64| -> u64 {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (mib, copies) = (
        env("GODWIT_REPL_MIB", 64),
        env("GODWIT_REPL_CHECKPOINTS", 4),
    );
    let mut c = Hosts::up(3);
    three_peers(&mut c, |_| Vec::new());
    let ready = c.dir.path().join("ready");
    let pid = c.sh(
        1,
        &format!(
            "echo 7300 > /proc/sys/kernel/ns_last_pid; {} python3 -c 'import os, random, time
x = bytearray(os.urandom({mib} << 20))
open(\"{}\", \"w\").close()
while True:
    x[random.randrange(len(x))] = 1
    time.sleep(0.5)' </dev/null >/dev/null 2>&1 & echo $!",
            progs().join("launch").display(),
            ready.display()
        ),
    );
    let pid = pid.trim().to_string();
    wait_for(
        "the process to hold its memory",
        Duration::from_secs(60),
        || ready.exists(),
    );
    let v = c.json(
        1,
        &["protect", "--pid", &pid, "--every", "1", "--replicas", "1"],
    );
    let id = v["id"].as_str().unwrap().to_string();
    let record = |c: &Hosts| -> Value {
        c.json(1, &["protect"])["owned"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id.as_str())
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut first = None;
    wait_for("the first copy on n2", Duration::from_secs(120), || {
        first = record(&c)["sent_bytes"]["n2"][1].as_u64();
        first.is_some()
    });
    let first = first.unwrap();
    let sent_at = |r: &Value| r["replicated"]["n2"][0].as_str().map(String::from);
    let mut seen = sent_at(&record(&c));
    for _ in 1..copies {
        wait_for("a newer copy on n2", Duration::from_secs(120), || {
            let now = sent_at(&record(&c));
            let newer = now != seen;
            if newer {
                seen = now;
            }
            newer
        });
    }
    let r = record(&c);
    let (last, total) = (
        r["sent_bytes"]["n2"][0].as_u64().unwrap(),
        r["sent_bytes"]["n2"][1].as_u64().unwrap(),
    );
    eprintln!(
        "{mib} MiB, {copies} copies: first {first} bytes, last {last}, all {total} (whole each time: {})",
        first * copies
    );
    assert!(first >= mib << 20, "the first copy sent {first} bytes");
    // Whole, each copy would be `first` again.
    assert!(last < first / 4, "a later copy sent {last} bytes");
    assert!(
        total < first + (copies - 1) * first / 4,
        "{total} bytes in all"
    );
    assert!(
        r["lag_ms_by_holder"]["n2"].as_u64().unwrap() < 30_000,
        "{r}"
    );
    let table = c.godwit_ok(1, &["protect"]);
    assert!(
        table.contains("copies on n2 (lag ") && table.contains("bytes)"),
        "{table}"
    );
    // n2's copy is whole: n1 dies, n2 restores it.
    c.kill_host(1);
    wait_for("the process to run on n2", Duration::from_secs(60), || {
        c.json(2, &["protect"])["owned"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == id.as_str() && r["generation"] == 2)
    });
    assert_eq!(running(&c, 2, "python3"), 1);
}

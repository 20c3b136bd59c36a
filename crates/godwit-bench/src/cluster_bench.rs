//! Cluster benchmark: on three simulated hosts (scripts/cluster.sh: each
//! its own network and PID namespace), each with its godwitd and the
//! default heartbeat unless told otherwise,
//! - failover: a protected counter on n1 (a checkpoint every second, one
//!   copy), then n1 dies whole (its init killed); measured: from the kill
//!   until n2 runs the counter (it owns it at generation 2), against the
//!   bound the heartbeat sets (`dead after`);
//! - balancing: six busy loops adopted on n1 with the balancers on;
//!   measured: from their adoption until they are two per host, the moves
//!   made, and that none is made over the next rounds.
//!
//!   cargo build --release -p godwit-bench -p godwitd -p godwit-cli
//!   target/release/godwit-cluster-bench --out docs/bench/cluster.json
//!
//! Needs root (namespaces) and the release binaries next to this one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(clap::Parser)]
struct Args {
    /// Failover repetitions.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// godwitd --heartbeat-ms (default: godwitd's, 1000).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// godwitd --balance-every-ms for the balancing run (godwitd's default 5000).
    #[arg(long, default_value_t = 5000)]
    balance_every_ms: u64,
    #[arg(long, default_value = "target/bench/cluster.json")]
    out: PathBuf,
}

const NAME: &str = "gwbch";
const PREFIX: &str = "10.216.77";
const PORT: u16 = 7433;

fn bin(name: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} is missing (cargo build --release -p godwitd -p godwit-cli)",
            p.display()
        );
    }
    Ok(p)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh")
}

/// The simulated hosts and their agents, taken down on drop.
struct Hosts {
    dir: tempfile::TempDir,
    agents: Vec<Option<Child>>,
}

impl Hosts {
    fn up() -> Result<Hosts> {
        let out = Command::new(script())
            .args(["up", NAME, "3", PREFIX])
            .output()?;
        if !out.status.success() {
            bail!("cluster.sh up: {}", String::from_utf8_lossy(&out.stderr));
        }
        let dir = tempfile::Builder::new()
            .prefix("godwit-cluster-bench")
            .tempdir()?;
        let token = dir.path().join("token");
        std::fs::write(&token, "cluster-bench-token-0123456789abcdef0123\n")?;
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let peers: String = (1..=3).map(|h| format!("n{h} {}\n", addr(h))).collect();
        std::fs::write(dir.path().join("peers"), peers)?;
        Ok(Hosts {
            dir,
            agents: vec![None, None, None],
        })
    }

    fn exec(&self, host: usize) -> Command {
        let mut c = Command::new(script());
        c.args(["exec", NAME, &host.to_string()]);
        c
    }

    fn sh(&self, host: usize, script: &str) -> Result<String> {
        let out = self
            .exec(host)
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "host {host}: {script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_agent(&mut self, host: usize, args: &[String]) -> Result<()> {
        if let Some(mut old) = self.agents[host - 1].take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("agent{host}.log")))?;
        let mut child = self
            .exec(host)
            .arg(bin("godwitd")?)
            .args(["--listen", &addr(host), "--data"])
            .arg(self.dir.path().join(format!("node{host}")))
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .args(["--node-name", &format!("n{host}"), "--peers"])
            .arg(self.dir.path().join("peers"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("godwitd's stdout")?).read_line(&mut line)?;
        if !line.starts_with("GODWITD_READY") {
            bail!("godwitd on host {host} said {line:?}");
        }
        self.agents[host - 1] = Some(child);
        Ok(())
    }

    fn godwit(&self, host: usize, args: &[&str]) -> Result<Value> {
        let mut c = Command::new(bin("godwit")?);
        c.arg("--json")
            .args(args)
            .args(["--agent", &addr(host), "--token-file"]);
        c.arg(self.dir.path().join("token"));
        let out = c.stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("godwit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `godwit node --agent HOST ... ARGS`.
    fn node(&self, host: usize, args: &[&str]) -> Result<()> {
        let out = Command::new(bin("godwit")?)
            .args(["node", "--agent", &addr(host), "--token-file"])
            .arg(self.dir.path().join("token"))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "godwit node {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn kill_host(&self, host: usize) -> Result<()> {
        let out = Command::new(script())
            .args(["init", NAME, &host.to_string()])
            .output()?;
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        // SAFETY: kill(2) of the init of a simulated host this bench made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Ok(())
    }

    fn revive(&self, host: usize) -> Result<()> {
        let out = Command::new(script())
            .args(["revive", NAME, &host.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "cluster.sh revive: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script()).args(["down", NAME]).status();
        for a in self.agents.iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn addr(host: usize) -> String {
    format!("{PREFIX}.{host}:{PORT}")
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f()? {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what}: not within {limit:?}")
}

fn counter() -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/progs");
    let dir = std::env::temp_dir().join("godwit-cluster-bench-bin");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("counter");
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(src.join("counter.c"))
        .arg("-I")
        .arg(&src)
        .status()?;
    if !st.success() {
        bail!("compiling tests/progs/counter.c");
    }
    Ok(out)
}

fn failover(args: &Args) -> Result<Value> {
    let mut h = Hosts::up()?;
    let hb = vec!["--heartbeat-ms".to_string(), args.heartbeat_ms.to_string()];
    for host in 1..=3 {
        h.start_agent(host, &hb)?;
    }
    let prog = counter()?;
    let mut runs = Vec::new();
    let mut dead_after = 0;
    for rep in 0..args.reps {
        let log = h.dir.path().join(format!("counter{rep}.log"));
        let pid = h.sh(
            1,
            &format!(
                "echo {} > /proc/sys/kernel/ns_last_pid; {} {} </dev/null >/dev/null 2>&1 & echo $!",
                7000 + rep * 100,
                prog.display(),
                log.display()
            ),
        )?;
        let pid = pid.trim().to_string();
        let v = h.godwit(
            1,
            &["protect", "--pid", &pid, "--every", "1", "--replicas", "1"],
        )?;
        let id = v["id"].as_str().context("the protection's id")?.to_string();
        wait("a copy on n2", Duration::from_secs(60), || {
            let v = h.godwit(2, &["protect"])?;
            Ok(v["held"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["id"] == id.as_str()))
        })?;
        let nodes = h.godwit(2, &["nodes"])?;
        dead_after = nodes["dead_after_ms"].as_u64().unwrap_or(0);
        h.kill_host(1)?;
        let took = wait("n2 to run the counter", Duration::from_secs(60), || {
            let v = h.godwit(2, &["protect"])?;
            Ok(v["owned"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["id"] == id.as_str()))
        })?;
        eprintln!(
            "failover {rep}: {:.2} s (dead after {dead_after} ms)",
            took.as_secs_f64()
        );
        runs.push(took.as_secs_f64());
        // n1 back with its data (fenced: it runs nothing); n2's copy ends so
        // that the next repetition starts alone.
        h.revive(1)?;
        h.start_agent(1, &hb)?;
        let owned = h.godwit(2, &["protect"])?;
        for r in owned["owned"].as_array().into_iter().flatten() {
            let _ = h.sh(2, &format!("kill -9 {} 2>/dev/null || true", r["pid"]));
        }
        std::thread::sleep(Duration::from_millis(args.heartbeat_ms * 4));
    }
    runs.sort_by(f64::total_cmp);
    Ok(json!({
        "heartbeat_ms": args.heartbeat_ms,
        "dead_after_ms": dead_after,
        "checkpoint_every_s": 1,
        "seconds": runs,
        "median_s": runs[runs.len() / 2],
        "target_s": 5,
    }))
}

fn balancing(args: &Args) -> Result<Value> {
    let mut h = Hosts::up()?;
    let a = vec![
        "--heartbeat-ms".to_string(),
        args.heartbeat_ms.to_string(),
        "--balance".to_string(),
        "--balance-every-ms".to_string(),
        args.balance_every_ms.to_string(),
    ];
    for host in 1..=3 {
        h.start_agent(host, &a)?;
    }
    let t0 = Instant::now();
    for i in 0..6 {
        let pid = h.sh(
            1,
            &format!(
                "echo {} > /proc/sys/kernel/ns_last_pid; sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 & echo $!",
                5000 + i * 10
            ),
        )?;
        h.node(1, &["adopt", "--pid", pid.trim()])?;
    }
    let spread = |h: &Hosts| -> Result<Vec<usize>> {
        let v = h.godwit(1, &["ps", "--all-nodes"])?;
        Ok((1..=3)
            .map(|n| {
                v["processes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["node"] == format!("n{n}") && p["kind"] == "transparent")
                    .count()
            })
            .collect())
    };
    let settled = wait("two per host", Duration::from_secs(600), || {
        Ok(spread(&h)? == vec![2, 2, 2])
    })?;
    let moves = |h: &Hosts| -> Result<usize> {
        let mut n = 0;
        for host in 1..=3 {
            n += h.godwit(host, &["balance"])?["done"]
                .as_array()
                .map_or(0, Vec::len);
        }
        Ok(n)
    };
    let made = moves(&h)?;
    std::thread::sleep(Duration::from_millis(args.balance_every_ms * 4));
    let after = moves(&h)?;
    eprintln!(
        "balancing: settled in {:.1} s with {made} moves; {} more in four rounds",
        settled.as_secs_f64(),
        after - made
    );
    Ok(json!({
        "processes": 6, "hosts": 3,
        "balance_every_ms": args.balance_every_ms,
        "settled_s": settled.as_secs_f64(),
        "since_start_s": t0.elapsed().as_secs_f64(),
        "moves": made,
        "moves_in_four_more_rounds": after - made,
    }))
}

fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    let f = failover(&args)?;
    let b = balancing(&args)?;
    let out = json!({
        "bench": "cluster",
        "hosts": "3 simulated hosts on one machine (scripts/cluster.sh), sharing its 2 CPUs",
        "failover": f,
        "balancing": b,
    });
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

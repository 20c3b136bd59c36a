//! godwit-migrate-bench: how long a migrated process stalls, and how long a
//! migration takes, beside a raw copy of the same bytes over the same link.
//!
//! For each mode, size and writer rate: a target process holds SIZE MiB of
//! dirty anonymous memory and rewrites RATE MiB/s of it while ticking every
//! millisecond; it records its own longest gap between two ticks (its
//! stall, as the process sees it). It is migrated to a godwitd on this
//! machine (loopback, `--pid-ns` so that its PID is free there) through the
//! real path: godwit-net's TLS channel, the engine's stream, the agent's
//! restore. Then it checks every page (each must be whole: one generation).
//! The ceiling beside it: the same number of bytes copied over the same
//! link by plain TCP, and by the same TLS channel.
//!
//! Run as root, from a release build:
//!   cargo build --release -p godwit-bench -p godwitd
//!   target/release/godwit-migrate-bench [--sizes 64,1024] [--rates 0,50,200]
//!       [--modes stop-copy,pre-copy] [--reps 3] [--out FILE] [--fill-before-run]

#[allow(dead_code)] // the dump benchmark's target modes are not all used here
mod target;

use anyhow::{bail, Context, Result};
use godwit_engine::migrate::{self, MigrateOptions, Mode};
use godwit_engine::Quiet;
use godwit_net::{ChannelKind, ClientTls, ServerTls, Token, TokenSet};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Migration benchmark: stall and total time per mode, size and writer rate.
#[derive(clap::Parser, Debug)]
#[command(name = "godwit-migrate-bench")]
struct Args {
    /// Memory of the target, MiB.
    #[arg(long, value_delimiter = ',', default_values_t = [64u64, 1024])]
    sizes: Vec<u64>,
    /// How fast the target rewrites its memory, MiB/s.
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 50, 200])]
    rates: Vec<u64>,
    /// stop-copy, pre-copy, post-copy, pre-copy-post-copy.
    #[arg(long, value_delimiter = ',', value_parser = parse_mode,
          default_values = ["stop-copy", "pre-copy", "post-copy"])]
    modes: Vec<Mode>,
    /// Repetitions; min and median are reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// JSON output.
    #[arg(long, default_value = "target/bench/migrate.json")]
    out: PathBuf,
    /// Start the destination godwitd with --fill-before-run (memory placed
    /// before the process runs, as before the deferred fill).
    #[arg(long)]
    fill_before_run: bool,
    /// Pre-copy: `godwit migrate --max-downtime MS` (what is written last
    /// follows the process when sending it frozen would take longer).
    #[arg(long, value_name = "MS")]
    max_downtime: Option<u64>,
}

fn parse_mode(s: &str) -> std::result::Result<Mode, String> {
    Mode::parse(s).ok_or_else(|| format!("unknown mode {s:?}"))
}

/// The destination: a godwitd on loopback, ended on drop.
struct Agent {
    child: Child,
    addr: String,
}

impl Agent {
    fn start(work: &Path, token_file: &Path, fill_before_run: bool) -> Result<Agent> {
        let bin = std::env::current_exe()?
            .parent()
            .context("where the benchmark runs from")?
            .join("godwitd");
        let mut child = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(work.join("agent"))
            .arg("--token-file")
            .arg(token_file)
            .args(fill_before_run.then_some("--fill-before-run"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --release -p godwitd)",
                    bin.display()
                )
            })?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("godwitd's stdout")?).read_line(&mut line)?;
        let addr = line
            .strip_prefix("GODWITD_READY ")
            .map(|s| s.trim().to_string())
            .with_context(|| format!("godwitd said {line:?}"))?;
        Ok(Agent { child, addr })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stats(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    json!({"min": s.first(), "median": s.get(s.len() / 2), "max": s.last(), "all": v})
}

/// Plain TCP over loopback: `bytes` written in 1 MiB pieces and read.
fn raw_tcp(bytes: u64) -> Result<f64> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let rx = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        while s.read(&mut buf)? > 0 {}
        Ok(())
    });
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    rx.join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// The same through godwit-net's TLS channel (handshake and binding included).
fn tls_copy(bytes: u64, token: &Token) -> Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = ServerTls::new(TokenSet::from_tokens([token.clone()]), None)?;
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = l.local_addr()?.to_string();
    let srv = rt.spawn(async move {
        use tokio::io::AsyncReadExt;
        let (tcp, _) = l.accept().await?;
        let (mut s, _, _) = server.accept(tcp).await?;
        let mut buf = vec![0u8; 1 << 20];
        while s.read(&mut buf).await? > 0 {}
        anyhow::Ok(())
    });
    let client = ClientTls::new(token.clone(), None)?;
    let buf = vec![0x5au8; 1 << 20];
    let t0 = Instant::now();
    let mut s = client.connect_blocking(&addr, ChannelKind::Migration, Duration::from_secs(10))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    s.flush()?;
    s.close()?;
    rt.block_on(srv)??;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn read_stalls(path: &Path) -> Option<(u64, u64)> {
    let t = std::fs::read_to_string(path).ok()?;
    let mut it = t.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

struct Run {
    stall_ms: f64,
    downtime_ms: f64,
    total_ms: f64,
    bytes: u64,
    rounds: usize,
    phases: Vec<(&'static str, f64)>,
    /// The mode that ran (pre-copy may go on as pre-copy-post-copy).
    ran: &'static str,
}

/// What every run uses: the target program, the work directory, the
/// destination and the client that reaches it.
struct Setup<'a> {
    bin: &'a Path,
    work: &'a Path,
    agent: &'a Agent,
    client: &'a ClientTls,
    max_downtime: Option<u64>,
}

fn one(setup: &Setup, mode: Mode, mib: u64, rate: u64, tag: &str) -> Result<Run> {
    let Setup {
        bin,
        work,
        agent,
        client,
        max_downtime,
    } = *setup;
    let stalls = work.join(format!("stalls-{tag}"));
    let result = work.join(format!("result-{tag}"));
    let ready = work.join(format!("ready-{tag}"));
    let mut cmd = Command::new(bin);
    cmd.arg("writer")
        .arg(mib.to_string())
        .arg(rate.to_string())
        .arg(&ready)
        .arg(&result)
        .arg(&stalls);
    let mut t = target::Target::spawn_cmd(cmd, ready.clone(), result.clone())?;
    // Settle, then measure from a fresh maximum.
    std::thread::sleep(Duration::from_millis(300));
    let _ = std::fs::remove_file(&stalls);
    // SAFETY: kill has no memory arguments.
    unsafe { libc::kill(t.pid, libc::SIGUSR2) };
    let t0 = Instant::now();
    while read_stalls(&stalls).is_none_or(|(_, ticks)| ticks > 50) {
        if t0.elapsed() > Duration::from_secs(5) {
            bail!("the target does not report its stalls");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let stream =
        client.connect_blocking(&agent.addr, ChannelKind::Migration, Duration::from_secs(10))?;
    stream.tcp().set_nodelay(true)?;
    stream
        .tcp()
        .set_read_timeout(Some(Duration::from_secs(120)))?;
    let opts = MigrateOptions {
        mode,
        pid_ns: true,
        dump: godwit_engine::dump::DumpOptions {
            max_frozen_copy: max_downtime.map(Duration::from_millis),
            ..Default::default()
        },
        watchdog: Duration::from_secs(120),
        keep_image: None,
        move_ip: None,
        inherit_fds: Vec::new(),
    };
    let r = migrate::send(stream, &agent.addr, &[t.pid], &opts, &Quiet)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    t.ended_by_dump();
    // The moved process is the destination's; it runs in a PID namespace
    // whose init is a child of godwitd. Its host PID:
    t.adopt(r.host_pid);
    // A report written after the switch (the file may still hold one from
    // before the freeze): removed, then awaited.
    let _ = std::fs::remove_file(&stalls);
    let t1 = Instant::now();
    while read_stalls(&stalls).is_none() {
        if t1.elapsed() > Duration::from_secs(60) {
            bail!("the moved target does not report its stalls");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // A few more ticks, in case a fault is still to come.
    std::thread::sleep(Duration::from_millis(200));
    let (gap_us, _) = read_stalls(&stalls).context("the moved target does not report")?;
    t.check()?;
    Ok(Run {
        // One tick is 1 ms of sleep by design.
        stall_ms: (gap_us as f64 / 1e3 - 1.0).max(0.0),
        downtime_ms: r.downtime.as_secs_f64() * 1e3,
        total_ms: r.total.as_secs_f64() * 1e3,
        bytes: r.bytes_sent,
        rounds: r.rounds,
        ran: r.mode.name(),
        phases: r
            .phases
            .iter()
            .map(|(n, d)| (*n, d.as_secs_f64() * 1e3))
            .collect(),
    })
}

fn run(a: &Args) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("godwit-migrate-bench must run as root");
    }
    let work = tempfile::Builder::new()
        .prefix("godwit-migrate-bench")
        .tempdir()?;
    let bin = target::compile(work.path())?;
    let token = Token::new("migrate-bench-token-0123456789abcdef")?;
    let token_file = work.path().join("token");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)?;
        writeln!(f, "migrate-bench-token-0123456789abcdef")?;
    }
    let agent = Agent::start(work.path(), &token_file, a.fill_before_run)?;
    let client = ClientTls::new(Token::load(&token_file)?, None)?;
    let setup = Setup {
        bin: &bin,
        work: work.path(),
        agent: &agent,
        client: &client,
        max_downtime: a.max_downtime,
    };
    let mut results = Vec::new();
    for &mib in &a.sizes {
        let bytes = mib << 20;
        let tcp: Vec<f64> = (0..a.reps).map(|_| raw_tcp(bytes)).collect::<Result<_>>()?;
        let tls: Vec<f64> = (0..a.reps)
            .map(|_| tls_copy(bytes, &token))
            .collect::<Result<_>>()?;
        println!(
            "{mib:>6} MiB  ceiling: raw TCP copy {:.1} ms, TLS channel copy {:.1} ms (medians)",
            stats(&tcp)["median"].as_f64().unwrap_or(0.0),
            stats(&tls)["median"].as_f64().unwrap_or(0.0)
        );
        let mut runs = Vec::new();
        for &mode in &a.modes {
            for &rate in &a.rates {
                let mut rs = Vec::new();
                for rep in 0..a.reps {
                    let tag = format!("{}-{mib}-{rate}-{rep}", mode.name());
                    rs.push(one(&setup, mode, mib, rate, &tag)?);
                    target::reap_strays();
                }
                let f = |g: fn(&Run) -> f64| rs.iter().map(g).collect::<Vec<f64>>();
                let row = json!({
                    "mode": mode.name(), "rate_mib_s": rate,
                    "stall_ms": stats(&f(|r| r.stall_ms)),
                    "downtime_ms": stats(&f(|r| r.downtime_ms)),
                    "total_ms": stats(&f(|r| r.total_ms)),
                    "bytes_sent": stats(&f(|r| r.bytes as f64)),
                    "rounds": rs.iter().map(|r| r.rounds).collect::<Vec<_>>(),
                    "ran": rs.iter().map(|r| r.ran).collect::<Vec<_>>(),
                    "phases_ms": rs.iter().map(|r| r.phases.iter().map(|(n, ms)| json!({"phase": n, "ms": ms})).collect::<Vec<_>>()).collect::<Vec<_>>(),
                });
                println!(
                    "{mib:>6} MiB  {:<9} writer {rate:>3} MiB/s: stall {:>7.1} ms, downtime {:>7.1} ms, total {:>7.1} ms, {:>6.0} MiB sent (medians)",
                    mode.name(),
                    row["stall_ms"]["median"].as_f64().unwrap_or(0.0),
                    row["downtime_ms"]["median"].as_f64().unwrap_or(0.0),
                    row["total_ms"]["median"].as_f64().unwrap_or(0.0),
                    row["bytes_sent"]["median"].as_f64().unwrap_or(0.0) / (1u64 << 20) as f64,
                );
                runs.push(row);
            }
        }
        results.push(json!({
            "size_mib": mib,
            "ceiling": {"raw_tcp_ms": stats(&tcp), "tls_channel_ms": stats(&tls)},
            "runs": runs,
        }));
    }
    let doc = json!({
        "link": "loopback (godwitd on 127.0.0.1; restore into a new PID namespace)",
        "reps": a.reps,
        "max_downtime_ms": a.max_downtime,
        "fill_before_run": a.fill_before_run,
        "stall": "the target's longest gap between two 1 ms ticks, minus 1 ms",
        "results": results,
    });
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("JSON: {}", a.out.display());
    Ok(())
}

fn main() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("GODWIT_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = <Args as clap::Parser>::parse();
    if let Err(e) = run(&args) {
        eprintln!("\ngodwit-migrate-bench: {e:#}");
        std::process::exit(1);
    }
}

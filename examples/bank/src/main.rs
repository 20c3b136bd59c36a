//! `bank serve [service options]` runs the bank service (options in docs/SDK.md);
//! `bank load ...` hammers it with concurrent clients and checks every balance;
//! `bank admin ...` runs the `godwit service` subcommands (ls, checkpoint, migrate, ...).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use bank::{AuditorConfig, Bank, BankClient, BankError};
use clap::{Parser, Subcommand};
use godwit_agent_client::ServiceCmd;
use godwit_sdk::{Client, ClientOptions, Names};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "bank", about = "Example Godwit conformist service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the service. Options: --uuid --listen --advertise --names --store --token-file
    /// --interval --keep --keep-secs --keep-bytes --standby --restore --resume --lease
    /// --worker-wait --durable-log --durable-sync (see docs/SDK.md); the bank's own:
    /// --audit-ms N (run the auditor worker, a round every N ms), --audit-stall-ms M
    /// (each round spends M ms outside any safe point).
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        options: Vec<String>,
    },
    /// Generate load and check the outcome; prints a JSON report, exits 1 on a mismatch.
    Load(LoadArgs),
    /// `godwit service` subcommands against a godwitd.
    Admin {
        /// godwitd address, HOST:PORT.
        #[arg(long)]
        agent: String,
        /// File with the API token (mode 0600; the first token is used).
        #[arg(long)]
        token_file: String,
        /// CA certificate (PEM) to verify the agents' certificates with (PKI mode).
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
}

#[derive(Parser, Debug, Clone)]
struct LoadArgs {
    /// Service UUID.
    #[arg(long)]
    uuid: String,
    /// Name service URL (agent://HOST:PORT or etcd+http://HOST:PORT).
    #[arg(long)]
    names: String,
    /// Token file for an agent name service.
    #[arg(long)]
    token_file: Option<String>,
    /// Call token file, for a bank started with `--call-token-file` (default: the
    /// `GODWIT_CALL_TOKEN` environment variable, or none).
    #[arg(long)]
    call_token_file: Option<String>,
    /// Accounts to open.
    #[arg(long, default_value_t = 8)]
    accounts: u64,
    /// Concurrent clients doing transfers.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// How long the clients run.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Start an interest accrual this often (0: never).
    #[arg(long, default_value_t = 1000)]
    accrual_every_ms: u64,
    /// Pause between accounts inside an accrual.
    #[arg(long, default_value_t = 50)]
    accrual_pause_ms: u64,
    /// Interest rate in basis points.
    #[arg(long, default_value_t = 100)]
    rate_bp: u32,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write `start_unix_us latency_us` per call to this file.
    #[arg(long)]
    latency_out: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        // Colour only on a terminal: a log file (godwitd's logs of the programs it
        // starts, a redirect) gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve { options } => serve(options).await,
            Cmd::Load(a) => load(a).await,
            Cmd::Admin {
                agent,
                token_file,
                tls_ca,
                json,
                cmd,
            } => {
                let token = godwit_agent_client::load_token(std::path::Path::new(&token_file))
                    .with_context(|| format!("reading {token_file}"))?;
                godwit_agent_client::run_service_cmd(cmd, &agent, token, tls_ca.as_deref(), json)
                    .await
            }
        }
    })
}

/// `bank serve`: takes the bank's own options (`--audit-ms`, `--audit-stall-ms`, in any
/// place) out of the service options and repeats them on a relaunch.
async fn serve(options: Vec<String>) -> anyhow::Result<()> {
    let mut relaunch = vec!["serve".to_string()];
    let mut rest = Vec::new();
    let (mut audit_ms, mut stall_ms) = (0u64, 0u64);
    let mut it = options.into_iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--audit-ms" => &mut audit_ms,
            "--audit-stall-ms" => &mut stall_ms,
            _ => {
                rest.push(a);
                continue;
            }
        };
        let v = it
            .next()
            .with_context(|| format!("{a} needs a number of milliseconds"))?;
        *slot = v
            .parse()
            .with_context(|| format!("{a} {v}: not a number of milliseconds"))?;
        relaunch.extend([a, v]);
    }
    let mut hooks = godwit_sdk::Hooks::new();
    if audit_ms > 0 {
        let cfg = AuditorConfig {
            every: Duration::from_millis(audit_ms),
            stall: Duration::from_millis(stall_ms),
        };
        // The same hook on start and on restore: a restored auditor gets its state back.
        hooks = hooks.on_start(move |ctx| bank::start_auditor(ctx, cfg));
    }
    godwit_sdk::run_service_with(relaunch, rest, Bank::default, hooks).await?;
    Ok(())
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
struct Tally {
    /// Net effect of acknowledged calls per account.
    delta: BTreeMap<u64, i64>,
    acked: u64,
    rejected: u64,
    accruals: u64,
    credited: i64,
    latencies_us: Vec<(u64, u64)>,
    failures: Vec<String>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn client(a: &LoadArgs, names: &Names, call_token: &Option<String>) -> BankClient {
    let mut opts = ClientOptions {
        deadline: Duration::from_secs(60),
        ..Default::default()
    };
    if call_token.is_some() {
        opts.call_token = call_token.clone();
    }
    BankClient::new(Client::by_uuid(&a.uuid, names.clone(), opts))
}

async fn load(a: LoadArgs) -> anyhow::Result<()> {
    let token = match &a.token_file {
        Some(f) => Some(
            godwit_agent_client::load_token(std::path::Path::new(f))
                .with_context(|| format!("reading {f}"))?,
        ),
        None => None,
    };
    let names = Names::from_url(&a.names, token)?;
    let call_token = match &a.call_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {f}"))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let setup = client(&a, &names, &call_token);
    const INITIAL: i64 = 1_000_000;
    let mut ids = Vec::new();
    for i in 0..a.accounts {
        let id = setup
            .open(format!("owner-{i}"), INITIAL)
            .await?
            .map_err(|e| anyhow::anyhow!("open: {e}"))?;
        ids.push(id);
    }
    let initial: BTreeMap<u64, i64> = ids.iter().map(|id| (*id, INITIAL)).collect();
    println!("LOAD_READY {}", ids.len());
    std::io::stdout().flush()?;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs_f64(a.duration_secs);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (bank, ids, tally) = (client(&a, &names, &call_token), ids.clone(), tally.clone());
        let mut rng = Rng(a.seed.wrapping_mul(1_000_003).wrapping_add(c * 7919 + 1));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let from = ids[(rng.next() % ids.len() as u64) as usize];
                let to = ids[(rng.next() % ids.len() as u64) as usize];
                // Occasionally more than an account holds, so refusals happen too.
                let amount = (rng.next() % 40_000) as i64 + 1;
                let t0 = Instant::now();
                let start = now_us();
                let r = bank.transfer(from, to, amount).await;
                let lat = t0.elapsed().as_micros() as u64;
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                t.latencies_us.push((start, lat));
                match r {
                    Ok(Ok(())) => {
                        t.acked += 1;
                        *t.delta.entry(from).or_default() -= amount;
                        *t.delta.entry(to).or_default() += amount;
                    }
                    Ok(Err(BankError::InsufficientFunds { .. })) => t.rejected += 1,
                    Ok(Err(e)) => t.failures.push(format!(
                        "transfer {from}->{to} {amount}: unexpected refusal {e}"
                    )),
                    Err(e) => {
                        t.failures
                            .push(format!("transfer {from}->{to} {amount}: {e}"));
                        return;
                    }
                }
            }
        }));
    }
    if a.accrual_every_ms > 0 {
        let (bank, ids, tally, a2) = (
            client(&a, &names, &call_token),
            ids.clone(),
            tally.clone(),
            a.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(a2.accrual_every_ms)).await;
                let r = bank.accrue_interest(a2.rate_bp, a2.accrual_pause_ms).await;
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(credited) => {
                        t.accruals += 1;
                        // An accrual pays every account of the bank, also those that
                        // were there before this load started: only ours are checked.
                        let mut seen = std::collections::BTreeSet::new();
                        for (id, amount) in credited {
                            if !seen.insert(id) {
                                t.failures
                                    .push(format!("accrual credited account {id} twice"));
                            }
                            if ids.contains(&id) {
                                t.credited += amount;
                                *t.delta.entry(id).or_default() += amount;
                            }
                        }
                        let missed: Vec<u64> = ids
                            .iter()
                            .filter(|id| !seen.contains(id))
                            .copied()
                            .collect();
                        if !missed.is_empty() {
                            t.failures.push(format!(
                                "accrual did not pay accounts {missed:?} opened by this load"
                            ));
                        }
                    }
                    Err(e) => {
                        t.failures.push(format!("accrue_interest: {e}"));
                        return;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let actual = setup.balances().await?;
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let mut mismatches = Vec::new();
    for (id, init) in &initial {
        let expected = init + t.delta.get(id).copied().unwrap_or(0);
        let got = actual.get(id).copied();
        if got != Some(expected) {
            mismatches.push(json!({ "account": id, "expected": expected, "actual": got }));
        }
    }
    let mut lats: Vec<u64> = t.latencies_us.iter().map(|(_, l)| *l).collect();
    lats.sort_unstable();
    let pct = |p: f64| {
        lats.get(((lats.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    if let Some(path) = &a.latency_out {
        let mut s = String::new();
        for (start, l) in &t.latencies_us {
            s.push_str(&format!("{start} {l}\n"));
        }
        std::fs::write(path, s).with_context(|| format!("writing {path}"))?;
    }
    let ok = mismatches.is_empty() && t.failures.is_empty();
    let report = json!({
        "ok": ok,
        "transfers_acked": t.acked,
        "transfers_refused": t.rejected,
        "accruals": t.accruals,
        "interest_credited": t.credited,
        // Totals over the accounts this load opened (the bank may hold others).
        "total_expected": initial.values().sum::<i64>() + t.credited,
        "total_actual": initial.keys().filter_map(|id| actual.get(id)).sum::<i64>(),
        "accounts_before": actual.len().saturating_sub(initial.len()),
        "mismatches": mismatches,
        "failures": t.failures,
        "latency_ms": { "n": lats.len(), "p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0) },
    });
    println!("{report}");
    if !ok {
        bail!("outcome check failed");
    }
    Ok(())
}

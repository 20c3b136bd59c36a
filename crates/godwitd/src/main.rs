//! godwitd — the Godwit node agent. One per node. Everything arrives over the
//! authenticated channel of godwit-net (TLS + token binding, docs/API.md):
//! - `http` channels carry the API (axum), with three roles today:
//!   remote execution (start an allowed program on this node and report when it is
//!   ready), name service (the embedded registry: UUID -> address, leases) and
//!   checkpoint store (checkpoints under `DATA/store`, dirs 0700, files 0600);
//! - `migration` channels go to [`migration::receive`].
//!
//! With `--dashboard ADDR:PORT` it also serves the operator's dashboard to web
//! browsers, over plain TLS with its own login ([`dashboard`]).

mod api;
mod balance;
mod cluster;
mod dashboard;
mod load;
mod metrics;
mod migration;
mod protect;
mod service_migration;
mod store;
mod transparent;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use godwit_names::Registry;
use godwit_net::{ChannelKind, ServerTls, Token, TokenSet};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
#[command(name = "godwitd", version, about = "Godwit node agent")]
struct Args {
    /// Address to serve on (ADDR:PORT; port 0 picks one). TLS only.
    #[arg(long)]
    listen: String,
    /// Data directory (checkpoint store, logs of started programs).
    #[arg(long)]
    data: PathBuf,
    /// Token file: one token (every scope) or lines `SCOPES TOKEN`. Must be mode 0600.
    #[arg(long)]
    token_file: PathBuf,
    /// PEM certificate chain to present instead of a self-signed one (PKI mode).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow POST /v1/exec to start this program (an absolute path, compared after
    /// resolving symlinks) or any program under this directory (a path ending in `/`).
    /// Repeatable. Without any, remote execution is refused.
    #[arg(long = "allow-exec", value_name = "PATH")]
    allow_exec: Vec<String>,
    /// This node's copy of program NAME is at PATH (absolute; repeatable): a
    /// program to start (POST /v1/exec, a service's migration or restart)
    /// that does not exist here is started from the copy registered under
    /// its file name. A registered program may be started.
    #[arg(long = "program", value_name = "NAME=PATH")]
    programs: Vec<String>,
    /// Migrations received in stop-copy or pre-copy: fill the processes' memory
    /// before they run (the default runs them at once and fills it behind them,
    /// from the image already received: a shorter downtime).
    #[arg(long)]
    fill_before_run: bool,
    /// This node's name among its peers (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Peers: a file of `NAME ADDR:PORT` lines (this node's own name is skipped).
    /// Peers added with `godwit node add` are kept in DATA/peers.
    #[arg(long, value_name = "FILE")]
    peers: Option<PathBuf>,
    /// Milliseconds between heartbeats (and load samples).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// A peer silent this long is dead (default 3 heartbeats + 500 ms).
    #[arg(long)]
    dead_after_ms: Option<u64>,
    /// In a partition, only a node that hears a majority of the cluster
    /// takes over the processes of nodes it sees dead; one that does not
    /// pauses (SIGSTOP) the protected processes it owns until it does
    /// (`off`: both sides act, fencing ends one copy when it heals). Applies
    /// from three nodes on.
    #[arg(long, value_enum, default_value = "majority")]
    quorum: cluster::QuorumRule,
    /// Membership through etcd (`etcd+http://HOST:PORT`): this node keeps its
    /// key under a lease of the dead bound and learns its peers from the
    /// others' keys; a peer whose lease ran out is dead, and the quorum is
    /// etcd's (this node renewed its lease lately).
    #[arg(long, value_name = "URL")]
    cluster_etcd: Option<String>,
    /// Retention of the node's checkpoint store: keep the newest N
    /// checkpoints of each process (applied every minute, then gc).
    #[arg(long, value_name = "N")]
    store_keep: Option<usize>,
    /// Retention: remove checkpoints older than this many seconds (never
    /// the newest of a process).
    #[arg(long, value_name = "SECS")]
    store_max_age_secs: Option<u64>,
    /// Also serve GET /metrics in plain HTTP here (ADDR:PORT, loopback only
    /// unless --metrics-any-addr), for Prometheus.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_addr: Option<String>,
    /// Let --metrics-addr be a non-loopback address (the metrics are then readable
    /// by anyone who reaches it, without a token).
    #[arg(long, requires = "metrics_addr")]
    metrics_any_addr: bool,
    /// Balance load: move managed transparent processes from this node to
    /// less loaded peers, and away when it is short of memory (see
    /// docs/API.md "Balancing"; `godwit balance --enable|--disable` switches it).
    #[arg(long)]
    balance: bool,
    /// How often the balancer looks (milliseconds).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    balance_every_ms: u64,
    /// Nodes whose managed CPU use differs by less than this share of a node's
    /// CPUs (0.05 to 1) are balanced.
    #[arg(long, default_value_t = 0.2)]
    balance_threshold: f64,
    /// A process stays this long on a node after it arrived (seconds).
    #[arg(long, default_value_t = 60)]
    balance_cooldown_secs: u64,
    /// Memory the managed processes may use on this node (MiB); beyond it the
    /// balancer moves the largest away.
    #[arg(long, value_name = "MIB")]
    balance_mem_budget_mib: Option<u64>,
    /// The link's rate used to price a move (MB/s): moves whose memory takes
    /// more than 30 s to send are not made.
    #[arg(long, default_value_t = 100.0)]
    balance_link_mbps: f64,
    /// Serve the operator's dashboard to web browsers on this address (ADDR:PORT,
    /// HTTPS; log in with a token of the token file). Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    dashboard: Option<String>,
    /// PEM certificate chain for the dashboard instead of a self-signed one.
    #[arg(long, requires_all = ["dashboard_key", "dashboard"])]
    dashboard_cert: Option<PathBuf>,
    /// PEM private key of --dashboard-cert.
    #[arg(long, requires = "dashboard_cert")]
    dashboard_key: Option<PathBuf>,
}

/// A program this agent started.
pub(crate) struct Proc {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) log: PathBuf,
    pub(crate) exit: Option<i32>,
    pub(crate) running: bool,
    /// From its `GODWIT_READY <address> <uuid>` line: a conformist service.
    pub(crate) service: Option<(String, String)>,
    /// Started again when it dies (`restart: on-failure`).
    pub(crate) restart: bool,
    /// How many times it was started again before this instance.
    pub(crate) restarts: u32,
    /// The management credential this instance was given (`GODWIT_MANAGE_TOKEN`): what
    /// a conformist service accepts on its management interface. Handed out only to
    /// holders of an `operate` token (`POST /v1/services/{uuid}/credential`).
    pub(crate) manage: String,
    /// The environment and directory it was started with (what starting it again
    /// from the dashboard gives it).
    pub(crate) env: serde_json::Map<String, serde_json::Value>,
    pub(crate) cwd: Option<String>,
}

/// What `--allow-exec` allows.
#[derive(Debug, Clone)]
pub(crate) enum Allowed {
    /// Exactly this (canonical) program.
    File(PathBuf),
    /// Any program under this (canonical) directory.
    Dir(PathBuf),
}

/// The agent's state, shared by every connection.
pub struct Agent {
    pub(crate) data: PathBuf,
    pub(crate) names: Registry,
    pub(crate) procs: Mutex<BTreeMap<u32, Proc>>,
    pub(crate) node: String,
    /// The tokens the channel accepts: the token file's plus one per running program.
    pub(crate) tokens: TokenSet,
    pub(crate) allow_exec: Vec<Allowed>,
    /// --program NAME=PATH: this node's copies of programs, by name.
    pub(crate) programs: BTreeMap<String, PathBuf>,
    /// Transparent processes restored or received here.
    pub(crate) transparent: Mutex<BTreeMap<i32, transparent::Managed>>,
    /// The write tracking kept armed between the periodic checkpoints of
    /// each protected process (by protection id): the next checkpoint is
    /// incremental.
    pub(crate) tracking: Mutex<BTreeMap<String, transparent::Tracked>>,
    /// Unless --fill-before-run: from how many bytes a received migration's
    /// memory is placed after the processes run.
    pub(crate) defer_fill: Option<u64>,
    /// Set when godwitd stops: nothing is started again.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
    /// This node among its peers: membership, heartbeats, health, load.
    pub(crate) cluster: Arc<cluster::Cluster>,
    pub(crate) balance: balance::Balancer,
    pub(crate) protection: protect::Protection,
    /// --store-keep, --store-max-age-secs.
    pub(crate) retention: godwit_store::Retention,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single map operations only: consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `--program NAME=PATH` options: NAME a file name, PATH an existing
/// absolute path (resolved).
fn parse_programs(list: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for p in list {
        let Some((name, path)) = p.split_once('=') else {
            bail!("--program {p}: give NAME=PATH");
        };
        if name.is_empty() || name.contains('/') {
            bail!("--program {p}: NAME is a program's file name (no /)");
        }
        if !Path::new(path).is_absolute() {
            bail!("--program {p}: give an absolute PATH");
        }
        let canon = std::fs::canonicalize(path)
            .with_context(|| format!("--program {p}: cannot resolve the path"))?;
        if out.insert(name.to_string(), canon).is_some() {
            bail!("--program {name}: given twice");
        }
    }
    Ok(out)
}

fn parse_allowed(list: &[String]) -> anyhow::Result<Vec<Allowed>> {
    let mut out = Vec::new();
    for a in list {
        let p = Path::new(a);
        if !p.is_absolute() {
            bail!("--allow-exec {a}: give an absolute path");
        }
        let canon = std::fs::canonicalize(p)
            .with_context(|| format!("--allow-exec {a}: cannot resolve the path"))?;
        if a.ends_with('/') {
            if !canon.is_dir() {
                bail!("--allow-exec {a}: not a directory");
            }
            out.push(Allowed::Dir(canon));
        } else {
            if canon.is_dir() {
                bail!(
                    "--allow-exec {a}: a directory; write `{a}/` to allow every program under it"
                );
            }
            out.push(Allowed::File(canon));
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "godwitd=info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let tokens = TokenSet::load(&args.token_file)?;
    let mut allow_exec = parse_allowed(&args.allow_exec)?;
    let programs = parse_programs(&args.programs)?;
    allow_exec.extend(programs.values().cloned().map(Allowed::File));
    let server = ServerTls::new(
        tokens.clone(),
        args.tls_cert.as_deref().zip(args.tls_key.as_deref()),
    )?;
    {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["", "store", "logs"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(args.data.join(sub))
                .with_context(|| format!("creating {}", args.data.join(sub).display()))?;
        }
    }
    if !(0.05..=1.0).contains(&args.balance_threshold) {
        bail!(
            "--balance-threshold {}: give a share of a node's CPUs from 0.05 to 1",
            args.balance_threshold
        );
    }
    if !(args.balance_link_mbps > 0.0) {
        bail!(
            "--balance-link-mbps {}: give a rate above 0",
            args.balance_link_mbps
        );
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let node = local.to_string();
    let cluster = cluster::Cluster::new(
        args.node_name.clone().unwrap_or_else(cluster::hostname),
        node.clone(),
        cluster::Timing::new(args.heartbeat_ms, args.dead_after_ms)?,
        args.peers.as_deref(),
        &args.data,
    )?
    .with_quorum(args.quorum);
    let cluster = match &args.cluster_etcd {
        Some(url) => cluster.with_etcd(url)?,
        None => cluster,
    };
    let peer_client = godwit_net::ClientTls::new(Token::load(&args.token_file)?, None)?;
    let metrics_listener = match &args.metrics_addr {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("--metrics-addr {a}"))?;
            if !l.local_addr()?.ip().is_loopback() && !args.metrics_any_addr {
                bail!("--metrics-addr {a}: not a loopback address (the metrics listener has no token); add --metrics-any-addr to allow it");
            }
            Some(l)
        }
        None => None,
    };
    if local.ip().is_unspecified() {
        tracing::warn!(
            %node,
            "listening on every address: any host that can reach this one can try to connect (only holders of a token get in); give --listen a specific address to narrow it"
        );
    }
    let agent = Arc::new(Agent {
        data: args.data.clone(),
        names: Registry::default(),
        procs: Mutex::new(BTreeMap::new()),
        node: node.clone(),
        tokens,
        allow_exec,
        programs,
        defer_fill: (!args.fill_before_run).then_some(godwit_engine::deferred::MIN_BYTES),
        transparent: Mutex::new(BTreeMap::new()),
        tracking: Mutex::new(BTreeMap::new()),
        stopping: std::sync::atomic::AtomicBool::new(false),
        cluster: Arc::new(cluster),
        balance: balance::Balancer::new(
            args.balance,
            balance::Policy {
                threshold: args.balance_threshold,
                cooldown: std::time::Duration::from_secs(args.balance_cooldown_secs),
                link_bytes_per_sec: args.balance_link_mbps * 1e6,
                mem_budget: args.balance_mem_budget_mib.map(|m| m << 20),
                ..Default::default()
            },
            std::time::Duration::from_millis(args.balance_every_ms),
        ),
        protection: protect::Protection::default(),
        retention: godwit_store::Retention {
            keep: args.store_keep,
            max_age: args.store_max_age_secs.map(std::time::Duration::from_secs),
        },
    });
    let router = api::router(agent.clone());
    tokio::spawn(metrics::count_events(agent.cluster.subscribe()));
    cluster::start(agent.clone(), peer_client);
    balance::start(agent.clone());
    store::start_retention(agent.clone());
    protect::start(
        agent.clone(),
        migration::peer_client(&agent).map_err(|e| anyhow::anyhow!(e.message().to_string()))?,
    )
    .await;
    if let Some(l) = metrics_listener {
        tracing::info!(addr = %l.local_addr()?, "metrics in plain HTTP at /metrics");
        tokio::spawn(metrics::serve_plain(l));
    }
    if let Some(addr) = &args.dashboard {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("dashboard: listening on {addr}"))?;
        let at = listener.local_addr()?;
        let (tls, pki) = godwit_net::browser_acceptor(
            args.dashboard_cert
                .as_deref()
                .zip(args.dashboard_key.as_deref()),
            &at.ip().to_string(),
        )?;
        if at.ip().is_unspecified() {
            tracing::warn!(
                dashboard = %at,
                "the dashboard listens on every address: any host that can reach this one can reach its login page; give --dashboard a specific address (127.0.0.1:PORT, then an SSH tunnel) to narrow it"
            );
        }
        tracing::info!(
            dashboard = %format!("https://{at}/"),
            tls = if pki { "operator certificate" } else { "self-signed certificate" },
            "dashboard serving"
        );
        println!("GODWITD_DASHBOARD https://{at}/");
        dashboard::spawn(dashboard::Dashboard::new(agent.clone()), listener, tls);
    }
    println!("GODWITD_READY {node}");
    tracing::info!(
        %node,
        data = %args.data.display(),
        tls = if server.is_pki() { "operator certificate" } else { "self-signed certificate" },
        exec = if agent.allow_exec.is_empty() { "off" } else { "on" },
        name = %agent.cluster.name,
        peers = agent.cluster.peers().len(),
        "godwitd serving"
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let accepting = {
        let agent = agent.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let agent = agent.clone();
                        let server = server.clone();
                        let router = router.clone();
                        tokio::spawn(async move {
                            serve(agent, server, router, stream, peer.to_string()).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    agent
        .stopping
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The API keeps serving meanwhile: a conformist service stopped by SIGTERM ships
    // its final checkpoint to this agent's store and withdraws from its name service.
    tracing::info!(
        "stopping: terminating started programs (services flush a final checkpoint; up to {STOP_GRACE:?})"
    );
    let pids: Vec<u32> = lock(&agent.procs)
        .iter()
        .filter(|(_, p)| p.running)
        .map(|(pid, _)| *pid)
        .collect();
    for pid in &pids {
        api::send_signal(*pid, "TERM");
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while tokio::time::Instant::now() < deadline {
        if lock(&agent.procs).values().all(|p| !p.running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (pid, p) in lock(&agent.procs).iter() {
        if p.running {
            tracing::warn!(pid, program = %p.program, "still running after {STOP_GRACE:?}: killed");
            api::send_signal(*pid, "KILL");
        }
    }
    accepting.abort();
    Ok(())
}

/// How long started programs get to stop (and services to flush their final
/// checkpoint) when godwitd stops.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// One connection: handshake and token binding, then the API or a migration.
async fn serve(
    agent: Arc<Agent>,
    server: ServerTls,
    router: axum::Router,
    tcp: TcpStream,
    peer: String,
) {
    let (stream, kind, scopes) = match server.accept(tcp).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "connection refused");
            return;
        }
    };
    tracing::debug!(%peer, %kind, %scopes, "channel open");
    match kind {
        ChannelKind::Http => {
            let svc = TowerToHyperService::new(router.layer(axum::Extension(api::Conn(scopes))));
            // An authenticated client still may not sit on a half-sent request head.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        ChannelKind::Migration => {
            let data = agent.data.clone();
            if let Err(e) = migration::receive(stream, scopes, data, agent).await {
                tracing::warn!(%peer, error = %e, "migration channel failed");
            }
        }
    }
}

/// A fresh token for a program this agent starts: it may use the name service and
/// the store (scope `service`), nothing else, and dies with the program.
pub(crate) fn program_token(agent: &Agent) -> anyhow::Result<Token> {
    use godwit_net::{Scope, Scopes};
    let t = Token::random(Scopes::of(&[Scope::Service]))?;
    agent.tokens.insert(t.clone());
    Ok(t)
}

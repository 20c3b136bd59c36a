//! Receiving a process migration on a `ChannelKind::Migration` channel: the
//! engine's `migrate::receive` runs on a blocking thread over the TLS
//! stream, with a watchdog on every read and write.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use godwit_engine::migrate::{self, ReceiveOptions};
use godwit_net::{Scope, Scopes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::Agent;

/// Longest silence of the source before the migration is abandoned.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// How much of this node's memory a received image may take: what is
/// available now, less a margin.
fn memory_budget() -> u64 {
    let avail_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    (avail_kib << 10) / 10 * 9
}

/// Serves one migration channel: `stream` is authenticated with `scopes`; `data` is the
/// agent's data directory.
pub async fn receive(
    mut stream: TlsStream<TcpStream>,
    scopes: Scopes,
    data: PathBuf,
    agent: Arc<Agent>,
) -> anyhow::Result<()> {
    let peer = stream
        .get_ref()
        .0
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    if !scopes.allows(Scope::Operate) {
        let why = format!(
            "receiving a migration needs a token with the operate scope (this one has {scopes})"
        );
        let mut frame = Vec::new();
        godwit_image::stream::write_frame(
            &mut frame,
            godwit_image::stream::kind::ABORT,
            0,
            why.as_bytes(),
        )?;
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        anyhow::bail!("migration from {peer} refused: {why}");
    }
    let opts = ReceiveOptions {
        max_bytes: memory_budget(),
        node: agent.node.clone(),
        force_pid_ns: false,
        keep_root: Some(data.join("images")),
        defer_fill: agent.defer_fill,
    };
    let mut timed = tokio_io_timeout::TimeoutStream::new(stream);
    timed.set_read_timeout(Some(WATCHDOG));
    timed.set_write_timeout(Some(WATCHDOG));
    let handle = tokio::runtime::Handle::current();
    let from = peer.clone();
    tracing::info!(peer = %peer, "receiving a migration");
    let report = tokio::task::spawn_blocking(move || {
        let io = tokio_util::io::SyncIoBridge::new_with_handle(Box::pin(timed), handle);
        migrate::receive(io, &from, &opts, &godwit_engine::Quiet)
    })
    .await?;
    crate::metrics::migration_received(report.as_ref().ok().map(|r| (r.bytes, r.total)));
    match report {
        Ok(r) => {
            tracing::info!(
                peer = %peer, source = %r.source_node, mode = %r.mode, pid = r.restore.pid,
                host_pid = r.restore.host_pid, bytes = r.bytes,
                ms = r.total.as_secs_f64() * 1e3,
                "migration received; the process runs here"
            );
            for host_pid in r.restore.host_roots() {
                crate::transparent::adopt(
                    &agent,
                    host_pid,
                    &format!("migrated from {}", r.source_node),
                );
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(peer = %peer, "migration not received: {e}");
            Err(e.into())
        }
    }
}

/// `POST /v1/processes/{pid}/migrate`: this agent moves process `pid` of
/// its node (with its descendants, and `also` with theirs, in one image) to
/// the agent at `to`, as `godwit migrate` would from here, and answers with
/// the same report. The peer is reached with the first `operate` token of
/// this agent's token file. `POST /v1/services/{uuid}/migrate` moves a
/// conformist service ([`crate::service_migration`]).
pub fn routes() -> axum::Router<Arc<Agent>> {
    axum::Router::new()
        .route("/v1/processes/{pid}/migrate", axum::routing::post(send))
        .route(
            "/v1/services/{uuid}/migrate",
            axum::routing::post(crate::service_migration::send),
        )
}

#[derive(serde::Deserialize, Debug, Clone, Default)]
pub struct SendRequest {
    pub to: String,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub also: Vec<i32>,
    #[serde(default)]
    pub tcp_established: bool,
    #[serde(default)]
    pub pid_ns: bool,
    #[serde(default)]
    pub max_downtime_ms: Option<u64>,
    #[serde(default)]
    pub watchdog_secs: Option<u64>,
    /// As `godwit migrate --inherit-fd`: "FD:TARGET" and its other forms,
    /// TARGET a path on the destination or "null".
    #[serde(default)]
    pub inherit_fds: Vec<String>,
}

async fn send(
    axum::extract::State(agent): axum::extract::State<Arc<Agent>>,
    axum::Extension(conn): axum::Extension<crate::api::Conn>,
    axum::extract::Path(pid): axum::extract::Path<i32>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> crate::api::ApiResult {
    use crate::api::ApiError;
    crate::api::need(&conn, Scope::Operate)?;
    let body = body.map_err(|e| ApiError::new(400, format!("reading the request: {e}")))?;
    let req: SendRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            400,
            format!("the request is not {{\"to\": \"ADDR:PORT\", \"mode\"?, ...}}: {e}"),
        )
    })?;
    let (roots, report) = send_migration(&agent, pid, &req).await?;
    crate::api::ok(200, report.to_json(&roots, &req.to))
}

/// Moves process `pid` of this node (and `req.also`) to the agent at
/// `req.to`; what the API and the balancer call. The processes it moved are
/// no longer this agent's.
pub async fn send_migration(
    agent: &Arc<Agent>,
    pid: i32,
    req: &SendRequest,
) -> Result<(Vec<i32>, migrate::MigrateReport), crate::api::ApiError> {
    use crate::api::ApiError;
    let m = req.mode.as_deref().unwrap_or("stop-copy");
    let mode = migrate::Mode::parse(m).ok_or_else(|| {
        ApiError::new(
            400,
            format!("unknown mode {m:?}: stop-copy, pre-copy, post-copy or pre-copy-post-copy"),
        )
    })?;
    let mut roots = vec![pid];
    roots.extend(req.also.iter().copied());
    godwit_engine::dump::check_roots(&roots)
        .map_err(|e| ApiError::new(crate::transparent::engine_status(&e), e.to_string()))?;
    for &r in &roots {
        crate::transparent::drop_tracking_of(agent, r);
    }
    let inherit_fds = req
        .inherit_fds
        .iter()
        .map(|x| x.parse())
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| ApiError::new(400, format!("inherit_fds: {e}")))?;
    let token = peer_token(agent)?;
    let opts = migrate::MigrateOptions {
        mode,
        pid_ns: req.pid_ns,
        dump: godwit_engine::dump::DumpOptions {
            tcp_established: req.tcp_established,
            max_frozen_copy: req.max_downtime_ms.map(Duration::from_millis),
            ..Default::default()
        },
        watchdog: Duration::from_secs(req.watchdog_secs.unwrap_or(60).max(1)),
        keep_image: None,
        move_ip: None,
        inherit_fds,
    };
    let watchdog = opts.watchdog;
    let to = req.to.clone();
    let sent = roots.clone();
    tracing::info!(pid, to = %to, mode = mode.name(), "sending a migration");
    let r = tokio::task::spawn_blocking(move || -> Result<migrate::MigrateReport, String> {
        let tls = godwit_net::ClientTls::new(token, None).map_err(|e| e.to_string())?;
        let stream = tls
            .connect_blocking(
                &to,
                godwit_net::ChannelKind::Migration,
                Duration::from_secs(10),
            )
            .map_err(|e| format!("connecting to {to}: {e}; the processes were not touched"))?;
        let _ = stream.tcp().set_read_timeout(Some(watchdog));
        let _ = stream.tcp().set_write_timeout(Some(watchdog));
        let _ = stream.tcp().set_nodelay(true);
        migrate::send(stream, &to, &sent, &opts, &godwit_engine::Quiet).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ApiError::new(500, format!("the migration thread failed: {e}")))?;
    match r {
        Ok(report) => {
            crate::metrics::migration_sent(Some((report.bytes_sent, report.downtime)));
            {
                let mut managed = crate::lock(&agent.transparent);
                for p in &report.pids {
                    managed.remove(p);
                }
            }
            tracing::info!(
                pid, to = %req.to, node = %report.node,
                downtime_ms = report.downtime.as_secs_f64() * 1e3,
                "migration sent; the process runs there"
            );
            Ok((roots, report))
        }
        Err(e) => {
            crate::metrics::migration_sent(None);
            tracing::warn!(pid, to = %req.to, "migration not sent: {e}");
            Err(ApiError::new(502, e))
        }
    }
}

/// The first `operate` token of this agent's token file: what it reaches
/// its peers with.
fn peer_token(agent: &Agent) -> Result<godwit_net::Token, crate::api::ApiError> {
    use crate::api::ApiError;
    let token_file = agent
        .tokens
        .path()
        .map(std::path::Path::to_path_buf)
        .ok_or_else(|| ApiError::new(500, "this agent has no token file to reach its peers"))?;
    godwit_net::Token::load_for(&token_file, Scope::Operate)
        .map_err(|e| ApiError::new(500, format!("reaching the peers: {e}")))
}

/// A client of the peers (self-signed mode), with [`peer_token`].
pub fn peer_client(agent: &Agent) -> Result<godwit_net::ClientTls, crate::api::ApiError> {
    godwit_net::ClientTls::new(peer_token(agent)?, None)
        .map_err(|e| crate::api::ApiError::new(500, format!("the peers' channel: {e}")))
}

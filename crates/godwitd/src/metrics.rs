//! Prometheus metrics (prometheus-client, OpenMetrics text): `GET /metrics` on the
//! authenticated channel (`read` scope), and with `--metrics-addr` on a plain HTTP
//! listener of its own (loopback only unless `--metrics-any-addr`) that Prometheus
//! scrapes directly (docs/API.md).
//!
//! What is counted, where: checkpoints and restores of transparent processes
//! (transparent.rs), migrations received (migration.rs), this node's load and its
//! peers' health and missed heartbeats (cluster.rs).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use godwit_net::Scope;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::{need, ApiResult, Conn};
use crate::cluster::{Health, NodeEvent};
use crate::load::Load;
use crate::{lock, Agent};

type Peer = Vec<(String, String)>;
type FGauge = Gauge<f64, AtomicU64>;

struct Metrics {
    registry: Registry,
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoint_bytes: Counter,
    checkpoint_frozen: Histogram,
    restores: Counter,
    restore_failures: Counter,
    migrations_in: Counter,
    migration_in_failures: Counter,
    migration_in_bytes: Counter,
    migration_in_seconds: Histogram,
    migrations_out: Counter,
    migration_out_failures: Counter,
    migration_out_bytes: Counter,
    migration_downtime: Histogram,
    takeovers: Counter,
    quorum_pauses: Counter,
    load1: FGauge,
    procs_running: Gauge,
    cpu_percent: FGauge,
    mem_available: Gauge,
    mem_free: Gauge,
    managed: Gauge,
    peer_up: Family<Peer, Gauge>,
    missed: Family<Peer, Counter>,
    send_failures: Family<Peer, Counter>,
    events: Family<Peer, Counter>,
}

static METRICS: LazyLock<std::sync::Mutex<Metrics>> = LazyLock::new(|| {
    let mut r = Registry::with_prefix("godwit");
    let m = Metrics {
        checkpoints: Counter::default(),
        checkpoint_failures: Counter::default(),
        checkpoint_bytes: Counter::default(),
        checkpoint_frozen: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        restores: Counter::default(),
        restore_failures: Counter::default(),
        migrations_in: Counter::default(),
        migration_in_failures: Counter::default(),
        migration_in_bytes: Counter::default(),
        migration_in_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
        migrations_out: Counter::default(),
        migration_out_failures: Counter::default(),
        migration_out_bytes: Counter::default(),
        migration_downtime: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
        takeovers: Counter::default(),
        quorum_pauses: Counter::default(),
        load1: FGauge::default(),
        procs_running: Gauge::default(),
        cpu_percent: FGauge::default(),
        mem_available: Gauge::default(),
        mem_free: Gauge::default(),
        managed: Gauge::default(),
        peer_up: Family::default(),
        missed: Family::default(),
        send_failures: Family::default(),
        events: Family::default(),
        registry: Registry::default(),
    };
    r.register(
        "checkpoints",
        "Checkpoints of transparent processes written to this node's store",
        m.checkpoints.clone(),
    );
    r.register(
        "checkpoint_failures",
        "Checkpoints refused or failed",
        m.checkpoint_failures.clone(),
    );
    r.register(
        "checkpoint_bytes",
        "Bytes of checkpoint images written",
        m.checkpoint_bytes.clone(),
    );
    r.register(
        "checkpoint_frozen_seconds",
        "How long each checkpointed process was frozen",
        m.checkpoint_frozen.clone(),
    );
    r.register(
        "restores",
        "Restores from this node's store",
        m.restores.clone(),
    );
    r.register(
        "restore_failures",
        "Restores refused or failed",
        m.restore_failures.clone(),
    );
    r.register(
        "migrations_received",
        "Migrations received: the process runs here",
        m.migrations_in.clone(),
    );
    r.register(
        "migration_receive_failures",
        "Migrations that did not end with the process running here",
        m.migration_in_failures.clone(),
    );
    r.register(
        "migration_received_bytes",
        "Bytes of the migrations received",
        m.migration_in_bytes.clone(),
    );
    r.register(
        "migration_receive_seconds",
        "From the first byte of a received migration to the process running here",
        m.migration_in_seconds.clone(),
    );
    r.register(
        "migrations_sent",
        "Migrations this agent sent (POST /v1/processes/PID/migrate) that run at their destination",
        m.migrations_out.clone(),
    );
    r.register(
        "migration_send_failures",
        "Migrations this agent sent that failed (the process runs on here unless the error says otherwise)",
        m.migration_out_failures.clone(),
    );
    r.register(
        "migration_sent_bytes",
        "Bytes of the migrations this agent sent",
        m.migration_out_bytes.clone(),
    );
    r.register(
        "migration_downtime_seconds",
        "Downtime of each migration this agent sent: from the freeze until the destination's copy ran",
        m.migration_downtime.clone(),
    );
    r.register(
        "takeovers",
        "Protected processes of a dead node restored here",
        m.takeovers.clone(),
    );
    r.register(
        "quorum_pauses",
        "Protected processes paused here because this node heard no majority of the cluster",
        m.quorum_pauses.clone(),
    );
    r.register("node_load1", "/proc/loadavg, 1 minute", m.load1.clone());
    r.register(
        "node_procs_running",
        "Run queue (procs_running of /proc/stat)",
        m.procs_running.clone(),
    );
    r.register(
        "node_cpu_percent",
        "Busy share of all CPUs over the last heartbeat",
        m.cpu_percent.clone(),
    );
    r.register(
        "node_mem_available_bytes",
        "MemAvailable of /proc/meminfo",
        m.mem_available.clone(),
    );
    r.register(
        "node_mem_free_bytes",
        "MemFree of /proc/meminfo",
        m.mem_free.clone(),
    );
    r.register(
        "node_managed_processes",
        "Processes the agent manages",
        m.managed.clone(),
    );
    r.register(
        "peer_up",
        "1 while a peer is alive, 0 suspect or dead",
        m.peer_up.clone(),
    );
    r.register(
        "heartbeats_missed",
        "Heartbeats of a peer not received in time",
        m.missed.clone(),
    );
    r.register(
        "heartbeat_send_failures",
        "Heartbeats to a peer not delivered",
        m.send_failures.clone(),
    );
    r.register(
        "node_events",
        "Peers declared dead (event=dead) and heard again after (event=back)",
        m.events.clone(),
    );
    std::sync::Mutex::new(Metrics { registry: r, ..m })
});

fn peer(name: &str) -> Peer {
    vec![("peer".into(), name.into())]
}

/// A checkpoint written (`bytes` of image, `frozen` long), or failed.
pub fn checkpoint(result: Option<(u64, Duration)>) {
    let m = lock(&METRICS);
    match result {
        Some((bytes, frozen)) => {
            m.checkpoints.inc();
            m.checkpoint_bytes.inc_by(bytes);
            m.checkpoint_frozen.observe(frozen.as_secs_f64());
        }
        None => {
            m.checkpoint_failures.inc();
        }
    }
}

/// A restore done, or failed.
pub fn restore(done: bool) {
    let m = lock(&METRICS);
    if done {
        &m.restores
    } else {
        &m.restore_failures
    }
    .inc();
}

/// A migration received (`bytes` in `took`), or failed.
pub fn migration_received(result: Option<(u64, Duration)>) {
    let m = lock(&METRICS);
    match result {
        Some((bytes, took)) => {
            m.migrations_in.inc();
            m.migration_in_bytes.inc_by(bytes);
            m.migration_in_seconds.observe(took.as_secs_f64());
        }
        None => {
            m.migration_in_failures.inc();
        }
    }
}

/// A migration this agent sent (`bytes`, with `downtime`), or failed.
pub fn migration_sent(result: Option<(u64, Duration)>) {
    let m = lock(&METRICS);
    match result {
        Some((bytes, downtime)) => {
            m.migrations_out.inc();
            m.migration_out_bytes.inc_by(bytes);
            m.migration_downtime.observe(downtime.as_secs_f64());
        }
        None => {
            m.migration_out_failures.inc();
        }
    }
}

/// A protected process of a dead node restored here.
pub fn takeover() {
    lock(&METRICS).takeovers.inc();
}

pub fn quorum_pause() {
    lock(&METRICS).quorum_pauses.inc();
}

pub fn node_load(l: &Load) {
    let m = lock(&METRICS);
    m.load1.set(l.loadavg[0]);
    m.procs_running.set(l.procs_running as i64);
    m.cpu_percent.set(l.cpu_percent);
    m.mem_available.set(l.mem_available_bytes as i64);
    m.mem_free.set(l.mem_free_bytes as i64);
    m.managed.set(l.processes.len() as i64);
}

pub fn node_health(name: &str, h: Health) {
    lock(&METRICS)
        .peer_up
        .get_or_create(&peer(name))
        .set(i64::from(h == Health::Alive));
}

pub fn heartbeats_missed(name: &str, n: u64) {
    lock(&METRICS).missed.get_or_create(&peer(name)).inc_by(n);
}

pub fn heartbeat_send_failed(name: &str) {
    lock(&METRICS)
        .send_failures
        .get_or_create(&peer(name))
        .inc();
}

/// Counts the cluster's node events (a subscriber of [`crate::cluster::Cluster::subscribe`]).
pub async fn count_events(mut rx: tokio::sync::broadcast::Receiver<NodeEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let (name, event) = match rx.recv().await {
            Ok(NodeEvent::Dead { name, .. }) => (name, "dead"),
            Ok(NodeEvent::Back { name, .. }) => (name, "back"),
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let mut labels = peer(&name);
        labels.push(("event".into(), event.into()));
        lock(&METRICS).events.get_or_create(&labels).inc();
    }
}

/// The metrics as OpenMetrics text.
pub fn text() -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut s, &lock(&METRICS).registry);
    s
}

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics` on the channel (`read`).
pub fn routes() -> Router<Arc<Agent>> {
    Router::new().route("/metrics", get(on_channel))
}

async fn on_channel(Extension(conn): Extension<Conn>, State(_): State<Arc<Agent>>) -> ApiResult {
    need(&conn, Scope::Read)?;
    Ok(([(CONTENT_TYPE, CONTENT)], text()).into_response())
}

/// Serves `GET /metrics` in plain HTTP on `addr` (`--metrics-addr`).
pub async fn serve_plain(listener: tokio::net::TcpListener) {
    let app: Router = Router::new().route(
        "/metrics",
        get(|| async { ([(CONTENT_TYPE, CONTENT)], text()) }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

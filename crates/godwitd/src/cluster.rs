//! Nodes that know each other: membership, heartbeats, health.
//!
//! - **Membership.** Each godwitd has a name (`--node-name`, default the hostname)
//!   and knows its peers from `--peers FILE` (one `NAME ADDR:PORT` a line; `#`
//!   comments; its own name is skipped, so one file serves every node) and from
//!   `godwit node add NAME ADDR:PORT` (`POST /v1/nodes`), kept in `DATA/peers`
//!   (mode 0600) and read again at start.
//! - **Heartbeats.** Every `--heartbeat-ms` the node measures its load
//!   ([`crate::load`]) and sends it to every peer (`POST /v1/heartbeat` over the
//!   authenticated channel, with the first token of its token file: peers must
//!   accept it with the `operate` scope).
//! - **Health.** A peer heard within `suspect_after` (2 heartbeats, at most the
//!   dead bound) is `alive`; silent longer, `suspect`; silent longer than
//!   `--dead-after-ms` (default 3 heartbeats + 500 ms), `dead`; heard again, `alive`
//!   again. The checker runs every heartbeat / 10 (10 to 100 ms), so a peer that
//!   stops is declared dead at most `dead_after + check` after the last heartbeat
//!   it sent (its death comes after that heartbeat, so the bound holds from its
//!   death too). A peer never heard counts from when it became known.
//! - **Quorum.** With `--quorum majority` (the default), a node acts on a
//!   peer's death only while it hears a majority of the cluster (itself
//!   included), and it pauses what it owns while it does not: in a partition
//!   only the side with a majority takes over ([`Cluster::has_quorum`]). A
//!   cluster of two nodes cannot tell a dead peer from a cut link; the rule
//!   applies from three nodes on, and two nodes behave as with `--quorum off`.
//! - **etcd** (`--cluster-etcd etcd+http://HOST:PORT`): each node also keeps
//!   `/godwit/nodes/NAME = ADDR:PORT` under an etcd lease of the dead bound
//!   (whole seconds), renewed every heartbeat, and reads the prefix every
//!   heartbeat: nodes are learnt from it (no peers file needed), and a peer
//!   whose key is gone (its lease ran out: it stopped renewing, or lost etcd)
//!   is dead whatever its heartbeats say. The quorum is then etcd's: a node
//!   acts while it renewed its lease within two heartbeats, and pauses what it
//!   owns otherwise (before its key can expire for the others).
//! - **Events.** [`Cluster::subscribe`] hands out a receiver of [`NodeEvent`]s:
//!   `Dead` when a peer turns dead, `Back` when a dead peer is heard again, for
//!   modules that act on them (failover, balancing). This module only tells.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Router};
use godwit_net::http::HttpRequest;
use godwit_net::{ClientTls, Scope};
use serde_json::json;
use tokio::sync::broadcast;

use crate::api::{need, ok, ApiError, ApiResult, Conn};
use crate::load::{Load, Sampler};
use crate::{lock, Agent};

/// Errors of membership.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("peers file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("peers file {path} line {line}: {why} (want `NAME ADDR:PORT`)")]
    Parse {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{0}")]
    Bad(String),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A peer's health as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Alive,
    Suspect,
    Dead,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspect => "suspect",
            Health::Dead => "dead",
        }
    }
}

/// What subscribers of [`Cluster::subscribe`] receive.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// Not heard for longer than the dead bound.
    Dead {
        name: String,
        addr: String,
        /// How long it had been silent when declared dead.
        silent: Duration,
    },
    /// A dead node heard again.
    Back { name: String, addr: String },
}

/// How a node decides whether it may act for the cluster (`--quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuorumRule {
    /// A node that hears at most half the cluster (itself included) takes
    /// nothing over and pauses what it owns.
    Majority,
    /// Every node acts on what it sees (two copies may run while a
    /// partition lasts; fencing ends one when it heals).
    Off,
}

/// Timing of heartbeats and health.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub suspect_after: Duration,
    pub dead_after: Duration,
    pub check: Duration,
}

/// Margin added to three heartbeats for the default dead bound.
pub const DEAD_MARGIN: Duration = Duration::from_millis(500);

impl Timing {
    /// From `--heartbeat-ms` and `--dead-after-ms` (default 3 heartbeats + 500 ms).
    pub fn new(heartbeat_ms: u64, dead_after_ms: Option<u64>) -> Result<Timing, ClusterError> {
        if heartbeat_ms < 50 {
            return Err(ClusterError::Bad(format!(
                "--heartbeat-ms {heartbeat_ms}: at least 50"
            )));
        }
        let heartbeat = Duration::from_millis(heartbeat_ms);
        let dead_after = match dead_after_ms {
            Some(ms) => Duration::from_millis(ms),
            None => heartbeat * 3 + DEAD_MARGIN,
        };
        if dead_after <= heartbeat {
            return Err(ClusterError::Bad(format!(
                "--dead-after-ms {}: must be longer than one heartbeat ({heartbeat_ms} ms)",
                dead_after.as_millis()
            )));
        }
        Ok(Timing {
            heartbeat,
            suspect_after: (heartbeat * 2).min(dead_after),
            dead_after,
            check: (heartbeat / 10).clamp(Duration::from_millis(10), Duration::from_millis(100)),
        })
    }
}

struct Peer {
    addr: String,
    /// `config` (--peers) or `added` (godwit node add).
    source: &'static str,
    /// When it became known: the silence of a peer never heard counts from then.
    known_since: Instant,
    heard: Option<(Instant, u64)>,
    health: Health,
    load: Option<Load>,
    /// Missed heartbeats already counted in the metrics since it was last heard.
    missed: u64,
    /// A heartbeat to it is on its way (a slow peer does not pile them up).
    sending: Arc<AtomicBool>,
    /// The last heartbeat to it was not delivered (warned once, until one is).
    failing: Arc<AtomicBool>,
}

/// Membership, health and this node's load.
pub struct Cluster {
    pub name: String,
    pub addr: String,
    pub timing: Timing,
    /// `DATA/peers`: the peers added with `godwit node add`.
    added_file: PathBuf,
    peers: Mutex<BTreeMap<String, Peer>>,
    events: broadcast::Sender<NodeEvent>,
    sampler: Mutex<Sampler>,
    quorum: QuorumRule,
    etcd: Option<Etcd>,
}

/// Membership through etcd (see the module's "etcd").
struct Etcd {
    names: godwit_names::Names,
    ttl: Duration,
    lease: tokio::sync::Mutex<Option<godwit_names::Lease>>,
    /// When this node last renewed its lease.
    renewed: Mutex<Option<Instant>>,
    /// The nodes with a key, as last read (`None` before the first read).
    members: Mutex<Option<BTreeMap<String, String>>>,
    /// A failure was logged (once until it works again).
    failing: AtomicBool,
}

/// The etcd prefix of the agents' membership keys.
pub const ETCD_NODES: &str = "/godwit/nodes/";

fn check_node_name(name: &str) -> Result<(), ClusterError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(ClusterError::Bad(format!(
            "node name `{name}`: 1 to 64 characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

fn check_addr(addr: &str) -> Result<(), ClusterError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(ClusterError::Bad(format!(
            "address `{addr}`: want HOST:PORT"
        ))),
    }
}

/// The quorum rule on counts: `heard` of `nodes` (this node included).
pub fn quorate(rule: QuorumRule, nodes: usize, heard: usize) -> bool {
    match rule {
        QuorumRule::Off => true,
        QuorumRule::Majority => nodes < 3 || 2 * heard > nodes,
    }
}

/// Reads `NAME ADDR:PORT` lines.
pub fn read_peers(path: &Path) -> Result<Vec<(String, String)>, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let bad = |why: String| ClusterError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            why,
        };
        let f: Vec<&str> = l.split_whitespace().collect();
        let [name, addr] = f[..] else {
            return Err(bad(format!("{} fields", f.len())));
        };
        check_node_name(name).map_err(|e| bad(e.to_string()))?;
        check_addr(addr).map_err(|e| bad(e.to_string()))?;
        out.push((name.to_string(), addr.to_string()));
    }
    Ok(out)
}

/// The default node name: the hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Cluster {
    /// This node (`name` at `addr`) with the peers of `peers_file` and of `DATA/peers`.
    pub fn new(
        name: String,
        addr: String,
        timing: Timing,
        peers_file: Option<&Path>,
        data: &Path,
    ) -> Result<Cluster, ClusterError> {
        check_node_name(&name)?;
        let added_file = data.join("peers");
        let mut list: Vec<(String, String, &'static str)> = Vec::new();
        if let Some(p) = peers_file {
            list.extend(read_peers(p)?.into_iter().map(|(n, a)| (n, a, "config")));
        }
        if added_file.exists() {
            list.extend(
                read_peers(&added_file)?
                    .into_iter()
                    .map(|(n, a)| (n, a, "added")),
            );
        }
        let now = Instant::now();
        let mut peers = BTreeMap::new();
        for (n, a, source) in list {
            if n == name {
                continue;
            }
            peers.insert(n, Peer::new(a, source, now));
        }
        Ok(Cluster {
            name,
            addr,
            timing,
            added_file,
            peers: Mutex::new(peers),
            events: broadcast::channel(64).0,
            sampler: Mutex::new(Sampler::default()),
            quorum: QuorumRule::Majority,
            etcd: None,
        })
    }

    /// Membership through etcd at `url` (`etcd+http://HOST:PORT`).
    pub fn with_etcd(mut self, url: &str) -> Result<Cluster, ClusterError> {
        let names = godwit_names::Names::from_url(url, None)
            .map_err(|e| ClusterError::Bad(format!("--cluster-etcd: {e}")))?;
        if !matches!(names, godwit_names::Names::Etcd { .. }) {
            return Err(ClusterError::Bad(format!(
                "--cluster-etcd `{url}`: want etcd+http://HOST:PORT"
            )));
        }
        let secs = self.timing.dead_after.as_millis().div_ceil(1000).max(2) as u64;
        self.etcd = Some(Etcd {
            names: names.with_prefix(ETCD_NODES),
            ttl: Duration::from_secs(secs),
            lease: tokio::sync::Mutex::new(None),
            renewed: Mutex::new(None),
            members: Mutex::new(None),
            failing: AtomicBool::new(false),
        });
        Ok(self)
    }

    /// Sets the quorum rule (`--quorum`).
    pub fn with_quorum(mut self, rule: QuorumRule) -> Cluster {
        self.quorum = rule;
        self
    }

    /// The nodes of the cluster (this one included) and how many this node
    /// hears: those alive, and with `suspect_counts` also those suspect
    /// (silent for a while, not yet dead).
    pub fn reach(&self, suspect_counts: bool) -> (usize, usize) {
        let peers = lock(&self.peers);
        let heard = peers
            .values()
            .filter(|p| match p.health {
                Health::Alive => true,
                Health::Suspect => suspect_counts,
                Health::Dead => false,
            })
            .count();
        (peers.len() + 1, heard + 1)
    }

    /// Whether this node may act for the cluster: under the majority rule,
    /// it hears more than half of the nodes (see [`Cluster::reach`]);
    /// always with `--quorum off` or fewer than three nodes.
    /// With etcd, the quorum is etcd's: this node renewed its lease within
    /// two heartbeats.
    pub fn has_quorum(&self, suspect_counts: bool) -> bool {
        if let (QuorumRule::Majority, Some(e)) = (self.quorum, &self.etcd) {
            return lock(&e.renewed).is_some_and(|t| t.elapsed() <= self.timing.suspect_after);
        }
        let (nodes, heard) = self.reach(suspect_counts);
        quorate(self.quorum, nodes, heard)
    }

    /// Whether etcd (when used) lists `name` (`true` before its first read).
    fn etcd_member(&self, name: &str) -> bool {
        self.etcd.as_ref().is_none_or(|e| {
            lock(&e.members)
                .as_ref()
                .is_none_or(|m| m.contains_key(name))
        })
    }

    /// One round with etcd: renew this node's lease (or take one), read the
    /// members, learn new ones.
    async fn etcd_round(&self) {
        let Some(e) = &self.etcd else { return };
        let renewed = {
            let mut lease = e.lease.lock().await;
            match lease.as_mut() {
                Some(l) => e.names.refresh(l).await,
                None => e
                    .names
                    .advertise(&self.name, &self.addr, e.ttl)
                    .await
                    .map(|l| *lease = Some(l)),
            }
        };
        let listed = match renewed {
            Ok(()) => {
                *lock(&e.renewed) = Some(Instant::now());
                e.names.list().await
            }
            Err(err) => Err(err),
        };
        match listed {
            Ok(list) => {
                if e.failing.swap(false, Ordering::SeqCst) {
                    tracing::info!("etcd reached again");
                }
                let members: BTreeMap<String, String> =
                    list.into_iter().map(|r| (r.uuid, r.address)).collect();
                {
                    let mut peers = lock(&self.peers);
                    for (n, a) in &members {
                        if *n == self.name || check_node_name(n).is_err() || check_addr(a).is_err()
                        {
                            continue;
                        }
                        match peers.get_mut(n) {
                            Some(p) => p.addr = a.clone(),
                            None => {
                                tracing::info!(peer = %n, addr = %a, "peer learnt from etcd");
                                peers.insert(
                                    n.clone(),
                                    Peer::new(a.clone(), "etcd", Instant::now()),
                                );
                            }
                        }
                    }
                }
                *lock(&e.members) = Some(members);
            }
            Err(err) => {
                if !e.failing.swap(true, Ordering::SeqCst) {
                    tracing::warn!("etcd: {err}: this node cannot renew its membership lease; it pauses what it owns if this lasts two heartbeats");
                }
            }
        }
    }

    /// Events about peers from now on (a receiver that lags loses the oldest).
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Every known peer's name, address, health and the load its last
    /// heartbeat carried.
    pub fn peer_loads(&self) -> Vec<(String, String, Health, Option<Load>)> {
        lock(&self.peers)
            .iter()
            .map(|(n, p)| (n.clone(), p.addr.clone(), p.health, p.load.clone()))
            .collect()
    }

    /// Every known peer's name, address and health.
    pub fn peers(&self) -> Vec<(String, String, Health)> {
        lock(&self.peers)
            .iter()
            .map(|(n, p)| (n.clone(), p.addr.clone(), p.health))
            .collect()
    }

    /// Adds (or moves) a peer and keeps it in `DATA/peers` (0600).
    pub fn add(&self, name: &str, addr: &str) -> Result<bool, ClusterError> {
        check_node_name(name)?;
        check_addr(addr)?;
        if name == self.name {
            return Err(ClusterError::Bad(format!(
                "`{name}` is this node's own name"
            )));
        }
        let mut peers = lock(&self.peers);
        let new = !peers.contains_key(name);
        let mut file: Vec<(String, String)> = if self.added_file.exists() {
            read_peers(&self.added_file)?
        } else {
            Vec::new()
        };
        file.retain(|(n, _)| n != name);
        file.push((name.to_string(), addr.to_string()));
        let text: String = file.iter().map(|(n, a)| format!("{n} {a}\n")).collect();
        write_private(&self.added_file, text.as_bytes())?;
        match peers.get_mut(name) {
            Some(p) => {
                p.addr = addr.to_string();
                p.source = "added";
            }
            None => {
                peers.insert(
                    name.to_string(),
                    Peer::new(addr.to_string(), "added", Instant::now()),
                );
            }
        }
        tracing::info!(peer = name, addr, "peer added");
        Ok(new)
    }

    /// A heartbeat from `name`: it is alive, with `load`.
    fn heard(&self, name: &str, load: Option<Load>) -> Result<(), ApiError> {
        let mut peers = lock(&self.peers);
        let Some(p) = peers.get_mut(name) else {
            return Err(ApiError::new(
                404,
                format!(
                    "node `{name}` is not a peer of node `{}`: add it there (godwit node add, or its --peers file)",
                    self.name
                ),
            ));
        };
        p.heard = Some((Instant::now(), now_ms()));
        p.missed = 0;
        if load.is_some() {
            p.load = load;
        }
        if p.health != Health::Alive && self.etcd_member(name) {
            let was = p.health;
            p.health = Health::Alive;
            crate::metrics::node_health(name, Health::Alive);
            if was == Health::Dead {
                tracing::info!(peer = name, addr = %p.addr, "node back");
                let _ = self.events.send(NodeEvent::Back {
                    name: name.to_string(),
                    addr: p.addr.clone(),
                });
            }
        }
        Ok(())
    }

    /// One pass of the health checker.
    fn check(&self) {
        let now = Instant::now();
        let t = self.timing;
        let mut peers = lock(&self.peers);
        for (name, p) in peers.iter_mut() {
            let since = p.heard.map_or(p.known_since, |h| h.0);
            let silent = now.saturating_duration_since(since);
            let gone = !self.etcd_member(name);
            let health = if gone || silent > t.dead_after {
                Health::Dead
            } else if silent > t.suspect_after {
                Health::Suspect
            } else {
                p.health
            };
            // Heartbeats missed: whole intervals of silence past the first.
            let missed =
                (silent.as_millis() / t.heartbeat.as_millis().max(1)).saturating_sub(1) as u64;
            if missed > p.missed {
                crate::metrics::heartbeats_missed(name, missed - p.missed);
                p.missed = missed;
            }
            if health == p.health {
                continue;
            }
            p.health = health;
            crate::metrics::node_health(name, health);
            match health {
                Health::Dead => {
                    let why = if gone {
                        "its etcd lease ran out"
                    } else {
                        "silent past the dead bound"
                    };
                    tracing::warn!(peer = %name, addr = %p.addr, silent_ms = silent.as_millis() as u64, "node dead: {why}");
                    let _ = self.events.send(NodeEvent::Dead {
                        name: name.clone(),
                        addr: p.addr.clone(),
                        silent,
                    });
                }
                Health::Suspect => {
                    tracing::info!(peer = %name, addr = %p.addr, silent_ms = silent.as_millis() as u64, "node suspect")
                }
                Health::Alive => {}
            }
        }
    }

    /// This node's latest load (measured now if it never was).
    pub fn own_load(&self, agent: &Agent) -> Load {
        let mut s = lock(&self.sampler);
        match s.last() {
            Some(l) => l.clone(),
            None => s.sample(agent),
        }
    }
}

impl Peer {
    fn new(addr: String, source: &'static str, now: Instant) -> Peer {
        Peer {
            addr,
            source,
            known_since: now,
            heard: None,
            health: Health::Suspect,
            load: None,
            missed: 0,
            sending: Arc::new(AtomicBool::new(false)),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }
}

use crate::now_ms;

/// Writes `path` whole, mode 0600, through a temporary file and a rename.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClusterError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| ClusterError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// An interval that does not catch up on ticks it missed.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Runs the heartbeat sender and the health checker until the process ends.
/// `client` is the channel client peers are reached with.
pub fn start(agent: Arc<Agent>, client: ClientTls) {
    let timing = agent.cluster.timing;
    if agent.cluster.etcd.is_some() {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut tick = ticker(timing.heartbeat);
            loop {
                tick.tick().await;
                // Bounded: a hung etcd must not stall the rounds.
                let _ =
                    tokio::time::timeout(timing.heartbeat * 2, agent.cluster.etcd_round()).await;
            }
        });
    }
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            let mut tick = ticker(timing.heartbeat);
            loop {
                tick.tick().await;
                let load = {
                    let a = agent.clone();
                    tokio::task::spawn_blocking(move || lock(&a.cluster.sampler).sample(&a))
                        .await
                        .unwrap_or_default()
                };
                crate::metrics::node_load(&load);
                let body = json!({
                    "name": agent.cluster.name, "addr": agent.cluster.addr,
                    "heartbeat_ms": timing.heartbeat.as_millis() as u64, "load": load,
                })
                .to_string();
                type Target = (String, String, Arc<AtomicBool>, Arc<AtomicBool>);
                let targets: Vec<Target> = lock(&agent.cluster.peers)
                    .iter()
                    .map(|(n, p)| {
                        (
                            n.clone(),
                            p.addr.clone(),
                            p.sending.clone(),
                            p.failing.clone(),
                        )
                    })
                    .collect();
                for (name, addr, sending, failing) in targets {
                    if sending.swap(true, Ordering::SeqCst) {
                        continue; // the previous one is still on its way
                    }
                    let client = client.clone();
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut req = HttpRequest::new("POST", "/v1/heartbeat").json(&body);
                        req.timeout = timing.dead_after.max(Duration::from_secs(2));
                        let r = client.request(&addr, &req).await;
                        sending.store(false, Ordering::SeqCst);
                        let why = match r {
                            Ok(resp) if resp.status < 300 => {
                                if failing.swap(false, Ordering::SeqCst) {
                                    tracing::info!(peer = %name, %addr, "heartbeats delivered again");
                                }
                                return;
                            }
                            Ok(resp) => format!("HTTP {}: {}", resp.status, resp.error_message()),
                            Err(e) => e.to_string(),
                        };
                        crate::metrics::heartbeat_send_failed(&name);
                        // Warned once per run of failures (a refused token says why here).
                        if !failing.swap(true, Ordering::SeqCst) {
                            tracing::warn!(peer = %name, %addr, error = %why, "heartbeat not delivered");
                        } else {
                            tracing::debug!(peer = %name, %addr, error = %why, "heartbeat not delivered");
                        }
                    });
                }
            }
        });
    }
    tokio::spawn(async move {
        let mut tick = ticker(timing.check);
        loop {
            tick.tick().await;
            agent.cluster.check();
        }
    });
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/nodes", get(nodes).post(add_node))
        .route("/v1/load", get(own_load))
        .route("/v1/load/history", get(history))
}

/// `POST /v1/heartbeat` `{name, load}` from a peer (`operate`).
async fn heartbeat(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let v = crate::api::json_body(body)?;
    let name = v["name"]
        .as_str()
        .ok_or_else(|| ApiError::new(400, "`name` (string) is required"))?;
    let load = serde_json::from_value::<Load>(v["load"].clone()).ok();
    agent.cluster.heard(name, load)?;
    ok(200, json!({ "node": agent.cluster.name }))
}

/// `POST /v1/nodes` `{name, addr}` (`operate`): a new peer, kept in `DATA/peers`.
async fn add_node(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let v = crate::api::json_body(body)?;
    let (Some(name), Some(addr)) = (v["name"].as_str(), v["addr"].as_str()) else {
        return Err(ApiError::new(
            400,
            "`name` and `addr` (strings) are required",
        ));
    };
    let c = agent.cluster.clone();
    let (n, a) = (name.to_string(), addr.to_string());
    let new = tokio::task::spawn_blocking(move || c.add(&n, &a))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))?
        .map_err(|e| match e {
            ClusterError::Bad(m) => ApiError::new(400, m),
            e => ApiError::new(500, e.to_string()),
        })?;
    ok(
        if new { 201 } else { 200 },
        json!({ "name": name, "addr": addr, "added": new }),
    )
}

/// `GET /v1/nodes` (`read`): this node and every peer, with health, load and processes.
async fn nodes(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let c = &agent.cluster;
    let own = c.own_load(&agent);
    let now = Instant::now();
    let mut out = vec![json!({
        "name": c.name, "addr": c.addr, "self": true, "health": "alive",
        "last_heard_unix_ms": own.unix_ms, "last_heard_ms_ago": 0,
        "load": own,
    })];
    for (name, p) in lock(&c.peers).iter() {
        out.push(json!({
            "name": name, "addr": p.addr, "self": false, "source": p.source,
            "health": p.health.name(),
            "last_heard_unix_ms": p.heard.map(|h| h.1),
            "last_heard_ms_ago": p.heard.map(|h| now.saturating_duration_since(h.0).as_millis() as u64),
            "load": p.load,
        }));
    }
    ok(
        200,
        json!({
            "node": c.name,
            "heartbeat_ms": c.timing.heartbeat.as_millis() as u64,
            "suspect_after_ms": c.timing.suspect_after.as_millis() as u64,
            "dead_after_ms": c.timing.dead_after.as_millis() as u64,
            "check_ms": c.timing.check.as_millis() as u64,
            "nodes": out,
        }),
    )
}

/// `GET /v1/load` (`read`): this node's latest load.
async fn own_load(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let l = agent.cluster.own_load(&agent);
    ok(200, json!({ "node": agent.cluster.name, "load": l }))
}

/// `GET /v1/load/history` (`read`): the samples of the last ten minutes.
async fn history(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let samples: Vec<Load> = lock(&agent.cluster.sampler).history().cloned().collect();
    ok(
        200,
        json!({
            "node": agent.cluster.name,
            "interval_ms": agent.cluster.timing.heartbeat.as_millis() as u64,
            "samples": samples,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dead_bound_is_three_heartbeats_and_a_margin() {
        let t = Timing::new(1000, None).unwrap();
        assert_eq!(t.dead_after, Duration::from_millis(3500));
        assert_eq!(t.suspect_after, Duration::from_millis(2000));
        assert_eq!(t.check, Duration::from_millis(100));
        assert!(Timing::new(1000, Some(900)).is_err());
        assert!(Timing::new(10, None).is_err());
    }

    #[test]
    fn subscribers_hear_dead_then_back() {
        let d = tempfile::tempdir().unwrap();
        let peers = d.path().join("cluster.peers");
        std::fs::write(&peers, "me 127.0.0.1:1\nother 127.0.0.1:2\n").unwrap();
        let t = Timing::new(50, Some(120)).unwrap();
        let c = Cluster::new("me".into(), "127.0.0.1:1".into(), t, Some(&peers), d.path()).unwrap();
        assert_eq!(c.peers().len(), 1, "its own name is skipped");
        let mut rx = c.subscribe();
        c.heard("other", None).unwrap();
        c.check();
        assert_eq!(c.peers()[0].2, Health::Alive);
        std::thread::sleep(Duration::from_millis(110));
        c.check();
        assert_eq!(c.peers()[0].2, Health::Suspect);
        std::thread::sleep(Duration::from_millis(30));
        c.check();
        assert_eq!(c.peers()[0].2, Health::Dead);
        match rx.try_recv().unwrap() {
            NodeEvent::Dead { name, silent, .. } => {
                assert_eq!(name, "other");
                assert!(silent > t.dead_after);
            }
            e => panic!("{e:?}"),
        }
        c.heard("other", None).unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            NodeEvent::Back {
                name: "other".into(),
                addr: "127.0.0.1:2".into()
            }
        );
        assert!(c.heard("stranger", None).is_err());
        // Added peers are kept, private.
        assert!(c.add("third", "10.0.0.3:7420").unwrap());
        let f = d.path().join("peers");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(c.add("me", "10.0.0.3:7420").is_err());
    }

    #[test]
    fn majority_needs_more_than_half_from_three_nodes_on() {
        use super::{quorate, QuorumRule::*};
        assert!(quorate(Majority, 1, 1));
        assert!(quorate(Majority, 2, 1), "two nodes: no quorum rule");
        assert!(!quorate(Majority, 3, 1));
        assert!(quorate(Majority, 3, 2));
        assert!(!quorate(Majority, 4, 2));
        assert!(quorate(Majority, 4, 3));
        assert!(!quorate(Majority, 5, 2));
        assert!(quorate(Off, 5, 1));
    }

    #[test]
    fn peers_file_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("peers");
        std::fs::write(
            &p,
            "# cluster\nn1 10.0.0.1:7420\n\nn2 10.0.0.2:7420 # two\n",
        )
        .unwrap();
        assert_eq!(
            read_peers(&p).unwrap(),
            vec![
                ("n1".into(), "10.0.0.1:7420".into()),
                ("n2".into(), "10.0.0.2:7420".into())
            ]
        );
        std::fs::write(&p, "n1 10.0.0.1\n").unwrap();
        let e = read_peers(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("HOST:PORT"), "{e}");
        std::fs::write(&p, "n/1 10.0.0.1:1\n").unwrap();
        assert!(read_peers(&p).is_err());
    }
}

//! Protected processes: `godwit protect --pid PID [--every SECS]
//! [--replicas K]` (or `godwit run --protect -- PROGRAM`). The node that
//! runs the process (its owner) checkpoints it every SECS into its store
//! while it runs on (`--leave-running`: a short freeze), and copies each
//! checkpoint to K peers (an export of the store, `PUT /v1/replicas/{id}`).
//!
//! Failover: when the owner is declared dead (cluster.rs), the first of the
//! checkpoint's holders that is alive restores the newest copy it holds and
//! becomes the owner with the next generation; it tells every peer.
//!
//! Fencing (never two live copies): a generation only grows. A node that
//! comes back asks its peers, before it runs anything of its own, who owns
//! each process it owned: one another node owns at a higher generation is
//! dropped here, and a copy of it still running here (a node that was only
//! cut off) is killed. An owner that hears of a higher generation (a peer
//! took over while this node was unreachable) does the same.
//!
//! Quorum (cluster.rs, `--quorum majority`, from three nodes on): a node
//! takes over only while it hears a majority of the cluster. One that stops
//! hearing a majority (it is the cut-off side of a partition, or the others
//! died) pauses the protected processes it owns with SIGSTOP, before the
//! majority side declares it dead and takes them over (a peer is suspect
//! after two silent heartbeats, dead after the dead bound). Once it hears a
//! majority again, it asks its peers: what a peer owns at a higher
//! generation is fenced (killed here), the rest continues (SIGCONT), and
//! the nodes it sees dead meanwhile are failed over then. Never two live
//! copies, and nothing lost when nobody took over.
//!
//! State: `DATA/protected.json` (0600): the processes this node owns and the
//! copies it holds for others.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use godwit_net::http::HttpRequest;
use godwit_net::Scope;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::{need, ok, ApiError, ApiResult, Conn};
use crate::cluster::{Health, NodeEvent};
use crate::{lock, Agent};

/// Checkpoints of one protected process kept in a store (this node's own,
/// or the copies it holds): the newest ones.
const KEEP: usize = 2;

/// A protected process as its owner describes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    /// Its PID (as it sees itself; the same after a takeover unless taken).
    pub pid: i32,
    pub program: String,
    pub every_ms: u64,
    pub replicas: usize,
    pub owner: String,
    /// Grows by one at each takeover.
    pub generation: u64,
    /// Checkpoints taken by this generation's owner.
    pub taken: u64,
    /// The newest checkpoint, and when.
    pub last_checkpoint: Option<String>,
    pub last_unix_ms: u64,
    /// Peers holding copies (the order of takeover), with the checkpoint
    /// each holds and when it got it.
    pub holders: Vec<String>,
    #[serde(default)]
    pub replicated: BTreeMap<String, (String, u64)>,
    /// Bytes sent to each holder: (for its newest copy, in all).
    #[serde(default)]
    pub sent_bytes: BTreeMap<String, (u64, u64)>,
    /// A conformist service (its id is its UUID): what starts it again on a
    /// holder. Its copies are the checkpoints it puts in this node's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
}

/// How a protected conformist service is started again on another node:
/// under its UUID, from the newest copy of its checkpoints (`--resume`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceSpec {
    pub uuid: String,
    /// Its arguments without the lifecycle options (`--uuid`, `--resume`, ...).
    pub args: Vec<String>,
    pub env: serde_json::Map<String, Value>,
    pub cwd: Option<String>,
    /// Started again when it dies (`on-failure`).
    pub restart: bool,
}

/// How often the owner looks for a new checkpoint of a protected service
/// in its store.
const SERVICE_POLL_MS: u64 = 500;

/// A copy held for another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    record: Record,
    checkpoint: String,
    received_unix_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State_ {
    owned: BTreeMap<String, Record>,
    held: BTreeMap<String, Held>,
    /// Checkpoints of each id in the store, oldest first.
    #[serde(default)]
    kept: BTreeMap<String, Vec<String>>,
}

/// This node's protected processes.
#[derive(Default)]
pub struct Protection {
    state: std::sync::Mutex<State_>,
    /// Serializes takeovers, fencing and saving.
    busy: tokio::sync::Mutex<()>,
    /// Owned processes paused (SIGSTOP) for want of a quorum, by id: PID.
    paused: std::sync::Mutex<BTreeMap<String, i32>>,
}

use crate::now_ms;

fn state_file(agent: &Agent) -> PathBuf {
    agent.data.join("protected.json")
}

fn save(agent: &Agent) {
    let bytes = {
        let st = lock(&agent.protection.state);
        serde_json::to_vec_pretty(&*st).unwrap_or_default()
    };
    if let Err(e) = crate::cluster::write_private(&state_file(agent), &bytes) {
        tracing::error!("saving the protected processes: {e}");
    }
}

/// Whether `pid` runs `program` (and is not a zombie).
fn alive(pid: i32, program: &str) -> bool {
    !program.is_empty()
        && program_of(pid) == program
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            == Some(false)
}

/// The first word of `pid`'s command line ("" when there is none).
fn program_of(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            c.split(|b| *b == 0)
                .next()
                .map(|a| String::from_utf8_lossy(a).into_owned())
        })
        .unwrap_or_default()
}

/// The live peers a copy goes to: the first `k` by name, other than `skip`.
fn choose_holders(agent: &Agent, k: usize, skip: &str) -> Vec<String> {
    let mut peers: Vec<String> = agent
        .cluster
        .peers()
        .into_iter()
        .filter(|(n, _, h)| *h == Health::Alive && n != skip)
        .map(|(n, _, _)| n)
        .collect();
    peers.sort();
    peers.truncate(k);
    peers
}

fn addr_of(agent: &Agent, node: &str) -> Option<String> {
    agent
        .cluster
        .peers()
        .into_iter()
        .find(|(n, _, _)| n == node)
        .map(|(_, a, _)| a)
}

/// Loads the state and, before anything runs, fences: what a peer owns at
/// a higher generation is dropped (and killed if it runs here). Then the
/// owned processes' loops start, and the failover watcher.
pub async fn start(agent: Arc<Agent>, client: godwit_net::ClientTls) {
    if let Ok(bytes) = std::fs::read(state_file(&agent)) {
        match serde_json::from_slice::<State_>(&bytes) {
            Ok(st) => *lock(&agent.protection.state) = st,
            Err(e) => tracing::error!("{}: unreadable, ignored: {e}", state_file(&agent).display()),
        }
    }
    let owned: Vec<Record> = lock(&agent.protection.state)
        .owned
        .values()
        .cloned()
        .collect();
    for rec in owned {
        let mut newer = None;
        for (name, addr, _) in agent.cluster.peers() {
            let Some((owner, gen)) = known_by(&client, &addr, &rec.id).await else {
                continue;
            };
            if yields(rec.generation, &agent.cluster.name, gen, &owner) {
                tracing::info!(id = %rec.id, peer = %name, %owner, gen, "taken over while this node was away");
                newer = Some((owner, gen));
            }
        }
        match newer {
            Some((owner, gen)) => fence(&agent, &rec.id, &owner, gen),
            None if rec.service.is_some() => {
                tokio::spawn(run_service(agent.clone(), client.clone(), rec.id.clone()));
            }
            None => {
                crate::transparent::adopt(&agent, rec.pid, &format!("protected {}", rec.id));
                tokio::spawn(run(agent.clone(), client.clone(), rec.id.clone()));
            }
        }
    }
    save(&agent);
    tokio::spawn(keep_quorum(agent.clone(), client.clone()));
    let mut events = agent.cluster.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(NodeEvent::Dead { name, .. }) => failover(&agent, &client, &name).await,
                Ok(NodeEvent::Back { name, addr }) => {
                    tell_back(&agent, &client, &name, &addr).await
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
}

/// The owner and generation the agent at `addr` knows for `id`.
async fn known_by(client: &godwit_net::ClientTls, addr: &str, id: &str) -> Option<(String, u64)> {
    let mut req = HttpRequest::new("GET", "/v1/protected");
    req.timeout = Duration::from_secs(3);
    let v = client.request(addr, &req).await.ok()?.json().ok()?;
    let k = &v["known"][id];
    Some((k["owner"].as_str()?.to_string(), k["generation"].as_u64()?))
}

/// Whether the owner `me` at generation `my_gen` yields to `owner` at
/// `gen`: a higher generation wins; at the same generation (two holders
/// that each saw themselves as the first live one, their views of the
/// cluster differing for a moment) the lower node name does.
fn yields(my_gen: u64, me: &str, gen: u64, owner: &str) -> bool {
    gen > my_gen || (gen == my_gen && owner != me && owner < me)
}

/// Drops what this node owned of `id` now that `owner` has it at `gen`;
/// kills a copy still running here.
fn fence(agent: &Agent, id: &str, owner: &str, gen: u64) {
    let dropped = {
        let mut st = lock(&agent.protection.state);
        match st.owned.get(id) {
            Some(r) if yields(r.generation, &r.owner, gen, owner) => st.owned.remove(id),
            _ => None,
        }
    };
    if let Some(r) = dropped {
        if r.service.is_some() {
            let n = crate::api::kill_service(agent, id);
            tracing::warn!(id, killed = n, %owner, gen, "fencing: {owner} runs this service now (generation {gen}); dropped here");
        } else if alive(r.pid, &r.program) {
            tracing::warn!(id, pid = r.pid, %owner, gen, "fencing: {owner} runs this process now (generation {gen}); the copy here is killed");
            crate::api::send_signal(r.pid as u32, "KILL");
        } else {
            tracing::info!(id, %owner, gen, "fencing: {owner} runs this process now; dropped here");
        }
        lock(&agent.transparent).remove(&r.pid);
    }
    if let Some(h) = lock(&agent.protection.state).held.get_mut(id) {
        if h.record.generation <= gen {
            h.record.owner = owner.to_string();
            h.record.generation = gen;
        }
    }
    save(agent);
}

/// The owner's loop for `id`: checkpoint, copy, keep the newest.
async fn run(agent: Arc<Agent>, client: godwit_net::ClientTls, id: String) {
    // The write tracking kept between checkpoints goes with this loop.
    let _tracking = crate::transparent::TrackingGuard(agent.clone(), id.clone());
    loop {
        let Some(rec) = lock(&agent.protection.state).owned.get(&id).cloned() else {
            return; // dropped (fenced or unprotected)
        };
        tokio::time::sleep(Duration::from_millis(rec.every_ms)).await;
        let Some(rec) = lock(&agent.protection.state).owned.get(&id).cloned() else {
            return;
        };
        if !alive(rec.pid, &rec.program) {
            tracing::warn!(id = %id, pid = rec.pid, "the protected process is gone; its last checkpoint is {:?}", rec.last_checkpoint);
            continue;
        }
        if lock(&agent.protection.paused).contains_key(&id) {
            continue; // no quorum: paused, and its copies could not go out
        }
        let ck = format!("{}.g{}.{}", id, rec.generation, rec.taken + 1);
        let opts = godwit_engine::dump::DumpOptions {
            leave_running: true,
            ..Default::default()
        };
        match crate::transparent::checkpoint_tracked(&agent, &id, rec.pid, &ck, opts).await {
            Ok((r, _)) => {
                tracing::debug!(id = %id, checkpoint = %ck, frozen_ms = r.frozen.as_secs_f64() * 1e3, "protected: checkpoint")
            }
            Err(e) => {
                tracing::warn!(id = %id, "protected: checkpoint failed: {}", e.message());
                continue;
            }
        }
        let holders = {
            let mut st = lock(&agent.protection.state);
            let Some(r) = st.owned.get_mut(&id) else {
                return;
            };
            r.taken += 1;
            r.last_checkpoint = Some(ck.clone());
            r.last_unix_ms = now_ms();
            r.holders = choose_holders(&agent, r.replicas, &agent.cluster.name);
            r.holders.clone()
        };
        prune(&agent, &id, &ck);
        save(&agent);
        if holders.is_empty() {
            continue;
        }
        let store = match crate::store::open(&agent) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("protected: {}", e.message());
                continue;
            }
        };
        let (st2, c) = (store.clone(), ck.clone());
        let ck_file = match tokio::task::spawn_blocking(move || {
            godwit_store::export::checkpoint_file(&st2, &c)
        })
        .await
        {
            Ok(Ok(b)) => Bytes::from(b),
            Ok(Err(e)) => {
                tracing::warn!(id = %id, "protected: reading {ck}: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!(id = %id, "protected: reading {ck}: {e}");
                continue;
            }
        };
        let rec = lock(&agent.protection.state).owned.get(&id).cloned();
        let Some(rec) = rec else { return };
        let meta = serde_json::to_string(&rec).unwrap_or_default();
        for h in holders {
            let Some(addr) = addr_of(&agent, &h) else {
                continue;
            };
            match copy_to(&client, &addr, &store, &agent, &id, &ck, &ck_file, &meta).await {
                Ok(sent) => {
                    tracing::debug!(id = %id, peer = %h, checkpoint = %ck, sent, "protected: copied");
                    if let Some(r) = lock(&agent.protection.state).owned.get_mut(&id) {
                        r.replicated.insert(h.clone(), (ck.clone(), now_ms()));
                        let s = r.sent_bytes.entry(h.clone()).or_default();
                        *s = (sent, s.1 + sent);
                    }
                }
                Err(Copy::Fenced(msg)) => {
                    // A newer generation runs elsewhere: fenced.
                    tracing::warn!(id = %id, peer = %h, "{msg}");
                    if let Some((owner, gen)) = known_by(&client, &addr, &id).await {
                        fence(&agent, &id, &owner, gen);
                        return;
                    }
                }
                Err(Copy::Failed(msg)) => {
                    tracing::warn!(id = %id, peer = %h, "protected: copy failed: {msg}")
                }
            }
        }
        save(&agent);
    }
}

/// Why a copy did not reach a holder.
enum Copy {
    /// 409: the holder knows a newer generation.
    Fenced(String),
    Failed(String),
}

/// Sends checkpoint `ck` (whose file is `ck_file`) to the holder at `addr`:
/// its file first (`POST /v1/replicas/{id}/offer`), to which the holder
/// answers the chunks it lacks, then an export carrying only those (`PUT
/// /v1/replicas/{id}`), which the holder checks and commits whole. A holder
/// that does not answer the offer gets the whole export. Bytes sent.
#[allow(clippy::too_many_arguments)]
async fn copy_to(
    client: &godwit_net::ClientTls,
    addr: &str,
    store: &godwit_store::Store,
    agent: &Agent,
    id: &str,
    ck: &str,
    ck_file: &Bytes,
    meta: &str,
) -> Result<u64, Copy> {
    let answer = |r: Result<godwit_net::http::HttpResponse, godwit_net::NetError>| match r {
        Ok(resp) if resp.status < 300 => Ok(resp),
        Ok(resp) if resp.status == 409 => Err(Copy::Fenced(resp.error_message())),
        Ok(resp) => Err(Copy::Failed(format!(
            "HTTP {}: {}",
            resp.status,
            resp.error_message()
        ))),
        Err(e) => Err(Copy::Failed(e.to_string())),
    };
    let path = format!("/v1/replicas/{id}/offer?record={}", urlencode(meta));
    let mut req = HttpRequest::new("POST", &path);
    req.body = ck_file.clone();
    req.content_type = "application/octet-stream";
    req.timeout = Duration::from_secs(30);
    let offered = answer(client.request(addr, &req).await);
    let mut sent = ck_file.len() as u64;
    let only: Option<std::collections::HashSet<godwit_store::Hash>> = match offered {
        Ok(resp) => {
            let v: Value = resp.json().map_err(|e| Copy::Failed(e.to_string()))?;
            let list = v["missing"]
                .as_array()
                .ok_or_else(|| Copy::Failed(format!("no `missing` in the offer's answer {v}")))?;
            Some(
                list.iter()
                    .map(|h| h.as_str().and_then(godwit_store::parse_hex))
                    .collect::<Option<_>>()
                    .ok_or_else(|| Copy::Failed("a bad chunk hash in the offer's answer".into()))?,
            )
        }
        Err(Copy::Fenced(m)) => return Err(Copy::Fenced(m)),
        Err(Copy::Failed(m)) => {
            tracing::info!(
                id,
                "protected: the offer was not answered ({m}): sending the whole checkpoint"
            );
            None
        }
    };
    let export = agent.data.join(format!(".export-{ck}-{}", now_ms()));
    let (st, c, e) = (store.clone(), ck.to_string(), export.clone());
    let bytes = tokio::task::spawn_blocking(move || {
        let r = godwit_store::export::export_only(&st, &c, &e, only.as_ref()).and_then(|_| {
            std::fs::read(&e).map_err(|x| godwit_store::StoreError::io("reading", &e, x))
        });
        let _ = std::fs::remove_file(&e);
        r
    })
    .await
    .map_err(|e| Copy::Failed(format!("export: {e}")))?
    .map_err(|e| Copy::Failed(format!("export: {e}")))?;
    sent += bytes.len() as u64;
    let path = format!("/v1/replicas/{id}?record={}", urlencode(meta));
    let mut req = HttpRequest::new("PUT", &path);
    req.body = Bytes::from(bytes);
    req.content_type = "application/octet-stream";
    req.timeout = Duration::from_secs(60);
    answer(client.request(addr, &req).await)?;
    Ok(sent)
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Keeps the newest [`KEEP`] checkpoints of `id` in the store.
fn prune(agent: &Agent, id: &str, newest: &str) {
    let old: Vec<String> = {
        let mut st = lock(&agent.protection.state);
        let list = st.kept.entry(id.to_string()).or_default();
        list.push(newest.to_string());
        let n = list.len().saturating_sub(KEEP);
        list.drain(..n).collect()
    };
    if old.is_empty() {
        return;
    }
    if let Ok(store) = crate::store::open(agent) {
        for ck in old {
            if let Err(e) = store.remove(&ck) {
                tracing::debug!(checkpoint = %ck, "pruning: {e}");
            }
        }
    }
}

/// `dead` was declared dead: the processes it owned whose copies this node
/// holds are restored here when this node is the first live holder.
async fn failover(agent: &Arc<Agent>, client: &godwit_net::ClientTls, dead: &str) {
    let _busy = agent.protection.busy.lock().await;
    if !agent.cluster.has_quorum(true) {
        let (nodes, heard) = agent.cluster.reach(true);
        tracing::warn!(
            "{dead} is dead as seen from here, but this node hears only {heard} of {nodes} nodes: no takeover without a majority (it follows once this node hears one)"
        );
        return;
    }
    let mine: Vec<Held> = lock(&agent.protection.state)
        .held
        .values()
        .filter(|h| h.record.owner == dead)
        .cloned()
        .collect();
    let health: BTreeMap<String, Health> = agent
        .cluster
        .peers()
        .into_iter()
        .map(|(n, _, h)| (n, h))
        .collect();
    for h in mine {
        let first = h
            .record
            .holders
            .iter()
            .find(|n| **n == agent.cluster.name || health.get(*n) == Some(&Health::Alive));
        if first.map(String::as_str) != Some(agent.cluster.name.as_str()) {
            tracing::info!(id = %h.record.id, "{dead} is dead; {:?} takes over its protected process", first);
            continue;
        }
        let t0 = std::time::Instant::now();
        let pid = match &h.record.service {
            Some(spec) => {
                tracing::warn!(id = %h.record.id, checkpoint = %h.checkpoint, "{dead} is dead: starting its protected service here");
                let dead_addr = addr_of(agent, dead);
                match crate::api::start_service_here(
                    agent,
                    &h.record.program,
                    spec,
                    dead_addr.as_deref(),
                )
                .await
                {
                    Ok((pid, address)) => {
                        tracing::info!(id = %h.record.id, pid, %address, "the service serves here");
                        pid as i32
                    }
                    Err(e) => {
                        tracing::error!(id = %h.record.id, "taking over the service failed: {}", e.message());
                        continue;
                    }
                }
            }
            None => match take_over_process(agent, &h, dead).await {
                Ok(pid) => pid,
                Err(e) => {
                    tracing::error!(id = %h.record.id, "taking over failed: {e}");
                    continue;
                }
            },
        };
        let mut rec = h.record.clone();
        rec.owner = agent.cluster.name.clone();
        rec.generation += 1;
        rec.pid = pid;
        rec.program = program_of(pid);
        rec.taken = 0;
        rec.last_checkpoint = Some(h.checkpoint.clone());
        rec.replicated.clear();
        rec.sent_bytes.clear();
        rec.holders = choose_holders(agent, rec.replicas, dead);
        {
            let mut st = lock(&agent.protection.state);
            st.held.remove(&rec.id);
            if rec.service.is_some() {
                // Its store is the running service's own now (its retention).
                st.kept.remove(&rec.id);
            }
            st.owned.insert(rec.id.clone(), rec.clone());
        }
        save(agent);
        tracing::warn!(
            id = %rec.id, pid = rec.pid, generation = rec.generation,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "took over the protected process of {dead}"
        );
        crate::metrics::takeover();
        for (name, addr, _) in agent.cluster.peers() {
            announce(client, &name, &addr, &rec).await;
        }
        if rec.service.is_some() {
            tokio::spawn(run_service(agent.clone(), client.clone(), rec.id.clone()));
        } else {
            tokio::spawn(run(agent.clone(), client.clone(), rec.id.clone()));
        }
    }
}

/// Restores the newest copy held of a protected process here: its host PID.
async fn take_over_process(
    agent: &Arc<Agent>,
    h: &Held,
    dead: &str,
) -> Result<i32, godwit_engine::EngineError> {
    tracing::warn!(id = %h.record.id, checkpoint = %h.checkpoint, "{dead} is dead: restoring its protected process here");
    let origin = format!("protected {} (taken over from {dead})", h.record.id);
    let mut opts = godwit_engine::restore::RestoreOptions::default();
    let mut r =
        crate::transparent::restore_checkpoint(agent, &h.checkpoint, opts.clone(), &origin).await;
    if matches!(r, Err(godwit_engine::EngineError::PidTaken { .. })) {
        opts.pid_ns = true;
        r = crate::transparent::restore_checkpoint(agent, &h.checkpoint, opts, &origin).await;
    }
    r.map(|r| r.host_pid)
}

/// Protects conformist service `uuid` that this agent started (its
/// running instance `pid`): each new checkpoint it puts in this node's
/// store is copied to `replicas` peers.
pub(crate) fn protect_service(
    agent: &Arc<Agent>,
    uuid: &str,
    pid: i32,
    replicas: usize,
) -> Result<Record, ApiError> {
    let spec = crate::api::service_spec(agent, uuid)
        .ok_or_else(|| ApiError::new(404, format!("no service {uuid} started by this agent")))?;
    let store = spec
        .args
        .windows(2)
        .rev()
        .find(|w| w[0] == "--store")
        .map(|w| w[1].clone());
    let here = store.as_deref().and_then(godwit_names::agent_addr) == Some(agent.node.as_str());
    if !here {
        crate::api::kill_service(agent, uuid);
        return Err(ApiError::new(
            400,
            format!(
                "service {uuid} keeps its checkpoints in {}, not in this node's store (agent://{}): its copies are made from this node's store; killed",
                store.as_deref().unwrap_or("its own directory"),
                agent.node
            ),
        ));
    }
    let rec = Record {
        id: uuid.to_string(),
        pid,
        program: program_of(pid),
        every_ms: SERVICE_POLL_MS,
        replicas,
        owner: agent.cluster.name.clone(),
        generation: 1,
        taken: 0,
        last_checkpoint: None,
        last_unix_ms: 0,
        holders: choose_holders(agent, replicas, ""),
        replicated: BTreeMap::new(),
        sent_bytes: BTreeMap::new(),
        service: Some(spec),
    };
    if rec.holders.len() < replicas {
        tracing::warn!(id = %uuid, "protected with {} of {replicas} copies: not enough live peers now (more are chosen at each checkpoint)", rec.holders.len());
    }
    lock(&agent.protection.state)
        .owned
        .insert(rec.id.clone(), rec.clone());
    save(agent);
    let client = crate::migration::peer_client(agent)?;
    tokio::spawn(run_service(agent.clone(), client, rec.id.clone()));
    tracing::info!(id = %uuid, pid, replicas, "service protected");
    Ok(rec)
}

/// The owner's loop for service `id`: each new checkpoint the service put
/// in this node's store goes to the holders that lack it.
async fn run_service(agent: Arc<Agent>, client: godwit_net::ClientTls, id: String) {
    loop {
        let Some(rec) = lock(&agent.protection.state).owned.get(&id).cloned() else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(rec.every_ms)).await;
        // Its running instance (one started again here has a new PID).
        if let Some(pid) = crate::api::service_pid(&agent, &id) {
            if let Some(r) = lock(&agent.protection.state).owned.get_mut(&id) {
                if r.pid != pid as i32 {
                    r.pid = pid as i32;
                    r.program = program_of(pid as i32);
                }
            }
        }
        let dir = agent.data.join("store").join(&id);
        let newest = tokio::task::spawn_blocking(move || godwit_sdk::store::list_dir(&dir))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|l| l.last().map(|c| c.id.clone()));
        let Some(ck) = newest else { continue };
        let (rec, holders) = {
            let mut st = lock(&agent.protection.state);
            let Some(r) = st.owned.get_mut(&id) else {
                return;
            };
            if r.last_checkpoint.as_deref() != Some(ck.as_str()) {
                r.taken += 1;
                r.last_checkpoint = Some(ck.clone());
                r.last_unix_ms = now_ms();
            }
            r.holders = choose_holders(&agent, r.replicas, &agent.cluster.name);
            let lacking: Vec<String> = r
                .holders
                .iter()
                .filter(|h| r.replicated.get(*h).map(|(c, _)| c) != Some(&ck))
                .cloned()
                .collect();
            (r.clone(), lacking)
        };
        if holders.is_empty() {
            continue;
        }
        let path = agent
            .data
            .join("store")
            .join(&id)
            .join(format!("{ck}.gwck"));
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                // Removed meanwhile by the service's retention: a newer one is there.
                tracing::debug!(id = %id, checkpoint = %ck, "protected service: {}: {e}", path.display());
                continue;
            }
        };
        let meta = serde_json::to_string(&rec).unwrap_or_default();
        for h in holders {
            let Some(addr) = addr_of(&agent, &h) else {
                continue;
            };
            let path = format!("/v1/service-replicas/{id}/{ck}?record={}", urlencode(&meta));
            let mut req = HttpRequest::new("PUT", &path);
            req.body = bytes.clone();
            req.content_type = "application/octet-stream";
            req.timeout = Duration::from_secs(60);
            match client.request(&addr, &req).await {
                Ok(resp) if resp.status < 300 => {
                    if let Some(r) = lock(&agent.protection.state).owned.get_mut(&id) {
                        r.replicated.insert(h.clone(), (ck.clone(), now_ms()));
                    }
                }
                Ok(resp) if resp.status == 409 => {
                    tracing::warn!(id = %id, peer = %h, "{}", resp.error_message());
                    if let Some((owner, gen)) = known_by(&client, &addr, &id).await {
                        fence(&agent, &id, &owner, gen);
                        return;
                    }
                }
                Ok(resp) => {
                    tracing::warn!(id = %id, peer = %h, "protected service: copy refused: HTTP {}: {}", resp.status, resp.error_message())
                }
                Err(e) => {
                    tracing::warn!(id = %id, peer = %h, "protected service: copy failed: {e}")
                }
            }
        }
        save(&agent);
    }
}

/// Pauses what this node owns while it hears no majority of the cluster,
/// and settles it once it hears one again (see the module's "Quorum").
async fn keep_quorum(agent: Arc<Agent>, client: godwit_net::ClientTls) {
    let mut had = true;
    // Peers start suspect until heard: give them two heartbeats.
    let since = std::time::Instant::now();
    loop {
        tokio::time::sleep(agent.cluster.timing.check).await;
        let has = agent.cluster.has_quorum(false);
        if !has && since.elapsed() <= agent.cluster.timing.suspect_after {
            continue;
        }
        if !has {
            pause_owned(&agent);
        } else if !had {
            resume_paused(&agent, &client).await;
            let dead: Vec<String> = agent
                .cluster
                .peers()
                .into_iter()
                .filter(|(_, _, h)| *h == Health::Dead)
                .map(|(n, _, _)| n)
                .collect();
            for d in dead {
                failover(&agent, &client, &d).await;
            }
        }
        had = has;
    }
}

/// Whether `pid` is stopped (state T).
fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('T'))
        })
        == Some(true)
}

/// SIGSTOPs each owned process not paused yet (a process already stopped
/// by someone else is left as it is, and not continued later).
fn pause_owned(agent: &Agent) {
    let owned: Vec<Record> = lock(&agent.protection.state)
        .owned
        .values()
        .cloned()
        .collect();
    let mut paused = lock(&agent.protection.paused);
    for r in owned {
        if paused.contains_key(&r.id) || !alive(r.pid, &r.program) || stopped(r.pid) {
            continue;
        }
        let (nodes, heard) = agent.cluster.reach(false);
        tracing::warn!(id = %r.id, pid = r.pid, "no quorum (this node hears {heard} of {nodes} nodes): the protected process is paused until it hears a majority");
        crate::api::send_signal(r.pid as u32, "STOP");
        paused.insert(r.id.clone(), r.pid);
        crate::metrics::quorum_pause();
    }
}

/// With a majority heard again: each paused process a peer owns now at a
/// higher generation is fenced (killed), the others continue.
async fn resume_paused(agent: &Arc<Agent>, client: &godwit_net::ClientTls) {
    let paused = std::mem::take(&mut *lock(&agent.protection.paused));
    for (id, pid) in paused {
        let Some(rec) = lock(&agent.protection.state).owned.get(&id).cloned() else {
            continue;
        };
        let mut newer = None;
        for (_, addr, _) in agent.cluster.peers() {
            if let Some((owner, gen)) = known_by(client, &addr, &id).await {
                if yields(rec.generation, &agent.cluster.name, gen, &owner) {
                    newer = Some((owner, gen));
                }
            }
        }
        match newer {
            Some((owner, gen)) => fence(agent, &id, &owner, gen),
            None => {
                tracing::info!(id = %id, pid, "quorum back: the protected process continues");
                crate::api::send_signal(pid as u32, "CONT");
            }
        }
    }
}

/// Tells `name` who owns `rec` now.
async fn announce(client: &godwit_net::ClientTls, name: &str, addr: &str, rec: &Record) {
    let body = serde_json::to_string(rec).unwrap_or_default();
    let path = format!("/v1/protected/{}/owner", rec.id);
    let mut req = HttpRequest::new("POST", &path).json(&body);
    req.timeout = Duration::from_secs(5);
    if let Err(e) = client.request(addr, &req).await {
        tracing::info!(peer = %name, id = %rec.id, "telling the new owner: {e}");
    }
}

/// `name` is back: it learns who owns what this node took over.
async fn tell_back(agent: &Arc<Agent>, client: &godwit_net::ClientTls, name: &str, addr: &str) {
    let owned: Vec<Record> = lock(&agent.protection.state)
        .owned
        .values()
        .cloned()
        .collect();
    for rec in owned
        .iter()
        .filter(|r| r.generation > 1 || r.holders.iter().any(|h| h == name))
    {
        announce(client, name, addr, rec).await;
    }
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/protected", get(list).post(protect))
        .route("/v1/protected/{id}/owner", post(owner))
        .route("/v1/replicas/{id}", put(replica))
        .route("/v1/replicas/{id}/offer", post(offer))
        .route("/v1/service-replicas/{uuid}/{ck}", put(service_replica))
}

/// `POST /v1/protected` `{"pid", "every_secs"?: 10, "replicas"?: 1}`
/// (`operate`): protects a process of this node.
async fn protect(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let v = crate::api::json_body(body)?;
    let pid = v["pid"]
        .as_i64()
        .ok_or_else(|| ApiError::new(400, "`pid` (number) is required"))? as i32;
    let every = v["every_secs"].as_f64().unwrap_or(10.0);
    if !(0.2..=86_400.0).contains(&every) {
        return Err(ApiError::new(
            400,
            format!("`every_secs` {every}: from 0.2 to 86400 seconds"),
        ));
    }
    let replicas = v["replicas"].as_u64().unwrap_or(1) as usize;
    if replicas > 16 {
        return Err(ApiError::new(
            400,
            format!("`replicas` {replicas}: at most 16"),
        ));
    }
    let program = program_of(pid);
    if program.is_empty() || !alive(pid, &program) {
        return Err(ApiError::new(
            404,
            format!("no live process {pid} on this node"),
        ));
    }
    let id = format!("{}-{pid}-{}", agent.cluster.name, now_ms());
    let rec = Record {
        id: id.clone(),
        pid,
        program,
        every_ms: (every * 1e3) as u64,
        replicas,
        owner: agent.cluster.name.clone(),
        generation: 1,
        taken: 0,
        last_checkpoint: None,
        last_unix_ms: 0,
        holders: choose_holders(&agent, replicas, ""),
        replicated: BTreeMap::new(),
        sent_bytes: BTreeMap::new(),
        service: None,
    };
    if rec.holders.len() < replicas {
        tracing::warn!(id = %id, "protected with {} of {replicas} copies: not enough live peers now (more are chosen at each checkpoint)", rec.holders.len());
    }
    lock(&agent.protection.state)
        .owned
        .insert(id.clone(), rec.clone());
    save(&agent);
    crate::transparent::adopt(&agent, pid, &format!("protected {id}"));
    let client = crate::migration::peer_client(&agent)?;
    tokio::spawn(run(agent.clone(), client, id));
    ok(201, serde_json::to_value(&rec).unwrap_or(Value::Null))
}

/// `GET /v1/protected` (`read`): what this node owns (with each copy's
/// lag) and holds, and the owner and generation it knows for each id.
async fn list(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let st = lock(&agent.protection.state);
    let now = now_ms();
    let mut known = serde_json::Map::new();
    for r in st.owned.values() {
        known.insert(
            r.id.clone(),
            json!({"owner": r.owner, "generation": r.generation}),
        );
    }
    for h in st.held.values() {
        known
            .entry(h.record.id.clone())
            .or_insert(json!({"owner": h.record.owner, "generation": h.record.generation}));
    }
    let owned: Vec<Value> = st
        .owned
        .values()
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            v["lag_ms_by_holder"] = json!(r
                .holders
                .iter()
                .map(|h| (
                    h.clone(),
                    r.replicated.get(h).map(|(_, t)| now.saturating_sub(*t))
                ))
                .collect::<BTreeMap<_, _>>());
            v["lag_ms"] = json!(r
                .holders
                .iter()
                .map(|h| r
                    .replicated
                    .get(h)
                    .map_or(u64::MAX, |(_, t)| now.saturating_sub(*t)))
                .max());
            v
        })
        .collect();
    let held: Vec<Value> = st
        .held
        .values()
        .map(|h| json!({"id": h.record.id, "owner": h.record.owner, "generation": h.record.generation, "checkpoint": h.checkpoint, "age_ms": now.saturating_sub(h.received_unix_ms)}))
        .collect();
    ok(
        200,
        json!({"node": agent.cluster.name, "owned": owned, "held": held, "known": known}),
    )
}

/// `POST /v1/protected/{id}/owner` (a Record, `operate`): a peer owns `id`
/// now at that generation.
async fn owner(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let rec: Record = serde_json::from_slice(&body?)
        .map_err(|e| ApiError::new(400, format!("not a protected process record: {e}")))?;
    if rec.id != id {
        return Err(ApiError::new(400, "the record is of another id"));
    }
    fence(&agent, &id, &rec.owner, rec.generation);
    ok(
        200,
        json!({"id": id, "owner": rec.owner, "generation": rec.generation}),
    )
}

#[derive(Deserialize)]
struct ReplicaQuery {
    record: String,
}

/// The owner's record a copy comes with (`?record=JSON`): `operate` only, of
/// `id`, and refused (409) when this node knows a newer generation.
fn replica_record(
    agent: &Agent,
    conn: &Conn,
    id: &str,
    q: &ReplicaQuery,
) -> Result<Record, ApiError> {
    need(conn, Scope::Operate)?;
    let rec: Record = serde_json::from_str(&q.record)
        .map_err(|e| ApiError::new(400, format!("`record`: {e}")))?;
    if rec.id != id {
        return Err(ApiError::new(400, "the record is of another id"));
    }
    refuse_older(agent, &rec)?;
    Ok(rec)
}

/// `PUT /v1/replicas/{id}?record=JSON` (`operate`), body: an export of the
/// checkpoint (`godwit checkpoints export`): a copy held for the owner.
/// 409 when this node knows a newer generation (the sender is fenced).
async fn replica(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
    Query(q): Query<ReplicaQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let rec = replica_record(&agent, &conn, &id, &q)?;
    let body = body?;
    let t = agent.data.join(format!(".replica-{id}-{}", now_ms()));
    let store = crate::store::open(&agent)?;
    let imported =
        tokio::task::spawn_blocking(move || crate::store::import_bytes(&store, &t, &body))
            .await
            .map_err(|e| ApiError::new(500, e.to_string()))?
            .map_err(|e| crate::store::store_error(&e))?;
    let ck = imported.id.clone();
    {
        let mut st = lock(&agent.protection.state);
        st.held.insert(
            id.clone(),
            Held {
                record: rec,
                checkpoint: ck.clone(),
                received_unix_ms: now_ms(),
            },
        );
    }
    prune(&agent, &id, &ck);
    save(&agent);
    ok(201, json!({"id": id, "checkpoint": ck}))
}

/// 409 when this node knows of `rec.id` at a newer generation than `rec`'s
/// (its sender is fenced).
fn refuse_older(agent: &Agent, rec: &Record) -> Result<(), ApiError> {
    let st = lock(&agent.protection.state);
    let known = st
        .owned
        .get(&rec.id)
        .map(|r| (r.owner.clone(), r.generation))
        .or_else(|| {
            st.held
                .get(&rec.id)
                .map(|h| (h.record.owner.clone(), h.record.generation))
        });
    match known.filter(|(o, g)| yields(rec.generation, &rec.owner, *g, o)) {
        Some((owner, generation)) => Err(ApiError::new(
            409,
            format!(
                "{} runs on {owner} at generation {generation}, newer than {}'s {}",
                rec.id, rec.owner, rec.generation
            ),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/replicas/{id}/offer?record=JSON` (`operate`), body: the
/// checkpoint file of a copy to come (record, parent, manifest: its chunk
/// list): `{"missing": [HASH...], "chunks": N}`, the chunks this node's
/// store lacks, which the `PUT` that follows must carry. 409 when this node
/// knows a newer generation; 400 when the file does not decode.
async fn offer(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
    Query(q): Query<ReplicaQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    replica_record(&agent, &conn, &id, &q)?;
    let body = body?;
    let store = crate::store::open(&agent)?;
    let missing = tokio::task::spawn_blocking(move || godwit_store::export::missing(&store, &body))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))?
        .map_err(|e| ApiError::new(400, format!("not a checkpoint file: {e}")))?;
    ok(
        200,
        json!({"id": id, "missing": missing.iter().map(godwit_store::hex).collect::<Vec<_>>()}),
    )
}

/// `PUT /v1/service-replicas/{uuid}/{ck}?record=JSON` (`operate`), body:
/// checkpoint `ck` of conformist service `uuid` as its store holds it: a
/// copy held for the owner, kept in this node's store under the same id
/// (so that the service resumes from it here). The newest [`KEEP`] are
/// kept. 400 unless it is a whole checkpoint of `uuid` numbered `ck`; 409
/// when this node knows a newer generation.
async fn service_replica(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path((uuid, ck)): Path<(String, String)>,
    Query(q): Query<ReplicaQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let rec: Record = serde_json::from_str(&q.record)
        .map_err(|e| ApiError::new(400, format!("`record`: {e}")))?;
    if rec.id != uuid || rec.service.is_none() {
        return Err(ApiError::new(400, "the record is not of this service"));
    }
    for (what, v) in [("service uuid", &uuid), ("checkpoint id", &ck)] {
        godwit_sdk::store::check_name(what, v).map_err(|e| ApiError::new(400, e.to_string()))?;
    }
    refuse_older(&agent, &rec)?;
    let body = body?;
    let path = agent
        .data
        .join("store")
        .join(&uuid)
        .join(format!("{ck}.gwck"));
    let (u, c) = (uuid.clone(), ck.clone());
    tokio::task::spawn_blocking(move || {
        godwit_sdk::checkpoint::verify_upload(&body, &u, &c)
            .map_err(|e| ApiError::new(400, format!("not kept as {u}/{c}: {e}")))?;
        match godwit_sdk::store::write_private_new(&path, &body, &u, &c) {
            // The same checkpoint sent again (its earlier answer was lost).
            Ok(()) | Err(godwit_sdk::store::StoreError::Exists { .. }) => Ok(()),
            Err(e) => Err(ApiError::new(500, e.to_string())),
        }
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))??;
    let old: Vec<String> = {
        let mut st = lock(&agent.protection.state);
        st.held.insert(
            uuid.clone(),
            Held {
                record: rec,
                checkpoint: ck.clone(),
                received_unix_ms: now_ms(),
            },
        );
        let list = st.kept.entry(uuid.clone()).or_default();
        if !list.contains(&ck) {
            list.push(ck.clone());
        }
        let n = list.len().saturating_sub(KEEP);
        list.drain(..n).collect()
    };
    for o in old {
        let p = agent
            .data
            .join("store")
            .join(&uuid)
            .join(format!("{o}.gwck"));
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::debug!(checkpoint = %o, "pruning: {}: {e}", p.display());
        }
    }
    save(&agent);
    ok(201, json!({"id": uuid, "checkpoint": ck}))
}

#[cfg(test)]
mod tests {
    use super::yields;

    #[test]
    fn a_higher_generation_wins_and_at_a_tie_the_lower_name() {
        assert!(yields(1, "n1", 2, "n2"));
        assert!(!yields(2, "n2", 1, "n1"));
        // Two takeovers at once: both at generation 2; n2 keeps it, n3 yields.
        assert!(yields(2, "n3", 2, "n2"));
        assert!(!yields(2, "n2", 2, "n3"));
        // Its own record never fences it.
        assert!(!yields(2, "n2", 2, "n2"));
    }
}

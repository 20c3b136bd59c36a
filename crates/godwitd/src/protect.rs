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
}

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
            None => {
                crate::transparent::adopt(&agent, rec.pid, &format!("protected {}", rec.id));
                tokio::spawn(run(agent.clone(), client.clone(), rec.id.clone()));
            }
        }
    }
    save(&agent);
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
        if alive(r.pid, &r.program) {
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
        let export = agent.data.join(format!(".export-{ck}"));
        let store = match crate::store::open(&agent) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("protected: {}", e.message());
                continue;
            }
        };
        let (c, e) = (ck.clone(), export.clone());
        let bytes = tokio::task::spawn_blocking(move || {
            godwit_store::export::export(&store, &c, &e)?;
            let b = std::fs::read(&e).map_err(|x| godwit_store::StoreError::io("reading", &e, x));
            let _ = std::fs::remove_file(&e);
            b
        })
        .await;
        let bytes = match bytes {
            Ok(Ok(b)) => Bytes::from(b),
            Ok(Err(e)) => {
                tracing::warn!(id = %id, "protected: export failed: {e}");
                continue;
            }
            Err(e) => {
                tracing::warn!(id = %id, "protected: export failed: {e}");
                continue;
            }
        };
        let rec = lock(&agent.protection.state).owned.get(&id).cloned();
        let Some(rec) = rec else { return };
        for h in holders {
            let Some(addr) = addr_of(&agent, &h) else {
                continue;
            };
            let meta = serde_json::to_string(&rec).unwrap_or_default();
            let path = format!("/v1/replicas/{}?record={}", id, urlencode(&meta));
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
                    // A newer generation runs elsewhere: fenced.
                    tracing::warn!(id = %id, peer = %h, "{}", resp.error_message());
                    if let Some((owner, gen)) = known_by(&client, &addr, &id).await {
                        fence(&agent, &id, &owner, gen);
                        return;
                    }
                }
                Ok(resp) => {
                    tracing::warn!(id = %id, peer = %h, "protected: copy refused: HTTP {}: {}", resp.status, resp.error_message())
                }
                Err(e) => tracing::warn!(id = %id, peer = %h, "protected: copy failed: {e}"),
            }
        }
        save(&agent);
    }
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
        tracing::warn!(id = %h.record.id, checkpoint = %h.checkpoint, "{dead} is dead: restoring its protected process here");
        let origin = format!("protected {} (taken over from {dead})", h.record.id);
        let mut opts = godwit_engine::restore::RestoreOptions::default();
        let mut r =
            crate::transparent::restore_checkpoint(agent, &h.checkpoint, opts.clone(), &origin)
                .await;
        if matches!(r, Err(godwit_engine::EngineError::PidTaken { .. })) {
            opts.pid_ns = true;
            r = crate::transparent::restore_checkpoint(agent, &h.checkpoint, opts, &origin).await;
        }
        let restored = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(id = %h.record.id, "taking over failed: {e}");
                continue;
            }
        };
        let mut rec = h.record.clone();
        rec.owner = agent.cluster.name.clone();
        rec.generation += 1;
        rec.pid = restored.host_pid;
        rec.program = program_of(restored.host_pid);
        rec.taken = 0;
        rec.last_checkpoint = Some(h.checkpoint.clone());
        rec.replicated.clear();
        rec.holders = choose_holders(agent, rec.replicas, dead);
        {
            let mut st = lock(&agent.protection.state);
            st.held.remove(&rec.id);
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
        tokio::spawn(run(agent.clone(), client.clone(), rec.id.clone()));
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
    need(&conn, Scope::Operate)?;
    let rec: Record = serde_json::from_str(&q.record)
        .map_err(|e| ApiError::new(400, format!("`record`: {e}")))?;
    if rec.id != id {
        return Err(ApiError::new(400, "the record is of another id"));
    }
    let newer = {
        let st = lock(&agent.protection.state);
        let known = st
            .owned
            .get(&id)
            .map(|r| (r.owner.clone(), r.generation))
            .or_else(|| {
                st.held
                    .get(&id)
                    .map(|h| (h.record.owner.clone(), h.record.generation))
            });
        known.filter(|(o, g)| yields(rec.generation, &rec.owner, *g, o))
    };
    if let Some((owner, generation)) = newer {
        return Err(ApiError::new(
            409,
            format!(
                "{id} runs on {owner} at generation {generation}, newer than {}'s {}",
                rec.owner, rec.generation
            ),
        ));
    }
    let body = body?;
    let tmp = agent.data.join(format!(".replica-{id}-{}", now_ms()));
    let store = crate::store::open(&agent)?;
    let t = tmp.clone();
    let imported = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let r = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&t)
                .map_err(|e| godwit_store::StoreError::io("writing", &t, e))?;
            f.write_all(&body)
                .map_err(|e| godwit_store::StoreError::io("writing", &t, e))?;
            godwit_store::export::import(&store, &t)
        })();
        let _ = std::fs::remove_file(&t);
        r
    })
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

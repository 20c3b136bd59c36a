//! Transparent (unmodified) processes on this node: what runs here, and
//! checkpoints of them in the node's chunk store (`DATA/checkpoints`, see
//! store.rs), restored from there. Image directories in `DATA/images`
//! (copies a migration kept, checkpoints of older versions) are listed,
//! restored and removed too. Every dump and restore runs on a blocking
//! thread.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use godwit_net::Scope;
use serde_json::{json, Value};

use crate::api::{need, ok, ApiError, ApiResult, Conn};
use crate::{lock, Agent};

/// A transparent process this agent restored or received.
#[derive(Debug, Clone)]
pub struct Managed {
    /// "restored from IMAGE", "migrated from NODE".
    pub origin: String,
    pub since_unix_ms: u64,
    /// Kept on this node by the balancer (`godwit node pin`).
    pub pinned: bool,
}

use crate::now_ms;

/// Records that `pid` (a host PID of this node) came here through us.
pub fn adopt(agent: &Agent, pid: i32, origin: &str) {
    lock(&agent.transparent).insert(
        pid,
        Managed {
            origin: origin.to_string(),
            since_unix_ms: now_ms(),
            pinned: false,
        },
    );
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/processes", get(list))
        .route("/v1/processes/{pid}/checkpoint", post(checkpoint))
        .route("/v1/processes/{pid}/adopt", post(adopt_route))
        .route("/v1/images", get(images))
        .route("/v1/images/{id}/restore", post(restore))
        .route("/v1/images/{id}", axum::routing::delete(remove))
        .merge(crate::store::routes())
}

#[derive(serde::Deserialize)]
struct ListQuery {
    /// Every process of the node, not only those the agent manages.
    all: Option<bool>,
}

/// One line of /proc/PID/stat: (comm, state, ppid, utime+stime ticks, start ticks).
fn stat(pid: i32) -> Option<(String, char, i32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let start: u64 = f.get(19)?.parse().ok()?;
    Some((comm, state, ppid, utime + stime, start))
}

fn uptime_ticks() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |s| (s * 100.0) as u64)
}

fn describe(agent: &Agent, pid: i32) -> Option<Value> {
    let (comm, state, ppid, cpu, start) = stat(pid)?;
    let rss_pages: u64 = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let alive_ticks = uptime_ticks().saturating_sub(start).max(1);
    let managed = lock(&agent.transparent).get(&pid).cloned();
    // A started program that exited may have been restored since under its PID.
    let started = lock(&agent.procs)
        .get(&(pid as u32))
        .is_some_and(|p| p.running);
    let kind = if started {
        "started"
    } else if managed.is_some() {
        "transparent"
    } else {
        "other"
    };
    Some(json!({
        "pid": pid,
        "ppid": ppid,
        "program": cmdline.first().cloned().unwrap_or_else(|| comm.clone()),
        "args": cmdline.iter().skip(1).collect::<Vec<_>>(),
        "name": comm,
        "kind": kind,
        "state": state.to_string(),
        "memory_bytes": rss_pages * 4096,
        "cpu_seconds": cpu as f64 / 100.0,
        "cpu_percent": 100.0 * cpu as f64 / alive_ticks as f64,
        "origin": managed.as_ref().map(|m| m.origin.clone()),
        "managed_since_unix_ms": managed.as_ref().map(|m| m.since_unix_ms),
    }))
}

async fn list(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    need(&conn, Scope::Read)?;
    let mut pids: Vec<i32> = if q.all.unwrap_or(false) {
        std::fs::read_dir("/proc")
            .map_err(|e| ApiError::new(500, format!("reading /proc: {e}")))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    } else {
        let mut v: Vec<i32> = lock(&agent.transparent).keys().copied().collect();
        v.extend(lock(&agent.procs).keys().map(|p| *p as i32));
        v
    };
    pids.sort_unstable();
    pids.dedup();
    // Forget managed processes that are gone.
    lock(&agent.transparent)
        .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
    let me = std::process::id() as i32;
    let procs: Vec<Value> = pids
        .into_iter()
        .filter(|p| *p != me)
        .filter_map(|p| describe(&agent, p))
        .collect();
    ok(200, json!({"node": agent.node, "processes": procs}))
}

fn images_dir(agent: &Agent) -> PathBuf {
    agent.data.join("images")
}

fn check_id(id: &str) -> Result<(), ApiError> {
    godwit_sdk::store::check_name("image id", id).map_err(|e| ApiError::new(400, e.to_string()))
}

fn body_json(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let b = body?;
    if b.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&b).map_err(|e| ApiError::new(400, format!("body is not JSON: {e}")))
}

pub(crate) fn engine_status(e: &godwit_engine::EngineError) -> u16 {
    use godwit_engine::EngineError as E;
    match e {
        E::NoSuchProcess { .. } => 404,
        E::PermissionDenied { .. } => 403,
        E::Unsupported { .. } | E::NeedsShellJob { .. } => 422,
        E::PidTaken { .. } | E::SysvShmTaken { .. } => 409,
        E::NeedsTcpEstablished { .. } | E::ImageNeedsTcpEstablished(_) => 422,
        E::Image(_) | E::BadImage(_) | E::CpuMismatch(_) => 422,
        _ => 500,
    }
}

async fn checkpoint(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(pid): Path<i32>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let req = body_json(body)?;
    let leave_running = req["leave_running"].as_bool().unwrap_or(true);
    let id = match req["id"].as_str() {
        Some(id) => id.to_string(),
        None => format!("{pid}-{}", now_ms()),
    };
    check_id(&id)?;
    if images_dir(&agent).join(&id).exists() {
        return Err(ApiError::new(
            409,
            format!("an image {id} exists already in this node's store"),
        ));
    }
    let opts = godwit_engine::dump::DumpOptions {
        leave_running,
        tcp_established: req["tcp_established"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    let (r, parent) = checkpoint_into_store(&agent, pid, &id, opts).await?;
    ok(
        201,
        json!({
            "id": id, "pid": pid, "processes": r.processes, "pids": r.pids,
            "memory_bytes": r.memory_bytes, "image_bytes": r.image_bytes,
            "frozen_ms": r.frozen.as_secs_f64() * 1e3,
            "total_ms": r.total.as_secs_f64() * 1e3,
            "left_running": leave_running, "parent": parent, "medium": "store",
        }),
    )
}

/// Checkpoints process `pid` (and its descendants) into the node's store
/// as checkpoint `id`; returns the report and the checkpoint's parent.
pub(crate) async fn checkpoint_into_store(
    agent: &Arc<Agent>,
    pid: i32,
    id: &str,
    opts: godwit_engine::dump::DumpOptions,
) -> Result<(godwit_engine::dump::DumpReport, Option<String>), ApiError> {
    let store = crate::store::open(agent)?;
    drop_tracking_of(agent, pid);
    let leave_running = opts.leave_running;
    let i = id.to_string();
    let r = tokio::task::spawn_blocking(move || {
        let medium = godwit_store::StoreMedium::new(&store, &i, Some(pid))
            .map_err(|e| crate::store::store_error(&e))?;
        let parent = medium.parent().map(str::to_string);
        let writer = godwit_image::ImageWriter::to_medium(Box::new(medium));
        godwit_engine::dump::dump_into(&[pid], writer, &opts, &godwit_engine::Quiet)
            .map(|r| (r, parent))
            .map_err(|e| ApiError::new(engine_status(&e), e.to_string()))
    })
    .await
    .map_err(|e| ApiError::new(500, format!("the dump thread failed: {e}")))?;
    crate::metrics::checkpoint(r.as_ref().ok().map(|r| (r.0.image_bytes, r.0.frozen)));
    if r.is_ok() && !leave_running {
        lock(&agent.transparent).remove(&pid);
    }
    r
}

/// The write tracking of a protected process kept between two of its
/// periodic checkpoints ([`checkpoint_tracked`]).
#[derive(Debug)]
pub struct Tracked {
    pid: i32,
    /// The checkpoint it was kept after: the next one's parent, whose page
    /// files it takes by reference.
    last: String,
    tracking: godwit_engine::precopy::Tracking,
}

/// Lifts any write tracking kept for the periodic checkpoints of `pid`: it
/// would keep another dump of it (a checkpoint on request, a migration)
/// from pre-copying it. The next periodic checkpoint is then a full one.
pub(crate) fn drop_tracking_of(agent: &Agent, pid: i32) {
    lock(&agent.tracking).retain(|_, t| t.pid != pid);
}

/// Lifts the write tracking kept for protection `key` (the protection
/// ends here: fenced, dropped, or its process gone).
pub(crate) fn drop_tracking(agent: &Agent, key: &str) {
    if let Some(t) = lock(&agent.tracking).remove(key) {
        // Closing the descriptors unregisters the memory.
        drop(t.tracking);
    }
}

/// Drops the tracking kept for a protection when its loop ends.
pub(crate) struct TrackingGuard(pub Arc<Agent>, pub String);

impl Drop for TrackingGuard {
    fn drop(&mut self) {
        drop_tracking(&self.0, &self.1);
    }
}

/// [`checkpoint_into_store`] for the periodic checkpoints of protection
/// `key`: the write tracking stays armed afterwards (kept in the agent), so
/// that the next checkpoint of the same process copies and stores only the
/// pages written since, taking this one's page files by reference
/// (`dump::dump_tracked`). A full checkpoint when nothing is kept, the
/// process is another, or the previous checkpoint is gone from the store.
pub(crate) async fn checkpoint_tracked(
    agent: &Arc<Agent>,
    key: &str,
    pid: i32,
    id: &str,
    opts: godwit_engine::dump::DumpOptions,
) -> Result<(godwit_engine::dump::DumpReport, Option<String>), ApiError> {
    let store = crate::store::open(agent)?;
    let kept = lock(&agent.tracking)
        .remove(key)
        .filter(|t| t.pid == pid && store.contains(&t.last));
    let i = id.to_string();
    let r = tokio::task::spawn_blocking(move || {
        let (from, tracking) = match kept {
            Some(t) => (Some(t.last), Some(t.tracking)),
            None => (None, None),
        };
        let medium = match &from {
            Some(from) => godwit_store::StoreMedium::linking_from(&store, &i, Some(pid), from),
            None => godwit_store::StoreMedium::new(&store, &i, Some(pid)),
        }
        .map_err(|e| crate::store::store_error(&e))?;
        let parent = medium.parent().map(str::to_string);
        let writer = godwit_image::ImageWriter::to_medium(Box::new(medium));
        godwit_engine::dump::dump_tracked(&[pid], writer, &opts, &godwit_engine::Quiet, tracking)
            .map(|(r, t)| (r, parent, t))
            .map_err(|e| ApiError::new(engine_status(&e), e.to_string()))
    })
    .await
    .map_err(|e| ApiError::new(500, format!("the dump thread failed: {e}")))?;
    crate::metrics::checkpoint(r.as_ref().ok().map(|r| (r.0.image_bytes, r.0.frozen)));
    let (report, parent, tracking) = r?;
    if let Some(tracking) = tracking {
        lock(&agent.tracking).insert(
            key.to_string(),
            Tracked {
                pid,
                last: id.to_string(),
                tracking,
            },
        );
    }
    Ok((report, parent))
}

/// `POST /v1/processes/{pid}/adopt` (`operate`): a process of this node
/// that the agent did not start becomes one it manages (listed, its load
/// measured, moved by the balancer).
async fn adopt_route(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(pid): Path<i32>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let tgid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse::<i32>().ok())
        });
    match tgid {
        Some(t) if t == pid => {}
        Some(t) => {
            return Err(ApiError::new(
                422,
                format!("{pid} is a thread of process {t}: adopt the process"),
            ))
        }
        None => return Err(ApiError::new(404, format!("no process {pid} on this node"))),
    }
    if pid as u32 == std::process::id() {
        return Err(ApiError::new(422, "the agent cannot manage itself"));
    }
    adopt(&agent, pid, "adopted");
    ok(200, json!({"pid": pid, "adopted": true}))
}

async fn images(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let store = crate::store::open(&agent)?;
    let dir = images_dir(&agent);
    let mut out = tokio::task::spawn_blocking(move || listing(&store, &dir))
        .await
        .map_err(|e| ApiError::new(500, format!("the listing thread failed: {e}")))?;
    out.sort_by_key(|v| v["created_unix_ms"].as_u64().unwrap_or(0));
    ok(200, json!({"images": out}))
}

/// The checkpoints of the store, then the image directories of `dir`.
fn listing(store: &godwit_store::Store, dir: &std::path::Path) -> Vec<Value> {
    let mut out = Vec::new();
    match store.list() {
        Ok(list) => {
            for c in list {
                let ck = store.read_checkpoint(&c.id).ok().and_then(|(_, m)| {
                    let m = godwit_image::decode_manifest_bytes(&m).ok()?;
                    <godwit_engine::schema::Checkpoint as prost::Message>::decode(
                        m.metadata.as_slice(),
                    )
                    .ok()
                });
                let Some(ck) = ck else {
                    tracing::warn!(id = %c.id, "a checkpoint of the store does not decode");
                    continue;
                };
                out.push(json!({
                    "id": c.id,
                    "pids": ck.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
                    "bytes": c.page_bytes,
                    "stored_bytes": c.new_stored_bytes,
                    "parent": c.parent,
                    "created_unix_ms": ck.created_unix_ms,
                    "hostname": ck.hostname,
                    "medium": "store",
                }));
            }
        }
        Err(e) => tracing::warn!("listing the checkpoint store: {e}"),
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if id.starts_with('.') {
                continue;
            }
            let Ok((ck, reader)) = godwit_engine::load(&e.path()) else {
                continue;
            };
            out.push(json!({
                "id": id,
                "pids": ck.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
                "bytes": reader.total_bytes(),
                "created_unix_ms": ck.created_unix_ms,
                "hostname": ck.hostname,
                "medium": "directory",
            }));
        }
    }
    out
}

async fn restore(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    check_id(&id)?;
    let req = body_json(body)?;
    let store = crate::store::open(&agent)?;
    let dir = images_dir(&agent).join(&id);
    let in_store = store.contains(&id);
    if !in_store && !dir.join("manifest.img").exists() {
        return Err(ApiError::new(
            404,
            format!("no image {id} in this node's store"),
        ));
    }
    let opts = godwit_engine::restore::RestoreOptions {
        pid_ns: req["pid_ns"].as_bool().unwrap_or(false),
        tcp_established: req["tcp_established"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    let r = restore_checkpoint(&agent, &id, opts, &format!("restored from image {id}"))
        .await
        .map_err(|e| ApiError::new(engine_status(&e), e.to_string()))?;
    // Descriptors that were connected outside the dumped tree got
    // their stand-ins (the API passes no descriptors).
    let warnings: Vec<String> = r
        .externals
        .iter()
        .filter(|u| u.inherited.is_none())
        .map(|u| {
            godwit_engine::resources::external::warning(
                &u.fd,
                godwit_engine::resources::external::NODE_API,
            )
        })
        .collect();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    ok(
        201,
        json!({
            "id": id, "pid": r.pid, "host_pid": r.host_pid, "processes": r.processes,
            "total_ms": r.total.as_secs_f64() * 1e3, "warnings": warnings,
        }),
    )
}

/// Restores checkpoint `id` of the node's store (or image directory `id`
/// of `DATA/images`); the restored processes become the agent's, with
/// `origin` saying where they came from.
pub(crate) async fn restore_checkpoint(
    agent: &Arc<Agent>,
    id: &str,
    opts: godwit_engine::restore::RestoreOptions,
    origin: &str,
) -> Result<godwit_engine::restore::RestoreReport, godwit_engine::EngineError> {
    let store = crate::store::open(agent).map_err(|e| {
        godwit_engine::EngineError::BadImage(format!("the node's store: {}", e.message()))
    })?;
    let dir = images_dir(agent).join(id);
    let in_store = store.contains(id);
    let i = id.to_string();
    let r = tokio::task::spawn_blocking(move || {
        if !in_store {
            return godwit_engine::restore::restore(&dir, &opts, &godwit_engine::Quiet);
        }
        let source = godwit_store::StoreSource::open(&store, &i).map_err(|e| {
            godwit_engine::EngineError::from(godwit_image::ImageError::Medium {
                location: store.dir().join(&i),
                source: Box::new(e),
            })
        })?;
        let reader = godwit_image::ImageReader::from_source(Box::new(source))?;
        godwit_engine::restore::restore_from(reader, &opts, &godwit_engine::Quiet, &|_| Ok(()))
    })
    .await
    .map_err(|e| {
        godwit_engine::EngineError::Migration(format!("the restore thread failed: {e}"))
    })?;
    crate::metrics::restore(r.is_ok());
    if let Ok(r) = &r {
        for host_pid in r.host_roots() {
            adopt(agent, host_pid, origin);
        }
    }
    r
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    check_id(&id)?;
    let store = crate::store::open(&agent)?;
    if store.contains(&id) {
        store
            .remove(&id)
            .map_err(|e| crate::store::store_error(&e))?;
        return ok(200, json!({"id": id, "removed": true}));
    }
    let dir = images_dir(&agent).join(&id);
    if !dir.exists() {
        return Err(ApiError::new(
            404,
            format!("no image {id} in this node's store"),
        ));
    }
    std::fs::remove_dir_all(&dir)
        .map_err(|e| ApiError::new(500, format!("removing {}: {e}", dir.display())))?;
    ok(200, json!({"id": id, "removed": true}))
}

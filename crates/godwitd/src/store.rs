//! The node's checkpoint store (crate godwit-store) in `DATA/checkpoints`:
//! where transparent checkpoints go (see transparent.rs), and its
//! management API: `GET /v1/checkpoints` (read), `DELETE
//! /v1/checkpoints/{id}` and `POST /v1/checkpoints/gc` (operate); `GET
//! /v1/checkpoints/{id}/export` and `POST /v1/checkpoints/import`
//! (operate: an export holds the process's memory) carry one checkpoint
//! as the file `godwit checkpoints export` writes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use godwit_net::Scope;
use godwit_store::{Store, StoreError};
use serde_json::json;

use crate::api::{need, ok, ApiError, ApiResult, Conn};
use crate::Agent;

/// The node's store (created on first use).
pub fn open(agent: &Agent) -> Result<Store, ApiError> {
    Store::open(&agent.data.join("checkpoints")).map_err(|e| store_error(&e))
}

/// The HTTP status of a store error.
pub fn store_error(e: &StoreError) -> ApiError {
    let status = match e {
        StoreError::BadName { .. } => 400,
        StoreError::NoCheckpoint { .. } => 404,
        StoreError::Exists { .. } => 409,
        StoreError::BadCheckpoint { .. }
        | StoreError::MissingChunk { .. }
        | StoreError::CorruptChunk { .. }
        | StoreError::BadExport { .. } => 422,
        _ => 500,
    };
    ApiError::new(status, e.to_string())
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/checkpoints", get(list))
        .route("/v1/checkpoints/gc", post(gc))
        .route("/v1/checkpoints/prune", post(prune))
        .route("/v1/checkpoints/{id}", delete(remove))
        .route("/v1/checkpoints/{id}/export", get(export))
        .route("/v1/checkpoints/import", post(import))
}

/// A private scratch file name in the agent's data directory.
fn scratch(agent: &Agent, what: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    agent
        .data
        .join(format!(".{what}-{}-{n}", std::process::id()))
}

/// Imports an export held in memory: written to the scratch file `path`
/// (0600), imported, removed. The checkpoint appears whole or not at all.
pub(crate) fn import_bytes(
    store: &Store,
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<godwit_store::export::Transfer, StoreError> {
    let r = write_private(path, bytes).and_then(|_| godwit_store::export::import(store, path));
    let _ = std::fs::remove_file(path);
    r
}

/// Writes `bytes` to a new file `path`, mode 0600.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| StoreError::io("writing", path, e))
}

/// `GET /v1/checkpoints/{id}/export` (`operate`): the checkpoint as one
/// export file (application/octet-stream).
async fn export(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    need(&conn, Scope::Operate)?;
    godwit_store::check_name("checkpoint id", &id).map_err(|e| store_error(&e))?;
    let store = open(&agent)?;
    let file = scratch(&agent, "export");
    let f = file.clone();
    let bytes = blocking(move || {
        let r = godwit_store::export::export(&store, &id, &f)
            .and_then(|_| std::fs::read(&f).map_err(|e| StoreError::io("reading", &f, e)));
        let _ = std::fs::remove_file(&f);
        r
    })
    .await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

/// `POST /v1/checkpoints/import` (`operate`), body: an export file. The
/// checkpoint appears whole, or not at all.
async fn import(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let body =
        body.map_err(|e| ApiError::new(400, format!("the export could not be read: {e}")))?;
    let store = open(&agent)?;
    let file = scratch(&agent, "import");
    let f = file.clone();
    let t = blocking(move || import_bytes(&store, &f, &body)).await?;
    ok(201, json!(t))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, format!("the store thread failed: {e}")))?
        .map_err(|e| store_error(&e))
}

async fn list(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let store = open(&agent)?;
    let dir = store.dir().to_owned();
    let (list, usage) = blocking(move || Ok((store.list()?, store.usage()?))).await?;
    ok(
        200,
        json!({"node": agent.node, "store": dir, "checkpoints": list, "usage": usage}),
    )
}

async fn remove(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(id): Path<String>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let store = open(&agent)?;
    let i = id.clone();
    blocking(move || store.remove(&i)).await?;
    ok(200, json!({"id": id, "removed": true}))
}

async fn gc(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let store = open(&agent)?;
    let r = blocking(move || store.gc()).await?;
    ok(200, json!(r))
}

/// How often the node's retention rule runs.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Applies `--store-keep` / `--store-max-age-secs` every minute.
pub fn start_retention(agent: Arc<Agent>) {
    if agent.retention.is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RETENTION_EVERY).await;
            let Ok(store) = open(&agent) else { continue };
            let rule = agent.retention;
            match blocking(move || store.prune(&rule)).await {
                Ok(r) if !r.removed.is_empty() => tracing::info!(
                    removed = ?r.removed,
                    bytes_freed = r.gc.bytes_freed,
                    "retention: checkpoints removed"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("retention: {}", e.message()),
            }
        }
    });
}

/// `POST /v1/checkpoints/prune` (`operate`), `{"keep"?: N, "max_age_secs"?:
/// S}` (default: the node's `--store-keep`/`--store-max-age-secs`):
/// removes what the rule does not keep, then collects.
async fn prune(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let body = body.map_err(|e| ApiError::new(400, format!("the body could not be read: {e}")))?;
    let v: serde_json::Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(400, format!("the body is not JSON: {e}")))?
    };
    let mut rule = agent.retention;
    if let Some(k) = v.get("keep").filter(|k| !k.is_null()) {
        let k = k
            .as_u64()
            .filter(|k| *k >= 1)
            .ok_or_else(|| ApiError::new(400, format!("`keep` {k}: a whole number, at least 1")))?;
        rule.keep = Some(k as usize);
    }
    if let Some(a) = v.get("max_age_secs").filter(|a| !a.is_null()) {
        let a = a.as_u64().ok_or_else(|| {
            ApiError::new(
                400,
                format!("`max_age_secs` {a}: a whole number of seconds"),
            )
        })?;
        rule.max_age = Some(std::time::Duration::from_secs(a));
    }
    if rule.is_none() {
        return Err(ApiError::new(
            400,
            "no rule: give `keep` or `max_age_secs` (or start godwitd with --store-keep / --store-max-age-secs)",
        ));
    }
    let store = open(&agent)?;
    let r = blocking(move || store.prune(&rule)).await?;
    ok(200, json!(r))
}

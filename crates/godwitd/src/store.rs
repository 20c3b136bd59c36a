//! The node's checkpoint store (crate godwit-store) in `DATA/checkpoints`:
//! where transparent checkpoints go (see transparent.rs), and its
//! management API: `GET /v1/checkpoints` (read), `DELETE
//! /v1/checkpoints/{id}` and `POST /v1/checkpoints/gc` (operate).

use std::sync::Arc;

use axum::extract::{Path, State};
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
        .route("/v1/checkpoints/{id}", delete(remove))
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

//! `POST /v1/services/{uuid}/migrate`: this agent moves a conformist service it
//! started (and that runs here) to a peer node, as `godwit service migrate` does
//! from the command line: the orchestration is
//! [`godwit_agent_client::migrate`] (a standby instance started there, the
//! source frozen at a safe point, the destination restoring its checkpoint, the
//! source stopped; a failure before the destination serves thaws the source).
//! The peers (and this agent itself, for the service's credential) are reached
//! with the first `operate` token of this agent's token file.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::Extension;
use godwit_agent_client::AgentError;
use godwit_net::Scope;
use godwit_sdk::store::check_name;
use serde_json::{json, Value};

use crate::api::{ApiError, ApiResult, Conn};
use crate::Agent;

/// How long the service's own status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// The services this process's agent is moving now: one migration of a service
/// at a time (another request for it is refused, 409).
static MOVING: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A service marked as moving, unmarked when dropped (the request ended, however).
struct Moving(String);

impl Moving {
    fn start(uuid: &str) -> Result<Moving, ApiError> {
        if !crate::lock(&MOVING).insert(uuid.to_string()) {
            return Err(ApiError::new(
                409,
                format!("service {uuid} is being migrated already; try again when that ends"),
            ));
        }
        Ok(Moving(uuid.to_string()))
    }
}

impl Drop for Moving {
    fn drop(&mut self) {
        crate::lock(&MOVING).remove(&self.0);
    }
}

/// The address of the destination `to`: a peer's name (as `GET /v1/nodes`
/// lists it) or `ADDR:PORT` as it is.
fn destination(agent: &Agent, to: &str) -> Result<String, ApiError> {
    let to = to.trim();
    if to.is_empty() {
        return Err(ApiError::new(
            400,
            "`to` is empty: give a peer node's name or its ADDR:PORT",
        ));
    }
    let addr = agent
        .cluster
        .peers()
        .into_iter()
        .find(|(name, _, _)| name == to)
        .map(|(_, addr, _)| addr)
        .unwrap_or_else(|| to.to_string());
    if addr == agent.node {
        return Err(ApiError::new(
            400,
            format!("`to` is this node ({addr}): the service already runs here"),
        ));
    }
    if addr.rsplit_once(':').is_none() {
        return Err(ApiError::new(
            400,
            format!("`to`: {to} is neither a known peer nor ADDR:PORT"),
        ));
    }
    Ok(addr)
}

/// The HTTP status for a failed migration: 404 when the service left its name
/// service meanwhile, else 502 (the service, the destination or a peer failed;
/// the message names the stage and what was rolled back).
fn status_of(e: &AgentError) -> u16 {
    match e {
        AgentError::NotFound(_) => 404,
        _ => 502,
    }
}

/// `POST /v1/services/{uuid}/migrate {"to": NODE or "ADDR:PORT"}` (`operate`).
pub(crate) async fn send(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    crate::api::need(&conn, Scope::Operate)?;
    let Path(uuid) = uuid?;
    check_name("uuid", &uuid).map_err(|e| ApiError::new(400, e.to_string()))?;
    let req = crate::api::json_body(body)?;
    let to = req["to"].as_str().ok_or_else(|| {
        ApiError::new(
            400,
            "the request is not {\"to\": NODE or \"ADDR:PORT\"}: `to` (string) is required",
        )
    })?;
    let to = destination(&agent, to)?;
    let _moving = Moving::start(&uuid)?;
    // Only a service this agent started and that runs here: its credential is
    // this agent's to use.
    let (pid, address, cred) = crate::api::running_service(&agent, &uuid, None)?;
    let st = godwit_sdk::mgmt::request(
        &address,
        json!({ "op": "status" }),
        Some(&cred),
        STATUS_TIMEOUT,
    )
    .await
    .map_err(|e| ApiError::new(502, format!("service {uuid} at {address}: {e}")))?;
    let names_url = st["names"].as_str().unwrap_or("memory");
    if names_url == "memory" {
        return Err(ApiError::new(
            409,
            format!("service {uuid} uses a private in-process name service: its clients could not find it elsewhere, so it cannot move"),
        ));
    }
    let client = crate::migration::peer_client(&agent)?;
    let names = godwit_names::Names::from_url(names_url, Some(client.token().secret().to_string()))
        .map_err(|e| {
            ApiError::new(
                502,
                format!("service {uuid}: its name service {names_url}: {e}"),
            )
        })?;
    let dest = godwit_agent_client::Agent::with_client(&to, client);
    tracing::info!(%uuid, pid, from = %address, to = %to, "migrating a service");
    let m = match godwit_agent_client::migrate(&names, &dest, &uuid).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%uuid, to = %to, "service not migrated: {e}");
            return Err(ApiError::new(status_of(&e), e.to_string()));
        }
    };
    // The new instance's pid, as the destination's agent lists it.
    let new_pid = dest
        .request("list", "GET", "/v1/exec", None, Duration::from_secs(10))
        .await
        .ok()
        .and_then(|v| {
            v["processes"].as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| p["uuid"] == uuid.as_str() && p["address"] == m.to.as_str())
                    .and_then(|p| p["pid"].as_u64())
            })
        });
    tracing::info!(
        %uuid, node = %to, address = %m.to, pid = ?new_pid,
        switch_over_ms = m.switch_over.as_secs_f64() * 1e3,
        "service migrated; it serves there"
    );
    let mut v = m.to_json();
    if let Value::Object(o) = &mut v {
        o.insert("node".into(), json!(to));
        o.insert("address".into(), json!(m.to));
        o.insert("pid".into(), json!(new_pid));
        o.insert("from_node".into(), json!(agent.node));
        o.insert("from_pid".into(), json!(pid));
    }
    crate::api::ok(200, v)
}

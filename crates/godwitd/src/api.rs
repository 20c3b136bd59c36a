//! The HTTP API (docs/API.md) as axum handlers. Every request arrives on an
//! authenticated channel whose scopes are in the [`Conn`] extension.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use godwit_net::{Scope, Scopes};
use godwit_sdk::checkpoint::verify_upload;
use godwit_sdk::store::{check_name, list_dir, write_private_new, StoreError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{lock, Agent, Allowed, Proc};

/// Largest request body (checkpoint uploads).
const BODY_LIMIT: usize = 8 << 30;

/// The scopes of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Conn(pub Scopes);

/// An error answer: `{"error": message}` with a status.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    /// What went wrong, in words.
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl ApiError {
    pub(crate) fn new(status: u16, msg: impl Into<String>) -> Self {
        ApiError(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            msg.into(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        ApiError(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError(StatusCode::BAD_REQUEST, r.body_text())
    }
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn need(conn: &Conn, scope: Scope) -> Result<(), ApiError> {
    if conn.0.allows(scope) {
        return Ok(());
    }
    let hint = match scope {
        Scope::Service => "`service` or `operate`".to_string(),
        Scope::Read => "`read` (or `operate`)".to_string(),
        s => format!("`{s}`"),
    };
    Err(ApiError::new(
        403,
        format!(
            "forbidden: this needs the {hint} scope and the connection's token has only `{}`; give the token that scope in the agent's token file",
            conn.0
        ),
    ))
}

/// Reading names, checkpoints and health: `read`, or `service` (what a program started
/// by this agent holds: it must resolve names and fetch checkpoints to restore).
fn need_read_or_service(conn: &Conn) -> Result<(), ApiError> {
    if conn.0.allows(Scope::Service) {
        return Ok(());
    }
    need(conn, Scope::Read)
}

/// A request's JSON body (400 otherwise).
pub(crate) fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body?;
    serde_json::from_slice(&body).map_err(|e| ApiError::new(400, format!("body is not JSON: {e}")))
}

pub(crate) fn ok(status: u16, v: Value) -> ApiResult {
    Ok((
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(v),
    )
        .into_response())
}

/// The router; the per-connection [`Conn`] extension is added by the caller.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/exec", post(exec).get(list_procs))
        .route("/v1/exec/{pid}/signal", post(signal_proc))
        .route("/v1/services/{uuid}/credential", post(service_credential))
        .route("/v1/services/{uuid}/manage", post(service_manage))
        .route("/v1/services/{uuid}/start", post(service_start))
        .route("/v1/grants", post(grant))
        .route("/v1/names", get(names_list))
        .route(
            "/v1/names/{uuid}",
            get(names_get).put(names_put).delete(names_delete),
        )
        .route("/v1/store", get(store_services))
        .route("/v1/store/{uuid}", get(store_list))
        .route(
            "/v1/store/{uuid}/{id}",
            get(store_get).put(store_put).delete(store_delete),
        )
        .merge(crate::transparent::routes())
        .merge(crate::migration::routes())
        .merge(crate::cluster::routes())
        .merge(crate::metrics::routes())
        .merge(crate::balance::routes())
        .merge(crate::protect::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(agent)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(404, format!("no route {method} {}", uri.path()))
}

async fn health(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need_read_or_service(&conn)?;
    ok(
        200,
        json!({ "ok": true, "node": agent.node, "version": env!("CARGO_PKG_VERSION"),
                "roles": ["exec", "names", "store"], "scopes": conn.0.to_string() }),
    )
}

async fn names_list(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
) -> ApiResult {
    need_read_or_service(&conn)?;
    ok(
        200,
        json!({ "services": agent.names.list().iter().map(|r| json!({
            "uuid": r.uuid, "address": r.address, "expires_in_ms": r.expires_in.as_millis() as u64
        })).collect::<Vec<_>>() }),
    )
}

async fn names_get(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
) -> ApiResult {
    need_read_or_service(&conn)?;
    let Path(uuid) = uuid?;
    match agent.names.resolve(&uuid) {
        Some(a) => ok(200, json!({ "uuid": uuid, "address": a })),
        None => Err(ApiError::new(404, format!("no live binding for {uuid}"))),
    }
}

async fn names_put(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Service)?;
    let Path(uuid) = uuid?;
    let v = json_body(body)?;
    let address = v["address"]
        .as_str()
        .ok_or_else(|| ApiError::new(400, "`address` (string) is required"))?;
    let ttl_ms = v["ttl_ms"].as_u64().unwrap_or(10_000).clamp(100, 3_600_000);
    agent
        .names
        .advertise(&uuid, address, Duration::from_millis(ttl_ms));
    ok(
        200,
        json!({ "uuid": uuid, "address": address, "ttl_ms": ttl_ms }),
    )
}

async fn names_delete(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    need(&conn, Scope::Service)?;
    let Path(uuid) = uuid?;
    let removed = agent
        .names
        .withdraw(&uuid, q.get("address").map(String::as_str));
    ok(200, json!({ "removed": removed }))
}

fn bad_name(e: godwit_sdk::store::StoreError) -> ApiError {
    ApiError::new(400, e.to_string())
}

async fn store_services(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
) -> ApiResult {
    need(&conn, Scope::Read)?;
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(agent.data.join("store")) {
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    ok(200, json!({ "services": out }))
}

async fn store_list(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
) -> ApiResult {
    need_read_or_service(&conn)?;
    let Path(uuid) = uuid?;
    check_name("service uuid", &uuid).map_err(bad_name)?;
    // Reads each checkpoint's description (its parent): blocking file reads.
    let dir = agent.data.join("store").join(&uuid);
    let list = tokio::task::spawn_blocking(move || list_dir(&dir))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))?
        .map_err(|e| ApiError::new(500, e.to_string()))?;
    ok(
        200,
        json!({ "uuid": uuid, "checkpoints": list.iter().map(|c| json!({
            "id": c.id, "bytes": c.bytes, "parent": c.parent, "created_unix_ms": c.created_unix_ms,
        })).collect::<Vec<_>>() }),
    )
}

fn checkpoint_path(agent: &Agent, uuid: &str, id: &str) -> Result<PathBuf, ApiError> {
    check_name("service uuid", uuid).map_err(bad_name)?;
    check_name("checkpoint id", id).map_err(bad_name)?;
    Ok(agent
        .data
        .join("store")
        .join(uuid)
        .join(format!("{id}.gwck")))
}

async fn store_put(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    p: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Service)?;
    let Path((uuid, id)) = p?;
    let path = checkpoint_path(&agent, &uuid, &id)?;
    let body = body?;
    let bytes = body.len();
    // Only a whole checkpoint of this service instance, under its own id, is kept:
    // anything else would become `latest` and break the next restore.
    let (u, i) = (uuid.clone(), id.clone());
    tokio::task::spawn_blocking(move || {
        verify_upload(&body, &u, &i)
            .map_err(|e| ApiError::new(400, format!("not stored as {u}/{i}: {e}")))?;
        write_private_new(&path, &body, &u, &i).map_err(|e| match e {
            StoreError::Exists { .. } => ApiError::new(409, e.to_string()),
            e => ApiError::new(500, e.to_string()),
        })
    })
    .await
    .map_err(|e| ApiError::new(500, e.to_string()))??;
    ok(201, json!({ "uuid": uuid, "id": id, "bytes": bytes }))
}

async fn store_delete(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    need(&conn, Scope::Service)?;
    let Path((uuid, id)) = p?;
    let path = checkpoint_path(&agent, &uuid, &id)?;
    let removed = match tokio::fs::remove_file(&path).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(ApiError::new(500, e.to_string())),
    };
    ok(200, json!({ "uuid": uuid, "id": id, "removed": removed }))
}

async fn store_get(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult {
    need_read_or_service(&conn)?;
    let Path((uuid, id)) = p?;
    let path = checkpoint_path(&agent, &uuid, &id)?;
    match tokio::fs::read(&path).await {
        Ok(b) => Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            b,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::new(404, format!("no checkpoint {uuid}/{id}")))
        }
        Err(e) => Err(ApiError::new(500, e.to_string())),
    }
}

async fn list_procs(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
) -> ApiResult {
    need(&conn, Scope::Read)?;
    let procs = lock(&agent.procs);
    ok(
        200,
        json!({ "processes": procs.iter().map(|(pid, p)| json!({
            "pid": pid, "program": p.program, "args": p.args, "running": p.running, "exit_code": p.exit,
            "log": p.log.display().to_string(), "restart": if p.restart { "on-failure" } else { "never" }, "restarts": p.restarts,
            "address": p.service.as_ref().map(|s| &s.0), "uuid": p.service.as_ref().map(|s| &s.1),
        })).collect::<Vec<_>>() }),
    )
}

/// The management credential of the running instance of service `uuid` that this agent
/// started (`operate`): `{uuid, pid, address, token}`; body `{"address"?}` picks the
/// instance at that address (two run side by side during a migration on one node),
/// else the newest; 404 when none runs here.
async fn service_credential(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let Path(uuid) = uuid?;
    check_name("uuid", &uuid).map_err(|e| ApiError::new(400, e.to_string()))?;
    let body = body?;
    let want: Option<String> = if body.is_empty() {
        None
    } else {
        json_body(Ok(body))?["address"].as_str().map(str::to_string)
    };
    let (pid, address, token) = running_service(&agent, &uuid, want.as_deref())?;
    ok(
        200,
        json!({ "uuid": uuid, "pid": pid, "address": address, "token": token }),
    )
}

/// The running instance of service `uuid` that this agent started, the one at `want`
/// or else the newest: (pid, address, management credential); 404 when none runs here.
pub(crate) fn running_service(
    agent: &Agent,
    uuid: &str,
    want: Option<&str>,
) -> Result<(u32, String, String), ApiError> {
    let procs = lock(&agent.procs);
    let found = procs
        .iter()
        .filter(|(_, p)| {
            p.running
                && p.service
                    .as_ref()
                    .is_some_and(|s| s.1 == uuid && want.is_none_or(|a| a == s.0))
        })
        .max_by_key(|(pid, _)| **pid);
    match found {
        Some((pid, p)) => Ok((
            *pid,
            p.service.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            p.manage.clone(),
        )),
        None => Err(ApiError::new(
            404,
            match want {
                Some(a) => format!(
                    "no running instance of service {uuid} at {a} was started by this agent"
                ),
                None => format!("no running service {uuid} was started by this agent"),
            },
        )),
    }
}

/// How long a management request forwarded by the agent may take (a checkpoint of a
/// large service included).
const MANAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Forwards one management request (`{"op": "status"|"checkpoint"|"interval"|
/// "restore"|"stop", ...}`) to the running instance of service `uuid` that this agent
/// started, with the credential the agent gave it (`operate`; the credential itself
/// never leaves the agent). Answers the service's answer; 502 with its error when
/// it refuses or cannot be reached.
async fn service_manage(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let Path(uuid) = uuid?;
    check_name("uuid", &uuid).map_err(|e| ApiError::new(400, e.to_string()))?;
    let req = json_body(body)?;
    let op = req["op"].as_str().unwrap_or("");
    if !["status", "checkpoint", "interval", "restore", "stop"].contains(&op) {
        return Err(ApiError::new(
            400,
            format!("`op` must be status, checkpoint, interval, restore or stop, not `{op}`"),
        ));
    }
    let (_, address, cred) = running_service(&agent, &uuid, req["address"].as_str())?;
    let mut fwd = serde_json::Map::new();
    fwd.insert("op".into(), json!(op));
    for k in ["secs", "id", "checkpoint"] {
        if !req[k].is_null() {
            fwd.insert(k.into(), req[k].clone());
        }
    }
    match godwit_sdk::mgmt::request(&address, Value::Object(fwd), Some(&cred), MANAGE_TIMEOUT).await
    {
        Ok(v) => ok(200, v),
        Err(e) => Err(ApiError::new(
            502,
            format!("service {uuid} at {address}: {e}"),
        )),
    }
}

/// How long starting a service again waits for its `GODWIT_READY` line.
const START_READY: Duration = Duration::from_secs(60);

/// Starts service `uuid` again on this node (`exec`): the program, arguments,
/// environment and directory of its newest instance that this agent started, under
/// the same UUID, from the tip of its branch (`--resume`) or, with body
/// `{"checkpoint": ID}`, from that checkpoint (`--restore ID`: a new branch). Waits
/// for it to be ready. 409 while an instance runs here, 404 when this agent never
/// started it, 504 (and killed) when not ready in time.
async fn service_start(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    uuid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Exec)?;
    let Path(uuid) = uuid?;
    check_name("uuid", &uuid).map_err(|e| ApiError::new(400, e.to_string()))?;
    let body = body?;
    let from: Option<String> = if body.is_empty() {
        None
    } else {
        json_body(Ok(body))?["checkpoint"]
            .as_str()
            .map(str::to_string)
    };
    if let Some(id) = &from {
        check_name("checkpoint id", id).map_err(|e| ApiError::new(400, e.to_string()))?;
    }
    let last = {
        let procs = lock(&agent.procs);
        let mine: Vec<(&u32, &Proc)> = procs
            .iter()
            .filter(|(_, p)| p.service.as_ref().is_some_and(|s| s.1 == uuid))
            .collect();
        if let Some((pid, _)) = mine.iter().find(|(_, p)| p.running) {
            return Err(ApiError::new(
                409,
                format!("service {uuid} already runs here (pid {pid})"),
            ));
        }
        mine.iter().max_by_key(|(pid, _)| **pid).map(|(_, p)| {
            (
                p.program.clone(),
                p.args.clone(),
                p.restart,
                p.env.clone(),
                p.cwd.clone(),
            )
        })
    };
    let Some((program, args, restart, env, cwd)) = last else {
        return Err(ApiError::new(
            404,
            format!("this agent never started service {uuid}: start it with POST /v1/exec"),
        ));
    };
    let canon = allowed_program(&agent, &program)?;
    let spec = ExecSpec {
        program,
        canon,
        env,
        cwd,
        restart,
    };
    let mut again = godwit_sdk::options::without_lifecycle_options(&args);
    again.extend(["--uuid".into(), uuid.clone()]);
    match &from {
        Some(id) => again.extend(["--restore".into(), id.clone()]),
        None => again.push("--resume".into()),
    }
    let (started, ready) = spawn_program(&agent, &spec, &again, 0).await?;
    let (pid, log) = (started.pid, started.log.clone());
    tokio::spawn(supervise(agent.clone(), spec, started, again));
    let line = await_ready(
        &agent,
        pid,
        &log,
        ready,
        START_READY,
        &format!("service {uuid}"),
    )
    .await?;
    let address = line.split_whitespace().nth(1).map(str::to_string);
    tracing::info!(%uuid, pid, from = from.as_deref().unwrap_or("its newest checkpoint"), "service started again");
    ok(
        201,
        json!({ "uuid": uuid, "pid": pid, "address": address, "restored_from": from, "log": log.display().to_string() }),
    )
}

/// A token with the `service` scope only (names and store), for a service that another
/// agent starts but that uses this agent's name service or store (`operate`). Body
/// `{"secret": S}` (at least 32 characters) registers S, so that one secret may be
/// granted by several agents; without it a fresh one is made. Grants last until godwitd
/// stops. Answer `{"token": S}`.
async fn grant(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let v = json_body(body)?;
    let scopes = Scopes::of(&[Scope::Service]);
    let token = match v["secret"].as_str() {
        Some(s) if s.len() < 32 => {
            return Err(ApiError::new(
                400,
                "`secret` must be at least 32 characters",
            ))
        }
        Some(s) => godwit_net::Token::new(s)
            .map(|t| t.with_scopes(scopes))
            .map_err(|e| ApiError::new(400, format!("`secret`: {e}")))?,
        None => godwit_net::Token::random(scopes).map_err(|e| ApiError::new(500, e.to_string()))?,
    };
    if agent.tokens.contains_secret(token.secret()) {
        // Never re-scope a token the agent already knows (the operator's own, say).
        return Err(ApiError::new(
            409,
            "that secret is already a token of this agent",
        ));
    }
    agent.tokens.insert(token.clone());
    tracing::info!("granted a service-scoped token");
    ok(201, json!({ "token": token.secret() }))
}

/// Sends `sig` (TERM, INT, KILL; STOP and CONT for quorum pauses) to one process. Never to a group or to "all":
/// pids that are not positive are refused.
pub fn send_signal(pid: u32, sig: &str) -> bool {
    let signo = match sig {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        _ => return false,
    };
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; pid > 0 so it
    // targets exactly one process.
    unsafe { libc::kill(pid, signo) == 0 }
}

async fn signal_proc(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    pid: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let Path(pid) = pid?;
    let pid: u32 = pid
        .parse()
        .map_err(|_| ApiError::new(400, format!("bad pid `{pid}`")))?;
    let v = json_body(body)?;
    let sig = v["signal"].as_str().unwrap_or("TERM");
    if !["TERM", "KILL", "INT"].contains(&sig) {
        return Err(ApiError::new(
            400,
            format!("signal `{sig}` not allowed (TERM, INT, KILL)"),
        ));
    }
    // Only programs this agent started may be signalled.
    if !lock(&agent.procs).get(&pid).is_some_and(|p| p.running) {
        return Err(ApiError::new(
            404,
            format!("no running program {pid} started by this agent"),
        ));
    }
    let sent = send_signal(pid, sig);
    ok(200, json!({ "pid": pid, "signal": sig, "sent": sent }))
}

/// Resolves `program` and checks it against `--allow-exec`.
/// `program` as this node has it: the path itself when it exists here,
/// else this node's copy registered under its file name (`--program
/// NAME=PATH`), so that a service moves to a node that keeps its program
/// elsewhere.
pub(crate) fn local_program(agent: &Agent, program: &str) -> String {
    let path = FsPath::new(program);
    if path.exists() {
        return program.to_string();
    }
    let copy = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| agent.programs.get(n));
    match copy {
        Some(c) => {
            tracing::info!(%program, copy = %c.display(), "not on this node: starting the registered copy");
            c.display().to_string()
        }
        None => program.to_string(),
    }
}

fn allowed_program(agent: &Agent, program: &str) -> Result<PathBuf, ApiError> {
    if agent.allow_exec.is_empty() {
        return Err(ApiError::new(
            403,
            "remote execution is off on this agent: start godwitd with --allow-exec PATH (a program, or a directory ending in /) for each program it may start",
        ));
    }
    if !FsPath::new(program).is_absolute() {
        return Err(ApiError::new(
            400,
            format!("`program` must be an absolute path, not `{program}`"),
        ));
    }
    let canon = std::fs::canonicalize(program).map_err(|e| {
        let name = FsPath::new(program)
            .file_name()
            .map_or_else(|| program.into(), |n| n.to_string_lossy());
        ApiError::new(
            400,
            format!(
                "cannot start {program}: {e}; if this node keeps the program elsewhere, register it: godwitd --program {name}=PATH"
            ),
        )
    })?;
    let ok = agent.allow_exec.iter().any(|a| match a {
        Allowed::File(f) => *f == canon,
        Allowed::Dir(d) => canon.starts_with(d),
    });
    if !ok {
        return Err(ApiError::new(
            403,
            format!(
                "{program} (resolved to {}) is not allowed on this agent: start godwitd with --allow-exec {} (or a directory above it, ending in /)",
                canon.display(),
                canon.display()
            ),
        ));
    }
    Ok(canon)
}

/// What to start, as asked by `POST /v1/exec` (also what a restart starts again).
#[derive(Clone)]
struct ExecSpec {
    program: String,
    canon: PathBuf,
    env: serde_json::Map<String, Value>,
    cwd: Option<String>,
    /// Start it again when it dies (exit status other than 0, or a signal).
    restart: bool,
}

/// A started program, tracked in `agent.procs`.
struct Started {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    token: godwit_net::Token,
}

/// Starts one instance: its own narrow token, its log, its entry in `agent.procs`.
async fn spawn_program(
    agent: &Arc<Agent>,
    spec: &ExecSpec,
    args: &[String],
    restarts: u32,
) -> Result<(Started, tokio::sync::oneshot::Receiver<String>), ApiError> {
    let mut cmd = tokio::process::Command::new(&spec.canon);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // The agent's own secrets never go down to the programs it starts: drop every
    // GODWIT_* variable it inherited (GODWIT_TOKEN, GODWIT_TOKEN_FILE, ...).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GODWIT_") {
            cmd.env_remove(&k);
        }
    }
    for (k, val) in &spec.env {
        if let Some(s) = val.as_str() {
            cmd.env(k, s);
        }
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    // The program's own narrow token for this agent (names and store).
    let token = crate::program_token(agent).map_err(|e| ApiError::new(500, e.to_string()))?;
    // Its management credential: fresh, never the caller's token; the agent hands it
    // to operate-scoped callers only.
    let manage = godwit_net::Token::random(Scopes::of(&[]))
        .map_err(|e| ApiError::new(500, e.to_string()))?
        .secret()
        .to_string();
    cmd.env("GODWIT_AGENT", &agent.node)
        .env("GODWIT_AGENT_TOKEN", token.secret())
        .env("GODWIT_MANAGE_TOKEN", &manage);
    let program = &spec.program;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            agent.tokens.revoke(&token);
            return Err(ApiError::new(400, format!("cannot start {program}: {e}")));
        }
    };
    let pid = child.id().unwrap_or(0);
    let log = agent.data.join("logs").join(format!("{pid}.log"));
    let logf = match open_log(&log) {
        Ok(f) => f,
        Err(e) => {
            // Not tracked, so not left running, and its token goes with it.
            let _ = child.start_kill();
            let _ = child.wait().await;
            agent.tokens.revoke(&token);
            return Err(ApiError::new(500, format!("log {}: {e}", log.display())));
        }
    };
    lock(&agent.procs).insert(
        pid,
        Proc {
            program: program.to_string(),
            args: args.to_vec(),
            log: log.clone(),
            exit: None,
            running: true,
            service: None,
            restart: spec.restart,
            restarts,
            manage,
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
        },
    );
    tracing::info!(pid, program, ?args, restarts, "started");

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    if let Some(err) = stderr {
        let logf = logf.try_clone().ok();
        tokio::spawn(copy_lines(BufReader::new(err), logf, None));
    }
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    if let Some(out) = stdout {
        tokio::spawn(copy_lines(
            BufReader::new(out),
            Some(logf),
            Some((ready_tx, agent.clone(), pid)),
        ));
    }
    Ok((
        Started {
            child,
            pid,
            log,
            token,
        },
        ready,
    ))
}

/// First and longest pause before a restart.
const RESTART_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// An instance that ran this long resets the backoff.
const RESTART_STABLE: Duration = Duration::from_secs(60);

/// Waits for a started program; with `restart`, starts it again after it dies, with
/// backoff (1 s doubling to 30 s, back to 1 s after a minute of running). A conformist
/// service comes back under its UUID from the tip of its branch (`--resume`: the newest
/// checkpoint, or fresh when it has none).
async fn supervise(agent: Arc<Agent>, spec: ExecSpec, first: Started, args: Vec<String>) {
    let mut cur = first;
    let mut restarts = 0u32;
    let mut backoff = RESTART_BACKOFF.0;
    loop {
        let since = tokio::time::Instant::now();
        let status = cur.child.wait().await.ok();
        let code = status.and_then(|s| s.code());
        agent.tokens.revoke(&cur.token);
        let (service, restart) = {
            let mut procs = lock(&agent.procs);
            procs
                .get_mut(&cur.pid)
                .map(|p| {
                    p.running = false;
                    p.exit = code;
                    (p.service.clone(), p.restart)
                })
                .unwrap_or((None, false))
        };
        tracing::info!(pid = cur.pid, ?code, "exited");
        if !restart || code == Some(0) || agent.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if since.elapsed() >= RESTART_STABLE {
            backoff = RESTART_BACKOFF.0;
        }
        tracing::warn!(pid = cur.pid, ?code, program = %spec.program, "died; starting it again in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESTART_BACKOFF.1);
        if agent.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let again = match &service {
            Some((_, uuid)) => {
                let mut a = godwit_sdk::options::without_lifecycle_options(&args);
                a.extend(["--uuid".into(), uuid.clone(), "--resume".into()]);
                a
            }
            None => args.clone(),
        };
        restarts += 1;
        match spawn_program(&agent, &spec, &again, restarts).await {
            Ok((s, _ready)) => cur = s,
            Err(e) => {
                tracing::error!(program = %spec.program, error = %e.1, "restart failed; giving up");
                return;
            }
        }
    }
}

async fn exec(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Exec)?;
    let v = json_body(body)?;
    let program = v["program"]
        .as_str()
        .ok_or_else(|| ApiError::new(400, "`program` (string) is required"))?;
    let args: Vec<String> = match &v["args"] {
        Value::Null => vec![],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::new(400, "`args` must be strings"))?,
        _ => return Err(ApiError::new(400, "`args` must be an array")),
    };
    let restart = match v["restart"].as_str() {
        None | Some("never") => false,
        Some("on-failure") => true,
        Some(other) => {
            return Err(ApiError::new(
                400,
                format!("`restart`: `{other}` is not `never` or `on-failure`"),
            ))
        }
    };
    let program = &local_program(&agent, program);
    let canon = allowed_program(&agent, program)?;
    let wait_ready = Duration::from_millis(v["wait_ready_ms"].as_u64().unwrap_or(0));
    let replicas = match &v["replicas"] {
        Value::Null => 0,
        r => match r.as_u64() {
            Some(k @ 0..=16) => k as usize,
            _ => return Err(ApiError::new(400, format!("`replicas` {r}: 0 to 16"))),
        },
    };
    if replicas > 0 && wait_ready.is_zero() {
        return Err(ApiError::new(
            400,
            "`replicas` is for conformist services: give `wait_ready_ms` too (the copies begin once the service is ready)",
        ));
    }
    let spec = ExecSpec {
        program: program.to_string(),
        canon,
        env: v["env"].as_object().cloned().unwrap_or_default(),
        cwd: v["cwd"].as_str().map(str::to_string),
        restart,
    };
    let (started, ready_rx) = spawn_program(&agent, &spec, &args, 0).await?;
    let (pid, log) = (started.pid, started.log.clone());
    tokio::spawn(supervise(agent.clone(), spec, started, args));
    let ready = if wait_ready.is_zero() {
        Value::Null
    } else {
        let line = await_ready(&agent, pid, &log, ready_rx, wait_ready, program).await?;
        let mut it = line.split_whitespace().skip(1);
        json!({ "address": it.next(), "uuid": it.next() })
    };
    let mut protected = Value::Null;
    if replicas > 0 {
        let Some(uuid) = ready["uuid"].as_str() else {
            // Not a conformist service: its copies could not be made.
            if let Some(p) = lock(&agent.procs).get_mut(&pid) {
                p.restart = false;
            }
            send_signal(pid, "KILL");
            return Err(ApiError::new(
                400,
                format!("{program} (pid {pid}) announced no service UUID: `replicas` is for conformist services; killed"),
            ));
        };
        let rec = crate::protect::protect_service(&agent, uuid, pid as i32, replicas)?;
        protected = serde_json::to_value(&rec).unwrap_or(Value::Null);
    }
    ok(
        201,
        json!({ "pid": pid, "ready": ready, "log": log.display().to_string(), "protected": protected }),
    )
}

/// What a conformist service this agent started was started with: program,
/// arguments, environment, directory, restart (its newest instance).
pub(crate) fn service_spec(agent: &Agent, uuid: &str) -> Option<crate::protect::ServiceSpec> {
    let procs = lock(&agent.procs);
    procs
        .iter()
        .filter(|(_, p)| p.service.as_ref().is_some_and(|s| s.1 == uuid))
        .max_by_key(|(pid, _)| **pid)
        .map(|(_, p)| crate::protect::ServiceSpec {
            uuid: uuid.to_string(),
            args: godwit_sdk::options::without_lifecycle_options(&p.args),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            restart: p.restart,
        })
}

/// The PID of the running instance of service `uuid` this agent started
/// (the newest), if any.
pub(crate) fn service_pid(agent: &Agent, uuid: &str) -> Option<u32> {
    running_service(agent, uuid, None)
        .ok()
        .map(|(pid, _, _)| pid)
}

/// Kills the instances of service `uuid` this agent started (not started
/// again): a copy fenced off. How many.
pub(crate) fn kill_service(agent: &Agent, uuid: &str) -> usize {
    let pids: Vec<u32> = {
        let mut procs = lock(&agent.procs);
        procs
            .iter_mut()
            .filter(|(_, p)| p.running && p.service.as_ref().is_some_and(|s| s.1 == uuid))
            .map(|(pid, p)| {
                p.restart = false;
                *pid
            })
            .collect()
    };
    pids.iter().filter(|pid| send_signal(**pid, "KILL")).count()
}

/// Starts service `spec.uuid` on this node from the newest checkpoint of
/// it in this node's store (`--resume`), with `program` (this node's copy,
/// `--program`, when the path differs) and `spec`'s arguments, whose
/// `--listen`, `--names` and `--store` are moved from the dead node at
/// `dead_addr` to this one. Waits for it to be ready: (pid, address).
pub(crate) async fn start_service_here(
    agent: &Arc<Agent>,
    program: &str,
    spec: &crate::protect::ServiceSpec,
    dead_addr: Option<&str>,
) -> Result<(u32, String), ApiError> {
    let program = local_program(agent, program);
    let canon = allowed_program(agent, &program)?;
    let here = agent.node.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let dead_host = dead_addr.and_then(|a| a.rsplit_once(':')).map(|(h, _)| h);
    let mut args = Vec::with_capacity(spec.args.len() + 3);
    let mut it = spec.args.iter();
    while let Some(a) = it.next() {
        args.push(a.clone());
        let Some(v) = it.clone().next() else { break };
        let moved = match a.as_str() {
            "--names" | "--store"
                if dead_addr.is_some() && godwit_names::agent_addr(v) == dead_addr =>
            {
                Some(format!("agent://{}", agent.node))
            }
            "--listen" => match v.rsplit_once(':') {
                Some((h, _)) if Some(h) == dead_host => Some(format!("{here}:0")),
                _ => None,
            },
            _ => None,
        };
        if let Some(m) = moved {
            args.push(m);
            it.next();
        }
    }
    args.extend(["--uuid".into(), spec.uuid.clone(), "--resume".into()]);
    let exec = ExecSpec {
        program,
        canon,
        env: spec.env.clone(),
        cwd: spec.cwd.clone().filter(|d| FsPath::new(d).is_dir()),
        restart: spec.restart,
    };
    let (started, ready) = spawn_program(agent, &exec, &args, 0).await?;
    let (pid, log) = (started.pid, started.log.clone());
    tokio::spawn(supervise(agent.clone(), exec, started, args));
    let line = await_ready(
        agent,
        pid,
        &log,
        ready,
        START_READY,
        &format!("service {}", spec.uuid),
    )
    .await?;
    let address = line.split_whitespace().nth(1).unwrap_or("").to_string();
    Ok((pid, address))
}

/// Waits up to `wait` for a started program's `GODWIT_READY` line; one not
/// ready in time is killed and not started again (504 naming `what`).
async fn await_ready(
    agent: &Agent,
    pid: u32,
    log: &FsPath,
    ready: tokio::sync::oneshot::Receiver<String>,
    wait: Duration,
    what: &str,
) -> Result<String, ApiError> {
    match tokio::time::timeout(wait, ready).await {
        Ok(Ok(line)) => Ok(line),
        _ => {
            if let Some(p) = lock(&agent.procs).get_mut(&pid) {
                p.restart = false;
            }
            send_signal(pid, "KILL");
            Err(ApiError::new(
                504,
                format!(
                    "{what} (pid {pid}) did not print GODWIT_READY within {wait:?}; see {}",
                    log.display()
                ),
            ))
        }
    }
}

fn open_log(path: &FsPath) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Copies a program's output to its log. On stdout, the first `GODWIT_READY <address>
/// <uuid>` line is handed to whoever waits for it and recorded with the process.
async fn copy_lines<R: tokio::io::AsyncRead + Unpin>(
    r: BufReader<R>,
    log: Option<std::fs::File>,
    mut ready: Option<(tokio::sync::oneshot::Sender<String>, Arc<Agent>, u32)>,
) {
    use std::io::Write as _;
    let mut lines = r.lines();
    let mut log = log;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("GODWIT_READY ") {
            if let Some((tx, agent, pid)) = ready.take() {
                let mut it = line.split_whitespace().skip(1);
                if let (Some(a), Some(u)) = (it.next(), it.next()) {
                    if let Some(p) = lock(&agent.procs).get_mut(&pid) {
                        p.service = Some((a.to_string(), u.to_string()));
                    }
                }
                let _ = tx.send(line.clone());
            }
        }
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

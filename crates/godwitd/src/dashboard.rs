//! The operator's dashboard: a web page over HTTPS for browsers (`--dashboard
//! ADDR:PORT`, off by default). A browser cannot do godwit-net's token binding, so
//! this listener is plain TLS and authenticates its users itself:
//!
//! - `POST /login` takes one of the agent's tokens (the token file's; `read` scope at
//!   least) and answers with a session cookie (`__Host-godwit`: random, HttpOnly,
//!   Secure, SameSite=Strict), the session kept here with an idle and an absolute
//!   expiry; without a valid session every page redirects to `/login` and every API
//!   call answers 401;
//! - `/api/...` is the node's API ([`crate::api::router`], the very same handlers)
//!   with the session's scopes in place of the channel's; any call other than GET or
//!   HEAD must carry the session's CSRF token in the `X-Godwit-CSRF` header (403);
//! - `/dash/session` (who is logged in, the CSRF token), `/dash/history` (the events
//!   the dashboard saw: actions, their failures, programs that died, nodes declared
//!   dead or back). The load history is the agent's own (`GET /v1/load/history`).
//!
//! The page itself (HTML, CSS, JS: no build step, nothing fetched from elsewhere) is
//! embedded from `crates/godwitd/dashboard/`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use godwit_net::{Scope, Scopes};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::{lock, Agent};

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const LOGIN_HTML: &str = include_str!("../dashboard/login.html");
const APP_JS: &str = include_str!("../dashboard/app.js");
const STYLE_CSS: &str = include_str!("../dashboard/style.css");

/// The session cookie. The `__Host-` prefix makes browsers refuse it unless it is
/// Secure, has `Path=/` and no `Domain`.
const COOKIE: &str = "__Host-godwit";
/// The header that must carry the session's CSRF token on every action.
pub const CSRF_HEADER: &str = "x-godwit-csrf";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, used or not.
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions at once (expired ones are dropped first).
const MAX_SESSIONS: usize = 256;
/// How often the dashboard looks for started programs that died.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Events (actions, failures) kept for the plot.
const EVENTS_KEPT: usize = 500;

struct Session {
    scopes: Scopes,
    csrf: String,
    created: Instant,
    last: Instant,
}

/// The dashboard's state: sessions, this node's load history, the events it saw.
pub struct Dashboard {
    agent: Arc<Agent>,
    sessions: Mutex<HashMap<String, Session>>,
    events: Mutex<VecDeque<Value>>,
}

use crate::now_ms;

fn random_secret() -> Result<String, godwit_net::NetError> {
    Ok(godwit_net::Token::random(Scopes::of(&[]))?
        .secret()
        .to_string())
}

impl Dashboard {
    pub fn new(agent: Arc<Agent>) -> Arc<Self> {
        Arc::new(Dashboard {
            agent,
            sessions: Mutex::new(HashMap::new()),
            events: Mutex::new(VecDeque::new()),
        })
    }

    fn event(&self, kind: &str, detail: String) {
        let mut ev = lock(&self.events);
        if ev.len() >= EVENTS_KEPT {
            ev.pop_front();
        }
        ev.push_back(json!({
            "t_unix_ms": now_ms(), "node": self.agent.node, "kind": kind, "detail": detail,
        }));
    }

    /// The session of this request's cookie, if valid; refreshes its idle time.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Scopes, String)> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        let s = sessions.get_mut(id)?;
        if now.duration_since(s.last) > IDLE || now.duration_since(s.created) > ABSOLUTE {
            sessions.remove(id);
            return None;
        }
        s.last = now;
        Some((id.to_string(), s.scopes, s.csrf.clone()))
    }

    fn new_session(&self, scopes: Scopes) -> Result<(String, String), String> {
        let id = random_secret().map_err(|e| e.to_string())?;
        let csrf = random_secret().map_err(|e| e.to_string())?;
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| {
            now.duration_since(s.last) <= IDLE && now.duration_since(s.created) <= ABSOLUTE
        });
        if sessions.len() >= MAX_SESSIONS {
            return Err(format!(
                "too many sessions ({MAX_SESSIONS}); log out elsewhere or wait for them to expire"
            ));
        }
        sessions.insert(
            id.clone(),
            Session {
                scopes,
                csrf: csrf.clone(),
                created: now,
                last: now,
            },
        );
        Ok((id, csrf))
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name && !v.is_empty()).then_some(v)
        })
}

/// Constant-time comparison of two strings.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Decodes an `application/x-www-form-urlencoded` body into its fields.
fn form_fields(body: &[u8]) -> HashMap<String, String> {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

/// Headers every answer of the dashboard carries: nothing cached, no framing, no
/// script or style from anywhere else.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    resp
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// In front of the API: a valid session (401), the CSRF header on actions (403); the
/// session's scopes become the request's [`crate::api::Conn`]. Actions and their
/// failures are recorded for the plot.
async fn guard(State(d): State<Arc<Dashboard>>, mut req: Request, next: Next) -> Response {
    let Some((_, scopes, csrf)) = d.session(req.headers()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "not logged in (or the session expired): log in at /login",
        );
    };
    let action = !matches!(*req.method(), Method::GET | Method::HEAD);
    if action {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(given, &csrf) {
            tracing::warn!(path = %req.uri().path(), "dashboard: an action without the session's CSRF token refused");
            return error(
                StatusCode::FORBIDDEN,
                format!("missing or wrong CSRF token: every action must carry the session's token in the {CSRF_HEADER} header"),
            );
        }
    }
    req.extensions_mut().insert(crate::api::Conn(scopes));
    let what = format!("{} {}", req.method(), req.uri().path());
    let resp = next.run(req).await;
    if action {
        let kind = action_kind(&what);
        if resp.status().is_success() {
            d.event(kind, what);
        } else {
            d.event("failure", format!("{what}: {}", resp.status()));
        }
    }
    resp
}

/// What an action is, for the plot's markers.
fn action_kind(what: &str) -> &'static str {
    if what.ends_with("/migrate") {
        "migration"
    } else if what.ends_with("/checkpoint") {
        "checkpoint"
    } else if what.ends_with("/restore") {
        "restore"
    } else if what.ends_with("/signal") {
        "stop"
    } else if what.ends_with("/start") {
        "start"
    } else {
        "action"
    }
}

/// The dashboard's routes (the API nested under `/api`).
pub fn router(d: Arc<Dashboard>) -> Router {
    let api = crate::api::router(d.agent.clone())
        .layer(axum::middleware::from_fn_with_state(d.clone(), guard));
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/dash/session", get(session_info))
        .route("/dash/history", get(history))
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/static/style.css",
            get(|| async { asset("text/css", STYLE_CSS) }),
        )
        .with_state(d)
        .nest_service("/api", api)
        .layer(axum::middleware::from_fn(security_headers))
}

fn asset(mime: &'static str, text: &'static str) -> Response {
    ([(header::CONTENT_TYPE, mime)], text).into_response()
}

fn html(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        text,
    )
        .into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn login_with(message: &str) -> String {
    LOGIN_HTML.replace("{{MESSAGE}}", &escape(message))
}

async fn index(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_none() {
        return redirect("/login");
    }
    html(StatusCode::OK, INDEX_HTML.to_string())
}

async fn login_page() -> Response {
    html(StatusCode::OK, login_with(""))
}

async fn login(State(d): State<Arc<Dashboard>>, body: Bytes) -> Response {
    let fields = form_fields(&body);
    let token = fields.get("token").map(|t| t.trim()).unwrap_or("");
    let scopes = d.agent.tokens.scopes_of(token);
    let scopes = match scopes {
        Some(s) if s.allows(Scope::Read) => s,
        found => {
            // Slows down guessing; tokens are long random strings anyway.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let why = if found.is_some() {
                "this token may not view the node: the dashboard needs the read (or operate) scope"
            } else {
                "wrong token: give one of the tokens in the agent's token file"
            };
            tracing::warn!("dashboard: login refused ({why})");
            return html(StatusCode::UNAUTHORIZED, login_with(why));
        }
    };
    let (id, _) = match d.new_session(scopes) {
        Ok(x) => x,
        Err(e) => return html(StatusCode::SERVICE_UNAVAILABLE, login_with(&e)),
    };
    tracing::info!(%scopes, "dashboard: logged in");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        ABSOLUTE.as_secs()
    );
    let mut resp = redirect("/");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn logout(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    let Some((id, _, csrf)) = d.session(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    };
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same(given, &csrf) {
        return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    lock(&d.sessions).remove(&id);
    let mut resp = Json(json!({ "logged_out": true })).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-godwit=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

async fn session_info(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    match d.session(&headers) {
        Some((_, scopes, csrf)) => Json(json!({
            "node": d.agent.node,
            "scopes": scopes.to_string(),
            "operate": scopes.allows(Scope::Operate),
            "exec": scopes.allows(Scope::Exec),
            "csrf": csrf,
            "idle_timeout_s": IDLE.as_secs(),
        }))
        .into_response(),
        None => error(StatusCode::UNAUTHORIZED, "not logged in"),
    }
}

async fn history(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "not logged in");
    }
    let events: Vec<Value> = lock(&d.events).iter().cloned().collect();
    Json(json!({ "node": d.agent.node, "events": events })).into_response()
}

/// Notices started programs that die (marked as failures on the plot).
async fn watch_programs(d: Arc<Dashboard>) {
    let mut running: HashMap<u32, String> = HashMap::new();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let mut died = Vec::new();
        {
            let procs = lock(&d.agent.procs);
            for (pid, p) in procs.iter() {
                if p.running {
                    running.insert(*pid, p.program.clone());
                } else if let Some(program) = running.remove(pid) {
                    if p.exit != Some(0) {
                        died.push(format!(
                            "{program} (pid {pid}) died: {}",
                            p.exit.map_or("killed by a signal".to_string(), |c| format!(
                                "exit code {c}"
                            ))
                        ));
                    }
                }
            }
            running.retain(|pid, _| procs.contains_key(pid));
        }
        for why in died {
            d.event("failure", why);
        }
    }
}

/// Marks the nodes the cluster declares dead (failures) or hears again.
async fn watch_nodes(d: Arc<Dashboard>) {
    use crate::cluster::NodeEvent;
    let mut rx = d.agent.cluster.subscribe();
    loop {
        match rx.recv().await {
            Ok(NodeEvent::Dead { name, addr, silent }) => d.event(
                "failure",
                format!("node {name} ({addr}) dead: silent for {silent:?}"),
            ),
            Ok(NodeEvent::Back { name, addr }) => {
                d.event("back", format!("node {name} ({addr}) heard again"))
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        }
    }
}

/// Serves the dashboard on `listener` with `tls` until the process ends.
pub fn spawn(d: Arc<Dashboard>, listener: TcpListener, tls: tokio_rustls::TlsAcceptor) {
    tokio::spawn(watch_programs(d.clone()));
    tokio::spawn(watch_nodes(d.clone()));
    let router = router(d);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tls = tls.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "dashboard: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "dashboard: TLS handshake timed out");
                            return;
                        }
                    };
                let svc = TowerToHyperService::new(router);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "dashboard: connection ended with an error");
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = form_fields(b"token=ab%2Bc+d&x=%zz&y=%4");
        assert_eq!(f["token"], "ab+c d");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "%4");
    }

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-godwit=xyz; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}

//! godwitd — the Godwit node agent. One per node; one authenticated HTTP API
//! (docs/API.md) with three roles today:
//! - remote execution: start a program on this node and report when it is ready;
//! - name service: the embedded registry (UUID -> address, leases);
//! - checkpoint store: checkpoints kept under `DATA/store` (dirs 0700, files 0600).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use godwit_names::http::{self, Request, Response};
use godwit_names::Registry;
use godwit_sdk::store::{check_name, list_dir, write_private};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body (checkpoint uploads).
const BODY_LIMIT: u64 = 8 << 30;

#[derive(Parser, Debug)]
#[command(name = "godwitd", version, about = "Godwit node agent")]
struct Args {
    /// Address to serve the API on (ADDR:PORT; port 0 picks one).
    #[arg(long)]
    listen: String,
    /// Data directory (checkpoint store, logs of started programs).
    #[arg(long)]
    data: PathBuf,
    /// File holding the bearer token every request must present.
    #[arg(long)]
    token_file: PathBuf,
}

struct Proc {
    program: String,
    args: Vec<String>,
    log: PathBuf,
    exit: Option<i32>,
    running: bool,
}

struct Agent {
    token: String,
    data: PathBuf,
    names: Registry,
    procs: Mutex<BTreeMap<u32, Proc>>,
    node: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Single map operations only: consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "godwitd=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading token file {}", args.token_file.display()))?
        .trim()
        .to_string();
    if token.len() < 8 {
        bail!(
            "token in {} is shorter than 8 characters",
            args.token_file.display()
        );
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        for sub in ["", "store", "logs"] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(args.data.join(sub))
                .with_context(|| format!("creating {}", args.data.join(sub).display()))?;
        }
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let node = listener.local_addr()?.to_string();
    let agent = Arc::new(Agent {
        token,
        data: args.data.clone(),
        names: Registry::default(),
        procs: Mutex::new(BTreeMap::new()),
        node: node.clone(),
    });
    println!("GODWITD_READY {node}");
    tracing::info!(%node, data = %args.data.display(), "godwitd serving");

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(agent, stream).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::info!("stopping: terminating started programs");
    let pids: Vec<u32> = lock(&agent.procs)
        .iter()
        .filter(|(_, p)| p.running)
        .map(|(pid, _)| *pid)
        .collect();
    for pid in &pids {
        send_signal(*pid, "TERM");
    }
    for _ in 0..50 {
        if lock(&agent.procs).values().all(|p| !p.running) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (pid, p) in lock(&agent.procs).iter() {
        if p.running {
            send_signal(*pid, "KILL");
        }
    }
    Ok(())
}

/// Sends `sig` (TERM, INT or KILL) to one process. Never to a group or to "all":
/// pids that are not positive are refused.
fn send_signal(pid: u32, sig: &str) -> bool {
    let signo = match sig {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
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

async fn serve(agent: Arc<Agent>, stream: TcpStream) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    let resp = match http::read_request(&mut stream, BODY_LIMIT).await {
        Ok(Some(req)) => {
            if !authorized(&agent, &req) {
                Response::error(401, "unauthorized: send `Authorization: Bearer <token>`")
            } else {
                route(&agent, req).await
            }
        }
        Ok(None) => return Ok(()),
        Err(http::HttpError::TooLarge { size, limit }) => {
            Response::error(413, format!("body of {size} bytes over {limit}"))
        }
        Err(e) => Response::error(400, e.to_string()),
    };
    http::write_response(stream.get_mut(), &resp).await?;
    stream.get_mut().shutdown().await.ok();
    Ok(())
}

fn authorized(agent: &Agent, req: &Request) -> bool {
    let Some(h) = req.header("authorization") else {
        return false;
    };
    let Some(t) = h.strip_prefix("Bearer ") else {
        return false;
    };
    constant_time_eq(t.trim().as_bytes(), agent.token.as_bytes())
}

fn json_body(req: &Request) -> Result<Value, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, format!("body is not JSON: {e}")))
}

async fn route(agent: &Arc<Agent>, req: Request) -> Response {
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let r = match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["v1", "health"]) => Ok(Response::json(
            200,
            &json!({ "ok": true, "node": agent.node, "version": env!("CARGO_PKG_VERSION"), "roles": ["exec", "names", "store"] }),
        )),
        ("POST", ["v1", "exec"]) => exec(agent, &req).await,
        ("GET", ["v1", "exec"]) => Ok(list_procs(agent)),
        ("POST", ["v1", "exec", pid, "signal"]) => signal_proc(agent, pid, &req),
        ("GET", ["v1", "names"]) => Ok(Response::json(
            200,
            &json!({ "services": agent.names.list().iter().map(|r| json!({
                "uuid": r.uuid, "address": r.address, "expires_in_ms": r.expires_in.as_millis() as u64
            })).collect::<Vec<_>>() }),
        )),
        ("PUT", ["v1", "names", uuid]) => names_put(agent, uuid, &req),
        ("GET", ["v1", "names", uuid]) => Ok(match agent.names.resolve(uuid) {
            Some(a) => Response::json(200, &json!({ "uuid": uuid, "address": a })),
            None => Response::error(404, format!("no live binding for {uuid}")),
        }),
        ("DELETE", ["v1", "names", uuid]) => {
            let removed = agent
                .names
                .withdraw(uuid, req.query_param("address").as_deref());
            Ok(Response::json(200, &json!({ "removed": removed })))
        }
        ("GET", ["v1", "store"]) => store_services(agent),
        ("GET", ["v1", "store", uuid]) => store_list(agent, uuid),
        ("PUT", ["v1", "store", uuid, id]) => store_put(agent, uuid, id, req.body).await,
        ("GET", ["v1", "store", uuid, id]) => store_get(agent, uuid, id).await,
        (_, ["v1", ..]) => Err(Response::error(
            404,
            format!("no route {} {}", req.method, req.path),
        )),
        _ => Err(Response::error(
            404,
            format!("no route {} {}", req.method, req.path),
        )),
    };
    r.unwrap_or_else(|e| e)
}

fn names_put(agent: &Agent, uuid: &str, req: &Request) -> Result<Response, Response> {
    let v = json_body(req)?;
    let address = v["address"]
        .as_str()
        .ok_or_else(|| Response::error(400, "`address` (string) is required"))?;
    let ttl_ms = v["ttl_ms"].as_u64().unwrap_or(10_000).clamp(100, 3_600_000);
    agent
        .names
        .advertise(uuid, address, Duration::from_millis(ttl_ms));
    Ok(Response::json(
        200,
        &json!({ "uuid": uuid, "address": address, "ttl_ms": ttl_ms }),
    ))
}

fn bad_name(e: godwit_sdk::store::StoreError) -> Response {
    Response::error(400, e.to_string())
}

fn store_services(agent: &Agent) -> Result<Response, Response> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(agent.data.join("store")) {
        for e in rd.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(Response::json(200, &json!({ "services": out })))
}

fn store_list(agent: &Agent, uuid: &str) -> Result<Response, Response> {
    check_name("service uuid", uuid).map_err(bad_name)?;
    let list = list_dir(&agent.data.join("store").join(uuid))
        .map_err(|e| Response::error(500, e.to_string()))?;
    Ok(Response::json(
        200,
        &json!({ "uuid": uuid, "checkpoints": list.iter().map(|c| json!({"id": c.id, "bytes": c.bytes})).collect::<Vec<_>>() }),
    ))
}

async fn store_put(
    agent: &Agent,
    uuid: &str,
    id: &str,
    body: Vec<u8>,
) -> Result<Response, Response> {
    check_name("service uuid", uuid).map_err(bad_name)?;
    check_name("checkpoint id", id).map_err(bad_name)?;
    let path = agent
        .data
        .join("store")
        .join(uuid)
        .join(format!("{id}.gwck"));
    let bytes = body.len();
    tokio::task::spawn_blocking(move || write_private(&path, &body))
        .await
        .map_err(|e| Response::error(500, e.to_string()))?
        .map_err(|e| Response::error(500, e.to_string()))?;
    Ok(Response::json(
        201,
        &json!({ "uuid": uuid, "id": id, "bytes": bytes }),
    ))
}

async fn store_get(agent: &Agent, uuid: &str, id: &str) -> Result<Response, Response> {
    check_name("service uuid", uuid).map_err(bad_name)?;
    check_name("checkpoint id", id).map_err(bad_name)?;
    let path = agent
        .data
        .join("store")
        .join(uuid)
        .join(format!("{id}.gwck"));
    match tokio::fs::read(&path).await {
        Ok(b) => Ok(Response::bytes(200, b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Response::error(404, format!("no checkpoint {uuid}/{id}")))
        }
        Err(e) => Err(Response::error(500, e.to_string())),
    }
}

fn list_procs(agent: &Agent) -> Response {
    let procs = lock(&agent.procs);
    Response::json(
        200,
        &json!({ "processes": procs.iter().map(|(pid, p)| json!({
            "pid": pid, "program": p.program, "args": p.args, "running": p.running, "exit_code": p.exit,
            "log": p.log.display().to_string(),
        })).collect::<Vec<_>>() }),
    )
}

fn signal_proc(agent: &Agent, pid: &str, req: &Request) -> Result<Response, Response> {
    let pid: u32 = pid
        .parse()
        .map_err(|_| Response::error(400, format!("bad pid `{pid}`")))?;
    let v = json_body(req)?;
    let sig = v["signal"].as_str().unwrap_or("TERM");
    if !["TERM", "KILL", "INT"].contains(&sig) {
        return Err(Response::error(
            400,
            format!("signal `{sig}` not allowed (TERM, INT, KILL)"),
        ));
    }
    // Only programs this agent started may be signalled.
    if !lock(&agent.procs).get(&pid).is_some_and(|p| p.running) {
        return Err(Response::error(
            404,
            format!("no running program {pid} started by this agent"),
        ));
    }
    let sent = send_signal(pid, sig);
    Ok(Response::json(
        200,
        &json!({ "pid": pid, "signal": sig, "sent": sent }),
    ))
}

async fn exec(agent: &Arc<Agent>, req: &Request) -> Result<Response, Response> {
    let v = json_body(req)?;
    let program = v["program"]
        .as_str()
        .ok_or_else(|| Response::error(400, "`program` (string) is required"))?;
    let args: Vec<String> = match &v["args"] {
        Value::Null => vec![],
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| Response::error(400, "`args` must be strings"))?,
        _ => return Err(Response::error(400, "`args` must be an array")),
    };
    let wait_ready = Duration::from_millis(v["wait_ready_ms"].as_u64().unwrap_or(0));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    if let Some(env) = v["env"].as_object() {
        for (k, val) in env {
            if let Some(s) = val.as_str() {
                cmd.env(k, s);
            }
        }
    }
    if let Some(dir) = v["cwd"].as_str() {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Response::error(400, format!("cannot start {program}: {e}")))?;
    let pid = child.id().unwrap_or(0);
    let log = agent.data.join("logs").join(format!("{pid}.log"));
    let logf =
        open_log(&log).map_err(|e| Response::error(500, format!("log {}: {e}", log.display())))?;
    lock(&agent.procs).insert(
        pid,
        Proc {
            program: program.to_string(),
            args: args.clone(),
            log: log.clone(),
            exit: None,
            running: true,
        },
    );
    tracing::info!(pid, program, ?args, "started");

    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    if let Some(err) = stderr {
        let logf = logf.try_clone().ok();
        tokio::spawn(copy_lines(BufReader::new(err), logf, None));
    }
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    if let Some(out) = stdout {
        tokio::spawn(copy_lines(BufReader::new(out), Some(logf), Some(ready_tx)));
    }
    {
        let agent = agent.clone();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            if let Some(p) = lock(&agent.procs).get_mut(&pid) {
                p.running = false;
                p.exit = code;
            }
            tracing::info!(pid, ?code, "exited");
        });
    }
    let ready = if wait_ready.is_zero() {
        Value::Null
    } else {
        match tokio::time::timeout(wait_ready, ready_rx).await {
            Ok(Ok(line)) => {
                let mut it = line.split_whitespace().skip(1);
                json!({ "address": it.next(), "uuid": it.next() })
            }
            _ => {
                send_signal(pid, "KILL");
                return Err(Response::error(
                    504,
                    format!("{program} (pid {pid}) did not print GODWIT_READY within {wait_ready:?}; see {}", log.display()),
                ));
            }
        }
    };
    Ok(Response::json(
        201,
        &json!({ "pid": pid, "ready": ready, "log": log.display().to_string() }),
    ))
}

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

async fn copy_lines<R: tokio::io::AsyncRead + Unpin>(
    r: BufReader<R>,
    log: Option<std::fs::File>,
    mut ready: Option<tokio::sync::oneshot::Sender<String>>,
) {
    use std::io::Write as _;
    let mut lines = r.lines();
    let mut log = log;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("GODWIT_READY ") {
            if let Some(tx) = ready.take() {
                let _ = tx.send(line.clone());
            }
        }
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}

//! Client of the godwitd API (docs/API.md) and the `godwit service ...` subcommands:
//! `ls`, `status`, `start`, `stop`, `restore`, `freeze`, `thaw`, `checkpoint`,
//! `checkpoints`, `migrate`, `interval`.
//!
//! Every call goes over the authenticated channel of godwit-net (TLS + token binding)
//! with hyper's client. Services are found through the name service of the agent given
//! with `--agent` (`agent://AGENT`), or through `GODWIT_NAMES` (e.g.
//! `etcd+http://10.0.0.1:2379`) when set.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Subcommand;
use godwit_names::Names;
use godwit_net::http::HttpRequest;
use godwit_net::{ClientTls, NetError, Token};
use godwit_sdk::mgmt;
use serde_json::{json, Value};

/// `godwit service ...` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum ServiceCmd {
    /// List registered conformist services with their status.
    Ls,
    /// Show the full status of one service.
    Status {
        /// Service UUID.
        uuid: String,
    },
    /// Start a conformist service on the agent's node (remote execution: the program
    /// must be allowed there); its names and checkpoints go to that agent. Prints the
    /// UUID once the service serves.
    Start {
        /// UUID to give the service (default: a new one).
        #[arg(long)]
        uuid: Option<String>,
        /// Seconds between periodic checkpoints (0.1 to 2592000; default: none).
        #[arg(long)]
        interval: Option<f64>,
        /// `on-failure`: when it dies without being stopped, the agent starts it again
        /// from the tip of its branch, with backoff (`never` by default).
        #[arg(long, value_parser = ["never", "on-failure"], default_value = "never")]
        restart: String,
        /// Copy each of its checkpoints to K peers of the node (0 to 16): when the
        /// node dies, the first live peer holding a copy starts it again from the
        /// newest copy, under its UUID (failover). Default 0: no copies.
        #[arg(long, value_name = "K", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
        replicas: u64,
        /// `-- PROGRAM [ARGS]`: the program (absolute path) and its own arguments; the
        /// service options (--uuid, --listen, --names, --store, ...) are added after them.
        #[arg(required = true, last = true, value_name = "PROGRAM [ARGS]")]
        command: Vec<String>,
    },
    /// Stop a service: a final checkpoint, its name withdrawn, the process exits.
    Stop {
        /// Service UUID.
        uuid: String,
    },
    /// Start a stopped service again from a checkpoint (the newest by default; an
    /// older one starts a branch), on the agent's node, with the program and
    /// arguments the agent last started it with.
    Restore {
        /// Service UUID.
        uuid: String,
        /// Checkpoint id (default: latest, the tip of the branch it ran on).
        #[arg(long)]
        checkpoint: Option<String>,
    },
    /// Freeze a service: a checkpoint, then no call runs (clients wait and retry)
    /// until `thaw`.
    Freeze {
        /// Service UUID.
        uuid: String,
    },
    /// Let a frozen service serve again.
    Thaw {
        /// Service UUID.
        uuid: String,
    },
    /// Take a checkpoint of a service now.
    Checkpoint {
        /// Service UUID.
        uuid: String,
    },
    /// Move a running service to another node; clients keep working.
    Migrate {
        /// Service UUID.
        uuid: String,
        /// Destination node: its godwitd address, HOST:PORT.
        #[arg(long)]
        to: String,
    },
    /// The checkpoints of a service as a tree: each one under its parent; a restore
    /// of an older checkpoint starts a branch. Marks the newest (`latest`) and the
    /// one the running instance descends from.
    Checkpoints {
        /// Service UUID.
        uuid: String,
    },
    /// Set the periodic checkpoint interval (0 turns periodic checkpoints off).
    Interval {
        /// Service UUID.
        uuid: String,
        /// Seconds between checkpoints.
        secs: f64,
    },
}

/// Errors of agent and service operations.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Channel or HTTP failure (including a refused token binding).
    #[error("agent {agent}: {source}")]
    Transport {
        /// Agent.
        agent: String,
        /// Cause.
        source: NetError,
    },
    /// The agent refused.
    #[error("agent {agent}: {op}: HTTP {status}: {message}")]
    Refused {
        /// Agent.
        agent: String,
        /// Operation.
        op: &'static str,
        /// Status.
        status: u16,
        /// Message.
        message: String,
    },
    /// Name service failure.
    #[error(transparent)]
    Names(#[from] godwit_names::NamesError),
    /// The service is not registered.
    #[error("service {0} is not registered in the name service")]
    NotFound(String),
    /// Management request failed.
    #[error(transparent)]
    Mgmt(#[from] mgmt::MgmtError),
    /// The management credential of a service could not be had.
    #[error("service {uuid}: no management credential: {message}")]
    Credential {
        /// Service.
        uuid: String,
        /// Why.
        message: String,
    },
    /// A migration step failed (rolled back where possible).
    #[error("migrate {uuid}: {stage}: {message}")]
    Migrate {
        /// Service.
        uuid: String,
        /// Stage that failed.
        stage: &'static str,
        /// What happened (including the rollback outcome).
        message: String,
    },
}

/// A godwitd API client.
#[derive(Debug, Clone)]
pub struct Agent {
    addr: String,
    client: ClientTls,
}

impl Agent {
    /// An agent at `HOST:PORT` reached with `token` (no CA: the token binding
    /// authenticates the agent).
    pub fn new(agent: &str, token: String) -> Result<Self, AgentError> {
        Self::with_ca(agent, token, None)
    }

    /// An agent at `HOST:PORT`; with `ca`, its certificate is verified too (PKI mode).
    pub fn with_ca(agent: &str, token: String, ca: Option<&Path>) -> Result<Self, AgentError> {
        let addr = agent
            .strip_prefix("agent://")
            .or_else(|| agent.strip_prefix("https://"))
            .unwrap_or(agent)
            .trim_end_matches('/')
            .to_string();
        let transport = |source| AgentError::Transport {
            agent: addr.clone(),
            source,
        };
        let client =
            ClientTls::new(Token::new(token).map_err(transport)?, ca).map_err(transport)?;
        Ok(Agent { addr, client })
    }

    /// An agent at `HOST:PORT` with a ready channel client.
    pub fn with_client(agent: &str, client: ClientTls) -> Self {
        Agent {
            addr: agent.to_string(),
            client,
        }
    }

    /// `HOST:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The channel client (token, CA).
    pub fn client(&self) -> &ClientTls {
        &self.client
    }

    /// The agent's embedded name service.
    pub fn names(&self) -> Names {
        Names::with_agent(&self.addr, self.client.clone())
    }

    /// One API call: `method path` with an optional JSON body; the JSON answer, or
    /// [`AgentError::Refused`] for a status of 300 or more.
    pub async fn request(
        &self,
        op: &'static str,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, AgentError> {
        let mut req = HttpRequest::new(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.timeout = timeout;
        let resp = self.send(op, &req).await?;
        resp.json().map_err(|source| AgentError::Transport {
            agent: self.addr.clone(),
            source,
        })
    }

    /// One API call whose bodies are bytes (`application/octet-stream`) both
    /// ways, answers up to `limit` bytes: e.g. a checkpoint's export.
    pub async fn request_bytes(
        &self,
        op: &'static str,
        method: &str,
        path: &str,
        body: Option<Bytes>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Bytes, AgentError> {
        let mut req = HttpRequest::new(method, path);
        if let Some(b) = body {
            req.body = b;
            req.content_type = "application/octet-stream";
        }
        req.timeout = timeout;
        req.body_limit = limit;
        Ok(self.send(op, &req).await?.body)
    }

    /// Sends `req`; a status of 300 or more is [`AgentError::Refused`].
    async fn send(
        &self,
        op: &'static str,
        req: &HttpRequest<'_>,
    ) -> Result<godwit_net::http::HttpResponse, AgentError> {
        let resp = self
            .client
            .request(&self.addr, req)
            .await
            .map_err(|source| AgentError::Transport {
                agent: self.addr.clone(),
                source,
            })?;
        if resp.status >= 300 {
            return Err(AgentError::Refused {
                agent: self.addr.clone(),
                op,
                status: resp.status,
                message: resp.error_message(),
            });
        }
        Ok(resp)
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Value, AgentError> {
        self.request("health", "GET", "/v1/health", None, Duration::from_secs(5))
            .await
    }

    /// `POST /v1/exec`: starts `program` and waits up to `wait_ready` for its
    /// `GODWIT_READY` line. Returns the agent's answer (`pid`, `ready.address`, ...).
    pub async fn exec(
        &self,
        program: &str,
        args: &[String],
        env: Value,
        wait_ready: Duration,
    ) -> Result<Value, AgentError> {
        let body = json!({ "program": program, "args": args, "env": env, "wait_ready_ms": wait_ready.as_millis() as u64 });
        self.request(
            "exec",
            "POST",
            "/v1/exec",
            Some(body),
            wait_ready + Duration::from_secs(5),
        )
        .await
    }

    /// `POST /v1/exec/{pid}/signal`.
    pub async fn signal(&self, pid: u64, signal: &str) -> Result<Value, AgentError> {
        self.request(
            "signal",
            "POST",
            &format!("/v1/exec/{pid}/signal"),
            Some(json!({ "signal": signal })),
            Duration::from_secs(5),
        )
        .await
    }
}

/// The token a client proves: the first token of a token file (a single `TOKEN` line,
/// or `SCOPES TOKEN` lines). The file must be private (no access for group or others).
pub fn load_token(path: &Path) -> Result<String, AgentError> {
    Token::load(path)
        .map(|t| t.secret().to_string())
        .map_err(|source| AgentError::Transport {
            agent: "-".into(),
            source,
        })
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Service.
    pub uuid: String,
    /// Old address.
    pub from: String,
    /// New address.
    pub to: String,
    /// Checkpoint carried over.
    pub checkpoint: String,
    /// Checkpoint size.
    pub bytes: u64,
    /// Resumable operations carried over at a migration point.
    pub ops_in_flight: u64,
    /// From the freeze request until the new instance was serving.
    pub switch_over: Duration,
    /// The whole migration, including starting the new process.
    pub total: Duration,
    /// The checkpoint went straight to the new instance (which then wrote it to the
    /// store), not through the store.
    pub streamed: bool,
}

impl Migration {
    /// JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "uuid": self.uuid, "from": self.from, "to": self.to, "checkpoint": self.checkpoint, "bytes": self.bytes, "ops_in_flight": self.ops_in_flight,
            "switch_over_ms": self.switch_over.as_secs_f64() * 1e3, "total_ms": self.total.as_secs_f64() * 1e3,
            "path": if self.streamed { "stream" } else { "store" },
        })
    }
}

const MGMT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a streamed hand-off may take, from opening the port to the new instance serving.
const HANDOFF_WAIT: Duration = Duration::from_secs(300);

/// Resolves a service's address, waiting briefly if it is between two nodes.
/// Sends management request `req` to service `uuid`, found through
/// `names`, with its credential from the agent that started it.
pub async fn manage_named(
    names: &Names,
    client: &ClientTls,
    uuid: &str,
    req: Value,
) -> Result<Value, AgentError> {
    let addr = resolve(names, uuid).await?;
    manage(client, &addr, uuid, req, MGMT_TIMEOUT).await
}

pub async fn resolve(names: &Names, uuid: &str) -> Result<String, AgentError> {
    for _ in 0..50 {
        if let Some(a) = names.resolve(uuid).await? {
            return Ok(a);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(AgentError::NotFound(uuid.to_string()))
}

/// The management credential of service `uuid` at `addr`. A service started by a
/// godwitd accepts only the credential that agent made for it (`GODWIT_MANAGE_TOKEN`,
/// never the operator's token): the service names its agent (`{"op": "agent"}`, asked
/// without a credential) and that agent hands the credential to an `operate` token
/// (`POST /v1/services/{uuid}/credential`), reached with `client` (the caller's token
/// and CA). A service started by hand names no agent: its own token is the caller's.
pub async fn management_credential(
    client: &ClientTls,
    addr: &str,
    uuid: &str,
) -> Result<String, AgentError> {
    let fallback = || client.token().secret().to_string();
    let who = match mgmt::request(addr, json!({ "op": "agent" }), None, MGMT_TIMEOUT).await {
        Ok(v) => v,
        // A service from before this interface: it accepts its own token, if any.
        Err(mgmt::MgmtError::Failed { .. }) => return Ok(fallback()),
        Err(e) => return Err(e.into()),
    };
    let Some(node) = who["agent"].as_str() else {
        return Ok(fallback());
    };
    if who["uuid"].as_str().is_some_and(|u| u != uuid) {
        return Err(AgentError::Credential {
            uuid: uuid.to_string(),
            message: format!("{addr} serves {} instead", who["uuid"]),
        });
    }
    let agent = Agent::with_client(node, client.clone());
    let v = agent
        .request(
            "credential",
            "POST",
            &format!("/v1/services/{uuid}/credential"),
            Some(json!({ "address": addr })),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| AgentError::Credential {
            uuid: uuid.to_string(),
            message: format!("its agent {node} did not give it: {e}"),
        })?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| AgentError::Credential {
            uuid: uuid.to_string(),
            message: format!("agent {node} answered without a token"),
        })
}

/// Sends one management request to service `uuid` at `addr` with its credential
/// ([`management_credential`]).
pub async fn manage(
    client: &ClientTls,
    addr: &str,
    uuid: &str,
    req: Value,
    timeout: Duration,
) -> Result<Value, AgentError> {
    let cred = management_credential(client, addr, uuid).await?;
    Ok(mgmt::request(addr, req, Some(&cred), timeout).await?)
}

/// The environment for a service that a godwitd `local` starts and that uses the name
/// services or stores `urls`: the agents among them other than `local` each grant it
/// one `service`-scoped secret (`POST /v1/grants`), given as `GODWIT_TOKEN` (the
/// service's token for other agents). The caller's own token never goes there.
pub async fn service_env(
    client: &ClientTls,
    local: &str,
    urls: &[&str],
) -> Result<Value, AgentError> {
    let mut others: Vec<&str> = urls
        .iter()
        .filter_map(|u| godwit_names::agent_addr(u))
        .filter(|a| *a != local)
        .collect();
    others.sort_unstable();
    others.dedup();
    if others.is_empty() {
        return Ok(json!({}));
    }
    let secret = Token::random(godwit_net::Scopes::of(&[]))
        .map_err(|source| AgentError::Transport {
            agent: local.to_string(),
            source,
        })?
        .secret()
        .to_string();
    for a in others {
        Agent::with_client(a, client.clone())
            .request(
                "grant",
                "POST",
                "/v1/grants",
                Some(json!({ "secret": secret })),
                Duration::from_secs(10),
            )
            .await?;
    }
    Ok(json!({ "GODWIT_TOKEN": secret }))
}

/// The values of `--names` and `--store` in service arguments.
fn option_urls(args: &[String]) -> Vec<&str> {
    args.windows(2)
        .filter(|w| w[0] == "--names" || w[0] == "--store")
        .map(|w| w[1].as_str())
        .collect()
}

/// Migrates service `uuid` to the node whose godwitd is `dest`: start the service binary
/// there in standby (remote execution), open its hand-off port with a per-migration
/// secret, freeze the source at a safe point streaming its checkpoint straight to the
/// new instance (which restores it, re-advertises, then writes it to the store), stop
/// the source. A service built before the hand-off goes through the store instead
/// (freeze ships the checkpoint there, restore on the destination fetches it). A
/// failure before the destination serves kills the new process and thaws the source:
/// the service stays where it was.
pub async fn migrate(names: &Names, dest: &Agent, uuid: &str) -> Result<Migration, AgentError> {
    let t0 = Instant::now();
    let fail = |stage: &'static str, message: String| AgentError::Migrate {
        uuid: uuid.to_string(),
        stage,
        message,
    };
    let src = resolve(names, uuid).await?;
    let token = management_credential(dest.client(), &src, uuid).await?;
    let token = token.as_str();
    let st = mgmt::request(&src, json!({ "op": "status" }), Some(token), MGMT_TIMEOUT).await?;
    let program = st["program"]
        .as_str()
        .ok_or_else(|| fail("status", "the service does not report its program".into()))?;
    let names_url = st["names"].as_str().unwrap_or("memory");
    if names_url == "memory" {
        return Err(fail(
            "status",
            "the service uses a private in-process name service; it cannot move".into(),
        ));
    }
    let dest_host = dest
        .addr()
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .ok_or_else(|| fail("destination", format!("bad node address {}", dest.addr())))?;
    let mut args: Vec<String> = st["relaunch_args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    args.extend([
        "--uuid".into(),
        uuid.to_string(),
        "--standby".into(),
        "--listen".into(),
        format!("{dest_host}:0"),
        "--names".into(),
        names_url.to_string(),
        "--store".into(),
        st["store"].as_str().unwrap_or("").to_string(),
    ]);
    if let Some(iv) = st["interval_secs"].as_f64() {
        args.extend(["--interval".into(), iv.to_string()]);
    }
    let r = &st["retention"];
    if let Some(k) = r["keep"].as_u64() {
        args.extend(["--keep".into(), k.to_string()]);
    }
    if let Some(a) = r["max_age_secs"].as_f64() {
        args.extend(["--keep-secs".into(), a.to_string()]);
    }
    if let Some(b) = r["max_bytes"].as_u64() {
        args.extend(["--keep-bytes".into(), b.to_string()]);
    }
    if let Some(f) = st["call_token_file"].as_str() {
        args.extend(["--call-token-file".into(), f.to_string()]);
    }
    // The new instance reaches the source's name service and store with a grant of
    // theirs, never with the operator's token.
    let env = service_env(dest.client(), dest.addr(), &option_urls(&args))
        .await
        .map_err(|e| fail("grant for destination", e.to_string()))?;
    let started = dest
        .exec(program, &args, env, Duration::from_secs(15))
        .await
        .map_err(|e| fail("start on destination", e.to_string()))?;
    let pid = started["pid"].as_u64().unwrap_or(0);
    let new_addr = started["ready"]["address"]
        .as_str()
        .ok_or_else(|| fail("start on destination", format!("no address in {started}")))?
        .to_string();
    let kill_new = || async {
        if let Err(e) = dest.signal(pid, "KILL").await {
            tracing::warn!(error = %e, pid, "could not kill the new instance");
        }
    };
    let new_cred = match management_credential(dest.client(), &new_addr, uuid).await {
        Ok(c) => c,
        Err(e) => {
            kill_new().await;
            return Err(fail("start on destination", e.to_string()));
        }
    };

    // The hand-off port of the new instance, authenticated by a secret only the two
    // instances get (each over its own authenticated management channel).
    let secret = Token::random(godwit_net::Scopes::of(&[]))
        .map_err(|e| fail("migration secret", e.to_string()))?
        .secret()
        .to_string();
    let port = match mgmt::request(
        &new_addr,
        json!({ "op": "receive", "secret": secret, "timeout_secs": HANDOFF_WAIT.as_secs() }),
        Some(&new_cred),
        MGMT_TIMEOUT,
    )
    .await
    {
        Ok(v) => v["address"].as_str().map(str::to_string),
        Err(mgmt::MgmtError::Failed { message, .. })
            if message.contains("unknown management operation") =>
        {
            tracing::info!(%uuid, "the service's build has no hand-off; migrating through the store");
            None
        }
        Err(e) => {
            kill_new().await;
            return Err(fail("open the hand-off port on destination", e.to_string()));
        }
    };

    let t_switch = Instant::now();
    if let Some(to) = &port {
        let frozen = mgmt::request(
            &src,
            json!({ "op": "freeze", "stream_to": to, "secret": secret,
                    "timeout_secs": HANDOFF_WAIT.as_secs() }),
            Some(token),
            HANDOFF_WAIT + MGMT_TIMEOUT,
        )
        .await;
        let frozen = match frozen {
            Ok(v) => v,
            Err(e) => {
                // The new instance dies first, then the source serves on (it may have
                // thawed itself already): never two instances serving.
                kill_new().await;
                let thaw =
                    mgmt::request(&src, json!({ "op": "thaw" }), Some(token), MGMT_TIMEOUT).await;
                let rolled = match thaw {
                    Ok(_) => "new instance killed, source thawed, still serving".to_string(),
                    Err(mgmt::MgmtError::Failed { message, .. })
                        if message.contains("while serving") =>
                    {
                        "new instance killed, source thawed, still serving".to_string()
                    }
                    Err(t) => format!("new instance killed; thawing the source failed: {t}"),
                };
                return Err(fail(
                    "stream state to destination",
                    format!("{e}; {rolled}"),
                ));
            }
        };
        let switch_over = t_switch.elapsed();
        if let Err(e) = mgmt::request(
            &src,
            json!({ "op": "stop", "checkpoint": false }),
            Some(token),
            MGMT_TIMEOUT,
        )
        .await
        {
            tracing::warn!(error = %e, "stopping the old instance failed; it stays frozen and answers MOVED");
        }
        let c = &frozen["checkpoint"];
        return Ok(Migration {
            uuid: uuid.to_string(),
            from: src,
            to: new_addr,
            checkpoint: c["id"].as_str().unwrap_or("?").to_string(),
            bytes: c["bytes"].as_u64().unwrap_or(0),
            ops_in_flight: c["ops_in_flight"].as_u64().unwrap_or(0),
            switch_over,
            total: t0.elapsed(),
            streamed: true,
        });
    }
    let frozen =
        match mgmt::request(&src, json!({ "op": "freeze" }), Some(token), MGMT_TIMEOUT).await {
            Ok(v) => v,
            Err(e) => {
                kill_new().await;
                return Err(fail("freeze source", e.to_string()));
            }
        };
    let id = frozen["checkpoint"]["id"]
        .as_str()
        .unwrap_or("latest")
        .to_string();
    let bytes = frozen["checkpoint"]["bytes"].as_u64().unwrap_or(0);
    let ops_in_flight = frozen["checkpoint"]["ops_in_flight"].as_u64().unwrap_or(0);
    if let Err(e) = mgmt::request(
        &new_addr,
        json!({ "op": "restore", "id": id }),
        Some(&new_cred),
        MGMT_TIMEOUT,
    )
    .await
    {
        let thaw = mgmt::request(&src, json!({ "op": "thaw" }), Some(token), MGMT_TIMEOUT).await;
        kill_new().await;
        let rolled = match thaw {
            Ok(_) => "source thawed, still serving".to_string(),
            Err(t) => format!("thawing the source failed too: {t}"),
        };
        return Err(fail("restore on destination", format!("{e}; {rolled}")));
    }
    let switch_over = t_switch.elapsed();
    if let Err(e) = mgmt::request(
        &src,
        json!({ "op": "stop", "checkpoint": false }),
        Some(token),
        MGMT_TIMEOUT,
    )
    .await
    {
        tracing::warn!(error = %e, "stopping the old instance failed; it stays frozen and answers MOVED");
    }
    Ok(Migration {
        uuid: uuid.to_string(),
        from: src,
        to: new_addr,
        checkpoint: id,
        bytes,
        ops_in_flight,
        switch_over,
        total: t0.elapsed(),
        streamed: false,
    })
}

/// The checkpoint tree of `uuid` in `store`: `{uuid, store, latest, head, checkpoints:
/// [{id, parent, bytes, created_unix_ms, children}]}`, oldest first; `head` is what the
/// running instance descends from (when it runs).
pub async fn checkpoint_tree(
    store: &godwit_sdk::Store,
    uuid: &str,
    head: Option<&str>,
) -> Result<Value, godwit_sdk::store::StoreError> {
    let list = store.list(uuid).await?;
    let rows: Vec<Value> = list
        .iter()
        .map(|c| {
            let children: Vec<&str> = list
                .iter()
                .filter(|k| k.parent.as_deref() == Some(c.id.as_str()))
                .map(|k| k.id.as_str())
                .collect();
            json!({ "id": c.id, "parent": c.parent, "bytes": c.bytes,
                    "created_unix_ms": c.created_unix_ms, "children": children })
        })
        .collect();
    Ok(json!({
        "uuid": uuid, "store": store.url(), "latest": list.last().map(|c| c.id.clone()),
        "head": head, "checkpoints": rows,
    }))
}

/// The tree as text: each checkpoint under its parent, indented.
fn render_tree(v: &Value) -> String {
    let rows = v["checkpoints"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    let mut out = format!(
        "checkpoints of {} in {}\n",
        v["uuid"].as_str().unwrap_or("?"),
        v["store"].as_str().unwrap_or("?")
    );
    fn walk(rows: &[Value], v: &Value, id: &str, depth: usize, out: &mut String) {
        let Some(r) = rows.iter().find(|r| r["id"] == id) else {
            return;
        };
        let mut marks = Vec::new();
        if v["latest"] == id {
            marks.push("latest");
        }
        if v["head"] == id {
            marks.push("running instance descends from it");
        }
        out.push_str(&format!(
            "{}{}  {} bytes{}\n",
            "  ".repeat(depth),
            id,
            r["bytes"],
            if marks.is_empty() {
                String::new()
            } else {
                format!("  <- {}", marks.join(", "))
            }
        ));
        for c in r["children"].as_array().into_iter().flatten() {
            if let Some(c) = c.as_str() {
                walk(rows, v, c, depth + 1, out);
            }
        }
    }
    for r in &rows {
        let root = match r["parent"].as_str() {
            None => true,
            Some(p) => !ids.contains(&p),
        };
        if root {
            if let (Some(id), Some(p)) = (r["id"].as_str(), r["parent"].as_str()) {
                out.push_str(&format!("({p}, the parent of {id}, was removed)\n"));
            }
            walk(&rows, v, r["id"].as_str().unwrap_or(""), 0, &mut out);
        }
    }
    out.trim_end().to_string()
}

/// The process the agent started last for service `uuid` (from its GODWIT_READY line).
async fn started_by_agent(agent: &Agent, uuid: &str) -> Result<Option<Value>, AgentError> {
    let v = agent
        .request("list", "GET", "/v1/exec", None, Duration::from_secs(10))
        .await?;
    Ok(v["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["uuid"] == uuid)
        .max_by_key(|p| p["pid"].as_u64())
        .cloned())
}

/// Starts `program args` on the agent's node and waits for GODWIT_READY.
async fn start_service(
    agent: &Agent,
    program: &str,
    args: Vec<String>,
    restart: &str,
    replicas: u64,
) -> anyhow::Result<Value> {
    let wait = Duration::from_secs(30);
    let env = service_env(agent.client(), agent.addr(), &option_urls(&args)).await?;
    let mut body = json!({ "program": program, "args": args, "env": env,
                       "wait_ready_ms": wait.as_millis() as u64, "restart": restart });
    if replicas > 0 {
        body["replicas"] = json!(replicas);
    }
    let started = agent
        .request(
            "exec",
            "POST",
            "/v1/exec",
            Some(body),
            wait + Duration::from_secs(5),
        )
        .await?;
    if started["ready"]["uuid"].as_str().is_none() {
        anyhow::bail!(
            "{program} started (pid {}) but announced no service",
            started["pid"]
        );
    }
    Ok(started)
}

fn names_for(agent: &Agent, token: &str, ca: Option<&Path>) -> Result<Names, AgentError> {
    match std::env::var("GODWIT_NAMES") {
        Ok(url) if !url.is_empty() => {
            Ok(Names::from_url_with_ca(&url, Some(token.to_string()), ca)?)
        }
        _ => Ok(agent.names()),
    }
}

fn print(json_out: bool, v: &Value, human: impl FnOnce() -> String) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        println!("{}", human());
    }
}

/// Runs one `godwit service ...` subcommand against the agent at `agent` (HOST:PORT),
/// printing a table or, with `json`, JSON. `tls_ca`: verify the agents' certificates
/// with this CA (PKI mode).
pub async fn run_service_cmd(
    cmd: ServiceCmd,
    agent: &str,
    token: String,
    tls_ca: Option<&Path>,
    json_out: bool,
) -> anyhow::Result<()> {
    let agent = Agent::with_ca(agent, token.clone(), tls_ca)?;
    let names = names_for(&agent, &token, tls_ca)?;
    match cmd {
        ServiceCmd::Ls => {
            let mut rows = Vec::new();
            for r in names.list().await? {
                let st = manage(
                    agent.client(),
                    &r.address,
                    &r.uuid,
                    json!({ "op": "status" }),
                    Duration::from_secs(5),
                )
                .await;
                rows.push(match st {
                    Ok(s) => s,
                    Err(e) => json!({ "uuid": r.uuid, "address": r.address, "mode": "unreachable", "error": e.to_string() }),
                });
            }
            let v = json!({ "services": rows });
            print(json_out, &v, || {
                let mut s = format!(
                    "{:<36}  {:<10}  {:<21}  {:<9}  {:>10}  {:>8}  {}\n",
                    "UUID",
                    "SERVICE",
                    "ADDRESS",
                    "MODE",
                    "STATE(B)",
                    "IN-FLIGHT",
                    "LAST CHECKPOINT"
                );
                for r in &rows {
                    s.push_str(&format!(
                        "{:<36}  {:<10}  {:<21}  {:<9}  {:>10}  {:>8}  {}\n",
                        r["uuid"].as_str().unwrap_or("-"),
                        r["service"].as_str().unwrap_or("-"),
                        r["address"].as_str().unwrap_or("-"),
                        r["mode"].as_str().unwrap_or("-"),
                        r["state_bytes"]
                            .as_u64()
                            .map(|b| b.to_string())
                            .unwrap_or("-".into()),
                        r["calls_in_flight"]
                            .as_array()
                            .map(|a| a.len())
                            .unwrap_or(0),
                        r["last_checkpoint"]["id"].as_str().unwrap_or("-"),
                    ));
                }
                s.trim_end().to_string()
            });
        }
        ServiceCmd::Status { uuid } => {
            let mut v =
                manage_named(&names, agent.client(), &uuid, json!({ "op": "status" })).await?;
            // What the agent knows of it: restarts after crashes.
            if let Ok(Some(p)) = started_by_agent(&agent, &uuid).await {
                v["agent"] = json!({ "node": agent.addr(), "pid": p["pid"], "restart": p["restart"],
                                     "restarts": p["restarts"], "log": p["log"] });
            }
            print(true, &v, String::new);
        }
        ServiceCmd::Checkpoint { uuid } => {
            let v =
                manage_named(&names, agent.client(), &uuid, json!({ "op": "checkpoint" })).await?;
            print(json_out, &v, || {
                let c = &v["checkpoint"];
                format!(
                    "checkpoint {} of {uuid}: {} bytes, calls held {:.2} ms",
                    c["id"].as_str().unwrap_or("?"),
                    c["bytes"],
                    c["pause_ms"].as_f64().unwrap_or(0.0)
                )
            });
        }
        ServiceCmd::Migrate { uuid, to } => {
            let dest = Agent::with_ca(&to, token.clone(), tls_ca)?;
            let m = migrate(&names, &dest, &uuid).await?;
            let v = m.to_json();
            print(json_out, &v, || {
                format!(
                    "migrated {uuid}: {} -> {} (checkpoint {}, {} bytes {}, switch-over {:.1} ms, total {:.1} ms)",
                    m.from,
                    m.to,
                    m.checkpoint,
                    m.bytes,
                    if m.streamed { "streamed to the new instance, then stored" } else { "through the store" },
                    m.switch_over.as_secs_f64() * 1e3,
                    m.total.as_secs_f64() * 1e3
                )
            });
        }
        ServiceCmd::Start {
            uuid,
            interval,
            restart,
            replicas,
            command,
        } => {
            let (program, own) = command
                .split_first()
                .ok_or_else(|| anyhow::anyhow!("start: give `-- PROGRAM [ARGS]`"))?;
            let host = agent
                .addr()
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_else(|| "127.0.0.1".into());
            let names_url = match std::env::var("GODWIT_NAMES") {
                Ok(u) if !u.is_empty() => u,
                _ => format!("agent://{}", agent.addr()),
            };
            let mut args: Vec<String> = own.to_vec();
            args.extend([
                "--listen".into(),
                format!("{host}:0"),
                "--names".into(),
                names_url,
                "--store".into(),
                format!("agent://{}", agent.addr()),
            ]);
            if let Some(u) = uuid {
                args.extend(["--uuid".into(), u]);
            }
            if let Some(iv) = interval {
                args.extend(["--interval".into(), iv.to_string()]);
            }
            let started = start_service(&agent, program, args, &restart, replicas).await?;
            let v = json!({ "uuid": started["ready"]["uuid"], "address": started["ready"]["address"],
                            "pid": started["pid"], "log": started["log"],
                            "holders": started["protected"]["holders"] });
            print(json_out, &v, || {
                v["uuid"].as_str().unwrap_or("?").to_string()
            });
        }
        ServiceCmd::Stop { uuid } => {
            let v = manage_named(
                &names,
                agent.client(),
                &uuid,
                json!({ "op": "stop", "checkpoint": true }),
            )
            .await?;
            print(json_out, &v, || match v["checkpoint"]["id"].as_str() {
                Some(id) => format!("stopped {uuid}: final checkpoint {id}"),
                None => format!("stopped {uuid} (it was not serving: no final checkpoint)"),
            });
        }
        ServiceCmd::Freeze { uuid } => {
            let v = manage_named(&names, agent.client(), &uuid, json!({ "op": "freeze" })).await?;
            print(json_out, &v, || {
                format!(
                    "froze {uuid} at checkpoint {}: calls wait until `thaw`",
                    v["checkpoint"]["id"].as_str().unwrap_or("?")
                )
            });
        }
        ServiceCmd::Thaw { uuid } => {
            // A frozen service is not in the name service: the agent that started it
            // knows its address.
            let addr = match names.resolve(&uuid).await? {
                Some(a) => a,
                None => started_by_agent(&agent, &uuid)
                    .await?
                    .filter(|p| p["running"] == true)
                    .and_then(|p| p["address"].as_str().map(str::to_string))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "thaw {uuid}: not in the name service and not running on agent {}",
                            agent.addr()
                        )
                    })?,
            };
            let v = manage(
                agent.client(),
                &addr,
                &uuid,
                json!({ "op": "thaw" }),
                MGMT_TIMEOUT,
            )
            .await?;
            print(json_out, &v, || format!("thawed {uuid}: serving at {addr}"));
        }
        ServiceCmd::Restore { uuid, checkpoint } => {
            if let Some(a) = names.resolve(&uuid).await? {
                anyhow::bail!(
                    "restore {uuid}: it is running at {a}; stop it first (or migrate it)"
                );
            }
            let mut p = Value::Null;
            // A service just stopped may still be finishing its exit: wait for it a little.
            for _ in 0..50 {
                p = started_by_agent(&agent, &uuid).await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "restore {uuid}: agent {} never started it, so its program is unknown here; use `start --uuid {uuid} -- PROGRAM [ARGS] --restore ID` on the node that has the program",
                        agent.addr()
                    )
                })?;
                if p["running"] != true {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if p["running"] == true {
                anyhow::bail!(
                    "restore {uuid}: its process {} still runs on agent {} (frozen or stopping); thaw or stop it first",
                    p["pid"],
                    agent.addr()
                );
            }
            let program = p["program"].as_str().unwrap_or("").to_string();
            let old: Vec<String> = p["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            let id = checkpoint.unwrap_or_else(|| "latest".into());
            let mut args = godwit_sdk::options::without_lifecycle_options(&old);
            args.extend(["--uuid".into(), uuid.clone(), "--restore".into(), id]);
            let restart = p["restart"].as_str().unwrap_or("never");
            let started = start_service(&agent, &program, args, restart, 0).await?;
            let addr = started["ready"]["address"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let st = manage(
                agent.client(),
                &addr,
                &uuid,
                json!({ "op": "status" }),
                MGMT_TIMEOUT,
            )
            .await?;
            let v = json!({ "uuid": uuid, "address": addr, "pid": started["pid"],
                            "restored_from": st["restored_from"], "last_checkpoint": st["last_checkpoint"] });
            print(json_out, &v, || {
                format!(
                    "restored {uuid} from checkpoint {} at {addr}",
                    v["restored_from"].as_str().unwrap_or("?")
                )
            });
        }
        ServiceCmd::Checkpoints { uuid } => {
            // The running instance names its store and what it descends from; a service
            // that is not running is looked up in this agent's store.
            let running = match names.resolve(&uuid).await? {
                Some(addr) => manage(
                    agent.client(),
                    &addr,
                    &uuid,
                    json!({ "op": "status" }),
                    Duration::from_secs(10),
                )
                .await
                .ok(),
                None => None,
            };
            let url = running
                .as_ref()
                .and_then(|s| s["store"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("agent://{}", agent.addr()));
            let store = godwit_sdk::Store::from_url_with_ca(&url, Some(token.clone()), tls_ca)
                .map_err(|e| anyhow::anyhow!("checkpoint store {url}: {e}"))?;
            let head = running.as_ref().and_then(|s| s["head"].as_str());
            let v = checkpoint_tree(&store, &uuid, head).await?;
            print(json_out, &v, || render_tree(&v));
        }
        ServiceCmd::Interval { uuid, secs } => {
            let v = manage_named(
                &names,
                agent.client(),
                &uuid,
                json!({ "op": "interval", "secs": secs }),
            )
            .await?;
            print(json_out, &v, || match v["interval_secs"].as_f64() {
                Some(s) => format!("{uuid}: checkpoint every {s} s"),
                None => format!("{uuid}: periodic checkpoints off"),
            });
        }
    }
    Ok(())
}

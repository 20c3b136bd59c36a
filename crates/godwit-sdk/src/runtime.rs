//! The server runtime every conformist service shares: RPC dispatch, at-most-once calls,
//! call monitoring, quiescing, checkpoints, restore, migration points, name-service
//! registration and signal handling.
//!
//! Consistency rule: the state, the table of completed calls and the stages of resumable
//! operations live behind ONE lock, and every write call and every step of a resumable
//! operation runs entirely under it. A capture taken under that lock is therefore always
//! a consistent cut: every completed call is in the state and in the table, and every
//! resumable operation sits at a migration point.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use godwit_names::{Lease, NamesError};
use godwit_net::mtls::MutualServer;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::checkpoint::{
    self, CheckpointError, Description, DoneCall, Envelope, OpRecord, WorkerRecord,
};
use crate::codec::{Portable, StructEncoder};
use crate::durable::{CallLog, LogEntry, LogError, SyncMode};
use crate::options::ServiceOptions;
use crate::service::{MethodKind, Service, StepOutcome};
use crate::store::{checkpoint_id, StoreError, StoredCheckpoint};
use crate::wire::{self, status, Call};
use crate::worker::{Worker, WorkerError, Workers};

/// Errors of the service runtime and of management operations.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The service marks operations `#[durable]` but runs without `--durable-log`.
    #[error("operations `{ops}` are #[durable] but no durable call log is configured: start the service with --durable-log DIR (their calls must be on disk before their reply)")]
    DurableWithoutLog {
        /// The marked operations.
        ops: String,
    },
    /// Mutual TLS on the service port cannot be set up (certificate, key or CA file).
    #[error("mutual TLS on the service port (--tls-cert/--tls-key/--tls-client-ca): {0}")]
    Tls(godwit_net::NetError),
    /// Could not listen.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The operation is not allowed in the current mode.
    #[error("cannot {op} while {mode}")]
    WrongMode {
        /// Operation.
        op: &'static str,
        /// Current mode.
        mode: &'static str,
    },
    /// Name service failure.
    #[error("{stage}: {source}")]
    Names {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: NamesError,
    },
    /// Checkpoint store failure.
    #[error("{stage}: {source}")]
    Store {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: StoreError,
    },
    /// The checkpoint cannot be restored.
    #[error("restore {id}: {source}")]
    Restore {
        /// Checkpoint id.
        id: String,
        /// Cause.
        source: CheckpointError,
    },
    /// The checkpoint belongs to another instance.
    #[error("checkpoint {id} is of instance {found}, this instance is {expected}")]
    WrongInstance {
        /// Checkpoint id.
        id: String,
        /// UUID in the checkpoint.
        found: String,
        /// Our UUID.
        expected: String,
    },
    /// Workers did not reach a safe point in time: the checkpoint is not taken, the
    /// service and its workers carry on.
    #[error("cannot {op}: worker(s) {} did not reach a safe point within {wait:?} (--worker-wait); the service carries on", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    WorkersLate {
        /// Operation.
        op: &'static str,
        /// The workers that did not come.
        names: Vec<String>,
        /// How long the checkpoint waited.
        wait: Duration,
    },
    /// The durable call log cannot be used.
    #[error("{stage}: {source}")]
    Durable {
        /// Stage.
        stage: &'static str,
        /// Cause.
        source: LogError,
    },
    /// The durable call log does not continue the checkpoint: calls in between are
    /// missing (the checkpoint that covered them is damaged or gone).
    #[error("restore {id}: the durable call log continues at call {first}, but the checkpoint covers calls up to {covered}: acknowledged writes {} to {} are missing", covered + 1, first - 1)]
    LogGap {
        /// Checkpoint id.
        id: String,
        /// Last log entry the checkpoint covers.
        covered: u64,
        /// First entry in the log after it.
        first: u64,
    },
    /// Streaming the state to the new instance failed (a migration without the store
    /// on the critical path).
    #[error("freeze: hand-off to the new instance failed: {source}; {}", if *thawed { "thawed: this instance serves on" } else { "this instance stays frozen: the new one may have taken over (stop it, then thaw this one)" })]
    Handoff {
        /// What went wrong.
        source: crate::handoff::HandoffError,
        /// Whether this instance thawed and serves on.
        thawed: bool,
    },
    /// The standby instance cannot receive a hand-off.
    #[error("receive: {0}")]
    Receive(String),
    /// A resumable operation in the checkpoint is unknown to this build.
    #[error("restore {id}: operation `{method}` in flight in the checkpoint is not resumable in this build")]
    UnknownOp {
        /// Checkpoint id.
        id: String,
        /// Operation.
        method: String,
    },
}

const STANDBY: u8 = 0;
const SERVING: u8 = 1;
const HOLDING: u8 = 2;
const FROZEN: u8 = 3;
const STOPPING: u8 = 4;

fn mode_name(m: u8) -> &'static str {
    match m {
        STANDBY => "standby",
        SERVING => "serving",
        HOLDING => "holding",
        FROZEN => "frozen",
        _ => "stopping",
    }
}

type Key = (String, u64);

#[derive(Debug, Clone)]
enum Outcome {
    Reply(Arc<Vec<u8>>),
    Error(String),
}

struct RunEntry {
    method: String,
    kind: MethodKind,
    peer: String,
    task: String,
    started: Instant,
    rx: watch::Receiver<Option<Outcome>>,
}

struct Inner<S> {
    state: Option<S>,
    done: HashMap<String, BTreeMap<u64, Arc<Vec<u8>>>>,
    ops: BTreeMap<Key, OpRecord>,
    generation: u64,
    /// Bumped by every write and every step: what the state has been through.
    version: u64,
    /// `version` at the last capture (periodic checkpoints skip an unchanged state).
    captured_version: Option<u64>,
    /// Workers' state changes at the last capture.
    captured_worker_changes: u64,
    /// Last durable-log entry applied to `state`.
    log_seq: u64,
}

/// A capture, not yet framed or shipped.
struct Captured {
    payload: Vec<u8>,
    capture: Duration,
    ops: u64,
    workers: u64,
    log_seq: u64,
}

/// Facts about the last checkpoint taken.
#[derive(Debug, Clone)]
pub struct CheckpointInfo {
    /// Store id.
    pub id: String,
    /// Sequence number.
    pub seq: u64,
    /// File size.
    pub bytes: u64,
    /// State payload size.
    pub payload_bytes: u64,
    /// Wall-clock time, ms since the epoch.
    pub unix_ms: u64,
    /// How long calls were held.
    pub pause: Duration,
    /// Time to encode under the lock.
    pub capture: Duration,
    /// Time to ship to the store.
    pub upload: Duration,
    /// Resumable operations captured at a migration point.
    pub ops: u64,
    /// Workers captured at a safe point.
    pub workers: u64,
    /// Time the workers took to reach their safe points.
    pub worker_wait: Duration,
    /// Durable-log entries the checkpoint covers (its last sequence number).
    pub log_seq: u64,
}

impl CheckpointInfo {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id, "seq": self.seq, "bytes": self.bytes, "payload_bytes": self.payload_bytes,
            "unix_ms": self.unix_ms, "pause_ms": self.pause.as_secs_f64() * 1e3,
            "capture_ms": self.capture.as_secs_f64() * 1e3, "upload_ms": self.upload.as_secs_f64() * 1e3,
            "ops_in_flight": self.ops, "workers": self.workers,
            "worker_wait_ms": self.worker_wait.as_secs_f64() * 1e3, "log_seq": self.log_seq,
        })
    }
}

struct Shared<S: Service> {
    uuid: String,
    address: String,
    opts: ServiceOptions,
    methods: HashMap<&'static str, MethodKind>,
    methods_json: Value,
    /// The `#[durable]` operations, when the service marks any: only those are logged
    /// (none marked: every write is, with `--durable-log`).
    durable_only: Option<std::collections::HashSet<&'static str>>,
    factory: Box<dyn Fn() -> S + Send + Sync>,
    inner: RwLock<Inner<S>>,
    running: Mutex<HashMap<Key, RunEntry>>,
    mode: AtomicU8,
    mode_tx: watch::Sender<u8>,
    active: AtomicUsize,
    idle: Notify,
    interval: watch::Sender<Option<Duration>>,
    last: Mutex<Option<CheckpointInfo>>,
    /// The checkpoint this instance's state descends from: the last one it wrote or
    /// was restored from. The parent of its next checkpoint.
    head: Mutex<Option<String>>,
    /// The checkpoint this instance was restored from.
    restored_from: Mutex<Option<String>>,
    next_seq: AtomicU64,
    advertised: AtomicBool,
    lease: tokio::sync::Mutex<Option<Lease>>,
    mgmt: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    calls_served: AtomicU64,
    workers: Arc<Workers>,
    hooks: Mutex<Arc<Hooks<S>>>,
    /// The durable call log, open while serving with `--durable-log`.
    log: Mutex<Option<Arc<CallLog>>>,
    /// Log entries applied again at the last start or restore.
    replayed: AtomicU64,
    /// A hand-off port is open (standby, waiting for a migration's state).
    receiving: AtomicBool,
}

type Hook<S> = Box<dyn Fn(&Ctx<S>) + Send + Sync>;

/// The service's start and restore hooks: where it starts its workers.
pub struct Hooks<S: Service> {
    on_start: Option<Hook<S>>,
    on_restore: Option<Hook<S>>,
}

impl<S: Service> Default for Hooks<S> {
    fn default() -> Self {
        Hooks {
            on_start: None,
            on_restore: None,
        }
    }
}

impl<S: Service> Hooks<S> {
    /// No hooks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs when a fresh instance starts, once its state exists and before it is
    /// announced ready.
    pub fn on_start(mut self, f: impl Fn(&Ctx<S>) + Send + Sync + 'static) -> Self {
        self.on_start = Some(Box::new(f));
        self
    }

    /// Runs when an instance was restored (after a restart, a rollback or a
    /// migration), once its state is back: workers registered here under their names
    /// get their checkpointed state. Without it, `on_start` runs on restore too.
    pub fn on_restore(mut self, f: impl Fn(&Ctx<S>) + Send + Sync + 'static) -> Self {
        self.on_restore = Some(Box::new(f));
        self
    }
}

/// What hooks and workers see of their service instance.
pub struct Ctx<S: Service> {
    shared: Arc<Shared<S>>,
}

impl<S: Service> Clone for Ctx<S> {
    fn clone(&self) -> Self {
        Ctx {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Service> Ctx<S> {
    /// Registers a worker named `name` (unique in the service). Its state is the one
    /// in the restored checkpoint when there is one, else `init()`. Run the worker in
    /// its own task or thread and call [`Worker::safe_point`] where its state is
    /// consistent.
    pub fn worker<W: Portable>(
        &self,
        name: &str,
        init: impl FnOnce() -> W,
    ) -> Result<Worker<W>, WorkerError> {
        self.shared.workers.register(name, init)
    }

    /// Reads the service state (shared lock).
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> Option<R> {
        self.shared.read_inner().state.as_ref().map(f)
    }

    /// Changes the service state (exclusive lock, like a write call). Do it between
    /// two safe points: a checkpoint captures the state while every worker is at one.
    pub fn write<R>(&self, f: impl FnOnce(&mut S) -> R) -> Option<R> {
        let mut g = self.shared.write_inner();
        g.version += 1;
        g.state.as_mut().map(f)
    }

    /// The instance UUID.
    pub fn uuid(&self) -> &str {
        &self.shared.uuid
    }

    /// The checkpoint this instance was restored from, if any.
    pub fn restored_from(&self) -> Option<String> {
        lock(&self.shared.restored_from).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single map operations; data stays consistent on poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Moved;

struct ActiveGuard<'a, S: Service>(&'a Shared<S>);

impl<S: Service> Drop for ActiveGuard<'_, S> {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A bound, not yet running, service instance.
pub struct Server<S: Service> {
    shared: Arc<Shared<S>>,
    listener: TcpListener,
    tls: Option<MutualServer>,
}

/// A handle to a running instance, for in-process use (tests, embedding).
pub struct ServerHandle<S: Service> {
    shared: Arc<Shared<S>>,
}

impl<S: Service> Clone for ServerHandle<S> {
    fn clone(&self) -> Self {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S: Service> Server<S> {
    /// Binds the listening socket. `factory` makes the initial state of a fresh instance.
    pub async fn bind(
        opts: ServiceOptions,
        factory: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<Self, ServiceError> {
        let tls = match &opts.call_tls {
            Some(t) => {
                Some(MutualServer::new(&t.cert, &t.key, &t.client_ca).map_err(ServiceError::Tls)?)
            }
            None => None,
        };
        let listener =
            TcpListener::bind(&opts.listen)
                .await
                .map_err(|source| ServiceError::Listen {
                    addr: opts.listen.clone(),
                    source,
                })?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServiceError::Listen {
                addr: opts.listen.clone(),
                source,
            })?;
        let address = opts.advertise.clone().unwrap_or_else(|| bound.to_string());
        let uuid = opts
            .uuid
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let infos = S::methods();
        let methods = infos.iter().map(|m| (m.name, m.kind)).collect();
        let marked: std::collections::HashSet<&'static str> =
            infos.iter().filter(|m| m.durable).map(|m| m.name).collect();
        if !marked.is_empty() && opts.durable_log.is_none() {
            let mut ops: Vec<&str> = marked.iter().copied().collect();
            ops.sort_unstable();
            return Err(ServiceError::DurableWithoutLog {
                ops: ops.join("`, `"),
            });
        }
        let durable_only = (!marked.is_empty()).then_some(marked);
        let methods_json = Value::Object(
            infos
                .iter()
                .map(|m| (m.name.to_string(), m.to_json()))
                .collect(),
        );
        let (mode_tx, _) = watch::channel(STANDBY);
        let (interval, _) = watch::channel(opts.interval);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            uuid,
            address,
            methods,
            methods_json,
            durable_only,
            factory: Box::new(factory),
            inner: RwLock::new(Inner {
                state: None,
                done: HashMap::new(),
                ops: BTreeMap::new(),
                generation: 0,
                version: 0,
                captured_version: None,
                captured_worker_changes: 0,
                log_seq: 0,
            }),
            running: Mutex::new(HashMap::new()),
            mode: AtomicU8::new(STANDBY),
            mode_tx,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            interval,
            last: Mutex::new(None),
            head: Mutex::new(None),
            restored_from: Mutex::new(None),
            next_seq: AtomicU64::new(1),
            advertised: AtomicBool::new(false),
            lease: tokio::sync::Mutex::new(None),
            mgmt: tokio::sync::Mutex::new(()),
            shutdown,
            calls_served: AtomicU64::new(0),
            workers: Arc::new(Workers::new()),
            hooks: Mutex::new(Arc::new(Hooks::default())),
            log: Mutex::new(None),
            replayed: AtomicU64::new(0),
            receiving: AtomicBool::new(false),
            opts,
        });
        Ok(Server {
            shared,
            listener,
            tls,
        })
    }

    /// The advertised address.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The instance UUID.
    pub fn uuid(&self) -> &str {
        &self.shared.uuid
    }

    /// Sets the start and restore hooks.
    pub fn hooks(self, hooks: Hooks<S>) -> Self {
        *lock(&self.shared.hooks) = Arc::new(hooks);
        self
    }

    /// A handle for in-process management.
    pub fn handle(&self) -> ServerHandle<S> {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Starts (fresh, or restored per the options, or standby) and serves until stopped.
    pub async fn run(self) -> Result<(), ServiceError> {
        let sh = self.shared.clone();
        // Install the signal handlers before announcing: whoever reads GODWIT_READY may
        // send SIGTERM at once.
        let signals = if sh.opts.handle_signals {
            use tokio::signal::unix::{signal, SignalKind};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    tracing::warn!("cannot install signal handlers");
                    None
                }
            }
        } else {
            None
        };
        let announce = |sh: &Shared<S>| {
            if sh.opts.announce {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "GODWIT_READY {} {}", sh.address, sh.uuid);
                let _ = out.flush();
            }
        };
        let mut shutdown = sh.shutdown.subscribe();
        tokio::spawn(sh.clone().accept_loop(self.listener, self.tls));
        tokio::spawn(sh.clone().lease_loop());
        tokio::spawn(sh.clone().periodic_loop());
        if let Some((term, int)) = signals {
            tokio::spawn(sh.clone().signal_loop(term, int));
        }
        // Ready means serving: a standby instance is ready to be told what to restore;
        // any other only once its state is back (fresh or restored).
        if !sh.opts.standby {
            let resume = sh.opts.resume && sh.opts.restore.is_none() && {
                let any = !sh.stored().await?.is_empty();
                if !any {
                    tracing::info!(uuid = %sh.uuid, "--resume: no checkpoint yet, starting fresh");
                }
                any
            };
            match sh.opts.restore.clone() {
                Some(id) => {
                    sh.restore(&id).await?;
                }
                None if resume => {
                    sh.restore("latest").await?;
                }
                None => sh.start().await?,
            }
        }
        announce(&sh);
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        tracing::info!(uuid = %sh.uuid, "service stopped");
        Ok(())
    }
}

impl<S: Service> ServerHandle<S> {
    /// Management request (same JSON as the wire MGMT frame, token not checked).
    pub async fn manage(&self, req: Value) -> Value {
        self.shared.manage(req).await
    }

    /// Runs `f` on the state under the shared lock (tests, inspection).
    pub fn with_state<R>(&self, f: impl FnOnce(Option<&S>) -> R) -> R {
        let g = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
        f(g.state.as_ref())
    }
}

impl<S: Service> Shared<S> {
    fn mode(&self) -> u8 {
        self.mode.load(SeqCst)
    }

    fn set_mode(&self, m: u8) {
        self.mode.store(m, SeqCst);
        self.mode_tx.send_replace(m);
    }

    fn read_inner(&self) -> std::sync::RwLockReadGuard<'_, Inner<S>> {
        // A panic in an author's operation poisons the lock; the state it left is what
        // the operation wrote so far. We keep serving rather than wedge the service.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inner(&self) -> std::sync::RwLockWriteGuard<'_, Inner<S>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Admission gate: waits while calls are held; `Moved` when not serving.
    async fn enter(&self) -> Result<ActiveGuard<'_, S>, Moved> {
        let mut rx = self.mode_tx.subscribe();
        loop {
            rx.borrow_and_update();
            match self.mode() {
                SERVING => {
                    self.active.fetch_add(1, SeqCst);
                    let guard = ActiveGuard(self);
                    if self.mode() == SERVING {
                        return Ok(guard);
                    }
                    drop(guard);
                }
                HOLDING => {}
                _ => return Err(Moved),
            }
            if rx.changed().await.is_err() {
                return Err(Moved);
            }
        }
    }

    async fn wait_idle(&self) {
        loop {
            let n = self.idle.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.active.load(SeqCst) == 0 {
                return;
            }
            n.await;
        }
    }

    async fn advertise(&self) -> Result<(), ServiceError> {
        let mut l = self.lease.lock().await;
        let lease = self
            .opts
            .names
            .advertise(&self.uuid, &self.address, self.opts.lease)
            .await
            .map_err(|source| ServiceError::Names {
                stage: "advertise",
                source,
            })?;
        *l = Some(lease);
        self.advertised.store(true, SeqCst);
        Ok(())
    }

    async fn withdraw(&self) {
        let mut l = self.lease.lock().await;
        self.advertised.store(false, SeqCst);
        *l = None;
        if let Err(e) = self.opts.names.withdraw(&self.uuid, &self.address).await {
            tracing::warn!(error = %e, "withdraw from the name service failed; the lease will expire");
        }
    }

    async fn lease_loop(self: Arc<Self>) {
        let period = self.opts.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            if *self.shutdown.borrow() {
                return;
            }
            let mut l = self.lease.lock().await;
            if !self.advertised.load(SeqCst) {
                continue;
            }
            if let Some(lease) = l.as_mut() {
                if let Err(e) = self.opts.names.refresh(lease).await {
                    tracing::warn!(error = %e, "lease refresh failed");
                }
            }
        }
    }

    async fn periodic_loop(self: Arc<Self>) {
        let mut rx = self.interval.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let iv = *rx.borrow_and_update();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = rx.changed() => continue,
                _ = async {
                    match iv {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let unchanged = {
                        let g = self.read_inner();
                        g.captured_version == Some(g.version)
                            && g.captured_worker_changes == self.workers.changes.load(SeqCst)
                    };
                    if unchanged {
                        tracing::debug!("periodic checkpoint skipped: nothing changed since the last one");
                    } else if self.mode() == SERVING {
                        if let Err(e) = self.checkpoint().await {
                            tracing::warn!(error = %e, "periodic checkpoint failed");
                        }
                    }
                }
            }
        }
    }

    async fn signal_loop(
        self: Arc<Self>,
        mut term: tokio::signal::unix::Signal,
        mut int: tokio::signal::unix::Signal,
    ) {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: deregistering and flushing a final checkpoint"),
            _ = int.recv() => tracing::info!("SIGINT: deregistering and flushing a final checkpoint"),
        }
        if let Err(e) = self.stop(true).await {
            tracing::error!(error = %e, "final checkpoint failed");
            self.shutdown.send_replace(true);
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, tls: Option<MutualServer>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let peer = peer.to_string();
                        match &tls {
                            None => {
                                let (rd, wr) = stream.into_split();
                                tokio::spawn(self.clone().serve_conn(rd, wr, peer, None));
                            }
                            Some(tls) => {
                                tokio::spawn(self.clone().serve_tls_port(stream, peer, tls.clone()));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// A connection to a port with mutual TLS: a TLS handshake (a client without a
    /// certificate the client CA signed fails it), or plain frames, on which management
    /// requests (authenticated by their own credential, as godwitd sends them) are
    /// served but calls are refused.
    async fn serve_tls_port(self: Arc<Self>, stream: TcpStream, peer: String, tls: MutualServer) {
        let mut first = [0u8; 3];
        let deadline = Instant::now() + godwit_net::HANDSHAKE_TIMEOUT;
        let is_tls = loop {
            match tokio::time::timeout_at(deadline.into(), stream.peek(&mut first)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) if n >= 3 || first[0] != 0x16 => {
                    break godwit_net::mtls::starts_tls_handshake(&first[..n])
                }
                // Fewer bytes than the record header so far: look again shortly.
                Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        if !is_tls {
            let (rd, wr) = stream.into_split();
            return self
                .serve_conn(
                    rd,
                    wr,
                    peer,
                    Some("this service requires mutual TLS on its port: connect with a client certificate its client CA signed (ClientOptions::tls)"),
                )
                .await;
        }
        match tls.accept(stream, &peer).await {
            Ok(s) => {
                let (rd, wr) = tokio::io::split(s);
                self.serve_conn(rd, wr, peer, None).await
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "service connection refused at the TLS handshake")
            }
        }
    }

    /// Serves one connection. `plain_refused`: why calls are refused on it (a plain
    /// connection to a port with mutual TLS); management requests are served anyway.
    async fn serve_conn<R, W>(
        self: Arc<Self>,
        rd: R,
        mut wr: W,
        peer: String,
        plain_refused: Option<&'static str>,
    ) where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let mut rd = BufReader::new(rd);
        // With `--call-token-file`, calls need a HELLO with that token first.
        let mut refused: Option<&str> = self
            .opts
            .call_token
            .as_ref()
            .map(|_| "this service requires a call token and the client presented none (give the client the token: ClientOptions::call_token or GODWIT_CALL_TOKEN)");
        loop {
            let Ok((kind, body)) = wire::read_frame(&mut rd).await else {
                return;
            };
            let ok = match kind {
                wire::kind::HELLO => {
                    if let Some(expected) = &self.opts.call_token {
                        refused = if constant_time_eq(&body, expected.as_bytes()) {
                            None
                        } else {
                            Some("wrong call token (the client's token is not the one the service was given with --call-token-file)")
                        };
                    }
                    true
                }
                wire::kind::CALL => match wire::decode_call(&body) {
                    Ok(call) if plain_refused.or(refused).is_some() => {
                        let why = plain_refused.or(refused).unwrap_or_default();
                        tracing::warn!(%peer, "call refused: {why}");
                        let msg = format!("unauthorized: {why}");
                        let _ = Self::reply(&mut wr, call.seq, status::ERROR, msg.as_bytes()).await;
                        false
                    }
                    Ok(call) => self.handle_call(call, &peer, &mut wr).await,
                    Err(e) => {
                        let _ = wire::write_frame(
                            &mut wr,
                            wire::kind::REPLY,
                            &[&wire::encode_reply(
                                0,
                                status::ERROR,
                                e.to_string().as_bytes(),
                            )],
                        )
                        .await;
                        false
                    }
                },
                wire::kind::MGMT => {
                    let answer = match serde_json::from_slice::<Value>(&body) {
                        Ok(req) => self.manage_checked(req).await,
                        Err(e) => json!({ "ok": false, "error": format!("bad JSON: {e}") }),
                    };
                    wire::write_frame(
                        &mut wr,
                        wire::kind::MGMT_REPLY,
                        &[answer.to_string().as_bytes()],
                    )
                    .await
                    .is_ok()
                }
                _ => false,
            };
            if !ok {
                return;
            }
        }
    }

    async fn reply<W: AsyncWrite + Unpin>(w: &mut W, seq: u64, st: u8, payload: &[u8]) -> bool {
        wire::write_frame(
            w,
            wire::kind::REPLY,
            &[&wire::encode_reply(seq, st, payload)],
        )
        .await
        .is_ok()
    }

    /// Waits for an outcome, sending heartbeats; MOVED when the instance freezes first.
    async fn await_outcome<W: AsyncWrite + Unpin>(
        &self,
        seq: u64,
        mut rx: watch::Receiver<Option<Outcome>>,
        w: &mut W,
    ) -> bool {
        let mut mode_rx = self.mode_tx.subscribe();
        loop {
            let current = rx.borrow_and_update().clone();
            if let Some(o) = current {
                return self.send_outcome(seq, o, w).await;
            }
            if matches!(*mode_rx.borrow_and_update(), FROZEN | STOPPING) {
                return Self::reply(w, seq, status::MOVED, &[]).await;
            }
            tokio::select! {
                r = rx.changed() => {
                    let gone = r.is_err() && rx.borrow().is_none();
                    if gone {
                        return Self::reply(w, seq, status::MOVED, &[]).await;
                    }
                },
                _ = mode_rx.changed() => {},
                _ = tokio::time::sleep(wire::HEARTBEAT) => {
                    if !Self::reply(w, seq, status::PENDING, &[]).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn send_outcome<W: AsyncWrite + Unpin>(&self, seq: u64, o: Outcome, w: &mut W) -> bool {
        match o {
            Outcome::Reply(r) => Self::reply(w, seq, status::OK, &r).await,
            Outcome::Error(e) => Self::reply(w, seq, status::ERROR, e.as_bytes()).await,
        }
    }

    async fn handle_call<W: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        call: Call,
        peer: &str,
        w: &mut W,
    ) -> bool {
        let Call {
            client,
            seq,
            ack_below,
            method,
            args,
        } = call;
        let Some(kind) = self.methods.get(method.as_str()).copied() else {
            return Self::reply(
                w,
                seq,
                status::ERROR,
                format!("unknown operation `{method}`").as_bytes(),
            )
            .await;
        };
        let client = uuid::Uuid::from_bytes(client).to_string();
        let Ok(guard) = self.enter().await else {
            return Self::reply(w, seq, status::MOVED, &[]).await;
        };
        self.calls_served.fetch_add(1, SeqCst);
        if kind == MethodKind::Read {
            let r = {
                let g = self.read_inner();
                match &g.state {
                    Some(s) => s.call_read(&method, &args).map_err(|e| e.to_string()),
                    None => Err("no state".to_string()),
                }
            };
            drop(guard);
            return match r {
                Ok(reply) => Self::reply(w, seq, status::OK, &reply).await,
                Err(e) => Self::reply(w, seq, status::ERROR, e.as_bytes()).await,
            };
        }

        let key: Key = (client.clone(), seq);
        enum Found {
            Cached(Arc<Vec<u8>>),
            Attach(watch::Receiver<Option<Outcome>>),
            New(watch::Sender<Option<Outcome>>),
        }
        let found = {
            let mut run = lock(&self.running);
            let cached = self
                .read_inner()
                .done
                .get(&client)
                .and_then(|m| m.get(&seq))
                .cloned();
            if let Some(r) = cached {
                Found::Cached(r)
            } else if let Some(e) = run.get(&key) {
                Found::Attach(e.rx.clone())
            } else {
                let (tx, rx) = watch::channel(None);
                let task = tokio::task::try_id()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into());
                run.insert(
                    key.clone(),
                    RunEntry {
                        method: method.clone(),
                        kind,
                        peer: peer.to_string(),
                        task,
                        started: Instant::now(),
                        rx,
                    },
                );
                Found::New(tx)
            }
        };
        let tx = match found {
            Found::Cached(r) => {
                drop(guard);
                return Self::reply(w, seq, status::OK, &r).await;
            }
            Found::Attach(rx) => {
                drop(guard);
                return self.await_outcome(seq, rx, w).await;
            }
            Found::New(tx) => tx,
        };
        if kind == MethodKind::Write {
            // Logged: every write, or only the `#[durable]` ones when any is marked.
            let log = match &self.durable_only {
                Some(ops) if !ops.contains(method.as_str()) => None,
                _ => lock(&self.log).clone(),
            };
            let mut logged = None;
            let outcome = {
                let mut g = self.write_inner();
                g.version += 1;
                prune(&mut g.done, &client, ack_below);
                // Durable: the call is in the log (on disk, in `each` mode) before it
                // is applied; a call the log refuses is not applied at all.
                let appended = match &log {
                    Some(log) => {
                        let entry = LogEntry {
                            seq: g.log_seq + 1,
                            client: client.clone(),
                            call_seq: seq,
                            method: method.clone(),
                            args,
                        };
                        let r = log.append(&entry);
                        match r {
                            Ok(()) => {
                                g.log_seq = entry.seq;
                                logged = Some(entry.seq);
                                Ok(entry.args)
                            }
                            Err(e) => {
                                tracing::error!(error = %e, %method, "durable call refused: not logged, not applied");
                                Err(format!("not applied: {e}"))
                            }
                        }
                    }
                    None => Ok(args),
                };
                let r = match (appended, g.state.as_mut()) {
                    (Err(e), _) => Err(e),
                    (Ok(args), Some(s)) => s.call_write(&method, &args).map_err(|e| e.to_string()),
                    (Ok(_), None) => Err("no state".to_string()),
                };
                match r {
                    Ok(reply) => {
                        let reply = Arc::new(reply);
                        g.done
                            .entry(client.clone())
                            .or_default()
                            .insert(seq, reply.clone());
                        Outcome::Reply(reply)
                    }
                    Err(e) => Outcome::Error(e),
                }
            };
            // Group commit: on disk before the reply (one fdatasync for many writes).
            let mut outcome = outcome;
            if let (Some(log), Some(n)) = (&log, logged) {
                if log.mode == SyncMode::Group {
                    if let Err(e) = log.sync_to(n).await {
                        tracing::error!(error = %e, %method, "durable call applied but not synced");
                        outcome = Outcome::Error(format!("applied but not durable: {e}"));
                    }
                }
            }
            lock(&self.running).remove(&key);
            tx.send_replace(Some(outcome.clone()));
            drop(guard);
            return self.send_outcome(seq, outcome, w).await;
        }

        // Resumable: record the operation at its first migration point, then run it in
        // its own task; this connection waits for the outcome like any retry would.
        let rx = tx.subscribe();
        let started = {
            let mut g = self.write_inner();
            g.version += 1;
            prune(&mut g.done, &client, ack_below);
            match S::initial_stage(&method) {
                Ok(stage) => {
                    g.ops.insert(
                        key.clone(),
                        OpRecord {
                            client: client.clone(),
                            seq,
                            method: method.clone(),
                            args,
                            stage,
                            steps: 0,
                        },
                    );
                    Ok(g.generation)
                }
                Err(e) => Err(e.to_string()),
            }
        };
        match started {
            Ok(generation) => {
                tokio::spawn(self.clone().run_op(key, generation, tx));
            }
            Err(e) => {
                lock(&self.running).remove(&key);
                tx.send_replace(Some(Outcome::Error(e)));
            }
        }
        drop(guard);
        self.await_outcome(seq, rx, w).await
    }

    /// Drives a resumable operation from its recorded stage. Each step runs under the
    /// state lock and records the next stage before releasing it: a migration point.
    async fn run_op(
        self: Arc<Self>,
        key: Key,
        generation: u64,
        tx: watch::Sender<Option<Outcome>>,
    ) {
        let task = tokio::task::try_id()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        if let Some(e) = lock(&self.running).get_mut(&key) {
            e.task = task;
        }
        loop {
            let Ok(guard) = self.enter().await else {
                return;
            };
            let (finished, pause) = {
                let mut g = self.write_inner();
                if g.generation != generation {
                    return;
                }
                g.version += 1;
                let Some(op) = g.ops.get(&key) else { return };
                let (method, args, stage) = (op.method.clone(), op.args.clone(), op.stage.clone());
                let Some(state) = g.state.as_mut() else {
                    return;
                };
                match state.step(&method, &args, &stage) {
                    Ok(StepOutcome::Next(st)) => {
                        if let Some(op) = g.ops.get_mut(&key) {
                            op.stage = st;
                            op.steps += 1;
                        }
                        (None, None)
                    }
                    Ok(StepOutcome::Sleep(st, d)) => {
                        if let Some(op) = g.ops.get_mut(&key) {
                            op.stage = st;
                            op.steps += 1;
                        }
                        (None, Some(d))
                    }
                    Ok(StepOutcome::Done(reply)) => {
                        g.ops.remove(&key);
                        let reply = Arc::new(reply);
                        g.done
                            .entry(key.0.clone())
                            .or_default()
                            .insert(key.1, reply.clone());
                        (Some(Outcome::Reply(reply)), None)
                    }
                    Err(e) => {
                        g.ops.remove(&key);
                        (Some(Outcome::Error(e.to_string())), None)
                    }
                }
            };
            drop(guard);
            if let Some(o) = finished {
                lock(&self.running).remove(&key);
                tx.send_replace(Some(o));
                return;
            }
            match pause {
                Some(d) => tokio::time::sleep(d).await,
                None => tokio::task::yield_now().await,
            }
        }
    }

    /// Registers and launches every recorded operation (after restore or thaw).
    fn launch_ops(self: &Arc<Self>) {
        let (ops, generation): (Vec<(Key, String)>, u64) = {
            let g = self.read_inner();
            (
                g.ops
                    .iter()
                    .map(|(k, o)| (k.clone(), o.method.clone()))
                    .collect(),
                g.generation,
            )
        };
        for (key, method) in ops {
            let (tx, rx) = watch::channel(None);
            lock(&self.running).insert(
                key.clone(),
                RunEntry {
                    method,
                    kind: MethodKind::Resumable,
                    peer: "(resumed)".into(),
                    task: "-".into(),
                    started: Instant::now(),
                    rx,
                },
            );
            tokio::spawn(self.clone().run_op(key, generation, tx));
        }
    }

    /// Encodes the checkpoint under the lock. `freeze` also retires running op tasks.
    fn capture(&self, freeze: bool, workers: &[WorkerRecord]) -> Captured {
        let t0 = Instant::now();
        let n_ops;
        let log_seq;
        let payload = {
            let mut g = self.write_inner();
            if freeze {
                g.generation += 1;
            }
            g.captured_version = Some(g.version);
            g.captured_worker_changes = self.workers.changes.load(SeqCst);
            log_seq = g.log_seq;
            let done: Vec<DoneCall> = g
                .done
                .iter()
                .flat_map(|(c, m)| {
                    m.iter().map(|(s, r)| DoneCall {
                        client: c.clone(),
                        seq: *s,
                        reply: r.to_vec(),
                    })
                })
                .collect();
            let ops: Vec<OpRecord> = g.ops.values().cloned().collect();
            n_ops = ops.len() as u64;
            let hint = lock(&self.last)
                .as_ref()
                .map(|l| l.payload_bytes as usize)
                .unwrap_or(0);
            let mut out = Vec::with_capacity(hint + 1024);
            let mut e = StructEncoder::begin(&mut out, 5);
            match g.state.as_ref() {
                Some(s) => e.field(1, s),
                None => e.field(1, &(self.factory)()),
            }
            e.field(2, &done);
            e.field(3, &ops);
            e.field(4, &workers.to_vec());
            e.field(5, &log_seq);
            out
        };
        Captured {
            payload,
            capture: t0.elapsed(),
            ops: n_ops,
            workers: workers.len() as u64,
            log_seq,
        }
    }

    /// The checkpoints of this instance in the store, oldest first.
    async fn stored(&self) -> Result<Vec<StoredCheckpoint>, ServiceError> {
        self.opts
            .store
            .list(&self.uuid)
            .await
            .map_err(|source| ServiceError::Store {
                stage: "list checkpoints",
                source,
            })
    }

    /// Continues the sequence after every checkpoint in the store: ids are never reused.
    fn continue_after(&self, list: &[StoredCheckpoint]) {
        let max = list
            .iter()
            .filter_map(StoredCheckpoint::seq)
            .max()
            .unwrap_or(0);
        self.next_seq.fetch_max(max + 1, SeqCst);
    }

    async fn quiesce(&self) {
        self.set_mode(HOLDING);
        self.withdraw().await;
        self.wait_idle().await;
    }

    /// Frames a capture as a checkpoint file (outside the lock) and ships it to the
    /// store under the next unused id, its parent being the instance's head.
    async fn upload(
        &self,
        c: Captured,
        pause: Duration,
        worker_wait: Duration,
    ) -> Result<CheckpointInfo, ServiceError> {
        let t = Instant::now();
        let parent = lock(&self.head).clone();
        let mut attempts = 0;
        let (seq, id, bytes) = loop {
            let seq = self.next_seq.fetch_add(1, SeqCst);
            let desc = Description {
                service: S::NAME.to_string(),
                uuid: self.uuid.clone(),
                seq,
                created_unix_ms: now_ms(),
                parent: parent.clone(),
                extra: json!({ "methods": self.methods_json }),
            };
            let file = checkpoint::write(&desc, &Envelope::<S>::schema(), &c.payload);
            let id = checkpoint_id(seq);
            let bytes = file.len() as u64;
            match self.opts.store.put(&self.uuid, &id, file).await {
                Ok(()) => break (seq, id, bytes),
                // Someone else's checkpoint holds that id (a store shared with an
                // instance we did not hear of): continue after the newest.
                Err(StoreError::Exists { .. }) if attempts < 3 => {
                    attempts += 1;
                    tracing::warn!(%id, "checkpoint id taken in the store; continuing after the newest");
                    let list = self.stored().await?;
                    self.continue_after(&list);
                }
                Err(source) => {
                    return Err(ServiceError::Store {
                        stage: "ship checkpoint",
                        source,
                    })
                }
            }
        };
        let info = CheckpointInfo {
            id: id.clone(),
            seq,
            bytes,
            payload_bytes: c.payload.len() as u64,
            unix_ms: now_ms(),
            pause,
            capture: c.capture,
            upload: t.elapsed(),
            ops: c.ops,
            workers: c.workers,
            worker_wait,
            log_seq: c.log_seq,
        };
        // The checkpoint is in the store: the log entries it covers can go.
        let log = lock(&self.log).clone();
        if let Some(log) = log {
            if let Err(e) = log.truncate_through(c.log_seq) {
                tracing::warn!(error = %e, "durable call log not cut at checkpoint {id} (its entries are skipped on replay)");
            }
        }
        *lock(&self.head) = Some(id.clone());
        *lock(&self.last) = Some(info.clone());
        self.apply_retention(&id).await;
        Ok(info)
    }

    /// Removes the checkpoints the retention policy does not keep (never `newest`).
    async fn apply_retention(&self, newest: &str) {
        let r = &self.opts.retention;
        let list = match self.stored().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot list the checkpoints");
                return;
            }
        };
        let now = now_ms();
        let (mut count, mut total) = (0u64, 0u64);
        for c in list.iter().rev() {
            count += 1;
            total = total.saturating_add(c.bytes);
            if c.id == newest {
                continue;
            }
            let too_old = match (r.max_age, c.created_unix_ms) {
                (Some(age), Some(t)) => now.saturating_sub(t) > age.as_millis() as u64,
                _ => false,
            };
            let why = if count > r.keep {
                Some(format!("more than {} kept", r.keep))
            } else if too_old {
                Some("older than the maximum age".to_string())
            } else if r.max_bytes.is_some_and(|m| total > m) {
                Some(format!(
                    "over {} bytes kept in total",
                    r.max_bytes.unwrap_or(0)
                ))
            } else {
                None
            };
            if let Some(why) = why {
                match self.opts.store.delete(&self.uuid, &c.id).await {
                    Ok(()) => tracing::debug!(id = %c.id, %why, "retention: checkpoint removed"),
                    Err(e) => tracing::warn!(id = %c.id, error = %e, "retention: cannot remove"),
                }
            }
        }
    }

    /// Checkpoint and carry on: hold, withdraw, drain, capture, re-advertise, release,
    /// then ship to the store.
    async fn checkpoint(&self) -> Result<CheckpointInfo, ServiceError> {
        let _m = self.mgmt.lock().await;
        if self.mode() != SERVING {
            return Err(ServiceError::WrongMode {
                op: "checkpoint",
                mode: mode_name(self.mode()),
            });
        }
        let t0 = Instant::now();
        self.quiesce().await;
        let (workers, waited) = match self.park_workers("checkpoint").await {
            Ok(w) => w,
            Err(e) => {
                self.resume_serving().await;
                return Err(e);
            }
        };
        let captured = self.capture(false, &workers);
        self.workers.release();
        let readv = self.advertise().await;
        self.set_mode(SERVING);
        let pause = t0.elapsed();
        readv?;
        self.upload(captured, pause, waited).await
    }

    /// Asks every worker to a safe point, bounded by `--worker-wait`; names those that
    /// do not come (and lets the others go on).
    async fn park_workers(
        &self,
        op: &'static str,
    ) -> Result<(Vec<WorkerRecord>, Duration), ServiceError> {
        let t = Instant::now();
        let wait = self.opts.worker_wait;
        match self.workers.park_all(wait).await {
            Ok(w) => Ok((w, t.elapsed())),
            Err(names) => {
                self.workers.release();
                let e = ServiceError::WorkersLate { op, names, wait };
                tracing::warn!(error = %e, "checkpoint refused");
                Err(e)
            }
        }
    }

    /// After a refused checkpoint: serving again, advertised.
    async fn resume_serving(&self) {
        if let Err(e) = self.advertise().await {
            tracing::warn!(error = %e, "re-advertise failed");
        }
        self.set_mode(SERVING);
    }

    /// Checkpoint for a migration: as `checkpoint`, but stay frozen: held calls and
    /// waiting clients are told MOVED, operations stop at their migration points.
    /// With `to`, the checkpoint goes straight to the new instance instead of the store
    /// (which it writes once it serves).
    async fn freeze(
        self: &Arc<Self>,
        to: Option<StreamTo>,
    ) -> Result<CheckpointInfo, ServiceError> {
        let _m = self.mgmt.lock().await;
        if self.mode() != SERVING {
            return Err(ServiceError::WrongMode {
                op: "freeze",
                mode: mode_name(self.mode()),
            });
        }
        let t0 = Instant::now();
        self.quiesce().await;
        let (workers, waited) = match self.park_workers("freeze").await {
            Ok(w) => w,
            Err(e) => {
                self.resume_serving().await;
                return Err(e);
            }
        };
        // Frozen: the workers stay at their safe points (released by a thaw, retired
        // when this instance stops).
        let captured = self.capture(true, &workers);
        self.set_mode(FROZEN);
        let pause = t0.elapsed();
        if let Some(to) = to {
            return self.hand_off(captured, pause, waited, to).await;
        }
        match self.upload(captured, pause, waited).await {
            Ok(info) => Ok(info),
            Err(e) => {
                tracing::warn!(error = %e, "freeze failed, thawing");
                self.thaw_locked().await?;
                Err(e)
            }
        }
    }

    /// Frames a frozen capture under the next id and streams it to the new instance;
    /// thaws when the new instance certainly did not take over.
    async fn hand_off(
        self: &Arc<Self>,
        c: Captured,
        pause: Duration,
        worker_wait: Duration,
        to: StreamTo,
    ) -> Result<CheckpointInfo, ServiceError> {
        let t = Instant::now();
        let parent = lock(&self.head).clone();
        let seq = self.next_seq.fetch_add(1, SeqCst);
        let desc = Description {
            service: S::NAME.to_string(),
            uuid: self.uuid.clone(),
            seq,
            created_unix_ms: now_ms(),
            parent,
            extra: json!({ "methods": self.methods_json }),
        };
        let head =
            checkpoint::frame_unsummed(&desc, &Envelope::<S>::schema(), c.payload.len() as u64);
        let id = checkpoint_id(seq);
        let bytes = (head.len() + c.payload.len()) as u64;
        match crate::handoff::send(&to.addr, &to.secret, &head, &c.payload, to.timeout).await {
            Ok(_) => {}
            Err(source) => {
                let thawed = source.new_instance_not_serving();
                tracing::warn!(error = %source, %id, thawed, "hand-off failed");
                if thawed {
                    // Serving again even when the re-advertise fails (the lease loop
                    // does not retry it: say so, but report the hand-off's failure).
                    if let Err(e) = self.thaw_locked().await {
                        tracing::error!(error = %e, "thawed after the failed hand-off, but not advertised again");
                    }
                }
                return Err(ServiceError::Handoff { source, thawed });
            }
        }
        let info = CheckpointInfo {
            id: id.clone(),
            seq,
            bytes,
            payload_bytes: c.payload.len() as u64,
            unix_ms: desc.created_unix_ms,
            pause,
            capture: c.capture,
            upload: t.elapsed(),
            ops: c.ops,
            workers: c.workers,
            worker_wait,
            log_seq: c.log_seq,
        };
        // The new instance writes the checkpoint to the store (and cuts the durable
        // call log) once it serves.
        tracing::info!(%id, to = %to.addr, bytes, "state handed off to the new instance");
        *lock(&self.head) = Some(id);
        *lock(&self.last) = Some(info.clone());
        Ok(info)
    }

    /// Opens a one-shot hand-off port (standby only) where the frozen old instance of
    /// a migration sends its checkpoint, authenticated by `secret`; returns its address.
    /// The state is restored as it arrives, then written to the store.
    async fn receive(
        self: &Arc<Self>,
        secret: String,
        timeout: Duration,
    ) -> Result<String, ServiceError> {
        let _m = self.mgmt.lock().await;
        if self.mode() != STANDBY {
            return Err(ServiceError::WrongMode {
                op: "receive",
                mode: mode_name(self.mode()),
            });
        }
        if secret.len() < 16 || secret.len() > crate::handoff::MAX_SECRET as usize {
            return Err(ServiceError::Receive(
                "the migration secret must be 16 to 1024 bytes".into(),
            ));
        }
        if self.receiving.swap(true, SeqCst) {
            return Err(ServiceError::Receive(
                "a hand-off port is already open".into(),
            ));
        }
        // Bound where the service port is; reached under its advertised host.
        let host = |a: &str| a.rsplit_once(':').map(|(h, _)| h.to_string());
        let bind = format!(
            "{}:0",
            host(&self.opts.listen).unwrap_or_else(|| "127.0.0.1".into())
        );
        let listener = match TcpListener::bind(&bind).await {
            Ok(l) => l,
            Err(e) => {
                self.receiving.store(false, SeqCst);
                return Err(ServiceError::Receive(format!("listen on {bind}: {e}")));
            }
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(e) => {
                self.receiving.store(false, SeqCst);
                return Err(ServiceError::Receive(format!("listen on {bind}: {e}")));
            }
        };
        let addr = format!(
            "{}:{port}",
            host(&self.address).unwrap_or_else(|| "127.0.0.1".into())
        );
        let sh = self.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::spawn(async move {
            sh.receive_task(listener, secret, deadline).await;
            sh.receiving.store(false, SeqCst);
        });
        tracing::info!(%addr, "hand-off port open for {timeout:?}");
        Ok(addr)
    }

    async fn receive_task(
        self: &Arc<Self>,
        listener: TcpListener,
        secret: String,
        deadline: tokio::time::Instant,
    ) {
        // The listing (ids to continue after) is taken while waiting, not after.
        let list = match self.stored().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list earlier checkpoints");
                Vec::new()
            }
        };
        let mut got = match crate::handoff::receive(listener, &secret, deadline).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "hand-off not received; still in standby");
                return;
            }
        };
        let _m = self.mgmt.lock().await;
        let file = std::mem::take(&mut got.file);
        match self.restore_streamed(&file, &list).await {
            Ok(info) => {
                got.answer(&json!({ "ok": true, "id": info.id, "checkpoint": info.to_json() }))
                    .await;
                tracing::info!(uuid = %self.uuid, id = %info.id, peer = %got.peer, "restored from a hand-off; writing it to the store");
                drop(got);
                self.store_handed_off(&info, file).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, peer = %got.peer, "hand-off refused; still in standby");
                got.answer(&json!({ "ok": false, "error": e.to_string() }))
                    .await;
            }
        }
    }

    /// Restores a handed-off checkpoint file (under the management lock, standby only).
    async fn restore_streamed(
        self: &Arc<Self>,
        file: &[u8],
        list: &[StoredCheckpoint],
    ) -> Result<CheckpointInfo, ServiceError> {
        if self.mode() != STANDBY {
            return Err(ServiceError::WrongMode {
                op: "restore",
                mode: mode_name(self.mode()),
            });
        }
        let t0 = Instant::now();
        // The CRC-32 was checked as the bytes arrived.
        let (desc, env) =
            checkpoint::read_crc_checked::<Envelope<S>>(file, S::NAME).map_err(|source| {
                ServiceError::Restore {
                    id: "(handed off)".into(),
                    source,
                }
            })?;
        let id = checkpoint_id(desc.seq);
        self.check_fetched(&id, &desc, &env)?;
        // The newest checkpoint of the instance, not yet in the store: the durable
        // log's writes (none: the old instance is frozen) follow it, no branch.
        self.install(t0, id, file.len() as u64, desc, env, list, true, false)
            .await
    }

    /// Writes a handed-off checkpoint to the store as it was received (its id and
    /// parent chosen by the old instance), then cuts the durable log and applies the
    /// retention policy, as after any checkpoint.
    async fn store_handed_off(&self, info: &CheckpointInfo, file: Vec<u8>) {
        let t = Instant::now();
        if let Err(e) = self.opts.store.put(&self.uuid, &info.id, file).await {
            tracing::error!(error = %e, id = %info.id, "the handed-off checkpoint could not be written to the store: the store's lineage lacks it (the next checkpoint names it as its parent; take a checkpoint to have one in the store)");
            return;
        }
        tracing::info!(id = %info.id, ms = t.elapsed().as_secs_f64() * 1e3, "handed-off checkpoint written to the store");
        let log = lock(&self.log).clone();
        if let Some(log) = log {
            if let Err(e) = log.truncate_through(info.log_seq) {
                tracing::warn!(error = %e, "durable call log not cut at checkpoint {}", info.id);
            }
        }
        self.apply_retention(&info.id).await;
    }

    async fn thaw_locked(self: &Arc<Self>) -> Result<(), ServiceError> {
        self.write_inner().generation += 1;
        self.workers.release();
        self.set_mode(SERVING);
        self.launch_ops();
        self.advertise().await
    }

    async fn thaw(self: &Arc<Self>) -> Result<(), ServiceError> {
        let _m = self.mgmt.lock().await;
        if self.mode() != FROZEN {
            return Err(ServiceError::WrongMode {
                op: "thaw",
                mode: mode_name(self.mode()),
            });
        }
        self.thaw_locked().await
    }

    async fn start(self: &Arc<Self>) -> Result<(), ServiceError> {
        let _m = self.mgmt.lock().await;
        if self.mode() != STANDBY {
            return Err(ServiceError::WrongMode {
                op: "start",
                mode: mode_name(self.mode()),
            });
        }
        // A given UUID may have checkpoints already: never reuse their ids.
        match self.stored().await {
            Ok(list) => self.continue_after(&list),
            Err(e) => tracing::warn!(error = %e, "cannot list earlier checkpoints"),
        }
        let mut state = (self.factory)();
        // Durable writes acknowledged before any checkpoint was taken.
        let (log, applied) = self.open_log(&mut state, 0, true, "fresh start")?;
        {
            let mut g = self.write_inner();
            g.state = Some(state);
            g.log_seq = applied.last_seq;
            for (client, seq, reply) in applied.replies {
                g.done
                    .entry(client)
                    .or_default()
                    .insert(seq, Arc::new(reply));
            }
        }
        *lock(&self.log) = log;
        self.workers.set_restored(Vec::new());
        self.set_mode(SERVING);
        let hooks = lock(&self.hooks).clone();
        if let Some(f) = &hooks.on_start {
            f(&Ctx {
                shared: self.clone(),
            });
        }
        self.advertise().await
    }

    /// Opens the durable call log (with `--durable-log`) and applies its entries after
    /// `covered` to `state`, in order, once each. `replay` false (a restore of an older
    /// checkpoint: a new branch) drops them instead, saying how many.
    fn open_log(
        &self,
        state: &mut S,
        covered: u64,
        replay: bool,
        what: &str,
    ) -> Result<(Option<Arc<CallLog>>, Replayed), ServiceError> {
        let mut out = Replayed {
            last_seq: covered,
            replies: Vec::new(),
        };
        let Some(dir) = &self.opts.durable_log else {
            return Ok((None, out));
        };
        let (log, entries) =
            CallLog::open(dir, &self.uuid, self.opts.durable_sync).map_err(|source| {
                ServiceError::Durable {
                    stage: "open the durable call log",
                    source,
                }
            })?;
        let after: Vec<&LogEntry> = entries.iter().filter(|e| e.seq > covered).collect();
        if !replay {
            if !after.is_empty() {
                tracing::warn!(
                    "restoring {what}, an older checkpoint, starts a new branch: {} logged write(s) of the abandoned branch are dropped from the durable call log",
                    after.len()
                );
            }
            log.clear().map_err(|source| ServiceError::Durable {
                stage: "clear the durable call log",
                source,
            })?;
            return Ok((Some(Arc::new(log)), out));
        }
        if let Some(first) = after.first() {
            if first.seq != covered + 1 {
                return Err(ServiceError::LogGap {
                    id: what.to_string(),
                    covered,
                    first: first.seq,
                });
            }
        }
        for e in &after {
            match state.call_write(&e.method, &e.args) {
                Ok(reply) => out.replies.push((e.client.clone(), e.call_seq, reply)),
                Err(err) => {
                    tracing::warn!(seq = e.seq, method = %e.method, error = %err, "logged call cannot be applied on replay (unknown to this build, or its arguments do not decode)")
                }
            }
            out.last_seq = e.seq;
        }
        if !after.is_empty() {
            tracing::info!(
                "durable call log: {} write(s) after {what} applied again",
                after.len()
            );
        }
        self.replayed.store(after.len() as u64, SeqCst);
        Ok((Some(Arc::new(log)), out))
    }

    /// Fetches and decodes one checkpoint.
    async fn fetch(
        &self,
        id: &str,
    ) -> Result<(String, u64, Description, Envelope<S>), ServiceError> {
        let (id, file) = self
            .opts
            .store
            .get(&self.uuid, id)
            .await
            .map_err(|source| ServiceError::Store {
                stage: "fetch checkpoint",
                source,
            })?;
        let bytes = file.len() as u64;
        let (desc, env) = checkpoint::read::<Envelope<S>>(&file, S::NAME).map_err(|source| {
            ServiceError::Restore {
                id: id.clone(),
                source,
            }
        })?;
        drop(file);
        self.check_fetched(&id, &desc, &env)?;
        Ok((id, bytes, desc, env))
    }

    /// Refuses a checkpoint of another instance or with operations this build cannot
    /// resume.
    fn check_fetched(
        &self,
        id: &str,
        desc: &Description,
        env: &Envelope<S>,
    ) -> Result<(), ServiceError> {
        if desc.uuid != self.uuid {
            return Err(ServiceError::WrongInstance {
                id: id.to_string(),
                found: desc.uuid.clone(),
                expected: self.uuid.clone(),
            });
        }
        for op in &env.ops {
            if self.methods.get(op.method.as_str()) != Some(&MethodKind::Resumable) {
                return Err(ServiceError::UnknownOp {
                    id: id.to_string(),
                    method: op.method.clone(),
                });
            }
        }
        Ok(())
    }

    /// `latest`: the newest checkpoint (the tip of the branch the service last ran on);
    /// a damaged one is skipped for the one before it (its parent, or the next older
    /// one when its description cannot be read), with a warning naming both.
    async fn fetch_latest(
        &self,
        list: &[StoredCheckpoint],
    ) -> Result<(String, u64, Description, Envelope<S>), ServiceError> {
        let Some(mut cur) = list.last().cloned() else {
            return Err(ServiceError::Store {
                stage: "fetch checkpoint",
                source: StoreError::NotFound {
                    uuid: self.uuid.clone(),
                    id: "latest".into(),
                },
            });
        };
        loop {
            let err = match self.fetch(&cur.id).await {
                Ok(x) => return Ok(x),
                Err(e @ ServiceError::Restore { .. }) => e,
                Err(e) => return Err(e),
            };
            let ServiceError::Restore { source, .. } = &err else {
                return Err(err);
            };
            if !checkpoint::is_damage(source) {
                return Err(err);
            }
            let before = cur
                .parent
                .as_ref()
                .and_then(|p| list.iter().find(|c| &c.id == p))
                // A parent is always older; anything else (a forged description) is
                // not followed, so the walk ends.
                .filter(|c| c.id < cur.id)
                .or_else(|| list.iter().rev().find(|c| c.id < cur.id));
            let Some(before) = before.cloned() else {
                tracing::error!(bad = %cur.id, error = %source, "checkpoint damaged and no checkpoint before it");
                return Err(err);
            };
            tracing::warn!(
                "checkpoint {} of {} is damaged ({source}); restoring {}, the one before it",
                cur.id,
                self.uuid,
                before.id
            );
            cur = before;
        }
    }

    async fn restore(self: &Arc<Self>, id: &str) -> Result<CheckpointInfo, ServiceError> {
        let _m = self.mgmt.lock().await;
        if self.mode() != STANDBY {
            return Err(ServiceError::WrongMode {
                op: "restore",
                mode: mode_name(self.mode()),
            });
        }
        let t0 = Instant::now();
        let want_latest = id == "latest";
        let (list, fetched) = if id == "latest" {
            let list = self.stored().await?;
            let f = self.fetch_latest(&list).await;
            (Ok(list), f)
        } else {
            // The listing (for the ids to continue after) costs no extra round trip.
            tokio::join!(self.stored(), self.fetch(id))
        };
        let (id, bytes, desc, env) = fetched?;
        let list = list?;
        let newest = list.last().map(|c| c.id.clone());
        // `latest` (also when a damaged tip was skipped: then the log must continue
        // the one restored, or the restore is refused) or the newest: the log's writes
        // follow this checkpoint. An older one: a new branch.
        let replay = want_latest || newest.as_deref() == Some(id.as_str());
        // Restoring an older checkpoint starts a branch: its first checkpoint, taken
        // now, is the newest, so `latest` is the tip of the branch that runs.
        let branch = newest.as_deref() != Some(id.as_str());
        self.install(t0, id, bytes, desc, env, &list, replay, branch)
            .await
    }

    /// Puts a fetched (or handed-off) checkpoint in place and starts serving it.
    #[allow(clippy::too_many_arguments)]
    async fn install(
        self: &Arc<Self>,
        t0: Instant,
        id: String,
        bytes: u64,
        desc: Description,
        env: Envelope<S>,
        list: &[StoredCheckpoint],
        replay: bool,
        branch: bool,
    ) -> Result<CheckpointInfo, ServiceError> {
        let capture = t0.elapsed();
        let ops = env.ops.len() as u64;
        let Envelope {
            mut state,
            done,
            ops: env_ops,
            workers,
            log_seq,
        } = env;
        let (log, applied) = self.open_log(&mut state, log_seq, replay, &id)?;
        {
            let mut g = self.write_inner();
            g.state = Some(state);
            g.log_seq = applied.last_seq;
            g.done.clear();
            for d in done {
                g.done
                    .entry(d.client)
                    .or_default()
                    .insert(d.seq, Arc::new(d.reply));
            }
            for (client, seq, reply) in applied.replies {
                g.done
                    .entry(client)
                    .or_default()
                    .insert(seq, Arc::new(reply));
            }
            g.ops = env_ops
                .into_iter()
                .map(|o| ((o.client.clone(), o.seq), o))
                .collect();
            g.generation += 1;
            g.captured_version = Some(g.version);
        }
        self.next_seq.store(desc.seq + 1, SeqCst);
        self.continue_after(list);
        *lock(&self.head) = Some(id.clone());
        *lock(&self.restored_from) = Some(id.clone());
        *lock(&self.log) = log;
        let branch = branch.then(|| self.capture(false, &workers));
        let n_workers = workers.len() as u64;
        self.workers.set_restored(workers);
        let info = CheckpointInfo {
            id: id.clone(),
            seq: desc.seq,
            bytes,
            payload_bytes: bytes.saturating_sub(checkpoint::HEADER_LEN as u64),
            unix_ms: desc.created_unix_ms,
            pause: t0.elapsed(),
            capture,
            upload: Duration::ZERO,
            ops,
            workers: n_workers,
            worker_wait: Duration::ZERO,
            log_seq,
        };
        *lock(&self.last) = Some(info.clone());
        self.set_mode(SERVING);
        self.launch_ops();
        let hooks = lock(&self.hooks).clone();
        if let Some(f) = hooks.on_restore.as_ref().or(hooks.on_start.as_ref()) {
            f(&Ctx {
                shared: self.clone(),
            });
        }
        let unclaimed = self.workers.unclaimed();
        if !unclaimed.is_empty() {
            tracing::warn!(
                ?unclaimed,
                "the checkpoint holds worker states no worker of this build claimed; they are kept in the next checkpoints"
            );
        }
        self.advertise().await?;
        tracing::info!(uuid = %self.uuid, %id, "restored");
        if let Some(c) = branch {
            match self.upload(c, Duration::ZERO, Duration::ZERO).await {
                Ok(b) => {
                    tracing::info!(%id, branch = %b.id, "restored an older checkpoint: a new branch starts at {}", b.id)
                }
                Err(e) => {
                    tracing::warn!(error = %e, %id, "restored an older checkpoint but could not write the first checkpoint of its branch")
                }
            }
        }
        Ok(info)
    }

    /// Stops: drain, optionally flush a final checkpoint, deregister, exit the run loop.
    async fn stop(
        self: &Arc<Self>,
        final_checkpoint: bool,
    ) -> Result<Option<CheckpointInfo>, ServiceError> {
        let _m = self.mgmt.lock().await;
        let mut info = None;
        if self.mode() == SERVING {
            let t0 = Instant::now();
            self.quiesce().await;
            if final_checkpoint {
                let (workers, waited) = match self.park_workers("stop").await {
                    Ok(w) => w,
                    Err(e) => {
                        self.resume_serving().await;
                        return Err(e);
                    }
                };
                let captured = self.capture(true, &workers);
                self.set_mode(STOPPING);
                self.workers.retire();
                info = Some(self.upload(captured, t0.elapsed(), waited).await?);
            }
        }
        self.workers.retire();
        self.set_mode(STOPPING);
        self.withdraw().await;
        self.shutdown.send_replace(true);
        Ok(info)
    }

    fn status(&self) -> Value {
        let (state_bytes, remembered, ops) = {
            let g = self.read_inner();
            let bytes = g.state.as_ref().map(|s| {
                let mut v = Vec::new();
                s.encode(&mut v);
                v.len()
            });
            let remembered: usize = g.done.values().map(|m| m.len()).sum();
            let ops: HashMap<Key, u64> = g.ops.iter().map(|(k, o)| (k.clone(), o.steps)).collect();
            (bytes, remembered, ops)
        };
        let in_flight: Vec<Value> = lock(&self.running)
            .iter()
            .map(|(k, e)| {
                json!({
                    "client": k.0, "seq": k.1, "method": e.method, "kind": e.kind.as_str(), "peer": e.peer,
                    "task": e.task, "running_ms": e.started.elapsed().as_millis() as u64,
                    "migration_points_passed": ops.get(k),
                })
            })
            .collect();
        json!({
            "ok": true,
            "service": S::NAME,
            "uuid": self.uuid,
            "address": self.address,
            "mode": mode_name(self.mode()),
            "pid": std::process::id(),
            // Where the program was, also once replaced or removed there (a
            // node that lacks it starts its registered copy: godwitd --program).
            "program": std::env::current_exe().ok().map(|p| {
                let p = p.display().to_string();
                p.strip_suffix(" (deleted)").map(str::to_string).unwrap_or(p)
            }),
            "relaunch_args": self.opts.relaunch_args,
            "call_token_file": self.opts.call_token_file.as_ref().map(|p| p.display().to_string()),
            "call_tls": self.opts.call_tls.as_ref().map(|t| json!({
                "cert": t.cert.display().to_string(),
                "client_ca": t.client_ca.display().to_string(),
            })),
            "names": self.opts.names.url(),
            "store": self.opts.store.url(),
            "state_bytes": state_bytes,
            "calls_in_flight": in_flight,
            "calls_served": self.calls_served.load(SeqCst),
            "completed_calls_remembered": remembered,
            "parked_ops": ops.len(),
            "interval_secs": self.interval.borrow().map(|d| d.as_secs_f64()),
            "retention": {
                "keep": self.opts.retention.keep,
                "max_age_secs": self.opts.retention.max_age.map(|d| d.as_secs_f64()),
                "max_bytes": self.opts.retention.max_bytes,
            },
            "last_checkpoint": lock(&self.last).as_ref().map(|l| l.to_json()),
            "restored_from": lock(&self.restored_from).clone(),
            "head": lock(&self.head).clone(),
            "workers": self.workers.status(),
            "worker_wait_secs": self.opts.worker_wait.as_secs_f64(),
            "durable": self.opts.durable_log.as_ref().map(|d| json!({
                "log": CallLog::path_for(d, &self.uuid).display().to_string(),
                "sync": self.opts.durable_sync.as_str(),
                "operations": match &self.durable_only {
                    Some(ops) => {
                        let mut ops: Vec<&str> = ops.iter().copied().collect();
                        ops.sort_unstable();
                        json!(ops)
                    }
                    None => json!("every write"),
                },
                "log_seq": self.read_inner().log_seq,
                "replayed_at_start": self.replayed.load(SeqCst),
            })),
        })
    }

    async fn manage_checked(self: &Arc<Self>, req: Value) -> Value {
        // Which agent started this instance: asked without a credential, so that a
        // client can find where to get one (the agent hands it to `operate` tokens).
        if req["op"] == "agent" {
            return json!({ "ok": true, "uuid": self.uuid, "agent": std::env::var("GODWIT_AGENT").ok() });
        }
        let accepted: Vec<&String> = [&self.opts.token, &self.opts.manage_token]
            .into_iter()
            .flatten()
            .collect();
        if !accepted.is_empty() {
            let given = req["token"].as_str().unwrap_or("");
            // Every candidate is compared, so the time does not tell which one matched.
            let matched = accepted.iter().fold(false, |m, t| {
                constant_time_eq(given.as_bytes(), t.as_bytes()) | m
            });
            if !matched {
                return json!({ "ok": false, "error": "unauthorized: missing or wrong management credential (a service started by godwitd accepts the credential that agent gives to `operate` tokens, not the operator's token)" });
            }
        }
        self.manage(req).await
    }

    async fn manage(self: &Arc<Self>, req: Value) -> Value {
        let op = req["op"].as_str().unwrap_or("");
        let fail = |e: ServiceError| json!({ "ok": false, "error": e.to_string() });
        let ckpt = |r: Result<CheckpointInfo, ServiceError>| match r {
            Ok(i) => json!({ "ok": true, "checkpoint": i.to_json() }),
            Err(e) => fail(e),
        };
        match op {
            "status" => self.status(),
            "checkpoint" => ckpt(self.checkpoint().await),
            "freeze" => {
                let to = match &req["stream_to"] {
                    Value::Null => None,
                    Value::String(addr) => {
                        let Some(secret) = req["secret"].as_str() else {
                            return json!({ "ok": false, "error": "freeze: `stream_to` needs the migration `secret` given to the new instance's `receive`" });
                        };
                        Some(StreamTo {
                            addr: addr.clone(),
                            secret: secret.to_string(),
                            timeout: Duration::from_secs_f64(
                                req["timeout_secs"]
                                    .as_f64()
                                    .unwrap_or(120.0)
                                    .clamp(1.0, 3600.0),
                            ),
                        })
                    }
                    _ => {
                        return json!({ "ok": false, "error": "freeze: `stream_to` must be HOST:PORT" })
                    }
                };
                ckpt(self.freeze(to).await)
            }
            "receive" => {
                let Some(secret) = req["secret"].as_str() else {
                    return json!({ "ok": false, "error": "receive: give the migration `secret`" });
                };
                let timeout = Duration::from_secs_f64(
                    req["timeout_secs"]
                        .as_f64()
                        .unwrap_or(60.0)
                        .clamp(1.0, 3600.0),
                );
                match self.receive(secret.to_string(), timeout).await {
                    Ok(address) => json!({ "ok": true, "address": address }),
                    Err(e) => fail(e),
                }
            }
            "restore" => ckpt(self.restore(req["id"].as_str().unwrap_or("latest")).await),
            "thaw" => match self.thaw().await {
                Ok(()) => json!({ "ok": true }),
                Err(e) => fail(e),
            },
            "start" => match self.start().await {
                Ok(()) => json!({ "ok": true }),
                Err(e) => fail(e),
            },
            "stop" => {
                let final_checkpoint = req["checkpoint"].as_bool().unwrap_or(true);
                match self.stop(final_checkpoint).await {
                    Ok(i) => json!({ "ok": true, "checkpoint": i.map(|i| i.to_json()) }),
                    Err(e) => fail(e),
                }
            }
            "interval" => {
                let Some(secs) = req["secs"].as_f64() else {
                    return json!({ "ok": false, "error": "interval: `secs` must be a number of seconds (0 turns periodic checkpoints off)" });
                };
                let iv = match crate::options::check_interval(secs) {
                    Ok(iv) => iv,
                    Err(e) => return json!({ "ok": false, "error": e }),
                };
                self.interval.send_replace(iv);
                json!({ "ok": true, "interval_secs": iv.map(|d| d.as_secs_f64()) })
            }
            other => {
                json!({ "ok": false, "error": format!("unknown management operation `{other}`") })
            }
        }
    }
}

/// Where a migration's freeze streams the checkpoint: the new instance's hand-off port
/// and the secret it was given.
struct StreamTo {
    addr: String,
    secret: String,
    timeout: Duration,
}

/// Durable-log entries applied again: the last sequence number, and the replies (by
/// client and call number) for the at-most-once table.
struct Replayed {
    last_seq: u64,
    replies: Vec<(String, u64, Vec<u8>)>,
}

/// Forgets completed calls the client acknowledged (every seq below `ack_below`).
fn prune(done: &mut HashMap<String, BTreeMap<u64, Arc<Vec<u8>>>>, client: &str, ack_below: u64) {
    if let Some(m) = done.get_mut(client) {
        if m.first_key_value().is_some_and(|(s, _)| *s < ack_below) {
            *m = m.split_off(&ack_below);
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs a service process: parses the standard options from the process arguments after
/// `skip` (the application's own leading arguments, which are also what a relaunch on
/// another node repeats), binds, and serves until stopped.
pub async fn run_service<S: Service>(
    relaunch_args: Vec<String>,
    args: Vec<String>,
    factory: impl Fn() -> S + Send + Sync + 'static,
) -> Result<(), RunError> {
    run_service_with(relaunch_args, args, factory, Hooks::new()).await
}

/// [`run_service`] with start and restore hooks (where a service starts its workers).
pub async fn run_service_with<S: Service>(
    relaunch_args: Vec<String>,
    args: Vec<String>,
    factory: impl Fn() -> S + Send + Sync + 'static,
    hooks: Hooks<S>,
) -> Result<(), RunError> {
    let mut opts = ServiceOptions::from_args(args)?;
    let mut relaunch = relaunch_args;
    relaunch.extend(opts.sdk_relaunch_options());
    opts.relaunch_args = relaunch;
    let server = Server::bind(opts, factory).await?.hooks(hooks);
    server.run().await?;
    Ok(())
}

/// Errors of [`run_service`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad options.
    #[error(transparent)]
    Options(#[from] crate::options::OptionsError),
    /// Runtime failure.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

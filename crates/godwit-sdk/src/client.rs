//! The generic client: binding by UUID, call ids, broken-binding detection, rebinding and
//! retries. Generated `<Type>Client`s wrap it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_names::{Names, NamesError};
pub use godwit_net::mtls::MutualClient;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;

use crate::codec::DecodeError;
use crate::service::MethodKind;
use crate::wire::{self, status, Call};

/// A call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer before the deadline, across every retry.
    #[error("`{method}` got no answer within {elapsed:?} after {attempts} attempts; last problem: {last}")]
    Deadline {
        /// Operation.
        method: String,
        /// Time spent.
        elapsed: Duration,
        /// Attempts made.
        attempts: u32,
        /// Last failure seen.
        last: String,
    },
    /// The service answered with an error (bad arguments, unknown operation).
    #[error("`{method}` failed on the service: {message}")]
    Remote {
        /// Operation.
        method: String,
        /// Message.
        message: String,
    },
    /// The service requires a call token (`--call-token-file`) and this client gave
    /// none, or another one ([`ClientOptions::call_token`]).
    #[error("`{method}` refused by the service: {message}")]
    Unauthorized {
        /// Operation.
        method: String,
        /// The service's reason.
        message: String,
    },
    /// The reply does not decode as the expected type.
    #[error("reply does not decode: {0}")]
    BadReply(DecodeError),
}

/// Client tuning.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// A binding is broken when no frame arrives for this long (calls in progress send
    /// heartbeats, so long operations do not trip it).
    pub silence_timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Give up on a call after this long.
    pub deadline: Duration,
    /// First retry delay; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// Token presented on every new connection (a HELLO frame), for a service started
    /// with `--call-token-file`. Default: the `GODWIT_CALL_TOKEN` environment variable,
    /// or none.
    pub call_token: Option<String>,
    /// Mutual TLS: connect over TLS with this client certificate, for a service started
    /// with `--tls-cert/--tls-key/--tls-client-ca`. Default: none (plain TCP).
    pub tls: Option<MutualClient>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            silence_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(120),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
            call_token: std::env::var("GODWIT_CALL_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            tls: None,
        }
    }
}

/// A connection's byte stream: plain TCP or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug)]
enum Target {
    Uuid { uuid: String, names: Names },
    Fixed(String),
}

struct Conn {
    addr: String,
    stream: BufReader<Box<dyn Io>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("addr", &self.addr).finish()
    }
}

#[derive(Debug)]
struct Inner {
    target: Target,
    id: [u8; 16],
    next_seq: AtomicU64,
    outstanding: Mutex<BTreeSet<u64>>,
    addr: Mutex<Option<String>>,
    pool: Mutex<Vec<Conn>>,
    opts: ClientOptions,
    rebinds: AtomicU64,
}

/// A client of one service instance, found by UUID (or at a fixed address). Cheap to
/// clone; clones share the client id, the binding and the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a single insert/remove/replace: a poisoned lock
    // still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Attempt {
    Done(Vec<u8>),
    Retry(String),
    Fatal(String),
}

impl Client {
    /// A client that finds service `uuid` through `names`.
    pub fn by_uuid(uuid: &str, names: Names, opts: ClientOptions) -> Self {
        Self::new(
            Target::Uuid {
                uuid: uuid.to_string(),
                names,
            },
            opts,
        )
    }

    /// A client of the service at a fixed address (no rebinding beyond reconnecting).
    pub fn at(addr: &str, opts: ClientOptions) -> Self {
        Self::new(Target::Fixed(addr.to_string()), opts)
    }

    fn new(target: Target, opts: ClientOptions) -> Self {
        Client {
            inner: Arc::new(Inner {
                target,
                id: *uuid::Uuid::new_v4().as_bytes(),
                next_seq: AtomicU64::new(1),
                outstanding: Mutex::new(BTreeSet::new()),
                addr: Mutex::new(None),
                pool: Mutex::new(Vec::new()),
                opts,
                rebinds: AtomicU64::new(0),
            }),
        }
    }

    /// This client's id (UUID text), as the service sees it.
    pub fn id(&self) -> String {
        uuid::Uuid::from_bytes(self.inner.id).to_string()
    }

    /// How many times the binding was found broken and re-resolved.
    pub fn rebinds(&self) -> u64 {
        self.inner.rebinds.load(Ordering::Relaxed)
    }

    /// The address currently bound, if any.
    pub fn bound_address(&self) -> Option<String> {
        lock(&self.inner.addr).clone()
    }

    async fn resolve(&self) -> Result<Option<String>, NamesError> {
        if let Some(a) = lock(&self.inner.addr).clone() {
            return Ok(Some(a));
        }
        let found = match &self.inner.target {
            Target::Fixed(a) => Some(a.clone()),
            Target::Uuid { uuid, names } => names.resolve(uuid).await?,
        };
        if let Some(a) = &found {
            *lock(&self.inner.addr) = Some(a.clone());
        }
        Ok(found)
    }

    fn unbind(&self, addr: &str) {
        let mut cur = lock(&self.inner.addr);
        if cur.as_deref() == Some(addr) {
            *cur = None;
            self.inner.rebinds.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.inner.pool).retain(|c| c.addr != addr);
    }

    /// Sends one call and waits for its answer, retrying (same call id) across broken
    /// bindings and moves until the deadline. Used by generated clients.
    pub async fn call(
        &self,
        method: &str,
        _kind: MethodKind,
        args: Vec<u8>,
    ) -> Result<Vec<u8>, CallError> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.outstanding).insert(seq);
        let result = self.call_seq(method, seq, args).await;
        lock(&self.inner.outstanding).remove(&seq);
        result
    }

    async fn call_seq(&self, method: &str, seq: u64, args: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let start = Instant::now();
        let opts = &self.inner.opts;
        let mut backoff = opts.backoff;
        let mut attempts = 0;
        let mut last = String::from("none");
        while start.elapsed() < opts.deadline {
            attempts += 1;
            match self.attempt(method, seq, &args).await {
                Attempt::Done(reply) => return Ok(reply),
                Attempt::Fatal(message) if message.starts_with("unauthorized:") => {
                    return Err(CallError::Unauthorized {
                        method: method.to_string(),
                        message,
                    })
                }
                Attempt::Fatal(message) => {
                    return Err(CallError::Remote {
                        method: method.to_string(),
                        message,
                    })
                }
                Attempt::Retry(why) => {
                    tracing::debug!(method, seq, %why, "retrying");
                    last = why;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(opts.max_backoff);
                }
            }
        }
        Err(CallError::Deadline {
            method: method.to_string(),
            elapsed: start.elapsed(),
            attempts,
            last,
        })
    }

    async fn attempt(&self, method: &str, seq: u64, args: &[u8]) -> Attempt {
        let opts = &self.inner.opts;
        let addr = match self.resolve().await {
            Ok(Some(a)) => a,
            Ok(None) => return Attempt::Retry("service not registered (moving?)".into()),
            Err(e) => return Attempt::Retry(format!("name service: {e}")),
        };
        let pooled = {
            let mut pool = lock(&self.inner.pool);
            let i = pool.iter().position(|c| c.addr == addr);
            i.map(|i| pool.swap_remove(i))
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(&addr)).await {
                    Ok(Ok(tcp)) => {
                        let _ = tcp.set_nodelay(true);
                        let mut s: Box<dyn Io> = match &opts.tls {
                            None => Box::new(tcp),
                            Some(tls) => match tls.connect(tcp, &addr).await {
                                Ok(s) => Box::new(s),
                                Err(e) => {
                                    self.unbind(&addr);
                                    return match refusal(&e) {
                                        Some(why) => Attempt::Fatal(format!("unauthorized: {why}")),
                                        None => Attempt::Retry(e.to_string()),
                                    };
                                }
                            },
                        };
                        if let Some(t) = &opts.call_token {
                            if let Err(e) =
                                wire::write_frame(&mut s, wire::kind::HELLO, &[t.as_bytes()]).await
                            {
                                self.unbind(&addr);
                                return Attempt::Retry(format!("send to {addr}: {e}"));
                            }
                        }
                        Conn {
                            addr: addr.clone(),
                            stream: BufReader::new(s),
                        }
                    }
                    Ok(Err(e)) => {
                        self.unbind(&addr);
                        return Attempt::Retry(format!("connect {addr}: {e}"));
                    }
                    Err(_) => {
                        self.unbind(&addr);
                        return Attempt::Retry(format!("connect {addr}: timed out"));
                    }
                }
            }
        };
        let ack_below = lock(&self.inner.outstanding)
            .first()
            .copied()
            .unwrap_or(seq);
        let call = Call {
            client: self.inner.id,
            seq,
            ack_below,
            method: method.to_string(),
            args: args.to_vec(),
        };
        if let Err(e) = wire::write_frame(
            conn.stream.get_mut(),
            wire::kind::CALL,
            &[&wire::encode_call(&call)],
        )
        .await
        {
            self.unbind(&addr);
            if let wire::WireError::Io(io) = &e {
                if let Some(why) = godwit_net::mtls::tls_refusal(io) {
                    return Attempt::Fatal(format!("unauthorized: {addr}: {why}"));
                }
            }
            return Attempt::Retry(format!("send to {addr}: {e}"));
        }
        loop {
            let frame =
                tokio::time::timeout(opts.silence_timeout, wire::read_frame(&mut conn.stream))
                    .await;
            let (kind, body) = match frame {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    self.unbind(&addr);
                    // With TLS 1.3 the service checks our certificate after the client
                    // side of the handshake is done: its refusal arrives here.
                    if let wire::WireError::Io(io) = &e {
                        if let Some(why) = godwit_net::mtls::tls_refusal(io) {
                            return Attempt::Fatal(format!("unauthorized: {addr}: {why}"));
                        }
                    }
                    return Attempt::Retry(format!("read from {addr}: {e}"));
                }
                Err(_) => {
                    self.unbind(&addr);
                    return Attempt::Retry(format!("{addr} silent for {:?}", opts.silence_timeout));
                }
            };
            let parsed = if kind == wire::kind::REPLY {
                wire::decode_reply(&body).ok()
            } else {
                None
            };
            let Some((rseq, st, payload)) = parsed else {
                self.unbind(&addr);
                return Attempt::Retry(format!("{addr} sent a malformed frame"));
            };
            if rseq != seq {
                self.unbind(&addr);
                return Attempt::Retry(format!("{addr} answered seq {rseq} instead of {seq}"));
            }
            match st {
                status::PENDING => continue,
                status::OK => {
                    let reply = payload.to_vec();
                    lock(&self.inner.pool).push(conn);
                    return Attempt::Done(reply);
                }
                status::MOVED => {
                    self.unbind(&addr);
                    return Attempt::Retry(format!("{addr}: service moved or not serving"));
                }
                status::ERROR => {
                    return Attempt::Fatal(String::from_utf8_lossy(payload).into_owned())
                }
                other => {
                    self.unbind(&addr);
                    return Attempt::Retry(format!("{addr}: unknown status {other}"));
                }
            }
        }
    }
}

/// A handshake failure that retrying will not fix (a certificate refused either way).
fn refusal(e: &godwit_net::NetError) -> Option<String> {
    match e {
        godwit_net::NetError::Handshake { peer, source } => {
            godwit_net::mtls::tls_refusal(source).map(|why| format!("{peer}: {why}"))
        }
        godwit_net::NetError::TlsSetup(why) => Some(why.clone()),
        _ => None,
    }
}

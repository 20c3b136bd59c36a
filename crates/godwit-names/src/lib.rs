//! The Godwit name service: maps a service UUID to its current address under a lease.
//!
//! Three backends behind one type, [`Names`]:
//! - `memory`: an in-process [`Registry`] (tests, single-process use);
//! - `agent://HOST:PORT`: the registry embedded in a `godwitd`, over the authenticated
//!   channel of godwit-net (TLS + token binding, see docs/API.md). `agent+http://` is
//!   accepted as an alias of `agent://` and means the same TLS channel: there is no
//!   plain-HTTP agent any more;
//! - `etcd+http://HOST:PORT`: an etcd v3 cluster through its gRPC API (the
//!   `etcd-client` crate), connected on first use.
//!
//! Semantics shared by all backends:
//! - [`Names::advertise`] binds `uuid -> address` for a lease of `ttl`; [`Names::refresh`]
//!   extends it. A binding whose lease ran out is invisible to [`Names::resolve`].
//! - [`Names::withdraw`] removes the binding only while it still names the given address
//!   (compare-and-delete), so an old instance stopping after a migration never removes the
//!   new instance's binding.

mod registry;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use godwit_net::http::{HttpRequest, HttpResponse};
use godwit_net::{ClientTls, NetError, Token};
pub use registry::{Record, Registry};
use serde_json::json;

/// Errors of name-service operations.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The name-service URL is not understood.
    #[error("unknown name service `{0}`: expected `memory`, `agent://HOST:PORT` or `etcd+http://HOST:PORT`")]
    BadUrl(String),
    /// The agent backend was given no token, or a bad one, or a bad CA file.
    #[error("name service {backend}: {detail}")]
    Setup {
        /// Backend URL.
        backend: String,
        /// What is missing or wrong.
        detail: String,
    },
    /// The backend could not be reached or answered garbage.
    #[error("name service {backend}: {source}")]
    Transport {
        /// Backend URL.
        backend: String,
        /// Cause.
        source: NetError,
    },
    /// The backend refused the request.
    #[error("name service {backend} refused {op}: HTTP {status}: {message}")]
    Refused {
        /// Backend URL.
        backend: String,
        /// Operation.
        op: &'static str,
        /// HTTP status.
        status: u16,
        /// Message from the backend.
        message: String,
    },
    /// An etcd request failed.
    #[error("name service {backend}: {op}: {source}")]
    Etcd {
        /// Backend URL.
        backend: String,
        /// Operation.
        op: &'static str,
        /// Cause.
        source: etcd_client::Error,
    },
    /// The backend did not answer in time.
    #[error("name service {backend}: no answer to {op} within {timeout:?}")]
    Timeout {
        /// Backend URL.
        backend: String,
        /// Operation.
        op: &'static str,
        /// Time allowed.
        timeout: Duration,
    },
    /// The backend's answer lacks something we need.
    #[error("name service {backend}: unexpected answer to {op}: {detail}")]
    Protocol {
        /// Backend URL.
        backend: String,
        /// Operation.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// A binding held by an advertiser.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Service UUID.
    pub uuid: String,
    /// Address advertised.
    pub address: String,
    /// Lease length.
    pub ttl: Duration,
    /// etcd lease id, for the etcd backend.
    etcd_lease: Option<i64>,
}

/// A name-service client.
#[derive(Debug, Clone)]
pub enum Names {
    /// An in-process registry.
    Memory(Arc<Registry>),
    /// The registry of a godwitd, over the authenticated channel.
    Agent {
        /// `HOST:PORT`.
        addr: String,
        /// The channel's client side (token, CA); `None` when no token was given:
        /// every call then fails with [`NamesError::Setup`].
        client: Option<ClientTls>,
    },
    /// An etcd cluster through its v3 gRPC API.
    Etcd {
        /// `HOST:PORT`.
        addr: String,
        /// The client, connected on first use and shared by clones.
        client: EtcdClient,
        /// Key prefix, `/godwit/services/` by default.
        prefix: String,
    },
}

const ETCD_PREFIX: &str = "/godwit/services/";

/// The etcd connection of an [`Names::Etcd`], made on first use.
#[derive(Clone, Default)]
pub struct EtcdClient(Arc<tokio::sync::OnceCell<etcd_client::Client>>);

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.initialized() {
            "EtcdClient(connected)"
        } else {
            "EtcdClient(not connected)"
        })
    }
}

const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

impl Names {
    /// Parses `memory`, `agent://HOST:PORT` (alias `agent+http://HOST:PORT`, also TLS)
    /// or `etcd+http://HOST:PORT`. `memory` makes a new private registry; `token` is
    /// what the agent backend proves (no CA: the token binding authenticates the agent).
    pub fn from_url(url: &str, token: Option<String>) -> Result<Self, NamesError> {
        Self::from_url_with_ca(url, token, None)
    }

    /// [`Names::from_url`] with a CA file: the agent's certificate is then verified
    /// (PKI mode) on top of the token binding.
    pub fn from_url_with_ca(
        url: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Self, NamesError> {
        if url == "memory" {
            return Ok(Names::Memory(Arc::new(Registry::default())));
        }
        if let Some(addr) = agent_addr(url) {
            let setup = |e: NetError| NamesError::Setup {
                backend: format!("agent://{addr}"),
                detail: e.to_string(),
            };
            let client = match token {
                Some(t) => Some(ClientTls::new(Token::new(t).map_err(setup)?, ca).map_err(setup)?),
                None => None,
            };
            return Ok(Names::Agent {
                addr: addr.to_string(),
                client,
            });
        }
        if let Some(rest) = url.strip_prefix("etcd+http://") {
            let addr = rest.trim_end_matches('/');
            check_hostport(addr).ok_or_else(|| NamesError::BadUrl(url.to_string()))?;
            return Ok(Names::Etcd {
                addr: addr.to_string(),
                client: EtcdClient::default(),
                prefix: ETCD_PREFIX.to_string(),
            });
        }
        Err(NamesError::BadUrl(url.to_string()))
    }

    /// The agent backend at `addr` (HOST:PORT) with a ready client.
    pub fn with_agent(addr: &str, client: ClientTls) -> Self {
        Names::Agent {
            addr: addr.to_string(),
            client: Some(client),
        }
    }

    /// The etcd backend under another key prefix (e.g. `/godwit/nodes/`, for the
    /// agents' membership); other backends are returned as they are.
    pub fn with_prefix(self, new: &str) -> Self {
        match self {
            Names::Etcd { addr, client, .. } => Names::Etcd {
                addr,
                client,
                prefix: new.to_string(),
            },
            other => other,
        }
    }

    /// The URL form of this client (inverse of [`Names::from_url`]; `memory` for in-process).
    pub fn url(&self) -> String {
        match self {
            Names::Memory(_) => "memory".into(),
            Names::Agent { addr, .. } => format!("agent://{addr}"),
            Names::Etcd { addr, .. } => format!("etcd+http://{addr}"),
        }
    }

    fn backend(&self) -> String {
        self.url()
    }

    async fn agent(
        &self,
        op: &'static str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<HttpResponse, NamesError> {
        let Names::Agent { addr, client } = self else {
            unreachable!("agent() on a non-agent backend")
        };
        let client = client.as_ref().ok_or_else(|| NamesError::Setup {
            backend: self.backend(),
            detail: "no token: give the service a token (--token-file or GODWIT_TOKEN)".into(),
        })?;
        let mut req = HttpRequest::new(method, path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.timeout = Duration::from_secs(5);
        let resp = client
            .request(addr, &req)
            .await
            .map_err(|source| NamesError::Transport {
                backend: self.backend(),
                source,
            })?;
        if resp.status >= 300 && resp.status != 404 {
            return Err(NamesError::Refused {
                backend: self.backend(),
                op,
                status: resp.status,
                message: resp.error_message(),
            });
        }
        Ok(resp)
    }

    /// Runs one etcd operation (with a connected client, under a deadline).
    async fn etcd<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, NamesError>
    where
        F: FnOnce(etcd_client::Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let Names::Etcd { addr, client, .. } = self else {
            unreachable!("etcd() on a non-etcd backend")
        };
        let fut = async {
            let c = client
                .0
                .get_or_try_init(|| async {
                    let opts = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(ETCD_TIMEOUT)
                        .with_timeout(ETCD_TIMEOUT);
                    etcd_client::Client::connect([format!("http://{addr}")], Some(opts)).await
                })
                .await
                .map_err(|source| NamesError::Etcd {
                    backend: self.backend(),
                    op: "connect",
                    source,
                })?
                .clone();
            f(c).await.map_err(|source| NamesError::Etcd {
                backend: self.backend(),
                op,
                source,
            })
        };
        tokio::time::timeout(ETCD_TIMEOUT * 2, fut)
            .await
            .map_err(|_| NamesError::Timeout {
                backend: self.backend(),
                op,
                timeout: ETCD_TIMEOUT * 2,
            })?
    }

    fn json(&self, resp: &HttpResponse) -> Result<serde_json::Value, NamesError> {
        resp.json().map_err(|source| NamesError::Transport {
            backend: self.backend(),
            source,
        })
    }

    fn protocol(&self, op: &'static str, detail: impl Into<String>) -> NamesError {
        NamesError::Protocol {
            backend: self.backend(),
            op,
            detail: detail.into(),
        }
    }

    /// Binds `uuid -> address` for `ttl`. Replaces any earlier binding of `uuid`.
    pub async fn advertise(
        &self,
        uuid: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Lease, NamesError> {
        let mut lease = Lease {
            uuid: uuid.to_string(),
            address: address.to_string(),
            ttl,
            etcd_lease: None,
        };
        match self {
            Names::Memory(reg) => reg.advertise(uuid, address, ttl),
            Names::Agent { .. } => {
                let body = json!({ "address": address, "ttl_ms": ttl.as_millis() as u64 });
                self.agent("advertise", "PUT", &format!("/v1/names/{uuid}"), Some(body))
                    .await?;
            }
            Names::Etcd { prefix, .. } => {
                let secs = ttl.as_secs().max(1) as i64;
                let id = self
                    .etcd("lease grant", |mut c| async move {
                        c.lease_grant(secs, None).await
                    })
                    .await?
                    .id();
                let key = format!("{prefix}{uuid}");
                let value = address.to_string();
                self.etcd("put", |mut c| async move {
                    c.put(
                        key,
                        value,
                        Some(etcd_client::PutOptions::new().with_lease(id)),
                    )
                    .await
                })
                .await?;
                lease.etcd_lease = Some(id);
            }
        }
        Ok(lease)
    }

    /// Extends a lease; re-creates the binding if the lease had run out.
    pub async fn refresh(&self, lease: &mut Lease) -> Result<(), NamesError> {
        match self {
            Names::Memory(_) | Names::Agent { .. } => {
                *lease = self
                    .advertise(&lease.uuid, &lease.address, lease.ttl)
                    .await?;
            }
            Names::Etcd { prefix, .. } => {
                let alive = match lease.etcd_lease {
                    Some(id) => {
                        let r = self
                            .etcd("lease keepalive", |mut c| async move {
                                let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
                                keeper.keep_alive().await?;
                                stream.message().await
                            })
                            .await?;
                        r.is_some_and(|r| r.ttl() > 0)
                    }
                    None => false,
                };
                match (alive, lease.etcd_lease) {
                    // Re-put under the live lease: restores a binding deleted meanwhile.
                    (true, Some(id)) => {
                        let key = format!("{prefix}{}", lease.uuid);
                        let value = lease.address.clone();
                        self.etcd("put", |mut c| async move {
                            c.put(
                                key,
                                value,
                                Some(etcd_client::PutOptions::new().with_lease(id)),
                            )
                            .await
                        })
                        .await?;
                    }
                    _ => {
                        *lease = self
                            .advertise(&lease.uuid, &lease.address, lease.ttl)
                            .await?
                    }
                }
            }
        }
        Ok(())
    }

    /// The address currently bound to `uuid`, if any.
    pub async fn resolve(&self, uuid: &str) -> Result<Option<String>, NamesError> {
        match self {
            Names::Memory(reg) => Ok(reg.resolve(uuid)),
            Names::Agent { .. } => {
                let resp = self
                    .agent("resolve", "GET", &format!("/v1/names/{uuid}"), None)
                    .await?;
                if resp.status == 404 {
                    return Ok(None);
                }
                let v = self.json(&resp)?;
                let addr = v["address"]
                    .as_str()
                    .ok_or_else(|| self.protocol("resolve", v.to_string()))?;
                Ok(Some(addr.to_string()))
            }
            Names::Etcd { prefix, .. } => {
                let key = format!("{prefix}{uuid}");
                let r = self
                    .etcd("get", |mut c| async move { c.get(key, None).await })
                    .await?;
                let Some(kv) = r.kvs().first() else {
                    return Ok(None);
                };
                let v = kv
                    .value_str()
                    .map_err(|e| self.protocol("get", format!("value is not UTF-8: {e}")))?;
                Ok(Some(v.to_string()))
            }
        }
    }

    /// Removes the binding of `uuid` if it still names `address`. Returns whether it did.
    pub async fn withdraw(&self, uuid: &str, address: &str) -> Result<bool, NamesError> {
        match self {
            Names::Memory(reg) => Ok(reg.withdraw(uuid, Some(address))),
            Names::Agent { .. } => {
                let path = format!(
                    "/v1/names/{uuid}?address={}",
                    godwit_net::http::percent_encode(address)
                );
                let resp = self.agent("withdraw", "DELETE", &path, None).await?;
                if resp.status == 404 {
                    return Ok(false);
                }
                let v = self.json(&resp)?;
                Ok(v["removed"].as_bool().unwrap_or(false))
            }
            Names::Etcd { prefix, .. } => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let key = format!("{prefix}{uuid}");
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, address)])
                    .and_then([TxnOp::delete(key, None)]);
                let r = self
                    .etcd("txn", |mut c| async move { c.txn(txn).await })
                    .await?;
                Ok(r.succeeded())
            }
        }
    }

    /// Every live binding.
    pub async fn list(&self) -> Result<Vec<Record>, NamesError> {
        match self {
            Names::Memory(reg) => Ok(reg.list()),
            Names::Agent { .. } => {
                let resp = self.agent("list", "GET", "/v1/names", None).await?;
                let v = self.json(&resp)?;
                let arr = v["services"]
                    .as_array()
                    .ok_or_else(|| self.protocol("list", v.to_string()))?;
                Ok(arr
                    .iter()
                    .filter_map(|e| {
                        Some(Record {
                            uuid: e["uuid"].as_str()?.to_string(),
                            address: e["address"].as_str()?.to_string(),
                            expires_in: Duration::from_millis(
                                e["expires_in_ms"].as_u64().unwrap_or(0),
                            ),
                        })
                    })
                    .collect())
            }
            Names::Etcd { prefix, .. } => {
                let p = prefix.clone();
                let r = self
                    .etcd("get", |mut c| async move {
                        c.get(p, Some(etcd_client::GetOptions::new().with_prefix()))
                            .await
                    })
                    .await?;
                Ok(r.kvs()
                    .iter()
                    .filter_map(|kv| {
                        let key = kv.key_str().ok()?;
                        Some(Record {
                            uuid: key.strip_prefix(prefix.as_str())?.to_string(),
                            address: kv.value_str().ok()?.to_string(),
                            expires_in: Duration::ZERO,
                        })
                    })
                    .collect())
            }
        }
    }
}

/// The `HOST:PORT` of an agent URL (`agent://HOST:PORT` or its alias
/// `agent+http://HOST:PORT`), `None` for other URLs.
pub fn agent_addr(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("agent://")
        .or_else(|| url.strip_prefix("agent+http://"))?;
    let addr = rest.trim_end_matches('/');
    check_hostport(addr)
}

fn check_hostport(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    (!host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(agent_addr("agent://10.0.0.1:7070"), Some("10.0.0.1:7070"));
        assert_eq!(agent_addr("agent+http://h:1/"), Some("h:1"));
        assert_eq!(agent_addr("agent://nohost"), None);
        assert_eq!(agent_addr("etcd+http://h:1"), None);
        let n = Names::from_url("agent+http://10.0.0.1:7070", None).unwrap();
        assert_eq!(n.url(), "agent://10.0.0.1:7070");
        let n = Names::from_url("etcd+http://10.0.0.1:2379/", None).unwrap();
        assert_eq!(n.url(), "etcd+http://10.0.0.1:2379");
        assert!(matches!(
            Names::from_url("zk://x:1", None),
            Err(NamesError::BadUrl(_))
        ));
        assert!(matches!(
            Names::from_url("agent://h:1", Some("short".into())),
            Err(NamesError::Setup { .. })
        ));
    }

    #[tokio::test]
    async fn agent_without_token_says_so() {
        let n = Names::from_url("agent://127.0.0.1:9", None).unwrap();
        let e = n.resolve("x").await.unwrap_err().to_string();
        assert!(e.contains("no token"), "{e}");
    }
}

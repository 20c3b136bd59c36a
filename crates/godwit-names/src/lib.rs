//! The Godwit name service: maps a service UUID to its current address under a lease.
//!
//! Three backends behind one type, [`Names`]:
//! - `memory`: an in-process [`Registry`] (tests, single-process use);
//! - `agent://HOST:PORT`: the registry embedded in a `godwitd`, over the authenticated
//!   channel of godwit-net (TLS + token binding, see docs/API.md). `agent+http://` is
//!   accepted as an alias of `agent://` and means the same TLS channel: there is no
//!   plain-HTTP agent any more;
//! - `etcd+http://HOST:PORT`: an etcd v3 cluster through its HTTP/JSON gateway (hyper's
//!   client over plain TCP).
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

use base64::Engine as _;
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
    /// An etcd cluster through its v3 JSON gateway.
    Etcd {
        /// `HOST:PORT`.
        addr: String,
        /// Key prefix, `/godwit/services/` by default.
        prefix: String,
    },
}

const ETCD_PREFIX: &str = "/godwit/services/";

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

/// etcd's gateway renders int64 as JSON strings.
fn json_i64(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

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

    async fn etcd(
        &self,
        op: &'static str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, NamesError> {
        let Names::Etcd { addr, .. } = self else {
            unreachable!("etcd() on a non-etcd backend")
        };
        let mut req = HttpRequest::new("POST", path).json(&body);
        req.timeout = Duration::from_secs(3);
        let resp = godwit_net::http::request_plain(addr, &req)
            .await
            .map_err(|source| NamesError::Transport {
                backend: self.backend(),
                source,
            })?;
        if resp.status != 200 {
            return Err(NamesError::Refused {
                backend: self.backend(),
                op,
                status: resp.status,
                message: String::from_utf8_lossy(&resp.body).into_owned(),
            });
        }
        self.json(&resp)
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
                let secs = ttl.as_secs().max(1);
                let grant = self
                    .etcd("lease grant", "/v3/lease/grant", json!({ "TTL": secs }))
                    .await?;
                let id = json_i64(&grant["ID"])
                    .ok_or_else(|| self.protocol("lease grant", grant.to_string()))?;
                let key = format!("{prefix}{uuid}");
                self.etcd(
                    "put",
                    "/v3/kv/put",
                    json!({ "key": b64(key.as_bytes()), "value": b64(address.as_bytes()), "lease": id.to_string() }),
                )
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
            Names::Etcd { .. } => {
                let alive = match lease.etcd_lease {
                    Some(id) => {
                        let r = self
                            .etcd(
                                "lease keepalive",
                                "/v3/lease/keepalive",
                                json!({ "ID": id.to_string() }),
                            )
                            .await?;
                        r["result"]
                            .get("TTL")
                            .and_then(json_i64)
                            .is_some_and(|t| t > 0)
                    }
                    None => false,
                };
                match (alive, lease.etcd_lease, self) {
                    // Re-put under the live lease: restores a binding deleted meanwhile.
                    (true, Some(id), Names::Etcd { prefix, .. }) => {
                        let key = format!("{prefix}{}", lease.uuid);
                        self.etcd(
                            "put",
                            "/v3/kv/put",
                            json!({ "key": b64(key.as_bytes()), "value": b64(lease.address.as_bytes()), "lease": id.to_string() }),
                        )
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
                    .etcd(
                        "range",
                        "/v3/kv/range",
                        json!({ "key": b64(key.as_bytes()) }),
                    )
                    .await?;
                let Some(kv) = r["kvs"].as_array().and_then(|a| a.first()) else {
                    return Ok(None);
                };
                let v = kv["value"]
                    .as_str()
                    .and_then(unb64)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| self.protocol("range", kv.to_string()))?;
                Ok(Some(v))
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
                let key = b64(format!("{prefix}{uuid}").as_bytes());
                let r = self
                    .etcd(
                        "txn",
                        "/v3/kv/txn",
                        json!({
                            "compare": [{ "key": key, "result": "EQUAL", "target": "VALUE", "value": b64(address.as_bytes()) }],
                            "success": [{ "requestDeleteRange": { "key": key } }],
                        }),
                    )
                    .await?;
                Ok(r["succeeded"].as_bool().unwrap_or(false))
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
                let mut end = prefix.as_bytes().to_vec();
                if let Some(last) = end.last_mut() {
                    *last += 1;
                }
                let r = self
                    .etcd(
                        "range",
                        "/v3/kv/range",
                        json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&end) }),
                    )
                    .await?;
                let kvs = r["kvs"].as_array().cloned().unwrap_or_default();
                Ok(kvs
                    .iter()
                    .filter_map(|kv| {
                        let key = String::from_utf8(unb64(kv["key"].as_str()?)?).ok()?;
                        let value = String::from_utf8(unb64(kv["value"].as_str()?)?).ok()?;
                        Some(Record {
                            uuid: key.strip_prefix(prefix.as_str())?.to_string(),
                            address: value,
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

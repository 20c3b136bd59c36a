//! The Godwit name service: maps a service UUID to its current address under a lease.
//!
//! Three backends behind one type, [`Names`]:
//! - `memory`: an in-process [`Registry`] (tests, single-process use);
//! - `agent+http://HOST:PORT`: the registry embedded in a `godwitd` (see docs/API.md);
//! - `etcd+http://HOST:PORT`: an etcd v3 cluster through its HTTP/JSON gateway.
//!
//! Semantics shared by all backends:
//! - [`Names::advertise`] binds `uuid -> address` for a lease of `ttl`; [`Names::refresh`]
//!   extends it. A binding whose lease ran out is invisible to [`Names::resolve`].
//! - [`Names::withdraw`] removes the binding only while it still names the given address
//!   (compare-and-delete), so an old instance stopping after a migration never removes the
//!   new instance's binding.

pub mod http;
mod registry;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
pub use registry::{Record, Registry};
use serde_json::json;

/// Errors of name-service operations.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The name-service URL is not understood.
    #[error("unknown name service `{0}`: expected `memory`, `agent+http://HOST:PORT` or `etcd+http://HOST:PORT`")]
    BadUrl(String),
    /// The backend could not be reached or answered garbage.
    #[error("name service {backend}: {source}")]
    Transport {
        /// Backend URL.
        backend: String,
        /// Cause.
        source: http::HttpError,
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
    /// The registry of a godwitd: base URL and bearer token.
    Agent {
        /// `http://HOST:PORT`.
        base: String,
        /// Bearer token.
        token: Option<String>,
    },
    /// An etcd cluster through its v3 JSON gateway.
    Etcd {
        /// `http://HOST:PORT`.
        base: String,
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
    /// Parses `memory`, `agent+http://HOST:PORT` or `etcd+http://HOST:PORT`. `memory` makes
    /// a new private registry; `token` is used by the agent backend.
    pub fn from_url(url: &str, token: Option<String>) -> Result<Self, NamesError> {
        if url == "memory" {
            return Ok(Names::Memory(Arc::new(Registry::default())));
        }
        let check = |base: &str| {
            http::split_url(base)
                .map(|_| ())
                .map_err(|_| NamesError::BadUrl(url.to_string()))
        };
        if let Some(base) = url.strip_prefix("agent+") {
            check(base)?;
            return Ok(Names::Agent {
                base: base.to_string(),
                token,
            });
        }
        if let Some(base) = url.strip_prefix("etcd+") {
            check(base)?;
            return Ok(Names::Etcd {
                base: base.to_string(),
                prefix: ETCD_PREFIX.to_string(),
            });
        }
        Err(NamesError::BadUrl(url.to_string()))
    }

    /// The URL form of this client (inverse of [`Names::from_url`]; `memory` for in-process).
    pub fn url(&self) -> String {
        match self {
            Names::Memory(_) => "memory".into(),
            Names::Agent { base, .. } => format!("agent+{base}"),
            Names::Etcd { base, .. } => format!("etcd+{base}"),
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
    ) -> Result<http::Response, NamesError> {
        let Names::Agent { base, token } = self else {
            unreachable!("agent() on a non-agent backend")
        };
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let mut req = http::ClientRequest::new(method, path);
        req.token = token.as_deref();
        req.body = &body;
        req.timeout = Duration::from_secs(3);
        let resp = http::send(base, &req)
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
                message: String::from_utf8_lossy(&resp.body).into_owned(),
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
        let Names::Etcd { base, .. } = self else {
            unreachable!("etcd() on a non-etcd backend")
        };
        let body = body.to_string().into_bytes();
        let mut req = http::ClientRequest::new("POST", path);
        req.body = &body;
        req.timeout = Duration::from_secs(3);
        let resp = http::send(base, &req)
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
        resp.json_body().map_err(|source| NamesError::Transport {
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
                let v = resp.json_body().map_err(|source| NamesError::Transport {
                    backend: self.backend(),
                    source,
                })?;
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
                let path = format!("/v1/names/{uuid}?address={}", http::percent_encode(address));
                let resp = self.agent("withdraw", "DELETE", &path, None).await?;
                if resp.status == 404 {
                    return Ok(false);
                }
                let v = resp.json_body().map_err(|source| NamesError::Transport {
                    backend: self.backend(),
                    source,
                })?;
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
                let v = resp.json_body().map_err(|source| NamesError::Transport {
                    backend: self.backend(),
                    source,
                })?;
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

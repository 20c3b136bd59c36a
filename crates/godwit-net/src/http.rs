//! One HTTP/1.1 exchange with hyper's client over the authenticated channel
//! ([`ClientTls::request`]).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{ChannelKind, ClientTls, NetError, Scopes};

/// What to send.
#[derive(Debug, Clone)]
pub struct HttpRequest<'a> {
    /// Method (`GET`, `PUT`, ...).
    pub method: &'a str,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// Body.
    pub body: Bytes,
    /// Content type of the body.
    pub content_type: &'a str,
    /// Deadline of the whole exchange (connection included).
    pub timeout: Duration,
    /// Largest response body accepted.
    pub body_limit: usize,
}

impl<'a> HttpRequest<'a> {
    /// A request with no body, a 10 s deadline and a 64 MiB answer limit.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        HttpRequest {
            method,
            path,
            body: Bytes::new(),
            content_type: "application/json",
            timeout: Duration::from_secs(10),
            body_limit: 64 << 20,
        }
    }

    /// With a JSON body.
    pub fn json(mut self, v: &impl ToString) -> Self {
        self.body = Bytes::from(v.to_string());
        self.content_type = "application/json";
        self
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Bytes,
    /// Scopes the server granted on this connection.
    pub scopes: Scopes,
}

impl HttpResponse {
    /// The `error` field of a JSON error body, or the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, NetError> {
        serde_json::from_slice(&self.body).map_err(|e| NetError::Http {
            peer: String::new(),
            detail: format!("answer is not JSON: {e}"),
        })
    }
}

fn http_err(peer: &str, detail: impl std::fmt::Display) -> NetError {
    NetError::Http {
        peer: peer.to_string(),
        detail: detail.to_string(),
    }
}

async fn exchange<IO>(io: IO, peer: &str, req: &HttpRequest<'_>) -> Result<(u16, Bytes), NetError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_err(peer, e))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    });
    let request = hyper::Request::builder()
        .method(req.method)
        .uri(req.path)
        .header(hyper::header::HOST, peer)
        .header(hyper::header::CONTENT_TYPE, req.content_type)
        .body(Full::new(req.body.clone()))
        .map_err(|e| http_err(peer, e))?;
    let result = async {
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| http_err(peer, e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), req.body_limit)
            .collect()
            .await
            .map_err(|e| http_err(peer, format!("answer body: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    drop(sender);
    driver.abort();
    result
}

impl ClientTls {
    /// One HTTP request to the godwitd at `addr` over a new authenticated channel.
    pub async fn request(
        &self,
        addr: &str,
        req: &HttpRequest<'_>,
    ) -> Result<HttpResponse, NetError> {
        let fut = async {
            let (tls, scopes) = self.connect(addr, ChannelKind::Http).await?;
            let (status, body) = exchange(tls, addr, req).await?;
            Ok(HttpResponse {
                status,
                body,
                scopes,
            })
        };
        tokio::time::timeout(req.timeout, fut)
            .await
            .map_err(|_| NetError::Timeout {
                peer: addr.to_string(),
                stage: "HTTP answer",
                timeout: req.timeout,
            })?
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

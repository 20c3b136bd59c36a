//! A deliberately small HTTP/1.1 implementation on tokio, shared by godwitd (server
//! side), the godwitd clients and the etcd JSON-gateway backend (client side).
//!
//! Supported: one request per connection (`Connection: close`), bodies framed by
//! `Content-Length`, and chunked response bodies on the client side (etcd's gateway
//! streams some answers). Header block is capped at [`MAX_HEADER_BYTES`]; bodies at the
//! limit given by the caller. Anything else is refused with an [`HttpError`].

use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;

/// Largest header block accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Errors of the HTTP layer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting to the peer failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Address dialled.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("i/o with {addr}: {source}")]
    Io {
        /// Peer address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout {
        /// Peer address.
        addr: String,
        /// Time allowed.
        timeout: Duration,
    },
    /// The bytes received are not HTTP/1.1 we understand.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// A body exceeded the allowed size.
    #[error("body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The URL is not `http://HOST:PORT[/...]`.
    #[error("bad URL `{0}`: expected http://HOST:PORT")]
    BadUrl(String),
}

/// A parsed request (server side).
#[derive(Debug, Clone)]
pub struct Request {
    /// Method, upper case.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (after `?`), possibly empty.
    pub query: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a query parameter (no percent-decoding beyond `%3A` and `%2F`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| percent_decode(v))
        })
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            content_type: "application/json".into(),
            body: value.to_string().into_bytes(),
        }
    }

    /// A binary response.
    pub fn bytes(status: u16, body: Vec<u8>) -> Self {
        Response {
            status,
            content_type: "application/octet-stream".into(),
            body,
        }
    }

    /// A JSON error `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// Parses the body as JSON.
    pub fn json_body(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Malformed(format!("JSON body: {e}")))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    budget: &mut usize,
) -> Result<String, HttpError> {
    let mut line = Vec::new();
    let mut limited = r.take(*budget as u64 + 1);
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(|source| HttpError::Io {
            addr: "peer".into(),
            source,
        })?;
    if line.len() > *budget {
        return Err(HttpError::Malformed("header block too large".into()));
    }
    *budget -= line.len();
    if !line.ends_with(b"\n") {
        return Err(HttpError::Malformed(
            "connection closed inside the header block".into(),
        ));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| HttpError::Malformed("header is not UTF-8".into()))
}

async fn read_headers<R: AsyncBufRead + Unpin>(
    r: &mut R,
    budget: &mut usize,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, budget).await?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line `{line}`")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
}

fn content_length(headers: &[(String, String)]) -> Result<Option<u64>, HttpError> {
    match headers.iter().find(|(n, _)| n == "content-length") {
        None => Ok(None),
        Some((_, v)) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| HttpError::Malformed(format!("Content-Length `{v}`"))),
    }
}

async fn read_exact_body<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    limit: u64,
) -> Result<Vec<u8>, HttpError> {
    if len > limit {
        return Err(HttpError::TooLarge { size: len, limit });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .await
        .map_err(|source| HttpError::Io {
            addr: "peer".into(),
            source,
        })?;
    Ok(body)
}

/// Reads one request. `Ok(None)` when the peer closed before sending anything.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
    body_limit: u64,
) -> Result<Option<Request>, HttpError> {
    let mut budget = MAX_HEADER_BYTES;
    let first = match read_line(r, &mut budget).await {
        Ok(l) => l,
        Err(HttpError::Malformed(m)) if m.starts_with("connection closed") => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = first.split_whitespace();
    let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) => (m, t, v),
        _ => return Err(HttpError::Malformed(format!("request line `{first}`"))),
    };
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!("version `{version}`")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = read_headers(r, &mut budget).await?;
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && !v.eq_ignore_ascii_case("identity"))
    {
        return Err(HttpError::Malformed(
            "chunked request bodies are not supported".into(),
        ));
    }
    let len = content_length(&headers)?.unwrap_or(0);
    let body = read_exact_body(r, len, body_limit).await?;
    Ok(Some(Request {
        method: method.to_ascii_uppercase(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Writes a response and flushes.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    resp: &Response,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    if resp.status == 401 {
        head.push_str("WWW-Authenticate: Bearer\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).await?;
    w.write_all(&resp.body).await?;
    w.flush().await
}

/// Splits `http://host:port[/prefix]` into (`host:port`, `/prefix`).
pub fn split_url(url: &str) -> Result<(String, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::BadUrl(url.to_string()))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if hostport.is_empty() || !hostport.contains(':') {
        return Err(HttpError::BadUrl(url.to_string()));
    }
    Ok((hostport.to_string(), path.to_string()))
}

/// A client request to `base` (`http://host:port`).
#[derive(Debug, Clone)]
pub struct ClientRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// Bearer token, if any.
    pub token: Option<&'a str>,
    /// Body (sent with Content-Length).
    pub body: &'a [u8],
    /// Content type of the body.
    pub content_type: &'a str,
    /// Overall deadline.
    pub timeout: Duration,
    /// Largest response body accepted.
    pub body_limit: u64,
}

impl<'a> ClientRequest<'a> {
    /// A request with a JSON or empty body, 10 s deadline and 64 MiB response limit.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        ClientRequest {
            method,
            path,
            token: None,
            body: &[],
            content_type: "application/json",
            timeout: Duration::from_secs(10),
            body_limit: 64 << 20,
        }
    }
}

/// Sends one request and reads the whole response.
pub async fn send(base: &str, req: &ClientRequest<'_>) -> Result<Response, HttpError> {
    let (addr, prefix) = split_url(base)?;
    let fut = send_inner(&addr, &prefix, req);
    match tokio::time::timeout(req.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout {
            addr,
            timeout: req.timeout,
        }),
    }
}

async fn send_inner(
    addr: &str,
    prefix: &str,
    req: &ClientRequest<'_>,
) -> Result<Response, HttpError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let io = |source| HttpError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = BufReader::new(stream);
    let mut head = format!(
        "{} {}{} HTTP/1.1\r\nHost: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        req.method,
        prefix,
        req.path,
        addr,
        req.content_type,
        req.body.len()
    );
    if let Some(t) = req.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .get_mut()
        .write_all(head.as_bytes())
        .await
        .map_err(io)?;
    stream.get_mut().write_all(req.body).await.map_err(io)?;
    stream.get_mut().flush().await.map_err(io)?;

    let mut budget = MAX_HEADER_BYTES;
    let status_line = read_line(&mut stream, &mut budget).await?;
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| HttpError::Malformed(format!("status line `{status_line}`")))?,
        _ => return Err(HttpError::Malformed(format!("status line `{status_line}`"))),
    };
    let headers = read_headers(&mut stream, &mut budget).await?;
    let content_type = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let mut b = MAX_HEADER_BYTES;
            let size_line = read_line(&mut stream, &mut b).await?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_hex, 16)
                .map_err(|_| HttpError::Malformed(format!("chunk size `{size_line}`")))?;
            if size == 0 {
                break;
            }
            let limit = req.body_limit.saturating_sub(body.len() as u64);
            body.extend(read_exact_body(&mut stream, size, limit).await?);
            let mut b = 4;
            read_line(&mut stream, &mut b).await?;
        }
        body
    } else if let Some(len) = content_length(&headers)? {
        read_exact_body(&mut stream, len, req.body_limit).await?
    } else {
        let mut body = Vec::new();
        (&mut stream)
            .take(req.body_limit + 1)
            .read_to_end(&mut body)
            .await
            .map_err(io)?;
        if body.len() as u64 > req.body_limit {
            return Err(HttpError::TooLarge {
                size: body.len() as u64,
                limit: req.body_limit,
            });
        }
        body
    };
    Ok(Response {
        status,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_split() {
        assert_eq!(
            split_url("http://1.2.3.4:80").unwrap(),
            ("1.2.3.4:80".into(), "".into())
        );
        assert_eq!(
            split_url("http://h:1/x/").unwrap(),
            ("h:1".into(), "/x".into())
        );
        assert!(split_url("https://h:1").is_err());
        assert!(split_url("http://nohost").is_err());
    }

    #[test]
    fn percent_round_trip() {
        let s = "10.0.0.1:4000/a b";
        assert_eq!(percent_decode(&percent_encode(s)), s);
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[tokio::test]
    async fn request_parse_and_limits() {
        let raw = b"POST /v1/x?a=1&b=c%3Ad HTTP/1.1\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
        let mut r = BufReader::new(&raw[..]);
        let req = read_request(&mut r, 10).await.unwrap().unwrap();
        assert_eq!(req.path, "/v1/x");
        assert_eq!(req.query_param("b").as_deref(), Some("c:d"));
        assert_eq!(req.header("x-a"), Some("b"));
        assert_eq!(req.body, b"abc");
        let mut r = BufReader::new(&raw[..]);
        assert!(matches!(
            read_request(&mut r, 2).await,
            Err(HttpError::TooLarge { size: 3, limit: 2 })
        ));
        let mut r = BufReader::new(&b"GARBAGE\r\n\r\n"[..]);
        assert!(matches!(
            read_request(&mut r, 2).await,
            Err(HttpError::Malformed(_))
        ));
        let mut r = BufReader::new(&b""[..]);
        assert!(read_request(&mut r, 2).await.unwrap().is_none());
    }
}

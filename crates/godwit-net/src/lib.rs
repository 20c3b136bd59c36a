//! The channel every Godwit node talks over.
//!
//! TLS 1.3 through rustls, and then a *token binding* on the TLS stream that
//! authenticates both ends with nothing but a shared token file:
//!
//! 1. TLS handshake. The server presents a self-signed certificate made at start
//!    (rcgen), or the operator's (`--tls-cert/--tls-key`, PKI mode). The client accepts
//!    any server certificate by default (rustls still checks the handshake signature
//!    against it) or, with a CA file (`--tls-ca`), verifies chain and name.
//! 2. Both ends export keying material from the session (label
//!    [`EXPORTER_LABEL`], 32 bytes). The client sends 34 bytes: version
//!    ([`BINDING_VERSION`]), channel kind, `HMAC-SHA256(token, "godwit-client" || kind
//!    || ekm)`. The server tries each of its tokens (hmac's constant-time verify); the
//!    one that matches gives the scopes. It answers `0`, the scopes byte and
//!    `HMAC-SHA256(token, "godwit-server" || kind || scopes || ekm)`, which the client
//!    verifies; or a refusal byte, and closes.
//!
//! A relay that terminates TLS on both sides has two sessions with two different
//! exporters, so the MAC it forwards does not verify: it cannot pass itself off as
//! either end, even with certificates the client accepts. Both steps run under a
//! deadline ([`HANDSHAKE_TIMEOUT`] by default), so a silent peer cannot hold a
//! connection.

mod blocking;
pub mod http;
pub mod mtls;
mod tls;
mod token;

use std::path::PathBuf;

pub use blocking::BlockingStream;
pub use tls::{
    browser_acceptor, ClientTls, ServerTls, BINDING_VERSION, EXPORTER_LABEL, HANDSHAKE_TIMEOUT,
};
pub use token::{Scope, Scopes, Token, TokenSet, MIN_TOKEN_LEN};

/// What a connection is for: the first thing the client says after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// The godwitd HTTP API.
    Http,
    /// A raw bidirectional byte stream for process migration.
    Migration,
}

impl ChannelKind {
    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            ChannelKind::Http => 1,
            ChannelKind::Migration => 2,
        }
    }

    /// From the wire byte.
    pub fn from_byte(b: u8) -> Option<ChannelKind> {
        match b {
            1 => Some(ChannelKind::Http),
            2 => Some(ChannelKind::Migration),
            _ => None,
        }
    }
}

impl std::fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChannelKind::Http => "http",
            ChannelKind::Migration => "migration",
        })
    }
}

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A token that is too short or malformed.
    #[error("bad token: {0}")]
    BadToken(String),
    /// A token file that cannot be used.
    #[error("token file {path}: {detail}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A token file readable or writable by group or others.
    #[error("token file {path} is accessible by group or others (mode {mode:03o}); it holds secrets: run `chmod 600 {path}`")]
    TokenFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading a file (token, certificate, key, CA) failed.
    #[error("{op} {path}: {source}")]
    File {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A certificate, key or CA that cannot be used.
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// An address we cannot dial.
    #[error("bad address `{0}`: expected HOST:PORT")]
    BadAddress(String),
    /// TCP connect failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Address dialled.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (bad certificate in PKI mode, not TLS, ...).
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        /// The other end.
        peer: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The token binding failed: the two ends do not share a token, or a relay sits
    /// between them.
    #[error("{peer}: not authenticated: {detail}")]
    Unauthenticated {
        /// The other end.
        peer: String,
        /// What did not match.
        detail: String,
    },
    /// The peer refused the channel for another reason (unknown kind or version).
    #[error("{peer} refused the channel: {detail}")]
    Refused {
        /// The other end.
        peer: String,
        /// Why.
        detail: String,
    },
    /// The peer did not finish the handshake or the binding in time.
    #[error("{peer}: no {stage} within {timeout:?}")]
    Timeout {
        /// The other end.
        peer: String,
        /// Which step.
        stage: &'static str,
        /// Time allowed.
        timeout: std::time::Duration,
    },
    /// Reading or writing the channel failed.
    #[error("i/o with {peer}: {source}")]
    Io {
        /// The other end.
        peer: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An HTTP exchange over the channel failed.
    #[error("HTTP with {peer}: {detail}")]
    Http {
        /// The other end.
        peer: String,
        /// What failed.
        detail: String,
    },
}

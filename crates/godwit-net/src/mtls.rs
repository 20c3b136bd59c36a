//! Mutual TLS for a conformist service's call port: the operator's PKI (a CA that signs
//! both the service's certificate and its clients'). The server refuses, at the
//! handshake, a client without a certificate signed by the client CA; the client
//! refuses a server whose certificate the CA did not sign for the expected name.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::tls::{provider, tls_err};
use crate::NetError;

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| NetError::TlsSetup(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| NetError::TlsSetup(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(NetError::TlsSetup(format!(
            "{}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, NetError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| NetError::TlsSetup(format!("{}: {e}", path.display())))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| NetError::TlsSetup(format!("{}: {e}", ca.display())))?;
    }
    Ok(Arc::new(roots))
}

/// The server side: presents `cert` (PEM chain) with `key` (PEM), and requires a client
/// certificate signed by `client_ca` (PEM, one or more CA certificates). TLS 1.3 only.
#[derive(Clone)]
pub struct MutualServer {
    acceptor: tokio_rustls::TlsAcceptor,
    timeout: Duration,
}

impl std::fmt::Debug for MutualServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualServer")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl MutualServer {
    /// Loads the certificate, key and client CA (PEM files).
    pub fn new(cert: &Path, key_file: &Path, client_ca: &Path) -> Result<Self, NetError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(client_ca)?, provider())
            .build()
            .map_err(|e| NetError::TlsSetup(format!("{}: {e}", client_ca.display())))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(cert)?, key(key_file)?)
            .map_err(tls_err)?;
        Ok(MutualServer {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            timeout: crate::HANDSHAKE_TIMEOUT,
        })
    }

    /// Runs the handshake on an accepted connection, under the handshake deadline. A
    /// client without a certificate the client CA signed fails here.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: &str,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, NetError> {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(NetError::Handshake {
                peer: peer.to_string(),
                source,
            }),
            Err(_) => Err(NetError::Handshake {
                peer: peer.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no TLS handshake within the deadline",
                ),
            }),
        }
    }
}

/// Whether these bytes (the first of a connection) start a TLS handshake record
/// (content type 22, protocol version 3.x).
pub fn starts_tls_handshake(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, 0x01..=0x04, ..])
}

/// The client side: presents `cert` with `key`, and accepts a server whose certificate
/// `ca` signed for the expected name (by default the host of the address dialled; a
/// service that moves between nodes is better given one name, see
/// [`MutualClient::with_server_name`]).
#[derive(Clone)]
pub struct MutualClient {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for MutualClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualClient")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl MutualClient {
    /// Loads the client certificate, key and the CA of the services (PEM files).
    pub fn new(cert: &Path, key_file: &Path, ca: &Path) -> Result<Self, NetError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(roots(ca)?)
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(tls_err)?;
        Ok(MutualClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: None,
            timeout: crate::HANDSHAKE_TIMEOUT,
        })
    }

    /// Checks the service's certificate against this name instead of the dialled host.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Changes the handshake deadline ([`crate::HANDSHAKE_TIMEOUT`] by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the handshake on a connected socket to `addr` (`HOST:PORT`), under the
    /// handshake deadline.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: &str,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, NetError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = addr
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .ok_or_else(|| NetError::BadAddress(addr.to_string()))?;
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        let name = ServerName::try_from(name.clone())
            .map_err(|e| NetError::TlsSetup(format!("server name `{name}`: {e}")))?;
        let handshake = self.connector.connect(name, tcp);
        match tokio::time::timeout(self.timeout, handshake).await {
            Ok(r) => r.map_err(|source| NetError::Handshake {
                peer: addr.to_string(),
                source,
            }),
            Err(_) => Err(NetError::Handshake {
                peer: addr.to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no TLS handshake within the deadline (is it a service with mutual TLS?)",
                ),
            }),
        }
    }
}

/// When an I/O error on a TLS stream is the peer refusing our certificate (or us
/// refusing its): a description, for an error that retrying will not fix.
pub fn tls_refusal(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(a) => Some(format!(
            "the service refused this client's certificate (TLS alert: {a:?}): it needs a certificate signed by the service's client CA"
        )),
        rustls::Error::InvalidCertificate(c) => Some(format!(
            "the service's certificate is not trusted: {c:?}"
        )),
        rustls::Error::NoCertificatesPresented => {
            Some("the peer presented no certificate".to_string())
        }
        _ => None,
    }
}

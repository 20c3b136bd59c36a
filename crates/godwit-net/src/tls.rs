//! TLS set-up (server and client) and the token binding.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::Mac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::blocking::BlockingStream;
use crate::token::Token;
use crate::{ChannelKind, NetError, Scopes, TokenSet};

/// Label of the keying material both ends export for the token binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-godwit-token-binding";
/// Version byte of the binding message.
pub const BINDING_VERSION: u8 = 1;
/// Default deadline for the TLS handshake plus the token binding.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) const EKM_LEN: usize = 32;
pub(crate) const MAC_LEN: usize = 32;
/// Client message: version, kind, MAC.
pub(crate) const HELLO_LEN: usize = 2 + MAC_LEN;

pub(crate) const ST_OK: u8 = 0;
const ST_BAD_TOKEN: u8 = 1;
const ST_BAD_KIND: u8 = 2;
const ST_BAD_VERSION: u8 = 3;

/// ring's suites, AES-128-GCM first: a quarter faster than AES-256-GCM
/// (ten rounds instead of fourteen) for the same 128-bit security level
/// against the attacks that matter here, and image data is most of what
/// the channel carries.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        match s.suite() {
            C::TLS13_AES_128_GCM_SHA256 => 0,
            C::TLS13_AES_256_GCM_SHA384 => 1,
            _ => 2,
        }
    });
    Arc::new(p)
}

fn client_mac(token: &Token, kind: u8, ekm: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut m = token.mac();
    m.update(b"godwit-client");
    m.update(&[kind]);
    m.update(ekm);
    m
}

fn server_mac(token: &Token, kind: u8, scopes: u8, ekm: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    let mut m = token.mac();
    m.update(b"godwit-server");
    m.update(&[kind, scopes]);
    m.update(ekm);
    m
}

pub(crate) fn tls_err(e: rustls::Error) -> NetError {
    NetError::TlsSetup(e.to_string())
}

/// The client's first message after the handshake.
pub(crate) fn hello(token: &Token, kind: ChannelKind, ekm: &[u8]) -> [u8; HELLO_LEN] {
    let mut msg = [0u8; HELLO_LEN];
    msg[0] = BINDING_VERSION;
    msg[1] = kind.to_byte();
    msg[2..].copy_from_slice(
        &client_mac(token, kind.to_byte(), ekm)
            .finalize()
            .into_bytes(),
    );
    msg
}

/// Checks the server's answer (status byte already read as `status`, `rest` the 33
/// bytes after it when status is OK). Returns the granted scopes.
pub(crate) fn check_answer(
    token: &Token,
    kind: ChannelKind,
    ekm: &[u8],
    peer: &str,
    status: u8,
    rest: &[u8; 1 + MAC_LEN],
) -> Result<Scopes, NetError> {
    match status {
        ST_OK => {}
        ST_BAD_TOKEN => {
            return Err(NetError::Unauthenticated {
                peer: peer.to_string(),
                detail: "the server refused our token: the token did not match (check both token files, or a relay sits in between)".into(),
            })
        }
        ST_BAD_KIND => {
            return Err(NetError::Refused {
                peer: peer.to_string(),
                detail: format!("it does not serve `{kind}` channels"),
            })
        }
        ST_BAD_VERSION => {
            return Err(NetError::Refused {
                peer: peer.to_string(),
                detail: format!("it does not speak binding version {BINDING_VERSION}"),
            })
        }
        other => {
            return Err(NetError::Refused {
                peer: peer.to_string(),
                detail: format!("unknown answer byte {other}"),
            })
        }
    }
    let scopes_byte = rest[0];
    server_mac(token, kind.to_byte(), scopes_byte, ekm)
        .verify_slice(&rest[1..])
        .map_err(|_| NetError::Unauthenticated {
            peer: peer.to_string(),
            detail: "the server's proof does not match our token: the token did not match (check both token files, or a relay sits in between)".into(),
        })?;
    Scopes::from_byte(scopes_byte).ok_or_else(|| NetError::Refused {
        peer: peer.to_string(),
        detail: format!("unknown scopes {scopes_byte:#x}"),
    })
}

/// The certificate chain and key a server presents: the operator's PEM files, or a
/// self-signed certificate made now for `names`. The flag tells which (true: the
/// operator's).
type CertKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, bool);

fn server_cert(cert_key: Option<(&Path, &Path)>, names: &[&str]) -> Result<CertKey, NetError> {
    match cert_key {
        Some((cert, key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| NetError::TlsSetup(format!("{}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| NetError::TlsSetup(format!("{}: {e}", cert.display())))?;
            if certs.is_empty() {
                return Err(NetError::TlsSetup(format!(
                    "{}: no PEM certificate in it",
                    cert.display()
                )));
            }
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| NetError::TlsSetup(format!("{}: {e}", key.display())))?;
            Ok((certs, k, true))
        }
        None => {
            let ck = rcgen::generate_simple_self_signed(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .map_err(|e| NetError::TlsSetup(format!("self-signed certificate: {e}")))?;
            let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
                .map_err(|e| NetError::TlsSetup(format!("self-signed key: {e}")))?;
            Ok((vec![ck.cert.der().clone()], key, false))
        }
    }
}

/// A plain TLS acceptor for web browsers (the dashboard): no token binding, which a
/// browser cannot do; the application authenticates its users itself. It presents the
/// operator's certificate (`cert_key`: PEM chain, PEM key) or a self-signed one made
/// now for `localhost`, `godwit` and `host` (a name or an IP address). TLS 1.3 and
/// 1.2, HTTP/1.1 over ALPN. The flag tells whether it is the operator's certificate.
pub fn browser_acceptor(
    cert_key: Option<(&Path, &Path)>,
    host: &str,
) -> Result<(tokio_rustls::TlsAcceptor, bool), NetError> {
    let mut names = vec!["localhost", "godwit"];
    if !host.is_empty() && !names.contains(&host) {
        names.push(host);
    }
    let (certs, key, pki) = server_cert(cert_key, &names)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), pki))
}

/// A server's side of the channel: certificate, accepted tokens.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
    tokens: TokenSet,
    timeout: Duration,
    pki: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("tokens", &self.tokens)
            .field("pki", &self.pki)
            .finish()
    }
}

impl ServerTls {
    /// A server accepting `tokens`. With `cert_key` (PEM certificate chain file, PEM
    /// private key file) it presents that certificate (PKI mode); without, a
    /// self-signed certificate generated now.
    pub fn new(tokens: TokenSet, cert_key: Option<(&Path, &Path)>) -> Result<Self, NetError> {
        let (certs, key, pki) = server_cert(cert_key, &["godwit"])?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(tls_err)?;
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            tokens,
            timeout: HANDSHAKE_TIMEOUT,
            pki,
        })
    }

    /// Changes the deadline of handshake plus binding.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The accepted tokens (shared: adding to it affects this server).
    pub fn tokens(&self) -> &TokenSet {
        &self.tokens
    }

    /// Whether it presents an operator-given certificate.
    pub fn is_pki(&self) -> bool {
        self.pki
    }

    /// TLS handshake and token binding on an accepted connection. Returns the stream,
    /// what the client wants it for and the scopes of the token it proved.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<TcpStream>,
            ChannelKind,
            Scopes,
        ),
        NetError,
    > {
        let peer = tcp
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "unknown peer".into());
        let _ = tcp.set_nodelay(true);
        match tokio::time::timeout(self.timeout, self.accept_inner(tcp, &peer)).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout {
                peer,
                stage: "TLS handshake and token binding",
                timeout: self.timeout,
            }),
        }
    }

    async fn accept_inner(
        &self,
        tcp: TcpStream,
        peer: &str,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<TcpStream>,
            ChannelKind,
            Scopes,
        ),
        NetError,
    > {
        let mut tls = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(|source| NetError::Handshake {
                peer: peer.to_string(),
                source,
            })?;
        let ekm = tls
            .get_ref()
            .1
            .export_keying_material([0u8; EKM_LEN], EXPORTER_LABEL, None)
            .map_err(tls_err)?;
        let io = |source| NetError::Io {
            peer: peer.to_string(),
            source,
        };
        let mut msg = [0u8; HELLO_LEN];
        tls.read_exact(&mut msg).await.map_err(io)?;
        if msg[0] != BINDING_VERSION {
            refuse(&mut tls, ST_BAD_VERSION).await;
            return Err(NetError::Refused {
                peer: peer.to_string(),
                detail: format!("binding version {} (we speak {BINDING_VERSION})", msg[0]),
            });
        }
        let Some(kind) = ChannelKind::from_byte(msg[1]) else {
            refuse(&mut tls, ST_BAD_KIND).await;
            return Err(NetError::Refused {
                peer: peer.to_string(),
                detail: format!("unknown channel kind {}", msg[1]),
            });
        };
        let mut found = None;
        for t in self.tokens.snapshot() {
            if client_mac(&t, msg[1], &ekm).verify_slice(&msg[2..]).is_ok() {
                found = Some(t);
                break;
            }
        }
        let Some(token) = found else {
            refuse(&mut tls, ST_BAD_TOKEN).await;
            return Err(NetError::Unauthenticated {
                peer: peer.to_string(),
                detail: "the client's token matches none of ours: the token did not match (check both token files, or a relay sits in between)".into(),
            });
        };
        let scopes = token.scopes();
        let mut answer = [0u8; 2 + MAC_LEN];
        answer[0] = ST_OK;
        answer[1] = scopes.to_byte();
        answer[2..].copy_from_slice(
            &server_mac(&token, msg[1], scopes.to_byte(), &ekm)
                .finalize()
                .into_bytes(),
        );
        tls.write_all(&answer).await.map_err(io)?;
        tls.flush().await.map_err(io)?;
        Ok((tls, kind, scopes))
    }
}

/// Sends a refusal byte and closes; best effort (the peer may already be gone).
async fn refuse(tls: &mut tokio_rustls::server::TlsStream<TcpStream>, code: u8) {
    let _ = tls.write_all(&[code]).await;
    let _ = tls.shutdown().await;
}

/// Accepts any server certificate but still checks that the server signed the
/// handshake with the key of the certificate it sent (authentication of the server
/// comes from the token binding).
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client's side of the channel: its token and how it checks server certificates.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    token: Token,
    timeout: Duration,
    pki: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("token", &self.token)
            .field("pki", &self.pki)
            .finish()
    }
}

/// Splits `HOST:PORT` / `[V6]:PORT` and returns the host.
fn host_of(addr: &str) -> Result<&str, NetError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| NetError::BadAddress(addr.to_string()))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(NetError::BadAddress(addr.to_string()));
    }
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

impl ClientTls {
    /// A client proving `token`. With `ca` (a PEM file of CA certificates) the server's
    /// certificate chain and name are verified (PKI mode); without, any certificate is
    /// accepted and the token binding authenticates the server.
    pub fn new(token: Token, ca: Option<&Path>) -> Result<Self, NetError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?;
        let config = match ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| NetError::TlsSetup(format!("{}: {e}", ca.display())))?;
                for c in certs {
                    let c = c.map_err(|e| NetError::TlsSetup(format!("{}: {e}", ca.display())))?;
                    roots
                        .add(c)
                        .map_err(|e| NetError::TlsSetup(format!("{}: {e}", ca.display())))?;
                }
                if roots.is_empty() {
                    return Err(NetError::TlsSetup(format!(
                        "{}: no CA certificate in it",
                        ca.display()
                    )));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
                .with_no_client_auth(),
        };
        Ok(ClientTls {
            config: Arc::new(config),
            token,
            timeout: HANDSHAKE_TIMEOUT,
            pki: ca.is_some(),
        })
    }

    /// Changes the deadline of connect plus handshake plus binding (async connect).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The token this client proves.
    pub fn token(&self) -> &Token {
        &self.token
    }

    fn server_name(&self, addr: &str) -> Result<ServerName<'static>, NetError> {
        let host = host_of(addr)?;
        match ServerName::try_from(host.to_string()) {
            Ok(n) => Ok(n),
            Err(_) if !self.pki => Ok(ServerName::try_from("godwit")
                .unwrap_or_else(|_| unreachable!("`godwit` is a valid DNS name"))),
            Err(e) => Err(NetError::BadAddress(format!("{addr}: {e}"))),
        }
    }

    pub(crate) fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Connects to `addr` (HOST:PORT), runs the handshake and the token binding for a
    /// channel of `kind`. Returns the stream and the scopes the server granted.
    pub async fn connect(
        &self,
        addr: &str,
        kind: ChannelKind,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Scopes), NetError> {
        let name = self.server_name(addr)?;
        match tokio::time::timeout(self.timeout, self.connect_inner(addr, name, kind)).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout {
                peer: addr.to_string(),
                stage: "connection, TLS handshake and token binding",
                timeout: self.timeout,
            }),
        }
    }

    async fn connect_inner(
        &self,
        addr: &str,
        name: ServerName<'static>,
        kind: ChannelKind,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Scopes), NetError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| NetError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| NetError::Handshake {
                peer: addr.to_string(),
                source,
            })?;
        let ekm = tls
            .get_ref()
            .1
            .export_keying_material([0u8; EKM_LEN], EXPORTER_LABEL, None)
            .map_err(tls_err)?;
        let io = |source| NetError::Io {
            peer: addr.to_string(),
            source,
        };
        tls.write_all(&hello(&self.token, kind, &ekm))
            .await
            .map_err(io)?;
        tls.flush().await.map_err(io)?;
        let mut status = [0u8; 1];
        tls.read_exact(&mut status)
            .await
            .map_err(|source| refused_or_io(addr, source))?;
        let mut rest = [0u8; 1 + MAC_LEN];
        if status[0] == ST_OK {
            tls.read_exact(&mut rest).await.map_err(io)?;
        }
        let scopes = check_answer(&self.token, kind, &ekm, addr, status[0], &rest)?;
        Ok((tls, scopes))
    }

    /// Blocking version of [`ClientTls::connect`] for threads outside an async runtime.
    /// `timeout` bounds the TCP connect and each read or write of the handshake and the
    /// binding; the returned stream has no read/write timeout set.
    pub fn connect_blocking(
        &self,
        addr: &str,
        kind: ChannelKind,
        timeout: Duration,
    ) -> Result<BlockingStream, NetError> {
        let name = self.server_name(addr)?;
        BlockingStream::connect(self, addr, name, kind, timeout)
    }
}

/// The server closes without a status byte when it is not a Godwit server or dropped
/// us: say so.
pub(crate) fn refused_or_io(addr: &str, source: std::io::Error) -> NetError {
    if source.kind() == std::io::ErrorKind::UnexpectedEof {
        NetError::Refused {
            peer: addr.to_string(),
            detail: "it closed the connection during the token binding".into(),
        }
    } else {
        NetError::Io {
            peer: addr.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client announcing a kind the server does not know is refused, and told so.
    #[tokio::test]
    async fn unknown_kind_is_refused() {
        let token = Token::new("kind-test-token-0123456789").unwrap();
        let server = ServerTls::new(TokenSet::from_tokens([token.clone()]), None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            server.accept(tcp).await.map(|_| ())
        });
        let client = ClientTls::new(token.clone(), None).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client.config())
            .connect(ServerName::try_from("godwit").unwrap(), tcp)
            .await
            .unwrap();
        let ekm = tls
            .get_ref()
            .1
            .export_keying_material([0u8; EKM_LEN], EXPORTER_LABEL, None)
            .unwrap();
        let mut msg = [0u8; HELLO_LEN];
        msg[0] = BINDING_VERSION;
        msg[1] = 9;
        msg[2..].copy_from_slice(&client_mac(&token, 9, &ekm).finalize().into_bytes());
        tls.write_all(&msg).await.unwrap();
        tls.flush().await.unwrap();
        let mut st = [0u8; 1];
        tls.read_exact(&mut st).await.unwrap();
        assert_eq!(st[0], ST_BAD_KIND);
        let e = srv.await.unwrap().unwrap_err();
        assert!(e.to_string().contains("unknown channel kind 9"), "{e}");
    }
}

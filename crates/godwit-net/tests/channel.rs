//! The channel end to end on loopback: handshake, token binding, scopes, refusals, a
//! relay in the middle, PKI mode.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use godwit_net::{ChannelKind, ClientTls, NetError, Scope, ServerTls, Token, TokenSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const GOOD: &str = "good-token-0123456789abcdef";

fn token_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A server on port 0 that accepts one connection after another; each accepted
/// channel echoes what it reads prefixed with the kind. Returns the address and a
/// receiver of the results of `accept`.
async fn serve(
    server: ServerTls,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<(ChannelKind, godwit_net::Scopes), NetError>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let server = server.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match server.accept(tcp).await {
                    Ok((mut tls, kind, scopes)) => {
                        let _ = tx.send(Ok((kind, scopes)));
                        let mut buf = [0u8; 5];
                        if tls.read_exact(&mut buf).await.is_ok() {
                            let _ = tls.write_all(format!("{kind}:").as_bytes()).await;
                            let _ = tls.write_all(&buf).await;
                            let _ = tls.flush().await;
                        }
                        let _ = tls.shutdown().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn good_server() -> ServerTls {
    ServerTls::new(TokenSet::from_tokens([Token::new(GOOD).unwrap()]), None).unwrap()
}

#[tokio::test]
async fn right_token_connects_both_kinds_async_and_blocking() {
    let (addr, mut rx) = serve(good_server()).await;
    let client = ClientTls::new(Token::new(GOOD).unwrap(), None).unwrap();
    for kind in [ChannelKind::Http, ChannelKind::Migration] {
        let (mut s, scopes) = client.connect(&addr, kind).await.unwrap();
        assert!(scopes.allows(Scope::Exec) && scopes.allows(Scope::Operate));
        s.write_all(b"hello").await.unwrap();
        s.flush().await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, format!("{kind}:hello"));
        let (k, _) = rx.recv().await.unwrap().unwrap();
        assert_eq!(k, kind);
    }
    // The blocking client from a plain thread.
    let c2 = client.clone();
    let a2 = addr.clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut s = c2
            .connect_blocking(&a2, ChannelKind::Migration, Duration::from_secs(5))
            .unwrap();
        s.tcp()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"bytes").unwrap();
        s.flush().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = s.close();
        String::from_utf8(got).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(got, "migration:bytes");
    assert_eq!(rx.recv().await.unwrap().unwrap().0, ChannelKind::Migration);
}

#[tokio::test]
async fn wrong_token_is_refused_on_both_sides() {
    let (addr, mut rx) = serve(good_server()).await;
    let client = ClientTls::new(Token::new("wrong-token-0123456789abcdef").unwrap(), None).unwrap();
    for kind in [ChannelKind::Http, ChannelKind::Migration] {
        let e = client.connect(&addr, kind).await.unwrap_err();
        assert!(matches!(e, NetError::Unauthenticated { .. }), "{e:?}");
        assert!(e.to_string().contains("token did not match"), "{e}");
        assert!(e.to_string().contains("check both token files"), "{e}");
        let se = rx.recv().await.unwrap().unwrap_err();
        assert!(matches!(se, NetError::Unauthenticated { .. }), "{se:?}");
    }
    let c2 = client.clone();
    let e = tokio::task::spawn_blocking(move || {
        c2.connect_blocking(&addr, ChannelKind::Migration, Duration::from_secs(5))
            .unwrap_err()
    })
    .await
    .unwrap();
    assert!(matches!(e, NetError::Unauthenticated { .. }), "{e:?}");
}

#[test]
fn token_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o640, 0o604, 0o620, 0o644] {
        let p = token_file(dir.path(), "t", &format!("{GOOD}\n"), mode);
        let e = TokenSet::load(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&format!("chmod 600 {}", p.display())), "{msg}");
        assert!(matches!(
            Token::load(&p),
            Err(NetError::TokenFilePermissions { .. })
        ));
    }
    let p = token_file(dir.path(), "t", &format!("{GOOD}\n"), 0o600);
    assert_eq!(TokenSet::load(&p).unwrap().len(), 1);
    assert_eq!(Token::load(&p).unwrap().secret(), GOOD);
    let p = token_file(dir.path(), "short", "tooshort\n", 0o600);
    let e = TokenSet::load(&p).unwrap_err().to_string();
    assert!(e.contains("at least 16 characters"), "{e}");
}

#[tokio::test]
async fn scopes_come_out_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = token_file(
        dir.path(),
        "tokens",
        "# who may do what\nread reader-token-0123456789\nread,operate operator-token-0123456789\nread,operate,exec admin-token-0123456789\nexec execonly-token-0123456789\n",
        0o600,
    );
    let set = TokenSet::load(&p).unwrap();
    let (addr, mut rx) = serve(ServerTls::new(set, None).unwrap()).await;
    for (t, want) in [
        ("reader-token-0123456789", "read"),
        ("operator-token-0123456789", "read,operate,service"),
        ("admin-token-0123456789", "read,operate,exec,service"),
        ("execonly-token-0123456789", "exec"),
    ] {
        let c = ClientTls::new(Token::new(t).unwrap(), None).unwrap();
        let (_s, scopes) = c.connect(&addr, ChannelKind::Http).await.unwrap();
        assert_eq!(scopes.to_string(), want, "{t}");
        let (_, server_side) = rx.recv().await.unwrap().unwrap();
        assert_eq!(server_side, scopes);
    }
    // The client side loads the first token of such a file.
    let first = Token::load(&p).unwrap();
    assert_eq!(first.secret(), "reader-token-0123456789");
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let server = good_server().with_timeout(Duration::from_millis(300));
    let (addr, mut rx) = serve(server).await;
    let _tcp = TcpStream::connect(&addr).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the server gave up on the silent peer")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, NetError::Timeout { .. }), "{e:?}");
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "godwit test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        // Another CA that signed nothing of ours.
        let other_key = rcgen::KeyPair::generate().unwrap();
        let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(
            dir.path().join("other-ca.pem"),
            other.self_signed(&other_key).unwrap().pem(),
        )
        .unwrap();
        Pki { dir }
    }
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
    fn server(&self) -> ServerTls {
        ServerTls::new(
            TokenSet::from_tokens([Token::new(GOOD).unwrap()]),
            Some((&self.path("cert.pem"), &self.path("key.pem"))),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn pki_mode_verifies_the_chain_and_still_binds_the_token() {
    let pki = Pki::new();
    let server = pki.server();
    assert!(server.is_pki());
    let (addr, mut rx) = serve(server).await;
    let ok = ClientTls::new(Token::new(GOOD).unwrap(), Some(&pki.path("ca.pem"))).unwrap();
    let (_s, scopes) = ok.connect(&addr, ChannelKind::Http).await.unwrap();
    assert!(scopes.allows(Scope::Read));
    rx.recv().await.unwrap().unwrap();
    // By name too.
    let port = addr.rsplit_once(':').unwrap().1;
    ok.connect(&format!("localhost:{port}"), ChannelKind::Http)
        .await
        .unwrap();
    rx.recv().await.unwrap().unwrap();
    // A CA that did not sign the server's certificate: the handshake fails.
    let wrong_ca =
        ClientTls::new(Token::new(GOOD).unwrap(), Some(&pki.path("other-ca.pem"))).unwrap();
    let e = wrong_ca
        .connect(&addr, ChannelKind::Http)
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Handshake { .. }), "{e:?}");
    let _ = rx.recv().await;
    // The right CA but the wrong token: the binding still refuses.
    let wrong_token = ClientTls::new(
        Token::new("wrong-token-0123456789abcdef").unwrap(),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let e = wrong_token
        .connect(&addr, ChannelKind::Http)
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Unauthenticated { .. }), "{e:?}");
}

/// A relay that terminates TLS on both sides (its own self-signed certificate towards
/// the client, which accepts any certificate; a proper PKI-verified connection to the
/// server) and copies the bytes between the two sessions.
#[tokio::test]
async fn a_relay_terminating_tls_on_both_sides_cannot_authenticate() {
    let pki = Pki::new();
    let (server_addr, mut rx) = serve(pki.server()).await;

    let ck = rcgen::generate_simple_self_signed(vec!["relay".to_string()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let relay_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap(),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(pki.path("ca.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let upstream_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let relay_task = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(relay_cfg));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(upstream_cfg));
        let (tcp, _) = relay.accept().await.unwrap();
        let mut down = acceptor.accept(tcp).await.unwrap();
        let up_tcp = TcpStream::connect(&server_addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut up = connector.connect(name, up_tcp).await.unwrap();
        // Both TLS sessions are fully established: the relay sees plaintext.
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    let client = ClientTls::new(Token::new(GOOD).unwrap(), None).unwrap();
    let e = client
        .connect(&relay_addr, ChannelKind::Migration)
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::Unauthenticated { .. }), "{e:?}");
    let se = rx.recv().await.unwrap().unwrap_err();
    assert!(matches!(se, NetError::Unauthenticated { .. }), "{se:?}");
    relay_task.abort();
}

/// The blocking client gives up on a peer that accepts TCP but never speaks TLS.
#[test]
fn blocking_connect_to_a_silent_peer_times_out() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let holder = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let client = ClientTls::new(Token::new(GOOD).unwrap(), None).unwrap();
    let t0 = std::time::Instant::now();
    let e = client
        .connect_blocking(&addr, ChannelKind::Migration, Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(e, NetError::Timeout { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    holder.join().unwrap();
}

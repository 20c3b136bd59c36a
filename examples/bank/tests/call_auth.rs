//! End to end, with real bank processes: mutual TLS on the service port
//! (`--tls-cert/--tls-key/--tls-client-ca`). A client with a certificate the client CA
//! signed is served; a plain client, a TLS client without a certificate and one with a
//! certificate of another CA are refused; management still works (its own
//! credential); a relaunch repeats the options; without them the bank is plain.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bank::BankClient;
use godwit_sdk::{CallError, Client, ClientOptions, MutualClient};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::json;

mod common;
use common::Proc;

const T: Duration = Duration::from_secs(20);

/// A CA and what it signed, as PEM files in `dir` named `<prefix>-*.pem`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn pki(dir: &Path, prefix: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, format!("{prefix} test CA"));
    let ca = p.self_signed(&ca_key).unwrap();
    let write = |name: &str, text: String| {
        let f = dir.join(format!("{prefix}-{name}.pem"));
        std::fs::write(&f, text).unwrap();
        f
    };
    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (
            write(&format!("{name}-cert"), cert.pem()),
            write(&format!("{name}-key"), key.serialize_pem()),
        )
    };
    Pki {
        server: leaf(
            "server",
            vec!["127.0.0.1".into(), "bank.godwit".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: leaf("client", vec![], ExtendedKeyUsagePurpose::ClientAuth),
        ca: write("ca", ca.pem()),
    }
}

fn serve(store: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bank"));
    cmd.args(["serve", "--store", store])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut p = Proc(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(p.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bank did not start: `{line}`"))
        .to_string();
    (p, addr)
}

fn bank(addr: &str, tls: Option<MutualClient>) -> BankClient {
    BankClient::new(Client::at(
        addr,
        ClientOptions {
            deadline: Duration::from_secs(15),
            tls,
            ..Default::default()
        },
    ))
}

fn refused<T: std::fmt::Debug>(r: Result<T, CallError>, what: &str, why: &str) {
    match r {
        Err(CallError::Unauthorized { message, .. }) => {
            assert!(message.contains(why), "{what}: {message}")
        }
        other => panic!("{what}: not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_port_with_mutual_tls_serves_only_clients_the_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki(dir.path(), "ours");
    let theirs = pki(dir.path(), "theirs");
    let store = format!("dir:{}", dir.path().join("store").display());
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (_p, addr) = serve(
        &store,
        &[
            "--tls-cert",
            &s(&ours.server.0),
            "--tls-key",
            &s(&ours.server.1),
            "--tls-client-ca",
            &s(&ours.ca),
        ],
    );

    // A client with a certificate our CA signed: served, over TLS, checking the
    // service's certificate (for the dialled 127.0.0.1, or for a name given).
    let good = MutualClient::new(&ours.client.0, &ours.client.1, &ours.ca).unwrap();
    let b = bank(&addr, Some(good.clone()));
    let id = b.open("ann".into(), 10).await.unwrap().unwrap();
    assert_eq!(b.balance(id).await.unwrap().unwrap(), 10);
    let named = bank(&addr, Some(good.with_server_name("bank.godwit")));
    assert_eq!(named.balance(id).await.unwrap().unwrap(), 10);

    // A plain client: refused, with what to do.
    refused(
        bank(&addr, None).open("eve".into(), 1).await,
        "plain client",
        "requires mutual TLS",
    );
    // A certificate of another CA: refused at the handshake.
    let other = MutualClient::new(&theirs.client.0, &theirs.client.1, &ours.ca).unwrap();
    refused(
        bank(&addr, Some(other)).open("eve".into(), 1).await,
        "client of another CA",
        "refused this client's certificate",
    );
    // A service certificate of another CA: the client refuses the service.
    let distrust = MutualClient::new(&ours.client.0, &ours.client.1, &theirs.ca).unwrap();
    refused(
        bank(&addr, Some(distrust)).open("eve".into(), 1).await,
        "service of another CA",
        "not trusted",
    );
    // TLS without any client certificate: the handshake fails, no frame is answered.
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ours.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let read = async {
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let call = godwit_sdk::wire::Call {
            client: [7; 16],
            seq: 1,
            ack_below: 1,
            method: "open".into(),
            args: vec![],
        };
        godwit_sdk::wire::write_frame(
            &mut s,
            godwit_sdk::wire::kind::CALL,
            &[&godwit_sdk::wire::encode_call(&call)],
        )
        .await
        .map_err(std::io::Error::other)?;
        godwit_sdk::wire::read_frame(&mut s)
            .await
            .map_err(std::io::Error::other)
    };
    let r = tokio::time::timeout(T, read).await.unwrap();
    let e = r.expect_err("a TLS client without a certificate was answered");
    assert!(
        format!("{e:?}").contains("CertificateRequired"),
        "no client certificate: {e:?}"
    );
    // None of the refused calls reached the state.
    assert!(
        b.balance(id + 1).await.unwrap().is_err(),
        "a refused open ran"
    );

    // Management is not a service call: served on a plain connection, with its own
    // credential rules (none here). A relaunch repeats the three options.
    let st = godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), None, T)
        .await
        .unwrap();
    assert_eq!(
        st["call_tls"]["client_ca"].as_str(),
        Some(s(&ours.ca).as_str())
    );
    let relaunch: Vec<String> = serde_json::from_value(st["relaunch_args"].clone()).unwrap();
    for flag in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
        assert!(relaunch.iter().any(|a| a == flag), "{relaunch:?}");
    }

    // Off by default: a plain client is served.
    let (_q, plain) = serve(&store, &[]);
    bank(&plain, None)
        .open("bob".into(), 3)
        .await
        .unwrap()
        .unwrap();
}

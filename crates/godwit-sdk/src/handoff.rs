//! Streamed hand-off of a checkpoint from a frozen instance straight to its new
//! instance (a migration without the store on the critical path; docs/SDK.md,
//! "Migration").
//!
//! The new instance (in standby) is asked, over its authenticated management channel,
//! to `receive` with a per-migration secret: it listens on a one-shot port. The old
//! instance is asked to `freeze` with that address and the same secret: it connects,
//! proves the secret, and only once the new instance has accepted it sends the
//! checkpoint file. The new instance checks and restores it, starts serving, answers,
//! and then writes the same file to the store (off the critical path).
//!
//! The CRC-32 of the file is computed by the sender slice by slice as it sends them
//! and by the receiver as they arrive (while they are in the cache), and sent after
//! the file: the state is read once on each side, not once more for a checksum. The
//! receiver checks it against its own and puts it in the file's header.
//!
//! The connection is the channel of the agents (crate godwit-net): TLS, with both ends
//! bound to the per-migration secret as a token (an HMAC of the TLS exporter value under
//! it, each way), so the state travels encrypted to an instance that proved the secret,
//! from one that proved it too, with no certificate to hand out. After that binding (a
//! sender without the secret is refused there):
//!
//! | from | bytes |
//! |---|---|
//! | old | u64 file length (LE) · the checkpoint file, its CRC-32 field 0 · u32 CRC-32 (LE) |
//! | new | MGMT_REPLY frame: `{"ok": true, "received": N}` (the whole file, its CRC-32 right) |
//! | old | `G`: go ahead |
//! | new | MGMT_REPLY frame: `{"ok": true, "id": ...}` (serving) or `{"ok": false, "error": ...}` |
//!
//! The receiver restores only after the go-ahead, and the sender sends it only after
//! the receipt: a connection lost before the go-ahead was written means the new
//! instance certainly does not serve (the old one thaws: [`HandoffError::Cut`]); lost
//! after, it may ([`HandoffError::NoAnswer`]: the old one stays frozen).

use std::time::Duration;

use godwit_net::{ChannelKind, ClientTls, NetError, ServerTls, Token, TokenSet};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::checkpoint::{CRC_AT, HEADER_LEN};
use crate::wire;

/// Longest secret accepted.
pub const MAX_SECRET: u32 = 1024;
/// The sender's go-ahead, after the receiver confirmed the whole file.
const GO: u8 = b'G';
/// Largest checkpoint file accepted over a hand-off (64 GiB).
pub const MAX_FILE: u64 = 64 << 30;
/// Connections with a wrong secret tolerated before the port is closed.
pub const MAX_REFUSED: u32 = 16;

/// Why a hand-off failed, and whether the new instance can have taken over.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The new instance could not be reached (it did not get the state).
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// Address.
        addr: String,
        /// Cause.
        message: String,
    },
    /// The new instance refused (wrong secret, or the state does not restore there):
    /// it is not serving.
    #[error("{addr} refused: {message}")]
    Refused {
        /// Address.
        addr: String,
        /// Its message.
        message: String,
    },
    /// The connection broke before the whole checkpoint was sent: the new instance
    /// cannot restore a partial file.
    #[error("stream to {addr} cut after {sent} of {total} bytes: {message}")]
    Cut {
        /// Address.
        addr: String,
        /// Bytes of the file sent.
        sent: u64,
        /// File size.
        total: u64,
        /// Cause.
        message: String,
    },
    /// The whole checkpoint was sent but no answer came: the new instance may be
    /// serving.
    #[error("{addr} received all {total} bytes but did not answer: {message}")]
    NoAnswer {
        /// Address.
        addr: String,
        /// File size.
        total: u64,
        /// Cause.
        message: String,
    },
    /// Receiving side: no authenticated sender came in time, or it broke off.
    #[error("{0}")]
    Receive(String),
}

impl HandoffError {
    /// Whether the new instance certainly did not take over (so the old one may serve
    /// on at once).
    pub fn new_instance_not_serving(&self) -> bool {
        !matches!(self, HandoffError::NoAnswer { .. })
    }
}

/// Slice of the file checksummed and sent at a time (stays in the cache in between).
const SLICE: usize = 256 << 10;

/// Sends the checkpoint file `head` (header, its CRC-32 field 0, and description, from
/// [`crate::checkpoint::frame_unsummed`]) + `payload` to the instance receiving at
/// `addr` with `secret`; returns its final answer (`{"ok": true, "id": ...}`).
/// `timeout` bounds the whole exchange.
pub async fn send(
    addr: &str,
    secret: &str,
    head: &[u8],
    payload: &[u8],
    timeout: Duration,
) -> Result<Value, HandoffError> {
    let total = (head.len() + payload.len()) as u64;
    let deadline = Instant::now() + timeout;
    let late = |what: &str| format!("no {what} within {timeout:?}");
    let connect_err = |message: String| HandoffError::Connect {
        addr: addr.to_string(),
        message,
    };
    let token = Token::new(secret).map_err(|e| connect_err(e.to_string()))?;
    let client = ClientTls::new(token, None)
        .map_err(|e| connect_err(e.to_string()))?
        .with_timeout(timeout);
    let (tls, _) = tokio::time::timeout_at(deadline, client.connect(addr, ChannelKind::Migration))
        .await
        .map_err(|_| connect_err(late("connection")))?
        .map_err(|e| match e {
            // The binding failed: the receiver does not know this secret (or we
            // not its): it is not serving.
            NetError::Refused { detail, .. } | NetError::Unauthenticated { detail, .. } => {
                HandoffError::Refused {
                    addr: addr.to_string(),
                    message: format!("not the migration secret: {detail}"),
                }
            }
            other => connect_err(other.to_string()),
        })?;
    let (rd, mut wr) = tokio::io::split(tls);
    let mut rd = BufReader::new(rd);
    let cut = |sent: u64, message: String| HandoffError::Cut {
        addr: addr.to_string(),
        sent,
        total,
        message,
    };
    let mut sent = 0u64;
    let body = async {
        let mut crc = crc32fast::Hasher::new();
        crc.update(head.get(HEADER_LEN..).unwrap_or_default());
        wr.write_all(&total.to_le_bytes()).await?;
        wr.write_all(head).await?;
        sent += head.len() as u64;
        for chunk in payload.chunks(SLICE) {
            crc.update(chunk);
            wr.write_all(chunk).await?;
            sent += chunk.len() as u64;
        }
        wr.write_all(&crc.finalize().to_le_bytes()).await?;
        wr.flush().await
    };
    match tokio::time::timeout_at(deadline, body).await {
        Err(_) => return Err(cut(sent, late("complete send"))),
        Ok(Err(e)) => return Err(cut(sent, e.to_string())),
        Ok(Ok(())) => {}
    }
    // Written is not received: until the receiver confirms the whole file (and
    // its CRC-32), and is told to go on, it restores nothing.
    let got = tokio::time::timeout_at(deadline, read_answer(&mut rd))
        .await
        .map_err(|_| cut(sent, late("receipt")))?
        .map_err(|e| cut(sent, format!("no receipt: {e}")))?;
    if got["ok"].as_bool() != Some(true) {
        return Err(HandoffError::Refused {
            addr: addr.to_string(),
            message: got["error"].as_str().unwrap_or("no message").to_string(),
        });
    }
    // A failed write of the go-ahead did not reach it; once written, it may serve.
    let go = async {
        wr.write_all(&[GO]).await?;
        wr.flush().await
    };
    match tokio::time::timeout_at(deadline, go).await {
        Err(_) => return Err(cut(sent, late("go-ahead sent"))),
        Ok(Err(e)) => return Err(cut(sent, format!("go-ahead not sent: {e}"))),
        Ok(Ok(())) => {}
    }
    let answer = tokio::time::timeout_at(deadline, read_answer(&mut rd))
        .await
        .map_err(|_| HandoffError::NoAnswer {
            addr: addr.to_string(),
            total,
            message: late("answer"),
        })?
        .map_err(|e| HandoffError::NoAnswer {
            addr: addr.to_string(),
            total,
            message: e,
        })?;
    if answer["ok"].as_bool() != Some(true) {
        return Err(HandoffError::Refused {
            addr: addr.to_string(),
            message: answer["error"].as_str().unwrap_or("no message").to_string(),
        });
    }
    Ok(answer)
}

async fn read_answer<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Value, String> {
    let (kind, body) = wire::read_frame(r).await.map_err(|e| e.to_string())?;
    if kind != wire::kind::MGMT_REPLY {
        return Err(format!("unexpected frame kind {kind}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("bad JSON answer: {e}"))
}

/// The receiving end, once the sender proved the secret and sent the whole file.
pub struct Received {
    /// The connection, for the final answer.
    pub stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// The sender's address.
    pub peer: String,
    /// The checkpoint file, its CRC-32 checked and in its header.
    pub file: Vec<u8>,
}

impl Received {
    /// Sends the final answer (best effort: the sender judges a missing one).
    pub async fn answer(&mut self, v: &Value) {
        let _ = wire::write_frame(
            &mut self.stream,
            wire::kind::MGMT_REPLY,
            &[v.to_string().as_bytes()],
        )
        .await;
        let _ = self.stream.flush().await;
    }
}

/// Waits on `listener` until `deadline` for a sender that knows `secret`, then reads
/// its checkpoint file. Senders without the secret are refused (at the TLS binding) and
/// logged; after [`MAX_REFUSED`] of them, or at the deadline, the hand-off is given up.
pub async fn receive(
    listener: TcpListener,
    secret: &str,
    deadline: Instant,
) -> Result<Received, HandoffError> {
    let (tls, peer) = accept_sender(&listener, secret, deadline).await?;
    read_file(tls, peer, deadline).await
}

/// The first connection on `listener` (before `deadline`) whose sender proves
/// `secret` over TLS for a hand-off, and its address: the encrypted stream the file
/// then comes on. Senders without the secret are refused and logged; after
/// [`MAX_REFUSED`] of them the port is given up.
pub async fn accept_sender(
    listener: &TcpListener,
    secret: &str,
    deadline: Instant,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, String), HandoffError> {
    let token = Token::new(secret).map_err(|e| HandoffError::Receive(e.to_string()))?;
    let server = ServerTls::new(TokenSet::from_tokens([token]), None)
        .map_err(|e| HandoffError::Receive(format!("the hand-off's TLS: {e}")))?;
    let mut refused = 0;
    loop {
        let (tcp, peer) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| {
                HandoffError::Receive(format!(
                    "no authenticated sender came in time ({refused} refused)"
                ))
            })?
            .map_err(|e| HandoffError::Receive(format!("accept: {e}")))?;
        let peer = peer.to_string();
        let why = match tokio::time::timeout_at(deadline, server.accept(tcp)).await {
            Ok(Ok((tls, ChannelKind::Migration, _))) => return Ok((tls, peer)),
            Ok(Ok((_, kind, _))) => format!("a {kind} channel, not a hand-off"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                return Err(HandoffError::Receive(format!(
                    "sender {peer} did not finish its handshake in time"
                )))
            }
        };
        tracing::warn!(%peer, "hand-off connection refused: {why}");
        refused += 1;
        if refused >= MAX_REFUSED {
            return Err(HandoffError::Receive(format!(
                "{refused} connections without the migration secret; hand-off port closed"
            )));
        }
    }
}

/// Reads the checkpoint file from an authenticated sender.
async fn read_file(
    mut stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: String,
    deadline: Instant,
) -> Result<Received, HandoffError> {
    let read = async {
        let len = stream.read_u64_le().await.map_err(|e| e.to_string())?;
        if len > MAX_FILE {
            return Err(format!("announced {len} bytes, over the {MAX_FILE} limit"));
        }
        let mut file = vec![0u8; len as usize];
        let mut crc = crc32fast::Hasher::new();
        let mut filled = 0;
        while filled < file.len() {
            let end = (filled + SLICE).min(file.len());
            let n = stream
                .read(&mut file[filled..end])
                .await
                .map_err(|e| format!("after {filled} of {len} bytes: {e}"))?;
            if n == 0 {
                return Err(format!("connection closed after {filled} of {len} bytes"));
            }
            // Checksummed while in the cache; the header itself is not covered.
            crc.update(
                file.get(filled.max(HEADER_LEN)..filled + n)
                    .unwrap_or_default(),
            );
            filled += n;
        }
        let sent = stream
            .read_u32_le()
            .await
            .map_err(|e| format!("no CRC-32 after the {len} bytes: {e}"))?;
        let found = crc.finalize();
        if found != sent {
            return Err(format!(
                "corrupted in transit: CRC-32 of what arrived is {found:08x}, the sender's is {sent:08x}"
            ));
        }
        if let Some(field) = file.get_mut(CRC_AT..CRC_AT + 4) {
            field.copy_from_slice(&found.to_le_bytes());
        } else {
            return Err(format!("{len} bytes is shorter than a checkpoint header"));
        }
        let receipt = serde_json::json!({ "ok": true, "received": len }).to_string();
        wire::write_frame(&mut stream, wire::kind::MGMT_REPLY, &[receipt.as_bytes()])
            .await
            .map_err(|e| format!("receipt not sent: {e}"))?;
        stream
            .flush()
            .await
            .map_err(|e| format!("receipt not sent: {e}"))?;
        match stream.read_u8().await {
            Ok(GO) => Ok(file),
            Ok(b) => Err(format!("byte {b:#x} instead of the go-ahead")),
            Err(e) => Err(format!("no go-ahead after the receipt: {e}")),
        }
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(file)) => Ok(Received { stream, peer, file }),
        Ok(Err(e)) => Err(HandoffError::Receive(format!(
            "the stream from {peer} broke off: {e}"
        ))),
        Err(_) => Err(HandoffError::Receive(format!(
            "the stream from {peer} did not complete in time"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, Description, Envelope};
    use crate::codec::Portable;
    use serde_json::json;

    fn file() -> (Vec<u8>, Vec<u8>) {
        let desc = Description {
            service: "svc".into(),
            uuid: "u".into(),
            seq: 4,
            created_unix_ms: 1,
            parent: Some("000000000003".into()),
            extra: json!({}),
        };
        let payload = crate::codec::to_vec(&Envelope {
            state: vec![7u8; 300_000],
            done: vec![],
            ops: vec![],
            workers: vec![],
            log_seq: 0,
        });
        let head =
            checkpoint::frame_unsummed(&desc, &Envelope::<Vec<u8>>::schema(), payload.len() as u64);
        (head, payload)
    }

    async fn port() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    }

    const RIGHT: &str = "the-right-secret-123";

    /// A receiver with the right secret that answers `id` and gives the file.
    fn answering(l: TcpListener, id: &'static str) -> tokio::task::JoinHandle<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        tokio::spawn(async move {
            let mut got = receive(l, RIGHT, deadline).await.unwrap();
            got.answer(&json!({"ok": true, "id": id})).await;
            got.file
        })
    }

    async fn send_with(
        addr: &str,
        secret: &str,
        (head, payload): &(Vec<u8>, Vec<u8>),
    ) -> Result<Value, HandoffError> {
        send(addr, secret, head, payload, Duration::from_secs(10)).await
    }

    #[tokio::test]
    async fn the_file_arrives_checksummed_after_a_wrong_secret_is_refused() {
        let f = file();
        let (l, addr) = port().await;
        let rx = answering(l, "x");
        let e = send_with(&addr, "a-wrong-secret-12345", &f)
            .await
            .unwrap_err();
        assert!(e.new_instance_not_serving());
        assert!(e.to_string().contains("not the migration secret"), "{e}");
        let v = send_with(&addr, RIGHT, &f).await.unwrap();
        assert_eq!(v["id"], "x");
        let file = rx.await.unwrap();
        // The CRC-32 is in place: the file reads as any stored checkpoint.
        let (d, env) = checkpoint::read::<Envelope<Vec<u8>>>(&file, "svc").unwrap();
        assert_eq!(d.seq, 4);
        assert_eq!(env.state.len(), 300_000);
    }

    #[tokio::test]
    async fn bytes_changed_in_transit_are_refused() {
        let (head, payload) = file();
        let (l, addr) = port().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let rx = tokio::spawn(async move { receive(l, RIGHT, deadline).await });
        // A sender whose CRC-32 is of other bytes than those it sends.
        let client = ClientTls::new(Token::new(RIGHT).unwrap(), None).unwrap();
        let (mut s, _) = client.connect(&addr, ChannelKind::Migration).await.unwrap();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[HEADER_LEN..]);
        crc.update(&payload);
        let mut bad = payload.clone();
        bad[1000] ^= 1;
        s.write_all(&((head.len() + bad.len()) as u64).to_le_bytes())
            .await
            .unwrap();
        s.write_all(&head).await.unwrap();
        s.write_all(&bad).await.unwrap();
        s.write_all(&crc.finalize().to_le_bytes()).await.unwrap();
        let e = rx.await.unwrap().err().unwrap().to_string();
        assert!(e.contains("corrupted in transit"), "{e}");
    }

    /// What a plain TCP sender writes (the old clear-text hello, or anything) is
    /// refused at the TLS handshake; the port stays open for the real sender.
    #[tokio::test]
    async fn a_sender_without_tls_and_the_secret_gets_nothing_through() {
        let f = file();
        let (l, addr) = port().await;
        let rx = answering(l, "y");
        let mut plain = TcpStream::connect(&addr).await.unwrap();
        let _ = plain
            .write_all(b"GODWITHO\x14\0\0\0the-right-secret-123")
            .await;
        let mut buf = [0u8; 64];
        // No acceptance comes back: at most a TLS alert record (type 21), then
        // the connection is dropped.
        let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
        match n {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => assert_eq!(buf[0], 21, "not a TLS alert: {buf:?}"),
            Err(_) => panic!("the receiver kept a clear-text sender waiting"),
        }
        let v = send_with(&addr, RIGHT, &f).await.unwrap();
        assert_eq!(v["id"], "y");
        assert_eq!(rx.await.unwrap().len(), f.0.len() + f.1.len());
    }

    /// An impostor listening in place of the new instance, without the secret,
    /// gets no byte of the state: the sender stops at the binding.
    #[tokio::test]
    async fn an_impostor_receiver_gets_no_state() {
        let f = file();
        let (l, addr) = port().await;
        let deadline = Instant::now() + Duration::from_secs(2);
        let rx = tokio::spawn(async move { receive(l, "an-impostors-secret-9", deadline).await });
        let e = send_with(&addr, RIGHT, &f).await.unwrap_err();
        assert!(e.new_instance_not_serving(), "{e}");
        assert!(matches!(e, HandoffError::Refused { .. }), "{e}");
        assert!(rx.await.unwrap().is_err());
    }
}

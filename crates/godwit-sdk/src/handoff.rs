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
//! On the connection, after the TCP connect:
//!
//! | from | bytes |
//! |---|---|
//! | old | `GODWITHO` · u32 secret length (LE) · secret |
//! | new | MGMT_REPLY frame: `{"ok": true}` (accepted) or `{"ok": false, "error": ...}` |
//! | old | u64 file length (LE) · the checkpoint file, its CRC-32 field 0 · u32 CRC-32 (LE) |
//! | new | MGMT_REPLY frame: `{"ok": true, "id": ...}` (serving) or `{"ok": false, "error": ...}` |

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::checkpoint::{CRC_AT, HEADER_LEN};
use crate::wire;

/// Opening bytes of a hand-off connection.
pub const MAGIC: &[u8; 8] = b"GODWITHO";
/// Longest secret accepted.
pub const MAX_SECRET: u32 = 1024;
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
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| HandoffError::Connect {
            addr: addr.to_string(),
            message: late("connection"),
        })?
        .map_err(|e| HandoffError::Connect {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let cut = |sent: u64, message: String| HandoffError::Cut {
        addr: addr.to_string(),
        sent,
        total,
        message,
    };
    let mut hello = Vec::with_capacity(12 + secret.len());
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(secret.len() as u32).to_le_bytes());
    hello.extend_from_slice(secret.as_bytes());
    tokio::time::timeout_at(deadline, wr.write_all(&hello))
        .await
        .map_err(|_| cut(0, late("hello sent")))?
        .map_err(|e| cut(0, e.to_string()))?;
    let accepted = tokio::time::timeout_at(deadline, read_answer(&mut rd))
        .await
        .map_err(|_| cut(0, late("acceptance")))?
        .map_err(|e| cut(0, format!("no acceptance: {e}")))?;
    if accepted["ok"].as_bool() != Some(true) {
        return Err(HandoffError::Refused {
            addr: addr.to_string(),
            message: accepted["error"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        });
    }
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
    pub stream: TcpStream,
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
/// its checkpoint file. Senders with a wrong secret are refused and logged; after
/// [`MAX_REFUSED`] of them, or at the deadline, the hand-off is given up.
pub async fn receive(
    listener: TcpListener,
    secret: &str,
    deadline: Instant,
) -> Result<Received, HandoffError> {
    let mut refused = 0;
    loop {
        let (mut stream, peer) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| {
                HandoffError::Receive(format!(
                    "no authenticated sender came in time ({refused} refused)"
                ))
            })?
            .map_err(|e| HandoffError::Receive(format!("accept: {e}")))?;
        let _ = stream.set_nodelay(true);
        let peer = peer.to_string();
        match tokio::time::timeout_at(deadline, hello(&mut stream, secret)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                tracing::warn!(%peer, "hand-off connection refused: {why}");
                let v = json!({ "ok": false, "error": format!("refused: {why}") });
                let _ = wire::write_frame(
                    &mut stream,
                    wire::kind::MGMT_REPLY,
                    &[v.to_string().as_bytes()],
                )
                .await;
                refused += 1;
                if refused >= MAX_REFUSED {
                    return Err(HandoffError::Receive(format!(
                        "{refused} connections with a wrong secret; hand-off port closed"
                    )));
                }
                continue;
            }
            Err(_) => {
                return Err(HandoffError::Receive(format!(
                    "sender {peer} did not finish its hello in time"
                )))
            }
        }
        let accepted = json!({ "ok": true }).to_string();
        let read = async {
            wire::write_frame(&mut stream, wire::kind::MGMT_REPLY, &[accepted.as_bytes()])
                .await
                .map_err(|e| e.to_string())?;
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
            Ok(file)
        };
        return match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(file)) => Ok(Received { stream, peer, file }),
            Ok(Err(e)) => Err(HandoffError::Receive(format!(
                "the stream from {peer} broke off: {e}"
            ))),
            Err(_) => Err(HandoffError::Receive(format!(
                "the stream from {peer} did not complete in time"
            ))),
        };
    }
}

/// Reads and checks the sender's hello.
async fn hello(stream: &mut TcpStream, secret: &str) -> Result<(), String> {
    let mut magic = [0u8; 8];
    stream
        .read_exact(&mut magic)
        .await
        .map_err(|e| e.to_string())?;
    if &magic != MAGIC {
        return Err("not a Godwit hand-off".into());
    }
    let n = stream.read_u32_le().await.map_err(|e| e.to_string())?;
    if n > MAX_SECRET {
        return Err(format!("secret of {n} bytes"));
    }
    let mut given = vec![0u8; n as usize];
    stream
        .read_exact(&mut given)
        .await
        .map_err(|e| e.to_string())?;
    if !crate::runtime::constant_time_eq(&given, secret.as_bytes()) {
        return Err("wrong migration secret".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{self, Description, Envelope};
    use crate::codec::Portable;

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

    #[tokio::test]
    async fn the_file_arrives_checksummed_after_a_wrong_secret_is_refused() {
        let (head, payload) = file();
        let (l, addr) = port().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let rx = tokio::spawn(async move {
            let mut got = receive(l, "the-right-secret-123", deadline).await.unwrap();
            got.answer(&json!({"ok": true, "id": "x"})).await;
            got.file
        });
        let e = send(
            &addr,
            "a-wrong-secret-12345",
            &head,
            &payload,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert!(e.new_instance_not_serving());
        assert!(e.to_string().contains("wrong migration secret"), "{e}");
        let v = send(
            &addr,
            "the-right-secret-123",
            &head,
            &payload,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
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
        let rx = tokio::spawn(async move { receive(l, "the-right-secret-123", deadline).await });
        // A sender whose CRC-32 is of other bytes than those it sends.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let secret = "the-right-secret-123";
        s.write_all(MAGIC).await.unwrap();
        s.write_all(&(secret.len() as u32).to_le_bytes())
            .await
            .unwrap();
        s.write_all(secret.as_bytes()).await.unwrap();
        let mut r = BufReader::new(&mut s);
        assert_eq!(read_answer(&mut r).await.unwrap()["ok"], true);
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
}

//! The RPC wire protocol (docs/SDK.md, "Wire protocol").
//!
//! One TCP connection carries one request at a time. Every message is a frame:
//! `u32 length (LE) | u8 kind | body`, where `length` counts the kind byte and the body.
//!
//! | kind | name | body |
//! |---|---|---|
//! | 1 | CALL | client id (16 bytes) · u64 seq · u64 ack_below · u16 method length · method (UTF-8) · arguments |
//! | 2 | REPLY | u64 seq · u8 status · payload |
//! | 3 | MGMT | JSON request |
//! | 4 | MGMT_REPLY | JSON answer |
//! | 5 | HELLO | call token (UTF-8): sent first on a connection to a service that requires one |
//!
//! REPLY status: 0 OK (payload: encoded return value), 1 PENDING (keep waiting; sent
//! every [`HEARTBEAT`] while a call runs), 2 MOVED (not served here: re-resolve, retry
//! with the same seq), 3 ERROR (payload: UTF-8 message; do not retry).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest frame accepted.
pub const MAX_FRAME: u32 = 256 << 20;
/// Interval of PENDING heartbeats.
pub const HEARTBEAT: Duration = Duration::from_millis(400);

/// Frame kinds.
pub mod kind {
    /// A call.
    pub const CALL: u8 = 1;
    /// A call's answer.
    pub const REPLY: u8 = 2;
    /// A management request.
    pub const MGMT: u8 = 3;
    /// A management answer.
    pub const MGMT_REPLY: u8 = 4;
    /// The client's call token, first on a connection (no answer: a wrong or missing
    /// token makes the connection's first call answer ERROR `unauthorized: ...`).
    pub const HELLO: u8 = 5;
}

/// REPLY status codes.
pub mod status {
    /// Done; payload is the result.
    pub const OK: u8 = 0;
    /// Still running.
    pub const PENDING: u8 = 1;
    /// Not served here any more.
    pub const MOVED: u8 = 2;
    /// Failed; payload is a message.
    pub const ERROR: u8 = 3;
}

/// Framing errors.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// I/O failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// Malformed frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A decoded call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Client id.
    pub client: [u8; 16],
    /// Sequence number (unique per client).
    pub seq: u64,
    /// Every seq below this one has been answered and will not be retried.
    pub ack_below: u64,
    /// Operation.
    pub method: String,
    /// Encoded arguments.
    pub args: Vec<u8>,
}

/// Reads one frame: (kind, body).
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), WireError> {
    let len = r.read_u32_le().await?;
    if len == 0 || len > MAX_FRAME {
        return Err(WireError::Malformed(format!("frame length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await?;
    let kind = body.remove(0);
    Ok((kind, body))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u8,
    parts: &[&[u8]],
) -> Result<(), WireError> {
    let len: usize = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    if len > MAX_FRAME as usize {
        return Err(WireError::Malformed(format!(
            "frame of {len} bytes is over the limit"
        )));
    }
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(kind);
    for p in parts {
        buf.extend_from_slice(p);
    }
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Encodes a CALL body.
pub fn encode_call(c: &Call) -> Vec<u8> {
    let mut b = Vec::with_capacity(34 + c.method.len() + c.args.len());
    b.extend_from_slice(&c.client);
    b.extend_from_slice(&c.seq.to_le_bytes());
    b.extend_from_slice(&c.ack_below.to_le_bytes());
    b.extend_from_slice(&(c.method.len() as u16).to_le_bytes());
    b.extend_from_slice(c.method.as_bytes());
    b.extend_from_slice(&c.args);
    b
}

/// Decodes a CALL body.
pub fn decode_call(b: &[u8]) -> Result<Call, WireError> {
    let bad = || WireError::Malformed(format!("CALL of {} bytes", b.len()));
    if b.len() < 34 {
        return Err(bad());
    }
    let mut client = [0u8; 16];
    client.copy_from_slice(&b[..16]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let seq = u64_at(16);
    let ack_below = u64_at(24);
    let mlen = u16::from_le_bytes([b[32], b[33]]) as usize;
    if b.len() < 34 + mlen {
        return Err(bad());
    }
    let method = std::str::from_utf8(&b[34..34 + mlen])
        .map_err(|_| bad())?
        .to_string();
    Ok(Call {
        client,
        seq,
        ack_below,
        method,
        args: b[34 + mlen..].to_vec(),
    })
}

/// Encodes a REPLY body.
pub fn encode_reply(seq: u64, status: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(9 + payload.len());
    b.extend_from_slice(&seq.to_le_bytes());
    b.push(status);
    b.extend_from_slice(payload);
    b
}

/// Decodes a REPLY body into (seq, status, payload).
pub fn decode_reply(b: &[u8]) -> Result<(u64, u8, &[u8]), WireError> {
    if b.len() < 9 {
        return Err(WireError::Malformed(format!("REPLY of {} bytes", b.len())));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    Ok((u64::from_le_bytes(a), b[8], &b[9..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_round_trip_and_garbage() {
        let c = Call {
            client: [7; 16],
            seq: 5,
            ack_below: 3,
            method: "transfer".into(),
            args: vec![1, 2, 3],
        };
        assert_eq!(decode_call(&encode_call(&c)).unwrap(), c);
        let enc = encode_call(&c);
        for cut in 0..42 {
            assert!(decode_call(&enc[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_reply(&[0; 8]).is_err());
        assert_eq!(
            decode_reply(&encode_reply(9, 2, b"x")).unwrap(),
            (9, 2, &b"x"[..])
        );
    }

    #[tokio::test]
    async fn frame_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::CALL, &[b"ab"]).await.unwrap();
        assert_eq!(
            read_frame(&mut &buf[..]).await.unwrap(),
            (kind::CALL, b"ab".to_vec())
        );
        let huge = (MAX_FRAME + 1).to_le_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 0][..]).await,
            Err(WireError::Malformed(_))
        ));
    }
}

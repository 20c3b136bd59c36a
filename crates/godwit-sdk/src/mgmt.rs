//! Management client: talks the MGMT frame of the wire protocol to any conformist service.

use std::time::Duration;

use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::TcpStream;

use crate::wire;

/// Management request failures.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// Could not reach the service.
    #[error("service at {addr}: {message}")]
    Unreachable {
        /// Address.
        addr: String,
        /// Cause.
        message: String,
    },
    /// The service refused or failed the operation.
    #[error("service at {addr}: {op} failed: {message}")]
    Failed {
        /// Address.
        addr: String,
        /// Operation.
        op: String,
        /// Message from the service.
        message: String,
    },
}

/// Sends a management request (`{"op": ..., ...}`; `token` added when given) and returns
/// the answer. An answer with `"ok": false` becomes [`MgmtError::Failed`].
pub async fn request(
    addr: &str,
    mut req: Value,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Value, MgmtError> {
    let op = req["op"].as_str().unwrap_or("?").to_string();
    if let (Some(t), Some(o)) = (token, req.as_object_mut()) {
        o.insert("token".into(), Value::String(t.to_string()));
    }
    let unreachable = |message: String| MgmtError::Unreachable {
        addr: addr.to_string(),
        message,
    };
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut stream = BufReader::new(stream);
        wire::write_frame(
            stream.get_mut(),
            wire::kind::MGMT,
            &[req.to_string().as_bytes()],
        )
        .await
        .map_err(|e| unreachable(e.to_string()))?;
        let (kind, body) = wire::read_frame(&mut stream)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if kind != wire::kind::MGMT_REPLY {
            return Err(unreachable(format!("unexpected frame kind {kind}")));
        }
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| unreachable(format!("bad JSON answer: {e}")))
    };
    let answer = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
    if answer["ok"].as_bool() != Some(true) {
        return Err(MgmtError::Failed {
            addr: addr.to_string(),
            op,
            message: answer["error"].as_str().unwrap_or("no message").to_string(),
        });
    }
    Ok(answer)
}

//! Receiving a process migration on a `ChannelKind::Migration` channel.
//!
//! Not built yet: the channel is authenticated and scoped, and this end refuses
//! politely. The migration engine replaces this body.

use std::path::PathBuf;
use std::sync::Arc;

use godwit_net::{Scope, Scopes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::Agent;

/// Serves one migration channel: `stream` is authenticated with `scopes`; `data` is the
/// agent's data directory.
pub async fn receive(
    mut stream: TlsStream<TcpStream>,
    scopes: Scopes,
    data: PathBuf,
    agent: Arc<Agent>,
) -> anyhow::Result<()> {
    let _ = (&data, &agent);
    if !scopes.allows(Scope::Operate) {
        stream
            .write_all(b"godwitd: receiving a migration needs a token with the operate scope\n")
            .await?;
        stream.shutdown().await?;
        anyhow::bail!("migration channel refused: the token lacks the operate scope ({scopes})");
    }
    stream
        .write_all(b"godwitd: receiving migrations is not built yet\n")
        .await?;
    stream.shutdown().await?;
    Ok(())
}

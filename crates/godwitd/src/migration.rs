//! Receiving a process migration on a `ChannelKind::Migration` channel: the
//! engine's `migrate::receive` runs on a blocking thread over the TLS
//! stream, with a watchdog on every read and write.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use godwit_engine::migrate::{self, ReceiveOptions};
use godwit_net::{Scope, Scopes};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::Agent;

/// Longest silence of the source before the migration is abandoned.
pub const WATCHDOG: Duration = Duration::from_secs(60);

/// How much of this node's memory a received image may take: what is
/// available now, less a margin.
fn memory_budget() -> u64 {
    let avail_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(1 << 20);
    (avail_kib << 10) / 10 * 9
}

/// Serves one migration channel: `stream` is authenticated with `scopes`; `data` is the
/// agent's data directory.
pub async fn receive(
    mut stream: TlsStream<TcpStream>,
    scopes: Scopes,
    data: PathBuf,
    agent: Arc<Agent>,
) -> anyhow::Result<()> {
    let peer = stream
        .get_ref()
        .0
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    if !scopes.allows(Scope::Operate) {
        let why = format!(
            "receiving a migration needs a token with the operate scope (this one has {scopes})"
        );
        let mut frame = Vec::new();
        godwit_image::stream::write_frame(
            &mut frame,
            godwit_image::stream::kind::ABORT,
            0,
            why.as_bytes(),
        )?;
        stream.write_all(&frame).await?;
        stream.shutdown().await?;
        anyhow::bail!("migration from {peer} refused: {why}");
    }
    let opts = ReceiveOptions {
        max_bytes: memory_budget(),
        node: agent.node.clone(),
        force_pid_ns: false,
        keep_root: Some(data.join("images")),
        defer_fill: agent.defer_fill,
    };
    let mut timed = tokio_io_timeout::TimeoutStream::new(stream);
    timed.set_read_timeout(Some(WATCHDOG));
    timed.set_write_timeout(Some(WATCHDOG));
    let handle = tokio::runtime::Handle::current();
    let from = peer.clone();
    tracing::info!(peer = %peer, "receiving a migration");
    let report = tokio::task::spawn_blocking(move || {
        let io = tokio_util::io::SyncIoBridge::new_with_handle(Box::pin(timed), handle);
        migrate::receive(io, &from, &opts, &godwit_engine::Quiet)
    })
    .await?;
    crate::metrics::migration_received(report.as_ref().ok().map(|r| (r.bytes, r.total)));
    match report {
        Ok(r) => {
            tracing::info!(
                peer = %peer, source = %r.source_node, mode = %r.mode, pid = r.restore.pid,
                host_pid = r.restore.host_pid, bytes = r.bytes,
                ms = r.total.as_secs_f64() * 1e3,
                "migration received; the process runs here"
            );
            crate::transparent::adopt(
                &agent,
                r.restore.host_pid,
                &format!("migrated from {}", r.source_node),
            );
            Ok(())
        }
        Err(e) => {
            tracing::warn!(peer = %peer, "migration not received: {e}");
            Err(e.into())
        }
    }
}

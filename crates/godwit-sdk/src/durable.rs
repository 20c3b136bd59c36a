//! Durable calls: the log of write calls since the last checkpoint.
//!
//! With `--durable-log DIR`, every write call is appended to `DIR/<uuid>.calls`
//! (operation, encoded arguments, client and call number, and a log sequence number)
//! before it is applied, and is on disk (fdatasync) before its reply is sent. A
//! checkpoint records the last log sequence number it covers; after it is in the store
//! the entries it covers are cut from the log. On restore, the entries after the
//! checkpoint's sequence number are applied again over it, in order, exactly once (an
//! entry at or below the checkpoint's number is skipped), and their replies are
//! remembered so that a client's retry is answered, not applied twice.
//!
//! Record layout: `len u32 LE | crc32 u32 LE | payload (len bytes)`, the payload a
//! portable-encoded [`LogEntry`]. A torn last record (the process died while writing
//! it, so it was never acknowledged) is ignored and cut.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::codec::{self, DecodeError, Portable, Reader, StructDecoder, StructEncoder};
use crate::schema::{Field, Schema};

/// When a durable write is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// One fdatasync per write, under the state lock (writes are serialized on it).
    #[default]
    Each,
    /// Group commit: the log is appended under the state lock and synced outside it;
    /// one fdatasync covers every write appended before it.
    Group,
}

impl SyncMode {
    /// Lower-case name, as the option takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Each => "each",
            SyncMode::Group => "group",
        }
    }
}

/// Durable log failures.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// I/O on the log file.
    #[error("durable call log {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// One logged write call.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Log sequence number (1, 2, ... for the instance; never reused).
    pub seq: u64,
    /// Client id (UUID text).
    pub client: String,
    /// The client's call number.
    pub call_seq: u64,
    /// Operation.
    pub method: String,
    /// Encoded arguments.
    pub args: Vec<u8>,
}

impl Portable for LogEntry {
    fn schema() -> Schema {
        Schema::Struct {
            name: "LogEntry".into(),
            fields: vec![
                Field::new("seq", 1, Schema::U64, false),
                Field::new("client", 2, Schema::String, false),
                Field::new("call_seq", 3, Schema::U64, false),
                Field::new("method", 4, Schema::String, false),
                Field::new("args", 5, Schema::List(Box::new(Schema::U8)), false),
            ],
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        let mut e = StructEncoder::begin(out, 5);
        e.field(1, &self.seq);
        e.field(2, &self.client);
        e.field(3, &self.call_seq);
        e.field(4, &self.method);
        e.field(5, &self.args);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut d = StructDecoder::read(r, "LogEntry")?;
        Ok(LogEntry {
            seq: d.required(1, "seq")?,
            client: d.required(2, "client")?,
            call_seq: d.required(3, "call_seq")?,
            method: d.required(4, "method")?,
            args: d.required(5, "args")?,
        })
    }
}

struct Open {
    file: File,
    /// Highest sequence number appended.
    appended: u64,
}

/// The call log of one instance.
pub(crate) struct CallLog {
    path: PathBuf,
    pub(crate) mode: SyncMode,
    file: Mutex<Open>,
    /// Highest sequence number known on disk (group commit).
    synced: tokio::sync::Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses a log file's bytes: the entries, and the length of the valid prefix.
fn parse(bytes: &[u8]) -> (Vec<LogEntry>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        match codec::from_slice::<LogEntry>(body) {
            Ok(e) => out.push(e),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (out, at)
}

fn record(e: &LogEntry) -> Vec<u8> {
    let body = codec::to_vec(e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

impl CallLog {
    /// The log file of instance `uuid` under `dir`.
    pub(crate) fn path_for(dir: &Path, uuid: &str) -> PathBuf {
        dir.join(format!("{uuid}.calls"))
    }

    /// Opens (creating) the log and reads its entries. A torn tail is cut.
    pub(crate) fn open(
        dir: &Path,
        uuid: &str,
        mode: SyncMode,
    ) -> Result<(CallLog, Vec<LogEntry>), LogError> {
        let path = Self::path_for(dir, uuid);
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (entries, valid) = parse(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                "durable call log: {} bytes of a torn last record (never acknowledged) cut",
                bytes.len() - valid
            );
            file.set_len(valid as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let appended = entries.last().map(|e| e.seq).unwrap_or(0);
        Ok((
            CallLog {
                path,
                mode,
                file: Mutex::new(Open { file, appended }),
                synced: tokio::sync::Mutex::new(appended),
            },
            entries,
        ))
    }

    fn io(&self, source: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends an entry; in `Each` mode also forces it to disk.
    pub(crate) fn append(&self, e: &LogEntry) -> Result<(), LogError> {
        let rec = record(e);
        let mut f = lock(&self.file);
        f.file.write_all(&rec).map_err(|x| self.io(x))?;
        if self.mode == SyncMode::Each {
            f.file.sync_data().map_err(|x| self.io(x))?;
        }
        f.appended = f.appended.max(e.seq);
        Ok(())
    }

    /// Group commit: returns once entry `seq` is on disk; one fdatasync serves every
    /// entry appended before it.
    pub(crate) async fn sync_to(&self, seq: u64) -> Result<(), LogError> {
        let mut synced = self.synced.lock().await;
        if *synced >= seq {
            return Ok(());
        }
        let (file, upto) = {
            let f = lock(&self.file);
            (f.file.try_clone().map_err(|x| self.io(x))?, f.appended)
        };
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| self.io(std::io::Error::other(e.to_string())))?
            .map_err(|x| self.io(x))?;
        *synced = upto;
        Ok(())
    }

    /// Cuts every entry up to `seq` (a checkpoint in the store covers them): the
    /// remaining entries are written to a new file, synced, renamed over the log.
    pub(crate) fn truncate_through(&self, seq: u64) -> Result<(), LogError> {
        let mut f = lock(&self.file);
        let bytes = std::fs::read(&self.path).map_err(|x| self.io(x))?;
        let (entries, _) = parse(&bytes);
        let keep: Vec<&LogEntry> = entries.iter().filter(|e| e.seq > seq).collect();
        if keep.len() == entries.len() {
            return Ok(());
        }
        let tmp = self.path.with_extension("calls.tmp");
        let mut out = Vec::new();
        for e in &keep {
            out.extend_from_slice(&record(e));
        }
        {
            let mut t = File::create(&tmp).map_err(|x| self.io(x))?;
            t.write_all(&out).map_err(|x| self.io(x))?;
            t.sync_data().map_err(|x| self.io(x))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|x| self.io(x))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        f.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|x| self.io(x))?;
        tracing::debug!(
            through = seq,
            kept = keep.len(),
            "durable call log cut at a checkpoint"
        );
        Ok(())
    }

    /// Drops every entry (a restore of an older checkpoint starts a new branch: the
    /// log's calls belong to the abandoned one).
    pub(crate) fn clear(&self) -> Result<(), LogError> {
        self.truncate_through(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> LogEntry {
        LogEntry {
            seq,
            client: "c".into(),
            call_seq: seq * 10,
            method: "incr".into(),
            args: vec![seq as u8],
        }
    }

    #[test]
    fn torn_tail_is_cut_and_truncation_keeps_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (log, old) = CallLog::open(dir.path(), "u", SyncMode::Each).unwrap();
        assert!(old.is_empty());
        for s in 1..=5 {
            log.append(&entry(s)).unwrap();
        }
        drop(log);
        // A record cut short by a kill in the middle of its write.
        let path = CallLog::path_for(dir.path(), "u");
        let mut torn = record(&entry(6));
        torn.truncate(torn.len() - 3);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let (log, got) = CallLog::open(dir.path(), "u", SyncMode::Group).unwrap();
        assert_eq!(got, (1..=5).map(entry).collect::<Vec<_>>());
        log.truncate_through(3).unwrap();
        log.append(&entry(6)).unwrap();
        drop(log);
        let (_, got) = CallLog::open(dir.path(), "u", SyncMode::Each).unwrap();
        assert_eq!(got, [4, 5, 6].map(entry).to_vec());
    }
}

//! A node's checkpoint store: content-addressed chunks on disk.
//!
//! Layout of a store directory (0700; every file 0600):
//!
//! - `chunks/XY/HASH`: one chunk of page data, named by the BLAKE3 hash
//!   (hex) of its uncompressed bytes, `XY` its first two hex digits. The
//!   file is one tag byte (0: raw, 1: zstd) and the bytes. Identical
//!   memory, in two checkpoints or two processes, is one file.
//! - `checkpoints/ID`: one checkpoint: the image manifest
//!   (`manifest.img`'s bytes, as `godwit_image` writes them) and, for each
//!   page file, its chunks in order ([`CheckpointMeta`]). See
//!   [`checkpoint`] for the byte format.
//! - `lock`: writers hold a shared `flock` on it from their first chunk to
//!   their commit; [`Store::gc`] holds it exclusively, so it never sees a
//!   chunk written for a checkpoint not committed yet.
//!
//! Page files are cut into chunks at page boundaries by their content
//! ([`chunker`]), so that memory shifted by whole pages (a mapping that
//! grew before others) still falls into the same chunks.
//!
//! Durability: new chunks are written under temporary names; at the
//! commit, with `sync` (the default), one `syncfs` on the store's file
//! system makes them durable, they are renamed into place, a second
//! `syncfs` makes the names durable, then the checkpoint file is written,
//! fsynced, linked into place and `checkpoints/` fsynced. A chunk under its
//! final name is thus always whole, and a checkpoint file never on disk
//! before its chunks. (An fsync per chunk cost 15 ms each here: 4096 of
//! them for a GiB.)

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod checkpoint;
pub mod chunker;
mod error;
pub mod export;
pub mod medium;
pub mod retention;

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use checkpoint::{CheckpointMeta, ChunkRef, StoredFile};
pub use error::StoreError;
pub use medium::{StoreMedium, StoreSource};
pub use retention::{PruneReport, Retention};

/// Result of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) const DIR_MODE: u32 = 0o700;
pub(crate) const FILE_MODE: u32 = 0o600;
/// Prefix of files being written (removed by [`Store::gc`]).
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

const TAG_RAW: u8 = 0;
const TAG_ZSTD: u8 = 1;

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Stored as they are.
    None,
    /// zstd at this level (1 is the default: see docs/PERFORMANCE.md).
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(1)
    }
}

/// A chunk's name: the BLAKE3 hash of its uncompressed bytes.
pub type Hash = [u8; 32];

/// Hex of a hash.
pub fn hex(h: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A hash from its hex form.
pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

/// Checks a checkpoint name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with '.'.
pub fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One checkpoint as [`Store::list`] shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Its name.
    pub id: String,
    /// The previous checkpoint of the same process, if any when it was taken.
    pub parent: Option<String>,
    /// Whether that parent is still in the store.
    pub parent_present: bool,
    /// The root process's PID when it was taken.
    pub pid: Option<i32>,
    /// When it was committed.
    pub created_unix_ms: u64,
    /// Bytes of page files (uncompressed).
    pub page_bytes: u64,
    /// Chunks it refers to.
    pub chunks: u64,
    /// Chunks it added to the store (the others were there already).
    pub new_chunks: u64,
    /// Bytes it added to the store (compressed, as stored).
    pub new_stored_bytes: u64,
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Checkpoints kept (their chunks are kept).
    pub checkpoints: u64,
    /// Chunks kept.
    pub chunks_kept: u64,
    /// Chunks removed: no checkpoint refers to them.
    pub chunks_removed: u64,
    /// Bytes those held on disk.
    pub bytes_freed: u64,
    /// Leftover temporary files of writers that died, removed.
    pub temp_removed: u64,
}

/// Space used by the chunks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Usage {
    /// Chunk files.
    pub chunks: u64,
    /// Bytes of chunk files.
    pub bytes: u64,
}

/// A checkpoint store in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    compression: Compression,
    sync: bool,
}

impl Store {
    /// Opens the store in `dir`, creating it (0700) if needed.
    pub fn open(dir: &Path) -> Result<Store> {
        for d in [
            dir.to_path_buf(),
            dir.join("chunks"),
            dir.join("checkpoints"),
        ] {
            match DirBuilder::new().recursive(true).mode(DIR_MODE).create(&d) {
                Ok(()) => {}
                Err(e) => return Err(StoreError::io("creating", d, e)),
            }
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| StoreError::io("setting the mode of", dir, e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            compression: Compression::default(),
            sync: true,
        })
    }

    /// Chooses how new chunks are compressed.
    #[must_use]
    pub fn compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }

    /// Whether writes are flushed to stable storage (default true).
    #[must_use]
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_sync(&self) -> bool {
        self.sync
    }

    pub(crate) fn checkpoint_path(&self, id: &str) -> PathBuf {
        self.dir.join("checkpoints").join(id)
    }

    pub(crate) fn chunk_dir(&self, h: &Hash) -> PathBuf {
        self.dir.join("chunks").join(format!("{:02x}", h[0]))
    }

    pub(crate) fn chunk_path(&self, h: &Hash) -> PathBuf {
        self.chunk_dir(h).join(hex(h))
    }

    /// Takes the store's lock: shared for writers, exclusive for gc.
    pub(crate) fn lock(&self, exclusive: bool) -> Result<File> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| StoreError::io("opening", &path, e))?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&f, op).map_err(|e| StoreError::io("locking", &path, e.into()))?;
        Ok(f)
    }

    /// Whether checkpoint `id` exists.
    pub fn contains(&self, id: &str) -> bool {
        check_name("checkpoint id", id).is_ok() && self.checkpoint_path(id).exists()
    }

    /// Whether chunk `h` is in the store.
    pub(crate) fn has_chunk(&self, h: &Hash) -> bool {
        fs::symlink_metadata(self.chunk_path(h)).is_ok()
    }

    /// Reads and checks chunk `h` (of length `len`) for checkpoint `id`.
    pub fn get_chunk(&self, id: &str, h: &Hash, len: u32) -> Result<Vec<u8>> {
        let stored = self.get_stored(id, h)?;
        decode_chunk(id, h, len, &stored)
    }

    /// The stored form of chunk `h` (not checked).
    pub(crate) fn get_stored(&self, id: &str, h: &Hash) -> Result<Vec<u8>> {
        let path = self.chunk_path(h);
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::MissingChunk {
                checkpoint: id.to_string(),
                chunk: hex(h),
            },
            _ => StoreError::io("reading", path, e),
        })
    }

    /// Reads checkpoint `id`: its record and the image manifest bytes.
    pub fn read_checkpoint(&self, id: &str) -> Result<(CheckpointMeta, Vec<u8>)> {
        check_name("checkpoint id", id)?;
        let path = self.checkpoint_path(id);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::NoCheckpoint {
                id: id.to_string(),
                store: self.dir.clone(),
            },
            _ => StoreError::io("reading", &path, e),
        })?;
        let (meta, manifest) = checkpoint::decode(&bytes, &path)?;
        if meta.id != id {
            return Err(StoreError::BadCheckpoint {
                path,
                why: format!("it names itself {:?}", meta.id),
            });
        }
        Ok((meta, manifest))
    }

    /// The names of every checkpoint.
    pub fn ids(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("checkpoints");
        let mut v = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| StoreError::io("reading", &dir, e))? {
            let e = e.map_err(|e| StoreError::io("reading", &dir, e))?;
            if let Some(n) = e.file_name().to_str() {
                if check_name("checkpoint id", n).is_ok() {
                    v.push(n.to_string());
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// Every checkpoint, oldest first. A damaged checkpoint file is an error.
    pub fn list(&self) -> Result<Vec<Summary>> {
        let metas: Vec<CheckpointMeta> = self
            .ids()?
            .into_iter()
            .map(|id| self.read_checkpoint(&id).map(|(m, _)| m))
            .collect::<Result<_>>()?;
        let ids: HashSet<&str> = metas.iter().map(|m| m.id.as_str()).collect();
        let mut out: Vec<Summary> = metas
            .iter()
            .map(|m| Summary {
                id: m.id.clone(),
                parent: m.parent.clone(),
                parent_present: m.parent.as_deref().is_some_and(|p| ids.contains(p)),
                pid: m.pid,
                created_unix_ms: m.created_unix_ms,
                page_bytes: m.files.iter().map(|f| f.size).sum(),
                chunks: m.files.iter().map(|f| f.chunks.len() as u64).sum(),
                new_chunks: m.new_chunks,
                new_stored_bytes: m.new_stored_bytes,
            })
            .collect();
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    /// The newest checkpoint of process `pid`: the parent of its next one.
    /// A damaged checkpoint file is passed over (with a warning): it must
    /// not stop new checkpoints.
    pub fn newest_of(&self, pid: i32) -> Result<Option<String>> {
        let mut best: Option<(u64, String)> = None;
        for id in self.ids()? {
            match self.read_checkpoint(&id) {
                Ok((m, _)) if m.pid == Some(pid) => {
                    let key = (m.created_unix_ms, m.id);
                    if best.as_ref().map_or(true, |b| key > *b) {
                        best = Some(key);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("looking for the parent checkpoint: {e}"),
            }
        }
        Ok(best.map(|(_, id)| id))
    }

    /// Removes checkpoint `id` (its chunks stay until [`gc`](Self::gc)).
    pub fn remove(&self, id: &str) -> Result<()> {
        check_name("checkpoint id", id)?;
        let path = self.checkpoint_path(id);
        fs::remove_file(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StoreError::NoCheckpoint {
                id: id.to_string(),
                store: self.dir.clone(),
            },
            _ => StoreError::io("removing", &path, e),
        })?;
        if self.sync {
            sync_dir(&self.dir.join("checkpoints"))?;
        }
        tracing::info!(id, "checkpoint removed");
        Ok(())
    }

    /// Space the chunks take.
    pub fn usage(&self) -> Result<Usage> {
        let mut u = Usage::default();
        self.each_chunk_file(|_, name, len| {
            if !name.starts_with(TEMP_PREFIX) {
                u.chunks += 1;
                u.bytes += len;
            }
            Ok(())
        })?;
        Ok(u)
    }

    fn each_chunk_file(&self, mut f: impl FnMut(&Path, &str, u64) -> Result<()>) -> Result<()> {
        let top = self.dir.join("chunks");
        for sub in fs::read_dir(&top).map_err(|e| StoreError::io("reading", &top, e))? {
            let sub = sub.map_err(|e| StoreError::io("reading", &top, e))?.path();
            if !sub.is_dir() {
                continue;
            }
            for e in fs::read_dir(&sub).map_err(|e| StoreError::io("reading", &sub, e))? {
                let e = e.map_err(|e| StoreError::io("reading", &sub, e))?;
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                if let Some(name) = e.file_name().to_str() {
                    f(&e.path(), name, len)?;
                }
            }
        }
        Ok(())
    }

    /// Removes every chunk no checkpoint refers to, and leftovers of
    /// writers that died. Holds the store's lock exclusively: a writer
    /// (dump, import) holds it shared from its first chunk to its commit,
    /// so gc waits for writers in progress and they wait for it; every
    /// chunk a committed checkpoint needs is kept. If a checkpoint file is
    /// damaged, nothing is removed.
    pub fn gc(&self) -> Result<GcReport> {
        let _lock = self.lock(true)?;
        let mut live: HashSet<Hash> = HashSet::new();
        let mut r = GcReport::default();
        for id in self.ids()? {
            let (meta, _) = self.read_checkpoint(&id)?;
            r.checkpoints += 1;
            for f in &meta.files {
                for c in &f.chunks {
                    live.insert(c.hash);
                }
            }
        }
        let ck_dir = self.dir.join("checkpoints");
        for e in fs::read_dir(&ck_dir).map_err(|e| StoreError::io("reading", &ck_dir, e))? {
            let e = e.map_err(|e| StoreError::io("reading", &ck_dir, e))?;
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                remove_quiet(&e.path());
                r.temp_removed += 1;
            }
        }
        self.each_chunk_file(|path, name, len| {
            if name.starts_with(TEMP_PREFIX) {
                remove_quiet(path);
                r.temp_removed += 1;
                return Ok(());
            }
            match parse_hex(name) {
                Some(h) if live.contains(&h) => r.chunks_kept += 1,
                _ => {
                    fs::remove_file(path).map_err(|e| StoreError::io("removing", path, e))?;
                    r.chunks_removed += 1;
                    r.bytes_freed += len;
                }
            }
            Ok(())
        })?;
        tracing::info!(
            removed = r.chunks_removed,
            kept = r.chunks_kept,
            freed = r.bytes_freed,
            "store garbage collected"
        );
        Ok(r)
    }
}

/// New chunks of one writer (a dump, an import), written under temporary
/// names and renamed into place together by [`Batch::finish`]: with sync,
/// one `syncfs` makes them all durable before any gets its name (one flush
/// instead of an fsync per chunk), and a second one makes the names
/// durable, before the checkpoint file is written. A chunk file under its
/// final name is thus always whole.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pending: Vec<(PathBuf, PathBuf)>,
    names: HashSet<Hash>,
    pub(crate) new_chunks: u64,
    pub(crate) new_stored_bytes: u64,
}

impl Batch {
    /// Whether chunk `h` is stored already or pending in this batch.
    pub(crate) fn has(&self, store: &Store, h: &Hash) -> bool {
        self.names.contains(h) || store.has_chunk(h)
    }

    /// Writes the stored form of chunk `h` under a temporary name (the
    /// caller checked [`has`](Self::has)).
    pub(crate) fn stage(store: &Store, h: &Hash, stored: &[u8]) -> Result<(PathBuf, PathBuf)> {
        let dir = store.chunk_dir(h);
        if let Err(e) = DirBuilder::new().mode(DIR_MODE).create(&dir) {
            if e.kind() != ErrorKind::AlreadyExists {
                return Err(StoreError::io("creating", dir, e));
            }
        }
        let tmp = temp_path(&dir);
        let r = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .and_then(|mut f| f.write_all(stored));
        if let Err(e) = r {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("writing", tmp, e));
        }
        Ok((tmp, dir.join(hex(h))))
    }

    /// Records a staged chunk; false (and the temporary file removed) if
    /// the batch has it already.
    pub(crate) fn add(&mut self, h: Hash, staged: (PathBuf, PathBuf), bytes: u64) -> bool {
        if !self.names.insert(h) {
            let _ = fs::remove_file(&staged.0);
            return false;
        }
        self.pending.push(staged);
        self.new_chunks += 1;
        self.new_stored_bytes += bytes;
        true
    }

    /// Makes the staged chunks durable (with `sync`) and gives them their names.
    pub(crate) fn finish(&mut self, store: &Store, sync: bool) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if sync {
            syncfs(store.dir())?;
        }
        for (tmp, path) in std::mem::take(&mut self.pending) {
            fs::rename(&tmp, &path).map_err(|e| StoreError::io("renaming into place", &path, e))?;
        }
        if sync {
            syncfs(store.dir())?;
        }
        Ok(())
    }

    /// Removes what is staged (a writer that gives up).
    pub(crate) fn discard(&mut self) {
        for (tmp, _) in std::mem::take(&mut self.pending) {
            let _ = fs::remove_file(tmp);
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.discard();
    }
}

/// Flushes the file system holding `dir` (every file written to it).
fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| StoreError::io("opening", dir, e))?;
    rustix::fs::syncfs(&f).map_err(|e| StoreError::io("flushing (syncfs)", dir, e.into()))
}

fn remove_quiet(p: &Path) {
    if let Err(e) = fs::remove_file(p) {
        tracing::warn!(path = %p.display(), "removing a leftover: {e}");
    }
}

/// The stored form of a chunk: tag byte and bytes (zstd unless that does
/// not make it smaller).
pub fn encode_chunk(c: Compression, data: &[u8]) -> Vec<u8> {
    if let Compression::Zstd(level) = c {
        if let Ok(z) = zstd::bulk::compress(data, level) {
            if z.len() < data.len() {
                let mut v = Vec::with_capacity(z.len() + 1);
                v.push(TAG_ZSTD);
                v.extend_from_slice(&z);
                return v;
            }
        }
    }
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(TAG_RAW);
    v.extend_from_slice(data);
    v
}

/// Decodes and checks a stored chunk: it must give `len` bytes whose
/// BLAKE3 hash is `h`.
pub(crate) fn decode_chunk(id: &str, h: &Hash, len: u32, stored: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |why: String| StoreError::CorruptChunk {
        checkpoint: id.to_string(),
        chunk: hex(h),
        why,
    };
    let data = match stored.split_first() {
        Some((&TAG_RAW, rest)) => rest.to_vec(),
        Some((&TAG_ZSTD, rest)) => zstd::bulk::decompress(rest, len as usize)
            .map_err(|e| corrupt(format!("does not decompress: {e}")))?,
        Some((t, _)) => return Err(corrupt(format!("unknown encoding {t}"))),
        None => return Err(corrupt("empty file".into())),
    };
    if data.len() != len as usize {
        return Err(corrupt(format!("{} bytes, expected {len}", data.len())));
    }
    if blake3::hash(&data).as_bytes() != h {
        return Err(corrupt("its content does not match its hash".into()));
    }
    Ok(data)
}

/// Writes `path` (in `dir`) atomically: a temporary file, fsynced if
/// `sync`, renamed into place.
pub(crate) fn write_atomic(dir: &Path, path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let tmp = temp_path(dir);
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(|e| StoreError::io("creating", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StoreError::io("writing", &tmp, e))?;
        if sync {
            f.sync_all()
                .map_err(|e| StoreError::io("flushing", &tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| StoreError::io("renaming into place", path, e))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

pub(crate) fn temp_path(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{}",
        std::process::id(),
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io("flushing", dir, e))
}

#[cfg(test)]
mod tests;

//! One checkpoint as one self-contained file, for another store.
//!
//! Bytes (integers little-endian):
//!
//! - header: the magic `GODWITEX`, u16 format version (1), u16 and u32
//!   zero (reserved);
//! - u64 length, then the checkpoint file (`checkpoints/ID`, with its own
//!   checksum: record, parent, image manifest);
//! - u64 count of chunks, then each chunk once: its 32-byte BLAKE3 hash,
//!   u32 length, and its stored form (tag byte and raw or zstd bytes);
//! - trailer: the magic `GWEXEND1` and the BLAKE3 hash of every byte
//!   before the trailer.
//!
//! [`import`] checks each chunk against its hash, the trailer's hash (so a
//! truncated or altered file is refused) and that every chunk the
//! checkpoint needs is present, before the checkpoint appears.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::{checkpoint, decode_chunk, hex, Hash, Result, Store, StoreError, FILE_MODE};

/// Magic at the start of an export file.
pub const MAGIC: &[u8; 8] = b"GODWITEX";
/// Magic of the trailer.
pub const END_MAGIC: &[u8; 8] = b"GWEXEND1";
/// Format version written and read.
pub const VERSION: u16 = 1;
/// Largest stored chunk accepted (the biggest chunk is 1 MiB, plus its tag
/// and zstd's worst case).
const MAX_STORED: u32 = (1 << 20) + (64 << 10);
const MAX_CHECKPOINT_FILE: u64 = 512 << 20;

/// What an export or import moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transfer {
    /// The checkpoint.
    pub id: String,
    /// Chunks in the file.
    pub chunks: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// (import) chunks the store did not hold yet.
    pub new_chunks: u64,
}

struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// The checkpoint file of `id` (its record, parent and manifest: the list of
/// its chunks), as [`missing`] on another store takes it.
pub fn checkpoint_file(store: &Store, id: &str) -> Result<Vec<u8>> {
    store.read_checkpoint(id)?;
    let path = store.checkpoint_path(id);
    std::fs::read(&path).map_err(|e| StoreError::io("reading", &path, e))
}

/// The chunks of the checkpoint whose file is `ck_bytes` (from
/// [`checkpoint_file`] of another store) that `store` lacks, each once:
/// what an [`export_only`] of it must carry for [`import`] here.
pub fn missing(store: &Store, ck_bytes: &[u8]) -> Result<Vec<Hash>> {
    let (meta, _) = checkpoint::decode(ck_bytes, Path::new("(offered checkpoint)"))?;
    let mut seen = HashSet::new();
    Ok(meta
        .files
        .iter()
        .flat_map(|f| f.chunks.iter())
        .filter(|c| seen.insert(c.hash) && !store.has_chunk(&c.hash))
        .map(|c| c.hash)
        .collect())
}

/// Writes checkpoint `id` of `store` to the file `out` (0600; written under
/// a temporary name, renamed when complete). Every chunk is checked first.
pub fn export(store: &Store, id: &str, out: &Path) -> Result<Transfer> {
    export_only(store, id, out, None)
}

/// [`export`] carrying, of the checkpoint's chunks, only those in `only`
/// (all with `None`): for a store that holds the others (see [`missing`]),
/// whose [`import`] refuses it otherwise.
pub fn export_only(
    store: &Store,
    id: &str,
    out: &Path,
    only: Option<&HashSet<Hash>>,
) -> Result<Transfer> {
    let (meta, _) = store.read_checkpoint(id)?;
    let ck_path = store.checkpoint_path(id);
    let ck_bytes = std::fs::read(&ck_path).map_err(|e| StoreError::io("reading", &ck_path, e))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = crate::temp_path(&dir);
    let io = |e| StoreError::io("writing", out, e);
    let r = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(|e| StoreError::io("creating", &tmp, e))?;
        let mut w = Hashing {
            inner: BufWriter::new(f),
            hasher: blake3::Hasher::new(),
            n: 0,
        };
        w.write_all(MAGIC).map_err(io)?;
        w.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        w.write_all(&[0u8; 6]).map_err(io)?;
        w.write_all(&(ck_bytes.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(&ck_bytes).map_err(io)?;
        let mut seen = HashSet::new();
        let unique: Vec<_> = meta
            .files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter(|c| seen.insert(c.hash) && only.is_none_or(|o| o.contains(&c.hash)))
            .collect();
        w.write_all(&(unique.len() as u64).to_le_bytes())
            .map_err(io)?;
        for c in &unique {
            let stored = store.get_stored(id, &c.hash)?;
            decode_chunk(id, &c.hash, c.len, &stored)?;
            w.write_all(&c.hash).map_err(io)?;
            w.write_all(&(stored.len() as u32).to_le_bytes())
                .map_err(io)?;
            w.write_all(&stored).map_err(io)?;
        }
        let sum = *w.hasher.finalize().as_bytes();
        let mut inner = w.inner;
        inner.write_all(END_MAGIC).map_err(io)?;
        inner.write_all(&sum).map_err(io)?;
        let f = inner.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, out).map_err(|e| StoreError::io("renaming into place", out, e))?;
        Ok(Transfer {
            id: id.to_string(),
            chunks: unique.len() as u64,
            bytes: w.n + 40,
            new_chunks: 0,
        })
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Takes the export file `path` into `store`. Refused, naming what is
/// wrong, if the file is damaged or truncated, or if the store holds a
/// checkpoint of that name already. Chunks already read stay in the store
/// (unreferenced: gc removes them) if the file turns out damaged.
pub fn import(store: &Store, path: &Path) -> Result<Transfer> {
    let bad = |why: String| StoreError::BadExport {
        path: path.to_owned(),
        why,
    };
    let read_err = |e: std::io::Error| {
        if e.kind() == ErrorKind::UnexpectedEof {
            bad("it is truncated".into())
        } else {
            StoreError::io("reading", path, e)
        }
    };
    let f = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let mut r = Hashing {
        inner: BufReader::with_capacity(1 << 20, f),
        hasher: blake3::Hasher::new(),
        n: 0,
    };
    let mut header = [0u8; 16];
    r.read_exact(&mut header).map_err(read_err)?;
    if &header[..8] != MAGIC {
        return Err(bad("it does not start with GODWITEX".into()));
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this godwit reads {VERSION}"
        )));
    }
    let mut n8 = [0u8; 8];
    r.read_exact(&mut n8).map_err(read_err)?;
    let ck_len = u64::from_le_bytes(n8);
    if ck_len > MAX_CHECKPOINT_FILE {
        return Err(bad(format!("a checkpoint record of {ck_len} bytes")));
    }
    let mut ck_bytes = vec![0u8; ck_len as usize];
    r.read_exact(&mut ck_bytes).map_err(read_err)?;
    let (meta, manifest) = checkpoint::decode(&ck_bytes, path).map_err(|e| bad(e.to_string()))?;
    crate::check_name("checkpoint id", &meta.id).map_err(|e| bad(e.to_string()))?;
    let _lock = store.lock(false)?;
    if store.checkpoint_path(&meta.id).exists() {
        return Err(StoreError::Exists {
            id: meta.id.clone(),
            store: store.dir().to_owned(),
        });
    }
    let wanted: HashMap<Hash, u32> = meta
        .files
        .iter()
        .flat_map(|f| f.chunks.iter().map(|c| (c.hash, c.len)))
        .collect();
    r.read_exact(&mut n8).map_err(read_err)?;
    let count = u64::from_le_bytes(n8);
    if count > wanted.len() as u64 {
        return Err(bad(format!(
            "{count} chunks for a checkpoint that has {}",
            wanted.len()
        )));
    }
    let mut batch = crate::Batch::default();
    for _ in 0..count {
        let mut h: Hash = [0; 32];
        r.read_exact(&mut h).map_err(read_err)?;
        let mut n4 = [0u8; 4];
        r.read_exact(&mut n4).map_err(read_err)?;
        let len = u32::from_le_bytes(n4);
        let Some(&raw_len) = wanted.get(&h) else {
            return Err(bad(format!(
                "chunk {} is not one of the checkpoint's",
                hex(&h)
            )));
        };
        if len > MAX_STORED {
            return Err(bad(format!("chunk {} of {len} bytes", hex(&h))));
        }
        let mut stored = vec![0u8; len as usize];
        r.read_exact(&mut stored).map_err(read_err)?;
        decode_chunk(&meta.id, &h, raw_len, &stored).map_err(|e| bad(e.to_string()))?;
        if !batch.has(store, &h) {
            let staged = crate::Batch::stage(store, &h, &stored)?;
            batch.add(h, staged, stored.len() as u64);
        }
    }
    let sum = *r.hasher.finalize().as_bytes();
    let mut trailer = [0u8; 40];
    r.inner.read_exact(&mut trailer).map_err(read_err)?;
    if &trailer[..8] != END_MAGIC || trailer[8..] != sum {
        return Err(bad("its checksum does not match: it was altered".into()));
    }
    let mut extra = [0u8; 1];
    if r.inner.read(&mut extra).map_err(read_err)? != 0 {
        return Err(bad("bytes follow its trailer".into()));
    }
    for h in wanted.keys() {
        if !batch.has(store, h) {
            return Err(bad(format!(
                "chunk {} is neither in it nor in the store",
                hex(h)
            )));
        }
    }
    let new_chunks = batch.new_chunks;
    batch.finish(store, store.is_sync())?;
    crate::medium::commit_checkpoint(store, &meta, &manifest, store.is_sync())?;
    tracing::info!(id = %meta.id, new_chunks, "checkpoint imported");
    Ok(Transfer {
        id: meta.id,
        chunks: count,
        bytes: r.n + 40,
        new_chunks,
    })
}

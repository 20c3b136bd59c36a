//! A checkpoint file (`checkpoints/ID`): what one checkpoint is made of.
//!
//! Bytes: the magic `GWCKPT01`; a u32 (little-endian) length and that many
//! bytes of JSON ([`CheckpointMeta`]: name, parent, page files and their
//! chunks); a u64 length and the image manifest (`manifest.img`'s bytes,
//! with its own header and checksum); then the xxh3-64 (u64) of every byte
//! before it. Kept small: 64 bytes per chunk of 256 KiB on average.

use std::path::Path;

use crate::{parse_hex, Hash, Result, StoreError};

/// Magic of a checkpoint file.
pub const MAGIC: &[u8; 8] = b"GWCKPT01";
/// Largest JSON part or manifest a reader accepts.
const MAX_PART: u64 = 256 << 20;

/// One chunk of a page file: its hash and uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "(String, u32)", into = "(String, u32)")]
pub struct ChunkRef {
    /// BLAKE3 of the bytes.
    pub hash: Hash,
    /// Length in bytes.
    pub len: u32,
}

impl TryFrom<(String, u32)> for ChunkRef {
    type Error = String;
    fn try_from((h, len): (String, u32)) -> std::result::Result<Self, String> {
        let hash = parse_hex(&h).ok_or_else(|| format!("bad chunk hash {h:?}"))?;
        Ok(ChunkRef { hash, len })
    }
}

impl From<ChunkRef> for (String, u32) {
    fn from(c: ChunkRef) -> Self {
        (crate::hex(&c.hash), c.len)
    }
}

/// One page file of the image, as chunks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredFile {
    /// Its name in the image (`pages-N.img`).
    pub name: String,
    /// Its size (the sum of its chunks' lengths).
    pub size: u64,
    /// Its chunks in order.
    pub chunks: Vec<ChunkRef>,
}

/// What a checkpoint file says besides the image manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMeta {
    /// Its name.
    pub id: String,
    /// The previous checkpoint of the same process when it was taken.
    pub parent: Option<String>,
    /// The root process's PID.
    pub pid: Option<i32>,
    /// When it was committed.
    pub created_unix_ms: u64,
    /// Chunks it added to the store.
    pub new_chunks: u64,
    /// Bytes (as stored) it added to the store.
    pub new_stored_bytes: u64,
    /// Its page files.
    pub files: Vec<StoredFile>,
}

/// The bytes of a checkpoint file.
pub fn encode(meta: &CheckpointMeta, manifest: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(meta).expect("plain data encodes");
    let mut v = Vec::with_capacity(json.len() + manifest.len() + 28);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&(json.len() as u32).to_le_bytes());
    v.extend_from_slice(&json);
    v.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
    v.extend_from_slice(manifest);
    let sum = twox_hash::XxHash3_64::oneshot(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// Decodes a checkpoint file (`path` for messages), checking its checksum
/// and that each page file's size is the sum of its chunks.
pub fn decode(bytes: &[u8], path: &Path) -> Result<(CheckpointMeta, Vec<u8>)> {
    let bad = |why: &str| StoreError::BadCheckpoint {
        path: path.to_owned(),
        why: why.to_string(),
    };
    if bytes.len() < 28 || &bytes[..8] != MAGIC {
        return Err(bad("it does not start with the magic GWCKPT01"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let sum = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
    if twox_hash::XxHash3_64::oneshot(body) != sum {
        return Err(bad("checksum mismatch"));
    }
    let json_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as u64;
    if json_len > MAX_PART || 12 + json_len + 8 > body.len() as u64 {
        return Err(bad("truncated"));
    }
    let json_end = 12 + json_len as usize;
    let meta: CheckpointMeta = serde_json::from_slice(&body[12..json_end])
        .map_err(|e| bad(&format!("its record does not decode: {e}")))?;
    let man_len = u64::from_le_bytes(body[json_end..json_end + 8].try_into().expect("8 bytes"));
    if man_len > MAX_PART || (json_end + 8) as u64 + man_len != body.len() as u64 {
        return Err(bad("the manifest's length does not match the file"));
    }
    for f in &meta.files {
        if f.chunks.iter().map(|c| c.len as u64).sum::<u64>() != f.size {
            return Err(bad(&format!(
                "page file {}: its chunks do not add up to its size",
                f.name
            )));
        }
    }
    Ok((meta, body[json_end + 8..].to_vec()))
}

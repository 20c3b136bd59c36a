//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in a checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the store could not be read or written.
    #[error("{action} {path}: {source}: check the disk, free space and permissions")]
    Io {
        /// What was being done ("reading", "writing", "creating", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A checkpoint name that is not a plain, short name.
    #[error(
        "{what} {name:?} is not valid: use 1 to 128 of A-Z a-z 0-9 . _ - (not starting with '.')"
    )]
    BadName {
        /// What the name is for.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// No checkpoint of that name in the store.
    #[error("no checkpoint {id} in the store {store}: see `godwit checkpoints ls`")]
    NoCheckpoint {
        /// The checkpoint.
        id: String,
        /// The store directory.
        store: PathBuf,
    },
    /// A checkpoint of that name exists already.
    #[error("a checkpoint {id} exists already in the store {store}: choose another name or remove it first")]
    Exists {
        /// The checkpoint.
        id: String,
        /// The store directory.
        store: PathBuf,
    },
    /// A checkpoint file (the store's manifest of one checkpoint) is damaged.
    #[error(
        "checkpoint file {path} is damaged: {why}; remove the checkpoint (`godwit checkpoints rm`)"
    )]
    BadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A chunk the checkpoint needs is not in the store.
    #[error("checkpoint {checkpoint}: chunk {chunk} is missing from the store: the checkpoint cannot be restored")]
    MissingChunk {
        /// The checkpoint.
        checkpoint: String,
        /// The chunk's hash (hex).
        chunk: String,
    },
    /// A chunk's content does not match its hash, or does not decompress.
    #[error("checkpoint {checkpoint}: chunk {chunk} is corrupt ({why}): the checkpoint cannot be restored; every checkpoint sharing this chunk is affected")]
    CorruptChunk {
        /// The checkpoint.
        checkpoint: String,
        /// The chunk's hash (hex).
        chunk: String,
        /// What is wrong.
        why: String,
    },
    /// A page file the image manifest lists was not written through the store.
    #[error("checkpoint {checkpoint}: page file {name} listed in the manifest was not written: nothing was committed")]
    PageFileNotWritten {
        /// The checkpoint.
        checkpoint: String,
        /// The page file.
        name: String,
    },
    /// An export file that is not one, is damaged or truncated.
    #[error("{path} is not a usable Godwit checkpoint export: {why}; export it again")]
    BadExport {
        /// The export file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The image manifest handed to the store does not decode.
    #[error("checkpoint {checkpoint}: {source}")]
    Image {
        /// The checkpoint.
        checkpoint: String,
        /// Cause.
        source: godwit_image::ImageError,
    },
}

impl StoreError {
    /// An I/O error while doing `action` on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

//! The one error type of this crate.
//!
//! Every variant names the file or directory it concerns and ends with what the
//! user can do about it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while writing or reading a checkpoint image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image directory does not exist.
    #[error("image directory {dir} does not exist: check the path")]
    DirNotFound {
        /// The directory that was asked for.
        dir: PathBuf,
    },

    /// A path that must be a directory is something else.
    #[error("{path} is not a directory: give the path of a Godwit image directory")]
    NotADirectory {
        /// The offending path.
        path: PathBuf,
    },

    /// The directory exists but has no `manifest.img`.
    #[error(
        "image directory {dir} holds no committed image (manifest.img missing): \
         the dump did not complete or this is not a Godwit image directory"
    )]
    NoCommittedImage {
        /// The image directory.
        dir: PathBuf,
    },

    /// [`ImageWriter::create`](crate::ImageWriter::create) was given a directory
    /// that already holds a committed image.
    #[error(
        "image directory {dir} already holds an image (manifest.img exists): \
         choose another directory or remove the old image first"
    )]
    AlreadyExists {
        /// The image directory.
        dir: PathBuf,
    },

    /// Creating a directory failed.
    #[error("cannot create directory {path}: {source}: check the path and its permissions")]
    CreateDir {
        /// The directory being created.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Opening or creating a file failed.
    #[error("cannot open {path}: {source}: check that it exists and is readable")]
    Open {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Reading a file or a directory listing failed.
    #[error("cannot read {path}: {source}: check the disk and the file's permissions")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Writing a file failed.
    #[error("cannot write {path}: {source}: check free space and permissions, then dump again")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Flushing a file or directory to stable storage failed.
    #[error("cannot flush {path} to disk (fsync): {source}: check the disk, then dump again")]
    Sync {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Setting permissions, renaming or removing a file failed.
    #[error("cannot {action} {path}: {source}: check the directory's permissions")]
    Modify {
        /// What was attempted: "set permissions of", "rename", "remove".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// Memory-mapping a page file failed.
    #[error("cannot memory-map {path}: {source}: check available address space and memory limits")]
    Map {
        /// The page file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The manifest ends before its header or payload does.
    #[error(
        "{path} is truncated: its {part} needs {needed} bytes but only {available} are there: \
         the image is incomplete or corrupt; take a new dump"
    )]
    Truncated {
        /// The manifest file.
        path: PathBuf,
        /// "header" or "payload".
        part: &'static str,
        /// Bytes the part needs.
        needed: u64,
        /// Bytes present.
        available: u64,
    },

    /// The manifest has bytes after its payload.
    #[error(
        "{path} has {extra} unexpected bytes after its payload: \
         the image is corrupt; take a new dump"
    )]
    TrailingBytes {
        /// The manifest file.
        path: PathBuf,
        /// Number of extra bytes.
        extra: u64,
    },

    /// The file does not start with the Godwit image magic.
    #[error(
        "{path} does not start with the Godwit image magic: \
         it is not a Godwit image manifest, or it is corrupt"
    )]
    BadMagic {
        /// The manifest file.
        path: PathBuf,
    },

    /// The manifest was written by a format with another major version.
    #[error(
        "{path} was written by image format {major}.{minor}; this godwit reads {ours}.x: {advice}",
        ours = crate::FORMAT_MAJOR,
        advice = version_advice(.major)
    )]
    UnsupportedVersion {
        /// The manifest file.
        path: PathBuf,
        /// Major version found in the file.
        major: u16,
        /// Minor version found in the file.
        minor: u16,
    },

    /// The manifest header sets flag bits this reader does not know.
    #[error(
        "{path} uses features unknown to this godwit (header flags {flags:#010x}): upgrade godwit"
    )]
    UnsupportedFlags {
        /// The manifest file.
        path: PathBuf,
        /// The flags found.
        flags: u32,
    },

    /// The manifest payload is larger than [`MAX_METADATA_BYTES`](crate::MAX_METADATA_BYTES).
    #[error(
        "{path} declares a {len}-byte payload, over the {max}-byte limit: \
         the image is corrupt or was not written by godwit"
    )]
    TooLarge {
        /// The manifest file.
        path: PathBuf,
        /// Declared payload length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The writer was asked to commit metadata that would exceed the decode size cap.
    #[error(
        "cannot commit the image in {dir}: the manifest payload would be {len} bytes, over \
         the {max}-byte limit readers accept: store bulk data in page files, not in metadata"
    )]
    MetadataTooLarge {
        /// The image directory.
        dir: PathBuf,
        /// Payload length that would have been written.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// A manifest payload or a page file does not hash to its recorded checksum.
    #[error(
        "checksum mismatch in {path} (expected xxh3 {expected:#018x}, found {actual:#018x}): \
         the image is corrupt; take a new dump"
    )]
    ChecksumMismatch {
        /// The file whose content is wrong.
        path: PathBuf,
        /// The recorded checksum.
        expected: u64,
        /// The checksum of the data found.
        actual: u64,
    },

    /// The manifest payload is not a valid `Manifest` message.
    #[error(
        "cannot decode the manifest in {path}: {source}: the image is corrupt; take a new dump"
    )]
    ManifestDecode {
        /// The manifest file.
        path: PathBuf,
        /// The protobuf error.
        source: prost::DecodeError,
    },

    /// The manifest's header and payload disagree on the format version.
    #[error(
        "{path} is inconsistent: its header says format {header_major}.{header_minor} but its \
         payload says {payload_major}.{payload_minor}: the image is corrupt; take a new dump"
    )]
    VersionMismatch {
        /// The manifest file.
        path: PathBuf,
        /// Major version in the header.
        header_major: u16,
        /// Minor version in the header.
        header_minor: u16,
        /// Major version in the payload.
        payload_major: u32,
        /// Minor version in the payload.
        payload_minor: u32,
    },

    /// A page file name in the manifest (or given to commit) is not a plain file name.
    #[error(
        "{path} lists an invalid page file name {name:?} (must be a plain file name of \
         letters, digits, '.', '-' or '_', not starting with '.'): the image is corrupt \
         or was not written by godwit"
    )]
    BadPageFileName {
        /// The manifest file, or the image directory when committing.
        path: PathBuf,
        /// The offending name.
        name: String,
    },

    /// A page file name appears twice in the manifest or in the list given to commit.
    #[error(
        "{path} lists page file {name} twice: the image is corrupt or was not written by godwit"
    )]
    DuplicatePageFile {
        /// The manifest file, or the image directory when committing.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },

    /// The metadata message stored in the manifest cannot be decoded as the requested type.
    #[error(
        "cannot decode the process metadata in {path}: {source}: the image is corrupt, \
         or it was written for another kind of metadata"
    )]
    MetadataDecode {
        /// The manifest file.
        path: PathBuf,
        /// The protobuf error.
        source: prost::DecodeError,
    },

    /// A page file listed in the manifest is missing.
    #[error("page file {path} listed in the manifest is missing: the image is incomplete; take a new dump")]
    PageFileMissing {
        /// The page file.
        path: PathBuf,
    },

    /// A page file is not a regular file.
    #[error("page file {path} is not a regular file: the image is corrupt; take a new dump")]
    PageFileNotRegular {
        /// The page file.
        path: PathBuf,
    },

    /// A page file's size differs from the one recorded.
    #[error(
        "page file {path} is {actual} bytes but the manifest says {expected}: \
         the image is truncated or corrupt; take a new dump"
    )]
    PageFileSize {
        /// The page file.
        path: PathBuf,
        /// Size recorded in the manifest (or written by the writer).
        expected: u64,
        /// Size on disk.
        actual: u64,
    },

    /// A page file name is not part of this image.
    #[error("image directory {dir} has no page file named {name:?} in its manifest: use a name from page_files()")]
    UnknownPageFile {
        /// The image directory.
        dir: PathBuf,
        /// The name asked for.
        name: String,
    },

    /// Commit was given a page file this writer never opened.
    #[error(
        "cannot commit the image in {dir}: page file {name:?} was not opened by this writer: \
         pass only the PageFileInfo values returned by PageFileWriter::finish"
    )]
    ForeignPageFile {
        /// The image directory.
        dir: PathBuf,
        /// The name given.
        name: String,
    },

    /// Commit was not given a page file this writer opened.
    #[error(
        "cannot commit the image in {dir}: page file {name} was opened but is not in the \
         committed list: finish every page file and pass all of them to commit"
    )]
    PageFileNotCommitted {
        /// The image directory.
        dir: PathBuf,
        /// The missing name.
        name: String,
    },

    /// Reading or writing the stream to or from a peer failed.
    #[error(
        "{peer}: {source}: the connection to the peer failed or was cut; nothing was committed"
    )]
    Stream {
        /// The stream, naming the peer.
        peer: PathBuf,
        /// Cause.
        source: io::Error,
    },

    /// The peer sent something that is not a well-formed image stream.
    #[error("{peer}: protocol error: {detail}; is the peer a Godwit of the same version?")]
    StreamProtocol {
        /// The stream, naming the peer.
        peer: PathBuf,
        /// What was wrong.
        detail: String,
    },

    /// The peer sent more page data than this receiver accepts.
    #[error("{peer}: the image is larger than the {max} bytes this receiver accepts (its available memory)")]
    StreamTooLarge {
        /// The stream, naming the peer.
        peer: PathBuf,
        /// The limit.
        max: u64,
    },

    /// A page file of an earlier image cannot be taken by reference
    /// (`ImageWriter::link_page_file`).
    #[error(
        "{location}: page file {name:?} cannot be taken by reference from an earlier image: {why}"
    )]
    LinkRefused {
        /// Where the image goes.
        location: PathBuf,
        /// The page file.
        name: String,
        /// Why not.
        why: String,
    },

    /// A medium defined outside this crate (e.g. the node's chunk store,
    /// `godwit-store`) failed; its error names what and where.
    #[error("{location}: {source}")]
    Medium {
        /// The medium's location (a checkpoint in a store).
        location: PathBuf,
        /// Cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The sender gave up before the commit.
    #[error("{peer}: the sender gave up: {reason}")]
    SenderAborted {
        /// The stream, naming the peer.
        peer: PathBuf,
        /// What the sender said.
        reason: String,
    },
}

/// What to tell a user whose image has another major format version.
fn version_advice(major: &u16) -> &'static str {
    if *major > crate::FORMAT_MAJOR {
        "upgrade godwit"
    } else {
        "use an older godwit release to read it"
    }
}

//! The on-disk container of Godwit checkpoint images.
//!
//! An image is a directory holding:
//!
//! - `manifest.img`: a 32-byte header (magic, format version, flags, payload
//!   length, xxh3-64 checksum) and a protobuf [`Manifest`] that carries one
//!   metadata message of the caller's type plus the list of page files with
//!   their sizes and checksums;
//! - any number of page files `pages-<n>.img`: raw bytes, no header.
//!
//! This crate does not know what the metadata or the pages mean: the engine
//! defines the metadata message and the layout of the pages.
//!
//! [`ImageWriter`] writes an image; nothing is visible to [`ImageReader`]
//! until [`ImageWriter::commit`] atomically renames the manifest into place.
//! The byte-exact format, the versioning policy and the size caps are in
//! `docs/IMAGE_FORMAT.md`.
//!
//! ```
//! # fn main() -> Result<(), godwit_image::ImageError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("img");
//! use godwit_image::{ImageReader, ImageWriter};
//!
//! let mut writer = ImageWriter::create(&dir)?;
//! let mut pages = writer.page_file()?;
//! pages.write_all(&[0u8; 4096])?;
//! let info = pages.finish()?;
//! // Any prost message serves as metadata; a String is one.
//! writer.commit(&"metadata".to_string(), vec![info])?;
//!
//! let reader = ImageReader::open(&dir)?;
//! assert_eq!(reader.metadata::<String>()?, "metadata");
//! reader.verify_pages()?;
//! let map = reader.map_page_file("pages-0.img")?;
//! assert_eq!(map.len(), 4096);
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod hash;
mod manifest;
pub mod medium;
mod reader;
pub mod stream;
mod writer;

pub use error::ImageError;
pub use manifest::{
    decode_manifest_bytes, encode_manifest_bytes, Manifest, PageFile, FLAG_INHERITED_PAGES,
    FLAG_LAZY_PAGES, FLAG_SCATTERED_PAGES, HEADER_LEN, MANIFEST_MAGIC,
};
pub use medium::{Directory, Medium, MemoryImage, PageSink, PageSource};
pub use reader::{ImageReader, MappedPages};
pub use stream::{receive_image, StreamMedium};
pub use writer::{CommitInfo, ImageWriter, PageFileWriter};

/// Major format version this crate writes and the only one it reads.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor format version this crate writes. Readers accept any minor of [`FORMAT_MAJOR`].
pub const FORMAT_MINOR: u16 = 0;
/// Largest manifest payload (metadata included) a reader decodes, and a writer writes.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// File name of the manifest inside an image directory.
pub const MANIFEST_NAME: &str = "manifest.img";
/// Prefix of temporary files inside an image directory.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Mode of image directories.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of image files.
pub(crate) const FILE_MODE: u32 = 0o600;

/// One page file: its name in the image directory, size, and xxh3-64 of its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageFileInfo {
    /// File name inside the image directory, e.g. `pages-0.img`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// xxh3-64 (seed 0) of the whole content.
    pub xxh3: u64,
}

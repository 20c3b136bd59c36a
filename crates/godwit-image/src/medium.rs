//! Transfer media: where an image's files go and come from.
//!
//! An image is the same whatever carries it: page files, then one manifest
//! committed last. [`Medium`] is the writing side, [`PageSource`] the
//! reading side. [`ImageWriter`](crate::ImageWriter) and
//! [`ImageReader`](crate::ImageReader) work on any of them:
//!
//! - [`Directory`]: files in a directory (`godwit dump --images DIR`, a
//!   node's store); committed by renaming the manifest into place;
//! - [`StreamMedium`]: frames on a byte stream to a peer
//!   ([`crate::stream`]), received there into memory
//!   ([`crate::stream::receive_image`]) without touching a disk;
//! - [`MemoryImage`]: the receiving side of a stream, page files in
//!   anonymous memory files (memfd).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{ImageError, FILE_MODE, MANIFEST_NAME};

/// Where an image is written: one implementation per transfer medium.
///
/// The [`ImageWriter`](crate::ImageWriter) names page files, hashes them and
/// builds the manifest; the medium only stores bytes.
pub trait Medium: Send + Sync + std::fmt::Debug {
    /// Where the image goes, for messages: a directory, or a peer's address.
    fn location(&self) -> &Path;
    /// Starts page file `name` (never used before by this writer).
    fn create_page_file(&self, name: &str, sync: bool) -> Result<Box<dyn PageSink>, ImageError>;
    /// Drops page file `name`: work given up before the commit.
    fn remove_page_file(&self, name: &str) -> Result<(), ImageError>;
    /// The size of page file `name` as stored, to check against what was
    /// written; `None` where the medium keeps no copy to ask (a stream).
    fn stored_size(&self, name: &str) -> Result<Option<u64>, ImageError>;
    /// Commits: `manifest` (the framed bytes of `manifest.img`) makes the
    /// image valid, atomically.
    fn commit(&self, manifest: &[u8], sync: bool) -> Result<(), ImageError>;
    /// The writer is dropped without a commit: remove what it made.
    fn abandon(&self, created: &[String]);
    /// Takes page file `info` of the earlier image this medium was told to
    /// link from (an incremental checkpoint's parent) into this image by
    /// reference, unchanged and without copying its bytes. Only a medium
    /// that can share a file between images does (the chunk store: the
    /// parent's list of chunks); the others refuse, and the caller takes a
    /// full image instead.
    fn link_page_file(&self, info: &crate::PageFileInfo) -> Result<(), ImageError> {
        Err(ImageError::LinkRefused {
            location: self.location().to_owned(),
            name: info.name.clone(),
            why: "this medium keeps no earlier image to share files with".into(),
        })
    }
}

/// One page file being written.
pub trait PageSink: Send {
    /// Appends `buf`.
    fn write_all(&mut self, buf: &[u8]) -> Result<(), ImageError>;
    /// Ends the file (flushed to stable storage if the writer syncs).
    fn finish(self: Box<Self>, size: u64) -> Result<(), ImageError>;
}

/// Where an image is read from.
pub trait PageSource: Send + Sync + std::fmt::Debug {
    /// Where the image is, for messages.
    fn location(&self) -> &Path;
    /// The framed manifest bytes (`manifest.img`).
    fn manifest(&self) -> Result<Vec<u8>, ImageError>;
    /// Opens page file `name` for reading (and mapping).
    fn open_page_file(&self, name: &str) -> Result<File, ImageError>;
    /// Whether every page file was already checked against the manifest's
    /// sizes and checksums (as it arrived) and cannot have changed since:
    /// then [`ImageReader`](crate::ImageReader)'s verification does not read
    /// it all again.
    fn verified(&self) -> bool {
        false
    }
}

/// A directory on a file system: `manifest.img` and `pages-N.img`.
#[derive(Debug, Clone)]
pub struct Directory {
    dir: PathBuf,
}

impl Directory {
    /// The directory `dir` (not created or checked here; see
    /// [`ImageWriter::create`](crate::ImageWriter::create) and
    /// [`ImageReader::open`](crate::ImageReader::open)).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
}

struct FileSink {
    path: PathBuf,
    file: File,
    sync: bool,
}

impl PageSink for FileSink {
    fn write_all(&mut self, buf: &[u8]) -> Result<(), ImageError> {
        self.file
            .write_all(buf)
            .map_err(|source| ImageError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn finish(self: Box<Self>, _size: u64) -> Result<(), ImageError> {
        if self.sync {
            self.file.sync_all().map_err(|source| ImageError::Sync {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl Medium for Directory {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn create_page_file(&self, name: &str, sync: bool) -> Result<Box<dyn PageSink>, ImageError> {
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|source| ImageError::Open {
                path: path.clone(),
                source,
            })?;
        tracing::debug!(path = %path.display(), "page file created");
        Ok(Box::new(FileSink { path, file, sync }))
    }

    fn remove_page_file(&self, name: &str) -> Result<(), ImageError> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ImageError::Modify {
                action: "remove",
                path,
                source,
            }),
        }
    }

    fn stored_size(&self, name: &str) -> Result<Option<u64>, ImageError> {
        let path = self.dir.join(name);
        fs::metadata(&path)
            .map(|m| Some(m.len()))
            .map_err(|source| ImageError::Read { path, source })
    }

    fn commit(&self, manifest: &[u8], sync: bool) -> Result<(), ImageError> {
        crate::writer::commit_to_dir(&self.dir, manifest, sync)
    }

    fn abandon(&self, created: &[String]) {
        crate::writer::remove_uncommitted(&self.dir, created);
    }
}

impl PageSource for Directory {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn manifest(&self) -> Result<Vec<u8>, ImageError> {
        crate::reader::read_manifest_file(&self.dir, &self.dir.join(MANIFEST_NAME))
    }

    fn open_page_file(&self, name: &str) -> Result<File, ImageError> {
        let path = self.dir.join(name);
        File::open(&path).map_err(|source| crate::reader::open_error(&path, source))
    }
}

/// An image held in memory: the manifest bytes and one anonymous memory
/// file (memfd) per page file. What [`crate::stream::receive_image`] builds
/// from a stream; nothing of it is on a disk.
#[derive(Debug)]
pub struct MemoryImage {
    pub(crate) label: PathBuf,
    pub(crate) manifest: Vec<u8>,
    pub(crate) files: HashMap<String, File>,
    pub(crate) bytes: u64,
}

impl MemoryImage {
    /// Bytes received: page files and manifest.
    pub fn total_bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes this image into directory `dir` as a dump would (directory
    /// 0700, files 0600, the manifest renamed into place last), e.g. to keep
    /// a copy of what a migration carried.
    pub fn save(&self, dir: &Path, sync: bool) -> Result<(), ImageError> {
        // Checks the directory and prepares it (mode, no image yet).
        drop(crate::ImageWriter::create(dir)?);
        let manifest = crate::manifest::decode_manifest(&self.manifest, &self.label)?;
        let target = Directory::new(dir);
        let names: Vec<String> = manifest.page_files.iter().map(|p| p.name.clone()).collect();
        let result = (|| {
            for p in &manifest.page_files {
                // Positional reads: the memfd's offset is shared with every
                // other user of it.
                let file = self.open_page_file(&p.name)?;
                let mut sink = target.create_page_file(&p.name, sync)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut at = 0u64;
                loop {
                    let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, at).map_err(
                        |source| ImageError::Read {
                            path: self.label.join(&p.name),
                            source,
                        },
                    )?;
                    if n == 0 {
                        break;
                    }
                    sink.write_all(&buf[..n])?;
                    at += n as u64;
                }
                sink.finish(p.size)?;
            }
            target.commit(&self.manifest, sync)
        })();
        if result.is_err() {
            target.abandon(&names);
        }
        result
    }
}

impl PageSource for MemoryImage {
    fn location(&self) -> &Path {
        &self.label
    }

    fn manifest(&self) -> Result<Vec<u8>, ImageError> {
        Ok(self.manifest.clone())
    }

    fn open_page_file(&self, name: &str) -> Result<File, ImageError> {
        let path = self.label.join(name);
        let file = self
            .files
            .get(name)
            .ok_or_else(|| ImageError::PageFileMissing { path: path.clone() })?;
        file.try_clone()
            .map_err(|source| ImageError::Open { path, source })
    }

    /// Checked frame by frame as it arrived (stream::receive_image); its
    /// memory files are written by nobody else.
    fn verified(&self) -> bool {
        true
    }
}

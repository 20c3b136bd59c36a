//! Reading a committed image.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::ops::Deref;
use std::path::{Path, PathBuf};

use crate::hash::Xxh3;
use memmap2::Mmap;
use prost::Message;

use crate::manifest::{self, Manifest, HEADER_LEN};
use crate::medium::{Directory, PageSource};
use crate::{ImageError, PageFileInfo, MANIFEST_NAME, MAX_METADATA_BYTES};

/// Read buffer size of [`ImageReader::verify_pages`].
const VERIFY_CHUNK: usize = 1 << 20;

/// A committed image, opened and validated.
#[derive(Debug)]
pub struct ImageReader {
    /// Where the files come from (a directory, an image received in memory).
    source: Box<dyn PageSource>,
    dir: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
    manifest_bytes: u64,
    page_files: Vec<PageFileInfo>,
}

impl ImageReader {
    /// Opens the image in `dir`.
    ///
    /// Reads `manifest.img` and validates it (magic, major version, flags,
    /// size cap, length, checksum, protobuf decoding, page file names), then
    /// checks that every listed page file exists as a regular file of the
    /// listed size. It does not hash the page files: that costs a pass over
    /// all the data, and is [`verify_pages`](Self::verify_pages).
    ///
    /// Version policy: any minor version of [`FORMAT_MAJOR`](crate::FORMAT_MAJOR)
    /// is accepted, newer ones too (their additions are optional protobuf
    /// fields, which this reader skips); any other major version is refused.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::NotADirectory {
                    path: dir.to_owned(),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ImageError::DirNotFound {
                    dir: dir.to_owned(),
                })
            }
            Err(source) => {
                return Err(ImageError::Read {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
        Self::from_source(Box::new(Directory::new(dir)))
    }

    /// Opens the image `source` holds (e.g. a [`MemoryImage`](crate::MemoryImage)
    /// received from a peer), with the checks of [`open`](Self::open).
    pub fn from_source(source: Box<dyn PageSource>) -> Result<Self, ImageError> {
        let dir = source.location().to_owned();
        let manifest_path = dir.join(MANIFEST_NAME);
        let bytes = source.manifest()?;
        let manifest = manifest::decode_manifest(&bytes, &manifest_path)?;
        let page_files: Vec<PageFileInfo> = manifest
            .page_files
            .iter()
            .map(|p| PageFileInfo {
                name: p.name.clone(),
                size: p.size,
                xxh3: p.xxh3,
            })
            .collect();
        for info in &page_files {
            let path = dir.join(&info.name);
            let meta = match source.open_page_file(&info.name) {
                Ok(f) => f.metadata(),
                Err(ImageError::PageFileMissing { .. }) => {
                    return Err(ImageError::PageFileMissing { path })
                }
                Err(e) => return Err(e),
            };
            check_page_file(&path, info.size, meta)?;
        }
        tracing::debug!(
            dir = %dir.display(),
            format_minor = manifest.format_minor,
            writer = %manifest.writer,
            page_files = page_files.len(),
            "image opened"
        );
        Ok(Self {
            source,
            dir,
            manifest_path,
            manifest_bytes: bytes.len() as u64,
            manifest,
            page_files,
        })
    }

    /// Decodes the metadata message stored in the manifest.
    pub fn metadata<M: Message + Default>(&self) -> Result<M, ImageError> {
        M::decode(self.manifest.metadata.as_slice()).map_err(|source| ImageError::MetadataDecode {
            path: self.manifest_path.clone(),
            source,
        })
    }

    /// The page files, in the order the writer listed them.
    pub fn page_files(&self) -> &[PageFileInfo] {
        &self.page_files
    }

    /// The decoded manifest, for inspection (format version, writer, creation time).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The image directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of the image on disk: `manifest.img` plus all page files.
    pub fn total_bytes(&self) -> u64 {
        self.manifest_bytes + self.page_files.iter().map(|p| p.size).sum::<u64>()
    }

    /// Memory-maps the page file `name` read-only.
    ///
    /// `name` must be one of [`page_files`](Self::page_files). The file's size is
    /// checked again. While the map lives, the file must not be truncated or
    /// written to (the image directory is private to its owner, mode 0700):
    /// reading a page truncated away raises SIGBUS.
    pub fn map_page_file(&self, name: &str) -> Result<MappedPages, ImageError> {
        let info = self.info(name)?;
        let path = self.dir.join(name);
        let file = self.source.open_page_file(name)?;
        check_page_file(&path, info.size, file.metadata())?;
        let map = if info.size == 0 {
            // mmap(2) refuses zero-length maps; an empty page file maps to an empty slice.
            None
        } else {
            Some(map_read_only(&file, &path)?)
        };
        Ok(MappedPages {
            name: info.name.clone(),
            map,
        })
    }

    /// Reads every page file through xxh3 and compares size and hash with the manifest.
    /// Stops at the first file that differs.
    pub fn verify_pages(&self) -> Result<(), ImageError> {
        if self.source.verified() {
            return Ok(());
        }
        for info in &self.page_files {
            self.verify_one(info)?;
        }
        Ok(())
    }

    /// Reads one page file (one of [`page_files`](Self::page_files)) through
    /// xxh3 and compares its size and hash with the manifest.
    pub fn verify_page_file(&self, info: &PageFileInfo) -> Result<(), ImageError> {
        self.verify_one(info)
    }

    fn verify_one(&self, info: &PageFileInfo) -> Result<(), ImageError> {
        let mut buf = vec![0u8; VERIFY_CHUNK];
        {
            let path = self.dir.join(&info.name);
            let file = self.source.open_page_file(&info.name)?;
            let mut hasher = Xxh3::new();
            let mut size = 0u64;
            loop {
                // Positional: a memory file's offset is shared with its other users.
                let n = match std::os::unix::fs::FileExt::read_at(&file, &mut buf, size) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(source) => return Err(ImageError::Read { path, source }),
                };
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            if size != info.size {
                return Err(ImageError::PageFileSize {
                    path,
                    expected: info.size,
                    actual: size,
                });
            }
            let actual = hasher.digest();
            if actual != info.xxh3 {
                return Err(ImageError::ChecksumMismatch {
                    path,
                    expected: info.xxh3,
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Like [`verify_pages`](Self::verify_pages), but hashes the page files
    /// through `mapped` where one of them maps it (no read copy: the restore
    /// maps every page file anyway); others are read.
    pub fn verify_mapped(&self, mapped: &[&MappedPages]) -> Result<(), ImageError> {
        if self.source.verified() {
            return Ok(());
        }
        for info in &self.page_files {
            let Some(m) = mapped.iter().find(|m| m.name == info.name) else {
                self.verify_one(info)?;
                continue;
            };
            let path = self.dir.join(&info.name);
            if m.len() as u64 != info.size {
                return Err(ImageError::PageFileSize {
                    path,
                    expected: info.size,
                    actual: m.len() as u64,
                });
            }
            let actual = crate::hash::xxh3_64(m);
            if actual != info.xxh3 {
                return Err(ImageError::ChecksumMismatch {
                    path,
                    expected: info.xxh3,
                    actual,
                });
            }
        }
        Ok(())
    }

    fn info(&self, name: &str) -> Result<&PageFileInfo, ImageError> {
        self.page_files
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ImageError::UnknownPageFile {
                dir: self.dir.clone(),
                name: name.to_owned(),
            })
    }
}

/// A page file mapped read-only; derefs to its bytes. Unmapped on drop.
#[derive(Debug)]
pub struct MappedPages {
    name: String,
    /// None for an empty file.
    map: Option<Mmap>,
}

impl MappedPages {
    /// The page file's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Deref for MappedPages {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

impl AsRef<[u8]> for MappedPages {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// The one unsafe operation of this crate.
#[allow(unsafe_code)]
fn map_read_only(file: &File, path: &Path) -> Result<Mmap, ImageError> {
    // SAFETY: `Mmap::map` is unsafe because the bytes behind the returned slice
    // change (or fault with SIGBUS) if the file is modified or truncated while
    // mapped. The map is read-only and private to this process; the file is a
    // page file of a committed image, which no Godwit code writes after commit,
    // in a directory of mode 0700 whose files are mode 0600, so only the owner
    // can change it; `map_page_file` documents that callers must not.
    unsafe { Mmap::map(file) }.map_err(|source| ImageError::Map {
        path: path.to_owned(),
        source,
    })
}

/// Reads `manifest.img` whole, refusing before the read a file larger than a
/// valid manifest can be.
pub(crate) fn read_manifest_file(dir: &Path, path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ImageError::NoCommittedImage {
                dir: dir.to_owned(),
            })
        }
        Err(source) => return Err(open_error(path, source)),
    };
    let len = file
        .metadata()
        .map_err(|source| ImageError::Read {
            path: path.to_owned(),
            source,
        })?
        .len();
    let max_file = HEADER_LEN as u64 + MAX_METADATA_BYTES;
    if len > max_file {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            len: len - HEADER_LEN as u64,
            max: MAX_METADATA_BYTES,
        });
    }
    // Read at most one byte past the cap, in case the file grew after the stat.
    let mut bytes = Vec::with_capacity(len as usize);
    file.by_ref()
        .take(max_file + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

pub(crate) fn open_error(path: &Path, source: std::io::Error) -> ImageError {
    if source.kind() == ErrorKind::NotFound {
        ImageError::PageFileMissing {
            path: path.to_owned(),
        }
    } else {
        ImageError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

/// Checks the result of a stat of a page file against the size in the manifest.
fn check_page_file(
    path: &Path,
    expected: u64,
    meta: std::io::Result<fs::Metadata>,
) -> Result<(), ImageError> {
    let meta = match meta {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ImageError::PageFileMissing {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(ImageError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.is_file() {
        return Err(ImageError::PageFileNotRegular {
            path: path.to_owned(),
        });
    }
    if meta.len() != expected {
        return Err(ImageError::PageFileSize {
            path: path.to_owned(),
            expected,
            actual: meta.len(),
        });
    }
    Ok(())
}

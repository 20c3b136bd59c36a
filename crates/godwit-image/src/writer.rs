//! Writing an image: page files first, then one atomic commit of the manifest.

use std::collections::HashSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::hash::Xxh3;
use prost::Message;
use std::sync::Mutex;

use crate::manifest::{self, Manifest, PageFile};
use crate::medium::{Directory, Medium, PageSink};
use crate::{
    ImageError, PageFileInfo, DIR_MODE, FILE_MODE, FORMAT_MAJOR, FORMAT_MINOR, MANIFEST_NAME,
    MAX_METADATA_BYTES, TEMP_PREFIX,
};

/// Name of the temporary file the manifest is written to before the rename.
const TEMP_MANIFEST_NAME: &str = ".tmp-manifest.img";

/// Writes one checkpoint image into a directory.
///
/// Open page files with [`page_file`](Self::page_file), fill and
/// [`finish`](PageFileWriter::finish) them, then [`commit`](Self::commit) the
/// metadata and the list of finished page files. Until the commit, the
/// directory holds no `manifest.img`, so [`ImageReader::open`](crate::ImageReader::open)
/// refuses it.
///
/// Dropping the writer without committing (including after a failed commit)
/// removes every file it created, so a failed dump leaves nothing behind but
/// the directory. A crash leaves files behind; the next
/// [`create`](Self::create) on that directory removes them.
///
/// One writer per directory at a time.
#[derive(Debug)]
pub struct ImageWriter {
    /// Where the files go (a directory, a stream to a peer).
    medium: Box<dyn Medium>,
    sync: bool,
    writer: String,
    /// The page files this writer created; behind a lock so that writers of
    /// several processes' memory can each create theirs ([`page_file`](Self::page_file)
    /// takes `&self`).
    files: Mutex<PageFiles>,
    committed: bool,
    /// Header flags to commit with.
    flags: u32,
}

/// Page files created so far, and the number of the next.
#[derive(Debug, Default)]
struct PageFiles {
    next: u64,
    created: Vec<String>,
}

impl ImageWriter {
    /// Prepares `dir` to receive a new image.
    ///
    /// Creates `dir` (mode 0700, missing parents too) or uses an existing
    /// directory, whose mode it sets to 0700. Refuses with
    /// [`ImageError::AlreadyExists`] if `dir` already holds `manifest.img`.
    /// Since there is no committed image, any temporary file (`.tmp-*`) or page
    /// file (`pages-<n>.img`) in `dir` is the leftover of a dump that did not
    /// complete, and is removed. Other files are left alone.
    ///
    /// Page files and the manifest are flushed to disk (fsync) unless
    /// [`sync(false)`](Self::sync) is set.
    pub fn create(dir: &Path) -> Result<Self, ImageError> {
        match fs::metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(ImageError::NotADirectory {
                    path: dir.to_owned(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(dir)
                    .map_err(|source| ImageError::CreateDir {
                        path: dir.to_owned(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(ImageError::Read {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
        // Whether we created it (the umask applies) or found it, make it 0700.
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|source| {
            ImageError::Modify {
                action: "set permissions of",
                path: dir.to_owned(),
                source,
            }
        })?;

        let manifest_path = dir.join(MANIFEST_NAME);
        match fs::symlink_metadata(&manifest_path) {
            Ok(_) => {
                return Err(ImageError::AlreadyExists {
                    dir: dir.to_owned(),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ImageError::Read {
                    path: manifest_path,
                    source,
                })
            }
        }
        remove_leftovers(dir)?;
        tracing::debug!(dir = %dir.display(), "image writer created");
        Ok(Self::to_medium(Box::new(Directory::new(dir))))
    }

    /// Writes an image to `medium` (e.g. a [`StreamMedium`](crate::StreamMedium)
    /// to a peer). [`create`](Self::create) is this with a [`Directory`].
    pub fn to_medium(medium: Box<dyn Medium>) -> Self {
        Self {
            medium,
            sync: true,
            writer: format!("godwit-image {}", env!("CARGO_PKG_VERSION")),
            files: Mutex::new(PageFiles::default()),
            committed: false,
            flags: 0,
        }
    }

    /// Whether page files and the manifest are flushed to stable storage (fsync).
    /// Default true. With false, a commit is still atomic for readers and
    /// against a crash of the process, but not against a crash of the machine.
    /// Applies to page files opened after the call.
    #[must_use]
    pub fn sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the text recorded as the manifest's `writer` field (default
    /// `"godwit-image <version>"`); e.g. `"godwit 0.1.0"`.
    #[must_use]
    pub fn writer_name(mut self, writer: impl Into<String>) -> Self {
        self.writer = writer.into();
        self
    }

    /// Where the image goes: the image directory, or a peer's address.
    pub fn dir(&self) -> &Path {
        self.medium.location()
    }

    /// Sets header flags (such as [`FLAG_SCATTERED_PAGES`](crate::FLAG_SCATTERED_PAGES))
    /// for the commit: features a reader must know to read the image.
    pub fn add_flags(&mut self, flags: u32) {
        self.flags |= flags;
    }

    /// How many page files this writer has created so far: a mark for
    /// [`discard_since`](Self::discard_since).
    pub fn mark(&self) -> usize {
        self.files.lock().expect("page file list").created.len()
    }

    /// Removes the page files created after `mark` (work given up before the
    /// commit); their names are not reused.
    pub fn discard_since(&mut self, mark: usize) -> Result<(), ImageError> {
        while let Some(name) = self
            .files
            .get_mut()
            .expect("page file list")
            .created
            .get(mark)
            .cloned()
        {
            self.discard(&name)?;
        }
        Ok(())
    }

    /// Removes page file `name`, created by this writer and not to be
    /// committed.
    pub fn discard(&mut self, name: &str) -> Result<(), ImageError> {
        let created = &mut self.files.get_mut().expect("page file list").created;
        if let Some(i) = created.iter().position(|n| n == name) {
            created.remove(i);
            self.medium.remove_page_file(name)?;
        }
        Ok(())
    }

    /// Creates the next page file, `pages-<n>.img` with n = 0, 1, 2, ..., mode 0600.
    ///
    /// Fails if the file already exists (another writer in the same directory).
    pub fn page_file(&self) -> Result<PageFileWriter, ImageError> {
        let mut files = self.files.lock().expect("page file list");
        let name = format!("pages-{}.img", files.next);
        let sink = self.medium.create_page_file(&name, self.sync)?;
        files.next += 1;
        files.created.push(name.clone());
        Ok(PageFileWriter {
            path: self.medium.location().join(&name),
            name,
            sink,
            hasher: Box::new(Xxh3::new()),
            position: 0,
        })
    }

    /// Takes page file `info` of an earlier image into this one by
    /// reference ([`Medium::link_page_file`]): listed under its own name and
    /// committed like a file this writer created; later page files are
    /// numbered after it. Refused by media that cannot share files.
    pub fn link_page_file(&self, info: &PageFileInfo) -> Result<(), ImageError> {
        let mut files = self.files.lock().expect("page file list");
        if files.created.iter().any(|n| n == &info.name) {
            return Err(ImageError::DuplicatePageFile {
                path: self.medium.location().to_owned(),
                name: info.name.clone(),
            });
        }
        let n = info
            .name
            .strip_prefix("pages-")
            .and_then(|r| r.strip_suffix(".img"))
            .and_then(|d| d.parse::<u64>().ok());
        let Some(n) = n else {
            return Err(ImageError::BadPageFileName {
                path: self.medium.location().to_owned(),
                name: info.name.clone(),
            });
        };
        self.medium.link_page_file(info)?;
        files.next = files.next.max(n + 1);
        files.created.push(info.name.clone());
        Ok(())
    }

    /// Commits the image: after this returns Ok, [`ImageReader::open`](crate::ImageReader::open)
    /// accepts the directory.
    ///
    /// `finished` must hold exactly the [`PageFileInfo`] of every page file this
    /// writer created (each returned by [`PageFileWriter::finish`]), in the
    /// order readers should see them. Each one's size is checked against the
    /// file on disk. The manifest (metadata plus page file list) is written to
    /// `.tmp-manifest.img`, flushed, renamed to `manifest.img`, and the
    /// directory is flushed.
    ///
    /// On failure, no `manifest.img` is left and every file this writer
    /// created is removed.
    pub fn commit<M: Message>(
        mut self,
        metadata: &M,
        finished: Vec<PageFileInfo>,
    ) -> Result<CommitInfo, ImageError> {
        let dir = self.medium.location().to_owned();
        manifest::check_page_file_names(finished.iter().map(|p| p.name.as_str()), &dir)?;
        let created: HashSet<&str> = self
            .files
            .get_mut()
            .expect("page file list")
            .created
            .iter()
            .map(String::as_str)
            .collect();
        let listed: HashSet<&str> = finished.iter().map(|p| p.name.as_str()).collect();
        if let Some(name) = finished.iter().find(|p| !created.contains(p.name.as_str())) {
            return Err(ImageError::ForeignPageFile {
                dir: dir.clone(),
                name: name.name.clone(),
            });
        }
        if let Some(name) = self
            .files
            .get_mut()
            .expect("page file list")
            .created
            .iter()
            .find(|n| !listed.contains(n.as_str()))
        {
            return Err(ImageError::PageFileNotCommitted {
                dir: dir.clone(),
                name: name.clone(),
            });
        }
        for info in &finished {
            if let Some(actual) = self.medium.stored_size(&info.name)? {
                if actual != info.size {
                    return Err(ImageError::PageFileSize {
                        path: dir.join(&info.name),
                        expected: info.size,
                        actual,
                    });
                }
            }
        }

        let manifest = Manifest {
            format_major: u32::from(FORMAT_MAJOR),
            format_minor: u32::from(FORMAT_MINOR),
            writer: self.writer.clone(),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            page_files: finished
                .iter()
                .map(|p| PageFile {
                    name: p.name.clone(),
                    size: p.size,
                    xxh3: p.xxh3,
                })
                .collect(),
            metadata: metadata.encode_to_vec(),
        };
        let payload = manifest.encode_to_vec();
        if payload.len() as u64 > MAX_METADATA_BYTES {
            return Err(ImageError::MetadataTooLarge {
                dir: dir.clone(),
                len: payload.len() as u64,
                max: MAX_METADATA_BYTES,
            });
        }
        let bytes = manifest::frame(FORMAT_MAJOR, FORMAT_MINOR, self.flags, &payload);

        self.medium.commit(&bytes, self.sync)?;
        self.committed = true;

        let pages_bytes: u64 = finished.iter().map(|p| p.size).sum();
        let info = CommitInfo {
            manifest_bytes: bytes.len() as u64,
            pages_bytes,
            total_bytes: bytes.len() as u64 + pages_bytes,
            page_files: finished.len(),
        };
        tracing::debug!(
            dir = %dir.display(),
            page_files = info.page_files,
            total_bytes = info.total_bytes,
            "image committed"
        );
        Ok(info)
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // A writer thread that panicked holding the lock: still clean up.
        let files = match self.files.get_mut() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.medium.abandon(&files.created);
    }
}

/// Writes the framed manifest `bytes` into `dir` atomically: a temporary
/// file, flushed, renamed to `manifest.img`, the directory flushed.
pub(crate) fn commit_to_dir(dir: &Path, bytes: &[u8], sync: bool) -> Result<(), ImageError> {
    let temp_path = dir.join(TEMP_MANIFEST_NAME);
    write_new_file(&temp_path, bytes, sync)?;
    let manifest_path = dir.join(MANIFEST_NAME);
    // create() checked this; check again just before the rename, which would replace it.
    if fs::symlink_metadata(&manifest_path).is_ok() {
        return Err(ImageError::AlreadyExists {
            dir: dir.to_owned(),
        });
    }
    fs::rename(&temp_path, &manifest_path).map_err(|source| ImageError::Modify {
        action: "rename",
        path: temp_path.clone(),
        source,
    })?;
    if sync {
        if let Err(e) = sync_dir(dir) {
            // Not durable: take the commit back so that the cleanup leaves nothing.
            let _ = fs::remove_file(&manifest_path);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the files of an image that was not committed.
pub(crate) fn remove_uncommitted(dir: &Path, created: &[String]) {
    for name in created
        .iter()
        .map(String::as_str)
        .chain([TEMP_MANIFEST_NAME])
    {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "cannot remove a file of an uncommitted image"),
        }
    }
}

/// What [`ImageWriter::commit`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommitInfo {
    /// Bytes of the image on disk: `manifest_bytes + pages_bytes`.
    pub total_bytes: u64,
    /// Size of `manifest.img`.
    pub manifest_bytes: u64,
    /// Sum of the page file sizes.
    pub pages_bytes: u64,
    /// Number of page files.
    pub page_files: usize,
}

/// Writes one page file. Unbuffered: pass large slices.
///
/// Every byte written is hashed (xxh3-64) on the way; [`finish`](Self::finish)
/// returns the name, size and hash for [`ImageWriter::commit`]. A page file
/// that is dropped without `finish` stays on disk until the [`ImageWriter`]
/// commits (which then fails, as it is not listed) or is dropped.
pub struct PageFileWriter {
    name: String,
    /// For messages: where the file goes.
    path: PathBuf,
    sink: Box<dyn PageSink>,
    hasher: Box<Xxh3>,
    position: u64,
}

impl std::fmt::Debug for PageFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageFileWriter")
            .field("path", &self.path)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl PageFileWriter {
    /// File name inside the image directory, e.g. `pages-0.img`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes written so far: the offset the next write lands at.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Appends `buf` to the file.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), ImageError> {
        self.sink.write_all(buf)?;
        self.hasher.update(buf);
        self.position += buf.len() as u64;
        Ok(())
    }

    /// Closes the file (flushing it to disk unless the writer has `sync(false)`)
    /// and returns what the manifest must record of it.
    pub fn finish(self) -> Result<PageFileInfo, ImageError> {
        self.sink.finish(self.position)?;
        Ok(PageFileInfo {
            name: self.name,
            size: self.position,
            xxh3: self.hasher.digest(),
        })
    }
}

/// Removes what a dump that did not complete left in `dir` (which holds no manifest).
fn remove_leftovers(dir: &Path) -> Result<(), ImageError> {
    let entries = fs::read_dir(dir).map_err(|source| ImageError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ImageError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(TEMP_PREFIX) || is_writer_page_file_name(name)) {
            continue;
        }
        let path = entry.path();
        tracing::info!(path = %path.display(), "removing leftover of an incomplete dump");
        fs::remove_file(&path).map_err(|source| ImageError::Modify {
            action: "remove",
            path,
            source,
        })?;
    }
    Ok(())
}

/// Whether `name` is of the form `pages-<decimal>.img`, as [`ImageWriter::page_file`] names files.
fn is_writer_page_file_name(name: &str) -> bool {
    name.strip_prefix("pages-")
        .and_then(|rest| rest.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates `path` (mode 0600, truncating an old one), writes `bytes`, optionally fsyncs.
fn write_new_file(path: &Path, bytes: &[u8], sync: bool) -> Result<(), ImageError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| ImageError::Open {
            path: path.to_owned(),
            source,
        })?;
    file.write_all(bytes).map_err(|source| ImageError::Write {
        path: path.to_owned(),
        source,
    })?;
    if sync {
        file.sync_all().map_err(|source| ImageError::Sync {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ImageError::Sync {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_page_file_names() {
        assert!(is_writer_page_file_name("pages-0.img"));
        assert!(is_writer_page_file_name("pages-123.img"));
        assert!(!is_writer_page_file_name("pages-.img"));
        assert!(!is_writer_page_file_name("pages-1a.img"));
        assert!(!is_writer_page_file_name("pages-1.img.bak"));
        assert!(!is_writer_page_file_name("manifest.img"));
    }
}

//! The store as a transfer medium: [`StoreMedium`] writes an image into it
//! as a checkpoint, [`StoreSource`] reads one back, so that
//! `godwit_image::ImageWriter` / `ImageReader` (and through them the
//! engine's dump and restore) work on a store as on a directory.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use godwit_image::{ImageError, Medium, PageSink, PageSource};

use crate::checkpoint::{self, CheckpointMeta, ChunkRef, StoredFile};
use crate::chunker::Chunker;
use crate::{now_ms, Batch, Hash, Result, Store, StoreError};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn medium_error(location: &Path, e: StoreError) -> ImageError {
    ImageError::Medium {
        location: location.to_owned(),
        source: Box::new(e),
    }
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, StoredFile>,
    /// New chunks, named at the commit.
    batch: Batch,
    /// The shared store lock, held until the commit or the end.
    lock: Option<File>,
    /// The checkpoint whose page files may be taken by reference
    /// ([`StoreMedium::linking_from`]): its page files, with the size and
    /// xxh3 its manifest gives each.
    link_from: Option<(String, HashMap<String, (StoredFile, u64)>)>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    id: String,
    parent: Option<String>,
    pid: Option<i32>,
    location: PathBuf,
    state: Mutex<State>,
}

impl Inner {
    fn put(&self, store: &Store, data: &[u8]) -> Result<ChunkRef> {
        let hash: Hash = *blake3::hash(data).as_bytes();
        if !lock(&self.state).batch.has(store, &hash) {
            // Compressed and written without the lock.
            let stored = crate::encode_chunk(store.compression, data);
            let staged = Batch::stage(store, &hash, &stored)?;
            lock(&self.state)
                .batch
                .add(hash, staged, stored.len() as u64);
        }
        Ok(ChunkRef {
            hash,
            len: data.len() as u32,
        })
    }
}

/// Writes one checkpoint into a [`Store`]: give it to
/// `godwit_image::ImageWriter::to_medium`.
#[derive(Debug)]
pub struct StoreMedium {
    inner: Arc<Inner>,
}

impl StoreMedium {
    /// Starts checkpoint `id` of process `pid` in `store`. Refused if the
    /// name is taken. Its parent is the newest checkpoint of `pid` in the
    /// store. Holds the store's lock (shared) until the commit or drop, so
    /// that [`Store::gc`] never removes a chunk it counts on.
    pub fn new(store: &Store, id: &str, pid: Option<i32>) -> Result<StoreMedium> {
        crate::check_name("checkpoint id", id)?;
        let guard = store.lock(false)?;
        if store.checkpoint_path(id).exists() {
            return Err(StoreError::Exists {
                id: id.to_string(),
                store: store.dir().to_owned(),
            });
        }
        let parent = match pid {
            Some(pid) => store.newest_of(pid)?,
            None => None,
        };
        Ok(StoreMedium {
            inner: Arc::new(Inner {
                store: store.clone(),
                id: id.to_string(),
                parent,
                pid,
                location: store.checkpoint_path(id),
                state: Mutex::new(State {
                    lock: Some(guard),
                    ..State::default()
                }),
            }),
        })
    }

    /// Starts checkpoint `id` of process `pid` as an incremental one: its
    /// page files may be those of checkpoint `from` (its parent, recorded
    /// as such), taken by reference ([`Medium::link_page_file`]: the
    /// parent's list of chunks is copied, no byte). Removing `from` later
    /// does not break it: the chunks stay as long as a checkpoint lists them.
    pub fn linking_from(
        store: &Store,
        id: &str,
        pid: Option<i32>,
        from: &str,
    ) -> Result<StoreMedium> {
        let mut m = StoreMedium::new(store, id, pid)?;
        let (meta, manifest) = store.read_checkpoint(from)?;
        let decoded =
            godwit_image::decode_manifest_bytes(&manifest).map_err(|source| StoreError::Image {
                checkpoint: from.to_string(),
                source,
            })?;
        let mut files = HashMap::new();
        for f in meta.files {
            if let Some(p) = decoded.page_files.iter().find(|p| p.name == f.name) {
                files.insert(f.name.clone(), (f, p.xxh3));
            }
        }
        let inner = Arc::get_mut(&mut m.inner).expect("not shared yet");
        inner.parent = Some(from.to_string());
        lock(&inner.state).link_from = Some((from.to_string(), files));
        Ok(m)
    }

    /// The parent the checkpoint will record.
    pub fn parent(&self) -> Option<&str> {
        self.inner.parent.as_deref()
    }

    fn commit_inner(&self, manifest: &[u8], sync: bool) -> Result<()> {
        let inner = &self.inner;
        let decoded =
            godwit_image::decode_manifest_bytes(manifest).map_err(|source| StoreError::Image {
                checkpoint: inner.id.clone(),
                source,
            })?;
        let mut st = lock(&inner.state);
        let mut files = Vec::with_capacity(decoded.page_files.len());
        for p in &decoded.page_files {
            match st.files.get(&p.name) {
                Some(f) if f.size == p.size => files.push(f.clone()),
                _ => {
                    return Err(StoreError::PageFileNotWritten {
                        checkpoint: inner.id.clone(),
                        name: p.name.clone(),
                    })
                }
            }
        }
        let store = &inner.store;
        st.batch.finish(store, sync)?;
        let meta = CheckpointMeta {
            id: inner.id.clone(),
            parent: inner.parent.clone(),
            pid: inner.pid,
            created_unix_ms: now_ms(),
            new_chunks: st.batch.new_chunks,
            new_stored_bytes: st.batch.new_stored_bytes,
            files,
        };
        commit_checkpoint(store, &meta, manifest, sync)?;
        st.lock = None;
        tracing::info!(
            id = %inner.id,
            parent = ?inner.parent,
            new_chunks = st.batch.new_chunks,
            new_bytes = st.batch.new_stored_bytes,
            "checkpoint committed to the store"
        );
        Ok(())
    }
}

/// Writes the checkpoint file of `meta` into place; refused if one of that
/// name exists (never replaced).
pub(crate) fn commit_checkpoint(
    store: &Store,
    meta: &CheckpointMeta,
    manifest: &[u8],
    sync: bool,
) -> Result<()> {
    let dir = store.dir().join("checkpoints");
    let path = store.checkpoint_path(&meta.id);
    // Written (and fsynced) under a temporary name first, then linked:
    // a link, unlike a rename, fails rather than replace a checkpoint.
    let staged = crate::temp_path(&dir);
    crate::write_atomic(&dir, &staged, &checkpoint::encode(meta, manifest), sync)?;
    let linked = std::fs::hard_link(&staged, &path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StoreError::Exists {
                id: meta.id.clone(),
                store: store.dir().to_owned(),
            })
        }
        Err(e) => return Err(StoreError::io("linking into place", &path, e)),
    }
    if sync {
        crate::sync_dir(&dir)?;
    }
    Ok(())
}

struct ChunkSink {
    inner: Arc<Inner>,
    store: Store,
    name: String,
    chunker: Chunker,
    chunks: Vec<ChunkRef>,
    size: u64,
}

impl PageSink for ChunkSink {
    fn write_all(&mut self, buf: &[u8]) -> std::result::Result<(), ImageError> {
        let ChunkSink {
            inner,
            store,
            chunker,
            chunks,
            ..
        } = self;
        chunker
            .push(buf, &mut |c: &[u8]| {
                chunks.push(inner.put(store, c)?);
                Ok(())
            })
            .map_err(|e| medium_error(&inner.location, e))?;
        self.size += buf.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>, _size: u64) -> std::result::Result<(), ImageError> {
        let ChunkSink {
            inner,
            store,
            name,
            chunker,
            mut chunks,
            size,
        } = *self;
        chunker
            .finish(&mut |c: &[u8]| {
                chunks.push(inner.put(&store, c)?);
                Ok(())
            })
            .map_err(|e| medium_error(&inner.location, e))?;
        lock(&inner.state)
            .files
            .insert(name.clone(), StoredFile { name, size, chunks });
        Ok(())
    }
}

impl Medium for StoreMedium {
    fn location(&self) -> &Path {
        &self.inner.location
    }

    fn create_page_file(
        &self,
        name: &str,
        sync: bool,
    ) -> std::result::Result<Box<dyn PageSink>, ImageError> {
        Ok(Box::new(ChunkSink {
            inner: self.inner.clone(),
            store: self.inner.store.clone().sync(sync),
            name: name.to_string(),
            chunker: Chunker::default(),
            chunks: Vec::new(),
            size: 0,
        }))
    }

    fn remove_page_file(&self, name: &str) -> std::result::Result<(), ImageError> {
        // Its chunks stay until gc (another checkpoint may share them).
        lock(&self.inner.state).files.remove(name);
        Ok(())
    }

    fn stored_size(&self, name: &str) -> std::result::Result<Option<u64>, ImageError> {
        match lock(&self.inner.state).files.get(name) {
            Some(f) => Ok(Some(f.size)),
            None => Err(ImageError::PageFileMissing {
                path: self.inner.location.join(name),
            }),
        }
    }

    fn commit(&self, manifest: &[u8], sync: bool) -> std::result::Result<(), ImageError> {
        self.commit_inner(manifest, sync)
            .map_err(|e| medium_error(&self.inner.location, e))
    }

    fn link_page_file(
        &self,
        info: &godwit_image::PageFileInfo,
    ) -> std::result::Result<(), ImageError> {
        let refused = |why: String| ImageError::LinkRefused {
            location: self.inner.location.clone(),
            name: info.name.clone(),
            why,
        };
        let mut st = lock(&self.inner.state);
        let Some((from, files)) = &st.link_from else {
            return Err(refused("no parent checkpoint to take it from".into()));
        };
        let file = match files.get(&info.name) {
            Some((f, xxh3)) if f.size == info.size && *xxh3 == info.xxh3 => f.clone(),
            Some(_) => {
                return Err(refused(format!(
                    "checkpoint {from} holds a different file of that name"
                )))
            }
            None => return Err(refused(format!("checkpoint {from} holds no such file"))),
        };
        if st.files.contains_key(&info.name) {
            return Err(refused(
                "this checkpoint holds one of that name already".into(),
            ));
        }
        st.files.insert(info.name.clone(), file);
        Ok(())
    }

    fn abandon(&self, _created: &[String]) {
        // Chunks already written stay until gc; nothing names them.
        let mut st = lock(&self.inner.state);
        st.files.clear();
        st.batch.discard();
        st.lock = None;
    }
}

/// Reads one checkpoint of a [`Store`]: give it to
/// `godwit_image::ImageReader::from_source`. Each page file is rebuilt in
/// an anonymous memory file (memfd) the first time it is opened, every
/// chunk checked against its hash; a missing or corrupt chunk is an error
/// naming the checkpoint and the chunk.
#[derive(Debug)]
pub struct StoreSource {
    store: Store,
    meta: CheckpointMeta,
    manifest: Vec<u8>,
    location: PathBuf,
    files: Mutex<HashMap<String, File>>,
}

impl StoreSource {
    /// Opens checkpoint `id` of `store`.
    pub fn open(store: &Store, id: &str) -> Result<StoreSource> {
        let (meta, manifest) = store.read_checkpoint(id)?;
        Ok(StoreSource {
            store: store.clone(),
            location: store.checkpoint_path(id),
            meta,
            manifest,
            files: Mutex::new(HashMap::new()),
        })
    }

    /// What the checkpoint file says.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Rebuilds page file `f` in a memory file.
    pub fn rebuild(&self, f: &StoredFile) -> Result<File> {
        let fd = rustix::fs::memfd_create(f.name.as_str(), rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| StoreError::io("creating a memory file for", &self.location, e.into()))?;
        let file = File::from(fd);
        let mut at = 0u64;
        for c in &f.chunks {
            let data = self.store.get_chunk(&self.meta.id, &c.hash, c.len)?;
            file.write_all_at(&data, at).map_err(|e| {
                StoreError::io("filling a memory file for", self.location.join(&f.name), e)
            })?;
            at += data.len() as u64;
        }
        Ok(file)
    }
}

impl PageSource for StoreSource {
    fn location(&self) -> &Path {
        &self.location
    }

    fn manifest(&self) -> std::result::Result<Vec<u8>, ImageError> {
        Ok(self.manifest.clone())
    }

    fn open_page_file(&self, name: &str) -> std::result::Result<File, ImageError> {
        let path = self.location.join(name);
        let mut files = lock(&self.files);
        if let Some(f) = files.get(name) {
            return f
                .try_clone()
                .map_err(|source| ImageError::Open { path, source });
        }
        let Some(stored) = self.meta.files.iter().find(|f| f.name == name) else {
            return Err(ImageError::PageFileMissing { path });
        };
        let f = self
            .rebuild(stored)
            .map_err(|e| medium_error(&self.location, e))?;
        let clone = f
            .try_clone()
            .map_err(|source| ImageError::Open { path, source })?;
        files.insert(name.to_string(), f);
        Ok(clone)
    }

    /// Every chunk was checked against its BLAKE3 hash as it was read, into
    /// a memory file nobody else writes.
    fn verified(&self) -> bool {
        true
    }
}

//! An image carried over a byte stream (to a peer, for a migration).
//!
//! The stream is a sequence of frames, each a 16-byte header and a payload:
//!
//! ```text
//! offset  size  field
//!      0     1  kind (below)
//!      1     3  zero
//!      4     4  page file id, u32 little-endian (0 when unused)
//!      8     8  payload length, u64 little-endian
//!     16     n  payload
//! ```
//!
//! | kind | name    | payload |
//! |------|---------|---------|
//! | 1    | OPEN    | the page file's name (UTF-8); `id` names it from now on |
//! | 2    | DATA    | bytes appended to page file `id` |
//! | 3    | CLOSE   | the file's size, u64 LE (checked) |
//! | 4    | REMOVE  | none: page file `id` is given up |
//! | 5    | COMMIT  | the framed manifest (`manifest.img` bytes): the image is whole |
//! | 6    | ABORT   | why the sender gave up (UTF-8) |
//! | 7    | MESSAGE | a message of the protocol around the image (opaque here) |
//!
//! [`StreamMedium`] writes an image this way (several page writers may
//! share it: each frame is written whole under a lock);
//! [`receive_image`] reads one into memory files, with no disk involved.
//! The receiver trusts nothing: names are checked, sizes capped, and the
//! manifest and page checksums are verified as for any image.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::medium::{Medium, MemoryImage, PageSink};
use crate::{ImageError, HEADER_LEN, MAX_METADATA_BYTES};

/// Frame kinds.
pub mod kind {
    /// A page file starts.
    pub const OPEN: u8 = 1;
    /// Bytes of a page file.
    pub const DATA: u8 = 2;
    /// A page file ends.
    pub const CLOSE: u8 = 3;
    /// A page file is given up.
    pub const REMOVE: u8 = 4;
    /// The manifest: the image is complete.
    pub const COMMIT: u8 = 5;
    /// The sender gave up.
    pub const ABORT: u8 = 6;
    /// A message of the protocol around the image.
    pub const MESSAGE: u8 = 7;
}

/// Size of a frame header.
pub const FRAME_HEADER: usize = 16;
/// Largest DATA payload a receiver accepts.
pub const MAX_DATA_FRAME: u64 = 64 << 20;
/// Largest MESSAGE or ABORT payload a receiver accepts.
pub const MAX_MESSAGE: u64 = 1 << 20;

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, id: u32, payload: &[u8]) -> std::io::Result<()> {
    let mut h = [0u8; FRAME_HEADER];
    h[0] = kind;
    h[4..8].copy_from_slice(&id.to_le_bytes());
    h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(payload)?;
    Ok(())
}

/// A frame's header.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    /// One of [`kind`].
    pub kind: u8,
    /// Page file id.
    pub id: u32,
    /// Payload length.
    pub len: u64,
}

/// Reads a frame header.
pub fn read_header(r: &mut impl Read) -> std::io::Result<FrameHeader> {
    let mut h = [0u8; FRAME_HEADER];
    r.read_exact(&mut h)?;
    Ok(FrameHeader {
        kind: h[0],
        id: u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
        len: u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")),
    })
}

/// Sends a protocol message (a MESSAGE frame) and flushes.
pub fn send_message(w: &mut impl Write, msg: &[u8]) -> std::io::Result<()> {
    write_frame(w, kind::MESSAGE, 0, msg)?;
    w.flush()
}

/// What [`recv_message`] got.
#[derive(Debug)]
pub enum Received {
    /// A MESSAGE frame's payload.
    Message(Vec<u8>),
    /// The peer gave up, saying why.
    Abort(String),
}

/// Reads the next frame, which must be a MESSAGE or an ABORT.
pub fn recv_message(r: &mut impl Read, peer: &Path) -> Result<Received, ImageError> {
    let h = read_header(r).map_err(|e| stream_error(peer, e))?;
    if !matches!(h.kind, kind::MESSAGE | kind::ABORT) || h.len > MAX_MESSAGE {
        return Err(protocol(
            peer,
            format!(
                "expected a message, got a frame of kind {} and {} bytes",
                h.kind, h.len
            ),
        ));
    }
    let mut buf = vec![0u8; h.len as usize];
    r.read_exact(&mut buf).map_err(|e| stream_error(peer, e))?;
    Ok(match h.kind {
        kind::MESSAGE => Received::Message(buf),
        _ => Received::Abort(String::from_utf8_lossy(&buf).into_owned()),
    })
}

/// Tells the peer we give up, saying why (best effort).
pub fn send_abort(w: &mut impl Write, why: &str) {
    let _ = write_frame(w, kind::ABORT, 0, why.as_bytes()).and_then(|()| w.flush());
}

fn stream_error(peer: &Path, source: std::io::Error) -> ImageError {
    ImageError::Stream {
        peer: peer.to_owned(),
        source,
    }
}

fn protocol(peer: &Path, detail: String) -> ImageError {
    ImageError::StreamProtocol {
        peer: peer.to_owned(),
        detail,
    }
}

/// Writes an image as frames on a stream shared with the caller (who keeps
/// a clone of the `Arc` to talk to the peer before and after the image).
pub struct StreamMedium<W: Write + Send + 'static> {
    out: Arc<Mutex<W>>,
    peer: PathBuf,
    ids: Mutex<HashMap<String, u32>>,
    next: AtomicU32,
    sent: Arc<AtomicU64>,
}

impl<W: Write + Send + 'static> std::fmt::Debug for StreamMedium<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMedium")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send + 'static> StreamMedium<W> {
    /// Frames go to `out`; `peer` names the other end in messages.
    pub fn new(out: Arc<Mutex<W>>, peer: &str) -> Self {
        Self {
            out,
            peer: PathBuf::from(format!("stream to {peer}")),
            ids: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts the bytes sent (frames included) from now on.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    fn frame(&self, kind: u8, id: u32, payload: &[u8]) -> Result<(), ImageError> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *out, kind, id, payload).map_err(|e| stream_error(&self.peer, e))?;
        if kind == kind::COMMIT {
            out.flush().map_err(|e| stream_error(&self.peer, e))?;
        }
        self.sent
            .fetch_add((FRAME_HEADER + payload.len()) as u64, Ordering::Relaxed);
        Ok(())
    }

    fn id(&self, name: &str) -> Option<u32> {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }
}

struct StreamSink<W: Write + Send + 'static> {
    medium: Arc<StreamShared<W>>,
    id: u32,
}

/// What a page sink needs of its medium.
struct StreamShared<W: Write + Send + 'static> {
    out: Arc<Mutex<W>>,
    peer: PathBuf,
    sent: Arc<AtomicU64>,
}

impl<W: Write + Send + 'static> PageSink for StreamSink<W> {
    fn write_all(&mut self, buf: &[u8]) -> Result<(), ImageError> {
        let m = &self.medium;
        for chunk in buf.chunks(MAX_DATA_FRAME as usize) {
            let mut out = m.out.lock().unwrap_or_else(|p| p.into_inner());
            write_frame(&mut *out, kind::DATA, self.id, chunk)
                .map_err(|e| stream_error(&m.peer, e))?;
            m.sent
                .fetch_add((FRAME_HEADER + chunk.len()) as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, size: u64) -> Result<(), ImageError> {
        let m = &self.medium;
        let mut out = m.out.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *out, kind::CLOSE, self.id, &size.to_le_bytes())
            .map_err(|e| stream_error(&m.peer, e))
    }
}

impl<W: Write + Send + 'static> Medium for StreamMedium<W> {
    fn location(&self) -> &Path {
        &self.peer
    }

    fn create_page_file(&self, name: &str, _sync: bool) -> Result<Box<dyn PageSink>, ImageError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.frame(kind::OPEN, id, name.as_bytes())?;
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), id);
        Ok(Box::new(StreamSink {
            medium: Arc::new(StreamShared {
                out: self.out.clone(),
                peer: self.peer.clone(),
                sent: self.sent.clone(),
            }),
            id,
        }))
    }

    fn remove_page_file(&self, name: &str) -> Result<(), ImageError> {
        match self.id(name) {
            Some(id) => self.frame(kind::REMOVE, id, &[]),
            None => Ok(()),
        }
    }

    fn stored_size(&self, _name: &str) -> Result<Option<u64>, ImageError> {
        Ok(None)
    }

    fn commit(&self, manifest: &[u8], _sync: bool) -> Result<(), ImageError> {
        self.frame(kind::COMMIT, 0, manifest)
    }

    fn abandon(&self, _created: &[String]) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        send_abort(&mut *out, "the dump did not complete");
    }
}

/// One page file being received.
struct Incoming {
    name: String,
    file: File,
    size: u64,
    closed: bool,
    /// Of the bytes received so far: the page file is checked against the
    /// manifest as it arrives, not read again before a restore.
    hash: crate::hash::Xxh3,
}

/// Reads an image from `r` into memory files, up to its COMMIT frame.
///
/// `peer` names the sender in messages; at most `max_bytes` of page data
/// are accepted (the receiver's memory is the limit). Frames of the
/// protocol around the image (MESSAGE) are refused here. Returns the image,
/// to open with [`ImageReader::from_source`](crate::ImageReader::from_source).
pub fn receive_image(
    r: &mut impl Read,
    peer: &str,
    max_bytes: u64,
) -> Result<MemoryImage, ImageError> {
    let label = PathBuf::from(format!("stream from {peer}"));
    let mut files: HashMap<u32, Incoming> = HashMap::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let h = read_header(r).map_err(|e| stream_error(&label, e))?;
        match h.kind {
            kind::OPEN => {
                if h.len == 0 || h.len > 255 {
                    return Err(protocol(
                        &label,
                        format!("a page file name of {} bytes", h.len),
                    ));
                }
                let mut name = vec![0u8; h.len as usize];
                r.read_exact(&mut name)
                    .map_err(|e| stream_error(&label, e))?;
                let name = String::from_utf8(name)
                    .map_err(|_| protocol(&label, "a page file name that is not UTF-8".into()))?;
                crate::manifest::check_page_file_names(std::iter::once(name.as_str()), &label)?;
                if files.values().any(|f| f.name == name) || files.contains_key(&h.id) {
                    return Err(protocol(&label, format!("page file {name} opened twice")));
                }
                let fd = rustix::fs::memfd_create(name.as_str(), rustix::fs::MemfdFlags::CLOEXEC)
                    .map_err(|e| ImageError::Open {
                    path: label.join(&name),
                    source: e.into(),
                })?;
                files.insert(
                    h.id,
                    Incoming {
                        name,
                        file: File::from(fd),
                        size: 0,
                        closed: false,
                        hash: crate::hash::Xxh3::new(),
                    },
                );
            }
            kind::DATA => {
                if h.len > MAX_DATA_FRAME {
                    return Err(protocol(&label, format!("a data frame of {} bytes", h.len)));
                }
                total += h.len;
                if total > max_bytes {
                    return Err(ImageError::StreamTooLarge {
                        peer: label,
                        max: max_bytes,
                    });
                }
                let f = files.get_mut(&h.id).filter(|f| !f.closed).ok_or_else(|| {
                    protocol(&label, format!("data for unknown page file {}", h.id))
                })?;
                let mut left = h.len as usize;
                while left > 0 {
                    let n = left.min(buf.len());
                    r.read_exact(&mut buf[..n])
                        .map_err(|e| stream_error(&label, e))?;
                    f.hash.update(&buf[..n]);
                    f.file
                        .write_all(&buf[..n])
                        .map_err(|source| ImageError::Write {
                            path: label.join(&f.name),
                            source,
                        })?;
                    left -= n;
                }
                f.size += h.len;
            }
            kind::CLOSE => {
                let mut size = [0u8; 8];
                if h.len != 8 {
                    return Err(protocol(&label, "a CLOSE frame without its size".into()));
                }
                r.read_exact(&mut size)
                    .map_err(|e| stream_error(&label, e))?;
                let f = files.get_mut(&h.id).ok_or_else(|| {
                    protocol(&label, format!("CLOSE of unknown page file {}", h.id))
                })?;
                let size = u64::from_le_bytes(size);
                if size != f.size {
                    return Err(ImageError::PageFileSize {
                        path: label.join(&f.name),
                        expected: size,
                        actual: f.size,
                    });
                }
                f.closed = true;
            }
            kind::REMOVE => {
                if h.len != 0 {
                    return Err(protocol(&label, "a REMOVE frame with a payload".into()));
                }
                if let Some(f) = files.remove(&h.id) {
                    total -= f.size;
                }
            }
            kind::COMMIT => {
                if h.len > (HEADER_LEN as u64) + MAX_METADATA_BYTES {
                    return Err(protocol(&label, format!("a manifest of {} bytes", h.len)));
                }
                let mut manifest = vec![0u8; h.len as usize];
                r.read_exact(&mut manifest)
                    .map_err(|e| stream_error(&label, e))?;
                let m = crate::manifest::decode_manifest(&manifest, &label)?;
                // Every page file the manifest names arrived whole, with its
                // checksum; so the image needs no reading again (verified).
                for p in &m.page_files {
                    let path = label.join(&p.name);
                    let f = files
                        .values()
                        .find(|f| f.name == p.name)
                        .ok_or_else(|| ImageError::PageFileMissing { path: path.clone() })?;
                    if f.size != p.size {
                        return Err(ImageError::PageFileSize {
                            path,
                            expected: p.size,
                            actual: f.size,
                        });
                    }
                    let actual = f.hash.digest();
                    if actual != p.xxh3 {
                        return Err(ImageError::ChecksumMismatch {
                            path,
                            expected: p.xxh3,
                            actual,
                        });
                    }
                }
                let bytes = total + h.len;
                return Ok(MemoryImage {
                    label,
                    manifest,
                    files: files.into_values().map(|f| (f.name, f.file)).collect(),
                    bytes,
                });
            }
            kind::ABORT => {
                let mut why = vec![0u8; h.len.min(MAX_MESSAGE) as usize];
                r.read_exact(&mut why)
                    .map_err(|e| stream_error(&label, e))?;
                return Err(ImageError::SenderAborted {
                    peer: label,
                    reason: String::from_utf8_lossy(&why).into_owned(),
                });
            }
            k => {
                return Err(protocol(
                    &label,
                    format!("a frame of kind {k} inside an image"),
                ))
            }
        }
    }
}

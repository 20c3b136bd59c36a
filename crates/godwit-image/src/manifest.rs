//! The manifest: its protobuf schema and its framing on disk.
//!
//! `manifest.img` is a 32-byte header followed by the payload, an encoded
//! [`Manifest`] message (see `docs/IMAGE_FORMAT.md` for the exact layout):
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"GODWIT\0I"
//!      8     2  format major, u16 little-endian
//!     10     2  format minor, u16 little-endian
//!     12     4  flags, u32 little-endian (bit 0: FLAG_SCATTERED_PAGES, bit 1: FLAG_LAZY_PAGES, bit 2: FLAG_INHERITED_PAGES)
//!     16     8  payload length, u64 little-endian
//!     24     8  xxh3-64 of the payload, u64 little-endian
//!     32     n  payload
//! ```

use std::collections::HashSet;
use std::path::Path;

use prost::Message;

use crate::{ImageError, FORMAT_MAJOR, FORMAT_MINOR, MAX_METADATA_BYTES};

/// The 8 bytes every `manifest.img` starts with.
pub const MANIFEST_MAGIC: [u8; 8] = *b"GODWIT\0I";

/// Size of the fixed header before the payload.
pub const HEADER_LEN: usize = 32;

/// Header flag: a process's page runs may lie anywhere in its page stream
/// (not back to back in address order), and the stream may hold bytes no
/// run points to. Written by a pre-copy dump (`dump --leave-running`).
pub const FLAG_SCATTERED_PAGES: u32 = 1;

/// Header flag: some pages exist but are not in the image (`Vma.lazy`):
/// a post-copy migration's source serves them once the process runs. A
/// reader that does not know this must not restore the image (the process
/// would find zeros there).
pub const FLAG_LAZY_PAGES: u32 = 2;

/// Header flag: some pages of a process are not in the image because they
/// are its parent's (`Vma.inherited`: shared copy-on-write since a fork);
/// the restore gets them by forking it from its parent once the parent's
/// memory is in place. A reader that does not know this must not restore
/// the image (the child would find zeros there).
pub const FLAG_INHERITED_PAGES: u32 = 4;

/// Header flag bits this reader understands; it refuses any other set bit.
const KNOWN_FLAGS: u32 = FLAG_SCATTERED_PAGES | FLAG_LAZY_PAGES | FLAG_INHERITED_PAGES;

/// The manifest payload (`godwit.image.v1.Manifest` in `proto/manifest.proto`).
#[derive(Clone, PartialEq, Message)]
pub struct Manifest {
    /// Format major version; equals the header's.
    #[prost(uint32, tag = "1")]
    pub format_major: u32,
    /// Format minor version; equals the header's.
    #[prost(uint32, tag = "2")]
    pub format_minor: u32,
    /// Free text naming the program that wrote the image, e.g. "godwit 0.1.0".
    #[prost(string, tag = "3")]
    pub writer: String,
    /// When the image was committed, in milliseconds since the Unix epoch.
    #[prost(uint64, tag = "4")]
    pub created_unix_ms: u64,
    /// The page files of the image, in the order the writer listed them.
    #[prost(message, repeated, tag = "5")]
    pub page_files: Vec<PageFile>,
    /// The encoded metadata message (opaque to this crate).
    #[prost(bytes = "vec", tag = "6")]
    pub metadata: Vec<u8>,
}

/// One page file as recorded in the manifest.
#[derive(Clone, PartialEq, Message)]
pub struct PageFile {
    /// File name inside the image directory.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Size in bytes.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// xxh3-64 of the whole file content.
    #[prost(uint64, tag = "3")]
    pub xxh3: u64,
}

/// Encodes a manifest into the bytes of a `manifest.img` file: header, then payload.
///
/// The header's version is taken from the manifest's `format_major` and
/// `format_minor` (saturated to `u16`), so a test or a converter can write any
/// version. This does not check the size cap; [`ImageWriter`](crate::ImageWriter) does.
pub fn encode_manifest_bytes(manifest: &Manifest) -> Vec<u8> {
    let payload = manifest.encode_to_vec();
    let major = u16::try_from(manifest.format_major).unwrap_or(u16::MAX);
    let minor = u16::try_from(manifest.format_minor).unwrap_or(u16::MAX);
    frame(major, minor, 0, &payload)
}

/// Puts the 32-byte header in front of `payload`.
pub(crate) fn frame(major: u16, minor: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crate::hash::xxh3_64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes and validates the bytes of a `manifest.img` file that are already in memory.
///
/// Checks, in order: magic, major version, header length, flags, size cap,
/// payload length, checksum, protobuf decoding, header/payload version
/// agreement, and page file names (plain, unique). Never panics, whatever the
/// input. Errors name the path `<in-memory manifest>`; readers of files use
/// [`ImageReader::open`](crate::ImageReader::open), whose errors name the file.
pub fn decode_manifest_bytes(bytes: &[u8]) -> Result<Manifest, ImageError> {
    decode_manifest(bytes, Path::new("<in-memory manifest>"))
}

/// [`decode_manifest_bytes`] with errors naming `path`.
pub(crate) fn decode_manifest(bytes: &[u8], path: &Path) -> Result<Manifest, ImageError> {
    let truncated = |part, needed: usize| ImageError::Truncated {
        path: path.to_owned(),
        part,
        needed: needed as u64,
        available: bytes.len() as u64,
    };

    // Magic first: a short file that is not a prefix of the magic is not ours at all.
    let magic_len = bytes.len().min(MANIFEST_MAGIC.len());
    if bytes[..magic_len] != MANIFEST_MAGIC[..magic_len] {
        return Err(ImageError::BadMagic {
            path: path.to_owned(),
        });
    }
    // Version next: another major version may lay the rest of the header out differently.
    let (Some(major), Some(minor)) = (read_u16(bytes, 8), read_u16(bytes, 10)) else {
        return Err(truncated("header", HEADER_LEN));
    };
    if major != FORMAT_MAJOR {
        return Err(ImageError::UnsupportedVersion {
            path: path.to_owned(),
            major,
            minor,
        });
    }
    let (Some(flags), Some(len), Some(checksum)) = (
        read_u32(bytes, 12),
        read_u64(bytes, 16),
        read_u64(bytes, 24),
    ) else {
        return Err(truncated("header", HEADER_LEN));
    };
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ImageError::UnsupportedFlags {
            path: path.to_owned(),
            flags,
        });
    }
    if len > MAX_METADATA_BYTES {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            len,
            max: MAX_METADATA_BYTES,
        });
    }
    // len <= MAX_METADATA_BYTES, so this neither overflows nor truncates.
    let len = len as usize;
    let rest = &bytes[HEADER_LEN..];
    if rest.len() < len {
        return Err(truncated("payload", HEADER_LEN + len));
    }
    if rest.len() > len {
        return Err(ImageError::TrailingBytes {
            path: path.to_owned(),
            extra: (rest.len() - len) as u64,
        });
    }
    let actual = crate::hash::xxh3_64(rest);
    if actual != checksum {
        return Err(ImageError::ChecksumMismatch {
            path: path.to_owned(),
            expected: checksum,
            actual,
        });
    }
    let manifest = Manifest::decode(rest).map_err(|source| ImageError::ManifestDecode {
        path: path.to_owned(),
        source,
    })?;
    if manifest.format_major != u32::from(major) || manifest.format_minor != u32::from(minor) {
        return Err(ImageError::VersionMismatch {
            path: path.to_owned(),
            header_major: major,
            header_minor: minor,
            payload_major: manifest.format_major,
            payload_minor: manifest.format_minor,
        });
    }
    if minor > FORMAT_MINOR {
        tracing::debug!(
            path = %path.display(),
            minor,
            "manifest has a newer minor format version; fields unknown to this reader are ignored"
        );
    }
    check_page_file_names(manifest.page_files.iter().map(|p| p.name.as_str()), path)?;
    Ok(manifest)
}

/// Checks that every name is a valid page file name and that none repeats.
/// `path` is what errors name (the manifest, or the image directory).
pub(crate) fn check_page_file_names<'a>(
    names: impl Iterator<Item = &'a str>,
    path: &Path,
) -> Result<(), ImageError> {
    let mut seen = HashSet::new();
    for name in names {
        if !is_valid_page_file_name(name) {
            return Err(ImageError::BadPageFileName {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
        if !seen.insert(name) {
            return Err(ImageError::DuplicatePageFile {
                path: path.to_owned(),
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// A page file name is one plain path component of at most 255 bytes from
/// `[A-Za-z0-9._-]`, not starting with '.' (so never `.`, `..` or a temporary
/// file), and not `manifest.img`.
pub(crate) fn is_valid_page_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name != crate::MANIFEST_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at + N)?.try_into().ok()
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    read_array(bytes, at).map(u16::from_le_bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    read_array(bytes, at).map(u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    read_array(bytes, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_major: u32::from(FORMAT_MAJOR),
            format_minor: u32::from(FORMAT_MINOR),
            writer: "test".into(),
            created_unix_ms: 1_700_000_000_000,
            page_files: vec![PageFile {
                name: "pages-0.img".into(),
                size: 4096,
                xxh3: 7,
            }],
            metadata: vec![1, 2, 3],
        }
    }

    #[test]
    fn header_layout_is_byte_exact() {
        let bytes = encode_manifest_bytes(&sample());
        let payload = sample().encode_to_vec();
        assert_eq!(&bytes[0..8], b"GODWIT\0I");
        assert_eq!(&bytes[8..10], &[1, 0]);
        assert_eq!(&bytes[10..12], &[0, 0]);
        assert_eq!(&bytes[12..16], &[0, 0, 0, 0]);
        assert_eq!(&bytes[16..24], &(payload.len() as u64).to_le_bytes());
        assert_eq!(
            &bytes[24..32],
            &crate::hash::xxh3_64(&payload).to_le_bytes()
        );
        assert_eq!(&bytes[32..], &payload[..]);
        assert_eq!(decode_manifest_bytes(&bytes).unwrap(), sample());
    }

    #[test]
    fn newer_minor_is_accepted() {
        let mut m = sample();
        m.format_minor = u32::from(FORMAT_MINOR) + 3;
        assert_eq!(
            decode_manifest_bytes(&encode_manifest_bytes(&m)).unwrap(),
            m
        );
    }

    #[test]
    fn older_major_is_refused() {
        let mut m = sample();
        m.format_major = 0;
        let err = decode_manifest_bytes(&encode_manifest_bytes(&m)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::UnsupportedVersion { major: 0, .. }
        ));
        assert!(err.to_string().contains("older godwit"), "{err}");
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut bytes = encode_manifest_bytes(&sample());
        bytes[12] = 8;
        let err = decode_manifest_bytes(&bytes).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedFlags { flags: 8, .. }));
        // Known flags are accepted.
        for flags in [FLAG_SCATTERED_PAGES, FLAG_LAZY_PAGES, FLAG_INHERITED_PAGES] {
            let bytes = frame(FORMAT_MAJOR, FORMAT_MINOR, flags, &sample().encode_to_vec());
            assert!(decode_manifest_bytes(&bytes).is_ok());
        }
    }

    #[test]
    fn oversized_payload_is_refused_before_reading_it() {
        let mut bytes = encode_manifest_bytes(&sample());
        bytes[16..24].copy_from_slice(&(MAX_METADATA_BYTES + 1).to_le_bytes());
        let err = decode_manifest_bytes(&bytes).unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode_manifest_bytes(&bytes).unwrap_err(),
            ImageError::TooLarge { .. }
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode_manifest_bytes(&sample());
        bytes.push(0);
        let err = decode_manifest_bytes(&bytes).unwrap_err();
        assert!(matches!(err, ImageError::TrailingBytes { extra: 1, .. }));
    }

    #[test]
    fn header_payload_version_disagreement_is_refused() {
        let mut m = sample();
        m.format_minor = 5;
        let payload = m.encode_to_vec();
        let bytes = frame(FORMAT_MAJOR, 4, 0, &payload);
        let err = decode_manifest_bytes(&bytes).unwrap_err();
        assert!(matches!(err, ImageError::VersionMismatch { .. }), "{err}");
    }

    #[test]
    fn garbage_payload_with_valid_checksum_is_a_decode_error() {
        let bytes = frame(FORMAT_MAJOR, FORMAT_MINOR, 0, &[0xff; 10]);
        let err = decode_manifest_bytes(&bytes).unwrap_err();
        assert!(matches!(err, ImageError::ManifestDecode { .. }), "{err}");
    }

    #[test]
    fn page_file_names_are_checked() {
        for bad in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "/etc/passwd",
            "a/b",
            ".tmp-pages-0.img",
            "manifest.img",
            "sp ace",
            "nul\0",
        ] {
            let mut m = sample();
            m.page_files[0].name = bad.into();
            let err = decode_manifest_bytes(&encode_manifest_bytes(&m)).unwrap_err();
            assert!(
                matches!(err, ImageError::BadPageFileName { .. }),
                "{bad:?}: {err}"
            );
        }
        let mut m = sample();
        m.page_files.push(m.page_files[0].clone());
        let err = decode_manifest_bytes(&encode_manifest_bytes(&m)).unwrap_err();
        assert!(matches!(err, ImageError::DuplicatePageFile { .. }), "{err}");
        assert!(is_valid_page_file_name("pages-12.img"));
        assert!(is_valid_page_file_name("extra_data.bin"));
    }
}

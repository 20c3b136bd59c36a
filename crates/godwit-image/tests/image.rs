//! Write → commit → open → read round trips, and every way a reader must refuse an image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use godwit_image::{
    encode_manifest_bytes, CommitInfo, ImageError, ImageReader, ImageWriter, Manifest,
    PageFileInfo, FORMAT_MAJOR, MAX_METADATA_BYTES,
};
use prost::Message;

/// A stand-in for the engine's metadata message.
#[derive(Clone, PartialEq, prost::Message)]
struct TestMeta {
    #[prost(uint32, tag = "1")]
    pid: u32,
    #[prost(string, tag = "2")]
    comm: String,
    #[prost(uint64, repeated, tag = "3")]
    addrs: Vec<u64>,
}

fn meta() -> TestMeta {
    TestMeta {
        pid: 4242,
        comm: "sleeper".into(),
        addrs: vec![0x7f00_0000_0000, 0x7f00_0000_1000],
    }
}

/// Deterministic, non-repeating page content.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

struct Image {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    pages: [Vec<u8>; 2],
    commit: CommitInfo,
}

/// Writes an image of `meta()` and two page files; the first written in several slices.
fn write_image() -> Image {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("img");
    let pages = [pattern(3 << 20 | 17, 1), pattern(3 * 4096, 2)];

    let writer = ImageWriter::create(&dir)
        .unwrap()
        .writer_name("godwit 0.1.0");
    let mut infos = Vec::new();
    for page in &pages {
        let mut file = writer.page_file().unwrap();
        for chunk in page.chunks(1 << 20) {
            file.write_all(chunk).unwrap();
        }
        assert_eq!(file.position(), page.len() as u64);
        infos.push(file.finish().unwrap());
    }
    let commit = writer.commit(&meta(), infos).unwrap();
    Image {
        _tmp: tmp,
        dir,
        pages,
        commit,
    }
}

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("manifest.img")
}

/// Frames `payload` as the format document describes, independently of the crate.
fn frame(major: u16, minor: u16, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = b"GODWIT\0I".to_vec();
    out.extend(major.to_le_bytes());
    out.extend(minor.to_le_bytes());
    out.extend(flags.to_le_bytes());
    out.extend((payload.len() as u64).to_le_bytes());
    out.extend(xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    out.extend(payload);
    out
}

fn open_err(dir: &Path) -> ImageError {
    ImageReader::open(dir).expect_err("open must refuse this image")
}

#[test]
fn round_trip_metadata_and_two_page_files() {
    let img = write_image();
    let reader = ImageReader::open(&img.dir).unwrap();

    assert_eq!(reader.dir(), img.dir);
    assert_eq!(reader.metadata::<TestMeta>().unwrap(), meta());
    let names: Vec<&str> = reader
        .page_files()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["pages-0.img", "pages-1.img"]);
    for (info, page) in reader.page_files().iter().zip(&img.pages) {
        assert_eq!(info.size, page.len() as u64);
        assert_eq!(info.xxh3, xxhash_rust::xxh3::xxh3_64(page));
        let map = reader.map_page_file(&info.name).unwrap();
        assert_eq!(map.name(), info.name);
        assert_eq!(&map[..], &page[..]);
        assert_eq!(fs::read(img.dir.join(&info.name)).unwrap(), *page);
    }
    reader.verify_pages().unwrap();

    let manifest_len = fs::metadata(manifest_path(&img.dir)).unwrap().len();
    let pages_len = (img.pages[0].len() + img.pages[1].len()) as u64;
    assert_eq!(img.commit.manifest_bytes, manifest_len);
    assert_eq!(img.commit.pages_bytes, pages_len);
    assert_eq!(img.commit.page_files, 2);
    assert_eq!(img.commit.total_bytes, manifest_len + pages_len);
    assert_eq!(reader.total_bytes(), img.commit.total_bytes);

    let m = reader.manifest();
    assert_eq!(m.format_major, 1);
    assert_eq!(m.format_minor, 0);
    assert_eq!(m.writer, "godwit 0.1.0");
    assert!(m.created_unix_ms > 1_600_000_000_000);
    // Nothing temporary is left behind.
    let mut entries: Vec<String> = fs::read_dir(&img.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["manifest.img", "pages-0.img", "pages-1.img"]);
}

#[test]
fn image_without_page_files_and_empty_page_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let writer = ImageWriter::create(&dir).unwrap().sync(false);
    writer.commit(&meta(), Vec::new()).unwrap();
    let reader = ImageReader::open(&dir).unwrap();
    assert!(reader.page_files().is_empty());
    reader.verify_pages().unwrap();

    let dir = tmp.path().join("img2");
    let writer = ImageWriter::create(&dir).unwrap();
    let info = writer.page_file().unwrap().finish().unwrap();
    assert_eq!(info.size, 0);
    writer.commit(&meta(), vec![info]).unwrap();
    let reader = ImageReader::open(&dir).unwrap();
    assert!(reader.map_page_file("pages-0.img").unwrap().is_empty());
    reader.verify_pages().unwrap();
}

#[test]
fn refuses_missing_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let err = open_err(tmp.path());
    assert!(matches!(err, ImageError::NoCommittedImage { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "image directory {} holds no committed image (manifest.img missing): \
             the dump did not complete or this is not a Godwit image directory",
            tmp.path().display()
        )
    );
}

#[test]
fn refuses_missing_directory_and_non_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    assert!(matches!(open_err(&missing), ImageError::DirNotFound { .. }));
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(open_err(&file), ImageError::NotADirectory { .. }));
    assert!(matches!(
        ImageWriter::create(&file).unwrap_err(),
        ImageError::NotADirectory { .. }
    ));
}

#[test]
fn refuses_every_truncation_of_the_manifest() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    let bytes = fs::read(&path).unwrap();
    for len in 0..bytes.len() {
        fs::write(&path, &bytes[..len]).unwrap();
        let err = open_err(&img.dir);
        assert!(
            matches!(err, ImageError::Truncated { .. }),
            "prefix of {len} bytes: {err}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }
    fs::write(&path, &bytes).unwrap();
    ImageReader::open(&img.dir).unwrap();
}

#[test]
fn refuses_flipped_payload_byte() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    let bytes = fs::read(&path).unwrap();
    for at in 32..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let err = open_err(&img.dir);
        assert!(
            matches!(err, ImageError::ChecksumMismatch { .. }),
            "byte {at}: {err}"
        );
    }
    let err = open_err(&img.dir);
    assert!(
        err.to_string().starts_with(&format!(
            "checksum mismatch in {} (expected xxh3 0x",
            path.display()
        )),
        "{err}"
    );
    assert!(err
        .to_string()
        .ends_with("the image is corrupt; take a new dump"));
}

#[test]
fn refuses_flipped_checksum_byte() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    let mut bytes = fs::read(&path).unwrap();
    bytes[24] ^= 0x80;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        open_err(&img.dir),
        ImageError::ChecksumMismatch { .. }
    ));
}

#[test]
fn refuses_bad_magic() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    for at in 0..8 {
        let mut bytes = fs::read(&path).unwrap();
        bytes[at] ^= 0x20;
        fs::write(&path, &bytes).unwrap();
        let err = open_err(&img.dir);
        assert!(
            matches!(err, ImageError::BadMagic { .. }),
            "byte {at}: {err}"
        );
        fs::write(&path, {
            bytes[at] ^= 0x20;
            &bytes
        })
        .unwrap();
    }
    fs::write(&path, b"GODWIT\0X").unwrap();
    assert!(matches!(open_err(&img.dir), ImageError::BadMagic { .. }));
    fs::write(&path, b"\x7fELF").unwrap();
    assert!(matches!(open_err(&img.dir), ImageError::BadMagic { .. }));
}

#[test]
fn refuses_other_major_version() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    let mut manifest = ImageReader::open(&img.dir).unwrap().manifest().clone();
    manifest.format_major = 2;
    fs::write(&path, encode_manifest_bytes(&manifest)).unwrap();
    let err = open_err(&img.dir);
    assert!(
        matches!(
            err,
            ImageError::UnsupportedVersion {
                major: 2,
                minor: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{} was written by image format 2.0; this godwit reads 1.x: upgrade godwit",
            path.display()
        )
    );

    // The major version alone decides, even when the rest of the header is missing.
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(12);
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        open_err(&img.dir),
        ImageError::UnsupportedVersion { major: 2, .. }
    ));
}

#[test]
fn accepts_newer_minor_with_unknown_fields() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    let mut manifest = ImageReader::open(&img.dir).unwrap().manifest().clone();
    manifest.format_minor = 9;
    let mut payload = manifest.encode_to_vec();
    // Field 99 (varint 1) and field 100 (length-delimited "new"), unknown to this reader.
    payload.extend([0x98, 0x06, 0x01, 0xa2, 0x06, 0x03, b'n', b'e', b'w']);
    fs::write(&path, frame(FORMAT_MAJOR, 9, 0, &payload)).unwrap();
    let reader = ImageReader::open(&img.dir).unwrap();
    assert_eq!(reader.manifest().format_minor, 9);
    assert_eq!(reader.metadata::<TestMeta>().unwrap(), meta());
    reader.verify_pages().unwrap();
}

#[test]
fn refuses_unknown_flags_and_oversized_payload() {
    let img = write_image();
    let path = manifest_path(&img.dir);
    let manifest = ImageReader::open(&img.dir).unwrap().manifest().clone();
    let payload = manifest.encode_to_vec();

    fs::write(&path, frame(FORMAT_MAJOR, 0, 1 << 31, &payload)).unwrap();
    assert!(matches!(
        open_err(&img.dir),
        ImageError::UnsupportedFlags { .. }
    ));

    let mut bytes = frame(FORMAT_MAJOR, 0, 0, &payload);
    bytes[16..24].copy_from_slice(&(MAX_METADATA_BYTES + 1).to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(open_err(&img.dir), ImageError::TooLarge { .. }));
}

#[test]
fn refuses_missing_page_file() {
    let img = write_image();
    let page = img.dir.join("pages-1.img");
    fs::remove_file(&page).unwrap();
    let err = open_err(&img.dir);
    assert!(matches!(err, ImageError::PageFileMissing { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "page file {} listed in the manifest is missing: \
             the image is incomplete; take a new dump",
            page.display()
        )
    );
}

#[test]
fn refuses_page_file_of_wrong_size() {
    let img = write_image();
    let page = img.dir.join("pages-0.img");
    let full = img.pages[0].len() as u64;
    for size in [full - 1, full + 1, 0] {
        fs::File::options()
            .write(true)
            .open(&page)
            .unwrap()
            .set_len(size)
            .unwrap();
        let err = open_err(&img.dir);
        assert!(
            matches!(err, ImageError::PageFileSize { expected, actual, .. }
                if expected == full && actual == size),
            "{err}"
        );
    }
}

#[test]
fn refuses_page_file_that_is_a_directory() {
    let img = write_image();
    let page = img.dir.join("pages-1.img");
    fs::remove_file(&page).unwrap();
    fs::create_dir(&page).unwrap();
    assert!(matches!(
        open_err(&img.dir),
        ImageError::PageFileNotRegular { .. }
    ));
}

#[test]
fn verify_pages_detects_corruption() {
    let img = write_image();
    let page = img.dir.join("pages-0.img");
    let mut bytes = img.pages[0].clone();
    // Deep inside the file, past the first read chunk.
    bytes[(2 << 20) + 5] ^= 0x04;
    fs::write(&page, &bytes).unwrap();

    // Same size: open does not hash, so it accepts the image.
    let reader = ImageReader::open(&img.dir).unwrap();
    let err = reader.verify_pages().unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("checksum mismatch in {}", page.display())),
        "{err}"
    );
    assert!(err
        .to_string()
        .ends_with(": the image is corrupt; take a new dump"));

    // A page file that changed size after open is caught too.
    fs::write(&page, &bytes[..100]).unwrap();
    assert!(matches!(
        reader.verify_pages().unwrap_err(),
        ImageError::PageFileSize { actual: 100, .. }
    ));
    assert!(matches!(
        reader.map_page_file("pages-0.img").unwrap_err(),
        ImageError::PageFileSize { actual: 100, .. }
    ));
}

#[test]
fn map_refuses_unknown_names() {
    let img = write_image();
    let reader = ImageReader::open(&img.dir).unwrap();
    for name in ["pages-2.img", "manifest.img", "../pages-0.img", ""] {
        assert!(matches!(
            reader.map_page_file(name).unwrap_err(),
            ImageError::UnknownPageFile { .. }
        ));
    }
}

#[test]
fn metadata_of_another_type_is_a_decode_error() {
    let img = write_image();
    let reader = ImageReader::open(&img.dir).unwrap();
    // Field 2 of TestMeta is a string; as a uint64 it has the wrong wire type.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Other {
        #[prost(uint64, tag = "2")]
        n: u64,
    }
    let err = reader.metadata::<Other>().unwrap_err();
    assert!(matches!(err, ImageError::MetadataDecode { .. }), "{err}");
}

#[test]
fn refuses_to_overwrite_an_image() {
    let img = write_image();
    let before = fs::read(manifest_path(&img.dir)).unwrap();
    let err = ImageWriter::create(&img.dir).unwrap_err();
    assert!(matches!(err, ImageError::AlreadyExists { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "image directory {} already holds an image (manifest.img exists): \
             choose another directory or remove the old image first",
            img.dir.display()
        )
    );
    // The old image is untouched.
    assert_eq!(fs::read(manifest_path(&img.dir)).unwrap(), before);
    ImageReader::open(&img.dir).unwrap().verify_pages().unwrap();
}

#[test]
fn permissions_are_private() {
    let img = write_image();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&img.dir), 0o700);
    assert_eq!(mode(&manifest_path(&img.dir)), 0o600);
    assert_eq!(mode(&img.dir.join("pages-0.img")), 0o600);
    assert_eq!(mode(&img.dir.join("pages-1.img")), 0o600);

    // An existing directory is made private too.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("open");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let _writer = ImageWriter::create(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn dropped_writer_leaves_no_image_and_no_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let writer = ImageWriter::create(&dir).unwrap();
    let mut page = writer.page_file().unwrap();
    page.write_all(&[7; 8192]).unwrap();
    let _info = page.finish().unwrap();
    drop(writer);

    let err = open_err(&dir);
    assert!(matches!(err, ImageError::NoCommittedImage { .. }), "{err}");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn crash_before_commit_leaves_no_image_and_next_writer_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let writer = ImageWriter::create(&dir).unwrap();
    let mut page = writer.page_file().unwrap();
    page.write_all(&[7; 8192]).unwrap();
    let _info = page.finish().unwrap();
    // A crash: no destructor runs.
    std::mem::forget(writer);
    fs::write(dir.join(".tmp-manifest.img"), b"half a manifest").unwrap();
    fs::write(dir.join("notes.txt"), b"the user's").unwrap();

    let err = open_err(&dir);
    assert!(matches!(err, ImageError::NoCommittedImage { .. }), "{err}");

    // The next dump into the directory removes the leftovers, not other files.
    let writer = ImageWriter::create(&dir).unwrap();
    assert!(!dir.join("pages-0.img").exists());
    assert!(!dir.join(".tmp-manifest.img").exists());
    assert!(dir.join("notes.txt").exists());
    let mut page = writer.page_file().unwrap();
    assert_eq!(page.name(), "pages-0.img");
    page.write_all(b"fresh").unwrap();
    let info = page.finish().unwrap();
    writer.commit(&meta(), vec![info]).unwrap();
    let reader = ImageReader::open(&dir).unwrap();
    reader.verify_pages().unwrap();
    assert_eq!(&reader.map_page_file("pages-0.img").unwrap()[..], b"fresh");
}

/// Writes two page files and returns the writer and their infos.
fn writer_with_two_pages(dir: &Path) -> (ImageWriter, Vec<PageFileInfo>) {
    let writer = ImageWriter::create(dir).unwrap().sync(false);
    let mut infos = Vec::new();
    for i in 0..2u8 {
        let mut page = writer.page_file().unwrap();
        page.write_all(&[i; 100]).unwrap();
        infos.push(page.finish().unwrap());
    }
    (writer, infos)
}

/// A failed commit leaves no manifest and removes the writer's files.
fn assert_failed_commit_left_nothing(dir: &Path) {
    assert!(matches!(open_err(dir), ImageError::NoCommittedImage { .. }));
    assert_eq!(fs::read_dir(dir).unwrap().count(), 0);
}

#[test]
fn commit_refuses_an_incomplete_or_foreign_page_list() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");

    let (writer, mut infos) = writer_with_two_pages(&dir);
    infos.pop();
    let err = writer.commit(&meta(), infos).unwrap_err();
    assert!(
        matches!(&err, ImageError::PageFileNotCommitted { name, .. } if name == "pages-1.img"),
        "{err}"
    );
    assert_failed_commit_left_nothing(&dir);

    let (writer, mut infos) = writer_with_two_pages(&dir);
    infos.push(PageFileInfo {
        name: "pages-9.img".into(),
        size: 0,
        xxh3: 0,
    });
    let err = writer.commit(&meta(), infos).unwrap_err();
    assert!(matches!(err, ImageError::ForeignPageFile { .. }), "{err}");
    assert_failed_commit_left_nothing(&dir);

    let (writer, mut infos) = writer_with_two_pages(&dir);
    infos.push(infos[0].clone());
    let err = writer.commit(&meta(), infos).unwrap_err();
    assert!(matches!(err, ImageError::DuplicatePageFile { .. }), "{err}");
    assert_failed_commit_left_nothing(&dir);

    let (writer, mut infos) = writer_with_two_pages(&dir);
    infos[1].size += 1;
    let err = writer.commit(&meta(), infos).unwrap_err();
    assert!(matches!(err, ImageError::PageFileSize { .. }), "{err}");
    assert_failed_commit_left_nothing(&dir);

    let (writer, mut infos) = writer_with_two_pages(&dir);
    infos[0].name = "../escape".into();
    let err = writer.commit(&meta(), infos).unwrap_err();
    assert!(matches!(err, ImageError::BadPageFileName { .. }), "{err}");
    assert_failed_commit_left_nothing(&dir);
}

#[test]
fn commit_refuses_metadata_over_the_cap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let writer = ImageWriter::create(&dir).unwrap().sync(false);
    let huge = vec![0u8; MAX_METADATA_BYTES as usize];
    let err = writer.commit(&huge, Vec::new()).unwrap_err();
    assert!(matches!(err, ImageError::MetadataTooLarge { .. }), "{err}");
    assert_failed_commit_left_nothing(&dir);
}

#[test]
fn manifest_file_is_framed_as_documented() {
    let img = write_image();
    let bytes = fs::read(manifest_path(&img.dir)).unwrap();
    let payload = &bytes[32..];
    assert_eq!(frame(1, 0, 0, payload), bytes);
    let manifest = Manifest::decode(payload).unwrap();
    assert_eq!(
        TestMeta::decode(manifest.metadata.as_slice()).unwrap(),
        meta()
    );
    assert_eq!(manifest.page_files.len(), 2);
}

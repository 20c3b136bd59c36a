//! An image written to a stream and received into memory: the same image as
//! on disk, and a broken stream is an error naming what broke.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use godwit_image::{
    receive_image, ImageError, ImageReader, ImageWriter, StreamMedium, FLAG_SCATTERED_PAGES,
};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes a two-page-file image (and one discarded file) to a buffer.
fn stream_image() -> Vec<u8> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut w = ImageWriter::to_medium(Box::new(StreamMedium::new(out.clone(), "test")));
    let mut a = w.page_file().unwrap();
    a.write_all(&pattern(3 << 20, 1)).unwrap();
    a.write_all(&pattern(4096, 2)).unwrap();
    let a = a.finish().unwrap();
    let mark = w.mark();
    let mut gone = w.page_file().unwrap();
    gone.write_all(&pattern(8192, 9)).unwrap();
    gone.finish().unwrap();
    w.discard_since(mark).unwrap();
    let mut b = w.page_file().unwrap();
    b.write_all(&pattern(12288, 3)).unwrap();
    let b = b.finish().unwrap();
    w.add_flags(FLAG_SCATTERED_PAGES);
    w.commit(&"metadata".to_string(), vec![a, b]).unwrap();
    let bytes = out.lock().unwrap().clone();
    bytes
}

#[test]
fn received_image_reads_like_the_one_sent() {
    let bytes = stream_image();
    let img = receive_image(&mut Cursor::new(&bytes), "test", 1 << 30).unwrap();
    let reader = ImageReader::from_source(Box::new(img)).unwrap();
    assert_eq!(reader.metadata::<String>().unwrap(), "metadata");
    let names: Vec<_> = reader.page_files().iter().map(|p| p.name.clone()).collect();
    assert_eq!(names, ["pages-0.img", "pages-2.img"]);
    reader.verify_pages().unwrap();
    let m = reader.map_page_file("pages-0.img").unwrap();
    let mut want = pattern(3 << 20, 1);
    want.extend(pattern(4096, 2));
    assert!(m[..] == want[..]);
    let m = reader.map_page_file("pages-2.img").unwrap();
    assert!(m[..] == pattern(12288, 3)[..]);
    // Verified twice: reading does not move anything.
    reader.verify_pages().unwrap();
}

#[test]
fn received_image_saved_to_a_directory_opens_as_a_dump() {
    let bytes = stream_image();
    let img = receive_image(&mut Cursor::new(&bytes), "test", 1 << 30).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kept");
    img.save(&dir, false).unwrap();
    let reader = ImageReader::open(&dir).unwrap();
    reader.verify_pages().unwrap();
    assert_eq!(reader.metadata::<String>().unwrap(), "metadata");
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(&dir).unwrap() {
        let mode = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn a_cut_stream_is_an_error_at_every_point() {
    let bytes = stream_image();
    // Every prefix short of the whole stream: never an image, never a panic.
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(4093).collect();
    cuts.extend([bytes.len() - 1, 15, 16, 17]);
    for cut in cuts {
        let r = receive_image(&mut Cursor::new(&bytes[..cut]), "test", 1 << 30);
        assert!(
            matches!(r, Err(ImageError::Stream { .. })),
            "cut at {cut}: {r:?}"
        );
    }
}

#[test]
fn corrupt_page_data_is_refused_as_it_arrives() {
    let mut bytes = stream_image();
    // Somewhere inside the first DATA payload.
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    let e = receive_image(&mut Cursor::new(&bytes), "test", 1 << 30).unwrap_err();
    assert!(matches!(e, ImageError::ChecksumMismatch { .. }), "{e}");
    assert!(e.to_string().contains("stream from test"), "{e}");
}

#[test]
fn a_received_image_is_not_read_again_to_verify_it() {
    let img = receive_image(&mut Cursor::new(&stream_image()), "test", 1 << 30).unwrap();
    let reader = ImageReader::from_source(Box::new(img)).unwrap();
    // Checked as it arrived: nothing to do (and nothing that could fail).
    reader.verify_pages().unwrap();
}

#[test]
fn a_writer_dropped_before_its_commit_tells_the_receiver() {
    let out = Arc::new(Mutex::new(Vec::new()));
    {
        let w = ImageWriter::to_medium(Box::new(StreamMedium::new(out.clone(), "test")));
        let mut a = w.page_file().unwrap();
        a.write_all(&pattern(4096, 1)).unwrap();
    }
    let bytes = out.lock().unwrap().clone();
    let e = receive_image(&mut Cursor::new(&bytes), "test", 1 << 30).unwrap_err();
    assert!(
        matches!(&e, ImageError::SenderAborted { reason, .. } if reason.contains("did not complete")),
        "{e}"
    );
}

#[test]
fn more_than_the_receiver_accepts_is_refused() {
    let bytes = stream_image();
    let e = receive_image(&mut Cursor::new(&bytes), "test", 1 << 20).unwrap_err();
    assert!(matches!(e, ImageError::StreamTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[test]
fn frames_that_make_no_sense_are_refused() {
    use godwit_image::stream::{kind, write_frame};
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown kind", {
            let mut v = Vec::new();
            write_frame(&mut v, 99, 0, b"x").unwrap();
            v
        }),
        ("data for unopened file", {
            let mut v = Vec::new();
            write_frame(&mut v, kind::DATA, 7, b"abc").unwrap();
            v
        }),
        ("bad name", {
            let mut v = Vec::new();
            write_frame(&mut v, kind::OPEN, 1, b"../etc/passwd").unwrap();
            v
        }),
        ("garbage manifest", {
            let mut v = Vec::new();
            write_frame(&mut v, kind::COMMIT, 0, b"not a manifest").unwrap();
            v
        }),
    ];
    for (what, bytes) in cases {
        let r = receive_image(&mut Cursor::new(&bytes), "test", 1 << 30);
        assert!(r.is_err(), "{what}: accepted");
    }
}

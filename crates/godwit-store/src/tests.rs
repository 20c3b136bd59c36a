use super::*;
use godwit_image::{ImageReader, ImageWriter};

/// Pseudo-random bytes (incompressible enough), `n` long, from `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(store: &Store, id: &str, pid: i32, pages: &[u8]) {
    let medium = StoreMedium::new(store, id, Some(pid)).unwrap();
    let writer = ImageWriter::to_medium(Box::new(medium));
    let mut f = writer.page_file().unwrap();
    for part in pages.chunks(100_000) {
        f.write_all(part).unwrap();
    }
    let info = f.finish().unwrap();
    writer.commit(&format!("meta of {id}"), vec![info]).unwrap();
}

fn read(store: &Store, id: &str) -> Vec<u8> {
    let src = StoreSource::open(store, id).unwrap();
    let reader = ImageReader::from_source(Box::new(src)).unwrap();
    assert_eq!(
        reader.metadata::<String>().unwrap(),
        format!("meta of {id}")
    );
    reader.verify_pages().unwrap();
    reader.map_page_file("pages-0.img").unwrap().to_vec()
}

#[test]
fn round_trip_and_dedup() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("s")).unwrap().sync(false);
    let mut mem = noise(1, 8 << 20);
    write(&store, "a", 7, &mem);
    let original = mem.clone();
    let first = store.usage().unwrap();
    // A few pages change; a page is inserted near the start (all after it
    // shifts by one page).
    mem[5 << 20..(5 << 20) + 4096].fill(3);
    let mut shifted = mem[..4096 * 3].to_vec();
    shifted.extend_from_slice(&noise(9, 4096));
    shifted.extend_from_slice(&mem[4096 * 3..]);
    write(&store, "b", 7, &shifted);
    let second = store.usage().unwrap();
    assert!(read(&store, "a") == original);
    assert!(read(&store, "b") == shifted);
    let added = second.bytes - first.bytes;
    assert!(
        added < first.bytes / 4,
        "second checkpoint added {added} of {} bytes",
        first.bytes
    );
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].parent.as_deref(), Some("a"));
    assert!(list[1].parent_present);
    assert_eq!(list[0].parent, None);
    // A second process with the same memory adds nothing.
    write(&store, "c", 8, &shifted);
    assert_eq!(store.usage().unwrap().bytes, second.bytes);
    assert_eq!(store.list().unwrap()[2].parent, None);
}

#[test]
fn zeros_compress_and_names_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap().sync(false);
    write(&store, "z", 1, &vec![0u8; 4 << 20]);
    assert!(store.usage().unwrap().bytes < 64 << 10);
    assert!(read(&store, "z") == vec![0u8; 4 << 20]);
    assert!(matches!(
        StoreMedium::new(&store, "../x", None),
        Err(StoreError::BadName { .. })
    ));
    assert!(matches!(
        StoreMedium::new(&store, "z", None),
        Err(StoreError::Exists { .. })
    ));
}

#[test]
fn corrupt_chunk_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path())
        .unwrap()
        .sync(false)
        .compression(Compression::None);
    write(&store, "a", 1, &noise(2, 1 << 20));
    let (meta, _) = store.read_checkpoint("a").unwrap();
    let h = meta.files[0].chunks[1].hash;
    let path = store.chunk_path(&h);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let src = StoreSource::open(&store, "a").unwrap();
    let err = ImageReader::from_source(Box::new(src))
        .unwrap_err()
        .to_string();
    assert!(err.contains("checkpoint a: chunk"), "{err}");
    assert!(err.contains(&hex(&h)), "{err}");
    assert!(err.contains("corrupt"), "{err}");
    fs::remove_file(&path).unwrap();
    let src = StoreSource::open(&store, "a").unwrap();
    let err = ImageReader::from_source(Box::new(src))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
    // A damaged checkpoint file.
    let ck = store.checkpoint_path("a");
    let mut bytes = fs::read(&ck).unwrap();
    bytes[20] ^= 1;
    fs::write(&ck, &bytes).unwrap();
    assert!(matches!(
        store.read_checkpoint("a"),
        Err(StoreError::BadCheckpoint { .. })
    ));
    // gc refuses to remove anything while a checkpoint file is damaged.
    assert!(store.gc().is_err());
    // New checkpoints of the same process are still taken (no parent).
    write(&store, "b", 1, &noise(2, 64 << 10));
    assert_eq!(store.read_checkpoint("b").unwrap().0.parent, None);
}

#[test]
fn gc_keeps_what_is_referenced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap().sync(false);
    let a = noise(3, 2 << 20);
    let mut b = a.clone();
    b.extend_from_slice(&noise(4, 2 << 20));
    write(&store, "a", 1, &a);
    write(&store, "b", 1, &b);
    let r = store.gc().unwrap();
    assert_eq!(r.chunks_removed, 0);
    store.remove("b").unwrap();
    assert!(matches!(
        store.remove("b"),
        Err(StoreError::NoCheckpoint { .. })
    ));
    // A writer's leftover.
    fs::write(
        store.dir().join("chunks").join(format!("{TEMP_PREFIX}x")),
        b"x",
    )
    .ok();
    let r = store.gc().unwrap();
    assert!(r.chunks_removed > 0);
    assert!(read(&store, "a") == a);
    let (meta, _) = store.read_checkpoint("a").unwrap();
    let live: HashSet<_> = meta.files[0].chunks.iter().map(|c| c.hash).collect();
    assert_eq!(store.usage().unwrap().chunks, live.len() as u64);
    store.remove("a").unwrap();
    store.gc().unwrap();
    assert_eq!(store.usage().unwrap().chunks, 0);
}

#[test]
fn gc_waits_for_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap().sync(false);
    let medium = StoreMedium::new(&store, "w", Some(1)).unwrap();
    let writer = ImageWriter::to_medium(Box::new(medium));
    let mut f = writer.page_file().unwrap();
    f.write_all(&noise(5, 1 << 20)).unwrap();
    let info = f.finish().unwrap();
    let s2 = store.clone();
    let gc = std::thread::spawn(move || s2.gc().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!gc.is_finished(), "gc ran while a writer held the store");
    writer.commit(&"meta of w".to_string(), vec![info]).unwrap();
    let r = gc.join().unwrap();
    assert_eq!(r.chunks_removed, 0);
    read(&store, "w");
}

#[test]
fn export_import_round_trip_and_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let one = Store::open(&tmp.path().join("one")).unwrap().sync(false);
    let two = Store::open(&tmp.path().join("two")).unwrap().sync(false);
    let mem = noise(6, 3 << 20);
    write(&one, "x", 5, &mem);
    let file = tmp.path().join("x.gwx");
    let t = export::export(&one, "x", &file).unwrap();
    assert_eq!(t.bytes, fs::metadata(&file).unwrap().len());
    let got = export::import(&two, &file).unwrap();
    assert_eq!(got.id, "x");
    assert!(read(&two, "x") == mem);
    assert!(matches!(
        export::import(&two, &file),
        Err(StoreError::Exists { .. })
    ));
    let bytes = fs::read(&file).unwrap();
    let three = Store::open(&tmp.path().join("three")).unwrap().sync(false);
    let damaged = tmp.path().join("d.gwx");
    // A flipped byte in a chunk, in the trailer, a truncation, garbage.
    for (what, b) in [
        ("chunk", {
            let mut b = bytes.clone();
            let at = b.len() / 2;
            b[at] ^= 0x40;
            b
        }),
        ("trailer", {
            let mut b = bytes.clone();
            let at = b.len() - 3;
            b[at] ^= 1;
            b
        }),
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("garbage", b"not an export at all, sorry".to_vec()),
    ] {
        fs::write(&damaged, &b).unwrap();
        let err = export::import(&three, &damaged).unwrap_err();
        assert!(matches!(err, StoreError::BadExport { .. }), "{what}: {err}");
        assert!(!three.contains("x"), "{what}");
    }
}

#[test]
fn an_abandoned_writer_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap().sync(false);
    {
        let medium = StoreMedium::new(&store, "gone", Some(1)).unwrap();
        let writer = ImageWriter::to_medium(Box::new(medium));
        let mut f = writer.page_file().unwrap();
        f.write_all(&noise(7, 2 << 20)).unwrap();
        f.finish().unwrap();
        // Dropped without a commit.
    }
    assert_eq!(store.usage().unwrap().chunks, 0);
    assert!(!store.contains("gone"));
    let mut files = 0;
    for sub in fs::read_dir(store.dir().join("chunks")).unwrap() {
        files += fs::read_dir(sub.unwrap().path()).unwrap().count();
    }
    assert_eq!(files, 0, "temporary chunk files left behind");
}

/// A second checkpoint sent to a store that holds the first: only the
/// chunks it lacks travel, and the import commits it whole; a partial
/// export to a store that lacks more is refused, naming a chunk.
#[test]
fn only_the_missing_chunks_are_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let one = Store::open(&tmp.path().join("one")).unwrap().sync(false);
    let two = Store::open(&tmp.path().join("two")).unwrap().sync(false);
    let mut mem = noise(11, 8 << 20);
    write(&one, "a", 5, &mem);
    let full = tmp.path().join("a.gwx");
    let first = export::export(&one, "a", &full).unwrap();
    export::import(&two, &full).unwrap();
    mem[3 << 20..(3 << 20) + 4096].fill(7);
    write(&one, "b", 5, &mem);
    let ck = export::checkpoint_file(&one, "b").unwrap();
    let lack: std::collections::HashSet<Hash> =
        export::missing(&two, &ck).unwrap().into_iter().collect();
    assert!(!lack.is_empty() && lack.len() <= 2, "{} chunks", lack.len());
    let part = tmp.path().join("b.gwx");
    let t = export::export_only(&one, "b", &part, Some(&lack)).unwrap();
    assert!(
        t.bytes * 4 < first.bytes,
        "{} bytes sent for a one-page change of a {}-byte checkpoint",
        t.bytes,
        first.bytes
    );
    let got = export::import(&two, &part).unwrap();
    assert_eq!(got.new_chunks, lack.len() as u64);
    assert!(read(&two, "b") == mem);
    assert!(export::missing(&two, &ck).unwrap().is_empty());
    // A store holding nothing refuses the partial export.
    let three = Store::open(&tmp.path().join("three")).unwrap().sync(false);
    let err = export::import(&three, &part).unwrap_err();
    assert!(
        err.to_string().contains("neither in it nor in the store"),
        "{err}"
    );
    assert!(!three.contains("b"));
}

/// An incremental checkpoint takes its parent's page file by reference (no
/// byte stored again, numbered after it), adds one of its own, and stays
/// whole once the parent is removed and collected. A file that is not the
/// parent's as described is refused; a directory refuses to link at all.
#[test]
fn linked_page_files_are_shared_and_outlive_the_parent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("s")).unwrap().sync(false);
    let base = noise(3, 4 << 20);
    let medium = StoreMedium::new(&store, "a", Some(7)).unwrap();
    let writer = ImageWriter::to_medium(Box::new(medium));
    let mut f = writer.page_file().unwrap();
    f.write_all(&base).unwrap();
    let parent_file = f.finish().unwrap();
    writer
        .commit(&"meta of a".to_string(), vec![parent_file.clone()])
        .unwrap();
    let before = store.usage().unwrap().bytes;

    let medium = StoreMedium::linking_from(&store, "b", Some(7), "a").unwrap();
    assert_eq!(medium.parent(), Some("a"));
    let writer = ImageWriter::to_medium(Box::new(medium));
    let mut wrong = parent_file.clone();
    wrong.xxh3 ^= 1;
    assert!(matches!(
        writer.link_page_file(&wrong),
        Err(godwit_image::ImageError::LinkRefused { .. })
    ));
    writer.link_page_file(&parent_file).unwrap();
    let mut f = writer.page_file().unwrap();
    assert_eq!(f.name(), "pages-1.img", "numbered after the linked file");
    let fresh = noise(4, 64 << 10);
    f.write_all(&fresh).unwrap();
    let new_file = f.finish().unwrap();
    writer
        .commit(
            &"meta of b".to_string(),
            vec![parent_file.clone(), new_file],
        )
        .unwrap();
    let added = store.usage().unwrap().bytes - before;
    assert!(added < 1 << 20, "the child stored {added} bytes");

    store.remove("a").unwrap();
    store.gc().unwrap();
    let src = StoreSource::open(&store, "b").unwrap();
    let reader = ImageReader::from_source(Box::new(src)).unwrap();
    reader.verify_pages().unwrap();
    assert!(reader.map_page_file("pages-0.img").unwrap()[..] == base[..]);
    assert!(reader.map_page_file("pages-1.img").unwrap()[..] == fresh[..]);

    let dir = tmp.path().join("img");
    let writer = ImageWriter::create(&dir).unwrap();
    assert!(matches!(
        writer.link_page_file(&parent_file),
        Err(godwit_image::ImageError::LinkRefused { .. })
    ));
}

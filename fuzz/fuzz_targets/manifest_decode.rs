//! Feeds arbitrary bytes to the manifest decoder: as a whole `manifest.img`
//! file, and as a payload behind a correct header so that the protobuf
//! decoder and the checks after it are reached despite the checksum.
//!
//! Run with `cargo +nightly fuzz run manifest_decode` from this directory.

#![no_main]

use godwit_image::{decode_manifest_bytes, encode_manifest_bytes};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    if let Ok(manifest) = decode_manifest_bytes(bytes) {
        // Whatever decodes must re-encode to an equal, valid manifest.
        let again = decode_manifest_bytes(&encode_manifest_bytes(&manifest))
            .expect("a decoded manifest must re-encode to a valid one");
        assert_eq!(manifest, again);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);

    let mut framed = Vec::with_capacity(32 + data.len());
    framed.extend_from_slice(b"GODWIT\0I");
    framed.extend_from_slice(&godwit_image::FORMAT_MAJOR.to_le_bytes());
    framed.extend_from_slice(&godwit_image::FORMAT_MINOR.to_le_bytes());
    framed.extend_from_slice(&0u32.to_le_bytes());
    framed.extend_from_slice(&(data.len() as u64).to_le_bytes());
    framed.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(data).to_le_bytes());
    framed.extend_from_slice(data);
    check(&framed);
});

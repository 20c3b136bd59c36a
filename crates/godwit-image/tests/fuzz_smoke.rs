//! A short, deterministic fuzz run of the manifest decoder that works on stable Rust.
//!
//! The libFuzzer target in `fuzz/` explores further; this one runs with every
//! `cargo test` and must never panic.

use godwit_image::{
    decode_manifest_bytes, encode_manifest_bytes, ImageError, Manifest, PageFile,
    MAX_METADATA_BYTES,
};
use prost::Message;

const ITERATIONS: usize = 200_000;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn seeds() -> Vec<Manifest> {
    let base = Manifest {
        format_major: 1,
        format_minor: 0,
        writer: "godwit 0.1.0".into(),
        created_unix_ms: 1_700_000_000_123,
        page_files: (0..3)
            .map(|i| PageFile {
                name: format!("pages-{i}.img"),
                size: 4096 << i,
                xxh3: 0x0123_4567_89ab_cdef ^ i,
            })
            .collect(),
        metadata: (0..64).collect(),
    };
    vec![
        Manifest {
            format_major: 1,
            ..Manifest::default()
        },
        base.clone(),
        Manifest {
            format_minor: 3,
            page_files: Vec::new(),
            ..base
        },
    ]
}

/// Frames a payload with a correct header, so mutations reach the protobuf decoder.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = b"GODWIT\0I".to_vec();
    out.extend(1u16.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend((payload.len() as u64).to_le_bytes());
    out.extend(xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    out.extend(payload);
    out
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] = rng.byte();
            }
            2 => {
                let at = rng.below(data.len() + 1);
                data.insert(at, rng.byte());
            }
            3 if !data.is_empty() => {
                let at = rng.below(data.len());
                data.remove(at);
            }
            4 => {
                let len = rng.below(data.len() + 1);
                data.truncate(len);
            }
            5 if data.len() >= 8 => {
                // An interesting 64-bit value somewhere (lengths, sizes, varints).
                let values = [0, 1, u64::MAX, MAX_METADATA_BYTES, MAX_METADATA_BYTES + 1];
                let v = values[rng.below(values.len())].to_le_bytes();
                let at = rng.below(data.len() - 7);
                data[at..at + 8].copy_from_slice(&v);
            }
            _ => {
                // Splice in a varint-looking run of continuation bytes.
                let at = rng.below(data.len() + 1);
                for _ in 0..rng.below(12) {
                    data.insert(at, 0x80 | rng.byte());
                }
            }
        }
    }
}

/// Decodes `data`; a success must survive re-encoding unchanged.
fn check(data: &[u8]) -> Result<(), ImageError> {
    let manifest = decode_manifest_bytes(data)?;
    let again = decode_manifest_bytes(&encode_manifest_bytes(&manifest))
        .expect("a decoded manifest must re-encode to a valid one");
    assert_eq!(manifest, again);
    Ok(())
}

#[test]
fn fuzz_smoke() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    let files: Vec<Vec<u8>> = seeds.iter().map(encode_manifest_bytes).collect();
    let payloads: Vec<Vec<u8>> = seeds.iter().map(Message::encode_to_vec).collect();
    for file in &files {
        check(file).expect("seeds are valid");
    }

    let (mut ok, mut proto_errors) = (0usize, 0usize);
    for i in 0..ITERATIONS {
        let input = match i % 4 {
            // Random bytes, half of them behind a valid magic and version.
            0 => {
                let mut data = Vec::new();
                if rng.below(2) == 0 {
                    data.extend_from_slice(&files[0][..12]);
                }
                for _ in 0..rng.below(96) {
                    data.push(rng.byte());
                }
                data
            }
            // A whole valid file, mutated anywhere: mostly stopped by the header or checksum.
            1 => {
                let mut data = files[rng.below(files.len())].clone();
                mutate(&mut rng, &mut data);
                data
            }
            // A mutated payload behind a correct header: reaches protobuf decoding.
            _ => {
                let mut data = payloads[rng.below(payloads.len())].clone();
                mutate(&mut rng, &mut data);
                frame(&data)
            }
        };
        match check(&input) {
            Ok(()) => ok += 1,
            Err(ImageError::ManifestDecode { .. }) => proto_errors += 1,
            Err(_) => {}
        }
    }
    // The run reached both the decoder's failures and its successes.
    assert!(ok > 1000, "only {ok} inputs decoded");
    assert!(proto_errors > 1000, "only {proto_errors} protobuf errors");
}

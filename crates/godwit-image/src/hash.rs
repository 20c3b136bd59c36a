//! XXH3-64 (seed 0, the default secret): the checksum of manifests and page
//! files. Computed with a SIMD implementation chosen at run time (AVX2 where
//! the CPU has it, else SSE2), so that one portable binary hashes at the
//! speed of the CPU it runs on; the values are those of the reference
//! XXH3-64, which the tests check against a second implementation.

use std::hash::Hasher as _;

/// Hash of `bytes` in one go.
pub fn xxh3_64(bytes: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(bytes)
}

/// Hash of bytes given in pieces.
#[derive(Default)]
pub struct Xxh3(twox_hash::XxHash3_64);

impl Xxh3 {
    /// A hasher that has seen no bytes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes `bytes` after those given before.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The hash of all bytes given so far.
    pub fn digest(&self) -> u64 {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same values as the reference implementation, for every length
    /// class of XXH3 (0, 1–3, 4–8, 9–16, 17–128, 129–240, long) and for
    /// pieces that split its stripes and blocks anywhere.
    #[test]
    fn same_as_the_reference() {
        let data: Vec<u8> = (0..3_000_017u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1023, 1024, 1025, 65_536, 1_048_577,
            3_000_017,
        ] {
            let s = &data[..len];
            let want = xxhash_rust::xxh3::xxh3_64(s);
            assert_eq!(xxh3_64(s), want, "one go, {len} bytes");
            for piece in [1, 7, 64, 777, 1 << 20] {
                let mut h = Xxh3::new();
                for c in s.chunks(piece) {
                    h.update(c);
                }
                assert_eq!(h.digest(), want, "{len} bytes in pieces of {piece}");
            }
        }
    }
}

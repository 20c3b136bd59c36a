//! Where page files are cut into chunks.
//!
//! Content-defined, at page granularity: a chunk ends after a 4 KiB page
//! whose xxh3-64 has its low 5 bits zero, once the chunk holds at least
//! [`MIN_PAGES`] pages; it ends anyway at [`MAX_PAGES`]. Chunks average
//! 256 KiB (128 KiB minimum plus 32 pages on average), 1 MiB at most.
//! Cutting at offsets fixed in the page file would lose every chunk after
//! a mapping that grew or appeared before others (the rest shifts by whole
//! pages); cutting by content finds the same chunks again a few pages
//! after the change. xxh3 of a page costs far less than the BLAKE3 and
//! zstd that follow.

/// Bytes a boundary test looks at.
pub const PAGE: usize = 4096;
/// Fewest pages in a chunk (but the last of a file).
pub const MIN_PAGES: usize = 32;
/// Most pages in a chunk.
pub const MAX_PAGES: usize = 256;
const MASK: u64 = 31;

/// Splits a stream into chunks: feed it bytes, take the chunks it cuts.
#[derive(Debug, Default)]
pub struct Chunker {
    buf: Vec<u8>,
    /// Bytes of `buf` already tested (whole pages).
    scanned: usize,
}

impl Chunker {
    /// Appends `data`; calls `emit` with each chunk completed.
    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        emit: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            let room = MAX_PAGES * PAGE - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            while self.scanned + PAGE <= self.buf.len() {
                let page = &self.buf[self.scanned..self.scanned + PAGE];
                self.scanned += PAGE;
                let pages = self.scanned / PAGE;
                let cut = pages >= MAX_PAGES
                    || (pages >= MIN_PAGES && twox_hash::XxHash3_64::oneshot(page) & MASK == 0);
                if cut {
                    emit(&self.buf[..self.scanned])?;
                    self.buf.drain(..self.scanned);
                    self.scanned = 0;
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: emits what is left.
    pub fn finish<E>(mut self, emit: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if !self.buf.is_empty() {
            emit(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

//! Anonymous memory the benchmark maps and unmaps itself, so that "fresh" and
//! "pre-faulted" mean exactly that (no allocator reusing freed pages).

use anyhow::{bail, Result};

/// A private anonymous mapping of `len` bytes, unmapped on drop.
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    /// Maps `len` bytes; no page is touched yet.
    pub fn fresh(len: usize) -> Result<Region> {
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
        }
        Ok(Region { ptr: p.cast(), len })
    }

    /// Maps `len` bytes and writes `byte` to all of them, so every page is
    /// present and private (not the shared zero page).
    pub fn prefaulted(len: usize, byte: u8) -> Result<Region> {
        let mut r = Region::fresh(len)?;
        r.as_mut_slice().fill(byte);
        Ok(r)
    }

    /// Asks for transparent huge pages (THP is `madvise`-only on our hosts).
    pub fn advise_huge(&self) -> Result<()> {
        // SAFETY: the range is exactly our own mapping.
        let r = unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_HUGEPAGE) };
        if r != 0 {
            bail!(
                "madvise(MADV_HUGEPAGE): {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` bytes while the mapping lives (as
        // long as `self`); anonymous memory reads as zeros, so it is initialised.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no slice of it
        // can outlive `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

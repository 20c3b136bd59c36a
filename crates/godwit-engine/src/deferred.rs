//! Deferred fill: a migration's destination lets the processes run before
//! their private anonymous memory is in place, and places it afterwards
//! from the image it already holds.
//!
//! In stop-copy and pre-copy the whole image is at the destination before
//! the switch-over; what remains is to copy its pages into the new
//! processes, about half a second per GiB here (the kernel allocating and
//! filling pages). Done before the processes run, that copy is downtime.
//! Instead, the restore leaves the large private anonymous areas missing,
//! registered on a userfaultfd of each process (as post-copy does, see
//! crate::postcopy), and once the processes run a [`Pager`] places the
//! pages: a page touched first is placed at once, the others in the
//! background. Unlike post-copy nothing is needed from the source any
//! more: every page is here, so the source may end its copy as soon as the
//! processes run, and a source that dies changes nothing.
//!
//! What could go wrong afterwards is local: placing a page failing (no
//! memory left: the receiving agent checks the image fits before it
//! accepts it). Then the processes cannot go on and are killed, as in
//! post-copy, and the error names them.
//!
//! Areas deferred: private anonymous memory without MADV_HUGEPAGE (the
//! areas post-copy may leave at the source) holding at least
//! [`MIN_AREA_PAGES`] pages, when they add up to at least what the caller
//! asks ([`MIN_BYTES`] for the agents);
//! pages the restore itself touches (the threads' rseq areas) are placed
//! before the processes run, like every page of the other areas.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use godwit_sys::PAGE_SIZE;

use crate::postcopy::{Feed, LazyMemory, Pager, PagerError, PagerStats, Piece};
use crate::resources::memory;
use crate::schema::{PageRun, Process};

/// Smallest area whose pages are deferred (smaller ones cost more to
/// register than to fill).
pub const MIN_AREA_PAGES: u64 = 64;
/// The agents' default: below this many bytes in all, everything is filled
/// before the processes run (it takes a few milliseconds).
pub const MIN_BYTES: u64 = 16 << 20;

/// Where each deferred page is in the image: per process (the image's
/// PID), address → (length, offset in the process's page files).
#[derive(Default)]
pub(crate) struct Index {
    runs: HashMap<i32, BTreeMap<u64, (u64, u64)>>,
}

impl Index {
    /// Bytes deferred.
    pub fn bytes(&self) -> u64 {
        self.runs
            .values()
            .flat_map(|m| m.values())
            .map(|r| r.0)
            .sum()
    }
}

/// Moves the page runs of the areas to defer from `Vma::pages` to
/// `Vma::lazy`, and returns where they are in the image; None when less
/// than `least` bytes would be deferred (nothing is changed then). With
/// `least` 0 areas of any size are deferred (tests use it on small
/// programs).
pub(crate) fn defer(procs: &mut [Process], least: u64) -> Option<Index> {
    // (0: every area, whatever its size.)
    let min_pages = if least == 0 { 1 } else { MIN_AREA_PAGES };
    // Areas whose pages a parent and its children share copy-on-write
    // (Vma::inherited) are filled before the forks, so that the children
    // share them: never deferred, on either side.
    let shared: std::collections::HashSet<(i32, u64)> = procs
        .iter()
        .flat_map(|p| {
            p.vmas
                .iter()
                .filter(|v| !v.inherited.is_empty())
                .flat_map(move |v| [(p.pid, v.start), (p.ppid, v.start)])
        })
        .collect();
    let eligible = |pid: i32, v: &crate::schema::Vma| {
        v.lazy.is_empty()
            && !shared.contains(&(pid, v.start))
            && memory::lazy_able(v)
            && v.pages.iter().map(|r| r.nr_pages).sum::<u64>() >= min_pages
    };
    let total: u64 = procs
        .iter()
        .filter(|p| !p.zombie)
        .flat_map(|p| p.vmas.iter().filter(|v| eligible(p.pid, v)))
        .flat_map(|v| &v.pages)
        .map(|r| r.nr_pages * PAGE_SIZE)
        .sum();
    if total == 0 || total < least {
        return None;
    }
    let mut index = Index::default();
    for p in procs.iter_mut().filter(|p| !p.zombie) {
        let keep = crate::dump::touched_by_restore(p);
        let runs = index.runs.entry(p.pid).or_default();
        let pid = p.pid;
        for v in p.vmas.iter_mut().filter(|v| eligible(pid, v)) {
            let mut stored = Vec::new();
            for run in std::mem::take(&mut v.pages) {
                let pieces = memory::split_kept(run.addr, run.nr_pages * PAGE_SIZE, &keep);
                for (addr, len, kept) in pieces {
                    let piece = PageRun {
                        addr,
                        nr_pages: len / PAGE_SIZE,
                        offset: run.offset + (addr - run.addr),
                    };
                    if kept {
                        stored.push(piece);
                    } else {
                        runs.insert(addr, (len, piece.offset));
                        v.lazy.push(piece);
                    }
                }
            }
            v.pages = stored;
        }
    }
    Some(index)
}

/// The page files of the image, mapped: (image PID, start offset, bytes).
pub(crate) type Mapped = Vec<(i32, u64, godwit_image::MappedPages)>;

/// Reads deferred pages from the image.
#[derive(Clone)]
pub(crate) struct ImageFeed {
    mapped: Arc<Mapped>,
    index: Arc<Index>,
    asked: VecDeque<(i32, Vec<Piece>)>,
}

impl ImageFeed {
    pub fn new(mapped: Arc<Mapped>, index: Arc<Index>) -> ImageFeed {
        ImageFeed {
            mapped,
            index,
            asked: VecDeque::new(),
        }
    }

    /// Copies the image's bytes for [src, src + len) of process `pid` into
    /// `out`.
    fn read(&self, pid: i32, src: u64, out: &mut [u8]) -> Result<(), PagerError> {
        let missing = |at: u64| {
            PagerError::Local(format!(
                "the image holds no page at {at:#x} of process {pid}"
            ))
        };
        let runs = self.index.runs.get(&pid).ok_or_else(|| missing(src))?;
        let mut at = src;
        let end = src + out.len() as u64;
        while at < end {
            let (&start, &(len, offset)) =
                runs.range(..=at).next_back().ok_or_else(|| missing(at))?;
            if at >= start + len {
                return Err(missing(at));
            }
            let n = (start + len).min(end) - at;
            let off = offset + (at - start);
            let bytes = self.bytes(pid, off, n).ok_or_else(|| missing(at))?;
            let n = bytes.len() as u64;
            let o = (at - src) as usize;
            out[o..o + bytes.len()].copy_from_slice(bytes);
            at += n;
        }
        Ok(())
    }

    /// Bytes of process `pid`'s page files from `off`: `len` of them, or
    /// fewer where the page file holding `off` ends (a run may go on in
    /// the next one).
    fn bytes(&self, pid: i32, off: u64, len: u64) -> Option<&[u8]> {
        let (start, m) = self
            .mapped
            .iter()
            .filter(|(p, s, _)| *p == pid && *s <= off)
            .max_by_key(|(_, s, _)| *s)
            .map(|(_, s, m)| (*s, m))?;
        let from = (off - start) as usize;
        let to = (off - start + len).min(m.len() as u64) as usize;
        (from < to).then(|| &m[from..to])
    }
}

impl Feed for ImageFeed {
    fn ask(&mut self, src_pid: i32, pieces: &[Piece], _fault: bool) -> Result<(), PagerError> {
        self.asked.push_back((src_pid, pieces.to_vec()));
        Ok(())
    }

    fn take(&mut self, total: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, PagerError> {
        let (pid, pieces) = self
            .asked
            .pop_front()
            .ok_or_else(|| PagerError::Local("pages taken that were not asked for".into()))?;
        buf.resize(total as usize, 0);
        let mut off = 0usize;
        for p in pieces {
            self.read(pid, p.src, &mut buf[off..off + p.len as usize])?;
            off += p.len as usize;
        }
        Ok(buf)
    }

    fn finish(&mut self, _stats: &PagerStats) {}
}

/// The processes run; their deferred memory is still to be placed.
pub struct Deferred {
    pub(crate) lazy: Vec<LazyMemory>,
    pub(crate) feed: ImageFeed,
}

impl Deferred {
    /// Bytes still to place.
    pub fn bytes(&self) -> u64 {
        self.feed.index.bytes()
    }

    /// Places every deferred page (faults first). On failure the processes
    /// cannot go on: they are killed (while their descriptors are still
    /// open, so that no thread ever reads zeros where its data was), and
    /// the error says so.
    pub fn run(mut self) -> Result<PagerStats, String> {
        let mut pager = Pager::new(std::mem::take(&mut self.lazy));
        match pager.run(&mut self.feed) {
            Ok(()) => Ok(pager.stats.clone()),
            Err(e) => {
                let pids = pager.pids();
                for &p in &pids {
                    let _ = godwit_sys::process::kill(p, libc::SIGKILL);
                }
                Err(format!(
                    "placing the memory of processes {pids:?} after they ran: {e}; they could not go on and were killed"
                ))
            }
        }
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred")
            .field("processes", &self.lazy.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

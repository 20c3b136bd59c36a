//! Post-copy: the process runs at the destination before its private
//! anonymous memory is there; the pages follow over the migration stream.
//!
//! At the source the dump leaves those pages out of the image
//! (`Vma::lazy`, `End::Hold { lazy: true, .. }`) and the tree stays frozen;
//! [`serve`] then answers page requests from it until the destination says
//! every page is across. At the destination the restore leaves the lazy
//! ranges missing, registered on a userfaultfd of each process
//! (resources/memory.rs hands it over through [`collecting`]); once the
//! processes run, a [`Pager`] places the pages:
//!
//! * one thread, one stream: the destination asks, the source answers, in
//!   order (so any byte stream works, and no second connection is needed).
//!   Each round the pager first reads every userfaultfd's messages; faults
//!   go first (the faulting page and up to [`FAULT_WINDOW`] after it that
//!   are still owed), else it asks for the next [`PUSH_CHUNK`] of owed
//!   pages (the background push, from where the last fault was), one
//!   request ahead so that the source reads and sends the next chunk while
//!   this one is placed. A fault waits at most for the push in flight.
//! * pages are placed with UFFDIO_COPY. A page found there already
//!   (EEXIST) is skipped. A fault on a page nothing is owed for (never
//!   there at the source, or released since) gets a page of zeros.
//! * the address space changing: MADV_DONTNEED / munmap (REMOVE, UNMAP
//!   events) drop the range from what is owed, so nothing is placed there
//!   later; mremap (REMAP) moves what is owed to the new address (it is
//!   still fetched by its source address); fork (FORK) gives the child a
//!   userfaultfd of its own, served like its parent's: it is owed what the
//!   parent was owed at the fork (less MADV_WIPEONFORK ranges). While such
//!   an event is unread the kernel refuses copies (EAGAIN): the pager reads
//!   the messages, updates what is owed, and places only what still is.
//! * a copy refused because its range now spans two mappings (split by
//!   mprotect or madvise since) goes on page by page; only a page refused
//!   on its own (no longer registered memory) is dropped.
//! * a process that exits or execs (its memory gone: ESRCH) is owed nothing.
//!
//! Once nothing is owed, the pager closes the descriptors (the ranges
//! become ordinary memory again) and says `done`; nothing after that fails
//! the migration.
//!
//! Before the processes run, [`serve_restore`] fetches the pages the
//! restore itself touches (the source answers page requests while it waits
//! for `ready`).
//!
//! Messages (MESSAGE frames holding JSON; page data in one DATA frame):
//!
//! ```text
//! destination                                  source
//!   {want: [[pid, addr, len], ...], fault} ──▶  reads them from the frozen copy
//!                                        ◀──   {ok} + DATA frame (the bytes, in order)
//!                                              or {ok: false, error}
//!   ... until nothing is owed
//!   {done, faults, fault_pages, pushed_pages} ──▶ ends its copy
//!                                        ◀──   {ok}
//! or, when the destination cannot go on:
//!   {failed: why, killed: true}         ──▶   runs its copy on (the
//!                                              destination's is dead)
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_image::stream::{kind, read_header, recv_message, send_message, write_frame, Received};
use godwit_sys::mem::{self, ProcMem, Range};
use godwit_sys::uffd::{Copied, Msg, Uffd};
use godwit_sys::PAGE_SIZE;
use serde_json::{json, Value};

/// Bytes after a faulting page fetched with it (when still owed).
pub const FAULT_WINDOW: u64 = 256 << 10;
/// Bytes asked for per round of the background push.
pub const PUSH_CHUNK: u64 = 1 << 20;
/// Most bytes the source sends for one request.
pub const MAX_REQUEST: u64 = 16 << 20;

/// A restored process's memory still at the source: its userfaultfd (lazy
/// ranges registered for missing pages) and the runs it is owed.
pub(crate) struct LazyMemory {
    /// Its PID on this host.
    pub pid: i32,
    /// Its PID at the source (the image's), which the pages are read from.
    pub src_pid: i32,
    pub uffd: Uffd,
    /// (address, length) of the lazy runs.
    pub owed: Vec<(u64, u64)>,
    /// VMAs with MADV_WIPEONFORK: a fork child reads zeros there.
    pub wipe_on_fork: Vec<(u64, u64)>,
}

/// Where a restore hands over the lazy memory of each process (see
/// [`collecting`]); shared with [`serve_restore`].
#[derive(Clone, Default)]
pub(crate) struct Sink(Arc<Mutex<Vec<LazyMemory>>>);

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Whether a restore on this thread may leave memory lazy (runs inside
/// [`collecting`]).
pub(crate) fn accepting() -> bool {
    SINK.with(|s| s.borrow().is_some())
}

/// Called by the restore (memory) for each process with lazy memory.
pub(crate) fn hand_over(m: LazyMemory) {
    SINK.with(|s| match s.borrow().as_ref() {
        Some(sink) => sink.0.lock().unwrap_or_else(|p| p.into_inner()).push(m),
        // Not accepting: dropping the descriptor makes the ranges ordinary
        // memory; memory::restore refuses lazy images before this.
        None => drop(m),
    })
}

/// Runs `f` (a restore) on this thread accepting lazy memory into `sink`,
/// and returns what it handed over.
pub(crate) fn collecting<R>(sink: &Sink, f: impl FnOnce() -> R) -> (R, Vec<LazyMemory>) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            SINK.with(|s| s.borrow_mut().take());
        }
    }
    SINK.with(|s| *s.borrow_mut() = Some(sink.clone()));
    let reset = Reset;
    let r = f();
    drop(reset);
    let got = std::mem::take(&mut *sink.0.lock().unwrap_or_else(|p| p.into_inner()));
    (r, got)
}

/// What one process is still owed: destination ranges, each with the
/// source address its contents are read from (they differ after mremap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Owed {
    /// dst start → (len, src start); no two overlap.
    ext: BTreeMap<u64, (u64, u64)>,
}

/// One piece to fetch or place: `len` bytes at `dst`, read from `src`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
}

impl Owed {
    pub fn insert(&mut self, dst: u64, len: u64, src: u64) {
        if len == 0 {
            return;
        }
        self.remove(dst, dst + len);
        self.ext.insert(dst, (len, src));
    }

    pub fn is_empty(&self) -> bool {
        self.ext.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.ext.values().map(|e| e.0).sum()
    }

    /// Forgets [start, end).
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let hit: Vec<u64> = self
            .ext
            .range(..end)
            .rev()
            .take_while(|(&d, &(l, _))| d + l > start)
            .map(|(&d, _)| d)
            .collect();
        for d in hit {
            let (l, s) = self.ext.remove(&d).expect("listed above");
            if d < start {
                self.ext.insert(d, (start - d, s));
            }
            if d + l > end {
                self.ext.insert(end, (d + l - end, s + (end - d)));
            }
        }
    }

    /// The pieces within [start, end), in address order.
    pub fn within(&self, start: u64, end: u64) -> Vec<Piece> {
        let mut out: Vec<Piece> = self
            .ext
            .range(..end)
            .rev()
            .take_while(|(&d, &(l, _))| d + l > start)
            .map(|(&d, &(l, s))| {
                let a = d.max(start);
                let b = (d + l).min(end);
                Piece {
                    dst: a,
                    src: s + (a - d),
                    len: b - a,
                }
            })
            .collect();
        out.reverse();
        out
    }

    pub fn contains(&self, addr: u64) -> bool {
        !self.within(addr, addr + 1).is_empty()
    }

    /// mremap moved [from, from + len) to `to`.
    pub fn remap(&mut self, from: u64, to: u64, len: u64) {
        if from == to {
            return;
        }
        let moved = self.within(from, from + len);
        self.remove(from, from + len);
        self.remove(to, to + len);
        for p in moved {
            self.ext.insert(p.dst - from + to, (p.len, p.src));
        }
    }

    /// Up to `max` bytes of pieces from `cursor` on (then from the lowest
    /// address).
    pub fn next_from(&self, cursor: u64, max: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut left = max;
        let first = self
            .within(cursor, u64::MAX)
            .into_iter()
            .chain(self.within(0, cursor));
        for p in first {
            if left == 0 {
                break;
            }
            let len = p.len.min(left);
            out.push(Piece { len, ..p });
            left -= len;
        }
        out
    }

    /// The pieces whose source lies in [src, src + len), each with the
    /// offset of its bytes in that source range.
    fn by_source(&self, src: u64, len: u64) -> Option<(Piece, u64)> {
        self.ext.iter().find_map(|(&d, &(l, s))| {
            let a = s.max(src);
            let b = (s + l).min(src + len);
            (a < b).then(|| {
                (
                    Piece {
                        dst: d + (a - s),
                        src: a,
                        len: b - a,
                    },
                    a - src,
                )
            })
        })
    }
}

/// One process being served at the destination.
struct Proc {
    /// Host PID (0 for a fork child: unknown).
    pid: i32,
    src_pid: i32,
    uffd: Uffd,
    owed: Owed,
    wipe_on_fork: Vec<(u64, u64)>,
    /// Where the background push goes on from.
    cursor: u64,
    /// Its memory is gone (exit, exec).
    gone: bool,
    /// mremaps seen so far: while it stays the same, what is owed at an
    /// address still comes from the same source address.
    remaps: u64,
}

/// A push asked for and not yet placed.
struct Push {
    i: usize,
    pieces: Vec<Piece>,
    remaps: u64,
}

/// What the destination counted.
#[derive(Debug, Clone, Default)]
pub struct PagerStats {
    /// Faults served with pages from the source.
    pub faults: u64,
    /// Pages fetched for those faults (the faulting ones and the window).
    pub fault_pages: u64,
    /// Pages placed by the background push.
    pub pushed_pages: u64,
    /// Faults on pages nothing was owed for, given zeros.
    pub zero_faults: u64,
    /// Pages dropped because the process released, unmapped or wiped them
    /// first.
    pub dropped_pages: u64,
    /// Fork children served.
    pub forks: u64,
    /// From the start of the pager until nothing was owed.
    pub duration: Duration,
    /// Of which waiting for the source's answers, and placing pages.
    pub fetching: Duration,
    pub placing: Duration,
}

/// Why the pager stopped before every page was across.
#[derive(Debug)]
pub(crate) enum PagerError {
    /// The stream to the source failed (or carried nonsense): the source
    /// cannot be told anything.
    Link(String),
    /// The source answered, with an error.
    Source(String),
    /// Placing pages here failed.
    Local(String),
}

impl PagerError {
    /// Whether the source can still hear from us.
    pub fn link_alive(&self) -> bool {
        !matches!(self, PagerError::Link(_))
    }
}

impl std::fmt::Display for PagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PagerError::Link(s) | PagerError::Source(s) | PagerError::Local(s) => f.write_str(s),
        }
    }
}

/// The destination's page server client: see the module doc.
pub(crate) struct Pager {
    procs: Vec<Proc>,
    faults: Vec<(usize, u64)>,
    pub stats: PagerStats,
    zeros: Vec<u8>,
    buf: Vec<u8>,
}

impl Pager {
    pub fn new(lazy: Vec<LazyMemory>) -> Pager {
        let procs = lazy
            .into_iter()
            .map(|m| {
                let mut owed = Owed::default();
                for (a, l) in m.owed {
                    owed.insert(a, l, a);
                }
                Proc {
                    pid: m.pid,
                    src_pid: m.src_pid,
                    uffd: m.uffd,
                    owed,
                    wipe_on_fork: m.wipe_on_fork,
                    cursor: 0,
                    gone: false,
                    remaps: 0,
                }
            })
            .collect();
        Pager {
            procs,
            faults: Vec::new(),
            stats: PagerStats::default(),
            zeros: vec![0u8; PAGE_SIZE as usize],
            buf: Vec::new(),
        }
    }

    /// Bytes still owed to the processes.
    pub fn owed_bytes(&self) -> u64 {
        self.procs
            .iter()
            .filter(|p| !p.gone)
            .map(|p| p.owed.bytes())
            .sum()
    }

    /// The host PIDs of the restored processes served.
    pub fn pids(&self) -> Vec<i32> {
        self.procs
            .iter()
            .map(|p| p.pid)
            .filter(|&p| p > 0)
            .collect()
    }

    /// Serves faults and pushes pages until nothing is owed; then tells
    /// the source (`done`) and closes the descriptors.
    pub fn run(&mut self, feed: &mut dyn Feed) -> Result<(), PagerError> {
        let t0 = Instant::now();
        // The push keeps one request ahead: the source reads and sends the
        // next chunk while this one is placed.
        let mut pending: Option<Push> = None;
        loop {
            for i in 0..self.procs.len() {
                self.read_msgs(i)?;
            }
            if !self.faults.is_empty() {
                if let Some(p) = pending.take() {
                    self.finish_push(feed, p)?;
                }
                self.serve_faults(feed)?;
                continue;
            }
            let next = self.next_push();
            if next.is_none() && pending.is_none() {
                break;
            }
            if let Some(n) = &next {
                feed.ask(self.procs[n.i].src_pid, &n.pieces, false)?;
            }
            if let Some(p) = pending.take() {
                self.finish_push(feed, p)?;
            }
            pending = next;
        }
        self.stats.duration = t0.elapsed();
        tracing::debug!(?self.stats, "post-copy: every page is across");
        // Every page is here: from now on the processes need nothing from
        // the source, whatever becomes of the link.
        for p in self.procs.drain(..) {
            drop(p.uffd);
        }
        feed.finish(&self.stats);
        Ok(())
    }

    /// The next chunk to push (from where the last fault or push of its
    /// process was), if anything is owed.
    fn next_push(&mut self) -> Option<Push> {
        let i = (0..self.procs.len())
            .find(|&i| !self.procs[i].gone && !self.procs[i].owed.is_empty())?;
        let p = &mut self.procs[i];
        let pieces = p.owed.next_from(p.cursor, PUSH_CHUNK);
        if let Some(last) = pieces.last() {
            p.cursor = last.dst + last.len;
        }
        Some(Push {
            i,
            pieces,
            remaps: p.remaps,
        })
    }

    /// Reads the answer to a push asked for, and places it.
    fn finish_push(&mut self, feed: &mut dyn Feed, p: Push) -> Result<(), PagerError> {
        let t = Instant::now();
        let total = p.pieces.iter().map(|x| x.len).sum();
        let data = feed.take(total, std::mem::take(&mut self.buf))?;
        self.stats.fetching += t.elapsed();
        let t = Instant::now();
        let mut off = 0usize;
        let mut placed = 0;
        for pc in &p.pieces {
            let len = pc.len as usize;
            placed += self.place(p.i, *pc, p.remaps, &data[off..off + len])?;
            off += len;
        }
        self.buf = data;
        self.stats.placing += t.elapsed();
        self.stats.pushed_pages += placed / PAGE_SIZE;
        Ok(())
    }

    /// Reads the pending messages of process `i`'s descriptor and applies
    /// them.
    fn read_msgs(&mut self, i: usize) -> Result<(), PagerError> {
        loop {
            if self.procs[i].gone {
                return Ok(());
            }
            let msgs = self.procs[i]
                .uffd
                .read_msgs(0)
                .map_err(|e| PagerError::Local(format!("reading page faults: {e}")))?;
            if msgs.is_empty() {
                return Ok(());
            }
            for m in msgs {
                let p = &mut self.procs[i];
                match m {
                    Msg::Fault { addr, .. } => self.faults.push((i, addr)),
                    Msg::Remove { start, end } | Msg::Unmap { start, end } => {
                        self.stats.dropped_pages +=
                            p.owed.within(start, end).iter().map(|x| x.len).sum::<u64>()
                                / PAGE_SIZE;
                        p.owed.remove(start, end);
                    }
                    Msg::Remap { from, to, len } => {
                        p.owed.remap(from, to, len);
                        p.remaps += 1;
                    }
                    Msg::Fork(uffd) => {
                        // The child reads zeros in MADV_WIPEONFORK memory:
                        // the parent's marks as read just after the fork
                        // (its smaps: a parent that changes a mark right
                        // around a fork may race with this; a child's own
                        // PID is not known, so its children inherit its
                        // marks as they were at its fork).
                        if p.pid > 0 {
                            if let Ok(maps) = godwit_sys::proc::smaps(p.pid) {
                                p.wipe_on_fork = maps
                                    .iter()
                                    .filter(|e| e.vm_flags.iter().any(|f| f == "wf"))
                                    .map(|e| (e.start, e.end))
                                    .collect();
                            }
                        }
                        let mut owed = p.owed.clone();
                        for &(a, b) in &p.wipe_on_fork {
                            owed.remove(a, b);
                        }
                        tracing::debug!(pid = p.pid, owed = owed.bytes(), "post-copy: a fork");
                        let child = Proc {
                            pid: 0,
                            src_pid: p.src_pid,
                            uffd,
                            owed,
                            wipe_on_fork: p.wipe_on_fork.clone(),
                            cursor: p.cursor,
                            gone: false,
                            remaps: 0,
                        };
                        self.procs.push(child);
                        self.stats.forks += 1;
                    }
                    Msg::Other(e) => tracing::debug!(event = e, "post-copy: unexpected message"),
                }
            }
        }
    }

    /// Fetches, for every pending fault on an owed page, that page and
    /// what is owed in the window after it, places them, and wakes the
    /// faulting threads.
    fn serve_faults(&mut self, feed: &mut dyn Feed) -> Result<(), PagerError> {
        let faults = std::mem::take(&mut self.faults);
        // Per process: the pieces to fetch.
        let mut want: Vec<(usize, Vec<Piece>)> = Vec::new();
        let mut wake = Vec::new();
        let mut asked = 0u64;
        for &(i, addr) in &faults {
            let page = addr & !(PAGE_SIZE - 1);
            if self.procs[i].gone {
                continue;
            }
            wake.push((i, page));
            let p = &self.procs[i];
            if !p.owed.contains(page) {
                self.zero_fill(i, page)?;
                continue;
            }
            // Many faults at once: the window shrinks to the faulting page,
            // so that one request stays within what the source sends.
            let window = if asked > MAX_REQUEST / 2 {
                PAGE_SIZE
            } else {
                FAULT_WINDOW
            };
            let pieces = p.owed.within(page, page + window);
            asked += pieces.iter().map(|x| x.len).sum::<u64>();
            match want.iter_mut().find(|(j, _)| *j == i) {
                Some(e) => e.1.extend(pieces),
                None => want.push((i, pieces)),
            }
            self.stats.faults += 1;
        }
        for (i, pieces) in want {
            let pieces = disjoint(pieces);
            let (src_pid, remaps) = (self.procs[i].src_pid, self.procs[i].remaps);
            let data = self.fetch(feed, src_pid, &pieces, true)?;
            let mut off = 0usize;
            let mut placed = 0;
            for pc in &pieces {
                let len = pc.len as usize;
                placed += self.place(i, *pc, remaps, &data[off..off + len])?;
                off += len;
            }
            self.buf = data;
            self.stats.fault_pages += placed / PAGE_SIZE;
            if let Some(last) = pieces.last() {
                self.procs[i].cursor = last.dst + last.len;
            }
        }
        // A fault whose page was released meanwhile (or placed by another
        // round) faults again if still missing, and gets zeros then.
        for (i, page) in wake {
            let p = &self.procs[i];
            if !p.gone {
                let _ = p.uffd.wake(page, PAGE_SIZE);
            }
        }
        Ok(())
    }

    /// A page of zeros at `page`, where nothing is owed.
    fn zero_fill(&mut self, i: usize, page: u64) -> Result<(), PagerError> {
        loop {
            match self.procs[i].uffd.copy_some(page, &self.zeros) {
                Copied::All => {
                    self.stats.zero_faults += 1;
                    return Ok(());
                }
                Copied::Stopped { errno, .. } if errno == libc::EAGAIN => {
                    self.read_msgs(i)?;
                    if self.procs[i].owed.contains(page) {
                        // Moved here by a mremap just read: fetched instead.
                        self.faults.push((i, page));
                        return Ok(());
                    }
                }
                Copied::Stopped { errno, .. } if errno == libc::ESRCH => {
                    self.procs[i].gone = true;
                    return Ok(());
                }
                // There already, or no longer registered memory.
                Copied::Stopped { .. } => return Ok(()),
            }
        }
    }

    /// Places `data`, read for `asked` when the process had seen `remaps`
    /// mremaps, where it is still owed; returns the bytes placed.
    fn place(
        &mut self,
        i: usize,
        asked: Piece,
        remaps: u64,
        data: &[u8],
    ) -> Result<u64, PagerError> {
        let mut placed = 0;
        let (src, len) = (asked.src, asked.len);
        // Pieces already tried and given up on (no longer registered).
        let mut skip = Owed::default();
        loop {
            let p = &mut self.procs[i];
            if p.gone {
                return Ok(placed);
            }
            // Unmoved since asked for: still owed where it was asked for
            // (the common case, found fast); else looked up by source.
            let target = if p.remaps == remaps {
                p.owed
                    .within(asked.dst, asked.dst + len)
                    .first()
                    .map(|pc| (*pc, pc.dst - asked.dst))
            } else {
                p.owed.by_source(src, len)
            };
            let Some((pc, off)) = target else {
                return Ok(placed);
            };
            if skip.contains(pc.dst) {
                // (refused on its own: see below)
                p.owed.remove(pc.dst, pc.dst + PAGE_SIZE);
                continue;
            }
            let bytes = &data[off as usize..(off + pc.len) as usize];
            match p.uffd.copy_some(pc.dst, bytes) {
                Copied::All => {
                    p.owed.remove(pc.dst, pc.dst + pc.len);
                    placed += pc.len;
                }
                Copied::Stopped { done, errno } => {
                    p.owed.remove(pc.dst, pc.dst + done);
                    placed += done;
                    let at = pc.dst + done;
                    match errno {
                        libc::EEXIST => p.owed.remove(at, at + PAGE_SIZE),
                        libc::EAGAIN => self.read_msgs(i)?,
                        libc::ESRCH => p.gone = true,
                        // One UFFDIO_COPY must stay within one mapping: a
                        // range split since (mprotect, madvise) is refused
                        // whole. Page by page, then: only a page that is
                        // itself refused is no longer registered memory.
                        libc::ENOENT | libc::EFAULT | libc::EINVAL if pc.len - done > PAGE_SIZE => {
                            let one = &bytes[done as usize..(done + PAGE_SIZE) as usize];
                            match p.uffd.copy_some(at, one) {
                                Copied::All => {
                                    p.owed.remove(at, at + PAGE_SIZE);
                                    placed += PAGE_SIZE;
                                }
                                Copied::Stopped {
                                    errno: libc::EEXIST,
                                    ..
                                } => p.owed.remove(at, at + PAGE_SIZE),
                                Copied::Stopped {
                                    errno: libc::EAGAIN,
                                    ..
                                } => self.read_msgs(i)?,
                                Copied::Stopped {
                                    errno: libc::ESRCH, ..
                                } => p.gone = true,
                                Copied::Stopped { errno, .. } => {
                                    tracing::debug!(
                                        pid = p.pid,
                                        at,
                                        errno,
                                        "post-copy: a page is no longer registered memory; dropped"
                                    );
                                    skip.insert(at, PAGE_SIZE, 0);
                                }
                            }
                        }
                        libc::ENOENT | libc::EFAULT | libc::EINVAL => {
                            tracing::debug!(
                                pid = p.pid,
                                at,
                                errno,
                                "post-copy: a page is no longer registered memory; dropped"
                            );
                            skip.insert(at, PAGE_SIZE, 0);
                        }
                        e => {
                            return Err(PagerError::Local(format!(
                                "placing pages at {at:#x} in process {}: {}",
                                p.pid,
                                std::io::Error::from_raw_os_error(e)
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Asks the feed for `pieces` of process `src_pid` and reads them.
    fn fetch(
        &mut self,
        feed: &mut dyn Feed,
        src_pid: i32,
        pieces: &[Piece],
        fault: bool,
    ) -> Result<Vec<u8>, PagerError> {
        feed.ask(src_pid, pieces, fault)?;
        feed.take(
            pieces.iter().map(|p| p.len).sum(),
            std::mem::take(&mut self.buf),
        )
    }
}

/// Where a [`Pager`] gets the pages it places: the source over the
/// migration stream ([`StreamFeed`], post-copy), or the image received
/// before the processes ran (crate::deferred, the other modes).
pub(crate) trait Feed {
    /// Asks for `pieces` (by source address) of process `src_pid`; the
    /// answers come in the order asked.
    fn ask(&mut self, src_pid: i32, pieces: &[Piece], fault: bool) -> Result<(), PagerError>;
    /// The answer to the oldest request: `total` bytes (`buf` is reused).
    fn take(&mut self, total: u64, buf: Vec<u8>) -> Result<Vec<u8>, PagerError>;
    /// Every page is placed.
    fn finish(&mut self, stats: &PagerStats);
}

/// The source at the other end of the migration stream.
pub(crate) struct StreamFeed<'a, S> {
    pub s: &'a Mutex<S>,
    pub peer: &'a str,
}

impl<S: Read + Write> Feed for StreamFeed<'_, S> {
    fn ask(&mut self, src_pid: i32, pieces: &[Piece], fault: bool) -> Result<(), PagerError> {
        let want: Vec<Value> = pieces
            .iter()
            .map(|p| json!([src_pid, p.src, p.len]))
            .collect();
        let msg = json!({"want": want, "fault": fault});
        let mut g = self.s.lock().unwrap_or_else(|p| p.into_inner());
        send_message(&mut *g, msg.to_string().as_bytes()).map_err(|e| {
            PagerError::Link(format!(
                "the connection to the source {} failed: {e}",
                self.peer
            ))
        })
    }

    fn take(&mut self, total: u64, mut buf: Vec<u8>) -> Result<Vec<u8>, PagerError> {
        let peer = self.peer;
        let lost = |e: &dyn std::fmt::Display| {
            PagerError::Link(format!("the connection to the source {peer} failed: {e}"))
        };
        let mut g = self.s.lock().unwrap_or_else(|p| p.into_inner());
        let answer = match recv_message(&mut *g, std::path::Path::new(peer)) {
            Ok(Received::Message(m)) => serde_json::from_slice::<Value>(&m)
                .map_err(|e| PagerError::Link(format!("an unreadable answer from {peer}: {e}")))?,
            Ok(Received::Abort(why)) => {
                return Err(PagerError::Source(format!(
                    "the source {peer} gave up: {why}"
                )))
            }
            Err(e) => return Err(lost(&e)),
        };
        if answer["ok"] != json!(true) {
            return Err(PagerError::Source(format!(
                "the source {peer} could not read the pages: {}",
                answer["error"].as_str().unwrap_or("no reason given")
            )));
        }
        let h = read_header(&mut *g).map_err(|e| lost(&e))?;
        if h.kind != kind::DATA || h.len != total {
            return Err(PagerError::Link(format!(
                "{peer} sent a frame of kind {} with {} bytes, not the {total} bytes of pages asked for",
                h.kind, h.len
            )));
        }
        buf.resize(total as usize, 0);
        g.read_exact(&mut buf).map_err(|e| lost(&e))?;
        Ok(buf)
    }

    /// Tells the source (`done`), which then ends its copy. Nothing that
    /// goes wrong here is a failure of the migration: the processes have
    /// all their memory. (A source that does not hear `done` keeps its
    /// copy stopped: never two copies.)
    fn finish(&mut self, stats: &PagerStats) {
        let peer = self.peer;
        let done = json!({
            "done": true,
            "faults": stats.faults,
            "fault_pages": stats.fault_pages,
            "pushed_pages": stats.pushed_pages,
            "zero_faults": stats.zero_faults,
        });
        let mut g = self.s.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = send_message(&mut *g, done.to_string().as_bytes()) {
            tracing::warn!("telling {peer} every page is across: {e}; it keeps its copy stopped");
            return;
        }
        match recv_message(&mut *g, std::path::Path::new(peer)) {
            Ok(Received::Message(_)) => {}
            Ok(Received::Abort(why)) => tracing::warn!("{peer} after the post-copy: {why}"),
            Err(e) => tracing::warn!("{peer} did not confirm the end of the post-copy: {e}"),
        }
    }
}

/// `pieces` (taken from one `Owed`, so consistent) in address order, the
/// overlapping parts once.
fn disjoint(mut pieces: Vec<Piece>) -> Vec<Piece> {
    pieces.sort_by_key(|p| p.dst);
    let mut out: Vec<Piece> = Vec::with_capacity(pieces.len());
    for mut p in pieces {
        if let Some(last) = out.last() {
            let end = last.dst + last.len;
            if end >= p.dst + p.len {
                continue;
            }
            if end > p.dst {
                let cut = end - p.dst;
                p = Piece {
                    dst: p.dst + cut,
                    src: p.src + cut,
                    len: p.len - cut,
                };
            }
        }
        out.push(p);
    }
    out
}

/// How the source's serving ended.
#[derive(Debug)]
pub(crate) enum Served {
    /// Every page is across; the destination's counts.
    Done(Value),
    /// The destination could not go on and killed its copy.
    Failed(String),
}

/// The source side: answers page requests from the frozen processes
/// `pids` until the destination says done or failed. Err: the link failed
/// (or the destination spoke nonsense).
pub(crate) fn serve<S: Read + Write>(
    s: &Mutex<S>,
    peer: &str,
    server: &mut PageServer,
) -> Result<Served, String> {
    loop {
        let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
        let msg = match recv_message(&mut *g, std::path::Path::new(peer)) {
            Ok(Received::Message(m)) => serde_json::from_slice::<Value>(&m)
                .map_err(|e| format!("an unreadable message: {e}"))?,
            Ok(Received::Abort(why)) => return Err(format!("the destination gave up: {why}")),
            Err(e) => return Err(e.to_string()),
        };
        if msg["done"] == json!(true) {
            return Ok(Served::Done(msg));
        }
        if let Some(why) = msg["failed"].as_str() {
            return Ok(Served::Failed(why.to_string()));
        }
        if !server.answer(&mut *g, peer, &msg)? {
            return Err(format!("an unexpected message: {msg}"));
        }
    }
}

/// Reads pages of the frozen processes for the destination.
pub(crate) struct PageServer {
    pids: Vec<i32>,
    buf: Vec<u8>,
    mems: BTreeMap<i32, ProcMem>,
    /// Bytes of pages sent (frames included).
    pub sent: u64,
}

impl PageServer {
    pub fn new(pids: &[i32]) -> PageServer {
        PageServer {
            pids: pids.to_vec(),
            buf: Vec::new(),
            mems: BTreeMap::new(),
            sent: 0,
        }
    }

    /// Answers `msg` if it is a page request (`want`): the pages, or why
    /// not. Ok(false): it is not one. Err: the link failed.
    pub fn answer<W: Write>(&mut self, w: &mut W, peer: &str, msg: &Value) -> Result<bool, String> {
        let Some(want) = msg["want"].as_array() else {
            return Ok(false);
        };
        let mut asked = Vec::with_capacity(want.len());
        let mut bad = None;
        for w in want {
            let (Some(pid), Some(addr), Some(len)) = (w[0].as_i64(), w[1].as_u64(), w[2].as_u64())
            else {
                bad = Some(format!("a malformed request {w}"));
                break;
            };
            let pid = pid as i32;
            if !self.pids.contains(&pid) {
                bad = Some(format!("pages of process {pid}, which is not migrated"));
                break;
            }
            if addr % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || addr.checked_add(len).is_none() {
                bad = Some(format!("an unaligned range {addr:#x}+{len:#x}"));
                break;
            }
            asked.push((pid, Range { addr, len }));
        }
        let total: u64 = asked.iter().map(|(_, r)| r.len).sum();
        if bad.is_none() && total > MAX_REQUEST {
            bad = Some(format!("{total} bytes at once (at most {MAX_REQUEST})"));
        }
        let read = match bad {
            Some(b) => Err(b),
            None => {
                self.buf.resize(total as usize, 0);
                read_pages(&asked, &mut self.buf, &mut self.mems)
            }
        };
        let answered = match read {
            Ok(()) => send_message(w, br#"{"ok": true}"#)
                .and_then(|()| write_frame(w, kind::DATA, 0, &self.buf))
                .and_then(|()| w.flush()),
            Err(why) => {
                tracing::warn!("post-copy: refused a page request from {peer}: {why}");
                send_message(w, json!({"ok": false, "error": why}).to_string().as_bytes())
            }
        };
        answered.map_err(|e| e.to_string())?;
        self.sent += (total as usize + 2 * godwit_image::stream::FRAME_HEADER + 12) as u64;
        Ok(true)
    }
}

/// Before the processes run, the restore itself may touch memory that is
/// still at the source (a system call it injects that the kernel makes
/// read or write there; the known ones are avoided: see
/// dump::touched_by_restore). Such a touch would wait forever: this serves
/// it, one page at a time, over the stream, until `stop` (set by the gate
/// before it says ready; a restore waiting on a page cannot get there, so
/// no request is cut short). The source answers page requests while it
/// waits for ready. If the source cannot be asked, the processes waiting
/// are killed, which fails the restore.
pub(crate) fn serve_restore(
    sink: &Sink,
    feed: &mut dyn Feed,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut pager = Pager::new(Vec::new());
    while !stop.load(SeqCst) {
        let mut served = false;
        let v = sink.0.lock().unwrap_or_else(|p| p.into_inner());
        for m in v.iter() {
            let msgs = m.uffd.read_msgs(0).unwrap_or_default();
            for msg in msgs {
                let Msg::Fault { addr, .. } = msg else {
                    tracing::warn!(
                        pid = m.pid,
                        "post-copy: an event before the process ran: {msg:?}"
                    );
                    continue;
                };
                served = true;
                let page = addr & !(PAGE_SIZE - 1);
                let owed = m.owed.iter().any(|&(a, l)| page >= a && page < a + l);
                tracing::debug!(
                    pid = m.pid,
                    page,
                    owed,
                    "post-copy: the restore touched lazy memory"
                );
                let data = if owed {
                    let pc = Piece {
                        dst: page,
                        src: page,
                        len: PAGE_SIZE,
                    };
                    match pager.fetch(feed, m.src_pid, &[pc], true) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::warn!(
                                "post-copy: a page for the restore: {e}; ending the restore"
                            );
                            for m in v.iter() {
                                let _ = godwit_sys::process::kill(m.pid, libc::SIGKILL);
                            }
                            return;
                        }
                    }
                } else {
                    vec![0u8; PAGE_SIZE as usize]
                };
                // Placed (or there already); the pager later finds it there.
                let _ = m.uffd.copy_some(page, &data);
                let _ = m.uffd.wake(page, PAGE_SIZE);
            }
        }
        drop(v);
        if !served {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Reads the ranges asked for, in order, into `buf` (process_vm_readv; the
/// pages it cannot reach, such as PROT_NONE ones, through /proc/PID/mem).
fn read_pages(
    asked: &[(i32, Range)],
    buf: &mut [u8],
    mems: &mut BTreeMap<i32, ProcMem>,
) -> Result<(), String> {
    let mut off = 0usize;
    for &(pid, r) in asked {
        let out = &mut buf[off..off + r.len as usize];
        let n = mem::read_ranges(pid, out, &[r]).unwrap_or(0);
        if n < out.len() {
            let m = match mems.entry(pid) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(ProcMem::open(pid, false).map_err(|e| format!("process {pid}: {e}"))?)
                }
            };
            m.read_exact_at(r.addr + n as u64, &mut out[n..])
                .map_err(|e| format!("process {pid}: {e}"))?;
        }
        off += r.len as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    fn owed(runs: &[(u64, u64)]) -> Owed {
        let mut o = Owed::default();
        for &(a, l) in runs {
            o.insert(a * P, l * P, a * P);
        }
        o
    }

    #[test]
    fn remove_cuts_and_keeps_sources() {
        let mut o = owed(&[(10, 10), (30, 5)]);
        o.remove(12 * P, 14 * P);
        o.remove(33 * P, 40 * P);
        assert_eq!(
            o.within(0, u64::MAX),
            vec![
                Piece {
                    dst: 10 * P,
                    src: 10 * P,
                    len: 2 * P
                },
                Piece {
                    dst: 14 * P,
                    src: 14 * P,
                    len: 6 * P
                },
                Piece {
                    dst: 30 * P,
                    src: 30 * P,
                    len: 3 * P
                },
            ]
        );
        assert_eq!(o.bytes(), 11 * P);
        assert!(o.contains(15 * P) && !o.contains(12 * P) && !o.contains(33 * P));
    }

    #[test]
    fn remap_follows_the_pages() {
        let mut o = owed(&[(10, 10)]);
        // Pages 14..18 move to 100..104; something owed at 101 is replaced.
        o.insert(101 * P, P, 500 * P);
        o.remap(14 * P, 100 * P, 4 * P);
        assert_eq!(
            o.within(100 * P, 104 * P),
            vec![Piece {
                dst: 100 * P,
                src: 14 * P,
                len: 4 * P
            }]
        );
        assert!(!o.contains(15 * P));
        assert_eq!(o.bytes(), 10 * P);
        // Placing by source finds the moved pages.
        let (pc, off) = o.by_source(12 * P, 8 * P).unwrap();
        assert_eq!((pc.dst, off), (12 * P, 0));
        o.remove(10 * P, 14 * P);
        let (pc, off) = o.by_source(12 * P, 4 * P).unwrap();
        assert_eq!(
            (pc.dst, pc.src, pc.len, off),
            (100 * P, 14 * P, 2 * P, 2 * P)
        );
    }

    #[test]
    fn fault_windows_are_fetched_once() {
        let pc = |d: u64, l: u64| Piece {
            dst: d * P,
            src: d * P + 7 * P,
            len: l * P,
        };
        assert_eq!(
            disjoint(vec![pc(10, 4), pc(2, 3), pc(12, 6), pc(11, 1)]),
            vec![pc(2, 3), pc(10, 4), pc(14, 4)]
        );
    }

    #[test]
    fn push_goes_on_from_the_cursor_and_wraps() {
        let o = owed(&[(10, 4), (20, 4)]);
        let got = o.next_from(21 * P, 5 * P);
        assert_eq!(
            got,
            vec![
                Piece {
                    dst: 21 * P,
                    src: 21 * P,
                    len: 3 * P
                },
                Piece {
                    dst: 10 * P,
                    src: 10 * P,
                    len: 2 * P
                },
            ]
        );
    }
}

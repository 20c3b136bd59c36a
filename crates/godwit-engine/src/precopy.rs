//! Pre-copy for `dump --leave-running`: a process's memory is copied while
//! it runs, and only what it wrote meanwhile is copied while it is frozen,
//! so the time it is stopped no longer grows with its memory.
//!
//! 1. A short stop, nothing collected: a userfaultfd is opened in each
//!    process of the tree that holds more than a few MiB.
//! 2. While it runs: survey its memory (smaps, page map), register its
//!    private anonymous VMAs for write protection in *async* mode
//!    (UFFD_FEATURE_WP_ASYNC: a write only lifts the page's protection; no
//!    handler, no stall), protect the present pages, copy them into page
//!    files. Then a few rounds: PAGEMAP_SCAN lists the pages written since
//!    and protects them again in the same walk, and they are copied again.
//! 3. At the freeze ([`Tracker::plan_frozen`], instead of smaps and the page
//!    map): one PAGEMAP_SCAN per private anonymous VMA gives its present
//!    pages and which of them were written since their last copy. Runs of
//!    pages unchanged since point at that copy; the rest (written since,
//!    new, or in memory that is not tracked) is copied now. VmFlags are the
//!    surveyed ones if no VMA changed since (else smaps is read again).
//! 4. After the release, the protection is lifted ([`Tracker::finish`]).
//!
//! A page is taken from an earlier copy only when the scan says it is not
//! written, i.e. still protected since that copy was made after protecting
//! it. Every way its contents could change lifts the protection or removes
//! the page: a write (also by another process or the kernel on its behalf,
//! through a write fault), MADV_DONTNEED (anonymous memory loses the page
//! and its protection), mremap (moved pages lose the protection when the
//! userfaultfd has no remap events), a new mapping (never protected). Not
//! covered: a device writing into memory pinned before the dump (RDMA,
//! io_uring fixed buffers) without a fault.
//!
//! The runs of such an image do not lie back to back in the page stream,
//! and the stream holds copies no run points to any more: the image carries
//! [`godwit_image::FLAG_SCATTERED_PAGES`].

use crate::error::{DumpCtx, Result};
use crate::freeze::{freeze_tree, release_all, Frozen, Member};
use crate::resources::memory;
use crate::schema::{PageRun, PageSpan, Vma, VmaKind};
use crate::snapshot::{cow_able, write_protect_all, EAGER_LIMIT};
use crate::Progress;
use godwit_image::{ImageWriter, PageFileInfo};
use godwit_sys::mem::{scan, PageRegion, Pagemap, Range, ScanQuery};
use godwit_sys::proc::{self, MapEntry};
use godwit_sys::uffd::{self, Uffd};
use godwit_sys::PAGE_SIZE;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Rounds of copying again what was written during the previous copy, at
/// most; they stop sooner when little was written or it stopped shrinking.
const MAX_ROUNDS: usize = 4;
/// Written bytes small enough to copy while frozen: no further round.
const SMALL_ENOUGH: u64 = 2 << 20;
/// More written during the last round than this: the pre-copy is given up
/// (see [`Tracker::start`]).
const NOT_CONVERGED: u64 = 16 << 20;

/// Where the latest copy of each page lies in the page stream: disjoint
/// intervals, start → (end, stream offset of start).
#[derive(Debug, Default)]
struct Copies(BTreeMap<u64, (u64, u64)>);

impl Copies {
    /// Records that `[start, end)` was copied to `offset` onwards,
    /// replacing what was recorded there before.
    fn insert(&mut self, start: u64, end: u64, offset: u64) {
        self.remove(start, end);
        self.0.insert(start, (end, offset));
    }

    /// Forgets any copy of `[start, end)`.
    fn remove(&mut self, start: u64, end: u64) {
        if let Some((&ks, &(ke, ko))) = self.0.range(..start).next_back() {
            if ke > start {
                self.0.insert(ks, (start, ko));
                if ke > end {
                    self.0.insert(end, (ke, ko + (end - ks)));
                }
            }
        }
        let inside: Vec<u64> = self.0.range(start..end).map(|(k, _)| *k).collect();
        for k in inside {
            if let Some((ke, ko)) = self.0.remove(&k) {
                if ke > end {
                    self.0.insert(end, (ke, ko + (end - k)));
                }
            }
        }
    }

    /// The copy holding `addr`: (end of that interval, offset of `addr`).
    fn at(&self, addr: u64) -> Option<(u64, u64)> {
        let (&s, &(e, o)) = self.0.range(..=addr).next_back()?;
        (e > addr).then_some((e, o + (addr - s)))
    }

    /// The copied ranges within `[start, end)`, sorted, adjacent ones merged.
    fn within(&self, start: u64, end: u64) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        let first = self.0.range(..start).next_back().map(|(&s, &v)| (s, v));
        let rest = self.0.range(start..end).map(|(&s, &v)| (s, v));
        for (s, (e, _)) in first.into_iter().chain(rest) {
            let (a, b) = (s.max(start), e.min(end));
            if a >= b {
                continue;
            }
            match out.last_mut() {
                Some(l) if l.addr + l.len == a => l.len += b - a,
                _ => out.push(Range {
                    addr: a,
                    len: b - a,
                }),
            }
        }
        out
    }

    /// Start of the first copy after `addr`.
    fn next_after(&self, addr: u64) -> Option<u64> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.0
            .range((Excluded(addr), Unbounded))
            .next()
            .map(|(k, _)| *k)
    }
}

/// Sorted, disjoint ranges written since their last copy.
struct Written(Vec<Range>);

impl Written {
    /// End of the written range holding `addr`, if one does.
    fn at(&self, addr: u64) -> Option<u64> {
        let i = self.0.partition_point(|r| r.addr + r.len <= addr);
        self.0
            .get(i)
            .filter(|r| r.addr <= addr)
            .map(|r| r.addr + r.len)
    }

    /// Start of the first written range after `addr`.
    fn next_after(&self, addr: u64) -> Option<u64> {
        let i = self.0.partition_point(|r| r.addr <= addr);
        self.0.get(i).map(|r| r.addr)
    }
}

/// The memory plan of a frozen, pre-copied process.
pub struct FrozenPlan {
    pub vmas: Vec<Vma>,
    /// Ranges to copy now (and whether readable), in page-stream order from
    /// `copy_from` on.
    pub to_copy: Vec<(Range, bool)>,
    /// Where in the page stream they go: the end of the pre-copy.
    pub copy_from: u64,
    /// End of the page stream once they are copied.
    pub end: u64,
    /// Pages written since their last protection, sorted.
    pub written: Vec<Range>,
}

impl FrozenPlan {
    /// Pre-copy then post-copy: what private anonymous memory was written
    /// since its last copy is not copied now but left lazy (`Vma::lazy`),
    /// for the source to serve once the process runs at the destination;
    /// the rest still to copy (other kinds of memory, and the pages holding
    /// an address of `keep`: see memory::make_lazy) is laid out again from
    /// `copy_from`. Returns the lazy bytes.
    pub fn make_lazy(&mut self, keep: &[u64]) -> u64 {
        let mut lazy = 0;
        let mut to_copy = Vec::new();
        let mut next = self.copy_from;
        for v in &mut self.vmas {
            let anon = memory::lazy_able(v);
            let readable = v.prot & libc::PROT_READ as u32 != 0;
            let mut runs = Vec::new();
            for run in std::mem::take(&mut v.pages) {
                let len = run.nr_pages * PAGE_SIZE;
                // A run may start in the earlier copies and go on into the
                // fresh part (push_run merges them): cut it there.
                let (old, fresh) = if run.offset >= self.copy_from {
                    (0, len)
                } else if run.offset + len > self.copy_from {
                    let old = self.copy_from - run.offset;
                    (old, len - old)
                } else {
                    (len, 0)
                };
                if old > 0 {
                    push_run(&mut runs, run.addr, run.addr + old, run.offset);
                }
                if fresh == 0 {
                    continue;
                }
                let at = run.addr + old;
                let pieces = match anon {
                    true => memory::split_kept(at, fresh, keep),
                    false => vec![(at, fresh, true)],
                };
                for (at, len, copied) in pieces {
                    if copied {
                        to_copy.push((Range { addr: at, len }, readable));
                        push_run(&mut runs, at, at + len, next);
                        next += len;
                    } else {
                        lazy += len;
                        v.lazy.push(PageRun {
                            addr: at,
                            nr_pages: len / PAGE_SIZE,
                            offset: 0,
                        });
                    }
                }
            }
            v.pages = runs;
        }
        self.to_copy = to_copy;
        self.end = next;
        lazy
    }
}

/// One process being pre-copied.
pub struct Tracker {
    pub pid: i32,
    uffd: Uffd,
    registered: Vec<Range>,
    copies: Copies,
    /// The smaps entries of the survey (for their VmFlags).
    surveyed: Vec<MapEntry>,
    files: Vec<(PageFileInfo, PageSpan)>,
    /// End of the page stream written so far.
    end: u64,
    /// Rounds after the first copy.
    pub rounds: usize,
    /// Pages this process shared with its parent (tracked too) when both
    /// were protected: the same physical pages, copy-on-write since a
    /// fork (see [`memory::same_frames`]). Those neither wrote since stay
    /// shared after a restore (`Vma::inherited`).
    shared: Vec<Range>,
    /// Every page this process wrote since it was protected, as the
    /// rounds found them (their scans protect again what they report).
    written_since: Vec<Range>,
    /// Bytes copied and the time it took, over every copy: the rate at
    /// which this process's memory reaches the medium (the link, in a
    /// migration).
    copied: (u64, Duration),
    /// End of the page stream when this dump began: zero, or for a tracker
    /// kept from the previous dump ([`Tracking`]), the end of that dump's
    /// stream, whose files this one takes by reference.
    pub base: u64,
    /// The process's start time (/proc/PID/stat), to tell it from another
    /// process given the same PID later.
    start_time: u64,
}

/// The plan of a frozen process's parent, for the pages they share
/// ([`Tracker::plan_frozen`]).
pub struct ParentPlan<'a> {
    pub vmas: &'a [Vma],
    /// What the parent wrote since its last protection (before its child's
    /// survey of shared pages).
    pub written: &'a [Range],
}

/// The trackers of a tree, by PID, and how long the short stop took.
pub struct Precopy {
    pub trackers: HashMap<i32, Tracker>,
    pub stopped: Duration,
}

/// Pre-copies every process of the trees at `roots` that holds more than
/// [`EAGER_LIMIT`] of private memory. A process that cannot be pre-copied
/// (no userfaultfd, memory going away during the copy) is left out, its
/// page files discarded: the dump then copies it from the freeze on.
///
/// With `unconverged` (a migration whose --max-downtime lets what is
/// written last follow the process: DumpOptions::max_frozen_copy), a
/// process writing faster than it is copied keeps its tracker too.
pub fn run(
    roots: &[i32],
    writer: &mut ImageWriter,
    progress: &dyn Progress,
    unconverged: bool,
) -> Result<Precopy> {
    if !roots.iter().any(|&r| worth_it(r)) {
        return Ok(Precopy {
            trackers: HashMap::new(),
            stopped: Duration::ZERO,
        });
    }
    let t = Instant::now();
    let members = freeze_tree(roots, None)?;
    let mut fds = Vec::new();
    for m in &members {
        let Member::Live(f) = m else { continue };
        // A process whose main thread has exited is read through a live
        // thread only while frozen: no pre-copy (its memory is copied frozen).
        if !holds_enough(f.pid) || f.leader_exited.is_some() {
            continue;
        }
        match open_uffd(f) {
            Ok(Some(fd)) => fds.push((f.pid, fd)),
            Ok(None) => tracing::info!(pid = f.pid, "no userfaultfd: no pre-copy"),
            Err(e) => tracing::info!(pid = f.pid, "no pre-copy: {e}"),
        }
    }
    release_all(members)?;
    let stopped = t.elapsed();
    let mut trackers: HashMap<i32, Tracker> = HashMap::new();
    for (pid, fd) in fds {
        let mark = writer.mark();
        // Parents come first: a child's parent is tracked already, if it is.
        let parent = proc::status(pid)
            .ok()
            .map(|s| s.ppid)
            .filter(|p| trackers.contains_key(p));
        match Tracker::start(pid, fd, parent, writer, progress, unconverged) {
            Ok(Some(t)) => {
                trackers.insert(pid, t);
            }
            Ok(None) => writer.discard_since(mark)?,
            Err(e) => {
                tracing::info!(
                    pid,
                    "pre-copy given up, the memory is copied from the freeze on: {e}"
                );
                writer.discard_since(mark)?;
            }
        }
    }
    Ok(Precopy { trackers, stopped })
}

/// Page files in one process's stream at most before a full dump starts a
/// new stream ([`Tracker::worth_resuming`]).
const MAX_CHAIN_FILES: usize = 256;
/// Stale bytes per live byte in one process's stream at most before a full
/// dump starts a new one ([`Tracker::worth_resuming`]).
const STALE_PER_LIVE: u64 = 2;

/// The write tracking of a tree's processes kept armed after a dump
/// (`dump::dump_tracked`), for the next dump of the same tree to copy only
/// what was written since. Dropping it lifts the protection (the
/// descriptors close).
pub struct Tracking {
    trackers: HashMap<i32, Tracker>,
}

impl Tracking {
    pub(crate) fn new(trackers: HashMap<i32, Tracker>) -> Tracking {
        Tracking { trackers }
    }

    /// The processes tracked.
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.trackers.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Lifts the protection now (the processes may be running).
    pub fn lift(self) {
        for (_, t) in self.trackers {
            t.finish().1.lift();
        }
    }
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("pids", &self.pids())
            .finish()
    }
}

/// Takes up `tracking` (kept from the previous dump of the tree at
/// `roots`) for the next dump into `writer`: see [`Tracker::resume`].
/// `None` when it does not match the tree as it is now (a process gone,
/// new, or another with the same PID; a tree process holding enough memory
/// but not tracked), a tracker cannot go on, or a stream is due for
/// compaction: the protection is lifted, anything this did to `writer` is
/// undone, and the caller takes a full dump ([`run`]).
pub fn resume(
    tracking: Tracking,
    roots: &[i32],
    writer: &mut ImageWriter,
    progress: &dyn Progress,
) -> Result<Option<Precopy>> {
    let mut trackers = tracking.trackers;
    let tree = tree_of(roots);
    let mut why = None;
    for &pid in &tree {
        let tracked = trackers.get(&pid);
        let same = tracked.is_some_and(|t| start_time(pid).is_ok_and(|s| s == t.start_time));
        if tracked.is_some() && !same {
            why = Some(format!("process {pid} is not the one tracked"));
        } else if tracked.is_none() && holds_enough(pid) {
            why = Some(format!("process {pid} is not tracked"));
        } else if tracked.is_some_and(|t| !t.worth_resuming()) {
            why = Some(format!(
                "the page stream of process {pid} is due for compaction"
            ));
        }
    }
    if let Some(pid) = trackers.keys().find(|p| !tree.contains(p)) {
        why = Some(format!("tracked process {pid} left the tree"));
    }
    if let Some(why) = why {
        tracing::info!("a full dump: {why}");
        Tracking { trackers }.lift();
        return Ok(None);
    }
    let t = Instant::now();
    let mark = writer.mark();
    // The previous dump's page files go into this image by reference
    // (`writer`'s medium must share them, e.g. the chunk store), every
    // process's before any new file is made: new files are numbered after
    // them.
    let mut linked = Ok(());
    for t in trackers.values() {
        linked = t
            .files
            .iter()
            .try_for_each(|(info, _)| writer.link_page_file(info));
        if linked.is_err() {
            break;
        }
    }
    let mut ok = true;
    if let Err(e) = linked {
        tracing::info!("the previous page files cannot be taken, a full dump: {e}");
        ok = false;
    }
    for t in trackers.values_mut() {
        if !ok {
            break;
        }
        ok = match t.resume(writer, progress) {
            Ok(going_on) => going_on,
            Err(e) => {
                tracing::info!(pid = t.pid, "tracking given up, a full dump: {e}");
                false
            }
        };
    }
    if !ok {
        writer.discard_since(mark)?;
        Tracking { trackers }.lift();
        return Ok(None);
    }
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1e3,
        processes = trackers.len(),
        "tracking resumed"
    );
    Ok(Some(Precopy {
        trackers,
        stopped: Duration::ZERO,
    }))
}

/// The PIDs of the trees at `roots`, as they are now.
fn tree_of(roots: &[i32]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = roots.to_vec();
    while let Some(pid) = queue.pop() {
        if out.contains(&pid) || out.len() > 4096 {
            continue;
        }
        out.push(pid);
        queue.extend(godwit_sys::process::children(pid).unwrap_or_default());
    }
    out
}

/// The start time of process `pid` (clock ticks after boot).
fn start_time(pid: i32) -> Result<u64> {
    Ok(proc::stat(pid)
        .dumping(pid, "reading the process status")?
        .start_time)
}

/// Whether a process of the tree at `root` (as it looks now, running) holds
/// enough memory to pre-copy: if none does, the short stop is spared.
fn worth_it(root: i32) -> bool {
    let mut queue = vec![root];
    let mut seen = 0;
    while let Some(pid) = queue.pop() {
        if holds_enough(pid) {
            return true;
        }
        seen += 1;
        if seen > 4096 {
            return true;
        }
        queue.extend(godwit_sys::process::children(pid).unwrap_or_default());
    }
    false
}

/// Whether process `pid` holds more private memory than is worth a pre-copy.
fn holds_enough(pid: i32) -> bool {
    proc::status(pid).is_ok_and(|s| s.rss_anon > EAGER_LIMIT)
}

/// Opens a userfaultfd in frozen process `f` (see Remote::take_userfaultfd).
/// User-mode only: async write protection never hands a fault to the
/// descriptor, and so an unprivileged process may have one too.
fn open_uffd(f: &Frozen) -> Result<Option<OwnedFd>> {
    let (_, r) = crate::dump::injector(f)?;
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | uffd::USER_MODE_ONLY;
    r.take_userfaultfd(flags)
        .dumping(f.pid, "opening a userfaultfd")
}

fn sum(ranges: &[Range]) -> u64 {
    ranges.iter().map(|r| r.len).sum()
}

impl Tracker {
    /// Protects and copies the memory of running process `pid`, then copies
    /// again what it wrote meanwhile, a few rounds. `None` when it holds too
    /// little memory to be worth it, or writes so fast that the rounds do
    /// not converge (unless `unconverged`: then the freeze decides).
    fn start(
        pid: i32,
        fd: OwnedFd,
        parent: Option<i32>,
        writer: &mut ImageWriter,
        progress: &dyn Progress,
        unconverged: bool,
    ) -> Result<Option<Tracker>> {
        let stage = "pre-copying memory";
        let t = Instant::now();
        let uffd = Uffd::new(fd, uffd::FEATURE_WP_ASYNC).dumping(pid, stage)?;
        let maps = proc::maps(pid).dumping(pid, "reading the memory map")?;
        let (surveyed, vmas) = memory::survey_entries(pid, &maps)?;
        let surveyed_ms = t.elapsed().as_secs_f64() * 1e3;
        if memory::planned_bytes(&vmas) <= EAGER_LIMIT {
            return Ok(None);
        }
        let mut registered = Vec::new();
        let mut protect = Vec::new();
        for v in vmas.iter().filter(|v| cow_able(v)) {
            let len = v.end - v.start;
            match uffd.register(v.start, len, uffd::REGISTER_MODE_WP) {
                Ok(()) => {
                    registered.push(Range { addr: v.start, len });
                    protect.extend(v.pages.iter().map(|r| Range {
                        addr: r.addr,
                        len: r.nr_pages * PAGE_SIZE,
                    }));
                }
                Err(e) if e.errno() == Some(libc::EBUSY) => {
                    // Registered with another userfaultfd (a tracking kept
                    // for incremental checkpoints, or the program's own):
                    // its pages may be write-protected by that one, which
                    // the scans here cannot tell from pages unchanged since
                    // a copy. No pre-copy.
                    tracing::info!(
                        pid,
                        addr = v.start,
                        "memory tracked by another userfaultfd: no pre-copy"
                    );
                    return Ok(None);
                }
                Err(_) => {}
            }
        }
        write_protect_all(&uffd, &protect).dumping(pid, stage)?;
        let protected_ms = t.elapsed().as_secs_f64() * 1e3;
        // Protected: from now on what either writes shows in its tracking.
        let shared = match parent {
            Some(ppid) => memory::same_frames(pid, ppid, &registered)?,
            None => Vec::new(),
        };
        let mut tracker = Tracker {
            pid,
            uffd,
            registered,
            copies: Copies::default(),
            surveyed,
            files: Vec::new(),
            end: 0,
            rounds: 0,
            shared,
            written_since: Vec::new(),
            copied: (0, Duration::ZERO),
            base: 0,
            start_time: start_time(pid)?,
        };
        progress.stage("pre-copying memory", sum(&protect));
        tracker.copy(&protect, writer, progress)?;
        let first = t.elapsed();
        let pagemap = Pagemap::open(pid).dumping(pid, stage)?;
        let last = tracker.rounds(&pagemap, writer, progress)?;
        if last > NOT_CONVERGED && !unconverged {
            // It writes faster than it can be copied: what it writes until
            // the freeze would be copied while frozen. A copy-on-write
            // snapshot at the freeze bounds that better.
            tracing::debug!(
                pid,
                written = last,
                "pre-copy does not converge; a snapshot at the freeze instead"
            );
            return Ok(None);
        }
        tracing::debug!(
            pid,
            surveyed_ms,
            protected_ms,
            first_ms = first.as_secs_f64() * 1e3,
            ms = t.elapsed().as_secs_f64() * 1e3,
            rounds = tracker.rounds,
            bytes = tracker.end,
            "pre-copied"
        );
        Ok(Some(tracker))
    }

    /// Copies again, a few rounds, what the process wrote since its pages
    /// were last protected. Returns the bytes written during the last round
    /// (what is left to copy at the freeze).
    fn rounds(
        &mut self,
        pagemap: &Pagemap,
        writer: &mut ImageWriter,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let tracker = self;
        let mut last = u64::MAX;
        for _ in 0..MAX_ROUNDS {
            // The scan protects what it reports again: that must be copied
            // whatever happens next, or its changes would be lost.
            let written = tracker.scan_written(&pagemap)?;
            let bytes = sum(&written);
            if !tracker.shared.is_empty() {
                tracker.written_since = union(&tracker.written_since, &written);
            }
            if bytes == 0 {
                last = 0;
                break;
            }
            tracker.copy(&written, writer, progress)?;
            tracker.rounds += 1;
            let shrinking = bytes * 2 <= last;
            last = bytes;
            if bytes <= SMALL_ENOUGH || !shrinking {
                break;
            }
        }
        Ok(last)
    }

    /// Takes up a tracker kept from the previous dump of this process
    /// ([`Tracking`]) for the next one, its page files already taken into
    /// this image by reference (see [`resume`]): every private anonymous VMA of the process now is
    /// registered (new ones too; those already are stay as they are), and
    /// the rounds copy what was written since (the first one finds also the
    /// pages of new VMAs and those copied at the last freeze, never
    /// protected since). `Ok(false)`: this tracker cannot go on (a VMA
    /// cannot be registered, the process writes faster than it is copied);
    /// the caller takes a full dump.
    fn resume(&mut self, writer: &mut ImageWriter, progress: &dyn Progress) -> Result<bool> {
        let pid = self.pid;
        let stage = "pre-copying memory";
        self.base = self.end;
        self.rounds = 0;
        self.copied = (0, Duration::ZERO);
        // Pages shared with a parent are not followed across dumps.
        self.shared.clear();
        self.written_since.clear();
        let maps = proc::maps(pid).dumping(pid, "reading the memory map")?;
        let (surveyed, vmas) = memory::survey_entries(pid, &maps)?;
        let mut registered = Vec::new();
        let mut failed = None;
        for v in vmas.iter().filter(|v| cow_able(v)) {
            let len = v.end - v.start;
            match self.uffd.register(v.start, len, uffd::REGISTER_MODE_WP) {
                Ok(()) => registered.push(Range { addr: v.start, len }),
                // Another userfaultfd's (see Tracker::start).
                Err(e) if e.errno() == Some(libc::EBUSY) => return Ok(false),
                // Changed since the survey (moved, unmapped): not tracked;
                // its pages, never protected, are copied at the freeze.
                Err(e) => failed = Some((v.start, e)),
            }
        }
        if let Some((addr, e)) = failed {
            if registered.is_empty() {
                // Its memory went (exec): the descriptor's is not its own.
                tracing::info!(pid, addr, "tracking cannot go on: {e}");
                return Ok(false);
            }
            tracing::debug!(
                pid,
                addr,
                "a VMA changed since the survey, not tracked: {e}"
            );
        }
        self.registered = registered;
        self.surveyed = surveyed;
        progress.stage(stage, 0);
        let pagemap = Pagemap::open(pid).dumping(pid, stage)?;
        let last = self.rounds(&pagemap, writer, progress)?;
        tracing::debug!(
            pid,
            rounds = self.rounds,
            copied = self.end - self.base,
            linked = self.base,
            "resumed the tracking of the previous dump"
        );
        Ok(last <= NOT_CONVERGED)
    }

    /// Whether this kept tracker's stream is worth carrying on: it grows
    /// by what is written at every dump and holds stale copies (which a
    /// restore reads too); once they are more than twice the live ones (or
    /// the stream has many files), a full dump starts a new one.
    fn worth_resuming(&self) -> bool {
        let live: u64 = self.copies.0.iter().map(|(s, (e, _))| e - s).sum();
        let stale = self.end.saturating_sub(live);
        stale <= STALE_PER_LIVE * live && self.files.len() <= MAX_CHAIN_FILES
    }

    /// After a dump that keeps its tracking: the page files of this
    /// process's stream as the image lists them (`fresh`, the part copied
    /// at the freeze, appended), kept for the next dump.
    pub fn keep(&mut self, fresh: &[(PageFileInfo, PageSpan)]) -> Vec<(PageFileInfo, PageSpan)> {
        self.files.extend(fresh.iter().cloned());
        if let Some((_, span)) = self.files.last() {
            self.end = self.end.max(span.start + span.len);
        }
        self.files.clone()
    }

    /// Pages of the tracked VMAs written since they were last protected,
    /// protected again in the same walk.
    fn scan_written(&self, pagemap: &Pagemap) -> Result<Vec<Range>> {
        // Present (or swapped) pages only: in async mode a page never
        // populated, or released, counts as written too.
        let q = ScanQuery {
            flags: scan::WP_MATCHING,
            all_of: scan::WRITTEN,
            none_of: 0,
            any_of: scan::PRESENT | scan::SWAPPED,
            report: scan::WRITTEN,
        };
        let mut regions = Vec::new();
        for r in &self.registered {
            pagemap
                .scan(r.addr, r.addr + r.len, &q, &mut regions)
                .dumping(self.pid, "finding written pages")?;
        }
        Ok(regions.iter().map(PageRegion::range).collect())
    }

    /// Copies `ranges` (of the running process) to the end of the stream.
    fn copy(
        &mut self,
        ranges: &[Range],
        writer: &mut ImageWriter,
        progress: &dyn Progress,
    ) -> Result<()> {
        let t = Instant::now();
        let with: Vec<(Range, bool)> = ranges.iter().map(|r| (*r, true)).collect();
        // Memory it unmaps meanwhile is skipped (a hole of zeros in the
        // file): not recorded as copied, so the freeze copies what is there.
        let holes = std::sync::Mutex::new(Vec::new());
        let files = memory::write_ranges(
            self.pid,
            &with,
            writer,
            progress,
            &[],
            self.end,
            Some(&holes),
        )?;
        let mut holes = holes.into_inner().unwrap_or_default();
        holes.sort_by_key(|r| r.addr);
        let mut at = self.end;
        for r in ranges {
            self.copies.insert(r.addr, r.addr + r.len, at);
            at += r.len;
        }
        for h in &holes {
            self.copies.remove(h.addr, h.addr + h.len);
        }
        self.copied.0 += sum(ranges);
        self.copied.1 += t.elapsed();
        self.end = at;
        self.files.extend(files);
        Ok(())
    }

    /// The memory plan of the process, now frozen (its VMAs are `maps`):
    /// runs unchanged since their last copy point at it; the rest is listed
    /// in `to_copy`.
    pub fn plan_frozen(&self, maps: &[MapEntry], parent: Option<ParentPlan>) -> Result<FrozenPlan> {
        let pid = self.pid;
        let t = Instant::now();
        let entries = self.with_flags(maps)?;
        let pagemap = Pagemap::open(pid).dumping(pid, "opening the page map")?;
        // Two walks that report few pages, which is what makes them cheap
        // (about 0.5-0.8 ms per GiB each, against 3.5 for listing every
        // present page): pages written since they were last protected (or never
        // protected: new, moved, or in memory not tracked), and pages gone
        // (neither present nor swapped). A page present now is either
        // written or unchanged since its last copy: every protected page was
        // copied after it was protected.
        let written_q = ScanQuery {
            flags: 0,
            all_of: scan::WRITTEN,
            none_of: 0,
            // (a hole counts as written in async mode)
            any_of: scan::PRESENT | scan::SWAPPED,
            report: scan::WRITTEN,
        };
        let gone_q = ScanQuery {
            flags: 0,
            all_of: 0,
            none_of: scan::PRESENT | scan::SWAPPED,
            any_of: 0,
            report: scan::PRESENT,
        };
        let mut prefetched = memory::Prefetched::new();
        let mut written = Vec::new();
        let mut gone = Vec::new();
        let mut changed = Vec::new();
        for e in entries.iter().filter(|e| is_anon_private(pid, e)) {
            gone.clear();
            pagemap
                .scan(e.start, e.end, &gone_q, &mut gone)
                .dumping(pid, "scanning the page map")?;
            changed.clear();
            pagemap
                .scan(e.start, e.end, &written_q, &mut changed)
                .dumping(pid, "scanning the page map")?;
            let changed: Vec<Range> = changed.iter().map(PageRegion::range).collect();
            let copied = self.copies.within(e.start, e.end);
            let gone: Vec<Range> = gone.iter().map(PageRegion::range).collect();
            let present = union(&subtract(&copied, &gone), &changed);
            written.extend_from_slice(&changed);
            prefetched.insert(e.start, memory::Known::Present(present));
        }
        let scanned_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut vmas = memory::plan(pid, &entries, prefetched)?;
        let planned_ms = t.elapsed().as_secs_f64() * 1e3;
        let written = Written(written);
        let mut to_copy = Vec::new();
        let mut next = self.end;
        for v in &mut vmas {
            let scanned = matches!(
                VmaKind::try_from(v.kind),
                Ok(VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack)
            );
            let readable = v.prot & libc::PROT_READ as u32 != 0;
            let runs = std::mem::take(&mut v.pages);
            for run in runs {
                let end = run.addr + run.nr_pages * PAGE_SIZE;
                let mut at = run.addr;
                while at < end {
                    let (to, offset) = match clean_from(&self.copies, &written, scanned, at, end) {
                        Some(clean) => clean,
                        None => {
                            let to = dirty_until(&self.copies, &written, scanned, at, end);
                            to_copy.push((
                                Range {
                                    addr: at,
                                    len: to - at,
                                },
                                readable,
                            ));
                            let offset = next;
                            next += to - at;
                            (to, offset)
                        }
                    };
                    push_run(&mut v.pages, at, to, offset);
                    at = to;
                }
            }
        }
        let inherited = match parent {
            Some(parent) => self.inherit(&mut vmas, &parent, &written.0),
            None => 0,
        };
        tracing::debug!(
            pid,
            scanned_ms,
            planned_ms,
            ms = t.elapsed().as_secs_f64() * 1e3,
            to_copy = sum(&to_copy.iter().map(|x| x.0).collect::<Vec<_>>()),
            inherited,
            "planned from the pre-copy"
        );
        Ok(FrozenPlan {
            vmas,
            to_copy,
            copy_from: self.end,
            end: next,
            written: written.0,
        })
    }

    /// Pages of `vmas` (planned, pointing at copies) that are still the
    /// parent's own: shared when this process was protected, written by
    /// neither since (nor released: present in both plans, in copies made
    /// before the freeze), in a VMA with a twin in the parent. They become
    /// `Vma::inherited` instead of pointing at their copy: the restore forks
    /// this process once its parent holds them, and they are shared again.
    /// Returns their bytes.
    fn inherit(&self, vmas: &mut [Vma], parent: &ParentPlan, written_now: &[Range]) -> u64 {
        if self.shared.is_empty() {
            return 0;
        }
        let written = union(&union(&self.written_since, written_now), parent.written);
        let ranges = |runs: &[PageRun]| -> Vec<Range> {
            runs.iter()
                .map(|r| Range {
                    addr: r.addr,
                    len: r.nr_pages * PAGE_SIZE,
                })
                .collect()
        };
        let mut total = 0;
        for v in vmas.iter_mut() {
            let Some(twin) = memory::twin_of(parent.vmas, v) else {
                continue;
            };
            // Only what points at a copy made before the freeze (a run may
            // go on into this freeze's part of the stream: cut there).
            let mine: Vec<Range> = v
                .pages
                .iter()
                .filter(|r| r.offset < self.end)
                .map(|r| Range {
                    addr: r.addr,
                    len: (r.nr_pages * PAGE_SIZE).min(self.end - r.offset),
                })
                .collect();
            // The parent's pages: its own, and those it inherits in turn
            // (a grandchild shares them through it).
            let theirs = union(&ranges(&twin.pages), &ranges(&twin.inherited));
            let shared = intersect(&intersect(&self.shared, &mine), &theirs);
            let keep = subtract(&shared, &written);
            if keep.is_empty() {
                continue;
            }
            let mut runs = Vec::new();
            for run in std::mem::take(&mut v.pages) {
                let r = Range {
                    addr: run.addr,
                    len: run.nr_pages * PAGE_SIZE,
                };
                for piece in subtract(&[r], &keep) {
                    let offset = run.offset + (piece.addr - run.addr);
                    push_run(&mut runs, piece.addr, piece.addr + piece.len, offset);
                }
            }
            v.pages = runs;
            for k in &keep {
                total += k.len;
                v.inherited.push(PageRun {
                    addr: k.addr,
                    nr_pages: k.len / PAGE_SIZE,
                    offset: 0,
                });
            }
        }
        total
    }

    /// How long `bytes` take to copy at the rate this process's copies
    /// went (zero before any copy).
    pub fn copy_time(&self, bytes: u64) -> Duration {
        let (done, took) = self.copied;
        if done == 0 {
            return Duration::ZERO;
        }
        took.mul_f64(bytes as f64 / done as f64)
    }

    /// `maps` with the surveyed VmFlags, if every VMA is as surveyed; else
    /// smaps, read now.
    fn with_flags(&self, maps: &[MapEntry]) -> Result<Vec<MapEntry>> {
        match memory::flags_as_surveyed(&self.surveyed, maps) {
            Some(entries) => Ok(entries),
            None => {
                tracing::debug!(
                    pid = self.pid,
                    "the memory map changed since the pre-copy; reading smaps"
                );
                proc::smaps(self.pid).dumping(self.pid, "reading the memory map")
            }
        }
    }

    /// The page files written, in stream order, and the write protection
    /// still on the process's memory: lift it once the process runs again
    /// ([`Protection::lift`]), not while it is frozen (unregistering walks
    /// the page tables once more: 20–60 ms per GiB), or drop it after the
    /// process is ended.
    pub fn finish(self) -> (Vec<(PageFileInfo, PageSpan)>, Protection) {
        let protection = Protection {
            pid: self.pid,
            uffd: self.uffd,
            registered: self.registered,
        };
        (self.files, protection)
    }
}

/// The async write protection a pre-copy left on a process's memory. It
/// never stops the process (a write just lifts a page's protection), but
/// the VMAs stay registered until lifted. Dropped without [`lift`]: the
/// descriptor closes, which unregisters every VMA (the same walk; for an
/// ended process, nothing).
///
/// [`lift`]: Protection::lift
pub struct Protection {
    pid: i32,
    uffd: Uffd,
    registered: Vec<Range>,
}

impl Protection {
    /// Unregisters the VMAs (the process may be running).
    pub fn lift(self) {
        for r in &self.registered {
            if let Err(e) = self.uffd.unregister(r.addr, r.len) {
                // Gone or changed since; closing the descriptor lifts the rest.
                tracing::debug!(pid = self.pid, addr = r.addr, "unregistering: {e}");
            }
        }
    }
}

/// If the page at `at` is unchanged since its last copy: the end of the
/// stretch of such pages from `at` (at most `end`) and where its copy is.
/// Pages of memory that is not `scanned` never are.
fn clean_from(
    copies: &Copies,
    written: &Written,
    scanned: bool,
    at: u64,
    end: u64,
) -> Option<(u64, u64)> {
    if !scanned || written.at(at).is_some() {
        return None;
    }
    let (copy_end, offset) = copies.at(at)?;
    let to = end
        .min(copy_end)
        .min(written.next_after(at).unwrap_or(u64::MAX));
    Some((to, offset))
}

/// The end of the stretch from `at` (at most `end`) of pages that must be
/// copied now.
fn dirty_until(copies: &Copies, written: &Written, scanned: bool, at: u64, end: u64) -> u64 {
    if !scanned {
        return end;
    }
    let mut cur = at;
    while cur < end && clean_from(copies, written, scanned, cur, end).is_none() {
        cur = match written.at(cur) {
            Some(w_end) => w_end,
            None => copies.next_after(cur).unwrap_or(end),
        }
        .min(end);
    }
    cur
}

/// `a` without `b` (both sorted and disjoint).
fn subtract(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        let (mut at, end) = (r.addr, r.addr + r.len);
        while j < b.len() && b[j].addr + b[j].len <= at {
            j += 1;
        }
        let mut k = j;
        while at < end {
            match b.get(k) {
                Some(x) if x.addr < end => {
                    if x.addr > at {
                        out.push(Range {
                            addr: at,
                            len: x.addr - at,
                        });
                    }
                    at = at.max(x.addr + x.len);
                    k += 1;
                }
                _ => {
                    out.push(Range {
                        addr: at,
                        len: end - at,
                    });
                    at = end;
                }
            }
        }
    }
    out
}

/// What `a` and `b` (both sorted and disjoint) have in common.
fn intersect(a: &[Range], b: &[Range]) -> Vec<Range> {
    subtract(a, &subtract(a, b))
}

/// `a` and `b` together (both sorted and disjoint), sorted, overlapping and
/// adjacent ranges merged.
fn union(a: &[Range], b: &[Range]) -> Vec<Range> {
    let mut all: Vec<Range> = a.iter().chain(b).copied().collect();
    all.sort_by_key(|r| r.addr);
    let mut out: Vec<Range> = Vec::with_capacity(all.len());
    for r in all {
        match out.last_mut() {
            Some(l) if l.addr + l.len >= r.addr => {
                let end = (l.addr + l.len).max(r.addr + r.len);
                l.len = end - l.addr;
            }
            _ => out.push(r),
        }
    }
    out
}

/// Appends run `[from, to)` at `offset`, merged into the last run if it
/// continues it both in memory and in the stream.
fn push_run(runs: &mut Vec<PageRun>, from: u64, to: u64, offset: u64) {
    if let Some(last) = runs.last_mut() {
        if last.addr + last.nr_pages * PAGE_SIZE == from
            && last.offset + last.nr_pages * PAGE_SIZE == offset
        {
            last.nr_pages += (to - from) / PAGE_SIZE;
            return;
        }
    }
    runs.push(PageRun {
        addr: from,
        nr_pages: (to - from) / PAGE_SIZE,
        offset,
    });
}

fn is_anon_private(pid: i32, e: &MapEntry) -> bool {
    matches!(
        memory::kind_of(pid, e),
        Ok(VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn later_copies_replace_earlier_ones() {
        let mut c = Copies::default();
        c.insert(0, 10 * P, 0);
        c.insert(3 * P, 5 * P, 100 * P);
        assert_eq!(c.at(0), Some((3 * P, 0)));
        assert_eq!(c.at(4 * P), Some((5 * P, 101 * P)));
        assert_eq!(c.at(5 * P), Some((10 * P, 5 * P)));
        assert_eq!(c.at(9 * P), Some((10 * P, 9 * P)));
        assert_eq!(c.at(10 * P), None);
        c.insert(2 * P, 12 * P, 200 * P);
        assert_eq!(c.at(P), Some((2 * P, P)));
        assert_eq!(c.at(11 * P), Some((12 * P, 209 * P)));
        assert_eq!(c.0.len(), 2);
        assert_eq!(c.next_after(0), Some(2 * P));
        assert_eq!(c.next_after(2 * P), None);
        // A hole in the middle of a copy.
        c.remove(5 * P, 6 * P);
        assert_eq!(c.at(4 * P), Some((5 * P, 202 * P)));
        assert_eq!(c.at(5 * P), None);
        assert_eq!(c.at(6 * P), Some((12 * P, 204 * P)));
    }

    fn rs(v: &[(u64, u64)]) -> Vec<Range> {
        v.iter()
            .map(|&(a, b)| Range {
                addr: a * P,
                len: (b - a) * P,
            })
            .collect()
    }

    #[test]
    fn present_pages_from_copies_gone_and_written() {
        let copied = rs(&[(0, 10), (20, 30)]);
        let gone = rs(&[(2, 3), (9, 21), (25, 26), (40, 50)]);
        assert_eq!(
            subtract(&copied, &gone),
            rs(&[(0, 2), (3, 9), (21, 25), (26, 30)])
        );
        assert_eq!(subtract(&copied, &[]), copied);
        assert_eq!(subtract(&[], &gone), vec![]);
        let written = rs(&[(2, 3), (12, 13), (30, 31)]);
        assert_eq!(
            union(&subtract(&copied, &gone), &written),
            rs(&[(0, 9), (12, 13), (21, 25), (26, 31)])
        );
        let mut c = Copies::default();
        c.insert(0, 4 * P, 0);
        c.insert(4 * P, 8 * P, 100 * P);
        c.insert(9 * P, 12 * P, 50 * P);
        assert_eq!(c.within(2 * P, 10 * P), rs(&[(2, 8), (9, 10)]));
    }

    #[test]
    fn runs_split_into_copied_and_to_copy() {
        // Pages 0..8 copied at 0; page 3 written since; pages 8..10 never copied.
        let mut copies = Copies::default();
        copies.insert(0, 8 * P, 0);
        let c = &copies;
        let w = &Written(vec![Range {
            addr: 3 * P,
            len: P,
        }]);
        assert_eq!(clean_from(c, w, true, 0, 10 * P), Some((3 * P, 0)));
        assert_eq!(clean_from(c, w, true, 3 * P, 10 * P), None);
        assert_eq!(dirty_until(c, w, true, 3 * P, 10 * P), 4 * P);
        assert_eq!(clean_from(c, w, true, 4 * P, 10 * P), Some((8 * P, 4 * P)));
        assert_eq!(dirty_until(c, w, true, 8 * P, 10 * P), 10 * P);
        // A run ending inside a copy stops there.
        assert_eq!(clean_from(c, w, true, 5 * P, 6 * P), Some((6 * P, 5 * P)));
        // Written pages next to a page never copied: one stretch to copy.
        let w2 = &Written(vec![Range {
            addr: 6 * P,
            len: 2 * P,
        }]);
        assert_eq!(dirty_until(c, w2, true, 6 * P, 10 * P), 10 * P);
        // Not scanned (memory that is not tracked): everything is copied now.
        assert_eq!(clean_from(c, w, false, 0, 10 * P), None);
        assert_eq!(dirty_until(c, w, false, 0, 10 * P), 10 * P);
        let mut runs = Vec::new();
        push_run(&mut runs, 0, 3 * P, 0);
        push_run(&mut runs, 3 * P, 4 * P, 8 * P);
        push_run(&mut runs, 4 * P, 8 * P, 4 * P);
        push_run(&mut runs, 8 * P, 10 * P, 9 * P);
        assert_eq!(runs.len(), 4);
        push_run(&mut runs, 10 * P, 11 * P, 11 * P);
        assert_eq!(runs.len(), 4, "continues the last run in memory and stream");
        assert_eq!(runs[3].nr_pages, 3);
    }
}

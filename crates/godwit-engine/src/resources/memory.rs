//! Memory: every VMA of the process and the pages it holds.
//!
//! Dump: /proc/PID/smaps gives the VMAs, /proc/PID/pagemap which pages exist;
//! only those are stored (for private file mappings, only the pages the process
//! modified). Restore: each VMA is mapped at its address by injected mmap, the
//! pages are written with process_vm_writev, then protections and advice are
//! set as they were.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::{Call, Remote};
use crate::resources::sysv;
use crate::schema::{FdKind, PageRun, PageSpan, Vma, VmaKind};
use crate::snapshot::Snapshot;
use crate::Progress;
use godwit_image::PageFileWriter;
use godwit_sys::mem::{self, pm, Pagemap, ProcMem, Range};
use godwit_sys::proc::MapEntry;
use godwit_sys::uffd::{self, Uffd};
use godwit_sys::PAGE_SIZE;
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

/// Bytes read from the process per batch while dumping.
const BATCH: usize = 1 << 20;

pub(crate) fn kind_of(pid: i32, e: &MapEntry) -> Result<VmaKind> {
    let name = e.name.as_str();
    if e.has_flag("ht") {
        // hugetlb memory. Private anonymous: its own kind. SysV segments
        // (SHM_HUGETLB): attaches, as below. Shared anonymous, memfds and
        // deleted files: shmem objects, as below (made again as hugetlb
        // memfds). Files on a hugetlbfs mount: file mappings, as below.
        if !e.shared && name == "/anon_hugepage (deleted)" {
            return Ok(VmaKind::AnonHugetlb);
        }
    }
    if sysv::is_attach(e) {
        return Ok(VmaKind::SysvShm);
    }
    Ok(match name {
        "[heap]" => VmaKind::Heap,
        "[stack]" => VmaKind::Stack,
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        "/dev/zero (deleted)" if e.shared => VmaKind::AnonShared,
        "" if e.shared => VmaKind::AnonShared,
        "" => VmaKind::AnonPrivate,
        n if n.starts_with("[anon:") => VmaKind::AnonPrivate,
        // The ring of an AIO context (io_setup): an internal file of the
        // kernel (device 0:N). Its kernel side (requests in flight, the
        // completion position) cannot be read from outside the process.
        "/[aio] (deleted)" | "[aio]" if e.shared && e.dev_major == 0 => {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "the AIO context {:#x} (io_setup; its event ring is mapped at {:#x}-{:#x}): requests in flight and the kernel's completion position cannot be saved",
                    e.start, e.start, e.end
                ),
            })
        }
        // Shared mappings of a deleted file (POSIX semaphores and shm that
        // were unlinked, memfds, and the memfds an earlier restore made):
        // kept like shared anonymous memory, by their contents.
        n if e.shared && n.ends_with(" (deleted)") && (n.starts_with('/') || n.starts_with("/memfd:")) => {
            VmaKind::AnonShared
        }
        // Private mappings of a memfd or of a deleted file: mapped again
        // from the memfd made again (Vma::shmem_id) or from the file
        // recreated for a descriptor of the process (Vma::deleted_node).
        n if !e.shared && n.starts_with('/') && n.ends_with(" (deleted)") => VmaKind::FilePrivate,
        n if n.starts_with('/') && !n.ends_with(" (deleted)") => {
            if e.shared {
                VmaKind::FileShared
            } else {
                VmaKind::FilePrivate
            }
        }
        n => {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "the memory mapping {:#x}-{:#x} of {n:?} (a private mapping of a deleted file or memfd)",
                    e.start, e.end
                ),
            })
        }
    })
}

/// VmFlags of an ordinary mapping that the restore cannot give back: the
/// dump is refused, naming the area and the flag, rather than the state
/// silently lost. (Advice and locks the restore sets again: see
/// [`advice_of`] and [`restore`]; flags that follow from how the area is
/// mapped, such as rd, wr, sh, gd, ac, nr, are given back by the mmap.)
const UNRESTORABLE: &[(&str, &str)] = &[
    ("sl", "sealed (mseal)"),
    ("ss", "a shadow stack"),
    ("ui", "registered for minor faults on a userfaultfd"),
];

fn check_vm_flags(pid: i32, e: &MapEntry, kind: VmaKind) -> Result<()> {
    if matches!(
        kind,
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
    ) {
        // The kernel's own mappings (which it may seal itself).
        return Ok(());
    }
    match UNRESTORABLE.iter().find(|(f, _)| e.has_flag(f)) {
        Some((flag, what)) => Err(EngineError::Unsupported {
            pid,
            what: format!(
                "the memory mapping {:#x}-{:#x} ({}), which is {what} (VmFlags \"{flag}\")",
                e.start,
                e.end,
                if e.name.is_empty() {
                    "anonymous"
                } else {
                    &e.name
                }
            ),
        }),
        None => Ok(()),
    }
}

fn prot_of(e: &MapEntry) -> u32 {
    let mut p = 0;
    if e.read {
        p |= libc::PROT_READ;
    }
    if e.write {
        p |= libc::PROT_WRITE;
    }
    if e.exec {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

fn dev_of(st_dev: u64) -> (u32, u32) {
    let major = ((st_dev >> 8) & 0xfff) | ((st_dev >> 32) & !0xfff);
    let minor = (st_dev & 0xff) | ((st_dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// Which pages of a VMA of this kind hold data that must be stored.
fn wanted(kind: VmaKind, entry: u64) -> bool {
    match kind {
        VmaKind::AnonPrivate
        | VmaKind::Heap
        | VmaKind::Stack
        | VmaKind::AnonShared
        | VmaKind::AnonHugetlb => entry & (pm::PRESENT | pm::SWAPPED) != 0,
        // Private file pages the process wrote to are anonymous copies.
        VmaKind::FilePrivate => {
            (entry & pm::PRESENT != 0 && entry & pm::FILE_OR_SHARED == 0)
                || entry & pm::SWAPPED != 0
        }
        _ => false,
    }
}

/// Plans the memory of a frozen process whose /proc/PID/maps is `maps`:
/// smaps (for the VmFlags) and the page map each walk the page tables (about
/// 10 ms per GiB each), so they are read by two threads.
///
/// Calls injected meanwhile may map and unmap a scratch area, which smaps
/// then shows, alone or merged into a neighbour: the plan covers exactly
/// the VMAs of `maps`, each with the VmFlags of the smaps VMA holding it.
pub fn survey(pid: i32, maps: &[MapEntry]) -> Result<Vec<Vma>> {
    survey_sharing(pid, maps, None, None)
}

/// [`survey`] of a process whose parent (frozen too, and planned already)
/// is `parent`: pages it still shares with it copy-on-write are not stored
/// but listed as inherited (see [`ParentMemory`]). With `frames`, the page
/// map entries of its own shareable VMAs are kept there, for its children.
pub fn survey_sharing(
    pid: i32,
    maps: &[MapEntry],
    parent: Option<&ParentMemory>,
    frames: Option<&mut Frames>,
) -> Result<Vec<Vma>> {
    let (smaps, prefetched) = read_smaps_and_pagemap(pid, maps);
    let smaps = smaps.dumping(pid, "reading the memory map")?;
    let entries = with_flags_of(pid, maps, &smaps)?;
    plan_sharing(pid, &entries, prefetched?, parent, frames)
}

/// The page map entries of a process's shareable VMAs (by start) as they
/// were when it was planned, before its pages were copied: the copy itself
/// (process_vm_readv pins the pages it reads, and the kernel gives a
/// process its own copy of an anonymous page shared with others before
/// pinning it) leaves the parent with pages of its own, so its children's
/// are compared with these.
#[derive(Default)]
pub struct Frames(HashMap<u64, Vec<u64>>);

/// The parent of a process being planned, frozen and planned already.
/// A private anonymous VMA of the child with the same bounds as one of the
/// parent's (a mapping inherited at fork, or one that ended up like it),
/// both without lazy pages and with the same MADV_HUGEPAGE, may hold pages
/// that are the parent's own physical pages (same PFN in both page maps:
/// shared copy-on-write since the fork, never written by either). Those
/// are not stored for the child: they are `Vma::inherited`, and the
/// restore forks the child from its parent once the parent's memory is
/// in place, so they are shared again.
pub struct ParentMemory<'a> {
    pub vmas: &'a [Vma],
    pub frames: &'a Frames,
}

impl ParentMemory<'_> {
    /// The parent's VMA this child VMA may share pages with.
    fn twin(&self, v: &Vma) -> Option<&Vma> {
        twin_of(self.vmas, v)
    }
}

/// The VMA of `parent_vmas` (a parent's, sorted) that child VMA `v` may
/// share pages with after a restore: same bounds, both private anonymous
/// without lazy pages, the same MADV_HUGEPAGE.
pub(crate) fn twin_of<'a>(parent_vmas: &'a [Vma], v: &Vma) -> Option<&'a Vma> {
    let i = parent_vmas.partition_point(|p| p.start < v.start);
    let p = parent_vmas.get(i)?;
    (p.start == v.start
        && p.end == v.end
        && shares_pages(p)
        && shares_pages(v)
        && wants_thp(p) == wants_thp(v))
    .then_some(p)
}

/// The pages within `ranges` that process `pid` and its parent `ppid` both
/// map to the same physical page (present in both, same frame number):
/// shared copy-on-write since a fork and written by neither since. Both
/// run: a page either writes after its entry was read here is a page it
/// wrote, which its write tracking reports. Nothing without the frame
/// numbers (only root reads them).
pub fn same_frames(pid: i32, ppid: i32, ranges: &[Range]) -> Result<Vec<Range>> {
    let mine = Pagemap::open(pid).dumping(pid, "opening the page map")?;
    let theirs = Pagemap::open(ppid).dumping(ppid, "opening the page map")?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut out: Vec<Range> = Vec::new();
    for r in ranges {
        // The parent's first: a page it writes after this read shows in
        // its tracking; one the child writes after its own read, in the
        // child's.
        a.clear();
        b.clear();
        if theirs.read(r.addr, r.addr + r.len, &mut b).is_err() {
            continue;
        }
        mine.read(r.addr, r.addr + r.len, &mut a)
            .dumping(pid, "reading the page map")?;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x & pm::PRESENT == 0 || y & pm::PRESENT == 0 || pfn(*x) == 0 || pfn(*x) != pfn(*y) {
                continue;
            }
            let addr = r.addr + i as u64 * PAGE_SIZE;
            match out.last_mut() {
                Some(l) if l.addr + l.len == addr => l.len += PAGE_SIZE,
                _ => out.push(Range {
                    addr,
                    len: PAGE_SIZE,
                }),
            }
        }
    }
    Ok(out)
}

/// A VMA of a kind whose pages a fork child can share with its parent
/// after restore.
fn shares_pages(v: &Vma) -> bool {
    matches!(
        kind(v),
        VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack
    ) && v.lazy.is_empty()
}

/// The page frame number of a page map entry (0 unless root reads it).
fn pfn(entry: u64) -> u64 {
    entry & ((1 << 55) - 1)
}

/// `maps` with the VmFlags of the `smaps` VMA that holds each one.
fn with_flags_of(pid: i32, maps: &[MapEntry], smaps: &[MapEntry]) -> Result<Vec<MapEntry>> {
    maps.iter()
        .map(|e| {
            let i = smaps.partition_point(|s| s.end <= e.start);
            match smaps.get(i) {
                Some(s) if s.start <= e.start && e.end <= s.end => Ok(MapEntry {
                    vm_flags: s.vm_flags.clone(),
                    ..e.clone()
                }),
                _ => Err(EngineError::Sys {
                    pid,
                    stage: "reading the memory map",
                    source: godwit_sys::SysError::Proc {
                        path: format!("{}/smaps", godwit_sys::proc::dir(pid)),
                        detail: format!(
                            "the mapping {:#x}-{:#x} changed while the process was stopped",
                            e.start, e.end
                        ),
                    },
                }),
            }
        })
        .collect()
}

/// `maps` (read now) with the VmFlags of `surveyed` (smaps read earlier,
/// while the process ran), if every VMA is as it was surveyed (same bounds,
/// protection, sharing, file and name): None if any changed, for smaps to
/// be read again. Reading smaps walks every page table; this does not.
/// (A madvise or mlock over a whole VMA between the survey and the freeze
/// changes its flags without changing anything compared here: the survey
/// is taken just before the freeze.)
pub fn flags_as_surveyed(surveyed: &[MapEntry], maps: &[MapEntry]) -> Option<Vec<MapEntry>> {
    let by_start: HashMap<u64, &MapEntry> = surveyed.iter().map(|e| (e.start, e)).collect();
    let same = |a: &MapEntry, b: &MapEntry| {
        (
            a.end, a.read, a.write, a.exec, a.shared, a.offset, a.inode, &a.name,
        ) == (
            b.end, b.read, b.write, b.exec, b.shared, b.offset, b.inode, &b.name,
        )
    };
    maps.iter()
        .map(|e| match by_start.get(&e.start) {
            Some(s) if same(s, e) => Some(MapEntry {
                vm_flags: s.vm_flags.clone(),
                ..e.clone()
            }),
            _ => None,
        })
        .collect()
}

/// The pages present (or swapped out) in each private anonymous VMA of
/// `entries`, one PAGEMAP_SCAN per VMA: the scan reports runs of pages, so
/// it costs a page-table walk (about 1 ms per GiB here), not an entry per
/// page read and parsed as the page map needs.
pub fn scan_present(pid: i32, entries: &[MapEntry]) -> Result<Prefetched> {
    use godwit_sys::mem::{scan, PageRegion, ScanQuery};
    let pagemap = Pagemap::open(pid).dumping(pid, "opening the page map")?;
    let q = ScanQuery {
        flags: 0,
        all_of: 0,
        none_of: 0,
        any_of: scan::PRESENT | scan::SWAPPED,
        report: scan::PRESENT | scan::SWAPPED,
    };
    let mut out = Prefetched::new();
    let mut found = Vec::new();
    for e in entries.iter().filter(|e| {
        matches!(
            kind_of(pid, e),
            Ok(VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack)
        )
    }) {
        found.clear();
        pagemap
            .scan(e.start, e.end, &q, &mut found)
            .dumping(pid, "scanning the page map")?;
        let mut present: Vec<Range> = Vec::with_capacity(found.len());
        for r in found.iter().map(PageRegion::range) {
            // Present and swapped pages come as separate regions: joined.
            match present.last_mut() {
                Some(last) if last.addr + last.len == r.addr => last.len += r.len,
                _ => present.push(r),
            }
        }
        out.insert(e.start, Known::Present(present));
    }
    Ok(out)
}

/// smaps, and the page map of `maps` read alongside by a second thread.
fn read_smaps_and_pagemap(
    pid: i32,
    maps: &[MapEntry],
) -> (godwit_sys::Result<Vec<MapEntry>>, Result<Prefetched>) {
    std::thread::scope(|s| {
        let prefetched = s.spawn(|| prefetch_pagemap(pid, maps));
        let smaps = godwit_sys::proc::smaps(pid);
        let prefetched = prefetched.join().unwrap_or_else(|_| Ok(Default::default()));
        (smaps, prefetched)
    })
}

/// [`survey`], also returning the smaps entries the plan was made from.
pub fn survey_entries(pid: i32, maps: &[MapEntry]) -> Result<(Vec<MapEntry>, Vec<Vma>)> {
    let (smaps, prefetched) = read_smaps_and_pagemap(pid, maps);
    let smaps = smaps.dumping(pid, "reading the memory map")?;
    let vmas = plan(pid, &smaps, prefetched?)?;
    Ok((smaps, vmas))
}

/// What is known ahead of [`plan`] about the pages of VMAs, by VMA start.
pub type Prefetched = HashMap<u64, Known>;

/// The pages of one VMA, known ahead of [`plan`].
pub enum Known {
    /// Its page map entries, one per page (see [`prefetch_pagemap`]).
    Entries(Vec<u64>),
    /// The ranges of pages to store, sorted and disjoint (crate::precopy).
    Present(Vec<Range>),
}

/// Reads the page map entries of every private mapping in `maps` (which
/// need no VmFlags), so that this page-table walk can run alongside the
/// one reading smaps; [`plan`] then takes them from here.
pub fn prefetch_pagemap(pid: i32, maps: &[MapEntry]) -> Result<Prefetched> {
    let pagemap = Pagemap::open(pid).dumping(pid, "opening the page map")?;
    let mut out = HashMap::new();
    for e in maps
        .iter()
        .filter(|e| !e.shared && !e.name.starts_with('['))
    {
        let mut entries = Vec::new();
        pagemap
            .read(e.start, e.end, &mut entries)
            .dumping(pid, "reading the page map")?;
        out.insert(e.start, Known::Entries(entries));
    }
    Ok(out)
}

/// Describes every VMA (from smaps: VmFlags needed) and decides which pages
/// to store, assigning each run its place in the page file (in address
/// order, back to back). Page map entries come from `prefetched` where it
/// has them for a VMA of the same size, else are read now.
pub fn plan(pid: i32, maps: &[MapEntry], prefetched: Prefetched) -> Result<Vec<Vma>> {
    plan_sharing(pid, maps, prefetched, None, None)
}

/// [`plan`], leaving out the pages shared with `parent` (see
/// [`ParentMemory`]).
pub fn plan_sharing(
    pid: i32,
    maps: &[MapEntry],
    mut prefetched: Prefetched,
    parent: Option<&ParentMemory>,
    mut frames: Option<&mut Frames>,
) -> Result<Vec<Vma>> {
    let pagemap = Pagemap::open(pid).dumping(pid, "opening the page map")?;
    let mut out = Vec::with_capacity(maps.len());
    let mut offset = 0u64;
    let mut entries = Vec::new();
    for e in maps {
        let kind = kind_of(pid, e)?;
        check_vm_flags(pid, e, kind)?;
        let mut vma = Vma {
            start: e.start,
            end: e.end,
            prot: prot_of(e),
            kind: kind as i32,
            pgoff: e.offset,
            vm_flags: e.vm_flags.clone(),
            ..Default::default()
        };
        if e.has_flag("ht") {
            vma.huge_page_size = huge_page_size_of(pid, e)?;
        }
        if kind == VmaKind::AnonShared {
            // Unique per object: device and inode.
            vma.shmem_id = shmem_id(e.dev_major, e.dev_minor, e.inode);
            let size = std::fs::metadata(format!(
                "{}/map_files/{:x}-{:x}",
                godwit_sys::proc::dir(pid),
                e.start,
                e.end
            ))
            .map(|m| m.size())
            .unwrap_or(0);
            vma.shmem_size = size.max(e.offset + e.len());
        }
        if kind == VmaKind::SysvShm {
            sysv::describe_attach(pid, e, &mut vma)?;
        }
        let deleted = kind == VmaKind::FilePrivate && e.name.ends_with(" (deleted)");
        if deleted {
            describe_deleted_private(pid, e, &mut vma)?;
        } else if matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared) {
            let md = std::fs::metadata(&e.name).map_err(|err| EngineError::Unsupported {
                pid,
                what: format!("the mapped file {} cannot be opened ({err})", e.name),
            })?;
            if md.ino() != e.inode || dev_of(md.dev()) != (e.dev_major, e.dev_minor) {
                return Err(EngineError::Unsupported {
                    pid,
                    what: format!(
                        "the mapped file {} was replaced by another file with the same name",
                        e.name
                    ),
                });
            }
            vma.path = e.name.clone();
            vma.file_size = md.size();
            vma.file_mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        }
        // Shared memory is stored by its object's contents (collect_shmem).
        let may_have_pages = matches!(
            kind,
            VmaKind::AnonPrivate
                | VmaKind::Heap
                | VmaKind::Stack
                | VmaKind::FilePrivate
                | VmaKind::AnonHugetlb
        );
        if may_have_pages {
            entries.clear();
            match prefetched.remove(&e.start) {
                Some(Known::Present(ranges)) => {
                    for r in ranges {
                        let (a, b) = (r.addr.max(e.start), (r.addr + r.len).min(e.end));
                        if a < b {
                            vma.pages.push(PageRun {
                                addr: a,
                                nr_pages: (b - a) / PAGE_SIZE,
                                offset,
                            });
                            offset += b - a;
                        }
                    }
                    out.push(vma);
                    continue;
                }
                Some(Known::Entries(v)) if v.len() as u64 == e.len() / PAGE_SIZE => entries = v,
                _ => pagemap
                    .read(e.start, e.end, &mut entries)
                    .dumping(pid, "reading the page map")?,
            }
            // Pages that are the parent's own, shared since a fork.
            let theirs: &[u64] = match parent {
                Some(p) if p.twin(&vma).is_some() => p
                    .frames
                    .0
                    .get(&vma.start)
                    .filter(|f| f.len() == entries.len())
                    .map_or(&[], |f| &f[..]),
                _ => &[],
            };
            if let Some(f) = frames.as_deref_mut().filter(|_| shares_pages(&vma)) {
                f.0.insert(vma.start, entries.clone());
            }
            let same = |i: usize| {
                let (a, b) = (entries[i], theirs[i]);
                a & pm::PRESENT != 0 && b & pm::PRESENT != 0 && pfn(a) != 0 && pfn(a) == pfn(b)
            };
            let mut i = 0;
            while i < entries.len() {
                if !wanted(kind, entries[i]) {
                    i += 1;
                    continue;
                }
                let first = i;
                let shared = !theirs.is_empty() && same(i);
                while i < entries.len()
                    && wanted(kind, entries[i])
                    && (!theirs.is_empty() && same(i)) == shared
                {
                    i += 1;
                }
                let nr = (i - first) as u64;
                let addr = e.start + first as u64 * PAGE_SIZE;
                if shared {
                    vma.inherited.push(PageRun {
                        addr,
                        nr_pages: nr,
                        offset: 0,
                    });
                    continue;
                }
                vma.pages.push(PageRun {
                    addr,
                    nr_pages: nr,
                    offset,
                });
                offset += nr * PAGE_SIZE;
            }
        }
        out.push(vma);
    }
    sysv::check_attaches(pid, &out)?;
    Ok(out)
}

/// The page size of hugetlb mapping `e` (VmFlags "ht"), from its file
/// (every hugetlb mapping has one, on a hugetlbfs).
fn huge_page_size_of(pid: i32, e: &MapEntry) -> Result<u64> {
    let path = format!(
        "{}/map_files/{:x}-{:x}",
        godwit_sys::proc::dir(pid),
        e.start,
        e.end
    );
    match godwit_sys::process::hugetlb_page_size(&path) {
        Ok(Some(size)) if size.is_power_of_two() && size >= PAGE_SIZE => Ok(size),
        got => Err(EngineError::Unsupported {
            pid,
            what: format!(
                "the hugetlb memory mapping {:#x}-{:#x} ({}), whose page size cannot be read ({})",
                e.start,
                e.end,
                e.name,
                match got {
                    Ok(Some(size)) => format!("a page size of {size} bytes"),
                    Ok(None) => "its file is not on a hugetlbfs".to_string(),
                    Err(err) => err.to_string(),
                }
            ),
        }),
    }
}

/// Describes `vma`, a private mapping `e` of a deleted file or memfd: a
/// memfd's (on tmpfs, with seals) by its shmem object, whose contents are
/// kept like a shared one's; a deleted file's by its `Fd::node_id`, which a
/// descriptor of the process must hold ([`check_deleted_maps`]). Either way
/// only the pages the process wrote are stored.
fn describe_deleted_private(pid: i32, e: &MapEntry, vma: &mut Vma) -> Result<()> {
    let path = format!(
        "{}/map_files/{:x}-{:x}",
        godwit_sys::proc::dir(pid),
        e.start,
        e.end
    );
    let f = std::fs::File::open(&path).map_err(|err| EngineError::Unsupported {
        pid,
        what: format!(
            "the private mapping {:#x}-{:#x} of {}, whose file cannot be read ({err})",
            e.start, e.end, e.name
        ),
    })?;
    let id = shmem_id(e.dev_major, e.dev_minor, e.inode);
    let fs = godwit_sys::process::fs_type(&path);
    let is_memfd = memfd_name(&e.name).is_some()
        && fs
            .as_ref()
            .is_ok_and(|t| *t == libc::TMPFS_MAGIC || *t == libc::HUGETLBFS_MAGIC)
        && godwit_sys::process::memfd_seals(&f).is_ok();
    if !is_memfd && fs.is_ok_and(|t| t == libc::HUGETLBFS_MAGIC) {
        return Err(EngineError::Unsupported {
            pid,
            what: format!(
                "the private mapping {:#x}-{:#x} of {}, a deleted file on a hugetlbfs: such a file cannot be made again",
                e.start, e.end, e.name
            ),
        });
    }
    if is_memfd {
        let size = f.metadata().map(|m| m.size()).unwrap_or(0);
        vma.shmem_id = id;
        vma.shmem_size = size;
    } else {
        vma.deleted_node = id;
    }
    Ok(())
}

/// Shared mappings of a deleted file (kept, by default, like shared
/// anonymous memory: one memfd) that every process mapping it also holds
/// open: mapped again from the file made again for those descriptors
/// (`Vma::deleted_node`, kind FILE_SHARED), so that the mappings and the
/// descriptors stay one file, as they were. Refused: such a file mapped
/// shared by a process that does not hold it open while another does (the
/// mapping would be made again apart from the file).
pub fn share_deleted_files(procs: &mut [crate::schema::Process]) -> Result<()> {
    let holds = |p: &crate::schema::Process, id: u64| {
        p.fds
            .iter()
            .any(|f| f.deleted && f.node_id == id && f.kind == FdKind::Regular as i32)
    };
    let mut ids: HashMap<u64, bool> = HashMap::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        for v in p
            .vmas
            .iter()
            .filter(|v| v.kind == VmaKind::AnonShared as i32 && v.shmem_id != 0)
        {
            let ok = holds(p, v.shmem_id);
            *ids.entry(v.shmem_id).or_insert(true) &= ok;
        }
    }
    let live = || procs.iter().filter(|p| !p.zombie);
    for (&id, _) in ids.iter().filter(|(_, all)| !**all) {
        if live().any(|p| holds(p, id)) {
            let (p, v) = live()
                .flat_map(|p| p.vmas.iter().map(move |v| (p, v)))
                .find(|(p, v)| {
                    v.kind == VmaKind::AnonShared as i32 && v.shmem_id == id && !holds(p, id)
                })
                .expect("a holder without the file");
            return Err(EngineError::Unsupported {
                pid: p.pid,
                what: format!(
                    "the shared mapping {:#x}-{:#x} of a deleted file that another process of the tree holds open but this one does not: it would be made again apart from that file",
                    v.start, v.end
                ),
            });
        }
    }
    for p in procs.iter_mut() {
        for v in p
            .vmas
            .iter_mut()
            .filter(|v| v.kind == VmaKind::AnonShared as i32 && ids.get(&v.shmem_id) == Some(&true))
        {
            v.kind = VmaKind::FileShared as i32;
            v.deleted_node = v.shmem_id;
            v.shmem_id = 0;
            v.shmem_size = 0;
        }
    }
    Ok(())
}

/// Refuses a private mapping of a deleted file that no descriptor of the
/// same process holds: the file is made again for a descriptor
/// (resources::files), and the mapping from it.
pub fn check_deleted_maps(p: &crate::schema::Process) -> Result<()> {
    for v in p.vmas.iter().filter(|v| v.deleted_node != 0) {
        let held = p
            .fds
            .iter()
            .any(|f| f.deleted && f.node_id == v.deleted_node && f.kind == FdKind::Regular as i32);
        if !held {
            return Err(EngineError::Unsupported {
                pid: p.pid,
                what: format!(
                    "the private mapping {:#x}-{:#x} of a deleted file that no descriptor of the process holds any more (its contents past the mapped range are not kept)",
                    v.start, v.end
                ),
            });
        }
    }
    Ok(())
}

/// The id of a shmem object (`Vma::shmem_id`, `Fd::shmem_id`): its device
/// and inode.
pub fn shmem_id(dev_major: u32, dev_minor: u32, ino: u64) -> u64 {
    ((dev_major as u64) << 52) ^ ((dev_minor as u64) << 32) ^ ino
}

/// `shmem_id` of a file from its stat(2) device and inode numbers.
pub fn shmem_id_of(st_dev: u64, ino: u64) -> u64 {
    let (major, minor) = dev_of(st_dev);
    shmem_id(major, minor, ino)
}

/// Reads every shmem object and SysV segment of a frozen tree once, from its
/// first holder (through /proc/PID/map_files or /proc/PID/fd, skipping
/// holes), into `Process::shmem` and `Process::sysv_shm` with page-file
/// offsets from `bases[i]` on for process i (the end of its page runs).
/// Returns the data, per process, in the order it must be appended to the
/// page file.
pub fn collect_shmem(
    procs: &mut [crate::schema::Process],
    bases: &[u64],
) -> Result<Vec<Vec<Vec<u8>>>> {
    let mut seen = std::collections::HashSet::new();
    let mut seen_sysv = std::collections::HashSet::new();
    let mut seen_deleted = std::collections::HashSet::new();
    let mut table = None;
    let mut out = Vec::with_capacity(procs.len());
    for (i, p) in procs.iter_mut().enumerate() {
        let pid = p.pid;
        let mut offset = bases
            .get(i)
            .copied()
            .unwrap_or_else(|| planned_bytes(&p.vmas));
        let mut datas = Vec::new();
        // Shmem objects: mapped shared, or open as memfds.
        let sources: Vec<(u64, String, u64)> = p
            .vmas
            .iter()
            .filter(|v| v.shmem_id != 0)
            .map(|v| {
                let path = format!(
                    "{}/map_files/{:x}-{:x}",
                    godwit_sys::proc::dir(pid),
                    v.start,
                    v.end
                );
                (v.shmem_id, path, v.shmem_size)
            })
            .chain(
                p.fds
                    .iter()
                    .filter(|f| f.kind == FdKind::Memfd as i32)
                    .map(|f| {
                        (
                            f.shmem_id,
                            format!("{}/fd/{}", godwit_sys::proc::dir(pid), f.fd),
                            f.size,
                        )
                    }),
            )
            .collect();
        for (id, path, size_hint) in sources {
            if !seen.insert(id) {
                continue;
            }
            let f = std::fs::File::open(&path).map_err(|e| EngineError::Unsupported {
                pid,
                what: format!("shared memory {path} whose contents cannot be read ({e})"),
            })?;
            let md = f.metadata().ok();
            let size = md.as_ref().map_or(size_hint, |m| m.size());
            let huge = godwit_sys::process::hugetlb_page_size(&path)
                .ok()
                .flatten()
                .unwrap_or(0);
            let data = match huge {
                0 => read_extents(pid, &f, &path, size, &mut offset, &mut datas)?,
                _ => read_huge_pages(pid, &f, &path, size, huge, &mut offset, &mut datas)?,
            };
            let mut obj = crate::schema::ShmemObject {
                id,
                size,
                data,
                huge_page_size: huge,
                ..Default::default()
            };
            let link = godwit_sys::proc::link(&path)
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A memfd has seals (a deleted file named like one has none).
            let seals = godwit_sys::process::memfd_seals(&f);
            if let (Some(name), Some(md), Ok(seals)) = (memfd_name(&link), md, seals) {
                obj.memfd = true;
                obj.name = name.to_string();
                obj.seals = seals;
                obj.mode = md.mode() & 0o7777;
                obj.uid = md.uid();
                obj.gid = md.gid();
                obj.atime_ns = md.atime() * 1_000_000_000 + md.atime_nsec();
                obj.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            }
            p.shmem.push(obj);
        }
        // SysV segments, by their first attach (offset 0).
        let firsts: Vec<(i32, String)> = p
            .vmas
            .iter()
            .filter(|v| v.kind == VmaKind::SysvShm as i32 && v.pgoff == 0)
            .map(|v| {
                let path = format!(
                    "{}/map_files/{:x}-{:x}",
                    godwit_sys::proc::dir(pid),
                    v.start,
                    v.end
                );
                (v.sysv_shmid, path)
            })
            .collect();
        for (shmid, path) in firsts {
            if !seen_sysv.insert(shmid) {
                continue;
            }
            let table = match &table {
                Some(t) => t,
                None => table.insert(
                    godwit_sys::sysv::shm_table().dumping(pid, "reading /proc/sysvipc/shm")?,
                ),
            };
            let mut seg = sysv::describe_segment(pid, shmid, table)?;
            // The shmem file behind the segment: reads and SEEK_DATA work on it.
            let f = std::fs::File::open(&path).map_err(|e| EngineError::Unsupported {
                pid,
                what: format!(
                    "SysV shared memory shmid {shmid} whose contents cannot be read ({path}: {e})"
                ),
            })?;
            seg.huge_page_size = godwit_sys::process::hugetlb_page_size(&path)
                .ok()
                .flatten()
                .unwrap_or(0);
            seg.data = match seg.huge_page_size {
                0 => read_extents(pid, &f, &path, seg.size, &mut offset, &mut datas)?,
                huge => read_huge_pages(pid, &f, &path, seg.size, huge, &mut offset, &mut datas)?,
            };
            p.sysv_shm.push(seg);
        }
        // Deleted files too big for the manifest, by their first holder.
        for f in p.fds.iter_mut().filter(|f| f.deleted_in_pages) {
            if !seen_deleted.insert(f.file_id) {
                continue;
            }
            let path = format!("{}/fd/{}", godwit_sys::proc::dir(pid), f.fd);
            // Without touching its access time where godwit may.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOATIME)
                .open(&path)
                .or_else(|_| std::fs::File::open(&path))
                .map_err(|e| EngineError::Unsupported {
                    pid,
                    what: format!(
                        "fd {} (the deleted file {}) whose contents cannot be read ({e})",
                        f.fd, f.path
                    ),
                })?;
            f.deleted_runs = read_extents(pid, &file, &path, f.size, &mut offset, &mut datas)?;
        }
        out.push(datas);
    }
    Ok(out)
}

/// The name of a memfd from its /proc link (`/memfd:NAME (deleted)`).
pub fn memfd_name(link: &str) -> Option<&str> {
    link.strip_prefix("/memfd:")?.strip_suffix(" (deleted)")
}

/// Reads the data extents of a shmem file of `size` bytes into `datas` (each
/// padded to whole pages); returns them as runs placed from `*offset` on.
fn read_extents(
    pid: i32,
    f: &std::fs::File,
    path: &str,
    size: u64,
    offset: &mut u64,
    datas: &mut Vec<Vec<u8>>,
) -> Result<Vec<PageRun>> {
    let mut runs = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // Data extents; a hole-unaware file gives one extent.
        let start = match lseek_data(f, pos) {
            Some(s) if s < size => s,
            _ => break,
        };
        let end = lseek_hole(f, start).unwrap_or(size).min(size);
        let len = end - start;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, start)
            .map_err(|e| EngineError::Sys {
                pid,
                stage: "reading shared memory",
                source: godwit_sys::SysError::Proc {
                    path: path.to_string(),
                    detail: e.to_string(),
                },
            })?;
        runs.push(PageRun {
            addr: start,
            nr_pages: len.div_ceil(PAGE_SIZE),
            offset: *offset,
        });
        buf.resize((len.div_ceil(PAGE_SIZE) * PAGE_SIZE) as usize, 0);
        *offset += buf.len() as u64;
        datas.push(buf);
        pos = end;
    }
    Ok(runs)
}

/// [`read_extents`] for a hugetlb file of page size `huge`: such a file
/// has no holes to seek (it reads as one extent, zeros where no page is),
/// so it is read a huge page at a time and pages holding only zeros are
/// left out (made again, they would take a huge page each for nothing).
#[allow(clippy::too_many_arguments)]
fn read_huge_pages(
    pid: i32,
    f: &std::fs::File,
    path: &str,
    size: u64,
    huge: u64,
    offset: &mut u64,
    datas: &mut Vec<Vec<u8>>,
) -> Result<Vec<PageRun>> {
    let mut runs: Vec<PageRun> = Vec::new();
    let mut pos = 0u64;
    let mut buf = vec![0u8; huge as usize];
    while pos < size {
        let len = huge.min(size - pos);
        let chunk = &mut buf[..len as usize];
        f.read_exact_at(chunk, pos).map_err(|e| EngineError::Sys {
            pid,
            stage: "reading hugetlb shared memory",
            source: godwit_sys::SysError::Proc {
                path: path.to_string(),
                detail: e.to_string(),
            },
        })?;
        if chunk.iter().any(|&b| b != 0) {
            let mut data = chunk.to_vec();
            data.resize((len.div_ceil(PAGE_SIZE) * PAGE_SIZE) as usize, 0);
            match runs.last_mut() {
                Some(r) if r.addr + r.nr_pages * PAGE_SIZE == pos => {
                    r.nr_pages += len.div_ceil(PAGE_SIZE)
                }
                _ => runs.push(PageRun {
                    addr: pos,
                    nr_pages: len.div_ceil(PAGE_SIZE),
                    offset: *offset,
                }),
            }
            *offset += data.len() as u64;
            datas.push(data);
        }
        pos += len;
    }
    Ok(runs)
}

fn lseek_data(f: &std::fs::File, pos: u64) -> Option<u64> {
    godwit_sys::process::seek_data(f, pos, true)
}

fn lseek_hole(f: &std::fs::File, pos: u64) -> Option<u64> {
    godwit_sys::process::seek_data(f, pos, false)
}

/// Writes the stored extents `runs` of an object of `size` bytes from the
/// page file `src` into `file`.
pub(crate) fn write_extents(
    pid: i32,
    stage: &'static str,
    file: &std::fs::File,
    size: u64,
    runs: &[PageRun],
    src: Option<&Pages>,
) -> Result<()> {
    write_extents_huge(pid, stage, file, size, runs, src, 0)
}

/// [`write_extents`] into a file of page size `huge` when it is a hugetlb
/// one (0: tmpfs), which is written through a mapping (hugetlbfs has no
/// write(2)); its runs start on huge page boundaries.
pub(crate) fn write_extents_huge(
    pid: i32,
    stage: &'static str,
    file: &std::fs::File,
    size: u64,
    runs: &[PageRun],
    src: Option<&Pages>,
    huge: u64,
) -> Result<()> {
    for run in runs {
        let len = (run.nr_pages * PAGE_SIZE).min(size.saturating_sub(run.addr));
        let bytes = src.and_then(|p| p.get(run.offset, len)).ok_or_else(|| {
            EngineError::BadImage(format!(
                "shared memory data at {} is outside the page file",
                run.offset
            ))
        })?;
        if huge != 0 {
            if !run.addr.is_multiple_of(huge) {
                return Err(EngineError::BadImage(format!(
                    "hugetlb shared memory data at {:#x} does not start on a {huge}-byte page",
                    run.addr
                )));
            }
            godwit_sys::mem::write_through_mapping(file, run.addr, bytes, huge).map_err(|e| {
                EngineError::Restore {
                    pid,
                    stage,
                    source: e,
                }
            })?;
            continue;
        }
        file.write_all_at(bytes, run.addr)
            .map_err(|e| EngineError::Restore {
                pid,
                stage,
                source: godwit_sys::SysError::Proc {
                    path: "memfd".into(),
                    detail: e.to_string(),
                },
            })?;
    }
    Ok(())
}

/// How shared memory objects are recreated: one memfd per shmem object,
/// created in the lowest common ancestor of the processes mapping it or
/// holding it open (memfd descriptors, see `FdPlan`), at a staging fd number
/// (`base + index`) inherited by the children forked after. A memfd gets its
/// name, mode, owner and seals back; other objects become a memfd named
/// "godwit-shm".
pub struct ShmPlan {
    base: u64,
    /// shmem id → (index, creating process index, size).
    objects: HashMap<u64, (u64, usize, u64)>,
    /// shmem id → (process whose page file holds the data, the object).
    data: HashMap<u64, (usize, crate::schema::ShmemObject)>,
    /// Seals to add once every process's memory is mapped, with a
    /// descriptor of the memfd to add them through.
    late_seals: std::sync::Mutex<Vec<(i32, std::fs::File, u32)>>,
    /// memfd times to set once every mapping is made (mmap moves the
    /// access time): process, descriptor, the object's name, atime, mtime.
    late_times: std::sync::Mutex<Vec<LateTimes>>,
}

/// A memfd whose times are set last: process, descriptor, name, atime and
/// mtime (ns).
type LateTimes = (i32, std::fs::File, String, i64, i64);

impl ShmPlan {
    /// `base`: the first free fd number above the file-descriptor plan.
    pub fn new(
        procs: &[crate::schema::Process],
        base: u64,
        lca: impl Fn(&[usize]) -> usize,
    ) -> ShmPlan {
        let mut holders: std::collections::BTreeMap<u64, (Vec<usize>, u64)> = Default::default();
        for (i, p) in procs.iter().enumerate() {
            for v in p.vmas.iter().filter(|v| v.shmem_id != 0) {
                let e = holders.entry(v.shmem_id).or_default();
                e.0.push(i);
                e.1 = e.1.max(v.shmem_size).max(v.pgoff + v.end - v.start);
            }
            for f in p.fds.iter().filter(|f| f.kind == FdKind::Memfd as i32) {
                holders.entry(f.shmem_id).or_default().0.push(i);
            }
        }
        let data: HashMap<u64, (usize, crate::schema::ShmemObject)> = procs
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.shmem.iter().map(move |o| (o.id, (i, o.clone()))))
            .collect();
        let objects = holders
            .into_iter()
            .enumerate()
            .map(|(k, (id, (h, size)))| {
                // A memfd keeps its size exactly (a mapping may reach past it).
                let size = match data.get(&id) {
                    Some((_, o)) if o.memfd => o.size,
                    Some((_, o)) => size.max(o.size),
                    None => size,
                };
                (id, (k as u64, lca(&h), size))
            })
            .collect();
        ShmPlan {
            base,
            objects,
            data,
            late_seals: Default::default(),
            late_times: Default::default(),
        }
    }

    pub fn highest_fd(&self) -> u64 {
        self.base + self.objects.len() as u64
    }

    /// The staging fd of shmem object `id`.
    pub fn fd(&self, id: u64) -> Option<u64> {
        self.objects.get(&id).map(|(k, _, _)| self.base + k)
    }

    /// Creates, in process `idx`, the shmem objects it is the creator of,
    /// and fills them from the page files (`pages`, one per process). A
    /// memfd's seals are added now if they forbid writing (F_SEAL_WRITE:
    /// no writable shared mapping can exist, and read-only ones must be
    /// made after it), else by [`ShmPlan::seal`] once memory is mapped.
    pub fn create(&self, r: &Remote, idx: usize, pages: &[Pages]) -> Result<()> {
        let pid = r.pid;
        let stage = "creating shared memory";
        for (id, (k, creator, size)) in &self.objects {
            if *creator != idx {
                continue;
            }
            let obj = self.data.get(id);
            let memfd = obj.map(|(_, o)| o).filter(|o| o.memfd);
            let (name, mut flags) = match memfd {
                Some(o) => (o.name.as_str(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING),
                None => ("godwit-shm", libc::MFD_CLOEXEC),
            };
            // hugetlb: a hugetlb memfd of the same page size, whose size is
            // whole huge pages.
            let huge = obj.map_or(0, |(_, o)| o.huge_page_size);
            let mut size = *size;
            if huge != 0 {
                flags |= libc::MFD_HUGETLB | huge_size_bits(huge) as u32;
                size = size.div_ceil(huge) * huge;
            }
            let size = &size;
            let a = r.put_cstr(0, name).restoring(pid, stage)?;
            let fd = r
                .call(
                    "memfd_create",
                    libc::SYS_memfd_create,
                    [a, flags as u64, 0, 0, 0, 0],
                )
                .restoring(pid, stage)?;
            r.call("ftruncate", libc::SYS_ftruncate, [fd, *size, 0, 0, 0, 0])
                .restoring(pid, stage)?;
            r.call("dup3", libc::SYS_dup3, [fd, self.base + k, 0, 0, 0, 0])
                .restoring(pid, stage)?;
            r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])
                .restoring(pid, stage)?;
            if obj.is_none_or(|(_, o)| o.data.is_empty()) && memfd.is_none() {
                continue;
            }
            let pidfd = godwit_sys::process::pidfd_open(pid).restoring(pid, stage)?;
            let ours = godwit_sys::process::pidfd_getfd(&pidfd, (self.base + k) as i32)
                .restoring(pid, stage)?;
            let file = std::fs::File::from(ours);
            if let Some((src, o)) = obj {
                write_extents_huge(pid, stage, &file, *size, &o.data, pages.get(*src), huge)?;
            }
            let Some(o) = memfd else { continue };
            let meta = |e: std::io::Error| EngineError::Restore {
                pid,
                stage: "setting a memfd's mode and owner",
                source: godwit_sys::SysError::Proc {
                    path: format!("/memfd:{}", o.name),
                    detail: e.to_string(),
                },
            };
            std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid)).map_err(meta)?;
            file.set_permissions(std::fs::Permissions::from_mode(o.mode))
                .map_err(meta)?;
            // The times once mapped: mapping it moves the access time.
            if o.atime_ns != 0 || o.mtime_ns != 0 {
                let dup = file.try_clone().map_err(meta)?;
                self.late_times
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((pid, dup, o.name.clone(), o.atime_ns, o.mtime_ns));
            }
            if o.seals & libc::F_SEAL_WRITE as u32 != 0 {
                godwit_sys::process::add_memfd_seals(&file, o.seals)
                    .restoring(pid, "sealing a memfd")?;
            } else if o.seals != 0 {
                self.late_seals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((pid, file, o.seals));
            }
        }
        Ok(())
    }

    /// Sets the memfds' access and modification times (mapping a memfd
    /// moves its access time), then adds the memfd seals left for after the
    /// mappings (F_SEAL_FUTURE_WRITE needs the writable mappings made
    /// first; F_SEAL_SEAL comes last).
    pub fn seal(&self) -> Result<()> {
        let times = std::mem::take(&mut *self.late_times.lock().unwrap_or_else(|e| e.into_inner()));
        for (pid, file, name, atime, mtime) in times {
            let t = std::fs::FileTimes::new()
                .set_accessed(crate::resources::files::system_time(atime))
                .set_modified(crate::resources::files::system_time(mtime));
            file.set_times(t).map_err(|e| EngineError::Restore {
                pid,
                stage: "setting a memfd's times",
                source: godwit_sys::SysError::Proc {
                    path: format!("/memfd:{name}"),
                    detail: e.to_string(),
                },
            })?;
        }
        let late = std::mem::take(&mut *self.late_seals.lock().unwrap_or_else(|e| e.into_inner()));
        for (pid, file, seals) in late {
            godwit_sys::process::add_memfd_seals(&file, seals).restoring(pid, "sealing a memfd")?;
        }
        Ok(())
    }

    /// Closes the staging descriptors (after the memory is mapped).
    pub fn close(&self, r: &Remote) -> Result<()> {
        if !self.objects.is_empty() {
            r.call(
                "close_range",
                libc::SYS_close_range,
                [self.base, self.highest_fd(), 0, 0, 0, 0],
            )
            .restoring(r.pid, "closing shared memory descriptors")?;
        }
        Ok(())
    }
}

/// Post-copy: the pages of private anonymous VMAs are not copied into the
/// image but left at the source (`Vma::lazy`), which serves them once the
/// process runs at the destination. Pages holding an address of `keep` are
/// copied all the same: the restore itself touches them (the threads' rseq
/// areas, written by the kernel when rseq is registered), before any page
/// can be served. MADV_HUGEPAGE memory is copied too: UFFDIO_COPY places
/// 4 KiB pages only, and it would come back without its huge pages.
/// Returns the lazy bytes.
pub fn make_lazy(vmas: &mut [Vma], keep: &[u64]) -> u64 {
    let mut bytes = 0;
    for v in vmas.iter_mut().filter(|v| lazy_able(v)) {
        let mut stored = Vec::new();
        for run in std::mem::take(&mut v.pages) {
            for (addr, len, kept) in split_kept(run.addr, run.nr_pages * PAGE_SIZE, keep) {
                let run = PageRun {
                    addr,
                    nr_pages: len / PAGE_SIZE,
                    offset: 0,
                };
                if kept {
                    stored.push(run);
                } else {
                    bytes += len;
                    v.lazy.push(run);
                }
            }
        }
        v.pages = stored;
    }
    // The runs left are stored back to back, in address order.
    let mut offset = 0;
    for run in vmas.iter_mut().flat_map(|v| &mut v.pages) {
        run.offset = offset;
        offset += run.nr_pages * PAGE_SIZE;
    }
    bytes
}

/// Post-copy of a forking tree: a child's private anonymous VMA with the
/// same bounds as one of its parent's (see [`twin_of`]) may hold pages
/// that are the parent's own physical pages, shared copy-on-write since the
/// fork ([`same_frames`]). Served lazily, page by page into each process's
/// own userfaultfd, each process would get its own copy of them. Instead
/// such a pair of VMAs is taken out of the lazy memory: the parent's pages
/// are stored in the image (sent before the processes run), the child's
/// shared ones become `Vma::inherited` (not stored: the restore forks the
/// child from its parent once those are in place, as without post-copy)
/// and its other pages are stored too. Only VMAs that do share a page are
/// affected; the rest of the memory stays lazy.
///
/// `procs` in tree order (parents first), `hosts[i]` the PID of `procs[i]`
/// whose page map is read (0 for a zombie); every process frozen. Returns
/// the bytes that were lazy and are now stored or inherited.
pub fn share_lazy(procs: &mut [crate::schema::Process], hosts: &[i32]) -> Result<u64> {
    let mut moved = 0u64;
    let mut changed = vec![false; procs.len()];
    for i in 0..procs.len() {
        let Some(j) = (0..i).find(|&j| procs[j].pid == procs[i].ppid && !procs[j].zombie) else {
            continue;
        };
        if procs[i].zombie || hosts[i] <= 0 || hosts[j] <= 0 {
            continue;
        }
        let (before, after) = procs.split_at_mut(i);
        let (parent, child) = (&mut before[j], &mut after[0]);
        for v in child.vmas.iter_mut() {
            let k = parent.vmas.partition_point(|p| p.start < v.start);
            let Some(p) = parent.vmas.get_mut(k) else {
                continue;
            };
            let twins = p.start == v.start
                && p.end == v.end
                && lazy_able(p)
                && lazy_able(v)
                && (!p.lazy.is_empty() || !v.lazy.is_empty());
            if !twins {
                continue;
            }
            let mut runs: Vec<PageRun> = v.pages.iter().chain(&v.lazy).cloned().collect();
            runs.sort_by_key(|r| r.addr);
            let ranges: Vec<Range> = runs
                .iter()
                .map(|r| Range {
                    addr: r.addr,
                    len: r.nr_pages * PAGE_SIZE,
                })
                .collect();
            let shared = same_frames(hosts[i], hosts[j], &ranges)?;
            if shared.is_empty() {
                continue;
            }
            moved += lazy_in(p) + lazy_in(v);
            let mut own: Vec<PageRun> = std::mem::take(&mut p.pages);
            own.append(&mut p.lazy);
            own.sort_by_key(|r| r.addr);
            p.pages = own;
            let (mine, theirs) = split_shared(&runs, &shared);
            v.pages = mine;
            v.lazy.clear();
            v.inherited = theirs;
            changed[i] = true;
            changed[j] = true;
        }
    }
    // Stored runs back to back, in address order (as make_lazy leaves them).
    for (p, _) in procs.iter_mut().zip(&changed).filter(|(_, c)| **c) {
        let mut offset = 0;
        for run in p.vmas.iter_mut().flat_map(|v| &mut v.pages) {
            run.offset = offset;
            offset += run.nr_pages * PAGE_SIZE;
        }
    }
    Ok(moved)
}

/// `runs` (sorted) cut into the pages outside `shared` (sorted ranges) and
/// those inside it.
fn split_shared(runs: &[PageRun], shared: &[Range]) -> (Vec<PageRun>, Vec<PageRun>) {
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for r in runs {
        let mut at = r.addr;
        let end = r.addr + r.nr_pages * PAGE_SIZE;
        let within = shared
            .iter()
            .filter(|s| s.addr < end && s.addr + s.len > r.addr);
        for s in within {
            let (a, b) = (s.addr.max(at), (s.addr + s.len).min(end));
            if a >= b {
                continue;
            }
            if a > at {
                mine.push(run_of(at, a));
            }
            theirs.push(run_of(a, b));
            at = b;
        }
        if at < end {
            mine.push(run_of(at, end));
        }
    }
    (mine, theirs)
}

fn lazy_in(v: &Vma) -> u64 {
    v.lazy.iter().map(|r| r.nr_pages * PAGE_SIZE).sum()
}

fn run_of(a: u64, b: u64) -> PageRun {
    PageRun {
        addr: a,
        nr_pages: (b - a) / PAGE_SIZE,
        offset: 0,
    }
}

/// Whether the pages of `v` may be left lazy (post-copy): private
/// anonymous memory without MADV_HUGEPAGE.
pub(crate) fn lazy_able(v: &Vma) -> bool {
    matches!(
        kind(v),
        VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack
    ) && !wants_thp(v)
}

/// [addr, addr + len) cut into pieces, each with whether it is a page
/// holding an address of `keep`.
pub(crate) fn split_kept(addr: u64, len: u64, keep: &[u64]) -> Vec<(u64, u64, bool)> {
    let mut pages: Vec<u64> = keep
        .iter()
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&p| p >= addr && p < addr + len)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    let mut out = Vec::new();
    let mut at = addr;
    for p in pages {
        if p > at {
            out.push((at, p - at, false));
        }
        out.push((p, PAGE_SIZE, true));
        at = p + PAGE_SIZE;
    }
    if at < addr + len {
        out.push((at, addr + len - at, false));
    }
    out
}

/// Total bytes of lazy pages (left at a post-copy's source).
pub fn lazy_bytes(vmas: &[Vma]) -> u64 {
    vmas.iter()
        .flat_map(|v| &v.lazy)
        .map(|r| r.nr_pages * PAGE_SIZE)
        .sum()
}

/// Total bytes of pages planned.
pub fn planned_bytes(vmas: &[Vma]) -> u64 {
    vmas.iter()
        .flat_map(|v| &v.pages)
        .map(|r| r.nr_pages * PAGE_SIZE)
        .sum()
}

/// Page files written per process: each is written by its own thread, which
/// reads a batch from the process and writes it (two such threads keep both
/// cores busy; tmpfs writes do not scale past that here).
const WRITERS: u64 = 2;

/// A piece of a page run, in page-file order.
#[derive(Clone, Copy)]
struct Piece {
    addr: u64,
    len: u64,
    readable: bool,
    /// Start of the run this piece belongs to (for precopied lookup).
    run: u64,
    /// Offset of the piece within its run.
    in_run: u64,
}

/// A stretch of bytes that can be cut in two (see [`split_even`]).
pub(crate) trait Span: Sized {
    fn len(&self) -> u64;
    /// The first `at` bytes and the rest.
    fn cut(self, at: u64) -> (Self, Self);
}

impl Piece {
    /// A whole run of `len` bytes at `addr`.
    fn whole(addr: u64, len: u64, readable: bool) -> Piece {
        Piece {
            addr,
            len,
            readable,
            run: addr,
            in_run: 0,
        }
    }
}

impl Span for Piece {
    fn len(&self) -> u64 {
        self.len
    }
    fn cut(self, at: u64) -> (Piece, Piece) {
        let rest = Piece {
            addr: self.addr + at,
            len: self.len - at,
            in_run: self.in_run + at,
            ..self
        };
        (Piece { len: at, ..self }, rest)
    }
}

impl Span for Range {
    fn len(&self) -> u64 {
        self.len
    }
    fn cut(self, at: u64) -> (Range, Range) {
        let rest = Range {
            addr: self.addr + at,
            len: self.len - at,
        };
        (Range { len: at, ..self }, rest)
    }
}

/// Cuts `items`, in order, into at most `n` shares of equal bytes (whole
/// pages; the last share takes the rest), cutting an item where a share ends.
pub(crate) fn split_even<T: Span>(items: impl IntoIterator<Item = T>, n: usize) -> Vec<Vec<T>> {
    let items: Vec<T> = items.into_iter().collect();
    let total: u64 = items.iter().map(Span::len).sum();
    let per = (total / n.max(1) as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut shares: Vec<Vec<T>> = vec![Vec::new()];
    let mut filled = 0u64;
    for mut item in items {
        while shares.len() < n && per > 0 && filled + item.len() > per {
            let head = per - filled;
            if head > 0 {
                let (first, rest) = item.cut(head);
                shares.last_mut().expect("a share").push(first);
                item = rest;
            }
            shares.push(Vec::new());
            filled = 0;
        }
        if item.len() > 0 {
            filled += item.len();
            shares.last_mut().expect("a share").push(item);
        }
    }
    shares
}

/// Copies the planned pages (and `extra` bytes after them) into page files.
/// With a `snapshot`, pages come from it where it holds them (see
/// crate::snapshot); the process may be running. With `stop`, the copy is
/// given up between two batches once it is set (another part of the dump
/// failed). Returns the files written, each with the span of page offsets
/// it holds.
pub fn write_pages(
    pid: i32,
    vmas: &[Vma],
    writer: &godwit_image::ImageWriter,
    progress: &dyn Progress,
    snapshot: Option<&Snapshot>,
    extra: &[Vec<u8>],
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<Vec<(godwit_image::PageFileInfo, PageSpan)>> {
    let mut pieces: Vec<Piece> = Vec::new();
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        for run in &v.pages {
            pieces.push(Piece::whole(run.addr, run.nr_pages * PAGE_SIZE, readable));
        }
    }
    write_pieces(
        pid, pieces, writer, progress, snapshot, extra, 0, None, stop,
    )
}

/// Copies `ranges` of the process (each readable or not), in this order,
/// then `extra`, into new page files whose bytes are page offsets `base`
/// onwards. With `holes`, readable ranges that cannot be read (the process
/// runs, and unmapped them) are written as zeros and listed there.
pub(crate) fn write_ranges(
    pid: i32,
    ranges: &[(Range, bool)],
    writer: &godwit_image::ImageWriter,
    progress: &dyn Progress,
    extra: &[Vec<u8>],
    base: u64,
    holes: Option<&std::sync::Mutex<Vec<Range>>>,
) -> Result<Vec<(godwit_image::PageFileInfo, PageSpan)>> {
    let pieces = ranges
        .iter()
        .map(|(r, readable)| Piece::whole(r.addr, r.len, *readable))
        .collect();
    write_pieces(
        pid, pieces, writer, progress, None, extra, base, holes, None,
    )
}

#[allow(clippy::too_many_arguments)]
fn write_pieces(
    pid: i32,
    pieces: Vec<Piece>,
    writer: &godwit_image::ImageWriter,
    progress: &dyn Progress,
    snapshot: Option<&Snapshot>,
    extra: &[Vec<u8>],
    base: u64,
    holes: Option<&std::sync::Mutex<Vec<Range>>>,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<Vec<(godwit_image::PageFileInfo, PageSpan)>> {
    // Little to write (a pre-copy round, what changed at its freeze): one
    // file is enough.
    let total: u64 = pieces.iter().map(|p| p.len).sum();
    let writers = if total < (4 << 20) {
        1
    } else {
        WRITERS as usize
    };
    let parts = split_even(pieces, writers);
    let mut files = Vec::with_capacity(parts.len());
    for _ in &parts {
        files.push(writer.page_file()?);
    }
    let last = parts.len() - 1;
    let results: Vec<Result<(godwit_image::PageFileInfo, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .zip(files)
            .enumerate()
            .map(|(k, (part, mut out))| {
                let extra = if k == last { extra } else { &[][..] };
                s.spawn(move || -> Result<(godwit_image::PageFileInfo, u64)> {
                    copy_part(pid, part, &mut out, progress, snapshot, holes, stop)?;
                    for data in extra {
                        out.write_all(data)?;
                    }
                    let len = out.position();
                    Ok((out.finish()?, len))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(EngineError::BadImage("a page writer panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(results.len());
    let mut start = base;
    for r in results {
        let (info, len) = r?;
        out.push((
            info.clone(),
            PageSpan {
                name: info.name,
                start,
                len,
            },
        ));
        start += len;
    }
    Ok(out)
}

/// After a read of `ranges` into `buf` stopped at byte `done` (memory gone
/// meanwhile), reads the rest range by range; a range that cannot be read
/// is left zero in `buf` and added to `holes`. Returns `buf.len()`.
fn read_or_skip(
    pid: i32,
    ranges: &[Range],
    buf: &mut [u8],
    done: usize,
    holes: &std::sync::Mutex<Vec<Range>>,
) -> usize {
    let mut off = 0usize;
    for r in ranges {
        let len = r.len as usize;
        if off + len > done {
            let part = &mut buf[off..off + len];
            if !matches!(mem::read_ranges(pid, part, &[*r]), Ok(n) if n == len) {
                part.fill(0);
                holes.lock().expect("lock").push(*r);
            }
        }
        off += len;
    }
    buf.len()
}

/// Reads the batches holding anonymous pages mapped by more than one
/// process (shared copy-on-write since a fork) without unsharing them.
/// process_vm_readv pins the pages it reads, and before pinning an
/// anonymous page others map too the kernel gives the process its own copy:
/// a dump would leave every process of a forking tree with a private copy
/// of all it shared (the running original of a `--leave-running` dump
/// keeps them). /proc/PID/mem reads without pinning; it is slower, so only
/// those pages go through it, found in the page map (PM_MMAP_EXCLUSIVE
/// clear on a present anonymous page; the shared zero page is among them).
#[derive(Default)]
struct SharedReader {
    pagemap: Option<Pagemap>,
    mem: Option<ProcMem>,
    entries: Vec<u64>,
}

impl SharedReader {
    /// `None` when no page of `ranges` is shared (read them as usual);
    /// otherwise reads them all into `buf` and returns its length. With
    /// `holes`, what cannot be read is left zero and listed there.
    fn read(
        &mut self,
        pid: i32,
        ranges: &[Range],
        buf: &mut [u8],
        holes: Option<&std::sync::Mutex<Vec<Range>>>,
    ) -> Result<Option<usize>> {
        let pagemap = match &self.pagemap {
            Some(p) => p,
            None => self
                .pagemap
                .insert(Pagemap::open(pid).dumping(pid, "opening the page map")?),
        };
        self.entries.clear();
        for r in ranges {
            if pagemap
                .read(r.addr, r.addr + r.len, &mut self.entries)
                .is_err()
            {
                // Gone meanwhile (a running process): the usual read copes.
                return Ok(None);
            }
        }
        let shared = |e: u64| e & pm::PRESENT != 0 && e & (pm::EXCLUSIVE | pm::FILE_OR_SHARED) == 0;
        if !self.entries.iter().any(|&e| shared(e)) {
            return Ok(None);
        }
        // Segments of pages alike, contiguous in the process and in `buf`.
        let mut segments: Vec<(usize, Range, bool)> = Vec::new();
        let (mut at, mut page) = (0usize, 0usize);
        for r in ranges {
            for k in 0..r.len / PAGE_SIZE {
                let s = shared(self.entries[page]);
                let addr = r.addr + k * PAGE_SIZE;
                match segments.last_mut() {
                    Some((off, g, gs))
                        if *gs == s && g.addr + g.len == addr && *off + g.len as usize == at =>
                    {
                        g.len += PAGE_SIZE
                    }
                    _ => segments.push((
                        at,
                        Range {
                            addr,
                            len: PAGE_SIZE,
                        },
                        s,
                    )),
                }
                at += PAGE_SIZE as usize;
                page += 1;
            }
        }
        for (off, g, s) in segments {
            let part = &mut buf[off..off + g.len as usize];
            let got = if s {
                let m = match &self.mem {
                    Some(m) => m,
                    None => self
                        .mem
                        .insert(ProcMem::open(pid, false).dumping(pid, "opening memory")?),
                };
                m.read_exact_at(g.addr, part).is_ok()
            } else {
                matches!(mem::read_ranges(pid, part, &[g]), Ok(n) if n == part.len())
            };
            if !got {
                match holes {
                    Some(h) => {
                        part.fill(0);
                        h.lock().expect("lock").push(g);
                    }
                    None => {
                        return Err(EngineError::Sys {
                            pid,
                            stage: "reading memory",
                            source: godwit_sys::SysError::Proc {
                                path: format!("process {pid} memory"),
                                detail: format!(
                                    "{:#x}-{:#x} could not be read",
                                    g.addr,
                                    g.addr + g.len
                                ),
                            },
                        })
                    }
                }
            }
        }
        Ok(Some(buf.len()))
    }
}

/// One writer: read batches of `pieces` from the process, write them. With
/// `holes`, memory that cannot be read is written as zeros and listed there
/// instead of failing.
fn copy_part(
    pid: i32,
    pieces: &[Piece],
    out: &mut PageFileWriter,
    progress: &dyn Progress,
    snapshot: Option<&Snapshot>,
    holes: Option<&std::sync::Mutex<Vec<Range>>>,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<()> {
    // calloc'd: the kernel's zero pages, no memset to pay for.
    let mut buf = vec![0u8; BATCH];
    let mut ranges: Vec<Range> = Vec::new();
    let mut filled = 0usize;
    let mut procmem: Option<ProcMem> = None;
    let mut sharing = SharedReader::default();
    let mut flush = |ranges: &mut Vec<Range>,
                     filled: &mut usize,
                     buf: &mut [u8],
                     out: &mut PageFileWriter|
     -> Result<()> {
        if ranges.is_empty() {
            return Ok(());
        }
        if stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(EngineError::Sys {
                pid,
                stage: "copying memory",
                source: godwit_sys::SysError::Proc {
                    path: format!("process {pid} memory"),
                    detail: "the copy was stopped: another part of the dump failed".into(),
                },
            });
        }
        let want = *filled;
        let n = match sharing.read(pid, ranges, &mut buf[..want], holes)? {
            Some(n) => n,
            None => match (mem::read_ranges(pid, &mut buf[..want], ranges), holes) {
                (Ok(n), Some(h)) if n != want => read_or_skip(pid, ranges, &mut buf[..want], n, h),
                (Err(_), Some(h)) => read_or_skip(pid, ranges, &mut buf[..want], 0, h),
                (r, _) => r.dumping(pid, "reading memory")?,
            },
        };
        if n != want {
            return Err(EngineError::Sys {
                pid,
                stage: "reading memory",
                source: godwit_sys::SysError::Proc {
                    path: format!("process {pid} memory"),
                    detail: format!("only {n} of {want} bytes could be read"),
                },
            });
        }
        if let Some(s) = snapshot {
            s.fix_up(ranges, &mut buf[..want]);
        }
        out.write_all(&buf[..want])?;
        progress.advance(want as u64);
        ranges.clear();
        *filled = 0;
        Ok(())
    };
    for p in pieces {
        if let Some(data) = snapshot.and_then(|s| s.precopied(p.run)) {
            flush(&mut ranges, &mut filled, &mut buf, out)?;
            let bytes = &data[p.in_run as usize..(p.in_run + p.len) as usize];
            out.write_all(bytes)?;
            progress.advance(bytes.len() as u64);
            continue;
        }
        let (mut addr, mut left) = (p.addr, p.len);
        while left > 0 {
            if !p.readable {
                // process_vm_readv honours protections; /proc/PID/mem does not.
                flush(&mut ranges, &mut filled, &mut buf, out)?;
                let pm = match &procmem {
                    Some(m) => m,
                    None => {
                        procmem.insert(ProcMem::open(pid, false).dumping(pid, "opening memory")?)
                    }
                };
                let len = left.min(BATCH as u64) as usize;
                pm.read_exact_at(addr, &mut buf[..len])
                    .dumping(pid, "reading protected memory")?;
                out.write_all(&buf[..len])?;
                progress.advance(len as u64);
                addr += len as u64;
                left -= len as u64;
                continue;
            }
            let len = left.min((BATCH - filled) as u64);
            ranges.push(Range { addr, len });
            filled += len as usize;
            addr += len;
            left -= len;
            if filled == BATCH || ranges.len() >= 1024 {
                flush(&mut ranges, &mut filled, &mut buf, out)?;
            }
        }
    }
    flush(&mut ranges, &mut filled, &mut buf, out)
}

/// The page files of one process, mapped, by their place in its page offsets.
pub struct Pages<'a> {
    parts: Vec<(u64, &'a [u8])>,
}

impl<'a> Pages<'a> {
    /// `parts`: (start offset, bytes), in order.
    pub fn new(parts: Vec<(u64, &'a [u8])>) -> Self {
        Pages { parts }
    }

    /// Bytes [off, off + len), which must lie in one page file.
    pub fn get(&self, off: u64, len: u64) -> Option<&'a [u8]> {
        let (start, bytes) = self.parts.iter().rev().find(|(s, _)| *s <= off)?;
        bytes.get((off - start) as usize..(off - start + len) as usize)
    }

    /// Where the page file holding `off` starts and ends (a batch may not
    /// cross either).
    fn part_bounds(&self, off: u64) -> (u64, u64) {
        self.parts
            .iter()
            .rev()
            .find(|(s, _)| *s <= off)
            .map_or((0, 0), |(s, b)| (*s, s + b.len() as u64))
    }

    fn total(&self) -> u64 {
        self.parts.last().map_or(0, |(s, b)| s + b.len() as u64)
    }
}

/// Refuses a restore whose mapped files are gone or changed since the dump.
pub fn check_files(vmas: &[Vma], allow_changes: bool) -> Result<()> {
    for v in vmas {
        if v.path.is_empty() {
            continue;
        }
        // --allow-file-changes cannot help here: the file must be there.
        let md = std::fs::metadata(&v.path).map_err(|e| EngineError::FileMissing {
            path: v.path.clone(),
            detail: if e.kind() == std::io::ErrorKind::NotFound {
                "the file the process had mapped is gone; it must exist at the same path \
                 (put it back there, e.g. from a backup) before the image can be restored"
                    .to_string()
            } else {
                format!("the file the process had mapped cannot be read ({e})")
            },
        })?;
        if md.size() != v.file_size && !allow_changes {
            return Err(EngineError::FileChanged {
                path: v.path.clone(),
                detail: format!(
                    "the mapped file's size changed from {} to {} bytes",
                    v.file_size,
                    md.size()
                ),
            });
        }
    }
    Ok(())
}

fn kind(v: &Vma) -> VmaKind {
    VmaKind::try_from(v.kind).unwrap_or(VmaKind::AnonPrivate)
}

/// Whether this VMA is one the kernel provides (vDSO and friends), not mapped by us.
pub fn is_special(v: &Vma) -> bool {
    matches!(
        kind(v),
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
    )
}

/// Maps every ordinary VMA at its address in the restored process, writes the
/// stored pages, and sets the final protections and advice.
/// `shmem_fd` gives, for a shmem id, the descriptor (in the process) of the
/// object created for it (see [`ShmPlan`]); `node_fd`, for a deleted file
/// (`Vma::deleted_node`), a descriptor of the file made again for it.
/// `premapped`: the bounds of VMAs already mapped and filled by
/// [`restore_early`] (only their protections, advice and locks are left).
pub fn restore(
    r: &Remote,
    vmas: &[Vma],
    pages: &Pages,
    progress: &dyn Progress,
    shmem_fd: &dyn Fn(u64) -> Option<u64>,
    node_fd: &dyn Fn(u64) -> Option<u64>,
    premapped: &[(u64, u64)],
) -> Result<()> {
    let pid = r.pid;
    let is_premapped = |v: &Vma| premapped.binary_search(&(v.start, v.end)).is_ok();
    let mut files: HashMap<(String, bool), u64> = HashMap::new();
    let mut maps: Vec<Call> = Vec::new();
    for v in vmas.iter().filter(|v| !is_special(v) && !is_premapped(v)) {
        let k = kind(v);
        let len = v.end - v.start;
        let final_prot = v.prot as u64;
        let prot = if v.pages.is_empty() {
            final_prot
        } else {
            final_prot | (libc::PROT_READ | libc::PROT_WRITE) as u64
        };
        let mut flags = libc::MAP_FIXED_NOREPLACE as u64;
        if v.vm_flags.iter().any(|f| f == "gd") {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        let fd = match k {
            VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack => {
                flags |= (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
                u64::MAX
            }
            VmaKind::AnonHugetlb => {
                flags |= hugetlb_map_flags(v)?;
                u64::MAX
            }
            VmaKind::AnonShared => match shmem_fd(v.shmem_id) {
                Some(fd) => {
                    flags |= libc::MAP_SHARED as u64;
                    fd
                }
                None => {
                    flags |= (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
                    u64::MAX
                }
            },
            // A private mapping of a memfd: from the memfd made again.
            VmaKind::FilePrivate if v.shmem_id != 0 => {
                flags |= libc::MAP_PRIVATE as u64;
                shmem_fd(v.shmem_id).ok_or_else(|| {
                    EngineError::BadImage(format!(
                        "the private mapping {:#x}-{:#x} of a memfd has no shared memory object",
                        v.start, v.end
                    ))
                })?
            }
            // A mapping of a deleted file: from the file made again for a
            // descriptor of the process, opened again (that descriptor may
            // be write-only or O_PATH).
            VmaKind::FilePrivate | VmaKind::FileShared if v.deleted_node != 0 => {
                let shared = k == VmaKind::FileShared;
                flags |= if shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } as u64;
                let held = node_fd(v.deleted_node).ok_or_else(|| {
                    EngineError::BadImage(format!(
                        "the mapping {:#x}-{:#x} of a deleted file that no descriptor of process {pid} holds",
                        v.start, v.end
                    ))
                })?;
                let writable = shared && v.prot & libc::PROT_WRITE as u32 != 0;
                let path = format!("/proc/self/fd/{held}");
                open_mapped(
                    r,
                    &mut files,
                    &path,
                    writable,
                    "opening a mapped deleted file",
                )?
            }
            VmaKind::FilePrivate | VmaKind::FileShared => {
                let shared = k == VmaKind::FileShared;
                flags |= if shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } as u64;
                let writable = shared && v.prot & libc::PROT_WRITE as u32 != 0;
                open_mapped(r, &mut files, &v.path, writable, "opening a mapped file")?
            }
            VmaKind::SysvShm => {
                sysv::attach(r, v)?;
                continue;
            }
            _ => unreachable!("special VMAs are filtered out"),
        };
        let off = if fd == u64::MAX { 0 } else { v.pgoff };
        maps.push(Call {
            name: "mmap",
            nr: libc::SYS_mmap,
            args: [v.start, len, prot, flags, fd, off],
        });
        // Before the fill, so that its pages come as transparent huge pages.
        if wants_thp(v) {
            maps.push(Call {
                name: "madvise",
                nr: libc::SYS_madvise,
                args: [v.start, len, libc::MADV_HUGEPAGE as u64, 0, 0, 0],
            });
        }
    }
    // Thousands of mappings: one ptrace round trip per batch, not per call.
    let got = r.call_batch(&maps).restoring(pid, "mapping memory")?;
    for (c, got) in maps.iter().zip(got) {
        if c.nr == libc::SYS_mmap && got != c.args[0] {
            return Err(EngineError::BadImage(format!(
                "mapping {:#x} landed at {got:#x}",
                c.args[0]
            )));
        }
    }
    for fd in files.values() {
        r.call("close", libc::SYS_close, [*fd, 0, 0, 0, 0, 0])
            .restoring(pid, "closing mapped files")?;
    }

    let t = std::time::Instant::now();
    // Post-copy: pages left at the source stay missing, registered on a
    // userfaultfd handed to the migration (crate::postcopy).
    let lazy = vmas.iter().any(|v| !v.lazy.is_empty());
    if lazy && !crate::postcopy::accepting() {
        return Err(EngineError::BadImage(format!(
            "process {}: part of its memory was left at the source of a post-copy migration (lazy pages); such an image can be restored only by the migration receiving it",
            r.vpid
        )));
    }
    let rest: Vec<Vma>;
    let to_fill = if premapped.is_empty() {
        vmas
    } else {
        rest = vmas.iter().filter(|v| !is_premapped(v)).cloned().collect();
        &rest[..]
    };
    let uffd = FillUffd::open(r, to_fill, lazy)?;
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1e3,
        "userfaultfd for the fill"
    );
    let filled = crate::colocate::unpinned(|| fill(pid, to_fill, pages, progress, uffd.as_ref()));
    if let Some(u) = uffd {
        if filled.is_ok() {
            u.finish(r, vmas)?;
        } else {
            u.close(pid)?;
        }
    }
    filled?;
    tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "fill");

    let mut after: Vec<Call> = Vec::new();
    for v in vmas.iter().filter(|v| !is_special(v)) {
        let len = v.end - v.start;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        // Only VMAs mapped with extra access for filling need their
        // protection put back (premapped ones may have come from the parent).
        if (!v.pages.is_empty() && v.prot | rw != v.prot) || is_premapped(v) {
            after.push(Call {
                name: "mprotect",
                nr: libc::SYS_mprotect,
                args: [v.start, len, v.prot as u64, 0, 0, 0],
            });
        }
        for advice in v.vm_flags.iter().filter_map(|f| advice_of(f)) {
            after.push(Call {
                name: "madvise",
                nr: libc::SYS_madvise,
                args: [v.start, len, advice as u64, 0, 0, 0],
            });
        }
    }
    // Locks last, once the pages are in: mlock then finds present what was
    // (it faults in the rest, as it did for the original; MLOCK_ONFAULT
    // locks only the pages there). Premapped VMAs were locked before the
    // children were forked (locking again would unshare their pages).
    after.extend(
        vmas.iter()
            .filter(|v| !is_special(v) && has_flag(v, "lo") && !is_premapped(v))
            .map(lock_call),
    );
    let defaults = MmDefaults::of(vmas);
    if defaults.mlockall != 0 {
        // MCL_FUTURE without MCL_CURRENT: only the mappings made from now on.
        after.push(Call {
            name: "mlockall",
            nr: libc::SYS_mlockall,
            args: [
                (defaults.mlockall & (MCL_FUTURE | MCL_ONFAULT)) as u64,
                0,
                0,
                0,
                0,
                0,
            ],
        });
    }
    if defaults.merge_any {
        // It marks every private mapping mergeable: those that were not
        // (MADV_UNMERGEABLE since) are unmarked again.
        after.push(Call {
            name: "prctl(PR_SET_MEMORY_MERGE)",
            nr: libc::SYS_prctl,
            args: [PR_SET_MEMORY_MERGE, 1, 0, 0, 0, 0],
        });
        for v in vmas.iter().filter(|v| !is_special(v) && !has_flag(v, "mg")) {
            after.push(Call {
                name: "madvise",
                nr: libc::SYS_madvise,
                args: [
                    v.start,
                    v.end - v.start,
                    libc::MADV_UNMERGEABLE as u64,
                    0,
                    0,
                    0,
                ],
            });
        }
    }
    if let Err(e) = r.call_batch(&after) {
        // Name the area: each call again, alone (all of them idempotent).
        for c in &after {
            if let Err(e) = r.call(c.name, c.nr, c.args) {
                let on = match c.nr {
                    libc::SYS_mlockall | libc::SYS_prctl => "the process".to_string(),
                    _ => format!(
                        "the memory mapping {:#x}-{:#x}",
                        c.args[0],
                        c.args[0] + c.args[1]
                    ),
                };
                return Err(EngineError::Refused {
                    pid: r.vpid,
                    what: format!(
                        "{} on {on} failed ({e}), which the process had done",
                        describe_call(c)
                    ),
                });
            }
        }
        return Err(e).restoring(pid, "setting memory protections, advice and locks");
    }
    Ok(())
}

/// The MAP_HUGE_* bits (log2 of the page size at MAP_HUGE_SHIFT, the same
/// as MFD_HUGE_*) for hugetlb pages of `size` bytes.
pub(crate) fn huge_size_bits(size: u64) -> u64 {
    (size.trailing_zeros() as u64) << libc::MAP_HUGE_SHIFT
}

/// The mmap flags of private anonymous hugetlb memory `v`, with its page
/// size, and MAP_NORESERVE if it had it (VmFlags "nr": no huge pages were
/// set aside for it, it takes them as it touches them).
fn hugetlb_map_flags(v: &Vma) -> Result<u64> {
    let size = v.huge_page_size;
    if !size.is_power_of_two()
        || size < PAGE_SIZE
        || !v.start.is_multiple_of(size)
        || !v.end.is_multiple_of(size)
    {
        return Err(EngineError::BadImage(format!(
            "the hugetlb memory mapping {:#x}-{:#x} has a page size of {size} bytes",
            v.start, v.end
        )));
    }
    let mut flags =
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB) as u64 | huge_size_bits(size);
    if has_flag(v, "nr") {
        flags |= libc::MAP_NORESERVE as u64;
    }
    Ok(flags)
}

/// Huge pages of one size a restore needs, per kind of use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct HugeNeed {
    pages: u64,
    /// The mapping or object needing the most, for the message.
    largest: Option<(String, u64)>,
}

/// The huge pages the restore of `procs` takes, by page size: a private
/// hugetlb mapping reserves all its pages when mapped (only those it holds
/// with MAP_NORESERVE), a hugetlb shared memory object (counted once) all
/// of its size.
fn huge_pages_needed(
    procs: &[crate::schema::Process],
) -> std::collections::BTreeMap<u64, HugeNeed> {
    let mut need: std::collections::BTreeMap<u64, HugeNeed> = Default::default();
    let mut add = |size: u64, pages: u64, what: String| {
        let n = need.entry(size).or_default();
        n.pages += pages;
        if n.largest.as_ref().is_none_or(|(_, p)| pages > *p) {
            n.largest = Some((what, pages));
        }
    };
    for p in procs {
        // Private mappings of hugetlb files (memfds, hugetlbfs files) too;
        // shared ones of hugetlbfs files use the file's pages.
        let private = |v: &&Vma| {
            kind(v) == VmaKind::AnonHugetlb
                || (kind(v) == VmaKind::FilePrivate && v.huge_page_size != 0)
        };
        for v in p.vmas.iter().filter(private) {
            let h = v.huge_page_size.max(1);
            let pages = if has_flag(v, "nr") {
                v.pages
                    .iter()
                    .map(|r| r.nr_pages * PAGE_SIZE)
                    .sum::<u64>()
                    .div_ceil(h)
            } else {
                (v.end - v.start).div_ceil(h)
            };
            add(
                v.huge_page_size,
                pages,
                format!(
                    "the private hugetlb memory mapping {:#x}-{:#x} of process {}{}",
                    v.start,
                    v.end,
                    p.pid,
                    if v.path.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", v.path)
                    }
                ),
            );
        }
        // Each object's data is kept by one process only.
        for o in p.shmem.iter().filter(|o| o.huge_page_size != 0) {
            let h = o.huge_page_size;
            let size = p
                .vmas
                .iter()
                .filter(|v| v.shmem_id == o.id)
                .map(|v| v.shmem_size.max(v.pgoff + v.end - v.start))
                .fold(o.size, u64::max);
            let what = match o.memfd {
                true => format!("the hugetlb memfd memfd:{} of process {}", o.name, p.pid),
                false => format!("the shared hugetlb memory of process {}", p.pid),
            };
            add(h, size.div_ceil(h), what);
        }
        for s in p.sysv_shm.iter().filter(|s| s.huge_page_size != 0) {
            let h = s.huge_page_size;
            add(
                h,
                s.size.div_ceil(h),
                format!("the hugetlb SysV shared memory segment shmid {}", s.shmid),
            );
        }
    }
    need
}

/// Refuses, before any process is created, a restore whose hugetlb memory
/// this host cannot give: for each page size, the huge pages needed must be
/// free and not reserved (/sys/kernel/mm/hugepages), or be allowed as
/// surplus pages (nr_overcommit_hugepages).
pub fn check_huge_pages(procs: &[crate::schema::Process]) -> Result<()> {
    for (size, need) in huge_pages_needed(procs) {
        let kb = size / 1024;
        let dir = format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB");
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(format!("{dir}/{f}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let (what, largest) = need.largest.clone().unwrap_or_default();
        let pid = procs.first().map_or(0, |p| p.pid);
        let (Some(free), Some(resv)) = (read("free_hugepages"), read("resv_hugepages")) else {
            return Err(EngineError::Refused {
                pid,
                what: format!(
                    "{what} (and any other hugetlb memory of {kb} KiB pages: {} pages in all) needs huge pages of {kb} KiB, which this host does not have ({dir} is missing)",
                    need.pages
                ),
            });
        };
        let overcommit = read("nr_overcommit_hugepages")
            .unwrap_or(0)
            .saturating_sub(read("surplus_hugepages").unwrap_or(0));
        let available = free.saturating_sub(resv) + overcommit;
        if need.pages > available {
            return Err(EngineError::Refused {
                pid,
                what: format!(
                    "its hugetlb memory needs {} huge pages of {kb} KiB ({largest} of them for {what}), and this host has {available} available ({free} free, {resv} of those reserved, {overcommit} more allowed as surplus); reserve more (echo N > {dir}/nr_hugepages) and restore again",
                    need.pages
                ),
            });
        }
    }
    Ok(())
}

/// Process-wide defaults for the mappings a process makes, which no /proc
/// file shows: mlockall(MCL_FUTURE) and prctl(PR_SET_MEMORY_MERGE). Kept on
/// the process's first VMA (`Vma::mlockall`, `Vma::merge_any`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MmDefaults {
    pub mlockall: u32,
    pub merge_any: bool,
}

const PR_GET_MEMORY_MERGE: u64 = 68;
const PR_SET_MEMORY_MERGE: u64 = 67;

impl MmDefaults {
    /// Reads them from a frozen process in which `r`'s scratch area (`len`
    /// bytes at `r.scratch`) was just mapped, `lck_before` being its VmLck
    /// before that. Under MCL_FUTURE a new mapping is locked (VmLck grows
    /// by its size) and, unless MCL_ONFAULT was given too, populated at once.
    pub fn read(r: &Remote, lck_before: u64) -> Result<MmDefaults> {
        let pid = r.pid;
        let stage = "reading the process's memory locking defaults";
        let st = godwit_sys::proc::status(pid).dumping(pid, stage)?;
        let mut d = MmDefaults::default();
        if st.vm_lck >= lck_before + r.scratch_len {
            let mut entry = Vec::with_capacity(1);
            Pagemap::open(pid)
                .and_then(|m| m.read(r.scratch, r.scratch + PAGE_SIZE, &mut entry))
                .dumping(pid, stage)?;
            let populated = entry.first().is_some_and(|e| e & pm::PRESENT != 0);
            d.mlockall = MCL_FUTURE | if populated { 0 } else { MCL_ONFAULT };
        }
        // EINVAL on a kernel without KSM: nothing to merge then.
        let out = r
            .inj()
            .run(libc::SYS_prctl, [PR_GET_MEMORY_MERGE, 0, 0, 0, 0, 0])
            .dumping(pid, "reading prctl(PR_GET_MEMORY_MERGE)")?;
        d.merge_any = out.ret == 1;
        Ok(d)
    }

    /// Puts them on the first of a process's VMAs.
    pub fn keep(self, vmas: &mut [Vma]) {
        if let Some(v) = vmas.first_mut() {
            v.mlockall = self.mlockall;
            v.merge_any = self.merge_any;
        }
    }

    fn of(vmas: &[Vma]) -> MmDefaults {
        vmas.first()
            .map_or_else(MmDefaults::default, |v| MmDefaults {
                mlockall: v.mlockall,
                merge_any: v.merge_any,
            })
    }
}

fn has_flag(v: &Vma, flag: &str) -> bool {
    v.vm_flags.iter().any(|f| f == flag)
}

/// Refuses, before any process is created, a restore that could not give
/// process `p` its memory advice and locks back: KSM-mergeable areas on a
/// host without KSM, and locked memory beyond what godwit may lock
/// (without CAP_IPC_LOCK, RLIMIT_MEMLOCK bounds it; the process is rebuilt
/// under godwit's limit).
pub fn check_restorable(p: &crate::schema::Process) -> Result<()> {
    let ksm = std::path::Path::new("/sys/kernel/mm/ksm").exists();
    if MmDefaults::of(&p.vmas).merge_any && !ksm {
        return Err(EngineError::Refused {
            pid: p.pid,
            what: "it had made all its memory mergeable (prctl PR_SET_MEMORY_MERGE), and this kernel has no KSM (/sys/kernel/mm/ksm is missing); restore on a kernel built with CONFIG_KSM".into(),
        });
    }
    if let Some(v) = p.vmas.iter().find(|v| has_flag(v, "mg")).filter(|_| !ksm) {
        return Err(EngineError::Refused {
            pid: p.pid,
            what: format!(
                "the memory mapping {:#x}-{:#x} was marked mergeable (MADV_MERGEABLE), and this kernel has no KSM (/sys/kernel/mm/ksm is missing); restore on a kernel built with CONFIG_KSM",
                v.start, v.end
            ),
        });
    }
    let locked: u64 = p
        .vmas
        .iter()
        .filter(|v| !is_special(v) && has_flag(v, "lo"))
        .map(|v| v.end - v.start)
        .sum();
    let future = p.vmas.first().is_some_and(|v| v.mlockall != 0);
    if locked == 0 && !future {
        return Ok(());
    }
    let me = godwit_sys::proc::status(std::process::id() as i32)
        .restoring(p.pid, "reading godwit's own capabilities")?;
    const CAP_IPC_LOCK: u32 = 14;
    if me.cap_eff & (1 << CAP_IPC_LOCK) != 0 {
        return Ok(());
    }
    let (soft, _) = godwit_sys::process::get_rlimit(0, libc::RLIMIT_MEMLOCK)
        .restoring(p.pid, "reading the locked-memory limit")?;
    lock_limit_refusal(p, locked, future, soft).map_or(Ok(()), Err)
}

/// Why `locked` bytes of locked memory (and an mlockall(MCL_FUTURE) with
/// `future`) cannot be locked under the limit `soft`, if they cannot.
fn lock_limit_refusal(
    p: &crate::schema::Process,
    locked: u64,
    future: bool,
    soft: u64,
) -> Option<EngineError> {
    if locked <= soft && (soft > 0 || !future) {
        return None;
    }
    let first = p.vmas.iter().find(|v| has_flag(v, "lo"));
    let areas = match first {
        Some(v) => format!(
            "{locked} bytes of locked memory (mlock; the first locked mapping is {:#x}-{:#x})",
            v.start, v.end
        ),
        None => "mlockall(MCL_FUTURE)".to_string(),
    };
    Some(EngineError::Refused {
        pid: p.pid,
        what: format!(
            "it had {areas}, more than godwit may lock: it lacks CAP_IPC_LOCK and RLIMIT_MEMLOCK is {soft} bytes; raise the limit (ulimit -l) or restore as root"
        ),
    })
}

/// The mmap of a private anonymous VMA (filled after), then MADV_HUGEPAGE
/// if it had it (before the fill, so that its pages come as huge pages).
fn anon_map_calls(v: &Vma) -> [Option<Call>; 2] {
    let mut prot = v.prot as u64;
    if !v.pages.is_empty() || !v.inherited.is_empty() {
        prot |= (libc::PROT_READ | libc::PROT_WRITE) as u64;
    }
    let mut flags = (libc::MAP_FIXED_NOREPLACE | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    if has_flag(v, "gd") {
        flags |= libc::MAP_GROWSDOWN as u64;
    }
    let len = v.end - v.start;
    [
        Some(Call {
            name: "mmap",
            nr: libc::SYS_mmap,
            args: [v.start, len, prot, flags, u64::MAX, 0],
        }),
        wants_thp(v).then_some(Call {
            name: "madvise",
            nr: libc::SYS_madvise,
            args: [v.start, len, libc::MADV_HUGEPAGE as u64, 0, 0, 0],
        }),
    ]
}

/// Before process `p` forks its children (the restore's first phase):
/// copy-on-write sharing with its parent and with its children.
///
/// `held`: the VMAs the parent had mapped and filled when it forked this
/// process (it holds them too, sharing their pages). Those with pages
/// inherited in `vmas` are kept: pages the process did not have are
/// dropped (MADV_DONTNEED) and its own pages written over the parent's
/// (which unshares just those). The others are unmapped.
/// `for_children`: the bounds of VMAs its children inherit pages in;
/// those not kept are mapped and filled now, so the children forked next
/// share them. Returns the bounds of every VMA now mapped and filled
/// (sorted), which [`restore`] then leaves as they are.
pub fn restore_early(
    r: &Remote,
    vmas: &[Vma],
    pages: &Pages,
    progress: &dyn Progress,
    held: &[(u64, u64)],
    for_children: &[(u64, u64)],
) -> Result<Vec<(u64, u64)>> {
    let pid = r.pid;
    let stage = "sharing memory with the parent";
    let kept: Vec<&Vma> = vmas.iter().filter(|v| !v.inherited.is_empty()).collect();
    for v in &kept {
        if held.binary_search(&(v.start, v.end)).is_err() {
            return Err(EngineError::BadImage(format!(
                "process {}: the memory mapping {:#x}-{:#x} has pages of its parent's, which has no such mapping",
                r.vpid, v.start, v.end
            )));
        }
    }
    let mut calls: Vec<Call> = Vec::new();
    for &(start, end) in held {
        if !kept.iter().any(|v| v.start == start && v.end == end) {
            calls.push(Call {
                name: "munmap",
                nr: libc::SYS_munmap,
                args: [start, end - start, 0, 0, 0, 0],
            });
        }
    }
    for v in &kept {
        for (a, b) in gaps(v) {
            calls.push(Call {
                name: "madvise",
                nr: libc::SYS_madvise,
                args: [a, b - a, libc::MADV_DONTNEED as u64, 0, 0, 0],
            });
        }
    }
    let fresh: Vec<&Vma> = vmas
        .iter()
        .filter(|v| for_children.binary_search(&(v.start, v.end)).is_ok() && v.inherited.is_empty())
        .collect();
    for v in &fresh {
        calls.extend(anon_map_calls(v).into_iter().flatten());
    }
    if calls.is_empty() && kept.is_empty() {
        return Ok(Vec::new());
    }
    let got = r.call_batch(&calls).restoring(pid, stage)?;
    for (c, got) in calls.iter().zip(got) {
        if c.nr == libc::SYS_mmap && got != c.args[0] {
            return Err(EngineError::BadImage(format!(
                "mapping {:#x} landed at {got:#x}",
                c.args[0]
            )));
        }
    }
    let fresh_vmas: Vec<Vma> = fresh.iter().map(|v| (*v).clone()).collect();
    let mut all: Vec<Vma> = kept.iter().map(|v| (*v).clone()).collect();
    all.extend(fresh_vmas.iter().cloned());
    all.sort_by_key(|v| v.start);
    // UFFDIO_COPY only where nothing is mapped yet: the fresh VMAs.
    let uffd = FillUffd::open(r, &fresh_vmas, false)?;
    let filled = crate::colocate::unpinned(|| fill(pid, &all, pages, progress, uffd.as_ref()));
    if let Some(u) = uffd {
        u.close(pid)?;
    }
    filled?;
    // Locked before the fork, as the original must have been for its
    // children to share the pages: mlock writes every page of a private
    // writable mapping, which after the fork would unshare them all.
    let locks: Vec<Call> = all
        .iter()
        .filter(|v| has_flag(v, "lo"))
        .map(lock_call)
        .collect();
    r.call_batch(&locks)
        .restoring(pid, "locking memory shared with the children")?;
    Ok(all.iter().map(|v| (v.start, v.end)).collect())
}

/// The ranges of a VMA holding neither its own stored pages nor inherited
/// ones (nor lazy ones), sorted.
fn gaps(v: &Vma) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = v
        .pages
        .iter()
        .chain(&v.inherited)
        .chain(&v.lazy)
        .map(|r| (r.addr, r.addr + r.nr_pages * PAGE_SIZE))
        .collect();
    runs.sort_unstable();
    let mut out = Vec::new();
    let mut at = v.start;
    for (a, b) in runs {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < v.end {
        out.push((at, v.end));
    }
    out
}

/// The bounds of `p`'s VMAs in which a child (a live one of `children`)
/// inherits pages, sorted.
pub fn shared_with_children<'a>(
    p: &crate::schema::Process,
    children: impl Iterator<Item = &'a crate::schema::Process>,
) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = children
        .filter(|c| !c.zombie)
        .flat_map(|c| c.vmas.iter())
        .filter(|v| !v.inherited.is_empty())
        .map(|v| (v.start, v.end))
        .filter(|b| {
            p.vmas
                .iter()
                .any(|v| (v.start, v.end) == *b && shares_pages(v))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The mlock2 giving a locked VMA ("lo") its lock again ("lf": on fault).
fn lock_call(v: &Vma) -> Call {
    let onfault = if has_flag(v, "lf") { MLOCK_ONFAULT } else { 0 };
    Call {
        name: "mlock2",
        nr: libc::SYS_mlock2,
        args: [v.start, v.end - v.start, onfault, 0, 0, 0],
    }
}

/// MLOCK_ONFAULT (mlock2): lock the pages as they are faulted in.
const MLOCK_ONFAULT: u64 = 1;
/// mlockall(2) flags.
const MCL_FUTURE: u32 = 2;
const MCL_ONFAULT: u32 = 4;

/// The madvise advice that gives an area this VmFlags flag again, for the
/// advice kept by flags. MADV_HUGEPAGE ("hg") is given before the pages
/// are written (see [`wants_thp`]).
fn advice_of(flag: &str) -> Option<i32> {
    Some(match flag {
        "dc" => libc::MADV_DONTFORK,
        "dd" => libc::MADV_DONTDUMP,
        "wf" => libc::MADV_WIPEONFORK,
        "nh" => libc::MADV_NOHUGEPAGE,
        "rr" => libc::MADV_RANDOM,
        "sr" => libc::MADV_SEQUENTIAL,
        "mg" => libc::MADV_MERGEABLE,
        _ => return None,
    })
}

/// A call of the restore's last memory batch, as a user would name it.
fn describe_call(c: &Call) -> String {
    match (c.nr, c.args[2] as i32) {
        (libc::SYS_mlock2, 0) => "mlock".to_string(),
        (libc::SYS_mlock2, _) => "mlock2(MLOCK_ONFAULT)".to_string(),
        (libc::SYS_mlockall, _) => "mlockall(MCL_FUTURE)".to_string(),
        (libc::SYS_madvise, libc::MADV_DONTFORK) => "madvise(MADV_DONTFORK)".to_string(),
        (libc::SYS_madvise, libc::MADV_DONTDUMP) => "madvise(MADV_DONTDUMP)".to_string(),
        (libc::SYS_madvise, libc::MADV_WIPEONFORK) => "madvise(MADV_WIPEONFORK)".to_string(),
        (libc::SYS_madvise, libc::MADV_NOHUGEPAGE) => "madvise(MADV_NOHUGEPAGE)".to_string(),
        (libc::SYS_madvise, libc::MADV_RANDOM) => "madvise(MADV_RANDOM)".to_string(),
        (libc::SYS_madvise, libc::MADV_SEQUENTIAL) => "madvise(MADV_SEQUENTIAL)".to_string(),
        (libc::SYS_madvise, libc::MADV_MERGEABLE) => "madvise(MADV_MERGEABLE)".to_string(),
        (libc::SYS_madvise, libc::MADV_UNMERGEABLE) => "madvise(MADV_UNMERGEABLE)".to_string(),
        _ => c.name.to_string(),
    }
}

/// Bytes of page file per process_vm_writev batch while restoring.
const FILL_BATCH: u64 = 8 << 20;
/// Threads filling memory: first-touch page faults scale with cores.
const FILL_THREADS: usize = 2;

/// One process_vm_writev call: page bytes [start, end) to `ranges`.
struct Batch {
    start: u64,
    end: u64,
    ranges: Vec<Range>,
}

/// Cuts the page runs into batches of contiguous bytes of one page file.
/// Runs are usually stored back to back in address order; after a pre-copy
/// (crate::precopy) a run may lie anywhere in the stream.
fn batches(vmas: &[Vma], pages: &Pages) -> Result<Vec<Batch>> {
    let file_len = pages.total();
    let mut out: Vec<Batch> = Vec::new();
    for run in vmas.iter().flat_map(|v| &v.pages) {
        let len = run.nr_pages * PAGE_SIZE;
        if run.offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(EngineError::BadImage(format!(
                "page file too short: needs bytes up to {}, has {file_len}",
                run.offset.saturating_add(len)
            )));
        }
        let mut done = 0;
        while done < len {
            let at = run.offset + done;
            let (part_start, part_end) = pages.part_bounds(at);
            let room = match out.last() {
                Some(b)
                    if b.end == at
                        && b.start >= part_start
                        && b.end - b.start < FILL_BATCH
                        && b.ranges.len() < 1024 =>
                {
                    (FILL_BATCH - (b.end - b.start)).min(part_end - at)
                }
                _ => {
                    out.push(Batch {
                        start: at,
                        end: at,
                        ranges: Vec::new(),
                    });
                    FILL_BATCH.min(part_end - at)
                }
            };
            let piece = (len - done).min(room);
            let b = out.last_mut().expect("pushed above");
            b.ranges.push(Range {
                addr: run.addr + done,
                len: piece,
            });
            b.end += piece;
            done += piece;
        }
    }
    Ok(out)
}

/// A userfaultfd of the restored process with its private anonymous VMAs
/// registered for missing pages: the fill then places each stored page with
/// UFFDIO_COPY (allocate + copy) instead of a first-touch fault that zeroes
/// the page before process_vm_writev copies over it — about twice as fast.
struct FillUffd {
    uffd: Uffd,
    registered: Vec<Range>,
    /// Post-copy: the VMAs with lazy pages stay registered after the fill.
    lazy: bool,
}

/// Events a post-copy's userfaultfd reports besides faults, so that no
/// page is ever placed where the process no longer expects it.
const POSTCOPY_FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP;

impl FillUffd {
    /// `None` when the process cannot have one (then every page goes
    /// through process_vm_writev). With `lazy` (post-copy) it must have
    /// one, and every VMA with lazy pages is registered.
    fn open(r: &Remote, vmas: &[Vma], lazy: bool) -> Result<Option<FillUffd>> {
        let pid = r.pid;
        let wanted: Vec<&Vma> = vmas
            .iter()
            .filter(|v| {
                (lazy && !v.lazy.is_empty())
                    || (v.pages.iter().map(|r| r.nr_pages).sum::<u64>() >= UFFD_VMA_MIN_PAGES
                        && matches!(
                            kind(v),
                            VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack
                        )
                        && !wants_thp(v))
            })
            .collect();
        if !lazy
            && wanted
                .iter()
                .map(|v| v.pages.iter().map(|p| p.nr_pages).sum::<u64>())
                .sum::<u64>()
                < UFFD_FILL_MIN_PAGES
        {
            return Ok(None);
        }
        let stage = "opening a userfaultfd for the fill";
        // Not UFFD_USER_MODE_ONLY: a lazy page touched by the kernel (a
        // write(2) from it, say) must wait for its contents too. Post-copy
        // polls it, which a blocking userfaultfd refuses (POLLERR).
        let flags = match lazy {
            true => libc::O_CLOEXEC | libc::O_NONBLOCK,
            false => libc::O_CLOEXEC,
        };
        let fd = match r.take_userfaultfd(flags as u64) {
            Ok(Some(fd)) => fd,
            Ok(None) if lazy => {
                return Err(EngineError::Unsupported {
                    pid: r.vpid,
                    what: "post-copy without a userfaultfd (not permitted here)".into(),
                })
            }
            Err(e) if lazy => return Err(e).restoring(pid, "opening a userfaultfd for post-copy"),
            Ok(None) => {
                tracing::debug!(pid, "no userfaultfd for the fill; writing pages instead");
                return Ok(None);
            }
            Err(e) => {
                tracing::debug!(
                    pid,
                    "no userfaultfd for the fill ({e}); writing pages instead"
                );
                return Ok(None);
            }
        };
        let features = if lazy { POSTCOPY_FEATURES } else { 0 };
        let uffd = Uffd::new(fd, features).restoring(pid, stage)?;
        let mut registered = Vec::new();
        for v in wanted {
            let len = v.end - v.start;
            match uffd.register(v.start, len, uffd::REGISTER_MODE_MISSING) {
                Ok(()) => registered.push(Range { addr: v.start, len }),
                Err(e) if lazy && !v.lazy.is_empty() => {
                    return Err(e).restoring(pid, "registering memory left at the source")
                }
                Err(e) => tracing::debug!(pid, start = v.start, "not registered for the fill: {e}"),
            }
        }
        Ok(Some(FillUffd {
            uffd,
            registered,
            lazy,
        }))
    }

    /// After the fill: unregisters the VMAs registered for the fill only,
    /// and hands the descriptor, with the lazy runs it still owes, to the
    /// post-copy receiver (crate::postcopy).
    fn finish(self, r: &Remote, vmas: &[Vma]) -> Result<()> {
        if !self.lazy {
            return self.close(r.pid);
        }
        let lazy_at = |g: &Range| vmas.iter().any(|v| v.start == g.addr && !v.lazy.is_empty());
        for g in self.registered.iter().filter(|g| !lazy_at(g)) {
            self.uffd
                .unregister(g.addr, g.len)
                .restoring(r.pid, "releasing the fill's userfaultfd")?;
        }
        let mut owed = Vec::new();
        let mut wipe_on_fork = Vec::new();
        for v in vmas.iter().filter(|v| !v.lazy.is_empty()) {
            if v.vm_flags.iter().any(|f| f == "wf") {
                wipe_on_fork.push((v.start, v.end));
            }
            owed.extend(
                v.lazy
                    .iter()
                    .map(|run| (run.addr, run.nr_pages * PAGE_SIZE)),
            );
        }
        crate::postcopy::hand_over(crate::postcopy::LazyMemory {
            pid: r.pid,
            src_pid: r.vpid,
            uffd: self.uffd,
            owed,
            wipe_on_fork,
        });
        Ok(())
    }

    fn covers(&self, r: &Range) -> bool {
        self.registered
            .iter()
            .any(|g| g.addr <= r.addr && r.addr + r.len <= g.addr + g.len)
    }

    /// Unregisters every range (the VMAs are ordinary again); our
    /// descriptor closes on drop.
    fn close(&self, pid: i32) -> Result<()> {
        for g in &self.registered {
            self.uffd
                .unregister(g.addr, g.len)
                .restoring(pid, "releasing the fill's userfaultfd")?;
        }
        Ok(())
    }
}

/// MADV_HUGEPAGE was given. Such a VMA is filled by process_vm_writev,
/// whose faults allocate huge pages (UFFDIO_COPY places 4 KiB pages only).
fn wants_thp(v: &Vma) -> bool {
    v.vm_flags.iter().any(|f| f == "hg")
}

/// An fd in the process behind `r` of `path` (a file it maps), opened
/// read-write for a writable shared mapping, else read-only, once per
/// (path, access): `files` keeps those opened so far.
fn open_mapped(
    r: &Remote,
    files: &mut HashMap<(String, bool), u64>,
    path: &str,
    writable: bool,
    stage: &'static str,
) -> Result<u64> {
    if let Some(fd) = files.get(&(path.to_string(), writable)) {
        return Ok(*fd);
    }
    let oflags = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    let fd = r
        .openat(path, oflags | libc::O_CLOEXEC, 0)
        .restoring(r.pid, stage)?;
    files.insert((path.to_string(), writable), fd);
    Ok(fd)
}

/// Below this many private anonymous pages, the userfaultfd set-up costs
/// more than it saves.
const UFFD_FILL_MIN_PAGES: u64 = 256;
/// A VMA is registered (and all its pages copied one run per ioctl) only
/// when it holds at least this many stored pages: registering, copying and
/// unregistering costs tens of microseconds per VMA, which thousands of
/// small mappings would feel; those are written in batches instead.
const UFFD_VMA_MIN_PAGES: u64 = 64;

/// Writes one batch: runs in registered VMAs with UFFDIO_COPY, the others
/// (file-backed private copies, shared memory) with process_vm_writev.
fn fill_batch(pid: i32, local: &[u8], ranges: &[Range], uffd: Option<&FillUffd>) -> Result<()> {
    let write = |from: usize, to: usize, rs: &[Range]| -> Result<()> {
        if rs.is_empty() {
            return Ok(());
        }
        let n = mem::write_ranges(pid, &local[from..to], rs).restoring(pid, "writing memory")?;
        if n != to - from {
            return Err(EngineError::BadImage(format!(
                "only {n} of {} bytes of memory could be written",
                to - from
            )));
        }
        Ok(())
    };
    let Some(u) = uffd else {
        return write(0, local.len(), ranges);
    };
    let (mut off, mut from, mut first) = (0usize, 0usize, 0usize);
    for (i, rg) in ranges.iter().enumerate() {
        let len = rg.len as usize;
        if u.covers(rg) {
            write(from, off, &ranges[first..i])?;
            u.uffd
                .copy(rg.addr, &local[off..off + len])
                .restoring(pid, "writing memory")?;
            first = i + 1;
            from = off + len;
        }
        off += len;
    }
    write(from, off, &ranges[first..])
}

/// Writes the stored pages into the restored process's memory.
fn fill(
    pid: i32,
    vmas: &[Vma],
    pages: &Pages,
    progress: &dyn Progress,
    uffd: Option<&FillUffd>,
) -> Result<()> {
    let batches = batches(vmas, pages)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || -> Result<()> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(b) = batches.get(i) else {
                return Ok(());
            };
            let local = pages.get(b.start, b.end - b.start).ok_or_else(|| {
                EngineError::BadImage(format!("page bytes {}..{} are missing", b.start, b.end))
            })?;
            fill_batch(pid, local, &b.ranges, uffd)?;
            progress.advance(local.len() as u64);
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..FILL_THREADS).map(|_| s.spawn(work)).collect();
        let mut result = work();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(EngineError::BadImage("a fill thread panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64, flags: &[&str]) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: true,
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_of_a_map_read_before_the_scratch_area() {
        let maps = [entry(0x1000, 0x3000, &[]), entry(0x8000, 0x9000, &[])];
        // The scratch area merged into the first VMA (from below), and
        // another one standing alone: both left out of the plan.
        let smaps = [
            entry(0x0, 0x3000, &["rd", "wr"]),
            entry(0x5000, 0x6000, &["rd"]),
            entry(0x8000, 0x9000, &["rd", "wr", "dd"]),
        ];
        let out = with_flags_of(1, &maps, &smaps).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].start, out[0].end), (0x1000, 0x3000));
        assert_eq!(out[0].vm_flags, ["rd", "wr"]);
        assert_eq!((out[1].start, out[1].end), (0x8000, 0x9000));
        assert!(out[1].has_flag("dd"));
        // A VMA that shrank or vanished: refused, not planned from stale bounds.
        let shrunk = [entry(0x0, 0x2000, &[]), entry(0x8000, 0x9000, &[])];
        assert!(with_flags_of(1, &maps, &shrunk).is_err());
        assert!(with_flags_of(1, &maps, &smaps[..2]).is_err());
    }

    #[test]
    fn huge_pages_a_restore_needs() {
        const H: u64 = 2 << 20;
        let hv = |start: u64, pages: u64, kind: VmaKind, flags: &[&str], stored: u64| Vma {
            start,
            end: start + pages * H,
            kind: kind as i32,
            huge_page_size: H,
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
            pages: vec![PageRun {
                addr: start,
                nr_pages: stored * H / PAGE_SIZE,
                offset: 0,
            }],
            ..Default::default()
        };
        let p = crate::schema::Process {
            pid: 9,
            vmas: vec![
                // All its pages reserved, 1 stored or not.
                hv(0x4000_0000, 3, VmaKind::AnonHugetlb, &["ht"], 1),
                // MAP_NORESERVE: the pages it holds.
                hv(0x8000_0000, 4, VmaKind::AnonHugetlb, &["ht", "nr"], 1),
                // A shared mapping of a hugetlbfs file: the file's pages.
                hv(0xc000_0000, 5, VmaKind::FileShared, &["ht", "sh"], 0),
                // A private one: reserved.
                hv(0x1_0000_0000, 1, VmaKind::FilePrivate, &["ht"], 0),
            ],
            shmem: vec![crate::schema::ShmemObject {
                id: 1,
                size: 2 * H,
                huge_page_size: H,
                ..Default::default()
            }],
            sysv_shm: vec![crate::schema::SysvShm {
                shmid: 3,
                size: H + 1,
                huge_page_size: H,
                ..Default::default()
            }],
            ..Default::default()
        };
        let need = huge_pages_needed(std::slice::from_ref(&p));
        let n = &need[&H];
        assert_eq!(n.pages, 3 + 1 + 1 + 2 + 2);
        let (what, pages) = n.largest.clone().unwrap();
        assert_eq!(pages, 3);
        assert!(what.contains("0x40000000-0x40600000"), "{what}");
        // A tree without hugetlb memory needs none.
        let plain = crate::schema::Process::default();
        assert!(huge_pages_needed(&[plain]).is_empty());
    }

    #[test]
    fn hugetlb_mmap_flags() {
        let v = Vma {
            start: 1 << 30,
            end: 2 << 30,
            huge_page_size: 1 << 30,
            vm_flags: vec!["ht".into(), "nr".into()],
            ..Default::default()
        };
        let f = hugetlb_map_flags(&v).unwrap();
        assert_eq!(f >> libc::MAP_HUGE_SHIFT, 30);
        assert_ne!(f & libc::MAP_HUGETLB as u64, 0);
        assert_ne!(f & libc::MAP_NORESERVE as u64, 0);
        // A page size that is none, or bounds off its pages: a bad image.
        let bad = Vma {
            huge_page_size: 3 << 20,
            ..v.clone()
        };
        assert!(hugetlb_map_flags(&bad).is_err());
        let off = Vma {
            start: (1 << 30) + 4096,
            ..v
        };
        assert!(hugetlb_map_flags(&off).is_err());
    }

    #[test]
    fn page_selection() {
        let present_anon = pm::PRESENT | pm::EXCLUSIVE;
        let present_file = pm::PRESENT | pm::FILE_OR_SHARED;
        assert!(wanted(VmaKind::AnonPrivate, present_anon));
        assert!(!wanted(VmaKind::AnonPrivate, 0));
        assert!(wanted(VmaKind::FilePrivate, present_anon));
        assert!(!wanted(VmaKind::FilePrivate, present_file));
        assert!(!wanted(VmaKind::FileShared, present_anon));
        assert!(!wanted(VmaKind::Vdso, present_file));
    }

    #[test]
    fn batches_cover_runs_in_order() {
        let run = |addr, nr_pages, offset| PageRun {
            addr,
            nr_pages,
            offset,
        };
        let vma = |pages| Vma {
            pages,
            ..Default::default()
        };
        // 3 pages, then a 5000-page (20 MiB) run: split at 8 MiB boundaries.
        let vmas = vec![
            vma(vec![run(0x10000, 3, 0)]),
            vma(vec![run(0x100000, 5000, 3 * 4096)]),
        ];
        let file = vec![0u8; 5003 * 4096];
        let b = batches(&vmas, &Pages::new(vec![(0, &file[..])])).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].start, 0);
        assert_eq!(b[0].end - b[0].start, FILL_BATCH);
        assert_eq!(
            b[0].ranges[0],
            Range {
                addr: 0x10000,
                len: 3 * 4096
            }
        );
        assert_eq!(b[0].ranges[1].addr, 0x100000);
        let total: u64 = b.iter().flat_map(|x| &x.ranges).map(|r| r.len).sum();
        assert_eq!(total, 5003 * 4096);
        for w in b.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(
            batches(&vmas, &Pages::new(vec![(0, &file[..100])])).is_err(),
            "short page file"
        );
        // Runs anywhere in the stream (after a pre-copy): a batch per
        // stretch of contiguous bytes.
        let scattered = vec![vma(vec![run(0x10000, 1, 8192), run(0x20000, 1, 0)])];
        let b = batches(&scattered, &Pages::new(vec![(0, &file[..])])).unwrap();
        assert_eq!(
            b.iter().map(|x| (x.start, x.end)).collect::<Vec<_>>(),
            vec![(8192, 12288), (0, 4096)]
        );
        assert_eq!(b[1].ranges[0].addr, 0x20000);
        let beyond = vec![vma(vec![run(0x10000, 1, 5003 * 4096)])];
        assert!(
            batches(&beyond, &Pages::new(vec![(0, &file[..])])).is_err(),
            "a run past the end"
        );
        // Two page files: no batch crosses from one to the other.
        let two = Pages::new(vec![(0, &file[..8192]), (8192, &file[8192..])]);
        let b = batches(&vmas, &two).unwrap();
        assert_eq!((b[0].start, b[0].end), (0, 8192));
        assert_eq!(b[1].start, 8192);
    }

    #[test]
    fn dev_numbers() {
        // makedev(0xfe, 1) and makedev(0x103, 0x205), as glibc encodes them.
        assert_eq!(dev_of((0xfe << 8) | 1), (0xfe, 1));
        assert_eq!(dev_of(0x21_0305), (0x103, 0x205));
    }
}

#[cfg(test)]
mod advice_tests {
    use super::*;
    use crate::schema::Process;

    fn vma(start: u64, end: u64, flags: &[&str]) -> Vma {
        Vma {
            start,
            end,
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn every_kept_advice_has_its_madvise() {
        for (flag, advice) in [
            ("dc", libc::MADV_DONTFORK),
            ("wf", libc::MADV_WIPEONFORK),
            ("dd", libc::MADV_DONTDUMP),
            ("mg", libc::MADV_MERGEABLE),
            ("nh", libc::MADV_NOHUGEPAGE),
            ("rr", libc::MADV_RANDOM),
            ("sr", libc::MADV_SEQUENTIAL),
        ] {
            assert_eq!(advice_of(flag), Some(advice), "{flag}");
        }
        // Given by the mmap itself, or (hg, lo, lf) at their own moment.
        for flag in ["rd", "wr", "ac", "nr", "gd", "hg", "lo", "lf"] {
            assert_eq!(advice_of(flag), None, "{flag}");
        }
    }

    #[test]
    fn sealed_and_shadow_stack_areas_refuse_the_dump() {
        let mut e = MapEntry {
            start: 0x1000,
            end: 0x3000,
            vm_flags: vec!["rd".into(), "sl".into()],
            ..Default::default()
        };
        let err = check_vm_flags(7, &e, VmaKind::AnonPrivate)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("0x1000-0x3000") && err.contains("mseal") && err.contains("\"sl\""),
            "{err}"
        );
        // The kernel may seal its own vDSO: not the process's doing.
        assert!(check_vm_flags(7, &e, VmaKind::Vdso).is_ok());
        e.vm_flags = vec!["rd".into(), "ss".into()];
        assert!(check_vm_flags(7, &e, VmaKind::AnonPrivate).is_err());
        e.vm_flags = ["rd", "wr", "lo", "lf", "mg", "rr", "dc"]
            .map(String::from)
            .to_vec();
        assert!(check_vm_flags(7, &e, VmaKind::AnonPrivate).is_ok());
    }

    #[test]
    fn locked_memory_beyond_the_limit_is_refused() {
        let p = Process {
            pid: 42,
            vmas: vec![
                vma(0x10000, 0x20000, &["rd", "wr"]),
                vma(0x30000, 0x40000, &["rd", "wr", "lo"]),
                vma(0x50000, 0x52000, &["rd", "wr", "lo", "lf"]),
            ],
            ..Default::default()
        };
        let locked = 0x12000;
        assert!(lock_limit_refusal(&p, locked, false, locked).is_none());
        assert!(lock_limit_refusal(&p, locked, false, u64::MAX).is_none());
        let err = lock_limit_refusal(&p, locked, false, 65536)
            .unwrap()
            .to_string();
        assert!(
            err.contains("process 42")
                && err.contains("73728 bytes of locked memory")
                && err.contains("0x30000-0x40000")
                && err.contains("RLIMIT_MEMLOCK is 65536"),
            "{err}"
        );
        // mlockall(MCL_FUTURE) alone needs a limit above 0.
        let none = Process::default();
        assert!(lock_limit_refusal(&none, 0, true, 0)
            .unwrap()
            .to_string()
            .contains("mlockall(MCL_FUTURE)"));
        assert!(lock_limit_refusal(&none, 0, true, 4096).is_none());
    }

    #[test]
    fn process_wide_defaults_ride_on_the_first_vma() {
        let mut vmas = vec![vma(0x1000, 0x2000, &[]), vma(0x3000, 0x4000, &[])];
        let d = MmDefaults {
            mlockall: MCL_FUTURE | MCL_ONFAULT,
            merge_any: true,
        };
        d.keep(&mut vmas);
        assert_eq!(MmDefaults::of(&vmas), d);
        assert_eq!(vmas[1].mlockall, 0);
        assert!(!vmas[1].merge_any);
        MmDefaults::default().keep(&mut []);
    }
}

#[cfg(test)]
mod sharing_tests {
    use super::*;
    use crate::schema::Process;

    fn run(addr: u64, nr_pages: u64) -> PageRun {
        PageRun {
            addr,
            nr_pages,
            offset: 0,
        }
    }

    fn anon(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            kind: VmaKind::AnonPrivate as i32,
            ..Default::default()
        }
    }

    #[test]
    fn post_copy_splits_runs_into_own_and_shared_pages() {
        let p = PAGE_SIZE;
        let runs = vec![run(0x10000, 4), run(0x20000, 2)];
        let shared = vec![
            Range {
                addr: 0x11000,
                len: 2 * p,
            },
            Range {
                addr: 0x1f000,
                len: 2 * p,
            },
        ];
        let (mine, theirs) = split_shared(&runs, &shared);
        let bounds =
            |v: &[PageRun]| -> Vec<(u64, u64)> { v.iter().map(|r| (r.addr, r.nr_pages)).collect() };
        assert_eq!(
            bounds(&mine),
            vec![(0x10000, 1), (0x13000, 1), (0x21000, 1)]
        );
        assert_eq!(bounds(&theirs), vec![(0x11000, 2), (0x20000, 1)]);
        let (mine, theirs) = split_shared(&runs, &[]);
        assert_eq!(bounds(&mine), bounds(&runs));
        assert!(theirs.is_empty());
    }

    #[test]
    fn gaps_are_what_holds_neither_own_nor_inherited_pages() {
        let mut v = anon(0x10000, 0x20000);
        assert_eq!(gaps(&v), vec![(0x10000, 0x20000)]);
        v.pages = vec![run(0x11000, 2), run(0x1f000, 1)];
        v.inherited = vec![run(0x10000, 1), run(0x14000, 4)];
        assert_eq!(
            gaps(&v),
            vec![(0x13000, 0x14000), (0x18000, 0x1f000)],
            "pages 0x10000-0x13000 and 0x14000-0x18000 and the last one are held"
        );
        v.inherited.push(run(0x13000, 1));
        v.pages.push(run(0x18000, 7));
        assert!(gaps(&v).is_empty());
    }

    #[test]
    fn a_child_shares_only_with_a_twin_vma() {
        let mut hg = anon(0x40000, 0x50000);
        hg.vm_flags = vec!["hg".into()];
        let mut heap = anon(0x60000, 0x70000);
        heap.kind = VmaKind::Heap as i32;
        let mut file = anon(0x80000, 0x90000);
        file.kind = VmaKind::FilePrivate as i32;
        let vmas = vec![anon(0x10000, 0x20000), hg, heap, file];
        let frames = Frames::default();
        let parent = ParentMemory {
            vmas: &vmas,
            frames: &frames,
        };
        assert!(parent.twin(&anon(0x10000, 0x20000)).is_some());
        // Other bounds (a part unmapped or split since the fork).
        assert!(parent.twin(&anon(0x10000, 0x18000)).is_none());
        assert!(parent.twin(&anon(0x18000, 0x20000)).is_none());
        // MADV_HUGEPAGE on one side only.
        assert!(parent.twin(&anon(0x40000, 0x50000)).is_none());
        // A heap is private anonymous memory too.
        let mut h = anon(0x60000, 0x70000);
        h.kind = VmaKind::Heap as i32;
        assert!(parent.twin(&h).is_some());
        // File-backed private pages are not shared this way.
        let mut f = anon(0x80000, 0x90000);
        f.kind = VmaKind::FilePrivate as i32;
        assert!(parent.twin(&f).is_none());
        // Nor lazy (post-copy) memory.
        let mut l = anon(0x10000, 0x20000);
        l.lazy = vec![run(0x10000, 1)];
        assert!(parent.twin(&l).is_none());
    }

    #[test]
    fn the_parent_fills_early_what_its_live_children_inherit() {
        let parent = Process {
            pid: 10,
            vmas: vec![anon(0x10000, 0x20000), anon(0x30000, 0x40000)],
            ..Default::default()
        };
        let mut a = anon(0x10000, 0x20000);
        a.inherited = vec![run(0x10000, 3)];
        let mut b = anon(0x30000, 0x40000);
        b.inherited = vec![run(0x30000, 1)];
        let child = Process {
            pid: 11,
            ppid: 10,
            vmas: vec![a.clone(), anon(0x50000, 0x60000)],
            ..Default::default()
        };
        let zombie = Process {
            pid: 12,
            ppid: 10,
            zombie: true,
            vmas: vec![b],
            ..Default::default()
        };
        let twin = Process {
            pid: 13,
            ppid: 10,
            vmas: vec![a],
            ..Default::default()
        };
        assert_eq!(
            shared_with_children(&parent, [&child, &zombie, &twin].into_iter()),
            vec![(0x10000, 0x20000)]
        );
        assert!(shared_with_children(&parent, std::iter::empty()).is_empty());
    }
}

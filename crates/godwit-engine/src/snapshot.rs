//! A copy-on-write snapshot of a running process's memory, so that
//! `dump --leave-running` freezes the process only for as long as it takes
//! to collect its other state and write-protect its memory.
//!
//! While frozen: pages of private anonymous memory are write-protected with
//! userfaultfd (sync mode); all other stored pages (private file copies,
//! shared memory, unreadable regions) are copied at once. Then the process
//! runs. A handler thread receives each write fault, saves the page's
//! original content and lifts the protection; the copier reads the pages and
//! prefers a saved original over what it read. If the process unmaps,
//! releases (MADV_DONTNEED) or moves memory that was not copied yet, the dump
//! fails with "retry" — the process is unaffected.

use crate::error::{DumpCtx, EngineError, Result};
use crate::remote::Remote;
use crate::resources::memory::split_even;
use crate::schema::{Vma, VmaKind};
use godwit_sys::mem::{self, ProcMem, Range};
use godwit_sys::uffd::{self, Event, Uffd};
use godwit_sys::PAGE_SIZE;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

struct Shared {
    uffd: Uffd,
    pid: i32,
    /// Original contents of pages written after the snapshot, by address.
    saved: Mutex<HashMap<u64, Box<[u8]>>>,
    /// Ranges copied already (start → end); copiers work in parallel.
    copied: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Write-protected ranges (sorted).
    protected: Vec<Range>,
    /// Set when memory not copied yet went away.
    lost: Mutex<Option<String>>,
    stop: AtomicBool,
    /// Wakes the handler out of its wait when the snapshot ends.
    waker: uffd::Waker,
}

/// Processes holding at most this much memory are copied whole while frozen:
/// it costs little, and a short-lived process may exit during the copy.
pub(crate) const EAGER_LIMIT: u64 = 8 << 20;

pub struct Snapshot {
    /// None when everything was copied while frozen.
    shared: Option<Arc<Shared>>,
    handler: Option<JoinHandle<()>>,
    /// Pages copied while frozen, by run address.
    precopied: HashMap<u64, Vec<u8>>,
    registered: Vec<Range>,
}

pub(crate) fn cow_able(v: &Vma) -> bool {
    matches!(
        VmaKind::try_from(v.kind),
        Ok(VmaKind::AnonPrivate | VmaKind::Heap | VmaKind::Stack)
    ) && v.prot & libc::PROT_READ as u32 != 0
        && !v.pages.is_empty()
}

impl Snapshot {
    /// Arms the snapshot on a frozen process (`r0` injects into its main
    /// thread). `None` when the process may not have a userfaultfd (an
    /// unprivileged process while vm.unprivileged_userfaultfd is 0): the
    /// caller then copies while the process stays frozen.
    pub fn arm(r0: &Remote, vmas: &[Vma]) -> Result<Option<Snapshot>> {
        let pid = r0.pid;
        if crate::resources::memory::planned_bytes(vmas) <= EAGER_LIMIT {
            return Ok(Some(Snapshot {
                shared: None,
                handler: None,
                precopied: precopy(pid, vmas.iter().filter(|v| !v.pages.is_empty()))?,
                registered: Vec::new(),
            }));
        }
        let stage = "write-protecting memory";
        let Some(fd) = r0
            .take_userfaultfd((libc::O_CLOEXEC | libc::O_NONBLOCK) as u64)
            .dumping(pid, stage)?
        else {
            tracing::info!(
                pid,
                "no userfaultfd for this process; it stays frozen while its memory is copied"
            );
            return Ok(None);
        };
        let uffd = Uffd::new(
            fd,
            uffd::FEATURE_PAGEFAULT_FLAG_WP
                | uffd::FEATURE_EVENT_REMOVE
                | uffd::FEATURE_EVENT_UNMAP
                | uffd::FEATURE_EVENT_REMAP,
        )
        .dumping(pid, stage)?;
        let mut registered = Vec::new();
        let mut protected = Vec::new();
        let mut precopied = HashMap::new();
        let mut procmem: Option<ProcMem> = None;
        let t0 = std::time::Instant::now();
        for v in vmas.iter().filter(|v| !v.pages.is_empty()) {
            if cow_able(v)
                && uffd
                    .register(v.start, v.end - v.start, uffd::REGISTER_MODE_WP)
                    .is_ok()
            {
                registered.push(Range {
                    addr: v.start,
                    len: v.end - v.start,
                });
                for run in &v.pages {
                    protected.push(Range {
                        addr: run.addr,
                        len: run.nr_pages * PAGE_SIZE,
                    });
                }
                continue;
            }
            // Not protectable: copy now, while frozen.
            let pm = match &procmem {
                Some(p) => p,
                None => procmem.insert(ProcMem::open(pid, false).dumping(pid, "reading memory")?),
            };
            for run in &v.pages {
                let mut buf = vec![0u8; (run.nr_pages * PAGE_SIZE) as usize];
                pm.read_exact_at(run.addr, &mut buf)
                    .dumping(pid, "reading memory")?;
                precopied.insert(run.addr, buf);
            }
        }
        write_protect_all(&uffd, &protected).dumping(pid, stage)?;
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1e3,
            copied_while_frozen = precopied.len(),
            "snapshot armed"
        );
        let shared = Arc::new(Shared {
            uffd,
            pid,
            saved: Mutex::new(HashMap::new()),
            copied: Mutex::new(std::collections::BTreeMap::new()),
            protected,
            lost: Mutex::new(None),
            stop: AtomicBool::new(false),
            waker: uffd::Waker::new().dumping(pid, stage)?,
        });
        let s2 = shared.clone();
        let handler = std::thread::Builder::new()
            .name("godwit-wp".into())
            .spawn(move || serve(&s2))
            .map_err(|e| EngineError::Sys {
                pid,
                stage,
                source: godwit_sys::SysError::Proc {
                    path: "thread".into(),
                    detail: e.to_string(),
                },
            })?;
        Ok(Some(Snapshot {
            shared: Some(shared),
            handler: Some(handler),
            precopied,
            registered,
        }))
    }

    /// The pages of run `addr` if they were copied while frozen.
    pub fn precopied(&self, addr: u64) -> Option<&[u8]> {
        self.precopied.get(&addr).map(|v| v.as_slice())
    }

    /// Replaces, in `buf` (just read from `ranges`), every page written since
    /// the snapshot by its saved original; then records progress.
    pub fn fix_up(&self, ranges: &[Range], buf: &mut [u8]) {
        let Some(shared) = &self.shared else { return };
        let saved = shared.saved.lock().expect("lock");
        let mut off = 0usize;
        for r in ranges {
            if !saved.is_empty() {
                for i in 0..r.len / PAGE_SIZE {
                    if let Some(orig) = saved.get(&(r.addr + i * PAGE_SIZE)) {
                        let o = off + (i * PAGE_SIZE) as usize;
                        buf[o..o + PAGE_SIZE as usize].copy_from_slice(orig);
                    }
                }
            }
            off += r.len as usize;
        }
        drop(saved);
        let mut copied = shared.copied.lock().expect("lock");
        for r in ranges {
            copied.insert(r.addr, r.addr + r.len);
        }
    }

    /// Stops tracking writes; fails if memory not yet copied went away.
    pub fn finish(mut self) -> Result<usize> {
        self.shutdown();
        let Some(shared) = &self.shared else {
            return Ok(0);
        };
        let saved = shared.saved.lock().expect("lock").len();
        if let Some(what) = shared.lost.lock().expect("lock").take() {
            return Err(EngineError::Unsupported {
                pid: shared.pid,
                what: format!("{what} while its memory was being copied; retry the dump"),
            });
        }
        Ok(saved)
    }

    fn shutdown(&mut self) {
        let Some(shared) = &self.shared else { return };
        for r in &self.registered {
            // Unregistering lifts the protection and wakes any waiting thread.
            let _ = shared.uffd.unregister(r.addr, r.len);
        }
        shared.stop.store(true, Ordering::SeqCst);
        shared.waker.wake();
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Copies the page runs of `vmas` now (the process is frozen).
fn precopy<'a>(pid: i32, vmas: impl Iterator<Item = &'a Vma>) -> Result<HashMap<u64, Vec<u8>>> {
    let mut out = HashMap::new();
    let mut procmem: Option<ProcMem> = None;
    for v in vmas {
        let pm = match &procmem {
            Some(p) => p,
            None => procmem.insert(ProcMem::open(pid, false).dumping(pid, "reading memory")?),
        };
        for run in &v.pages {
            let mut buf = vec![0u8; (run.nr_pages * PAGE_SIZE) as usize];
            pm.read_exact_at(run.addr, &mut buf)
                .dumping(pid, "reading memory")?;
            out.insert(run.addr, buf);
        }
    }
    Ok(out)
}

impl Shared {
    /// Whether every byte of [start, end) has been copied.
    fn covered(&self, mut start: u64, end: u64) -> bool {
        let copied = self.copied.lock().expect("lock");
        while start < end {
            match copied.range(..=start).next_back() {
                Some((_, &e)) if e > start => start = e,
                _ => return false,
            }
        }
        true
    }
}

/// Threads write-protecting at once: the kernel walks page tables under the
/// read side of mmap_lock, so ranges protect in parallel (1 GiB: ~33 ms on
/// one thread here).
const WP_THREADS: usize = 2;

/// Write-protects `ranges`, cut into WP_THREADS shares of equal bytes.
pub(crate) fn write_protect_all(uffd: &Uffd, ranges: &[Range]) -> godwit_sys::Result<()> {
    let total: u64 = ranges.iter().map(|r| r.len).sum();
    if total < (64 << 20) {
        return ranges
            .iter()
            .try_for_each(|r| uffd.write_protect(r.addr, r.len, true));
    }
    let shares = split_even(ranges.iter().copied(), WP_THREADS);
    std::thread::scope(|s| {
        let helpers: Vec<_> = shares[1..]
            .iter()
            .map(|share| {
                s.spawn(move || {
                    share
                        .iter()
                        .try_for_each(|r| uffd.write_protect(r.addr, r.len, true))
                })
            })
            .collect();
        let mut result = shares[0]
            .iter()
            .try_for_each(|r| uffd.write_protect(r.addr, r.len, true));
        for h in helpers {
            let r = h.join().unwrap_or_else(|_| {
                Err(godwit_sys::SysError::Proc {
                    path: "userfaultfd".into(),
                    detail: "a write-protecting thread panicked".into(),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// The handler thread: save originals of written pages, let writers go on.
fn serve(s: &Shared) {
    let mut page = vec![0u8; PAGE_SIZE as usize];
    while !s.stop.load(Ordering::SeqCst) {
        let events = match s.uffd.read_events(1000, Some(&s.waker)) {
            Ok(e) => e,
            Err(e) => {
                *s.lost.lock().expect("lock") = Some(format!("write tracking failed ({e})"));
                return;
            }
        };
        for ev in events {
            match ev {
                Event::WriteProtectFault { addr } => {
                    let addr = addr & !(PAGE_SIZE - 1);
                    let fresh = !s.saved.lock().expect("lock").contains_key(&addr);
                    if fresh && !s.covered(addr, addr + PAGE_SIZE) {
                        match mem::read_ranges(
                            s.pid,
                            &mut page,
                            &[Range {
                                addr,
                                len: PAGE_SIZE,
                            }],
                        ) {
                            Ok(n) if n == page.len() => {
                                s.saved
                                    .lock()
                                    .expect("lock")
                                    .insert(addr, page.clone().into_boxed_slice());
                            }
                            _ => {
                                *s.lost.lock().expect("lock") =
                                    Some(format!("page {addr:#x} could not be saved"));
                            }
                        }
                    }
                    if let Err(e) = s.uffd.write_protect(addr, PAGE_SIZE, false) {
                        tracing::warn!("lifting write protection at {addr:#x}: {e}");
                    }
                }
                Event::RangeGone { start, end } => {
                    let hit = s.protected.iter().any(|r| {
                        let (a, b) = (r.addr.max(start), (r.addr + r.len).min(end));
                        a < b && !s.covered(a, b)
                    });
                    if hit {
                        *s.lost.lock().expect("lock") = Some(format!(
                            "the process released or moved memory {start:#x}-{end:#x}"
                        ));
                    }
                }
                Event::OtherFault { .. } | Event::Other(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_equal_bytes() {
        let r = |addr: u64, len: u64| Range { addr, len };
        let ranges = [r(0x1000, 0x3000), r(0x10000, 0x5000)];
        let s = split_even(ranges, 2);
        let lens: Vec<u64> = s.iter().map(|v| v.iter().map(|x| x.len).sum()).collect();
        assert_eq!(lens, vec![0x4000, 0x4000]);
        assert_eq!(s[0][1].addr, 0x10000);
        assert_eq!(s[1][0].addr, 0x11000);
        // Every byte once, in order.
        let flat: Vec<(u64, u64)> = s.iter().flatten().map(|x| (x.addr, x.len)).collect();
        assert_eq!(
            flat,
            vec![(0x1000, 0x3000), (0x10000, 0x1000), (0x11000, 0x4000)]
        );
        // One big range splits in two; a third share is never made.
        let s = split_even([r(0, 0x8000)], 2);
        assert_eq!(s.len(), 2);
        assert_eq!((s[1][0].addr, s[1][0].len), (0x4000, 0x4000));
        // Uneven page counts: whole pages, the last share takes the rest.
        let s = split_even([r(0, 0x3000)], 2);
        assert_eq!((s[0][0].len, s[1][0].len), (0x2000, 0x1000));
    }
}

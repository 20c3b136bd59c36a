//! Dump: freeze → collect → write → end or release.

use crate::error::{DumpCtx, EngineError, Result};
use crate::freeze::{freeze_tree, release_all, CgroupFreeze, Frozen, Member};
use crate::precopy::{self, FrozenPlan, Protection, Tracker};
use crate::remote::Remote;
use crate::resources::{attrs, files, locks, memory, signals, sockets, threads, timers, tty};
use crate::schema::PageSpan;
use crate::schema::{Checkpoint, CpuFeatures, DumpStats, Process};
use crate::snapshot::Snapshot;
use crate::Progress;
use godwit_image::ImageWriter;
use godwit_image::PageFileInfo;
use godwit_sys::mem;
use godwit_sys::{proc, process, ptrace};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes of scratch memory mapped in the target while collecting.
const SCRATCH: u64 = 64 * 1024;

#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Let the process continue after the dump instead of ending it.
    pub leave_running: bool,
    /// fsync the image files (default on; off for benchmarks on tmpfs).
    pub no_sync: bool,
    /// With leave_running: keep the process frozen for the whole copy instead
    /// of taking a copy-on-write snapshot.
    pub no_cow: bool,
    /// With leave_running: no pre-copy; the memory is snapshotted
    /// copy-on-write at the freeze (for a process known to write faster than
    /// it can be copied).
    pub no_precopy: bool,
    /// Freeze this cgroup (v2) while the tree is seized, so that nothing in
    /// it runs or forks meanwhile.
    pub freeze_cgroup: Option<std::path::PathBuf>,
    /// Accept fds on a terminal whose master side is outside the tree (the
    /// terminal the process was started from): restore attaches them to the
    /// restoring caller's terminal (`RestoreOptions::shell_job`).
    pub shell_job: bool,
    /// Move established TCP connections (TCP_REPAIR, behind a network
    /// lock); without it a connection stops the dump, named.
    pub tcp_established: bool,
    /// The most data (bytes, holes not counted) kept of one deleted-but-
    /// open file; None: [`files::MAX_DELETED`] (64 MiB). Above it the dump
    /// is refused, naming the file.
    pub max_deleted_file_size: Option<u64>,
    /// Pre-copy held for a migration (`End::Hold { precopy: true, .. }`):
    /// a process whose pages written since their last copy would take
    /// longer than this to send while frozen, at the rate its pre-copy
    /// measured, leaves them lazy instead (post-copy from the freeze on,
    /// `Vma::lazy`), unless it shares pages with its parent or children.
    pub max_frozen_copy: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct DumpReport {
    /// The first root.
    pub pid: i32,
    /// Every root given (`pid` first).
    pub roots: Vec<i32>,
    /// Processes in the tree (the process and its descendants).
    pub processes: usize,
    /// Their PIDs, parents before children.
    pub pids: Vec<i32>,
    pub threads: usize,
    pub vmas: usize,
    pub memory_bytes: u64,
    /// Bytes of private anonymous memory left in the held processes
    /// (post-copy: `End::Hold { lazy: true, .. }`), not in `memory_bytes`.
    pub lazy_bytes: u64,
    pub image_bytes: u64,
    /// How long the process was stopped (with a pre-copy: the short stop
    /// before it and the freeze).
    pub frozen: Duration,
    /// Processes whose memory was copied while they ran (--leave-running).
    pub precopy: PrecopyReport,
    pub total: Duration,
    /// Descriptors connected outside the dumped tree (pipes, unix sockets):
    /// what `restore --inherit-fd` can name.
    pub externals: Vec<crate::resources::external::ExternalFd>,
    /// Descriptors on a terminal outside the tree (dump --shell-job): what
    /// `restore --inherit-fd N:KEY` can name instead of `--shell-job`.
    pub outside_terminals: Vec<tty::OutsideTerminal>,
}

/// What a dump copied before the freeze (crate::precopy).
#[derive(Debug, Clone, Default)]
pub struct PrecopyReport {
    /// Processes pre-copied.
    pub processes: usize,
    /// Most rounds of copying written pages again, over those processes.
    pub rounds: usize,
    /// Bytes copied while they ran (more than their memory when pages were
    /// copied again).
    pub bytes_running: u64,
    /// Bytes of theirs copied while frozen (written since their last copy,
    /// or not tracked).
    pub bytes_frozen: u64,
    /// An incremental dump ([`dump_tracked`]): the previous dump's page
    /// files were taken by reference, these bytes of them.
    pub bytes_linked: u64,
    /// Whether this dump went on from the previous dump's tracking.
    pub incremental: bool,
}

/// Each root passes [`precheck`]; there is at least one, none twice, and
/// none is a descendant of another (its tree moves with that one).
pub fn check_roots(roots: &[i32]) -> Result<()> {
    if roots.is_empty() {
        return Err(EngineError::NoSuchProcess { pid: 0 });
    }
    for (i, &pid) in roots.iter().enumerate() {
        precheck(pid)?;
        if roots[..i].contains(&pid) {
            return Err(EngineError::Unsupported {
                pid,
                what: format!("process {pid} is given twice"),
            });
        }
        let mut up = proc::status(pid).map_or(0, |s| s.ppid);
        for _ in 0..4096 {
            if up <= 1 {
                break;
            }
            if roots.contains(&up) {
                return Err(EngineError::Unsupported {
                    pid,
                    what: format!(
                        "process {pid} is a descendant of process {up}, whose whole tree is \
                         dumped with it: give {up} only"
                    ),
                });
            }
            up = proc::status(up).map_or(0, |s| s.ppid);
        }
    }
    Ok(())
}

fn precheck(pid: i32) -> Result<()> {
    if pid <= 0 {
        return Err(EngineError::NoSuchProcess { pid });
    }
    let status = proc::status(pid).map_err(|_| EngineError::NoSuchProcess { pid })?;
    if status.tgid != pid {
        return Err(EngineError::Unsupported {
            pid,
            what: format!(
                "PID {pid} is a thread of process {}; dump the process instead",
                status.tgid
            ),
        });
    }
    let me = std::process::id() as i32;
    if pid == me {
        return Err(EngineError::PermissionDenied {
            pid,
            detail: "godwit cannot dump itself".into(),
        });
    }
    // godwit would be in the tree it freezes (e.g. `godwit dump --pid $PPID`
    // from a shell).
    let mut up = proc::status(me).map_or(0, |s| s.ppid);
    for _ in 0..4096 {
        if up <= 0 {
            break;
        }
        if up == pid {
            return Err(EngineError::PermissionDenied {
                pid,
                detail: format!(
                    "PID {pid} is an ancestor of this godwit (PID {me}): a process cannot be \
                     dumped by one of its own descendants; run godwit from outside its tree"
                ),
            });
        }
        up = proc::status(up).map_or(0, |s| s.ppid);
    }
    {
        let ids = &status.nspid;
        if ids.len() > 1 {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "a process inside a nested PID namespace (it sees itself as PID {}; \
                     run godwit inside that namespace to dump it)",
                    ids[ids.len() - 1]
                ),
            });
        }
    }
    let me = process::euid();
    if me != 0 && status.uids.iter().take(3).any(|u| *u != me) {
        return Err(EngineError::PermissionDenied {
            pid,
            detail: format!(
                "it belongs to uid {}, you are uid {me}; only root may dump other users' processes",
                status.uids[0]
            ),
        });
    }
    Ok(())
}

/// A dump that ends the process is only worth it if the caller can bring it
/// back: a restore recreates PIDs (clone3 with set_tid), which needs root
/// or CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the effective set.
fn check_can_restore(pid: i32) -> Result<()> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_CHECKPOINT_RESTORE: u32 = 40;
    let me = process::euid();
    if me == 0 {
        return Ok(());
    }
    let caps = proc::status(std::process::id() as i32)
        .map(|s| s.cap_eff)
        .unwrap_or(0);
    if caps & (1 << CAP_CHECKPOINT_RESTORE | 1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    Err(EngineError::CouldNotRestore {
        pid,
        why: format!(
            "restoring recreates its PID, which needs root or CAP_CHECKPOINT_RESTORE \
             (or CAP_SYS_ADMIN), and godwit runs as uid {me} without them (CapEff {caps:#x})"
        ),
    })
}

/// What was collected from one live process while it was frozen.
struct Collected {
    process: Process,
    /// Injects into its main thread (no scratch area).
    r0: Remote,
    /// For a pre-copied process: what to copy now (its VMAs are in
    /// `process`).
    plan: Option<FrozenPlan>,
    /// The scratch area, when left mapped while the memory is copied.
    scratch: Option<ScratchArea>,
    /// mlockall(MCL_FUTURE) and PR_SET_MEMORY_MERGE, for its first VMA.
    defaults: memory::MmDefaults,
}

/// The scratch area mapped in a frozen process for the calls injected into
/// it. Dropping it unmaps it again (the process is to run on as it was);
/// [`keep`](Self::keep) leaves it to a process that is being ended.
struct ScratchArea {
    r0: Remote,
    addr: u64,
    mapped: bool,
}

impl ScratchArea {
    fn map(r0: Remote) -> Result<ScratchArea> {
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = r0
            .call(
                "mmap",
                libc::SYS_mmap,
                [0, SCRATCH, prot, flags, u64::MAX, 0],
            )
            .dumping(r0.pid, "mapping scratch memory")?;
        Ok(ScratchArea {
            r0,
            addr,
            mapped: true,
        })
    }

    /// Injects into the main thread, with this area for arguments.
    fn remote(&self) -> Remote {
        Remote {
            scratch: self.addr,
            scratch_len: SCRATCH,
            ..self.r0
        }
    }

    fn unmap(mut self) -> Result<()> {
        self.mapped = false;
        self.r0
            .call("munmap", libc::SYS_munmap, [self.addr, SCRATCH, 0, 0, 0, 0])
            .dumping(self.r0.pid, "unmapping scratch memory")?;
        Ok(())
    }

    fn keep(mut self) {
        self.mapped = false;
    }
}

impl Drop for ScratchArea {
    fn drop(&mut self) {
        if self.mapped {
            let args = [self.addr, SCRATCH, 0, 0, 0, 0];
            if let Err(e) = self.r0.call("munmap", libc::SYS_munmap, args) {
                tracing::warn!(pid = self.r0.pid, "could not unmap the scratch area: {e}");
            }
        }
    }
}

/// What becomes of the dumped processes once their image is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// They are ended (a checkpoint that moves them).
    Kill,
    /// They run on (`--leave-running`).
    Release,
    /// They stay frozen, for the caller to end or release ([`Held`]): a
    /// migration ends them only once the destination runs its copy. With
    /// `precopy`, their memory is first copied while they run, as for
    /// `--leave-running`. With `lazy` (post-copy), the pages of private
    /// anonymous memory are not copied into the image but left in the
    /// held processes (`Vma::lazy`), for the caller to serve later.
    Hold { precopy: bool, lazy: bool },
}

/// A dumped tree kept frozen ([`End::Hold`]). Dropping it releases the
/// processes: whatever went wrong after the dump, they run on as they were.
pub struct Held {
    members: Option<Vec<Member>>,
    scratches: Vec<ScratchArea>,
    /// Their TCP connections, in repair mode and locked while held.
    tcp: Option<sockets::tcp::Repairs>,
    /// What was sent (to lift the connections' locks once they run elsewhere).
    pub checkpoint: Checkpoint,
    /// A pre-copy's write protection: lifted once they run again, dropped
    /// once they are ended (not while they are frozen: it takes time).
    protections: Vec<Protection>,
    /// When the tree was frozen (the stop before a pre-copy not counted).
    pub frozen_at: Instant,
    /// The PIDs, parents first.
    pub pids: Vec<i32>,
}

impl Held {
    /// Ends every process of the tree. Their TCP connections stay in
    /// repair mode and locked (no reset, no FIN to the peers): lift the
    /// locks with `sockets::tcp::unlock_image(&self.checkpoint)` once the
    /// connections run elsewhere.
    pub fn kill(mut self) -> Result<()> {
        std::mem::take(&mut self.scratches)
            .into_iter()
            .for_each(ScratchArea::keep);
        if let Some(t) = self.tcp.take() {
            t.keep();
        }
        let r = kill_all(self.members.take().unwrap_or_default());
        self.protections.clear();
        r
    }

    /// Lets every process run on, as it was.
    pub fn release(mut self) -> Result<()> {
        self.release_now()
    }

    /// Lets every process run on but stopped by SIGSTOP (it stays stopped
    /// until SIGCONT): for when it is not known whether another copy runs.
    pub fn release_stopped(mut self) -> Result<()> {
        // A SIGSTOP sent while the tree is traced is dropped at the detach
        // (seen on 6.18), so it is sent right after: the processes run for
        // the few microseconds in between, back into the call they were
        // in (their interrupted system calls were rewound).
        // Their TCP connections stay in repair mode and locked: the
        // destination may run them.
        if let Some(t) = self.tcp.take() {
            t.keep();
        }
        let r = self.release_now();
        for &pid in &self.pids {
            let _ = process::kill(pid, libc::SIGSTOP);
        }
        r
    }

    fn release_now(&mut self) -> Result<()> {
        let mut first = None;
        if let Some(t) = self.tcp.take() {
            if let Err(e) = t.release() {
                first.get_or_insert(e);
            }
        }
        for s in std::mem::take(&mut self.scratches) {
            if let Err(e) = s.unmap() {
                first.get_or_insert(e);
            }
        }
        if let Some(m) = self.members.take() {
            if let Err(e) = release_all(m) {
                first.get_or_insert(e);
            }
        }
        std::mem::take(&mut self.protections)
            .into_iter()
            .for_each(Protection::lift);
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.release_now() {
            tracing::warn!("releasing the dumped processes: {e}");
        }
    }
}

/// Checkpoints each process of `roots` and all its descendants into `dir`
/// (see [`dump_to`]). On any failure every process is left running as it
/// was and `dir` holds no image that restore would accept.
pub fn dump(
    roots: &[i32],
    dir: &Path,
    opts: &DumpOptions,
    progress: &dyn Progress,
) -> Result<DumpReport> {
    check_roots(roots)?;
    let writer = ImageWriter::create(dir)?;
    dump_into(roots, writer, opts, progress)
}

/// As [`dump`], into `writer` (any transfer medium, e.g. a node's chunk
/// store) instead of a directory.
pub fn dump_into(
    roots: &[i32],
    writer: ImageWriter,
    opts: &DumpOptions,
    progress: &dyn Progress,
) -> Result<DumpReport> {
    check_roots(roots)?;
    if !opts.leave_running {
        roots.iter().try_for_each(|&pid| check_can_restore(pid))?;
    }
    let writer = writer.sync(!opts.no_sync);
    let end = if opts.leave_running {
        End::Release
    } else {
        End::Kill
    };
    dump_to(roots, writer, opts, progress, end).map(|(report, _)| report)
}

/// Checkpoints each process of `roots` and its descendants into `writer`
/// (any transfer medium), then ends, releases or holds them (`end`; the
/// held tree is returned). Several roots (say both ends of `a | b`, or a
/// server and its client) go into one image, frozen together, with what
/// they share (pipes, sockets, memory, locks) stored once; the first root
/// comes first. On any failure every process is left running as it was
/// and the writer commits nothing.
pub fn dump_to(
    roots: &[i32],
    writer: ImageWriter,
    opts: &DumpOptions,
    progress: &dyn Progress,
    end: End,
) -> Result<(DumpReport, Option<Held>)> {
    dump_keeping(roots, writer, opts, progress, end, None).map(|(r, held, _)| (r, held))
}

/// A dump that leaves the processes running (`opts.leave_running`) and
/// keeps the write tracking of their pre-copy armed afterwards (returned;
/// `None` if no process could be tracked): given back to the next dump of
/// the same tree, into a medium that can take the page files of this
/// dump's image by reference (a chunk store:
/// `godwit_store::StoreMedium::linking_from`), that dump copies only the
/// pages written since, and its image lists this one's page files followed
/// by the new ones (an incremental checkpoint). If the tracking does not
/// match the tree any more (a process new, gone or replaced; exec; a VMA
/// that cannot be tracked), or a stream holds more stale copies than live
/// pages, the dump is a full one and starts a new tracking.
pub fn dump_tracked(
    roots: &[i32],
    writer: ImageWriter,
    opts: &DumpOptions,
    progress: &dyn Progress,
    tracking: Option<precopy::Tracking>,
) -> Result<(DumpReport, Option<precopy::Tracking>)> {
    check_roots(roots)?;
    if !opts.leave_running || opts.no_cow || opts.no_precopy {
        return Err(EngineError::Unsupported {
            pid: roots[0],
            what: "an incremental dump without --leave-running and its pre-copy".into(),
        });
    }
    let writer = writer.sync(!opts.no_sync);
    let keep = Keep { tracking };
    dump_keeping(roots, writer, opts, progress, End::Release, Some(keep))
        .map(|(r, _, tracking)| (r, tracking))
}

/// What [`dump_tracked`] carries into the dump.
struct Keep {
    tracking: Option<precopy::Tracking>,
}

fn dump_keeping(
    roots: &[i32],
    mut writer: ImageWriter,
    opts: &DumpOptions,
    progress: &dyn Progress,
    end: End,
    keep: Option<Keep>,
) -> Result<(DumpReport, Option<Held>, Option<precopy::Tracking>)> {
    let t0 = Instant::now();
    check_roots(roots)?;
    let pid = roots[0];
    let hold = matches!(end, End::Hold { .. });
    let lazy = matches!(end, End::Hold { lazy: true, .. });
    let cow = end == End::Release && !opts.no_cow;
    let precopy = match end {
        End::Hold { precopy, .. } => precopy,
        End::Release => cow && !opts.no_precopy,
        End::Kill => false,
    };
    // --leave-running: first copy the memory while the processes run
    // (crate::precopy); the freeze then copies only what changed since.
    let keeping = keep.is_some();
    let resumed = match keep.and_then(|k| k.tracking) {
        Some(tracking) if precopy => precopy::resume(tracking, roots, &mut writer, progress)?,
        _ => None,
    };
    let incremental = resumed.is_some();
    let (mut trackers, stopped_before) = if let Some(pre) = resumed {
        (pre.trackers, pre.stopped)
    } else if precopy {
        let pre = precopy::run(
            roots,
            &mut writer,
            progress,
            opts.max_frozen_copy.is_some() && hold,
        )?;
        (pre.trackers, pre.stopped)
    } else {
        Default::default()
    };
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "pre-copied");
    // Post-copy: the VmFlags are read now, while the processes run (smaps
    // walks every page table: 60 ms per GiB); at the freeze the memory map
    // is only compared with this survey and the present pages scanned.
    let surveyed = match lazy {
        true => survey_running(roots, &trackers),
        false => Default::default(),
    };
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "surveyed");
    let cgroup = opts
        .freeze_cgroup
        .as_deref()
        .map(|d| CgroupFreeze::freeze(d, pid))
        .transpose()?;
    let members = freeze_tree(roots, cgroup)?;
    let frozen_at = Instant::now();
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "frozen");
    // Frozen throughout: each process's memory is planned and copied by a
    // second thread while the rest of it is collected (pre-copied ones are
    // planned from their tracking instead).
    // (Post-copy plans memory after the threads are read: see
    // memory::make_lazy.)
    let early = !cow && trackers.is_empty() && !lazy;
    let Collection {
        mut procs,
        remotes,
        plans,
        mut copied,
        scratches,
        ..
    } = collect_all(
        &members,
        &trackers,
        &surveyed,
        early.then_some(&writer),
        progress,
        Want {
            lazy,
            max_deleted: opts.max_deleted_file_size.unwrap_or(files::MAX_DELETED),
            max_frozen_copy: opts.max_frozen_copy.filter(|_| hold),
        },
    )?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "collected");
    crate::resources::seccomp::share(&mut procs);
    // Post-copy: memory a child shares copy-on-write with its parent is
    // not left lazy, so that it is restored shared (memory::share_lazy).
    if lazy && plans.iter().all(Option::is_none) {
        let hosts: Vec<i32> = members
            .iter()
            .map(|m| match m {
                Member::Live(f) => f.pid,
                Member::Zombie { .. } => 0,
            })
            .collect();
        let stored = memory::share_lazy(&mut procs, &hosts)?;
        if stored > 0 {
            tracing::debug!(
                stored,
                "post-copy: memory shared with children sent eagerly"
            );
        }
    }
    let mut members = Some(members);
    // Declared after `members`: on an error, unmapped before the processes
    // are released.
    let scratches = scratches;
    // TCP connections, locked and read in repair mode. Declared after
    // `members`: on an error they leave repair mode before the processes
    // run. Processes that run on (--leave-running) take them back now.
    let tcp = sockets::tcp::repair_all(&mut procs, opts.tcp_established)?;
    let tcp = match opts.leave_running {
        true => {
            tcp.release()?;
            None
        }
        false => Some(tcp),
    };
    crate::resources::pidfd::check_tree(&procs)?;
    crate::resources::attrs::check_sessions(&procs)?;
    files::link_descriptions(&mut procs, end == End::Kill)?;
    locks::check_tree(&procs)?;
    tty::link(&mut procs, opts.shell_job)?;
    let bases: Vec<u64> = procs
        .iter()
        .zip(&plans)
        .map(|(p, plan)| {
            plan.as_ref()
                .map_or_else(|| memory::planned_bytes(&p.vmas), |x| x.end)
        })
        .collect();
    let shmem_data = memory::collect_shmem(&mut procs, &bases)?;
    let memory_bytes: u64 = procs.iter().map(|p| memory::planned_bytes(&p.vmas)).sum();
    let lazy_bytes: u64 = procs.iter().map(|p| memory::lazy_bytes(&p.vmas)).sum();
    if lazy_bytes > 0 {
        writer.add_flags(godwit_image::FLAG_LAZY_PAGES);
    }
    if procs
        .iter()
        .flat_map(|p| &p.vmas)
        .any(|v| !v.inherited.is_empty())
    {
        writer.add_flags(godwit_image::FLAG_INHERITED_PAGES);
    }

    // Pre-copied processes: what changed since is copied now, while frozen.
    let mut fresh: Vec<Vec<(PageFileInfo, PageSpan)>> = Vec::with_capacity(procs.len());
    for ((p, plan), extra) in procs.iter().zip(&plans).zip(&shmem_data) {
        fresh.push(match plan {
            Some(x) => memory::write_ranges(
                p.pid,
                &x.to_copy,
                &writer,
                progress,
                extra,
                x.copy_from,
                None,
            )?,
            None => Vec::new(),
        });
    }
    // The others: a copy-on-write snapshot, so that they can run while
    // their pages are copied.
    let mut snapshots: Vec<Option<Snapshot>> = Vec::with_capacity(procs.len());
    if cow {
        for ((p, r0), plan) in procs.iter().zip(&remotes).zip(&plans) {
            snapshots.push(match (r0, plan) {
                (Some(r0), None) => Snapshot::arm(r0, &p.vmas)?,
                _ => None,
            });
        }
    }
    let mut frozen_time = None;
    let all_snapshotted = snapshots.len() == procs.len()
        && (0..procs.len())
            .all(|i| procs[i].zombie || snapshots[i].is_some() || plans[i].is_some());
    if all_snapshotted {
        release_all(members.take().unwrap_or_default())?;
        frozen_time = Some(frozen_at.elapsed());
    }

    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "planned");
    if !early {
        progress.stage("dumping memory", memory_bytes);
    }
    let mut page_files = Vec::new();
    let mut precopied = PrecopyReport::default();
    // Lifted once the processes run (or dropped once they are ended).
    let mut protections = Vec::new();
    // Trackers kept armed for the next dump (dump_tracked).
    let mut kept = std::collections::HashMap::new();
    precopied.incremental = incremental;
    for (i, p) in procs.iter_mut().enumerate().filter(|(_, p)| !p.zombie) {
        let tracked = plans[i]
            .as_ref()
            .and_then(|plan| trackers.remove(&p.pid).map(|t| (t, plan)));
        let written = match tracked {
            Some((t, plan)) => {
                writer.add_flags(godwit_image::FLAG_SCATTERED_PAGES);
                precopied.processes += 1;
                precopied.rounds = precopied.rounds.max(t.rounds);
                precopied.bytes_running += plan.copy_from - t.base;
                precopied.bytes_linked += t.base;
                precopied.bytes_frozen += plan.end - plan.copy_from;
                if keeping {
                    let mut t = t;
                    let w = t.keep(&fresh[i]);
                    kept.insert(p.pid, t);
                    w
                } else {
                    let (mut w, protection) = t.finish();
                    protections.push(protection);
                    w.append(&mut fresh[i]);
                    w
                }
            }
            None => match copied.get_mut(i).and_then(Option::take) {
                Some(mut w) => {
                    if !shmem_data[i].is_empty() {
                        let base = memory::planned_bytes(&p.vmas);
                        let extra = &shmem_data[i];
                        w.extend(memory::write_ranges(
                            p.pid,
                            &[],
                            &writer,
                            progress,
                            extra,
                            base,
                            None,
                        )?);
                    }
                    w
                }
                None => {
                    let snap = snapshots.get(i).and_then(|s| s.as_ref());
                    memory::write_pages(
                        p.pid,
                        &p.vmas,
                        &writer,
                        progress,
                        snap,
                        &shmem_data[i],
                        None,
                    )?
                }
            },
        };
        p.page_file = written
            .first()
            .map(|w| w.0.name.clone())
            .unwrap_or_default();
        for (info, span) in written {
            p.page_spans.push(span);
            page_files.push(info);
        }
    }
    // Pre-copies of processes gone from the tree since.
    for (_, t) in trackers.drain() {
        let (files, protection) = t.finish();
        protections.push(protection);
        for (info, _) in files {
            writer.discard(&info.name)?;
        }
    }
    for s in snapshots.into_iter().flatten() {
        let saved = s.finish()?;
        tracing::debug!(saved, "pages written during the copy were saved first");
    }
    let frozen_time = frozen_time.map(|f| f + stopped_before);

    let (xcr0, xsave_size) = process::xsave_features();
    let threads = procs.iter().map(|p| p.threads.len()).sum();
    let vmas = procs.iter().map(|p| p.vmas.len()).sum();
    let processes = procs.len();
    let pids = procs.iter().map(|p| p.pid).collect();
    let externals = crate::resources::external::list(&procs);
    let outside_terminals = tty::outside(&procs);
    let ck = Checkpoint {
        godwit_version: env!("CARGO_PKG_VERSION").to_string(),
        arch: "x86_64".into(),
        cpu: Some(CpuFeatures { xcr0, xsave_size }),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        processes: procs,
        stats: Some(DumpStats {
            frozen_us: frozen_time
                .unwrap_or_else(|| frozen_at.elapsed() + stopped_before)
                .as_micros() as u64,
            total_us: t0.elapsed().as_micros() as u64,
            pages_written: memory_bytes / godwit_sys::PAGE_SIZE,
        }),
    };
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "pages written");
    let mut held = None;
    let commit = if hold {
        let commit = writer.commit(&ck, page_files)?;
        // Held from here on with nothing more injected: the scratch areas
        // go and every thread gets its own state back, so that if godwit
        // dies meanwhile (its tracees are then detached) the processes run
        // on as they were, not with every signal blocked.
        for s in scratches {
            s.unmap()?;
        }
        for m in members.iter().flatten() {
            if let Member::Live(f) = m {
                f.settle()?;
            }
        }
        held = Some(Held {
            members: members.take(),
            scratches: Vec::new(),
            tcp,
            checkpoint: ck.clone(),
            protections: std::mem::take(&mut protections),
            frozen_at,
            pids: ck
                .processes
                .iter()
                .filter(|p| !p.zombie)
                .map(|p| p.pid)
                .collect(),
        });
        commit
    } else if end == End::Release {
        for s in scratches {
            s.unmap()?;
        }
        let commit = writer.commit(&ck, page_files)?;
        if let Some(members) = members.take() {
            release_all(members)?;
        }
        std::mem::take(&mut protections)
            .into_iter()
            .for_each(Protection::lift);
        commit
    } else {
        let commit = writer.commit(&ck, page_files)?;
        // Ending: the processes go with their scratch areas.
        scratches.into_iter().for_each(ScratchArea::keep);
        // Their connections go with them, in repair mode and locked.
        tcp.into_iter().for_each(sockets::tcp::Repairs::keep);
        if let Some(members) = members.take() {
            kill_all(members)?;
        }
        drop(std::mem::take(&mut protections));
        commit
    };
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "committed");
    let frozen_time = frozen_time.unwrap_or_else(|| frozen_at.elapsed() + stopped_before);
    let tracking = (!kept.is_empty()).then(|| precopy::Tracking::new(kept));
    Ok((
        DumpReport {
            pid,
            roots: roots.to_vec(),
            processes,
            pids,
            threads,
            vmas,
            memory_bytes,
            lazy_bytes,
            image_bytes: commit.total_bytes,
            frozen: frozen_time,
            precopy: precopied,
            total: t0.elapsed(),
            externals,
            outside_terminals,
        },
        held,
        tracking,
    ))
}

fn kill_all(members: Vec<Member>) -> Result<()> {
    // Children first, so none is re-parented to init while we work.
    let mut first = None;
    for m in members.into_iter().rev() {
        if let Member::Live(f) = m {
            if let Err(e) = f.kill() {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// The memory map of a frozen process and a [`Remote`] for its main thread
/// (no scratch area yet); every thread's signals are blocked meanwhile
/// (release puts the masks back).
pub(crate) fn injector(frozen: &Frozen) -> Result<(Vec<proc::MapEntry>, Remote)> {
    let pid = frozen.pid;
    let t = Instant::now();
    let maps = proc::maps(pid).dumping(pid, "reading the memory map")?;
    let syscall_ip = mem::find_syscall_in_maps(pid, &maps)
        .dumping(pid, "looking for a syscall instruction")?
        .ok_or_else(|| EngineError::Unsupported {
            pid,
            what: "an address space without any readable syscall instruction".into(),
        })?;
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1e3,
        "collect: maps, syscall instruction"
    );
    for t in &frozen.threads {
        ptrace::set_sigmask(t.tid, !0).dumping(pid, "blocking signals")?;
    }
    let r0 = Remote {
        pid,
        tid: frozen.main_tid(),
        vpid: pid,
        syscall_ip,
        scratch: 0,
        scratch_len: 0,
        batch_ip: 0,
    };
    Ok((maps, r0))
}

/// What [`collect_all`] collected, by member (None for zombies).
struct Collection {
    procs: Vec<Process>,
    remotes: Vec<Option<Remote>>,
    plans: Vec<Option<FrozenPlan>>,
    /// The page files each process's memory was copied into, when copied
    /// alongside the collection.
    copied: Vec<Option<Vec<(PageFileInfo, PageSpan)>>>,
    /// Scratch areas left mapped meanwhile.
    scratches: Vec<ScratchArea>,
    /// Each member's process-wide memory defaults (zombies: none).
    defaults: Vec<memory::MmDefaults>,
}

/// Asks for the memory of member `.0`, process `.1` with memory map `.2`
/// and parent `.3`, to be planned and copied.
type CopyJob = (usize, i32, Vec<proc::MapEntry>, i32);

/// Collects every member of the frozen tree. With `copy_into` (the tree
/// stays frozen until its image is written), a second thread plans and
/// copies each process's memory into page files as soon as its attributes
/// are read, while the rest of it is collected: the calls injected
/// meanwhile touch only their own scratch area, which the plan (made from
/// the memory map read before that area was mapped) leaves out.
/// The smaps of each process of the trees at `roots` that `trackers` does not
/// track, read while they run. A process that cannot be read (it exited,
/// or is not there yet) is surveyed at the freeze instead.
fn survey_running(roots: &[i32], trackers: &std::collections::HashMap<i32, Tracker>) -> Surveyed {
    let mut out = Surveyed::new();
    let mut queue = roots.to_vec();
    while let Some(pid) = queue.pop() {
        if out.len() > 4096 {
            break;
        }
        if !trackers.contains_key(&pid) {
            if let Ok(smaps) = proc::smaps(pid) {
                out.insert(pid, smaps);
            }
        }
        queue.extend(godwit_sys::process::children(pid).unwrap_or_default());
    }
    out
}

/// What the collection of a frozen tree is asked for.
#[derive(Clone, Copy)]
struct Want {
    /// Post-copy: private anonymous pages left lazy.
    lazy: bool,
    /// Most bytes of one deleted file kept.
    max_deleted: u64,
    /// DumpOptions::max_frozen_copy.
    max_frozen_copy: Option<std::time::Duration>,
}

/// smaps read before the freeze, by PID.
type Surveyed = std::collections::HashMap<i32, Vec<proc::MapEntry>>;

fn collect_all(
    members: &[Member],
    trackers: &std::collections::HashMap<i32, Tracker>,
    surveyed: &Surveyed,
    copy_into: Option<&ImageWriter>,
    progress: &dyn Progress,
    want: Want,
) -> Result<Collection> {
    let live = members
        .iter()
        .filter(|m| matches!(m, Member::Live(_)))
        .count();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<CopyJob>();
        let stop = &stop;
        let copier = copy_into.map(|writer| {
            s.spawn(move || {
                type Copied = Result<(Vec<crate::schema::Vma>, Vec<(PageFileInfo, PageSpan)>)>;
                let mut out: Vec<(usize, Copied)> = Vec::new();
                // Processes planned so far, by PID: a child's pages shared
                // copy-on-write with its parent (planned before it, parents
                // come first) are not copied again.
                let mut planned: std::collections::HashMap<i32, (usize, memory::Frames)> =
                    std::collections::HashMap::new();
                for (i, pid, maps, ppid) in rx {
                    let t = Instant::now();
                    let lap = |what: &str| {
                        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, pid, "copier: {what}")
                    };
                    let parent = planned.get(&ppid).and_then(|(k, frames)| match &out[*k] {
                        (_, Ok((vmas, _))) => Some(memory::ParentMemory {
                            vmas: vmas.as_slice(),
                            frames,
                        }),
                        _ => None,
                    });
                    let mut frames = memory::Frames::default();
                    let r = memory::survey_sharing(pid, &maps, parent.as_ref(), Some(&mut frames))
                        .and_then(|vmas| {
                            lap("planned");
                            let stage = match live {
                                1 => "dumping memory".to_string(),
                                _ => format!("memory of {pid}"),
                            };
                            progress.stage(&stage, memory::planned_bytes(&vmas));
                            let w = memory::write_pages(
                                pid,
                                &vmas,
                                writer,
                                progress,
                                None,
                                &[],
                                Some(stop),
                            )?;
                            lap("copied");
                            Ok((vmas, w))
                        });
                    let failed = r.is_err();
                    planned.insert(pid, (out.len(), frames));
                    out.push((i, r));
                    if failed {
                        break;
                    }
                }
                out
            })
        });
        let tx = copier.is_some().then_some(tx);
        let collected = collect_members(members, trackers, surveyed, tx.as_ref(), want);
        if collected.is_err() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Ends the copier's loop once it has taken every job.
        drop(tx);
        let copies = match copier {
            Some(c) => c.join().unwrap_or_else(|_| {
                vec![(
                    0,
                    Err(EngineError::BadImage("the memory copier panicked".into())),
                )]
            }),
            None => Vec::new(),
        };
        let mut c = collected?;
        for (i, r) in copies {
            let (vmas, w) = r?;
            c.procs[i].vmas = vmas;
            c.copied[i] = Some(w);
        }
        for (p, d) in c.procs.iter_mut().zip(&c.defaults) {
            d.keep(&mut p.vmas);
        }
        if copy_into.is_some() && c.copied.iter().flatten().count() != live {
            return Err(EngineError::BadImage(
                "the memory of a process was not copied".into(),
            ));
        }
        Ok(c)
    })
}

fn collect_members(
    members: &[Member],
    trackers: &std::collections::HashMap<i32, Tracker>,
    surveyed: &Surveyed,
    copy: Option<&std::sync::mpsc::Sender<CopyJob>>,
    want: Want,
) -> Result<Collection> {
    let mut c = Collection {
        procs: Vec::with_capacity(members.len()),
        remotes: Vec::with_capacity(members.len()),
        plans: Vec::with_capacity(members.len()),
        copied: Vec::with_capacity(members.len()),
        scratches: Vec::new(),
        defaults: Vec::with_capacity(members.len()),
    };
    for (i, m) in members.iter().enumerate() {
        c.copied.push(None);
        match m {
            Member::Live(f) => {
                let tracker = trackers.get(&f.pid);
                // A pre-copied child of a pre-copied parent (planned
                // before it): the pages they still share stay shared.
                let parent = match (tracker, want.lazy) {
                    (Some(_), false) => proc::status(f.pid).ok().and_then(|s| {
                        let j = c.procs.iter().position(|p| p.pid == s.ppid)?;
                        let plan = c.plans[j].as_ref()?;
                        Some(precopy::ParentPlan {
                            vmas: &c.procs[j].vmas,
                            written: &plan.written,
                        })
                    }),
                    _ => None,
                };
                let one = collect_one(
                    f,
                    tracker,
                    parent,
                    surveyed.get(&f.pid),
                    copy.map(|tx| (tx, i)),
                    want,
                )?;
                c.procs.push(one.process);
                c.remotes.push(Some(one.r0));
                c.plans.push(one.plan);
                c.scratches.extend(one.scratch);
                c.defaults.push(one.defaults);
            }
            Member::Zombie {
                pid,
                ppid,
                pgid,
                sid,
                status,
                exit_signal,
            } => {
                c.procs.push(Process {
                    exit_signal: Some(*exit_signal),
                    pid: *pid,
                    ppid: *ppid,
                    pgid: *pgid,
                    sid: *sid,
                    zombie: true,
                    exit_status: *status,
                    ..Default::default()
                });
                c.remotes.push(None);
                c.plans.push(None);
                c.defaults.push(Default::default());
            }
        }
    }
    Ok(c)
}

/// Collects everything but the page contents of one frozen process. With
/// `copy`, its memory is left to the copier (job number `.1`): the VMAs
/// come from there.
fn collect_one(
    frozen: &Frozen,
    tracker: Option<&Tracker>,
    parent: Option<precopy::ParentPlan>,
    surveyed: Option<&Vec<proc::MapEntry>>,
    copy: Option<(&std::sync::mpsc::Sender<CopyJob>, usize)>,
    want: Want,
) -> Result<Collected> {
    let lazy = want.lazy;
    let max_deleted = want.max_deleted;
    let pid = frozen.pid;
    let t = Instant::now();
    let (maps, r0) = injector(frozen)?;
    // mlockall(MCL_FUTURE) shows only in what it does to a new mapping.
    let lck_before = proc::status(pid)
        .dumping(pid, "reading the process's status")?
        .vm_lck;
    let area = ScratchArea::map(r0)?;
    let defaults = memory::MmDefaults::read(&area.remote(), lck_before)?;
    // The copier starts once the attributes are read: their brk(0) takes
    // the memory map's write lock, which would wait for the copier's reads
    // and hold up its further ones. The map was read before the scratch
    // area was mapped. A copier that stopped early has its error to report.
    let r = area.remote();
    let mut attributes = Process::default();
    let collected = attrs::dump(&r, &mut attributes).and_then(|()| {
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "collect: attributes");
        if let Some((tx, i)) = copy {
            let _ = tx.send((i, pid, maps.clone(), attributes.ppid));
        }
        collect(&r, frozen, attributes, max_deleted)
    });
    // While the memory is copied, unmapping would wait for the copier's
    // hold on the memory map (and stall it): left mapped until the end.
    let scratch = match copy {
        Some(_) => Some(area),
        None => {
            area.unmap()?;
            None
        }
    };
    let mut process = collected?;
    tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "collect: done");
    let plan = match (tracker, copy) {
        (_, Some(_)) => None,
        (Some(t), None) => {
            let mut plan = t.plan_frozen(&maps, parent)?;
            // Too much written since its copy to send while frozen: the
            // rest follows the process (post-copy from the freeze on).
            let too_slow = want.max_frozen_copy.is_some_and(|max| {
                let at = t.copy_time(plan.end - plan.copy_from);
                let shares = plan.vmas.iter().any(|v| !v.inherited.is_empty());
                tracing::debug!(pid, ?at, ?max, shares, "frozen copy predicted");
                at > max && !shares
            });
            if lazy || too_slow {
                plan.make_lazy(&touched_by_restore(&process));
            }
            process.vmas = std::mem::take(&mut plan.vmas);
            Some(plan)
        }
        (None, None) => {
            process.vmas = match surveyed.and_then(|s| memory::flags_as_surveyed(s, &maps)) {
                Some(entries) => {
                    let present = memory::scan_present(pid, &entries)?;
                    memory::plan(pid, &entries, present)?
                }
                None => memory::survey(pid, &maps)?,
            };
            if lazy {
                let keep = touched_by_restore(&process);
                memory::make_lazy(&mut process.vmas, &keep);
            }
            None
        }
    };
    tracing::debug!(
        ms = t.elapsed().as_secs_f64() * 1e3,
        "collect: memory planned"
    );
    Ok(Collected {
        process,
        r0,
        plan,
        scratch,
        defaults,
    })
}

/// Tests only: leave the rseq pages lazy too, so that the restore touches
/// memory still at the source and postcopy::serve_restore must fetch it.
#[doc(hidden)]
pub static LAZY_RSEQ_FOR_TESTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Addresses in the process's memory that a restore touches before the
/// process runs: they cannot be left lazy (post-copy), as no page is served
/// before then. The kernel writes each thread's rseq area when rseq is
/// registered.
pub(crate) fn touched_by_restore(p: &Process) -> Vec<u64> {
    if LAZY_RSEQ_FOR_TESTS.load(std::sync::atomic::Ordering::Relaxed) {
        return Vec::new();
    }
    p.threads
        .iter()
        .filter_map(|t| t.rseq.as_ref())
        .flat_map(|r| [r.addr, r.addr + r.len.max(1) as u64 - 1])
        .collect()
}

/// What a process whose main thread has exited may not also have (not
/// restored that way yet): a job-control stop (made again through the main
/// thread) and seccomp (the restored main thread's exit would go through
/// the filters installed in it).
fn refuse_with_exited_leader(p: &Process) -> Result<()> {
    let what = if p.stop_signal != 0 {
        Some(format!(
            "is stopped by job control (signal {})",
            p.stop_signal
        ))
    } else {
        p.threads.iter().find(|t| t.seccomp_mode != 0).map(|t| {
            format!(
                "has thread {} under seccomp (mode {})",
                t.tid, t.seccomp_mode
            )
        })
    };
    match what {
        None => Ok(()),
        Some(what) => Err(EngineError::Unsupported {
            pid: p.pid,
            what: format!(
                "a process whose main thread {} has exited (a zombie thread-group leader) \
                 and that {what}: both together are not restored yet",
                p.pid
            ),
        }),
    }
}

/// Collects all but the attributes (in `p` already) and the memory.
fn collect(r: &Remote, frozen: &Frozen, mut p: Process, max_deleted: u64) -> Result<Process> {
    let t = Instant::now();
    let lap = |what: &str| tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "collect: {what}");
    p.stop_signal = frozen.stop_signal;
    if let Some(status) = frozen.leader_exited {
        p.leader_exited = true;
        p.exit_status = status;
        p.leader_cpus = godwit_sys::sched::affinity(r.pid)
            .dumping(r.pid, "reading the exited main thread's CPU affinity")?
            .to_words();
    }
    p.vma_policies = crate::resources::numa::dump_vmas(r)?;
    let sig = signals::dump(r)?;
    p.sigactions = sig.actions;
    p.shared_pending = sig.shared_pending;
    p.itimers = sig.itimers;
    lap("signals");
    p.posix_timers = timers::dump(r)?;
    for t in &frozen.threads {
        p.threads.push(threads::dump(r, t)?);
    }
    if p.leader_exited {
        refuse_with_exited_leader(&p)?;
    }
    lap("timers, threads");
    let f = files::dump(r.pid, max_deleted)?;
    lap("files");
    p.fds = f.fds;
    p.pipes = f.pipes;
    p.cwd = f.cwd;
    p.cwd_deleted = f.cwd_deleted;
    (p.root, p.root_deleted) = files::dump_root(r.pid)?;
    Ok(p)
}

//! Restore: read → rebuild → resume.
//!
//! A stub process is created with the image's PID (clone3 with set_tid) and
//! re-parented to init. Godwit traces it, maps a one-page trampoline holding a
//! `syscall` instruction (plus scratch pages) in a hole of the target's address
//! space, unmaps everything else, and rebuilds the target by injected system
//! calls: vDSO, memory, memory layout, files, signal handlers, limits,
//! threads (clone3 with set_tid), per-thread state, credentials. Last the
//! trampoline goes, the saved registers are loaded, and the process runs.

use crate::deferred::{self, Deferred};
use crate::error::{EngineError, RestoreCtx, Result};
use crate::freeze;
use crate::remote::Remote;
use crate::resources::{
    attrs, caps, files, jobctl, locks, memory, pidfd, sched, seccomp, signals, sockets, sysv,
    threads, timers, tty,
};
use crate::schema::{Checkpoint, Process, Vma, VmaKind};
use crate::Progress;
use godwit_sys::mem::{self, Range};
use godwit_sys::pidns::PidNamespace;
use godwit_sys::{proc, process, ptrace, PAGE_SIZE};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Size of the trampoline: one code page and scratch pages.
const TRAMPOLINE: u64 = 16 * PAGE_SIZE;
/// Offset of the batch loop in the trampoline's first page.
const BATCH_AT: u64 = 64;
/// The top of the x86_64 user address space (4-level paging).
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const ARCH_MAP_VDSO_64: u64 = 0x2003;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore even if files changed size since the dump.
    pub allow_file_changes: bool,
    /// Restore into a new PID namespace (with its own /proc), so that the
    /// image's PIDs need not be free on the host.
    pub pid_ns: bool,
    /// A shell job (dump --shell-job): fds that were on the terminal outside
    /// the tree are attached to the terminal on this process's standard
    /// input (which must be one), and the tree's root joins this process's
    /// session and process group instead of leading its own.
    pub shell_job: bool,
    /// With `shell_job`: leave the caller's terminal settings as they are
    /// instead of applying the ones saved in the image.
    pub leave_termios: bool,
    /// Rebuild established TCP connections (an image dumped with
    /// `DumpOptions::tcp_established`); without it such an image is refused.
    pub tcp_established: bool,
    /// Descriptors of this process put in place of those connected outside
    /// the dumped tree (`--inherit-fd N:KEY`); the others get a stand-in
    /// (resources::external).
    pub inherit_fds: Vec<crate::resources::external::Inherit>,
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The PID of the tree's root (as the restored process sees it).
    pub pid: i32,
    /// The root's PID on the host: the same as `pid` unless restored into a
    /// new PID namespace.
    pub host_pid: i32,
    /// Every root of the image (the first is `pid`), as (PID, host PID).
    pub roots: Vec<(i32, i32)>,
    /// With --pid-ns: the host PID of the namespace's init.
    pub ns_init: Option<i32>,
    pub processes: usize,
    pub threads: usize,
    pub memory_bytes: u64,
    pub total: Duration,
    /// What each descriptor connected outside the dumped tree became
    /// (inherited, or a stand-in the caller should warn about).
    pub externals: Vec<crate::resources::external::ExternalUse>,
}

impl RestoreReport {
    /// The host PIDs of every root.
    pub fn host_roots(&self) -> Vec<i32> {
        self.roots.iter().map(|r| r.1).collect()
    }
}

/// Checks that this host can run the image's CPU state.
fn check_cpu(ck: &Checkpoint) -> Result<()> {
    if ck.arch != "x86_64" {
        return Err(EngineError::CpuMismatch(format!(
            "the image is for {:?}, this host is x86_64",
            ck.arch
        )));
    }
    let Some(cpu) = &ck.cpu else { return Ok(()) };
    let (xcr0, size) = process::xsave_features();
    let missing = cpu.xcr0 & !xcr0;
    if missing != 0 {
        return Err(EngineError::CpuMismatch(format!(
            "xsave features {missing:#x} (image XCR0 {:#x}, this CPU {xcr0:#x})",
            cpu.xcr0
        )));
    }
    if cpu.xsave_size > size {
        return Err(EngineError::CpuMismatch(format!(
            "an xsave area of {} bytes (this CPU: {size})",
            cpu.xsave_size
        )));
    }
    Ok(())
}

/// Waits (up to 5 s) while `id` belongs to a task that is exiting, e.g.
/// the original of a dump that just ended it and is still freeing its memory.
fn wait_while_exiting(id: i32) {
    const PF_EXITING: u64 = 0x4;
    let t0 = Instant::now();
    while let Ok(st) = proc::stat(id) {
        if st.flags & PF_EXITING == 0 && !matches!(st.state, 'X' | 'x') {
            return;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            return;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Kills every half-built process unless disarmed.
struct Guard<'a> {
    pids: Vec<i32>,
    ns: Option<&'a mut PidNamespace>,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(ns) = self.ns.as_mut() {
                ns.kill();
            }
            for pid in self.pids.iter().rev() {
                let _ = process::kill(*pid, libc::SIGKILL);
            }
        }
    }
}

/// Restores the image in `dir`: the process tree with the same PIDs,
/// sessions and groups; returns once every process runs.
pub fn restore(
    dir: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let reader = godwit_image::ImageReader::open(dir)?;
    restore_from(reader, opts, progress, &|_| Ok(()))
}

/// Restores the image `reader` holds (from any transfer medium). `gate` is
/// called once every process is rebuilt, verified and still stopped, with
/// the root's PID on this host: if it fails, the processes are killed and
/// its error returned; if it succeeds, they run.
pub fn restore_from(
    reader: godwit_image::ImageReader,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    gate: &dyn Fn(i32) -> Result<()>,
) -> Result<RestoreReport> {
    restore_deferring(reader, opts, progress, gate, None).map(|(r, _)| r)
}

/// As [`restore_from`]; with `defer` (Some(least bytes worth it)), the
/// processes run before their large private anonymous areas are filled, and the [`Deferred`] returned (if
/// anything was deferred) places those pages: see crate::deferred. Its
/// `run` must follow at once: until then a thread touching such memory
/// waits.
pub fn restore_deferring(
    reader: godwit_image::ImageReader,
    opts: &RestoreOptions,
    progress: &dyn Progress,
    gate: &dyn Fn(i32) -> Result<()>,
    defer: Option<u64>,
) -> Result<(RestoreReport, Option<Deferred>)> {
    let t0 = Instant::now();
    let mut ck: Checkpoint = reader.metadata()?;
    let index = defer.and_then(|least| deferred::defer(&mut ck.processes, least));
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "image loaded");
    check_cpu(&ck)?;
    if !ck.processes.is_empty() {
        attrs::check_sessions(&ck.processes)?;
    }
    let extra_roots = adopt_extra_roots(&mut ck.processes)?;
    let procs = &ck.processes;
    let Some(root) = procs.first() else {
        return Err(EngineError::BadImage("the image holds no process".into()));
    };
    if root.zombie {
        return Err(EngineError::BadImage(
            "the image's first process is a zombie".into(),
        ));
    }
    for (i, p) in procs.iter().enumerate() {
        if i > 0 && !procs[..i].iter().any(|q| q.pid == p.ppid) {
            return Err(EngineError::BadImage(format!(
                "process {} comes before its parent {} or has none in the image",
                p.pid, p.ppid
            )));
        }
        if p.zombie {
            continue;
        }
        if p.leader_exited {
            if p.threads.is_empty() || p.threads.iter().any(|t| t.tid == p.pid) {
                return Err(EngineError::BadImage(format!(
                    "process {}: its main thread had exited, yet it has no other thread \
                     or the main thread is among its threads",
                    p.pid
                )));
            }
        } else if p.threads.first().map(|t| t.tid) != Some(p.pid) {
            return Err(EngineError::BadImage(format!(
                "process {}: the first thread is not the main thread",
                p.pid
            )));
        }
        attrs::check(p)?;
        sched::check(p)?;
        memory::check_restorable(p)?;
        caps::check(p)?;
        memory::check_files(&p.vmas, opts.allow_file_changes)?;
        files::check(&p.fds, opts.allow_file_changes)?;
        files::check_root(p)?;
        crate::resources::deleted::check(p)?;
        files::check_pipe_sizes(p.pid, &p.fds)?;
        sockets::tcp::check(p, opts.tcp_established)?;
    }
    for id in procs
        .iter()
        .flat_map(|p| std::iter::once(p.pid).chain(p.threads.iter().map(|t| t.tid)))
        .filter(|_| !opts.pid_ns)
    {
        wait_while_exiting(id);
        if proc::stat(id).is_ok() {
            return Err(EngineError::PidTaken {
                pid: id,
                holder: threads::holder_of(id),
            });
        }
    }
    sysv::check(procs)?;
    memory::check_huge_pages(procs)?;
    let stacks = seccomp::Stacks::new(procs)?;
    stacks.check_privileges()?;
    let shell = opts
        .shell_job
        .then(|| tty::CallerTerminal::from_stdin(!opts.leave_termios))
        .transpose()?;
    tty::check(procs, shell.as_ref(), &opts.inherit_fds)?;
    let plan = files::FdPlan::new(procs, shell.as_ref(), &opts.inherit_fds)?;
    let parents = files::parents(procs);
    let shm = memory::ShmPlan::new(procs, plan.highest_fd() + 1, |set| {
        files::lca(&parents, set)
    });
    let (_, hard) =
        process::get_rlimit(0, libc::RLIMIT_NOFILE).restoring(root.pid, "checking limits")?;
    process::set_rlimit(0, libc::RLIMIT_NOFILE, hard, hard)
        .restoring(root.pid, "raising the fd limit")?;
    if shm.highest_fd() >= hard {
        return Err(EngineError::BadImage(format!(
            "restoring needs fd numbers up to {}, above this host's limit of {hard} open files",
            shm.highest_fd()
        )));
    }
    // The namespace's init is forked from us: do it before the page files
    // are mapped, or it would keep them alive as long as it lives. It is a
    // process too: with --pid-ns the page files are checked (read) first.
    if opts.pid_ns {
        reader.verify_pages()?;
    }
    let mut ns = if opts.pid_ns {
        if procs.iter().any(|p| p.pid == 1) {
            return Err(EngineError::BadImage(
                "the image holds a PID 1; --pid-ns keeps PID 1 for its own init".into(),
            ));
        }
        Some(PidNamespace::create().restoring(root.pid, "creating a PID namespace")?)
    } else {
        None
    };
    // Every page file of every process, mapped.
    let mut mapped = Vec::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        if p.page_spans.is_empty() {
            mapped.push((p.pid, 0, reader.map_page_file(&p.page_file)?));
        }
        for span in &p.page_spans {
            let m = reader.map_page_file(&span.name)?;
            if m.len() as u64 != span.len {
                return Err(EngineError::BadImage(format!(
                    "{} holds {} bytes, not {}",
                    span.name,
                    m.len(),
                    span.len
                )));
            }
            mapped.push((p.pid, span.start, m));
        }
    }
    let memory_bytes = procs
        .iter()
        .map(|p| memory::planned_bytes(&p.vmas) + memory::lazy_bytes(&p.vmas))
        .sum();
    tracing::debug!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "checked, page files mapped"
    );
    // Every checksum is verified before any process (or SysV segment) is
    // created: a corrupt image must leave nothing behind, not even for a
    // moment a process holding the image's PID.
    if !opts.pid_ns {
        let maps: Vec<&godwit_image::MappedPages> = mapped.iter().map(|(_, _, m)| m).collect();
        reader.verify_mapped(&maps)?;
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "verified");
    let ns_init = ns.as_ref().map(|n| n.init_pid());
    // Shared with the deferred fill, which places pages after we return.
    let mapped: Arc<deferred::Mapped> = Arc::new(mapped);
    let index = index.map(Arc::new);
    let (roots, lazy) = {
        let pages: Vec<memory::Pages> = procs
            .iter()
            .map(|p| {
                memory::Pages::new(
                    mapped
                        .iter()
                        .filter(|(pid, _, _)| *pid == p.pid)
                        .map(|(_, start, m)| (*start, &m[..]))
                        .collect(),
                )
            })
            .collect();
        let shell_job = shell.is_some();
        let mut segments = sysv::Segments::create(procs, &pages)?;
        let plans = Plans {
            extra_roots: &extra_roots,
            files: &plan,
            shm: &shm,
            segments: &segments,
            pages: &pages,
            shell_job,
            seccomp: &stacks,
        };
        let (roots, lazy) = match &index {
            None => (
                resurrect(procs, ns.as_mut(), &plans, progress, gate)?,
                Vec::new(),
            ),
            Some(index) => {
                // Pages of deferred areas the restore itself touches are
                // placed as it touches them, until the gate (after which
                // the processes' own faults wait for the pager).
                let sink = crate::postcopy::Sink::default();
                let stop = AtomicBool::new(false);
                let stopping_gate = |pid: i32| {
                    stop.store(true, Ordering::SeqCst);
                    gate(pid)
                };
                let (r, lazy) = std::thread::scope(|sc| {
                    let monitor = sc.spawn(|| {
                        let mut feed = deferred::ImageFeed::new(mapped.clone(), index.clone());
                        crate::postcopy::serve_restore(&sink, &mut feed, &stop)
                    });
                    let r = crate::postcopy::collecting(&sink, || {
                        resurrect(procs, ns.as_mut(), &plans, progress, &stopping_gate)
                    });
                    stop.store(true, Ordering::SeqCst);
                    let _ = monitor.join();
                    r
                });
                (r?, lazy)
            }
        };
        segments.keep();
        (roots, lazy)
    };
    let host_pid = roots[0].1;
    let deferred = index.map(|index| Deferred {
        lazy,
        feed: deferred::ImageFeed::new(mapped.clone(), index),
    });
    // The process runs. Unmapping the page files costs ~30 ms per GiB: off
    // the caller's time (the deferred fill holds them until it is done).
    std::thread::spawn(move || drop(mapped));
    Ok((
        RestoreReport {
            pid: root.pid,
            host_pid,
            roots,
            ns_init,
            processes: procs.len(),
            threads: procs.iter().map(|p| p.threads.len()).sum(),
            memory_bytes,
            total: t0.elapsed(),
            externals: plan.external_uses(),
        },
        deferred,
    ))
}

/// An image of several roots (`godwit dump --pid A --pid B`): every process
/// after the first whose parent is not in the image is a root too. Those
/// are made by the first root with CLONE_PARENT (see [`fork_child`]), so
/// that they inherit what it holds, the descriptions they share with it
/// included, while their parent is the first root's. The plan treats them
/// as its children: their `ppid` is set to it here. Returns their PIDs.
fn adopt_extra_roots(procs: &mut [Process]) -> Result<Vec<i32>> {
    let Some(first) = procs.first().map(|p| p.pid) else {
        return Ok(Vec::new());
    };
    let pids: std::collections::HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    let mut extra = Vec::new();
    for p in procs.iter_mut().skip(1) {
        if pids.contains(&p.ppid) {
            continue;
        }
        if p.zombie {
            return Err(EngineError::BadImage(format!(
                "process {} is a zombie whose parent {} is not in the image",
                p.pid, p.ppid
            )));
        }
        p.ppid = first;
        extra.push(p.pid);
    }
    Ok(extra)
}

/// What the restore planned before creating any process.
struct Plans<'a> {
    /// Roots after the first (see [`adopt_extra_roots`]).
    extra_roots: &'a [i32],
    files: &'a files::FdPlan,
    shm: &'a memory::ShmPlan,
    segments: &'a sysv::Segments,
    pages: &'a [memory::Pages<'a>],
    /// --shell-job: the root joins godwit's session and process group.
    shell_job: bool,
    /// Every thread's seccomp filters.
    seccomp: &'a seccomp::Stacks,
}

/// Creates the processes, rebuilds them (from a verified image), and lets
/// them run. Returns each root's PID and its PID on the host, the first
/// root first.
fn resurrect(
    procs: &[Process],
    mut ns: Option<&mut PidNamespace>,
    plans: &Plans,
    progress: &dyn Progress,
    gate: &dyn Fn(i32) -> Result<()>,
) -> Result<Vec<(i32, i32)>> {
    let Plans {
        extra_roots,
        files: plan,
        shm,
        segments,
        pages,
        shell_job,
        seccomp: stacks,
    } = *plans;
    let root = &procs[0];
    // Before the stub is forked, so that it starts on our CPU.
    let one_cpu = crate::colocate::OneCpu::here();
    let spawned = match ns.as_mut() {
        Some(ns) => ns.spawn(root.pid),
        None => process::spawn_stub(root.pid),
    };
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            return Err(EngineError::PidTaken {
                pid: root.pid,
                holder: threads::holder_of(root.pid),
            })
        }
        Err(e) => return Err(e).restoring(root.pid, "creating the process"),
    };
    if let Some(c) = &one_cpu {
        c.join(pid);
    }
    let t0 = Instant::now();
    let mut guard = Guard {
        pids: vec![pid],
        ns,
        armed: true,
    };
    ptrace::seize(pid).restoring(pid, "attaching to the new process")?;
    ptrace::interrupt(pid).restoring(pid, "attaching to the new process")?;
    if !freeze::wait_interrupt_stop(pid).restoring(pid, "attaching to the new process")? {
        return Err(EngineError::BadImage(
            "the new process exited at once".into(),
        ));
    }
    ptrace::set_sigmask(pid, !0).restoring(pid, "blocking signals")?;
    let all_vmas: Vec<&Vma> = procs.iter().flat_map(|p| &p.vmas).collect();
    let r = prepare_root(pid, root.pid, &all_vmas)?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "stub emptied");

    // The memory shared with children is filled in phase 1.
    progress.stage(
        "restoring memory",
        procs.iter().map(|p| memory::planned_bytes(&p.vmas)).sum(),
    );
    // Phase 1, parents before children: session, the descriptions this
    // process creates, its controlling terminal, then its children (which
    // inherit all three). The root of a shell job stays in godwit's session.
    let mut remotes: Vec<Option<Remote>> = vec![None; procs.len()];
    remotes[0] = Some(r);
    let mut roots = vec![(root.pid, pid)];
    // Per process: the VMAs mapped and filled before it forked its
    // children, which they hold too (pages shared copy-on-write).
    let mut premapped: Vec<Vec<(u64, u64)>> = vec![Vec::new(); procs.len()];
    // Zombies, created as stopped stubs and ended after phase 3.
    let mut zombies: Vec<(usize, Remote)> = Vec::new();
    for (i, p) in procs.iter().enumerate() {
        let Some(r) = remotes[i] else { continue };
        let joins_caller = shell_job && i == 0;
        if !joins_caller {
            attrs::restore_session(&r, p)?;
        }
        // Shared memory first: memfd descriptions are opened from it.
        shm.create(&r, i, pages)?;
        plan.create(&r, i, &|id| shm.fd(id), pages)?;
        plan.set_ctty(&r, p, joins_caller)?;
        // Memory shared copy-on-write with the parent and the children.
        let held = procs[..i]
            .iter()
            .position(|q| q.pid == p.ppid && i > 0)
            .map_or(&[][..], |k| &premapped[k][..]);
        let for_children =
            memory::shared_with_children(p, procs.iter().skip(i + 1).filter(|c| c.ppid == p.pid));
        premapped[i] =
            memory::restore_early(&r, &p.vmas, &pages[i], progress, held, &for_children)?;
        for (j, c) in procs
            .iter()
            .enumerate()
            .skip(i + 1)
            .filter(|(_, c)| c.ppid == p.pid)
        {
            let sibling = extra_roots.contains(&c.pid);
            let child = fork_child(&r, c.pid, c.exit_signal.unwrap_or(libc::SIGCHLD), sibling)?;
            guard.pids.push(child.pid);
            if sibling {
                roots.push((c.pid, child.pid));
            }
            if c.zombie {
                // It exits once the process groups exist (phase 3), in
                // its own session if it led one.
                attrs::restore_session(&child, c)?;
                zombies.push((j, child));
            } else {
                remotes[j] = Some(child);
            }
        }
    }
    // Every process exists: queues naming senders created after their
    // socket are refilled now.
    plan.finish_unix(&remotes)?;
    tracing::debug!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "stub ready, processes created"
    );
    // Phase 2: rebuild each process.
    let mut host_tids = vec![Vec::new(); procs.len()];
    for (i, p) in procs.iter().enumerate() {
        if let Some(r) = &remotes[i] {
            host_tids[i] = build(r, p, &pages[i], plan, shm, progress, &premapped[i])?;
        }
    }
    // Now that every mapping exists: the remaining memfd seals, and SysV
    // segments marked for removal marked again.
    shm.seal()?;
    segments.mark_removed(pid)?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "rebuilt");
    // From here on, threads are addressed by their host TIDs.
    let remotes: Vec<Option<(Remote, Vec<i32>)>> = remotes
        .into_iter()
        .zip(host_tids)
        .map(|(r, t)| r.map(|r| (r, t)))
        .collect();
    // Phase 3: process groups, leaders first (in a shell job, the root's
    // group is godwit's, which every process is in until it moves), then
    // the terminals' foreground groups.
    // A zombie that led a group still lives here (as a stub), so that its
    // group exists for the others to join; it exits right after.
    for leaders in [true, false] {
        for (i, p) in procs.iter().enumerate() {
            let r = match &remotes[i] {
                Some((r, _)) => Some(r),
                None => zombies.iter().find(|(j, _)| *j == i).map(|(_, z)| z),
            };
            if let Some(r) = r {
                if (p.pgid == p.pid) == leaders
                    && procs.iter().any(|q| q.pid == p.pgid)
                    && !(shell_job && p.pgid == root.pgid)
                {
                    attrs::restore_pgid(r, p)?;
                }
            }
        }
    }
    for (j, z) in &zombies {
        make_zombie(z, procs[*j].exit_status)?;
    }
    let processes: Vec<Option<Remote>> = remotes
        .iter()
        .map(|o| o.as_ref().map(|(r, _)| *r))
        .collect();
    plan.restore_foreground(procs, &processes)?;
    pidfd::restore(procs, &processes)?;
    files::restore_async(procs, &processes)?;
    // Phase 4: credentials and capabilities, last: after them we may no
    // longer be allowed the rest; then what changing them reset. Seccomp
    // filters that need privileges the saved credentials lack go in first
    // (resources/seccomp).
    for (i, p) in procs.iter().enumerate() {
        if let Some((r, tids)) = &remotes[i] {
            plan.restore_root(r, p)?;
            seccomp::install_before_credentials(r, p, tids, stacks)?;
            for (t, &host) in p.threads.iter().zip(tids) {
                attrs::restore_creds(&r.for_thread(host), p, t)?;
            }
            attrs::restore_dumpable(r, p)?;
        }
    }
    // Phase 5: drop the trampolines (the thread stops at syscall exit, before
    // fetching another instruction from it), load registers, and go.
    // Seccomp filters and strict mode go in last of what is injected; the
    // threads' seccomp stays suspended until they are detached.
    for (i, p) in procs.iter().enumerate() {
        if let Some((r, tids)) = &remotes[i] {
            seccomp::install_last(r, p, tids, stacks)?;
            // A main thread that had exited exits again (through the
            // trampoline), leaving a zombie leader; the trampoline then
            // goes through a thread that runs on.
            let r = match (p.leader_exited, tids.first()) {
                (true, Some(&first)) => {
                    threads::end_leader(r, p.exit_status, &p.leader_cpus)?;
                    &r.for_thread(first)
                }
                _ => r,
            };
            r.call(
                "munmap",
                libc::SYS_munmap,
                [r.syscall_ip, TRAMPOLINE, 0, 0, 0, 0],
            )
            .restoring(r.pid, "removing the trampoline")?;
            for (t, &host) in p.threads.iter().zip(tids) {
                threads::load_cpu_state(r.pid, host, t)?;
                seccomp::finish_resume(r.pid, host, t, stacks)?;
            }
        }
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "registers loaded");
    plan.finish_terminals()?;
    // Godwit leaves the CPU it shared with the threads; each thread gets
    // the scheduling it had (older images: godwit's CPUs).
    let wide = one_cpu.as_ref().map(|c| c.wide());
    drop(one_cpu);
    for (i, p) in procs.iter().enumerate() {
        if let Some((r, tids)) = &remotes[i] {
            for (t, &host) in p.threads.iter().zip(tids) {
                match (&t.sched, &wide) {
                    (Some(s), _) => sched::restore(r.pid, host, t.tid, s)?,
                    (None, Some(w)) => crate::colocate::give_cpus(host, w),
                    (None, None) => {}
                }
                threads::restore_syscall_dispatch(r.pid, host, t)?;
            }
        }
    }
    // A migration's go, once nothing is left that could fail but the
    // detach: until then the connections stay in repair mode, so that the
    // source can take them back if the switch-over fails.
    gate(pid)?;
    plan.finish_tcp()?;
    for (i, p) in procs.iter().enumerate().rev() {
        if let Some((r, tids)) = &remotes[i] {
            if p.stop_signal != 0 {
                jobctl::detach_stopped(r.pid, tids, p)?;
                continue;
            }
            for &t in tids.iter().rev() {
                ptrace::detach(t).restoring(p.pid, "starting the process")?;
            }
        }
    }
    guard.armed = false;
    if let Some(ns) = guard.ns.as_mut() {
        ns.seal();
    }
    Ok(roots)
}

/// Turns the stub (a fork of godwit) into an empty process holding only the
/// trampoline, at an address free in every process of the image.
fn prepare_root(pid: i32, vpid: i32, vmas: &[&Vma]) -> Result<Remote> {
    let own = proc::maps(pid).restoring(pid, "reading the new process's memory map")?;
    let ip = mem::find_syscall_in_maps(pid, &own)
        .restoring(pid, "looking for a syscall instruction")?
        .ok_or_else(|| EngineError::BadImage("no syscall instruction in the stub".into()))?;
    let r0 = Remote {
        pid,
        tid: pid,
        vpid,
        syscall_ip: ip,
        scratch: 0,
        scratch_len: 0,
        batch_ip: 0,
    };
    threads::drop_inherited_rseq(&r0)?;
    let tramp = place_trampoline(&r0, vmas)?;
    // A syscall instruction, then the batch loop.
    let mut code = vec![0x0f, 0x05, 0xcc, 0xcc];
    code.resize(BATCH_AT as usize, 0xcc);
    code.extend_from_slice(&godwit_sys::inject::BATCH_CODE);
    mem::write_ranges(
        pid,
        &code,
        &[Range {
            addr: tramp,
            len: code.len() as u64,
        }],
    )
    .restoring(pid, "writing the trampoline")?;
    let r = Remote {
        pid,
        tid: pid,
        vpid,
        syscall_ip: tramp,
        scratch: tramp + PAGE_SIZE,
        scratch_len: TRAMPOLINE - PAGE_SIZE,
        batch_ip: tramp + BATCH_AT,
    };
    r.call(
        "close_range",
        libc::SYS_close_range,
        [0, u32::MAX as u64, 0, 0, 0, 0],
    )
    .restoring(pid, "closing inherited files")?;
    r.call(
        "munmap",
        libc::SYS_munmap,
        [PAGE_SIZE, tramp - PAGE_SIZE, 0, 0, 0, 0],
    )
    .restoring(pid, "emptying the address space")?;
    let top = tramp + TRAMPOLINE;
    r.call(
        "munmap",
        libc::SYS_munmap,
        [top, TASK_SIZE - top, 0, 0, 0, 0],
    )
    .restoring(pid, "emptying the address space")?;
    Ok(r)
}

/// Forks child `pid` from the (still empty) process behind `r`, with
/// `exit_signal` (what its parent gets when it exits): it starts with the
/// trampoline and the staging descriptors, and stops at once.
/// `sibling`: an extra root, made with CLONE_PARENT: it inherits what `r`
/// holds like a child, but its parent is `r`'s parent (and its exit signal
/// `r`'s, which the kernel then takes over).
fn fork_child(r: &Remote, pid: i32, exit_signal: i32, sibling: bool) -> Result<Remote> {
    let set_tid = r.scratch + 96;
    // clone3 takes no exit signal with CLONE_PARENT (EINVAL).
    let (flags, exit_signal) = match sibling {
        true => (libc::CLONE_PARENT as u64, 0),
        false => (0, exit_signal as u64),
    };
    let mut args = Vec::with_capacity(88);
    for w in [flags, 0, 0, 0, exit_signal, 0, 0, 0, set_tid, 1, 0] {
        args.extend_from_slice(&w.to_le_bytes());
    }
    r.put(0, &args)
        .restoring(r.pid, "creating child processes")?;
    r.put(96, &pid.to_le_bytes())
        .restoring(r.pid, "creating child processes")?;
    let out = r
        .inj()
        .run(libc::SYS_clone3, [r.scratch, 88, 0, 0, 0, 0])
        .restoring(r.pid, "creating child processes")?;
    if out.ret == -(libc::EEXIST as i64) {
        return Err(EngineError::PidTaken {
            pid,
            holder: threads::holder_of(pid),
        });
    }
    let host = match out.new_task {
        Some(host) if out.ret >= 0 => host,
        _ => {
            return Err(EngineError::BadImage(format!(
                "child process {pid} could not be created (clone3 returned {}, new task {:?})",
                out.ret, out.new_task
            )))
        }
    };
    threads::check_created(host, pid, "child process")?;
    if !freeze::wait_interrupt_stop(host).restoring(pid, "creating child processes")? {
        return Err(EngineError::BadImage(format!("new child {pid} exited")));
    }
    Ok(Remote {
        pid: host,
        tid: host,
        vpid: pid,
        ..*r
    })
}

/// Makes a freshly forked child exit with a zombie's saved wait status,
/// then checks that the kernel holds that very status for its parent.
/// Killed by a signal: the core-dump bit (0x80) is set by the kernel only
/// when it wrote a core, so without the bit the stub is made non-dumpable
/// (no core), and with it the stub, emptied but for the trampoline, dumps a
/// small core in a directory of its own that is removed afterwards.
fn make_zombie(r: &Remote, status: i32) -> Result<()> {
    const PR_SET_DUMPABLE: u64 = 4;
    let sig = status & 0x7f;
    let core = sig != 0 && status & 0x80 != 0;
    let stage = "recreating a zombie";
    let mut core_dir = None;
    if sig == 0 {
        r.inj()
            .run_to_exit(
                libc::SYS_exit_group,
                [((status >> 8) & 0xff) as u64, 0, 0, 0, 0, 0],
            )
            .restoring(r.pid, stage)?;
    } else {
        if core {
            core_dir = Some(prepare_core(r, stage)?);
        }
        r.call(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [PR_SET_DUMPABLE, core as u64, 0, 0, 0, 0],
        )
        .restoring(r.pid, stage)?;
        let dfl = [0u8; 32];
        let a = r.put(0, &dfl).restoring(r.pid, stage)?;
        r.call(
            "rt_sigaction",
            libc::SYS_rt_sigaction,
            [sig as u64, a, 0, 8, 0, 0],
        )
        .restoring(r.pid, stage)?;
        ptrace::set_sigmask(r.pid, 0).restoring(r.pid, stage)?;
        r.inj()
            .run_to_exit(libc::SYS_kill, [r.vpid as u64, sig as u64, 0, 0, 0, 0])
            .restoring(r.pid, stage)?;
    }
    if let Some(dir) = core_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    let got = proc::stat(r.pid).restoring(r.pid, stage)?.exit_code;
    if got != status {
        return Err(EngineError::Refused {
            pid: r.vpid,
            what: format!(
                "the zombie's wait status came back as {got:#x}, not {status:#x} as dumped{}",
                if core {
                    " (the kernel did not write the core dump that sets bit 0x80)"
                } else {
                    ""
                }
            ),
        });
    }
    Ok(())
}

/// Readies the stub behind `r` to dump a core when killed (bit 0x80 of
/// its wait status): emptied but for the trampoline, RLIMIT_CORE raised to
/// its hard limit, its working directory a new directory (returned) where
/// a core_pattern that is a relative file name puts the core. A pattern
/// that pipes the core to a program or names an absolute path is refused:
/// the core would land where it cannot be removed.
fn prepare_core(r: &Remote, stage: &'static str) -> Result<std::path::PathBuf> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let pattern = pattern.trim();
    if pattern.is_empty() || pattern.starts_with('|') || pattern.starts_with('/') {
        return Err(EngineError::Refused {
            pid: r.vpid,
            what: format!(
                "it is a zombie killed with a core dump (wait status bit 0x80), which only a \
                 core written by the kernel gives back, and this host's core_pattern {pattern:?} \
                 is not a relative file name (set it to \"core\" for the restore)"
            ),
        });
    }
    let (_, hard) = process::get_rlimit(r.pid, libc::RLIMIT_CORE).restoring(r.pid, stage)?;
    process::set_rlimit(r.pid, libc::RLIMIT_CORE, hard, hard).restoring(r.pid, stage)?;
    r.call(
        "munmap",
        libc::SYS_munmap,
        [PAGE_SIZE, r.syscall_ip - PAGE_SIZE, 0, 0, 0, 0],
    )
    .restoring(r.pid, stage)?;
    let top = r.syscall_ip + TRAMPOLINE;
    r.call(
        "munmap",
        libc::SYS_munmap,
        [top, TASK_SIZE - top, 0, 0, 0, 0],
    )
    .restoring(r.pid, stage)?;
    let dir = std::env::temp_dir().join(format!("godwit-zombie-core-{}", r.pid));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| EngineError::Refused {
        pid: r.vpid,
        what: format!("creating {} for its core dump: {e}", dir.display()),
    })?;
    let path = r
        .put_cstr(0, &dir.to_string_lossy())
        .restoring(r.pid, stage)?;
    r.call("chdir", libc::SYS_chdir, [path, 0, 0, 0, 0, 0])
        .restoring(r.pid, stage)?;
    Ok(dir)
}

/// Rebuilds one process, except registers, groups and credentials.
fn build(
    r: &Remote,
    p: &Process,
    pages: &memory::Pages,
    plan: &files::FdPlan,
    shm: &memory::ShmPlan,
    progress: &dyn Progress,
    premapped: &[(u64, u64)],
) -> Result<Vec<i32>> {
    let t = Instant::now();
    let lap = |what: &str| tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "build: {what}");
    place_vdso(r, &p.vmas)?;
    lap("vdso");
    memory::restore(
        r,
        &p.vmas,
        pages,
        progress,
        &|id| shm.fd(id),
        &|node| plan.node_fd(p, node),
        premapped,
    )?;
    crate::resources::numa::restore_vmas(r, p)?;
    shm.close(r)?;
    lap("memory");
    attrs::restore_mm(r, p)?;
    plan.restore_cwd(r, p)?;
    plan.place(r, p)?;
    // After every descriptor of this process is placed (closing one would
    // drop its POSIX locks).
    locks::restore(r, p)?;
    lap("mm, cwd, fds");
    signals::restore_handlers(r, &p.sigactions, &p.itimers)?;
    lap("signal handlers");
    attrs::restore_misc(r, p)?;
    lap("umask, personality, rlimits");
    // The main thread (the stub) is one of the threads, unless it had
    // exited: then every thread is created, and the stub ends (phase 5).
    let mut tids = Vec::with_capacity(p.threads.len());
    for t in &p.threads {
        match t.tid == p.pid {
            true => tids.push(r.pid),
            false => tids.push(threads::create(r, t.tid)?),
        }
    }
    // Timers before the threads' queued signals: re-creating an overrun
    // takes the timer's own signal back with sigtimedwait.
    let host_of = |tid: i32| p.threads.iter().position(|t| t.tid == tid).map(|i| tids[i]);
    timers::restore(r, &p.posix_timers, &host_of)?;
    for (t, &host) in p.threads.iter().zip(&tids) {
        threads::setup(&r.for_thread(host), t)?;
    }
    signals::restore_pending(r, &p.shared_pending)?;
    lap("threads, timers, queued signals");
    Ok(tids)
}

/// Maps the trampoline in the first hole of the target's layout that is also
/// free in the stub.
fn place_trampoline(r0: &Remote, vmas: &[&Vma]) -> Result<u64> {
    let mut taken: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    taken.sort_unstable();
    let need = TRAMPOLINE + 2 * PAGE_SIZE;
    let mut holes = Vec::new();
    let mut prev = 0x1000_0000u64;
    for (s, e) in taken.iter().copied().chain([(TASK_SIZE, TASK_SIZE)]) {
        if s > prev && s - prev >= need {
            holes.push(prev + PAGE_SIZE);
            holes.push(s - TRAMPOLINE - PAGE_SIZE);
            let mid = (prev + (s - prev) / 2) & !(PAGE_SIZE - 1);
            if mid > prev && mid + TRAMPOLINE + PAGE_SIZE <= s {
                holes.push(mid);
            }
        }
        prev = prev.max(e);
    }
    for addr in holes {
        let out = r0
            .inj()
            .run(
                libc::SYS_mmap,
                [
                    addr,
                    TRAMPOLINE,
                    (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .restoring(r0.pid, "mapping the trampoline")?;
        if out.ret as u64 == addr {
            return Ok(addr);
        }
    }
    Err(EngineError::BadImage(
        "no room for the restore trampoline in the image's address space".into(),
    ))
}

fn place_vdso(r: &Remote, vmas: &[Vma]) -> Result<()> {
    let find = |k: VmaKind| vmas.iter().find(|v| v.kind == k as i32);
    let (Some(vvar), Some(vdso)) = (find(VmaKind::Vvar), find(VmaKind::Vdso)) else {
        return Ok(());
    };
    r.call(
        "arch_prctl(ARCH_MAP_VDSO_64)",
        libc::SYS_arch_prctl,
        [ARCH_MAP_VDSO_64, vvar.start, 0, 0, 0, 0],
    )
    .restoring(r.pid, "mapping the vDSO")?;
    let now = proc::smaps(r.pid).restoring(r.pid, "checking the vDSO")?;
    let same = |name: &str, v: Option<&Vma>| match (now.iter().find(|m| m.name == name), v) {
        (Some(m), Some(v)) => m.start == v.start && m.end == v.end,
        (None, None) => true,
        _ => false,
    };
    if !(same("[vdso]", Some(vdso))
        && same("[vvar]", Some(vvar))
        && same("[vvar_vclock]", find(VmaKind::VvarVclock)))
    {
        return Err(EngineError::BadImage(
            "this kernel's vDSO layout differs from the dumping host's; restore on a host with the same kernel".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::CpuFeatures;

    fn image(xcr0: u64, xsave_size: u32) -> Checkpoint {
        Checkpoint {
            arch: "x86_64".into(),
            cpu: Some(CpuFeatures { xcr0, xsave_size }),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_features_checked() {
        let (xcr0, size) = process::xsave_features();
        assert!(
            check_cpu(&image(xcr0, size)).is_ok(),
            "this CPU runs its own images"
        );
        // An image from a CPU with AVX-512 state (bits 5-7) this CPU lacks.
        let extra = !xcr0 & 0xe0;
        if extra != 0 {
            let e = check_cpu(&image(xcr0 | extra, size))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("lacks features") && e.contains("xsave features"),
                "{e}"
            );
        }
        let e = check_cpu(&image(xcr0, size + 4096))
            .unwrap_err()
            .to_string();
        assert!(e.contains("xsave area"), "{e}");
        let mut arm = image(xcr0, size);
        arm.arch = "aarch64".into();
        assert!(check_cpu(&arm).unwrap_err().to_string().contains("aarch64"));
    }
}

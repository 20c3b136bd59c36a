//! Dump: freeze → collect → write → end or release.

use crate::error::{DumpCtx, EngineError, Result};
use crate::freeze::Frozen;
use crate::remote::Remote;
use crate::resources::{attrs, files, memory, signals, threads};
use crate::schema::{Checkpoint, CpuFeatures, DumpStats, Process};
use crate::snapshot::Snapshot;
use crate::Progress;
use godwit_image::ImageWriter;
use godwit_sys::mem::{self, Range};
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
}

#[derive(Debug, Clone)]
pub struct DumpReport {
    pub pid: i32,
    pub threads: usize,
    pub vmas: usize,
    pub memory_bytes: u64,
    pub image_bytes: u64,
    /// How long the process was stopped.
    pub frozen: Duration,
    pub total: Duration,
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
    if pid == std::process::id() as i32 {
        return Err(EngineError::PermissionDenied {
            pid,
            detail: "godwit cannot dump itself".into(),
        });
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

/// Checkpoints process `pid` into `dir`. On any failure the process is left
/// running as it was and `dir` holds no image that restore would accept.
pub fn dump(pid: i32, dir: &Path, opts: &DumpOptions, progress: &dyn Progress) -> Result<DumpReport> {
    let t0 = Instant::now();
    precheck(pid)?;
    let mut writer = ImageWriter::create(dir)?.sync(!opts.no_sync);
    let frozen = Frozen::freeze(pid)?;
    let frozen_at = Instant::now();
    let maps = proc::smaps(pid).dumping(pid, "reading the memory map")?;
    let exec: Vec<Range> = maps
        .iter()
        .filter(|m| m.exec && m.read)
        .map(|m| Range {
            addr: m.start,
            len: m.end - m.start,
        })
        .collect();
    let syscall_ip = mem::find_syscall_insn(pid, &exec)
        .dumping(pid, "looking for a syscall instruction")?
        .ok_or_else(|| EngineError::Unsupported {
            pid,
            what: "an address space without any readable syscall instruction".into(),
        })?;
    for t in &frozen.threads {
        ptrace::set_sigmask(t.tid, !0).dumping(pid, "blocking signals")?;
    }
    let r0 = Remote {
        pid,
        tid: pid,
        syscall_ip,
        scratch: 0,
        scratch_len: 0,
    };
    let scratch = r0
        .call(
            "mmap",
            libc::SYS_mmap,
            [
                0,
                SCRATCH,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .dumping(pid, "mapping scratch memory")?;
    let r = Remote {
        scratch,
        scratch_len: SCRATCH,
        ..r0
    };
    let collected = collect(&r, &frozen);
    r0.call("munmap", libc::SYS_munmap, [scratch, SCRATCH, 0, 0, 0, 0])
        .dumping(pid, "unmapping scratch memory")?;
    let mut p = collected?;

    p.vmas = memory::plan(pid, &maps)?;
    let memory_bytes = memory::planned_bytes(&p.vmas);
    // --leave-running: snapshot the memory copy-on-write and let the process
    // run while its pages are copied.
    let mut frozen = Some(frozen);
    let mut frozen_time = None;
    let snapshot = if opts.leave_running && !opts.no_cow {
        Snapshot::arm(&r0, &p.vmas)?
    } else {
        None
    };
    if snapshot.is_some() {
        if let Some(f) = frozen.take() {
            f.release()?;
        }
        frozen_time = Some(frozen_at.elapsed());
    }
    progress.stage("dumping memory", memory_bytes);
    let mut pages = writer.page_file()?;
    memory::write_pages(pid, &p.vmas, &mut pages, progress, snapshot.as_ref())?;
    let info = pages.finish()?;
    p.page_file = info.name.clone();
    if let Some(s) = snapshot {
        let saved = s.finish()?;
        tracing::debug!(pid, saved, "pages written during the copy were saved first");
    }

    let (xcr0, xsave_size) = process::xsave_features();
    let threads = p.threads.len();
    let vmas = p.vmas.len();
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
        processes: vec![p],
        stats: Some(DumpStats {
            frozen_us: frozen_time.unwrap_or_else(|| frozen_at.elapsed()).as_micros() as u64,
            total_us: t0.elapsed().as_micros() as u64,
            pages_written: memory_bytes / godwit_sys::PAGE_SIZE,
        }),
    };
    let commit = writer.commit(&ck, vec![info])?;
    match frozen {
        Some(f) if opts.leave_running => f.release()?,
        Some(f) => f.kill()?,
        None => {}
    }
    let frozen_time = frozen_time.unwrap_or_else(|| frozen_at.elapsed());
    Ok(DumpReport {
        pid,
        threads,
        vmas,
        memory_bytes,
        image_bytes: commit.total_bytes,
        frozen: frozen_time,
        total: t0.elapsed(),
    })
}

fn collect(r: &Remote, frozen: &Frozen) -> Result<Process> {
    let mut p = Process::default();
    attrs::dump(r, &mut p)?;
    let sig = signals::dump(r)?;
    p.sigactions = sig.actions;
    p.shared_pending = sig.shared_pending;
    p.itimers = sig.itimers;
    for t in &frozen.threads {
        p.threads.push(threads::dump(r, t)?);
    }
    let f = files::dump(r.pid)?;
    p.fds = f.fds;
    p.pipes = f.pipes;
    p.cwd = f.cwd;
    Ok(p)
}

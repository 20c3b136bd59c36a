//! Restore: read → rebuild → resume.
//!
//! A stub process is created with the image's PID (clone3 with set_tid) and
//! re-parented to init. Godwit traces it, maps a one-page trampoline holding a
//! `syscall` instruction (plus scratch pages) in a hole of the target's address
//! space, unmaps everything else, and rebuilds the target by injected system
//! calls: vDSO, memory, memory layout, files, signal handlers, limits,
//! threads (clone3 with set_tid), per-thread state, credentials. Last the
//! trampoline goes, the saved registers are loaded, and the process runs.

use crate::error::{EngineError, RestoreCtx, Result};
use crate::freeze;
use crate::remote::Remote;
use crate::resources::{attrs, files, memory, signals, threads};
use crate::schema::{Checkpoint, Process, Vma, VmaKind};
use crate::Progress;
use godwit_sys::mem::{self, Range};
use godwit_sys::{proc, process, ptrace, PAGE_SIZE};
use std::path::Path;
use std::time::{Duration, Instant};

/// Size of the trampoline: one code page and scratch pages.
const TRAMPOLINE: u64 = 16 * PAGE_SIZE;
/// The top of the x86_64 user address space (4-level paging).
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const ARCH_MAP_VDSO_64: u64 = 0x2003;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore even if files changed size since the dump.
    pub allow_file_changes: bool,
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub pid: i32,
    pub threads: usize,
    pub memory_bytes: u64,
    pub total: Duration,
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

/// Kills the half-built process unless disarmed.
struct StubGuard {
    pid: i32,
    armed: bool,
}

impl Drop for StubGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = process::kill(self.pid, libc::SIGKILL);
        }
    }
}

/// Restores the image in `dir`; returns once the process runs.
pub fn restore(dir: &Path, opts: &RestoreOptions, progress: &dyn Progress) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let (ck, reader) = crate::load(dir)?;
    check_cpu(&ck)?;
    let p = match ck.processes.as_slice() {
        [p] => p,
        [] => return Err(EngineError::BadImage("the image holds no process".into())),
        _ => {
            return Err(EngineError::BadImage(
                "the image holds a process tree; this godwit restores single processes".into(),
            ))
        }
    };
    if p.threads.first().map(|t| t.tid) != Some(p.pid) {
        return Err(EngineError::BadImage("the first thread is not the main thread".into()));
    }
    attrs::check(p)?;
    memory::check_files(&p.vmas, opts.allow_file_changes)?;
    files::check(&p.fds, opts.allow_file_changes)?;
    for t in &p.threads {
        if proc::stat(t.tid).is_ok() {
            return Err(EngineError::PidTaken {
                pid: t.tid,
                holder: threads::holder_of(t.tid),
            });
        }
    }
    let pages = reader.map_page_file(&p.page_file)?;
    let memory_bytes = memory::planned_bytes(&p.vmas);
    // Checksums are verified while the process is being rebuilt; the result
    // is awaited before the process may run.
    let pid = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = &reader;
        s.spawn(move || {
            let _ = tx.send(reader.verify_pages());
        });
        resurrect(p, &pages, progress, || {
            match rx.recv() {
                Ok(r) => r.map_err(EngineError::from),
                Err(_) => Err(EngineError::BadImage("page verification did not finish".into())),
            }
        })
    })?;
    Ok(RestoreReport {
        pid,
        threads: p.threads.len(),
        memory_bytes,
        total: t0.elapsed(),
    })
}

/// Creates the process, rebuilds it, and (once `verified` says the image is
/// sound) lets it run. Returns its PID.
fn resurrect(
    p: &Process,
    pages: &[u8],
    progress: &dyn Progress,
    verified: impl FnOnce() -> Result<()>,
) -> Result<i32> {
    let pid = match process::spawn_stub(p.pid) {
        Ok(pid) => pid,
        Err(e) if e.errno() == Some(libc::EEXIST) => {
            return Err(EngineError::PidTaken {
                pid: p.pid,
                holder: threads::holder_of(p.pid),
            })
        }
        Err(e) => return Err(e).restoring(p.pid, "creating the process"),
    };
    let mut guard = StubGuard { pid, armed: true };
    ptrace::seize(pid).restoring(pid, "attaching to the new process")?;
    ptrace::interrupt(pid).restoring(pid, "attaching to the new process")?;
    if !freeze::wait_interrupt_stop(pid).restoring(pid, "attaching to the new process")? {
        return Err(EngineError::BadImage("the new process exited at once".into()));
    }
    ptrace::set_sigmask(pid, !0).restoring(pid, "blocking signals")?;

    let r = build(pid, p, &pages, progress)?;

    // Last injected call: drop the trampoline. The thread stops at syscall
    // exit, before fetching another instruction from it.
    r.call("munmap", libc::SYS_munmap, [r.syscall_ip, TRAMPOLINE, 0, 0, 0, 0])
        .restoring(pid, "removing the trampoline")?;
    for t in &p.threads {
        threads::load_cpu_state(pid, t)?;
    }
    verified()?;
    for t in p.threads.iter().rev() {
        ptrace::detach(t.tid).restoring(pid, "starting the process")?;
    }
    guard.armed = false;
    Ok(pid)
}

/// Rebuilds everything but the registers; returns the trampoline's Remote.
fn build(pid: i32, p: &Process, pages: &[u8], progress: &dyn Progress) -> Result<Remote> {
    // 1. Inject from a syscall instruction the stub inherited from us.
    let own = proc::smaps(pid).restoring(pid, "reading the new process's memory map")?;
    let exec: Vec<Range> = own
        .iter()
        .filter(|m| m.exec && m.read)
        .map(|m| Range {
            addr: m.start,
            len: m.end - m.start,
        })
        .collect();
    let ip = mem::find_syscall_insn(pid, &exec)
        .restoring(pid, "looking for a syscall instruction")?
        .ok_or_else(|| EngineError::BadImage("no syscall instruction in the stub".into()))?;
    let r0 = Remote {
        pid,
        tid: pid,
        syscall_ip: ip,
        scratch: 0,
        scratch_len: 0,
    };
    threads::drop_inherited_rseq(&r0)?;

    // 2. The trampoline, in a hole of the target's layout.
    let tramp = place_trampoline(&r0, &p.vmas)?;
    let code = [0x0f, 0x05, 0xcc, 0xcc];
    mem::write_ranges(pid, &code, &[Range { addr: tramp, len: 4 }])
        .restoring(pid, "writing the trampoline")?;
    let r = Remote {
        pid,
        tid: pid,
        syscall_ip: tramp,
        scratch: tramp + PAGE_SIZE,
        scratch_len: TRAMPOLINE - PAGE_SIZE,
    };

    // 3. Empty the stub: no fds, no memory but the trampoline.
    r.call("close_range", libc::SYS_close_range, [0, u32::MAX as u64, 0, 0, 0, 0])
        .restoring(pid, "closing inherited files")?;
    r.call("munmap", libc::SYS_munmap, [PAGE_SIZE, tramp - PAGE_SIZE, 0, 0, 0, 0])
        .restoring(pid, "emptying the address space")?;
    let top = tramp + TRAMPOLINE;
    r.call("munmap", libc::SYS_munmap, [top, TASK_SIZE - top, 0, 0, 0, 0])
        .restoring(pid, "emptying the address space")?;

    // 4. vDSO where the image had it.
    place_vdso(&r, &p.vmas)?;

    // 5. Memory, then the kernel's view of the layout.
    progress.stage("restoring memory", memory::planned_bytes(&p.vmas));
    memory::restore(&r, &p.vmas, pages, progress)?;
    attrs::restore_mm(&r, p)?;

    // 6. Files, signals, attributes.
    files::restore(&r, &p.cwd, &p.fds, &p.pipes)?;
    signals::restore_handlers(&r, &p.sigactions, &p.itimers)?;
    attrs::restore_misc(&r, p)?;

    // 7. Threads and their own state.
    for t in p.threads.iter().skip(1) {
        threads::create(&r, t.tid)?;
    }
    for t in &p.threads {
        threads::setup(&r.for_thread(t.tid), t)?;
    }
    signals::restore_pending(&r, &p.shared_pending)?;

    // 8. Credentials last: after them we may no longer be allowed the rest.
    for t in &p.threads {
        attrs::restore_creds(&r.for_thread(t.tid), p)?;
    }
    Ok(r)
}

/// Maps the trampoline in the first hole of the target's layout that is also
/// free in the stub.
fn place_trampoline(r0: &Remote, vmas: &[Vma]) -> Result<u64> {
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
    r.call("arch_prctl(ARCH_MAP_VDSO_64)", libc::SYS_arch_prctl, [ARCH_MAP_VDSO_64, vvar.start, 0, 0, 0, 0])
        .restoring(r.pid, "mapping the vDSO")?;
    let now = proc::smaps(r.pid).restoring(r.pid, "checking the vDSO")?;
    let same = |name: &str, v: Option<&Vma>| match (now.iter().find(|m| m.name == name), v) {
        (Some(m), Some(v)) => m.start == v.start && m.end == v.end,
        (None, None) => true,
        _ => false,
    };
    if !(same("[vdso]", Some(vdso)) && same("[vvar]", Some(vvar)) && same("[vvar_vclock]", find(VmaKind::VvarVclock))) {
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
        assert!(check_cpu(&image(xcr0, size)).is_ok(), "this CPU runs its own images");
        // An image from a CPU with AVX-512 state (bits 5-7) this CPU lacks.
        let extra = !xcr0 & 0xe0;
        if extra != 0 {
            let e = check_cpu(&image(xcr0 | extra, size)).unwrap_err().to_string();
            assert!(e.contains("lacks features") && e.contains("xsave features"), "{e}");
        }
        let e = check_cpu(&image(xcr0, size + 4096)).unwrap_err().to_string();
        assert!(e.contains("xsave area"), "{e}");
        let mut arm = image(xcr0, size);
        arm.arch = "aarch64".into();
        assert!(check_cpu(&arm).unwrap_err().to_string().contains("aarch64"));
    }
}

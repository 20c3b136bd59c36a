//! SysV shared memory (shmget/shmat).
//!
//! Dump: an attach shows in /proc/PID/maps as `/SYSV<key in hex> (deleted)`
//! with the segment's id as its inode. Each attach becomes VMAs of kind
//! SysvShm with the segment id and the shmat flags; each segment is saved
//! once per tree by `memory::collect_shmem` (key, id, size, mode, owner,
//! marked for removal or locked, from /proc/sysvipc/shm; its pages through
//! /proc/PID/map_files, which opens the shmem file behind the segment).
//!
//! Restore: godwit creates each segment itself, in its IPC namespace, with
//! the same key and the same id (by writing the id to
//! /proc/sys/kernel/shm_next_id first), sets owner and mode and fills it;
//! every process attaches it at its address by injected shmat; a segment
//! that was marked for removal is marked again once all are attached.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::memory::Pages;
use crate::schema::{Process, SysvShm, Vma, VmaKind};
use godwit_sys::proc::MapEntry;
use godwit_sys::sysv::{self, ShmEntry};
use godwit_sys::PAGE_SIZE;
use std::os::unix::fs::MetadataExt;

/// shmat flags kept for an attach.
pub const SHM_RDONLY: u32 = 0o10000;
pub const SHM_EXEC: u32 = 0o100000;

/// Whether a mapping is a SysV shared memory attach.
pub fn is_attach(e: &MapEntry) -> bool {
    e.shared
        && e.name
            .strip_prefix("/SYSV")
            .and_then(|r| r.strip_suffix(" (deleted)"))
            .is_some_and(|k| k.len() == 8 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Fills in the SysV fields of the VMA of attach mapping `e`.
pub fn describe_attach(pid: i32, e: &MapEntry, vma: &mut Vma) -> Result<()> {
    let shmid = i32::try_from(e.inode).map_err(|_| EngineError::Unsupported {
        pid,
        what: format!(
            "the SysV shared memory mapping {:#x} with id {}",
            e.start, e.inode
        ),
    })?;
    same_ipc_namespace(pid)?;
    vma.sysv_shmid = shmid;
    // An SHM_RDONLY attach may never become writable (no "mw").
    if !e.has_flag("mw") {
        vma.shmat_flags |= SHM_RDONLY;
    }
    if e.exec {
        vma.shmat_flags |= SHM_EXEC;
    }
    let path = format!(
        "{}/map_files/{:x}-{:x}",
        godwit_sys::proc::dir(pid),
        e.start,
        e.end
    );
    vma.shmem_size = std::fs::metadata(&path)
        .map_err(|err| EngineError::Unsupported {
            pid,
            what: format!(
                "SysV shared memory shmid {shmid} whose size cannot be read ({path}: {err})"
            ),
        })?
        .size();
    Ok(())
}

/// Segment ids name segments of godwit's IPC namespace only.
fn same_ipc_namespace(pid: i32) -> Result<()> {
    let theirs = godwit_sys::proc::link(&format!("{}/ns/ipc", godwit_sys::proc::dir(pid)))
        .dumping(pid, "reading the IPC namespace")?;
    let ours =
        godwit_sys::proc::link("/proc/self/ns/ipc").dumping(pid, "reading the IPC namespace")?;
    if theirs != ours {
        return Err(EngineError::Unsupported {
            pid,
            what: format!(
                "SysV shared memory of another IPC namespace ({}; godwit runs in {})",
                theirs.to_string_lossy(),
                ours.to_string_lossy()
            ),
        });
    }
    Ok(())
}

/// Checks that every attach of `vmas` (address order) covers its whole
/// segment: VMAs of one segment following each other from offset 0 to its
/// end. A segment part of which was unmapped is refused.
pub fn check_attaches(pid: i32, vmas: &[Vma]) -> Result<()> {
    // (shmid, first address, next address, next offset, segment bytes in pages)
    let mut open: Option<(i32, u64, u64, u64, u64)> = None;
    let partial = |shmid: i32, start: u64| {
        EngineError::Unsupported {
        pid,
        what: format!(
            "the SysV shared memory segment shmid {shmid} attached in part at {start:#x} (part of the attach was unmapped)"
        ),
    }
    };
    for v in vmas {
        let sysv = v.kind == VmaKind::SysvShm as i32;
        if let Some((id, first, next, off, total)) = open {
            if sysv && v.sysv_shmid == id && v.start == next && v.pgoff == off && off < total {
                open = Some((id, first, v.end, off + (v.end - v.start), total));
                continue;
            }
            if off != total {
                return Err(partial(id, first));
            }
            open = None;
        }
        if sysv {
            if v.pgoff != 0 {
                return Err(partial(v.sysv_shmid, v.start));
            }
            let total = v.shmem_size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            open = Some((v.sysv_shmid, v.start, v.end, v.end - v.start, total));
        }
    }
    match open {
        Some((id, first, _, off, total)) if off != total => Err(partial(id, first)),
        _ => Ok(()),
    }
}

/// The saved description of segment `shmid` (without its data).
pub fn describe_segment(pid: i32, shmid: i32, table: &[ShmEntry]) -> Result<SysvShm> {
    let e = table
        .iter()
        .find(|e| e.shmid == shmid)
        .ok_or_else(|| EngineError::Unsupported {
            pid,
            what: format!(
                "SysV shared memory shmid {shmid}, which /proc/sysvipc/shm does not list"
            ),
        })?;
    Ok(SysvShm {
        key: e.key,
        shmid,
        size: e.size,
        mode: e.mode & 0o777,
        uid: e.uid,
        gid: e.gid,
        removed: e.mode & sysv::SHM_DEST != 0,
        locked: e.mode & sysv::SHM_LOCKED != 0,
        data: Vec::new(),
        huge_page_size: 0,
    })
}

/// The segment of this host that keeps `s` from being recreated.
fn taken<'a>(table: &'a [ShmEntry], s: &SysvShm) -> Option<&'a ShmEntry> {
    table
        .iter()
        .find(|e| e.shmid == s.shmid || (s.key != 0 && e.key == s.key))
}

fn taken_error(s: &SysvShm, e: &ShmEntry) -> EngineError {
    EngineError::SysvShmTaken {
        key: s.key,
        shmid: s.shmid,
        holder: format!(
            "by the segment with shmid {}, key {:#010x}, {} bytes, attached {} times, created by PID {}",
            e.shmid, e.key, e.size, e.nattch, e.cpid
        ),
        holder_id: e.shmid,
    }
}

/// Refuses a restore whose SysV segments cannot have their key and id
/// (another segment of this host has them), or whose attaches name a
/// segment the image lacks.
pub fn check(procs: &[Process]) -> Result<()> {
    let segs: Vec<&SysvShm> = procs.iter().flat_map(|p| &p.sysv_shm).collect();
    for p in procs {
        for v in p.vmas.iter().filter(|v| v.kind == VmaKind::SysvShm as i32) {
            if !segs.iter().any(|s| s.shmid == v.sysv_shmid) {
                return Err(EngineError::BadImage(format!(
                    "process {} attaches SysV shmid {}, which the image does not hold",
                    p.pid, v.sysv_shmid
                )));
            }
        }
    }
    if segs.is_empty() {
        return Ok(());
    }
    let table = sysv::shm_table().restoring(procs[0].pid, "reading /proc/sysvipc/shm")?;
    for s in segs {
        if let Some(e) = taken(&table, s) {
            return Err(taken_error(s, e));
        }
    }
    Ok(())
}

/// The segments a restore created; removed again if the restore fails.
pub struct Segments {
    /// (shmid, to be marked for removal once attached)
    created: Vec<(i32, bool)>,
    armed: bool,
}

impl Segments {
    /// Creates every segment of the image with its key and id, owner and
    /// mode, and fills it from the page files (`pages`, one per process).
    pub fn create(procs: &[Process], pages: &[Pages]) -> Result<Segments> {
        let mut out = Segments {
            created: Vec::new(),
            armed: true,
        };
        for (i, p) in procs.iter().enumerate() {
            for s in &p.sysv_shm {
                out.create_one(p.pid, s, pages.get(i))?;
            }
        }
        Ok(out)
    }

    fn create_one(&mut self, pid: i32, s: &SysvShm, src: Option<&Pages>) -> Result<()> {
        let stage = "recreating SysV shared memory";
        let busy = |fallback: EngineError| {
            sysv::shm_table()
                .ok()
                .and_then(|t| taken(&t, s).map(|e| taken_error(s, e)))
                .unwrap_or(fallback)
        };
        let mut flags = libc::IPC_CREAT | libc::IPC_EXCL | (s.mode & 0o777) as i32;
        if s.huge_page_size != 0 {
            // The same page size; its huge pages are set aside by shmget
            // (memory::check_huge_pages made sure there are enough).
            if !s.huge_page_size.is_power_of_two() || s.huge_page_size < PAGE_SIZE {
                return Err(EngineError::BadImage(format!(
                    "SysV shmid {} has a page size of {} bytes",
                    s.shmid, s.huge_page_size
                )));
            }
            flags |= libc::SHM_HUGETLB
                | crate::resources::memory::huge_size_bits(s.huge_page_size) as i32;
        }
        let mut attempts = 0;
        let id = loop {
            let _lock = sysv::lock_next_shmid().restoring(pid, stage)?;
            sysv::set_next_shmid(s.shmid).restoring(pid, stage)?;
            let id = match sysv::shmget(s.key, s.size, flags) {
                Ok(id) => id,
                Err(e) => {
                    let _ = sysv::set_next_shmid(-1);
                    let exists = e.errno() == Some(libc::EEXIST);
                    let err = EngineError::Restore {
                        pid,
                        stage,
                        source: e,
                    };
                    return Err(if exists { busy(err) } else { err });
                }
            };
            if id == s.shmid {
                break id;
            }
            // The kernel gave another id: ours was taken, or a program
            // other than godwit set shm_next_id meanwhile (then try again).
            let _ = sysv::remove(id);
            attempts += 1;
            let err = EngineError::BadImage(format!(
                "SysV shmid {} could not be had (the kernel gave {id})",
                s.shmid
            ));
            let taken_now = sysv::shm_table()
                .map(|t| taken(&t, s).is_some())
                .unwrap_or(true);
            if taken_now || attempts == 3 {
                return Err(busy(err));
            }
        };
        tracing::debug!(
            key = s.key,
            shmid = id,
            size = s.size,
            "SysV segment created"
        );
        self.created.push((id, s.removed));
        sysv::set_owner_mode(id, s.uid, s.gid, s.mode).restoring(pid, stage)?;
        if !s.data.is_empty() {
            let at = sysv::Attached::new(id).restoring(pid, stage)?;
            for run in &s.data {
                let len = (run.nr_pages * PAGE_SIZE).min(s.size.saturating_sub(run.addr));
                let bytes = src.and_then(|p| p.get(run.offset, len)).ok_or_else(|| {
                    EngineError::BadImage(format!(
                        "SysV shmid {} data at {} is outside the page file",
                        s.shmid, run.offset
                    ))
                })?;
                at.write_at(run.addr, bytes).restoring(pid, stage)?;
            }
        }
        if s.locked {
            sysv::lock(id).restoring(pid, stage)?;
        }
        Ok(())
    }

    /// Once every process has attached its segments: marks those that were
    /// marked for removal again.
    pub fn mark_removed(&self, pid: i32) -> Result<()> {
        for (id, removed) in &self.created {
            if *removed {
                sysv::remove(*id).restoring(pid, "marking SysV shared memory for removal")?;
            }
        }
        Ok(())
    }

    /// The restore succeeded: the segments stay.
    pub fn keep(&mut self) {
        self.armed = false;
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        if self.armed {
            for (id, _) in &self.created {
                let _ = sysv::remove(*id);
            }
        }
    }
}

/// Attaches (first VMA of an attach) and protects one SysV VMA in the
/// process being restored.
pub fn attach(r: &Remote, v: &Vma) -> Result<()> {
    let pid = r.pid;
    let mut prot = libc::PROT_READ as u32;
    if v.shmat_flags & SHM_RDONLY == 0 {
        prot |= libc::PROT_WRITE as u32;
    }
    if v.shmat_flags & SHM_EXEC != 0 {
        prot |= libc::PROT_EXEC as u32;
    }
    if v.pgoff == 0 {
        let got = r
            .call(
                "shmat",
                libc::SYS_shmat,
                [
                    v.sysv_shmid as u64,
                    v.start,
                    (v.shmat_flags & (SHM_RDONLY | SHM_EXEC)) as u64,
                    0,
                    0,
                    0,
                ],
            )
            .restoring(pid, "attaching SysV shared memory")?;
        if got != v.start {
            return Err(EngineError::BadImage(format!(
                "SysV shmid {} attached at {got:#x}, not {:#x}",
                v.sysv_shmid, v.start
            )));
        }
    }
    if v.prot != prot {
        r.call(
            "mprotect",
            libc::SYS_mprotect,
            [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
        )
        .restoring(pid, "setting memory protections")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach_vma(shmid: i32, start: u64, end: u64, pgoff: u64, size: u64) -> Vma {
        Vma {
            start,
            end,
            pgoff,
            kind: VmaKind::SysvShm as i32,
            sysv_shmid: shmid,
            shmem_size: size,
            ..Default::default()
        }
    }

    #[test]
    fn attaches_must_be_whole() {
        let p = PAGE_SIZE;
        // One attach of 3 pages + 100 bytes (4 pages mapped), split in two.
        let whole = [
            attach_vma(7, 0x10000, 0x10000 + p, 0, 3 * p + 100),
            attach_vma(7, 0x10000 + p, 0x10000 + 4 * p, p, 3 * p + 100),
        ];
        assert!(check_attaches(1, &whole).is_ok());
        // The same segment attached twice, back to back.
        let twice = [
            attach_vma(7, 0x10000, 0x10000 + 4 * p, 0, 3 * p + 100),
            attach_vma(7, 0x10000 + 4 * p, 0x10000 + 8 * p, 0, 3 * p + 100),
        ];
        assert!(check_attaches(1, &twice).is_ok());
        // Its tail unmapped.
        let head = [attach_vma(7, 0x10000, 0x10000 + p, 0, 3 * p + 100)];
        let e = check_attaches(1, &head).unwrap_err().to_string();
        assert!(e.contains("shmid 7") && e.contains("in part"), "{e}");
        // Its head unmapped.
        let tail = [attach_vma(7, 0x10000 + p, 0x10000 + 4 * p, p, 3 * p + 100)];
        assert!(check_attaches(1, &tail).is_err());
        // A hole in the middle.
        let holed = [
            attach_vma(7, 0x10000, 0x10000 + p, 0, 3 * p + 100),
            attach_vma(7, 0x10000 + 2 * p, 0x10000 + 4 * p, 2 * p, 3 * p + 100),
        ];
        assert!(check_attaches(1, &holed).is_err());
    }

    #[test]
    fn attach_names() {
        let e = |name: &str, shared| MapEntry {
            name: name.into(),
            shared,
            ..Default::default()
        };
        assert!(is_attach(&e("/SYSV1234abcd (deleted)", true)));
        assert!(is_attach(&e("/SYSV00000000 (deleted)", true)));
        assert!(!is_attach(&e("/SYSV1234abcd (deleted)", false)));
        assert!(!is_attach(&e("/SYSV1234abcd", true)));
        assert!(!is_attach(&e("/SYSVnothex0 (deleted)", true)));
        assert!(!is_attach(&e("/memfd:x (deleted)", true)));
    }
}

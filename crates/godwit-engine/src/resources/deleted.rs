//! Objects removed while still in use: regular files, FIFOs, directories,
//! symlinks (O_PATH|O_NOFOLLOW) and stateless device nodes held open, and
//! working directories that were removed.
//!
//! Restore: each object (one per `Fd::node_id`, however many descriptions,
//! working directories and private mappings use it) is made again under a
//! temporary name next to where it was, with its mode, owner, group and
//! times (a regular file with its contents and holes); every holder opens
//! (or enters) it there, and the last one removes the name again, so that
//! it is deleted as it was (st_nlink 0, " (deleted)" in /proc links). A
//! restore that fails meanwhile removes the names it left.

use crate::error::{EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::memory::{write_extents, Pages};
use crate::schema::{Extent, Fd, FdKind, Process};
use godwit_sys::process;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

/// How a holder uses a recreated object.
#[derive(Debug, Clone, Copy)]
pub enum Use {
    /// openat with these flags; gives the new descriptor.
    Open(u32),
    /// chdir into it (a removed working directory).
    Chdir,
    /// chroot into it (a removed root directory).
    Chroot,
    /// Only its temporary path, given to `at_path` (an inotify watch added
    /// on it); gives what `at_path` gives.
    Path,
}

/// An object made again and not yet removed: its temporary name, how many
/// holders are still to use it, and whether it is a directory.
struct Made {
    tmp: String,
    left: usize,
    dir: bool,
}

/// The deleted objects of a tree being restored.
#[derive(Default)]
pub struct Nodes {
    /// Object key → how many holders use it.
    total: HashMap<u64, usize>,
    made: Mutex<HashMap<u64, Made>>,
}

/// The key of `f`'s object: its node id; in older images (no node id, only
/// regular files were kept) one object per description.
fn key(f: &Fd) -> u64 {
    if f.node_id != 0 {
        f.node_id
    } else {
        u64::MAX - f.file_id
    }
}

impl Nodes {
    /// `descs`: one `Fd` per description to be made again (each counts once
    /// however many fds share it).
    pub fn new<'a>(descs: impl Iterator<Item = &'a Fd>, procs: &[Process]) -> Nodes {
        let mut total: HashMap<u64, usize> = HashMap::new();
        for f in descs {
            if f.deleted {
                *total.entry(key(f)).or_default() += 1;
            }
            // An inotify watch on a deleted file is added on it while it
            // has its temporary name.
            let watches = f.anon.iter().flat_map(|a| &a.watches);
            for w in watches.filter(|w| w.node_id != 0) {
                *total.entry(w.node_id).or_default() += 1;
            }
        }
        for p in procs.iter().filter(|p| !p.zombie) {
            for d in p.cwd_deleted.iter().chain(&p.root_deleted) {
                *total.entry(key(d)).or_default() += 1;
            }
        }
        Nodes {
            total,
            made: Mutex::new(HashMap::new()),
        }
    }

    /// Makes `f`'s object in process `r` unless an earlier holder did, and
    /// uses it as `how` says (for a FIFO opened with flags, and for
    /// `Use::Path`, `at_path` is called with its temporary path instead:
    /// it opens the FIFO without blocking, or watches the object); removes
    /// its name once its last holder has it. Gives the new descriptor
    /// (0 for `Use::Chdir`). `pages`: the page file holding a big deleted
    /// file's data (`Fd::deleted_runs`).
    pub fn use_node(
        &self,
        r: &Remote,
        f: &Fd,
        how: Use,
        at_path: &dyn Fn(&str) -> Result<u64>,
        pages: Option<&Pages>,
    ) -> Result<u64> {
        let pid = r.pid;
        let stage = "recreating a deleted file";
        let k = key(f);
        let mut made = self.made.lock().expect("not poisoned");
        let m = match made.entry(k) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let tmp = format!("{}.godwit-{:x}", f.path, k);
                make(r, f, &tmp, pages)?;
                v.insert(Made {
                    tmp,
                    left: self.total.get(&k).copied().unwrap_or(1),
                    dir: f.kind == FdKind::Directory as i32,
                })
            }
        };
        let got = match how {
            Use::Open(_) if f.kind == FdKind::Fifo as i32 && f.flags & libc::O_PATH as u32 == 0 => {
                at_path(&m.tmp)?
            }
            Use::Path => at_path(&m.tmp)?,
            Use::Open(oflags) => {
                let a = r.put_cstr(0, &m.tmp).restoring(pid, stage)?;
                r.call(
                    "openat",
                    libc::SYS_openat,
                    [libc::AT_FDCWD as u64, a, oflags as u64, 0, 0, 0],
                )
                .map_err(|e| EngineError::FileChanged {
                    path: f.path.clone(),
                    detail: format!(
                        "fd {} (deleted) cannot be opened again at {} ({e})",
                        f.fd, m.tmp
                    ),
                })?
            }
            Use::Chdir | Use::Chroot => {
                let (name, nr, what) = match how {
                    Use::Chroot => ("chroot", libc::SYS_chroot, "root"),
                    _ => ("chdir", libc::SYS_chdir, "working"),
                };
                let a = r.put_cstr(0, &m.tmp).restoring(pid, stage)?;
                r.call(name, nr, [a, 0, 0, 0, 0, 0])
                    .map_err(|e| EngineError::FileChanged {
                        path: f.path.clone(),
                        detail: format!(
                            "the deleted {what} directory cannot be entered at {} ({e})",
                            m.tmp
                        ),
                    })?;
                0
            }
        };
        m.left = m.left.saturating_sub(1);
        if m.left == 0 {
            // Removed by godwit, whose paths these are (the process may
            // be chroot'ed already).
            let gone = if m.dir {
                std::fs::remove_dir(&m.tmp)
            } else {
                std::fs::remove_file(&m.tmp)
            };
            gone.map_err(|e| EngineError::Restore {
                pid,
                stage,
                source: godwit_sys::SysError::Proc {
                    path: m.tmp.clone(),
                    detail: format!("removing the name of the deleted {} again: {e}", f.path),
                },
            })?;
            made.remove(&k);
        }
        Ok(got)
    }
}

impl Drop for Nodes {
    /// A restore that failed part way: the temporary names left go.
    fn drop(&mut self) {
        let made = self.made.get_mut().map(std::mem::take).unwrap_or_default();
        for m in made.into_values() {
            let gone = if m.dir {
                std::fs::remove_dir(&m.tmp)
            } else {
                std::fs::remove_file(&m.tmp)
            };
            if let Err(e) = gone {
                tracing::warn!(path = %m.tmp, error = %e, "a deleted file's temporary name was left");
            }
        }
    }
}

/// The dev_t the mknod system call takes (the kernel's 32-bit encoding).
fn kernel_dev(rdev: u64) -> u64 {
    let (major, minor) = (libc::major(rdev) as u64, libc::minor(rdev) as u64);
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Refuses, before anything is created, a restore whose deleted objects
/// cannot be made again: the directory that held one is gone.
pub fn check(p: &Process) -> Result<()> {
    let all = p.fds.iter().filter(|f| f.deleted).map(|f| (Some(f.fd), f));
    let dirs = p.cwd_deleted.iter().map(|d| (None, d));
    let roots = p.root_deleted.iter().map(|d| (Some(-1), d));
    for (fd, f) in all.chain(dirs).chain(roots) {
        let dir = std::path::Path::new(&f.path)
            .parent()
            .unwrap_or(std::path::Path::new("/"));
        if !dir.is_dir() {
            let what = match fd {
                Some(-1) => "root directory (chroot)".to_string(),
                Some(fd) => format!("fd {fd}"),
                None => "working directory".to_string(),
            };
            return Err(EngineError::FileMissing {
                path: f.path.clone(),
                detail: format!(
                    "process {}'s {what} held it deleted; its directory {} is gone, so it cannot be made again next to where it was",
                    p.pid,
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// Makes `f`'s object at `tmp` in process `r`, with its mode, owner and
/// times (and a regular file's contents). On an error once it exists, its
/// name is removed again.
fn make(r: &Remote, f: &Fd, tmp: &str, pages: Option<&Pages>) -> Result<()> {
    let mut created = false;
    let res = make_at(r, f, tmp, pages, &mut created);
    if res.is_err() && created {
        let gone = if f.kind == FdKind::Directory as i32 {
            std::fs::remove_dir(tmp)
        } else {
            std::fs::remove_file(tmp)
        };
        if let Err(e) = gone {
            tracing::warn!(path = %tmp, error = %e, "a deleted file's temporary name was left");
        }
    }
    res
}

/// [`make`]; `created` is set once the object exists at `tmp`.
fn make_at(r: &Remote, f: &Fd, tmp: &str, pages: Option<&Pages>, created: &mut bool) -> Result<()> {
    let pid = r.pid;
    let stage = "recreating a deleted file";
    let kind = FdKind::try_from(f.kind).unwrap_or(FdKind::Regular);
    let a = r.put_cstr(0, tmp).restoring(pid, stage)?;
    let symlink = kind == FdKind::Regular
        && f.flags & libc::O_NOFOLLOW as u32 != 0
        && !f.link_target.is_empty();
    let cannot = |e: godwit_sys::SysError| EngineError::FileChanged {
        path: f.path.clone(),
        detail: format!(
            "fd {} (deleted) cannot be made again in its directory as {tmp} ({e})",
            f.fd
        ),
    };
    let mode = (f.mode & 0o7777) as u64;
    match kind {
        FdKind::Regular if symlink => {
            let t = r.put_cstr(4096, &f.link_target).restoring(pid, stage)?;
            r.call(
                "symlinkat",
                libc::SYS_symlinkat,
                [t, libc::AT_FDCWD as u64, a, 0, 0, 0],
            )
            .map_err(cannot)?;
        }
        FdKind::Regular => return make_file(r, f, tmp, pages, created),
        FdKind::Directory => {
            r.call(
                "mkdirat",
                libc::SYS_mkdirat,
                [libc::AT_FDCWD as u64, a, mode, 0, 0, 0],
            )
            .map_err(cannot)?;
        }
        FdKind::Fifo | FdKind::CharDevice => {
            let (ty, dev) = if kind == FdKind::Fifo {
                (libc::S_IFIFO, 0)
            } else {
                (libc::S_IFCHR, kernel_dev(f.rdev))
            };
            r.call(
                "mknodat",
                libc::SYS_mknodat,
                [libc::AT_FDCWD as u64, a, ty as u64 | mode, dev, 0, 0],
            )
            .map_err(cannot)?;
        }
        _ => {
            return Err(EngineError::BadImage(format!(
                "fd {} ({}) is marked deleted but is of a kind that is not made again",
                f.fd, f.path
            )))
        }
    }
    *created = true;
    // chown first (it clears set-id bits), then the mode (a symlink has
    // none of its own), the times last.
    let meta = |what: &str, e: godwit_sys::SysError| EngineError::Restore {
        pid,
        stage,
        source: godwit_sys::SysError::Proc {
            path: tmp.to_string(),
            detail: format!("fd {} (deleted {}): {what}: {e}", f.fd, f.path),
        },
    };
    r.call(
        "fchownat",
        libc::SYS_fchownat,
        [
            libc::AT_FDCWD as u64,
            a,
            f.uid as u64,
            f.gid as u64,
            libc::AT_SYMLINK_NOFOLLOW as u64,
            0,
        ],
    )
    .map_err(|e| meta("setting its owner", e))?;
    if !symlink {
        r.call(
            "fchmodat",
            libc::SYS_fchmodat,
            [libc::AT_FDCWD as u64, a, mode, 0, 0, 0],
        )
        .map_err(|e| meta("setting its mode", e))?;
    }
    if f.atime_ns != 0 || f.mtime_ns != 0 {
        let mut ts = Vec::with_capacity(32);
        for ns in [f.atime_ns, f.mtime_ns] {
            ts.extend_from_slice(&ns.div_euclid(1_000_000_000).to_le_bytes());
            ts.extend_from_slice(&ns.rem_euclid(1_000_000_000).to_le_bytes());
        }
        let t = r.put(4096, &ts).restoring(pid, stage)?;
        r.call(
            "utimensat",
            libc::SYS_utimensat,
            [
                libc::AT_FDCWD as u64,
                a,
                t,
                libc::AT_SYMLINK_NOFOLLOW as u64,
                0,
                0,
            ],
        )
        .map_err(|e| meta("setting its times", e))?;
    }
    Ok(())
}

/// Gives a recreated deleted file (`file`, at `tmp`) the owner, mode and
/// times it had: chown first (it clears set-id bits), then the mode, and
/// the times last (the rest changes only the ctime, which cannot be set).
fn set_file_meta(pid: i32, f: &Fd, file: &std::fs::File, tmp: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: &str, e: std::io::Error| EngineError::Restore {
        pid,
        stage: "recreating a deleted file",
        source: godwit_sys::SysError::Proc {
            path: tmp.to_string(),
            detail: format!("fd {} (deleted {}): {what}: {e}", f.fd, f.path),
        },
    };
    let md = file.metadata().map_err(|e| fail("stat", e))?;
    if (md.uid(), md.gid()) != (f.uid, f.gid) {
        std::os::unix::fs::fchown(file, Some(f.uid), Some(f.gid))
            .map_err(|e| fail(&format!("setting its owner {}:{}", f.uid, f.gid), e))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(f.mode))
        .map_err(|e| fail(&format!("setting its mode {:o}", f.mode), e))?;
    // Older images have no times.
    if f.atime_ns != 0 || f.mtime_ns != 0 {
        let times = std::fs::FileTimes::new()
            .set_accessed(crate::resources::files::system_time(f.atime_ns))
            .set_modified(crate::resources::files::system_time(f.mtime_ns));
        file.set_times(times)
            .map_err(|e| fail("setting its access and modification times", e))?;
    }
    Ok(())
}

/// Makes a deleted regular file again at `tmp` (in process `r`): its size
/// (all hole), then its data ranges, so that what was a hole stays one;
/// then its owner, mode and times.
fn make_file(
    r: &Remote,
    f: &Fd,
    tmp: &str,
    pages: Option<&Pages>,
    created: &mut bool,
) -> Result<()> {
    let pid = r.pid;
    let stage = "recreating a deleted file";
    let wfd = r
        .openat(
            tmp,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            f.mode,
        )
        .map_err(|e| EngineError::FileChanged {
            path: f.path.clone(),
            detail: format!(
                "fd {} (a deleted file) cannot be recreated in its directory ({e})",
                f.fd
            ),
        })?;
    *created = true;
    let pidfd = process::pidfd_open(pid).restoring(pid, stage)?;
    let ours = process::pidfd_getfd(&pidfd, wfd as i32).restoring(pid, stage);
    r.call("close", libc::SYS_close, [wfd, 0, 0, 0, 0, 0])
        .restoring(pid, stage)?;
    let file = std::fs::File::from(ours?);
    let write_err = |e: std::io::Error| EngineError::Restore {
        pid,
        stage,
        source: godwit_sys::SysError::Proc {
            path: tmp.to_string(),
            detail: format!("fd {} (deleted {}): {e}", f.fd, f.path),
        },
    };
    if f.deleted_in_pages {
        file.set_len(f.size).map_err(write_err)?;
        write_extents(pid, stage, &file, f.size, &f.deleted_runs, pages)?;
        return set_file_meta(pid, f, &file, tmp);
    }
    // Older images have no ranges: the data is the whole file.
    file.set_len(f.size.max(f.deleted_data.len() as u64))
        .map_err(write_err)?;
    let whole = [Extent {
        offset: 0,
        length: f.deleted_data.len() as u64,
    }];
    let extents = if f.extents.is_empty() {
        &whole[..]
    } else {
        &f.extents[..]
    };
    let mut at = 0usize;
    for x in extents {
        let end = at.saturating_add(x.length as usize);
        let part = f.deleted_data.get(at..end).ok_or_else(|| {
            EngineError::BadImage(format!(
                "fd {} (deleted {}): its data ranges go past its saved data",
                f.fd, f.path
            ))
        })?;
        std::os::unix::fs::FileExt::write_all_at(&file, part, x.offset).map_err(write_err)?;
        at = end;
    }
    set_file_meta(pid, f, &file, tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_in_the_kernel_encoding() {
        assert_eq!(kernel_dev(libc::makedev(1, 3)), 0x103);
        assert_eq!(
            kernel_dev(libc::makedev(136, 300)),
            (136 << 8) | 0x2c | (1 << 20)
        );
    }

    #[test]
    fn one_object_per_node_and_per_description_in_older_images() {
        let f = |node_id, file_id| Fd {
            deleted: true,
            node_id,
            file_id,
            ..Default::default()
        };
        let descs = [f(7, 1), f(7, 2), f(0, 3), f(0, 4)];
        let mut p = Process {
            cwd_deleted: Some(f(7, 0)),
            ..Default::default()
        };
        p.fds.push(f(7, 1));
        let n = Nodes::new(descs.iter(), &[p]);
        assert_eq!(n.total[&7], 3);
        assert_eq!(n.total[&key(&f(0, 3))], 1);
        assert_eq!(n.total.len(), 3);
    }
}

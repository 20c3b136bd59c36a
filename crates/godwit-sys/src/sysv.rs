//! SysV shared memory from the tracer's side: the table in
//! /proc/sysvipc/shm, creating a segment with a chosen id, setting its
//! owner and mode, removing and locking it, and attaching it in our own
//! address space to fill it.
//!
//! Everything here acts in the caller's IPC namespace.

use crate::{check, Result, SysError};

const SHM_TABLE: &str = "/proc/sysvipc/shm";
const SHM_NEXT_ID: &str = "/proc/sys/kernel/shm_next_id";

/// shm_perm.mode bit: the segment is marked for removal (IPC_RMID).
pub const SHM_DEST: u32 = 0o1000;
/// shm_perm.mode bit: the segment is locked in memory (SHM_LOCK).
pub const SHM_LOCKED: u32 = 0o2000;

/// One line of /proc/sysvipc/shm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShmEntry {
    pub key: i32,
    pub shmid: i32,
    /// shm_perm.mode: permission bits plus SHM_DEST / SHM_LOCKED.
    pub mode: u32,
    pub size: u64,
    pub cpid: i32,
    pub lpid: i32,
    pub nattch: u64,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
}

/// Parses the text of /proc/sysvipc/shm (a header line, then one line per
/// segment: key shmid perms size cpid lpid nattch uid gid cuid cgid ...).
pub fn parse_shm_table(text: &str) -> Result<Vec<ShmEntry>> {
    let bad = |line: &str| SysError::Proc {
        path: SHM_TABLE.into(),
        detail: format!("bad line {line:?}"),
    };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 11 {
            return Err(bad(line));
        }
        let num = |i: usize| f[i].parse::<i64>().map_err(|_| bad(line));
        out.push(ShmEntry {
            key: num(0)? as i32,
            shmid: num(1)? as i32,
            mode: u32::from_str_radix(f[2], 8).map_err(|_| bad(line))?,
            size: f[3].parse().map_err(|_| bad(line))?,
            cpid: num(4)? as i32,
            lpid: num(5)? as i32,
            nattch: f[6].parse().map_err(|_| bad(line))?,
            uid: num(7)? as u32,
            gid: num(8)? as u32,
            cuid: num(9)? as u32,
            cgid: num(10)? as u32,
        });
    }
    Ok(out)
}

/// The SysV shared memory segments of our IPC namespace.
pub fn shm_table() -> Result<Vec<ShmEntry>> {
    let text = std::fs::read_to_string(SHM_TABLE).map_err(|e| SysError::Proc {
        path: SHM_TABLE.into(),
        detail: e.to_string(),
    })?;
    parse_shm_table(&text)
}

/// Asks the kernel to give the next new segment the id `shmid`
/// (/proc/sys/kernel/shm_next_id; root only). The kernel uses the value
/// once, or the nearest free id after it if that one is taken.
pub fn set_next_shmid(shmid: i32) -> Result<()> {
    std::fs::write(SHM_NEXT_ID, shmid.to_string()).map_err(|e| SysError::Proc {
        path: SHM_NEXT_ID.into(),
        detail: e.to_string(),
    })
}

/// An exclusive lock (flock) on /proc/sys/kernel/shm_next_id, held from
/// setting it to creating the segment, so that godwit processes restoring
/// at the same time do not take each other's ids. Released on drop.
pub struct NextIdLock(#[allow(dead_code)] std::fs::File);

pub fn lock_next_shmid() -> Result<NextIdLock> {
    let f = std::fs::File::open(SHM_NEXT_ID).map_err(|e| SysError::Proc {
        path: SHM_NEXT_ID.into(),
        detail: e.to_string(),
    })?;
    // SAFETY: plain integer flock on a descriptor we hold.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) };
    check(r as i64, "flock", SHM_NEXT_ID)?;
    Ok(NextIdLock(f))
}

/// shmget(key, size, flags): the id of the segment.
pub fn shmget(key: i32, size: u64, flags: i32) -> Result<i32> {
    // SAFETY: plain integer syscall.
    let r = unsafe { libc::shmget(key, size as usize, flags) };
    check(r as i64, "shmget", format!("key {key:#x}")).map(|id| id as i32)
}

fn stat(shmid: i32) -> Result<libc::shmid_ds> {
    // SAFETY: shmid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes one shmid_ds to the valid out-pointer.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) };
    check(r as i64, "shmctl(IPC_STAT)", format!("shmid {shmid}"))?;
    Ok(ds)
}

/// Sets the owner and the permission bits of segment `shmid` (IPC_SET).
pub fn set_owner_mode(shmid: i32, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let mut ds = stat(shmid)?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads one shmid_ds from the valid pointer.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut ds) };
    check(r as i64, "shmctl(IPC_SET)", format!("shmid {shmid}")).map(drop)
}

/// Marks segment `shmid` for removal (IPC_RMID): it goes once no process
/// has it attached.
pub fn remove(shmid: i32) -> Result<()> {
    // SAFETY: IPC_RMID does not use the buffer pointer.
    let r = unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    check(r as i64, "shmctl(IPC_RMID)", format!("shmid {shmid}")).map(drop)
}

/// Locks segment `shmid` in memory (SHM_LOCK).
pub fn lock(shmid: i32) -> Result<()> {
    // SAFETY: SHM_LOCK does not use the buffer pointer.
    let r = unsafe { libc::shmctl(shmid, libc::SHM_LOCK, std::ptr::null_mut()) };
    check(r as i64, "shmctl(SHM_LOCK)", format!("shmid {shmid}")).map(drop)
}

/// A segment attached read-write in our own address space; detached on drop.
pub struct Attached {
    shmid: i32,
    addr: *mut u8,
    len: usize,
}

impl Attached {
    /// Attaches segment `shmid` (its whole size) at an address the kernel picks.
    pub fn new(shmid: i32) -> Result<Attached> {
        let len = stat(shmid)?.shm_segsz;
        // SAFETY: shmat at an address the kernel chooses; the mapping is
        // new and only reached through this value until it is dropped.
        let p = unsafe { libc::shmat(shmid, std::ptr::null(), 0) };
        if p as isize == -1 {
            return Err(SysError::call("shmat", format!("shmid {shmid}")));
        }
        Ok(Attached {
            shmid,
            addr: p as *mut u8,
            len,
        })
    }

    /// Copies `data` into the segment at byte `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset.checked_add(data.len() as u64);
        if end.is_none_or(|e| e > self.len as u64) {
            return Err(SysError::call_errno(
                "writing a SysV segment",
                format!(
                    "shmid {}: {} bytes at {offset} (segment of {})",
                    self.shmid,
                    data.len(),
                    self.len
                ),
                libc::EINVAL,
            ));
        }
        // SAFETY: [offset, offset + len) lies inside the attached segment
        // (checked above), which `data` cannot overlap (it is ours alone
        // until dropped); raw copies tolerate other attachers writing.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(offset as usize), data.len())
        };
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: detaches the segment attached in `new`; no reference into
        // it outlives `self`.
        unsafe { libc::shmdt(self.addr as *const libc::c_void) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_table() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
 1624258148          3   640                 12388 13924 13926      3  1000   100     0     0 1795333674          0 1795333674                  8192                     0\n\
         0          4  1600                  8192 13924 13924      2     0     0     0     0 1795333674          0 1795333674                  4096                     0\n";
        let t = parse_shm_table(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].key, 1624258148);
        assert_eq!(t[0].shmid, 3);
        assert_eq!(t[0].mode, 0o640);
        assert_eq!(t[0].size, 12388);
        assert_eq!((t[0].cpid, t[0].lpid, t[0].nattch), (13924, 13926, 3));
        assert_eq!((t[0].uid, t[0].gid), (1000, 100));
        assert_eq!(t[1].mode & SHM_DEST, SHM_DEST);
        // A negative key (bit 31 set) is printed as a negative number.
        let neg = "h\n -559038737 5 600 4096 1 1 1 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_shm_table(neg).unwrap()[0].key, 0xdeadbeef_u32 as i32);
        assert!(parse_shm_table("h\n 1 2 3\n").is_err());
    }
}

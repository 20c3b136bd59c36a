//! Reading and writing another process's memory, and its page map.

use crate::{Result, SysError, PAGE_SIZE};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// At most this many iovecs go into one process_vm_* call (the kernel's IOV_MAX).
const IOV_MAX: usize = 1024;

/// One contiguous remote range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub addr: u64,
    pub len: u64,
}

fn vm_call(pid: i32, local: &mut [u8], remote: &[Range], write: bool) -> Result<usize> {
    // A process whose leader has exited is reached through a live thread.
    let task = crate::proc::via(pid);
    let mut done = 0usize;
    let mut chunk_start = 0usize;
    let mut offset = 0usize;
    while chunk_start < remote.len() {
        let chunk = &remote[chunk_start..remote.len().min(chunk_start + IOV_MAX)];
        let rv: Vec<libc::iovec> = chunk
            .iter()
            .map(|r| libc::iovec {
                iov_base: r.addr as *mut libc::c_void,
                iov_len: r.len as usize,
            })
            .collect();
        let want: usize = chunk.iter().map(|r| r.len as usize).sum();
        if offset + want > local.len() {
            return Err(SysError::Proc {
                path: format!("process {pid} memory"),
                detail: "local buffer smaller than remote ranges".into(),
            });
        }
        let lv = libc::iovec {
            iov_base: local[offset..].as_mut_ptr() as *mut libc::c_void,
            iov_len: want,
        };
        // SAFETY: `lv` points into `local`, which is live and at least `want`
        // bytes long past `offset` (checked above); the remote iovecs are only
        // interpreted by the kernel in the address space of `pid`.
        let n = unsafe {
            if write {
                libc::process_vm_writev(task, &lv, 1, rv.as_ptr(), rv.len() as _, 0)
            } else {
                libc::process_vm_readv(task, &lv, 1, rv.as_ptr(), rv.len() as _, 0)
            }
        };
        if n < 0 {
            return Err(SysError::call(
                if write {
                    "process_vm_writev"
                } else {
                    "process_vm_readv"
                },
                format!("process {pid}"),
            ));
        }
        let n = n as usize;
        done += n;
        offset += n;
        if n < want {
            // Partial transfer: the kernel stopped at a range it could not access.
            return Ok(done);
        }
        chunk_start += chunk.len();
    }
    Ok(done)
}

/// Copies the remote `ranges` of `pid`, in order, into `local`. Returns the
/// number of bytes copied; fewer than asked means a range was not accessible.
pub fn read_ranges(pid: i32, local: &mut [u8], ranges: &[Range]) -> Result<usize> {
    vm_call(pid, local, ranges, false)
}

/// Copies `local` into the remote `ranges` of `pid`, in order.
pub fn write_ranges(pid: i32, local: &[u8], ranges: &[Range]) -> Result<usize> {
    // process_vm_writev only reads from the local buffer; the cast to a mutable
    // slice type is never used to write.
    let ptr = local.as_ptr() as *mut u8;
    // SAFETY: the slice is only read by process_vm_writev (see above); its
    // length and lifetime are those of `local`.
    let local_mut = unsafe { std::slice::from_raw_parts_mut(ptr, local.len()) };
    vm_call(pid, local_mut, ranges, true)
}

/// /proc/PID/mem, which can also read and write pages the process itself may
/// not (PROT_NONE, read-only): used where process_vm_* cannot reach.
pub struct ProcMem {
    file: File,
    pid: i32,
}

impl ProcMem {
    pub fn open(pid: i32, write: bool) -> Result<Self> {
        let path = format!("{}/mem", crate::proc::dir(pid));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(|e| SysError::Proc {
                path,
                detail: e.to_string(),
            })?;
        Ok(ProcMem { file, pid })
    }

    pub fn read_exact_at(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, addr)
            .map_err(|e| SysError::Call {
                call: "pread(/proc/PID/mem)",
                target: format!("process {} at {addr:#x}", self.pid),
                source: e,
            })
    }

    pub fn write_all_at(&self, addr: u64, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, addr)
            .map_err(|e| SysError::Call {
                call: "pwrite(/proc/PID/mem)",
                target: format!("process {} at {addr:#x}", self.pid),
                source: e,
            })
    }
}

/// Bits of a /proc/PID/pagemap entry.
pub mod pm {
    pub const PRESENT: u64 = 1 << 63;
    pub const SWAPPED: u64 = 1 << 62;
    pub const FILE_OR_SHARED: u64 = 1 << 61;
    pub const EXCLUSIVE: u64 = 1 << 56;
    pub const SOFT_DIRTY: u64 = 1 << 55;
}

/// /proc/PID/pagemap: one 64-bit entry per virtual page.
pub struct Pagemap {
    file: File,
    pid: i32,
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self> {
        let path = format!("{}/pagemap", crate::proc::dir(pid));
        let file = File::open(&path).map_err(|e| SysError::Proc {
            path,
            detail: e.to_string(),
        })?;
        Ok(Pagemap { file, pid })
    }

    /// Entries for the pages of `[start, end)`, appended to `out`.
    pub fn read(&self, start: u64, end: u64, out: &mut Vec<u64>) -> Result<()> {
        let n = ((end - start) / PAGE_SIZE) as usize;
        let base = out.len();
        out.resize(base + n, 0);
        let bytes = &mut out[base..];
        // SAFETY: a u64 slice viewed as bytes: same memory, u8 has no alignment
        // or validity requirements, length scaled by 8.
        let raw = unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut u8, n * 8) };
        self.file
            .read_exact_at(raw, start / PAGE_SIZE * 8)
            .map_err(|e| SysError::Call {
                call: "pread(/proc/PID/pagemap)",
                target: format!("process {} range {start:#x}-{end:#x}", self.pid),
                source: e,
            })
    }
}

/// Page categories of the PAGEMAP_SCAN ioctl (`PAGE_IS_*`).
pub mod scan {
    /// Not write-protected by userfaultfd (written since it was protected,
    /// or never protected).
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    /// Swapped out, or a userfaultfd marker on a page never populated.
    pub const SWAPPED: u64 = 1 << 4;
    /// Write-protect again the pages reported as written (atomically with
    /// the report): `PM_SCAN_WP_MATCHING`.
    pub const WP_MATCHING: u64 = 1 << 0;
}

/// Pages `[start, end)` that share the same `categories` (of those asked for).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

impl PageRegion {
    /// The region as a range of addresses.
    pub fn range(&self) -> Range {
        Range {
            addr: self.start,
            len: self.end - self.start,
        }
    }
}

/// What a [`Pagemap::scan`] reports: pages having all of `all_of`, none of
/// `none_of` and at least one of `any_of`, with the `report` categories of
/// each region. The walk is cheapest when few pages match: the kernel
/// spends its time on the pages it reports.
#[derive(Debug, Clone, Copy)]
pub struct ScanQuery {
    /// `scan::WP_MATCHING` or 0.
    pub flags: u64,
    /// Every one of these categories is required (0: none).
    pub all_of: u64,
    /// None of these categories may be there (0: no such condition).
    pub none_of: u64,
    /// At least one of these (0: no such condition).
    pub any_of: u64,
    pub report: u64,
}

/// `struct pm_scan_arg` (linux/fs.h, 6.7+).
#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

impl Pagemap {
    /// PAGEMAP_SCAN of `[start, end)`: the regions matching `q`, in address
    /// order, appended to `out` (adjacent regions with the same categories
    /// merged). One page-table walk, much cheaper than reading an entry per
    /// page; with `scan::WP_MATCHING` the written pages reported are
    /// write-protected again in the same walk.
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        q: &ScanQuery,
        out: &mut Vec<PageRegion>,
    ) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut vec = vec![PageRegion::default(); 4096];
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: q.flags,
                start: at,
                end,
                walk_end: 0,
                vec: vec.as_mut_ptr() as u64,
                vec_len: vec.len() as u64,
                max_pages: 0,
                category_inverted: q.none_of,
                category_mask: q.all_of | q.none_of,
                category_anyof_mask: q.any_of,
                return_mask: q.report,
            };
            // SAFETY: `arg` is a live pm_scan_arg whose `vec` points to
            // `vec`, a live array of `vec_len` page_region structs (repr(C),
            // three u64) that the kernel fills; nothing else is written.
            let n = unsafe { libc::ioctl(self.file.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(SysError::call(
                    "ioctl(PAGEMAP_SCAN)",
                    format!("process {} range {at:#x}-{end:#x}", self.pid),
                ));
            }
            for r in &vec[..(n as usize).min(vec.len())] {
                match out.last_mut() {
                    Some(l) if l.end == r.start && l.categories == r.categories => l.end = r.end,
                    _ => out.push(*r),
                }
            }
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(())
    }
}

/// Finds the address of a `syscall` instruction (0f 05) in one of the given
/// readable executable ranges of `pid`.
pub fn find_syscall_insn(pid: i32, exec_ranges: &[Range]) -> Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    for r in exec_ranges {
        let mut addr = r.addr;
        let end = r.addr + r.len;
        while addr < end {
            let len = (end - addr).min(buf.len() as u64);
            let n = read_ranges(pid, &mut buf[..len as usize], &[Range { addr, len }])?;
            if let Some(i) = buf[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(Some(addr + i as u64));
            }
            if n == 0 {
                break;
            }
            // Overlap by one byte so an instruction split across chunks is found.
            addr += (n as u64).max(2) - 1;
        }
    }
    Ok(None)
}

/// Finds a `syscall` instruction in the readable executable mappings of `pid`
/// listed in `maps`.
pub fn find_syscall_in_maps(pid: i32, maps: &[crate::proc::MapEntry]) -> Result<Option<u64>> {
    let exec: Vec<Range> = maps
        .iter()
        .filter(|m| m.exec && m.read)
        .map(|m| Range {
            addr: m.start,
            len: m.end - m.start,
        })
        .collect();
    find_syscall_insn(pid, &exec)
}

/// Writes `data` at `offset` of `file` through a shared mapping of it, for
/// files that have no write(2), such as those on hugetlbfs. `align` is the
/// file's page size: `offset` must be a multiple of it, and the mapping
/// covers `data` rounded up to it (a hugetlb file is mapped only in whole
/// huge pages). The pages written are allocated in the file.
pub fn write_through_mapping(file: &File, offset: u64, data: &[u8], align: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let what = || "a file written through a mapping".to_string();
    if align == 0 || !align.is_power_of_two() || !offset.is_multiple_of(align) {
        return Err(SysError::call_errno("mmap", what(), libc::EINVAL));
    }
    if data.is_empty() {
        return Ok(());
    }
    let size = file
        .metadata()
        .map_err(|e| SysError::Proc {
            path: what(),
            detail: e.to_string(),
        })?
        .len();
    if offset + data.len() as u64 > size {
        // A store past the end of the file would raise SIGBUS.
        return Err(SysError::call_errno("mmap", what(), libc::EINVAL));
    }
    let len = (data.len() as u64).div_ceil(align) * align;
    // The pages first: a store into a page the kernel cannot allocate
    // (no free huge page) would raise SIGBUS, where fallocate fails.
    // SAFETY: plain call on a descriptor we hold.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    crate::check(r as libc::c_long, "fallocate", what())?;
    // SAFETY: a fresh shared mapping chosen by the kernel (no fixed
    // address), so it replaces nothing of ours.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(SysError::call("mmap", what()));
    }
    // SAFETY: `at` is a writable mapping of `len` >= data.len() bytes just
    // made, which nothing else references; `data` does not overlap it.
    // Every byte written lies within the file (checked above) and in
    // pages fallocate allocated, so no store faults with SIGBUS.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), at.cast::<u8>(), data.len()) };
    // SAFETY: unmaps exactly the mapping made above.
    let r = unsafe { libc::munmap(at, len as usize) };
    crate::check(r as libc::c_long, "munmap", what())?;
    Ok(())
}

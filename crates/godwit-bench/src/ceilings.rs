//! What this machine can do at best for each step a dump or restore takes,
//! measured with the same number of bytes in the same run.

use crate::region::Region;
use crate::target::Target;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Moves `len` bytes between `local` and `remote` of `pid` with single-iovec
/// process_vm_readv / writev calls, continuing after partial transfers.
pub fn vm_rw(pid: i32, local: &mut [u8], remote: u64, write: bool) -> Result<()> {
    let mut done = 0usize;
    while done < local.len() {
        let lv = libc::iovec {
            iov_base: local[done..].as_mut_ptr().cast(),
            iov_len: local.len() - done,
        };
        let rv = libc::iovec {
            iov_base: (remote + done as u64) as *mut libc::c_void,
            iov_len: local.len() - done,
        };
        // SAFETY: `lv` covers the live tail of `local`; the remote iovec is
        // only interpreted by the kernel in the address space of `pid`.
        let n = unsafe {
            if write {
                libc::process_vm_writev(pid, &lv, 1, &rv, 1, 0)
            } else {
                libc::process_vm_readv(pid, &lv, 1, &rv, 1, 0)
            }
        };
        if n <= 0 {
            bail!(
                "process_vm_{}v of process {pid}: {}",
                if write { "write" } else { "read" },
                std::io::Error::last_os_error()
            );
        }
        done += n as usize;
    }
    Ok(())
}

/// Best (highest) GiB/s seen over the samples.
fn best(bytes: u64, samples: &[Duration]) -> f64 {
    samples
        .iter()
        .map(|d| crate::gib_s(bytes, *d))
        .fold(0.0, f64::max)
}

fn timed(reps: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Vec<Duration>> {
    (0..reps).map(|_| f()).collect()
}

/// Bandwidth ceilings for `bytes`, best of `reps`, in GiB/s.
#[derive(Debug, Clone, Default)]
pub struct Ceilings {
    pub memcpy: f64,
    pub process_vm_readv: f64,
    pub tmpfs_write: f64,
    /// Two threads, each writing half into a file of its own in 1 MiB
    /// writes, as the dump's two page writers do (GiB/s of both together).
    pub tmpfs_write_2t: f64,
    /// On a tmpfs mounted huge=within_size.
    pub tmpfs_write_huge: f64,
    /// As `tmpfs_write_2t`, on the huge=within_size tmpfs.
    pub tmpfs_write_huge_2t: f64,
    pub first_touch: f64,
    pub first_touch_thp: f64,
    pub process_vm_writev_fresh: f64,
    pub process_vm_writev_fresh_thp: f64,
    pub xxh3: f64,
}

impl Ceilings {
    /// The least time, ms, two threads need to copy `bytes` of memory into
    /// page files as the dump does, from these ceilings: each byte is read
    /// out of the process, hashed and written (`write_2t`: the two-thread
    /// write ceiling of the file system), reads and hashes split evenly over
    /// the two. An estimate (perfect scaling), not a measurement.
    pub fn copy_floor_ms(&self, bytes: u64, write_2t: f64) -> f64 {
        if write_2t <= 0.0 || self.process_vm_readv <= 0.0 || self.xxh3 <= 0.0 {
            return 0.0;
        }
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let s = gib / write_2t + gib / (2.0 * self.process_vm_readv) + gib / (2.0 * self.xxh3);
        (s * 1e4).round() / 10.0
    }

    pub fn to_json(&self) -> serde_json::Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        serde_json::json!({
            "memcpy_gib_s": r(self.memcpy),
            "process_vm_readv_gib_s": r(self.process_vm_readv),
            "tmpfs_write_gib_s": r(self.tmpfs_write),
            "tmpfs_write_2_threads_gib_s": r(self.tmpfs_write_2t),
            "tmpfs_huge_write_gib_s": r(self.tmpfs_write_huge),
            "tmpfs_huge_write_2_threads_gib_s": r(self.tmpfs_write_huge_2t),
            "first_touch_gib_s": r(self.first_touch),
            "first_touch_thp_gib_s": r(self.first_touch_thp),
            "process_vm_writev_fresh_gib_s": r(self.process_vm_writev_fresh),
            "process_vm_writev_fresh_thp_gib_s": r(self.process_vm_writev_fresh_thp),
            "xxh3_gib_s": r(self.xxh3),
        })
    }
}

/// Measures every ceiling but process_vm_readv (see [`readv_from`]).
/// `dir` is on tmpfs; `bin` is the target program (for the sink processes).
pub fn measure(dir: &Path, bin: &Path, mib: u64, reps: usize) -> Result<Ceilings> {
    let bytes = mib << 20;
    let len = bytes as usize;
    let mut c = Ceilings::default();

    {
        // memcpy between two pre-faulted buffers.
        let src = Region::prefaulted(len, 0x5a)?;
        let mut dst = Region::prefaulted(len, 0xa5)?;
        let s = timed(reps, || {
            let t = Instant::now();
            dst.as_mut_slice().copy_from_slice(src.as_slice());
            Ok(t.elapsed())
        })?;
        std::hint::black_box(dst.as_slice()[len - 1]);
        c.memcpy = best(bytes, &s);

        // xxh3-64 of the whole buffer, as the page file writer and verify_pages do.
        let s = timed(reps, || {
            let t = Instant::now();
            std::hint::black_box(godwit_image::hash::xxh3_64(src.as_slice()));
            Ok(t.elapsed())
        })?;
        c.xxh3 = best(bytes, &s);

        // tmpfs: write the same bytes to a new file, on /dev/shm and on a
        // tmpfs mounted huge=within_size.
        let write_file = |path: &Path| {
            timed(reps, || {
                let _ = std::fs::remove_file(path);
                let t = Instant::now();
                let mut f = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                f.write_all(src.as_slice())
                    .with_context(|| format!("writing {}", path.display()))?;
                drop(f);
                let d = t.elapsed();
                std::fs::remove_file(path)?;
                Ok(d)
            })
        };
        // The same with two threads, each writing its half in 1 MiB
        // writes (as the dump's two page writers do).
        let write_halves = |dir: &Path| {
            let halves: Vec<&[u8]> = src.as_slice().chunks(len.div_ceil(2)).collect();
            timed(reps, || {
                let paths: Vec<_> = (0..halves.len())
                    .map(|k| dir.join(format!("tmpfs-ceiling-{k}")))
                    .collect();
                let t = Instant::now();
                std::thread::scope(|s| -> Result<()> {
                    let workers: Vec<_> = halves
                        .iter()
                        .zip(&paths)
                        .map(|(half, path)| {
                            s.spawn(move || -> Result<()> {
                                let mut f = std::fs::File::create(path)
                                    .with_context(|| format!("creating {}", path.display()))?;
                                for chunk in half.chunks(1 << 20) {
                                    f.write_all(chunk)
                                        .with_context(|| format!("writing {}", path.display()))?;
                                }
                                Ok(())
                            })
                        })
                        .collect();
                    for w in workers {
                        w.join()
                            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
                    }
                    Ok(())
                })?;
                let d = t.elapsed();
                for p in &paths {
                    std::fs::remove_file(p)?;
                }
                Ok(d)
            })
        };
        c.tmpfs_write = best(bytes, &write_file(&dir.join("tmpfs-ceiling"))?);
        c.tmpfs_write_2t = best(bytes, &write_halves(dir)?);
        if let Ok(h) = crate::HugeTmpfs::mount(&dir.join("huge-ceiling"), mib + 64) {
            c.tmpfs_write_huge = best(bytes, &write_file(&h.0.join("tmpfs-ceiling"))?);
            c.tmpfs_write_huge_2t = best(bytes, &write_halves(&h.0)?);
        }

        // process_vm_writev into never-touched memory of another process:
        // what restore's fill does, faulting pages in as it goes.
        let mut local = dst;
        for thp in [false, true] {
            let s = timed(reps, || {
                let sink = Target::sink(bin, dir, mib, thp, "sink")?;
                let t = Instant::now();
                vm_rw(sink.pid, local.as_mut_slice(), sink.addr, true)?;
                Ok(t.elapsed())
            })?;
            if thp {
                c.process_vm_writev_fresh_thp = best(bytes, &s);
            } else {
                c.process_vm_writev_fresh = best(bytes, &s);
            }
        }
    }

    // First touch: write every byte of fresh anonymous memory.
    for thp in [false, true] {
        let s = timed(reps, || {
            let mut r = Region::fresh(len)?;
            if thp {
                r.advise_huge()?;
            }
            let t = Instant::now();
            r.as_mut_slice().fill(0x5a);
            let d = t.elapsed();
            std::hint::black_box(r.as_slice()[len - 1]);
            Ok(d)
        })?;
        if thp {
            c.first_touch_thp = best(bytes, &s);
        } else {
            c.first_touch = best(bytes, &s);
        }
    }
    Ok(c)
}

/// process_vm_readv of the target's whole region in one call, into a
/// pre-faulted buffer; best GiB/s of `reps`.
pub fn readv_from(t: &Target, reps: usize) -> Result<f64> {
    let mut local = Region::prefaulted(t.len as usize, 0xa5)?;
    let s = timed(reps, || {
        let start = Instant::now();
        vm_rw(t.pid, local.as_mut_slice(), t.addr, false)?;
        Ok(start.elapsed())
    })?;
    Ok(best(t.len, &s))
}

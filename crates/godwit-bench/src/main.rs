//! godwit-bench: how fast Godwit dumps and restores a process holding N MiB
//! of dirty anonymous memory, beside what this machine can do at best.
//!
//! For each size it measures, `--reps` times: a dump that ends the process
//! (image on tmpfs, no fsync) and the restore of that image (the restored
//! process then checks every word of its memory, outside the timed region);
//! a dump with leave_running (total and frozen time, with a copy-on-write
//! snapshot, the default, and with no_cow); the engine's dump stages
//! (freeze, plan, copy, release, kill) run one by one; verify_pages alone. Then the
//! ceilings: memcpy, process_vm_readv, tmpfs write, first-touch page writes,
//! process_vm_writev into fresh memory, xxh3. Writes JSON and prints a table.
//!
//! Run as root (restore creates a process with a chosen PID).

mod ceilings;
mod region;
mod shapes;
#[allow(dead_code)] // spawn_cmd serves the migration benchmark
mod target;

use anyhow::{bail, Context, Result};
use ceilings::Ceilings;
use godwit_engine::dump::{dump, DumpOptions};
use godwit_engine::restore::{restore, RestoreOptions};
use godwit_engine::Quiet;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use target::Target;

const USAGE: &str = "\
usage: godwit-bench [--sizes MIB[,MIB...]] [--reps N] [--out FILE] [--no-shapes] [--no-extras] [--lr-only]
                    [--keep-page-reporting]

  --sizes   memory sizes to measure, in MiB (default 64,1024)
  --reps    repetitions of every measurement (default 5); min and median are reported
  --out     JSON output (default target/bench/dump-restore.json)
  --no-shapes  skip the tree (16 x 64 MiB) and many-mappings (2500..10000) runs
  --lr-only    only the leave-running dumps (pre-copy, snapshot, frozen
               throughout), for sizes too large for the rest
  --no-extras  only the dump + restore loop (no leave-running, stages or
            ceilings): for profiling it with perf
  --keep-page-reporting  do not hold freed memory back from free page
            reporting during the run (see PageReportingHold)

Run as root, from a release build:
  cargo build --release -p godwit-bench && sudo target/release/godwit-bench";

struct Args {
    /// Also measure the shapes (a tree, many mappings).
    shapes: bool,
    sizes: Vec<u64>,
    reps: usize,
    out: PathBuf,
    extras: bool,
    /// Leave free page reporting as it is.
    keep_page_reporting: bool,
    /// Only the leave-running dumps (for sizes too large for the rest).
    lr_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![64, 1024],
        reps: 5,
        out: PathBuf::from("target/bench/dump-restore.json"),
        extras: true,
        shapes: true,
        keep_page_reporting: false,
        lr_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .with_context(|| format!("{name} needs a value\n\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--no-shapes" => a.shapes = false,
            "--sizes" => {
                a.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u64>()
                            .ok()
                            .filter(|n| *n > 0 && *n <= 64 * 1024)
                            .with_context(|| {
                                format!("--sizes: {s:?} is not a size in MiB (1..65536)")
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            "--reps" => {
                a.reps = value("--reps")?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .context("--reps needs a positive number")?;
            }
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--no-extras" => a.extras = false,
            "--lr-only" => a.lr_only = true,
            "--keep-page-reporting" => a.keep_page_reporting = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(a)
}

/// Free page reporting (virtio-balloon) hands guest memory back to the host
/// as soon as it is free (`min_free_ms` 0 on this VM); the next write to it
/// then costs a host page fault per page (a C probe: 2 GiB written in 6-7 s
/// against 1.3-2 s otherwise). Every dump and restore writes memory another
/// one just freed, so the figures would measure the host. For the run the
/// memory is kept for a while before being reported; the old value is put
/// back at the end (`--keep-page-reporting` leaves it alone).
struct PageReportingHold {
    was: String,
}

impl PageReportingHold {
    const PATH: &'static str = "/sys/module/page_reporting/parameters/min_free_ms";
    const DURING: u64 = 60_000;

    fn start() -> Option<PageReportingHold> {
        let was = std::fs::read_to_string(Self::PATH).ok()?.trim().to_string();
        std::fs::write(Self::PATH, Self::DURING.to_string()).ok()?;
        Some(PageReportingHold { was })
    }
}

impl Drop for PageReportingHold {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(Self::PATH, &self.was) {
            eprintln!(
                "godwit-bench: could not put {} back to {}: {e}",
                Self::PATH,
                self.was
            );
        }
    }
}

/// What a run interrupted by a signal (Ctrl-C, SIGTERM, SIGHUP) puts
/// back before it exits, as the run's own drops would have: free page
/// reporting as it was, no target process, no mount and no work directory
/// left behind.
struct OnInterrupt {
    reporting_was: Option<String>,
    workdir: Option<PathBuf>,
}

static ON_INTERRUPT: std::sync::Mutex<OnInterrupt> = std::sync::Mutex::new(OnInterrupt {
    reporting_was: None,
    workdir: None,
});

/// Starts the thread that cleans up after a signal and exits (status 130).
fn watch_for_interrupts() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("\ngodwit-bench: signal {sig}: cleaning up");
            let todo = match ON_INTERRUPT.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            kill_children();
            if let Some(dir) = &todo.workdir {
                unmount_under(dir);
                let _ = std::fs::remove_dir_all(dir);
            }
            if let Some(was) = &todo.reporting_was {
                let _ = std::fs::write(PageReportingHold::PATH, was);
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

/// SIGKILLs every child of this process (targets, restored targets, and
/// the strays a subreaper inherits).
fn kill_children() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill with a positive PID of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    target::reap_strays();
}

/// Lazily unmounts every mount at or below `dir` (the huge tmpfs ones).
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for at in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if Path::new(at).starts_with(dir) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(at)
                .status();
        }
    }
}

/// A private directory on tmpfs, removed with everything in it on drop.
struct Workdir(PathBuf);

impl Workdir {
    fn create() -> Result<Workdir> {
        let mut template = *b"/dev/shm/godwit-bench-XXXXXX\0";
        // SAFETY: `template` is a writable NUL-terminated buffer ending in
        // XXXXXX, as mkdtemp requires; it fills in the X's in place.
        let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if p.is_null() {
            bail!(
                "cannot create a directory in /dev/shm: {}",
                std::io::Error::last_os_error()
            );
        }
        let path = std::str::from_utf8(&template[..template.len() - 1])?;
        Ok(Workdir(PathBuf::from(path)))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("godwit-bench: could not remove {}: {e}", self.0.display());
        }
    }
}

/// Removes an image directory on drop.
struct TempImage(PathBuf);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Samples of one duration.
#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }
    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }
    fn min(&self) -> Duration {
        self.sorted().first().copied().unwrap_or_default()
    }
    fn median(&self) -> Duration {
        let v = self.sorted();
        match v.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2,
        }
    }
    fn ms_json(&self) -> Value {
        json!({
            "min": round2(ms(self.min())),
            "median": round2(ms(self.median())),
            "all": self.0.iter().map(|d| round2(ms(*d))).collect::<Vec<_>>(),
        })
    }
    /// GiB/s from the fastest ("max") and the median run.
    fn rate_json(&self, bytes: u64) -> Value {
        json!({"max": round2(gib_s(bytes, self.min())), "median": round2(gib_s(bytes, self.median()))})
    }
}

/// Everything measured for one size.
struct SizeResult {
    mib: u64,
    memory_bytes: u64,
    image_bytes: u64,
    dump: Samples,
    frozen: Samples,
    restore: Samples,
    restored_bytes: u64,
    /// The dump + restore loop with images on a huge=within_size tmpfs.
    huge_dump: Samples,
    huge_restore: Samples,
    lr_total: Samples,
    lr_frozen: Samples,
    lr_nocow_total: Samples,
    lr_nocow_frozen: Samples,
    /// leave_running without pre-copy: the copy-on-write snapshot.
    lr_snap_total: Samples,
    lr_snap_frozen: Samples,
    st_freeze: Samples,
    st_plan: Samples,
    st_copy: Samples,
    st_release: Samples,
    st_kill: Samples,
    st_verify: Samples,
    /// None with --no-extras.
    ceilings: Option<Ceilings>,
}

impl SizeResult {
    fn to_json(&self) -> Value {
        json!({
            "size_mib": self.mib,
            "memory_bytes": self.memory_bytes,
            "image_bytes": self.image_bytes,
            "dump_ms": self.dump.ms_json(),
            "dump_gib_s": self.dump.rate_json(self.memory_bytes),
            "frozen_ms": self.frozen.ms_json(),
            "restore_ms": self.restore.ms_json(),
            "restore_gib_s": self.restore.rate_json(self.restored_bytes),
            "huge_tmpfs_dump_ms": self.huge_dump.ms_json(),
            "huge_tmpfs_restore_ms": self.huge_restore.ms_json(),
            "leave_running_total_ms": self.lr_total.ms_json(),
            "leave_running_frozen_ms": self.lr_frozen.ms_json(),
            "leave_running_no_cow_total_ms": self.lr_nocow_total.ms_json(),
            "leave_running_no_cow_frozen_ms": self.lr_nocow_frozen.ms_json(),
            "leave_running_snapshot_total_ms": self.lr_snap_total.ms_json(),
            "leave_running_snapshot_frozen_ms": self.lr_snap_frozen.ms_json(),
            "stages_ms": {
                "dump_freeze": self.st_freeze.ms_json(),
                "dump_smaps_and_plan": self.st_plan.ms_json(),
                "dump_copy_pages": self.st_copy.ms_json(),
                "dump_release": self.st_release.ms_json(),
                "dump_kill": self.st_kill.ms_json(),
                "restore_verify_pages": self.st_verify.ms_json(),
            },
            "ceilings": self.ceilings.as_ref().map(Ceilings::to_json),
            "copy_floor_ms": self.ceilings.as_ref().map(|c| serde_json::json!({
                "dev_shm": c.copy_floor_ms(self.mib << 20, c.tmpfs_write_2t),
                "huge_tmpfs": c.copy_floor_ms(self.mib << 20, c.tmpfs_write_huge_2t),
            })),
        })
    }
}

struct Env {
    dir: PathBuf,
    bin: PathBuf,
}

/// Runs the engine's dump stages one by one on the running process `pid`,
/// as `dump` does them (freeze; smaps and pagemap plan; copy every page into
/// a page file; release), and returns each stage's time.
fn dump_stages(pid: i32, dir: &Path) -> Result<[Duration; 4]> {
    use godwit_engine::freeze::Frozen;
    use godwit_engine::resources::memory;
    let _cleanup = TempImage(dir.to_owned());
    let t0 = Instant::now();
    let frozen = Frozen::freeze(pid).context("freezing")?;
    let t1 = Instant::now();
    let maps = godwit_sys::proc::maps(pid).context("reading maps")?;
    let vmas = memory::survey(pid, &maps).context("planning")?;
    let t2 = Instant::now();
    let writer = godwit_image::ImageWriter::create(dir)?.sync(false);
    memory::write_pages(pid, &vmas, &writer, &Quiet, None, &[], None).context("copying pages")?;
    let t3 = Instant::now();
    frozen.release().context("releasing")?;
    let t4 = Instant::now();
    Ok([t1 - t0, t2 - t1, t3 - t2, t4 - t3])
}

/// One dump (ending the process) and the restore of its image.
struct Once {
    dump: Duration,
    frozen: Duration,
    restore: Duration,
    memory_bytes: u64,
    image_bytes: u64,
    restored_bytes: u64,
}

/// Dumps a fresh `mib` MiB target into `img` (no fsync), restores it, and
/// has the restored process check every word of its memory (not timed).
/// The caller removes `img`.
fn dump_restore(env: &Env, img: &Path, mib: u64, tag: &str) -> Result<Once> {
    let mut t = Target::hold(&env.bin, &env.dir, mib, tag)?;
    let start = Instant::now();
    let d = dump(
        &[t.pid],
        img,
        &DumpOptions {
            leave_running: false,
            no_sync: true,
            ..Default::default()
        },
        &Quiet,
    )
    .with_context(|| format!("dumping the {mib} MiB target (pid {})", t.pid))?;
    let dump_time = start.elapsed();
    t.ended_by_dump();

    let start = Instant::now();
    let res = restore(img, &RestoreOptions::default(), &Quiet);
    let elapsed = start.elapsed();
    let res = match res {
        Ok(res) => res,
        Err(e) => {
            target::reap_strays();
            return Err(e).with_context(|| format!("restoring the {mib} MiB image"));
        }
    };
    t.adopt(res.pid);
    t.check()
        .with_context(|| format!("checking the restored {mib} MiB process"))?;
    Ok(Once {
        dump: dump_time,
        frozen: d.frozen,
        restore: elapsed,
        memory_bytes: d.memory_bytes,
        image_bytes: d.image_bytes,
        restored_bytes: res.memory_bytes,
    })
}

/// A tmpfs of our own, mounted `huge=within_size` at a directory that is
/// removed with it. /dev/shm (huge=never, the default) stores every page of
/// a file as its own 4 KiB page, whose allocation bounds writes to ~2.2 GiB/s
/// on this machine; with huge pages the same writes run ~3x faster. This is
/// how a host would mount a checkpoint store.
struct HugeTmpfs(PathBuf);

impl HugeTmpfs {
    fn mount(at: &Path, size_mib: u64) -> Result<HugeTmpfs> {
        std::fs::create_dir(at).with_context(|| format!("creating {}", at.display()))?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("huge=within_size,mode=0700,size={size_mib}m"))
            .arg("godwit-bench")
            .arg(at)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(at);
            bail!(
                "mount -t tmpfs -o huge=within_size failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(HugeTmpfs(at.to_owned()))
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("godwit-bench: could not unmount {}", self.0.display());
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn bench_size(env: &Env, mib: u64, reps: usize, extras: bool, lr_only: bool) -> Result<SizeResult> {
    let mut r = SizeResult {
        mib,
        memory_bytes: 0,
        image_bytes: 0,
        dump: Samples::default(),
        frozen: Samples::default(),
        restore: Samples::default(),
        restored_bytes: 0,
        huge_dump: Samples::default(),
        huge_restore: Samples::default(),
        lr_total: Samples::default(),
        lr_frozen: Samples::default(),
        lr_nocow_total: Samples::default(),
        lr_nocow_frozen: Samples::default(),
        lr_snap_total: Samples::default(),
        lr_snap_frozen: Samples::default(),
        st_freeze: Samples::default(),
        st_plan: Samples::default(),
        st_copy: Samples::default(),
        st_release: Samples::default(),
        st_kill: Samples::default(),
        st_verify: Samples::default(),
        ceilings: None,
    };

    // Dump (ending the process), then restore the image.
    for rep in (0..reps).filter(|_| !lr_only) {
        eprint!("\r{mib} MiB: dump + restore {}/{reps}   ", rep + 1);
        let img = env.dir.join(format!("img-{mib}-{rep}"));
        let _img = TempImage(img.clone());
        let once = dump_restore(env, &img, mib, &format!("{mib}-{rep}"))?;
        r.dump.push(once.dump);
        r.frozen.push(once.frozen);
        r.restore.push(once.restore);
        r.memory_bytes = once.memory_bytes;
        r.image_bytes = once.image_bytes;
        r.restored_bytes = once.restored_bytes;
        if !extras {
            continue;
        }
        // verify_pages alone, on the same image (outside the timed region).
        let start = Instant::now();
        let (_, reader) = godwit_engine::load(&img)?;
        reader.verify_pages()?;
        r.st_verify.push(start.elapsed());
    }

    // The same on a tmpfs of our own mounted huge=within_size (see HugeTmpfs).
    if extras && !lr_only {
        match HugeTmpfs::mount(&env.dir.join(format!("huge-{mib}")), mib * 3 + 64) {
            Ok(h) => {
                for rep in 0..reps {
                    eprint!(
                        "\r{mib} MiB: dump + restore on huge tmpfs {}/{reps}   ",
                        rep + 1
                    );
                    let img = h.0.join(format!("img-{rep}"));
                    let _img = TempImage(img.clone());
                    let once = dump_restore(env, &img, mib, &format!("{mib}-{rep}-huge"))?;
                    r.huge_dump.push(once.dump);
                    r.huge_restore.push(once.restore);
                }
            }
            Err(e) => eprintln!("\rgodwit-bench: no huge tmpfs run: {e:#}"),
        }
    }

    if !extras {
        eprintln!("\r{mib} MiB: done                              ");
        return Ok(r);
    }

    // Ending a frozen process: SIGKILL and wait until it is gone, as a dump
    // without leave_running does at its end.
    for rep in (0..reps).filter(|_| !lr_only) {
        eprint!("\r{mib} MiB: kill stage {}/{reps}          ", rep + 1);
        let mut t = Target::hold(&env.bin, &env.dir, mib, &format!("{mib}-kill-{rep}"))?;
        let frozen = godwit_engine::freeze::Frozen::freeze(t.pid).context("freezing")?;
        let start = Instant::now();
        frozen.kill().context("ending the frozen process")?;
        r.st_kill.push(start.elapsed());
        t.ended_by_dump();
    }

    // Dump with leave_running, the stages one by one, and process_vm_readv,
    // on one process that keeps running throughout.
    let t = Target::hold(&env.bin, &env.dir, mib, &format!("{mib}-lr"))?;
    // Pre-copy (the default), the copy-on-write snapshot, frozen throughout.
    for (no_precopy, no_cow) in [(false, false), (true, false), (false, true)] {
        for rep in 0..reps {
            let what = match (no_precopy, no_cow) {
                (false, false) => "leave-running dump",
                (true, _) => "leave-running dump, snapshot",
                _ => "leave-running dump, no CoW",
            };
            eprint!("\r{mib} MiB: {what} {}/{reps}   ", rep + 1);
            let img = env.dir.join(format!("lr-{mib}-{rep}"));
            let _img = TempImage(img.clone());
            let start = Instant::now();
            let d = dump(
                &[t.pid],
                &img,
                &DumpOptions {
                    leave_running: true,
                    no_sync: true,
                    no_cow,
                    no_precopy,
                    ..Default::default()
                },
                &Quiet,
            )
            .with_context(|| format!("dumping the {mib} MiB target with leave_running ({what})"))?;
            let (total, frozen) = match (no_precopy, no_cow) {
                (false, false) => (&mut r.lr_total, &mut r.lr_frozen),
                (true, _) => (&mut r.lr_snap_total, &mut r.lr_snap_frozen),
                _ => (&mut r.lr_nocow_total, &mut r.lr_nocow_frozen),
            };
            total.push(start.elapsed());
            frozen.push(d.frozen);
        }
    }
    t.check()
        .with_context(|| format!("checking the {mib} MiB process after leave-running dumps"))?;
    if lr_only {
        eprintln!("\r{mib} MiB: done                              ");
        return Ok(r);
    }
    for rep in 0..reps {
        eprint!("\r{mib} MiB: dump stages {}/{reps}          ", rep + 1);
        let [a, b, c, d] = dump_stages(t.pid, &env.dir.join(format!("st-{mib}-{rep}")))
            .with_context(|| format!("timing the dump stages at {mib} MiB"))?;
        r.st_freeze.push(a);
        r.st_plan.push(b);
        r.st_copy.push(c);
        r.st_release.push(d);
    }
    eprint!("\r{mib} MiB: ceilings                        ");
    let readv = ceilings::readv_from(&t, reps)?;
    drop(t);

    let mut c = ceilings::measure(&env.dir, &env.bin, mib, reps)?;
    c.process_vm_readv = readv;
    r.ceilings = Some(c);
    eprintln!("\r{mib} MiB: done                              ");
    Ok(r)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The workspace's git HEAD when the benchmark starts, and whether the crates
/// that set the figures (engine, sys, image) have uncommitted changes then
/// (it describes the build only if nothing was rebuilt in between).
fn git_info() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short=12", "HEAD"]);
    let dirty = git(&[
        "status",
        "--porcelain",
        "--",
        "crates/godwit-engine",
        "crates/godwit-sys",
        "crates/godwit-image",
    ])
    .map(|s| !s.is_empty());
    json!({"head": head, "engine_uncommitted_changes": dirty})
}

fn machine(load_start: &str) -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "mem_total_mib": mem_kib / 1024,
        "thp_enabled": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "godwit_version": env!("CARGO_PKG_VERSION"),
        // Other work on the machine skews the figures: compare with nproc.
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
    })
}

fn print_table(results: &[SizeResult], extras: bool) {
    let mm = |s: &Samples| format!("{:.1}/{:.1}", ms(s.min()), ms(s.median()));
    println!();
    println!(
        "{:>6}  {:>15} {:>6} {:>15}  {:>15} {:>6}",
        "MiB", "dump ms", "GiB/s", "frozen ms", "restore ms", "GiB/s"
    );
    for r in results {
        println!(
            "{:>6}  {:>15} {:>6.2} {:>15}  {:>15} {:>6.2}",
            r.mib,
            mm(&r.dump),
            gib_s(r.memory_bytes, r.dump.min()),
            mm(&r.frozen),
            mm(&r.restore),
            gib_s(r.restored_bytes, r.restore.min()),
        );
    }
    println!("(ms: min/median; GiB/s from the fastest run)");
    if !extras {
        return;
    }
    println!();
    println!(
        "{:>6}  {:>15} {:>15}   (images on a tmpfs mounted huge=within_size)",
        "MiB", "dump ms", "restore ms"
    );
    for r in results {
        println!(
            "{:>6}  {:>15} {:>15}",
            r.mib,
            mm(&r.huge_dump),
            mm(&r.huge_restore)
        );
    }
    println!();
    println!(
        "{:>6}  {:>15} {:>15}  {:>15} {:>15}  {:>15} {:>15}",
        "MiB",
        "LR total ms",
        "LR frozen ms",
        "snap total",
        "snap frozen",
        "no-CoW total",
        "no-CoW frozen"
    );
    for r in results {
        println!(
            "{:>6}  {:>15} {:>15}  {:>15} {:>15}  {:>15} {:>15}",
            r.mib,
            mm(&r.lr_total),
            mm(&r.lr_frozen),
            mm(&r.lr_snap_total),
            mm(&r.lr_snap_frozen),
            mm(&r.lr_nocow_total),
            mm(&r.lr_nocow_frozen),
        );
    }
    println!("(LR: dump with leave_running: pre-copy; snap: copy-on-write snapshot, no pre-copy)");
    println!();
    println!(
        "{:>6}  {:>13} {:>13} {:>13} {:>13} {:>13} {:>13}   (stages alone, ms)",
        "MiB", "dump freeze", "smaps+plan", "copy pages", "release", "kill", "verify_pages"
    );
    for r in results {
        println!(
            "{:>6}  {:>13} {:>13} {:>13} {:>13} {:>13} {:>13}",
            r.mib,
            mm(&r.st_freeze),
            mm(&r.st_plan),
            mm(&r.st_copy),
            mm(&r.st_release),
            mm(&r.st_kill),
            mm(&r.st_verify),
        );
    }
    println!();
    println!(
        "{:>6}  {:>8} {:>8} {:>8} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8}   (GiB/s, best)",
        "MiB",
        "memcpy",
        "vm_readv",
        "tmpfs_wr",
        "wr_2thr",
        "tmpfs_huge",
        "huge_2t",
        "1sttouch",
        "1st_thp",
        "writev_fr",
        "wv_fr_thp",
        "xxh3",
    );
    for r in results {
        let Some(c) = &r.ceilings else { continue };
        println!(
            "{:>6}  {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>8.2}",
            r.mib,
            c.memcpy,
            c.process_vm_readv,
            c.tmpfs_write,
            c.tmpfs_write_2t,
            c.tmpfs_write_huge,
            c.tmpfs_write_huge_2t,
            c.first_touch,
            c.first_touch_thp,
            c.process_vm_writev_fresh,
            c.process_vm_writev_fresh_thp,
            c.xxh3
        );
    }
    for r in results {
        let Some(c) = &r.ceilings else { continue };
        println!(
            "{:>6}  least time to copy the memory into page files with two threads \
             (read + hash + write, from the ceilings): {:.1} ms on /dev/shm, {:.1} ms on the huge tmpfs",
            r.mib,
            c.copy_floor_ms(r.mib << 20, c.tmpfs_write_2t),
            c.copy_floor_ms(r.mib << 20, c.tmpfs_write_huge_2t),
        );
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("godwit-bench must run as root (restore creates processes with chosen PIDs)");
    }
    godwit_sys::process::set_child_subreaper().context("becoming a child subreaper")?;
    let load_start = loadavg();
    // Before the run: the build being measured is the tree as it is now.
    let git = git_info();
    watch_for_interrupts()?;
    let reporting = (!args.keep_page_reporting)
        .then(PageReportingHold::start)
        .flatten();
    let work = Workdir::create()?;
    if let Ok(mut todo) = ON_INTERRUPT.lock() {
        todo.reporting_was = reporting.as_ref().map(|r| r.was.clone());
        todo.workdir = Some(work.0.clone());
    }
    let env = Env {
        bin: target::compile(&work.0)?,
        dir: work.0.clone(),
    };
    let mut results = Vec::new();
    for &mib in &args.sizes {
        results.push(bench_size(&env, mib, args.reps, args.extras, args.lr_only)?);
    }
    target::reap_strays();
    let shapes = if args.shapes && !args.lr_only {
        let s = shapes::run(&env, args.reps.min(3))?;
        target::reap_strays();
        s
    } else {
        Vec::new()
    };

    let largest = results
        .iter()
        .max_by_key(|r| r.mib)
        .context("no sizes measured")?;
    let top = largest.ceilings.as_ref().map(|c| {
        let mut top = c.to_json();
        top["size_mib"] = json!(largest.mib);
        top
    });
    let doc = json!({
        "machine": machine(&load_start),
        "page_reporting_min_free_ms": reporting.as_ref().map(|r| json!({"was": r.was, "during": PageReportingHold::DURING})),
        "git": git,
        "config": {
            "sizes_mib": args.sizes,
            "reps": args.reps,
            "image_dir": "tmpfs (/dev/shm)",
            "no_sync": true,
            "restore_checked": "every rep: the restored process checks every word (SIGUSR1)",
        },
        "results": results.iter().map(SizeResult::to_json).collect::<Vec<_>>(),
        "shapes": shapes,
        "ceilings": top,
    });
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    print_table(&results, args.extras);
    for s in &shapes {
        println!(
            "{:<40} {:>3} processes  dump {:>8.1} ms  restore {:>8.1} ms (medians)",
            s["shape"].as_str().unwrap_or(""),
            s["processes"],
            s["dump_ms"]["median"].as_f64().unwrap_or(0.0),
            s["restore_ms"]["median"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "\nload average: {load_start} at the start, {} at the end",
        loadavg()
    );
    println!("JSON: {}", args.out.display());
    Ok(())
}

fn main() {
    // GODWIT_LOG=godwit_engine=debug shows the engine's stage times.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("GODWIT_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = parse_args().and_then(|a| run(&a));
    if let Err(e) = result {
        eprintln!("\ngodwit-bench: {e:#}");
        std::process::exit(1);
    }
}

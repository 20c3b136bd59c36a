//! `godwit-store-bench`: the checkpoint store's throughput beside the
//! machine's single-core ceilings (memcpy, BLAKE3, zstd in memory on the
//! same bytes), and the space ten checkpoints of a process under light
//! load take, full vs deduplicated. Writes JSON (see docs/PERFORMANCE.md,
//! "Checkpoint store").
//!
//! Usage: godwit-store-bench [--godwit PATH] [--dir DIR] [--out FILE]
//!        [--size-mib N] [--corpus-mib N] [--checkpoints N] [--write-mib N]
//!        [--no-redis] [--incremental-only]
//!
//! The page bytes measured are those of a real checkpoint: the load
//! program (storeload.c, N MiB of mixed pages) is dumped with `godwit dump
//! --images`, and its page file is the corpus. Part B checkpoints the same
//! program N times into a store with `godwit dump --store
//! --leave-running`, telling it to rewrite `--write-mib` MiB of random
//! pages between two (10 MiB: one second at 10 MiB/s), and then
//! redis-server (if installed) likewise, with keys added between two.
//! Part C takes the same number of incremental checkpoints of the load
//! (`godwit dump --store --leave-running --series N --every 1000`: the
//! write tracking stays armed between them) while the load rewrites
//! `--write-mib` MiB every second; `--incremental-only` runs only part C.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use godwit_image::{ImageReader, ImageWriter};
use godwit_store::{Compression, Store, StoreMedium, StoreSource};
use serde_json::{json, Value};

const CHUNK: usize = 256 << 10;

struct Opts {
    godwit: PathBuf,
    dir: PathBuf,
    out: Option<PathBuf>,
    size_mib: u64,
    corpus_mib: u64,
    checkpoints: u32,
    write_mib: u64,
    redis: bool,
    incremental_only: bool,
}

fn parse() -> Opts {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut o = Opts {
        godwit: exe.with_file_name("godwit"),
        dir: PathBuf::from("/var/tmp/godwit-store-bench"),
        out: None,
        size_mib: 1024,
        corpus_mib: 512,
        checkpoints: 10,
        write_mib: 10,
        redis: true,
        incremental_only: false,
    };
    let mut a = std::env::args().skip(1);
    while let Some(k) = a.next() {
        let mut v = || {
            a.next()
                .unwrap_or_else(|| die(&format!("{k} needs a value")))
        };
        match k.as_str() {
            "--godwit" => o.godwit = v().into(),
            "--dir" => o.dir = v().into(),
            "--out" => o.out = Some(v().into()),
            "--size-mib" => o.size_mib = v().parse().unwrap_or_else(|_| die("--size-mib")),
            "--corpus-mib" => o.corpus_mib = v().parse().unwrap_or_else(|_| die("--corpus-mib")),
            "--checkpoints" => o.checkpoints = v().parse().unwrap_or_else(|_| die("--checkpoints")),
            "--write-mib" => o.write_mib = v().parse().unwrap_or_else(|_| die("--write-mib")),
            "--no-redis" => o.redis = false,
            "--incremental-only" => o.incremental_only = true,
            _ => die(&format!("unknown argument {k}")),
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("godwit-store-bench: {msg}");
    std::process::exit(2)
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

/// Best of three runs of `f` over `bytes` bytes, in GB/s.
fn best(bytes: usize, mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            gbps(bytes, t.elapsed().as_secs_f64())
        })
        .fold(0.0, f64::max)
}

/// A program we started; killed and reaped on drop.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Load {
    proc: Started,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Load {
    fn start(bin: &Path, mib: u64) -> Load {
        let mut c = Command::new(bin)
            .arg(mib.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| die(&format!("starting {}: {e}", bin.display())));
        let stdin = c.stdin.take().expect("piped");
        let mut stdout = BufReader::new(c.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("the load program's ready line");
        assert_eq!(line.trim(), "ready");
        Load {
            proc: Started(c),
            stdin,
            stdout,
        }
    }

    fn write(&mut self, mib: u64) {
        writeln!(self.stdin, "w {mib}").expect("telling the load program");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("its answer");
    }
}

fn godwit(o: &Opts, args: &[&str]) -> Value {
    let out = Command::new(&o.godwit)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(&format!("running {}: {e}", o.godwit.display())));
    if !out.status.success() {
        die(&format!(
            "godwit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Part A: throughput on `corpus`.
fn throughput(o: &Opts, corpus: &[u8]) -> Value {
    let n = corpus.len();
    let mut dst = vec![0u8; n];
    let memcpy = best(n, || dst.copy_from_slice(corpus));
    drop(dst);
    let blake3 = best(n, || {
        for c in corpus.chunks(CHUNK) {
            std::hint::black_box(blake3::hash(c));
        }
    });
    let mut zstd = serde_json::Map::new();
    for level in [1, 3] {
        let mut packed = Vec::new();
        let c = best(n, || {
            packed = corpus
                .chunks(CHUNK)
                .map(|c| zstd::bulk::compress(c, level).expect("zstd"))
                .collect::<Vec<_>>();
        });
        let size: usize = packed.iter().map(Vec::len).sum();
        let d = best(n, || {
            for p in &packed {
                std::hint::black_box(zstd::bulk::decompress(p, CHUNK).expect("zstd"));
            }
        });
        zstd.insert(
            format!("level{level}"),
            json!({"compress_gbps": c, "decompress_gbps": d, "ratio": n as f64 / size as f64}),
        );
    }
    let mut store_runs = Vec::new();
    for (name, comp, sync) in [
        ("raw", Compression::None, false),
        ("zstd1", Compression::Zstd(1), false),
        ("zstd3", Compression::Zstd(3), false),
        ("zstd1_fsync", Compression::Zstd(1), true),
    ] {
        let dir = o.dir.join(format!("a-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir)
            .expect("store")
            .compression(comp)
            .sync(sync);
        let t = Instant::now();
        let writer = ImageWriter::to_medium(Box::new(
            StoreMedium::new(&store, "a", Some(1)).expect("medium"),
        ))
        .sync(sync);
        let mut f = writer.page_file().expect("page file");
        for part in corpus.chunks(1 << 20) {
            f.write_all(part).expect("write");
        }
        let info = f.finish().expect("finish");
        writer
            .commit(&"bench".to_string(), vec![info])
            .expect("commit");
        let write = gbps(n, t.elapsed().as_secs_f64());
        let usage = store.usage().expect("usage");
        // A second checkpoint of the same bytes: hashed, nothing stored.
        let t = Instant::now();
        let writer = ImageWriter::to_medium(Box::new(
            StoreMedium::new(&store, "b", Some(1)).expect("medium"),
        ))
        .sync(sync);
        let mut f = writer.page_file().expect("page file");
        for part in corpus.chunks(1 << 20) {
            f.write_all(part).expect("write");
        }
        let info = f.finish().expect("finish");
        writer
            .commit(&"bench".to_string(), vec![info])
            .expect("commit");
        let rewrite = gbps(n, t.elapsed().as_secs_f64());
        let t = Instant::now();
        let src = StoreSource::open(&store, "a").expect("source");
        let reader = ImageReader::from_source(Box::new(src)).expect("reader");
        let map = reader.map_page_file("pages-0.img").expect("map");
        assert!(map[..] == corpus[..], "read back what was written");
        let read = gbps(n, t.elapsed().as_secs_f64());
        drop(map);
        drop(reader);
        store_runs.push(json!({
            "compression": name, "fsync": sync,
            "write_gbps": write, "write_unchanged_gbps": rewrite, "read_gbps_warm_cache": read,
            "stored_bytes": usage.bytes, "chunks": usage.chunks,
            "ratio": n as f64 / usage.bytes as f64,
        }));
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The plain image directory, for comparison.
    let dir = o.dir.join("a-directory");
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    let writer = ImageWriter::create(&dir).expect("dir").sync(false);
    let mut f = writer.page_file().expect("page file");
    for part in corpus.chunks(1 << 20) {
        f.write_all(part).expect("write");
    }
    let info = f.finish().expect("finish");
    writer
        .commit(&"bench".to_string(), vec![info])
        .expect("commit");
    let dir_write = gbps(n, t.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "corpus_bytes": n,
        "ceilings_single_core": {"memcpy_gbps": memcpy, "blake3_gbps": blake3, "zstd": zstd},
        "store": store_runs,
        "directory_write_gbps_no_fsync": dir_write,
    })
}

/// Part B: `o.checkpoints` checkpoints of `pid` into a fresh store,
/// `between` run after each.
fn series(o: &Opts, name: &str, pid: u32, mut between: impl FnMut()) -> Value {
    let store = o.dir.join(format!("b-{name}"));
    let _ = std::fs::remove_dir_all(&store);
    let mut per = Vec::new();
    for i in 0..o.checkpoints {
        let id = format!("{name}-{i}");
        let v = godwit(
            o,
            &[
                "dump",
                "--pid",
                &pid.to_string(),
                "--store",
                store.to_str().expect("utf-8"),
                "--checkpoint",
                &id,
                "--leave-running",
                "--no-sync",
            ],
        );
        per.push(json!({"frozen_ms": v["frozen_ms"], "total_ms": v["total_ms"]}));
        between();
    }
    let ls = godwit(
        o,
        &[
            "checkpoints",
            "--store",
            store.to_str().expect("utf-8"),
            "ls",
        ],
    );
    let list = ls["checkpoints"].as_array().cloned().unwrap_or_default();
    for (p, c) in per.iter_mut().zip(&list) {
        p["page_bytes"] = c["page_bytes"].clone();
        p["new_stored_bytes"] = c["new_stored_bytes"].clone();
        p["new_chunks"] = c["new_chunks"].clone();
        p["chunks"] = c["chunks"].clone();
    }
    let raw: u64 = list
        .iter()
        .map(|c| c["page_bytes"].as_u64().unwrap_or(0))
        .sum();
    let first = list
        .first()
        .map_or(0, |c| c["new_stored_bytes"].as_u64().unwrap_or(0));
    let first_raw = list
        .first()
        .map_or(0, |c| c["page_bytes"].as_u64().unwrap_or(0));
    let stored = ls["usage"]["bytes"].as_u64().unwrap_or(0);
    let _ = std::fs::remove_dir_all(&store);
    json!({
        "checkpoints": per,
        "full_uncompressed_bytes": raw,
        "full_zstd_bytes_estimate": first * list.len() as u64,
        "one_full_uncompressed_bytes": first_raw,
        "one_full_zstd_bytes": first,
        "store_bytes": stored,
        "store_over_one_full_zstd": stored as f64 / first.max(1) as f64,
        "store_over_one_full_uncompressed": stored as f64 / first_raw.max(1) as f64,
    })
}

/// Part C: `o.checkpoints` incremental checkpoints of the load (one
/// `godwit dump --series`, a second apart) into a fresh store while it
/// rewrites `o.write_mib` MiB every second.
fn incremental(o: &Opts, load: &mut Load) -> Value {
    let store = o.dir.join("c-incremental");
    let _ = std::fs::remove_dir_all(&store);
    let pid = load.proc.0.id().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let write_mib = o.write_mib;
    let t = Instant::now();
    let v = std::thread::scope(|s| {
        s.spawn(|| {
            let mut next = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                load.write(write_mib);
                next += std::time::Duration::from_secs(1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        let v = godwit(
            o,
            &[
                "dump",
                "--pid",
                &pid,
                "--store",
                store.to_str().expect("utf-8"),
                "--checkpoint",
                "inc",
                "--leave-running",
                "--no-sync",
                "--series",
                &o.checkpoints.to_string(),
                "--every",
                "1000",
            ],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        v
    });
    let wall = t.elapsed().as_secs_f64();
    let ls = godwit(
        o,
        &[
            "checkpoints",
            "--store",
            store.to_str().expect("utf-8"),
            "ls",
        ],
    );
    let list = ls["checkpoints"].as_array().cloned().unwrap_or_default();
    let mut per = v["series"].as_array().cloned().unwrap_or_default();
    for (p, c) in per.iter_mut().zip(&list) {
        p["page_bytes"] = c["page_bytes"].clone();
        p["new_stored_bytes"] = c["new_stored_bytes"].clone();
    }
    let first = list
        .first()
        .map_or(0, |c| c["new_stored_bytes"].as_u64().unwrap_or(0));
    let stored = ls["usage"]["bytes"].as_u64().unwrap_or(0);
    let _ = std::fs::remove_dir_all(&store);
    json!({
        "checkpoints": per,
        "incremental": per.iter().filter(|p| p["incremental"] == true).count(),
        "wall_s": wall,
        "one_full_zstd_bytes": first,
        "store_bytes": stored,
        "store_over_one_full_zstd": stored as f64 / first.max(1) as f64,
    })
}

fn redis(o: &Opts) -> Option<Value> {
    let server = which("redis-server")?;
    let cli = which("redis-cli")?;
    let port = 20000 + (std::process::id() % 20000);
    let dir = o.dir.join("redis");
    std::fs::create_dir_all(&dir).ok()?;
    let child = Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--enable-debug-command", "yes", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id();
    let _guard = Started(child);
    let redis = |args: &[&str]| {
        Command::new(&cli)
            .args(["-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("ERR"))
            .unwrap_or(false)
    };
    let t = Instant::now();
    while !redis(&["PING"]) {
        if t.elapsed().as_secs() > 10 {
            eprintln!("redis-server did not answer");
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // 256 MiB of values (256k keys of 1 KiB); then 10 MiB of new keys
    // between two checkpoints.
    if !redis(&["DEBUG", "POPULATE", "262144", "base", "1024"]) {
        eprintln!("redis DEBUG POPULATE failed");
        return None;
    }
    let mut round = 0;
    let v = series(o, "redis", pid, || {
        round += 1;
        let prefix = format!("r{round}");
        redis(&[
            "DEBUG",
            "POPULATE",
            &(o.write_mib * 1024).to_string(),
            &prefix,
            "1024",
        ]);
    });
    Some(v)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn main() {
    let o = parse();
    std::fs::create_dir_all(&o.dir).unwrap_or_else(|e| die(&format!("{}: {e}", o.dir.display())));
    let src = o.dir.join("storeload.c");
    std::fs::write(&src, include_str!("storeload.c")).expect("writing storeload.c");
    let bin = o.dir.join("storeload");
    let st = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| die(&format!("gcc: {e}")));
    if !st.success() {
        die("compiling storeload.c");
    }
    eprintln!("starting the load ({} MiB)", o.size_mib);
    let mut load = Load::start(&bin, o.size_mib);
    let pid = load.proc.0.id();
    if o.incremental_only {
        eprintln!(
            "part C: {} incremental checkpoints of the load",
            o.checkpoints
        );
        let c = incremental(&o, &mut load);
        drop(load);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let v = json!({
            "bench": "godwit-store-bench --incremental-only",
            "kernel": kernel.trim(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "write_mib_per_second": o.write_mib,
            "load_size_mib": o.size_mib,
            "incremental": c,
        });
        let text = serde_json::to_string_pretty(&v).expect("json");
        match &o.out {
            Some(p) => std::fs::write(p, text + "\n")
                .unwrap_or_else(|e| die(&format!("{}: {e}", p.display()))),
            None => println!("{text}"),
        }
        return;
    }
    // The corpus: the page file of a real checkpoint of the load.
    let img = o.dir.join("corpus-image");
    let _ = std::fs::remove_dir_all(&img);
    godwit(
        &o,
        &[
            "dump",
            "--pid",
            &pid.to_string(),
            "--images",
            img.to_str().expect("utf-8"),
            "--leave-running",
            "--no-sync",
        ],
    );
    let mut corpus = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&img)
        .expect("image dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
        })
        .collect();
    names.sort();
    for p in names {
        corpus.extend_from_slice(&std::fs::read(&p).expect("page file"));
    }
    let _ = std::fs::remove_dir_all(&img);
    corpus.truncate((o.corpus_mib << 20) as usize);
    eprintln!(
        "part A: throughput on {} MiB of page data",
        corpus.len() >> 20
    );
    let a = throughput(&o, &corpus);
    drop(corpus);
    eprintln!("part B: {} checkpoints of the load", o.checkpoints);
    let write_mib = o.write_mib;
    let b = series(&o, "storeload", pid, || load.write(write_mib));
    eprintln!(
        "part C: {} incremental checkpoints of the load",
        o.checkpoints
    );
    let c = incremental(&o, &mut load);
    drop(load);
    let r = if o.redis {
        eprintln!("part B: {} checkpoints of redis-server", o.checkpoints);
        redis(&o)
    } else {
        None
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let v = json!({
        "bench": "godwit-store-bench",
        "kernel": kernel.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "chunking": {"min_kib": 128, "average_kib": 256, "max_kib": 1024},
        "throughput": a,
        "ten_checkpoints": {
            "write_mib_between": o.write_mib,
            "load_size_mib": o.size_mib,
            "storeload": b,
            "storeload_incremental": c,
            "redis": r,
        },
    });
    let text = serde_json::to_string_pretty(&v).expect("json");
    match &o.out {
        Some(p) => {
            std::fs::write(p, text + "\n").unwrap_or_else(|e| die(&format!("{}: {e}", p.display())))
        }
        None => println!("{text}"),
    }
}

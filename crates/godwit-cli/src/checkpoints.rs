//! `godwit checkpoints ...` and the store side of `dump --store` /
//! `restore --store`: a node's checkpoint store (crate godwit-store),
//! used directly in a directory or through the node's godwitd.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use godwit_engine::dump::{DumpOptions, DumpReport};
use godwit_engine::restore::{RestoreOptions, RestoreReport};
use godwit_engine::{EngineError, Progress};
use godwit_store::{Store, StoreMedium, StoreSource};
use serde_json::{json, Value};

/// The store of a node whose godwitd runs with `--data /var/lib/godwit`.
pub const DEFAULT_STORE: &str = "/var/lib/godwit/checkpoints";

#[derive(Args, Debug)]
pub struct CheckpointsArgs {
    /// The store directory (a godwitd's is DATA/checkpoints). Ignored with --agent.
    #[arg(long, env = "GODWIT_STORE", default_value = DEFAULT_STORE)]
    store: PathBuf,
    /// Work on the store of this node agent (godwitd) instead of a directory
    /// (ls, rm, gc, export, import). Not read from GODWIT_AGENT: a store
    /// directory is the default here.
    #[arg(long)]
    agent: Option<String>,
    /// File holding a token of the agent (mode 0600): `read` for ls,
    /// `operate` for rm, gc, export and import.
    #[arg(long, requires = "agent")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the agent's certificate with (PKI mode).
    #[arg(long, env = "GODWIT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: CheckpointsCmd,
}

#[derive(Subcommand, Debug)]
pub enum CheckpointsCmd {
    /// The checkpoints, oldest first, with their parents (the previous
    /// checkpoint of the same process) and what each added to the store.
    Ls,
    /// Remove checkpoints (their chunks go at the next gc).
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Write one checkpoint into one file (its record and its chunks, with
    /// a checksum) for `godwit checkpoints import` on another store.
    Export {
        id: String,
        /// The file to write (0600).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Take a file written by `godwit checkpoints export` into the store.
    Import { file: PathBuf },
    /// Remove the chunks no checkpoint refers to.
    Gc,
    /// Retention: remove the checkpoints beyond the newest N of each process
    /// and those older than an age (never a process's newest), then gc.
    Prune {
        /// Keep the newest N checkpoints of each process.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        keep: Option<u64>,
        /// Remove checkpoints older than this many seconds.
        #[arg(long, value_name = "SECS")]
        max_age_secs: Option<u64>,
        /// Print what would go, remove nothing (store directory only).
        #[arg(long)]
        dry_run: bool,
    },
}

/// Dumps `pid` into the store in `dir` as checkpoint `id` (default
/// PID-MILLISECONDS). Returns the report, the id and the parent.
pub fn dump(
    pids: &[i32],
    dir: &Path,
    id: Option<&str>,
    opts: &DumpOptions,
    progress: &dyn Progress,
) -> anyhow::Result<(DumpReport, String, Option<String>)> {
    let store = Store::open(dir)?;
    let id = id.map_or_else(|| default_id(pids[0]), str::to_string);
    let medium = StoreMedium::new(&store, &id, Some(pids[0]))?;
    let parent = medium.parent().map(str::to_string);
    let writer = godwit_image::ImageWriter::to_medium(Box::new(medium));
    let r = godwit_engine::dump::dump_into(pids, writer, opts, progress)?;
    Ok((r, id, parent))
}

/// Takes `n` checkpoints of `pids` into the store in `dir`, `every` apart,
/// named NAME-1 ... NAME-n: the write tracking stays armed between them,
/// and each after the first is incremental (it takes the previous one's
/// page files by reference and stores only the pages written since), or a
/// full one when the engine falls back (see `dump::dump_tracked`). The
/// tracking is lifted at the end, and on an error.
pub fn dump_series(
    pids: &[i32],
    dir: &Path,
    name: &str,
    n: u32,
    every: std::time::Duration,
    opts: &DumpOptions,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<(DumpReport, String, Option<String>)>> {
    let store = Store::open(dir)?;
    let mut tracking: Option<godwit_engine::precopy::Tracking> = None;
    let mut previous: Option<String> = None;
    let mut done = Vec::new();
    for i in 1..=n {
        if i > 1 {
            std::thread::sleep(every);
        }
        let id = format!("{name}-{i}");
        let medium = match (&previous, &tracking) {
            (Some(from), Some(_)) => StoreMedium::linking_from(&store, &id, Some(pids[0]), from)?,
            _ => StoreMedium::new(&store, &id, Some(pids[0]))?,
        };
        let parent = medium.parent().map(str::to_string);
        let writer = godwit_image::ImageWriter::to_medium(Box::new(medium));
        let (r, kept) =
            godwit_engine::dump::dump_tracked(pids, writer, opts, progress, tracking.take())?;
        tracking = kept;
        previous = Some(id.clone());
        done.push((r, id, parent));
    }
    if let Some(t) = tracking {
        t.lift();
    }
    Ok(done)
}

/// The default name of a checkpoint of `pid`.
pub fn default_id(pid: i32) -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{pid}-{ms}")
}

/// Restores checkpoint `id` of the store in `dir`.
pub fn restore(
    dir: &Path,
    id: &str,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> anyhow::Result<RestoreReport> {
    if !dir.join("checkpoints").is_dir() {
        anyhow::bail!("{} is not a checkpoint store", dir.display());
    }
    let store = Store::open(dir)?;
    let source = StoreSource::open(&store, id)?;
    let reader =
        godwit_image::ImageReader::from_source(Box::new(source)).map_err(EngineError::from)?;
    Ok(godwit_engine::restore::restore_from(
        reader,
        opts,
        progress,
        &|_| Ok(()),
    )?)
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

pub fn run(args: CheckpointsArgs, json_out: bool) -> anyhow::Result<()> {
    if let Some(agent) = &args.agent {
        return run_agent(&args, agent, json_out);
    }
    let open = || {
        if !args.store.join("checkpoints").is_dir() {
            anyhow::bail!(
                "{} is not a checkpoint store (give --store DIR)",
                args.store.display()
            );
        }
        Ok(Store::open(&args.store)?)
    };
    let v: Value = match &args.cmd {
        CheckpointsCmd::Ls => {
            let store = open()?;
            json!({"store": args.store, "checkpoints": store.list()?, "usage": store.usage()?})
        }
        CheckpointsCmd::Rm { ids } => {
            let store = open()?;
            for id in ids {
                store.remove(id)?;
            }
            json!({"removed": ids})
        }
        CheckpointsCmd::Gc => json!(open()?.gc()?),
        CheckpointsCmd::Prune {
            keep,
            max_age_secs,
            dry_run,
        } => {
            let rule = retention(*keep, *max_age_secs)?;
            let store = open()?;
            if *dry_run {
                let list = store.list()?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let doomed = rule.doomed(&list, now);
                json!({"removed": doomed, "kept": list.len() - doomed.len(), "dry_run": true})
            } else {
                json!(store.prune(&rule)?)
            }
        }
        CheckpointsCmd::Export { id, output } => {
            json!(godwit_store::export::export(&open()?, id, output)
                .with_context(|| format!("exporting {id}"))?)
        }
        CheckpointsCmd::Import { file } => {
            // Importing may start a store.
            let store = Store::open(&args.store)?;
            json!(godwit_store::export::import(&store, file)?)
        }
    };
    print(&args.cmd, &v, json_out);
    Ok(())
}

fn run_agent(args: &CheckpointsArgs, addr: &str, json_out: bool) -> anyhow::Result<()> {
    let token_file = args
        .token_file
        .as_deref()
        .context("--agent needs --token-file")?;
    let token = godwit_agent_client::load_token(token_file)?;
    let agent = godwit_agent_client::Agent::with_ca(addr, token, args.tls_ca.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let t = Duration::from_secs(120);
    let v = rt.block_on(async {
        Ok::<_, anyhow::Error>(match &args.cmd {
            CheckpointsCmd::Ls => {
                agent
                    .request("checkpoints ls", "GET", "/v1/checkpoints", None, t)
                    .await?
            }
            CheckpointsCmd::Rm { ids } => {
                for id in ids {
                    agent
                        .request(
                            "checkpoints rm",
                            "DELETE",
                            &format!("/v1/checkpoints/{id}"),
                            None,
                            t,
                        )
                        .await?;
                }
                json!({"removed": ids})
            }
            CheckpointsCmd::Gc => {
                agent
                    .request("checkpoints gc", "POST", "/v1/checkpoints/gc", None, t)
                    .await?
            }
            CheckpointsCmd::Prune {
                keep,
                max_age_secs,
                dry_run,
            } => {
                anyhow::ensure!(
                    !dry_run,
                    "--dry-run works on a store directory (--store DIR), not through --agent"
                );
                let body = json!({"keep": keep, "max_age_secs": max_age_secs});
                agent
                    .request(
                        "checkpoints prune",
                        "POST",
                        "/v1/checkpoints/prune",
                        Some(body),
                        t,
                    )
                    .await?
            }
            CheckpointsCmd::Export { id, output } => {
                let bytes = agent
                    .request_bytes(
                        "checkpoints export",
                        "GET",
                        &format!("/v1/checkpoints/{id}/export"),
                        None,
                        Duration::from_secs(600),
                        EXPORT_LIMIT,
                    )
                    .await?;
                write_private(output, &bytes)?;
                json!({"id": id, "bytes": bytes.len()})
            }
            CheckpointsCmd::Import { file } => {
                let bytes =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                agent
                    .request_bytes(
                        "checkpoints import",
                        "POST",
                        "/v1/checkpoints/import",
                        Some(bytes.into()),
                        Duration::from_secs(600),
                        1 << 20,
                    )
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(serde_json::from_slice(&b)?))?
            }
        })
    })?;
    print(&args.cmd, &v, json_out);
    Ok(())
}

/// The retention rule of `checkpoints prune`.
fn retention(
    keep: Option<u64>,
    max_age_secs: Option<u64>,
) -> anyhow::Result<godwit_store::Retention> {
    let rule = godwit_store::Retention {
        keep: keep.map(|k| k as usize),
        max_age: max_age_secs.map(Duration::from_secs),
    };
    anyhow::ensure!(
        !rule.is_none(),
        "prune needs --keep N or --max-age-secs SECS"
    );
    Ok(rule)
}

/// The largest export taken from an agent (as its request bodies).
const EXPORT_LIMIT: usize = 8 << 30;

/// Writes `bytes` to `path` (mode 0600) through a temporary file and a
/// rename: never a half-written export under its name.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("part");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

fn print(cmd: &CheckpointsCmd, v: &Value, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    let u = |k: &str, o: &Value| o[k].as_u64().unwrap_or(0);
    match cmd {
        CheckpointsCmd::Ls => {
            println!(
                "{:<32} {:<32} {:>7} {:>9} {:>9} {:>7}",
                "ID", "PARENT", "PID", "MiB", "NEW MiB", "CHUNKS"
            );
            for c in v["checkpoints"].as_array().into_iter().flatten() {
                let parent = match c["parent"].as_str() {
                    None => "-".to_string(),
                    Some(p) if c["parent_present"].as_bool() == Some(true) => p.to_string(),
                    Some(p) => format!("{p} (removed)"),
                };
                println!(
                    "{:<32} {:<32} {:>7} {:>9} {:>9} {:>7}",
                    c["id"].as_str().unwrap_or("?"),
                    parent,
                    c["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
                    mib(u("page_bytes", c)),
                    mib(u("new_stored_bytes", c)),
                    u("chunks", c),
                );
            }
            println!(
                "store: {} chunks, {} MiB on disk",
                u("chunks", &v["usage"]),
                mib(u("bytes", &v["usage"]))
            );
        }
        CheckpointsCmd::Rm { .. } => {
            for id in v["removed"].as_array().into_iter().flatten() {
                println!("removed {}", id.as_str().unwrap_or("?"));
            }
        }
        CheckpointsCmd::Gc => println!(
            "removed {} chunks ({} MiB), kept {} chunks of {} checkpoints",
            u("chunks_removed", v),
            mib(u("bytes_freed", v)),
            u("chunks_kept", v),
            u("checkpoints", v)
        ),
        CheckpointsCmd::Prune { dry_run, .. } => {
            let verb = if *dry_run { "would remove" } else { "removed" };
            for id in v["removed"].as_array().into_iter().flatten() {
                println!("{verb} {}", id.as_str().unwrap_or("?"));
            }
            println!(
                "{} checkpoints kept{}",
                u("kept", v),
                if *dry_run {
                    String::new()
                } else {
                    format!("; {} MiB freed", mib(u("bytes_freed", &v["gc"])))
                }
            );
        }
        CheckpointsCmd::Export { output, .. } => println!(
            "exported {} ({}{} MiB) to {}",
            v["id"].as_str().unwrap_or("?"),
            v["chunks"]
                .as_u64()
                .map_or(String::new(), |c| format!("{c} chunks, ")),
            mib(u("bytes", v)),
            output.display()
        ),
        CheckpointsCmd::Import { .. } => println!(
            "imported {} ({} chunks, {} new in the store)",
            v["id"].as_str().unwrap_or("?"),
            u("chunks", v),
            u("new_chunks", v)
        ),
    }
}

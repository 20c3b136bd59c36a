//! `godwit`: the operator's command line.

mod checkpoints;
mod inspect;
mod migrate;
mod node;

use anyhow::Context;
use clap::{Parser, Subcommand};
use godwit_engine::dump::{dump, DumpOptions};
use godwit_engine::restore::{restore, RestoreOptions};
use godwit_engine::{EngineError, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Checkpoint, restore and migrate Linux processes.
///
/// Exit codes: 0 success, 1 failure, 2 usage error (also: an image of a
/// shell job restored without --shell-job or without a terminal on stdin,
/// an image with TCP connections restored without --tcp-established, an
/// --inherit-fd the image or godwit's descriptors do not fit),
/// 3 unusable image, 4 PID (or SysV shared memory key/id) in use, 5
/// something Godwit does not support yet (also: a terminal from outside the
/// tree without dump --shell-job, a TCP connection without dump
/// --tcp-established), 6 no such process or permission denied.
#[derive(Parser)]
#[command(name = "godwit", version, about, long_about)]
struct Cli {
    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a running process into an image directory.
    ///
    /// Every thread is frozen, the whole state is written to DIR (created
    /// 0700, files 0600), then the process is ended unless --leave-running.
    /// On any failure the process keeps running as it was.
    Dump {
        /// The process to checkpoint, with its descendants. Repeat it for
        /// several processes (say both ends of a pipeline): they are frozen
        /// together into one image, what they share stored once, and
        /// restored together.
        #[arg(long = "pid", required = true)]
        pids: Vec<i32>,
        /// Directory to write the image to (must not hold an image yet).
        #[arg(long, required_unless_present = "store")]
        images: Option<PathBuf>,
        /// Write the image into this checkpoint store instead (see `godwit
        /// checkpoints`): memory already stored there is not stored again.
        #[arg(long, conflicts_with = "images")]
        store: Option<PathBuf>,
        /// With --store: the checkpoint's name (default PID-MILLISECONDS).
        #[arg(long, requires = "store")]
        checkpoint: Option<String>,
        /// Let the process continue after the checkpoint. Its memory is
        /// copied while it runs; it is stopped only to copy what it wrote
        /// meanwhile (or, if it writes faster than that, for a copy-on-write
        /// snapshot).
        #[arg(long)]
        leave_running: bool,
        /// Do not fsync the image (faster; for images on tmpfs).
        #[arg(long)]
        no_sync: bool,
        /// With --leave-running: keep the process frozen for the whole copy
        /// (no pre-copy, no copy-on-write snapshot).
        #[arg(long, requires = "leave_running")]
        no_cow: bool,
        /// With --leave-running: no copy while the process runs; its memory
        /// is snapshotted copy-on-write at the freeze (for a process that
        /// writes faster than it can be copied).
        #[arg(long, requires = "leave_running", conflicts_with = "no_cow")]
        no_precopy: bool,
        /// Freeze this cgroup v2 directory while the process tree is seized,
        /// so that none of its processes runs or forks meanwhile.
        #[arg(long, value_name = "DIR")]
        freeze_cgroup: Option<PathBuf>,
        /// Allow a process started from a terminal whose master side is
        /// outside the dumped tree (an interactive shell's terminal, tmux,
        /// ssh): its fds on that terminal are attached, on restore, to the
        /// terminal of `godwit restore --shell-job`. Without it such a
        /// process is refused. Ptys whose master is inside the tree need no
        /// flag.
        #[arg(long)]
        shell_job: bool,
        /// Move established TCP connections (IPv4/IPv6) with TCP_REPAIR:
        /// sequence numbers, unread and unacknowledged data and negotiated
        /// options are saved, and the connection is held back by firewall
        /// rules (nf_tables table `godwit`) until `godwit restore
        /// --tcp-established` brings it back, so its peer sees no reset.
        /// Without it a process with a connection is refused.
        #[arg(long)]
        tcp_established: bool,
        /// The most data (in bytes; holes of a sparse file not counted)
        /// kept of one file that was deleted while open; a bigger one is
        /// refused, naming it. Default: 64 MiB. Files above 1 MiB of data
        /// are stored in the page file.
        #[arg(long, value_name = "BYTES")]
        max_deleted_file_size: Option<u64>,
        /// With --store and --leave-running: take N checkpoints, --every
        /// MS apart, named CHECKPOINT-1 ... CHECKPOINT-N. The pages' write
        /// tracking stays armed between them, so each after the first
        /// copies and stores only the pages written since the previous one
        /// (whose page files it takes by reference: an incremental
        /// checkpoint). A checkpoint falls back to a full one when the
        /// process tree changed or its page stream holds more stale copies
        /// than live pages.
        #[arg(long, value_name = "N", requires_all = ["store", "leave_running"])]
        series: Option<u32>,
        /// With --series: milliseconds between the checkpoints (from the
        /// end of one to the start of the next).
        #[arg(long, value_name = "MS", requires = "series", default_value_t = 1000)]
        every: u64,
    },
    /// Restore a process from an image, with the same PID and thread IDs.
    ///
    /// Returns once the process runs, detached (its parent is init or the
    /// nearest subreaper), and prints its PID. With --shell-job it prints the
    /// PID and returns when the process exits.
    Restore {
        /// The image directory written by `godwit dump`.
        #[arg(long, required_unless_present = "store")]
        images: Option<PathBuf>,
        /// Restore checkpoint --checkpoint of this checkpoint store instead.
        #[arg(long, conflicts_with = "images", requires = "checkpoint")]
        store: Option<PathBuf>,
        /// With --store: the checkpoint to restore.
        #[arg(long, requires = "store")]
        checkpoint: Option<String>,
        /// Restore even if files the process uses changed size since the dump.
        #[arg(long)]
        allow_file_changes: bool,
        /// Restore into a new PID namespace (with its own /proc), so the
        /// processes keep their PIDs even when those are taken on this host.
        /// The namespace's PID 1 is a small godwit init that reaps orphans;
        /// the host PID of the root is printed (and "pid" / "host_pid" with
        /// --json). Needs root.
        #[arg(long, conflicts_with = "shell_job")]
        pid_ns: bool,
        /// Restore a shell job (dump --shell-job): the fds that were on the
        /// process's terminal are attached to the terminal on godwit's
        /// standard input (refused if it is none), and the process joins
        /// godwit's session and process group (it cannot lead a session it
        /// does not own). The terminal settings saved in the image are
        /// applied to that terminal, the window size is the terminal's own.
        /// godwit then stays in the foreground until the restored process
        /// exits, so that the shell keeps the job in the foreground and
        /// Ctrl-C / Ctrl-Z reach it.
        #[arg(long)]
        shell_job: bool,
        /// With --shell-job: leave your terminal's settings as they are
        /// instead of applying those saved in the image.
        #[arg(long, requires = "shell_job")]
        leave_termios: bool,
        /// Restore the established TCP connections of an image dumped with
        /// --tcp-established (refused without it), and lift the firewall
        /// rules that held them back.
        #[arg(long)]
        tcp_established: bool,
        /// Put godwit's own fd N in place of every descriptor that was
        /// connected outside the dumped tree to KEY: a pipe or unix socket
        /// whose other end was not dumped (`prog | tee log`, a supervisor's
        /// pipes). KEY is what `godwit dump` printed and `godwit inspect`
        /// lists ("pipe:[INODE]", "socket:[INODE]"), or fd:PID:FD for that
        /// fd of a dumped process. The process's fd numbers, close-on-exec
        /// and O_NONBLOCK are kept; it shares godwit's open file description.
        /// Repeatable. Those not given get a stand-in that never kills the
        /// process (writes go to /dev/null, reads see end of file after the
        /// saved bytes), with a warning naming each (docs/SUPPORTED.md).
        #[arg(long, value_name = "N:KEY")]
        inherit_fd: Vec<godwit_engine::resources::external::Inherit>,
    },
    /// Move running processes to another node, with their PIDs.
    ///
    /// Connects to the destination's godwitd over TLS, authenticated by the
    /// token file, and streams the process tree there (no image file on
    /// either side unless --keep-image). The processes here are ended only
    /// once the destination runs them; any failure before that leaves them
    /// running here as they were. Prints where each process now runs.
    /// Exit codes as for dump, plus 4 when a PID is taken at the destination
    /// (use --pid-ns) and 7 when the link broke at the switch-over (the
    /// source copy is then kept stopped; see the message).
    Migrate(migrate::MigrateArgs),
    /// Transparent processes of one node, through its godwitd: ps,
    /// checkpoint into the node's store, images, restore, rm.
    Node {
        /// The node agent (godwitd) to talk to.
        #[arg(long, default_value = "127.0.0.1:7420", env = "GODWIT_AGENT")]
        agent: String,
        /// File holding a token of the agent (mode 0600; the first token is
        /// used): `read` for ps and images, `operate` for the rest.
        #[arg(long, env = "GODWIT_TOKEN_FILE")]
        token_file: PathBuf,
        /// CA certificate (PEM) to verify the agent's certificate with (PKI mode).
        #[arg(long, env = "GODWIT_TLS_CA")]
        tls_ca: Option<PathBuf>,
        #[command(subcommand)]
        cmd: node::NodeCmd,
    },
    /// Every node the agent knows (itself and its peers): health, last
    /// heartbeat, load.
    Nodes {
        #[command(flatten)]
        agent: node::AgentArgs,
    },
    /// The processes and services the agent manages; --all-nodes: those of
    /// every node it knows, with where they run.
    Ps {
        #[command(flatten)]
        agent: node::AgentArgs,
        #[arg(long)]
        all_nodes: bool,
    },
    /// Protect a process of the agent's node: checkpointed every --every
    /// seconds (a short freeze) into its store and copied to --replicas
    /// peers; if the node dies, the first live peer holding a copy restores
    /// it. Without --pid: what the agent protects and holds.
    Protect {
        #[command(flatten)]
        agent: node::AgentArgs,
        #[arg(long)]
        pid: Option<i32>,
        #[arg(long, default_value_t = 10.0)]
        every: f64,
        #[arg(long, default_value_t = 1)]
        replicas: u64,
    },
    /// Start PROGRAM on this machine, detached, and have the agent (which
    /// must run on this machine) manage it; with --protect, protect it (see
    /// `godwit protect`). Its output goes to --log (default /dev/null).
    Run {
        #[command(flatten)]
        agent: node::AgentArgs,
        #[arg(long)]
        protect: bool,
        #[arg(long, default_value_t = 10.0)]
        every: f64,
        #[arg(long, default_value_t = 1)]
        replicas: u64,
        #[arg(long)]
        log: Option<PathBuf>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Load balancing across the nodes: the plan now (every node's moves,
    /// with why, and why not more), the moves this node made; --enable or
    /// --disable switches this node's balancer (each node moves only its own
    /// processes).
    Balance {
        #[command(flatten)]
        agent: node::AgentArgs,
        /// Show the plan only (the default without --enable/--disable).
        #[arg(long, conflicts_with_all = ["enable", "disable"])]
        dry_run: bool,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Conformist services (the high-level SDK): start, stop, restore, freeze,
    /// thaw, list, checkpoint(s), migrate.
    Service {
        /// The node agent (godwitd) to talk to.
        #[arg(long, default_value = "127.0.0.1:7420", env = "GODWIT_AGENT")]
        agent: String,
        /// File holding the agent's API token (mode 0600; the first token is used).
        #[arg(long, env = "GODWIT_TOKEN_FILE")]
        token_file: PathBuf,
        /// CA certificate (PEM) to verify the agents' certificates with (PKI mode).
        #[arg(long, env = "GODWIT_TLS_CA")]
        tls_ca: Option<PathBuf>,
        #[command(subcommand)]
        cmd: godwit_agent_client::ServiceCmd,
    },
    /// A checkpoint store: ls, rm, export, import, gc.
    Checkpoints(checkpoints::CheckpointsArgs),
    /// Show what an image holds: process, threads, memory map, files, signals.
    Inspect {
        /// The image directory.
        dir: PathBuf,
        /// Also list every memory mapping and file descriptor.
        #[arg(long)]
        full: bool,
        /// Also read every page file and check its checksum (the manifest's
        /// is always checked); exit code 3 if one is corrupt.
        #[arg(long)]
        verify: bool,
    },
    /// Lift the firewall rules a `dump --tcp-established` left on the
    /// image's TCP connections, for an image you will not restore: the
    /// peers then get a reset at their next packet instead of waiting.
    /// (`restore --tcp-established` lifts them itself.)
    UnlockTcp {
        /// The image directory.
        #[arg(long)]
        images: PathBuf,
    },
}

/// A progress bar on stderr for long memory transfers (hidden when stderr is
/// not a terminal, and for small images).
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        Bar(ProgressBar::hidden())
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        if total >= 256 << 20 {
            self.0
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_style(
            ProgressStyle::with_template(
                "{msg:>18} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        self.0.set_message(name.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(m) = e.downcast_ref::<godwit_engine::migrate::MigrateError>() {
        return migrate::exit_code(m);
    }
    e.downcast_ref::<EngineError>().map_or(1, engine_exit_code)
}

fn engine_exit_code(e: &EngineError) -> u8 {
    match e {
        EngineError::Image(_) | EngineError::BadImage(_) | EngineError::CpuMismatch(_) => 3,
        EngineError::PidTaken { .. } | EngineError::SysvShmTaken { .. } => 4,
        EngineError::Unsupported { .. }
        | EngineError::NeedsShellJob { .. }
        | EngineError::NeedsTcpEstablished { .. } => 5,
        EngineError::ImageNeedsTcpEstablished(_) => 2,
        EngineError::Terminal(_) | EngineError::InheritFd(_) => 2,
        EngineError::NoSuchProcess { .. }
        | EngineError::PermissionDenied { .. }
        | EngineError::CouldNotRestore { .. } => 6,
        _ => 1,
    }
}

/// Descriptors connected outside the dumped tree, for --json.
pub(crate) fn externals_json(
    list: &[godwit_engine::resources::external::ExternalFd],
) -> serde_json::Value {
    godwit_engine::resources::external::to_json(list)
}

/// Runs `f` to completion on a runtime of this thread.
fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Dump {
            pids,
            images,
            store,
            checkpoint,
            leave_running,
            no_sync,
            no_cow,
            no_precopy,
            freeze_cgroup,
            shell_job,
            tcp_established,
            max_deleted_file_size,
            series,
            every,
        } => {
            let bar = Bar::new();
            let opts = DumpOptions {
                leave_running,
                no_sync,
                no_cow,
                no_precopy,
                freeze_cgroup,
                shell_job,
                tcp_established,
                max_deleted_file_size,
                max_frozen_copy: None,
            };
            if let (Some(n), Some(s)) = (series, &store) {
                let name = checkpoint
                    .clone()
                    .unwrap_or_else(|| checkpoints::default_id(pids[0]));
                let every = std::time::Duration::from_millis(every);
                let done = checkpoints::dump_series(&pids, s, &name, n, every, &opts, &bar)?;
                bar.0.finish_and_clear();
                let list: Vec<serde_json::Value> = done
                    .iter()
                    .map(|(r, id, parent)| {
                        serde_json::json!({
                            "checkpoint": id, "parent": parent,
                            "incremental": r.precopy.incremental,
                            "memory_bytes": r.memory_bytes, "image_bytes": r.image_bytes,
                            "frozen_ms": r.frozen.as_secs_f64() * 1e3,
                            "total_ms": r.total.as_secs_f64() * 1e3,
                            "bytes_running": r.precopy.bytes_running,
                            "bytes_frozen": r.precopy.bytes_frozen,
                            "bytes_linked": r.precopy.bytes_linked,
                        })
                    })
                    .collect();
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"pid": pids[0], "store": s, "series": list})
                    );
                } else {
                    for (r, id, _) in &done {
                        println!(
                            "checkpoint {id}: {}, {:.1} MiB copied ({:.1} MiB of the previous one taken by reference) in {:.1} ms (frozen {:.1} ms)",
                            if r.precopy.incremental { "incremental" } else { "full" },
                            (r.precopy.bytes_running + r.precopy.bytes_frozen) as f64 / (1 << 20) as f64,
                            r.precopy.bytes_linked as f64 / (1 << 20) as f64,
                            r.total.as_secs_f64() * 1e3,
                            r.frozen.as_secs_f64() * 1e3,
                        );
                    }
                }
                return Ok(());
            }
            let (r, target, saved) = match (&store, &images) {
                (Some(s), _) => {
                    let (r, id, parent) =
                        checkpoints::dump(&pids, s, checkpoint.as_deref(), &opts, &bar)?;
                    let target = format!("checkpoint {id} of the store {}", s.display());
                    (
                        r,
                        target,
                        serde_json::json!({"checkpoint": id, "parent": parent}),
                    )
                }
                (None, Some(dir)) => {
                    let r = dump(&pids, dir, &opts, &bar).map_err(anyhow::Error::from)?;
                    (r, dir.display().to_string(), serde_json::json!({}))
                }
                (None, None) => anyhow::bail!("give --images DIR or --store DIR"),
            };
            bar.0.finish_and_clear();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "pid": r.pid, "roots": r.roots, "processes": r.processes, "pids": r.pids, "threads": r.threads, "vmas": r.vmas,
                        "memory_bytes": r.memory_bytes, "image_bytes": r.image_bytes,
                        "frozen_ms": r.frozen.as_secs_f64() * 1e3,
                        "total_ms": r.total.as_secs_f64() * 1e3,
                        "images": images, "store": store, "checkpoint": saved["checkpoint"],
                        "parent": saved["parent"], "left_running": leave_running,
                        "precopy": {
                            "processes": r.precopy.processes, "rounds": r.precopy.rounds,
                            "bytes_running": r.precopy.bytes_running,
                            "bytes_frozen": r.precopy.bytes_frozen,
                        },
                        "externals": externals_json(&r.externals),
                        "terminals": r.outside_terminals.iter().map(|t| serde_json::json!({
                            "pid": t.pid, "fd": t.fd, "key": t.key, "terminal": t.name,
                        })).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "dumped process{} {} ({} processes, {} threads, {} mappings, {} MiB of memory) to {} in {:.1} ms (frozen {:.1} ms){}",
                    if r.roots.len() > 1 { "es" } else { "" },
                    r.roots.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                    r.processes,
                    r.threads,
                    r.vmas,
                    r.memory_bytes >> 20,
                    target,
                    r.total.as_secs_f64() * 1e3,
                    r.frozen.as_secs_f64() * 1e3,
                    if leave_running { "; it keeps running" } else { "; it was ended" }
                );
                for x in &r.externals {
                    println!(
                        "process {} fd {}: {} {} is connected outside the dumped tree{}; restore with --inherit-fd N:{} (or N:fd:{}:{}) to connect your fd N in its place, or it becomes {}",
                        x.pid,
                        x.fd,
                        x.what,
                        x.key,
                        match (x.saved, x.unread) {
                            (0, 0) => String::new(),
                            (s, 0) => format!(" ({s} unread bytes saved)"),
                            (_, u) => format!(" ({u} unread bytes not saved: they stay in it)"),
                        },
                        x.key,
                        x.pid,
                        x.fd,
                        godwit_engine::resources::external::default_for(x)
                    );
                }
                for t in &r.outside_terminals {
                    println!(
                        "process {} fd {}: on {} ({}), a terminal outside the dumped tree; restore with --shell-job (the terminal godwit restore runs on) or --inherit-fd N:{} (or N:fd:{}:{}) to give your terminal fd N in its place",
                        t.pid, t.fd, t.name, t.key, t.key, t.pid, t.fd
                    );
                }
            }
        }
        Cmd::Restore {
            images,
            store,
            checkpoint,
            allow_file_changes,
            pid_ns,
            shell_job,
            leave_termios,
            tcp_established,
            inherit_fd,
        } => {
            let bar = Bar::new();
            let opts = RestoreOptions {
                allow_file_changes,
                pid_ns,
                shell_job,
                leave_termios,
                tcp_established,
                inherit_fds: inherit_fd,
            };
            let r = match (&store, &checkpoint, &images) {
                (Some(s), Some(id), _) => checkpoints::restore(s, id, &opts, &bar)?,
                (_, _, Some(dir)) => restore(dir, &opts, &bar).map_err(anyhow::Error::from)?,
                _ => anyhow::bail!("give --images DIR or --store DIR --checkpoint ID"),
            };
            bar.0.finish_and_clear();
            for u in &r.externals {
                if u.inherited.is_none() {
                    eprintln!(
                        "godwit: warning: {}",
                        godwit_engine::resources::external::warning(
                            &u.fd,
                            godwit_engine::resources::external::NOT_GIVEN
                        )
                    );
                }
                if let Some(lost) = &u.lost {
                    eprintln!(
                        "godwit: warning: process {} fd {} ({}): {lost}",
                        u.fd.pid, u.fd.fd, u.fd.key
                    );
                }
            }
            if cli.json {
                let externals: Vec<_> = r
                    .externals
                    .iter()
                    .map(|u| {
                        serde_json::json!({
                            "pid": u.fd.pid, "fd": u.fd.fd, "key": u.fd.key, "what": u.fd.what,
                            "inherited_from": u.inherited,
                            "replaced_by": u.inherited.is_none().then(|| godwit_engine::resources::external::default_for(&u.fd)),
                            "lost": u.lost,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "pid": r.pid, "host_pid": r.host_pid, "ns_init": r.ns_init,
                        "roots": r.roots.iter().map(|(p, h)| serde_json::json!({"pid": p, "host_pid": h})).collect::<Vec<_>>(),
                        "processes": r.processes, "threads": r.threads, "memory_bytes": r.memory_bytes,
                        "total_ms": r.total.as_secs_f64() * 1e3,
                        "externals": externals,
                    })
                );
            } else {
                if let Some(init) = r.ns_init {
                    eprintln!(
                        "restored as PID {} in a new PID namespace (host PID {}; the namespace's init is host PID {init})",
                        r.pid, r.host_pid
                    );
                }
                // One line per root (the first is the image's first).
                for (_, host) in &r.roots {
                    println!("{host}");
                }
            }
            if shell_job {
                // Stay the foreground job until the restored process ends.
                std::io::Write::flush(&mut std::io::stdout()).context("writing the PID")?;
                godwit_sys::process::wait_exit(r.host_pid)
                    .with_context(|| format!("waiting for process {} to exit", r.host_pid))?;
            }
        }
        Cmd::Service {
            agent,
            token_file,
            tls_ca,
            cmd,
        } => {
            let token = godwit_agent_client::load_token(&token_file)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(godwit_agent_client::run_service_cmd(
                cmd,
                &agent,
                token,
                tls_ca.as_deref(),
                cli.json,
            ))?;
        }
        Cmd::UnlockTcp { images } => {
            let (ck, _) = godwit_engine::load(&images).map_err(anyhow::Error::from)?;
            let done = godwit_engine::resources::sockets::tcp::unlock_image(&ck)
                .map_err(anyhow::Error::from)?;
            if cli.json {
                let v: Vec<_> = done
                    .iter()
                    .map(|(c, found)| serde_json::json!({"connection": c, "was_locked": found}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if done.is_empty() {
                println!("the image holds no TCP connection");
            } else {
                for (c, found) in &done {
                    let what = if *found { "unlocked" } else { "was not locked" };
                    println!("{c}: {what}");
                }
            }
        }
        Cmd::Node {
            agent,
            token_file,
            tls_ca,
            cmd,
        } => {
            let token = godwit_agent_client::load_token(&token_file)?;
            let agent = godwit_agent_client::Agent::with_ca(&agent, token, tls_ca.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(node::run(cmd, &agent, cli.json))?;
        }
        Cmd::Nodes { agent } => {
            let agent = agent.connect()?;
            block_on(node::nodes(&agent, cli.json))?;
        }
        Cmd::Ps { agent, all_nodes } => {
            let agent = agent.connect()?;
            block_on(node::ps(&agent, all_nodes, cli.json))?;
        }
        Cmd::Protect {
            agent,
            pid,
            every,
            replicas,
        } => {
            let agent = agent.connect()?;
            block_on(node::protect(&agent, pid, every, replicas, cli.json))?;
        }
        Cmd::Run {
            agent,
            protect,
            every,
            replicas,
            log,
            command,
        } => {
            let agent = agent.connect()?;
            let out = match &log {
                Some(p) => std::process::Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .with_context(|| format!("--log {}", p.display()))?,
                ),
                None => std::process::Stdio::null(),
            };
            let err = match &log {
                Some(p) => {
                    std::process::Stdio::from(std::fs::OpenOptions::new().append(true).open(p)?)
                }
                None => std::process::Stdio::null(),
            };
            // Its own process group; it outlives this command (then it is
            // re-parented), so the agent can checkpoint it like any process.
            let child = std::process::Command::new(&command[0])
                .args(&command[1..])
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {}", command[0]))?;
            let pid = child.id() as i32;
            block_on(async {
                agent
                    .request(
                        "adopt",
                        "POST",
                        &format!("/v1/processes/{pid}/adopt"),
                        Some(serde_json::json!({})),
                        std::time::Duration::from_secs(10),
                    )
                    .await?;
                if protect {
                    node::protect(&agent, Some(pid), every, replicas, cli.json).await
                } else {
                    if cli.json {
                        println!("{}", serde_json::json!({"pid": pid}));
                    } else {
                        println!("{pid}");
                    }
                    Ok(())
                }
            })?;
        }
        Cmd::Balance {
            agent,
            enable,
            disable,
            ..
        } => {
            let agent = agent.connect()?;
            let switch = match (enable, disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            block_on(node::balance(&agent, switch, cli.json))?;
        }
        Cmd::Checkpoints(args) => checkpoints::run(args, cli.json)?,
        Cmd::Migrate(args) => {
            migrate::run(args, cli.json, &Bar::new())?;
        }
        Cmd::Inspect { dir, full, verify } => {
            let (ck, reader) = godwit_engine::load(&dir).map_err(anyhow::Error::from)?;
            let mut v = inspect::summary(&ck, &reader);
            let checked = verify.then(|| inspect::verify(&reader));
            if let Some(c) = &checked {
                v["verify"] = c.json();
            }
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&v).context("encoding JSON")?
                );
            } else {
                print!("{}", inspect::text(&v, full));
                if let Some(c) = &checked {
                    print!("{}", c.text());
                }
            }
            if let Some(e) = checked.and_then(|c| c.error(&dir)) {
                return Err(e.into());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GODWIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("godwit: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

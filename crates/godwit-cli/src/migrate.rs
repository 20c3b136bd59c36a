//! `godwit migrate`: moves running processes to another node's godwitd.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use godwit_engine::dump::DumpOptions;
use godwit_engine::migrate::{self, MigrateError, MigrateOptions, MigrateReport, Mode};
use godwit_net::{ChannelKind, ClientTls, Token};

/// How the memory moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[allow(clippy::enum_variant_names)] // the names are the mode names
pub enum ModeArg {
    /// Freeze, send everything, restore at the destination, resume there.
    StopCopy,
    /// Send the memory while the process runs (rounds of what it wrote
    /// meanwhile), then freeze for the rest.
    PreCopy,
    /// Resume at the destination at once; the private memory follows
    /// (fetched on first touch, pushed in the background). The source
    /// copy stays frozen until every page is across.
    PostCopy,
    /// Pre-copy rounds while the process runs, then post-copy for what it
    /// wrote since the last round.
    PreCopyPostCopy,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The process to move (with its descendants). Repeat to move several
    /// processes at once.
    #[arg(long = "pid", required = true)]
    pids: Vec<i32>,
    /// The destination's godwitd (ADDR:PORT).
    #[arg(long)]
    to: String,
    /// File holding a token the destination's godwitd accepts with the
    /// `operate` scope (mode 0600).
    #[arg(long, env = "GODWIT_TOKEN_FILE")]
    token_file: PathBuf,
    /// Verify the destination's certificate against this CA (PKI mode)
    /// instead of relying on the token binding alone.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// How the memory moves.
    #[arg(long, value_enum, default_value = "stop-copy")]
    mode: ModeArg,
    /// Restore into a new PID namespace at the destination, so the
    /// processes keep their PIDs even where those are taken.
    #[arg(long)]
    pid_ns: bool,
    /// Also keep the image at the destination, in this directory (under the
    /// destination godwitd's data directory).
    #[arg(long, value_name = "DIR")]
    keep_image: Option<String>,
    /// A service address (ADDR/PREFIX) that moves with the process: taken
    /// off this host's interface once the process is frozen, put on the
    /// destination's interface in the same subnet before the process (and
    /// its sockets) are restored there, and announced to the neighbours
    /// (gratuitous ARP / unsolicited neighbour advertisement). Put back
    /// here if the migration fails.
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = parse_move_ip)]
    move_ip: Option<(std::net::IpAddr, u8)>,
    /// Move established TCP connections too (TCP_REPAIR: sequence numbers,
    /// queues, options); their peers see a pause, no reset. Without it a
    /// process with a connection is refused. Pair it with --move-ip when
    /// the connections' address must follow (the usual case between hosts).
    #[arg(long)]
    tcp_established: bool,
    /// With --mode pre-copy: the longest stop the process should see. At the
    /// freeze, what each process wrote since its last copy is measured and,
    /// at the rate its pre-copy rounds reached the destination, would take
    /// longer than MS to send while it is stopped: those pages are then
    /// left at the source and follow the process (post-copy from the freeze
    /// on); the migration runs as pre-copy-post-copy, and the printed and
    /// --json mode say so. (The destination's restore no longer grows with
    /// memory: it fills it after the process runs.) A process that shares
    /// pages copy-on-write with its parent or children is sent whole. A
    /// writer whose rounds do not converge keeps its copies too (without
    /// this option it is sent from the freeze on, as stop-copy), and what
    /// it wrote since follows it. The stop's fixed part (freezing,
    /// collecting, the switch: about 10-20 ms) is not counted. Not with
    /// --keep-image (the image must hold all the memory).
    #[arg(long, value_name = "MS")]
    max_downtime: Option<u64>,
    /// Give up (and leave the process running here) when the destination
    /// does not answer for this long. (Once the process runs there, in
    /// post-copy, the copy here is kept stopped instead: exit code 7.)
    #[arg(long, value_name = "SECS", default_value = "60")]
    watchdog: u64,
    /// Freeze this cgroup v2 directory while the tree is seized.
    #[arg(long, value_name = "DIR")]
    freeze_cgroup: Option<PathBuf>,
    /// A descriptor connected outside the moved tree (a pipe to a process
    /// left here, `prog | tee log`) gets TARGET at the destination: a path
    /// there (a pipe's write end appends to that file, created 0644 if
    /// missing, or writes into that FIFO, which must have a reader; a read
    /// end reads it) or `null` (/dev/null). FD is the fd of the (first)
    /// --pid process; `fd:PID:FD:TARGET`, `pipe:[INODE]:TARGET` and
    /// `socket:[INODE]:TARGET` name others (a unix socket takes null only).
    /// A descriptor of this host cannot cross hosts. Those not given get
    /// /dev/null (or their saved bytes, then end of file), with a warning.
    /// Repeatable.
    #[arg(long = "inherit-fd", value_name = "FD:TARGET")]
    inherit_fds: Vec<godwit_engine::resources::external::RemoteInherit>,
}

fn parse_move_ip(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    migrate::parse_cidr(s).ok_or_else(|| format!("{s:?} is not ADDR/PREFIX (e.g. 10.0.0.5/24)"))
}

/// Exit code of a failed migration.
pub fn exit_code(e: &MigrateError) -> u8 {
    match e {
        MigrateError::Dump(engine) => crate::engine_exit_code(engine),
        MigrateError::Refused { reason, .. } if reason.contains("is in use") => 4,
        MigrateError::Uncertain { .. } | MigrateError::PostCopyLinkLost { .. } => 7,
        _ => 1,
    }
}

pub fn run(args: MigrateArgs, json_out: bool, progress: &crate::Bar) -> anyhow::Result<()> {
    let mode = match args.mode {
        ModeArg::StopCopy => Mode::StopCopy,
        ModeArg::PreCopy => Mode::PreCopy,
        ModeArg::PostCopy => Mode::PostCopy,
        ModeArg::PreCopyPostCopy => Mode::PreCopyPostCopy,
    };
    let token = Token::load(&args.token_file)?;
    let tls = ClientTls::new(token, args.tls_ca.as_deref())?;
    let watchdog = Duration::from_secs(args.watchdog.max(1));
    let opts = MigrateOptions {
        mode,
        pid_ns: args.pid_ns,
        dump: DumpOptions {
            freeze_cgroup: args.freeze_cgroup.clone(),
            tcp_established: args.tcp_established,
            max_frozen_copy: args.max_downtime.map(std::time::Duration::from_millis),
            ..Default::default()
        },
        watchdog,
        keep_image: args.keep_image.clone(),
        move_ip: args.move_ip,
        inherit_fds: args.inherit_fds.clone(),
    };
    // A tree moves whole: a PID given inside another's tree would be
    // dumped twice. Checked before anything is connected to.
    godwit_engine::dump::check_roots(&args.pids)?;
    // Several roots go in one image, frozen together, what they share
    // (pipes, sockets, memory) sent once (godwit_engine::dump::dump_to).
    let r = migrate_roots(&tls, &args.to, &args.pids, &opts, watchdog, progress);
    progress.0.finish_and_clear();
    let r = r?;
    let root = args.pids[0];
    for x in r
        .dump
        .externals
        .iter()
        .filter(|x| r.given_for(root, x).is_none())
    {
        eprintln!(
            "godwit: warning: {}",
            godwit_engine::resources::external::warning(
                x,
                godwit_engine::resources::external::MIGRATED
            )
        );
    }
    if json_out {
        println!("{}", r.to_json(&args.pids, &args.to));
        return Ok(());
    }
    let roots: Vec<(i32, i32)> = match r.roots.is_empty() {
        // A destination that does not list its roots has one.
        true => vec![(r.pid, r.host_pid)],
        false => r.roots.clone(),
    };
    let now: Vec<String> = roots
        .iter()
        .map(|&(pid, host)| match host != pid {
            true => format!("{pid} (host PID {host})"),
            false => pid.to_string(),
        })
        .collect();
    let given: Vec<String> = args.pids.iter().map(|p| p.to_string()).collect();
    println!(
        "moved process{} {} ({} process{}) to {}{}: now PID{} {} there; downtime {:.1} ms, {} MiB sent in {:.1} ms{}{}",
        if given.len() == 1 { "" } else { "es" },
        given.join(", "),
        r.pids.len(),
        if r.pids.len() == 1 { "" } else { "es" },
        args.to,
        if r.node != args.to { format!(" ({})", r.node) } else { String::new() },
        if now.len() == 1 { "" } else { "s" },
        now.join(", "),
        r.downtime.as_secs_f64() * 1e3,
        r.bytes_sent >> 20,
        r.total.as_secs_f64() * 1e3,
        if r.rounds > 0 { format!(", {} pre-copy round(s)", r.rounds) } else { String::new() },
        match r.all_pages_after {
            Some(d) => format!(
                "; post-copy: {} MiB followed, all across after {:.1} ms ({} faults fetched {} pages, {} pages pushed)",
                r.lazy_bytes >> 20,
                d.as_secs_f64() * 1e3,
                r.faults,
                r.fault_pages,
                r.pushed_pages
            ),
            None => String::new(),
        },
    );
    Ok(())
}

fn migrate_roots(
    tls: &ClientTls,
    to: &str,
    pids: &[i32],
    opts: &MigrateOptions,
    watchdog: Duration,
    progress: &crate::Bar,
) -> anyhow::Result<MigrateReport> {
    let stream = tls
        .connect_blocking(to, ChannelKind::Migration, Duration::from_secs(10))
        .with_context(|| {
            let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
            match list.len() {
                1 => format!(
                    "connecting to the destination {to}; process {} was not touched",
                    list[0]
                ),
                _ => format!(
                    "connecting to the destination {to}; processes {} were not touched",
                    list.join(", ")
                ),
            }
        })?;
    stream
        .tcp()
        .set_read_timeout(Some(watchdog))
        .context("setting the watchdog")?;
    stream
        .tcp()
        .set_write_timeout(Some(watchdog))
        .context("setting the watchdog")?;
    let _ = stream.tcp().set_nodelay(true);
    migrate::send(stream, to, pids, opts, progress).map_err(anyhow::Error::from)
}

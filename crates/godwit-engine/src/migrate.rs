//! Migration: a process tree moved to another node over one stream.
//!
//! The source ([`send`]) and the destination ([`receive`]) talk over any
//! byte stream both can read and write (in Godwit, an authenticated TLS
//! channel to the destination's godwitd). Messages are MESSAGE frames of
//! the image stream (godwit_image::stream) holding JSON:
//!
//! ```text
//! source                                    destination
//!   hello {mode, pids, pid_ns, ...}  ──────▶  checks the PIDs are free
//!                                   ◀──────  {ok} or {ok: false, error}
//!   [pre-copy: memory copied while the process runs]
//!   freeze; image frames ... COMMIT  ──────▶  into memory (no disk)
//!                                             restore, every process stopped
//!                                   ◀──────  ready {pid, host_pid}
//!   go                               ──────▶  processes run
//!                                   ◀──────  running {pid, host_pid, node}
//!   source processes ended
//! ```
//!
//! The source's processes stay frozen from the freeze until `running`
//! arrives, and are ended only then. Any failure before `go` is sent (the
//! destination refuses, its restore fails, the link breaks, a watchdog
//! fires) releases them: they run on at the source as they were, and the
//! destination kills whatever it had built. If the link breaks after `go`
//! and before `running`, the source cannot know whether the destination
//! runs its copy: it leaves its own copy stopped (SIGSTOP), never running
//! twice, and says so ([`MigrateError::Uncertain`]).
//!
//! **Post-copy** ([`Mode::PostCopy`], [`Mode::PreCopyPostCopy`]): the image
//! leaves out the private anonymous memory (`Vma::lazy`; after pre-copy
//! rounds, what was written since the last one), so the destination runs
//! the process as soon as the rest is restored. After `running` the same
//! stream carries page requests and pages (crate::postcopy): the
//! destination fetches faulting pages first and pulls the rest in the
//! background, until it says `done`; only then is the source's frozen copy
//! ended. Until then the source holds the only copy of the missing pages:
//!
//! (While the destination restores, before `ready`, the source also
//! answers page requests: a restore step may make the kernel touch memory
//! still at the source.)
//!
//! * the destination kills its copy (before closing its userfaultfds, so
//!   that no page is ever wrong) whenever it cannot go on: the source or
//!   the link gone, a page it cannot place; its error says so;
//! * when it can still tell the source (`failed`), the source resumes its
//!   frozen copy, which runs on ([`MigrateError::PostCopyResumed`]);
//! * when the link is lost, the source cannot know whether every page got
//!   across just before: it keeps its copy stopped, never running twice
//!   ([`MigrateError::PostCopyLinkLost`]).

use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_image::stream::{recv_message, send_abort, send_message, Received};
use godwit_image::{ImageReader, ImageWriter, StreamMedium};
use serde_json::{json, Value};

use crate::dump::{dump_to, DumpOptions, DumpReport, End};
use crate::error::EngineError;
use crate::resources::external::{self, RemoteInherit};
use crate::restore::{restore_from, RestoreOptions, RestoreReport};
use crate::Progress;

/// Version of the message protocol; a peer with another one is refused.
pub const PROTOCOL: u64 = 1;

/// How the memory moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Freeze, send everything, restore, resume.
    StopCopy,
    /// Send the memory while the process runs, in rounds that send what was
    /// written meanwhile; freeze for the rest.
    PreCopy,
    /// Freeze and send everything but the private anonymous memory; the
    /// process runs at the destination at once and those pages follow
    /// (fetched on first touch, pushed in the background: crate::postcopy).
    PostCopy,
    /// Pre-copy rounds while the process runs, then post-copy for what was
    /// written since the last round.
    PreCopyPostCopy,
}

impl Mode {
    /// The name used on the wire and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::StopCopy => "stop-copy",
            Mode::PreCopy => "pre-copy",
            Mode::PostCopy => "post-copy",
            Mode::PreCopyPostCopy => "pre-copy-post-copy",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [
            Mode::StopCopy,
            Mode::PreCopy,
            Mode::PostCopy,
            Mode::PreCopyPostCopy,
        ]
        .into_iter()
        .find(|m| m.name() == s)
    }

    /// Memory is copied while the process runs first.
    pub fn precopies(self) -> bool {
        matches!(self, Mode::PreCopy | Mode::PreCopyPostCopy)
    }

    /// Private anonymous memory follows the process (post-copy).
    pub fn lazy(self) -> bool {
        matches!(self, Mode::PostCopy | Mode::PreCopyPostCopy)
    }
}

/// What the source asks for.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub mode: Mode,
    /// Restore into a new PID namespace at the destination.
    pub pid_ns: bool,
    /// The dump's options (shell job, cgroup freeze, ...).
    pub dump: DumpOptions,
    /// Longest wait for any answer of the destination.
    pub watchdog: Duration,
    /// Ask the destination to keep a copy of the image in this directory
    /// (on the destination).
    pub keep_image: Option<String>,
    /// A service address that moves with the process: removed from this
    /// host's interface once the process is frozen, added to the
    /// destination's interface in the same subnet (and announced to the
    /// neighbours) before the process is restored there.
    pub move_ip: Option<(IpAddr, u8)>,
    /// `--inherit-fd`: what the destination connects in place of
    /// descriptors connected outside the tree (a path there, or null);
    /// the others get restore's stand-in, with a warning.
    pub inherit_fds: Vec<RemoteInherit>,
}

/// A service address taken off this host for a migration; put back on drop
/// unless the migration went through.
struct AddressOff {
    addr: godwit_sys::netaddr::IfAddr,
    armed: bool,
}

impl AddressOff {
    /// Finds `addr/prefix` on an interface of this host (before anything is
    /// touched: a wrong address is an error then).
    fn find(addr: IpAddr, prefix: u8) -> Result<godwit_sys::netaddr::IfAddr, MigrateError> {
        let all = godwit_sys::netaddr::addresses()
            .map_err(|e| MigrateError::Dump(EngineError::Migration(e.to_string())))?;
        all.into_iter()
            .find(|a| a.addr == addr)
            .map(|mut a| {
                a.prefix = prefix;
                a
            })
            .ok_or_else(|| {
                MigrateError::Dump(EngineError::Migration(format!(
                    "--move-ip {addr}/{prefix}: no interface of this host has that address"
                )))
            })
    }

    fn take_off(addr: godwit_sys::netaddr::IfAddr) -> Result<AddressOff, MigrateError> {
        godwit_sys::netaddr::del_address(addr.ifindex, addr.addr, addr.prefix).map_err(|e| {
            MigrateError::Dump(EngineError::Migration(format!(
                "--move-ip: taking {}/{} off {}: {e}",
                addr.addr, addr.prefix, addr.ifname
            )))
        })?;
        tracing::debug!(addr = %addr.addr, ifname = %addr.ifname, "service address taken off");
        Ok(AddressOff { addr, armed: true })
    }

    fn keep_off(mut self) {
        self.armed = false;
    }
}

impl Drop for AddressOff {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let a = &self.addr;
        let back = godwit_sys::netaddr::add_address(a.ifindex, a.addr, a.prefix)
            .and_then(|()| godwit_sys::netaddr::announce(a.ifindex, a.addr));
        match back {
            Ok(()) => {
                tracing::info!(addr = %a.addr, ifname = %a.ifname, "service address put back")
            }
            Err(e) => tracing::error!(
                addr = %a.addr, ifname = %a.ifname,
                "could not put the service address back: {e}; add it by hand (ip addr add {}/{} dev {})",
                a.addr, a.prefix, a.ifname
            ),
        }
    }
}

/// How a migration went, phase by phase.
#[derive(Debug, Clone)]
pub struct MigrateReport {
    pub mode: Mode,
    /// The PIDs moved (parents first).
    pub pids: Vec<i32>,
    /// The root's PID as the process sees it at the destination.
    pub pid: i32,
    /// The root's PID in the destination's own PID namespace (differs with
    /// --pid-ns).
    pub host_pid: i32,
    /// Every root moved (`pid` first) as (PID, host PID) at the destination.
    pub roots: Vec<(i32, i32)>,
    /// The destination node as it names itself.
    pub node: String,
    /// From the freeze until the destination's copy ran.
    pub downtime: Duration,
    /// Post-copy: from the freeze until every page was across (the
    /// source's copy is ended then).
    pub all_pages_after: Option<Duration>,
    pub total: Duration,
    /// Bytes written to the stream (frames and messages included; with
    /// post-copy, the pages sent after the process ran too).
    pub bytes_sent: u64,
    /// Pre-copy rounds (0 for stop-copy).
    pub rounds: usize,
    pub memory_bytes: u64,
    /// Post-copy: bytes left out of the image, sent after the process ran.
    pub lazy_bytes: u64,
    /// Post-copy: faults the destination served with pages from here, the
    /// pages sent for them (with the window around each), and the pages
    /// pushed in the background.
    pub faults: u64,
    pub fault_pages: u64,
    pub pushed_pages: u64,
    /// (phase, duration), in order.
    pub phases: Vec<(&'static str, Duration)>,
    pub dump: DumpReport,
    /// The `--inherit-fd`s the destination connected.
    pub inherit_fds: Vec<RemoteInherit>,
}

impl MigrateReport {
    /// The report as `godwit migrate --json` and the agent's API give it:
    /// `roots` as given, `to` the destination as addressed.
    pub fn to_json(&self, roots: &[i32], to: &str) -> Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "ok": true,
            "pid": roots.first(),
            "roots": roots,
            "dest_roots": self.roots.iter().map(|(p, h)| json!({"pid": p, "host_pid": h})).collect::<Vec<_>>(),
            "pids": self.pids,
            "mode": self.mode.name(),
            "to": to,
            "node": self.node,
            "dest_pid": self.pid,
            "dest_host_pid": self.host_pid,
            "downtime_ms": ms(self.downtime),
            "total_ms": ms(self.total),
            "bytes_sent": self.bytes_sent,
            "memory_bytes": self.memory_bytes,
            "rounds": self.rounds,
            "lazy_bytes": self.lazy_bytes,
            "all_pages_ms": self.all_pages_after.map(ms),
            "faults": self.faults,
            "fault_pages": self.fault_pages,
            "pushed_pages": self.pushed_pages,
            "phases": self.phases.iter().map(|(name, d)| json!({"phase": name, "ms": ms(*d)})).collect::<Vec<_>>(),
            "externals": self.externals_json(roots),
        })
    }

    /// The descriptors connected outside the tree, each with what it is at
    /// the destination (`at_destination`: an --inherit-fd's target, else
    /// the default stand-in).
    fn externals_json(&self, roots: &[i32]) -> Value {
        let list = &self.dump.externals;
        let root = roots.first().copied().unwrap_or(0);
        let mut v = external::to_json(list);
        if let Some(items) = v.as_array_mut() {
            for (item, x) in items.iter_mut().zip(list) {
                item["at_destination"] = match self.given_for(root, x) {
                    Some(g) => json!(match &g.target {
                        external::Target::Null => "/dev/null".to_string(),
                        external::Target::Path(p) => p.clone(),
                    }),
                    None => json!(external::default_for(x)),
                };
            }
        }
        v
    }

    /// The `--inherit-fd` that connected `x` at the destination, if any
    /// (`root`: the first root's PID).
    pub fn given_for(&self, root: i32, x: &external::ExternalFd) -> Option<RemoteInherit> {
        external::given_for(&self.dump.externals, root, &self.inherit_fds, x)
    }
}

/// Why a migration did not happen. Except for `Uncertain` and
/// `PostCopyLinkLost`, the processes run on at the source as they were.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}; the process was left running at the source")]
    Dump(#[source] EngineError),
    #[error("the destination {peer} refused the migration: {reason}; the process was left running at the source")]
    Refused { peer: String, reason: String },
    #[error("the destination {peer} could not restore the process: {reason}; the process was left running at the source")]
    RestoreFailed { peer: String, reason: String },
    #[error("the connection to {peer} failed while {stage}: {detail}; the process was left running at the source")]
    Link {
        peer: String,
        stage: &'static str,
        detail: String,
    },
    #[error("the connection to {peer} failed after the destination was told to start the process ({detail}): it may be running there. The source copy (PIDs {pids:?}) is kept STOPPED so that it never runs twice (its TCP connections, if any, stay locked in repair mode): check the destination (godwit node ps there); if the process does not run there, migrate the stopped copy again or kill it; if it does, kill the source copy")]
    Uncertain {
        peer: String,
        detail: String,
        pids: Vec<i32>,
    },
    #[error("post-copy to {peer} failed after the process had started there: {reason}. The destination killed its copy (it could not go on without the memory still here); the source copy (PIDs {pids:?}) was resumed and runs on here")]
    PostCopyResumed {
        peer: String,
        reason: String,
        pids: Vec<i32>,
    },
    #[error("the connection to {peer} failed during post-copy ({detail}) while part of the memory was still only here. The destination kills its copy when it loses the source before every page is across, but it may have got them all just before. The source copy (PIDs {pids:?}) is kept STOPPED so that it never runs twice: if the process does not run at the destination (godwit ps there), `kill -CONT` the source copy, else kill it")]
    PostCopyLinkLost {
        peer: String,
        detail: String,
        pids: Vec<i32>,
    },
}

impl MigrateError {
    /// The engine error behind a refused dump, if that is what happened.
    pub fn engine(&self) -> Option<&EngineError> {
        match self {
            MigrateError::Dump(e) => Some(e),
            _ => None,
        }
    }
}

fn link(peer: &str, stage: &'static str, e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Link {
        peer: peer.to_string(),
        stage,
        detail: e.to_string(),
    }
}

/// Reads the next message (JSON), or what the peer gave up with.
fn recv_json<S: Read>(s: &Mutex<S>, peer: &str) -> Result<Result<Value, String>, String> {
    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
    match recv_message(&mut *s, std::path::Path::new(peer)) {
        Ok(Received::Message(m)) => serde_json::from_slice(&m)
            .map(Ok)
            .map_err(|e| format!("an unreadable message: {e}")),
        Ok(Received::Abort(why)) => Ok(Err(why)),
        Err(e) => Err(e.to_string()),
    }
}

fn send_json<S: Write>(s: &Mutex<S>, v: &Value) -> std::io::Result<()> {
    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
    send_message(&mut *s, v.to_string().as_bytes())
}

/// An answer that says no: its error text.
fn refusal(v: &Value) -> Option<String> {
    (v["ok"] != json!(true)).then(|| v["error"].as_str().unwrap_or("no reason given").to_string())
}

/// Moves each process of `roots` and its descendants to the destination at
/// the other end of `stream` (`peer` names it in messages), in one image
/// (see [`dump_to`]). Returns once the destination runs them and the
/// source's copies are ended.
pub fn send<S: Read + Write + Send + 'static>(
    stream: S,
    peer: &str,
    roots: &[i32],
    opts: &MigrateOptions,
    progress: &dyn Progress,
) -> Result<MigrateReport, MigrateError> {
    let t0 = Instant::now();
    let mut phases = Vec::new();
    let mut pids = Vec::new();
    for &pid in roots {
        pids.extend(tree_pids(pid).map_err(MigrateError::Dump)?);
    }
    let service_addr = opts
        .move_ip
        .map(|(a, p)| AddressOff::find(a, p))
        .transpose()?;
    let s = Arc::new(Mutex::new(stream));
    let hello = json!({
        "godwit_migrate": PROTOCOL,
        "mode": opts.mode.name(),
        "pids": pids,
        "pid_ns": opts.pid_ns,
        "keep_image": opts.keep_image,
        "move_ip": opts.move_ip.map(|(a, p)| format!("{a}/{p}")),
        "tcp_established": opts.dump.tcp_established,
        "source_node": hostname(),
        "inherit_fds": opts.inherit_fds.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    send_json(&s, &hello).map_err(|e| link(peer, "saying hello", e))?;
    match recv_json(&s, peer).map_err(|e| link(peer, "waiting for the hello's answer", e))? {
        Ok(v) => {
            if let Some(reason) = refusal(&v) {
                return Err(MigrateError::Refused {
                    peer: peer.into(),
                    reason,
                });
            }
            // An older destination would ignore them silently.
            if !opts.inherit_fds.is_empty() && v["inherit_fds"] != json!(true) {
                return Err(MigrateError::Refused {
                    peer: peer.into(),
                    reason: "its godwitd does not take --inherit-fd (an older version)".into(),
                });
            }
        }
        Err(why) => {
            return Err(MigrateError::Refused {
                peer: peer.into(),
                reason: why,
            })
        }
    }
    phases.push(("negotiate", t0.elapsed()));

    let medium = StreamMedium::new(s.clone(), peer);
    let counter = medium.counter();
    let writer = ImageWriter::to_medium(Box::new(medium))
        .writer_name(concat!("godwit ", env!("CARGO_PKG_VERSION")));
    let end = End::Hold {
        precopy: opts.mode.precopies(),
        lazy: opts.mode.lazy(),
    };
    let t_dump = Instant::now();
    // A kept image must hold all the memory: nothing may be left lazy.
    let mut dump_opts = opts.dump.clone();
    if opts.keep_image.is_some() || !opts.mode.precopies() {
        dump_opts.max_frozen_copy = None;
    }
    let (report, held) = dump_to(roots, writer, &dump_opts, progress, end).map_err(|e| {
        // The writer told the destination (ABORT); the processes run on.
        MigrateError::Dump(e)
    })?;
    let held = held.ok_or_else(|| {
        MigrateError::Dump(EngineError::Migration(
            "the dump did not keep the processes frozen".into(),
        ))
    })?;
    let frozen_at = held.frozen_at;
    // Pre-copy whose last writes would take too long to send frozen
    // (DumpOptions::max_frozen_copy) left them lazy: it goes on as
    // pre-copy-post-copy.
    let mode = match (opts.mode, report.lazy_bytes > 0) {
        (Mode::PreCopy, true) => Mode::PreCopyPostCopy,
        (m, _) => m,
    };
    phases.push(("precopy", frozen_at.saturating_duration_since(t_dump)));
    phases.push(("frozen: dump and send", frozen_at.elapsed()));
    tracing::debug!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        bytes = counter.load(Ordering::Relaxed),
        "image sent"
    );

    // Dropping `held` on any error below releases the processes, after the
    // service address is put back (declared after `held`, dropped before).
    let address_off = service_addr.map(AddressOff::take_off).transpose()?;
    let t_restore = Instant::now();
    let mut pages = crate::postcopy::PageServer::new(&held.pids);
    let ready = loop {
        match recv_json(&s, peer) {
            Err(e) => return Err(link(peer, "waiting for the destination's restore", e)),
            Ok(Err(why)) => {
                return Err(MigrateError::RestoreFailed {
                    peer: peer.into(),
                    reason: why,
                })
            }
            // Post-copy: the restore touched memory that is still here.
            Ok(Ok(v)) if mode.lazy() && v["want"].is_array() => {
                let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
                pages
                    .answer(&mut *g, peer, &v)
                    .map_err(|e| link(peer, "serving a page to the destination's restore", e))?;
            }
            Ok(Ok(v)) => break v,
        }
    };
    if let Some(reason) = refusal(&ready) {
        return Err(MigrateError::RestoreFailed {
            peer: peer.into(),
            reason,
        });
    }
    phases.push(("restore", t_restore.elapsed()));
    let t_switch = Instant::now();
    if let Err(e) = send_json(&s, &json!({"ok": true, "go": true})) {
        // Not sent, or sent and not known: in doubt, no second copy (and
        // the address stays with the destination, which may run it).
        if let Some(a) = address_off {
            a.keep_off();
        }
        let _ = held.release_stopped();
        return Err(MigrateError::Uncertain {
            peer: peer.into(),
            detail: e.to_string(),
            pids: report.pids.clone(),
        });
    }
    let running = match recv_json(&s, peer) {
        Ok(Ok(v)) if refusal(&v).is_none() => v,
        Ok(Ok(v)) => {
            // The destination says it did not start them: run on here.
            return Err(MigrateError::RestoreFailed {
                peer: peer.into(),
                reason: refusal(&v).unwrap_or_default(),
            });
        }
        Ok(Err(why)) => {
            return Err(MigrateError::RestoreFailed {
                peer: peer.into(),
                reason: why,
            })
        }
        Err(e) => {
            let pids = report.pids.clone();
            if let Some(a) = address_off {
                a.keep_off();
            }
            let _ = held.release_stopped();
            return Err(MigrateError::Uncertain {
                peer: peer.into(),
                detail: e,
                pids,
            });
        }
    };
    let downtime = frozen_at.elapsed();
    phases.push(("switch over", t_switch.elapsed()));
    let mut all_pages_after = None;
    let mut counts = Value::Null;
    if mode.lazy() {
        // The destination runs; its memory still partly here.
        let t_post = Instant::now();
        match crate::postcopy::serve(&s, peer, &mut pages) {
            Ok(crate::postcopy::Served::Done(v)) => counts = v,
            Ok(crate::postcopy::Served::Failed(why)) => {
                let pids = held.pids.clone();
                if let Err(e) = held.release() {
                    tracing::warn!("resuming the source processes: {e}");
                }
                return Err(MigrateError::PostCopyResumed {
                    peer: peer.into(),
                    reason: why,
                    pids,
                });
            }
            Err(e) => {
                let pids = held.pids.clone();
                if let Some(a) = address_off {
                    a.keep_off();
                }
                let _ = held.release_stopped();
                return Err(MigrateError::PostCopyLinkLost {
                    peer: peer.into(),
                    detail: e,
                    pids,
                });
            }
        }
        all_pages_after = Some(frozen_at.elapsed());
        phases.push(("post-copy", t_post.elapsed()));
    }
    if let Some(a) = address_off {
        a.keep_off();
    }
    let sent = held.checkpoint.clone();
    if let Err(e) = held.kill() {
        tracing::warn!("ending the source processes: {e}");
    }
    // Their connections run at the destination: the locks that kept this
    // host from answering their peers go (the sockets went with the processes).
    if let Err(e) = crate::resources::sockets::tcp::unlock_image(&sent) {
        tracing::warn!("lifting the network locks of the moved connections: {e}");
    }
    if mode.lazy() {
        // Best effort: the destination needs nothing more from here.
        let _ = send_json(&s, &json!({"ok": true, "ended": true}));
    }
    Ok(MigrateReport {
        mode,
        pids: report.pids.clone(),
        pid: running["pid"].as_i64().unwrap_or(0) as i32,
        host_pid: running["host_pid"].as_i64().unwrap_or(0) as i32,
        roots: serde_json::from_value(running["roots"].clone()).unwrap_or_default(),
        node: running["node"].as_str().unwrap_or("").to_string(),
        downtime,
        all_pages_after,
        total: t0.elapsed(),
        bytes_sent: counter.load(Ordering::Relaxed) + pages.sent,
        rounds: report.precopy.rounds,
        memory_bytes: report.memory_bytes,
        lazy_bytes: report.lazy_bytes,
        faults: counts["faults"].as_u64().unwrap_or(0),
        fault_pages: counts["fault_pages"].as_u64().unwrap_or(0),
        pushed_pages: counts["pushed_pages"].as_u64().unwrap_or(0),
        phases,
        dump: report,
        inherit_fds: opts.inherit_fds.clone(),
    })
}

/// What the destination does with a migration it receives.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// Most bytes of image accepted (the memory they are held in).
    pub max_bytes: u64,
    /// This node's name, reported to the source.
    pub node: String,
    /// Always restore into a new PID namespace, whatever the source asks.
    pub force_pid_ns: bool,
    /// Directories the source may ask to keep an image in must be under
    /// this one (None: keeping images is refused).
    pub keep_root: Option<std::path::PathBuf>,
    /// Stop-copy and pre-copy: let the processes run before their large
    /// private anonymous areas are filled, and fill them from the received
    /// image afterwards (crate::deferred): the restore's part of the
    /// downtime no longer grows with memory. Off: everything is in place
    /// before they run. Some(n): when at least n bytes would be deferred
    /// ([`crate::deferred::MIN_BYTES`] is the default for agents).
    pub defer_fill: Option<u64>,
}

/// What the destination did.
#[derive(Debug, Clone)]
pub struct ReceiveReport {
    pub mode: String,
    pub restore: RestoreReport,
    pub bytes: u64,
    pub source_node: String,
    pub total: Duration,
    /// Post-copy, or a deferred fill: what the pager did (the processes
    /// ran from `restore.total` on; every page was in place after `total`).
    pub postcopy: Option<crate::postcopy::PagerStats>,
}

/// Receives a migration from the source at the other end of `stream` and
/// runs the processes here once the source says go. On any failure nothing
/// of them is left here, and the source is told why.
pub fn receive<S: Read + Write + Send + 'static>(
    stream: S,
    peer: &str,
    opts: &ReceiveOptions,
    progress: &dyn Progress,
) -> Result<ReceiveReport, EngineError> {
    let t0 = Instant::now();
    let s = Mutex::new(stream);
    let fail = |s: &Mutex<S>, msg: String| -> EngineError {
        let _ = send_json(s, &json!({"ok": false, "error": msg}));
        EngineError::Migration(msg)
    };
    let hello = match recv_json(&s, peer) {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return Err(EngineError::Migration(format!("the source gave up: {why}"))),
        Err(e) => return Err(EngineError::Migration(format!("reading the hello: {e}"))),
    };
    if hello["godwit_migrate"].as_u64() != Some(PROTOCOL) {
        return Err(fail(
            &s,
            format!(
                "protocol version {} not understood (this node speaks {PROTOCOL})",
                hello["godwit_migrate"]
            ),
        ));
    }
    let mode = hello["mode"].as_str().unwrap_or("").to_string();
    let Some(parsed) = Mode::parse(&mode) else {
        return Err(fail(&s, format!("unknown mode {mode:?}")));
    };
    if parsed.lazy() && hello["keep_image"].is_string() {
        return Err(fail(
            &s,
            format!("--keep-image cannot be used with {mode}: the image does not hold the memory that follows the process"),
        ));
    }
    let pid_ns = opts.force_pid_ns || hello["pid_ns"] == json!(true);
    let source_node = hello["source_node"].as_str().unwrap_or("?").to_string();
    let keep = match hello["keep_image"].as_str() {
        None => None,
        Some(dir) => match &opts.keep_root {
            Some(root) => {
                let p = std::path::Path::new(dir);
                if p.is_relative() || !p.starts_with(root) || dir.contains("..") {
                    return Err(fail(
                        &s,
                        format!(
                            "--keep-image {dir}: images can be kept only under {}",
                            root.display()
                        ),
                    ));
                }
                Some(p.to_owned())
            }
            None => return Err(fail(&s, "this node does not keep images".into())),
        },
    };
    let inherit: Vec<RemoteInherit> = match hello["inherit_fds"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap_or("").parse()).collect())
        .unwrap_or(Ok(Vec::new()))
    {
        Ok(v) => v,
        Err(why) => return Err(fail(&s, format!("--inherit-fd {why}"))),
    };
    let service_addr = match hello["move_ip"].as_str() {
        None => None,
        Some(text) => match place_for_address(text) {
            Ok(place) => Some(place),
            Err(why) => return Err(fail(&s, why)),
        },
    };
    if !pid_ns {
        let pids: Vec<i64> = hello["pids"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        if let Some(&taken) = pids
            .iter()
            .find(|&&p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            let holder = crate::resources::threads::holder_of(taken as i32);
            return Err(fail(
                &s,
                format!(
                    "PID {taken} is in use on node {} (by {holder}); migrate with --pid-ns, or free the PID there",
                    opts.node
                ),
            ));
        }
    }
    send_json(
        &s,
        &json!({"ok": true, "node": opts.node, "inherit_fds": true}),
    )
    .map_err(|e| EngineError::Migration(format!("answering the hello: {e}")))?;

    let image = {
        let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
        godwit_image::receive_image(&mut *g, peer, opts.max_bytes)
    };
    let image = match image {
        Ok(i) => i,
        Err(e) => {
            let msg = e.to_string();
            let mut g = s.lock().unwrap_or_else(|p| p.into_inner());
            send_abort(&mut *g, &msg);
            return Err(EngineError::Image(e));
        }
    };
    let bytes = image.total_bytes();
    tracing::debug!(
        ms = t0.elapsed().as_secs_f64() * 1e3,
        bytes,
        "image received"
    );
    if let Some(dir) = &keep {
        if let Err(e) = image.save(dir, true) {
            return Err(fail(
                &s,
                format!("keeping the image in {}: {e}", dir.display()),
            ));
        }
    }
    let reader = match ImageReader::from_source(Box::new(image)) {
        Ok(r) => r,
        Err(e) => return Err(fail(&s, e.to_string())),
    };
    // A pre-copy whose last writes the source left lazy (its
    // --max-downtime) goes on as post-copy.
    let ck = match reader.metadata::<crate::schema::Checkpoint>() {
        Ok(ck) => ck,
        Err(e) => return Err(fail(&s, e.to_string())),
    };
    let lazy_pages = ck
        .processes
        .iter()
        .any(|p| p.vmas.iter().any(|v| !v.lazy.is_empty()));
    // --inherit-fd: the targets opened here, held until the restore is done.
    let root = hello["pids"][0].as_i64().unwrap_or(0) as i32;
    let inherited = match external::open_at_destination(&ck.processes, root, &inherit) {
        Ok(v) => v,
        Err(e) => return Err(fail(&s, e.to_string())),
    };
    drop(ck);
    let parsed = match (parsed, lazy_pages) {
        (Mode::PreCopy, true) if keep.is_none() => Mode::PreCopyPostCopy,
        (m, _) => m,
    };
    let mode = parsed.name().to_string();
    // The service address, before the sockets bound to it are restored;
    // taken off again if the restore does not go through.
    let address_on = match service_addr {
        Some(place) => match AddressOn::put(place) {
            Ok(on) => Some(on),
            Err(why) => return Err(fail(&s, why)),
        },
        None => None,
    };
    let ropts = RestoreOptions {
        pid_ns,
        tcp_established: hello["tcp_established"] == json!(true),
        inherit_fds: inherited.iter().map(|(_, i)| i.clone()).collect(),
        ..Default::default()
    };
    let node = opts.node.clone();
    // Post-copy: pages the restore itself touches are fetched until the
    // gate (crate::postcopy::serve_restore).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sink = crate::postcopy::Sink::default();
    let gate = |host_pid: i32| -> Result<(), EngineError> {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        send_json(
            &s,
            &json!({"ok": true, "ready": true, "host_pid": host_pid}),
        )
        .map_err(|e| EngineError::Migration(format!("telling the source we are ready: {e}")))?;
        match recv_json(&s, peer) {
            Ok(Ok(v)) if v["go"] == json!(true) => Ok(()),
            Ok(Ok(v)) => Err(EngineError::Migration(format!(
                "the source did not say go: {v}"
            ))),
            Ok(Err(why)) => Err(EngineError::Migration(format!("the source gave up: {why}"))),
            Err(e) => Err(EngineError::Migration(format!(
                "waiting for the source's go: {e}"
            ))),
        }
    };
    let (restored, lazy, deferred) = if parsed.lazy() {
        let (r, lazy) = std::thread::scope(|sc| {
            let monitor = sc.spawn(|| {
                let mut feed = crate::postcopy::StreamFeed { s: &s, peer };
                crate::postcopy::serve_restore(&sink, &mut feed, &stop)
            });
            let r = crate::postcopy::collecting(&sink, || {
                restore_from(reader, &ropts, progress, &gate)
            });
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = monitor.join();
            r
        });
        (r, lazy, None)
    } else {
        match crate::restore::restore_deferring(reader, &ropts, progress, &gate, opts.defer_fill) {
            Ok((r, d)) => (Ok(r), Vec::new(), d),
            Err(e) => (Err(e), Vec::new(), None),
        }
    };
    drop(inherited);
    let restored = match restored {
        Ok(r) => {
            for (u, lost) in r
                .externals
                .iter()
                .filter_map(|u| u.lost.as_ref().map(|l| (u, l)))
            {
                tracing::warn!("process {} fd {} ({}): {lost}", u.fd.pid, u.fd.fd, u.fd.key);
            }
            for u in r.externals.iter().filter(|u| u.inherited.is_none()) {
                tracing::warn!(
                    "{}",
                    crate::resources::external::warning(
                        &u.fd,
                        crate::resources::external::MIGRATED
                    )
                );
            }
            r
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = send_json(&s, &json!({"ok": false, "error": msg}));
            return Err(e);
        }
    };
    // In post-copy the address stays ours only once every page is here: a
    // failure before that kills the processes and gives it back.
    let address_on = match address_on {
        Some(on) if !parsed.lazy() => {
            on.keep();
            None
        }
        other => other,
    };
    let running = send_json(
        &s,
        &json!({"ok": true, "running": true, "pid": restored.pid, "host_pid": restored.host_pid, "roots": restored.roots, "node": node}),
    )
    .map_err(|e| EngineError::Migration(format!("telling the source the process runs: {e}")));
    let postcopy = if parsed.lazy() {
        let mut pager = crate::postcopy::Pager::new(lazy);
        let owed = pager.owed_bytes();
        tracing::debug!(owed, "post-copy: serving the processes' memory");
        match pager.run(&mut crate::postcopy::StreamFeed { s: &s, peer }) {
            Ok(()) => {
                if let Some(on) = address_on {
                    on.keep();
                }
                Some(pager.stats.clone())
            }
            Err(e) => {
                // The source holds the only copy of what is missing: the
                // processes cannot go on. Killed while their descriptors
                // are still open, so that no faulting thread ever gets a
                // page of zeros in place of its data.
                let left = pager.owed_bytes();
                let mut pids = pager.pids();
                pids.extend(restored.roots.iter().map(|r| r.1));
                kill_restored(&pids, restored.ns_init);
                drop(pager);
                drop(address_on);
                let local = e.link_alive();
                let msg = format!(
                    "post-copy from {source_node} failed with {} KiB of memory still at the source: {e}; the process (PID {}) could not go on and was killed here{}",
                    left >> 10,
                    restored.pid,
                    if local { ", and the source was told to resume its copy" } else { "" }
                );
                if local {
                    let _ = send_json(&s, &json!({"failed": msg, "killed": true}));
                }
                return Err(EngineError::Migration(msg));
            }
        }
    } else {
        running?;
        match deferred {
            // Every page is here: the source may end its copy already.
            Some(d) => {
                tracing::debug!(bytes = d.bytes(), "placing the deferred memory");
                match d.run() {
                    Ok(stats) => Some(stats),
                    Err(msg) => {
                        kill_restored(&restored.host_roots(), restored.ns_init);
                        return Err(EngineError::Migration(msg));
                    }
                }
            }
            None => None,
        }
    };
    Ok(ReceiveReport {
        mode,
        restore: restored,
        bytes,
        source_node,
        total: t0.elapsed(),
        postcopy,
    })
}

/// Where a moved service address goes on this host: the interface holding
/// another address of its subnet. Refuses an address this host already has.
fn place_for_address(text: &str) -> Result<godwit_sys::netaddr::IfAddr, String> {
    let (addr, prefix) =
        parse_cidr(text).ok_or_else(|| format!("--move-ip {text}: not ADDR/PREFIX"))?;
    let all = godwit_sys::netaddr::addresses().map_err(|e| format!("--move-ip: {e}"))?;
    if all.iter().any(|a| a.addr == addr) {
        return Err(format!(
            "--move-ip {text}: this node already has that address"
        ));
    }
    all.into_iter()
        .find(|a| a.ifname != "lo" && godwit_sys::netaddr::same_subnet(a.addr, addr, prefix))
        .map(|a| godwit_sys::netaddr::IfAddr { addr, prefix, ..a })
        .ok_or_else(|| format!("--move-ip {text}: no interface of this node is in that subnet"))
}

/// `ADDR/PREFIX`.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = text.split_once('/')?;
    let addr: IpAddr = a.parse().ok()?;
    let prefix: u8 = p.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

/// A service address put on this host for a migration; taken off again on
/// drop unless the migration went through.
struct AddressOn {
    addr: godwit_sys::netaddr::IfAddr,
    armed: bool,
}

impl AddressOn {
    fn put(addr: godwit_sys::netaddr::IfAddr) -> Result<AddressOn, String> {
        godwit_sys::netaddr::add_address(addr.ifindex, addr.addr, addr.prefix).map_err(|e| {
            format!(
                "--move-ip: adding {}/{} to {}: {e}",
                addr.addr, addr.prefix, addr.ifname
            )
        })?;
        let on = AddressOn { addr, armed: true };
        godwit_sys::netaddr::announce(on.addr.ifindex, on.addr.addr)
            .map_err(|e| format!("--move-ip: announcing {}: {e}", on.addr.addr))?;
        Ok(on)
    }

    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for AddressOn {
    fn drop(&mut self) {
        if self.armed {
            let a = &self.addr;
            if let Err(e) = godwit_sys::netaddr::del_address(a.ifindex, a.addr, a.prefix) {
                tracing::error!(addr = %a.addr, "could not take the service address off again: {e}");
            }
        }
    }
}

/// Kills the restored processes `pids`, their descendants (or, with a PID
/// namespace, its init and so everything in it), and waits until none runs.
fn kill_restored(pids: &[i32], ns_init: Option<i32>) {
    let mut all: Vec<i32> = pids.to_vec();
    let mut i = 0;
    while i < all.len() {
        let more = godwit_sys::process::children(all[i]).unwrap_or_default();
        all.extend(more.into_iter().filter(|c| !pids.contains(c)));
        i += 1;
    }
    if let Some(init) = ns_init {
        let _ = godwit_sys::process::kill(init, libc::SIGKILL);
    }
    for &p in all.iter().rev() {
        let _ = godwit_sys::process::kill(p, libc::SIGKILL);
    }
    let t = Instant::now();
    while all.iter().any(|&p| godwit_sys::process::alive(p))
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `pid` and its descendants as they are now (the dump freezes them; this
/// list lets the destination check their PIDs before anything is sent).
fn tree_pids(pid: i32) -> Result<Vec<i32>, EngineError> {
    if !godwit_sys::process::alive(pid) {
        return Err(EngineError::NoSuchProcess { pid });
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        out.extend(godwit_sys::process::children(out[i]).unwrap_or_default());
        i += 1;
    }
    Ok(out)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

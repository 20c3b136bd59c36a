//! Terminals.
//!
//! * A pseudo-terminal (pty) whose master side (/dev/ptmx) is inside the
//!   dumped tree is made again as a new pty (so with another index: the
//!   processes see /dev/pts/M instead of /dev/pts/N): the settings (termios)
//!   of both sides, the window size, the slave's lock, packet mode, every open
//!   of the slave (also those made through /dev/tty), the session it is the
//!   controlling terminal of and that session's foreground process group.
//! * With `--shell-job`, a slave whose master is outside the tree (the
//!   terminal the process was started from) is attached on restore to the
//!   terminal on `godwit restore`'s standard input, and the tree's root joins
//!   godwit's session and process group.
//! * Consoles, virtual terminals and serial lines are refused.
//!
//! Unread data queued in a terminal is not kept: the kernel offers no way to
//! read a terminal's queues without consuming them. A dump says how many
//! bytes it leaves behind.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::resources::files::lca;
use crate::schema::{Fd, FdKind, Process, Termios, Tty, WinSize};
use godwit_sys::{proc, process, tty as sys};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The major number of pty slaves (/dev/pts/N is 136:N).
const PTS_MAJOR: u32 = 136;
/// 5:0 /dev/tty, 5:1 /dev/console, 5:2 /dev/ptmx.
const TTYAUX_MAJOR: u32 = 5;
/// Virtual terminals (4:0-63) and the 8250 serial lines (4:64-255).
const TTY_MAJOR: u32 = 4;

fn unsupported(pid: i32, fd: i32, what: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported {
        pid,
        what: format!("fd {fd} ({what})"),
    }
}

/// A terminal's usual name, for messages.
pub fn dev_name(dev: u64) -> String {
    match sys::dev_parts(dev) {
        (PTS_MAJOR, n) => format!("/dev/pts/{n}"),
        (TTYAUX_MAJOR, 0) => "/dev/tty".into(),
        (TTYAUX_MAJOR, 1) => "/dev/console".into(),
        (TTY_MAJOR, n) if n < 64 => format!("/dev/tty{n}"),
        (TTY_MAJOR, n) => format!("/dev/ttyS{}", n - 64),
        (ma, mi) => format!("the terminal device {ma}:{mi}"),
    }
}

/// A descriptor on a terminal outside the dumped tree (dump --shell-job).
#[derive(Debug, Clone)]
pub struct OutsideTerminal {
    pub pid: i32,
    pub fd: i32,
    /// `tty:[MAJOR:MINOR]`, for `restore --inherit-fd N:KEY`.
    pub key: String,
    /// The terminal's name at dump time (/dev/pts/N, ...).
    pub name: String,
}

/// The descriptors of `procs` on a terminal outside the tree.
pub fn outside(procs: &[Process]) -> Vec<OutsideTerminal> {
    procs
        .iter()
        .flat_map(|p| p.fds.iter().map(move |f| (p.pid, f)))
        .filter_map(|(pid, f)| {
            let t = f.tty.as_ref().filter(|t| t.external)?;
            Some(OutsideTerminal {
                pid,
                fd: f.fd,
                key: external_key(t.dev),
                name: dev_name(t.dev),
            })
        })
        .collect()
}

/// What `restore --inherit-fd N:KEY` names a terminal outside the tree by:
/// "tty:[MAJOR:MINOR]" of its device at dump time (136:N for /dev/pts/N).
pub fn external_key(dev: u64) -> String {
    let (ma, mi) = sys::dev_parts(dev);
    format!("tty:[{ma}:{mi}]")
}

fn termios_of(t: &sys::Termios) -> Termios {
    Termios {
        iflag: t.iflag,
        oflag: t.oflag,
        cflag: t.cflag,
        lflag: t.lflag,
        line: t.line as u32,
        cc: t.cc.to_vec(),
        ispeed: t.ispeed,
        ospeed: t.ospeed,
    }
}

fn sys_termios(t: &Termios) -> Result<sys::Termios> {
    let cc: [u8; sys::NCCS] = t.cc.as_slice().try_into().map_err(|_| {
        EngineError::BadImage(format!(
            "terminal settings with {} control characters, not {}",
            t.cc.len(),
            sys::NCCS
        ))
    })?;
    Ok(sys::Termios {
        iflag: t.iflag,
        oflag: t.oflag,
        cflag: t.cflag,
        lflag: t.lflag,
        line: t.line as u8,
        cc,
        ispeed: t.ispeed,
        ospeed: t.ospeed,
    })
}

fn sys_winsize(w: &WinSize) -> sys::WinSize {
    sys::WinSize {
        rows: w.rows as u16,
        cols: w.cols as u16,
        xpixel: w.xpixel as u16,
        ypixel: w.ypixel as u16,
    }
}

fn tty_of(f: &Fd) -> Option<&Tty> {
    f.tty.as_ref().filter(|_| f.kind == FdKind::Tty as i32)
}

// ---------------------------------------------------------------- dump side

/// Describes fd `fd` of frozen process `pid`, open on character device
/// `target` (`md`: the device's metadata), if it is a terminal; `pidfd` is
/// the process's. Returns false for a character device that is no terminal.
/// Refuses terminals other than pseudo-terminals.
pub fn dump(
    pid: i32,
    fd: i32,
    target: &str,
    md: &std::fs::Metadata,
    pidfd: &OwnedFd,
    e: &mut Fd,
) -> Result<bool> {
    let stage = "reading terminals";
    let (major, minor) = sys::dev_parts(md.rdev());
    let ours = process::pidfd_getfd(pidfd, fd).dumping(pid, stage)?;
    let o = ours.as_fd();
    if !sys::is_terminal(o) {
        if !matches!(major, TTYAUX_MAJOR | TTY_MAJOR | PTS_MAJOR) {
            return Ok(false);
        }
        return Err(unsupported(
            pid,
            fd,
            format!("{target}, a terminal that was hung up (its master side was closed or its session ended)"),
        ));
    }
    let mut t = Tty::default();
    match (major, minor) {
        (TTYAUX_MAJOR, 2) => {
            t.master = true;
            t.index = sys::pty_index(o).dumping(pid, stage)?;
            t.dev = libc::makedev(PTS_MAJOR, t.index);
            t.locked = sys::pty_locked(o).dumping(pid, stage)?;
            t.packet = sys::packet_mode(o).dumping(pid, stage)?;
            t.fg_pgrp = sys::foreground_pgrp(o).dumping(pid, stage)?;
            t.session = sys::session(o).dumping(pid, stage)?.unwrap_or(0);
            t.peer_closed = sys::peer_hung_up(o).dumping(pid, stage)?;
            (t.slave_uid, t.slave_gid, t.slave_mode) =
                sys::slave_node_owner(o).dumping(pid, stage)?;
        }
        (PTS_MAJOR, n) => {
            let pts = std::fs::metadata("/dev/pts").map(|m| m.dev()).ok();
            if target != format!("/dev/pts/{n}") || pts != Some(md.dev()) {
                return Err(unsupported(
                    pid,
                    fd,
                    format!("{target}, a pseudo-terminal of a devpts instance other than the one at /dev/pts"),
                ));
            }
            t.index = n;
            t.dev = md.rdev();
        }
        (TTYAUX_MAJOR, 0) => {
            let real = sys::real_device(o).dumping(pid, stage)?;
            let (rm, rn) = sys::dev_parts(real);
            if rm != PTS_MAJOR {
                return Err(unsupported(
                    pid,
                    fd,
                    format!(
                        "{target}, which is {}: only pseudo-terminals are supported, not consoles, virtual terminals or serial lines",
                        dev_name(real)
                    ),
                ));
            }
            t.index = rn;
            t.dev = real;
            t.via_dev_tty = true;
        }
        _ => {
            return Err(unsupported(
                pid,
                fd,
                format!(
                    "terminal {target} (device {major}:{minor}): only pseudo-terminals are supported, not consoles, virtual terminals or serial lines"
                ),
            ))
        }
    }
    t.termios = Some(termios_of(&sys::get_termios(o).dumping(pid, stage)?));
    let w = sys::get_winsize(o).dumping(pid, stage)?;
    t.winsize = Some(WinSize {
        rows: w.rows as u32,
        cols: w.cols as u32,
        xpixel: w.xpixel as u32,
        ypixel: w.ypixel as u32,
    });
    e.kind = FdKind::Tty as i32;
    e.tty = Some(t);
    Ok(true)
}

/// Across the frozen tree: pairs each pty slave with its master. A slave
/// whose master is outside the tree is refused, or with `shell_job` marked
/// external (only one such terminal). Checks that every session leading a
/// terminal can get it back, and says how much unread terminal data is left
/// behind.
pub fn link(procs: &mut [Process], shell_job: bool) -> Result<()> {
    let mut masters: HashMap<u32, (i32, i32)> = HashMap::new();
    for p in procs.iter() {
        for f in &p.fds {
            if let Some(t) = tty_of(f).filter(|t| t.master) {
                masters.entry(t.index).or_insert((p.pid, f.fd));
            }
        }
    }
    let mut external: Option<(u64, i32, i32)> = None;
    for p in procs.iter_mut() {
        let pid = p.pid;
        for f in p.fds.iter_mut() {
            if f.kind != FdKind::Tty as i32 {
                continue;
            }
            let Some(t) = f.tty.as_mut() else { continue };
            if t.master || masters.contains_key(&t.index) {
                continue;
            }
            if !shell_job {
                let name = if t.via_dev_tty {
                    format!("{} ({})", f.path, dev_name(t.dev))
                } else {
                    f.path.clone()
                };
                return Err(EngineError::NeedsShellJob {
                    pid,
                    what: format!("fd {} is on terminal {name}", f.fd),
                });
            }
            match external {
                Some((dev, p0, fd0)) if dev != t.dev => {
                    return Err(unsupported(
                        pid,
                        f.fd,
                        format!(
                            "{}, a second terminal outside the dumped tree (process {p0} fd {fd0} is on {}); --shell-job attaches one terminal",
                            f.path,
                            dev_name(dev)
                        ),
                    ))
                }
                None => external = Some((t.dev, pid, f.fd)),
                _ => {}
            }
            t.external = true;
        }
    }
    let internal = |dev: u64| {
        let (ma, mi) = sys::dev_parts(dev);
        ma == PTS_MAJOR && masters.contains_key(&mi)
    };
    for (i, p) in procs.iter().enumerate() {
        if p.zombie || p.ctty_dev == 0 {
            continue;
        }
        let leader = p.sid == p.pid;
        let name = dev_name(p.ctty_dev);
        if internal(p.ctty_dev) {
            if !procs.iter().any(|q| q.pid == p.sid && !q.zombie) {
                return Err(EngineError::Unsupported {
                    pid: p.pid,
                    what: format!(
                        "a controlling terminal ({name}) inside the dumped tree whose session leader {} is outside it",
                        p.sid
                    ),
                });
            }
            if shell_job && leader && i == 0 {
                return Err(EngineError::Unsupported {
                    pid: p.pid,
                    what: format!(
                        "--shell-job for a process that leads the session of {name}, a terminal inside the dumped tree (dump it without --shell-job)"
                    ),
                });
            }
        } else if leader {
            if !shell_job {
                return Err(EngineError::NeedsShellJob {
                    pid: p.pid,
                    what: format!(
                        "its controlling terminal is {name} (it leads that terminal's session)"
                    ),
                });
            }
            if i != 0 {
                return Err(EngineError::Unsupported {
                    pid: p.pid,
                    what: format!(
                        "leading the session of {name}, a terminal outside the dumped tree, in a process other than the tree's root (--shell-job attaches only the root to the caller's terminal)"
                    ),
                });
            }
        }
    }
    warn_unread(procs, &masters);
    Ok(())
}

/// Logs the unread bytes in each pty of the tree: they are not kept.
fn warn_unread(procs: &[Process], masters: &HashMap<u32, (i32, i32)>) {
    let count = |pid: i32, fd: i32| -> Option<usize> {
        let pidfd = process::pidfd_open(pid).ok()?;
        let ours = process::pidfd_getfd(&pidfd, fd).ok()?;
        sys::input_pending(ours.as_fd()).ok()
    };
    for (index, (pid, fd)) in masters {
        if let Some(n) = count(*pid, *fd).filter(|n| *n > 0) {
            tracing::warn!(
                pid,
                fd,
                "{n} bytes written to /dev/pts/{index} were not read yet from its master side; they are not kept (a terminal's queues cannot be read without consuming them)"
            );
        }
        let slave = procs.iter().find_map(|p| {
            p.fds
                .iter()
                .find(|f| tty_of(f).is_some_and(|t| !t.master && t.index == *index))
                .map(|f| (p.pid, f.fd))
        });
        if let Some((spid, sfd)) = slave {
            if let Some(n) = count(spid, sfd).filter(|n| *n > 0) {
                tracing::warn!(
                    pid = spid,
                    fd = sfd,
                    "{n} bytes of input to /dev/pts/{index} were not read yet by the program; they are not kept (a terminal's queues cannot be read without consuming them)"
                );
            }
        }
    }
}

// ------------------------------------------------------------- restore side

/// The terminal `godwit restore --shell-job` attaches the process to: the
/// one on godwit's standard input.
#[derive(Debug, Clone)]
pub struct CallerTerminal {
    /// Its path, e.g. /dev/pts/7.
    pub path: String,
    /// Give it the terminal settings saved in the image.
    pub apply_termios: bool,
}

impl CallerTerminal {
    /// Godwit's standard input, which must be a terminal.
    pub fn from_stdin(apply_termios: bool) -> Result<CallerTerminal> {
        let stdin = std::io::stdin();
        if !sys::is_terminal(stdin.as_fd()) {
            return Err(EngineError::Terminal(
                "restore --shell-job attaches the process to the terminal on godwit's standard input, which is not a terminal; run godwit restore --shell-job from the terminal the process should use".into(),
            ));
        }
        let link = "/proc/self/fd/0";
        let path = proc::link(link)
            .map_err(|e| EngineError::Terminal(format!("the terminal on standard input: {e}")))?
            .to_string_lossy()
            .into_owned();
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            return Err(EngineError::Terminal(format!(
                "the terminal on standard input ({path}) cannot be opened by path"
            )));
        }
        let rdev = std::fs::metadata(link).map(|m| m.rdev()).unwrap_or(0);
        let me = std::process::id() as i32;
        let ctty = proc::stat(me)
            .map(|s| s.tty_nr)
            .ok()
            .filter(|n| *n != 0)
            .map(sys::decode_kernel_dev);
        if ctty != Some(rdev) {
            tracing::warn!(
                "{path} on standard input is not godwit's controlling terminal; the restored process gets it as its files but not as its controlling terminal (no job control, /dev/tty is not it)"
            );
        }
        Ok(CallerTerminal {
            path,
            apply_termios,
        })
    }
}

/// Refuses a restore whose terminals cannot be made as asked: an image with
/// terminals outside the tree needs `--shell-job` (`shell`) or an
/// `--inherit-fd` naming each of them (`inherit`), and the root cannot join
/// the caller's session while it leads a terminal in the image.
pub fn check(
    procs: &[Process],
    shell: Option<&CallerTerminal>,
    inherit: &[crate::resources::external::Inherit],
) -> Result<()> {
    let masters: Vec<u32> = procs
        .iter()
        .flat_map(|p| &p.fds)
        .filter_map(tty_of)
        .filter(|t| t.master)
        .map(|t| t.index)
        .collect();
    if shell.is_none() {
        // The terminals --inherit-fd names, by key or by one of their fds.
        let named: Vec<String> = inherit
            .iter()
            .filter_map(|i| {
                let Some(pf) = i.what.strip_prefix("fd:") else {
                    return Some(i.what.clone());
                };
                let (p, f) = pf.split_once(':')?;
                let (p, f) = (p.parse::<i32>().ok()?, f.parse::<i32>().ok()?);
                procs
                    .iter()
                    .find(|x| x.pid == p)?
                    .fds
                    .iter()
                    .find(|d| d.fd == f)
                    .and_then(tty_of)
                    .filter(|t| t.external)
                    .map(|t| external_key(t.dev))
            })
            .collect();
        for p in procs {
            for f in &p.fds {
                let Some(t) = tty_of(f).filter(|t| t.external) else {
                    continue;
                };
                let key = external_key(t.dev);
                if named.contains(&key) {
                    continue;
                }
                return Err(EngineError::Terminal(format!(
                    "process {} fd {} was on {}, a terminal outside the dumped tree ({key}; the image was made with dump --shell-job); restore it with --shell-job from a terminal, or give a terminal of yours in its place with --inherit-fd N:{key}",
                    p.pid, f.fd, f.path
                )));
            }
        }
    }
    let Some(root) = procs.first() else {
        return Ok(());
    };
    if root.sid == root.pid && root.ctty_dev != 0 {
        let (ma, mi) = sys::dev_parts(root.ctty_dev);
        let internal = ma == PTS_MAJOR && masters.contains(&mi);
        let name = dev_name(root.ctty_dev);
        if !internal && shell.is_none() {
            return Err(EngineError::Terminal(format!(
                "process {} led the session of its controlling terminal {name}, outside the dumped tree; restore it with --shell-job from a terminal",
                root.pid
            )));
        }
        if internal && shell.is_some() {
            return Err(EngineError::Terminal(format!(
                "process {} leads the session of {name}, a terminal inside the image, so it cannot join the caller's session; restore it without --shell-job",
                root.pid
            )));
        }
    }
    Ok(())
}

/// One pty of the image.
struct Pair {
    /// The index at dump time.
    index: u32,
    /// The slave's device number at dump time (`Process::ctty_dev`).
    dev: u64,
    /// The process creating every description of the pty.
    creator: usize,
    master: (u64, Fd),
    slaves: Vec<(u64, Fd)>,
}

/// How the terminals of a tree are made again. Every description of one
/// pty (the master, each open of the slave) is created by one process: the
/// lowest common ancestor of their holders and of the session leader whose
/// controlling terminal it is, so that this leader inherits a descriptor to
/// take it back with (TIOCSCTTY) before it forks the rest of its session.
pub struct TtyPlan {
    pairs: Vec<Pair>,
    creators: HashMap<u64, usize>,
    shell: Option<CallerTerminal>,
    /// The settings saved for the outside terminal (--shell-job).
    shell_termios: Option<Termios>,
}

const STAGE: &str = "restoring terminals";

impl TtyPlan {
    /// `reps`: description id → a representative fd; `holders`: description
    /// id → the indexes of the processes holding it.
    pub fn new(
        procs: &[Process],
        reps: &BTreeMap<u64, Fd>,
        holders: &BTreeMap<u64, Vec<usize>>,
        parent: &[Option<usize>],
        shell: Option<&CallerTerminal>,
    ) -> Result<TtyPlan> {
        let mut masters: BTreeMap<u32, (u64, Fd)> = BTreeMap::new();
        let mut slaves: BTreeMap<u32, Vec<(u64, Fd)>> = BTreeMap::new();
        let mut shell_termios = None;
        for (id, f) in reps.iter().filter(|(_, f)| f.kind == FdKind::Tty as i32) {
            let t = f.tty.as_ref().ok_or_else(|| {
                EngineError::BadImage(format!("fd {} is a terminal without details", f.fd))
            })?;
            if t.external {
                if shell_termios.is_none() {
                    shell_termios = t.termios.clone();
                }
            } else if t.master {
                masters.insert(t.index, (*id, f.clone()));
            } else {
                slaves.entry(t.index).or_default().push((*id, f.clone()));
            }
        }
        if let Some(index) = slaves.keys().find(|i| !masters.contains_key(i)) {
            return Err(EngineError::BadImage(format!(
                "/dev/pts/{index} has slave descriptors but no master in the image"
            )));
        }
        let mut pairs = Vec::new();
        let mut creators = HashMap::new();
        for (index, master) in masters {
            let dev = master.1.tty.as_ref().map_or(0, |t| t.dev);
            let slaves = slaves.remove(&index).unwrap_or_default();
            let mut set: Vec<usize> = std::iter::once(master.0)
                .chain(slaves.iter().map(|s| s.0))
                .flat_map(|id| holders.get(&id).cloned().unwrap_or_default())
                .collect();
            set.extend(
                procs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.zombie && p.sid == p.pid && p.ctty_dev == dev)
                    .map(|(i, _)| i),
            );
            let creator = lca(parent, &set);
            creators.insert(master.0, creator);
            for s in &slaves {
                creators.insert(s.0, creator);
            }
            pairs.push(Pair {
                index,
                dev,
                creator,
                master,
                slaves,
            });
        }
        Ok(TtyPlan {
            pairs,
            creators,
            shell: shell.cloned(),
            shell_termios,
        })
    }

    /// The process creating description `id`, when it belongs to a pty.
    pub fn creator(&self, id: u64) -> Option<usize> {
        self.creators.get(&id).copied()
    }

    /// Creates, in process `idx` (`r`), the ptys it is the creator of;
    /// returns (description id, fd in the process) of each description.
    /// Uses scratch bytes [0, 4096).
    pub fn create(&self, r: &Remote, idx: usize) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for pair in self.pairs.iter().filter(|p| p.creator == idx) {
            out.extend(create_pair(r, pair)?);
        }
        Ok(out)
    }

    /// Opens, in `r`, an fd that was on the terminal outside the tree: the
    /// caller's terminal (--shell-job).
    pub fn open_external(&self, r: &Remote, f: &Fd) -> Result<u64> {
        let shell = self.shell.as_ref().ok_or_else(|| {
            EngineError::Terminal(format!(
                "process {} fd {} was on a terminal outside the dumped tree; restore it with --shell-job from a terminal, or with --inherit-fd N:{}",
                r.pid,
                f.fd,
                f.tty.as_ref().map_or_else(|| "tty:[MAJOR:MINOR]".into(), |t| external_key(t.dev))
            ))
        })?;
        open_in(r, &shell.path, f.flags)
    }

    /// In process `p` (`r`), once its session exists and its descriptions
    /// were made, before it forks: a session leader takes its pty back as its
    /// controlling terminal, through any descriptor of the pty (`stage_fd`
    /// gives a description's staging fd); a process that had no controlling
    /// terminal drops the one it inherited from godwit. `joins_caller`: the
    /// root of a --shell-job restore, which keeps the caller's.
    pub fn set_ctty(
        &self,
        r: &Remote,
        p: &Process,
        joins_caller: bool,
        stage_fd: impl Fn(u64) -> u64,
    ) -> Result<()> {
        let pid = r.pid;
        if p.sid == p.pid && !joins_caller {
            let Some(pair) = self.pairs.iter().find(|q| q.dev == p.ctty_dev) else {
                return Ok(()); // none (setsid left it without one)
            };
            let id = pair.slaves.first().map_or(pair.master.0, |s| s.0);
            r.call(
                "ioctl(TIOCSCTTY)",
                libc::SYS_ioctl,
                [stage_fd(id), libc::TIOCSCTTY, 0, 0, 0, 0],
            )
            .restoring(pid, "taking back the controlling terminal")?;
            return Ok(());
        }
        if p.ctty_dev == 0 && proc::stat(pid).restoring(pid, STAGE)?.tty_nr != 0 {
            with_dev_tty(r, |fd| {
                r.call(
                    "ioctl(TIOCNOTTY)",
                    libc::SYS_ioctl,
                    [fd, libc::TIOCNOTTY, 0, 0, 0, 0],
                )
                .map(drop)
            })
            .restoring(pid, "dropping an inherited controlling terminal")?;
        }
        Ok(())
    }

    /// Once every process group exists: gives each pty that leads a session
    /// its foreground process group back (TIOCSPGRP, injected in the session
    /// leader). Signals are still blocked in the restored processes, so the
    /// call cannot stop a leader that is not in the foreground.
    pub fn restore_foreground(&self, procs: &[Process], remotes: &[Option<Remote>]) -> Result<()> {
        for pair in &self.pairs {
            let Some(t) = pair.master.1.tty.as_ref() else {
                continue;
            };
            if t.session == 0 || t.fg_pgrp == 0 {
                continue;
            }
            let Some(si) = procs.iter().position(|q| q.pid == t.session) else {
                continue;
            };
            let (Some(r), leader) = (&remotes[si], &procs[si]) else {
                continue;
            };
            if t.fg_pgrp == leader.pid {
                continue; // TIOCSCTTY made the leader's group the foreground
            }
            if !procs
                .iter()
                .any(|q| q.pid == t.fg_pgrp && !q.zombie && q.sid == leader.pid)
            {
                tracing::warn!(
                    pid = leader.pid,
                    "the foreground process group {} of /dev/pts/{} has no leader in the image; the session leader's group is in the foreground instead",
                    t.fg_pgrp,
                    pair.index
                );
                continue;
            }
            let a = r
                .put(2048, &t.fg_pgrp.to_le_bytes())
                .restoring(r.pid, STAGE)?;
            with_dev_tty(r, |fd| {
                r.call(
                    "ioctl(TIOCSPGRP)",
                    libc::SYS_ioctl,
                    [fd, libc::TIOCSPGRP, a, 0, 0, 0],
                )
                .map(drop)
            })
            .restoring(r.pid, "setting the terminal's foreground process group")?;
        }
        Ok(())
    }

    /// Last step of a --shell-job restore, once nothing can fail any more:
    /// gives the caller's terminal the settings saved in the image (unless
    /// asked not to).
    pub fn finish(&self) -> Result<()> {
        let (Some(shell), Some(t)) = (&self.shell, &self.shell_termios) else {
            return Ok(());
        };
        if !shell.apply_termios {
            return Ok(());
        }
        let stdin = std::io::stdin();
        sys::set_termios(stdin.as_fd(), &sys_termios(t)?).map_err(|e| {
            EngineError::Terminal(format!(
                "setting the saved terminal settings on {}: {e}",
                shell.path
            ))
        })
    }
}

/// Opens `path` in `r` with the saved open flags, without making it the
/// controlling terminal. Uses scratch bytes [0, 4096).
fn open_in(r: &Remote, path: &str, flags: u32) -> Result<u64> {
    let pid = r.pid;
    let a = r.put_cstr(0, path).restoring(pid, STAGE)?;
    let flags =
        (flags & !((libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) as u32)) | libc::O_NOCTTY as u32;
    r.call(
        "openat",
        libc::SYS_openat,
        [libc::AT_FDCWD as u64, a, flags as u64, 0, 0, 0],
    )
    .map_err(|e| EngineError::Restore {
        pid,
        stage: "opening a terminal",
        source: godwit_sys::SysError::Proc {
            path: path.to_string(),
            detail: e.to_string(),
        },
    })
}

/// Runs `f` with /dev/tty (the process's controlling terminal) open in `r`.
fn with_dev_tty(
    r: &Remote,
    f: impl FnOnce(u64) -> godwit_sys::Result<()>,
) -> godwit_sys::Result<()> {
    let a = r.put_cstr(0, "/dev/tty")?;
    let fd = r.call(
        "openat",
        libc::SYS_openat,
        [
            libc::AT_FDCWD as u64,
            a,
            (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u64,
            0,
            0,
            0,
        ],
    )?;
    let res = f(fd);
    r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    res
}

/// Makes a new pty in `r` for `pair`: opens /dev/ptmx, sets it up from our
/// copy of the master, opens the slave once per saved description.
fn create_pair(r: &Remote, pair: &Pair) -> Result<Vec<(u64, u64)>> {
    let pid = r.pid;
    let (mid, mf) = &pair.master;
    let mt = mf.tty.clone().unwrap_or_default();
    let m = open_in(r, "/dev/ptmx", mf.flags)?;
    let pidfd = process::pidfd_open(pid).restoring(pid, STAGE)?;
    let ours = process::pidfd_getfd(&pidfd, m as i32).restoring(pid, STAGE)?;
    let o = ours.as_fd();
    sys::set_pty_locked(o, false).restoring(pid, STAGE)?;
    let index = sys::pty_index(o).restoring(pid, STAGE)?;
    set_up(pid, o, &mt)?;
    if mt.packet {
        sys::set_packet_mode(o, true).restoring(pid, STAGE)?;
    }
    let path = format!("/dev/pts/{index}");
    tracing::info!(pid, "/dev/pts/{} is restored as {path}", pair.index);
    let mut out = vec![(*mid, m)];
    for (id, f) in &pair.slaves {
        out.push((*id, open_in(r, &path, f.flags)?));
    }
    if pair.slaves.is_empty() && mt.peer_closed {
        // The slave was opened and closed: so the master reads EIO again.
        let s = open_in(r, &path, libc::O_RDWR as u32)?;
        r.call("close", libc::SYS_close, [s, 0, 0, 0, 0, 0])
            .restoring(pid, STAGE)?;
    }
    if mt.slave_mode != 0 {
        // Older images recorded none: devpts' defaults stay.
        sys::set_slave_node_owner(o, mt.slave_uid, mt.slave_gid, mt.slave_mode)
            .restoring(pid, "giving the pty's slave node its owner and mode back")?;
    }
    if mt.locked {
        sys::set_pty_locked(o, true).restoring(pid, STAGE)?;
    }
    Ok(out)
}

/// Termios and window size. Through the master they are the slave's (the
/// kernel applies a master's termios and window size calls to its slave).
fn set_up(pid: i32, fd: BorrowedFd<'_>, t: &Tty) -> Result<()> {
    if let Some(tio) = &t.termios {
        sys::set_termios(fd, &sys_termios(tio)?).restoring(pid, "setting terminal settings")?;
    }
    if let Some(w) = &t.winsize {
        sys::set_winsize(fd, &sys_winsize(w)).restoring(pid, "setting the window size")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(dev_name(libc::makedev(136, 7)), "/dev/pts/7");
        assert_eq!(dev_name(libc::makedev(5, 1)), "/dev/console");
        assert_eq!(dev_name(libc::makedev(4, 2)), "/dev/tty2");
        assert_eq!(dev_name(libc::makedev(4, 65)), "/dev/ttyS1");
        assert_eq!(external_key(libc::makedev(136, 7)), "tty:[136:7]");
    }

    #[test]
    fn termios_round_trip_and_bad_cc() {
        let t = sys::Termios {
            iflag: 1,
            oflag: 2,
            cflag: 3,
            lflag: 4,
            line: 5,
            cc: [7; sys::NCCS],
            ispeed: 38400,
            ospeed: 9600,
        };
        assert_eq!(sys_termios(&termios_of(&t)).unwrap(), t);
        let mut bad = termios_of(&t);
        bad.cc.pop();
        assert!(sys_termios(&bad).is_err());
    }
}

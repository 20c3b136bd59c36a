//! Seccomp of each thread: strict mode, or a stack of classic BPF filters.
//!
//! Dump: the mode comes from /proc/PID/task/TID/status (`Seccomp:`); in
//! filter mode every filter of the stack is read with
//! PTRACE_SECCOMP_GET_FILTER (index 0 is the oldest, measured on 6.18: the
//! kernel counts from the first installed; until ENOENT) and its flags with
//! PTRACE_SECCOMP_GET_METADATA (same index). Stacks that threads share
//! (inherited at clone, or synchronised with SECCOMP_FILTER_FLAG_TSYNC) are
//! stored once ([`share`]). A filter that can hand syscalls to a user-space
//! listener (SECCOMP_RET_USER_NOTIF) is refused: the listener's descriptor
//! cannot be recreated.
//!
//! While godwit traces a thread under seccomp, its protection is suspended
//! (PTRACE_O_SUSPEND_SECCOMP, set as soon as it is frozen and on every
//! restored thread before its first filter): the syscalls godwit injects,
//! at dump and at restore, are neither filtered nor able to kill it. The
//! suspension ends with the detach, when the thread runs its own code again.
//!
//! Restore ([`install_last`]), per process: the filters go in last, just
//! before the trampoline is removed and the registers loaded, oldest first
//! so that each stack has the same order:
//! 1. the filters every thread shares (the stack's common start) in the main
//!    thread with SECCOMP_FILTER_FLAG_TSYNC, so the threads share them again
//!    (a later TSYNC by the program itself still works);
//! 2. each thread's own further filters, in that thread;
//! 3. strict mode (seccomp(SECCOMP_SET_MODE_STRICT)), last of all;
//! 4. a check of each thread's mode and filter count in /proc.
//!
//! Installing a filter needs no_new_privs or CAP_SYS_ADMIN. When a thread's
//! saved state has neither (a filter installed with privileges that were
//! dropped since), or when TSYNC would set a no_new_privs a thread did not
//! have, the process's filters go in before its credentials instead
//! ([`install_before_credentials`]; strict mode still last), while the
//! threads still have godwit's privileges: the image's no_new_privs is what
//! ends up set, never an extra one.
//!
//! A thread frozen inside a syscall makes it again when it runs (or
//! restart_syscall). [`Stacks::new`] runs the thread's filters on it (a
//! classic BPF evaluator): a call they would kill the thread for or answer
//! with SIGSYS refuses the restore before anything is created; a forbidden
//! restart_syscall is replaced by the EINTR it would return
//! ([`finish_resume`]).

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::Remote;
use crate::schema::{Process, SeccompFilter, Thread};
use godwit_sys::proc;
use godwit_sys::ptrace::{self, BPF_INSN};
use godwit_sys::regs::GpRegs;
use std::collections::HashMap;

/// Seccomp modes as /proc shows them.
pub const MODE_STRICT: u32 = 1;
pub const MODE_FILTER: u32 = 2;
const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
const SECCOMP_FILTER_FLAG_LOG: u32 = 2;
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const BPF_RET_K: u16 = 0x06;
const BPF_MAXINSNS: usize = 4096;
const CAP_SYS_ADMIN: u64 = 21;

/// Suspends the seccomp protection of frozen thread `tid` of `pid` if it
/// has any, so that the syscalls injected into it are not filtered.
pub fn suspend_frozen(pid: i32, tid: i32) -> Result<()> {
    let Ok(st) = proc::task_status(pid, tid) else {
        return Ok(());
    };
    if st.seccomp == 0 {
        return Ok(());
    }
    ptrace::suspend_seccomp(tid).map_err(|e| EngineError::Unsupported {
        pid,
        what: format!(
            "seccomp ({}) in thread {tid} without godwit being able to suspend it while dumping ({e}; PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN, with godwit itself not under seccomp), which the syscalls the dump injects need",
            mode_name(st.seccomp)
        ),
    })
}

fn mode_name(mode: u32) -> &'static str {
    match mode {
        0 => "no seccomp",
        MODE_STRICT => "strict mode",
        MODE_FILTER => "filter mode",
        _ => "an unknown seccomp mode",
    }
}

/// Whether a classic BPF program has a `ret` of SECCOMP_RET_USER_NOTIF.
fn returns_user_notif(program: &[u8]) -> bool {
    program.chunks_exact(BPF_INSN).any(|i| {
        let code = u16::from_le_bytes([i[0], i[1]]);
        let k = u32::from_le_bytes([i[4], i[5], i[6], i[7]]);
        code == BPF_RET_K && k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF
    })
}

/// Reads the seccomp mode of frozen thread `tid` of `pid` and, in filter
/// mode, its filter stack (oldest first, every program in full; see
/// [`share`]).
pub fn dump(pid: i32, tid: i32) -> Result<(u32, Vec<SeccompFilter>)> {
    let stage = "reading seccomp filters";
    let st = proc::task_status(pid, tid).dumping(pid, stage)?;
    match st.seccomp {
        0 | MODE_STRICT => return Ok((st.seccomp, Vec::new())),
        MODE_FILTER => {}
        m => {
            return Err(EngineError::Unsupported {
                pid,
                what: format!("seccomp mode {m} (unknown to godwit) in thread {tid}"),
            })
        }
    }
    // Index 0 is the oldest filter (get_nth_filter counts from the first
    // installed), so the list comes out oldest first.
    let mut filters = Vec::new();
    for index in 0u64.. {
        let program = match ptrace::seccomp_filter(tid, index) {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) if e.errno() == Some(libc::EMEDIUMTYPE) => {
                return Err(EngineError::Unsupported {
                    pid,
                    what: format!(
                        "a seccomp filter that is not a classic BPF program (thread {tid}, filter {}, oldest first)",
                        index + 1
                    ),
                })
            }
            Err(e) if e.errno() == Some(libc::EACCES) => {
                return Err(EngineError::PermissionDenied {
                    pid,
                    detail: format!(
                        "reading the seccomp filters of thread {tid} ({e}) needs CAP_SYS_ADMIN, with godwit itself not under seccomp; run godwit as root"
                    ),
                })
            }
            Err(e) => return Err(e).dumping(pid, stage),
        };
        if program.is_empty() {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "an empty seccomp filter (thread {tid}, filter {}, oldest first)",
                    index + 1
                ),
            });
        }
        let flags = ptrace::seccomp_flags(tid, index).dumping(pid, stage)? as u32;
        filters.push(SeccompFilter {
            program,
            flags,
            program_of: 0,
        });
    }
    let count = filters.len();
    for (n, f) in filters.iter().enumerate() {
        if returns_user_notif(&f.program) {
            return Err(EngineError::Unsupported {
                pid,
                what: format!(
                    "thread {tid}: a seccomp filter handing syscalls to a user-space listener (SECCOMP_RET_USER_NOTIF; filter {} of {count}, oldest first), whose listener descriptor (SECCOMP_FILTER_FLAG_NEW_LISTENER) and notifications in flight a restore could not recreate,",
                    n + 1
                ),
            });
        }
    }
    tracing::debug!(pid, tid, filters = count, "seccomp filters read");
    Ok((MODE_FILTER, filters))
}

/// Stores each program once: a thread's filter whose stack starts like an
/// earlier thread's (of any process of the image) up to and including it
/// keeps an empty program and names the thread that holds it.
pub fn share(procs: &mut [Process]) {
    // (tid, its filters with programs) of the threads seen so far.
    let mut seen: Vec<(i32, Vec<SeccompFilter>)> = Vec::new();
    for t in procs.iter_mut().flat_map(|p| p.threads.iter_mut()) {
        if t.seccomp_filters.is_empty() {
            continue;
        }
        let full = t.seccomp_filters.clone();
        for (j, f) in t.seccomp_filters.iter_mut().enumerate() {
            let holder = seen.iter().find(|(_, s)| {
                s.len() > j
                    && s[..=j]
                        .iter()
                        .zip(&full[..=j])
                        .all(|(a, b)| a.program == b.program && a.flags == b.flags)
            });
            if let Some((tid, _)) = holder {
                f.program.clear();
                f.program_of = *tid;
            }
        }
        // Only threads holding their programs are named as holders.
        if t.seccomp_filters.iter().any(|f| !f.program.is_empty()) {
            seen.push((t.tid, full));
        }
    }
}

/// One filter ready to install.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    program: Vec<u8>,
    flags: u32,
}

/// Every thread's filter stack of an image, programs resolved and checked.
#[derive(Debug, Default)]
pub struct Stacks {
    by_tid: HashMap<i32, Vec<Filter>>,
    /// A process with a thread under seccomp, if any.
    any: Option<i32>,
}

impl Stacks {
    /// Resolves and checks the seccomp state of every thread of `procs`;
    /// refuses what this restore could not install.
    pub fn new(procs: &[Process]) -> Result<Stacks> {
        let threads: HashMap<i32, &Thread> = procs
            .iter()
            .flat_map(|p| p.threads.iter())
            .map(|t| (t.tid, t))
            .collect();
        let mut by_tid = HashMap::new();
        let mut any = None;
        for p in procs {
            for t in &p.threads {
                let bad = |what: String| {
                    EngineError::BadImage(format!("process {}, thread {}: {what}", p.pid, t.tid))
                };
                match (t.seccomp_mode, t.seccomp_filters.is_empty()) {
                    (0, true) => continue,
                    (MODE_STRICT, true) => {
                        any.get_or_insert(p.pid);
                        continue;
                    }
                    (MODE_FILTER, false) => {}
                    (m, _) => {
                        return Err(bad(format!(
                            "seccomp mode {m} with {} filters",
                            t.seccomp_filters.len()
                        )))
                    }
                }
                any.get_or_insert(p.pid);
                let mut stack = Vec::with_capacity(t.seccomp_filters.len());
                for (j, f) in t.seccomp_filters.iter().enumerate() {
                    let program = if f.program.is_empty() {
                        threads
                            .get(&f.program_of)
                            .and_then(|h| h.seccomp_filters.get(j))
                            .map(|h| h.program.clone())
                            .filter(|p| !p.is_empty())
                            .ok_or_else(|| {
                                bad(format!(
                                    "seccomp filter {} names thread {} for its program, which does not hold it",
                                    j + 1,
                                    f.program_of
                                ))
                            })?
                    } else {
                        f.program.clone()
                    };
                    let insns = program.len() / BPF_INSN;
                    if program.len() % BPF_INSN != 0 || insns == 0 || insns > BPF_MAXINSNS {
                        return Err(bad(format!(
                            "seccomp filter {} is {} bytes, not 1 to {BPF_MAXINSNS} BPF instructions",
                            j + 1,
                            program.len()
                        )));
                    }
                    if f.flags & !SECCOMP_FILTER_FLAG_LOG != 0 {
                        return Err(bad(format!(
                            "seccomp filter {} has flags {:#x}, which godwit does not install",
                            j + 1,
                            f.flags
                        )));
                    }
                    if returns_user_notif(&program) {
                        return Err(EngineError::Refused {
                            pid: p.pid,
                            what: format!(
                                "thread {}: seccomp filter {} hands syscalls to a user-space listener, which cannot be recreated",
                                t.tid,
                                j + 1
                            ),
                        });
                    }
                    stack.push(Filter {
                        program,
                        flags: f.flags,
                    });
                }
                check_resume(p.pid, t, &stack)?;
                by_tid.insert(t.tid, stack);
            }
        }
        Ok(Stacks { by_tid, any })
    }

    /// Refuses the restore if the image has threads under seccomp and
    /// godwit could not suspend them while it builds them
    /// (PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN, with godwit not under
    /// seccomp itself).
    pub fn check_privileges(&self) -> Result<()> {
        let Some(pid) = self.any else { return Ok(()) };
        let me = proc::status(std::process::id() as i32)
            .restoring(pid, "reading godwit's own capabilities")?;
        if me.cap_eff & (1 << CAP_SYS_ADMIN) == 0 || me.seccomp != 0 {
            return Err(EngineError::Refused {
                pid,
                what: "its threads run under seccomp; restoring them needs godwit to hold CAP_SYS_ADMIN and to run without seccomp itself (PTRACE_O_SUSPEND_SECCOMP); run godwit as root".into(),
            });
        }
        Ok(())
    }

    fn of(&self, tid: i32) -> &[Filter] {
        self.by_tid.get(&tid).map_or(&[], |v| v.as_slice())
    }

    /// How many filters, from the oldest, every thread of `p` shares: 0
    /// unless every thread is in filter mode.
    fn shared(&self, p: &Process) -> usize {
        let stacks: Vec<&[Filter]> = p.threads.iter().map(|t| self.of(t.tid)).collect();
        let Some(first) = stacks.first() else {
            return 0;
        };
        (0..first.len())
            .take_while(|&j| stacks.iter().all(|s| s.get(j) == first.get(j)))
            .count()
    }
}

/// Whether `t` may install a filter with its saved credentials: it has
/// no_new_privs or CAP_SYS_ADMIN in its effective set.
fn may_install(t: &Thread) -> bool {
    t.caps
        .as_ref()
        .is_some_and(|c| c.no_new_privs || c.effective & (1 << CAP_SYS_ADMIN) != 0)
}

/// Whether process `p`'s filters must go in before its credentials are set
/// (rather than last): a thread whose saved credentials could not install
/// its filters, or a shared stack whose TSYNC from a main thread with
/// no_new_privs would give no_new_privs to a thread that had not got it.
fn before_credentials(p: &Process, stacks: &Stacks) -> bool {
    let filtered = |t: &&Thread| !stacks.of(t.tid).is_empty();
    if p.threads.iter().filter(filtered).any(|t| !may_install(t)) {
        return true;
    }
    let nnp = |t: &Thread| t.caps.as_ref().is_some_and(|c| c.no_new_privs);
    stacks.shared(p) > 0
        && p.threads.len() > 1
        && nnp(&p.threads[0])
        && p.threads.iter().any(|t| !nnp(t))
}

/// Installs `f` in the thread of `rt` (suspended: nothing it runs is
/// filtered until the detach). Uses scratch bytes [0, 16 + program).
fn install_one(rt: &Remote, f: &Filter, extra: u64, what: &str) -> Result<()> {
    let pid = rt.pid;
    let stage = "installing seccomp filters";
    let mut buf = Vec::with_capacity(16 + f.program.len());
    let prog_at = rt.scratch + 16;
    buf.extend_from_slice(&((f.program.len() / BPF_INSN) as u64).to_le_bytes());
    buf.extend_from_slice(&prog_at.to_le_bytes());
    buf.extend_from_slice(&f.program);
    let fprog = rt.put(0, &buf).restoring(pid, stage)?;
    let ret = match rt.call(
        "seccomp(SECCOMP_SET_MODE_FILTER)",
        libc::SYS_seccomp,
        [
            SECCOMP_SET_MODE_FILTER,
            f.flags as u64 | extra,
            fprog,
            0,
            0,
            0,
        ],
    ) {
        Ok(ret) => ret,
        Err(e) if e.errno() == Some(libc::EACCES) => {
            return Err(EngineError::Refused {
                pid,
                what: format!(
                    "{what}: the thread may not install it (it has neither no_new_privs nor CAP_SYS_ADMIN at this point): {e}"
                ),
            })
        }
        Err(e) => return Err(e).restoring(pid, stage),
    };
    if ret != 0 {
        // TSYNC: the id of a thread that could not take the filter.
        return Err(EngineError::Refused {
            pid,
            what: format!(
                "{what}: thread {ret} could not be given the filters it shares with its process (SECCOMP_FILTER_FLAG_TSYNC)"
            ),
        });
    }
    Ok(())
}

/// Suspends seccomp on every thread of `p` that will be under it, so that
/// nothing injected into it afterwards is filtered (until the detach).
fn suspend_all(r: &Remote, p: &Process, tids: &[i32]) -> Result<()> {
    for (t, &host) in p.threads.iter().zip(tids) {
        if t.seccomp_mode != 0 {
            ptrace::suspend_seccomp(host)
                .restoring(r.pid, "suspending seccomp while the restore runs")?;
        }
    }
    Ok(())
}

/// The filters of every thread of process `p` (`tids`: the threads' host
/// TIDs, in image order): the shared start by TSYNC in the main thread,
/// then each thread's own, oldest first.
fn install_filters(r: &Remote, p: &Process, tids: &[i32], stacks: &Stacks) -> Result<()> {
    let shared = stacks.shared(p);
    let main = r.for_thread(tids[0]);
    let sync = if p.threads.len() > 1 {
        SECCOMP_FILTER_FLAG_TSYNC
    } else {
        0
    };
    for (j, f) in stacks.of(p.threads[0].tid)[..shared].iter().enumerate() {
        install_one(
            &main,
            f,
            sync,
            &format!("seccomp filter {} shared by every thread", j + 1),
        )?;
    }
    for (t, &host) in p.threads.iter().zip(tids) {
        let rt = r.for_thread(host);
        for (j, f) in stacks.of(t.tid).iter().enumerate().skip(shared) {
            install_one(
                &rt,
                f,
                0,
                &format!("thread {}, seccomp filter {}", t.tid, j + 1),
            )?;
        }
    }
    tracing::debug!(pid = r.pid, shared, "seccomp filters installed");
    Ok(())
}

/// Before the credentials of process `p`: its filters, if
/// [`before_credentials`] says they cannot wait.
pub fn install_before_credentials(
    r: &Remote,
    p: &Process,
    tids: &[i32],
    stacks: &Stacks,
) -> Result<()> {
    if !before_credentials(p, stacks) {
        return Ok(());
    }
    suspend_all(r, p, tids)?;
    install_filters(r, p, tids, stacks)
}

/// Last of what is injected into process `p`: its filters (unless already
/// in), strict mode, then a check of every thread's mode and filter count.
pub fn install_last(r: &Remote, p: &Process, tids: &[i32], stacks: &Stacks) -> Result<()> {
    if p.threads.iter().all(|t| t.seccomp_mode == 0) {
        return Ok(());
    }
    let pid = r.pid;
    suspend_all(r, p, tids)?;
    if !before_credentials(p, stacks) {
        install_filters(r, p, tids, stacks)?;
    }
    for (t, &host) in p.threads.iter().zip(tids) {
        if t.seccomp_mode == MODE_STRICT {
            r.for_thread(host)
                .call(
                    "seccomp(SECCOMP_SET_MODE_STRICT)",
                    libc::SYS_seccomp,
                    [SECCOMP_SET_MODE_STRICT, 0, 0, 0, 0, 0],
                )
                .restoring(pid, "setting seccomp strict mode")?;
        }
    }
    for (t, &host) in p.threads.iter().zip(tids) {
        let st = proc::task_status(pid, host).restoring(pid, "checking seccomp")?;
        let want = stacks.of(t.tid).len() as u32;
        if st.seccomp != t.seccomp_mode || st.seccomp_filters != want {
            return Err(EngineError::Refused {
                pid,
                what: format!(
                    "thread {} has {} with {} filters after the restore installed {} with {want}",
                    t.tid,
                    mode_name(st.seccomp),
                    st.seccomp_filters,
                    mode_name(t.seccomp_mode)
                ),
            });
        }
    }
    Ok(())
}

/// What a seccomp filter sees of a syscall (`struct seccomp_data`).
#[derive(Debug, Clone, Copy)]
pub struct SyscallData {
    pub nr: i32,
    pub arch: u32,
    /// The address after the `syscall` instruction.
    pub ip: u64,
    pub args: [u64; 6],
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

impl SyscallData {
    fn word(&self, off: u32) -> Option<u32> {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_le_bytes());
        b[4..8].copy_from_slice(&self.arch.to_le_bytes());
        b[8..16].copy_from_slice(&self.ip.to_le_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let o = off as usize;
        (o.is_multiple_of(4) && o + 4 <= b.len())
            .then(|| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")))
    }
}

/// Runs one classic BPF seccomp program on `d` as the kernel would; `None`
/// for a program the kernel would not have accepted.
fn run_filter(program: &[u8], d: &SyscallData) -> Option<u32> {
    let insns: Vec<(u16, u8, u8, u32)> = program
        .chunks_exact(BPF_INSN)
        .map(|i| {
            (
                u16::from_le_bytes([i[0], i[1]]),
                i[2],
                i[3],
                u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
            )
        })
        .collect();
    let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
    // Every jump goes forward: at most one pass over the program.
    while let Some(&(code, jt, jf, k)) = insns.get(pc) {
        pc += 1;
        let src = if code & 0x08 != 0 { x } else { k };
        match code & 0x07 {
            0x00 if code & 0x18 != 0 => return None,
            0x00 => {
                a = match code & 0xe0 {
                    0x00 => k,
                    0x20 => d.word(k)?,
                    0x60 => *mem.get(k as usize)?,
                    0x80 => 64,
                    _ => return None,
                }
            }
            0x01 => {
                x = match code & 0xe0 {
                    0x00 => k,
                    0x60 => *mem.get(k as usize)?,
                    0x80 => 64,
                    _ => return None,
                }
            }
            0x02 => *mem.get_mut(k as usize)? = a,
            0x03 => *mem.get_mut(k as usize)? = x,
            0x04 => {
                a = match code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 | 0x90 if src == 0 => return Some(0),
                    0x30 => a / src,
                    0x90 => a % src,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0xa0 => a ^ src,
                    _ => return None,
                }
            }
            0x05 => {
                let taken = match code & 0xf0 {
                    0x00 => {
                        pc = pc.checked_add(k as usize)?;
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    _ => return None,
                };
                pc += if taken { jt } else { jf } as usize;
            }
            0x06 => return Some(if code & 0x18 == 0x10 { a } else { k }),
            _ => match code {
                0x07 => x = a,
                0x87 => a = x,
                _ => return None,
            },
        }
    }
    None
}

/// The action a stack of filters (oldest first) takes on `d`: the most
/// restrictive of their results, the newest filter's on a tie (as the
/// kernel orders them: KILL_PROCESS, KILL_THREAD, TRAP, ERRNO, USER_NOTIF,
/// TRACE, LOG, ALLOW).
fn run_stack(stack: &[Filter], d: &SyscallData) -> Option<u32> {
    let rank = |r: u32| (r & SECCOMP_RET_ACTION_FULL) as i32;
    let mut out: Option<u32> = None;
    for f in stack.iter().rev() {
        let r = run_filter(&f.program, d)?;
        if out.is_none_or(|o| rank(r) < rank(o)) {
            out = Some(r);
        }
    }
    out
}

fn action_name(r: u32) -> String {
    match r & SECCOMP_RET_ACTION_FULL {
        SECCOMP_RET_KILL_PROCESS => "SECCOMP_RET_KILL_PROCESS".into(),
        SECCOMP_RET_KILL_THREAD => "SECCOMP_RET_KILL_THREAD".into(),
        SECCOMP_RET_TRAP => "SECCOMP_RET_TRAP (SIGSYS)".into(),
        SECCOMP_RET_ERRNO => format!("SECCOMP_RET_ERRNO ({})", r & 0xffff),
        SECCOMP_RET_USER_NOTIF => "SECCOMP_RET_USER_NOTIF".into(),
        SECCOMP_RET_TRACE => "SECCOMP_RET_TRACE".into(),
        SECCOMP_RET_LOG => "SECCOMP_RET_LOG".into(),
        SECCOMP_RET_ALLOW => "SECCOMP_RET_ALLOW".into(),
        other => format!("{other:#x}"),
    }
}

/// The syscall thread `t` makes first when it runs again, if the restore
/// rewinds it to one (a call the freeze interrupted, issued again, or
/// restart_syscall).
fn resumes_with(t: &Thread) -> Option<SyscallData> {
    let saved = GpRegs::from_words(&t.gpregs)?;
    let mut regs = saved;
    regs.rewind_for_restore();
    (regs.rip != saved.rip).then_some(SyscallData {
        nr: regs.rax as i32,
        arch: AUDIT_ARCH_X86_64,
        ip: saved.rip,
        args: [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9],
    })
}

/// Refuses a thread whose filters would stop the syscall it resumes with
/// by killing it or raising SIGSYS (an interrupted call issued again). A
/// restart_syscall they forbid is not made at all ([`finish_resume`]).
fn check_resume(pid: i32, t: &Thread, stack: &[Filter]) -> Result<()> {
    let Some(d) = resumes_with(t) else {
        return Ok(());
    };
    if d.nr as i64 == libc::SYS_restart_syscall {
        return Ok(());
    }
    let r = run_stack(stack, &d).unwrap_or(SECCOMP_RET_KILL_THREAD);
    if matches!(
        r & SECCOMP_RET_ACTION_FULL,
        SECCOMP_RET_KILL_PROCESS | SECCOMP_RET_KILL_THREAD | SECCOMP_RET_TRAP
    ) {
        return Err(EngineError::Refused {
            pid,
            what: format!(
                "thread {} was in syscall {} when dumped, which it would make again when restored, and its seccomp filters answer that with {}; dump it again at another moment",
                t.tid,
                d.nr,
                action_name(r)
            ),
        });
    }
    Ok(())
}

/// After thread `t`'s registers are loaded on `host`: if it would resume
/// with restart_syscall (a call the freeze interrupted whose kernel restart
/// block does not survive a restore, so that it returns EINTR) and its
/// filters forbid restart_syscall, it is given that EINTR directly instead
/// of making a call its filters would refuse or kill it for.
pub fn finish_resume(pid: i32, host: i32, t: &Thread, stacks: &Stacks) -> Result<()> {
    let stack = stacks.of(t.tid);
    if stack.is_empty() && t.seccomp_mode != MODE_STRICT {
        return Ok(());
    }
    let Some(d) = resumes_with(t) else {
        return Ok(());
    };
    if d.nr as i64 != libc::SYS_restart_syscall {
        return Ok(());
    }
    // Strict mode allows read, write, exit and rt_sigreturn only.
    let allowed = t.seccomp_mode != MODE_STRICT
        && run_stack(stack, &d).is_some_and(|r| {
            matches!(
                r & SECCOMP_RET_ACTION_FULL,
                SECCOMP_RET_ALLOW | SECCOMP_RET_LOG
            )
        });
    if allowed {
        return Ok(());
    }
    let stage = "loading registers";
    let mut regs = ptrace::get_regs(host).restoring(pid, stage)?;
    regs.rip += 2;
    regs.rax = -(libc::EINTR as i64) as u64;
    regs.orig_rax = u64::MAX;
    ptrace::set_regs(host, &regs).restoring(pid, stage)?;
    tracing::debug!(
        pid,
        tid = t.tid,
        "restart_syscall forbidden by seccomp: EINTR instead"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, k: u32) -> Vec<u8> {
        let mut b = code.to_le_bytes().to_vec();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&k.to_le_bytes());
        b
    }

    fn thread(tid: i32, programs: &[&[u8]]) -> Thread {
        Thread {
            tid,
            seccomp_mode: MODE_FILTER,
            seccomp_filters: programs
                .iter()
                .map(|p| SeccompFilter {
                    program: p.to_vec(),
                    flags: 0,
                    program_of: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The test program's filter: `nr` -> ERRNO(err), `nr2` -> `ret2`, other
    /// x86_64 calls allowed, other architectures killed.
    fn deny2(nr: u32, err: u32, nr2: u32, ret2: u32) -> Vec<u8> {
        [
            insn(0x20, 4),
            jump(0x15, AUDIT_ARCH_X86_64, 1, 0),
            insn(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
            insn(0x20, 0),
            jump(0x15, nr, 0, 1),
            insn(BPF_RET_K, SECCOMP_RET_ERRNO | err),
            jump(0x15, nr2, 0, 1),
            insn(BPF_RET_K, ret2),
            insn(BPF_RET_K, SECCOMP_RET_ALLOW),
        ]
        .concat()
    }

    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Vec<u8> {
        let mut b = insn(code, k);
        b[2] = jt;
        b[3] = jf;
        b
    }

    fn call(nr: i64) -> SyscallData {
        SyscallData {
            nr: nr as i32,
            arch: AUDIT_ARCH_X86_64,
            ip: 0x1000,
            args: [0; 6],
        }
    }

    #[test]
    fn filters_run_as_the_kernel_runs_them() {
        let f = |p: Vec<u8>| Filter {
            program: p,
            flags: 0,
        };
        let older = f(deny2(110, 1, 111, SECCOMP_RET_ERRNO | 67));
        let newer = f(deny2(121, 18, 111, SECCOMP_RET_ERRNO | 38));
        let stack = [older.clone(), newer];
        let ret = |nr| run_stack(&stack, &call(nr));
        assert_eq!(ret(110), Some(SECCOMP_RET_ERRNO | 1));
        assert_eq!(ret(121), Some(SECCOMP_RET_ERRNO | 18));
        assert_eq!(ret(39), Some(SECCOMP_RET_ALLOW));
        // The same action from both: the newest filter's value.
        assert_eq!(ret(111), Some(SECCOMP_RET_ERRNO | 38));
        let mut i386 = call(110);
        i386.arch = 0x4000_0003;
        assert_eq!(
            run_stack(&stack, &i386),
            Some(SECCOMP_RET_KILL_PROCESS),
            "the most restrictive action wins"
        );
        let kill = [older, f(deny2(500, 1, 219, SECCOMP_RET_KILL_THREAD))];
        assert_eq!(run_stack(&kill, &call(219)), Some(SECCOMP_RET_KILL_THREAD));
        // An argument test: A = args[0] low word; ret A.
        let by_arg = f([insn(0x20, 16), insn(0x16, 0)].concat());
        let mut d = call(1);
        d.args[0] = SECCOMP_RET_ERRNO as u64 | 9;
        assert_eq!(run_filter(&by_arg.program, &d), Some(SECCOMP_RET_ERRNO | 9));
        // Loads the kernel refuses: a half-word, outside seccomp_data.
        assert_eq!(run_filter(&insn(0x28, 0), &d), None);
        assert_eq!(run_filter(&insn(0x20, 64), &d), None);
    }

    #[test]
    fn restart_forbidden_and_reissue_killed() {
        // A thread stopped in clock_nanosleep (-ERESTART_RESTARTBLOCK).
        let mut regs = GpRegs {
            rax: (-516i64) as u64,
            orig_rax: 230,
            rip: 0x4002,
            ..Default::default()
        };
        let mut t = Thread {
            tid: 7,
            gpregs: regs.to_words(),
            ..Default::default()
        };
        let d = resumes_with(&t).unwrap();
        assert_eq!((d.nr as i64, d.ip), (libc::SYS_restart_syscall, 0x4002));
        let stack = [Filter {
            program: deny2(500, 1, 219, SECCOMP_RET_KILL_PROCESS),
            flags: 0,
        }];
        assert!(check_resume(7, &t, &stack).is_ok(), "handled at load");
        // Stopped in read (-ERESTARTSYS), which its filters now kill.
        regs.rax = (-512i64) as u64;
        regs.orig_rax = 0;
        t.gpregs = regs.to_words();
        let stack = [Filter {
            program: deny2(500, 1, 0, SECCOMP_RET_TRAP),
            flags: 0,
        }];
        let e = check_resume(7, &t, &stack).unwrap_err().to_string();
        assert!(
            e.contains("thread 7") && e.contains("SECCOMP_RET_TRAP"),
            "{e}"
        );
        // Not in a syscall: nothing to check.
        regs.orig_rax = u64::MAX;
        t.gpregs = regs.to_words();
        assert!(resumes_with(&t).is_none());
    }

    #[test]
    fn user_notif_found() {
        let allow = insn(BPF_RET_K, 0x7fff_0000);
        let notif = insn(BPF_RET_K, SECCOMP_RET_USER_NOTIF);
        assert!(!returns_user_notif(&allow));
        assert!(returns_user_notif(&[allow.clone(), notif].concat()));
        // `ret A` and a load of that constant are not a return of it.
        assert!(!returns_user_notif(&insn(0x16, SECCOMP_RET_USER_NOTIF)));
        assert!(!returns_user_notif(&insn(0x00, SECCOMP_RET_USER_NOTIF)));
    }

    #[test]
    fn shared_stacks_stored_once() {
        let a = insn(BPF_RET_K, 0x7fff_0000);
        let b = insn(BPF_RET_K, 0x0005_0001);
        let c = insn(BPF_RET_K, 0x0005_0002);
        let mut procs = vec![
            Process {
                pid: 10,
                threads: vec![
                    thread(10, &[&a, &b]),
                    thread(11, &[&a, &b]),
                    thread(12, &[&c]),
                    thread(13, &[&a, &c]),
                ],
                ..Default::default()
            },
            Process {
                pid: 20,
                threads: vec![thread(20, &[&a, &b, &c])],
                ..Default::default()
            },
        ];
        share(&mut procs);
        let t = |p: usize, i: usize| &procs[p].threads[i].seccomp_filters;
        assert!(t(0, 0).iter().all(|f| f.program_of == 0));
        assert!(t(0, 1)
            .iter()
            .all(|f| f.program.is_empty() && f.program_of == 10));
        assert_eq!(t(0, 2)[0].program, c, "same program, different stack");
        assert_eq!((t(0, 3)[0].program_of, t(0, 3)[1].program_of), (10, 0));
        assert_eq!(t(1, 0)[0].program_of, 10);
        assert_eq!(t(1, 0)[1].program_of, 10);
        assert_eq!(t(1, 0)[2].program, c);
        let stacks = Stacks::new(&procs).unwrap();
        assert_eq!(stacks.of(11), stacks.of(10));
        assert_eq!(stacks.of(20).len(), 3);
        assert_eq!(stacks.of(20)[2].program, c);
        assert_eq!(stacks.shared(&procs[0]), 0, "thread 12 starts otherwise");
        procs[0].threads.truncate(2);
        assert_eq!(stacks.shared(&procs[0]), 2);
    }

    #[test]
    fn bad_reference_refused() {
        let mut t = thread(5, &[&insn(BPF_RET_K, 0x7fff_0000)]);
        t.seccomp_filters[0].program.clear();
        t.seccomp_filters[0].program_of = 99;
        let p = Process {
            pid: 5,
            threads: vec![t],
            ..Default::default()
        };
        let e = Stacks::new(&[p]).unwrap_err().to_string();
        assert!(e.contains("thread 99"), "{e}");
    }
}

//! Safe wrappers over ptrace(2) for a tracer that seizes tasks it did not start.

use crate::regs::GpRegs;
use crate::{check, Result, SysError};

const NT_PRSTATUS: libc::c_int = 1;
const NT_X86_XSTATE: libc::c_int = 0x202;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// Largest xsave area we accept (AMX hosts need ~11 KiB).
const MAX_XSTATE: usize = 16 * 1024;

/// Options Godwit sets on every seized task.
pub const OPTIONS: libc::c_int =
    libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_TRACEFORK;

/// How a traced task stopped, as reported by `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A syscall-enter or syscall-exit stop (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// PTRACE_EVENT_STOP: the stop after PTRACE_INTERRUPT, or a new clone's first stop.
    EventStop(i32),
    /// PTRACE_EVENT_CLONE and friends.
    Event(i32),
    /// A signal-delivery stop with this signal.
    Signal(i32),
    /// The task exited with this status.
    Exited(i32),
    /// The task was killed by this signal.
    Killed(i32),
}

fn req(
    request: libc::c_uint,
    tid: i32,
    addr: usize,
    data: usize,
    name: &'static str,
) -> Result<i64> {
    // SAFETY: ptrace with integer or caller-checked pointer arguments; the kernel
    // validates the tid, and every pointer passed through `addr`/`data` by the
    // functions of this module points to live memory of the right size.
    let r = unsafe { libc::ptrace(request, tid, addr, data) };
    check(r, name, format!("task {tid}"))
}

/// Attaches to `tid` without stopping it (PTRACE_SEIZE) with [`OPTIONS`].
pub fn seize(tid: i32) -> Result<()> {
    req(libc::PTRACE_SEIZE, tid, 0, OPTIONS as usize, "PTRACE_SEIZE").map(drop)
}

/// Asks a seized task to stop (PTRACE_INTERRUPT); wait for the stop with [`wait`].
pub fn interrupt(tid: i32) -> Result<()> {
    req(libc::PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT").map(drop)
}

/// Detaches, letting the task run (no signal injected).
pub fn detach(tid: i32) -> Result<()> {
    req(libc::PTRACE_DETACH, tid, 0, 0, "PTRACE_DETACH").map(drop)
}

const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4211;
const PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4210;

/// Syscall user dispatch of a stopped task (PR_SET_SYSCALL_USER_DISPATCH):
/// mode (0 off, 1 on), selector address, offset and length of the range
/// whose syscalls always pass. None: the kernel cannot tell (before 5.19).
pub fn syscall_dispatch(tid: i32) -> Result<Option<[u64; 4]>> {
    let mut cfg = [0u64; 4];
    match req(
        PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG,
        tid,
        std::mem::size_of_val(&cfg),
        cfg.as_mut_ptr() as usize,
        "PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG",
    ) {
        Ok(_) => Ok(Some(cfg)),
        Err(e) if e.errno() == Some(libc::EIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the syscall user dispatch of a stopped task ([`syscall_dispatch`]).
pub fn set_syscall_dispatch(tid: i32, cfg: [u64; 4]) -> Result<()> {
    req(
        PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG,
        tid,
        std::mem::size_of_val(&cfg),
        cfg.as_ptr() as usize,
        "PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG",
    )
    .map(drop)
}

/// Detaches from a task in a signal-delivery stop, delivering `sig` to it
/// (a stop signal stops it, as it would have without a tracer).
pub fn detach_with_signal(tid: i32, sig: i32) -> Result<()> {
    req(libc::PTRACE_DETACH, tid, 0, sig as usize, "PTRACE_DETACH").map(drop)
}

/// Resumes a stopped task, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    req(libc::PTRACE_CONT, tid, 0, sig as usize, "PTRACE_CONT").map(drop)
}

/// Resumes a stopped task until the next syscall entry or exit.
pub fn syscall(tid: i32) -> Result<()> {
    req(libc::PTRACE_SYSCALL, tid, 0, 0, "PTRACE_SYSCALL").map(drop)
}

/// Sets ptrace options on a traced task.
pub fn set_options(tid: i32, options: libc::c_int) -> Result<()> {
    req(
        libc::PTRACE_SETOPTIONS,
        tid,
        0,
        options as usize,
        "PTRACE_SETOPTIONS",
    )
    .map(drop)
}

/// Reads the event message (e.g. a new thread's id after PTRACE_EVENT_CLONE).
pub fn event_msg(tid: i32) -> Result<u64> {
    let mut msg: libc::c_ulong = 0;
    req(
        libc::PTRACE_GETEVENTMSG,
        tid,
        0,
        &mut msg as *mut _ as usize,
        "PTRACE_GETEVENTMSG",
    )?;
    Ok(msg)
}

/// Waits for the next state change of traced task `tid` (`__WALL`).
pub fn wait(tid: i32) -> Result<Stop> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(SysError::Call {
                call: "waitpid",
                target: format!("task {tid}"),
                source: e,
            });
        }
        break;
    }
    Ok(decode_status(status))
}

/// Like [`wait`], for the process `pidfd` refers to (waitid P_PIDFD): never
/// another process that got the same PID since, as a PID can be reused once
/// the process's parent has reaped it.
pub fn wait_pidfd(pidfd: &std::os::fd::OwnedFd) -> Result<Stop> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-buffer for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer; the id is a pidfd we own.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(SysError::Call {
                call: "waitid(P_PIDFD)",
                target: "a pidfd".into(),
                source: e,
            });
        }
        // SAFETY: waitid filled `info` for a child event (SIGCHLD layout).
        let status = unsafe { info.si_status() };
        return Ok(match info.si_code {
            libc::CLD_EXITED => Stop::Exited(status),
            libc::CLD_KILLED | libc::CLD_DUMPED => Stop::Killed(status),
            _ => Stop::Signal(status),
        });
    }
}

fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    if sig == (libc::SIGTRAP | 0x80) {
        Stop::Syscall
    } else if event == libc::PTRACE_EVENT_STOP {
        Stop::EventStop(sig)
    } else if event != 0 {
        Stop::Event(event)
    } else {
        Stop::Signal(sig)
    }
}

/// Reads the general-purpose registers of a stopped task.
pub fn get_regs(tid: i32) -> Result<GpRegs> {
    let mut regs = GpRegs::default();
    let mut iov = libc::iovec {
        iov_base: &mut regs as *mut _ as *mut libc::c_void,
        iov_len: std::mem::size_of::<GpRegs>(),
    };
    req(
        libc::PTRACE_GETREGSET,
        tid,
        NT_PRSTATUS as usize,
        &mut iov as *mut _ as usize,
        "PTRACE_GETREGSET(NT_PRSTATUS)",
    )?;
    Ok(regs)
}

/// Writes the general-purpose registers of a stopped task.
pub fn set_regs(tid: i32, regs: &GpRegs) -> Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: &mut copy as *mut _ as *mut libc::c_void,
        iov_len: std::mem::size_of::<GpRegs>(),
    };
    req(
        libc::PTRACE_SETREGSET,
        tid,
        NT_PRSTATUS as usize,
        &mut iov as *mut _ as usize,
        "PTRACE_SETREGSET(NT_PRSTATUS)",
    )
    .map(drop)
}

/// Reads the task's whole xsave area (x87, SSE, AVX, ... as the CPU has them).
pub fn get_xstate(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; MAX_XSTATE];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    req(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
        "PTRACE_GETREGSET(NT_X86_XSTATE)",
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes the task's xsave area.
pub fn set_xstate(tid: i32, xstate: &[u8]) -> Result<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr() as *mut libc::c_void,
        iov_len: copy.len(),
    };
    req(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
        "PTRACE_SETREGSET(NT_X86_XSTATE)",
    )
    .map(drop)
}

/// Reads the blocked-signal mask of a stopped task.
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    req(
        libc::PTRACE_GETSIGMASK,
        tid,
        8,
        &mut mask as *mut _ as usize,
        "PTRACE_GETSIGMASK",
    )?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped task.
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    let m = mask;
    req(
        libc::PTRACE_SETSIGMASK,
        tid,
        8,
        &m as *const _ as usize,
        "PTRACE_SETSIGMASK",
    )
    .map(drop)
}

/// A raw 128-byte `siginfo_t` of a queued signal.
pub type RawSiginfo = [u8; 128];

/// Reads the pending signals of a task without dequeuing them: the thread's own
/// queue, or (`shared`) the process-wide one.
pub fn peek_siginfo(tid: i32, shared: bool) -> Result<Vec<RawSiginfo>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
    const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
    let mut out = Vec::new();
    loop {
        let mut chunk = vec![[0u8; 128]; 32];
        let args = PeekArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: chunk.len() as i32,
        };
        let n = req(
            PTRACE_PEEKSIGINFO,
            tid,
            &args as *const _ as usize,
            chunk.as_mut_ptr() as usize,
            "PTRACE_PEEKSIGINFO",
        )? as usize;
        chunk.truncate(n);
        out.extend(chunk);
        if n < 32 {
            return Ok(out);
        }
    }
}

/// A thread's rseq registration as reported by the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub abi_pointer: u64,
    pub len: u32,
    pub flags: u32,
    pub signature: u32,
}

/// Reads the task's rseq registration (`len == 0` when none).
pub fn rseq_config(tid: i32) -> Result<RseqConfig> {
    #[repr(C)]
    #[derive(Default)]
    struct Conf {
        abi_pointer: u64,
        len: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut c = Conf::default();
    req(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<Conf>(),
        &mut c as *mut _ as usize,
        "PTRACE_GET_RSEQ_CONFIGURATION",
    )?;
    Ok(RseqConfig {
        abi_pointer: c.abi_pointer,
        len: c.len,
        flags: c.flags,
        signature: c.sig,
    })
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const PTRACE_O_SUSPEND_SECCOMP: libc::c_int = 1 << 21;
/// Size of one classic BPF instruction (struct sock_filter).
pub const BPF_INSN: usize = 8;

/// Filter `index` of the seccomp filter stack of stopped task `tid` (0: the
/// first installed, the oldest; measured on 6.18), as raw `struct
/// sock_filter` records (8 bytes each). `Ok(None)` past the newest filter
/// (ENOENT). Needs
/// CAP_SYS_ADMIN and a tracer not under seccomp itself (else EACCES); a
/// task not in filter mode gives EINVAL.
pub fn seccomp_filter(tid: i32, index: u64) -> Result<Option<Vec<u8>>> {
    let name = "PTRACE_SECCOMP_GET_FILTER";
    // With a null buffer the kernel returns the number of instructions.
    let n = match req(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, 0, name) {
        Ok(n) => n as usize,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; n * BPF_INSN];
    // The kernel writes at most the count it just reported; a filter never
    // changes once installed, so the buffer is large enough.
    let got = req(
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index as usize,
        buf.as_mut_ptr() as usize,
        name,
    )? as usize;
    buf.truncate(got.min(n) * BPF_INSN);
    Ok(Some(buf))
}

/// The flags of seccomp filter `index` of stopped task `tid` as the kernel
/// reports them (SECCOMP_FILTER_FLAG_LOG only; the other flags are not kept).
pub fn seccomp_flags(tid: i32, index: u64) -> Result<u64> {
    #[repr(C)]
    struct Meta {
        filter_off: u64,
        flags: u64,
    }
    let mut m = Meta {
        filter_off: index,
        flags: 0,
    };
    req(
        PTRACE_SECCOMP_GET_METADATA,
        tid,
        std::mem::size_of::<Meta>(),
        &mut m as *mut _ as usize,
        "PTRACE_SECCOMP_GET_METADATA",
    )?;
    Ok(m.flags)
}

/// Suspends the seccomp protection of traced task `tid` while it stays
/// traced (PTRACE_O_SUSPEND_SECCOMP, added to [`OPTIONS`]): syscalls injected
/// into it are not filtered; it ends with the detach. Needs CAP_SYS_ADMIN
/// and a tracer not under seccomp itself (else EPERM).
pub fn suspend_seccomp(tid: i32) -> Result<()> {
    set_options(tid, OPTIONS | PTRACE_O_SUSPEND_SECCOMP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decoding() {
        assert_eq!(decode_status(0), Stop::Exited(0));
        assert_eq!(decode_status(9), Stop::Killed(9));
        // stopped with SIGTRAP|0x80
        assert_eq!(decode_status(((0x80 | 5) << 8) | 0x7f), Stop::Syscall);
        // PTRACE_EVENT_STOP with SIGTRAP
        assert_eq!(
            decode_status((libc::PTRACE_EVENT_STOP << 16) | (5 << 8) | 0x7f),
            Stop::EventStop(5)
        );
        assert_eq!(decode_status((19 << 8) | 0x7f), Stop::Signal(19));
    }
}

//! Threads: registers, FPU/SSE/AVX state, signal mask, per-thread pending
//! signals, rseq, robust futex list, clear_child_tid, sigaltstack, name.

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::freeze::{self, FrozenThread};
use crate::remote::{u64_at, Remote};
use crate::resources::{caps, numa, sched};
use crate::schema::{Rseq, SigAltStack, Thread, ThreadAttrs};
use godwit_sys::ptrace;
use godwit_sys::regs::GpRegs;
use godwit_sys::{proc, process};

const PR_GET_TID_ADDRESS: u64 = 40;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_GET_TSC: u64 = 25;
const PR_SET_TSC: u64 = 26;
const PR_TSC_SIGSEGV: u64 = 2;
const PR_SET_TIMERSLACK: u64 = 29;
const PR_GET_TIMERSLACK: u64 = 30;
const PR_MCE_KILL: u64 = 33;
const PR_MCE_KILL_GET: u64 = 34;
const PR_MCE_KILL_SET: u64 = 1;
const PR_MCE_KILL_DEFAULT: i32 = 2;
const PR_SET_SPECULATION_CTRL: u64 = 53;
const PR_GET_SPECULATION_CTRL: u64 = 52;
const PR_SPEC_STORE_BYPASS: u64 = 0;
const PR_SPEC_INDIRECT_BRANCH: u64 = 1;
const PR_SPEC_DISABLE: u32 = 4;
const PR_SPEC_FORCE_DISABLE: u32 = 8;
const ARCH_GET_CPUID: u64 = 0x1011;
const ARCH_SET_CPUID: u64 = 0x1012;

/// Reads one frozen thread. Uses scratch bytes [0, 64).
pub fn dump(r: &Remote, t: &FrozenThread) -> Result<Thread> {
    let (pid, tid) = (r.pid, t.tid);
    let rt = r.for_thread(tid);
    let xstate = ptrace::get_xstate(tid).dumping(pid, "reading FPU/AVX state")?;
    let pending = ptrace::peek_siginfo(tid, false)
        .dumping(pid, "reading pending signals")?
        .into_iter()
        .map(|s| s.to_vec())
        .collect();
    let rs = ptrace::rseq_config(tid).dumping(pid, "reading rseq registration")?;
    let (robust_list, robust_len) =
        process::robust_list(tid).dumping(pid, "reading the robust futex list")?;
    rt.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        [PR_GET_TID_ADDRESS, r.scratch, 0, 0, 0, 0],
    )
    .dumping(pid, "reading clear_child_tid")?;
    rt.call(
        "sigaltstack",
        libc::SYS_sigaltstack,
        [0, r.scratch + 8, 0, 0, 0, 0],
    )
    .dumping(pid, "reading the signal stack")?;
    rt.call(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        [PR_GET_PDEATHSIG, r.scratch + 48, 0, 0, 0, 0],
    )
    .dumping(pid, "reading the parent-death signal")?;
    let timer_slack_ns = rt
        .call(
            "prctl(PR_GET_TIMERSLACK)",
            libc::SYS_prctl,
            [PR_GET_TIMERSLACK, 0, 0, 0, 0, 0],
        )
        .dumping(pid, "reading the timer slack")?;
    rt.call(
        "prctl(PR_GET_TSC)",
        libc::SYS_prctl,
        [PR_GET_TSC, r.scratch + 56, 0, 0, 0, 0],
    )
    .dumping(pid, "reading the TSC mode")?;
    let mce_kill = rt
        .call(
            "prctl(PR_MCE_KILL_GET)",
            libc::SYS_prctl,
            [PR_MCE_KILL_GET, 0, 0, 0, 0, 0],
        )
        .dumping(pid, "reading the machine-check kill policy")? as i32;
    // EINVAL/ENODEV: a CPU without CPUID faulting, where it cannot be on.
    let cpuid = rt
        .inj()
        .run(libc::SYS_arch_prctl, [ARCH_GET_CPUID, 0, 0, 0, 0, 0])
        .dumping(pid, "reading CPUID faulting")?
        .ret;
    // Read at the freeze, which paused it.
    let syscall_dispatch = t.syscall_dispatch.map(|c| c.to_vec()).unwrap_or_default();
    let (spec_store_bypass, spec_indirect_branch) = speculation(pid, tid)?;
    let (mempolicy_mode, mempolicy_nodes) = numa::dump_thread(&rt)?;
    let b = rt.get(0, 60).dumping(pid, "reading thread state")?;
    let pdeathsig = i32::from_le_bytes(b[48..52].try_into().expect("4 bytes"));
    let tsc = u32::from_le_bytes(b[56..60].try_into().expect("4 bytes"));
    let (creds, caps) = caps::dump(&rt)?;
    let (seccomp_mode, seccomp_filters) = super::seccomp::dump(pid, tid)?;
    let ss_flags = i32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
    Ok(Thread {
        tid,
        gpregs: t.regs.to_words(),
        xstate,
        sigmask: t.sigmask,
        pending,
        clear_child_tid: u64_at(&b, 0),
        robust_list,
        robust_len,
        rseq: (rs.len > 0).then_some(Rseq {
            addr: rs.abi_pointer,
            len: rs.len,
            flags: rs.flags,
            signature: rs.signature,
        }),
        altstack: Some(SigAltStack {
            sp: u64_at(&b, 1),
            flags: ss_flags,
            size: u64_at(&b, 3),
        }),
        comm: proc::comm(pid, tid).unwrap_or_default(),
        sched: Some(sched::dump(pid, tid)?),
        caps: Some(caps),
        creds: Some(creds),
        seccomp_mode,
        seccomp_filters,
        attrs: Some(ThreadAttrs {
            pdeathsig,
            timer_slack_ns,
            tsc_sigsegv: tsc as u64 == PR_TSC_SIGSEGV,
            mce_kill,
            cpuid_faulting: cpuid == 0,
            syscall_dispatch,
            spec_store_bypass,
            spec_indirect_branch,
            mempolicy_mode,
            mempolicy_nodes,
        }),
    })
}

/// The speculation control a thread set for itself, from its status:
/// (store bypass, indirect branch) as PR_SPEC_DISABLE / PR_SPEC_FORCE_DISABLE,
/// 0 where it has the system's setting.
fn speculation(pid: i32, tid: i32) -> Result<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).map_err(|e| {
        EngineError::Sys {
            pid,
            stage: "reading speculation control",
            source: godwit_sys::SysError::Proc {
                path: format!("/proc/{pid}/task/{tid}/status"),
                detail: e.to_string(),
            },
        }
    })?;
    Ok(parse_speculation(&text))
}

/// [`speculation`] from the text of a status file.
fn parse_speculation(text: &str) -> (u32, u32) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let ssb = match field("Speculation_Store_Bypass:").as_str() {
        "thread mitigated" => PR_SPEC_DISABLE,
        "thread force mitigated" => PR_SPEC_FORCE_DISABLE,
        _ => 0,
    };
    let ib = match field("SpeculationIndirectBranch:").as_str() {
        "conditional disabled" => PR_SPEC_DISABLE,
        "conditional force disabled" => PR_SPEC_FORCE_DISABLE,
        _ => 0,
    };
    (ssb, ib)
}

/// Sets the speculation control of thread `rt.tid` as saved; refuses the
/// restore if this host cannot (no per-thread control here).
fn restore_speculation(rt: &Remote, t: &Thread, a: &ThreadAttrs) -> Result<()> {
    for (which, state, what) in [
        (
            PR_SPEC_STORE_BYPASS,
            a.spec_store_bypass,
            "speculative store bypass",
        ),
        (
            PR_SPEC_INDIRECT_BRANCH,
            a.spec_indirect_branch,
            "indirect branch speculation",
        ),
    ] {
        if state == 0 {
            continue;
        }
        let set = rt.call(
            "prctl(PR_SET_SPECULATION_CTRL)",
            libc::SYS_prctl,
            [PR_SET_SPECULATION_CTRL, which, state as u64, 0, 0, 0],
        );
        let now = rt
            .call(
                "prctl(PR_GET_SPECULATION_CTRL)",
                libc::SYS_prctl,
                [PR_GET_SPECULATION_CTRL, which, 0, 0, 0, 0],
            )
            .unwrap_or(0) as u32;
        if set.is_err() || now & state == 0 {
            return Err(EngineError::Refused {
                pid: rt.pid,
                what: format!(
                    "thread {} had {what} disabled for itself (PR_SET_SPECULATION_CTRL), which this host cannot set per thread ({})",
                    t.tid,
                    set.err().map_or_else(|| format!("state {now:#x}"), |e| e.to_string())
                ),
            });
        }
    }
    Ok(())
}

/// Unregisters the rseq area that a freshly forked stub inherited from us.
pub fn drop_inherited_rseq(r: &Remote) -> Result<()> {
    let rs = ptrace::rseq_config(r.tid).restoring(r.pid, "reading the stub's rseq")?;
    if rs.len > 0 {
        r.call(
            "rseq(unregister)",
            libc::SYS_rseq,
            [
                rs.abi_pointer,
                rs.len as u64,
                RSEQ_FLAG_UNREGISTER,
                rs.signature as u64,
                0,
                0,
            ],
        )
        .restoring(r.pid, "unregistering the stub's rseq")?;
    }
    Ok(())
}

/// Creates thread `tid` in the restored process (injected clone3 with set_tid)
/// and waits for its first stop. Returns its TID on the host (the same unless
/// the process lives in a new PID namespace). Uses scratch bytes [0, 128).
pub fn create(main: &Remote, tid: i32) -> Result<i32> {
    let pid = main.pid;
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let set_tid = main.scratch + 96;
    let mut args = Vec::with_capacity(88);
    for w in [flags, 0, 0, 0, 0, 0, 0, 0, set_tid, 1, 0] {
        args.extend_from_slice(&w.to_le_bytes());
    }
    main.put(0, &args).restoring(pid, "creating threads")?;
    main.put(96, &tid.to_le_bytes())
        .restoring(pid, "creating threads")?;
    let out = main
        .inj()
        .run(libc::SYS_clone3, [main.scratch, 88, 0, 0, 0, 0])
        .restoring(pid, "creating threads")?;
    if out.ret == -(libc::EEXIST as i64) {
        return Err(EngineError::PidTaken {
            pid: tid,
            holder: holder_of(tid),
        });
    }
    if out.ret < 0 {
        return Err(EngineError::Restore {
            pid,
            stage: "creating threads",
            source: godwit_sys::SysError::Injected {
                name: "clone3",
                tid: main.tid,
                source: std::io::Error::from_raw_os_error(-out.ret as i32),
            },
        });
    }
    let new = out.new_task.unwrap_or(out.ret as i32);
    check_created(new, tid, "thread")?;
    if !freeze::wait_interrupt_stop(new).restoring(pid, "creating threads")? {
        return Err(EngineError::BadImage(format!("new thread {tid} exited")));
    }
    Ok(new)
}

/// Checks that the task the tracer sees as `host` has `want` as its own id
/// (the innermost of its PID namespaces).
pub fn check_created(host: i32, want: i32, what: &str) -> Result<()> {
    if host == want {
        return Ok(());
    }
    let inner = proc::status(host)
        .ok()
        .and_then(|s| s.nspid.last().copied());
    if inner == Some(want) {
        Ok(())
    } else {
        Err(EngineError::BadImage(format!(
            "{what} {want} was created as {host} (inside its namespace: {inner:?})"
        )))
    }
}

/// Describes who holds a PID now, for error messages.
pub fn holder_of(pid: i32) -> String {
    match proc::stat(pid) {
        Ok(s) => format!("{} (PID {pid})", s.comm),
        Err(_) => format!("a thread or process that exited just now (PID {pid})"),
    }
}

/// Sets the per-thread kernel state that only the thread itself can set:
/// robust list, clear_child_tid, rseq, sigaltstack, name, queued signals.
/// Uses scratch bytes [0, 256).
pub fn setup(rt: &Remote, t: &Thread) -> Result<()> {
    let pid = rt.pid;
    let stage = "setting up threads";
    rt.call(
        "set_robust_list",
        libc::SYS_set_robust_list,
        [t.robust_list, t.robust_len, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    rt.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [t.clear_child_tid, 0, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    if let Some(rs) = &t.rseq {
        rt.call(
            "rseq",
            libc::SYS_rseq,
            [rs.addr, rs.len as u64, 0, rs.signature as u64, 0, 0],
        )
        .restoring(pid, "registering rseq")?;
    }
    if let Some(ss) = &t.altstack {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&ss.sp.to_le_bytes());
        b.extend_from_slice(&(ss.flags as i64 & 0xffff_ffff).to_le_bytes());
        b.extend_from_slice(&ss.size.to_le_bytes());
        // SS_ONSTACK is a state, not a request: ask for an enabled stack.
        let flags = ss.flags & !libc::SS_ONSTACK;
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        let a = rt.put(0, &b).restoring(pid, stage)?;
        rt.call("sigaltstack", libc::SYS_sigaltstack, [a, 0, 0, 0, 0, 0])
            .restoring(pid, "setting the signal stack")?;
    }
    if !t.comm.is_empty() {
        let a = rt.put_cstr(32, &t.comm).restoring(pid, stage)?;
        rt.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, a, 0, 0, 0, 0],
        )
        .restoring(pid, stage)?;
    }
    // 0 (a real-time thread's) is what its policy gives it again.
    if let Some(a) = t.attrs.as_ref().filter(|a| a.timer_slack_ns != 0) {
        rt.call(
            "prctl(PR_SET_TIMERSLACK)",
            libc::SYS_prctl,
            [PR_SET_TIMERSLACK, a.timer_slack_ns, 0, 0, 0, 0],
        )
        .restoring(pid, "setting the timer slack")?;
    }
    if let Some(a) = &t.attrs {
        if a.tsc_sigsegv {
            rt.call(
                "prctl(PR_SET_TSC)",
                libc::SYS_prctl,
                [PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0, 0],
            )
            .restoring(pid, "setting the TSC mode")?;
        }
        if a.mce_kill != PR_MCE_KILL_DEFAULT {
            rt.call(
                "prctl(PR_MCE_KILL)",
                libc::SYS_prctl,
                [PR_MCE_KILL, PR_MCE_KILL_SET, a.mce_kill as u64, 0, 0, 0],
            )
            .restoring(pid, "setting the machine-check kill policy")?;
        }
        restore_speculation(rt, t, a)?;
        numa::restore_thread(rt, t.tid, a)?;
        if a.cpuid_faulting {
            rt.call(
                "arch_prctl(ARCH_SET_CPUID)",
                libc::SYS_arch_prctl,
                [ARCH_SET_CPUID, 0, 0, 0, 0, 0],
            )
            .restoring(pid, "turning CPUID faulting on")?;
        }
    }
    for si in &t.pending {
        queue_signal(rt, si, Some(t.tid))?;
    }
    Ok(())
}

/// Queues a saved siginfo to the restored process (shared, `tid == None`) or
/// one of its threads, from inside the process so the kernel accepts any si_code.
pub fn queue_signal(rt: &Remote, siginfo: &[u8], tid: Option<i32>) -> Result<()> {
    let pid = rt.pid;
    let vpid = rt.vpid;
    if siginfo.len() != 128 {
        return Err(EngineError::BadImage(
            "a saved siginfo is not 128 bytes".into(),
        ));
    }
    let signo = i32::from_le_bytes(siginfo[0..4].try_into().expect("4 bytes"));
    let a = rt
        .put(64, siginfo)
        .restoring(pid, "queueing pending signals")?;
    match tid {
        Some(tid) => rt.call(
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            [vpid as u64, tid as u64, signo as u64, a, 0, 0],
        ),
        None => rt.call(
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            [vpid as u64, signo as u64, a, 0, 0, 0],
        ),
    }
    .restoring(pid, "queueing pending signals")?;
    Ok(())
}

/// Turns syscall user dispatch on again in stopped thread `host_tid`, from
/// outside: last before it runs, as it could block injected calls.
pub fn restore_syscall_dispatch(pid: i32, host_tid: i32, t: &Thread) -> Result<()> {
    let Some(c) = t
        .attrs
        .as_ref()
        .map(|a| &a.syscall_dispatch)
        .filter(|c| !c.is_empty())
    else {
        return Ok(());
    };
    let cfg: [u64; 4] = c[..]
        .try_into()
        .map_err(|_| EngineError::BadImage(format!("thread {}: bad syscall dispatch", t.tid)))?;
    ptrace::set_syscall_dispatch(host_tid, cfg).restoring(pid, "setting syscall user dispatch")
}

/// Ends the main thread (the stub, `r.tid`) of a process whose main thread
/// had exited while its other threads (already created, still stopped) ran
/// on: untraced, with every signal blocked, it runs SYS_exit (not
/// exit_group) at the trampoline's syscall instruction with the exit code
/// of its wait status `status`, with its saved CPU affinity `cpus` (those of
/// them this host has); waits until /proc shows it a zombie. It writes no
/// clear_child_tid and walks no robust list on its way out (both unset
/// first: they may point into the restored memory).
pub fn end_leader(r: &Remote, status: i32, cpus: &[u64]) -> Result<()> {
    let (pid, tid) = (r.pid, r.tid);
    let stage = "ending the main thread";
    let online = godwit_sys::sched::online_cpus().restoring(pid, "reading the online CPUs")?;
    let keep = godwit_sys::sched::CpuSet::from_words(cpus).0.and(&online);
    let keep = if keep.is_empty() { online } else { keep };
    godwit_sys::sched::set_affinity(tid, &keep).restoring(pid, stage)?;
    r.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        [0, 0, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    r.call(
        "set_robust_list",
        libc::SYS_set_robust_list,
        [0, 24, 0, 0, 0, 0],
    )
    .restoring(pid, stage)?;
    let mut regs = ptrace::get_regs(tid).restoring(pid, stage)?;
    regs.rip = r.syscall_ip;
    regs.rax = libc::SYS_exit as u64;
    regs.orig_rax = u64::MAX;
    regs.rdi = ((status >> 8) & 0xff) as u64;
    ptrace::set_regs(tid, &regs).restoring(pid, stage)?;
    ptrace::set_sigmask(tid, !0).restoring(pid, stage)?;
    ptrace::detach(tid).restoring(pid, stage)?;
    let t0 = std::time::Instant::now();
    loop {
        match proc::stat(pid) {
            Ok(st) if st.state == 'Z' => return Ok(()),
            Ok(_) if t0.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_micros(200))
            }
            Ok(st) => {
                return Err(EngineError::BadImage(format!(
                    "process {pid}: its main thread was to exit again, but is still in state {} after 10 s",
                    st.state
                )))
            }
            Err(e) => return Err(e).restoring(pid, stage),
        }
    }
}

/// Loads the saved registers, xsave area and signal mask into stopped thread
/// `host_tid` (the host's id of thread `t`).
pub fn load_cpu_state(pid: i32, host_tid: i32, t: &Thread) -> Result<()> {
    let mut regs = GpRegs::from_words(&t.gpregs)
        .ok_or_else(|| EngineError::BadImage(format!("thread {}: bad register set", t.tid)))?;
    regs.rewind_for_restore();
    let stage = "loading registers";
    ptrace::set_regs(host_tid, &regs).restoring(pid, stage)?;
    if !t.xstate.is_empty() {
        ptrace::set_xstate(host_tid, &t.xstate).restoring(pid, "loading FPU/AVX state")?;
    }
    ptrace::set_sigmask(host_tid, t.sigmask).restoring(pid, "setting the signal mask")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speculation_from_status() {
        let t = "Name:\tx\nSpeculation_Store_Bypass:\tthread force mitigated\nSpeculationIndirectBranch:\tconditional disabled\n";
        assert_eq!(
            parse_speculation(t),
            (PR_SPEC_FORCE_DISABLE, PR_SPEC_DISABLE)
        );
        let t =
            "Speculation_Store_Bypass:\tvulnerable\nSpeculationIndirectBranch:\talways enabled\n";
        assert_eq!(parse_speculation(t), (0, 0));
        assert_eq!(parse_speculation(""), (0, 0));
    }
}

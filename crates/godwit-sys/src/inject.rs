//! Running system calls inside a traced, stopped task.
//!
//! The tracer points the task's instruction pointer at a `syscall` instruction
//! that already exists in its address space, loads the number and arguments,
//! and lets it run from syscall-entry stop to syscall-exit stop. Nothing is
//! written to the task's code. The caller saves the task's registers first and
//! puts them back afterwards (see [`crate::regs::GpRegs::rewind_interrupted_syscall`]).

use crate::ptrace::{self, Stop};
use crate::{Result, SysError};

/// What one injected system call produced.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The raw return value (negative errno on failure).
    pub ret: i64,
    /// The id of a task created by the call (clone/clone3), if any.
    pub new_task: Option<i32>,
}

/// A loop, in x86-64 machine code, that runs a table of system calls inside
/// the task without stopping in between: one ptrace round trip for a whole
/// batch instead of one per call. It must be copied into executable memory
/// of the task (see [`Injector::run_batch`]). Registers on entry: r12 = the
/// table, r13 = the number of entries. Each entry is [`BATCH_ENTRY`] bytes:
/// six arguments, the syscall number, then the slot the result is stored
/// in. The loop stops after the first call that fails (a result in
/// -4095..-1) and ends on int3.
///
/// ```text
///  0: test r13, r13          ; entries left?
///  3: je   3f
///  5: mov  rax, [r12+0x30]   ; number
///  a: mov  rdi, [r12]        ; arguments
///  e: mov  rsi, [r12+0x08]
/// 13: mov  rdx, [r12+0x10]
/// 18: mov  r10, [r12+0x18]
/// 1d: mov  r8,  [r12+0x20]
/// 22: mov  r9,  [r12+0x28]
/// 27: syscall
/// 29: mov  [r12+0x38], rax   ; result
/// 2e: add  r12, 0x40
/// 32: dec  r13
/// 35: cmp  rax, -4095        ; failed?
/// 3b: jae  3f
/// 3d: jmp  0
/// 3f: int3
/// ```
pub const BATCH_CODE: [u8; 64] = [
    0x4d, 0x85, 0xed, 0x74, 0x3a, 0x49, 0x8b, 0x44, 0x24, 0x30, 0x49, 0x8b, 0x3c, 0x24, 0x49, 0x8b,
    0x74, 0x24, 0x08, 0x49, 0x8b, 0x54, 0x24, 0x10, 0x4d, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x44,
    0x24, 0x20, 0x4d, 0x8b, 0x4c, 0x24, 0x28, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x49, 0x83,
    0xc4, 0x40, 0x49, 0xff, 0xcd, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x02, 0xeb, 0xc1, 0xcc,
];

/// Bytes per entry of a batch table: args[6], nr, result.
pub const BATCH_ENTRY: usize = 64;

/// Injects system calls into one stopped task.
#[derive(Debug, Clone, Copy)]
pub struct Injector {
    tid: i32,
    syscall_ip: u64,
}

impl Injector {
    /// `syscall_ip` is the address of a `syscall` instruction (0f 05) mapped
    /// executable in the task.
    pub fn new(tid: i32, syscall_ip: u64) -> Self {
        Injector { tid, syscall_ip }
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Points the task at the syscall instruction with `nr` and `args` loaded.
    fn load(&self, nr: i64, args: [u64; 6]) -> Result<()> {
        let mut regs = ptrace::get_regs(self.tid)?;
        regs.rip = self.syscall_ip;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(self.tid, &regs)
    }

    /// Runs syscall `nr` with `args` in the task, which must be in a ptrace stop.
    /// Leaves the task stopped at syscall exit with its registers modified.
    pub fn run(&self, nr: i64, args: [u64; 6]) -> Result<Outcome> {
        let tid = self.tid;
        self.load(nr, args)?;
        ptrace::syscall(tid)?;
        self.expect_syscall_stop("entering an injected syscall")?;
        ptrace::syscall(tid)?;
        let mut new_task = None;
        loop {
            match ptrace::wait(tid)? {
                Stop::Syscall => break,
                Stop::Event(ev)
                    if ev == libc::PTRACE_EVENT_CLONE
                        || ev == libc::PTRACE_EVENT_FORK
                        || ev == libc::PTRACE_EVENT_VFORK =>
                {
                    new_task = Some(ptrace::event_msg(tid)? as i32);
                    ptrace::syscall(tid)?;
                }
                other => return Err(unexpected(tid, other, "finishing an injected syscall")),
            }
        }
        let ret = ptrace::get_regs(tid)?.rax as i64;
        Ok(Outcome { ret, new_task })
    }

    /// Runs a call that ends the task (exit_group, or kill of itself with a
    /// fatal signal) and waits until it is gone; signals it gets on the way
    /// are delivered.
    pub fn run_to_exit(&self, nr: i64, args: [u64; 6]) -> Result<()> {
        let tid = self.tid;
        self.load(nr, args)?;
        ptrace::cont(tid, 0)?;
        loop {
            match ptrace::wait(tid)? {
                Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
                Stop::Signal(sig) => ptrace::cont(tid, sig)?,
                _ => ptrace::cont(tid, 0)?,
            }
        }
    }

    /// Runs the batch loop ([`BATCH_CODE`], at `code_ip` in the task) over
    /// the `n` entries of the table at `table` in the task's memory, with
    /// the task's signals blocked. Returns how many entries ran; the last
    /// one that ran may have failed (its result slot says). The int3 that
    /// ends the loop raises a forced SIGTRAP, which the tracer discards; if
    /// SIGTRAP was blocked, the kernel unblocks it and resets its action to
    /// the default: the caller sets signal actions and masks afterwards.
    pub fn run_batch(&self, code_ip: u64, table: u64, n: u64) -> Result<u64> {
        let tid = self.tid;
        let mut regs = ptrace::get_regs(tid)?;
        regs.rip = code_ip;
        regs.orig_rax = u64::MAX;
        regs.r12 = table;
        regs.r13 = n;
        ptrace::set_regs(tid, &regs)?;
        ptrace::cont(tid, 0)?;
        let mut stop = ptrace::wait(tid)?;
        // As in expect_syscall_stop: a job-control stop's extra trap first.
        for _ in 0..4 {
            if !matches!(stop, Stop::EventStop(_)) {
                break;
            }
            ptrace::cont(tid, 0)?;
            stop = ptrace::wait(tid)?;
        }
        match stop {
            Stop::Signal(libc::SIGTRAP) => {}
            other => {
                return Err(unexpected(
                    tid,
                    other,
                    "running a batch of injected syscalls",
                ))
            }
        }
        let left = ptrace::get_regs(tid)?.r13;
        Ok(n.saturating_sub(left))
    }

    /// Like [`Injector::run`], but turns a negative return into an error naming `name`.
    pub fn call(&self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let out = self.run(nr, args)?;
        if (-4095..0).contains(&out.ret) {
            return Err(SysError::Injected {
                name,
                tid: self.tid,
                source: std::io::Error::from_raw_os_error(-out.ret as i32),
            });
        }
        Ok(out.ret as u64)
    }

    /// Waits for the syscall-entry stop. A task seized while stopped by job
    /// control may report one more PTRACE_EVENT_STOP first (the seize and
    /// the interrupt each asked for one): it ran no instruction, so it is
    /// resumed again.
    fn expect_syscall_stop(&self, doing: &'static str) -> Result<()> {
        for _ in 0..4 {
            match ptrace::wait(self.tid)? {
                Stop::Syscall => return Ok(()),
                Stop::EventStop(_) => ptrace::syscall(self.tid)?,
                other => return Err(unexpected(self.tid, other, doing)),
            }
        }
        Err(SysError::UnexpectedStop {
            tid: self.tid,
            detail: "repeated PTRACE_EVENT_STOP".into(),
            doing,
        })
    }
}

fn unexpected(tid: i32, stop: Stop, doing: &'static str) -> SysError {
    SysError::UnexpectedStop {
        tid,
        detail: format!("{stop:?}"),
        doing,
    }
}

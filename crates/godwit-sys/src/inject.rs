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

    fn expect_syscall_stop(&self, doing: &'static str) -> Result<()> {
        match ptrace::wait(self.tid)? {
            Stop::Syscall => Ok(()),
            other => Err(unexpected(self.tid, other, doing)),
        }
    }
}

fn unexpected(tid: i32, stop: Stop, doing: &'static str) -> SysError {
    SysError::UnexpectedStop {
        tid,
        detail: format!("{stop:?}"),
        doing,
    }
}

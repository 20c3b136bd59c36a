//! Process-level calls made from the tracer: limits, robust lists, pidfds,
//! pipes, signals, and creating a process with a chosen PID.

use crate::{check, Result, SysError};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A resource limit as (soft, hard).
pub fn get_rlimit(pid: i32, resource: u32) -> Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 with a null new-limit pointer and a valid out-pointer.
    let r = unsafe { libc::prlimit64(pid, resource as _, std::ptr::null(), &mut old) };
    check(r as i64, "prlimit64(get)", format!("process {pid}"))?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets a resource limit of another process.
pub fn set_rlimit(pid: i32, resource: u32, soft: u64, hard: u64) -> Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit64 with a valid new-limit pointer and a null out-pointer.
    let r = unsafe { libc::prlimit64(pid, resource as _, &new, std::ptr::null_mut()) };
    check(
        r as i64,
        "prlimit64(set)",
        format!("process {pid} resource {resource}"),
    )
    .map(drop)
}

/// The robust futex list head and length of a task (get_robust_list).
pub fn robust_list(tid: i32) -> Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for the call.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) };
    check(r, "get_robust_list", format!("task {tid}"))?;
    Ok((head, len as u64))
}

/// Opens a pidfd for `pid` (for a process registered with
/// [`crate::proc::read_via`]: a pidfd of its live thread, PIDFD_THREAD, so
/// that pidfd_getfd reaches its descriptors).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    const PIDFD_THREAD: libc::c_long = libc::O_EXCL as libc::c_long;
    let (task, flags) = match crate::proc::via(pid) {
        t if t == pid => (pid, 0),
        t => (t, PIDFD_THREAD),
    };
    // SAFETY: plain integer syscall.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, task, flags) };
    let fd = check(r, "pidfd_open", format!("process {pid}"))?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Duplicates file descriptor `fd` of the process behind `pidfd` into ours.
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> Result<OwnedFd> {
    // SAFETY: plain integer syscall on a pidfd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let n = check(r, "pidfd_getfd", format!("fd {fd}"))?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(n as i32) })
}

/// Creates a pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(r as i64, "pipe2", "godwit")?;
    // SAFETY: pipe2 returned two new descriptors that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Number of bytes waiting in a pipe (FIONREAD).
pub fn pipe_pending(fd: &OwnedFd) -> Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid out-pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    check(r as i64, "ioctl(FIONREAD)", "pipe")?;
    Ok(n as usize)
}

/// Duplicates up to `len` bytes of pipe `from` into pipe `to` without consuming them (tee(2)).
pub fn tee(from: &OwnedFd, to: &OwnedFd, len: usize) -> Result<usize> {
    // SAFETY: plain integer syscall on descriptors we own.
    let r = unsafe {
        libc::tee(
            from.as_raw_fd(),
            to.as_raw_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    check(r as i64, "tee", "pipe").map(|n| n as usize)
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain integer syscall.
    let r = unsafe { libc::kill(pid, sig) };
    check(r as i64, "kill", format!("process {pid}")).map(drop)
}

/// Whether the process `pid` exists (and is not a zombie we could reap).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Makes the caller a child subreaper: orphaned descendants are re-parented to it.
pub fn set_child_subreaper() -> Result<()> {
    // SAFETY: plain integer prctl.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    check(r as i64, "prctl(PR_SET_CHILD_SUBREAPER)", "self").map(drop)
}

/// The caller's own action for signal `sig`, as the kernel's struct
/// (handler, flags, restorer, mask).
pub fn own_sigaction(sig: u32) -> Result<[u64; 4]> {
    let mut old = [0u64; 4];
    // SAFETY: rt_sigaction with a null new action and an out-pointer to a
    // 32-byte buffer (the kernel's struct sigaction on x86_64), sigsetsize 8.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig as libc::c_long,
            std::ptr::null::<u8>(),
            old.as_mut_ptr(),
            8usize,
        )
    };
    check(r, "rt_sigaction", format!("signal {sig}"))?;
    Ok(old)
}

/// The caller's effective uid.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// XCR0 of this CPU (the enabled xsave features) and the xsave area size for them.
pub fn xsave_features() -> (u64, u32) {
    if !std::arch::is_x86_feature_detected!("xsave") {
        return (0, 512);
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx=0 is valid when the CPU supports XSAVE (checked
    // above) and the OS enabled it (it did: x86_64 Linux always does then).
    unsafe {
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
    }
    let size = std::arch::x86_64::__cpuid_count(0xd, 0).ebx;
    (((hi as u64) << 32) | lo as u64, size)
}

#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub(crate) flags: u64,
    pub(crate) pidfd: u64,
    pub(crate) child_tid: u64,
    pub(crate) parent_tid: u64,
    pub(crate) exit_signal: u64,
    pub(crate) stack: u64,
    pub(crate) stack_size: u64,
    pub(crate) tls: u64,
    pub(crate) set_tid: u64,
    pub(crate) set_tid_size: u64,
    pub(crate) cgroup: u64,
}

/// Creates a new process with PID `pid` (in the caller's PID namespace) that
/// waits in pause(2), re-parented to init (or the nearest subreaper) so that it
/// is not a child of the caller. Its memory is a copy of the caller's. Returns
/// its PID; `EEXIST` (as [`SysError::Call`]) when `pid` is in use.
pub fn spawn_stub(pid: i32) -> Result<i32> {
    let (rd, wr) = pipe()?;
    // SAFETY: fork in a possibly multi-threaded process; the child only makes
    // async-signal-safe raw syscalls (clone3, write, _exit, pause) before it
    // exits or waits forever.
    let h = unsafe { libc::fork() };
    if h < 0 {
        return Err(SysError::call("fork", "godwit"));
    }
    if h == 0 {
        let set_tid = [pid];
        let args = CloneArgs {
            exit_signal: libc::SIGCHLD as u64,
            set_tid: set_tid.as_ptr() as u64,
            set_tid_size: 1,
            ..Default::default()
        };
        // SAFETY: clone3 with a valid args struct; the child returns 0 on the
        // same stack copy and only loops on pause below.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r == 0 {
            loop {
                // SAFETY: pause has no arguments.
                unsafe { libc::syscall(libc::SYS_pause) };
            }
        }
        let code: i32 = if r < 0 {
            // SAFETY: reading errno right after the failed call.
            -unsafe { *libc::__errno_location() }
        } else {
            r as i32
        };
        let b = code.to_le_bytes();
        // SAFETY: write of a 4-byte local buffer, then _exit without unwinding.
        unsafe {
            libc::write(wr.as_raw_fd(), b.as_ptr() as *const libc::c_void, 4);
            libc::_exit(0);
        }
    }
    drop(wr);
    let mut status = 0;
    // SAFETY: valid out-pointer; `h` is our child.
    unsafe { libc::waitpid(h, &mut status, 0) };
    let mut b = [0u8; 4];
    // SAFETY: read into a 4-byte local buffer.
    let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr() as *mut libc::c_void, 4) };
    if n != 4 {
        return Err(SysError::call_errno(
            "clone3(set_tid)",
            format!("pid {pid}"),
            libc::EIO,
        ));
    }
    let code = i32::from_le_bytes(b);
    if code < 0 {
        return Err(SysError::call_errno(
            "clone3(set_tid)",
            format!("pid {pid}"),
            -code,
        ));
    }
    Ok(code)
}

/// Sets a pipe's capacity (F_SETPIPE_SZ), at least `bytes`.
pub fn set_pipe_size(fd: &OwnedFd, bytes: usize) -> Result<()> {
    // SAFETY: plain integer fcntl on a descriptor we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
    check(r as i64, "fcntl(F_SETPIPE_SZ)", "pipe").map(drop)
}

/// The buffer size of a pipe or FIFO we hold (F_GETPIPE_SZ).
pub fn pipe_size(fd: impl AsFd) -> Result<u32> {
    // SAFETY: plain integer fcntl on a descriptor we hold.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETPIPE_SZ) };
    check(r as i64, "fcntl(F_GETPIPE_SZ)", "pipe").map(|n| n as u32)
}

/// fcntl commands and owner types of <linux/fcntl.h> that libc lacks.
pub const F_SETSIG: i32 = 10;
pub const F_GETSIG: i32 = 11;
pub const F_SETOWN_EX: i32 = 15;
pub const F_GETOWN_EX: i32 = 16;
pub const F_OWNER_TID: i32 = 0;
pub const F_OWNER_PID: i32 = 1;
pub const F_OWNER_PGRP: i32 = 2;

/// The owner of a descriptor we hold, which I/O signals go to
/// (F_GETOWN_EX): (F_OWNER_TID 0 / F_OWNER_PID 1 / F_OWNER_PGRP 2, id);
/// id 0 when it has none.
pub fn fd_owner(fd: impl AsFd) -> Result<(i32, i32)> {
    // struct f_owner_ex { int type; pid_t pid; }
    let mut owner = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex (two ints), which
    // `owner` has room for.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), F_GETOWN_EX, owner.as_mut_ptr()) };
    check(r as i64, "fcntl(F_GETOWN_EX)", "fd").map(|_| (owner[0], owner[1]))
}

/// The signal sent for I/O on a descriptor we hold (F_GETSIG; 0: SIGIO).
pub fn fd_signal(fd: impl AsFd) -> Result<i32> {
    // SAFETY: plain integer fcntl on a descriptor we hold.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), F_GETSIG) };
    check(r as i64, "fcntl(F_GETSIG)", "fd").map(|s| s as i32)
}

/// write(2) on a raw descriptor; returns the bytes written.
pub fn write(fd: i32, data: &[u8]) -> Result<usize> {
    // SAFETY: `data` is a valid buffer of `data.len()` bytes.
    let r = unsafe { libc::write(fd, data.as_ptr() as *const libc::c_void, data.len()) };
    check(r as i64, "write", format!("fd {fd}")).map(|n| n as usize)
}

/// An integer socket option of a socket we hold.
pub fn getsockopt_int(fd: impl AsFd, level: i32, name: i32) -> Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    check(
        r as i64,
        "getsockopt",
        format!("level {level} option {name}"),
    )?;
    Ok(v)
}

type SockAddrCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// The address `call` (getsockname or getpeername) gives for a socket we
/// hold, as raw sockaddr bytes.
fn sock_addr(fd: BorrowedFd<'_>, call: SockAddrCall, name: &'static str) -> Result<Vec<u8>> {
    let mut buf = [0u8; 128];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `call` is getsockname or getpeername; `buf` is a valid
    // out-buffer of `len` bytes and `len` a valid in/out pointer.
    let r = unsafe {
        call(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::sockaddr,
            &mut len,
        )
    };
    check(r as i64, name, "socket")?;
    Ok(buf[..(len as usize).min(buf.len())].to_vec())
}

/// The bound address of a socket we hold, as raw sockaddr bytes.
pub fn getsockname(fd: impl AsFd) -> Result<Vec<u8>> {
    sock_addr(fd.as_fd(), libc::getsockname, "getsockname")
}

/// The address of the peer of a connected socket we hold, as raw sockaddr bytes.
pub fn getpeername(fd: impl AsFd) -> Result<Vec<u8>> {
    sock_addr(fd.as_fd(), libc::getpeername, "getpeername")
}

/// For a listening TCP socket: (connections waiting to be accepted, backlog).
pub fn tcp_listen_queue(fd: &OwnedFd) -> Result<(u32, u32)> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is a valid out-buffer of `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    check(r as i64, "getsockopt(TCP_INFO)", "socket")?;
    // struct tcp_info: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
    // unacked, sacked. For a listener unacked = accept queue, sacked = backlog.
    let at = |o: usize| u32::from_ne_bytes(info[o..o + 4].try_into().expect("4 bytes"));
    Ok((at(24), at(28)))
}

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file
/// description (kcmp KCMP_FILE).
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: plain integer syscall.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            crate::proc::via(pid1),
            crate::proc::via(pid2),
            KCMP_FILE,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    Ok(check(
        r,
        "kcmp",
        format!("fd {fd1} of {pid1} / fd {fd2} of {pid2}"),
    )? == 0)
}

/// Whether the file watched by the `toff`-th entry (0-based, in the order
/// of /proc/PID/fdinfo/EPFD) for fd number `tfd` in epoll instance `epfd`
/// of `pid` is the file at fd `fd` of `pid` (kcmp KCMP_EPOLL_TFD). An
/// entry stays keyed by the fd number it was added under even after that
/// fd is closed while its file is still open elsewhere.
pub fn epoll_target_is(pid: i32, epfd: i32, tfd: i32, toff: u32, fd: i32) -> Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    // struct kcmp_epoll_slot { __u32 efd, tfd, toff; }
    let slot: [u32; 3] = [epfd as u32, tfd as u32, toff];
    // SAFETY: kcmp reads the 12-byte slot, which lives across the call;
    // the other arguments are integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            crate::proc::via(pid),
            crate::proc::via(pid),
            KCMP_EPOLL_TFD,
            fd as libc::c_long,
            slot.as_ptr() as libc::c_long,
        )
    };
    Ok(check(
        r,
        "kcmp(KCMP_EPOLL_TFD)",
        format!("fd {fd} of {pid} / epoll fd {epfd} target {tfd}#{toff}"),
    )? == 0)
}

/// The children of every thread of `pid` (/proc/PID/task/*/children).
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in crate::proc::tasks(pid)? {
        let path = format!("/proc/{pid}/task/{tid}/children");
        if let Ok(text) = std::fs::read_to_string(&path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// lseek(SEEK_DATA) (`data`) or lseek(SEEK_HOLE) from `pos`; None past the end.
pub fn seek_data(f: &std::fs::File, pos: u64, data: bool) -> Option<u64> {
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    // SAFETY: plain integer lseek on a file we hold.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

/// The seals of a memfd (F_GET_SEALS) through a descriptor we hold.
pub fn memfd_seals(fd: impl AsFd) -> Result<u32> {
    // SAFETY: plain integer fcntl on a descriptor we hold.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GET_SEALS) };
    check(r as i64, "fcntl(F_GET_SEALS)", "memfd").map(|s| s as u32)
}

/// Adds `seals` to a memfd (F_ADD_SEALS) through a writable descriptor we hold.
pub fn add_memfd_seals(fd: impl AsFd, seals: u32) -> Result<()> {
    // SAFETY: plain integer fcntl on a descriptor we hold.
    let r = unsafe {
        libc::fcntl(
            fd.as_fd().as_raw_fd(),
            libc::F_ADD_SEALS,
            seals as libc::c_int,
        )
    };
    check(
        r as i64,
        "fcntl(F_ADD_SEALS)",
        format!("memfd seals {seals:#x}"),
    )
    .map(drop)
}

/// The type (f_type, a filesystem magic number) of the filesystem holding `path`.
pub fn fs_type(path: &str) -> Result<i64> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| SysError::call_errno("statfs", path, libc::EINVAL))?;
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    check(r as i64, "statfs", path)?;
    Ok(st.f_type)
}

/// The page size of a file on hugetlbfs (statfs's block size there), or
/// `None` when `path` is not on a hugetlbfs.
pub fn hugetlb_page_size(path: &str) -> Result<Option<u64>> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| SysError::call_errno("statfs", path, libc::EINVAL))?;
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    check(r as i64, "statfs", path)?;
    Ok((st.f_type == libc::HUGETLBFS_MAGIC).then_some(st.f_bsize as u64))
}

/// Waits until process `pid` has exited (its pidfd becomes readable); works
/// for a process that is not our child. Returns at once if it is gone.
pub fn wait_exit(pid: i32) -> Result<()> {
    let pidfd = match pidfd_open(pid) {
        Ok(p) => p,
        Err(e) if e.errno() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    loop {
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on a pidfd we own.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if r < 0 && err.raw_os_error() != Some(libc::EINTR) {
            return Err(SysError::Call {
                call: "poll",
                target: format!("pidfd of process {pid}"),
                source: err,
            });
        }
    }
}

/// Sends descriptor `fd` over unix socket `sock` (one byte of data and one
/// SCM_RIGHTS message), so that the receiver gets a descriptor of the same
/// open file description.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    let byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // Room for one cmsghdr with one int, 8-byte aligned.
    let mut ctl = [0u64; 4];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    debug_assert!(space <= std::mem::size_of_val(&ctl));
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `ctl`, large enough for one header and one
    // int (checked above); CMSG_FIRSTHDR/CMSG_DATA stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::c_int, fd.as_raw_fd());
    }
    // SAFETY: every pointer in `msg` is valid for the duration of the call.
    let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    check(
        r as i64,
        "sendmsg(SCM_RIGHTS)",
        format!("fd {}", fd.as_raw_fd()),
    )
    .map(|_| ())
}

/// fstat of a descriptor we hold: (st_mode, st_dev, st_ino).
pub fn fd_stat(fd: BorrowedFd<'_>) -> Result<(u32, u64, u64)> {
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    check(r as i64, "fstat", format!("fd {}", fd.as_raw_fd()))?;
    Ok((st.st_mode, st.st_dev, st.st_ino))
}

/// The target of the symlink a descriptor we hold (O_PATH|O_NOFOLLOW)
/// refers to: readlinkat with an empty path, which works on a symlink that
/// no longer has a name.
pub fn readlink_fd(fd: &OwnedFd) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: an empty C string and a buffer of buf.len() bytes we own.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    check(n as i64, "readlinkat", format!("fd {}", fd.as_raw_fd()))?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// A duplicate (same open file description) of this process's descriptor
/// `fd`, by number: fails with EBADF when it is not open.
pub fn dup_fd(fd: i32) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only adds a descriptor to our table.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    check(r as i64, "fcntl(F_DUPFD_CLOEXEC)", format!("fd {fd}"))?;
    // SAFETY: fcntl returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The status flags (F_GETFL) of a descriptor we hold.
pub fn status_flags(fd: BorrowedFd<'_>) -> Result<i32> {
    // SAFETY: plain integer fcntl.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    check(r as i64, "fcntl(F_GETFL)", format!("fd {}", fd.as_raw_fd()))?;
    Ok(r)
}

/// Sets the status flags (F_SETFL) of a descriptor we hold.
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> Result<()> {
    // SAFETY: plain integer fcntl.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) };
    check(r as i64, "fcntl(F_SETFL)", format!("fd {}", fd.as_raw_fd())).map(|_| ())
}

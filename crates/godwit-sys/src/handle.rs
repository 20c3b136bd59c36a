//! Calls the tracer makes on descriptors borrowed from a frozen process
//! (pidfd_getfd) or on file handles read from /proc: opening an inode by its
//! file handle (to find the path of an inotify watch) and reading a timerfd.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The kernel's limit on the size of a file handle (MAX_HANDLE_SZ).
pub const MAX_HANDLE_BYTES: usize = 128;

/// Opens, as an `O_PATH` descriptor, the inode named by file handle
/// (`handle_type`, `handle`) on the filesystem that `mount` belongs to
/// (open_by_handle_at(2)). Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(mount: BorrowedFd<'_>, handle_type: i32, handle: &[u8]) -> Result<OwnedFd> {
    if handle.is_empty() || handle.len() > MAX_HANDLE_BYTES {
        return Err(SysError::call_errno(
            "open_by_handle_at",
            format!("a {}-byte file handle", handle.len()),
            libc::EINVAL,
        ));
    }
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; },
    // built in u32 words so that it is suitably aligned.
    let mut buf = vec![0u32; 2 + MAX_HANDLE_BYTES / 4];
    buf[0] = handle.len() as u32;
    buf[1] = handle_type as u32;
    for (i, chunk) in handle.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        buf[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: `buf` is a 4-byte aligned struct file_handle whose handle_bytes
    // (at most MAX_HANDLE_BYTES) fit in the buffer; the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            buf.as_mut_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    let fd = check(
        r,
        "open_by_handle_at",
        format!("file handle of type {handle_type}"),
    )?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The time left to the next expiry and the interval of timerfd `fd`, in ns
/// (timerfd_gettime(2)). As a side effect the kernel adds to the timer's
/// unread expirations those of a periodic timer that expired more than once
/// since it was last read, so /proc/…/fdinfo shows them all afterwards.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    let mut its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
    };
    // SAFETY: `its` is a valid out-pointer for one struct itimerspec.
    let r = unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut its) };
    check(
        r as i64,
        "timerfd_gettime",
        format!("fd {}", fd.as_raw_fd()),
    )?;
    let ns = |t: &libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    Ok((ns(&its.it_value), ns(&its.it_interval)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn reopens_a_directory_by_its_handle() {
        let dir = std::env::temp_dir();
        let mut words = vec![0u32; 2 + MAX_HANDLE_BYTES / 4];
        words[0] = MAX_HANDLE_BYTES as u32;
        let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        let mut mount_id: libc::c_int = 0;
        // SAFETY: test-only name_to_handle_at with a buffer of MAX_HANDLE_BYTES.
        let r = unsafe {
            libc::syscall(
                libc::SYS_name_to_handle_at,
                libc::AT_FDCWD,
                c.as_ptr(),
                words.as_mut_ptr(),
                &mut mount_id,
                0,
            )
        };
        if r != 0 {
            eprintln!("skipped: name_to_handle_at unsupported here");
            return;
        }
        let len = words[0] as usize;
        let bytes: Vec<u8> = words[2..]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(len)
            .collect();
        let mount = std::fs::File::open(&dir).unwrap();
        match open_by_handle(mount.as_fd(), words[1] as i32, &bytes) {
            Ok(fd) => {
                let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
                assert_eq!(p, dir.canonicalize().unwrap());
            }
            Err(e) if e.errno() == Some(libc::EPERM) => {
                eprintln!("skipped: needs CAP_DAC_READ_SEARCH")
            }
            Err(e) => panic!("{e}"),
        }
        assert!(open_by_handle(mount.as_fd(), 1, &[]).is_err());
    }
}

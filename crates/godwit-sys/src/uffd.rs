//! userfaultfd on another process's memory: write-protect ranges and receive
//! write faults, to take a copy-on-write snapshot of a running process.
//!
//! The descriptor is created inside the target (injected `userfaultfd`) and
//! fetched with pidfd_getfd; it then acts on the target's address space.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_AA01;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;

pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// A fork of the registered process gets a userfaultfd of its own, sent to
/// the reader as a [`Msg::Fork`] (the fork waits until it is read).
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Write faults on protected pages are resolved by the kernel itself (the
/// page just loses its protection, which PAGEMAP_SCAN then reports as
/// written): dirty tracking with no handler and no stalls.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// userfaultfd() flag: only faults taken in user mode reach the descriptor
/// (kernel-mode ones fail with EFAULT). Allowed to unprivileged processes
/// even while vm.unprivileged_userfaultfd is 0; harmless for async write
/// protection, which the kernel resolves without the descriptor.
pub const USER_MODE_ONLY: u64 = 1;
pub const REGISTER_MODE_MISSING: u64 = 1;
pub const REGISTER_MODE_WP: u64 = 2;

const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const EVENT_REMAP: u8 = 0x14;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;
const PAGEFAULT_FLAG_WP: u64 = 2;

/// One message read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A write to a write-protected page at this address.
    WriteProtectFault {
        addr: u64,
    },
    /// Another page fault (not expected in WP-only mode).
    OtherFault {
        addr: u64,
    },
    /// [start, end) was unmapped, released (MADV_DONTNEED) or moved away.
    RangeGone {
        start: u64,
        end: u64,
    },
    Other(u8),
}

pub struct Uffd {
    fd: OwnedFd,
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: &mut [u64], name: &'static str) -> Result<()> {
    // SAFETY: `arg` is a live u64 array at least as large as the struct the
    // ioctl `req` reads and writes (each caller passes the matching size).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg.as_mut_ptr()) };
    check(r as i64, name, "userfaultfd").map(drop)
}

impl Uffd {
    /// Wraps a userfaultfd descriptor and performs the API handshake,
    /// requesting `features`; fails if the kernel lacks any of them.
    pub fn new(fd: OwnedFd, features: u64) -> Result<Uffd> {
        let mut api = [UFFD_API, features, 0];
        ioctl(&fd, UFFDIO_API, &mut api, "UFFDIO_API")?;
        if api[1] & features != features {
            return Err(SysError::call_errno(
                "UFFDIO_API",
                "userfaultfd features",
                libc::ENOTSUP,
            ));
        }
        Ok(Uffd { fd })
    }

    pub fn register(&self, start: u64, len: u64, mode: u64) -> Result<()> {
        let mut reg = [start, len, mode, 0];
        ioctl(&self.fd, UFFDIO_REGISTER, &mut reg, "UFFDIO_REGISTER")
    }

    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut range = [start, len];
        ioctl(&self.fd, UFFDIO_UNREGISTER, &mut range, "UFFDIO_UNREGISTER")
    }

    /// Fills the missing pages at `dst` (in the registered process) with
    /// `src` (UFFDIO_COPY): each page is allocated and copied in one step,
    /// without the zeroing and fault of a first touch. `dst` and the length
    /// must be page-aligned.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<()> {
        let mut done = 0u64;
        let mut stalls = 0;
        let len = src.len() as u64;
        while done < len {
            // dst, src, len, mode, copy (bytes copied, or -errno)
            let mut arg = [dst + done, src.as_ptr() as u64 + done, len - done, 0, 0];
            // SAFETY: `arg` is a live uffdio_copy (5 u64) and its src points
            // into `src`, which stays borrowed for the call; the kernel only
            // reads [src, src + len).
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, arg.as_mut_ptr()) };
            let copied = arg[4] as i64;
            if copied > 0 {
                done += copied as u64;
            }
            if r < 0 {
                let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if (e == libc::EAGAIN || e == libc::EINTR) && copied >= 0 && stalls < 1000 {
                    stalls = if copied > 0 { 0 } else { stalls + 1 };
                    continue;
                }
                return Err(SysError::call_errno(
                    "UFFDIO_COPY",
                    format!("{:#x}+{:#x}", dst + done, len - done),
                    e,
                ));
            }
        }
        Ok(())
    }

    /// Sets (`protect`) or clears write protection on a range; clearing wakes
    /// the threads waiting on it.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> Result<()> {
        let mut wp = [start, len, if protect { 1 } else { 0 }];
        ioctl(
            &self.fd,
            UFFDIO_WRITEPROTECT,
            &mut wp,
            "UFFDIO_WRITEPROTECT",
        )
    }

    /// Waits up to `timeout_ms` for messages and returns those read; returns
    /// at once (with none) when `waker` is woken.
    pub fn read_events(&self, timeout_ms: i32, waker: Option<&Waker>) -> Result<Vec<Event>> {
        let mut pfds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: waker.map_or(-1, |w| w.fd.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(Vec::new());
            }
            return Err(SysError::Call {
                call: "poll",
                target: "userfaultfd".into(),
                source: e,
            });
        }
        if pfds[0].revents & libc::POLLIN == 0 {
            return Ok(Vec::new());
        }
        let mut buf = [0u8; 32 * 64];
        // SAFETY: `buf` is a valid out-buffer of its length.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(Vec::new());
            }
            return Err(SysError::Call {
                call: "read",
                target: "userfaultfd".into(),
                source: e,
            });
        }
        Ok(buf[..r as usize].chunks_exact(32).map(parse_msg).collect())
    }
}

/// One message read from a userfaultfd, in full (see [`Uffd::read_msgs`]).
#[derive(Debug)]
pub enum Msg {
    /// A thread touched the missing (or write-protected: `wp`) page at `addr`.
    Fault {
        addr: u64,
        wp: bool,
    },
    /// The process forked: its child's userfaultfd (registered on the same
    /// ranges, with the same features), now open in this process.
    Fork(Uffd),
    /// mremap moved `len` bytes at `from` to `to`.
    Remap {
        from: u64,
        to: u64,
        len: u64,
    },
    /// [start, end) was released (MADV_DONTNEED, MADV_REMOVE): the
    /// process now reads zeros there (once the call returns).
    Remove {
        start: u64,
        end: u64,
    },
    /// [start, end) was unmapped.
    Unmap {
        start: u64,
        end: u64,
    },
    Other(u8),
}

/// What a [`Uffd::copy_some`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// All of it.
    All,
    /// The first `done` bytes, then stopped with `errno`: EEXIST (the next
    /// page is there already), EAGAIN (the address space is changing: read
    /// the pending messages first), ESRCH (the process's memory is gone),
    /// ENOENT/EFAULT (no registered mapping there any more).
    Stopped { done: u64, errno: i32 },
}

impl Uffd {
    /// A userfaultfd the kernel opened for us already set up (the child's
    /// in a [`Msg::Fork`]): no API handshake.
    fn initialized(fd: OwnedFd) -> Uffd {
        Uffd { fd }
    }

    /// One UFFDIO_COPY of `src` to `dst` (page-aligned), without retrying:
    /// the caller decides what an interruption means (see [`Copied`]).
    pub fn copy_some(&self, dst: u64, src: &[u8]) -> Copied {
        let len = src.len() as u64;
        let mut done = 0u64;
        loop {
            if done == len {
                return Copied::All;
            }
            // dst, src, len, mode, copy (bytes copied, or -errno)
            let mut arg = [dst + done, src.as_ptr() as u64 + done, len - done, 0, 0];
            // SAFETY: `arg` is a live uffdio_copy (5 u64) and its src points
            // into `src`, which stays borrowed for the call; the kernel only
            // reads [src + done, src + len).
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, arg.as_mut_ptr()) };
            let copied = arg[4] as i64;
            if copied > 0 {
                done += copied as u64;
            }
            if r >= 0 {
                continue;
            }
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e == libc::EINTR {
                continue;
            }
            return Copied::Stopped { done, errno: e };
        }
    }

    /// Wakes the threads waiting on a fault in [start, start + len): they
    /// fault again if the page is still missing.
    pub fn wake(&self, start: u64, len: u64) -> Result<()> {
        let mut range = [start, len];
        ioctl(&self.fd, UFFDIO_WAKE, &mut range, "UFFDIO_WAKE")
    }

    /// Waits up to `timeout_ms` (0: not at all) for messages and returns
    /// those read, in full.
    pub fn read_msgs(&self, timeout_ms: i32) -> Result<Vec<Msg>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(Vec::new());
            }
            return Err(SysError::Call {
                call: "poll",
                target: "userfaultfd".into(),
                source: e,
            });
        }
        if pfd.revents & libc::POLLIN == 0 {
            return Ok(Vec::new());
        }
        let mut buf = [0u8; 32 * 64];
        // SAFETY: `buf` is a valid out-buffer of its length.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                return Ok(Vec::new());
            }
            return Err(SysError::Call {
                call: "read",
                target: "userfaultfd".into(),
                source: e,
            });
        }
        Ok(buf[..r as usize].chunks_exact(32).map(parse_full).collect())
    }
}

/// Decodes one 32-byte `struct uffd_msg`, taking ownership of the
/// descriptor a fork message carries.
fn parse_full(m: &[u8]) -> Msg {
    let u = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().expect("8 bytes"));
    match m[0] {
        EVENT_PAGEFAULT => Msg::Fault {
            addr: u(16),
            wp: u(8) & PAGEFAULT_FLAG_WP != 0,
        },
        EVENT_FORK => {
            let fd = u32::from_ne_bytes(m[8..12].try_into().expect("4 bytes")) as i32;
            // SAFETY: the kernel installed this descriptor in our table while
            // the message was read and hands it to the reader alone; it is
            // wrapped exactly once, here.
            Msg::Fork(Uffd::initialized(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        EVENT_REMAP => Msg::Remap {
            from: u(8),
            to: u(16),
            len: u(24),
        },
        EVENT_REMOVE => Msg::Remove {
            start: u(8),
            end: u(16),
        },
        EVENT_UNMAP => Msg::Unmap {
            start: u(8),
            end: u(16),
        },
        e => Msg::Other(e),
    }
}

impl std::fmt::Debug for Uffd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uffd({})", self.fd.as_raw_fd())
    }
}

/// Decodes one 32-byte `struct uffd_msg`.
fn parse_msg(m: &[u8]) -> Event {
    let u = |o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().expect("8 bytes"));
    match m[0] {
        EVENT_PAGEFAULT => {
            let (flags, addr) = (u(8), u(16));
            if flags & PAGEFAULT_FLAG_WP != 0 {
                Event::WriteProtectFault { addr }
            } else {
                Event::OtherFault { addr }
            }
        }
        // remap: from, to, len
        EVENT_REMAP => Event::RangeGone {
            start: u(8),
            end: u(8) + u(24),
        },
        EVENT_REMOVE | EVENT_UNMAP => Event::RangeGone {
            start: u(8),
            end: u(16),
        },
        e => Event::Other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let mut m = [0u8; 32];
        m[0] = EVENT_PAGEFAULT;
        m[8..16].copy_from_slice(&(PAGEFAULT_FLAG_WP | 1).to_ne_bytes());
        m[16..24].copy_from_slice(&0x7000u64.to_ne_bytes());
        assert_eq!(parse_msg(&m), Event::WriteProtectFault { addr: 0x7000 });
        m[0] = EVENT_REMOVE;
        m[8..16].copy_from_slice(&0x1000u64.to_ne_bytes());
        m[16..24].copy_from_slice(&0x3000u64.to_ne_bytes());
        assert_eq!(
            parse_msg(&m),
            Event::RangeGone {
                start: 0x1000,
                end: 0x3000
            }
        );
        m[0] = EVENT_REMAP;
        m[24..32].copy_from_slice(&0x2000u64.to_ne_bytes());
        assert_eq!(
            parse_msg(&m),
            Event::RangeGone {
                start: 0x1000,
                end: 0x3000
            }
        );
    }
}

/// Wakes a thread waiting in [`Uffd::read_events`] (an eventfd).
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> Result<Waker> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(SysError::call("eventfd", "godwit"));
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd })
    }

    /// Makes every present and future read_events with this waker return at once.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }
}

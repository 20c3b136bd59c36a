//! Terminals: terminal settings (termios), window size, the pty index, lock
//! and packet mode of a pty master, the device behind /dev/tty, the session
//! and foreground process group of a terminal, the owner and mode of a
//! pty's slave node. Each call works on a
//! descriptor of ours (e.g. a pidfd_getfd copy of a target's), so reading
//! changes nothing in the target.

use crate::{check, Result, SysError};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Characters in `c_cc` of the kernel's struct termios2 (NCCS).
pub const NCCS: usize = 19;

/// The kernel's struct termios2: the terminal settings with the real speeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; NCCS],
    pub ispeed: u32,
    pub ospeed: u32,
}

/// struct winsize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

fn target(fd: BorrowedFd<'_>) -> String {
    format!("terminal fd {}", fd.as_raw_fd())
}

/// Reads one int-sized value with an ioctl that writes it.
fn get_int(fd: BorrowedFd<'_>, req: libc::Ioctl, name: &'static str) -> Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int to the valid out-pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) };
    check(r as i64, name, target(fd))?;
    Ok(v)
}

/// Passes a pointer to one int to an ioctl that reads it.
fn set_int(fd: BorrowedFd<'_>, req: libc::Ioctl, v: libc::c_int, name: &'static str) -> Result<()> {
    // SAFETY: the request reads one int from the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, &v) };
    check(r as i64, name, target(fd)).map(drop)
}

/// Whether `fd` is a terminal (TCGETS succeeds).
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: zeroed termios is a valid out-buffer for TCGETS.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS writes one struct termios to the valid out-pointer.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS, &mut t) == 0 }
}

/// The terminal settings (TCGETS2).
pub fn get_termios(fd: BorrowedFd<'_>) -> Result<Termios> {
    // SAFETY: zeroed termios2 is a valid out-buffer (plain integers).
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: TCGETS2 writes one struct termios2 to the valid out-pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, &mut t) };
    check(r as i64, "ioctl(TCGETS2)", target(fd))?;
    let mut cc = [0u8; NCCS];
    for (d, s) in cc.iter_mut().zip(t.c_cc.iter()) {
        *d = *s;
    }
    Ok(Termios {
        iflag: t.c_iflag,
        oflag: t.c_oflag,
        cflag: t.c_cflag,
        lflag: t.c_lflag,
        line: t.c_line,
        cc,
        ispeed: t.c_ispeed,
        ospeed: t.c_ospeed,
    })
}

/// Sets the terminal settings at once (TCSETS2).
pub fn set_termios(fd: BorrowedFd<'_>, t: &Termios) -> Result<()> {
    // SAFETY: zeroed termios2 is a valid value (plain integers).
    let mut k: libc::termios2 = unsafe { std::mem::zeroed() };
    k.c_iflag = t.iflag;
    k.c_oflag = t.oflag;
    k.c_cflag = t.cflag;
    k.c_lflag = t.lflag;
    k.c_line = t.line;
    for (d, s) in k.c_cc.iter_mut().zip(t.cc.iter()) {
        *d = *s;
    }
    k.c_ispeed = t.ispeed;
    k.c_ospeed = t.ospeed;
    // SAFETY: TCSETS2 reads one struct termios2 from the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, &k) };
    check(r as i64, "ioctl(TCSETS2)", target(fd)).map(drop)
}

/// The window size (TIOCGWINSZ).
pub fn get_winsize(fd: BorrowedFd<'_>) -> Result<WinSize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize to the valid out-pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) };
    check(r as i64, "ioctl(TIOCGWINSZ)", target(fd))?;
    Ok(WinSize {
        rows: w.ws_row,
        cols: w.ws_col,
        xpixel: w.ws_xpixel,
        ypixel: w.ws_ypixel,
    })
}

/// Sets the window size (TIOCSWINSZ; the foreground group gets SIGWINCH if
/// it changed).
pub fn set_winsize(fd: BorrowedFd<'_>, w: &WinSize) -> Result<()> {
    let k = libc::winsize {
        ws_row: w.rows,
        ws_col: w.cols,
        ws_xpixel: w.xpixel,
        ws_ypixel: w.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize from the valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &k) };
    check(r as i64, "ioctl(TIOCSWINSZ)", target(fd)).map(drop)
}

/// The index N of a pty master's slave /dev/pts/N (TIOCGPTN).
pub fn pty_index(master: BorrowedFd<'_>) -> Result<u32> {
    get_int(master, libc::TIOCGPTN, "ioctl(TIOCGPTN)").map(|n| n as u32)
}

/// Whether a pty's slave is locked (TIOCGPTLCK; unlockpt clears it).
pub fn pty_locked(master: BorrowedFd<'_>) -> Result<bool> {
    get_int(master, libc::TIOCGPTLCK, "ioctl(TIOCGPTLCK)").map(|v| v != 0)
}

/// Locks or unlocks a pty's slave (TIOCSPTLCK).
pub fn set_pty_locked(master: BorrowedFd<'_>, locked: bool) -> Result<()> {
    set_int(
        master,
        libc::TIOCSPTLCK,
        locked as libc::c_int,
        "ioctl(TIOCSPTLCK)",
    )
}

/// Whether a pty master is in packet mode (TIOCGPKT).
pub fn packet_mode(master: BorrowedFd<'_>) -> Result<bool> {
    get_int(master, libc::TIOCGPKT, "ioctl(TIOCGPKT)").map(|v| v != 0)
}

/// Turns packet mode of a pty master on or off (TIOCPKT).
pub fn set_packet_mode(master: BorrowedFd<'_>, on: bool) -> Result<()> {
    set_int(master, libc::TIOCPKT, on as libc::c_int, "ioctl(TIOCPKT)")
}

/// The device number of the terminal behind `fd` (TIOCGDEV): for a
/// descriptor opened as /dev/tty, the real terminal; for a pty master, its
/// slave.
pub fn real_device(fd: BorrowedFd<'_>) -> Result<u64> {
    let mut v: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int to the valid out-pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGDEV, &mut v) };
    check(r as i64, "ioctl(TIOCGDEV)", target(fd))?;
    // The kernel's encoding of a dev_t in 32 bits (new_encode_dev).
    Ok(decode_kernel_dev(v))
}

/// Converts the kernel's 32-bit device encoding (/proc/PID/stat tty_nr,
/// TIOCGDEV) into a dev_t as stat(2) reports it.
pub fn decode_kernel_dev(v: u32) -> u64 {
    let major = (v >> 8) & 0xfff;
    let minor = (v & 0xff) | ((v >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// (major, minor) of a dev_t.
pub fn dev_parts(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// The foreground process group of the terminal (TIOCGPGRP). On a pty
/// master this is the slave's, readable by anyone holding the master; 0
/// when there is none.
pub fn foreground_pgrp(fd: BorrowedFd<'_>) -> Result<i32> {
    get_int(fd, libc::TIOCGPGRP, "ioctl(TIOCGPGRP)")
}

/// The session the terminal is the controlling terminal of (TIOCGSID; on a
/// pty master, the slave's); None when it is no session's.
pub fn session(fd: BorrowedFd<'_>) -> Result<Option<i32>> {
    match get_int(fd, libc::TIOCGSID, "ioctl(TIOCGSID)") {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.errno() == Some(libc::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bytes waiting to be read from the terminal (FIONREAD; in canonical mode
/// only complete lines count).
pub fn input_pending(fd: BorrowedFd<'_>) -> Result<usize> {
    get_int(fd, libc::FIONREAD, "ioctl(FIONREAD)").map(|n| n.max(0) as usize)
}

/// The owner, group and mode (st_mode, with the file type bits) of a pty
/// master's slave device node (/dev/pts/N of the master's own devpts
/// instance), read through an O_PATH descriptor of it (TIOCGPTPEER): the
/// slave is not opened, so nothing changes on the terminal.
pub fn slave_node_owner(master: BorrowedFd<'_>) -> Result<(u32, u32, u32)> {
    let node = slave_node(master)?;
    // SAFETY: stat is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-pointer.
    let r = unsafe { libc::fstat(node.as_raw_fd(), &mut st) };
    check(r as i64, "fstat", target(master))?;
    Ok((st.st_uid, st.st_gid, st.st_mode))
}

/// Gives a pty master's slave device node an owner, group and permission
/// bits (`mode & 0o7777`), through an O_PATH descriptor of it: chown, then
/// chmod (chown may clear set-id bits).
pub fn set_slave_node_owner(master: BorrowedFd<'_>, uid: u32, gid: u32, mode: u32) -> Result<()> {
    let node = slave_node(master)?;
    // SAFETY: a valid descriptor, an empty C string with AT_EMPTY_PATH.
    let r = unsafe {
        libc::fchownat(
            node.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH,
        )
    };
    check(r as i64, "fchownat", target(master))?;
    // fchmod does not take O_PATH descriptors; its /proc/self/fd link does.
    let path =
        std::ffi::CString::new(format!("/proc/self/fd/{}", node.as_raw_fd())).expect("no NUL");
    // SAFETY: a valid C string.
    let r = unsafe { libc::chmod(path.as_ptr(), (mode & 0o7777) as libc::mode_t) };
    check(r as i64, "chmod", target(master)).map(drop)
}

/// An O_PATH descriptor of a pty master's slave node (TIOCGPTPEER).
fn slave_node(master: BorrowedFd<'_>) -> Result<std::os::fd::OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let r = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    check(r as i64, "ioctl(TIOCGPTPEER)", target(master))?;
    // SAFETY: the ioctl returned a new descriptor we own.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(r) })
}

/// Whether the other side of a pty has been closed (poll reports POLLHUP
/// on the master once its slave was opened and closed again).
pub fn peer_hung_up(fd: BorrowedFd<'_>) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; zero timeout.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        return Err(SysError::call("poll", target(fd)));
    }
    Ok(p.revents & libc::POLLHUP != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encoding() {
        // /dev/pts/0 is 136:0; /dev/pts/300 is 136:300 (minors have 20
        // bits; the kernel's 32-bit form keeps the low 8 at bit 0 and the
        // others from bit 20).
        assert_eq!(dev_parts(decode_kernel_dev(136 << 8)), (136, 0));
        let v = (136u32 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(dev_parts(decode_kernel_dev(v)), (136, 300));
        assert_eq!(dev_parts(decode_kernel_dev(4 << 8 | 64)), (4, 64));
    }
}

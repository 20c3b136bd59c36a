//! A stopped, traced task we can run system calls in, with a scratch area in
//! its address space for arguments and results.

use godwit_sys::inject::Injector;
use godwit_sys::mem::{self, Range};
use godwit_sys::{Result, SysError};

/// A task plus a scratch area in its address space.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    /// PID on the host (what ptrace and /proc take).
    pub pid: i32,
    /// Task to inject into, on the host.
    pub tid: i32,
    /// The process's own PID as it sees it (its image PID): differs from
    /// `pid` when restored into a new PID namespace. For injected calls.
    pub vpid: i32,
    /// Address of a `syscall` instruction in the task.
    pub syscall_ip: u64,
    pub scratch: u64,
    pub scratch_len: u64,
    /// Address of [`godwit_sys::inject::BATCH_CODE`] in the task (0: none;
    /// then [`Remote::call_batch`] makes one call at a time).
    pub batch_ip: u64,
}

/// One call of a batch: its name (for errors), number and arguments.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub name: &'static str,
    pub nr: i64,
    pub args: [u64; 6],
}

/// Where batch tables go in the scratch area (below: the single calls' bytes).
const BATCH_TABLE: u64 = 4096;

impl Remote {
    /// The same process's scratch, injected into thread `tid`.
    pub fn for_thread(&self, tid: i32) -> Remote {
        Remote { tid, ..*self }
    }

    pub fn inj(&self) -> Injector {
        Injector::new(self.tid, self.syscall_ip)
    }

    pub fn call(&self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        self.inj().call(name, nr, args)
    }

    /// Runs `calls` in order, as few ptrace round trips as the scratch area
    /// allows; returns their results. Stops at the first that fails, with
    /// its error. Arguments must not point into the scratch area above
    /// 4096 bytes (the table lives there).
    pub fn call_batch(&self, calls: &[Call]) -> Result<Vec<u64>> {
        use godwit_sys::inject::BATCH_ENTRY;
        let room = self.scratch_len.saturating_sub(BATCH_TABLE) as usize / BATCH_ENTRY;
        if self.batch_ip == 0 || room == 0 {
            return calls
                .iter()
                .map(|c| self.call(c.name, c.nr, c.args))
                .collect();
        }
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(room) {
            let mut table = Vec::with_capacity(chunk.len() * BATCH_ENTRY);
            for c in chunk {
                for a in c.args {
                    table.extend_from_slice(&a.to_le_bytes());
                }
                table.extend_from_slice(&(c.nr as u64).to_le_bytes());
                table.extend_from_slice(&0u64.to_le_bytes());
            }
            let addr = self.put(BATCH_TABLE, &table)?;
            let ran = self
                .inj()
                .run_batch(self.batch_ip, addr, chunk.len() as u64)? as usize;
            let back = self.get(BATCH_TABLE, ran * BATCH_ENTRY)?;
            for (i, c) in chunk.iter().enumerate().take(ran) {
                let ret = u64_at(&back, i * BATCH_ENTRY / 8 + 7) as i64;
                if (-4095..0).contains(&ret) {
                    return Err(SysError::Injected {
                        name: c.name,
                        tid: self.tid,
                        source: std::io::Error::from_raw_os_error(-ret as i32),
                    });
                }
                out.push(ret as u64);
            }
            if ran != chunk.len() {
                return Err(short(self.pid, "running a batch of syscalls"));
            }
        }
        Ok(out)
    }

    /// Opens a userfaultfd in the process (injected `userfaultfd(flags)`),
    /// takes a duplicate of it with pidfd_getfd and closes the process's own
    /// descriptor again; the duplicate then acts on the process's memory.
    /// `Ok(None)` when the process may not have one (EPERM: an unprivileged
    /// process while vm.unprivileged_userfaultfd is 0).
    pub fn take_userfaultfd(&self, flags: u64) -> Result<Option<std::os::fd::OwnedFd>> {
        let theirs = match self.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0]) {
            Ok(fd) => fd,
            Err(e) if e.errno() == Some(libc::EPERM) => return Ok(None),
            Err(e) => return Err(e),
        };
        let ours = godwit_sys::process::pidfd_open(self.pid)
            .and_then(|p| godwit_sys::process::pidfd_getfd(&p, theirs as i32));
        self.call("close", libc::SYS_close, [theirs, 0, 0, 0, 0, 0])?;
        ours.map(Some)
    }

    /// Writes `data` at `offset` in the scratch area.
    pub fn put(&self, offset: u64, data: &[u8]) -> Result<u64> {
        self.check(offset, data.len())?;
        let addr = self.scratch + offset;
        let n = mem::write_ranges(
            self.pid,
            data,
            &[Range {
                addr,
                len: data.len() as u64,
            }],
        )?;
        if n != data.len() {
            return Err(short(self.pid, "writing scratch"));
        }
        Ok(addr)
    }

    /// Writes a NUL-terminated string at `offset`; returns its address.
    pub fn put_cstr(&self, offset: u64, s: &str) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(offset, &b)
    }

    /// openat(AT_FDCWD, `path`, `flags`, `mode`) in the task (the path goes at
    /// the start of the scratch area): the new fd there.
    pub fn openat(&self, path: &str, flags: i32, mode: u32) -> Result<u64> {
        let a = self.put_cstr(0, path)?;
        self.call(
            "openat",
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, a, flags as u64, mode as u64, 0, 0],
        )
    }

    /// Reads `len` bytes at `offset` in the scratch area.
    pub fn get(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check(offset, len)?;
        let mut buf = vec![0u8; len];
        let n = mem::read_ranges(
            self.pid,
            &mut buf,
            &[Range {
                addr: self.scratch + offset,
                len: len as u64,
            }],
        )?;
        if n != len {
            return Err(short(self.pid, "reading scratch"));
        }
        Ok(buf)
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        if offset + len as u64 > self.scratch_len {
            return Err(SysError::Proc {
                path: format!("process {} scratch", self.pid),
                detail: format!("{len} bytes at {offset} do not fit"),
            });
        }
        Ok(())
    }
}

fn short(pid: i32, doing: &str) -> SysError {
    SysError::Proc {
        path: format!("process {pid} memory"),
        detail: format!("short transfer while {doing}"),
    }
}

/// Reads little-endian u64 `i` of a byte buffer.
pub fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

//! x86_64 register sets as plain data, and the kernel's syscall-restart rules.

/// General-purpose registers in the kernel's `user_regs_struct` order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Number of 64-bit words in [`GpRegs`].
pub const GP_REGS_WORDS: usize = 27;

const _: () = assert!(std::mem::size_of::<GpRegs>() == GP_REGS_WORDS * 8);

impl GpRegs {
    /// The registers as words, in `user_regs_struct` order (the image format's order).
    pub fn to_words(&self) -> Vec<u64> {
        vec![
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    /// The inverse of [`GpRegs::to_words`]; `None` if the slice has the wrong length.
    pub fn from_words(w: &[u64]) -> Option<GpRegs> {
        if w.len() != GP_REGS_WORDS {
            return None;
        }
        Some(GpRegs {
            r15: w[0],
            r14: w[1],
            r13: w[2],
            r12: w[3],
            rbp: w[4],
            rbx: w[5],
            r11: w[6],
            r10: w[7],
            r9: w[8],
            r8: w[9],
            rax: w[10],
            rcx: w[11],
            rdx: w[12],
            rsi: w[13],
            rdi: w[14],
            orig_rax: w[15],
            rip: w[16],
            cs: w[17],
            eflags: w[18],
            rsp: w[19],
            ss: w[20],
            fs_base: w[21],
            gs_base: w[22],
            ds: w[23],
            es: w[24],
            fs: w[25],
            gs: w[26],
        })
    }

    /// Applies the kernel's syscall-restart rule to registers captured while the
    /// task was stopped inside an interrupted system call, so that resuming them
    /// later (from a ptrace syscall-exit stop, where the kernel itself would not
    /// do it) re-enters the system call the way the kernel would have:
    ///
    /// * `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`: re-issue the same
    ///   call (`rax = orig_rax`, `rip -= 2`);
    /// * `-ERESTART_RESTARTBLOCK`: issue `restart_syscall` (`rip -= 2`). In the
    ///   same process this continues the call with its saved restart block; in a
    ///   restored process the block is gone and the call returns `EINTR`, exactly
    ///   as after a signal whose handler ran.
    ///
    /// `orig_rax` is then set to -1 so the kernel never applies the rule again.
    pub fn rewind_interrupted_syscall(&mut self) {
        const ERESTARTSYS: i64 = -512;
        const ERESTARTNOINTR: i64 = -513;
        const ERESTARTNOHAND: i64 = -514;
        const ERESTART_RESTARTBLOCK: i64 = -516;
        if (self.orig_rax as i64) < 0 {
            return;
        }
        match self.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                self.rax = self.orig_rax;
                self.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                self.rax = libc::SYS_restart_syscall as u64;
                self.rip -= 2;
            }
            _ => {}
        }
        self.orig_rax = u64::MAX;
    }

    /// [`Self::rewind_interrupted_syscall`] for registers loaded into a
    /// *restored* process, whose kernel restart block is gone: a poll(2)
    /// interrupted by the freeze is issued again with its own arguments (an
    /// infinite wait stays one; a timeout starts over, which only makes the
    /// call last longer) instead of restart_syscall, which would return EINTR
    /// to a program that saw no signal and may not expect it. Other calls
    /// that use the restart block (nanosleep, futex waits with a timeout, ...)
    /// still return EINTR.
    pub fn rewind_for_restore(&mut self) {
        const ERESTART_RESTARTBLOCK: i64 = -516;
        if self.rax as i64 == ERESTART_RESTARTBLOCK && self.orig_rax == libc::SYS_poll as u64 {
            self.rax = self.orig_rax;
            self.rip -= 2;
            self.orig_rax = u64::MAX;
            return;
        }
        self.rewind_interrupted_syscall();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let r = GpRegs {
            rip: 0x1234,
            gs: 7,
            r15: 1,
            ..Default::default()
        };
        assert_eq!(GpRegs::from_words(&r.to_words()), Some(r));
        assert_eq!(GpRegs::from_words(&[0; 3]), None);
    }

    #[test]
    fn restart_rules() {
        let mut r = GpRegs {
            rax: (-514i64) as u64,
            orig_rax: 34,
            rip: 0x1002,
            ..Default::default()
        };
        r.rewind_interrupted_syscall();
        assert_eq!((r.rax, r.rip, r.orig_rax), (34, 0x1000, u64::MAX));
        let mut r = GpRegs {
            rax: (-516i64) as u64,
            orig_rax: 35,
            rip: 0x1002,
            ..Default::default()
        };
        r.rewind_interrupted_syscall();
        assert_eq!(r.rax, libc::SYS_restart_syscall as u64);
        assert_eq!(r.rip, 0x1000);
        // An ordinary error result is left alone.
        let mut r = GpRegs {
            rax: (-4i64) as u64,
            orig_rax: 0,
            rip: 0x1002,
            ..Default::default()
        };
        r.rewind_interrupted_syscall();
        assert_eq!((r.rax as i64, r.rip), (-4, 0x1002));
    }

    #[test]
    fn poll_is_issued_again_in_a_restored_process() {
        let poll = GpRegs {
            rax: (-516i64) as u64,
            orig_rax: libc::SYS_poll as u64,
            rip: 0x1002,
            rdx: u32::MAX as u64,
            ..Default::default()
        };
        let mut r = poll;
        r.rewind_for_restore();
        assert_eq!(
            (r.rax, r.rip, r.orig_rax),
            (libc::SYS_poll as u64, 0x1000, u64::MAX)
        );
        assert_eq!(r.rdx, u32::MAX as u64, "arguments kept");
        // In the same process the kernel's restart block continues it.
        let mut r = poll;
        r.rewind_interrupted_syscall();
        assert_eq!(r.rax, libc::SYS_restart_syscall as u64);
        // nanosleep keeps restart_syscall (EINTR in a restored process).
        let mut r = GpRegs {
            orig_rax: libc::SYS_nanosleep as u64,
            ..poll
        };
        r.rewind_for_restore();
        assert_eq!(r.rax, libc::SYS_restart_syscall as u64);
    }
}

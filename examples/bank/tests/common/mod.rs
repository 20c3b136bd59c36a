//! What the bank's test files share: the binaries, and a process killed
//! with its group when the test ends (passed or failed).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};

pub fn bank_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bank"))
}

/// godwitd is another package's binary: the one built next to `bank`, built
/// first when it is missing.
pub fn godwitd_bin() -> PathBuf {
    let dir = bank_bin().parent().unwrap().to_path_buf();
    let bin = dir.join("godwitd");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "godwitd", "--target-dir"])
            .arg(dir.parent().unwrap())
            .status()
            .expect("run cargo build -p godwitd");
        assert!(status.success(), "building godwitd failed");
    }
    bin
}

/// SIGKILLs one process group (never "all": refuses pgid <= 1).
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill(2) on a negative pid signals exactly that process group,
        // which the test created (process_group(0)).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// A process and its group (everything it started), SIGKILLed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        kill_group(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

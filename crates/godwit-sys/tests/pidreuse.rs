//! Waiting through a pidfd never picks up another process that took the
//! same PID: the engine's reaper of a killed process relies on it when the
//! process is restored (same PID) by the same program that dumped it.

use godwit_sys::process;
use godwit_sys::ptrace::{self, Stop};
use std::process::Command;
use std::time::Duration;

#[test]
fn a_pidfd_wait_ignores_the_process_that_reused_the_pid() {
    // The new process is then our child, as a restored one is in godwitd
    // and the benchmark: a wait by PID would take its events.
    process::set_child_subreaper().expect("subreaper");
    let mut child = Command::new("sleep").arg("100").spawn().expect("sleep");
    let pid = child.id() as i32;
    ptrace::seize(pid).expect("seize");
    ptrace::interrupt(pid).expect("interrupt");
    assert!(matches!(
        ptrace::wait(pid).expect("stop"),
        Stop::EventStop(_) | Stop::Signal(_)
    ));
    let fd = process::pidfd_open(pid).expect("pidfd");
    process::kill(pid, libc::SIGKILL).expect("kill");
    // Reaped by its parent (us) before the reaper gets to it.
    child.wait().expect("reaped");
    // A new process with the same PID (as a restore makes), our child.
    let again = process::spawn_stub(pid).expect("clone3 with set_tid");
    assert_eq!(again, pid);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(ptrace::wait_pidfd(&fd).is_err());
    });
    let gone = rx.recv_timeout(Duration::from_secs(5));
    process::kill(pid, libc::SIGKILL).expect("kill the new process");
    let _ = ptrace::wait(pid);
    assert_eq!(
        gone,
        Ok(true),
        "the wait through the old pidfd must fail at once, not wait for the new process"
    );
}

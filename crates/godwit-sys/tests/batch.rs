//! The batch loop runs a table of system calls inside a traced process in
//! one ptrace round trip, and stops at the first call that fails.

use godwit_sys::inject::{Injector, BATCH_CODE, BATCH_ENTRY};
use godwit_sys::mem::{self, Range};
use godwit_sys::ptrace::{self, Stop};
use godwit_sys::{proc, PAGE_SIZE};
use std::process::{Child, Command};

/// A `sleep` child, seized and stopped; killed on drop.
struct Traced(Child);

impl Traced {
    fn start() -> Traced {
        let child = Command::new("sleep").arg("100").spawn().expect("sleep");
        let pid = child.id() as i32;
        ptrace::seize(pid).expect("seize");
        ptrace::interrupt(pid).expect("interrupt");
        match ptrace::wait(pid).expect("wait") {
            Stop::EventStop(_) | Stop::Signal(_) => {}
            other => panic!("unexpected first stop {other:?}"),
        }
        Traced(child)
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn entry(nr: i64, args: [u64; 6]) -> Vec<u8> {
    let mut e = Vec::with_capacity(BATCH_ENTRY);
    for a in args {
        e.extend_from_slice(&a.to_le_bytes());
    }
    e.extend_from_slice(&(nr as u64).to_le_bytes());
    e.extend_from_slice(&u64::MAX.to_le_bytes()); // result slot, overwritten
    e
}

#[test]
fn batch_runs_in_order_and_stops_at_the_first_failure() {
    let t = Traced::start();
    let pid = t.pid();
    let maps = proc::maps(pid).expect("maps");
    let ip = mem::find_syscall_in_maps(pid, &maps)
        .expect("scan")
        .expect("a syscall instruction");
    let inj = Injector::new(pid, ip);
    // Room for the loop and a table, executable.
    let area = inj
        .call(
            "mmap",
            libc::SYS_mmap,
            [
                0,
                2 * PAGE_SIZE,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .expect("mmap in the child");
    let code = area;
    let table = area + PAGE_SIZE;
    let w = |addr: u64, data: &[u8]| {
        let n = mem::write_ranges(
            pid,
            data,
            &[Range {
                addr,
                len: data.len() as u64,
            }],
        )
        .expect("write");
        assert_eq!(n, data.len());
    };
    w(code, &BATCH_CODE);
    // getpid; mmap over the area itself with MAP_FIXED_NOREPLACE (EEXIST);
    // getppid (must not run).
    let mut t_bytes = entry(libc::SYS_getpid, [0; 6]);
    t_bytes.extend(entry(
        libc::SYS_mmap,
        [
            area,
            PAGE_SIZE,
            libc::PROT_READ as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    ));
    t_bytes.extend(entry(libc::SYS_getppid, [0; 6]));
    w(table, &t_bytes);

    let ran = inj.run_batch(code, table, 3).expect("run the batch");
    assert_eq!(ran, 2, "the loop stops after the failing call");
    let mut back = vec![0u8; 3 * BATCH_ENTRY];
    let len = back.len() as u64;
    mem::read_ranges(pid, &mut back, &[Range { addr: table, len }]).expect("read back");
    let result = |i: usize| {
        i64::from_le_bytes(
            back[i * BATCH_ENTRY + 56..i * BATCH_ENTRY + 64]
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(result(0), pid as i64, "getpid ran in the child");
    assert_eq!(result(1), -(libc::EEXIST as i64));
    assert_eq!(result(2), -1, "the call after the failure did not run");

    // The task is still usable for single injected calls afterwards.
    let again = inj
        .call("getpid", libc::SYS_getpid, [0; 6])
        .expect("getpid");
    assert_eq!(again, pid as u64);
    // And a batch of one runs fully.
    w(table, &entry(libc::SYS_getpid, [0; 6]));
    assert_eq!(inj.run_batch(code, table, 1).expect("batch of one"), 1);
}

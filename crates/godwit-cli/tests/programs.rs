//! Each test program sets one kind of state up; after dump + restore (and
//! after dump --leave-running + restore of the copy once the original is
//! killed) it checks that state itself and reports PASS.

mod common;
use common::round_trip;

macro_rules! case {
    ($name:ident) => {
        mod $name {
            #[test]
            fn dump_restore() {
                super::round_trip(stringify!($name), false);
            }
            #[test]
            fn leave_running_restore_copy() {
                super::round_trip(stringify!($name), true);
            }
        }
    };
}

case!(memory);
case!(threads);
case!(signals);
case!(files);
case!(attrs);
case!(tree);
case!(ptimers);
case!(anonfds);
case!(unix);

/// --leave-running takes a consistent copy-on-write snapshot of a process
/// that keeps writing all its memory during the copy; the original is not
/// disturbed, and the copy restored from the image is consistent.
#[test]
fn cow_snapshot_of_a_busy_writer() {
    use common::*;
    let mut p = Proc::test_prog("cow");
    let v = p.dump(&["--leave-running"]);
    assert!(v["memory_bytes"].as_u64().unwrap() >= 64 << 20, "{v}");
    // The original kept running and its memory is intact.
    assert_eq!(p.verdict(), "PASS", "the original, after the snapshot");
    std::fs::remove_file(p.path("go")).unwrap();
    std::fs::remove_file(p.path("result")).unwrap();
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS", "the copy restored from the snapshot");
}

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
case!(ipc);

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

/// `--freeze-cgroup`: the tree runs in its own cgroup v2, which is frozen
/// while the tree is seized and thawed afterwards; the restored tree passes.
#[test]
fn tree_frozen_with_cgroup_v2() {
    use common::*;
    let cg = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/unified/godwit-test-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&cg).expect("cgroup v2 at /sys/fs/cgroup/unified (see KERNEL.md)");
    struct Rmdir(std::path::PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Rmdir(cg.clone());
    let dir = tempfile::Builder::new()
        .prefix("godwit-cg")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let prog = progs().join("tree");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} {d}",
        cg.display(),
        prog.display()
    );
    let mut p = Proc::spawn_in(dir, "sh", &["-c", &script]);
    let ready = p.path("ready");
    wait_for(
        "tree to be ready",
        std::time::Duration::from_secs(20),
        || ready.exists() || dead(p.pid),
    );
    assert!(ready.exists(), "tree exited: {}", p.output());
    let members = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert!(
        members.lines().count() >= 5,
        "the tree is in the cgroup: {members}"
    );
    let v = p.dump(&["--freeze-cgroup", cg.to_str().unwrap()]);
    assert!(v["processes"].as_u64().unwrap() >= 5, "{v}");
    let events = std::fs::read_to_string(cg.join("cgroup.events")).unwrap();
    assert!(
        events.contains("frozen 0"),
        "the cgroup was thawed: {events}"
    );
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

/// A cgroup v1 freezer (or not a cgroup at all) is refused before anything is touched.
#[test]
fn freeze_cgroup_v1_refused() {
    use common::*;
    let p = Proc::test_prog("signals");
    let v1 = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/freezer/godwit-test-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&v1).expect("a cgroup v1 freezer (see KERNEL.md)");
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
        "--freeze-cgroup",
        v1.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir(&v1);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cgroup v1 freezers are not supported yet")
    );
    assert_eq!(p.verdict(), "PASS", "the process runs on");
}

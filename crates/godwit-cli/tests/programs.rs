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
case!(chroot);
case!(threads);
case!(signals);
case!(files);
case!(attrs);
case!(tree);
case!(ptimers);
case!(anonfds);
case!(unix);
case!(unixcreds);
case!(unixrights);
case!(cowbusy);
case!(ptysig);
case!(ptyfg);
case!(fanotify);
case!(inotifydel);

/// fanotify groups that cannot be restored exactly are refused, naming
/// the fd and why, and the program runs on: one whose marks ask for
/// permission events, one holding events not yet read.
#[test]
fn fanotify_refused() {
    for (mode, why) in [
        ("perm", "asks for permission events"),
        ("queued", "events not yet read"),
    ] {
        let p = common::Proc::test_prog_with("fanotify", &[mode]);
        let img = p.images();
        let pid = p.pid.to_string();
        let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: dump succeeded");
        assert!(
            err.contains("fd 3") && err.contains("fanotify") && err.contains(why),
            "{mode}: {err}"
        );
        assert!(
            !common::gone(p.pid),
            "{mode}: the refused dump ended the process"
        );
        assert_eq!(p.verdict(), "PASS", "{mode}: the program did not run on");
    }
}

/// An inotify watch on a deleted file that no descriptor of the process
/// holds (only a shared mapping does) is refused at dump time, naming the
/// fd and the watch; the program's watch works on.
#[test]
fn inotifydel_mapped_refused() {
    let p = common::Proc::test_prog_with("inotifydel", &["mapped"]);
    let img = p.images();
    let pid = p.pid.to_string();
    let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump succeeded");
    assert!(
        err.contains("fd 4")
            && err.contains("inotify watch 1")
            && err.contains("not held open by the process"),
        "{err}"
    );
    assert!(!common::gone(p.pid), "the refused dump ended the process");
    assert_eq!(p.verdict(), "PASS", "the program did not run on");
}

/// An AIO context (io_setup) is refused at dump time, naming the context
/// and its ring, and the program's context works on.
#[test]
fn aio_refused() {
    let p = common::Proc::test_prog("aio");
    let ctx = std::fs::read_to_string(p.path("ctx")).unwrap();
    let img = p.images();
    let pid = p.pid.to_string();
    for extra in [&[][..], &["--leave-running"][..]] {
        let mut args = vec!["dump", "--pid", &pid, "--images", img.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = common::godwit(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "dump {extra:?} succeeded");
        assert!(
            err.contains(&format!("AIO context {}", ctx.trim())) && err.contains("io_setup"),
            "{err}"
        );
        assert!(!common::gone(p.pid), "the refused dump ended the process");
    }
    assert_eq!(p.verdict(), "PASS", "the AIO context did not work on");
}

/// A unix socket in flight whose own queue carries descriptors is not
/// kept: the dump is refused naming the socket whose queue carries it and
/// why, and the program runs on.
#[test]
fn unixrights_nested_refused() {
    let p = common::Proc::test_prog_with("unixrights", &["nested"]);
    let img = p.images();
    let pid = p.pid.to_string();
    let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump succeeded");
    assert!(
        err.contains("fd 6") && err.contains("nested SCM_RIGHTS"),
        "{err}"
    );
    assert!(!common::gone(p.pid), "the refused dump ended the process");
}

/// Connections waiting on a unix listener are taken only by a dump that
/// ends the processes (godwit accepts them); --leave-running refuses.
mod unixbacklog {
    #[test]
    fn dump_restore() {
        super::round_trip("unixbacklog", false);
    }

    /// A dump that leaves the processes running cannot take them: refused,
    /// naming the listener, and the program runs on unharmed.
    #[test]
    fn leave_running_refused() {
        let p = super::common::Proc::test_prog("unixbacklog");
        let img = p.images();
        let pid = p.pid.to_string();
        let out = super::common::godwit(&[
            "dump",
            "--pid",
            &pid,
            "--images",
            img.to_str().unwrap(),
            "--leave-running",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "dump succeeded");
        assert!(
            err.contains("l.sock") && err.contains("2 connection(s) waiting to be accepted"),
            "{err}"
        );
        assert!(
            !super::common::gone(p.pid),
            "the refused dump ended the process"
        );
        std::fs::write(p.path("go"), "").unwrap();
        assert_eq!(p.verdict(), "PASS", "{}", p.output());
    }
}
case!(ipc);
case!(mappings);
case!(sched);
case!(caps);
case!(procattrs);
case!(locks);
case!(numa);
case!(pipesz);
case!(fasync);
case!(filemeta);
case!(sparse);
case!(memfdmeta);
case!(seccomp);
case!(zombies);
case!(pidfds);

/// The seccomp program in a variant (its arguments): dump, end the
/// original, restore, and the program checks its filters itself.
fn seccomp_variant(arg: &str) {
    let mut p = common::Proc::test_prog_with("seccomp", &[arg]);
    p.dump(&[]);
    if arg == "tsync" {
        // Main thread, then "inh": two filters, the second with
        // SECCOMP_FILTER_FLAG_LOG (2); inh's programs stored once, in main.
        let img = p.images();
        let v: serde_json::Value = serde_json::from_str(&common::godwit_ok(&[
            "inspect",
            "--json",
            img.to_str().unwrap(),
        ]))
        .unwrap();
        let threads = v["processes"][0]["threads"].as_array().unwrap();
        assert_eq!(threads.len(), 2, "{threads:?}");
        let filters = |i: usize| threads[i]["seccomp"]["filters"].as_array().unwrap().clone();
        let (main, inh) = (filters(0), filters(1));
        assert_eq!(threads[0]["seccomp"]["mode"], "filter");
        assert_eq!((main.len(), inh.len()), (2, 2));
        assert_eq!(
            (main[0]["flags"].as_u64(), main[1]["flags"].as_u64()),
            (Some(0), Some(2))
        );
        assert!(main
            .iter()
            .all(|f| f["program_of"].is_null() && f["instructions"] == 9));
        assert!(inh
            .iter()
            .all(|f| f["program_of"] == threads[0]["tid"] && f["instructions"] == 0));
    }
    p.end_original();
    p.restore();
    let v = p.verdict();
    assert_eq!(v, "PASS", "seccomp {arg}: {v}; output: {}", p.output());
}

/// A thread whose filter was installed with CAP_SYS_ADMIN, which it has
/// dropped from its effective set since, without no_new_privs: its filter
/// goes in before its credentials, and it gets no no_new_privs it lacked.
#[test]
fn seccomp_filter_of_a_thread_without_privileges_now() {
    seccomp_variant("dropadmin");
}

/// Every thread shares every filter: after restore they share them again,
/// so the program can still synchronise a new filter (TSYNC) to all.
#[test]
fn seccomp_shared_filters_stay_shared() {
    seccomp_variant("tsync");
}

case!(memadvice);

/// memadvice with the whole process made mergeable (PR_SET_MEMORY_MERGE)
/// and one area taken out again (MADV_UNMERGEABLE): after restore the
/// process is mergeable as a whole, that area still is not.
#[test]
fn memadvice_merge_any() {
    use common::*;
    let mut p = Proc::test_prog_with("memadvice", &["mergeany"]);
    p.dump(&[]);
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS", "{}", p.output());
}

/// A restore that could not lock the memory the process had locked (godwit
/// without CAP_IPC_LOCK, RLIMIT_MEMLOCK below the locked size) is refused
/// before anything is created, naming the process, the size, a locked
/// area and the limit; as root, the same image restores.
#[test]
fn locked_memory_above_the_memlock_limit_is_refused() {
    use common::*;
    let mut p = Proc::test_prog("memadvice");
    p.dump(&[]);
    p.end_original();
    let img = p.images();
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock"])
        .args(["prlimit", "--memlock=65536:65536"])
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args(["restore", "--images"])
        .arg(&img)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore passed: {err}");
    assert!(
        err.contains("131072 bytes of locked memory")
            && err.contains("CAP_IPC_LOCK")
            && err.contains("RLIMIT_MEMLOCK is 65536"),
        "{err}"
    );
    assert!(gone(p.pid), "a refused restore left process {}", p.pid);
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

/// The proportional set size (Pss, smaps_rollup) of a process and all
/// its descendants, in bytes, and how many processes that is.
fn tree_pss(pid: i32) -> (u64, usize) {
    let mut all = common::descendants(pid);
    all.push(pid);
    let pss = all
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        })
        .sum();
    (pss, all.len())
}

/// A forking server: a parent with 256 MiB written and 4 children that
/// each rewrote 1 MiB of it and dropped another (MADV_DONTNEED), one with
/// a grandchild. The image holds the shared pages once (the children's only
/// their own), and after restore they are shared again: the tree's total
/// Pss is what it was, not six times the parent's; every process finds its
/// own memory.
#[test]
fn cow_sharing_between_parent_and_children_is_kept() {
    use common::*;
    let mut p = Proc::test_prog("cowshare");
    let (before, n) = tree_pss(p.pid);
    assert_eq!(n, 6, "the parent, 4 children, a grandchild");
    let v = p.dump(&[]);
    let stored = v["memory_bytes"].as_u64().unwrap();
    // inspect: each child holds ~254 MiB of its parent's pages.
    let img = p.images();
    let i: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
    let procs = i["processes"].as_array().unwrap();
    assert_eq!(procs[0]["memory"]["inherited_bytes"], 0, "the root's");
    for c in &procs[1..] {
        let n = c["memory"]["inherited_bytes"].as_u64().unwrap();
        assert!(n > 250 << 20, "child {}: {n} bytes inherited", c["pid"]);
    }
    let text = godwit_ok(&["inspect", img.to_str().unwrap()]);
    assert!(text.contains("shared with the parent"), "{text}");
    p.end_original();
    p.restore();
    let (after, n) = tree_pss(p.pid);
    assert_eq!(n, 6, "the whole tree after restore");
    eprintln!(
        "cowshare: Pss of the tree {} MiB before the dump, {} MiB after restore; {} MiB stored",
        before >> 20,
        after >> 20,
        stored >> 20
    );
    assert!(
        stored < 300 << 20,
        "shared pages stored once: {stored} bytes: {v}"
    );
    assert!(
        after < before + (before >> 3),
        "Pss {after} bytes after restore, {before} before"
    );
    assert_eq!(p.verdict(), "PASS", "{}", p.output());
}

/// The same tree with the parent's memory locked (mlock before the forks,
/// as a server that locks its memory and then forks workers): the parent
/// gets its lock back before its children are forked, so they share the
/// locked pages again (locking after would unshare them all).
#[test]
fn cow_sharing_of_locked_memory_is_kept() {
    use common::*;
    let mut p = Proc::test_prog_with("cowshare", &["64", "lock"]);
    let (before, _) = tree_pss(p.pid);
    p.dump(&[]);
    p.end_original();
    p.restore();
    let (after, n) = tree_pss(p.pid);
    assert_eq!(n, 6);
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    let lck = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    eprintln!(
        "cowshare 64 MiB locked: Pss {} KiB before, {} KiB after restore; parent VmLck {lck} kB",
        before >> 10,
        after >> 10
    );
    assert_eq!(lck, 64 << 10, "the parent's 64 MiB are locked again");
    assert!(
        after < before + (before >> 3),
        "Pss {after} bytes after restore, {before} before"
    );
    assert_eq!(p.verdict(), "PASS", "{}", p.output());
}

/// `dump --leave-running` of a forking tree (64 MiB shared by a parent,
/// 4 children and a grandchild) leaves the running original sharing its
/// pages as before (reading them must not unshare them), with pre-copy,
/// the snapshot and frozen throughout; the copy restored from the last
/// image passes.
#[test]
fn leave_running_keeps_the_originals_sharing() {
    use common::*;
    let mut p = Proc::test_prog_with("cowshare", &["64"]);
    let (before, n) = tree_pss(p.pid);
    assert_eq!(n, 6);
    for opts in [&["--no-precopy"][..], &[][..], &["--no-cow"][..]] {
        let _ = std::fs::remove_dir_all(p.images());
        let mut args = vec!["--leave-running"];
        args.extend_from_slice(opts);
        p.dump(&args);
        let (after, _) = tree_pss(p.pid);
        eprintln!(
            "cowshare 64 MiB, dump {args:?}: Pss {} KiB before, {} KiB after",
            before >> 10,
            after >> 10
        );
        assert!(
            after < before + (before >> 3),
            "{args:?}: Pss {after} bytes after the dump, {before} before"
        );
    }
    assert_eq!(p.verdict(), "PASS", "the original, after the dumps");
    // The copy's children report again.
    for f in [
        "go",
        "result",
        "child0",
        "child1",
        "child2",
        "child3",
        "grandchild",
    ] {
        std::fs::remove_file(p.path(f)).unwrap();
    }
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS", "the copy restored from the image");
}

/// `dump --leave-running` with its pre-copy (the default) of the forking
/// tree: every process is pre-copied while it runs, and the pages a child
/// still shares with its parent at the freeze (written by neither since
/// the pre-copy began) are inherited in the image, not stored for the
/// child. The copy restored from it shares them again: the tree's Pss is
/// what it was, and every process finds its own memory.
#[test]
fn leave_running_copy_keeps_the_sharing() {
    use common::*;
    let mut p = Proc::test_prog_with("cowshare", &["64"]);
    let (before, n) = tree_pss(p.pid);
    assert_eq!(n, 6);
    let v = p.dump(&["--leave-running"]);
    eprintln!("dump: {v}");
    let img = p.images();
    let i: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
    let procs = i["processes"].as_array().unwrap();
    let inherited: Vec<(i64, u64, i64)> = procs
        .iter()
        .map(|c| {
            (
                c["pid"].as_i64().unwrap(),
                c["memory"]["inherited_bytes"].as_u64().unwrap(),
                c["ppid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    for &(pid, n, _) in &inherited[1..] {
        assert!(
            n > 60 << 20,
            "child {pid}: {n} bytes inherited: {inherited:?}"
        );
    }
    p.end_original();
    p.restore();
    let (after, n) = tree_pss(p.pid);
    assert_eq!(n, 6, "the whole tree after restore");
    eprintln!(
        "cowshare 64 MiB, leave-running with pre-copy: Pss {} KiB before, {} KiB after restore",
        before >> 10,
        after >> 10
    );
    assert!(
        after < before + (before >> 3),
        "Pss {after} bytes after restore, {before} before"
    );
    assert_eq!(p.verdict(), "PASS", "{}", p.output());
}

/// A pipe whose buffer is larger than this host lets godwit make (here:
/// fs.pipe-max-size lowered below it between dump and restore, godwit
/// lacking CAP_SYS_RESOURCE) is refused before anything is created, naming
/// the fd and what to do; with the limit back, the same image restores.
#[test]
fn pipe_larger_than_the_host_allows_is_refused() {
    use common::*;
    const KNOB: &str = "/proc/sys/fs/pipe-max-size";
    struct Knob(String);
    impl Drop for Knob {
        fn drop(&mut self) {
            let _ = std::fs::write(KNOB, &self.0);
        }
    }
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    if eff & (1 << 24) != 0 {
        eprintln!("skipped: CAP_SYS_RESOURCE lifts pipe-max-size here");
        return;
    }
    let mut p = Proc::test_prog_with("pipesz", &["max"]);
    p.dump(&[]);
    p.end_original();
    let img = p.images();
    let out = {
        let _knob = Knob(std::fs::read_to_string(KNOB).unwrap());
        std::fs::write(KNOB, "524288").unwrap();
        godwit(&["restore", "--images", img.to_str().unwrap()])
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore passed: {err}");
    assert!(
        err.contains("1048576-byte buffer") && err.contains("fd ") && err.contains("pipe-max-size"),
        "{err}"
    );
    assert!(gone(p.pid), "a refused restore left process {}", p.pid);
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

/// After a --leave-running dump of a test program: the original passes its
/// check; then it is ended, the copy restored from the image, and that
/// passes too.
fn original_then_copy_pass(p: &mut common::Proc) {
    assert_eq!(p.verdict(), "PASS", "the original, after the dump");
    std::fs::remove_file(p.path("go")).unwrap();
    std::fs::remove_file(p.path("result")).unwrap();
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS", "the copy restored from the image");
}

/// --leave-running --no-precopy takes a consistent copy-on-write snapshot
/// of a process that keeps writing all its memory during the copy; the
/// original is not disturbed, and the copy restored from the image is
/// consistent.
#[test]
fn cow_snapshot_of_a_busy_writer() {
    use common::*;
    let mut p = Proc::test_prog("cow");
    let v = p.dump(&["--leave-running", "--no-precopy"]);
    assert!(v["memory_bytes"].as_u64().unwrap() >= 64 << 20, "{v}");
    assert_eq!(v["precopy"]["processes"], 0, "{v}");
    original_then_copy_pass(&mut p);
}

/// The same busy writer with plain --leave-running: the pre-copy does not
/// converge for it (it rewrites 64 MiB faster than they can be copied) and
/// the dump falls back to the snapshot, or, on a machine fast enough, it
/// converges; either way the copy is consistent.
#[test]
fn busy_writer_with_the_default_leave_running() {
    use common::*;
    let mut p = Proc::test_prog("cow");
    let v = p.dump(&["--leave-running"]);
    assert!(v["frozen_ms"].as_f64().unwrap() > 0.0, "{v}");
    original_then_copy_pass(&mut p);
}

/// --leave-running copies the memory of a process that keeps writing it
/// (slowly) while it runs: the pages written during the copy are copied
/// again in a further round, those written since at the freeze, and the
/// copy restored from the image is consistent.
#[test]
fn precopy_of_a_slow_writer() {
    use common::*;
    let mut p = Proc::test_prog_with("cow", &["slow"]);
    let v = p.dump(&["--leave-running"]);
    let pre = &v["precopy"];
    assert_eq!(pre["processes"], 1, "pre-copied: {v}");
    assert!(pre["rounds"].as_u64().unwrap() >= 1, "copied again: {v}");
    assert!(
        pre["bytes_running"].as_u64().unwrap() > 64 << 20,
        "all 64 MiB and then some copied while it ran: {v}"
    );
    assert!(
        pre["bytes_frozen"].as_u64().unwrap() > 0,
        "pages written since the last round copied at the freeze: {v}"
    );
    original_then_copy_pass(&mut p);
}

/// --leave-running of a tree of two slow writers: each process is
/// pre-copied with its own tracking and page stream, and both copies are
/// consistent after restore.
#[test]
fn precopy_of_a_tree() {
    use common::*;
    let mut p = Proc::test_prog_with("cow", &["fork"]);
    let v = p.dump(&["--leave-running"]);
    assert_eq!(v["processes"], 2, "{v}");
    assert_eq!(v["precopy"]["processes"], 2, "both pre-copied: {v}");
    original_then_copy_pass(&mut p);
}

/// --leave-running of a process that releases memory (MADV_DONTNEED),
/// unmaps and maps memory again, and writes, all while it is pre-copied:
/// released memory comes back as zeros, remapped memory with what was
/// written there last, never an earlier copy.
#[test]
fn precopy_of_a_changing_memory_map() {
    use common::*;
    let mut p = Proc::test_prog("churn");
    let v = p.dump(&["--leave-running"]);
    assert_eq!(v["precopy"]["processes"], 1, "pre-copied: {v}");
    // 48 MiB of chunks (some released) and a little more; not the holes of
    // its 256 MiB sparse mapping.
    let stored = v["memory_bytes"].as_u64().unwrap();
    assert!(stored < 56 << 20, "{stored} bytes stored: {v}");
    original_then_copy_pass(&mut p);
}

/// A user who is not root dumps their own process with --leave-running: it
/// is pre-copied as well (with a user-mode-only userfaultfd, which the
/// kernel allows them while vm.unprivileged_userfaultfd is 0), instead of
/// staying frozen for the whole copy; root restores the image, consistent.
#[test]
fn precopy_by_a_user_who_is_not_root() {
    use common::*;
    let mut p = Proc::test_prog_as(Some(65534), "cow", &["slow"]);
    let img = p.images();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args(["--json", "dump", "--pid", &p.pid.to_string(), "--images"])
        .arg(&img)
        .arg("--leave-running")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dump as uid 65534: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precopy"]["processes"], 1, "pre-copied: {v}");
    original_then_copy_pass(&mut p);
}

/// `inspect` shows a process's POSIX timers: ids, how they notify, period,
/// time left and overrun count (ptimers' timer d overran 3 times).
#[test]
fn inspect_shows_posix_timers() {
    use common::*;
    let mut p = Proc::test_prog("ptimers");
    p.dump(&["--leave-running"]);
    let img = p.images();
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
    let timers = v["processes"][0]["posix_timers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(timers.len(), 4, "{timers:?}");
    let d = timers
        .iter()
        .find(|t| t["interval_ns"] == 60_000_000_000u64)
        .expect("the 60 s timer");
    assert_eq!(d["overrun"], 3, "{d}");
    assert_eq!(d["notify"], "signal");
    assert!(timers.iter().any(|t| t["notify"] == "none"));
    assert!(timers.iter().any(|t| t["notify"] == "thread"));
    let text = godwit_ok(&["inspect", img.to_str().unwrap()]);
    assert!(text.contains("POSIX timers: 4"), "{text}");
    assert!(text.contains("overrun 3"), "{text}");
    p.end_original();
}

/// A restore run with fewer CPUs (taskset) pins itself and the new process
/// to one of them while it works, then gives every thread the CPUs it had
/// when dumped (here all of them), not godwit's own.
#[test]
fn restore_under_taskset_gives_the_images_cpus() {
    use common::*;
    let mut p = Proc::test_prog("threads");
    p.dump(&[]);
    p.end_original();
    let img = p.images();
    let out = std::process::Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_godwit"),
            "restore",
            "--images",
        ])
        .arg(&img)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("taskset (util-linux)");
    assert!(
        out.status.success(),
        "restore under taskset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        p.affinity.len() > 1,
        "the threads program has several threads"
    );
    for (task, before) in &p.affinity {
        assert_eq!(
            &cpus_allowed(task),
            before,
            "thread {task} of the restored process"
        );
    }
    assert_eq!(p.verdict(), "PASS");
}

/// `--freeze-cgroup`: the tree runs in its own cgroup (v2 or a v1 freezer),
/// which is frozen while the tree is seized and thawed afterwards; the
/// restored tree passes.
fn tree_frozen_with_cgroup(cg: std::path::PathBuf, thawed: fn(&std::path::Path) -> bool) {
    use common::*;
    std::fs::create_dir_all(&cg).expect("cgroup v1 and v2 hierarchies (see KERNEL.md)");
    struct Rmdir(std::path::PathBuf);
    impl Drop for Rmdir {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
            let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
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
    assert!(thawed(&cg), "the cgroup was thawed");
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

#[test]
fn tree_frozen_with_cgroup_v2() {
    tree_frozen_with_cgroup(
        format!("/sys/fs/cgroup/unified/godwit-test-{}", std::process::id()).into(),
        |cg| {
            std::fs::read_to_string(cg.join("cgroup.events")).is_ok_and(|e| e.contains("frozen 0"))
        },
    );
}

/// A v1 freezer: seized tasks report their stop only after the thaw, so
/// the tree is seized while frozen and its stops collected after.
#[test]
fn tree_frozen_with_cgroup_v1() {
    tree_frozen_with_cgroup(
        format!("/sys/fs/cgroup/freezer/godwit-test-{}", std::process::id()).into(),
        |cg| std::fs::read_to_string(cg.join("freezer.state")).is_ok_and(|e| e.trim() == "THAWED"),
    );
}

/// A directory that is no cgroup freezer is refused before anything is
/// touched; the process runs on.
#[test]
fn freeze_cgroup_not_a_cgroup_refused() {
    use common::*;
    let p = Proc::test_prog("signals");
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
        "--freeze-cgroup",
        p.dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("nor a v1 freezer"));
    assert_eq!(p.verdict(), "PASS", "the process runs on");
}

/// `restore --pid-ns`: while the original tree still runs and holds every
/// PID, a plain restore is refused (naming --pid-ns) and `--pid-ns` restores
/// the copy into a new PID namespace, where each process has its old PID
/// (tree.c checks sessions, groups, the zombie and its children by PID).
#[test]
fn tree_restored_into_a_new_pid_namespace() {
    use common::*;
    let mut p = Proc::test_prog("tree");
    p.dump(&["--leave-running"]);
    let img = p.images();
    let img = img.to_str().unwrap();
    let out = godwit(&["restore", "--images", img]);
    assert_eq!(out.status.code(), Some(4), "PIDs taken: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--pid-ns"),
        "the refusal names --pid-ns: {err}"
    );

    let v: serde_json::Value = serde_json::from_str(&godwit_ok(&[
        "--json", "restore", "--images", img, "--pid-ns",
    ]))
    .unwrap();
    assert_eq!(v["pid"].as_i64(), Some(p.pid as i64), "{v}");
    let host = v["host_pid"].as_i64().unwrap() as i32;
    let init = v["ns_init"].as_i64().unwrap() as i32;
    let _reap = NsInit(init);
    assert_ne!(host, p.pid, "the original still holds its PID");
    assert!(!gone(p.pid), "the original kept running");
    let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().skip(1).collect::<Vec<_>>(),
        [host.to_string(), p.pid.to_string()],
        "{nspid}"
    );
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(ns(host), ns(std::process::id() as i32));
    // Inside, /proc is the namespace's own: PID 1 is godwit's init and the
    // root has its old PID there.
    let inside = |path: &str| {
        let o = std::process::Command::new("nsenter")
            .args(["-t", &host.to_string(), "-m", "cat", path])
            .output()
            .unwrap();
        assert!(o.status.success(), "{path}: {o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(inside("/proc/1/comm"), "godwit-init");
    assert_eq!(inside(&format!("/proc/{}/comm", p.pid)), "tree");

    // Dumping a process of the namespace from the host is refused (its
    // PIDs would be the host's), and it keeps running.
    let again = p.dir.path().join("again");
    let out = godwit(&[
        "dump",
        "--pid",
        &host.to_string(),
        "--images",
        again.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nested PID namespace"));
    assert!(!gone(host));

    // The original goes; the copy verifies itself.
    p.end_original();
    p.pid = host;
    let verdict = p.verdict();
    assert_eq!(
        verdict,
        "PASS",
        "in the namespace: {verdict}; {}",
        p.output()
    );
}

/// --leave-running --no-cow keeps the process frozen while its memory is
/// copied (alongside the rest of the collection): afterwards its memory map
/// is exactly as before (the scratch area of the injected calls is gone
/// again), and the copy restored from the image passes the same checks.
#[test]
fn frozen_throughout_leaves_the_memory_map_as_it_was() {
    use common::*;
    let mut p = Proc::test_prog("memory");
    let maps = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let before = maps(p.pid);
    let v = p.dump(&["--leave-running", "--no-cow"]);
    assert_eq!(v["precopy"]["processes"], 0, "{v}");
    assert_eq!(
        maps(p.pid),
        before,
        "the original's memory map after the dump"
    );
    original_then_copy_pass(&mut p);
}

/// The state letter of /proc/PID/stat ('T': stopped by job control).
fn state_of(task: &str) -> char {
    std::fs::read_to_string(format!("/proc/{task}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .unwrap_or('?')
}

/// Every thread of `pid` is in state 'T'.
fn all_stopped(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten().all(|t| {
                state_of(&format!("{pid}/task/{}", t.file_name().to_string_lossy())) == 'T'
            })
        })
        .unwrap_or(false)
}

/// A process stopped with SIGSTOP is dumped (the original, with
/// --leave-running, stays stopped), restored stopped (it does not count
/// while stopped), and SIGCONT resumes it counting on from where it was.
#[test]
fn stopped_process_is_restored_stopped() {
    use common::*;
    use std::time::Duration;
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let log = dir.path().join("counter.log");
    let counter = progs().join("counter");
    let mut p = Proc::spawn_in(dir, counter.to_str().unwrap(), &[log.to_str().unwrap()]);
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse::<u64>().unwrap())
            .collect::<Vec<_>>()
    };
    wait_for("the counter to count", Duration::from_secs(10), || {
        lines().len() >= 3
    });
    // SAFETY: plain kill of the process this test started.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    let pid = p.pid;
    wait_for("the counter to stop", Duration::from_secs(10), || {
        all_stopped(pid)
    });
    let n0 = lines().len();
    p.dump(&["--leave-running"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        all_stopped(pid),
        "the original is stopped after a --leave-running dump"
    );
    assert_eq!(lines().len(), n0, "the original counted while stopped");
    p.end_original();
    p.restore();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        all_stopped(pid),
        "the restored process is stopped ({})",
        state_of(&pid.to_string())
    );
    assert_eq!(
        lines().len(),
        n0,
        "the restored process counted while stopped"
    );
    // SAFETY: plain kill of the process this test restored.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_for(
        "the restored counter to count on",
        Duration::from_secs(10),
        || lines().len() >= n0 + 3,
    );
    let l = lines();
    assert!(
        l.windows(2).all(|w| w[1] == w[0] + 1),
        "the count goes on without a gap or repeat: {l:?}"
    );
}

/// A stopped multi-threaded process: every thread is stopped after restore,
/// and once continued it passes its own checks.
#[test]
fn stopped_threads_are_restored_stopped() {
    use common::*;
    use std::time::Duration;
    let mut p = Proc::test_prog("threads");
    // SAFETY: plain kill of the process this test started.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    let pid = p.pid;
    wait_for("the process to stop", Duration::from_secs(10), || {
        all_stopped(pid)
    });
    p.dump(&[]);
    let img = p.images();
    let text = godwit_ok(&["inspect", img.to_str().unwrap()]);
    assert!(
        text.contains("stopped (job control) by signal 19"),
        "{text}"
    );
    p.end_original();
    p.restore();
    std::thread::sleep(Duration::from_millis(300));
    assert!(all_stopped(pid), "every restored thread is stopped");
    // SAFETY: plain kill of the process this test restored.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(p.verdict(), "PASS");
}

/// A process stopped by SIGTSTP in its own process group (as a shell's job
/// is) comes back stopped by SIGTSTP: its parent's waitpid(WUNTRACED)
/// reports that signal again.
#[test]
fn sigtstp_stop_keeps_its_signal() {
    use common::*;
    use std::os::unix::process::CommandExt;
    use std::time::Duration;
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let log = dir.path().join("counter.log");
    let child = std::process::Command::new(progs().join("launch"))
        .arg(progs().join("counter"))
        .arg(&log)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut p = Proc {
        child: Some(child),
        pid,
        tree: Vec::new(),
        dir,
        affinity: Vec::new(),
    };
    wait_for("the counter to count", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 2)
    });
    // SAFETY: plain kill of the process this test started.
    unsafe { libc::kill(pid, libc::SIGTSTP) };
    let waited = |pid: i32| {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "status {status:#x}");
        libc::WSTOPSIG(status)
    };
    assert_eq!(waited(pid), libc::SIGTSTP, "the original's stop");
    p.dump(&[]);
    p.end_original();
    p.restore();
    assert_eq!(
        ppid_of(pid),
        Some(std::process::id() as i32),
        "the restored process is re-parented to the test (a subreaper)"
    );
    assert_eq!(waited(pid), libc::SIGTSTP, "the restored process's stop");
    assert!(all_stopped(pid));
}

/// A SCHED_DEADLINE process is refused at dump time, naming the policy, and
/// left running.
#[test]
fn deadline_thread_is_refused() {
    use common::*;
    use std::time::Duration;
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let log = dir.path().join("counter.log");
    let counter = progs().join("counter");
    let log_arg = log.to_str().unwrap().to_string();
    let mut p = Proc::spawn_in(
        dir,
        "chrt",
        &[
            "-d",
            "--sched-runtime",
            "1000000",
            "--sched-deadline",
            "10000000",
            "--sched-period",
            "10000000",
            "0",
            counter.to_str().unwrap(),
            &log_arg,
        ],
    );
    wait_for("the counter to count", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() >= 2)
    });
    let pid = p.pid.to_string();
    let img = p.images();
    let out = godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("SCHED_DEADLINE"), "{err}");
    assert!(!gone(p.pid), "a refused dump leaves the process running");
    p.end_original();
}

/// A restore by a godwit that lacks a capability the image's threads hold
/// (here CAP_MKNOD, dropped from its bounding set) is refused, naming it,
/// instead of restoring the threads with fewer capabilities.
#[test]
fn restore_without_a_saved_capability_is_refused() {
    use common::*;
    let mut p = Proc::test_prog("threads");
    p.dump(&[]);
    p.end_original();
    let img = p.images();
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set=-mknod",
            env!("CARGO_BIN_EXE_godwit"),
            "restore",
            "--images",
        ])
        .arg(&img)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore should be refused");
    assert!(err.contains("lacks") && err.contains("27"), "{err}");
    assert!(gone(p.pid), "a refused restore leaves no process behind");
}

/// After a --leave-running dump the original keeps every attribute the
/// freeze touched (syscall user dispatch is paused while frozen and on
/// again at release), and so does the copy.
#[test]
fn procattrs_original_and_copy_after_leave_running() {
    let mut p = common::Proc::test_prog("procattrs");
    p.dump(&["--leave-running"]);
    original_then_copy_pass(&mut p);
}

/// A process whose main thread has exited (SYS_exit) while two threads run
/// on (its leader a zombie, the process alive): dumped through its live
/// threads and restored with its PID, TIDs, their state (counters, TLS, a
/// mutex) and the main thread a zombie again (tests/progs/zleader.c).
mod zleader {
    use super::common::round_trip_with;

    /// The dumped tree's root is that process.
    #[test]
    fn root_dump_restore() {
        round_trip_with("zleader", &["self"], &[], false);
    }

    #[test]
    fn root_leave_running_restore_copy() {
        round_trip_with("zleader", &["self"], &[], true);
    }

    /// A child of the root: once its workers exit, its parent reaps it with
    /// the last thread's exit code; its main thread's own exit code shows
    /// in /proc meanwhile.
    #[test]
    fn child_exits_and_is_reaped() {
        round_trip_with("zleader", &["exit"], &[], false);
    }

    #[test]
    fn child_leave_running_restore_copy() {
        round_trip_with("zleader", &["exit"], &[], true);
    }

    /// A child killed (SIGKILL) after the restore is reaped as killed.
    #[test]
    fn child_killed_and_is_reaped() {
        round_trip_with("zleader", &["kill"], &[], false);
    }
}

/// A pidfd of a process outside the dumped tree (pidfds.c's parent) is
/// refused at dump time, naming the fd and the process it refers to; the
/// program runs on.
#[test]
fn pidfd_outside_the_tree_is_refused() {
    use common::*;
    let p = Proc::test_prog_with("pidfds", &["outside"]);
    let parent = ppid_of(p.pid).expect("a parent");
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the dump must refuse: {err}");
    assert!(
        err.contains(&format!("process {}", p.pid))
            && err.contains(&format!("a pidfd of process {parent}"))
            && err.contains("outside the dumped process tree"),
        "the refusal names the fd and its target: {err}"
    );
    assert_eq!(p.verdict(), "PASS", "the process runs on");
}

/// A zombie session leader whose member was re-parented to the tree's root
/// (a subreaper): the member could not be put back in that session, so the
/// dump refuses it, naming the member and the session; the tree runs on.
#[test]
fn member_of_a_zombie_led_session_is_refused() {
    use common::*;
    let p = Proc::test_prog_with("zombies", &["orphan-session"]);
    let member = std::fs::read_to_string(p.path("member")).unwrap();
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the dump must refuse: {err}");
    assert!(
        err.contains(&format!("process {member}"))
            && err.contains("could not be put back in that session"),
        "the refusal names the member and why: {err}"
    );
    assert_eq!(p.verdict(), "PASS", "the tree runs on");
}

/// `inspect` shows each pidfd and what it refers to (its process, -1 for a
/// reaped one); the image then restores and passes.
#[test]
fn pidfds_shown_by_inspect() {
    use common::*;
    let mut p = Proc::test_prog("pidfds");
    p.dump(&[]);
    let img = p.images();
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
    let fds = v["processes"][0]["fds"].as_array().unwrap();
    let of: Vec<i64> = fds
        .iter()
        .filter(|f| f["kind"] == "Pidfd")
        .map(|f| f["pidfd_of"].as_i64().unwrap())
        .collect();
    assert!(of.contains(&(p.pid as i64)), "{of:?}");
    assert!(of.contains(&-1), "{of:?}");
    assert!(
        of.len() >= 6,
        "self, child (twice), clone, zombie, reaped: {of:?}"
    );
    p.end_original();
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

/// `restore --pid-ns` of `prog` while its original still runs: the copy,
/// in a new PID namespace where each process has its old PID, passes.
fn in_a_new_pid_namespace(prog: &str) {
    in_a_new_pid_namespace_with(prog, &[]);
}

/// [`in_a_new_pid_namespace`] of `prog` with `args`.
fn in_a_new_pid_namespace_with(prog: &str, args: &[&str]) {
    use common::*;
    let mut p = Proc::test_prog_with(prog, args);
    p.dump(&["--leave-running"]);
    let img = p.images();
    let v: serde_json::Value = serde_json::from_str(&godwit_ok(&[
        "--json",
        "restore",
        "--images",
        img.to_str().unwrap(),
        "--pid-ns",
    ]))
    .unwrap();
    let host = v["host_pid"].as_i64().unwrap() as i32;
    let init = v["ns_init"].as_i64().unwrap() as i32;
    let _reap = NsInit(init);
    assert_ne!(host, p.pid, "the original still holds its PID");
    p.end_original();
    p.pid = host;
    let verdict = p.verdict();
    assert_eq!(verdict, "PASS", "{prog} in the namespace: {}", p.output());
}

/// Zombies (their groups, sessions and wait statuses, the core-dump bit)
/// restored into a new PID namespace.
#[test]
fn zombies_in_a_new_pid_namespace() {
    in_a_new_pid_namespace("zombies");
}

/// pidfds restored into a new PID namespace refer to the namespace's
/// processes (opened by PID inside it).
#[test]
fn pidfds_in_a_new_pid_namespace() {
    in_a_new_pid_namespace("pidfds");
}

/// The restorebugs program in one mode (its argument): dump (then also
/// dump --leave-running), end the original, restore, and the program
/// checks its own state.
fn restorebugs(mode: &str) {
    for leave_running in [false, true] {
        common::round_trip_with("restorebugs", &[mode], &[], leave_running);
    }
}

/// One FIFO opened twice and a dup of one of those fds, all three in one
/// epoll set: each watch comes back under its own fd number.
#[test]
fn epoll_watching_one_file_under_several_fds() {
    restorebugs("epoll");
}

/// Files and directories at fds 3..10 and 1000, cwd elsewhere: no fd the
/// restore opens for itself lands on (or clobbers) one of them.
#[test]
fn fds_at_low_and_high_numbers_with_a_cwd_elsewhere() {
    restorebugs("fdnums");
}

/// O_PATH descriptors of a file, a directory and a symlink (O_NOFOLLOW).
#[test]
fn o_path_descriptors() {
    restorebugs("opath");
}

/// A unix socket whose file was removed and replaced by a FIFO, both open.
#[test]
fn fifo_where_a_unix_socket_was_bound() {
    restorebugs("fifosock");
}

/// A datagram unix socket whose bound file was removed keeps its name.
#[test]
fn datagram_socket_whose_file_was_removed() {
    restorebugs("dgramgone");
}

/// A child's descriptors of /proc/self/..., /proc/<its pid>/... files.
#[test]
fn proc_files_of_a_child() {
    restorebugs("procfiles");
}

/// Zombies under a living child and at two levels.
#[test]
fn zombies_at_several_levels() {
    restorebugs("zombies");
}

/// A /proc file of a process outside the tree cannot name the same process
/// after a restore: the dump refuses it, naming the fd and the file, and
/// leaves the process running.
#[test]
fn proc_file_of_another_process_is_refused_at_dump() {
    let p = common::Proc::test_prog_with("restorebugs", &["procother"]);
    let img = p.images();
    let pid = p.pid.to_string();
    let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump passed: {err}");
    assert!(
        err.contains("fd 3")
            && err.contains("/proc/1/stat")
            && err.contains("not in the dumped tree"),
        "{err}"
    );
    assert!(!common::gone(p.pid), "the refused dump ended the process");
    assert_eq!(p.verdict(), "PASS", "{}", p.output());
}

/// procfiles restored with --pid-ns beside the still running original: the
/// child's /proc/self and /proc/<its pid> files are its own in the new
/// namespace (the PID it has there), not the original's.
#[test]
fn proc_files_of_a_child_in_a_new_pid_namespace() {
    in_a_new_pid_namespace_with("restorebugs", &["procfiles"]);
}

/// A zombie child of the root that leads the process group of a living
/// process (re-parented to the root, a subreaper): the group comes back
/// with its zombie leader (it used to fall silently into the root's).
#[test]
fn zombie_leading_the_group_of_a_living_process() {
    restorebugs("zombielead");
}

/// A living process in the session of a zombie, while its parent is in
/// another session: a restore could not put it back in that session, so
/// the dump refuses it, naming the process and both sessions.
#[test]
fn process_in_a_session_other_than_its_parents_is_refused_at_dump() {
    let p = common::Proc::test_prog_with("restorebugs", &["zombiesession"]);
    let img = p.images();
    let pid = p.pid.to_string();
    let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump passed: {err}");
    assert!(
        err.contains(&format!("while its parent {pid} is in session")),
        "{err}"
    );
    assert!(!common::gone(p.pid), "the refused dump ended the process");
    assert_eq!(p.verdict(), "PASS", "{}", p.output());
}

/// A zombie that had joined the process group of a living sibling: it
/// comes back in that group (zombies exit once the groups exist).
#[test]
fn zombie_in_a_siblings_group() {
    restorebugs("zombiegroup");
}

/// The deleted program in one mode (its argument): dump (then also dump
/// --leave-running), end the original, restore, and the program checks
/// its own state.
fn deleted(mode: &str) {
    for leave_running in [false, true] {
        common::round_trip_with("deleted", &[mode], &[], leave_running);
    }
}

/// A FIFO with unread data, a directory, a symlink (O_PATH|O_NOFOLLOW) and
/// a device node, each removed while open: made again under a temporary
/// name next to where they were, opened, and removed again.
#[test]
fn deleted_fifo_directory_symlink_and_device() {
    deleted("nodes");
}

/// A working directory that was removed.
#[test]
fn deleted_working_directory() {
    deleted("cwd");
}

/// Private mappings of a deleted file and of a memfd (pages written, read
/// and untouched), and of /dev/zero, shared with a child and private.
#[test]
fn private_mappings_of_deleted_files_memfds_and_dev_zero() {
    deleted("maps");
}

/// Deleted things that cannot be made again: the dump is refused, naming
/// the fd or mapping and why, and the program runs on unharmed.
fn deleted_refused(mode: &str, expect: &[&str]) {
    let p = common::Proc::test_prog_with("deleted", &[mode]);
    let img = p.images();
    let pid = p.pid.to_string();
    let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump succeeded");
    for e in expect {
        assert!(err.contains(e), "{e:?} not in: {err}");
    }
    assert!(!common::gone(p.pid), "the refused dump ended the process");
    assert_eq!(p.verdict(), "PASS", "after the refused dump");
}

/// A private mapping of a deleted file whose fd was closed.
#[test]
fn private_mapping_of_a_deleted_file_no_fd_holds_refused() {
    deleted_refused(
        "mapnofd",
        &["private mapping", "deleted file that no descriptor"],
    );
}

/// A deleted file whose directory is gone too.
#[test]
fn deleted_file_whose_directory_is_gone_refused() {
    deleted_refused("dirgone", &["fd 3", "sub/f", "directory", "is gone too"]);
}

/// A removed node of a device with state (/dev/kmsg's 1:11).
#[test]
fn deleted_node_of_a_device_with_state_refused() {
    deleted_refused("kmsg", &["fd 3", "character device 1:11"]);
}

/// Deleted sparse files: one with 2 MiB of data (kept in the page file),
/// one with 66 MiB, above the default limit: refused, naming it and the
/// option, then dumped with --max-deleted-file-size and restored exactly
/// (data, holes, size, mode, still deleted).
#[test]
fn big_deleted_files_with_a_raised_limit() {
    let p = common::Proc::test_prog_with("deleted", &["big"]);
    let img = p.images();
    let pid = p.pid.to_string();
    let out = common::godwit(&["dump", "--pid", &pid, "--images", img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump succeeded");
    assert!(
        err.contains("fd 4") && err.contains("large") && err.contains("--max-deleted-file-size"),
        "{err}"
    );
    assert!(!common::gone(p.pid), "the refused dump ended the process");
    drop(p);
    for leave_running in [false, true] {
        common::round_trip_with(
            "deleted",
            &["big"],
            &["--max-deleted-file-size", "70000000"],
            leave_running,
        );
    }
}

/// A chroot'ed process whose root (its cwd too) was removed: made again,
/// entered and removed again; still confined.
#[test]
fn deleted_root_directory() {
    deleted("root");
}

/// hugetlb memory: the tests reserve the 2 MiB huge pages they need.
mod hugetlb {
    use super::common;

    use common::hugepages::{available, Reserved};

    /// What hugetlb.c maps: a private mapping of 2 pages, a shared one of 1,
    /// a memfd of 2, a SysV segment of 1, files on hugetlbfs of 1 each
    /// (the private mapping's copy of its file's page, 1 more).
    const PAGES: u64 = 8;

    /// A hugetlbfs of 2 MiB pages mounted on a directory of our own;
    /// unmounted (its files go with it) when dropped.
    struct Mount(tempfile::TempDir);

    impl Mount {
        fn new() -> Mount {
            let dir = tempfile::Builder::new()
                .prefix("godwit-hugetlbfs")
                .tempdir()
                .unwrap();
            let st = std::process::Command::new("mount")
                .args([
                    "-t",
                    "hugetlbfs",
                    "-o",
                    "pagesize=2M,mode=0700",
                    "godwit-test",
                ])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "mount -t hugetlbfs failed");
            Mount(dir)
        }

        fn path(&self) -> &str {
            self.0.path().to_str().unwrap()
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    /// Private and shared MAP_HUGETLB memory, a hugetlb memfd, a hugetlb
    /// SysV segment and mappings of files on a hugetlbfs come back with
    /// their contents, page size and sharing; after a dump that ends the
    /// process, and after --leave-running.
    #[test]
    fn hugetlb_memory_round_trips() {
        let _r = Reserved::at_least(PAGES + 1);
        for leave_running in [false, true] {
            let m = Mount::new();
            common::round_trip_with("hugetlb", &[m.path()], &[], leave_running);
        }
    }

    /// With too few huge pages free, the restore is refused before any
    /// process is made, naming the hugetlb memory and how many pages it
    /// needs; with them back, the same image restores.
    #[test]
    fn restore_without_free_huge_pages_is_refused_early() {
        let r = Reserved::at_least(PAGES + 1);
        let m = Mount::new();
        let mut p = common::Proc::test_prog_with("hugetlb", &[m.path()]);
        p.dump(&[]);
        p.end_original();
        r.release();
        if available() >= PAGES {
            eprintln!(
                "skipped the refusal: this host keeps {} huge pages free",
                available()
            );
        } else {
            let img = p.images();
            let out = common::godwit(&["restore", "--images", img.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "restore succeeded without huge pages"
            );
            // Its own pages but the shared file's, which the file keeps.
            assert!(
                err.contains(&format!("needs {} huge pages of 2048 KiB", PAGES - 1))
                    && err.contains("hugetlb")
                    && err.contains("nr_hugepages"),
                "{err}"
            );
            eprintln!("refused as it should: {err}");
            assert!(common::gone(p.pid), "a process was made before the refusal");
        }
        let _again = {
            drop(r);
            Reserved::at_least(PAGES + 1)
        };
        p.restore();
        assert_eq!(p.verdict(), "PASS");
    }
}

//! Incremental checkpoints end to end (`godwit dump --store --leave-running
//! --series N`): a real process (tests/progs/incmem.c) writes all the time,
//! moves and replaces mappings, while checkpoints are taken; each after the
//! first stores only what was written since, and any of them restores to
//! memory the program finds exactly consistent with its own step counter.

mod common;
use common::{godwit_ok, gone, Proc};

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// `godwit --json dump --series n --every ms` of `p` into `store`.
fn series(p: &mut Proc, store: &std::path::Path, n: u32, ms: u64) -> Vec<serde_json::Value> {
    let pid = p.pid.to_string();
    let n = n.to_string();
    let ms = ms.to_string();
    let out = godwit_ok(&[
        "--json",
        "dump",
        "--pid",
        &pid,
        "--store",
        s(store),
        "--checkpoint",
        "inc",
        "--leave-running",
        "--no-sync",
        "--series",
        &n,
        "--every",
        &ms,
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["series"].as_array().unwrap().clone()
}

fn ls(store: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&godwit_ok(&[
        "--json",
        "checkpoints",
        "--store",
        s(store),
        "ls",
    ]))
    .unwrap()
}

/// Restores checkpoint `id`, lets the program check itself; returns the
/// step counter it checked its memory against. Ends it again.
fn restore_and_check(p: &mut Proc, store: &std::path::Path, id: &str) -> u64 {
    for f in ["go", "result", "steps"] {
        let _ = std::fs::remove_file(p.path(f));
    }
    let out = godwit_ok(&["restore", "--store", s(store), "--checkpoint", id]);
    assert_eq!(out.trim(), p.pid.to_string(), "restore printed the PID");
    assert!(!gone(p.pid), "restored process is not running");
    let verdict = p.verdict();
    assert_eq!(verdict, "PASS", "restored from {id}: {}", p.output());
    let steps = std::fs::read_to_string(p.path("steps")).unwrap();
    // It exited after its verdict: reaped (we are the subreaper) with the rest.
    p.tree.push(p.pid);
    p.end_original();
    steps.trim().parse().unwrap()
}

/// Ten checkpoints while the program writes: after the first (full) one
/// they are incremental and each stores a fraction of it; the 1st, 5th and
/// 10th restore to consistent memory at ever later steps, the 10th also
/// after its parent is removed and the store collected.
#[test]
fn ten_incremental_checkpoints_restore_exactly() {
    let mut p = Proc::test_prog("incmem");
    let store = p.path("store");
    let list = series(&mut p, &store, 10, 300);
    assert_eq!(list.len(), 10);
    assert_eq!(list[0]["incremental"], false, "{list:?}");
    assert_eq!(list[1]["incremental"], true, "{list:?}");
    assert!(list[1]["bytes_linked"].as_u64().unwrap() > 0, "{list:?}");
    let incremental = list.iter().filter(|c| c["incremental"] == true).count();
    // A full one now and then (compaction) is fine; most must not be.
    assert!(incremental >= 6, "{incremental} incremental: {list:?}");
    let v = ls(&store);
    let cks = v["checkpoints"].as_array().unwrap();
    let first = cks[0]["new_stored_bytes"].as_u64().unwrap();
    assert!(first > 32 << 20, "the program holds 64 MiB: {v}");
    for (i, (c, l)) in cks.iter().zip(&list).enumerate().skip(1) {
        assert_eq!(c["parent"], cks[i - 1]["id"], "{v}");
        if l["incremental"] == true {
            let added = c["new_stored_bytes"].as_u64().unwrap();
            assert!(
                added * 3 < first,
                "{} added {added} bytes, the full one {first}: {v}",
                c["id"]
            );
        }
    }
    p.end_original();
    let one = restore_and_check(&mut p, &store, "inc-1");
    let five = restore_and_check(&mut p, &store, "inc-5");
    // The parent of the 10th goes, its chunks collected: the 10th still
    // holds every page it lists.
    godwit_ok(&["checkpoints", "--store", s(&store), "rm", "inc-9"]);
    godwit_ok(&["checkpoints", "--store", s(&store), "gc"]);
    let ten = restore_and_check(&mut p, &store, "inc-10");
    assert!(
        one < five && five < ten,
        "steps at the 1st, 5th, 10th: {one} {five} {ten}"
    );
}

/// A child appears in the tree between two checkpoints: the next one is a
/// full one (the tracking does not cover the child), the ones after are
/// incremental again, and the last restores the tree exactly.
#[test]
fn a_changed_tree_falls_back_to_a_full_checkpoint() {
    let mut p = Proc::test_prog_with("incmem", &["fork"]);
    let store = p.path("store");
    let list = series(&mut p, &store, 8, 500);
    assert_eq!(list[0]["incremental"], false, "{list:?}");
    assert_eq!(list[7]["incremental"], true, "{list:?}");
    let full_later = list[1..].iter().any(|c| c["incremental"] == false);
    assert!(full_later, "a full checkpoint after the fork: {list:?}");
    p.end_original();
    restore_and_check(&mut p, &store, "inc-8");
}

/// Another dump of the process while a series keeps its write tracking
/// armed (between two checkpoints): its memory is protected by the
/// series' userfaultfd, which that dump's pre-copy cannot tell from pages
/// it copied; it takes a copy-on-write snapshot instead, and restores
/// exactly (before the fix: pages missing, the restored program crashed).
/// The program writes but keeps its mappings (a snapshot refuses memory
/// unmapped during its copy).
#[test]
fn another_dump_between_two_checkpoints_of_a_series() {
    let mut p = Proc::test_prog_with("incmem", &["still"]);
    let store = p.path("store");
    let pid = p.pid;
    let series_store = store.clone();
    let series = std::thread::spawn(move || {
        let pid = pid.to_string();
        godwit_ok(&[
            "--json",
            "dump",
            "--pid",
            &pid,
            "--store",
            s(&series_store),
            "--checkpoint",
            "inc",
            "--leave-running",
            "--no-sync",
            "--series",
            "3",
            "--every",
            "4000",
        ])
    });
    let first = store.join("checkpoints").join("inc-1");
    common::wait_for(
        "the first checkpoint of the series",
        std::time::Duration::from_secs(60),
        || first.exists(),
    );
    let img = p.images();
    let pid = p.pid.to_string();
    godwit_ok(&[
        "dump",
        "--pid",
        &pid,
        "--images",
        s(&img),
        "--leave-running",
        "--no-sync",
    ]);
    let out = series.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["series"][2]["incremental"], true, "{v}");
    p.end_original();
    for f in ["go", "result"] {
        let _ = std::fs::remove_file(p.path(f));
    }
    p.restore();
    let verdict = p.verdict();
    assert_eq!(
        verdict,
        "PASS",
        "restored from the other dump: {}",
        p.output()
    );
    p.tree.push(p.pid);
    p.end_original();
    restore_and_check(&mut p, &store, "inc-3");
}

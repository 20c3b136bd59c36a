//! The node's checkpoint store end to end: real processes dumped into a
//! store (`dump --store`), restored from it (`restore --store`), moved
//! between stores (`checkpoints export` / `import`), removed and collected
//! (`checkpoints rm` / `gc`).

mod common;
use common::{godwit, godwit_ok, gone, Proc};

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// `godwit --json dump --store STORE --checkpoint ID` of `p` (with `extra`);
/// records the PIDs it took.
fn dump_into(p: &mut Proc, store: &std::path::Path, id: &str, extra: &[&str]) -> serde_json::Value {
    let pid = p.pid.to_string();
    let mut args = vec![
        "--json",
        "dump",
        "--pid",
        &pid,
        "--store",
        s(store),
        "--checkpoint",
        id,
    ];
    args.extend_from_slice(extra);
    let v: serde_json::Value = serde_json::from_str(&godwit_ok(&args)).unwrap();
    for q in v["pids"].as_array().unwrap() {
        let q = q.as_i64().unwrap() as i32;
        if q != p.pid && !p.tree.contains(&q) {
            p.tree.push(q);
        }
    }
    v
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

fn restore_from(p: &Proc, store: &std::path::Path, id: &str) {
    let out = godwit_ok(&["restore", "--store", s(store), "--checkpoint", id]);
    assert_eq!(out.trim(), p.pid.to_string(), "restore printed the PID");
    assert!(!gone(p.pid), "restored process is not running");
}

/// Two checkpoints of a running process: the second stores almost nothing
/// new and names the first as its parent; the process restored from the
/// second finds all its memory.
#[test]
fn second_checkpoint_adds_few_chunks_and_restores() {
    let mut p = Proc::test_prog("memory");
    let store = p.path("store");
    let one = dump_into(&mut p, &store, "one", &["--leave-running"]);
    assert_eq!(one["checkpoint"], "one");
    assert!(one["parent"].is_null(), "{one}");
    let two = dump_into(&mut p, &store, "two", &["--leave-running"]);
    assert_eq!(two["parent"], "one", "{two}");
    let v = ls(&store);
    let list = v["checkpoints"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[1]["id"], "two");
    assert_eq!(list[1]["parent"], "one");
    let first = list[0]["new_stored_bytes"].as_u64().unwrap();
    let second = list[1]["new_stored_bytes"].as_u64().unwrap();
    let total = list[1]["page_bytes"].as_u64().unwrap();
    assert!(
        total > 24 << 20,
        "the memory program holds ~32 MiB of pages: {v}"
    );
    assert!(first > 0, "{v}");
    assert!(
        second * 20 < first,
        "the second checkpoint added {second} bytes, the first {first}: {v}"
    );
    // The text listing shows the chain.
    let text = godwit_ok(&["checkpoints", "--store", s(&store), "ls"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("two") && l.contains("one")),
        "{text}"
    );
    p.end_original();
    restore_from(&p, &store, "two");
    let verdict = p.verdict();
    assert_eq!(
        verdict,
        "PASS",
        "after restore from the store: {}",
        p.output()
    );
}

/// Export from one store, import into another (a damaged export is
/// refused), remove the original and collect its chunks, restore from the
/// imported copy.
#[test]
fn export_import_between_stores_then_restore() {
    let mut p = Proc::test_prog("memory");
    let a = p.path("a");
    let b = p.path("b");
    let file = p.path("x.gwx");
    dump_into(&mut p, &a, "x", &[]);
    godwit_ok(&[
        "checkpoints",
        "--store",
        s(&a),
        "export",
        "x",
        "-o",
        s(&file),
    ]);
    // Damaged copies are refused, and the store stays without it.
    let bytes = std::fs::read(&file).unwrap();
    let bad = p.path("bad.gwx");
    for damaged in [
        {
            let mut d = bytes.clone();
            let at = d.len() / 2;
            d[at] ^= 0x10;
            d
        },
        bytes[..bytes.len() - 1000].to_vec(),
    ] {
        std::fs::write(&bad, &damaged).unwrap();
        let out = godwit(&["checkpoints", "--store", s(&b), "import", s(&bad)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a damaged export was taken");
        assert!(
            err.contains("not a usable Godwit checkpoint export"),
            "{err}"
        );
    }
    assert_eq!(ls(&b)["checkpoints"].as_array().unwrap().len(), 0);
    let out = godwit_ok(&["checkpoints", "--store", s(&b), "import", s(&file)]);
    assert!(out.contains("imported x"), "{out}");
    // The original store forgets it: gc removes every chunk.
    godwit_ok(&["checkpoints", "--store", s(&a), "rm", "x"]);
    let gc: serde_json::Value = serde_json::from_str(&godwit_ok(&[
        "--json",
        "checkpoints",
        "--store",
        s(&a),
        "gc",
    ]))
    .unwrap();
    assert!(gc["chunks_removed"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(ls(&a)["usage"]["chunks"], 0);
    let out = godwit(&["restore", "--store", s(&a), "--checkpoint", "x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no checkpoint x"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.end_original();
    restore_from(&p, &b, "x");
    let verdict = p.verdict();
    assert_eq!(
        verdict,
        "PASS",
        "after restore from the imported copy: {}",
        p.output()
    );
}

/// A chunk damaged on disk: the restore is refused naming the checkpoint
/// and the chunk, and nothing runs.
#[test]
fn corrupt_chunk_refuses_the_restore() {
    let mut p = Proc::test_prog("memory");
    let store = p.path("store");
    dump_into(&mut p, &store, "c", &[]);
    p.end_original();
    // Flip a byte in the largest chunk file.
    let mut biggest: Option<(u64, std::path::PathBuf)> = None;
    for sub in std::fs::read_dir(store.join("chunks")).unwrap() {
        for e in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let e = e.unwrap();
            let len = e.metadata().unwrap().len();
            if biggest.as_ref().map_or(true, |(l, _)| len > *l) {
                biggest = Some((len, e.path()));
            }
        }
    }
    let (_, path) = biggest.unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = godwit(&["restore", "--store", s(&store), "--checkpoint", "c"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains("checkpoint c: chunk") && err.contains(name),
        "{err}"
    );
    assert!(gone(p.pid), "a process runs after a refused restore");
}

/// Retention: of three checkpoints of a process and one of another,
/// `prune --keep 1` removes the two older ones of the first (a dry run
/// first names them and removes nothing), gc frees what only they held,
/// and the process restores from the one kept.
#[test]
fn prune_keeps_the_newest_of_each_process() {
    let mut p = Proc::test_prog("memory");
    let store = p.path("store");
    for id in ["p1", "p2", "p3"] {
        dump_into(&mut p, &store, id, &["--leave-running"]);
    }
    let mut q = Proc::test_prog("memory");
    dump_into(&mut q, &store, "q1", &["--leave-running"]);
    let prune = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--json", "checkpoints", "--store", s(&store), "prune"];
        args.extend_from_slice(extra);
        serde_json::from_str(&godwit_ok(&args)).unwrap()
    };
    let out = godwit(&["checkpoints", "--store", s(&store), "prune"]);
    assert!(!out.status.success(), "prune without a rule");
    let dry = prune(&["--keep", "1", "--dry-run"]);
    assert_eq!(dry["removed"], serde_json::json!(["p1", "p2"]), "{dry}");
    assert_eq!(ls(&store)["checkpoints"].as_array().unwrap().len(), 4);
    let v = prune(&["--keep", "1"]);
    assert_eq!(v["removed"], serde_json::json!(["p1", "p2"]), "{v}");
    assert_eq!(v["kept"], 2, "{v}");
    let ids: Vec<String> = ls(&store)["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["p3", "q1"]);
    // By age: everything is older than 0 s, yet each keeps its newest.
    let v = prune(&["--max-age-secs", "0"]);
    assert_eq!(v["removed"], serde_json::json!([]), "{v}");
    p.end_original();
    restore_from(&p, &store, "p3");
    assert_eq!(
        p.verdict(),
        "PASS",
        "after prune and restore: {}",
        p.output()
    );
}

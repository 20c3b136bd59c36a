//! `godwit node ...` against a godwitd on loopback: what runs on the node,
//! a checkpoint into its store, a restore from it; scopes enforced.

mod common;

use common::{gone, wait_for, Proc};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const READER: &str = "node-test-reader-token-0123456789";
const OPERATOR: &str = "node-test-operator-token-0123456789";

struct Agent {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

fn agent() -> Agent {
    let dir = tempfile::Builder::new()
        .prefix("godwit-node")
        .tempdir()
        .unwrap();
    let tokens = dir.path().join("tokens");
    private(
        &tokens,
        &format!("read {READER}\nread,operate {OPERATOR}\n"),
    );
    private(&dir.path().join("reader"), READER);
    private(&dir.path().join("operator"), OPERATOR);
    let bin = Path::new(env!("CARGO_BIN_EXE_godwit"))
        .parent()
        .unwrap()
        .join("godwitd");
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&tokens)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("GODWITD_READY ")
        .unwrap()
        .trim()
        .to_string();
    Agent { child, addr, dir }
}

fn node(a: &Agent, who: &str, args: &[&str]) -> Output {
    let token = a.dir.path().join(who);
    Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(["--json", "node", "--agent", &a.addr, "--token-file"])
        .arg(token)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn checkpoints(a: &Agent, who: &str, args: &[&str]) -> Output {
    let token = a.dir.path().join(who);
    Command::new(env!("CARGO_BIN_EXE_godwit"))
        .args(["--json", "checkpoints", "--agent", &a.addr, "--token-file"])
        .arg(token)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn node_ok(a: &Agent, args: &[&str]) -> serde_json::Value {
    let out = node(a, "operator", args);
    assert!(
        out.status.success(),
        "godwit node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The counter program writing to `dir/log`, once it has counted to 3.
fn counter(dir: &tempfile::TempDir) -> (Proc, std::path::PathBuf) {
    let log = dir.path().join("log");
    let p = Proc::spawn_in(
        tempfile::tempdir().unwrap(),
        common::progs().join("counter").to_str().unwrap(),
        &[log.to_str().unwrap()],
    );
    wait_for("the counter", Duration::from_secs(10), || {
        last_count(&log) >= 3
    });
    (p, log)
}

/// The last number in a counter's log (0 before the first).
fn last_count(log: &Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.parse::<u64>().ok())
        .unwrap_or(0)
}

#[test]
fn checkpoint_into_the_store_and_restore_from_it() {
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    let (mut p, log) = counter(&dir);
    let at = |_: &Proc| last_count(&log);
    let pid = p.pid;

    // Every process of the node, with what the agent knows of it.
    let ps = node_ok(&a, &["ps", "--all"]);
    let me = ps["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not listed: {ps}"));
    assert_eq!(me["kind"], "other");
    assert!(me["program"].as_str().unwrap().ends_with("counter"), "{me}");
    assert!(me["memory_bytes"].as_u64().unwrap() > 0);

    // A read-only token may look, not act.
    let out = node(&a, "reader", &["checkpoint", "--pid", &pid.to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!gone(pid));

    let v = node_ok(
        &a,
        &[
            "checkpoint",
            "--pid",
            &pid.to_string(),
            "--id",
            "c1",
            "--stop",
        ],
    );
    assert_eq!(v["id"], "c1");
    p.end_original();
    let stopped_at = at(&p);
    let images = node_ok(&a, &["images"]);
    assert_eq!(images["images"][0]["id"], "c1", "{images}");
    assert_eq!(images["images"][0]["medium"], "store", "{images}");
    assert_eq!(images["images"][0]["pids"][0], pid, "{images}");
    // In the node's chunk store: the store 0700, the checkpoint file 0600.
    let store = a.dir.path().join("data/checkpoints");
    let img = store.join("checkpoints/c1");
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&img), 0o600);

    let v = node_ok(&a, &["restore", "c1"]);
    assert_eq!(v["pid"], pid);
    wait_for("the restored counter", Duration::from_secs(10), || {
        at(&p) >= stopped_at + 3
    });
    let text = std::fs::read_to_string(&log).unwrap();
    for (i, l) in text.lines().enumerate() {
        assert_eq!(l, i.to_string(), "a gap or a repeat in the counter's log");
    }
    let ps = node_ok(&a, &["ps"]);
    let me = ps["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} not listed as managed: {ps}"));
    assert_eq!(me["kind"], "transparent");
    assert_eq!(me["origin"], "restored from image c1");

    // A second checkpoint of the restored process: its parent is c1.
    // `godwit checkpoints --agent` shows the chain (deduplication is
    // tested in store.rs: this counter's memory is one chunk).
    let v = node_ok(&a, &["checkpoint", "--pid", &pid.to_string(), "--id", "c2"]);
    assert_eq!(v["parent"], "c1", "{v}");
    let ls = checkpoints(&a, "reader", &["ls"]);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let list = ls["checkpoints"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{ls}");
    assert_eq!(list[1]["id"], "c2");
    assert_eq!(list[1]["parent"], "c1");
    // gc needs operate; with c2 removed it frees what only c2 used.
    let out = checkpoints(&a, "reader", &["gc"]);
    assert!(!out.status.success());
    let out = checkpoints(&a, "operator", &["rm", "c2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = checkpoints(&a, "operator", &["gc"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(gc["checkpoints"], 1, "{gc}");
    let ls = checkpoints(&a, "reader", &["ls"]);
    let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(ls["usage"]["chunks"], list[0]["chunks"], "{ls}");

    node_ok(&a, &["rm", "c1"]);
    assert!(!img.exists());
    let out = node(&a, "operator", &["restore", "c1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image c1"));
}

/// A checkpoint leaves one node's store and enters another's through their
/// agents (`godwit checkpoints --agent ... export|import`), and the process
/// runs again from it on the second node; the first node's older checkpoint
/// goes by `prune --keep 1` through its agent.
#[test]
fn export_and_import_through_agents() {
    let (a, b) = (agent(), agent());
    let dir = tempfile::tempdir().unwrap();
    let (mut p, log) = counter(&dir);
    let at = || last_count(&log);
    let pid = p.pid.to_string();
    node_ok(&a, &["checkpoint", "--pid", &pid, "--id", "x0"]);
    node_ok(&a, &["checkpoint", "--pid", &pid, "--id", "x1", "--stop"]);
    // Retention through the agent: operate only; keeps the newest.
    let out = checkpoints(&a, "reader", &["prune", "--keep", "1"]);
    assert!(!out.status.success());
    let out = checkpoints(&a, "operator", &["prune", "--keep", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed"], serde_json::json!(["x0"]), "{v}");
    p.end_original();
    let stopped_at = at();
    let file = dir.path().join("x1.export");
    // An export holds the process's memory: not for a read token.
    let out = checkpoints(
        &a,
        "reader",
        &["export", "x1", "-o", file.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(!file.exists());
    let out = checkpoints(
        &a,
        "operator",
        &["export", "x1", "-o", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    // A damaged export is refused by the receiving agent, naming why.
    let bad = dir.path().join("bad.export");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();
    let out = checkpoints(&b, "operator", &["import", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("422"), "{err}");
    let out = checkpoints(&b, "operator", &["import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "x1", "{v}");
    let v = node_ok(&b, &["restore", "x1"]);
    assert_eq!(v["pid"].to_string(), pid);
    wait_for(
        "the counter on the second node",
        Duration::from_secs(10),
        || at() >= stopped_at + 3,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for (i, l) in text.lines().enumerate() {
        assert_eq!(l, i.to_string(), "a gap or a repeat in the counter's log");
    }
}

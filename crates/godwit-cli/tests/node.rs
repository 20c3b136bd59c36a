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

fn node_ok(a: &Agent, args: &[&str]) -> serde_json::Value {
    let out = node(a, "operator", args);
    assert!(
        out.status.success(),
        "godwit node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn checkpoint_into_the_store_and_restore_from_it() {
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut p = Proc::spawn_in(
        tempfile::tempdir().unwrap(),
        common::progs().join("counter").to_str().unwrap(),
        &[log.to_str().unwrap()],
    );
    let at = |_: &Proc| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .last()
            .and_then(|l| l.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_for("the counter", Duration::from_secs(10), || at(&p) >= 3);
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
    let img = a.dir.path().join("data/images/c1");
    let mode = std::fs::metadata(&img).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

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

    node_ok(&a, &["rm", "c1"]);
    assert!(!img.exists());
    let out = node(&a, "operator", &["restore", "c1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no image c1"));
}

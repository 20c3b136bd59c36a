//! Real programs, unmodified: python3 with live state, redis-server with keys.
//! Each: dump + restore, and dump --leave-running + restore of the copy.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn python(leave_running: bool) {
    let dir = tempfile::Builder::new()
        .prefix("godwit-py")
        .tempdir()
        .unwrap();
    let script = repo().join("tests/progs/state.py");
    let d = dir.path().to_str().unwrap().to_string();
    let mut p = Proc::spawn_in(dir, "python3", &[script.to_str().unwrap(), &d]);
    let ready = p.path("ready");
    let pid = p.pid;
    wait_for("python to be ready", Duration::from_secs(60), || {
        ready.exists() || gone(pid)
    });
    assert!(ready.exists(), "python exited: {}", p.output());
    let img = p.images();
    let pid_s = p.pid.to_string();
    let mut args = vec!["dump", "--pid", &pid_s, "--images", img.to_str().unwrap()];
    if leave_running {
        args.push("--leave-running");
    }
    godwit_ok(&args);
    p.end_original();
    p.restore();
    assert_eq!(
        p.verdict(),
        "PASS",
        "python after restore; output: {}",
        p.output()
    );
}

#[test]
fn python_dump_restore() {
    python(false);
}

#[test]
fn python_leave_running_restore_copy() {
    python(true);
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn redis(port: u16, leave_running: bool) {
    let mut p = Proc::spawn(
        "redis-server",
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    let pid = p.pid;
    wait_for("redis to answer", Duration::from_secs(20), || {
        cli(port, &["ping"]) == "PONG" || gone(pid)
    });
    assert!(!gone(pid), "redis exited: {}", p.output());
    for i in 0..500 {
        cli(port, &["set", &format!("key{i}"), &format!("value-{i}")]);
    }
    cli(port, &["rpush", "list", "a", "b", "c"]);
    let img = p.images();
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "--pid", &pid_s, "--images", img.to_str().unwrap()];
    if leave_running {
        args.push("--leave-running");
        godwit_ok(&args);
        assert_eq!(
            cli(port, &["get", "key7"]),
            "value-7",
            "the original still serves"
        );
    } else {
        godwit_ok(&args);
    }
    p.end_original();
    p.restore();
    assert_eq!(cli(port, &["dbsize"]), "501");
    assert_eq!(cli(port, &["get", "key421"]), "value-421");
    assert_eq!(cli(port, &["lrange", "list", "0", "-1"]), "a\nb\nc");
    assert_eq!(cli(port, &["set", "new", "1"]), "OK");
    assert_eq!(cli(port, &["incr", "new"]), "2");
}

#[test]
fn redis_dump_restore() {
    redis(17391, false);
}

#[test]
fn redis_leave_running_restore_copy() {
    redis(17392, true);
}

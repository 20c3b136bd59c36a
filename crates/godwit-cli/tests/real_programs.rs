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

fn count(p: &Proc) -> i64 {
    std::fs::read_to_string(p.path("count"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

/// A counting process tree (started by `program args`): dump (or dump
/// --leave-running and end the original), restore, and see it count on.
fn tree_counts_on(program: &str, args: &[&str], leave_running: bool) {
    let dir = tempfile::Builder::new()
        .prefix("godwit-tree")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.push(&d);
    let mut p = Proc::spawn_in(dir, program, &all);
    wait_for("the tree to count", Duration::from_secs(30), || {
        count(&p) > 20 || dead(p.pid)
    });
    assert!(count(&p) > 20, "{program} does not count: {}", p.output());
    p.tree = descendants(p.pid);
    assert!(
        p.tree.len() >= 3,
        "{program}: expected a tree, got {:?}",
        p.tree
    );
    let v = p.dump(if leave_running { &["--leave-running"] } else { &[] });
    // The tree forks short-lived processes: it has at least its fixed members.
    assert!(v["processes"].as_u64().unwrap() >= 4, "{v}");
    p.end_original();
    let at_dump = count(&p);
    // Kept running after --leave-running, the original wrote more to its
    // output file (not O_APPEND) than the image knows of.
    p.restore_with(if leave_running {
        &["--allow-file-changes"]
    } else {
        &[]
    });
    wait_for(
        "the restored tree to count on",
        Duration::from_secs(30),
        || count(&p) > at_dump + 20,
    );
    assert!(
        descendants(p.pid).len() >= p.tree.len().min(3),
        "the restored tree lost processes"
    );
    p.tree = descendants(p.pid);
}

#[test]
fn bash_pipeline_with_background_jobs() {
    let script = repo().join("tests/progs/pipeline.sh");
    tree_counts_on("bash", &[script.to_str().unwrap()], false);
}

#[test]
fn bash_pipeline_leave_running() {
    let script = repo().join("tests/progs/pipeline.sh");
    tree_counts_on("bash", &[script.to_str().unwrap()], true);
}

#[test]
fn python_multiprocessing_pool() {
    let script = repo().join("tests/progs/pool.py");
    tree_counts_on("python3", &[script.to_str().unwrap()], false);
}

#[test]
fn python_multiprocessing_pool_leave_running() {
    let script = repo().join("tests/progs/pool.py");
    tree_counts_on("python3", &[script.to_str().unwrap()], true);
}

/// redis-server dumped in the middle of a BGSAVE (parent + saving child,
/// sharing epoll, pipes and the listening sockets): after restore the child
/// finishes the save, the parent collects it, and the file is complete.
#[test]
fn redis_during_bgsave() {
    let port = 17394u16;
    let dir = tempfile::Builder::new()
        .prefix("godwit-bgsave")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let mut p = Proc::spawn_in(
        dir,
        "redis-server",
        &[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &d,
            "--save",
            "1 1",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
            // 200 us per key: the save of 20000 keys takes ~4 s.
            "--rdb-key-save-delay",
            "200",
        ],
    );
    let pid = p.pid;
    wait_for("redis to answer", Duration::from_secs(20), || {
        cli(port, &["ping"]) == "PONG" || dead(pid)
    });
    assert_eq!(cli(port, &["debug", "populate", "20000"]), "OK");
    assert_eq!(cli(port, &["set", "marker", "yes"]), "OK");
    // redis forks the saver itself a second later, with no client connected
    // (a connected client's socket would be inherited by the child).
    let mut saver = Vec::new();
    wait_for("the BGSAVE child", Duration::from_secs(20), || {
        saver = descendants(pid);
        !saver.is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    p.tree = descendants(pid);
    let v = p.dump(&[]);
    assert_eq!(v["processes"], 2, "{v}");
    p.end_original();
    p.restore();
    assert_eq!(
        descendants(pid),
        saver,
        "the saving child is back with its PID"
    );
    wait_for("the BGSAVE to finish", Duration::from_secs(60), || {
        cli(port, &["info", "persistence"]).contains("rdb_bgsave_in_progress:0")
    });
    let info = cli(port, &["info", "persistence"]);
    assert!(info.contains("rdb_last_bgsave_status:ok"), "{info}");
    let check = Command::new("redis-check-rdb")
        .arg(p.path("dump.rdb"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("RDB looks OK") && out.contains("20001 keys read"),
        "{out}"
    );
    assert_eq!(cli(port, &["dbsize"]), "20001");
}

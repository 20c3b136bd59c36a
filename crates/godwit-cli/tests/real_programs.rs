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

/// Waits until `pid` holds exactly one socket (its listener).
fn only_listener(pid: i32) {
    let sockets = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        std::fs::read_link(e.path())
                            .map(|l| l.to_string_lossy().starts_with("socket:"))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    wait_for(
        "redis to close its client sockets",
        Duration::from_secs(10),
        || sockets() == 1,
    );
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
    // redis closes a finished client's socket on its next loop: wait until
    // only its listening socket is left (a live client is not dumpable).
    only_listener(pid);
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
    let v = p.dump(if leave_running {
        &["--leave-running"]
    } else {
        &[]
    });
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

/// GETs `path` from 127.0.0.1:`port` with a hand-written HTTP/1.0 request:
/// (status line, body), or None if there is no complete answer.
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// nginx as a master and two workers (listening TCP socket shared by all
/// three, a socketpair channel to each worker, epoll with EPOLLEXCLUSIVE,
/// eventfd, workers under another uid): dump (or dump --leave-running and
/// end the original), restore, and the same workers serve the page again;
/// a graceful stop (through the channels) leaves no alert in the log.
fn nginx(port: u16, leave_running: bool) {
    let dir = tempfile::Builder::new()
        .prefix("godwit-nginx")
        .tempdir()
        .unwrap();
    // The workers run as an unprivileged user: let them read the page.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    std::fs::create_dir(dir.path().join("www")).unwrap();
    let page = format!("godwit nginx test page, port {port}\n");
    std::fs::write(dir.path().join("www/index.html"), &page).unwrap();
    let conf = format!(
        "daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
    }}
}}
"
    );
    let conf_path = format!("{d}/nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let err_log = format!("{d}/error.log");
    let mut p = Proc::spawn_in(dir, "nginx", &["-p", &d, "-e", &err_log, "-c", &conf_path]);
    let pid = p.pid;
    // The master starts a new worker when one dies: it must be ended first,
    // also when the test fails (dropped before `p`, which ends the rest).
    struct MasterFirst(i32);
    impl Drop for MasterFirst {
        fn drop(&mut self) {
            if !dead(self.0) {
                // SAFETY: plain kill of the nginx master, a positive PID we started or restored.
                unsafe { libc::kill(self.0, libc::SIGKILL) };
            }
        }
    }
    let master = MasterFirst(pid);
    let serves = || http_get(port, "/index.html") == Some(("HTTP/1.1 200 OK".into(), page.clone()));
    wait_for("nginx to serve the page", Duration::from_secs(20), || {
        (serves() && descendants(pid).len() == 2) || dead(pid)
    });
    assert!(!dead(pid), "nginx exited: {}", p.output());
    let mut workers = descendants(pid);
    workers.sort_unstable();
    p.tree = workers.clone();
    let v = p.dump(if leave_running {
        &["--leave-running"]
    } else {
        &[]
    });
    assert_eq!(v["processes"], 3, "{v}");
    if leave_running {
        assert!(serves(), "the original still serves after --leave-running");
    }
    drop(master);
    p.end_original();
    let _master = MasterFirst(pid);
    // Ending the original (--leave-running) may have been logged.
    let log_at = std::fs::metadata(p.path("error.log")).map_or(0, |m| m.len() as usize);
    p.restore();
    let mut now = descendants(pid);
    now.sort_unstable();
    assert_eq!(now, workers, "the workers are back with their PIDs");
    for i in 0..20 {
        assert!(serves(), "request {i} to the restored nginx");
    }
    assert_eq!(
        http_get(port, "/missing").map(|r| r.0),
        Some("HTTP/1.1 404 Not Found".into())
    );
    let mut now = descendants(pid);
    now.sort_unstable();
    assert_eq!(now, workers, "the same workers served");
    // A graceful stop: the master tells each worker through its channel.
    // SAFETY: plain kill of the restored master, a positive PID we own.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    wait_for("nginx to stop", Duration::from_secs(20), || dead(pid));
    let log = std::fs::read_to_string(p.path("error.log")).unwrap_or_default();
    let log = log.get(log_at..).unwrap_or_default();
    assert!(
        !["[alert]", "[crit]", "[emerg]"]
            .iter()
            .any(|l| log.contains(l)),
        "nginx complained after restore:\n{log}"
    );
}

#[test]
fn nginx_dump_restore() {
    nginx(17480, false);
}

#[test]
fn nginx_leave_running_restore_copy() {
    nginx(17481, true);
}

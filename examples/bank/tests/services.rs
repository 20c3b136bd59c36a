//! End to end, with real bank processes (some started through a real godwitd): the
//! checkpoint lineage (a rollback starts a branch, never overwrites), readiness only
//! after the restore, a damaged latest checkpoint skipped for the one before it,
//! retention and skipped unchanged periodic checkpoints, final checkpoints when godwitd
//! stops, plain-text logs, and `bank load` against a bank that already has accounts.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bank::BankClient;
use godwit_agent_client::Agent;
use godwit_sdk::{Client, ClientOptions};
use serde_json::{json, Value};

mod common;
use common::{bank_bin, godwitd_bin, Proc};

const TOKEN: &str = "bank-services-token-42";
/// A token of the same agents with the `read` scope only.
const READ_TOKEN: &str = "bank-services-read-only-token-7";
const T: Duration = Duration::from_secs(20);

fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A godwitd on 127.0.0.1 that may start the bank.
struct Node {
    proc: Proc,
    addr: String,
    data: PathBuf,
    token_file: PathBuf,
}

impl Node {
    fn start(dir: &Path) -> Node {
        let token_file = dir.join("token");
        private_file(&token_file, &format!("all {TOKEN}\nread {READ_TOKEN}\n"));
        let data = dir.join("node");
        let mut cmd = Command::new(godwitd_bin());
        cmd.args(["--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--allow-exec")
            .arg(bank_bin())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd.spawn().expect("start godwitd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("GODWITD_READY ")
            .unwrap_or_else(|| panic!("godwitd said `{line}`"))
            .to_string();
        Node {
            proc: Proc(child),
            addr,
            data,
            token_file,
        }
    }

    fn url(&self) -> String {
        format!("agent://{}", self.addr)
    }

    /// Starts the bank through the agent (names and store: the agent); returns
    /// (pid, address, uuid) once it printed GODWIT_READY.
    async fn bank(&self, extra: &[&str], env: Value) -> (u64, String, String) {
        let url = self.url();
        let mut args: Vec<String> = ["serve", "--names", &url, "--store", &url]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut env = env;
        env["GODWIT_TOKEN"] = json!(TOKEN);
        let v = Agent::new(&self.addr, TOKEN.into())
            .unwrap()
            .exec(
                bank_bin().to_str().unwrap(),
                &args,
                env,
                Duration::from_secs(15),
            )
            .await
            .unwrap();
        (
            v["pid"].as_u64().unwrap(),
            v["ready"]["address"].as_str().unwrap().to_string(),
            v["ready"]["uuid"].as_str().unwrap().to_string(),
        )
    }

    /// `bank admin ... --json ARGS` (the `godwit service` code).
    fn admin(&self, args: &[&str]) -> Value {
        let out = Command::new(bank_bin())
            .args(["admin", "--agent", &self.addr, "--token-file"])
            .arg(&self.token_file)
            .arg("--json")
            .args(args)
            .output()
            .expect("run bank admin");
        assert!(
            out.status.success(),
            "bank admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `bank admin ARGS` that must fail: its stderr.
    fn admin_fails(&self, args: &[&str]) -> String {
        let out = Command::new(bank_bin())
            .args(["admin", "--agent", &self.addr, "--token-file"])
            .arg(&self.token_file)
            .args(args)
            .output()
            .expect("run bank admin");
        assert!(!out.status.success(), "bank admin {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn store_file(&self, uuid: &str, id: &str) -> PathBuf {
        self.data.join(format!("store/{uuid}/{id}.gwck"))
    }
}

async fn mgmt(addr: &str, req: Value) -> Result<Value, String> {
    godwit_sdk::mgmt::request(addr, req, Some(TOKEN), T)
        .await
        .map_err(|e| e.to_string())
}

async fn checkpoint(addr: &str) -> String {
    let v = mgmt(addr, json!({"op": "checkpoint"})).await.unwrap();
    v["checkpoint"]["id"].as_str().unwrap().to_string()
}

fn bank_at(addr: &str) -> BankClient {
    let opts = ClientOptions {
        deadline: Duration::from_secs(15),
        ..Default::default()
    };
    BankClient::new(Client::at(addr, opts))
}

fn id(n: u64) -> String {
    format!("{n:012}")
}

/// Restoring checkpoint 2 while 4 exist, then checkpointing, starts a branch (5, then
/// 6) and leaves 1..4 as they were; `--restore latest` then takes the tip of that
/// branch; `checkpoints` shows the tree; status and `ls` say where the instance came
/// from and its last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_starts_a_branch_and_latest_is_its_tip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let (_, addr, uuid) = node.bank(&[], json!({})).await;
    let bank = bank_at(&addr);
    let acct = bank.open("ann".into(), 100).await.unwrap().unwrap();
    assert_eq!(checkpoint(&addr).await, id(1));
    for n in 2..=4 {
        bank.deposit(acct, 10).await.unwrap().unwrap();
        assert_eq!(checkpoint(&addr).await, id(n));
    }
    let before: Vec<Vec<u8>> = (1..=4)
        .map(|n| std::fs::read(node.store_file(&uuid, &id(n))).unwrap())
        .collect();
    mgmt(&addr, json!({"op": "stop", "checkpoint": false}))
        .await
        .unwrap();

    // Roll back to 2 (balance 110).
    let (pid2, addr2, _) = node
        .bank(&["--uuid", &uuid, "--restore", &id(2)], json!({}))
        .await;
    let bank2 = bank_at(&addr2);
    assert_eq!(bank2.balance(acct).await.unwrap(), Ok(110));
    let st = mgmt(&addr2, json!({"op": "status"})).await.unwrap();
    assert_eq!(st["restored_from"], id(2), "{st}");
    // The branch's first checkpoint (5, parent 2) is written with the restore.
    assert_eq!(st["last_checkpoint"]["id"], id(5), "{st}");
    let ls = node.admin(&["ls"]);
    let row = ls["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["uuid"] == uuid.as_str())
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(row["last_checkpoint"]["id"], id(5), "{ls}");
    assert_eq!(row["restored_from"], id(2), "{ls}");
    bank2.deposit(acct, 1).await.unwrap().unwrap();
    assert_eq!(checkpoint(&addr2).await, id(6));
    for n in 1..=4 {
        assert_eq!(
            std::fs::read(node.store_file(&uuid, &id(n))).unwrap(),
            before[n as usize - 1],
            "checkpoint {n} of the abandoned timeline was rewritten"
        );
    }
    // A crash (no final checkpoint), then `latest`: the tip of the running branch.
    Agent::new(&node.addr, TOKEN.into())
        .unwrap()
        .signal(pid2, "KILL")
        .await
        .unwrap();
    let (_, addr3, _) = node
        .bank(&["--uuid", &uuid, "--restore", "latest"], json!({}))
        .await;
    assert_eq!(bank_at(&addr3).balance(acct).await.unwrap(), Ok(111));

    let tree = node.admin(&["checkpoints", &uuid]);
    let parent = |n: u64| -> Value {
        tree["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id(n))
            .unwrap_or_else(|| panic!("no {n} in {tree}"))["parent"]
            .clone()
    };
    assert_eq!(parent(1), Value::Null, "{tree}");
    for (child, p) in [(2, 1), (3, 2), (4, 3), (5, 2), (6, 5)] {
        assert_eq!(parent(child), id(p), "parent of {child}: {tree}");
    }
    assert_eq!(tree["latest"], id(6), "{tree}");
    assert_eq!(tree["head"], id(6), "{tree}");
    let two = tree["checkpoints"][1]["children"].clone();
    assert_eq!(two, json!([id(3), id(5)]), "{tree}");
    // As text: each checkpoint under its parent.
    let out = Command::new(bank_bin())
        .args(["admin", "--agent", &node.addr, "--token-file"])
        .arg(&node.token_file)
        .args(["checkpoints", &uuid])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().skip(1).collect();
    let depth = |n: u64| {
        let l = lines
            .iter()
            .find(|l| l.trim_start().starts_with(&id(n)))
            .unwrap_or_else(|| panic!("no {n} in {text}"));
        (l.len() - l.trim_start().len()) / 2
    };
    let depths: Vec<usize> = (1..=6).map(depth).collect();
    assert_eq!(depths, [0, 1, 2, 3, 2, 3], "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&id(6)) && l.contains("latest") && l.contains("running instance")),
        "{text}"
    );
}

/// `--restore latest` with a damaged newest checkpoint restores the one before it,
/// saying so, and prints GODWIT_READY only once the state is back; with nothing
/// usable it never prints it. Logs to a file carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_the_restore_and_a_damaged_latest_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("dir:{}", dir.path().join("store").display());
    let serve = |extra: &[&str], log: &Path| {
        let mut cmd = Command::new(bank_bin());
        cmd.args(["serve", "--store", &store])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .process_group(0);
        Proc(cmd.spawn().unwrap())
    };
    let first_line = |p: &mut Proc| {
        let mut line = String::new();
        BufReader::new(p.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let log = dir.path().join("log1");
    let mut p = serve(&[], &log);
    let line = first_line(&mut p);
    let mut parts = line.split_whitespace().skip(1);
    let (addr, uuid) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let bank = bank_at(&addr);
    let acct = bank.open("bo".into(), 100).await.unwrap().unwrap();
    assert_eq!(checkpoint(&addr).await, id(1));
    bank.deposit(acct, 5).await.unwrap().unwrap();
    assert_eq!(checkpoint(&addr).await, id(2));
    bank.deposit(acct, 5).await.unwrap().unwrap();
    assert_eq!(checkpoint(&addr).await, id(3));
    mgmt(&addr, json!({"op": "stop", "checkpoint": false}))
        .await
        .unwrap();
    assert!(p.0.wait().unwrap().success());
    let files = dir.path().join("store").join(&uuid);
    let damage = |n: u64| {
        let f = files.join(format!("{}.gwck", id(n)));
        let mut b = std::fs::read(&f).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x5a;
        std::fs::write(&f, b).unwrap();
    };
    damage(3);

    let log = dir.path().join("log2");
    let mut p = serve(&["--uuid", &uuid, "--restore", "latest"], &log);
    let line = first_line(&mut p);
    assert!(line.starts_with("GODWIT_READY "), "{line}");
    let addr = line.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(bank_at(&addr).balance(acct).await.unwrap(), Ok(105));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("checkpoint {} of {uuid} is damaged", id(3)))
            && text.contains(&format!("restoring {}, the one before it", id(2))),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text}"
    );
    mgmt(&addr, json!({"op": "stop", "checkpoint": false}))
        .await
        .unwrap();
    assert!(p.0.wait().unwrap().success());

    // Nothing usable: no GODWIT_READY, a failure exit naming the problem.
    for entry in std::fs::read_dir(&files).unwrap().flatten() {
        let n: u64 = entry
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".gwck")
            .parse()
            .unwrap();
        if n != 3 {
            damage(n);
        }
    }
    let log = dir.path().join("log3");
    let mut p = serve(&["--uuid", &uuid, "--restore", "latest"], &log);
    let line = first_line(&mut p);
    assert_eq!(line, "", "ready without a state");
    assert!(!p.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("checkpoint corrupted"), "{text}");
}

/// `--keep 3` keeps the three newest; periodic checkpoints of an unchanged state are
/// skipped; intervals out of bounds are refused with the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_skipped_periodic_checkpoints_and_interval_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut cmd = Command::new(bank_bin());
    cmd.args(["serve", "--keep", "3", "--interval", "0.1", "--store"])
        .arg(format!("dir:{}", store.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut p = Proc(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(p.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut parts = line.split_whitespace().skip(1);
    let (addr, uuid) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(store.join(&uuid))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    // A fresh state gets one periodic checkpoint, then none while nothing changes.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(files(), [format!("{}.gwck", id(1))]);
    let bank = bank_at(&addr);
    for _ in 0..6 {
        bank.open("c".into(), 1).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = mgmt(&addr, json!({"op": "status"})).await.unwrap();
    let last = st["last_checkpoint"]["id"].as_str().unwrap().to_string();
    let kept = files();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(kept.last().unwrap(), &format!("{last}.gwck"), "{kept:?}");
    assert!(last.parse::<u64>().unwrap() >= 4, "{st}");

    for bad in [1e-9, 99999999999.0] {
        let e = mgmt(&addr, json!({"op": "interval", "secs": bad}))
            .await
            .unwrap_err();
        assert!(
            e.contains("out of bounds: give 0 (periodic checkpoints off) or between 0.1 s and 2592000 s (30 days)"),
            "{bad}: {e}"
        );
    }
    let out = Command::new(bank_bin())
        .args(["serve", "--interval", "1e-9", "--store"])
        .arg(format!("dir:{}", store.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("between 0.1 s and 2592000 s"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("GODWIT_READY"));
}

/// godwitd stopping (SIGTERM) gives every service it started a final checkpoint in
/// its store; the programs' logs it keeps have no colour codes; `bank load` on a bank
/// that already has accounts (a second load) reports no false failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_godwitd_flushes_every_service_and_load_runs_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let env = json!({"RUST_LOG": "info"});
    let (_, addr1, uuid1) = node.bank(&[], env.clone()).await;
    let (_, addr2, uuid2) = node.bank(&[], env).await;
    for round in 0..2 {
        let out = Command::new(bank_bin())
            .args([
                "load",
                "--uuid",
                &uuid1,
                "--names",
                &node.url(),
                "--token-file",
            ])
            .arg(&node.token_file)
            .args(["--accounts", "3", "--clients", "2", "--duration-secs", "1"])
            .args(["--accrual-every-ms", "200", "--accrual-pause-ms", "1"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "load round {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bank_at(&addr2).open("x".into(), 7).await.unwrap().unwrap();
    let _ = (addr1, addr2);

    // SAFETY: kill(2) on the positive pid of the godwitd this test started.
    unsafe {
        libc::kill(node.proc.0.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    loop {
        if let Some(code) = node.proc.0.try_wait().unwrap() {
            assert!(code.success(), "godwitd exit: {code:?}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(45),
            "godwitd did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for uuid in [&uuid1, &uuid2] {
        let n = std::fs::read_dir(node.data.join("store").join(uuid))
            .map(|rd| rd.flatten().count())
            .unwrap_or(0);
        assert_eq!(n, 1, "service {uuid}: one final checkpoint");
    }
    let mut seen_stop = false;
    for entry in std::fs::read_dir(node.data.join("logs")).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in {entry:?}: {text}"
        );
        seen_stop |= text.contains("SIGTERM");
    }
    assert!(seen_stop, "the services logged their stop");
}

/// The whole life of a service from the command line, no management frames:
/// start (prints the UUID), freeze (calls wait) and thaw (they complete), stop (final
/// checkpoint, name withdrawn), restore (latest, then an older checkpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let bank_path = bank_bin().display().to_string();
    let started = node.admin(&["start", "--interval", "60", "--", &bank_path, "serve"]);
    let uuid = started["uuid"].as_str().unwrap().to_string();
    let names = godwit_sdk::Names::from_url(&node.url(), Some(TOKEN.into())).unwrap();
    let by_uuid = || {
        BankClient::new(Client::by_uuid(
            &uuid,
            names.clone(),
            ClientOptions {
                deadline: Duration::from_secs(30),
                ..Default::default()
            },
        ))
    };
    let acct = by_uuid().open("cy".into(), 100).await.unwrap().unwrap();
    let st = node.admin(&["status", &uuid]);
    assert_eq!(st["interval_secs"], 60.0, "{st}");

    let frozen = node.admin(&["freeze", &uuid]);
    assert_eq!(frozen["checkpoint"]["id"], id(1), "{frozen}");
    let bank = by_uuid();
    let pending = tokio::spawn(async move { bank.deposit(acct, 10).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "a call ran while frozen");
    node.admin(&["thaw", &uuid]);
    assert_eq!(pending.await.unwrap().unwrap(), Ok(110));

    let stopped = node.admin(&["stop", &uuid]);
    assert_eq!(stopped["checkpoint"]["id"], id(2), "{stopped}");
    assert!(
        names.resolve(&uuid).await.unwrap().is_none(),
        "name withdrawn"
    );
    // The process is gone (the agent saw it exit).
    let agent = Agent::new(&node.addr, TOKEN.into()).unwrap();
    let t0 = Instant::now();
    loop {
        let v = agent
            .request("list", "GET", "/v1/exec", None, T)
            .await
            .unwrap();
        let running = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["running"] == true);
        if !running {
            break;
        }
        assert!(t0.elapsed() < T, "the stopped service still runs: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let restored = node.admin(&["restore", &uuid]);
    assert_eq!(restored["restored_from"], id(2), "{restored}");
    assert_eq!(by_uuid().balance(acct).await.unwrap(), Ok(110));
    let e = node.admin_fails(&["restore", &uuid]);
    assert!(e.contains("is running at"), "{e}");
    node.admin(&["stop", &uuid]);
    let older = node.admin(&["restore", &uuid, "--checkpoint", &id(1)]);
    assert_eq!(older["restored_from"], id(1), "{older}");
    assert_eq!(by_uuid().balance(acct).await.unwrap(), Ok(100));
    let st = node.admin(&["status", &uuid]);
    assert_eq!(
        st["interval_secs"], 60.0,
        "the restored instance keeps its options: {st}"
    );
    node.admin(&["stop", &uuid]);
}

/// `start --restart on-failure`: a service that dies without being stopped is started
/// again by the agent from the tip of its branch (fresh when it has no checkpoint yet);
/// `status` shows the restarts; a stopped service stays stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_service_is_started_again_from_its_tip() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let bank_path = bank_bin().display().to_string();
    let names = godwit_sdk::Names::from_url(&node.url(), Some(TOKEN.into())).unwrap();
    let crash = |pid: u64| {
        // SAFETY: kill(2) on the positive pid of a bank this test had started.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    };
    let client = |uuid: &str| {
        BankClient::new(Client::by_uuid(
            uuid,
            names.clone(),
            ClientOptions {
                deadline: Duration::from_secs(30),
                ..Default::default()
            },
        ))
    };

    let started = node.admin(&[
        "start",
        "--restart",
        "on-failure",
        "--",
        &bank_path,
        "serve",
    ]);
    let uuid = started["uuid"].as_str().unwrap().to_string();
    let acct = client(&uuid)
        .open("dee".into(), 100)
        .await
        .unwrap()
        .unwrap();
    node.admin(&["checkpoint", &uuid]);
    // Lost in the crash: written after the last checkpoint.
    client(&uuid).deposit(acct, 5).await.unwrap().unwrap();
    crash(started["pid"].as_u64().unwrap());
    // Clients wait through the restart (1 s backoff) and find the checkpointed state.
    assert_eq!(client(&uuid).balance(acct).await.unwrap(), Ok(100));
    let st = node.admin(&["status", &uuid]);
    assert_eq!(st["agent"]["restarts"], 1, "{st}");
    assert_eq!(st["agent"]["restart"], "on-failure", "{st}");
    assert_eq!(st["restored_from"], id(1), "{st}");
    assert_ne!(st["pid"], started["pid"], "{st}");

    // No checkpoint yet: it comes back fresh under the same UUID.
    let other = node.admin(&[
        "start",
        "--restart",
        "on-failure",
        "--",
        &bank_path,
        "serve",
    ]);
    let uuid2 = other["uuid"].as_str().unwrap().to_string();
    crash(other["pid"].as_u64().unwrap());
    assert_eq!(client(&uuid2).balances().await.unwrap().len(), 0);
    let st = node.admin(&["status", &uuid2]);
    assert_eq!(
        (st["agent"]["restarts"].clone(), st["restored_from"].clone()),
        (json!(1), Value::Null),
        "{st}"
    );

    // Stopped is stopped: exit 0, nothing started again.
    node.admin(&["stop", &uuid]);
    node.admin(&["stop", &uuid2]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v = Agent::new(&node.addr, TOKEN.into())
        .unwrap()
        .request("list", "GET", "/v1/exec", None, T)
        .await
        .unwrap();
    let running: Vec<&Value> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["running"] == true)
        .collect();
    assert!(running.is_empty(), "started again after a stop: {v}");
}

/// `godwit service start` gives the service no operator token: the service gets a
/// management credential of its own from the agent, which hands it only to `operate`
/// tokens; the operator's token itself, no token, or a read-only token cannot manage
/// it; the command line (through the agent) can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_service_gets_no_operator_token_and_is_managed_through_its_agent() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let bank_path = bank_bin().display().to_string();
    let started = node.admin(&["start", "--", &bank_path, "serve"]);
    let uuid = started["uuid"].as_str().unwrap().to_string();
    let addr = started["address"].as_str().unwrap().to_string();
    let pid = started["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(TOKEN),
        "the operator's token reached the service"
    );
    assert!(environ.contains("GODWIT_MANAGE_TOKEN="), "{environ}");

    // Neither the operator's token nor none manages it directly.
    for given in [Some(TOKEN), None] {
        let e = godwit_sdk::mgmt::request(&addr, json!({"op": "freeze"}), given, T)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("unauthorized"), "{given:?}: {e}");
    }
    // A read-only token does not get the credential from the agent.
    let read_only = Agent::new(&node.addr, READ_TOKEN.into()).unwrap();
    let e = read_only
        .request(
            "credential",
            "POST",
            &format!("/v1/services/{uuid}/credential"),
            Some(json!({})),
            T,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("operate"), "{e}");
    let read_file = dir.path().join("read-token");
    private_file(&read_file, READ_TOKEN);
    let out = Command::new(bank_bin())
        .args(["admin", "--agent", &node.addr, "--token-file"])
        .arg(&read_file)
        .args(["stop", &uuid])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a read-only token stopped the service"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("operate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nor does it mint grants.
    let e = read_only
        .request("grant", "POST", "/v1/grants", Some(json!({})), T)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("403"), "{e}");

    // The operator, through the agent: status, checkpoint, stop.
    let st = node.admin(&["status", &uuid]);
    assert_eq!(st["mode"], "serving", "{st}");
    let ck = node.admin(&["checkpoint", &uuid]);
    assert!(ck["checkpoint"]["id"].is_string(), "{ck}");
    let ls = node.admin(&["ls"]);
    assert_eq!(ls["services"][0]["mode"], "serving", "{ls}");
    // A migration on the same node: two instances side by side under one agent, each
    // managed with its own credential.
    let m = node.admin(&["migrate", &uuid, "--to", &node.addr]);
    assert_ne!(m["to"], m["from"], "{m}");
    let st = node.admin(&["status", &uuid]);
    assert_eq!(st["address"], m["to"], "{st}");
    assert_eq!(st["mode"], "serving", "{st}");
    let stopped = node.admin(&["stop", &uuid]);
    assert!(stopped["checkpoint"]["id"].is_string(), "{stopped}");
}

/// `--call-token-file`: a client without the token is refused with a clear error, a
/// client with another token too, a client with it is served; without the option any
/// client is served, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_need_the_call_token_when_the_operator_asks() {
    let dir = tempfile::tempdir().unwrap();
    let call_file = dir.path().join("call-token");
    private_file(&call_file, "bank-call-token-0123456789\n");
    let store = format!("dir:{}", dir.path().join("store").display());
    let serve = |extra: &[&str]| {
        let mut cmd = Command::new(bank_bin());
        cmd.args(["serve", "--store", &store])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        let mut p = Proc(cmd.spawn().unwrap());
        let mut line = String::new();
        BufReader::new(p.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.split_whitespace().nth(1).unwrap().to_string();
        (p, addr)
    };
    let with = |token: Option<&str>, addr: &str| {
        BankClient::new(Client::at(
            addr,
            ClientOptions {
                deadline: Duration::from_secs(15),
                call_token: token.map(str::to_string),
                ..Default::default()
            },
        ))
    };
    let (_p, addr) = serve(&["--call-token-file", call_file.to_str().unwrap()]);
    for (token, why) in [
        (None, "presented none"),
        (Some("another-token-0123456789"), "wrong call token"),
    ] {
        match with(token, &addr).open("eve".into(), 1).await {
            Err(godwit_sdk::CallError::Unauthorized { message, .. }) => {
                assert!(message.contains(why), "{token:?}: {message}")
            }
            other => panic!("{token:?}: not refused: {other:?}"),
        }
    }
    let good = with(Some("bank-call-token-0123456789"), &addr);
    let id = good.open("ann".into(), 10).await.unwrap().unwrap();
    assert_eq!(good.balance(id).await.unwrap().unwrap(), 10);
    // Management is not a service call: its own token rules apply (none here).
    let st = godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), None, T)
        .await
        .unwrap();
    assert_eq!(
        st["call_token_file"].as_str(),
        Some(call_file.to_str().unwrap())
    );

    // Off by default: any client is served.
    let (_q, open_addr) = serve(&[]);
    let anyone = with(None, &open_addr);
    anyone.open("bob".into(), 3).await.unwrap().unwrap();
}

/// The auditor's published report.
async fn audit_of(addr: &str) -> bank::Audit {
    bank_at(addr).audit().await.unwrap()
}

/// Waits until the auditor published more than `rounds` rounds; its report.
async fn audit_beyond(addr: &str, rounds: u64) -> bank::Audit {
    let t0 = Instant::now();
    loop {
        let a = audit_of(addr).await;
        if a.rounds > rounds {
            return a;
        }
        assert!(
            t0.elapsed() < T,
            "the auditor at {addr} stays at {} rounds",
            a.rounds
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill9(pid: u64) {
    let pid = i32::try_from(pid).unwrap();
    assert!(pid > 1);
    // SAFETY: kill(2) on a process this test started (through its agent).
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Thread monitoring, end to end: the bank's auditor worker counts its rounds in its
/// own state. After a kill -9 and a restore of the last checkpoint, and after a
/// migration to another agent, it continues from its count (a worker whose state was
/// not restored would start again at 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_continues_from_its_count_after_restore_and_migration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let node = Node::start(&dir.path().join("a"));
    let other = Node::start(&dir.path().join("b"));
    let bank_path = bank_bin().display().to_string();
    let started = node.admin(&["start", "--", &bank_path, "serve", "--audit-ms", "20"]);
    let uuid = started["uuid"].as_str().unwrap().to_string();
    let addr = started["address"].as_str().unwrap().to_string();
    let pid = started["pid"].as_u64().unwrap();
    let acct = bank_at(&addr)
        .open("ann".into(), 500)
        .await
        .unwrap()
        .unwrap();
    let before = audit_beyond(&addr, 10).await;
    assert_eq!(before.total, 500, "{before:?}");
    let st = node.admin(&["status", &uuid]);
    assert_eq!(st["workers"][0]["name"], "auditor", "{st}");
    // What the auditor published before the checkpoint: at most its count in it.
    let at_checkpoint = audit_of(&addr).await.rounds;
    let ck = node.admin(&["checkpoint", &uuid]);
    assert_eq!(ck["checkpoint"]["workers"], 1, "{ck}");

    // kill -9, then restore the last checkpoint.
    kill9(pid);
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}/status")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false)
    {
        assert!(t0.elapsed() < T, "pid {pid} survives SIGKILL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Restorable once the agent knows it is gone (its name's lease may outlive it).
    let restored = loop {
        let out = Command::new(bank_bin())
            .args(["admin", "--agent", &node.addr, "--token-file"])
            .arg(&node.token_file)
            .args(["--json", "restore", &uuid])
            .output()
            .unwrap();
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        let e = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(e.contains("is running") && t0.elapsed() < T, "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let addr = restored["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{restored}"))
        .to_string();
    // The first report after the restore comes from the restored worker state: one
    // more than at the checkpoint, or more, never a count from 1.
    let first = audit_of(&addr).await.rounds;
    let after = audit_beyond(&addr, first).await;
    assert!(
        after.rounds > at_checkpoint,
        "the auditor restarted its count: {} after the restore, {at_checkpoint} at the checkpoint",
        after.rounds
    );
    assert_eq!(bank_at(&addr).balance(acct).await.unwrap().unwrap(), 500);

    // Migration to another agent: the worker goes with its state.
    let before_move = audit_beyond(&addr, after.rounds + 3).await.rounds;
    let m = node.admin(&["migrate", &uuid, "--to", &other.addr]);
    let new_addr = m["to"]
        .as_str()
        .unwrap_or_else(|| panic!("{m}"))
        .to_string();
    assert_ne!(new_addr, addr);
    let first = audit_of(&new_addr).await.rounds;
    assert!(
        first >= before_move,
        "the auditor lost its count in the migration: {first} after, {before_move} before"
    );
    let moved = audit_beyond(&new_addr, first).await;
    assert!(moved.rounds > before_move, "{moved:?} vs {before_move}");
    assert_eq!(moved.total, 500, "{moved:?}");
    let st = node.admin(&["status", &uuid]);
    assert_eq!(st["address"], new_addr.as_str(), "{st}");
    assert_eq!(st["workers"][0]["name"], "auditor", "{st}");
    node.admin(&["stop", &uuid]);
}

/// A worker that does not reach a safe point within `--worker-wait` fails the
/// checkpoint, named in the error; the bank keeps answering and the worker keeps
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_worker_fails_the_checkpoint_by_name_and_the_bank_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    // Each round: 5 ms at a safe point, then 1.5 s outside any.
    let (_pid, addr, _uuid) = node
        .bank(
            &[
                "--audit-ms",
                "5",
                "--audit-stall-ms",
                "1500",
                "--worker-wait",
                "0.3",
            ],
            json!({}),
        )
        .await;
    let id = bank_at(&addr).open("bo".into(), 7).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    let e = mgmt(&addr, json!({"op": "checkpoint"})).await.unwrap_err();
    let waited = t0.elapsed();
    assert!(
        e.contains("`auditor`") && e.contains("safe point") && e.contains("300ms"),
        "{e}"
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // Still serving, calls answered, writes applied.
    let st = mgmt(&addr, json!({"op": "status"})).await.unwrap();
    assert_eq!(st["mode"], "serving", "{st}");
    assert_eq!(bank_at(&addr).deposit(id, 3).await.unwrap().unwrap(), 10);
    // The worker resumes: its rounds go on.
    let r = audit_of(&addr).await.rounds;
    audit_beyond(&addr, r).await;
    // Stopping needs its final checkpoint: refused the same way, still serving.
    let e = mgmt(&addr, json!({"op": "stop"})).await.unwrap_err();
    assert!(e.contains("`auditor`"), "{e}");
    assert_eq!(bank_at(&addr).balance(id).await.unwrap().unwrap(), 10);
}

/// A bank run as a plain process with `--store dir:` and a fixed UUID; killed with
/// SIGKILL on drop.
fn serve_plain(store: &str, uuid: &str, extra: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(bank_bin());
    cmd.args(["serve", "--store", store, "--uuid", uuid])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut p = Proc(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(p.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("bank said `{line}`"))
        .to_string();
    (p, addr)
}

/// Deposits 1 cent `n` times, each acknowledged.
async fn deposits(addr: &str, id: u64, n: u64) {
    let b = bank_at(addr);
    for _ in 0..n {
        b.deposit(id, 1).await.unwrap().unwrap();
    }
}

/// Durable calls: 50 acknowledged deposits after the last checkpoint, kill -9, restart
/// with `--resume`: all 50 are there, once each. Then a checkpoint (which cuts the log),
/// 20 more, kill -9 again: 70, not 120 (the first 50 are not applied twice). Group
/// commit the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_survive_kill_9_exactly_once() {
    for sync in ["each", "group"] {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("dir:{}", dir.path().join("store").display());
        let log = dir.path().join("log");
        let log_s = log.to_str().unwrap();
        let uuid = uuid_for_test();
        let opts = ["--durable-log", log_s, "--durable-sync", sync];
        let (p, addr) = serve_plain(&store, &uuid, &opts);
        let id = bank_at(&addr)
            .open("di".into(), 1000)
            .await
            .unwrap()
            .unwrap();
        checkpoint(&addr).await;
        deposits(&addr, id, 50).await;
        drop(p); // SIGKILL
        let mut resume: Vec<&str> = opts.to_vec();
        resume.push("--resume");
        let (p, addr) = serve_plain(&store, &uuid, &resume);
        assert_eq!(
            bank_at(&addr).balance(id).await.unwrap().unwrap(),
            1050,
            "{sync}"
        );
        let st = mgmt(&addr, json!({"op": "status"})).await.unwrap();
        assert_eq!(st["durable"]["replayed_at_start"], 50, "{sync}: {st}");
        let ck = checkpoint(&addr).await;
        deposits(&addr, id, 20).await;
        drop(p);
        let (_p, addr) = serve_plain(&store, &uuid, &resume);
        assert_eq!(
            bank_at(&addr).balance(id).await.unwrap().unwrap(),
            1070,
            "{sync}: after checkpoint {ck}"
        );
        let st = mgmt(&addr, json!({"op": "status"})).await.unwrap();
        assert_eq!(st["durable"]["replayed_at_start"], 20, "{sync}: {st}");
    }
}

/// Without durable calls the docs' stated loss is real: the writes acknowledged since
/// the last checkpoint are gone after a kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_durable_calls_writes_since_the_last_checkpoint_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("dir:{}", dir.path().join("store").display());
    let uuid = uuid_for_test();
    let (p, addr) = serve_plain(&store, &uuid, &[]);
    let id = bank_at(&addr)
        .open("nd".into(), 1000)
        .await
        .unwrap()
        .unwrap();
    checkpoint(&addr).await;
    deposits(&addr, id, 50).await;
    drop(p);
    let (_p, addr) = serve_plain(&store, &uuid, &["--resume"]);
    assert_eq!(bank_at(&addr).balance(id).await.unwrap().unwrap(), 1000);
}

fn uuid_for_test() -> String {
    // A fresh v4-shaped UUID from the clock and pid (no extra dependency).
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let x = n ^ (u128::from(std::process::id()) << 64);
    let h = format!("{x:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

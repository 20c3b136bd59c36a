//! End to end: two nodes (network namespaces joined by veth, or two loopback addresses
//! when namespaces cannot be made), a godwitd on each, the bank started on node 1 through
//! godwitd, concurrent load clients, and repeated migrations between the nodes with
//! `bank admin migrate` (the `godwit service migrate` code), several of them in the
//! middle of an interest accrual. The load client then checks that every balance is
//! exactly what the acknowledged calls imply. Finally a Python script decodes a
//! checkpoint without Rust and must agree with the service's balances.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bank::BankClient;
use godwit_agent_client::Agent;
use godwit_sdk::{Client, ClientOptions, Names};
use serde_json::{json, Value};

mod common;
use common::{bank_bin, godwitd_bin, Proc};

const TOKEN: &str = "bank-test-token-42";

/// The migration test measures timing (migrations in the middle of an accrual): the
/// other heavy test waits for it rather than competing for the two cores.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const PORT: u16 = 7171;

/// The simulated cluster; tears the namespaces down on drop.
struct Cluster {
    name: Option<String>,
    addrs: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh");
        let name = format!("b{}", std::process::id() % 100_000);
        let prefix = format!("10.213.{}", std::process::id() % 250);
        let up = Command::new(&script)
            .args(["up", &name, "2", &prefix])
            .stderr(Stdio::piped())
            .output();
        match up {
            Ok(o) if o.status.success() => {
                eprintln!(
                    "cluster: network namespaces gw-{name}-n1/n2 at {prefix}.1 and {prefix}.2"
                );
                Cluster {
                    name: Some(name),
                    addrs: vec![format!("{prefix}.1"), format!("{prefix}.2")],
                }
            }
            other => {
                let _ = Command::new(&script).args(["down", &name]).status();
                eprintln!(
                    "cluster: network namespaces unavailable ({:?}); falling back to 127.0.0.1 and 127.0.0.2",
                    other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                );
                Cluster {
                    name: None,
                    addrs: vec!["127.0.0.1".into(), "127.0.0.2".into()],
                }
            }
        }
    }

    /// A command that runs on node `i` (0-based).
    fn command(&self, i: usize, program: &Path) -> Command {
        match &self.name {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &format!("gw-{name}-n{}", i + 1)])
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh");
            let _ = Command::new(script).args(["down", name]).status();
        }
    }
}

fn start_godwitd(cluster: &Cluster, i: usize, dir: &Path, token_file: &Path) -> Proc {
    let listen = format!("{}:{PORT}", cluster.addrs[i]);
    let mut cmd = cluster.command(i, &godwitd_bin());
    cmd.args(["--listen", &listen, "--data"])
        .arg(dir.join(format!("node{}", i + 1)))
        .arg("--token-file")
        .arg(token_file)
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
    assert!(line.starts_with("GODWITD_READY"), "godwitd said `{line}`");
    Proc(child)
}

async fn wait_mid_accrual(names: &Names, uuid: &str, operator: &Agent) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    // The instance's management credential, from its agent (once per address).
    let mut cred: Option<(String, String)> = None;
    while Instant::now() < deadline {
        if let Ok(Some(addr)) = names.resolve(uuid).await {
            if cred.as_ref().map(|c| &c.0) != Some(&addr) {
                cred = godwit_agent_client::management_credential(operator.client(), &addr, uuid)
                    .await
                    .ok()
                    .map(|c| (addr.clone(), c));
            }
            let token = cred.as_ref().map(|c| c.1.as_str());
            if let Ok(st) = godwit_sdk::mgmt::request(
                &addr,
                json!({"op": "status"}),
                token,
                Duration::from_secs(5),
            )
            .await
            {
                let mid = st["calls_in_flight"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["method"] == "accrue_interest"
                            && c["migration_points_passed"].as_u64().unwrap_or(0) >= 2
                    });
                if mid {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn admin(agent: &str, token_file: &Path, args: &[&str]) -> Value {
    let out = Command::new(bank_bin())
        .args(["admin", "--agent", agent, "--token-file"])
        .arg(token_file)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammered_bank_migrates_back_and_forth_without_losing_a_cent() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cluster = Cluster::new();
    let _d1 = start_godwitd(&cluster, 0, dir.path(), &token_file);
    let _d2 = start_godwitd(&cluster, 1, dir.path(), &token_file);
    let nodes: Vec<String> = cluster
        .addrs
        .iter()
        .map(|a| format!("{a}:{PORT}"))
        .collect();
    let names_url = format!("agent://{}", nodes[0]);
    let names = Names::from_url(&names_url, Some(TOKEN.into())).unwrap();
    let node1 = Agent::new(&nodes[0], TOKEN.into()).unwrap();

    // Start the bank on node 1 through its godwitd; checkpoints go to node 1's store.
    let args: Vec<String> = [
        "serve",
        "--listen",
        &format!("{}:0", cluster.addrs[0]),
        "--names",
        &names_url,
        "--store",
        &format!("agent://{}", nodes[0]),
        "--lease",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = node1
        .exec(
            bank_bin().to_str().unwrap(),
            &args,
            json!({"GODWIT_TOKEN": TOKEN}),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let uuid = started["ready"]["uuid"].as_str().unwrap().to_string();

    // Load: 4 transfer clients and a stream of interest accruals, for 9 seconds.
    let mut load = Command::new(bank_bin());
    load.args([
        "load",
        "--uuid",
        &uuid,
        "--names",
        &names_url,
        "--token-file",
    ])
    .arg(&token_file)
    .args(["--accounts", "6", "--clients", "4", "--duration-secs", "9"])
    .args([
        "--accrual-every-ms",
        "150",
        "--accrual-pause-ms",
        "60",
        "--rate-bp",
        "50",
    ])
    .stdout(Stdio::piped())
    .process_group(0);
    let mut load = Proc(load.spawn().unwrap());
    let mut out = BufReader::new(load.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("LOAD_READY"), "load said `{line}`");

    // Migrate 4 times, alternating nodes, each time in the middle of an accrual.
    let mut mid_accrual = 0;
    let mut carried_ops = 0;
    let mut last_checkpoint = Value::Null;
    for round in 0..4 {
        let to = &nodes[(round + 1) % 2];
        if wait_mid_accrual(&names, &uuid, &node1).await {
            mid_accrual += 1;
        }
        let m = admin(&nodes[0], &token_file, &["migrate", &uuid, "--to", to]);
        carried_ops += m["ops_in_flight"].as_u64().unwrap();
        last_checkpoint = m["checkpoint"].clone();
        let host = cluster.addrs[(round + 1) % 2].as_str();
        assert!(
            m["to"].as_str().unwrap().starts_with(&format!("{host}:")),
            "{m}"
        );
        eprintln!("migration {round}: {m}");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        mid_accrual >= 3,
        "only {mid_accrual} migrations happened mid-accrual"
    );
    assert!(
        carried_ops >= 3,
        "only {carried_ops} accruals were carried over at a migration point"
    );

    // The load client's verdict.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status_code = load.0.wait().unwrap();
    let report: Value = serde_json::from_str(rest.trim().lines().last().unwrap_or("{}")).unwrap();
    eprintln!("load report: {report}");
    assert!(status_code.success(), "load check failed: {report}");
    assert_eq!(report["ok"], true);
    assert!(
        report["transfers_acked"].as_u64().unwrap() > 100,
        "{report}"
    );
    assert!(report["accruals"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["total_expected"], report["total_actual"]);

    // The service ended on node 1 (4 moves), listed by `ls`, old instances gone.
    let addr = names.resolve(&uuid).await.unwrap().unwrap();
    assert!(
        addr.starts_with(&format!("{}:", cluster.addrs[0])),
        "{addr}"
    );
    let ls = admin(&nodes[0], &token_file, &["ls"]);
    let services = ls["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{ls}");
    assert_eq!(services[0]["mode"], "serving");
    // After a migration `ls` shows the checkpoint the instance came from.
    assert_eq!(
        services[0]["last_checkpoint"]["id"], last_checkpoint,
        "{ls}"
    );
    assert_eq!(services[0]["restored_from"], last_checkpoint, "{ls}");
    // The migrated instance got a grant of node 1 and a management credential of its
    // own, never the operator's token.
    let pid = services[0]["pid"].as_u64().unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(TOKEN),
        "the operator's token reached the migrated service"
    );
    assert!(environ.contains("GODWIT_MANAGE_TOKEN="));
    let procs: Value = node1_procs(&nodes[0]).await;
    let running = procs["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["running"] == true)
        .count();
    assert_eq!(
        running, 1,
        "exactly one bank instance left on node 1: {procs}"
    );

    // Periodic checkpoints can be switched on at run time.
    let iv = admin(&nodes[0], &token_file, &["interval", &uuid, "0.2"]);
    assert_eq!(iv["interval_secs"], 0.2);

    // A checkpoint decoded by Python agrees with the service.
    let ck = admin(&nodes[0], &token_file, &["checkpoint", &uuid]);
    let id = ck["checkpoint"]["id"].as_str().unwrap().to_string();
    let file = dir.path().join(format!("node1/store/{uuid}/{id}.gwck"));
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sdk/decode_checkpoint.py"))
        .arg(&file)
        .output()
        .expect("python3 is needed for the decoder test");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let decoded: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(decoded["header"]["uuid"], uuid.as_str());
    let bank = BankClient::new(Client::by_uuid(
        &uuid,
        names.clone(),
        ClientOptions::default(),
    ));
    let balances = bank.balances().await.unwrap();
    let accounts = &decoded["checkpoint"]["state"]["accounts"];
    assert_eq!(accounts.as_object().unwrap().len(), balances.len());
    for (id, bal) in &balances {
        assert_eq!(
            accounts[id.to_string()]["balance"],
            *bal,
            "account {id}: {accounts}"
        );
    }
    // The migrated instance is managed with its own credential, from its agent.
    let st = godwit_agent_client::manage(
        node1.client(),
        &addr,
        &uuid,
        json!({"op": "status"}),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(st["last_checkpoint"]["seq"].as_u64().unwrap() >= 5, "{st}");
}

async fn node1_procs(node: &str) -> Value {
    Agent::new(node, TOKEN.into())
        .unwrap()
        .request("list", "GET", "/v1/exec", None, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_flushes_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut cmd = Command::new(bank_bin());
    // A standalone service with a directory store and no name service of its own
    // process: it prints its address, we talk to it directly.
    cmd.args(["serve", "--store"])
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
    let bank = BankClient::new(Client::at(&addr, ClientOptions::default()));
    let id = bank.open("x".into(), 123).await.unwrap().unwrap();
    // SAFETY: kill(2) on the positive pid of the child we spawned.
    unsafe {
        libc::kill(p.0.id() as i32, libc::SIGTERM);
    }
    let code = p.0.wait().unwrap();
    assert!(code.success(), "exit after SIGTERM: {code:?}");
    let files: Vec<_> = std::fs::read_dir(store.join(&uuid))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(files.len(), 1, "one final checkpoint");
    // Restore it in a new process and find the account.
    let mut cmd = Command::new(bank_bin());
    cmd.args(["serve", "--uuid", &uuid, "--restore", "latest", "--store"])
        .arg(format!("dir:{}", store.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut p2 = Proc(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(p2.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr2 = line.split_whitespace().nth(1).unwrap().to_string();
    let bank2 = BankClient::new(Client::at(&addr2, ClientOptions::default()));
    assert_eq!(bank2.balance(id).await.unwrap(), Ok(123));
}

/// A service started by godwitd without any token of its own registers its name and
/// stores its checkpoints with the narrow token the agent gave it (GODWIT_AGENT_TOKEN);
/// the agent's token never reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_by_the_agent_uses_its_per_program_token() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = private_token(dir.path());
    let (_d, node) = loopback_agent(
        &dir.path().join("node"),
        &token_file,
        &["--allow-exec".as_ref(), bank_bin().as_os_str()],
    );
    let agent = Agent::new(&node, TOKEN.into()).unwrap();
    let url = format!("agent://{node}");
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--names",
        &url,
        "--store",
        &url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = agent
        .exec(
            bank_bin().to_str().unwrap(),
            &args,
            json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let pid = started["pid"].as_u64().unwrap();
    let uuid = started["ready"]["uuid"].as_str().unwrap().to_string();
    let addr = started["ready"]["address"].as_str().unwrap().to_string();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(TOKEN),
        "the agent's token reached the service"
    );
    assert!(environ.contains("GODWIT_AGENT_TOKEN="));
    let names = Names::from_url(&url, Some(TOKEN.into())).unwrap();
    let mut bound = None;
    for _ in 0..50 {
        bound = names.resolve(&uuid).await.unwrap();
        if bound.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        bound.as_deref(),
        Some(addr.as_str()),
        "the service registered"
    );
    // Its management interface needs the credential the agent made for it (the agent
    // gives it to operate tokens): neither no token nor the agent's token will do.
    for given in [None, Some(TOKEN)] {
        let e = godwit_sdk::mgmt::request(
            &addr,
            json!({"op": "checkpoint"}),
            given,
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("unauthorized"), "{given:?}: {e}");
    }
    assert!(environ.contains("GODWIT_MANAGE_TOKEN="));
    let ck = godwit_agent_client::manage(
        agent.client(),
        &addr,
        &uuid,
        json!({"op": "checkpoint"}),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let id = ck["checkpoint"]["id"].as_str().unwrap();
    assert!(
        dir.path()
            .join(format!("node/store/{uuid}/{id}.gwck"))
            .is_file(),
        "the checkpoint went to the agent's store: {ck}"
    );
}

/// Starts a godwitd on loopback with `extra` options (and the operator's
/// token in its environment, which no program it starts may see); returns
/// it and its address.
fn loopback_agent(data: &Path, token_file: &Path, extra: &[&std::ffi::OsStr]) -> (Proc, String) {
    let mut cmd = Command::new(godwitd_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--token-file")
        .arg(token_file)
        .args(extra)
        .env("GODWIT_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut d = Proc(cmd.spawn().expect("start godwitd"));
    let mut line = String::new();
    BufReader::new(d.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let node = line
        .trim()
        .strip_prefix("GODWITD_READY ")
        .unwrap_or_else(|| panic!("godwitd said `{line}`"))
        .to_string();
    (d, node)
}

/// The operator's token in `dir/token`, mode 0600.
fn private_token(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    token_file
}

/// `bin serve` started through `agent`, with `url` as its name service and
/// store; the agent's answer (`ready.uuid`, `ready.address`, `pid`).
async fn serve_bank(agent: &Agent, bin: &Path, url: &str) -> Value {
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--names",
        url,
        "--store",
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    agent
        .exec(
            bin.to_str().unwrap(),
            &args,
            json!({}),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
}

/// A service moves to a node that keeps its program at another path: the
/// source ran it from a/bank (removed since, as after an upgrade there),
/// the destination has it as b/bank (`godwitd --program bank=b/bank`) and
/// starts that copy, which takes over with the service's state.
#[tokio::test]
async fn a_service_moves_to_a_node_that_keeps_its_program_elsewhere() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = private_token(dir.path());
    for d in ["a", "b"] {
        std::fs::create_dir(dir.path().join(d)).unwrap();
        std::fs::copy(bank_bin(), dir.path().join(d).join("bank")).unwrap();
    }
    let (a_bin, b_bin) = (dir.path().join("a/bank"), dir.path().join("b/bank"));
    let (_a, node_a) = loopback_agent(
        &dir.path().join("node-a"),
        &token_file,
        &["--allow-exec".as_ref(), a_bin.as_os_str()],
    );
    let registered = format!("bank={}", b_bin.display());
    let (_b, node_b) = loopback_agent(
        &dir.path().join("node-b"),
        &token_file,
        &["--program".as_ref(), registered.as_ref()],
    );
    let (agent_a, agent_b) = (
        Agent::new(&node_a, TOKEN.into()).unwrap(),
        Agent::new(&node_b, TOKEN.into()).unwrap(),
    );
    let url = format!("agent://{node_a}");
    let started = serve_bank(&agent_a, &a_bin, &url).await;
    let uuid = started["ready"]["uuid"].as_str().unwrap().to_string();
    let addr = started["ready"]["address"].as_str().unwrap().to_string();
    let names = Names::from_url(&url, Some(TOKEN.into())).unwrap();
    let bank = BankClient::new(Client::by_uuid(
        &uuid,
        names.clone(),
        ClientOptions::default(),
    ));
    let id = bank.open("alice".into(), 125).await.unwrap().unwrap();
    // The program is gone from where the source ran it.
    std::fs::remove_file(&a_bin).unwrap();
    let m = godwit_agent_client::migrate(&names, &agent_b, &uuid)
        .await
        .unwrap();
    assert_ne!(m.to, addr);
    let listed: Value = agent_b
        .request("list", "GET", "/v1/exec", None, Duration::from_secs(10))
        .await
        .unwrap();
    let p = listed["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["running"] == true)
        .unwrap_or_else(|| panic!("no instance on the destination: {listed}"))
        .clone();
    let pid = p["pid"].as_u64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, std::fs::canonicalize(&b_bin).unwrap());
    assert_eq!(bank.balance(id).await.unwrap(), Ok(125));
}

/// A receiver standing in for a new instance that dies mid-stream: it proves
/// `secret`, takes `keep` bytes of the checkpoint, then hangs up.
async fn dying_receiver(keep: usize, secret: &'static str) -> String {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (mut s, _) = godwit_sdk::handoff::accept_sender(&l, secret, deadline)
            .await
            .unwrap();
        let mut got = vec![0u8; keep];
        let _ = s.read_exact(&mut got).await;
    });
    addr
}

/// `migrate` streams the state straight to the new instance (real processes, two
/// godwitd): the moved bank has every balance, and the store then holds the
/// handed-off checkpoint, its parent the last checkpoint taken before the move; the
/// next checkpoint descends from it. Then a hand-off whose receiver dies mid-stream:
/// the freeze fails saying how far it got, and the bank thaws and serves on.
#[tokio::test]
async fn a_migration_streams_the_state_and_the_store_keeps_it_with_its_parent() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = private_token(dir.path());
    let bin = bank_bin();
    let (_a, node_a) = loopback_agent(
        &dir.path().join("node-a"),
        &token_file,
        &["--allow-exec".as_ref(), bin.as_os_str()],
    );
    let (_b, node_b) = loopback_agent(
        &dir.path().join("node-b"),
        &token_file,
        &["--allow-exec".as_ref(), bin.as_os_str()],
    );
    let (agent_a, agent_b) = (
        Agent::new(&node_a, TOKEN.into()).unwrap(),
        Agent::new(&node_b, TOKEN.into()).unwrap(),
    );
    let url = format!("agent://{node_a}");
    let started = serve_bank(&agent_a, &bin, &url).await;
    let uuid = started["ready"]["uuid"].as_str().unwrap().to_string();
    let names = Names::from_url(&url, Some(TOKEN.into())).unwrap();
    let store = godwit_sdk::Store::from_url(&url, Some(TOKEN.into())).unwrap();
    let bank = BankClient::new(Client::by_uuid(
        &uuid,
        names.clone(),
        ClientOptions::default(),
    ));
    let alice = bank.open("alice".into(), 125).await.unwrap().unwrap();
    let bob = bank.open("bob".into(), 10).await.unwrap().unwrap();
    let ck = godwit_agent_client::manage_named(
        &names,
        agent_a.client(),
        &uuid,
        json!({ "op": "checkpoint" }),
    )
    .await
    .unwrap();
    let before = ck["checkpoint"]["id"].as_str().unwrap().to_string();
    bank.transfer(alice, bob, 25).await.unwrap().unwrap();

    let m = godwit_agent_client::migrate(&names, &agent_b, &uuid)
        .await
        .unwrap();
    assert!(
        m.streamed,
        "the state went through the store: {:?}",
        m.to_json()
    );
    assert_ne!(m.checkpoint, before);
    assert_eq!(bank.balance(alice).await.unwrap(), Ok(100));
    assert_eq!(bank.balance(bob).await.unwrap(), Ok(35));
    // The store copy follows the switch-over.
    let mut listed = Vec::new();
    for _ in 0..300 {
        listed = store.list(&uuid).await.unwrap();
        if listed.iter().any(|c| c.id == m.checkpoint) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = listed
        .iter()
        .find(|c| c.id == m.checkpoint)
        .unwrap_or_else(|| panic!("{} not in the store: {listed:?}", m.checkpoint));
    assert_eq!(copy.parent.as_deref(), Some(before.as_str()));
    assert_eq!(
        listed.last().unwrap().id,
        m.checkpoint,
        "latest is the handed-off one"
    );
    let ck = godwit_agent_client::manage_named(
        &names,
        agent_b.client(),
        &uuid,
        json!({ "op": "checkpoint" }),
    )
    .await
    .unwrap();
    let next = ck["checkpoint"]["id"].as_str().unwrap().to_string();
    let listed = store.list(&uuid).await.unwrap();
    let next = listed.iter().find(|c| c.id == next).unwrap();
    assert_eq!(next.parent.as_deref(), Some(m.checkpoint.as_str()));

    // The receiver dies after 64 bytes of the checkpoint: the bank thaws.
    let addr = godwit_agent_client::resolve(&names, &uuid).await.unwrap();
    let cred = godwit_agent_client::management_credential(agent_b.client(), &addr, &uuid)
        .await
        .unwrap();
    let to = dying_receiver(64, "a-per-migration-secret-0123").await;
    let e = godwit_sdk::mgmt::request(
        &addr,
        json!({ "op": "freeze", "stream_to": to, "secret": "a-per-migration-secret-0123" }),
        Some(&cred),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains(&format!("stream to {to} cut after")), "{e}");
    assert!(e.contains("thawed: this instance serves on"), "{e}");
    bank.transfer(bob, alice, 5).await.unwrap().unwrap();
    assert_eq!(bank.balance(alice).await.unwrap(), Ok(105));
    assert_eq!(
        godwit_agent_client::resolve(&names, &uuid).await.unwrap(),
        addr
    );
    let stored = store.list(&uuid).await.unwrap();
    assert_eq!(
        stored.last().unwrap().id,
        next.id,
        "nothing stored by the failed hand-off"
    );
}

/// `POST /v1/services/{uuid}/migrate` on the agent that started the bank: it
/// moves the service to a peer with its own token (as `godwit service
/// migrate` would), answers where it runs now and the pause; the client
/// rebinds and every balance came along. A destination that does not answer
/// is refused, saying so, with the service still serving where it was.
#[tokio::test]
async fn a_service_migrates_through_the_agents_api() {
    let _heavy = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = private_token(dir.path());
    let bin = bank_bin();
    let allow = ["--allow-exec".as_ref(), bin.as_os_str()];
    let (_a, node_a) = loopback_agent(&dir.path().join("node-a"), &token_file, &allow);
    let (_b, node_b) = loopback_agent(&dir.path().join("node-b"), &token_file, &allow);
    let (agent_a, agent_b) = (
        Agent::new(&node_a, TOKEN.into()).unwrap(),
        Agent::new(&node_b, TOKEN.into()).unwrap(),
    );
    let url = format!("agent://{node_a}");
    let started = serve_bank(&agent_a, &bin, &url).await;
    let uuid = started["ready"]["uuid"].as_str().unwrap().to_string();
    let addr = started["ready"]["address"].as_str().unwrap().to_string();
    let old_pid = started["pid"].as_u64().unwrap();
    let names = Names::from_url(&url, Some(TOKEN.into())).unwrap();
    let bank = BankClient::new(Client::by_uuid(
        &uuid,
        names.clone(),
        ClientOptions::default(),
    ));
    let alice = bank.open("alice".into(), 125).await.unwrap().unwrap();
    let bob = bank.open("bob".into(), 40).await.unwrap().unwrap();
    bank.transfer(alice, bob, 25).await.unwrap().unwrap();
    let path = format!("/v1/services/{uuid}/migrate");

    // Nobody at the destination: refused, the service serving where it was.
    let refused = agent_a
        .request(
            "migrate",
            "POST",
            &path,
            Some(json!({ "to": "127.0.0.1:1" })),
            Duration::from_secs(120),
        )
        .await
        .expect_err("a migration to nobody succeeded");
    let msg = refused.to_string();
    assert!(
        msg.contains("HTTP 502") && msg.contains("127.0.0.1:1"),
        "{msg}"
    );
    assert_eq!(names.resolve(&uuid).await.unwrap(), Some(addr.clone()));
    assert!(Path::new(&format!("/proc/{old_pid}")).exists(), "{msg}");
    assert_eq!(bank.balance(alice).await.unwrap(), Ok(100));
    // A destination that may not start programs: refused, naming the stage and why.
    let (_c, node_c) = loopback_agent(&dir.path().join("node-c"), &token_file, &[]);
    let e = agent_a
        .request(
            "migrate",
            "POST",
            &path,
            Some(json!({ "to": node_c })),
            Duration::from_secs(120),
        )
        .await
        .expect_err("a migration to an agent without --allow-exec succeeded");
    let msg = e.to_string();
    assert!(
        msg.contains("HTTP 502")
            && msg.contains("start on destination")
            && msg.contains("remote execution is off"),
        "{msg}"
    );
    assert_eq!(names.resolve(&uuid).await.unwrap(), Some(addr.clone()));
    assert_eq!(bank.deposit(alice, 1).await.unwrap(), Ok(101));
    // A service this agent does not run, a missing `to`: refused.
    for (p, body, status) in [
        (
            "/v1/services/no-such-service/migrate".to_string(),
            json!({ "to": node_b }),
            "HTTP 404",
        ),
        (path.clone(), json!({}), "HTTP 400"),
        (path.clone(), json!({ "to": node_a }), "HTTP 400"),
    ] {
        let e = agent_a
            .request("migrate", "POST", &p, Some(body), Duration::from_secs(30))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(status), "{e}");
    }

    // To B, asked twice at once: one moves it, the other is refused (409 while it
    // moves, 404 once it left); it runs there now, under the same UUID, with every
    // balance.
    let t0 = Instant::now();
    let ask = || {
        agent_a.request(
            "migrate",
            "POST",
            &path,
            Some(json!({ "to": node_b })),
            Duration::from_secs(120),
        )
    };
    let (one, two) = tokio::join!(ask(), ask());
    let (m, other) = match (one, two) {
        (Ok(m), Err(e)) | (Err(e), Ok(m)) => (m, e.to_string()),
        (one, two) => panic!("not one migration and one refusal: {one:?} {two:?}"),
    };
    assert!(
        other.contains("HTTP 409") || other.contains("HTTP 404"),
        "{other}"
    );
    eprintln!("the second request: {other}");
    eprintln!("migrated through the API in {:?}: {m}", t0.elapsed());
    assert_eq!(m["node"], json!(node_b), "{m}");
    assert_eq!(m["from"], json!(addr), "{m}");
    let new_addr = m["address"].as_str().unwrap().to_string();
    assert_ne!(new_addr, addr);
    assert!(m["switch_over_ms"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["path"] == "stream" || m["path"] == "store", "{m}");
    let new_pid = m["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {m}"));
    let listed = agent_b
        .request("list", "GET", "/v1/exec", None, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        listed["processes"].as_array().unwrap().iter().any(|p| {
            p["pid"] == json!(new_pid) && p["running"] == true && p["uuid"] == json!(uuid)
        }),
        "{listed}"
    );
    // The client rebinds to the new address.
    assert_eq!(bank.balance(alice).await.unwrap(), Ok(101));
    assert_eq!(bank.balance(bob).await.unwrap(), Ok(65));
    assert_eq!(bank.deposit(bob, 5).await.unwrap(), Ok(70));
    assert_eq!(names.resolve(&uuid).await.unwrap(), Some(new_addr));
    // The old instance ended on A.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{old_pid}/exe")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{old_pid}/exe")).exists(),
        "the old instance still runs"
    );
    // Back to A by its peer name: A knows B as a node; B does not run it.
    agent_b
        .request(
            "node add",
            "POST",
            "/v1/nodes",
            Some(json!({ "name": "a", "addr": node_a })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let back = agent_b
        .request(
            "migrate",
            "POST",
            &path,
            Some(json!({ "to": "a" })),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    assert_eq!(back["node"], json!(node_a), "{back}");
    assert_eq!(bank.balance(bob).await.unwrap(), Ok(70));
}

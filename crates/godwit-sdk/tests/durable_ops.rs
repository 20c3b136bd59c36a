//! Per-operation durability, end to end on a real process: a service marks some writes
//! `#[durable]`; it runs as a child process (this test binary run again, see
//! `child_service`), is killed with SIGKILL after acknowledged durable and
//! non-durable writes, and is started again with `--resume`. The durable writes since
//! the last checkpoint survive exactly once (a retry of one is answered, not applied
//! again); the non-durable ones since the last checkpoint are lost. Without
//! `--durable-log` such a service refuses to start, naming the operations.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use godwit_sdk::codec::{from_slice, to_vec};
use godwit_sdk::wire::{self, Call};
use godwit_sdk::{service, Client, ClientOptions, Portable};
use serde_json::json;

#[derive(Portable, Debug, Clone, PartialEq, Default)]
pub struct Ledger {
    #[portable(tag = 1)]
    durable: Vec<u64>,
    #[portable(tag = 2)]
    casual: Vec<u64>,
}

#[service(name = "ledger")]
impl Ledger {
    /// Logged before its reply.
    #[durable]
    pub fn record(&mut self, n: u64) -> u64 {
        self.durable.push(n);
        self.durable.len() as u64
    }

    /// Not logged: lost in a crash unless a checkpoint has it.
    pub fn note(&mut self, n: u64) -> u64 {
        self.casual.push(n);
        self.casual.len() as u64
    }

    pub fn recorded(&self) -> Vec<u64> {
        self.durable.clone()
    }

    pub fn noted(&self) -> Vec<u64> {
        self.casual.clone()
    }
}

const CHILD_ENV: &str = "GODWIT_TEST_LEDGER_ARGS";

/// Not a test of its own: the service process the test below starts (this binary
/// again, with its arguments in the environment). Without them it does nothing.
#[test]
fn child_service() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> = args.split('\u{1f}').map(str::to_string).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(godwit_sdk::run_service(vec![], args, Ledger::default)) {
        eprintln!("SERVICE_ERROR {e}");
        std::process::exit(2);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn command(args: &[String]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child_service",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(CHILD_ENV, args.join("\u{1f}"))
    .stdin(Stdio::null());
    cmd
}

/// Starts the service; its address once it announced itself.
fn start(args: &[String]) -> (Proc, String) {
    let mut p = Proc(
        command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = BufReader::new(p.0.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        // The test harness may print `test child_service ... ` before it on the line.
        if let Some((_, rest)) = line.split_once("GODWIT_READY ") {
            let addr = rest.split_whitespace().next().unwrap().to_string();
            return (p, addr);
        }
    }
    panic!("the service exited before it was ready");
}

/// One `record` call with a fixed client id and call number (a retry sends the same).
async fn raw_record(addr: &str, n: u64) -> u64 {
    let call = Call {
        client: [42; 16],
        seq: 1,
        ack_below: 1,
        method: "record".into(),
        args: to_vec(&RecordArgs { n }),
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    wire::write_frame(&mut s, wire::kind::CALL, &[&wire::encode_call(&call)])
        .await
        .unwrap();
    loop {
        let (_, body) = wire::read_frame(&mut s).await.unwrap();
        let (_, st, payload) = wire::decode_reply(&body).unwrap();
        if st != wire::status::PENDING {
            assert_eq!(st, wire::status::OK, "{}", String::from_utf8_lossy(payload));
            return from_slice(payload).unwrap();
        }
    }
}

/// The argument struct of `record` on the wire (field `n`, tag 1).
#[derive(Portable)]
struct RecordArgs {
    #[portable(tag = 1)]
    n: u64,
}

fn ledger(addr: &str) -> LedgerClient {
    LedgerClient::new(Client::at(
        addr,
        ClientOptions {
            deadline: Duration::from_secs(15),
            ..Default::default()
        },
    ))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_ops_survive_a_kill_exactly_once_and_the_others_since_the_checkpoint_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let uuid = "6c0f7a52-58c4-4d4e-9a55-0d3f2b8e9a10".to_string();
    let args: Vec<String> = vec![
        "--uuid".into(),
        uuid,
        "--store".into(),
        format!("dir:{}", s(&dir.path().join("store"))),
        "--durable-log".into(),
        s(&dir.path().join("log")),
        "--resume".into(),
    ];
    let (mut p, addr) = start(&args);
    let l = ledger(&addr);
    assert_eq!(l.record(1).await.unwrap(), 1);
    assert_eq!(l.note(10).await.unwrap(), 1);
    let t = Duration::from_secs(10);
    let ck = godwit_sdk::mgmt::request(&addr, json!({"op": "checkpoint"}), None, t)
        .await
        .unwrap();
    assert!(ck["checkpoint"]["id"].is_string(), "{ck}");
    // Acknowledged after the checkpoint: two durable writes (one of them by a client
    // that will retry it), one that is not.
    assert_eq!(l.record(2).await.unwrap(), 2);
    assert_eq!(l.note(20).await.unwrap(), 2);
    assert_eq!(raw_record(&addr, 3).await, 3);
    let st = godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), None, t)
        .await
        .unwrap();
    assert_eq!(st["durable"]["operations"], json!(["record"]), "{st}");
    assert_eq!(st["durable"]["log_seq"], 3, "{st}");

    // SIGKILL: nothing flushed at exit, no final checkpoint.
    p.0.kill().unwrap();
    p.0.wait().unwrap();

    let (_p, addr) = start(&args);
    let l = ledger(&addr);
    assert_eq!(l.recorded().await.unwrap(), [1, 2, 3]);
    assert_eq!(
        l.noted().await.unwrap(),
        [10],
        "a non-durable write since the checkpoint is lost"
    );
    // The retry of an acknowledged durable call is answered with its reply, not applied.
    assert_eq!(raw_record(&addr, 3).await, 3);
    assert_eq!(l.recorded().await.unwrap(), [1, 2, 3]);
    let st = godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), None, t)
        .await
        .unwrap();
    assert_eq!(st["durable"]["replayed_at_start"], 2, "{st}");
}

#[test]
fn durable_ops_without_a_durable_log_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--store".into(),
        format!("dir:{}", s(&dir.path().join("store"))),
    ];
    let out = command(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("operations `record` are #[durable] but no durable call log is configured")
            && err.contains("--durable-log DIR"),
        "{err}"
    );
}

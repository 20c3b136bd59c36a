//! In-process tests of the SDK: derive, schema evolution, RPC, at-most-once, management,
//! checkpoint/restore and migration points (two instances sharing a name registry and a
//! checkpoint directory).

use std::collections::BTreeMap;
use std::time::Duration;

use godwit_sdk::codec::{from_slice, to_vec};
use godwit_sdk::{
    service, Client, ClientOptions, Names, Portable, Server, ServiceOptions, Step, Store,
};
use serde_json::json;

#[derive(Portable, Debug, Clone, PartialEq, Default)]
pub struct Tally {
    #[portable(tag = 1)]
    counts: BTreeMap<String, u64>,
    #[portable(tag = 2)]
    applied: u64,
}

#[derive(Portable, Debug, Clone, PartialEq, Default)]
pub enum Sweep {
    #[default]
    Start,
    At {
        next: u64,
        total: u64,
    },
}

#[service(name = "tally")]
impl Tally {
    /// Adds `n` to `key`; returns the new count.
    pub fn add(&mut self, key: String, n: u64) -> u64 {
        self.applied += 1;
        let c = self.counter(&key);
        *c += n;
        *c
    }

    /// A private helper in the same impl: not an operation (it could not be one: it
    /// borrows its argument and returns a reference).
    fn counter(&mut self, key: &str) -> &mut u64 {
        self.counts.entry(key.to_string()).or_default()
    }

    pub fn get(&self, key: String) -> Option<u64> {
        self.counts.get(&key).copied()
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Counts 0..upto into `sweep`, one per step, pausing `pause_ms` at each point.
    #[resumable]
    pub fn sweep(&mut self, stage: Sweep, upto: u64, pause_ms: u64) -> Step<Sweep, u64> {
        match stage {
            Sweep::Start => Step::Next(Sweep::At { next: 0, total: 0 }),
            Sweep::At { next, total } if next == upto => Step::Done(total),
            Sweep::At { next, total } => {
                *self.counts.entry("sweep".into()).or_default() += 1;
                Step::Sleep(
                    Sweep::At {
                        next: next + 1,
                        total: total + next,
                    },
                    Duration::from_millis(pause_ms),
                )
            }
        }
    }
}

#[test]
fn only_pub_methods_are_operations() {
    let names: Vec<&str> = <Tally as godwit_sdk::Service>::methods()
        .iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["add", "get", "applied", "sweep"]);
}

// --- schema evolution --------------------------------------------------------------

mod v1 {
    use godwit_sdk::Portable;
    #[derive(Portable, Debug, PartialEq)]
    pub struct Account {
        pub balance: i64,
    }
}

mod v2 {
    use godwit_sdk::Portable;
    fn seven() -> u32 {
        7
    }
    #[derive(Portable, Debug, PartialEq)]
    pub struct Account {
        pub balance: i64,
        #[portable(default)]
        pub owner: String,
        #[portable(default = "seven")]
        pub level: u32,
        pub note: Option<String>,
    }
}

mod v3_bad {
    use godwit_sdk::Portable;
    #[derive(Portable, Debug, PartialEq)]
    pub struct Account {
        pub balance: String,
    }
}

mod v3_required {
    use godwit_sdk::Portable;
    #[derive(Portable, Debug, PartialEq)]
    pub struct Account {
        pub balance: i64,
        pub owner: String,
    }
}

#[test]
fn added_fields_with_defaults_decode_from_older_data() {
    let old = to_vec(&v1::Account { balance: -5 });
    let new: v2::Account = from_slice(&old).unwrap();
    assert_eq!(
        new,
        v2::Account {
            balance: -5,
            owner: String::new(),
            level: 7,
            note: None
        }
    );
    // And the other way: an old build skips fields it does not know.
    let newer = to_vec(&v2::Account {
        balance: 3,
        owner: "x".into(),
        level: 1,
        note: Some("n".into()),
    });
    assert_eq!(
        from_slice::<v1::Account>(&newer).unwrap(),
        v1::Account { balance: 3 }
    );
}

#[test]
fn incompatible_changes_are_refused_naming_the_field() {
    let old = v1::Account::schema();
    let e = v3_bad::Account::schema()
        .check_readable(&old, "Account")
        .unwrap_err();
    assert_eq!(e.to_string(), "incompatible change at `Account.balance`: the checkpoint has i64, this build expects string");
    let e = v3_required::Account::schema()
        .check_readable(&old, "Account")
        .unwrap_err();
    assert!(e.to_string().contains("`Account.owner`"), "{e}");
    let e = from_slice::<v3_required::Account>(&to_vec(&v1::Account { balance: 1 })).unwrap_err();
    assert_eq!(
        e.to_string(),
        "field `Account.owner` (tag 2) is missing and has no default"
    );
}

#[test]
fn enums_round_trip_and_unknown_variants_fail() {
    let s = Sweep::At { next: 3, total: 9 };
    assert_eq!(from_slice::<Sweep>(&to_vec(&s)).unwrap(), s);
    let mut bytes = to_vec(&Sweep::Start);
    bytes[0] = 9;
    assert_eq!(
        from_slice::<Sweep>(&bytes).unwrap_err().to_string(),
        "unknown variant tag 9 of enum `Sweep`"
    );
}

// --- running services --------------------------------------------------------------

struct Env {
    _dir: tempfile::TempDir,
    names: Names,
    store: Store,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Dir(dir.path().to_path_buf());
    Env {
        _dir: dir,
        names: Names::from_url("memory", None).unwrap(),
        store,
    }
}

fn opts(env: &Env, uuid: Option<String>, standby: bool) -> ServiceOptions {
    ServiceOptions {
        uuid,
        names: env.names.clone(),
        store: env.store.clone(),
        standby,
        handle_signals: false,
        announce: false,
        lease: Duration::from_secs(30),
        ..Default::default()
    }
}

async fn spawn(o: ServiceOptions) -> (String, String, godwit_sdk::ServerHandle<Tally>) {
    let server = Server::bind(o, Tally::default).await.unwrap();
    let (addr, uuid, h) = (
        server.address().to_string(),
        server.uuid().to_string(),
        server.handle(),
    );
    tokio::spawn(server.run());
    (addr, uuid, h)
}

fn fast() -> ClientOptions {
    ClientOptions {
        deadline: Duration::from_secs(30),
        silence_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn wait_registered(names: &Names, uuid: &str) -> String {
    for _ in 0..500 {
        if let Some(a) = names.resolve(uuid).await.unwrap() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{uuid} never registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_status_and_at_most_once() {
    let env = env();
    let (addr, uuid, _h) = spawn(opts(&env, None, false)).await;
    assert_eq!(wait_registered(&env.names, &uuid).await, addr);
    let c = TallyClient::new(Client::by_uuid(&uuid, env.names.clone(), fast()));
    assert_eq!(c.add("a".into(), 2).await.unwrap(), 2);
    assert_eq!(c.add("a".into(), 3).await.unwrap(), 5);
    assert_eq!(c.get("a".into()).await.unwrap(), Some(5));
    assert_eq!(c.get("zz".into()).await.unwrap(), None);

    // A retried call id (same client, same seq) is answered from the table, not re-run.
    let raw = godwit_sdk::wire::Call {
        client: [9; 16],
        seq: 1,
        ack_below: 1,
        method: "add".into(),
        args: {
            let mut b = Vec::new();
            let mut e = godwit_sdk::codec::StructEncoder::begin(&mut b, 2);
            e.field(1, &"b".to_string());
            e.field(2, &10u64);
            b
        },
    };
    for _ in 0..3 {
        let reply = raw_call(&addr, &raw).await;
        assert_eq!(
            (reply.0, from_slice::<u64>(&reply.1).unwrap()),
            (godwit_sdk::wire::status::OK, 10)
        );
    }
    assert_eq!(
        c.get("b".into()).await.unwrap(),
        Some(10),
        "the retried call ran once"
    );
    // Unknown operations and garbage arguments are errors, not crashes.
    let mut bad = raw.clone();
    bad.seq = 2;
    bad.args = vec![1, 2, 3];
    assert_eq!(
        raw_call(&addr, &bad).await.0,
        godwit_sdk::wire::status::ERROR
    );
    bad.method = "nope".into();
    assert_eq!(
        raw_call(&addr, &bad).await.0,
        godwit_sdk::wire::status::ERROR
    );

    let st =
        godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), None, Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(st["service"], "tally");
    assert_eq!(st["mode"], "serving");
    assert_eq!(st["address"], addr.as_str());
    assert!(st["state_bytes"].as_u64().unwrap() > 0);
    // The typed client's second `add` acknowledged its first (ack_below), which the
    // service then forgot: one entry for it, one for the raw client.
    assert_eq!(st["completed_calls_remembered"], 2, "{st}");
}

async fn raw_call(addr: &str, call: &godwit_sdk::wire::Call) -> (u8, Vec<u8>) {
    use godwit_sdk::wire;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    wire::write_frame(&mut s, wire::kind::CALL, &[&wire::encode_call(call)])
        .await
        .unwrap();
    loop {
        let (_, body) = wire::read_frame(&mut s).await.unwrap();
        let (_, st, payload) = wire::decode_reply(&body).unwrap();
        if st != wire::status::PENDING {
            return (st, payload.to_vec());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_requires_the_token() {
    let env = env();
    let mut o = opts(&env, None, false);
    o.token = Some("s3cret".into());
    let (addr, _, _h) = spawn(o).await;
    let t = Duration::from_secs(5);
    let e = godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), None, t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unauthorized"), "{e}");
    let e = godwit_sdk::mgmt::request(&addr, json!({"op": "stop"}), Some("wrong"), t)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unauthorized"), "{e}");
    godwit_sdk::mgmt::request(&addr, json!({"op": "status"}), Some("s3cret"), t)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_restore_and_migration_point_resume() {
    let env = env();
    let t = Duration::from_secs(10);
    let (addr1, uuid, _h1) = spawn(opts(&env, None, false)).await;
    wait_registered(&env.names, &uuid).await;
    let c = TallyClient::new(Client::by_uuid(&uuid, env.names.clone(), fast()));
    c.add("k".into(), 40).await.unwrap();

    // Plain checkpoint: the service carries on.
    let ck = godwit_sdk::mgmt::request(&addr1, json!({"op": "checkpoint"}), None, t)
        .await
        .unwrap();
    assert_eq!(ck["checkpoint"]["seq"], 1);
    assert_eq!(c.add("k".into(), 1).await.unwrap(), 41);

    // Start a long operation: 30 steps of 20 ms.
    let sweeper = {
        let c = c.clone();
        tokio::spawn(async move { c.sweep(30, 20).await })
    };
    // Wait until it has passed a few migration points.
    loop {
        let st = godwit_sdk::mgmt::request(&addr1, json!({"op": "status"}), None, t)
            .await
            .unwrap();
        let passed = st["calls_in_flight"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["method"] == "sweep")
            .and_then(|c| c["migration_points_passed"].as_u64());
        if passed.is_some_and(|p| p >= 5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Migrate by hand: standby instance, freeze the old one, restore, stop the old one.
    let (addr2, _, h2) = spawn(opts(&env, Some(uuid.clone()), true)).await;
    let fr = godwit_sdk::mgmt::request(&addr1, json!({"op": "freeze"}), None, t)
        .await
        .unwrap();
    assert_eq!(
        env.names.resolve(&uuid).await.unwrap(),
        None,
        "withdrawn while frozen"
    );
    let id = fr["checkpoint"]["id"].as_str().unwrap().to_string();
    // A frozen instance refuses a second checkpoint and answers MOVED to calls.
    assert!(
        godwit_sdk::mgmt::request(&addr1, json!({"op": "checkpoint"}), None, t)
            .await
            .is_err()
    );
    godwit_sdk::mgmt::request(&addr2, json!({"op": "restore", "id": id}), None, t)
        .await
        .unwrap();
    assert_eq!(
        env.names.resolve(&uuid).await.unwrap().as_deref(),
        Some(addr2.as_str())
    );
    godwit_sdk::mgmt::request(&addr1, json!({"op": "stop", "checkpoint": false}), None, t)
        .await
        .unwrap();
    assert_eq!(
        env.names.resolve(&uuid).await.unwrap().as_deref(),
        Some(addr2.as_str()),
        "the old instance must not withdraw the new binding"
    );

    // The waiting client gets its answer from the new instance, computed exactly once.
    let total = sweeper.await.unwrap().unwrap();
    assert_eq!(total, (0..30).sum::<u64>());
    assert_eq!(
        c.get("sweep".into()).await.unwrap(),
        Some(30),
        "each step applied exactly once"
    );
    assert_eq!(c.get("k".into()).await.unwrap(), Some(41));
    assert!(c.raw().rebinds() >= 1);
    let applied = h2.with_state(|s| s.unwrap().applied);
    assert_eq!(applied, 2);
    // The next checkpoint continues the sequence of the instance.
    let ck = godwit_sdk::mgmt::request(&addr2, json!({"op": "checkpoint"}), None, t)
        .await
        .unwrap();
    assert_eq!(
        ck["checkpoint"]["seq"].as_u64().unwrap(),
        fr["checkpoint"]["seq"].as_u64().unwrap() + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_checkpoint_is_refused_and_standby_stays_usable() {
    let env = env();
    let t = Duration::from_secs(10);
    let (addr1, uuid, _h) = spawn(opts(&env, None, false)).await;
    godwit_sdk::mgmt::request(&addr1, json!({"op": "checkpoint"}), None, t)
        .await
        .unwrap();
    let Store::Dir(root) = &env.store else {
        unreachable!()
    };
    let file = root.join(&uuid).join("000000000001.gwck");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let (addr2, _, _h2) = spawn(opts(&env, Some(uuid.clone()), true)).await;
    let e = godwit_sdk::mgmt::request(&addr2, json!({"op": "restore", "id": "latest"}), None, t)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("checkpoint corrupted: CRC-32"),
        "{e}"
    );
    let st = godwit_sdk::mgmt::request(&addr2, json!({"op": "status"}), None, t)
        .await
        .unwrap();
    assert_eq!(st["mode"], "standby");
    // Periodic checkpoints: turn on at run time, see them appear while the state
    // changes, none while it does not, turn off.
    let tally = TallyClient::new(Client::at(&addr1, fast()));
    godwit_sdk::mgmt::request(&addr1, json!({"op": "interval", "secs": 0.1}), None, t)
        .await
        .unwrap();
    let seq = |st: &serde_json::Value| st["last_checkpoint"]["seq"].as_u64().unwrap_or(0);
    loop {
        tally.add("p".into(), 1).await.unwrap();
        let st = godwit_sdk::mgmt::request(&addr1, json!({"op": "status"}), None, t)
            .await
            .unwrap();
        if seq(&st) >= 3 {
            assert_eq!(st["interval_secs"], 0.1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let before = seq(
        &godwit_sdk::mgmt::request(&addr1, json!({"op": "status"}), None, t)
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = seq(
        &godwit_sdk::mgmt::request(&addr1, json!({"op": "status"}), None, t)
            .await
            .unwrap(),
    );
    assert_eq!(before, after, "periodic checkpoints of an unchanged state");
    for bad in [1e-9, 99999999999.0, -1.0] {
        let e = godwit_sdk::mgmt::request(&addr1, json!({"op": "interval", "secs": bad}), None, t)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "give 0 (periodic checkpoints off) or between 0.1 s and 2592000 s (30 days)"
            ),
            "{bad}: {e}"
        );
    }
    godwit_sdk::mgmt::request(&addr1, json!({"op": "interval", "secs": 0}), None, t)
        .await
        .unwrap();
    assert!(
        godwit_sdk::mgmt::request(&addr1, json!({"op": "interval", "secs": "x"}), None, t)
            .await
            .is_err()
    );
}

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

// --- streamed hand-off (migration without the store on the critical path) ---------

const SECRET: &str = "test-migration-secret-0123456789";

/// The old instance streams its checkpoint straight to the new one, which serves with
/// the state, the waiting resumable operation and the at-most-once table; the store
/// then holds that checkpoint, its parent the old instance's last one, and the new
/// instance's next checkpoint descends from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_hand_off_restores_then_stores_with_lineage() {
    let env = env();
    let t = Duration::from_secs(10);
    let (addr1, uuid, _h1) = spawn(opts(&env, None, false)).await;
    wait_registered(&env.names, &uuid).await;
    let c = TallyClient::new(Client::by_uuid(&uuid, env.names.clone(), fast()));
    c.add("k".into(), 40).await.unwrap();
    let ck = godwit_sdk::mgmt::request(&addr1, json!({"op": "checkpoint"}), None, t)
        .await
        .unwrap();
    let first = ck["checkpoint"]["id"].as_str().unwrap().to_string();
    c.add("k".into(), 2).await.unwrap();
    let sweeper = {
        let c = c.clone();
        tokio::spawn(async move { c.sweep(20, 20).await })
    };
    tokio::time::sleep(Duration::from_millis(120)).await;

    let (addr2, _, h2) = spawn(opts(&env, Some(uuid.clone()), true)).await;
    let recv =
        godwit_sdk::mgmt::request(&addr2, json!({"op": "receive", "secret": SECRET}), None, t)
            .await
            .unwrap();
    let port = recv["address"].as_str().unwrap().to_string();
    // One port at a time.
    assert!(
        godwit_sdk::mgmt::request(&addr2, json!({"op": "receive", "secret": SECRET}), None, t)
            .await
            .unwrap_err()
            .to_string()
            .contains("already open")
    );
    let fr = godwit_sdk::mgmt::request(
        &addr1,
        json!({"op": "freeze", "stream_to": port, "secret": SECRET}),
        None,
        t,
    )
    .await
    .unwrap();
    let id = fr["checkpoint"]["id"].as_str().unwrap().to_string();
    // Serving on the new instance as soon as the freeze answers.
    assert_eq!(
        env.names.resolve(&uuid).await.unwrap().as_deref(),
        Some(addr2.as_str())
    );
    let st = godwit_sdk::mgmt::request(&addr2, json!({"op": "status"}), None, t)
        .await
        .unwrap();
    assert_eq!(st["mode"], "serving");
    assert_eq!(st["restored_from"], id.as_str());
    godwit_sdk::mgmt::request(&addr1, json!({"op": "stop", "checkpoint": false}), None, t)
        .await
        .unwrap();
    assert_eq!(c.get("k".into()).await.unwrap(), Some(42));
    assert_eq!(sweeper.await.unwrap().unwrap(), (0..20).sum::<u64>());
    assert_eq!(c.get("sweep".into()).await.unwrap(), Some(20));
    assert_eq!(h2.with_state(|s| s.unwrap().applied), 2);

    // The store copy follows: same id, parent = the old instance's last checkpoint.
    let mut listed = Vec::new();
    for _ in 0..500 {
        listed = env.store.list(&uuid).await.unwrap();
        if listed.iter().any(|c| c.id == id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let copy = listed
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("handed-off checkpoint {id} not in the store: {listed:?}"));
    assert_eq!(copy.parent.as_deref(), Some(first.as_str()));
    assert_eq!(listed.last().map(|c| c.id.as_str()), Some(id.as_str()));
    // What is stored restores (the bytes that were streamed).
    let (_, file) = env.store.get(&uuid, &id).await.unwrap();
    let (desc, env_back) =
        godwit_sdk::checkpoint::read::<godwit_sdk::checkpoint::Envelope<Tally>>(&file, "tally")
            .unwrap();
    assert_eq!(desc.seq, fr["checkpoint"]["seq"].as_u64().unwrap());
    assert_eq!(env_back.state.counts.get("k"), Some(&42));
    // The next checkpoint continues the lineage.
    let ck = godwit_sdk::mgmt::request(&addr2, json!({"op": "checkpoint"}), None, t)
        .await
        .unwrap();
    let next = ck["checkpoint"]["id"].as_str().unwrap().to_string();
    let listed = env.store.list(&uuid).await.unwrap();
    let next = listed.iter().find(|c| c.id == next).unwrap();
    assert_eq!(next.parent.as_deref(), Some(id.as_str()));
    assert!(next.id > id);
}

/// A receiver that proves the secret, takes `keep` bytes of the file and hangs up.
async fn cutting_receiver(keep: usize) -> (String, tokio::task::JoinHandle<usize>) {
    use tokio::io::AsyncReadExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (mut s, _) = godwit_sdk::handoff::accept_sender(&l, SECRET, deadline)
            .await
            .unwrap();
        let mut got = vec![0u8; keep];
        s.read_exact(&mut got).await.unwrap();
        keep
    });
    (addr, task)
}

/// The stream is cut mid-way, the new instance is gone, or it refuses the secret: the
/// freeze fails saying so, the old instance thaws and serves on with its state, and
/// nothing reaches the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_hand_off_thaws_the_old_instance() {
    let env = env();
    let t = Duration::from_secs(10);
    let (addr1, uuid, _h1) = spawn(opts(&env, None, false)).await;
    wait_registered(&env.names, &uuid).await;
    let c = TallyClient::new(Client::by_uuid(&uuid, env.names.clone(), fast()));
    // Enough state that the file is far larger than what the receiver keeps.
    for i in 0..2000 {
        c.add(format!("key-{i:05}-{}", "x".repeat(40)), 1)
            .await
            .unwrap();
    }
    let freeze = |to: String, secret: &'static str| {
        let addr1 = addr1.clone();
        async move {
            godwit_sdk::mgmt::request(
                &addr1,
                json!({"op": "freeze", "stream_to": to, "secret": secret}),
                None,
                t,
            )
            .await
            .unwrap_err()
            .to_string()
        }
    };
    let serving_on = |n: u64| {
        let (c, addr1, uuid, names) = (c.clone(), addr1.clone(), uuid.clone(), env.names.clone());
        async move {
            assert_eq!(c.add("after".into(), 1).await.unwrap(), n);
            assert_eq!(
                c.get("key-00007-".to_string() + &"x".repeat(40))
                    .await
                    .unwrap(),
                Some(1)
            );
            assert_eq!(
                names.resolve(&uuid).await.unwrap().as_deref(),
                Some(addr1.as_str())
            );
        }
    };

    // Cut after 1000 bytes of the file.
    let (to, rx) = cutting_receiver(1000).await;
    let e = freeze(to.clone(), SECRET).await;
    assert!(e.contains(&format!("stream to {to} cut after")), "{e}");
    assert!(e.contains("thawed: this instance serves on"), "{e}");
    assert_eq!(rx.await.unwrap(), 1000);
    serving_on(1).await;

    // The new instance is gone (nothing listens there any more).
    let gone = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let e = freeze(gone.clone(), SECRET).await;
    assert!(e.contains(&format!("cannot connect to {gone}")), "{e}");
    assert!(e.contains("thawed"), "{e}");
    serving_on(2).await;

    // A real standby instance, asked with the wrong secret: refused, stays in standby.
    let (addr2, _, _h2) = spawn(opts(&env, Some(uuid.clone()), true)).await;
    let recv =
        godwit_sdk::mgmt::request(&addr2, json!({"op": "receive", "secret": SECRET}), None, t)
            .await
            .unwrap();
    let port = recv["address"].as_str().unwrap().to_string();
    let e = freeze(port.clone(), "not-the-migration-secret-at-all").await;
    assert!(e.contains("not the migration secret"), "{e}");
    assert!(e.contains("thawed"), "{e}");
    serving_on(3).await;
    let st = godwit_sdk::mgmt::request(&addr2, json!({"op": "status"}), None, t)
        .await
        .unwrap();
    assert_eq!(st["mode"], "standby");
    assert!(
        env.store.list(&uuid).await.unwrap().is_empty(),
        "nothing stored"
    );
    // And then the right secret still works on the same port.
    let fr = godwit_sdk::mgmt::request(
        &addr1,
        json!({"op": "freeze", "stream_to": port, "secret": SECRET}),
        None,
        t,
    )
    .await
    .unwrap();
    assert!(fr["checkpoint"]["id"].is_string());
    assert_eq!(c.add("after".into(), 1).await.unwrap(), 4);
}

//! SDK benchmark: checkpoint/restore throughput of a 100 MB state against memcpy, and
//! client-visible call latency before, during and after a migration.
//!
//! `cargo run --release -p godwit-sdk --bin sdk-bench -- [--mb 100] [--out FILE]
//! [--calls-only] [--migration-only RUNS]`; also the per-call cost with service-call
//! authentication off, by call token and by mutual TLS.
//! prints JSON (and writes it to FILE). Everything runs in this process on loopback; the
//! checkpoint store is a directory under the system temp dir (real files, fsync'ed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_sdk::checkpoint::{self, Description, Envelope};
use godwit_sdk::codec;
use godwit_sdk::durable::SyncMode;
use godwit_sdk::{
    service, Client, ClientOptions, Hooks, Names, Portable, Server, ServiceOptions, Store,
};
use serde_json::{json, Value};

#[derive(Portable, Default, Clone)]
pub struct Rec {
    id: u64,
    balance: i64,
    owner: String,
    history: Vec<u32>,
}

#[derive(Portable, Default, Clone)]
pub struct Bench {
    #[portable(tag = 1)]
    blob: Vec<u8>,
    #[portable(tag = 2)]
    records: BTreeMap<u64, Rec>,
    #[portable(tag = 3)]
    counter: u64,
}

#[service(name = "bench")]
impl Bench {
    pub fn incr(&mut self, n: u64) -> u64 {
        self.counter += n;
        self.counter
    }
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("runs > 0"))
}

fn blob_state(mb: usize) -> Bench {
    let mut blob = vec![0u8; mb << 20];
    for (i, b) in blob.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    Bench {
        blob,
        ..Default::default()
    }
}

fn records_state(mb: usize) -> Bench {
    // ~100 encoded bytes per record.
    let n = (mb << 20) / 100;
    let records = (0..n as u64)
        .map(|i| {
            (
                i,
                Rec {
                    id: i,
                    balance: i as i64 * 3,
                    owner: format!("owner-{i:020}"),
                    history: vec![i as u32; 4],
                },
            )
        })
        .collect();
    Bench {
        records,
        ..Default::default()
    }
}

fn throughput(name: &str, state: &Bench) -> Value {
    let env = Envelope {
        state: state.clone(),
        done: vec![],
        ops: vec![],
        workers: vec![],
        log_seq: 0,
    };
    let payload = codec::to_vec(&env);
    let bytes = payload.len();
    let mut dst = vec![0u8; bytes];
    let (t_memcpy, _) = best(3, || {
        dst.copy_from_slice(&payload);
        std::hint::black_box(&dst);
    });
    let (t_encode, enc) = best(3, || codec::to_vec(&env));
    let desc = Description {
        service: "bench".into(),
        uuid: "u".into(),
        seq: 1,
        created_unix_ms: 0,
        parent: None,
        extra: json!({}),
    };
    let schema = Envelope::<Bench>::schema();
    let (t_frame, file) = best(3, || checkpoint::write(&desc, &schema, &enc));
    let (t_read, decoded) = best(3, || {
        checkpoint::read::<Envelope<Bench>>(&file, "bench").expect("decode")
    });
    assert_eq!(decoded.1.state.counter, state.counter);
    json!({
        "state": name,
        "payload_bytes": bytes,
        "memcpy_mb_s": mbps(bytes, t_memcpy),
        "encode_mb_s": mbps(bytes, t_encode),
        "checkpoint_mb_s": mbps(bytes, t_encode + t_frame),
        "restore_mb_s": mbps(bytes, t_read),
        "encode_ms": t_encode.as_secs_f64() * 1e3,
        "frame_crc_ms": t_frame.as_secs_f64() * 1e3,
        "verify_decode_ms": t_read.as_secs_f64() * 1e3,
        "memcpy_ms": t_memcpy.as_secs_f64() * 1e3,
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn mgmt(addr: &str, req: Value) -> Value {
    godwit_sdk::mgmt::request(addr, req, None, Duration::from_secs(600))
        .await
        .expect("management request")
}

/// Runs a migration under load; returns latencies by phase and the service's timings.
/// `streamed`: the old instance streams its checkpoint straight to the new one
/// (`receive` + `freeze` with `stream_to`), the store copy follows; else it goes
/// through the store (`freeze`, then `restore`).
async fn migration(name: &str, state: Bench, store: &Store, streamed: bool) -> Value {
    let names = Names::from_url("memory", None).expect("memory names");
    let opts = |uuid: Option<String>, standby: bool| ServiceOptions {
        uuid,
        names: names.clone(),
        store: store.clone(),
        standby,
        handle_signals: false,
        announce: false,
        ..Default::default()
    };
    let s1 = Server::bind(opts(None, false), move || state.clone())
        .await
        .expect("bind");
    let (addr1, uuid) = (s1.address().to_string(), s1.uuid().to_string());
    tokio::spawn(s1.run());
    while names.resolve(&uuid).await.ok().flatten().is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let samples: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let c = BenchClient::new(Client::by_uuid(
            &uuid,
            names.clone(),
            ClientOptions::default(),
        ));
        let (samples, stop) = (samples.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.incr(1).await.expect("call");
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((t, t.elapsed()));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let factory_state = Bench::default();
    let s2 = Server::bind(opts(Some(uuid.clone()), true), move || {
        factory_state.clone()
    })
    .await
    .expect("bind");
    let addr2 = s2.address().to_string();
    tokio::spawn(s2.run());
    let secret = "sdk-bench-migration-secret-0123456789";
    let port = if streamed {
        let r = mgmt(&addr2, json!({"op": "receive", "secret": secret})).await;
        r["address"].as_str().map(str::to_string)
    } else {
        None
    };
    let t_freeze = Instant::now();
    let (fr, rs) = match &port {
        Some(to) => {
            let fr = mgmt(
                &addr1,
                json!({"op": "freeze", "stream_to": to, "secret": secret}),
            )
            .await;
            (fr, Value::Null)
        }
        None => {
            let fr = mgmt(&addr1, json!({"op": "freeze"})).await;
            let id = fr["checkpoint"]["id"].as_str().unwrap_or("latest");
            let rs = mgmt(&addr2, json!({"op": "restore", "id": id})).await;
            (fr, rs)
        }
    };
    let t_restored = Instant::now();
    if fr["ok"] != true {
        panic!("migration failed: {fr}");
    }
    mgmt(&addr1, json!({"op": "stop", "checkpoint": false})).await;
    // The store copy (streamed: written by the new instance after it serves).
    let id = fr["checkpoint"]["id"].as_str().unwrap_or("").to_string();
    while !store
        .list(&uuid)
        .await
        .map(|l| l.iter().any(|c| c.id == id))
        .unwrap_or(false)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let store_copy = t_freeze.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (mut before, mut during, mut after) = (vec![], vec![], vec![]);
    for (start, lat) in samples {
        let end = start + lat;
        let ms = lat.as_secs_f64() * 1e3;
        if end < t_freeze {
            before.push(ms);
        } else if start > t_restored {
            after.push(ms);
        } else {
            during.push(ms);
        }
    }
    let phase = |v: &mut Vec<f64>| json!({ "calls": v.len(), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "max_ms": pct(v, 1.0) });
    json!({
        "state": name,
        "path": if streamed { "stream" } else { "store" },
        "checkpoint_bytes": fr["checkpoint"]["bytes"],
        "store_copy_listed_ms": store_copy.as_secs_f64() * 1e3,
        "freeze": fr["checkpoint"],
        "restore_ms": rs["checkpoint"]["pause_ms"],
        "switch_over_ms": (t_restored - t_freeze).as_secs_f64() * 1e3,
        "latency": { "before": phase(&mut before), "during": phase(&mut during), "after": phase(&mut after) },
    })
}

/// Writes a CA, a service certificate for 127.0.0.1 and a client certificate it signed
/// (PEM) into `dir`: (service cert, service key, client cert, client key, CA).
fn bench_pki(dir: &std::path::Path) -> [std::path::PathBuf; 5] {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    std::fs::create_dir_all(dir).expect("pki dir");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).expect("CA");
    let write = |name: &str, text: String| {
        let f = dir.join(name);
        std::fs::write(&f, text).expect("write PEM");
        f
    };
    let leaf = |name: &str, sans: Vec<String>, usage| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let (sc, sk) = leaf(
        "server",
        vec!["127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (cc, ck) = leaf("client", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    [sc, sk, cc, ck, write("ca.pem", ca.pem())]
}

/// Per-call latency of one client calling `incr` in a loop, with service-call
/// authentication off, with a call token (`--call-token-file`: the token goes once per
/// connection) and with mutual TLS (`--tls-cert/--tls-key/--tls-client-ca`), and the
/// cost of a new connection's first call (fresh client each time).
async fn call_cost(calls: usize) -> Value {
    const TOKEN: &str = "sdk-bench-call-token-0123456789";
    let mut rows = Vec::new();
    for mode in ["off", "call_token", "mutual_tls"] {
        let auth = mode == "call_token";
        let pki = (mode == "mutual_tls").then(|| {
            bench_pki(
                &std::env::temp_dir().join(format!("godwit-sdk-bench-pki-{}", std::process::id())),
            )
        });
        let names = Names::from_url("memory", None).expect("memory names");
        let dir = std::env::temp_dir().join(format!(
            "godwit-sdk-bench-calls-{}-{mode}",
            std::process::id()
        ));
        let opts = ServiceOptions {
            names: names.clone(),
            store: Store::Dir(dir.clone()),
            handle_signals: false,
            announce: false,
            call_token: auth.then(|| TOKEN.to_string()),
            call_tls: pki.as_ref().map(|p| godwit_sdk::options::CallTls {
                cert: p[0].clone(),
                key: p[1].clone(),
                client_ca: p[4].clone(),
            }),
            ..Default::default()
        };
        let s = Server::bind(opts, Bench::default).await.expect("bind");
        let addr = s.address().to_string();
        tokio::spawn(s.run());
        let copts = ClientOptions {
            call_token: auth.then(|| TOKEN.to_string()),
            tls: pki
                .as_ref()
                .map(|p| godwit_sdk::MutualClient::new(&p[2], &p[3], &p[4]).expect("client TLS")),
            ..Default::default()
        };
        let c = BenchClient::new(Client::at(&addr, copts.clone()));
        for _ in 0..1000 {
            c.incr(1).await.expect("warm-up call");
        }
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            c.incr(1).await.expect("call");
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut first = Vec::new();
        for _ in 0..500 {
            let fresh = BenchClient::new(Client::at(&addr, copts.clone()));
            let t = Instant::now();
            fresh.incr(1).await.expect("first call");
            first.push(t.elapsed().as_secs_f64() * 1e3);
        }
        mgmt(&addr, json!({"op": "stop", "checkpoint": false})).await;
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(p) = &pki {
            if let Some(d) = p[0].parent() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        rows.push(json!({
            "auth": mode,
            "calls": calls,
            "p50_ms": pct(&mut lat, 0.5), "p99_ms": pct(&mut lat, 0.99),
            "first_call_on_new_connection": { "p50_ms": pct(&mut first, 0.5), "p99_ms": pct(&mut first, 0.99) },
        }));
    }
    json!(rows)
}

/// A worker's state in the bench.
#[derive(Portable, Default, Clone)]
pub struct Tick {
    n: u64,
}

/// Checkpoint pause and time to bring N workers to their safe points, for workers that
/// sit at a safe point most of the time ("idle": `pause` 10 ms between rounds) and for
/// workers that work ~0.2 ms between safe points ("busy").
async fn worker_wait(checkpoints: usize) -> Value {
    let mut rows = Vec::new();
    for kind in ["idle", "busy"] {
        for n in [0usize, 1, 8, 64] {
            let names = Names::from_url("memory", None).expect("memory names");
            let dir = std::env::temp_dir().join(format!(
                "godwit-sdk-bench-workers-{}-{kind}-{n}",
                std::process::id()
            ));
            let opts = ServiceOptions {
                names,
                store: Store::Dir(dir.clone()),
                handle_signals: false,
                announce: false,
                ..Default::default()
            };
            let busy = kind == "busy";
            let hooks = Hooks::new().on_start(move |ctx| {
                for i in 0..n {
                    let Ok(mut w) = ctx.worker(&format!("w{i}"), Tick::default) else {
                        return;
                    };
                    tokio::spawn(async move {
                        loop {
                            if busy {
                                let t = Instant::now();
                                while t.elapsed() < Duration::from_micros(200) {
                                    std::hint::black_box(w.state_mut().n += 1);
                                }
                                if w.safe_point().await.is_err() {
                                    return;
                                }
                                tokio::task::yield_now().await;
                            } else {
                                w.state_mut().n += 1;
                                if w.pause(Duration::from_millis(10)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
            let s = Server::bind(opts, Bench::default)
                .await
                .expect("bind")
                .hooks(hooks);
            let addr = s.address().to_string();
            tokio::spawn(s.run());
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (mut wait, mut pause) = (Vec::new(), Vec::new());
            for _ in 0..checkpoints {
                let c = mgmt(&addr, json!({"op": "checkpoint"})).await;
                wait.push(
                    c["checkpoint"]["worker_wait_ms"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                );
                pause.push(c["checkpoint"]["pause_ms"].as_f64().unwrap_or(f64::NAN));
            }
            mgmt(&addr, json!({"op": "stop", "checkpoint": false})).await;
            let _ = std::fs::remove_dir_all(&dir);
            rows.push(json!({
                "workers": n, "kind": kind, "checkpoints": checkpoints,
                "worker_wait_ms": { "p50": pct(&mut wait, 0.5), "p99": pct(&mut wait, 0.99) },
                "pause_ms": { "p50": pct(&mut pause, 0.5), "p99": pct(&mut pause, 0.99) },
            }));
        }
    }
    json!(rows)
}

/// Cost of durable calls per write: one client calling a write operation in a loop,
/// and 8 concurrent clients, plain vs `--durable-log` with `each` and `group` sync.
async fn durable_cost(calls: usize) -> Value {
    let mut rows = Vec::new();
    for mode in ["plain", "each", "group"] {
        for clients in [1usize, 8] {
            let names = Names::from_url("memory", None).expect("memory names");
            let dir = std::env::temp_dir().join(format!(
                "godwit-sdk-bench-durable-{}-{mode}-{clients}",
                std::process::id()
            ));
            let opts = ServiceOptions {
                names,
                store: Store::Dir(dir.join("store")),
                handle_signals: false,
                announce: false,
                durable_log: (mode != "plain").then(|| dir.join("log")),
                durable_sync: if mode == "group" {
                    SyncMode::Group
                } else {
                    SyncMode::Each
                },
                ..Default::default()
            };
            let s = Server::bind(opts, Bench::default).await.expect("bind");
            let addr = s.address().to_string();
            tokio::spawn(s.run());
            let per_client = calls / clients;
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let c = BenchClient::new(Client::at(&addr, ClientOptions::default()));
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        c.incr(1).await.expect("call");
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await.unwrap_or_default());
            }
            let secs = t0.elapsed().as_secs_f64();
            mgmt(&addr, json!({"op": "stop", "checkpoint": false})).await;
            let _ = std::fs::remove_dir_all(&dir);
            rows.push(json!({
                "mode": mode, "clients": clients, "writes": lat.len(),
                "writes_per_s": lat.len() as f64 / secs,
                "p50_ms": pct(&mut lat, 0.5), "p99_ms": pct(&mut lat, 0.99),
            }));
        }
    }
    json!(rows)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut mb = 100usize;
    let mut out_file = None;
    let mut calls_only = false;
    let mut sdk_only = false;
    let mut migration_runs = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mb" => mb = args.next().and_then(|v| v.parse().ok()).unwrap_or(100),
            "--out" => out_file = args.next(),
            "--calls-only" => calls_only = true,
            "--workers-durable-only" => sdk_only = true,
            "--migration-only" => {
                migration_runs = Some(args.next().and_then(|v| v.parse().ok()).unwrap_or(5))
            }
            other => {
                eprintln!(
                    "usage: sdk-bench [--mb N] [--out FILE] [--calls-only] [--workers-durable-only] [--migration-only RUNS] (unknown `{other}`)"
                );
                std::process::exit(2);
            }
        }
    }
    if let Some(runs) = migration_runs {
        let text =
            serde_json::to_string_pretty(&migration_only(mb, runs).await).unwrap_or_default();
        println!("{text}");
        if let Some(f) = out_file {
            let _ = std::fs::write(&f, &text);
        }
        return;
    }
    eprintln!("checkpoint wait for N workers ...");
    let workers = worker_wait(50).await;
    eprintln!("durable calls ...");
    let durable = durable_cost(4000).await;
    if sdk_only {
        let text = serde_json::to_string_pretty(&json!({ "workers": workers, "durable": durable }))
            .unwrap_or_default();
        println!("{text}");
        if let Some(f) = out_file {
            let _ = std::fs::write(&f, &text);
        }
        return;
    }
    eprintln!("per-call cost, call authentication off and on ...");
    let calls = call_cost(20_000).await;
    if calls_only {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "calls": calls })).unwrap_or_default()
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("godwit-sdk-bench-{}", std::process::id()));
    let store = Store::Dir(dir.clone());
    eprintln!("building states of {mb} MB ...");
    let blob = blob_state(mb);
    let records = records_state(mb);
    eprintln!("throughput ...");
    let tp = vec![throughput("bytes", &blob), throughput("records", &records)];
    eprintln!("migration with a small state ...");
    let small = migration("small (counter only)", Bench::default(), &store, false).await;
    let small_s = migration("small (counter only)", Bench::default(), &store, true).await;
    eprintln!("migration with {mb} MB of bytes ...");
    let big = migration(&format!("{mb} MB bytes"), blob.clone(), &store, false).await;
    let big_s = migration(&format!("{mb} MB bytes"), blob, &store, true).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "throughput": tp,
        "migration": [small, big, small_s, big_s],
        "calls": calls,
        "workers": workers,
        "durable": durable,
    });
    let text = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{text}");
    if let Some(f) = out_file {
        if let Err(e) = std::fs::write(&f, &text) {
            eprintln!("writing {f}: {e}");
            std::process::exit(1);
        }
    }
}

/// `--migration-only RUNS`: the switch-over of a migration of `mb` MB of bytes through
/// the store and streamed, alternated RUNS times each, with medians, and the ceilings
/// (memcpy and loopback TCP of the same bytes).
async fn migration_only(mb: usize, runs: usize) -> Value {
    let dir = std::env::temp_dir().join(format!("godwit-sdk-bench-mig-{}", std::process::id()));
    let store = Store::Dir(dir.clone());
    let blob = blob_state(mb);
    let bytes = vec![0x5au8; mb << 20];
    let t = Instant::now();
    let copy = bytes.clone();
    let memcpy_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(copy);
    let tcp_ms = loopback_tcp(&bytes).await;
    let mut rows = Vec::new();
    let (mut store_ms, mut stream_ms) = (Vec::new(), Vec::new());
    for i in 0..runs {
        for streamed in [false, true] {
            eprintln!(
                "run {i}: {}",
                if streamed {
                    "streamed"
                } else {
                    "through the store"
                }
            );
            let m = migration(&format!("{mb} MB bytes"), blob.clone(), &store, streamed).await;
            let ms = m["switch_over_ms"].as_f64().unwrap_or(0.0);
            if streamed {
                stream_ms.push(ms)
            } else {
                store_ms.push(ms)
            }
            rows.push(m);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "mb": mb,
        "loadavg": load.trim(),
        "ceilings": { "memcpy_ms": memcpy_ms, "loopback_tcp_ms": tcp_ms },
        "switch_over_median_ms": { "store": pct(&mut store_ms, 0.5), "stream": pct(&mut stream_ms, 0.5) },
        "switch_over_ms": { "store": store_ms, "stream": stream_ms },
        "runs": rows,
    })
}

/// Time to send `bytes` over a loopback TCP connection and read them all back on the
/// other end (one copy into a buffer of the right size, as a hand-off does).
async fn loopback_tcp(bytes: &[u8]) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let n = bytes.len();
    let rx = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).await.expect("read");
        Instant::now()
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    s.write_all(bytes).await.expect("write");
    let end = rx.await.expect("receiver");
    (end - t).as_secs_f64() * 1e3
}

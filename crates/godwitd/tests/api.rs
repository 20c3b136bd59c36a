//! End-to-end tests of the godwitd API against the real binary.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use godwit_names::http::{self, ClientRequest};
use godwit_names::Names;
use serde_json::{json, Value};

/// Kills godwitd and everything it started (its process group) when dropped.
struct Daemon {
    child: Child,
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILLs the process group `pgid` (godwitd runs as its own group leader).
fn kill_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals one process group; pgid > 1 so it
        // can never mean "every process".
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

fn start() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let token = "test-token-0123456789".to_string();
    let tf = dir.path().join("token");
    std::fs::write(&tf, format!("{token}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_godwitd"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&tf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("GODWITD_READY ")
        .unwrap_or_else(|| panic!("bad banner `{line}`"))
        .to_string();
    Daemon {
        child,
        base: format!("http://{addr}"),
        token,
        _dir: dir,
    }
}

async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> http::Response {
    let mut req = ClientRequest::new(method, path);
    req.token = token;
    req.body = body;
    http::send(&d.base, &req).await.unwrap()
}

#[tokio::test]
async fn unauthenticated_calls_are_refused() {
    let d = start();
    for (m, p) in [
        ("GET", "/v1/health"),
        ("GET", "/v1/names"),
        ("POST", "/v1/exec"),
        ("GET", "/v1/store/x/1"),
        ("GET", "/nope"),
    ] {
        assert_eq!(
            call(&d, m, p, None, b"{}").await.status,
            401,
            "{m} {p} without a token"
        );
        assert_eq!(
            call(&d, m, p, Some("wrong-token-000000"), b"{}")
                .await
                .status,
            401,
            "{m} {p} with a wrong token"
        );
    }
    let ok = call(&d, "GET", "/v1/health", Some(&d.token), b"").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json_body().unwrap()["ok"], true);
    // The name-service client surfaces the refusal.
    let names = Names::from_url(&format!("agent+{}", d.base), None).unwrap();
    let e = names.resolve("x").await.unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
}

#[tokio::test]
async fn names_role() {
    let d = start();
    let names = Names::from_url(&format!("agent+{}", d.base), Some(d.token.clone())).unwrap();
    let mut lease = names
        .advertise("svc-a", "10.0.0.1:4000", Duration::from_secs(30))
        .await
        .unwrap();
    names.refresh(&mut lease).await.unwrap();
    assert_eq!(
        names.resolve("svc-a").await.unwrap().as_deref(),
        Some("10.0.0.1:4000")
    );
    assert_eq!(names.resolve("svc-b").await.unwrap(), None);
    let list = names.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(
        !names.withdraw("svc-a", "10.0.0.2:1").await.unwrap(),
        "compare-and-delete keeps another address"
    );
    assert!(names.withdraw("svc-a", "10.0.0.1:4000").await.unwrap());
    assert_eq!(names.resolve("svc-a").await.unwrap(), None);
    let bad = call(&d, "PUT", "/v1/names/x", Some(&d.token), b"not json").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn store_role_is_private_and_refuses_escapes() {
    let d = start();
    let store =
        godwit_sdk::Store::from_url(&format!("agent+{}", d.base), Some(d.token.clone())).unwrap();
    store
        .put("svc-1", "000000000001", vec![1, 2, 3])
        .await
        .unwrap();
    store
        .put("svc-1", "000000000002", vec![4; 1 << 20])
        .await
        .unwrap();
    let (id, bytes) = store.get("svc-1", "latest").await.unwrap();
    assert_eq!((id.as_str(), bytes.len()), ("000000000002", 1 << 20));
    assert_eq!(store.list("svc-1").await.unwrap().len(), 2);
    let f = d._dir.path().join("data/store/svc-1/000000000001.gwck");
    assert_eq!(
        std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(f.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        call(&d, "GET", "/v1/store/svc-1/..", Some(&d.token), b"")
            .await
            .status,
        400
    );
    assert_eq!(
        call(&d, "PUT", "/v1/store/..%2F..%2Fetc/x", Some(&d.token), b"x")
            .await
            .status,
        400
    );
    assert_eq!(
        call(
            &d,
            "GET",
            "/v1/store/svc-1/000000000009",
            Some(&d.token),
            b""
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn exec_role_starts_waits_for_ready_and_signals() {
    let d = start();
    let body = json!({
        "program": "/bin/sh",
        "args": ["-c", "echo hello; echo GODWIT_READY 127.0.0.1:9 $MYVAR; exec sleep 60"],
        "env": {"MYVAR": "the-uuid"},
        "wait_ready_ms": 5000,
    });
    let r = call(
        &d,
        "POST",
        "/v1/exec",
        Some(&d.token),
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v: Value = r.json_body().unwrap();
    assert_eq!(v["ready"]["address"], "127.0.0.1:9");
    assert_eq!(v["ready"]["uuid"], "the-uuid");
    let pid = v["pid"].as_u64().unwrap();
    let list: Value = call(&d, "GET", "/v1/exec", Some(&d.token), b"")
        .await
        .json_body()
        .unwrap();
    assert_eq!(list["processes"][0]["running"], true);
    let sig = call(
        &d,
        "POST",
        &format!("/v1/exec/{pid}/signal"),
        Some(&d.token),
        br#"{"signal":"KILL"}"#,
    )
    .await;
    assert_eq!(sig.status, 200);
    for _ in 0..100 {
        let list: Value = call(&d, "GET", "/v1/exec", Some(&d.token), b"")
            .await
            .json_body()
            .unwrap();
        if list["processes"][0]["running"] == false {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("process {pid} still running after KILL");
}

#[tokio::test]
async fn exec_refuses_bad_requests() {
    let d = start();
    let r = call(
        &d,
        "POST",
        "/v1/exec",
        Some(&d.token),
        br#"{"program":"/nonexistent/prog"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = call(&d, "POST", "/v1/exec", Some(&d.token), br#"{"args":[]}"#).await;
    assert_eq!(r.status, 400);
    let body = json!({"program": "/bin/sh", "args": ["-c", "exit 0"], "wait_ready_ms": 300});
    let r = call(
        &d,
        "POST",
        "/v1/exec",
        Some(&d.token),
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 504, "a program that never says ready is reported");
    let r = call(
        &d,
        "POST",
        "/v1/exec/1/signal",
        Some(&d.token),
        br#"{"signal":"KILL"}"#,
    )
    .await;
    assert_eq!(
        r.status, 404,
        "only programs this agent started can be signalled"
    );
}

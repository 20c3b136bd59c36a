//! End-to-end tests of the godwitd API against the real binary, over the authenticated
//! channel (TLS + token binding).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use godwit_names::Names;
use godwit_net::http::{HttpRequest, HttpResponse};
use godwit_net::{ChannelKind, ClientTls, NetError, Token};
use serde_json::{json, Value};

const ADMIN: &str = "test-token-0123456789";
const READER: &str = "reader-token-0123456789";

/// Kills godwitd and everything it started (its process group) when dropped.
struct Daemon {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
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

fn write_token_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// godwitd with `read,operate,exec ADMIN` and `read READER`, allowed to exec /bin/sh.
fn start() -> Daemon {
    start_with(&["--allow-exec", "/bin/sh"], &[], "127.0.0.1:0")
}

fn command(dir: &Path, extra: &[&str], env: &[(&str, &str)], listen: &str) -> Command {
    let tf = dir.join("token");
    write_token_file(
        &tf,
        &format!("# test tokens\nread,operate,exec {ADMIN}\nread {READER}\n"),
        0o600,
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_godwitd"));
    cmd.args(["--listen", listen, "--data"])
        .arg(dir.join("data"))
        .arg("--token-file")
        .arg(&tf)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .process_group(0);
    cmd
}

fn start_with(extra: &[&str], env: &[(&str, &str)], listen: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path(), extra, env, listen).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut d = Daemon {
        addr: String::new(),
        child,
        dir,
    };
    let addr = line
        .trim()
        .strip_prefix("GODWITD_READY ")
        .unwrap_or_else(|| panic!("bad banner `{line}`: {}", d.stderr()))
        .to_string();
    d.addr = addr.replace("0.0.0.0", "127.0.0.1");
    d
}

fn client(token: &str) -> ClientTls {
    ClientTls::new(Token::new(token).unwrap(), None).unwrap()
}

async fn call_as(d: &Daemon, token: &str, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let mut req = HttpRequest::new(method, path);
    req.body = body.to_vec().into();
    client(token).request(&d.addr, &req).await.unwrap()
}

async fn call(d: &Daemon, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    call_as(d, ADMIN, method, path, body).await
}

#[tokio::test]
async fn wrong_tokens_are_refused_at_the_channel() {
    let d = start();
    let wrong = client("wrong-token-0123456789");
    let e = wrong
        .request(&d.addr, &HttpRequest::new("GET", "/v1/health"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, NetError::Unauthenticated { .. }),
        "a wrong token must not get in: {e:?}"
    );
    assert!(e.to_string().contains("token did not match"), "{e}");
    // Plain HTTP gets nothing: the agent only speaks TLS.
    let mut tcp = std::net::TcpStream::connect(&d.addr).unwrap();
    std::io::Write::write_all(&mut tcp, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!(
        !String::from_utf8_lossy(&got).contains("\"ok\""),
        "plain HTTP answered"
    );
    // The right token gets in, with its scopes.
    let ok = call(&d, "GET", "/v1/health", b"").await;
    assert_eq!(ok.status, 200);
    let v = ok.json().unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["scopes"], "read,operate,exec,service");
    // The name-service client surfaces the refusal.
    let names = Names::from_url(
        &format!("agent://{}", d.addr),
        Some("wrong-token-0123456789".into()),
    )
    .unwrap();
    let e = names.resolve("x").await.unwrap_err();
    assert!(e.to_string().contains("token did not match"), "{e}");
    assert!(d.stderr().contains("connection refused"), "{}", d.stderr());
}

#[tokio::test]
async fn a_read_only_token_can_read_but_not_exec_put_or_signal() {
    let d = start();
    let r = call_as(&d, READER, "GET", "/v1/health", b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().unwrap()["scopes"], "read");
    assert_eq!(
        call_as(&d, READER, "GET", "/v1/names", b"").await.status,
        200
    );
    assert_eq!(
        call_as(&d, READER, "GET", "/v1/exec", b"").await.status,
        200
    );
    for (m, p, body, scope) in [
        (
            "POST",
            "/v1/exec",
            &br#"{"program":"/bin/sh","args":["-c","exit 0"]}"#[..],
            "exec",
        ),
        (
            "PUT",
            "/v1/names/svc-a",
            br#"{"address":"10.0.0.1:1"}"#,
            "operate",
        ),
        ("DELETE", "/v1/names/svc-a", b"", "operate"),
        ("PUT", "/v1/store/svc-a/000000000001", b"data", "operate"),
        (
            "POST",
            "/v1/exec/1/signal",
            br#"{"signal":"KILL"}"#,
            "operate",
        ),
    ] {
        let r = call_as(&d, READER, m, p, body).await;
        assert_eq!(r.status, 403, "{m} {p} with a read-only token");
        let msg = r.error_message();
        assert!(
            msg.contains(scope) && msg.contains("`read`"),
            "{m} {p}: {msg}"
        );
    }
    assert!(!d.dir.path().join("data/store/svc-a").exists());
    assert_eq!(
        call_as(&d, ADMIN, "GET", "/v1/names/svc-a", b"")
            .await
            .status,
        404,
        "the refused PUT bound nothing"
    );
}

#[tokio::test]
async fn names_role() {
    let d = start();
    let names = Names::from_url(&format!("agent://{}", d.addr), Some(ADMIN.into())).unwrap();
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
    let bad = call(&d, "PUT", "/v1/names/x", b"not json").await;
    assert_eq!(bad.status, 400);
    assert!(bad.error_message().contains("not JSON"));
    let none = call(&d, "GET", "/nope", b"").await;
    assert_eq!(none.status, 404);
    assert!(none.error_message().contains("no route GET /nope"));
    // The old scheme still parses and means the same TLS channel.
    let alias = Names::from_url(&format!("agent+http://{}", d.addr), Some(ADMIN.into())).unwrap();
    assert_eq!(alias.list().await.unwrap().len(), 0);
}

/// A valid checkpoint file of service instance `uuid` with sequence number `seq`.
fn checkpoint_file(uuid: &str, seq: u64, parent: Option<&str>, payload: &[u8]) -> Vec<u8> {
    use godwit_sdk::checkpoint::{write, Description};
    let desc = Description {
        service: "test".into(),
        uuid: uuid.into(),
        seq,
        created_unix_ms: 1,
        parent: parent.map(str::to_string),
        extra: json!({}),
    };
    write(&desc, &godwit_sdk::schema::Schema::Unit, payload)
}

#[tokio::test]
async fn store_role_is_private_and_refuses_escapes() {
    let d = start();
    let store =
        godwit_sdk::Store::from_url(&format!("agent://{}", d.addr), Some(ADMIN.into())).unwrap();
    let big = checkpoint_file("svc-1", 2, Some("000000000001"), &vec![4; 3 << 20]);
    store
        .put(
            "svc-1",
            "000000000001",
            checkpoint_file("svc-1", 1, None, &[1, 2, 3]),
        )
        .await
        .unwrap();
    store
        .put("svc-1", "000000000002", big.clone())
        .await
        .unwrap();
    let (id, bytes) = store.get("svc-1", "latest").await.unwrap();
    assert_eq!(id.as_str(), "000000000002");
    assert!(bytes == big);
    let list = store.list("svc-1").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].parent.as_deref(), Some("000000000001"), "{list:?}");
    assert_eq!(list[0].parent, None);
    // Retention removes; removing what is gone is no error.
    store.delete("svc-1", "000000000001").await.unwrap();
    store.delete("svc-1", "000000000001").await.unwrap();
    assert_eq!(store.list("svc-1").await.unwrap().len(), 1);
    store
        .put(
            "svc-1",
            "000000000001",
            checkpoint_file("svc-1", 1, None, &[1, 2, 3]),
        )
        .await
        .unwrap();
    let f = d.dir.path().join("data/store/svc-1/000000000001.gwck");
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
    assert_eq!(call(&d, "GET", "/v1/store/svc-1/..", b"").await.status, 400);
    assert_eq!(
        call(&d, "PUT", "/v1/store/..%2F..%2Fetc/x", b"x")
            .await
            .status,
        400
    );
    assert_eq!(
        call(&d, "GET", "/v1/store/svc-1/000000000009", b"")
            .await
            .status,
        404
    );
}

/// The store keeps only whole checkpoints of the service instance they are uploaded
/// for, under their own id, and never replaces one.
#[tokio::test]
async fn the_store_refuses_garbage_and_never_overwrites() {
    let d = start();
    let u = "5d0c6f5e-0000-4000-8000-000000000001";
    let path = format!("/v1/store/{u}/000000000001");
    let good = checkpoint_file(u, 1, None, b"state");
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    let mut cut = good.clone();
    cut.truncate(good.len() - 2);
    for (what, body, expect) in [
        ("4 junk bytes", b"junk".to_vec(), "truncated"),
        ("a bad magic", vec![b'x'; 64], "bad magic"),
        ("a flipped payload byte", bad_crc, "CRC-32"),
        ("a truncated file", cut, "truncated"),
        (
            "another instance's checkpoint",
            checkpoint_file("5d0c6f5e-0000-4000-8000-000000000002", 1, None, b"state"),
            "of service instance 5d0c6f5e-0000-4000-8000-000000000002, not",
        ),
        (
            "a checkpoint with another sequence number",
            checkpoint_file(u, 7, None, b"state"),
            "makes its id 000000000007",
        ),
    ] {
        let r = call(&d, "PUT", &path, &body).await;
        let msg = r.error_message();
        assert_eq!(r.status, 400, "{what}: {msg}");
        assert!(
            msg.contains(expect) && msg.contains("not stored"),
            "{what}: {msg}"
        );
    }
    assert!(!d
        .dir
        .path()
        .join(format!("data/store/{u}/000000000001.gwck"))
        .exists());
    assert_eq!(call(&d, "PUT", &path, &good).await.status, 201);
    let again = call(&d, "PUT", &path, &checkpoint_file(u, 1, None, b"other")).await;
    assert_eq!(again.status, 409, "{}", again.error_message());
    assert!(again.error_message().contains("never reused"));
    let back = call(&d, "GET", &path, b"").await;
    assert_eq!(&back.body[..], &good[..]);
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
    let r = call(&d, "POST", "/v1/exec", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let v: Value = r.json().unwrap();
    assert_eq!(v["ready"]["address"], "127.0.0.1:9");
    assert_eq!(v["ready"]["uuid"], "the-uuid");
    let pid = v["pid"].as_u64().unwrap();
    let list: Value = call(&d, "GET", "/v1/exec", b"").await.json().unwrap();
    assert_eq!(list["processes"][0]["running"], true);
    let sig = call(
        &d,
        "POST",
        &format!("/v1/exec/{pid}/signal"),
        br#"{"signal":"KILL"}"#,
    )
    .await;
    assert_eq!(sig.status, 200);
    for _ in 0..100 {
        let list: Value = call(&d, "GET", "/v1/exec", b"").await.json().unwrap();
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
        br#"{"program":"/nonexistent/prog"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = call(&d, "POST", "/v1/exec", br#"{"args":[]}"#).await;
    assert_eq!(r.status, 400);
    let r = call(&d, "POST", "/v1/exec", br#"{"program":"sh"}"#).await;
    assert_eq!(r.status, 400, "a relative program name");
    let body = json!({"program": "/bin/sh", "args": ["-c", "exit 0"], "wait_ready_ms": 300});
    let r = call(&d, "POST", "/v1/exec", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 504, "a program that never says ready is reported");
    let body = json!({"program": "/bin/sh", "args": ["-c", "exit 0"], "restart": "always"});
    let r = call(&d, "POST", "/v1/exec", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("`never` or `on-failure`"),
        "{}",
        r.error_message()
    );
    // Not ready in time: killed and not started again, even with on-failure.
    let body = json!({"program": "/bin/sh", "args": ["-c", "sleep 30"], "wait_ready_ms": 300, "restart": "on-failure"});
    let r = call(&d, "POST", "/v1/exec", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 504);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = call(&d, "GET", "/v1/exec", b"").await.json().unwrap();
    let alive: Vec<&Value> = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["running"] == true)
        .collect();
    assert!(alive.is_empty(), "{v}");
    let r = call(&d, "POST", "/v1/exec/1/signal", br#"{"signal":"KILL"}"#).await;
    assert_eq!(
        r.status, 404,
        "only programs this agent started can be signalled"
    );
}

#[tokio::test]
async fn exec_only_runs_allowed_programs() {
    let d = start();
    let r = call(
        &d,
        "POST",
        "/v1/exec",
        br#"{"program":"/bin/sleep","args":["60"]}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    let msg = r.error_message();
    assert!(
        msg.contains("not allowed") && msg.contains("--allow-exec"),
        "{msg}"
    );
    let list: Value = call(&d, "GET", "/v1/exec", b"").await.json().unwrap();
    assert_eq!(list["processes"].as_array().unwrap().len(), 0);

    // Without --allow-exec, remote execution is off and says how to turn it on.
    let off = start_with(&[], &[], "127.0.0.1:0");
    let r = call(
        &off,
        "POST",
        "/v1/exec",
        br#"{"program":"/bin/sh","args":["-c","exit 0"]}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(
        r.error_message().contains("--allow-exec PATH"),
        "{}",
        r.error_message()
    );

    // A directory prefix allows what is under it (after resolving symlinks).
    let bin = std::fs::canonicalize("/bin/sleep").unwrap();
    let dir = format!("{}/", bin.parent().unwrap().display());
    let dd = start_with(&["--allow-exec", &dir], &[], "127.0.0.1:0");
    let r = call(
        &dd,
        "POST",
        "/v1/exec",
        br#"{"program":"/bin/sleep","args":["60"]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.error_message());
}

#[test]
fn a_token_file_readable_by_others_stops_godwitd() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path(), &[], &[], "127.0.0.1:0");
    std::fs::set_permissions(
        dir.path().join("token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = cmd.stdout(Stdio::piped()).output().unwrap();
    assert!(!out.status.success());
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    let tf = dir.path().join("token");
    assert!(
        err.contains(&format!("chmod 600 {}", tf.display())),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("GODWITD_READY"));
}

fn environ(pid: u64) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let s = String::from_utf8_lossy(e).into_owned();
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn started_programs_get_their_own_narrow_token_not_the_agents() {
    let token_file = PathBuf::from("/nonexistent/agent-token-file");
    let d = start_with(
        &["--allow-exec", "/bin/sh"],
        &[
            ("GODWIT_TOKEN", ADMIN),
            ("GODWIT_TOKEN_FILE", token_file.to_str().unwrap()),
        ],
        "127.0.0.1:0",
    );
    let body = json!({
        "program": "/bin/sh",
        "args": ["-c", "echo GODWIT_READY 127.0.0.1:9 u; exec sleep 60"],
        "wait_ready_ms": 5000,
    });
    let r = call(&d, "POST", "/v1/exec", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let pid = r.json().unwrap()["pid"].as_u64().unwrap();
    // The program execs sleep right after its ready line: while the exec
    // runs, /proc/PID/environ reads empty.
    let mut env = environ(pid);
    for _ in 0..200 {
        if !env.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        env = environ(pid);
    }
    assert!(
        env.iter()
            .all(|(k, v)| v != ADMIN && k != "GODWIT_TOKEN" && k != "GODWIT_TOKEN_FILE"),
        "the agent's token reached the program: {env:?}"
    );
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("GODWIT_AGENT").as_deref(), Some(d.addr.as_str()));
    let own = get("GODWIT_AGENT_TOKEN").expect("a per-program token");
    assert_ne!(own, ADMIN);
    // The program's token: names and store yes, exec and signals no.
    let ck = checkpoint_file("svc-p", 1, None, b"ck");
    let r = call_as(&d, &own, "GET", "/v1/health", b"").await;
    assert_eq!(r.json().unwrap()["scopes"], "service");
    assert_eq!(
        call_as(&d, &own, "GET", "/v1/exec", b"").await.status,
        403,
        "the program cannot list what else the agent runs"
    );
    assert_eq!(
        call_as(
            &d,
            &own,
            "PUT",
            "/v1/names/svc-p",
            br#"{"address":"127.0.0.1:9"}"#
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call_as(&d, &own, "PUT", "/v1/store/svc-p/000000000001", &ck)
            .await
            .status,
        201
    );
    let back = call_as(&d, &own, "GET", "/v1/store/svc-p/000000000001", b"").await;
    assert_eq!((back.status, &back.body[..]), (200, &ck[..]));
    assert_eq!(
        call_as(&d, &own, "GET", "/v1/names/svc-p", b"")
            .await
            .status,
        200
    );
    let r = call_as(&d, &own, "POST", "/v1/exec", body.to_string().as_bytes()).await;
    assert_eq!(r.status, 403);
    let r = call_as(
        &d,
        &own,
        "POST",
        &format!("/v1/exec/{pid}/signal"),
        br#"{"signal":"KILL"}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    // It dies with the program.
    let r = call(
        &d,
        "POST",
        &format!("/v1/exec/{pid}/signal"),
        br#"{"signal":"KILL"}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    let mut revoked = false;
    for _ in 0..100 {
        let e = client(&own)
            .request(&d.addr, &HttpRequest::new("GET", "/v1/health"))
            .await;
        if matches!(e, Err(NetError::Unauthenticated { .. })) {
            revoked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(revoked, "the program's token outlived it");
}

/// Reads one frame of the migration stream: (kind, payload).
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; godwit_image::stream::FRAME_HEADER];
    s.read_exact(&mut h).await.unwrap();
    let len = u64::from_le_bytes(h[8..16].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

#[tokio::test]
async fn migration_channels_need_operate_and_check_the_hello() {
    use godwit_image::stream::{kind, write_frame};
    use tokio::io::AsyncWriteExt;
    let d = start();
    // A source speaking another protocol version is told so.
    let (mut s, _) = client(ADMIN)
        .connect(&d.addr, ChannelKind::Migration)
        .await
        .unwrap();
    let mut hello = Vec::new();
    write_frame(
        &mut hello,
        kind::MESSAGE,
        0,
        br#"{"godwit_migrate": 99, "mode": "stop-copy", "pids": [1]}"#,
    )
    .unwrap();
    s.write_all(&hello).await.unwrap();
    s.flush().await.unwrap();
    let (k, payload) = read_frame(&mut s).await;
    assert_eq!(k, kind::MESSAGE);
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("protocol version"),
        "{v}"
    );
    // A read-only token may not send a process here.
    let (mut s, _) = client(READER)
        .connect(&d.addr, ChannelKind::Migration)
        .await
        .unwrap();
    let (k, payload) = read_frame(&mut s).await;
    assert_eq!(k, kind::ABORT);
    let why = String::from_utf8_lossy(&payload);
    assert!(why.contains("operate scope"), "{why}");
}

#[tokio::test]
async fn listening_on_every_address_is_warned_about_and_logs_have_no_colour() {
    let d = start_with(&[], &[], "0.0.0.0:0");
    assert_eq!(call(&d, "GET", "/v1/health", b"").await.status, 200);
    let err = d.stderr();
    assert!(err.contains("listening on every address"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in a log file: {err}");
}

#[tokio::test]
async fn pki_mode_serves_the_operators_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let p = |f: &str| pki.path().join(f);
    std::fs::write(p("ca.pem"), ca.pem()).unwrap();
    std::fs::write(p("cert.pem"), cert.pem()).unwrap();
    std::fs::write(p("key.pem"), key.serialize_pem()).unwrap();
    let d = start_with(
        &[
            "--tls-cert",
            p("cert.pem").to_str().unwrap(),
            "--tls-key",
            p("key.pem").to_str().unwrap(),
        ],
        &[],
        "127.0.0.1:0",
    );
    // Verified against the CA, through the agent client as `godwit service --tls-ca` does.
    let agent =
        godwit_agent_client::Agent::with_ca(&d.addr, ADMIN.into(), Some(&p("ca.pem"))).unwrap();
    assert_eq!(agent.health().await.unwrap()["ok"], true);
    // A plain godwitd (self-signed) fails a client that insists on the CA.
    let plain = start();
    let e = godwit_agent_client::Agent::with_ca(&plain.addr, ADMIN.into(), Some(&p("ca.pem")))
        .unwrap()
        .health()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("TLS handshake"), "{e}");
}

#[tokio::test]
async fn the_agent_client_reports_refusals_and_guards_its_token_file() {
    let d = start();
    let reader = godwit_agent_client::Agent::new(&d.addr, READER.into()).unwrap();
    assert_eq!(reader.health().await.unwrap()["scopes"], "read");
    let e = reader
        .exec(
            "/bin/sh",
            &["-c".into(), "exit 0".into()],
            json!({}),
            Duration::ZERO,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            godwit_agent_client::AgentError::Refused { status: 403, .. }
        ),
        "{e:?}"
    );
    let wrong = godwit_agent_client::Agent::new(&d.addr, "wrong-token-0123456789".into()).unwrap();
    let e = wrong.health().await.unwrap_err();
    assert!(e.to_string().contains("token did not match"), "{e}");
    let tf = d.dir.path().join("client-token");
    write_token_file(&tf, &format!("{ADMIN}\n"), 0o644);
    let e = godwit_agent_client::load_token(&tf).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(godwit_agent_client::load_token(&tf).unwrap(), ADMIN);
}

/// Grants: an `operate` token has the agent register a `service`-scoped secret (given,
/// or fresh), which then reaches the name service but nothing else; a short secret,
/// a secret the agent already knows, or a read-only caller are refused. The credential
/// of a service nobody started here is 404, and read-only callers get 403.
#[tokio::test]
async fn grants_are_service_scoped_and_credentials_need_operate() {
    let d = start();
    let secret = "granted-secret-0123456789abcdef0123456789";
    let body = json!({ "secret": secret }).to_string();
    let r = call_as(&d, READER, "POST", "/v1/grants", body.as_bytes()).await;
    assert_eq!(r.status, 403, "a read-only token granted");
    let r = call(&d, "POST", "/v1/grants", body.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    assert_eq!(r.json().unwrap()["token"], secret);
    // Granted: the name service, with the `service` scope only.
    let h = call_as(&d, secret, "GET", "/v1/health", b"").await;
    assert_eq!(h.json().unwrap()["scopes"], "service");
    let put = call_as(
        &d,
        secret,
        "PUT",
        "/v1/names/svc-g",
        br#"{"address":"127.0.0.1:9","lease_ms":5000}"#,
    )
    .await;
    assert!(put.status < 300, "{}", put.error_message());
    assert_eq!(
        call_as(&d, secret, "GET", "/v1/exec", b"").await.status,
        403,
        "a grant reads the process list"
    );
    assert_eq!(
        call_as(&d, secret, "POST", "/v1/grants", b"{}")
            .await
            .status,
        403,
        "a grant grants"
    );
    // Refused: the same secret again, the agent's own token, a short secret.
    for (body, status) in [
        (json!({ "secret": secret }), 409),
        (
            json!({ "secret": format!("{ADMIN}-and-more-to-be-32-long") }),
            201,
        ),
        (json!({ "secret": ADMIN }), 400),
        (json!({ "secret": "short" }), 400),
    ] {
        let r = call(&d, "POST", "/v1/grants", body.to_string().as_bytes()).await;
        assert_eq!(r.status, status, "{body}: {}", r.error_message());
    }
    // A fresh one when no secret is given.
    let r = call(&d, "POST", "/v1/grants", b"{}").await;
    assert_eq!(r.json().unwrap()["token"].as_str().unwrap().len(), 64);

    let r = call_as(&d, READER, "POST", "/v1/services/svc-g/credential", b"{}").await;
    assert_eq!(r.status, 403);
    let r = call(&d, "POST", "/v1/services/svc-g/credential", b"{}").await;
    assert_eq!(r.status, 404, "{}", r.error_message());
}

/// `--dashboard` on every address is served and warned about; the dashboard's banner
/// comes before `GODWITD_READY`; a certificate without its key is refused.
#[test]
fn a_dashboard_on_every_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(
        dir.path(),
        &["--dashboard", "0.0.0.0:0"],
        &[],
        "127.0.0.1:0",
    )
    .spawn()
    .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    kill_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    assert!(
        first.starts_with("GODWITD_DASHBOARD https://0.0.0.0:"),
        "{first}: {err}"
    );
    assert!(second.starts_with("GODWITD_READY "), "{second}");
    assert!(
        err.contains("the dashboard listens on every address"),
        "{err}"
    );

    let out = command(
        dir.path(),
        &[
            "--dashboard",
            "127.0.0.1:0",
            "--dashboard-cert",
            "/nonexistent",
        ],
        &[],
        "127.0.0.1:0",
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dashboard-key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--program NAME=PATH`: a program that does not exist on this node is
/// started from the copy registered under its file name (what a service's
/// migration to a node that keeps its program elsewhere needs); one that
/// nobody registered is refused with the option to use.
#[tokio::test]
async fn a_program_missing_here_starts_from_its_registered_copy() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("napper");
    std::fs::copy(std::fs::canonicalize("/bin/sleep").unwrap(), &copy).unwrap();
    let arg = format!("napper={}", copy.display());
    let d = start_with(&["--program", &arg], &[], "127.0.0.1:0");
    let r = call(
        &d,
        "POST",
        "/v1/exec",
        br#"{"program":"/elsewhere/on/another/node/napper","args":["60"]}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let pid = r.json().unwrap()["pid"].as_u64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, std::fs::canonicalize(&copy).unwrap());
    let r = call(
        &d,
        "POST",
        "/v1/exec",
        br#"{"program":"/elsewhere/on/another/node/other","args":["60"]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("godwitd --program other=PATH"),
        "{}",
        r.error_message()
    );
}

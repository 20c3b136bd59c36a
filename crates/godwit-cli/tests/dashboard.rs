//! The operator's dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver (fantoccini): godwitd with
//! `--dashboard` on loopback, a real process started under it, login (a wrong
//! token refused), the process listed, "Checkpoint" pressed and the checkpoint
//! listed, the process stopped, the checkpoint restored and the process counting
//! on from where it was; an action without the CSRF token refused. Screenshots go
//! to target/dashboard-screenshots/.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const READER: &str = "dash-test-reader-token-0123456789abcdef";
const OPERATOR: &str = "dash-test-operator-token-0123456789abcdef";

/// Everything the test starts, killed on drop even when the test fails: godwitd,
/// chromedriver with every browser process under it, and the processes the test
/// had godwitd start or restore.
#[derive(Default)]
struct Started {
    children: Vec<Child>,
    /// Kill these with their descendants (chromedriver: the browser runs under it).
    trees: Vec<i32>,
    pids: Vec<i32>,
}

impl Drop for Started {
    fn drop(&mut self) {
        for root in self.trees.drain(..) {
            let mut all = common::descendants(root);
            all.reverse();
            for p in all {
                // SAFETY: kill(2) on one positive PID that this test started (a
                // process under the chromedriver it started).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        for p in self.pids.drain(..) {
            if p > 0 {
                // SAFETY: as above, one PID this test had the agent start or restore.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// The browser and its driver, or a failure saying how to install them.
fn browser_binaries() -> (PathBuf, PathBuf) {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(n))
                    .find(|f| f.is_file())
            })
        })
    };
    let chromium = find(&["chromium", "chromium-browser"]);
    let driver = find(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => (c, d),
        (c, d) => panic!(
            "the dashboard test needs a real headless Chromium: {}{}not found. Install Debian's packages: `apt-get install chromium chromium-driver` (scripts/setup.sh does)",
            if c.is_none() { "chromium " } else { "" },
            if d.is_none() { "chromedriver " } else { "" },
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Runs `script` (a function body returning a value) in the page until it returns
/// something truthy; that value.
async fn wait_js(c: &Client, what: &str, timeout: Duration, script: &str) -> Value {
    let t0 = Instant::now();
    let mut last = Value::Null;
    while t0.elapsed() < timeout {
        match c.execute(script, vec![]).await {
            Ok(v) if !(v.is_null() || v == json!(false) || v == json!("")) => return v,
            Ok(v) => last = v,
            Err(e) => last = json!(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = c
        .execute("return document.body.innerText", vec![])
        .await
        .unwrap_or_default();
    panic!("waited {timeout:?} for {what}; last: {last}; page:\n{page}");
}

/// Clicks the element at `css` (the tables are redrawn as the page polls: a row
/// may be replaced between finding and clicking, so retry).
async fn click(c: &Client, css: &str) {
    let t0 = Instant::now();
    loop {
        let r = match c.find(Locator::Css(css)).await {
            Ok(e) => e.click().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("clicking {css}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The counter's log: every value it counted, in order.
fn counted(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_headless_chromium() {
    let (chromium, chromedriver) = browser_binaries();
    let mut started = Started::default();
    let dir = tempfile::Builder::new()
        .prefix("godwit-dash")
        .tempdir()
        .unwrap();
    let tokens = dir.path().join("tokens");
    private(
        &tokens,
        &format!("read {READER}\nread,operate,exec {OPERATOR}\n"),
    );

    // godwitd with its dashboard on a free loopback port.
    let godwitd = Path::new(env!("CARGO_BIN_EXE_godwit"))
        .parent()
        .unwrap()
        .join("godwitd");
    assert!(
        godwitd.exists(),
        "{} missing: build it first (cargo build -p godwitd)",
        godwitd.display()
    );
    let progs = common::progs();
    let mut agent = Command::new(&godwitd)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--dashboard",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&tokens)
        .arg("--allow-exec")
        .arg(format!("{}/", progs.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    started.children.push(agent);
    let (mut url, mut node) = (String::new(), String::new());
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(u) = line.strip_prefix("GODWITD_DASHBOARD ") {
            url = u.trim().to_string();
        } else if let Some(n) = line.strip_prefix("GODWITD_READY ") {
            node = n.trim().to_string();
        }
    }
    assert!(
        url.starts_with("https://127.0.0.1:") && !node.is_empty(),
        "{url} {node}"
    );

    // A real process started under it: the counter, through POST /v1/exec.
    let log = dir.path().join("counter.log");
    let client = godwit_agent_client::Agent::new(&node, OPERATOR.to_string()).unwrap();
    let v = client
        .exec(
            progs.join("counter").to_str().unwrap(),
            &[log.display().to_string()],
            json!({}),
            Duration::ZERO,
        )
        .await
        .unwrap();
    let pid = v["pid"].as_i64().unwrap() as i32;
    started.pids.push(pid);
    common::wait_for("the counter", Duration::from_secs(10), || {
        counted(&log).len() >= 3
    });

    // chromedriver on its own port, the browser under it.
    let port = free_port();
    let driver = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    started.trees.push(driver.id() as i32);
    started.children.push(driver);
    common::wait_for("chromedriver", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let profile = dir.path().join("chromium-profile");
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--ignore-certificate-errors", "--window-size=1400,1300",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps.as_object().unwrap().clone());
    let c = builder
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("starting headless chromium through chromedriver");

    let result = drive(&c, &url, pid, &log, &mut started).await;
    let _ = c.close().await;
    drop(started);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The browser part, so that the browser session is closed whatever happens.
async fn drive(
    c: &Client,
    url: &str,
    pid: i32,
    log: &Path,
    started: &mut Started,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    use futures_like::catch;
    catch(async {
        // Not logged in: the page sends us to the login page; the API says 401.
        c.goto(url).await.unwrap();
        let here = c.current_url().await.unwrap();
        assert_eq!(here.path(), "/login", "{here}");
        shot(c, "01-login").await;

        // A wrong token is refused.
        let field = c.find(Locator::Id("token")).await.unwrap();
        field.send_keys("not-a-token-of-this-agent-0123456789").await.unwrap();
        click(c, "#login").await;
        let err = wait_js(
            c,
            "the refusal",
            Duration::from_secs(10),
            "return document.getElementById('login-error') && document.getElementById('login-error').textContent",
        )
        .await;
        assert!(err.as_str().unwrap().contains("wrong token"), "{err}");
        assert_eq!(c.current_url().await.unwrap().path(), "/login");
        let status = c
            .execute(
                "return fetch('/api/v1/processes').then(r => r.status)",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(status, json!(401), "the API without a session");
        shot(c, "02-wrong-token").await;

        // The operator's token: in, and the process is listed.
        let field = c.find(Locator::Id("token")).await.unwrap();
        field.send_keys(OPERATOR).await.unwrap();
        click(c, "#login").await;
        let row = format!("#processes tr[data-pid='{pid}']");
        wait_js(
            c,
            "the process listed",
            Duration::from_secs(15),
            &format!("return document.querySelector(\"{row}\") !== null"),
        )
        .await;
        let kind = wait_js(
            c,
            "its kind",
            Duration::from_secs(5),
            &format!("return document.querySelector(\"{row} .kind\").textContent"),
        )
        .await;
        assert_eq!(kind, json!("started"));
        // The session cookie is out of reach of scripts (HttpOnly).
        let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
        assert!(!cookies.as_str().unwrap().contains("godwit"), "{cookies}");
        shot(c, "03-logged-in").await;

        // An action without the CSRF token is refused, and does nothing.
        let v = c
            .execute(
                &format!(
                    "return fetch('/api/v1/processes/{pid}/checkpoint', {{method: 'POST', body: '{{}}', headers: {{'Content-Type': 'application/json'}}}}).then(async r => [r.status, await r.text()])"
                ),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(v[0], json!(403), "{v}");
        assert!(v[1].as_str().unwrap().contains("CSRF"), "{v}");
        let v = c
            .execute(
                &format!(
                    "return fetch('/api/v1/processes/{pid}/checkpoint', {{method: 'POST', body: '{{}}', headers: {{'X-Godwit-CSRF': 'forged-0123456789'}}}}).then(r => r.status)"
                ),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(v, json!(403), "a wrong CSRF token");
        let n = c
            .execute(
                "return fetch('/api/v1/images').then(r => r.json()).then(v => v.images.length)",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(n, json!(0), "a refused action left a checkpoint");

        // "Checkpoint": the checkpoint appears, the process runs on.
        click(c, &format!("{row} button[data-action='checkpoint']")).await;
        let id = wait_js(
            c,
            "the checkpoint listed",
            Duration::from_secs(30),
            &format!(
                "const r = [...document.querySelectorAll('#images tr[data-image]')].find(r => r.children[1].textContent.split(', ').includes('{pid}')); return r && r.dataset.image"
            ),
        )
        .await;
        let id = id.as_str().unwrap().to_string();
        assert!(
            !common::gone(pid),
            "the process stopped after a checkpoint that leaves it running"
        );
        wait_js(
            c,
            "the checkpoint shown with the process",
            Duration::from_secs(10),
            &format!(
                "return document.querySelector(\"{row} .checkpoints\").textContent.includes('{id}')"
            ),
        )
        .await;
        shot(c, "04-checkpointed").await;

        // "Stop": the process ends and leaves the list.
        click(c, &format!("{row} button[data-action='stop']")).await;
        common::wait_for("the stopped counter to end", Duration::from_secs(10), || {
            common::gone(pid)
        });
        wait_js(
            c,
            "the stopped process gone from the list",
            Duration::from_secs(10),
            &format!("return document.querySelector(\"{row}\") === null"),
        )
        .await;
        let stopped_at = counted(log).len();

        // "Restore" on the checkpoint: the process is back, counting on.
        click(
            c,
            &format!("#images tr[data-image='{id}'] button[data-action='restore']"),
        )
        .await;
        started.pids.push(pid);
        let origin = wait_js(
            c,
            "the restored process listed",
            Duration::from_secs(30),
            &format!(
                "const r = document.querySelector(\"{row}\"); return r && r.dataset.kind === 'transparent' && r.querySelector('.origin').textContent"
            ),
        )
        .await;
        assert_eq!(origin, json!(format!("restored from image {id}")));
        common::wait_for("the restored counter", Duration::from_secs(10), || {
            counted(log).len() >= stopped_at + 3
        });
        // From the checkpoint on: the values counted after it and before the stop are
        // counted again, in order, with no gap.
        let values = counted(log);
        let restart = values
            .windows(2)
            .position(|w| w[1] <= w[0])
            .map(|i| i + 1)
            .expect("the restored counter goes back to the checkpoint's value");
        for w in values[restart..].windows(2) {
            assert_eq!(w[1], w[0] + 1, "a gap in the restored counter");
        }
        assert!(values[restart] <= values[restart - 1]);

        // The plot marks what happened: the checkpoint, the restore, the stop.
        for kind in ["checkpoint", "restore", "stop"] {
            wait_js(
                c,
                &format!("a {kind} marker on the plot"),
                Duration::from_secs(10),
                &format!(
                    "return document.querySelector(\"#load-plot line.marker[data-kind='{kind}']\") !== null"
                ),
            )
            .await;
        }
        wait_js(
            c,
            "a load line on the plot",
            Duration::from_secs(10),
            "return document.querySelector('#load-plot polyline') !== null",
        )
        .await;
        let note = c
            .find(Locator::Id("nodes-note"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(note.contains("not available"), "{note}");
        shot(c, "05-restored").await;

        // A read-only token may look but not act.
        click(c, "#logout").await;
        wait_js(
            c,
            "the login page after logout",
            Duration::from_secs(10),
            "return location.pathname === '/login' && document.getElementById('token') !== null",
        )
        .await;
        let field = c.find(Locator::Id("token")).await.unwrap();
        field.send_keys(READER).await.unwrap();
        click(c, "#login").await;
        wait_js(
            c,
            "the process listed to the reader",
            Duration::from_secs(15),
            &format!("return document.querySelector(\"{row}\") !== null"),
        )
        .await;
        let disabled = c
            .execute(
                &format!(
                    "return document.querySelector(\"{row} button[data-action='checkpoint']\").disabled"
                ),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(disabled, json!(true), "actions offered to a read-only token");
        let v = c
            .execute(
                &format!(
                    "return fetch('/dash/session').then(r => r.json()).then(s => fetch('/api/v1/processes/{pid}/checkpoint', {{method: 'POST', body: '{{}}', headers: {{'X-Godwit-CSRF': s.csrf}}}})).then(async r => [r.status, await r.text()])"
                ),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(v[0], json!(403), "{v}");
        assert!(v[1].as_str().unwrap().contains("operate"), "{v}");
        shot(c, "06-read-only").await;
    })
    .await
}

/// Catching a panic of an async block (so that the browser is closed first).
mod futures_like {
    use std::future::Future;
    use std::panic::AssertUnwindSafe;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Catch<F>(Pin<Box<F>>);

    impl<F: Future<Output = ()>> Future for Catch<F> {
        type Output = Result<(), Box<dyn std::any::Any + Send>>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let f = self.0.as_mut();
            match std::panic::catch_unwind(AssertUnwindSafe(|| f.poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e)),
            }
        }
    }

    pub fn catch<F: Future<Output = ()>>(f: F) -> Catch<F> {
        Catch(Box::pin(f))
    }
}

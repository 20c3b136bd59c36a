//! The operator's dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver (fantoccini): godwitd with
//! `--dashboard` on loopback, a real process started under it, login (a wrong
//! token refused), the process listed, "Checkpoint" pressed and the checkpoint
//! listed, the process stopped, the checkpoint restored and the process counting
//! on from where it was; an action without the CSRF token refused; a read-only
//! token may look, not act. Also a conformist service (the bank) managed from the
//! page, and a migration between two agents. Screenshots of every step, and each
//! godwitd's log, go to target/dashboard-screenshots/. Without chromium and
//! chromedriver the tests fail (saying how to install them): they never skip.

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
    /// Whether a browser was started (its strays are looked for at the end).
    browser: bool,
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
        let pids: Vec<i32> = self.pids.drain(..).filter(|p| *p > 0).collect();
        for p in &pids {
            // SAFETY: as above, one PID this test had the agent start or restore.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Their agents are gone: they come back to this process (a subreaper) to be
        // reaped.
        for p in pids {
            common::reaped(p);
        }
        if self.browser {
            // The browser's helpers that left its tree (chrome_crashpad_handler starts
            // its own session) come back to this process, a subreaper: only the
            // browser this test started makes such children here.
            for _ in 0..50 {
                let strays: Vec<i32> = common::descendants(std::process::id() as i32)
                    .into_iter()
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.starts_with("chrom"))
                    })
                    .collect();
                if strays.is_empty() {
                    break;
                }
                for p in strays {
                    // SAFETY: kill(2) and waitpid(2) on one positive PID, a process
                    // of the browser this test started, now our child.
                    unsafe {
                        libc::kill(p, libc::SIGKILL);
                        libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
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

/// One browser test at a time: each runs a whole Chromium.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// godwitd on loopback with the test's token file, allowed to start `allow`, with its
/// dashboard when `dashboard`, logging to target/dashboard-screenshots/
/// godwitd-TEST-NAME.log: (its node address, the dashboard's URL).
fn godwitd(
    started: &mut Started,
    dir: &Path,
    test: &str,
    name: &str,
    allow: &Path,
    dashboard: bool,
) -> (String, String) {
    // What the agents start comes back to this process when they end.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let tokens = dir.join("tokens");
    if !tokens.exists() {
        private(
            &tokens,
            &format!("read,operate,exec {OPERATOR}\nread {READER}\n"),
        );
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_godwit"))
        .parent()
        .unwrap()
        .join("godwitd");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p godwitd)",
        bin.display()
    );
    let mut cmd = Command::new(&bin);
    cmd.args(["--listen", "127.0.0.1:0", "--node-name", name, "--data"])
        .arg(dir.join(name))
        .arg("--token-file")
        .arg(&tokens)
        .arg("--allow-exec")
        .arg(allow)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its log beside the screenshots (test output).
        .stderr(
            std::fs::File::create(screenshots().join(format!("godwitd-{test}-{name}.log")))
                .unwrap(),
        );
    if dashboard {
        cmd.args(["--dashboard", "127.0.0.1:0"]);
    }
    let mut agent = cmd.spawn().unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    started.children.push(agent);
    let (mut url, mut node) = (String::new(), String::new());
    while node.is_empty() {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("godwitd ended before it was ready");
        }
        if let Some(u) = line.strip_prefix("GODWITD_DASHBOARD ") {
            url = u.trim().to_string();
        } else if let Some(n) = line.strip_prefix("GODWITD_READY ") {
            node = n.trim().to_string();
        }
    }
    if dashboard {
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    }
    (node, url)
}

/// chromedriver on its own port and a headless Chromium session through it.
async fn browser(started: &mut Started, dir: &Path) -> Client {
    let (chromium, chromedriver) = browser_binaries();
    // Whatever the browser leaves behind comes back to us, to be ended at the end.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    started.browser = true;
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
    let profile = dir.join("chromium-profile");
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--ignore-certificate-errors", "--window-size=1400,1300",
                     "--disable-crash-reporter", "--no-first-run",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
    builder.capabilities(caps.as_object().unwrap().clone());
    builder
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("starting headless chromium through chromedriver")
}

/// Logs in with `token` and waits for the page.
async fn login(c: &Client, url: &str, token: &str) {
    c.goto(&format!("{url}login")).await.unwrap();
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    click(c, "#login").await;
    wait_js(
        c,
        "the dashboard after login",
        Duration::from_secs(15),
        "return document.getElementById('updated') && document.getElementById('updated').textContent.startsWith('updated')",
    )
    .await;
}

#[test]
fn dashboard_in_headless_chromium() {
    let _one = BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(dashboard_in_headless_chromium_in_browser());
}

async fn dashboard_in_headless_chromium_in_browser() {
    let mut started = Started::default();
    let dir = tempfile::Builder::new()
        .prefix("godwit-dash")
        .tempdir()
        .unwrap();
    let progs = common::progs();
    let (node, url) = godwitd(
        &mut started,
        dir.path(),
        "main",
        "data",
        &progs.join("counter"),
        true,
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
    let c = browser(&mut started, dir.path()).await;
    let result = drive(&c, &url, &node, pid, &log, &mut started).await;
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
    node: &str,
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

        // "Protect": listed among the protected processes, owned by this node.
        click(c, &format!("{row} button[data-action='protect']")).await;
        wait_js(
            c,
            "the process listed as protected",
            Duration::from_secs(15),
            &format!(
                "return [...document.querySelectorAll(\"#protected tr[data-role-kind='owned']\")].some(r => r.children[1].textContent === '{pid}' && r.querySelector('.gen').textContent === '1')"
            ),
        )
        .await;
        shot(c, "04b-protected").await;

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
        wait_js(
            c,
            "this node listed alive",
            Duration::from_secs(10),
            &format!("return document.querySelector(\"#nodes tr[data-node='{node}'][data-health='alive']\") !== null"),
        )
        .await;
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

/// The bank example (a conformist service), built next to `godwit` when missing.
fn bank_bin() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_godwit")).parent().unwrap();
    let bin = dir.join("bank");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "bank", "--target-dir"])
            .arg(dir.parent().unwrap())
            .status()
            .expect("run cargo build -p bank");
        assert!(status.success(), "building the bank example failed");
    }
    bin
}

/// POSTs `body` to the dashboard's API from the page, with the session's CSRF token:
/// [status, answer].
async fn post_from_page(c: &Client, path: &str, body: Value) -> Value {
    c.execute(
        &format!(
            "return fetch('/dash/session').then(r => r.json()).then(s => fetch('/api{path}', {{method: 'POST', body: JSON.stringify(arguments[0]), headers: {{'X-Godwit-CSRF': s.csrf, 'Content-Type': 'application/json'}}}})).then(async r => [r.status, await r.json()])"
        ),
        vec![body],
    )
    .await
    .unwrap()
}

/// A conformist service (the bank) in the dashboard: listed with where it runs and its
/// checkpoints; "Checkpoint", "Set interval", "Restore" of a chosen checkpoint, "Stop"
/// (a final checkpoint) and "Start" (the same UUID, resumed from its newest checkpoint).
#[test]
fn services_in_headless_chromium() {
    let _one = BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(services_in_headless_chromium_in_browser());
}

async fn services_in_headless_chromium_in_browser() {
    let mut started = Started::default();
    let dir = tempfile::Builder::new()
        .prefix("godwit-dash-svc")
        .tempdir()
        .unwrap();
    let bank = bank_bin();
    let (node, url) = godwitd(&mut started, dir.path(), "services", "data", &bank, true);
    let agent_url = format!("agent://{node}");
    let client = godwit_agent_client::Agent::new(&node, OPERATOR.to_string()).unwrap();
    let v = client
        .exec(
            bank.to_str().unwrap(),
            &[
                "serve".into(),
                "--names".into(),
                agent_url.clone(),
                "--store".into(),
                agent_url,
            ],
            json!({}),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let pid = v["pid"].as_i64().unwrap() as i32;
    started.pids.push(pid);
    let uuid = v["ready"]["uuid"].as_str().unwrap().to_string();
    let c = browser(&mut started, dir.path()).await;
    let result = futures_like::catch(async {
        login(&c, &url, OPERATOR).await;
        let row = format!("#services tr[data-uuid='{uuid}']");
        let state = wait_js(
            &c,
            "the service listed as running",
            Duration::from_secs(15),
            &format!("const r = document.querySelector(\"{row}\"); return r && r.children[4].textContent"),
        )
        .await;
        assert_eq!(state, json!(format!("running (pid {pid})")));
        let checkpoints = |n: usize| {
            format!(
                "const r = document.querySelector(\"{row}\"); return r && r.querySelectorAll(\"select[data-role='checkpoint'] option\").length >= {n}"
            )
        };

        // "Checkpoint", twice: both listed and offered for a restore.
        click(&c, &format!("{row} button[data-action='checkpoint']")).await;
        wait_js(&c, "a first checkpoint", Duration::from_secs(20), &checkpoints(1)).await;
        click(&c, &format!("{row} button[data-action='checkpoint']")).await;
        wait_js(&c, "a second checkpoint", Duration::from_secs(20), &checkpoints(2)).await;
        shot(&c, "11-service-checkpoints").await;

        // "Set interval": the service checkpoints every 2.5 s now.
        let secs = c
            .find(Locator::Css(&format!("{row} input[data-role='interval']")))
            .await
            .unwrap();
        secs.send_keys("2.5").await.unwrap();
        click(&c, &format!("{row} button[data-action='interval']")).await;
        wait_js(
            &c,
            "the interval set",
            Duration::from_secs(10),
            "return document.getElementById('message').textContent.includes('interval of') && document.getElementById('message').textContent.endsWith('done')",
        )
        .await;
        let st = post_from_page(&c, &format!("/v1/services/{uuid}/manage"), json!({"op": "status"})).await;
        assert_eq!(st[0], json!(200), "{st}");
        assert_eq!(st[1]["interval_secs"], json!(2.5), "{st}");

        // "Stop": it ends (with a final checkpoint).
        let stopped_state = format!("const r = document.querySelector(\"{row}\"); return r && !r.children[4].textContent.startsWith('running') && r.querySelector(\"button[data-action='start']\").disabled === false");
        let running_state = |old: i32| format!("const r = document.querySelector(\"{row}\"); const t = r && r.children[4].textContent; return t && t.startsWith('running') && t !== 'running (pid {old})' && t");
        let pid_of = |v: Value| -> i32 {
            v.as_str()
                .unwrap()
                .trim_start_matches("running (pid ")
                .trim_end_matches(')')
                .parse()
                .unwrap()
        };
        click(&c, &format!("{row} button[data-action='stop']")).await;
        common::wait_for("the bank to stop", Duration::from_secs(20), || common::gone(pid));
        wait_js(&c, "the service shown stopped", Duration::from_secs(15), &stopped_state).await;
        shot(&c, "12-service-stopped").await;

        // "Restore" the oldest checkpoint (chosen in the list): the same UUID runs
        // again from it.
        let oldest = c
            .execute(
                &format!(
                    "const o = document.querySelectorAll(\"{row} select[data-role='checkpoint'] option\"); const s = document.querySelector(\"{row} select[data-role='checkpoint']\"); s.value = o[o.length - 1].value; return s.value"
                ),
                vec![],
            )
            .await
            .unwrap();
        let oldest = oldest.as_str().unwrap().to_string();
        click(&c, &format!("{row} button[data-action='restore']")).await;
        let again = wait_js(&c, "the service restored", Duration::from_secs(30), &running_state(pid)).await;
        let restored_pid = pid_of(again);
        started.pids.push(restored_pid);
        let msg = c.find(Locator::Id("message")).await.unwrap().text().await.unwrap();
        assert!(msg.starts_with(&format!("restore of {uuid} to {oldest}")) && msg.ends_with("done"), "{msg}");
        let st = post_from_page(&c, &format!("/v1/services/{uuid}/manage"), json!({"op": "status"})).await;
        assert_eq!(st[0], json!(200), "{st}");
        assert_eq!(st[1]["restored_from"], json!(oldest), "{st}");
        shot(&c, "13-service-restored").await;

        // "Stop" and "Start": from its newest checkpoint, the same UUID again.
        click(&c, &format!("{row} button[data-action='stop']")).await;
        common::wait_for("the restored bank to stop", Duration::from_secs(20), || common::gone(restored_pid));
        wait_js(&c, "the service shown stopped again", Duration::from_secs(15), &stopped_state).await;
        click(&c, &format!("{row} button[data-action='start']")).await;
        let again = wait_js(&c, "the service running again", Duration::from_secs(30), &running_state(restored_pid)).await;
        let new_pid = pid_of(again);
        started.pids.push(new_pid);
        let names = c
            .execute(
                &format!("return fetch('/api/v1/names/{uuid}').then(r => r.status)"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(names, json!(200), "the restarted service is in the name service");
        shot(&c, "14-service-started").await;

        // "Migrate" to B, chosen among the live nodes: it serves there (B's page lists
        // it running), this page shows it running elsewhere and offers no Start.
        let (node_b, url_b) = godwitd(&mut started, dir.path(), "services", "b", &bank, true);
        let b = godwit_agent_client::Agent::new(&node_b, OPERATOR.to_string()).unwrap();
        for (agent, name, addr) in [(&client, "b", &node_b), (&b, "a", &node)] {
            agent
                .request("node add", "POST", "/v1/nodes", Some(json!({"name": name, "addr": addr})), Duration::from_secs(10))
                .await
                .unwrap();
        }
        wait_js(
            &c,
            "B offered as a target for the service",
            Duration::from_secs(15),
            &format!("return document.querySelector(\"{row} select[data-role='target'] option[value='{node_b}']\") !== null"),
        )
        .await;
        c.execute(
            &format!("const s = document.querySelector(\"{row} select[data-role='target']\"); s.value = '{node_b}'; return s.value"),
            vec![],
        )
        .await
        .unwrap();
        click(&c, &format!("{row} button[data-action='migrate']")).await;
        let msg = wait_js(
            &c,
            "the service migrated",
            Duration::from_secs(60),
            "const m = document.getElementById('message').textContent; return m.startsWith('migration of') && !m.endsWith('…') && m",
        )
        .await;
        let msg = msg.as_str().unwrap();
        assert!(msg.contains(": done (serving at ") && msg.contains(&format!(" on {node_b}")), "{msg}");
        let moved_pid: i32 = msg
            .split(", pid ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {msg}"));
        started.pids.push(moved_pid);
        common::wait_for("the instance on A to end", Duration::from_secs(20), || common::gone(new_pid));
        wait_js(
            &c,
            "the service shown running elsewhere, not startable here",
            Duration::from_secs(15),
            &format!("const r = document.querySelector(\"{row}\"); return r && r.children[4].textContent.startsWith('runs elsewhere') && r.querySelector(\"button[data-action='start']\").disabled"),
        )
        .await;
        shot(&c, "15-service-migrated").await;
        login(&c, &url_b, OPERATOR).await;
        let there = wait_js(
            &c,
            "the service listed running on B",
            Duration::from_secs(15),
            &format!("const r = document.querySelector(\"{row}\"); return r && r.children[4].textContent"),
        )
        .await;
        assert_eq!(there, json!(format!("running (pid {moved_pid})")));
        c.execute("document.getElementById('services-section').scrollIntoView()", vec![])
            .await
            .unwrap();
        shot(&c, "16-service-on-the-other-node").await;
    })
    .await;
    let _ = c.close().await;
    drop(started);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// "Migrate" a process to another node (a second godwitd on loopback, the same token
/// file, a new PID namespace there since both run on this host): it leaves this node's
/// list, runs there, counting on.
#[test]
fn migrate_in_headless_chromium() {
    let _one = BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    runtime().block_on(migrate_in_headless_chromium_in_browser());
}

async fn migrate_in_headless_chromium_in_browser() {
    let mut started = Started::default();
    let dir = tempfile::Builder::new()
        .prefix("godwit-dash-mig")
        .tempdir()
        .unwrap();
    let progs = common::progs();
    let counter = progs.join("counter");
    let (node_a, url) = godwitd(&mut started, dir.path(), "migrate", "a", &counter, true);
    let (node_b, _) = godwitd(&mut started, dir.path(), "migrate", "b", &counter, false);
    let log = dir.path().join("counter.log");
    let a = godwit_agent_client::Agent::new(&node_a, OPERATOR.to_string()).unwrap();
    let v = a
        .exec(
            counter.to_str().unwrap(),
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
    let b = godwit_agent_client::Agent::new(&node_b, OPERATOR.to_string()).unwrap();
    // Each a peer of the other: the page lists B with its health and load.
    for (agent, name, addr) in [(&a, "b", &node_b), (&b, "a", &node_a)] {
        agent
            .request(
                "node add",
                "POST",
                "/v1/nodes",
                Some(json!({"name": name, "addr": addr})),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let c = browser(&mut started, dir.path()).await;
    let result = futures_like::catch(async {
        login(&c, &url, OPERATOR).await;
        let row = format!("#processes tr[data-pid='{pid}']");
        wait_js(
            &c,
            "the process listed",
            Duration::from_secs(15),
            &format!("return document.querySelector(\"{row}\") !== null"),
        )
        .await;
        let to = c
            .find(Locator::Css(&format!("{row} input[data-role='target-text']")))
            .await
            .unwrap();
        // A destination that does not answer: refused, saying so, the process untouched.
        to.send_keys("127.0.0.1:1").await.unwrap();
        click(&c, &format!("{row} button[data-action='migrate']")).await;
        let refused = wait_js(
            &c,
            "the failed migration reported",
            Duration::from_secs(30),
            "const m = document.getElementById('message').textContent; return m.startsWith('migration of') && !m.endsWith('…') && m",
        )
        .await;
        assert!(refused.as_str().unwrap().contains("not touched"), "{refused}");
        assert!(!common::gone(pid), "a failed migration ended the process");
        let before = counted(&log).len();
        common::wait_for("the counter after a failed migration", Duration::from_secs(10), || {
            counted(&log).len() >= before + 3
        });
        wait_js(
            &c,
            "a failure marker on the plot",
            Duration::from_secs(10),
            "return document.querySelector(\"#load-plot line.marker[data-kind='failure']\") !== null",
        )
        .await;
        shot(&c, "20-migration-refused").await;
        let to = c
            .find(Locator::Css(&format!("{row} input[data-role='target-text']")))
            .await
            .unwrap();
        to.clear().await.unwrap();
        // B, chosen in the list of nodes.
        wait_js(
            &c,
            "B listed alive, with its load on the plot",
            Duration::from_secs(15),
            &format!("return document.querySelector(\"#nodes tr[data-node='{node_b}'][data-health='alive']\") !== null && document.querySelector(\"#load-plot polyline[data-node='{node_b}']\") !== null"),
        )
        .await;
        let chosen = c
            .execute(
                &format!("const s = document.querySelector(\"{row} select[data-role='target']\"); s.value = '{node_b}'; return s.value"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(chosen, json!(node_b), "B is not offered as a target");
        click(&c, &format!("{row} input[data-role='pidns']")).await;
        click(&c, &format!("{row} button[data-action='migrate']")).await;
        wait_js(
            &c,
            "the migration done",
            Duration::from_secs(60),
            "const m = document.getElementById('message').textContent; return m.startsWith('migration of') && !m.endsWith('…') && m",
        )
        .await;
        let msg = c
            .find(Locator::Id("message"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(msg.ends_with("done"), "{msg}");
        // At B, adopted; its host PID is the one to kill at the end.
        let ps = b
            .request("ps", "GET", "/v1/processes", None, Duration::from_secs(10))
            .await
            .unwrap();
        let there = ps["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "transparent")
            .unwrap_or_else(|| panic!("nothing migrated to B: {ps}"))
            .clone();
        started.pids.push(there["pid"].as_i64().unwrap() as i32);
        assert!(
            there["origin"].as_str().unwrap().starts_with("migrated from"),
            "{there}"
        );
        common::wait_for("the original to end", Duration::from_secs(10), || common::gone(pid));
        wait_js(
            &c,
            "the process gone from A's list",
            Duration::from_secs(10),
            &format!("return document.querySelector(\"{row}\") === null"),
        )
        .await;
        let before = counted(&log).len();
        common::wait_for("the migrated counter", Duration::from_secs(10), || {
            counted(&log).len() >= before + 3
        });
        let values = counted(&log);
        for w in values.windows(2) {
            assert_eq!(w[1], w[0] + 1, "a gap or a repeat across the migration");
        }
        wait_js(
            &c,
            "a migration marker on the plot",
            Duration::from_secs(10),
            "return document.querySelector(\"#load-plot line.marker[data-kind='migration']\") !== null",
        )
        .await;
        shot(&c, "21-migrated").await;

        // The balancing switch: on, then off again, as the agent says.
        for on in [true, false] {
            click(&c, "#balancing").await;
            wait_js(
                &c,
                "the balancing switch followed",
                Duration::from_secs(10),
                &format!("return document.getElementById('balancing-state').textContent === '{}'", if on { "on" } else { "off" }),
            )
            .await;
            let v = a
                .request("balance", "GET", "/v1/balance", None, Duration::from_secs(10))
                .await
                .unwrap();
            assert_eq!(v["enabled"], json!(on), "{v}");
            if on {
                shot(&c, "22-balancing-on").await;
            }
        }
    })
    .await;
    let _ = c.close().await;
    drop(started);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

//! The etcd backend against a real etcd server started here (Debian's `etcd-server`).
//! Skipped, saying so, only when no `etcd` binary is installed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use godwit_names::Names;

struct Etcd {
    child: Child,
    client_url: String,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A temporary directory removed on drop (no extra dependency for one test).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_binary() -> Option<String> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| format!("{d}/etcd"))
        .find(|p| std::path::Path::new(p).is_file())
}

async fn start_etcd(bin: &str) -> Etcd {
    let dir = std::env::temp_dir().join(format!("godwit-etcd-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (cp, pp) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{cp}");
    let peer_url = format!("http://127.0.0.1:{pp}");
    let child = Command::new(bin)
        .arg("--name")
        .arg("godwit-test")
        .arg("--data-dir")
        .arg(&dir)
        .arg("--listen-client-urls")
        .arg(&client_url)
        .arg("--advertise-client-urls")
        .arg(&client_url)
        .arg("--listen-peer-urls")
        .arg(&peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer_url)
        .arg("--initial-cluster")
        .arg(format!("godwit-test={peer_url}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd = Etcd {
        child,
        client_url,
        _dir: tempfile_dir::Dir(dir),
    };
    let names = Names::from_url(&format!("etcd+{}", etcd.client_url), None).unwrap();
    for _ in 0..300 {
        if names.list().await.is_ok() {
            return etcd;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("etcd at {} did not become ready", etcd.client_url);
}

#[tokio::test]
async fn etcd_backend_end_to_end() {
    let Some(bin) = etcd_binary() else {
        eprintln!("SKIPPED etcd_backend_end_to_end: no `etcd` binary on PATH (apt-get install etcd-server)");
        return;
    };
    let etcd = start_etcd(&bin).await;
    let names = Names::from_url(&format!("etcd+{}", etcd.client_url), None).unwrap();
    let mut lease = names
        .advertise("svc-1", "10.0.0.1:4000", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(
        names.resolve("svc-1").await.unwrap().as_deref(),
        Some("10.0.0.1:4000")
    );
    assert_eq!(names.resolve("svc-2").await.unwrap(), None);
    names
        .advertise("svc-2", "10.0.0.2:4000", Duration::from_secs(30))
        .await
        .unwrap();
    let mut list: Vec<_> = names
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.uuid, r.address))
        .collect();
    list.sort();
    assert_eq!(
        list,
        vec![
            ("svc-1".into(), "10.0.0.1:4000".into()),
            ("svc-2".into(), "10.0.0.2:4000".into())
        ]
    );
    // Keep-alive keeps the binding past its TTL.
    for _ in 0..4 {
        names.refresh(&mut lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(
        names.resolve("svc-1").await.unwrap().as_deref(),
        Some("10.0.0.1:4000")
    );
    // Compare-and-delete.
    assert!(!names.withdraw("svc-1", "10.9.9.9:1").await.unwrap());
    assert!(names.withdraw("svc-1", "10.0.0.1:4000").await.unwrap());
    assert_eq!(names.resolve("svc-1").await.unwrap(), None);
    // A refresh after the binding vanished re-creates it (re-advertise).
    names.refresh(&mut lease).await.unwrap();
    assert_eq!(
        names.resolve("svc-1").await.unwrap().as_deref(),
        Some("10.0.0.1:4000")
    );
    // Without refreshes the lease expires and the binding disappears.
    let _short = names
        .advertise("svc-3", "10.0.0.3:1", Duration::from_secs(1))
        .await
        .unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if names.resolve("svc-3").await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "an unrefreshed lease must expire");
    // Unreachable etcd is a transport error, not a panic.
    let dead = Names::from_url("etcd+http://127.0.0.1:1", None).unwrap();
    assert!(dead.resolve("x").await.is_err());
}

//! Options every conformist service accepts (see docs/SDK.md, "Running a service").

use std::path::PathBuf;
use std::time::Duration;

use godwit_names::Names;

use crate::durable::SyncMode;
use crate::store::Store;
pub use crate::worker::DEFAULT_WORKER_WAIT;

/// Bad command-line options.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// Unknown flag.
    #[error("unknown option `{0}` (see docs/SDK.md for the service options)")]
    Unknown(String),
    /// Flag without its value.
    #[error("option `{0}` needs a value")]
    MissingValue(String),
    /// Value not understood.
    #[error("option `{flag}`: {message}")]
    BadValue {
        /// Flag.
        flag: String,
        /// Why.
        message: String,
    },
}

/// How a service instance runs.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Instance UUID; a new one when absent (a restore keeps the checkpoint's).
    pub uuid: Option<String>,
    /// Listening address, `127.0.0.1:0` by default.
    pub listen: String,
    /// Address to advertise when it differs from the bound one.
    pub advertise: Option<String>,
    /// Name service.
    pub names: Names,
    /// Checkpoint store.
    pub store: Store,
    /// Its own token (`--token-file`, `GODWIT_TOKEN`): accepted on management requests,
    /// and proved to any godwitd (name service, store) other than the one that started
    /// this process (which gave it `GODWIT_AGENT_TOKEN`). Started by `godwit service`,
    /// it is a grant of those agents, never the operator's token.
    pub token: Option<String>,
    /// The management credential the agent that started this process gave it
    /// (`GODWIT_MANAGE_TOKEN`): accepted on management requests, like `token`. Never the
    /// operator's token.
    pub manage_token: Option<String>,
    /// Service-call authentication (`--call-token-file FILE`): when set, a connection
    /// must present this token (HELLO frame) before its first call, or it is refused.
    pub call_token: Option<String>,
    /// The file `call_token` was read from (relaunched with it on migration).
    pub call_token_file: Option<PathBuf>,
    /// CA file to verify godwitd's certificate (PKI mode); none: the token binding
    /// alone authenticates the agent.
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS on the service port (`--tls-cert FILE --tls-key FILE --tls-client-ca
    /// FILE`, all three or none): the service presents this certificate (PEM chain) and
    /// key, and a call is served only on a TLS connection whose client certificate the
    /// client CA signed; a client without one is refused at the handshake.
    pub call_tls: Option<CallTls>,
    /// Periodic checkpoint interval (none: only on request); within
    /// [`MIN_INTERVAL_SECS`]..=[`MAX_INTERVAL_SECS`].
    pub interval: Option<Duration>,
    /// Which checkpoints the store keeps for this service.
    pub retention: Retention,
    /// Start in standby: wait for a `restore` (or `start`) management request.
    pub standby: bool,
    /// Restore this checkpoint (`latest` or an id) at start.
    pub restore: Option<String>,
    /// Restore `latest` at start when the store has a checkpoint of this UUID, else
    /// start fresh (what a restart after a crash does).
    pub resume: bool,
    /// Name-service lease length.
    pub lease: Duration,
    /// Arguments placed before the service options when the service is relaunched on
    /// another node (e.g. `["serve"]`).
    pub relaunch_args: Vec<String>,
    /// Handle SIGTERM/SIGINT (deregister, final checkpoint, exit).
    pub handle_signals: bool,
    /// Print `GODWIT_READY <address> <uuid>` on stdout once listening.
    pub announce: bool,
    /// How long a checkpoint waits for every worker to reach a safe point
    /// (`--worker-wait SECS`, default [`DEFAULT_WORKER_WAIT`]).
    pub worker_wait: Duration,
    /// Durable calls (`--durable-log DIR`): write calls are logged to
    /// `DIR/<uuid>.calls` and on disk before their reply.
    pub durable_log: Option<PathBuf>,
    /// When durable writes are forced to disk (`--durable-sync each|group`).
    pub durable_sync: SyncMode,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            uuid: None,
            listen: "127.0.0.1:0".into(),
            advertise: None,
            names: Names::from_url("memory", None).expect("`memory` is a valid name service"),
            store: Store::Dir(PathBuf::from("godwit-checkpoints")),
            token: None,
            manage_token: None,
            call_token: None,
            call_token_file: None,
            tls_ca: None,
            call_tls: None,
            interval: None,
            retention: Retention::default(),
            standby: false,
            restore: None,
            resume: false,
            lease: Duration::from_secs(5),
            relaunch_args: Vec::new(),
            handle_signals: true,
            announce: true,
            worker_wait: DEFAULT_WORKER_WAIT,
            durable_log: None,
            durable_sync: SyncMode::Each,
        }
    }
}

/// The PEM files of mutual TLS on the service port (see [`ServiceOptions::call_tls`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CallTls {
    /// The service's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA (one or more certificates) that signs the clients' certificates.
    pub client_ca: PathBuf,
}

/// Shortest periodic checkpoint interval, in seconds.
pub const MIN_INTERVAL_SECS: f64 = 0.1;
/// Longest periodic checkpoint interval, in seconds (30 days).
pub const MAX_INTERVAL_SECS: f64 = 2_592_000.0;
/// Checkpoints kept per service unless `--keep` says otherwise.
pub const DEFAULT_KEEP: u64 = 20;

/// Which checkpoints of a service the store keeps. After every checkpoint the service
/// removes, oldest first, those beyond `keep`, older than `max_age`, or beyond
/// `max_bytes` in total; the newest (the one just written) is always kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// At most this many checkpoints (at least 1).
    pub keep: u64,
    /// None older than this.
    pub max_age: Option<Duration>,
    /// At most this many bytes of checkpoints in total.
    pub max_bytes: Option<u64>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: DEFAULT_KEEP,
            max_age: None,
            max_bytes: None,
        }
    }
}

/// Checks a periodic checkpoint interval: 0 (off) or within the bounds. The message
/// states the bounds.
pub fn check_interval(secs: f64) -> Result<Option<Duration>, String> {
    if secs == 0.0 {
        return Ok(None);
    }
    if secs.is_finite() && (MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&secs) {
        return Ok(Some(Duration::from_secs_f64(secs)));
    }
    Err(format!(
        "interval {secs} s is out of bounds: give 0 (periodic checkpoints off) or between {MIN_INTERVAL_SECS} s and {MAX_INTERVAL_SECS} s (30 days)"
    ))
}

/// A service's arguments without the options that say which instance it is and where
/// its state comes from (`--uuid`, `--restore` with their values, `--standby`,
/// `--resume`): what a restart or a restore starts it with, before adding its own.
pub fn without_lifecycle_options(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--uuid" | "--restore" => {
                it.next();
            }
            "--standby" | "--resume" => {}
            _ => out.push(a.clone()),
        }
    }
    out
}

fn parse_secs(flag: &str, v: &str) -> Result<Option<Duration>, OptionsError> {
    let secs: f64 = v.parse().map_err(|_| OptionsError::BadValue {
        flag: flag.into(),
        message: format!("`{v}` is not a number of seconds"),
    })?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(OptionsError::BadValue {
            flag: flag.into(),
            message: format!("{secs} is out of range"),
        });
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

impl ServiceOptions {
    /// Parses the service options:
    /// `--uuid U --listen A --advertise A --names URL --store URL --token-file F
    ///  --tls-ca FILE --interval SECS --keep N --keep-secs SECS --keep-bytes BYTES
    ///  --standby --restore ID|latest --resume --lease SECS --call-token-file FILE
    ///  --tls-cert FILE --tls-key FILE --tls-client-ca FILE`.
    /// The token may also come from the `GODWIT_TOKEN` environment variable, the CA from
    /// `GODWIT_TLS_CA`.
    ///
    /// A process started by a godwitd finds `GODWIT_AGENT` (that agent's address) and
    /// `GODWIT_AGENT_TOKEN` (a token the agent made for this process alone, scopes
    /// `service`) in its environment: the name service or store of *that* agent
    /// is then reached with that token; any other agent with the service's own token
    /// (or, lacking one, with the per-process token).
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, OptionsError> {
        let mut o = ServiceOptions {
            token: std::env::var("GODWIT_TOKEN").ok().filter(|t| !t.is_empty()),
            manage_token: std::env::var("GODWIT_MANAGE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            tls_ca: std::env::var_os("GODWIT_TLS_CA")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..Default::default()
        };
        let mut names_url = None;
        let mut store_url = None;
        let (mut tls_cert, mut tls_key, mut tls_client_ca) = (None, None, None);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let mut value = |f: &str| {
                it.next()
                    .ok_or_else(|| OptionsError::MissingValue(f.to_string()))
            };
            match flag.as_str() {
                "--uuid" => {
                    let v = value(&flag)?;
                    uuid::Uuid::parse_str(&v).map_err(|e| OptionsError::BadValue {
                        flag: flag.clone(),
                        message: e.to_string(),
                    })?;
                    o.uuid = Some(v);
                }
                "--listen" => o.listen = value(&flag)?,
                "--advertise" => o.advertise = Some(value(&flag)?),
                "--names" => names_url = Some(value(&flag)?),
                "--store" => store_url = Some(value(&flag)?),
                "--token-file" => {
                    let p = value(&flag)?;
                    let t = std::fs::read_to_string(&p).map_err(|e| OptionsError::BadValue {
                        flag: flag.clone(),
                        message: format!("{p}: {e}"),
                    })?;
                    o.token = Some(t.trim().to_string());
                }
                "--call-token-file" => {
                    let p = value(&flag)?;
                    let t = std::fs::read_to_string(&p).map_err(|e| OptionsError::BadValue {
                        flag: flag.clone(),
                        message: format!("{p}: {e}"),
                    })?;
                    let t = t.trim();
                    if t.len() < 16 || t.chars().any(char::is_whitespace) {
                        return Err(OptionsError::BadValue {
                            flag: flag.clone(),
                            message: format!(
                                "{p}: a call token is one line of at least 16 characters without white space"
                            ),
                        });
                    }
                    o.call_token = Some(t.to_string());
                    o.call_token_file = Some(PathBuf::from(p));
                }
                "--tls-ca" => o.tls_ca = Some(PathBuf::from(value(&flag)?)),
                "--tls-cert" => tls_cert = Some(PathBuf::from(value(&flag)?)),
                "--tls-key" => tls_key = Some(PathBuf::from(value(&flag)?)),
                "--tls-client-ca" => tls_client_ca = Some(PathBuf::from(value(&flag)?)),
                "--interval" => {
                    let v = value(&flag)?;
                    let secs: f64 = v.parse().map_err(|_| OptionsError::BadValue {
                        flag: flag.clone(),
                        message: format!("`{v}` is not a number of seconds"),
                    })?;
                    o.interval =
                        check_interval(secs).map_err(|message| OptionsError::BadValue {
                            flag: flag.clone(),
                            message,
                        })?;
                }
                "--keep" => {
                    let v = value(&flag)?;
                    o.retention.keep =
                        v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            OptionsError::BadValue {
                                flag: flag.clone(),
                                message: format!("`{v}`: give a number of checkpoints, at least 1"),
                            }
                        })?;
                }
                "--keep-secs" => o.retention.max_age = parse_secs(&flag, &value(&flag)?)?,
                "--keep-bytes" => {
                    let v = value(&flag)?;
                    o.retention.max_bytes =
                        Some(v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            OptionsError::BadValue {
                                flag: flag.clone(),
                                message: format!("`{v}`: give a number of bytes, at least 1"),
                            }
                        })?);
                }
                "--lease" => {
                    o.lease = parse_secs(&flag, &value(&flag)?)?.ok_or_else(|| {
                        OptionsError::BadValue {
                            flag: flag.clone(),
                            message: "a lease must be positive".into(),
                        }
                    })?
                }
                "--worker-wait" => {
                    o.worker_wait = parse_secs(&flag, &value(&flag)?)?
                        .filter(|d| *d <= Duration::from_secs(3600))
                        .ok_or_else(|| OptionsError::BadValue {
                            flag: flag.clone(),
                            message: "give a number of seconds above 0 and at most 3600".into(),
                        })?
                }
                "--durable-log" => o.durable_log = Some(PathBuf::from(value(&flag)?)),
                "--durable-sync" => {
                    o.durable_sync = match value(&flag)?.as_str() {
                        "each" => SyncMode::Each,
                        "group" => SyncMode::Group,
                        other => {
                            return Err(OptionsError::BadValue {
                                flag: flag.clone(),
                                message: format!("`{other}`: give `each` (one fdatasync per write) or `group` (group commit)"),
                            })
                        }
                    }
                }
                "--standby" => o.standby = true,
                "--restore" => o.restore = Some(value(&flag)?),
                "--resume" => o.resume = true,
                _ => return Err(OptionsError::Unknown(flag)),
            }
        }
        o.call_tls = match (tls_cert, tls_key, tls_client_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(client_ca)) => Some(CallTls {
                cert,
                key,
                client_ca,
            }),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-client-ca"),
                ]
                .into_iter()
                .filter_map(|(m, f)| m.then_some(f))
                .collect();
                return Err(OptionsError::BadValue {
                    flag: missing.join(", "),
                    message: "mutual TLS on the service port needs all three of --tls-cert, --tls-key and --tls-client-ca".into(),
                });
            }
        };
        let agent = std::env::var("GODWIT_AGENT").ok();
        let agent_token = std::env::var("GODWIT_AGENT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let token_for = |url: &str| -> Option<String> {
            match godwit_names::agent_addr(url) {
                Some(a) if agent.as_deref() == Some(a) && agent_token.is_some() => {
                    agent_token.clone()
                }
                _ => o.token.clone().or_else(|| agent_token.clone()),
            }
        };
        if let Some(u) = names_url {
            o.names =
                Names::from_url_with_ca(&u, token_for(&u), o.tls_ca.as_deref()).map_err(|e| {
                    OptionsError::BadValue {
                        flag: "--names".into(),
                        message: e.to_string(),
                    }
                })?;
        }
        if let Some(u) = store_url {
            o.store =
                Store::from_url_with_ca(&u, token_for(&u), o.tls_ca.as_deref()).map_err(|e| {
                    OptionsError::BadValue {
                        flag: "--store".into(),
                        message: e.to_string(),
                    }
                })?;
        }
        Ok(o)
    }

    /// The options of this SDK that a relaunch (migration) must repeat besides those
    /// the migrating agent adds: `--worker-wait`, `--durable-log`, `--durable-sync`,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca` (the same paths: the files must
    /// exist on the destination node too).
    pub fn sdk_relaunch_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(t) = &self.call_tls {
            for (flag, p) in [
                ("--tls-cert", &t.cert),
                ("--tls-key", &t.key),
                ("--tls-client-ca", &t.client_ca),
            ] {
                out.extend([flag.to_string(), p.display().to_string()]);
            }
        }
        if self.worker_wait != DEFAULT_WORKER_WAIT {
            out.extend([
                "--worker-wait".to_string(),
                self.worker_wait.as_secs_f64().to_string(),
            ]);
        }
        if let Some(d) = &self.durable_log {
            out.extend(["--durable-log".to_string(), d.display().to_string()]);
            out.extend([
                "--durable-sync".to_string(),
                self.durable_sync.as_str().to_string(),
            ]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_and_refuses() {
        let o = ServiceOptions::from_args(args(
            "--listen 10.0.0.1:0 --names agent+http://10.0.0.1:7070 --store dir:/tmp/x --interval 2.5 --standby",
        ))
        .unwrap();
        assert_eq!(o.listen, "10.0.0.1:0");
        // `agent+http://` is an alias of `agent://` (TLS).
        assert_eq!(o.names.url(), "agent://10.0.0.1:7070");
        assert_eq!(o.store.url(), "dir:/tmp/x");
        assert_eq!(o.interval, Some(Duration::from_millis(2500)));
        assert!(o.standby);
        assert!(matches!(
            ServiceOptions::from_args(args("--bogus")),
            Err(OptionsError::Unknown(_))
        ));
        assert!(matches!(
            ServiceOptions::from_args(args("--listen")),
            Err(OptionsError::MissingValue(_))
        ));
        assert!(matches!(
            ServiceOptions::from_args(args("--uuid nope")),
            Err(OptionsError::BadValue { .. })
        ));
        assert!(matches!(
            ServiceOptions::from_args(args("--interval -1")),
            Err(OptionsError::BadValue { .. })
        ));
        for bad in ["1e-9", "99999999999", "0.05", "-1", "NaN", "inf"] {
            let e = ServiceOptions::from_args(args(&format!("--interval {bad}")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("between 0.1 s and 2592000 s") || e.contains("not a number"),
                "{bad}: {e}"
            );
        }
        let o =
            ServiceOptions::from_args(args("--keep 3 --keep-secs 60 --keep-bytes 1000")).unwrap();
        assert_eq!(
            o.retention,
            Retention {
                keep: 3,
                max_age: Some(Duration::from_secs(60)),
                max_bytes: Some(1000)
            }
        );
        assert!(ServiceOptions::from_args(args("--keep 0")).is_err());
        assert!(matches!(
            ServiceOptions::from_args(args("--names zk://x")),
            Err(OptionsError::BadValue { .. })
        ));
        assert_eq!(
            ServiceOptions::from_args(args("--interval 0"))
                .unwrap()
                .interval,
            None
        );
    }

    #[test]
    fn call_tls_takes_all_three_files_and_is_relaunched_with_them() {
        let o = ServiceOptions::from_args(args(
            "--tls-cert /c/s.pem --tls-key /c/s.key --tls-client-ca /c/ca.pem",
        ))
        .unwrap();
        assert_eq!(
            o.call_tls,
            Some(CallTls {
                cert: "/c/s.pem".into(),
                key: "/c/s.key".into(),
                client_ca: "/c/ca.pem".into(),
            })
        );
        assert_eq!(
            o.sdk_relaunch_options(),
            args("--tls-cert /c/s.pem --tls-key /c/s.key --tls-client-ca /c/ca.pem")
        );
        let e = ServiceOptions::from_args(args("--tls-cert /c/s.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-key, --tls-client-ca") && e.contains("all three"),
            "{e}"
        );
        assert!(ServiceOptions::from_args(args(""))
            .unwrap()
            .call_tls
            .is_none());
    }
}

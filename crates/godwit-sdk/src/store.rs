//! Checkpoint stores: a local directory (default) or a godwitd's store (over the
//! authenticated channel of godwit-net).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use godwit_net::http::{HttpRequest, HttpResponse};
use godwit_net::{ClientTls, NetError, Token};

/// Errors of the checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL is not understood.
    #[error("unknown checkpoint store `{0}`: expected `dir:PATH` or `agent://HOST:PORT`")]
    BadUrl(String),
    /// The agent store was given no token, or a bad one, or a bad CA file.
    #[error("checkpoint store {base}: {detail}")]
    Setup {
        /// Agent.
        base: String,
        /// What is missing or wrong.
        detail: String,
    },
    /// A name that could escape the store.
    #[error("invalid {what} `{value}`: only letters, digits, `-`, `_` and `.` are allowed")]
    BadName {
        /// What.
        what: &'static str,
        /// Value.
        value: String,
    },
    /// Local file system error.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The agent could not be reached.
    #[error("checkpoint store {base}: {source}")]
    Transport {
        /// Agent URL.
        base: String,
        /// Cause.
        source: NetError,
    },
    /// The agent refused.
    #[error("checkpoint store {base} refused {op}: HTTP {status}: {message}")]
    Refused {
        /// Agent URL.
        base: String,
        /// Operation.
        op: &'static str,
        /// Status.
        status: u16,
        /// Message.
        message: String,
    },
    /// A checkpoint with this id exists already: ids are never reused.
    #[error(
        "checkpoint `{id}` of service {uuid} exists already (checkpoint ids are never reused)"
    )]
    Exists {
        /// Service.
        uuid: String,
        /// Checkpoint id.
        id: String,
    },
    /// No such checkpoint.
    #[error("no checkpoint `{id}` for service {uuid}")]
    NotFound {
        /// Service.
        uuid: String,
        /// Checkpoint id.
        id: String,
    },
}

/// Where checkpoints go.
#[derive(Debug, Clone)]
pub enum Store {
    /// `DIR/<uuid>/<id>.gwck`; directories 0700, files 0600, written atomically.
    Dir(PathBuf),
    /// A godwitd's store (`/v1/store/...`).
    Agent {
        /// `HOST:PORT`.
        addr: String,
        /// The channel's client side; `None` when no token was given (calls then fail
        /// with [`StoreError::Setup`]).
        client: Option<ClientTls>,
    },
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    /// Id (zero-padded sequence number).
    pub id: String,
    /// Size in bytes.
    pub bytes: u64,
    /// The checkpoint it descends from (`None`: the first of its lineage, or a file
    /// whose description cannot be read).
    pub parent: Option<String>,
    /// Capture time, ms since the Unix epoch (`None` when the description cannot be read).
    pub created_unix_ms: Option<u64>,
}

impl StoredCheckpoint {
    /// The sequence number in the id (ids are zero-padded sequence numbers).
    pub fn seq(&self) -> Option<u64> {
        self.id.parse().ok()
    }
}

/// Checks that a UUID or checkpoint id is a plain file name.
pub fn check_name(what: &'static str, value: &str) -> Result<(), StoreError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName {
            what,
            value: value.to_string(),
        })
    }
}

/// The id of checkpoint number `seq`.
pub fn checkpoint_id(seq: u64) -> String {
    format!("{seq:012}")
}

/// Writes `bytes` to `path` atomically with mode 0600 (temporary file, fsync, rename),
/// creating parent directories with mode 0700.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = p.to_path_buf();
        move |source| StoreError::Io { op, path, source }
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

/// Writes `bytes` to `path` like [`write_private`] but never replaces an existing file:
/// [`StoreError::Exists`] then (checkpoint ids are never reused).
pub fn write_private_new(
    path: &Path,
    bytes: &[u8],
    uuid: &str,
    id: &str,
) -> Result<(), StoreError> {
    if path.exists() {
        return Err(StoreError::Exists {
            uuid: uuid.to_string(),
            id: id.to_string(),
        });
    }
    // A temporary name of its own: two writers of the same id never share one.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}-{n}.new", std::process::id()));
    write_private(&tmp, bytes)?;
    // A hard link, unlike rename, fails when the name is taken.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StoreError::Exists {
            uuid: uuid.to_string(),
            id: id.to_string(),
        }),
        Err(source) => Err(StoreError::Io {
            op: "link",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the description at the start of a checkpoint file (not its payload).
fn peek_file(path: &Path) -> Option<crate::checkpoint::Description> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; crate::checkpoint::HEADER_LEN];
    f.read_exact(&mut head).ok()?;
    let d = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    if d > crate::checkpoint::MAX_DESCRIPTION {
        return None;
    }
    let mut buf = head.to_vec();
    buf.resize(head.len() + d as usize, 0);
    f.read_exact(&mut buf[head.len()..]).ok()?;
    crate::checkpoint::peek_description(&buf).ok()
}

/// Lists `<id>.gwck` files in a directory, sorted by id, with each one's parent and
/// capture time read from its description.
pub fn list_dir(dir: &Path) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(StoreError::Io {
                op: "list",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".gwck") {
            let bytes = ent.metadata().map(|m| m.len()).unwrap_or(0);
            let desc = peek_file(&ent.path());
            out.push(StoredCheckpoint {
                id: id.to_string(),
                bytes,
                parent: desc.as_ref().and_then(|d| d.parent.clone()),
                created_unix_ms: desc.map(|d| d.created_unix_ms),
            });
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

impl Store {
    /// Parses `dir:PATH`, a plain absolute path, or `agent://HOST:PORT` (alias
    /// `agent+http://HOST:PORT`, also over TLS).
    pub fn from_url(url: &str, token: Option<String>) -> Result<Self, StoreError> {
        Self::from_url_with_ca(url, token, None)
    }

    /// [`Store::from_url`] with a CA file to verify the agent's certificate (PKI mode).
    pub fn from_url_with_ca(
        url: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Self, StoreError> {
        if url.starts_with("agent") {
            let addr =
                godwit_names::agent_addr(url).ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
            let setup = |e: NetError| StoreError::Setup {
                base: format!("agent://{addr}"),
                detail: e.to_string(),
            };
            let client = match token {
                Some(t) => Some(ClientTls::new(Token::new(t).map_err(setup)?, ca).map_err(setup)?),
                None => None,
            };
            return Ok(Store::Agent {
                addr: addr.to_string(),
                client,
            });
        }
        if let Some(p) = url.strip_prefix("dir:") {
            return Ok(Store::Dir(PathBuf::from(p)));
        }
        if url.starts_with('/') {
            return Ok(Store::Dir(PathBuf::from(url)));
        }
        Err(StoreError::BadUrl(url.to_string()))
    }

    /// URL form.
    pub fn url(&self) -> String {
        match self {
            Store::Dir(p) => format!("dir:{}", p.display()),
            Store::Agent { addr, .. } => format!("agent://{addr}"),
        }
    }

    async fn agent(
        &self,
        op: &'static str,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> Result<HttpResponse, StoreError> {
        let Store::Agent { addr, client } = self else {
            unreachable!("agent() on a directory store")
        };
        let base = format!("agent://{addr}");
        let client = client.as_ref().ok_or_else(|| StoreError::Setup {
            base: base.clone(),
            detail: "no token: give the service a token (--token-file or GODWIT_TOKEN)".into(),
        })?;
        let mut req = HttpRequest::new(method, path);
        req.body = body;
        req.content_type = "application/octet-stream";
        req.timeout = Duration::from_secs(120);
        req.body_limit = 8 << 30;
        let resp = client
            .request(addr, &req)
            .await
            .map_err(|source| StoreError::Transport {
                base: base.clone(),
                source,
            })?;
        if resp.status >= 300 && resp.status != 404 {
            return Err(StoreError::Refused {
                base,
                op,
                status: resp.status,
                message: resp.error_message(),
            });
        }
        Ok(resp)
    }

    /// Stores checkpoint `id` of service `uuid`.
    pub async fn put(&self, uuid: &str, id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        check_name("service uuid", uuid)?;
        check_name("checkpoint id", id)?;
        match self {
            Store::Dir(root) => {
                let path = root.join(uuid).join(format!("{id}.gwck"));
                let (u, i) = (uuid.to_string(), id.to_string());
                tokio::task::spawn_blocking(move || write_private_new(&path, &bytes, &u, &i))
                    .await
                    .map_err(|e| StoreError::Io {
                        op: "write",
                        path: root.clone(),
                        source: std::io::Error::other(e),
                    })?
            }
            Store::Agent { .. } => {
                match self
                    .agent(
                        "put",
                        "PUT",
                        &format!("/v1/store/{uuid}/{id}"),
                        Bytes::from(bytes),
                    )
                    .await
                {
                    Err(StoreError::Refused { status: 409, .. }) => Err(StoreError::Exists {
                        uuid: uuid.to_string(),
                        id: id.to_string(),
                    }),
                    Err(e) => Err(e),
                    Ok(_) => Ok(()),
                }
            }
        }
    }

    /// Removes checkpoint `id` of `uuid` (retention). Removing one that is not there
    /// is not an error.
    pub async fn delete(&self, uuid: &str, id: &str) -> Result<(), StoreError> {
        check_name("service uuid", uuid)?;
        check_name("checkpoint id", id)?;
        match self {
            Store::Dir(root) => {
                let path = root.join(uuid).join(format!("{id}.gwck"));
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(StoreError::Io {
                        op: "remove",
                        path,
                        source,
                    }),
                }
            }
            Store::Agent { .. } => {
                self.agent(
                    "delete",
                    "DELETE",
                    &format!("/v1/store/{uuid}/{id}"),
                    Bytes::new(),
                )
                .await?;
                Ok(())
            }
        }
    }

    /// Fetches checkpoint `id` (or the newest one for `latest`).
    pub async fn get(&self, uuid: &str, id: &str) -> Result<(String, Vec<u8>), StoreError> {
        check_name("service uuid", uuid)?;
        let id = if id == "latest" {
            self.list(uuid)
                .await?
                .pop()
                .ok_or_else(|| StoreError::NotFound {
                    uuid: uuid.to_string(),
                    id: id.to_string(),
                })?
                .id
        } else {
            id.to_string()
        };
        check_name("checkpoint id", &id)?;
        let not_found = || StoreError::NotFound {
            uuid: uuid.to_string(),
            id: id.clone(),
        };
        match self {
            Store::Dir(root) => {
                let path = root.join(uuid).join(format!("{id}.gwck"));
                match tokio::fs::read(&path).await {
                    Ok(b) => Ok((id, b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found()),
                    Err(source) => Err(StoreError::Io {
                        op: "read",
                        path,
                        source,
                    }),
                }
            }
            Store::Agent { .. } => {
                let resp = self
                    .agent(
                        "get",
                        "GET",
                        &format!("/v1/store/{uuid}/{id}"),
                        Bytes::new(),
                    )
                    .await?;
                if resp.status == 404 {
                    return Err(not_found());
                }
                Ok((id, resp.body.to_vec()))
            }
        }
    }

    /// The checkpoints of `uuid`, oldest first.
    pub async fn list(&self, uuid: &str) -> Result<Vec<StoredCheckpoint>, StoreError> {
        check_name("service uuid", uuid)?;
        match self {
            Store::Dir(root) => list_dir(&root.join(uuid)),
            Store::Agent { addr, .. } => {
                let resp = self
                    .agent("list", "GET", &format!("/v1/store/{uuid}"), Bytes::new())
                    .await?;
                if resp.status == 404 {
                    return Ok(vec![]);
                }
                let v = resp.json().map_err(|source| StoreError::Transport {
                    base: format!("agent://{addr}"),
                    source,
                })?;
                let mut out: Vec<StoredCheckpoint> = v["checkpoints"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| {
                                Some(StoredCheckpoint {
                                    id: c["id"].as_str()?.to_string(),
                                    bytes: c["bytes"].as_u64()?,
                                    parent: c["parent"].as_str().map(str::to_string),
                                    created_unix_ms: c["created_unix_ms"].as_u64(),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn dir_store_is_private_and_lists_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::from_url(&format!("dir:{}", tmp.path().display()), None).unwrap();
        store
            .put("svc-1", &checkpoint_id(2), vec![2])
            .await
            .unwrap();
        store
            .put("svc-1", &checkpoint_id(10), vec![10, 10])
            .await
            .unwrap();
        let list = store.list("svc-1").await.unwrap();
        assert_eq!(list.iter().map(|c| c.bytes).collect::<Vec<_>>(), vec![1, 2]);
        let (id, bytes) = store.get("svc-1", "latest").await.unwrap();
        assert_eq!((id.as_str(), bytes), ("000000000010", vec![10, 10]));
        let dir_mode = std::fs::metadata(tmp.path().join("svc-1"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        let file_mode = std::fs::metadata(tmp.path().join("svc-1/000000000002.gwck"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!((dir_mode, file_mode), (0o700, 0o600));
        assert!(matches!(
            store.get("svc-1", "000000000003").await,
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.put("svc-1", &checkpoint_id(2), vec![9]).await,
            Err(StoreError::Exists { .. })
        ));
        assert_eq!(
            store.get("svc-1", &checkpoint_id(2)).await.unwrap().1,
            vec![2]
        );
        store.delete("svc-1", &checkpoint_id(2)).await.unwrap();
        store.delete("svc-1", &checkpoint_id(2)).await.unwrap();
        assert_eq!(store.list("svc-1").await.unwrap().len(), 1);
        assert!(matches!(
            store.put("../x", "1", vec![]).await,
            Err(StoreError::BadName { .. })
        ));
        assert!(matches!(
            store.get("svc-1", "..").await,
            Err(StoreError::BadName { .. })
        ));
        assert!(matches!(
            store.get("empty", "latest").await,
            Err(StoreError::NotFound { .. })
        ));
    }
}

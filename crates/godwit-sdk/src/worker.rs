//! Thread monitoring: a service's own workers (tokio tasks or threads) and their safe
//! points.
//!
//! A worker owns a [`Worker`] handle holding its state. It calls
//! [`Worker::safe_point`] where its state is consistent (typically once per loop). A
//! checkpoint asks every registered worker to come to a safe point, waits for all of
//! them (bounded by `--worker-wait`), encodes each worker's state there with the same
//! portable encoding as the service state, and lets them go on. A worker that does not
//! come in time is named and the checkpoint fails; the service and the other workers
//! carry on. When the service stops (or its frozen instance is stopped after a
//! migration), `safe_point` returns [`Retired`]: the worker must return.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::checkpoint::WorkerRecord;
use crate::codec::{self, Portable};
use crate::schema::Schema;

/// Default bound on how long a checkpoint waits for the workers to reach a safe point.
pub const DEFAULT_WORKER_WAIT: Duration = Duration::from_secs(5);

/// A worker could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Another live worker has this name.
    #[error(
        "a worker named `{0}` is already running in this service (worker names must be unique)"
    )]
    Duplicate(String),
    /// The checkpoint holds a state of this worker that this build cannot read.
    #[error("worker `{name}`: its state in the checkpoint cannot be read: {reason}")]
    BadState {
        /// Worker.
        name: String,
        /// Why.
        reason: String,
    },
}

/// `safe_point` answer when the service is stopping: the worker must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the service is stopping: the worker must return")]
pub struct Retired;

#[derive(Debug, Clone, Copy, Default)]
struct Ctl {
    epoch: u64,
    park: bool,
    retire: bool,
}

struct Slot {
    id: u64,
    /// (epoch, schema JSON, encoded state) once parked for that epoch.
    parked: Option<(u64, String, Vec<u8>)>,
    safe_points: u64,
}

#[derive(Default)]
struct Table {
    slots: BTreeMap<String, Slot>,
    /// Worker states from the restored checkpoint, not yet claimed by `register`.
    restored: HashMap<String, WorkerRecord>,
    next_id: u64,
}

/// The workers of one service instance.
pub(crate) struct Workers {
    table: Mutex<Table>,
    ctl: watch::Sender<Ctl>,
    arrived: Notify,
    /// Bumped by `Worker::state_mut` (periodic checkpoints skip only when nothing
    /// changed, workers included).
    pub(crate) changes: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workers {
    pub(crate) fn new() -> Self {
        Workers {
            table: Mutex::new(Table::default()),
            ctl: watch::channel(Ctl::default()).0,
            arrived: Notify::new(),
            changes: AtomicU64::new(0),
        }
    }

    /// Workers' states of a restored checkpoint, to be claimed by name.
    pub(crate) fn set_restored(&self, records: Vec<WorkerRecord>) {
        let mut t = lock(&self.table);
        t.restored = records.into_iter().map(|r| (r.name.clone(), r)).collect();
        // A restored instance starts with its workers running.
        self.ctl.send_modify(|c| {
            c.park = false;
            c.retire = false;
        });
    }

    /// Registers a worker: its state is the restored one when the checkpoint has it,
    /// else `init()`.
    pub(crate) fn register<W: Portable>(
        self: &Arc<Self>,
        name: &str,
        init: impl FnOnce() -> W,
    ) -> Result<Worker<W>, WorkerError> {
        let mut t = lock(&self.table);
        if t.slots.contains_key(name) {
            return Err(WorkerError::Duplicate(name.to_string()));
        }
        let state = match t.restored.get(name) {
            Some(rec) => {
                let bad = |reason: String| WorkerError::BadState {
                    name: name.to_string(),
                    reason,
                };
                let old = serde_json::from_str::<Value>(&rec.schema)
                    .map_err(|e| bad(e.to_string()))
                    .and_then(|v| Schema::from_json(&v).map_err(|e| bad(e.to_string())))?;
                W::schema()
                    .check_readable(&old, name)
                    .map_err(|e| bad(e.to_string()))?;
                let s = codec::from_slice::<W>(&rec.state).map_err(|e| bad(e.to_string()))?;
                t.restored.remove(name);
                tracing::info!(worker = name, "worker resumes from its checkpointed state");
                s
            }
            None => init(),
        };
        t.next_id += 1;
        let id = t.next_id;
        t.slots.insert(
            name.to_string(),
            Slot {
                id,
                parked: None,
                safe_points: 0,
            },
        );
        Ok(Worker {
            name: name.to_string(),
            id,
            state,
            workers: self.clone(),
            rx: self.ctl.subscribe(),
            served: 0,
        })
    }

    /// Asks every worker to come to a safe point and waits up to `wait`. All there:
    /// their records (plus restored states no worker claimed, kept as they were). Not
    /// all: the names of those missing (the caller releases the others).
    pub(crate) async fn park_all(&self, wait: Duration) -> Result<Vec<WorkerRecord>, Vec<String>> {
        let mut epoch = 0;
        self.ctl.send_modify(|c| {
            c.epoch += 1;
            c.park = true;
            epoch = c.epoch;
        });
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let n = self.arrived.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let missing: Vec<String> = {
                let t = lock(&self.table);
                t.slots
                    .iter()
                    .filter(|(_, s)| !matches!(&s.parked, Some((e, _, _)) if *e == epoch))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            if missing.is_empty() {
                let t = lock(&self.table);
                let mut out: Vec<WorkerRecord> = t
                    .slots
                    .iter()
                    .filter_map(|(name, s)| {
                        s.parked.as_ref().map(|(_, schema, state)| WorkerRecord {
                            name: name.clone(),
                            schema: schema.clone(),
                            state: state.clone(),
                        })
                    })
                    .collect();
                out.extend(t.restored.values().cloned());
                return Ok(out);
            }
            tokio::select! {
                _ = n => {}
                _ = tokio::time::sleep_until(deadline) => return Err(missing),
            }
        }
    }

    /// Names of the restored worker states no worker claimed (kept in checkpoints).
    pub(crate) fn unclaimed(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.table).restored.keys().cloned().collect();
        v.sort();
        v
    }

    /// Lets parked workers go on.
    pub(crate) fn release(&self) {
        self.ctl.send_modify(|c| c.park = false);
    }

    /// Tells every worker to return (the service stops).
    pub(crate) fn retire(&self) {
        self.ctl.send_modify(|c| c.retire = true);
    }

    /// Status JSON: each worker, its safe points passed and whether it is parked.
    pub(crate) fn status(&self) -> Value {
        let t = lock(&self.table);
        let c = *self.ctl.borrow();
        Value::Array(
            t.slots
                .iter()
                .map(|(name, s)| {
                    let parked = c.park && matches!(&s.parked, Some((e, _, _)) if *e == c.epoch);
                    json!({ "name": name, "safe_points": s.safe_points, "parked": parked })
                })
                .collect(),
        )
    }
}

/// A worker's handle: its state, and its safe points. Dropping it deregisters the
/// worker (its state is then no longer in checkpoints).
pub struct Worker<W: Portable> {
    name: String,
    id: u64,
    state: W,
    workers: Arc<Workers>,
    rx: watch::Receiver<Ctl>,
    served: u64,
}

impl<W: Portable> Worker<W> {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state.
    pub fn state(&self) -> &W {
        &self.state
    }

    /// Its state, to change between safe points.
    pub fn state_mut(&mut self) -> &mut W {
        self.workers.changes.fetch_add(1, SeqCst);
        &mut self.state
    }

    /// A safe point: when a checkpoint is being taken, the state is encoded here and the
    /// worker waits until the checkpoint is captured; otherwise it returns at once (one
    /// atomic read). `Err(Retired)` when the service stops: return from the worker.
    pub async fn safe_point(&mut self) -> Result<(), Retired> {
        let c = *self.rx.borrow_and_update();
        if c.retire {
            return Err(Retired);
        }
        {
            let mut t = lock(&self.workers.table);
            if let Some(s) = t.slots.get_mut(&self.name).filter(|s| s.id == self.id) {
                s.safe_points += 1;
            }
        }
        if !c.park || self.served == c.epoch {
            return Ok(());
        }
        let epoch = c.epoch;
        self.served = epoch;
        let encoded = codec::to_vec(&self.state);
        let schema = W::schema().to_json().to_string();
        {
            let mut t = lock(&self.workers.table);
            if let Some(s) = t.slots.get_mut(&self.name).filter(|s| s.id == self.id) {
                s.parked = Some((epoch, schema, encoded));
            }
        }
        self.workers.arrived.notify_waiters();
        loop {
            let c = *self.rx.borrow_and_update();
            if c.retire {
                return Err(Retired);
            }
            if !c.park || c.epoch != epoch {
                return Ok(());
            }
            if self.rx.changed().await.is_err() {
                return Err(Retired);
            }
        }
    }

    /// Waits `d` at a safe point: a checkpoint taken meanwhile does not wait for the
    /// pause to end. `Err(Retired)` when the service stops.
    pub async fn pause(&mut self, d: Duration) -> Result<(), Retired> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            self.safe_point().await?;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.safe_point().await,
                r = self.rx.changed() => {
                    if r.is_err() {
                        return Err(Retired);
                    }
                }
            }
        }
    }
}

impl<W: Portable> Drop for Worker<W> {
    fn drop(&mut self) {
        let mut t = lock(&self.workers.table);
        if t.slots.get(&self.name).is_some_and(|s| s.id == self.id) {
            t.slots.remove(&self.name);
        }
        drop(t);
        // A checkpoint waiting for this worker need not wait any longer.
        self.workers.arrived.notify_waiters();
    }
}

//! What `#[service]` implements: the bridge between the runtime and the author's methods.

use std::time::Duration;

use serde_json::{json, Value};

use crate::codec::{self, DecodeError, Portable};
use crate::schema::Schema;

/// How an operation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `&self`: runs under a shared lock; idempotent, not remembered.
    Read,
    /// `&mut self`: runs under the exclusive lock, at most once per call id.
    Write,
    /// `#[resumable]`: a step machine, saved at every migration point, at most once.
    Resumable,
}

impl MethodKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Read => "read",
            MethodKind::Write => "write",
            MethodKind::Resumable => "resumable",
        }
    }
}

/// Description of one operation.
#[derive(Debug, Clone)]
pub struct MethodInfo {
    /// Name on the wire.
    pub name: &'static str,
    /// Kind.
    pub kind: MethodKind,
    /// Schema of the argument struct (fields tagged 1..n in declaration order).
    pub args: Schema,
    /// Schema of the reply.
    pub reply: Schema,
    /// Schema of the stage, for resumable operations.
    pub stage: Option<Schema>,
    /// `#[durable]`: with `--durable-log`, logged before its reply. When no operation
    /// of a service is marked, every write is logged (with `--durable-log`).
    pub durable: bool,
}

impl MethodInfo {
    /// JSON form, as recorded in checkpoint headers.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind.as_str(),
            "args": self.args.to_json(),
            "reply": self.reply.to_json(),
            "stage": self.stage.as_ref().map(|s| s.to_json()),
            "durable": self.durable,
        })
    }
}

/// What one step of a resumable operation decided. Every return from a step is a
/// migration point: the stage is saved with the state, atomically.
#[derive(Debug, Clone, PartialEq)]
pub enum Step<S, R> {
    /// Continue with this stage (at once).
    Next(S),
    /// Continue with this stage after a pause; the operation sits at its migration
    /// point meanwhile, so a checkpoint or migration does not wait for it.
    Sleep(S, Duration),
    /// Finished: the client's answer.
    Done(R),
}

/// A step's outcome with stage and reply encoded (used by generated code).
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Next stage, encoded.
    Next(Vec<u8>),
    /// Next stage after a pause.
    Sleep(Vec<u8>, Duration),
    /// Reply, encoded.
    Done(Vec<u8>),
}

impl StepOutcome {
    /// Encodes a [`Step`].
    pub fn from_step<S: Portable, R: Portable>(s: Step<S, R>) -> Self {
        match s {
            Step::Next(st) => StepOutcome::Next(codec::to_vec(&st)),
            Step::Sleep(st, d) => StepOutcome::Sleep(codec::to_vec(&st), d),
            Step::Done(r) => StepOutcome::Done(codec::to_vec(&r)),
        }
    }
}

/// A call could not be dispatched.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No such operation (or wrong kind).
    #[error("unknown operation `{0}`")]
    UnknownMethod(String),
    /// The arguments or stage do not decode.
    #[error("bad arguments: {0}")]
    BadArgs(#[from] DecodeError),
}

/// A conformist service. Implemented by `#[service]`; the state type also derives
/// [`Portable`].
pub trait Service: Portable + Send + Sync + 'static {
    /// Service name, recorded in checkpoints.
    const NAME: &'static str;
    /// The operations.
    fn methods() -> Vec<MethodInfo>;
    /// Runs a read operation.
    fn call_read(&self, method: &str, args: &[u8]) -> Result<Vec<u8>, DispatchError>;
    /// Runs a write operation.
    fn call_write(&mut self, method: &str, args: &[u8]) -> Result<Vec<u8>, DispatchError>;
    /// Runs one step of a resumable operation from `stage`.
    fn step(
        &mut self,
        method: &str,
        args: &[u8],
        stage: &[u8],
    ) -> Result<StepOutcome, DispatchError>;
    /// The encoded first stage of a resumable operation (`Default` of its stage type).
    fn initial_stage(method: &str) -> Result<Vec<u8>, DispatchError>;
}

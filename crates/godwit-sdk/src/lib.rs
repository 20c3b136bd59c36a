//! Godwit conformist services: write a state type and its operations in plain Rust; one
//! attribute macro makes the service checkpointable, restorable and migratable.
//!
//! ```
//! use godwit_sdk::{service, Portable};
//!
//! #[derive(Portable, Debug, Default)]
//! pub struct Counter { #[portable(tag = 1)] value: u64 }
//!
//! #[service(name = "counter")]
//! impl Counter {
//!     pub fn add(&mut self, n: u64) -> u64 { self.value += n; self.value }
//!     pub fn get(&self) -> u64 { self.value }
//! }
//! # fn main() {}
//! ```
//!
//! See docs/SDK.md for the state encoding, the wire protocol, the management interface
//! and migration points.

pub mod checkpoint;
pub mod client;
pub mod codec;
pub mod durable;
pub mod handoff;
pub mod mgmt;
pub mod options;
pub mod runtime;
pub mod schema;
pub mod service;
pub mod store;
pub mod wire;
pub mod worker;

/// docs/SDK.md, the guide to conformist services: included here so that every Rust
/// snippet in it is compiled as a doc-test (`cargo test --doc -p godwit-sdk`).
#[doc = include_str!("../../../docs/SDK.md")]
pub mod guide {}

pub use client::{CallError, Client, ClientOptions, MutualClient};
pub use codec::{DecodeError, Portable};
pub use godwit_names::{self as names, Names};
pub use godwit_sdk_macros::{service, Portable};
pub use options::ServiceOptions;
pub use runtime::{
    run_service, run_service_with, CheckpointInfo, Ctx, Hooks, RunError, Server, ServerHandle,
    ServiceError,
};
pub use service::{DispatchError, MethodInfo, MethodKind, Service, Step, StepOutcome};
pub use store::Store;
pub use worker::{Retired, Worker, WorkerError};

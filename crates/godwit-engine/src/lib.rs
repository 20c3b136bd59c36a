//! Godwit's transparent checkpoint/restore engine.
//!
//! * [`dump::dump`]: freeze every thread of a process, collect its state
//!   resource by resource, write an image, then end or release the process.
//! * [`restore::restore`]: read an image, create a process with the same PID,
//!   rebuild its resources by injected system calls, and let it run.
//!
//! One module per kind of resource lives in [`resources`]; each knows how to
//! read its state from a frozen process and rebuild it in a restored one.
//! All raw system calls go through the `godwit-sys` crate.

pub mod colocate;
pub mod deferred;
pub mod dump;
pub mod error;
pub mod freeze;
pub mod migrate;
pub mod postcopy;
pub mod precopy;
pub mod remote;
pub mod resources;
pub mod restore;
pub mod schema;
pub mod snapshot;

pub use error::{EngineError, Result};

/// Receives progress of long work (bytes of memory written or restored).
pub trait Progress: Sync {
    /// A new stage begins that will move `total_bytes`.
    fn stage(&self, _name: &str, _total_bytes: u64) {}
    /// `bytes` more were moved.
    fn advance(&self, _bytes: u64) {}
}

/// A [`Progress`] that shows nothing.
pub struct Quiet;
impl Progress for Quiet {}

/// Reads an image's metadata (after checking the container).
pub fn load(dir: &std::path::Path) -> Result<(schema::Checkpoint, godwit_image::ImageReader)> {
    let reader = godwit_image::ImageReader::open(dir)?;
    let ck: schema::Checkpoint = reader.metadata()?;
    Ok((ck, reader))
}

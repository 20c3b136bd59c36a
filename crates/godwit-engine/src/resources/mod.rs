//! One module per kind of process resource. Each has a `dump` side that reads
//! the state of a frozen process into plain data (crate::schema) and a
//! `restore` side that rebuilds it in the process being restored.

pub mod anon;
pub mod attrs;
pub mod caps;
pub mod deleted;
pub mod external;
pub mod files;
pub mod jobctl;
pub mod locks;
pub mod memory;
pub mod numa;
pub mod pidfd;
pub mod sched;
pub mod seccomp;
pub mod signals;
pub mod sockets;
pub mod sysv;
pub mod threads;
pub mod timers;
pub mod tty;

//! Errors of a dump or a restore. Each names the process, the stage and the
//! resource, and says what the user can do.

use godwit_sys::SysError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no process with PID {pid}: check the PID (ps -p {pid})")]
    NoSuchProcess { pid: i32 },

    #[error("permission denied on process {pid}: {detail}")]
    PermissionDenied { pid: i32, detail: String },

    #[error("process {pid}: not dumped, since the dump would end it and you could not restore it: {why}. The process was left running as it was; dump it with --leave-running to keep it running, or run godwit as root")]
    CouldNotRestore { pid: i32, why: String },

    #[error("process {pid} exited while {stage}; nothing was saved")]
    ProcessExited { pid: i32, stage: &'static str },

    #[error("process {pid}: {what} is not supported yet; the process was left running as it was")]
    Unsupported { pid: i32, what: String },

    #[error("process {pid}: {what}, whose master side is outside the dumped process tree (such as the terminal it was started from); dump it with --shell-job, then restore it with `godwit restore --shell-job` (attached to the terminal it is run from) or with `--inherit-fd N:tty:[MAJOR:MINOR]` (your fd N, a terminal, in its place). The process was left running as it was")]
    NeedsShellJob { pid: i32, what: String },

    #[error("process {pid}: {what}; dump it with --tcp-established to move established TCP connections (the peer sees no reset). The process was left running as it was")]
    NeedsTcpEstablished { pid: i32, what: String },

    #[error(
        "the image holds established TCP connections ({0}); restore it with --tcp-established"
    )]
    ImageNeedsTcpEstablished(String),

    #[error("{0}")]
    Terminal(String),

    /// A `--inherit-fd` that does not fit the image or godwit's descriptors.
    #[error("{0}")]
    InheritFd(String),

    #[error("process {pid}, {stage}: {source}")]
    Sys {
        pid: i32,
        stage: &'static str,
        #[source]
        source: SysError,
    },

    #[error(transparent)]
    Image(#[from] godwit_image::ImageError),

    #[error("the image is not usable: {0}")]
    BadImage(String),

    #[error(
        "PID {pid} is in use on this host (by {holder}); stop that process, restore elsewhere, or restore into a new PID namespace with --pid-ns"
    )]
    PidTaken { pid: i32, holder: String },

    #[error(
        "SysV shared memory key {key:#010x} / shmid {shmid} is in use on this host ({holder}); remove that segment (ipcrm -m {holder_id}) if it is a leftover of the dumped processes, or restore elsewhere"
    )]
    SysvShmTaken {
        key: i32,
        shmid: i32,
        holder: String,
        holder_id: i32,
    },

    #[error("{path}: {detail} since the dump; restore refused (use --allow-file-changes to restore anyway)")]
    FileChanged { path: String, detail: String },

    #[error("{path}: {detail}; restore refused")]
    FileMissing { path: String, detail: String },

    #[error("this CPU lacks features the image needs: {0}; restore it on a host with the same CPU features")]
    CpuMismatch(String),

    #[error("migration: {0}")]
    Migration(String),
    #[error("restore of process {pid} refused: {what}")]
    Refused { pid: i32, what: String },

    #[error("restore of process {pid} failed while {stage}: {source}")]
    Restore {
        pid: i32,
        stage: &'static str,
        #[source]
        source: SysError,
    },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Attaches a stage and PID to a [`SysError`] on the dump side.
pub(crate) trait DumpCtx<T> {
    fn dumping(self, pid: i32, stage: &'static str) -> Result<T>;
}

impl<T> DumpCtx<T> for std::result::Result<T, SysError> {
    fn dumping(self, pid: i32, stage: &'static str) -> Result<T> {
        self.map_err(|source| {
            if !godwit_sys::process::alive(pid) {
                return EngineError::ProcessExited { pid, stage };
            }
            EngineError::Sys { pid, stage, source }
        })
    }
}

/// Attaches a stage and PID to a [`SysError`] on the restore side.
pub(crate) trait RestoreCtx<T> {
    fn restoring(self, pid: i32, stage: &'static str) -> Result<T>;
}

impl<T> RestoreCtx<T> for std::result::Result<T, SysError> {
    fn restoring(self, pid: i32, stage: &'static str) -> Result<T> {
        self.map_err(|source| EngineError::Restore { pid, stage, source })
    }
}

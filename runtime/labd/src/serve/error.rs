//! Why `labd serve` could not start or stopped badly: each kind keeps what it was doing and
//! the error beneath it, so the message names the key or file to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    /// A file or directory of the data dir (or the site file) could not be made, read or
    /// written; `what` says which and what to do.
    #[error("{what} {}: {source}{hint}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}", path = path.display())]
    Site { path: PathBuf, message: String },
    #[error("cannot listen on {addr} ({key} in labd.toml): {source}{hint}")]
    Listen {
        addr: String,
        key: &'static str,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Store {
        context: &'static str,
        #[source]
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Lab(#[from] crate::lab::LabError),
    #[error("sim_faults.{id}: {message}")]
    SimFaults { id: String, message: String },
    #[error("sim_faults applies to a simulated site only (every endpoint `sim`)")]
    SimFaultsOnRealSite,
    #[error("cells: {0}")]
    Cells(String),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    #[error(transparent)]
    Random(#[from] crate::secret::NoRandomness),
    #[error("{0}")]
    Api(String),
    /// A task labd started ended by panicking or being cancelled.
    #[error("{what} stopped: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl ServeError {
    pub(crate) fn file(what: &'static str, path: &std::path::Path, source: std::io::Error) -> ServeError {
        ServeError::File { what, path: path.to_path_buf(), hint: "", source }
    }

    pub(crate) fn store(context: &'static str) -> impl FnOnce(crate::store::StoreError) -> ServeError {
        move |source| ServeError::Store { context, source }
    }
}

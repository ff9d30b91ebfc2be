//! Errors that stop a collection before or between cells.
//!
//! Failures inside a cell (a model an engine cannot load, a crashed worker, an image the engine
//! rejects) are not errors here: they are recorded as data in the store and the sweep goes on.
//! What remains is bad configuration, which is reported before any work starts and names the file
//! at fault, and storage failures, which must stop the run because results could not be kept.

use std::path::{Path, PathBuf};

/// A collector error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A user-supplied file (sweep, labels, model, class names, images folder) is wrong.
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    /// The result store failed.
    #[error(transparent)]
    Store(#[from] deltann_store::Error),
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Arrow failed while building or decoding batches.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// An engine could not be set up (for example its library cannot be loaded).
    #[error("{0}")]
    Engine(String),
    /// A worker process could not be started or broke the protocol.
    #[error("worker: {0}")]
    Worker(String),
}

/// Shorthand for collector results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error about a user-supplied file.
    pub fn input(path: &Path, message: impl Into<String>) -> Self {
        Error::Input {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Attaches an operation name and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

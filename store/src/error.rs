//! Errors of the store. Every variant names the file it is about, so a message read on its own
//! (in a log, in a CI failure) still says where to look.

use std::path::PathBuf;

/// A store error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing or reading a Parquet part failed.
    #[error("parquet {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building or converting Arrow data failed.
    #[error("arrow {}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The directory exists but is not a deltann store, or is one of an unknown format version.
    #[error("{}: {reason}", path.display())]
    NotAStore { path: PathBuf, reason: String },
    /// Another process holds the store's write lock.
    #[error(
        "{} is locked by another writer (is a `deltann collect` already running on this store?)",
        path.display()
    )]
    Locked { path: PathBuf },
    /// The manifest has an entry that cannot be parsed (other than a torn last line).
    #[error("{}:{line}: bad manifest entry: {reason}", path.display())]
    Manifest {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// An earlier commit of this writer failed at a step after which its outcome is uncertain
    /// (a failed rename, directory fsync, manifest append or manifest fsync): it commits nothing
    /// more, as SQLite stops after a failed fsync. The next writer's recovery settles the store.
    #[error(
        "{}: this process commits nothing more after a failed commit ({reason}); nothing committed is lost, and the next `deltann collect` on the store recovers it",
        path.display()
    )]
    Stopped { path: PathBuf, reason: String },
    /// A caller asked for something the store cannot represent.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for store results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches an operation name and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

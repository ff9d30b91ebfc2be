//! Errors of the analyzer. Data problems inside a store (failed cells, missing logits) are not
//! errors: they show up in the analysis. What remains is an unreadable store, SQL that does not
//! parse or run, and writes refused in a read-only session.

/// An analyzer error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] deltann_store::Error),
    /// DataFusion failed to parse, plan or run a statement.
    #[error("{}", tidy(.0))]
    Sql(#[from] datafusion::error::DataFusionError),
    /// Arrow failed while reading or printing results.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A statement would write files in a read-only session.
    #[error("{0}")]
    ReadOnly(String),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// A file operation failed (the path and the operating system's reason).
    #[error("{}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A Parquet file could not be read or written.
    #[error("parquet {}: {source}", path.display())]
    Parquet {
        path: std::path::PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Polars failed to scan derived parts or to compute one of the analysis's frames.
    #[error("polars ({what}): {source}")]
    Polars {
        what: String,
        #[source]
        source: polars::prelude::PolarsError,
    },
    /// The store holds something analysis cannot use, or a request makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// A failed file operation on `path`.
    pub fn file(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::File {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A Parquet failure on `path`.
    pub fn parquet(path: &std::path::Path, source: parquet::errors::ParquetError) -> Self {
        Self::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// DataFusion's parser errors arrive as `SQL error: ParserError("...")`: say "syntax error".
fn tidy(e: &datafusion::error::DataFusionError) -> String {
    let text = e.to_string();
    text.strip_prefix("SQL error: ParserError(\"")
        .and_then(|t| t.strip_suffix("\")"))
        .map_or(text.clone(), |inner| format!("syntax error: {inner}"))
}

/// Shorthand for analyzer results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

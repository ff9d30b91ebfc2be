/*!
deltann's result store: the one contract between the collector, which writes results, and the
analyzer and TUI, which read them.

A store is a directory of plain Parquet files that any Parquet reader can use (DuckDB, Polars,
Spark, pyarrow), plus an append-only manifest that says which files are committed. The pieces:

- [`schema`]: the tables, their column names (as constants, so queries and code agree) and their
  Arrow schemas.
- [`layout`]: where a table's parts live on disk, including Hive-style partition directories.
- [`manifest`]: the append-only commit log, tolerant of a torn last line.
- [`writer`]: the crash-safe commit protocol (temporary file, fsync, rename, manifest entry) and
  recovery of whatever a crash left behind.
- [`upgrade`]: a format 1 store rewritten to format 2 (logits as binary values), crash-safely.
- [`verify`]: every listed part checked against its manifest entry (size, checksum, footer),
  for `deltann store verify`; `StoreWriter::repair` drops what cannot be read.
- [`faults`]: failures injected at each step of that protocol, for the tests that hold it to
  its promises.
- [`reader`]: a read-only view that lists committed parts only and streams their rows.
- [`ids`]: deterministic cell ids, so the same cell in two sweeps is recognisably the same.
- [`stats`]: the one quantile definition every latency figure uses.
- [`outputs`]: the one definition of an `outputs` row (ranking, softmax, hash, builder).

docs/STORE.md describes the format for people who read the files with other tools.
*/

pub mod error;
pub mod faults;
pub mod ids;
pub mod layout;
pub mod manifest;
pub mod outputs;
pub mod reader;
pub mod schema;
pub mod stats;
pub mod upgrade;
pub mod verify;
pub mod writer;

pub use error::{Error, Result};
pub use layout::{Partition, Table};
pub use manifest::PartEntry;
pub use reader::Store;
pub use writer::{PartMeta, PartWriter, Recovery, StoreWriter};

/// Microseconds since the Unix epoch, the unit of every timestamp column in the store.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

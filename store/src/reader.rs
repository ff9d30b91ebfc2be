//! Read-only access to committed parts.
//!
//! A [`Store`] is a snapshot of the manifest: it lists committed parts only, so a reader running
//! next to a live `collect` never sees a half-written file, and it streams rows part by part, row
//! group by row group, so memory stays bounded whatever the store's size.
//!
//! A listed part that is damaged (deleted or cut short by hand, its footer unreadable) stops a
//! reader with an error naming it, unless the process asked to skip such parts
//! ([`skip_damaged`], the binary's `--skip-damaged`): then every snapshot leaves them out, as if
//! they had never been committed, and [`Store::open_checked`] says which it left out. The
//! check costs a `stat` and a footer read per part; bit rot inside a part's pages is found by
//! `deltann store verify` (checksums), not here.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, IoContext, Result};
use crate::layout::{self, Table};
use crate::manifest::{self, PartEntry};
use crate::verify::{Damaged, check_part_quick};

static SKIP_DAMAGED: AtomicBool = AtomicBool::new(false);

/// Makes every later snapshot taken in this process ([`Store::open`]) leave out listed parts
/// that are missing, of another size than listed, or whose footer cannot be read, instead of
/// failing on them. Set once, by a binary, from its command line.
pub fn skip_damaged(on: bool) {
    SKIP_DAMAGED.store(on, Ordering::Relaxed);
}

/// A read-only snapshot of a store's committed parts.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    entries: Vec<PartEntry>,
}

impl Store {
    /// Opens the store at `root` for reading (leaving out damaged parts when the process asked
    /// to, see [`skip_damaged`]).
    ///
    /// # Errors
    /// Fails when `root` is not a deltann store or its manifest is damaged.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_checked(root).map(|(store, _)| store)
    }

    /// As [`Store::open`], also returning the damaged parts it left out (none unless the
    /// process asked to skip them).
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_checked(root: &Path) -> Result<(Self, Vec<Damaged>)> {
        if !root.join(layout::FORMAT_FILE).is_file() {
            return Err(Error::NotAStore {
                path: root.to_path_buf(),
                reason: format!("not a deltann store (no {})", layout::FORMAT_FILE),
            });
        }
        crate::writer::check_format(root)?;
        let read = manifest::read(&root.join(layout::MANIFEST_FILE))?;
        let mut entries = read.entries;
        let mut damaged = Vec::new();
        if SKIP_DAMAGED.load(Ordering::Relaxed) {
            entries.retain(|entry| match check_part_quick(root, entry) {
                None => true,
                Some(problem) => {
                    damaged.push(Damaged {
                        entry: entry.clone(),
                        problem,
                    });
                    false
                }
            });
        }
        Ok((Self::from_entries(root.to_path_buf(), entries), damaged))
    }

    /// A view of the store at `root` that holds only `entries`, in their order: what a reader
    /// would have seen had exactly those parts been committed (tests replay commits with it).
    pub fn from_entries(root: PathBuf, entries: Vec<PartEntry>) -> Self {
        Self { root, entries }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every committed part, in commit order.
    pub fn entries(&self) -> &[PartEntry] {
        &self.entries
    }

    /// The committed parts of one table, in commit order.
    pub fn parts(&self, table: Table) -> impl Iterator<Item = &PartEntry> {
        self.entries.iter().filter(move |e| e.table == table)
    }

    /// The absolute path of a part.
    pub fn part_path(&self, part: &PartEntry) -> PathBuf {
        self.root.join(&part.path)
    }

    /// Streams the rows of `parts` (all of one table), keeping only `columns` (all columns when
    /// empty). Batches come at most `batch_rows` rows at a time.
    ///
    /// # Errors
    /// The iterator yields an error for a part that cannot be opened or decoded, or that lacks a
    /// requested column.
    pub fn scan<'a>(
        &'a self,
        parts: impl IntoIterator<Item = &'a PartEntry> + 'a,
        columns: &'a [&'a str],
        batch_rows: usize,
    ) -> impl Iterator<Item = Result<RecordBatch>> + 'a {
        parts.into_iter().flat_map(move |part| {
            let path = self.part_path(part);
            match open_part(&path, columns, batch_rows) {
                Ok(reader) => Box::new(reader.map(move |b| {
                    b.map_err(|source| Error::Arrow {
                        path: path.clone(),
                        source,
                    })
                })) as Box<dyn Iterator<Item = Result<RecordBatch>>>,
                Err(e) => Box::new(std::iter::once(Err(e))),
            }
        })
    }

    /// Streams a whole table (see [`Store::scan`]).
    pub fn scan_table<'a>(
        &'a self,
        table: Table,
        columns: &'a [&'a str],
    ) -> impl Iterator<Item = Result<RecordBatch>> + 'a {
        self.scan(self.parts(table), columns, 8192)
    }
}

/// Files up to this size are read whole, in one call, and decoded from memory.
const READ_WHOLE_BYTES: u64 = 4 << 20;

/// Opens a part for reading `columns` (all when empty).
///
/// A small part (a `cells` or `models` part, a short cell's `outputs`) is read whole first: the
/// reader over a `File` duplicates the descriptor, seeks, reads and closes it for every page
/// (178 times for one `cells` part of one row, 34,000 times for the 192 cells of the 1M-row
/// store's report), where one read serves them all. A large part is read from the file, so
/// that its skipped columns (the logits, when only keys are wanted) are never read.
fn open_part(
    path: &Path,
    columns: &[&str],
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let file = File::open(path).io("open", path)?;
    let len = file.metadata().io("stat", path)?.len();
    if len <= READ_WHOLE_BYTES {
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&file).read_to_end(&mut bytes).io("read", path)?;
        build_reader(path, bytes::Bytes::from(bytes), columns, batch_rows)
    } else {
        build_reader(path, file, columns, batch_rows)
    }
}

fn build_reader<T: parquet::file::reader::ChunkReader + 'static>(
    path: &Path,
    source: T,
    columns: &[&str],
    batch_rows: usize,
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader> {
    let parquet_err = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(source).map_err(parquet_err)?;
    let builder = if columns.is_empty() {
        builder
    } else {
        let schema = builder.parquet_schema();
        let mut indices = Vec::with_capacity(columns.len());
        for name in columns {
            let idx = builder
                .schema()
                .index_of(name)
                .map_err(|_| Error::Invalid(format!("{}: no column `{name}`", path.display())))?;
            indices.push(idx);
        }
        let mask = ProjectionMask::roots(schema, indices);
        builder.with_projection(mask)
    };
    builder
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_err)
}

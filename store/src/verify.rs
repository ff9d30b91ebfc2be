//! Checking a store's committed parts against its manifest (`deltann store verify`), for the
//! damage no crash leaves but people and disks do: a part deleted or truncated by hand, a partial
//! copy, bit rot. [`crate::StoreWriter::repair`] then drops what cannot be read; every readable
//! committed part stays.

use std::fs::File;
use std::path::Path;

use parquet::file::metadata::ParquetMetaDataReader;

use crate::error::Result;
use crate::layout::{self, Table};
use crate::manifest::PartEntry;
use crate::reader::Store;

/// What is wrong with a listed part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The file is not there.
    Missing,
    /// Its size is not the listed one.
    Size { listed: u64, found: u64 },
    /// Its bytes do not hash to the listed checksum.
    Checksum { listed: String, found: String },
    /// Its Parquet footer cannot be read.
    Unreadable(String),
    /// Its footer counts other rows than the manifest.
    Rows { listed: u64, found: u64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::Size { listed, found } => {
                write!(f, "{found} bytes, the manifest says {listed}")
            }
            Problem::Checksum { listed, found } => {
                write!(f, "checksum {found}, the manifest says {listed}")
            }
            Problem::Unreadable(e) => write!(f, "unreadable: {e}"),
            Problem::Rows { listed, found } => {
                write!(f, "{found} rows, the manifest says {listed}")
            }
        }
    }
}

/// A listed part and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged {
    pub entry: PartEntry,
    pub problem: Problem,
}

/// Checks one listed part (present, its size, its checksum when listed, its footer's row count);
/// `None` when it is sound.
pub fn check_part(root: &Path, entry: &PartEntry) -> Option<Problem> {
    check(root, entry, true)
}

/// [`check_part`] without the checksum: a `stat` and a footer read, cheap enough for every
/// snapshot of a reader that skips damaged parts.
pub fn check_part_quick(root: &Path, entry: &PartEntry) -> Option<Problem> {
    check(root, entry, false)
}

fn check(root: &Path, entry: &PartEntry, checksum: bool) -> Option<Problem> {
    let path = root.join(&entry.path);
    let found = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(_) => return Some(Problem::Missing),
    };
    if found != entry.bytes {
        return Some(Problem::Size {
            listed: entry.bytes,
            found,
        });
    }
    if let Some(listed) = entry.xxh3.as_ref().filter(|_| checksum) {
        match crate::writer::file_checksum(&path) {
            Ok(found) if found == *listed => {}
            Ok(found) => {
                return Some(Problem::Checksum {
                    listed: listed.clone(),
                    found,
                });
            }
            Err(e) => return Some(Problem::Unreadable(e.to_string())),
        }
    }
    let rows = File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|file| {
            ParquetMetaDataReader::new()
                .parse_and_finish(&file)
                .map_err(|e| e.to_string())
        })
        .map(|m| u64::try_from(m.file_metadata().num_rows()).unwrap_or(0));
    match rows {
        Ok(found) if found == entry.rows => None,
        Ok(found) => Some(Problem::Rows {
            listed: entry.rows,
            found,
        }),
        Err(e) => Some(Problem::Unreadable(e)),
    }
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Listed parts, and their bytes.
    pub parts: usize,
    pub bytes: u64,
    /// Listed parts written before manifest entries carried checksums (size and footer checked).
    pub without_checksum: usize,
    pub damaged: Vec<Damaged>,
    /// Parquet files in table directories that no entry lists (the next writer adopts the one a
    /// crash can leave and quarantines the others).
    pub strays: Vec<String>,
    /// Files left in `_tmp/` (deleted by the next writer).
    pub leftovers: usize,
}

impl Verified {
    /// Whether every listed part is sound.
    pub fn is_sound(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// Checks every listed part in full, and lists what else lies in the store. Reads only; needs no
/// lock, so it can run next to a live `collect` (parts committed meanwhile are not seen).
///
/// # Errors
/// Fails when `root` is not a store or its manifest cannot be read.
pub fn verify(root: &Path) -> Result<Verified> {
    let store = Store::open(root)?;
    let mut out = Verified::default();
    for entry in store.entries() {
        out.parts += 1;
        out.bytes += entry.bytes;
        out.without_checksum += usize::from(entry.xxh3.is_none());
        if let Some(problem) = check_part(root, entry) {
            out.damaged.push(Damaged {
                entry: entry.clone(),
                problem,
            });
        }
    }
    let listed: std::collections::HashSet<&str> =
        store.entries().iter().map(|e| e.path.as_str()).collect();
    let mut files = Vec::new();
    for table in Table::ALL {
        crate::writer::collect_parts(root, &root.join(table.name()), &mut files)?;
    }
    files.retain(|f| !listed.contains(f.as_str()));
    files.sort();
    out.strays = files;
    out.leftovers = std::fs::read_dir(root.join(layout::TMP_DIR))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(out)
}

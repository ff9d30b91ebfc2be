//! Where things live inside a store directory.
//!
//! ```text
//! STORE/
//!   deltann-store.json            format marker and version
//!   _manifest.jsonl               append-only list of committed parts (the truth for deltann)
//!   _lock                         held by the one writer
//!   _tmp/                         parts being written (never read; cleared on recovery)
//!   _cache/                       preprocessed tensors shared by cells (not part of the results)
//!   runs/part-000001-….parquet
//!   models/ images/ cells/ errors/
//!   outputs/model=NAME/engine=ENGINE/part-000042-CELLID.parquet
//! ```
//!
//! Names starting with `_` are skipped by Hive-style readers (Spark, DuckDB, pyarrow), so a glob
//! over a table directory sees only renamed, complete parts. `outputs` is partitioned by model and
//! engine so that a query about one model reads only that model's files; the partition values are
//! not repeated inside the files (they are attributes of the cell, joined from `cells`).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// File that marks a directory as a deltann store.
pub const FORMAT_FILE: &str = "deltann-store.json";
/// The append-only manifest of committed parts.
pub const MANIFEST_FILE: &str = "_manifest.jsonl";
/// The writer's lock file.
pub const LOCK_FILE: &str = "_lock";
/// Parts in progress.
pub const TMP_DIR: &str = "_tmp";
/// Preprocessed-tensor cache shared by the cells of a run.
pub const CACHE_DIR: &str = "_cache";
/// Files recovery found damaged, kept for inspection rather than deleted.
pub const QUARANTINE_DIR: &str = "_quarantine";
/// Current store format version: 2 keeps `outputs.logits` as little-endian float32 bytes, 1 kept
/// them as Parquet lists (`deltann store upgrade` rewrites a version 1 store).
pub const FORMAT_VERSION: u32 = 2;

/// The tables of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// One row per `collect` invocation: provenance (sweep file, version, host).
    Runs,
    /// One row per model file: name, family, precision, sha256, preprocessing, class names.
    Models,
    /// One row per image: path, sha256, size, colour type, EXIF orientation, label, decode status.
    Images,
    /// One row per cell attempt: every parameter, engine version, host, status, timing summary.
    Cells,
    /// One row per cell x image x repetition: top-5, logits, hash, latency.
    Outputs,
    /// One row per failure that is not a whole cell: undecodable images, per-image engine errors.
    Errors,
    /// One row per `deltann localize` result: a pass bisection, or one image's first divergent
    /// node.
    Localizations,
    /// One row per node compared in a layer localisation: the per-node error curve.
    NodeErrors,
}

impl Table {
    /// Every table, in the order documentation lists them.
    pub const ALL: [Table; 8] = [
        Table::Runs,
        Table::Models,
        Table::Images,
        Table::Cells,
        Table::Outputs,
        Table::Errors,
        Table::Localizations,
        Table::NodeErrors,
    ];

    /// The table's directory name (also its SQL name).
    pub fn name(self) -> &'static str {
        match self {
            Table::Runs => "runs",
            Table::Models => "models",
            Table::Images => "images",
            Table::Cells => "cells",
            Table::Outputs => "outputs",
            Table::Errors => "errors",
            Table::Localizations => "localizations",
            Table::NodeErrors => "node_errors",
        }
    }

    /// The Hive partition keys of this table, outermost first.
    pub fn partition_keys(self) -> &'static [&'static str] {
        match self {
            Table::Outputs => &["model", "engine"],
            _ => &[],
        }
    }

    /// Parses a table name.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hive partition values of one part, in the order of [`Table::partition_keys`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition(pub Vec<(String, String)>);

impl Partition {
    /// No partitioning.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Builds a partition for `table` from values given in key order.
    ///
    /// # Errors
    /// Fails when the number of values does not match the table's keys, or a value has a
    /// character outside `[A-Za-z0-9._-]` (values become directory names, read back by any Hive
    /// reader, so they must not need escaping).
    pub fn for_table(table: Table, values: &[&str]) -> Result<Self> {
        let keys = table.partition_keys();
        if keys.len() != values.len() {
            return Err(Error::Invalid(format!(
                "table {table} is partitioned by {keys:?}, got {} values",
                values.len()
            )));
        }
        for v in values {
            check_partition_value(v)?;
        }
        Ok(Self(
            keys.iter()
                .zip(values)
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ))
    }

    /// The relative directory, e.g. `model=mobilenetv2/engine=ort`.
    pub fn dir(&self) -> PathBuf {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Checks that a string can be a Hive partition value without escaping.
///
/// # Errors
/// Fails on an empty value or one with characters other than ASCII letters, digits, `.`, `_`, `-`.
pub fn check_partition_value(v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && !v.starts_with('.')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "`{v}` cannot be a partition value: use ASCII letters, digits, '.', '_' or '-' \
             (not starting with '.')"
        )))
    }
}

/// The file name of a committed part: sequence number first, so `ls` shows commit order.
pub fn part_file_name(seq: u64, tag: &str) -> String {
    if tag.is_empty() {
        format!("part-{seq:06}.parquet")
    } else {
        format!("part-{seq:06}-{tag}.parquet")
    }
}

/// The kind of network file system `path` lives on, if it is one deltann can recognise (by the
/// file system's magic number). The store's guarantees (one writer through `flock`, durable
/// commits through fsync and rename) assume a local file system; on NFS, SMB, CIFS or FUSE
/// mounts they depend on the server and its configuration.
pub fn network_file_system(path: &Path) -> Option<&'static str> {
    let stat = rustix::fs::statfs(path).ok()?;
    // `f_type`'s width differs between platforms (i64 here, u32 or i32 elsewhere).
    #[allow(clippy::useless_conversion)]
    file_system_kind(i64::from(stat.f_type))
}

/// The network file system a `statfs` magic number names (`None` for local ones).
pub fn file_system_kind(magic: i64) -> Option<&'static str> {
    match magic {
        0x6969 => Some("NFS"),
        0x517B => Some("SMB"),
        0xFE53_4D42 => Some("SMB2"),
        0xFF53_4D42 => Some("CIFS"),
        0x6573_5546 => Some("FUSE (sshfs, s3fs, ...)"),
        0x00C3_6400 => Some("Ceph"),
        0x5346_414F => Some("AFS"),
        0x0102_1997 => Some("9P"),
        0x0BD0_0BD0 => Some("Lustre"),
        0x4750_4653 => Some("GPFS"),
        _ => None,
    }
}

/// Parses the sequence number back out of a part file name.
pub fn part_seq(file_name: &str) -> Option<u64> {
    let rest = file_name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    rest.split('-').next()?.parse().ok()
}

/// A path relative to the store root, written with `/` whatever the platform.
pub fn relative_string(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn network_file_systems_are_recognised_by_magic() {
        assert_eq!(super::file_system_kind(0x6969), Some("NFS"));
        assert_eq!(super::file_system_kind(0xFF53_4D42), Some("CIFS"));
        assert_eq!(super::file_system_kind(0xEF53), None); // ext4
        assert_eq!(super::file_system_kind(0x0102_1994), None); // tmpfs
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::network_file_system(dir.path()), None);
    }

    use super::*;

    #[test]
    fn partition_dir_and_validation() {
        let p = Partition::for_table(Table::Outputs, &["mobilenetv2-int8", "ort"]).unwrap();
        assert_eq!(p.dir(), PathBuf::from("model=mobilenetv2-int8/engine=ort"));
        assert!(Partition::for_table(Table::Outputs, &["a/b", "ort"]).is_err());
        assert!(Partition::for_table(Table::Outputs, &["..", "ort"]).is_err());
        assert!(Partition::for_table(Table::Outputs, &["m"]).is_err());
        assert!(
            Partition::for_table(Table::Cells, &[])
                .unwrap()
                .0
                .is_empty()
        );
    }

    #[test]
    fn part_names_round_trip() {
        let name = part_file_name(42, "abcdef0123456789");
        assert_eq!(name, "part-000042-abcdef0123456789.parquet");
        assert_eq!(part_seq(&name), Some(42));
        assert_eq!(part_seq(&part_file_name(1_234_567, "")), Some(1_234_567));
        assert_eq!(part_seq("notes.txt"), None);
    }
}

//! Upgrading a format 1 store to format 2: `outputs.logits` from Parquet lists to binary values.
//!
//! Format 1 stored each row's logits as a list of float32s. Decoding such a list costs a
//! repetition and a definition level per float, and on a million-row store it was most of the
//! analysis's time (about 10x the cost of the same floats as one binary value each, measured in
//! BENCHMARKS.md). Format 2 keeps the floats' little-endian bytes in one binary value per row.
//!
//! The upgrade keeps the commit protocol's promise that nothing committed is lost at any instant:
//!
//! 1. every `outputs` part still in list form is rewritten beside itself, under its name with a
//!    `-v2` suffix (same sequence number, same footer metadata), fsynced and renamed into place;
//! 2. the manifest is replaced in one rename by one naming the new files (the commit point);
//! 3. the derived analysis state is removed (it names parts by path; the next analysis rebuilds
//!    it), then the format marker says version 2;
//! 4. only then are the old files deleted.
//!
//! A crash before 2 leaves the old manifest naming the old, untouched files; after 2, the new
//! files. Running the upgrade again finishes the job: parts already binary are kept, and the
//! leftovers of the interrupted run (a `-v2` file the manifest does not name, or the original of
//! one it does) are removed. Any other file the manifest does not name is quarantined, as a
//! writer's recovery would do, so that no list-form part can be adopted into the new format.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch};
use arrow::datatypes::{DataType, Float32Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::{Error, IoContext, Result};
use crate::layout::{self, Table};
use crate::manifest::{self, PartEntry};
use crate::outputs::logits_bytes;
use crate::schema::{self, col};
use crate::writer::{self, PART_META_KEY};

/// The suffix an upgraded part's file name takes before `.parquet`.
const SUFFIX: &str = "-v2";

/// What an upgrade did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgraded {
    /// The store was already at the current format when the upgrade started.
    pub already_current: bool,
    /// `outputs` parts rewritten.
    pub parts: usize,
    /// Their rows.
    pub rows: u64,
    /// Their bytes before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Files the manifest did not name, moved to `_quarantine/`.
    pub quarantined: Vec<String>,
}

/// Upgrades the store at `root` to the current format; `progress` is called with (parts done,
/// parts to do) as each part is rewritten.
///
/// # Errors
/// Fails when the store is locked by a writer, when it is neither format 1 nor 2, or on any
/// read, write or rename error (the store is then left as the module header describes, and
/// running the upgrade again finishes it).
pub fn upgrade(root: &Path, mut progress: impl FnMut(usize, usize)) -> Result<Upgraded> {
    let format_path = root.join(layout::FORMAT_FILE);
    if !format_path.is_file() {
        return Err(Error::NotAStore {
            path: root.to_path_buf(),
            reason: format!("not a deltann store (no {})", layout::FORMAT_FILE),
        });
    }
    let version = writer::format_version(root)?;
    let mut done = Upgraded {
        already_current: version == Some(u64::from(layout::FORMAT_VERSION)),
        ..Upgraded::default()
    };
    if done.already_current {
        return Ok(done);
    }
    if version != Some(1) {
        return Err(Error::NotAStore {
            path: format_path,
            reason: format!(
                "format version {version:?}: only version 1 can be upgraded to {}",
                layout::FORMAT_VERSION
            ),
        });
    }
    let _lock = writer::lock_store(root)?;

    writer::clear_tmp(root)?;
    let manifest_path = root.join(layout::MANIFEST_FILE);
    let mut entries = manifest::read(&manifest_path)?.entries;

    // Leftovers of an interrupted upgrade, then anything else no entry names.
    for entry in &entries {
        let leftover = match entry.path.strip_suffix(&format!("{SUFFIX}.parquet")) {
            Some(stem) => format!("{stem}.parquet"),
            None => with_suffix(&entry.path),
        };
        let path = root.join(&leftover);
        if entry.table == Table::Outputs && root.join(&entry.path).is_file() && path.is_file() {
            fs::remove_file(&path).io("remove", &path)?;
        }
    }
    let named: std::collections::HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut strays = Vec::new();
    for table in Table::ALL {
        writer::collect_parts(root, &root.join(table.name()), &mut strays)?;
    }
    strays.retain(|rel| !named.contains(rel.as_str()));
    strays.sort();
    for rel in &strays {
        writer::quarantine(root, rel)?;
    }
    done.quarantined = strays;

    let todo: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.table == Table::Outputs)
        .map(|(i, _)| i)
        .collect();
    let mut originals = Vec::new();
    for (n, &i) in todo.iter().enumerate() {
        if let Some(new) = rewrite_part(root, &entries[i])? {
            done.parts += 1;
            done.rows += new.rows;
            done.bytes_before += entries[i].bytes;
            done.bytes_after += new.bytes;
            originals.push(entries[i].path.clone());
            entries[i] = new;
        }
        progress(n + 1, todo.len());
    }

    manifest::rewrite(&manifest_path, &entries)?;
    writer::sync_dir(root)?;
    let derived = root.join("derived");
    if derived.is_dir() {
        fs::remove_dir_all(&derived).io("remove", &derived)?;
    }
    writer::write_format(root)?;
    for rel in originals {
        let path = root.join(&rel);
        fs::remove_file(&path).io("remove", &path)?;
    }
    Ok(done)
}

fn with_suffix(rel: &str) -> String {
    match rel.strip_suffix(".parquet") {
        Some(stem) => format!("{stem}{SUFFIX}.parquet"),
        None => format!("{rel}{SUFFIX}"),
    }
}

/// Rewrites one `outputs` part with binary logits beside itself; `None` when it already has
/// them (a part rewritten by an interrupted upgrade, or written by a format 2 writer).
fn rewrite_part(root: &Path, entry: &PartEntry) -> Result<Option<PartEntry>> {
    let path = root.join(&entry.path);
    let parquet = |source| Error::Parquet {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).io("open", &path)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
    let logits_type = builder
        .schema()
        .field_with_name(col::LOGITS)
        .map(|f| f.data_type().clone())
        .map_err(|_| invalid(&path, "no `logits` column"))?;
    if logits_type == DataType::Binary {
        return Ok(None);
    }
    let footer = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == PART_META_KEY))
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| invalid(&path, format!("no {PART_META_KEY} footer")))?;
    let reader = builder.build().map_err(parquet)?;

    let rel = with_suffix(&entry.path);
    let staged = root
        .join(layout::TMP_DIR)
        .join(format!("upgrade-{:06}.parquet", entry.seq));
    let out = File::create(&staged).io("create", &staged)?;
    let target_schema = schema::schema(Table::Outputs);
    let mut w = ArrowWriter::try_new(
        out,
        target_schema.clone(),
        Some(writer::writer_properties(Table::Outputs, footer)),
    )
    .map_err(parquet)?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| invalid(&path, e))?;
        let columns = target_schema
            .fields()
            .iter()
            .map(|field| {
                let column = batch
                    .column_by_name(field.name())
                    .ok_or_else(|| invalid(&path, format!("no `{}` column", field.name())))?;
                if field.name() == col::LOGITS {
                    binary_logits(column, &path)
                } else {
                    Ok(column.clone())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(target_schema.clone(), columns)
            .map_err(|e| invalid(&path, format!("does not fit format 2: {e}")))?;
        rows += batch.num_rows() as u64;
        w.write(&batch).map_err(parquet)?;
    }
    let out = w.into_inner().map_err(parquet)?;
    out.sync_all().io("fsync", &staged)?;
    drop(out);
    if rows != entry.rows {
        return Err(invalid(
            &path,
            format!("read {rows} rows, the manifest lists {}", entry.rows),
        ));
    }
    let target = root.join(&rel);
    fs::rename(&staged, &target).io("rename", &target)?;
    if let Some(dir) = target.parent() {
        writer::sync_dir(dir)?;
    }
    Ok(Some(PartEntry {
        path: rel,
        bytes: fs::metadata(&target).io("stat", &target)?.len(),
        xxh3: Some(writer::file_checksum(&target)?),
        ..entry.clone()
    }))
}

/// A format 1 logits column (a list of float32s) as format 2's binary values.
fn binary_logits(column: &ArrayRef, path: &Path) -> Result<ArrayRef> {
    let list = column
        .as_list_opt::<i32>()
        .ok_or_else(|| invalid(path, "`logits` is neither a list nor binary"))?;
    let mut out = BinaryBuilder::with_capacity(list.len(), list.values().len() * 4);
    for i in 0..list.len() {
        if list.is_null(i) {
            out.append_null();
            continue;
        }
        let value = list.value(i);
        let floats = value
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| invalid(path, "`logits` holds something other than float32"))?;
        if floats.null_count() > 0 {
            return Err(invalid(path, "`logits` has a null float"));
        }
        out.append_value(logits_bytes(floats.values()));
    }
    Ok(Arc::new(out.finish()))
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {reason}", path.display()))
}

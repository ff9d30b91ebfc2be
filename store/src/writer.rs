//! The commit protocol: how a part becomes visible, and how a writer recovers after a crash.
//!
//! A part is written to `_tmp/`, closed, fsynced, renamed to its final name inside the table
//! directory (the directory is fsynced too), and only then recorded in the manifest with a fsynced
//! append. So at any instant a crash leaves one of:
//!
//! 1. a file in `_tmp/`: incomplete, never visible; recovery deletes it;
//! 2. a renamed part with no manifest entry: complete (it was fsynced before the rename); recovery
//!    re-creates its entry from the metadata stored in the part's own footer ("adoption");
//! 3. a torn manifest line: ignored by readers, cut off by the next writer, whose recovery then
//!    adopts the part as in 2.
//!
//! Parts that belong together (a batch's outputs and the errors of its failed repetitions) commit
//! as a group ([`StoreWriter::commit_group`]): each member's footer names its place in the group,
//! all are renamed, and then their manifest lines go down in one write. Recovery adopts a group
//! only when every member is there; readers take a group's lines only whole.
//!
//! So a crash loses at most the part being written, and since a part's identity (sequence number,
//! cell) is fixed before rename, nothing is ever committed twice. One writer at a time: the writer
//! holds an exclusive lock on `_lock` for its whole life.
//!
//! Errors are handled by the same rule as crashes. A failure before the rename (writing or
//! syncing the temporary file) leaves nothing visible and the writer goes on. A failure at or
//! after the rename (rename, directory fsync, manifest append or fsync) leaves the part's fate
//! to recovery, so the writer commits nothing more ([`Error::Stopped`]): the only part recovery
//! may then adopt is the one with the next sequence number, under exactly the name the writer
//! gave it. Anything else found in a table directory (a copy, a file from elsewhere, a damaged
//! part) is moved to `_quarantine/`, never read and never deleted.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::faults::{self, Fault, Faults, Step};
use crate::layout::{self, Partition, Table};
use crate::manifest::{self, Group, ManifestWriter, PartEntry};
use crate::reader::Store;

/// Footer key under which a part records what its manifest entry would say.
pub const PART_META_KEY: &str = "deltann.part";
/// Footer key under which a member of a group records its place in it ([`manifest::Group`]).
pub const GROUP_KEY: &str = "deltann.group";

/// Rows per row group in `outputs` parts: bounds the writer's buffer to a few MB with full logits.
pub const OUTPUTS_ROW_GROUP_ROWS: usize = 1024;
/// A row group is closed once this many bytes are buffered, whatever its row count.
pub const ROW_GROUP_BYTES: usize = 16 << 20;

/// What a part says about itself, beyond its table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    /// The cell the rows belong to, if any.
    pub cell_id: Option<String>,
    /// The run that wrote the part.
    pub run_id: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct FooterMeta {
    table: Table,
    partition: Partition,
    #[serde(flatten)]
    meta: PartMeta,
}

/// What recovery found and did when a writer opened the store.
#[derive(Debug, Default)]
pub struct Recovery {
    /// A torn manifest line was cut off.
    pub torn_manifest_line: bool,
    /// Complete parts without a manifest entry, now recorded (relative paths).
    pub adopted: Vec<String>,
    /// Files moved to `_quarantine/` (relative paths they had): damaged parts, and files that are
    /// not the part a crash can leave (copies, files from elsewhere).
    pub quarantined: Vec<String>,
    /// Unfinished temporary files deleted.
    pub tmp_removed: usize,
    /// Manifest entries whose file is missing (someone deleted it by hand).
    pub missing: Vec<String>,
}

impl Recovery {
    /// Whether recovery had anything to do.
    pub fn is_clean(&self) -> bool {
        !self.torn_manifest_line
            && self.adopted.is_empty()
            && self.quarantined.is_empty()
            && self.tmp_removed == 0
            && self.missing.is_empty()
    }
}

struct Inner {
    manifest: ManifestWriter,
    entries: Vec<PartEntry>,
    next_seq: u64,
    /// Why commits are refused, after one failed at or after its rename.
    failed: Option<String>,
}

/// The single writer of a store. Shareable across threads: commits are serialised internally.
pub struct StoreWriter {
    root: PathBuf,
    _lock: File,
    inner: Mutex<Inner>,
    tmp_counter: AtomicU64,
    faults: Option<Arc<dyn Faults>>,
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Opens (creating if needed) the store at `root` for writing, takes its lock and recovers
    /// from whatever an earlier crash left.
    ///
    /// # Errors
    /// Fails when the directory cannot be created or written, is a non-empty directory that is not
    /// a store, has an unknown format version, or is locked by another writer.
    pub fn open(root: &Path) -> Result<(Self, Recovery)> {
        Self::open_with_faults(root, None)
    }

    /// As [`StoreWriter::open`], with faults injected into later commits (tests of the commit
    /// protocol; see [`crate::faults`]). Recovery itself runs without faults.
    ///
    /// # Errors
    /// As [`StoreWriter::open`].
    pub fn open_with_faults(
        root: &Path,
        faults: Option<Arc<dyn Faults>>,
    ) -> Result<(Self, Recovery)> {
        prepare_root(root)?;
        let lock = lock_store(root)?;

        let mut recovery = Recovery {
            tmp_removed: clear_tmp(root)?,
            ..Recovery::default()
        };

        let manifest_path = root.join(layout::MANIFEST_FILE);
        let read = manifest::read(&manifest_path)?;
        recovery.torn_manifest_line = read.torn_tail;
        let mut manifest = ManifestWriter::open(&manifest_path, read.valid_len)?;
        let mut entries = read.entries;

        let known: HashSet<String> = entries.iter().map(|e| e.path.clone()).collect();
        for entry in &entries {
            if !root.join(&entry.path).is_file() {
                recovery.missing.push(entry.path.clone());
            }
        }
        let mut orphans = Vec::new();
        for table in Table::ALL {
            collect_parts(root, &root.join(table.name()), &mut orphans)?;
        }
        orphans.retain(|rel| !known.contains(rel));
        orphans.sort_by_key(|rel| part_seq_of(rel));
        // A crash (or a writer stopped by a failed commit) leaves at most the part with the next
        // sequence number, or the members of the next group; older deltann versions could leave
        // a run of single parts. A group is adopted whole or not at all.
        let mut next_seq = entries.iter().map(|e| e.seq).max().unwrap_or(0) + 1;
        let mut pending = orphans.into_iter().peekable();
        while let Some(rel) = pending.next() {
            let mut members = vec![(rel.clone(), adopt(root, &rel, next_seq))];
            if let Some(Ok(first)) = members.first().map(|(_, a)| a)
                && let Some(group) = first.group
                && group.index == 0
            {
                for index in 1..group.len {
                    let Some(rel) =
                        pending.next_if(|r| part_seq_of(r) == next_seq + u64::from(index))
                    else {
                        break;
                    };
                    let adopted = adopt(root, &rel, next_seq + u64::from(index)).and_then(|e| {
                        if e.group
                            == Some(Group {
                                index,
                                len: group.len,
                            })
                        {
                            Ok(e)
                        } else {
                            Err(Error::Invalid(format!(
                                "{rel}: not member {index} of its group"
                            )))
                        }
                    });
                    members.push((rel, adopted));
                }
            }
            let whole = members.iter().all(|(_, a)| a.is_ok())
                && match members
                    .first()
                    .and_then(|(_, a)| a.as_ref().ok())
                    .and_then(|e| e.group)
                {
                    None => true,
                    Some(g) => g.index == 0 && members.len() == g.len as usize,
                };
            if whole {
                let adopted: Vec<PartEntry> = members
                    .iter()
                    .filter_map(|(_, a)| a.as_ref().ok().cloned())
                    .collect();
                manifest.append_all(&adopted)?;
                next_seq += adopted.len() as u64;
                entries.extend(adopted);
                recovery
                    .adopted
                    .extend(members.into_iter().map(|(rel, _)| rel));
            } else {
                for (rel, _) in members {
                    quarantine(root, &rel)?;
                    recovery.quarantined.push(rel);
                }
            }
        }
        let manifest = manifest.with_faults(faults.clone());
        Ok((
            Self {
                root: root.to_path_buf(),
                _lock: lock,
                inner: Mutex::new(Inner {
                    manifest,
                    entries,
                    next_seq,
                    failed: None,
                }),
                tmp_counter: AtomicU64::new(0),
                faults,
            },
            recovery,
        ))
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A read-only view of everything committed so far.
    pub fn snapshot(&self) -> Store {
        let entries = self
            .inner
            .lock()
            .map(|inner| inner.entries.clone())
            .unwrap_or_default();
        Store::from_entries(self.root.clone(), entries)
    }

    /// Starts a part of `table`. Rows written to it stay invisible until [`StoreWriter::commit`].
    ///
    /// # Errors
    /// Fails when the temporary file cannot be created, or the partition does not fit the table.
    pub fn begin(&self, table: Table, partition: Partition, meta: PartMeta) -> Result<PartWriter> {
        if partition.0.len() != table.partition_keys().len() {
            return Err(Error::Invalid(format!(
                "table {table} needs partition keys {:?}",
                table.partition_keys()
            )));
        }
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .root
            .join(layout::TMP_DIR)
            .join(format!("{table}-{}-{n}.parquet.tmp", std::process::id()));
        let file = PartFile {
            file: File::create(&tmp_path).io("create", &tmp_path)?,
            path: tmp_path.clone(),
            faults: self.faults.clone(),
            hash: xxhash_rust::xxh3::Xxh3::new(),
        };
        let footer = serde_json::to_string(&FooterMeta {
            table,
            partition: partition.clone(),
            meta: meta.clone(),
        })
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let props = writer_properties(table, footer);
        let writer = ArrowWriter::try_new(file, crate::schema::schema(table), Some(props))
            .map_err(|source| Error::Parquet {
                path: tmp_path.clone(),
                source,
            })?;
        Ok(PartWriter {
            table,
            partition,
            meta,
            tmp_path,
            writer,
            rows: 0,
        })
    }

    /// Makes a part durable and visible: close, fsync, rename into place, fsync the directory,
    /// append the manifest entry. Returns the entry; an empty part is discarded (`None`).
    ///
    /// # Errors
    /// Fails on any I/O error; the part then stays invisible (at worst it is adopted by the next
    /// writer's recovery, which is correct because it is complete once renamed).
    pub fn commit(&self, part: PartWriter) -> Result<Option<PartEntry>> {
        Ok(self.commit_group(vec![part])?.pop())
    }

    /// Makes parts visible together or not at all, by the steps of [`StoreWriter::commit`]:
    /// every member is closed and fsynced first, then all are renamed, then their manifest lines
    /// are appended in one write. Empty parts are discarded; the entries of the others are
    /// returned in order. A crash at any instant leaves the whole group or none of it to readers
    /// and to recovery.
    ///
    /// # Errors
    /// As [`StoreWriter::commit`], for any member.
    pub fn commit_group(&self, parts: Vec<PartWriter>) -> Result<Vec<PartEntry>> {
        let mut kept = Vec::with_capacity(parts.len());
        for part in parts {
            if part.rows == 0 {
                let tmp_path = part.tmp_path.clone();
                drop(part);
                fs::remove_file(&tmp_path).io("remove", &tmp_path)?;
            } else {
                kept.push(part);
            }
        }
        let len = u32::try_from(kept.len())
            .map_err(|_| Error::Invalid(format!("a group of {} parts", kept.len())))?;
        let mut finished: Vec<Finished> = Vec::with_capacity(kept.len());
        let mut pending = kept.into_iter().enumerate();
        while let Some((index, part)) = pending.next() {
            let group = (len > 1).then_some(Group {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                len,
            });
            match finish(part, group, self) {
                Ok(done) => finished.push(done),
                Err(e) => {
                    // Nothing is visible yet: drop every member's file (recovery would, too).
                    for done in &finished {
                        let _ = fs::remove_file(&done.tmp_path);
                    }
                    for (_, rest) in pending {
                        let tmp_path = rest.tmp_path.clone();
                        drop(rest);
                        let _ = fs::remove_file(&tmp_path);
                    }
                    return Err(e);
                }
            }
        }
        if finished.is_empty() {
            return Ok(Vec::new());
        }

        self.publish(finished)
    }

    /// Takes the next sequence numbers for finished parts and makes them visible, under the
    /// lock, so the manifest's order is the order in which parts became visible. After an
    /// earlier failure at or after a rename nothing more is published (their files go).
    fn publish(&self, finished: Vec<Finished>) -> Result<Vec<PartEntry>> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::Invalid("store writer poisoned by a panic".into()))?;
        if let Some(reason) = &inner.failed {
            for done in &finished {
                let _ = fs::remove_file(&done.tmp_path);
            }
            return Err(Error::Stopped {
                path: self.root.clone(),
                reason: reason.clone(),
            });
        }
        let first = inner.next_seq;
        inner.next_seq += finished.len() as u64;
        let visible = self.make_visible(&mut inner, finished, first);
        if let Err(e) = &visible {
            inner.failed = Some(e.to_string());
        }
        visible
    }

    /// Renames finished parts into place and records them: the steps after which a failure
    /// leaves the parts' fate to recovery.
    fn make_visible(
        &self,
        inner: &mut Inner,
        parts: Vec<Finished>,
        first: u64,
    ) -> Result<Vec<PartEntry>> {
        let mut entries = Vec::with_capacity(parts.len());
        for (seq, part) in (first..).zip(parts) {
            let dir = self.root.join(part.table.name()).join(part.partition.dir());
            create_dirs(&self.root, &dir)?;
            let tag = part.meta.cell_id.as_deref().unwrap_or_default();
            let final_path = dir.join(layout::part_file_name(seq, tag));
            self.fault(Step::Rename, &final_path)
                .and_then(|()| fs::rename(&part.tmp_path, &final_path))
                .io("rename into place", &final_path)?;
            self.fault(Step::DirSync, &dir).io("fsync", &dir)?;
            sync_dir(&dir)?;
            let rel = final_path
                .strip_prefix(&self.root)
                .map(layout::relative_string)
                .map_err(|_| {
                    Error::Invalid(format!("{} escaped the store", final_path.display()))
                })?;
            entries.push(PartEntry {
                seq,
                table: part.table,
                path: rel,
                rows: part.rows,
                bytes: part.bytes,
                cell_id: part.meta.cell_id,
                run_id: part.meta.run_id,
                committed_at_us: crate::now_micros(),
                xxh3: Some(part.xxh3),
                group: part.group,
            });
        }
        inner.manifest.append_all(&entries)?;
        inner.entries.extend(entries.iter().cloned());
        Ok(entries)
    }

    /// An injected failure at `step`, if the writer has faults and one is due.
    fn fault(&self, step: Step, path: &Path) -> std::io::Result<()> {
        match self.faults.as_ref().and_then(|f| f.at(step, path)) {
            Some(_) => Err(faults::error(step, path)),
            None => Ok(()),
        }
    }

    /// Drops the manifest entries of listed parts that cannot be read (missing, truncated,
    /// checksum or footer wrong), moving what is left of their files to `_quarantine/`. Every
    /// sound part stays; sequence numbers are not reused. The manifest is rewritten whole (a
    /// temporary file, fsync, rename), so a crash leaves the old one or the new one.
    ///
    /// # Errors
    /// Fails when a file cannot be moved or the manifest cannot be rewritten.
    pub fn repair(&self) -> Result<Vec<crate::verify::Damaged>> {
        use crate::verify::{Damaged, check_part};
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| Error::Invalid("store writer poisoned by a panic".into()))?;
        let damaged: Vec<Damaged> = inner
            .entries
            .iter()
            .filter_map(|e| {
                check_part(&self.root, e).map(|problem| Damaged {
                    entry: e.clone(),
                    problem,
                })
            })
            .collect();
        if damaged.is_empty() {
            return Ok(damaged);
        }
        for d in &damaged {
            if self.root.join(&d.entry.path).exists() {
                quarantine(&self.root, &d.entry.path)?;
            }
        }
        let dropped: HashSet<u64> = damaged.iter().map(|d| d.entry.seq).collect();
        let keep: Vec<PartEntry> = inner
            .entries
            .iter()
            .filter(|e| !dropped.contains(&e.seq))
            .cloned()
            .collect();
        let path = self.root.join(layout::MANIFEST_FILE);
        let len = manifest::rewrite(&path, &keep)?;
        sync_dir(&self.root)?;
        inner.manifest = ManifestWriter::open(&path, len)?.with_faults(self.faults.clone());
        inner.entries = keep;
        Ok(damaged)
    }

    /// A fresh path in `_tmp/` for a part fetched from elsewhere (another store's committed
    /// part, downloaded before [`StoreWriter::commit_fetched`] makes it visible here).
    pub fn fetch_path(&self) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(layout::TMP_DIR)
            .join(format!("fetched-{}-{n}.parquet.tmp", std::process::id()))
    }

    /// Commits complete parts of another store, fetched into [`StoreWriter::fetch_path`]s, as
    /// one group here: each file's checksum is checked against `xxh3` and its footer read for its
    /// table, partition and cell (so it lands where this store's own part would), then the
    /// steps of [`StoreWriter::commit_group`] make them visible together under this store's next
    /// sequence numbers.
    ///
    /// # Errors
    /// Fails when a file's checksum differs from the one given, its footer is not a deltann
    /// part's, or any step of the commit fails; every fetched file is removed then.
    pub fn commit_fetched(&self, parts: Vec<(PathBuf, String)>) -> Result<Vec<PartEntry>> {
        let cleanup = |parts: &[(PathBuf, String)]| {
            for (path, _) in parts {
                let _ = fs::remove_file(path);
            }
        };
        let mut finished = Vec::with_capacity(parts.len());
        for (path, xxh3) in &parts {
            let checked = file_checksum(path).and_then(|sum| {
                if &sum == xxh3 {
                    fetched_part(path, sum)
                } else {
                    Err(Error::Invalid(format!(
                        "{}: checksum {sum}, expected {xxh3} (a damaged download)",
                        path.display()
                    )))
                }
            });
            match checked {
                Ok(part) => finished.push(part),
                Err(e) => {
                    cleanup(&parts);
                    return Err(e);
                }
            }
        }
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        // Made visible together: their places follow the group they were committed in there
        // (their footers), renumbered as this store's group (a repaired store's manifest may
        // have split a group into single parts).
        finished.sort_by_key(|f| f.group.map_or(0, |g| g.index));
        let len = u32::try_from(finished.len()).unwrap_or(u32::MAX);
        for (part, index) in finished.iter_mut().zip(0..) {
            part.group = (len > 1).then_some(Group { index, len });
        }
        self.publish(finished)
    }

    /// Writes `batches` as one part of `table` and commits it.
    ///
    /// # Errors
    /// As [`StoreWriter::begin`], [`PartWriter::write`] and [`StoreWriter::commit`].
    pub fn write_part(
        &self,
        table: Table,
        partition: Partition,
        meta: PartMeta,
        batches: &[RecordBatch],
    ) -> Result<Option<PartEntry>> {
        let mut part = self.begin(table, partition, meta)?;
        for batch in batches {
            part.write(batch)?;
        }
        self.commit(part)
    }
}

/// A part written, closed and synced, waiting to be made visible.
struct Finished {
    table: Table,
    partition: Partition,
    meta: PartMeta,
    group: Option<Group>,
    rows: u64,
    bytes: u64,
    xxh3: String,
    tmp_path: PathBuf,
}

/// Closes a part's temporary file (its footer naming its `group`, if any) and fsyncs it. On an
/// error the temporary file is removed: nothing of it was visible.
fn finish(part: PartWriter, group: Option<Group>, store: &StoreWriter) -> Result<Finished> {
    let PartWriter {
        table,
        partition,
        meta,
        tmp_path,
        mut writer,
        rows,
    } = part;
    if let Some(group) = group {
        let value = format!(r#"{{"index":{},"len":{}}}"#, group.index, group.len);
        writer.append_key_value_metadata(KeyValue::new(GROUP_KEY.into(), value));
    }
    let finished = writer
        .finish()
        .map_err(|source| Error::Parquet {
            path: tmp_path.clone(),
            source,
        })
        .and_then(|_| {
            store
                .fault(Step::PartSync, &tmp_path)
                .and_then(|()| writer.inner().file.sync_all())
                .io("fsync", &tmp_path)
        })
        .and_then(|()| fs::metadata(&tmp_path).io("stat", &tmp_path));
    let xxh3 = checksum_hex(writer.inner().hash.digest());
    drop(writer);
    let bytes = match finished {
        Ok(m) => m.len(),
        Err(e) => {
            let _ = fs::remove_file(&tmp_path);
            return Err(e);
        }
    };
    Ok(Finished {
        table,
        partition,
        meta,
        group,
        rows,
        bytes,
        xxh3,
        tmp_path,
    })
}

/// A fetched, complete part as [`StoreWriter::make_visible`] takes it: what it is comes from its
/// own footer, so it lands where this store would put such a part; it is fsynced here.
fn fetched_part(path: &Path, xxh3: String) -> Result<Finished> {
    let file = File::open(path).io("open", path)?;
    file.sync_all().io("fsync", path)?;
    let bytes = file.metadata().io("stat", path)?.len();
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
    let kv = |key: &str| {
        metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kvs| kvs.iter().find(|kv| kv.key == key))
            .and_then(|kv| kv.value.clone())
    };
    let footer: FooterMeta = kv(PART_META_KEY)
        .ok_or_else(|| Error::Invalid(format!("{}: no {PART_META_KEY} footer", path.display())))
        .and_then(|text| {
            serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        })?;
    let group = match kv(GROUP_KEY) {
        Some(text) => Some(
            serde_json::from_str::<Group>(&text)
                .map_err(|e| Error::Invalid(format!("{}: {GROUP_KEY}: {e}", path.display())))?,
        ),
        None => None,
    };
    Ok(Finished {
        table: footer.table,
        partition: footer.partition,
        meta: footer.meta,
        group,
        rows: u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0),
        bytes,
        xxh3,
        tmp_path: path.to_path_buf(),
    })
}

/// The temporary file of a part being written, with the writer's faults (if any) applied to
/// every write.
struct PartFile {
    file: File,
    path: PathBuf,
    faults: Option<Arc<dyn Faults>>,
    /// The checksum of the bytes written so far (the Parquet writer only appends).
    hash: xxhash_rust::xxh3::Xxh3,
}

impl Write for PartFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(fault) = self
            .faults
            .as_ref()
            .and_then(|f| f.at(Step::PartWrite, &self.path))
        {
            if fault == Fault::Torn {
                self.file.write_all(&buf[..buf.len() / 2])?;
            }
            return Err(faults::error(Step::PartWrite, &self.path));
        }
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A part being written. Dropping it without committing leaves a temporary file that the next
/// writer's recovery deletes.
pub struct PartWriter {
    table: Table,
    partition: Partition,
    meta: PartMeta,
    tmp_path: PathBuf,
    writer: ArrowWriter<PartFile>,
    rows: u64,
}

impl std::fmt::Debug for PartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartWriter")
            .field("table", &self.table)
            .field("tmp_path", &self.tmp_path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl PartWriter {
    /// Appends rows. The batch's schema must be the table's.
    ///
    /// # Errors
    /// Fails on a schema mismatch or a write error.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let parquet = |source| Error::Parquet {
            path: self.tmp_path.clone(),
            source,
        };
        self.writer.write(batch).map_err(parquet)?;
        // Row groups are bounded by bytes as well as rows: a model with tens of thousands of
        // classes would otherwise buffer a thousand rows of full logits per cell.
        if self.writer.in_progress_size() >= ROW_GROUP_BYTES {
            self.writer.flush().map_err(|source| Error::Parquet {
                path: self.tmp_path.clone(),
                source,
            })?;
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes written to the file plus those buffered for the current row group.
    pub fn bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// The table this part belongs to.
    pub fn table(&self) -> Table {
        self.table
    }
}

pub(crate) fn writer_properties(table: Table, footer: String) -> WriterProperties {
    // A `cells` or `runs` part holds one row: compressing its pages saves nothing, and a zstd
    // codec (a compression and a decompression context) is made for each of its columns by every
    // reader, 8,600 of them for a report over 192 cells.
    let compression = match table {
        Table::Cells | Table::Runs => Compression::UNCOMPRESSED,
        _ => Compression::ZSTD(ZstdLevel::default()),
    };
    let mut builder = WriterProperties::builder()
        .set_compression(compression)
        .set_key_value_metadata(Some(vec![KeyValue::new(PART_META_KEY.into(), footer)]));
    if table == Table::Outputs {
        // Logits are little-endian float32 bytes that nothing compresses much (zstd after byte
        // splitting saved 15% as lists) while decompressing them would cost more than the rest
        // of reading them: they are written plain, without dictionary or statistics.
        let logits = ColumnPath::from(vec![crate::schema::col::LOGITS.to_string()]);
        builder = builder
            .set_max_row_group_row_count(Some(OUTPUTS_ROW_GROUP_ROWS))
            .set_column_compression(logits.clone(), Compression::UNCOMPRESSED)
            .set_column_dictionary_enabled(logits.clone(), false)
            .set_column_statistics_enabled(logits.clone(), EnabledStatistics::None)
            .set_column_encoding(logits, Encoding::PLAIN);
    }
    builder.build()
}

fn prepare_root(root: &Path) -> Result<()> {
    let format_path = root.join(layout::FORMAT_FILE);
    if format_path.is_file() {
        return check_format(root);
    }
    if root.exists() {
        if !root.is_dir() {
            return Err(Error::NotAStore {
                path: root.to_path_buf(),
                reason: "exists and is not a directory".into(),
            });
        }
        let non_empty = fs::read_dir(root).io("list", root)?.next().is_some();
        if non_empty {
            return Err(Error::NotAStore {
                path: root.to_path_buf(),
                reason: format!(
                    "is not empty and has no {}: refusing to write results into it",
                    layout::FORMAT_FILE
                ),
            });
        }
    }
    fs::create_dir_all(root).io("create store directory", root)?;
    write_format(root)
}

/// Writes the format marker of the current version (temporary file, fsync, rename).
pub(crate) fn write_format(root: &Path) -> Result<()> {
    let format_path = root.join(layout::FORMAT_FILE);
    let body = serde_json::json!({ "format": "deltann-store", "version": layout::FORMAT_VERSION });
    let tmp = root.join(format!("{}.tmp", layout::FORMAT_FILE));
    fs::write(&tmp, format!("{body:#}\n")).io("write", &tmp)?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .io("fsync", &tmp)?;
    fs::rename(&tmp, &format_path).io("rename", &format_path)?;
    sync_dir(root)
}

/// The format version an existing store's marker names.
pub(crate) fn format_version(root: &Path) -> Result<Option<u64>> {
    let path = root.join(layout::FORMAT_FILE);
    let text = fs::read_to_string(&path).map_err(|e| Error::NotAStore {
        path: root.to_path_buf(),
        reason: format!("cannot read {}: {e}", layout::FORMAT_FILE),
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::NotAStore {
        path: path.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    Ok(value.get("version").and_then(serde_json::Value::as_u64))
}

/// Checks the format marker of an existing store.
pub(crate) fn check_format(root: &Path) -> Result<()> {
    let path = root.join(layout::FORMAT_FILE);
    match format_version(root)? {
        Some(v) if v == u64::from(layout::FORMAT_VERSION) => Ok(()),
        Some(1) => Err(Error::NotAStore {
            path,
            reason: format!(
                "store format version 1 (logits as Parquet lists), this deltann reads version {}: \
                 `deltann store upgrade {}` rewrites its outputs parts (keeping the old ones until \
                 the new ones are committed)",
                layout::FORMAT_VERSION,
                root.display()
            ),
        }),
        Some(v) => Err(Error::NotAStore {
            path,
            reason: format!(
                "store format version {v}, this deltann reads version {}",
                layout::FORMAT_VERSION
            ),
        }),
        None => Err(Error::NotAStore {
            path,
            reason: "no format version".into(),
        }),
    }
}

/// A checksum as manifest entries hold it.
pub(crate) fn checksum_hex(digest: u64) -> String {
    format!("{digest:016x}")
}

/// The xxh3-64 of a file's bytes, read in blocks.
pub fn file_checksum(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut file = File::open(path).io("open", path)?;
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).io("read", path)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    Ok(checksum_hex(hash.digest()))
}

/// Deletes the unfinished files in `_tmp/` (creating it if needed); returns how many.
pub(crate) fn clear_tmp(root: &Path) -> Result<usize> {
    let tmp = root.join(layout::TMP_DIR);
    fs::create_dir_all(&tmp).io("create", &tmp)?;
    let mut removed = 0;
    for entry in fs::read_dir(&tmp).io("list", &tmp)? {
        let path = entry.io("list", &tmp)?.path();
        if path.is_file() {
            fs::remove_file(&path).io("remove", &path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Takes the store's write lock, held for as long as the returned file is open.
pub(crate) fn lock_store(root: &Path) -> Result<File> {
    let lock_path = root.join(layout::LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .io("create", &lock_path)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path: lock_path }),
        Err(fs::TryLockError::Error(e)) => Err(e).io("lock", &lock_path),
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).io("fsync", dir)
}

/// Creates `dir` (under `root`) and whatever parents it lacks, and fsyncs the parent of each one
/// created, so that a part renamed into it cannot vanish with its directory after a crash.
fn create_dirs(root: &Path, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.is_dir() && at.starts_with(root) && at != root {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    fs::create_dir_all(dir).io("create", dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Every `.parquet` file under `dir`, relative to `root`.
pub(crate) fn collect_parts(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(dir).io("list", dir)? {
        let path = entry.io("list", dir)?.path();
        if path.is_dir() {
            collect_parts(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet")
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(layout::relative_string(rel));
        }
    }
    Ok(())
}

fn part_seq_of(rel: &str) -> u64 {
    rel.rsplit('/')
        .next()
        .and_then(layout::part_seq)
        .unwrap_or(u64::MAX)
}

/// Rebuilds the manifest entry of a complete part from its location and footer, if it is the part
/// with sequence number `next` at exactly the path the writer gives such a part.
fn adopt(root: &Path, rel: &str, next: u64) -> Result<PartEntry> {
    let path = root.join(rel);
    let file = File::open(&path).io("open", &path)?;
    let bytes = file.metadata().io("stat", &path)?.len();
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|source| Error::Parquet {
            path: path.clone(),
            source,
        })?;
    let footer = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == PART_META_KEY))
        .and_then(|kv| kv.value.as_deref())
        .ok_or_else(|| Error::Invalid(format!("{rel}: no {PART_META_KEY} footer")))?;
    let footer: FooterMeta =
        serde_json::from_str(footer).map_err(|e| Error::Invalid(format!("{rel}: {e}")))?;
    let group = match metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kvs| kvs.iter().find(|kv| kv.key == GROUP_KEY))
        .and_then(|kv| kv.value.as_deref())
    {
        Some(text) => Some(
            serde_json::from_str::<Group>(text)
                .map_err(|e| Error::Invalid(format!("{rel}: {GROUP_KEY}: {e}")))?,
        ),
        None => None,
    };
    let seq = rel
        .rsplit('/')
        .next()
        .and_then(layout::part_seq)
        .ok_or_else(|| Error::Invalid(format!("{rel}: not a part file name")))?;
    let expected = layout::relative_string(
        &Path::new(footer.table.name())
            .join(footer.partition.dir())
            .join(layout::part_file_name(
                seq,
                footer.meta.cell_id.as_deref().unwrap_or_default(),
            )),
    );
    if seq != next || rel != expected {
        return Err(Error::Invalid(format!(
            "{rel}: not the part a crash can leave (that is sequence number {next} at {expected})"
        )));
    }
    let committed_at_us = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let xxh3 = file_checksum(&path)?;
    Ok(PartEntry {
        seq,
        table: footer.table,
        path: rel.to_string(),
        rows: u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(0),
        bytes,
        cell_id: footer.meta.cell_id,
        run_id: footer.meta.run_id,
        committed_at_us,
        xxh3: Some(xxh3),
        group,
    })
}

pub(crate) fn quarantine(root: &Path, rel: &str) -> Result<()> {
    let from = root.join(rel);
    let mut to = root.join(layout::QUARANTINE_DIR).join(rel);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).io("create", parent)?;
    }
    // A file quarantined earlier under the same name stays: the new one takes a suffix.
    let mut n = 0;
    while to.exists() {
        n += 1;
        to = root.join(layout::QUARANTINE_DIR).join(format!("{rel}.{n}"));
    }
    fs::rename(&from, &to).io("quarantine", &from)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, StringArray, TimestampMicrosecondArray};

    use super::*;
    use crate::schema::{schema, timestamp_type};

    fn errors_batch(n: usize) -> RecordBatch {
        let s = schema(Table::Errors);
        let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as _;
        let ts = TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC");
        assert_eq!(ts.data_type(), &timestamp_type());
        RecordBatch::try_new(
            s,
            vec![
                text("run"),
                Arc::new(StringArray::from(vec![Some("cell"); n])),
                text("img.jpg"),
                text("decode"),
                text("bad"),
                Arc::new(ts),
            ],
        )
        .unwrap()
    }

    fn commit_one(w: &StoreWriter, rows: usize) -> PartEntry {
        w.write_part(
            Table::Errors,
            Partition::none(),
            PartMeta {
                cell_id: Some("cell".into()),
                run_id: Some("run".into()),
            },
            &[errors_batch(rows)],
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn commit_then_reopen_sees_parts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let (w, rec) = StoreWriter::open(&root).unwrap();
        assert!(rec.is_clean());
        let e1 = commit_one(&w, 3);
        let e2 = commit_one(&w, 2);
        assert_eq!((e1.seq, e2.seq), (1, 2));
        drop(w);
        let store = Store::open(&root).unwrap();
        let rows: u64 = store.parts(Table::Errors).map(|p| p.rows).sum();
        assert_eq!(rows, 5);
    }

    #[test]
    fn second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_w, _) = StoreWriter::open(dir.path()).unwrap();
        let err = StoreWriter::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
    }

    #[test]
    fn refuses_a_foreign_non_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("thesis.tex"), "precious").unwrap();
        let err = StoreWriter::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("refusing"), "{err}");
        assert!(dir.path().join("thesis.tex").exists());
    }

    /// Crash after the rename, before the manifest append: the part is adopted exactly once.
    #[test]
    fn crash_between_rename_and_manifest_adopts_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (w, _) = StoreWriter::open(root).unwrap();
        commit_one(&w, 1);
        let e2 = commit_one(&w, 4);
        drop(w);
        // Undo the second manifest append, as if the process died just before it.
        let manifest = root.join(layout::MANIFEST_FILE);
        let text = fs::read_to_string(&manifest).unwrap();
        let first_line = text.lines().next().unwrap();
        fs::write(&manifest, format!("{first_line}\n")).unwrap();

        let (w, rec) = StoreWriter::open(root).unwrap();
        assert_eq!(rec.adopted, vec![e2.path.clone()]);
        let store = w.snapshot();
        let parts: Vec<_> = store.parts(Table::Errors).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].seq, e2.seq);
        assert_eq!(parts[1].rows, 4);
        assert_eq!(parts[1].cell_id.as_deref(), Some("cell"));
        // The next commit does not reuse the adopted sequence number.
        assert_eq!(commit_one(&w, 1).seq, e2.seq + 1);
        drop(w);
        let (_w, rec) = StoreWriter::open(root).unwrap();
        assert!(rec.is_clean(), "{rec:?}");
    }

    /// Crash while writing: the temporary file is removed and nothing becomes visible.
    #[test]
    fn crash_before_rename_leaves_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (w, _) = StoreWriter::open(root).unwrap();
        let mut part = w
            .begin(Table::Errors, Partition::none(), PartMeta::default())
            .unwrap();
        part.write(&errors_batch(2)).unwrap();
        std::mem::forget(part); // the process "dies" with the part open
        drop(w);
        let (w, rec) = StoreWriter::open(root).unwrap();
        assert_eq!(rec.tmp_removed, 1);
        assert_eq!(w.snapshot().parts(Table::Errors).count(), 0);
    }

    /// A damaged file in a table directory is moved aside, not deleted and not read.
    #[test]
    fn damaged_orphan_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        drop(StoreWriter::open(root).unwrap());
        let table_dir = root.join("errors");
        fs::create_dir_all(&table_dir).unwrap();
        fs::write(table_dir.join("part-000009.parquet"), b"garbage").unwrap();
        let (w, rec) = StoreWriter::open(root).unwrap();
        assert_eq!(
            rec.quarantined,
            vec!["errors/part-000009.parquet".to_string()]
        );
        assert!(root.join("_quarantine/errors/part-000009.parquet").exists());
        assert_eq!(w.snapshot().parts(Table::Errors).count(), 0);
    }

    #[test]
    fn wide_rows_close_row_groups_by_bytes() {
        use arrow::array::{Float32Array, ListArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = StoreWriter::open(dir.path()).unwrap();
        let mut part = w
            .begin(Table::Errors, Partition::none(), PartMeta::default())
            .unwrap();
        // Rows of 100,000 distinct floats (400 KB each, plain encoding), as a model with that
        // many classes would give: 100 rows are 40 MB, far below 1024 rows.
        let schema = Arc::new(Schema::new(vec![Field::new(
            "v",
            DataType::new_list(DataType::Float32, true),
            false,
        )]));
        let plain = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .build();
        part.writer = ArrowWriter::try_new(
            part.writer.into_inner().unwrap(),
            schema.clone(),
            Some(plain),
        )
        .unwrap();
        for row in 0..100u32 {
            let values = Float32Array::from_iter_values(
                (0..100_000u32).map(|i| f32::from(u16::try_from(i % 60_000).unwrap()) + row as f32),
            );
            let list = ListArray::new(
                Arc::new(Field::new("item", DataType::Float32, true)),
                arrow::buffer::OffsetBuffer::from_lengths([100_000]),
                Arc::new(values),
                None,
            );
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(list)]).unwrap();
            part.write(&batch).unwrap();
        }
        let groups = part.writer.flushed_row_groups().len();
        assert!(groups >= 2, "{groups} row groups closed");
    }

    #[test]
    fn empty_part_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = StoreWriter::open(dir.path()).unwrap();
        let part = w
            .begin(Table::Errors, Partition::none(), PartMeta::default())
            .unwrap();
        assert!(w.commit(part).unwrap().is_none());
        assert_eq!(
            fs::read_dir(dir.path().join(layout::TMP_DIR))
                .unwrap()
                .count(),
            0
        );
    }
}

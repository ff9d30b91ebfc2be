//! Copying committed parts between a local store and a remote one, in both directions, so that an
//! interrupted copy run again copies exactly what is missing.
//!
//! A part is known by the xxh3 checksum of its bytes (both manifests hold it), not by its name or
//! sequence number, which differ between the two stores. [`Pusher::push`] commits to the remote
//! the local groups whose parts it lacks; [`pull`] commits locally the remote commits whose parts
//! the local store lacks. Pushing what was pulled, or pulling what was pushed, therefore copies
//! nothing.
//!
//! One refinement keeps shards from repeating each other's facts: every collector records the
//! `models` and `images` rows of what it runs, and shards of one sweep run the same models on
//! the same images. A push skips a `models` or `images` part whose rows (by name or id, and
//! sha256) the remote already holds. The check and the commit are one step of the log's
//! optimistic protocol: when another writer commits first, the pusher reads that commit and
//! checks again before it tries the next number.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use deltann_store::schema::col;
use deltann_store::{PartEntry, Store, StoreWriter, Table};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::{Commit, Error, Remote, Result};

/// The file in a local store that links it to a remote one: which, as which writer, and how far
/// the remote's log has been pulled. Names starting with `_` are not part of the results.
pub const LINK_FILE: &str = "_remote.json";

/// A local store's link to a remote store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The remote store.
    pub url: String,
    /// This store's writer id in the remote's log, when it pushes there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The remote's commits up to this number are in this store (or were not wanted by a pull
    /// that took everything).
    #[serde(default)]
    pub pulled: u64,
}

impl Link {
    /// The link of the store at `root` to `url`: read from its link file, or new (with a fresh
    /// writer id made from `host`, written at once, before anything is pushed under it).
    ///
    /// # Errors
    /// Fails when the link file cannot be read or written, or links the store to another url.
    pub fn open(root: &Path, url: &str, host: &str) -> Result<Link> {
        let path = root.join(LINK_FILE);
        let mut link = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Link>(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Link {
                url: url.to_string(),
                writer: None,
                pulled: 0,
            },
            Err(source) => {
                return Err(Error::Io {
                    path,
                    action: "read",
                    source,
                });
            }
        };
        if link.url != url {
            return Err(Error::Invalid(format!(
                "{} is the local store of {}, not of {url}",
                root.display(),
                link.url
            )));
        }
        if link.writer.is_none() {
            link.writer = Some(writer_id(host));
            link.save(root)?;
        }
        Ok(link)
    }

    /// Writes the link file (a temporary file, then a rename).
    ///
    /// # Errors
    /// Fails when it cannot be written.
    pub fn save(&self, root: &Path) -> Result<()> {
        let path = root.join(LINK_FILE);
        let tmp = root.join(format!("{LINK_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(&tmp, text)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| Error::Io {
                path,
                action: "write",
                source,
            })
    }
}

/// A new writer id: the host's name (letters, digits and `-` only) and 8 random hex digits.
pub fn writer_id(host: &str) -> String {
    let name: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{name}-{:08x}", fastrand::u32(..))
}

/// What a push or a pull copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Commits made (remote commits for a push, local groups for a pull).
    pub commits: usize,
    pub parts: usize,
    pub bytes: u64,
    /// `models` and `images` parts a push left out because the remote holds their rows.
    pub covered: usize,
    /// Commit numbers another writer took first (each followed by another try).
    pub conflicts: usize,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, other: Copied) {
        self.commits += other.commits;
        self.parts += other.parts;
        self.bytes += other.bytes;
        self.covered += other.covered;
        self.conflicts += other.conflicts;
    }
}

/// Pushes a local store's committed groups to a remote, keeping what it knows of the remote's
/// log between pushes (a collector pushes every few seconds).
pub struct Pusher<'a> {
    remote: &'a Remote,
    writer: String,
    /// The last commit read.
    seen: u64,
    /// Checksums of every part the remote holds.
    hashes: HashSet<String>,
    /// `models` and `images` rows the remote holds, as `name\0sha256`.
    facts: HashMap<Table, HashSet<String>>,
    /// Where fetched `models` and `images` parts are read (the local store's `_tmp/`).
    scratch: PathBuf,
}

impl<'a> Pusher<'a> {
    /// A pusher for `writer`, having read the remote's whole log.
    ///
    /// # Errors
    /// Fails when the log cannot be read.
    pub fn new(remote: &'a Remote, writer: &str, scratch: &Path) -> Result<Self> {
        let mut pusher = Self {
            remote,
            writer: writer.to_string(),
            seen: 0,
            hashes: HashSet::new(),
            facts: HashMap::new(),
            scratch: scratch.to_path_buf(),
        };
        pusher.refresh()?;
        Ok(pusher)
    }

    fn refresh(&mut self) -> Result<()> {
        for commit in self.remote.commits_after(self.seen)? {
            for entry in &commit.entries {
                if let Some(h) = &entry.xxh3 {
                    self.hashes.insert(h.clone());
                }
                if fact_key(entry.table).is_some() {
                    let file = self
                        .scratch
                        .join(format!("facts-{}.parquet", commit.number));
                    self.remote.download(&entry.path, &file)?;
                    let facts = read_facts(&file, entry.table);
                    let _ = std::fs::remove_file(&file);
                    self.facts
                        .entry(entry.table)
                        .or_default()
                        .extend(facts.map_err(|e| {
                            Error::Invalid(format!("{}/{}: {e}", self.remote.url(), entry.path))
                        })?);
                }
            }
            self.seen = commit.number;
        }
        Ok(())
    }

    /// Commits to the remote every group of `local` whose parts it lacks, in the local order.
    ///
    /// # Errors
    /// Fails when a local part cannot be read, or the remote fails; what was committed before
    /// stays committed, and the next push goes on from there.
    pub fn push(&mut self, local: &Store) -> Result<Copied> {
        self.refresh()?;
        let mut copied = Copied::default();
        for group in groups(local.entries()) {
            let mut members = Vec::with_capacity(group.len());
            for entry in group {
                let hash = match &entry.xxh3 {
                    Some(h) => h.clone(),
                    None => deltann_store::writer::file_checksum(&local.part_path(entry))?,
                };
                members.push((entry, hash));
            }
            if members.iter().all(|(_, h)| self.hashes.contains(h)) {
                continue;
            }
            let mut uploaded = false;
            loop {
                // After a lost race: the winner may have committed these very parts (another
                // push of the same store, as a copy running beside the collector's own).
                if members.iter().all(|(_, h)| self.hashes.contains(h)) {
                    break;
                }
                if self.covered(local, &members)? {
                    copied.covered += 1;
                    break;
                }
                let mut entries = Vec::with_capacity(members.len());
                for (entry, hash) in &members {
                    let rel = remote_name(&entry.path, &self.writer, hash);
                    if !uploaded {
                        copied.bytes += self.remote.upload(&local.part_path(entry), &rel)?;
                        copied.parts += 1;
                    }
                    entries.push(PartEntry {
                        path: rel,
                        xxh3: Some(hash.clone()),
                        ..(*entry).clone()
                    });
                }
                uploaded = true;
                let commit = Commit {
                    number: self.seen + 1,
                    writer: self.writer.clone(),
                    entries,
                };
                if self.remote.try_commit(commit.number, &commit)? {
                    // Every commit before it was read (it took the number after the last one
                    // read): learn its parts and facts from the local files, without reading
                    // it back.
                    self.seen = commit.number;
                    for (entry, hash) in &members {
                        self.hashes.insert(hash.clone());
                        if fact_key(entry.table).is_some() {
                            let path = local.part_path(entry);
                            let facts = read_facts(&path, entry.table)
                                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                            self.facts.entry(entry.table).or_default().extend(facts);
                        }
                    }
                    copied.commits += 1;
                    break;
                }
                // Another writer committed first: learn what it committed, then try again.
                copied.conflicts += 1;
                self.refresh()?;
            }
        }
        Ok(copied)
    }

    /// Whether a group is one `models` or `images` part whose rows the remote already holds.
    fn covered(&self, local: &Store, members: &[(&PartEntry, String)]) -> Result<bool> {
        let [(entry, _)] = members else {
            return Ok(false);
        };
        let Some(known) = self.facts.get(&entry.table) else {
            return Ok(false);
        };
        let path = local.part_path(entry);
        let rows = read_facts(&path, entry.table)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(rows.iter().all(|r| known.contains(r)))
    }
}

/// Commits locally, in the remote's order, every remote commit whose parts `local` lacks and that
/// `wanted` accepts. The link's position advances only over commits taken or already held, so a
/// later pull that wants more still finds the ones left out.
///
/// # Errors
/// Fails when the remote or the local store fails; what was committed before stays.
pub fn pull(
    remote: &Remote,
    local: &StoreWriter,
    link: &mut Link,
    wanted: &dyn Fn(&Commit) -> bool,
) -> Result<Copied> {
    let mut have: HashSet<String> = local
        .snapshot()
        .entries()
        .iter()
        .filter_map(|e| e.xxh3.clone())
        .collect();
    let mut copied = Copied::default();
    let mut contiguous = true;
    for commit in remote.commits_after(link.pulled)? {
        let held = commit
            .entries
            .iter()
            .all(|e| e.xxh3.as_ref().is_some_and(|h| have.contains(h)));
        if !held {
            if !wanted(&commit) {
                contiguous = false;
                continue;
            }
            let mut files = Vec::with_capacity(commit.entries.len());
            for entry in &commit.entries {
                let hash = entry.xxh3.clone().ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: commit {} lists {} without a checksum",
                        remote.url(),
                        commit.number,
                        entry.path
                    ))
                })?;
                let file = local.fetch_path();
                copied.bytes += remote.download(&entry.path, &file)?;
                files.push((file, hash));
            }
            let entries = local.commit_fetched(files).map_err(|e| {
                Error::Invalid(format!(
                    "{}: commit {} ({}): {e}",
                    remote.url(),
                    commit.number,
                    commit
                        .entries
                        .iter()
                        .map(|e| e.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            have.extend(entries.iter().filter_map(|e| e.xxh3.clone()));
            copied.parts += entries.len();
            copied.commits += 1;
        }
        if contiguous {
            link.pulled = commit.number;
            link.save(local.root())?;
        }
    }
    Ok(copied)
}

/// The groups of a manifest's entries, in order: a grouped entry starts (index 0) or continues
/// its group, an ungrouped one is a group of its own.
pub fn groups(entries: &[PartEntry]) -> Vec<&[PartEntry]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let len = entries[i]
            .group
            .filter(|g| g.index == 0)
            .map_or(1, |g| g.len as usize)
            .clamp(1, entries.len() - i);
        out.push(&entries[i..i + len]);
        i += len;
    }
    out
}

/// A part's name in the remote: its local name with the writer's id and the file's checksum
/// after `part-`. No two writers' parts share a name, and a name never stands for other bytes
/// (a repaired local store can reuse a sequence number), so uploading again is harmless.
fn remote_name(local: &str, writer: &str, xxh3: &str) -> String {
    let tagged = |file: &str| match file.strip_prefix("part-") {
        Some(rest) => format!("part-{writer}-{xxh3}-{rest}"),
        None => format!("{writer}-{xxh3}-{file}"),
    };
    match local.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/{}", tagged(file)),
        None => tagged(local),
    }
}

/// The column naming a `models` or `images` row.
fn fact_key(table: Table) -> Option<&'static str> {
    match table {
        Table::Models => Some(col::MODEL),
        Table::Images => Some(col::IMAGE_ID),
        _ => None,
    }
}

/// The `name\0sha256` of every row of a `models` or `images` part.
fn read_facts(path: &Path, table: Table) -> Result<Vec<String>, String> {
    let Some(key) = fact_key(table) else {
        return Ok(Vec::new());
    };
    let file = File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let schema = builder.parquet_schema();
    let wanted: Vec<usize> = (0..schema.num_columns())
        .filter(|&i| {
            let name = schema.column(i).name().to_string();
            name == key || name == col::SHA256
        })
        .collect();
    let mask = ProjectionMask::leaves(schema, wanted);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let (Some(names), Some(shas)) = (
            batch
                .column_by_name(key)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::SHA256)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return Err(format!("no {key} and {} columns", col::SHA256));
        };
        for i in 0..batch.num_rows() {
            let sha = if shas.is_valid(i) { shas.value(i) } else { "" };
            out.push(format!("{}\0{sha}", names.value(i)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
    use arrow::datatypes::DataType;
    use deltann_store::{PartMeta, Partition};

    use super::*;

    /// A batch of `table` with `n` rows: `key` set to `ids`, every other non-null column a
    /// constant, nullable ones null.
    fn batch(table: Table, key: &str, ids: &[&str]) -> RecordBatch {
        let schema = deltann_store::schema::schema(table);
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| {
                if f.name() == key {
                    return Arc::new(StringArray::from(ids.to_vec())) as ArrayRef;
                }
                if f.is_nullable() {
                    return new_null_array(f.data_type(), ids.len());
                }
                let value = if f.data_type() == &DataType::Utf8 {
                    "v"
                } else {
                    "1"
                };
                let text: ArrayRef = Arc::new(StringArray::from(vec![value; ids.len()]));
                if let DataType::Timestamp(..) = f.data_type() {
                    let micros = arrow::compute::cast(&text, &DataType::Int64).unwrap();
                    return arrow::compute::cast(&micros, f.data_type()).unwrap();
                }
                arrow::compute::cast(&text, f.data_type()).unwrap()
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn write(w: &StoreWriter, table: Table, key: &str, ids: &[&str], cell: Option<&str>) {
        w.write_part(
            table,
            Partition::none(),
            PartMeta {
                cell_id: cell.map(str::to_string),
                run_id: Some("run".into()),
            },
            &[batch(table, key, ids)],
        )
        .unwrap();
    }

    fn remote() -> Remote {
        let store = Arc::new(object_store::memory::InMemory::new());
        let remote = Remote::with_store("mem://test", "prefix", store).unwrap();
        remote.create_if_missing().unwrap();
        remote
    }

    fn hashes(store: &Store) -> Vec<String> {
        let mut h: Vec<String> = store
            .entries()
            .iter()
            .map(|e| e.xxh3.clone().unwrap())
            .collect();
        h.sort();
        h
    }

    #[test]
    fn push_then_pull_copies_every_part_once() {
        let remote = remote();
        let a = tempfile::tempdir().unwrap();
        let (wa, _) = StoreWriter::open(a.path()).unwrap();
        write(&wa, Table::Errors, col::IMAGE_ID, &["x", "y"], Some("c1"));
        write(&wa, Table::Images, col::IMAGE_ID, &["x", "y"], None);
        write(&wa, Table::Errors, col::IMAGE_ID, &["z"], Some("c2"));
        let mut pusher = Pusher::new(&remote, "writer-a", &a.path().join("_tmp")).unwrap();
        let pushed = pusher.push(&wa.snapshot()).unwrap();
        assert_eq!((pushed.commits, pushed.parts), (3, 3));
        assert_eq!(pusher.push(&wa.snapshot()).unwrap(), Copied::default());

        // Pulled whole, the bytes are the same (same checksums); pulled again, nothing.
        let b = tempfile::tempdir().unwrap();
        let (wb, _) = StoreWriter::open(b.path()).unwrap();
        let mut link = Link::open(b.path(), remote.url(), "host-b").unwrap();
        let pulled = pull(&remote, &wb, &mut link, &|_| true).unwrap();
        assert_eq!((pulled.commits, pulled.parts), (3, 3));
        assert_eq!(hashes(&wb.snapshot()), hashes(&wa.snapshot()));
        assert_eq!(link.pulled, 3);
        assert_eq!(Link::open(b.path(), remote.url(), "h").unwrap(), link);
        link.pulled = 0; // a lost position: the checksums still say what is held
        assert_eq!(
            pull(&remote, &wb, &mut link, &|_| true).unwrap(),
            Copied::default()
        );
        drop(wb);
        // What is read back is a store like any other, its rows where they were.
        let read = Store::open(b.path()).unwrap();
        let rows: usize = read
            .scan_table(Table::Errors, &[col::IMAGE_ID])
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 3);

        // Pushing the pulled store back adds nothing.
        let mut again = Pusher::new(&remote, "writer-b", &b.path().join("_tmp")).unwrap();
        assert_eq!(again.push(&read).unwrap(), Copied::default());
        assert!(Link::open(b.path(), "s3://other/x", "h").is_err());
    }

    #[test]
    fn a_second_writer_leaves_out_the_facts_the_first_recorded() {
        let remote = remote();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (wa, _) = StoreWriter::open(a.path()).unwrap();
        let (wb, _) = StoreWriter::open(b.path()).unwrap();
        // Both shards record images x and y; B's part of them is left out, its new one is not.
        let mut pa = Pusher::new(&remote, "a", &a.path().join("_tmp")).unwrap();
        let mut pb = Pusher::new(&remote, "b", &b.path().join("_tmp")).unwrap();
        write(&wa, Table::Images, col::IMAGE_ID, &["x", "y"], None);
        write(&wa, Table::Errors, col::IMAGE_ID, &["x"], Some("c1"));
        write(&wb, Table::Images, col::IMAGE_ID, &["y", "x"], None);
        write(&wb, Table::Errors, col::IMAGE_ID, &["y"], Some("c2"));
        write(&wb, Table::Images, col::IMAGE_ID, &["w"], None);
        assert_eq!(pa.push(&wa.snapshot()).unwrap().commits, 2);
        let pushed = pb.push(&wb.snapshot()).unwrap();
        assert_eq!((pushed.commits, pushed.covered), (2, 1), "{pushed:?}");

        let log = remote.commits_after(0).unwrap();
        let numbers: Vec<u64> = log.iter().map(|c| c.number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4]);
        let writers: Vec<&str> = log.iter().map(|c| c.writer.as_str()).collect();
        assert_eq!(writers, vec!["a", "a", "b", "b"]);
        // Every part's name is its writer's own.
        assert!(log.iter().all(|c| {
            c.entries
                .iter()
                .all(|e| e.path.contains(&format!("part-{}-", c.writer)))
        }));
    }

    /// An object store where, just before a pusher's first try at a commit number, another
    /// writer's commit takes that number: the race made deterministic.
    #[derive(Debug)]
    struct Racing {
        inner: Arc<object_store::memory::InMemory>,
        /// Commits that win the race for their number, taken once each.
        winners: std::sync::Mutex<Vec<Commit>>,
    }

    impl std::fmt::Display for Racing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Racing")
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for Racing {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            let name = location.filename().unwrap_or_default().to_string();
            let winner = {
                let mut winners = self.winners.lock().unwrap();
                let at = winners
                    .iter()
                    .position(|c| name == format!("{:020}.json", c.number));
                at.map(|i| winners.remove(i))
            };
            if let Some(winner) = winner {
                let body = serde_json::to_vec(&winner).unwrap();
                self.inner
                    .put_opts(location, body.into(), object_store::PutMode::Create.into())
                    .await?;
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<
                'static,
                object_store::Result<object_store::path::Path>,
            >,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
        {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[test]
    fn a_lost_race_retries_at_the_next_number_and_never_commits_a_part_twice() {
        let racing = Arc::new(Racing {
            inner: Arc::new(object_store::memory::InMemory::new()),
            winners: std::sync::Mutex::new(Vec::new()),
        });
        let remote = Remote::with_store("mem://race", "p", racing.clone()).unwrap();
        remote.create_if_missing().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = StoreWriter::open(dir.path()).unwrap();
        write(&w, Table::Errors, col::IMAGE_ID, &["x"], Some("c1"));
        let mut pusher = Pusher::new(&remote, "mine", &dir.path().join("_tmp")).unwrap();
        let part = w.snapshot().entries()[0].clone();

        // Another writer's commit takes number 1 first: this one lands at 2.
        let other = |number, xxh3: &str| Commit {
            number,
            writer: "other".into(),
            entries: vec![PartEntry {
                xxh3: Some(xxh3.to_string()),
                path: format!("errors/part-other-{number}.parquet"),
                ..part.clone()
            }],
        };
        racing
            .winners
            .lock()
            .unwrap()
            .push(other(1, "0123456789abcdef"));
        let pushed = pusher.push(&w.snapshot()).unwrap();
        assert_eq!((pushed.commits, pushed.conflicts), (1, 1), "{pushed:?}");
        let writers: Vec<String> = remote
            .commits_after(0)
            .unwrap()
            .into_iter()
            .map(|c| c.writer)
            .collect();
        assert_eq!(writers, ["other", "mine"]);

        // The winner of number 3 committed this writer's next part itself (another push of the
        // same store): once it has read that commit, the pusher stops, with nothing repeated.
        write(&w, Table::Errors, col::IMAGE_ID, &["y"], Some("c1"));
        let next = w.snapshot().entries()[1].xxh3.clone().unwrap();
        racing.winners.lock().unwrap().push(other(3, &next));
        let pushed = pusher.push(&w.snapshot()).unwrap();
        assert_eq!((pushed.commits, pushed.conflicts), (0, 1), "{pushed:?}");
        assert_eq!(remote.commits_after(0).unwrap().len(), 3);
    }

    #[test]
    fn concurrent_pushers_lose_no_commit() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let shared = |_| Remote::with_store("mem://test", "p", store.clone()).unwrap();
        let writers: Vec<(tempfile::TempDir, StoreWriter)> = (0..2)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let (w, _) = StoreWriter::open(dir.path()).unwrap();
                (dir, w)
            })
            .collect();
        for (i, (_, w)) in writers.iter().enumerate() {
            for n in 0..25 {
                let id = format!("{i}-{n}");
                write(w, Table::Errors, col::IMAGE_ID, &[id.as_str()], Some("c"));
            }
        }
        let conflicts: usize = std::thread::scope(|s| {
            let handles: Vec<_> = writers
                .iter()
                .enumerate()
                .map(|(i, (dir, w))| {
                    let remote = shared(i);
                    s.spawn(move || {
                        let mut pusher =
                            Pusher::new(&remote, &format!("w{i}"), &dir.path().join("_tmp"))
                                .unwrap();
                        let mut conflicts = 0;
                        // One group at a time, as a collector pushes while it runs.
                        for upto in 1..=25 {
                            let entries = w.snapshot().entries()[..upto].to_vec();
                            let view = Store::from_entries(dir.path().to_path_buf(), entries);
                            conflicts += pusher.push(&view).unwrap().conflicts;
                        }
                        conflicts
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        eprintln!("conflicts: {conflicts}");
        let log = shared(9).commits_after(0).unwrap();
        let numbers: Vec<u64> = log.iter().map(|c| c.number).collect();
        assert_eq!(
            numbers,
            (1..=50).collect::<Vec<u64>>(),
            "{conflicts} conflicts"
        );
        for i in 0..2 {
            let theirs = log.iter().filter(|c| c.writer == format!("w{i}")).count();
            assert_eq!(theirs, 25);
        }
    }

    #[test]
    fn groups_follow_the_manifest_marks() {
        let entry = |seq, group| PartEntry {
            seq,
            table: Table::Outputs,
            path: format!("outputs/part-{seq:06}.parquet"),
            rows: 1,
            bytes: 1,
            cell_id: None,
            run_id: None,
            committed_at_us: 0,
            xxh3: None,
            group,
        };
        use deltann_store::manifest::Group;
        let g = |index| Some(Group { index, len: 2 });
        let entries = vec![
            entry(1, None),
            entry(2, g(0)),
            entry(3, g(1)),
            entry(4, None),
        ];
        let sizes: Vec<usize> = groups(&entries).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![1, 2, 1]);
        assert_eq!(
            remote_name(
                "outputs/model=m/engine=e/part-000002-c.parquet",
                "w-1",
                "00ff"
            ),
            "outputs/model=m/engine=e/part-w-1-00ff-000002-c.parquet"
        );
    }
}

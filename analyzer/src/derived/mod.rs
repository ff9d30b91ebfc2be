//! The analysis as state kept beside the data, advanced by folding in only what was committed.
//!
//! ```text
//! STORE/derived/
//!   state.json                 the derived manifest: analysis version, the `outputs` parts
//!                              folded in (with their image ranges), the derived parts, and the
//!                              pair and cell accumulators
//!   _lock                      held while advancing (one advancer at a time)
//!   _tmp/                      parts being written
//!   comparisons/part-000001.parquet
//!   cell_images/part-000001.parquet
//! ```
//!
//! [`advance`] folds every committed `outputs` part not yet folded in (see [`fold`]), one batch
//! at a time: each batch writes its derived parts (temporary file, fsync, rename) and then
//! replaces `state.json` atomically, so a crash loses at most the batch in progress and a reader
//! never sees a derived part that the state does not list. Files the state does not list are
//! leftovers of such a crash and are removed by the next advance. A state written by another
//! [`ANALYSIS_VERSION`] is discarded and rebuilt.

pub mod distributed;
pub mod fold;
pub mod read;
pub mod tables;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use deltann_store::{PartEntry, Store, Table};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use fold::{CellAcc, PairAcc};
pub use tables::DerivedTable;

use crate::error::{Error, Result};
use fold::{Accumulators, CellName, Input, Rows};
use tables::PartFile;

/// The derived state's directory under a store.
pub const DIR: &str = "derived";
/// The derived manifest.
pub const STATE_FILE: &str = "state.json";
/// Held while advancing.
pub const LOCK_FILE: &str = "_lock";
/// Parts being written.
pub const TMP_DIR: &str = "_tmp";
/// The version of what the derived tables hold and how they are computed. Bump it with any
/// change to the fold or the tables: a state of another version is rebuilt from scratch.
pub const ANALYSIS_VERSION: u32 = 6;
/// Parts one fold opens at once (new and old together), bounding open files.
pub const MAX_OPEN_PARTS: usize = 192;

/// An `outputs` part folded in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Folded {
    pub seq: u64,
    pub cell_id: String,
    pub model: String,
    pub engine: String,
    pub family: String,
    /// Smallest and largest image id (None for an empty part).
    pub range: Option<(String, String)>,
    pub rows: u64,
}

/// A derived part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DerivedPart {
    pub table: DerivedTable,
    /// Relative to the store root, `/`-separated.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Smallest and largest image id in the part.
    pub range: Option<(String, String)>,
}

/// The derived manifest (`derived/state.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub analysis_version: u32,
    /// `outputs` parts folded in, in the order they were.
    pub folded: Vec<Folded>,
    pub parts: Vec<DerivedPart>,
    /// One per pair of cells compared on at least one image.
    pub pairs: Vec<PairAcc>,
    /// One per cell with at least one image folded in.
    pub cells: Vec<CellAcc>,
    /// Number of the next derived part.
    pub next_part: u64,
    /// Rows ignored because another part already held their (cell, image).
    pub duplicates: u64,
}

impl State {
    /// The derived parts of one table.
    pub fn parts_of(&self, table: DerivedTable) -> impl Iterator<Item = &DerivedPart> {
        self.parts.iter().filter(move |p| p.table == table)
    }

    /// The pair a `comparisons` row names by its `pair` number.
    ///
    /// # Errors
    /// A number the state does not hold (a part from another state), naming `part`.
    pub fn pair(&self, number: i32, part: &str) -> Result<&PairAcc> {
        usize::try_from(number)
            .ok()
            .and_then(|k| self.pairs.get(k))
            .ok_or_else(|| {
                crate::error::Error::Invalid(format!(
                    "{part}: pair {number} is not in derived/state.json (`deltann analyze \
                     --rebuild` rebuilds the derived tables)"
                ))
            })
    }

    /// Reads a store's derived state without advancing it (`None` when there is none, or it is
    /// of another analysis version).
    ///
    /// # Errors
    /// Fails when the state file exists but cannot be read or parsed.
    pub fn load(root: &Path) -> Result<Option<Self>> {
        let path = root.join(DIR).join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::file(&path, e)),
        };
        #[derive(Deserialize)]
        struct Version {
            analysis_version: u32,
        }
        let version: Version = serde_json::from_slice(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        if version.analysis_version != ANALYSIS_VERSION {
            return Ok(None);
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    fn save(&self, root: &Path) -> Result<()> {
        let dir = root.join(DIR);
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(TMP_DIR).join("state.json.tmp");
        let text = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("cannot encode the derived state: {e}")))?;
        std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::file(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
        sync_dir(&dir)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::file(dir, e))
}

/// Progress of an advance, for progress bars.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub parts_done: usize,
    pub parts_total: usize,
    pub rows_done: u64,
    pub rows_total: u64,
}

/// What an advance did.
#[derive(Clone, Debug, Default)]
pub struct Advance {
    /// `outputs` parts folded in.
    pub parts: usize,
    /// Their rows.
    pub rows: u64,
    /// `comparisons` rows written.
    pub comparisons: u64,
    /// Folds (batches) run.
    pub batches: usize,
    pub seconds: f64,
    /// Whether the state was discarded first (absent, another analysis version, or asked).
    pub rebuilt: bool,
}

/// The model and engine of an `outputs` part, from its Hive path.
fn partition(path: &str) -> (String, String) {
    let value = |key: &str| {
        path.split('/')
            .find_map(|c| c.strip_prefix(key))
            .unwrap_or("")
            .to_string()
    };
    (value("model="), value("engine="))
}

/// Takes the derived lock, waiting for another advancer to finish.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::file(&path, e))?;
    file.lock().map_err(|e| Error::file(&path, e))?;
    Ok(file)
}

/// Removes what a crash can leave: temporary files and derived parts the state does not list.
fn clean(root: &Path, state: &State) -> Result<()> {
    let dir = root.join(DIR);
    let tmp = dir.join(TMP_DIR);
    if tmp.is_dir() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::file(&tmp, e))?;
    let listed: HashSet<&str> = state.parts.iter().map(|p| p.path.as_str()).collect();
    for table in DerivedTable::ALL {
        let tdir = dir.join(table.name());
        std::fs::create_dir_all(&tdir).map_err(|e| Error::file(&tdir, e))?;
        let entries = std::fs::read_dir(&tdir).map_err(|e| Error::file(&tdir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::file(&tdir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{DIR}/{}/{name}", table.name());
            if !listed.contains(rel.as_str()) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(|e| Error::file(&path, e))?;
            }
        }
    }
    Ok(())
}

/// Folds every `outputs` part of `store` not yet folded in. With `rebuild`, discards the derived
/// state first and recomputes it from scratch.
///
/// # Errors
/// Fails when the store cannot be read or `derived/` cannot be written; the state then stays
/// as the last completed batch left it.
pub fn advance(
    store: &Store,
    rebuild: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Advance> {
    let started = Instant::now();
    let root = store.root();
    let dir = root.join(DIR);
    let _lock = open(&dir)?;
    let mut report = Advance::default();
    // A state that folded parts the store no longer lists (dropped by `store repair`, or left
    // out as damaged by a reader asked to skip them) describes rows that are not there: it is
    // rebuilt from what is. A part left out and later restored is then simply not yet folded.
    let listed: HashSet<u64> = store.parts(Table::Outputs).map(|e| e.seq).collect();
    let loaded = if rebuild {
        None
    } else {
        State::load(root)
            .ok()
            .flatten()
            .filter(|s| s.folded.iter().all(|f| listed.contains(&f.seq)))
    };
    let mut state = match loaded {
        Some(s) => s,
        None => {
            report.rebuilt = true;
            reset(&dir)?
        }
    };
    clean(root, &state)?;

    let done: HashSet<u64> = state.folded.iter().map(|f| f.seq).collect();
    let mut pending = pending(store, &done)?;
    if pending.is_empty() {
        if report.rebuilt {
            state.save(root)?;
        }
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // Ordered so that a batch covers one family's images across cells (parts of different cells
    // over the same images fold together).
    pending.sort_by(|(oa, a), (ob, b)| {
        a.family
            .cmp(&b.family)
            .then(a.range.cmp(&b.range))
            .then(oa.cmp(ob))
    });
    let total = pending.len();
    let rows_total: u64 = pending.iter().map(|(_, f)| f.rows).sum();
    // Commit positions of folded parts, for the tie-break between duplicates.
    let position: HashMap<u64, usize> = store
        .entries()
        .iter()
        .enumerate()
        .map(|(i, e)| (e.seq, i))
        .collect();

    let mut queue = pending.into_iter().peekable();
    while queue.peek().is_some() {
        // Take parts while the batch and the folded parts it overlaps fit the open-file bound.
        let mut batch: Vec<(usize, Folded)> = Vec::new();
        let mut olds: HashSet<usize> = HashSet::new();
        while let Some((_, next)) = queue.peek() {
            let mine = overlapping(&state.folded, next);
            let union = olds.union(&mine.iter().copied().collect()).count();
            if !batch.is_empty() && batch.len() + 1 + union > MAX_OPEN_PARTS {
                break;
            }
            olds.extend(mine);
            if let Some(item) = queue.next() {
                batch.push(item);
            }
        }
        let stats = fold_batch(store, &mut state, &batch, &olds, &position)?;
        report.batches += 1;
        report.parts += batch.len();
        report.rows += batch.iter().map(|(_, f)| f.rows).sum::<u64>();
        report.comparisons += stats;
        progress(Progress {
            parts_done: report.parts,
            parts_total: total,
            rows_done: report.rows,
            rows_total,
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Creates `derived/` (with a clear error for a read-only store) and takes its lock, waiting for
/// another advancer to finish.
fn open(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            // A read-only store (a copy on shared media) gets a clear message, not a bare EACCES.
            // The probe's name is this advance's own: a report and a TUI advancing at once
            // (before either holds the lock) must not remove each other's.
            static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let probe = dir.join(format!(".probe-{}-{n}", std::process::id()));
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .map_err(|e| {
            Error::Invalid(format!(
                "{}: cannot write the derived tables ({e}); the analysis keeps its state beside \
                 the data, so analyse a writable copy of the store",
                dir.display()
            ))
        })?;
    lock(dir)
}

/// Removes the derived tables' parts: the start of a rebuild.
fn reset(dir: &Path) -> Result<State> {
    for table in DerivedTable::ALL {
        let tdir = dir.join(table.name());
        if tdir.is_dir() {
            std::fs::remove_dir_all(&tdir).map_err(|e| Error::file(&tdir, e))?;
        }
    }
    Ok(State {
        analysis_version: ANALYSIS_VERSION,
        next_part: 1,
        ..State::default()
    })
}

/// Every committed `outputs` part of a cell not in `done`, with its commit position, family and
/// image range (from the part's footer).
fn pending(store: &Store, done: &HashSet<u64>) -> Result<Vec<(usize, Folded)>> {
    let entries: Vec<(usize, &PartEntry)> = store
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| e.table == Table::Outputs && !done.contains(&e.seq))
        .filter(|(_, e)| e.cell_id.is_some())
        .collect();
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let families: HashMap<String, String> = crate::cells::load_models(store)?
        .into_iter()
        .map(|(model, facts)| {
            let family = if facts.family.is_empty() {
                model.clone()
            } else {
                facts.family
            };
            (model, family)
        })
        .collect();
    // Each part's image range is in its footer: read in parallel (a rebuild reads hundreds).
    let ranges = entries
        .par_iter()
        .map(|(_, e)| crate::merge::image_range(&store.part_path(e)))
        // The first failure in commit order is reported, whichever thread met one first.
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mut pending = Vec::with_capacity(entries.len());
    for ((order, e), range) in entries.into_iter().zip(ranges) {
        let (model, engine) = partition(&e.path);
        let family = families
            .get(&model)
            .cloned()
            .unwrap_or_else(|| model.clone());
        pending.push((
            order,
            Folded {
                seq: e.seq,
                cell_id: e.cell_id.clone().unwrap_or_default(),
                model,
                engine,
                family,
                range,
                rows: e.rows,
            },
        ));
    }
    Ok(pending)
}

/// Moves a finished derived part from `_tmp/` to its table as part `number` (a part without
/// rows is removed instead).
fn publish(
    root: &Path,
    table: DerivedTable,
    file: PartFile,
    number: u64,
    range: Option<(String, String)>,
) -> Result<Option<DerivedPart>> {
    let (tmp, rows, bytes) = file.finish()?;
    if rows == 0 {
        std::fs::remove_file(&tmp).map_err(|e| Error::file(&tmp, e))?;
        return Ok(None);
    }
    let rel = format!("{DIR}/{}/part-{number:06}.parquet", table.name());
    let path = root.join(&rel);
    std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
    sync_dir(&root.join(DIR).join(table.name()))?;
    Ok(Some(DerivedPart {
        table,
        path: rel,
        rows,
        bytes,
        range,
    }))
}

/// Indices of folded parts of the same family whose image range overlaps `part`'s.
fn overlapping(folded: &[Folded], part: &Folded) -> Vec<usize> {
    let Some((lo, hi)) = &part.range else {
        return Vec::new();
    };
    folded
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            f.family == part.family
                && f.range
                    .as_ref()
                    .is_some_and(|(a, b)| a.as_str() <= hi.as_str() && lo.as_str() <= b.as_str())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Folds one batch and commits it: derived parts first, then the state.
fn fold_batch(
    store: &Store,
    state: &mut State,
    batch: &[(usize, Folded)],
    olds: &HashSet<usize>,
    position: &HashMap<u64, usize>,
) -> Result<u64> {
    let root = store.root();
    let dir = root.join(DIR);
    let mut names: Vec<CellName> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut name_of = |f: &Folded| -> usize {
        *index.entry(f.cell_id.clone()).or_insert_with(|| {
            names.push(CellName {
                id: f.cell_id.clone(),
                family: f.family.clone(),
                model: f.model.clone(),
            });
            names.len() - 1
        })
    };
    let mut inputs = Vec::new();
    let mut olds: Vec<usize> = olds.iter().copied().collect();
    olds.sort_unstable();
    let entry_of = |seq: u64| position.get(&seq).and_then(|&i| store.entries().get(i));
    for &i in &olds {
        let f = &state.folded[i];
        let Some(entry) = entry_of(f.seq) else {
            continue;
        };
        inputs.push(Input {
            path: store.part_path(entry),
            cell: name_of(f),
            new: false,
            order: position.get(&f.seq).copied().unwrap_or(0),
        });
    }
    for (order, f) in batch {
        if f.range.is_none() {
            continue;
        }
        let Some(entry) = entry_of(f.seq) else {
            continue;
        };
        inputs.push(Input {
            path: store.part_path(entry),
            cell: name_of(f),
            new: true,
            order: *order,
        });
    }

    let number = state.next_part;
    let tmp_dir = dir.join(TMP_DIR);
    let mut comparisons = PartFile::create(
        &tmp_dir.join(format!("comparisons-{number:06}.parquet")),
        DerivedTable::Comparisons,
    )?;
    let mut cell_images = PartFile::create(
        &tmp_dir.join(format!("cell_images-{number:06}.parquet")),
        DerivedTable::CellImages,
    )?;
    let mut rows = Rows::default();
    let mut acc = Accumulators::new(&mut state.pairs, &mut state.cells, &names);
    let mut range: Option<(String, String)> = None;
    let stats = fold::fold(&inputs, &names, &mut acc, &mut rows, |rows, image| {
        match &mut range {
            None => range = Some((image.to_string(), image.to_string())),
            Some(r) => image.clone_into(&mut r.1),
        }
        if rows.comparisons.rows >= 65_536 {
            comparisons.write(rows.comparisons.finish()?)?;
        }
        if rows.cell_images.rows >= 16_384 {
            cell_images.write(rows.cell_images.finish()?)?;
        }
        Ok(())
    })?;
    comparisons.write(rows.comparisons.finish()?)?;
    cell_images.write(rows.cell_images.finish()?)?;

    let mut new_parts = Vec::new();
    for (table, file) in [
        (DerivedTable::Comparisons, comparisons),
        (DerivedTable::CellImages, cell_images),
    ] {
        new_parts.extend(publish(root, table, file, number, range.clone())?);
    }
    state.parts.extend(new_parts);
    state.folded.extend(batch.iter().map(|(_, f)| f.clone()));
    state.next_part += 1;
    state.duplicates += stats.duplicates;
    state.save(root)?;
    Ok(stats.comparisons)
}

/// Paths of a derived table's parts (absolute).
pub fn part_paths(root: &Path, state: &State, table: DerivedTable) -> Vec<PathBuf> {
    state.parts_of(table).map(|p| root.join(&p.path)).collect()
}

//! The derived tables built from scratch on an Apache Ballista cluster, for stores whose
//! rebuild outgrows one machine.
//!
//! What [`super::fold`] does image by image on one machine is asked of the cluster as one SQL
//! statement over exactly the committed `outputs` parts (the manifest's list, not the folders,
//! so a collector writing beside the build adds nothing half-done): the rows grouped by (image,
//! model family), each group handed to `fold_image`, the fold's own code as a SQL function (the
//! executors of `deltann ballista executor` know it), which gives each cell's first repetition,
//! run-to-run floor and latencies, and every pair of cells compared. Grouping the raw rows once
//! moves each row's logits across the cluster once; a first version computed the first
//! repetitions and the floors by joins, which shuffled them five times (24 GB of shuffle files
//! for a 1M-row store).
//!
//! The executors shuffle and compare; this process receives the rows in image order, numbers
//! the pairs, advances the pair and cell accumulators and writes the derived parts as an advance
//! does (temporary file, fsync, rename, then the state), so the result is a derived state like
//! any other: `report`, the TUI and later advances use it, and an advance folds in what is
//! committed afterwards. An empty state is saved before the build starts, so a build that dies
//! leaves one that the next advance completes locally.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, StringBuilder, StructArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use deltann_store::Store;
use futures::StreamExt;

use super::fold::{CellAcc, PairAcc};
use super::tables::{CellImage, CellImagesBuilder, Comparison, ComparisonsBuilder, PartFile};
use super::{Advance, DIR, DerivedPart, DerivedTable, Folded, State, TMP_DIR};
use crate::error::{Error, Result};
use crate::merge::RepFloor;

/// The table of the outputs parts being folded, as the cluster sees it.
pub const OUTPUTS_TABLE: &str = "fold_outputs";
/// Each cell's family and model (from the manifest and `models`), as the cluster sees it.
pub const CELLS_TABLE: &str = "fold_cells";
/// The file [`CELLS_TABLE`] is written to for the executors, under the derived folder.
pub const CELLS_FILE: &str = "ballista-cells.parquet";

/// Rows after which a derived part is closed (at the next image).
const PART_ROWS: [(DerivedTable, u64); 2] = [
    (DerivedTable::Comparisons, 8 << 20),
    (DerivedTable::CellImages, 1 << 20),
];

/// Per image and model family, the image's rows in the family's cells folded by `fold_image`
/// (first repetitions, floors, latencies and every pair compared), in image order. One
/// aggregation: each row's logits cross the cluster once, on their way to the executor that
/// holds the image.
const FOLD: &str = "
SELECT o.image_id, c.family,
       fold_image(array_agg(named_struct(
         'cell_id', o.cell_id, 'repetition', o.repetition, 'label', o.label, 'top5', o.top5,
         'top5_prob', o.top5_prob, 'logits', o.logits, 'logits_hash', o.logits_hash,
         'latency_ns', o.latency_ns))) AS folded
FROM fold_outputs o JOIN fold_cells c ON o.cell_id = c.cell_id
GROUP BY o.image_id, c.family
ORDER BY o.image_id, c.family";

/// Rows received so far, for progress bars.
#[derive(Clone, Copy, Debug, Default)]
pub struct Received {
    pub cell_images: u64,
    pub comparisons: u64,
}

/// Registers the tables the build reads (see [`OUTPUTS_TABLE`] and [`CELLS_TABLE`]).
pub type Register<'a> = &'a dyn Fn(&SessionContext, &str, &[PathBuf], Arc<Schema>) -> Result<()>;

/// Rebuilds `store`'s derived tables with the cluster `ctx` is connected to; `register` makes
/// a Parquet file list a table there.
///
/// # Errors
/// Fails when the store cannot be read, `derived/` cannot be written, the cluster fails a
/// query, or the store holds one (cell, image) twice (the local fold resolves that by commit
/// order, which the files alone do not tell: `deltann analyze --rebuild` without `--ballista`).
pub fn rebuild(
    store: &Store,
    ctx: &SessionContext,
    runtime: &tokio::runtime::Runtime,
    register: Register<'_>,
    progress: &mut dyn FnMut(Received),
) -> Result<Advance> {
    let started = Instant::now();
    let root = store.root();
    let dir = root.join(DIR);
    let _lock = super::open(&dir)?;
    let mut state = super::reset(&dir)?;
    super::clean(root, &state)?;
    state.save(root)?;

    let mut folded = super::pending(store, &HashSet::new())?;
    folded.sort_by_key(|(order, _)| *order);
    let folded: Vec<Folded> = folded.into_iter().map(|(_, f)| f).collect();
    let mut report = Advance {
        rebuilt: true,
        parts: folded.len(),
        rows: folded.iter().map(|f| f.rows).sum(),
        ..Advance::default()
    };
    let with_rows: Vec<&Folded> = folded.iter().filter(|f| f.range.is_some()).collect();
    if with_rows.is_empty() {
        state.folded = folded;
        state.save(root)?;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let mut cells: HashMap<String, (String, String)> = HashMap::new();
    for f in &with_rows {
        cells
            .entry(f.cell_id.clone())
            .or_insert_with(|| (f.family.clone(), f.model.clone()));
    }
    let cells_file = write_cells(&dir, &cells)?;
    let paths: HashMap<u64, PathBuf> = store
        .entries()
        .iter()
        .map(|e| (e.seq, store.part_path(e)))
        .collect();
    let parts: Vec<PathBuf> = with_rows
        .iter()
        .filter_map(|f| paths.get(&f.seq).cloned())
        .collect();
    register(
        ctx,
        OUTPUTS_TABLE,
        &parts,
        deltann_store::schema::schema(deltann_store::Table::Outputs),
    )?;
    register(
        ctx,
        CELLS_TABLE,
        std::slice::from_ref(&cells_file),
        cells_schema(),
    )?;

    let mut writer = Writer::new(root, &mut state);
    // Cells and pairs by their cells' positions, so a row's lookup allocates nothing.
    let cell_ids: HashMap<&str, usize> = cells
        .keys()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut cell_index: Vec<Option<usize>> = vec![None; cell_ids.len()];
    let unknown =
        |c: &str| Error::Invalid(format!("the cluster named a cell {c} that no part holds"));
    let mut pair_index: HashMap<(usize, usize), usize> = HashMap::new();
    let mut received = Received::default();
    stream(ctx, runtime, FOLD, &mut |batch| {
        let images = column(&batch, "image_id", &DataType::Utf8)?;
        let images = images.as_string::<i32>();
        let lacks = |n: &str| Error::Invalid(format!("the cluster's rows lack `{n}`"));
        let folded = batch
            .column_by_name("folded")
            .and_then(|c| c.as_struct_opt())
            .ok_or_else(|| lacks("folded"))?;
        let list = |n: &str| {
            folded
                .column_by_name(n)
                .and_then(|c| c.as_list_opt::<i32>())
                .ok_or_else(|| lacks(n))
        };
        let (cells_of, pairs_of) = (list("cells")?, list("pairs")?);
        let cell_rows = CellImageRows::new(cells_of.values())?;
        let pair_rows = ComparisonRows::new(pairs_of.values())?;
        for (r, image) in images.iter().enumerate() {
            let image = image.unwrap_or_default();
            for i in range(cells_of, r) {
                if cell_rows.repeated.value(i) > 0 {
                    return Err(Error::Invalid(format!(
                        "cell {}: image {image} holds a repetition twice (two parts hold this \
                         cell and image); the local fold keeps the earlier commit, which the \
                         files alone do not tell: rebuild without --ballista",
                        cell_rows.cell_id.value(i),
                    )));
                }
                let cell = cell_rows.cell_id.value(i);
                let (family, model) = cells.get(cell).ok_or_else(|| unknown(cell))?;
                let row = cell_rows.row(i, image, family, model);
                let at = *cell_ids.get(cell).ok_or_else(|| unknown(cell))?;
                let k = *cell_index[at].get_or_insert_with(|| {
                    writer.state.cells.push(CellAcc {
                        cell_id: cell.to_string(),
                        family: family.clone(),
                        model: model.clone(),
                        ..Default::default()
                    });
                    writer.state.cells.len() - 1
                });
                writer.state.cells[k].add(
                    row.label,
                    row.top5.first().copied().unwrap_or(-1),
                    &row.floor,
                    row.latencies.len(),
                );
                writer.cell_image(&row)?;
                received.cell_images += 1;
            }
            for i in range(pairs_of, r) {
                let (a, b) = (pair_rows.cell_a.value(i), pair_rows.cell_b.value(i));
                let key = (
                    *cell_ids.get(a).ok_or_else(|| unknown(a))?,
                    *cell_ids.get(b).ok_or_else(|| unknown(b))?,
                );
                let pairs = &mut writer.state.pairs;
                let k = match pair_index.get(&key) {
                    Some(&k) => k,
                    None => {
                        let family = cells.get(a).map(|c| c.0.clone()).unwrap_or_default();
                        pairs.push(PairAcc {
                            family,
                            cell_a: a.to_string(),
                            cell_b: b.to_string(),
                            ..Default::default()
                        });
                        pair_index.insert(key, pairs.len() - 1);
                        pairs.len() - 1
                    }
                };
                let number = i32::try_from(k).map_err(|_| {
                    Error::Invalid(format!("more than {} pairs of cells", i32::MAX))
                })?;
                let label = (!pair_rows.label.is_null(i)).then(|| pair_rows.label.value(i));
                let c = pair_rows.comparison(i);
                writer.state.pairs[k].add_comparison(image, label, &c);
                writer.comparison(number, image, label, &c)?;
                received.comparisons += 1;
            }
        }
        progress(received);
        Ok(())
    })?;
    writer.close(DerivedTable::CellImages)?;
    report.comparisons = writer.close(DerivedTable::Comparisons)?;
    report.batches = 1;

    state.folded = folded;
    state.save(root)?;
    std::fs::remove_file(&cells_file).map_err(|e| Error::file(&cells_file, e))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The positions of row `r`'s elements in `list`'s values.
fn range(list: &arrow::array::ListArray, r: usize) -> std::ops::Range<usize> {
    let offsets = list.value_offsets();
    offsets[r] as usize..offsets[r + 1] as usize
}

/// Runs `sql` on the cluster and hands its batches to `each` as they arrive.
fn stream(
    ctx: &SessionContext,
    runtime: &tokio::runtime::Runtime,
    sql: &str,
    each: &mut dyn FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let mut batches = runtime.block_on(async { ctx.sql(sql).await?.execute_stream().await })?;
    while let Some(batch) = runtime.block_on(batches.next()) {
        each(batch?)?;
    }
    Ok(())
}

fn cells_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("cell_id", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, false),
        Field::new("model", DataType::Utf8, false),
    ]))
}

/// Writes [`CELLS_TABLE`]'s file (temporary file renamed into place).
fn write_cells(dir: &Path, cells: &HashMap<String, (String, String)>) -> Result<PathBuf> {
    let (mut id, mut family, mut model) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    for (cell, (f, m)) in cells {
        id.append_value(cell);
        family.append_value(f);
        model.append_value(m);
    }
    let batch = RecordBatch::try_new(
        cells_schema(),
        vec![
            Arc::new(id.finish()),
            Arc::new(family.finish()),
            Arc::new(model.finish()),
        ],
    )?;
    let path = dir.join(CELLS_FILE);
    let tmp = dir.join(TMP_DIR).join(CELLS_FILE);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
        .map_err(|e| Error::parquet(&tmp, e))?;
    writer.write(&batch).map_err(|e| Error::parquet(&tmp, e))?;
    writer.close().map_err(|e| Error::parquet(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
    Ok(path)
}

/// A column of `batch` as `ty` (the cluster may hand strings back as views, lists as large).
fn column(batch: &RecordBatch, name: &str, ty: &DataType) -> Result<ArrayRef> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| Error::Invalid(format!("the cluster's rows lack the column `{name}`")))?;
    if c.data_type() == ty {
        return Ok(c.clone());
    }
    Ok(arrow::compute::cast(c, ty)?)
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// The fields of `fold_image`'s cells (a `cell_images` row but for family and model).
struct CellImageRows {
    cell_id: StringArray,
    label: Int32Array,
    top5: arrow::array::ListArray,
    top5_prob: arrow::array::ListArray,
    hash: UInt64Array,
    compared: Int64Array,
    flips: Int64Array,
    nondeterministic: Int64Array,
    max_abs_logit: Float64Array,
    latencies: arrow::array::ListArray,
    repeated: Int64Array,
}

/// One row of [`CellImageRows`], owned.
struct CellImageRow<'a> {
    cell_id: &'a str,
    image_id: &'a str,
    family: &'a str,
    model: &'a str,
    label: Option<i32>,
    top5: Vec<i32>,
    top5_prob: Vec<f32>,
    hash: u64,
    floor: RepFloor,
    latencies: Vec<i64>,
}

/// Field `name` of the struct array `values`, cast to `ty` (the cluster may hand strings back
/// as views, lists as large).
fn field(values: &StructArray, name: &str, ty: &DataType) -> Result<ArrayRef> {
    let c = values
        .column_by_name(name)
        .ok_or_else(|| Error::Invalid(format!("the cluster's rows lack the field `{name}`")))?;
    Ok(arrow::compute::cast(c, ty)?)
}

fn structs(values: &ArrayRef) -> Result<&StructArray> {
    values
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| Error::Invalid("the cluster's rows are not structs".into()))
}

impl CellImageRows {
    fn new(values: &ArrayRef) -> Result<Self> {
        let values = structs(values)?;
        let int64 = |n: &str| -> Result<Int64Array> {
            Ok(field(values, n, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .clone())
        };
        let list = |n: &str, item: DataType| -> Result<arrow::array::ListArray> {
            Ok(field(values, n, &list_of(item))?.as_list::<i32>().clone())
        };
        Ok(Self {
            cell_id: field(values, "cell_id", &DataType::Utf8)?
                .as_string::<i32>()
                .clone(),
            label: field(values, "label", &DataType::Int32)?
                .as_primitive::<Int32Type>()
                .clone(),
            top5: list("top5", DataType::Int32)?,
            top5_prob: list("top5_prob", DataType::Float32)?,
            hash: field(values, "logits_hash", &DataType::UInt64)?
                .as_primitive()
                .clone(),
            compared: int64("compared")?,
            flips: int64("flips")?,
            nondeterministic: int64("nondeterministic")?,
            max_abs_logit: field(values, "max_abs_logit", &DataType::Float64)?
                .as_primitive()
                .clone(),
            latencies: list("latencies", DataType::Int64)?,
            repeated: int64("repeated")?,
        })
    }

    fn row<'a>(
        &'a self,
        i: usize,
        image_id: &'a str,
        family: &'a str,
        model: &'a str,
    ) -> CellImageRow<'a> {
        let count = |a: &Int64Array| u32::try_from(a.value(i)).unwrap_or(u32::MAX);
        CellImageRow {
            cell_id: self.cell_id.value(i),
            image_id,
            family,
            model,
            label: (!self.label.is_null(i)).then(|| self.label.value(i)),
            top5: self
                .top5
                .value(i)
                .as_primitive::<Int32Type>()
                .values()
                .to_vec(),
            top5_prob: self
                .top5_prob
                .value(i)
                .as_primitive::<Float32Type>()
                .values()
                .to_vec(),
            hash: self.hash.value(i),
            floor: RepFloor {
                compared: count(&self.compared),
                flips: count(&self.flips),
                nondeterministic: count(&self.nondeterministic),
                max_abs_logit: (!self.max_abs_logit.is_null(i))
                    .then(|| self.max_abs_logit.value(i)),
            },
            latencies: self
                .latencies
                .value(i)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
        }
    }
}

/// The columns of a batch of `comparisons` rows.
struct ComparisonRows {
    cell_a: StringArray,
    cell_b: StringArray,
    label: Int32Array,
    top1_a: Int32Array,
    top1_b: Int32Array,
    identical: BooleanArray,
    measures: Vec<Float64Array>,
}

impl ComparisonRows {
    /// The fields of `compare_cells`'s elements.
    fn new(values: &ArrayRef) -> Result<Self> {
        let values = structs(values)?;
        let field = |n: &str, ty: &DataType| field(values, n, ty);
        let string =
            |n: &str| -> Result<StringArray> { Ok(field(n, &DataType::Utf8)?.as_string().clone()) };
        let int32 = |n: &str| -> Result<Int32Array> {
            Ok(field(n, &DataType::Int32)?.as_primitive().clone())
        };
        let mut measures = Vec::new();
        for name in [
            "jaccard_top5",
            "rbo_top5",
            "kendall_tau",
            "max_abs_logit",
            "mean_abs_logit",
            "kl_ab",
            "kl_ba",
        ] {
            measures.push(field(name, &DataType::Float64)?.as_primitive().clone());
        }
        Ok(Self {
            cell_a: string("cell_a")?,
            cell_b: string("cell_b")?,
            label: int32("label")?,
            top1_a: int32("top1_a")?,
            top1_b: int32("top1_b")?,
            identical: field("identical", &DataType::Boolean)?.as_boolean().clone(),
            measures,
        })
    }

    fn comparison(&self, i: usize) -> Comparison {
        let m = |k: usize| (!self.measures[k].is_null(i)).then(|| self.measures[k].value(i));
        let logits = match (m(3), m(4), m(5), m(6)) {
            (Some(a), Some(b), Some(c), Some(d)) => Some((a, b, c, d)),
            _ => None,
        };
        Comparison {
            top1_a: self.top1_a.value(i),
            top1_b: self.top1_b.value(i),
            identical: self.identical.value(i),
            jaccard: m(0).unwrap_or(0.0),
            rbo: m(1).unwrap_or(0.0),
            kendall_tau: m(2),
            logits,
        }
    }
}

/// The derived parts being written, one per table at a time, each closed at an image boundary
/// once it holds [`PART_ROWS`].
struct Writer<'s> {
    root: PathBuf,
    state: &'s mut State,
    comparisons: Open<ComparisonsBuilder>,
    cell_images: Open<CellImagesBuilder>,
}

/// A table's open part: its file, rows not yet encoded, and the image range so far.
struct Open<B> {
    /// The open part and its number.
    file: Option<(PartFile, u64)>,
    rows: B,
    range: Option<(String, String)>,
    total: u64,
}

impl<B: Default> Default for Open<B> {
    fn default() -> Self {
        Self {
            file: None,
            rows: B::default(),
            range: None,
            total: 0,
        }
    }
}

impl<'s> Writer<'s> {
    fn new(root: &Path, state: &'s mut State) -> Self {
        Self {
            root: root.to_path_buf(),
            state,
            comparisons: Open::default(),
            cell_images: Open::default(),
        }
    }

    fn limit(table: DerivedTable) -> u64 {
        PART_ROWS
            .iter()
            .find(|(t, _)| *t == table)
            .map_or(u64::MAX, |(_, n)| *n)
    }

    /// Opens a part for `table` when none is, or closes a full one when `image` starts.
    fn part_for(&mut self, table: DerivedTable, image: &str) -> Result<()> {
        let (file, range) = match table {
            DerivedTable::Comparisons => (&self.comparisons.file, &self.comparisons.range),
            DerivedTable::CellImages => (&self.cell_images.file, &self.cell_images.range),
        };
        let full = file
            .as_ref()
            .is_some_and(|(f, _)| f.rows >= Self::limit(table))
            && range.as_ref().is_some_and(|r| r.1 != image);
        if full {
            self.close(table)?;
        }
        let open = match table {
            DerivedTable::Comparisons => self.comparisons.file.is_none(),
            DerivedTable::CellImages => self.cell_images.file.is_none(),
        };
        if open {
            let number = self.state.next_part;
            self.state.next_part += 1;
            let tmp = self
                .root
                .join(DIR)
                .join(TMP_DIR)
                .join(format!("{}-{number:06}.parquet", table.name()));
            let file = PartFile::create(&tmp, table)?;
            match table {
                DerivedTable::Comparisons => self.comparisons.file = Some((file, number)),
                DerivedTable::CellImages => self.cell_images.file = Some((file, number)),
            }
        }
        let range = match table {
            DerivedTable::Comparisons => &mut self.comparisons.range,
            DerivedTable::CellImages => &mut self.cell_images.range,
        };
        match range {
            None => *range = Some((image.to_string(), image.to_string())),
            Some(r) if r.1 != image => image.clone_into(&mut r.1),
            Some(_) => {}
        }
        Ok(())
    }

    fn cell_image(&mut self, row: &CellImageRow<'_>) -> Result<()> {
        self.part_for(DerivedTable::CellImages, row.image_id)?;
        let open = &mut self.cell_images;
        open.rows.push(&CellImage {
            cell_id: row.cell_id,
            image_id: row.image_id,
            family: row.family,
            model: row.model,
            label: row.label,
            top5: &row.top5,
            top5_prob: &row.top5_prob,
            hash: row.hash,
            floor: row.floor,
            latencies: &row.latencies,
        });
        if open.rows.rows >= 16_384
            && let Some((file, _)) = &mut open.file
        {
            file.write(open.rows.finish()?)?;
        }
        Ok(())
    }

    fn comparison(
        &mut self,
        pair: i32,
        image: &str,
        label: Option<i32>,
        c: &Comparison,
    ) -> Result<()> {
        self.part_for(DerivedTable::Comparisons, image)?;
        let open = &mut self.comparisons;
        open.rows.push(pair, image, label, c);
        if open.rows.rows >= 65_536
            && let Some((file, _)) = &mut open.file
        {
            file.write(open.rows.finish()?)?;
        }
        Ok(())
    }

    /// Closes `table`'s open part (if any) and lists it in the state; returns the table's rows
    /// written so far.
    fn close(&mut self, table: DerivedTable) -> Result<u64> {
        let (file, range, total) = match table {
            DerivedTable::Comparisons => {
                let o = &mut self.comparisons;
                if let Some((f, _)) = &mut o.file {
                    f.write(o.rows.finish()?)?;
                }
                (o.file.take(), o.range.take(), &mut o.total)
            }
            DerivedTable::CellImages => {
                let o = &mut self.cell_images;
                if let Some((f, _)) = &mut o.file {
                    f.write(o.rows.finish()?)?;
                }
                (o.file.take(), o.range.take(), &mut o.total)
            }
        };
        let Some((file, number)) = file else {
            return Ok(*total);
        };
        let part: Option<DerivedPart> = super::publish(&self.root, table, file, number, range)?;
        if let Some(p) = part {
            *total += p.rows;
            self.state.parts.push(p);
        }
        Ok(*total)
    }
}

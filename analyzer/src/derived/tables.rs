//! The derived tables' schemas and their writers.
//!
//! - `comparisons`: one row per (pair of cells of one model family, image), computed once, when
//!   the second of the two outputs is folded in. The pair is ordered by cell id (`cell_a <
//!   cell_b`), so the KL divergence is kept in both directions and a report orients it.
//! - `cell_images`: one row per (cell, image): the first repetition's answer, the run-to-run floor
//!   of the later repetitions against it, and every repetition's latency.
//!
//! Both are plain Parquet under `STORE/derived/`, sorted by image within a part, queryable with
//! any Parquet reader and through `deltann query` beside the raw tables.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Float32Builder, Float64Array, Float64Builder, Int32Array,
    Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::Compression;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A derived table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DerivedTable {
    Comparisons,
    CellImages,
}

impl DerivedTable {
    /// Both tables.
    pub const ALL: [DerivedTable; 2] = [DerivedTable::Comparisons, DerivedTable::CellImages];

    /// The table's directory and SQL name.
    pub fn name(self) -> &'static str {
        match self {
            DerivedTable::Comparisons => "comparisons",
            DerivedTable::CellImages => "cell_images",
        }
    }

    /// The table's Arrow schema.
    pub fn schema(self) -> SchemaRef {
        match self {
            DerivedTable::Comparisons => comparisons_schema(),
            DerivedTable::CellImages => cell_images_schema(),
        }
    }

    /// Columns whose row groups keep min/max statistics: those a reader prunes on. Within a
    /// part rows are sorted by image, so a row group covers a narrow range of image ids (the
    /// TUI reads one image's rows from the groups whose range holds it). Across parts, an
    /// overnight sweep's fold writes the parts of the cells it brings: their `pair` numbers
    /// (new pairs are numbered last) and cell names skip the other parts' row groups in
    /// `WHERE pair = k` or `WHERE cell_id = '...'`. The measures and `label` span their whole
    /// range in every group, so their statistics (a min and a max for each of 24M values per
    /// column) would prune nothing; skipping them saved `comparisons`' encoder 8-15%.
    fn statistics_columns(self) -> &'static [&'static str] {
        match self {
            DerivedTable::Comparisons => &["pair", "image_id"],
            DerivedTable::CellImages => &["cell_id", "image_id", "family", "model"],
        }
    }

    /// Columns of continuous values, written without a dictionary.
    fn continuous_columns(self) -> &'static [&'static str] {
        match self {
            DerivedTable::Comparisons => &["max_abs_logit", "mean_abs_logit", "kl_ab", "kl_ba"],
            DerivedTable::CellImages => &["rep_max_abs_logit"],
        }
    }

    /// The codec. `comparisons` (24 rows per output row) uses LZ4: its encoder thread was a
    /// third of a rebuild's CPU, zstd a fifth of that (and a compression context allocated per
    /// page); LZ4 took a 1M-row rebuild's CPU down by 2 s (user and system) for files 23%
    /// larger, and scans of it are no slower (BENCHMARKS.md). `cell_images` too: a report
    /// reads all of it, and the Parquet reader makes a zstd codec (a compression and a
    /// decompression context) for every column chunk it reads.
    fn compression(self) -> Compression {
        Compression::LZ4_RAW
    }

    /// Rows per row group: `cell_images` is read one image at a time by the TUI (smaller groups
    /// read less per lookup, but every group costs codec set-up when a report reads them all).
    fn row_group_rows(self) -> usize {
        match self {
            DerivedTable::Comparisons => 65_536,
            DerivedTable::CellImages => 16_384,
        }
    }
}

/// Columns of `comparisons` in SQL that its files do not hold: the pair's family and cells,
/// named by `pair` through the derived state's `pairs` (see [`comparisons_sql_schema`]).
pub const PAIR_NAME_COLUMNS: [&str; 3] = ["family", "cell_a", "cell_b"];

fn comparisons_schema() -> SchemaRef {
    let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    Arc::new(Schema::new(vec![
        // The pair's number in `pairs` (derived/state.json), which names its family and cells:
        // grouping on it is far cheaper than on the two cell ids (the flip matrix groups 24M
        // rows), and writing three strings per row cost a rebuild more than a third of its
        // encoding.
        f("pair", DataType::Int32, false),
        f("image_id", DataType::Utf8, false),
        f("label", DataType::Int32, true),
        f("top1_a", DataType::Int32, false),
        f("top1_b", DataType::Int32, false),
        f("flip", DataType::Boolean, false),
        f("identical", DataType::Boolean, false),
        f("jaccard_top5", DataType::Float64, false),
        f("rbo_top5", DataType::Float64, false),
        f("kendall_tau", DataType::Float64, true),
        // Computed in f32 (see fold::fused): stored as such, half the bytes of f64.
        f("max_abs_logit", DataType::Float32, true),
        f("mean_abs_logit", DataType::Float32, true),
        f("kl_ab", DataType::Float32, true),
        f("kl_ba", DataType::Float32, true),
    ]))
}

/// `comparisons` as SQL shows it: the file columns with the pair's `family`, `cell_a` and
/// `cell_b` around `pair`, dictionary-encoded on the pair number (no string is copied per row).
pub fn comparisons_sql_schema() -> SchemaRef {
    let name = |n: &str| {
        Field::new(
            n,
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        )
    };
    let files = comparisons_schema();
    let mut fields = vec![name("family")];
    for f in files.fields() {
        fields.push(f.as_ref().clone());
        if f.name() == "pair" {
            fields.extend([name("cell_a"), name("cell_b")]);
        }
    }
    Arc::new(Schema::new(fields))
}

fn cell_images_schema() -> SchemaRef {
    let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
    Arc::new(Schema::new(vec![
        f("cell_id", DataType::Utf8, false),
        f("image_id", DataType::Utf8, false),
        f("family", DataType::Utf8, false),
        f("model", DataType::Utf8, false),
        f("label", DataType::Int32, true),
        f("top1", DataType::Int32, false),
        f("top5", DataType::new_list(DataType::Int32, true), false),
        f(
            "top5_prob",
            DataType::new_list(DataType::Float32, true),
            false,
        ),
        f("logits_hash", DataType::UInt64, false),
        f("repetitions", DataType::Int32, false),
        f("rep_flips", DataType::Int32, false),
        f("rep_nondeterministic", DataType::Int32, false),
        f("rep_max_abs_logit", DataType::Float64, true),
        f(
            "latency_ns",
            DataType::new_list(DataType::Int64, true),
            false,
        ),
    ]))
}

/// One row of `comparisons`.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub top1_a: i32,
    pub top1_b: i32,
    pub identical: bool,
    pub jaccard: f64,
    pub rbo: f64,
    pub kendall_tau: Option<f64>,
    /// max |a - b|, mean |a - b|, KL(a || b), KL(b || a), when both sides kept logits.
    pub logits: Option<(f64, f64, f64, f64)>,
}

impl Comparison {
    /// Whether the top-1 answers differ.
    pub fn flip(&self) -> bool {
        self.top1_a != self.top1_b
    }
}

/// Builds `comparisons` rows: kept as plain rows and turned into columns once per batch, which
/// costs the fold's sequential step a third of appending to fourteen Arrow builders per row.
#[derive(Default)]
pub(crate) struct ComparisonsBuilder {
    pair: Vec<i32>,
    image_id: StringBuilder,
    label: Vec<Option<i32>>,
    comparisons: Vec<Comparison>,
    pub(crate) rows: usize,
}

impl ComparisonsBuilder {
    pub(crate) fn push(&mut self, pair: i32, image_id: &str, label: Option<i32>, c: &Comparison) {
        self.pair.push(pair);
        self.image_id.append_value(image_id);
        self.label.push(label);
        self.comparisons.push(c.clone());
        self.rows += 1;
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let c = &self.comparisons;
        let logit = |k: fn(&super::fold::Distance) -> f64| -> ArrayRef {
            Arc::new(Float32Array::from_iter(
                c.iter().map(|c| c.logits.as_ref().map(|l| k(l) as f32)),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(std::mem::take(&mut self.pair))),
            Arc::new(self.image_id.finish()),
            Arc::new(Int32Array::from(std::mem::take(&mut self.label))),
            Arc::new(Int32Array::from_iter_values(c.iter().map(|c| c.top1_a))),
            Arc::new(Int32Array::from_iter_values(c.iter().map(|c| c.top1_b))),
            Arc::new(BooleanArray::from_iter(c.iter().map(|c| Some(c.flip())))),
            Arc::new(BooleanArray::from_iter(c.iter().map(|c| Some(c.identical)))),
            Arc::new(Float64Array::from_iter_values(c.iter().map(|c| c.jaccard))),
            Arc::new(Float64Array::from_iter_values(c.iter().map(|c| c.rbo))),
            Arc::new(Float64Array::from_iter(c.iter().map(|c| c.kendall_tau))),
            logit(|l| l.0),
            logit(|l| l.1),
            logit(|l| l.2),
            logit(|l| l.3),
        ];
        self.pair.reserve(c.len());
        self.label.reserve(c.len());
        // Kept with its capacity: a fresh one would be faulted in page by page for every batch.
        self.comparisons.clear();
        Ok(RecordBatch::try_new(comparisons_schema(), columns)?)
    }
}

/// One row of `cell_images`.
pub(crate) struct CellImage<'a> {
    pub(crate) cell_id: &'a str,
    pub(crate) image_id: &'a str,
    pub(crate) family: &'a str,
    pub(crate) model: &'a str,
    pub(crate) label: Option<i32>,
    pub(crate) top5: &'a [i32],
    pub(crate) top5_prob: &'a [f32],
    pub(crate) hash: u64,
    pub(crate) floor: crate::merge::RepFloor,
    pub(crate) latencies: &'a [i64],
}

/// Builds `cell_images` rows.
pub(crate) struct CellImagesBuilder {
    cell_id: StringBuilder,
    image_id: StringBuilder,
    family: StringBuilder,
    model: StringBuilder,
    label: Int32Builder,
    top1: Int32Builder,
    top5: ListBuilder<Int32Builder>,
    top5_prob: ListBuilder<Float32Builder>,
    hash: UInt64Builder,
    reps: Int32Builder,
    rep_flips: Int32Builder,
    rep_nondet: Int32Builder,
    rep_max_abs: Float64Builder,
    latency: ListBuilder<Int64Builder>,
    pub(crate) rows: usize,
}

impl Default for CellImagesBuilder {
    fn default() -> Self {
        Self {
            cell_id: StringBuilder::new(),
            image_id: StringBuilder::new(),
            family: StringBuilder::new(),
            model: StringBuilder::new(),
            label: Int32Builder::new(),
            top1: Int32Builder::new(),
            top5: ListBuilder::new(Int32Builder::new()),
            top5_prob: ListBuilder::new(Float32Builder::new()),
            hash: UInt64Builder::new(),
            reps: Int32Builder::new(),
            rep_flips: Int32Builder::new(),
            rep_nondet: Int32Builder::new(),
            rep_max_abs: Float64Builder::new(),
            latency: ListBuilder::new(Int64Builder::new()),
            rows: 0,
        }
    }
}

impl CellImagesBuilder {
    pub(crate) fn push(&mut self, r: &CellImage<'_>) {
        let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        self.cell_id.append_value(r.cell_id);
        self.image_id.append_value(r.image_id);
        self.family.append_value(r.family);
        self.model.append_value(r.model);
        self.label.append_option(r.label);
        self.top1
            .append_value(r.top5.first().copied().unwrap_or(-1));
        self.top5.values().append_slice(r.top5);
        self.top5.append(true);
        self.top5_prob.values().append_slice(r.top5_prob);
        self.top5_prob.append(true);
        self.hash.append_value(r.hash);
        self.reps.append_value(to_i32(r.floor.compared + 1));
        self.rep_flips.append_value(to_i32(r.floor.flips));
        self.rep_nondet
            .append_value(to_i32(r.floor.nondeterministic));
        self.rep_max_abs.append_option(r.floor.max_abs_logit);
        self.latency.values().append_slice(r.latencies);
        self.latency.append(true);
        self.rows += 1;
    }

    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        self.rows = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.cell_id.finish()),
            Arc::new(self.image_id.finish()),
            Arc::new(self.family.finish()),
            Arc::new(self.model.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.top1.finish()),
            Arc::new(self.top5.finish()),
            Arc::new(self.top5_prob.finish()),
            Arc::new(self.hash.finish()),
            Arc::new(self.reps.finish()),
            Arc::new(self.rep_flips.finish()),
            Arc::new(self.rep_nondet.finish()),
            Arc::new(self.rep_max_abs.finish()),
            Arc::new(self.latency.finish()),
        ];
        Ok(RecordBatch::try_new(cell_images_schema(), columns)?)
    }
}

/// A derived part being written to a temporary file, encoded on a thread of its own so the
/// fold goes on while Parquet compresses (a bounded queue keeps memory flat).
pub(crate) struct PartFile {
    pub(crate) tmp: std::path::PathBuf,
    sender: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    encoder: Option<std::thread::JoinHandle<Result<File>>>,
    pub(crate) rows: u64,
}

impl PartFile {
    pub(crate) fn create(tmp: &Path, table: DerivedTable) -> Result<Self> {
        let file = File::create(tmp).map_err(|e| Error::file(tmp, e))?;
        let mut props = WriterProperties::builder()
            .set_compression(table.compression())
            .set_max_row_group_row_count(Some(table.row_group_rows()));
        // Continuous values almost never repeat within a row group: a dictionary would hash
        // every one of them and end up larger than the values (all of a group's 65,536 f32s fit
        // under the dictionary's size limit, so the writer never falls back to plain).
        for column in table.continuous_columns() {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*column), false);
        }
        let leaves = ArrowSchemaConverter::new()
            .convert(&table.schema())
            .map_err(|e| Error::parquet(tmp, e))?;
        for leaf in leaves.columns() {
            let root = leaf.path().parts().first().map_or("", String::as_str);
            if !table.statistics_columns().contains(&root) {
                props = props
                    .set_column_statistics_enabled(leaf.path().clone(), EnabledStatistics::None);
            }
        }
        let props = props.build();
        let mut writer = ArrowWriter::try_new(file, table.schema(), Some(props))
            .map_err(|e| Error::parquet(tmp, e))?;
        let (sender, receiver) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let path = tmp.to_path_buf();
        let encoder = std::thread::Builder::new()
            .name(format!("derived-{}", table.name()))
            .spawn(move || {
                for batch in receiver {
                    writer.write(&batch).map_err(|e| Error::parquet(&path, e))?;
                }
                writer.into_inner().map_err(|e| Error::parquet(&path, e))
            })
            .map_err(|e| Error::file(tmp, e))?;
        Ok(Self {
            tmp: tmp.to_path_buf(),
            sender: Some(sender),
            encoder: Some(encoder),
            rows: 0,
        })
    }

    pub(crate) fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        let sent = self.sender.as_ref().is_some_and(|s| s.send(batch).is_ok());
        if sent {
            Ok(())
        } else {
            // The encoder stopped: its error says why.
            self.join().map(|_| ())
        }
    }

    fn join(&mut self) -> Result<File> {
        self.sender = None;
        match self.encoder.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Invalid(format!(
                "{}: the Parquet encoder thread panicked",
                self.tmp.display()
            ))),
            None => Err(Error::Invalid(format!(
                "{}: written after it was finished",
                self.tmp.display()
            ))),
        }
    }

    /// Closes and fsyncs the file; it is then complete but not yet part of the state.
    pub(crate) fn finish(mut self) -> Result<(std::path::PathBuf, u64, u64)> {
        let file = self.join()?;
        file.sync_all().map_err(|e| Error::file(&self.tmp, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| Error::file(&self.tmp, e))?
            .len();
        Ok((self.tmp.clone(), self.rows, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row groups keep statistics for the columns readers prune on, nested ones included in
    /// the rule (a list's leaf is named by its root), and none for the others.
    #[test]
    fn statistics_are_kept_for_the_pruning_columns_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = Comparison {
            top1_a: 3,
            top1_b: 4,
            identical: false,
            jaccard: 0.5,
            rbo: 0.25,
            kendall_tau: Some(0.1),
            logits: Some((1.0, 0.5, 0.01, 0.02)),
        };
        let mut comparisons = ComparisonsBuilder::default();
        comparisons.push(0, "img1", Some(3), &c);
        comparisons.push(1, "img2", None, &c);
        let mut cell_images = CellImagesBuilder::default();
        for image_id in ["img1", "img2"] {
            cell_images.push(&CellImage {
                cell_id: "c",
                image_id,
                family: "f",
                model: "m",
                label: Some(1),
                top5: &[1, 2, 3, 4, 5],
                top5_prob: &[0.5, 0.2, 0.1, 0.1, 0.1],
                hash: 7,
                floor: crate::merge::RepFloor::default(),
                latencies: &[10, 20],
            });
        }
        for (table, batch) in [
            (DerivedTable::Comparisons, comparisons.finish().unwrap()),
            (DerivedTable::CellImages, cell_images.finish().unwrap()),
        ] {
            let path = dir.path().join(format!("{}.parquet", table.name()));
            let mut file = PartFile::create(&path, table).unwrap();
            file.write(batch).unwrap();
            file.finish().unwrap();
            let reader =
                parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap())
                    .unwrap();
            let group = parquet::file::reader::FileReader::metadata(&reader).row_group(0);
            let mut with = Vec::new();
            for column in group.columns() {
                let root = column.column_path().parts()[0].clone();
                if column
                    .statistics()
                    .is_some_and(|s| s.min_bytes_opt().is_some())
                {
                    with.push(root);
                }
            }
            assert_eq!(with, table.statistics_columns(), "{}", table.name());
        }
    }

    #[test]
    fn store_md_documents_every_derived_column() {
        let doc = include_str!("../../../docs/STORE.md");
        for table in DerivedTable::ALL {
            let heading = format!("### `{}`", table.name());
            let start = doc
                .find(&heading)
                .unwrap_or_else(|| panic!("no section {heading}"));
            let section = &doc[start..];
            let end = section[4..].find("\n### ").map_or(section.len(), |e| e + 4);
            for field in table.schema().fields() {
                let quoted = format!("`{}`", field.name());
                assert!(
                    section[..end].contains(&quoted),
                    "docs/STORE.md {heading} lacks {quoted}"
                );
            }
        }
    }
}

//! Per-image detail: every cell's top-5 for one image, and how far its logits are from its
//! family's reference cell, found in milliseconds however large the store.
//!
//! Reading one image's rows from `outputs` means touching every cell's part and decoding pages of
//! full logits. So the analysis pass, which sees every image's rows together anyway, also writes
//! this compact table (`STORE/_cache/detail-v1.parquet`, a cache like the analysis itself): one
//! row per image and cell, sorted by image, in small row groups. A lookup reads the footer once,
//! then only the row group whose image-id range holds the image.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanBuilder, Float32Builder, Int32Builder, ListBuilder, RecordBatch,
    StringBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Schema, SchemaRef, UInt32Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;
use serde::{Deserialize, Serialize};

use crate::disagreement::{Entry, fused};
use crate::error::{Error, Result};

/// Rows per row group: one lookup decodes at most this many small rows.
const ROW_GROUP_ROWS: usize = 2048;

/// The detail file's name under the store's `_cache/`.
pub const FILE: &str = "detail-v1.parquet";

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("image_id", DataType::Utf8, false),
        Field::new("cell", DataType::UInt32, false),
        Field::new("label", DataType::Int32, true),
        Field::new("top5", DataType::new_list(DataType::Int32, true), false),
        Field::new(
            "top5_prob",
            DataType::new_list(DataType::Float32, true),
            false,
        ),
        Field::new("max_abs_ref", DataType::Float32, true),
        Field::new("mean_abs_ref", DataType::Float32, true),
        Field::new("kl_ref", DataType::Float32, true),
        Field::new("identical_ref", DataType::Boolean, true),
    ]))
}

/// One cell's view of one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetailRow {
    pub cell: usize,
    pub label: Option<i32>,
    pub top5: Vec<i32>,
    pub top5_prob: Vec<f32>,
    /// Against the family's reference cell (None for the reference, or without logits).
    pub max_abs_ref: Option<f32>,
    pub mean_abs_ref: Option<f32>,
    pub kl_ref: Option<f32>,
    /// Bit-identical logits to the reference's.
    pub identical_ref: Option<bool>,
}

/// Streams detail rows to a Parquet file during the analysis pass.
pub(crate) struct DetailWriter {
    tmp: PathBuf,
    path: PathBuf,
    writer: ArrowWriter<File>,
    image_id: StringBuilder,
    cell: UInt32Builder,
    label: Int32Builder,
    top5: ListBuilder<Int32Builder>,
    top5_prob: ListBuilder<Float32Builder>,
    max_abs: Float32Builder,
    mean_abs: Float32Builder,
    kl: Float32Builder,
    identical: BooleanBuilder,
    rows: usize,
}

impl DetailWriter {
    pub(crate) fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        }
        let tmp = path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(|e| Error::Io(format!("{}: {e}", tmp.display())))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let writer = ArrowWriter::try_new(file, schema(), Some(props))
            .map_err(|e| Error::Io(format!("{}: {e}", tmp.display())))?;
        Ok(Self {
            tmp,
            path: path.to_path_buf(),
            writer,
            image_id: StringBuilder::new(),
            cell: UInt32Builder::new(),
            label: Int32Builder::new(),
            top5: ListBuilder::new(Int32Builder::new()),
            top5_prob: ListBuilder::new(Float32Builder::new()),
            max_abs: Float32Builder::new(),
            mean_abs: Float32Builder::new(),
            kl: Float32Builder::new(),
            identical: BooleanBuilder::new(),
            rows: 0,
        })
    }

    /// One image of one group: every present cell against the group's reference.
    pub(crate) fn push(
        &mut self,
        image_id: &str,
        label: Option<i32>,
        present: &[(usize, &Entry)],
        reference: Option<&Entry>,
    ) -> Result<()> {
        for (cell, e) in present {
            self.image_id.append_value(image_id);
            self.cell
                .append_value(u32::try_from(*cell).unwrap_or(u32::MAX));
            self.label.append_option(label);
            self.top5.values().append_slice(&e.row.top5);
            self.top5.append(true);
            self.top5_prob.values().append_slice(&e.row.top5_prob);
            self.top5_prob.append(true);
            let diff = reference.filter(|r| !std::ptr::eq(*r, *e)).and_then(|r| {
                let (la, lb, lpa, lpb, pa) = (
                    r.row.logits.as_ref()?,
                    e.row.logits.as_ref()?,
                    r.log_p.as_ref()?,
                    e.log_p.as_ref()?,
                    r.p.as_ref()?,
                );
                (la.len() == lb.len()).then(|| fused(la, lb, pa, lpa, lpb))
            });
            self.max_abs.append_option(diff.map(|d| d.0));
            self.mean_abs.append_option(diff.map(|d| d.1 / len(e)));
            self.kl.append_option(diff.map(|d| d.2.max(0.0)));
            self.identical
                .append_option(reference.map(|r| r.row.hash == e.row.hash));
            self.rows += 1;
        }
        if self.rows >= ROW_GROUP_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(self.image_id.finish()),
                Arc::new(self.cell.finish()),
                Arc::new(self.label.finish()),
                Arc::new(self.top5.finish()),
                Arc::new(self.top5_prob.finish()),
                Arc::new(self.max_abs.finish()),
                Arc::new(self.mean_abs.finish()),
                Arc::new(self.kl.finish()),
                Arc::new(self.identical.finish()),
            ],
        )?;
        self.writer
            .write(&batch)
            .map_err(|e| Error::Io(format!("{}: {e}", self.tmp.display())))?;
        self.rows = 0;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.writer
            .close()
            .map_err(|e| Error::Io(format!("{}: {e}", self.tmp.display())))?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::Io(format!("{}: {e}", self.path.display())))
    }
}

fn len(e: &Entry) -> f32 {
    e.row.logits.as_ref().map_or(1.0, |l| l.len().max(1) as f32)
}

/// A detail file opened for lookups.
#[derive(Debug)]
pub struct Detail {
    path: PathBuf,
    /// Per row group: (min image id, max image id).
    ranges: Vec<(String, String)>,
}

impl Detail {
    /// Opens a detail file and reads its row-group index.
    ///
    /// # Errors
    /// Fails when the file is missing or not a detail file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let mut ranges = Vec::new();
        for rg in builder.metadata().row_groups() {
            let range = match rg.column(0).statistics() {
                Some(Statistics::ByteArray(s)) => s.min_opt().zip(s.max_opt()).map(|(a, b)| {
                    (
                        String::from_utf8_lossy(a.data()).into_owned(),
                        String::from_utf8_lossy(b.data()).into_owned(),
                    )
                }),
                _ => None,
            };
            ranges.push(range.unwrap_or_else(|| (String::new(), "\u{10ffff}".into())));
        }
        Ok(Self {
            path: path.to_path_buf(),
            ranges,
        })
    }

    /// Every cell's row for `image_id`.
    ///
    /// # Errors
    /// Fails when the file cannot be read.
    pub fn lookup(&self, image_id: &str) -> Result<Vec<DetailRow>> {
        let groups: Vec<usize> = self
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, (lo, hi))| lo.as_str() <= image_id && image_id <= hi.as_str())
            .map(|(i, _)| i)
            .collect();
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let io = |e: &dyn std::fmt::Display| Error::Io(format!("{}: {e}", self.path.display()));
        let file = File::open(&self.path).map_err(|e| io(&e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| io(&e))?
            .with_row_groups(groups)
            .build()
            .map_err(|e| io(&e))?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| io(&e))?;
            let ids = batch.column(0).as_string::<i32>();
            let cells = batch.column(1).as_primitive::<UInt32Type>();
            let labels = batch.column(2).as_primitive::<Int32Type>();
            let top5 = batch.column(3).as_list::<i32>();
            let probs = batch.column(4).as_list::<i32>();
            let f = |c: usize, i: usize| {
                let a = batch.column(c).as_primitive::<Float32Type>();
                a.is_valid(i).then(|| a.value(i))
            };
            let identical = batch.column(8).as_boolean();
            for i in 0..batch.num_rows() {
                if ids.value(i) != image_id {
                    continue;
                }
                out.push(DetailRow {
                    cell: cells.value(i) as usize,
                    label: labels.is_valid(i).then(|| labels.value(i)),
                    top5: top5.value(i).as_primitive::<Int32Type>().values().to_vec(),
                    top5_prob: probs
                        .value(i)
                        .as_primitive::<Float32Type>()
                        .values()
                        .to_vec(),
                    max_abs_ref: f(5, i),
                    mean_abs_ref: f(6, i),
                    kl_ref: f(7, i),
                    identical_ref: identical.is_valid(i).then(|| identical.value(i)),
                });
            }
        }
        Ok(out)
    }
}

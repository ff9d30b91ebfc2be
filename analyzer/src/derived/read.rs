//! Reading the derived tables back: every cell's answer per image (for the per-image findings
//! and latencies of a report) and one image's rows (for the TUI's image screen).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type, UInt64Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::statistics::Statistics;

use super::{DerivedPart, DerivedTable, State};
use crate::disagreement::Answer;
use crate::error::{Error, Result};

/// Every image's answers, in image-id order, and every cell's latencies.
#[derive(Debug, Default)]
pub struct PerImage {
    pub images: Vec<(String, Vec<Answer>)>,
    /// Per cell (by the caller's index), every output row's latency in nanoseconds.
    pub latencies: Vec<Vec<i64>>,
}

/// Reads `columns` of a derived part, only the row groups whose image-id range may hold `image`
/// when one is given, batch by batch: collecting a whole `cell_images` part first (half a
/// million rows each on the 1M-row store) took a report's peak memory from 167 to 228 MB.
fn read(
    root: &Path,
    part: &DerivedPart,
    columns: &[&str],
    image: Option<&str>,
) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let path = root.join(&part.path);
    let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(&path, e))?;
    let indices = columns
        .iter()
        .map(|c| builder.schema().index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let mut builder = builder.with_projection(mask).with_batch_size(8192);
    if let Some(image) = image {
        let id_col = builder
            .schema()
            .index_of("image_id")
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let groups: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, rg)| match rg.column(id_col).statistics() {
                Some(Statistics::ByteArray(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(lo), Some(hi)) => {
                        lo.data() <= image.as_bytes() && image.as_bytes() <= hi.data()
                    }
                    _ => true,
                },
                _ => true,
            })
            .map(|(i, _)| i)
            .collect();
        builder = builder.with_row_groups(groups);
    }
    let reader = builder.build().map_err(|e| Error::parquet(&path, e))?;
    Ok(reader.map(move |b| b.map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))))
}

/// A batch's columns by name, with errors that name the table and column.
struct Cols<'a>(&'a RecordBatch, DerivedTable);

impl<'a> Cols<'a> {
    fn get(&self, name: &str) -> Result<&'a arrow::array::ArrayRef> {
        self.0
            .column_by_name(name)
            .ok_or_else(|| missing(self.1, name))
    }

    fn string(&self, name: &str) -> Result<&'a arrow::array::StringArray> {
        self.get(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| missing(self.1, name))
    }

    fn int(&self, name: &str) -> Result<&'a arrow::array::Int32Array> {
        self.get(name)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| missing(self.1, name))
    }

    fn list(&self, name: &str) -> Result<&'a arrow::array::ListArray> {
        self.get(name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| missing(self.1, name))
    }
}

fn missing(table: DerivedTable, column: &str) -> Error {
    Error::Invalid(format!(
        "derived table {}: no usable column `{column}`",
        table.name()
    ))
}

/// Every cell's answer per image and its latencies, from `cell_images`; `index` maps cell ids to
/// the caller's cell indices (rows of other cells are skipped).
///
/// # Errors
/// Fails when a derived part cannot be read.
pub fn answers(
    root: &Path,
    state: &State,
    index: &HashMap<String, usize>,
    cells: usize,
) -> Result<PerImage> {
    const T: DerivedTable = DerivedTable::CellImages;
    let mut by_image: HashMap<String, Vec<Answer>> = HashMap::new();
    let mut latencies = vec![Vec::new(); cells];
    let columns = [
        "cell_id",
        "image_id",
        "label",
        "top1",
        "top5",
        "top5_prob",
        "latency_ns",
    ];
    for part in state.parts_of(T) {
        for batch in read(root, part, &columns, None)? {
            let batch = batch?;
            let c = Cols(&batch, T);
            let ids = c.string("cell_id")?;
            let images = c.string("image_id")?;
            let labels = c.int("label")?;
            let top1 = c.int("top1")?;
            let top5 = c.list("top5")?;
            let probs = c.list("top5_prob")?;
            let lat = c.list("latency_ns")?;
            for i in 0..batch.num_rows() {
                let Some(&cell) = index.get(ids.value(i)) else {
                    continue;
                };
                let t5 = top5.value(i);
                let t5 = t5.as_primitive::<Int32Type>();
                let p5 = probs.value(i);
                let p5 = p5.as_primitive::<Float32Type>();
                let answer = Answer {
                    cell,
                    label: labels.is_valid(i).then(|| labels.value(i)),
                    top1: top1.value(i),
                    top2: if t5.len() > 1 { t5.value(1) } else { -1 },
                    p1: if !p5.is_empty() { p5.value(0) } else { 0.0 },
                    p2: if p5.len() > 1 { p5.value(1) } else { 0.0 },
                };
                match by_image.get_mut(images.value(i)) {
                    Some(v) => v.push(answer),
                    None => {
                        by_image.insert(images.value(i).to_string(), vec![answer]);
                    }
                }
                let l = lat.value(i);
                latencies[cell].extend_from_slice(l.as_primitive::<Int64Type>().values());
            }
        }
    }
    let mut images: Vec<(String, Vec<Answer>)> = by_image.into_iter().collect();
    images.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(PerImage { images, latencies })
}

/// One cell's row of one image, from `cell_images`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRow {
    pub cell_id: String,
    pub label: Option<i32>,
    pub top5: Vec<i32>,
    pub top5_prob: Vec<f32>,
    pub logits_hash: u64,
}

/// One pair's comparison on one image, from `comparisons`.
#[derive(Clone, Debug, PartialEq)]
pub struct PairRow {
    pub cell_a: String,
    pub cell_b: String,
    pub identical: bool,
    pub max_abs_logit: Option<f64>,
    pub mean_abs_logit: Option<f64>,
    pub kl_ab: Option<f64>,
    pub kl_ba: Option<f64>,
}

fn may_hold(part: &DerivedPart, image: &str) -> bool {
    part.range
        .as_ref()
        .is_none_or(|(lo, hi)| lo.as_str() <= image && image <= hi.as_str())
}

/// Every cell's row and every comparison of one image: only the parts, and within them the row
/// groups, whose image range holds it are read.
///
/// # Errors
/// Fails when a derived part cannot be read.
pub fn image(root: &Path, state: &State, image: &str) -> Result<(Vec<ImageRow>, Vec<PairRow>)> {
    let mut rows = Vec::new();
    const C: DerivedTable = DerivedTable::CellImages;
    for part in state.parts_of(C).filter(|p| may_hold(p, image)) {
        let columns = [
            "image_id",
            "cell_id",
            "label",
            "top5",
            "top5_prob",
            "logits_hash",
        ];
        for batch in read(root, part, &columns, Some(image))? {
            let batch = batch?;
            let c = Cols(&batch, C);
            let ids = c.string("image_id")?;
            let cells = c.string("cell_id")?;
            let labels = c.int("label")?;
            let top5 = c.list("top5")?;
            let probs = c.list("top5_prob")?;
            let hash = c
                .get("logits_hash")?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| missing(C, "logits_hash"))?;
            for i in (0..batch.num_rows()).filter(|&i| ids.value(i) == image) {
                rows.push(ImageRow {
                    cell_id: cells.value(i).to_string(),
                    label: labels.is_valid(i).then(|| labels.value(i)),
                    top5: top5.value(i).as_primitive::<Int32Type>().values().to_vec(),
                    top5_prob: probs
                        .value(i)
                        .as_primitive::<Float32Type>()
                        .values()
                        .to_vec(),
                    logits_hash: hash.value(i),
                });
            }
        }
    }
    let mut pairs = Vec::new();
    const P: DerivedTable = DerivedTable::Comparisons;
    for part in state.parts_of(P).filter(|p| may_hold(p, image)) {
        let columns = [
            "image_id",
            "pair",
            "identical",
            "max_abs_logit",
            "mean_abs_logit",
            "kl_ab",
            "kl_ba",
        ];
        for batch in read(root, part, &columns, Some(image))? {
            let batch = batch?;
            let c = Cols(&batch, P);
            let ids = c.string("image_id")?;
            let numbers = c.int("pair")?;
            let identical = c
                .get("identical")?
                .as_boolean_opt()
                .ok_or_else(|| missing(P, "identical"))?;
            let f = |name: &str, i: usize| -> Option<f64> {
                let col = batch
                    .column_by_name(name)?
                    .as_primitive_opt::<Float32Type>()?;
                col.is_valid(i).then(|| f64::from(col.value(i)))
            };
            for i in (0..batch.num_rows()).filter(|&i| ids.value(i) == image) {
                let pair = state.pair(numbers.value(i), &part.path)?;
                pairs.push(PairRow {
                    cell_a: pair.cell_a.clone(),
                    cell_b: pair.cell_b.clone(),
                    identical: identical.value(i),
                    max_abs_logit: f("max_abs_logit", i),
                    mean_abs_logit: f("mean_abs_logit", i),
                    kl_ab: f("kl_ab", i),
                    kl_ba: f("kl_ba", i),
                });
            }
        }
    }
    Ok((rows, pairs))
}

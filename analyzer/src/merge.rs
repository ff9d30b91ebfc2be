//! A k-way merge of `outputs` parts by image: the one way the analyzer reads model outputs.
//!
//! The collector writes every part sorted by image (images in dataset order, each image's
//! repetitions together), so merging the parts' cursors yields, image after image, every cell's
//! rows for that image. Memory holds one image's rows from each open part, never the table. Both
//! the derived tables (which merge the parts being folded in with the already folded parts they
//! overlap) and `diff` (which merges two stores) read through here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{
    Array, AsArray, BinaryArray, GenericListArray, Int32Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{Float32Type, Int32Type, Int64Type, UInt64Type};
use deltann_store::outputs;
use deltann_store::schema::col;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::statistics::Statistics;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::metrics;

/// One output row, as much of it as analysis uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub rep: i32,
    pub label: Option<i32>,
    pub top5: Vec<i32>,
    pub top5_prob: Vec<f32>,
    /// A zero-copy slice of the decoded column (`None` when the row has none, or when they were
    /// not read: see `logits_unread`).
    pub logits: Option<ScalarBuffer<f32>>,
    /// The part was opened with [`Wanted::Rows`] and this row's logits were not decoded: a
    /// caller that needs them takes another row's with the same `hash`.
    pub logits_unread: bool,
    pub hash: u64,
    pub latency: i64,
}

/// The probabilities of one logit row and its log-partition.
#[derive(Debug, PartialEq)]
pub struct Softmax {
    pub p: Vec<f32>,
    /// max + ln sum e^(x - max), in f64: log p = x - lse. A KL divergence is taken from the
    /// logits and the log-partitions' difference (see `derived::fold::distance`), not from f32
    /// log-probabilities, whose rounding (up to 2.4e-7 near -6.9) swamped the KL of
    /// near-identical rows.
    pub lse: f64,
}

impl Softmax {
    /// The softmax of a logit row (one exponential per class).
    pub fn of(logits: &[f32]) -> Self {
        let (p, lse) = softmax(logits);
        Self { p, lse }
    }
}

/// A cell's first repetition of an image, with its softmax computed once for every comparison
/// (and shared between cells whose logits are bit-identical).
pub struct Entry {
    pub row: Row,
    pub soft: Option<std::sync::Arc<Softmax>>,
}

impl Entry {
    /// The row with its softmax computed.
    pub fn new(row: Row) -> Self {
        let soft = row
            .logits
            .as_deref()
            .map(|l| std::sync::Arc::new(Softmax::of(l)));
        Self { row, soft }
    }

    /// The row without its softmax yet.
    pub fn bare(row: Row) -> Self {
        Self { row, soft: None }
    }

    /// The top-1 class, -1 when the row has none.
    pub fn top1(&self) -> i32 {
        self.row.top5.first().copied().unwrap_or(-1)
    }

    /// Whether two rows hold bit-identical, finite logits (then every distance is exactly 0).
    /// The fold calls it for each cell against every earlier representative of its family;
    /// when the hashes agree, the rows are compared as bytes (or not at all when both share one
    /// decoded buffer), and finiteness is folded without an early exit so the loop vectorises.
    pub fn same_logits(&self, other: &Entry) -> bool {
        self.row.hash == other.row.hash
            && match (&self.row.logits, &other.row.logits) {
                // Empty rows are not "identical logits": they have no distances at all.
                (Some(a), Some(b)) if !a.is_empty() => {
                    (a.ptr_eq(b) || a.inner().as_slice() == b.inner().as_slice())
                        && a.iter().fold(true, |finite, x| finite & x.is_finite())
                }
                _ => false,
            }
    }
}

/// What one cell's repetitions of one image say about its own stability (against its first).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RepFloor {
    /// Later repetitions compared with the first.
    pub compared: u32,
    pub flips: u32,
    /// Repetitions whose logits are not bit-identical to the first's.
    pub nondeterministic: u32,
    pub max_abs_logit: Option<f64>,
}

/// Splits one cell's rows of one image into its first repetition and its run-to-run floor.
/// `rows` must not be empty.
pub fn first_and_floor(mut rows: Vec<Row>) -> Option<(Row, RepFloor, Vec<i64>)> {
    rows.sort_by_key(|r| r.rep);
    let latencies = rows.iter().map(|r| r.latency).collect();
    let mut rows = rows.into_iter();
    let first = rows.next()?;
    let mut floor = RepFloor::default();
    for r in rows {
        floor.compared += 1;
        floor.flips += u32::from(r.top5.first() != first.top5.first());
        floor.nondeterministic += u32::from(r.hash != first.hash);
        if let (Some(a), Some(b)) = (&first.logits, &r.logits)
            && let Some((max, _)) = metrics::abs_diff(a, b)
        {
            floor.max_abs_logit = Some(floor.max_abs_logit.map_or(max, |m: f64| m.max(max)));
        }
    }
    Some((first, floor, latencies))
}

/// The probabilities of a logit row, with one exponential per class, and its log-partition
/// (max + ln sum e^(x - max), in f64).
///
/// A rebuild computes a softmax per distinct logit row (a quarter million rows of 1000 classes
/// on the 1M-row synthetic store): with libm's `expf` per class and a serial f64 sum it was 8%
/// of the rebuild's CPU. The row is walked as arrays of sixteen lanes (the maximum as a select,
/// the exponential as [`exp_nonpositive`], sixteen f32 partial sums added in f64), which the
/// compiler vectorises on baseline x86-64: 6.3-8.7 -> 3.2 us per 1000-class row in a
/// micro-benchmark (f64 partial sums spilled registers: 5.4-6.3 us). Sixteen partial sums of
/// at most 1/16 of the row each keep the sum's relative error near 1e-7.
pub fn softmax(logits: &[f32]) -> (Vec<f32>, f64) {
    const L: usize = 16;
    let (chunks, tail) = logits.as_chunks::<L>();
    // A NaN is skipped by the select as by f32::max.
    let mut lanes = [f32::NEG_INFINITY; L];
    for c in chunks {
        for j in 0..L {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
        }
    }
    let max = lanes
        .iter()
        .chain(tail)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut p = vec![0.0f32; logits.len()];
    let mut sums = [0.0f32; L];
    let (out, out_tail) = p.as_chunks_mut::<L>();
    for (c, o) in chunks.iter().zip(out.iter_mut()) {
        for j in 0..L {
            let e = exp_nonpositive(c[j] - max);
            o[j] = e;
            sums[j] += e;
        }
    }
    let mut sum: f64 = sums.iter().map(|&s| f64::from(s)).sum();
    for (v, o) in tail.iter().zip(out_tail.iter_mut()) {
        *o = exp_nonpositive(v - max);
        sum += f64::from(*o);
    }
    let inv = (1.0 / sum) as f32;
    for e in &mut p {
        *e *= inv;
    }
    (p, f64::from(max) + sum.ln())
}

/// e^x for x <= 0 (or NaN, which it returns), within 2 ulp of the exact value; 0 below
/// -87.33, where e^x leaves the normal floats (libm would give subnormals down to -103.3: a
/// probability under 1e-38 weighs nothing in a KL divergence). Cephes' `expf`: x = n ln 2 + r
/// with |r| <= ln 2 / 2, e^r by a degree-6 polynomial, 2^n written into the exponent bits; n is
/// rounded by adding 1.5 x 2^23 (no rounding instruction before SSE4.1), so the whole function
/// is arithmetic and selects, which vectorise.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 x 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    // t's low mantissa bits are n (for |n| < 2^22); NaN and -inf give garbage, masked below.
    let n = (t.to_bits() as i32).wrapping_sub(SHIFT.to_bits() as i32);
    let nf = t - SHIFT;
    let r = x - nf * LN2_HI - nf * LN2_LO;
    let mut q = 1.987_569_2e-4f32;
    q = q * r + 1.398_199_9e-3;
    q = q * r + 8.333_452e-3;
    q = q * r + 4.166_579_6e-2;
    q = q * r + 1.666_666_5e-1;
    q = q * r + 0.5;
    let er = q * r * r + r + 1.0;
    let scale = f32::from_bits((n.wrapping_add(127) as u32).wrapping_shl(23));
    if x < -87.336_54 { 0.0 } else { er * scale }
}

/// Which rows of a part need their logits decoded. Logits are nearly all of an `outputs` part's
/// bytes and of its decoding time; a fold reads an already folded part only for the rows whose
/// logits no other row of the image shares (see `derived::fold`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Every row's.
    All,
    /// Only the rows marked, by position in the part (the other rows come without logits).
    Rows(Vec<bool>),
}

/// A batch's logits: the decoded column, or for a part read with [`Wanted::Rows`], the logits of
/// the rows that wanted them (`None`: not read; `Some(None)`: the row has none).
enum BatchLogits {
    Column(BinaryArray),
    Picked(Vec<Option<Option<ScalarBuffer<f32>>>>),
}

/// The logits of the wanted rows of a part read with [`Wanted::Rows`], in row order: a second
/// reader over the logits column alone, with a row selection.
struct LogitsOnly {
    reader: ParquetRecordBatchReader,
    batch: Option<BinaryArray>,
    row: usize,
}

impl LogitsOnly {
    /// The next wanted row's logits.
    fn next(&mut self, path: &Path) -> Result<Option<ScalarBuffer<f32>>> {
        loop {
            if let Some(b) = &self.batch
                && self.row < b.len()
            {
                let i = self.row;
                self.row += 1;
                return outputs::logits(b, i).map_err(|e| invalid(path, e));
            }
            match self.reader.next() {
                Some(Ok(batch)) => {
                    let column = batch
                        .column(0)
                        .as_binary_opt::<i32>()
                        .ok_or_else(|| invalid(path, "no usable column `logits`"))?
                        .clone();
                    self.batch = Some(column);
                    self.row = 0;
                }
                Some(Err(e)) => return Err(invalid(path, e)),
                None => return Err(invalid(path, "fewer logits rows than selected")),
            }
        }
    }
}

struct Columns {
    image_id: StringArray,
    repetition: Int32Array,
    label: Int32Array,
    top5: GenericListArray<i32>,
    top5_prob: GenericListArray<i32>,
    logits: BatchLogits,
    hash: UInt64Array,
    latency: Int64Array,
}

impl Columns {
    /// A batch's columns; `logits` is `None` when the batch was read without them.
    fn new(batch: &RecordBatch, path: &Path, logits: Option<BatchLogits>) -> Result<Self> {
        let missing =
            |c: &str| Error::Invalid(format!("{}: no usable column `{c}`", path.display()));
        let get = |c: &str| batch.column_by_name(c).ok_or_else(|| missing(c));
        let list = |c: &str| -> Result<GenericListArray<i32>> {
            Ok(get(c)?
                .as_list_opt::<i32>()
                .ok_or_else(|| missing(c))?
                .clone())
        };
        Ok(Self {
            image_id: get(col::IMAGE_ID)?
                .as_string_opt::<i32>()
                .ok_or_else(|| missing(col::IMAGE_ID))?
                .clone(),
            repetition: get(col::REPETITION)?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| missing(col::REPETITION))?
                .clone(),
            label: get(col::LABEL)?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| missing(col::LABEL))?
                .clone(),
            top5: list(col::TOP5)?,
            top5_prob: list(col::TOP5_PROB)?,
            logits: match logits {
                Some(l) => l,
                None => BatchLogits::Column(
                    get(col::LOGITS)?
                        .as_binary_opt::<i32>()
                        .ok_or_else(|| missing(col::LOGITS))?
                        .clone(),
                ),
            },
            hash: get(col::LOGITS_HASH)?
                .as_primitive_opt::<UInt64Type>()
                .ok_or_else(|| missing(col::LOGITS_HASH))?
                .clone(),
            latency: get(col::LATENCY_NS)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| missing(col::LATENCY_NS))?
                .clone(),
        })
    }

    fn row(&self, i: usize, path: &Path) -> Result<Row> {
        let ints = |l: &GenericListArray<i32>| -> Vec<i32> {
            let v = l.value(i);
            v.as_primitive::<Int32Type>().values().to_vec()
        };
        let floats = |l: &GenericListArray<i32>| -> ScalarBuffer<f32> {
            l.value(i).as_primitive::<Float32Type>().values().clone()
        };
        let (logits, logits_unread) = match &self.logits {
            BatchLogits::Column(l) => (outputs::logits(l, i).map_err(|e| invalid(path, e))?, false),
            BatchLogits::Picked(p) => match p.get(i) {
                Some(Some(l)) => (l.clone(), false),
                _ => (None, true),
            },
        };
        Ok(Row {
            rep: self.repetition.value(i),
            label: self.label.is_valid(i).then(|| self.label.value(i)),
            top5: ints(&self.top5),
            top5_prob: floats(&self.top5_prob).to_vec(),
            logits,
            logits_unread,
            hash: self.hash.value(i),
            latency: self.latency.value(i),
        })
    }
}

const COLUMNS: [&str; 8] = [
    col::IMAGE_ID,
    col::REPETITION,
    col::LABEL,
    col::TOP5,
    col::TOP5_PROB,
    col::LOGITS,
    col::LOGITS_HASH,
    col::LATENCY_NS,
];

fn invalid(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// The smallest and largest `image_id` of an `outputs` part, from its footer statistics
/// (`None` for an empty part).
///
/// # Errors
/// Fails when the file cannot be opened or is not Parquet.
pub fn image_range(path: &Path) -> Result<Option<(String, String)>> {
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| invalid(path, e))?;
    let index = builder
        .schema()
        .index_of(col::IMAGE_ID)
        .map_err(|e| invalid(path, e))?;
    let mut range: Option<(String, String)> = None;
    for rg in builder.metadata().row_groups() {
        if rg.num_rows() == 0 {
            continue;
        }
        let Some(Statistics::ByteArray(s)) = rg.column(index).statistics() else {
            return Err(invalid(path, "no image_id statistics"));
        };
        let (Some(lo), Some(hi)) = (s.min_opt(), s.max_opt()) else {
            return Err(invalid(path, "no image_id statistics"));
        };
        let (lo, hi) = (
            String::from_utf8_lossy(lo.data()).into_owned(),
            String::from_utf8_lossy(hi.data()).into_owned(),
        );
        range = Some(match range {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }
    Ok(range)
}

struct Cursor {
    slot: usize,
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    /// For a part read with [`Wanted::Rows`]: which rows, the logits reader, and the position in
    /// the part of the next batch's first row.
    picked: Option<(Vec<bool>, Option<LogitsOnly>, usize)>,
    batch: Option<Columns>,
    row: usize,
    /// The next batch, decoded ahead (in parallel with other cursors') by [`Merge::prefetch`].
    ahead: Option<Result<Option<Columns>>>,
}

/// Runs of selected and skipped rows.
fn selection(rows: &[bool]) -> RowSelection {
    let mut runs: Vec<RowSelector> = Vec::new();
    for &w in rows {
        match runs.last_mut() {
            Some(r) if r.skip != w => r.row_count += 1,
            _ => runs.push(if w {
                RowSelector::select(1)
            } else {
                RowSelector::skip(1)
            }),
        }
    }
    RowSelection::from(runs)
}

/// The key columns of every row of an `outputs` part, in file order: (image id, repetition,
/// logits hash). Cheap next to the logits: what a fold reads to decide which logits it needs.
///
/// # Errors
/// Fails when the part cannot be read.
pub fn keys(path: &Path) -> Result<Vec<(String, i32, u64)>> {
    let file = File::open(path).map_err(|e| Error::file(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| invalid(path, e))?;
    let columns = [col::IMAGE_ID, col::REPETITION, col::LOGITS_HASH];
    let indices = columns
        .iter()
        .map(|c| builder.schema().index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, e))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(8192)
        .build()
        .map_err(|e| invalid(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| invalid(path, e))?;
        let missing = |c: &str| invalid(path, format!("no usable column `{c}`"));
        let ids = batch
            .column_by_name(col::IMAGE_ID)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing(col::IMAGE_ID))?;
        let reps = batch
            .column_by_name(col::REPETITION)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| missing(col::REPETITION))?;
        let hashes = batch
            .column_by_name(col::LOGITS_HASH)
            .and_then(|c| c.as_primitive_opt::<UInt64Type>())
            .ok_or_else(|| missing(col::LOGITS_HASH))?;
        for i in 0..batch.num_rows() {
            out.push((ids.value(i).to_string(), reps.value(i), hashes.value(i)));
        }
    }
    Ok(out)
}

/// A cursor with at most this many rows left in its batch decodes the next one ahead.
const PREFETCH_BELOW: usize = 8;

impl Cursor {
    fn open(slot: usize, path: PathBuf, wanted: Wanted) -> Result<Self> {
        let reader = |columns: &[&str], selection: Option<RowSelection>| {
            let file = File::open(&path).map_err(|e| Error::file(&path, e))?;
            // The offset index (where each page starts, and its first row) lets a row selection
            // skip whole pages instead of decompressing them.
            let options = if selection.is_some() {
                ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional)
            } else {
                ArrowReaderOptions::new()
            };
            let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
                .map_err(|e| invalid(&path, e))?;
            let indices = columns
                .iter()
                .map(|c| builder.schema().index_of(c))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| invalid(&path, e))?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
            let mut builder = builder.with_projection(mask).with_batch_size(64);
            if let Some(selection) = selection {
                builder = builder.with_row_selection(selection);
            }
            builder.build().map_err(|e| invalid(&path, e))
        };
        let (main, picked) = match wanted {
            Wanted::All => (reader(&COLUMNS, None)?, None),
            Wanted::Rows(rows) => {
                let without: Vec<&str> = COLUMNS
                    .iter()
                    .copied()
                    .filter(|c| *c != col::LOGITS)
                    .collect();
                let logits = if rows.iter().any(|&w| w) {
                    Some(LogitsOnly {
                        reader: reader(&[col::LOGITS], Some(selection(&rows)))?,
                        batch: None,
                        row: 0,
                    })
                } else {
                    None
                };
                (reader(&without, None)?, Some((rows, logits, 0)))
            }
        };
        let mut cursor = Self {
            slot,
            path,
            reader: main,
            picked,
            batch: None,
            row: 0,
            ahead: None,
        };
        cursor.fill()?;
        Ok(cursor)
    }

    fn read_next(&mut self) -> Result<Option<Columns>> {
        match self.reader.next() {
            Some(Ok(batch)) => {
                let logits = match &mut self.picked {
                    None => None,
                    Some((rows, logits, at)) => {
                        let mut picked = Vec::with_capacity(batch.num_rows());
                        for i in *at..*at + batch.num_rows() {
                            picked.push(match (rows.get(i), logits.as_mut()) {
                                (Some(true), Some(l)) => Some(l.next(&self.path)?),
                                _ => None,
                            });
                        }
                        *at += batch.num_rows();
                        Some(BatchLogits::Picked(picked))
                    }
                };
                Columns::new(&batch, &self.path, logits).map(Some)
            }
            Some(Err(e)) => Err(invalid(&self.path, e)),
            None => Ok(None),
        }
    }

    /// Whether the next batch should be decoded ahead now.
    fn wants_prefetch(&self) -> bool {
        self.ahead.is_none()
            && self
                .batch
                .as_ref()
                .is_some_and(|b| b.image_id.len() - self.row <= PREFETCH_BELOW)
    }

    fn prefetch(&mut self) {
        if self.ahead.is_none() {
            self.ahead = Some(self.read_next());
        }
    }

    /// Makes sure a row is available; `false` at the end.
    fn fill(&mut self) -> Result<bool> {
        loop {
            if let Some(b) = &self.batch
                && self.row < b.image_id.len()
            {
                return Ok(true);
            }
            let next = match self.ahead.take() {
                Some(next) => next?,
                None => self.read_next()?,
            };
            match next {
                Some(columns) => {
                    self.batch = Some(columns);
                    self.row = 0;
                }
                None => {
                    self.batch = None;
                    return Ok(false);
                }
            }
        }
    }

    fn current_id(&self) -> Option<&str> {
        self.batch.as_ref().map(|b| b.image_id.value(self.row))
    }

    /// Takes every row of the current image.
    fn take_image(&mut self, id: &str, out: &mut Vec<Row>) -> Result<()> {
        while self.current_id() == Some(id) {
            if let Some(b) = &self.batch {
                out.push(b.row(self.row, &self.path)?);
            }
            self.row += 1;
            self.fill()?;
        }
        if let Some(next) = self.current_id()
            && next < id
        {
            return Err(Error::Invalid(format!(
                "{}: rows are not sorted by image_id (`{next}` after `{id}`); deltann's \
                 analysis streams parts in image order, as `deltann collect` writes them",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// One image's rows from every part that holds it: (image id, [(slot, rows)]).
pub type ImageRows = (String, Vec<(usize, Vec<Row>)>);

impl Merge {
    /// Decodes ahead, in parallel, the next batch of every cursor about to run out: parts written
    /// alongside each other run out together, so decoding, the merge's serial cost, spreads over
    /// the cores.
    fn prefetch(&mut self) {
        if self.cursors.iter().any(Cursor::wants_prefetch) {
            self.cursors
                .par_iter_mut()
                .filter(|c| c.wants_prefetch())
                .for_each(Cursor::prefetch);
        }
    }
}

/// Merges parts by image. Each part is a *slot* (its index in the list given to [`Merge::open`]).
pub struct Merge {
    cursors: Vec<Cursor>,
    heap: BinaryHeap<Reverse<(String, usize)>>,
}

impl Merge {
    /// Opens every part (one file handle each, held until the merge is dropped).
    ///
    /// # Errors
    /// Fails when a part cannot be opened or lacks a column analysis needs.
    pub fn open(parts: &[PathBuf]) -> Result<Self> {
        let all: Vec<(PathBuf, Wanted)> = parts.iter().map(|p| (p.clone(), Wanted::All)).collect();
        Self::open_wanted(all)
    }

    /// Opens every part, decoding only the logits each one's [`Wanted`] asks for.
    ///
    /// # Errors
    /// Fails when a part cannot be opened or lacks a column analysis needs.
    pub fn open_wanted(parts: Vec<(PathBuf, Wanted)>) -> Result<Self> {
        // Opening decodes each part's first batch (its logits included): in parallel, or a
        // fold's start waits on one core while every part is opened in turn.
        let cursors = parts
            .into_par_iter()
            .enumerate()
            .map(|(slot, (path, wanted))| Cursor::open(slot, path, wanted))
            // Every part is tried; the first failure in slot order is reported (not whichever
            // thread met one first).
            .collect::<Vec<_>>()
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        let heap = cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.current_id().map(|id| Reverse((id.to_string(), i))))
            .collect();
        Ok(Self { cursors, heap })
    }

    /// The next image and every slot's rows for it (slots without the image are absent), in
    /// image-id order.
    ///
    /// # Errors
    /// Fails when a part cannot be decoded or is not sorted by image.
    pub fn next_image(&mut self) -> Result<Option<ImageRows>> {
        self.prefetch();
        let Some(Reverse((id, _))) = self.heap.peek().cloned() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(Reverse((next, idx))) = self.heap.peek() {
            if *next != id {
                break;
            }
            let idx = *idx;
            self.heap.pop();
            let cursor = &mut self.cursors[idx];
            let mut rows = Vec::new();
            cursor.take_image(&id, &mut rows)?;
            if let Some(next) = cursor.current_id() {
                self.heap.push(Reverse((next.to_string(), idx)));
            }
            if !rows.is_empty() {
                out.push((cursor.slot, rows));
            }
        }
        Ok(Some((id, out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_nonpositive_is_within_two_ulp_of_the_exponential() {
        // Every 1/4096 from -90 to 0, and the edges.
        let mut checked = 0;
        for k in 0..=(90 * 4096) {
            let x = -(k as f32) / 4096.0;
            let exact = f64::from(x).exp();
            let got32 = exp_nonpositive(x);
            let got = f64::from(got32);
            if x < -87.336_54 {
                assert_eq!(got, 0.0, "e^{x}");
                continue;
            }
            // The spacing of floats at the result (the next float up minus it).
            let ulp = f64::from(f32::from_bits(got32.to_bits() + 1) - got32);
            assert!(
                (got - exact).abs() <= 2.0 * ulp,
                "e^{x}: {got} against {exact}"
            );
            checked += 1;
        }
        assert!(checked > 350_000);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_matches_the_definition_in_f64() {
        // Lengths around the sixteen lanes.
        for n in [1, 2, 15, 16, 17, 33, 1000] {
            let logits: Vec<f32> = (0..n).map(|i| (i as f32 * 0.73).sin() * 9.0).collect();
            let (p, lse) = softmax(&logits);
            // The differences to the maximum are rounded to f32 as the softmax rounds them:
            // what is checked is the exponential, the sum and the scaling.
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let x: Vec<f64> = logits.iter().map(|&v| f64::from(v - max)).collect();
            let sum: f64 = x.iter().map(|x| x.exp()).sum();
            assert!(
                (lse - (f64::from(max) + sum.ln())).abs() <= 2e-7,
                "lse of {n}"
            );
            for i in 0..n {
                let exact = x[i].exp() / sum;
                assert!(
                    (f64::from(p[i]) - exact).abs() <= 5e-7 * exact,
                    "p[{i}] of {n}"
                );
            }
        }
        let (p, lse) = softmax(&[1.0, f32::NAN, 2.0]);
        assert!(p[1].is_nan() && lse.is_nan());
        assert!(
            p[0].is_nan(),
            "the NaN's exponential enters the sum, as with libm"
        );
    }
}

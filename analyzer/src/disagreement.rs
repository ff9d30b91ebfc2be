//! Cross-environment disagreement, computed in one streaming pass over `outputs`.
//!
//! Every `outputs` part is sorted by image (the collector writes images in dataset order), so a
//! k-way merge over all parts yields, image after image, every cell's rows for that image. For
//! each image the pass compares every requested pair of cells (top-1 flip, top-5 overlaps, rank
//! correlation, logit differences, KL), compares each cell's repetitions with its first one (the
//! run-to-run floor), finds the cells that deviate from the majority (signatures), and keeps the
//! per-cell latencies. Memory holds one image's rows from every cell plus the accumulators, never
//! the table, so a million rows of full logits fit in well under 2 GiB.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::path::PathBuf;

use arrow::array::{
    Array, AsArray, GenericListArray, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{Float32Type, Int32Type};
use deltann_store::schema::col;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::metrics;

/// Persistence of the rank-biased overlap (weights depth d by p^(d-1)).
pub const RBO_P: f64 = 0.9;
/// Flipped image ids kept per pair, for drilling down.
pub const FLIPPED_EXAMPLES: usize = 50;
/// Example images kept per deviation signature.
pub const SIGNATURE_EXAMPLES: usize = 5;

/// What to compare.
#[derive(Clone, Debug)]
pub struct Request {
    /// Number of cells (indices below refer to them).
    pub cells: usize,
    /// Parts to read: (cell index, file).
    pub parts: Vec<(usize, PathBuf)>,
    /// Pairs of cells to compare, (a, b) with a the reference side of the KL divergence.
    pub pairs: Vec<(usize, usize)>,
    /// Groups of cells (families) within which signatures, class flips and near ties are found;
    /// the first cell of each group is its reference.
    pub groups: Vec<Vec<usize>>,
    /// A top-1 margin below this in a group's reference cell is a near tie.
    pub near_tie_margin: f32,
    /// Where to write the per-image detail table (see [`crate::detail`]), if anywhere.
    pub detail: Option<PathBuf>,
}

/// Disagreement between two cells over the images both ran (first repetition of each).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairStats {
    pub a: usize,
    pub b: usize,
    pub images: u64,
    pub flips: u64,
    pub flip_rate: f64,
    /// 95% Wilson interval of the flip rate.
    pub flip_ci: (f64, f64),
    /// Images whose logits are bit-identical (equal hashes).
    pub identical: u64,
    pub jaccard_top5: f64,
    pub rbo_top5: f64,
    /// Mean Kendall tau over the labels both top-5 lists hold (images with at least 2 shared).
    pub kendall_tau: Option<f64>,
    pub max_abs_logit: Option<f64>,
    pub mean_abs_logit: Option<f64>,
    /// Mean KL(a || b) of the softmax distributions, in nats.
    pub kl: Option<f64>,
    pub labelled: u64,
    pub correct_a: u64,
    pub correct_b: u64,
    /// Up to [`FLIPPED_EXAMPLES`] images whose top-1 differs.
    pub flipped: Vec<String>,
    #[serde(skip)]
    acc: PairAcc,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct PairAcc {
    jaccard: f64,
    rbo: f64,
    tau: f64,
    tau_n: u64,
    max_abs: f64,
    sum_mean_abs: f64,
    kl: f64,
    logit_n: u64,
}

/// A cell's run-to-run floor (its repetitions against its first) and its own accuracy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellFloor {
    pub cell: usize,
    pub images: u64,
    /// Later repetitions compared with the first.
    pub compared: u64,
    pub flips: u64,
    pub flip_rate: f64,
    /// Repetitions whose logits are not bit-identical to the first's.
    pub nondeterministic: u64,
    pub max_abs_logit: Option<f64>,
    pub labelled: u64,
    pub correct: u64,
}

/// Images on which the same set of cells deviates from a group's majority top-1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub group: usize,
    /// The deviating cells.
    pub cells: Vec<usize>,
    pub images: u64,
    pub examples: Vec<String>,
}

/// How often images of one class disagree within a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassFlips {
    pub group: usize,
    /// Ground truth where known, else the majority top-1.
    pub class: i32,
    pub images: u64,
    /// Images where not every cell has the same top-1.
    pub flipped: u64,
}

/// An image whose top-1 is nearly tied with its top-2 in a group's reference cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NearTie {
    pub group: usize,
    pub image_id: String,
    pub margin: f32,
    pub top1: i32,
    pub top2: i32,
    /// Whether some cell of the group has another top-1 for it.
    pub flipped: bool,
}

/// An image whose top-1 is not the same in every cell of a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnstableImage {
    pub group: usize,
    pub image_id: String,
    pub label: Option<i32>,
    /// Distinct top-1 classes among the group's cells.
    pub distinct: u32,
    /// Cells holding the most common answer, over cells that ran the image.
    pub majority_share: f64,
    pub majority: i32,
    pub cells: u32,
    /// The cells whose top-1 is not the majority's.
    pub deviating: Vec<usize>,
}

/// Everything the pass finds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    pub images: u64,
    pub pairs: Vec<PairStats>,
    pub floors: Vec<CellFloor>,
    pub signatures: Vec<Signature>,
    pub classes: Vec<ClassFlips>,
    pub near_ties: Vec<NearTie>,
    /// Images with more than one top-1 in a group, least stable first.
    pub unstable: Vec<UnstableImage>,
    /// Per-image latency of every output row, per cell (nanoseconds).
    #[serde(skip)]
    pub latencies: Vec<Vec<i64>>,
}

impl Disagreement {
    /// Each cell's per-row latencies in milliseconds, sorted (what quantiles need).
    pub fn sorted_latencies_ms(&self) -> Vec<Vec<f64>> {
        self.latencies
            .iter()
            .map(|ns| {
                let mut ms: Vec<f64> = ns.iter().map(|&n| n as f64 / 1e6).collect();
                ms.sort_by(f64::total_cmp);
                ms
            })
            .collect()
    }
}

/// One output row, as much of it as analysis uses.
pub(crate) struct Row {
    pub(crate) rep: i32,
    pub(crate) label: Option<i32>,
    pub(crate) top5: Vec<i32>,
    pub(crate) top5_prob: Vec<f32>,
    pub(crate) logits: Option<Vec<f32>>,
    pub(crate) hash: u64,
    pub(crate) latency: i64,
}

/// A cell's first repetition for the current image, with its softmax precomputed.
pub(crate) struct Entry {
    pub(crate) row: Row,
    pub(crate) log_p: Option<Vec<f32>>,
    pub(crate) p: Option<Vec<f32>>,
}

struct Cursor {
    cell: usize,
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    batch: Option<Columns>,
    row: usize,
}

struct Columns {
    image_id: StringArray,
    repetition: Int32Array,
    label: Int32Array,
    top5: GenericListArray<i32>,
    top5_prob: GenericListArray<i32>,
    logits: GenericListArray<i32>,
    hash: UInt64Array,
    latency: Int64Array,
}

impl Columns {
    fn new(batch: &RecordBatch, path: &std::path::Path) -> Result<Self> {
        let missing =
            |c: &str| Error::Invalid(format!("{}: no usable column `{c}`", path.display()));
        let get = |c: &str| batch.column_by_name(c).ok_or_else(|| missing(c));
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
            top5: get(col::TOP5)?
                .as_list_opt::<i32>()
                .ok_or_else(|| missing(col::TOP5))?
                .clone(),
            top5_prob: get(col::TOP5_PROB)?
                .as_list_opt::<i32>()
                .ok_or_else(|| missing(col::TOP5_PROB))?
                .clone(),
            logits: get(col::LOGITS)?
                .as_list_opt::<i32>()
                .ok_or_else(|| missing(col::LOGITS))?
                .clone(),
            hash: get(col::LOGITS_HASH)?
                .as_primitive_opt::<arrow::datatypes::UInt64Type>()
                .ok_or_else(|| missing(col::LOGITS_HASH))?
                .clone(),
            latency: get(col::LATENCY_NS)?
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .ok_or_else(|| missing(col::LATENCY_NS))?
                .clone(),
        })
    }

    fn row(&self, i: usize) -> Row {
        let ints = |l: &GenericListArray<i32>| -> Vec<i32> {
            let v = l.value(i);
            v.as_primitive::<Int32Type>().values().to_vec()
        };
        let floats = |l: &GenericListArray<i32>| -> Vec<f32> {
            let v = l.value(i);
            v.as_primitive::<Float32Type>().values().to_vec()
        };
        Row {
            rep: self.repetition.value(i),
            label: self.label.is_valid(i).then(|| self.label.value(i)),
            top5: ints(&self.top5),
            top5_prob: floats(&self.top5_prob),
            logits: self.logits.is_valid(i).then(|| floats(&self.logits)),
            hash: self.hash.value(i),
            latency: self.latency.value(i),
        }
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

impl Cursor {
    fn open(cell: usize, path: PathBuf) -> Result<Self> {
        let file = File::open(&path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let indices = COLUMNS
            .iter()
            .map(|c| builder.schema().index_of(c))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(64)
            .build()
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let mut cursor = Self {
            cell,
            path,
            reader,
            batch: None,
            row: 0,
        };
        cursor.fill()?;
        Ok(cursor)
    }

    /// Makes sure a row is available; `false` at the end.
    fn fill(&mut self) -> Result<bool> {
        loop {
            if let Some(b) = &self.batch
                && self.row < b.image_id.len()
            {
                return Ok(true);
            }
            match self.reader.next() {
                Some(Ok(batch)) => {
                    self.batch = Some(Columns::new(&batch, &self.path)?);
                    self.row = 0;
                }
                Some(Err(e)) => {
                    return Err(Error::Invalid(format!("{}: {e}", self.path.display())));
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
                out.push(b.row(self.row));
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

/// Runs the pass.
///
/// # Errors
/// Fails when a part cannot be read or is not sorted by image.
pub fn compute(request: &Request) -> Result<Disagreement> {
    let mut cursors = Vec::with_capacity(request.parts.len());
    for (cell, path) in &request.parts {
        cursors.push(Cursor::open(*cell, path.clone())?);
    }
    let mut heap: BinaryHeap<Reverse<(String, usize)>> = cursors
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.current_id().map(|id| Reverse((id.to_string(), i))))
        .collect();

    let mut pairs: Vec<PairStats> = request
        .pairs
        .iter()
        .map(|&(a, b)| PairStats {
            a,
            b,
            ..Default::default()
        })
        .collect();
    let mut floors: Vec<CellFloor> = (0..request.cells)
        .map(|cell| CellFloor {
            cell,
            ..Default::default()
        })
        .collect();
    let mut latencies: Vec<Vec<i64>> = vec![Vec::new(); request.cells];
    let mut signatures: HashMap<(usize, Vec<usize>), (u64, Vec<String>)> = HashMap::new();
    let mut classes: HashMap<(usize, i32), (u64, u64)> = HashMap::new();
    let mut near_ties: Vec<NearTie> = Vec::new();
    let mut unstable: Vec<UnstableImage> = Vec::new();
    let mut detail = match &request.detail {
        Some(path) => Some(crate::detail::DetailWriter::create(path)?),
        None => None,
    };
    let mut images = 0u64;

    let mut entries: Vec<Option<Entry>> = (0..request.cells).map(|_| None).collect();
    let mut touched: Vec<usize> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    while let Some(Reverse((id, _))) = heap.peek().cloned() {
        // Gather every part's rows for this image.
        for cell in touched.drain(..) {
            entries[cell] = None;
        }
        while let Some(Reverse((next, idx))) = heap.peek().cloned() {
            if next != id {
                break;
            }
            heap.pop();
            let cursor = &mut cursors[idx];
            rows.clear();
            cursor.take_image(&id, &mut rows)?;
            let cell = cursor.cell;
            if let Some(next) = cursor.current_id() {
                heap.push(Reverse((next.to_string(), idx)));
            }
            absorb_rows(
                cell,
                &mut rows,
                &mut entries,
                &mut touched,
                &mut floors,
                &mut latencies,
            );
        }
        images += 1;

        // Pairs, in parallel: each pair's accumulator is its own.
        let entries_ref = &entries;
        pairs.par_iter_mut().for_each(|pair| {
            if let (Some(a), Some(b)) = (&entries_ref[pair.a], &entries_ref[pair.b]) {
                compare(pair, a, b, &id);
            }
        });

        // Signatures, class flips and near ties, per group.
        for (g, cells) in request.groups.iter().enumerate() {
            let present: Vec<(usize, &Entry)> = cells
                .iter()
                .filter_map(|&c| entries[c].as_ref().map(|e| (c, e)))
                .collect();
            if present.is_empty() {
                continue;
            }
            let reference = cells.first().and_then(|&c| entries[c].as_ref());
            let majority = majority_top1(&present, reference);
            let deviating: Vec<usize> = present
                .iter()
                .filter(|(_, e)| e.row.top5.first() != Some(&majority))
                .map(|(c, _)| *c)
                .collect();
            let truth = present.iter().find_map(|(_, e)| e.row.label);
            let label = truth.unwrap_or(majority);
            if !deviating.is_empty() {
                let mut tops: Vec<i32> = present
                    .iter()
                    .filter_map(|(_, e)| e.row.top5.first().copied())
                    .collect();
                tops.sort_unstable();
                tops.dedup();
                unstable.push(UnstableImage {
                    group: g,
                    image_id: id.clone(),
                    label: truth,
                    distinct: u32::try_from(tops.len()).unwrap_or(u32::MAX),
                    majority_share: (present.len() - deviating.len()) as f64 / present.len() as f64,
                    majority,
                    cells: u32::try_from(present.len()).unwrap_or(u32::MAX),
                    deviating: deviating.clone(),
                });
            }
            if let Some(writer) = detail.as_mut() {
                writer.push(&id, truth, &present, reference)?;
            }
            let class = classes.entry((g, label)).or_default();
            class.0 += 1;
            if !deviating.is_empty() {
                class.1 += 1;
                let sig = signatures.entry((g, deviating)).or_default();
                sig.0 += 1;
                if sig.1.len() < SIGNATURE_EXAMPLES {
                    sig.1.push(id.clone());
                }
            }
            if let Some(reference) = cells.first().and_then(|&c| entries[c].as_ref())
                && let (Some(p1), Some(p2)) = (
                    reference.row.top5_prob.first(),
                    reference.row.top5_prob.get(1),
                )
                && p1 - p2 < request.near_tie_margin
            {
                let flipped = present
                    .iter()
                    .any(|(_, e)| e.row.top5.first() != reference.row.top5.first());
                near_ties.push(NearTie {
                    group: g,
                    image_id: id.clone(),
                    margin: p1 - p2,
                    top1: reference.row.top5.first().copied().unwrap_or(-1),
                    top2: reference.row.top5.get(1).copied().unwrap_or(-1),
                    flipped,
                });
            }
        }
    }

    if let Some(writer) = detail {
        writer.finish()?;
    }
    for pair in &mut pairs {
        finish_pair(pair);
    }
    unstable.sort_by(|a, b| {
        b.distinct
            .cmp(&a.distinct)
            .then(a.majority_share.total_cmp(&b.majority_share))
            .then(a.group.cmp(&b.group))
            .then(a.image_id.cmp(&b.image_id))
    });
    for f in &mut floors {
        f.flip_rate = if f.compared > 0 {
            f.flips as f64 / f.compared as f64
        } else {
            0.0
        };
    }
    let mut signatures: Vec<Signature> = signatures
        .into_iter()
        .map(|((group, cells), (images, examples))| Signature {
            group,
            cells,
            images,
            examples,
        })
        .collect();
    signatures.sort_by(|a, b| {
        b.images
            .cmp(&a.images)
            .then(a.group.cmp(&b.group))
            .then(a.cells.cmp(&b.cells))
    });
    let mut classes: Vec<ClassFlips> = classes
        .into_iter()
        .map(|((group, class), (images, flipped))| ClassFlips {
            group,
            class,
            images,
            flipped,
        })
        .collect();
    classes.sort_by(|a, b| {
        b.flipped
            .cmp(&a.flipped)
            .then(a.group.cmp(&b.group))
            .then(a.class.cmp(&b.class))
    });
    near_ties.sort_by(|a, b| {
        a.margin
            .total_cmp(&b.margin)
            .then(a.image_id.cmp(&b.image_id))
    });
    Ok(Disagreement {
        images,
        pairs,
        floors,
        signatures,
        classes,
        near_ties,
        unstable,
        latencies,
    })
}

/// Records a cell's rows for the current image: latencies, the floor, and its first repetition.
fn absorb_rows(
    cell: usize,
    rows: &mut Vec<Row>,
    entries: &mut [Option<Entry>],
    touched: &mut Vec<usize>,
    floors: &mut [CellFloor],
    latencies: &mut [Vec<i64>],
) {
    if rows.is_empty() {
        return;
    }
    rows.sort_by_key(|r| r.rep);
    let floor = &mut floors[cell];
    floor.images += 1;
    for r in rows.iter() {
        latencies[cell].push(r.latency);
    }
    let first = rows.remove(0);
    for r in rows.iter() {
        floor.compared += 1;
        floor.flips += u64::from(r.top5.first() != first.top5.first());
        floor.nondeterministic += u64::from(r.hash != first.hash);
        if let (Some(a), Some(b)) = (&first.logits, &r.logits)
            && let Some((max, _)) = metrics::abs_diff(a, b)
        {
            floor.max_abs_logit = Some(floor.max_abs_logit.map_or(max, |m: f64| m.max(max)));
        }
    }
    if let Some(label) = first.label {
        floor.labelled += 1;
        floor.correct += u64::from(first.top5.first() == Some(&label));
    }
    let (log_p, p) = match &first.logits {
        Some(l) => {
            let (lp, p) = softmax_pair(l);
            (Some(lp), Some(p))
        }
        None => (None, None),
    };
    entries[cell] = Some(Entry {
        row: first,
        log_p,
        p,
    });
    touched.push(cell);
}

/// Log-probabilities and probabilities of a logit row with one exponential per class.
fn softmax_pair(logits: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f64 = p.iter().map(|&e| f64::from(e)).sum();
    let log_sum = sum.ln() as f32;
    let inv = (1.0 / sum) as f32;
    for e in &mut p {
        *e *= inv;
    }
    let lp = logits.iter().map(|&v| v - max - log_sum).collect();
    (lp, p)
}

/// max |a - b|, sum |a - b| and sum p (lp_a - lp_b), in eight independent lanes so the compiler
/// can vectorise (a single running sum would serialise on float addition).
pub(crate) fn fused(
    la: &[f32],
    lb: &[f32],
    pa: &[f32],
    lpa: &[f32],
    lpb: &[f32],
) -> (f32, f32, f32) {
    const L: usize = 8;
    let (mut max, mut sum, mut kl) = ([0.0f32; L], [0.0f32; L], [0.0f32; L]);
    let n = la.len() / L * L;
    for i in (0..n).step_by(L) {
        for j in 0..L {
            let d = (la[i + j] - lb[i + j]).abs();
            max[j] = max[j].max(d);
            sum[j] += d;
            kl[j] += pa[i + j] * (lpa[i + j] - lpb[i + j]);
        }
    }
    let (mut m, mut s, mut k) = (
        max.iter().copied().fold(0.0, f32::max),
        sum.iter().sum::<f32>(),
        kl.iter().sum::<f32>(),
    );
    for i in n..la.len() {
        let d = (la[i] - lb[i]).abs();
        m = m.max(d);
        s += d;
        k += pa[i] * (lpa[i] - lpb[i]);
    }
    (m, s, k)
}

fn compare(pair: &mut PairStats, a: &Entry, b: &Entry, id: &str) {
    pair.images += 1;
    let (ta, tb) = (&a.row.top5, &b.row.top5);
    if ta.first() != tb.first() {
        pair.flips += 1;
        if pair.flipped.len() < FLIPPED_EXAMPLES {
            pair.flipped.push(id.to_string());
        }
    }
    pair.identical += u64::from(a.row.hash == b.row.hash);
    pair.acc.jaccard += metrics::jaccard(ta, tb);
    pair.acc.rbo += metrics::rbo(ta, tb, RBO_P);
    if let Some(t) = metrics::kendall_tau(ta, tb) {
        pair.acc.tau += t;
        pair.acc.tau_n += 1;
    }
    if let Some(label) = a.row.label {
        pair.labelled += 1;
        pair.correct_a += u64::from(ta.first() == Some(&label));
        pair.correct_b += u64::from(tb.first() == Some(&label));
    }
    if let (Some(la), Some(lb), Some(lpa), Some(lpb), Some(pa)) =
        (&a.row.logits, &b.row.logits, &a.log_p, &b.log_p, &a.p)
        && la.len() == lb.len()
        && la.len() == pa.len()
    {
        let (max, sum, kl) = fused(la, lb, pa, lpa, lpb);
        pair.acc.max_abs = pair.acc.max_abs.max(f64::from(max));
        pair.acc.sum_mean_abs += f64::from(sum) / la.len() as f64;
        pair.acc.kl += f64::from(kl.max(0.0));
        pair.acc.logit_n += 1;
    }
}

fn finish_pair(pair: &mut PairStats) {
    let n = pair.images.max(1) as f64;
    pair.flip_rate = pair.flips as f64 / n;
    pair.flip_ci = metrics::wilson(pair.flips, pair.images);
    pair.jaccard_top5 = pair.acc.jaccard / n;
    pair.rbo_top5 = pair.acc.rbo / n;
    pair.kendall_tau = (pair.acc.tau_n > 0).then(|| pair.acc.tau / pair.acc.tau_n as f64);
    if pair.acc.logit_n > 0 {
        let m = pair.acc.logit_n as f64;
        pair.max_abs_logit = Some(pair.acc.max_abs);
        pair.mean_abs_logit = Some(pair.acc.sum_mean_abs / m);
        pair.kl = Some(pair.acc.kl / m);
    }
}

/// The most common top-1 among the cells; ties go to the reference cell's answer, then to the
/// smallest class index.
fn majority_top1(present: &[(usize, &Entry)], reference: Option<&Entry>) -> i32 {
    let preferred = reference.and_then(|r| r.row.top5.first().copied());
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for (_, e) in present {
        let t = e.row.top5.first().copied().unwrap_or(-1);
        match counts.iter_mut().find(|(c, _)| *c == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((t, 1)),
        }
    }
    counts
        .into_iter()
        .max_by(|(ca, na), (cb, nb)| {
            na.cmp(nb)
                .then((Some(*ca) == preferred).cmp(&(Some(*cb) == preferred)))
                .then(cb.cmp(ca))
        })
        .map_or(-1, |(c, _)| c)
}

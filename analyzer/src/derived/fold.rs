//! Folding `outputs` parts into the derived tables.
//!
//! A fold merges the parts being folded in ("new") with the already folded parts of the same
//! families whose image ranges overlap them ("old"), image by image (see [`crate::merge`]). For
//! each image it writes a `cell_images` row for every new (cell, image), and a `comparisons` row
//! for every pair of cells of one family where at least one side is new: a pair is compared
//! exactly once, when the second of its two outputs arrives, whatever the order and grouping of
//! the commits. Pair and cell accumulators (sums, counts, maxima) advance with the rows, so a
//! report reads them instead of the tables.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::buffer::ScalarBuffer;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::tables::{CellImage, CellImagesBuilder, Comparison, ComparisonsBuilder};
use crate::error::Result;
use crate::merge::{self, Entry, Merge, RepFloor, Row, Softmax, Wanted};
use crate::metrics;

/// Persistence of the rank-biased overlap (weights depth d by p^(d-1)).
pub const RBO_P: f64 = 0.9;
/// Flipped image ids kept per pair (the smallest ids, so the set does not depend on the order
/// in which parts were folded in).
pub const FLIPPED_EXAMPLES: usize = 50;

/// A cell as the fold knows it: from the manifest and the `models` table, so cells still
/// running (without their `cells` row) are folded in like finished ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CellName {
    pub(crate) id: String,
    pub(crate) family: String,
    pub(crate) model: String,
}

/// One part given to a fold.
#[derive(Clone, Debug)]
pub(crate) struct Input {
    pub(crate) path: PathBuf,
    /// Index into the fold's cells.
    pub(crate) cell: usize,
    /// Being folded in now (else already folded, read only as the other side of comparisons).
    pub(crate) new: bool,
    /// Commit position: of two parts holding the same (cell, image), the earlier wins.
    pub(crate) order: usize,
}

/// Running sums over a pair's comparisons (cell ids ordered: `cell_a < cell_b`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairAcc {
    pub family: String,
    pub cell_a: String,
    pub cell_b: String,
    pub images: u64,
    pub flips: u64,
    pub identical: u64,
    pub jaccard: f64,
    pub rbo: f64,
    pub tau: f64,
    pub tau_n: u64,
    pub max_abs: f64,
    pub sum_mean_abs: f64,
    pub kl_ab: f64,
    pub kl_ba: f64,
    pub logit_n: u64,
    pub labelled: u64,
    pub correct_a: u64,
    pub correct_b: u64,
    /// The smallest [`FLIPPED_EXAMPLES`] image ids whose top-1 differs.
    pub flipped: Vec<String>,
}

impl PairAcc {
    /// Adds one image's comparison.
    pub fn add_comparison(&mut self, image: &str, label: Option<i32>, c: &Comparison) {
        if c.flip() {
            self.offer_flipped(image);
        }
        self.add_sums(label, c);
    }

    /// Keeps `image` among the flipped examples if it is one of the smallest ids.
    fn offer_flipped(&mut self, image: &str) {
        let full = self.flipped.len() >= FLIPPED_EXAMPLES;
        if !full || self.flipped.last().is_some_and(|l| image < l.as_str()) {
            let at = self.flipped.partition_point(|f| f.as_str() < image);
            self.flipped.insert(at, image.to_string());
            self.flipped.truncate(FLIPPED_EXAMPLES);
        }
    }

    /// Whether no image from `image` on can enter the flipped examples.
    fn flipped_closed_from(&self, image: &str) -> bool {
        self.flipped.len() >= FLIPPED_EXAMPLES
            && self.flipped.last().is_some_and(|l| l.as_str() <= image)
    }

    /// Adds one image's comparison to every count and sum (the flipped examples aside).
    fn add_sums(&mut self, label: Option<i32>, c: &Comparison) {
        self.images += 1;
        self.flips += u64::from(c.flip());
        self.identical += u64::from(c.identical);
        self.jaccard += c.jaccard;
        self.rbo += c.rbo;
        if let Some(t) = c.kendall_tau {
            self.tau += t;
            self.tau_n += 1;
        }
        if let Some(label) = label {
            self.labelled += 1;
            self.correct_a += u64::from(c.top1_a == label);
            self.correct_b += u64::from(c.top1_b == label);
        }
        if let Some((max, mean, kl_ab, kl_ba)) = c.logits {
            self.max_abs = self.max_abs.max(max);
            self.sum_mean_abs += mean;
            self.kl_ab += kl_ab;
            self.kl_ba += kl_ba;
            self.logit_n += 1;
        }
    }
}

/// Running sums over a cell's images: its accuracy and run-to-run floor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellAcc {
    pub cell_id: String,
    pub family: String,
    pub model: String,
    pub images: u64,
    /// Output rows (every repetition).
    pub rows: u64,
    pub compared: u64,
    pub flips: u64,
    pub nondeterministic: u64,
    pub max_abs_logit: Option<f64>,
    pub labelled: u64,
    pub correct: u64,
}

impl CellAcc {
    pub(crate) fn add(&mut self, label: Option<i32>, top1: i32, floor: &RepFloor, rows: usize) {
        self.images += 1;
        self.rows += rows as u64;
        self.compared += u64::from(floor.compared);
        self.flips += u64::from(floor.flips);
        self.nondeterministic += u64::from(floor.nondeterministic);
        if let Some(m) = floor.max_abs_logit {
            self.max_abs_logit = Some(self.max_abs_logit.map_or(m, |x| x.max(m)));
        }
        if let Some(label) = label {
            self.labelled += 1;
            self.correct += u64::from(top1 == label);
        }
    }
}

/// Where a fold's rows go: builders the caller drains into part files.
#[derive(Default)]
pub(crate) struct Rows {
    pub(crate) comparisons: ComparisonsBuilder,
    pub(crate) cell_images: CellImagesBuilder,
}

/// What a fold did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FoldStats {
    pub(crate) images: u64,
    pub(crate) comparisons: u64,
    /// New rows for a (cell, image) that another part already holds: ignored.
    pub(crate) duplicates: u64,
}

/// The accumulators a fold advances, indexed by the fold's cells.
pub(crate) struct Accumulators<'a> {
    pub(crate) pairs: &'a mut Vec<PairAcc>,
    pub(crate) cells: &'a mut Vec<CellAcc>,
    /// Looked up once per comparison (24M times in the 1M-row rebuild): a dense table over the
    /// fold's cells, `a * cells + b`, [`NO_PAIR`] where the pair has no number yet.
    pair_index: Vec<u32>,
    /// Per pair number: its flipped examples can take no image of this fold from the current
    /// one on (images come in increasing order), so its flips skip the comparison of ids.
    flipped_closed: Vec<bool>,
    cell_index: Vec<Option<usize>>,
    cell_count: usize,
    /// The image recorded last.
    last_image: Option<String>,
}

/// An empty slot of [`Accumulators::pair_index`].
const NO_PAIR: u32 = u32::MAX;

impl<'a> Accumulators<'a> {
    pub(crate) fn new(
        pairs: &'a mut Vec<PairAcc>,
        cells_acc: &'a mut Vec<CellAcc>,
        cells: &[CellName],
    ) -> Self {
        let by_id: HashMap<&str, usize> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str(), i))
            .collect();
        let n = cells.len();
        let mut pair_index = vec![NO_PAIR; n * n];
        for (k, p) in pairs.iter().enumerate() {
            if let (Some(&a), Some(&b), Ok(k)) = (
                by_id.get(p.cell_a.as_str()),
                by_id.get(p.cell_b.as_str()),
                u32::try_from(k),
            ) {
                pair_index[a * n + b] = k;
            }
        }
        let flipped_closed = vec![false; pairs.len()];
        let mut cell_index = vec![None; cells.len()];
        for (k, c) in cells_acc.iter().enumerate() {
            if let Some(&i) = by_id.get(c.cell_id.as_str()) {
                cell_index[i] = Some(k);
            }
        }
        Self {
            pairs,
            cells: cells_acc,
            pair_index,
            flipped_closed,
            cell_index,
            cell_count: n,
            last_image: None,
        }
    }

    /// The pair's position in the state's pairs (its number in `comparisons` and `pairs`).
    fn pair(&mut self, a: usize, b: usize, cells: &[CellName]) -> Result<usize> {
        debug_assert!(a < self.cell_count && b < self.cell_count && cells.len() == self.cell_count);
        let slot = &mut self.pair_index[a * self.cell_count + b];
        if *slot != NO_PAIR {
            return Ok(*slot as usize);
        }
        let k = self.pairs.len();
        *slot = u32::try_from(k)
            .ok()
            .filter(|&k| k != NO_PAIR && i32::try_from(k).is_ok())
            .ok_or_else(|| {
                crate::error::Error::Invalid(format!("more than {} pairs of cells", i32::MAX))
            })?;
        self.pairs.push(PairAcc {
            family: cells[a].family.clone(),
            cell_a: cells[a].id.clone(),
            cell_b: cells[b].id.clone(),
            ..Default::default()
        });
        self.flipped_closed.push(false);
        Ok(k)
    }

    /// Adds an image's comparison to pair `k`, after [`Accumulators::begin_image`].
    fn add_comparison(&mut self, k: usize, image: &str, label: Option<i32>, c: &Comparison) {
        let pair = &mut self.pairs[k];
        if c.flip() && !self.flipped_closed[k] {
            pair.offer_flipped(image);
            self.flipped_closed[k] = pair.flipped_closed_from(image);
        }
        pair.add_sums(label, c);
    }

    /// Starts recording an image's comparisons. A fold's images come in increasing order; if
    /// one does not, which pairs' examples are closed is forgotten.
    fn begin_image(&mut self, id: &str) {
        if self.last_image.as_deref().is_some_and(|last| id <= last) {
            self.flipped_closed.fill(false);
        }
        id.clone_into(self.last_image.get_or_insert_with(String::new));
    }

    fn cell(&mut self, c: usize, cells: &[CellName]) -> &mut CellAcc {
        let k = match self.cell_index[c] {
            Some(k) => k,
            None => {
                self.cells.push(CellAcc {
                    cell_id: cells[c].id.clone(),
                    family: cells[c].family.clone(),
                    model: cells[c].model.clone(),
                    ..Default::default()
                });
                self.cell_index[c] = Some(self.cells.len() - 1);
                self.cells.len() - 1
            }
        };
        &mut self.cells[k]
    }
}

struct Present {
    cell: usize,
    new: bool,
    entry: Entry,
    floor: RepFloor,
    latencies: Vec<i64>,
}

/// Folds `inputs` (new and old parts) image by image; `flush` is called after each image that
/// had new rows, with the rows so far (to move full row groups to files) and the image id.
pub(crate) fn fold(
    inputs: &[Input],
    cells: &[CellName],
    acc: &mut Accumulators<'_>,
    rows: &mut Rows,
    mut flush: impl FnMut(&mut Rows, &str) -> Result<()>,
) -> Result<FoldStats> {
    let wanted = plan(inputs, cells)?;
    let paths: Vec<(PathBuf, Wanted)> = inputs.iter().map(|i| i.path.clone()).zip(wanted).collect();
    let mut merge = Merge::open_wanted(paths)?;
    let mut stats = FoldStats::default();
    std::thread::scope(|scope| -> Result<()> {
        // Decoding (the merge, sequential) runs on its own thread, one window of images ahead
        // of the comparisons (parallel, one image per task), which run one window ahead of
        // recording their results in image order, so the three overlap instead of taking turns.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Window>>>(1);
        let reader = scope.spawn(move || {
            let mut read = FoldStats::default();
            loop {
                let window = next_window(&mut merge, inputs, cells, &mut read);
                let last = !matches!(&window, Ok(w) if !w.is_empty());
                if tx.send(window).is_err() || last {
                    break;
                }
            }
            read.duplicates
        });
        // A window is compared while the one before it is recorded (recording is sequential:
        // it advances the accumulators and the rows in image order).
        let mut compared: Option<Vec<Image>> = None;
        for window in rx {
            let window = window?;
            if window.is_empty() {
                break;
            }
            let comparing = scope.spawn(move || compare_window(window, cells));
            let recorded = compared.take().map_or(Ok(()), |done| {
                record(done, cells, acc, rows, &mut stats, &mut flush)
            });
            // Joined before a recording error returns, so the error is the one reported.
            let joined = comparing.join().map_err(|_| {
                crate::error::Error::Invalid("the fold's comparisons panicked".into())
            });
            recorded?;
            compared = Some(joined?);
        }
        if let Some(done) = compared {
            record(done, cells, acc, rows, &mut stats, &mut flush)?;
        }
        stats.duplicates = reader
            .join()
            .map_err(|_| crate::error::Error::Invalid("the fold's reader panicked".into()))?;
        Ok(())
    })?;
    Ok(stats)
}

/// One image with rows to fold: its id and every cell's entry.
type Window = (String, Vec<Present>);

/// The next images with new rows, at most [`WINDOW`] (none at the end).
fn next_window(
    merge: &mut Merge,
    inputs: &[Input],
    cells: &[CellName],
    stats: &mut FoldStats,
) -> Result<Vec<Window>> {
    let mut window = Vec::with_capacity(WINDOW);
    while window.len() < WINDOW {
        let Some((id, slots)) = merge.next_image()? else {
            break;
        };
        if let Some(present) = gather(inputs, cells, slots, stats)? {
            window.push((id, present));
        }
    }
    Ok(window)
}

/// Compares a window's images in parallel, one image per task.
fn compare_window(window: Vec<Window>, cells: &[CellName]) -> Vec<Image> {
    window
        .into_par_iter()
        .map(|(id, present)| compare_image(id, present, cells))
        .collect()
}

/// Records compared images' results in image order.
fn record(
    done: Vec<Image>,
    cells: &[CellName],
    acc: &mut Accumulators<'_>,
    rows: &mut Rows,
    stats: &mut FoldStats,
    flush: &mut impl FnMut(&mut Rows, &str) -> Result<()>,
) -> Result<()> {
    for image in done {
        stats.images += 1;
        let id = &image.id;
        acc.begin_image(id);
        for p in image.present.iter().filter(|p| p.new) {
            let name = &cells[p.cell];
            let row = &p.entry.row;
            rows.cell_images.push(&CellImage {
                cell_id: &name.id,
                image_id: id,
                family: &name.family,
                model: &name.model,
                label: row.label,
                top5: &row.top5,
                top5_prob: &row.top5_prob,
                hash: row.hash,
                floor: p.floor,
                latencies: &p.latencies,
            });
            acc.cell(p.cell, cells)
                .add(row.label, p.entry.top1(), &p.floor, p.latencies.len());
        }
        for (&(i, j), c) in image.pairs.iter().zip(&image.comparisons) {
            let (a, b) = (&image.present[i], &image.present[j]);
            let label = a.entry.row.label.or(b.entry.row.label);
            let k = acc.pair(a.cell, b.cell, cells)?;
            // `pair` keeps numbers within i32.
            rows.comparisons.push(k as i32, id, label, c);
            acc.add_comparison(k, id, label, c);
        }
        stats.comparisons += image.comparisons.len() as u64;
        flush(rows, id)?;
    }
    Ok(())
}

/// Images gathered before they are compared in parallel: bounds memory to this many images'
/// rows from every cell.
const WINDOW: usize = 32;

/// One image's entries, in cell-id order, with the pairs to compare and their comparisons.
struct Image {
    id: String,
    present: Vec<Present>,
    pairs: Vec<(usize, usize)>,
    comparisons: Vec<Comparison>,
}

/// Which logits each input's rows need decoded: most of a fold's time is decoding logits, and
/// bit-identical logits are common (threads, batch sizes and repetitions often give them). Of a
/// new part, a row's logits are decoded only when no earlier row of that image and family has
/// its logits hash; the others take the logits of the row they match (see [`fill_unread`]). An
/// already folded ("old") part is read only as the other side of comparisons: only the first
/// repetition of images that have new rows of its family, and of those only the rows whose hash
/// no new row and no earlier old row of that image and family has.
fn plan(inputs: &[Input], cells: &[CellName]) -> Result<Vec<Wanted>> {
    let keys: Vec<Vec<(String, i32, u64)>> = inputs
        .par_iter()
        .map(|i| merge::keys(&i.path))
        .collect::<Result<_>>()?;
    // Per family and image: the logits hashes whose logits the merge will hold.
    let mut covered: HashMap<&str, HashMap<&str, Vec<u64>>> = HashMap::new();
    let mut wanted: Vec<Option<Wanted>> = vec![None; inputs.len()];
    for (k, (input, keys)) in inputs.iter().zip(&keys).enumerate() {
        if !input.new {
            continue;
        }
        let images = covered
            .entry(cells[input.cell].family.as_str())
            .or_default();
        let rows: Vec<bool> = keys
            .iter()
            .map(|(image, _, hash)| {
                let hashes = images.entry(image.as_str()).or_default();
                let first = !hashes.contains(hash);
                if first {
                    hashes.push(*hash);
                }
                first
            })
            .collect();
        wanted[k] = Some(if rows.iter().all(|&r| r) {
            Wanted::All
        } else {
            Wanted::Rows(rows)
        });
    }
    for (k, (input, keys)) in inputs.iter().zip(&keys).enumerate() {
        if input.new {
            continue;
        }
        let mut rows = vec![false; keys.len()];
        let images = covered.get_mut(cells[input.cell].family.as_str());
        if let Some(images) = images {
            // A cell's rows of one image are consecutive; its first repetition is compared.
            let mut start = 0;
            while start < keys.len() {
                let image = keys[start].0.as_str();
                let end = start + keys[start..].iter().take_while(|k| k.0 == image).count();
                let first = (start..end).min_by_key(|&i| keys[i].1).unwrap_or(start);
                if let Some(hashes) = images.get_mut(image)
                    && !hashes.contains(&keys[first].2)
                {
                    hashes.push(keys[first].2);
                    rows[first] = true;
                }
                start = end;
            }
        }
        wanted[k] = Some(Wanted::Rows(rows));
    }
    Ok(wanted
        .into_iter()
        .map(|w| w.unwrap_or(Wanted::All))
        .collect())
}

/// Gives rows whose logits were not decoded (see [`plan`]) those of a row of the same image
/// with the same logits hash.
fn fill_unread(slots: &mut [(usize, Vec<Row>)]) {
    if !slots.iter().any(|(_, r)| r.iter().any(|r| r.logits_unread)) {
        return;
    }
    let known: HashMap<u64, Option<ScalarBuffer<f32>>> = slots
        .iter()
        .flat_map(|(_, rows)| rows)
        .filter(|r| !r.logits_unread)
        .map(|r| (r.hash, r.logits.clone()))
        .collect();
    for row in slots.iter_mut().flat_map(|(_, rows)| rows.iter_mut()) {
        if row.logits_unread
            && let Some(logits) = known.get(&row.hash)
        {
            row.logits.clone_from(logits);
            row.logits_unread = false;
        }
    }
}

/// One set of rows per cell for an image (old before new, then the earlier commit); `None` when
/// no row is new (nothing to fold).
fn gather(
    inputs: &[Input],
    cells: &[CellName],
    mut slots: Vec<(usize, Vec<Row>)>,
    stats: &mut FoldStats,
) -> Result<Option<Vec<Present>>> {
    if !slots.iter().any(|(slot, _)| inputs[*slot].new) {
        return Ok(None);
    }
    fill_unread(&mut slots);
    let mut chosen: Vec<(usize, Vec<Row>)> = Vec::new();
    for (slot, rows_of) in slots {
        let input = &inputs[slot];
        match chosen.iter_mut().find(|c| inputs[c.0].cell == input.cell) {
            None => chosen.push((slot, rows_of)),
            Some(c) => {
                let current = &inputs[c.0];
                let better = (current.new && !input.new)
                    || (current.new == input.new && input.order < current.order);
                let dropped_new = if better { current.new } else { input.new };
                stats.duplicates += u64::from(dropped_new);
                if better {
                    *c = (slot, rows_of);
                }
            }
        }
    }
    let new_families: Vec<&str> = chosen
        .iter()
        .filter(|c| inputs[c.0].new)
        .map(|c| cells[inputs[c.0].cell].family.as_str())
        .collect();
    if new_families.is_empty() {
        return Ok(None);
    }
    let mut present: Vec<Present> = chosen
        .into_iter()
        .filter(|c| {
            inputs[c.0].new || new_families.contains(&cells[inputs[c.0].cell].family.as_str())
        })
        .filter_map(|(slot, r)| {
            let (first, floor, latencies) = merge::first_and_floor(r)?;
            Some(Present {
                cell: inputs[slot].cell,
                new: inputs[slot].new,
                entry: Entry::bare(first),
                floor,
                latencies,
            })
        })
        .collect();
    if let Some(p) = present.iter().find(|p| p.entry.row.logits_unread) {
        return Err(crate::error::Error::Invalid(format!(
            "cell {}: logits left unread by the fold's plan (a bug in deltann's analyzer; \
             `deltann analyze --rebuild` recomputes without it)",
            cells[p.cell].id
        )));
    }
    present.sort_by(|a, b| cells[a.cell].id.cmp(&cells[b.cell].id));
    Ok(Some(present))
}

/// Compares every pair of one family on one image where at least one side is new.
fn compare_image(id: String, mut present: Vec<Present>, cells: &[CellName]) -> Image {
    let n = present.len();
    // Families as small integers: comparing two strings for each of the ~18,000 pairs of 192
    // cells per image showed in a profile.
    let mut families: Vec<&str> = Vec::new();
    let family: Vec<usize> = present
        .iter()
        .map(|p| {
            let name = cells[p.cell].family.as_str();
            families.iter().position(|f| *f == name).unwrap_or_else(|| {
                families.push(name);
                families.len() - 1
            })
        })
        .collect();
    // Cells of one family with bit-identical logits (threads, batch sizes, repetitions often
    // are) share one softmax and one distance computation: the expensive part of a comparison.
    // A representative is of its cells' family: the tables below are per family.
    let mut rep: Vec<usize> = Vec::with_capacity(n);
    for i in 0..n {
        let same = (0..i).find(|&j| {
            rep[j] == j && family[j] == family[i] && present[j].entry.same_logits(&present[i].entry)
        });
        rep.push(same.unwrap_or(i));
    }
    for i in 0..n {
        if rep[i] == i {
            present[i].entry.soft = present[i]
                .entry
                .row
                .logits
                .as_deref()
                .map(|l| Arc::new(Softmax::of(l)));
        } else {
            present[i].entry.soft = present[rep[i]].entry.soft.clone();
        }
    }
    let most = n * n.saturating_sub(1) / 2;
    let mut pairs: Vec<(usize, usize)> = Vec::with_capacity(most);
    // Distances and top-5 measures between representatives, computed once per pair of them:
    // tables per family over its representatives alone (one n x n table over all cells, zeroed
    // per image, spent more in page faults and clearing than it saved). Distances are kept for
    // the pair in rep order and turned around; measures for each orientation, and used only for
    // cells ranking exactly as their representatives do.
    let mut ordinal = vec![0; n];
    let mut reps = vec![0; families.len()];
    for i in 0..n {
        if rep[i] == i {
            ordinal[i] = reps[family[i]];
            reps[family[i]] += 1;
        }
    }
    let mut offset = Vec::with_capacity(families.len());
    let mut cells_in_tables = 0;
    for m in &reps {
        offset.push(cells_in_tables);
        cells_in_tables += m * m;
    }
    // The place of the pair of representatives (x, y) of one family in its table.
    let table = |x: usize, y: usize| {
        let f = family[x];
        offset[f] + ordinal[x] * reps[f] + ordinal[y]
    };
    let mut distances: Vec<Option<Option<Distance>>> = vec![None; cells_in_tables];
    let mut ranked: Vec<Option<Measures>> = vec![None; cells_in_tables];
    let mut comparisons = Vec::with_capacity(most);
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&present[i], &present[j]);
            if !(a.new || b.new) || family[i] != family[j] {
                continue;
            }
            let (ri, rj) = (rep[i], rep[j]);
            let d = if ri == rj {
                a.entry.soft.as_ref().map(|_| (0.0, 0.0, 0.0, 0.0))
            } else {
                let (x, y) = (ri.min(rj), ri.max(rj));
                let d = *distances[table(x, y)]
                    .get_or_insert_with(|| distance(&present[x].entry, &present[y].entry));
                if ri < rj {
                    d
                } else {
                    d.map(|(m, s, ab, ba)| (m, s, ba, ab))
                }
            };
            let (ta, tb) = (&a.entry.row.top5, &b.entry.row.top5);
            let (rank_i, rank_j) = (&present[ri].entry.row.top5, &present[rj].entry.row.top5);
            let m = if ri != rj && ta == rank_i && tb == rank_j {
                *ranked[table(ri, rj)].get_or_insert_with(|| measures(rank_i, rank_j))
            } else {
                measures(ta, tb)
            };
            pairs.push((i, j));
            comparisons.push(compare_ranked(&a.entry, &b.entry, m, d));
        }
    }
    Image {
        id,
        present,
        pairs,
        comparisons,
    }
}

/// Compares every pair of `entries` (one family's cells' first repetitions of one image, in
/// cell-id order) as a fold does: the pairs, by position, and their comparisons.
pub(crate) fn compare_all(entries: Vec<Entry>) -> (Vec<(usize, usize)>, Vec<Comparison>) {
    let cells = vec![
        CellName {
            id: String::new(),
            family: String::new(),
            model: String::new(),
        };
        entries.len()
    ];
    let present = entries
        .into_iter()
        .enumerate()
        .map(|(cell, entry)| Present {
            cell,
            new: true,
            entry,
            floor: RepFloor::default(),
            latencies: Vec::new(),
        })
        .collect();
    let image = compare_image(String::new(), present, &cells);
    (image.pairs, image.comparisons)
}

/// max |a - b|, mean |a - b|, KL(a || b) and KL(b || a) of two logit rows.
pub(crate) type Distance = (f64, f64, f64, f64);

/// The logit distances of two entries whose softmax is computed (None without logits).
pub(crate) fn distance(a: &Entry, b: &Entry) -> Option<Distance> {
    let (la, lb) = (a.row.logits.as_ref()?, b.row.logits.as_ref()?);
    let (sa, sb) = (a.soft.as_ref()?, b.soft.as_ref()?);
    if la.len() != lb.len() || la.is_empty() {
        return None;
    }
    // KL(a || b) = sum p_a (log p_a - log p_b) = sum p_a (x_a - x_b - delta), with delta =
    // lse_a - lse_b, the log-partitions' difference, in f64. The sum runs in f32 over
    // (x_a - x_b) - c, c = delta rounded to f32, so its terms are small where the rows are close
    // even when one is the other shifted by a constant (a softmax does not see shifts); the
    // rounding of c, delta - c, is added back in f64 (the probabilities sum to 1 within 1e-7).
    // From f32 log-probabilities the error was about 1e-7 of the largest log-probability (up
    // to 3e-7 for KL values near 1e-9); now 3e-8 where the rows are close, the floor the f32
    // exponentials leave (`kl_of_near_identical_rows_is_accurate`).
    let delta = sa.lse - sb.lse;
    let c = delta as f32;
    let (max, sum, dot_a, dot_b) = fused(la, lb, &sa.p, &sb.p, c);
    let kl_ab = f64::from(dot_a) - (delta - f64::from(c));
    let kl_ba = f64::from(dot_b) + (delta - f64::from(c));
    Some((
        f64::from(max),
        f64::from(sum) / la.len() as f64,
        kl_ab.max(0.0),
        kl_ba.max(0.0),
    ))
}

/// Compares two cells' first repetitions of one image.
pub(crate) fn compare(a: &Entry, b: &Entry) -> Comparison {
    compare_with(a, b, distance(a, b))
}

/// Compares two cells' first repetitions of one image, their logit distances given.
pub(crate) fn compare_with(a: &Entry, b: &Entry, logits: Option<Distance>) -> Comparison {
    compare_ranked(a, b, measures(&a.row.top5, &b.row.top5), logits)
}

/// Jaccard, RBO and Kendall's tau of two top-5 rankings.
type Measures = (f64, f64, Option<f64>);

/// The top-5 measures of rankings `ta` against `tb`.
fn measures(ta: &[i32], tb: &[i32]) -> Measures {
    if ta == tb && distinct(ta) {
        // Most pairs rank the same top-5: the three measures' values for identical rankings.
        (1.0, 1.0, (ta.len() >= 2).then_some(1.0))
    } else {
        (
            metrics::jaccard(ta, tb),
            metrics::rbo(ta, tb, RBO_P),
            metrics::kendall_tau(ta, tb),
        )
    }
}

/// Compares two cells' first repetitions of one image, their top-5 measures and logit
/// distances given.
fn compare_ranked(
    a: &Entry,
    b: &Entry,
    (jaccard, rbo, kendall_tau): Measures,
    logits: Option<Distance>,
) -> Comparison {
    Comparison {
        top1_a: a.top1(),
        top1_b: b.top1(),
        identical: a.row.hash == b.row.hash,
        jaccard,
        rbo,
        kendall_tau,
        logits,
    }
}

/// Whether a ranking names each label once (as every top-k the engines produce does).
fn distinct(labels: &[i32]) -> bool {
    labels
        .iter()
        .enumerate()
        .all(|(i, x)| !labels[i + 1..].contains(x))
}

/// max |a - b|, sum |a - b|, sum p_a (a - b - c) and sum p_b (c - (a - b)) over two logit rows
/// and their probabilities, in sixteen independent lanes so the compiler can vectorise (a
/// single running sum would serialise on float addition). The rows are cut to one length and
/// walked as arrays of sixteen, so no index is bounds-checked inside the loop. With eight lanes
/// indexed into the slices the loop stayed scalar (a profile of `analyze --rebuild` showed `movss` and a compare
/// per load, 18% of the rebuild); eight lanes as arrays vectorised poorly (shuffles, spills);
/// sixteen gave 4-6x fewer nanoseconds per pair of 1000-class rows in a micro-benchmark on
/// this machine's baseline x86-64 (SSE2).
pub(crate) fn fused(
    la: &[f32],
    lb: &[f32],
    pa: &[f32],
    pb: &[f32],
    c: f32,
) -> (f32, f32, f32, f32) {
    const L: usize = 16;
    let n = la.len().min(lb.len()).min(pa.len()).min(pb.len());
    let (la, lb, pa, pb) = (&la[..n], &lb[..n], &pa[..n], &pb[..n]);
    let (ca, ta) = la.as_chunks::<L>();
    let (cb, tb) = lb.as_chunks::<L>();
    let (cpa, tpa) = pa.as_chunks::<L>();
    let (cpb, tpb) = pb.as_chunks::<L>();
    let (mut max, mut sum, mut dab, mut dba) = ([0.0f32; L], [0.0f32; L], [0.0f32; L], [0.0f32; L]);
    for (((a, b), p), q) in ca.iter().zip(cb).zip(cpa).zip(cpb) {
        for j in 0..L {
            let d = a[j] - b[j];
            let abs = d.abs();
            // A select rather than f32::max (the same answer: a NaN is skipped either way)
            // maps to one vector max; a conditional store (`if abs > max[j] { max[j] = abs }`)
            // compiled to a branch per lane.
            max[j] = if abs > max[j] { abs } else { max[j] };
            sum[j] += abs;
            let t = d - c;
            dab[j] += p[j] * t;
            dba[j] -= q[j] * t;
        }
    }
    let (mut m, mut s, mut x, mut y) = (
        max.iter().copied().fold(0.0, f32::max),
        sum.iter().sum::<f32>(),
        dab.iter().sum::<f32>(),
        dba.iter().sum::<f32>(),
    );
    for (((a, b), p), q) in ta.iter().zip(tb).zip(tpa).zip(tpb) {
        let d = a - b;
        m = m.max(d.abs());
        s += d.abs();
        let t = d - c;
        x += p * t;
        y -= q * t;
    }
    (m, s, x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_matches_the_plain_definitions() {
        let la: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let lb: Vec<f32> = (0..37).map(|i| (i as f32 * 0.41).cos() * 2.0).collect();
        let (pa, _) = merge::softmax(&la);
        let (pb, _) = merge::softmax(&lb);
        let (max, sum, dab, dba) = fused(&la, &lb, &pa, &pb, 0.0);
        let (pmax, psum) = metrics::abs_diff(&la, &lb).unwrap();
        assert!((f64::from(max) - pmax).abs() < 1e-5);
        assert!((f64::from(sum) / 37.0 - psum).abs() < 1e-5);
        let dot = |p: &[f32], x: &[f32], y: &[f32]| -> f64 {
            p.iter()
                .zip(x.iter().zip(y))
                .map(|(p, (a, b))| f64::from(*p) * f64::from(a - b))
                .sum()
        };
        assert!((f64::from(dab) - dot(&pa, &la, &lb)).abs() < 1e-5);
        assert!((f64::from(dba) - dot(&pb, &lb, &la)).abs() < 1e-5);
    }

    /// The KL divergence of near-identical rows (what two engines usually give) against f64
    /// throughout. Taken from f32 log-probabilities it was off by 0.4-2.8e-7 on these rows (a KL
    /// of 2.5e-9 read as 1.3e-7); the log-partition form is within 3.4e-8, the floor the f32
    /// exponentials leave, and within 9e-8 when one row is the other shifted by 20 (without
    /// the shift taken out of the f32 sum: 2-4e-6).
    #[test]
    fn kl_of_near_identical_rows_is_accurate() {
        // Peaked rows (spread 6) and flat ones (spread 0.5: log-probabilities near -6.9, whose
        // f32 rounding is 2.4e-7), around a large logit (a shift the KL must not see).
        let row = |seed: u32, noise: f32, spread: f32| -> Vec<f32> {
            (0..1000)
                .map(|i| {
                    let base = ((i * 7919 % 1000) as f32 * 0.013).sin() * spread + 12.0;
                    base + noise * ((i as f32 + seed as f32) * 1.7).sin()
                })
                .collect()
        };
        let exact_kl = |a: &[f32], b: &[f32]| -> f64 {
            let lse = |x: &[f32]| {
                let m = x
                    .iter()
                    .map(|&v| f64::from(v))
                    .fold(f64::NEG_INFINITY, f64::max);
                m + x
                    .iter()
                    .map(|&v| (f64::from(v) - m).exp())
                    .sum::<f64>()
                    .ln()
            };
            let (la, lb) = (lse(a), lse(b));
            a.iter()
                .zip(b)
                .map(|(&x, &y)| {
                    let lp = f64::from(x) - la;
                    lp.exp() * (lp - (f64::from(y) - lb))
                })
                .sum()
        };
        let entry = |logits: Vec<f32>| {
            Entry::new(Row {
                rep: 0,
                label: None,
                top5: Vec::new(),
                top5_prob: Vec::new(),
                logits: Some(ScalarBuffer::from(logits)),
                logits_unread: false,
                hash: 0,
                latency: 0,
            })
        };
        // By hand: KL([.5, .5] || [.9, .1]) = .5 ln(.5/.9) + .5 ln(.5/.1) = 0.510826; and back.
        let (half, skew) = (vec![0.0, 0.0], vec![0.9f32.ln(), 0.1f32.ln()]);
        let (_, _, kl_ab, kl_ba) = distance(&entry(half.clone()), &entry(skew)).unwrap();
        assert!((kl_ab - 0.510_826).abs() < 1e-6, "{kl_ab}");
        assert!((kl_ba - (0.9 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln())).abs() < 1e-6);
        assert_eq!(distance(&entry(half.clone()), &entry(half)).unwrap().2, 0.0);
        // And one row the other shifted by a constant (20 or -7.5), which the softmax removes.
        let cases = [1e-4f32, 1e-3, 1e-2, 0.3]
            .into_iter()
            .flat_map(|n| [(n, 6.0), (n, 0.5)])
            .flat_map(|(n, s)| [(n, s, 0.0f32), (n, s, 20.0), (n, s, -7.5)]);
        for (noise, spread, shift) in cases {
            let a = row(0, 0.0, spread);
            let b: Vec<f32> = row(1, noise, spread).iter().map(|v| v + shift).collect();
            let (want_ab, want_ba) = (exact_kl(&a, &b), exact_kl(&b, &a));
            let (_, _, kl_ab, kl_ba) = distance(&entry(a), &entry(b)).unwrap();
            // Shifted, x_a - x_b is rounded at the shift's scale (ulp(20) = 1.9e-6) per class.
            let floor = if shift == 0.0 { 5e-8 } else { 1.5e-7 };
            for (got, want) in [(kl_ab, want_ab), (kl_ba, want_ba)] {
                assert!(
                    (got - want).abs() <= floor + 1e-5 * want,
                    "noise {noise}, shift {shift}: KL {got:e} against {want:e}"
                );
            }
        }
    }

    /// compare_image shares work between cells with bit-identical logits (a softmax, the
    /// distances and the top-5 measures per pair of representatives, per family): every pair
    /// must still get exactly what comparing the two cells directly gives, whichever side of the
    /// pair the representative is on, for a duplicate ranking differently from its
    /// representative, for non-finite logits (never shared) and across families (never paired).
    #[test]
    fn shared_work_gives_each_pair_what_comparing_it_directly_gives() {
        let logits = |seed: f32| -> Vec<f32> {
            (0..37)
                .map(|i| ((i as f32 + seed) * 0.37).sin() * 4.0)
                .collect()
        };
        let (v0, v1, v2) = (logits(0.0), logits(1.5), logits(3.25));
        let mut nan = logits(7.0);
        nan[3] = f32::NAN;
        let row = |l: Option<&Vec<f32>>, hash: u64, top5: &[i32]| Row {
            rep: 0,
            label: Some(top5[0]),
            top5: top5.to_vec(),
            top5_prob: Vec::new(),
            logits: l.map(|l| ScalarBuffer::from(l.clone())),
            logits_unread: false,
            hash,
            latency: 0,
        };
        // (family, row): cells 0, 2 and 4 share v0's logits; 4 ranks them differently (as a
        // store could claim); 5 and 6 hold the same NaN logits; 7 has none; 8 is another family
        // with v0's logits; 1 and 3 repeat each other (the representative after a duplicate).
        let cells_rows = vec![
            ("f", row(Some(&v0), 10, &[1, 2, 3, 4, 5])),
            ("f", row(Some(&v2), 12, &[3, 1, 2, 5, 4])),
            ("f", row(Some(&v0), 10, &[1, 2, 3, 4, 5])),
            ("f", row(Some(&v2), 12, &[3, 1, 2, 5, 4])),
            ("f", row(Some(&v0), 10, &[2, 1, 3, 9, 5])),
            ("f", row(Some(&nan), 13, &[4, 3, 2, 1, 0])),
            ("f", row(Some(&nan), 13, &[4, 3, 2, 1, 0])),
            ("f", row(None, 14, &[7, 1, 2, 3, 4])),
            ("g", row(Some(&v0), 10, &[1, 2, 3, 4, 5])),
            ("f", row(Some(&v1), 11, &[1, 3, 2, 4, 6])),
            // Family g: 8 shares f's v0 logits but is g's own representative (tables are per
            // family: had it taken f's cell 0 as its representative, its pair with 11, g's
            // second representative, would have read f's table at the place of f's pair 0-1).
            ("g", row(Some(&logits(5.5)), 15, &[6, 1, 3, 2, 4])),
            ("g", row(Some(&logits(6.5)), 16, &[6, 3, 1, 2, 4])),
            // Two empty logit rows with one hash: no distances, not "identical logits".
            ("f", row(Some(&Vec::new()), 17, &[8, 1, 2, 3, 4])),
            ("f", row(Some(&Vec::new()), 17, &[8, 1, 2, 3, 4])),
        ];
        let cells: Vec<CellName> = cells_rows
            .iter()
            .enumerate()
            .map(|(i, (family, _))| CellName {
                id: format!("c{i}"),
                family: family.to_string(),
                model: String::new(),
            })
            .collect();
        let present: Vec<Present> = cells_rows
            .iter()
            .enumerate()
            .map(|(cell, (_, row))| Present {
                cell,
                new: true,
                entry: Entry::bare(row.clone()),
                floor: RepFloor::default(),
                latencies: Vec::new(),
            })
            .collect();
        let image = compare_image("img".into(), present, &cells);
        let mut want_pairs = Vec::new();
        for i in 0..cells.len() {
            for j in i + 1..cells.len() {
                if cells[i].family == cells[j].family {
                    want_pairs.push((i, j));
                }
            }
        }
        assert_eq!(image.pairs, want_pairs);
        for (&(i, j), got) in image.pairs.iter().zip(&image.comparisons) {
            let want = compare(
                &Entry::new(cells_rows[i].1.clone()),
                &Entry::new(cells_rows[j].1.clone()),
            );
            // By their printed form, exact for floats and equal for NaN (the NaN row's mean).
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "pair ({i}, {j})");
        }
        // The duplicates were shared (one softmax for 0, 2 and 4), the NaN rows were not, nor
        // logits across families.
        let soft = |k: usize| image.present[k].entry.soft.clone().unwrap();
        assert!(!Arc::ptr_eq(&soft(0), &soft(8)));
        assert!(Arc::ptr_eq(&soft(0), &soft(2)) && Arc::ptr_eq(&soft(0), &soft(4)));
        assert!(Arc::ptr_eq(&soft(1), &soft(3)));
        assert!(!Arc::ptr_eq(&soft(5), &soft(6)));
    }

    #[test]
    fn identical_rankings_take_the_values_the_measures_give() {
        for top in [
            vec![],
            vec![3],
            vec![3, 1],
            vec![9, 4, 7, 1, 0],
            (0..12).collect(),
        ] {
            let entry = |top: &[i32]| {
                Entry::bare(Row {
                    rep: 0,
                    label: None,
                    top5: top.to_vec(),
                    top5_prob: Vec::new(),
                    logits: None,
                    logits_unread: false,
                    hash: 0,
                    latency: 0,
                })
            };
            let c = compare(&entry(&top), &entry(&top));
            assert_eq!(c.jaccard, metrics::jaccard(&top, &top), "{top:?}");
            assert_eq!(c.rbo, metrics::rbo(&top, &top, RBO_P), "{top:?}");
            assert_eq!(c.kendall_tau, metrics::kendall_tau(&top, &top), "{top:?}");
        }
        assert!(!distinct(&[1, 2, 1]));
        assert!(distinct(&[1, 2, 3]));
    }

    #[test]
    fn flipped_examples_are_the_smallest_ids_whatever_the_order() {
        let c = Comparison {
            top1_a: 1,
            top1_b: 2,
            identical: false,
            jaccard: 0.0,
            rbo: 0.0,
            kendall_tau: None,
            logits: None,
        };
        let ids: Vec<String> = (0..120).map(|i| format!("img{i:04}")).collect();
        let mut forward = PairAcc::default();
        for id in &ids {
            forward.add_comparison(id, None, &c);
        }
        let mut backward = PairAcc::default();
        for id in ids.iter().rev() {
            backward.add_comparison(id, None, &c);
        }
        assert_eq!(forward.flipped, backward.flipped);
        assert_eq!(forward.flipped.len(), FLIPPED_EXAMPLES);
        assert_eq!(forward.flipped[0], "img0000");
    }

    /// The fold's shortcut (a pair whose examples are full and below the current image skips
    /// the comparison of ids) gives what adding every comparison gives: over folds in
    /// increasing order, later folds of smaller and interleaved ids, and an order that goes
    /// back within one fold.
    #[test]
    fn closed_flipped_examples_match_adding_every_comparison() {
        let flip = |f: bool| Comparison {
            top1_a: 1,
            top1_b: if f { 2 } else { 1 },
            identical: !f,
            jaccard: 1.0,
            rbo: 1.0,
            kendall_tau: None,
            logits: None,
        };
        let cells: Vec<CellName> = ["a", "b", "c"]
            .iter()
            .map(|id| CellName {
                id: (*id).into(),
                family: "f".into(),
                model: "m".into(),
            })
            .collect();
        let id = |i: usize| format!("img{i:04}");
        let folds: Vec<Vec<usize>> = vec![
            (200..320).collect(),
            (0..150).step_by(3).collect(),
            (100..260).rev().step_by(7).collect(),
            [330, 331, 5, 6, 400, 1].into(),
        ];
        let mut pairs = Vec::new();
        let mut cell_accs = Vec::new();
        let mut reference = vec![PairAcc::default(); 3];
        for fold in &folds {
            let mut acc = Accumulators::new(&mut pairs, &mut cell_accs, &cells);
            for &i in fold {
                let image = id(i);
                acc.begin_image(&image);
                for (n, (a, b)) in [(0, 1), (0, 2), (1, 2)].into_iter().enumerate() {
                    let c = flip((i + n) % (n + 2) != 0);
                    let k = acc.pair(a, b, &cells).unwrap();
                    acc.add_comparison(k, &image, None, &c);
                    reference[n].add_comparison(&image, None, &c);
                }
            }
        }
        assert_eq!(pairs.len(), 3);
        for (got, want) in pairs.iter().zip(&reference) {
            assert_eq!(got.flipped, want.flipped);
            assert_eq!((got.images, got.flips), (want.images, want.flips));
            assert_eq!(got.flipped.len(), FLIPPED_EXAMPLES);
        }
    }
}

//! Cross-environment disagreement: what the analysis says about pairs of cells, cells and images.
//!
//! The numbers come from the derived tables (see [`crate::derived`]): pair statistics from the
//! pairs' running sums, floors from the cells' sums, and the per-image findings (deviation
//! signatures, classes that flip, near ties, unstable images) from every cell's top-1 per image
//! in `cell_images`, summarised here by [`summarise`]. [`compare_stores`] runs the same pair
//! comparisons across two stores for `diff`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::derived::fold::{self, FLIPPED_EXAMPLES, PairAcc};
use crate::error::Result;
use crate::merge::{self, Entry, Merge};
use crate::metrics;

pub use crate::derived::fold::RBO_P;

/// Example images kept per deviation signature.
pub const SIGNATURE_EXAMPLES: usize = 5;

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
    /// Up to [`FLIPPED_EXAMPLES`] images whose top-1 differs (the smallest ids).
    pub flipped: Vec<String>,
}

impl PairStats {
    /// A pair's statistics from its running sums, `a` and `b` being the cells' indices in the
    /// analysis. `swapped` says that `a` is the accumulator's `cell_b` (the KL divergence and the
    /// accuracies are then taken the other way round).
    pub fn from_acc(acc: &PairAcc, a: usize, b: usize, swapped: bool) -> Self {
        let n = acc.images.max(1) as f64;
        let m = acc.logit_n as f64;
        let logits = acc.logit_n > 0;
        let (correct_a, correct_b) = if swapped {
            (acc.correct_b, acc.correct_a)
        } else {
            (acc.correct_a, acc.correct_b)
        };
        let kl = if swapped { acc.kl_ba } else { acc.kl_ab };
        debug_assert!(acc.flipped.len() <= FLIPPED_EXAMPLES);
        Self {
            a,
            b,
            images: acc.images,
            flips: acc.flips,
            flip_rate: acc.flips as f64 / n,
            flip_ci: metrics::wilson(acc.flips, acc.images),
            identical: acc.identical,
            jaccard_top5: acc.jaccard / n,
            rbo_top5: acc.rbo / n,
            kendall_tau: (acc.tau_n > 0).then(|| acc.tau / acc.tau_n as f64),
            max_abs_logit: logits.then_some(acc.max_abs),
            mean_abs_logit: logits.then(|| acc.sum_mean_abs / m),
            kl: logits.then(|| kl / m),
            labelled: acc.labelled,
            correct_a,
            correct_b,
            flipped: acc.flipped.clone(),
        }
    }
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
        sorted_ms(&self.latencies)
    }
}

/// One cell's answer for one image, as the per-image findings need it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    pub cell: usize,
    pub label: Option<i32>,
    pub top1: i32,
    pub top2: i32,
    pub p1: f32,
    pub p2: f32,
}

/// The per-image findings over every image's answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Findings {
    pub images: u64,
    pub signatures: Vec<Signature>,
    pub classes: Vec<ClassFlips>,
    pub near_ties: Vec<NearTie>,
    pub unstable: Vec<UnstableImage>,
}

/// Finds, per group, the cells that deviate from the majority top-1 of each image (signatures,
/// unstable images), the classes that flip, and the near ties of the group's reference cell.
/// `images` must come in image-id order (examples are the first ids).
pub fn summarise<'a>(
    groups: &[Vec<usize>],
    images: impl Iterator<Item = (&'a str, &'a [Answer])>,
    near_tie_margin: f32,
) -> Findings {
    let mut group_of: HashMap<usize, (usize, usize)> = HashMap::new();
    for (g, cells) in groups.iter().enumerate() {
        for (pos, &c) in cells.iter().enumerate() {
            group_of.insert(c, (g, pos));
        }
    }
    let mut signatures: HashMap<(usize, Vec<usize>), (u64, Vec<String>)> = HashMap::new();
    let mut classes: HashMap<(usize, i32), (u64, u64)> = HashMap::new();
    let mut out = Findings::default();
    let mut per_group: Vec<Vec<(usize, Answer)>> = vec![Vec::new(); groups.len()];
    for (id, answers) in images {
        out.images += 1;
        for v in &mut per_group {
            v.clear();
        }
        for a in answers {
            if let Some(&(g, pos)) = group_of.get(&a.cell) {
                per_group[g].push((pos, *a));
            }
        }
        for (g, present) in per_group.iter_mut().enumerate() {
            if present.is_empty() {
                continue;
            }
            present.sort_by_key(|(pos, _)| *pos);
            let reference = present.first().filter(|(pos, _)| *pos == 0).map(|(_, a)| a);
            let majority = majority_top1(present, reference);
            let deviating: Vec<usize> = present
                .iter()
                .filter(|(_, a)| a.top1 != majority)
                .map(|(_, a)| a.cell)
                .collect();
            let truth = present.iter().find_map(|(_, a)| a.label);
            let label = truth.unwrap_or(majority);
            if !deviating.is_empty() {
                let mut tops: Vec<i32> = present.iter().map(|(_, a)| a.top1).collect();
                tops.sort_unstable();
                tops.dedup();
                out.unstable.push(UnstableImage {
                    group: g,
                    image_id: id.to_string(),
                    label: truth,
                    distinct: u32::try_from(tops.len()).unwrap_or(u32::MAX),
                    majority_share: (present.len() - deviating.len()) as f64 / present.len() as f64,
                    majority,
                    cells: u32::try_from(present.len()).unwrap_or(u32::MAX),
                    deviating: deviating.clone(),
                });
            }
            let class = classes.entry((g, label)).or_default();
            class.0 += 1;
            if !deviating.is_empty() {
                class.1 += 1;
                let sig = signatures.entry((g, deviating)).or_default();
                sig.0 += 1;
                if sig.1.len() < SIGNATURE_EXAMPLES {
                    sig.1.push(id.to_string());
                }
            }
            if let Some(r) = reference
                && r.p1 - r.p2 < near_tie_margin
                && r.top2 >= 0
            {
                out.near_ties.push(NearTie {
                    group: g,
                    image_id: id.to_string(),
                    margin: r.p1 - r.p2,
                    top1: r.top1,
                    top2: r.top2,
                    flipped: present.iter().any(|(_, a)| a.top1 != r.top1),
                });
            }
        }
    }
    out.signatures = signatures
        .into_iter()
        .map(|((group, cells), (images, examples))| Signature {
            group,
            cells,
            images,
            examples,
        })
        .collect();
    out.classes = classes
        .into_iter()
        .map(|((group, class), (images, flipped))| ClassFlips {
            group,
            class,
            images,
            flipped,
        })
        .collect();
    order(&mut out);
    out
}

/// Puts findings in the order reports show them: least stable images, largest signatures, most
/// flipped classes and narrowest ties first (ties broken by group, cells, class, image id, so
/// two computations of the same findings are equal).
pub fn order(out: &mut Findings) {
    out.unstable.sort_by(|a, b| {
        b.distinct
            .cmp(&a.distinct)
            .then(a.majority_share.total_cmp(&b.majority_share))
            .then(a.group.cmp(&b.group))
            .then(a.image_id.cmp(&b.image_id))
    });
    out.signatures.sort_by(|a, b| {
        b.images
            .cmp(&a.images)
            .then(a.group.cmp(&b.group))
            .then(a.cells.cmp(&b.cells))
    });
    out.classes.sort_by(|a, b| {
        b.flipped
            .cmp(&a.flipped)
            .then(a.group.cmp(&b.group))
            .then(a.class.cmp(&b.class))
    });
    out.near_ties.sort_by(|a, b| {
        a.margin
            .total_cmp(&b.margin)
            .then(a.image_id.cmp(&b.image_id))
            .then(a.group.cmp(&b.group))
    });
}

/// The most common top-1 among the cells; ties go to the reference cell's answer, then to the
/// smallest class index.
fn majority_top1(present: &[(usize, Answer)], reference: Option<&Answer>) -> i32 {
    let preferred = reference.map(|r| r.top1);
    let mut counts: Vec<(i32, usize)> = Vec::new();
    for (_, a) in present {
        match counts.iter_mut().find(|(c, _)| *c == a.top1) {
            Some((_, n)) => *n += 1,
            None => counts.push((a.top1, 1)),
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

/// Pairs compared across stores, for `diff`.
#[derive(Debug, Default)]
pub struct Compared {
    /// One per requested pair, in request order.
    pub pairs: Vec<PairStats>,
    /// Per-image latency of every output row, per cell (nanoseconds).
    pub latencies: Vec<Vec<i64>>,
    /// Per cell, its repetitions' run-to-run floor: (later repetitions compared, top-1 flips).
    pub floors: Vec<(u64, u64)>,
}

impl Compared {
    /// A cell's run-to-run flip rate (0 when it ran one repetition: no floor is known).
    pub fn floor_rate(&self, cell: usize) -> f64 {
        match self.floors.get(cell) {
            Some(&(compared, flips)) if compared > 0 => flips as f64 / compared as f64,
            _ => 0.0,
        }
    }

    /// Each cell's per-row latencies in milliseconds, sorted (what quantiles need).
    pub fn sorted_latencies_ms(&self) -> Vec<Vec<f64>> {
        sorted_ms(&self.latencies)
    }
}

/// Per-cell latencies (ns) as sorted milliseconds.
pub fn sorted_ms(latencies: &[Vec<i64>]) -> Vec<Vec<f64>> {
    latencies
        .iter()
        .map(|ns| {
            let mut ms: Vec<f64> = ns.iter().map(|&n| n as f64 / 1e6).collect();
            ms.sort_by(f64::total_cmp);
            ms
        })
        .collect()
}

/// Compares pairs of cells over `parts` ((cell index, file)) in one merge: `diff` matches the
/// same cell in two stores, which no single store's derived tables hold.
///
/// # Errors
/// Fails when a part cannot be read or is not sorted by image.
pub fn compare_stores(
    cells: usize,
    parts: &[(usize, PathBuf)],
    pairs: &[(usize, usize)],
) -> Result<Compared> {
    let paths: Vec<PathBuf> = parts.iter().map(|(_, p)| p.clone()).collect();
    let mut merge = Merge::open(&paths)?;
    let mut acc: Vec<PairAcc> = vec![PairAcc::default(); pairs.len()];
    let mut latencies: Vec<Vec<i64>> = vec![Vec::new(); cells];
    let mut floors = vec![(0u64, 0u64); cells];
    let mut entries: Vec<Option<Entry>> = (0..cells).map(|_| None).collect();
    while let Some((id, slots)) = merge.next_image()? {
        for e in &mut entries {
            *e = None;
        }
        for (slot, rows) in slots {
            let cell = parts[slot].0;
            if entries[cell].is_some() {
                continue;
            }
            if let Some((first, floor, lat)) = merge::first_and_floor(rows) {
                latencies[cell].extend(lat);
                floors[cell].0 += u64::from(floor.compared);
                floors[cell].1 += u64::from(floor.flips);
                entries[cell] = Some(Entry::new(first));
            }
        }
        for (k, &(a, b)) in pairs.iter().enumerate() {
            if let (Some(ea), Some(eb)) = (&entries[a], &entries[b]) {
                let c = fold::compare(ea, eb);
                acc[k].add_comparison(&id, ea.row.label.or(eb.row.label), &c);
            }
        }
    }
    Ok(Compared {
        pairs: pairs
            .iter()
            .zip(&acc)
            .map(|(&(a, b), acc)| PairStats::from_acc(acc, a, b, false))
            .collect(),
        latencies,
        floors,
    })
}

//! `deltann diff STORE_A STORE_B`: the same cells in two stores, for example before and after an
//! engine upgrade. Cells match by id, or else by everything but the engine version (an upgrade
//! changes the id); each matched pair is compared on outputs (flips, identical logits, logit
//! differences) and on latency (relative change of p50 with a bootstrap interval, flagged when it
//! slows down beyond the cells' noise). [`regressions`] turns it into a gate: B regresses where a
//! matched cell flips beyond its run-to-run floors or slows beyond its noise (like diff(1), any
//! difference beyond noise counts unless thresholds loosen it).

use std::collections::HashMap;

use deltann_store::{Store, Table};
use serde::{Deserialize, Serialize};

use crate::cells::{self, CellInfo};
use crate::check::{self, Bound, Violation};
use crate::disagreement::{self, PairStats};
use crate::error::Result;
use crate::stats::{self, Estimate};

/// One cell present in both stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matched {
    pub a: CellInfo,
    pub b: CellInfo,
    /// Matched by identical id (else by environment without the engine version).
    pub same_id: bool,
    pub outputs: PairStats,
    /// Each side's run-to-run flip rate (0 when it ran one repetition).
    #[serde(default)]
    pub floor_a: f64,
    #[serde(default)]
    pub floor_b: f64,
    pub p50_a_ms: Option<f64>,
    pub p50_b_ms: Option<f64>,
    pub latency_change: Option<Estimate>,
    pub flagged: bool,
}

/// What differs between two stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    pub store_a: String,
    pub store_b: String,
    pub matched: Vec<Matched>,
    pub only_a: Vec<CellInfo>,
    pub only_b: Vec<CellInfo>,
}

fn environment_key(c: &CellInfo) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        c.model,
        c.engine,
        c.optimization(),
        c.threads,
        c.batch_size,
        c.resize_filter,
        c.repetitions,
        c.device,
        c.engine_settings.as_deref().unwrap_or(""),
        c.preprocess
    )
}

/// Compares two stores.
///
/// # Errors
/// Fails when either store cannot be read.
pub fn diff(a: &Store, b: &Store, noise_multiple: f64) -> Result<Diff> {
    let (cells_a, cells_b) = (cells::load_cells(a)?, cells::load_cells(b)?);
    let by_id: HashMap<&str, usize> = cells_b
        .iter()
        .enumerate()
        .map(|(i, c)| (c.cell_id.as_str(), i))
        .collect();
    let by_env: HashMap<String, usize> = cells_b
        .iter()
        .enumerate()
        .map(|(i, c)| (environment_key(c), i))
        .collect();
    let mut pairs = Vec::new();
    let mut used_b = vec![false; cells_b.len()];
    let mut only_a = Vec::new();
    for (i, c) in cells_a.iter().enumerate() {
        let found = by_id
            .get(c.cell_id.as_str())
            .map(|&j| (j, true))
            .or_else(|| by_env.get(&environment_key(c)).map(|&j| (j, false)))
            .filter(|(j, _)| !used_b[*j]);
        match found {
            Some((j, same)) => {
                used_b[j] = true;
                pairs.push((i, j, same));
            }
            None => only_a.push(c.clone()),
        }
    }
    let only_b = cells_b
        .iter()
        .zip(&used_b)
        .filter(|(_, u)| !**u)
        .map(|(c, _)| c.clone())
        .collect();

    // One pass over both stores' parts, cells of B numbered after A's.
    let offset = cells_a.len();
    let parts_of =
        |store: &Store, cells: &[CellInfo], shift: usize| -> Vec<(usize, std::path::PathBuf)> {
            let index: HashMap<&str, usize> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| (c.cell_id.as_str(), i + shift))
                .collect();
            store
                .parts(Table::Outputs)
                .filter_map(|p| Some((*index.get(p.cell_id.as_deref()?)?, store.part_path(p))))
                .collect()
        };
    let mut parts = parts_of(a, &cells_a, 0);
    parts.extend(parts_of(b, &cells_b, offset));
    let matched_pairs: Vec<(usize, usize)> =
        pairs.iter().map(|&(i, j, _)| (i, j + offset)).collect();
    let d = disagreement::compare_stores(offset + cells_b.len(), &parts, &matched_pairs)?;
    let sorted = d.sorted_latencies_ms();
    let matched = pairs
        .iter()
        .zip(d.pairs.iter().cloned())
        .map(|(&(i, j, same_id), outputs)| {
            let (la, lb) = (&sorted[i], &sorted[j + offset]);
            let change = stats::relative_change(la, lb, 0.5, 2000, (i as u64) << 32 | j as u64);
            let noise = noise_multiple
                * (stats::relative_dispersion(la).powi(2) + stats::relative_dispersion(lb).powi(2))
                    .sqrt();
            Matched {
                a: cells_a[i].clone(),
                b: cells_b[j].clone(),
                same_id,
                floor_a: d.floor_rate(i),
                floor_b: d.floor_rate(j + offset),
                outputs,
                p50_a_ms: stats::quantile(la, 0.5).map(|e| e.value),
                p50_b_ms: stats::quantile(lb, 0.5).map(|e| e.value),
                flagged: change.is_some_and(|c| c.lo > 0.0 && c.value > noise),
                latency_change: change,
            }
        })
        .collect();
    Ok(Diff {
        store_a: a.root().display().to_string(),
        store_b: b.root().display().to_string(),
        matched,
        only_a,
        only_b,
    })
}

/// Where B regresses on A: matched cells (with images in common) whose flip rate beyond both
/// sides' run-to-run noise (see [`check::flip_rate_beyond_floor`]), at `bound`,
/// exceeds `max_flip_rate`, or whose p50 latency is flagged slower (beyond the noise, interval
/// above zero) by more than `max_slowdown`.
pub fn regressions(
    d: &Diff,
    max_flip_rate: f64,
    bound: Bound,
    max_slowdown: f64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for m in &d.matched {
        let o = &m.outputs;
        if o.images == 0 {
            // Nothing in common to compare (its interval would be [0, 1]).
            continue;
        }
        let beyond = check::flip_rate_beyond_floor(o, m.floor_a, m.floor_b, bound);
        if beyond > max_flip_rate {
            out.push(Violation {
                what: format!(
                    "{} [{}]: {} of {} images flip ({:.2}% [{:.2}%, {:.2}%]); beyond the \
                     floors' mean of {:.2}% and {:.2}% at its {}: {:.2}% > {:.2}%",
                    m.a.cell_id,
                    m.a.short(),
                    o.flips,
                    o.images,
                    100.0 * o.flip_rate,
                    100.0 * o.flip_ci.0,
                    100.0 * o.flip_ci.1,
                    100.0 * m.floor_a,
                    100.0 * m.floor_b,
                    bound.name(),
                    100.0 * beyond,
                    100.0 * max_flip_rate,
                ),
            });
        }
        if let Some(c) = m
            .latency_change
            .filter(|c| m.flagged && c.value > max_slowdown)
        {
            out.push(Violation {
                what: format!(
                    "{} [{}]: p50 {:+.1}% [{:+.1}%, {:+.1}%] slower, beyond its noise and > {:.1}%",
                    m.a.cell_id,
                    m.a.short(),
                    100.0 * c.value,
                    100.0 * c.lo,
                    100.0 * c.hi,
                    100.0 * max_slowdown,
                ),
            });
        }
    }
    out
}

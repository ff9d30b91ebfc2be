//! `deltann diff STORE_A STORE_B`: the same cells in two stores, for example before and after an
//! engine upgrade. Cells match by id, or else by everything but the engine version (an upgrade
//! changes the id); each matched pair is compared on outputs (flips, identical logits, logit
//! differences) and on latency (relative change of p50 with a bootstrap interval, flagged when it
//! slows down beyond the cells' noise).

use std::collections::HashMap;

use deltann_store::{Store, Table};
use serde::{Deserialize, Serialize};

use crate::cells::{self, CellInfo};
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
        .zip(d.pairs)
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

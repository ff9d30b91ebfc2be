//! The per-cell summary printed after a collection, read back from the store.
//!
//! It answers the first questions after a sweep: did every cell run, how accurate is each, how
//! fast, and does each agree with its family's reference cell (the first cell of the family in
//! plan order)? Agreement is the share of images, among those both cells ran, whose top-1 of the
//! first repetition is the same. The analyzer goes much further; this is the quick look.

use std::collections::HashMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type};
use deltann_store::schema::col;
use deltann_store::{Store, Table};

use crate::error::Result;
use crate::plan::Plan;

/// One cell's line of the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct CellSummary {
    pub cell_id: String,
    pub model: String,
    pub engine: String,
    pub engine_version: String,
    pub tag: String,
    /// `ok`, `failed`, `partial` or `pending`.
    pub status: String,
    pub error: Option<String>,
    pub images_ok: usize,
    pub images_failed: usize,
    /// (correct top-1, labelled images) on the first repetition.
    pub accuracy: Option<(usize, usize)>,
    pub latency_p50_ms: Option<f64>,
    /// The family's reference cell, `None` for the reference itself.
    pub reference: Option<String>,
    /// (same top-1 as the reference, images both ran).
    pub agreement: Option<(usize, usize)>,
}

/// Builds the summary of `plan`'s cells from what `store` holds.
///
/// # Errors
/// Fails when a committed part cannot be read.
pub fn summarize(store: &Store, plan: &Plan) -> Result<Vec<CellSummary>> {
    let statuses = crate::collect::status(store, plan)?;
    // Latest row per cell: p50 and error.
    let mut latest: HashMap<String, (i32, Option<f64>)> = HashMap::new();
    let columns = [col::CELL_ID, col::ATTEMPT, col::LATENCY_P50_MS];
    for batch in store.scan_table(Table::Cells, &columns) {
        let batch = batch?;
        let (Some(ids), Some(attempts), Some(p50)) = (
            batch
                .column_by_name(col::CELL_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::ATTEMPT)
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            batch
                .column_by_name(col::LATENCY_P50_MS)
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
        ) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            let entry = latest
                .entry(ids.value(row).to_string())
                .or_insert((-1, None));
            if attempts.value(row) >= entry.0 {
                *entry = (
                    attempts.value(row),
                    p50.is_valid(row).then(|| p50.value(row)),
                );
            }
        }
    }

    // Top-1 of the first repetition, per cell and image.
    let ids: std::collections::HashSet<&str> = plan.cells.iter().map(|c| c.id.as_str()).collect();
    let parts = store
        .parts(Table::Outputs)
        .filter(|p| p.cell_id.as_deref().is_some_and(|c| ids.contains(c)));
    let columns = [
        col::CELL_ID,
        col::IMAGE_ID,
        col::LABEL,
        col::REPETITION,
        col::TOP1,
    ];
    let mut top1: HashMap<&str, HashMap<String, (i32, Option<i32>)>> = HashMap::new();
    for batch in store.scan(parts, &columns, 8192) {
        let batch = batch?;
        let int = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Int32Type>())
        };
        let text = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let (Some(cells), Some(images), Some(labels), Some(reps), Some(tops)) = (
            text(col::CELL_ID),
            text(col::IMAGE_ID),
            int(col::LABEL),
            int(col::REPETITION),
            int(col::TOP1),
        ) else {
            continue;
        };
        for row in 0..batch.num_rows() {
            if reps.value(row) != 0 {
                continue;
            }
            let Some(cell) = ids.get(cells.value(row)) else {
                continue;
            };
            let label = labels.is_valid(row).then(|| labels.value(row));
            top1.entry(cell)
                .or_default()
                .insert(images.value(row).to_string(), (tops.value(row), label));
        }
    }

    let mut reference_of: HashMap<&str, &str> = HashMap::new();
    let empty = HashMap::new();
    let mut out = Vec::new();
    for cell in &plan.cells {
        let st = &statuses[&cell.id];
        let mine = top1.get(cell.id.as_str()).unwrap_or(&empty);
        let labelled: Vec<_> = mine
            .values()
            .filter_map(|(t, l)| l.map(|l| *t == l))
            .collect();
        let accuracy = (!labelled.is_empty())
            .then(|| (labelled.iter().filter(|c| **c).count(), labelled.len()));
        let family = cell.model.spec.family.as_str();
        let reference = match reference_of.get(family) {
            Some(r) => Some(r.to_string()),
            None => {
                reference_of.insert(family, cell.id.as_str());
                None
            }
        };
        let agreement = reference.as_deref().map(|r| {
            let theirs = top1.get(r).unwrap_or(&empty);
            let shared: Vec<bool> = mine
                .iter()
                .filter_map(|(img, (t, _))| theirs.get(img).map(|(u, _)| t == u))
                .collect();
            (shared.iter().filter(|s| **s).count(), shared.len())
        });
        let (_, p50) = latest.get(&cell.id).cloned().unwrap_or((-1, None));
        let images_ok = mine.len();
        out.push(CellSummary {
            cell_id: cell.id.clone(),
            model: cell.model.spec.name.clone(),
            engine: cell.engine.name().to_string(),
            engine_version: cell.engine_version.clone(),
            tag: cell.tag.clone(),
            status: match (&st.status, st.done.is_empty()) {
                (Some(s), _) => s.clone(),
                (None, false) => "partial".into(),
                (None, true) => "pending".into(),
            },
            error: st.error.clone(),
            images_ok,
            images_failed: st.done.len().saturating_sub(images_ok),
            accuracy,
            latency_p50_ms: p50,
            reference,
            agreement,
        });
    }
    Ok(out)
}

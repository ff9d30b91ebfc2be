//! Per-image detail: every cell's top-5 for one image, and how far its logits are from its
//! family's reference cell, found in milliseconds however large the store.
//!
//! Both halves are in the derived tables: `cell_images` holds each cell's answer and
//! `comparisons` each pair's logit distances, each part sorted by image with its image range in
//! the derived state and per row group in the Parquet statistics, so a lookup reads only the row
//! groups that can hold the image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::derived::{self, State};
use crate::error::Result;

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
    /// KL(reference || this cell).
    pub kl_ref: Option<f32>,
    /// Bit-identical logits to the reference's.
    pub identical_ref: Option<bool>,
}

/// A store's derived tables opened for image lookups.
#[derive(Debug)]
pub struct Detail {
    root: PathBuf,
    state: State,
    /// Cell id -> index in the analysis.
    index: HashMap<String, usize>,
    /// Cell index -> its group's reference cell id.
    reference: HashMap<usize, String>,
}

impl Detail {
    /// Opens the derived state of the store at `root` for lookups of `analysis`'s cells.
    ///
    /// # Errors
    /// Fails when the derived state cannot be read (or there is none: run the analysis first).
    pub fn open(root: &Path, analysis: &Analysis) -> Result<Self> {
        let state = State::load(root)?.ok_or_else(|| {
            crate::Error::Invalid(format!(
                "{}: no derived tables yet (run `deltann analyze`)",
                root.join(derived::DIR).display()
            ))
        })?;
        let index = analysis
            .cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.cell_id.clone(), i))
            .collect();
        let mut reference = HashMap::new();
        for g in &analysis.groups {
            if let Some(&r) = g.cells.first() {
                for &c in &g.cells {
                    reference.insert(c, analysis.cells[r].cell_id.clone());
                }
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            state,
            index,
            reference,
        })
    }

    /// Every cell's row for `image_id`.
    ///
    /// # Errors
    /// Fails when a derived part cannot be read.
    pub fn lookup(&self, image_id: &str) -> Result<Vec<DetailRow>> {
        let (rows, pairs) = derived::read::image(&self.root, &self.state, image_id)?;
        let hashes: HashMap<&str, u64> = rows
            .iter()
            .map(|r| (r.cell_id.as_str(), r.logits_hash))
            .collect();
        let mut out = Vec::new();
        for r in &rows {
            let Some(&cell) = self.index.get(&r.cell_id) else {
                continue;
            };
            let reference = self.reference.get(&cell);
            let is_ref = reference == Some(&r.cell_id);
            let pair = reference.filter(|_| !is_ref).and_then(|rid| {
                pairs.iter().find_map(|p| {
                    if p.cell_a == *rid && p.cell_b == r.cell_id {
                        Some((p, true))
                    } else if p.cell_b == *rid && p.cell_a == r.cell_id {
                        Some((p, false))
                    } else {
                        None
                    }
                })
            });
            let f = |v: Option<f64>| v.map(|x| x as f32);
            out.push(DetailRow {
                cell,
                label: r.label,
                top5: r.top5.clone(),
                top5_prob: r.top5_prob.clone(),
                max_abs_ref: pair.and_then(|(p, _)| f(p.max_abs_logit)),
                mean_abs_ref: pair.and_then(|(p, _)| f(p.mean_abs_logit)),
                kl_ref: pair.and_then(|(p, ref_is_a)| f(if ref_is_a { p.kl_ab } else { p.kl_ba })),
                identical_ref: reference
                    .and_then(|rid| hashes.get(rid.as_str()))
                    .map(|h| *h == r.logits_hash),
            });
        }
        out.sort_by_key(|r| r.cell);
        Ok(out)
    }
}

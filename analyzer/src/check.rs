//! `deltann check`: an analysis against bounds, for CI pipelines that gate model deployments.
//! Exit 0 within bounds, 1 outside (naming each offending pair), 2 on error.

use crate::analysis::Analysis;
use crate::cells::{self, Dimension};

/// The bounds to hold.
#[derive(Clone, Debug, Default)]
pub struct Bounds {
    /// Largest acceptable top-1 flip rate between two cells of a family.
    pub max_flip_rate: Option<f64>,
    /// Largest acceptable relative slowdown of a change meant to speed things up, counted when
    /// it also exceeds the contrast's noise floor and its bootstrap interval excludes no change.
    pub max_slowdown: Option<f64>,
    /// Pairs that differ in any of these dimensions are not held to the flip bound (an int8
    /// variant is expected to differ).
    pub skip: Vec<Dimension>,
}

/// One bound broken.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub what: String,
}

/// Every violation of `bounds` in `analysis`.
pub fn check(a: &Analysis, bounds: &Bounds) -> Vec<Violation> {
    let mut out = Vec::new();
    if let Some(max) = bounds.max_flip_rate {
        let mut pairs: Vec<_> = a
            .disagreement
            .pairs
            .iter()
            .filter(|p| p.flip_rate > max)
            .collect();
        pairs.sort_by(|x, y| y.flip_rate.total_cmp(&x.flip_rate));
        for p in pairs {
            let dims = cells::differences(&a.cells[p.a], &a.cells[p.b]);
            if dims.iter().any(|d| bounds.skip.contains(d)) {
                continue;
            }
            let names: Vec<&str> = dims.iter().map(|d| d.name()).collect();
            out.push(Violation {
                what: format!(
                    "flip rate {:.2}% > {:.2}%: {} [{}] vs {} [{}] ({} images; differ in {})",
                    100.0 * p.flip_rate,
                    100.0 * max,
                    a.cells[p.a].cell_id,
                    a.cells[p.a].short(),
                    a.cells[p.b].cell_id,
                    a.cells[p.b].short(),
                    p.images,
                    if names.is_empty() {
                        "nothing".into()
                    } else {
                        names.join(", ")
                    }
                ),
            });
        }
    }
    if let Some(max) = bounds.max_slowdown {
        for c in &a.contrasts {
            // Beyond the bound, beyond the cells' own noise floor, and with an interval that
            // excludes no change: a slowdown the cells' dispersion cannot explain.
            if c.meant_faster && c.change.value > max.max(c.noise) && c.change.lo > 0.0 {
                out.push(Violation {
                    what: format!(
                        "slowdown {:+.1}% [{:+.1}%, {:+.1}%] > {:.1}% going {} -> {} ({}): {} -> {}",
                        100.0 * c.change.value,
                        100.0 * c.change.lo,
                        100.0 * c.change.hi,
                        100.0 * max,
                        c.from_value,
                        c.to_value,
                        c.dimension.name(),
                        a.cells[c.from].cell_id,
                        a.cells[c.to].cell_id,
                    ),
                });
            }
        }
    }
    out
}

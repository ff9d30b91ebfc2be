//! `deltann check`: an analysis against bounds, for CI pipelines that gate model deployments.
//! Exit 0 within bounds, 1 outside (naming each offending pair), 2 on error.
//!
//! A gate must not fail on noise. A flip rate is held to its bound only beyond what the two cells'
//! own noise explains (the mean of their run-to-run flip rates, measured from repetitions: a run
//! strays from its cell's usual answer at about half the rate two runs disagree, so two cells
//! that differ only by noise disagree at about the mean of their floors),
//! and optionally on a bound of its 95% interval rather than the point estimate: the lower bound
//! fails only what the images prove, the upper bound also what they cannot rule out. Slowdowns
//! count beyond the cells' latency dispersion and only when the interval excludes no change.

use serde::{Deserialize, Serialize};

use crate::analysis::Analysis;
use crate::cells::{self, Dimension};
use crate::disagreement::PairStats;

/// Which value of a flip rate a gate compares with its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bound {
    /// The observed rate.
    #[default]
    Point,
    /// The lower end of its 95% Wilson interval: fail only what the sample proves.
    Lower,
    /// The upper end: fail also what the sample cannot rule out.
    Upper,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Self::Point => "point estimate",
            Self::Lower => "lower 95% bound",
            Self::Upper => "upper 95% bound",
        }
    }
}

/// A pair's flip rate beyond its cells' own run-to-run noise, `(floor_a + floor_b) / 2` (each
/// floor a cell's top-1 flips between its repetitions per repetition compared; 0 for a cell that
/// ran once), taken at `bound`, never below 0.
pub fn flip_rate_beyond_floor(p: &PairStats, floor_a: f64, floor_b: f64, bound: Bound) -> f64 {
    let rate = match bound {
        Bound::Point => p.flip_rate,
        Bound::Lower => p.flip_ci.0,
        Bound::Upper => p.flip_ci.1,
    };
    (rate - (floor_a + floor_b) / 2.0).max(0.0)
}

/// The bounds to hold.
#[derive(Clone, Debug, Default)]
pub struct Bounds {
    /// Largest acceptable top-1 flip rate between two cells of a family, beyond the cells'
    /// run-to-run floor (see [`flip_rate_beyond_floor`]).
    pub max_flip_rate: Option<f64>,
    /// Which value of the flip rate is held to `max_flip_rate`.
    pub bound: Bound,
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
        let floor = |cell: usize| {
            a.disagreement
                .floors
                .get(cell)
                .filter(|f| f.compared > 0)
                .map_or(0.0, |f| f.flip_rate)
        };
        let mut pairs: Vec<(&PairStats, f64)> = a
            .disagreement
            .pairs
            .iter()
            .map(|p| {
                let beyond = flip_rate_beyond_floor(p, floor(p.a), floor(p.b), bounds.bound);
                (p, beyond)
            })
            .filter(|(_, beyond)| *beyond > max)
            .collect();
        pairs.sort_by(|x, y| y.1.total_cmp(&x.1));
        for (p, beyond) in pairs {
            let dims = cells::differences(&a.cells[p.a], &a.cells[p.b]);
            if dims.iter().any(|d| bounds.skip.contains(d)) {
                continue;
            }
            let names: Vec<&str> = dims.iter().map(|d| d.name()).collect();
            out.push(Violation {
                what: format!(
                    "flip rate beyond floor {:.2}% > {:.2}% (rate {:.2}% [{:.2}%, {:.2}%] at its {}, \
                     less the floors' mean of {:.2}% and {:.2}%): {} [{}] vs {} [{}] ({} images; \
                     differ in {})",
                    100.0 * beyond,
                    100.0 * max,
                    100.0 * p.flip_rate,
                    100.0 * p.flip_ci.0,
                    100.0 * p.flip_ci.1,
                    bounds.bound.name(),
                    100.0 * floor(p.a),
                    100.0 * floor(p.b),
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

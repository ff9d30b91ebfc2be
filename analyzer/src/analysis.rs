//! The analysis of a store, shared by `report`, `check` and the TUI.
//!
//! It first advances the store's derived tables (see [`crate::derived`]: every pair of cells
//! that share a model family, a model and its declared variants, compared image by image as
//! parts are committed), then summarises them: pair statistics, each cell's floor, the
//! per-image findings (see [`crate::disagreement`]), and from those the attribution of disagreement to environment
//! dimensions (pairs that differ in one dimension only), labelled deviation signatures, classes
//! that flip most, near ties, and per-cell latency with bootstrap intervals and the one-dimension
//! performance contrasts, flagged when a change meant to speed things up slows them down by more
//! than the cells' own noise.

use std::collections::{BTreeMap, HashMap};

use deltann_store::Store;
use serde::{Deserialize, Serialize};

use crate::cells::{self, CellInfo, Dimension, ModelFacts};
use crate::derived;
use crate::disagreement::{self, Disagreement};
use crate::error::Result;
use crate::metrics;
use crate::stats::{self, Estimate};
use rayon::prelude::*;

/// Settings of an analysis.
#[derive(Clone, Debug)]
pub struct Options {
    /// Reference-cell top-1 margins below this are near ties.
    pub near_tie_margin: f32,
    /// A slowdown is flagged when it exceeds this many times the cells' combined dispersion.
    pub noise_multiple: f64,
    /// Draws for the bootstrap of contrasts.
    pub bootstrap_draws: usize,
    /// Which implementation computes the per-image findings and latencies (both give the same
    /// analysis; see [`crate::frames`]).
    pub frames: crate::frames::Engine,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            near_tie_margin: 0.05,
            noise_multiple: 1.0,
            bootstrap_draws: 2000,
            frames: crate::frames::Engine::default(),
        }
    }
}

/// Cells sharing a model family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub family: String,
    /// Indices into [`Analysis::cells`]; the first is the reference.
    pub cells: Vec<usize>,
    pub class_names: Option<Vec<String>>,
}

impl Group {
    /// A class's name, or its index.
    pub fn class_name(&self, class: i32) -> String {
        usize::try_from(class)
            .ok()
            .and_then(|c| self.class_names.as_ref()?.get(c))
            .map_or_else(
                || class.to_string(),
                |n| n.split(',').next().unwrap_or(n).to_string(),
            )
    }
}

/// How much disagreement one environment dimension explains.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    pub dimension: Dimension,
    /// Cell pairs that differ in this dimension only.
    pub pairs: usize,
    pub images: u64,
    pub flips: u64,
    /// Pooled over those pairs.
    pub flip_rate: f64,
    pub flip_ci: (f64, f64),
    /// The worst single pair.
    pub max_pair_flip_rate: f64,
    pub mean_abs_logit: Option<f64>,
    pub kl: Option<f64>,
}

/// A deviation signature with the parameters its deviating cells share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelledSignature {
    pub signature: disagreement::Signature,
    /// e.g. `precision=int8` or `engine=tract, optimization=tract optimized`; `mixed` when the
    /// deviating cells share nothing the others lack.
    pub label: String,
}

/// One cell's latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellPerf {
    pub cell: usize,
    pub rows: usize,
    pub p50_ms: Option<Estimate>,
    pub p90_ms: Option<Estimate>,
    pub p99_ms: Option<Estimate>,
    pub throughput_ips: Option<f64>,
    /// 1.4826 MAD / median of per-image latency.
    pub dispersion: f64,
}

/// A latency contrast between two cells that differ in one dimension.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    pub dimension: Dimension,
    /// The "before" cell (lower optimization, fewer threads, smaller batch, fp32, older engine).
    pub from: usize,
    pub to: usize,
    pub from_value: String,
    pub to_value: String,
    /// Relative change of p50 latency (positive = slower), with its bootstrap interval.
    pub change: Estimate,
    /// Whether `to` is meant to be faster.
    pub meant_faster: bool,
    /// The noise floor the change was held against: multiple x combined dispersion.
    pub noise: f64,
    /// A change meant to speed things up that slows them down beyond noise.
    pub flagged: bool,
}

/// Everything known about a store's disagreements and performance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub store: String,
    /// Committed parts when the analysis ran (a cache key).
    pub parts: usize,
    pub cells: Vec<CellInfo>,
    pub groups: Vec<Group>,
    pub disagreement: Disagreement,
    pub attribution: Vec<Attribution>,
    pub signatures: Vec<LabelledSignature>,
    pub performance: Vec<CellPerf>,
    pub contrasts: Vec<Contrast>,
    /// `deltann localize`'s results (latest per pair, kind and image).
    #[serde(default)]
    pub localizations: Vec<cells::Localization>,
}

impl Analysis {
    /// The group a cell belongs to.
    pub fn group_of(&self, cell: usize) -> Option<&Group> {
        self.groups.iter().find(|g| g.cells.contains(&cell))
    }
}

/// Groups cells by family; cells without outputs are left out of the pairs (but kept in `cells`).
pub fn groups(cells: &[CellInfo], models: &HashMap<String, ModelFacts>) -> Vec<Group> {
    let mut by_family: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in cells.iter().enumerate() {
        by_family.entry(c.family.as_str()).or_default().push(i);
    }
    // The reference (first) cell of a family must have run: cells that failed go last.
    for members in by_family.values_mut() {
        members.sort_by_key(|&i| cells[i].status != "ok");
    }
    by_family
        .into_iter()
        .map(|(family, cells_of)| {
            let class_names = models
                .get(family)
                .or_else(|| cells_of.first().and_then(|&c| models.get(&cells[c].model)))
                .and_then(|m| m.class_names.clone());
            Group {
                family: family.to_string(),
                cells: cells_of,
                class_names,
            }
        })
        .collect()
}

/// Analyses a store: advances its derived tables, then summarises them.
///
/// # Errors
/// Fails when committed parts cannot be read or `STORE/derived/` cannot be written.
pub fn analyze(store: &Store, options: &Options) -> Result<Analysis> {
    derived::advance(store, false, &mut |_| {})?;
    let state = derived::State::load(store.root())?.unwrap_or_default();
    from_derived(store, &state, options)
}

/// A cell that has committed outputs but no `cells` row yet: it is still running (or its
/// collector died). What the manifest and the `models` table tell is filled in.
fn running_cell(f: &derived::Folded, models: &HashMap<String, ModelFacts>) -> CellInfo {
    CellInfo {
        cell_id: f.cell_id.clone(),
        attempt: 0,
        tag: f.cell_id.chars().take(16).collect(),
        model: f.model.clone(),
        family: f.family.clone(),
        precision: models
            .get(&f.model)
            .map_or_else(String::new, |m| m.precision.clone()),
        engine: f.engine.clone(),
        engine_version: String::new(),
        ort_optimization: None,
        tract_plan: None,
        device: String::new(),
        engine_settings: None,
        threads: 0,
        batch_size: 0,
        repetitions: 0,
        resize_filter: String::new(),
        preprocess: String::new(),
        status: RUNNING.to_string(),
        error: None,
        images_ok: 0,
        latency_p50_ms: None,
        started_at_us: i64::MAX,
        host: String::new(),
        show_host: false,
    }
}

/// The status shown for a cell with committed outputs and no `cells` row yet.
pub const RUNNING: &str = "running";

/// Summarises a store's derived state (as [`derived::advance`] left it).
///
/// # Errors
/// Fails when the store's tables or the derived parts cannot be read.
pub fn from_derived(store: &Store, state: &derived::State, options: &Options) -> Result<Analysis> {
    let mut cells = cells::load_cells(store)?;
    let models = cells::load_models(store)?;
    let mut index: HashMap<String, usize> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| (c.cell_id.clone(), i))
        .collect();
    for f in &state.folded {
        if !index.contains_key(&f.cell_id) {
            index.insert(f.cell_id.clone(), cells.len());
            cells.push(running_cell(f, &models));
        }
    }
    for acc in &state.cells {
        if let Some(&i) = index.get(&acc.cell_id)
            && cells[i].status == RUNNING
        {
            cells[i].images_ok = i64::try_from(acc.images).unwrap_or(i64::MAX);
        }
    }
    let groups = groups(&cells, &models);
    let mut position = vec![(usize::MAX, usize::MAX); cells.len()];
    for (g, group) in groups.iter().enumerate() {
        for (p, &c) in group.cells.iter().enumerate() {
            position[c] = (g, p);
        }
    }

    let mut pairs: Vec<disagreement::PairStats> = state
        .pairs
        .iter()
        .filter(|acc| acc.images > 0)
        .filter_map(|acc| {
            let (x, y) = (*index.get(&acc.cell_a)?, *index.get(&acc.cell_b)?);
            Some(if position[x] <= position[y] {
                disagreement::PairStats::from_acc(acc, x, y, false)
            } else {
                disagreement::PairStats::from_acc(acc, y, x, true)
            })
        })
        .collect();
    pairs.sort_by_key(|p| (position[p.a], position[p.b]));
    let mut floors: Vec<disagreement::CellFloor> = (0..cells.len())
        .map(|cell| disagreement::CellFloor {
            cell,
            ..Default::default()
        })
        .collect();
    for acc in &state.cells {
        if let Some(&i) = index.get(&acc.cell_id) {
            floors[i] = disagreement::CellFloor {
                cell: i,
                images: acc.images,
                compared: acc.compared,
                flips: acc.flips,
                flip_rate: if acc.compared > 0 {
                    acc.flips as f64 / acc.compared as f64
                } else {
                    0.0
                },
                nondeterministic: acc.nondeterministic,
                max_abs_logit: acc.max_abs_logit,
                labelled: acc.labelled,
                correct: acc.correct,
            };
        }
    }

    let group_cells: Vec<Vec<usize>> = groups.iter().map(|g| g.cells.clone()).collect();
    let (findings, latencies) = crate::frames::compute(
        options.frames,
        store.root(),
        state,
        &index,
        &group_cells,
        cells.len(),
        options.near_tie_margin,
    )?;
    let disagreement = Disagreement {
        images: findings.images,
        pairs,
        floors,
        signatures: findings.signatures,
        classes: findings.classes,
        near_ties: findings.near_ties,
        unstable: findings.unstable,
        latencies,
    };

    let attribution = attribute(&cells, &disagreement);
    let signatures = disagreement
        .signatures
        .iter()
        .map(|s| LabelledSignature {
            label: label(&cells, &groups[s.group].cells, &s.cells),
            signature: s.clone(),
        })
        .collect();
    let sorted = disagreement.sorted_latencies_ms();
    let performance = performance(&sorted);
    let contrasts = contrasts(&cells, &groups, &performance, &sorted, options);
    Ok(Analysis {
        store: store.root().display().to_string(),
        parts: store.entries().len(),
        cells,
        groups,
        disagreement,
        attribution,
        signatures,
        performance,
        contrasts,
        localizations: cells::load_localizations(store)?,
    })
}

fn attribute(cells: &[CellInfo], d: &Disagreement) -> Vec<Attribution> {
    let mut out = Vec::new();
    for dim in Dimension::ALL {
        let pairs: Vec<_> = d
            .pairs
            .iter()
            .filter(|p| cells[p.a].status != RUNNING && cells[p.b].status != RUNNING)
            .filter(|p| cells::differences(&cells[p.a], &cells[p.b]) == [dim])
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let images: u64 = pairs.iter().map(|p| p.images).sum();
        let flips: u64 = pairs.iter().map(|p| p.flips).sum();
        let mean = |f: fn(&disagreement::PairStats) -> Option<f64>| {
            let v: Vec<f64> = pairs.iter().filter_map(|p| f(p)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        out.push(Attribution {
            dimension: dim,
            pairs: pairs.len(),
            images,
            flips,
            flip_rate: if images > 0 {
                flips as f64 / images as f64
            } else {
                0.0
            },
            flip_ci: metrics::wilson(flips, images),
            max_pair_flip_rate: pairs.iter().map(|p| p.flip_rate).fold(0.0, f64::max),
            mean_abs_logit: mean(|p| p.mean_abs_logit),
            kl: mean(|p| p.kl),
        });
    }
    out.sort_by(|a, b| {
        b.flip_rate
            .total_cmp(&a.flip_rate)
            .then(b.kl.unwrap_or(0.0).total_cmp(&a.kl.unwrap_or(0.0)))
    });
    out
}

/// What a signature's deviating cells share that the rest of the group does not all share.
fn label(cells: &[CellInfo], group: &[usize], deviating: &[usize]) -> String {
    let short = |c: &CellInfo, d: Dimension| match d {
        Dimension::Precision => c.precision.clone(),
        Dimension::Optimization => format!("{} {}", c.engine, c.optimization()),
        Dimension::EngineVersion => format!("{} {}", c.engine, c.engine_version),
        _ => c.value(d),
    };
    let mut parts = Vec::new();
    for d in Dimension::ALL {
        let v = short(&cells[deviating[0]], d);
        let shared = deviating.iter().all(|&c| short(&cells[c], d) == v);
        let everyone = group.iter().all(|&c| short(&cells[c], d) == v);
        if shared && !everyone {
            parts.push(format!("{}={v}", d.name()));
        }
    }
    if parts.is_empty() {
        "mixed".into()
    } else {
        parts.join(", ")
    }
}

fn performance(sorted: &[Vec<f64>]) -> Vec<CellPerf> {
    sorted
        .iter()
        .enumerate()
        .map(|(cell, ms)| {
            let ms = ms.as_slice();
            let total: f64 = ms.iter().sum();
            CellPerf {
                cell,
                rows: ms.len(),
                p50_ms: stats::quantile(ms, 0.5),
                p90_ms: stats::quantile(ms, 0.9),
                p99_ms: stats::quantile(ms, 0.99),
                throughput_ips: (total > 0.0).then(|| ms.len() as f64 / (total / 1e3)),
                dispersion: stats::relative_dispersion(ms),
            }
        })
        .collect()
}

/// Order of a dimension's values by intent: is `b` meant to be at least as fast as `a`?
/// `Some(true)` when b is meant faster, `Some(false)` when a is, `None` when neither is.
fn meant_faster(d: Dimension, a: &CellInfo, b: &CellInfo) -> Option<bool> {
    let level = |c: &CellInfo| match c.optimization() {
        "disabled" | "decluttered" => 0,
        "basic" => 1,
        "extended" => 2,
        "all" | "optimized" => 3,
        _ => -1,
    };
    let version = |c: &CellInfo| -> Vec<u64> {
        c.engine_version
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let cmp = match d {
        Dimension::Optimization => level(a).cmp(&level(b)),
        Dimension::Threads => a.threads.cmp(&b.threads),
        Dimension::BatchSize => a.batch_size.cmp(&b.batch_size),
        Dimension::EngineVersion => version(a).cmp(&version(b)),
        Dimension::Precision => {
            let int8 =
                |c: &CellInfo| c.precision.starts_with("int8") || c.precision.starts_with("uint8");
            int8(a).cmp(&int8(b))
        }
        Dimension::EngineSettings => {
            // Of the settings, only TVM's optimisation level has an intended speed order.
            let tvm = |c: &CellInfo| {
                c.engine_settings.as_deref().and_then(|s| {
                    s.split(';')
                        .find_map(|kv| kv.strip_prefix("tvm_opt_level="))
                        .and_then(|v| v.parse::<i32>().ok())
                })
            };
            match (tvm(a), tvm(b)) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => return None,
            }
        }
        Dimension::Engine
        | Dimension::ResizeFilter
        | Dimension::Device
        | Dimension::Preprocess
        | Dimension::Host => {
            return None;
        }
    };
    match cmp {
        std::cmp::Ordering::Less => Some(true),
        std::cmp::Ordering::Greater => Some(false),
        std::cmp::Ordering::Equal => None,
    }
}

fn contrasts(
    cells: &[CellInfo],
    groups: &[Group],
    perf: &[CellPerf],
    sorted: &[Vec<f64>],
    options: &Options,
) -> Vec<Contrast> {
    // The pairs that differ in one dimension, in group order; their bootstrap intervals (2,000
    // draws each, hundreds of pairs) are drawn in parallel, each from its own seed.
    let mut candidates = Vec::new();
    for g in groups {
        for (i, &x) in g.cells.iter().enumerate() {
            for &y in &g.cells[i + 1..] {
                if cells[x].status == RUNNING || cells[y].status == RUNNING {
                    continue;
                }
                let diff = cells::differences(&cells[x], &cells[y]);
                let [dim] = diff.as_slice() else { continue };
                if sorted[x].is_empty() || sorted[y].is_empty() {
                    continue;
                }
                let intent = meant_faster(*dim, &cells[x], &cells[y]);
                let (from, to) = if intent == Some(false) {
                    (y, x)
                } else {
                    (x, y)
                };
                candidates.push((*dim, intent.is_some(), from, to));
            }
        }
    }
    let mut out: Vec<Contrast> = candidates
        .into_par_iter()
        .filter_map(|(dim, meant, from, to)| {
            let seed = (from as u64) << 32 | to as u64;
            let change = stats::relative_change(
                &sorted[from],
                &sorted[to],
                0.5,
                options.bootstrap_draws,
                seed,
            )?;
            let noise = options.noise_multiple
                * (perf[from].dispersion.powi(2) + perf[to].dispersion.powi(2)).sqrt();
            Some(Contrast {
                dimension: dim,
                from,
                to,
                from_value: cells[from].value(dim),
                to_value: cells[to].value(dim),
                flagged: meant && change.lo > 0.0 && change.value > noise,
                change,
                meant_faster: meant,
                noise,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.flagged
            .cmp(&a.flagged)
            .then(b.change.value.total_cmp(&a.change.value))
    });
    out
}

/// Cache file for the analysis, under the store's `_cache/` (not results: safe to delete).
pub const CACHE_FILE: &str = "analysis-v3.json";

#[derive(Serialize, Deserialize)]
struct Cached {
    /// The analysis that wrote it: another one recomputes.
    analysis_version: u32,
    parts: usize,
    last_seq: u64,
    folded: usize,
    next_part: u64,
    noise_multiple: f64,
    near_tie_margin: f32,
    bootstrap_draws: usize,
    analysis: Analysis,
}

/// The analysis of `store` after advancing its derived tables; from the cache when nothing was
/// committed or folded in since it was computed with the same options (a TUI or a second
/// report on a million rows then starts at once). `rebuild` recomputes the derived tables.
///
/// # Errors
/// As [`analyze`]. A cache that cannot be read or written is ignored.
pub fn cached(store: &Store, options: &Options, use_cache: bool) -> Result<Analysis> {
    derived::advance(store, false, &mut |_| {})?;
    let state = derived::State::load(store.root())?.unwrap_or_default();
    let path = store
        .root()
        .join(deltann_store::layout::CACHE_DIR)
        .join(CACHE_FILE);
    let last_seq = store.entries().last().map_or(0, |e| e.seq);
    let key = |c: &Cached| {
        c.analysis_version == derived::ANALYSIS_VERSION
            && c.parts == store.entries().len()
            && c.last_seq == last_seq
            && c.folded == state.folded.len()
            && c.next_part == state.next_part
            && c.bootstrap_draws == options.bootstrap_draws
            && c.noise_multiple == options.noise_multiple
            && c.near_tie_margin == options.near_tie_margin
    };
    if use_cache
        && let Ok(text) = std::fs::read(&path)
        && let Ok(c) = serde_json::from_slice::<Cached>(&text)
        && key(&c)
    {
        let mut analysis = c.analysis;
        analysis.store = store.root().display().to_string();
        return Ok(analysis);
    }
    let analysis = from_derived(store, &state, options)?;
    if use_cache {
        let cached = Cached {
            analysis_version: derived::ANALYSIS_VERSION,
            parts: store.entries().len(),
            last_seq,
            folded: state.folded.len(),
            next_part: state.next_part,
            noise_multiple: options.noise_multiple,
            near_tie_margin: options.near_tie_margin,
            bootstrap_draws: options.bootstrap_draws,
            analysis,
        };
        if let Ok(text) = serde_json::to_vec(&cached) {
            // Per process: two readers refreshing the cache at once must not write one file.
            let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(store.root()));
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        return Ok(cached.analysis);
    }
    Ok(analysis)
}

//! The analysis's frames in Polars: lazy frames over the derived Parquet parts compute the
//! per-image findings (deviation signatures, classes that flip, near ties, unstable images), every
//! cell's sorted latencies, and each pair's flip count from `comparisons`.
//!
//! The same findings are computed by a hand-written pass ([`crate::disagreement::summarise`] over
//! [`crate::derived::read::answers`]). Both are kept on purpose: they are two independent
//! implementations of one definition, and the suite checks that they agree on every store it
//! builds (a differential test of the differential tester). [`Engine`] picks the one a report
//! uses; the default is the one measured faster (BENCHMARKS.md, "Summaries: Polars against the
//! hand-written pass").
//!
//! Polars has its own Arrow (polars-arrow): nothing passes between it and arrow-rs except the
//! Parquet files themselves.

use std::collections::HashMap;
use std::path::Path;

use polars::prelude as pl;
use polars::prelude::{IntoLazy, col, lit};

use crate::derived::{DerivedTable, State};
use crate::disagreement::{
    ClassFlips, Findings, NearTie, SIGNATURE_EXAMPLES, Signature, UnstableImage,
};
use crate::error::{Error, Result};

/// Which implementation computes the per-image findings and latencies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// Lazy Polars frames over the derived parts ([`findings`]).
    Polars,
    /// One pass over `cell_images` in Rust ([`crate::disagreement::summarise`]).
    #[default]
    Native,
}

fn polars_error(what: &str, e: pl::PolarsError) -> Error {
    Error::Polars {
        what: what.to_string(),
        source: e,
    }
}

/// Every derived part of `table` as one lazy frame (`None` when there is none).
fn scan(root: &Path, state: &State, table: DerivedTable) -> Result<Option<pl::LazyFrame>> {
    let mut frames = Vec::new();
    for part in state.parts_of(table) {
        let path = root.join(&part.path);
        let text = path
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("{}: not a UTF-8 path", path.display())))?;
        let lf =
            pl::LazyFrame::scan_parquet(pl::PlRefPath::new(text), pl::ScanArgsParquet::default())
                .map_err(|e| polars_error(&path.display().to_string(), e))?;
        frames.push(lf);
    }
    if frames.is_empty() {
        return Ok(None);
    }
    pl::concat(frames, pl::UnionArgs::default())
        .map(Some)
        .map_err(|e| polars_error(table.name(), e))
}

/// The cells the caller analyses: id, index, and for the cells of a group the group and the
/// position in it (0 = the reference); null for the others.
fn cells_frame(index: &HashMap<String, usize>, groups: &[Vec<usize>]) -> Result<pl::DataFrame> {
    let mut place = HashMap::new();
    for (g, cells) in groups.iter().enumerate() {
        for (p, &c) in cells.iter().enumerate() {
            place.insert(c, (g, p));
        }
    }
    let small = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let mut ids = Vec::new();
    let (mut cell, mut group, mut pos) = (Vec::new(), Vec::new(), Vec::new());
    for (id, &c) in index {
        ids.push(id.as_str());
        cell.push(small(c));
        let at = place.get(&c);
        group.push(at.map(|&(g, _)| small(g)));
        pos.push(at.map(|&(_, p)| small(p)));
    }
    pl::df!(
        "cell_id" => ids,
        "cell" => cell,
        "group" => group,
        "pos" => pos,
    )
    .map_err(|e| polars_error("cells", e))
}

/// The per-image findings and every cell's latencies by `engine` (see [`findings`] for the
/// arguments).
///
/// # Errors
/// Fails when a derived part cannot be read.
pub fn compute(
    engine: Engine,
    root: &Path,
    state: &State,
    index: &HashMap<String, usize>,
    groups: &[Vec<usize>],
    cells: usize,
    near_tie_margin: f32,
) -> Result<(Findings, Vec<Vec<i64>>)> {
    match engine {
        Engine::Polars => findings(root, state, index, groups, cells, near_tie_margin),
        Engine::Native => {
            let per_image = crate::derived::read::answers(root, state, index, cells)?;
            let found = crate::disagreement::summarise(
                groups,
                per_image
                    .images
                    .iter()
                    .map(|(id, a)| (id.as_str(), a.as_slice())),
                near_tie_margin,
            );
            Ok((found, per_image.latencies))
        }
    }
}

/// The per-image findings and every cell's latencies (by the caller's cell index, unsorted in
/// the order Polars returns them), from the `cell_images` parts. `index` maps cell ids to the
/// caller's indices; `groups` holds each group's cells, reference first.
///
/// # Errors
/// Fails when a derived part cannot be scanned or a frame cannot be computed.
pub fn findings(
    root: &Path,
    state: &State,
    index: &HashMap<String, usize>,
    groups: &[Vec<usize>],
    cells: usize,
    near_tie_margin: f32,
) -> Result<(Findings, Vec<Vec<i64>>)> {
    let mut latencies = vec![Vec::new(); cells];
    let Some(rows) = scan(root, state, DerivedTable::CellImages)? else {
        return Ok((Findings::default(), latencies));
    };
    let err = |what: &'static str| move |e: pl::PolarsError| polars_error(what, e);
    let known = cells_frame(index, groups)?.lazy();
    let rows = rows.select([
        col("cell_id"),
        col("image_id"),
        col("label"),
        col("top1"),
        col("top5")
            .list()
            .get(lit(1), true)
            .fill_null(lit(-1))
            .alias("top2"),
        col("top5_prob")
            .list()
            .get(lit(0), true)
            .fill_null(lit(0.0f32))
            .alias("p1"),
        col("top5_prob")
            .list()
            .get(lit(1), true)
            .fill_null(lit(0.0f32))
            .alias("p2"),
        col("latency_ns"),
    ]);
    // One scan of the parts; every frame below starts from this one (a lazy plan per result
    // would scan again).
    let all = rows
        .join(
            known,
            [col("cell_id")],
            [col("cell_id")],
            pl::JoinArgs::new(pl::JoinType::Inner),
        )
        .collect()
        .map_err(err("cell_images"))?;
    let answers = all.clone().lazy().filter(col("group").is_not_null());
    let key = [col("group"), col("image_id")];

    // Latencies per cell: every repetition of every image.
    let lat = all
        .clone()
        .lazy()
        .select([col("cell"), col("latency_ns")])
        .explode(
            pl::cols(["latency_ns"]),
            pl::ExplodeOptions {
                empty_as_null: false,
                keep_nulls: false,
            },
        )
        .group_by([col("cell")])
        .agg([col("latency_ns").drop_nulls()])
        .collect()
        .map_err(err("latencies"))?;
    let lc = lat
        .column("cell")
        .and_then(|c| c.u32())
        .map_err(err("latencies"))?;
    let ll = lat
        .column("latency_ns")
        .and_then(|c| c.list())
        .map_err(err("latencies"))?;
    for i in 0..lat.height() {
        if let (Some(c), Some(l)) = (lc.get(i), ll.get_as_series(i)) {
            let values = l.i64().map_err(err("latencies"))?;
            latencies[c as usize] = values.into_no_null_iter().collect();
        }
    }

    // The majority top-1 of each group x image: the most common answer, ties to the reference
    // cell's, then to the smallest class.
    let majority = answers
        .clone()
        .group_by(key.clone())
        .agg([col("top1")
            .filter(col("pos").eq(lit(0u32)))
            .first()
            .alias("ref_top1")])
        .join(
            answers
                .clone()
                .group_by([col("group"), col("image_id"), col("top1")])
                .agg([pl::len().alias("n")]),
            key.clone(),
            key.clone(),
            pl::JoinArgs::new(pl::JoinType::Inner),
        )
        .with_column(
            col("top1")
                .eq(col("ref_top1"))
                .fill_null(lit(false))
                .alias("is_ref"),
        )
        .group_by(key.clone())
        .agg([
            col("top1")
                .sort_by(
                    [col("n"), col("is_ref"), col("top1")],
                    pl::SortMultipleOptions::default()
                        .with_order_descending_multi([true, true, false]),
                )
                .first()
                .alias("majority"),
            pl::len().cast(pl::DataType::UInt32).alias("distinct"),
        ]);

    let images = answers
        .clone()
        .join(
            majority,
            key.clone(),
            key.clone(),
            pl::JoinArgs::new(pl::JoinType::Inner),
        )
        .with_column(col("top1").neq(col("majority")).alias("deviates"))
        .group_by(key.clone())
        .agg([
            col("majority").first(),
            col("distinct").first(),
            pl::len().cast(pl::DataType::UInt32).alias("cells"),
            col("label").drop_nulls().first().alias("truth"),
            col("cell")
                .sort_by([col("pos")], pl::SortMultipleOptions::default())
                .filter(col("deviates").sort_by([col("pos")], pl::SortMultipleOptions::default()))
                .alias("deviating"),
            col("deviates")
                .cast(pl::DataType::UInt32)
                .sum()
                .alias("n_deviating"),
            col("pos").min().eq(lit(0u32)).alias("has_ref"),
            col("top1")
                .filter(col("pos").eq(lit(0u32)))
                .first()
                .alias("ref_top1"),
            col("top2")
                .filter(col("pos").eq(lit(0u32)))
                .first()
                .alias("ref_top2"),
            col("p1")
                .filter(col("pos").eq(lit(0u32)))
                .first()
                .alias("ref_p1"),
            col("p2")
                .filter(col("pos").eq(lit(0u32)))
                .first()
                .alias("ref_p2"),
        ])
        .with_column(pl::coalesce(&[col("truth"), col("majority")]).alias("class"))
        .collect()
        .map_err(err("images"))?;

    let count = all
        .lazy()
        .select([col("image_id").n_unique().alias("n")])
        .collect()
        .map_err(err("images"))?;
    let mut out = Findings {
        images: count
            .column("n")
            .and_then(|c| c.cast(&pl::DataType::UInt64))
            .and_then(|c| c.u64().map(|c| c.get(0).unwrap_or(0)))
            .map_err(err("images"))?,
        ..Findings::default()
    };

    // Classes: images per (group, class) and how many of them have a deviating cell.
    let classes = images
        .clone()
        .lazy()
        .group_by([col("group"), col("class")])
        .agg([
            pl::len().cast(pl::DataType::UInt64).alias("images"),
            col("n_deviating")
                .gt(lit(0u32))
                .cast(pl::DataType::UInt64)
                .sum()
                .alias("flipped"),
        ])
        .collect()
        .map_err(err("classes"))?;
    let g = classes
        .column("group")
        .and_then(|c| c.u32())
        .map_err(err("classes"))?;
    let c = classes
        .column("class")
        .and_then(|c| c.i32())
        .map_err(err("classes"))?;
    let n = classes
        .column("images")
        .and_then(|c| c.u64())
        .map_err(err("classes"))?;
    let f = classes
        .column("flipped")
        .and_then(|c| c.u64())
        .map_err(err("classes"))?;
    for i in 0..classes.height() {
        out.classes.push(ClassFlips {
            group: g.get(i).unwrap_or(0) as usize,
            class: c.get(i).unwrap_or(-1),
            images: n.get(i).unwrap_or(0),
            flipped: f.get(i).unwrap_or(0),
        });
    }

    // Unstable images and the signatures they form.
    let unstable = images
        .clone()
        .lazy()
        .filter(col("n_deviating").gt(lit(0u32)))
        .collect()
        .map_err(err("unstable images"))?;
    let col_of = |name: &str| unstable.column(name).map_err(err("unstable images"));
    let g = col_of("group")?.u32().map_err(err("unstable images"))?;
    let ids = col_of("image_id")?.str().map_err(err("unstable images"))?;
    let truth = col_of("truth")?.i32().map_err(err("unstable images"))?;
    let distinct = col_of("distinct")?.u32().map_err(err("unstable images"))?;
    let majority = col_of("majority")?.i32().map_err(err("unstable images"))?;
    let cells_n = col_of("cells")?.u32().map_err(err("unstable images"))?;
    let deviating = col_of("deviating")?
        .list()
        .map_err(err("unstable images"))?;
    let mut signatures: HashMap<(usize, Vec<usize>), (u64, Vec<String>)> = HashMap::new();
    for i in 0..unstable.height() {
        let dev: Vec<usize> = match deviating.get_as_series(i) {
            Some(s) => s
                .u32()
                .map_err(err("unstable images"))?
                .into_no_null_iter()
                .map(|c| c as usize)
                .collect(),
            None => Vec::new(),
        };
        let present = cells_n.get(i).unwrap_or(0);
        let group = g.get(i).unwrap_or(0) as usize;
        let id = ids.get(i).unwrap_or_default();
        let sig = signatures.entry((group, dev.clone())).or_default();
        sig.0 += 1;
        sig.1.push(id.to_string());
        out.unstable.push(UnstableImage {
            group,
            image_id: id.to_string(),
            label: truth.get(i),
            distinct: distinct.get(i).unwrap_or(0),
            majority_share: (present as usize - dev.len()) as f64 / f64::from(present.max(1)),
            majority: majority.get(i).unwrap_or(-1),
            cells: present,
            deviating: dev,
        });
    }
    out.signatures = signatures
        .into_iter()
        .map(|((group, cells), (images, mut examples))| {
            examples.sort_unstable();
            examples.truncate(SIGNATURE_EXAMPLES);
            Signature {
                group,
                cells,
                images,
                examples,
            }
        })
        .collect();

    // Near ties of each group's reference cell.
    let ties = images
        .lazy()
        .filter(
            col("has_ref")
                .and(col("ref_top2").gt_eq(lit(0i32)))
                .and((col("ref_p1") - col("ref_p2")).lt(lit(near_tie_margin))),
        )
        .select([
            col("group"),
            col("image_id"),
            (col("ref_p1") - col("ref_p2")).alias("margin"),
            col("ref_top1"),
            col("ref_top2"),
            col("distinct").gt(lit(1u32)).alias("flipped"),
        ])
        .collect()
        .map_err(err("near ties"))?;
    let col_of = |name: &str| ties.column(name).map_err(err("near ties"));
    let g = col_of("group")?.u32().map_err(err("near ties"))?;
    let ids = col_of("image_id")?.str().map_err(err("near ties"))?;
    let margin = col_of("margin")?.f32().map_err(err("near ties"))?;
    let t1 = col_of("ref_top1")?.i32().map_err(err("near ties"))?;
    let t2 = col_of("ref_top2")?.i32().map_err(err("near ties"))?;
    let flipped = col_of("flipped")?.bool().map_err(err("near ties"))?;
    for i in 0..ties.height() {
        out.near_ties.push(NearTie {
            group: g.get(i).unwrap_or(0) as usize,
            image_id: ids.get(i).unwrap_or_default().to_string(),
            margin: margin.get(i).unwrap_or(0.0),
            top1: t1.get(i).unwrap_or(-1),
            top2: t2.get(i).unwrap_or(-1),
            flipped: flipped.get(i).unwrap_or(false),
        });
    }
    crate::disagreement::order(&mut out);
    Ok((out, latencies))
}

/// Images and flips per pair of cells, counted from the `comparisons` parts: `(cell_a, cell_b)`
/// to `(images, flips)`. The running sums in the derived state hold the same counts; this is
/// their independent check (and a measure of what a scan costs against them).
///
/// # Errors
/// Fails when a derived part cannot be scanned.
pub fn pair_flips(root: &Path, state: &State) -> Result<HashMap<(String, String), (u64, u64)>> {
    let mut out = HashMap::new();
    let Some(rows) = scan(root, state, DerivedTable::Comparisons)? else {
        return Ok(out);
    };
    let err = |e: pl::PolarsError| polars_error("comparisons", e);
    let df = rows
        .group_by([col("pair")])
        .agg([
            pl::len().cast(pl::DataType::UInt64).alias("images"),
            col("flip").cast(pl::DataType::UInt64).sum().alias("flips"),
        ])
        .collect()
        .map_err(err)?;
    let k = df.column("pair").and_then(|c| c.i32()).map_err(err)?;
    let n = df.column("images").and_then(|c| c.u64()).map_err(err)?;
    let f = df.column("flips").and_then(|c| c.u64()).map_err(err)?;
    for i in 0..df.height() {
        // The files name a pair by its number in the derived state's `pairs`.
        let pair = state.pair(k.get(i).unwrap_or(-1), "comparisons")?;
        out.insert(
            (pair.cell_a.clone(), pair.cell_b.clone()),
            (n.get(i).unwrap_or(0), f.get(i).unwrap_or(0)),
        );
    }
    Ok(out)
}

//! `deltann report`: an analysis as readable tables (terminal or Markdown) or as JSON.
//!
//! Cells are numbered (#1, #2, ...) in the first table and referred to by number after it, so
//! wide environment descriptions appear once.

use std::fmt::Write;

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{ContentArrangement, Table};

use crate::analysis::Analysis;
use crate::cells;
use crate::error::Result;
use crate::stats::Estimate;

/// Report formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReportFormat {
    #[default]
    Table,
    Markdown,
    Json,
}

/// Rows shown per section (JSON has everything).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub pairs: usize,
    pub signatures: usize,
    pub classes: usize,
    pub near_ties: usize,
    pub contrasts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pairs: 15,
            signatures: 10,
            classes: 10,
            near_ties: 10,
            contrasts: 15,
        }
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn ci(x: (f64, f64)) -> String {
    format!("[{}, {}]", pct(x.0), pct(x.1))
}

fn est_ms(e: Option<Estimate>) -> String {
    e.map_or_else(
        || "-".into(),
        |e| format!("{:.2} [{:.2}, {:.2}]", e.value, e.lo, e.hi),
    )
}

fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Small magnitudes (logit differences, KL) in scientific notation; exact zero as 0.
fn sci(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) => format!("{v:.2e}"),
    }
}

fn new_table(format: ReportFormat, header: Vec<&str>) -> Table {
    let mut t = Table::new();
    t.load_preset(if format == ReportFormat::Markdown {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    t.set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(header);
    t
}

fn heading(out: &mut String, format: ReportFormat, title: &str, note: &str) {
    if format == ReportFormat::Markdown {
        let _ = write!(out, "\n## {title}\n\n{note}\n\n");
    } else {
        let _ = write!(out, "\n{title}\n{note}\n");
    }
}

/// Renders an analysis.
///
/// # Errors
/// Fails only if JSON serialisation fails.
pub fn render(a: &Analysis, format: ReportFormat, limits: Limits) -> Result<String> {
    if format == ReportFormat::Json {
        return serde_json::to_string_pretty(a).map_err(|e| crate::Error::Invalid(e.to_string()));
    }
    let mut out = String::new();
    let failed = a.cells.iter().filter(|c| c.status != "ok").count();
    let title = format!(
        "deltann report: {} ({} cells, {} failed; {} images; {} cell pairs compared)",
        a.store,
        a.cells.len(),
        failed,
        a.disagreement.images,
        a.disagreement.pairs.len()
    );
    if format == ReportFormat::Markdown {
        let _ = writeln!(out, "# {title}");
    } else {
        let _ = writeln!(out, "{title}");
    }

    heading(
        &mut out,
        format,
        "Cells",
        "Top-1 on labelled images (first repetition); p50 latency with its 95% bootstrap interval; \
         floor = top-1 flips and non-identical logits between a cell's own repetitions.",
    );
    let mut t = new_table(
        format,
        vec![
            "#",
            "cell",
            "model",
            "environment",
            "status",
            "top-1",
            "p50 ms [95% CI]",
            "floor flips",
            "nondet.",
            "floor max |Δ|",
        ],
    );
    for (i, c) in a.cells.iter().enumerate() {
        let floor = &a.disagreement.floors[i];
        let acc = (floor.labelled > 0).then(|| floor.correct as f64 / floor.labelled as f64);
        let status = match &c.error {
            Some(e) if c.status != "ok" => {
                format!("{}: {}", c.status, e.chars().take(40).collect::<String>())
            }
            _ => c.status.clone(),
        };
        t.add_row(vec![
            format!("#{}", i + 1),
            c.cell_id.clone(),
            c.model.clone(),
            format!("{}{}", c.tag, c.at_host()),
            status,
            acc.map_or_else(|| "-".into(), pct),
            est_ms(a.performance[i].p50_ms),
            if floor.compared > 0 {
                format!("{}/{}", floor.flips, floor.compared)
            } else {
                "-".into()
            },
            if floor.compared > 0 {
                format!("{}/{}", floor.nondeterministic, floor.compared)
            } else {
                "-".into()
            },
            if floor.compared > 0 {
                sci(floor.max_abs_logit)
            } else {
                "-".into()
            },
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Latency per cell",
        "Per-image latency (every repetition; for batches, the batch latency's per-image \
         share): quantiles with 95% bootstrap intervals, throughput, and dispersion \
         (1.4826 MAD / median).",
    );
    let mut t = new_table(
        format,
        vec![
            "#",
            "rows",
            "p50 ms [95% CI]",
            "p90 ms [95% CI]",
            "p99 ms [95% CI]",
            "img/s",
            "dispersion",
        ],
    );
    for p in &a.performance {
        t.add_row(vec![
            format!("#{}", p.cell + 1),
            p.rows.to_string(),
            est_ms(p.p50_ms),
            est_ms(p.p90_ms),
            est_ms(p.p99_ms),
            p.throughput_ips
                .map_or_else(|| "-".into(), |v| format!("{v:.1}")),
            pct(p.dispersion),
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Which dimension explains the disagreement",
        "Pairs of cells that differ in that dimension alone, pooled: flip rate with its 95% Wilson \
         interval, the worst pair, mean absolute logit difference and mean KL divergence.",
    );
    let mut t = new_table(
        format,
        vec![
            "dimension",
            "pairs",
            "images",
            "flip rate [95% CI]",
            "worst pair",
            "mean |Δlogit|",
            "KL",
        ],
    );
    for r in &a.attribution {
        t.add_row(vec![
            r.dimension.name().to_string(),
            r.pairs.to_string(),
            r.images.to_string(),
            format!("{} {}", pct(r.flip_rate), ci(r.flip_ci)),
            pct(r.max_pair_flip_rate),
            sci(r.mean_abs_logit),
            sci(r.kl),
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Most disagreeing pairs",
        "Images both cells ran (first repetition). Jaccard and RBO (p = 0.9) of the top-5, Kendall \
         tau over shared top-5 labels, logit differences, KL(a || b), accuracy of each side, and \
         each side's own run-to-run flips for comparison.",
    );
    let mut pairs: Vec<_> = a.disagreement.pairs.iter().collect();
    pairs.sort_by(|x, y| {
        y.flip_rate
            .total_cmp(&x.flip_rate)
            .then(y.kl.unwrap_or(0.0).total_cmp(&x.kl.unwrap_or(0.0)))
    });
    let mut t = new_table(
        format,
        vec![
            "a",
            "b",
            "differs in",
            "images",
            "flip rate [95% CI]",
            "jaccard",
            "rbo",
            "tau",
            "max |Δ|",
            "mean |Δ|",
            "KL",
            "acc a / b",
            "floor a / b",
        ],
    );
    for p in pairs.iter().take(limits.pairs) {
        let dims: Vec<&str> = cells::differences(&a.cells[p.a], &a.cells[p.b])
            .iter()
            .map(|d| d.name())
            .collect();
        let acc = if p.labelled > 0 {
            format!(
                "{} / {}",
                pct(p.correct_a as f64 / p.labelled as f64),
                pct(p.correct_b as f64 / p.labelled as f64)
            )
        } else {
            "-".into()
        };
        let (fa, fb) = (&a.disagreement.floors[p.a], &a.disagreement.floors[p.b]);
        let floor = |f: &crate::disagreement::CellFloor| {
            if f.compared > 0 {
                pct(f.flip_rate)
            } else {
                "-".into()
            }
        };
        t.add_row(vec![
            format!("#{}", p.a + 1),
            format!("#{}", p.b + 1),
            if dims.is_empty() {
                "nothing (replicate)".into()
            } else {
                dims.join(", ")
            },
            p.images.to_string(),
            format!("{} {}", pct(p.flip_rate), ci(p.flip_ci)),
            format!("{:.3}", p.jaccard_top5),
            format!("{:.3}", p.rbo_top5),
            opt(p.kendall_tau, 3),
            sci(p.max_abs_logit),
            sci(p.mean_abs_logit),
            sci(p.kl),
            acc,
            format!("{} / {}", floor(fa), floor(fb)),
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Deviation signatures",
        "Images grouped by the set of cells whose top-1 differs from their family's majority, \
         largest groups first, labelled with what those cells share.",
    );
    let mut t = new_table(
        format,
        vec![
            "family",
            "deviating cells",
            "shared by them",
            "images",
            "examples",
        ],
    );
    for s in a.signatures.iter().take(limits.signatures) {
        let cells: Vec<String> = s
            .signature
            .cells
            .iter()
            .map(|c| format!("#{}", c + 1))
            .collect();
        t.add_row(vec![
            a.groups[s.signature.group].family.clone(),
            cells.join(" "),
            s.label.clone(),
            s.signature.images.to_string(),
            s.signature.examples.join(" "),
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Classes that flip most",
        "By ground truth where known, else by majority top-1.",
    );
    let mut t = new_table(
        format,
        vec!["family", "class", "images", "flipped", "share"],
    );
    for c in a
        .disagreement
        .classes
        .iter()
        .filter(|c| c.flipped > 0)
        .take(limits.classes)
    {
        let g = &a.groups[c.group];
        t.add_row(vec![
            g.family.clone(),
            format!("{} {}", c.class, g.class_name(c.class)),
            c.images.to_string(),
            c.flipped.to_string(),
            pct(c.flipped as f64 / c.images.max(1) as f64),
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Near ties",
        "Images whose top-1 and top-2 probabilities are within the margin in the family's reference cell (its first).",
    );
    let mut t = new_table(
        format,
        vec![
            "family",
            "image",
            "margin",
            "top-1",
            "top-2",
            "flips elsewhere",
        ],
    );
    for n in a.disagreement.near_ties.iter().take(limits.near_ties) {
        let g = &a.groups[n.group];
        t.add_row(vec![
            g.family.clone(),
            n.image_id.clone(),
            format!("{:.4}", n.margin),
            g.class_name(n.top1),
            g.class_name(n.top2),
            if n.flipped { "yes".into() } else { "no".into() },
        ]);
    }
    let _ = writeln!(out, "{t}");

    heading(
        &mut out,
        format,
        "Performance contrasts",
        "Pairs that differ in one dimension: relative change of p50 latency (positive = slower) \
         with a 95% bootstrap interval. FLAG: a change meant to speed things up (higher \
         optimization, more threads, larger batch, int8, newer engine) that slows them down beyond \
         the noise floor (a multiple of the two cells' latency dispersion) and beyond its interval.",
    );
    let mut t = new_table(
        format,
        vec![
            "dimension",
            "from",
            "to",
            "cells",
            "change [95% CI]",
            "noise",
            "flag",
        ],
    );
    for c in a.contrasts.iter().take(limits.contrasts) {
        t.add_row(vec![
            c.dimension.name().to_string(),
            c.from_value.clone(),
            c.to_value.clone(),
            format!("#{} -> #{}", c.from + 1, c.to + 1),
            format!(
                "{:+.1}% [{:+.1}%, {:+.1}%]",
                100.0 * c.change.value,
                100.0 * c.change.lo,
                100.0 * c.change.hi
            ),
            pct(c.noise),
            if c.flagged {
                "FLAG".into()
            } else if c.meant_faster {
                String::new()
            } else {
                "(no intent)".into()
            },
        ]);
    }
    let _ = writeln!(out, "{t}");
    localizations(&mut out, a, format);
    Ok(out)
}

/// The results of `deltann localize` (shown only when there are some).
fn localizations(out: &mut String, a: &Analysis, format: ReportFormat) {
    if a.localizations.is_empty() {
        return;
    }
    heading(
        out,
        format,
        "Localisations",
        "From `deltann localize` (latest per pair and image; A is the reference). passes: the \
         smallest set of optimizers whose disabling makes B answer as A; layers: the first node \
         whose relative error exceeds the tolerance and what its inputs carried in, with that \
         ratio, and the first node that differs at all. The curves are in `node_errors`.",
    );
    let number = |id: &str| {
        a.cells
            .iter()
            .position(|c| c.cell_id == id)
            .map_or_else(|| id.chars().take(8).collect(), |i| format!("#{}", i + 1))
    };
    let mut t = new_table(
        format,
        vec!["kind", "A", "B", "images", "found", "first difference"],
    );
    for l in &a.localizations {
        let found = match (l.kind.as_str(), &l.culprits, &l.node) {
            ("passes", Some(culprits), _) => format!(
                "{culprits} ({} trials)",
                l.trials.map_or_else(|| "?".into(), |t| t.to_string())
            ),
            ("passes", None, _) => "not a pass: disabling every candidate still differs".into(),
            (_, _, Some(node)) => format!(
                "{node} ({}): {} rel. error, {:.0}x its inputs'",
                l.op.as_deref().unwrap_or("?"),
                sci(l.rel_error),
                l.amplification.unwrap_or(0.0)
            ),
            _ => "no node diverges".into(),
        };
        t.add_row(vec![
            l.kind.clone(),
            number(&l.cell_a),
            number(&l.cell_b),
            l.image_id.clone().unwrap_or_else(|| l.images.to_string()),
            found,
            l.first_difference.clone().unwrap_or_default(),
        ]);
    }
    let _ = writeln!(out, "{t}");
}

//! `deltann report`, `deltann check` and `deltann diff`: the analyzer's findings for people, for
//! CI gates, and across two stores.

use std::process::ExitCode;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use deltann_analyzer::analysis::{self, Options};
use deltann_analyzer::check::{self, Bounds};
use deltann_analyzer::diff;
use deltann_analyzer::report::{self, Limits};
use deltann_store::Store;

use super::{CheckArgs, DiffArgs, ReportArgs};

fn options(noise_multiple: f64) -> Options {
    Options {
        noise_multiple,
        ..Options::default()
    }
}

pub fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&args.store)?;
    let options = Options {
        frames: args.frames.into(),
        ..options(args.noise_multiple)
    };
    let analysis = analysis::cached(&store, &options, !args.no_cache)?;
    let limits = if args.all {
        Limits {
            pairs: usize::MAX,
            signatures: usize::MAX,
            classes: usize::MAX,
            near_ties: usize::MAX,
            contrasts: usize::MAX,
        }
    } else {
        Limits::default()
    };
    println!("{}", report::render(&analysis, args.format.into(), limits)?);
    Ok(ExitCode::SUCCESS)
}

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    if args.max_flip_rate.is_none() && args.max_slowdown.is_none() {
        anyhow::bail!("give --max-flip-rate and/or --max-slowdown");
    }
    let store = Store::open(&args.store)?;
    let analysis = analysis::cached(&store, &options(args.noise_multiple), true)?;
    let bounds = Bounds {
        max_flip_rate: args.max_flip_rate,
        max_slowdown: args.max_slowdown,
        skip: args.skip.iter().map(|d| d.0).collect(),
    };
    let violations = check::check(&analysis, &bounds);
    if violations.is_empty() {
        println!(
            "ok: {} cell pairs and {} contrasts within bounds",
            analysis.disagreement.pairs.len(),
            analysis.contrasts.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for v in &violations {
        println!("FAIL {}", v.what);
    }
    println!("{} violation(s)", violations.len());
    Ok(ExitCode::from(1))
}

pub fn diff(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let (a, b) = (Store::open(&args.store_a)?, Store::open(&args.store_b)?);
    let d = diff::diff(&a, &b, args.noise_multiple)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(vec![
        "cell (A)",
        "environment",
        "engine A -> B",
        "images",
        "flips",
        "identical logits",
        "max |Δlogit|",
        "p50 A ms",
        "p50 B ms",
        "change [95% CI]",
        "flag",
    ]);
    for m in &d.matched {
        let o = &m.outputs;
        t.add_row(vec![
            m.a.cell_id.clone(),
            m.a.short(),
            format!("{} -> {}", m.a.engine_version, m.b.engine_version),
            o.images.to_string(),
            format!("{} ({:.1}%)", o.flips, 100.0 * o.flip_rate),
            format!("{}/{}", o.identical, o.images),
            o.max_abs_logit
                .map_or_else(|| "-".into(), |v| format!("{v:.4}")),
            m.p50_a_ms.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            m.p50_b_ms.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            m.latency_change.map_or_else(
                || "-".into(),
                |c| {
                    format!(
                        "{:+.1}% [{:+.1}%, {:+.1}%]",
                        100.0 * c.value,
                        100.0 * c.lo,
                        100.0 * c.hi
                    )
                },
            ),
            if m.flagged {
                "SLOWER".into()
            } else {
                String::new()
            },
        ]);
    }
    println!("{} vs {}", d.store_a, d.store_b);
    println!("{t}");
    for c in &d.only_a {
        println!("only in A: {} {}", c.cell_id, c.short());
    }
    for c in &d.only_b {
        println!("only in B: {} {}", c.cell_id, c.short());
    }
    Ok(ExitCode::SUCCESS)
}

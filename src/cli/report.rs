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

use anyhow::Context as _;

use super::{CheckArgs, DiffArgs, ReportArgs, ReportFormatArg};

fn options(noise_multiple: f64) -> Options {
    Options {
        noise_multiple,
        ..Options::default()
    }
}

/// Writes `text` to `path` atomically (a temporary file beside it, then a rename), or prints it.
fn emit(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    let Some(path) = path else {
        println!("{text}");
        return Ok(());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot write here", dir.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    // A temporary file is private (0600); the report is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    tmp.persist(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    eprintln!("wrote {} ({} bytes)", path.display(), text.len());
    Ok(())
}

pub fn report(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(&args.store)?;
    let options = Options {
        frames: args.frames.into(),
        ..options(args.noise_multiple)
    };
    if matches!(args.format, ReportFormatArg::Html) {
        // The latency distributions need every row's latency, which the cached summary leaves
        // out: the page is drawn from a fresh analysis of the derived tables.
        let analysis = analysis::analyze(&store, &options)?;
        let (detail, paths) = deltann_html::gallery_inputs(&store, &analysis)?;
        let html = deltann_html::render(
            &analysis,
            &detail,
            &paths,
            &deltann_html::Options {
                gallery: args.gallery,
                ..deltann_html::Options::default()
            },
        )?;
        emit(args.output.as_deref(), &html)?;
        return Ok(ExitCode::SUCCESS);
    }
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
    emit(
        args.output.as_deref(),
        &report::render(&analysis, args.format.into(), limits)?,
    )?;
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
        bound: args.bound.into(),
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
    let regressions =
        diff::regressions(&d, args.max_flip_rate, args.bound.into(), args.max_slowdown);
    let status = if regressions.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if args.json {
        let mut json = serde_json::to_value(&d)?;
        if let Some(object) = json.as_object_mut() {
            object.insert(
                "regressions".into(),
                regressions.iter().map(|r| r.what.clone()).collect(),
            );
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(status);
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
    for r in &regressions {
        println!("REGRESSION {}", r.what);
    }
    if regressions.is_empty() {
        println!(
            "no regression: {} matched cells within --max-flip-rate {:.2}% beyond their floors \
             and --max-slowdown {:.1}% beyond their noise",
            d.matched.len(),
            100.0 * args.max_flip_rate,
            100.0 * args.max_slowdown
        );
    } else {
        println!("{} regression(s)", regressions.len());
    }
    Ok(status)
}

//! `deltann analyze`: advance a store's derived tables once, from scratch, or continuously next
//! to a running `collect`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use deltann_analyzer::derived::{self, Advance, Progress, State};
use deltann_store::{Store, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::AnalyzeArgs;

pub fn run(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let threads = args.threads.unwrap_or(if args.follow { 1 } else { 0 });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {threads} fold threads: {e}"))?;
    if args.follow {
        // The follower shares the machine with the latencies being measured: it yields the CPU
        // to anything else that wants it.
        if let Err(e) = rustix::process::setpriority_process(None, 19) {
            eprintln!("analyze: cannot lower the CPU priority ({e}); following at normal priority");
        }
        super::follow_remote(&args.store);
        return follow(args);
    }
    if let Some(url) = &args.ballista {
        let advance = on_ballista(&args.store, url)?;
        print_advance(&advance, &args.store)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(&args.store)?;
    let advance = with_bar(&store, args.rebuild)?;
    print_advance(&advance, &args.store)?;
    Ok(ExitCode::SUCCESS)
}

fn with_bar(store: &Store, rebuild: bool) -> anyhow::Result<Advance> {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} folding {pos}/{len} parts [{bar:30}] {msg} ({elapsed}, ETA {eta})",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .progress_chars("=> "),
    );
    let advance = derived::advance(store, rebuild, &mut |p: Progress| {
        bar.set_length(p.parts_total as u64);
        bar.set_position(p.parts_done as u64);
        bar.set_message(format!("{} of {} rows", p.rows_done, p.rows_total));
    })?;
    bar.finish_and_clear();
    Ok(advance)
}

/// A rebuild on a Ballista cluster, with a spinner counting the rows received.
fn on_ballista(root: &std::path::Path, url: &str) -> anyhow::Result<Advance> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} rebuilding on {prefix}: {msg} ({elapsed})")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    bar.set_prefix(url.to_string());
    bar.set_message("planning");
    bar.enable_steady_tick(Duration::from_millis(200));
    let advance = deltann_analyzer::ballista::rebuild_derived(root, url, &mut |r| {
        bar.set_message(format!(
            "{} cell-images and {} comparisons received",
            r.cell_images, r.comparisons
        ));
    })
    .map_err(|e| anyhow::anyhow!("analyze --ballista {url}: {e}"))?;
    bar.finish_and_clear();
    Ok(advance)
}

fn print_advance(a: &Advance, root: &std::path::Path) -> anyhow::Result<()> {
    let state = State::load(root)?.unwrap_or_default();
    let comparisons: u64 = state
        .parts_of(derived::DerivedTable::Comparisons)
        .map(|p| p.rows)
        .sum();
    let verb = if a.rebuilt { "rebuilt: " } else { "" };
    println!(
        "{verb}folded {} outputs parts ({} rows) into {} comparisons in {:.2}s; {} holds {} \
         parts, {} comparisons, {} cell-images",
        a.parts,
        a.rows,
        a.comparisons,
        a.seconds,
        root.join(derived::DIR).display(),
        state.folded.len(),
        comparisons,
        state
            .parts_of(derived::DerivedTable::CellImages)
            .map(|p| p.rows)
            .sum::<u64>(),
    );
    if state.duplicates > 0 {
        println!(
            "note: {} output rows repeated a (cell, image) already folded in and were ignored",
            state.duplicates
        );
    }
    Ok(())
}

/// Folds in each part as it is committed, until Ctrl-C or `--idle-exit`.
fn follow(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let poll = Duration::from_millis(args.poll_ms.max(10));
    let mut last_change = Instant::now();
    let mut seen: Option<(usize, u64)> = None;
    eprintln!(
        "analyze: following {} (every {} ms; Ctrl-C to stop)",
        args.store.display(),
        poll.as_millis()
    );
    let mut first = true;
    loop {
        let store = Store::open(&args.store)?;
        let outputs = store.parts(Table::Outputs).count();
        let last = store.entries().last().map_or(0, |e| e.seq);
        if seen != Some((outputs, last)) {
            let advance = derived::advance(&store, first && args.rebuild, &mut |_| {})?;
            first = false;
            if advance.parts > 0 || advance.rebuilt {
                print_advance(&advance, &args.store)?;
                last_change = Instant::now();
            }
            seen = Some((outputs, last));
        }
        if let Some(idle) = args.idle_exit
            && last_change.elapsed().as_secs_f64() >= idle
        {
            eprintln!("analyze: nothing committed for {idle} s; stopping");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(poll);
    }
}

//! Guards the incremental cost of the derived tables: folding one more 4096-row `outputs` part
//! into a store's analysis must cost the same whatever the store's size, and the from-scratch
//! rebuild must stay within its budget (10 s for a million rows on 2 cores).
//!
//! For each store size it generates (once) a synthetic store (`deltann-synth`, 4 families x 48
//! cells, full 1000-class logits, parts of 4096 rows), holds back its last 4096-row part (in a
//! store whose cells are shorter, its last parts adding up to 4096 rows or more),
//! rebuilds the derived tables without it (timed), then folds the held-back part in, restoring
//! the state before each round (timed; each round includes removing the previous round's parts),
//! and finally times the summary a report or the TUI's live refresh computes from the derived
//! tables (commit to refreshed analysis = fold + summary), the summary and the per-image findings
//! by each implementation of the analysis's frames (Polars and the hand-written pass), and the
//! per-pair flip counts scanned from `comparisons` by Polars against the running sums.
//!
//! Environment: `DELTANN_BENCH_DIR` (default `target-bench/stores`), `DELTANN_BENCH_SIZES`
//! (images per family, comma-separated; default `525,5250`, i.e. 100,800 and 1,008,000 rows),
//! `DELTANN_BENCH_ROUNDS` (default 5). Run it with `scripts/bench.sh fold`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Instant;

use deltann_analyzer::analysis;
use deltann_analyzer::derived::{self, DerivedTable, State};
use deltann_analyzer::frames::{self, Engine};
use deltann_store::{Store, Table};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One line: rows, what, the median and every round.
fn report(rows: usize, what: &str, times: &[f64], extra: &str) {
    let rounds: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
    println!(
        "{rows:>10} {what:<40} {:>9.3}  {}{extra}",
        median(times.to_vec()),
        rounds.join(" ")
    );
}

fn main() {
    let dir = PathBuf::from(env("DELTANN_BENCH_DIR", "target-bench/stores"));
    let rounds: usize = env("DELTANN_BENCH_ROUNDS", "5").parse().unwrap();
    println!("{:>10} {:<40} {:>9}  rounds (s)", "rows", "what", "seconds");
    for images in env("DELTANN_BENCH_SIZES", "525,5250").split(',') {
        let images: usize = images.trim().parse().unwrap();
        let root = dir.join(format!("synth-{images}"));
        let spec = deltann_synth::Spec {
            images,
            ..deltann_synth::Spec::benchmark()
        };
        let rows = spec.rows();
        if !root.join("deltann-store.json").is_file() {
            let started = Instant::now();
            deltann_synth::generate(&root, &spec).unwrap();
            println!(
                "{rows:>10} {:<40} {:>9.1}",
                "(generate store)",
                started.elapsed().as_secs_f64()
            );
        }
        let full = Store::open(&root).unwrap();
        // One 4096-row part where cells are that long; in a smaller store (cells of 525 rows), the
        // last parts that add up to 4096 rows or more, all of one family.
        let mut held: Vec<usize> = full
            .entries()
            .iter()
            .rposition(|e| e.table == Table::Outputs && e.rows == 4096)
            .into_iter()
            .collect();
        if held.is_empty() {
            let mut sum = 0;
            for (i, e) in full.entries().iter().enumerate().rev() {
                if e.table == Table::Outputs && sum < 4096 {
                    sum += e.rows;
                    held.push(i);
                }
            }
        }
        let held_rows: u64 = held.iter().map(|&i| full.entries()[i].rows).sum();
        let entries: Vec<_> = full
            .entries()
            .iter()
            .enumerate()
            .filter(|(i, _)| !held.contains(i))
            .map(|(_, e)| e.clone())
            .collect();
        let view = Store::from_entries(root.clone(), entries);

        let started = Instant::now();
        let rebuilt = derived::advance(&view, true, &mut |_| {}).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let state = State::load(&root).unwrap().unwrap();
        let comparisons: u64 = state
            .parts_of(DerivedTable::Comparisons)
            .map(|p| p.rows)
            .sum();
        println!(
            "{rows:>10} {:<40} {seconds:>9.2}  ({} parts, {} rows, {} comparisons, {} folds)",
            "rebuild without the held-back parts",
            rebuilt.parts,
            rebuilt.rows,
            comparisons,
            rebuilt.batches
        );

        let saved = std::fs::read(root.join("derived/state.json")).unwrap();
        let mut times = Vec::new();
        let mut compared = 0;
        for _ in 0..rounds {
            std::fs::write(root.join("derived/state.json"), &saved).unwrap();
            let started = Instant::now();
            let folded = derived::advance(&full, false, &mut |_| {}).unwrap();
            times.push(started.elapsed().as_secs_f64());
            assert_eq!((folded.parts, folded.rows), (held.len(), held_rows));
            compared = folded.comparisons;
        }
        report(
            rows,
            &format!("fold {held_rows} more rows ({} parts)", held.len()),
            &times,
            &format!(" ({compared} comparisons)"),
        );

        // What `report` and the TUI's live refresh do after that commit: advance (nothing left
        // to fold) and summarise the derived tables (no summary cache).
        let mut times = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let a = analysis::cached(&full, &analysis::Options::default(), false).unwrap();
            times.push(started.elapsed().as_secs_f64());
            assert!(!a.disagreement.pairs.is_empty());
        }
        report(rows, "summary from up-to-date derived tables", &times, "");

        // The summary by each implementation of the analysis's frames (same result, see
        // deltann_analyzer::frames), and the per-pair flip counts scanned from `comparisons` by
        // Polars against reading them from the running sums in state.json.
        let state = State::load(&root).unwrap().unwrap();
        for engine in [Engine::Native, Engine::Polars] {
            let options = analysis::Options {
                frames: engine,
                ..analysis::Options::default()
            };
            let mut times = Vec::new();
            for _ in 0..rounds {
                let started = Instant::now();
                let a = analysis::from_derived(&full, &state, &options).unwrap();
                times.push(started.elapsed().as_secs_f64());
                assert!(!a.disagreement.unstable.is_empty());
            }
            report(rows, &format!("summary, {engine:?} frames"), &times, "");
        }
        // The findings alone (what the two implementations differ in), on every cell.
        let cells = deltann_analyzer::cells::load_cells(&full).unwrap();
        let models = deltann_analyzer::cells::load_models(&full).unwrap();
        let groups: Vec<Vec<usize>> = analysis::groups(&cells, &models)
            .into_iter()
            .map(|g| g.cells)
            .collect();
        let index: std::collections::HashMap<String, usize> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| (c.cell_id.clone(), i))
            .collect();
        let margin = analysis::Options::default().near_tie_margin;
        for engine in [Engine::Native, Engine::Polars] {
            let mut times = Vec::new();
            for _ in 0..rounds {
                let started = Instant::now();
                let (found, _) =
                    frames::compute(engine, &root, &state, &index, &groups, cells.len(), margin)
                        .unwrap();
                times.push(started.elapsed().as_secs_f64());
                assert!(found.images > 0);
            }
            report(
                rows,
                &format!("findings + latencies, {engine:?}"),
                &times,
                "",
            );
        }

        let mut times = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let counted = frames::pair_flips(&root, &state).unwrap();
            times.push(started.elapsed().as_secs_f64());
            assert_eq!(counted.len(), state.pairs.len());
        }
        report(rows, "flips per pair, Polars over comparisons", &times, "");
        let mut times = Vec::new();
        for _ in 0..rounds {
            let started = Instant::now();
            let loaded = State::load(&root).unwrap().unwrap();
            times.push(started.elapsed().as_secs_f64());
            assert_eq!(loaded.pairs.len(), state.pairs.len());
        }
        report(
            rows,
            "flips per pair, running sums (state.json)",
            &times,
            "",
        );
    }
}

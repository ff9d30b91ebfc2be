//! Readers next to a live `collect`: `query` and `report` run in a loop while parts are committed,
//! and the TUI (in tmux) follows the store, and every answer must be one some committed snapshot
//! gives. The invariant checked: a cell with
//! an `ok` row in `cells` has every one of its output rows (`images_ok` x repetitions), in the
//! same statement; a reader that saw the manifest at two instants could see the cell finished
//! without its last part.

use std::time::{Duration, Instant};

use crate::tui_tmux::Tmux;
use crate::util::{self, data_sweep, text};

/// The committed part count the TUI's status line shows (`STORE · N parts`), if idle.
fn tui_parts(screen: &str) -> Option<usize> {
    let line = screen.lines().rev().find(|l| l.contains(" parts "))?;
    let before = line.split(" parts ").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

#[test]
fn readers_in_a_loop_next_to_collect_see_only_committed_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"tract\"]\ntract_plan = [\"decluttered\", \"optimized\"]\nthreads = [1, 2]\nrepetitions = [2]",
    );
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap().to_string();
    let mut collect = util::spawn_collect(&sweep, 2);
    let sql = "SELECT c.cell_id, c.images_ok, count(o.image_id) AS output_rows \
               FROM cells_latest c JOIN outputs o USING (cell_id) \
               WHERE c.status = 'ok' GROUP BY c.cell_id, c.images_ok";
    let started = Instant::now();
    let (mut queries, mut reports, mut finished_seen) = (0, 0, 0);
    let mut tui: Option<Tmux> = None;
    let mut tui_tried = false;
    let mut tui_seen = Vec::new();
    while collect.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(120) {
        if !store.join("_manifest.jsonl").is_file() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if !tui_tried {
            tui_tried = true;
            let command = format!(
                "DELTANN_TUI_IMAGES=halfblocks {} tui {}; echo TUI-EXIT-$?; sleep 60",
                env!("CARGO_BIN_EXE_deltann"),
                store.display()
            );
            tui = Tmux::start("concurrent", &command, 160, 40);
        }
        if let Some(t) = &tui {
            let screen = t.capture();
            assert!(!screen.contains(" error: "), "the TUI failed:\n{screen}");
            assert!(!screen.contains("TUI-EXIT"), "the TUI ended:\n{screen}");
            tui_seen.extend(tui_parts(&screen));
        }
        let out = util::run(&["query", &store_arg, sql, "--format", "csv"]);
        assert!(out.status.success(), "{}", text(&out));
        queries += 1;
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let images_ok: usize = fields[1].parse().unwrap();
            let rows: usize = fields[2].parse().unwrap();
            assert_eq!(
                rows,
                2 * images_ok,
                "query {queries}: cell {} is ok with {rows} output rows of {}",
                fields[0],
                2 * images_ok
            );
            finished_seen += 1;
        }
        if queries % 3 == 0 {
            let out = util::run(&["report", &store_arg, "--format", "json"]);
            assert!(out.status.success(), "report {reports}: {}", text(&out));
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(report.get("cells").is_some(), "report {reports}");
            reports += 1;
        }
    }
    eprintln!(
        "{queries} queries ({finished_seen} finished cells checked) and {reports} reports during collect"
    );
    let status = collect.wait().unwrap();
    assert!(status.success(), "collect failed while read");
    if let Some(t) = &tui {
        // It follows the store to its last commit, never showing more than was committed, and
        // its counts only grow.
        let parts = std::fs::read_to_string(store.join("_manifest.jsonl"))
            .unwrap()
            .lines()
            .count();
        let screen = t.wait_for(&format!(" {parts} parts "));
        assert!(!screen.contains(" error: "), "{screen}");
        assert!(
            tui_seen.iter().all(|&n| n <= parts),
            "{tui_seen:?} of {parts}"
        );
        assert!(tui_seen.windows(2).all(|w| w[0] <= w[1]), "{tui_seen:?}");
        eprintln!("the TUI showed part counts {tui_seen:?}, then {parts}");
    }
    assert!(
        queries >= 5 && reports >= 1,
        "{queries} queries, {reports} reports"
    );
    assert!(
        finished_seen > 0,
        "no query saw a finished cell while collect ran ({queries} queries)"
    );
}

//! The analyzer on a store the collector wrote from data/ (not a synthetic one): the derived
//! tables folded in as parts commit, then every consumer (analyze, report, check, every saved
//! query, the TUI's loader) on the result, and the flip matrix from `comparisons` checked against
//! the raw self-join over `outputs`.

use deltann_analyzer::derived::{DerivedTable, State};
use deltann_tui::app::{Action, Request};
use deltann_tui::data::Loader;

use crate::util::{self, data_sweep, text};

const ENVIRONMENTS: &str = r#"
engine = ["ort", "tract"]
ort_optimization = ["disabled", "all"]
ort_library = ["1.32.0"]
tract_plan = ["optimized"]
repetitions = [2]
"#;

#[test]
fn every_analysis_on_a_collected_store() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), ENVIRONMENTS);
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    // Small parts, so each cell commits several and the fold sees them one by one.
    let out = util::run(&[
        "collect",
        "--quiet",
        "--part-rows",
        "4",
        sweep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Fold half the parts, then the rest: what an analysis following the sweep does.
    let full = deltann_store::Store::open(&store).unwrap();
    let entries = full.entries().to_vec();
    let outputs = entries
        .iter()
        .filter(|e| e.table == deltann_store::Table::Outputs)
        .count();
    assert!(outputs >= 12, "{outputs} outputs parts");
    let mut half = Vec::new();
    let mut seen = 0;
    for e in &entries {
        if e.table == deltann_store::Table::Outputs {
            seen += 1;
            if seen > outputs / 2 {
                continue;
            }
        }
        half.push(e.clone());
    }
    let view = deltann_store::Store::from_entries(store.clone(), half);
    let first = deltann_analyzer::derived::advance(&view, false, &mut |_| {}).unwrap();
    assert_eq!(first.parts, outputs / 2);

    let out = util::run(&["analyze", s]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("folded {} outputs parts", outputs - outputs / 2)),
        "{said}"
    );
    let state = State::load(&store).unwrap().unwrap();
    assert_eq!(state.folded.len(), outputs);
    // 3 cells x 8 images, 3 pairs x 8 images.
    let rows = |t: DerivedTable| state.parts_of(t).map(|p| p.rows).sum::<u64>();
    assert_eq!(rows(DerivedTable::CellImages), 24);
    assert_eq!(rows(DerivedTable::Comparisons), 24);

    // An incremental analysis equals a rebuilt one.
    let report = |extra: &[&str]| {
        let mut args = vec!["report", s, "--format", "json", "--no-cache"];
        args.extend_from_slice(extra);
        let out = util::run(&args);
        assert!(out.status.success(), "{}", text(&out));
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["store"] = serde_json::Value::Null;
        v
    };
    let incremental = report(&[]);
    assert_eq!(
        incremental["disagreement"]["pairs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let out = util::run(&["analyze", "--rebuild", s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rebuilt"));
    assert_eq!(report(&[]), incremental);
    // The Polars frames give the same report as the hand-written pass.
    assert_eq!(report(&["--frames", "polars"]), incremental);
    assert_eq!(report(&["--frames", "native"]), incremental);

    // One quantile definition: the report's p50, the `cells` table's and SQL's median agree.
    let sql = "SELECT c.cell_id, c.latency_p50_ms, median(o.latency_ns) / 1e6 AS median_ms \
               FROM cells_latest c JOIN outputs o USING (cell_id) \
               GROUP BY c.cell_id, c.latency_p50_ms ORDER BY c.cell_id";
    let out = util::run(&["query", s, sql, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    let cells = incremental["cells"].as_array().unwrap();
    for row in &rows {
        let id = row["cell_id"].as_str().unwrap();
        let i = cells.iter().position(|c| c["cell_id"] == id).unwrap();
        let perf = incremental["performance"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["cell"] == i)
            .unwrap();
        let reported = perf["p50_ms"]["value"].as_f64().unwrap();
        let stored = row["latency_p50_ms"].as_f64().unwrap();
        let median = row["median_ms"].as_f64().unwrap();
        assert!(
            (reported - stored).abs() < 1e-9,
            "{id}: report {reported}, cells {stored}"
        );
        assert!(
            (reported - median).abs() < 1e-9,
            "{id}: report {reported}, SQL {median}"
        );
    }

    let out = util::run(&["check", s, "--max-flip-rate", "100%"]);
    assert!(out.status.success(), "{}", text(&out));
    // The same store against itself: every cell matched, nothing regresses.
    let out = util::run(&["diff", s, s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no regression: 3 matched cells"),
        "{}",
        text(&out)
    );

    // Every saved query runs on it; the flip matrix from `comparisons` equals the raw one.
    let listed = util::run(&["query", "--list"]);
    let names: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        // Each query is a line starting with its name, then an indented `from ...` line.
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(names.len() >= 11, "{names:?}");
    for name in &names {
        let out = util::run(&["query", s, "--saved", name, "--format", "csv"]);
        assert!(out.status.success(), "{name}: {}", text(&out));
    }
    let csv = |name: &str| {
        let out = util::run(&["query", s, "--saved", name, "--format", "csv"]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let matrix = csv("flip_matrix");
    assert_eq!(matrix.lines().count(), 4, "{matrix}");
    assert_eq!(matrix, csv("flip_matrix_raw"));

    // The TUI's loader: the analysis, then one image in every cell from the derived tables.
    let mut loader = Loader::new(&store);
    let actions = loader.handle(Request::Analyze);
    let analysis = actions
        .iter()
        .find_map(|a| match a {
            Action::Analyzed(Ok(a)) => Some(a.clone()),
            _ => None,
        })
        .expect("the analysis loads");
    assert_eq!(analysis.cells.len(), 3);
    let image = state.folded[0].range.clone().unwrap().0;
    let actions = loader.handle(Request::Image(image.clone(), None, None));
    let rows = actions
        .iter()
        .find_map(|a| match a {
            Action::ImageLoaded(id, Ok(rows), _) if *id == image => Some(rows.clone()),
            _ => None,
        })
        .expect("the image loads");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| r.max_abs_ref.is_none()).count(), 1);
}

#[test]
fn analyze_follow_folds_each_part_as_collect_commits_it() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), ENVIRONMENTS);
    let store = dir.path().join("store");
    let collect = util::deltann()
        .args([
            "collect",
            "--quiet",
            "--part-rows",
            "2",
            sweep.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !store.join("deltann-store.json").is_file() {
        assert!(
            started.elapsed().as_secs() < 60,
            "collect never created the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let follower = util::deltann()
        .args([
            "analyze",
            store.to_str().unwrap(),
            "--follow",
            "--poll-ms",
            "100",
            "--idle-exit",
            "5",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let collected = collect.wait_with_output().unwrap();
    assert!(collected.status.success(), "{}", text(&collected));
    let followed = follower.wait_with_output().unwrap();
    assert!(followed.status.success(), "{}", text(&followed));
    let said = String::from_utf8_lossy(&followed.stdout);
    // It folded as the sweep went, in several steps, not once at the end.
    assert!(
        said.lines().filter(|l| l.contains("folded")).count() >= 3,
        "{said}"
    );
    let outputs = deltann_store::Store::open(&store)
        .unwrap()
        .parts(deltann_store::Table::Outputs)
        .count();
    let state = State::load(&store).unwrap().unwrap();
    assert_eq!(state.folded.len(), outputs, "{said}");
}

#[test]
fn a_running_cell_of_a_collected_store_is_analysed_with_what_it_committed() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), ENVIRONMENTS);
    let store = dir.path().join("store");
    let out = util::run(&[
        "collect",
        "--quiet",
        "--part-rows",
        "4",
        sweep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let full = deltann_store::Store::open(&store).unwrap();
    // What a reader saw while the last cell ran: its `cells` row and its last part not yet there.
    let last = full
        .parts(deltann_store::Table::Outputs)
        .last()
        .unwrap()
        .clone();
    let running = last.cell_id.clone().unwrap();
    let entries: Vec<_> = full
        .entries()
        .iter()
        .filter(|e| e.seq != last.seq)
        .filter(|e| {
            !(e.table == deltann_store::Table::Cells
                && e.cell_id.as_deref() == Some(running.as_str()))
        })
        .cloned()
        .collect();
    let view = deltann_store::Store::from_entries(store.clone(), entries);
    let a = deltann_analyzer::analysis::analyze(&view, &Default::default()).unwrap();
    let i = a.cells.iter().position(|c| c.cell_id == running).unwrap();
    assert_eq!(a.cells[i].status, deltann_analyzer::analysis::RUNNING);
    // 8 images in parts of 4 rows (2 repetitions): the held-back part holds 2 images.
    assert_eq!(a.cells[i].images_ok, 6);
    let pairs: Vec<_> = a
        .disagreement
        .pairs
        .iter()
        .filter(|p| p.a == i || p.b == i)
        .collect();
    assert_eq!(pairs.len(), 2);
    assert!(pairs.iter().all(|p| p.images == 6), "{pairs:?}");
    // Once the rest is committed, it is an ordinary finished cell over all 8 images.
    let a = deltann_analyzer::analysis::analyze(&full, &Default::default()).unwrap();
    let i = a.cells.iter().position(|c| c.cell_id == running).unwrap();
    assert_eq!(a.cells[i].status, "ok");
    assert!(
        a.disagreement
            .pairs
            .iter()
            .filter(|p| p.a == i || p.b == i)
            .all(|p| p.images == 8)
    );
}

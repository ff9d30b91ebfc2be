//! The analyzer on stores whose contents are known: hand-written fixtures (values computed by
//! hand), and the small synthetic store (planted effects), including every saved query.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use deltann_analyzer::analysis::{self, Options};
use deltann_analyzer::cells::Dimension;
use deltann_analyzer::context::Session;
use deltann_analyzer::derived::{self, DerivedTable, State};
use deltann_analyzer::disagreement;
use deltann_analyzer::format::{self, PrintFormat};
use deltann_analyzer::{check, queries};
use deltann_store::{Store, Table};
use deltann_synth::{self as synth, HandCell, Spec};

fn small_store() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    synth::generate(&dir.path().join("s"), &Spec::small()).unwrap();
    dir
}

fn hand_store(dir: &Path) -> Store {
    // Three images, two cells. Logits over 6 classes.
    //   img-a: A ranks 0,1,2,3,4 (5 last); B identical           -> no flip, identical
    //   img-b: A top-1 class 0, B top-1 class 1                   -> flip
    //   img-c: A and B same ranking, B's logits shifted by +0.5   -> no flip, |d| = 0.5
    let a = vec![
        ("img-a", Some(0), vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 10.0),
        ("img-b", Some(0), vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 10.0),
        ("img-c", None, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 10.0),
    ];
    let b = vec![
        ("img-a", Some(0), vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 20.0),
        ("img-b", Some(0), vec![5.0, 6.0, 4.0, 3.0, 2.0, 1.0], 20.0),
        ("img-c", None, vec![1.5, 2.5, 3.5, 4.5, 5.5, 6.5], 20.0),
    ];
    let cell = |id, engine, opt, rows| HandCell {
        id,
        model: "family0",
        precision: "fp32",
        engine,
        optimization: opt,
        threads: 1,
        rows,
        second: None,
    };
    synth::write_hand(
        dir,
        &[
            cell("aaaaaaaaaaaaaaaa", "ort", "all", a),
            cell("bbbbbbbbbbbbbbbb", "tract", "optimized", b),
        ],
    )
    .unwrap();
    Store::open(dir).unwrap()
}

#[test]
fn pair_metrics_match_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let store = hand_store(&dir.path().join("h"));
    let a = analysis::analyze(&store, &Options::default()).unwrap();
    assert_eq!(a.cells.len(), 2);
    let p = &a.disagreement.pairs[0];
    assert_eq!((p.images, p.flips, p.identical), (3, 1, 1));
    assert!((p.flip_rate - 1.0 / 3.0).abs() < 1e-12);
    // Top-5 sets are equal on all three images (img-b swaps 0 and 1 within the top 5).
    assert!((p.jaccard_top5 - 1.0).abs() < 1e-12);
    // RBO on img-b: [0,1,2,3,4] vs [1,0,2,3,4], p = 0.9: depths 1..5 overlap 0,2,3,4,5.
    let w: Vec<f64> = (0..5).map(|d| 0.9f64.powi(d)).collect();
    let rbo_b = (w[1] * 1.0 + w[2] * 1.0 + w[3] * 1.0 + w[4] * 1.0) / w.iter().sum::<f64>();
    assert!(
        (p.rbo_top5 - (2.0 + rbo_b) / 3.0).abs() < 1e-9,
        "{}",
        p.rbo_top5
    );
    // Kendall tau on img-b: 10 pairs of 5 shared labels, one discordant: (9 - 1) / 10.
    assert!((p.kendall_tau.unwrap() - (1.0 + 0.8 + 1.0) / 3.0).abs() < 1e-9);
    // Max |Δ| is 1 (img-b swaps 6 and 5); mean |Δ| per image: 0, 2/6, 0.5 -> mean 5/18.
    assert!((p.max_abs_logit.unwrap() - 1.0).abs() < 1e-6);
    assert!((p.mean_abs_logit.unwrap() - 5.0 / 18.0).abs() < 1e-6);
    // A shift leaves softmax unchanged: KL comes from img-b only.
    let kl_b = {
        let lse = |v: &[f64]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let (xa, xb) = (
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
            [5.0, 6.0, 4.0, 3.0, 2.0, 1.0],
        );
        let (la, lb) = (lse(&xa), lse(&xb));
        xa.iter()
            .zip(&xb)
            .map(|(x, y)| (x - la).exp() * ((x - la) - (y - lb)))
            .sum::<f64>()
    };
    assert!(
        (p.kl.unwrap() - kl_b / 3.0).abs() < 1e-5,
        "{:?} vs {}",
        p.kl,
        kl_b / 3.0
    );
    // Accuracy over the two labelled images: A 2/2, B 1/2.
    assert_eq!((p.labelled, p.correct_a, p.correct_b), (2, 2, 1));
    assert_eq!(p.flipped, vec!["img-b".to_string()]);
    // The engine is the only difference, so it gets all the disagreement.
    assert_eq!(a.attribution.len(), 1);
    assert_eq!(a.attribution[0].dimension, Dimension::Engine);
    // B is twice as slow; no intent to be faster between engines, so no flag.
    let c = &a.contrasts[0];
    assert!((c.change.value - 1.0).abs() < 1e-9 && !c.flagged && !c.meant_faster);
}

#[test]
fn detail_lookup_gives_every_cell_against_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let store = hand_store(&dir.path().join("h"));
    let a = analysis::analyze(&store, &Options::default()).unwrap();
    let detail = deltann_analyzer::detail::Detail::open(store.root(), &a).unwrap();
    let rows = detail.lookup("img-b").unwrap();
    assert_eq!(rows.len(), 2);
    let reference = rows
        .iter()
        .find(|r| a.cells[r.cell].cell_id == "aaaaaaaaaaaaaaaa")
        .unwrap();
    let other = rows
        .iter()
        .find(|r| a.cells[r.cell].cell_id == "bbbbbbbbbbbbbbbb")
        .unwrap();
    assert_eq!((reference.top5[0], other.top5[0]), (0, 1));
    assert_eq!(reference.max_abs_ref, None);
    assert_eq!(other.max_abs_ref, Some(1.0));
    assert_eq!(other.mean_abs_ref, Some(2.0 / 6.0));
    assert_eq!(other.identical_ref, Some(false));
    let img_a = detail.lookup("img-a").unwrap();
    assert_eq!(
        img_a
            .iter()
            .filter(|r| r.identical_ref == Some(true))
            .count(),
        2,
        "{img_a:?}"
    );
    assert!(detail.lookup("img-zzz").unwrap().is_empty());
    // The unstable-image list has img-b only.
    let unstable: Vec<&str> = a
        .disagreement
        .unstable
        .iter()
        .map(|u| u.image_id.as_str())
        .collect();
    assert_eq!(unstable, vec!["img-b"]);
}

#[test]
fn flip_rate_is_symmetric_and_self_pairs_are_zero() {
    let dir = tempfile::tempdir().unwrap();
    let store = hand_store(&dir.path().join("h"));
    let parts: Vec<_> = store
        .parts(Table::Outputs)
        .enumerate()
        .map(|(i, p)| (i, store.part_path(p)))
        .collect();
    let pairs = [(0, 1), (1, 0), (0, 0), (1, 1)];
    let d = disagreement::compare_stores(2, &parts, &pairs).unwrap();
    assert_eq!(d.pairs[0].flips, d.pairs[1].flips);
    assert_eq!(d.pairs[0].jaccard_top5, d.pairs[1].jaccard_top5);
    assert_eq!(d.pairs[0].rbo_top5, d.pairs[1].rbo_top5);
    assert_eq!(d.pairs[0].max_abs_logit, d.pairs[1].max_abs_logit);
    for same in &d.pairs[2..] {
        assert_eq!((same.flips, same.identical, same.images), (0, 3, 3));
        assert_eq!(same.max_abs_logit, Some(0.0));
        assert_eq!(same.kl, Some(0.0));
        assert_eq!(same.jaccard_top5, 1.0);
    }
}

#[test]
fn planted_effects_are_found() {
    let dir = small_store();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let a = analysis::analyze(&store, &Options::default()).unwrap();
    // 2 families x 18 cells plus the failed cell.
    assert_eq!(a.cells.len(), 37);
    assert_eq!(a.cells.iter().filter(|c| c.status == "failed").count(), 1);
    for p in &a.disagreement.pairs {
        assert!((0.0..=1.0).contains(&p.flip_rate));
        assert!((0.0..=1.0).contains(&p.jaccard_top5) && (0.0..=1.0).contains(&p.rbo_top5));
        assert!(p.flip_ci.0 <= p.flip_rate && p.flip_rate <= p.flip_ci.1);
    }
    // int8 is the dominant cause; threads change nothing (bit-identical logits).
    assert_eq!(
        a.attribution[0].dimension,
        Dimension::Precision,
        "{:?}",
        a.attribution
    );
    assert!(a.attribution[0].flip_rate > 0.05);
    let threads = a
        .attribution
        .iter()
        .find(|r| r.dimension == Dimension::Threads)
        .unwrap();
    assert_eq!((threads.flips, threads.mean_abs_logit), (0, Some(0.0)));
    for p in &a.disagreement.pairs {
        if deltann_analyzer::cells::differences(&a.cells[p.a], &a.cells[p.b])
            == [Dimension::Threads]
        {
            assert_eq!(p.identical, p.images);
        }
    }
    // The largest deviation signature is the int8 cells'.
    assert!(
        a.signatures[0].label.contains("precision=int8"),
        "{:?}",
        &a.signatures[..3]
    );
    // Repetitions agree: the floor is zero.
    assert!(
        a.disagreement
            .floors
            .iter()
            .all(|f| f.flips == 0 && f.nondeterministic == 0)
    );
    // The planted regression: ORT basic -> extended is slower in family0 only.
    let flagged: Vec<_> = a.contrasts.iter().filter(|c| c.flagged).collect();
    assert!(!flagged.is_empty());
    for c in &flagged {
        assert_eq!(c.dimension, Dimension::Optimization);
        assert_eq!(a.cells[c.from].family, "family0");
        assert_eq!(
            (c.from_value.as_str(), c.to_value.as_str()),
            ("ort basic", "ort extended")
        );
    }
    assert!(
        a.contrasts
            .iter()
            .any(|c| c.dimension == Dimension::Optimization
                && a.cells[c.from].family == "family1"
                && c.from_value == "ort basic"
                && c.to_value == "ort extended"
                && !c.flagged)
    );
    // More threads are meant to be faster and are: never flagged.
    let threads: Vec<_> = a
        .contrasts
        .iter()
        .filter(|c| c.dimension == Dimension::Threads)
        .collect();
    assert!(!threads.is_empty());
    assert!(threads.iter().all(|c| !c.flagged && c.change.value < 0.0));
    // Every fifth image is a near tie in the reference cell.
    assert!(!a.disagreement.near_ties.is_empty());
    assert!(a.disagreement.near_ties.iter().all(|n| n.margin < 0.05));
}

#[test]
fn check_gates_on_flip_rate_and_slowdown() {
    let dir = small_store();
    let store = Store::open(&dir.path().join("s")).unwrap();
    let a = analysis::analyze(&store, &Options::default()).unwrap();
    let bounds = |flip, slow, skip: Vec<Dimension>| check::Bounds {
        max_flip_rate: flip,
        max_slowdown: slow,
        skip,
        bound: check::Bound::Point,
    };
    let all = check::check(&a, &bounds(Some(0.01), None, vec![]));
    assert!(all.iter().any(|v| v.what.contains("precision")), "{all:?}");
    // Beyond the int8 variants, only near ties flip (between engines): with precision skipped
    // and a bound above that, the gate passes.
    let rest = check::check(&a, &bounds(Some(0.2), None, vec![Dimension::Precision]));
    assert!(rest.is_empty(), "{rest:?}");
    let slow = check::check(&a, &bounds(None, Some(0.1), vec![]));
    assert!(
        !slow.is_empty()
            && slow
                .iter()
                .all(|v| v.what.contains("ort basic -> ort extended"))
    );
    assert!(check::check(&a, &bounds(None, Some(5.0), vec![])).is_empty());
}

#[test]
fn every_table_of_a_statement_reads_one_snapshot() {
    let dir = small_store();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    let session = Session::open(&root, false).unwrap();
    // The store as it stood two thirds of the way through its commits, as a statement started
    // during a live `collect` would see it while its later scans could see more.
    let earlier = Store::from_entries(
        root.clone(),
        store.entries()[..store.entries().len() * 2 / 3].to_vec(),
    );
    let rows = |s: &Store, t: Table| s.parts(t).map(|p| p.rows).sum::<u64>();
    assert!(rows(&earlier, Table::Outputs) < rows(&store, Table::Outputs));
    let sql = "SELECT (SELECT count(*) FROM outputs) AS outputs, \
                      (SELECT count(*) FROM cells) AS cells, \
                      (SELECT count(*) FROM outputs o JOIN cells_latest c USING (cell_id)) AS joined";
    let counts = |out: Vec<deltann_analyzer::context::Output>| -> String {
        format::render(&out[0].batches, PrintFormat::Csv, None).unwrap()
    };
    let rt = deltann_analyzer::context::runtime().unwrap();
    let pinned = counts(rt.block_on(session.run_on(&earlier, sql)).unwrap());
    // Every output row of a finished cell joins its `cells` row, in the snapshot as in the store.
    let finished: u64 = earlier
        .parts(Table::Outputs)
        .filter(|p| {
            earlier
                .parts(Table::Cells)
                .any(|c| c.cell_id.is_some() && c.cell_id == p.cell_id)
        })
        .map(|p| p.rows)
        .sum();
    assert_eq!(
        pinned,
        format!(
            "outputs,cells,joined\n{},{},{finished}",
            rows(&earlier, Table::Outputs),
            rows(&earlier, Table::Cells)
        )
    );
    let now = counts(session.run_blocking(sql).unwrap());
    assert_eq!(
        now,
        format!(
            "outputs,cells,joined\n{},{},{}",
            rows(&store, Table::Outputs),
            rows(&store, Table::Cells),
            rows(&store, Table::Outputs)
        )
    );
}

#[test]
fn sql_sees_committed_parts_with_partitions() {
    let dir = small_store();
    let root = dir.path().join("s");
    let session = Session::open(&root, false).unwrap();
    let count = |sql: &str| -> String {
        let out = session.run_blocking(sql).unwrap();
        format::render(&out[0].batches, PrintFormat::Csv, None).unwrap()
    };
    let spec = Spec::small();
    assert_eq!(
        count("SELECT count(*) AS n FROM outputs"),
        format!("n\n{}", spec.rows())
    );
    assert_eq!(
        count("SELECT count(*) AS n FROM outputs WHERE model = 'family0-int8' AND engine = 'ort'"),
        format!("n\n{}", 4 * spec.images * 2)
    );
    assert_eq!(count("SELECT count(*) AS n FROM cells_latest"), "n\n37");
    assert_eq!(
        count("SELECT count(DISTINCT family) AS n FROM predictions"),
        "n\n2"
    );
    // A part that is not in the manifest is invisible to SQL.
    let stray = root.join("outputs/model=family0/engine=ort/part-999999-stray.parquet");
    let any = std::fs::read_dir(root.join("outputs/model=family0/engine=ort"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(any, &stray).unwrap();
    assert_eq!(
        count("SELECT count(*) AS n FROM outputs"),
        format!("n\n{}", spec.rows())
    );
}

#[test]
fn writes_are_refused_unless_allowed() {
    let dir = small_store();
    let root = dir.path().join("s");
    let target = dir.path().join("copy.csv");
    let copy = format!(
        "COPY (SELECT cell_id FROM cells) TO '{}' STORED AS CSV",
        target.display()
    );
    let err = Session::open(&root, false)
        .unwrap()
        .run_blocking(&copy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--allow-write"), "{err}");
    assert!(!target.exists());
    Session::open(&root, true)
        .unwrap()
        .run_blocking(&copy)
        .unwrap();
    assert!(target.exists());
    // Views are fine in a read-only session; tables from elsewhere and dropping the store's are not.
    let session = Session::open(&root, false).unwrap();
    session
        .run_blocking("CREATE VIEW v AS SELECT 1 AS x; SELECT * FROM v; DROP VIEW v;")
        .unwrap();
    for ddl in [
        format!(
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'",
            target.display()
        ),
        "DROP TABLE outputs".to_string(),
        "CREATE TABLE m AS SELECT 1 AS x".to_string(),
    ] {
        let err = session.run_blocking(&ddl).unwrap_err().to_string();
        assert!(err.contains("read-only"), "{ddl}: {err}");
    }
    assert!(session.run_blocking("SELECT count(*) FROM outputs").is_ok());
}

#[test]
fn saved_queries_snapshot() {
    let dir = small_store();
    let root = dir.path().join("s");
    derived::advance(&Store::open(&root).unwrap(), false, &mut |_| {}).unwrap();
    let session = Session::open(&root, false).unwrap();
    for (name, sql) in queries::BUILT_IN {
        let out = session
            .run_blocking(sql)
            .unwrap_or_else(|e| panic!("saved query {name} failed: {e}"));
        let text = format::render(&out[0].batches, PrintFormat::Markdown, Some(25)).unwrap();
        insta::assert_snapshot!(*name, text);
    }
}

#[test]
fn cached_analysis_is_reused_and_refreshed() {
    let dir = small_store();
    let root = dir.path().join("s");
    let store = Store::open(&root).unwrap();
    let first = analysis::cached(&store, &Options::default(), true).unwrap();
    let cache = root.join("_cache").join(analysis::CACHE_FILE);
    assert!(cache.is_file());
    // Reused: what the cache holds is what a second call returns (a marker put into the
    // cached JSON comes back).
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    json["analysis"]["disagreement"]["images"] = serde_json::json!(424242);
    std::fs::write(&cache, serde_json::to_vec(&json).unwrap()).unwrap();
    let marked = analysis::cached(&store, &Options::default(), true).unwrap();
    assert_eq!(marked.disagreement.images, 424242);
    json["analysis"]["disagreement"]["images"] = serde_json::json!(first.disagreement.images);
    std::fs::write(&cache, serde_json::to_vec(&json).unwrap()).unwrap();
    let again = analysis::cached(&store, &Options::default(), true).unwrap();
    // The cache holds what serialises (accumulators and raw latencies are not kept).
    assert_eq!(
        serde_json::to_value(&first).unwrap(),
        serde_json::to_value(&again).unwrap()
    );
    // Another option invalidates it.
    let other = Options {
        noise_multiple: 100.0,
        ..Options::default()
    };
    let flagged = analysis::cached(&store, &other, true).unwrap();
    assert!(flagged.contrasts.iter().all(|c| !c.flagged));
}

/// Every row of a derived table, as text, sorted: an order-free fingerprint of its contents.
fn table_rows(root: &Path, state: &State, table: DerivedTable) -> Vec<String> {
    let mut out = Vec::new();
    for path in derived::part_paths(root, state, table) {
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| {
                    arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &Default::default())
                        .unwrap()
                })
                .collect();
            // `pair` numbers depend on the order pairs were first met: compare what they name.
            let pair = batch.schema().index_of("pair").ok();
            for i in 0..batch.num_rows() {
                let mut row: Vec<String> =
                    formatters.iter().map(|f| f.value(i).to_string()).collect();
                if let Some(k) = pair {
                    let p = &state.pairs[row[k].parse::<usize>().unwrap()];
                    row[k] = format!("{}~{}", p.cell_a, p.cell_b);
                }
                out.push(row.join("|"));
            }
        }
    }
    out.sort();
    out
}

/// Equal JSON, floats to 1e-9 (relative for large values).
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{at}: {x} != {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths differ");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}: keys differ"
            );
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// Copies a store's files (not its derived state or caches) to `to`.
fn copy_store(from: &Path, to: &Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        if first == derived::DIR || first == "_cache" {
            continue;
        }
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn incremental_folds_equal_a_rebuild_whatever_the_commit_order_and_grouping() {
    let dir = small_store();
    let root = dir.path().join("s");
    let full = Store::open(&root).unwrap();
    let options = Options::default();
    derived::advance(&full, true, &mut |_| {}).unwrap();
    let state = State::load(&root).unwrap().unwrap();
    let expected =
        serde_json::to_value(analysis::from_derived(&full, &state, &options).unwrap()).unwrap();
    let expected_rows: Vec<Vec<String>> = DerivedTable::ALL
        .iter()
        .map(|&t| table_rows(&root, &state, t))
        .collect();
    assert!(
        expected_rows[0].len() > 1000,
        "the store must have comparisons"
    );

    let (outputs, others): (Vec<_>, Vec<_>) = full
        .entries()
        .iter()
        .cloned()
        .partition(|e| e.table == Table::Outputs);
    for seed in 0..6u64 {
        let replay = dir.path().join(format!("replay-{seed}"));
        copy_store(&root, &replay);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut order = outputs.clone();
        rng.shuffle(&mut order);
        let mut committed = others.clone();
        let mut folds = 0;
        while !order.is_empty() {
            let n = rng.usize(1..=order.len().min(9));
            committed.extend(order.drain(..n));
            let view = Store::from_entries(replay.clone(), committed.clone());
            derived::advance(&view, false, &mut |_| {}).unwrap();
            folds += 1;
        }
        assert!(folds > 3);
        let view = Store::from_entries(replay.clone(), committed.clone());
        let state = State::load(&replay).unwrap().unwrap();
        assert_eq!(state.folded.len(), outputs.len());
        let mut got =
            serde_json::to_value(analysis::from_derived(&view, &state, &options).unwrap()).unwrap();
        got["store"] = expected["store"].clone();
        assert_close(&expected, &got, &format!("seed {seed}"));
        for (i, &t) in DerivedTable::ALL.iter().enumerate() {
            assert_eq!(
                table_rows(&replay, &state, t),
                expected_rows[i],
                "seed {seed}: {} differs",
                t.name()
            );
        }
    }
}

#[test]
fn running_cells_count_with_their_committed_parts() {
    let dir = small_store();
    let root = dir.path().join("s");
    let full = Store::open(&root).unwrap();
    // Hold back one ok cell's `cells` row and its second half of outputs: it is still running.
    let cells = deltann_analyzer::cells::load_cells(&full).unwrap();
    let running = cells
        .iter()
        .find(|c| c.status == "ok")
        .unwrap()
        .cell_id
        .clone();
    let entries: Vec<_> = full
        .entries()
        .iter()
        .filter(|e| !(e.table == Table::Cells && e.cell_id.as_deref() == Some(running.as_str())))
        .cloned()
        .collect();
    let view = Store::from_entries(root.clone(), entries);
    let a = analysis::analyze(&view, &Options::default()).unwrap();
    let i = a.cells.iter().position(|c| c.cell_id == running).unwrap();
    assert_eq!(a.cells[i].status, analysis::RUNNING);
    assert!(a.cells[i].images_ok > 0);
    // Its outputs are compared with the rest of its family already.
    let compared = a
        .disagreement
        .pairs
        .iter()
        .filter(|p| p.a == i || p.b == i)
        .count();
    assert_eq!(
        compared,
        a.group_of(i).unwrap().cells.len() - 2,
        "all but itself and the failed cell"
    );
    // And a running cell is never part of an attribution or a contrast.
    assert!(a.contrasts.iter().all(|c| c.from != i && c.to != i));
    let text = deltann_analyzer::report::render(
        &a,
        deltann_analyzer::report::ReportFormat::Table,
        deltann_analyzer::report::Limits::default(),
    )
    .unwrap();
    assert!(text.contains("running"), "{text}");
}

#[test]
fn a_crash_mid_advance_leaves_the_last_state_and_stray_parts_are_removed() {
    let dir = small_store();
    let root = dir.path().join("s");
    let full = Store::open(&root).unwrap();
    let outputs: Vec<_> = full.parts(Table::Outputs).cloned().collect();
    let others: Vec<_> = full
        .entries()
        .iter()
        .filter(|e| e.table != Table::Outputs)
        .cloned()
        .collect();
    let half = [others.clone(), outputs[..outputs.len() / 2].to_vec()].concat();
    derived::advance(&Store::from_entries(root.clone(), half), false, &mut |_| {}).unwrap();
    let before = State::load(&root).unwrap().unwrap();
    // What a crash between writing a derived part and saving the state leaves behind.
    let stray = root.join("derived/comparisons/part-999999.parquet");
    std::fs::write(&stray, b"half a part").unwrap();
    std::fs::write(root.join("derived/_tmp/cell_images-000002.parquet"), b"x").unwrap();
    assert_eq!(State::load(&root).unwrap().unwrap(), before);
    derived::advance(&full, false, &mut |_| {}).unwrap();
    assert!(!stray.exists());
    let after = State::load(&root).unwrap().unwrap();
    assert_eq!(after.folded.len(), outputs.len());
    // A state of another analysis version is not used: it is rebuilt.
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("derived/state.json")).unwrap()).unwrap();
    old["analysis_version"] = serde_json::json!(0);
    std::fs::write(root.join("derived/state.json"), old.to_string()).unwrap();
    assert!(State::load(&root).unwrap().is_none());
    let again = derived::advance(&full, false, &mut |_| {}).unwrap();
    assert!(again.rebuilt);
    assert_eq!(again.parts, outputs.len());
}

#[test]
fn flip_matrix_from_comparisons_equals_the_raw_self_join() {
    let dir = small_store();
    let root = dir.path().join("s");
    derived::advance(&Store::open(&root).unwrap(), false, &mut |_| {}).unwrap();
    let session = Session::open(&root, false).unwrap();
    let run = |name: &str| {
        let out = session
            .run_blocking(&queries::Catalog::built_in().get(name).unwrap().sql)
            .unwrap();
        format::render(&out[0].batches, PrintFormat::Csv, None).unwrap()
    };
    let derived = run("flip_matrix");
    assert!(derived.lines().count() > 300, "{derived}");
    assert_eq!(derived, run("flip_matrix_raw"));
}

/// `comparisons` in SQL names each pair's family and cells, which its files leave to `pair`:
/// the names agree with `pairs`, filter, group, and come back with or without `pair` asked for.
#[test]
fn comparisons_name_their_pairs_in_sql() {
    let dir = small_store();
    let root = dir.path().join("s");
    derived::advance(&Store::open(&root).unwrap(), false, &mut |_| {}).unwrap();
    let session = Session::open(&root, false).unwrap();
    let csv = |sql: &str| {
        let out = session.run_blocking(sql).unwrap();
        format::render(&out[0].batches, PrintFormat::Csv, None).unwrap()
    };
    let named = csv(
        "SELECT family, cell_a, cell_b, count(*) AS n FROM comparisons \
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    );
    let joined = csv(
        "SELECT p.family, p.cell_a, p.cell_b, count(*) AS n FROM comparisons c \
         JOIN pairs p ON p.pair = c.pair GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    );
    assert!(named.lines().count() > 10, "{named}");
    assert_eq!(named, joined);
    let first = named
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .to_string();
    let filtered = csv(&format!(
        "SELECT DISTINCT cell_a FROM comparisons WHERE cell_a = '{first}'"
    ));
    assert_eq!(
        filtered.lines().collect::<Vec<_>>(),
        ["cell_a", first.as_str()]
    );
    let star = csv("SELECT * FROM comparisons LIMIT 1");
    assert!(
        star.starts_with("family,pair,cell_a,cell_b,image_id,"),
        "{star}"
    );
}

/// Both implementations of the per-image findings and latencies (Polars frames over the derived
/// Parquet, and the hand-written pass) give the same analysis, and the comparisons table's flip
/// counts equal the pairs' running sums.
#[test]
fn polars_frames_equal_the_hand_written_pass() {
    use deltann_analyzer::frames::{self, Engine};
    let dir = tempfile::tempdir().unwrap();
    let mut near_ties = 0;
    for (i, seed) in [7u64, 11, 23].into_iter().enumerate() {
        let root = dir.path().join(format!("s{i}"));
        let spec = Spec {
            seed,
            // Few classes: more images where cells answer differently, and ties of counts.
            classes: [10, 3, 2][i],
            images: [60, 90, 40][i],
            ..Spec::small()
        };
        synth::generate(&root, &spec).unwrap();
        let store = Store::open(&root).unwrap();
        derived::advance(&store, false, &mut |_| {}).unwrap();
        let state = State::load(&root).unwrap().unwrap();
        let run = |frames| {
            let options = Options {
                frames,
                ..Options::default()
            };
            analysis::from_derived(&store, &state, &options).unwrap()
        };
        let (native, polars) = (run(Engine::Native), run(Engine::Polars));
        assert!(
            !native.disagreement.unstable.is_empty() && !native.signatures.is_empty(),
            "seed {seed}: the store must have findings to compare"
        );
        near_ties += native.disagreement.near_ties.len();
        assert_close(
            &serde_json::to_value(&native).unwrap(),
            &serde_json::to_value(&polars).unwrap(),
            &format!("seed {seed}"),
        );
        assert_eq!(
            native.disagreement.sorted_latencies_ms(),
            polars.disagreement.sorted_latencies_ms(),
            "seed {seed}: latencies"
        );

        let counted = frames::pair_flips(&root, &state).unwrap();
        assert_eq!(counted.len(), state.pairs.len());
        for p in &state.pairs {
            assert_eq!(
                counted[&(p.cell_a.clone(), p.cell_b.clone())],
                (p.images, p.flips),
                "seed {seed}: {} / {}",
                p.cell_a,
                p.cell_b
            );
        }
    }
    assert!(near_ties > 0, "near ties must be compared too");

    // Ties of counts, where the majority goes to the reference cell's answer, then to the
    // smallest class: four cells, hand-made answers (top-1 per cell, reference first).
    //   img-a: 5 5 3 3 -> 5 (the reference's),  img-b: 4 2 2 0 -> 2,  img-c: 1 0 2 3 -> 1
    let logits = |top: usize, second: usize, gap: f32| {
        let mut l = vec![0.0f32; 6];
        l[top] = 5.0;
        l[second] = 5.0 - gap;
        l
    };
    let answers = [[5, 5, 3, 3], [4, 2, 2, 0], [1, 0, 2, 3]];
    let ids = ["img-a", "img-b", "img-c"];
    let cell_ids = [
        "c0aaaaaaaaaaaaaa",
        "c1aaaaaaaaaaaaaa",
        "c2aaaaaaaaaaaaaa",
        "c3aaaaaaaaaaaaaa",
    ];
    let engines = [
        ("ort", "all"),
        ("ort", "basic"),
        ("tract", "optimized"),
        ("ort", "disabled"),
    ];
    let cells: Vec<HandCell> = (0..4)
        .map(|c| HandCell {
            id: cell_ids[c],
            model: "family0",
            precision: "fp32",
            engine: engines[c].0,
            optimization: engines[c].1,
            threads: 1,
            rows: (0..3)
                .map(|i| {
                    let top = answers[i][c];
                    // The reference's img-b is a near tie.
                    let gap = if i == 1 && c == 0 { 0.01 } else { 2.0 };
                    (
                        ids[i],
                        None,
                        logits(top, (top + 1) % 6, gap),
                        10.0 + c as f64,
                    )
                })
                .collect(),
            second: None,
        })
        .collect();
    let root = dir.path().join("ties");
    synth::write_hand(&root, &cells).unwrap();
    let store = Store::open(&root).unwrap();
    let run = |frames| {
        let options = Options {
            frames,
            ..Options::default()
        };
        analysis::analyze(&store, &options).unwrap()
    };
    let (native, polars) = (run(Engine::Native), run(Engine::Polars));
    assert_close(
        &serde_json::to_value(&native).unwrap(),
        &serde_json::to_value(&polars).unwrap(),
        "ties",
    );
    let majority: Vec<(String, i32)> = polars
        .disagreement
        .unstable
        .iter()
        .map(|u| (u.image_id.clone(), u.majority))
        .collect();
    let majority: std::collections::BTreeMap<_, _> = majority.into_iter().collect();
    assert_eq!(
        majority.into_iter().collect::<Vec<_>>(),
        [
            ("img-a".into(), 5),
            ("img-b".into(), 2),
            ("img-c".into(), 1)
        ]
    );
    assert_eq!(polars.disagreement.near_ties.len(), 1);
    assert_eq!(polars.disagreement.near_ties[0].image_id, "img-b");
}

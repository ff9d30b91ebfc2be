//! `deltann store verify` and `store repair` on a store the collector wrote: damage is named,
//! repair keeps every sound part, and the next `collect` re-runs exactly what was dropped.

use crate::util::{self, data_sweep, read_table, strings, text};

#[test]
fn verify_names_a_damaged_part_repair_drops_it_and_collect_runs_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\"]\nthreads = [1, 2]");
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let before = read_table(&store, "outputs").all().unwrap().num_rows();

    let out = util::run(&["store", "verify", store_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("sound"), "{}", text(&out));

    // Truncate one cell's outputs part, as a partial copy would.
    let manifest = std::fs::read_to_string(store.join("_manifest.jsonl")).unwrap();
    let part = manifest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["table"] == "outputs")
        .unwrap();
    let rel = part["path"].as_str().unwrap().to_string();
    let bytes = part["bytes"].as_u64().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(store.join(&rel))
        .unwrap();
    file.set_len(bytes / 2).unwrap();
    drop(file);

    let out = util::run(&["store", "verify", store_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&rel), "names the part: {}", text(&out));
    assert!(text(&out).contains("DAMAGED"), "{}", text(&out));

    let out = util::run(&["store", "repair", store_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("dropped 1 damaged part"),
        "{}",
        text(&out)
    );
    assert!(store.join("_quarantine").join(&rel).is_file());
    let out = util::run(&["store", "verify", store_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let after_repair = read_table(&store, "outputs").all().unwrap().num_rows();
    assert!(after_repair < before);

    // The next collect re-runs the images whose rows were dropped, and only those.
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let outputs = read_table(&store, "outputs").all().unwrap();
    assert_eq!(outputs.num_rows(), before);
    let mut keys: Vec<(String, String)> = strings(&outputs, "cell_id")
        .into_iter()
        .zip(strings(&outputs, "image_id"))
        .map(|(c, i)| (c.unwrap(), i.unwrap()))
        .collect();
    keys.sort();
    let n = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), n, "one row per (cell, image)");
}

/// One number from `deltann [--skip-damaged] query STORE SQL --format csv`.
fn count(store: &str, sql: &str, skip: bool) -> (Option<u64>, String) {
    let mut args = vec!["query", store, sql, "--format", "csv"];
    if skip {
        args.insert(0, "--skip-damaged");
    }
    let out = util::run(&args);
    let value = out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    });
    (value, text(&out))
}

#[test]
fn skip_damaged_reads_past_a_missing_part_and_the_analysis_follows_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\"]\nthreads = [1, 2]");
    let out = util::run(&[
        "collect",
        "--quiet",
        "--part-rows",
        "2",
        sweep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    let outputs = "SELECT count(*) FROM outputs";
    let comparisons = "SELECT count(*) FROM comparisons";
    assert_eq!(count(s, outputs, false).0, Some(16));
    assert_eq!(
        count(s, comparisons, false).0,
        Some(8),
        "two cells, 8 images"
    );

    // One outputs part (2 images of one cell) goes missing, after the analysis folded it in.
    let manifest = std::fs::read_to_string(store.join("_manifest.jsonl")).unwrap();
    let part = manifest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["table"] == "outputs" && e["rows"] == 2)
        .unwrap();
    let rel = part["path"].as_str().unwrap().to_string();
    let moved = dir.path().join("moved.parquet");
    std::fs::rename(store.join(&rel), &moved).unwrap();

    // Without the flag a reader stops, naming the part; with it, the part is named and left
    // out, and the derived tables follow what is there (rebuilt without its comparisons).
    let (value, said) = count(s, outputs, false);
    assert_eq!(value, None, "{said}");
    assert!(said.contains(&rel), "names the part: {said}");
    let (value, said) = count(s, outputs, true);
    assert_eq!(value, Some(14), "{said}");
    assert!(
        said.contains("skipping damaged part") && said.contains(&rel),
        "{said}"
    );
    assert_eq!(count(s, comparisons, true).0, Some(6));
    let out = util::run(&["--skip-damaged", "report", s, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));

    // Writers refuse the flag.
    let out = util::run(&["collect", "--skip-damaged", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("store repair"), "{}", text(&out));

    // The part comes back (restored from a backup): it is folded in again, nothing twice.
    std::fs::rename(&moved, store.join(&rel)).unwrap();
    assert_eq!(count(s, outputs, false).0, Some(16));
    assert_eq!(count(s, comparisons, false).0, Some(8));
    assert_eq!(
        count(
            s,
            "SELECT count(*) FROM (SELECT DISTINCT cell_a, cell_b, image_id FROM comparisons)",
            false
        )
        .0,
        Some(8)
    );
}

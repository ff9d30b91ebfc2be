//! A failure inside a cell is data: crashes, aborts, hangs, per-image engine errors and models an
//! engine cannot load each fail only their cell (or image), are recorded with the reason, and the
//! sweep goes on.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;

use crate::util::{self, data_sweep, read_table, strings, text};

/// cell status and error, keyed by engine, from the `cells` table.
fn cell_results(store: &std::path::Path) -> BTreeMap<String, (String, Option<String>, i64)> {
    let cells = read_table(store, "cells").all().unwrap();
    let ok = cells
        .column_by_name("images_ok")
        .unwrap()
        .as_primitive::<Int64Type>();
    strings(&cells, "engine")
        .into_iter()
        .zip(strings(&cells, "status"))
        .zip(strings(&cells, "error"))
        .enumerate()
        .map(|(i, ((e, s), err))| (e.unwrap(), (s.unwrap(), err, ok.value(i))))
        .collect()
}

/// Runs `collect --retry-failed` on a sweep, which must succeed.
fn retry_failed(sweep: &std::path::Path) {
    let out = util::run(&[
        "collect",
        "--quiet",
        "--retry-failed",
        sweep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Runs `collect` over data/'s photos on ORT and tract with a fault injected into the workers.
fn collect_with_fault(
    dir: &std::path::Path,
    fault: &str,
    args: &[&str],
) -> (std::path::PathBuf, std::process::Output) {
    util::ort_library("1.32.0");
    let sweep = data_sweep(
        dir,
        "engine = [\"ort\", \"tract\"]\nort_library = [\"1.32.0\"]",
    );
    let out = util::deltann()
        .args(["collect", "--quiet"])
        .args(args)
        .arg(&sweep)
        .env("DELTANN_FAULT", fault)
        .output()
        .unwrap();
    (sweep, out)
}

#[test]
fn a_worker_naming_images_it_was_not_sent_fails_its_cell_and_the_sweep_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = collect_with_fault(dir.path(), "stray-id-after=2", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let store = dir.path().join("store");
    let results = cell_results(&store);
    assert_eq!(results.len(), 2, "both cells ran and have their row");
    for (engine, (status, error, images_ok)) in &results {
        assert_eq!(status, "failed", "{engine}");
        let error = error.as_deref().unwrap();
        assert!(
            error.contains("worker protocol error: result for unknown image `never-sent/"),
            "{engine}: {error}"
        );
        assert_eq!(
            *images_ok, 2,
            "{engine}: the two batches before it were kept"
        );
    }
}

#[test]
fn an_aborting_worker_fails_only_its_cell_and_keeps_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let (sweep, out) = collect_with_fault(dir.path(), "abort-after=3", &["--part-rows", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SIGABRT"), "{stdout}");

    let store = dir.path().join("store");
    let results = cell_results(&store);
    // Both cells ran (the sweep went on after the first crash), both failed after 3 images,
    // whose results were committed.
    assert_eq!(results.len(), 2);
    for (engine, (status, error, images_ok)) in &results {
        assert_eq!(status, "failed", "{engine}");
        let error = error.as_deref().unwrap();
        assert!(error.contains("killed by signal 6 (SIGABRT)"), "{error}");
        assert!(
            error.contains("injected abort"),
            "stderr tail missing: {error}"
        );
        assert_eq!(*images_ok, 3, "{engine}");
    }
    assert_eq!(read_table(&store, "outputs").rows(), 2 * 3);

    // Rerunning leaves failed cells alone; --retry-failed finishes them as attempt 2.
    let again = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--retry-failed"));
    retry_failed(&sweep);
    assert_eq!(read_table(&store, "outputs").rows(), 2 * 8);
    let cells = read_table(&store, "cells").all().unwrap();
    let attempts = crate::util::ints(&cells, "attempt");
    assert_eq!(attempts.iter().filter(|a| **a == Some(2)).count(), 2);
}

#[test]
fn a_hanging_worker_is_killed_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\"]");
    let out = util::deltann()
        .args([
            "collect",
            "--quiet",
            "--stall-timeout",
            "3",
            sweep.to_str().unwrap(),
        ])
        .env("DELTANN_FAULT", "hang-after=2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let results = cell_results(&dir.path().join("store"));
    let (status, error, images_ok) = &results["tract"];
    assert_eq!(status, "failed");
    assert!(error.as_deref().unwrap().contains("timed out"), "{error:?}");
    assert_eq!(*images_ok, 2);
}

#[test]
fn a_process_the_worker_leaves_behind_holding_its_pipes_does_not_hang_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\"]");
    let pidfile = dir.path().join("orphan.pid");
    let out = util::deltann()
        .args([
            "collect",
            "--quiet",
            "--stall-timeout",
            "2",
            sweep.to_str().unwrap(),
        ])
        .env(
            "DELTANN_FAULT",
            format!("orphan-after=2,orphan-pidfile={}", pidfile.display()),
        )
        .output()
        .unwrap();
    // The orphan (`sleep 600`) still holds the worker's stdout and stderr when collect is done.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let alive = std::path::Path::new("/proc").join(pid.trim()).exists();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    assert!(alive, "the orphan ended before collect did");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (status, error, images_ok) = &cell_results(&dir.path().join("store"))["tract"];
    assert_eq!(status, "failed");
    assert!(error.as_deref().unwrap().contains("timed out"), "{error:?}");
    assert_eq!(*images_ok, 2);
}

#[test]
fn an_image_the_engine_rejects_is_an_error_row_and_the_cell_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\"]\nrepetitions = [2]");
    let out = util::deltann()
        .args(["collect", "--quiet", sweep.to_str().unwrap()])
        .env("DELTANN_FAULT", "fail-image=coffee.png")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let (status, _, images_ok) = &cell_results(&store)["tract"];
    assert_eq!((status.as_str(), *images_ok), ("ok", 7));
    let errors = read_table(&store, "errors").all().unwrap();
    assert_eq!(errors.num_rows(), 2, "one per repetition");
    assert!(
        strings(&errors, "image_id")
            .iter()
            .all(|i| i.as_deref() == Some("coffee.png"))
    );
    assert!(
        strings(&errors, "stage")
            .iter()
            .all(|s| s.as_deref() == Some("inference"))
    );
    assert!(
        strings(&errors, "message")[0]
            .as_deref()
            .unwrap()
            .contains("injected failure")
    );
    assert_eq!(read_table(&store, "outputs").rows(), 7 * 2);
    let cells = read_table(&store, "cells").all().unwrap();
    let failed = cells
        .column_by_name("images_failed")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(failed.value(0), 1);

    // A plain rerun has nothing to do; --retry-failed runs the rejected image again (attempt 2),
    // and now that the engine takes it, the cell has every image.
    let again = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(read_table(&store, "outputs").rows(), 7 * 2);
    retry_failed(&sweep);
    assert_eq!(read_table(&store, "outputs").rows(), 8 * 2);
    let cells = read_table(&store, "cells").all().unwrap();
    let attempts = crate::util::ints(&cells, "attempt");
    let failed = cells
        .column_by_name("images_failed")
        .unwrap()
        .as_primitive::<Int64Type>();
    let latest = (0..cells.num_rows()).max_by_key(|&i| attempts[i]).unwrap();
    assert_eq!(attempts[latest], Some(2));
    assert_eq!(failed.value(latest), 0, "the retried image succeeded");
}

#[test]
fn a_failed_repetition_commits_in_one_group_with_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\"]\nrepetitions = [2]");
    let out = util::deltann()
        .args(["collect", "--quiet", sweep.to_str().unwrap()])
        .env("DELTANN_FAULT", "fail-image=coffee.png,fail-rep=1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let errors = read_table(&store, "errors").all().unwrap();
    assert_eq!(errors.num_rows(), 1, "repetition 1 only");
    assert!(
        strings(&errors, "message")[0]
            .as_deref()
            .unwrap()
            .starts_with("repetition 1:")
    );
    assert_eq!(read_table(&store, "outputs").rows(), 8 * 2 - 1);

    // In the manifest (read as plain JSON), the errors part and the outputs part holding the
    // image's good repetition are one group: consecutive lines, marked 0 and 1 of 2.
    let text = std::fs::read_to_string(store.join("_manifest.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = lines.iter().position(|v| v["table"] == "errors").unwrap();
    let (errs, outs) = (&lines[at], &lines[at + 1]);
    assert_eq!(errs["group"], serde_json::json!({"index": 0, "len": 2}));
    assert_eq!(outs["group"], serde_json::json!({"index": 1, "len": 2}));
    assert_eq!(outs["table"], "outputs");
    assert_eq!(errs["cell_id"], outs["cell_id"]);
    assert_eq!(
        errs["seq"].as_u64().unwrap() + 1,
        outs["seq"].as_u64().unwrap()
    );
    // Parts without errors stand alone.
    assert!(lines.iter().filter(|v| v["group"].is_null()).count() >= 3);
}

/// A sweep over data/'s photos with one model file and the given `[environments]` lines.
fn model_sweep(
    dir: &std::path::Path,
    model: &std::path::Path,
    environments: &str,
) -> std::path::PathBuf {
    let name = model.file_stem().unwrap().to_string_lossy();
    util::write_sweep(
        dir,
        &format!(
            "store = \"store\"\n[dataset]\nimages = \"{{data}}/images\"\n[[model]]\n\
             name = \"{name}\"\npath = \"{}\"\npreset = \"unit\"\n[environments]\n{environments}\n",
            model.display()
        ),
    )
}

/// Runs `collect` over data/'s photos with `model` on ORT and tract: the sweep file and the run.
fn collect_on_both_engines(
    dir: &std::path::Path,
    model: &std::path::Path,
) -> (std::path::PathBuf, std::process::Output) {
    util::ort_library("1.32.0");
    let sweep = model_sweep(
        dir,
        model,
        "engine = [\"ort\", \"tract\"]\nort_library = [\"1.32.0\"]",
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    (sweep, out)
}

/// Writes an ONNX model of one graph: `nodes` from `input` (float, shape `input_dims`) to
/// `logits` (shape `output_dims`).
fn onnx_model(
    path: &std::path::Path,
    nodes: Vec<tract_onnx::pb::NodeProto>,
    input_dims: &[i64],
    output_dims: &[i64],
) {
    use deltann_collector::model::{float_tensor_info as tensor, model_of};
    use prost::Message;
    use tract_onnx::pb;
    let model = model_of(pb::GraphProto {
        name: "g".into(),
        node: nodes,
        input: vec![tensor("input", input_dims)],
        output: vec![tensor("logits", output_dims)],
        ..Default::default()
    });
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

fn node(op: &str, input: &str, output: &str) -> tract_onnx::pb::NodeProto {
    tract_onnx::pb::NodeProto {
        op_type: op.into(),
        input: vec![input.into()],
        output: vec![output.into()],
        ..Default::default()
    }
}

/// An ONNX graph with an operator no engine knows: it parses, so the sweep starts, and each
/// engine's refusal becomes that cell's recorded failure.
fn unknown_op_model(path: &std::path::Path) {
    onnx_model(
        path,
        vec![node("NoSuchOperator", "input", "logits")],
        &[1, 3, 224, 224],
        &[1, 1000],
    );
}

/// A model that answers NaN for every class of every image: sqrt(-mean(pixels)).
fn nan_model(path: &std::path::Path) {
    onnx_model(
        path,
        vec![
            node("GlobalAveragePool", "input", "pooled"),
            node("Flatten", "pooled", "flat"),
            node("Neg", "flat", "negative"),
            node("Sqrt", "negative", "logits"),
        ],
        &[1, 3, 32, 32],
        &[1, 3],
    );
}

#[test]
fn nan_scores_are_errors_never_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("nan.onnx");
    nan_model(&model);
    let (sweep, out) = collect_on_both_engines(dir.path(), &model);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let store = dir.path().join("store");
    let outputs = read_table(&store, "outputs").all();
    assert_eq!(
        outputs.map_or(0, |b| b.num_rows()),
        0,
        "a NaN row was stored as a prediction"
    );
    let errors = read_table(&store, "errors").all().unwrap();
    let stages = strings(&errors, "stage");
    let messages = strings(&errors, "message");
    let photos = std::fs::read_dir(util::data().join("images"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jpeg" || x == "jpg" || x == "png")
        })
        .count();
    assert_eq!(errors.num_rows(), 2 * photos, "one per image and engine");
    for (stage, message) in stages.iter().zip(&messages) {
        assert_eq!(stage.as_deref(), Some("output"));
        let m = message.as_deref().unwrap();
        assert!(m.contains("non-finite output: 3 NaN and 0 infinite"), "{m}");
    }
    let results = cell_results(&store);
    for engine in ["ort", "tract"] {
        let (status, error, _) = &results[engine];
        assert_eq!(status, "failed", "{engine}");
        assert!(
            error.as_deref().unwrap().contains("NaN"),
            "{engine}: {error:?}"
        );
    }
    // A resume finds nothing left to run: the failed images are done, as failures.
    let again = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    let errors = read_table(&store, "errors").all().unwrap();
    assert_eq!(errors.num_rows(), 2 * photos, "{}", text(&again));
}

#[test]
fn a_model_no_engine_can_load_fails_its_cells_with_the_engines_words() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("odd.onnx");
    unknown_op_model(&model);
    let (_, out) = collect_on_both_engines(dir.path(), &model);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let results = cell_results(&dir.path().join("store"));
    for engine in ["ort", "tract"] {
        let (status, error, _) = &results[engine];
        assert_eq!(status, "failed");
        let error = error.as_deref().unwrap();
        assert!(
            error.contains("could not load the model"),
            "{engine}: {error}"
        );
        assert!(error.contains("NoSuchOperator"), "{engine}: {error}");
    }
}

#[test]
fn a_batch_the_model_cannot_take_fails_every_image_of_that_cell_only() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    // efficientnet-lite0.onnx declares batch 1: ORT refuses batches of 2 on every call.
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"ort\"]\nort_library = [\"1.32.0\"]\nbatch_size = [1, 2]",
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let store = dir.path().join("store");
    let cells = read_table(&store, "cells").all().unwrap();
    let batch = crate::util::ints(&cells, "batch_size");
    let status = strings(&cells, "status");
    let error = strings(&cells, "error");
    for i in 0..cells.num_rows() {
        match batch[i] {
            Some(1) => assert_eq!(status[i].as_deref(), Some("ok")),
            Some(2) => {
                assert_eq!(status[i].as_deref(), Some("failed"));
                let e = error[i].as_deref().unwrap();
                assert!(e.contains("every image failed (8)"), "{e}");
                assert!(e.contains("Got invalid dimensions"), "{e}");
            }
            other => panic!("unexpected batch {other:?}"),
        }
    }
    assert_eq!(read_table(&store, "errors").rows(), 8);
}

#[test]
fn a_model_declaring_a_huge_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("huge.onnx");
    onnx_model(
        &model,
        vec![node("Identity", "input", "logits")],
        &[1, 3, 65000, 65000],
        &[1, 1000],
    );
    let sweep = model_sweep(dir.path(), &model, "engine = [\"tract\"]");
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(all.contains("huge.onnx"), "{all}");
    assert!(all.contains("input size 65000"), "{all}");
    assert!(all.contains("outside the 8..=4096"), "{all}");
    assert!(!dir.path().join("store").join("outputs").exists(), "{all}");
}

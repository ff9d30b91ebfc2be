//! Engines that live in Python, end to end on CPU: OpenVINO (the smallest of them to install)
//! runs next to ONNX Runtime through its own worker and environment, its settings become cells
//! and columns, the analysis attributes to them, and a worker of its that crashes fails only its
//! cell. An engine whose environment is missing fails its cells with the command that installs
//! it, and the rest of the sweep runs.

use crate::util::{self, data_sweep, read_table, strings, text};

/// engine, status, error, engine_settings and device of one `cells` row.
type CellRow = (String, String, Option<String>, Option<String>, String);

/// Every `cells` row, sorted.
fn cells(store: &std::path::Path) -> Vec<CellRow> {
    let cells = read_table(store, "cells").all().unwrap();
    let mut rows: Vec<_> = strings(&cells, "engine")
        .into_iter()
        .zip(strings(&cells, "status"))
        .zip(strings(&cells, "error"))
        .zip(strings(&cells, "engine_settings"))
        .zip(strings(&cells, "device"))
        .map(|((((e, s), err), set), d)| (e.unwrap(), s.unwrap(), err, set, d.unwrap()))
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_missing_python_engine_fails_its_cells_with_the_install_command() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"tract\", \"openvino\"]\nopenvino_hint = [\"latency\", \"throughput\"]",
    );
    let out = util::deltann()
        .args(["collect", "--quiet", sweep.to_str().unwrap()])
        .env("DELTANN_HOME", &home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let rows = cells(&dir.path().join("store"));
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (engine, status, error, _, _) in &rows {
        if engine == "openvino" {
            assert_eq!(status, "failed");
            let error = error.as_deref().unwrap();
            assert!(
                error.contains("deltann engines install openvino"),
                "{error}"
            );
        } else {
            assert_eq!(status, "ok", "{error:?}");
        }
    }
    let versions = strings(
        &read_table(&dir.path().join("store"), "cells")
            .all()
            .unwrap(),
        "engine_version",
    );
    assert!(
        versions
            .iter()
            .any(|v| v.as_deref() == Some("not installed"))
    );
    // The CPU's instruction-set flags are recorded with every cell (engines pick kernels by them).
    let flags = strings(
        &read_table(&dir.path().join("store"), "cells")
            .all()
            .unwrap(),
        "cpu_flags",
    );
    assert!(
        flags.iter().all(|f| f
            .as_deref()
            .is_some_and(|f| f.contains("sse4_2") || f.contains("asimd"))),
        "{flags:?}"
    );
}

#[test]
fn openvino_runs_beside_onnx_runtime_and_its_settings_are_dimensions() {
    util::ort_library("1.32.0");
    util::python_engine("openvino");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"ort\", \"openvino\"]\nort_library = [\"1.32.0\"]\n\
         openvino_precision = [\"f32\", \"bf16\"]\nrepetitions = [2]",
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let rows = cells(&store);
    let settings: Vec<Option<&str>> = rows.iter().map(|r| r.3.as_deref()).collect();
    assert_eq!(
        settings,
        [
            Some("openvino_hint=latency;openvino_precision=bf16"),
            Some("openvino_hint=latency;openvino_precision=f32"),
            None
        ],
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.1 == "ok" && r.4 == "cpu"), "{rows:?}");
    let versions = strings(
        &read_table(&store, "cells").all().unwrap(),
        "engine_version",
    );
    assert!(
        versions
            .iter()
            .flatten()
            .any(|v| v.starts_with("2026.4.1") && v.contains("numpy 2.4.6")),
        "{versions:?}"
    );
    // Every image, both repetitions, in every cell; OpenVINO in f32 agrees with ORT on the
    // eight photos' top-1.
    let outputs = read_table(&store, "outputs").all().unwrap();
    assert_eq!(outputs.num_rows(), 3 * 8 * 2);
    let dims = util::attributed_dimensions(&store);
    assert!(
        dims.iter().any(|d| d == "engine_settings") && dims.iter().any(|d| d == "engine"),
        "{dims:?}"
    );
    let flips = util::query_value(
        &store,
        "SELECT count(*) FROM comparisons c JOIN cells_latest a ON a.cell_id = c.cell_a \
         JOIN cells_latest b ON b.cell_id = c.cell_b \
         WHERE c.flip AND coalesce(a.engine_settings, '') NOT LIKE '%bf16%' \
         AND coalesce(b.engine_settings, '') NOT LIKE '%bf16%'",
    );
    assert_eq!(flips, "0");
}

#[test]
fn a_crashing_python_worker_fails_only_its_cell() {
    util::python_engine("openvino");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), "engine = [\"tract\", \"openvino\"]");
    let out = util::deltann()
        .args(["collect", "--quiet", sweep.to_str().unwrap()])
        .env("DELTANN_FAULT", "abort-after=2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for (engine, status, error, _, _) in cells(&dir.path().join("store")) {
        // Both workers honour the fault: each cell fails with its crash, keeping its first two
        // batches, and the sweep goes on to the next cell.
        assert_eq!(status, "failed", "{engine}");
        let error = error.unwrap();
        assert!(error.contains("SIGABRT"), "{engine}: {error}");
        if engine == "openvino" {
            assert!(
                error.contains("injected abort"),
                "the worker's stderr: {error}"
            );
        }
    }
    let outputs = read_table(&dir.path().join("store"), "outputs")
        .all()
        .unwrap();
    assert_eq!(outputs.num_rows(), 2 * 2, "two batches of each cell kept");
}

#[test]
fn cuda_cells_are_skipped_not_failed_where_there_is_no_gpu() {
    if std::path::Path::new("/proc/driver/nvidia/gpus").is_dir() {
        eprintln!("SKIPPED: this machine has an NVIDIA GPU");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"tract\", \"torch\"]\ndevice = [\"cpu\", \"cuda\"]\n\
         exclude = [{ engine = \"torch\", device = \"cpu\" }]",
    );
    let out = util::deltann()
        .args(["collect", sweep.to_str().unwrap()])
        .env("DELTANN_HOME", dir.path().join("home"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows = cells(&dir.path().join("store"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (engine, status, error, _, device) = &rows[0];
    assert_eq!(
        (engine.as_str(), status.as_str(), device.as_str()),
        ("torch", "skipped", "cuda")
    );
    assert!(
        error.as_deref().unwrap().contains("no CUDA device"),
        "{error:?}"
    );
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), ("tract", "ok"));
    assert!(text(&out).contains("skipped"), "{}", text(&out));
}

#[test]
fn ort_session_config_entries_reach_onnx_runtime() {
    let Some(shared) = util::shared() else { return };
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let body = |config: &str| {
        format!(
            r#"
store = "store"
warmup = 1
[dataset]
images = "{{data}}/images"
[[model]]
name = "mobilenetv2-int8"
path = "{}/models/mobilenetv2-int8.onnx"
preset = "torchvision"
[environments]
engine = ["ort"]
ort_library = ["1.32.0"]
ort_session_config = {config}
"#,
            shared.display()
        )
    };
    // A malformed entry is refused with the setting's name, before anything runs.
    let sweep = util::write_sweep(dir.path(), &body("[[\"session.disable_quant_qdq\"]]"));
    let out = util::run(&["plan", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("ort_session_config") && text(&out).contains("key=value"),
        "{}",
        text(&out)
    );
    // session.disable_quant_qdq=1 runs the int8 model's QDQ pairs in float: every logit moves.
    let sweep = util::write_sweep(dir.path(), &body("[[], [\"session.disable_quant_qdq=1\"]]"));
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let settings: Vec<Option<String>> = cells(&store).into_iter().map(|r| r.3).collect();
    assert_eq!(
        settings,
        [
            None,
            Some("ort_session_config=session.disable_quant_qdq=1".into())
        ]
    );
    let same = util::query_value(
        &store,
        "SELECT count(*) FROM (SELECT image_id FROM outputs GROUP BY image_id \
         HAVING count(DISTINCT logits_hash) = 1)",
    );
    assert_eq!(same, "0");
}

#[test]
fn ort_optimizers_disabled_by_name_are_cells_of_their_own() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"ort\"]\nort_library = [\"1.32.0\"]\n\
         ort_disabled_optimizers = [[], [\"NchwcTransformer\", \"ConstantFolding\"]]",
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = cells(&dir.path().join("store"));
    let settings: Vec<Option<&str>> = rows.iter().map(|r| r.3.as_deref()).collect();
    assert_eq!(
        settings,
        [
            None,
            Some("ort_disabled_optimizers=NchwcTransformer+ConstantFolding")
        ],
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.1 == "ok"), "{rows:?}");
    let tags = strings(
        &read_table(&dir.path().join("store"), "cells")
            .all()
            .unwrap(),
        "tag",
    );
    assert!(
        tags.iter()
            .flatten()
            .any(|t| t.contains("disabled_optimizers=NchwcTransformer+ConstantFolding")),
        "{tags:?}"
    );
}

#[test]
fn a_python_engine_refusing_a_call_records_every_image_as_an_error_row() {
    util::python_engine("openvino");
    let dir = tempfile::tempdir().unwrap();
    // The demo model's batch dimension is fixed at 1: OpenVINO refuses calls of two images.
    let sweep = data_sweep(dir.path(), "engine = [\"openvino\"]\nbatch_size = [2]");
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let store = dir.path().join("store");
    let rows = cells(&store);
    assert_eq!(rows[0].1, "failed");
    assert!(
        rows[0].2.as_deref().unwrap().contains("every image failed"),
        "{rows:?}"
    );
    let errors = read_table(&store, "errors").all().unwrap();
    assert_eq!(errors.num_rows(), 8);
    assert!(
        strings(&errors, "message")
            .iter()
            .all(|m| m.as_deref().is_some_and(|m| m.contains("RuntimeError"))),
        "{:?}",
        strings(&errors, "message")
    );
    assert_eq!(read_table(&store, "outputs").rows(), 0);
}

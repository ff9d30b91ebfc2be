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

#[test]
fn an_aborting_worker_fails_only_its_cell_and_keeps_its_results() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"ort\", \"tract\"]\nort_library = [\"1.32.0\"]",
    );
    let out = util::deltann()
        .args([
            "collect",
            "--quiet",
            "--part-rows",
            "1",
            sweep.to_str().unwrap(),
        ])
        .env("DELTANN_FAULT", "abort-after=3")
        .output()
        .unwrap();
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
    let retry = util::run(&[
        "collect",
        "--quiet",
        "--retry-failed",
        sweep.to_str().unwrap(),
    ]);
    assert!(retry.status.success(), "{}", text(&retry));
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
}

/// An ONNX graph with an operator no engine knows: it parses, so the sweep starts, and each
/// engine's refusal becomes that cell's recorded failure.
fn unknown_op_model(path: &std::path::Path) {
    use prost::Message;
    use tract_onnx::pb;
    let tensor = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![pb::NodeProto {
                op_type: "NoSuchOperator".into(),
                input: vec!["input".into()],
                output: vec!["logits".into()],
                ..Default::default()
            }],
            input: vec![tensor("input", &[1, 3, 224, 224])],
            output: vec![tensor("logits", &[1, 1000])],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

#[test]
fn a_model_no_engine_can_load_fails_its_cells_with_the_engines_words() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("odd.onnx");
    unknown_op_model(&model);
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            r#"
store = "store"
[dataset]
images = "{{data}}/images"
[[model]]
name = "odd"
path = "{}"
preset = "unit"
[environments]
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
"#,
            model.display()
        ),
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
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

//! Several ONNX Runtime versions in one sweep: each cell's worker loads its own library, so cells
//! of different versions live side by side, with different ids and their versions recorded, from
//! 1.20 (two years before 1.32: deltann asks for ONNX Runtime's C API version 20) to the newest.

use crate::util::{self, data_sweep, read_table, strings, text};

#[test]
fn cells_load_different_onnx_runtime_versions() {
    util::ort_library("1.32.0");
    util::ort_library("1.31.1");
    util::ort_library("1.20.1");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(
        dir.path(),
        "engine = [\"ort\"]\nort_library = [\"1.32.0\", \"1.31.1\", \"1.20.1\"]",
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let cells = read_table(&dir.path().join("store"), "cells")
        .all()
        .unwrap();
    let mut versions: Vec<String> = strings(&cells, "engine_version")
        .into_iter()
        .flatten()
        .collect();
    versions.sort();
    assert_eq!(versions, vec!["1.20.1", "1.31.1", "1.32.0"]);
    let libraries: Vec<String> = strings(&cells, "ort_library")
        .into_iter()
        .flatten()
        .collect();
    assert!(
        libraries
            .iter()
            .any(|l| l.ends_with("libonnxruntime.so.1.31.1")),
        "{libraries:?}"
    );
    let mut ids = strings(&cells, "cell_id");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        read_table(&dir.path().join("store"), "outputs").rows(),
        3 * 8
    );
}

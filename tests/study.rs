//! `scripts/study.sh SWEEP --report`: a study's REPORT.md is a pure function of its store, so the
//! committed report can be checked against the store by regenerating it. Here on a small store
//! the collector wrote from data/: two regenerations give the same bytes, and every section
//! names the command behind its numbers.

use std::process::Command;

use crate::util::{self, text};

#[test]
fn a_study_report_regenerates_byte_for_byte() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = util::write_sweep(
        dir.path(),
        r#"
store = "store"
warmup = 1
[dataset]
images = "{data}/images"
labels = "{data}/labels.csv"
[[model]]
name = "efficientnet-lite0"
path = "{data}/efficientnet-lite0.onnx"
preset = "tf127"
classes = "{data}/imagenet_classes.txt"
variants = [
  { name = "efficientnet-lite0-int8", path = "{data}/efficientnet-lite0-int8.onnx", precision = "int8" },
]
[environments]
engine = ["ort"]
ort_library = ["1.32.0"]
ort_optimization = ["basic", "all"]
repetitions = [2]
"#,
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let report = || {
        let out = Command::new(util::root().join("scripts/study.sh"))
            .arg(&sweep)
            .arg("--report")
            .env("DELTANN", env!("CARGO_BIN_EXE_deltann"))
            .current_dir(util::root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read(dir.path().join("sweep/REPORT.md")).unwrap()
    };
    let first = report();
    // The second from scratch: no cached analysis, no derived tables.
    std::fs::remove_dir_all(dir.path().join("store/_cache")).unwrap();
    std::fs::remove_dir_all(dir.path().join("store/derived")).unwrap();
    let second = report();
    assert_eq!(first, second, "REPORT.md differs between two regenerations");
    let md = String::from_utf8(first).unwrap();
    for section in [
        "## Where it ran",
        "## The analysis",
        "## Saved query `flip_matrix`",
        "## Saved query `precision_effect`",
        "--saved flip_matrix --format markdown",
        "### Most disagreeing pairs",
    ] {
        assert!(md.contains(section), "{section} missing:\n{md}");
    }
    assert!(dir.path().join("sweep/report.html").is_file());
}

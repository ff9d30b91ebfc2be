//! Reference accuracy (slow: about two minutes in a debug build): MobileNetV2 and
//! EfficientNet-Lite0 on the 1000 ImageNet photos of ../shared, through both engines, must
//! reproduce the top-1 and top-5 accuracy MANIFEST.md reports (measured with onnxruntime and
//! Pillow/torchvision preprocessing) within 0.5 points. Skips, saying so, where ../shared is absent.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int32Type;

use crate::util::{self, read_table, strings, text};

#[test]
fn slow_reference_accuracy_of_mobilenetv2_and_efficientnet_lite0() {
    let Some(shared) = util::shared() else { return };
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            r#"
store = "store"
logits = "top5"
warmup = 1
[dataset]
images = "{s}/images/imagenet-sample"
labels = "{s}/images/labels.csv"
[[model]]
name = "mobilenetv2"
path = "{s}/models/mobilenetv2.onnx"
preset = "torchvision"
[[model]]
name = "efficientnet-lite0"
path = "{s}/models/efficientnet-lite0.onnx"
preset = "tf127"
[environments]
engine = ["ort", "tract"]
ort_library = ["1.32.0"]
"#,
            s = shared.display()
        ),
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

    // (top-1, top-5) from MANIFEST.md.
    let reference = BTreeMap::from([
        ("mobilenetv2", (0.828, 0.960)),
        ("efficientnet-lite0", (0.877, 0.972)),
    ]);
    let outputs = read_table(&dir.path().join("store"), "outputs");
    let mut measured = BTreeMap::new();
    for (partition, batch) in &outputs.parts {
        let key = (partition["model"].clone(), partition["engine"].clone());
        let labels = batch
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Int32Type>();
        let top5 = batch.column_by_name("top5").unwrap().as_list::<i32>();
        let entry = measured.entry(key).or_insert((0usize, 0usize, 0usize));
        for row in 0..batch.num_rows() {
            let label = labels.value(row);
            let ranked = top5.value(row);
            let ranked = ranked.as_primitive::<Int32Type>();
            entry.0 += usize::from(ranked.value(0) == label);
            entry.1 += usize::from(ranked.values().contains(&label));
            entry.2 += 1;
        }
        assert!(labels.null_count() == 0);
    }
    assert_eq!(measured.len(), 4, "{measured:?}");
    let mut report = String::new();
    for ((model, engine), (top1, top5, n)) in &measured {
        assert_eq!(*n, 1000, "{model} {engine}");
        let (want1, want5) = reference[model.as_str()];
        let (got1, got5) = (*top1 as f64 / 1000.0, *top5 as f64 / 1000.0);
        report.push_str(&format!(
            "{model} {engine}: top-1 {got1:.3} (ref {want1}), top-5 {got5:.3} (ref {want5})\n"
        ));
        assert!((got1 - want1).abs() <= 0.005 + 1e-9, "{report}");
        assert!((got5 - want5).abs() <= 0.005 + 1e-9, "{report}");
    }
    println!("{report}");
    let cells = read_table(&dir.path().join("store"), "cells")
        .all()
        .unwrap();
    assert!(
        strings(&cells, "status")
            .iter()
            .all(|s| s.as_deref() == Some("ok"))
    );
}

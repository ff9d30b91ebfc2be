//! A real sweep of the shipped model and photos through both engines at two optimization levels
//! each, read back with arrow-rs and checked column by column.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, UInt64Type};
use sha2::Digest;

use crate::util::{self, data_sweep, ints, read_table, strings, text};

const ENVIRONMENTS: &str = r#"
engine = ["ort", "tract"]
ort_optimization = ["disabled", "all"]
ort_library = ["1.32.0"]
tract_plan = ["decluttered", "optimized"]
repetitions = [2]
"#;

fn labels() -> HashMap<String, i32> {
    std::fs::read_to_string(util::data().join("labels.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let file = f.next().unwrap().trim_start_matches("images/").to_string();
            (file, f.next().unwrap().parse().unwrap())
        })
        .collect()
}

#[test]
fn data_sweep_both_engines_two_optimization_levels() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let sweep = data_sweep(dir.path(), ENVIRONMENTS);
    let store = dir.path().join("store");

    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(ref)"), "summary table missing:\n{stdout}");

    let images: BTreeSet<String> = std::fs::read_dir(util::data().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(images.len(), 8);

    // cells: 2 ORT levels + 2 tract plans, all ok, with engine versions and host facts.
    let cells = read_table(&store, "cells").all().unwrap();
    assert_eq!(cells.num_rows(), 4);
    assert!(
        strings(&cells, "status")
            .iter()
            .all(|s| s.as_deref() == Some("ok"))
    );
    let mut engines: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for ((engine, version), (opt, plan)) in strings(&cells, "engine")
        .into_iter()
        .zip(strings(&cells, "engine_version"))
        .zip(
            strings(&cells, "ort_optimization")
                .into_iter()
                .zip(strings(&cells, "tract_plan")),
        )
    {
        let engine = engine.unwrap();
        let setting = opt.or(plan).unwrap();
        engines
            .entry(format!("{engine} {}", version.unwrap()))
            .or_default()
            .insert(setting);
    }
    assert_eq!(
        engines,
        BTreeMap::from([
            (
                "ort 1.32.0".to_string(),
                BTreeSet::from(["all".into(), "disabled".into()])
            ),
            (
                "tract 0.23.9".to_string(),
                BTreeSet::from(["decluttered".into(), "optimized".into()])
            ),
        ])
    );
    let ok = cells
        .column_by_name("images_ok")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(ok.iter().all(|v| v == Some(8)));
    assert!(
        strings(&cells, "cpu_model")
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| !c.is_empty()))
    );
    let cell_ids: BTreeSet<String> = strings(&cells, "cell_id").into_iter().flatten().collect();
    assert_eq!(cell_ids.len(), 4);

    // outputs: 4 cells x 8 images x 2 repetitions, Hive-partitioned by model and engine.
    let outputs = read_table(&store, "outputs");
    assert_eq!(outputs.rows(), 4 * 8 * 2);
    for (partition, _) in &outputs.parts {
        assert_eq!(partition["model"], "efficientnet-lite0");
        assert!(["ort", "tract"].contains(&partition["engine"].as_str()));
    }
    let all = outputs.all().unwrap();
    let mut seen = BTreeSet::new();
    let labels = labels();
    let ids = strings(&all, "cell_id");
    let image_ids = strings(&all, "image_id");
    let reps = ints(&all, "repetition");
    let row_labels = ints(&all, "label");
    let top1 = ints(&all, "top1");
    let logits = all.column_by_name("logits").unwrap().as_binary::<i32>();
    let top5 = all.column_by_name("top5").unwrap().as_list::<i32>();
    let hashes = all
        .column_by_name("logits_hash")
        .unwrap()
        .as_primitive::<UInt64Type>();
    let latency = all
        .column_by_name("latency_ns")
        .unwrap()
        .as_primitive::<Int64Type>();
    for row in 0..all.num_rows() {
        let cell = ids[row].clone().unwrap();
        let image = image_ids[row].clone().unwrap();
        assert!(cell_ids.contains(&cell));
        assert!(images.contains(&image), "{image}");
        assert!(
            seen.insert((cell, image.clone(), reps[row].unwrap())),
            "duplicate row"
        );
        assert_eq!(row_labels[row], labels.get(&image).copied(), "{image}");
        // The logits are one binary value per row: the float32s' little-endian bytes.
        let bytes = logits.value(row);
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(values.len(), 1000);
        assert_eq!(top5.value(row).len(), 5);
        // top1 is the argmax, and the hash is xxh3 of the little-endian float bytes.
        let argmax =
            (0..values.len()).max_by(|&a, &b| values[a].total_cmp(&values[b]).then(b.cmp(&a)));
        assert_eq!(top1[row], argmax.map(|i| i as i32));
        assert_eq!(hashes.value(row), xxhash_rust::xxh3::xxh3_64(bytes));
        assert!(latency.value(row) > 0);
    }

    // The labelled photos are recognised (bald eagle, pelican, espresso) by every cell.
    for (row, image) in image_ids.iter().enumerate() {
        if let Some(image) = image
            && ["bald_eagle.jpeg", "pelican.jpeg", "coffee.png"].contains(&image.as_str())
        {
            assert_eq!(top1[row], row_labels[row], "{image}");
        }
    }

    // models: the file's real sha256; images: one row per photo, decoded.
    let models = read_table(&store, "models").all().unwrap();
    let sha = hex::encode(sha2::Sha256::digest(
        std::fs::read(util::data().join("efficientnet-lite0.onnx")).unwrap(),
    ));
    assert_eq!(strings(&models, "sha256"), vec![Some(sha)]);
    let class_names = models
        .column_by_name("class_names")
        .unwrap()
        .as_list::<i32>();
    assert_eq!(class_names.value(0).len(), 1000);
    let image_rows = read_table(&store, "images").all().unwrap();
    assert_eq!(image_rows.num_rows(), 8);
    assert!(
        strings(&image_rows, "status")
            .iter()
            .all(|s| s.as_deref() == Some("ok"))
    );
    assert!(read_table(&store, "errors").parts.is_empty());

    // Every Parquet file on disk is a committed part, and every committed part is on disk.
    let committed: BTreeSet<String> = util::manifest_paths(&store).into_iter().collect();
    let on_disk: usize = ["runs", "models", "images", "cells", "outputs", "errors"]
        .iter()
        .map(|t| read_table(&store, t).parts.len())
        .sum();
    assert_eq!(committed.len(), on_disk);
    for path in &committed {
        assert!(store.join(path).is_file(), "{path}");
    }

    // Running again does nothing and commits nothing; `plan` shows the same ids, all ok.
    let again = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in the store"));
    assert_eq!(util::manifest_paths(&store).len(), committed.len() + 1); // one `runs` row
    let plan = util::run(&["plan", sweep.to_str().unwrap()]);
    let plan_out = String::from_utf8_lossy(&plan.stdout);
    for id in &cell_ids {
        assert!(plan_out.contains(id.as_str()), "{plan_out}");
    }
    assert!(plan_out.contains("4 cells (4 ok)"), "{plan_out}");
}

#[test]
fn cell_ids_are_deterministic_and_sensitive_to_settings() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let ids = |env: &str| -> Vec<String> {
        let sweep = data_sweep(dir.path(), env);
        let out = util::run(&["plan", sweep.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('┆').nth(1).map(|s| s.trim().to_string()))
            .filter(|s| s.len() == 16)
            .collect()
    };
    let a = ids("engine = [\"tract\"]\nthreads = [1, 2]");
    assert_eq!(a.len(), 2);
    assert_eq!(a, ids("engine = [\"tract\"]\nthreads = [1, 2]"));
    let b = ids("engine = [\"tract\"]\nthreads = [1, 2]\nbatch_size = [2]");
    assert!(a.iter().all(|id| !b.contains(id)));
    // Excluding a combination removes exactly that cell.
    let c = ids("engine = [\"tract\"]\nthreads = [1, 2]\nexclude = [{ threads = 2 }]");
    assert_eq!(c, vec![a[0].clone()]);
    // An engine's settings multiply its own cells only; devices apply to the engines that run
    // there, and CPU cells keep the ids they had before devices were a dimension.
    let d = ids(
        "engine = [\"tract\", \"openvino\"]\nthreads = [1]\nopenvino_hint = [\"latency\", \"throughput\"]",
    );
    assert_eq!(d.len(), 3, "{d:?}");
    assert_eq!(d[0], a[0]);
    // An exclude rule on a setting removes that engine's cells with the value, and no others.
    let f = ids(
        "engine = [\"tract\", \"openvino\"]\nthreads = [1]\nopenvino_hint = [\"latency\", \"throughput\"]\n\
         exclude = [{ openvino_hint = \"throughput\" }]",
    );
    assert_eq!(f, d[..2].to_vec());
    let e = ids("engine = [\"tract\"]\nthreads = [1, 2]\ndevice = [\"cpu\", \"cuda\"]");
    assert_eq!(e, a);
}

#[test]
fn plan_warns_when_resize_filters_cannot_change_a_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // Pre-resized photos: the short side already 256, torchvision's resize size for 224.
    let images = dir.path().join("resized");
    std::fs::create_dir_all(&images).unwrap();
    for (name, w, h) in [("wide.png", 300, 256), ("tall.png", 256, 341)] {
        image::RgbImage::from_pixel(w, h, image::Rgb([90, 120, 200]))
            .save(images.join(name))
            .unwrap();
    }
    let body = |images: &str| {
        format!(
            r#"
store = "store"
[dataset]
images = "{images}"
[[model]]
name = "efficientnet-lite0"
path = "{{data}}/efficientnet-lite0.onnx"
preset = "torchvision"
[environments]
engine = ["tract"]
resize_filter = ["bilinear", "bicubic"]
"#
        )
    };
    let plan = |images: &str| {
        let sweep = util::write_sweep(dir.path(), &body(images));
        let out = util::run(&["plan", sweep.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = plan(images.to_str().unwrap());
    assert!(
        warned.contains("none of the 2 images is resized"),
        "{warned}"
    );
    // The demo photos come in many sizes: the filters matter, and nothing is said.
    let quiet = plan("{data}/images");
    assert!(!quiet.contains("resize_filter lists"), "{quiet}");
}

#[test]
fn preprocess_implementations_are_cells_columns_and_an_analysis_dimension() {
    let dir = tempfile::tempdir().unwrap();
    // Four implementations x two filters: OpenCV and TensorFlow have their own bilinear, so
    // they make one cell each; the Pillow ones make two each.
    let sweep = util::data_sweep(
        dir.path(),
        "engine = [\"tract\"]\npreprocess = [\"torchvision\", \"pil-round\", \"opencv\", \"tf\"]\n\
         resize_filter = [\"bilinear\", \"bicubic\"]",
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let cells = read_table(&store, "cells").all().unwrap();
    let mut rows: Vec<(String, String)> = strings(&cells, "preprocess")
        .into_iter()
        .zip(strings(&cells, "resize_filter"))
        .map(|(p, f)| (p.unwrap(), f.unwrap()))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("opencv", "bilinear-no-antialias"),
            ("pil-round", "bicubic"),
            ("pil-round", "bilinear"),
            ("tf", "bilinear-no-antialias"),
            ("torchvision", "bicubic"),
            ("torchvision", "bilinear"),
        ]
        .map(|(p, f)| (p.to_string(), f.to_string()))
    );
    // The implementations change the tensors of the resized photos, so their logits differ.
    let hashes = util::query_value(
        &store,
        "SELECT count(DISTINCT c.preprocess) FROM outputs o JOIN cells_latest c \
         ON o.cell_id = c.cell_id WHERE o.image_id LIKE 'rocket%' AND c.resize_filter <> 'bicubic' \
         GROUP BY o.image_id HAVING count(DISTINCT o.logits_hash) = 4",
    );
    assert_eq!(hashes, "4");
    let dims = util::attributed_dimensions(&store);
    assert!(
        dims.iter().any(|d| d == "preprocess") && dims.iter().any(|d| d == "resize_filter"),
        "{dims:?}"
    );
    // An exclude rule names an implementation.
    let sweep = util::data_sweep(
        dir.path(),
        "engine = [\"tract\"]\npreprocess = [\"torchvision\", \"opencv\"]\n\
         exclude = [{ preprocess = \"opencv\" }]",
    );
    let plan = util::run(&["plan", sweep.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", text(&plan));
    let planned = String::from_utf8_lossy(&plan.stdout);
    assert!(!planned.contains("preprocess=opencv"), "{planned}");
    assert_eq!(planned.matches("engine=tract,").count(), 1, "{planned}");
}

//! Collector throughput against the bare engine, side by side in one run.
//!
//! Guards the collector's overhead: worker process, pipe transfer, top-5 and hashing, Parquet
//! encoding and commits must cost little next to inference. For each engine setting, rounds
//! alternate between
//!
//! - **bare**: the engine loaded in this process, running the same preprocessed tensors in a
//!   tight loop (warm-up included, model load excluded), and
//! - **collector**: a full `collect` of the same cell into a fresh store, timed by the cell's own
//!   `wall_s` minus its `load_ms` (so worker start, transfer, post-processing, Parquet writes and
//!   commits all count against the collector),
//!
//! and the medians are compared. It also reports bytes per stored output row with full logits and
//! with top-5 only. The goal is a collector/bare ratio of at least 0.95.
//!
//! ```sh
//! CARGO_TARGET_DIR=target-bench cargo bench -p deltann-collector --bench throughput
//! ```
//! Environment: `DELTANN_BENCH_IMAGES` (a folder; default ../shared/images/imagenet-sample, else
//! data/images), `DELTANN_BENCH_LIMIT` (default 500), `DELTANN_BENCH_ROUNDS` (default 5),
//! `DELTANN_BENCH_MODEL` (default data/efficientnet-lite0.onnx, preset tf127).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::Float64Type;
use deltann_collector::collect::{self, CollectOptions, Silent};
use deltann_collector::engine;
use deltann_collector::prepare;
use deltann_collector::protocol;
use deltann_collector::runner::{Timeouts, WorkerCommand};
use deltann_collector::sink::SinkConfig;
use deltann_collector::sweep::Sweep;
use deltann_store::schema::col;
use deltann_store::{Store, StoreWriter, Table};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Setting {
    label: &'static str,
    environments: &'static str,
}

const SETTINGS: [Setting; 2] = [
    Setting {
        label: "ort 1.32.0, opt=all, 1 thread",
        environments: "engine = [\"ort\"]\nort_optimization = [\"all\"]\nort_library = [\"1.32.0\"]",
    },
    Setting {
        label: "tract, optimized, 1 thread",
        environments: "engine = [\"tract\"]\ntract_plan = [\"optimized\"]",
    },
];

fn sweep(dir: &Path, images: &Path, model: &Path, limit: usize, logits: &str, env: &str) -> Sweep {
    let text = format!(
        r#"
store = "store"
logits = "{logits}"
warmup = 3
[dataset]
images = "{}"
limit = {limit}
[[model]]
name = "bench"
path = "{}"
preset = "tf127"
[environments]
{env}
"#,
        images.display(),
        model.display()
    );
    let path = dir.join("sweep.toml");
    std::fs::write(&path, &text).unwrap();
    Sweep::parse(&path, &text).unwrap()
}

fn options(store: PathBuf) -> CollectOptions {
    CollectOptions {
        store,
        worker: WorkerCommand {
            program: std::env::current_exe().unwrap(),
            args: vec!["worker".into()],
        },
        parallel_cells: 1,
        timeouts: Timeouts::default(),
        retry_failed: false,
        sink: SinkConfig::default(),
        keep_tensors: false,
        command_line: "bench".into(),
        host: "bench".into(),
        shard: None,
    }
}

/// One collector run: (images per second excluding model load, bytes per output row).
fn collector_run(sweep: &Sweep, store: &Path) -> (f64, f64, usize) {
    let _ = std::fs::remove_dir_all(store);
    let report = collect::collect(sweep, &options(store.to_path_buf()), &Silent).unwrap();
    assert!(
        report.outcomes.iter().all(|o| o.failure.is_none()),
        "{:?}",
        report.outcomes
    );
    let store = Store::open(store).unwrap();
    let mut wall = 0.0;
    let mut load = 0.0;
    for batch in store.scan_table(Table::Cells, &[col::LOAD_MS, col::WALL_S]) {
        let batch = batch.unwrap();
        load = batch.column(0).as_primitive::<Float64Type>().value(0);
        wall = batch.column(1).as_primitive::<Float64Type>().value(0);
    }
    let (rows, bytes) = store
        .parts(Table::Outputs)
        .fold((0u64, 0u64), |(r, b), p| (r + p.rows, b + p.bytes));
    (
        rows as f64 / (wall - load / 1e3),
        bytes as f64 / rows as f64,
        rows as usize,
    )
}

/// One bare run: the engine in process, in a tight loop over the batches.
fn bare_run(
    config: &engine::EngineConfig,
    batches: &[arrow::record_batch::RecordBatch],
    warmup: usize,
) -> f64 {
    let mut engine = engine::load(config).unwrap();
    let inputs: Vec<(&[f32], usize)> = batches
        .iter()
        .map(|b| {
            let t = b.column(1).as_fixed_size_list();
            let v = t
                .values()
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values();
            (&v[..], b.num_rows())
        })
        .collect();
    let started = Instant::now();
    for _ in 0..warmup {
        engine.run(inputs[0].0, inputs[0].1).unwrap();
    }
    let mut images = 0;
    for (input, rows) in &inputs {
        let out = engine.run(input, *rows).unwrap();
        std::hint::black_box(out.values);
        images += rows;
    }
    images as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        deltann_collector::worker::serve(std::io::stdin(), std::io::stdout()).unwrap();
        return;
    }
    let shared = root().join("../shared/images/imagenet-sample");
    let default_images = if shared.is_dir() {
        shared
    } else {
        root().join("data/images")
    };
    let images = PathBuf::from(env_or(
        "DELTANN_BENCH_IMAGES",
        &default_images.display().to_string(),
    ));
    let model = PathBuf::from(env_or(
        "DELTANN_BENCH_MODEL",
        &root()
            .join("data/efficientnet-lite0.onnx")
            .display()
            .to_string(),
    ));
    let limit: usize = env_or("DELTANN_BENCH_LIMIT", "500").parse().unwrap();
    let rounds: usize = env_or("DELTANN_BENCH_ROUNDS", "5").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let available = std::fs::read_dir(&images).map_or(0, |d| d.count());
    println!(
        "throughput: {} on {} images from {}, {rounds} rounds, cpu: {}",
        model.file_name().unwrap().to_string_lossy(),
        limit.min(available),
        images.display(),
        deltann_collector::host::Host::current().cpu_model
    );
    if available < limit {
        println!(
            "WARNING: only {available} images there, fewer than the {limit} asked for: the \
             collector's per-cell fixed costs (worker start, fsyncs) weigh more and its ratio \
             reads low; set DELTANN_BENCH_IMAGES to a larger folder (../shared has 1000)"
        );
    }

    for setting in &SETTINGS {
        let sweep = sweep(
            dir.path(),
            &images,
            &model,
            limit,
            "full",
            setting.environments,
        );
        // The same tensors the collector feeds its workers, prepared once, held in memory.
        let plan = deltann_collector::plan::Plan::build(&sweep, "bench", &|e, lib| {
            engine::version(e, lib).map_err(deltann_collector::Error::Engine)
        })
        .unwrap();
        let cell = &plan.cells[0];
        let dataset = deltann_collector::dataset::Dataset::load(&sweep.dataset).unwrap();
        let (writer, _) = StoreWriter::open(&dir.path().join("tensors")).unwrap();
        let prepared = prepare::prepare(
            &writer,
            &dataset,
            std::slice::from_ref(&cell.preprocess),
            "bench",
            &Silent,
        )
        .unwrap();
        let cache = &prepared.caches[&cell.preprocess.key()];
        let batches: Vec<_> = prepare::stream(cache, cache.ids.clone(), cell.batch_size as usize)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        assert_eq!(
            batches[0].schema(),
            protocol::input_schema(cell.preprocess.tensor_len())
        );
        let config = cell.engine_config();

        let (mut bare, mut coll) = (Vec::new(), Vec::new());
        let mut bytes_full = 0.0;
        for _ in 0..rounds {
            bare.push(bare_run(&config, &batches, 3));
            let (ips, bytes, _) = collector_run(&sweep, &dir.path().join("store"));
            coll.push(ips);
            bytes_full = bytes;
        }
        let top5 = self::sweep(
            dir.path(),
            &images,
            &model,
            limit,
            "top5",
            setting.environments,
        );
        let (_, bytes_top5, rows) = collector_run(&top5, &dir.path().join("store"));
        let (b, c) = (median(bare.clone()), median(coll.clone()));
        println!(
            "{:<32} bare {:>7.1} img/s  collector {:>7.1} img/s  ratio {:.3}  (rounds: bare {:?}, collector {:?})",
            setting.label,
            b,
            c,
            c / b,
            bare.iter()
                .map(|v| (v * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            coll.iter()
                .map(|v| (v * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
        );
        println!(
            "{:<32} bytes per output row: {:.0} with full logits, {:.0} with top-5 only ({rows} rows)",
            "", bytes_full, bytes_top5
        );
        std::fs::remove_dir_all(dir.path().join("tensors")).ok();
        drop(writer);
    }
}

//! Realistic synthetic stores, for tests (small, deterministic, with known effects) and for the
//! analyzer benchmark (a million output rows with full logits).
//!
//! Each family has "true" logits per image, with the labelled class boosted so accuracy is about
//! what real ImageNet models reach. Each cell perturbs them according to its environment, in the
//! proportions seen on real models: int8 variants strongly (flips of several percent), fp16
//! slightly, engine and optimization level barely, threads and batch size not at all (bit-identical
//! logits). Latencies follow the environment too, with one planted regression: ORT's `extended`
//! level is slower than `basic` in the first family, so contrasts have something to find.
//! The store is written through the real commit protocol, and its `outputs` rows through the
//! store's own row definition (ranking, softmax, hash: `deltann_store::outputs`), the same the
//! collector uses, so it is a store like any other.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Builder, Float64Array, Int32Array, Int64Array, ListBuilder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondArray,
};
use deltann_store::outputs::{self, OutputRow, OutputsBuilder};
use deltann_store::schema::{self, col};
use deltann_store::{PartMeta, Partition, StoreWriter, Table};

/// What can go wrong writing a synthetic store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store could not be written.
    #[error(transparent)]
    Store(#[from] deltann_store::Error),
    /// A batch did not fit its table's schema (a bug here).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The spec asks for something a store cannot hold.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for synth results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    pub images: usize,
    pub families: usize,
    pub classes: usize,
    /// Precision variants per family (the first is the base model).
    pub precisions: Vec<&'static str>,
    /// (engine, optimization) settings.
    pub engines: Vec<(&'static str, &'static str)>,
    pub threads: Vec<i32>,
    pub batches: Vec<i32>,
    pub repetitions: i32,
    pub keep_logits: bool,
    pub seed: u64,
    /// ONNX Runtime version recorded for ORT cells (part of their ids).
    pub ort_version: &'static str,
    /// Add a failed cell and an undecodable image, as real sweeps have.
    pub failures: bool,
    /// Where the images table says the pictures are (default `/synthetic`).
    pub image_dir: Option<std::path::PathBuf>,
    /// Rows per committed `outputs` part (the collector's default is 4096).
    pub part_rows: usize,
}

impl Spec {
    /// The benchmark's shape: 4 families x 48 cells x 5250 images = 1,008,000 rows.
    pub fn benchmark() -> Self {
        Self {
            images: 5250,
            families: 4,
            classes: 1000,
            precisions: vec!["fp32", "fp16", "int8"],
            engines: vec![
                ("ort", "disabled"),
                ("ort", "basic"),
                ("ort", "all"),
                ("tract", "optimized"),
            ],
            threads: vec![1, 2],
            batches: vec![1, 4],
            repetitions: 1,
            keep_logits: true,
            seed: 42,
            ort_version: "1.32.0",
            failures: false,
            image_dir: None,
            part_rows: 4096,
        }
    }

    /// A small store with every effect, for tests: 2 families x 18 cells, 60 images, 2 reps,
    /// plus a failed cell and an undecodable image.
    pub fn small() -> Self {
        Self {
            images: 60,
            families: 2,
            classes: 10,
            precisions: vec!["fp32", "fp16", "int8"],
            engines: vec![
                ("ort", "basic"),
                ("ort", "extended"),
                ("tract", "optimized"),
            ],
            threads: vec![1, 2],
            batches: vec![1],
            repetitions: 2,
            keep_logits: true,
            seed: 7,
            ort_version: "1.32.0",
            failures: true,
            image_dir: None,
            part_rows: 4096,
        }
    }

    /// Cells per family.
    pub fn cells_per_family(&self) -> usize {
        self.precisions.len() * self.engines.len() * self.threads.len() * self.batches.len()
    }

    /// Output rows in all.
    pub fn rows(&self) -> usize {
        self.families * self.cells_per_family() * self.images * self.repetitions as usize
    }
}

struct Cell {
    id: String,
    family: usize,
    model: String,
    precision: &'static str,
    engine: &'static str,
    opt: &'static str,
    threads: i32,
    batch: i32,
}

fn cells(spec: &Spec) -> Vec<Cell> {
    let mut out = Vec::new();
    for f in 0..spec.families {
        for p in &spec.precisions {
            for (engine, opt) in &spec.engines {
                for &threads in &spec.threads {
                    for &batch in &spec.batches {
                        let family = format!("family{f}");
                        let model = if *p == spec.precisions[0] {
                            family.clone()
                        } else {
                            format!("{family}-{p}")
                        };
                        let mut key = deltann_store::ids::CellKey::new();
                        key.set("model", &model)
                            .set("engine", engine)
                            .set("opt", opt)
                            .set("threads", threads)
                            .set("batch", batch)
                            .set(
                                "version",
                                if *engine == "ort" {
                                    spec.ort_version
                                } else {
                                    "0.23.9"
                                },
                            )
                            .set("synth", spec.seed);
                        out.push(Cell {
                            id: key.id(),
                            family: f,
                            model,
                            precision: p,
                            engine,
                            opt,
                            threads,
                            batch,
                        });
                    }
                }
            }
        }
    }
    out
}

/// A standard-normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f32 {
    let u1 = rng.f64().max(1e-12);
    let u2 = rng.f64();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// How a cell's logits move away from its family's truth: a precision part that depends on the
/// model file only (the same quantised weights give the same error whatever runs them) and an
/// engine part that depends on the engine and its optimization. Threads and batch size add
/// nothing, so such cells get bit-identical logits, as they do on real CPU engines.
fn perturbation(cell: &Cell) -> [(f32, String); 2] {
    let precision = match cell.precision {
        "int8" => 1.5,
        "fp16" => 0.05,
        _ => 0.0,
    };
    let engine = match (cell.engine, cell.opt) {
        ("tract", _) => 0.004,
        (_, "disabled") => 0.0,
        _ => 0.001,
    };
    [
        (precision, format!("model:{}", cell.model)),
        (engine, format!("engine:{}:{}", cell.engine, cell.opt)),
    ]
}

/// Base latency (ms) of a cell.
fn latency_ms(cell: &Cell) -> f64 {
    let base = match (cell.engine, cell.opt) {
        ("ort", "disabled") => 25.0,
        ("ort", "basic") => 12.0,
        ("ort", "extended") => {
            if cell.family == 0 {
                15.0
            } else {
                11.0
            }
        }
        ("ort", _) => 8.0,
        _ => 40.0,
    };
    let precision = match cell.precision {
        "int8" => 0.7,
        "fp16" => 1.3,
        _ => 1.0,
    };
    let threads = 1.0 / (1.0 + 0.7 * f64::from(cell.threads - 1));
    let batch = if cell.batch > 1 { 0.85 } else { 1.0 };
    base * precision * threads * batch
}

/// Writes a synthetic store at `root` (which must not exist or be empty).
///
/// # Errors
/// Fails when the store cannot be written.
pub fn generate(root: &Path, spec: &Spec) -> Result<()> {
    let (store, _) = StoreWriter::open(root)?;
    let cells = cells(spec);
    let run = "synthetic";
    let image_id = |i: usize| format!("img-{i:05}.jpg");
    let label = |i: usize| (i % spec.classes) as i32;

    // models and images
    let models: Vec<(String, usize, &str)> = (0..spec.families)
        .flat_map(|f| {
            spec.precisions.iter().map(move |p| {
                let family = format!("family{f}");
                let model = if *p == spec.precisions[0] {
                    family
                } else {
                    format!("family{f}-{p}")
                };
                (model, f, *p)
            })
        })
        .collect();
    let class_names: Vec<String> = (0..spec.classes).map(|c| format!("class {c}")).collect();
    let n = models.len();
    let mut names = ListBuilder::new(StringBuilder::new());
    let mut mean = ListBuilder::new(Float32Builder::new());
    let mut std = ListBuilder::new(Float32Builder::new());
    for _ in 0..n {
        for c in &class_names {
            names.values().append_value(c);
        }
        names.append(true);
        mean.values().append_slice(&[0.0; 3]);
        mean.append(true);
        std.values().append_slice(&[1.0; 3]);
        std.append(true);
    }
    let text = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
    let same = |s: &str, n: usize| Arc::new(StringArray::from(vec![s; n])) as ArrayRef;
    let int = |v: i32, n: usize| Arc::new(Int32Array::from(vec![v; n])) as ArrayRef;
    let columns: HashMap<&str, ArrayRef> = HashMap::from([
        (
            col::MODEL,
            text(models.iter().map(|m| m.0.clone()).collect()),
        ),
        (
            col::FAMILY,
            text(models.iter().map(|m| format!("family{}", m.1)).collect()),
        ),
        (
            col::PRECISION,
            text(models.iter().map(|m| m.2.to_string()).collect()),
        ),
        (
            col::PATH,
            text(
                models
                    .iter()
                    .map(|m| format!("/synthetic/{}.onnx", m.0))
                    .collect(),
            ),
        ),
        (
            col::SHA256,
            text(
                models
                    .iter()
                    .map(|m| deltann_store::ids::sha256_hex(m.0.as_bytes()))
                    .collect(),
            ),
        ),
        (
            col::BYTES,
            Arc::new(Int64Array::from(vec![1i64; n])) as ArrayRef,
        ),
        (col::INPUT_NAME, same("input", n)),
        (col::INPUT_SHAPE, same("1x3x224x224", n)),
        (col::NUM_CLASSES, int(spec.classes as i32, n)),
        (col::OUTPUT_KIND, same("logits", n)),
        (col::PRESET, same("unit", n)),
        (col::PRESET_KEY, same("synthetic", n)),
        (col::INPUT_SIZE, int(224, n)),
        (col::RESIZE_SHORT, int(256, n)),
        (
            col::CROP_RATIO,
            Arc::new(Float64Array::from(vec![0.875; n])) as ArrayRef,
        ),
        (col::RESIZE_FILTER, same("bilinear", n)),
        (
            col::PIXEL_SCALE,
            Arc::new(arrow::array::Float32Array::from(vec![255.0f32; n])) as ArrayRef,
        ),
        (col::MEAN, Arc::new(mean.finish()) as ArrayRef),
        (col::STD, Arc::new(std.finish()) as ArrayRef),
        (col::CHANNELS, same("rgb", n)),
        (col::LAYOUT, same("nchw", n)),
        (col::CLASS_NAMES, Arc::new(names.finish()) as ArrayRef),
        (col::RUN_ID, same(run, n)),
    ]);
    write(&store, Table::Models, &columns, None)?;

    let n = spec.images;
    let ids: Vec<String> = (0..n).map(image_id).collect();
    let dir = spec
        .image_dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("/synthetic"));
    let columns: HashMap<&str, ArrayRef> = HashMap::from([
        (col::IMAGE_ID, text(ids.clone())),
        (col::DATASET, same(&dir.display().to_string(), n)),
        (
            col::PATH,
            text(
                ids.iter()
                    .map(|i| dir.join(i).display().to_string())
                    .collect(),
            ),
        ),
        (
            col::SHA256,
            text(
                ids.iter()
                    .map(|i| deltann_store::ids::sha256_hex(i.as_bytes()))
                    .collect(),
            ),
        ),
        (
            col::BYTES,
            Arc::new(Int64Array::from(vec![1000i64; n])) as ArrayRef,
        ),
        (col::FORMAT, same("Jpeg", n)),
        (col::WIDTH, int(256, n)),
        (col::HEIGHT, int(256, n)),
        (col::COLOR, same("Rgb8", n)),
        (
            col::EXIF_ORIENTATION,
            Arc::new(Int32Array::from(vec![None::<i32>; n])) as ArrayRef,
        ),
        (
            col::LABEL,
            Arc::new(Int32Array::from((0..n).map(label).collect::<Vec<_>>())) as ArrayRef,
        ),
        (col::STATUS, same("ok", n)),
        (
            col::ERROR,
            Arc::new(StringArray::from(vec![None::<&str>; n])) as ArrayRef,
        ),
        (col::RUN_ID, same(run, n)),
    ]);
    write(&store, Table::Images, &columns, None)?;

    // True logits per family and image, generated once.
    let truth: Vec<Vec<Vec<f32>>> = (0..spec.families)
        .map(|f| {
            (0..n)
                .map(|i| {
                    let mut rng =
                        fastrand::Rng::with_seed(spec.seed ^ ((f as u64) << 40) ^ i as u64);
                    let mut v: Vec<f32> = (0..spec.classes).map(|_| normal(&mut rng)).collect();
                    let l = label(i) as usize;
                    if i % 6 == 0 {
                        // A near tie: the right class barely ahead of the best wrong one.
                        let best = v
                            .iter()
                            .enumerate()
                            .filter(|(c, _)| *c != l)
                            .map(|(_, x)| *x)
                            .fold(f32::MIN, f32::max);
                        v[l] = best + 0.15;
                    } else {
                        // A confident right answer, a little less so every fifth image.
                        let boost = if i % 5 == 0 { 1.2 } else { 5.0 };
                        v[l] += boost + normal(&mut rng).abs();
                    }
                    v
                })
                .collect()
        })
        .collect();

    let started = deltann_store::now_micros();
    if spec.failures {
        write_failures(&store, spec, &ids, started)?;
    }
    for cell in &cells {
        let parts = perturbation(cell);
        let seeds: Vec<(f32, u64)> = parts
            .iter()
            .map(|(scale, key)| (*scale, xxhash_rust::xxh3::xxh3_64(key.as_bytes())))
            .collect();
        let mut rows = OutputRows::default();
        let mut latencies = Vec::with_capacity(n * spec.repetitions as usize);
        let mut lat_rng =
            fastrand::Rng::with_seed(spec.seed ^ xxhash_rust::xxh3::xxh3_64(cell.id.as_bytes()));
        for i in 0..n {
            let mut logits: Vec<f32> = truth[cell.family][i].clone();
            for &(scale, seed) in &seeds {
                if scale > 0.0 {
                    let mut rng = fastrand::Rng::with_seed(
                        seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    );
                    // Uniform noise of unit variance: cheap, and its shape does not matter here.
                    for v in &mut logits {
                        *v += scale * 3.464_101_6 * (rng.f32() - 0.5);
                    }
                }
            }
            for rep in 0..spec.repetitions {
                let ms =
                    latency_ms(cell) * f64::from(normal(&mut lat_rng)).mul_add(0.03, 1.0).max(0.5);
                let ns = (ms * 1e6) as i64;
                latencies.push(ns);
                rows.push(
                    &cell.id,
                    &ids[i],
                    Some(label(i)),
                    rep,
                    i as i64,
                    cell.batch,
                    &logits,
                    spec.keep_logits,
                    ns,
                );
            }
            if rows.rows.len() >= 1024 {
                rows.flush_into(&store, cell)?;
            }
            // Parts of `part_rows` rows, as the collector commits them.
            if rows
                .part
                .as_ref()
                .is_some_and(|p| p.rows() as usize >= spec.part_rows)
            {
                rows.commit(&store, cell)?;
            }
        }
        rows.flush_into(&store, cell)?;
        rows.commit(&store, cell)?;
        write_cell(&store, spec, cell, &latencies, started)?;
    }
    Ok(())
}

fn write(
    store: &StoreWriter,
    table: Table,
    columns: &HashMap<&str, ArrayRef>,
    cell: Option<&str>,
) -> Result<()> {
    let schema = schema::schema(table);
    let arrays = schema
        .fields()
        .iter()
        .map(|f| {
            columns
                .get(f.name().as_str())
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("synthetic {table} lacks {}", f.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    let batch = RecordBatch::try_new(schema, arrays)?;
    store.write_part(
        table,
        Partition::none(),
        PartMeta {
            cell_id: cell.map(str::to_string),
            run_id: Some("synthetic".into()),
        },
        &[batch],
    )?;
    Ok(())
}

/// A failed cell (a crashed worker, no outputs) and an image no cell could decode.
fn write_failures(store: &StoreWriter, spec: &Spec, ids: &[String], started: i64) -> Result<()> {
    let cell = Cell {
        id: "00000000deadbeef".into(),
        family: 0,
        model: "family0".into(),
        precision: spec.precisions[0],
        engine: "tract",
        opt: "decluttered",
        threads: 1,
        batch: 1,
    };
    write_cell_row(
        store,
        spec,
        &cell,
        &[],
        started,
        Some("worker was killed by signal 11 (SIGSEGV)"),
    )?;
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let columns: HashMap<&str, ArrayRef> = HashMap::from([
        (col::RUN_ID, s("synthetic")),
        (
            col::CELL_ID,
            Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef,
        ),
        (
            col::IMAGE_ID,
            s(ids.get(3).map_or("img-00003.jpg", String::as_str)),
        ),
        (col::STAGE, s("decode")),
        (
            col::MESSAGE,
            s("truncated JPEG: no end-of-image marker after the image data"),
        ),
        (
            col::AT,
            Arc::new(TimestampMicrosecondArray::from(vec![started]).with_timezone("UTC"))
                as ArrayRef,
        ),
    ]);
    write(store, Table::Errors, &columns, None)
}

fn write_cell(
    store: &StoreWriter,
    spec: &Spec,
    cell: &Cell,
    latencies: &[i64],
    started: i64,
) -> Result<()> {
    write_cell_row(store, spec, cell, latencies, started, None)
}

fn write_cell_row(
    store: &StoreWriter,
    spec: &Spec,
    cell: &Cell,
    latencies: &[i64],
    started: i64,
    failure: Option<&str>,
) -> Result<()> {
    let mut ms: Vec<f64> = latencies.iter().map(|&n| n as f64 / 1e6).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| deltann_store::stats::quantile_sorted(&ms, p).unwrap_or(f64::NAN);
    let f = |v: f64| Arc::new(Float64Array::from(vec![v.is_finite().then_some(v)])) as ArrayRef;
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
    let i = |v: i32| Arc::new(Int32Array::from(vec![v])) as ArrayRef;
    let l = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
    let none = Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef;
    let ts = |v: i64| {
        Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone("UTC")) as ArrayRef
    };
    let (ort_opt, plan) = if cell.engine == "ort" {
        (s(cell.opt), none.clone())
    } else {
        (none.clone(), s(cell.opt))
    };
    let tag = format!(
        "engine={},{}={},threads={},batch={},reps={},filter=bilinear",
        cell.engine,
        if cell.engine == "ort" { "opt" } else { "plan" },
        cell.opt,
        cell.threads,
        cell.batch,
        spec.repetitions
    );
    let version = if cell.engine == "ort" {
        spec.ort_version
    } else {
        "0.23.9"
    };
    let total: f64 = ms.iter().sum();
    let columns: HashMap<&str, ArrayRef> = HashMap::from([
        (col::CELL_ID, s(&cell.id)),
        (col::ATTEMPT, i(1)),
        (col::RUN_ID, s("synthetic")),
        (col::TAG, s(&tag)),
        (col::MODEL, s(&cell.model)),
        (col::FAMILY, s(&format!("family{}", cell.family))),
        (col::PRECISION, s(cell.precision)),
        (
            col::MODEL_SHA256,
            s(&deltann_store::ids::sha256_hex(cell.model.as_bytes())),
        ),
        (col::ENGINE, s(cell.engine)),
        (col::ENGINE_VERSION, s(version)),
        (col::ORT_OPTIMIZATION, ort_opt),
        (col::TRACT_PLAN, plan),
        (col::ORT_LIBRARY, none.clone()),
        (col::DEVICE, s("cpu")),
        (col::ENGINE_SETTINGS, none.clone()),
        (col::THREADS, i(cell.threads)),
        (col::BATCH_SIZE, i(cell.batch)),
        (col::REPETITIONS, i(spec.repetitions)),
        (col::WARMUP, i(3)),
        (col::RESIZE_FILTER, s("bilinear")),
        (col::PREPROCESS, s("torchvision")),
        (col::PRESET_KEY, s("synthetic")),
        (
            col::STATUS,
            s(if failure.is_some() { "failed" } else { "ok" }),
        ),
        (
            col::ERROR,
            Arc::new(StringArray::from(vec![failure])) as ArrayRef,
        ),
        (col::IMAGES_PLANNED, l(spec.images as i64)),
        (
            col::IMAGES_OK,
            l(if failure.is_some() {
                0
            } else {
                spec.images as i64
            }),
        ),
        (col::IMAGES_FAILED, l(0)),
        (col::LOAD_MS, f(100.0)),
        (col::LATENCY_P50_MS, f(q(0.5))),
        (col::LATENCY_P90_MS, f(q(0.9))),
        (col::LATENCY_P99_MS, f(q(0.99))),
        (col::LATENCY_MEAN_MS, f(total / ms.len() as f64)),
        (col::THROUGHPUT_IPS, f(ms.len() as f64 / (total / 1e3))),
        (
            col::WALL_S,
            Arc::new(Float64Array::from(vec![total / 1e3])) as ArrayRef,
        ),
        (col::WORKER_PEAK_RSS_MB, f(100.0)),
        (col::STARTED_AT, ts(started)),
        (col::FINISHED_AT, ts(started)),
        (col::PARALLEL_CELLS, i(1)),
        (col::HOST_NAME, s("synthetic")),
        (col::CPU_MODEL, s("synthetic")),
        (col::CPU_CORES, i(1)),
        (col::OS, s("synthetic")),
        (col::CPU_FLAGS, none.clone()),
        (col::GPU, none.clone()),
    ]);
    write(store, Table::Cells, &columns, Some(&cell.id))
}

#[derive(Default)]
struct OutputRows {
    rows: OutputsBuilder,
    part: Option<deltann_store::PartWriter>,
}

impl OutputRows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        cell: &str,
        image: &str,
        label: Option<i32>,
        rep: i32,
        index: i64,
        batch: i32,
        logits: &[f32],
        keep: bool,
        ns: i64,
    ) {
        let ranked = outputs::rank(logits, outputs::Scores::Logits);
        self.rows.push(&OutputRow {
            cell_id: cell,
            image_id: image,
            image_sha256: image,
            label,
            repetition: rep,
            batch_index: index / i64::from(batch),
            batch_rows: batch,
            ranked: &ranked,
            logits: keep.then_some(logits),
            latency_ns: ns,
            batch_latency_ns: ns * i64::from(batch),
        });
    }

    fn flush_into(&mut self, store: &StoreWriter, cell: &Cell) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = self.rows.finish()?;
        if self.part.is_none() {
            self.part = Some(store.begin(
                Table::Outputs,
                Partition::for_table(Table::Outputs, &[&cell.model, cell.engine])?,
                PartMeta {
                    cell_id: Some(cell.id.clone()),
                    run_id: Some("synthetic".into()),
                },
            )?);
        }
        if let Some(part) = self.part.as_mut() {
            part.write(&batch)?;
        }
        Ok(())
    }

    fn commit(&mut self, store: &StoreWriter, _cell: &Cell) -> Result<()> {
        if let Some(part) = self.part.take() {
            store.commit(part)?;
        }
        Ok(())
    }
}

/// A cell of a hand-written fixture.
#[derive(Clone, Debug)]
pub struct HandCell {
    pub id: &'static str,
    pub model: &'static str,
    pub precision: &'static str,
    pub engine: &'static str,
    pub optimization: &'static str,
    pub threads: i32,
    /// (image id, label, logits, latency in ms), one row each (repetition 0).
    pub rows: Vec<(&'static str, Option<i32>, Vec<f32>, f64)>,
    /// A second repetition's logits, one per row (same latency): a cell's run-to-run noise.
    pub second: Option<Vec<Vec<f32>>>,
}

/// Writes a store from hand-written cells, all of family `family0`: for tests whose expected
/// values are computed by hand.
///
/// # Errors
/// Fails when the store cannot be written.
pub fn write_hand(root: &Path, cells: &[HandCell]) -> Result<()> {
    let (store, _) = StoreWriter::open(root)?;
    let spec = Spec {
        images: cells.first().map_or(0, |c| c.rows.len()),
        repetitions: if cells.iter().any(|c| c.second.is_some()) {
            2
        } else {
            1
        },
        ..Spec::small()
    };
    let started = deltann_store::now_micros();
    for (i, hand) in cells.iter().enumerate() {
        let cell = Cell {
            id: hand.id.to_string(),
            family: 0,
            model: hand.model.to_string(),
            precision: hand.precision,
            engine: hand.engine,
            opt: hand.optimization,
            threads: hand.threads,
            batch: 1,
        };
        let mut rows = OutputRows::default();
        let mut latencies = Vec::new();
        for (index, (image, label, logits, ms)) in hand.rows.iter().enumerate() {
            let ns = (ms * 1e6) as i64;
            latencies.push(ns);
            rows.push(hand.id, image, *label, 0, index as i64, 1, logits, true, ns);
            if let Some(second) = hand.second.as_ref().and_then(|s| s.get(index)) {
                latencies.push(ns);
                rows.push(hand.id, image, *label, 1, index as i64, 1, second, true, ns);
            }
        }
        rows.flush_into(&store, &cell)?;
        rows.commit(&store, &cell)?;
        write_cell_row(&store, &spec, &cell, &latencies, started + i as i64, None)?;
    }
    Ok(())
}

//! The cells of a store as the analyzer sees them: the latest attempt of each, its environment
//! split into named dimensions, and the model facts (family, class names) analysis needs.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use deltann_store::schema::col;
use deltann_store::{Store, Table};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// An environment dimension along which two cells can differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Another model file of the same family (fp16, int8 variants).
    Precision,
    /// ONNX Runtime against tract.
    Engine,
    /// Another version of the same engine.
    EngineVersion,
    /// ORT graph optimization level, or tract plan.
    Optimization,
    Threads,
    BatchSize,
    ResizeFilter,
    /// CPU against CUDA.
    Device,
    /// A Python engine's own settings (torch precision and compiler, OpenVINO hints, TVM level
    /// and passes).
    EngineSettings,
    /// Whose resize and crop: torchvision's, hand-written Pillow's, OpenCV's, TensorFlow's.
    Preprocess,
    /// The machine (`collect --host`, else its host name): the same cell run on two machines.
    Host,
}

impl Dimension {
    /// Every dimension, in report order.
    pub const ALL: [Dimension; 11] = [
        Dimension::Precision,
        Dimension::Engine,
        Dimension::EngineVersion,
        Dimension::Optimization,
        Dimension::EngineSettings,
        Dimension::Device,
        Dimension::Threads,
        Dimension::BatchSize,
        Dimension::ResizeFilter,
        Dimension::Preprocess,
        Dimension::Host,
    ];

    /// The dimension's name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Precision => "precision",
            Dimension::Engine => "engine",
            Dimension::EngineVersion => "engine_version",
            Dimension::Optimization => "optimization",
            Dimension::Threads => "threads",
            Dimension::BatchSize => "batch_size",
            Dimension::ResizeFilter => "resize_filter",
            Dimension::Device => "device",
            Dimension::EngineSettings => "engine_settings",
            Dimension::Preprocess => "preprocess",
            Dimension::Host => "host",
        }
    }

    /// Parses a dimension name.
    pub fn from_name(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The latest attempt of one cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellInfo {
    pub cell_id: String,
    pub attempt: i32,
    pub tag: String,
    pub model: String,
    pub family: String,
    pub precision: String,
    pub engine: String,
    pub engine_version: String,
    pub ort_optimization: Option<String>,
    pub tract_plan: Option<String>,
    /// `cpu` or `cuda`.
    #[serde(default)]
    pub device: String,
    /// A Python engine's settings, `key=value;...`.
    #[serde(default)]
    pub engine_settings: Option<String>,
    pub threads: i32,
    pub batch_size: i32,
    pub repetitions: i32,
    pub resize_filter: String,
    /// `torchvision`, `pil-round`, `opencv` or `tf`.
    #[serde(default)]
    pub preprocess: String,
    pub status: String,
    pub error: Option<String>,
    pub images_ok: i64,
    pub latency_p50_ms: Option<f64>,
    pub started_at_us: i64,
    /// The machine it ran on (the `cells.host_name` column).
    #[serde(default)]
    pub host: String,
    /// Whether labels name the machine: set when the store's cells ran on more than one.
    #[serde(default)]
    pub show_host: bool,
}

impl CellInfo {
    /// ORT optimization level or tract plan, whichever applies.
    pub fn optimization(&self) -> &str {
        self.ort_optimization
            .as_deref()
            .or(self.tract_plan.as_deref())
            .unwrap_or("-")
    }

    /// The value of a dimension, as text.
    pub fn value(&self, d: Dimension) -> String {
        match d {
            Dimension::Precision => format!("{} ({})", self.precision, self.model),
            Dimension::Engine => self.engine.clone(),
            Dimension::EngineVersion => format!("{} {}", self.engine, self.engine_version),
            Dimension::Optimization => format!("{} {}", self.engine, self.optimization()),
            Dimension::Threads => self.threads.to_string(),
            Dimension::BatchSize => self.batch_size.to_string(),
            Dimension::ResizeFilter => self.resize_filter.clone(),
            Dimension::Preprocess => self.preprocess.clone(),
            Dimension::Device => self.device.clone(),
            Dimension::Host => self.host.clone(),
            Dimension::EngineSettings => format!(
                "{} {}",
                self.engine,
                self.engine_settings.as_deref().unwrap_or("-")
            ),
        }
    }

    /// A compact environment label such as `fp32 ort:all t1 b1` (the resize filter is added when
    /// it is not bilinear, the preprocessing when it is not torchvision's).
    pub fn env(&self) -> String {
        let mut filter = if self.resize_filter == "bilinear" {
            String::new()
        } else {
            format!(" {}", self.resize_filter)
        };
        match self.preprocess.as_str() {
            "" | "torchvision" => {}
            "pil-round" => filter.push_str(" pil-round"),
            // OpenCV's and TensorFlow's cells have their own bilinear: the name says it.
            other => filter = format!(" {other}"),
        }
        format!(
            "{} {}:{} t{} b{}{filter}{}",
            self.precision,
            self.engine,
            self.optimization(),
            self.threads,
            self.batch_size,
            self.at_host()
        )
    }

    /// ` @HOST` when labels name the machine, else nothing.
    pub fn at_host(&self) -> String {
        if self.show_host {
            format!(" @{}", self.host)
        } else {
            String::new()
        }
    }

    /// A short label such as `mobilenetv2 ort opt=all t=1 b=1 bilinear`.
    pub fn short(&self) -> String {
        let opt = match (&self.ort_optimization, &self.tract_plan) {
            (Some(o), _) => format!("opt={o}"),
            (_, Some(p)) => format!("plan={p}"),
            _ => String::new(),
        };
        let preprocess = match self.preprocess.as_str() {
            "" | "torchvision" => String::new(),
            other => format!(" {other}"),
        };
        format!(
            "{} {} {} {opt} t={} b={} {}{preprocess}{}",
            self.model,
            self.engine,
            self.engine_version,
            self.threads,
            self.batch_size,
            self.resize_filter,
            self.at_host()
        )
    }
}

/// The dimensions in which two cells of one family differ. Between engines, version and
/// optimization are the engine's own and do not count separately.
pub fn differences(a: &CellInfo, b: &CellInfo) -> Vec<Dimension> {
    let mut out = Vec::new();
    if a.model != b.model {
        out.push(Dimension::Precision);
    }
    if a.engine != b.engine {
        out.push(Dimension::Engine);
    } else {
        if a.engine_version != b.engine_version {
            out.push(Dimension::EngineVersion);
        }
        if a.optimization() != b.optimization() {
            out.push(Dimension::Optimization);
        }
        if a.engine_settings != b.engine_settings {
            out.push(Dimension::EngineSettings);
        }
    }
    if a.device != b.device {
        out.push(Dimension::Device);
    }
    if a.threads != b.threads {
        out.push(Dimension::Threads);
    }
    if a.batch_size != b.batch_size {
        out.push(Dimension::BatchSize);
    }
    if a.preprocess != b.preprocess {
        out.push(Dimension::Preprocess);
    }
    // OpenCV's and TensorFlow's cells resample with their own bilinear: against a Pillow cell
    // they differ in the filter too unless that cell's is bilinear.
    fn filter(c: &CellInfo) -> &str {
        match c.preprocess.as_str() {
            "opencv" | "tf" => "bilinear",
            _ => c.resize_filter.as_str(),
        }
    }
    if filter(a) != filter(b) {
        out.push(Dimension::ResizeFilter);
    }
    if a.host != b.host {
        out.push(Dimension::Host);
    }
    out
}

/// What analysis needs of a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelFacts {
    pub family: String,
    pub precision: String,
    pub num_classes: i32,
    pub class_names: Option<Vec<String>>,
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    match batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
    {
        Some(c) => (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
            .collect(),
        None => vec![None; batch.num_rows()],
    }
}

fn ints(batch: &RecordBatch, name: &str) -> Vec<i32> {
    match batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
    {
        Some(c) => c.values().to_vec(),
        None => vec![0; batch.num_rows()],
    }
}

/// Image id -> file, from the store's `images` table (the paths the collector read; they may
/// have moved since, so callers check).
pub fn image_paths(store: &Store) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    for batch in store
        .scan_table(Table::Images, &[col::IMAGE_ID, col::PATH])
        .flatten()
    {
        if let (Some(ids), Some(paths)) = (
            batch
                .column_by_name(col::IMAGE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            batch
                .column_by_name(col::PATH)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) {
            for (id, path) in ids.iter().zip(paths.iter()) {
                if let (Some(id), Some(path)) = (id, path) {
                    out.insert(id.to_string(), PathBuf::from(path));
                }
            }
        }
    }
    out
}

/// Reads the latest attempt of every cell, ordered by family, then start time.
///
/// # Errors
/// Fails when a `cells` part cannot be read.
pub fn load_cells(store: &Store) -> Result<Vec<CellInfo>> {
    let mut latest: HashMap<String, CellInfo> = HashMap::new();
    for batch in store.scan_table(Table::Cells, &[]) {
        let batch = batch?;
        let n = batch.num_rows();
        let text = |name| strings(&batch, name);
        let (
            ids,
            tags,
            models,
            families,
            precisions,
            engines,
            versions,
            opts,
            plans,
            devices,
            settings,
            filters,
            implementations,
            st,
            errs,
        ) = (
            text(col::CELL_ID),
            text(col::TAG),
            text(col::MODEL),
            text(col::FAMILY),
            text(col::PRECISION),
            text(col::ENGINE),
            text(col::ENGINE_VERSION),
            text(col::ORT_OPTIMIZATION),
            text(col::TRACT_PLAN),
            text(col::DEVICE),
            text(col::ENGINE_SETTINGS),
            text(col::RESIZE_FILTER),
            text(col::PREPROCESS),
            text(col::STATUS),
            text(col::ERROR),
        );
        let hosts = text(col::HOST_NAME);
        let (attempts, threads, batches, reps) = (
            ints(&batch, col::ATTEMPT),
            ints(&batch, col::THREADS),
            ints(&batch, col::BATCH_SIZE),
            ints(&batch, col::REPETITIONS),
        );
        let images_ok = batch
            .column_by_name(col::IMAGES_OK)
            .and_then(|c| c.as_primitive_opt::<Int64Type>());
        let p50 = batch
            .column_by_name(col::LATENCY_P50_MS)
            .and_then(|c| c.as_primitive_opt::<Float64Type>());
        let started = batch
            .column_by_name(col::STARTED_AT)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>());
        for i in 0..n {
            let cell = CellInfo {
                cell_id: ids[i].clone().unwrap_or_default(),
                attempt: attempts[i],
                tag: tags[i].clone().unwrap_or_default(),
                model: models[i].clone().unwrap_or_default(),
                family: families[i].clone().unwrap_or_default(),
                precision: precisions[i].clone().unwrap_or_default(),
                engine: engines[i].clone().unwrap_or_default(),
                engine_version: versions[i].clone().unwrap_or_default(),
                ort_optimization: opts[i].clone(),
                tract_plan: plans[i].clone(),
                // Parts written before devices were a dimension ran on the CPU.
                device: devices[i].clone().unwrap_or_else(|| "cpu".into()),
                engine_settings: settings[i].clone(),
                threads: threads[i],
                batch_size: batches[i],
                repetitions: reps[i],
                resize_filter: filters[i].clone().unwrap_or_default(),
                // Parts written before implementations were a dimension used torchvision's.
                preprocess: implementations[i]
                    .clone()
                    .unwrap_or_else(|| "torchvision".into()),
                status: st[i].clone().unwrap_or_default(),
                error: errs[i].clone(),
                images_ok: images_ok.map_or(0, |c| c.value(i)),
                latency_p50_ms: p50.and_then(|c| c.is_valid(i).then(|| c.value(i))),
                started_at_us: started.map_or(0, |c| c.value(i)),
                host: hosts[i].clone().unwrap_or_default(),
                show_host: false,
            };
            match latest.get(&cell.cell_id) {
                Some(old) if old.attempt >= cell.attempt => {}
                _ => {
                    latest.insert(cell.cell_id.clone(), cell);
                }
            }
        }
    }
    let mut cells: Vec<CellInfo> = latest.into_values().collect();
    let several_hosts = cells.iter().any(|c| c.host != cells[0].host);
    for cell in &mut cells {
        cell.show_host = several_hosts;
    }
    // Within a family: the base model first (its name is the family's), then by start time.
    cells.sort_by(|a, b| {
        (&a.family, a.model != a.family, a.started_at_us, &a.cell_id).cmp(&(
            &b.family,
            b.model != b.family,
            b.started_at_us,
            &b.cell_id,
        ))
    });
    Ok(cells)
}

/// Reads every model's family, precision and class names.
///
/// # Errors
/// Fails when a `models` part cannot be read.
pub fn load_models(store: &Store) -> Result<HashMap<String, ModelFacts>> {
    let mut out = HashMap::new();
    for batch in store.scan_table(Table::Models, &[]) {
        let batch = batch?;
        let (names, families, precisions) = (
            strings(&batch, col::MODEL),
            strings(&batch, col::FAMILY),
            strings(&batch, col::PRECISION),
        );
        let classes = ints(&batch, col::NUM_CLASSES);
        let lists = batch
            .column_by_name(col::CLASS_NAMES)
            .and_then(|c| c.as_list_opt::<i32>());
        for i in 0..batch.num_rows() {
            let class_names = lists.filter(|l| l.is_valid(i)).map(|l| {
                let v = l.value(i);
                let s = v.as_string::<i32>();
                (0..s.len()).map(|j| s.value(j).to_string()).collect()
            });
            out.insert(
                names[i].clone().unwrap_or_default(),
                ModelFacts {
                    family: families[i].clone().unwrap_or_default(),
                    precision: precisions[i].clone().unwrap_or_default(),
                    num_classes: classes[i],
                    class_names,
                },
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(model: &str, engine: &str, opt: &str, threads: i32) -> CellInfo {
        CellInfo {
            cell_id: format!("{model}{engine}{opt}{threads}"),
            attempt: 1,
            tag: String::new(),
            model: model.into(),
            family: "m".into(),
            precision: "fp32".into(),
            engine: engine.into(),
            engine_version: if engine == "ort" { "1.32.0" } else { "0.23.9" }.into(),
            ort_optimization: (engine == "ort").then(|| opt.to_string()),
            tract_plan: (engine == "tract").then(|| opt.to_string()),
            device: "cpu".into(),
            engine_settings: None,
            threads,
            batch_size: 1,
            repetitions: 1,
            resize_filter: "bilinear".into(),
            preprocess: "torchvision".into(),
            status: "ok".into(),
            error: None,
            images_ok: 0,
            latency_p50_ms: None,
            started_at_us: 0,
            host: "here".into(),
            show_host: false,
        }
    }

    #[test]
    fn opencv_and_tf_cells_count_as_bilinear_against_pillow_filters() {
        let with = |preprocess: &str, filter: &str| CellInfo {
            preprocess: preprocess.into(),
            resize_filter: filter.into(),
            ..cell("m", "ort", "all", 1)
        };
        let opencv = with("opencv", "bilinear-no-antialias");
        assert_eq!(
            differences(&with("torchvision", "bilinear"), &opencv),
            [Dimension::Preprocess]
        );
        assert_eq!(
            differences(&with("torchvision", "bicubic"), &opencv),
            [Dimension::Preprocess, Dimension::ResizeFilter]
        );
        assert_eq!(
            differences(&with("tf", "bilinear-no-antialias"), &opencv),
            [Dimension::Preprocess]
        );
        assert_eq!(
            differences(
                &with("pil-round", "bicubic"),
                &with("torchvision", "bilinear")
            ),
            [Dimension::Preprocess, Dimension::ResizeFilter]
        );
        // Labels tell them apart.
        assert_ne!(
            with("pil-round", "bicubic").env(),
            with("pil-round", "bilinear").env()
        );
        assert_ne!(opencv.short(), with("tf", "bilinear-no-antialias").short());
    }

    #[test]
    fn differences_name_each_dimension() {
        let a = cell("m", "ort", "all", 1);
        assert!(differences(&a, &a).is_empty());
        let elsewhere = CellInfo {
            host: "there".into(),
            show_host: true,
            ..a.clone()
        };
        assert_eq!(differences(&a, &elsewhere), [Dimension::Host]);
        assert!(elsewhere.env().ends_with(" @there"), "{}", elsewhere.env());
        assert!(!a.env().contains('@'));
        assert_eq!(
            differences(&a, &cell("m", "ort", "basic", 1)),
            vec![Dimension::Optimization]
        );
        assert_eq!(
            differences(&a, &cell("m", "ort", "all", 2)),
            vec![Dimension::Threads]
        );
        assert_eq!(
            differences(&a, &cell("m-int8", "ort", "all", 1)),
            vec![Dimension::Precision]
        );
        // Across engines, version and optimization belong to the engine.
        assert_eq!(
            differences(&a, &cell("m", "tract", "optimized", 1)),
            vec![Dimension::Engine]
        );
        assert_eq!(
            differences(&a, &cell("m", "tract", "optimized", 2)),
            vec![Dimension::Engine, Dimension::Threads]
        );
    }
}

/// One `deltann localize` result, as the report shows it (the latest per pair, kind and image).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Localization {
    pub localization_id: String,
    /// `passes` or `layers`.
    pub kind: String,
    pub cell_a: String,
    pub cell_b: String,
    pub image_id: Option<String>,
    pub images: i32,
    /// `passes`: the optimizers whose disabling removes the divergence, joined by `+`.
    pub culprits: Option<String>,
    pub explained: Option<bool>,
    pub trials: Option<i32>,
    /// `layers`: the first divergent node, its operator, relative error and amplification.
    pub node: Option<String>,
    pub op: Option<String>,
    pub rel_error: Option<f64>,
    pub amplification: Option<f64>,
    pub first_difference: Option<String>,
}

fn opt_floats(batch: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    match batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Float64Type>())
    {
        Some(c) => (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i)))
            .collect(),
        None => vec![None; batch.num_rows()],
    }
}

fn opt_ints(batch: &RecordBatch, name: &str) -> Vec<Option<i32>> {
    match batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
    {
        Some(c) => (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i)))
            .collect(),
        None => vec![None; batch.num_rows()],
    }
}

/// Reads the store's `localizations`, keeping the latest result per (kind, pair, image), in the
/// order they were found.
///
/// # Errors
/// Fails when a `localizations` part cannot be read.
pub fn load_localizations(store: &Store) -> Result<Vec<Localization>> {
    let mut rows: Vec<Localization> = Vec::new();
    for batch in store.scan_table(Table::Localizations, &[]) {
        let batch = batch?;
        let text = |name| strings(&batch, name);
        let (ids, kinds, a, b, images) = (
            text(col::LOCALIZATION_ID),
            text(col::KIND),
            text(col::CELL_A),
            text(col::CELL_B),
            text(col::IMAGE_ID),
        );
        let (culprits, nodes, ops, firsts) = (
            text(col::CULPRITS),
            text(col::NODE),
            text(col::OP),
            text(col::FIRST_DIFFERENCE),
        );
        let counts = ints(&batch, col::IMAGES);
        let trials = opt_ints(&batch, col::TRIALS);
        let explained = batch
            .column_by_name(col::EXPLAINED)
            .and_then(|c| c.as_boolean_opt())
            .map(|c| {
                (0..c.len())
                    .map(|i| c.is_valid(i).then(|| c.value(i)))
                    .collect()
            })
            .unwrap_or_else(|| vec![None; batch.num_rows()]);
        let (errors, gains) = (
            opt_floats(&batch, col::REL_ERROR),
            opt_floats(&batch, col::AMPLIFICATION),
        );
        for i in 0..batch.num_rows() {
            rows.push(Localization {
                localization_id: ids[i].clone().unwrap_or_default(),
                kind: kinds[i].clone().unwrap_or_default(),
                cell_a: a[i].clone().unwrap_or_default(),
                cell_b: b[i].clone().unwrap_or_default(),
                image_id: images[i].clone(),
                images: counts[i],
                culprits: culprits[i].clone(),
                explained: explained[i],
                trials: trials[i],
                node: nodes[i].clone(),
                op: ops[i].clone(),
                rel_error: errors[i],
                amplification: gains[i],
                first_difference: firsts[i].clone(),
            });
        }
    }
    // Parts are read in commit order: a later result for the same question replaces the earlier.
    let mut latest: HashMap<(String, String, String, Option<String>), usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        latest.insert(
            (
                r.kind.clone(),
                r.cell_a.clone(),
                r.cell_b.clone(),
                r.image_id.clone(),
            ),
            i,
        );
    }
    let mut keep: Vec<usize> = latest.into_values().collect();
    keep.sort_unstable();
    Ok(keep.into_iter().map(|i| rows[i].clone()).collect())
}

/// One node of a layer localisation's error curve.
#[derive(Clone, Debug, PartialEq)]
pub struct NodePoint {
    pub order: i32,
    pub node: String,
    pub op: String,
    pub rel_error: f64,
    pub amplification: f64,
}

/// The error curve of one `layers` localisation, in graph order.
///
/// # Errors
/// Fails when a `node_errors` part cannot be read.
pub fn load_node_errors(store: &Store, localization_id: &str) -> Result<Vec<NodePoint>> {
    let mut out = Vec::new();
    for batch in store.scan_table(Table::NodeErrors, &[]) {
        let batch = batch?;
        let ids = strings(&batch, col::LOCALIZATION_ID);
        let (nodes, ops) = (strings(&batch, col::NODE), strings(&batch, col::OP));
        let orders = ints(&batch, col::NODE_ORDER);
        let errors = opt_floats(&batch, col::REL_ERROR);
        let gains = opt_floats(&batch, col::AMPLIFICATION);
        for i in 0..batch.num_rows() {
            if ids[i].as_deref() != Some(localization_id) {
                continue;
            }
            out.push(NodePoint {
                order: orders[i],
                node: nodes[i].clone().unwrap_or_default(),
                op: ops[i].clone().unwrap_or_default(),
                rel_error: errors[i].unwrap_or(0.0),
                amplification: gains[i].unwrap_or(0.0),
            });
        }
    }
    out.sort_by_key(|p| p.order);
    Ok(out)
}

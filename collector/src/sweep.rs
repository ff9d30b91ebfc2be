//! The sweep file: one declarative TOML document that says which models to run on which images
//! under which environments.
//!
//! ```toml
//! store = "results"                 # where results go (relative to this file); --store overrides
//! logits = "full"                   # or "top5": keep only top-5 and the logits hash
//! warmup = 3                        # untimed runs before timing, per cell
//!
//! [dataset]
//! images = "images"                 # a folder, searched recursively
//! labels = "labels.csv"             # optional: file,class_index (paths relative to the CSV)
//! limit = 100                       # optional: the first N images (sorted by path)
//! # sample = 100                    # or: a seeded random N
//! # seed = 0
//!
//! [[model]]
//! name = "mobilenetv2"
//! path = "mobilenetv2.onnx"
//! preset = "torchvision"            # torchvision | tf127 | unit; the fields below override it
//! # size = 224  crop = 0.875  filter = "bilinear"  pixel_scale = 255.0
//! # mean = [0.485, 0.456, 0.406]  std = [0.229, 0.224, 0.225]  channels = "rgb"  layout = "nchw"
//! classes = "imagenet_classes.txt"  # optional: one class name per line
//! variants = [ { name = "mobilenetv2-int8", path = "mobilenetv2-int8.onnx", precision = "int8" } ]
//!
//! [environments]                    # the cells are the Cartesian product of these lists
//! engine = ["ort", "tract"]
//! ort_optimization = ["disabled", "all"]   # ORT cells only
//! tract_plan = ["optimized"]               # tract cells only
//! threads = [1, 2]
//! batch_size = [1]
//! repetitions = [1]
//! resize_filter = ["bilinear"]             # overrides each model's filter
//! preprocess = ["torchvision", "opencv"]   # whose resize and crop: torchvision | pil-round | opencv | tf
//! ort_library = ["1.32.0"]                 # versions (fetched by scripts/fetch-onnxruntime.sh) or paths
//! device = ["cpu", "cuda"]                 # each engine runs on the devices it supports
//! ort_session_config = [[], ["session.disable_quant_qdq=1"]]  # ORT session config entries
//! openvino_precision = ["f32", "bf16"]     # and the other engine settings (engine::SETTINGS)
//! exclude = [ { engine = "tract", threads = 2 }, { openvino_precision = "bf16", threads = 2 } ]
//! ```
//!
//! `engine` may also name the engines that live in Python (`torch`, `openvino`, `tvm`), each in
//! an environment `deltann engines install ENGINE` creates.
//!
//! Unknown keys are rejected with their name and line: a typo must not silently change a sweep.
//! Relative paths are resolved against the sweep file's directory, so a sweep runs the same from
//! any working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::{EngineKind, OrtOptimization, SETTINGS, TractPlan};
use crate::error::{Error, Result};
use crate::preprocess::{Channels, Implementation, Layout, Preset, ResizeFilter};

/// Default untimed runs before timing.
pub const DEFAULT_WARMUP: u32 = 3;

/// Which outputs to keep per image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogitsMode {
    /// The whole logits vector, plus top-5 and hash.
    #[default]
    Full,
    /// Top-5 and the hash of the logits only (about 40x smaller for 1000 classes).
    Top5,
}

/// Whether a model's first output holds logits or probabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Raw scores: deltann applies softmax for the top-5 probabilities.
    #[default]
    Logits,
    /// Already probabilities: used as they are.
    Probabilities,
}

impl From<OutputKind> for deltann_store::outputs::Scores {
    fn from(k: OutputKind) -> Self {
        match k {
            OutputKind::Logits => Self::Logits,
            OutputKind::Probabilities => Self::Probabilities,
        }
    }
}

impl OutputKind {
    /// The name used in the store.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSweep {
    store: Option<String>,
    #[serde(default)]
    logits: LogitsMode,
    warmup: Option<u32>,
    dataset: RawDataset,
    #[serde(rename = "model")]
    models: Vec<RawModel>,
    #[serde(default)]
    environments: RawEnvironments,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    images: String,
    labels: Option<String>,
    limit: Option<usize>,
    sample: Option<usize>,
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    path: String,
    preset: Preset,
    size: Option<u32>,
    crop: Option<f64>,
    filter: Option<ResizeFilter>,
    pixel_scale: Option<f32>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
    channels: Option<Channels>,
    layout: Option<Layout>,
    classes: Option<String>,
    #[serde(default)]
    output: OutputKind,
    precision: Option<String>,
    #[serde(default)]
    variants: Vec<RawVariant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    path: String,
    precision: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironments {
    engine: Option<Vec<EngineKind>>,
    ort_optimization: Option<Vec<OrtOptimization>>,
    tract_plan: Option<Vec<TractPlan>>,
    threads: Option<Vec<u32>>,
    batch_size: Option<Vec<u32>>,
    repetitions: Option<Vec<u32>>,
    resize_filter: Option<Vec<ResizeFilter>>,
    preprocess: Option<Vec<Implementation>>,
    ort_library: Option<Vec<String>>,
    device: Option<Vec<Device>>,
    ort_disabled_optimizers: Option<Vec<toml::Value>>,
    ort_session_config: Option<Vec<toml::Value>>,
    torch_precision: Option<Vec<toml::Value>>,
    torch_compile: Option<Vec<toml::Value>>,
    openvino_precision: Option<Vec<toml::Value>>,
    openvino_hint: Option<Vec<toml::Value>>,
    tvm_opt_level: Option<Vec<toml::Value>>,
    tvm_disabled_pass: Option<Vec<toml::Value>>,
    #[serde(default)]
    exclude: Vec<Exclude>,
}

/// `fn setting(&self, key)`: the field of an engine setting (see [`SETTINGS`]) by its key.
macro_rules! setting_fields {
    ($ty:ty) => {
        fn setting(&self, key: &str) -> Option<&$ty> {
            match key {
                "ort_disabled_optimizers" => self.ort_disabled_optimizers.as_ref(),
                "ort_session_config" => self.ort_session_config.as_ref(),
                "torch_precision" => self.torch_precision.as_ref(),
                "torch_compile" => self.torch_compile.as_ref(),
                "openvino_precision" => self.openvino_precision.as_ref(),
                "openvino_hint" => self.openvino_hint.as_ref(),
                "tvm_opt_level" => self.tvm_opt_level.as_ref(),
                "tvm_disabled_pass" => self.tvm_disabled_pass.as_ref(),
                _ => None,
            }
        }
    };
}

impl RawEnvironments {
    setting_fields!(Vec<toml::Value>);
}

/// Where an engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    /// The device's name in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// A rule removing the cells that match every key it sets (an engine setting matches the
/// cells of its engine with that value).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclude {
    pub model: Option<String>,
    pub family: Option<String>,
    pub precision: Option<String>,
    pub engine: Option<EngineKind>,
    pub ort_optimization: Option<OrtOptimization>,
    pub tract_plan: Option<TractPlan>,
    pub threads: Option<u32>,
    pub batch_size: Option<u32>,
    pub repetitions: Option<u32>,
    pub resize_filter: Option<ResizeFilter>,
    pub preprocess: Option<Implementation>,
    /// Matches the entry as written in `ort_library`.
    pub ort_library: Option<String>,
    pub device: Option<Device>,
    ort_disabled_optimizers: Option<toml::Value>,
    ort_session_config: Option<toml::Value>,
    torch_precision: Option<toml::Value>,
    torch_compile: Option<toml::Value>,
    openvino_precision: Option<toml::Value>,
    openvino_hint: Option<toml::Value>,
    tvm_opt_level: Option<toml::Value>,
    tvm_disabled_pass: Option<toml::Value>,
    /// The engine settings the rule sets, as cells hold them (filled in by [`Sweep::parse`]).
    #[serde(skip)]
    pub settings: BTreeMap<String, String>,
}

impl Exclude {
    fn is_empty(&self) -> bool {
        *self == Exclude::default()
    }

    setting_fields!(toml::Value);
}

/// The images to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetSpec {
    /// Folder of images.
    pub images: PathBuf,
    /// Optional labels CSV.
    pub labels: Option<PathBuf>,
    /// Keep the first N images.
    pub limit: Option<usize>,
    /// Keep a seeded random N images.
    pub sample: Option<usize>,
    /// Seed for `sample`.
    pub seed: u64,
}

/// Preprocessing fields a model sets on top of its preset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreprocessOverrides {
    pub size: Option<u32>,
    pub crop: Option<f64>,
    pub filter: Option<ResizeFilter>,
    pub pixel_scale: Option<f32>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub channels: Option<Channels>,
    pub layout: Option<Layout>,
}

/// One model file to run (a variant is a model of its own, sharing its base's family).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Unique name (a store partition value).
    pub name: String,
    /// The base model's name: variants share weights with it.
    pub family: String,
    /// Numeric precision, e.g. fp32, fp16, int8.
    pub precision: String,
    /// The ONNX file.
    pub path: PathBuf,
    /// Preprocessing preset.
    pub preset: Preset,
    /// Overrides of the preset.
    pub overrides: PreprocessOverrides,
    /// Class names, one per line.
    pub classes: Option<PathBuf>,
    /// Logits or probabilities.
    pub output: OutputKind,
}

/// An `ort_library` entry: as written, and resolved to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibrarySpec {
    /// As written in the sweep (or where the default came from).
    pub written: String,
    /// The library file.
    pub path: PathBuf,
}

/// The environment lists whose product gives the cells.
#[derive(Clone, Debug, PartialEq)]
pub struct Environments {
    pub engines: Vec<EngineKind>,
    pub ort_optimization: Vec<OrtOptimization>,
    pub tract_plan: Vec<TractPlan>,
    pub threads: Vec<u32>,
    pub batch_size: Vec<u32>,
    pub repetitions: Vec<u32>,
    /// `None`: each model's own filter.
    pub resize_filter: Option<Vec<ResizeFilter>>,
    /// Whose resize and crop (default: torchvision's alone).
    pub preprocess: Vec<Implementation>,
    /// Empty when no ORT cell is planned.
    pub ort_library: Vec<LibrarySpec>,
    /// Devices; each engine's cells take those it supports.
    pub device: Vec<Device>,
    /// The engine settings' values by key (each of [`SETTINGS`], listed or defaulted).
    pub settings: BTreeMap<&'static str, Vec<String>>,
    pub exclude: Vec<Exclude>,
}

/// A parsed, validated sweep file.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The file it came from.
    pub path: PathBuf,
    /// Its text, stored with each run for provenance.
    pub text: String,
    /// Where results go, resolved against the sweep's directory.
    pub store: Option<PathBuf>,
    pub logits: LogitsMode,
    pub warmup: u32,
    pub dataset: DatasetSpec,
    pub models: Vec<ModelSpec>,
    pub environments: Environments,
}

impl Sweep {
    /// Reads and validates a sweep file.
    ///
    /// # Errors
    /// Fails, naming the file (and the line, for syntax errors and unknown keys), when it cannot
    /// be read or parsed, or when a value is out of range, a name is reused, or a referenced ONNX
    /// Runtime library cannot be found.
    pub fn load(path: &Path) -> Result<Sweep> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input(path, format!("cannot read sweep file: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses sweep text as if read from `path` (relative paths resolve against its directory).
    ///
    /// # Errors
    /// As [`Sweep::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Sweep> {
        let raw: RawSweep = toml::from_str(text).map_err(|e| Error::input(path, e.to_string()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let bad = |message: String| Error::input(path, message);
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let dataset = DatasetSpec {
            images: resolve(&raw.dataset.images),
            labels: raw.dataset.labels.as_deref().map(resolve),
            limit: raw.dataset.limit,
            sample: raw.dataset.sample,
            seed: raw.dataset.seed.unwrap_or(0),
        };
        if dataset.limit.is_some() && dataset.sample.is_some() {
            return Err(bad("[dataset] takes `limit` or `sample`, not both".into()));
        }
        if dataset.limit == Some(0) || dataset.sample == Some(0) {
            return Err(bad("[dataset] limit and sample must be at least 1".into()));
        }

        if raw.models.is_empty() {
            return Err(bad("no [[model]] entries".into()));
        }
        let mut models = Vec::new();
        for m in raw.models {
            let overrides = PreprocessOverrides {
                size: m.size,
                crop: m.crop,
                filter: m.filter,
                pixel_scale: m.pixel_scale,
                mean: m.mean,
                std: m.std,
                channels: m.channels,
                layout: m.layout,
            };
            check_overrides(&m.name, &overrides).map_err(bad)?;
            let base_model = ModelSpec {
                name: m.name.clone(),
                family: m.name.clone(),
                precision: m.precision.unwrap_or_else(|| "fp32".into()),
                path: resolve(&m.path),
                preset: m.preset,
                overrides,
                classes: m.classes.as_deref().map(resolve),
                output: m.output,
            };
            let variants: Vec<ModelSpec> = m
                .variants
                .into_iter()
                .map(|v| ModelSpec {
                    name: v.name,
                    precision: v.precision,
                    path: resolve(&v.path),
                    ..base_model.clone()
                })
                .collect();
            // A family's base model comes first, then its variants, as written.
            models.push(base_model);
            models.extend(variants);
        }
        let mut seen = std::collections::HashSet::new();
        for m in &models {
            deltann_store::layout::check_partition_value(&m.name)
                .map_err(|e| bad(format!("model name: {e}")))?;
            if !seen.insert(m.name.clone()) {
                return Err(bad(format!("model name `{}` is used twice", m.name)));
            }
        }

        let env = raw.environments;
        let mut settings = BTreeMap::new();
        let mut listed = Vec::new();
        for setting in SETTINGS {
            let values = match env.setting(setting.key) {
                None => vec![setting.default.to_string()],
                Some(list) => {
                    listed.push(setting.key);
                    let values = list
                        .iter()
                        .map(|v| setting_value(setting, v))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(&bad)?;
                    non_empty(setting.key, Some(values), Vec::new()).map_err(&bad)?
                }
            };
            settings.insert(setting.key, values);
        }
        let engines = non_empty(
            "engine",
            env.engine,
            vec![EngineKind::Ort, EngineKind::Tract],
        )
        .map_err(bad)?;
        let threads = non_empty("threads", env.threads, vec![1]).map_err(bad)?;
        let batch_size = non_empty("batch_size", env.batch_size, vec![1]).map_err(bad)?;
        let repetitions = non_empty("repetitions", env.repetitions, vec![1]).map_err(bad)?;
        for (key, values, max) in [
            ("threads", &threads, MAX_THREADS),
            ("batch_size", &batch_size, MAX_BATCH_SIZE),
            ("repetitions", &repetitions, MAX_REPETITIONS),
        ] {
            if let Some(v) = values.iter().find(|&&v| v == 0 || v > max) {
                return Err(bad(format!(
                    "environments.{key} = {v}: values must be in 1..={max}"
                )));
            }
        }
        let ort_library = if engines.contains(&EngineKind::Ort) {
            match env.ort_library {
                Some(list) if list.is_empty() => {
                    return Err(bad("environments.ort_library is empty".into()));
                }
                Some(list) => list
                    .iter()
                    .map(|w| resolve_ort_library(w, &base).map_err(&bad))
                    .collect::<Result<Vec<_>>>()?,
                None => vec![default_ort_library().map_err(bad)?],
            }
        } else {
            Vec::new()
        };
        let device = non_empty("device", env.device, vec![Device::Cpu]).map_err(bad)?;
        if let Some(engine) = engines
            .iter()
            .find(|e| !device.iter().any(|d| e.devices().contains(&d.name())))
        {
            return Err(bad(format!(
                "environments.device: {engine} runs on {}, and none is listed",
                engine.devices().join(", ")
            )));
        }
        if let Some(setting) = SETTINGS
            .iter()
            .find(|s| listed.contains(&s.key) && !engines.contains(&s.engine))
        {
            return Err(bad(format!(
                "environments.{} applies to {} cells, but engine does not list {}",
                setting.key, setting.engine, setting.engine
            )));
        }
        let mut exclude = env.exclude;
        for rule in &mut exclude {
            for setting in SETTINGS {
                if let Some(v) = rule.setting(setting.key) {
                    let v = setting_value(setting, v).map_err(|e| bad(format!("exclude: {e}")))?;
                    rule.settings.insert(setting.key.to_string(), v);
                }
            }
        }
        if let Some(rule) = exclude.iter().find(|r| r.is_empty()) {
            return Err(bad(format!(
                "an exclude rule must set at least one key ({rule:?} matches every cell)"
            )));
        }
        let environments = Environments {
            engines,
            ort_optimization: non_empty(
                "ort_optimization",
                env.ort_optimization,
                vec![OrtOptimization::All],
            )
            .map_err(bad)?,
            tract_plan: non_empty("tract_plan", env.tract_plan, vec![TractPlan::Optimized])
                .map_err(bad)?,
            threads,
            batch_size,
            repetitions,
            resize_filter: match env.resize_filter {
                Some(v) => Some(non_empty("resize_filter", Some(v), Vec::new()).map_err(bad)?),
                None => None,
            },
            preprocess: non_empty(
                "preprocess",
                env.preprocess,
                vec![Implementation::Torchvision],
            )
            .map_err(bad)?,
            ort_library,
            device,
            settings,
            exclude,
        };

        Ok(Sweep {
            path: path.to_path_buf(),
            text: text.to_string(),
            // An object-storage location (`s3://...`) is not relative to anything.
            store: raw.store.as_deref().map(|s| {
                if s.contains("://") {
                    PathBuf::from(s)
                } else {
                    resolve(s)
                }
            }),
            logits: raw.logits,
            warmup: raw.warmup.unwrap_or(DEFAULT_WARMUP),
            dataset,
            models,
            environments,
        })
    }
}

/// One value of an engine setting, as text: a listed name, an integer level, or a list of pass
/// names (joined by `+`).
fn setting_value(setting: &crate::engine::Setting, value: &toml::Value) -> Result<String, String> {
    let text = match value {
        // A list of names (passes, optimizers, config entries) is one value; so is a string
        // of them joined by '+'.
        toml::Value::Array(_) | toml::Value::String(_) if setting.values.is_empty() => {
            let names: Vec<String> = match value {
                toml::Value::Array(names) => names
                    .iter()
                    .map(|n| n.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        format!(
                            "environments.{}: each value is a list of names",
                            setting.key
                        )
                    })?,
                toml::Value::String(joined) if joined.is_empty() => Vec::new(),
                toml::Value::String(joined) => joined.split('+').map(str::to_string).collect(),
                _ => Vec::new(),
            };
            // Session config entries are `key=value`; the others, pass names.
            let entries = setting.key == "ort_session_config";
            let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
            if let Some(bad) = names.iter().find(|n| match n.split_once('=') {
                Some((k, v)) if entries => {
                    k.is_empty()
                        || v.is_empty()
                        || !k.chars().all(name_char)
                        || !v.chars().all(name_char)
                }
                _ => entries || n.is_empty() || !n.chars().all(name_char),
            }) {
                let what = if entries {
                    "a session config entry (key=value: letters, digits, '_' and '.')"
                } else {
                    "a pass name (letters, digits, '_' and '.')"
                };
                return Err(format!(
                    "environments.{}: `{bad}` is not {what}",
                    setting.key
                ));
            }
            names.join("+")
        }
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        other => {
            return Err(format!(
                "environments.{}: `{other}` is not a value it takes",
                setting.key
            ));
        }
    };
    if !setting.values.is_empty() && !setting.values.contains(&text.as_str()) {
        return Err(format!(
            "environments.{} = `{text}`: one of {} ({})",
            setting.key,
            setting.values.join(", "),
            setting.about
        ));
    }
    Ok(text)
}

/// Image input sizes deltann runs (a side of 4096 is 50 MB of float32 per image).
pub const INPUT_SIZES: std::ops::RangeInclusive<u32> = 8..=4096;
/// Upper bounds on environment values whose product sizes memory and run time.
const MAX_BATCH_SIZE: u32 = 1024;
const MAX_REPETITIONS: u32 = 1000;
const MAX_THREADS: u32 = 1024;

fn check_overrides(name: &str, o: &PreprocessOverrides) -> Result<(), String> {
    if let Some(size) = o.size
        && !INPUT_SIZES.contains(&size)
    {
        return Err(format!(
            "model {name}: size {size} is outside {}..={}",
            INPUT_SIZES.start(),
            INPUT_SIZES.end()
        ));
    }
    if let Some(crop) = o.crop
        && !(crop > 0.0 && crop <= 1.0)
    {
        return Err(format!("model {name}: crop {crop} must be in (0, 1]"));
    }
    if let Some(scale) = o.pixel_scale
        && !(scale.is_finite() && scale > 0.0)
    {
        return Err(format!("model {name}: pixel_scale must be positive"));
    }
    if let Some(std) = o.std
        && std.iter().any(|s| !(s.is_finite() && *s != 0.0))
    {
        return Err(format!(
            "model {name}: std values must be finite and non-zero"
        ));
    }
    Ok(())
}

/// Deduplicates a list in order, rejecting an explicitly empty one.
fn non_empty<T: PartialEq>(
    key: &str,
    value: Option<Vec<T>>,
    default: Vec<T>,
) -> Result<Vec<T>, String> {
    let list = match value {
        Some(list) if list.is_empty() => {
            return Err(format!(
                "environments.{key} is empty: remove it or list a value"
            ));
        }
        Some(list) => list,
        None => default,
    };
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Where deltann keeps fetched ONNX Runtime libraries: `$DELTANN_HOME`, else
/// `$XDG_CACHE_HOME/deltann`, else `~/.cache/deltann`.
pub fn deltann_home() -> PathBuf {
    if let Some(home) = std::env::var_os("DELTANN_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(cache).join("deltann");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("deltann")
}

fn library_file_name(version: &str) -> String {
    if cfg!(target_os = "macos") {
        format!("libonnxruntime.{version}.dylib")
    } else {
        format!("libonnxruntime.so.{version}")
    }
}

fn fetch_hint(version: &str) -> String {
    format!(
        "run `scripts/fetch-onnxruntime.sh {version}` (it downloads the PyPI onnxruntime wheel)"
    )
}

/// Resolves an `ort_library` entry: a version such as `1.32.0` (looked up under
/// [`deltann_home`]) or a path to a library file.
///
/// # Errors
/// Fails when the library file does not exist, saying how to fetch it.
pub fn resolve_ort_library(written: &str, base: &Path) -> Result<LibrarySpec, String> {
    let is_version = !written.is_empty()
        && written.chars().all(|c| c.is_ascii_digit() || c == '.')
        && written.contains('.');
    let path = if is_version {
        deltann_home()
            .join("onnxruntime")
            .join(written)
            .join(library_file_name(written))
    } else {
        let p = Path::new(written);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if !path.is_file() {
        return Err(if is_version {
            format!(
                "ONNX Runtime {written} is not installed ({} does not exist): {}",
                path.display(),
                fetch_hint(written)
            )
        } else {
            format!("ONNX Runtime library {} does not exist", path.display())
        });
    }
    Ok(LibrarySpec {
        written: written.to_string(),
        path,
    })
}

/// The ONNX Runtime library used when a sweep names none: `$DELTANN_ORT_LIBRARY`, then ort's own
/// `$ORT_DYLIB_PATH`, then the newest version under [`deltann_home`].
///
/// # Errors
/// Fails when none of these exists, saying how to fetch one.
pub fn default_ort_library() -> Result<LibrarySpec, String> {
    for var in ["DELTANN_ORT_LIBRARY", "ORT_DYLIB_PATH"] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(&value);
            if !path.is_file() {
                return Err(format!(
                    "${var} is {}, which does not exist",
                    path.display()
                ));
            }
            return Ok(LibrarySpec {
                written: format!("${var}"),
                path,
            });
        }
    }
    let root = deltann_home().join("onnxruntime");
    let mut versions: Vec<(Vec<u64>, String)> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| root.join(v).join(library_file_name(v)).is_file())
        .map(|v| (v.split('.').map(|n| n.parse().unwrap_or(0)).collect(), v))
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, v)) => Ok(LibrarySpec {
            path: root.join(&v).join(library_file_name(&v)),
            written: v,
        }),
        None => Err(format!(
            "no ONNX Runtime library found: list one in environments.ort_library, set \
             $DELTANN_ORT_LIBRARY, or {}",
            fetch_hint("1.32.0")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[dataset]
images = "imgs"

[[model]]
name = "m"
path = "m.onnx"
preset = "torchvision"

[environments]
engine = ["tract"]
"#;

    fn parse(text: &str) -> Result<Sweep> {
        Sweep::parse(Path::new("/sweeps/s.toml"), text)
    }

    #[test]
    fn minimal_sweep_gets_defaults_and_resolves_paths() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.dataset.images, PathBuf::from("/sweeps/imgs"));
        assert_eq!(s.models[0].path, PathBuf::from("/sweeps/m.onnx"));
        assert_eq!(s.models[0].precision, "fp32");
        assert_eq!(s.warmup, DEFAULT_WARMUP);
        assert_eq!(s.environments.threads, vec![1]);
        assert_eq!(s.environments.tract_plan, vec![TractPlan::Optimized]);
        assert!(s.environments.ort_library.is_empty());
        assert_eq!(s.logits, LogitsMode::Full);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = MINIMAL.replace(
            "preset = \"torchvision\"",
            "preset = \"torchvision\"\nsizee = 3",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("/sweeps/s.toml"), "{err}");
        assert!(err.contains("sizee"), "{err}");
        assert!(err.contains("line 9"), "{err}");
    }

    #[test]
    fn unknown_engine_is_rejected() {
        let text = MINIMAL.replace("[\"tract\"]", "[\"tensorflow\"]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("tensorflow"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for (from, to, needle) in [
            (
                "engine = [\"tract\"]",
                "engine = [\"tract\"]\nthreads = [0]",
                "threads = 0: values must be in 1..=1024",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"tract\"]\nbatch_size = [1, 100000]",
                "batch_size = 100000",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"tract\"]\nrepetitions = [4000000000]",
                "repetitions = 4000000000",
            ),
            (
                "preset = \"torchvision\"",
                "preset = \"torchvision\"\nsize = 65000",
                "size 65000 is outside 8..=4096",
            ),
            ("engine = [\"tract\"]", "engine = []", "is empty"),
            (
                "preset = \"torchvision\"",
                "preset = \"torchvision\"\ncrop = 1.5",
                "crop",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"tract\"]\nexclude = [{}]",
                "at least one key",
            ),
            (
                "images = \"imgs\"",
                "images = \"imgs\"\nlimit = 1\nsample = 2",
                "not both",
            ),
            ("name = \"m\"", "name = \"m/x\"", "partition value"),
            (
                "engine = [\"tract\"]",
                "engine = [\"tract\"]\ntorch_precision = [\"fp16\"]",
                "applies to torch cells, but engine does not list torch",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"torch\"]\ntorch_precision = [\"fp8\"]",
                "one of fp32, tf32, fp16, bf16",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"tvm\"]\ntvm_disabled_pass = [[\"Fold Constant\"]]",
                "not a pass name",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"tract\"]\ndevice = [\"cuda\"]",
                "tract runs on cpu, and none is listed",
            ),
            (
                "engine = [\"tract\"]",
                "engine = [\"tvm\"]\nexclude = [{ tvm_opt_level = 9 }]",
                "exclude: environments.tvm_opt_level = `9`",
            ),
        ] {
            let err = parse(&MINIMAL.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(needle), "{to}: {err}");
        }
    }

    #[test]
    fn engine_settings_and_devices_take_their_values_or_defaults() {
        let text = MINIMAL.replace(
            "engine = [\"tract\"]",
            "engine = [\"tract\", \"tvm\", \"openvino\"]\ndevice = [\"cpu\", \"cuda\"]\n\
             tvm_opt_level = [0, 3]\ntvm_disabled_pass = [[], [\"FoldConstant\", \"FuseOps\"]]",
        );
        let s = parse(&text).unwrap();
        let env = &s.environments;
        assert_eq!(env.device, vec![Device::Cpu, Device::Cuda]);
        assert_eq!(env.settings["tvm_opt_level"], vec!["0", "3"]);
        assert_eq!(
            env.settings["tvm_disabled_pass"],
            vec!["", "FoldConstant+FuseOps"]
        );
        assert_eq!(env.settings["openvino_precision"], vec!["f32"]);
        assert_eq!(env.settings["torch_compile"], vec!["eager"]);
    }

    #[test]
    fn name_lists_are_checked_whether_written_as_lists_or_strings() {
        let with = |line: &str| {
            parse(&MINIMAL.replace(
                "engine = [\"tract\"]",
                &format!("engine = [\"ort\"]\n{line}"),
            ))
        };
        let s = with("ort_session_config = [\"a.b=1+c=2\", [\"d=3\"], \"\"]").unwrap();
        assert_eq!(
            s.environments.settings["ort_session_config"],
            ["a.b=1+c=2", "d=3", ""]
        );
        for bad in [
            "ort_session_config = [\"session.disable_quant_qdq\"]",
            "ort_session_config = [\"a=1+b\"]",
            "ort_disabled_optimizers = [\"Constant Folding\"]",
        ] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("is not a"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_engine_setting_is_a_sweep_key_and_an_exclude_key() {
        for setting in SETTINGS {
            let value = match setting.values.first() {
                Some(v) if setting.key == "tvm_opt_level" => v.to_string(),
                Some(v) => format!("\"{v}\""),
                None if setting.key == "ort_session_config" => "[\"some.key=1\"]".to_string(),
                None => "[\"SomePass\"]".to_string(),
            };
            let text = MINIMAL.replace(
                "engine = [\"tract\"]",
                &format!(
                    "engine = [\"{}\"]\n{} = [{value}]\nexclude = [{{ {} = {value} }}]",
                    setting.engine, setting.key, setting.key
                ),
            );
            let s = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", setting.key));
            let listed = &s.environments.settings[setting.key];
            assert_eq!(listed.len(), 1, "{}", setting.key);
            assert_eq!(
                s.environments.exclude[0].settings[setting.key], listed[0],
                "{}",
                setting.key
            );
        }
    }

    #[test]
    fn variants_follow_their_family_and_names_are_unique() {
        let text = MINIMAL.replace(
            "preset = \"torchvision\"",
            "preset = \"torchvision\"\nvariants = [{ name = \"m-int8\", path = \"q.onnx\", precision = \"int8\" }]",
        );
        let s = parse(&text).unwrap();
        let names: Vec<_> = s
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.family.as_str()))
            .collect();
        assert_eq!(names, vec![("m", "m"), ("m-int8", "m")]);
        assert_eq!(s.models[1].precision, "int8");

        let dup = text.replace("m-int8", "m");
        assert!(parse(&dup).unwrap_err().to_string().contains("used twice"));
    }

    #[test]
    fn missing_ort_version_says_how_to_fetch_it() {
        let text = MINIMAL.replace(
            "engine = [\"tract\"]",
            "engine = [\"ort\"]\nort_library = [\"0.0.1\"]",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("fetch-onnxruntime.sh 0.0.1"), "{err}");
    }
}

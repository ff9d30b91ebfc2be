//! Expanding a sweep into cells.
//!
//! A cell is one model file under one complete environment. The expansion is the Cartesian
//! product of the environment lists, where engine-specific lists apply to their engine only
//! (`ort_optimization` and `ort_library` to ORT cells, `tract_plan` to tract cells, each of
//! [`crate::engine::SETTINGS`] to its engine's, `device` to the engines that run there), minus
//! the `exclude` rules. Every cell gets a deterministic id from the model's sha256, every parameter
//! and the engine's version (see [`deltann_store::ids`]); two entries that produce the same id
//! are one cell.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltann_store::ids::CellKey;

use crate::engine::{self, EngineConfig, EngineKind, OrtOptimization, TractPlan};
use crate::error::{Error, Result};
use crate::model::{self, ModelInfo};
use crate::preprocess::{Implementation, Layout, Preprocess, ResizeFilter};
use crate::sweep::{Device, LibrarySpec, ModelSpec, Sweep};

/// A model ready to run: its spec, what its file declares, and its preprocessing.
#[derive(Clone, Debug)]
pub struct ModelPlan {
    pub spec: ModelSpec,
    pub info: ModelInfo,
    /// The model's own preprocessing (before any `resize_filter` environment override).
    pub preprocess: Preprocess,
    /// Class names, when a classes file is given.
    pub class_names: Option<Vec<String>>,
}

impl ModelPlan {
    /// The class count from the model's output shape, else from its class names.
    pub fn num_classes(&self) -> Option<usize> {
        self.info
            .num_classes()
            .or_else(|| self.class_names.as_ref().map(Vec::len))
    }
}

/// One model under one environment.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Deterministic id.
    pub id: String,
    /// Human-readable environment, e.g. `engine=ort,opt=all,threads=1,batch=1,...`.
    pub tag: String,
    pub model: Arc<ModelPlan>,
    pub engine: EngineKind,
    pub engine_version: String,
    pub ort_optimization: Option<OrtOptimization>,
    pub tract_plan: Option<TractPlan>,
    pub ort_library: Option<LibrarySpec>,
    pub threads: u32,
    pub batch_size: u32,
    pub repetitions: u32,
    /// Final preprocessing (the model's, with the environment's resize filter).
    pub preprocess: Preprocess,
    pub device: Device,
    /// The engine's own settings (see [`crate::engine::SETTINGS`]), by key.
    pub settings: BTreeMap<String, String>,
}

impl Cell {
    /// What a worker needs to load this cell's model.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            engine: self.engine,
            model_path: self.model.spec.path.clone(),
            input_shape: self.preprocess.shape().to_vec(),
            batch_size: self.batch_size as usize,
            threads: self.threads as usize,
            ort_optimization: self.ort_optimization,
            ort_library: self.ort_library.as_ref().map(|l| l.path.clone()),
            tract_plan: self.tract_plan,
            device: (self.device != Device::Cpu).then(|| self.device.name().to_string()),
            settings: self.settings.clone(),
            expose: Vec::new(),
        }
    }

    /// The engine settings as `key=value` pairs joined by `;` (the `cells.engine_settings`
    /// column); `None` for an engine without settings.
    pub fn settings_text(&self) -> Option<String> {
        (!self.settings.is_empty()).then(|| {
            self.settings
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";")
        })
    }

    /// A short description for progress lines: `model engine tag`.
    pub fn label(&self) -> String {
        format!("{} {}", self.model.spec.name, self.tag)
    }
}

/// The expanded sweep.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The machine's name in the cells' ids (see [`Plan::build`]).
    pub host: String,
    pub models: Vec<Arc<ModelPlan>>,
    pub cells: Vec<Cell>,
    /// Combinations removed by `exclude` rules.
    pub excluded: usize,
    /// Combinations that duplicated an earlier cell's id.
    pub duplicates: usize,
}

/// Answers an engine's version, for the cell ids (the collector asks a worker process).
pub type VersionProbe<'a> = dyn Fn(EngineKind, Option<&Path>) -> Result<String> + 'a;

impl Plan {
    /// Inspects the models and expands the environments, for the machine named `host`: the host
    /// is part of every cell's id, so the same cell run on two machines is two cells, which the
    /// analysis compares like any other pair.
    ///
    /// # Errors
    /// Fails, naming the file, for a missing or malformed model or classes file, a model whose
    /// input size cannot be known, or an engine whose version cannot be determined.
    pub fn build(sweep: &Sweep, host: &str, probe: &VersionProbe<'_>) -> Result<Plan> {
        let models = sweep
            .models
            .iter()
            .map(|spec| plan_model(spec).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;

        let env = &sweep.environments;
        let mut versions: HashMap<(EngineKind, Option<PathBuf>), String> = HashMap::new();
        let mut version = |engine: EngineKind, lib: Option<&LibrarySpec>| -> Result<String> {
            let key = (engine, lib.map(|l| l.path.clone()));
            if let Some(v) = versions.get(&key) {
                return Ok(v.clone());
            }
            let v = probe(engine, lib.map(|l| l.path.as_path()))?;
            versions.insert(key, v.clone());
            Ok(v)
        };

        let mut cells = Vec::new();
        let mut ids = std::collections::HashSet::new();
        let (mut excluded, mut duplicates) = (0, 0);
        for model in &models {
            for &engine in &env.engines {
                let variants: Vec<(
                    Option<OrtOptimization>,
                    Option<TractPlan>,
                    Option<&LibrarySpec>,
                )> = match engine {
                    EngineKind::Ort => env
                        .ort_library
                        .iter()
                        .flat_map(|lib| {
                            env.ort_optimization
                                .iter()
                                .map(move |o| (Some(*o), None, Some(lib)))
                        })
                        .collect(),
                    EngineKind::Tract => env
                        .tract_plan
                        .iter()
                        .map(|p| (None, Some(*p), None))
                        .collect(),
                    EngineKind::Torch | EngineKind::Openvino | EngineKind::Tvm => {
                        vec![(None, None, None)]
                    }
                };
                let devices: Vec<Device> = env
                    .device
                    .iter()
                    .copied()
                    .filter(|d| engine.devices().contains(&d.name()))
                    .collect();
                // The product of the engine's own settings, each a map of key to value.
                let mut setting_sets: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
                for setting in engine::settings_of(engine) {
                    let values = env.settings.get(setting.key).cloned().unwrap_or_default();
                    setting_sets = setting_sets
                        .into_iter()
                        .flat_map(|set| {
                            values.iter().map(move |v| {
                                let mut set = set.clone();
                                if !v.is_empty() {
                                    set.insert(setting.key.to_string(), v.clone());
                                }
                                set
                            })
                        })
                        .collect();
                }
                let filters: Vec<ResizeFilter> = env
                    .resize_filter
                    .clone()
                    .unwrap_or_else(|| vec![model.preprocess.filter]);
                for (ort_optimization, tract_plan, lib) in variants {
                    let engine_version = version(engine, lib)?;
                    for &device in &devices {
                        for settings in &setting_sets {
                            for &threads in &env.threads {
                                for &batch_size in &env.batch_size {
                                    for &repetitions in &env.repetitions {
                                        for (&filter, &implementation) in
                                            filters.iter().flat_map(|f| {
                                                env.preprocess.iter().map(move |i| (f, i))
                                            })
                                        {
                                            let mut preprocess = model.preprocess.clone();
                                            preprocess.implementation = implementation;
                                            // OpenCV and TensorFlow resample with their own
                                            // bilinear: one cell whatever the filter list says.
                                            preprocess.filter = if implementation.uses_filter() {
                                                filter
                                            } else {
                                                ResizeFilter::BilinearNoAntialias
                                            };
                                            let cell = make_cell(
                                                model,
                                                Environment {
                                                    engine,
                                                    engine_version: &engine_version,
                                                    ort_optimization,
                                                    tract_plan,
                                                    lib,
                                                    device,
                                                    settings,
                                                    host,
                                                },
                                                threads,
                                                batch_size,
                                                repetitions,
                                                preprocess,
                                            );
                                            if env.exclude.iter().any(|rule| excludes(rule, &cell))
                                            {
                                                excluded += 1;
                                            } else if !ids.insert(cell.id.clone()) {
                                                duplicates += 1;
                                            } else {
                                                cells.push(cell);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Plan {
            host: host.to_string(),
            models,
            cells,
            excluded,
            duplicates,
        })
    }

    /// The cells shard `shard` runs: every `count`-th cell of the plan, from the `index`-th.
    /// Every machine that expands the same sweep file splits it the same way.
    pub fn shard(mut self, shard: Shard) -> Plan {
        let mut i = 0;
        self.cells.retain(|_| {
            i += 1;
            shard.runs(i - 1)
        });
        self
    }

    /// The distinct preprocessing recipes the cells need, keyed by [`Preprocess::key`].
    pub fn presets(&self) -> Vec<Preprocess> {
        let mut out: Vec<Preprocess> = Vec::new();
        for cell in &self.cells {
            if !out.iter().any(|p| p.key() == cell.preprocess.key()) {
                out.push(cell.preprocess.clone());
            }
        }
        out
    }
}

/// One of `count` shares of a sweep's cells (`collect --shard INDEX/COUNT`, INDEX from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Whether the cell at `position` (from 0) of the whole plan is this shard's.
    pub fn runs(self, position: usize) -> bool {
        position % self.count as usize == (self.index - 1) as usize
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: a shard is INDEX/COUNT with 1 <= INDEX <= COUNT, as 2/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a cell runs in, besides threads, batch size, repetitions and preprocessing.
struct Environment<'a> {
    engine: EngineKind,
    engine_version: &'a str,
    ort_optimization: Option<OrtOptimization>,
    tract_plan: Option<TractPlan>,
    lib: Option<&'a LibrarySpec>,
    device: Device,
    settings: &'a BTreeMap<String, String>,
    host: &'a str,
}

fn make_cell(
    model: &Arc<ModelPlan>,
    env: Environment<'_>,
    threads: u32,
    batch_size: u32,
    repetitions: u32,
    preprocess: Preprocess,
) -> Cell {
    let Environment {
        engine,
        engine_version,
        ort_optimization,
        tract_plan,
        lib,
        device,
        settings,
        host,
    } = env;
    let mut key = CellKey::new();
    key.set("host", host)
        .set("model_sha256", &model.info.sha256)
        .set("engine", engine.name())
        .set("engine_version", engine_version)
        .set("threads", threads)
        .set("batch_size", batch_size)
        .set("repetitions", repetitions)
        .set("preprocess", preprocess.key())
        .set("output_kind", model.spec.output.name());
    let mut tag = format!("engine={engine}");
    if let Some(o) = ort_optimization {
        key.set("ort_optimization", o.name());
        tag.push_str(&format!(",opt={}", o.name()));
    }
    if let Some(p) = tract_plan {
        key.set("tract_plan", p.name());
        tag.push_str(&format!(",plan={}", p.name()));
    }
    // The CPU is every cell's device before devices were a dimension: its cells keep their ids.
    if device != Device::Cpu {
        key.set("device", device.name());
        tag.push_str(&format!(",device={}", device.name()));
    }
    for (k, v) in settings {
        key.set(k, v);
        let short = k.split_once('_').map_or(k.as_str(), |(_, rest)| rest);
        let shown = if v.is_empty() { "none" } else { v.as_str() };
        tag.push_str(&format!(",{short}={shown}"));
    }
    tag.push_str(&format!(
        ",threads={threads},batch={batch_size},reps={repetitions}"
    ));
    // OpenCV's and TensorFlow's cells name their library; the filter is its own bilinear.
    match preprocess.implementation {
        Implementation::Torchvision => tag.push_str(&format!(",filter={}", preprocess.filter)),
        Implementation::PilRound => tag.push_str(&format!(
            ",filter={},preprocess=pil-round",
            preprocess.filter
        )),
        other => tag.push_str(&format!(",preprocess={other}")),
    }
    if lib.is_some() {
        tag.push_str(&format!(",lib={engine_version}"));
    }
    Cell {
        id: key.id(),
        tag,
        model: model.clone(),
        engine,
        engine_version: engine_version.to_string(),
        ort_optimization,
        tract_plan,
        ort_library: lib.cloned(),
        threads,
        batch_size,
        repetitions,
        preprocess,
        device,
        settings: settings.clone(),
    }
}

fn excludes(rule: &crate::sweep::Exclude, cell: &Cell) -> bool {
    fn ok<T: PartialEq>(want: Option<&T>, have: Option<&T>) -> bool {
        want.is_none_or(|w| have == Some(w))
    }
    let spec = &cell.model.spec;
    ok(rule.model.as_ref(), Some(&spec.name))
        && ok(rule.family.as_ref(), Some(&spec.family))
        && ok(rule.precision.as_ref(), Some(&spec.precision))
        && ok(rule.engine.as_ref(), Some(&cell.engine))
        && ok(
            rule.ort_optimization.as_ref(),
            cell.ort_optimization.as_ref(),
        )
        && ok(rule.tract_plan.as_ref(), cell.tract_plan.as_ref())
        && ok(rule.threads.as_ref(), Some(&cell.threads))
        && ok(rule.batch_size.as_ref(), Some(&cell.batch_size))
        && ok(rule.repetitions.as_ref(), Some(&cell.repetitions))
        && ok(rule.resize_filter.as_ref(), Some(&cell.preprocess.filter))
        && ok(
            rule.preprocess.as_ref(),
            Some(&cell.preprocess.implementation),
        )
        && ok(
            rule.ort_library.as_ref(),
            cell.ort_library.as_ref().map(|l| &l.written),
        )
        && ok(rule.device.as_ref(), Some(&cell.device))
        && rule.settings.iter().all(|(key, value)| {
            // A cell without the setting (another engine's, or an empty list) holds "".
            let engine_has = crate::engine::SETTINGS
                .iter()
                .any(|s| s.key == key && s.engine == cell.engine);
            engine_has && cell.settings.get(key).map_or("", String::as_str) == value
        })
}

fn plan_model(spec: &ModelSpec) -> Result<ModelPlan> {
    let info = model::inspect(&spec.path)?;
    let o = &spec.overrides;
    let declared_nhwc = matches!(
        info.input_dims.as_slice(),
        [_, _, _, crate::model::Dim::Fixed(3)]
    );
    let layout = o.layout.unwrap_or(if declared_nhwc {
        Layout::Nhwc
    } else {
        Layout::Nchw
    });
    let size = match (o.size, info.image_size()) {
        (Some(size), Some(declared)) if size != declared => {
            return Err(Error::input(
                &spec.path,
                format!(
                    "model {} declares input {} but the sweep sets size = {size}",
                    spec.name,
                    info.input_shape()
                ),
            ));
        }
        (Some(size), _) | (None, Some(size)) => size,
        (None, None) => {
            return Err(Error::input(
                &spec.path,
                format!(
                    "model {}: input {} does not fix the image size; set `size` in the sweep",
                    spec.name,
                    info.input_shape()
                ),
            ));
        }
    };
    if !crate::sweep::INPUT_SIZES.contains(&size) {
        return Err(Error::input(
            &spec.path,
            format!(
                "model {}: input size {size} (from {}) is outside the {}..={} deltann runs",
                spec.name,
                info.input_shape(),
                crate::sweep::INPUT_SIZES.start(),
                crate::sweep::INPUT_SIZES.end()
            ),
        ));
    }
    let mut preprocess = Preprocess::from_preset(spec.preset, size);
    preprocess.layout = layout;
    if let Some(v) = o.crop {
        preprocess.crop = v;
    }
    if let Some(v) = o.filter {
        preprocess.filter = v;
    }
    if let Some(v) = o.pixel_scale {
        preprocess.pixel_scale = v;
    }
    if let Some(v) = o.mean {
        preprocess.mean = v;
    }
    if let Some(v) = o.std {
        preprocess.std = v;
    }
    if let Some(v) = o.channels {
        preprocess.channels = v;
    }
    let class_names = match &spec.classes {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::input(path, format!("cannot read class names: {e}")))?;
            let names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
            if let Some(n) = info.num_classes()
                && n != names.len()
            {
                return Err(Error::input(
                    path,
                    format!(
                        "{} class names, but model {} outputs {n} classes",
                        names.len(),
                        spec.name
                    ),
                ));
            }
            Some(names)
        }
        None => None,
    };
    Ok(ModelPlan {
        spec: spec.clone(),
        info,
        preprocess,
        class_names,
    })
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_parse_and_split_every_cell_once() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(Shard { index: 1, count: 4 }.to_string(), "1/4");
        for count in 1..5 {
            for cell in 0..11 {
                let owners = (1..=count)
                    .filter(|&index| Shard { index, count }.runs(cell))
                    .count();
                assert_eq!(owners, 1, "cell {cell} of {count} shards");
            }
        }
    }
}

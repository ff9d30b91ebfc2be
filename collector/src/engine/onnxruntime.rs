//! ONNX Runtime through `ort`, with the shared library loaded at run time.
//!
//! `ort` keeps the loaded library in a process-wide slot, so one process can use one
//! libonnxruntime; this is one reason each cell runs in its own worker process, and it is what lets
//! two cells of a sweep compare two ONNX Runtime versions.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use half::f16;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::TensorElementType;
use ort::value::{Tensor, TensorRef};
use prost::Message;
use tract_onnx::pb::{GraphProto, ModelProto, ValueInfoProto};

use super::{Engine, EngineConfig, NamedTensor, OrtOptimization, RunOutput};

pub(super) struct OrtEngine {
    session: Session,
    input_name: String,
    /// The model takes float16 images.
    fp16_input: bool,
    input_shape: Vec<usize>,
    version: String,
    _environment: Environment,
}

/// The process's one ONNX Runtime: its library, environment and version.
static RUNTIME: OnceLock<(PathBuf, Environment, String)> = OnceLock::new();

/// Loads the library and creates the environment (once per process: ONNX Runtime allows one
/// environment, and `ort` one library) and returns them with the version.
fn init(library: &Path) -> Result<(Environment, String), String> {
    if let Some((loaded, environment, version)) = RUNTIME.get() {
        return if loaded == library {
            Ok((environment.clone(), version.clone()))
        } else {
            Err(format!(
                "this process already loaded {}; one process can load one ONNX Runtime library",
                loaded.display()
            ))
        };
    }
    if !library.is_file() {
        return Err(format!(
            "ONNX Runtime library {} does not exist",
            library.display()
        ));
    }
    let environment = ort::init_from(library)
        .map_err(|e| e.to_string())?
        .with_name("deltann")
        .build()
        .map_err(|e| format!("cannot create ONNX Runtime environment: {e}"))?;
    let version = version_from(ort::info(), library);
    let (_, environment, version) =
        RUNTIME.get_or_init(|| (library.to_path_buf(), environment, version));
    Ok((environment.clone(), version.clone()))
}

/// The version, from the build info (`git-branch=rel-1.32.0, ...`) or else the file name
/// (`libonnxruntime.so.1.32.0`).
fn version_from(info: &str, library: &Path) -> String {
    let from_info = info
        .split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("git-branch=rel-"))
        .map(str::to_string);
    let from_name = || {
        let name = library.file_name()?.to_string_lossy().into_owned();
        let at = name.find(".so.")?;
        Some(name[at + 4..].to_string())
    };
    from_info
        .or_else(from_name)
        .unwrap_or_else(|| "unknown".to_string())
}

pub(super) fn library_version(library: &Path) -> Result<String, String> {
    init(library).map(|(_, version)| version)
}

impl OrtEngine {
    pub(super) fn load(config: &EngineConfig) -> Result<Self, String> {
        let library = config
            .ort_library
            .as_deref()
            .ok_or("no ONNX Runtime library configured")?;
        let (environment, version) = init(library)?;
        let level = match config.ort_optimization.unwrap_or(OrtOptimization::All) {
            OrtOptimization::Disabled => GraphOptimizationLevel::Disable,
            OrtOptimization::Basic => GraphOptimizationLevel::Level1,
            OrtOptimization::Extended => GraphOptimizationLevel::Level2,
            // ORT_ENABLE_ALL (99): every level, in every ONNX Runtime version. (`Level3` is
            // ORT_ENABLE_LAYOUT, which libraries before 1.22 refuse as invalid.)
            OrtOptimization::All => GraphOptimizationLevel::All,
        };
        let session = if config.expose.is_empty() {
            builder(&environment, config, level)?
                .commit_from_file(&config.model_path)
                .map_err(|e| e.to_string())?
        } else {
            let model = exposed_model(&environment, config, level)?;
            // The graph is already optimised as the cell's level would: run it as it is.
            builder(&environment, config, GraphOptimizationLevel::Disable)?
                .commit_from_memory(&model)
                .map_err(|e| e.to_string())?
        };
        let input = session.inputs().first().ok_or("model has no inputs")?;
        let input_name = input.name().to_string();
        // A model whose input is float16 gets the images rounded to it (to nearest, ties to
        // even, as ONNX's Cast does); any other type is ORT's to refuse.
        let fp16_input = input.dtype().tensor_type() == Some(TensorElementType::Float16);
        if session.outputs().is_empty() {
            return Err("model has no outputs".into());
        }
        Ok(Self {
            session,
            input_name,
            fp16_input,
            input_shape: config.input_shape.clone(),
            version,
            _environment: environment,
        })
    }
}

/// A session builder with the cell's threads, disabled optimizers and session config entries,
/// at `level`.
fn builder(
    environment: &Environment,
    config: &EngineConfig,
    level: GraphOptimizationLevel,
) -> Result<SessionBuilder, String> {
    let session = Session::builder(environment)
        .map_err(|e| e.to_string())?
        .with_optimization_level(level)
        .map_err(|e| e.to_string())?
        .with_intra_threads(config.threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?
        .with_parallel_execution(false)
        .map_err(|e| e.to_string())?;
    // ORT's own optimizer names, disabled (the `ort_disabled_optimizers` setting).
    let mut session = match config.settings.get("ort_disabled_optimizers") {
        Some(names) if !names.is_empty() => session
            .with_disabled_optimizers(names.replace('+', ";"))
            .map_err(|e| e.to_string())?,
        _ => session,
    };
    // Session config entries (the `ort_session_config` setting), `key=value` joined by '+'.
    if let Some(entries) = config.settings.get("ort_session_config") {
        for entry in entries.split('+').filter(|e| !e.is_empty()) {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| format!("session config entry `{entry}` is not key=value"))?;
            session = session
                .with_config_entry(key, value)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(session)
}

/// The model as the cell runs it, with the tensors of `config.expose` that it still computes
/// added to its outputs, serialised.
///
/// Exposing a tensor in the original graph would stop ONNX Runtime from fusing it away, so
/// the cell would no longer compute what it computes in a sweep. Instead the graph is first
/// optimised at the cell's level and saved (ORT's `optimized_model_filepath`); the names that
/// survive optimisation are exposed in that graph, which then runs with optimisation off. At
/// `disabled` every tensor survives; at `all`, layout transformations rename most of them.
fn exposed_model(
    environment: &Environment,
    config: &EngineConfig,
    level: GraphOptimizationLevel,
) -> Result<Vec<u8>, String> {
    let bytes = if matches!(level, GraphOptimizationLevel::Disable) {
        std::fs::read(&config.model_path)
            .map_err(|e| format!("cannot read {}: {e}", config.model_path.display()))?
    } else {
        // In a directory of its own, removed when done (or at the next reboot, if the worker is
        // killed first).
        let dir = tempfile::Builder::new()
            .prefix("deltann-optimized-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let saved = dir.path().join("optimized.onnx");
        let session = builder(environment, config, level)?
            .with_optimized_model_path(&saved)
            .map_err(|e| e.to_string())?
            .commit_from_file(&config.model_path)
            .map_err(|e| e.to_string());
        drop(session?);
        std::fs::read(&saved)
            .map_err(|e| format!("ONNX Runtime did not save the optimised graph: {e}"))?
    };
    let model = ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("cannot decode {}: {e}", config.model_path.display()))?;
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let wanted: HashSet<&str> = config.expose.iter().map(String::as_str).collect();
    let mut outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut added = Vec::new();
    for node in &graph.node {
        for name in &node.output {
            if wanted.contains(name.as_str()) && outputs.insert(name.as_str()) {
                // An output without a type: ONNX Runtime takes the type it infers.
                added.push(ValueInfoProto {
                    name: name.clone(),
                    ..Default::default()
                });
            }
        }
    }
    // Appended as a second serialised message: protobuf merges it into the first, appending to
    // the graph's outputs, so the rest of the model reaches ONNX Runtime byte for byte (not
    // through a decoder that may not know every field).
    let extra = ModelProto {
        graph: Some(GraphProto {
            output: added,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut bytes = bytes;
    bytes.extend(extra.encode_to_vec());
    Ok(bytes)
}

impl OrtEngine {
    /// The input tensor of `rows` images, copied (rounded to float16 for a float16 model).
    fn input(&self, input: &[f32], rows: usize) -> Result<ort::value::DynValue, String> {
        let mut shape = Vec::with_capacity(self.input_shape.len() + 1);
        shape.push(rows);
        shape.extend_from_slice(&self.input_shape);
        if self.fp16_input {
            let halves: Vec<f16> = input.iter().map(|&v| f16::from_f32(v)).collect();
            Tensor::from_array((shape, halves))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        } else {
            Tensor::from_array((shape, input.to_vec()))
                .map(|t| t.into_dyn())
                .map_err(|e| e.to_string())
        }
    }
}

impl Engine for OrtEngine {
    fn version(&self) -> &str {
        &self.version
    }

    fn run(&mut self, input: &[f32], rows: usize) -> Result<RunOutput, String> {
        let mut shape = Vec::with_capacity(self.input_shape.len() + 1);
        shape.push(rows);
        shape.extend_from_slice(&self.input_shape);
        let halves: Vec<f16>;
        let tensor = if self.fp16_input {
            halves = input.iter().map(|&v| f16::from_f32(v)).collect();
            TensorRef::from_array_view((shape, halves.as_slice()))
                .map_err(|e| e.to_string())?
                .into_dyn()
        } else {
            TensorRef::from_array_view((shape, input))
                .map_err(|e| e.to_string())?
                .into_dyn()
        };
        let started = Instant::now();
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        let first = outputs
            .values()
            .next()
            .ok_or("the run returned no outputs")?;
        // float32 scores, or float16 ones widened (exactly) to float32.
        let (shape, values) = match first.try_extract_tensor::<f32>() {
            Ok((shape, values)) => (shape, values.to_vec()),
            Err(_) => first
                .try_extract_tensor::<f16>()
                .map(|(shape, values)| (shape, values.iter().map(|v| v.to_f32()).collect()))
                .map_err(|e| format!("first output is not a float32 or float16 tensor: {e}"))?,
        };
        Ok(RunOutput {
            values,
            shape: shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .collect(),
            elapsed,
        })
    }

    fn run_exposed(&mut self, input: &[f32], rows: usize) -> Result<Vec<NamedTensor>, String> {
        let tensor = self.input(input, rows)?;
        let outputs = self
            .session
            .run(ort::inputs![self.input_name.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        // Tensors that are not numbers (strings, maps) are left out, not refused.
        Ok(outputs
            .iter()
            .filter_map(|(name, value)| {
                widen(&value).map(|values| NamedTensor {
                    name: name.to_string(),
                    values,
                })
            })
            .collect())
    }
}

/// A tensor's values as float32, from any numeric or boolean element type (booleans as 0 and 1);
/// `None` for other tensors.
fn widen(value: &ort::value::DynValue) -> Option<Vec<f32>> {
    macro_rules! try_as {
        ($($t:ty => $f:expr),* $(,)?) => {
            $(if let Ok((_, values)) = value.try_extract_tensor::<$t>() {
                return Some(values.iter().map($f).collect());
            })*
        };
    }
    try_as!(
        f32 => |&v| v,
        f16 => |v| v.to_f32(),
        u8 => |&v| f32::from(v),
        i8 => |&v| f32::from(v),
        u16 => |&v| f32::from(v),
        i16 => |&v| f32::from(v),
        i32 => |&v| v as f32,
        u32 => |&v| v as f32,
        i64 => |&v| v as f32,
        u64 => |&v| v as f32,
        f64 => |&v| v as f32,
        bool => |&v| f32::from(u8::from(v)),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_build_info_or_file_name() {
        let lib = Path::new("/x/libonnxruntime.so.1.31.1");
        assert_eq!(
            version_from(
                "ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc",
                lib
            ),
            "1.32.0"
        );
        assert_eq!(version_from("ORT Build Info: dev build", lib), "1.31.1");
        assert_eq!(version_from("", Path::new("onnxruntime.dll")), "unknown");
    }
}

//! ONNX Runtime through `ort`, with the shared library loaded at run time.
//!
//! `ort` keeps the loaded library in a process-wide slot, so one process can use one
//! libonnxruntime; this is one reason each cell runs in its own worker process, and it is what lets
//! two cells of a sweep compare two ONNX Runtime versions.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use half::f16;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorElementType;
use ort::value::TensorRef;

use super::{Engine, EngineConfig, OrtOptimization, RunOutput};

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
        let session = Session::builder(&environment)
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
        let session = session
            .commit_from_file(&config.model_path)
            .map_err(|e| e.to_string())?;
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

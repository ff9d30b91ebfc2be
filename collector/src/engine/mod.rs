//! Inference engines behind one small trait.
//!
//! An [`Engine`] is a loaded model in one runtime with one configuration. It takes a batch of
//! preprocessed images as a flat `f32` slice and returns the raw output plus the time the runtime
//! call took, measured around that call only (not around input copies or output extraction), so
//! latency compares runtimes and not deltann's glue.
//!
//! Engines run inside worker processes (see [`crate::worker`]); the benchmark also runs them in
//! process to measure the bare engine against the collector. The engines that live in Python
//! (torch, openvino, tvm) run in a Python worker instead, in their own environments (see
//! [`crate::python`]); they have no in-process form.

mod onnxruntime;
mod tract;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The runtimes deltann can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// ONNX Runtime, loaded from a shared library at run time (`ort`, `load-dynamic`).
    Ort,
    /// tract, compiled into deltann.
    Tract,
    /// PyTorch, running the ONNX file converted by onnx2torch (Python worker).
    Torch,
    /// OpenVINO Runtime (Python worker).
    Openvino,
    /// Apache TVM, its ONNX frontend and compiler (Python worker).
    Tvm,
}

impl EngineKind {
    /// Every engine, built-in first.
    pub const ALL: [EngineKind; 5] = [
        EngineKind::Ort,
        EngineKind::Tract,
        EngineKind::Torch,
        EngineKind::Openvino,
        EngineKind::Tvm,
    ];

    /// The engine's name in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Ort => "ort",
            EngineKind::Tract => "tract",
            EngineKind::Torch => "torch",
            EngineKind::Openvino => "openvino",
            EngineKind::Tvm => "tvm",
        }
    }

    /// Whether the engine runs in a Python worker, in an environment of its own.
    pub fn is_python(self) -> bool {
        matches!(
            self,
            EngineKind::Torch | EngineKind::Openvino | EngineKind::Tvm
        )
    }

    /// The devices the engine can run on.
    pub fn devices(self) -> &'static [&'static str] {
        match self {
            EngineKind::Ort | EngineKind::Tract | EngineKind::Openvino => &["cpu"],
            EngineKind::Torch | EngineKind::Tvm => &["cpu", "cuda"],
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ONNX Runtime's graph optimization levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrtOptimization {
    /// No graph rewrites.
    Disabled,
    /// Constant folding, redundant node elimination, simple fusions.
    Basic,
    /// Basic plus complex fusions (GELU, attention, ...).
    Extended,
    /// Everything, including layout transformations (NCHWc).
    All,
}

impl OrtOptimization {
    /// The level's name in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            OrtOptimization::Disabled => "disabled",
            OrtOptimization::Basic => "basic",
            OrtOptimization::Extended => "extended",
            OrtOptimization::All => "all",
        }
    }
}

/// How far tract transforms the model before running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TractPlan {
    /// Typed and simplified ("decluttered") but with reference kernels.
    Decluttered,
    /// Decluttered, then rewritten into optimized kernels (im2col, fused matmuls, ...).
    Optimized,
}

impl TractPlan {
    /// The plan's name in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            TractPlan::Decluttered => "decluttered",
            TractPlan::Optimized => "optimized",
        }
    }
}

/// An engine's own sweep dimension: a key of `[environments]` that applies to one engine's cells
/// only, as `ort_optimization` does to ORT's. Values are kept as text: they go to the worker, the
/// cell id and the `cells.engine_settings` column as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key in `[environments]`.
    pub key: &'static str,
    /// The engine whose cells it multiplies.
    pub engine: EngineKind,
    /// The values it takes (empty: any list of names, as for passes).
    pub values: &'static [&'static str],
    /// The value when the sweep does not list any.
    pub default: &'static str,
    /// What it does, for `--help` and errors.
    pub about: &'static str,
}

/// Every engine setting a sweep can list. A setting whose value is empty (no optimizer or pass
/// disabled) is left out of the cell: cells that set nothing keep the ids they had before the
/// setting existed.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "ort_disabled_optimizers",
        engine: EngineKind::Ort,
        values: &[],
        default: "",
        about: "ONNX Runtime's own optimizer names disabled (optimization.disable_specified_optimizers), joined by '+' (each list in the sweep is one value)",
    },
    Setting {
        key: "ort_session_config",
        engine: EngineKind::Ort,
        values: &[],
        default: "",
        about: "ONNX Runtime session config entries, each `key=value` (session.disable_quant_qdq=1, session.set_denormal_as_zero=1, session.disable_prepacking=1, mlas.enable_gemm_fastmath_arm64_bfloat16=1), joined by '+' (each list in the sweep is one value)",
    },
    Setting {
        key: "torch_precision",
        engine: EngineKind::Torch,
        values: &["fp32", "tf32", "fp16", "bf16"],
        default: "fp32",
        about: "fp16/bf16 by autocast; tf32 through the matmul and cuDNN flags (CUDA only)",
    },
    Setting {
        key: "torch_compile",
        engine: EngineKind::Torch,
        values: &["eager", "inductor"],
        default: "eager",
        about: "eager execution or torch.compile with the inductor backend",
    },
    Setting {
        key: "openvino_precision",
        engine: EngineKind::Openvino,
        values: &["f32", "bf16", "f16"],
        default: "f32",
        about: "OpenVINO's inference precision hint",
    },
    Setting {
        key: "openvino_hint",
        engine: EngineKind::Openvino,
        values: &["latency", "throughput"],
        default: "latency",
        about: "OpenVINO's performance hint",
    },
    Setting {
        key: "tvm_opt_level",
        engine: EngineKind::Tvm,
        values: &["0", "1", "2", "3", "4"],
        default: "3",
        about: "TVM's PassContext opt_level",
    },
    Setting {
        key: "tvm_disabled_pass",
        engine: EngineKind::Tvm,
        values: &[],
        default: "",
        about: "TVM passes disabled by name, joined by '+' (each list in the sweep is one value)",
    },
];

/// The settings of `engine`, in [`SETTINGS`] order.
pub fn settings_of(engine: EngineKind) -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(move |s| s.engine == engine)
}

/// The version of tract compiled into this binary. A unit test checks it against Cargo.lock.
pub const TRACT_VERSION: &str = "0.23.9";

/// Everything needed to load a model in an engine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Which runtime.
    pub engine: EngineKind,
    /// The ONNX file.
    pub model_path: PathBuf,
    /// Per-image input shape (no batch dimension).
    pub input_shape: Vec<usize>,
    /// Images per engine call.
    pub batch_size: usize,
    /// Intra-op threads (ORT) or matrix-product threads (tract).
    pub threads: usize,
    /// ORT only: graph optimization level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_optimization: Option<OrtOptimization>,
    /// ORT only: the shared library to load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_library: Option<PathBuf>,
    /// tract only: the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tract_plan: Option<TractPlan>,
    /// Where the engine runs (`cpu`, `cuda`); absent means the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The engine's own settings from the sweep (`torch_precision`, `openvino_hint`, ...), by
    /// name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub settings: std::collections::BTreeMap<String, String>,
    /// Intermediate tensors to expose, by their ONNX names (for `deltann localize`; empty in a
    /// sweep). An engine exposes those that exist in the graph it runs (see
    /// [`Engine::run_exposed`]); the model's own outputs come first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
}

/// The output of one engine call.
#[derive(Debug)]
pub struct RunOutput {
    /// The first output tensor, flattened row-major: `rows x classes` values.
    pub values: Vec<f32>,
    /// Its shape as the engine reported it.
    pub shape: Vec<usize>,
    /// Time spent inside the runtime call.
    pub elapsed: Duration,
}

/// One named tensor of a run: a model output or an exposed intermediate.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Its ONNX name.
    pub name: String,
    /// Its values, flattened row-major, widened to float32 whatever the tensor's type (integer
    /// tensors of a quantised graph compare as their integer values).
    pub values: Vec<f32>,
}

/// A loaded model, ready to run batches.
pub trait Engine {
    /// The runtime's version, as it reports it.
    fn version(&self) -> &str;
    /// Runs one batch of `rows` images laid out back to back in `input`.
    ///
    /// # Errors
    /// Returns the runtime's own error message.
    fn run(&mut self, input: &[f32], rows: usize) -> Result<RunOutput, String>;
    /// Runs one batch and returns every output the loaded graph has: the model's outputs, then
    /// the tensors of [`EngineConfig::expose`] that the engine could expose, in graph order.
    ///
    /// # Errors
    /// Returns the runtime's own error message.
    fn run_exposed(&mut self, input: &[f32], rows: usize) -> Result<Vec<NamedTensor>, String>;
}

/// Loads `config.model_path` in the configured engine.
///
/// # Errors
/// Returns the runtime's message when the library or the model cannot be loaded.
pub fn load(config: &EngineConfig) -> Result<Box<dyn Engine>, String> {
    match config.engine {
        EngineKind::Ort => Ok(Box::new(onnxruntime::OrtEngine::load(config)?)),
        EngineKind::Tract => Ok(Box::new(tract::TractEngine::load(config)?)),
        other => Err(format!(
            "{other} runs in its Python worker, not in `deltann worker`"
        )),
    }
}

/// The version of an engine without loading a model (for ORT this loads the library).
///
/// # Errors
/// Returns the runtime's message when the ORT library cannot be loaded.
pub fn version(
    engine: EngineKind,
    ort_library: Option<&std::path::Path>,
) -> Result<String, String> {
    match engine {
        EngineKind::Ort => {
            let lib = ort_library.ok_or("no ONNX Runtime library given")?;
            onnxruntime::library_version(lib)
        }
        EngineKind::Tract => Ok(TRACT_VERSION.to_string()),
        other => Err(format!(
            "{other} runs in its Python worker, not in `deltann worker`"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tract_version_matches_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
            .expect("Cargo.lock next to the workspace manifest");
        let needle = "name = \"tract-onnx\"\nversion = \"";
        let at = lock.find(needle).expect("tract-onnx in Cargo.lock") + needle.len();
        let version = &lock[at..at + lock[at..].find('"').unwrap()];
        assert_eq!(version, super::TRACT_VERSION);
    }
}

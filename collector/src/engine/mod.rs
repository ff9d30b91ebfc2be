//! Inference engines behind one small trait.
//!
//! An [`Engine`] is a loaded model in one runtime with one configuration. It takes a batch of
//! preprocessed images as a flat `f32` slice and returns the raw output plus the time the runtime
//! call took, measured around that call only (not around input copies or output extraction), so
//! latency compares runtimes and not deltann's glue.
//!
//! Engines run inside worker processes (see [`crate::worker`]); the benchmark also runs them in
//! process to measure the bare engine against the collector.

mod onnxruntime;
mod tract;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The runtimes deltann can drive in process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// ONNX Runtime, loaded from a shared library at run time (`ort`, `load-dynamic`).
    Ort,
    /// tract, compiled into deltann.
    Tract,
}

impl EngineKind {
    /// The engine's name in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Ort => "ort",
            EngineKind::Tract => "tract",
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

/// A loaded model, ready to run batches.
pub trait Engine {
    /// The runtime's version, as it reports it.
    fn version(&self) -> &str;
    /// Runs one batch of `rows` images laid out back to back in `input`.
    ///
    /// # Errors
    /// Returns the runtime's own error message.
    fn run(&mut self, input: &[f32], rows: usize) -> Result<RunOutput, String>;
}

/// Loads `config.model_path` in the configured engine.
///
/// # Errors
/// Returns the runtime's message when the library or the model cannot be loaded.
pub fn load(config: &EngineConfig) -> Result<Box<dyn Engine>, String> {
    match config.engine {
        EngineKind::Ort => Ok(Box::new(onnxruntime::OrtEngine::load(config)?)),
        EngineKind::Tract => Ok(Box::new(tract::TractEngine::load(config)?)),
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

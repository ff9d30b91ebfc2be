//! tract, in process.
//!
//! The input fact is set to the concrete batch shape before typing, so models with a symbolic
//! batch dimension and fixed batch-1 models both load; whether a fixed batch-1 model accepts a
//! larger batch is tract's decision, recorded as data like any other engine behaviour.

use std::sync::Arc;
use std::time::Instant;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{Engine, EngineConfig, RunOutput, TRACT_VERSION, TractPlan};

type Plan = Arc<TypedSimplePlan>;

pub(super) struct TractEngine {
    plans: Vec<(usize, Plan)>,
    config: EngineConfig,
    version: String,
}

impl TractEngine {
    pub(super) fn load(config: &EngineConfig) -> Result<Self, String> {
        let plan = build(config, config.batch_size)?;
        Ok(Self {
            plans: vec![(config.batch_size, plan)],
            config: config.clone(),
            version: TRACT_VERSION.to_string(),
        })
    }

    /// The plan for `rows` images; a short last batch gets its own plan, built once.
    fn plan(&mut self, rows: usize) -> Result<Plan, String> {
        if let Some((_, plan)) = self.plans.iter().find(|(n, _)| *n == rows) {
            return Ok(plan.clone());
        }
        let plan = build(&self.config, rows)?;
        self.plans.push((rows, plan.clone()));
        Ok(plan)
    }
}

fn build(config: &EngineConfig, rows: usize) -> Result<Plan, String> {
    let err = |e: TractError| format!("{e:#}");
    let mut shape = vec![rows];
    shape.extend_from_slice(&config.input_shape);
    let model = tract_onnx::onnx()
        .model_for_path(&config.model_path)
        .map_err(err)?;
    // A float16 input keeps its type (the images are rounded to it in `run`).
    let fact = if fp16_input(&model) {
        f16::fact(&shape)
    } else {
        f32::fact(&shape)
    };
    let model = model
        .with_input_fact(0, fact.into())
        .map_err(err)?
        .into_typed()
        .map_err(err)?;
    let model = match config.tract_plan.unwrap_or(TractPlan::Optimized) {
        TractPlan::Decluttered => model.into_decluttered().map_err(err)?,
        TractPlan::Optimized => model.into_optimized().map_err(err)?,
    };
    let options = RunOptions {
        executor: (config.threads > 1).then(|| Executor::multithread(config.threads)),
        ..RunOptions::default()
    };
    model.into_runnable_with_options(&options).map_err(err)
}

/// Whether the model declares its first input float16.
fn fp16_input(model: &InferenceModel) -> bool {
    model
        .input_fact(0)
        .is_ok_and(|f| f.datum_type.concretize() == Some(DatumType::F16))
}

impl Engine for TractEngine {
    fn version(&self) -> &str {
        &self.version
    }

    fn run(&mut self, input: &[f32], rows: usize) -> Result<RunOutput, String> {
        let plan = self.plan(rows)?;
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.config.input_shape);
        let mut tensor = Tensor::from_shape(&shape, input).map_err(|e| format!("{e:#}"))?;
        if plan
            .model()
            .input_fact(0)
            .is_ok_and(|f| f.datum_type == DatumType::F16)
        {
            tensor = tensor
                .cast_to_dt(DatumType::F16)
                .map_err(|e| format!("{e:#}"))?
                .into_owned();
        }
        let started = Instant::now();
        let outputs = plan
            .run(tvec![tensor.into_tvalue()])
            .map_err(|e| format!("{e:#}"))?;
        let elapsed = started.elapsed();
        let first = outputs.first().ok_or("the run returned no outputs")?;
        // float16 scores are widened (exactly) to float32; other types are refused below.
        let first = if first.datum_type() == DatumType::F16 {
            first
                .cast_to::<f32>()
                .map_err(|e| format!("cannot widen float16 scores: {e:#}"))?
        } else {
            std::borrow::Cow::Borrowed(&**first)
        };
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("first output is not a float32 or float16 tensor: {e:#}"))?;
        Ok(RunOutput {
            shape: view.shape().to_vec(),
            values: view.iter().copied().collect(),
            elapsed,
        })
    }
}

//! tract, in process.
//!
//! The input fact is set to the concrete batch shape before typing, so models with a symbolic
//! batch dimension and fixed batch-1 models both load; whether a fixed batch-1 model accepts a
//! larger batch is tract's decision, recorded as data like any other engine behaviour.

use std::sync::Arc;
use std::time::Instant;

use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;

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
        .map_err(err)?
        .with_input_fact(0, f32::fact(&shape).into())
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

impl Engine for TractEngine {
    fn version(&self) -> &str {
        &self.version
    }

    fn run(&mut self, input: &[f32], rows: usize) -> Result<RunOutput, String> {
        let plan = self.plan(rows)?;
        let mut shape = vec![rows];
        shape.extend_from_slice(&self.config.input_shape);
        let tensor = Tensor::from_shape(&shape, input).map_err(|e| format!("{e:#}"))?;
        let started = Instant::now();
        let outputs = plan
            .run(tvec![tensor.into_tvalue()])
            .map_err(|e| format!("{e:#}"))?;
        let elapsed = started.elapsed();
        let first = outputs.first().ok_or("the run returned no outputs")?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| format!("first output is not a float32 tensor: {e:#}"))?;
        Ok(RunOutput {
            shape: view.shape().to_vec(),
            values: view.iter().copied().collect(),
            elapsed,
        })
    }
}

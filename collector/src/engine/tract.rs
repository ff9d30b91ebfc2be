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

use super::{Engine, EngineConfig, NamedTensor, RunOutput, TRACT_VERSION, TractPlan};

type Plan = Arc<TypedSimplePlan>;

pub(super) struct TractEngine {
    plans: Vec<(usize, Plan)>,
    config: EngineConfig,
    version: String,
    /// The names of the plan's outputs, in order.
    outputs: Vec<String>,
}

impl TractEngine {
    pub(super) fn load(config: &EngineConfig) -> Result<Self, String> {
        let (plan, outputs) = build(config, config.batch_size)?;
        Ok(Self {
            plans: vec![(config.batch_size, plan)],
            config: config.clone(),
            version: TRACT_VERSION.to_string(),
            outputs,
        })
    }

    /// The plan for `rows` images; a short last batch gets its own plan, built once.
    fn plan(&mut self, rows: usize) -> Result<Plan, String> {
        if let Some((_, plan)) = self.plans.iter().find(|(n, _)| *n == rows) {
            return Ok(plan.clone());
        }
        let (plan, _) = build(&self.config, rows)?;
        self.plans.push((rows, plan.clone()));
        Ok(plan)
    }
}

/// The runnable plan for `rows` images, and the names of its outputs: the model's own, then
/// those of `config.expose` that name a tensor of the graph tract loaded. An exposed tensor
/// stays an output through tract's optimisation, so fusions across it do not happen.
fn build(config: &EngineConfig, rows: usize) -> Result<(Plan, Vec<String>), String> {
    let err = |e: TractError| format!("{e:#}");
    let mut shape = vec![rows];
    shape.extend_from_slice(&config.input_shape);
    let mut model = tract_onnx::onnx()
        .model_for_path(&config.model_path)
        .map_err(err)?;
    let mut outputs: Vec<String> = model
        .output_outlets()
        .map_err(err)?
        .iter()
        .map(|&o| {
            model.outlet_label(o).map_or_else(
                || format!("{}:{}", model.node(o.node).name, o.slot),
                str::to_string,
            )
        })
        .collect();
    if !config.expose.is_empty() {
        let own: std::collections::HashSet<String> = outputs.iter().cloned().collect();
        outputs.extend(
            config
                .expose
                .iter()
                .filter(|name| !own.contains(*name) && model.find_outlet_label(name).is_some())
                .cloned(),
        );
        model.select_outputs_by_name(&outputs).map_err(err)?;
    }
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
    let plan = model.into_runnable_with_options(&options).map_err(err)?;
    Ok((plan, outputs))
}

/// Whether the model declares its first input float16.
fn fp16_input(model: &InferenceModel) -> bool {
    model
        .input_fact(0)
        .is_ok_and(|f| f.datum_type.concretize() == Some(DatumType::F16))
}

impl TractEngine {
    /// The input tensor of `rows` images, in the type the plan takes.
    fn input(&self, plan: &Plan, input: &[f32], rows: usize) -> Result<Tensor, String> {
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
        Ok(tensor)
    }
}

impl Engine for TractEngine {
    fn version(&self) -> &str {
        &self.version
    }

    fn run(&mut self, input: &[f32], rows: usize) -> Result<RunOutput, String> {
        let plan = self.plan(rows)?;
        let tensor = self.input(&plan, input, rows)?;
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

    fn run_exposed(&mut self, input: &[f32], rows: usize) -> Result<Vec<NamedTensor>, String> {
        let plan = self.plan(rows)?;
        let tensor = self.input(&plan, input, rows)?;
        let outputs = plan
            .run(tvec![tensor.into_tvalue()])
            .map_err(|e| format!("{e:#}"))?;
        // Tensors that do not cast to float32 (strings) are left out, not refused.
        Ok(outputs
            .iter()
            .zip(&self.outputs)
            .filter_map(|(value, name)| {
                let values = value
                    .cast_to::<f32>()
                    .and_then(|t| Ok(t.to_plain_array_view::<f32>()?.iter().copied().collect()))
                    .ok()?;
                Some(NamedTensor {
                    name: name.clone(),
                    values,
                })
            })
            .collect())
    }
}

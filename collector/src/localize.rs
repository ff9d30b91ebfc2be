//! Localising a disagreement between two cells: which optimisation pass causes it, and where in
//! the network the two environments part ways (DeltaNN's root-cause questions).
//!
//! Both answers come from running the chosen images again, in worker processes as a sweep's cells
//! run, so an engine that crashes fails the localisation and not deltann:
//!
//! - [`bisect`] delta-debugs over an engine's optimizer names: the smallest set whose disabling
//!   makes the more optimised cell answer as the other does. Each trial is one worker run of the
//!   chosen images with those names in `ort_disabled_optimizers`.
//! - [`node_errors`] compares two runs with every intermediate tensor exposed
//!   ([`EngineConfig::expose`]), matched by ONNX name, node by node in graph order: each node's
//!   relative error, the error its inputs carried in, and their ratio (the amplification).
//!   [`first_divergent`] is the first node whose error is both above the tolerance and well above
//!   what it was given: where the divergence starts, not where it is merely carried along.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::Float32Type;

use crate::engine::EngineConfig;
use crate::error::{Error, Result};
use crate::protocol::{self, PROTOCOL_VERSION, Request};
use crate::runner::{self, Event, Timeouts, WorkerCommand};

/// ONNX Runtime's optimizer names: its graph transformers as its Info-level log names them
/// (`GraphTransformer <name> modified: ...`, collected from 1.32.0 at ORT_ENABLE_ALL on the fp32,
/// fp16 and int8 models of ../shared), then the rewrite rules its rule-based transformers apply
/// (onnxruntime/core/optimizer/graph_transformer_utils.cc). ONNX Runtime ignores names it does
/// not know, so the list serves older versions too.
pub const ORT_OPTIMIZERS: &[&str] = &[
    "AttentionFusion",
    "BiasDropoutFusion",
    "BiasGeluFusion",
    "BiasSkipLayerNormFusion",
    "BiasSoftmaxFusion",
    "CastFloat16Transformer",
    "CommonSubexpressionElimination",
    "ConstantFolding",
    "ConstantSharing",
    "ConvActivationFusion",
    "ConvAddActivationFusion",
    "DoubleQDQPairsRemover",
    "DynamicQuantizeMatMulFusion",
    "EmbedLayerNormFusion",
    "EnsureUniqueDQForNodeUnit",
    "FastGeluFusion",
    "FreeDimensionOverrideTransformer",
    "FuseFp16InitializerToFp32NodeTransformer",
    "GatherSliceToSplitFusion",
    "GatherToSliceFusion",
    "GeluFusionL1",
    "GeluFusionL2",
    "GemmActivationFusion",
    "GroupQueryAttentionFusion",
    "GroupQueryAttentionPreNormFusion",
    "LayerNormFusionL1",
    "LayerNormFusionL2",
    "MatMulActivationFusion",
    "MatMulAddFusion",
    "MatMulIntegerToFloatFusion",
    "MatMulNBitsFusion",
    "MatMulScaleFusion",
    "MatmulTransposeFusion",
    "NchwcTransformer",
    "NhwcTransformer",
    "QDQFinalCleanupTransformer",
    "QDQPropagationTransformer",
    "QDQS8ToU8Transformer",
    "QDQSelectorActionTransformer",
    "QuickGeluFusion",
    "RemoveDuplicateCastTransformer",
    "ReshapeFusion",
    "SimplifiedLayerNormFusion",
    "SkipLayerNormFusion",
    "SliceConcatToSpaceToDepthFusion",
    "SwiGluFusion",
    "TransposeOptimizer",
    "WeightBiasQuantization",
    "WhereDummyDq",
    // Rules of Level1_RuleBasedTransformer and Level2_RuleBasedTransformer.
    "CastElimination",
    "ClipQuantFusion",
    "ConvAddFusion",
    "ConvBNFusion",
    "ConvMulFusion",
    "DivMulFusion",
    "EliminateDropout",
    "EliminateIdentity",
    "EliminateSlice",
    "ExpandElimination",
    "FuseReluClip",
    "GemmSumFusion",
    "GemmTransposeFusion",
    "CastChainElimination",
    "LabelEncoderFusion",
    "MatmulBNFusion",
    "NoopElimination",
    "NotWhereFusion",
    "PadFusion",
    "PreShapeNodeElimination",
    "ReluQuantFusion",
    "UnsqueezeElimination",
];

/// The images a localisation runs: ids and preprocessed tensors, each `len` float32 values.
#[derive(Clone, Debug)]
pub struct Images {
    pub ids: Vec<String>,
    pub tensors: Vec<Vec<f32>>,
    pub len: usize,
}

impl Images {
    /// One input batch per image (engines answer a localisation one image at a time).
    fn inputs(&self) -> Result<runner::Inputs> {
        let schema = protocol::input_schema(self.len);
        let len = i32::try_from(self.len).map_err(|_| Error::Engine("tensor too long".into()))?;
        let mut batches = Vec::with_capacity(self.ids.len());
        for (id, tensor) in self.ids.iter().zip(&self.tensors) {
            let values = Arc::new(Float32Array::from(tensor.clone()));
            let item = Arc::new(arrow::datatypes::Field::new(
                "item",
                arrow::datatypes::DataType::Float32,
                false,
            ));
            let list = FixedSizeListArray::try_new(item, len, values, None)?;
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec![id.as_str()])),
                    Arc::new(list),
                ],
            )?;
            batches.push(Ok(batch));
        }
        Ok(Box::new(batches.into_iter()))
    }
}

/// Runs `config` once over `images` in a worker and hands each result batch to `each`.
fn run_worker(
    worker: &WorkerCommand,
    config: &EngineConfig,
    images: &Images,
    timeouts: Timeouts,
    each: &mut dyn FnMut(&RecordBatch) -> Result<()>,
) -> Result<()> {
    let request = Request {
        protocol: PROTOCOL_VERSION,
        cell_id: "localize".into(),
        engine: config.clone(),
        warmup: 0,
        repetitions: 1,
        probe: false,
    };
    let run = runner::run(
        worker,
        &request,
        images.inputs()?,
        timeouts,
        &mut |event| match event {
            Event::Ready(_) => Ok(()),
            Event::Results(batch) => each(batch),
        },
    )?;
    match run.failure {
        Some(why) => Err(Error::Engine(why)),
        None => Ok(()),
    }
}

/// Each image's logits from one run of `config` (repetition 0), in `images` order. An image the
/// engine failed on is an error naming it: a localisation needs every image's answer.
///
/// # Errors
/// Fails when the worker cannot run, the engine fails to load or run, or an image is missing.
pub fn logits(
    worker: &WorkerCommand,
    config: &EngineConfig,
    images: &Images,
    timeouts: Timeouts,
) -> Result<Vec<Vec<f32>>> {
    let mut config = config.clone();
    config.batch_size = 1;
    config.expose.clear();
    let mut by_id: HashMap<String, Vec<f32>> = HashMap::new();
    run_worker(worker, &config, images, timeouts, &mut |batch| {
        for (_, id, values) in float_rows(batch, protocol::LOGITS)? {
            by_id.insert(id, values);
        }
        Ok(())
    })?;
    images
        .ids
        .iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or_else(|| Error::Worker(format!("no result for image {id}")))
        })
        .collect()
}

/// Each row's index, image id and float32 values from the list column `column`; an engine error
/// on any row fails them all (a localisation needs every image).
fn float_rows(batch: &RecordBatch, column: &str) -> Result<Vec<(usize, String, Vec<f32>)>> {
    let ids = string_column(batch, protocol::IMAGE_ID)?;
    let errors = string_column(batch, protocol::ERROR)?;
    let lists = batch
        .column_by_name(column)
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or_else(|| Error::Worker(format!("result batch without {column}")))?;
    (0..batch.num_rows())
        .map(|row| {
            if errors.is_valid(row) {
                return Err(Error::Engine(format!(
                    "image {}: {}",
                    ids.value(row),
                    errors.value(row)
                )));
            }
            let values = lists.value(row);
            let values = values
                .as_primitive_opt::<Float32Type>()
                .ok_or_else(|| Error::Worker(format!("{column} are not float32")))?;
            Ok((row, ids.value(row).to_string(), values.values().to_vec()))
        })
        .collect()
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Worker(format!("result batch without {name}")))
}

/// One image's tensors by ONNX name, as one engine computed them.
pub type Tensors = HashMap<String, Vec<f32>>;

/// Every tensor of `expose` that `config`'s engine computes, per image (in `images` order).
///
/// # Errors
/// Fails when the worker cannot run or the engine fails on an image.
pub fn capture(
    worker: &WorkerCommand,
    config: &EngineConfig,
    expose: &[String],
    images: &Images,
    timeouts: Timeouts,
) -> Result<Vec<Tensors>> {
    let mut config = config.clone();
    config.batch_size = 1;
    config.expose = expose.to_vec();
    let mut by_id: HashMap<String, Tensors> = HashMap::new();
    run_worker(worker, &config, images, timeouts, &mut |batch| {
        let names = string_column(batch, protocol::TENSOR_NAME)?;
        for (row, id, values) in float_rows(batch, protocol::VALUES)? {
            by_id
                .entry(id)
                .or_default()
                .insert(names.value(row).to_string(), values);
        }
        Ok(())
    })?;
    images
        .ids
        .iter()
        .map(|id| {
            by_id
                .remove(id)
                .ok_or_else(|| Error::Worker(format!("no tensors for image {id}")))
        })
        .collect()
}

/// One node of an ONNX graph, in the file's order (which ONNX requires to be topological).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name (its first output's name when it has none).
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// The nodes of the model at `path`.
///
/// # Errors
/// Fails, naming the file, when it cannot be read or is not ONNX.
pub fn graph(path: &Path) -> Result<Vec<Node>> {
    let (_, graph) = crate::model::read_graph(path)?;
    Ok(graph
        .node
        .into_iter()
        .map(|n| {
            let outputs: Vec<String> = n.output.into_iter().filter(|o| !o.is_empty()).collect();
            Node {
                name: if n.name.is_empty() {
                    outputs.first().cloned().unwrap_or_default()
                } else {
                    n.name
                },
                op: n.op_type,
                inputs: n.input.into_iter().filter(|i| !i.is_empty()).collect(),
                outputs,
            }
        })
        .collect())
}

/// The tensors worth exposing: every output of every node but constants.
pub fn exposable(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.op != "Constant")
        .flat_map(|n| n.outputs.iter().cloned())
        .collect()
}

/// The float tensors a graph quantises (`x -> QuantizeLinear -> DequantizeLinear -> x_dq`), as
/// `x -> x_dq`.
fn dequantized(nodes: &[Node]) -> HashMap<String, String> {
    let quantized: HashMap<&str, &str> = nodes
        .iter()
        .filter(|n| n.op == "QuantizeLinear")
        .filter_map(|n| Some((n.outputs.first()?.as_str(), n.inputs.first()?.as_str())))
        .collect();
    nodes
        .iter()
        .filter(|n| n.op == "DequantizeLinear")
        .filter_map(|n| {
            let x = quantized.get(n.inputs.first()?.as_str())?;
            Some((x.to_string(), n.outputs.first()?.clone()))
        })
        .collect()
}

/// Makes each side's tensor `x` what the next layer of a quantised graph receives: its
/// dequantised value `x_dq` (`x -> QuantizeLinear -> DequantizeLinear -> x_dq`). A quantiser that
/// removes a Relu or Clip keeps its output name on the convolution before it and lets the
/// quantisation range do the clipping, so a quantised graph's `x` is not a float graph's `x`.
///
/// A side's `x` is replaced when its run has `x_dq` and the other side either does not quantise
/// `x` (a float graph) or has `x_dq` too; when both graphs quantise `x` but only one run computed
/// `x_dq` (the other fused it away), both keep `x`, which then means the same on both sides.
pub fn as_the_next_layer_sees(
    nodes_a: &[Node],
    a: &mut Tensors,
    nodes_b: &[Node],
    b: &mut Tensors,
) {
    let (qa, qb) = (dequantized(nodes_a), dequantized(nodes_b));
    let side = |mine: &HashMap<String, String>,
                theirs: &HashMap<String, String>,
                tensors: &Tensors,
                other: &Tensors| {
        mine.iter()
            .filter_map(|(x, dq)| {
                let value = tensors.get(dq)?;
                match theirs.get(x) {
                    Some(their_dq) if !other.contains_key(their_dq) => None,
                    _ => Some((x.clone(), value.clone())),
                }
            })
            .collect::<Vec<_>>()
    };
    let for_a = side(&qa, &qb, a, b);
    let for_b = side(&qb, &qa, b, a);
    a.extend(for_a);
    b.extend(for_b);
}

/// How far one node's output is from the reference's, on one image.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeError {
    /// The node's position in the graph (0-based, graph order).
    pub order: usize,
    pub node: String,
    pub op: String,
    /// The output compared (the node's first output both sides computed).
    pub tensor: String,
    /// ||b - a|| / ||a|| (relative L2 error; 0 when equal, and when both are zero).
    pub error: f64,
    /// max |b - a|.
    pub max_abs: f64,
    /// The largest error among the node's inputs; for an input neither side exposed, the error
    /// carried into the node that computed it. Weights and the model's input carry none.
    pub carried: f64,
    /// `error / max(carried, AMPLIFICATION_FLOOR)`.
    pub amplification: f64,
    /// Whether every input of the node was itself compared (or cannot differ: a weight, a
    /// constant). When not, the divergence may start in the nodes before it.
    pub inputs_compared: bool,
}

impl NodeError {
    /// The relative L2 error and the largest absolute difference of `b` against `a` (as
    /// [`node_errors`] measures each tensor).
    pub fn between(a: &[f32], b: &[f32]) -> (f64, f64) {
        compare(a, b)
    }
}

/// Errors below this (a few float32 roundings) count as none when dividing by what a node was
/// given.
pub const AMPLIFICATION_FLOOR: f64 = 1e-7;

/// Relative L2 error and max absolute difference of `b` against `a`.
fn compare(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut diff, mut norm, mut max_abs) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        // Equal values (equal infinities too) agree; a NaN, or a finite value against an
        // infinite one, is as far apart as can be: it must not vanish from the sums and maxima.
        if x == y {
            norm += f64::from(x) * f64::from(x);
            continue;
        }
        if !(x.is_finite() && y.is_finite()) {
            return (f64::INFINITY, f64::INFINITY);
        }
        let d = f64::from(y) - f64::from(x);
        diff += d * d;
        norm += f64::from(x) * f64::from(x);
        max_abs = max_abs.max(d.abs());
    }
    let error = if diff == 0.0 {
        0.0
    } else if norm == 0.0 || !norm.is_finite() {
        f64::INFINITY
    } else {
        (diff / norm).sqrt()
    };
    (error, max_abs)
}

/// Compares the tensors of `b` against the reference `a`, node by node in graph order. Nodes none
/// of whose outputs both sides computed (with the same number of values) are left out. Tensors
/// no node computes (weights, the graph's inputs) carry no error unless both sides hold them (the
/// caller may put the graph's input in, as each side fed it).
pub fn node_errors(nodes: &[Node], a: &Tensors, b: &Tensors) -> Vec<NodeError> {
    let produced: HashMap<&str, &str> = nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n.op.as_str())))
        .collect();
    let measure = |tensor: &str| match (a.get(tensor), b.get(tensor)) {
        (Some(x), Some(y)) if x.len() == y.len() => Some(compare(x, y)),
        _ => None,
    };
    // The error each tensor carries: measured where both sides have it, else what the node that
    // computed it was given; and whether it was measured (or cannot differ: a Constant's).
    let mut at: HashMap<&str, (f64, bool)> = HashMap::new();
    let mut out = Vec::new();
    for (order, node) in nodes.iter().enumerate() {
        let mut carried = 0f64;
        let mut inputs_compared = true;
        for input in &node.inputs {
            let (error, seen) = match at.get(input.as_str()) {
                Some(&known) => known,
                None if produced.contains_key(input.as_str()) => (0.0, false),
                // A weight or a graph input: compared when both sides hold it.
                None => measure(input).map_or((0.0, true), |(e, _)| (e, true)),
            };
            carried = carried.max(error);
            inputs_compared &= seen;
        }
        let mut first = None;
        for tensor in &node.outputs {
            let measured = measure(tensor);
            let known = match measured {
                Some((e, _)) => (e, true),
                None => (carried, node.op == "Constant"),
            };
            at.insert(tensor, known);
            if first.is_none()
                && let Some(m) = measured
            {
                first = Some((tensor, m));
            }
        }
        if let Some((tensor, (error, max_abs))) = first {
            out.push(NodeError {
                order,
                node: node.name.clone(),
                op: node.op.clone(),
                tensor: tensor.clone(),
                error,
                max_abs,
                carried,
                amplification: error / carried.max(AMPLIFICATION_FLOOR),
                inputs_compared,
            });
        }
    }
    out
}

/// The first node whose error exceeds `tolerance` and is more than `gain` times what its inputs
/// carried in (a NaN error counts as exceeding both).
pub fn first_divergent(errors: &[NodeError], tolerance: f64, gain: f64) -> Option<&NodeError> {
    errors
        .iter()
        .find(|e| above(e.error, tolerance) && above(e.amplification, gain))
}

/// `x > bound`, with NaN above every bound (a NaN error is a divergence, not a pass).
fn above(x: f64, bound: f64) -> bool {
    x.is_nan() || x > bound
}

/// One trial of a bisection: the optimizers disabled and whether that removed the divergence.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub disabled: Vec<String>,
    /// The run answered as the reference did on every image (same top-1, logits within the
    /// tolerance).
    pub agrees: bool,
    /// Largest |logit difference| against the reference, over the images.
    pub max_abs: f64,
    /// Images whose top-1 differs from the reference's.
    pub flips: usize,
}

/// What a bisection found.
#[derive(Clone, Debug, PartialEq)]
pub struct Bisection {
    /// The smallest set found whose disabling removes the divergence (1-minimal: enabling any
    /// one of them again brings it back). Empty when no set does.
    pub culprits: Vec<String>,
    /// Whether disabling every candidate removed the divergence (when not, the divergence does
    /// not come from these passes, and `culprits` is empty).
    pub explained: bool,
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
}

/// Compares `logits` with `reference`: (agrees, largest |difference|, top-1 flips).
pub fn agreement(
    reference: &[Vec<f32>],
    logits: &[Vec<f32>],
    tolerance: f64,
) -> (bool, f64, usize) {
    let mut max_abs = 0f64;
    let mut flips = 0;
    for (a, b) in reference.iter().zip(logits) {
        if a.len() != b.len() {
            return (false, f64::INFINITY, flips + 1);
        }
        let (error, abs) = compare(a, b);
        max_abs = max_abs.max(abs);
        if error.is_infinite() {
            max_abs = f64::INFINITY;
        }
        if argmax(a) != argmax(b) {
            flips += 1;
        }
    }
    (flips == 0 && max_abs <= tolerance, max_abs, flips)
}

/// The top-1 class as the store ranks it (ties to the lowest index: quantised models tie often).
fn argmax(v: &[f32]) -> Option<i32> {
    deltann_store::outputs::rank(v, deltann_store::outputs::Scores::Logits)
        .top
        .first()
        .copied()
}

/// Delta debugging (Zeller's ddmin) over `candidates` for a smallest set whose disabling makes
/// `trial` agree. `trial` runs the optimised side with the given names disabled. It is first run
/// with nothing and with everything disabled: when nothing disabled already agrees there is no
/// divergence to explain (an error), and when everything disabled still disagrees the result
/// says so with no culprits.
///
/// # Errors
/// Fails when a trial fails, or when the two sides already agree.
pub fn bisect(
    candidates: &[String],
    trial: &mut dyn FnMut(&[String]) -> Result<Trial>,
) -> Result<Bisection> {
    let mut trials: Vec<Trial> = Vec::new();
    let mut seen: HashMap<BTreeSet<String>, bool> = HashMap::new();
    let mut test = |set: &[String], trials: &mut Vec<Trial>| -> Result<bool> {
        let key: BTreeSet<String> = set.iter().cloned().collect();
        if let Some(&agrees) = seen.get(&key) {
            return Ok(agrees);
        }
        let t = trial(set)?;
        let agrees = t.agrees;
        trials.push(t);
        seen.insert(key, agrees);
        Ok(agrees)
    };
    if test(&[], &mut trials)? {
        return Err(Error::Engine(
            "the two cells agree on these images (same top-1, logits within the tolerance): \
             nothing to localise"
                .into(),
        ));
    }
    let all: Vec<String> = candidates.to_vec();
    if !test(&all, &mut trials)? {
        return Ok(Bisection {
            culprits: Vec::new(),
            explained: false,
            trials,
        });
    }
    let mut set = all;
    let mut n = 2usize;
    while set.len() >= 2 {
        let chunks = split(&set, n);
        let mut reduced = false;
        for chunk in &chunks {
            if test(chunk, &mut trials)? {
                set.clone_from(chunk);
                n = 2;
                reduced = true;
                break;
            }
        }
        if !reduced && n > 2 {
            for chunk in &chunks {
                let drop: HashSet<&String> = chunk.iter().collect();
                let complement: Vec<String> =
                    set.iter().filter(|s| !drop.contains(s)).cloned().collect();
                if test(&complement, &mut trials)? {
                    set = complement;
                    n = (n - 1).max(2);
                    reduced = true;
                    break;
                }
            }
        }
        if !reduced {
            if n >= set.len() {
                break;
            }
            n = (2 * n).min(set.len());
        }
    }
    Ok(Bisection {
        culprits: set,
        explained: true,
        trials,
    })
}

/// `set` in `n` nearly equal consecutive chunks.
fn split(set: &[String], n: usize) -> Vec<Vec<String>> {
    let n = n.clamp(1, set.len().max(1));
    let mut chunks = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let end = start + (set.len() - start) / (n - i);
        chunks.push(set[start..end].to_vec());
        start = end;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A trial that agrees when every name of `needed` is disabled.
    fn oracle(needed: &'static [&'static str]) -> impl FnMut(&[String]) -> Result<Trial> {
        move |set: &[String]| {
            let agrees = needed.iter().all(|n| set.iter().any(|s| s == n));
            Ok(Trial {
                disabled: set.to_vec(),
                agrees,
                max_abs: if agrees { 0.0 } else { 1.0 },
                flips: 0,
            })
        }
    }

    #[test]
    fn bisection_finds_one_or_two_culprits_among_many() {
        let candidates: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
        let found = bisect(&candidates, &mut oracle(&["p17"])).unwrap();
        assert_eq!(found.culprits, names(&["p17"]));
        assert!(found.explained);
        // Far fewer trials than one per candidate.
        assert!(found.trials.len() < 20, "{}", found.trials.len());

        let mut found = bisect(&candidates, &mut oracle(&["p3", "p31"])).unwrap();
        found.culprits.sort();
        assert_eq!(found.culprits, names(&["p3", "p31"]));
    }

    #[test]
    fn bisection_says_when_passes_do_not_explain_it_or_nothing_differs() {
        let candidates = names(&["a", "b", "c"]);
        let found = bisect(&candidates, &mut oracle(&["z"])).unwrap();
        assert!(!found.explained && found.culprits.is_empty());
        assert_eq!(found.trials.len(), 2);
        let agreeing = &mut |set: &[String]| {
            Ok(Trial {
                disabled: set.to_vec(),
                agrees: true,
                max_abs: 0.0,
                flips: 0,
            })
        };
        assert!(bisect(&candidates, agreeing).is_err());
    }

    fn node(name: &str, op: &str, inputs: &[&str], outputs: &[&str]) -> Node {
        Node {
            name: name.into(),
            op: op.into(),
            inputs: names(inputs),
            outputs: names(outputs),
        }
    }

    #[test]
    fn the_node_that_amplifies_is_named_not_the_ones_that_carry() {
        // x -> conv1 -> t1 -> relu -> t2 (not exposed) -> conv2 -> t3 -> add(t3, t1) -> t4
        let nodes = vec![
            node("conv1", "Conv", &["x", "w1"], &["t1"]),
            node("relu", "Relu", &["t1"], &["t2"]),
            node("conv2", "Conv", &["t2", "w2"], &["t3"]),
            node("add", "Add", &["t3", "t1"], &["t4"]),
        ];
        let a: Tensors = [
            ("t1", vec![1.0, 2.0]),
            ("t3", vec![3.0, 4.0]),
            ("t4", vec![4.0, 6.0]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut b = a.clone();
        b.insert("t1".into(), vec![1.0, 2.0 + 1e-7]);
        b.insert("t3".into(), vec![3.3, 4.0]);
        b.insert("t4".into(), vec![4.3, 6.0]);
        let errors = node_errors(&nodes, &a, &b);
        assert_eq!(
            errors.iter().map(|e| e.node.as_str()).collect::<Vec<_>>(),
            ["conv1", "conv2", "add"]
        );
        // conv2's input t2 was not exposed: it carries relu's input error (t1's).
        assert!((errors[1].carried - errors[0].error).abs() < 1e-12);
        let first = first_divergent(&errors, 1e-3, 10.0).unwrap();
        assert_eq!(first.node, "conv2");
        assert!((first.error - 0.3 / 5.0).abs() < 1e-6, "{}", first.error);
        // add only carries conv2's error along.
        assert!(errors[2].amplification < 10.0);
    }

    #[test]
    fn a_quantised_activation_is_compared_after_its_dequantisation() {
        let nodes = vec![
            node("conv", "Conv", &["x", "w"], &["relu_out"]),
            node("q", "QuantizeLinear", &["relu_out", "s", "z"], &["q_out"]),
            node("dq", "DequantizeLinear", &["q_out", "s", "z"], &["dq_out"]),
        ];
        let mut t: Tensors = [("relu_out", vec![-1.0, 2.0]), ("dq_out", vec![0.0, 2.0])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        // Against a float graph (no quantisation): compared after the pair.
        let mut float: Tensors = Tensors::new();
        as_the_next_layer_sees(&[], &mut float, &nodes, &mut t);
        assert_eq!(t["relu_out"], vec![0.0, 2.0]);
        // Against the same quantised graph whose run fused the pair away: left as it is.
        let mut t: Tensors = [("relu_out", vec![-1.0, 2.0]), ("dq_out", vec![0.0, 2.0])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut fused: Tensors = [("relu_out", vec![-1.0, 2.0])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        as_the_next_layer_sees(&nodes, &mut t, &nodes, &mut fused);
        assert_eq!(t["relu_out"], vec![-1.0, 2.0]);
    }

    #[test]
    fn nan_and_infinite_values_are_divergences_not_agreements() {
        assert_eq!(compare(&[1.0, f32::INFINITY], &[1.0, f32::INFINITY]).0, 0.0);
        assert!(compare(&[1.0, 2.0], &[1.0, f32::NAN]).0.is_infinite());
        assert!(compare(&[1.0, 2.0], &[f32::INFINITY, 2.0]).1.is_infinite());
        let nodes = vec![node("conv", "Conv", &["x", "w"], &["y"])];
        let a: Tensors = [("y".to_string(), vec![1.0, 2.0])].into_iter().collect();
        let b: Tensors = [("y".to_string(), vec![1.0, f32::NAN])]
            .into_iter()
            .collect();
        let errors = node_errors(&nodes, &a, &b);
        assert_eq!(first_divergent(&errors, 1e-3, 10.0).unwrap().node, "conv");
        let (agrees, max_abs, _) = agreement(&[vec![1.0, 2.0]], &[vec![1.0, f32::NAN]], 1e-4);
        assert!(!agrees && max_abs.is_infinite());
    }

    #[test]
    fn chunks_cover_the_set_in_order() {
        let set = names(&["a", "b", "c", "d", "e"]);
        let chunks = split(&set, 3);
        assert_eq!(chunks.concat(), set);
        assert_eq!(chunks.len(), 3);
    }
}

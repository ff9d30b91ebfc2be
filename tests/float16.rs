//! Models whose graph inputs and outputs are float16: ORT and tract round the images to float16
//! (to nearest, ties to even, as ONNX's Cast does) and widen the scores back to float32 exactly.
//! Such a model answers as the same graph with float32 ends and Cast nodes does, though not bit
//! for bit: ORT on the CPU has no float16 kernels for most operators and, in the twin, removes
//! the Cast pairs it inserts around them, so the twin's scores are not even float16 values.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::Int32Type;
use prost::Message;
use tract_onnx::pb;

use crate::util::{self, read_table, strings, text};

const FLOAT16: i32 = 10;

fn set_elem_type(info: &mut pb::ValueInfoProto, elem_type: i32) {
    if let Some(pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(t)),
        ..
    }) = info.r#type.as_mut()
    {
        t.elem_type = elem_type;
    }
}

/// A copy of a float16 model with float32 ends (`input -> Cast -> ...`, `... -> Cast -> logits`)
/// whose ends are float16: both Casts removed, the graph's input and output retyped.
fn with_float16_ends(from: &std::path::Path, to: &std::path::Path) {
    let mut model = pb::ModelProto::decode(std::fs::read(from).unwrap().as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let input = graph.input[0].name.clone();
    let output = graph.output[0].name.clone();
    let cast_in = graph
        .node
        .iter()
        .position(|n| n.op_type == "Cast" && n.input == [input.clone()])
        .expect("an input Cast");
    let casted = graph.node.remove(cast_in).output[0].clone();
    for node in &mut graph.node {
        for i in &mut node.input {
            if *i == casted {
                *i = input.clone();
            }
        }
    }
    let cast_out = graph
        .node
        .iter()
        .position(|n| n.op_type == "Cast" && n.output == [output.clone()])
        .expect("an output Cast");
    let scores = graph.node.remove(cast_out).input[0].clone();
    for node in &mut graph.node {
        for o in &mut node.output {
            if *o == scores {
                *o = output.clone();
            }
        }
    }
    set_elem_type(&mut graph.input[0], FLOAT16);
    set_elem_type(&mut graph.output[0], FLOAT16);
    std::fs::write(to, model.encode_to_vec()).unwrap();
}

/// A small float16 graph (per-channel means of the image, then a Gemm to 5 scores: tract and ORT
/// both run it) with float32 ends and Cast nodes.
fn small_twin(path: &std::path::Path) {
    use deltann_collector::model::{float_tensor_info, model_of};
    let node =
        |op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>| pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.into()],
            attribute: attrs,
            ..Default::default()
        };
    let to = pb::AttributeProto {
        name: "to".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: i64::from(FLOAT16),
        ..Default::default()
    };
    let to_float = pb::AttributeProto { i: 1, ..to.clone() };
    // Weights [3, 5] in float16: row c scores class k by (k + 1) * (c - 1) / 4.
    let weights: Vec<u16> = (0..3)
        .flat_map(|c| {
            (0..5).map(move |k| {
                half::f16::from_f32((k + 1) as f32 * (c as f32 - 1.0) / 4.0).to_bits()
            })
        })
        .collect();
    let w = pb::TensorProto {
        name: "w".into(),
        dims: vec![3, 5],
        data_type: FLOAT16,
        int32_data: weights.iter().map(|&b| i32::from(b)).collect(),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "g".into(),
        node: vec![
            node("Cast", &["input"], "x16", vec![to]),
            node("GlobalAveragePool", &["x16"], "pooled", vec![]),
            node("Flatten", &["pooled"], "flat", vec![]),
            node("Gemm", &["flat", "w"], "scores16", vec![]),
            node("Cast", &["scores16"], "logits", vec![to_float]),
        ],
        initializer: vec![w],
        input: vec![float_tensor_info("input", &[1, 3, 64, 64])],
        output: vec![float_tensor_info("logits", &[1, 5])],
        ..Default::default()
    };
    std::fs::write(path, model_of(graph).encode_to_vec()).unwrap();
}

#[test]
fn models_with_float16_ends_run_and_answer_in_float16() {
    util::ort_library("1.32.0");
    let dir = tempfile::tempdir().unwrap();
    let mut pairs = vec![(dir.path().join("small.onnx"), 64)];
    small_twin(&pairs[0].0);
    // A real one where ../shared is present: MobileNetV2 in float16 (which tract cannot load:
    // its copy must then fail alike).
    if let Some(shared) = util::shared() {
        pairs.push((shared.join("models/mobilenetv2-fp16.onnx"), 224));
    }
    let mut models = String::new();
    for (i, (twin, size)) in pairs.iter().enumerate() {
        let ends = dir.path().join(format!("ends-{i}.onnx"));
        with_float16_ends(twin, &ends);
        for (name, path) in [
            (format!("m{i}-float32-ends"), twin),
            (format!("m{i}-float16-ends"), &ends),
        ] {
            models.push_str(&format!(
                "[[model]]\nname = \"{name}\"\npath = \"{}\"\npreset = \"torchvision\"\nsize = {size}\n",
                path.display()
            ));
        }
    }
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            "store = \"store\"\nwarmup = 1\n[dataset]\nimages = \"{{data}}/images\"\n{models}\
             [environments]\nengine = [\"ort\", \"tract\"]\nort_library = [\"1.32.0\"]\n"
        ),
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    let store = dir.path().join("store");
    let statuses = cell_statuses(&store);
    for ((model, engine), status) in &statuses {
        if let Some(twin) = model.strip_suffix("-float16-ends") {
            let twin = &statuses[&(format!("{twin}-float32-ends"), engine.clone())];
            assert_eq!(
                status.0, twin.0,
                "{model} {engine}: {status:?} but its twin {twin:?}"
            );
        }
    }
    // The small model runs on both engines; ORT runs MobileNetV2 too.
    for engine in ["ort", "tract"] {
        let status = &statuses[&("m0-float16-ends".into(), engine.into())];
        assert_eq!(status.0, "ok", "{engine}: {status:?}\n{}", text(&out));
    }
    if pairs.len() > 1 {
        let status = &statuses[&("m1-float16-ends".into(), "ort".into())];
        assert_eq!(status.0, "ok", "{status:?}");
    }
    // Scores come back as float16 widened to float32, and rank the classes as the twin does.
    let rows = outputs(&store);
    let mut compared = 0;
    for ((model, engine, image), (top1, logits)) in &rows {
        let Some(twin) = model.strip_suffix("-float16-ends") else {
            continue;
        };
        for &v in logits {
            assert_eq!(
                half::f16::from_f32(v).to_f32(),
                v,
                "{model} {engine}: {v} is not a float16"
            );
        }
        let twin = &rows[&(
            format!("{twin}-float32-ends"),
            engine.clone(),
            image.clone(),
        )];
        assert_eq!(*top1, twin.0, "{model} {engine} {image}");
        compared += 1;
    }
    assert!(compared >= 2 * 8, "{compared} images compared");
}

/// (model, engine, image) -> (top-1, logits).
fn outputs(store: &std::path::Path) -> BTreeMap<(String, String, String), (i32, Vec<f32>)> {
    let cells = read_table(store, "cells").all().unwrap();
    let engines: BTreeMap<String, (String, String)> = strings(&cells, "cell_id")
        .into_iter()
        .zip(
            strings(&cells, "model")
                .into_iter()
                .zip(strings(&cells, "engine")),
        )
        .map(|(id, (m, e))| (id.unwrap(), (m.unwrap(), e.unwrap())))
        .collect();
    let outputs = read_table(store, "outputs").all().unwrap();
    let logits = outputs.column_by_name("logits").unwrap().as_binary::<i32>();
    let top1 = outputs
        .column_by_name("top1")
        .unwrap()
        .as_primitive::<Int32Type>();
    strings(&outputs, "cell_id")
        .into_iter()
        .zip(strings(&outputs, "image_id"))
        .enumerate()
        .map(|(row, (c, i))| {
            let (m, e) = engines[&c.unwrap()].clone();
            let values: Vec<f32> = logits
                .value(row)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            ((m, e, i.unwrap()), (top1.value(row), values))
        })
        .collect()
}

/// (model, engine) -> (status, error).
fn cell_statuses(store: &std::path::Path) -> BTreeMap<(String, String), (String, Option<String>)> {
    let cells = read_table(store, "cells").all().unwrap();
    strings(&cells, "model")
        .into_iter()
        .zip(strings(&cells, "engine"))
        .zip(
            strings(&cells, "status")
                .into_iter()
                .zip(strings(&cells, "error")),
        )
        .map(|((m, e), (s, err))| ((m.unwrap(), e.unwrap()), (s.unwrap(), err)))
        .collect()
}

//! What a model file says about itself, read before any cell runs.
//!
//! Reading the ONNX protobuf up front catches a missing or malformed model before the sweep
//! starts (naming the file), gives the input size and class count that preprocessing and label
//! checks need, and hashes the file for the cell ids.

use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use crate::error::{Error, IoContext, Result};

/// One dimension of an input or output: a number, or a symbol such as `batch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic (dynamic) size.
    Symbol(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) if s.is_empty() => f.write_str("?"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// A model file's identity and interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// sha256 of the file; for a model whose weights live in external files (`model.onnx.data`),
    /// of the file and every weights file it names, so re-exported weights are a new model.
    pub sha256: String,
    /// File size.
    pub bytes: u64,
    /// Name of the first graph input.
    pub input_name: String,
    /// Its declared shape.
    pub input_dims: Vec<Dim>,
    /// Name of the first graph output.
    pub output_name: String,
    /// Its declared shape.
    pub output_dims: Vec<Dim>,
}

impl ModelInfo {
    /// The declared input shape, e.g. `batch x 3 x 224 x 224`.
    pub fn input_shape(&self) -> String {
        join_dims(&self.input_dims)
    }

    /// The class count: the last output dimension when it is fixed.
    pub fn num_classes(&self) -> Option<usize> {
        match self.output_dims.last() {
            Some(Dim::Fixed(n)) if *n > 0 => usize::try_from(*n).ok(),
            _ => None,
        }
    }

    /// The square spatial size of an NCHW or NHWC image input, when the model fixes it.
    pub fn image_size(&self) -> Option<u32> {
        let fixed = |d: &Dim| match d {
            Dim::Fixed(n) => u32::try_from(*n).ok(),
            Dim::Symbol(_) => None,
        };
        match self.input_dims.as_slice() {
            [_, Dim::Fixed(3), h, w] if fixed(h).is_some() && fixed(h) == fixed(w) => fixed(h),
            [_, h, w, Dim::Fixed(3)] if fixed(h).is_some() && fixed(h) == fixed(w) => fixed(h),
            _ => None,
        }
    }
}

fn join_dims(dims: &[Dim]) -> String {
    dims.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

/// Reads a model file: its bytes and its decoded graph.
///
/// # Errors
/// Fails, naming the file, when it is missing, unreadable, not ONNX, or has no graph.
pub fn read_graph(path: &Path) -> Result<(Vec<u8>, pb::GraphProto)> {
    if !path.is_file() {
        return Err(Error::input(path, "model file does not exist"));
    }
    let bytes = std::fs::read(path).io("read model", path)?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(&bytes))
        .map_err(|e| Error::input(path, format!("not a valid ONNX model: {e:#}")))?;
    let graph = proto
        .graph
        .ok_or_else(|| Error::input(path, "ONNX model has no graph"))?;
    Ok((bytes, graph))
}

/// Reads and hashes a model file and parses its graph interface.
///
/// # Errors
/// Fails, naming the file, when it is missing, unreadable, not ONNX, or has no inputs or outputs.
pub fn inspect(path: &Path) -> Result<ModelInfo> {
    let (bytes, graph) = read_graph(path)?;
    let graph = &graph;
    let sha256 = model_hash(path, &bytes, graph)?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !initializers.contains(i.name.as_str()))
        .ok_or_else(|| Error::input(path, "ONNX model has no inputs"))?;
    let output = graph
        .output
        .first()
        .ok_or_else(|| Error::input(path, "ONNX model has no outputs"))?;
    Ok(ModelInfo {
        sha256,
        bytes: bytes.len() as u64,
        input_name: input.name.clone(),
        input_dims: dims(input),
        output_name: output.name.clone(),
        output_dims: dims(output),
    })
}

/// The model's identity: the sha256 of its file, or, when its initializers keep their data in
/// external files, of the file's hash followed by each external file's name and hash (sorted by
/// name), so that the same graph with other weights is another model.
fn model_hash(path: &Path, bytes: &[u8], graph: &pb::GraphProto) -> Result<String> {
    let file_hash = deltann_store::ids::sha256_hex(bytes);
    let mut locations: Vec<&str> = graph
        .initializer
        .iter()
        .flat_map(|t| &t.external_data)
        .filter(|kv| kv.key == "location")
        .map(|kv| kv.value.as_str())
        .collect();
    if locations.is_empty() {
        return Ok(file_hash);
    }
    locations.sort_unstable();
    locations.dedup();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut text = format!("deltann-model-v1\n{file_hash}\n");
    for location in locations {
        let relative = Path::new(location);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::input(
                path,
                format!("external weights `{location}` are outside the model's directory"),
            ));
        }
        let weights = dir.join(relative);
        let (hash, _) = deltann_store::ids::sha256_file(&weights).map_err(|e| {
            Error::input(
                path,
                format!(
                    "cannot read the external weights {} it names: {e}",
                    weights.display()
                ),
            )
        })?;
        text.push_str(&format!("{location}\n{hash}\n"));
    }
    Ok(deltann_store::ids::sha256_hex(text.as_bytes()))
}

/// A model of one graph in the default ONNX domain, opset 13.
pub fn model_of(graph: pb::GraphProto) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// The graph-interface entry of a float32 tensor of fixed shape, for writing small ONNX graphs
/// (tests of engine failures, and rewritten copies of a model).
pub fn float_tensor_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            denotation: String::new(),
                            value: Some(Value::DimValue(*d)),
                        })
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

fn dims(value: &pb::ValueInfoProto) -> Vec<Dim> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(tensor)) =
        value.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Vec::new();
    };
    tensor
        .shape
        .as_ref()
        .map(|shape| {
            shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(n)) => Dim::Fixed(*n),
                    Some(Value::DimParam(s)) => Dim::Symbol(s.clone()),
                    None => Dim::Symbol(String::new()),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-node model (input + weight -> logits) whose weight lives in `weights`, or inline.
    fn model_with_weights(dir: &Path, weights: Option<&str>) -> std::path::PathBuf {
        use prost::Message;
        let mut weight = pb::TensorProto {
            name: "w".into(),
            dims: vec![1, 3],
            data_type: 1,
            ..Default::default()
        };
        match weights {
            Some(location) => {
                weight.data_location = Some(1);
                weight.external_data = vec![pb::StringStringEntryProto {
                    key: "location".into(),
                    value: location.into(),
                }];
            }
            None => weight.float_data = vec![1.0, 2.0, 3.0],
        }
        let model = model_of(pb::GraphProto {
            name: "g".into(),
            node: vec![pb::NodeProto {
                op_type: "Add".into(),
                input: vec!["input".into(), "w".into()],
                output: vec!["logits".into()],
                ..Default::default()
            }],
            initializer: vec![weight],
            input: vec![float_tensor_info("input", &[1, 3])],
            output: vec![float_tensor_info("logits", &[1, 3])],
            ..Default::default()
        });
        let path = dir.join("m.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn external_weights_are_part_of_the_model_identity() {
        let dir = tempfile::tempdir().unwrap();
        let inline = model_with_weights(dir.path(), None);
        let bytes = std::fs::read(&inline).unwrap();
        assert_eq!(
            inspect(&inline).unwrap().sha256,
            deltann_store::ids::sha256_hex(&bytes),
            "a self-contained model keeps the hash of its file"
        );

        let path = model_with_weights(dir.path(), Some("m.onnx.data"));
        let missing = inspect(&path).unwrap_err().to_string();
        assert!(missing.contains("m.onnx.data"), "{missing}");
        let floats = |v: [f32; 3]| v.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
        std::fs::write(dir.path().join("m.onnx.data"), floats([1.0, 2.0, 3.0])).unwrap();
        let first = inspect(&path).unwrap().sha256;
        // Re-exported weights, same graph file: another model.
        std::fs::write(dir.path().join("m.onnx.data"), floats([1.0, 2.0, 3.5])).unwrap();
        let second = inspect(&path).unwrap().sha256;
        assert_ne!(first, second);
        assert_ne!(
            first,
            deltann_store::ids::sha256_hex(&std::fs::read(&path).unwrap())
        );

        let escaping = model_with_weights(dir.path(), Some("../elsewhere.data"));
        let err = inspect(&escaping).unwrap_err().to_string();
        assert!(err.contains("outside the model's directory"), "{err}");
    }

    #[test]
    fn image_size_and_classes_from_dims() {
        let info = ModelInfo {
            sha256: String::new(),
            bytes: 0,
            input_name: "input".into(),
            input_dims: vec![
                Dim::Symbol("batch".into()),
                Dim::Fixed(3),
                Dim::Fixed(240),
                Dim::Fixed(240),
            ],
            output_name: "logits".into(),
            output_dims: vec![Dim::Symbol("batch".into()), Dim::Fixed(1000)],
        };
        assert_eq!(info.image_size(), Some(240));
        assert_eq!(info.num_classes(), Some(1000));
        assert_eq!(info.input_shape(), "batchx3x240x240");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.onnx");
        std::fs::write(&path, b"\x08\x07definitely not a protobuf graph \xff\xff").unwrap();
        let err = inspect(&path).unwrap_err().to_string();
        assert!(err.contains("bad.onnx"), "{err}");
        let err = inspect(&dir.path().join("missing.onnx"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing.onnx") && err.contains("does not exist"),
            "{err}"
        );
    }
}

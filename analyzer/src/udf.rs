//! SQL functions deltann adds to DataFusion's.
//!
//! `outputs.logits` holds each row's float32s as little-endian bytes (docs/STORE.md says why);
//! `logits_values(logits)` gives them back to SQL as `list<float32>`, so `logits_values(logits)[1]`
//! is class 0's score. `comparisons` names each pair by number; the scan adds its family and
//! cells with [`pair_names`].
//!
//! [`compare_outputs`] and [`max_abs_diff`] are the fold's measures as SQL functions, so the
//! derived tables can be built by a query on a Ballista cluster (see `derived::distributed`):
//! they call the fold's own code, so a comparison made by SQL is bit for bit the fold's.

use std::sync::Arc;

use std::collections::HashMap;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, DictionaryArray, Float32Builder, Float64Array,
    Float64Builder, ListBuilder, StructArray,
};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use arrow::datatypes::{Int32Type, UInt64Type};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// Registers deltann's SQL functions (all but the per-store [`pair_names`]) in `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udf(logits_values());
    ctx.register_udf(compare_outputs());
    ctx.register_udf(max_abs_diff());
}

/// `logits_values(binary) -> list<float32>`.
pub fn logits_values() -> ScalarUDF {
    create_udf(
        "logits_values",
        vec![DataType::Binary],
        DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let bytes = arrays
                .first()
                .and_then(|a| a.as_binary_opt::<i32>())
                .ok_or_else(|| {
                    DataFusionError::Execution("logits_values takes one binary argument".into())
                })?;
            let mut out = ListBuilder::new(Float32Builder::new());
            for i in 0..bytes.len() {
                if bytes.is_null(i) {
                    out.append(false);
                    continue;
                }
                let value = bytes.value(i);
                if value.len() % 4 != 0 {
                    return Err(DataFusionError::Execution(format!(
                        "logits_values: a value of {} bytes is not a row of float32s",
                        value.len()
                    )));
                }
                for b in value.chunks_exact(4) {
                    out.values()
                        .append_value(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                }
                out.append(true);
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }),
    )
}

/// `pair_<column>(pair) -> dictionary<int32, utf8>`: the pair's family or cell from `values`
/// (one per pair number, from the derived state), without copying a string per row.
pub fn pair_names(column: &str, values: ArrayRef) -> ScalarUDF {
    let name = format!("pair_{column}");
    let described = name.clone();
    create_udf(
        &name,
        vec![DataType::Int32],
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let keys = arrays
                .first()
                .and_then(|a| a.as_primitive_opt::<Int32Type>())
                .ok_or_else(|| {
                    DataFusionError::Execution(format!("{described} takes one int32 argument"))
                })?;
            let names = DictionaryArray::<Int32Type>::try_new(keys.clone(), values.clone())
                .map_err(|e| {
                    DataFusionError::Execution(format!(
                        "comparisons: a pair number that derived/state.json does not name ({e}); \
                         `deltann analyze --rebuild STORE` rebuilds the derived tables"
                    ))
                })?;
            Ok(ColumnarValue::Array(Arc::new(names)))
        }),
    )
}

/// The fields of [`compare_outputs`]'s result, in order.
pub const COMPARE_FIELDS: [&str; 7] = [
    "jaccard_top5",
    "rbo_top5",
    "kendall_tau",
    "max_abs_logit",
    "mean_abs_logit",
    "kl_ab",
    "kl_ba",
];

fn compare_fields() -> Fields {
    COMPARE_FIELDS
        .iter()
        .enumerate()
        .map(|(i, n)| Field::new(*n, DataType::Float64, i >= 2))
        .collect()
}

fn execution(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// One side of a comparison: its top-5 and logits, with the softmax of its logits computed once
/// per distinct logits in a batch of rows.
fn side(
    top5: &arrow::array::GenericListArray<i32>,
    logits: &BinaryArray,
    hash: &arrow::array::UInt64Array,
    i: usize,
) -> Result<crate::merge::Entry, DataFusionError> {
    let top = top5.value(i);
    let top = top
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| execution("compare_outputs: top5 is not a list of int32"))?;
    let logits: Option<ScalarBuffer<f32>> =
        deltann_store::outputs::logits(logits, i).map_err(execution)?;
    Ok(crate::merge::Entry::bare(crate::merge::Row {
        rep: 0,
        label: None,
        top5: top.values().to_vec(),
        top5_prob: Vec::new(),
        logits,
        logits_unread: false,
        hash: hash.value(i),
        latency: 0,
    }))
}

/// `compare_outputs(top5_a, top5_b, logits_a, logits_b, logits_hash_a, logits_hash_b) ->
/// struct<jaccard_top5, rbo_top5, kendall_tau, max_abs_logit, mean_abs_logit, kl_ab, kl_ba>`:
/// the measures of one `comparisons` row (see [`crate::derived::fold::compare_with`]), for two
/// cells' first repetitions of one image.
pub fn compare_outputs() -> ScalarUDF {
    let list = DataType::List(std::sync::Arc::new(Field::new_list_field(
        DataType::Int32,
        true,
    )));
    create_udf(
        "compare_outputs",
        vec![
            list.clone(),
            list,
            DataType::Binary,
            DataType::Binary,
            DataType::UInt64,
            DataType::UInt64,
        ],
        DataType::Struct(compare_fields()),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let bad = || {
                execution(
                    "compare_outputs takes (list<int32>, list<int32>, binary, binary, uint64, uint64)",
                )
            };
            let [ta, tb, la, lb, ha, hb] = arrays.as_slice() else {
                return Err(bad());
            };
            let (ta, tb) = (
                ta.as_list_opt::<i32>().ok_or_else(bad)?,
                tb.as_list_opt::<i32>().ok_or_else(bad)?,
            );
            let (la, lb) = (
                la.as_binary_opt::<i32>().ok_or_else(bad)?,
                lb.as_binary_opt::<i32>().ok_or_else(bad)?,
            );
            let (ha, hb) = (
                ha.as_primitive_opt::<UInt64Type>().ok_or_else(bad)?,
                hb.as_primitive_opt::<UInt64Type>().ok_or_else(bad)?,
            );
            let n = ta.len();
            let mut columns: Vec<Float64Builder> = (0..COMPARE_FIELDS.len())
                .map(|_| Float64Builder::with_capacity(n))
                .collect();
            // A row's softmax is shared by every pair that row is part of in this batch (the
            // fold shares it between the cells of one image the same way).
            let mut softmax: HashMap<u64, (Vec<u8>, Arc<crate::merge::Softmax>)> = HashMap::new();
            let mut soft = |entry: &mut crate::merge::Entry, bytes: &[u8]| {
                let Some(logits) = entry.row.logits.as_deref() else {
                    return;
                };
                let s = match softmax.get(&entry.row.hash) {
                    Some((b, s)) if b.as_slice() == bytes => s.clone(),
                    _ => {
                        let s = Arc::new(crate::merge::Softmax::of(logits));
                        softmax.insert(entry.row.hash, (bytes.to_vec(), s.clone()));
                        s
                    }
                };
                entry.soft = Some(s);
            };
            for i in 0..n {
                if ta.is_null(i) || tb.is_null(i) || ha.is_null(i) || hb.is_null(i) {
                    for c in &mut columns {
                        c.append_null();
                    }
                    continue;
                }
                let mut a = side(ta, la, ha, i)?;
                let mut b = side(tb, lb, hb, i)?;
                let distance = if a.same_logits(&b) {
                    // Bit-identical finite logits: every distance is exactly 0.
                    Some((0.0, 0.0, 0.0, 0.0))
                } else {
                    soft(&mut a, if la.is_null(i) { &[] } else { la.value(i) });
                    soft(&mut b, if lb.is_null(i) { &[] } else { lb.value(i) });
                    crate::derived::fold::distance(&a, &b)
                };
                let c = crate::derived::fold::compare_with(&a, &b, distance);
                columns[0].append_value(c.jaccard);
                columns[1].append_value(c.rbo);
                columns[2].append_option(c.kendall_tau);
                let d = c.logits;
                columns[3].append_option(d.map(|d| d.0));
                columns[4].append_option(d.map(|d| d.1));
                columns[5].append_option(d.map(|d| d.2));
                columns[6].append_option(d.map(|d| d.3));
            }
            let arrays: Vec<ArrayRef> = columns
                .into_iter()
                .map(|mut c| Arc::new(c.finish()) as ArrayRef)
                .collect();
            let out = StructArray::try_new(compare_fields(), arrays, None).map_err(execution)?;
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// `max_abs_diff(logits_a, logits_b) -> float64`: the largest |a - b| over two logit rows (null
/// when either has none or their lengths differ), for the run-to-run floor of `cell_images`.
pub fn max_abs_diff() -> ScalarUDF {
    create_udf(
        "max_abs_diff",
        vec![DataType::Binary, DataType::Binary],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let bad = || execution("max_abs_diff takes two binary arguments");
            let [a, b] = arrays.as_slice() else {
                return Err(bad());
            };
            let (a, b) = (
                a.as_binary_opt::<i32>().ok_or_else(bad)?,
                b.as_binary_opt::<i32>().ok_or_else(bad)?,
            );
            let mut out = Vec::with_capacity(a.len());
            for i in 0..a.len() {
                let la = deltann_store::outputs::logits(a, i).map_err(execution)?;
                let lb = deltann_store::outputs::logits(b, i).map_err(execution)?;
                out.push(match (la, lb) {
                    (Some(x), Some(y)) => crate::metrics::abs_diff(&x, &y).map(|d| d.0),
                    _ => None,
                });
            }
            Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
        }),
    )
}

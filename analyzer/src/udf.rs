//! SQL functions deltann adds to DataFusion's.
//!
//! `outputs.logits` holds each row's float32s as little-endian bytes (docs/STORE.md says why);
//! `logits_values(logits)` gives them back to SQL as `list<float32>`, so `logits_values(logits)[1]`
//! is class 0's score. `comparisons` names each pair by number; the scan adds its family and
//! cells with [`pair_names`].
//!
//! [`compare_cells`] and [`max_abs_diff`] are the fold's measures as SQL functions, so the
//! derived tables can be built by a query on a Ballista cluster (see `derived::distributed`):
//! they call the fold's own code, so a comparison made by SQL is bit for bit the fold's.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, DictionaryArray, Float32Builder, Float64Array,
    Float64Builder, Int32Builder, ListArray, ListBuilder, StringBuilder, StructArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::datatypes::{Int32Type, UInt64Type};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// Registers deltann's SQL functions (all but the per-store [`pair_names`]) in `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udf(logits_values());
    ctx.register_udf(compare_cells());
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

/// The fields of each element of [`compare_cells`]'s result, in order.
pub const PAIR_FIELDS: [(&str, DataType, bool); 13] = [
    ("cell_a", DataType::Utf8, false),
    ("cell_b", DataType::Utf8, false),
    ("label", DataType::Int32, true),
    ("top1_a", DataType::Int32, false),
    ("top1_b", DataType::Int32, false),
    ("identical", DataType::Boolean, false),
    ("jaccard_top5", DataType::Float64, false),
    ("rbo_top5", DataType::Float64, false),
    ("kendall_tau", DataType::Float64, true),
    ("max_abs_logit", DataType::Float64, true),
    ("mean_abs_logit", DataType::Float64, true),
    ("kl_ab", DataType::Float64, true),
    ("kl_ba", DataType::Float64, true),
];

fn pair_fields() -> Fields {
    PAIR_FIELDS
        .iter()
        .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
        .collect()
}

fn execution(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

/// `compare_cells(cell_ids, labels, top5s, logits, logits_hashes) -> list<struct<cell_a, cell_b,
/// label, top1_a, top1_b, identical, jaccard_top5, rbo_top5, kendall_tau, max_abs_logit,
/// mean_abs_logit, kl_ab, kl_ba>>`: given one image's first repetition in each cell of a model
/// family (five lists of equal length, as `array_agg` makes them), every pair of those cells
/// compared (`cell_a < cell_b`) as the fold compares them: the fold's own code, its softmax
/// shared between cells with bit-identical logits. One `comparisons` row per element.
pub fn compare_cells() -> ScalarUDF {
    let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
    create_udf(
        "compare_cells",
        vec![
            list(DataType::Utf8),
            list(DataType::Int32),
            list(list(DataType::Int32)),
            list(DataType::Binary),
            list(DataType::UInt64),
        ],
        list(DataType::Struct(pair_fields())),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            compare_cells_arrays(&arrays).map(|a| ColumnarValue::Array(Arc::new(a)))
        }),
    )
}

fn compare_cells_arrays(arrays: &[ArrayRef]) -> Result<ListArray, DataFusionError> {
    let bad = || {
        execution(
            "compare_cells takes (list<utf8>, list<int32>, list<list<int32>>, list<binary>, \
             list<uint64>)",
        )
    };
    let [ids, labels, top5s, logits, hashes] = arrays else {
        return Err(bad());
    };
    let lists = [ids, labels, top5s, logits, hashes]
        .map(|a| a.as_list_opt::<i32>().ok_or_else(bad))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let (ids, labels, top5s, logits, hashes) = (lists[0], lists[1], lists[2], lists[3], lists[4]);
    let mut cell_a = StringBuilder::new();
    let mut cell_b = StringBuilder::new();
    let mut label = Int32Builder::new();
    let (mut top1_a, mut top1_b) = (Int32Builder::new(), Int32Builder::new());
    let mut identical = BooleanBuilder::new();
    let mut measures: Vec<Float64Builder> = (0..7).map(|_| Float64Builder::new()).collect();
    let mut offsets = vec![0i32];
    for row in 0..ids.len() {
        let id = ids.value(row);
        let id = id.as_string_opt::<i32>().ok_or_else(bad)?;
        let label_of = labels.value(row);
        let label_of = label_of.as_primitive_opt::<Int32Type>().ok_or_else(bad)?;
        let top5 = top5s.value(row);
        let top5 = top5.as_list_opt::<i32>().ok_or_else(bad)?;
        let logit = logits.value(row);
        let logit = logit.as_binary_opt::<i32>().ok_or_else(bad)?;
        let hash = hashes.value(row);
        let hash = hash.as_primitive_opt::<UInt64Type>().ok_or_else(bad)?;
        let n = id.len();
        if [label_of.len(), top5.len(), logit.len(), hash.len()] != [n; 4] {
            return Err(execution("compare_cells: the five lists differ in length"));
        }
        // In cell-id order, as the fold compares them.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&x, &y| id.value(x).cmp(id.value(y)));
        let mut entries = Vec::with_capacity(n);
        for &i in &order {
            let top = top5.value(i);
            let top = top.as_primitive_opt::<Int32Type>().ok_or_else(bad)?;
            entries.push(crate::merge::Entry::bare(crate::merge::Row {
                rep: 0,
                label: (!label_of.is_null(i)).then(|| label_of.value(i)),
                top5: top.values().to_vec(),
                top5_prob: Vec::new(),
                logits: deltann_store::outputs::logits(logit, i).map_err(execution)?,
                logits_unread: false,
                hash: hash.value(i),
                latency: 0,
            }));
        }
        let labels_sorted: Vec<Option<i32>> = entries.iter().map(|e| e.row.label).collect();
        let (pairs, comparisons) = crate::derived::fold::compare_all(entries);
        for ((i, j), c) in pairs.into_iter().zip(comparisons) {
            cell_a.append_value(id.value(order[i]));
            cell_b.append_value(id.value(order[j]));
            label.append_option(labels_sorted[i].or(labels_sorted[j]));
            top1_a.append_value(c.top1_a);
            top1_b.append_value(c.top1_b);
            identical.append_value(c.identical);
            measures[0].append_value(c.jaccard);
            measures[1].append_value(c.rbo);
            measures[2].append_option(c.kendall_tau);
            let d = c.logits;
            measures[3].append_option(d.map(|d| d.0));
            measures[4].append_option(d.map(|d| d.1));
            measures[5].append_option(d.map(|d| d.2));
            measures[6].append_option(d.map(|d| d.3));
        }
        offsets.push(i32::try_from(top1_a.values_slice().len()).map_err(execution)?);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(cell_a.finish()),
        Arc::new(cell_b.finish()),
        Arc::new(label.finish()),
        Arc::new(top1_a.finish()),
        Arc::new(top1_b.finish()),
        Arc::new(identical.finish()),
    ];
    columns.extend(
        measures
            .iter_mut()
            .map(|m| Arc::new(m.finish()) as ArrayRef),
    );
    let values = StructArray::try_new(pair_fields(), columns, None).map_err(execution)?;
    ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Struct(pair_fields()), true)),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(values),
        None,
    )
    .map_err(execution)
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BinaryBuilder, UInt64Builder};

    fn entry(top5: &[i32], logits: &[f32], label: Option<i32>) -> crate::merge::Entry {
        crate::merge::Entry::new(crate::merge::Row {
            rep: 0,
            label,
            top5: top5.to_vec(),
            top5_prob: Vec::new(),
            logits: Some(ScalarBuffer::from(logits.to_vec())),
            logits_unread: false,
            hash: xxhash_rust::xxh3::xxh3_64(&deltann_store::outputs::logits_bytes(logits)),
            latency: 0,
        })
    }

    #[test]
    fn compare_cells_gives_the_folds_comparison_of_every_pair_in_cell_order() {
        let l1 = [1.0f32, 2.0, 0.5, -1.0];
        let l2 = [1.5f32, 1.0, 0.5, -1.0];
        // Out of cell-id order, one pair with bit-identical logits, one cell without a label.
        let cells = [
            ("c", [1, 0, 2, 3], &l2, Some(1)),
            ("a", [1, 0, 2, 3], &l1, Some(1)),
            ("b", [1, 0, 2, 3], &l1, None),
        ];
        let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
        let mut ids = ListBuilder::new(StringBuilder::new());
        let mut labels = ListBuilder::new(Int32Builder::new());
        let mut top5s = ListBuilder::new(ListBuilder::new(Int32Builder::new()));
        let mut logits = ListBuilder::new(BinaryBuilder::new());
        let mut hashes = ListBuilder::new(UInt64Builder::new());
        for (id, top5, l, label) in &cells {
            ids.values().append_value(id);
            labels.values().append_option(*label);
            top5s.values().values().append_slice(top5);
            top5s.values().append(true);
            let bytes = deltann_store::outputs::logits_bytes(l.as_slice());
            hashes
                .values()
                .append_value(xxhash_rust::xxh3::xxh3_64(&bytes));
            logits.values().append_value(bytes);
        }
        ids.append(true);
        labels.append(true);
        top5s.append(true);
        logits.append(true);
        hashes.append(true);
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(labels.finish()),
            Arc::new(top5s.finish()),
            Arc::new(logits.finish()),
            Arc::new(hashes.finish()),
        ];
        assert_eq!(
            arrays[3].data_type(),
            &DataType::List(item(DataType::Binary))
        );
        let out = compare_cells_arrays(&arrays).unwrap();
        assert_eq!(out.value_offsets(), &[0, 3]);
        let pairs = out.values().as_struct();
        let strings = |n: &str| pairs.column_by_name(n).unwrap().as_string::<i32>().clone();
        let (a, b) = (strings("cell_a"), strings("cell_b"));
        let got: Vec<(&str, &str)> = (0..3).map(|i| (a.value(i), b.value(i))).collect();
        assert_eq!(got, [("a", "b"), ("a", "c"), ("b", "c")]);
        let by_id = |id: &str| {
            let (_, top5, l, label) = cells.iter().find(|c| c.0 == id).unwrap();
            entry(top5, l.as_slice(), *label)
        };
        let f64s = |n: &str| {
            pairs
                .column_by_name(n)
                .unwrap()
                .as_primitive::<arrow::datatypes::Float64Type>()
                .clone()
        };
        for (i, (x, y)) in got.iter().enumerate() {
            let want = crate::derived::fold::compare(&by_id(x), &by_id(y));
            let d = want.logits.unwrap();
            assert_eq!(f64s("max_abs_logit").value(i), d.0, "{x} {y}");
            assert_eq!(f64s("mean_abs_logit").value(i), d.1, "{x} {y}");
            assert_eq!(f64s("kl_ab").value(i), d.2, "{x} {y}");
            assert_eq!(f64s("kl_ba").value(i), d.3, "{x} {y}");
            assert_eq!(f64s("rbo_top5").value(i), want.rbo);
        }
        // a and b share their logits; the label comes from a (b has none).
        assert_eq!(f64s("max_abs_logit").value(0), 0.0);
        assert!(f64s("kl_ab").value(1) > 0.0);
        let labels = pairs
            .column_by_name("label")
            .unwrap()
            .as_primitive::<Int32Type>();
        assert_eq!(labels.value(0), 1);
    }
}

//! SQL functions deltann adds to DataFusion's.
//!
//! `outputs.logits` holds each row's float32s as little-endian bytes (docs/STORE.md says why);
//! `logits_values(logits)` gives them back to SQL as `list<float32>`, so `logits_values(logits)[1]`
//! is class 0's score. `comparisons` names each pair by number; the scan adds its family and
//! cells with [`pair_names`].
//!
//! [`fold_image`], [`compare_cells`] and [`max_abs_diff`] are the fold's measures as SQL
//! functions, so the derived tables can be built by a query on a Ballista cluster (see
//! `derived::distributed`, which uses `fold_image`): they call the fold's own code, so a
//! comparison made by SQL is bit for bit the fold's.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, DictionaryArray, Float32Builder, Float64Array,
    Float64Builder, Int32Builder, ListArray, ListBuilder, StringBuilder, StructArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use arrow::datatypes::{Int32Type, UInt64Type};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};

/// Registers deltann's SQL functions (all but the per-store [`pair_names`]) in `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext) {
    ctx.register_udf(logits_values());
    ctx.register_udf(compare_cells());
    ctx.register_udf(max_abs_diff());
    ctx.register_udf(fold_image());
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
    let mut pairs = PairsBuilder::default();
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
        let mut names = Vec::with_capacity(n);
        let mut entries = Vec::with_capacity(n);
        for &i in &order {
            let top = top5.value(i);
            let top = top.as_primitive_opt::<Int32Type>().ok_or_else(bad)?;
            names.push(id.value(i));
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
        pairs.image(&names, entries);
        pairs.end_row()?;
    }
    pairs.finish()
}

/// The pairs of cells of one image after another, compared by the fold's code, as a
/// `list<struct<PAIR_FIELDS>>` with one list per image.
#[derive(Default)]
struct PairsBuilder {
    cell_a: StringBuilder,
    cell_b: StringBuilder,
    label: Int32Builder,
    top1_a: Int32Builder,
    top1_b: Int32Builder,
    identical: BooleanBuilder,
    measures: [Float64Builder; 7],
    offsets: Vec<i32>,
}

impl PairsBuilder {
    /// Compares every pair of `entries` (one image's first repetitions, named by `names`, in
    /// cell-id order) and appends them to the current list.
    fn image(&mut self, names: &[&str], entries: Vec<crate::merge::Entry>) {
        let labels: Vec<Option<i32>> = entries.iter().map(|e| e.row.label).collect();
        let (pairs, comparisons) = crate::derived::fold::compare_all(entries);
        for ((i, j), c) in pairs.into_iter().zip(comparisons) {
            self.cell_a.append_value(names[i]);
            self.cell_b.append_value(names[j]);
            self.label.append_option(labels[i].or(labels[j]));
            self.top1_a.append_value(c.top1_a);
            self.top1_b.append_value(c.top1_b);
            self.identical.append_value(c.identical);
            self.measures[0].append_value(c.jaccard);
            self.measures[1].append_value(c.rbo);
            self.measures[2].append_option(c.kendall_tau);
            let d = c.logits;
            self.measures[3].append_option(d.map(|d| d.0));
            self.measures[4].append_option(d.map(|d| d.1));
            self.measures[5].append_option(d.map(|d| d.2));
            self.measures[6].append_option(d.map(|d| d.3));
        }
    }

    /// Ends the current list (one per input row).
    fn end_row(&mut self) -> Result<(), DataFusionError> {
        end_list(&mut self.offsets, self.top1_a.values_slice().len())
    }

    fn finish(mut self) -> Result<ListArray, DataFusionError> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.cell_a.finish()),
            Arc::new(self.cell_b.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.top1_a.finish()),
            Arc::new(self.top1_b.finish()),
            Arc::new(self.identical.finish()),
        ];
        columns.extend(
            self.measures
                .iter_mut()
                .map(|m| Arc::new(m.finish()) as ArrayRef),
        );
        list_of_structs(pair_fields(), columns, self.offsets)
    }
}

/// Ends a list at `len` values (the first list starts at 0).
fn end_list(offsets: &mut Vec<i32>, len: usize) -> Result<(), DataFusionError> {
    if offsets.is_empty() {
        offsets.push(0);
    }
    offsets.push(i32::try_from(len).map_err(execution)?);
    Ok(())
}

/// `columns` as structs of `fields`, cut into lists at `offsets` (as [`end_list`] made them).
fn list_of_structs(
    fields: Fields,
    columns: Vec<ArrayRef>,
    mut offsets: Vec<i32>,
) -> Result<ListArray, DataFusionError> {
    if offsets.is_empty() {
        offsets.push(0);
    }
    let values = StructArray::try_new(fields.clone(), columns, None).map_err(execution)?;
    ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Struct(fields), true)),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(values),
        None,
    )
    .map_err(execution)
}

/// The fields of each element of [`fold_image`]'s `cells`: a `cell_images` row but for the
/// family and model (which the caller knows), and how many rows repeat a repetition.
fn cell_fields() -> Fields {
    let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
    Fields::from(vec![
        Field::new("cell_id", DataType::Utf8, false),
        Field::new("label", DataType::Int32, true),
        Field::new("top5", list(DataType::Int32), false),
        Field::new("top5_prob", list(DataType::Float32), false),
        Field::new("logits_hash", DataType::UInt64, false),
        Field::new("compared", DataType::Int64, false),
        Field::new("flips", DataType::Int64, false),
        Field::new("nondeterministic", DataType::Int64, false),
        Field::new("max_abs_logit", DataType::Float64, true),
        Field::new("latencies", list(DataType::Int64), false),
        Field::new("repeated", DataType::Int64, false),
    ])
}

/// [`fold_image`]'s result type: `struct<cells: list<struct<cell_fields>>, pairs:
/// list<struct<PAIR_FIELDS>>>`.
pub fn fold_image_type() -> DataType {
    let list =
        |f: Fields| DataType::List(Arc::new(Field::new_list_field(DataType::Struct(f), true)));
    DataType::Struct(Fields::from(vec![
        Field::new("cells", list(cell_fields()), false),
        Field::new("pairs", list(pair_fields()), false),
    ]))
}

/// `fold_image(array_agg(named_struct('cell_id', .., 'repetition', .., 'label', .., 'top5', ..,
/// 'top5_prob', .., 'logits', .., 'logits_hash', .., 'latency_ns', ..)))`: given every `outputs`
/// row of one image in the cells of one model family, what the fold derives from them: per cell
/// its first repetition, run-to-run floor and latencies (`merge::first_and_floor`), and every
/// pair of cells compared ([`compare_cells`]). One aggregation of the raw rows gives the whole
/// derived state of an image, so a cluster moves each row's logits once.
pub fn fold_image() -> ScalarUDF {
    ScalarUDF::new_from_impl(FoldImage {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FoldImage {
    signature: Signature,
}

impl ScalarUDFImpl for FoldImage {
    fn name(&self) -> &'static str {
        "fold_image"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(fold_image_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [rows] = arrays.as_slice() else {
            return Err(execution("fold_image takes one argument"));
        };
        fold_image_array(rows).map(|a| ColumnarValue::Array(Arc::new(a)))
    }
}

/// The fields `fold_image` reads from its rows, cast to the types it computes with (a cluster
/// may hand strings back as views).
struct ImageRows {
    cell_id: arrow::array::StringArray,
    repetition: arrow::array::Int32Array,
    label: arrow::array::Int32Array,
    top5: ListArray,
    top5_prob: ListArray,
    logits: arrow::array::BinaryArray,
    hash: arrow::array::UInt64Array,
    latency: arrow::array::Int64Array,
}

impl ImageRows {
    fn new(rows: &StructArray) -> Result<Self, DataFusionError> {
        let field = |n: &str, ty: &DataType| -> Result<ArrayRef, DataFusionError> {
            let c = rows
                .column_by_name(n)
                .ok_or_else(|| execution(format!("fold_image: its rows lack the field `{n}`")))?;
            Ok(arrow::compute::cast(c, ty)?)
        };
        let list = |t: DataType| DataType::List(Arc::new(Field::new_list_field(t, true)));
        Ok(Self {
            cell_id: field("cell_id", &DataType::Utf8)?.as_string().clone(),
            repetition: field("repetition", &DataType::Int32)?
                .as_primitive()
                .clone(),
            label: field("label", &DataType::Int32)?.as_primitive().clone(),
            top5: field("top5", &list(DataType::Int32))?.as_list().clone(),
            top5_prob: field("top5_prob", &list(DataType::Float32))?
                .as_list()
                .clone(),
            logits: field("logits", &DataType::Binary)?.as_binary().clone(),
            hash: field("logits_hash", &DataType::UInt64)?
                .as_primitive()
                .clone(),
            latency: field("latency_ns", &DataType::Int64)?
                .as_primitive()
                .clone(),
        })
    }

    fn row(&self, i: usize) -> Result<crate::merge::Row, DataFusionError> {
        let top5 = self.top5.value(i);
        let top5_prob = self.top5_prob.value(i);
        Ok(crate::merge::Row {
            rep: self.repetition.value(i),
            label: (!self.label.is_null(i)).then(|| self.label.value(i)),
            top5: top5.as_primitive::<Int32Type>().values().to_vec(),
            top5_prob: top5_prob
                .as_primitive::<arrow::datatypes::Float32Type>()
                .values()
                .to_vec(),
            logits: deltann_store::outputs::logits(&self.logits, i).map_err(execution)?,
            logits_unread: false,
            hash: self.hash.value(i),
            latency: self.latency.value(i),
        })
    }
}

fn fold_image_array(rows: &ArrayRef) -> Result<StructArray, DataFusionError> {
    let lists = rows.as_list_opt::<i32>().ok_or_else(|| {
        execution("fold_image takes a list of structs (array_agg(named_struct(..)))")
    })?;
    let values = lists.values().as_struct_opt().ok_or_else(|| {
        execution("fold_image takes a list of structs (array_agg(named_struct(..)))")
    })?;
    let rows = ImageRows::new(values)?;
    let mut cells = CellsBuilder::default();
    let mut pairs = PairsBuilder::default();
    let offsets = lists.value_offsets();
    for image in 0..lists.len() {
        let (from, to) = (offsets[image] as usize, offsets[image + 1] as usize);
        // Each cell's rows together, in cell-id order (as the fold compares them) and
        // repetition order.
        let mut order: Vec<usize> = (from..to).collect();
        order.sort_by(|&x, &y| {
            (rows.cell_id.value(x), rows.repetition.value(x))
                .cmp(&(rows.cell_id.value(y), rows.repetition.value(y)))
        });
        let mut names = Vec::new();
        let mut entries = Vec::new();
        for cell in order.chunk_by(|&x, &y| rows.cell_id.value(x) == rows.cell_id.value(y)) {
            let repeated = cell
                .windows(2)
                .filter(|w| rows.repetition.value(w[0]) == rows.repetition.value(w[1]))
                .count();
            let cell_rows = cell
                .iter()
                .map(|&i| rows.row(i))
                .collect::<Result<Vec<_>, _>>()?;
            let Some((first, floor, latencies)) = crate::merge::first_and_floor(cell_rows) else {
                continue;
            };
            let name = rows.cell_id.value(cell[0]);
            cells.push(name, &first, &floor, &latencies, repeated);
            names.push(name);
            entries.push(crate::merge::Entry::bare(first));
        }
        pairs.image(&names, entries);
        pairs.end_row()?;
        cells.end_row()?;
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(cells.finish()?), Arc::new(pairs.finish()?)];
    let DataType::Struct(fields) = fold_image_type() else {
        return Err(execution("fold_image: its type is not a struct"));
    };
    StructArray::try_new(fields, columns, None).map_err(execution)
}

/// [`fold_image`]'s `cells`, one list per image.
#[derive(Default)]
struct CellsBuilder {
    cell_id: StringBuilder,
    label: Int32Builder,
    top5: ListBuilder<Int32Builder>,
    top5_prob: ListBuilder<Float32Builder>,
    hash: arrow::array::UInt64Builder,
    counts: [arrow::array::Int64Builder; 3],
    max_abs_logit: Float64Builder,
    latencies: ListBuilder<arrow::array::Int64Builder>,
    repeated: arrow::array::Int64Builder,
    offsets: Vec<i32>,
}

impl CellsBuilder {
    fn push(
        &mut self,
        cell: &str,
        first: &crate::merge::Row,
        floor: &crate::merge::RepFloor,
        latencies: &[i64],
        repeated: usize,
    ) {
        self.cell_id.append_value(cell);
        self.label.append_option(first.label);
        self.top5.values().append_slice(&first.top5);
        self.top5.append(true);
        self.top5_prob.values().append_slice(&first.top5_prob);
        self.top5_prob.append(true);
        self.hash.append_value(first.hash);
        for (b, n) in
            self.counts
                .iter_mut()
                .zip([floor.compared, floor.flips, floor.nondeterministic])
        {
            b.append_value(i64::from(n));
        }
        self.max_abs_logit.append_option(floor.max_abs_logit);
        self.latencies.values().append_slice(latencies);
        self.latencies.append(true);
        self.repeated
            .append_value(i64::try_from(repeated).unwrap_or(i64::MAX));
    }

    fn end_row(&mut self) -> Result<(), DataFusionError> {
        end_list(&mut self.offsets, self.hash.values_slice().len())
    }

    fn finish(mut self) -> Result<ListArray, DataFusionError> {
        let [compared, flips, nondeterministic] = &mut self.counts;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.cell_id.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.top5.finish()),
            Arc::new(self.top5_prob.finish()),
            Arc::new(self.hash.finish()),
            Arc::new(compared.finish()),
            Arc::new(flips.finish()),
            Arc::new(nondeterministic.finish()),
            Arc::new(self.max_abs_logit.finish()),
            Arc::new(self.latencies.finish()),
            Arc::new(self.repeated.finish()),
        ];
        list_of_structs(cell_fields(), columns, self.offsets)
    }
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

    /// (cell, repetition, top5, logits, latency)
    type ImageRow<'a> = (&'a str, i32, [i32; 4], &'a [f32; 4], i64);

    #[test]
    fn fold_image_gives_each_cells_first_repetition_floor_and_pairs() {
        let l1 = [1.0f32, 2.0, 0.5, -1.0];
        let l2 = [1.5f32, 1.0, 0.5, -1.0];
        let l3 = [3.0f32, 1.0, 0.5, -1.0];
        // (cell, repetition, top5, logits, latency): out of order; b's second repetition flips
        // and differs; a's repeats bit for bit; c has one repetition.
        let rows = [
            ("b", 1, [0, 1, 2, 3], &l3, 40),
            ("c", 0, [1, 0, 2, 3], &l1, 50),
            ("a", 1, [1, 0, 2, 3], &l1, 20),
            ("b", 0, [1, 0, 2, 3], &l2, 30),
            ("a", 0, [1, 0, 2, 3], &l1, 10),
        ];
        let image = |rows: &[ImageRow<'_>]| -> ArrayRef {
            let mut id = StringBuilder::new();
            let mut rep = Int32Builder::new();
            let mut label = Int32Builder::new();
            let mut top5 = ListBuilder::new(Int32Builder::new());
            let mut prob = ListBuilder::new(Float32Builder::new());
            let mut logits = BinaryBuilder::new();
            let mut hash = UInt64Builder::new();
            let mut latency = arrow::array::Int64Builder::new();
            for (c, r, t, l, ns) in rows {
                id.append_value(c);
                rep.append_value(*r);
                label.append_value(1);
                top5.values().append_slice(t);
                top5.append(true);
                prob.values().append_slice(&[0.5, 0.2, 0.1, 0.1]);
                prob.append(true);
                let bytes = deltann_store::outputs::logits_bytes(l.as_slice());
                hash.append_value(xxhash_rust::xxh3::xxh3_64(&bytes));
                logits.append_value(bytes);
                latency.append_value(*ns);
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(id.finish()),
                Arc::new(rep.finish()),
                Arc::new(label.finish()),
                Arc::new(top5.finish()),
                Arc::new(prob.finish()),
                Arc::new(logits.finish()),
                Arc::new(hash.finish()),
                Arc::new(latency.finish()),
            ];
            let fields: Vec<Field> = [
                "cell_id",
                "repetition",
                "label",
                "top5",
                "top5_prob",
                "logits",
                "logits_hash",
                "latency_ns",
            ]
            .iter()
            .zip(&columns)
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
            .collect();
            let values = StructArray::try_new(fields.clone().into(), columns, None).unwrap();
            let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
            let offsets = OffsetBuffer::from_lengths([rows.len()]);
            Arc::new(ListArray::try_new(field, offsets, Arc::new(values), None).unwrap())
        };
        let out = fold_image_array(&image(&rows)).unwrap();
        assert_eq!(out.data_type(), &fold_image_type());
        let cells = out.column_by_name("cells").unwrap().as_list::<i32>();
        assert_eq!(cells.value_offsets(), &[0, 3]);
        let cells = cells.values().as_struct();
        let column = |n: &str| cells.column_by_name(n).unwrap().clone();
        let ids = column("cell_id");
        let ids: Vec<&str> = ids.as_string::<i32>().iter().flatten().collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let int64s = |n: &str| -> Vec<i64> {
            column(n)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(int64s("compared"), [1, 1, 0]);
        assert_eq!(int64s("flips"), [0, 1, 0]);
        assert_eq!(int64s("nondeterministic"), [0, 1, 0]);
        assert_eq!(int64s("repeated"), [0, 0, 0]);
        let max = column("max_abs_logit");
        let max = max.as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(max.value(0), 0.0);
        assert_eq!(max.value(1), 1.5);
        assert!(max.is_null(2));
        let latencies = column("latencies");
        let latencies = latencies.as_list::<i32>();
        let of = |i: usize| {
            latencies
                .value(i)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(
            (of(0), of(1), of(2)),
            (vec![10, 20], vec![30, 40], vec![50])
        );
        let top1 = column("top5");
        assert_eq!(
            top1.as_list::<i32>()
                .value(1)
                .as_primitive::<Int32Type>()
                .value(0),
            1,
            "b's first repetition, not its second"
        );

        // The pairs are compare_cells' of the first repetitions.
        let pairs = out.column_by_name("pairs").unwrap().as_list::<i32>();
        assert_eq!(pairs.value_offsets(), &[0, 3]);
        let pairs = pairs.values().as_struct();
        let want = |a: &[f32; 4], b: &[f32; 4]| {
            crate::derived::fold::compare(
                &entry(&[1, 0, 2, 3], a, Some(1)),
                &entry(&[1, 0, 2, 3], b, Some(1)),
            )
        };
        let max = pairs
            .column_by_name("max_abs_logit")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        let kl = pairs
            .column_by_name("kl_ab")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        for (i, (a, b)) in [(&l1, &l2), (&l1, &l1), (&l2, &l1)].iter().enumerate() {
            let d = want(a, b).logits.unwrap();
            assert_eq!((max.value(i), kl.value(i)), (d.0, d.2), "pair {i}");
        }

        // A repetition held twice is counted, for the caller to refuse.
        let mut twice = rows.to_vec();
        twice.push(("c", 0, [1, 0, 2, 3], &l1, 60));
        let out = fold_image_array(&image(&twice)).unwrap();
        let cells = out.column_by_name("cells").unwrap().as_list::<i32>();
        let repeated = cells
            .values()
            .as_struct()
            .column_by_name("repeated")
            .unwrap()
            .clone();
        let repeated = repeated.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(repeated.values().to_vec(), [0, 0, 1]);
    }
}

//! SQL functions deltann adds to DataFusion's.
//!
//! `outputs.logits` holds each row's float32s as little-endian bytes (docs/STORE.md says why);
//! `logits_values(logits)` gives them back to SQL as `list<float32>`, so `logits_values(logits)[1]`
//! is class 0's score. `comparisons` names each pair by number; the scan adds its family and
//! cells with [`pair_names`].

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, DictionaryArray, Float32Builder, ListBuilder};
use arrow::datatypes::Int32Type;
use arrow::datatypes::{DataType, Field};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

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

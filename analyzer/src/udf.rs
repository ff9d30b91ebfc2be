//! SQL functions deltann adds to DataFusion's.
//!
//! `outputs.logits` holds each row's float32s as little-endian bytes (docs/STORE.md says why);
//! `logits_values(logits)` gives them back to SQL as `list<float32>`, so `logits_values(logits)[1]`
//! is class 0's score.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Builder, ListBuilder};
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

//! The one definition of an `outputs` row: how an engine's raw output row becomes its top-5,
//! probabilities and hash, and a typed builder for the table's columns.
//!
//! Engines return only scores; the store derives everything else the same way for every engine,
//! so a difference in top-5 can only come from a difference in scores. The collector's sink and
//! `deltann synth` both build rows through here, so a synthetic store cannot drift from what the
//! collector writes.
//!
//! The logits column holds each row's float32s as little-endian bytes in one binary value
//! ([`logits_bytes`] writes them, [`logits`] reads them back without copying): the hash is of
//! exactly those bytes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, BinaryArray, BinaryBuilder, Float32Builder, Int32Builder,
    Int64Builder, ListBuilder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::buffer::ScalarBuffer;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};
use crate::layout::Table;

/// How many ranked classes are kept per output row.
pub const TOP_K: usize = 5;

/// What a model's output row holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scores {
    /// Raw scores: softmax gives the probabilities.
    #[default]
    Logits,
    /// Already probabilities: used as they are.
    Probabilities,
}

/// The ranked summary of one output row.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// Class indices, best first (ties broken by lower index).
    pub top: Vec<i32>,
    /// Their probabilities.
    pub prob: Vec<f32>,
    /// 64-bit xxh3 of the row's little-endian float32 bytes: equal hashes mean bit-identical rows.
    pub hash: u64,
}

/// Ranks one output row.
pub fn rank(values: &[f32], scores: Scores) -> Ranked {
    let probs = match scores {
        Scores::Logits => softmax(values),
        Scores::Probabilities => values.to_vec(),
    };
    let mut order: Vec<usize> = (0..values.len()).collect();
    // total_cmp gives NaN a definite place, so a broken engine still yields a stable ranking.
    let k = TOP_K.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            values[b].total_cmp(&values[a]).then(a.cmp(&b))
        });
        order.truncate(k);
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    }
    Ranked {
        top: order
            .iter()
            .map(|&i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect(),
        prob: order.iter().map(|&i| probs[i]).collect(),
        hash: hash_logits(values),
    }
}

/// The logits hash (see [`Ranked::hash`]).
pub fn hash_logits(values: &[f32]) -> u64 {
    xxh3_64(&logits_bytes(values))
}

/// A logits row as the `logits` column stores it: each float32's little-endian bytes in order.
pub fn logits_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// Row `i` of a `logits` column as floats (`None` for a null row, which a sweep that keeps top-5
/// only writes). On a little-endian machine the floats share the column's buffer whenever it is
/// 4-byte aligned (Arrow's are), so reading a million rows copies nothing.
///
/// # Errors
/// A value whose length is not a multiple of 4 bytes is not a logits row.
pub fn logits(column: &BinaryArray, i: usize) -> Result<Option<ScalarBuffer<f32>>> {
    if column.is_null(i) {
        return Ok(None);
    }
    let offsets = column.value_offsets();
    let (start, end) = (offsets[i], offsets[i + 1]);
    let (start, len) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(end - start).unwrap_or(0),
    );
    if len % 4 != 0 {
        return Err(Error::Invalid(format!(
            "a logits value of {len} bytes is not a row of float32s"
        )));
    }
    let bytes = column.values().slice_with_length(start, len);
    if cfg!(target_endian = "little") && bytes.as_ptr().align_offset(4) == 0 {
        return Ok(Some(ScalarBuffer::new(bytes, 0, len / 4)));
    }
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Some(ScalarBuffer::from(floats)))
}

/// Numerically stable softmax, accumulated in f64.
pub fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = values
        .iter()
        .map(|&v| (f64::from(v) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// One `outputs` row, as its producer knows it.
#[derive(Clone, Copy, Debug)]
pub struct OutputRow<'a> {
    pub cell_id: &'a str,
    pub image_id: &'a str,
    pub image_sha256: &'a str,
    pub label: Option<i32>,
    pub repetition: i32,
    pub batch_index: i64,
    pub batch_rows: i32,
    pub ranked: &'a Ranked,
    /// The whole row, or `None` when the sweep keeps top-5 only.
    pub logits: Option<&'a [f32]>,
    pub latency_ns: i64,
    pub batch_latency_ns: i64,
}

/// Column builders for `outputs` rows, in the table's schema.
#[derive(Default)]
pub struct OutputsBuilder {
    cell_id: StringBuilder,
    image_id: StringBuilder,
    image_sha256: StringBuilder,
    label: Int32Builder,
    repetition: Int32Builder,
    batch_index: Int64Builder,
    batch_rows: Int32Builder,
    top1: Int32Builder,
    top1_prob: Float32Builder,
    top5: ListBuilder<Int32Builder>,
    top5_prob: ListBuilder<Float32Builder>,
    logits: BinaryBuilder,
    logits_hash: UInt64Builder,
    latency_ns: Int64Builder,
    batch_latency_ns: Int64Builder,
}

impl OutputsBuilder {
    /// Rows pushed since the last [`OutputsBuilder::finish`].
    pub fn len(&self) -> usize {
        self.cell_id.len()
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one row.
    pub fn push(&mut self, r: &OutputRow<'_>) {
        self.cell_id.append_value(r.cell_id);
        self.image_id.append_value(r.image_id);
        self.image_sha256.append_value(r.image_sha256);
        self.label.append_option(r.label);
        self.repetition.append_value(r.repetition);
        self.batch_index.append_value(r.batch_index);
        self.batch_rows.append_value(r.batch_rows);
        self.top1
            .append_value(r.ranked.top.first().copied().unwrap_or(-1));
        self.top1_prob
            .append_value(r.ranked.prob.first().copied().unwrap_or(f32::NAN));
        self.top5.values().append_slice(&r.ranked.top);
        self.top5.append(true);
        self.top5_prob.values().append_slice(&r.ranked.prob);
        self.top5_prob.append(true);
        match r.logits {
            Some(values) => self.logits.append_value(logits_bytes(values)),
            None => self.logits.append_null(),
        }
        self.logits_hash.append_value(r.ranked.hash);
        self.latency_ns.append_value(r.latency_ns);
        self.batch_latency_ns.append_value(r.batch_latency_ns);
    }

    /// The pending rows as one batch of the `outputs` schema; the builder is then empty.
    ///
    /// # Errors
    /// Fails only if the columns disagree with the schema (a bug).
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.cell_id.finish()),
            Arc::new(self.image_id.finish()),
            Arc::new(self.image_sha256.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.repetition.finish()),
            Arc::new(self.batch_index.finish()),
            Arc::new(self.batch_rows.finish()),
            Arc::new(self.top1.finish()),
            Arc::new(self.top1_prob.finish()),
            Arc::new(self.top5.finish()),
            Arc::new(self.top5_prob.finish()),
            Arc::new(self.logits.finish()),
            Arc::new(self.logits_hash.finish()),
            Arc::new(self.latency_ns.finish()),
            Arc::new(self.batch_latency_ns.finish()),
        ];
        RecordBatch::try_new(crate::schema::schema(Table::Outputs), columns)
            .map_err(|e| Error::Invalid(format!("outputs rows do not fit the schema: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_best_first_with_index_tiebreak() {
        let r = rank(&[0.0, 3.0, 1.0, 3.0, -1.0, 2.0, 0.5], Scores::Logits);
        assert_eq!(r.top, vec![1, 3, 5, 2, 6]);
        assert!((r.prob[0] - r.prob[1]).abs() < 1e-7);
        assert!(r.prob.windows(2).all(|w| w[0] >= w[1]));
        let total: f32 = softmax(&[0.0, 3.0, 1.0]).iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fewer_classes_than_k() {
        let r = rank(&[0.2, 0.8], Scores::Probabilities);
        assert_eq!(r.top, vec![1, 0]);
        assert_eq!(r.prob, vec![0.8, 0.2]);
    }

    #[test]
    fn hash_sees_every_bit() {
        let a = [1.0f32, 2.0];
        let b = [1.0f32, f32::from_bits(2.0f32.to_bits() + 1)];
        assert_ne!(hash_logits(&a), hash_logits(&b));
        assert_eq!(hash_logits(&a), hash_logits(&[1.0, 2.0]));
        // -0.0 and 0.0 compare equal but are different bytes: the hash tells them apart.
        assert_ne!(hash_logits(&[0.0]), hash_logits(&[-0.0]));
    }

    #[test]
    fn softmax_is_stable_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
    }

    #[test]
    fn builder_fills_the_outputs_schema() {
        let ranked = rank(&[0.1, 0.9, 0.3], Scores::Logits);
        let mut b = OutputsBuilder::default();
        for (rep, logits) in [(0, Some(&[0.1f32, 0.9, 0.3][..])), (1, None)] {
            b.push(&OutputRow {
                cell_id: "c",
                image_id: "i",
                image_sha256: "s",
                label: Some(1),
                repetition: rep,
                batch_index: 0,
                batch_rows: 1,
                ranked: &ranked,
                logits,
                latency_ns: 10,
                batch_latency_ns: 10,
            });
        }
        assert_eq!(b.len(), 2);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert!(b.is_empty());
        let logits_column = batch.column_by_name("logits").unwrap();
        assert_eq!(logits_column.null_count(), 1);
        let column = logits_column
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap();
        let first = logits(column, 0).unwrap().unwrap();
        assert_eq!(&first[..], &[0.1f32, 0.9, 0.3]);
        assert_eq!(logits(column, 1).unwrap(), None);
        assert_eq!(xxh3_64(column.value(0)), ranked.hash);
    }

    #[test]
    fn logits_read_back_when_unaligned_and_refuse_torn_values() {
        // A value that starts at an odd offset cannot be viewed as floats: it is copied.
        let mut b = BinaryBuilder::new();
        b.append_value([7u8]);
        b.append_value(logits_bytes(&[1.5, -2.0]));
        b.append_value([1u8, 2, 3]);
        let column = b.finish();
        assert_eq!(&logits(&column, 1).unwrap().unwrap()[..], &[1.5f32, -2.0]);
        assert!(logits(&column, 2).is_err());
    }
}

//! From an engine's raw output row to what the store keeps about it.
//!
//! Engines return only logits; deltann derives everything else itself, the same way for every
//! engine, so that a difference in top-5 can only come from a difference in logits.

use xxhash_rust::xxh3::xxh3_64;

use crate::sweep::OutputKind;

/// How many ranked classes are kept per output row.
pub const TOP_K: usize = 5;

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
pub fn rank(values: &[f32], kind: OutputKind) -> Ranked {
    let probs = match kind {
        OutputKind::Logits => softmax(values),
        OutputKind::Probabilities => values.to_vec(),
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
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    xxh3_64(&bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_best_first_with_index_tiebreak() {
        let r = rank(&[0.0, 3.0, 1.0, 3.0, -1.0, 2.0, 0.5], OutputKind::Logits);
        assert_eq!(r.top, vec![1, 3, 5, 2, 6]);
        assert!((r.prob[0] - r.prob[1]).abs() < 1e-7);
        assert!(r.prob.windows(2).all(|w| w[0] >= w[1]));
        let total: f32 = softmax(&[0.0, 3.0, 1.0]).iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fewer_classes_than_k() {
        let r = rank(&[0.2, 0.8], OutputKind::Probabilities);
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
}

//! The one definition of a latency quantile, shared by everything that reports one: the
//! collector's `cells` table, the analyzer's report and TUI, and `deltann synth`. It is numpy's
//! default ("type 7": linear interpolation between the nearest ranks), which for the median is
//! also SQL's `median()`, so `cells.latency_p50_ms`, a report's p50 and a saved query's median
//! of `outputs.latency_ns` are the same number.

/// Quantile `q` in [0, 1] of sorted data, interpolating linearly between the nearest ranks.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    // Saturating float-to-int: pos is within 0..len.
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0, 0.5, 0.9, 1]) == [1, 2.5, 3.7, 4]
        let data = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&data, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&data, 0.5), Some(2.5));
        assert!((quantile_sorted(&data, 0.9).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(quantile_sorted(&data, 1.0), Some(4.0));
        assert_eq!(quantile_sorted(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile_sorted(&[], 0.5), None);
    }
}

//! The timing summary written with each cell: quantiles of per-image latency and throughput.
//!
//! These are descriptive numbers for the `cells` table and the end-of-run summary; the analyzer
//! computes intervals and contrasts from the full per-image latencies in `outputs`.

/// Latency summary of one cell, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    /// Images per second of engine time: rows / sum of per-row latency shares.
    pub throughput_ips: f64,
}

/// Quantile `q` in [0, 1] of sorted data, interpolating linearly between the nearest ranks
/// (numpy's default, "type 7").
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Summarises per-image latencies given in nanoseconds.
pub fn summarize(latencies_ns: &[i64]) -> Option<LatencySummary> {
    if latencies_ns.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = latencies_ns.iter().map(|&n| n as f64 / 1e6).collect();
    ms.sort_by(f64::total_cmp);
    let total_ms: f64 = ms.iter().sum();
    let q = |p| quantile_sorted(&ms, p).unwrap_or(f64::NAN);
    Some(LatencySummary {
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        mean_ms: total_ms / ms.len() as f64,
        throughput_ips: if total_ms > 0.0 {
            ms.len() as f64 / (total_ms / 1e3)
        } else {
            f64::NAN
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0.5, 0.9]) == [2.5, 3.7]
        let data = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&data, 0.5), Some(2.5));
        assert!((quantile_sorted(&data, 0.9).unwrap() - 3.7).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(quantile_sorted(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn summary_of_latencies() {
        let s = summarize(&[2_000_000, 1_000_000, 3_000_000]).unwrap();
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.mean_ms, 2.0);
        assert!((s.throughput_ips - 500.0).abs() < 1e-9);
        assert!(summarize(&[]).is_none());
    }
}

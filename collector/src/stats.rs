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

pub use deltann_store::stats::quantile_sorted;

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
    fn summary_of_latencies() {
        let s = summarize(&[2_000_000, 1_000_000, 3_000_000]).unwrap();
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.mean_ms, 2.0);
        assert!((s.throughput_ips - 500.0).abs() < 1e-9);
        assert!(summarize(&[]).is_none());
    }
}

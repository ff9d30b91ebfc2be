//! Bootstrap intervals for latency quantiles, computed exactly.
//!
//! The percentile bootstrap resamples n latencies with replacement and takes the q-quantile of
//! each resample. For the empirical quantile `x_(k)` (the k-th smallest, k = ceil(q n)) that
//! distribution is known in closed form: a resample's k-th smallest value is at most `x_(j)`
//! exactly when at least k of its n draws are, and the number of such draws is Binomial(n, j/n).
//! So the bootstrap interval is read off the binomial distribution instead of being estimated
//! from random resamples: the same interval the resampling converges to, without its Monte Carlo
//! noise and at a fraction of the cost. A ratio of two quantiles (a contrast between cells) has no
//! such closed form; it is bootstrapped by drawing each side's order statistic from its exact
//! distribution.

use serde::{Deserialize, Serialize};

/// A quantile with its 95% bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

/// k = ceil(q n), clamped to 1..=n (1-based rank of the empirical quantile).
fn rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n)
}

/// ln(i!) for i in 0..=n.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let mut acc = 0.0;
    out.push(0.0);
    for i in 1..=n {
        acc += (i as f64).ln();
        out.push(acc);
    }
    out
}

/// P(Binomial(n, p) >= k), summing the probability mass where it is not negligible.
fn binomial_tail(n: usize, p: f64, k: usize, lf: &[f64]) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let mean = n as f64 * p;
    let sd = (mean * (1.0 - p)).sqrt();
    let lo = k.max((mean - 12.0 * sd - 2.0).max(0.0) as usize);
    let hi = n.min((mean + 12.0 * sd + 2.0) as usize);
    if lo > hi {
        return if k as f64 > mean { 0.0 } else { 1.0 };
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    (lo..=hi)
        .map(|i| (lf[n] - lf[i] - lf[n - i] + i as f64 * lp + (n - i) as f64 * lq).exp())
        .sum::<f64>()
        .min(1.0)
}

/// The bootstrap distribution of the empirical q-quantile's rank: `(j, P(rank <= j))` for the
/// 1-based ranks j that carry probability, in increasing order.
fn rank_distribution(n: usize, q: f64) -> std::sync::Arc<Vec<(usize, f64)>> {
    // A pure function of (n, q), and a sweep's cells mostly share n (the same images): the
    // report computes each distinct one once (BENCHMARKS.md: 7.8 s of a 1M-row report before).
    type Memo = std::sync::Mutex<
        std::collections::HashMap<(usize, u64), std::sync::Arc<Vec<(usize, f64)>>>,
    >;
    static MEMO: std::sync::OnceLock<Memo> = std::sync::OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    let key = (n, q.to_bits());
    if let Some(d) = memo.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return d;
    }
    let d = std::sync::Arc::new(rank_distribution_uncached(n, q));
    if let Ok(mut m) = memo.lock() {
        m.insert(key, d.clone());
    }
    d
}

fn rank_distribution_uncached(n: usize, q: f64) -> Vec<(usize, f64)> {
    let k = rank(n, q);
    let lf = ln_factorials(n);
    let spread = (n as f64).sqrt() * 6.0 + 10.0;
    let start = (k as f64 - spread).max(1.0) as usize;
    let end = ((k as f64 + spread) as usize).min(n);
    let mut out = Vec::with_capacity(end - start + 1);
    for j in start..=end {
        out.push((j, binomial_tail(n, j as f64 / n as f64, k, &lf)));
    }
    if let Some(last) = out.last_mut() {
        last.1 = last.1.max(if end == n { 1.0 } else { last.1 });
    }
    out
}

/// The q-quantile of sorted data (the store's one definition, see
/// [`deltann_store::stats::quantile_sorted`]) with its exact 95% percentile-bootstrap interval
/// (the bootstrap distribution of the order statistic of rank ceil(q n)).
pub fn quantile(sorted: &[f64], q: f64) -> Option<Estimate> {
    let n = sorted.len();
    let value = deltann_store::stats::quantile_sorted(sorted, q)?;
    let dist = rank_distribution(n, q);
    let at = |level: f64| {
        dist.iter()
            .find(|(_, cdf)| *cdf >= level)
            .map_or(n, |(j, _)| *j)
    };
    Some(Estimate {
        value,
        lo: sorted[at(0.025) - 1].min(value),
        hi: sorted[at(0.975) - 1].max(value),
    })
}

/// Relative change of the q-quantile from `a` to `b` (b / a - 1) with a 95% bootstrap interval,
/// drawing each side's order statistic from its exact bootstrap distribution.
pub fn relative_change(a: &[f64], b: &[f64], q: f64, draws: usize, seed: u64) -> Option<Estimate> {
    let (ea, eb) = (quantile(a, q)?, quantile(b, q)?);
    if ea.value <= 0.0 {
        return None;
    }
    let (da, db) = (rank_distribution(a.len(), q), rank_distribution(b.len(), q));
    let mut rng = fastrand::Rng::with_seed(seed);
    let sample = |dist: &[(usize, f64)], data: &[f64], rng: &mut fastrand::Rng| {
        let u = rng.f64();
        // The CDF is increasing: binary search (2000 draws per contrast, hundreds of contrasts).
        let at = dist.partition_point(|(_, cdf)| *cdf < u);
        let j = dist.get(at).map_or(data.len(), |(j, _)| *j);
        data[j - 1]
    };
    let mut ratios: Vec<f64> = (0..draws)
        .map(|_| {
            let x = sample(&da[..], a, &mut rng);
            let y = sample(&db[..], b, &mut rng);
            if x > 0.0 { y / x - 1.0 } else { f64::NAN }
        })
        .filter(|r| r.is_finite())
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let pick =
        |p: f64| ratios[((p * (ratios.len() - 1) as f64).round() as usize).min(ratios.len() - 1)];
    Some(Estimate {
        value: eb.value / ea.value - 1.0,
        lo: pick(0.025),
        hi: pick(0.975),
    })
}

/// Robust relative spread: 1.4826 x median absolute deviation / median (0 for empty data).
pub fn relative_dispersion(sorted: &[f64]) -> f64 {
    let Some(med) = quantile(sorted, 0.5).map(|e| e.value) else {
        return 0.0;
    };
    if med <= 0.0 {
        return 0.0;
    }
    let mut dev: Vec<f64> = sorted.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mad = quantile(&dev, 0.5).map_or(0.0, |e| e.value);
    1.4826 * mad / med
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_interval_matches_resampling() {
        // A skewed sample; the exact interval must agree with a brute-force bootstrap.
        let mut data: Vec<f64> = (0..200)
            .map(|i| 1.0 + (i as f64 * 0.37).sin().abs() * (i % 7) as f64)
            .collect();
        data.sort_by(f64::total_cmp);
        let exact = quantile(&data, 0.5).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut meds: Vec<f64> = (0..20_000)
            .map(|_| {
                let mut s: Vec<f64> = (0..data.len())
                    .map(|_| data[rng.usize(..data.len())])
                    .collect();
                s.sort_by(f64::total_cmp);
                s[rank(s.len(), 0.5) - 1]
            })
            .collect();
        meds.sort_by(f64::total_cmp);
        let lo = meds[(0.025 * meds.len() as f64) as usize];
        let hi = meds[(0.975 * meds.len() as f64) as usize];
        // The point estimate interpolates (numpy's default); the interval is of order statistics.
        assert_eq!(exact.value, (data[99] + data[100]) / 2.0);
        // Resampling has noise of about one rank; allow one neighbouring order statistic.
        let near = |x: f64, y: f64| {
            data.iter()
                .position(|v| *v == x)
                .unwrap()
                .abs_diff(data.iter().position(|v| *v == y).unwrap())
                <= 2
        };
        assert!(
            near(exact.lo, lo) && near(exact.hi, hi),
            "{exact:?} vs ({lo}, {hi})"
        );
        assert!(exact.lo <= exact.value && exact.value <= exact.hi);
    }

    #[test]
    fn tails_and_small_samples() {
        assert!(quantile(&[], 0.5).is_none());
        let one = quantile(&[3.0], 0.99).unwrap();
        assert_eq!((one.value, one.lo, one.hi), (3.0, 3.0, 3.0));
        let data: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p99 = quantile(&data, 0.99).unwrap();
        // numpy.quantile(range(1, 1001), 0.99) == 990.01
        assert!((p99.value - 990.01).abs() < 1e-9);
        assert!(p99.lo < 990.0 && p99.hi > 990.01 && p99.hi <= 1000.0);
    }

    #[test]
    fn relative_change_sees_a_real_shift_and_not_a_null_one() {
        let a: Vec<f64> = (0..500).map(|i| 10.0 + (i % 10) as f64 * 0.1).collect();
        let mut a_sorted = a.clone();
        a_sorted.sort_by(f64::total_cmp);
        let b: Vec<f64> = a_sorted.iter().map(|x| x * 1.2).collect();
        let up = relative_change(&a_sorted, &b, 0.5, 2000, 1).unwrap();
        assert!((up.value - 0.2).abs() < 1e-9 && up.lo > 0.1, "{up:?}");
        let same = relative_change(&a_sorted, &a_sorted, 0.5, 2000, 1).unwrap();
        assert!(same.lo <= 0.0 && same.hi >= 0.0, "{same:?}");
    }

    #[test]
    fn dispersion_of_a_constant_is_zero() {
        assert_eq!(relative_dispersion(&[2.0; 10]), 0.0);
        let spread = relative_dispersion(&[1.0, 2.0, 3.0]);
        assert!((spread - 1.4826 * 1.0 / 2.0).abs() < 1e-12);
    }
}

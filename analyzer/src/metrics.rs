//! The per-image comparison measures between two cells, and the interval for a flip rate.
//!
//! Each function compares what two environments produced for one image. They are pure and small
//! so that each can be checked against values computed by hand (see the tests), and so that the
//! fold of the derived tables ([`crate::derived::fold`]) can call them millions of times.

/// Wilson score interval for a proportion `k / n` at 95% (z = 1.96): unlike the normal
/// approximation it stays inside [0, 1] and behaves at k = 0, which is the common case here.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z * ((p * (1.0 - p) + z2 / (4.0 * n)) / n).sqrt() / (1.0 + z2 / n);
    // At k = 0 and k = n the bounds are exactly 0 and 1; say so rather than leave rounding.
    let lo = if k == 0.0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let hi = if k == n {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    (lo, hi)
}

/// Jaccard overlap of two top-k sets: |A ∩ B| / |A ∪ B|.
pub fn jaccard(a: &[i32], b: &[i32]) -> f64 {
    let inter = a.iter().filter(|x| b.contains(x)).count();
    let union = a.len() + b.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Rank-biased overlap (Webber et al. 2010) of two rankings truncated at depth k, with
/// persistence `p`, normalised so identical rankings score 1:
/// `sum_{d=1..k} p^(d-1) * |A_d ∩ B_d| / d`, divided by the same sum for identical lists.
pub fn rbo(a: &[i32], b: &[i32], p: f64) -> f64 {
    let k = a.len().min(b.len());
    if k == 0 {
        return 1.0;
    }
    let (mut score, mut norm, mut weight) = (0.0, 0.0, 1.0);
    // |A_d ∩ B_d|, counted as the elements of a[..d] found in b[..d], kept from one depth to the
    // next (a rebuild calls this tens of millions of times): at depth d, a[d-1] is new, and the
    // earlier elements of a equal to b[d-1] count now unless b already held that label.
    let mut overlap = 0usize;
    for d in 1..=k {
        let (x, y) = (a[d - 1], b[d - 1]);
        overlap += usize::from(b[..d].contains(&x));
        if !b[..d - 1].contains(&y) {
            overlap += a[..d - 1].iter().filter(|&&v| v == y).count();
        }
        // overlap / d first: identical rankings then sum exactly the weights (score = norm).
        score += weight * (overlap as f64 / d as f64);
        norm += weight;
        weight *= p;
    }
    score / norm
}

/// Kendall's tau-a over the labels both rankings contain, by their positions in each:
/// (concordant - discordant) / pairs. `None` when fewer than two labels are shared.
pub fn kendall_tau(a: &[i32], b: &[i32]) -> Option<f64> {
    // Called once per compared pair and image (tens of millions of times in a rebuild): the
    // positions of the shared labels, in a's order, are b's positions alone; a's are increasing.
    let mut small = [0usize; 16];
    let mut large = Vec::new();
    let positions: &mut [usize] = if a.len() <= small.len() {
        &mut small
    } else {
        large.resize(a.len(), 0);
        &mut large
    };
    let mut n = 0;
    for x in a {
        if let Some(j) = b.iter().position(|y| y == x) {
            positions[n] = j;
            n += 1;
        }
    }
    if n < 2 {
        return None;
    }
    let mut s = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            // a's positions of the two shared labels increase with i < j: the sign is b's order.
            s += (positions[j] as i64 - positions[i] as i64).signum();
        }
    }
    Some(s as f64 / (n * (n - 1) / 2) as f64)
}

/// Max and mean absolute difference of two logit rows (`None` if their lengths differ).
pub fn abs_diff(a: &[f32], b: &[f32]) -> Option<(f64, f64)> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut max, mut sum) = (0.0f32, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    Some((f64::from(max), sum / a.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn wilson_matches_hand_computation() {
        // k = 0, n = 10: upper = z^2/n / (1 + z^2/n) = 0.38415/1.38415 = 0.27753.
        let (lo, hi) = wilson(0, 10);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.277_53).abs() < 1e-4, "{hi}");
        // k = 5, n = 10: centre 0.5, half-width 0.2366 -> (0.2366, 0.7634).
        let (lo, hi) = wilson(5, 10);
        assert!(
            (lo - 0.2366).abs() < 1e-4 && (hi - 0.7634).abs() < 1e-4,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn overlaps_by_hand() {
        assert!(close(jaccard(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]), 1.0));
        // {1,2,3,4,5} vs {1,2,3,9,8}: 3 shared of 7.
        assert!(close(
            jaccard(&[1, 2, 3, 4, 5], &[1, 2, 3, 9, 8]),
            3.0 / 7.0
        ));
        assert!(close(jaccard(&[1], &[2]), 0.0));
        // RBO, p = 0.5, [1,2] vs [2,1]: depth 1 overlap 0, depth 2 overlap 2/2.
        // (1*0 + 0.5*1) / (1 + 0.5) = 1/3.
        assert!(close(rbo(&[1, 2], &[2, 1], 0.5), 1.0 / 3.0));
        // The running overlap equals counting a[..d] in b[..d] at every depth, repeated labels
        // included; every pair of lists of length up to 4 over 3 labels.
        let by_definition = |a: &[i32], b: &[i32], p: f64| {
            let k = a.len().min(b.len());
            if k == 0 {
                return 1.0;
            }
            let (mut score, mut norm, mut weight) = (0.0, 0.0, 1.0);
            for d in 1..=k {
                let overlap = a[..d].iter().filter(|x| b[..d].contains(x)).count();
                score += weight * (overlap as f64 / d as f64);
                norm += weight;
                weight *= p;
            }
            score / norm
        };
        let mut lists: Vec<Vec<i32>> = vec![Vec::new()];
        for len in 1..=4u32 {
            for code in 0..3i32.pow(len) {
                lists.push((0..len).map(|i| code / 3i32.pow(i) % 3).collect());
            }
        }
        for a in &lists {
            for b in &lists {
                assert_eq!(rbo(a, b, 0.9), by_definition(a, b, 0.9), "{a:?} {b:?}");
            }
        }
        assert!(close(rbo(&[1, 2, 3], &[1, 2, 3], 0.9), 1.0));
    }

    #[test]
    fn kendall_tau_by_hand() {
        assert_eq!(kendall_tau(&[1, 2, 3], &[1, 2, 3]), Some(1.0));
        assert_eq!(kendall_tau(&[1, 2, 3], &[3, 2, 1]), Some(-1.0));
        // Shared {1,2,3}: positions a (0,1,2), b (0,2,1): pairs (1,2)+ (1,3)+ (2,3)- -> 1/3.
        assert!(close(
            kendall_tau(&[1, 2, 3, 7], &[1, 3, 2, 9]).unwrap(),
            1.0 / 3.0
        ));
        assert_eq!(kendall_tau(&[1, 2], &[3, 1]), None);
    }

    #[test]
    fn logit_differences_by_hand() {
        assert_eq!(
            abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.5, 1.0]),
            Some((2.0, 2.5 / 3.0))
        );
        assert_eq!(abs_diff(&[1.0], &[1.0, 2.0]), None);
    }

    #[test]
    fn properties_symmetry_and_bounds() {
        let rows = [
            [1, 2, 3, 4, 5],
            [5, 4, 3, 2, 1],
            [1, 9, 8, 7, 6],
            [6, 7, 8, 9, 10],
        ];
        for a in &rows {
            for b in &rows {
                let (j, r) = (jaccard(a, b), rbo(a, b, 0.9));
                assert!((0.0..=1.0).contains(&j) && (0.0..=1.0).contains(&r));
                assert!(close(j, jaccard(b, a)) && close(r, rbo(b, a, 0.9)));
                if let Some(t) = kendall_tau(a, b) {
                    assert!((-1.0..=1.0).contains(&t));
                    assert_eq!(Some(t), kendall_tau(b, a));
                }
            }
            assert!(close(jaccard(a, a), 1.0) && close(rbo(a, a, 0.9), 1.0));
        }
    }
}

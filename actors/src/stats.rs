//! Window statistics: count, sum, min, max, mean, standard deviation and percentiles.

use crate::model::{Percentiles, Statistics};

/// Statistics of `samples` (NaNs ignored). Percentiles use the nearest-rank method: p50 of
/// 1..=100 is 50, p99 is 99. An empty input gives all zeros.
pub fn statistics(samples: &[f64]) -> Statistics {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return Statistics::default();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let sum: f64 = v.iter().sum();
    let avg = sum / n;
    let var = v.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / n;
    let rank = |p: f64| {
        let idx = ((p / 100.0) * n).ceil() as usize;
        v[idx.clamp(1, v.len()) - 1]
    };
    Statistics {
        count: v.len() as u64,
        sum,
        min: v[0],
        max: v[v.len() - 1],
        avg,
        std_dev: var.sqrt(),
        percentiles: Percentiles {
            p50: rank(50.0),
            p90: rank(90.0),
            p95: rank(95.0),
            p99: rank(99.0),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_a_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = statistics(&v);
        assert_eq!(
            (s.count, s.sum, s.min, s.max, s.avg),
            (100, 5050.0, 1.0, 100.0, 50.5)
        );
        assert_eq!(
            (
                s.percentiles.p50,
                s.percentiles.p90,
                s.percentiles.p95,
                s.percentiles.p99
            ),
            (50.0, 90.0, 95.0, 99.0)
        );
        assert!((s.std_dev - 28.866).abs() < 0.001, "{}", s.std_dev);
    }

    #[test]
    fn small_and_empty_inputs() {
        assert_eq!(statistics(&[]), Statistics::default());
        let s = statistics(&[3.0, f64::NAN, 1.0]);
        assert_eq!(
            (s.count, s.min, s.max, s.percentiles.p50, s.percentiles.p99),
            (2, 1.0, 3.0, 1.0, 3.0)
        );
        assert_eq!(s.std_dev, 1.0);
    }
}

//! Summaries of repeated measurements: median, min and max of the runs,
//! and ratios between medians. Pure functions, no I/O.

use serde::Serialize;

/// One figure measured over several runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Number of runs.
    pub n: usize,
    /// Median (the mean of the two middle runs for an even count).
    pub median: f64,
    /// Fastest / smallest run.
    pub min: f64,
    /// Slowest / largest run.
    pub max: f64,
    /// Every run, in the order measured.
    pub samples: Vec<f64>,
}

impl Summary {
    /// Summarises `samples`; None when there are none (or any is NaN).
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// `a.median / b.median`, None when either is missing or `b` is zero.
pub fn ratio(a: Option<&Summary>, b: Option<&Summary>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.median > 0.0).then(|| a.median / b.median)
}

/// Relative difference of two medians, |a - b| / min(a, b).
pub fn spread(a: Option<&Summary>, b: Option<&Summary>) -> Option<f64> {
    let (a, b) = (a?.median, b?.median);
    let lo = a.min(b);
    (lo > 0.0).then(|| (a - b).abs() / lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_odd_and_even() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        assert_eq!(s.samples, vec![5.0, 1.0, 3.0], "samples keep their order");
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (7.0, 7.0, 7.0));
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn ratios_and_spread() {
        let a = Summary::of(&[10.0, 20.0, 30.0]).unwrap();
        let b = Summary::of(&[40.0]).unwrap();
        assert_eq!(ratio(Some(&a), Some(&b)), Some(0.5));
        assert_eq!(ratio(Some(&a), None), None);
        let zero = Summary::of(&[0.0]).unwrap();
        assert_eq!(ratio(Some(&a), Some(&zero)), None);
        assert_eq!(spread(Some(&a), Some(&b)), Some(1.0));
        assert_eq!(spread(Some(&b), Some(&a)), Some(1.0));
    }
}

//! A decaying histogram of byte amounts, the Kubernetes VPA recommender's data structure.
//!
//! Buckets grow exponentially (VPA's memory histogram: the first bucket is 10 MB wide and
//! each next one 5% wider), so the relative error of a percentile is about 5% at any
//! size. Old samples lose weight with a half-life; VPA does it by giving new samples
//! exponentially more weight, this one by shrinking the old weights when a sample
//! arrives, which is the same distribution without the need to renormalise.

/// Width of the first bucket, bytes (VPA: 1e7).
const FIRST_BUCKET: f64 = 1e7;
/// Growth of each bucket over the previous (VPA: 5%).
const RATIO: f64 = 1.05;
/// Largest value told apart, bytes: 1 PiB (VPA stops at 1 TB, VMs may be larger).
const MAX_VALUE: f64 = 1_125_899_906_842_624.0;

fn bucket_count() -> usize {
    // log_R(1 + MAX (R - 1) / FIRST) + 1, about 320 buckets.
    ((1.0 + MAX_VALUE * (RATIO - 1.0) / FIRST_BUCKET).ln() / RATIO.ln()) as usize + 1
}

fn bucket_start(i: usize) -> f64 {
    let i = i32::try_from(i).unwrap_or(i32::MAX);
    FIRST_BUCKET * (RATIO.powi(i) - 1.0) / (RATIO - 1.0)
}

/// A histogram whose weights halve every `half_life_s` seconds.
#[derive(Debug, Clone)]
pub(crate) struct DecayingHistogram {
    weights: Vec<f64>,
    total: f64,
    last_s: Option<f64>,
    half_life_s: f64,
}

impl DecayingHistogram {
    /// An empty histogram.
    pub(crate) fn new(half_life_s: f64) -> Self {
        DecayingHistogram {
            weights: vec![0.0; bucket_count()],
            total: 0.0,
            last_s: None,
            half_life_s,
        }
    }

    fn bucket_of(&self, value: u64) -> usize {
        // u64 -> f64 rounds, which is far below a bucket's width.
        let v = value as f64;
        let idx = ((1.0 + v * (RATIO - 1.0) / FIRST_BUCKET).ln() / RATIO.ln()).floor();
        // `as` saturates (and maps NaN to 0), so any input lands in a bucket.
        (idx as usize).min(self.weights.len() - 1)
    }

    /// Adds a sample of weight 1 at time `now_s`, after decaying what is there.
    pub(crate) fn add(&mut self, value: u64, now_s: f64) {
        if let Some(last) = self.last_s {
            let dt = now_s - last;
            if dt.is_finite() && dt > 0.0 && self.half_life_s > 0.0 {
                let f = (-dt / self.half_life_s).exp2();
                self.weights.iter_mut().for_each(|w| *w *= f);
                self.total *= f;
            }
        }
        if now_s.is_finite() {
            self.last_s = Some(now_s);
        }
        let b = self.bucket_of(value);
        self.weights[b] += 1.0;
        self.total += 1.0;
    }

    /// The `p` percentile (0..=1) of the samples plus, if given, one more sample of
    /// weight 1 (a window still open). Like VPA it answers the end of the bucket the
    /// percentile falls in, which errs on the generous side. `None` when empty.
    pub(crate) fn percentile(&self, p: f64, extra: Option<u64>) -> Option<u64> {
        let extra_b = extra.map(|v| self.bucket_of(v));
        let total = self.total + if extra_b.is_some() { 1.0 } else { 0.0 };
        if total <= 0.0 || !total.is_finite() {
            return None;
        }
        let threshold = p.clamp(0.0, 1.0) * total;
        let last = self.weights.len() - 1;
        let mut sum = 0.0;
        let mut found = last;
        for (i, w) in self.weights.iter().enumerate() {
            sum += w + if extra_b == Some(i) { 1.0 } else { 0.0 };
            if sum >= threshold && sum > 0.0 {
                found = i;
                break;
            }
        }
        let end = if found < last {
            bucket_start(found + 1)
        } else {
            bucket_start(found)
        };
        // f64 -> u64 `as` saturates.
        Some(end as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_percentile() {
        assert_eq!(DecayingHistogram::new(60.0).percentile(0.9, None), None);
    }

    #[test]
    fn percentile_is_within_a_bucket_above_the_value() {
        let mut h = DecayingHistogram::new(3600.0);
        for v in 1..=100u64 {
            h.add(v * 100_000_000, 0.0);
        }
        let p90 = h.percentile(0.9, None).unwrap() as f64;
        assert!(p90 >= 9e9, "{p90}");
        assert!(p90 <= 9e9 * 1.06, "{p90}");
    }

    #[test]
    fn old_samples_fade() {
        let mut h = DecayingHistogram::new(60.0);
        for _ in 0..10 {
            h.add(10_000_000_000, 0.0);
        }
        // Ten half-lives later one small sample outweighs the ten old ones.
        h.add(100_000_000, 600.0);
        let p50 = h.percentile(0.5, None).unwrap();
        assert!(p50 < 200_000_000, "{p50}");
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut h = DecayingHistogram::new(f64::NAN);
        h.add(u64::MAX, f64::NAN);
        h.add(0, f64::INFINITY);
        assert!(h.percentile(1.0, Some(u64::MAX)).is_some());
        assert!(h.percentile(f64::NAN, None).is_some());
    }
}

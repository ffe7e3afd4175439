//! Timing for ballast's benchmarks.
//!
//! Every benchmark prints ballast's figure next to a baseline or physical limit measured
//! in the same run, and their ratio, so that a noisy or slow machine shifts both and the
//! comparison stays meaningful. Figures are medians over many samples.

use std::time::Instant;

/// Median nanoseconds per call of `f`, over `samples` samples of `iters` calls each.
pub fn median_ns(samples: usize, iters: u32, mut f: impl FnMut()) -> f64 {
    median_ns_per(samples, iters, 1, &mut f)
}

/// Median nanoseconds per item, where each call of `f` handles `items` items.
pub fn median_ns_per(samples: usize, iters: u32, items: u64, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters.max(1) as f64 / items.max(1) as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median nanoseconds per item of a run that needs fresh state for every sample:
/// `setup` builds it (untimed), `run` is timed and handles `items` items.
pub fn median_ns_with_setup<S>(
    samples: usize,
    items: u64,
    mut setup: impl FnMut() -> S,
    mut run: impl FnMut(&mut S),
) -> f64 {
    let mut v: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let mut s = setup();
            let t = Instant::now();
            run(&mut s);
            t.elapsed().as_nanos() as f64 / items.max(1) as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The spread of a figure over its samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The fastest sample.
    pub min: f64,
    /// The median sample: the figure.
    pub median: f64,
    /// The slowest sample.
    pub max: f64,
}

impl Spread {
    /// From samples (at least one).
    pub fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            v.push(f64::NAN);
        }
        v.sort_by(f64::total_cmp);
        Spread {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

/// Nanoseconds per item of two runs measured in one loop, their samples interleaved
/// (A B B A A B ...), so that a machine that slows down or speeds up during the run
/// shifts both figures alike. Every sample gets fresh state from `setup` (untimed); each
/// timed run handles `items` items.
pub fn interleaved_ab<S>(
    samples: usize,
    items: u64,
    mut setup: impl FnMut() -> S,
    mut run_a: impl FnMut(&mut S),
    mut run_b: impl FnMut(&mut S),
) -> (Spread, Spread) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let per = |t: Instant| t.elapsed().as_nanos() as f64 / items.max(1) as f64;
    for i in 0..samples.max(1) {
        for first_a in [i % 2 == 0, i % 2 != 0] {
            let mut s = setup();
            let t = Instant::now();
            if first_a {
                run_a(&mut s);
                a.push(per(t));
            } else {
                run_b(&mut s);
                b.push(per(t));
            }
        }
    }
    (Spread::of(a), Spread::of(b))
}

/// One line of an A/B report: both figures with their spread (min/median/max) and the
/// ratio of the medians.
pub fn report_spread(name: &str, unit: &str, ours: Spread, baseline_name: &str, base: Spread) {
    println!(
        "{name:<40} {:>10.2} {unit} (min {:.2} max {:.2}) | {baseline_name} {:>9.2} {unit} (min {:.2} max {:.2}) | ratio {:>6.2}",
        ours.median,
        ours.min,
        ours.max,
        base.median,
        base.min,
        base.max,
        ours.median / base.median
    );
}

/// xorshift64*: reproducible pseudo-random numbers for benchmarks and stress tests,
/// without a dependency.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

/// One line of a benchmark report: ballast's figure, the baseline's, and the ratio.
pub fn report(name: &str, unit: &str, ours: f64, baseline_name: &str, base: f64) {
    println!(
        "{name:<40} {ours:>10.2} {unit} | {baseline_name} {base:>9.2} {unit} | ratio {:>6.2}",
        ours / base
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_per_item() {
        let per_item = median_ns_per(3, 2, 1000, || {
            std::hint::black_box((0..1000u64).sum::<u64>());
        });
        assert!(per_item >= 0.0 && per_item.is_finite());
        let with_setup = median_ns_with_setup(3, 10, || vec![1u8; 10], |v| v.clear());
        assert!(with_setup.is_finite());
        let (a, b) = interleaved_ab(3, 10, || vec![1u8; 10], |v| v.clear(), |v| v.push(2));
        for s in [a, b] {
            assert!(s.min <= s.median && s.median <= s.max && s.min >= 0.0);
        }
    }
}

//! Timing for ballast's benchmarks.
//!
//! Every benchmark prints ballast's figure next to a baseline or physical limit measured
//! in the same run, and their ratio, so that a noisy or slow machine shifts both and the
//! comparison stays meaningful.
//!
//! The compared variants are measured by [`interleaved`]: one sample of each per round,
//! in an order that rotates from round to round, so that a machine that slows down or
//! speeds up during the run shifts every variant alike. The number of rounds follows the
//! [`Sampling`] rule: at least `min_rounds`, then more until the 95% confidence interval
//! of every variant's median is within `rel_ci` of that median, or `max_rounds` or the
//! time `budget` is reached (then the report says the figure did not settle). Each figure
//! is printed as its spread (min, median, max) and each ratio as the median of the
//! per-round ratios, which pairs samples taken moments apart, with that ratio's own
//! spread. Numbers are printed to three significant digits (see [`sig`]), so that a ratio
//! of 0.003 does not print as 0.00.

use std::time::{Duration, Instant};

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
/// timed run handles `items` items. A fixed number of rounds: [`interleaved`] with
/// [`Sampling::fixed`].
pub fn interleaved_ab<S>(
    samples: usize,
    items: u64,
    mut setup: impl FnMut() -> S,
    mut run_a: impl FnMut(&mut S),
    mut run_b: impl FnMut(&mut S),
) -> (Spread, Spread) {
    let c = interleaved(
        &Sampling::fixed(samples),
        items,
        |_| setup(),
        &mut [&mut run_a, &mut run_b],
    );
    (c.spread(0), c.spread(1))
}

/// One line of an A/B report: both figures with their spread (min/median/max) and the
/// ratio of the medians.
pub fn report_spread(name: &str, unit: &str, ours: Spread, baseline_name: &str, base: Spread) {
    println!(
        "{name:<40} {} | {baseline_name} {} | ratio {:>6}",
        ours.show(unit),
        base.show(unit),
        sig(ours.median / base.median)
    );
}

/// One line of a report from an [`interleaved`] run: variant `i` with its spread, the
/// baseline variant `j` with its, the ratio `i / j` (the median of the per-round ratios)
/// with its spread, and a note if the run did not settle.
pub fn report_comparison(name: &str, unit: &str, c: &Comparison, i: usize, base: &str, j: usize) {
    let r = c.ratio(i, j);
    println!(
        "{name:<34} {} | {base} {} | ratio {} ({} .. {}){}",
        c.spread(i).show(unit),
        c.spread(j).show(unit),
        sig(r.median),
        sig(r.min),
        sig(r.max),
        c.note()
    );
}

/// How many rounds [`interleaved`] takes.
///
/// The rule: at least `min_rounds`; then, after each round, stop once the 95% confidence
/// interval of every variant's median (distribution-free: the order statistics
/// `n/2 ± 0.98·√n`) is within `rel_ci` of that median on both sides; and stop in any case
/// at `max_rounds` or once `budget` has passed, reporting the run as not settled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Rounds always taken.
    pub min_rounds: usize,
    /// Rounds never exceeded.
    pub max_rounds: usize,
    /// Wall time after which no new round starts (setup included).
    pub budget: Duration,
    /// The half-width of the median's confidence interval to reach, relative to the
    /// median.
    pub rel_ci: f64,
}

impl Sampling {
    /// The default rule: 21 to 1001 rounds, a 1% interval, at most 10 s per comparison.
    pub const DEFAULT: Sampling = Sampling {
        min_rounds: 21,
        max_rounds: 1001,
        budget: Duration::from_secs(10),
        rel_ci: 0.01,
    };

    /// Exactly `rounds` rounds (at least one), whatever the spread.
    pub const fn fixed(rounds: usize) -> Sampling {
        let rounds = if rounds == 0 { 1 } else { rounds };
        Sampling {
            min_rounds: rounds,
            max_rounds: rounds,
            budget: Duration::MAX,
            rel_ci: f64::INFINITY,
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling::DEFAULT
    }
}

/// The samples of an [`interleaved`] run: nanoseconds per item, per variant, in round
/// order (sample `r` of every variant was taken in round `r`).
#[derive(Debug, Clone)]
pub struct Comparison {
    samples: Vec<Vec<f64>>,
    /// Whether the run stopped because every median's interval was narrow enough (or the
    /// rule was a fixed count), not at `max_rounds` or the budget.
    pub settled: bool,
}

impl Comparison {
    /// The rounds taken.
    pub fn rounds(&self) -> usize {
        self.samples.first().map_or(0, Vec::len)
    }

    /// The same samples per item when the variants' timed runs handle different numbers
    /// of items: variant `i`'s samples are divided by `items[i]` (run [`interleaved`]
    /// with `items` 1 for this).
    pub fn per_item(mut self, items: &[u64]) -> Comparison {
        for (v, &n) in self.samples.iter_mut().zip(items) {
            v.iter_mut().for_each(|x| *x /= n.max(1) as f64);
        }
        self
    }

    /// The samples of variant `i`, in round order.
    pub fn samples(&self, i: usize) -> &[f64] {
        &self.samples[i]
    }

    /// The spread of variant `i`'s nanoseconds per item.
    pub fn spread(&self, i: usize) -> Spread {
        Spread::of(self.samples[i].clone())
    }

    /// The spread of variant `i`'s rate, `scale / nanoseconds per item` (for example
    /// bytes per item over 1 GiB for GiB per nanosecond): higher is faster.
    pub fn rate(&self, i: usize, scale: f64) -> Spread {
        Spread::of(self.samples[i].iter().map(|ns| scale / ns).collect())
    }

    /// The spread of the per-round ratios of variant `i`'s time to variant `j`'s: each
    /// round's two samples were taken moments apart, so a drift of the machine cancels.
    /// Its median is the ratio to print.
    pub fn ratio(&self, i: usize, j: usize) -> Spread {
        Spread::of(
            self.samples[i]
                .iter()
                .zip(&self.samples[j])
                .map(|(a, b)| a / b)
                .collect(),
        )
    }

    /// A note for the report when the run did not settle, else "".
    pub fn note(&self) -> String {
        if self.settled {
            String::new()
        } else {
            format!(" (not settled after {} rounds)", self.rounds())
        }
    }
}

/// The 95% confidence interval of the median of `v` (sorted), distribution-free.
fn median_ci(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len() as f64;
    let half = 0.98 * n.sqrt();
    let lo = ((n / 2.0 - half).floor().max(0.0)) as usize;
    let hi = ((n / 2.0 + half).ceil() as usize).min(sorted.len() - 1);
    (sorted[lo], sorted[hi])
}

/// Runs `variants` interleaved, one sample of each per round, for as many rounds as
/// `sampling` says; returns nanoseconds per item of every sample.
///
/// Round `r` runs the variants starting from `r % n`, forwards on even passes and
/// backwards on odd ones, so every variant takes every position in turn. Before each
/// sample `setup(i)` (untimed) prepares the state for variant `i`; each timed run handles
/// `items` items.
pub fn interleaved<S>(
    sampling: &Sampling,
    items: u64,
    mut setup: impl FnMut(usize) -> S,
    variants: &mut [&mut dyn FnMut(&mut S)],
) -> Comparison {
    let n = variants.len();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
    let began = Instant::now();
    let mut round = 0;
    let settled = loop {
        for k in 0..n {
            let k = if (round / n.max(1)) % 2 == 0 {
                k
            } else {
                n - 1 - k
            };
            let i = (k + round) % n;
            let mut s = setup(i);
            let t = Instant::now();
            variants[i](&mut s);
            samples[i].push(t.elapsed().as_nanos() as f64 / items.max(1) as f64);
        }
        round += 1;
        if round < sampling.min_rounds.max(1) {
            continue;
        }
        let narrow = samples.iter().all(|v| {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            let m = v[v.len() / 2];
            let (lo, hi) = median_ci(&v);
            m - lo <= sampling.rel_ci * m && hi - m <= sampling.rel_ci * m
        });
        if narrow || sampling.min_rounds >= sampling.max_rounds {
            break true;
        }
        if round >= sampling.max_rounds || began.elapsed() >= sampling.budget {
            break false;
        }
    };
    Comparison { samples, settled }
}

/// `x` to three significant digits: fixed notation from 0.001 up to 10^6 (trailing
/// zeros kept, so the digits shown are the digits meant), scientific outside it.
pub fn sig(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() || a == 0.0 {
        return format!("{x}");
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{x:.2e}");
    }
    // Digits after the point so that three significant ones show; rounding can carry
    // into a new digit (9.996 -> 10.0), which the second look catches.
    let decimals = |a: f64| (2 - a.log10().floor() as i32).max(0) as usize;
    let d = decimals(a);
    let rounded: f64 = format!("{a:.d$}").parse().unwrap_or(a);
    let d = decimals(rounded).min(d);
    format!("{x:.d$}")
}

impl Spread {
    /// "median unit (min .. max)", each to three significant digits.
    pub fn show(&self, unit: &str) -> String {
        format!(
            "{:>7} {unit} ({} .. {})",
            sig(self.median),
            sig(self.min),
            sig(self.max)
        )
    }
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
        "{name:<40} {:>10} {unit} | {baseline_name} {:>9} {unit} | ratio {:>6}",
        sig(ours),
        sig(base),
        sig(ours / base)
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

    #[test]
    fn sig_keeps_three_digits() {
        assert_eq!(sig(0.003), "0.00300");
        assert_eq!(sig(0.0123), "0.0123");
        assert_eq!(sig(1.0), "1.00");
        assert_eq!(sig(9.996), "10.0");
        assert_eq!(sig(12.74), "12.7");
        assert_eq!(sig(682.4), "682");
        assert_eq!(sig(40_100.0), "40100");
        assert_eq!(sig(0.000_012_3), "1.23e-5");
        assert_eq!(sig(2.5e9), "2.50e9");
    }

    #[test]
    fn interleaving_rotates_and_settles() {
        let order = std::cell::RefCell::new(Vec::new());
        let c = interleaved(
            &Sampling::fixed(4),
            1,
            |i| order.borrow_mut().push(i),
            &mut [&mut |_| {}, &mut |_| {}, &mut |_| {}],
        );
        assert_eq!(c.rounds(), 4);
        assert!(c.settled);
        let order = order.into_inner();
        // Every round has each variant once, and the first position rotates.
        for r in order.chunks(3) {
            let mut r = r.to_vec();
            r.sort();
            assert_eq!(r, [0, 1, 2]);
        }
        assert_ne!(order[0], order[3]);
        // A constant workload settles long before the cap.
        let s = Sampling {
            max_rounds: 10_000,
            rel_ci: 0.5,
            ..Sampling::DEFAULT
        };
        let c = interleaved(
            &s,
            1,
            |_| (),
            &mut [&mut |_| {
                std::hint::black_box((0..1000u64).sum::<u64>());
            }],
        );
        assert!(c.rounds() >= s.min_rounds && c.rounds() < s.max_rounds);
        let r = c.ratio(0, 0);
        assert_eq!((r.min, r.median, r.max), (1.0, 1.0, 1.0));
    }
}

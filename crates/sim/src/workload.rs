//! Deterministic demand generators: what each simulated guest commits at every moment.
//!
//! A [`WorkloadSpec`] is the description a scenario gives (a TOML inline table tagged by
//! `kind`); a [`Workload`] is that description made concrete for one seed and one guest
//! position. [`Workload::demand_at`] is a **pure function** of (spec, seed, guest index,
//! time): it may be queried at any time in any order and always answers the same, so
//! several policies run on one scenario see exactly the same guests, and the oracle's
//! look-ahead ([`Workload::peak_between`]) sees the future the run will meet.
//!
//! Randomness comes from a small [`SplitMix64`] generator keyed by (seed, guest index,
//! purpose, block), so any piece of the future can be rebuilt without replaying the past.
//! Noise is *value noise*: a random value in [-1, 1] every few seconds, joined by straight
//! lines, scaled to a percentage of the workload's level and added to it. Demand is
//! rounded down to whole 4 KiB pages and never negative.
//!
//! The kinds:
//!
//! - `idle { base }`: flat demand with ±1 % noise (an idle OS still ticks).
//! - `steady { level, noise_percent = 5 }`.
//! - `ramp { from, to, start_s, end_s }`: `from` until `start_s`, a straight line to `to`
//!   at `end_s`, then `to`; no noise.
//! - `bursty { base, peak, mean_interval_s, mean_length_s }`: `base` (±2 % noise) plus
//!   bursts. Burst starts form a Poisson process with mean spacing `mean_interval_s`;
//!   lengths are exponential with mean `mean_length_s` (at least 1 s, at most 8× the
//!   mean); each burst rises in [`BURST_RISE_S`], falls in [`BURST_FALL_S`], and reaches a
//!   height drawn uniformly between half and all of `peak - base` above `base`. The mean
//!   length may be at most [`MAX_OVERLAP`] mean intervals.
//!   Overlapping bursts do not add: the higher one counts (one application's working set).
//! - `diurnal { low, high, period_s, phase_s = 0, noise_percent = 3 }`: a cosine between
//!   `low` and `high` with its crests at `phase_s + k × period_s`, plus noise in percent of
//!   the mean level.
//! - `trace { file, vm_id, overhead_base, overhead_percent = 25, start_s = 0 }`: one VM of
//!   a trace CSV through the guest model of [`crate::trace`]; run time `t` plays trace time
//!   `t + start_s`.

use std::collections::HashMap;
use std::f64::consts::TAU;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::size::{serde_size, serde_size_opt};
use crate::trace::{Overhead, Trace, TraceError, TraceGuest};

/// Seconds a burst takes to reach its height: applications fault their working set in
/// within a few seconds.
pub const BURST_RISE_S: f64 = 3.0;
/// Seconds a burst takes to fall back to the base: freeing is about as quick as faulting.
pub const BURST_FALL_S: f64 = 5.0;
/// The longest burst, in mean lengths: truncating the exponential keeps the look-back of a
/// query bounded (and 8 means cuts off only 0.03 % of bursts).
pub const BURST_MAX_LENGTHS: f64 = 8.0;
/// The longest mean burst length, in mean intervals between bursts.
pub const MAX_OVERLAP: f64 = 100.0;
/// Spacing of the noise's random values, seconds.
const NOISE_KNOT_S: f64 = 10.0;
/// Spacing for the idle workload's slower noise, seconds.
const IDLE_KNOT_S: f64 = 30.0;
/// Idle noise, percent of base.
const IDLE_NOISE_PERCENT: f64 = 1.0;
/// Bursty base noise, percent of base.
const BURSTY_NOISE_PERCENT: f64 = 2.0;
/// Expected bursts per generation block: blocks are independent pieces of the Poisson
/// process, so a block can be rebuilt alone.
const BURSTS_PER_BLOCK: f64 = 16.0;
/// Virtual time whose bursts are generated at construction (three days covers the 48 h
/// trace with room); later times rebuild their blocks on each query.
const PRECOMPUTE_S: f64 = 3.0 * 86_400.0;
/// Times beyond ±this are read as ±this: beyond it f64 seconds lose sub-second precision
/// and the generators could not step forward.
const MAX_TIME_S: f64 = 1e12;
/// A look-ahead window spanning more noise knots than this is answered with
/// [`Workload::max_demand`], an upper bound, instead of a scan.
const MAX_WINDOW_KNOTS: f64 = 1e6;
/// The page size demand is rounded to.
const PAGE: u64 = 4096;

fn default_steady_noise() -> f64 {
    5.0
}

fn default_diurnal_noise() -> f64 {
    3.0
}

fn default_overhead_percent() -> f64 {
    Overhead::DEFAULT_PERCENT
}

/// A workload as a scenario describes it (TOML: an inline table with `kind = "..."`).
/// Sizes accept bytes or a suffixed string (`"2G"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkloadSpec {
    /// Flat low demand with tiny noise.
    Idle {
        /// The level, bytes.
        #[serde(with = "serde_size")]
        base: u64,
    },
    /// A constant level with noise.
    Steady {
        /// The level, bytes.
        #[serde(with = "serde_size")]
        level: u64,
        /// Noise amplitude, percent of the level (0-100).
        #[serde(default = "default_steady_noise")]
        noise_percent: f64,
    },
    /// A straight line from one level to another.
    Ramp {
        /// The level until `start_s`, bytes.
        #[serde(with = "serde_size")]
        from: u64,
        /// The level from `end_s` on, bytes.
        #[serde(with = "serde_size")]
        to: u64,
        /// When the ramp starts, seconds.
        start_s: f64,
        /// When it ends, seconds (>= `start_s`; equal makes a step).
        end_s: f64,
    },
    /// A base level with bursts at random times.
    Bursty {
        /// The level between bursts, bytes.
        #[serde(with = "serde_size")]
        base: u64,
        /// The highest a burst reaches, bytes (>= `base`).
        #[serde(with = "serde_size")]
        peak: u64,
        /// Mean time between burst starts, seconds (>= 1).
        mean_interval_s: f64,
        /// Mean burst length, seconds (>= 1).
        mean_length_s: f64,
    },
    /// A smooth daily cycle.
    Diurnal {
        /// The trough, bytes.
        #[serde(with = "serde_size")]
        low: u64,
        /// The crest, bytes (>= `low`).
        #[serde(with = "serde_size")]
        high: u64,
        /// The cycle's length, seconds (> 0).
        period_s: f64,
        /// When the first crest comes, seconds.
        #[serde(default)]
        phase_s: f64,
        /// Noise amplitude, percent of the mean level (0-100).
        #[serde(default = "default_diurnal_noise")]
        noise_percent: f64,
    },
    /// One VM of a trace file.
    Trace {
        /// The CSV file (see [`crate::trace`]). A scenario file's relative path is read
        /// from the scenario's directory.
        file: PathBuf,
        /// The VM's id in the trace.
        vm_id: u64,
        /// Fixed guest-OS memory, bytes; absent for `min(256 MiB, capacity / 4)`.
        #[serde(
            default,
            with = "serde_size_opt",
            skip_serializing_if = "Option::is_none"
        )]
        overhead_base: Option<u64>,
        /// Memory committed along with the working set, percent of active memory.
        #[serde(default = "default_overhead_percent")]
        overhead_percent: f64,
        /// The trace time run time 0 plays, seconds.
        #[serde(default)]
        start_s: f64,
    },
}

impl WorkloadSpec {
    /// The kind's name as TOML writes it.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Idle { .. } => "idle",
            Self::Steady { .. } => "steady",
            Self::Ramp { .. } => "ramp",
            Self::Bursty { .. } => "bursty",
            Self::Diurnal { .. } => "diurnal",
            Self::Trace { .. } => "trace",
        }
    }
}

/// Why a workload could not be built.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// A field is out of range.
    #[error("{kind} workload: {field} {problem}")]
    Invalid {
        /// The workload kind.
        kind: &'static str,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The trace file could not be read or lacks the VM.
    #[error("trace {file}: {source}")]
    Trace {
        /// The file.
        file: PathBuf,
        /// The reader's error.
        source: TraceError,
    },
}

/// A small, fast, well-mixed generator (Steele, Lea and Flood's SplitMix64): enough for
/// workload randomness, and its state is one word, so keyed streams are cheap to make.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// A uniform float in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits: every value is exact.
        #[allow(clippy::cast_precision_loss)]
        let v = (self.next_u64() >> 11) as f64;
        v * (1.0 / (1u64 << 53) as f64)
    }

    /// An exponential variate with this mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }
}

/// SplitMix64's finaliser: a bijective mix of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A key for one purpose of one guest of one seed.
fn key(seed: u64, index: usize, purpose: u64) -> u64 {
    mix(mix(mix(seed ^ 0x6261_6c6c_6173_7421) ^ index as u64) ^ purpose)
}

/// Purposes, so that a guest's noise and bursts are independent.
const NOISE_PURPOSE: u64 = 1;
const BURST_PURPOSE: u64 = 2;

/// Piecewise-linear noise in [-1, 1] with a random value every `knot_s` seconds.
#[derive(Debug, Clone, Copy)]
struct Noise {
    key: u64,
    knot_s: f64,
}

impl Noise {
    /// The random value at knot `k`.
    #[allow(clippy::cast_sign_loss)]
    fn knot(&self, k: i64) -> f64 {
        let bits = mix(self.key ^ mix(k as u64));
        #[allow(clippy::cast_precision_loss)]
        let u = (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        2.0 * u - 1.0
    }

    /// The noise at `t`.
    #[allow(clippy::cast_possible_truncation)]
    fn at(&self, t: f64) -> f64 {
        let x = t / self.knot_s;
        let k = x.floor();
        let w = x - k;
        let k = k as i64;
        let a = self.knot(k);
        let b = self.knot(k + 1);
        a + (b - a) * w
    }
}

/// One burst: its times and its height above the base.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Burst {
    start: f64,
    end: f64,
    height: f64,
}

impl Burst {
    /// Its height at `t` (a trapezoid, or a triangle for short bursts).
    fn at(&self, t: f64) -> f64 {
        if t <= self.start || t >= self.end {
            return 0.0;
        }
        let up = (t - self.start) / BURST_RISE_S;
        let down = (self.end - t) / BURST_FALL_S;
        up.min(down).min(1.0) * self.height
    }

    /// Where its shape bends: the corners are the candidates for a peak.
    fn corners(&self) -> [f64; 4] {
        // Where the rise and the fall would meet (the apex of a short burst).
        let apex =
            (self.start * BURST_FALL_S + self.end * BURST_RISE_S) / (BURST_RISE_S + BURST_FALL_S);
        [
            self.start,
            (self.start + BURST_RISE_S).min(apex),
            (self.end - BURST_FALL_S).max(apex),
            self.end,
        ]
    }
}

/// The bursty workload's state: parameters and the bursts of the first days.
#[derive(Debug, Clone)]
struct Bursty {
    base: f64,
    span: f64,
    mean_interval_s: f64,
    mean_length_s: f64,
    max_length_s: f64,
    block_s: f64,
    key: u64,
    /// Bursts of blocks `0..precomputed_blocks`, sorted by start.
    bursts: Vec<Burst>,
    precomputed_blocks: i64,
}

impl Bursty {
    /// Appends the bursts that start in block `k`, in order.
    #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
    fn generate_block(&self, k: i64, out: &mut Vec<Burst>) {
        let mut rng = SplitMix64::new(mix(self.key ^ mix(k as u64)));
        let block_start = k as f64 * self.block_s;
        let block_end = block_start + self.block_s;
        let mut t = block_start;
        // Bounded: a block expects BURSTS_PER_BLOCK starts; this many is never reached by
        // chance, only by a degenerate generator.
        for _ in 0..(BURSTS_PER_BLOCK as usize * 64) {
            t += rng.exp(self.mean_interval_s);
            if t >= block_end {
                break;
            }
            let length = rng.exp(self.mean_length_s).clamp(1.0, self.max_length_s);
            let height = (0.5 + 0.5 * rng.next_f64()) * self.span;
            out.push(Burst {
                start: t,
                end: t + length,
                height,
            });
        }
    }

    /// Calls `f` for every burst starting in `[a, b]`.
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    fn for_starts_in(&self, a: f64, b: f64, mut f: impl FnMut(&Burst)) {
        let first = (a / self.block_s).floor() as i64;
        let last = (b / self.block_s).floor() as i64;
        if first >= 0 && last < self.precomputed_blocks {
            let from = self.bursts.partition_point(|x| x.start < a);
            for burst in self.bursts[from..].iter().take_while(|x| x.start <= b) {
                f(burst);
            }
            return;
        }
        let mut buf = Vec::new();
        for k in first..=last {
            if k >= 0 && k < self.precomputed_blocks {
                // A window straddling the precomputed range: take that part from the list.
                let lo = k as f64 * self.block_s;
                let from = self.bursts.partition_point(|x| x.start < lo);
                let hi = lo + self.block_s;
                buf.extend(self.bursts[from..].iter().take_while(|x| x.start < hi));
            } else {
                self.generate_block(k, &mut buf);
            }
        }
        for burst in buf.iter().filter(|x| x.start >= a && x.start <= b) {
            f(burst);
        }
    }

    /// The bursts' contribution at `t`: the highest active burst.
    fn burst_at(&self, t: f64) -> f64 {
        let mut best: f64 = 0.0;
        self.for_starts_in(t - self.max_length_s, t, |b| best = best.max(b.at(t)));
        best
    }
}

/// The concrete generator behind a [`Workload`].
#[derive(Debug, Clone)]
enum Inner {
    /// `level + amplitude × noise(t)`: idle and steady.
    Flat {
        level: f64,
        amplitude: f64,
        noise: Noise,
    },
    Ramp {
        from: f64,
        to: f64,
        start_s: f64,
        end_s: f64,
    },
    Bursty {
        bursty: Box<Bursty>,
        amplitude: f64,
        noise: Noise,
    },
    Diurnal {
        mid: f64,
        half: f64,
        omega: f64,
        phase_s: f64,
        amplitude: f64,
        noise: Noise,
    },
    Trace {
        guest: Box<TraceGuest>,
        start_s: f64,
    },
}

/// Traces read once and shared by every workload that replays them: a 100-guest trace
/// scenario reads its CSV once, not 100 times.
#[derive(Debug, Default)]
pub struct TraceCache {
    traces: HashMap<PathBuf, Arc<Trace>>,
}

impl TraceCache {
    /// An empty cache.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The trace in `file`, read on first use.
    ///
    /// # Errors
    ///
    /// The reader's error, with the file named.
    pub fn get(&mut self, file: &Path) -> Result<Arc<Trace>, WorkloadError> {
        if let Some(t) = self.traces.get(file) {
            return Ok(Arc::clone(t));
        }
        let trace = Trace::load(file).map_err(|source| WorkloadError::Trace {
            file: file.to_path_buf(),
            source,
        })?;
        let trace = Arc::new(trace);
        self.traces.insert(file.to_path_buf(), Arc::clone(&trace));
        Ok(trace)
    }

    /// Adds an already read trace under `file`'s name.
    pub fn insert(&mut self, file: PathBuf, trace: Arc<Trace>) {
        self.traces.insert(file, trace);
    }
}

/// One guest's demand over time: a [`WorkloadSpec`] made concrete for a seed and a guest
/// index. Pure: every query depends only on (spec, seed, index, t).
#[derive(Debug, Clone)]
pub struct Workload {
    spec: WorkloadSpec,
    inner: Inner,
}

/// A finite number, or an error naming the field.
fn finite(kind: &'static str, field: &'static str, v: f64) -> Result<f64, WorkloadError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(WorkloadError::Invalid {
            kind,
            field,
            problem: format!("{v} is not a finite number"),
        })
    }
}

/// A finite number at least `min`.
fn at_least(
    kind: &'static str,
    field: &'static str,
    v: f64,
    min: f64,
) -> Result<f64, WorkloadError> {
    if finite(kind, field, v)? >= min {
        Ok(v)
    } else {
        Err(WorkloadError::Invalid {
            kind,
            field,
            problem: format!("{v} is below {min}"),
        })
    }
}

/// A percentage in 0-100.
fn percent(kind: &'static str, field: &'static str, v: f64) -> Result<f64, WorkloadError> {
    let v = at_least(kind, field, v, 0.0)?;
    if v <= 100.0 {
        Ok(v)
    } else {
        Err(WorkloadError::Invalid {
            kind,
            field,
            problem: format!("{v} is above 100"),
        })
    }
}

/// Rounds a byte figure down to whole pages; negative and NaN read as 0.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_pages(bytes: f64) -> u64 {
    // `as` saturates: negative or NaN become 0, huge values u64::MAX.
    let b = bytes as u64;
    b - b % PAGE
}

/// Clamps a query time to the range the generators handle; NaN reads as 0.
fn clamp_time(t: f64) -> f64 {
    if t.is_nan() {
        0.0
    } else {
        t.clamp(-MAX_TIME_S, MAX_TIME_S)
    }
}

impl Workload {
    /// Builds the workload of guest `guest_index` for `seed`, reading a trace file if the
    /// spec names one.
    ///
    /// # Errors
    ///
    /// [`WorkloadError`] for out-of-range fields or an unreadable trace.
    pub fn new(spec: &WorkloadSpec, seed: u64, guest_index: usize) -> Result<Self, WorkloadError> {
        Self::with_traces(spec, seed, guest_index, &mut TraceCache::new())
    }

    /// As [`Workload::new`], reading traces through a shared cache.
    ///
    /// # Errors
    ///
    /// As [`Workload::new`].
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    pub fn with_traces(
        spec: &WorkloadSpec,
        seed: u64,
        guest_index: usize,
        traces: &mut TraceCache,
    ) -> Result<Self, WorkloadError> {
        let kind = spec.kind_name();
        let noise_key = key(seed, guest_index, NOISE_PURPOSE);
        let inner = match *spec {
            WorkloadSpec::Idle { base } => Inner::Flat {
                level: base as f64,
                amplitude: base as f64 * IDLE_NOISE_PERCENT / 100.0,
                noise: Noise {
                    key: noise_key,
                    knot_s: IDLE_KNOT_S,
                },
            },
            WorkloadSpec::Steady {
                level,
                noise_percent,
            } => Inner::Flat {
                level: level as f64,
                amplitude: level as f64 * percent(kind, "noise_percent", noise_percent)? / 100.0,
                noise: Noise {
                    key: noise_key,
                    knot_s: NOISE_KNOT_S,
                },
            },
            WorkloadSpec::Ramp {
                from,
                to,
                start_s,
                end_s,
            } => {
                let start_s = finite(kind, "start_s", start_s)?;
                let end_s = at_least(kind, "end_s", end_s, start_s)?;
                Inner::Ramp {
                    from: from as f64,
                    to: to as f64,
                    start_s,
                    end_s,
                }
            }
            WorkloadSpec::Bursty {
                base,
                peak,
                mean_interval_s,
                mean_length_s,
            } => {
                if peak < base {
                    return Err(WorkloadError::Invalid {
                        kind,
                        field: "peak",
                        problem: format!("{peak} is below base {base}"),
                    });
                }
                let mean_interval_s = at_least(kind, "mean_interval_s", mean_interval_s, 1.0)?;
                let mean_length_s = at_least(kind, "mean_length_s", mean_length_s, 1.0)?;
                // Bursts overlapping more than this deep are a plateau, not bursts, and the
                // bound keeps a query's look-back to a few generation blocks.
                if mean_length_s > MAX_OVERLAP * mean_interval_s {
                    return Err(WorkloadError::Invalid {
                        kind,
                        field: "mean_length_s",
                        problem: format!(
                            "{mean_length_s} is more than {MAX_OVERLAP} times mean_interval_s"
                        ),
                    });
                }
                let block_s = mean_interval_s * BURSTS_PER_BLOCK;
                let mut bursty = Bursty {
                    base: base as f64,
                    span: (peak - base) as f64,
                    mean_interval_s,
                    mean_length_s,
                    max_length_s: (mean_length_s * BURST_MAX_LENGTHS).max(1.0),
                    block_s,
                    key: key(seed, guest_index, BURST_PURPOSE),
                    bursts: Vec::new(),
                    precomputed_blocks: 0,
                };
                let blocks = (PRECOMPUTE_S / block_s).ceil() as i64;
                let mut bursts = Vec::new();
                for k in 0..blocks {
                    bursty.generate_block(k, &mut bursts);
                }
                bursty.bursts = bursts;
                bursty.precomputed_blocks = blocks;
                Inner::Bursty {
                    amplitude: base as f64 * BURSTY_NOISE_PERCENT / 100.0,
                    bursty: Box::new(bursty),
                    noise: Noise {
                        key: noise_key,
                        knot_s: NOISE_KNOT_S,
                    },
                }
            }
            WorkloadSpec::Diurnal {
                low,
                high,
                period_s,
                phase_s,
                noise_percent,
            } => {
                if high < low {
                    return Err(WorkloadError::Invalid {
                        kind,
                        field: "high",
                        problem: format!("{high} is below low {low}"),
                    });
                }
                let period_s = finite(kind, "period_s", period_s)?;
                if period_s <= 0.0 {
                    return Err(WorkloadError::Invalid {
                        kind,
                        field: "period_s",
                        problem: format!("{period_s} is not positive"),
                    });
                }
                let mid = (low as f64 + high as f64) / 2.0;
                Inner::Diurnal {
                    mid,
                    half: (high as f64 - low as f64) / 2.0,
                    omega: TAU / period_s,
                    phase_s: finite(kind, "phase_s", phase_s)?,
                    amplitude: mid * percent(kind, "noise_percent", noise_percent)? / 100.0,
                    noise: Noise {
                        key: noise_key,
                        knot_s: NOISE_KNOT_S,
                    },
                }
            }
            WorkloadSpec::Trace {
                ref file,
                vm_id,
                overhead_base,
                overhead_percent,
                start_s,
            } => {
                let overhead = Overhead {
                    base: overhead_base,
                    percent: at_least(kind, "overhead_percent", overhead_percent, 0.0)?,
                };
                let start_s = finite(kind, "start_s", start_s)?;
                let trace = traces.get(file)?;
                let vm = trace.vm(vm_id).ok_or_else(|| WorkloadError::Trace {
                    file: file.clone(),
                    source: TraceError::NoSuchVm { vm_id },
                })?;
                let guest =
                    TraceGuest::new(vm, overhead).map_err(|source| WorkloadError::Trace {
                        file: file.clone(),
                        source,
                    })?;
                Inner::Trace {
                    guest: Box::new(guest),
                    start_s,
                }
            }
        };
        Ok(Self {
            spec: spec.clone(),
            inner,
        })
    }

    /// The spec this workload was built from.
    #[must_use]
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// The guest's committed memory at virtual time `t_s`, bytes (whole 4 KiB pages).
    #[must_use]
    pub fn demand_at(&self, t_s: f64) -> u64 {
        to_pages(self.value_at(clamp_time(t_s)))
    }

    /// The demand before rounding.
    fn value_at(&self, t: f64) -> f64 {
        match &self.inner {
            Inner::Flat {
                level,
                amplitude,
                noise,
            } => level + amplitude * noise.at(t),
            Inner::Ramp {
                from,
                to,
                start_s,
                end_s,
            } => {
                if t <= *start_s {
                    *from
                } else if t >= *end_s {
                    *to
                } else {
                    from + (to - from) * (t - start_s) / (end_s - start_s)
                }
            }
            Inner::Bursty {
                bursty,
                amplitude,
                noise,
            } => bursty.base + amplitude * noise.at(t) + bursty.burst_at(t),
            Inner::Diurnal {
                mid,
                half,
                omega,
                phase_s,
                amplitude,
                noise,
            } => mid + half * (omega * (t - phase_s)).cos() + amplitude * noise.at(t),
            #[allow(clippy::cast_precision_loss)]
            Inner::Trace { guest, start_s } => guest.demand_at(t + start_s) as f64,
        }
    }

    /// The most this workload ever demands (an upper bound), bytes.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn max_demand(&self) -> u64 {
        to_pages(match &self.inner {
            Inner::Flat {
                level, amplitude, ..
            } => level + amplitude,
            Inner::Ramp { from, to, .. } => from.max(*to),
            Inner::Bursty {
                bursty, amplitude, ..
            } => bursty.base + bursty.span + amplitude,
            Inner::Diurnal {
                mid,
                half,
                amplitude,
                ..
            } => mid + half + amplitude,
            Inner::Trace { guest, .. } => guest.capacity() as f64,
        })
    }

    /// The highest demand in `[t0, t1]` (swapped if reversed), bytes: the oracle's
    /// look-ahead.
    ///
    /// Exact: every workload but `diurnal` is piecewise linear, so its peak is at a window
    /// end, a noise knot or a burst corner, and all of them are evaluated; `diurnal` adds,
    /// for each stretch between knots, the point where the cosine's slope cancels the
    /// noise's. The cost is one evaluation per noise knot in the window (one per 10 s), so
    /// a window of a few minutes is cheap; a window spanning more than a million knots is
    /// answered with [`Workload::max_demand`].
    #[must_use]
    pub fn peak_between(&self, t0: f64, t1: f64) -> u64 {
        let (t0, t1) = (clamp_time(t0), clamp_time(t1));
        let (t0, t1) = if t1 < t0 { (t1, t0) } else { (t0, t1) };
        let ends = self.demand_at(t0).max(self.demand_at(t1));
        let noise = match &self.inner {
            Inner::Ramp { .. } => return ends,
            Inner::Trace { guest, start_s } => {
                return guest.peak_between(t0 + start_s, t1 + start_s);
            }
            Inner::Flat { noise, .. }
            | Inner::Bursty { noise, .. }
            | Inner::Diurnal { noise, .. } => *noise,
        };
        let first = (t0 / noise.knot_s).floor();
        let last = (t1 / noise.knot_s).floor();
        if last - first > MAX_WINDOW_KNOTS {
            return self.max_demand().max(ends);
        }
        let mut best = ends;
        let mut seg_start = t0;
        let mut k = first + 1.0;
        loop {
            let seg_end = (k * noise.knot_s).min(t1);
            best = best.max(self.demand_at(seg_end));
            if let Inner::Diurnal {
                half,
                omega,
                phase_s,
                amplitude,
                noise,
                ..
            } = &self.inner
            {
                best = best.max(self.diurnal_segment_peak(
                    seg_start, seg_end, *half, *omega, *phase_s, *amplitude, noise,
                ));
            }
            if seg_end >= t1 {
                break;
            }
            seg_start = seg_end;
            k += 1.0;
        }
        if let Inner::Bursty { bursty, .. } = &self.inner {
            bursty.for_starts_in(t0 - bursty.max_length_s, t1, |b| {
                for c in b.corners() {
                    if c >= t0 && c <= t1 {
                        best = best.max(self.demand_at(c));
                    }
                }
            });
        }
        best
    }

    /// The diurnal demand's interior maxima on `[a, b]`, a stretch where the noise is
    /// linear: where `d/dt (half × cos(ω(t - φ)) + β t) = 0` with the cosine falling.
    #[allow(clippy::too_many_arguments)]
    fn diurnal_segment_peak(
        &self,
        a: f64,
        b: f64,
        half: f64,
        omega: f64,
        phase_s: f64,
        amplitude: f64,
        noise: &Noise,
    ) -> u64 {
        if b <= a || half <= 0.0 {
            return 0;
        }
        let slope = amplitude * (noise.at(b) - noise.at(a)) / (b - a);
        let ratio = slope / (half * omega);
        if !(-1.0..=1.0).contains(&ratio) {
            return 0;
        }
        // -half ω sin(x) + slope = 0 with cos(x) > 0: x = asin(ratio) + 2πk.
        let theta = ratio.asin();
        let k_lo = (((a - phase_s) * omega - theta) / TAU).ceil();
        let k_hi = (((b - phase_s) * omega - theta) / TAU).floor();
        let mut best = 0;
        let mut k = k_lo;
        // A stretch is at most one knot (10 s) long; a handful of crests fit only in a
        // period shorter than that, and the cap keeps a pathological one bounded.
        let mut steps = 0;
        while k <= k_hi && steps < 64 {
            let t = phase_s + (theta + TAU * k) / omega;
            if t >= a && t <= b {
                best = best.max(self.demand_at(t));
            }
            k += 1.0;
            steps += 1;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::{GIB, MIB};
    use proptest::prelude::*;

    fn all_kinds() -> Vec<WorkloadSpec> {
        vec![
            WorkloadSpec::Idle { base: 300 * MIB },
            WorkloadSpec::Steady {
                level: GIB,
                noise_percent: 5.0,
            },
            WorkloadSpec::Ramp {
                from: 500 * MIB,
                to: 2 * GIB,
                start_s: 100.0,
                end_s: 400.0,
            },
            WorkloadSpec::Bursty {
                base: 500 * MIB,
                peak: 2 * GIB,
                mean_interval_s: 60.0,
                mean_length_s: 20.0,
            },
            WorkloadSpec::Diurnal {
                low: 600 * MIB,
                high: 2 * GIB,
                period_s: 300.0,
                phase_s: 50.0,
                noise_percent: 3.0,
            },
            // Crests between noise knots: only the interior maxima find these peaks.
            WorkloadSpec::Diurnal {
                low: 600 * MIB,
                high: 2 * GIB,
                period_s: 37.0,
                phase_s: 3.0,
                noise_percent: 20.0,
            },
        ]
    }

    fn series(w: &Workload, n: u32) -> Vec<u64> {
        (0..n).map(|t| w.demand_at(f64::from(t))).collect()
    }

    #[test]
    fn deterministic_per_seed_and_different_across_seeds() {
        for spec in all_kinds() {
            let a = Workload::new(&spec, 7, 0).unwrap();
            let b = Workload::new(&spec, 7, 0).unwrap();
            assert_eq!(series(&a, 1000), series(&b, 1000), "{spec:?}");
            // Pure: the same answer when queried backwards.
            let back: Vec<u64> = (0..1000).rev().map(|t| a.demand_at(f64::from(t))).collect();
            let mut fwd = series(&a, 1000);
            fwd.reverse();
            assert_eq!(back, fwd);
            if !matches!(spec, WorkloadSpec::Ramp { .. }) {
                let c = Workload::new(&spec, 8, 0).unwrap();
                assert_ne!(series(&a, 1000), series(&c, 1000), "{spec:?}");
                let d = Workload::new(&spec, 7, 1).unwrap();
                assert_ne!(series(&a, 1000), series(&d, 1000), "{spec:?}");
            }
        }
    }

    #[test]
    fn levels_are_where_the_spec_puts_them() {
        let idle = Workload::new(&WorkloadSpec::Idle { base: 300 * MIB }, 1, 0).unwrap();
        for t in 0..600 {
            let d = idle.demand_at(f64::from(t));
            assert!(d.abs_diff(300 * MIB) <= 3 * MIB + 4096, "{d}");
            assert_eq!(d % 4096, 0);
        }
        let ramp = Workload::new(&all_kinds()[2], 1, 0).unwrap();
        assert_eq!(ramp.demand_at(0.0), 500 * MIB);
        assert_eq!(ramp.demand_at(250.0), 500 * MIB + (2 * GIB - 500 * MIB) / 2);
        assert_eq!(ramp.demand_at(1e6), 2 * GIB);
        let diurnal = Workload::new(&all_kinds()[4], 1, 0).unwrap();
        let crest = diurnal.demand_at(50.0);
        let trough = diurnal.demand_at(200.0);
        assert!(
            crest > 2 * GIB - 60 * MIB && trough < 600 * MIB + 60 * MIB,
            "{crest} {trough}"
        );
    }

    #[test]
    fn bursty_really_bursts() {
        let w = Workload::new(&all_kinds()[3], 3, 0).unwrap();
        let s = series(&w, 3600);
        let high = s.iter().filter(|&&d| d > GIB + GIB / 4).count();
        let low = s.iter().filter(|&&d| d < 520 * MIB).count();
        // About a quarter of the time in bursts (20 s of every 60 s, less overlaps).
        assert!(high > 300 && high < 2000, "{high}");
        assert!(low > 1000, "{low}");
        // Bursts rise within a few seconds: some second-to-second step is large.
        let max_step = s.windows(2).map(|p| p[1].abs_diff(p[0])).max().unwrap();
        assert!(max_step > 150 * MIB, "{max_step}");
        // Never above the peak plus the base's noise.
        assert!(s.iter().all(|&d| d <= 2 * GIB + 11 * MIB));
        // Bursts do come at different times for different guests.
        let other = series(&Workload::new(&all_kinds()[3], 3, 1).unwrap(), 3600);
        assert_ne!(s, other);
    }

    #[test]
    fn bursty_beyond_the_precomputed_days_is_still_pure() {
        let w = Workload::new(&all_kinds()[3], 3, 0).unwrap();
        // Straddling the end of the precomputed range and far beyond it.
        for t0 in [PRECOMPUTE_S - 500.0, 30.0 * 86_400.0, -1000.0] {
            let a: Vec<u64> = (0..1000).map(|i| w.demand_at(t0 + f64::from(i))).collect();
            let b: Vec<u64> = (0..1000)
                .rev()
                .map(|i| w.demand_at(t0 + f64::from(i)))
                .collect();
            let mut b = b;
            b.reverse();
            assert_eq!(a, b);
            assert!(a.iter().any(|&d| d > GIB), "no burst near {t0}");
        }
    }

    #[test]
    fn invalid_specs_are_errors() {
        let bad = [
            WorkloadSpec::Steady {
                level: GIB,
                noise_percent: 150.0,
            },
            WorkloadSpec::Steady {
                level: GIB,
                noise_percent: f64::NAN,
            },
            WorkloadSpec::Ramp {
                from: 0,
                to: 1,
                start_s: 10.0,
                end_s: 5.0,
            },
            WorkloadSpec::Bursty {
                base: 2,
                peak: 1,
                mean_interval_s: 10.0,
                mean_length_s: 5.0,
            },
            WorkloadSpec::Bursty {
                base: 1,
                peak: 2,
                mean_interval_s: 0.0,
                mean_length_s: 5.0,
            },
            WorkloadSpec::Bursty {
                base: 1,
                peak: 2,
                mean_interval_s: 1.0,
                mean_length_s: 1e9,
            },
            WorkloadSpec::Diurnal {
                low: 2,
                high: 1,
                period_s: 10.0,
                phase_s: 0.0,
                noise_percent: 0.0,
            },
            WorkloadSpec::Diurnal {
                low: 1,
                high: 2,
                period_s: 0.0,
                phase_s: 0.0,
                noise_percent: 0.0,
            },
            WorkloadSpec::Trace {
                file: "/nonexistent/trace.csv".into(),
                vm_id: 1,
                overhead_base: None,
                overhead_percent: 25.0,
                start_s: 0.0,
            },
        ];
        for spec in bad {
            assert!(Workload::new(&spec, 1, 0).is_err(), "{spec:?}");
        }
    }

    #[test]
    fn toml_forms() {
        #[derive(Deserialize)]
        struct H {
            w: WorkloadSpec,
        }
        let h: H = toml::from_str("w = { kind = \"bursty\", base = \"512M\", peak = \"2G\", mean_interval_s = 60, mean_length_s = 20.5 }").unwrap();
        assert_eq!(
            h.w,
            WorkloadSpec::Bursty {
                base: 512 * MIB,
                peak: 2 * GIB,
                mean_interval_s: 60.0,
                mean_length_s: 20.5
            }
        );
        let h: H = toml::from_str("w = { kind = \"steady\", level = 1073741824 }").unwrap();
        assert_eq!(
            h.w,
            WorkloadSpec::Steady {
                level: GIB,
                noise_percent: 5.0
            }
        );
        assert!(
            toml::from_str::<H>("w = { kind = \"steady\", level = \"1G\", bogus = 1 }").is_err()
        );
        assert!(toml::from_str::<H>("w = { kind = \"sometimes\", level = \"1G\" }").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn peak_covers_the_window(
            which in 0usize..6,
            seed in any::<u64>(),
            t0 in -100.0f64..2000.0,
            len in 0.0f64..400.0,
        ) {
            let w = Workload::new(&all_kinds()[which], seed, 0).unwrap();
            let t1 = t0 + len;
            let peak = w.peak_between(t0, t1);
            prop_assert_eq!(peak, w.peak_between(t1, t0));
            prop_assert!(peak >= w.demand_at(t0) && peak >= w.demand_at(t1));
            for i in 0..=400 {
                let t = t0 + len * f64::from(i) / 400.0;
                prop_assert!(peak >= w.demand_at(t), "t {} peak {} demand {}", t, peak, w.demand_at(t));
            }
            prop_assert!(peak <= w.max_demand());
        }

        #[test]
        fn any_time_is_answered(which in 0usize..6, t in proptest::num::f64::ANY, u in proptest::num::f64::ANY) {
            let w = Workload::new(&all_kinds()[which], 1, 0).unwrap();
            prop_assert!(w.demand_at(t) <= w.max_demand());
            let _ = w.peak_between(t, u);
        }
    }
}

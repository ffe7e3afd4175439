//! Memory-usage traces: the CSV reader and the guest model that replays one VM.
//!
//! # Format
//!
//! A trace is a CSV file with the header `vm_id,t_seconds,mem_capacity_bytes,mem_used_bytes`
//! and one row per sample: the VM's integer id, the sample's time in seconds (any real
//! number; strictly increasing within a VM), the VM's provisioned memory and its used
//! (active) memory, both whole bytes with used <= capacity. Rows of different VMs may come
//! in any order; VMs are listed in the order they first appear. This is the format of the
//! bundled Bitbrains GWA-T-12 "Rnd" subset. Every error names the line and the problem.
//!
//! # Guest model
//!
//! The trace records *active* memory (a working-set figure, averaged over 5 minutes), not
//! what a guest OS commits. A [`TraceGuest`] turns it into committed memory:
//!
//! ```text
//! committed(t) = min(capacity, base + active(t) × (1 + f))
//! base         = min(256 MiB, capacity / 4)        (default)
//! f            = 25 %                               (default)
//! ```
//!
//! - `base` is the guest OS itself: kernel text and data, the memory map (`struct page`
//!   is about 1.6 % of RAM), slab, system services and the small page cache a server keeps
//!   even when idle. A minimal Linux server sits at about 150-250 MiB after boot, so 256
//!   MiB is a fair floor; a quarter of capacity caps it for the trace's tiny VMs (100-512
//!   MiB), which do run in that memory, so the floor must not exceed what they have.
//! - `f` is what a working-set figure leaves out but a guest commits along with it:
//!   inactive anonymous pages, page tables and slab that grow with the working set, and
//!   the file cache serving it. 25 % is a moderate share; it is a model choice, not a
//!   measurement, and both figures can be set per trace workload
//!   ([`Overhead`]).
//! - The result is capped at the VM's capacity (a guest cannot commit more than it was
//!   given) and rounded down to whole 4 KiB pages.
//!
//! Active memory is interpolated linearly between samples (they are interval averages, so a
//! straight line between them is the least-surprising path) and held before the first and
//! after the last sample.
//!
//! **Zero samples.** About 5 % of the bundled trace's samples are exactly 0, mostly in
//! runs of 1-3 samples: probably measurement gaps, since an OS never has zero active
//! memory. A run of at most [`ZERO_GAP_MAX_SAMPLES`] zeros is treated as a gap and takes
//! the previous non-zero value (the next one if the run opens the trace). Longer runs are
//! kept: they may be real idle periods, and then the guest's demand is its base alone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::size::MIB;

/// The header every trace file starts with.
pub const HEADER: [&str; 4] = ["vm_id", "t_seconds", "mem_capacity_bytes", "mem_used_bytes"];

/// The longest run of zero samples read as a measurement gap rather than idleness (see the
/// module doc): 90 % of the bundled trace's zero runs are this short.
pub const ZERO_GAP_MAX_SAMPLES: usize = 3;

/// The page size demand is rounded to.
const PAGE: u64 = 4096;

/// Why a trace could not be read. Line numbers count from 1, the header being line 1.
#[derive(Debug, Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file has no header (it is empty or blank).
    #[error("the trace is empty: expected the header {expected:?}", expected = HEADER.join(","))]
    Empty,
    /// The file has a header but no sample.
    #[error("the trace has a header but no samples")]
    NoSamples,
    /// The first line is not the expected header.
    #[error("line {line}: bad header {found:?}, expected {expected:?}", expected = HEADER.join(","))]
    BadHeader {
        /// The line.
        line: usize,
        /// What it held.
        found: String,
    },
    /// A row does not have four columns.
    #[error("line {line}: {found} columns, expected 4")]
    Columns {
        /// The line.
        line: usize,
        /// How many columns it had.
        found: usize,
    },
    /// A field is not a number of the expected kind.
    #[error("line {line}: {column} {value:?} is not {expected}")]
    NotANumber {
        /// The line.
        line: usize,
        /// The column's name.
        column: &'static str,
        /// The field's text.
        value: String,
        /// What the column takes.
        expected: &'static str,
    },
    /// A field is negative.
    #[error("line {line}: {column} {value:?} is negative")]
    Negative {
        /// The line.
        line: usize,
        /// The column's name.
        column: &'static str,
        /// The field's text.
        value: String,
    },
    /// A VM's capacity is zero: there is nothing to simulate.
    #[error("line {line}: VM {vm_id} has zero capacity")]
    ZeroCapacity {
        /// The line.
        line: usize,
        /// The VM.
        vm_id: u64,
    },
    /// Used memory exceeds capacity.
    #[error("line {line}: used memory {used} exceeds capacity {capacity}")]
    UsedOverCapacity {
        /// The line.
        line: usize,
        /// Used bytes.
        used: u64,
        /// Capacity bytes.
        capacity: u64,
    },
    /// A VM's sample times do not strictly increase.
    #[error(
        "line {line}: VM {vm_id} time {t_s} does not follow its previous sample at {previous_s}"
    )]
    TimeNotIncreasing {
        /// The line.
        line: usize,
        /// The VM.
        vm_id: u64,
        /// This sample's time.
        t_s: f64,
        /// The VM's previous sample's time.
        previous_s: f64,
    },
    /// A trace workload names a VM the trace does not have.
    #[error("the trace has no VM {vm_id}")]
    NoSuchVm {
        /// The id asked for.
        vm_id: u64,
    },
    /// An overhead setting is out of range.
    #[error("overhead percent {0} is not a finite number >= 0")]
    BadOverhead(f64),
}

/// One VM of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceVm {
    /// The VM's id in the trace.
    pub vm_id: u64,
    /// Its provisioned memory: the largest capacity of its rows (a few VMs' capacity
    /// drifts by a few percent, an averaging artefact; the maximum is the size it had).
    pub capacity: u64,
    /// `(t_s, used_bytes)` samples, times strictly increasing.
    pub samples: Vec<(f64, u64)>,
}

/// A parsed trace: its VMs in order of first appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// The VMs.
    pub vms: Vec<TraceVm>,
}

impl Trace {
    /// Reads a trace file.
    ///
    /// # Errors
    ///
    /// [`TraceError::Io`] if it cannot be read, otherwise as [`Trace::parse`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TraceError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses trace text (see the module doc for the format). Blank lines are skipped.
    ///
    /// # Errors
    ///
    /// A [`TraceError`] naming the first bad line.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let (line, header) = lines.next().ok_or(TraceError::Empty)?;
        let found: Vec<&str> = header.split(',').map(str::trim).collect();
        if found != HEADER {
            return Err(TraceError::BadHeader {
                line,
                found: header.to_owned(),
            });
        }
        let mut vms: Vec<TraceVm> = Vec::new();
        let mut index: HashMap<u64, usize> = HashMap::new();
        for (line, row) in lines {
            let fields: Vec<&str> = row.split(',').map(str::trim).collect();
            let [id, t, capacity, used] = fields[..] else {
                return Err(TraceError::Columns {
                    line,
                    found: fields.len(),
                });
            };
            let vm_id = parse_whole(line, HEADER[0], id)?;
            let t_s = parse_time(line, t)?;
            let capacity = parse_whole(line, HEADER[2], capacity)?;
            let used = parse_whole(line, HEADER[3], used)?;
            if capacity == 0 {
                return Err(TraceError::ZeroCapacity { line, vm_id });
            }
            if used > capacity {
                return Err(TraceError::UsedOverCapacity {
                    line,
                    used,
                    capacity,
                });
            }
            let at = *index.entry(vm_id).or_insert_with(|| {
                vms.push(TraceVm {
                    vm_id,
                    capacity: 0,
                    samples: Vec::new(),
                });
                vms.len() - 1
            });
            let vm = &mut vms[at];
            if let Some(&(previous_s, _)) = vm.samples.last() {
                if t_s <= previous_s {
                    return Err(TraceError::TimeNotIncreasing {
                        line,
                        vm_id,
                        t_s,
                        previous_s,
                    });
                }
            }
            vm.capacity = vm.capacity.max(capacity);
            vm.samples.push((t_s, used));
        }
        if vms.is_empty() {
            return Err(TraceError::NoSamples);
        }
        Ok(Self { vms })
    }

    /// The VM with this id.
    #[must_use]
    pub fn vm(&self, vm_id: u64) -> Option<&TraceVm> {
        self.vms.iter().find(|vm| vm.vm_id == vm_id)
    }

    /// How many samples all VMs have together.
    #[must_use]
    pub fn samples(&self) -> usize {
        self.vms.iter().map(|vm| vm.samples.len()).sum()
    }

    /// The sum of the VMs' capacities, bytes.
    #[must_use]
    pub fn total_capacity(&self) -> u64 {
        self.vms.iter().map(|vm| vm.capacity).sum()
    }

    /// The earliest and the latest sample time of any VM.
    #[must_use]
    pub fn time_range(&self) -> (f64, f64) {
        let first = self
            .vms
            .iter()
            .filter_map(|vm| vm.samples.first())
            .map(|s| s.0)
            .fold(f64::INFINITY, f64::min);
        let last = self
            .vms
            .iter()
            .filter_map(|vm| vm.samples.last())
            .map(|s| s.0)
            .fold(f64::NEG_INFINITY, f64::max);
        (first, last)
    }
}

/// A whole, non-negative number.
fn parse_whole(line: usize, column: &'static str, text: &str) -> Result<u64, TraceError> {
    text.parse::<u64>().map_err(|_| {
        if text.starts_with('-') && text[1..].parse::<f64>().is_ok() {
            TraceError::Negative {
                line,
                column,
                value: text.to_owned(),
            }
        } else {
            TraceError::NotANumber {
                line,
                column,
                value: text.to_owned(),
                expected: "a whole number",
            }
        }
    })
}

/// A finite, non-negative time.
fn parse_time(line: usize, text: &str) -> Result<f64, TraceError> {
    let column = HEADER[1];
    match text.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Ok(t) if t < 0.0 => Err(TraceError::Negative {
            line,
            column,
            value: text.to_owned(),
        }),
        _ => Err(TraceError::NotANumber {
            line,
            column,
            value: text.to_owned(),
            expected: "a finite number",
        }),
    }
}

/// The guest-OS overhead on top of a trace's active memory (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overhead {
    /// Fixed guest-OS memory, bytes; `None` for the default `min(256 MiB, capacity / 4)`.
    pub base: Option<u64>,
    /// Memory committed along with the working set, percent of active memory.
    pub percent: f64,
}

impl Default for Overhead {
    fn default() -> Self {
        Self {
            base: None,
            percent: Self::DEFAULT_PERCENT,
        }
    }
}

impl Overhead {
    /// The default proportional share, percent.
    pub const DEFAULT_PERCENT: f64 = 25.0;
    /// The default fixed guest-OS memory before the quarter-of-capacity cap.
    pub const DEFAULT_BASE: u64 = 256 * MIB;

    /// The fixed part for a VM of this capacity.
    #[must_use]
    pub fn base_for(&self, capacity: u64) -> u64 {
        self.base
            .unwrap_or_else(|| Self::DEFAULT_BASE.min(capacity / 4))
    }

    /// Committed memory for this active memory on a VM of this capacity (before rounding to
    /// pages).
    #[must_use]
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn committed(&self, capacity: u64, active: f64) -> f64 {
        let value = self.base_for(capacity) as f64 + active * (1.0 + self.percent / 100.0);
        value.min(capacity as f64)
    }
}

/// One trace VM as a guest: committed memory at any time, and the peak over a window.
///
/// [`TraceGuest::demand_at`] is a pure function of the time: queries may come in any
/// order. [`TraceGuest::peak_between`] answers in O(log n) from a sparse table over the
/// samples.
#[derive(Debug, Clone)]
pub struct TraceGuest {
    /// Sample times.
    times: Vec<f64>,
    /// Active memory at each sample, zero gaps filled.
    active: Vec<f64>,
    /// Committed memory at each sample, rounded to pages.
    committed: Vec<u64>,
    /// `table[k][i]` = max of `committed[i .. i + 2^k]`.
    table: Vec<Vec<u64>>,
    /// The VM's capacity.
    capacity: u64,
    /// The overhead model.
    overhead: Overhead,
}

impl TraceGuest {
    /// Builds the guest model of one trace VM.
    ///
    /// # Errors
    ///
    /// [`TraceError::BadOverhead`] for a negative or non-finite percent, and
    /// [`TraceError::NoSamples`] for a VM without samples.
    pub fn new(vm: &TraceVm, overhead: Overhead) -> Result<Self, TraceError> {
        if !(overhead.percent.is_finite() && overhead.percent >= 0.0) {
            return Err(TraceError::BadOverhead(overhead.percent));
        }
        if vm.samples.is_empty() {
            return Err(TraceError::NoSamples);
        }
        let times: Vec<f64> = vm.samples.iter().map(|s| s.0).collect();
        #[allow(clippy::cast_precision_loss)]
        let active: Vec<f64> = fill_zero_gaps(&vm.samples.iter().map(|s| s.1).collect::<Vec<_>>())
            .into_iter()
            .map(|u| u as f64)
            .collect();
        let committed: Vec<u64> = active
            .iter()
            .map(|&a| to_pages(overhead.committed(vm.capacity, a)))
            .collect();
        let mut table = vec![committed.clone()];
        let mut width = 1;
        while width * 2 <= committed.len() {
            let prev = &table[table.len() - 1];
            let next: Vec<u64> = (0..=committed.len() - width * 2)
                .map(|i| prev[i].max(prev[i + width]))
                .collect();
            table.push(next);
            width *= 2;
        }
        Ok(Self {
            times,
            active,
            committed,
            table,
            capacity: vm.capacity,
            overhead,
        })
    }

    /// The VM's capacity, bytes.
    #[must_use]
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Active memory at `t_s` (interpolated, held outside the samples), bytes.
    #[must_use]
    pub fn active_at(&self, t_s: f64) -> f64 {
        let n = self.times.len();
        // Index of the first sample after t.
        let after = self.times.partition_point(|&x| x <= t_s);
        if after == 0 {
            return self.active[0];
        }
        if after == n {
            return self.active[n - 1];
        }
        let (t0, t1) = (self.times[after - 1], self.times[after]);
        let (a0, a1) = (self.active[after - 1], self.active[after]);
        let w = (t_s - t0) / (t1 - t0);
        a0 + (a1 - a0) * w
    }

    /// Committed memory at `t_s`, bytes, whole pages. A NaN time reads as time 0.
    #[must_use]
    pub fn demand_at(&self, t_s: f64) -> u64 {
        let t_s = if t_s.is_nan() { 0.0 } else { t_s };
        to_pages(self.overhead.committed(self.capacity, self.active_at(t_s)))
    }

    /// The highest committed memory in `[t0, t1]` (the two swapped if reversed), bytes.
    ///
    /// Exact: committed memory is the minimum of the capacity and a linear function of
    /// active memory, which is linear between samples, so the peak is at an end or a
    /// sample.
    #[must_use]
    pub fn peak_between(&self, t0: f64, t1: f64) -> u64 {
        let (t0, t1) = if t1 < t0 { (t1, t0) } else { (t0, t1) };
        let ends = self.demand_at(t0).max(self.demand_at(t1));
        let lo = self.times.partition_point(|&x| x < t0);
        let hi = self.times.partition_point(|&x| x <= t1);
        if lo >= hi {
            return ends;
        }
        ends.max(self.range_max(lo, hi))
    }

    /// Max of `committed[lo..hi]`, `lo < hi`.
    fn range_max(&self, lo: usize, hi: usize) -> u64 {
        let len = hi - lo;
        let k = (usize::BITS - 1 - len.leading_zeros()) as usize;
        let row = &self.table[k];
        row[lo].max(row[hi - (1 << k)])
    }

    /// The committed memory at each sample (zero gaps filled), in sample order.
    #[must_use]
    pub fn sample_demands(&self) -> &[u64] {
        &self.committed
    }
}

/// Rounds a non-negative byte figure down to whole pages.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn to_pages(bytes: f64) -> u64 {
    // `as` saturates: negative or NaN become 0, huge values u64::MAX.
    let b = bytes as u64;
    b - b % PAGE
}

/// Replaces runs of at most [`ZERO_GAP_MAX_SAMPLES`] zeros with the previous non-zero value
/// (the next one for a run at the start); longer runs stay zero.
#[must_use]
pub fn fill_zero_gaps(used: &[u64]) -> Vec<u64> {
    let mut out = used.to_vec();
    let mut i = 0;
    while i < out.len() {
        if out[i] != 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < out.len() && out[i] == 0 {
            i += 1;
        }
        if i - start > ZERO_GAP_MAX_SAMPLES {
            continue;
        }
        let fill = if start > 0 {
            Some(out[start - 1])
        } else {
            out.get(i).copied()
        };
        if let Some(v) = fill {
            out[start..i].fill(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: &str = "vm_id,t_seconds,mem_capacity_bytes,mem_used_bytes\n";

    fn parse(rows: &str) -> Result<Trace, TraceError> {
        Trace::parse(&format!("{H}{rows}"))
    }

    #[test]
    fn parses_rows_grouped_by_vm() {
        let t = parse("1,0,100,10\n2,5,200,20\n1,300,120,30\n\n").unwrap();
        assert_eq!(t.vms.len(), 2);
        assert_eq!(t.vms[0].vm_id, 1);
        assert_eq!(t.vms[0].capacity, 120);
        assert_eq!(t.vms[0].samples, vec![(0.0, 10), (300.0, 30)]);
        assert_eq!(t.vms[1].samples, vec![(5.0, 20)]);
        assert_eq!(t.samples(), 3);
        assert_eq!(t.total_capacity(), 320);
        assert_eq!(t.time_range(), (0.0, 300.0));
        assert!(t.vm(2).is_some() && t.vm(3).is_none());
    }

    #[test]
    fn errors_name_the_line() {
        assert!(matches!(Trace::parse(""), Err(TraceError::Empty)));
        assert!(matches!(Trace::parse("\n \n"), Err(TraceError::Empty)));
        assert!(matches!(Trace::parse(H), Err(TraceError::NoSamples)));
        let e = Trace::parse("vm,t,cap,used\n1,0,1,1\n").unwrap_err();
        assert!(matches!(e, TraceError::BadHeader { line: 1, .. }), "{e}");
        let e = parse("1,0,100,10\n1,5,100\n").unwrap_err();
        assert!(
            matches!(e, TraceError::Columns { line: 3, found: 3 }),
            "{e}"
        );
        assert!(e.to_string().starts_with("line 3:"), "{e}");
        let e = parse("1,0,100,10,7\n").unwrap_err();
        assert!(
            matches!(e, TraceError::Columns { line: 2, found: 5 }),
            "{e}"
        );
        let e = parse("1,0,1e2,10\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::NotANumber {
                    line: 2,
                    column: "mem_capacity_bytes",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("x,0,100,10\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::NotANumber {
                    line: 2,
                    column: "vm_id",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("1,NaN,100,10\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::NotANumber {
                    line: 2,
                    column: "t_seconds",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("1,0,100,-10\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::Negative {
                    line: 2,
                    column: "mem_used_bytes",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("1,-3,100,10\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::Negative {
                    line: 2,
                    column: "t_seconds",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("1,0,100,10\n\n1,1,100,101\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::UsedOverCapacity {
                    line: 4,
                    used: 101,
                    capacity: 100
                }
            ),
            "{e}"
        );
        let e = parse("1,5,100,10\n2,1,100,10\n1,5,100,10\n").unwrap_err();
        assert!(
            matches!(
                e,
                TraceError::TimeNotIncreasing {
                    line: 4,
                    vm_id: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = parse("1,0,0,0\n").unwrap_err();
        assert!(
            matches!(e, TraceError::ZeroCapacity { line: 2, vm_id: 1 }),
            "{e}"
        );
    }

    #[test]
    fn zero_gaps_are_held_and_long_runs_kept() {
        assert_eq!(fill_zero_gaps(&[5, 0, 7]), vec![5, 5, 7]);
        assert_eq!(fill_zero_gaps(&[0, 0, 7, 0]), vec![7, 7, 7, 7]);
        assert_eq!(fill_zero_gaps(&[5, 0, 0, 0, 0, 6]), vec![5, 0, 0, 0, 0, 6]);
        assert_eq!(fill_zero_gaps(&[0, 0]), vec![0, 0]);
        assert_eq!(fill_zero_gaps(&[]), Vec::<u64>::new());
    }

    fn vm(samples: &[(f64, u64)], capacity: u64) -> TraceVm {
        TraceVm {
            vm_id: 1,
            capacity,
            samples: samples.to_vec(),
        }
    }

    #[test]
    fn guest_interpolates_and_applies_the_overhead() {
        let cap = 8 << 30;
        let g = TraceGuest::new(
            &vm(&[(100.0, 400 << 20), (400.0, 800 << 20)], cap),
            Overhead::default(),
        )
        .unwrap();
        // base 256 MiB + 1.25 × active.
        assert_eq!(g.demand_at(0.0), (256 << 20) + 500 * MIB);
        assert_eq!(g.demand_at(100.0), (256 << 20) + 500 * MIB);
        assert_eq!(g.demand_at(250.0), (256 << 20) + 750 * MIB);
        assert_eq!(g.demand_at(1e9), (256 << 20) + 1000 * MIB);
        assert_eq!(g.peak_between(0.0, 250.0), g.demand_at(250.0));
        assert_eq!(g.peak_between(0.0, 1e9), g.demand_at(400.0));
        // A tiny VM: the base is a quarter of it and demand is capped at capacity.
        let small = 128 << 20;
        let g = TraceGuest::new(&vm(&[(0.0, small)], small), Overhead::default()).unwrap();
        assert_eq!(g.demand_at(0.0), small);
        let g = TraceGuest::new(
            &vm(&[(0.0, 0), (1.0, 0), (2.0, 0), (3.0, 0)], small),
            Overhead::default(),
        )
        .unwrap();
        assert_eq!(g.demand_at(1.5), small / 4);
        let bad = Overhead {
            base: None,
            percent: -1.0,
        };
        assert!(TraceGuest::new(&vm(&[(0.0, 1)], small), bad).is_err());
    }

    proptest! {
        #[test]
        fn peak_is_the_max_of_sampled_demand(
            used in proptest::collection::vec(0u64..4 << 30, 1..40),
            a in 0.0f64..4000.0,
            b in 0.0f64..4000.0,
        ) {
            let samples: Vec<(f64, u64)> =
                used.iter().enumerate().map(|(i, &u)| (i as f64 * 100.0, u)).collect();
            let g = TraceGuest::new(&vm(&samples, 4 << 30), Overhead::default()).unwrap();
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let peak = g.peak_between(a, b);
            // At least every demand in the window, sampled densely.
            for i in 0..=200 {
                let t = lo + (hi - lo) * f64::from(i) / 200.0;
                prop_assert!(peak >= g.demand_at(t));
            }
            // And attained: at an end or a sample inside.
            let attained = g.demand_at(lo).max(g.demand_at(hi)).max(
                samples.iter().filter(|s| s.0 >= lo && s.0 <= hi)
                    .map(|s| g.demand_at(s.0)).max().unwrap_or(0));
            prop_assert_eq!(peak, attained);
            prop_assert!(peak <= 4 << 30);
        }
    }
}

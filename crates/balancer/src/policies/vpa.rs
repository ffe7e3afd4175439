//! `vpa`: the Kubernetes Vertical Pod Autoscaler's memory recommender, applied to VMs.
//!
//! Taken from VPA (`pkg/recommender/logic/recommender.go`, `model/aggregations_config.go`,
//! `util/histogram_options.go`):
//! - the sample is the **peak** of memory in each aggregation window, replaced while the
//!   window is open (VPA adds the peak and swaps it when a higher one arrives);
//! - samples go into an exponential-bucket histogram (first bucket 10 MB, 5% growth)
//!   whose weights decay with a **24 h half-life**;
//! - the target is the **P90** of that histogram (the end of its bucket) plus a **15%
//!   safety margin**;
//! - after an OOM the next sample is `max(memory x 1.2, memory + 100 MiB)`.
//!
//! Deviations, and why:
//! - the window is **5 minutes**, not VPA's 24 h: a VM's memory is rebalanced within
//!   seconds, not at pod restart, and with 24 h windows a two-day trace would give two
//!   samples;
//! - "OOM" is a shortfall: committed above assigned (the guest is paging); the bumped
//!   value is also a floor on the wish until the window ends, so the bump is not lost in
//!   the history's P90;
//! - no 250 MiB pod minimum: the VM's own minimum plays that part (the arbiter clamps);
//! - before any report the wish is the startup memory.

use super::{bytes, dt};
use crate::histogram::DecayingHistogram;
use crate::{Policy, Snapshot};

/// Aggregation window, seconds (VPA: 24 h; see the module doc).
pub const WINDOW_S: f64 = 300.0;
/// Histogram half-life, seconds (VPA's 24 h).
pub const HALF_LIFE_S: f64 = 86_400.0;
/// Percentile of window peaks that is the target (VPA's target estimator: P90).
pub const TARGET_PERCENTILE: f64 = 0.9;
/// Margin over the percentile (VPA's `safetyMarginFraction`, 15%).
pub const SAFETY_MARGIN: f64 = 1.15;
/// OOM bump ratio (VPA's `oomBumpUpRatio`).
pub const OOM_BUMP_RATIO: f64 = 1.2;
/// OOM minimum bump, bytes (VPA's `oomMinBumpUp`, 100 MiB).
pub const OOM_MIN_BUMP: u64 = 100 << 20;

#[derive(Debug, Clone)]
struct VmHistory {
    hist: DecayingHistogram,
    window_start: Option<f64>,
    window_peak: u64,
    /// A shortfall's bumped value and when that floor ends.
    bump: Option<(u64, f64)>,
}

impl Default for VmHistory {
    fn default() -> Self {
        VmHistory {
            hist: DecayingHistogram::new(HALF_LIFE_S),
            window_start: None,
            window_peak: 0,
            bump: None,
        }
    }
}

/// The VPA recommender, one history per VM.
#[derive(Debug, Clone, Default)]
pub struct Vpa {
    vms: Vec<VmHistory>,
}

impl Policy for Vpa {
    fn name(&self) -> &'static str {
        "vpa"
    }

    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64> {
        let now = snap.host.now_s;
        self.vms.resize_with(snap.vms.len(), VmHistory::default);
        snap.vms
            .iter()
            .zip(self.vms.iter_mut())
            .map(|(vm, h)| {
                let Some(c) = vm.committed else {
                    return vm.settings.startup;
                };
                match h.window_start {
                    None => h.window_start = Some(now),
                    Some(start) if dt(now, start) >= WINDOW_S => {
                        h.hist.add(h.window_peak, now);
                        h.window_start = Some(now);
                        h.window_peak = 0;
                    }
                    Some(_) => {}
                }
                h.window_peak = h.window_peak.max(c);
                if c > vm.assigned {
                    let bumped =
                        bytes(c as f64 * OOM_BUMP_RATIO).max(c.saturating_add(OOM_MIN_BUMP));
                    h.window_peak = h.window_peak.max(bumped);
                    h.bump = Some((bumped, now + WINDOW_S));
                }
                let p = h
                    .hist
                    .percentile(TARGET_PERCENTILE, Some(h.window_peak))
                    .unwrap_or(h.window_peak);
                let mut wish = bytes(p as f64 * SAFETY_MARGIN);
                match h.bump {
                    // A NaN end never compares as passed: the floor then lasts until the
                    // next shortfall replaces it, which errs on the safe side.
                    Some((floor, until)) if now.partial_cmp(&until).is_none_or(|o| o.is_lt()) => {
                        wish = wish.max(floor)
                    }
                    Some(_) => h.bump = None,
                    None => {}
                }
                wish
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{snap, vm};

    const GIB: u64 = 1 << 30;

    fn run(vpa: &mut Vpa, t: f64, committed: u64, assigned: u64) -> u64 {
        let mut v = vm(GIB);
        v.committed = Some(committed);
        v.assigned = assigned;
        let mut s = snap(vec![v], 1000 * GIB, 500 * GIB);
        s.host.now_s = t;
        vpa.wishes(&s)[0]
    }

    #[test]
    fn startup_before_any_report() {
        let s = snap(vec![vm(3 * GIB)], 100 * GIB, 50 * GIB);
        assert_eq!(Vpa::default().wishes(&s), vec![3 * GIB]);
    }

    #[test]
    fn p90_of_window_peaks_with_margin() {
        let mut vpa = Vpa::default();
        // Ten windows, each with a 1 GiB dip and a peak of 2 GiB in one.
        let mut t = 0.0;
        for w in 0..10 {
            let peak = if w == 3 { 2 * GIB } else { GIB };
            run(&mut vpa, t, GIB / 2, 4 * GIB);
            run(&mut vpa, t + 100.0, peak, 4 * GIB);
            t += WINDOW_S;
        }
        let wish = run(&mut vpa, t, GIB / 2, 4 * GIB);
        // The single 2 GiB window is above P90 of eleven samples: the target is about
        // 1 GiB x 1.15, within the histogram's 5% bucket.
        assert!(wish >= GIB * 115 / 100, "{wish}");
        assert!(wish <= GIB * 115 * 106 / 10_000, "{wish}");
    }

    #[test]
    fn shortfall_bumps_the_next_wish() {
        let mut vpa = Vpa::default();
        for k in 0..20 {
            run(&mut vpa, f64::from(k) * WINDOW_S, GIB, 4 * GIB);
        }
        let t = 20.0 * WINDOW_S + 10.0;
        let wish = run(&mut vpa, t, 2 * GIB, GIB);
        assert!(wish >= 2 * GIB * 12 / 10, "{wish}");
        // The floor holds for the rest of the window, then history takes over again.
        let wish = run(&mut vpa, t + 10.0, GIB, 4 * GIB);
        assert!(wish >= 2 * GIB * 12 / 10, "{wish}");
    }
}

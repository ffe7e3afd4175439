//! `ballast`: the project's own policy. Headroom per VM from that VM's own volatility,
//! instead of one buffer percentage for all.
//!
//! Hyper-V keeps `buffer` percent (20%) of committed memory free in every VM, always: too
//! much for a VM whose demand is flat, too little for one that jumps. Alibaba's Eigen+
//! found that a few volatile instances cause most memory errors; Google's Autopilot sizes
//! from decaying peaks. This policy combines both ideas with rules that hold for any
//! workload:
//!
//! - **level**: the highest committed memory of the last [`HOLD_S`] seconds. Memory just
//!   freed is kept that long (demand that dips often comes back); slack older than that
//!   is given back at once, so long-unused memory is reclaimed faster than memory just
//!   freed.
//! - **rise**: how far demand climbed above the level within [`RISE_WINDOW_S`], sampled
//!   per window into a decaying histogram (the VPA structure, half-life
//!   [`RISE_HALF_LIFE_S`]); its [`RISE_PERCENTILE`] is what the VM usually needs beyond
//!   its level before the balancer can react. A recent large rise counts too, fading
//!   with [`RECENT_HALF_LIFE_S`], so a VM that just jumped is not trusted at once.
//! - **trend**: the gap between a fast and a slow moving average of committed memory is
//!   the slope; when rising, [`LEAD_S`] seconds of it are granted ahead.
//!
//! Wish = level + max([`FLOOR`], [`PERCENT`] of committed, rise) + lead.

use std::collections::VecDeque;

use super::{bytes, dt, scale};
use crate::histogram::DecayingHistogram;
use crate::{Policy, Snapshot};

const MIB: u64 = 1 << 20;

/// Smallest headroom, bytes: below this, a DM operation costs more than the memory it
/// saves, and a guest's page cache needs a little room to breathe.
pub const FLOOR: u64 = 64 * MIB;
/// Headroom as a share of committed memory, percent: a quarter of Hyper-V's default
/// buffer, enough for the allocation noise of a steady guest.
pub const PERCENT: u64 = 5;
/// How long freed memory is kept before it is given back, seconds: two samples of a
/// typical 5-minute monitoring interval, so one low sample does not release memory.
pub const HOLD_S: f64 = 600.0;
/// Window over which a rise above the level is measured, seconds: a minute is longer than
/// the balancer needs to react (a tick plus a hot-add), so the rise it sees is what
/// headroom must cover.
pub const RISE_WINDOW_S: f64 = 60.0;
/// Percentile of per-window rises covered by headroom: most rises, not every outlier (the
/// recent-rise term covers a burst that is still going on).
pub const RISE_PERCENTILE: f64 = 0.95;
/// Half-life of the rise history, seconds: six hours, long enough to remember the last
/// busy period of the day, short enough to forget a workload that changed.
pub const RISE_HALF_LIFE_S: f64 = 6.0 * 3600.0;
/// Half-life of the recent-rise term, seconds.
pub const RECENT_HALF_LIFE_S: f64 = 1800.0;
/// Time constants of the fast and slow averages behind the trend, seconds.
pub const FAST_TAU_S: f64 = 60.0;
/// See [`FAST_TAU_S`].
pub const SLOW_TAU_S: f64 = 300.0;
/// How far ahead a rising trend is granted, seconds.
pub const LEAD_S: f64 = 120.0;
/// Most samples kept for the level, a bound on memory per VM whatever the tick rate (the
/// level is then the maximum of a slightly shorter span, which errs towards keeping).
const MAX_LEVEL_SAMPLES: usize = 4096;

#[derive(Debug, Clone)]
struct VmHistory {
    last_s: Option<f64>,
    /// Decreasing committed values with their times: the front is the level.
    level: VecDeque<(f64, u64)>,
    fast: f64,
    slow: f64,
    rises: DecayingHistogram,
    window_start: f64,
    /// The level when the window opened, and the highest committed seen in it.
    window_base: u64,
    window_peak: u64,
    recent: f64,
}

impl Default for VmHistory {
    fn default() -> Self {
        VmHistory {
            last_s: None,
            level: VecDeque::new(),
            fast: 0.0,
            slow: 0.0,
            rises: DecayingHistogram::new(RISE_HALF_LIFE_S),
            window_start: 0.0,
            window_base: 0,
            window_peak: 0,
            recent: 0.0,
        }
    }
}

impl VmHistory {
    fn level(&self) -> Option<u64> {
        self.level.front().map(|&(_, v)| v)
    }

    fn observe(&mut self, now: f64, c: u64) -> u64 {
        let cf = c as f64;
        let Some(last) = self.last_s else {
            self.last_s = Some(now);
            self.level.push_back((now, c));
            self.fast = cf;
            self.slow = cf;
            self.window_start = now;
            self.window_base = c;
            self.window_peak = c;
            return self.wish(c);
        };
        let step = dt(now, last);
        if now.is_finite() {
            self.last_s = Some(now);
        }
        // The level before this sample, with expired samples dropped.
        while self
            .level
            .front()
            .is_some_and(|&(t, _)| dt(now, t) > HOLD_S)
        {
            self.level.pop_front();
        }
        let before = self.level().unwrap_or(c);

        // Rise windows.
        if dt(now, self.window_start) >= RISE_WINDOW_S {
            let rise = self.window_peak.saturating_sub(self.window_base);
            self.rises.add(rise, now);
            self.window_start = now;
            self.window_base = before;
            self.window_peak = c;
        } else {
            self.window_peak = self.window_peak.max(c);
        }
        let rise_now = self.window_peak.saturating_sub(self.window_base) as f64;
        self.recent = (self.recent * (-step / RECENT_HALF_LIFE_S).exp2()).max(rise_now);

        // Level: keep the deque decreasing so its front is the maximum.
        while self.level.back().is_some_and(|&(_, v)| v <= c) {
            self.level.pop_back();
        }
        self.level.push_back((now, c));
        if self.level.len() > MAX_LEVEL_SAMPLES {
            self.level.pop_front();
        }

        // Trend.
        self.fast += (1.0 - (-step / FAST_TAU_S).exp()) * (cf - self.fast);
        self.slow += (1.0 - (-step / SLOW_TAU_S).exp()) * (cf - self.slow);
        self.wish(c)
    }

    fn wish(&self, c: u64) -> u64 {
        let level = self.level().unwrap_or(c).max(c);
        let open_rise = self.window_peak.saturating_sub(self.window_base);
        let rise = self
            .rises
            .percentile(RISE_PERCENTILE, Some(open_rise))
            .unwrap_or(0)
            .max(bytes(self.recent));
        // With a linear rise of slope s, fast - slow settles at s x (slow - fast taus).
        let slope = (self.fast - self.slow) / (SLOW_TAU_S - FAST_TAU_S);
        let lead = bytes(slope * LEAD_S);
        let headroom = FLOOR.max(scale(c, PERCENT, 100)).max(rise);
        level.saturating_add(headroom).saturating_add(lead)
    }
}

/// The ballast policy, one history per VM.
#[derive(Debug, Clone, Default)]
pub struct Ballast {
    vms: Vec<VmHistory>,
}

impl Policy for Ballast {
    fn name(&self) -> &'static str {
        "ballast"
    }

    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64> {
        let now = snap.host.now_s;
        self.vms.resize_with(snap.vms.len(), VmHistory::default);
        snap.vms
            .iter()
            .zip(self.vms.iter_mut())
            .map(|(vm, h)| match vm.committed {
                Some(c) => h.observe(now, c),
                None => vm.settings.startup,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{snap, vm};

    const GIB: u64 = 1 << 30;

    fn feed(p: &mut Ballast, t: f64, c: u64) -> u64 {
        let mut v = vm(GIB);
        v.committed = Some(c);
        let mut s = snap(vec![v], 1000 * GIB, 500 * GIB);
        s.host.now_s = t;
        p.wishes(&s)[0]
    }

    #[test]
    fn steady_vm_gets_far_less_than_hyperv_buffer() {
        let mut p = Ballast::default();
        let mut w = 0;
        for k in 0..2000 {
            w = feed(&mut p, f64::from(k) * 5.0, 4 * GIB);
        }
        // 5% over 4 GiB, where Hyper-V would keep 20%.
        assert_eq!(w, 4 * GIB + 4 * GIB / 20);
    }

    #[test]
    fn volatile_vm_gets_headroom_for_its_jumps() {
        let mut p = Ballast::default();
        let mut w = 0;
        // Demand jumps between 1 and 3 GiB every 5 minutes, for 6 hours.
        for k in 0..4320 {
            let c = if (k / 60) % 2 == 0 { GIB } else { 3 * GIB };
            w = feed(&mut p, f64::from(k) * 5.0, c);
        }
        // Whatever the phase, the wish covers the next jump to 3 GiB.
        assert!(w >= 3 * GIB, "{w}");
    }

    #[test]
    fn freed_memory_is_held_then_released() {
        let mut p = Ballast::default();
        for k in 0..100 {
            feed(&mut p, f64::from(k) * 5.0, 4 * GIB);
        }
        let t0 = 500.0;
        let held = feed(&mut p, t0, GIB);
        assert!(held >= 4 * GIB, "just freed memory is kept: {held}");
        let mut w = held;
        let mut k = 1;
        while f64::from(k) * 5.0 <= HOLD_S + 10.0 {
            w = feed(&mut p, t0 + f64::from(k) * 5.0, GIB);
            k += 1;
        }
        assert!(
            w < 2 * GIB,
            "slack unused for the hold time is released: {w}"
        );
    }

    #[test]
    fn rising_trend_is_granted_ahead() {
        let mut p = Ballast::default();
        let mut w = 0;
        let mut c = GIB;
        // A steady ramp of 1 MiB/s.
        for k in 0..600 {
            c = GIB + k * MIB;
            w = feed(&mut p, k as f64, c);
        }
        let plain = c + FLOOR.max(c / 20);
        assert!(
            w > plain + 60 * MIB,
            "lead of about {LEAD_S} s of slope: {w} vs {plain}"
        );
    }

    #[test]
    fn startup_before_report_and_extremes() {
        let s = snap(vec![vm(3 * GIB)], 100 * GIB, 50 * GIB);
        assert_eq!(Ballast::default().wishes(&s), vec![3 * GIB]);
        let mut p = Ballast::default();
        for t in [f64::NAN, 0.0, f64::INFINITY, -5.0, 1e300] {
            for c in [0, u64::MAX, 1, u64::MAX / 2] {
                let _ = feed(&mut p, t, c);
            }
        }
    }
}

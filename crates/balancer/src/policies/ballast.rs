//! `ballast`: the project's own policy. Headroom per VM from that VM's own volatility,
//! instead of one buffer percentage for all.
//!
//! Hyper-V keeps `buffer` percent (20%) of committed memory free in every VM, always: too
//! much for a VM whose demand is flat, too little for one that climbs fast, and wasted on
//! a spiky VM at the top of a spike. Alibaba's Eigen+ found that a few volatile instances
//! cause most memory errors; Google's Autopilot sizes from decaying peaks. This policy
//! turns both ideas into rules that hold for any workload:
//!
//! - **level**: the highest committed memory of the last [`HOLD_S`] seconds. Memory just
//!   freed is kept that long (a dip between two reports often comes back); slack older
//!   than that is given back at once, while the arbiter paces the reclaim.
//! - **jump**: how far demand climbed in one report interval, the largest of each
//!   [`PEAK_WINDOW_S`] window sampled into a decaying histogram (the VPA structure,
//!   half-life [`RISE_HALF_LIFE_S`]); its [`RISE_PERCENTILE`] is how much the VM may need
//!   beyond its level before the balancer can react. A rise that goes on for longer is
//!   followed by grants as it happens (the trend term), so only the first interval of it
//!   must already be there. A recent large jump counts too, fading with
//!   [`RECENT_HALF_LIFE_S`], so a VM that just jumped is not trusted at once.
//! - **usual peak**: the [`PEAK_PERCENTILE`] of the VM's 5-minute demand peaks (decaying,
//!   half-life [`PEAK_HALF_LIFE_S`]). Jump headroom is only kept up to it: a spiky VM
//!   low in its range keeps room to climb back, one at the top of a spike gets no extra.
//!   Rises above the usual peak are too rare to pay for holding the memory all the time
//!   (the newsvendor rule).
//! - **trend**: a rise sustained over two report intervals is a ramp. While it lasts, the
//!   time it takes to follow it (the report's age plus one interval) is covered at its
//!   rate, and [`LEAD_S`] seconds of the slope (the gap between a fast and a slow moving
//!   average of demand) are granted ahead, both by at most what the ramp climbed within
//!   [`RAMP_WINDOW_S`]. One jump is not a ramp: a step in demand costs no lead.
//!
//! Wish = level + max([`FLOOR`], [`PERCENT`] of committed, min(jump, usual peak - level))
//! + lead (0 unless on a ramp). Before the first report: the startup memory.
//!
//! A wish that falls short of the VM's maximum by less than the arbiter would move is
//! raised to the maximum (see `reachable`).
//!
//! Freed memory thus goes back in two speeds: slack on a calm VM returns after
//! [`HOLD_S`] and the arbiter's 30 s hold; slack a volatile VM keeps under its usual
//! peak returns only as that VM's history calms down (the peak half-life), i.e. memory
//! that has stayed unused for long goes faster than memory that was just freed by a VM
//! that often needs it back.

use std::collections::VecDeque;

use super::{bytes, dt, scale};
use crate::histogram::DecayingHistogram;
use crate::{Policy, Rules, Snapshot, VmSnapshot};

const MIB: u64 = 1 << 20;

/// Smallest headroom, bytes: room for the allocation noise of the smallest guests. Not
/// larger: with many small VMs a fixed floor adds up, and the jump estimate already gives
/// a small VM that jumps what it needs.
pub const FLOOR: u64 = 16 * MIB;
/// Headroom as a share of committed memory, percent: a quarter of Hyper-V's default
/// buffer, enough for the allocation noise of a steady guest.
pub const PERCENT: u64 = 5;
/// How long freed memory is kept at least, seconds: long enough that the jitter of one
/// report does not cost a balloon and an unballoon, short enough that a burst's memory
/// goes back soon after it ends (grants are quick: a second or two through the stack, so
/// holding memory for longer buys little).
pub const HOLD_S: f64 = 5.0;
/// Window over which a ramp's climb above the level is measured, seconds: the lead granted
/// ahead of a ramp is at most that climb, so a burst that rose in seconds is not taken
/// for a ramp that goes on at that pace.
pub const RAMP_WINDOW_S: f64 = 60.0;
/// Percentile of the windows' largest jumps covered by headroom: most windows' jumps, not
/// every outlier (the recent-jump term covers a VM that is jumping now).
pub const RISE_PERCENTILE: f64 = 0.95;
/// Half-life of the jump history, seconds: six hours, long enough to remember the last
/// busy period of the day, short enough to forget a workload that changed.
pub const RISE_HALF_LIFE_S: f64 = 6.0 * 3600.0;
/// Half-life of the recent-jump term, seconds: a busy period is expected to go on for
/// about half an hour.
pub const RECENT_HALF_LIFE_S: f64 = 1800.0;
/// Window of the demand peaks behind the usual peak, and of the jumps, seconds: the
/// monitoring interval of most fleets (and of the public traces).
pub const PEAK_WINDOW_S: f64 = 300.0;
/// Percentile of window peaks jump headroom reaches up to. It is the newsvendor's
/// critical ratio: holding a byte through a window pays off if the window's peak
/// exceeds it with a probability above the cost of holding relative to the cost of
/// missing. A missed byte costs paging only until the next grant lands, a second or two,
/// so the ratio sits below the median: room is kept for peaks that come in most windows,
/// not for the occasional one.
pub const PEAK_PERCENTILE: f64 = 0.4;
/// Half-life of the peak history, seconds (as [`RISE_HALF_LIFE_S`]).
pub const PEAK_HALF_LIFE_S: f64 = 6.0 * 3600.0;
/// Time constant of the fast average behind the trend, seconds.
pub const FAST_TAU_S: f64 = 60.0;
/// Time constant of the slow average behind the trend, seconds.
pub const SLOW_TAU_S: f64 = 300.0;
/// How far ahead a rising trend is granted, seconds: a few reaction times, so a grant
/// bounded by the arbiter's step is under way before the demand arrives (capped by how
/// far the ramp has climbed in the current window).
pub const LEAD_S: f64 = 20.0;
/// Shortest interval a rise rate is computed over, seconds: two reports a few
/// milliseconds apart must not make a rate out of noise.
const MIN_RATE_INTERVAL_S: f64 = 1.0;
/// Most samples kept for the level, a bound on memory per VM whatever the tick rate (the
/// level is then the maximum of a slightly shorter span).
const MAX_LEVEL_SAMPLES: usize = 4096;

#[derive(Debug, Clone)]
struct VmHistory {
    /// Time of the last report seen.
    last_s: Option<f64>,
    /// Decreasing committed values with their times: the front is the level.
    level: VecDeque<(f64, u64)>,
    /// Fast and slow moving averages of committed memory, bytes.
    fast: f64,
    slow: f64,
    /// The ramp window: its start, the level when it opened and the highest committed
    /// seen in it.
    window_start: f64,
    window_base: u64,
    window_peak: u64,
    /// Per-window largest jumps, and the largest of the open window.
    jumps: DecayingHistogram,
    window_jump: u64,
    /// The largest recent jump, decaying, bytes.
    recent: f64,
    /// Per-window demand peaks, the open window's start and peak.
    peaks: DecayingHistogram,
    peak_start: f64,
    peak: u64,
    /// The last committed value.
    last_c: u64,
    /// Rise rates of the last two intervals, bytes per second (0 if not rising).
    rates: [f64; 2],
    /// The interval between the last two samples, seconds.
    step_s: f64,
    /// The age of the last report when it was read, seconds.
    age_s: f64,
}

impl Default for VmHistory {
    fn default() -> Self {
        VmHistory {
            last_s: None,
            level: VecDeque::new(),
            fast: 0.0,
            slow: 0.0,
            window_start: 0.0,
            window_base: 0,
            window_peak: 0,
            jumps: DecayingHistogram::new(RISE_HALF_LIFE_S),
            window_jump: 0,
            recent: 0.0,
            peaks: DecayingHistogram::new(PEAK_HALF_LIFE_S),
            peak_start: 0.0,
            peak: 0,
            last_c: 0,
            rates: [0.0; 2],
            step_s: 0.0,
            age_s: 0.0,
        }
    }
}

impl VmHistory {
    fn level(&self) -> Option<u64> {
        self.level.front().map(|&(_, v)| v)
    }

    /// Takes a report of `c` bytes read at `now`, `age_s` seconds after it was made.
    fn observe(&mut self, now: f64, c: u64, age_s: f64) -> u64 {
        let cf = c as f64;
        self.age_s = if age_s.is_finite() {
            age_s.max(0.0)
        } else {
            0.0
        };
        let Some(last) = self.last_s else {
            self.last_s = Some(now);
            self.level.push_back((now, c));
            self.fast = cf;
            self.slow = cf;
            self.window_start = now;
            self.window_base = c;
            self.window_peak = c;
            self.peak_start = now;
            self.peak = c;
            self.last_c = c;
            return self.wish(c);
        };
        let step = dt(now, last);
        if step > 0.0 {
            let rate = c.saturating_sub(self.last_c) as f64 / step.max(MIN_RATE_INTERVAL_S);
            self.rates = [self.rates[1], rate];
            self.step_s = step;
        }
        // The jump is what demand climbed since the last report: what headroom must hold
        // for the balancer to be in time. A longer climb within a window (a burst that
        // rises over a few reports) is not all needed at once: after its first interval
        // grants follow it, the trend term covering their delay.
        let jump = c.saturating_sub(self.last_c);
        self.last_c = c;
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

        // Ramp windows.
        if dt(now, self.window_start) >= RAMP_WINDOW_S {
            self.window_start = now;
            self.window_base = before;
            self.window_peak = c;
        } else {
            self.window_peak = self.window_peak.max(c);
        }
        // Peak windows. Jumps are kept as each window's largest, not one sample per
        // report: a VM that steps once a window has one jump among hundreds of quiet
        // intervals, which a percentile of intervals would ignore, yet the step comes in
        // every window and the room for it is needed in every one.
        if dt(now, self.peak_start) >= PEAK_WINDOW_S {
            self.peaks.add(self.peak, now);
            self.jumps.add(self.window_jump, now);
            self.peak_start = now;
            self.peak = c;
            self.window_jump = jump;
        } else {
            self.peak = self.peak.max(c);
            self.window_jump = self.window_jump.max(jump);
        }
        self.recent = (self.recent * (-step / RECENT_HALF_LIFE_S).exp2()).max(jump as f64);

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
        let jump = self
            .jumps
            .percentile(RISE_PERCENTILE, Some(self.window_jump))
            .unwrap_or(0)
            .max(bytes(self.recent));
        // With a linear rise of slope s, fast - slow settles at s x (slow - fast taus).
        let slope = (self.fast - self.slow) / (SLOW_TAU_S - FAST_TAU_S);
        // A rise sustained over two intervals is a ramp (one jump is not): cover the
        // reaction time at its slower rate, and grant the trend ahead while it lasts.
        let sustained = self.rates[0].min(self.rates[1]);
        let lead = if sustained > 0.0 {
            // The reaction time is the report's age (the ramp has gone on since it was
            // made) plus one interval (until the grant made on the next report), the
            // grant itself landing within the tick. Not more: the arbiter holds a grant
            // for its reclaim hold once the ramp stops, so every second of ramp covered
            // beyond the reaction time is paid for that long.
            let ramp = sustained * (self.age_s + self.step_s);
            // A ramp is granted ahead by at most as far as it has climbed in this
            // window: a burst that rose in seconds is not taken for a ramp that goes on
            // at that pace.
            let climbed = self.window_peak.saturating_sub(self.window_base);
            bytes(slope * LEAD_S).max(bytes(ramp)).min(climbed)
        } else {
            0
        };
        let usual_peak = self
            .peaks
            .percentile(PEAK_PERCENTILE, Some(self.peak))
            .unwrap_or(c);
        let jump = jump.min(usual_peak.saturating_sub(level));
        let headroom = FLOOR.max(scale(c, PERCENT, 100)).max(jump);
        level.saturating_add(headroom).saturating_add(lead)
    }
}

/// `wish`, raised to the VM's maximum when it falls short of it by no more than the
/// arbiter moves a target (its minimum change and its grant band).
///
/// The arbiter skips a change smaller than its minimum, so a target that lands just below
/// the maximum stays there once demand reaches the maximum (the wish is then clamped to the
/// maximum, a change too small to make): the VM pages by that difference for as long as it
/// stays at its maximum, which in a trace of VMs at their provisioned size is hours.
/// Granting the last few MiB costs nothing beside that.
fn reachable(wish: u64, vm: &VmSnapshot, rules: &Rules) -> u64 {
    let max = vm.settings.maximum.max(vm.settings.minimum);
    let gap = rules
        .min_change
        .of(vm.target)
        .max(rules.grant_band.of(vm.target));
    if wish < max && max - wish <= gap {
        max
    } else {
        wish
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
        let rules = self.rules();
        self.vms.resize_with(snap.vms.len(), VmHistory::default);
        snap.vms
            .iter()
            .zip(self.vms.iter_mut())
            .map(|(vm, h)| match vm.committed {
                Some(c) => reachable(h.observe(now, c, vm.report_age_s), vm, &rules),
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
        feed_aged(p, t, c, 0.0)
    }

    /// A report of `c` made `age` seconds before `t`.
    fn feed_aged(p: &mut Ballast, t: f64, c: u64, age: f64) -> u64 {
        let mut v = vm(GIB);
        v.committed = Some(c);
        v.report_age_s = age;
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

    /// Six hours of a VM that sits at 1 GiB and goes to 3 GiB in `high` of every `of`
    /// 5-minute windows; returns the wish at the end of a low window and at the end of a
    /// high one.
    fn spiky(high: u32, of: u32) -> (u64, u64) {
        let mut p = Ballast::default();
        let (mut low_wish, mut high_wish) = (0, 0);
        for k in 0..4320u32 {
            let window = k / 60;
            let is_high = window % of < high;
            let c = if is_high { 3 * GIB } else { GIB };
            let w = feed(&mut p, f64::from(k) * 5.0, c);
            if k % 60 == 59 {
                if is_high {
                    high_wish = w;
                } else {
                    low_wish = w;
                }
            }
        }
        (low_wish, high_wish)
    }

    #[test]
    fn volatile_vm_keeps_room_for_its_usual_peaks() {
        // 3 GiB in three windows of four: between the peaks most of the room to get back
        // is kept (Hyper-V would keep 1.2 GiB), as the recent 2 GiB rise fades.
        let (low, _) = spiky(3, 4);
        assert!(low >= 2 * GIB, "{low}");
    }

    #[test]
    fn rare_spikes_are_not_provisioned_for_all_the_time() {
        // 3 GiB in one window of ten: in between, the wish stays far below the spike.
        let (low, high) = spiky(1, 10);
        assert!(low < 3 * GIB / 2, "{low}");
        // And at the top of a spike there is no more than the percentage of headroom.
        assert!(high <= 3 * GIB + 3 * GIB / 20 + 16 * MIB, "{high}");
    }

    #[test]
    fn a_ramp_is_covered_before_the_averages_see_it() {
        let mut p = Ballast::default();
        for k in 0..200 {
            feed(&mut p, f64::from(k) * 5.0, GIB);
        }
        // 10 MiB/s from t = 1000 s; three ticks later the averages have barely moved.
        // Each report is read a tick after it was made.
        let mut w = 0;
        let mut c = GIB;
        for k in 1..=3 {
            c = GIB + k * 50 * MIB;
            w = feed_aged(&mut p, 1000.0 + k as f64 * 5.0, c, 5.0);
        }
        // The 10 s reaction time (the report's age and a tick) at 10 MiB/s is covered
        // above the usual headroom.
        assert!(w >= c + c / 20 + 100 * MIB, "{w} for {c}");
    }

    #[test]
    fn a_ramp_is_covered_for_the_reaction_time_not_more() {
        // 1 s ticks, reports a tick old (as the simulator's): a ramp of 100 MiB/s for
        // 30 s after an hour at 2 GiB.
        let mut p = Ballast::default();
        for k in 0..3600 {
            feed_aged(&mut p, f64::from(k), 2 * GIB, 1.0);
        }
        let mut w = 0;
        let mut c = 2 * GIB;
        for k in 1..=30u64 {
            c = 2 * GIB + k * 100 * MIB;
            w = feed_aged(&mut p, 3600.0 + k as f64, c, 1.0);
        }
        let plain = c + c / 20;
        // Two seconds of the ramp (the report's age and a tick) are covered, not ten: the
        // grant lands within the tick, and what is granted beyond is held for the
        // arbiter's reclaim hold once the ramp stops.
        assert!(w >= plain + 200 * MIB, "{w} vs {plain}");
        assert!(w <= plain + 300 * MIB, "{w} vs {plain}");
    }

    /// Half an hour of 1 s ticks (reports a tick old) of a VM at 1 GiB that every 90 s
    /// climbs 900 MiB over three reports, stays there 20 s and falls back; returns the
    /// wish at the end of the last quiet period.
    fn bursts_of_three_reports() -> u64 {
        let mut p = Ballast::default();
        let mut w = 0;
        for k in 0..1800u64 {
            let phase = k % 90;
            let c = match phase {
                0 => GIB,
                1..=3 => GIB + phase * 300 * MIB,
                4..=23 => GIB + 900 * MIB,
                _ => GIB,
            };
            w = feed_aged(&mut p, k as f64, c, 1.0);
        }
        w
    }

    #[test]
    fn a_burst_keeps_room_for_one_report_not_the_whole_climb() {
        let w = bursts_of_three_reports();
        // Room for the first report's 300 MiB: the rest of the climb is granted as it
        // comes (the ramp term), so it need not be held between the bursts.
        assert!(w >= GIB + 300 * MIB, "{w}");
        assert!(w < GIB + 600 * MIB, "{w}");
    }

    #[test]
    fn a_step_once_a_window_is_covered_in_every_window() {
        // 5 s ticks, six hours of a VM at 1 GiB that steps to 2 GiB for a minute every
        // 5 minutes: one jump in sixty reports. At the end of a quiet period the room to
        // step up is kept (the jumps are each window's largest, not one sample per
        // report, of which the jumps would be under 2%).
        let mut p = Ballast::default();
        let mut w = 0;
        for k in 0..4319u32 {
            let c = if k % 60 < 12 { 2 * GIB } else { GIB };
            w = feed_aged(&mut p, f64::from(k) * 5.0, c, 5.0);
        }
        assert!(w >= 2 * GIB, "{w}");
    }

    #[test]
    fn a_wish_just_below_the_maximum_is_raised_to_it() {
        let mut b = crate::Balancer::by_name("ballast").unwrap();
        let mut v = vm(3 * GIB);
        v.settings.maximum = 4 * GIB;
        let mut s = snap(vec![v], 100 * GIB, 50 * GIB);
        // 3.8 GiB plus 5% falls 10 MiB short of the maximum; then demand reaches it.
        for (k, c) in [3891 * MIB, 4 * GIB, 4 * GIB].into_iter().enumerate() {
            s.host.now_s = k as f64 * 5.0;
            s.vms[0].committed = Some(c);
            for ch in b.tick(&s).changes {
                s.vms[0].target = ch.target;
                s.vms[0].assigned = ch.target;
            }
        }
        // Not stuck 10 MiB below, a change smaller than the arbiter would make.
        assert_eq!(s.vms[0].target, 4 * GIB);
        // A wish far below the maximum is left alone.
        let mut p = Ballast::default();
        let mut v = vm(3 * GIB);
        v.settings.maximum = 4 * GIB;
        v.committed = Some(3 * GIB);
        let w = p.wishes(&snap(vec![v], 100 * GIB, 50 * GIB))[0];
        assert_eq!(w, 3 * GIB + 3 * GIB / 20);
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
        // About LEAD_S (20) s of the 1 MiB/s slope ahead of the plain headroom.
        assert!(
            w > plain + 15 * MIB,
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

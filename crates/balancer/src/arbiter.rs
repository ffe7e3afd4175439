//! The arbiter: the rules every policy runs under, turning wishes into target changes.
//!
//! A policy says what each VM should have; the arbiter decides what the host is told this
//! tick. Its rules come from Hyper-V (clamping, weights under contention), xapi squeezed
//! (reclaim before grant, stuck detection) and oVirt MOM (bounded steps, a minimum
//! change), plus hysteresis so that a wish wobbling around the target costs no
//! operations. The order within one tick:
//!
//! 1. stuck detection (stuck VMs keep their memory and get no new target);
//! 2. clamping of every wish to `[minimum, maximum]`;
//! 3. hysteresis (a reduction that does not continue a reclaim under way waits for the
//!    wish to stay below the target by more than a band for a while; a grant needs the
//!    wish above the target by a small band);
//! 4. sharing by weight if the wishes do not fit (holds from step 3 are lifted then: slack
//!    a VM keeps is exactly what another one lacks);
//! 5. step bounds relative to the assigned memory;
//! 6. the minimum change;
//! 7. reclaim before grant: grants are paid from the memory free now; reductions always go.

use crate::types::{Snapshot, TargetChange, VmSnapshot};

const MIB: u64 = 1 << 20;

/// An amount that grows with the VM: the larger of a fixed number of bytes and a fraction
/// (per mille) of a base the rule using it names.
///
/// Fixed floors keep small VMs from moving in uselessly small steps; the fraction keeps
/// large VMs from needing hundreds of ticks to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    /// The fixed part, bytes.
    pub bytes: u64,
    /// The proportional part, per mille of the base.
    pub permille: u32,
}

impl Amount {
    /// Nothing: the rule using it is off (no minimum change, no band).
    pub const ZERO: Amount = Amount {
        bytes: 0,
        permille: 0,
    };
    /// No bound at all (a step of any size).
    pub const UNBOUNDED: Amount = Amount {
        bytes: u64::MAX,
        permille: 0,
    };

    /// An amount of `max(bytes, base x permille / 1000)`.
    pub const fn new(bytes: u64, permille: u32) -> Self {
        Amount { bytes, permille }
    }

    /// The amount for a given base, bytes. Computed in `u128`, so any base is fine.
    pub fn of(&self, base: u64) -> u64 {
        let part = u128::from(base) * u128::from(self.permille) / 1000;
        self.bytes.max(saturate(part))
    }
}

/// The arbiter's settings. [`Rules::default`] is what every policy but `oracle` runs
/// under; [`Rules::unbounded`] is the oracle's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Largest grant per tick, of the VM's maximum: how far above `assigned` a new
    /// target may be.
    pub grant_step: Amount,
    /// Largest reclaim per tick, of the VM's maximum: how far below `assigned` a new
    /// target may be.
    pub reclaim_step: Amount,
    /// Smallest change worth an operation, of the current target.
    pub min_change: Amount,
    /// How far below the target the wish must be before a reduction after a grant is
    /// considered, of the current target.
    pub reclaim_band: Amount,
    /// How long the wish must stay below that band before the reduction is issued,
    /// seconds.
    pub reclaim_hold_s: f64,
    /// How far above the target the wish must be before a grant after a reduction is
    /// considered, of the current target.
    pub grant_band: Amount,
    /// How long the wish must stay above that band, seconds.
    pub grant_hold_s: f64,
    /// A busy VM whose assigned memory has not moved towards its target for this long is
    /// stuck, seconds.
    ///
    /// A NaN in a hold counts as no hold; a NaN here means "never stuck by time" (an
    /// unresponsive VM is still stuck).
    pub stuck_after_s: f64,
}

/// A hold in seconds, NaN read as none.
fn hold(s: f64) -> f64 {
    if s.is_nan() { 0.0 } else { s }
}

impl Default for Rules {
    /// The defaults, and why:
    ///
    /// - grant step `max(1 GiB, 25% of maximum)`: a VM short of memory pages until the
    ///   grant lands, and a grant can only over-commit the host, which reclaim before
    ///   grant already prevents; the bound only limits what one wrong wish takes (a DM
    ///   hot-add request is itself up to 2 GiB);
    /// - reclaim step `max(128 MiB, 5% of maximum)` (MOM's 5% per step; vm0 caps a
    ///   balloon inflate at 256 MiB a tick after one-shot inflation caused pressure
    ///   spikes): reclaim costs the guest work, and a wrong reclaim is what causes
    ///   paging;
    /// - minimum change `max(8 MiB, 1% of target)` (ChromeOS's 1%; MOM's 0.25% is finer
    ///   than one DM operation is worth);
    /// - reclaim band `max(32 MiB, 5% of target)` held for 30 s: demand that dips and comes
    ///   back within half a minute is not worth a balloon and an unballoon;
    /// - grant band `max(8 MiB, 1% of target)`, no hold: grants must stay quick;
    /// - stuck after 60 s (squeezed uses 5 s, but a DM hot-add or a large balloon on a
    ///   busy guest can legitimately take tens of seconds).
    fn default() -> Self {
        Rules {
            grant_step: Amount::new(1024 * MIB, 250),
            reclaim_step: Amount::new(128 * MIB, 50),
            min_change: Amount::new(8 * MIB, 10),
            reclaim_band: Amount::new(32 * MIB, 50),
            reclaim_hold_s: 30.0,
            grant_band: Amount::new(8 * MIB, 10),
            grant_hold_s: 0.0,
            stuck_after_s: 60.0,
        }
    }
}

impl Rules {
    /// The oracle's rules: no step bound, no minimum change, no hysteresis. Clamping,
    /// weights, reclaim before grant and stuck detection stay: they are physical limits,
    /// not caution.
    pub fn unbounded() -> Self {
        Rules {
            grant_step: Amount::UNBOUNDED,
            reclaim_step: Amount::UNBOUNDED,
            min_change: Amount::ZERO,
            reclaim_band: Amount::ZERO,
            reclaim_hold_s: 0.0,
            grant_band: Amount::ZERO,
            grant_hold_s: 0.0,
            stuck_after_s: 60.0,
        }
    }
}

/// What the arbiter decided this tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// New targets, by VM index, ascending; VMs whose target stays are not listed.
    pub changes: Vec<TargetChange>,
    /// VMs now considered stuck, ascending: they keep their memory and got no new target.
    pub stuck: Vec<usize>,
}

/// The direction of the last target change the arbiter issued for a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Move {
    #[default]
    None,
    Up,
    Down,
}

/// What the arbiter remembers about one VM between ticks.
#[derive(Debug, Clone, Default)]
struct VmState {
    /// The VM has been seen at least once.
    seen: bool,
    /// Target and distance to it at the last tick, for stuck detection.
    last_target: u64,
    last_gap: u64,
    /// Last time the VM made progress (or had nothing to do), seconds.
    progress_s: f64,
    /// Direction and time of the last change issued.
    last_move: Move,
    last_move_s: f64,
    /// Since when the wish has been below the target by more than the reclaim band.
    below_since: Option<f64>,
    /// Since when the wish has been above the target by more than the grant band.
    above_since: Option<f64>,
}

/// Applies [`Rules`] to a policy's wishes, keeping per-VM state for hysteresis and stuck
/// detection.
///
/// VMs are identified by their index in [`Snapshot::vms`]: a host that removes a VM from
/// the middle of the list should build a new arbiter (the state of the VMs after it would
/// otherwise be shifted). A list that grows or shrinks at its end is handled.
#[derive(Debug, Clone)]
pub struct Arbiter {
    rules: Rules,
    vms: Vec<VmState>,
}

/// `[lo, hi]` of a VM: a minimum above the maximum is read as maximum = minimum.
fn bounds(vm: &VmSnapshot) -> (u64, u64) {
    let lo = vm.settings.minimum;
    (lo, vm.settings.maximum.max(lo))
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Seconds from `since` to `now`, never negative; non-finite times give 0 (a host clock
/// that misbehaves only delays holds and stuck verdicts, never causes them).
fn elapsed(now: f64, since: f64) -> f64 {
    let d = now - since;
    if d.is_finite() && d > 0.0 { d } else { 0.0 }
}

impl Arbiter {
    /// An arbiter with no history.
    pub fn new(rules: Rules) -> Self {
        Arbiter {
            rules,
            vms: Vec::new(),
        }
    }

    /// The rules it applies.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Turns wishes (bytes, one per snapshot VM; a missing wish means "keep the target")
    /// into target changes. Only VMs whose target changes are listed.
    pub fn arbitrate(&mut self, snap: &Snapshot, wishes: &[u64]) -> Decision {
        let now = snap.host.now_s;
        let n = snap.vms.len();
        self.vms.resize_with(n, VmState::default);
        let rules = self.rules;

        // 1. Stuck detection.
        let mut stuck = vec![false; n];
        for (i, vm) in snap.vms.iter().enumerate() {
            let st = &mut self.vms[i];
            let gap = vm.target.abs_diff(vm.assigned);
            if !st.seen || gap == 0 || !vm.busy || vm.target != st.last_target || gap < st.last_gap
            {
                st.progress_s = now;
            }
            st.seen = true;
            st.last_target = vm.target;
            st.last_gap = gap;
            let stalled = vm.busy && gap != 0 && elapsed(now, st.progress_s) >= rules.stuck_after_s;
            stuck[i] = vm.unresponsive || stalled;
        }

        // 2. and 3. Clamped wishes, then hysteresis.
        let mut clamped = vec![0u64; n];
        let mut filtered = vec![0u64; n];
        for (i, vm) in snap.vms.iter().enumerate() {
            let (lo, hi) = bounds(vm);
            let cur = vm.target.clamp(lo, hi);
            let w = wishes.get(i).copied().unwrap_or(vm.target).clamp(lo, hi);
            clamped[i] = w;
            let st = &mut self.vms[i];
            let below = w < cur && cur - w > rules.reclaim_band.of(cur);
            let above = w > cur && w - cur > rules.grant_band.of(cur);
            st.below_since = if below {
                Some(st.below_since.unwrap_or(now))
            } else {
                None
            };
            st.above_since = if above {
                Some(st.above_since.unwrap_or(now))
            } else {
                None
            };
            // A reclaim under way (a reduction issued within the hold) goes on step by
            // step; any other reduction, and every grant, must clear its band and hold.
            let reclaiming = st.last_move == Move::Down
                && elapsed(now, st.last_move_s) <= hold(rules.reclaim_hold_s);
            let allowed = if w < cur {
                reclaiming
                    || st
                        .below_since
                        .is_some_and(|s| elapsed(now, s) >= hold(rules.reclaim_hold_s))
            } else if w > cur {
                st.above_since
                    .is_some_and(|s| elapsed(now, s) >= hold(rules.grant_hold_s))
            } else {
                true
            };
            filtered[i] = if allowed { w } else { cur };
        }

        // A grant that free memory cannot pay for lifts the reclaim holds: memory kept
        // back from a reduction is then memory another VM lacks now.
        let free_now = u128::from(snap.host.free.saturating_sub(snap.host.reserve));
        let wanted: u128 = (0..n)
            .filter(|&i| !stuck[i])
            .map(|i| {
                let vm = &snap.vms[i];
                u128::from(clamped[i].saturating_sub(vm.assigned.max(vm.target)))
            })
            .sum();
        if wanted > free_now {
            for i in 0..n {
                if clamped[i] < filtered[i] {
                    filtered[i] = clamped[i];
                }
            }
        }

        // 4. Sharing by weight under contention.
        let capacity = snap.host.total.saturating_sub(snap.host.reserve);
        let held: u128 = (0..n)
            .filter(|&i| stuck[i])
            .map(|i| u128::from(snap.vms[i].assigned))
            .sum();
        let capacity = saturate(u128::from(capacity).saturating_sub(held));
        let live: Vec<usize> = (0..n).filter(|&i| !stuck[i]).collect();
        let sum: u128 = live.iter().map(|&i| u128::from(filtered[i])).sum();
        let mut alloc = filtered.clone();
        if sum > u128::from(capacity) {
            // Under contention a hold only keeps memory another VM lacks: lift it.
            let lo: Vec<u64> = live.iter().map(|&i| bounds(&snap.vms[i]).0).collect();
            let want: Vec<u64> = live.iter().map(|&i| clamped[i]).collect();
            let weight: Vec<u32> = live.iter().map(|&i| snap.vms[i].settings.weight).collect();
            // What a VM needs now (its committed memory, within its wish and bounds)
            // comes before the headroom any VM keeps for what it may need: shares go
            // first to every VM's need, then by weight towards the wishes. If even the
            // needs do not fit, they are what is shared by weight.
            let need: Vec<u64> = live
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let vm = &snap.vms[i];
                    vm.committed.map_or(lo[k], |c| c.min(want[k]).max(lo[k]))
                })
                .collect();
            let needed: u128 = need.iter().map(|&v| u128::from(v)).sum();
            let shares = if needed <= u128::from(capacity) {
                share_by_weight(capacity, &need, &want, &weight)
            } else {
                share_by_weight(capacity, &lo, &need, &weight)
            };
            for (k, &i) in live.iter().enumerate() {
                alloc[i] = shares[k];
            }
        }

        // 5. and 6. Step bounds, clamping, minimum change.
        let mut proposed: Vec<Option<u64>> = vec![None; n];
        for &i in &live {
            let vm = &snap.vms[i];
            let (lo, hi) = bounds(vm);
            let a = alloc[i];
            let up = vm
                .assigned
                .saturating_add(rules.grant_step.of(vm.settings.maximum.max(lo)));
            let down = vm
                .assigned
                .saturating_sub(rules.reclaim_step.of(vm.settings.maximum.max(lo)));
            // A target already beyond the step (an operation still under way) is not
            // pulled back towards `assigned` just because of the bound.
            let t = if a > up {
                up.max(vm.target.min(a))
            } else if a < down {
                down.min(vm.target.max(a))
            } else {
                a
            };
            let t = t.clamp(lo, hi);
            let forced = vm.target < lo || vm.target > hi;
            if t == vm.target {
                continue;
            }
            if !forced && t.abs_diff(vm.target) < rules.min_change.of(vm.target) {
                continue;
            }
            proposed[i] = Some(t);
        }

        // 7. Reclaim before grant. Outstanding grants (targets above assigned) already
        // claim part of the free memory; a change's claim is what it adds to that.
        let claim = |vm: &VmSnapshot, t: u64| i128::from(t.saturating_sub(vm.assigned));
        let free = i128::from(snap.host.free.saturating_sub(snap.host.reserve));
        let outstanding: i128 = snap.vms.iter().map(|vm| claim(vm, vm.target)).sum();
        let mut budget = free - outstanding;
        let mut asks: Vec<(usize, i128)> = Vec::new();
        let mut changes = Vec::new();
        for (i, p) in proposed.iter().enumerate() {
            let Some(t) = *p else { continue };
            let vm = &snap.vms[i];
            let delta = claim(vm, t) - claim(vm, vm.target);
            if delta <= 0 {
                budget -= delta;
                changes.push(TargetChange { vm: i, target: t });
            } else {
                asks.push((i, delta));
            }
        }
        let asked: i128 = asks.iter().map(|&(_, d)| d).sum();
        for &(i, delta) in &asks {
            let vm = &snap.vms[i];
            let (lo, hi) = bounds(vm);
            let granted = if asked <= budget {
                delta
            } else if budget <= 0 {
                0
            } else {
                // Proportional share of what is free, rounded down so the sum fits.
                share_down(delta, budget, asked)
            };
            let base = vm.assigned.max(vm.target);
            let t = saturate(u128::try_from(granted).unwrap_or(0) + u128::from(base));
            if t == vm.target || t < lo || t > hi {
                continue;
            }
            let forced = vm.target < lo || vm.target > hi;
            if granted < delta && !forced && t.abs_diff(vm.target) < rules.min_change.of(vm.target)
            {
                continue;
            }
            changes.push(TargetChange { vm: i, target: t });
        }
        changes.sort_by_key(|c| c.vm);

        for c in &changes {
            let st = &mut self.vms[c.vm];
            let old = snap.vms[c.vm].target;
            st.last_move = if c.target > old { Move::Up } else { Move::Down };
            st.last_move_s = now;
            st.below_since = None;
            st.above_since = None;
        }
        Decision {
            changes,
            stuck: (0..n).filter(|&i| stuck[i]).collect(),
        }
    }
}

/// `delta x budget / asked` for `0 < budget < asked`, rounded down, without overflow:
/// if the product would not fit, both terms of the ratio are scaled down, the budget
/// rounding down and `asked` up, so the result never exceeds the exact one.
fn share_down(delta: i128, budget: i128, asked: i128) -> i128 {
    let (mut b, mut a) = (budget, asked);
    while delta.checked_mul(b).is_none() {
        b >>= 1;
        a = (a >> 1) + 1;
    }
    delta * b / a.max(1)
}

/// Shares `capacity` among VMs under contention: each first gets its `lo`, the rest goes
/// by weight, water-filled so nobody gets more than its `want`. Weight 0 shares only what
/// the weighted VMs leave; if every VM that wants more has weight 0, they share equally.
/// If even the minimums do not fit, everybody gets its minimum (clamping wins).
fn share_by_weight(capacity: u64, lo: &[u64], want: &[u64], weight: &[u32]) -> Vec<u64> {
    let mut out: Vec<u64> = lo.to_vec();
    let total_lo: u128 = lo.iter().map(|&v| u128::from(v)).sum();
    let Some(mut rest) = u128::from(capacity).checked_sub(total_lo) else {
        return out;
    };
    let needy: Vec<usize> = (0..lo.len()).filter(|&k| want[k] > lo[k]).collect();
    let weighted: Vec<usize> = needy.iter().copied().filter(|&k| weight[k] > 0).collect();
    let unweighted: Vec<usize> = needy.iter().copied().filter(|&k| weight[k] == 0).collect();
    // Weighted VMs first; weight-0 VMs then share any remainder equally.
    for (group, equal) in [(weighted, false), (unweighted, true)] {
        let mut active = group;
        while !active.is_empty() && rest > 0 {
            let w = |k: usize| if equal { 1u128 } else { u128::from(weight[k]) };
            let total_w: u128 = active.iter().map(|&k| w(k)).sum();
            let fair = |k: usize| rest * w(k) / total_w;
            let (full, partial): (Vec<usize>, Vec<usize>) = active
                .iter()
                .partition(|&&k| u128::from(want[k] - out[k]) <= fair(k));
            if full.is_empty() {
                let shares: Vec<(usize, u128)> = partial.iter().map(|&k| (k, fair(k))).collect();
                for (k, s) in shares {
                    out[k] = saturate(u128::from(out[k]) + s);
                    rest -= s;
                }
                break;
            }
            for &k in &full {
                rest -= u128::from(want[k] - out[k]);
                out[k] = want[k];
            }
            active = partial;
        }
    }
    out
}

#[cfg(test)]
mod tests;

//! `proportional`: xapi squeezed's policy. It ignores demand: every VM gets
//! `minimum + f x (maximum - minimum)` with one `f` in [0, 1] for all, chosen so the sum
//! fits `total - reserve`. An unresponsive VM is left out (squeezed's stuck domains) and
//! its assigned memory counts as taken.

use crate::{Policy, Snapshot};

/// One fraction of each VM's range for everybody.
#[derive(Debug, Clone, Default)]
pub struct Proportional;

impl Policy for Proportional {
    fn name(&self) -> &'static str {
        "proportional"
    }

    fn wishes(&mut self, snap: &Snapshot) -> Vec<u64> {
        let range = |i: usize| {
            let s = &snap.vms[i].settings;
            (s.minimum, s.maximum.max(s.minimum))
        };
        let live: Vec<usize> = (0..snap.vms.len())
            .filter(|&i| !snap.vms[i].unresponsive)
            .collect();
        let held: u128 = snap
            .vms
            .iter()
            .filter(|vm| vm.unresponsive)
            .map(|vm| u128::from(vm.assigned))
            .sum();
        let capacity =
            u128::from(snap.host.total.saturating_sub(snap.host.reserve)).saturating_sub(held);
        let sum_min: u128 = live.iter().map(|&i| u128::from(range(i).0)).sum();
        let sum_span: u128 = live
            .iter()
            .map(|&i| {
                let (lo, hi) = range(i);
                u128::from(hi - lo)
            })
            .sum();
        // f = num / den, clamped to [0, 1]; rounding down keeps the sum within capacity.
        let num = capacity.saturating_sub(sum_min).min(sum_span);
        let den = sum_span.max(1);
        snap.vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                if vm.unresponsive {
                    return vm.assigned;
                }
                let (lo, hi) = range(i);
                // (hi - lo) x num fits u128: both are below 2^64 (num <= capacity, a u64).
                let extra = u128::from(hi - lo).saturating_mul(num) / den;
                lo.saturating_add(u64::try_from(extra).unwrap_or(u64::MAX))
                    .min(hi)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{snap, vm};

    #[test]
    fn one_fraction_for_all() {
        let mut a = vm(1 << 30);
        (a.settings.minimum, a.settings.maximum) = (1 << 30, 3 << 30);
        let mut b = vm(1 << 30);
        (b.settings.minimum, b.settings.maximum) = (2 << 30, 8 << 30);
        b.committed = Some(6 << 30);
        // 7 GiB to share: minimums take 3, the 4 left are half of the 8 GiB of range.
        let s = snap(vec![a, b], 7 << 30, 0);
        assert_eq!(Proportional.wishes(&s), vec![2 << 30, 5 << 30]);
    }

    #[test]
    fn plenty_gives_maximum_and_shortage_minimum() {
        let mut a = vm(1 << 30);
        (a.settings.minimum, a.settings.maximum) = (1 << 30, 3 << 30);
        let s = snap(vec![a.clone()], 100 << 30, 0);
        assert_eq!(Proportional.wishes(&s), vec![3 << 30]);
        let s = snap(vec![a], 0, 0);
        assert_eq!(Proportional.wishes(&s), vec![1 << 30]);
    }

    #[test]
    fn unresponsive_vm_keeps_what_it_has() {
        let mut a = vm(1 << 30);
        (a.settings.minimum, a.settings.maximum) = (0, 4 << 30);
        let mut b = a.clone();
        b.unresponsive = true;
        b.assigned = 2 << 30;
        let s = snap(vec![a, b], 4 << 30, 0);
        assert_eq!(Proportional.wishes(&s), vec![2 << 30, 2 << 30]);
    }
}

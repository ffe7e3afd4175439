use proptest::prelude::*;

use super::*;
use crate::testutil::{snap, vm};

const GIB: u64 = 1 << 30;

/// Rules with every pacing rule off, so one rule at a time can be tested.
fn bare() -> Rules {
    Rules::unbounded()
}

fn target_of(d: &Decision, i: usize) -> Option<u64> {
    d.changes.iter().find(|c| c.vm == i).map(|c| c.target)
}

// Rule 1: clamping.

#[test]
fn targets_are_clamped_to_minimum_and_maximum() {
    let mut a = vm(2 * GIB);
    (a.settings.minimum, a.settings.maximum) = (GIB, 4 * GIB);
    let b = a.clone();
    let s = snap(vec![a, b], 100 * GIB, 90 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[100 * GIB, 0]);
    assert_eq!(target_of(&d, 0), Some(4 * GIB));
    assert_eq!(target_of(&d, 1), Some(GIB));
}

#[test]
fn minimum_above_maximum_reads_as_maximum_equal_minimum() {
    let mut a = vm(GIB);
    (a.settings.minimum, a.settings.maximum) = (3 * GIB, GIB);
    let s = snap(vec![a], 100 * GIB, 90 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[0]);
    assert_eq!(target_of(&d, 0), Some(3 * GIB));
}

#[test]
fn a_target_outside_the_range_is_corrected_despite_the_minimum_change() {
    let mut a = vm(GIB);
    a.settings.maximum = GIB - MIB;
    let s = snap(vec![a], 100 * GIB, 90 * GIB);
    // One MiB is far below the 8 MiB minimum change, but the target must be in range.
    let d = Arbiter::new(Rules::default()).arbitrate(&s, &[GIB]);
    assert_eq!(target_of(&d, 0), Some(GIB - MIB));
}

// Rule 2: weights under contention.

#[test]
fn contention_shares_by_weight_above_the_minimums() {
    let mut a = vm(GIB);
    a.settings.minimum = GIB;
    a.settings.weight = 75;
    let mut b = a.clone();
    b.settings.weight = 25;
    // 6 GiB for two VMs wanting 10 each: 1 + 1 guaranteed, 4 shared 3:1.
    let s = snap(vec![a, b], 6 * GIB, 4 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[10 * GIB, 10 * GIB]);
    assert_eq!(target_of(&d, 0), Some(4 * GIB));
    assert_eq!(target_of(&d, 1), Some(2 * GIB));
}

#[test]
fn contention_water_fills_so_nobody_gets_more_than_its_wish() {
    let mut a = vm(0);
    a.settings.weight = 50;
    let (b, c) = (a.clone(), a.clone());
    let s = snap(vec![a, b, c], 9 * GIB, 9 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[GIB, 10 * GIB, 10 * GIB]);
    // The first wants less than a third: the others split what it leaves.
    assert_eq!(target_of(&d, 0), Some(GIB));
    assert_eq!(target_of(&d, 1), Some(4 * GIB));
    assert_eq!(target_of(&d, 2), Some(4 * GIB));
}

#[test]
fn weight_zero_gets_only_its_minimum_under_contention() {
    let mut a = vm(GIB);
    a.settings.minimum = GIB;
    a.settings.weight = 0;
    let mut b = a.clone();
    b.settings.weight = 1;
    let s = snap(vec![a, b], 6 * GIB, 4 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[10 * GIB, 10 * GIB]);
    assert_eq!(target_of(&d, 0), None, "stays at its 1 GiB minimum");
    assert_eq!(target_of(&d, 1), Some(5 * GIB));
}

#[test]
fn all_weights_zero_share_equally() {
    let mut a = vm(0);
    a.settings.weight = 0;
    let b = a.clone();
    let s = snap(vec![a, b], 6 * GIB, 6 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[10 * GIB, 10 * GIB]);
    assert_eq!(target_of(&d, 0), Some(3 * GIB));
    assert_eq!(target_of(&d, 1), Some(3 * GIB));
}

#[test]
fn no_contention_means_every_wish() {
    let a = vm(0);
    let mut b = a.clone();
    b.settings.weight = 0;
    let s = snap(vec![a, b], 100 * GIB, 100 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[10 * GIB, 10 * GIB]);
    assert_eq!(target_of(&d, 0), Some(10 * GIB));
    assert_eq!(target_of(&d, 1), Some(10 * GIB));
}

// Rule 3: reclaim before grant.

#[test]
fn grants_wait_for_memory_being_reclaimed() {
    let a = vm(6 * GIB);
    let b = vm(2 * GIB);
    // 8 of 9 GiB assigned, 1 free: A gives 4 back, B wants 4 more.
    let s = snap(vec![a, b], 9 * GIB, GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[2 * GIB, 6 * GIB]);
    assert_eq!(
        target_of(&d, 0),
        Some(2 * GIB),
        "reductions are always issued"
    );
    assert_eq!(
        target_of(&d, 1),
        Some(3 * GIB),
        "only the free GiB is granted now"
    );
}

#[test]
fn outstanding_grants_count_against_free_memory() {
    let mut a = vm(GIB);
    a.target = 2 * GIB;
    a.busy = true;
    let b = vm(GIB);
    // 1 GiB free, but A's unfinished grant already claims it.
    let s = snap(vec![a, b], 10 * GIB, GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[2 * GIB, 2 * GIB]);
    assert_eq!(d.changes, vec![]);
}

#[test]
fn reserve_is_never_granted() {
    let a = vm(GIB);
    let mut s = snap(vec![a], 10 * GIB, 4 * GIB);
    s.host.reserve = 3 * GIB;
    let d = Arbiter::new(bare()).arbitrate(&s, &[8 * GIB]);
    assert_eq!(target_of(&d, 0), Some(2 * GIB));
}

// Rule 4: step bounds.

#[test]
fn grant_and_reclaim_steps_are_bounded() {
    let a = vm(4 * GIB);
    let b = vm(4 * GIB);
    let s = snap(vec![a, b], 100 * GIB, 90 * GIB);
    let rules = Rules {
        grant_step: Amount::new(256 * MIB, 0),
        reclaim_step: Amount::new(128 * MIB, 0),
        ..bare()
    };
    let d = Arbiter::new(rules).arbitrate(&s, &[8 * GIB, 0]);
    assert_eq!(target_of(&d, 0), Some(4 * GIB + 256 * MIB));
    assert_eq!(target_of(&d, 1), Some(4 * GIB - 128 * MIB));
}

#[test]
fn default_steps_grow_with_the_maximum() {
    let mut a = vm(4 * GIB);
    a.settings.maximum = 40 * GIB;
    let s = snap(vec![a.clone(), a], 100 * GIB, 90 * GIB);
    let d = Arbiter::new(Rules {
        reclaim_band: Amount::ZERO,
        reclaim_hold_s: 0.0,
        ..Rules::default()
    })
    .arbitrate(&s, &[40 * GIB, 0]);
    assert_eq!(target_of(&d, 0), Some(14 * GIB), "25% of 40 GiB");
    assert_eq!(target_of(&d, 1), Some(2 * GIB), "5% of 40 GiB");
}

#[test]
fn an_operation_beyond_the_step_is_not_pulled_back() {
    let mut a = vm(GIB);
    a.target = 3 * GIB;
    a.busy = true;
    let s = snap(vec![a], 100 * GIB, 90 * GIB);
    let rules = Rules {
        grant_step: Amount::new(256 * MIB, 0),
        ..bare()
    };
    let d = Arbiter::new(rules).arbitrate(&s, &[4 * GIB]);
    assert_eq!(d.changes, vec![]);
}

// Rule 5: minimum change.

#[test]
fn small_changes_are_not_issued() {
    let a = vm(4 * GIB);
    let s = snap(vec![a.clone(), a], 100 * GIB, 90 * GIB);
    let rules = Rules {
        min_change: Amount::new(8 * MIB, 10),
        ..bare()
    };
    // 1% of 4 GiB is 41 MiB: 40 MiB is not worth it, 42 MiB is.
    let d = Arbiter::new(rules).arbitrate(&s, &[4 * GIB + 40 * MIB, 4 * GIB + 42 * MIB]);
    assert_eq!(target_of(&d, 0), None);
    assert_eq!(target_of(&d, 1), Some(4 * GIB + 42 * MIB));
}

// Rule 6: stuck detection.

#[test]
fn unresponsive_vm_is_stuck_and_keeps_its_memory() {
    let mut a = vm(4 * GIB);
    a.unresponsive = true;
    let b = vm(GIB);
    // 5 GiB assigned of 6: A holds its 4 although it wishes 0, so B can get at most 2.
    let s = snap(vec![a, b], 6 * GIB, GIB);
    let mut arb = Arbiter::new(bare());
    let d = arb.arbitrate(&s, &[0, 10 * GIB]);
    assert_eq!(d.stuck, vec![0]);
    assert_eq!(target_of(&d, 0), None);
    assert_eq!(target_of(&d, 1), Some(2 * GIB));
}

#[test]
fn busy_vm_without_progress_becomes_stuck_and_recovers_when_it_moves() {
    let mut a = vm(GIB);
    a.target = 2 * GIB;
    a.busy = true;
    let mut s = snap(vec![a], 100 * GIB, 90 * GIB);
    let mut arb = Arbiter::new(Rules::default());
    for t in [0.0, 30.0, 59.0] {
        s.host.now_s = t;
        assert!(arb.arbitrate(&s, &[2 * GIB]).stuck.is_empty(), "{t}");
    }
    s.host.now_s = 60.0;
    let d = arb.arbitrate(&s, &[3 * GIB]);
    assert_eq!(d.stuck, vec![0]);
    assert_eq!(d.changes, vec![]);
    // It moves: no longer stuck, and it may be given a new target again.
    s.host.now_s = 61.0;
    s.vms[0].assigned = GIB + 512 * MIB;
    let d = arb.arbitrate(&s, &[3 * GIB]);
    assert!(d.stuck.is_empty());
    assert_eq!(target_of(&d, 0), Some(3 * GIB));
}

// Rule 7: hysteresis.

#[test]
fn reduction_after_a_grant_waits_for_the_hold() {
    let a = vm(4 * GIB);
    let mut s = snap(vec![a], 100 * GIB, 90 * GIB);
    let mut arb = Arbiter::new(Rules::default());
    // Wish drops well below the target: nothing for 30 s.
    for t in [0.0, 10.0, 29.0] {
        s.host.now_s = t;
        assert_eq!(arb.arbitrate(&s, &[2 * GIB]).changes, vec![], "{t}");
    }
    s.host.now_s = 30.0;
    let d = arb.arbitrate(&s, &[2 * GIB]);
    assert!(target_of(&d, 0).is_some_and(|t| t < 4 * GIB));
}

#[test]
fn a_dip_inside_the_hold_restarts_it() {
    let a = vm(4 * GIB);
    let mut s = snap(vec![a], 100 * GIB, 90 * GIB);
    let mut arb = Arbiter::new(Rules::default());
    s.host.now_s = 0.0;
    arb.arbitrate(&s, &[2 * GIB]);
    // Back inside the band at 20 s: the hold starts over.
    s.host.now_s = 20.0;
    arb.arbitrate(&s, &[4 * GIB - MIB]);
    s.host.now_s = 35.0;
    assert_eq!(arb.arbitrate(&s, &[2 * GIB]).changes, vec![]);
    s.host.now_s = 65.0;
    assert!(!arb.arbitrate(&s, &[2 * GIB]).changes.is_empty());
}

#[test]
fn a_reclaim_under_way_goes_on_without_a_new_hold_but_a_later_one_waits() {
    let a = vm(4 * GIB);
    let mut s = snap(vec![a], 100 * GIB, 90 * GIB);
    let rules = Rules {
        reclaim_step: Amount::new(GIB, 0),
        ..Rules::default()
    };
    let mut arb = Arbiter::new(rules);
    arb.arbitrate(&s, &[GIB]);
    s.host.now_s = 30.0;
    assert_eq!(target_of(&arb.arbitrate(&s, &[GIB]), 0), Some(3 * GIB));
    // The next step follows at once.
    s.vms[0].assigned = 3 * GIB;
    s.vms[0].target = 3 * GIB;
    s.host.now_s = 35.0;
    assert_eq!(target_of(&arb.arbitrate(&s, &[GIB]), 0), Some(2 * GIB));
    // Much later, a new dip is held again.
    s.vms[0].assigned = 2 * GIB;
    s.vms[0].target = 2 * GIB;
    s.host.now_s = 40.0;
    assert_eq!(arb.arbitrate(&s, &[2 * GIB]).changes, vec![]);
    s.host.now_s = 1000.0;
    assert_eq!(arb.arbitrate(&s, &[GIB]).changes, vec![]);
}

#[test]
fn wish_within_the_band_costs_no_reduction() {
    let a = vm(4 * GIB);
    let mut s = snap(vec![a], 100 * GIB, 90 * GIB);
    let mut arb = Arbiter::new(Rules::default());
    // 5% of 4 GiB is 205 MiB: 150 MiB below never triggers, however long.
    for t in 0..100 {
        s.host.now_s = f64::from(t) * 10.0;
        assert_eq!(arb.arbitrate(&s, &[4 * GIB - 150 * MIB]).changes, vec![]);
    }
}

#[test]
fn grant_after_a_reduction_needs_the_band() {
    let a = vm(4 * GIB);
    let mut s = snap(vec![a], 100 * GIB, 90 * GIB);
    let rules = Rules {
        min_change: Amount::ZERO,
        ..Rules::default()
    };
    let mut arb = Arbiter::new(rules);
    s.host.now_s = 0.0;
    arb.arbitrate(&s, &[3 * GIB]);
    s.host.now_s = 30.0;
    let d = arb.arbitrate(&s, &[3 * GIB]);
    let t = target_of(&d, 0).unwrap();
    s.vms[0].target = t;
    s.vms[0].assigned = t;
    s.host.now_s = 31.0;
    // Just above the new target, inside the 1% band: no grant.
    assert_eq!(arb.arbitrate(&s, &[t + 20 * MIB]).changes, vec![]);
    // Beyond the band: granted at once.
    assert_eq!(
        target_of(&arb.arbitrate(&s, &[t + 60 * MIB]), 0),
        Some(t + 60 * MIB)
    );
}

#[test]
fn contention_lifts_the_hold() {
    let a = vm(4 * GIB);
    let b = vm(GIB);
    // 5 of 6 GiB assigned. A's wish dropped just now; B needs 3 more.
    let s = snap(vec![a, b], 6 * GIB, GIB);
    let d = Arbiter::new(Rules::default()).arbitrate(&s, &[GIB, 4 * GIB]);
    assert!(target_of(&d, 0).is_some_and(|t| t < 4 * GIB), "{d:?}");
}

// Robustness.

#[test]
fn nan_holds_count_as_none() {
    let a = vm(4 * GIB);
    let s = snap(vec![a], 100 * GIB, 90 * GIB);
    let rules = Rules {
        reclaim_hold_s: f64::NAN,
        ..Rules::default()
    };
    let d = Arbiter::new(rules).arbitrate(&s, &[GIB]);
    assert!(target_of(&d, 0).is_some_and(|t| t < 4 * GIB));
}

#[test]
fn wishes_shorter_than_the_vms_keep_targets() {
    let s = snap(vec![vm(GIB), vm(GIB)], 100 * GIB, 90 * GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[2 * GIB]);
    assert_eq!(
        d.changes,
        vec![TargetChange {
            vm: 0,
            target: 2 * GIB
        }]
    );
}

fn any_vm() -> impl Strategy<Value = VmSnapshot> {
    let bytes = prop_oneof![Just(0u64), Just(u64::MAX), 0u64..(64 * GIB), any::<u64>()];
    (
        (
            bytes.clone(),
            bytes.clone(),
            bytes.clone(),
            0u32..2001,
            prop_oneof![Just(0u32), 0u32..101],
        ),
        (
            bytes.clone(),
            bytes.clone(),
            proptest::option::of(bytes.clone()),
        ),
        (any::<bool>(), any::<bool>(), proptest::option::of(bytes)),
    )
        .prop_map(
            |(
                (startup, minimum, maximum, buffer_percent, weight),
                (assigned, target, committed),
                (busy, unresponsive, future_peak),
            )| VmSnapshot {
                settings: crate::VmSettings {
                    startup,
                    minimum,
                    maximum,
                    buffer_percent,
                    weight,
                },
                assigned,
                target,
                committed,
                report_age_s: 0.0,
                busy,
                unresponsive,
                future_peak,
            },
        )
}

proptest! {
    #[test]
    fn decisions_stay_in_range_and_within_free_memory(
        vms in proptest::collection::vec(any_vm(), 0..6),
        wishes in proptest::collection::vec(any::<u64>(), 0..8),
        total in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..(256 * GIB)],
        free in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..(256 * GIB)],
        reserve in prop_oneof![Just(0u64), any::<u64>(), 0u64..(4 * GIB)],
        times in proptest::collection::vec(prop_oneof![Just(f64::NAN), -1e9f64..1e9, Just(f64::INFINITY)], 1..4),
        policy in 0usize..crate::POLICIES.len(),
    ) {
        let mut s = snap(vms, total, free);
        s.host.reserve = reserve;
        let mut balancer = crate::Balancer::by_name(crate::POLICIES[policy]).unwrap();
        let mut policies: Vec<Box<dyn crate::Policy>> = vec![
            Box::new(crate::policies::Ballast::default()),
            Box::new(crate::policies::Static),
            Box::new(crate::policies::HyperV),
            Box::new(crate::policies::Proportional),
            Box::new(crate::policies::Vpa::default()),
            Box::new(crate::policies::Oracle),
        ];
        let mut arb = Arbiter::new(Rules::default());
        for t in times {
            s.host.now_s = t;
            for p in &mut policies {
                prop_assert_eq!(p.wishes(&s).len(), s.vms.len(), "{}", p.name());
            }
            for d in [arb.arbitrate(&s, &wishes), balancer.tick(&s)] {
                let mut granted: u128 = 0;
                let mut last = None;
                for c in &d.changes {
                    let vm = &s.vms[c.vm];
                    let (lo, hi) = bounds(vm);
                    prop_assert!(c.target >= lo && c.target <= hi, "{c:?} outside [{lo}, {hi}]");
                    prop_assert!(last < Some(c.vm), "sorted, one change per VM");
                    prop_assert!(!d.stuck.contains(&c.vm), "stuck VMs get no target");
                    last = Some(c.vm);
                    granted += u128::from(c.target.saturating_sub(vm.assigned));
                }
                let unchanged: u128 = s
                    .vms
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !d.changes.iter().any(|c| c.vm == *i))
                    .map(|(_, vm)| u128::from(vm.target.saturating_sub(vm.assigned)))
                    .sum();
                let budget = u128::from(free.saturating_sub(reserve));
                // New and still-outstanding grants together fit in the free memory, or
                // nothing new was granted beyond what was already outstanding.
                let changed_old: u128 = d
                    .changes
                    .iter()
                    .map(|c| u128::from(s.vms[c.vm].target.saturating_sub(s.vms[c.vm].assigned)))
                    .sum();
                prop_assert!(
                    granted <= changed_old || granted + unchanged <= budget,
                    "granted {granted} + outstanding {unchanged} > {budget}"
                );
                prop_assert!(granted <= budget.max(changed_old));
            }
        }
    }
}

// Rule 2, needs first: under contention what a VM needs now comes before headroom.

#[test]
fn under_contention_needs_come_before_headroom() {
    // Two VMs of equal weight: one needs 3 GiB and wishes 3.5, the other needs 1 GiB
    // but wishes 4 GiB of headroom. 5 GiB to share: the first gets its need, not a
    // weight-split half of its wish.
    let mut a = vm(2 * GIB);
    a.committed = Some(3 * GIB);
    let mut b = vm(2 * GIB);
    b.committed = Some(GIB);
    let s = snap(vec![a, b], 5 * GIB, GIB);
    let d = Arbiter::new(bare()).arbitrate(&s, &[3 * GIB + GIB / 2, 4 * GIB]);
    let ta = target_of(&d, 0).unwrap();
    let tb = target_of(&d, 1).unwrap();
    assert!(ta >= 3 * GIB, "the need is served: {ta}");
    assert!(tb >= GIB, "so is the other's: {tb}");
    assert!(ta + tb <= 5 * GIB);
}

// Rule 7, hysteresis yields to a grant: a reclaim hold never keeps memory another VM
// needs now.

#[test]
fn a_grant_free_memory_cannot_pay_lifts_the_reclaim_hold() {
    let rules = Rules::default();
    // VM 0 could give 2 GiB back (its wish fell just now, so its hold has not passed);
    // VM 1 wants 1 GiB more, and the host has nothing free.
    let a = vm(4 * GIB);
    let b = vm(2 * GIB);
    let s = snap(vec![a.clone(), b.clone()], 6 * GIB, 0);
    let mut arb = Arbiter::new(rules);
    let d = arb.arbitrate(&s, &[2 * GIB, 3 * GIB]);
    assert!(
        target_of(&d, 0).is_some_and(|t| t < 4 * GIB),
        "the reclaim is issued at once: {d:?}"
    );
    // With free memory to pay the grant, the same fall waits for its hold.
    let s = snap(vec![a, b], 16 * GIB, 10 * GIB);
    let d = Arbiter::new(rules).arbitrate(&s, &[2 * GIB, 3 * GIB]);
    assert_eq!(target_of(&d, 0), None, "held: {d:?}");
}

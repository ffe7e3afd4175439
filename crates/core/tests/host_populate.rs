//! The host's populate and release (how a host backs and takes back guest RAM: boot
//! memory, unballoon, hot-add, balloon) against a model, with every invariant checked.

use ballast_abi::hv::HvProximityDomainInfo;
use ballast_core::{Config, GfnRange, Hypervisor};
use proptest::prelude::*;
use std::collections::BTreeSet;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn populate_and_release_keep_every_frame_accounted(
        ops in proptest::collection::vec((any::<bool>(), 0u64..6000, 1u64..1600), 1..40),
    ) {
        // Two nodes whose boundary is not 2 MiB-aligned, so runs of frames can straddle it.
        let mut hv = Hypervisor::new(Config::with_nodes(vec![4100, 4092])).unwrap();
        let free = hv.frames().total_free();
        let id = hv.create_guest(1 << 20, HvProximityDomainInfo::ANY).unwrap();
        hv.set_guest_physical_limit(id, 8192).unwrap();
        let mut model = BTreeSet::new();
        for (populate, start, count) in ops {
            let count = count.min(8192 - start.min(8192));
            if count == 0 {
                continue;
            }
            if populate {
                let clash = (start..start + count).any(|g| model.contains(&g));
                let r = hv.populate(id, start, count);
                if clash || free < model.len() as u64 + count {
                    prop_assert!(r.is_err());
                } else {
                    prop_assert!(r.is_ok(), "{r:?}");
                    model.extend(start..start + count);
                }
            } else {
                let all = (start..start + count).all(|g| model.contains(&g));
                let r = hv.release(id, &[GfnRange::new(start, count).unwrap()]);
                if all {
                    prop_assert_eq!(r.unwrap(), count);
                    for g in start..start + count {
                        model.remove(&g);
                    }
                } else {
                    prop_assert!(r.is_err());
                }
            }
            hv.check().unwrap();
            let p = hv.partition(id).unwrap();
            prop_assert_eq!(p.p2m().mapped(), model.len() as u64);
            prop_assert_eq!(hv.frames().total_free() + model.len() as u64, free);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A balloon of 4 KiB pages names one page per range. Released in one call (where
    /// neighbouring ranges without a 2 MiB block go as one run), the ranges leave the
    /// model exactly as releasing them one call each: the same frames freed in the same
    /// order, the same heap, p2m and effects.
    #[test]
    fn neighbouring_ranges_in_one_release_are_the_ranges_one_by_one(
        holes in proptest::collection::vec(0u64..4096, 0..4),
        pieces in proptest::collection::vec((0u64..4096, 1u64..1100), 1..30),
    ) {
        let mut hv = Hypervisor::new(Config::with_nodes(vec![4100, 4092])).unwrap();
        let id = hv.create_guest(1 << 20, HvProximityDomainInfo::ANY).unwrap();
        hv.set_guest_physical_limit(id, 8192).unwrap();
        hv.populate(id, 0, 4096).unwrap();
        // Holes, so that some pieces are refused and some frames are single.
        for &h in &holes {
            let _ = hv.release(id, &[GfnRange::new(h, 1).unwrap()]);
        }
        let mapped: BTreeSet<u64> = (0..4096).filter(|&g| hv.partition(id).unwrap().p2m().get(g).is_some()).collect();
        // Pieces cut into runs of single pages and larger ranges, some of them neighbours,
        // none naming a page twice (a page named twice in one call is released once, and
        // in a second call refused).
        let mut ranges = Vec::new();
        let mut named = BTreeSet::new();
        for (start, count) in pieces {
            let count = count.min(4096 - start);
            if !(start..start + count).all(|g| named.insert(g)) {
                continue;
            }
            if count % 3 == 0 {
                ranges.extend((start..start + count).map(|g| GfnRange::new(g, 1).unwrap()));
            } else {
                ranges.push(GfnRange::new(start, count).unwrap());
            }
        }
        let all = ranges.iter().all(|r| r.iter().all(|g| mapped.contains(&g)));
        let mut one = hv.clone();
        let mut each = hv;
        let r = one.release(id, &ranges);
        if !all {
            prop_assert!(r.is_err());
            return Ok(());
        }
        let mut n = 0;
        for r in &ranges {
            n += each.release(id, std::slice::from_ref(r)).unwrap();
        }
        prop_assert_eq!(r.unwrap(), n);
        one.check().unwrap();
        prop_assert_eq!(one.take_effects(), each.take_effects());
        let (a, b) = (format!("{one:?}"), format!("{each:?}"));
        prop_assert!(a == b, "the models differ");
    }
}

/// The discards a release records are the ones page by page would: neighbours merge into
/// the effect before them when they touch it, in the order released.
#[test]
fn released_runs_record_the_discards_of_their_pages_in_order() {
    use ballast_core::Effect;
    let page = |g| GfnRange::new(g, 1).unwrap();
    // The ranges released, and the discards (start, count) expected.
    type Case = (Vec<GfnRange>, Vec<(u64, u64)>);
    let cases: Vec<Case> = vec![
        // A page, then the run below it up to it: one effect each way it meets.
        (
            [10].into_iter().chain(5..10).map(page).collect(),
            vec![(10, 1), (5, 5)],
        ),
        // A page, then a run ending right below it: the run's pages are appended to
        // their own effect, which ends where the first effect starts.
        (
            [9].into_iter().chain(5..9).map(page).collect(),
            vec![(9, 1), (5, 4)],
        ),
        // A run, then the page after it, then a page before it.
        ((20..30).chain([30, 19]).map(page).collect(), vec![(19, 12)]),
        // Two runs apart, and a large range between them.
        (
            (40..44)
                .map(page)
                .chain([GfnRange::new(44, 600).unwrap()])
                .chain((700..703).map(page))
                .collect(),
            vec![(40, 4 + 600), (700, 3)],
        ),
    ];
    for (ranges, want) in cases {
        let mut hv = Hypervisor::new(Config::with_nodes(vec![4096])).unwrap();
        let id = hv
            .create_guest(1 << 20, HvProximityDomainInfo::ANY)
            .unwrap();
        hv.set_guest_physical_limit(id, 4096).unwrap();
        hv.populate(id, 0, 2048).unwrap();
        hv.take_effects();
        let n: u64 = ranges.iter().map(|r| r.count()).sum();
        assert_eq!(hv.release(id, &ranges).unwrap(), n);
        let got: Vec<(u64, u64)> = hv
            .take_effects()
            .into_iter()
            .map(|e| match e {
                Effect::Discard { range, .. } => (range.start(), range.count()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want, "{ranges:?}");
        hv.check().unwrap();
    }
}

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

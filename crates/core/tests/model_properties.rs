//! Random interleavings of Hyper-V hypercalls, Xen memory_ops and host operations, from
//! several callers, against the model's invariants after every step: frame conservation,
//! single ownership, p2m/m2p agreement, pool counts equal to the sum of their per-node
//! counts (all checked by `Hypervisor::check`), and every gfn that left a partition's p2m
//! discarded.

use std::collections::{BTreeMap, BTreeSet};

use ballast_abi::hv::{
    CreatePartitionInput, CreateVpInput, HvCreatePartition, HvCreateVp, HvDeleteVp,
    HvPartitionPrivilegeMask, HvProximityDomainInfo, HvWithdrawMemory,
};
use ballast_abi::xen::{
    MemFlags, MemoryOp, XenMemoryExchange, XenMemoryReservation, XenPodTarget, XenRemoveFromPhysmap,
};
use ballast_core::{
    Config, DomId, Effect, FlatMemory, GfnRange, Hypervisor, NodeSel, PartitionId, ROOT_ID,
};
use proptest::prelude::*;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const ARG: u64 = 0x1_0000;
const LIST: u64 = 0x2_0000;
const LIST2: u64 = 0x3_0000;

#[derive(Debug, Clone)]
enum Op {
    /// Root deposits `n` free pages into partition `t`.
    Deposit { t: u8, n: u8, node: u8 },
    /// Root withdraws up to `n` pages from `t`.
    Withdraw { t: u8, n: u8 },
    /// Root creates a child partition (refilling its own pool as Linux does).
    Create,
    /// Root initializes `t`, refilling its pool.
    Initialize { t: u8 },
    /// Root creates VP `vp` in `t`, refilling its pool.
    CreateVp { t: u8, vp: u8 },
    /// Root deletes VP `vp` of `t`.
    DeleteVp { t: u8, vp: u8 },
    /// Root finalizes `t`.
    Finalize { t: u8 },
    /// Root drains and deletes `t`.
    Delete { t: u8 },
    /// Root grants `t` the memory-pool privilege, so it can act as a (useless) parent.
    Grant { t: u8 },
    /// Caller `c` (0 = root) runs a reservation sub-op on target `t` (DOMID_SELF if `t`
    /// is the caller) with gfns from `base`.
    Reserve {
        c: u8,
        t: u8,
        op: u8,
        base: u16,
        n: u8,
        order: u8,
    },
    /// Caller `c` exchanges `n` of its gfns for new ones.
    Exchange { c: u8, base: u16, n: u8 },
    /// Caller `c` removes gfn `g` of `t` from its physmap.
    Remove { c: u8, t: u8, g: u16 },
    /// The host backs `n` gfns of `t` from `g`, or releases them.
    Host { t: u8, g: u16, n: u8, release: bool },
    /// The host destroys `t`.
    Destroy { t: u8 },
    /// Caller `c` sets (or gets) the PoD target of `t`.
    PodTarget {
        c: u8,
        t: u8,
        target: u16,
        set: bool,
    },
    /// A guest access to gfn `g` of `t` (a PoD entry, or not).
    Demand { t: u8, g: u16 },
    /// The host sets `t`'s guest-physical limit.
    Limit { t: u8, limit: u16 },
    /// The host sets `t`'s p2m budget (KiB; 0 = the default).
    Budget { t: u8, kib: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, 1u8..40, 0u8..3).prop_map(|(t, n, node)| Op::Deposit { t, n, node }),
        (0u8..6, 1u8..40).prop_map(|(t, n)| Op::Withdraw { t, n }),
        Just(Op::Create),
        (0u8..6).prop_map(|t| Op::Initialize { t }),
        (0u8..6, 0u8..4).prop_map(|(t, vp)| Op::CreateVp { t, vp }),
        (0u8..6, 0u8..4).prop_map(|(t, vp)| Op::DeleteVp { t, vp }),
        (0u8..6).prop_map(|t| Op::Finalize { t }),
        (0u8..6).prop_map(|t| Op::Delete { t }),
        (0u8..6).prop_map(|t| Op::Grant { t }),
        (0u8..6, 0u8..6, 0u8..6, 0u16..300, 1u8..32, 0u8..3).prop_map(
            |(c, t, op, base, n, order)| Op::Reserve {
                c,
                t,
                op,
                base,
                n,
                order
            }
        ),
        (0u8..6, 0u16..300, 1u8..16).prop_map(|(c, base, n)| Op::Exchange { c, base, n }),
        (0u8..6, 0u8..6, 0u16..300).prop_map(|(c, t, g)| Op::Remove { c, t, g }),
        (0u8..6, 0u16..300, 1u8..32, any::<bool>()).prop_map(|(t, g, n, release)| Op::Host {
            t,
            g,
            n,
            release
        }),
        (0u8..6).prop_map(|t| Op::Destroy { t }),
        (0u8..6, 0u8..6, 0u16..500, any::<bool>()).prop_map(|(c, t, target, set)| Op::PodTarget {
            c,
            t,
            target,
            set
        }),
        (0u8..6, 0u16..300).prop_map(|(t, g)| Op::Demand { t, g }),
        (0u8..6, 0u16..400).prop_map(|(t, limit)| Op::Limit { t, limit }),
        (0u8..6, 0u8..40).prop_map(|(t, kib)| Op::Budget { t, kib }),
    ]
}

struct World {
    hv: Hypervisor,
    /// Partitions in creation order; index 0 is the root.
    ids: Vec<PartitionId>,
}

impl World {
    fn reservation(
        &mut self,
        caller: DomId,
        cmd: u64,
        r: &XenMemoryReservation,
        list: &[u64],
    ) -> i64 {
        let mut mem = FlatMemory::new(ARG, 0x3_0000);
        mem.bytes[..32].copy_from_slice(r.as_bytes());
        for (i, g) in list.iter().enumerate() {
            let at = (LIST - ARG) as usize + 8 * i;
            mem.bytes[at..at + 8].copy_from_slice(&g.to_le_bytes());
        }
        self.hv
            .memory_op_to_completion(caller, cmd, ARG, &mut mem)
            .ret
    }

    fn apply(&mut self, op: &Op) {
        let ids = self.ids.clone();
        let pick = |i: u8| ids[i as usize % ids.len()];
        match *op {
            Op::Deposit { t, n, node } => {
                let t = pick(t);
                let mut pages = Vec::new();
                for _ in 0..n {
                    // Different free pages each time: take what the root's allocator offers.
                    match self.hv.root_free_page(NodeSel::Preferred(node as u32)) {
                        Some(p) if !pages.contains(&p) => pages.push(p),
                        _ => break,
                    }
                    if self
                        .hv
                        .deposit_memory(ROOT_ID, t, &pages[pages.len() - 1..])
                        .is_err()
                    {
                        pages.pop();
                        break;
                    }
                }
            }
            Op::Withdraw { t, n } => {
                let t = pick(t);
                let mut out = vec![0; n as usize];
                let input = HvWithdrawMemory {
                    partition_id: t.0,
                    proximity_domain_info: HvProximityDomainInfo::ANY,
                };
                let _ = self.hv.withdraw_memory(ROOT_ID, &input, &mut out);
            }
            Op::Create => {
                let input = CreatePartitionInput::Tlfs2(HvCreatePartition::default());
                if let Ok(id) = self
                    .hv
                    .call_with_deposits(ROOT_ID, NodeSel::Any, 1, 64, |hv| {
                        hv.create_partition(ROOT_ID, &input)
                    })
                {
                    self.ids.push(id);
                }
            }
            Op::Initialize { t } => {
                let t = pick(t);
                let _ = self.hv.call_with_deposits(t, NodeSel::Any, 32, 8, |hv| {
                    hv.initialize_partition(ROOT_ID, t)
                });
            }
            Op::CreateVp { t, vp } => {
                let t = pick(t);
                let input = CreateVpInput::Tlfs2(HvCreateVp {
                    partition_id: t.0,
                    vp_index: vp as u32,
                    ..Default::default()
                });
                let _ = self
                    .hv
                    .call_with_deposits(t, NodeSel::Any, 32, 8, |hv| hv.create_vp(ROOT_ID, &input));
            }
            Op::DeleteVp { t, vp } => {
                let t = pick(t);
                let _ = self.hv.delete_vp(
                    ROOT_ID,
                    &HvDeleteVp {
                        partition_id: t.0,
                        vp_index: vp as u32,
                        padding: 0,
                    },
                );
            }
            Op::Finalize { t } => {
                let t = pick(t);
                let _ = self.hv.finalize_partition(ROOT_ID, t);
            }
            Op::Delete { t } => {
                let t = pick(t);
                let _ = self.hv.withdraw_all(ROOT_ID, t);
                if self.hv.delete_partition(ROOT_ID, t).is_ok() {
                    self.ids.retain(|&i| i != t);
                }
            }
            Op::Grant { t } => {
                let t = pick(t);
                if t != ROOT_ID {
                    let m = HvPartitionPrivilegeMask::new().with_access_memory_pool(true);
                    let _ = self.hv.set_partition_privileges(t, m);
                }
            }
            Op::Reserve {
                c,
                t,
                op,
                base,
                n,
                order,
            } => {
                let (c, t) = (pick(c), pick(t));
                let (Some(cd), Some(td)) = (
                    self.hv.partition(c).map(|p| p.domid()),
                    self.hv.partition(t).map(|p| p.domid()),
                ) else {
                    return;
                };
                let pod = op % 6 >= 4;
                let op = [
                    MemoryOp::POPULATE_PHYSMAP,
                    MemoryOp::DECREASE_RESERVATION,
                    MemoryOp::INCREASE_RESERVATION,
                    MemoryOp::POPULATE_PHYSMAP,
                    MemoryOp::POPULATE_PHYSMAP,
                    MemoryOp::POPULATE_PHYSMAP,
                ][op as usize % 6];
                let list: Vec<u64> = (0..n as u64).map(|i| base as u64 + (i << order)).collect();
                let r = XenMemoryReservation {
                    extent_start: LIST,
                    nr_extents: n as u64,
                    extent_order: order as u32,
                    mem_flags: if pod {
                        MemFlags::POPULATE_ON_DEMAND
                    } else {
                        MemFlags::NONE
                    },
                    domid: if c == t {
                        ballast_abi::xen::DOMID_SELF
                    } else {
                        td.0
                    },
                    ..Default::default()
                };
                let ret = self.reservation(cd, op.0 as u64, &r, &list);
                assert!(
                    (0..=n as i64).contains(&ret),
                    "{op:?} returned {ret}, not a count"
                );
            }
            Op::Exchange { c, base, n } => {
                let c = pick(c);
                let Some(cd) = self.hv.partition(c).map(|p| p.domid()) else {
                    return;
                };
                let mut mem = FlatMemory::new(ARG, 0x3_0000);
                let inp = XenMemoryReservation {
                    extent_start: LIST,
                    nr_extents: n as u64,
                    domid: ballast_abi::xen::DOMID_SELF,
                    ..Default::default()
                };
                let out = XenMemoryReservation {
                    extent_start: LIST2,
                    nr_extents: n as u64,
                    domid: ballast_abi::xen::DOMID_SELF,
                    ..Default::default()
                };
                let x = XenMemoryExchange {
                    in_: inp,
                    out,
                    nr_exchanged: 0,
                };
                mem.bytes[..72].copy_from_slice(x.as_bytes());
                for i in 0..n as usize {
                    let a = (LIST - ARG) as usize + 8 * i;
                    mem.bytes[a..a + 8].copy_from_slice(&(base as u64 + i as u64).to_le_bytes());
                    let b = (LIST2 - ARG) as usize + 8 * i;
                    mem.bytes[b..b + 8]
                        .copy_from_slice(&(1000 + base as u64 + i as u64).to_le_bytes());
                }
                let _ =
                    self.hv
                        .memory_op_to_completion(cd, MemoryOp::EXCHANGE.0 as u64, ARG, &mut mem);
            }
            Op::Remove { c, t, g } => {
                let (c, t) = (pick(c), pick(t));
                let (Some(cd), Some(td)) = (
                    self.hv.partition(c).map(|p| p.domid()),
                    self.hv.partition(t).map(|p| p.domid()),
                ) else {
                    return;
                };
                let mut mem = FlatMemory::new(ARG, 0x100);
                let r = XenRemoveFromPhysmap {
                    domid: td.0,
                    gpfn: g as u64,
                    ..Default::default()
                };
                mem.bytes[..16].copy_from_slice(r.as_bytes());
                let _ = self.hv.memory_op_to_completion(
                    cd,
                    MemoryOp::REMOVE_FROM_PHYSMAP.0 as u64,
                    ARG,
                    &mut mem,
                );
            }
            Op::Host { t, g, n, release } => {
                let t = pick(t);
                if release {
                    let ranges: Vec<GfnRange> = (g as u64..g as u64 + n as u64)
                        .filter(|&x| {
                            self.hv
                                .partition(t)
                                .is_some_and(|p| p.p2m().get(x).is_some())
                        })
                        .map(|x| GfnRange::new(x, 1).unwrap())
                        .collect();
                    if t != ROOT_ID {
                        self.hv.release(t, &ranges).unwrap();
                    }
                } else if t != ROOT_ID {
                    let _ = self.hv.populate(t, g as u64, n as u64);
                }
            }
            Op::Destroy { t } => {
                let t = pick(t);
                if self.hv.destroy_partition(t).is_ok() {
                    self.ids.retain(|&i| i != t);
                }
            }
            Op::PodTarget { c, t, target, set } => {
                let (c, t) = (pick(c), pick(t));
                let (Some(cd), Some(td)) = (
                    self.hv.partition(c).map(|p| p.domid()),
                    self.hv.partition(t).map(|p| p.domid()),
                ) else {
                    return;
                };
                let x = XenPodTarget {
                    target_pages: u64::from(target),
                    domid: td.0,
                    ..XenPodTarget::new_zeroed()
                };
                let mut mem = FlatMemory::new(ARG, 0x1000);
                mem.bytes[..40].copy_from_slice(x.as_bytes());
                let op = if set {
                    MemoryOp::SET_POD_TARGET
                } else {
                    MemoryOp::GET_POD_TARGET
                };
                let r = self
                    .hv
                    .memory_op_to_completion(cd, op.0 as u64, ARG, &mut mem);
                if r.ret == 0 {
                    let back = XenPodTarget::read_from_bytes(&mem.bytes[..40]).unwrap();
                    let p = self.hv.partition(t).unwrap();
                    assert_eq!(
                        (back.tot_pages, back.pod_cache_pages, back.pod_entries),
                        (p.tot_pages(), p.xen().pod_cache, p.pod_entries())
                    );
                }
            }
            Op::Demand { t, g } => {
                let t = pick(t);
                let is_pod = self
                    .hv
                    .partition(t)
                    .is_some_and(|p| p.p2m().is_pod(g.into()));
                let r = self.hv.pod_demand_populate(t, g.into());
                assert_eq!(
                    is_pod,
                    r.is_ok() || r == Err(ballast_core::MemoryError::PodCacheEmpty)
                );
            }
            Op::Limit { t, limit } => {
                let _ = self.hv.set_guest_physical_limit(pick(t), limit.into());
            }
            Op::Budget { t, kib } => {
                let bytes = (kib != 0).then_some(u64::from(kib) << 10);
                let _ = self.hv.set_p2m_budget(pick(t), bytes);
            }
        }
    }
}

fn mapped(hv: &Hypervisor) -> BTreeMap<PartitionId, BTreeMap<u64, u32>> {
    hv.partitions()
        .map(|p| (p.id(), p.p2m().iter().collect()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn interleavings_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        let mut config = Config::with_nodes(vec![1500, 1500]);
        config.costs.initialize_partition = 16;
        config.costs.create_vp = 8;
        config.costs.create_partition = 2;
        let mut w = World { hv: Hypervisor::new(config).unwrap(), ids: vec![ROOT_ID] };
        // Two host-created guests to start with, so Xen calls have targets at once.
        for _ in 0..2 {
            let id = w.hv.create_guest(400, HvProximityDomainInfo::ANY).unwrap();
            w.ids.push(id);
        }
        let total = w.hv.frames().len() as u64;
        for op in &ops {
            let before = mapped(&w.hv);
            w.hv.take_effects();
            w.apply(op);
            if let Err(e) = w.hv.check() {
                return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
            }
            // Conservation, as a sum over partitions (check() verifies it per frame).
            let held: u64 = w.hv.partitions().map(|p| p.tot_pages() + p.pool_available() + p.pool_in_use()).sum();
            prop_assert_eq!(held + w.hv.frames().total_free(), total);
            // Every gfn that left a p2m was discarded.
            let after = mapped(&w.hv);
            let mut discarded: BTreeMap<PartitionId, BTreeSet<u64>> = BTreeMap::new();
            for e in w.hv.take_effects() {
                if let Effect::Discard { partition, range } = e {
                    discarded.entry(partition).or_default().extend(range.start()..range.end());
                }
            }
            // A gfn that left, or now holds another frame, must have been discarded:
            // the bytes at a gfn belong to the frame that was there.
            for (id, gfns) in &before {
                let now = after.get(id).cloned().unwrap_or_default();
                for (g, m) in gfns {
                    if now.get(g) != Some(m) {
                        prop_assert!(
                            discarded.get(id).is_some_and(|d| d.contains(g)),
                            "{op:?}: gfn {g:#x} of {id:?} changed without a discard"
                        );
                    }
                }
            }
        }
    }
}

/// The root's memory is the identity map of free host memory: no call may map into it.
#[test]
fn the_root_p2m_is_never_written() {
    let mut hv = Hypervisor::new(Config::single_node(4096)).unwrap();
    assert_eq!(
        hv.populate(ROOT_ID, 0, 1),
        Err(ballast_core::MemoryError::Root)
    );
    let r = XenMemoryReservation {
        extent_start: LIST,
        nr_extents: 4,
        domid: ballast_abi::xen::DOMID_SELF,
        ..Default::default()
    };
    let mut w = World {
        hv,
        ids: vec![ROOT_ID],
    };
    let ret = w.reservation(
        DomId(0),
        MemoryOp::POPULATE_PHYSMAP.0 as u64,
        &r,
        &[1, 2, 3, 4],
    );
    assert_eq!(ret, 0);
    assert_eq!(w.hv.partition(ROOT_ID).unwrap().p2m().mapped(), 0);
    w.hv.check().unwrap();
}

/// Grant frames charge the pool; a finalized partition's pool must stay fully
/// withdrawable, so it cannot be charged.
#[test]
fn acquire_resource_needs_an_active_partition() {
    use ballast_abi::xen::{ResourceType, XenMemAcquireResource};
    let mut hv = Hypervisor::new(Config::single_node(1 << 14)).unwrap();
    let input = CreatePartitionInput::Tlfs2(HvCreatePartition::default());
    let c = hv
        .call_with_deposits(ROOT_ID, NodeSel::Any, 8, 8, |hv| {
            hv.create_partition(ROOT_ID, &input)
        })
        .unwrap();
    hv.call_with_deposits(c, NodeSel::Any, 64, 8, |hv| {
        hv.initialize_partition(ROOT_ID, c)
    })
    .unwrap();
    hv.finalize_partition(ROOT_ID, c).unwrap();
    let domid = hv.partition(c).unwrap().domid();
    let mut mem = FlatMemory::new(ARG, 0x3_0000);
    let r = XenMemAcquireResource {
        domid: domid.0,
        ty: ResourceType::GRANT_TABLE,
        nr_frames: 1,
        frame_list: LIST,
        ..Default::default()
    };
    mem.bytes[..32].copy_from_slice(r.as_bytes());
    let ret = hv
        .memory_op_to_completion(DomId(0), MemoryOp::ACQUIRE_RESOURCE.0 as u64, ARG, &mut mem)
        .ret;
    assert_eq!(ret, -(ballast_core::xen::errno::EINVAL));
    hv.withdraw_all(ROOT_ID, c).unwrap();
    hv.delete_partition(ROOT_ID, c).unwrap();
    hv.check().unwrap();
}
